//! `GET …/events`: server-sent events of task changes.
//!
//! One hub per router follows the manager's event bus (from the first
//! client on). It keeps only the latest change of each task and, once per
//! interval (`AdminConfig::stream_interval`), sends what changed as one
//! batch: an SSE message `event: tasks`, `id: <batch number>`, whose data is
//! a JSON array of [`StreamEvent`]s, one per task (split in messages of at
//! most 256 KiB). A burst of 10 000 transitions is so a few messages, not
//! 10 000.
//!
//! Batches go to clients through one bounded broadcast ring, so a client
//! costs at most `stream_client_buffer` batches of memory; a client that
//! falls further behind is disconnected, not buffered. A reconnecting
//! client's `Last-Event-ID` replays the batches it missed from the last
//! 1024 kept; a client without one, or too far behind, first gets
//! `event: snapshot`: the newest 200 tasks ([`TaskView`](super::TaskView)s).
//! When the hub itself fell behind the bus, it sends `event: resync`: the
//! client should fetch the list again. Comments (`: keep-alive`) keep idle
//! connections open.
//!
//! The stream shows the changes this instance sees on its bus (its own
//! tasks, and tasks of other processes that it follows) and, while other
//! instances share its task store, what they change too: once a second the
//! hub reads the newest tasks and the running ones from the store (two
//! queries of at most 200 rows, and a look-up of each task it saw
//! unfinished that left both), and sends each task whose status or
//! attempts changed since as an `observed` change. Its first look once
//! another instance appears sends every task it read: what that instance
//! did before the look is news too.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_core::Stream;
use serde::Serialize;
use taskflow_worker::TaskId;
use tokio::sync::{broadcast, mpsc};
use utoipa::ToSchema;

use super::types::{TaskView, rfc3339};
use super::{Admin, AdminConfig};
use crate::{EventKind, RecvError, TaskEvent, TaskFilter, TaskManager, TaskRecord, TaskStatus};

/// Tasks a snapshot holds.
const SNAPSHOT: usize = 200;

/// How often the hub reads the store for other instances' changes.
const WATCH: Duration = Duration::from_secs(1);

/// Tasks read per look: the newest, then the running ones.
const WATCHED: usize = 200;

/// A task's latest change, as the stream sends it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    /// The task's id.
    pub id: String,
    /// Its registered name.
    pub name: String,
    /// Its status after the change.
    pub status: TaskStatus,
    /// The latest change: `enqueued`, `requeued`, `started`, `retrying`,
    /// `succeeded`, `failed`, `cancelled`, `interrupted`, `log`, `lost` or
    /// `observed`.
    pub change: String,
    /// Its attempt then (from 0 before the first starts).
    pub attempt: u32,
    /// When (RFC 3339).
    pub at: String,
    /// The error, for `retrying` and `failed`.
    pub error: Option<String>,
}

impl StreamEvent {
    fn of(event: &TaskEvent) -> Option<Self> {
        let (change, error) = change_of(&event.kind)?;
        Some(StreamEvent {
            id: event.id.to_string(),
            name: event.name.to_owned(),
            status: event.status,
            change: change.to_owned(),
            attempt: event.attempt,
            at: rfc3339(event.at),
            error: error.map(ToString::to_string),
        })
    }
}

/// The stream's name of a change and its error, for the kinds of event that
/// change a task (store trouble does not).
fn change_of(kind: &EventKind) -> Option<(&'static str, Option<&crate::TaskError>)> {
    Some(match kind {
        EventKind::Enqueued => ("enqueued", None),
        EventKind::Requeued => ("requeued", None),
        EventKind::Started => ("started", None),
        EventKind::Retrying { error, .. } => ("retrying", Some(error)),
        EventKind::Succeeded => ("succeeded", None),
        EventKind::Failed(error) => ("failed", Some(error)),
        EventKind::Cancelled => ("cancelled", None),
        EventKind::Interrupted => ("interrupted", None),
        EventKind::Log(_) => ("log", None),
        EventKind::Lost => ("lost", None),
        EventKind::Observed => ("observed", None),
        _ => return None,
    })
}

