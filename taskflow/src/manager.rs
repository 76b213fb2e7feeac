//! [`TaskManager`]: the runtime a service builds once and enqueues on.
//!
//! A manager is a handle to shared state ([`Core`]); clones are cheap and all
//! see the same tasks. When the last clone is dropped without
//! [`shutdown`](TaskManager::shutdown), the manager closes: it admits nothing
//! more, marks PENDING tasks INTERRUPTED, and lets running ones finish.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use taskflow_worker::registry::Registry;
use taskflow_worker::{Executor, Resources, TaskError, TaskId};
use tokio::time::Instant;

use crate::core::{Core, Executors, Parts};
use crate::durable::{Durable, Settings};
use crate::error::Error;
use crate::events::{Bus, EventStream};
use crate::executor::{AsyncExecutor, SyncExecutor};
#[cfg(unix)]
use crate::executor::{ProcessConfig, ProcessExecutor};
use crate::index::LiveIndex;
use crate::lifecycle::TaskStatus;
use crate::queue::{QueueConfig, QueueStats, Scheduler};
use crate::record::{Metrics, TaskArguments, TaskFilter, TaskRecord};
use crate::store::{SqliteStore, Store, StoreConfig};

/// The installed default manager, read on every `name::enqueue`.
static INSTALLED: ArcSwapOption<Inner> = ArcSwapOption::const_empty();

/// Runs tasks, tracks their lifecycle and answers questions about them.
///
/// Build one with [`TaskManager::builder`]; see the [crate docs](crate) for a
/// tour.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    shutdown_timeout: Duration,
    process_shutdown_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.core.close() {
            self.core.interrupt_unfinished(true);
        }
    }
}

/// Calls `f` with the installed manager's core, if one is installed. Reads
/// the global without a lock or a reference-count change.
pub(crate) fn with_installed<R>(f: impl FnOnce(&Arc<Core>) -> R) -> Option<R> {
    let guard = INSTALLED.load();
    guard.as_ref().map(|inner| f(&inner.core))
}

