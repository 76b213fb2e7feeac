//! The state every part of a manager shares: the live index, the queue, the
//! executors, the task store, the event bus, and the one function that
//! changes a task's status.
//!
//! [`Core::transition`] is the single writer of lifecycle state. It consults
//! [`lifecycle::next`], updates the record, moves the counts, gives back the
//! task's queue and executor slots when it leaves RUNNING, publishes the event
//! while still holding the record's lock (so one task's events are in order),
//! queues the change for the task store, and wakes the task's handles when
//! it finishes. Executors, the claimer and the keeper only call it; no other
//! code assigns a status.
//!
//! Without a task store the queue is in memory and a task is admitted from
//! it. With one, the store's table is the queue: an enqueue writes a row, and
//! the claimer (see [`durable`](crate::durable)) claims ready rows for the
//! slots that are free, marking them RUNNING in the store before a body
//! starts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use taskflow_worker::log::LogSink;
use taskflow_worker::registry::TaskEntry;
use taskflow_worker::{Executor, LogRecord, Resources, Tags, TaskError, TaskId};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::durable::Durable;
use crate::error::Error;
use crate::events::{Bus, EventKind, TaskEvent};
#[cfg(unix)]
use crate::executor::ProcessExecutor;
use crate::executor::{AsyncExecutor, SyncExecutor};
use crate::index::LiveIndex;
use crate::lifecycle::{self, TaskStatus, Transition};
use crate::queue::{DEFAULT_QUEUE, Scheduler};
use crate::record::{
    Origin, Produced, RETRY_OF_TAG, SharedCell, Stamp, TaskArguments, TaskCell, TaskFilter,
    TaskRecord,
};
use crate::store::{Change, CorruptRow, Expect, Row, StoredTask, TaskState};

pub(crate) struct Core {
    /// Live and recently finished tasks of this instance.
    pub(crate) index: Arc<LiveIndex>,
    /// Admission: named queues, priorities, delays, slots.
    pub(crate) scheduler: Scheduler,
    /// The task store and what drives it, when the manager has one.
    pub(crate) durable: Option<Durable>,
    pub(crate) bus: Bus,
    pub(crate) resources: Resources,
    pub(crate) runtime: Handle,
    pub(crate) async_tasks: AsyncExecutor,
    pub(crate) sync_tasks: SyncExecutor,
    #[cfg(unix)]
    pub(crate) process_tasks: ProcessExecutor,
    closed: AtomicBool,
    /// Signalled whenever a task stops running after close.
    idle: Notify,
    /// Rows of the task store found corrupt and reported, by row key.
    reported_corrupt: Mutex<HashSet<i64>>,
    /// Claims of tasks whose keyed enqueue had not finished, by id: their
    /// attempt count and cancel request (see [`Core::defer_claim`]).
    deferred: Mutex<std::collections::HashMap<TaskId, (u32, bool)>>,
    /// Log lines kept per task.
    pub(crate) max_logs: usize,
    /// The dispatcher in-process attempts run under (see `crate::trace`).
    pub(crate) tee: crate::trace::TaskTee,
    /// Recurring tasks, and the ticker that fires them.
    pub(crate) schedules: crate::schedule::ticker::Schedules,
}

/// What a transition did.
pub(crate) struct Applied {
    pub(crate) status: TaskStatus,
    /// Zero-based attempt the transition belonged to.
    pub(crate) attempt: u32,
    /// After a failure with retries left: when the next attempt may start.
    pub(crate) retry_at: Option<SystemTime>,
}

/// The executors a manager runs, built before the core they belong to.
pub(crate) struct Executors {
    pub(crate) async_tasks: AsyncExecutor,
    pub(crate) sync_tasks: SyncExecutor,
    #[cfg(unix)]
    pub(crate) process_tasks: ProcessExecutor,
}

/// Per-call options of an enqueue.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    pub(crate) queue: Option<String>,
    pub(crate) priority: Option<i16>,
    pub(crate) run_at: Option<SystemTime>,
    /// The schedule tick enqueueing it (schedules without a task store).
    pub(crate) scheduled: Option<crate::schedule::Tick>,
}

/// What a core is built from.
pub(crate) struct Parts {
    pub(crate) runtime: Handle,
    pub(crate) resources: Resources,
    pub(crate) executors: Executors,
    pub(crate) bus: Bus,
    pub(crate) index: LiveIndex,
    pub(crate) scheduler: Scheduler,
    pub(crate) durable: Option<Durable>,
    pub(crate) max_logs: usize,
    pub(crate) tee: crate::trace::TaskTee,
}

