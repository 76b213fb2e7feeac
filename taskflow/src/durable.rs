//! What drives a task store, whatever the backend: the writer of changes,
//! the claimer of ready work, and the keeper of leases.
//!
//! - **The writer** batches what changed: new tasks, status changes and log
//!   lines reach it as they happen and are written in groups, so many
//!   transitions cost one store call. Each change is a compare-and-set
//!   fenced on what this instance last wrote: a task it RUNS is fenced on
//!   (owner, attempt), so an instance that resumes after its lease was taken
//!   cannot overwrite what its rescuer decided, and learns that it lost the
//!   task. A store that cannot be written never stops running tasks: what
//!   waits is kept, the failure is reported once, and writing resumes with
//!   backoff.
//! - **The claimer** asks the store for as many ready tasks as there are free
//!   slots per queue and executor, whenever slots free up, new rows are
//!   written (here, or elsewhere when the store says so), the next delayed
//!   task is due, or the poll interval passes (the only query an idle
//!   instance makes). A claim marks each task RUNNING,
//!   owned by this instance, durably **before** its body starts.
//! - **The keeper** renews this instance's lease (its only proof of life:
//!   never a pid or a host name), picks up cancellations other processes
//!   asked for and, while the store makes it the one instance doing upkeep
//!   (`Store::lead`), rescues the RUNNING tasks of instances whose lease
//!   expired (through `lifecycle::next`, one event each) and prunes by
//!   retention. The same leadership decides which instance fires the
//!   schedules (`schedule::ticker`, which wakes at each tick rather than
//!   each heartbeat).
//!   The claimer also follows, once per poll interval (at once when the
//!   store says another instance finished tasks), the tasks that handles
//!   here await while another instance runs them, and every task enqueued
//!   here that may run elsewhere once per heartbeat, however long the poll
//!   interval. Such a view of another instance's task never counts as
//!   running here.
//! - **Outages** are reported once each: the first failed call logs an
//!   error and publishes `EventKind::StoreFailed`; the end is logged once
//!   the writer has written what waited and no call failed for a
//!   heartbeat.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use taskflow_worker::registry::Registry;
use taskflow_worker::{ErrorKind, Executor, LogRecord, TaskError, TaskId};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::core::Core;
use crate::error::Error;
use crate::events::EventKind;
use crate::lifecycle::{self, TaskStatus, Transition};
use crate::queue::executor_index;
use crate::record::{SharedCell, Stamp, TaskCell, Written};
use crate::store::{
    Change, Demand, Expect, Inserted, InstanceInfo, LogLine, NewTask, Row, Store, StoreError,
    StoredTask, TaskState,
};

/// Most changes written in one batch.
const MAX_BATCH: usize = 4096;
/// Most tasks followed through the store in one read.
const MAX_FOLLOWED: usize = 1000;

/// How a manager uses its task store.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// PENDING tasks this instance enqueued stay queued at shutdown.
    pub(crate) requeue_pending: bool,
    /// How long a lease lasts without renewal.
    pub(crate) lease: Duration,
    /// How often the lease is renewed (and the keeper's other duties done).
    pub(crate) heartbeat: Duration,
    /// How often an idle claimer looks for work another process queued.
    pub(crate) poll: Duration,
    /// Finished tasks older than this are pruned.
    pub(crate) retention: Option<Duration>,
    /// Log lines kept per task.
    pub(crate) max_logs: u32,
    /// A PENDING task due further ahead than this waits in the store alone.
    pub(crate) horizon: Duration,
}

/// What the writer is sent.
enum Write {
    /// This task changed (or is new).
    Cell(SharedCell),
    /// This task logged.
    Log(LogLine),
    /// Answer once everything sent before is written.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// The task store and its drivers.
pub(crate) struct Durable {
    pub(crate) store: Arc<dyn Store>,
    instance: InstanceInfo,
    settings: Settings,
    writes: mpsc::UnboundedSender<Write>,
    /// Taken by `start`.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Write>>>,
    /// Task names per executor this binary runs: what it may claim.
    names: [Arc<[String]>; 3],
    /// A run of store failures is being reported (once).
    failing: AtomicBool,
    /// The loss of the store was reported (once, for good).
    loss_reported: AtomicBool,
    /// When the latest store failure was met: the store counts as back
    /// once it has answered for a heartbeat since.
    last_failure: Mutex<Option<tokio::time::Instant>>,
    /// The writer holds changes it could not write yet.
    behind: AtomicBool,
    /// Wakes the keeper early (shutdown).
    keeper: Arc<Notify>,
    closed: AtomicBool,
    /// The store's file was deleted or replaced: nothing more is durable,
    /// and the instance goes on with its queue in memory.
    lost: AtomicBool,
    /// Other live instances share the store (from the last heartbeat): only
    /// then may a task enqueued here run elsewhere and need following.
    shared: AtomicBool,
    /// A claim found this instance's lease lapsed and took nothing: the
    /// next renewal wakes the claimer.
    lapsed: AtomicBool,
    /// Task names met in the store that this binary does not register,
    /// reported once each.
    unknown: Mutex<HashSet<String>>,
    /// The store made this instance the one doing upkeep, at the last ask:
    /// it fires the schedules too.
    leading: AtomicBool,
    /// Tasks due beyond the memory horizon, to leave memory once their row
    /// is written and no handle holds them: looked at each heartbeat.
    resting: Mutex<Vec<Weak<TaskCell>>>,
    /// Claims of ready rows under way.
    claiming: AtomicUsize,
    /// What the audit of this instance's RUNNING rows found (see
    /// [`hand_back_strays`]).
    strays: Mutex<Strays>,
}

/// Rows the store says this instance runs but it has no attempt of.
#[derive(Default)]
struct Strays {
    /// A claim failed: its rows may be RUNNING here with nobody running
    /// them, so the next heartbeats look (and every
    /// [`AUDIT_EVERY`]th one anyway).
    suspect: bool,
    /// Heartbeats since the last look.
    beats: u32,
    /// Found at the last look.
    seen: HashSet<TaskId>,
}

/// Every this many heartbeats the keeper looks for rows claimed for this
/// instance that it does not run, even without a failed claim to suspect.
const AUDIT_EVERY: u32 = 10;

impl Durable {
    pub(crate) fn new(store: Arc<dyn Store>, settings: Settings, registry: &Registry) -> Self {
        let mut names: [Vec<String>; 3] = Default::default();
        for entry in registry.entries() {
            if entry.executor() == Executor::Process && cfg!(not(unix)) {
                continue;
            }
            names[executor_index(entry.executor())].push(entry.name().to_owned());
        }
        let (writes, inbox) = mpsc::unbounded_channel();
        Durable {
            store,
            instance: InstanceInfo {
                id: TaskId::new().to_string(),
                pid: std::process::id(),
                host: host_name(),
            },
            settings,
            writes,
            inbox: Mutex::new(Some(inbox)),
            names: names.map(Into::into),
            failing: AtomicBool::new(false),
            loss_reported: AtomicBool::new(false),
            last_failure: Mutex::new(None),
            behind: AtomicBool::new(false),
            keeper: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            shared: AtomicBool::new(false),
            lapsed: AtomicBool::new(false),
            unknown: Mutex::default(),
            leading: AtomicBool::new(false),
            resting: Mutex::default(),
            claiming: AtomicUsize::new(0),
            strays: Mutex::default(),
        }
    }

