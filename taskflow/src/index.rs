//! The live index: this instance's tasks in memory, a cache in front of
//! the task store (never a backend).
//!
//! Records are spread over dashmap's lock-striped shards, so enqueueing and
//! completing tasks on different threads rarely meet on one lock. Counts per
//! status (globally and per queue) are striped counters kept current by
//! `Core::transition`, so `metrics()` reads them without scanning; so are
//! the RUNNING tasks per executor, which shutdown waits for. A view of a
//! task another instance runs (a "mirror", followed through the store for a
//! handle here) is not counted: a cell that becomes one leaves the counts
//! in the status it had, and one that becomes this instance's own again
//! enters them.
//!
//! Finished records stay for a bounded window: once more than
//! `max_finished` have finished, the oldest finished ones leave memory (with
//! a task store they remain readable from it). Each finished record gets a
//! sequence number; a sweep, due every quarter window, drops those older than
//! the window in one pass over the map, so finishing a task costs one atomic
//! add rather than a queue push and a map remove.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use taskflow_worker::{Executor, TaskId};

use crate::lifecycle::TaskStatus;
use crate::queue::executor_index;
use crate::record::{Metrics, SharedCell, Stamp, TaskCell, TaskFilter, TaskRecord};
use crate::tally::{Local, Tally};

/// Counters after the six per status (by `TaskStatus::index`): the sum and
/// count of the durations of tasks that succeeded or failed, in µs, then
/// this instance's RUNNING tasks per executor (by `executor_index`).
const DURATION_SUM: usize = 6;
const DURATION_COUNT: usize = 7;
const RUNNING_ON: usize = 8;
const COUNTERS: usize = RUNNING_ON + 3;

pub(crate) struct LiveIndex {
    records: DashMap<TaskId, SharedCell, IdHash>,
    /// Holders of idempotency keys, for keyed enqueues in this process.
    keys: DashMap<Box<str>, SharedCell>,
    /// Per status, durations, running per executor (see `RUNNING_ON`).
    counts: Tally<COUNTERS>,
    max_finished: usize,
    /// The last window sequence number handed to a finished record.
    finished_seq: AtomicU64,
    /// The sequence number at which the next sweep is due.
    next_sweep: AtomicU64,
    /// A sweep is running.
    sweeping: AtomicBool,
    /// Views of tasks other instances run, in the index now.
    mirrors: AtomicU64,
}

impl LiveIndex {
    pub(crate) fn new(max_finished: usize) -> Self {
        LiveIndex {
            records: DashMap::with_hasher(IdHash),
            keys: DashMap::new(),
            counts: Tally::default(),
            max_finished,
            finished_seq: AtomicU64::new(0),
            next_sweep: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            mirrors: AtomicU64::new(0),
        }
    }

    /// Adds a cell (counted unless it is a mirror).
    pub(crate) fn insert(&self, cell: SharedCell) {
        if cell.is_mirror() {
            self.mirrors.fetch_add(1, Ordering::AcqRel);
        } else {
            self.tally(&cell, cell.status(), 1);
        }
        self.records.insert(cell.id, cell);
    }

    /// Adds `cell` unless the index holds a cell of its id already: the
    /// cell now in the index for that id. The claimer and a keyed enqueue
    /// may each make a cell for one task at the same moment; one wins, and
    /// both use it.
    pub(crate) fn insert_new(&self, cell: SharedCell) -> SharedCell {
        match self.records.entry(cell.id) {
            Entry::Occupied(present) => present.get().clone(),
            Entry::Vacant(free) => {
                if cell.is_mirror() {
                    self.mirrors.fetch_add(1, Ordering::AcqRel);
                } else {
                    self.tally(&cell, cell.status(), 1);
                }
                free.insert(cell.clone());
                cell
            }
        }
    }

    /// Takes out a cell that never became a task (its key was held).
    pub(crate) fn remove_unborn(&self, cell: &TaskCell) {
        if self.records.remove(&cell.id).is_some() && !cell.is_mirror() {
            self.tally(cell, cell.status(), -1);
        }
    }

    /// How many views of other instances' tasks have been added (an upper
    /// bound: a view that finishes is not subtracted until it leaves).
    pub(crate) fn mirrors(&self) -> u64 {
        self.mirrors.load(Ordering::Acquire)
    }