impl TaskManager {
    /// A builder with no caps, no resources and a 30 s shutdown grace.
    pub fn builder() -> TaskManagerBuilder {
        TaskManagerBuilder::default()
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// Makes this manager the default that `name::enqueue(…)` and
    /// [`TaskCall::enqueue`](crate::TaskCall::enqueue) use, replacing any
    /// earlier one. Returns the manager for chaining.
    pub fn install(self) -> Self {
        INSTALLED.store(Some(self.inner.clone()));
        self
    }

    /// The installed default manager.
    pub fn installed() -> Option<TaskManager> {
        INSTALLED.load_full().map(|inner| TaskManager { inner })
    }

    /// A snapshot of the task's record: from memory while the task is live
    /// here or recently finished, else from the task store (whichever
    /// process ran it), with its log lines.
    ///
    /// # Errors
    ///
    /// [`Error::StoreFailed`] when the task store cannot be read,
    /// [`Error::CorruptRow`] when the task's row cannot be read as a task.
    pub async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, Error> {
        self.inner.core.get(id).await
    }

    /// The task's arguments as stored (see [`TaskArguments`]): from memory
    /// while the task is live here or recently finished, else from the task
    /// store, whichever process enqueued it.
    ///
    /// # Errors
    ///
    /// [`Error::StoreFailed`] when the task store cannot be read,
    /// [`Error::CorruptRow`] when the task's row cannot be read as a task.
    pub async fn arguments(&self, id: TaskId) -> Result<Option<TaskArguments>, Error> {
        self.inner.core.arguments(id).await
    }

    /// Records matching `filter`, newest first: with a task store, every
    /// process's tasks, without their log lines. Page through a long history
    /// with [`TaskFilter::limit`] and [`TaskFilter::before`]:
    ///
    /// ```
    /// # use taskflow::{TaskFilter, TaskManager, TaskRecord};
    /// # async fn walk(tasks: &TaskManager) -> Result<(), taskflow::Error> {
    /// let mut page = tasks.list(&TaskFilter::new().limit(100)).await?;
    /// while let Some(last) = page.last() {
    ///     // … show `page` …
    ///     page = tasks.list(&TaskFilter::new().limit(100).before(last.id)).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::StoreFailed`] when the task store cannot be read. Rows that
    /// cannot be read as tasks are skipped (and reported once as
    /// [`EventKind::CorruptRow`](crate::EventKind::CorruptRow)).
    pub async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, Error> {
        self.inner.core.list(filter).await
    }

    /// Waits until every change so far is written to the task store.
    ///
    /// # Errors
    ///
    /// [`Error::NotDurable`] without a task store, [`Error::Store`] when the
    /// store cannot be written right now (it keeps retrying) or its file
    /// was lost.
    pub async fn flush(&self) -> Result<(), Error> {
        match &self.inner.core.durable {
            Some(durable) => durable.flush().await,
            None => Err(Error::NotDurable),
        }
    }

    /// Enqueues a FAILED, INTERRUPTED or CANCELLED task again, as a new task
    /// with the original arguments, tags, queue and priority; returns the
    /// new task's id. With a task store, any process's task can be retried.
    /// The new task also carries the tag [`RETRY_OF_TAG`](crate::RETRY_OF_TAG)
    /// naming the original ([`TaskRecord::retry_of`](crate::TaskRecord::retry_of)), so its origin is kept.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotRetryable`] for a task in another
    /// status, [`Error::UnknownTask`] for a stored task this binary does not
    /// register, and whatever enqueueing reports.
    pub async fn retry(&self, id: TaskId) -> Result<TaskId, Error> {
        self.inner.core.retry(id).await
    }

    /// Deletes the history of tasks that finished more than `age` ago: from
    /// the task store (every process's tasks sharing it) and from this
    /// instance's memory. PENDING and RUNNING tasks are never deleted, and
    /// [`metrics`](Self::metrics) keeps counting what was deleted. Returns
    /// how many records went: from the store when there is one, else from
    /// memory.
    ///
    /// ```
    /// # async fn f(tasks: &taskflow::TaskManager) -> Result<(), taskflow::Error> {
    /// use std::time::Duration;
    /// let deleted = tasks.prune(Duration::from_secs(7 * 24 * 3600)).await?;
    /// # let _ = deleted;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::StoreFailed`] when the task store cannot be written.
    pub async fn prune(&self, age: Duration) -> Result<u64, Error> {
        let core = &self.inner.core;
        let cutoff = std::time::SystemTime::now()
            .checked_sub(age)
            .unwrap_or(std::time::UNIX_EPOCH);
        let forgotten = core.index.forget_finished_before(cutoff);
        match &core.durable {
            Some(durable) => durable.store.prune(cutoff).await.map_err(Error::from_store),
            None => Ok(forgotten),
        }
    }

    /// Counts per status and the mean duration, of the tasks this
    /// instance enqueued or ran.
    pub fn metrics(&self) -> Metrics {
        self.inner.core.index.metrics()
    }

    /// Every lifecycle event from now on.
    pub fn subscribe(&self) -> EventStream {
        self.inner.core.bus.subscribe()
    }

    /// Cancels a task. A PENDING task never runs. A RUNNING async task is
    /// aborted at its next `.await`; a RUNNING process task's worker is
    /// killed. A RUNNING sync task is marked CANCELLED and its result
    /// ignored; its thread stays busy until the function returns, since a
    /// thread cannot be preempted.
    ///
    /// With a task store this reaches a task of any process sharing it: a
    /// PENDING one is cancelled in the store (the claim and the cancel
    /// cannot both win), and a RUNNING one is stopped by the process running
    /// it, which learns of the request at its next heartbeat.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown id, [`Error::AlreadyFinished`] for a
    /// task that reached a final status, and store failures.
    pub async fn cancel(&self, id: TaskId) -> Result<(), Error> {
        self.inner.core.cancel(id).await
    }

    /// Stops admitting tasks from `queue`: PENDING ones wait, running ones
    /// finish. With a task store the pause is stored, so every process
    /// sharing it stops claiming from the queue.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn pause(&self, queue: &str) -> Result<(), Error> {
        self.set_paused(queue, true).await
    }

    /// Admits tasks from `queue` again, after [`pause`](Self::pause).
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn resume(&self, queue: &str) -> Result<(), Error> {
        self.set_paused(queue, false).await
    }

