//! The event bus: every lifecycle transition, once, in order per task.
//!
//! `Core::transition` publishes while it still holds the task's lock, so the
//! events of one task arrive in the order its transitions happened. Building
//! an event is skipped while nobody subscribes, which keeps the hot path free
//! of the channel's lock in the common case.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use futures_core::Stream;
use taskflow_worker::{LogRecord, TaskError, TaskId};
use tokio::sync::broadcast;

use crate::lifecycle::TaskStatus;

/// One lifecycle change of one task.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TaskEvent {
    /// The task.
    pub id: TaskId,
    /// Its registered name.
    pub name: &'static str,
    /// What happened.
    pub kind: EventKind,
    /// The task's status right after the event.
    pub status: TaskStatus,
    /// Zero-based attempt the event belongs to (0 before the first start).
    pub attempt: u32,
    /// When it happened.
    pub at: SystemTime,
}

/// What happened to a task.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// Enqueued: now PENDING.
    Enqueued,
    /// Back to PENDING, under its own id, to run again: a task declared
    /// `requeue_on_interrupt` whose instance died or shut down while it ran
    /// (rescued by this instance, or released by this one at shutdown).
    Requeued,
    /// An attempt started: now RUNNING.
    Started,
    /// An attempt failed and another will run after `delay`: PENDING again.
    Retrying {
        /// Why the attempt failed.
        error: TaskError,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The attempt succeeded: SUCCESS.
    Succeeded,
    /// The last allowed attempt failed: FAILED.
    Failed(TaskError),
    /// Cancelled: CANCELLED.
    Cancelled,
    /// Interrupted by shutdown, or rescued from a dead instance: INTERRUPTED.
    Interrupted,
    /// The running task logged this record; the status is unchanged.
    Log(LogRecord),
    /// Changes to this task (and possibly others) could not be written to the
    /// task store; they are kept and written once it recovers. Reported once
    /// per run of failures.
    StoreFailed(String),
    /// A row of the task store cannot be read as a task (a column of the
    /// wrong type, an unknown status, undecodable tags): it is left in place
    /// and skipped, and every other row still loads, lists and runs. The
    /// event's `id` is the row's task id when that much is readable (else
    /// nil) and its `name` is empty; the text says what is wrong. Reported
    /// once per row and manager, and in the log.
    CorruptRow(String),
    /// This instance ran the task, but its lease on it expired (the process
    /// was frozen or cut off from the store) and another instance rescued
    /// it: the attempt here is stopped if it can be, and its result is not
    /// recorded. The task's record follows the store from now on.
    Lost,
    /// A task another instance runs, followed through the task store, was
    /// seen in a new status (the event's `status`).
    Observed,
}

pub(crate) struct Bus {
    sender: broadcast::Sender<TaskEvent>,
    subscribers: Arc<AtomicUsize>,
}

impl Bus {
    pub(crate) fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Bus {
            sender,
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Publishes the event `make` builds, if anyone listens.
    pub(crate) fn publish(&self, make: impl FnOnce() -> TaskEvent) {
        if self.subscribers.load(Ordering::Acquire) > 0 {
            // An error only means every receiver went away meanwhile.
            let _ = self.sender.send(make());
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        let receiver = self.sender.subscribe();
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        EventStream {
            state: Receiving::Idle(receiver),
            subscribers: self.subscribers.clone(),
        }
    }
}

/// A subscription to every task's lifecycle events, from
/// [`TaskManager::subscribe`](crate::TaskManager::subscribe): await
/// [`recv`](Self::recv), or use it as a [`Stream`] of
/// `Result<TaskEvent, RecvError>` that ends when the manager is gone.
///
/// Events published before the subscription are not seen. A subscriber that
/// falls more than the bus capacity behind loses the oldest events and is told
/// how many with [`RecvError::Lagged`].
pub struct EventStream {
    state: Receiving,
    subscribers: Arc<AtomicUsize>,
}

/// The receiver, or a receive in flight that owns it (a [`Stream`] poll has
/// to keep its future between polls).
enum Receiving {
    Idle(broadcast::Receiver<TaskEvent>),
    Waiting(Pin<Box<dyn Future<Output = Received> + Send>>),
    /// Only between taking the receiver out and putting the future in.
    Moving,
}

type Received = (
    Result<TaskEvent, broadcast::error::RecvError>,
    broadcast::Receiver<TaskEvent>,
);

fn lagged_or_closed(error: broadcast::error::RecvError) -> RecvError {
    match error {
        broadcast::error::RecvError::Lagged(n) => RecvError::Lagged(n),
        broadcast::error::RecvError::Closed => RecvError::Closed,
    }
}

impl EventStream {
    /// The next event.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] when events were dropped because this subscriber
    /// fell behind (the next call continues with the oldest kept event), and
    /// [`RecvError::Closed`] once the manager is gone.
    pub async fn recv(&mut self) -> Result<TaskEvent, RecvError> {
        match &mut self.state {
            Receiving::Idle(receiver) => receiver.recv().await.map_err(lagged_or_closed),
            _ => std::future::poll_fn(|cx| self.poll_event(cx)).await,
        }
    }

    /// The next event if one is ready, without waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), plus [`RecvError::Empty`] when none is ready.
    pub fn try_recv(&mut self) -> Result<TaskEvent, RecvError> {
        match &mut self.state {
            Receiving::Idle(receiver) => receiver.try_recv().map_err(|error| match error {
                broadcast::error::TryRecvError::Lagged(n) => RecvError::Lagged(n),
                broadcast::error::TryRecvError::Closed => RecvError::Closed,
                broadcast::error::TryRecvError::Empty => RecvError::Empty,
            }),
            _ => {
                let mut cx = Context::from_waker(Waker::noop());
                match self.poll_event(&mut cx) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(RecvError::Empty),
                }
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<TaskEvent, RecvError>> {
        loop {
            match std::mem::replace(&mut self.state, Receiving::Moving) {
                // Moved into the future, which hands it back with the event.
                Receiving::Idle(mut receiver) => {
                    self.state = Receiving::Waiting(Box::pin(async move {
                        let received = receiver.recv().await;
                        (received, receiver)
                    }));
                }
                Receiving::Waiting(mut future) => match future.as_mut().poll(cx) {
                    Poll::Ready((received, receiver)) => {
                        self.state = Receiving::Idle(receiver);
                        return Poll::Ready(received.map_err(lagged_or_closed));
                    }
                    Poll::Pending => {
                        self.state = Receiving::Waiting(future);
                        return Poll::Pending;
                    }
                },
                Receiving::Moving => return Poll::Ready(Err(RecvError::Closed)),
            }
        }
    }
}

impl Stream for EventStream {
    type Item = Result<TaskEvent, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx).map(|result| match result {
            Err(RecvError::Closed) => None,
            other => Some(other),
        })
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why [`EventStream::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// This many events were dropped because the subscriber fell behind.
    #[error("subscriber fell behind and missed {0} events")]
    Lagged(u64),
    /// The manager is gone; no more events will come.
    #[error("the task manager is gone")]
    Closed,
    /// No event is ready (from `try_recv` only).
    #[error("no event is ready")]
    Empty,
}