    /// Makes a cell a view of a task another instance runs: it stops
    /// counting here and is followed through the store. The status it had
    /// when it stopped counting, if it was counted until now.
    pub(crate) fn follow(&self, cell: &TaskCell) -> Option<TaskStatus> {
        let status = self.uncount(cell)?;
        self.mirrors.fetch_add(1, Ordering::AcqRel);
        Some(status)
    }

    /// Lets a PENDING cell whose row waits in the store leave memory: it
    /// stops counting, and leaves the map and the key holders (where it is
    /// there itself, not a newer cell of its id).
    pub(crate) fn rest(&self, cell: &SharedCell) {
        if self.uncount(cell).is_none() {
            return;
        }
        self.records
            .remove_if(&cell.id, |_, present| Arc::ptr_eq(present, cell));
        if let Some(key) = key_of(cell) {
            self.keys
                .remove_if(&key, |_, holder| Arc::ptr_eq(holder, cell));
        }
    }

    /// Stops counting a cell here (its changes count nowhere from now on):
    /// the status it was counted in, if it was.
    fn uncount(&self, cell: &TaskCell) -> Option<TaskStatus> {
        if cell.is_mirror() {
            return None;
        }
        cell.set_mirror(true);
        let status = cell.status();
        self.tally(cell, status, -1);
        if status == TaskStatus::Pending {
            cell.queue.unreserve_pending();
        }
        Some(status)
    }

    /// Makes a followed cell this instance's own again (it claimed it).
    pub(crate) fn recount(&self, cell: &TaskCell) {
        let status = cell.status();
        self.tally(cell, status, 1);
        if status == TaskStatus::Pending {
            cell.queue.reserve_pending_unchecked();
        }
    }

    /// Counts `delta` tasks of `cell`'s kind in `status`: globally, in its
    /// queue, and among its executor's running tasks.
    fn tally(&self, cell: &TaskCell, status: TaskStatus, delta: i64) {
        tally_in(&self.counts.local(), cell, status, delta);
    }

    /// This instance's RUNNING tasks of `executor` (views of other
    /// instances' tasks not included).
    pub(crate) fn running(&self, executor: Executor) -> u64 {
        u64::try_from(self.counts.get(RUNNING_ON + executor_index(executor))).unwrap_or(0)
    }

    pub(crate) fn get(&self, id: &TaskId) -> Option<SharedCell> {
        self.records.get(id).map(|entry| entry.value().clone())
    }

    /// The live holder of `cell`'s key in this process, or makes `cell` the
    /// holder. A key is held while its task is PENDING, RUNNING or SUCCESS.
    pub(crate) fn hold_key(&self, cell: &SharedCell) -> Option<SharedCell> {
        let key = key_of(cell)?;
        match self.keys.entry(key) {
            Entry::Occupied(holder) if holds_key(holder.get()) => Some(holder.get().clone()),
            Entry::Occupied(mut released) => {
                released.insert(cell.clone());
                None
            }
            Entry::Vacant(free) => {
                free.insert(cell.clone());
                None
            }
        }
    }

    /// The live holder of `cell`'s key in this process, if any.
    pub(crate) fn key_holder(&self, cell: &TaskCell) -> Option<SharedCell> {
        self.keys
            .get(&key_of(cell)?)
            .map(|holder| holder.value().clone())
            .filter(holds_key)
    }

    /// Makes `cell` the holder of its key, as the task store decided.
    pub(crate) fn set_key_holder(&self, cell: &SharedCell) {
        if let Some(key) = key_of(cell) {
            self.keys.insert(key, cell.clone());
        }
    }

    /// Moves one count from `from` to `to` (globally and in the cell's
    /// queue), adding `duration` to the mean when the task ran to a result.
    pub(crate) fn count_transition(
        &self,
        cell: &TaskCell,
        from: TaskStatus,
        to: TaskStatus,
        duration: Option<Duration>,
    ) {
        let counts = self.counts.local();
        tally_in(&counts, cell, from, -1);
        tally_in(&counts, cell, to, 1);
        if from == TaskStatus::Pending {
            cell.queue.unreserve_pending();
        } else if to == TaskStatus::Pending {
            cell.queue.reserve_pending_unchecked();
        }
        if let Some(duration) = duration {
            let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
            counts.add(DURATION_SUM, micros);
            counts.add(DURATION_COUNT, 1);
        }
    }

