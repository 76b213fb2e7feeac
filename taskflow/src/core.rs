//! The state every part of a manager shares: records, the event bus, the
//! executors and the one function that changes a task's status.
//!
//! [`Core::transition`] is the single writer of lifecycle state. It consults
//! [`lifecycle::next`], updates the record, moves the status counts, publishes
//! the event while still holding the record's lock (so one task's events are
//! in order), and wakes the task's handles when it finishes. Executors only
//! call it; no other code assigns a status.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use taskflow_worker::registry::{Output, TaskEntry};
use taskflow_worker::{Executor, Resources, Tags, TaskError, TaskId};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::events::{Bus, EventKind, TaskEvent};
use crate::executor::{AsyncExecutor, SyncExecutor};
use crate::lifecycle::{self, TaskStatus, Transition};
use crate::record::{SharedCell, TaskCell};
use crate::store::MemoryStore;

pub(crate) struct Core {
    pub(crate) store: MemoryStore,
    pub(crate) bus: Bus,
    pub(crate) resources: Resources,
    pub(crate) runtime: Handle,
    pub(crate) async_tasks: AsyncExecutor,
    pub(crate) sync_tasks: SyncExecutor,
    closed: AtomicBool,
    /// Signalled when the last running task stops running after close.
    idle: Notify,
}

/// What a transition did.
pub(crate) struct Applied {
    pub(crate) status: TaskStatus,
    /// Zero-based attempt the transition belonged to.
    pub(crate) attempt: u32,
    /// After a failure with retries left: the wait before the next attempt.
    pub(crate) retry_in: Option<Duration>,
}