    /// Notes a PENDING task of this instance that will not start before
    /// `run_at`: if that is beyond the memory horizon, the task may wait in
    /// the store alone (see [`rest_watched`]).
    pub(crate) fn may_rest(&self, core: &Core, cell: &SharedCell, run_at: SystemTime) {
        let far = SystemTime::now() + self.settings.horizon;
        // A task a shutdown would interrupt stays: its end is this
        // instance's to write. So does one of a queue with a `max_size`,
        // counted in memory (and bounded by it).
        if run_at > far
            && core.runs_again(cell, TaskStatus::Pending)
            && cell.queue.config().max_size.is_none()
        {
            self.resting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(cell));
        }
    }

    /// Other live instances share the store (as of the last heartbeat).
    #[cfg(feature = "admin")]
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Acquire)
    }

    /// This instance's token: the owner of the tasks it claims.
    pub(crate) fn instance_id(&self) -> &str {
        &self.instance.id
    }

    pub(crate) fn requeue_pending(&self) -> bool {
        self.settings.requeue_pending
    }

    /// Whether this instance does the store's upkeep, and so fires the
    /// schedules (as of the keeper's last ask).
    pub(crate) fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// How often the keeper renews the lease.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.settings.heartbeat
    }

    fn strays(&self) -> std::sync::MutexGuard<'_, Strays> {
        self.strays.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers this instance and rescues what dead instances left, then
    /// starts the writer, the claimer and the keeper.
    pub(crate) async fn start(core: &Arc<Core>) -> Result<(), Error> {
        let Some(durable) = &core.durable else {
            return Ok(());
        };
        // Registered first, before anything can make this instance own a
        // row. Only the claimer and the writer (whose inserts may claim)
        // ever do, and they start below, once this first heartbeat is
        // committed; keyed inserts and `enqueue_in` never claim, and the
        // manager is handed out only after this returns anyway. A rescuer
        // takes a RUNNING row whose owner has no instance row for a dead
        // owner's, so this order is what keeps a new instance's first
        // claims its own. The store holds to it too: a claim by an owner
        // without a live lease takes nothing.
        let beat = durable
            .store
            .heartbeat(&durable.instance, durable.settings.lease)
            .await
            .map_err(Error::from_store)?;
        durable.shared.store(beat.others > 0, Ordering::Release);
        if leads(core, durable).await {
            rescue(core).await;
        }
        let registry = Registry::global()?;
        // Another process may have queued this binary's tasks in their
        // declared queues before this one used them: claim from those too.
        for entry in registry.entries() {
            if let Some(queue) = entry.defaults().queue {
                core.scheduler.queue(queue);
            }
        }
        for name in durable
            .store
            .unfinished_names()
            .await
            .map_err(Error::from_store)?
        {
            if registry.get(&name).is_none() {
                durable.unknown_task(&name);
            }
        }
        let inbox = durable
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(inbox) = inbox {
            drop(core.runtime.spawn(writer(Arc::downgrade(core), inbox)));
        }
        drop(core.runtime.spawn(claimer(Arc::downgrade(core))));
        drop(core.runtime.spawn(keeper(Arc::downgrade(core))));
        Ok(())
    }

    /// Queues a write of the cell's current state.
    pub(crate) fn write(&self, cell: SharedCell) {
        // Only fails once the writer has stopped, after shutdown.
        let _ = self.writes.send(Write::Cell(cell));
    }

    /// Queues a log line.
    pub(crate) fn log(&self, task: TaskId, record: LogRecord) {
        let _ = self.writes.send(Write::Log(LogLine { task, record }));
    }

    /// Inserts a keyed task now, waiting on this thread for the store's
    /// answer: `None` when it is in, or the row that holds its key.
    pub(crate) fn insert_keyed(&self, cell: &SharedCell) -> Result<Option<Row>, Error> {
        let (task, target) = new_task(cell);
        let inserted = block_on(self.store.insert(vec![task])).map_err(Error::from_store)?;
        match inserted.into_iter().next() {
            Some(Inserted::Existing(row)) => Ok(Some(*row)),
            _ => {
                // A claim may have come first, and knows better.
                cell.lock().written.get_or_insert(target);
                cell.mark_stored();
                Ok(None)
            }
        }
    }

    /// Applies one change now; on success the cell knows its row is so.
    pub(crate) async fn apply_now(&self, cell: &SharedCell, change: Change) -> Result<bool, Error> {
        let written = Written {
            status: change.state.status,
            attempts: change.state.attempts,
        };
        let applied = self
            .store
            .apply(vec![change])
            .await
            .map_err(Error::from_store)?;
        let applied = applied.first() == Some(&true);
        if applied {
            cell.lock().written = Some(written);
        }
        Ok(applied)
    }

    /// Waits until everything queued so far is written.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Write::Flush(reply))
            .map_err(|_| Error::ShutDown)?;
        answer
            .await
            .map_err(|_| Error::ShutDown)?
            .map_err(Error::Store)
    }

    /// Stops claiming.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.keeper.notify_one();
    }

    /// Writes what is left and gives up this instance's lease.
    pub(crate) async fn stop(&self, core: &Arc<Core>) -> Result<(), Error> {
        let flushed = self.flush().await;
        let retired = self
            .store
            .retire(&self.instance.id)
            .await
            .map_err(Error::from_store);
        core.scheduler.claimer().notify_one();
        flushed.and(retired)
    }

    /// Whether the store was lost (and the queue moved to memory).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The store's file is gone: from now on this instance keeps its queue
    /// in memory, so what it holds still runs, though nothing is durable
    /// any more (every `persisted()` and `flush()` says so).
    fn lose(&self, core: &Arc<Core>) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        core.scheduler.go_in_memory();
        for cell in core.index.unfinished() {
            if !cell.is_mirror() && cell.status() == TaskStatus::Pending && !cell.is_admitted() {
                core.scheduler.submit(core, cell);
            }
        }
    }

    /// Reports the first failure of a run of them: one log line and one
    /// [`EventKind::StoreFailed`] per outage, however many calls fail in it
    /// (a server that drops every connection fails each call that was
    /// using one, while new connections already work). The loss of the
    /// store is reported once whatever noticed it first (a write, a claim,
    /// a heartbeat), and no later answer clears it.
    pub(crate) fn failed(&self, core: &Core, first: Option<&SharedCell>, error: &StoreError) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now());
        let first_report = match error {
            StoreError::Lost(_) => {
                self.failing.store(true, Ordering::Release);
                !self.loss_reported.swap(true, Ordering::AcqRel)
            }
            _ => !self.failing.swap(true, Ordering::AcqRel),
        };
        if first_report {
            let message = crate::error::chain(error);
            tracing::error!(
                "{message}; tasks keep running and their changes are kept until it can be written"
            );
            core.report_store_failure(first.map(|cell| &**cell), &message);
        }
    }

    /// The store answered again. The outage is over once the writer has
    /// written what waited and no call has failed for a heartbeat: then it
    /// is said, once. Not after a loss, which is for good: an answer from
    /// before it, handled late, must not clear the report.
    pub(crate) fn recovered(&self) {
        if self.loss_reported.load(Ordering::Acquire)
            || !self.failing.load(Ordering::Acquire)
            || self.behind.load(Ordering::Acquire)
        {
            return;
        }
        let settled = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= self.settings.heartbeat);
        if settled && self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!("the task store is writable again; pending changes are written");
        }
    }

    /// Warns once about a task name the store holds and this binary lacks.
    fn unknown_task(&self, name: &str) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        if unknown.insert(name.to_owned()) {
            tracing::warn!(
                task = %name,
                "the task store holds unfinished tasks named `{name}`, which this binary does not register; they are left untouched"
            );
        }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("store", &self.store)
            .field("instance", &self.instance.id)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The row state a cell's current state is written as: a task interrupted