impl StreamEvent {
    /// A task as the store has it now: an `observed` change.
    fn observed(record: &TaskRecord) -> Self {
        let at = record
            .finished_at
            .or(record.started_at)
            .unwrap_or(record.created_at);
        let error = match record.status {
            TaskStatus::Failed | TaskStatus::Pending => {
                record.last_error.as_ref().map(ToString::to_string)
            }
            _ => None,
        };
        StreamEvent {
            id: record.id.to_string(),
            name: record.name.clone(),
            status: record.status,
            change: "observed".to_owned(),
            attempt: record.attempts.saturating_sub(1),
            at: rfc3339(at),
            error,
        }
    }
}

/// One message of the hub: a batch of changes, or a call to resync.
#[derive(Clone, Debug)]
enum Batch {
    Changes { seq: u64, data: Arc<str> },
    Resync { seq: u64 },
}

impl Batch {
    fn seq(&self) -> u64 {
        match self {
            Batch::Changes { seq, .. } | Batch::Resync { seq } => *seq,
        }
    }

    fn event(&self) -> Event {
        match self {
            Batch::Changes { seq, data } => Event::default()
                .event("tasks")
                .id(seq.to_string())
                .data(&**data),
            Batch::Resync { seq } => Event::default()
                .event("resync")
                .id(seq.to_string())
                .data("{}"),
        }
    }
}

struct Shared {
    sender: broadcast::Sender<Batch>,
    /// The latest batches, for `Last-Event-ID`, and the last batch number.
    replay: Mutex<(u64, VecDeque<Batch>)>,
    replay_len: usize,
}

/// The stream's hub: started with the first client.
pub(crate) struct Hub {
    manager: TaskManager,
    interval: Duration,
    shared: Arc<Shared>,
    started: OnceLock<()>,
}

impl Hub {
    pub(crate) fn new(manager: &TaskManager, config: &AdminConfig) -> Self {
        let (sender, _) = broadcast::channel(config.client_buffer);
        Hub {
            manager: manager.clone(),
            interval: config.coalesce,
            shared: Arc::new(Shared {
                sender,
                replay: Mutex::new((0, VecDeque::new())),
                replay_len: config.replay,
            }),
            started: OnceLock::new(),
        }
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            let events = self.manager.subscribe();
            let (observed, watched) = mpsc::channel(WATCHED * 4);
            if self.manager.core().durable.is_some() {
                tokio::spawn(watch_store(self.manager.clone(), observed));
            }
            tokio::spawn(coalesce(
                events,
                watched,
                self.interval,
                self.shared.clone(),
            ));
        });
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, VecDeque<Batch>)> {
        self.replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers, keeps and sends one batch.
    fn publish(&self, make: impl FnOnce(u64) -> Batch) {
        let mut replay = self.lock();
        replay.0 += 1;
        let batch = make(replay.0);
        if replay.1.len() == self.replay_len {
            replay.1.pop_front();
        }
        replay.1.push_back(batch.clone());
        // Sent under the lock, so a client subscribing under it sees every
        // batch after those it read from the replay, in order.
        let _ = self.sender.send(batch);
    }
}

