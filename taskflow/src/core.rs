//! The state every part of a manager shares: records, the event bus, the
//! executors and the one function that changes a task's status.
//!
//! [`Core::transition`] is the single writer of lifecycle state. It consults
//! [`lifecycle::next`], updates the record, moves the status counts, publishes
//! the event while still holding the record's lock (so one task's events are
//! in order), and wakes the task's handles when it finishes. Executors only
//! call it; no other code assigns a status.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use taskflow_worker::log::LogSink;
use taskflow_worker::registry::TaskEntry;
use taskflow_worker::{Executor, LogRecord, Resources, Tags, TaskError, TaskId};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::events::{Bus, EventKind, TaskEvent};
#[cfg(unix)]
use crate::executor::ProcessExecutor;
use crate::executor::{AsyncExecutor, SyncExecutor};
use crate::lifecycle::{self, TaskStatus, Transition};
use crate::record::{MAX_LOGS, Produced, SharedCell, TaskCell};
use crate::store::MemoryStore;

pub(crate) struct Core {
    pub(crate) store: MemoryStore,
    pub(crate) bus: Bus,
    pub(crate) resources: Resources,
    pub(crate) runtime: Handle,
    pub(crate) async_tasks: AsyncExecutor,
    pub(crate) sync_tasks: SyncExecutor,
    #[cfg(unix)]
    pub(crate) process_tasks: ProcessExecutor,
    closed: AtomicBool,
    /// RUNNING tasks per executor, indexed by [`executor_index`].
    running: [AtomicU64; 3],
    /// Signalled whenever a task stops running after close.
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

/// The executors a manager runs, built before the core they belong to.
pub(crate) struct Executors {
    pub(crate) async_tasks: AsyncExecutor,
    pub(crate) sync_tasks: SyncExecutor,
    #[cfg(unix)]
    pub(crate) process_tasks: ProcessExecutor,
}

fn executor_index(executor: Executor) -> usize {
    match executor {
        Executor::Async => 0,
        Executor::Thread => 1,
        _ => 2,
    }
}

impl Core {
    pub(crate) fn new(
        runtime: Handle,
        resources: Resources,
        executors: Executors,
        event_capacity: usize,
    ) -> Self {
        Core {
            store: MemoryStore::default(),
            bus: Bus::new(event_capacity),
            resources,
            runtime,
            async_tasks: executors.async_tasks,
            sync_tasks: executors.sync_tasks,
            #[cfg(unix)]
            process_tasks: executors.process_tasks,
            closed: AtomicBool::new(false),
            running: Default::default(),
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
        // A process task's resources are built in each worker, not here.
        if entry.executor() != Executor::Process
            && let Some(missing) = self.resources.first_missing(entry.resources())
        {
            return Err(Error::MissingResource {
                task: entry.name(),
                resource: missing.type_name(),
            });
        }
        if entry.executor() == Executor::Process && cfg!(not(unix)) {
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
            #[cfg(unix)]
            Executor::Process => self.process_tasks.submit(self, cell.clone()),
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
        let running = &self.running[executor_index(cell.entry.executor())];
        if to == TaskStatus::Running {
            running.fetch_add(1, Ordering::SeqCst);
        } else if from == TaskStatus::Running {
            running.fetch_sub(1, Ordering::SeqCst);
        }
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
        if from == TaskStatus::Running && self.is_closed() {
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
        result: Result<Produced, TaskError>,
    ) -> Option<Duration> {
        let transition = match result {
            Ok(output) => Transition::Succeed(output),
            Err(error) => Transition::Fail(error),
        };
        self.transition(cell, transition)
            .and_then(|applied| applied.retry_in)
    }

    /// Appends a log record to a running task and publishes it.
    pub(crate) fn log(&self, cell: &TaskCell, record: LogRecord) {
        let mut state = cell.lock();
        if state.status.is_finished() {
            return;
        }
        if state.logs.len() == MAX_LOGS {
            state.logs.pop_front();
        }
        let attempt = state.attempts.saturating_sub(1);
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind: EventKind::Log(record.clone()),
            attempt,
            at: record.at,
        });
        state.logs.push_back(record);
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
            #[cfg(unix)]
            self.process_tasks.close();
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

    fn running_on(&self, executors: &[Executor]) -> u64 {
        executors
            .iter()
            .map(|&executor| self.running[executor_index(executor)].load(Ordering::SeqCst))
            .sum()
    }

    /// Waits until no task of `executors` is RUNNING or `deadline` passes;
    /// `true` if none is.
    pub(crate) async fn wait_idle(&self, executors: &[Executor], deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running_on(executors) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running_on(executors) == 0;
            }
        }
    }
}

/// In-process tasks log through their context straight onto their record.
impl LogSink for Core {
    fn emit(&self, id: TaskId, record: LogRecord) {
        if let Some(cell) = self.store.get(&id) {
            self.log(&cell, record);
        }
    }
}
