//! Background tasks for Rust services.
//!
//! TODO(doc tour)

mod call;
mod core;
mod error;
mod events;
mod executor;
mod handle;
mod lifecycle;
mod manager;
mod record;
mod store;

#[doc(hidden)]
pub mod __private;

pub use call::TaskCall;
pub use error::Error;
pub use events::{EventKind, EventStream, RecvError, TaskEvent};
pub use handle::TaskHandle;
pub use lifecycle::{ParseStatusError, TaskStatus};
pub use manager::{ShutdownReport, TaskManager, TaskManagerBuilder};
pub use record::{Metrics, TaskFilter, TaskRecord};
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