    /// Changes the concurrency cap of `queue` in this instance (`None`: no
    /// cap), at once. A lower cap lets the tasks running now finish and
    /// admits no more until fewer run; a higher one admits what waits. Like
    /// [`QueueConfig::concurrency`](crate::QueueConfig::concurrency) it is
    /// this instance's: other processes sharing the store keep theirs, and a
    /// restart starts again from the builder's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = taskflow::TaskManager::builder().build().await?;
    /// manager.set_queue_concurrency("emails", Some(2))?;
    /// let stats = manager.queue_stats().await?;
    /// let emails = stats.iter().find(|q| q.name == "emails").unwrap();
    /// assert_eq!(emails.concurrency, Some(2));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQueue`] for a malformed queue name or a cap of 0.
    pub fn set_queue_concurrency(
        &self,
        queue: &str,
        concurrency: Option<usize>,
    ) -> Result<(), Error> {
        let reason = match concurrency {
            Some(0) => Some("its concurrency must be at least 1"),
            _ => crate::queue::invalid_queue_name(queue),
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidQueue {
                queue: queue.to_owned(),
                reason,
            });
        }
        let core = &self.inner.core;
        core.scheduler.set_concurrency(core, queue, concurrency);
        Ok(())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), Error> {
        let core = &self.inner.core;
        if let Some(durable) = &core.durable {
            durable
                .store
                .set_paused(queue, paused)
                .await
                .map_err(Error::from_store)?;
        }
        core.scheduler.set_paused(core, queue, paused);
        Ok(())
    }

    /// Per queue: PENDING and RUNNING tasks (with a task store, of every
    /// process sharing it), whether it is paused, and its caps here.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        let core = &self.inner.core;
        let mut stats = core.scheduler.stats(
            core.index.count(TaskStatus::Pending),
            core.index.count(TaskStatus::Running),
        );
        let Some(durable) = &core.durable else {
            return Ok(stats);
        };
        let stored = durable.store.queues().await.map_err(Error::from_store)?;
        for stat in &mut stats {
            stat.pending = 0;
            stat.running = 0;
        }
        for row in stored {
            match stats.iter_mut().find(|stat| stat.name == row.name) {
                Some(stat) => {
                    stat.pending = row.pending;
                    stat.running = row.running;
                    stat.paused = row.paused;
                }
                None => stats.push(QueueStats {
                    name: row.name,
                    pending: row.pending,
                    running: row.running,
                    paused: row.paused,
                    concurrency: None,
                    max_size: None,
                }),
            }
        }
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(stats)
    }

    /// Every schedule: those declared with `#[task(every | cron = …)]` and
    /// those added with [`add_schedule`](Self::add_schedule), with the next
    /// tick, the last tick fired and the task it created. With a task store
    /// this is every instance's view, read from the store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), taskflow::Error> {
    /// use taskflow::{Schedule, TaskManager, task};
    ///
    /// #[task]
    /// async fn cleanup(days: u32) {}
    ///
    /// let tasks = TaskManager::builder().build().await?;
    /// tasks.add_schedule("cleanup-30", Schedule::parse_every("5m")?, cleanup::call(30)).await?;
    /// let schedules = tasks.schedules().await?;
    /// let added = schedules.iter().find(|s| s.name == "cleanup-30").expect("listed");
    /// assert!(!added.declared && !added.paused && added.next_fire.is_some());
    /// tasks.pause_schedule("cleanup-30").await?;
    /// tasks.remove_schedule("cleanup-30").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn schedules(&self) -> Result<Vec<crate::ScheduleInfo>, Error> {
        crate::schedule::ticker::list(self.core()).await
    }

    /// Pauses schedule `name`: it fires nothing until resumed. With a task
    /// store the pause is stored, so every instance sharing it stops firing
    /// it, and it stays paused across restarts.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSchedule`], and store failures.
    pub async fn pause_schedule(&self, name: &str) -> Result<(), Error> {
        crate::schedule::ticker::set_paused(self.core(), name, true).await
    }

    /// Resumes schedule `name` after [`pause_schedule`](Self::pause_schedule).
    /// The ticks it slept through are not fired: it goes on from its next
    /// tick.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSchedule`], and store failures.
    pub async fn resume_schedule(&self, name: &str) -> Result<(), Error> {
        crate::schedule::ticker::set_paused(self.core(), name, false).await
    }

    /// Adds schedule `name`, which enqueues `call` (its arguments, tags,
    /// queue and priority; not its delay or idempotency key) at each tick
    /// of `schedule`, with `catch_up = "one"`. With a task store it is
    /// stored: every instance sharing the store fires it (each tick once),
    /// and it survives restarts until [`remove_schedule`](Self::remove_schedule).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use taskflow::{Schedule, TaskManager, task};
    ///
    /// #[task]
    /// async fn report(customer: u64) {}
    ///
    /// let tasks = TaskManager::builder().build().await?;
    /// let weekdays = Schedule::cron_in("0 9 * * MON-FRI", "Europe/Paris")?;
    /// tasks.add_schedule("report-42", weekdays, report::call(42).queue("reports")).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ScheduleExists`] for a name taken, [`Error::Schedule`] for
    /// an invalid name, [`Error::Argument`] for arguments that cannot be
    /// encoded, [`Error::InvalidQueue`], and store failures.
    pub async fn add_schedule<T: 'static>(
        &self,
        name: &str,
        schedule: crate::Schedule,
        call: crate::TaskCall<T>,
    ) -> Result<(), Error> {
        self.add_schedule_with(name, schedule, call, crate::CatchUp::One)
            .await
    }

    /// As [`add_schedule`](Self::add_schedule), with what to do about
    /// ticks missed while no instance ran ([`CatchUp`](crate::CatchUp)).
    ///
    /// # Errors
    ///
    /// As [`add_schedule`](Self::add_schedule).
    pub async fn add_schedule_with<T: 'static>(
        &self,
        name: &str,
        schedule: crate::Schedule,
        call: crate::TaskCall<T>,
        catch_up: crate::CatchUp,
    ) -> Result<(), Error> {
        let call = call.into_schedule_call()?;
        crate::schedule::ticker::add(self.core(), name, schedule, call, catch_up).await
    }

    /// Removes schedule `name`, added with [`add_schedule`](Self::add_schedule),
    /// for every instance; the tasks it fired stay.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSchedule`], [`Error::ScheduleDeclared`] for a
    /// schedule declared on its task (pause it instead), and store
    /// failures.
    pub async fn remove_schedule(&self, name: &str) -> Result<(), Error> {
        crate::schedule::ticker::remove(self.core(), name).await
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shut_down(&self) -> bool {
        self.inner.core.is_closed()
    }

    /// Shuts down gracefully: admits nothing more (a later enqueue fails with
    /// [`Error::ShutDown`]) and marks PENDING tasks INTERRUPTED at once. Then
    /// it waits for RUNNING tasks: async and sync ones up to the shutdown
    /// timeout, process ones up to the process shutdown timeout. Tasks still
    /// running at their deadline are marked INTERRUPTED (async ones aborted),
    /// every worker process is killed and reaped, and the sync pool's threads
    /// stop.
    ///
    /// A sync task still running at the deadline keeps its thread until its
    /// function returns (a thread cannot be preempted); its result is
    /// ignored. Calling this again returns at once.
    pub async fn shutdown(&self) -> ShutdownReport {
        let core = &self.inner.core;
        // Closing wakes tasks parked at an admission gate and they interrupt
        // themselves, racing the pass below: count what both did together.
        let interrupted_before = core.index.count(TaskStatus::Interrupted);
        core.close();
        core.interrupt_unfinished(true);
        let pending = core
            .index
            .count(TaskStatus::Interrupted)
            .saturating_sub(interrupted_before);
        let pending = usize::try_from(pending).unwrap_or(usize::MAX);
        let now = Instant::now();
        let (in_process, processes) = tokio::join!(
            core.wait_idle(
                &[Executor::Async, Executor::Thread],
                now + self.inner.shutdown_timeout
            ),
            core.wait_idle(
                &[Executor::Process],
                now + self.inner.process_shutdown_timeout
            ),
        );
        let running = core.interrupt_unfinished(false);
        core.async_tasks.stop();
        #[cfg(unix)]
        core.process_tasks.kill_all().await;
        if let Some(durable) = &core.durable
            && let Err(error) = durable.stop(core).await
        {
            tracing::error!("the task store could not be brought up to date at shutdown: {error}");
        }
        ShutdownReport {
            pending_interrupted: pending,
            running_interrupted: running,
            drained: in_process && processes,
        }
    }

    /// Starts every worker process now instead of on the first process
    /// task, so the first one does not pay for a process start.
    ///
    /// # Errors
    ///
    /// [`Error::WorkerStart`] when a worker could not be started or did not
    /// complete its handshake; workers that did start stay in the pool.
    #[cfg(unix)]
    pub async fn prewarm(&self) -> Result<(), Error> {
        let core = &self.inner.core;
        if core.is_closed() {
            return Err(Error::ShutDown);
        }
        core.process_tasks
            .prewarm(core)
            .await
            .map_err(|error: TaskError| Error::WorkerStart(error.message().to_owned()))
    }

    /// The pids of this manager's live worker processes, ascending.
    #[cfg(unix)]
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner.core.process_tasks.pids()
    }
}

