//! A task's record: the live cell executors update, and the snapshot users read.
//!
//! A [`TaskCell`] is shared by the store, the executor running the task and its
//! [`TaskHandle`](crate::TaskHandle). Its immutable half (id, entry, arguments,
//! tags) is read without locking; the mutable half sits behind one small mutex
//! that only `Core::transition` writes, plus handle bookkeeping.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, SystemTime};

use taskflow_worker::registry::{Output, TaskEntry};
use taskflow_worker::{Executor, LogRecord, Tags, TaskError, TaskId};
use tokio::task::AbortHandle;

use crate::lifecycle::TaskStatus;

/// Log records kept per task; older ones are dropped first.
pub(crate) const MAX_LOGS: usize = 1000;

/// What a successful attempt produced.
pub(crate) enum Produced {
    /// The value itself, from an in-process attempt.
    Value(Output),
    /// Its encoding, from a worker process.
    Encoded(Vec<u8>),
}

/// One task, shared between the store, its executor and its handles.
pub(crate) struct TaskCell {
    pub(crate) id: TaskId,
    pub(crate) entry: &'static TaskEntry,
    pub(crate) args: Box<[u8]>,
    pub(crate) tags: Tags,
    pub(crate) created_at: SystemTime,
    state: Mutex<CellState>,
}

/// The mutable half of a cell.
pub(crate) struct CellState {
    pub(crate) status: TaskStatus,
    pub(crate) attempts: u32,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) last_error: Option<Box<TaskError>>,
    /// The output of a successful task, until a handle takes it. Only kept
    /// while a handle exists to take it.
    pub(crate) output: Option<Produced>,
    /// The latest log records, oldest first, at most [`MAX_LOGS`].
    pub(crate) logs: VecDeque<LogRecord>,
    /// Live `TaskHandle`s.
    pub(crate) handles: u32,
    /// Handles waiting for the task to finish.
    pub(crate) waiters: Vec<Waker>,
    /// Aborts the tokio task running an async task's attempts.
    pub(crate) abort: Option<AbortHandle>,
}

impl TaskCell {
    pub(crate) fn new(entry: &'static TaskEntry, args: Box<[u8]>, tags: Tags) -> Self {
        TaskCell {
            id: TaskId::new(),
            entry,
            args,
            tags,
            created_at: SystemTime::now(),
            state: Mutex::new(CellState {
                status: TaskStatus::Pending,
                attempts: 0,
                started_at: None,
                finished_at: None,
                last_error: None,
                output: None,
                logs: VecDeque::new(),
                // The handle `enqueue` returns, counted before any executor
                // can finish the task.
                handles: 1,
                waiters: Vec::new(),
                abort: None,
            }),
        }
    }

    /// The mutable state. No code panics while holding it, so poisoning is
    /// impossible in practice; recover rather than propagate if it happens.
    pub(crate) fn lock(&self) -> MutexGuard<'_, CellState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn status(&self) -> TaskStatus {
        self.lock().status
    }

    /// Remembers how to abort the tokio task running this one; aborts at once
    /// if it already finished (cancelled before the handle was stored).
    pub(crate) fn set_abort(&self, abort: AbortHandle) {
        let mut state = self.lock();
        if state.status.is_finished() {
            drop(state);
            abort.abort();
        } else {
            state.abort = Some(abort);
        }
    }

    pub(crate) fn snapshot(&self) -> TaskRecord {
        let state = self.lock();
        TaskRecord {
            id: self.id,
            name: self.entry.name().to_owned(),
            executor: self.entry.executor(),
            status: state.status,
            created_at: self.created_at,
            started_at: state.started_at,
            finished_at: state.finished_at,
            attempts: state.attempts,
            last_error: state.last_error.as_deref().cloned(),
            tags: self.tags.clone(),
            logs: state.logs.iter().cloned().collect(),
        }
    }
}

/// A snapshot of one task's record, from [`TaskManager::get`](crate::TaskManager::get)
/// or [`TaskManager::list`](crate::TaskManager::list).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// Its registered name.
    pub name: String,
    /// Where it runs.
    pub executor: Executor,
    /// Its status when the snapshot was taken.
    pub status: TaskStatus,
    /// When it was enqueued.
    pub created_at: SystemTime,
    /// When its first attempt started.
    pub started_at: Option<SystemTime>,
    /// When it reached a final status.
    pub finished_at: Option<SystemTime>,
    /// Attempts started so far.
    pub attempts: u32,
    /// The failure of the latest failed attempt; cleared by a success.
    pub last_error: Option<TaskError>,
    /// Tags given at enqueue.
    pub tags: Tags,
    /// Log records the task emitted, oldest first (the latest 1000).
    pub logs: Vec<LogRecord>,
}

impl TaskRecord {
    /// Time from the first attempt's start to the final status, once finished
    /// (retry waits included).
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = (self.started_at?, self.finished_at?);
        Some(end.duration_since(start).unwrap_or_default())
    }
}

/// Which records [`TaskManager::list`](crate::TaskManager::list) returns.
///
/// ```
/// use taskflow::{TaskFilter, TaskStatus};
/// let filter = TaskFilter::new().status(TaskStatus::Failed).name("app::send_email").limit(20);
/// # let _ = filter;
/// ```
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub(crate) status: Option<TaskStatus>,
    pub(crate) name: Option<String>,
    pub(crate) limit: Option<usize>,
}

impl TaskFilter {
    /// Every record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only records in `status`.
    pub fn status(mut self, status: TaskStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only records of the task registered as `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// At most `limit` records (the newest).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn matches(&self, cell: &TaskCell, status: TaskStatus) -> bool {
        self.status.is_none_or(|s| s == status)
            && self.name.as_deref().is_none_or(|n| n == cell.entry.name())
    }
}

/// Counts and timings across a manager's tasks, from
/// [`TaskManager::metrics`](crate::TaskManager::metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Tasks waiting for a slot or a retry.
    pub pending: u64,
    /// Tasks with an attempt executing.
    pub running: u64,
    /// Tasks that succeeded.
    pub success: u64,
    /// Tasks that failed every allowed attempt.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks interrupted by shutdown.
    pub interrupted: u64,
    /// Mean of [`TaskRecord::duration`] over tasks that succeeded or failed.
    pub mean_duration: Option<Duration>,
}

impl Metrics {
    /// The count for `status`.
    pub fn count(&self, status: TaskStatus) -> u64 {
        match status {
            TaskStatus::Pending => self.pending,
            TaskStatus::Running => self.running,
            TaskStatus::Success => self.success,
            TaskStatus::Failed => self.failed,
            TaskStatus::Cancelled => self.cancelled,
            TaskStatus::Interrupted => self.interrupted,
        }
    }

    /// All tasks counted.
    pub fn total(&self) -> u64 {
        TaskStatus::ALL.into_iter().map(|s| self.count(s)).sum()
    }
}

pub(crate) type SharedCell = Arc<TaskCell>;
