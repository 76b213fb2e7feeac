//! The in-memory record map.
//!
//! Records are spread over dashmap's lock-striped shards, so enqueueing and
//! completing tasks on different threads rarely meet on one lock. Counts per
//! status are atomics kept current by `Core::transition`, so `metrics()` reads
//! them without scanning.
//!
//! Finished records stay for a bounded window: once more than
//! `max_finished` have finished, the oldest finished ones leave memory (with
//! a task store they remain readable from it). The window is a lock-free
//! queue of ids in the order tasks finished.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use taskflow_worker::TaskId;

use crate::lifecycle::TaskStatus;
use crate::record::{Metrics, SharedCell, TaskCell, TaskFilter, TaskRecord};
use crate::tally::Tally;

const DURATION_SUM: usize = 6;
const DURATION_COUNT: usize = 7;

pub(crate) struct MemoryStore {
    records: DashMap<TaskId, SharedCell, IdHash>,
    /// Holders of idempotency keys, for keyed enqueues in this process.
    keys: DashMap<Box<str>, SharedCell>,
    /// Per status (by `TaskStatus::index`), then the sum and count of the
    /// durations of tasks that succeeded or failed, in µs.
    counts: Tally<8>,
    max_finished: usize,
    finished: (Sender<TaskId>, Receiver<TaskId>),
    finished_len: AtomicUsize,
}

impl MemoryStore {
    pub(crate) fn new(max_finished: usize) -> Self {
        MemoryStore {
            records: DashMap::with_hasher(IdHash),
            keys: DashMap::new(),
            counts: Tally::default(),
            max_finished,
            finished: crossbeam_channel::unbounded(),
            finished_len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn insert(&self, cell: SharedCell) {
        self.counts.add(cell.status().index(), 1);
        self.records.insert(cell.id, cell);
    }

    /// Forgets a cell that was never dispatched (its key was taken).
    pub(crate) fn remove_unstarted(&self, cell: &TaskCell) {
        if self.records.remove(&cell.id).is_some() {
            self.counts.add(cell.status().index(), -1);
        }
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

    /// Moves one count from `from` to `to`, adding `duration` to the mean when
    /// the task ran to a result.
    pub(crate) fn count_transition(
        &self,
        from: TaskStatus,
        to: TaskStatus,
        duration: Option<Duration>,
    ) {
        self.counts.add(from.index(), -1);
        self.counts.add(to.index(), 1);
        if let Some(duration) = duration {
            let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
            self.counts.add(DURATION_SUM, micros);
            self.counts.add(DURATION_COUNT, 1);
        }
    }

    /// Puts a finished cell in the window, dropping the oldest finished
    /// record from memory when the window is full.
    pub(crate) fn evict_when_full(&self, cell: &TaskCell) {
        if !cell.enter_window() {
            return;
        }
        // Only fails if the receiver is gone, and this struct owns it.
        let _ = self.finished.0.send(cell.id);
        if self.finished_len.fetch_add(1, Ordering::AcqRel) < self.max_finished {
            return;
        }
        if let Ok(oldest) = self.finished.1.try_recv() {
            self.finished_len.fetch_sub(1, Ordering::AcqRel);
            if let Some((_, evicted)) = self.records.remove(&oldest)
                && let Some(key) = key_of(&evicted)
            {
                self.keys
                    .remove_if(&key, |_, holder| holder.id == evicted.id);
            }
        }
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

    /// Snapshots matching `filter`, newest first.
    pub(crate) fn list(&self, filter: &TaskFilter) -> Vec<TaskRecord> {
        let mut matching: Vec<TaskRecord> = self
            .records
            .iter()
            .filter_map(|entry| {
                let cell = entry.value();
                filter.matches(cell, cell.status()).then(|| cell.snapshot())
            })
            .collect();
        sort_newest_first(&mut matching);
        if let Some(limit) = filter.limit {
            matching.truncate(limit);
        }
        matching
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
