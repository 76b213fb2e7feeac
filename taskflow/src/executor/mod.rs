//! Executors: an admission gate in front of a runner, one per kind of task.
//!
//! - [`AsyncExecutor`]: a tokio task per enqueued task, admitted through a
//!   semaphore of `max_concurrent_tasks` permits. A task waiting for a permit
//!   is parked, costing no scheduler time; the permit is held for one attempt
//!   and never across a retry wait.
//! - [`SyncExecutor`]: a dedicated pool of `max_sync_threads` threads fed by a
//!   queue, or tokio's blocking pool when no size is set.
//!
//! Both run an attempt the same way: decode the arguments, set the task
//! context, call the body with panics caught, and report the result to
//! `Core::finish`, which decides between done and a retry after a delay.

mod async_tasks;
mod sync_pool;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use taskflow_worker::TaskError;
use taskflow_worker::context::TaskContext;
use taskflow_worker::registry::{AttemptFuture, Output};

pub(crate) use async_tasks::AsyncExecutor;
pub(crate) use sync_pool::SyncExecutor;

use crate::record::TaskCell;

fn context_of(cell: &TaskCell, attempt: u32) -> TaskContext {
    TaskContext::new(cell.id, cell.entry.name(), attempt, cell.tags.clone())
}

/// Runs `body`, turning a panic into a failed attempt.
fn catch_panic<R>(body: impl FnOnce() -> Result<R, TaskError>) -> Result<R, TaskError> {
    catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(TaskError::from_panic(&*payload)))
}

/// An attempt's future with panics during a poll turned into a failure.
struct CatchUnwind(AttemptFuture);

impl Future for CatchUnwind {
    type Output = Result<Output, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)))
            .unwrap_or_else(|payload| Poll::Ready(Err(TaskError::from_panic(&*payload))))
    }
}
