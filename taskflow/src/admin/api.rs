//! The JSON handlers: small functions over extractors and the shared
//! [`Admin`] state, each answering with a type from `types` or an
//! [`AdminError`]. Every state-changing handler records an audit entry,
//! whatever its outcome.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use taskflow_worker::{Registry, TaskId};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::Admin;
use super::auth::{self, Actor, SESSION_COOKIE, Session};
use super::error::{AdminError, ErrorBody};
use super::types::*;
use crate::{QueueStats, RETRY_OF_TAG, TaskFilter, TaskRecord, TaskStatus};

/// The most records one page holds.
const MAX_PAGE: usize = 1000;
/// The most ids one bulk retry takes.
const MAX_BULK: usize = 1000;
/// Records read per store query while scanning.
const SCAN_BATCH: usize = 500;

type Shared = State<Arc<Admin>>;

/// Query parameters read as `T`; unreadable ones are a 400.
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Params(value))
            .map_err(|rejection: QueryRejection| AdminError::BadRequest(rejection.body_text()))
    }
}

/// A JSON body read as `T`; an unreadable one is a 422.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| Body(value))
            .map_err(|rejection: JsonRejection| AdminError::InvalidBody(rejection.body_text()))
    }
}

fn task_id(text: &str) -> Result<TaskId, AdminError> {
    text.parse()
        .map_err(|_| AdminError::BadRequest(format!("`{text}` is not a task id")))
}

fn time(field: &str, text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("`{field}`: `{text}` is not an RFC 3339 time"))
}

/// Filters and paging of `GET …/api/tasks`. Every filter given must hold.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this status: `PENDING`, `RUNNING`, `SUCCESS`, `FAILED`,
    /// `CANCELLED` or `INTERRUPTED`.
    pub status: Option<String>,
    /// Only tasks registered under this name.
    pub name: Option<String>,
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Only tasks with this tag, as `key:value`.
    pub tag: Option<String>,
    /// Only tasks enqueued at or after this time (RFC 3339).
    pub created_after: Option<String>,
    /// Only tasks enqueued before this time (RFC 3339).
    pub created_before: Option<String>,
    /// Only tasks whose id, name or error message contains this text
    /// (case-insensitive). A page then reads at most the configured scan
    /// limit of records, and may come back short with a `next_cursor` to
    /// go on from.
    pub q: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Tasks per page, 1 to 1000; default 50.
    pub limit: Option<usize>,
}

impl ListQuery {
    fn filter(&self) -> Result<TaskFilter, AdminError> {
        let bad = AdminError::BadRequest;
        let mut filter = TaskFilter::new();
        if let Some(status) = &self.status {
            filter = filter.status(
                status
                    .to_ascii_uppercase()
                    .parse::<TaskStatus>()
                    .map_err(|error| bad(error.to_string()))?,
            );
        }
        if let Some(name) = &self.name {
            filter = filter.name(name);
        }
        if let Some(queue) = &self.queue {
            filter = filter.queue(queue);
        }
        if let Some(tag) = &self.tag {
            let (key, value) = tag
                .split_once(':')
                .ok_or_else(|| bad(format!("`tag`: `{tag}` is not `key:value`")))?;
            filter = filter.tag(key, value);
        }
        if let Some(after) = &self.created_after {
            filter = filter.created_after(time("created_after", after).map_err(bad)?);
        }
        if let Some(before) = &self.created_before {
            filter = filter.created_before(time("created_before", before).map_err(bad)?);
        }
        if let Some(cursor) = &self.cursor {
            filter = filter.before(task_id(cursor)?);
        }
        Ok(filter)
    }
}

fn matches_text(record: &TaskRecord, needle: &str) -> bool {
    record.id.to_string().contains(needle)
        || record.name.to_lowercase().contains(needle)
        || record
            .last_error
            .as_ref()
            .is_some_and(|error| error.message().to_lowercase().contains(needle))
}