/// but released to run again is PENDING and unowned in the store.
fn target(cell: &SharedCell, state: &crate::record::CellState, me: &str) -> TaskState {
    let released = state.status == TaskStatus::Interrupted && cell.is_released();
    let status = match released {
        true => TaskStatus::Pending,
        false => state.status,
    };
    TaskState {
        status,
        attempts: state.attempts,
        run_at: state.run_at.get(),
        started_at: state.started_at.filter(|_| !released).map(Stamp::get),
        finished_at: state.finished_at.filter(|_| !released).map(Stamp::get),
        last_error: state.last_error().cloned(),
        owner: (status == TaskStatus::Running).then(|| me.to_owned()),
        output: state.output_bytes().map(|bytes| bytes.to_vec()),
    }
}

/// A cell as first written, and what its row then is.
fn new_task(cell: &SharedCell) -> (NewTask, Written) {
    let state = cell.lock();
    let mut row = target(cell, &state, "");
    // A new row is never owned: only a claim makes it RUNNING.
    row.owner = None;
    let written = Written {
        status: row.status,
        attempts: row.attempts,
    };
    let task = NewTask {
        id: cell.id,
        name: cell.entry.name().to_owned(),
        executor: cell.entry.executor(),
        queue: cell.queue.name().to_string(),
        priority: cell.priority,
        args: cell.args.to_vec(),
        tags: cell.tags.clone(),
        idempotency_key: cell.key.as_deref().map(str::to_owned),
        created_at: cell.created_at.get(),
        state: row,
        claim: None,
    };
    (task, written)
}

/// One cell's part of a batch.
enum Planned {
    Insert(SharedCell, NewTask, Written),
    Change(SharedCell, Change, Written, Option<Written>),
    /// Nothing to write: the row already says it.
    Nothing(SharedCell),
}

fn plan(cell: SharedCell, me: &str) -> Planned {
    if !cell.is_stored() {
        let (task, written) = new_task(&cell);
        return Planned::Insert(cell, task, written);
    }
    let state = cell.lock();
    let row = target(&cell, &state, me);
    let new = Written {
        status: row.status,
        attempts: row.attempts,
    };
    let before = state.written;
    let expect = match before {
        Some(before) if before == new && row.status != TaskStatus::Pending => None,
        Some(before) if before == new && row.run_at <= SystemTime::now() => None,
        Some(Written {
            status: TaskStatus::Running,
            attempts,
        }) => Some(Expect::Owned {
            owner: me.to_owned(),
            attempts,
        }),
        Some(Written { status, attempts }) => Some(Expect::Status {
            status,
            attempts,
            owner: None,
        }),
        // Stored by a keyed insert whose answer is on its way, or a view
        // of another instance's task: nothing this instance may write.
        None => None,
    };
    drop(state);
    match expect {
        None => Planned::Nothing(cell),
        Some(expect) => {
            let change = Change {
                id: cell.id,
                expect,
                state: row,
            };
            Planned::Change(cell, change, new, before)
        }
    }
}

/// The writer's task: batches what changed and writes it.
async fn writer(core: Weak<Core>, mut inbox: mpsc::UnboundedReceiver<Write>) {
    let mut cells: Vec<SharedCell> = Vec::new();
    let mut logs: Vec<LogLine> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let mut backoff: Option<Duration> = None;
    let mut lost: Option<String> = None;
    loop {
        let first = match backoff {
            None => match inbox.recv().await {
                Some(write) => Some(write),
                None => return,
            },
            Some(wait) => match tokio::time::timeout(wait, inbox.recv()).await {
                Ok(Some(write)) => Some(write),
                Ok(None) => return,
                // Time to try again with what waits.
                Err(_) => None,
            },
        };
        let mut next = first;
        loop {
            match next.take() {
                Some(Write::Cell(cell)) => cells.push(cell),
                Some(Write::Log(line)) => logs.push(line),
                Some(Write::Flush(reply)) => flushes.push(reply),
                None => {}
            }
            if cells.len() + logs.len() >= MAX_BATCH {
                break;
            }
            match inbox.try_recv() {
                Ok(write) => next = Some(write),
                Err(_) => break,
            }
        }
        let Some(core) = core.upgrade() else {
            return;
        };
        let Some(durable) = &core.durable else {
            return;
        };
        if let Some(reason) = &lost {
            // Nothing reaches the file any more: say so to all waiting.
            for cell in cells.drain(..) {
                cell.mark_unwritten();
                cell.key_released();
            }
            logs.clear();
            flushes
                .drain(..)
                .for_each(|reply| drop(reply.send(Err(reason.clone()))));
            continue;
        }
        let written = match backoff {
            None => write_batch(&core, durable, &mut cells, &mut logs).await,
            // After a failure, one task at a time, so a nearly full disk
            // takes what it can and one change it refuses holds back no
            // other; log lines wait until whole batches go through again.
            Some(_) => write_singly(&core, durable, &mut cells).await,
        };
        match written {
            Ok(()) => {
                durable.behind.store(false, Ordering::Release);
                durable.recovered();
                backoff = None;
                flushes.drain(..).for_each(|reply| drop(reply.send(Ok(()))));
            }
            Err(StoreError::Lost(reason)) => {
                durable.failed(&core, cells.first(), &StoreError::Lost(reason.clone()));
                durable.lose(&core);
                for cell in cells.drain(..) {
                    cell.mark_unwritten();
                    cell.key_released();
                }
                logs.clear();
                flushes
                    .drain(..)
                    .for_each(|reply| drop(reply.send(Err(reason.clone()))));
                backoff = None;
                lost = Some(reason);
            }
            Err(error) => {
                durable.behind.store(true, Ordering::Release);
                durable.failed(&core, cells.first(), &error);
                // A waiting flush learns of it now rather than hang.
                let message = crate::error::chain(&error);
                flushes
                    .drain(..)
                    .for_each(|reply| drop(reply.send(Err(message.clone()))));
                backoff = Some(backoff.map_or(Duration::from_millis(100), |wait| {
                    (wait * 2).min(Duration::from_secs(5))
                }));
            }
        }
    }
}