impl Core {
    pub(crate) fn new(parts: Parts) -> Self {
        Core {
            index: Arc::new(parts.index),
            scheduler: parts.scheduler,
            durable: parts.durable,
            bus: parts.bus,
            resources: parts.resources,
            runtime: parts.runtime,
            async_tasks: parts.executors.async_tasks,
            sync_tasks: parts.executors.sync_tasks,
            #[cfg(unix)]
            process_tasks: parts.executors.process_tasks,
            closed: AtomicBool::new(false),
            idle: Notify::new(),
            reported_corrupt: Mutex::default(),
            deferred: Mutex::default(),
            max_logs: parts.max_logs,
            tee: parts.tee,
            schedules: Default::default(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Records a new PENDING task and queues it. With an idempotency key
    /// held by another task, returns that task instead.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        entry: &'static TaskEntry,
        args: Vec<u8>,
        tags: Tags,
        key: Option<String>,
        placement: Placement,
    ) -> Result<SharedCell, Error> {
        if self.is_closed() {
            return Err(Error::ShutDown);
        }
        // A process task's resources are built in each worker, not here.
        if entry.executor() != Executor::Process
            && let Some(missing) = self.resources.first_missing(entry.resources())
        {
            return Err(Error::MissingResource {
                task: entry.name(),
                resource: missing.type_name(),
            });
        }
        if entry.executor() == Executor::Process && cfg!(not(unix)) {
            return Err(Error::UnsupportedExecutor {
                task: entry.name(),
                executor: entry.executor().as_str(),
            });
        }
        let defaults = entry.defaults();
        let queue_name = placement
            .queue
            .as_deref()
            .or(defaults.queue)
            .unwrap_or(DEFAULT_QUEUE);
        if let Some(reason) = (queue_name != DEFAULT_QUEUE)
            .then(|| crate::queue::invalid_queue_name(queue_name))
            .flatten()
        {
            return Err(Error::InvalidQueue {
                queue: queue_name.to_owned(),
                reason,
            });
        }
        let queue = self.scheduler.queue(queue_name);
        let priority = placement.priority.unwrap_or(defaults.priority);
        if !queue.reserve_pending() {
            return Err(Error::QueueFull {
                queue: queue.name().to_string(),
                max_size: queue.config().max_size.unwrap_or(0),
            });
        }
        let mut origin = Origin::new(self.durable.is_some(), placement.run_at);
        origin.scheduled = placement.scheduled;
        let cell = Arc::new(TaskCell::new(
            entry,
            args.into_boxed_slice(),
            tags,
            key.map(Into::into),
            (queue, priority),
            origin,
        ));
        if cell.key.is_some() {
            match self.claim_key(&cell) {
                Ok(None) => {}
                Ok(Some(holder)) => {
                    cell.queue.unreserve_pending();
                    holder.add_handle();
                    return Ok(holder);
                }
                Err(error) => {
                    cell.queue.unreserve_pending();
                    return Err(error);
                }
            }
        }
        self.admit(cell.clone(), EventKind::Enqueued, placement.run_at);
        if cell.is_admitting() {
            self.admitted(&cell);
        }
        if let (Some(durable), Some(run_at)) = (&self.durable, placement.run_at) {
            durable.may_rest(self, &cell, run_at);
        }
        Ok(cell)
    }

    /// A keyed enqueue is done: a claim of its row made meanwhile (and
    /// deferred) runs now.
    fn admitted(self: &Arc<Self>, cell: &SharedCell) {
        let deferred = {
            let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            cell.set_admitting(false);
            deferred.remove(&cell.id)
        };
        if let Some((attempts, cancel)) = deferred
            && let Some(durable) = &self.durable
        {
            crate::durable::run_claimed(self, durable, cell.clone(), attempts, cancel);
        }
    }

    /// A claim of a task whose enqueue is still under way waits for it
    /// ([`admitted`](Self::admitted) runs it); whether it was deferred.
    pub(crate) fn defer_claim(&self, cell: &SharedCell, attempts: u32, cancel: bool) -> bool {
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if !cell.is_admitting() {
            return false;
        }
        deferred.insert(cell.id, (attempts, cancel));
        true
    }

    /// Makes `cell` the holder of its key, or returns the task that holds it.
    /// With a task store the store decides, across processes and restarts,
    /// through its unique index (the enqueue waits for it); without one,
    /// this process's key map does.
    fn claim_key(self: &Arc<Self>, cell: &SharedCell) -> Result<Option<SharedCell>, Error> {
        let Some(durable) = &self.durable else {
            return Ok(self.index.hold_key(cell));
        };
        if let Some(holder) = self.index.key_holder(cell) {
            return Ok(Some(holder));
        }
        // The claimer may take the row the moment it is committed: it must
        // find this very cell (not make a second one), and wait for the
        // enqueue to finish before running it.
        cell.set_admitting(true);
        self.index.insert(cell.clone());
        let inserted = durable.insert_keyed(cell);
        if !matches!(inserted, Ok(None)) {
            self.index.remove_unborn(cell);
            cell.set_admitting(false);
        }
        match inserted? {
            None => {
                self.index.set_key_holder(cell);
                // Its row is in, PENDING: the claimer takes it now rather
                // than at its next poll (the store's own notifications do
                // not wake the instance that sent them).
                self.scheduler.claimer().notify_one();
                Ok(None)
            }
            Some(Ok(row)) => Ok(Some(match self.index.get(&row.record.id) {
                Some(local) => local,
                None => self.mirror(cell.entry, row),
            })),
            Some(Err(corrupt)) => {
                self.report_corrupt(std::slice::from_ref(&corrupt));
                Err(Error::CorruptRow {
                    id: corrupt.id.unwrap_or(cell.id),
                    reason: corrupt.reason,
                })
            }
        }
    }

    /// Records a PENDING cell, announces it, and queues it: in memory, or
    /// as a row for the claimer (unless a keyed insert wrote it already).
    /// `run_at`: when it may start, if not at once.
    fn admit(self: &Arc<Self>, cell: SharedCell, kind: EventKind, run_at: Option<SystemTime>) {
        if !cell.is_admitting() {
            self.index.insert(cell.clone());
        }
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind,
            status: TaskStatus::Pending,
            attempt: 0,
            at: cell.created_at.get(),
        });
        match &self.durable {
            Some(durable) => {
                if !cell.is_stored() {
                    durable.write(cell.clone());
                }
                if durable.is_lost() {
                    self.scheduler.submit_at(self, cell, run_at);
                }
            }
            None => self.scheduler.submit_at(self, cell, run_at),
        }
    }