/// Tasks, newest first, filtered and paged.
#[utoipa::path(get, path = "/api/tasks", params(ListQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_tasks(
    State(admin): Shared,
    Params(query): Params<ListQuery>,
) -> Result<Json<TaskPage>, AdminError> {
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(AdminError::BadRequest(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let filter = query.filter()?;
    let needle = query
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    let Some(needle) = needle else {
        // One more than the page, to know whether another page follows.
        let mut records = admin.manager.list(&filter.limit(limit + 1)).await?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next_cursor = more
            .then(|| records.last().map(|record| record.id.to_string()))
            .flatten();
        return Ok(Json(TaskPage {
            tasks: records.iter().map(TaskView::from).collect(),
            next_cursor,
        }));
    };
    // Text search: read batches until the page is full, the records run out
    // or the scan limit is reached; the cursor is the last record read (or
    // the last returned, when the page filled), so no record is skipped.
    let mut tasks = Vec::new();
    let mut scanned = 0;
    let mut cursor = filter.before;
    loop {
        let mut batch_filter = filter.clone().limit(SCAN_BATCH);
        batch_filter.before = cursor;
        let batch = admin.manager.list(&batch_filter).await?;
        let exhausted = batch.len() < SCAN_BATCH;
        for record in &batch {
            scanned += 1;
            cursor = Some(record.id);
            if matches_text(record, &needle) {
                tasks.push(TaskView::from(record));
                if tasks.len() == limit {
                    return Ok(Json(TaskPage {
                        tasks,
                        next_cursor: Some(record.id.to_string()),
                    }));
                }
            }
        }
        if exhausted {
            return Ok(Json(TaskPage {
                tasks,
                next_cursor: None,
            }));
        }
        if scanned >= admin.config.scan_limit {
            return Ok(Json(TaskPage {
                tasks,
                next_cursor: cursor.map(|id| id.to_string()),
            }));
        }
    }
}

/// One task with its logs, and its arguments when the configuration shows
/// them (`AdminConfig::show_arguments`).
#[utoipa::path(get, path = "/api/tasks/{id}", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = TaskDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_task(
    State(admin): Shared,
    Path(id): Path<String>,
) -> Result<Json<TaskDetail>, AdminError> {
    let id = task_id(&id)?;
    let record = admin
        .manager
        .get(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    let retried_by = admin
        .manager
        .list(
            &TaskFilter::new()
                .tag(RETRY_OF_TAG, id.to_string())
                .limit(100),
        )
        .await?
        .iter()
        .map(|retry| retry.id.to_string())
        .collect();
    let (arguments, arguments_error) = match admin.config.show_arguments {
        false => (None, None),
        true => match arguments(&admin, id).await {
            Ok(json) => (Some(json), None),
            Err(error) => (None, Some(error)),
        },
    };
    Ok(Json(TaskDetail {
        task: TaskView::from(&record),
        logs: record.logs.iter().map(LogView::from).collect(),
        logs_dropped: record.logs_dropped,
        retried_by,
        arguments,
        arguments_error,
    }))
}

/// A task's arguments as JSON, or why they cannot be shown: a failure here
/// is part of the answer, not a failed request.
async fn arguments(admin: &Admin, id: TaskId) -> Result<Box<RawValue>, String> {
    let arguments = admin
        .manager
        .arguments(id)
        .await
        .map_err(|error| crate::error::chain(&error))?
        // Deleted (pruned) between reading its record and its arguments.
        .ok_or_else(|| format!("task {id} is no longer stored"))?;
    let json = arguments
        .to_json()
        .map_err(|error| crate::error::chain(&error))?;
    RawValue::from_string(json).map_err(|error| {
        format!(
            "the arguments of task `{}` are not valid JSON: {error}",
            arguments.name()
        )
    })
}

fn outcome<T>(result: &Result<T, AdminError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(error) => format!("{}: {error}", error.code()),
    }
}

/// Cancels a task.
#[utoipa::path(post, path = "/api/tasks/{id}/cancel", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = Cancelled), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn cancel_task(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, AdminError> {
    let parsed = task_id(&id)?;
    let result = admin.manager.cancel(parsed).await.map_err(AdminError::from);
    admin
        .audit
        .record(&actor.name, "cancel", vec![id.clone()], outcome(&result));
    result.map(|()| Json(Cancelled { id }))
}