/// Writes `cells` one per store call until one fails; those written leave
/// `cells`.
async fn write_singly(
    core: &Arc<Core>,
    durable: &Durable,
    cells: &mut Vec<SharedCell>,
) -> Result<(), StoreError> {
    let mut seen = HashSet::with_capacity(cells.len());
    cells.retain(|cell| seen.insert(cell.id));
    while let Some(cell) = cells.first().cloned() {
        let mut one = vec![cell];
        write_batch(core, durable, &mut one, &mut Vec::new()).await?;
        cells.remove(0);
    }
    Ok(())
}

/// Writes one batch; on success `cells` and `logs` are emptied.
async fn write_batch(
    core: &Arc<Core>,
    durable: &Durable,
    cells: &mut Vec<SharedCell>,
    logs: &mut Vec<LogLine>,
) -> Result<(), StoreError> {
    let me = durable.instance.id.clone();
    // Each cell once, as it is now, in the order they changed: new rows go
    // in in arrival order, which the claim order's last tie-break is.
    let mut seen = HashSet::with_capacity(cells.len());
    let mut inserts = Vec::new();
    let mut changes = Vec::new();
    let mut nothing = Vec::new();
    for cell in cells.iter() {
        if !seen.insert(cell.id) {
            continue;
        }
        match plan(cell.clone(), &me) {
            Planned::Insert(cell, task, written) => inserts.push((cell, task, written)),
            Planned::Change(cell, change, new, before) => {
                changes.push((cell, change, new, before));
            }
            Planned::Nothing(cell) => nothing.push(cell),
        }
    }
    claim_on_insert(core, &me, &mut inserts);
    let new_tasks: Vec<NewTask> = inserts.iter().map(|(_, task, _)| task.clone()).collect();
    let change_list: Vec<Change> = changes
        .iter()
        .map(|(_, change, ..)| change.clone())
        .collect();
    let log_lines = std::mem::take(logs);
    let store = &durable.store;
    // The calls start now, together (a backend may group them in one
    // commit); the claimer is woken as they go, since new rows and freed
    // slots are what it waits for, and its claim may join the same commit.
    // New rows inserted already claimed count as a claim under way until
    // their answers are handled (see `hand_back_strays`).
    let claiming = new_tasks.iter().any(|task| task.claim.is_some());
    let _under_way = claiming.then(|| ClaimUnderWay::new(durable));
    let inserting = (!new_tasks.is_empty()).then(|| store.insert(new_tasks));
    let applying = (!change_list.is_empty()).then(|| store.apply(change_list));
    let logging = (!log_lines.is_empty())
        .then(|| store.append_logs(log_lines.clone(), durable.settings.max_logs));
    if inserting.is_some() || applying.is_some() {
        core.scheduler.claimer().notify_one();
    }
    let (inserted, applied, logged) = tokio::join!(
        async {
            match inserting {
                None => Ok(Vec::new()),
                Some(inserting) => inserting.await,
            }
        },
        async {
            match applying {
                None => Ok(Vec::new()),
                Some(applying) => applying.await,
            }
        },
        async {
            match logging {
                None => Ok(()),
                Some(logging) => logging.await,
            }
        },
    );
    // What went through is done, whatever else failed.
    let mut progressed = false;
    let mut failure = None;
    match inserted {
        Ok(answers) => {
            for ((cell, task, written), answer) in inserts.iter().zip(answers) {
                let claimed = matches!(answer, Inserted::Claimed);
                if task.claim.is_some() && !claimed {
                    // Something better waits in the store: the claimer
                    // takes it, and this one in its turn.
                    core.scheduler
                        .unreserve(&cell.queue, cell.entry.executor(), 1);
                }
                if claimed {
                    cell.mark_stored();
                    run_claimed(core, durable, cell.clone(), task.state.attempts + 1, false);
                } else {
                    // The claimer may have taken the row already (its claim
                    // can share the insert's commit) and recorded that:
                    // newer.
                    cell.lock().written.get_or_insert(*written);
                    cell.mark_stored();
                }
                finished_writing(core, cell);
                progressed = true;
            }
            inserts.clear();
        }
        Err(error) => {
            // Their slots are given back; they are marked afresh next time.
            for (cell, task, _) in &mut inserts {
                if task.claim.take().is_some() {
                    core.scheduler
                        .unreserve(&cell.queue, cell.entry.executor(), 1);
                }
            }
            if claiming {
                // The insert may have committed, its answer lost: a retry
                // finds those rows there (RUNNING here) and cannot claim
                // them again.
                durable.strays().suspect = true;
            }
            failure = Some(error);
        }
    }
    match applied {
        Ok(answers) => {
            for ((cell, _, new, before), applied) in changes.iter().zip(answers) {
                if applied {
                    let mut state = cell.lock();
                    if state.written == *before {
                        state.written = Some(*new);
                    }
                    drop(state);
                    progressed = true;
                } else {
                    refused(core, cell, *before);
                }
                finished_writing(core, cell);
            }
            changes.clear();
        }
        Err(error) => failure = failure.or(Some(error)),
    }
    match logged {
        Ok(()) => {}
        Err(error) => {
            // Lines are kept for the next try.
            logs.extend(log_lines);
            failure = failure.or(Some(error));
        }
    }
    for cell in nothing {
        finished_writing(core, &cell);
    }
    if progressed {
        core.scheduler.claimer().notify_one();
    }
    cells.clear();
    // What failed is sent again on the next try.
    cells.extend(inserts.into_iter().map(|(cell, ..)| cell));
    cells.extend(changes.into_iter().map(|(cell, ..)| cell));
    match failure {
        None => Ok(()),
        Some(error) => Err(error),
    }
}