    /// Hands an admitted task to its executor.
    pub(crate) fn run(self: &Arc<Self>, cell: SharedCell) {
        match cell.entry.executor() {
            Executor::Async => self.async_tasks.submit(self, cell),
            #[cfg(unix)]
            Executor::Process => self.process_tasks.submit(self, cell),
            _ => self.sync_tasks.submit(self, cell),
        }
    }

    /// The cell for a task the claimer took from the store: this instance's
    /// own, or a new one for a task enqueued elsewhere (or before a
    /// restart). `None` for a task this binary does not register.
    pub(crate) fn claimed_cell(self: &Arc<Self>, task: &StoredTask) -> Option<SharedCell> {
        let record = &task.record;
        if let Some(cell) = self.index.get(&record.id) {
            return Some(self.own(cell, task));
        }
        let entry = taskflow_worker::Registry::global()
            .ok()?
            .get(&record.name)?;
        let origin = Origin {
            id: record.id,
            created_at: record.created_at.into(),
            run_at: record.run_at.into(),
            attempts: record.attempts.saturating_sub(1),
            status: TaskStatus::Pending,
            handles: 0,
            durable: true,
            stored: true,
            mirror: false,
            scheduled: record.scheduled.clone(),
        };
        let cell = Arc::new(TaskCell::new(
            entry,
            task.args.clone().into_boxed_slice(),
            record.tags.clone(),
            task.idempotency_key.clone().map(Into::into),
            (self.scheduler.queue(&record.queue), record.priority),
            origin,
        ));
        cell.set_foreign();
        let present = self.index.insert_new(cell.clone());
        if !Arc::ptr_eq(&present, &cell) {
            // A keyed enqueue here made its view of the task meanwhile.
            return Some(self.own(present, task));
        }
        cell.queue.reserve_pending_unchecked();
        if cell.key.is_some() {
            self.index.set_key_holder(&cell);
        }
        Some(cell)
    }

    /// Makes a cell of the index this instance's own to run: a view of
    /// the task (a mirror) no longer, since this instance claimed it.
    fn own(self: &Arc<Self>, cell: SharedCell, task: &StoredTask) -> SharedCell {
        if cell.is_mirror() {
            // The view may be stale: last seen RUNNING on another instance,
            // which then died and had the task requeued. The claim found it
            // PENDING, and starts it from there.
            if cell.status() != TaskStatus::Pending {
                let mut requeued = task.clone();
                requeued.record.status = TaskStatus::Pending;
                requeued.record.attempts = task.record.attempts.saturating_sub(1);
                requeued.record.finished_at = None;
                self.transition(&cell, Transition::Observe(Box::new(requeued)));
            }
            cell.set_mirror(false);
            self.index.recount(&cell);
        }
        cell
    }

    /// Makes a cell of this instance a view of the task, which another
    /// instance runs (or decided) now: it no longer counts here, not even
    /// as running, so a shutdown does not wait for it.
    pub(crate) fn follow(&self, cell: &TaskCell) {
        let first = self.index.mirrors() == 0;
        let was = self.index.follow(cell);
        if was == Some(TaskStatus::Running) && self.is_closed() {
            self.idle.notify_waiters();
        }
        if first && was.is_some() {
            // As for a new view (see `mirror`).
            self.scheduler.claimer().notify_one();
        }
    }