impl fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskManager")
            .field("metrics", &self.metrics())
            .field("shut_down", &self.is_shut_down())
            .finish_non_exhaustive()
    }
}

/// What [`TaskManager::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks that had not started, now INTERRUPTED.
    pub pending_interrupted: usize,
    /// Tasks still running at the deadline, now INTERRUPTED.
    pub running_interrupted: usize,
    /// Whether every running task finished within the timeout.
    pub drained: bool,
}

/// Configures and builds a [`TaskManager`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), taskflow::Error> {
/// use std::time::Duration;
///
/// let manager = taskflow::TaskManager::builder()
///     .max_concurrent_tasks(10)
///     .max_sync_threads(4)
///     .resource(reqwest_like::Client::default())
///     .shutdown_timeout(Duration::from_secs(5))
///     .build()
///     .await?;
/// # manager.shutdown().await;
/// # Ok(())
/// # }
/// # mod reqwest_like { #[derive(Default)] pub struct Client; }
/// ```
pub struct TaskManagerBuilder {
    max_concurrent_tasks: Option<usize>,
    max_sync_threads: Option<usize>,
    async_worker_threads: Option<usize>,
    background_nice: Option<i32>,
    max_process_workers: Option<usize>,
    max_tasks_per_worker: Option<u32>,
    process_nice: Option<i32>,
    worker_program: Option<std::path::PathBuf>,
    task_log_level: tracing::level_filters::LevelFilter,
    resources: Resources,
    shutdown_timeout: Duration,
    process_shutdown_timeout: Duration,
    worker_start_timeout: Duration,
    event_capacity: usize,
    snapshot_db: Option<std::path::PathBuf>,
    #[cfg(feature = "postgres")]
    postgres: Option<crate::store::PostgresConfig>,
    requeue_pending: bool,
    retention: Option<Duration>,
    store_busy_timeout: Duration,
    store_max_size: Option<u64>,
    store_file_mode: u32,
    max_finished_in_memory: usize,
    queues: std::collections::HashMap<Arc<str>, QueueConfig>,
    lease: Duration,
    poll_interval: Duration,
    max_logs_per_task: usize,
    memory_horizon: Duration,
    /// Created by the first `subscribe` on the builder.
    bus: Option<Bus>,
}

