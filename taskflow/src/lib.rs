//! Background work for Rust services, declared with one attribute and run
//! beside request handlers without fighting them for threads, cores or the
//! async runtime.
//!
//! # A tour
//!
//! ## Declare tasks
//!
//! `#[task]` on an `async fn` runs it on the async runtime; on a plain `fn`
//! it runs on a thread pool that is not the runtime's. The function stays
//! callable as written; beside it, a companion of the same name offers
//! `enqueue`, `call` and `NAME`. Tasks may be declared at module level or
//! inside a function.
//!
//! ```
//! use taskflow::task;
//!
//! #[task(retries = 3, delay = "100ms", backoff = 2.0)]
//! async fn send_email(to: String) -> Result<String, String> {
//!     Ok(format!("sent to {to}"))
//! }
//!
//! #[task] // a plain fn: the sync pool
//! fn checksum(data: Vec<u8>) -> u64 {
//!     data.iter().map(|&b| u64::from(b)).sum()
//! }
//!
//! # fn main() {
//! assert_eq!(checksum(vec![1, 2, 3]), 6); // still an ordinary function
//! assert!(send_email::NAME.ends_with("send_email"));
//! # }
//! ```
//!
//! Arguments and outputs are data (`Serialize + DeserializeOwned`): that one
//! representation serves retries, persistence and the trip to a worker
//! process. A `Result` return fails the attempt on `Err` and records the
//! error's text. Mistakes are compile errors on the offending token: generic
//! functions, methods, borrowed or `impl Trait` arguments, non-serde types,
//! unknown options, a `timeout` on a thread task.
//!
//! ## Run them
//!
//! A [`TaskManager`] admits async tasks through a semaphore
//! (`max_concurrent_tasks`) and runs sync tasks on exactly
//! `max_sync_threads` dedicated threads. Enqueueing returns a
//! [`TaskHandle`]; awaiting it yields the output or the [`TaskError`].
//!
//! ```
//! use taskflow::{TaskManager, task};
//!
//! #[task]
//! async fn add(a: u64, b: u64) -> u64 {
//!     a + b
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks = TaskManager::builder()
//!     .max_concurrent_tasks(10)
//!     .max_sync_threads(4)
//!     .build()
//!     .await?
//!     .install(); // the default that `name::enqueue` uses
//!
//! let handle = add::enqueue(2, 3)?;
//! println!("queued {}", handle.id());
//! assert_eq!(handle.await?, 5);
//!
//! // Per-call options, on a chosen manager:
//! let tagged = add::call(1, 1).tag("tenant", "acme").enqueue_on(&tasks)?;
//! assert_eq!(tagged.await?, 2);
//! tasks.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Failures, retries and context
//!
//! `retries = N` allows N+1 attempts, waiting `delay`, `delay × backoff`, …
//! between them; a waiting task holds no slot. Inside a task,
//! [`context()`] tells its id, name, zero-based attempt and tags, and
//! [`log()`] records a line on the task's record.
//!
//! ```
//! use taskflow::{LogLevel, TaskManager, TaskStatus, task};
//!
//! #[task(retries = 2)]
//! async fn flaky() -> Result<u32, String> {
//!     let attempt = taskflow::context().expect("inside a task").attempt;
//!     taskflow::log(LogLevel::Info, format!("attempt {attempt}"));
//!     if attempt < 2 { Err(format!("attempt {attempt} failed")) } else { Ok(attempt) }
//! }
//!
//! #[task]
//! async fn hopeless() {
//!     panic!("out of luck");
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks = TaskManager::builder().build().await?;
//! let handle = flaky::call().enqueue_on(&tasks)?;
//! let id = handle.id();
//! assert_eq!(handle.await?, 2);
//! let record = tasks.get(id).await?.expect("known");
//! assert_eq!((record.status, record.attempts), (TaskStatus::Success, 3));
//! assert_eq!(record.logs.len(), 3);
//!
//! let error = hopeless::call().enqueue_on(&tasks)?.await.unwrap_err();
//! assert!(error.is_panic());
//! assert_eq!(error.message(), "out of luck");
//! # Ok(())
//! # }
//! ```
//!
//! ## Queues, priorities and delays
//!
//! Every task waits in a named queue (`"default"` unless it names one) in
//! front of its executor: a queue's concurrency caps its tasks across
//! executors (and can change at run time), its `max_size` caps its PENDING
//! ones, and it can be paused. Within a queue a higher priority runs first,
//! in arrival order within one; a delayed task waits until its `run_at`.
//! With a task store, a task due further ahead than the builder's
//! `memory_horizon` (60 s by default) waits as a row only, not in memory.
//!
//! ```
//! use std::time::Duration;
//! use taskflow::{QueueConfig, TaskManager, task};
//!
//! #[task(queue = "emails")]
//! async fn send(to: String) -> String {
//!     to
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks = TaskManager::builder()
//!     .queue("emails", QueueConfig::new().concurrency(2).max_size(1_000))
//!     .build()
//!     .await?;
//! let urgent = send::call("ops@example.com".into()).priority(10).enqueue_on(&tasks)?;
//! let later = send::call("ada@example.com".into())
//!     .delay(Duration::from_millis(20))
//!     .enqueue_on(&tasks)?;
//! assert_eq!(later.record().queue, "emails");
//! assert!(later.record().run_at > later.record().created_at);
//! urgent.await?;
//! later.await?;
//!
//! tasks.pause("emails").await?; // admits nothing from the queue until resumed
//! let waiting = send::call("bob@example.com".into()).enqueue_on(&tasks)?;
//! tokio::time::sleep(Duration::from_millis(20)).await;
//! assert_eq!(waiting.status(), taskflow::TaskStatus::Pending);
//! tasks.resume("emails").await?;
//! waiting.await?;
//! tasks.set_queue_concurrency("emails", Some(8))?; // this instance, at once
//! # Ok(())
//! # }
//! ```
//!
//! ## Resources
//!
//! Values that are not data (a connection pool, an HTTP client) are
//! registered on the builder and injected by type into parameters written
//! `Resource<T>`; `enqueue` leaves them out. A manager lacking one refuses
//! the enqueue.
//!
//! ```
//! use taskflow::{Resource, TaskManager, task};
//!
//! struct Mailer {
//!     from: &'static str,
//! }
//!
//! #[task]
//! async fn notify(to: String, mailer: Resource<Mailer>) -> String {
//!     format!("{} -> {to}", mailer.from)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks = TaskManager::builder().resource(Mailer { from: "noreply@example.com" }).build().await?;
//! let sent = notify::call("ada@example.com".into()).enqueue_on(&tasks)?.await?;
//! assert_eq!(sent, "noreply@example.com -> ada@example.com");
//! # Ok(())
//! # }
//! ```
//!
//! ## Watch, cancel, shut down
//!
//! Every task has a [`TaskRecord`]: [`TaskManager::get`], [`TaskManager::list`]
//! (by status and name, newest first), [`TaskManager::metrics`], and
//! [`TaskManager::subscribe`] for one [`TaskEvent`] per transition;
//! [`TaskManager::arguments`] reads back the arguments a call was enqueued
//! with ([`TaskArguments`]).
//! [`TaskManager::cancel`] stops a task; [`TaskManager::shutdown`] stops
//! admissions, lets running work finish within a timeout and marks the rest
//! INTERRUPTED.
//!
//! ```
//! use std::time::Duration;
//! use taskflow::{EventKind, TaskFilter, TaskManager, TaskStatus, task};
//!
//! #[task]
//! async fn nap(millis: u64) {
//!     tokio::time::sleep(Duration::from_millis(millis)).await;
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks = TaskManager::builder().max_concurrent_tasks(1).build().await?;
//! let mut events = tasks.subscribe();
//! let first = nap::call(10).enqueue_on(&tasks)?;
//! let waiting = nap::call(10).enqueue_on(&tasks)?; // PENDING behind the first
//! tasks.cancel(waiting.id()).await?;
//! first.await?;
//! assert!(waiting.await.unwrap_err().is_cancelled());
//!
//! assert_eq!(events.recv().await?.kind, EventKind::Enqueued);
//! let cancelled = tasks.list(&TaskFilter::new().status(TaskStatus::Cancelled)).await?;
//! assert_eq!(cancelled.len(), 1);
//! assert_eq!(tasks.metrics().success, 1);
//! tasks.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Schedules
//!
//! `#[task(every = "5m")]` or `#[task(cron = "0 9 * * MON-FRI", timezone =
//! "Europe/Paris")]` makes a task (one without arguments) recurring; a
//! [`Schedule`] added at run time enqueues a call with arguments at each
//! tick. With a task store each tick makes exactly one task however many
//! processes or hosts run the schedule, pauses are shared, and ticks missed
//! while none ran are handled per `catch_up` ([`CatchUp`]). A fired task's
//! record names its schedule and tick.
//!
//! A declared schedule belongs to the whole binary, so this example is its
//! own crate: its `heartbeat` must not fire in the other examples.
//!
//! ```standalone_crate
//! use std::time::Duration;
//! use taskflow::{Schedule, TaskFilter, TaskManager, task};
//!
//! #[task(every = "50ms")]
//! async fn heartbeat() {}
//!
//! #[task]
//! async fn remind(who: String) -> String {
//!     format!("reminded {who}")
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks = TaskManager::builder().build().await?;
//! let every = Schedule::every(Duration::from_millis(50))?;
//! tasks.add_schedule("remind-ada", every, remind::call("ada".into())).await?;
//! tokio::time::sleep(Duration::from_millis(200)).await;
//!
//! let fired = tasks.list(&TaskFilter::new().schedule("remind-ada")).await?;
//! assert!(!fired.is_empty());
//! let tick = fired[0].scheduled.clone().expect("fired by a schedule");
//! assert_eq!(tick.schedule, "remind-ada");
//! assert!(tasks.schedules().await?.iter().any(|s| s.name == heartbeat::NAME));
//!
//! tasks.pause_schedule("remind-ada").await?; // with a store: for every instance
//! let bad = Schedule::cron_in("0 9 * * MON-FRI", "Europe/Pariss").unwrap_err();
//! assert_eq!(bad.field(), "timezone");
//! tasks.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Worker processes
//!
//! `#[task(executor = "process")]` runs a CPU-bound task in a worker
//! process: this same executable started again in worker mode. Enter worker
//! mode first thing in `main`, with [`#[taskflow::main]`](macro@main) or
//! [`init()`]; a worker serves tasks and never reaches the rest of `main`.
//! A crash, panic or timeout costs only the attempt on that worker; the pool
//! replaces it. `timeout` on a process task is a hard limit: the worker is
//! killed.
//!
//! ```
//! use taskflow::{TaskManager, task};
//!
//! #[task(executor = "process", timeout = "2m")]
//! fn render_report(report_id: u64) -> Vec<u8> {
//!     vec![0; report_id as usize] // CPU-heavy work
//! }
//!
//! #[taskflow::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let tasks = TaskManager::builder().max_process_workers(2).build().await?.install();
//!     let pdf = render_report::enqueue(42)?.await?;
//!     assert_eq!(pdf.len(), 42);
//!     tasks.shutdown().await; // kills and reaps every worker
//!     Ok(())
//! }
//! ```
//!
//! Worker processes build their own resources with an initializer
//! (`#[taskflow::main(resources = path)]` or [`init_with`]): a connection
//! cannot cross a process boundary.
//!
//! ## Persistence
//!
//! With [`TaskManagerBuilder::snapshot_db`] every task lives in a SQLite file
//! too. [`TaskHandle::persisted`] resolves once a task is on disk, after which
//! it survives a crash; a later start with `requeue_pending(true)` runs what
//! was left, under the same ids. History stays readable after restarts, and
//! idempotency keys hold across them.
//!
//! ```
//! use taskflow::{TaskManager, TaskStatus, task};
//!
//! #[task]
//! async fn charge(order: u64) -> u64 {
//!     order * 100
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("taskflow-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let db = dir.join("tasks.db");
//!
//! let tasks = TaskManager::builder().snapshot_db(&db).requeue_pending(true).build().await?;
//! let handle = charge::call(42).idempotency_key("order-42").enqueue_on(&tasks)?;
//! handle.persisted().await?; // on disk from here on
//! let id = handle.id();
//! assert_eq!(handle.await?, 4200);
//! tasks.shutdown().await;
//!
//! // Another process, or this one after a restart:
//! let again = TaskManager::builder().snapshot_db(&db).build().await?;
//! assert_eq!(again.get(id).await?.expect("stored").status, TaskStatus::Success);
//! let same = charge::call(42).idempotency_key("order-42").enqueue_on(&again)?;
//! assert_eq!((same.id(), same.await?), (id, 4200)); // not charged twice
//! again.shutdown().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! With feature `postgres`, `TaskManagerBuilder::postgres("postgres://…")`
//! keeps the tasks in PostgreSQL instead, so several hosts running the same
//! `#[task]` code share one queue, each task running once; and
//! `name::call(…).enqueue_in(&transaction)` enqueues inside the
//! application's own transaction, the task existing only if it commits.
//!
//! With feature `admin`, `taskflow::admin::router(&manager, config)` is an
//! `axum::Router` to nest in a web app: a JSON API (with an OpenAPI
//! document), a live stream of task changes and an audit log, behind bearer
//! tokens or a login. Task arguments stay hidden unless
//! `AdminConfig::show_arguments(true)` says otherwise.

#[cfg(feature = "admin")]
pub mod admin;
mod call;
mod core;
mod durable;
mod error;
mod events;
mod executor;
mod handle;
mod index;
mod lifecycle;
mod manager;
mod queue;
mod record;
mod schedule;
pub mod store;
mod tally;
mod trace;

#[doc(hidden)]
pub mod __private;

// The README's examples are compiled as doctests too.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub use call::TaskCall;
pub use error::Error;
pub use events::{EventKind, EventStream, RecvError, TaskEvent};
pub use handle::TaskHandle;
pub use lifecycle::{ParseStatusError, TaskStatus};
pub use manager::{ShutdownReport, TaskManager, TaskManagerBuilder};
pub use queue::{DEFAULT_QUEUE, QueueConfig, QueueStats};
pub use record::{Metrics, RETRY_OF_TAG, TaskArguments, TaskFilter, TaskRecord};
pub use schedule::{CatchUp, Schedule, ScheduleError, ScheduleInfo, Tick};
pub use taskflow_macros::{main, task};
pub use taskflow_worker::log::log;
pub use taskflow_worker::{
    ErrorKind, Executor, LogLevel, LogRecord, Resource, Resources, Tags, TaskContext, TaskError,
    TaskId, context,
};

/// Enters worker mode if this process was started as a worker, and then never
/// returns; in the application's own process it returns at once.
///
/// Process tasks run in workers that are this same executable started again.
/// Call `init()` first thing in `main` (or use [`#[taskflow::main]`](macro@main),
/// which does), because everything before it runs in every worker too, and a
/// worker must never reach the application's body.
///
/// ```no_run
/// fn main() {
///     taskflow::init();
///     // the application: build a runtime, a TaskManager, serve requests…
/// }
/// ```
#[allow(clippy::needless_doctest_main)] // the example is about `main` itself
pub fn init() {
    #[cfg(unix)]
    taskflow_worker::worker::enter(None);
}

/// As [`init`], building the resources that process tasks take in each
/// worker with `resources`. A connection cannot cross a process boundary, so a
/// process task never receives the parent's resource objects: each worker
/// builds its own, once, before its first task.
///
/// ```no_run
/// struct Pool;
/// impl Pool { fn connect() -> Pool { Pool } }
///
/// fn main() {
///     taskflow::init_with(|resources| resources.insert(Pool::connect()));
///     // the application…
/// }
/// ```
#[allow(clippy::needless_doctest_main)] // the example is about `main` itself
pub fn init_with(resources: impl FnOnce(&mut Resources) + 'static) {
    #[cfg(unix)]
    taskflow_worker::worker::enter(Some(Box::new(resources)));
    #[cfg(not(unix))]
    drop(resources);
}
