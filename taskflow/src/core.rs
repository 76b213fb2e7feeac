//! The state every part of a manager shares: records, the event bus, the
//! executors and the one function that changes a task's status.
//!
//! [`Core::transition`] is the single writer of lifecycle state. It consults
//! [`lifecycle::next`], updates the record, moves the status counts, publishes
//! the event while still holding the record's lock (so one task's events are
//! in order), and wakes the task's handles when it finishes. Executors only
//! call it; no other code assigns a status.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use taskflow_worker::log::LogSink;
use taskflow_worker::registry::TaskEntry;
use taskflow_worker::{Executor, LogRecord, Resources, Tags, TaskError, TaskId};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::events::{Bus, EventKind, TaskEvent};
#[cfg(unix)]
use crate::executor::ProcessExecutor;
use crate::executor::{AsyncExecutor, SyncExecutor};
use crate::lifecycle::{self, TaskStatus, Transition};
use crate::record::{MAX_LOGS, Origin, Produced, SharedCell, TaskCell, TaskFilter, TaskRecord};
use crate::store::{
    Claimed, CorruptRow, MemoryStore, Recovered, SqliteStore, StoredRow, sort_newest_first,
};
use crate::tally::Tally;

pub(crate) struct Core {
    pub(crate) store: Arc<MemoryStore>,
    /// The task store, when the manager has one.
    pub(crate) persistence: Option<SqliteStore>,
    /// Whether PENDING tasks interrupted by shutdown run at the next start.
    requeue_pending: bool,
    pub(crate) bus: Bus,
    pub(crate) resources: Resources,
    pub(crate) runtime: Handle,
    pub(crate) async_tasks: AsyncExecutor,
    pub(crate) sync_tasks: SyncExecutor,
    #[cfg(unix)]
    pub(crate) process_tasks: ProcessExecutor,
    closed: AtomicBool,
    /// RUNNING tasks per executor, indexed by [`executor_index`].
    running: Tally<3>,
    /// Signalled whenever a task stops running after close.
    idle: Notify,
    /// Rows of the task store found corrupt and reported, by SQLite row id.
    reported_corrupt: std::sync::Mutex<std::collections::HashSet<i64>>,
}

/// What a transition did.
pub(crate) struct Applied {
    pub(crate) status: TaskStatus,
    /// Zero-based attempt the transition belonged to.
    pub(crate) attempt: u32,
    /// After a failure with retries left: the wait before the next attempt.
    pub(crate) retry_in: Option<Duration>,
}

/// The executors a manager runs, built before the core they belong to.
pub(crate) struct Executors {
    pub(crate) async_tasks: AsyncExecutor,
    pub(crate) sync_tasks: SyncExecutor,
    #[cfg(unix)]
    pub(crate) process_tasks: ProcessExecutor,
}

fn executor_index(executor: Executor) -> usize {
    match executor {
        Executor::Async => 0,
        Executor::Thread => 1,
        _ => 2,
    }
}

impl Core {
    pub(crate) fn new(
        runtime: Handle,
        resources: Resources,
        executors: Executors,
        event_capacity: usize,
        memory: MemoryStore,
        persistence: Option<(SqliteStore, bool)>,
    ) -> Self {
        let (persistence, requeue_pending) = match persistence {
            Some((store, requeue_pending)) => (Some(store), requeue_pending),
            None => (None, false),
        };
        Core {
            store: Arc::new(memory),
            persistence,
            requeue_pending,
            bus: Bus::new(event_capacity),
            resources,
            runtime,
            async_tasks: executors.async_tasks,
            sync_tasks: executors.sync_tasks,
            #[cfg(unix)]
            process_tasks: executors.process_tasks,
            closed: AtomicBool::new(false),
            running: Default::default(),
            idle: Notify::new(),
            reported_corrupt: Default::default(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Records a new PENDING task and hands it to its executor. With an
    /// idempotency key held by another task, returns that task instead.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        entry: &'static TaskEntry,
        args: Vec<u8>,
        tags: Tags,
        key: Option<String>,
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
        let origin = Origin::new(self.persistence.is_some());
        let cell = Arc::new(TaskCell::new(
            entry,
            args.into_boxed_slice(),
            tags,
            key.map(Into::into),
            origin,
        ));
        if cell.key.is_some()
            && let Some(holder) = self.claim_key(&cell)?
        {
            holder.add_handle();
            return Ok(holder);
        }
        // A keyed claim against the task store recorded the cell already.
        let recorded = cell.key.is_some() && self.persistence.is_some();
        self.admit(cell.clone(), EventKind::Enqueued, recorded);
        Ok(cell)
    }

    /// Makes `cell` the holder of its key, or returns the task that holds it.
    /// With a task store the file decides, across processes and restarts,
    /// through its unique index; without one, this process's key map does.
    fn claim_key(self: &Arc<Self>, cell: &SharedCell) -> Result<Option<SharedCell>, Error> {
        let Some(persistence) = &self.persistence else {
            return Ok(self.store.hold_key(cell));
        };
        if let Some(holder) = self.store.key_holder(cell) {
            return Ok(Some(holder));
        }
        // Visible here before the claim, so a racing enqueue of the same key
        // in this process finds it by id.
        self.store.insert(cell.clone());
        match persistence.claim(cell.clone()) {
            Ok(Claimed::Inserted) => {
                self.store.set_key_holder(cell);
                Ok(None)
            }
            Ok(Claimed::Existing(row)) => {
                self.store.remove_unstarted(cell);
                Ok(Some(match self.store.get(&row.record.id) {
                    Some(local) => local,
                    None => self.mirror(cell.entry, *row),
                }))
            }
            Ok(Claimed::Corrupt(row)) => {
                self.store.remove_unstarted(cell);
                self.report_corrupt(std::slice::from_ref(&row));
                Err(Error::CorruptRow {
                    id: row.id.unwrap_or(cell.id),
                    reason: row.reason,
                })
            }
            Err(error) => {
                self.store.remove_unstarted(cell);
                Err(error)
            }
        }
    }

    /// Records a PENDING cell (if not yet recorded), announces it, queues
    /// its row and hands it to its executor.
    fn admit(self: &Arc<Self>, cell: SharedCell, kind: EventKind, recorded: bool) {
        if !recorded {
            self.store.insert(cell.clone());
        }
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind,
            status: TaskStatus::Pending,
            attempt: 0,
            at: cell.created_at,
        });
        if let Some(persistence) = &self.persistence
            && !cell.is_stored()
        {
            persistence.write(cell.clone());
        }
        self.dispatch(cell);
    }