impl Default for TaskManagerBuilder {
    fn default() -> Self {
        TaskManagerBuilder {
            max_concurrent_tasks: None,
            max_sync_threads: None,
            async_worker_threads: None,
            background_nice: None,
            max_process_workers: None,
            max_tasks_per_worker: None,
            process_nice: None,
            worker_program: None,
            task_log_level: tracing::level_filters::LevelFilter::INFO,
            resources: Resources::new(),
            shutdown_timeout: Duration::from_secs(30),
            process_shutdown_timeout: Duration::from_secs(30),
            worker_start_timeout: Duration::from_secs(30),
            event_capacity: 4096,
            snapshot_db: None,
            #[cfg(feature = "postgres")]
            postgres: None,
            requeue_pending: false,
            retention: None,
            store_busy_timeout: Duration::from_secs(5),
            store_max_size: None,
            store_file_mode: 0o600,
            max_finished_in_memory: 100_000,
            queues: std::collections::HashMap::new(),
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(250),
            max_logs_per_task: 1000,
            memory_horizon: Duration::from_secs(60),
            bus: None,
        }
    }
}

impl TaskManagerBuilder {
    /// At most `n` async tasks run at once; others wait PENDING. Unset: no cap.
    pub fn max_concurrent_tasks(mut self, n: usize) -> Self {
        self.max_concurrent_tasks = Some(n);
        self
    }

    /// Runs sync tasks on exactly `n` dedicated threads named
    /// `taskflow-sync-1` … `taskflow-sync-n`. Unset: tokio's blocking pool.
    pub fn max_sync_threads(mut self, n: usize) -> Self {
        self.max_sync_threads = Some(n);
        self
    }

    /// Runs async tasks on `n` threads of the manager's own (a second tokio
    /// runtime, threads named `taskflow-async-N`) instead of the
    /// application's runtime. Unset: the application's runtime.
    ///
    /// Tasks on the application's runtime share its worker threads with
    /// request handlers: a burst of tasks that wake together runs ahead of a
    /// request queued behind them, even with a cap. On threads of their own,
    /// the operating system's scheduler interleaves them with the handlers'
    /// threads instead, so request latency stays flat under a burst (see
    /// BENCHMARKS.md, B7). Tasks then run on another runtime: `tokio::spawn`
    /// inside one spawns there.
    pub fn async_worker_threads(mut self, n: usize) -> Self {
        self.async_worker_threads = Some(n);
        self
    }

    /// Runs the manager's own threads (the `max_sync_threads` pool and the
    /// `async_worker_threads`) at this nice value, so background work yields
    /// the CPU to request handlers (Linux, where nice is per thread; 0 to 19
    /// without privilege, higher is kinder). Worker processes have
    /// [`process_nice`](Self::process_nice). A value the system refuses is
    /// logged and the threads run at normal priority.
    pub fn background_nice(mut self, nice: i32) -> Self {
        self.background_nice = Some(nice);
        self
    }

    /// At most `n` worker processes, so at most `n` process tasks run at once.
    /// Default: the machine's available parallelism. Workers start with the
    /// first process task (or [`TaskManager::prewarm`]).
    pub fn max_process_workers(mut self, n: usize) -> Self {
        self.max_process_workers = Some(n);
        self
    }

    /// Replaces a worker process after it has run `n` tasks, to bound what a
    /// leaky task can accumulate. Unset: workers are reused indefinitely.
    pub fn max_tasks_per_worker(mut self, n: u32) -> Self {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// Runs worker processes at this nice value (Unix; 0 to 19 for an
    /// unprivileged process, higher is kinder), so CPU-heavy tasks yield the
    /// CPU to request handlers.
    pub fn process_nice(mut self, nice: i32) -> Self {
        self.process_nice = Some(nice);
        self
    }

    /// How long [`TaskManager::shutdown`] lets running process tasks finish
    /// before killing their workers. Default 30 s.
    pub fn process_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.process_shutdown_timeout = timeout;
        self
    }

    /// How long a new worker process has to start and greet. Default 30 s.
    pub fn worker_start_timeout(mut self, timeout: Duration) -> Self {
        self.worker_start_timeout = timeout;
        self
    }

    /// The most verbose `tracing` event, emitted inside a task, that is
    /// recorded on the task's log (as [`log`](crate::log()) lines are): in
    /// async and thread tasks (the events still reach the application's
    /// subscriber) and in worker processes. Default `INFO`; `OFF` records
    /// none, and spares each attempt the switch of `tracing` dispatcher
    /// that recording needs (a few percent of a no-op task's cost).
    ///
    /// ```
    /// use taskflow::TaskManager;
    /// use tracing::level_filters::LevelFilter;
    /// let builder = TaskManager::builder().task_log_level(LevelFilter::DEBUG);
    /// # let _ = builder;
    /// ```
    pub fn task_log_level(mut self, level: tracing::level_filters::LevelFilter) -> Self {
        self.task_log_level = level;
        self
    }