/// Marks the new tasks that can start now to be inserted claimed, as many
/// per queue and executor as there are free slots, best first (priority,
/// then arrival); their slots are taken.
fn claim_on_insert(core: &Arc<Core>, me: &str, inserts: &mut [(SharedCell, NewTask, Written)]) {
    let now = SystemTime::now();
    let mut groups: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    for (at, (cell, task, _)) in inserts.iter().enumerate() {
        if task.state.status != TaskStatus::Pending
            || task.state.run_at > now
            || cell.queue.is_paused()
        {
            continue;
        }
        let key = (
            Arc::as_ptr(&cell.queue) as usize,
            executor_index(cell.entry.executor()),
        );
        match groups.iter_mut().find(|(q, e, _)| (*q, *e) == key) {
            Some((_, _, members)) => members.push(at),
            None => groups.push((key.0, key.1, vec![at])),
        }
    }
    for (_, _, mut members) in groups {
        members.sort_by_key(|&at| std::cmp::Reverse(inserts[at].1.priority));
        let first = &inserts[members[0]].0;
        let slots = core
            .scheduler
            .reserve_for(&first.queue, first.entry.executor(), members.len());
        for &at in &members[..slots] {
            inserts[at].1.claim = Some(me.to_owned());
        }
    }
}

/// After a cell's state is written (or found to need no write): handles
/// held for a key's release may proceed, and a finished record may leave
/// memory.
fn finished_writing(core: &Arc<Core>, cell: &SharedCell) {
    let finished_here = {
        let state = cell.lock();
        state.status.is_finished()
            && state
                .written
                .is_some_and(|w| w.status.is_finished() || cell.is_released())
    };
    if cell.is_releasing_key() && (finished_here || cell.is_mirror()) {
        cell.key_released();
    }
    if finished_here {
        core.index.evict_when_full(cell);
    }
}

/// A change the store refused: the row is not what this instance last
/// wrote. If it ran the task, another instance took it (its lease had
/// expired); either way the store is the authority from now on.
fn refused(core: &Arc<Core>, cell: &SharedCell, before: Option<Written>) {
    {
        let state = cell.lock();
        if state.written != before {
            // The claimer (or a cancel) wrote since: this change was stale,
            // and a newer one follows.
            return;
        }
    }
    if before.is_some_and(|w| w.status == TaskStatus::Running) {
        tracing::warn!(
            task = %cell.id,
            "this instance no longer owns task {}: its lease was taken and the task rescued by another instance; this attempt's result is not recorded",
            cell.id
        );
        core.bus.publish(|| crate::events::TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind: EventKind::Lost,
            status: cell.status(),
            attempt: cell.lock().attempts.saturating_sub(1),
            at: SystemTime::now(),
        });
    }
    cell.lock().written = None;
    core.follow(cell);
}

/// The claimer's task.
async fn claimer(core: Weak<Core>) {
    let mut next_due: Option<SystemTime> = None;
    let mut backoff = Duration::ZERO;
    let mut next_follow = tokio::time::Instant::now();
    let mut next_full_follow = next_follow;
    // When an idle claimer looks for work again (a poll interval after its
    // last claim).
    let mut next_poll = next_follow;
    // The store's wake-ups for other processes' changes, if it sends any.
    let store_wake = core
        .upgrade()
        .and_then(|core| core.durable.as_ref()?.store.notifications());
    let mut woke = Woke::ToClaim;
    loop {
        let Some(strong) = core.upgrade() else {
            return;
        };
        let wake = strong.scheduler.claimer().clone();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(durable) = &strong.durable else {
            return;
        };
        if durable.closed.load(Ordering::SeqCst) || strong.is_closed() || durable.is_lost() {
            return;
        }
        let poll = durable.settings.poll;
        let (again, due) = match std::mem::replace(&mut woke, Woke::ToClaim) {
            // Another instance finished tasks: the store is shared
            // (whatever the last heartbeat saw), and there is nothing new
            // to claim, only tasks to follow.
            Woke::Changed => {
                durable.shared.store(true, Ordering::Release);
                (false, None)
            }
            Woke::ToFollow => (false, None),
            Woke::ToClaim => {
                let (again, due) = claim_once(&strong, durable).await;
                next_poll = tokio::time::Instant::now() + poll;
                (again, Some(due))
            }
        };
        // Tasks a handle here awaits are followed every poll (and when the
        // store says tasks changed); every task enqueued here, awaited or
        // not, once per heartbeat.
        let now = tokio::time::Instant::now();
        if now >= next_follow || due.is_none() {
            next_follow = now + poll;
            let all = now >= next_full_follow;
            if all {
                next_full_follow = now + durable.settings.heartbeat;
            }
            follow(&strong, durable, all).await;
        }
        match due {
            Some(Ok(due)) => {
                backoff = Duration::ZERO;
                next_due = due;
            }
            Some(Err(())) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
            }
            None => {}
        }
        // With a poll interval longer than the heartbeat, the claimer still
        // wakes once per heartbeat to follow (without claiming) while tasks
        // may run elsewhere: a handle first awaited after the notification
        // that would have woken it, or a task nobody awaits, is brought up
        // to date within a heartbeat rather than a poll interval.
        let following = durable.shared.load(Ordering::Acquire) || strong.index.mirrors() > 0;
        drop(strong);
        if again && backoff.is_zero() {
            continue;
        }
        let now = tokio::time::Instant::now();
        let until_poll = next_poll.saturating_duration_since(now);
        let until_due = next_due
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(until_poll);
        let mut wait = until_due.min(until_poll).max(backoff);
        let mut then = Woke::ToClaim;
        if following && backoff.is_zero() {
            let until_follow = next_full_follow.saturating_duration_since(now);
            if until_follow < wait {
                wait = until_follow;
                then = Woke::ToFollow;
            }
        }
        let Some(store_wake) = &store_wake else {
            if tokio::time::timeout(wait, notified).await.is_err() {
                woke = then;
            }
            continue;
        };
        tokio::select! {
            _ = notified => {}
            _ = store_wake.ready.notified() => {}
            _ = store_wake.changed.notified() => woke = Woke::Changed,
            _ = tokio::time::sleep(wait) => woke = then,
        }
    }
}

/// Why the claimer woke.
enum Woke {
    /// Work may be ready: claim, then follow if a poll interval passed.
    ToClaim,
    /// Another instance finished tasks: follow those awaited here.
    Changed,
    /// A heartbeat passed: follow every task enqueued here.
    ToFollow,
}

