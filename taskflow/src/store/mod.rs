//! The storage seam: everything durable goes through [`Store`].
//!
//! A store keeps task rows, claims ready work for an instance, keeps instance
//! leases, task logs, queue settings and schedules, and fires a schedule's
//! tick as an insert unique on (schedule, tick). It **persists and claims; it never
//! decides a status**: every status it writes was computed above it by the
//! lifecycle's one transition function, and arrives as a compare-and-set
//! ([`Change`] with its [`Expect`]) that the store applies only if the row is
//! still as the caller saw it. That is what lets several processes (SQLite) or
//! hosts (PostgreSQL) share one table: a claim is atomic, a write by an owner
//! whose lease was taken is refused, and recovery, released idempotency keys
//! and rescued rows all go through the same code whatever the backend.
//!
//! The trait is object-safe, with boxed futures: a manager holds an
//! `Arc<dyn Store>` chosen at run time (`snapshot_db` or `postgres`), so
//! neither `TaskManager` nor the generated code is generic over a backend. A
//! store call is I/O (microseconds for SQLite, a round trip for PostgreSQL)
//! and carries a batch, so one allocation for the future is noise.
//!
//! [`SqliteStore`] is the embedded backend; `PostgresStore` (feature
//! `postgres`) lets several hosts share one queue. The in-memory index of
//! live tasks in front of a store is a cache for this process, not a
//! backend.
//!
//! The contract every backend keeps is proven by one conformance suite
//! (`tests/src/conformance.rs`), run against each backend.

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use taskflow_worker::{Executor, LogRecord, Tags, TaskError, TaskId};

use crate::lifecycle::TaskStatus;
use crate::record::{TaskFilter, TaskRecord};
use crate::schedule::CatchUp;

#[cfg(feature = "postgres")]
pub(crate) use postgres::insert_in;
#[cfg(feature = "postgres")]
pub use postgres::{DEFAULT_SCHEMA, PostgresConfig, PostgresStore};
pub use sqlite::SqliteStore;
pub(crate) use sqlite::StoreConfig;

