//! The audit log: every state-changing action through the admin API, who
//! did it, when, on which ids and with what outcome. Kept in memory, bounded
//! (the oldest entries leave first), and read through `GET …/api/audit`;
//! each entry is also logged through `tracing` at INFO (target
//! `taskflow::admin::audit`) so an application can persist it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use super::types::{AuditEntry, rfc3339};

pub(crate) struct AuditLog {
    capacity: usize,
    entries: Mutex<(u64, VecDeque<AuditEntry>)>,
}

impl AuditLog {
    pub(crate) fn new(capacity: usize) -> Self {
        AuditLog {
            capacity: capacity.max(1),
            entries: Mutex::new((0, VecDeque::new())),
        }
    }

    pub(crate) fn record(&self, actor: &str, action: &str, ids: Vec<String>, outcome: String) {
        tracing::info!(
            target: "taskflow::admin::audit",
            actor, action, ids = ?ids, outcome = %outcome,
            "admin action"
        );
        let mut guard = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (seq, entries) = &mut *guard;
        *seq += 1;
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(AuditEntry {
            seq: *seq,
            at: rfc3339(SystemTime::now()),
            actor: actor.to_owned(),
            action: action.to_owned(),
            ids,
            outcome,
        });
    }

    /// The newest `limit` entries, newest first.
    pub(crate) fn newest(&self, limit: usize) -> Vec<AuditEntry> {
        let guard = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.1.iter().rev().take(limit).cloned().collect()
    }
}
