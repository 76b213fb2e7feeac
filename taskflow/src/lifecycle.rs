//! The task lifecycle: statuses and the one table of transitions between them.
//!
//! ```text
//!            Start                 Succeed
//!  PENDING ─────────▶ RUNNING ─────────────▶ SUCCESS
//!     ▲                  │ Fail, retries left
//!     └──────────────────┤ Fail, none left
//!                        └──────────────────▶ FAILED
//!  PENDING | RUNNING ── Cancel ──▶ CANCELLED
//!  PENDING | RUNNING ── Interrupt ─▶ INTERRUPTED
//!  RUNNING ── Orphaned ─▶ PENDING (requeue_on_interrupt) | INTERRUPTED
//!  PENDING | RUNNING ── Observe ───▶ what the task store says
//! ```
//!
//! `Orphaned` is what happens to a task whose instance is gone: it crashed,
//! lost its lease, or shut down past its deadline. Recovery and rescue
//! decide through it, like every other change, whichever instance applies
//! it. `Observe` applies only to a view of a task that another instance
//! runs: the store is then the authority.
//!
//! [`next`] is total over (status, transition): every pair not drawn above
//! yields `None` and changes nothing. That is how a late result is dropped (a
//! thread finishing a task that was cancelled meanwhile) and why a finished
//! task never changes again. `Core::transition` is the only caller; it applies
//! the change to the record and publishes the event.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskflow_worker::TaskError;
use taskflow_worker::registry::TaskDefaults;

use crate::record::Produced;
use crate::store::StoredTask;

/// Where a task is in its life.
///
/// In text formats (the admin API's JSON) it reads as displayed: `"PENDING"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub enum TaskStatus {
    /// Enqueued, waiting for a slot or for its next attempt.
    Pending,
    /// An attempt is executing.
    Running,
    /// An attempt returned successfully.
    Success,
    /// The last allowed attempt failed.
    Failed,
    /// Cancelled through `TaskManager::cancel`.
    Cancelled,
    /// Still pending or running when the manager shut down.
    Interrupted,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Success,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
    ];

    /// Whether the task has reached a final status and will never change again.
    pub fn is_finished(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }

    /// The status in capitals, as displayed and stored: `"PENDING"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Success => "SUCCESS",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
            TaskStatus::Interrupted => "INTERRUPTED",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`TaskStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task status `{0}`; expected PENDING, RUNNING, SUCCESS, FAILED, CANCELLED or INTERRUPTED"
)]
pub struct ParseStatusError(String);

impl FromStr for TaskStatus {
    type Err = ParseStatusError;

    /// Parses a status, ignoring case.
    ///
    /// ```
    /// use taskflow::TaskStatus;
    /// assert_eq!("failed".parse::<TaskStatus>(), Ok(TaskStatus::Failed));
    /// assert!("done".parse::<TaskStatus>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseStatusError(s.to_owned()))
    }
}

/// Something that happens to a task.
pub(crate) enum Transition {
    /// An executor admits an attempt.
    Start,
    /// The attempt returned this output.
    Succeed(Produced),
    /// The attempt failed.
    Fail(TaskError),
    /// `cancel` was called.
    Cancel,
    /// Shutdown reached the task before it finished.
    Interrupt,
    /// The instance running the task is gone.
    Orphaned,
    /// The task store says where a task another instance runs has got to
    /// (for a handle to it).
    Observe(Box<StoredTask>),
}

/// The status after `transition` from `status`, or `None` when the transition
/// does not apply. `attempts` counts attempts started so far, the failing one
/// included; a failure with retries left goes back to PENDING.
pub(crate) fn next(
    status: TaskStatus,
    transition: &Transition,
    attempts: u32,
    policy: &TaskDefaults,
) -> Option<TaskStatus> {
    use TaskStatus::*;
    match (status, transition) {
        (Pending, Transition::Start) => Some(Running),
        (Running, Transition::Succeed(_)) => Some(Success),
        (Running, Transition::Fail(_)) if attempts <= policy.retries => Some(Pending),
        (Running, Transition::Fail(_)) => Some(Failed),
        (Pending | Running, Transition::Cancel) => Some(Cancelled),
        (Pending | Running, Transition::Interrupt) => Some(Interrupted),
        (Running, Transition::Orphaned) if policy.requeue_on_interrupt => Some(Pending),
        (Running, Transition::Orphaned) => Some(Interrupted),
        (Pending | Running, Transition::Observe(row)) if row.record.status != status => {
            Some(row.record.status)
        }
        _ => None,
    }
}

/// The wait before the attempt that follows failed attempt number `attempts`.
pub(crate) fn retry_delay(attempts: u32, policy: &TaskDefaults) -> Duration {
    policy.retry_delay(attempts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    fn all_transitions() -> Vec<Transition> {
        vec![
            Transition::Start,
            Transition::Succeed(Produced::Value(Box::new(()))),
            Transition::Fail(TaskError::error("x")),
            Transition::Cancel,
            Transition::Interrupt,
            Transition::Orphaned,
        ]
    }

    #[test]
    fn finished_statuses_never_change() {
        let policy = TaskDefaults::DEFAULT.retries(5);
        for status in [Success, Failed, Cancelled, Interrupted] {
            for transition in all_transitions() {
                assert_eq!(
                    next(status, &transition, 1, &policy),
                    None,
                    "{status} changed"
                );
            }
        }
    }

    #[test]
    fn failure_retries_while_attempts_remain() {
        let policy = TaskDefaults::DEFAULT.retries(2);
        let fail = Transition::Fail(TaskError::error("x"));
        assert_eq!(next(Running, &fail, 1, &policy), Some(Pending));
        assert_eq!(next(Running, &fail, 2, &policy), Some(Pending));
        assert_eq!(next(Running, &fail, 3, &policy), Some(Failed));
    }

    #[test]
    fn an_orphan_runs_again_only_when_its_task_says_so() {
        let plain = TaskDefaults::DEFAULT;
        let idempotent = TaskDefaults::DEFAULT.requeue_on_interrupt(true);
        assert_eq!(
            next(Running, &Transition::Orphaned, 1, &plain),
            Some(Interrupted)
        );
        assert_eq!(
            next(Running, &Transition::Orphaned, 1, &idempotent),
            Some(Pending)
        );
        assert_eq!(next(Pending, &Transition::Orphaned, 0, &idempotent), None);
    }

    #[test]
    fn only_pending_starts_and_only_running_completes() {
        let policy = TaskDefaults::DEFAULT;
        assert_eq!(next(Running, &Transition::Start, 1, &policy), None);
        assert_eq!(
            next(
                Pending,
                &Transition::Succeed(Produced::Value(Box::new(()))),
                0,
                &policy
            ),
            None
        );
        assert_eq!(
            next(Pending, &Transition::Cancel, 0, &policy),
            Some(Cancelled)
        );
        assert_eq!(
            next(Running, &Transition::Interrupt, 1, &policy),
            Some(Interrupted)
        );
    }
}