/// A future a [`Store`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A durable home for tasks, shared by every process or host that opens it.
///
/// Times are wall-clock [`SystemTime`]s computed by the caller, except for
/// instance leases, which a backend measures with its own clock (SQLite: the
/// host's; PostgreSQL: the server's) so hosts with skewed clocks agree. A
/// stored time is kept to the microsecond: finer parts may be lost.
///
/// Every method is one atomic unit: it applies entirely or not at all, and a
/// failure leaves the store as it was. Errors are transient from the
/// caller's point of view (a busy or full disk, a lost connection); the
/// caller keeps what it wanted to write and tries again.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Inserts new tasks, each with the state it has now (usually PENDING),
    /// in order; the answer has one [`Inserted`] per task, in the same order.
    ///
    /// A task with an idempotency key is inserted only while no task of the
    /// same name holds that key (PENDING, RUNNING or SUCCESS); otherwise the
    /// holder is returned and nothing is written for it. A task of this very
    /// batch can be the holder. A task inserted already FAILED, CANCELLED or
    /// INTERRUPTED holds no key. A task whose id is already stored is left
    /// as it is ([`Inserted::Duplicate`]).
    ///
    /// A PENDING task that is ready (`run_at` not after now) and has a
    /// [`claim`](NewTask::claim) is a claim made as it is inserted, saving
    /// the claim's write: it goes in RUNNING, owned by
    /// the claimer, with one more attempt, started now
    /// ([`Inserted::Claimed`]) — exactly as if it had been inserted PENDING
    /// and claimed at once — provided no ready PENDING task of the same
    /// queue and executor with an equal or higher priority is already
    /// stored, and the queue is not paused. The check is made, per queue and
    /// executor, against the lowest priority among the claimed tasks and
    /// before any task of the call is written; when it fails, those tasks
    /// go in PENDING ([`Inserted::New`]) for the claimer. As with
    /// [`claim_ready`](Self::claim_ready), a claimer that holds no live
    /// lease claims nothing: its tasks go in PENDING.
    fn insert(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<Inserted>, StoreError>>;

    /// Applies changes to stored tasks, in order: each is written only if
    /// its row still matches its [`Expect`] (as the changes before it in the
    /// batch left it); the answer says, per change, whether it was. A change
    /// to an unknown task is not written.
    ///
    /// A written change sets every field of [`TaskState`], except that a
    /// state without `output` keeps the stored output. A final status other
    /// than SUCCESS releases the task's idempotency key. A cancel
    /// request ([`request_cancel`](Self::request_cancel)) stays on the row
    /// while the new status is PENDING or RUNNING and is cleared by a final
    /// one.
    fn apply(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<bool>, StoreError>>;

    /// Appends log lines to their tasks, in order, keeping the latest
    /// `per_task` lines of each task: older lines past the cap (stored or in
    /// this batch) are deleted, and counted in the task's
    /// [`logs_dropped`](TaskRecord::logs_dropped).
    fn append_logs(
        &self,
        lines: Vec<LogLine>,
        per_task: u32,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Claims ready tasks for `owner`: for each [`Demand`], up to `slots`
    /// PENDING tasks of that queue and executor with one of its `names`
    /// whose `run_at` is at or before `now`, in a queue that is not paused:
    /// highest priority first; within a priority, earliest `run_at` first,
    /// then in the order they were inserted. Each claimed row becomes
    /// RUNNING, owned by `owner`, with its attempt count raised by one and
    /// `started_at` set to `now` unless it was set already, atomically: two
    /// claimers never get the same task. The claimed tasks come back as
    /// their rows now are, with their cancel request if one is pending.
    ///
    /// Also tells when the next task of these queues becomes ready (the
    /// earliest `run_at` after `now` of a PENDING task of a demanded queue
    /// that is not paused, whatever its executor or name), so the caller can
    /// sleep until then.
    ///
    /// `owner` claims only while it holds a live lease (registered by
    /// [`heartbeat`](Self::heartbeat), not expired by the store's clock,
    /// not retired), checked in the same atomic step as the claim:
    /// otherwise nothing is claimed and [`Claimed::lapsed`] says so. An
    /// instance whose lease lapsed may have been found dead and its tasks
    /// rescued already; what it claimed now would be run by a host that no
    /// longer counts as alive, and could outlive the rescue that missed it.
    /// It claims again once a heartbeat renews its lease.
    fn claim_ready<'a>(
        &'a self,
        owner: &'a str,
        demand: &'a [Demand],
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Claimed, StoreError>>;

    /// The stored task `id`, with its logs, or why its row is unreadable.
    fn get(&self, id: TaskId) -> BoxFuture<'_, Result<Option<Row>, StoreError>>;

    /// The stored tasks among `ids` (without logs), in no particular order;
    /// unknown ids are left out.
    fn get_many<'a>(&'a self, ids: &'a [TaskId]) -> BoxFuture<'a, Result<Vec<Row>, StoreError>>;

    /// Tasks matching `filter`, newest first (by id), at most its limit,
    /// after its cursor; rows that cannot be read are returned apart.
    fn list<'a>(&'a self, filter: &'a TaskFilter) -> BoxFuture<'a, Result<Listed, StoreError>>;

    /// Asks the owner of RUNNING task `id` to cancel it (it learns at its
    /// next heartbeat). Whether the task was RUNNING.
    fn request_cancel(&self, id: TaskId) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Registers `instance` or renews its lease for `lease` from now (the
    /// store's clock). Answers whether the instance still held its lease,
    /// and the RUNNING tasks it owns that someone asked to cancel.
    ///
    /// `held` is `false` for an instance not registered (its first
    /// heartbeat) or [retired](Self::retire) since its last one: once
    /// another instance declared it dead and took its tasks, it is
    /// registered afresh, but what it ran is no longer its own. A lease that
    /// lapsed but was not retired is renewed and still held.
    fn heartbeat<'a>(
        &'a self,
        instance: &'a InstanceInfo,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Heartbeat, StoreError>>;

    /// The owners to rescue, each once: registered instances whose lease
    /// has expired (by the store's clock), and owners of RUNNING tasks that
    /// hold no lease at all (no instance row).
    ///
    /// A RUNNING task is its owner's only while the owner holds a lease; an
    /// owner with no lease is as dead as one whose lease expired, and its
    /// tasks go the same way (see [`orphans`](Self::orphans)). Without
    /// them, a task could stay RUNNING for good: its owner was forgotten
    /// ([`retire_expired`](Self::retire_expired) by a rescuer, or
    /// [`retire`](Self::retire) at a graceful stop whose last writes
    /// failed) while it still owned the task, for instance one it claimed
    /// between the rescuer reading its orphans and forgetting it, and it
    /// died before a heartbeat registered it again. They are listed here
    /// rather than by a method of their own because the rescue of both is
    /// one and the same (their orphans, each change fenced on owner and
    /// attempt, then `retire_expired`, which forgets nothing for an owner
    /// with no row), and because a default for a separate method could not
    /// find them, so a backend that kept the older contract would strand
    /// them silently.
    ///
    /// This is safe because an owner's row exists before it owns any task:
    /// a claim needs a live lease ([`claim_ready`](Self::claim_ready),
    /// [`insert`](Self::insert)), and a task inserted RUNNING with an owner
    /// (which the runtime never does) must be inserted by a registered one.
    fn expired_instances(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// The RUNNING tasks `instance` owns.
    fn orphans<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<Row>, StoreError>>;

    /// The ids of the RUNNING tasks `instance` owns: what
    /// [`orphans`](Self::orphans) finds, without reading the rows (an
    /// instance checks them against what it runs every few heartbeats).
    /// Rows whose id cannot be read are left out. The default reads the
    /// rows; a backend answers from its index.
    fn owned<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<TaskId>, StoreError>> {
        Box::pin(async move {
            let rows = self.orphans(instance).await?;
            Ok(rows
                .iter()
                .filter_map(|row| match row {
                    Ok(task) => Some(task.record.id),
                    Err(corrupt) => corrupt.id,
                })
                .collect())
        })
    }

    /// Forgets `instance` (after its graceful stop). Its later heartbeat
    /// finds its lease gone.
    fn retire<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forgets `instance` if its lease is still expired (by the store's
    /// clock), as one atomic step: what a rescuer does once it took the
    /// instance's orphans. Whether it was forgotten. Its later heartbeat
    /// finds its lease gone.
    ///
    /// An instance that renewed its lease since it was found expired (it
    /// was frozen or cut off, and came back) is kept: it runs on, and if it
    /// were forgotten, what it runs would have an owner with no lease, to
    /// be rescued (see [`expired_instances`](Self::expired_instances))
    /// while it is still running there.
    fn retire_expired<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes finished tasks (and their logs and tags) whose `finished_at`
    /// is before `before`; PENDING and RUNNING tasks are never deleted. How
    /// many tasks went.
    fn prune(&self, before: SystemTime) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The names of the PENDING and RUNNING tasks, each once (an instance
    /// warns about those its binary does not register: it leaves them to
    /// one that does).
    fn unfinished_names(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// Every queue the store knows of (with a setting, or with a PENDING or
    /// RUNNING task), in no particular order, with its paused flag and its
    /// PENDING and RUNNING counts.
    fn queues(&self) -> BoxFuture<'_, Result<Vec<QueueRow>, StoreError>>;

    /// Pauses or resumes `queue` for every instance sharing the store.
    fn set_paused<'a>(
        &'a self,
        queue: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Wake-ups for changes other processes or hosts make, if the backend
    /// sends any (PostgreSQL's `LISTEN`): the claimer then starts their
    /// work, and follows their tasks, without waiting for its next poll.
    /// A wake-up may be spurious or lost; polling stays the fallback.
    /// Default: none (the claimer polls).
    fn notifications(&self) -> Option<Arc<Notifications>> {
        None
    }

    /// Whether `instance` does the store's upkeep (rescuing dead
    /// instances' tasks, retention) for the next `lease`: the store grants
    /// it to one instance at a time, renews it for its holder, and gives
    /// it to another once the holder's lease lapsed (by the store's clock)
    /// or it [retired](Self::retire). Default: every instance leads (a
    /// backend that does not elect; upkeep is safe to run twice, since
    /// every change it makes is fenced).
    fn lead<'a>(
        &'a self,
        instance: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let _ = (instance, lease);
        Box::pin(async { Ok(true) })
    }

    /// Fires ticks of schedules, in order, answering each: a fire inserts
    /// the tick's task, PENDING, naming the schedule and tick, and records
    /// the tick and task as the schedule's last fire, atomically. The
    /// insert is unique on (schedule, tick): however many instances fire
    /// the same tick at once, one task is written and the others are
    /// answered [`Fired::Taken`], as is a tick at or before the schedule's
    /// last fired one. Nothing is written for a schedule that is paused
    /// ([`Fired::Paused`]) or not stored ([`Fired::Unknown`]), nor for a
    /// tick at or before its [`since`](ScheduleRow::since)
    /// ([`Fired::Stale`]) unless [`ignore_since`](Fire::ignore_since).
    /// Each fire is atomic on its own; a batch saves round trips and
    /// commits.
    fn fire(&self, fires: Vec<Fire>) -> BoxFuture<'_, Result<Vec<Fired>, StoreError>>;

    /// Writes the schedules a binary declares: each is created with its
    /// state if absent; a declared one already stored takes the row's
    /// definition (task, spec, time zone, catch-up, call) and keeps its
    /// state (paused, since, last fire). A schedule of the same name that
    /// was added at run time is left as it is.
    fn declare_schedules(
        &self,
        schedules: Vec<ScheduleRow>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Creates a schedule with its state; `false`, writing nothing, when
    /// one of that name exists.
    fn add_schedule(&self, schedule: ScheduleRow) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Deletes schedule `name` (its tasks stay). Whether it existed.
    fn remove_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Pauses or resumes schedule `name` for every instance. Resuming a
    /// paused schedule moves its [`since`](ScheduleRow::since) to `now`, so
    /// the ticks it slept through are never fired. Whether it exists.
    fn set_schedule_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every stored schedule, by name; a row that cannot be read comes
    /// back as why.
    fn schedules(&self) -> BoxFuture<'_, Result<Vec<ScheduleRead>, StoreError>>;
}

/// A schedule as stored: its definition and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleRow {
    /// Its name (the task's name for a declared schedule).
    pub name: String,
    /// The task it enqueues.
    pub task: String,
    /// When it fires: `every <milliseconds>` or `cron <expression>`.
    pub spec: String,
    /// The time zone of a cron expression.
    pub timezone: Option<String>,
    /// Declared on its task (rather than added at run time).
    pub declared: bool,
    /// What it does about missed ticks.
    pub catch_up: CatchUp,
    /// The encoded arguments of its task.
    pub args: Vec<u8>,
    /// Its task's tags.
    pub tags: Tags,
    /// Its task's queue, if not the task's own.
    pub queue: Option<String>,
    /// Its task's priority, if not the task's own.
    pub priority: Option<i16>,
    /// Paused: it fires nothing.
    pub paused: bool,
    /// No tick at or before this fires: its creation, or last resume.
    pub since: SystemTime,
    /// The tick it last fired.
    pub last_tick: Option<SystemTime>,
    /// The task that fire created.
    pub last_task: Option<TaskId>,
}

impl ScheduleRow {
    /// Schedule `name` of task `task` firing on `spec` (`every <ms>` or
    /// `cron <expression>`), created at `since`, not paused and never
    /// fired, with no arguments, tags, queue or priority of its own.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use taskflow::store::ScheduleRow;
    /// let row = ScheduleRow::new("cleanup", "app::cleanup", "every 300000", SystemTime::now());
    /// assert!(row.last_tick.is_none() && !row.paused);
    /// ```
    pub fn new(
        name: impl Into<String>,
        task: impl Into<String>,
        spec: impl Into<String>,
        since: SystemTime,
    ) -> Self {
        ScheduleRow {
            name: name.into(),
            task: task.into(),
            spec: spec.into(),
            timezone: None,
            declared: false,
            catch_up: CatchUp::One,
            args: Vec::new(),
            tags: Tags::default(),
            queue: None,
            priority: None,
            paused: false,
            since,
            last_tick: None,
            last_task: None,
        }
    }
}

/// A stored schedule, or why its row cannot be read.
pub type ScheduleRead = Result<ScheduleRow, CorruptSchedule>;

/// A stored schedule whose row cannot be read (undecodable tags, another
/// codec version): reported and left in place.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CorruptSchedule {
    /// The schedule's name.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for CorruptSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "schedule `{}` in the task store is corrupt: {}",
            self.name, self.reason
        )
    }
}

/// One tick of a schedule to fire: see [`Store::fire`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Fire {
    /// The schedule.
    pub schedule: String,
    /// The tick.
    pub tick: SystemTime,
    /// The task it creates (PENDING; its claim and idempotency key are
    /// ignored).
    pub task: NewTask,
    /// Fire even a tick at or before the schedule's `since` (a schedule
    /// that runs on start fires the tick of the period it starts in).
    pub ignore_since: bool,
}

impl Fire {
    /// Fires tick `tick` of `schedule` with `task`.
    pub fn new(schedule: impl Into<String>, tick: SystemTime, task: NewTask) -> Self {
        Fire {
            schedule: schedule.into(),
            tick,
            task,
            ignore_since: false,
        }
    }
}

/// What [`Store::fire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fired {
    /// The task is written: this call fired the tick.
    New,
    /// Not written: this tick (or a later one) was fired already.
    Taken,
    /// Not written: the schedule is paused.
    Paused,
    /// Not written: the tick is at or before the schedule's `since`.
    Stale,
    /// Not written: no such schedule is stored.
    Unknown,
}

/// What a [`Store`] wakes its claimer with (see [`Store::notifications`]).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Notifications {
    /// Work may have become ready: a task was inserted or made PENDING
    /// again, or a queue resumed.
    pub ready: tokio::sync::Notify,
    /// Tasks changed status (they finished): handles following a task
    /// another instance runs may look again.
    pub changed: tokio::sync::Notify,
}

