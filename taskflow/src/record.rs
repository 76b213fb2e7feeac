//! A task's record: the live cell executors update, and the snapshot users read.
//!
//! A [`TaskCell`] is shared by the live index, the queue, the executor
//! running the task and its [`TaskHandle`](crate::TaskHandle). Its immutable
//! half (id, entry, arguments, tags, queue, priority) is read without
//! locking; the mutable half sits behind one small mutex that only
//! `Core::transition` changes status in, plus handle and store bookkeeping.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, SystemTime};

use taskflow_worker::registry::{Output, TaskEntry};
use taskflow_worker::{Executor, LogRecord, Tags, TaskError, TaskId};
use tokio::task::AbortHandle;

use crate::lifecycle::TaskStatus;
use crate::queue::Queue;
use crate::schedule::Tick;

/// What a successful attempt produced.
pub(crate) enum Produced {
    /// The value itself, from an in-process attempt.
    Value(Output),
    /// Its encoding, from a worker process.
    Encoded(Vec<u8>),
}

/// A time in a record: nanoseconds since the Unix epoch, 8 bytes where a
/// `SystemTime` takes 16 (and an `Option` of it no more), exact for every
/// time from 1970 to 2554. Times outside that range are held at its ends:
/// no task is made, run or finished then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(NonZeroU64);

impl Stamp {
    pub(crate) fn get(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.0.get())
    }

    /// The time from `earlier` to this (zero if `earlier` is later).
    pub(crate) fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.get().saturating_sub(earlier.0.get()))
    }
}

impl From<SystemTime> for Stamp {
    fn from(time: SystemTime) -> Self {
        let nanos = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        Stamp(NonZeroU64::new(nanos).unwrap_or(NonZeroU64::MIN))
    }
}

/// One task, shared between the index, its queue, its executor and its
/// handles.
pub(crate) struct TaskCell {
    pub(crate) id: TaskId,
    pub(crate) entry: &'static TaskEntry,
    pub(crate) args: Box<[u8]>,
    pub(crate) tags: Tags,
    pub(crate) created_at: Stamp,
    /// The idempotency key given at enqueue.
    pub(crate) key: Option<Box<str>>,
    /// The queue it waits in and takes a slot of.
    pub(crate) queue: Arc<Queue>,
    /// Higher runs first within its queue.
    pub(crate) priority: i16,
    /// Flags: see the `FLAG_*` constants.
    flags: AtomicU16,
    /// Place in the memory window of finished records (0: none yet).
    window_seq: AtomicU64,
    state: Mutex<CellState>,
    /// Unused: keeps the record's allocation (`Arc` counts included) out
    /// of glibc's 256-byte chunk class, in which a burst of async no-op
    /// tasks ran 7 % slower than one size class up (B1, measured pair by
    /// pair; see `BENCHMARKS.md`). jemalloc showed no such step.
    _size_class: u64,
}

/// The manager keeps this task in a store.
const FLAG_DURABLE: u16 = 1;
/// The task's row is committed.
const FLAG_STORED: u16 = 2;
/// Interrupted by shutdown but to run again at the next start: its row is
/// written back as PENDING and unowned.
const FLAG_RELEASED: u16 = 4;
/// Its final status releases its idempotency key, and handles wait until
/// the store has written that release.
const FLAG_RELEASING: u16 = 8;
/// A view of a task another instance runs (or may run): never written
/// here, followed through the store.
const FLAG_MIRROR: u16 = 16;
/// The task store stopped before this task's row could be written.
const FLAG_UNWRITTEN: u16 = 32;
/// Its row is written but its enqueue has not finished (announced, counted
/// as enqueued): a claim of it waits for that.
const FLAG_ADMITTING: u16 = 64;
/// Enqueued by another instance (or before a restart) and claimed here: its
/// output is stored, since the handles that await it are elsewhere.
const FLAG_FOREIGN: u16 = 128;
/// It holds a slot of its queue and of its executor, from its admission
/// until it leaves RUNNING (or finishes before it started).
const FLAG_ADMITTED: u16 = 256;