    /// Puts a finished cell in the window. Once more than the window has
    /// finished (plus a quarter, so sweeps are rare), the oldest finished
    /// records leave memory in one sweep: on a thread of its own for a large
    /// window, so no task's thread stalls on it.
    pub(crate) fn evict_when_full(self: &Arc<Self>, cell: &TaskCell) {
        if cell.window_seq() != 0 {
            return;
        }
        let seq = self.finished_seq.fetch_add(1, Ordering::AcqRel) + 1;
        if !cell.enter_window(seq) {
            return;
        }
        let max = self.max_finished as u64;
        if seq <= max + max / 4 || seq < self.next_sweep.load(Ordering::Acquire) {
            return;
        }
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        if max < 4096 {
            self.sweep(seq - max);
        } else {
            let store = self.clone();
            let spawned = std::thread::Builder::new()
                .name("taskflow-sweep".into())
                .spawn(move || store.sweep(seq - max));
            if spawned.is_err() {
                // No thread: sweep here rather than let memory grow.
                self.sweep(seq - max);
            }
        }
    }

    /// Drops every finished record that entered the window at or before
    /// `cutoff`.
    fn sweep(&self, cutoff: u64) {
        let mut evicted_keys = Vec::new();
        self.records.retain(|_, cell| {
            let seq = cell.window_seq();
            let keep = seq == 0 || seq > cutoff;
            if !keep && let Some(key) = key_of(cell) {
                evicted_keys.push((key, cell.id));
            }
            keep
        });
        for (key, id) in evicted_keys {
            self.keys.remove_if(&key, |_, holder| holder.id == id);
        }
        let max = self.max_finished as u64;
        self.next_sweep
            .store(cutoff + max + max / 4 + 1, Ordering::Release);
        self.sweeping.store(false, Ordering::Release);
    }

    /// Drops every finished record that finished before `cutoff`; how many
    /// went. Counts per status stay as they are (they count what ran).
    pub(crate) fn forget_finished_before(&self, cutoff: SystemTime) -> u64 {
        let cutoff = Stamp::from(cutoff);
        let mut forgotten = 0;
        let mut evicted_keys = Vec::new();
        self.records.retain(|_, cell| {
            let old = {
                let state = cell.lock();
                state.status.is_finished() && state.finished_at.is_some_and(|at| at < cutoff)
            };
            if old {
                forgotten += 1;
                if let Some(key) = key_of(cell) {
                    evicted_keys.push((key, cell.id));
                }
            }
            !old
        });
        for (key, id) in evicted_keys {
            self.keys.remove_if(&key, |_, holder| holder.id == id);
        }
        forgotten
    }

    pub(crate) fn count(&self, status: TaskStatus) -> u64 {
        u64::try_from(self.counts.get(status.index())).unwrap_or(0)
    }

    /// Cells not yet finished.
    pub(crate) fn unfinished(&self) -> Vec<SharedCell> {
        self.records
            .iter()
            .filter(|entry| !entry.value().status().is_finished())
            .map(|entry| entry.value().clone())
            .collect()
    }

    /// Snapshots matching `filter`, newest first (without their logs: a
    /// listing is for overviews).
    pub(crate) fn list(&self, filter: &TaskFilter) -> Vec<TaskRecord> {
        self.list_where(filter, |_| true)
    }

    /// As [`list`](Self::list), among cells whose rows do not say their
    /// status yet (not written, or changed since).
    pub(crate) fn list_unwritten(&self, filter: &TaskFilter) -> Vec<TaskRecord> {
        self.list_where(filter, |cell| {
            !cell.is_mirror()
                && (!cell.is_stored() || {
                    let state = cell.lock();
                    state.written.is_none_or(|row| row.status != state.status)
                })
        })
    }