    /// Hands a PENDING cell to its executor.
    fn dispatch(self: &Arc<Self>, cell: SharedCell) {
        match cell.entry.executor() {
            Executor::Async => self.async_tasks.submit(self, cell),
            #[cfg(unix)]
            Executor::Process => self.process_tasks.submit(self, cell),
            _ => self.sync_tasks.submit(self, cell),
        }
    }

    /// Dispatches a row claimed from the task store at start, under its own id.
    pub(crate) fn restore(self: &Arc<Self>, recovered: Recovered) {
        let origin = Origin {
            id: recovered.id,
            created_at: recovered.created_at,
            attempts: recovered.attempts,
            status: TaskStatus::Pending,
            handles: 0,
            durable: true,
            stored: true,
            mirror: false,
        };
        let cell = Arc::new(TaskCell::new(
            recovered.entry,
            recovered.args.into_boxed_slice(),
            recovered.tags,
            recovered.idempotency_key.map(Into::into),
            origin,
        ));
        self.store.set_key_holder(&cell);
        self.admit(cell, EventKind::Requeued, false);
    }

    /// A handle's view of a task that another instance (or an earlier run)
    /// owns, kept current from the task store until it finishes.
    fn mirror(self: &Arc<Self>, entry: &'static TaskEntry, row: StoredRow) -> SharedCell {
        let record = &row.record;
        let origin = Origin {
            id: record.id,
            created_at: record.created_at,
            attempts: record.attempts,
            status: TaskStatus::Pending,
            handles: 0,
            durable: true,
            stored: true,
            mirror: true,
        };
        let cell = Arc::new(TaskCell::new(
            entry,
            row.args.clone().into_boxed_slice(),
            record.tags.clone(),
            None,
            origin,
        ));
        self.transition(&cell, Transition::Observe(Box::new(row)));
        if !cell.status().is_finished() {
            let (core, watched) = (Arc::downgrade(self), cell.clone());
            drop(self.runtime.spawn(async move {
                // Polls the file: the other instance publishes nothing to us.
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let Some(core) = core.upgrade() else { return };
                    let Some(persistence) = &core.persistence else {
                        return;
                    };
                    match persistence
                        .get(watched.id)
                        .and_then(|row| core.readable(watched.id, row))
                    {
                        Ok(Some(row)) => {
                            core.transition(&watched, Transition::Observe(Box::new(row)));
                        }
                        Ok(None) => {
                            core.transition(&watched, Transition::Interrupt);
                        }
                        Err(error) => tracing::warn!("cannot follow task {}: {error}", watched.id),
                    }
                    if watched.status().is_finished() {
                        return;
                    }
                }
            }));
        }
        cell
    }

    /// A stored row, or the error for a corrupt one (reported once).
    fn readable(
        &self,
        id: TaskId,
        row: Option<Result<StoredRow, CorruptRow>>,
    ) -> Result<Option<StoredRow>, Error> {
        match row {
            None => Ok(None),
            Some(Ok(row)) => Ok(Some(row)),
            Some(Err(corrupt)) => {
                self.report_corrupt(std::slice::from_ref(&corrupt));
                Err(Error::CorruptRow {
                    id,
                    reason: corrupt.reason,
                })
            }
        }
    }

    /// A snapshot of a task, live or stored.
    pub(crate) fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, Error> {
        if let Some(cell) = self.store.get(&id) {
            return Ok(Some(cell.snapshot()));
        }
        match &self.persistence {
            Some(persistence) => self
                .readable(id, persistence.get(id)?)
                .map(|row| row.map(|row| row.record)),
            None => Ok(None),
        }
    }

    /// Records matching `filter`, live and stored, newest first.
    pub(crate) fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, Error> {
        let mut records = self.store.list(filter);
        if let Some(persistence) = &self.persistence {
            let live: std::collections::HashSet<TaskId> = records.iter().map(|r| r.id).collect();
            let (stored, corrupt) = persistence.list(filter)?;
            self.report_corrupt(&corrupt);
            records.extend(stored.into_iter().filter(|r| !live.contains(&r.id)));
            sort_newest_first(&mut records);
            if let Some(limit) = filter.limit {
                records.truncate(limit);
            }
        }
        Ok(records)
    }

    /// Enqueues a FAILED, INTERRUPTED or CANCELLED task again as a new task.
    pub(crate) fn retry(self: &Arc<Self>, id: TaskId) -> Result<TaskId, Error> {
        let (name, status, args, tags) = match self.store.get(&id) {
            Some(cell) => (
                cell.entry.name().to_owned(),
                cell.status(),
                cell.args.to_vec(),
                cell.tags.clone(),
            ),
            None => {
                let row = match &self.persistence {
                    Some(persistence) => self.readable(id, persistence.get(id)?)?,
                    None => None,
                };
                let row = row.ok_or(Error::NotFound(id))?;
                (
                    row.record.name,
                    row.record.status,
                    row.args,
                    row.record.tags,
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
        Ok(self.enqueue(entry, args, tags, None)?.id)
    }

    /// Reports on the bus that the task store could not be written.
    /// The event names the first task whose change was not written, when
    /// there is one; otherwise its id is nil and its name empty.
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
            if !reported.insert(row.rowid) {
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

    /// Whether a task interrupted from `from` runs again at the next start.
    fn runs_again(&self, cell: &TaskCell, from: TaskStatus) -> bool {
        self.persistence.is_some()
            && match from {
                TaskStatus::Pending => self.requeue_pending || cell.entry.defaults().persist,
                TaskStatus::Running => cell.entry.defaults().requeue_on_interrupt,
                _ => false,
            }
    }

    /// Applies `transition` to `cell`; `None` when it does not apply in the
    /// task's current status (see [`lifecycle::next`]).
    pub(crate) fn transition(&self, cell: &SharedCell, transition: Transition) -> Option<Applied> {
        let now = SystemTime::now();
        // Once closed, nothing more is admitted: a start becomes an interrupt.
        let transition = match transition {
            Transition::Start if self.is_closed() => Transition::Interrupt,
            other => other,
        };
        let mut state = cell.lock();
        let from = state.status;
        let policy = cell.entry.defaults();
        let to = lifecycle::next(from, &transition, state.attempts, policy)?;
        let mut retry_in = None;
        let mut abort = None;
        let mut observed_finish = None;
        let kind = match transition {
            Transition::Start => {
                state.attempts += 1;
                state.started_at.get_or_insert(now);
                EventKind::Started
            }
            Transition::Succeed(output) => {
                state.last_error = None;
                if cell.key.is_some() {
                    // Every later handle to a keyed task reads it, here or
                    // in another process, so it goes to the store encoded.
                    state.extra().output_bytes = encoded(cell.entry, &output);
                }
                if state.handles > 0 {
                    state.output = Some(output);
                }
                EventKind::Succeeded
            }
            Transition::Fail(error) if to == TaskStatus::Pending => {
                let delay = lifecycle::retry_delay(state.attempts, policy);
                retry_in = Some(delay);
                let kind = EventKind::Retrying {
                    error: error.clone(),
                    delay,
                };
                state.last_error = Some(Box::new(error));
                kind
            }
            Transition::Fail(error) => {
                let kind = EventKind::Failed(error.clone());
                state.last_error = Some(Box::new(error));
                kind
            }
            Transition::Cancel => {
                abort = state.abort.take();
                EventKind::Cancelled
            }
            Transition::Interrupt => {
                if self.runs_again(cell, from) {
                    cell.release();
                }
                abort = state.abort.take();
                EventKind::Interrupted
            }
            Transition::Observe(row) => {
                let record = row.record;
                state.attempts = record.attempts;
                state.started_at = record.started_at;
                state.last_error = record.last_error.map(Box::new);
                if let Some(bytes) = row.output {
                    state.output = Some(Produced::Encoded(bytes));
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
            let finished_at = observed_finish.unwrap_or(now);
            state.finished_at = Some(finished_at);
            if matches!(to, TaskStatus::Success | TaskStatus::Failed) {
                duration = state
                    .started_at
                    .map(|start| finished_at.duration_since(start).unwrap_or_default());
            }
        }
        if !cell.is_mirror() {
            self.store.count_transition(from, to, duration);
        }
        let executor = executor_index(cell.entry.executor());
        if to == TaskStatus::Running {
            self.running.add(executor, 1);
        } else if from == TaskStatus::Running {
            self.running.add(executor, -1);
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
        let waiters = match to.is_finished() {
            true => std::mem::take(&mut state.waiters),
            false => Vec::new(),
        };
        drop(state);

        if !cell.is_mirror() {
            match &self.persistence {
                Some(persistence) => persistence.write(cell.clone()),
                // Without a store, a finished record may leave memory at once;
                // with one, only after its final state is committed.
                None if to.is_finished() => self.store.evict_when_full(cell),
                None => {}
            }
        }

        waiters.into_iter().for_each(std::task::Waker::wake);
        if let Some(abort) = abort {
            abort.abort();
        }
        if from == TaskStatus::Running && self.is_closed() {
            self.idle.notify_waiters();
        }
        Some(Applied {
            status: to,
            attempt,
            retry_in,
        })
    }

    /// Admits the next attempt of `cell`: its zero-based number, or `None`
    /// when the task may not start (cancelled, interrupted, shut down).
    pub(crate) fn start(&self, cell: &SharedCell) -> Option<u32> {
        self.transition(cell, Transition::Start)
            .filter(|applied| applied.status == TaskStatus::Running)
            .map(|applied| applied.attempt)
    }

    /// Records an attempt's result. A failure with retries left goes back
    /// to the task's executor after its delay, on a timer task of its own so
    /// no attempt's state or permit is held meanwhile; cancelling or
    /// interrupting the task during the wait needs no abort: the timer
    /// finds it finished and drops it.
    pub(crate) fn finish(self: &Arc<Self>, cell: &SharedCell, result: Result<Produced, TaskError>) {
        let transition = match result {
            Ok(output) => Transition::Succeed(output),
            Err(error) => Transition::Fail(error),
        };
        let Some(wait) = self
            .transition(cell, transition)
            .and_then(|applied| applied.retry_in)
        else {
            return;
        };
        if wait.is_zero() {
            self.dispatch(cell.clone());
            return;
        }
        let (core, cell) = (self.clone(), cell.clone());
        drop(self.runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            if !cell.status().is_finished() {
                core.dispatch(cell);
            }
        }));
    }

    /// Appends a log record to a running task and publishes it.
    pub(crate) fn log(&self, cell: &TaskCell, record: LogRecord) {
        let mut state = cell.lock();
        if state.status.is_finished() {
            return;
        }
        let logs = &mut state.extra().logs;
        if logs.len() == MAX_LOGS {
            logs.pop_front();
        }
        let attempt = state.attempts.saturating_sub(1);
        self.bus.publish(|| TaskEvent {
            id: cell.id,
            name: cell.entry.name(),
            kind: EventKind::Log(record.clone()),
            status: state.status,
            attempt,
            at: record.at,
        });
        state.extra().logs.push_back(record);
    }

    pub(crate) fn cancel(&self, id: TaskId) -> Result<(), Error> {
        let cell = self.store.get(&id).ok_or(Error::NotFound(id))?;
        match self.transition(&cell, Transition::Cancel) {
            Some(_) => Ok(()),
            None => Err(Error::AlreadyFinished {
                id,
                status: cell.status(),
            }),
        }
    }

    /// Stops admissions. Returns `false` if already closed.
    pub(crate) fn close(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        if first {
            self.sync_tasks.close();
            #[cfg(unix)]
            self.process_tasks.close();
        }
        first
    }

    /// Interrupts every unfinished task (only PENDING ones with
    /// `pending_only`); returns how many.
    pub(crate) fn interrupt_unfinished(&self, pending_only: bool) -> usize {
        self.store
            .unfinished()
            .into_iter()
            .filter(|cell| !pending_only || cell.status() == TaskStatus::Pending)
            .filter(|cell| self.transition(cell, Transition::Interrupt).is_some())
            .count()
    }

    fn running_on(&self, executors: &[Executor]) -> u64 {
        executors
            .iter()
            .map(|&executor| self.running.get(executor_index(executor)))
            .sum::<i64>()
            .max(0) as u64
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
        if let Some(cell) = self.store.get(&id) {
            self.log(&cell, record);
        }
    }
}
