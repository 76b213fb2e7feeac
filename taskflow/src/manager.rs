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
use taskflow_worker::{Resources, TaskId};
use tokio::time::Instant;

use crate::core::Core;
use crate::error::Error;
use crate::events::EventStream;
use crate::executor::{AsyncExecutor, SyncExecutor};
use crate::record::{Metrics, TaskFilter, TaskRecord};

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

    /// A snapshot of the task's record.
    pub fn get(&self, id: TaskId) -> Option<TaskRecord> {
        self.inner.core.store.get(&id).map(|cell| cell.snapshot())
    }

    /// Records matching `filter`, newest first.
    pub fn list(&self, filter: &TaskFilter) -> Vec<TaskRecord> {
        self.inner.core.store.list(filter)
    }

    /// Counts per status and the mean duration.
    pub fn metrics(&self) -> Metrics {
        self.inner.core.store.metrics()
    }

    /// Every lifecycle event from now on.
    pub fn subscribe(&self) -> EventStream {
        self.inner.core.bus.subscribe()
    }

    /// Cancels a task. A PENDING task never runs. A RUNNING async task is
    /// aborted at its next `.await`. A RUNNING sync task is marked CANCELLED
    /// and its result ignored; its thread stays busy until the function
    /// returns, since a thread cannot be preempted.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown id, [`Error::AlreadyFinished`] for a
    /// task that reached a final status.
    pub fn cancel(&self, id: TaskId) -> Result<(), Error> {
        self.inner.core.cancel(id)
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shut_down(&self) -> bool {
        self.inner.core.is_closed()
    }

    /// Shuts down gracefully: admits nothing more (a later enqueue fails with
    /// [`Error::ShutDown`]), marks PENDING tasks INTERRUPTED at once, waits up
    /// to the shutdown timeout for RUNNING ones, then marks those still running
    /// INTERRUPTED (aborting async ones) and stops the sync pool's threads.
    ///
    /// A sync task still running at the deadline keeps its thread until its
    /// function returns; its result is ignored. Calling this again returns at
    /// once.
    pub async fn shutdown(&self) -> ShutdownReport {
        let core = &self.inner.core;
        core.close();
        let pending = core.interrupt_unfinished(true);
        let deadline = Instant::now() + self.inner.shutdown_timeout;
        let drained = core.wait_idle(deadline).await;
        let running = core.interrupt_unfinished(false);
        ShutdownReport {
            pending_interrupted: pending,
            running_interrupted: running,
            drained,
        }
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
    resources: Resources,
    shutdown_timeout: Duration,
    event_capacity: usize,
}

impl Default for TaskManagerBuilder {
    fn default() -> Self {
        TaskManagerBuilder {
            max_concurrent_tasks: None,
            max_sync_threads: None,
            resources: Resources::new(),
            shutdown_timeout: Duration::from_secs(30),
            event_capacity: 4096,
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

    /// Events kept for a subscriber that falls behind. Default 4096.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Builds the manager on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateTask`] when two tasks share a name,
    /// [`Error::ZeroLimit`] for a cap of zero, [`Error::NoRuntime`] outside a
    /// tokio runtime, [`Error::SpawnThread`] when the OS refuses a thread.
    pub async fn build(self) -> Result<TaskManager, Error> {
        Registry::global()?;
        for (option, value) in [
            ("max_concurrent_tasks", self.max_concurrent_tasks),
            ("max_sync_threads", self.max_sync_threads),
        ] {
            if value == Some(0) {
                return Err(Error::ZeroLimit { option });
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let core = Arc::new(Core::new(
            runtime,
            self.resources,
            AsyncExecutor::new(self.max_concurrent_tasks),
            SyncExecutor::new(self.max_sync_threads),
            self.event_capacity,
        ));
        SyncExecutor::start(&core)?;
        Ok(TaskManager {
            inner: Arc::new(Inner {
                core,
                shutdown_timeout: self.shutdown_timeout,
            }),
        })
    }
}

impl fmt::Debug for TaskManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskManagerBuilder")
            .field("max_concurrent_tasks", &self.max_concurrent_tasks)
            .field("max_sync_threads", &self.max_sync_threads)
            .field("resources", &self.resources)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}