    /// A handle's view of a task that another instance (or an earlier run)
    /// owns, followed through the task store until it finishes.
    fn mirror(self: &Arc<Self>, entry: &'static TaskEntry, row: StoredTask) -> SharedCell {
        let record = &row.record;
        let origin = Origin {
            id: record.id,
            created_at: record.created_at.into(),
            run_at: record.run_at.into(),
            attempts: record.attempts,
            status: TaskStatus::Pending,
            handles: 0,
            durable: true,
            stored: true,
            mirror: true,
            scheduled: record.scheduled.clone(),
        };
        // The key too: this instance may yet claim and run the task, and
        // then keeps its output for every other handle, as its owner would.
        let cell = Arc::new(TaskCell::new(
            entry,
            row.args.clone().into_boxed_slice(),
            record.tags.clone(),
            row.idempotency_key.clone().map(Into::into),
            (self.scheduler.queue(&record.queue), record.priority),
            origin,
        ));
        // A row this instance has just claimed (its claim and this
        // enqueue's look-up crossed): the claimer runs it on this cell, so
        // the cell stays PENDING until then rather than take the claim's
        // RUNNING for an attempt already started.
        let claimed_here = self.durable.as_ref().is_some_and(|durable| {
            row.record.status == TaskStatus::Running
                && row.owner.as_deref() == Some(durable.instance_id())
        });
        if !claimed_here {
            self.transition(&cell, Transition::Observe(Box::new(row)));
        }
        if cell.status().is_finished() {
            return cell;
        }
        let first = self.index.mirrors() == 0;
        let cell = self.index.insert_new(cell);
        if first {
            // The claimer, which may be asleep for a poll interval, follows
            // views once per heartbeat from now on.
            self.scheduler.claimer().notify_one();
        }
        cell
    }

    /// A snapshot of a task: from memory while it is live here, else from
    /// the task store.
    pub(crate) async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, Error> {
        if let Some(cell) = self.index.get(&id)
            && !cell.is_mirror()
        {
            return Ok(Some(cell.snapshot()));
        }
        match &self.durable {
            Some(durable) => {
                let row = durable.store.get(id).await.map_err(Error::from_store)?;
                Ok(self.readable(id, row)?.map(|task| task.record))
            }
            None => Ok(self.index.get(&id).map(|cell| cell.snapshot())),
        }
    }

    /// The task's stored arguments: from memory while its cell is here
    /// (and not a mirror), else from the task store. Read only on request:
    /// enqueue and completion never come here.
    pub(crate) async fn arguments(&self, id: TaskId) -> Result<Option<TaskArguments>, Error> {
        let of_cell =
            |cell: &TaskCell| TaskArguments::new(cell.entry.name().to_owned(), cell.args.to_vec());
        if let Some(cell) = self.index.get(&id)
            && !cell.is_mirror()
        {
            return Ok(Some(of_cell(&cell)));
        }
        match &self.durable {
            Some(durable) => {
                let row = durable.store.get(id).await.map_err(Error::from_store)?;
                Ok(self
                    .readable(id, row)?
                    .map(|task| TaskArguments::new(task.record.name, task.args)))
            }
            None => Ok(self.index.get(&id).map(|cell| of_cell(&cell))),
        }
    }

    /// A stored row, or the error for a corrupt one (reported once).
    pub(crate) fn readable(
        &self,
        id: TaskId,
        row: Option<Row>,
    ) -> Result<Option<StoredTask>, Error> {
        match row {
            None => Ok(None),
            Some(Ok(task)) => Ok(Some(task)),
            Some(Err(corrupt)) => {
                self.report_corrupt(std::slice::from_ref(&corrupt));
                Err(Error::CorruptRow {
                    id,
                    reason: corrupt.reason,
                })
            }
        }
    }

    /// Records matching `filter`, newest first: with a store, its rows
    /// (every instance's), with this instance's live state where fresher.
    pub(crate) async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, Error> {
        let Some(durable) = &self.durable else {
            return Ok(self.index.list(filter));
        };
        // Tasks of this instance whose rows do not say their status yet (not
        // written, or changed since), taken before the store is read: a row
        // committed during the read is then in one of the two, where
        // looking afterwards would miss it in both.
        let unwritten = self.index.list_unwritten(filter);
        let listed = durable
            .store
            .list(filter)
            .await
            .map_err(Error::from_store)?;
        self.report_corrupt(&listed.corrupt);
        // A task's live state here is fresher than its row; one that no
        // longer matches (a RUNNING row of a task finished here) is left out.
        let mut records: Vec<TaskRecord> = listed
            .tasks
            .into_iter()
            .map(|task| match self.index.get(&task.record.id) {
                Some(cell) if !cell.is_mirror() => cell.snapshot(),
                _ => task.record,
            })
            .filter(|record| filter.matches(record))
            .collect();
        let seen: HashSet<TaskId> = records.iter().map(|record| record.id).collect();
        records.extend(
            unwritten
                .into_iter()
                .filter(|record| !seen.contains(&record.id)),
        );
        crate::index::sort_newest_first(&mut records);
        if let Some(limit) = filter.limit {
            records.truncate(limit);
        }
        Ok(records)
    }