/// Enqueues a FAILED, INTERRUPTED or CANCELLED task again.
#[utoipa::path(post, path = "/api/tasks/{id}/retry", params(("id" = String, Path, description = "task id")),
    responses((status = 201, body = Retried), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn retry_task(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Retried>), AdminError> {
    let parsed = task_id(&id)?;
    let result = admin.manager.retry(parsed).await.map_err(AdminError::from);
    let mut ids = vec![id.clone()];
    ids.extend(result.as_ref().ok().map(ToString::to_string));
    admin
        .audit
        .record(&actor.name, "retry", ids, outcome(&result));
    let retry = result?.to_string();
    Ok((StatusCode::CREATED, Json(Retried { id, retry })))
}

fn error_body(error: &AdminError) -> ErrorBody {
    ErrorBody {
        error: error.to_string(),
        code: error.code().to_owned(),
    }
}

/// Retries several tasks by id, each on its own.
#[utoipa::path(post, path = "/api/tasks/retry", request_body = RetryIds,
    responses((status = 200, body = BulkRetry), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn bulk_retry(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Body(request): Body<RetryIds>,
) -> Result<Json<BulkRetry>, AdminError> {
    if request.ids.len() > MAX_BULK {
        return Err(AdminError::InvalidBody(format!(
            "at most {MAX_BULK} ids at once"
        )));
    }
    let ids = request
        .ids
        .iter()
        .map(|id| {
            id.parse::<TaskId>()
                .map_err(|_| AdminError::InvalidBody(format!("`{id}` is not a task id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let result = admin.manager.retry(id).await.map_err(AdminError::from);
        results.push(RetryOutcome {
            id: id.to_string(),
            retry: result.as_ref().ok().map(ToString::to_string),
            error: result.as_ref().err().map(error_body),
        });
    }
    let retried = results.iter().filter(|r| r.retry.is_some()).count();
    admin.audit.record(
        &actor.name,
        "bulk_retry",
        results.iter().map(|r| r.id.clone()).collect(),
        format!("retried {retried} of {}", results.len()),
    );
    Ok(Json(BulkRetry { results }))
}

/// Retries each FAILED or INTERRUPTED task enqueued in a window (optionally
/// of one name) once: a task retried before (by anyone), or itself a
/// retry, is skipped, so running this twice dispatches nothing the second
/// time.
#[utoipa::path(post, path = "/api/tasks/retry-failed", request_body = RetryAllRequest,
    responses((status = 200, body = RetryAll), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn retry_all(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Body(request): Body<RetryAllRequest>,
) -> Result<Json<RetryAll>, AdminError> {
    let after = time("created_after", &request.created_after).map_err(AdminError::InvalidBody)?;
    let before = match &request.created_before {
        Some(before) => time("created_before", before).map_err(AdminError::InvalidBody)?,
        None => SystemTime::now(),
    };
    let _one_at_a_time = admin.retry_all.lock().await;
    let mut candidates = Vec::new();
    for status in [TaskStatus::Failed, TaskStatus::Interrupted] {
        let mut filter = TaskFilter::new()
            .status(status)
            .created_after(after)
            .created_before(before)
            .limit(SCAN_BATCH);
        if let Some(name) = &request.name {
            filter = filter.name(name);
        }
        loop {
            let batch = admin.manager.list(&filter).await?;
            let exhausted = batch.len() < SCAN_BATCH;
            filter.before = batch.last().map(|record| record.id);
            candidates.extend(batch);
            if exhausted || candidates.len() >= admin.config.scan_limit {
                break;
            }
        }
    }
    let mut answer = RetryAll {
        retried: Vec::new(),
        skipped: 0,
        failed: Vec::new(),
    };
    let mut seen = HashSet::new();
    for record in candidates {
        if !seen.insert(record.id) || record.retry_of().is_some() {
            answer.skipped += 1;
            continue;
        }
        let retried_before = !admin
            .manager
            .list(
                &TaskFilter::new()
                    .tag(RETRY_OF_TAG, record.id.to_string())
                    .limit(1),
            )
            .await?
            .is_empty();
        if retried_before {
            answer.skipped += 1;
            continue;
        }
        match admin.manager.retry(record.id).await {
            Ok(retry) => answer.retried.push(Retried {
                id: record.id.to_string(),
                retry: retry.to_string(),
            }),
            Err(error) => {
                let error = AdminError::from(error);
                answer.failed.push(RetryOutcome {
                    id: record.id.to_string(),
                    retry: None,
                    error: Some(error_body(&error)),
                });
            }
        }
    }
    admin.audit.record(
        &actor.name,
        "retry_all",
        answer.retried.iter().map(|r| r.id.clone()).collect(),
        format!(
            "retried {}, skipped {}, failed {}",
            answer.retried.len(),
            answer.skipped,
            answer.failed.len()
        ),
    );
    Ok(Json(answer))
}

/// Deletes the history of tasks that finished more than an age ago.
#[utoipa::path(post, path = "/api/history/prune", request_body = PruneRequest,
    responses((status = 200, body = Pruned), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn prune(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Body(request): Body<PruneRequest>,
) -> Result<Json<Pruned>, AdminError> {
    let age = Duration::from_secs(request.older_than_seconds);
    let result = admin.manager.prune(age).await.map_err(AdminError::from);
    let text = match &result {
        Ok(deleted) => format!("deleted {deleted} finished before {}s ago", age.as_secs()),
        Err(_) => outcome(&result),
    };
    admin.audit.record(&actor.name, "prune", Vec::new(), text);
    Ok(Json(Pruned { deleted: result? }))
}

/// The window of `GET …/api/metrics`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Minutes back from now, 1 to 1440; default 60.
    pub minutes: Option<u64>,
}

/// Counts, success rate, durations and throughput of a recent window.
#[utoipa::path(get, path = "/api/metrics", params(MetricsQuery),
    responses((status = 200, body = MetricsView), (status = 400, body = ErrorBody)))]
pub(crate) async fn metrics(
    State(admin): Shared,
    Params(query): Params<MetricsQuery>,
) -> Result<Json<MetricsView>, AdminError> {
    let minutes = query.minutes.unwrap_or(60);
    if !(1..=1440).contains(&minutes) {
        return Err(AdminError::BadRequest("`minutes` must be 1 to 1440".into()));
    }
    let now = SystemTime::now();
    let start = now - Duration::from_secs(minutes * 60);
    let mut filter = TaskFilter::new().created_after(start).limit(SCAN_BATCH);
    let mut counts = StatusCounts::default();
    let mut durations = Vec::new();
    let mut buckets = vec![(0u64, 0u64); usize::try_from(minutes).unwrap_or(1440)];
    let mut scanned = 0;
    let truncated = loop {
        let batch = admin.manager.list(&filter).await?;
        let exhausted = batch.len() < SCAN_BATCH;
        filter.before = batch.last().map(|record| record.id);
        for record in &batch {
            scanned += 1;
            counts.add(record.status);
            let succeeded = record.status == TaskStatus::Success;
            if !succeeded && record.status != TaskStatus::Failed {
                continue;
            }
            durations.extend(record.duration());
            let minute = record
                .finished_at
                .and_then(|at| at.duration_since(start).ok())
                .and_then(|since| usize::try_from(since.as_secs() / 60).ok());
            if let Some(bucket) = minute.and_then(|minute| buckets.get_mut(minute)) {
                match succeeded {
                    true => bucket.0 += 1,
                    false => bucket.1 += 1,
                }
            }
        }
        if exhausted {
            break false;
        }
        if scanned >= admin.config.scan_limit {
            break true;
        }
    };
    durations.sort();
    let mean_duration_ms = (!durations.is_empty())
        .then(|| millis(durations.iter().sum::<Duration>()) / durations.len() as f64);
    // Nearest rank: the smallest duration at or above 95 % of them.
    let p95_duration_ms = (!durations.is_empty()).then(|| {
        let rank = (durations.len() * 95).div_ceil(100).max(1);
        millis(durations[rank - 1])
    });
    let mut duration_buckets: Vec<DurationBucket> = [10.0, 100.0, 1000.0, 10_000.0, 60_000.0]
        .into_iter()
        .map(Some)
        .chain([None])
        .map(|up_to_ms| DurationBucket { up_to_ms, count: 0 })
        .collect();
    for duration in &durations {
        let duration = millis(*duration);
        let bucket = duration_buckets
            .iter_mut()
            .find(|bucket| bucket.up_to_ms.is_none_or(|bound| duration <= bound));
        if let Some(bucket) = bucket {
            bucket.count += 1;
        }
    }
    let finished = counts.success + counts.failed;
    let success_rate = (finished > 0).then(|| counts.success as f64 / finished as f64);
    let throughput = buckets
        .into_iter()
        .zip(0u64..)
        .map(|((succeeded, failed), i)| MinuteCounts {
            minute: rfc3339(start + Duration::from_secs(i * 60)),
            succeeded,
            failed,
        })
        .collect();
    let local = admin.manager.metrics();
    let instance = StatusCounts {
        pending: local.pending,
        running: local.running,
        success: local.success,
        failed: local.failed,
        cancelled: local.cancelled,
        interrupted: local.interrupted,
    };
    Ok(Json(MetricsView {
        window_minutes: minutes,
        counts,
        success_rate,
        mean_duration_ms,
        p95_duration_ms,
        duration_buckets,
        throughput,
        truncated,
        instance,
    }))
}

/// Queues with their depth, paused flag and caps.
#[utoipa::path(get, path = "/api/queues", responses((status = 200, body = Vec<QueueStats>)))]
pub(crate) async fn queues(State(admin): Shared) -> Result<Json<Vec<QueueStats>>, AdminError> {
    Ok(Json(admin.manager.queue_stats().await?))
}

async fn set_paused(
    admin: &Admin,
    actor: &Actor,
    queue: String,
    paused: bool,
) -> Result<Json<QueueState>, AdminError> {
    let result = match paused {
        true => admin.manager.pause(&queue).await,
        false => admin.manager.resume(&queue).await,
    }
    .map_err(AdminError::from);
    let action = if paused { "pause" } else { "resume" };
    admin
        .audit
        .record(&actor.name, action, vec![queue.clone()], outcome(&result));
    result.map(|()| Json(QueueState { queue, paused }))
}

/// Pauses a queue: its PENDING tasks wait, running ones finish.
#[utoipa::path(post, path = "/api/queues/{name}/pause", params(("name" = String, Path, description = "queue")),
    responses((status = 200, body = QueueState), (status = 403, body = ErrorBody)))]
pub(crate) async fn pause_queue(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<QueueState>, AdminError> {
    set_paused(&admin, &actor, name, true).await
}

/// Resumes a paused queue.
#[utoipa::path(post, path = "/api/queues/{name}/resume", params(("name" = String, Path, description = "queue")),
    responses((status = 200, body = QueueState), (status = 403, body = ErrorBody)))]
pub(crate) async fn resume_queue(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<QueueState>, AdminError> {
    set_paused(&admin, &actor, name, false).await
}

/// Changes a queue's concurrency cap in the instance serving the API (not
/// stored: other instances keep theirs, a restart starts from the
/// builder's).
#[utoipa::path(post, path = "/api/queues/{name}/concurrency", params(("name" = String, Path, description = "queue")),
    request_body = ConcurrencyChange,
    responses((status = 200, body = QueueConcurrency), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn set_concurrency(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    Body(change): Body<ConcurrencyChange>,
) -> Result<Json<QueueConcurrency>, AdminError> {
    if change.concurrency == Some(0) {
        return Err(AdminError::InvalidBody(
            "concurrency must be at least 1, or null for no cap".to_owned(),
        ));
    }
    let result = admin
        .manager
        .set_queue_concurrency(&name, change.concurrency)
        .map_err(AdminError::from);
    let cap = change
        .concurrency
        .map_or_else(|| "none".to_owned(), |n| n.to_string());
    admin.audit.record(
        &actor.name,
        &format!("concurrency {cap}"),
        vec![name.clone()],
        outcome(&result),
    );
    result.map(|()| {
        Json(QueueConcurrency {
            queue: name,
            concurrency: change.concurrency,
        })
    })
}

/// The tasks this binary registers, with their declared options, by name.
#[utoipa::path(get, path = "/api/registered", responses((status = 200, body = Vec<RegisteredTaskView>)))]
pub(crate) async fn registered() -> Result<Json<Vec<RegisteredTaskView>>, AdminError> {
    let registry = Registry::global().map_err(|error| AdminError::Manager(error.into()))?;
    let mut tasks: Vec<RegisteredTaskView> =
        registry.entries().map(RegisteredTaskView::from).collect();
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(tasks))
}

/// How much of the audit log to read.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The newest this many entries, 1 to 10 000; default 100.
    pub limit: Option<usize>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ErrorBody)))]