/// A task as first written.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewTask {
    /// Its id.
    pub id: TaskId,
    /// Its registered name.
    pub name: String,
    /// Where it runs.
    pub executor: Executor,
    /// Its queue.
    pub queue: String,
    /// Higher runs first within its queue.
    pub priority: i16,
    /// Its encoded arguments.
    pub args: Vec<u8>,
    /// Its tags.
    pub tags: Tags,
    /// Its idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// When it was enqueued.
    pub created_at: SystemTime,
    /// Its state now: PENDING for a new task, or already final for one
    /// cancelled before it was first written.
    pub state: TaskState,
    /// The instance inserting it has a free slot for it: insert it claimed
    /// by this owner (RUNNING, one more attempt, started now), unless that
    /// would jump its queue. See [`Store::insert`].
    pub claim: Option<String>,
}

impl NewTask {
    /// Task `id` of the task registered as `name`, enqueued at
    /// `created_at` and ready then: PENDING in the default queue at
    /// priority 0, with no arguments, tags or idempotency key. Set the
    /// other fields as needed.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use taskflow::store::NewTask;
    /// use taskflow::{Executor, TaskId, TaskStatus};
    /// let now = SystemTime::now();
    /// let mut task = NewTask::new(TaskId::at(now), "app::send_email", Executor::Async, now);
    /// task.priority = 5;
    /// assert_eq!(task.queue, taskflow::DEFAULT_QUEUE);
    /// assert_eq!(task.state.status, TaskStatus::Pending);
    /// ```
    pub fn new(
        id: TaskId,
        name: impl Into<String>,
        executor: Executor,
        created_at: SystemTime,
    ) -> Self {
        NewTask {
            id,
            name: name.into(),
            executor,
            queue: crate::queue::DEFAULT_QUEUE.to_owned(),
            priority: 0,
            args: Vec::new(),
            tags: Tags::default(),
            idempotency_key: None,
            created_at,
            state: TaskState::pending(created_at),
            claim: None,
        }
    }
}

