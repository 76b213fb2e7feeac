//! The async executor: each admitted attempt is a tokio task, behind a
//! [`Gate`] of `max_concurrent_tasks` permits (no gate when unset).

use std::sync::Arc;

use taskflow_worker::attempt::{CatchUnwind, catch_panic};
use taskflow_worker::registry::Body;
use taskflow_worker::{ErrorKind, TaskError, context};

use super::gate::{Gate, Permit};
use super::{context_of, spawn_attempt};
use crate::core::Core;
use crate::record::{Produced, SharedCell};

pub(crate) struct AsyncExecutor {
    /// `None` means no cap.
    gate: Option<Gate>,
}

impl AsyncExecutor {
    pub(crate) fn new(max_concurrent_tasks: Option<usize>) -> Self {
        AsyncExecutor {
            gate: max_concurrent_tasks.map(Gate::new),
        }
    }

    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        match &self.gate {
            None => start(core, cell, None),
            Some(gate) => gate.submit(core, cell, |core| core.async_tasks.gate.as_ref(), start),
        }
    }
}

/// Spawns one admitted attempt.
fn start(core: &Arc<Core>, cell: SharedCell, permit: Option<Permit>) {
    spawn_attempt(core, &cell.clone(), attempt(core.clone(), cell, permit));
}

/// Runs one attempt; after a failure with retries left, waits (holding no
/// permit) and queues the task again.
async fn attempt(core: Arc<Core>, cell: SharedCell, permit: Option<Permit>) {
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
                let future =
                    context::scope(context_of(&core, &cell, attempt), CatchUnwind::new(future));
                match cell.entry.defaults().timeout {
                    None => future.await,
                    Some(limit) => tokio::time::timeout(limit, future)
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
    let retry_in = core.finish(&cell, result.map(Produced::Value));
    // Released only once the record has left RUNNING, so RUNNING records
    // never outnumber the permits; never held across the retry wait.
    drop(permit);
    if let Some(wait) = retry_in {
        tokio::time::sleep(wait).await;
        core.async_tasks.submit(&core, cell);
    }
}