    /// Enqueues a FAILED, INTERRUPTED or CANCELLED task again as a new task
    /// with its arguments, tags, queue and priority.
    pub(crate) async fn retry(self: &Arc<Self>, id: TaskId) -> Result<TaskId, Error> {
        let (name, status, args, tags, queue, priority) = match self.index.get(&id) {
            Some(cell) if !cell.is_mirror() => (
                cell.entry.name().to_owned(),
                cell.status(),
                cell.args.to_vec(),
                cell.tags.clone(),
                cell.queue.name().to_string(),
                cell.priority,
            ),
            _ => {
                let row = match &self.durable {
                    Some(durable) => {
                        let row = durable.store.get(id).await.map_err(Error::from_store)?;
                        self.readable(id, row)?
                    }
                    None => None,
                };
                let row = row.ok_or(Error::NotFound(id))?;
                let record = row.record;
                (
                    record.name,
                    record.status,
                    row.args,
                    record.tags,
                    record.queue,
                    record.priority,
                )
            }
        };
        if !matches!(
            status,
            TaskStatus::Failed | TaskStatus::Interrupted | TaskStatus::Cancelled
        ) {
            return Err(Error::NotRetryable { id, status });
        }
        let entry = taskflow_worker::Registry::global()?
            .get(&name)
            .ok_or(Error::UnknownTask(name))?;
        // The copy records its origin, so a caller can tell that a task was
        // already retried (the admin's retry-all retries each task once).
        let tags = Tags::from_pairs(
            tags.iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .chain([(RETRY_OF_TAG.to_owned(), id.to_string())]),
        );
        let placement = Placement {
            queue: Some(queue),
            priority: Some(priority),
            ..Placement::default()
        };
        Ok(self.enqueue(entry, args, tags, None, placement)?.id)
    }

    /// Reports on the bus that the task store could not be written. The
    /// event names the first task whose change was not written, when there
    /// is one; otherwise its id is nil and its name empty.
    pub(crate) fn report_store_failure(&self, cell: Option<&TaskCell>, message: &str) {
        let (id, name, status) = match cell {
            Some(cell) => (cell.id, cell.entry.name(), cell.status()),
            None => (TaskId::from_bytes([0; 16]), "", TaskStatus::Pending),
        };
        self.bus.publish(|| TaskEvent {
            id,
            name,
            kind: EventKind::StoreFailed(message.to_owned()),
            status,
            attempt: 0,
            at: SystemTime::now(),
        });
    }

    /// Reports each corrupt row not reported before: a log line and a
    /// [`EventKind::CorruptRow`] event.
    pub(crate) fn report_corrupt(&self, rows: &[CorruptRow]) {
        if rows.is_empty() {
            return;
        }
        let mut reported = self
            .reported_corrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for row in rows {
            if !reported.insert(row.key) {
                continue;
            }
            tracing::error!("{row}; it is left in place and skipped");
            self.bus.publish(|| TaskEvent {
                id: row.id.unwrap_or(TaskId::from_bytes([0; 16])),
                name: "",
                kind: EventKind::CorruptRow(row.to_string()),
                status: TaskStatus::Pending,
                attempt: 0,
                at: SystemTime::now(),
            });
        }
    }

    /// Whether a task interrupted from `from` runs again at the next start
    /// (its row is released to PENDING rather than marked INTERRUPTED).
    pub(crate) fn runs_again(&self, cell: &TaskCell, from: TaskStatus) -> bool {
        let Some(durable) = &self.durable else {
            return false;
        };
        match from {
            TaskStatus::Pending => durable.requeue_pending() || cell.entry.defaults().persist,
            TaskStatus::Running => cell.entry.defaults().requeue_on_interrupt,
            _ => false,
        }
    }