/// The mutable part of a stored task.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TaskState {
    /// Its status.
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// Not before this time may it start (PENDING tasks).
    pub run_at: SystemTime,
    /// When its first attempt started.
    pub started_at: Option<SystemTime>,
    /// When it reached a final status.
    pub finished_at: Option<SystemTime>,
    /// The failure of its latest failed attempt.
    pub last_error: Option<TaskError>,
    /// The instance running it (RUNNING), or none.
    pub owner: Option<String>,
    /// The encoded output, kept for tasks with an idempotency key.
    pub output: Option<Vec<u8>>,
}

impl TaskState {
    /// A task that may start at `run_at`.
    pub fn pending(run_at: SystemTime) -> Self {
        TaskState {
            status: TaskStatus::Pending,
            attempts: 0,
            run_at,
            started_at: None,
            finished_at: None,
            last_error: None,
            owner: None,
            output: None,
        }
    }
}

/// The outcome of inserting one [`NewTask`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Inserted {
    /// Written (PENDING, or the state it came with).
    New,
    /// Written RUNNING, claimed by its [`claim`](NewTask::claim) owner.
    Claimed,
    /// Not written: its key is held by this task.
    Existing(Box<Row>),
    /// Not written: a task with this id is stored already.
    Duplicate,
}

/// A compare-and-set on one stored task.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Change {
    /// The task.
    pub id: TaskId,
    /// What its row must still be for the change to apply.
    pub expect: Expect,
    /// Its new state.
    pub state: TaskState,
}

