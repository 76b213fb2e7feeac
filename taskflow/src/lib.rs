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
pub use taskflow_macros::task;
pub use taskflow_worker::{
    ErrorKind, Executor, Resource, Tags, TaskContext, TaskError, TaskId, context,
};
