//! The admin API's request and response bodies: serde types built from the
//! Rust API's own ([`TaskRecord`], [`TaskStatus`], [`QueueStats`]), with
//! times as RFC 3339 text and durations in milliseconds, so any HTTP client
//! can read them. The OpenAPI document is derived from these types.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use taskflow_worker::registry::TaskEntry;
use taskflow_worker::{LogRecord, TaskError};
use utoipa::ToSchema;

use crate::{TaskRecord, TaskStatus};

/// A time as RFC 3339 text in UTC, to the millisecond.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A duration in (fractional) milliseconds.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One task as the admin API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// The task's id (a UUIDv7: ids sort by creation).
    pub id: String,
    /// Its registered name.
    pub name: String,
    /// Where it runs: `async`, `thread` or `process`.
    pub executor: String,
    /// The queue it waits in.
    pub queue: String,
    /// Its priority in the queue: higher runs first.
    pub priority: i16,
    /// Its status.
    pub status: TaskStatus,
    /// When it was enqueued (RFC 3339).
    pub created_at: String,
    /// Not before this may it (or its next attempt) start (RFC 3339).
    pub run_at: String,
    /// When its first attempt started (RFC 3339).
    pub started_at: Option<String>,
    /// When it reached a final status (RFC 3339).
    pub finished_at: Option<String>,
    /// From the first attempt's start to the final status, in milliseconds.
    pub duration_ms: Option<f64>,
    /// Attempts started so far.
    pub attempts: u32,
    /// The failure of its latest failed attempt.
    pub error: Option<ErrorView>,
    /// Tags given at enqueue.
    pub tags: BTreeMap<String, String>,
    /// The task this one retries, when it is a retry.
    pub retry_of: Option<String>,
}

impl From<&TaskRecord> for TaskView {
    fn from(record: &TaskRecord) -> Self {
        TaskView {
            id: record.id.to_string(),
            name: record.name.clone(),
            executor: record.executor.as_str().to_owned(),
            queue: record.queue.clone(),
            priority: record.priority,
            status: record.status,
            created_at: rfc3339(record.created_at),
            run_at: rfc3339(record.run_at),
            started_at: record.started_at.map(rfc3339),
            finished_at: record.finished_at.map(rfc3339),
            duration_ms: record.duration().map(millis),
            attempts: record.attempts,
            error: record.last_error.as_ref().map(ErrorView::from),
            tags: record
                .tags
                .iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            retry_of: record.retry_of().map(|id| id.to_string()),
        }
    }
}

/// A task's failure.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorView {
    /// Its kind: `error`, `panic`, `timeout`, `cancelled`, `interrupted`,
    /// `worker_died` or `protocol`.
    pub kind: String,
    /// Its message.
    pub message: String,
}

impl From<&TaskError> for ErrorView {
    fn from(error: &TaskError) -> Self {
        ErrorView {
            kind: error.kind().as_str().to_owned(),
            message: error.message().to_owned(),
        }
    }
}

/// One line a task logged.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LogView {
    /// When (RFC 3339).
    pub at: String,
    /// Its level: `TRACE` … `ERROR`.
    pub level: String,
    /// Where it came from.
    pub target: String,
    /// The text.
    pub message: String,
    /// The attempt that logged it, from 0.
    pub attempt: u32,
    /// Structured fields, in order, each a `[key, value]` pair.
    #[schema(value_type = Vec<Vec<String>>)]
    pub fields: Vec<(String, String)>,
}

impl From<&LogRecord> for LogView {
    fn from(record: &LogRecord) -> Self {
        LogView {
            at: rfc3339(record.at),
            level: record.level.as_str().to_owned(),
            target: record.target.clone(),
            message: record.message.clone(),
            attempt: record.attempt,
            fields: record.fields.clone(),
        }
    }
}