impl Change {
    /// Sets task `id` to `state` if its row still matches `expect`.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use taskflow::store::{Change, Expect, TaskState};
    /// use taskflow::{TaskId, TaskStatus};
    /// let now = SystemTime::now();
    /// let mut cancelled = TaskState::pending(now);
    /// cancelled.status = TaskStatus::Cancelled;
    /// cancelled.finished_at = Some(now);
    /// let unless_started = Expect::Status { status: TaskStatus::Pending, attempts: 0, owner: None };
    /// let change = Change::new(TaskId::at(now), unless_started, cancelled);
    /// assert_eq!(change.state.status, TaskStatus::Cancelled);
    /// ```
    pub fn new(id: TaskId, expect: Expect, state: TaskState) -> Self {
        Change { id, expect, state }
    }
}

/// The condition a [`Change`] is fenced on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expect {
    /// RUNNING, owned by `owner`, at attempt count `attempts`: how the
    /// instance running a task writes its progress. An instance that lost its
    /// lease (and so the task) is refused.
    Owned {
        /// The owner.
        owner: String,
        /// The attempt count its claim set.
        attempts: u32,
    },
    /// In `status` with `attempts` attempts, whoever owns it: how a task
    /// nobody runs is changed (a PENDING task cancelled, an orphan rescued).
    Status {
        /// The status.
        status: TaskStatus,
        /// The attempt count.
        attempts: u32,
        /// The owner it must have (orphans), or any.
        owner: Option<String>,
    },
}