    /// Applies `transition` to `cell`; `None` when it does not apply in the
    /// task's current status (see [`lifecycle::next`]).
    pub(crate) fn transition(
        self: &Arc<Self>,
        cell: &SharedCell,
        transition: Transition,
    ) -> Option<Applied> {
        let now = SystemTime::now();
        // Once closed, nothing more is admitted: a start becomes an interrupt.
        let transition = match transition {
            Transition::Start if self.is_closed() => Transition::Interrupt,
            other => other,
        };
        let mut state = cell.lock();
        let from = state.status;
        let policy = cell.entry.defaults();
        let Some(to) = lifecycle::next(from, &transition, state.attempts, policy) else {
            // A task that finished before its admitted start gives back
            // its slots here.
            let release = state.status.is_finished() && cell.take_admitted();
            drop(state);
            if release {
                self.scheduler
                    .release(self, &cell.queue, cell.entry.executor());
            }
            return None;
        };
        let mut retry_at = None;
        let mut abort = None;
        let mut observed_finish = None;
        let kind = match transition {
            Transition::Start => {
                state.attempts += 1;
                state.started_at.get_or_insert_with(|| now.into());
                EventKind::Started
            }
            Transition::Succeed(output) => {
                state.set_last_error(None);
                if cell.key.is_some() || cell.is_foreign() {
                    // Every later handle to a keyed task reads it, here or
                    // in another process, and the handles of a task another
                    // instance enqueued are there: it goes to the store.
                    state.extra().output_bytes = encoded(cell.entry, &output);
                }
                if state.handles > 0 {
                    state.output = Some(output);
                }
                EventKind::Succeeded
            }
            Transition::Fail(error) if to == TaskStatus::Pending => {
                let delay = lifecycle::retry_delay(state.attempts, policy);
                let at = now + delay;
                state.run_at = at.into();
                retry_at = Some(at);
                let kind = EventKind::Retrying {
                    error: error.clone(),
                    delay,
                };
                state.set_last_error(Some(error));
                kind
            }
            Transition::Fail(error) => {
                let kind = EventKind::Failed(error.clone());
                state.set_last_error(Some(error));
                kind
            }
            Transition::Cancel => {
                abort = state.abort.take();
                EventKind::Cancelled
            }
            Transition::Interrupt | Transition::Orphaned => {
                if self.runs_again(cell, from) {
                    cell.release();
                }
                abort = state.abort.take();
                if to == TaskStatus::Pending {
                    state.run_at = now.into();
                    EventKind::Requeued
                } else {
                    EventKind::Interrupted
                }
            }
            Transition::Observe(row) => {
                let record = row.record;
                state.attempts = record.attempts;
                state.run_at = record.run_at.into();
                state.started_at = record.started_at.map(Stamp::from);
                state.set_last_error(record.last_error);
                if let Some(bytes) = row.output {
                    if cell.key.is_some() {
                        // Every handle to a keyed task reads its output,
                        // here too: kept, not taken by the first.
                        state.extra().output_bytes = Some(bytes.into());
                    } else {
                        state.output = Some(Produced::Encoded(bytes));
                    }
                }
                observed_finish = record.finished_at;
                EventKind::Observed
            }
        };
        state.status = to;
        if to.is_finished() && abort.is_none() {
            // A finished task's tokio task is done too; holding its handle
            // would keep its memory alive as long as the record.
            drop(state.abort.take());
        }
        let mut duration = None;
        if to.is_finished() {
            let finished_at = Stamp::from(observed_finish.unwrap_or(now));
            state.finished_at = Some(finished_at);
            if matches!(to, TaskStatus::Success | TaskStatus::Failed) {
                duration = state.started_at.map(|start| finished_at.since(start));
            }
        }
        let release = to != TaskStatus::Running && cell.take_admitted();
        // A view of a task another instance runs counts nowhere here: not
        // in the metrics, and not as running (a shutdown waits only for
        // what runs here).
        if !cell.is_mirror() {
            self.index.count_transition(cell, from, to, duration);
        }
        let attempt = state.attempts.saturating_sub(1);
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind,
            status: to,
            attempt,
            at: now,
        });
        // A keyed task's end that releases its key is seen by handles only
        // once the store has the release, so a process that learns of the
        // end and enqueues the same key gets a new task, never this one.
        let durable_write = !cell.is_mirror() && self.durable.is_some();
        if durable_write
            && cell.key.is_some()
            && matches!(
                to,
                TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Interrupted
            )
        {
            cell.hold_for_key_release();
        }
        let waiters = match to.is_finished() && !cell.is_releasing_key() {
            true => std::mem::take(&mut state.waiters),
            false => Vec::new(),
        };
        drop(state);

        match &self.durable {
            // The claim wrote the start; every other change goes to the store.
            Some(durable) if durable_write && to != TaskStatus::Running => {
                durable.write(cell.clone())
            }
            Some(_) => {}
            // Without a store, a finished record may leave memory at once;
            // with one, only after its final state is written.
            None if to.is_finished() => self.index.evict_when_full(cell),
            None => {}
        }

        waiters.into_iter().for_each(std::task::Waker::wake);
        if let (Some(durable), Some(at), true) = (&self.durable, retry_at, durable_write) {
            durable.may_rest(self, cell, at);
        }
        if let Some(abort) = abort {
            abort.abort();
        }
        if release {
            self.scheduler
                .release(self, &cell.queue, cell.entry.executor());
        }
        if from == TaskStatus::Running && self.is_closed() {
            self.idle.notify_waiters();
        }
        Some(Applied {
            status: to,
            attempt,
            retry_at,
        })
    }

    /// Admits the next attempt of `cell`: its zero-based number, or `None`
    /// when the task may not start (cancelled, interrupted, shut down).
    pub(crate) fn start(self: &Arc<Self>, cell: &SharedCell) -> Option<u32> {
        self.transition(cell, Transition::Start)
            .filter(|applied| applied.status == TaskStatus::Running)
            .map(|applied| applied.attempt)
    }

    /// Records an attempt's result. A failure with retries left waits for
    /// its next attempt as a PENDING task with a later `run_at`: in the
    /// in-memory queue's timer, or in the store (where a restart finds it).
    pub(crate) fn finish(self: &Arc<Self>, cell: &SharedCell, result: Result<Produced, TaskError>) {
        let transition = match result {
            Ok(output) => Transition::Succeed(output),
            Err(error) => Transition::Fail(error),
        };
        let retry = self
            .transition(cell, transition)
            .and_then(|applied| applied.retry_at);
        let in_memory = self
            .durable
            .as_ref()
            .is_none_or(|durable| durable.is_lost());
        if retry.is_some() && in_memory {
            self.scheduler.submit(self, cell.clone());
        }
    }

    /// Appends a log record to a running task: on its record (the latest
    /// `max_logs` lines, the others counted), on the bus, and in the store.
    pub(crate) fn log(&self, cell: &TaskCell, record: LogRecord) {
        let mut state = cell.lock();
        if state.status.is_finished() {
            return;
        }
        let max = self.max_logs;
        let extra = state.extra();
        if extra.logs.len() >= max && (extra.logs.pop_front().is_some() || max == 0) {
            extra.logs_dropped = extra.logs_dropped.saturating_add(1);
        }
        let status = state.status;
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind: EventKind::Log(record.clone()),
            status,
            attempt: record.attempt,
            at: record.at,
        });
        if let Some(durable) = &self.durable {
            durable.log(cell.id, record.clone());
        }
        if max > 0 {
            state.extra().logs.push_back(record);
        }
    }

    /// Cancels task `id`, wherever it is: see [`TaskManager::cancel`](crate::TaskManager::cancel).
    pub(crate) async fn cancel(self: &Arc<Self>, id: TaskId) -> Result<(), Error> {
        let local = self.index.get(&id).filter(|cell| !cell.is_mirror());
        let Some(durable) = &self.durable else {
            let cell = local.ok_or(Error::NotFound(id))?;
            return self.cancel_here(&cell);
        };
        // A few rounds: the row may change hands between a read and a write.
        for _ in 0..8 {
            if let Some(cell) = &local {
                let (status, written, before) = {
                    let state = cell.lock();
                    let before = kept(
                        state.run_at.get(),
                        state.started_at.map(Stamp::get),
                        state.last_error().cloned(),
                    );
                    (state.status, state.written, before)
                };
                match (status, written) {
                    // Running here, or not yet written: ours to change.
                    (TaskStatus::Running, _) | (TaskStatus::Pending, None) => {
                        self.cancel_here(cell)?;
                        return self.key_released(cell).await;
                    }
                    (TaskStatus::Pending, Some(written)) => {
                        // Another instance may claim the row any moment:
                        // the store decides, then this view follows.
                        let change = cancelled(id, written.status, written.attempts, before);
                        if durable.apply_now(cell, change).await? {
                            return self.cancel_here(cell);
                        }
                    }
                    (status, _) => return Err(Error::AlreadyFinished { id, status }),
                }
            }
            let row = durable.store.get(id).await.map_err(Error::from_store)?;
            let Some(task) = self.readable(id, row)? else {
                return Err(Error::NotFound(id));
            };
            let record = &task.record;
            match record.status {
                TaskStatus::Pending => {
                    let before = kept(record.run_at, record.started_at, record.last_error.clone());
                    let change = cancelled(id, TaskStatus::Pending, record.attempts, before);
                    let applied = durable
                        .store
                        .apply(vec![change])
                        .await
                        .map_err(Error::from_store)?;
                    if applied.first() == Some(&true) {
                        self.publish_stored(&task, EventKind::Cancelled, TaskStatus::Cancelled);
                        return Ok(());
                    }
                }
                TaskStatus::Running if task.owner.as_deref() != Some(durable.instance_id()) => {
                    if durable
                        .store
                        .request_cancel(id)
                        .await
                        .map_err(Error::from_store)?
                    {
                        return Ok(());
                    }
                }
                TaskStatus::Running => {
                    // Ours, claimed a moment ago: its cell is about to run.
                    // A cell of this instance's own is cancelled once the
                    // claim reaches it, as a claimed task, so the store (and
                    // the key) says CANCELLED before this returns.
                    let claim_landed = || {
                        local.as_ref().is_none_or(|cell| {
                            cell.lock()
                                .written
                                .is_none_or(|w| w.status != TaskStatus::Pending)
                        })
                    };
                    let patience = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
                    while !claim_landed() && tokio::time::Instant::now() < patience {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    if local.is_some() && claim_landed() {
                        continue;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                status => return Err(Error::AlreadyFinished { id, status }),
            }
            if let Some(cell) = self.index.get(&id).filter(|cell| !cell.is_mirror()) {
                // Claimed here meanwhile: cancelled here, and its key freed
                // in the store before `cancel` returns, as above.
                self.cancel_here(&cell)?;
                return self.key_released(&cell).await;
            }
        }
        Err(Error::Store(format!(
            "task {id} kept changing hands while being cancelled; try again"
        )))
    }

    /// Cancels a task this instance holds.
    fn cancel_here(self: &Arc<Self>, cell: &SharedCell) -> Result<(), Error> {
        match self.transition(cell, Transition::Cancel) {
            Some(_) => Ok(()),
            None => Err(Error::AlreadyFinished {
                id: cell.id,
                status: cell.status(),
            }),
        }
    }

    /// After a cancel here: a keyed task's key is free in the store by the
    /// time `cancel` returns, so the caller's next enqueue of that key (in
    /// any process) gets a new task.
    async fn key_released(&self, cell: &SharedCell) -> Result<(), Error> {
        match &self.durable {
            Some(durable) if cell.key.is_some() => durable.flush().await,
            _ => Ok(()),
        }
    }

    /// Publishes the event of a change made to a stored task with no cell
    /// here (cancelled from here, rescued from a dead instance).
    pub(crate) fn publish_stored(&self, task: &StoredTask, kind: EventKind, status: TaskStatus) {
        let name = taskflow_worker::Registry::global()
            .ok()
            .and_then(|registry| registry.get(&task.record.name))
            .map_or("", |entry| entry.name());
        self.bus.publish(|| TaskEvent {
            id: task.record.id,
            name,
            kind,
            status,
            attempt: task.record.attempts.saturating_sub(1),
            at: SystemTime::now(),
        });
    }

    /// Stops admissions. Returns `false` if already closed.
    pub(crate) fn close(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        if first {
            self.scheduler.stop();
            self.sync_tasks.close();
            #[cfg(unix)]
            self.process_tasks.close();
            if let Some(durable) = &self.durable {
                durable.close();
            }
            self.schedules.wake();
        }
        first
    }

    /// Interrupts every unfinished task this instance holds (only PENDING
    /// ones with `pending_only`); returns how many.
    pub(crate) fn interrupt_unfinished(self: &Arc<Self>, pending_only: bool) -> usize {
        self.index
            .unfinished()
            .into_iter()
            .filter(|cell| !cell.is_mirror())
            .filter(|cell| !pending_only || cell.status() == TaskStatus::Pending)
            .filter(|cell| self.transition(cell, Transition::Interrupt).is_some())
            .count()
    }

    fn running_on(&self, executors: &[Executor]) -> u64 {
        executors
            .iter()
            .map(|&executor| self.index.running(executor))
            .sum()
    }

    /// Waits until no task of `executors` is RUNNING or `deadline` passes;
    /// `true` if none is.
    pub(crate) async fn wait_idle(&self, executors: &[Executor], deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running_on(executors) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running_on(executors) == 0;
            }
        }
    }
}