/// Reads the store for what other instances change, while there are any
/// (see the [module docs](self)); sends each task that changed since the
/// last look. Ends when the hub is gone.
async fn watch_store(manager: TaskManager, observed: mpsc::Sender<(TaskId, StreamEvent)>) {
    let mut seen: HashMap<TaskId, (TaskStatus, u32)> = HashMap::new();
    let mut ticker = tokio::time::interval(WATCH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if observed.is_closed() {
            return;
        }
        let shared = manager
            .core()
            .durable
            .as_ref()
            .is_some_and(|durable| durable.is_shared());
        if !shared {
            seen.clear();
            continue;
        }
        let newest = manager.list(&TaskFilter::new().limit(WATCHED)).await;
        let running = manager
            .list(&TaskFilter::new().status(TaskStatus::Running).limit(WATCHED))
            .await;
        let (Ok(newest), Ok(running)) = (newest, running) else {
            // The store is failing: the manager reports that itself.
            continue;
        };
        let mut now: HashMap<TaskId, TaskRecord> = newest
            .into_iter()
            .chain(running)
            .map(|record| (record.id, record))
            .collect();
        let left: Vec<TaskId> = seen
            .iter()
            .filter(|(id, (status, _))| !status.is_finished() && !now.contains_key(id))
            .map(|(id, _)| *id)
            .take(WATCHED)
            .collect();
        for id in left {
            if let Ok(Some(record)) = manager.get(id).await {
                now.insert(id, record);
            }
        }
        for record in now.values() {
            let state = (record.status, record.attempts);
            if seen.get(&record.id) != Some(&state) {
                let change = (record.id, StreamEvent::observed(record));
                if observed.send(change).await.is_err() {
                    return;
                }
            }
        }
        seen = now
            .into_iter()
            .map(|(id, record)| (id, (record.status, record.attempts)))
            .collect();
    }
}

/// The hub's loop: latest change per task, flushed once per interval.
async fn coalesce(
    mut events: crate::EventStream,
    mut watched: mpsc::Receiver<(TaskId, StreamEvent)>,
    interval: Duration,
    shared: Arc<Shared>,
) {
    // Events are kept as they come and turned into JSON only at the flush,
    // once per task: the hub must keep up with the bus in a burst.
    let mut latest: HashMap<TaskId, Change> = HashMap::new();
    let mut order: Vec<TaskId> = Vec::new();
    // The hub fell behind the bus: one resync at the next flush, however
    // often it fell behind meanwhile.
    let mut lagged = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) => {
                    if change_of(&event.kind).is_some() {
                        let id = event.id;
                        if latest.insert(id, Change::Event(event)).is_none() {
                            order.push(id);
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    latest.clear();
                    order.clear();
                    lagged = true;
                }
                Err(_) => return,
            },
            Some((id, change)) = watched.recv() => {
                // What the bus said in this interval is as new or newer.
                if let std::collections::hash_map::Entry::Vacant(free) = latest.entry(id) {
                    free.insert(Change::Observed(change));
                    order.push(id);
                }
            }
            _ = ticker.tick() => {
                if std::mem::take(&mut lagged) {
                    shared.publish(|seq| Batch::Resync { seq });
                }
                if order.is_empty() {
                    continue;
                }
                let changes = order
                    .drain(..)
                    .filter_map(|id| latest.remove(&id))
                    .filter_map(|change| match change {
                        Change::Event(event) => StreamEvent::of(&event),
                        Change::Observed(observed) => Some(observed),
                    });
                for data in batches(changes) {
                    shared.publish(|seq| Batch::Changes { seq, data: data.into() });
                }
            }
        }
    }
}

/// A task's latest change in the hub, until the next flush.
enum Change {
    /// From this instance's bus.
    Event(TaskEvent),
    /// Read from the store (another instance's doing).
    Observed(StreamEvent),
}

/// The most a batch carries, so a client's buffer of batches is bounded in
/// bytes too (one change alone may be larger: a long error).
const BATCH_BYTES: usize = 256 * 1024;

/// Changes as JSON arrays of at most [`BATCH_BYTES`] each (and at least one
/// change).
fn batches(changes: impl Iterator<Item = StreamEvent>) -> Vec<String> {
    let mut batches = Vec::new();
    let mut batch = String::from("[");
    for change in changes {
        let json = match serde_json::to_string(&change) {
            Ok(json) => json,
            Err(error) => {
                tracing::warn!("cannot encode an admin stream change: {error}");
                continue;
            }
        };
        if batch.len() > 1 && batch.len() + json.len() + 2 > BATCH_BYTES {
            batch.push(']');
            batches.push(std::mem::replace(&mut batch, String::from("[")));
        }
        if batch.len() > 1 {
            batch.push(',');
        }
        batch.push_str(&json);
    }
    if batch.len() > 1 {
        batch.push(']');
        batches.push(batch);
    }
    batches
}

