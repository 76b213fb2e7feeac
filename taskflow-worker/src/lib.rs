//! The process boundary of taskflow.
//!
//! This crate holds everything that must be identical on both sides of a worker
//! process: the registry of `#[task]` entries collected through `inventory`, the
//! data that crosses the boundary (ids, tags, failures, the running task's
//! context, injected resources) and the codec that turns arguments and results
//! into bytes. It knows nothing of the runtime in the `taskflow` crate, which
//! depends on it and re-exports what users need; applications depend on
//! `taskflow` alone.

pub mod attempt;
pub mod codec;
pub mod context;
pub mod failure;
pub mod id;
pub mod log;
// Not public API: the parent side of the process boundary lives in
// `taskflow`, which needs these; applications never do.
#[doc(hidden)]
pub mod protocol;
pub mod registry;
pub mod resource;
#[cfg(unix)]
#[doc(hidden)]
pub mod sys;
#[cfg(unix)]
#[doc(hidden)]
pub mod worker;

pub use codec::CodecError;
pub use context::{TaskContext, context};
pub use failure::{ErrorKind, TaskError};
pub use id::{Tags, TaskId};
pub use log::{LogLevel, LogRecord};
pub use registry::{Executor, Registry, TaskDefaults, TaskEntry};
pub use resource::{Resource, Resources};

// Not public API. Used by generated code.
#[doc(hidden)]
pub use inventory;
