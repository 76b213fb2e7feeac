//! Executors, one per kind of task.
//!
//! Executors are runners behind the one queue (`crate::queue`), which admits
//! a task only when its executor has a free slot, so a task that reaches an
//! executor starts at once:
//!
//! - [`AsyncExecutor`]: a tokio task per admitted attempt (slots:
//!   `max_concurrent_tasks`).
//! - [`SyncExecutor`]: a dedicated pool of `max_sync_threads` threads, or
//!   tokio's blocking pool when no size is set.
//! - [`ProcessExecutor`]: `max_process_workers` worker processes, each served
//!   by a slot thread of its own, one attempt per worker at a time.
//!
//! All run an attempt the same way: set the task context, call the body with
//! panics caught (in this process or in a worker), and report the result to
//! `Core::finish`, which records it and queues a retry for its `run_at`.

mod async_tasks;
#[cfg(unix)]
mod process;
mod sync_pool;

pub(crate) use sync_pool::ending_attempt_here;

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;

use taskflow_worker::context::TaskContext;
use taskflow_worker::log::SharedSink;

pub(crate) use async_tasks::AsyncExecutor;
#[cfg(unix)]
pub(crate) use process::{ProcessConfig, ProcessExecutor};
pub(crate) use sync_pool::SyncExecutor;

use crate::core::Core;
use crate::record::{Abort, TaskCell};

/// Spawns an admitted attempt of `cell` on the runtime, abortable through
/// the cell (cancellation, shutdown).
fn spawn_attempt(
    runtime: &Handle,
    cell: &TaskCell,
    attempt: impl Future<Output = ()> + Send + 'static,
) {
    let task = runtime.spawn(attempt);
    cell.set_abort(Abort::Task(task.abort_handle()));
}

/// Lowers the calling thread's priority to `nice`, if asked; a refusal is
/// logged and the thread carries on at its priority.
fn lower_priority(nice: Option<i32>) {
    let Some(nice) = nice else { return };
    #[cfg(unix)]
    let result = taskflow_worker::sys::set_thread_nice(nice);
    #[cfg(not(unix))]
    let result: std::io::Result<()> = Err(std::io::ErrorKind::Unsupported.into());
    if let Err(error) = result {
        tracing::warn!("cannot set nice {nice} on a taskflow thread: {error}");
    }
}

/// The context an in-process attempt runs in; its log records go to `core`.
fn context_of(core: &Arc<Core>, cell: &TaskCell, attempt: u32) -> TaskContext {
    TaskContext::new(cell.id, cell.entry.name(), attempt, cell.tags.clone())
        .with_sink(SharedSink(core.clone()))
}