/// Where a new cell comes from.
pub(crate) struct Origin {
    pub(crate) id: TaskId,
    pub(crate) created_at: Stamp,
    pub(crate) run_at: Stamp,
    pub(crate) attempts: u32,
    pub(crate) status: TaskStatus,
    pub(crate) handles: u32,
    pub(crate) durable: bool,
    pub(crate) stored: bool,
    pub(crate) mirror: bool,
    /// The schedule tick that created it.
    pub(crate) scheduled: Option<Tick>,
}

impl Origin {
    /// A task enqueued now to start at `run_at` (or now), with one handle.
    pub(crate) fn new(durable: bool, run_at: Option<SystemTime>) -> Self {
        let now = Stamp::from(SystemTime::now());
        Origin {
            id: TaskId::at_unix_nanos(now.0.get()),
            created_at: now,
            run_at: run_at.map_or(now, Stamp::from),
            attempts: 0,
            status: TaskStatus::Pending,
            handles: 1,
            durable,
            stored: false,
            mirror: false,
            scheduled: None,
        }
    }
}

/// How to stop a running attempt from outside it.
pub(crate) enum Abort {
    /// Abort the tokio task running an async attempt.
    Task(AbortHandle),
    /// Kill the worker process running a process attempt (boxed: few
    /// tasks have one, and every record has room for an `Abort`).
    Worker(Box<WorkerAbort>),
}

/// How to kill the worker process running an attempt.
pub(crate) struct WorkerAbort {
    pub(crate) pool: Arc<dyn KillWorker>,
    pub(crate) pid: u32,
}

/// Kills a worker process, if it has not been reaped yet.
pub(crate) trait KillWorker: Send + Sync {
    fn kill(&self, pid: u32);
}

impl Abort {
    pub(crate) fn abort(self) {
        match self {
            Abort::Task(handle) => handle.abort(),
            Abort::Worker(worker) => worker.pool.kill(worker.pid),
        }
    }
}

/// The parts of a cell's state that most tasks never use.
#[derive(Default)]
pub(crate) struct Extra {
    /// The encoded output of a successful task with an idempotency key, kept
    /// so every handle to it (here, in another process, after a restart)
    /// can read it.
    pub(crate) output_bytes: Option<Arc<[u8]>>,
    /// `persisted()` futures waiting for the row to be committed.
    pub(crate) persist_waiters: Vec<Waker>,
    /// The latest log records, oldest first.
    pub(crate) logs: VecDeque<LogRecord>,
    /// Log records past the cap, dropped.
    pub(crate) logs_dropped: u32,
    /// Why the latest attempt failed (most tasks never fail).
    pub(crate) last_error: Option<TaskError>,
    /// The schedule tick that created the task, if one did.
    pub(crate) scheduled: Option<Tick>,
}

impl CellState {
    /// The rarely used parts, allocated now if they were not.
    pub(crate) fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The encoded output kept for a keyed task, if any.
    pub(crate) fn output_bytes(&self) -> Option<&Arc<[u8]>> {
        self.extra.as_ref()?.output_bytes.as_ref()
    }

    /// Why the latest attempt failed, if it did.
    pub(crate) fn last_error(&self) -> Option<&TaskError> {
        self.extra.as_ref()?.last_error.as_ref()
    }

    pub(crate) fn set_last_error(&mut self, error: Option<TaskError>) {
        if error.is_some() || self.extra.is_some() {
            self.extra().last_error = error;
        }
    }

    /// The schedule tick that created the task, if one did.
    pub(crate) fn scheduled(&self) -> Option<&Tick> {
        self.extra.as_ref()?.scheduled.as_ref()
    }
}

/// What the store's row is known to be, for fencing the next write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    /// Its status: RUNNING means owned by this instance.
    pub(crate) status: TaskStatus,
    /// Its attempt count.
    pub(crate) attempts: u32,
}

/// The mutable half of a cell.
pub(crate) struct CellState {
    pub(crate) status: TaskStatus,
    pub(crate) attempts: u32,
    /// Not before this may the task (or its next attempt) start.
    pub(crate) run_at: Stamp,
    pub(crate) started_at: Option<Stamp>,
    pub(crate) finished_at: Option<Stamp>,
    /// The output of a successful task, until a handle takes it. Only kept
    /// while a handle exists to take it.
    pub(crate) output: Option<Produced>,
    /// What only some tasks need, allocated on first use so the common
    /// record stays small.
    extra: Option<Box<Extra>>,
    /// Live `TaskHandle`s.
    pub(crate) handles: u32,
    /// With a store: what its row was last written (or claimed) as.
    pub(crate) written: Option<Written>,
    /// Handles waiting for the task to finish.
    pub(crate) waiters: Vec<Waker>,
    /// Stops the running attempt: aborts its tokio task, or kills the
    /// worker process running it.
    pub(crate) abort: Option<Abort>,
}