/// What a cancel keeps of a task: when it was due, its first start, its
/// last failure.
fn kept(
    run_at: SystemTime,
    started_at: Option<SystemTime>,
    last_error: Option<taskflow_worker::TaskError>,
) -> TaskState {
    let mut state = TaskState::pending(run_at);
    state.started_at = started_at;
    state.last_error = last_error;
    state
}

/// A compare-and-set that cancels a task in `status` with `attempts`.
/// The change that cancels a task whose row is `status` after `attempts`
/// attempts, keeping what `before` says of it: when it was due, its first
/// start, its last failure.
fn cancelled(id: TaskId, status: TaskStatus, attempts: u32, before: TaskState) -> Change {
    let mut state = before;
    state.status = TaskStatus::Cancelled;
    state.attempts = attempts;
    state.finished_at = Some(SystemTime::now());
    state.owner = None;
    Change {
        id,
        expect: Expect::Status {
            status,
            attempts,
            owner: None,
        },
        state,
    }
}

/// The encoding of a keyed task's output, or `None` (logged) if it has none.
fn encoded(entry: &TaskEntry, output: &Produced) -> Option<Arc<[u8]>> {
    match output {
        Produced::Encoded(bytes) => Some(bytes.as_slice().into()),
        Produced::Value(value) => match entry.encode_output(value.as_ref()) {
            Ok(bytes) => Some(bytes.into()),
            Err(error) => {
                tracing::warn!(
                    task = entry.name(),
                    "cannot encode the output for the task store: {error}"
                );
                None
            }
        },
    }
}

/// In-process tasks log through their context straight onto their record.
impl LogSink for Core {
    fn emit(&self, id: TaskId, record: LogRecord) {
        if let Some(cell) = self.index.get(&id) {
            self.log(&cell, record);
        }
    }
}