/// One task with its logs, and its arguments when the configuration shows
/// them.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskDetail {
    /// The task.
    #[serde(flatten)]
    pub task: TaskView,
    /// Its log lines, oldest first, each with its attempt.
    pub logs: Vec<LogView>,
    /// Log lines past the per-task cap, counted but not kept.
    pub logs_dropped: u32,
    /// The tasks that retry this one (newest first).
    pub retried_by: Vec<String>,
    /// Its arguments, with `AdminConfig::show_arguments(true)` and when
    /// they can be read: an object with one member per argument, keyed by
    /// parameter name in declaration order (`Resource<T>` parameters are
    /// not arguments). Absent when the configuration hides arguments (the
    /// default) or `arguments_error` says why they cannot be shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Box<serde_json::value::RawValue>>,
    /// Why its arguments cannot be shown, with
    /// `AdminConfig::show_arguments(true)`: a task this binary does not
    /// register, stored arguments that do not decode as its argument types,
    /// a task store that cannot be read. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments_error: Option<String>,
}

/// A page of tasks, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskPage {
    /// The tasks of this page.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Task ids, for a bulk retry.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryIds {
    /// The tasks to retry (at most 1000).
    pub ids: Vec<String>,
}

/// Which failures a retry-all takes.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryAllRequest {
    /// Only tasks enqueued at or after this time (RFC 3339).
    pub created_after: String,
    /// Only tasks enqueued before this time (RFC 3339); default: now.
    pub created_before: Option<String>,
    /// Only tasks registered under this name.
    pub name: Option<String>,
}

/// How many finished tasks to delete.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Delete tasks that finished more than this many seconds ago.
    pub older_than_seconds: u64,
}

/// What a prune deleted.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Pruned {
    /// Finished tasks deleted.
    pub deleted: u64,
}

/// A task's retry.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Retried {
    /// The task retried.
    pub id: String,
    /// The new task.
    pub retry: String,
}

/// The outcome of one id of a bulk retry.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RetryOutcome {
    /// The task.
    pub id: String,
    /// The new task, when it was retried.
    pub retry: Option<String>,
    /// Why it was not, otherwise.
    pub error: Option<super::ErrorBody>,
}

/// What a bulk retry did, id by id.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BulkRetry {
    /// One outcome per id given, in order.
    pub results: Vec<RetryOutcome>,
}

/// What a retry-all did.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RetryAll {
    /// The tasks retried now.
    pub retried: Vec<Retried>,
    /// Matching tasks skipped: retried before, or themselves retries.
    pub skipped: u64,
    /// Matching tasks that could not be retried (their names are not
    /// registered in this binary), with why.
    pub failed: Vec<RetryOutcome>,
}

/// A cancelled task.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Cancelled {
    /// The task.
    pub id: String,
}

/// A queue's paused flag after a pause or resume.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct QueueState {
    /// The queue.
    pub queue: String,
    /// Whether it is paused now.
    pub paused: bool,
}

/// A new concurrency cap for a queue, in the instance serving the API.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyChange {
    /// At most this many of the queue's tasks run at once (at least 1);
    /// `null` for no cap. Required.
    #[serde(deserialize_with = "present")]
    pub concurrency: Option<usize>,
}

/// A field that must be given, though it may be `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    <Option<usize> as Deserialize>::deserialize(d)
}

/// A queue's concurrency cap after a change.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct QueueConcurrency {
    /// The queue.
    pub queue: String,
    /// Its cap in this instance now; `null`: none.
    pub concurrency: Option<usize>,
}

/// A task registered in this binary, with its declared options.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RegisteredTaskView {
    /// Its registered name.
    pub name: String,
    /// Where it runs: `async`, `thread` or `process`.
    pub executor: String,
    /// The tuple of its argument types.
    pub arguments: String,
    /// Its output type.
    pub output: String,
    /// The queue its calls wait in unless a call names another.
    pub queue: Option<String>,
    /// Its calls' priority unless a call sets one.
    pub priority: i16,
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry, in milliseconds.
    pub retry_delay_ms: f64,
    /// Factor applied to the wait before each further retry.
    pub backoff: f64,
    /// Limit on one attempt's running time, in milliseconds.
    pub timeout_ms: Option<f64>,
    /// Requeued at start with a task store even without `requeue_pending`.
    pub persist: bool,
    /// Run again when an instance that died left it RUNNING.
    pub requeue_on_interrupt: bool,
}

