//! The admission gate in front of the async executor: at most `capacity`
//! tasks admitted at once (`max_concurrent_tasks`), the others waiting in
//! arrival order.
//!
//! A waiting task is its cell in a lock-free FIFO queue, not a parked future:
//! it costs one queue slot and no scheduler time, and tasks are admitted in
//! the order they arrived (or came back from a retry wait), whatever order
//! the runtime would have polled futures in. A [`Permit`] is a token; when
//! it is dropped (the attempt ended, or was aborted) the next waiting task
//! is admitted. Free permits are an atomic count, so admission takes no lock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::async_tasks::start;
use crate::core::Core;
use crate::record::SharedCell;

pub(crate) struct Gate {
    free: AtomicUsize,
    waiting: (Sender<SharedCell>, Receiver<SharedCell>),
}

/// One admitted task's place; dropping it admits the next. It holds the
/// core, not the gate, since it outlives any borrow of the gate.
pub(crate) struct Permit {
    core: Arc<Core>,
}

impl Gate {
    pub(crate) fn new(capacity: usize) -> Self {
        Gate {
            free: AtomicUsize::new(capacity),
            waiting: crossbeam_channel::unbounded(),
        }
    }

    /// Queues `cell` and admits whatever the free permits allow.
    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        // Only fails if the receiver is gone, and this struct owns it.
        let _ = self.waiting.0.send(cell);
        self.pump(core);
    }

    /// Tasks waiting for admission.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.1.len()
    }

    fn take(&self) -> bool {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(1)
            })
            .is_ok()
    }

    fn give(&self) {
        self.free.fetch_add(1, Ordering::AcqRel);
    }

    /// Admits waiting tasks while permits are free.
    fn pump(&self, core: &Arc<Core>) {
        while self.take() {
            // A task cancelled or interrupted while it waited is skipped.
            let next = std::iter::from_fn(|| self.waiting.1.try_recv().ok())
                .find(|cell| !cell.status().is_finished());
            match next {
                Some(cell) => {
                    let permit = Permit { core: core.clone() };
                    start(core, cell, Some(permit));
                }
                None => {
                    self.give();
                    // A task queued after the queue looked empty may have
                    // found no free permit (this call held it): look again.
                    if self.waiting.1.is_empty() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(gate) = self.core.async_tasks.gate() {
            gate.give();
            gate.pump(&self.core);
        }
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("free", &self.free.load(Ordering::Relaxed))
            .field("waiting", &self.waiting())
            .finish()
    }
}
