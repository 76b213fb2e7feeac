//! The async executor: one tokio task per enqueued task, gated by a semaphore.

use std::sync::Arc;

use taskflow_worker::attempt::{CatchUnwind, catch_panic};
use taskflow_worker::registry::Body;
use taskflow_worker::{ErrorKind, TaskError, context};
use tokio::sync::Semaphore;

use super::context_of;
use crate::core::Core;
use crate::lifecycle::Transition;
use crate::record::{Produced, SharedCell};

pub(crate) struct AsyncExecutor {
    /// `None` means no cap.
    permits: Option<Arc<Semaphore>>,
}

impl AsyncExecutor {
    pub(crate) fn new(max_concurrent_tasks: Option<usize>) -> Self {
        AsyncExecutor {
            permits: max_concurrent_tasks.map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        let task = core
            .runtime
            .spawn(run(core.clone(), cell.clone(), self.permits.clone()));
        cell.set_abort(task.abort_handle());
    }

    /// Wakes every task waiting for a permit; they will find the manager closed.
    pub(crate) fn close(&self) {
        if let Some(permits) = &self.permits {
            permits.close();
        }
    }
}

/// Drives one task through all its attempts.
async fn run(core: Arc<Core>, cell: SharedCell, permits: Option<Arc<Semaphore>>) {
    let Body::Async(body) = cell.entry.body() else {
        // `#[task]` never pairs these; only a hand-built entry could.
        core.transition(&cell, Transition::Start);
        core.finish(
            &cell,
            Err(TaskError::error(
                "an async task's entry has a blocking body",
            )),
        );
        return;
    };
    loop {
        let permit = match &permits {
            Some(permits) => match permits.clone().acquire_owned().await {
                Ok(permit) => Some(permit),
                // Closed: the manager is shutting down.
                Err(_) => {
                    core.transition(&cell, Transition::Interrupt);
                    return;
                }
            },
            None => None,
        };
        let Some(attempt) = core.start(&cell) else {
            return;
        };
        let attempt_future = catch_panic(|| body(&cell.args, &core.resources));
        let result = match attempt_future {
            Err(error) => Err(error),
            Ok(future) => {
                let future =
                    context::scope(context_of(&core, &cell, attempt), CatchUnwind::new(future));
                match cell.entry.defaults().timeout {
                    None => future.await,
                    Some(limit) => match tokio::time::timeout(limit, future).await {
                        Ok(result) => result,
                        Err(_) => Err(TaskError::new(
                            ErrorKind::Timeout,
                            format!("attempt exceeded the timeout of {limit:?}"),
                        )),
                    },
                }
            }
        };
        let retry_in = core.finish(&cell, result.map(Produced::Value));
        // Released only once the record has left RUNNING, so RUNNING records
        // never outnumber the permits; never held across the retry wait.
        drop(permit);
        match retry_in {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return,
        }
    }
}