    /// Starts workers from this executable instead of the running one. It
    /// must register the same tasks, with the same executors and argument
    /// and output types, and enter worker mode first thing. A worker that
    /// does not is refused at the handshake, before any task is sent to it,
    /// with an error naming the first task that differs; [`prewarm`] and
    /// each task that would have run there report it, never a hang. For
    /// deployments that wrap the binary.
    ///
    /// [`prewarm`]: TaskManager::prewarm
    pub fn worker_program(mut self, program: impl Into<std::path::PathBuf>) -> Self {
        self.worker_program = Some(program.into());
        self
    }

    /// Adds a resource that tasks take as `Resource<T>`, replacing any earlier
    /// one of the same type.
    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    /// Adds a resource that is already shared.
    pub fn resource_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.resources.insert_arc(value);
        self
    }

    /// How long [`TaskManager::shutdown`] waits for running tasks. Default 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Keeps every task in a SQLite file at `path` (created if missing), so
    /// history survives restarts and acknowledged tasks survive crashes.
    ///
    /// The file is then the queue: an enqueue writes a row, and the manager
    /// claims ready rows for its free slots, marking each RUNNING (owned by
    /// this instance) before its body starts. One thread writes the file,
    /// committing in groups; the async runtime never waits on the disk.
    /// [`TaskHandle::persisted`](crate::TaskHandle::persisted) resolves once
    /// a task's row is committed. Several managers (processes) may share one
    /// file: see the README's "What runs once" for the guarantees.
    pub fn snapshot_db(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.snapshot_db = Some(path.into());
        self
    }

    /// Keeps every task in PostgreSQL (feature `postgres`), so several
    /// hosts share one queue: each runs the tasks its binary registers,
    /// and each task runs once, on one host. Takes a connection string
    /// (`postgres://user:password@host:port/database`), which gives the
    /// store a pool of its own and the schema `taskflow`, or a
    /// [`PostgresConfig`](crate::store::PostgresConfig) for another schema,
    /// pool size or listening.
    ///
    /// As with [`snapshot_db`](Self::snapshot_db), the database is then
    /// the queue: an enqueue writes a row, and each instance claims ready
    /// rows for its free slots (`FOR UPDATE SKIP LOCKED`). The first start
    /// creates the schema and its tables. Instances learn of each other's
    /// work through `LISTEN`/`NOTIFY`, and poll as a fallback. Leases are
    /// measured by the server's clock; one instance at a time rescues the
    /// tasks of instances that died and prunes by retention.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), taskflow::Error> {
    /// let tasks = taskflow::TaskManager::builder()
    ///     .postgres("postgres://app@db.internal:5432/app")
    ///     .build()
    ///     .await?;
    /// # drop(tasks);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, config: impl Into<crate::store::PostgresConfig>) -> Self {
        self.postgres = Some(config.into());
        self
    }

    /// Keeps every task in PostgreSQL through the application's own
    /// connection pool (feature `postgres`), in schema `taskflow`; see
    /// [`postgres`](Self::postgres) and
    /// [`PostgresConfig::with_pool`](crate::store::PostgresConfig::with_pool)
    /// (a pool cannot listen for other hosts' work unless also given a
    /// connection string: without one, instances poll).
    #[cfg(feature = "postgres")]
    pub fn postgres_pool(self, pool: deadpool_postgres::Pool) -> Self {
        self.postgres(crate::store::PostgresConfig::with_pool(pool))
    }

    /// With a task store: at shutdown, leave the PENDING tasks this instance
    /// enqueued queued in the store, to run at the next start (or on another
    /// instance sharing it), under their own ids; without it they end
    /// INTERRUPTED. `#[task(persist = true)]` asks the same for one task.
    /// (A crash leaves them queued either way: nothing acknowledged is lost.)
    /// Default off.
    pub fn requeue_pending(mut self, requeue: bool) -> Self {
        self.requeue_pending = requeue;
        self
    }

    /// With a task store: delete finished tasks older than `age` (by finish
    /// time). PENDING and RUNNING tasks are never deleted. Default: keep all.
    pub fn retention(mut self, age: Duration) -> Self {
        self.retention = Some(age);
        self
    }

    /// How long the task store waits for a lock another process holds on
    /// the file before giving up. Default 5 s.
    pub fn store_busy_timeout(mut self, timeout: Duration) -> Self {
        self.store_busy_timeout = timeout;
        self
    }

    /// Caps the task store file at about `bytes`. A full store behaves like
    /// a full disk: tasks keep running, the failure is reported once on the
    /// event bus ([`EventKind::StoreFailed`](crate::EventKind::StoreFailed))
    /// and in the log, changes are kept, and writing resumes once
    /// [`retention`](Self::retention) (or anything else) frees space.
    pub fn store_max_size(mut self, bytes: u64) -> Self {
        self.store_max_size = Some(bytes);
        self
    }

    /// The permission bits a new task store file is created with (its -wal
    /// and -shm files get the same). Default `0o600`: the file holds task
    /// arguments, outputs and errors in plain text, so only the owner may
    /// read it. An existing file keeps its mode. Unix only; ignored
    /// elsewhere.
    ///
    /// ```
    /// let builder = taskflow::TaskManager::builder()
    ///     .snapshot_db("tasks.db")
    ///     .store_file_mode(0o640); // the owner's group may read it too
    /// # let _ = builder;
    /// ```
    pub fn store_file_mode(mut self, mode: u32) -> Self {
        self.store_file_mode = mode;
        self
    }

    /// How many finished records stay in memory (the oldest leave first);
    /// with a task store they remain readable from it. Default 100 000.
    pub fn max_finished_in_memory(mut self, n: usize) -> Self {
        self.max_finished_in_memory = n;
        self
    }

    /// With a task store: a PENDING task due further ahead than this (a
    /// delayed task, a one-off run next week, a retry with a long backoff)
    /// waits in the store alone once its row is written and no
    /// [`TaskHandle`](crate::TaskHandle) to it is held here: it costs a row,
    /// not memory, and the claimer takes it from the store when it is due,
    /// like a task another process enqueued. Default 60 s.
    ///
    /// This applies to tasks a shutdown leaves queued
    /// ([`requeue_pending`](Self::requeue_pending), `#[task(persist =
    /// true)]`) in queues without a `max_size` (which are counted, and so
    /// kept, in memory). While a task waits in the store alone,
    /// [`TaskManager::metrics`](crate::TaskManager::metrics) does not count
    /// it; [`queue_stats`](crate::TaskManager::queue_stats), `get` and
    /// `list` read it from the store.
    pub fn memory_horizon(mut self, horizon: Duration) -> Self {
        self.memory_horizon = horizon;
        self
    }

    /// Events kept for a subscriber that falls behind. Default 4096. Set it
    /// before [`subscribe`](Self::subscribe).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Every event of the manager about to be built, from its start: unlike
    /// [`TaskManager::subscribe`], this sees what `build` itself does, such
    /// as the tasks it rescues from instances that died.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), taskflow::Error> {
    /// let mut builder = taskflow::TaskManager::builder();
    /// let events = builder.subscribe();
    /// let manager = builder.build().await?;
    /// # drop((events, manager));
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&mut self) -> EventStream {
        let capacity = self.event_capacity;
        self.bus
            .get_or_insert_with(|| Bus::new(capacity))
            .subscribe()
    }

    /// Settings of the queue `name`: its concurrency cap and its cap on
    /// PENDING tasks. Tasks name their queue with `#[task(queue = "…")]` or
    /// `call(…).queue("…")`; those that name none wait in `"default"`, whose
    /// settings this can set too. A queue not configured has no caps.
    ///
    /// ```
    /// use taskflow::{QueueConfig, TaskManager};
    /// let builder = TaskManager::builder()
    ///     .queue("emails", QueueConfig::new().concurrency(4).max_size(10_000));
    /// # let _ = builder;
    /// ```
    pub fn queue(mut self, name: impl Into<String>, config: QueueConfig) -> Self {
        self.queues.insert(name.into().into(), config);
        self
    }

    /// With a task store: how long this instance's lease lasts without
    /// renewal. It is renewed five times per lease; an instance that has not
    /// renewed it for this long (killed, frozen, cut off) is declared dead
    /// and its running tasks are rescued by another instance (requeued when
    /// declared `requeue_on_interrupt`, else INTERRUPTED). Default 10 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// With a task store: how often an instance with free slots looks for
    /// work that other processes queued (its own enqueues and finished
    /// tasks wake it at once). Default 250 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Log lines kept per task (the latest; earlier ones are dropped and
    /// counted in [`TaskRecord::logs_dropped`]), in memory and in the task
    /// store. Default 1000.
    pub fn max_logs_per_task(mut self, n: usize) -> Self {
        self.max_logs_per_task = n;
        self
    }

    /// Builds the manager on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateTask`] when two tasks share a name,
    /// [`Error::ZeroLimit`] for a cap of zero, [`Error::NoRuntime`] outside a
    /// tokio runtime, [`Error::SpawnThread`] when the OS refuses a thread;
    /// with a task store, what opening it reports
    /// ([`SqliteStore::open`](crate::store::SqliteStore::open), and with
    /// feature `postgres`, `PostgresStore::open`).
    pub async fn build(self) -> Result<TaskManager, Error> {
        let registry = Registry::global()?;
        for (option, value) in [
            ("max_concurrent_tasks", self.max_concurrent_tasks),
            ("max_sync_threads", self.max_sync_threads),
            ("async_worker_threads", self.async_worker_threads),
            ("max_process_workers", self.max_process_workers),
            (
                "max_tasks_per_worker",
                self.max_tasks_per_worker.map(|n| n as usize),
            ),
        ] {
            if value == Some(0) {
                return Err(Error::ZeroLimit { option });
            }
        }
        for (name, config) in &self.queues {
            if let Some(reason) = crate::queue::invalid_queue_name(name) {
                return Err(Error::InvalidQueue {
                    queue: name.to_string(),
                    reason,
                });
            }
            if config.concurrency == Some(0) {
                return Err(Error::InvalidQueue {
                    queue: name.to_string(),
                    reason: "its concurrency must be at least 1",
                });
            }
        }
        if self.lease < Duration::from_millis(100) {
            return Err(Error::InvalidOption {
                option: "lease",
                reason: "must be at least 100 ms",
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let workers = self
            .max_process_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let executors = Executors {
            async_tasks: AsyncExecutor::new(self.async_worker_threads, self.background_nice)
                .map_err(|source| Error::SpawnThread {
                    name: "taskflow-async".into(),
                    source,
                })?,
            sync_tasks: SyncExecutor::new(self.max_sync_threads, self.background_nice),
            #[cfg(unix)]
            process_tasks: ProcessExecutor::new(ProcessConfig {
                workers,
                max_tasks_per_worker: self.max_tasks_per_worker,
                nice: self.process_nice,
                program: self.worker_program,
                log_level: Some(self.task_log_level.to_string()),
                handshake_timeout: self.worker_start_timeout,
            }),
        };
        let settings = Settings {
            requeue_pending: self.requeue_pending,
            lease: self.lease,
            heartbeat: (self.lease / 5).max(Duration::from_millis(20)),
            poll: self.poll_interval,
            retention: self.retention,
            max_logs: u32::try_from(self.max_logs_per_task).unwrap_or(u32::MAX),
            horizon: self.memory_horizon,
        };
        #[cfg(feature = "postgres")]
        let postgres = match (self.postgres, &self.snapshot_db) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidOption {
                    option: "postgres",
                    reason: "cannot be combined with `snapshot_db`: a manager has one task store",
                });
            }
            (Some(config), None) => {
                let store = crate::store::PostgresStore::open(config).await?;
                Some(Arc::new(store) as Arc<dyn Store>)
            }
            (None, _) => None,
        };
        #[cfg(not(feature = "postgres"))]
        let postgres: Option<Arc<dyn Store>> = None;
        let durable = match self.snapshot_db {
            None => postgres.map(|store| Durable::new(store, settings, registry)),
            Some(path) => {
                let config = StoreConfig {
                    path,
                    busy_timeout: self.store_busy_timeout,
                    max_size: self.store_max_size,
                    file_mode: self.store_file_mode,
                };
                // Opening touches the disk: off the async runtime.
                let store = tokio::task::spawn_blocking(move || SqliteStore::open_with(&config))
                    .await
                    .map_err(|_| {
                        Error::Store(
                            "the task store could not be opened: its thread panicked".into(),
                        )
                    })??;
                let store: Arc<dyn Store> = Arc::new(store);
                Some(Durable::new(store, settings, registry))
            }
        };
        // Slots per executor: async, thread, process. Without a dedicated
        // pool, sync tasks go to tokio's blocking pool, uncapped.
        #[cfg(unix)]
        let process_slots = Some(workers);
        #[cfg(not(unix))]
        let process_slots = Some(workers);
        let scheduler = Scheduler::new(
            self.queues,
            [
                self.max_concurrent_tasks,
                self.max_sync_threads,
                process_slots,
            ],
            durable.is_some(),
        );
        let capacity = self.event_capacity;
        let core = Arc::new(Core::new(Parts {
            runtime,
            resources: self.resources,
            executors,
            bus: self.bus.unwrap_or_else(|| Bus::new(capacity)),
            index: LiveIndex::new(self.max_finished_in_memory),
            scheduler,
            durable,
            max_logs: self.max_logs_per_task,
            tee: crate::trace::TaskTee::new(self.task_log_level),
        }));
        SyncExecutor::start(&core)?;
        Durable::start(&core).await?;
        crate::schedule::ticker::start(&core).await?;
        Ok(TaskManager {
            inner: Arc::new(Inner {
                core,
                shutdown_timeout: self.shutdown_timeout,
                process_shutdown_timeout: self.process_shutdown_timeout,
            }),
        })
    }
}

impl fmt::Debug for TaskManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TaskManagerBuilder");
        debug
            .field("max_concurrent_tasks", &self.max_concurrent_tasks)
            .field("max_sync_threads", &self.max_sync_threads)
            .field("max_process_workers", &self.max_process_workers)
            .field("max_tasks_per_worker", &self.max_tasks_per_worker)
            .field("process_nice", &self.process_nice)
            .field("snapshot_db", &self.snapshot_db);
        #[cfg(feature = "postgres")]
        debug.field("postgres", &self.postgres);
        debug
            .field("requeue_pending", &self.requeue_pending)
            .field("retention", &self.retention)
            .field("resources", &self.resources)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}