/// A client's messages: what it missed first, then live batches.
struct ClientStream(mpsc::Receiver<Event>);

impl Stream for ClientStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx).map(|event| event.map(Ok))
    }
}

/// Server-sent events of task changes; see the [module docs](self).
#[utoipa::path(get, path = "/events",
    params(("Last-Event-ID" = Option<String>, Header, description = "the last batch number received")),
    responses((status = 200, content_type = "text/event-stream", description = "batches of `StreamEvent`s"),
        (status = 401, body = super::ErrorBody)))]
pub(crate) async fn events(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hub = &admin.stream;
    hub.start();
    let last: Option<u64> = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let buffer = admin.config.client_buffer;
    let (missed, current, mut receiver) = {
        let replay = hub.shared.lock();
        let missed: Option<Vec<Batch>> = last.and_then(|last| {
            let first_kept = replay.1.front().map_or(replay.0 + 1, Batch::seq);
            let missed: Vec<Batch> = replay
                .1
                .iter()
                .filter(|batch| batch.seq() > last)
                .cloned()
                .collect();
            (last <= replay.0 && last + 1 >= first_kept && missed.len() <= buffer).then_some(missed)
        });
        (missed, replay.0, hub.shared.sender.subscribe())
    };
    let (sender, client) = mpsc::channel(buffer + 1);
    let keep_alive = admin.config.keep_alive;
    let admin = admin.clone();
    tokio::spawn(async move {
        let first: Vec<Event> = match missed {
            Some(missed) => missed.iter().map(Batch::event).collect(),
            None => snapshot(&admin, current).await.into_iter().collect(),
        };
        for event in first {
            if sender.send(event).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Ok(batch) => match sender.try_send(batch.event()) {
                        Ok(()) => {}
                        // Slow or gone: disconnect; it resumes with its last id.
                        Err(_) => return,
                    },
                    Err(_) => return,
                },
                () = sender.closed() => return,
            }
        }
    });
    Sse::new(ClientStream(client))
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}

/// `event: snapshot` of the newest tasks, as of batch `seq`.
async fn snapshot(admin: &Admin, seq: u64) -> Option<Event> {
    let records = match admin.manager.list(&TaskFilter::new().limit(SNAPSHOT)).await {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!("admin stream snapshot failed: {error}");
            Vec::new()
        }
    };
    let views: Vec<TaskView> = records.iter().map(TaskView::from).collect();
    let data = serde_json::to_string(&views).ok()?;
    Some(
        Event::default()
            .event("snapshot")
            .id(seq.to_string())
            .data(data),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: usize, error: Option<String>) -> StreamEvent {
        StreamEvent {
            id: format!("task-{n}"),
            name: "bench::noop".to_owned(),
            status: TaskStatus::Success,
            change: "succeeded".to_owned(),
            attempt: 0,
            at: "2026-11-30T04:00:00.000Z".to_owned(),
            error,
        }
    }

    #[test]
    fn batches_hold_every_change_once_within_their_size() {
        let huge = "x".repeat(BATCH_BYTES + 1);
        let changes = (0..10_000)
            .map(|n| change(n, (n == 5000).then(|| huge.clone())))
            .collect::<Vec<_>>();
        let made = batches(changes.into_iter());
        assert!(made.len() > 2, "{} batches", made.len());
        let mut ids = Vec::new();
        for batch in &made {
            let parsed: Vec<serde_json::Value> = serde_json::from_str(batch).expect("a JSON array");
            assert!(
                batch.len() <= BATCH_BYTES || parsed.len() == 1,
                "a batch over the size holds one change alone"
            );
            ids.extend(
                parsed
                    .into_iter()
                    .map(|c| c["id"].as_str().map(str::to_owned)),
            );
        }
        let expected: Vec<_> = (0..10_000).map(|n| Some(format!("task-{n}"))).collect();
        assert_eq!(ids, expected, "every change once, in order");
        assert!(batches(std::iter::empty()).is_empty());
    }
}