impl From<&'static TaskEntry> for RegisteredTaskView {
    fn from(entry: &'static TaskEntry) -> Self {
        let defaults = entry.defaults();
        let signature = entry.signature();
        RegisteredTaskView {
            name: entry.name().to_owned(),
            executor: entry.executor().as_str().to_owned(),
            arguments: signature.arguments.to_owned(),
            output: signature.output.to_owned(),
            queue: defaults.queue.map(str::to_owned),
            priority: defaults.priority,
            retries: defaults.retries,
            retry_delay_ms: millis(defaults.delay),
            backoff: defaults.backoff,
            timeout_ms: defaults.timeout.map(millis),
            persist: defaults.persist,
            requeue_on_interrupt: defaults.requeue_on_interrupt,
        }
    }
}

/// Tasks finished in one minute.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MinuteCounts {
    /// The minute's start (RFC 3339).
    pub minute: String,
    /// Tasks that succeeded in it.
    pub succeeded: u64,
    /// Tasks that failed in it.
    pub failed: u64,
}

/// Counts per status.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct StatusCounts {
    /// PENDING tasks.
    pub pending: u64,
    /// RUNNING tasks.
    pub running: u64,
    /// SUCCESS tasks.
    pub success: u64,
    /// FAILED tasks.
    pub failed: u64,
    /// CANCELLED tasks.
    pub cancelled: u64,
    /// INTERRUPTED tasks.
    pub interrupted: u64,
}

impl StatusCounts {
    pub(crate) fn add(&mut self, status: TaskStatus) {
        let count = match status {
            TaskStatus::Pending => &mut self.pending,
            TaskStatus::Running => &mut self.running,
            TaskStatus::Success => &mut self.success,
            TaskStatus::Failed => &mut self.failed,
            TaskStatus::Cancelled => &mut self.cancelled,
            TaskStatus::Interrupted => &mut self.interrupted,
        };
        *count += 1;
    }
}

/// How many durations fell in one bucket.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DurationBucket {
    /// The bucket's upper bound in milliseconds (inclusive); absent for the
    /// last, unbounded one.
    pub up_to_ms: Option<f64>,
    /// Durations in it.
    pub count: u64,
}

/// Counts and timings over a recent window.
///
/// Computed from [`TaskManager::list`](crate::TaskManager::list): the tasks
/// enqueued in the last `window_minutes` (with a task store, every
/// process's), at most the configured scan limit of them (newest first;
/// `truncated` says when the window held more).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MetricsView {
    /// The window, in minutes back from now.
    pub window_minutes: u64,
    /// Tasks enqueued in the window, per status now.
    pub counts: StatusCounts,
    /// SUCCESS / (SUCCESS + FAILED) among them, when any finished so.
    pub success_rate: Option<f64>,
    /// Mean duration of those that succeeded or failed, in milliseconds.
    pub mean_duration_ms: Option<f64>,
    /// 95th percentile of the same durations, in milliseconds.
    pub p95_duration_ms: Option<f64>,
    /// Tasks finished per minute, oldest minute first, one entry per
    /// minute of the window.
    pub throughput: Vec<MinuteCounts>,
    /// Those durations counted per bucket: up to 10 ms, 100 ms, 1 s, 10 s,
    /// 1 min, and longer.
    pub duration_buckets: Vec<DurationBucket>,
    /// Whether the window held more tasks than were scanned.
    pub truncated: bool,
    /// This instance's own counts since it started, from
    /// [`TaskManager::metrics`](crate::TaskManager::metrics).
    pub instance: StatusCounts,
}

/// One state-changing action, as recorded.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Its place in the log, from 1.
    pub seq: u64,
    /// When it was done (RFC 3339).
    pub at: String,
    /// Who did it: the token's or user's name, or `anonymous` without auth.
    pub actor: String,
    /// What: `cancel`, `retry`, `bulk_retry`, `retry_all`, `pause`,
    /// `resume`, `prune`, `login` or `logout`.
    pub action: String,
    /// Which tasks (or queue) it named.
    pub ids: Vec<String>,
    /// What came of it.
    pub outcome: String,
}