pub(crate) async fn audit(
    State(admin): Shared,
    Params(query): Params<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, AdminError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(AdminError::BadRequest("`limit` must be 1 to 10000".into()));
    }
    Ok(Json(admin.audit.newest(limit)))
}

/// A login.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user's name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Who is signed in.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The actor the audit log records.
    pub actor: String,
    /// With a cookie session: the value the `x-taskflow-csrf` header of a
    /// state-changing request must have.
    pub csrf_token: Option<String>,
    /// When a cookie session ends (RFC 3339).
    pub expires_at: Option<String>,
}

/// The path the router is nested at, from the original request path and
/// the route's own `suffix`.
fn prefix(uri: &OriginalUri, suffix: &str) -> String {
    uri.path()
        .strip_suffix(suffix)
        .filter(|prefix| !prefix.is_empty())
        .unwrap_or("/")
        .to_owned()
}

fn cookie(admin: &Admin, path: &str, value: &str, max_age: u64) -> Result<HeaderValue, AdminError> {
    let secure = if admin.config.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .map_err(|_| AdminError::BadRequest("the request path cannot be a cookie path".into()))
}

/// Logs in with a user's password; sets the session cookie.
#[utoipa::path(post, path = "/api/login", request_body = LoginRequest,
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn login(
    State(admin): Shared,
    uri: OriginalUri,
    request: Request,
) -> Result<Response, AdminError> {
    auth::check_csrf(&request, &admin.config.origins, None)?;
    let Body(login): Body<LoginRequest> = Body::from_request(request, &()).await?;
    if admin.secret.is_empty() {
        return Err(AdminError::Forbidden(
            "logins are disabled: no session secret".into(),
        ));
    }
    if let Some(wait) = admin.logins.wait(&login.user) {
        admin.audit.record(
            &login.user,
            "login",
            Vec::new(),
            "too many failed logins: not checked".into(),
        );
        return Err(AdminError::TooManyRequests(wait));
    }
    let checking = admin.clone();
    let (user, password) = (login.user.clone(), login.password);
    let valid = {
        // Closed only if the router is dropped mid-request.
        let _turn = admin.logins.hashing.acquire().await.ok();
        tokio::task::spawn_blocking(move || {
            auth::check_password(&checking.config.credentials, &user, &password)
        })
        .await
        .unwrap_or(false)
    };
    if !valid {
        admin.logins.failed(&login.user);
        admin.audit.record(
            &login.user,
            "login",
            Vec::new(),
            "unauthorized: wrong user or password".into(),
        );
        return Err(AdminError::Unauthorized);
    }
    admin.logins.succeeded(&login.user);
    let session = Session::issue(&admin.secret, &login.user, admin.config.session_ttl)?;
    admin
        .audit
        .record(&login.user, "login", Vec::new(), "ok".into());
    let cookie = cookie(
        &admin,
        &prefix(&uri, "/api/login"),
        &session.cookie,
        admin.config.session_ttl.as_secs(),
    )?;
    let view = SessionView {
        actor: session.user,
        csrf_token: Some(session.csrf),
        expires_at: Some(rfc3339(
            SystemTime::UNIX_EPOCH + Duration::from_secs(session.expires),
        )),
    };
    Ok(([(header::SET_COOKIE, cookie)], Json(view)).into_response())
}