/// One claim round: reserves free slots, asks the store, runs what it got.
/// Whether to claim again at once (every slot reserved for some queue was
/// filled), and when the next delayed task is due (or `Err` after a store
/// failure).
///
/// Slots are reserved queue by queue, so the first queues can take all of
/// a capped executor's; when they come back short while a later queue got
/// none, the round claims again without them, until every queue had its
/// chance at the slots left.
async fn claim_once(core: &Arc<Core>, durable: &Durable) -> (bool, Result<Option<SystemTime>, ()>) {
    let mut drained: Vec<(Arc<str>, Executor)> = Vec::new();
    let mut due: Option<SystemTime> = None;
    loop {
        let reservation = core.scheduler.reserve(&durable.names, &drained);
        if reservation.demand.is_empty() {
            return (false, Ok(due));
        }
        let starved = reservation.starved;
        let (full, short, result) = claim_reserved(core, durable, reservation).await;
        let next = match result {
            Ok(next) => next,
            Err(()) => return (false, Err(())),
        };
        due = match (due, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if full || !starved || short.is_empty() {
            return (full, Ok(due));
        }
        drained.extend(short);
    }
}

/// Claims for `reservation` and gives back what went unused: whether some
/// queue's reservation was filled, the queues (and executors) that came
/// back short, and when the next delayed task is due.
async fn claim_reserved(
    core: &Arc<Core>,
    durable: &Durable,
    reservation: crate::queue::Reservation,
) -> (
    bool,
    Vec<(Arc<str>, Executor)>,
    Result<Option<SystemTime>, ()>,
) {
    let demand: Vec<Demand> = reservation
        .demand
        .iter()
        .map(|(_, demand)| demand.clone())
        .collect();
    let under_way = ClaimUnderWay::new(durable);
    let claimed = durable
        .store
        .claim_ready(&durable.instance.id, &demand, SystemTime::now())
        .await;
    let mut used = vec![0usize; demand.len()];
    let result = match claimed {
        Ok(claimed) => {
            durable.recovered();
            if claimed.lapsed {
                durable.lapsed.store(true, Ordering::Release);
            }
            core.report_corrupt(&claimed.corrupt);
            for task in claimed.tasks {
                let slot = demand.iter().position(|want| {
                    want.queue == task.record.queue && want.executor == task.record.executor
                });
                match slot {
                    Some(slot) if used[slot] < demand[slot].slots => {
                        used[slot] += 1;
                        dispatch(core, durable, task);
                    }
                    // A store that returned more than asked: put it back.
                    _ => {
                        give_back(core, durable, &task).await;
                    }
                }
            }
            Ok(claimed.next_run_at)
        }
        Err(error) => {
            // The claim may have committed and only its answer been lost.
            durable.strays().suspect = true;
            durable.failed(core, None, &error);
            Err(())
        }
    };
    // Every row it took has its cell in the index by now.
    drop(under_way);
    let mut full = false;
    let mut short = Vec::new();
    for ((queue, want), used) in reservation.demand.iter().zip(&used) {
        core.scheduler
            .unreserve(queue, want.executor, want.slots - used);
        full |= *used == want.slots;
        if *used < want.slots {
            short.push((queue.name().clone(), want.executor));
        }
    }
    (full && result.is_ok(), short, result)
}

/// Runs a claimed task (its slots are reserved), or writes what this
/// instance already decided for it.
fn dispatch(core: &Arc<Core>, durable: &Durable, task: StoredTask) {
    let Some(cell) = core.claimed_cell(&task) else {
        durable.unknown_task(&task.record.name);
        return;
    };
    run_claimed(
        core,
        durable,
        cell,
        task.record.attempts,
        task.cancel_requested,
    );
}

/// Runs a task this instance claimed, at the store's attempt count
/// `attempts` (its slots are taken), or writes what was decided for it
/// meanwhile.
pub(crate) fn run_claimed(
    core: &Arc<Core>,
    durable: &Durable,
    cell: SharedCell,
    attempts: u32,
    cancel_requested: bool,
) {
    if core.defer_claim(&cell, attempts, cancel_requested) {
        return;
    }
    {
        let mut state = cell.lock();
        state.written = Some(Written {
            status: TaskStatus::Running,
            attempts,
        });
        cell.admit();
        if state.status == TaskStatus::Pending {
            // The attempt count the claim fenced on is the store's.
            state.attempts = attempts.saturating_sub(1);
        }
    }
    if cancel_requested {
        core.transition(&cell, Transition::Cancel);
        return;
    }
    if cell.status().is_finished() {
        // Cancelled (or interrupted) here while its row was being claimed:
        // write that, fenced on this claim, and give the slots back.
        core.transition(&cell, Transition::Start);
        durable.write(cell);
        return;
    }
    core.run(cell);
}

/// Returns a task claimed beyond what was asked to the queue.
/// Whether it went back (it is still this instance's, as claimed).
async fn give_back(core: &Arc<Core>, durable: &Durable, task: &StoredTask) -> bool {
    let record = &task.record;
    let mut state = TaskState::pending(record.run_at);
    state.attempts = record.attempts.saturating_sub(1);
    // The claim stamped a first start on a task that never started.
    state.started_at = record.started_at.filter(|_| state.attempts > 0);
    state.last_error = record.last_error.clone();
    let change = Change {
        id: record.id,
        expect: Expect::Owned {
            owner: durable.instance.id.clone(),
            attempts: record.attempts,
        },
        state,
    };
    match durable.store.apply(vec![change]).await {
        Ok(applied) => applied.first() == Some(&true),
        Err(error) => {
            durable.failed(core, None, &error);
            false
        }
    }
}

/// A claim of ready rows under way (a claim, or an insert of rows made
/// claimed) while it lives: the rows it takes have no cell yet.
struct ClaimUnderWay<'a>(&'a Durable);

impl<'a> ClaimUnderWay<'a> {
    fn new(durable: &'a Durable) -> Self {
        durable.claiming.fetch_add(1, Ordering::SeqCst);
        ClaimUnderWay(durable)
    }
}