impl TaskCell {
    pub(crate) fn new(
        entry: &'static TaskEntry,
        args: Box<[u8]>,
        tags: Tags,
        key: Option<Box<str>>,
        placement: (Arc<Queue>, i16),
        origin: Origin,
    ) -> Self {
        let flags = [
            (origin.durable, FLAG_DURABLE),
            (origin.stored, FLAG_STORED),
            (origin.mirror, FLAG_MIRROR),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .fold(0, |flags, (_, flag)| flags | flag);
        let (queue, priority) = placement;
        TaskCell {
            id: origin.id,
            entry,
            args,
            tags,
            created_at: origin.created_at,
            key,
            queue,
            priority,
            flags: AtomicU16::new(flags),
            window_seq: AtomicU64::new(0),
            _size_class: 0,
            state: Mutex::new(CellState {
                status: origin.status,
                attempts: origin.attempts,
                run_at: origin.run_at,
                started_at: None,
                finished_at: None,
                output: None,
                extra: origin.scheduled.map(|tick| {
                    Box::new(Extra {
                        scheduled: Some(tick),
                        ..Extra::default()
                    })
                }),
                handles: origin.handles,
                written: None,
                waiters: Vec::new(),
                abort: None,
            }),
        }
    }

    fn flag(&self, flag: u16) -> bool {
        self.flags.load(Ordering::Acquire) & flag != 0
    }

    /// Sets `flag`; whether it was clear before.
    fn set_flag(&self, flag: u16) -> bool {
        self.flags.fetch_or(flag, Ordering::AcqRel) & flag == 0
    }

    /// Clears `flag`; whether it was set before.
    fn clear_flag(&self, flag: u16) -> bool {
        self.flags.fetch_and(!flag, Ordering::AcqRel) & flag != 0
    }

    pub(crate) fn is_durable(&self) -> bool {
        self.flag(FLAG_DURABLE)
    }

    pub(crate) fn is_stored(&self) -> bool {
        self.flag(FLAG_STORED)
    }

    pub(crate) fn is_released(&self) -> bool {
        self.flag(FLAG_RELEASED)
    }

    pub(crate) fn is_mirror(&self) -> bool {
        self.flag(FLAG_MIRROR)
    }

    /// Marks the task as followed through the store rather than run here.
    pub(crate) fn set_mirror(&self, mirror: bool) {
        match mirror {
            true => drop(self.set_flag(FLAG_MIRROR)),
            false => drop(self.clear_flag(FLAG_MIRROR)),
        }
    }

    /// Marks the task to run again at the next start.
    pub(crate) fn release(&self) {
        self.set_flag(FLAG_RELEASED);
    }

    /// Marks a task enqueued elsewhere that this instance claimed.
    pub(crate) fn set_foreign(&self) {
        self.set_flag(FLAG_FOREIGN);
    }

    pub(crate) fn is_foreign(&self) -> bool {
        self.flag(FLAG_FOREIGN)
    }

    /// Marks the task as being enqueued: its row may be claimed before the
    /// enqueue is done.
    pub(crate) fn set_admitting(&self, admitting: bool) {
        match admitting {
            true => drop(self.set_flag(FLAG_ADMITTING)),
            false => drop(self.clear_flag(FLAG_ADMITTING)),
        }
    }

    pub(crate) fn is_admitting(&self) -> bool {
        self.flag(FLAG_ADMITTING)
    }

    /// Holds handles back until the store has written the key's release.
    pub(crate) fn hold_for_key_release(&self) {
        self.set_flag(FLAG_RELEASING);
    }

    pub(crate) fn is_releasing_key(&self) -> bool {
        self.flag(FLAG_RELEASING)
    }

    /// The key's release is written (or will never be): wakes the handles.
    pub(crate) fn key_released(&self) {
        if self.clear_flag(FLAG_RELEASING) {
            let waiters = std::mem::take(&mut self.lock().waiters);
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// Marks the cell as holding its queue's and executor's slots.
    pub(crate) fn admit(&self) {
        self.set_flag(FLAG_ADMITTED);
    }

    /// Whether it holds its queue's and executor's slots.
    pub(crate) fn is_admitted(&self) -> bool {
        self.flag(FLAG_ADMITTED)
    }

    /// Stops holding its slots; whether it held them (then the caller
    /// gives them back, once).
    pub(crate) fn take_admitted(&self) -> bool {
        self.clear_flag(FLAG_ADMITTED)
    }

    /// Gives the finished cell its place `seq` in the memory window; whether
    /// this call was the first to.
    pub(crate) fn enter_window(&self, seq: u64) -> bool {
        self.window_seq
            .compare_exchange(0, seq, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The cell's place in the memory window of finished records; 0 while
    /// it has none.
    pub(crate) fn window_seq(&self) -> u64 {
        self.window_seq.load(Ordering::Acquire)
    }

    /// Records that the row is committed and wakes `persisted()` futures.
    pub(crate) fn mark_stored(&self) {
        if self.set_flag(FLAG_STORED) {
            let waiters = std::mem::take(&mut self.lock().extra().persist_waiters);
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// Records that the store gave up on this row and wakes `persisted()`.
    pub(crate) fn mark_unwritten(&self) {
        if self.set_flag(FLAG_UNWRITTEN) {
            let waiters = std::mem::take(&mut self.lock().extra().persist_waiters);
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    pub(crate) fn is_unwritten(&self) -> bool {
        self.flag(FLAG_UNWRITTEN)
    }

    /// Forgets how to stop an attempt that has ended.
    pub(crate) fn clear_abort(&self) {
        let stale = self.lock().abort.take();
        drop(stale);
    }

    /// A new handle to this task.
    pub(crate) fn add_handle(&self) {
        self.lock().handles += 1;
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

    /// Remembers how to stop the running attempt; stops it at once if the
    /// task already finished (cancelled before this was stored).
    pub(crate) fn set_abort(&self, abort: Abort) {
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
        let extra = state.extra.as_ref();
        TaskRecord {
            id: self.id,
            name: self.entry.name().to_owned(),
            executor: self.entry.executor(),
            queue: self.queue.name().to_string(),
            priority: self.priority,
            status: state.status,
            created_at: self.created_at.get(),
            run_at: state.run_at.get(),
            started_at: state.started_at.map(Stamp::get),
            finished_at: state.finished_at.map(Stamp::get),
            attempts: state.attempts,
            last_error: state.last_error().cloned(),
            tags: self.tags.clone(),
            logs: extra
                .map(|extra| extra.logs.iter().cloned().collect())
                .unwrap_or_default(),
            logs_dropped: extra.map_or(0, |extra| extra.logs_dropped),
            scheduled: state.scheduled().cloned(),
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
    /// The queue it waits in.
    pub queue: String,
    /// Its priority in the queue: higher runs first.
    pub priority: i16,
    /// Its status when the snapshot was taken.
    pub status: TaskStatus,
    /// When it was enqueued.
    pub created_at: SystemTime,
    /// Not before this time may it (or its next attempt) start: the
    /// enqueue time, or later for a delayed task or a retry's wait.
    pub run_at: SystemTime,
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
    /// Log lines the task recorded, oldest first, each with its attempt.
    /// With a task store they are stored too and read back by `get` after
    /// a restart (`list` leaves them out).
    pub logs: Vec<LogRecord>,
    /// Log lines past the per-task cap, counted but not kept.
    pub logs_dropped: u32,
    /// The schedule and tick that created it, for a task a schedule
    /// fired; `None` for one enqueued by a call.
    pub scheduled: Option<Tick>,
}

/// The tag a task made by [`TaskManager::retry`](crate::TaskManager::retry)
/// carries: the id of the task it retries.
pub const RETRY_OF_TAG: &str = "taskflow.retry_of";

/// One task's arguments as stored, from
/// [`TaskManager::arguments`](crate::TaskManager::arguments): the tuple of
/// the call's arguments (`Resource<T>` parameters are not arguments) in
/// taskflow's binary encoding, which only the task's own argument types can
/// read.
///
/// Arguments may hold personal data: its `Debug` shows the task's name and
/// the encoding's length, never the values.
///
/// ```
/// use taskflow::{TaskManager, task};
///
/// #[task]
/// async fn greet(name: String, times: u32) {}
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tasks = TaskManager::builder().build().await?;
/// let id = greet::call("Ada".into(), 2).enqueue_on(&tasks)?.id();
/// let arguments = tasks.arguments(id).await?.expect("just enqueued");
/// assert_eq!(arguments.name(), greet::NAME);
/// let (name, times): (String, u32) = arguments.decode()?;
/// assert_eq!((name.as_str(), times), ("Ada", 2));
/// # tasks.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TaskArguments {
    name: String,
    bytes: Vec<u8>,
}

impl TaskArguments {
    pub(crate) fn new(name: String, bytes: Vec<u8>) -> Self {
        TaskArguments { name, bytes }
    }

    /// The registered name of the task they are for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Their encoding, as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes them as `T`: the tuple of the task's argument types, in
    /// order (`(String, u32)` for `fn greet(name: String, times: u32)`,
    /// `()` for none).
    ///
    /// # Errors
    ///
    /// [`Error::StoredArguments`](crate::Error::StoredArguments) when they
    /// are not a `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::Error> {
        taskflow_worker::codec::decode(&self.bytes).map_err(|source| {
            crate::Error::StoredArguments {
                task: self.name.clone(),
                source,
            }
        })
    }

    /// Decodes them with the argument types the task registers in this
    /// binary and writes them as JSON text: an object with one member per
    /// argument, keyed by parameter name in declaration order (a parameter
    /// that is a pattern is named `argument N`, from 1), such as
    /// `{"name":"Ada","times":2}`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`](crate::Error::UnknownTask) when this binary
    /// does not register the task,
    /// [`Error::DuplicateTask`](crate::Error::DuplicateTask) when it
    /// registers the name twice, and
    /// [`Error::StoredArguments`](crate::Error::StoredArguments) when they
    /// do not decode as its argument types (a task declared differently
    /// when they were stored, a damaged row) or JSON cannot express them (a
    /// map keyed by structs, tuples or sequences).
    #[cfg(feature = "admin")]
    pub fn to_json(&self) -> Result<String, crate::Error> {
        let entry = taskflow_worker::Registry::global()?
            .get(&self.name)
            .ok_or_else(|| crate::Error::UnknownTask(self.name.clone()))?;
        entry
            .arguments_json(&self.bytes)
            .map_err(|source| crate::Error::StoredArguments {
                task: self.name.clone(),
                source,
            })
    }
}

impl std::fmt::Debug for TaskArguments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskArguments")
            .field("name", &self.name)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl TaskRecord {
    /// The task this one retries, when [`TaskManager::retry`](crate::TaskManager::retry)
    /// made it (from its [`RETRY_OF_TAG`] tag).
    ///
    /// ```
    /// # async fn f(tasks: &taskflow::TaskManager, failed: taskflow::TaskId) -> Result<(), taskflow::Error> {
    /// let copy = tasks.retry(failed).await?;
    /// let record = tasks.get(copy).await?.expect("just enqueued");
    /// assert_eq!(record.retry_of(), Some(failed));
    /// # Ok(())
    /// # }
    /// ```
    pub fn retry_of(&self) -> Option<TaskId> {
        self.tags.get(RETRY_OF_TAG)?.parse().ok()
    }

    /// Time from the first attempt's start to the final status, once finished
    /// (retry waits included).
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = (self.started_at?, self.finished_at?);
        Some(end.duration_since(start).unwrap_or_default())
    }
}

/// Which records [`TaskManager::list`](crate::TaskManager::list) returns:
/// every condition set must hold. Results come newest first; for the next
/// page, pass the last id seen to [`before`](Self::before).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use taskflow::{TaskFilter, TaskStatus};
/// let hour_ago = SystemTime::now() - Duration::from_secs(3600);
/// let filter = TaskFilter::new()
///     .status(TaskStatus::Failed)
///     .name("app::send_email")
///     .queue("emails")
///     .tag("tenant", "acme")
///     .created_after(hour_ago)
///     .limit(20);
/// # let _ = filter;
/// // One-off tasks due next week, and what a schedule fired:
/// let week = Duration::from_secs(7 * 24 * 3600);
/// let upcoming = TaskFilter::new()
///     .status(TaskStatus::Pending)
///     .run_after(SystemTime::now())
///     .run_before(SystemTime::now() + week);
/// let nightly = TaskFilter::new().schedule("app::nightly_report");
/// # let _ = (upcoming, nightly);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskFilter {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks registered under this name.
    pub name: Option<String>,
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Only tasks with this tag (key, value).
    pub tag: Option<(String, String)>,
    /// Only tasks enqueued at or after this time.
    pub created_after: Option<SystemTime>,
    /// Only tasks enqueued before this time.
    pub created_before: Option<SystemTime>,
    /// Only tasks whose `run_at` is at or after this time.
    pub run_after: Option<SystemTime>,
    /// Only tasks whose `run_at` is before this time.
    pub run_before: Option<SystemTime>,
    /// Only tasks this schedule fired.
    pub schedule: Option<String>,
    /// Only tasks older than this one (ids sort by creation): the cursor.
    pub before: Option<TaskId>,
    /// At most this many (the newest that match).
    pub limit: Option<usize>,
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

    /// Only records of tasks in `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only records of tasks tagged `key` = `value`.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tag = Some((key.into(), value.into()));
        self
    }

    /// Only tasks enqueued at or after `time`.
    pub fn created_after(mut self, time: SystemTime) -> Self {
        self.created_after = Some(time);
        self
    }

    /// Only tasks enqueued before `time`.
    pub fn created_before(mut self, time: SystemTime) -> Self {
        self.created_before = Some(time);
        self
    }

    /// Only tasks whose `run_at` (when they may start) is at or after
    /// `time`: with [`run_before`](Self::run_before) and a PENDING status,
    /// the one-off tasks due in a window.
    pub fn run_after(mut self, time: SystemTime) -> Self {
        self.run_after = Some(time);
        self
    }

    /// Only tasks whose `run_at` is before `time`.
    pub fn run_before(mut self, time: SystemTime) -> Self {
        self.run_before = Some(time);
        self
    }

    /// Only tasks the schedule `name` fired (see
    /// [`TaskRecord::scheduled`]).
    pub fn schedule(mut self, name: impl Into<String>) -> Self {
        self.schedule = Some(name.into());
        self
    }

    /// Only tasks enqueued before task `id`: pass the last id of a page to
    /// get the next one.
    pub fn before(mut self, id: TaskId) -> Self {
        self.before = Some(id);
        self
    }

    /// At most `limit` records (the newest).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether a task with this record matches.
    pub fn matches(&self, record: &TaskRecord) -> bool {
        self.status.is_none_or(|s| s == record.status)
            && self.name.as_deref().is_none_or(|n| n == record.name)
            && self.queue.as_deref().is_none_or(|q| q == record.queue)
            && self
                .tag
                .as_ref()
                .is_none_or(|(k, v)| record.tags.get(k) == Some(v.as_str()))
            && self.created_after.is_none_or(|t| record.created_at >= t)
            && self.created_before.is_none_or(|t| record.created_at < t)
            && self.run_after.is_none_or(|t| record.run_at >= t)
            && self.run_before.is_none_or(|t| record.run_at < t)
            && self.schedule.as_deref().is_none_or(|name| {
                record
                    .scheduled
                    .as_ref()
                    .is_some_and(|tick| tick.schedule == name)
            })
            && self.before.is_none_or(|id| record.id < id)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_keeps_a_time_to_the_nanosecond() {
        let now = SystemTime::now();
        assert_eq!(Stamp::from(now).get(), now);
        let later = now + Duration::from_nanos(1);
        assert!(Stamp::from(later) > Stamp::from(now));
        // Outside 1970..2554: held at the ends, never a panic.
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            Stamp::from(before).get(),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1)
        );
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(600 * 365 * 86_400);
        assert_eq!(
            Stamp::from(far).get(),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::MAX)
        );
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }

    #[test]
    fn a_record_stays_small() {
        // B9: a finished record is budgeted at 512 bytes with its map entry.
        let size = std::mem::size_of::<TaskCell>();
        assert!(size <= 240, "TaskCell is {size} bytes");
        // Exactly 240 where B1 was measured: with the `Arc`'s two counts a
        // 256-byte request, which glibc serves from 272-byte chunks (see
        // `TaskCell::_size_class`).
        #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
        assert_eq!(size, 240, "TaskCell is {size} bytes");
    }
}
