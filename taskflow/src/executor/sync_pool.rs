//! The sync executor: plain functions on threads that are not the runtime's.
//!
//! With `max_sync_threads(n)` the manager owns exactly `n` threads named
//! `taskflow-sync-1` … `taskflow-sync-n`, fed by one queue; a task waiting in
//! the queue is PENDING. Without it, each attempt goes to tokio's shared
//! blocking pool. Either way an attempt's panic is caught, so a pool thread is
//! never lost, and a retry wait happens on a timer, never on a pool thread.
//!
//! When an attempt ends on a dedicated thread and its freed slot admits the
//! next sync task, that task is handed to the same thread rather than sent
//! through the queue: no wake-up of another thread, no hop, the record still
//! in cache.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use taskflow_worker::attempt::catch_panic;
use taskflow_worker::registry::Body;
use taskflow_worker::{TaskError, context};

use super::{context_of, lower_priority};
use crate::core::Core;
use crate::error::Error;
use crate::lifecycle::Transition;
use crate::record::{Produced, SharedCell};

pub(crate) enum SyncExecutor {
    /// tokio's blocking pool.
    Shared,
    /// A pool of this manager's own threads.
    Dedicated(Pool),
}

pub(crate) struct Pool {
    size: usize,
    nice: Option<i32>,
    jobs: Sender<Job>,
    /// Taken when the threads start.
    receiver: Mutex<Option<Receiver<Job>>>,
}

thread_local! {
    /// On a dedicated thread while an attempt's end is recorded: its pool
    /// (by address) and the task the freed slot admitted, if any.
    static HANDOFF: RefCell<Option<(usize, Option<SharedCell>)>> = const { RefCell::new(None) };
}

enum Job {
    Run(SharedCell),
    /// One per thread at close: the thread exits when it pops one.
    Stop,
}

impl SyncExecutor {
    pub(crate) fn new(max_sync_threads: Option<usize>, nice: Option<i32>) -> Self {
        match max_sync_threads {
            None => SyncExecutor::Shared,
            Some(size) => {
                let (jobs, receiver) = crossbeam_channel::unbounded();
                SyncExecutor::Dedicated(Pool {
                    size,
                    nice,
                    jobs,
                    receiver: Mutex::new(Some(receiver)),
                })
            }
        }
    }

    /// Starts the dedicated threads, once `core` exists for them to share.
    pub(crate) fn start(core: &Arc<Core>) -> Result<(), Error> {
        let SyncExecutor::Dedicated(pool) = &core.sync_tasks else {
            return Ok(());
        };
        let receiver = pool
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(receiver) = receiver else {
            return Ok(());
        };
        let nice = pool.nice;
        for index in 1..=pool.size {
            let name = format!("taskflow-sync-{index}");
            let (thread_core, receiver) = (core.clone(), receiver.clone());
            let spawned = thread::Builder::new()
                .name(name.clone())
                .spawn(move || serve(&thread_core, &receiver, nice));
            if let Err(source) = spawned {
                // Stop the threads already started before reporting.
                core.sync_tasks.close();
                return Err(Error::SpawnThread { name, source });
            }
        }
        Ok(())
    }

    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        match self {
            SyncExecutor::Shared => {
                let core = core.clone();
                // The join handle is not needed: the attempt reports through
                // `Core::finish`, and a blocking task cannot be aborted anyway.
                drop(
                    core.runtime
                        .clone()
                        .spawn_blocking(move || run_attempt(&core, cell, None)),
                );
            }
            SyncExecutor::Dedicated(pool) => {
                let Some(cell) = pool.hand_over(cell) else {
                    return;
                };
                if let Err(rejected) = pool.jobs.send(Job::Run(cell)) {
                    // Every thread is gone: only possible after close.
                    if let Job::Run(cell) = rejected.into_inner() {
                        core.transition(&cell, Transition::Interrupt);
                    }
                }
            }
        }
    }

    /// Lets the dedicated threads exit once they finish what they run now.
    pub(crate) fn close(&self) {
        if let SyncExecutor::Dedicated(pool) = self {
            for _ in 0..pool.size {
                let _ = pool.jobs.send(Job::Stop);
            }
        }
    }
}

/// Whether the calling thread is a dedicated pool thread recording the end
/// of an attempt, with no next task handed to it yet.
pub(crate) fn ending_attempt_here() -> bool {
    HANDOFF.with(|handoff| matches!(&*handoff.borrow(), Some((_, None))))
}

impl Pool {
    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Keeps `cell` for the calling thread if it is one of this pool's,
    /// recording the end of an attempt; gives it back otherwise.
    fn hand_over(&self, cell: SharedCell) -> Option<SharedCell> {
        HANDOFF.with(|handoff| match &mut *handoff.borrow_mut() {
            Some((pool, next @ None)) if *pool == self.id() => {
                *next = Some(cell);
                None
            }
            _ => Some(cell),
        })
    }
}

/// A dedicated thread's loop: the task handed over by the attempt that just
/// ended here first, else the next from the queue.
fn serve(core: &Arc<Core>, jobs: &Receiver<Job>, nice: Option<i32>) {
    lower_priority(nice);
    // Task bodies may use `Handle::current()`, as on tokio's blocking pool.
    let _runtime = core.runtime.enter();
    let pool = match &core.sync_tasks {
        SyncExecutor::Dedicated(pool) => pool.id(),
        SyncExecutor::Shared => 0,
    };
    let mut next = None;
    loop {
        let cell = match next.take() {
            Some(cell) => cell,
            None => match jobs.recv() {
                Ok(Job::Run(cell)) => cell,
                Ok(Job::Stop) | Err(_) => return,
            },
        };
        run_attempt(core, cell, Some(pool));
        next = HANDOFF.with(|handoff| handoff.borrow_mut().take().and_then(|(_, next)| next));
    }
}

/// Runs one attempt on the calling thread and records its result. `pool`:
/// the dedicated pool this thread serves, which may hand it the next task
/// while the end is recorded (only then: a task a body enqueues goes to an
/// idle thread, not to this busy one).
fn run_attempt(core: &Arc<Core>, cell: SharedCell, pool: Option<usize>) {
    let Some(attempt) = core.start(&cell) else {
        return;
    };
    let result = match cell.entry.body() {
        Body::Blocking(body) => context::enter(context_of(core, &cell, attempt), || {
            core.tee
                .scope(|| catch_panic(|| body(&cell.args, &core.resources)))
        }),
        // `#[task]` never pairs these; only a hand-built entry could.
        Body::Async(_) => Err(TaskError::error("a thread task's entry has an async body")),
    };
    if let Some(pool) = pool {
        HANDOFF.with(|handoff| *handoff.borrow_mut() = Some((pool, None)));
    }
    core.finish(&cell, result.map(Produced::Value));
}
