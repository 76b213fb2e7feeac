//! The async executor: each admitted attempt is a tokio task. Admission
//! (`max_concurrent_tasks`, queues, priorities) happens before, in the
//! queue; a task reaching here starts at once.

use std::pin::Pin;
use std::sync::Arc;

use taskflow_worker::attempt::{CatchUnwind, catch_panic};
use taskflow_worker::registry::Body;
use taskflow_worker::{ErrorKind, TaskError, context};

use super::{context_of, lower_priority, spawn_attempt};
use crate::core::Core;
use crate::record::{Produced, SharedCell};

pub(crate) struct AsyncExecutor {
    /// Threads of the manager's own, when asked for; else the application's
    /// runtime runs the tasks.
    dedicated: Option<Dedicated>,
}

/// A runtime the manager owns, for async tasks only.
struct Dedicated {
    handle: tokio::runtime::Handle,
    runtime: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
}

impl Dedicated {
    fn stop(&self) {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Shutting down in the background is allowed in async contexts,
        // where dropping a runtime is not.
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.stop();
    }
}

impl AsyncExecutor {
    /// # Errors
    ///
    /// When the dedicated runtime's threads cannot start.
    pub(crate) fn new(threads: Option<usize>, nice: Option<i32>) -> std::io::Result<Self> {
        let dedicated = match threads {
            None => None,
            Some(threads) => {
                let next = std::sync::atomic::AtomicUsize::new(1);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name_fn(move || {
                        format!(
                            "taskflow-async-{}",
                            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        )
                    })
                    .on_thread_start(move || lower_priority(nice))
                    .enable_all()
                    .build()?;
                Some(Dedicated {
                    handle: runtime.handle().clone(),
                    runtime: std::sync::Mutex::new(Some(runtime)),
                })
            }
        };
        Ok(AsyncExecutor { dedicated })
    }

    /// The runtime that runs the attempts.
    fn runtime<'a>(&'a self, core: &'a Core) -> &'a tokio::runtime::Handle {
        match &self.dedicated {
            Some(dedicated) => &dedicated.handle,
            None => &core.runtime,
        }
    }

    /// Stops the dedicated threads, if any; after shutdown nothing runs there.
    pub(crate) fn stop(&self) {
        if let Some(dedicated) = &self.dedicated {
            dedicated.stop();
        }
    }

    /// Spawns one admitted attempt.
    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        let runtime = self.runtime(core);
        spawn_attempt(runtime, &cell.clone(), attempt(core.clone(), cell));
    }
}

/// Runs one attempt and records its result. The task's slots are given
/// back when it leaves RUNNING (or, aborted, when its cancel does).
async fn attempt(core: Arc<Core>, cell: SharedCell) {
    let Some(attempt) = core.start(&cell) else {
        return;
    };
    let result = match cell.entry.body() {
        // `#[task]` never pairs these; only a hand-built entry could.
        Body::Blocking(_) => Err(TaskError::error(
            "an async task's entry has a blocking body",
        )),
        Body::Async(body) => match catch_panic(|| body(&cell.args, &core.resources)) {
            Err(error) => Err(error),
            Ok(future) => {
                // The body's `tracing` events reach the application's
                // subscriber and, through the tee, the task's log.
                let mut body = CatchUnwind::new(future);
                let tee = &core.tee;
                let teed = std::future::poll_fn(|cx| tee.scope(|| Pin::new(&mut body).poll(cx)));
                let future = context::scope(context_of(&core, &cell, attempt), teed);
                match cell.entry.defaults().timeout {
                    None => future.await,
                    // Boxed: a timer is large, and only some tasks have one;
                    // every live attempt pays for its state's size.
                    Some(limit) => Box::pin(tokio::time::timeout(limit, future))
                        .await
                        .unwrap_or_else(|_| {
                            Err(TaskError::new(
                                ErrorKind::Timeout,
                                format!("attempt exceeded the timeout of {limit:?}"),
                            ))
                        }),
                }
            }
        },
    };
    core.finish(&cell, result.map(Produced::Value));
}