/// How many tasks of one queue and executor an instance can start now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Demand {
    /// The queue.
    pub queue: String,
    /// The executor.
    pub executor: Executor,
    /// Free slots.
    pub slots: usize,
    /// The task names of this executor the claimer can run (a binary never
    /// claims a task it does not register).
    pub names: Arc<[String]>,
}

impl Demand {
    /// Up to `slots` tasks of `queue` on `executor`, among `names`.
    pub fn new(
        queue: impl Into<String>,
        executor: Executor,
        slots: usize,
        names: Arc<[String]>,
    ) -> Self {
        Demand {
            queue: queue.into(),
            executor,
            slots,
            names,
        }
    }
}

/// What [`Store::claim_ready`] took.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Claimed {
    /// The claimed tasks, RUNNING and owned by the claimer now; a row that
    /// could not be read is not claimed and comes back in `corrupt`.
    pub tasks: Vec<StoredTask>,
    /// Rows met but not claimed because they cannot be read.
    pub corrupt: Vec<CorruptRow>,
    /// When the earliest task of the demanded queues that is not ready yet
    /// becomes ready.
    pub next_run_at: Option<SystemTime>,
    /// Nothing was claimed because the claimer holds no live lease: it
    /// claims again once a heartbeat renews it.
    pub lapsed: bool,
}