    fn list_where(&self, filter: &TaskFilter, keep: impl Fn(&TaskCell) -> bool) -> Vec<TaskRecord> {
        let mut matching: Vec<TaskRecord> = self
            .records
            .iter()
            .filter(|entry| keep(entry.value()))
            .filter_map(|entry| {
                let cell = entry.value();
                if !quick_match(filter, cell) {
                    return None;
                }
                let mut record = cell.snapshot();
                record.logs = Vec::new();
                filter.matches(&record).then_some(record)
            })
            .collect();
        sort_newest_first(&mut matching);
        if let Some(limit) = filter.limit {
            matching.truncate(limit);
        }
        matching
    }

    /// Cells a handle here awaits while the task runs (or may run) in
    /// another instance: views of such tasks, and this instance's stored
    /// PENDING tasks, which any instance may claim. With `all`, also the
    /// stored PENDING tasks nobody awaits (their status, counts and queue
    /// places must follow too).
    pub(crate) fn followed(&self, all: bool) -> Vec<SharedCell> {
        self.records
            .iter()
            .filter(|entry| {
                let cell = entry.value();
                let state = cell.lock();
                !state.status.is_finished()
                    && (all || !state.waiters.is_empty())
                    && (cell.is_mirror()
                        || (state.status == TaskStatus::Pending && cell.is_stored()))
            })
            .map(|entry| entry.value().clone())
            .collect()
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let count = |status: TaskStatus| self.count(status);
        let finished = u64::try_from(self.counts.get(DURATION_COUNT)).unwrap_or(0);
        let mean_duration = (finished > 0).then(|| {
            Duration::from_micros(
                u64::try_from(self.counts.get(DURATION_SUM)).unwrap_or(0) / finished,
            )
        });
        Metrics {
            pending: count(TaskStatus::Pending),
            running: count(TaskStatus::Running),
            success: count(TaskStatus::Success),
            failed: count(TaskStatus::Failed),
            cancelled: count(TaskStatus::Cancelled),
            interrupted: count(TaskStatus::Interrupted),
            mean_duration,
        }
    }
}

/// [`LiveIndex::tally`] in the calling thread's stripe of the counts.
fn tally_in(counts: &Local<'_, COUNTERS>, cell: &TaskCell, status: TaskStatus, delta: i64) {
    counts.add(status.index(), delta);
    count_queue(cell, status, delta);
    if status == TaskStatus::Running {
        counts.add(RUNNING_ON + executor_index(cell.entry.executor()), delta);
    }
}

/// Counts `delta` of `status` in the cell's queue (PENDING and RUNNING are
/// the queue's counts).
fn count_queue(cell: &TaskCell, status: TaskStatus, delta: i64) {
    match status {
        TaskStatus::Pending => cell.queue.count_pending(delta),
        TaskStatus::Running => cell.queue.count_running(delta),
        _ => {}
    }
}

/// The filter's conditions that need no snapshot, checked first.
fn quick_match(filter: &TaskFilter, cell: &TaskCell) -> bool {
    filter
        .name
        .as_deref()
        .is_none_or(|n| n == cell.entry.name())
        && filter
            .queue
            .as_deref()
            .is_none_or(|q| q == &**cell.queue.name())
        && filter.before.is_none_or(|id| cell.id < id)
}

/// Keys are scoped to their task: `order-42` for one task and for another
/// are different keys.
fn key_of(cell: &TaskCell) -> Option<Box<str>> {
    let key = cell.key.as_deref()?;
    Some(format!("{}\u{0}{key}", cell.entry.name()).into())
}

fn holds_key(cell: &SharedCell) -> bool {
    matches!(
        cell.status(),
        TaskStatus::Pending | TaskStatus::Running | TaskStatus::Success
    )
}

/// Newest first: ids are time-ordered, creation time breaks no ties they miss.
pub(crate) fn sort_newest_first(records: &mut [TaskRecord]) {
    records.sort_unstable_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
}

/// Hashes a task id by folding its bytes: its low 62 bits are already random
/// (see `TaskId`), so a keyed hash would only spend time. Ids come from this
/// process's own generator, never from an attacker choosing collisions.
#[derive(Clone, Copy, Default)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }

    fn finish(&self) -> u64 {
        // Spread the bits dashmap uses to pick a shard and a bucket.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}
