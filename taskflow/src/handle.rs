//! [`TaskHandle`]: the enqueuer's view of one task.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;
use taskflow_worker::{ErrorKind, TaskError, TaskId};

use crate::error::Error;
use crate::lifecycle::TaskStatus;
use crate::record::{Produced, SharedCell, TaskRecord};

/// A handle to an enqueued task whose output is `T`.
///
/// Awaiting it yields the task's output once it succeeds, or the
/// [`TaskError`] that ended it (failed, cancelled, interrupted). Dropping it
/// does not cancel the task; it only means nobody will read the output, which
/// is then dropped as soon as the task finishes.
///
/// ```
/// #[taskflow::task]
/// async fn double(n: u64) -> u64 {
///     n * 2
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = taskflow::TaskManager::builder().build().await?;
/// let handle = double::call(21).enqueue_on(&manager)?;
/// println!("enqueued {}", handle.id());
/// assert_eq!(handle.await?, 42);
/// # Ok(())
/// # }
/// ```
pub struct TaskHandle<T> {
    cell: SharedCell,
    output: PhantomData<fn() -> T>,
}

impl<T> TaskHandle<T> {
    pub(crate) fn new(cell: SharedCell) -> Self {
        TaskHandle {
            cell,
            output: PhantomData,
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.cell.id
    }

    /// The task's current status.
    pub fn status(&self) -> TaskStatus {
        self.cell.status()
    }

    /// A snapshot of the task's record.
    pub fn record(&self) -> TaskRecord {
        self.cell.snapshot()
    }

    /// Resolves once the task's row is committed to the task store: from
    /// then on the task survives a crash of this process (`kill -9`
    /// included). With `requeue_pending(true)` a restart runs it if it had
    /// not finished, under its own id.
    ///
    /// # Errors
    ///
    /// [`Error::NotDurable`] when the manager has no task store, and
    /// [`Error::Store`] when the store stopped (at shutdown) before it could
    /// write the row, or its file was deleted or replaced.
    pub async fn persisted(&self) -> Result<(), Error> {
        if !self.cell.is_durable() {
            return Err(Error::NotDurable);
        }
        std::future::poll_fn(|cx| {
            let mut state = self.cell.lock();
            if self.cell.is_stored() {
                Poll::Ready(Ok(()))
            } else if self.cell.is_unwritten() {
                Poll::Ready(Err(Error::Store(
                    "the task store stopped, or lost its file, before this task could be written"
                        .into(),
                )))
            } else {
                wake_later(&mut state.extra().persist_waiters, cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

impl<T: DeserializeOwned + 'static> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.cell.lock();
        if !state.status.is_finished() || self.cell.is_releasing_key() {
            wake_later(&mut state.waiters, cx.waker());
            // The release may have been written between the check and the
            // registration: look once more.
            if state.status.is_finished() && !self.cell.is_releasing_key() {
                drop(state);
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        let outcome = match state.status {
            TaskStatus::Pending | TaskStatus::Running => unreachable_pending(),
            TaskStatus::Success => match state.output.take() {
                Some(Produced::Value(output)) => output
                    .downcast::<T>()
                    .map(|output| *output)
                    .map_err(|_| TaskError::error("the task's output is not of the handle's type")),
                Some(Produced::Encoded(bytes)) => decode_output(&bytes),
                None => match state.output_bytes() {
                    // Another handle took the value; a keyed task keeps its encoding.
                    Some(bytes) => decode_output(bytes),
                    None => Err(TaskError::error(
                        "the task's output was already taken from this handle",
                    )),
                },
            },
            TaskStatus::Failed => Err(state
                .last_error()
                .cloned()
                .unwrap_or_else(|| TaskError::error("the task failed"))),
            TaskStatus::Cancelled => Err(TaskError::new(ErrorKind::Cancelled, "")),
            TaskStatus::Interrupted => Err(TaskError::new(
                ErrorKind::Interrupted,
                "the manager shut down before the task finished",
            )),
        };
        Poll::Ready(outcome)
    }
}

impl<T> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        let mut state = self.cell.lock();
        state.handles = state.handles.saturating_sub(1);
        if state.handles == 0 {
            let unread = state.output.take();
            drop(state);
            drop(unread);
        }
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.cell.id)
            .field("name", &self.cell.entry.name())
            .field("status", &self.status())
            .finish()
    }
}

/// Adds `waker` to `waiters` unless one that wakes the same task is there.
fn wake_later(waiters: &mut Vec<Waker>, waker: &Waker) {
    if !waiters.iter().any(|w| w.will_wake(waker)) {
        waiters.push(waker.clone());
    }
}

fn decode_output<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    taskflow_worker::codec::decode(bytes)
        .map_err(|e| TaskError::error(format!("cannot decode the task's output: {e}")))
}

/// A handle is only resolved once its task finished: the arm that would see
/// PENDING or RUNNING is never reached.
fn unreachable_pending<T>() -> Result<T, TaskError> {
    Err(TaskError::error("the task has not finished"))
}
