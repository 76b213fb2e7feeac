//! The in-memory record map.
//!
//! Records are spread over dashmap's lock-striped shards, so enqueueing and
//! completing tasks on different threads rarely meet on one lock. Counts per
//! status are atomics kept current by `Core::transition`, so `metrics()` reads
//! them without scanning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use taskflow_worker::TaskId;

use crate::lifecycle::TaskStatus;
use crate::record::{Metrics, SharedCell, TaskFilter, TaskRecord};

#[derive(Default)]
pub(crate) struct MemoryStore {
    records: DashMap<TaskId, SharedCell>,
    counts: [AtomicU64; 6],
    /// Sum and count of durations of tasks that succeeded or failed, in µs.
    duration_total_us: AtomicU64,
    duration_count: AtomicU64,
}

impl MemoryStore {
    pub(crate) fn insert(&self, cell: SharedCell) {
        self.counts[TaskStatus::Pending.index()].fetch_add(1, Ordering::Relaxed);
        self.records.insert(cell.id, cell);
    }

    pub(crate) fn get(&self, id: &TaskId) -> Option<SharedCell> {
        self.records.get(id).map(|entry| entry.value().clone())
    }

    /// Moves one count from `from` to `to`, adding `duration` to the mean when
    /// the task ran to a result.
    pub(crate) fn count_transition(
        &self,
        from: TaskStatus,
        to: TaskStatus,
        duration: Option<Duration>,
    ) {
        self.counts[from.index()].fetch_sub(1, Ordering::Relaxed);
        self.counts[to.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(duration) = duration {
            let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            self.duration_total_us.fetch_add(micros, Ordering::Relaxed);
            self.duration_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count(&self, status: TaskStatus) -> u64 {
        self.counts[status.index()].load(Ordering::Relaxed)
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
        matching.sort_unstable_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        if let Some(limit) = filter.limit {
            matching.truncate(limit);
        }
        matching
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let count = |status: TaskStatus| self.count(status);
        let finished = self.duration_count.load(Ordering::Relaxed);
        let mean_duration = (finished > 0).then(|| {
            Duration::from_micros(self.duration_total_us.load(Ordering::Relaxed) / finished)
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