impl Drop for ClaimUnderWay<'_> {
    fn drop(&mut self) {
        self.0.claiming.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether this instance runs (or is about to run) the task of `cell`,
/// whose row says RUNNING here.
fn runs_here(cell: &TaskCell) -> bool {
    if cell.is_mirror() {
        return false;
    }
    if cell.is_admitted() {
        return true;
    }
    let state = cell.lock();
    state.status != TaskStatus::Pending
        || state
            .written
            .is_none_or(|row| row.status != TaskStatus::Pending)
}

/// Puts back the rows the store says this instance runs but that it has
/// no attempt of: a claim whose write committed but whose answer never
/// arrived (a connection cut at the wrong moment) leaves such rows, and
/// without this they would stay RUNNING under a live instance for good.
/// Looked for after a failed claim, and every [`AUDIT_EVERY`] heartbeats;
/// only while no claim is under way (its rows have no cell yet), and a row
/// goes back only when two looks in a row found it, fenced on this
/// instance and the claim's attempt. It never started here, so it waits
/// again with its attempt count as before the claim.
async fn hand_back_strays(core: &Arc<Core>, durable: &Durable) {
    {
        let mut strays = durable.strays();
        strays.beats += 1;
        if !strays.suspect && strays.beats < AUDIT_EVERY {
            return;
        }
    }
    if durable.claiming.load(Ordering::SeqCst) > 0 {
        return;
    }
    // Not run here: no cell, a view of another instance's, or one waiting
    // that no claim gave slots to and whose row this instance believes
    // PENDING (it was inserted claimed, the answer lost, and the retried
    // insert found it there). One whose change to PENDING is not written
    // yet (a retry's wait) is not: its row is RUNNING until the writer
    // gets to it. Ids first (most are running here), rows for the rest,
    // looked at again once read.
    let me = durable.instance.id.as_str();
    let not_here = |id: &TaskId| core.index.get(id).is_none_or(|cell| !runs_here(&cell));
    let read = async {
        let ids: Vec<TaskId> = durable
            .store
            .owned(me)
            .await?
            .into_iter()
            .filter(not_here)
            .collect();
        match ids.is_empty() {
            true => Ok(Vec::new()),
            false => durable.store.get_many(&ids).await,
        }
    };
    let rows = match read.await {
        Ok(rows) => rows,
        Err(error) => {
            durable.failed(core, None, &error);
            return;
        }
    };
    if durable.claiming.load(Ordering::SeqCst) > 0 {
        // A claim began meanwhile: its rows may be among these.
        return;
    }
    let found: Vec<StoredTask> = rows
        .into_iter()
        .filter_map(Result::ok)
        .filter(|task| {
            task.record.status == TaskStatus::Running
                && task.owner.as_deref() == Some(me)
                && not_here(&task.record.id)
        })
        .collect();
    let before = {
        let mut strays = durable.strays();
        strays.beats = 0;
        strays.suspect = !found.is_empty();
        std::mem::replace(
            &mut strays.seen,
            found.iter().map(|task| task.record.id).collect(),
        )
    };
    let mut handed_back = false;
    for task in found.iter().filter(|task| before.contains(&task.record.id)) {
        if give_back(core, durable, task).await {
            tracing::warn!(
                task = %task.record.id,
                "task {} was claimed for this instance by a claim whose answer never came; it waits again",
                task.record.id
            );
            core.publish_stored(task, EventKind::Requeued, TaskStatus::Pending);
            handed_back = true;
        }
    }
    if handed_back {
        core.scheduler.claimer().notify_one();
    }
}

/// The keeper's task.
async fn keeper(core: Weak<Core>) {
    let mut next_prune = SystemTime::now();
    loop {
        let Some(strong) = core.upgrade() else {
            return;
        };
        let Some(durable) = &strong.durable else {
            return;
        };
        if durable.closed.load(Ordering::SeqCst) {
            return;
        }
        let heartbeat = durable.settings.heartbeat;
        let wake = durable.keeper.clone();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match durable
            .store
            .heartbeat(&durable.instance, durable.settings.lease)
            .await
        {
            Ok(beat) => {
                durable.recovered();
                let shared = beat.others > 0;
                let was = durable.shared.swap(shared, Ordering::AcqRel);
                if shared && !was {
                    // Another instance appeared: the claimer, which may be
                    // asleep for a poll interval, now follows the tasks
                    // enqueued here once per heartbeat (the other one may
                    // run them).
                    strong.scheduler.claimer().notify_one();
                }
                if durable.lapsed.swap(false, Ordering::AcqRel) {
                    // A claim was refused for want of a lease: it has one
                    // again.
                    strong.scheduler.claimer().notify_one();
                }
                if !beat.held {
                    lost_lease(&strong, durable).await;
                }
                for id in beat.cancel {
                    if let Some(cell) = strong.index.get(&id) {
                        strong.transition(&cell, Transition::Cancel);
                    }
                }
            }
            Err(error) => durable.failed(&strong, None, &error),
        }
        rest_watched(&strong, durable);
        hand_back_strays(&strong, durable).await;
        // Upkeep is one instance's job at a time, as the store decides.
        let leading = leads(&strong, durable).await;
        if leading {
            rescue(&strong).await;
        }
        if let Some(retention) = durable.settings.retention
            && leading
            && SystemTime::now() >= next_prune
        {
            next_prune = SystemTime::now()
                + (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
            if let Err(error) = durable.store.prune(SystemTime::now() - retention).await {
                tracing::warn!("cannot prune old tasks from the task store: {error}");
            }
        }
        drop(strong);
        let _ = tokio::time::timeout(heartbeat, notified).await;
    }
}

/// Whether this instance does the store's upkeep (rescue, retention) now:
/// the store grants it to one instance at a time, for a lease.
/// Schedules fire on the instance that leads, too (see `schedule::ticker`).
async fn leads(core: &Arc<Core>, durable: &Durable) -> bool {
    let leads = match durable
        .store
        .lead(&durable.instance.id, durable.settings.lease)
        .await
    {
        Ok(leads) => leads,
        Err(error) => {
            durable.failed(core, None, &error);
            false
        }
    };
    if !durable.leading.swap(leads, Ordering::AcqRel) && leads {
        core.schedules.wake();
    }
    leads
}

/// This instance's lease was taken while it could not renew it (frozen,
/// partitioned): the tasks another instance rescued are no longer its own.
/// Each is stopped here, reported, and followed through the store.
async fn lost_lease(core: &Arc<Core>, durable: &Durable) {
    let running: Vec<SharedCell> = core
        .index
        .unfinished()
        .into_iter()
        .filter(|cell| !cell.is_mirror() && cell.status() == TaskStatus::Running)
        .collect();
    if running.is_empty() {
        return;
    }
    let ids: Vec<TaskId> = running.iter().map(|cell| cell.id).collect();
    let rows = match durable.store.get_many(&ids).await {
        Ok(rows) => rows,
        Err(error) => {
            durable.failed(core, None, &error);
            return;
        }
    };
    let me = durable.instance.id.as_str();
    for cell in running {
        let written = cell.lock().written;
        let row = rows
            .iter()
            .filter_map(|row| row.as_ref().ok())
            .find(|task| task.record.id == cell.id);
        let still_ours = row.is_some_and(|task| {
            task.record.status == TaskStatus::Running
                && task.owner.as_deref() == Some(me)
                && Some(task.record.attempts) == written.map(|w| w.attempts)
        });
        if still_ours {
            continue;
        }
        tracing::warn!(
            task = %cell.id,
            "this instance's lease expired and task {} was rescued by another instance; its attempt here is stopped and its result will not be recorded",
            cell.id
        );
        core.bus.publish(|| crate::events::TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind: EventKind::Lost,
            status: TaskStatus::Running,
            attempt: cell.lock().attempts.saturating_sub(1),
            at: SystemTime::now(),
        });
        let abort = {
            let mut state = cell.lock();
            state.written = None;
            state.abort.take()
        };
        if let Some(abort) = abort {
            abort.abort();
        }
        core.follow(&cell);
        match row {
            Some(task) => {
                core.transition(&cell, Transition::Observe(Box::new(task.clone())));
            }
            None => {
                core.transition(&cell, Transition::Interrupt);
            }
        }
    }
}

/// Rescues the RUNNING tasks of instances whose lease expired, and of
/// owners that hold no lease at all (forgotten while they still owned a
/// task; `Store::expired_instances` lists both): each is requeued or
/// interrupted as its task says (`lifecycle::next`), with one event on
/// this manager's bus, fenced on its owner and attempt; an instance with
/// nothing left is retired, unless it renewed its lease meanwhile.
pub(crate) async fn rescue(core: &Arc<Core>) {
    let Some(durable) = &core.durable else {
        return;
    };
    let expired = match durable.store.expired_instances().await {
        Ok(expired) => expired,
        Err(error) => {
            durable.failed(core, None, &error);
            return;
        }
    };
    let Ok(registry) = Registry::global() else {
        return;
    };
    let mut requeued = false;
    for instance in expired {
        // This instance's own rows, should it have been forgotten, are its
        // own to sort out: its heartbeat (which came first) registered it
        // again, and `lost_lease` looks at what it runs.
        if instance == durable.instance.id {
            continue;
        }
        let orphans = match durable.store.orphans(&instance).await {
            Ok(orphans) => orphans,
            Err(error) => {
                durable.failed(core, None, &error);
                return;
            }
        };
        let mut left = 0;
        for row in orphans {
            let task = match row {
                Ok(task) => task,
                Err(corrupt) => {
                    core.report_corrupt(std::slice::from_ref(&corrupt));
                    left += 1;
                    continue;
                }
            };
            let Some(entry) = registry.get(&task.record.name) else {
                durable.unknown_task(&task.record.name);
                left += 1;
                continue;
            };
            let record = &task.record;
            let policy = entry.defaults();
            let Some(to) = lifecycle::next(
                TaskStatus::Running,
                &Transition::Orphaned,
                record.attempts,
                policy,
            ) else {
                continue;
            };
            let now = SystemTime::now();
            let mut state = TaskState::pending(now);
            state.attempts = record.attempts;
            // Its first attempt's start stands, whatever happens next.
            state.started_at = record.started_at;
            if to == TaskStatus::Interrupted {
                state.status = TaskStatus::Interrupted;
                state.finished_at = Some(now);
                state.last_error = Some(TaskError::new(
                    ErrorKind::Interrupted,
                    "the instance running it is gone",
                ));
            }
            let change = Change {
                id: record.id,
                expect: Expect::Status {
                    status: TaskStatus::Running,
                    attempts: record.attempts,
                    owner: Some(instance.clone()),
                },
                state,
            };
            match durable.store.apply(vec![change]).await {
                Ok(applied) if applied.first() == Some(&true) => {
                    let kind = match to {
                        TaskStatus::Pending => EventKind::Requeued,
                        _ => EventKind::Interrupted,
                    };
                    requeued |= to == TaskStatus::Pending;
                    core.publish_stored(&task, kind, to);
                }
                Ok(_) => {}
                Err(error) => {
                    durable.failed(core, None, &error);
                    left += 1;
                }
            }
        }
        // Forgotten only while still expired: one that came back meanwhile
        // keeps its lease (and learns of its rescued tasks when it writes).
        if left == 0
            && let Err(error) = durable.store.retire_expired(&instance).await
        {
            durable.failed(core, None, &error);
        }
    }
    if requeued {
        core.scheduler.claimer().notify_one();
    }
}

/// Brings views of tasks that run elsewhere up to date, for the handles
/// here that await them.
async fn follow(core: &Arc<Core>, durable: &Durable, all: bool) {
    // Alone on the store, every task enqueued here runs here: nothing to
    // follow, and no need to look through the index for it.
    if !durable.shared.load(Ordering::Acquire) && core.index.mirrors() == 0 {
        return;
    }
    let followed = core.index.followed(all);
    for chunk in followed.chunks(MAX_FOLLOWED) {
        follow_some(core, durable, chunk).await;
    }
}

async fn follow_some(core: &Arc<Core>, durable: &Durable, followed: &[SharedCell]) {
    let ids: Vec<TaskId> = followed.iter().map(|cell| cell.id).collect();
    let rows = match durable.store.get_many(&ids).await {
        Ok(rows) => rows,
        Err(error) => {
            durable.failed(core, None, &error);
            return;
        }
    };
    for cell in followed {
        // A task of this instance that left PENDING here since it was
        // picked to follow: this instance claimed it (and may have run it
        // to its end already, the row then unowned), or ended it itself.
        // The row is its own writing: following it would count the task
        // as another instance's.
        if !cell.is_mirror() && cell.status() != TaskStatus::Pending {
            continue;
        }
        let row = rows.iter().find_map(|row| match row {
            Ok(task) if task.record.id == cell.id => Some(task),
            _ => None,
        });
        match row {
            // Still waiting for any instance: nothing to follow yet.
            Some(task) if task.record.status == TaskStatus::Pending && !cell.is_mirror() => {}
            // Claimed by this instance a moment ago: the claimer runs it.
            Some(task) if task.owner.as_deref() == Some(durable.instance_id()) => {}
            Some(task) => {
                if !cell.is_mirror() {
                    core.follow(cell);
                }
                core.transition(cell, Transition::Observe(Box::new(task.clone())));
                if cell.status().is_finished() {
                    cell.key_released();
                }
            }
            None => {
                core.follow(cell);
                core.transition(cell, Transition::Interrupt);
            }
        }
    }
}

/// This host's name, for people reading the store.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Runs `future` to completion on this thread. For a store call from a
/// synchronous enqueue: the SQLite store's futures complete from its own
/// writer thread, so parking here cannot starve them.
///
/// The future runs outside tokio's cooperative budget: an enqueue is often
/// called from inside a tokio task, whose budget the store's answer channel
/// would otherwise spend; once spent (after some hundred keyed enqueues
/// without an `.await`), every poll says "not yet" and wakes at once, and
/// this loop would spin for good, since the task never yields to renew it.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(tokio::task::coop::unconstrained(future));
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// Lets the tasks noted by [`Durable::may_rest`] leave memory: each one
/// still PENDING, due beyond the horizon, written to the store as it is
/// now, and held by no handle (a handle follows its cell) leaves the live
/// index; the claimer makes a new cell from its row when it is due. Those
/// not written yet, or still held, are looked at again next time.
fn rest_watched(core: &Arc<Core>, durable: &Durable) {
    let watched = std::mem::take(&mut *durable.resting.lock().unwrap_or_else(|p| p.into_inner()));
    if watched.is_empty() {
        return;
    }
    let far = Stamp::from(SystemTime::now() + durable.settings.horizon);
    let mut again = Vec::new();
    for weak in watched {
        let Some(cell) = weak.upgrade() else {
            continue;
        };
        let state = cell.lock();
        if state.status != TaskStatus::Pending
            || cell.is_admitted()
            || state.run_at <= far
            || cell.is_mirror()
        {
            continue;
        }
        let written = state.written
            == Some(Written {
                status: TaskStatus::Pending,
                attempts: state.attempts,
            });
        let held = state.handles > 0 || cell.is_admitting();
        drop(state);
        if written && !held && !durable.is_lost() {
            core.index.rest(&cell);
        } else {
            again.push(weak);
        }
    }
    if !again.is_empty() {
        durable
            .resting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(again);
    }
}