impl Core {
    pub(crate) fn new(
        runtime: Handle,
        resources: Resources,
        async_tasks: AsyncExecutor,
        sync_tasks: SyncExecutor,
        event_capacity: usize,
    ) -> Self {
        Core {
            store: MemoryStore::default(),
            bus: Bus::new(event_capacity),
            resources,
            runtime,
            async_tasks,
            sync_tasks,
            closed: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Records a new PENDING task and hands it to its executor.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        entry: &'static TaskEntry,
        args: Vec<u8>,
        tags: Tags,
    ) -> Result<SharedCell, Error> {
        if self.is_closed() {
            return Err(Error::ShutDown);
        }
        if let Some(missing) = self.resources.first_missing(entry.resources()) {
            return Err(Error::MissingResource {
                task: entry.name(),
                resource: missing.type_name(),
            });
        }
        if entry.executor() == Executor::Process {
            return Err(Error::UnsupportedExecutor {
                task: entry.name(),
                executor: entry.executor().as_str(),
            });
        }
        let cell = Arc::new(TaskCell::new(entry, args.into_boxed_slice(), tags));
        self.store.insert(cell.clone());
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: entry.name(),
            kind: EventKind::Enqueued,
            attempt: 0,
            at: cell.created_at,
        });
        match entry.executor() {
            Executor::Async => self.async_tasks.submit(self, cell.clone()),
            _ => self.sync_tasks.submit(self, cell.clone()),
        }
        Ok(cell)
    }

    /// Applies `transition` to `cell`; `None` when it does not apply in the
    /// task's current status (see [`lifecycle::next`]).
    pub(crate) fn transition(&self, cell: &TaskCell, transition: Transition) -> Option<Applied> {
        let now = SystemTime::now();
        // Once closed, nothing more is admitted: a start becomes an interrupt.
        let transition = match transition {
            Transition::Start if self.is_closed() => Transition::Interrupt,
            other => other,
        };
        let mut state = cell.lock();
        let from = state.status;
        let policy = cell.entry.defaults();
        let to = lifecycle::next(from, &transition, state.attempts, policy)?;
        let mut retry_in = None;
        let mut abort = None;
        let kind = match transition {
            Transition::Start => {
                state.attempts += 1;
                state.started_at.get_or_insert(now);
                EventKind::Started
            }
            Transition::Succeed(output) => {
                state.last_error = None;
                if state.handles > 0 {
                    state.output = Some(output);
                }
                EventKind::Succeeded
            }
            Transition::Fail(error) if to == TaskStatus::Pending => {
                let delay = lifecycle::retry_delay(state.attempts, policy);
                retry_in = Some(delay);
                let kind = EventKind::Retrying {
                    error: error.clone(),
                    delay,
                };
                state.last_error = Some(Box::new(error));
                kind
            }
            Transition::Fail(error) => {
                let kind = EventKind::Failed(error.clone());
                state.last_error = Some(Box::new(error));
                kind
            }
            Transition::Cancel => {
                abort = state.abort.take();
                EventKind::Cancelled
            }
            Transition::Interrupt => {
                abort = state.abort.take();
                EventKind::Interrupted
            }
        };
        state.status = to;
        let mut duration = None;
        if to.is_finished() {
            state.finished_at = Some(now);
            if matches!(to, TaskStatus::Success | TaskStatus::Failed) {
                duration = state
                    .started_at
                    .map(|start| now.duration_since(start).unwrap_or_default());
            }
        }
        self.store.count_transition(from, to, duration);
        let attempt = state.attempts.saturating_sub(1);
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind,
            attempt,
            at: now,
        });
        let waiters = match to.is_finished() {
            true => std::mem::take(&mut state.waiters),
            false => Vec::new(),
        };
        drop(state);

        waiters.into_iter().for_each(std::task::Waker::wake);
        if let Some(abort) = abort {
            abort.abort();
        }
        if from == TaskStatus::Running
            && self.is_closed()
            && self.store.count(TaskStatus::Running) == 0
        {
            self.idle.notify_waiters();
        }
        Some(Applied {
            status: to,
            attempt,
            retry_in,
        })
    }

    /// Admits the next attempt of `cell`: its zero-based number, or `None`
    /// when the task may not start (cancelled, interrupted, shut down).
    pub(crate) fn start(&self, cell: &TaskCell) -> Option<u32> {
        self.transition(cell, Transition::Start)
            .filter(|applied| applied.status == TaskStatus::Running)
            .map(|applied| applied.attempt)
    }

    /// Records the result of an attempt; returns the wait before the next
    /// attempt when the task will be retried.
    pub(crate) fn finish(
        &self,
        cell: &TaskCell,
        result: Result<Output, TaskError>,
    ) -> Option<Duration> {
        let transition = match result {
            Ok(output) => Transition::Succeed(output),
            Err(error) => Transition::Fail(error),
        };
        self.transition(cell, transition)
            .and_then(|applied| applied.retry_in)
    }

    pub(crate) fn cancel(&self, id: TaskId) -> Result<(), Error> {
        let cell = self.store.get(&id).ok_or(Error::NotFound(id))?;
        match self.transition(&cell, Transition::Cancel) {
            Some(_) => Ok(()),
            None => Err(Error::AlreadyFinished {
                id,
                status: cell.status(),
            }),
        }
    }

    /// Stops admissions. Returns `false` if already closed.
    pub(crate) fn close(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        if first {
            self.async_tasks.close();
            self.sync_tasks.close();
        }
        first
    }

    /// Interrupts every unfinished task (only PENDING ones with
    /// `pending_only`); returns how many.
    pub(crate) fn interrupt_unfinished(&self, pending_only: bool) -> usize {
        self.store
            .unfinished()
            .into_iter()
            .filter(|cell| !pending_only || cell.status() == TaskStatus::Pending)
            .filter(|cell| self.transition(cell, Transition::Interrupt).is_some())
            .count()
    }

    /// Waits until no task is RUNNING or `deadline` passes; `true` if idle.
    pub(crate) async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.store.count(TaskStatus::Running) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.store.count(TaskStatus::Running) == 0;
            }
        }
    }
}
