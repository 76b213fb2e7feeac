//! The errors of taskflow's API.
//!
//! A task that fails is not an API error: it is data, a [`TaskError`](crate::TaskError)
//! on its record and from its handle. [`Error`] is for calls into taskflow that
//! cannot do what was asked.

use taskflow_worker::registry::DuplicateTask;
use taskflow_worker::{CodecError, TaskId};

use crate::lifecycle::TaskStatus;
use crate::schedule::ScheduleError;
use crate::store::StoreError;

/// Why a call into taskflow failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two `#[task]` declarations share a name.
    #[error(transparent)]
    DuplicateTask(#[from] DuplicateTask),
    /// A queue was configured with settings that cannot work.
    #[error("queue `{queue}` is misconfigured: {reason}")]
    InvalidQueue {
        /// The queue.
        queue: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A builder option has a value that cannot work.
    #[error("`{option}` {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A limit was set to zero.
    #[error("`{option}` must be at least 1")]
    ZeroLimit {
        /// The builder option.
        option: &'static str,
    },
    /// A thread of the sync pool could not be started.
    #[error("cannot start thread `{name}`")]
    SpawnThread {
        /// The thread's name.
        name: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `build()` ran outside a tokio runtime.
    #[error("taskflow needs a tokio runtime: call `TaskManagerBuilder::build` from inside one")]
    NoRuntime,
    /// `name::enqueue` was called with no manager installed.
    #[error(
        "no task manager is installed; call `TaskManager::install` or enqueue with `call(…).enqueue_on(&manager)`"
    )]
    NoManager,
    /// The manager has shut down and admits nothing more.
    #[error("the task manager has shut down")]
    ShutDown,
    /// The task takes a resource the manager was not given.
    #[error(
        "task `{task}` needs a resource of type `{resource}`, which the manager does not have; add it with `TaskManagerBuilder::resource`"
    )]
    MissingResource {
        /// The task's name.
        task: &'static str,
        /// The missing type.
        resource: &'static str,
    },
    /// An argument could not be encoded, or would not decode again.
    #[error("argument `{argument}` of task `{task}` cannot be sent as data")]
    Argument {
        /// The task's name.
        task: &'static str,
        /// The argument's name.
        argument: &'static str,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// The task's executor is not available in this manager.
    #[error("task `{task}` runs on the `{executor}` executor, which this manager does not provide")]
    UnsupportedExecutor {
        /// The task's name.
        task: &'static str,
        /// The executor it needs.
        executor: &'static str,
    },
    /// A worker process could not be started.
    #[error("cannot start a worker process: {0}")]
    WorkerStart(String),
    /// The task store could not be opened or set up: a path that cannot be
    /// written, a file that is not SQLite, a database locked past the busy
    /// timeout.
    #[error("cannot open the task store at {path}")]
    OpenStore {
        /// The file.
        path: std::path::PathBuf,
        /// What SQLite said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The task store was written by a newer taskflow.
    #[error(
        "the task store at {path} has schema version {found}, newer than this taskflow's {supported}; upgrade taskflow to open it"
    )]
    SchemaTooNew {
        /// The file.
        path: std::path::PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this code knows.
        supported: i64,
    },
    /// No PostgreSQL server answered at the configured address (nothing
    /// listens there, the network is down, or the connection timed out).
    #[cfg(feature = "postgres")]
    #[error("cannot reach the PostgreSQL server at {server}")]
    DatabaseUnreachable {
        /// The server, as host:port/database (never with a password).
        server: String,
        /// What the client said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The PostgreSQL server refused the user or its password.
    #[cfg(feature = "postgres")]
    #[error("the PostgreSQL server at {server} refused user `{user}`")]
    DatabaseAuth {
        /// The server, as host:port/database.
        server: String,
        /// The user connecting.
        user: String,
        /// What the server said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The PostgreSQL server has no database of that name.
    #[cfg(feature = "postgres")]
    #[error("database `{database}` does not exist on the PostgreSQL server at {server}")]
    DatabaseMissing {
        /// The server, as host:port/database.
        server: String,
        /// The database asked for.
        database: String,
        /// What the server said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The task store's schema in PostgreSQL was written by a newer
    /// taskflow (the SQLite store's [`SchemaTooNew`](Error::SchemaTooNew),
    /// for a schema rather than a file).
    #[cfg(feature = "postgres")]
    #[error(
        "the task store in schema `{schema}` at {server} has schema version {found}, newer than this taskflow's {supported}; upgrade taskflow to open it"
    )]
    DatabaseSchemaTooNew {
        /// The server, as host:port/database.
        server: String,
        /// The store's schema.
        schema: String,
        /// Its schema version.
        found: i64,
        /// The newest this code knows.
        supported: i64,
    },
    /// The PostgreSQL task store could not be set up once connected (its
    /// schema could not be created, a query failed), or its connection
    /// string is invalid.
    #[cfg(feature = "postgres")]
    #[error("cannot open the task store in schema `{schema}` at {server}")]
    OpenDatabase {
        /// The server, as host:port/database.
        server: String,
        /// The store's schema.
        schema: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The task's row in the task store cannot be read as a task (reported
    /// once as [`EventKind::CorruptRow`](crate::EventKind::CorruptRow), and
    /// left in place).
    #[error("task {id} cannot be read from the task store: {reason}")]
    CorruptRow {
        /// The task.
        id: TaskId,
        /// What is wrong with its row.
        reason: String,
    },
    /// Writing the task store failed (the writer keeps retrying).
    #[error("{0}")]
    Store(String),
    /// `persisted()` on a task whose manager has no task store.
    #[error(
        "the manager has no task store (`TaskManagerBuilder::snapshot_db`), so nothing is persisted"
    )]
    NotDurable,
    /// A stored task's name is not registered in this binary.
    #[error("no task named `{0}` is registered in this binary")]
    UnknownTask(String),
    /// A task's stored arguments do not decode as the types asked for (the
    /// task's own, for `TaskArguments::to_json`), or cannot be written as
    /// JSON.
    #[error("cannot read the stored arguments of task `{task}`")]
    StoredArguments {
        /// The task's name.
        task: String,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// `retry` of a task that did not fail, get cancelled or get interrupted.
    #[error("task {id} is {status}; only FAILED, INTERRUPTED and CANCELLED tasks can be retried")]
    NotRetryable {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// The queue holds its `max_size` of PENDING tasks; nothing was
    /// recorded.
    #[error("queue `{queue}` is full: it holds its maximum of {max_size} pending tasks")]
    QueueFull {
        /// The queue.
        queue: String,
        /// Its cap.
        max_size: usize,
    },
    /// The task store could not do what was asked (read or write): the
    /// source says what the backend reported.
    #[error("the task store failed")]
    StoreFailed(#[source] crate::store::StoreError),
    /// No task with this id is known.
    #[error("no task with id {0}")]
    NotFound(TaskId),
    /// The task already reached a final status.
    #[error("task {id} has already finished as {status}")]
    AlreadyFinished {
        /// The task.
        id: TaskId,
        /// Its final status.
        status: TaskStatus,
    },
    /// A schedule's expression, time zone or option is invalid; the error
    /// names the field.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// No schedule has this name.
    #[error("no schedule named `{0}`")]
    UnknownSchedule(String),
    /// A schedule with this name exists already.
    #[error("a schedule named `{0}` exists already; remove it first or choose another name")]
    ScheduleExists(String),
    /// The schedule is declared with `#[task(every | cron = …)]`: it comes
    /// back at every start, so it can be paused but not removed.
    #[error(
        "schedule `{0}` is declared on its task; pause it, or remove `every`/`cron` from the task"
    )]
    ScheduleDeclared(String),
}

impl Error {
    /// A store failure, as an API error.
    pub(crate) fn from_store(error: StoreError) -> Self {
        match error {
            StoreError::Closed => Error::ShutDown,
            StoreError::Lost(reason) => Error::Store(reason),
            other => Error::StoreFailed(other),
        }
    }
}

/// An error and its sources, as one line: `what: why: cause`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
