//! Which task is running here, for code inside a task body.
//!
//! An async attempt runs inside a tokio task-local scope; a blocking attempt
//! (thread pool or worker process) sets a thread-local for its duration. The
//! two never nest in one another, so [`context`] asks the task-local first and
//! the thread-local second, and outside any task it returns `None`.

use std::cell::RefCell;
use std::future::Future;

use crate::id::{Tags, TaskId};
use crate::log::{LogRecord, SharedSink};

tokio::task_local! {
    static ASYNC_CONTEXT: TaskContext;
}

thread_local! {
    static BLOCKING_CONTEXT: RefCell<Option<TaskContext>> = const { RefCell::new(None) };
}

/// The running task as its body sees it, from [`context()`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TaskContext {
    /// The task's id.
    pub id: TaskId,
    /// The task's registered name.
    pub name: &'static str,
    /// Zero-based attempt: 0 on the first run, 1 on the first retry.
    pub attempt: u32,
    /// The tags given at enqueue.
    pub tags: Tags,
    sink: Option<SharedSink>,
}

impl TaskContext {
    /// The context of attempt `attempt` of task `id`.
    pub fn new(id: TaskId, name: &'static str, attempt: u32, tags: Tags) -> Self {
        TaskContext {
            id,
            name,
            attempt,
            tags,
            sink: None,
        }
    }

    /// The context with log records going to `sink`.
    pub fn with_sink(mut self, sink: SharedSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Sends `record` to this task's log sink, if it has one.
    /// The record is stamped with this context's attempt.
    pub fn emit(&self, record: LogRecord) {
        if let Some(sink) = &self.sink {
            sink.0.emit(self.id, record.in_attempt(self.attempt));
        }
    }
}

/// The task running on this thread or in this async task, or `None` outside
/// any task.
///
/// ```
/// assert!(taskflow_worker::context().is_none());
/// ```
pub fn context() -> Option<TaskContext> {
    ASYNC_CONTEXT
        .try_with(TaskContext::clone)
        .ok()
        .or_else(|| BLOCKING_CONTEXT.with(|slot| slot.borrow().clone()))
}

/// Runs `future` with `context` visible to [`context()`] inside it.
pub fn scope<F: Future>(
    context: TaskContext,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<TaskContext, F> {
    ASYNC_CONTEXT.scope(context, future)
}

/// Runs `body` on this thread with `context` visible to [`context()`].
pub fn enter<R>(context: TaskContext, body: impl FnOnce() -> R) -> R {
    struct Restore(Option<TaskContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            BLOCKING_CONTEXT.with(|slot| *slot.borrow_mut() = previous);
        }
    }
    let previous = BLOCKING_CONTEXT.with(|slot| slot.borrow_mut().replace(context));
    let _restore = Restore(previous);
    body()
}