/// A task as stored.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoredTask {
    /// What a user sees of it.
    pub record: TaskRecord,
    /// Its encoded arguments.
    pub args: Vec<u8>,
    /// Its encoded output, kept for tasks with an idempotency key.
    pub output: Option<Vec<u8>>,
    /// Its idempotency key.
    pub idempotency_key: Option<String>,
    /// The instance that owns it.
    pub owner: Option<String>,
    /// Someone asked its owner to cancel it: a claimer that gets it cancels
    /// it instead of running it.
    pub cancel_requested: bool,
}

/// A stored row: the task, or why it cannot be read.
pub type Row = Result<StoredTask, CorruptRow>;

/// A stored row that cannot be read as a task: a column of the wrong type,
/// an unknown status or executor, undecodable tags, an unknown codec. It is
/// reported and left in place; every other row still loads.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CorruptRow {
    /// The task's id, when that much is intact.
    pub id: Option<TaskId>,
    /// A key that identifies the row whatever its columns hold (SQLite's
    /// rowid).
    pub key: i64,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for CorruptRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "task {id} (row {})", self.key)?,
            None => write!(f, "row {}", self.key)?,
        }
        write!(f, " in the task store is corrupt: {}", self.reason)
    }
}

/// What [`Store::list`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Listed {
    /// Matching tasks, newest first.
    pub tasks: Vec<StoredTask>,
    /// Rows in the range that cannot be read.
    pub corrupt: Vec<CorruptRow>,
}

/// One log line of a task, as stored.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LogLine {
    /// The task.
    pub task: TaskId,
    /// The line.
    pub record: LogRecord,
}

impl LogLine {
    /// `record`, logged by task `task`.
    ///
    /// ```
    /// use taskflow::store::LogLine;
    /// use taskflow::{LogLevel, LogRecord, TaskId};
    /// let line = LogLine::new(TaskId::new(), LogRecord::new(LogLevel::Info, "app", "sent"));
    /// assert_eq!(line.record.message, "sent");
    /// ```
    pub fn new(task: TaskId, record: LogRecord) -> Self {
        LogLine { task, record }
    }
}

/// An instance, as it registers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InstanceInfo {
    /// Its random token: the owner of the tasks it claims.
    pub id: String,
    /// Its process id, for people reading the store (never for liveness:
    /// a pid means nothing across PID namespaces and hosts).
    pub pid: u32,
    /// Its host name, for people reading the store.
    pub host: String,
}

impl InstanceInfo {
    /// Instance `id` (the owner of the tasks it claims), in process `pid`
    /// on `host`.
    ///
    /// ```
    /// use taskflow::store::InstanceInfo;
    /// let me = InstanceInfo::new("0190b5e2-instance", std::process::id(), "worker-1");
    /// assert_eq!(me.host, "worker-1");
    /// ```
    pub fn new(id: impl Into<String>, pid: u32, host: impl Into<String>) -> Self {
        InstanceInfo {
            id: id.into(),
            pid,
            host: host.into(),
        }
    }
}