/// Ends the cookie session (clears the cookie).
#[utoipa::path(post, path = "/api/logout", responses((status = 200, body = SessionView)))]
pub(crate) async fn logout(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    uri: OriginalUri,
) -> Result<Response, AdminError> {
    admin
        .audit
        .record(&actor.name, "logout", Vec::new(), "ok".into());
    let cookie = cookie(&admin, &prefix(&uri, "/api/logout"), "", 0)?;
    let view = SessionView {
        actor: actor.name,
        csrf_token: None,
        expires_at: None,
    };
    Ok(([(header::SET_COOKIE, cookie)], Json(view)).into_response())
}

/// Who the request's credentials name.
#[utoipa::path(get, path = "/api/session", responses((status = 200, body = SessionView), (status = 401, body = ErrorBody)))]
pub(crate) async fn session(Extension(actor): Extension<Actor>) -> Json<SessionView> {
    Json(SessionView {
        actor: actor.name,
        csrf_token: actor.csrf,
        expires_at: None,
    })
}

/// Any other path.
pub(crate) async fn not_found(uri: OriginalUri) -> AdminError {
    AdminError::NoRoute(uri.path().to_owned())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "taskflow admin", description = "Inspect and steer a taskflow task manager. \
        Paths are relative to where the router is nested; see `servers`."),
    paths(list_tasks, get_task, cancel_task, retry_task, bulk_retry, retry_all, prune, metrics,
        queues, pause_queue, resume_queue, set_concurrency, registered, audit, login, logout, session,
        super::stream::events),
    modifiers(&Security),
)]
struct ApiDoc;

/// Declares the two ways in: a bearer token, or the session cookie.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
        );
        openapi.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ]);
    }
}

/// The OpenAPI document, with the router's mount point as its server.
pub(crate) async fn openapi(uri: OriginalUri) -> Json<utoipa::openapi::OpenApi> {
    let mut document = ApiDoc::openapi();
    document.servers = Some(vec![utoipa::openapi::Server::new(prefix(
        &uri,
        "/openapi.json",
    ))]);
    Json(document)
}
