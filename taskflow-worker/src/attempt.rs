//! Running one attempt of a task body, with panics turned into failures.
//!
//! Shared by the in-process executors and the worker loop so a panic reads
//! the same wherever it happened. In a worker process a panic hook also
//! records where the panic happened; the failure's message then ends with
//! `at file:line:column`.

use std::cell::RefCell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::failure::{ErrorKind, TaskError, panic_message};
use crate::registry::{AttemptFuture, Output};

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that remembers each panic's location for the
/// failure message, then defers to the hook that was installed before.
pub(crate) fn record_panic_locations() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(location) = info.location() {
            let text = format!(
                "{}:{}:{}",
                location.file(),
                location.line(),
                location.column()
            );
            PANIC_LOCATION.with(|slot| *slot.borrow_mut() = Some(text));
        }
        previous(info);
    }));
}

/// The failure for a caught panic.
pub fn panic_failure(payload: &(dyn std::any::Any + Send)) -> TaskError {
    let mut message = panic_message(payload);
    if let Some(location) = PANIC_LOCATION.with(|slot| slot.borrow_mut().take()) {
        message.push_str(" at ");
        message.push_str(&location);
    }
    TaskError::new(ErrorKind::Panic, message)
}

/// Runs `body`, turning a panic into a failed attempt.
pub fn catch_panic<R>(body: impl FnOnce() -> Result<R, TaskError>) -> Result<R, TaskError> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(panic_failure(&*payload)))
}

/// An attempt's future with panics during a poll turned into a failure.
pub struct CatchUnwind(AttemptFuture);

impl std::fmt::Debug for CatchUnwind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatchUnwind")
    }
}

impl CatchUnwind {
    /// Wraps `future`.
    pub fn new(future: AttemptFuture) -> Self {
        CatchUnwind(future)
    }
}

impl Future for CatchUnwind {
    type Output = Result<Output, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)))
            .unwrap_or_else(|payload| Poll::Ready(Err(panic_failure(&*payload))))
    }
}