/// What a [`Store::heartbeat`] learned.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Heartbeat {
    /// Whether the instance still held its lease. `false` for a new
    /// instance's first heartbeat too.
    pub held: bool,
    /// RUNNING tasks it owns that someone asked to cancel.
    pub cancel: Vec<TaskId>,
    /// Other instances whose lease has not expired: whether anyone else
    /// may be claiming from the same queues.
    pub others: usize,
}

/// A queue as the store sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueRow {
    /// Its name.
    pub name: String,
    /// Whether admission is paused.
    pub paused: bool,
    /// Its PENDING tasks.
    pub pending: u64,
    /// Its RUNNING tasks.
    pub running: u64,
}

/// The queues a backend read, sorted by name: `settings` are its stored
/// (name, paused) pairs, `counts` its (queue, status, count) of unfinished
/// tasks, PENDING or RUNNING.
pub(crate) fn queue_rows(
    settings: impl IntoIterator<Item = (String, bool)>,
    counts: impl IntoIterator<Item = (String, String, u64)>,
) -> Vec<QueueRow> {
    let mut queues: std::collections::BTreeMap<String, QueueRow> = Default::default();
    for (name, paused) in settings {
        let queue = queues.entry(name.clone()).or_default();
        queue.name = name;
        queue.paused = paused;
    }
    for (name, status, count) in counts {
        let queue = queues.entry(name.clone()).or_default();
        queue.name = name;
        match status.as_str() {
            "PENDING" => queue.pending = count,
            _ => queue.running = count,
        }
    }
    queues.into_values().collect()
}

/// A stored log line, from its columns as any backend keeps them: the level
/// as text (an unknown one reads as INFO) and the fields' encoding (an
/// undecodable one becomes a field saying so, so one bad line never hides a
/// task's other lines).
pub(crate) fn log_line(
    attempt: u32,
    at: SystemTime,
    level: &str,
    target: String,
    message: String,
    fields: Option<&[u8]>,
) -> LogRecord {
    use taskflow_worker::LogLevel;
    let level = match level {
        "ERROR" => LogLevel::Error,
        "WARN" => LogLevel::Warn,
        "DEBUG" => LogLevel::Debug,
        "TRACE" => LogLevel::Trace,
        _ => LogLevel::Info,
    };
    let mut record = LogRecord::new(level, target, message).in_attempt(attempt);
    record.at = at;
    if let Some(bytes) = fields {
        record.fields = taskflow_worker::codec::decode::<Vec<(String, String)>>(bytes)
            .unwrap_or_else(|error| vec![("taskflow.corrupt".into(), error.to_string())]);
    }
    record
}

/// A row's tags: none, or their encoding.
pub(crate) fn decode_tags(bytes: Option<Vec<u8>>) -> Result<Tags, String> {
    match bytes {
        None => Ok(Tags::default()),
        Some(bytes) => {
            taskflow_worker::codec::decode(&bytes).map_err(|error| format!("its tags: {error}"))
        }
    }
}

/// The encoding of `tags`, or none for no tags.
pub(crate) fn encode_tags(tags: &Tags) -> Option<Vec<u8>> {
    match tags.is_empty() {
        true => None,
        false => taskflow_worker::codec::encode(tags).ok(),
    }
}

/// A store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (disk full, database locked past the busy timeout,
    /// connection lost).
    #[error("{context}")]
    Backend {
        /// What was being done.
        context: String,
        /// What the backend said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store's file was deleted or replaced while in use: nothing
    /// written from now on would be seen by a restart.
    #[error("{0}")]
    Lost(String),
    /// The store has been closed.
    #[error("the task store is closed")]
    Closed,
}
