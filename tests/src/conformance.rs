//! The [`Store`] contract as one suite that every backend runs.
//!
//! [`conformance`] exercises every method of the trait through the trait
//! alone, with rows built from the public types, and checks what the
//! method's documentation promises: keyed and duplicate inserts, fenced
//! changes, claims (filters, order, exclusivity, paused queues, the next
//! ready time, cancel requests, the claimer's lease), reads and listing with
//! every filter and the cursor, leases, orphans (of expired instances and of
//! owners with no lease at all) and an instance's owned ids, capped logs,
//! retention, queue counts, unfinished names, and schedules (a tick fired by racing callers on two
//! handles writes one task; pauses, `since` and unknown schedules refuse a
//! fire; definitions and state kept; listing by schedule and `run_at`); and,
//! through a `TaskManager` on the same storage, that the upkeep rescues what
//! the contract says is dead. A backend passes when the function returns;
//! otherwise it panics once, listing every check that failed and which part
//! of the contract each broke.
//!
//! Each check runs against storage of its own, named after the check, so
//! checks are independent (a failure in one cannot cascade into another)
//! and a failed check's storage names what it was testing. The backend's
//! factory is called with that name: the first call for a name must give a
//! store on new, empty storage, and later calls for the same name a second
//! handle on the same storage, as another process or host would open it
//! (the exclusivity and shared-pause checks claim and pause through two
//! handles at once).
//!
//! Times in the checks are fixed instants a whole number of milliseconds
//! apart, so a backend that keeps microseconds keeps them exactly; only
//! leases use the store's own clock, with a 50 ms lease and waits bounded by
//! [`PATIENCE`]. Each check is bounded by [`PATIENCE`] too.
//!
//! # Running it against a backend
//!
//! Call it from a `#[tokio::test]` of the backend, with a factory that
//! maps a storage name to a store, and one that maps it to a
//! [`TaskManagerBuilder`] on the same storage (called only after the store
//! was opened for that name). The SQLite backend uses one file per name in a
//! temporary directory (`tests/tests/conformance.rs`); a server backend
//! would use one schema or database per name, prefixed with something
//! unique to the run:
//!
//! ```no_run
//! use std::sync::Arc;
//! use taskflow::TaskManager;
//! use taskflow::store::{SqliteStore, Store};
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn sqlite_keeps_the_store_contract() {
//!     let dir = tempfile::tempdir().expect("a temporary directory");
//!     let root = dir.path().to_owned();
//!     let file = root.clone();
//!     taskflow_tests::conformance::conformance(
//!         move |name| {
//!             let path = root.join(format!("{name}.db"));
//!             async move {
//!                 let store = tokio::task::spawn_blocking(move || SqliteStore::open(path))
//!                     .await
//!                     .expect("opening does not panic")
//!                     .expect("the store opens");
//!                 Arc::new(store) as Arc<dyn Store>
//!             }
//!         },
//!         move |name| TaskManager::builder().snapshot_db(file.join(format!("{name}.db"))),
//!     )
//!     .await;
//! }
//! # fn main() {}
//! ```

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskflow::store::{
    BoxFuture, Change, Claimed, Demand, Expect, Fire, Fired, Inserted, InstanceInfo, LogLine,
    NewTask, QueueRow, Row, ScheduleRow, Store, StoreError, StoredTask, TaskState,
};
use taskflow::{
    CatchUp, ErrorKind, EventKind, Executor, LogLevel, LogRecord, Tags, TaskError, TaskFilter,
    TaskId, TaskManagerBuilder, TaskStatus, Tick,
};

use crate::{PATIENCE, wait_for_status, within};

/// Runs every check of the [`Store`] contract against the backend that
/// `open` opens, one after the other.
///
/// `open(name)` returns a store on the storage called `name`: new and empty
/// the first time a name is given, the same storage (another handle, as
/// another process would open it) when it is given again. `manager(name)`
/// returns a builder of a manager on that same storage, with nothing else
/// set; it is called only once `open` was called for the name. See the
/// module documentation for an example.
///
/// # Panics
///
/// When any check fails or takes longer than [`PATIENCE`]: one panic at
/// the end, listing each failed check and what it found.
pub async fn conformance<F, Fut, M>(open: F, manager: M)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn Store>> + Send + 'static,
    M: Fn(String) -> TaskManagerBuilder + Send + Sync + 'static,
{
    let open: Arc<OpenFn> =
        Arc::new(move |name| Box::pin(open(name)) as BoxFuture<'static, Arc<dyn Store>>);
    let manager: Arc<ManagerFn> = Arc::new(manager);
    let mut failed = Vec::new();
    for (name, check) in CHECKS {
        let storage = Storage {
            open: open.clone(),
            manager: manager.clone(),
            name,
        };
        // A task of its own, so a failed check is caught and reported with
        // the others instead of hiding them.
        let outcome = tokio::spawn(tokio::time::timeout(PATIENCE, check(storage))).await;
        match outcome {
            Ok(Ok(())) => println!("store contract: {name} ... ok"),
            Ok(Err(_)) => {
                println!("store contract: {name} ... FAILED");
                failed.push(format!("{name}: did not finish within {PATIENCE:?}"));
            }
            Err(error) => {
                println!("store contract: {name} ... FAILED");
                failed.push(format!("{name}: {}", panic_message(error)));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} store contract checks failed:\n- {}",
        failed.len(),
        CHECKS.len(),
        failed.join("\n- ")
    );
}

type OpenFn = dyn Fn(String) -> BoxFuture<'static, Arc<dyn Store>> + Send + Sync;
type ManagerFn = dyn Fn(String) -> TaskManagerBuilder + Send + Sync;

/// The storage one check runs on.
#[derive(Clone)]
struct Storage {
    open: Arc<OpenFn>,
    manager: Arc<ManagerFn>,
    name: &'static str,
}

impl Storage {
    /// A handle on this check's storage: empty at first, shared by every
    /// handle opened for the check.
    async fn open(&self) -> Arc<dyn Store> {
        (self.open)(self.name.to_owned()).await
    }

    /// A builder of a manager on this check's storage (opened already).
    fn manager(&self) -> TaskManagerBuilder {
        (self.manager)(self.name.to_owned())
    }
}

type Check = fn(Storage) -> BoxFuture<'static, ()>;

macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        &[$((stringify!($check), |storage| Box::pin($check(storage)) as BoxFuture<'static, ()>)),*]
    };
}

/// Every check, in the order they run.
const CHECKS: &[(&str, Check)] = checks![
    insert_keeps_every_field,
    insert_leaves_a_duplicate_id_alone,
    insert_answers_the_holder_of_a_held_key,
    insert_goes_in_once_a_key_is_released,
    insert_takes_a_task_already_final,
    insert_claims_only_when_nothing_better_waits,
    apply_fences_on_owner_and_attempt,
    apply_compares_status_and_attempts,
    apply_keeps_output_unless_given,
    apply_answers_each_change_of_a_batch,
    claim_takes_only_ready_demanded_work,
    claim_takes_at_most_the_free_slots,
    claim_orders_by_priority_run_at_and_insertion,
    claim_marks_rows_running_and_owned,
    claim_never_gives_a_task_twice,
    claim_skips_paused_queues,
    claim_reports_the_next_run_at,
    claim_carries_a_cancel_request,
    request_cancel_reaches_the_owner,
    claim_needs_a_live_lease,
    heartbeat_keeps_and_loses_leases,
    orphans_are_an_instances_running_tasks,
    expired_instances_lists_owners_without_a_lease,
    upkeep_rescues_tasks_of_owners_without_a_lease,
    get_returns_logs_in_order,
    append_logs_keeps_the_latest_lines,
    get_many_leaves_out_unknown_ids,
    list_applies_every_filter,
    list_pages_through_everything_once,
    prune_removes_only_old_finished_tasks,
    queues_count_work_and_share_pauses,
    unfinished_names_lists_each_once,
    fire_writes_one_task_per_tick,
    fire_refuses_paused_stale_and_unknown_schedules,
    schedules_keep_their_definition_and_state,
    list_filters_by_schedule_and_run_at,
];

// ------------------------------------------------------------------ helpers

/// The name most tasks here are registered under.
const NAME: &str = "conformance::job";
/// Another task name.
const OTHER: &str = "conformance::other";

/// A fixed instant `ms` milliseconds after the checks' origin.
fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000) + Duration::from_millis(ms)
}

/// A PENDING async task of [`NAME`] created (and ready) at `at(ms)`, with
/// an id that sorts by that time.
fn task(ms: u64) -> NewTask {
    named(NAME, ms)
}

/// As [`task`], registered as `name`.
fn named(name: &str, ms: u64) -> NewTask {
    NewTask::new(TaskId::at(at(ms)), name, Executor::Async, at(ms))
}

/// As [`task`], in `queue`.
fn queued(queue: &str, ms: u64) -> NewTask {
    let mut task = task(ms);
    task.queue = queue.to_owned();
    task
}

/// RUNNING for `owner` at attempt `attempts`, started at `at(started)`.
fn running(owner: &str, attempts: u32, started: u64) -> TaskState {
    let mut state = TaskState::pending(at(started));
    state.status = TaskStatus::Running;
    state.attempts = attempts;
    state.started_at = Some(at(started));
    state.owner = Some(owner.to_owned());
    state
}

/// Final `status` at `at(finished)` after `attempts` attempts, with the
/// error such a task records.
fn finished(status: TaskStatus, attempts: u32, finished: u64) -> TaskState {
    let mut state = TaskState::pending(at(0));
    state.status = status;
    state.attempts = attempts;
    state.started_at = (attempts > 0).then(|| at(0));
    state.finished_at = Some(at(finished));
    state.last_error = match status {
        TaskStatus::Failed => Some(TaskError::error("it failed")),
        TaskStatus::Cancelled => Some(TaskError::new(ErrorKind::Cancelled, "cancelled")),
        TaskStatus::Interrupted => Some(TaskError::new(ErrorKind::Interrupted, "interrupted")),
        _ => None,
    };
    state
}

/// PENDING again after `attempts` attempts, ready at `at(ready)`, first
/// started at `at(started)`: how a claimed task is given back or rescued.
fn requeued(attempts: u32, ready: u64, started: u64) -> TaskState {
    let mut state = TaskState::pending(at(ready));
    state.attempts = attempts;
    state.started_at = Some(at(started));
    state
}

fn owned(owner: &str, attempts: u32) -> Expect {
    Expect::Owned {
        owner: owner.to_owned(),
        attempts,
    }
}

fn in_status(status: TaskStatus, attempts: u32, owner: Option<&str>) -> Expect {
    Expect::Status {
        status,
        attempts,
        owner: owner.map(str::to_owned),
    }
}

/// Up to `slots` tasks of `queue` on `executor` among `names`.
fn demand(queue: &str, executor: Executor, slots: usize, names: &[&str]) -> Demand {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    Demand::new(queue, executor, slots, names.into())
}

/// The value of a store call, or a panic naming the call that failed.
fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    result.unwrap_or_else(|error| panic!("{what}: the store failed: {error} ({error:?})"))
}

/// A readable row, or a panic saying why not.
fn readable(row: &Row, what: &str) -> StoredTask {
    match row {
        Ok(task) => task.clone(),
        Err(corrupt) => panic!("{what}: a row written through the trait is unreadable: {corrupt}"),
    }
}

/// Inserts `tasks`, each of which must be written.
async fn insert(store: &dyn Store, tasks: Vec<NewTask>, what: &str) {
    let count = tasks.len();
    let answers = ok(store.insert(tasks).await, what);
    assert_eq!(answers.len(), count, "{what}: insert answers once per task");
    for (index, answer) in answers.iter().enumerate() {
        assert!(
            matches!(answer, Inserted::New),
            "{what}: task {index} of the batch was not written: {answer:?}"
        );
    }
}

/// Task `id` as stored, which must exist and be readable.
async fn get(store: &dyn Store, id: TaskId, what: &str) -> StoredTask {
    match ok(store.get(id).await, what) {
        Some(row) => readable(&row, what),
        None => panic!("{what}: task {id} is not stored"),
    }
}

async fn absent(store: &dyn Store, id: TaskId, what: &str) {
    let row = ok(store.get(id).await, what);
    assert!(row.is_none(), "{what}: task {id} is stored: {row:?}");
}

async fn apply(store: &dyn Store, changes: Vec<Change>, what: &str) -> Vec<bool> {
    let count = changes.len();
    let answers = ok(store.apply(changes).await, what);
    assert_eq!(
        answers.len(),
        count,
        "{what}: apply answers once per change"
    );
    answers
}

/// Registers `owner` (or renews its lease) for an hour, as its instance's
/// heartbeat does: a claim needs a live lease.
async fn register(store: &dyn Store, owner: &str) {
    let me = InstanceInfo::new(owner, 1, "conformance-host");
    ok(
        store.heartbeat(&me, Duration::from_secs(3600)).await,
        "heartbeat registering a claimer",
    );
}

/// Claims as `owner`'s instance would: with its lease renewed first.
async fn claim(
    store: &dyn Store,
    owner: &str,
    demand: &[Demand],
    now: SystemTime,
    what: &str,
) -> Claimed {
    register(store, owner).await;
    let claimed = ok(store.claim_ready(owner, demand, now).await, what);
    assert!(
        !claimed.lapsed,
        "{what}: a claimer holding a live lease is not lapsed"
    );
    assert!(
        claimed.corrupt.is_empty(),
        "{what}: rows written through the trait came back corrupt: {:?}",
        claimed.corrupt
    );
    claimed
}

/// Claims exactly one task of [`NAME`] in `queue` for `owner` at `now`.
async fn claim_one(store: &dyn Store, owner: &str, queue: &str, now: u64) -> StoredTask {
    let what = format!("claim_ready of one task of queue `{queue}` for {owner}");
    let demand = [demand(queue, Executor::Async, 1, &[NAME])];
    let mut claimed = claim(store, owner, &demand, at(now), &what).await;
    assert_eq!(
        claimed.tasks.len(),
        1,
        "{what}: expected one ready task, claimed {:?}",
        ids(&claimed.tasks)
    );
    claimed.tasks.remove(0)
}

fn ids(tasks: &[StoredTask]) -> BTreeSet<TaskId> {
    tasks.iter().map(|task| task.record.id).collect()
}

/// The mutable part of a stored task, to compare with what was written.
fn state_of(task: &StoredTask) -> TaskState {
    let record = &task.record;
    let mut state = TaskState::pending(record.run_at);
    state.status = record.status;
    state.attempts = record.attempts;
    state.started_at = record.started_at;
    state.finished_at = record.finished_at;
    state.last_error = record.last_error.clone();
    state.owner = task.owner.clone();
    state.output = task.output.clone();
    state
}

/// Checks that `found` is `task` as it was inserted, field by field.
fn assert_stored_as(found: &StoredTask, task: &NewTask, what: &str) {
    let record = &found.record;
    assert_eq!(record.id, task.id, "{what}: the id differs");
    assert_eq!(record.name, task.name, "{what}: the name was not kept");
    assert_eq!(
        record.executor, task.executor,
        "{what}: the executor was not kept"
    );
    assert_eq!(record.queue, task.queue, "{what}: the queue was not kept");
    assert_eq!(
        record.priority, task.priority,
        "{what}: the priority was not kept"
    );
    assert_eq!(
        record.created_at, task.created_at,
        "{what}: created_at was not kept"
    );
    assert_eq!(record.tags, task.tags, "{what}: the tags were not kept");
    assert_eq!(found.args, task.args, "{what}: the arguments were not kept");
    assert_eq!(
        found.idempotency_key, task.idempotency_key,
        "{what}: the idempotency key was not kept"
    );
    assert_eq!(
        state_of(found),
        task.state,
        "{what}: the state was not kept"
    );
    assert!(
        !found.cancel_requested,
        "{what}: a new task has no cancel request"
    );
    assert_eq!(
        record.logs_dropped, 0,
        "{what}: a new task has dropped no logs"
    );
}

/// A log line of attempt `attempt` at `at(ms)`.
fn line(task: TaskId, level: LogLevel, attempt: u32, ms: u64, message: &str) -> LogLine {
    let mut record = LogRecord::new(level, "conformance", message).in_attempt(attempt);
    record.at = at(ms);
    LogLine::new(task, record)
}

/// Numbered lines `from..=to` of `task`.
fn numbered(task: TaskId, from: u64, to: u64) -> Vec<LogLine> {
    (from..=to)
        .map(|n| line(task, LogLevel::Info, 0, n, &format!("line {n}")))
        .collect()
}

fn messages(task: &StoredTask) -> Vec<String> {
    task.record
        .logs
        .iter()
        .map(|line| line.message.clone())
        .collect()
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => match payload.downcast::<String>() {
            Ok(message) => *message,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(message) => (*message).to_owned(),
                Err(_) => "panicked with a non-text payload".to_owned(),
            },
        },
        Err(error) => format!("did not run to its end: {error}"),
    }
}

// ------------------------------------------------------------------- insert

async fn insert_keeps_every_field(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let answers = ok(store.insert(Vec::new()).await, "insert of no tasks");
    assert!(answers.is_empty(), "insert: an empty batch has no answers");

    let mut full = task(1);
    full.executor = Executor::Process;
    full.queue = "reports".into();
    full.priority = -7;
    full.args = vec![0, 1, 2, 255];
    full.tags = Tags::from_pairs([("tenant", "acme"), ("source", "api")]);
    full.idempotency_key = Some("report-42".into());
    full.state.run_at = at(5_000);
    let mut plain = named(OTHER, 2);
    plain.executor = Executor::Thread;
    plain.priority = i16::MAX;
    let mut delayed = task(3);
    delayed.priority = i16::MIN;
    delayed.state.run_at = at(86_400_000);
    insert(
        store,
        vec![full.clone(), plain.clone(), delayed.clone()],
        "insert of new tasks",
    )
    .await;
    for task in [&full, &plain, &delayed] {
        let found = get(store, task.id, "get after insert").await;
        assert_stored_as(&found, task, "insert then get");
        assert!(found.record.logs.is_empty(), "get: a new task has no logs");
    }
    absent(store, TaskId::at(at(4)), "get of an id never inserted").await;
}

async fn insert_leaves_a_duplicate_id_alone(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let original = task(1);
    insert(store, vec![original.clone()], "insert").await;
    let mut impostor = original.clone();
    impostor.name = OTHER.into();
    impostor.args = vec![9, 9];
    impostor.state = finished(TaskStatus::Success, 1, 2);
    let fresh = task(3);
    let answers = ok(
        store.insert(vec![impostor, fresh.clone()]).await,
        "insert of a stored id",
    );
    assert!(
        matches!(answers.as_slice(), [Inserted::Duplicate, Inserted::New]),
        "insert: a stored id must answer Duplicate and the rest of the batch go in, got {answers:?}"
    );
    let kept = get(store, original.id, "get of the duplicated id").await;
    assert_stored_as(
        &kept,
        &original,
        "insert of a duplicate id must leave the row as it was",
    );
    get(store, fresh.id, "get of the task after the duplicate").await;
}

async fn insert_answers_the_holder_of_a_held_key(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let holders = [
        (TaskStatus::Pending, TaskState::pending(at(0))),
        (TaskStatus::Running, running("conformance-a", 1, 5)),
        (TaskStatus::Success, {
            let mut state = finished(TaskStatus::Success, 1, 5);
            state.output = Some(b"the output".to_vec());
            state
        }),
    ];
    for (index, (status, state)) in holders.into_iter().enumerate() {
        let ms = 100 * index as u64;
        let key = format!("held-by-{status}");
        let mut holder = task(ms);
        holder.idempotency_key = Some(key.clone());
        holder.state = state;
        insert(store, vec![holder.clone()], "insert of a key's holder").await;

        let mut newcomer = task(ms + 1);
        newcomer.idempotency_key = Some(key.clone());
        let what = format!("insert with a key held by a {status} task");
        let answers = ok(store.insert(vec![newcomer.clone()]).await, &what);
        match answers.as_slice() {
            [Inserted::Existing(row)] => {
                let found = readable(row, &what);
                assert_stored_as(&found, &holder, &format!("{what}: the holder answered"));
            }
            other => panic!("{what}: expected Existing with the holder, got {other:?}"),
        }
        absent(
            store,
            newcomer.id,
            &format!("{what}: nothing is written for it"),
        )
        .await;

        let mut other_name = named(OTHER, ms + 2);
        other_name.idempotency_key = Some(key);
        insert(
            store,
            vec![other_name],
            &format!("{what}, by a task of another name (keys are per name)"),
        )
        .await;
    }

    let mut first = task(1_000);
    first.idempotency_key = Some("one-batch".into());
    let mut second = task(1_001);
    second.idempotency_key = Some("one-batch".into());
    let what = "insert of two tasks with one key in one batch";
    let answers = ok(
        store.insert(vec![first.clone(), second.clone()]).await,
        what,
    );
    match answers.as_slice() {
        [Inserted::New, Inserted::Existing(row)] => {
            let found = readable(row, what);
            assert_eq!(
                found.record.id, first.id,
                "{what}: the second's holder is the first"
            );
        }
        other => panic!("{what}: expected [New, Existing(first)], got {other:?}"),
    }
    absent(store, second.id, what).await;
}

async fn insert_goes_in_once_a_key_is_released(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    for (index, status) in [
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
    ]
    .into_iter()
    .enumerate()
    {
        let ms = 100 * index as u64;
        let key = format!("released-by-{status}");
        let mut released = task(ms);
        released.idempotency_key = Some(key.clone());
        released.state = finished(status, 1, ms + 1);
        insert(store, vec![released], "insert of a finished keyed task").await;
        let mut newcomer = task(ms + 2);
        newcomer.idempotency_key = Some(key.clone());
        insert(
            store,
            vec![newcomer.clone()],
            &format!("insert with a key released by a {status} task"),
        )
        .await;
        let mut third = task(ms + 3);
        third.idempotency_key = Some(key);
        let answers = ok(store.insert(vec![third]).await, "insert after a release");
        assert!(
            matches!(answers.as_slice(), [Inserted::Existing(row)]
                if row.as_ref().as_ref().is_ok_and(|t| t.record.id == newcomer.id)),
            "insert: once a released key is taken again, its new holder holds it; got {answers:?}"
        );
    }

    // Released by a change: a PENDING holder cancelled.
    let mut holder = task(1_000);
    holder.idempotency_key = Some("cancelled-later".into());
    insert(store, vec![holder.clone()], "insert of a keyed task").await;
    let cancel = Change::new(
        holder.id,
        in_status(TaskStatus::Pending, 0, None),
        finished(TaskStatus::Cancelled, 0, 1_001),
    );
    let answers = apply(store, vec![cancel], "apply of a cancellation").await;
    assert_eq!(answers, [true], "apply: a PENDING task can be cancelled");
    let mut newcomer = task(1_002);
    newcomer.idempotency_key = Some("cancelled-later".into());
    insert(
        store,
        vec![newcomer],
        "insert with a key whose holder was cancelled by apply",
    )
    .await;

    // Released by a claimed task that failed.
    let mut holder = queued("keyed", 2_000);
    holder.idempotency_key = Some("failed-later".into());
    insert(store, vec![holder.clone()], "insert of a keyed task").await;
    let claimed = claim_one(store, "conformance-a", "keyed", 2_001).await;
    let mut failed = finished(TaskStatus::Failed, 1, 2_002);
    failed.started_at = claimed.record.started_at;
    let answers = apply(
        store,
        vec![Change::new(holder.id, owned("conformance-a", 1), failed)],
        "apply of a failure by the owner",
    )
    .await;
    assert_eq!(answers, [true], "apply: the owner can fail its task");
    let mut newcomer = task(2_003);
    newcomer.idempotency_key = Some("failed-later".into());
    insert(
        store,
        vec![newcomer],
        "insert with a key whose holder failed",
    )
    .await;
}

async fn insert_takes_a_task_already_final(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let mut cancelled = queued("finals", 1);
    cancelled.idempotency_key = Some("cancelled-early".into());
    cancelled.state = finished(TaskStatus::Cancelled, 0, 2);
    insert(
        store,
        vec![cancelled.clone()],
        "insert of a task cancelled before it was first written",
    )
    .await;
    let found = get(store, cancelled.id, "get of a task inserted final").await;
    assert_stored_as(&found, &cancelled, "insert of a final task");

    let claimed = claim(
        store,
        "conformance-a",
        &[demand("finals", Executor::Async, 10, &[NAME])],
        at(1_000),
        "claim_ready",
    )
    .await;
    assert!(
        claimed.tasks.is_empty(),
        "claim_ready: a task inserted CANCELLED must never be claimed; claimed {:?}",
        ids(&claimed.tasks)
    );
    let names = ok(store.unfinished_names().await, "unfinished_names");
    assert!(
        names.is_empty(),
        "unfinished_names: a CANCELLED task is finished; got {names:?}"
    );
    let mut newcomer = queued("finals", 3);
    newcomer.idempotency_key = Some("cancelled-early".into());
    insert(
        store,
        vec![newcomer],
        "insert with the key of a task inserted CANCELLED (it holds no key)",
    )
    .await;
}

// -------------------------------------------------------------------- apply

/// A task inserted with `claim`, as one the claimer would take at once.
fn claiming(queue: &str, ms: u64, priority: i16) -> NewTask {
    let mut task = queued(queue, ms);
    task.priority = priority;
    task.claim = Some("conformance-me".to_owned());
    task
}

async fn insert_claims_only_when_nothing_better_waits(storage: Storage) {
    let store = storage.open().await;
    register(store.as_ref(), "conformance-me").await;
    let answer = |answers: Vec<Inserted>, what: &str| {
        let mut answers = answers.into_iter();
        let answer = answers.next().expect("one answer per task");
        assert!(answers.next().is_none(), "{what}: one answer per task");
        answer
    };
    // Nothing waits: claimed as it goes in.
    let first = claiming("claims", 1, 0);
    let got = answer(
        ok(store.insert(vec![first.clone()]).await, "insert"),
        "insert",
    );
    assert!(
        matches!(got, Inserted::Claimed),
        "a claim with nothing waiting is taken: {got:?}"
    );
    let stored = get(store.as_ref(), first.id, "get").await;
    assert_eq!(
        stored.record.status,
        TaskStatus::Running,
        "a claimed insert is RUNNING"
    );
    assert_eq!(
        stored.owner.as_deref(),
        Some("conformance-me"),
        "owned by the claimer"
    );
    assert_eq!(
        stored.record.attempts, 1,
        "a claimed insert starts its first attempt"
    );
    assert!(
        stored.record.started_at.is_some(),
        "a claimed insert is started"
    );
    // A ready task of the same priority waits: no jumping the queue.
    insert(
        store.as_ref(),
        vec![{
            let mut t = queued("claims", 2);
            t.priority = 5;
            t
        }],
        "insert",
    )
    .await;
    let same = claiming("claims", 3, 5);
    let got = answer(
        ok(store.insert(vec![same.clone()]).await, "insert"),
        "insert",
    );
    assert!(
        matches!(got, Inserted::New),
        "a claim behind an equal priority goes in PENDING: {got:?}"
    );
    assert_eq!(
        get(store.as_ref(), same.id, "get").await.record.status,
        TaskStatus::Pending
    );
    // A higher priority than everything waiting may start.
    let urgent = claiming("claims", 4, 9);
    let got = answer(
        ok(store.insert(vec![urgent.clone()]).await, "insert"),
        "insert",
    );
    assert!(
        matches!(got, Inserted::Claimed),
        "a claim above every waiting priority is taken: {got:?}"
    );
    // A paused queue, and a task not ready yet, are never claimed.
    ok(store.set_paused("held", true).await, "set_paused");
    let paused = claiming("held", 5, 0);
    let got = answer(ok(store.insert(vec![paused]).await, "insert"), "insert");
    assert!(
        matches!(got, Inserted::New),
        "a claim in a paused queue goes in PENDING: {got:?}"
    );
    let mut later = claiming("later", 6, 0);
    later.state.run_at = SystemTime::now() + Duration::from_secs(3600);
    let got = answer(
        ok(store.insert(vec![later.clone()]).await, "insert"),
        "insert",
    );
    assert!(
        matches!(got, Inserted::New),
        "a claim of a task not ready goes in PENDING: {got:?}"
    );
    assert_eq!(
        get(store.as_ref(), later.id, "get").await.record.status,
        TaskStatus::Pending
    );
}

async fn apply_fences_on_owner_and_attempt(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let first = task(1);
    insert(store, vec![first.clone()], "insert").await;
    claim_one(store, "conformance-a", &first.queue, 10).await;
    let before = get(store, first.id, "get after the claim").await;
    let mut done = finished(TaskStatus::Success, 1, 20);
    done.started_at = before.record.started_at;
    done.output = Some(b"done".to_vec());
    let stale = vec![
        Change::new(first.id, owned("conformance-b", 1), done.clone()),
        Change::new(first.id, owned("conformance-a", 2), done.clone()),
        Change::new(first.id, owned("conformance-a", 0), done.clone()),
    ];
    let answers = apply(store, stale, "apply fenced on a wrong owner or attempt").await;
    assert_eq!(
        answers,
        [false, false, false],
        "apply: Expect::Owned must refuse another owner and any other attempt count"
    );
    let after = get(store, first.id, "get after refused changes").await;
    assert_eq!(
        state_of(&after),
        state_of(&before),
        "apply: a refused change must leave the row as it was"
    );
    let answers = apply(
        store,
        vec![Change::new(
            first.id,
            owned("conformance-a", 1),
            done.clone(),
        )],
        "apply by the owner at its attempt",
    )
    .await;
    assert_eq!(
        answers,
        [true],
        "apply: the owner at its attempt must be let through"
    );
    let after = get(store, first.id, "get after the owner's change").await;
    assert_eq!(
        state_of(&after),
        done,
        "apply: a written change sets every field of the state"
    );
    let answers = apply(
        store,
        vec![Change::new(
            first.id,
            owned("conformance-a", 1),
            done.clone(),
        )],
        "apply by the owner of a task no longer RUNNING",
    )
    .await;
    assert_eq!(
        answers,
        [false],
        "apply: Expect::Owned must refuse a row that is no longer RUNNING"
    );

    // Claimed, given back, claimed by another: the first claim is stale.
    let second = task(2);
    insert(store, vec![second.clone()], "insert").await;
    claim_one(store, "conformance-a", &second.queue, 30).await;
    let answers = apply(
        store,
        vec![Change::new(
            second.id,
            owned("conformance-a", 1),
            requeued(1, 31, 30),
        )],
        "apply giving a claimed task back",
    )
    .await;
    assert_eq!(answers, [true], "apply: the owner can give its task back");
    let reclaimed = claim_one(store, "conformance-b", &second.queue, 40).await;
    assert_eq!(
        reclaimed.record.attempts, 2,
        "claim_ready: the second claim is attempt 2"
    );
    let mut finish = finished(TaskStatus::Success, 2, 50);
    finish.started_at = Some(at(30));
    let stale = vec![
        Change::new(second.id, owned("conformance-a", 1), finish.clone()),
        Change::new(second.id, owned("conformance-b", 1), finish.clone()),
        Change::new(second.id, owned("conformance-a", 2), finish.clone()),
    ];
    let answers = apply(store, stale, "apply by a stale claim").await;
    assert_eq!(
        answers,
        [false, false, false],
        "apply: after a reclaim, the earlier owner or attempt must be refused"
    );
    let answers = apply(
        store,
        vec![Change::new(second.id, owned("conformance-b", 2), finish)],
        "apply by the current claim",
    )
    .await;
    assert_eq!(
        answers,
        [true],
        "apply: the current claim must be let through"
    );

    // A PENDING row whose owner column still names the instance.
    let mut third = task(3);
    third.state = requeued(1, 3, 3);
    third.state.owner = Some("conformance-a".into());
    insert(store, vec![third.clone()], "insert").await;
    let answers = apply(
        store,
        vec![Change::new(
            third.id,
            owned("conformance-a", 1),
            finished(TaskStatus::Success, 1, 60),
        )],
        "apply fenced on ownership of a PENDING row",
    )
    .await;
    assert_eq!(
        answers,
        [false],
        "apply: Expect::Owned requires RUNNING, not just the owner and attempt"
    );
}

async fn apply_compares_status_and_attempts(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let pending = task(1);
    let mut orphan = task(2);
    orphan.state = running("conformance-a", 1, 3);
    let mut anyones = task(4);
    anyones.state = running("conformance-c", 2, 5);
    insert(
        store,
        vec![pending.clone(), orphan.clone(), anyones.clone()],
        "insert",
    )
    .await;

    let cancelled = finished(TaskStatus::Cancelled, 0, 10);
    let wrong = vec![
        Change::new(
            pending.id,
            in_status(TaskStatus::Running, 0, None),
            cancelled.clone(),
        ),
        Change::new(
            pending.id,
            in_status(TaskStatus::Pending, 1, None),
            cancelled.clone(),
        ),
        Change::new(
            pending.id,
            in_status(TaskStatus::Success, 0, None),
            cancelled.clone(),
        ),
    ];
    let answers = apply(
        store,
        wrong,
        "apply expecting another status or attempt count",
    )
    .await;
    assert_eq!(
        answers,
        [false, false, false],
        "apply: Expect::Status must refuse a row in another status or at another attempt count"
    );
    let found = get(store, pending.id, "get after refused changes").await;
    assert_stored_as(
        &found,
        &pending,
        "apply: a refused change leaves the row as it was",
    );
    let answers = apply(
        store,
        vec![Change::new(
            pending.id,
            in_status(TaskStatus::Pending, 0, None),
            cancelled.clone(),
        )],
        "apply expecting PENDING at attempt 0",
    )
    .await;
    assert_eq!(
        answers,
        [true],
        "apply: Expect::Status must let a matching row change"
    );
    let found = get(store, pending.id, "get after the change").await;
    assert_eq!(
        state_of(&found),
        cancelled,
        "apply: the new state is written"
    );

    // An orphan's rescue names the dead owner.
    let rescued = requeued(1, 20, 3);
    let wrong = vec![
        Change::new(
            orphan.id,
            in_status(TaskStatus::Running, 1, Some("conformance-b")),
            rescued.clone(),
        ),
        Change::new(
            orphan.id,
            in_status(TaskStatus::Running, 2, Some("conformance-a")),
            rescued.clone(),
        ),
    ];
    let answers = apply(store, wrong, "apply expecting another owner or attempt").await;
    assert_eq!(
        answers,
        [false, false],
        "apply: Expect::Status with an owner must refuse another owner or attempt count"
    );
    let answers = apply(
        store,
        vec![Change::new(
            orphan.id,
            in_status(TaskStatus::Running, 1, Some("conformance-a")),
            rescued.clone(),
        )],
        "apply rescuing an orphan",
    )
    .await;
    assert_eq!(
        answers,
        [true],
        "apply: Expect::Status with the right owner must let the rescue through"
    );
    let found = get(store, orphan.id, "get after the rescue").await;
    assert_eq!(
        state_of(&found),
        rescued,
        "apply: a rescued row is PENDING and unowned"
    );

    // Without an owner, whoever owns it.
    let interrupted = finished(TaskStatus::Interrupted, 2, 30);
    let answers = apply(
        store,
        vec![Change::new(
            anyones.id,
            in_status(TaskStatus::Running, 2, None),
            interrupted.clone(),
        )],
        "apply expecting RUNNING with any owner",
    )
    .await;
    assert_eq!(
        answers,
        [true],
        "apply: Expect::Status without an owner must match any owner"
    );
    let found = get(store, anyones.id, "get after the change").await;
    assert_eq!(
        state_of(&found),
        interrupted,
        "apply: the new state is written"
    );
}

async fn apply_keeps_output_unless_given(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let mut keyed = task(1);
    keyed.idempotency_key = Some("with-output".into());
    insert(store, vec![keyed.clone()], "insert").await;
    let claimed = claim_one(store, "conformance-a", &keyed.queue, 2).await;
    let mut success = finished(TaskStatus::Success, 1, 3);
    success.started_at = claimed.record.started_at;
    success.output = Some(b"first".to_vec());
    let answers = apply(
        store,
        vec![Change::new(
            keyed.id,
            owned("conformance-a", 1),
            success.clone(),
        )],
        "apply of a success with output",
    )
    .await;
    assert_eq!(answers, [true], "apply: the owner can record a success");
    let found = get(store, keyed.id, "get after the success").await;
    assert_eq!(
        found.output.as_deref(),
        Some(&b"first"[..]),
        "apply: the output is stored"
    );

    let mut without = success.clone();
    without.output = None;
    let answers = apply(
        store,
        vec![Change::new(
            keyed.id,
            in_status(TaskStatus::Success, 1, None),
            without,
        )],
        "apply without output",
    )
    .await;
    assert_eq!(
        answers,
        [true],
        "apply: a SUCCESS row matches Expect::Status SUCCESS"
    );
    let found = get(store, keyed.id, "get after a change without output").await;
    assert_eq!(
        found.output.as_deref(),
        Some(&b"first"[..]),
        "apply: a change without output must keep the stored output (coalesce)"
    );

    let mut replaced = success.clone();
    replaced.output = Some(b"second".to_vec());
    let answers = apply(
        store,
        vec![Change::new(
            keyed.id,
            in_status(TaskStatus::Success, 1, None),
            replaced,
        )],
        "apply with another output",
    )
    .await;
    assert_eq!(
        answers,
        [true],
        "apply: a SUCCESS row matches Expect::Status SUCCESS"
    );
    let found = get(store, keyed.id, "get after a change with output").await;
    assert_eq!(
        found.output.as_deref(),
        Some(&b"second"[..]),
        "apply: a change with output must replace the stored output"
    );

    let mut newcomer = task(4);
    newcomer.idempotency_key = Some("with-output".into());
    let answers = ok(store.insert(vec![newcomer]).await, "insert with the key");
    match answers.as_slice() {
        [Inserted::Existing(row)] => assert_eq!(
            readable(row, "insert with the key").output.as_deref(),
            Some(&b"second"[..]),
            "insert: the holder answered carries its output"
        ),
        other => panic!("insert: a key held by a SUCCESS task answers Existing, got {other:?}"),
    }
}

async fn apply_answers_each_change_of_a_batch(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let (first, second, third) = (task(1), task(2), task(3));
    insert(
        store,
        vec![first.clone(), second.clone(), third.clone()],
        "insert",
    )
    .await;
    let unknown = TaskId::at(at(4));
    let cancelled = finished(TaskStatus::Cancelled, 0, 10);
    let unless_started = in_status(TaskStatus::Pending, 0, None);
    let batch = vec![
        Change::new(first.id, unless_started.clone(), cancelled.clone()),
        Change::new(
            second.id,
            in_status(TaskStatus::Running, 0, None),
            cancelled.clone(),
        ),
        Change::new(third.id, unless_started.clone(), cancelled.clone()),
        Change::new(unknown, unless_started.clone(), cancelled.clone()),
        // Fenced on the row as the first change of this batch left it.
        Change::new(
            first.id,
            unless_started,
            finished(TaskStatus::Failed, 0, 11),
        ),
    ];
    let answers = apply(store, batch, "apply of a mixed batch").await;
    assert_eq!(
        answers,
        [true, false, true, false, false],
        "apply: each change of a batch is answered for itself, in order, \
         each seeing the row as the changes before it left it"
    );
    let found = get(store, first.id, "get").await;
    assert_eq!(
        state_of(&found),
        cancelled,
        "apply: the first change was written"
    );
    let found = get(store, second.id, "get").await;
    assert_stored_as(
        &found,
        &second,
        "apply: a refused change in a batch writes nothing",
    );
    let found = get(store, third.id, "get").await;
    assert_eq!(
        state_of(&found),
        cancelled,
        "apply: the third change was written"
    );
    absent(
        store,
        unknown,
        "apply: a change to an unknown task creates no row",
    )
    .await;
}

// -------------------------------------------------------------------- claim

async fn claim_takes_only_ready_demanded_work(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let now = 1_000;
    let mut ready = queued("work", 1);
    ready.state.run_at = at(100);
    let mut due_now = queued("work", 2);
    due_now.state.run_at = at(now);
    let mut later = queued("work", 3);
    later.state.run_at = at(now + 1);
    let mut taken = queued("work", 4);
    taken.state = running("conformance-x", 1, 5);
    let mut succeeded = queued("work", 5);
    succeeded.state = finished(TaskStatus::Success, 1, 6);
    let mut failed = queued("work", 6);
    failed.state = finished(TaskStatus::Failed, 1, 7);
    let elsewhere = queued("elsewhere", 7);
    let mut threaded = queued("work", 8);
    threaded.executor = Executor::Thread;
    let mut unlisted = named("conformance::unlisted", 9);
    unlisted.queue = "work".into();
    let everything = vec![
        ready.clone(),
        due_now.clone(),
        later.clone(),
        taken.clone(),
        succeeded.clone(),
        failed.clone(),
        elsewhere.clone(),
        threaded.clone(),
        unlisted.clone(),
    ];
    insert(store, everything.clone(), "insert").await;

    let claimed = claim(
        store,
        "conformance-a",
        &[demand("work", Executor::Async, 100, &[NAME])],
        at(now),
        "claim_ready",
    )
    .await;
    assert_eq!(
        ids(&claimed.tasks),
        BTreeSet::from([ready.id, due_now.id]),
        "claim_ready must take exactly the PENDING tasks of the demanded queue, executor and \
         names whose run_at is at or before now"
    );
    for task in [
        &later, &taken, &succeeded, &failed, &elsewhere, &threaded, &unlisted,
    ] {
        let found = get(store, task.id, "get of a task not claimed").await;
        assert_stored_as(
            &found,
            task,
            "claim_ready must leave a task it did not claim as it was",
        );
    }

    for (what, demand, expected) in [
        (
            "another executor",
            demand("work", Executor::Thread, 100, &[NAME]),
            threaded.id,
        ),
        (
            "another name",
            demand("work", Executor::Async, 100, &["conformance::unlisted"]),
            unlisted.id,
        ),
        (
            "another queue",
            demand("elsewhere", Executor::Async, 100, &[NAME]),
            elsewhere.id,
        ),
    ] {
        let claimed = claim(store, "conformance-a", &[demand], at(now), "claim_ready").await;
        assert_eq!(
            ids(&claimed.tasks),
            BTreeSet::from([expected]),
            "claim_ready of {what} must take exactly its ready task"
        );
    }
}

async fn claim_takes_at_most_the_free_slots(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let tasks: Vec<NewTask> = (0..5).map(|n| queued("slots", n)).collect();
    insert(store, tasks.clone(), "insert").await;
    let mut seen = BTreeSet::new();
    for (slots, expected) in [(2, 2), (0, 0), (2, 2), (2, 1), (2, 0)] {
        let claimed = claim(
            store,
            "conformance-a",
            &[demand("slots", Executor::Async, slots, &[NAME])],
            at(1_000),
            "claim_ready",
        )
        .await;
        assert_eq!(
            claimed.tasks.len(),
            expected,
            "claim_ready with {slots} slots and {} ready tasks left must claim {expected}",
            tasks.len() - seen.len()
        );
        for id in ids(&claimed.tasks) {
            assert!(seen.insert(id), "claim_ready: task {id} was claimed twice");
        }
    }

    let two: Vec<NewTask> = (10..12).map(|n| queued("first", n)).collect();
    let three: Vec<NewTask> = (20..23).map(|n| queued("second", n)).collect();
    insert(store, two.iter().chain(&three).cloned().collect(), "insert").await;
    let claimed = claim(
        store,
        "conformance-a",
        &[
            demand("first", Executor::Async, 1, &[NAME]),
            demand("second", Executor::Async, 5, &[NAME]),
        ],
        at(1_000),
        "claim_ready of two demands",
    )
    .await;
    let per_queue = |queue: &str| {
        claimed
            .tasks
            .iter()
            .filter(|task| task.record.queue == queue)
            .count()
    };
    assert_eq!(
        (per_queue("first"), per_queue("second")),
        (1, 3),
        "claim_ready: each demand is served up to its own slots"
    );
}

async fn claim_orders_by_priority_run_at_and_insertion(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let queue = "ordered";
    let make = |ms: u64, priority: i16, run_at: u64| {
        let mut task = queued(queue, ms);
        task.priority = priority;
        task.state.run_at = at(run_at);
        task
    };
    // Ids sort by creation time, which is not insertion order here: the
    // claim must follow insertion.
    let low = make(10, -1, 100);
    let later_run = make(20, 0, 102);
    let inserted_first = make(40, 0, 100);
    let inserted_second = make(30, 0, 100);
    let high = make(50, 5, 103);
    let inserted_last = make(5, 0, 100);
    insert(
        store,
        vec![
            low.clone(),
            later_run.clone(),
            inserted_first.clone(),
            inserted_second.clone(),
            high.clone(),
        ],
        "insert",
    )
    .await;
    insert(store, vec![inserted_last.clone()], "a later insert").await;
    let labels: HashMap<TaskId, &str> = HashMap::from([
        (low.id, "priority -1"),
        (later_run.id, "priority 0, later run_at"),
        (inserted_first.id, "priority 0, inserted first"),
        (inserted_second.id, "priority 0, inserted second"),
        (high.id, "priority 5, latest run_at"),
        (inserted_last.id, "priority 0, inserted last, oldest id"),
    ]);
    let expected = [
        high.id,
        inserted_first.id,
        inserted_second.id,
        inserted_last.id,
        later_run.id,
        low.id,
    ];
    let mut order = Vec::new();
    for _ in 0..expected.len() {
        let claimed = claim_one(store, "conformance-a", queue, 1_000).await;
        order.push(labels[&claimed.record.id]);
    }
    let expected: Vec<&str> = expected.iter().map(|id| labels[id]).collect();
    assert_eq!(
        order, expected,
        "claim_ready must take the highest priority first, then the earliest run_at, \
         then the first inserted"
    );
}

async fn claim_marks_rows_running_and_owned(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let mut new = queued("marks", 1);
    new.args = vec![4, 2];
    new.tags = Tags::from_pairs([("tenant", "acme")]);
    new.priority = 3;
    insert(store, vec![new.clone()], "insert").await;
    let claimed = claim_one(store, "conformance-a", "marks", 500).await;
    let mut expected = running("conformance-a", 1, 500);
    expected.run_at = new.state.run_at;
    assert_eq!(
        state_of(&claimed),
        expected,
        "claim_ready must answer the row RUNNING, owned by the claimer, at attempt 1, \
         started now"
    );
    assert_eq!(
        claimed.args, new.args,
        "claim_ready answers the task's arguments"
    );
    assert_eq!(
        claimed.record.tags, new.tags,
        "claim_ready answers the task's tags"
    );
    assert_eq!(
        claimed.record.priority, 3,
        "claim_ready answers the task's priority"
    );
    assert!(
        !claimed.cancel_requested,
        "claim_ready: nobody asked to cancel it"
    );
    let stored = get(store, new.id, "get after the claim").await;
    assert_eq!(
        state_of(&stored),
        expected,
        "claim_ready must store the row RUNNING, owned, at attempt 1, started now"
    );

    let answers = apply(
        store,
        vec![Change::new(
            new.id,
            owned("conformance-a", 1),
            requeued(1, 600, 500),
        )],
        "apply giving the task back",
    )
    .await;
    assert_eq!(answers, [true], "apply: the owner can give its task back");
    let again = claim_one(store, "conformance-b", "marks", 700).await;
    let mut expected = running("conformance-b", 2, 500);
    expected.run_at = at(600);
    assert_eq!(
        state_of(&again),
        expected,
        "claim_ready must raise the attempt count and keep the first started_at"
    );
    let stored = get(store, new.id, "get after the second claim").await;
    assert_eq!(
        state_of(&stored),
        expected,
        "claim_ready: the row is as answered"
    );
}

async fn claim_never_gives_a_task_twice(storage: Storage) {
    const TASKS: u64 = 60;
    const CLAIMERS: usize = 4;
    let first = storage.open().await;
    let second = storage.open().await;
    let tasks: Vec<NewTask> = (0..TASKS).map(|n| queued("contended", n)).collect();
    insert(first.as_ref(), tasks.clone(), "insert").await;

    let mut claimers = Vec::new();
    for index in 0..CLAIMERS {
        // Two claimers on each handle: concurrent calls on one store, and
        // on two handles of one storage.
        let store = match index % 2 {
            0 => first.clone(),
            _ => second.clone(),
        };
        claimers.push(tokio::spawn(async move {
            let owner = format!("conformance-{index}");
            let demand = [demand("contended", Executor::Async, 3, &[NAME])];
            let mut got = Vec::new();
            for _ in 0..TASKS {
                let claimed = claim(
                    store.as_ref(),
                    &owner,
                    &demand,
                    at(10_000),
                    "concurrent claim_ready",
                )
                .await;
                if claimed.tasks.is_empty() {
                    break;
                }
                got.extend(claimed.tasks.into_iter().map(|task| task.record.id));
                tokio::task::yield_now().await;
            }
            (owner, got)
        }));
    }
    let mut owners: HashMap<TaskId, String> = HashMap::new();
    for claimer in claimers {
        let (owner, got) = claimer.await.expect("a claimer does not panic");
        for id in got {
            if let Some(earlier) = owners.insert(id, owner.clone()) {
                panic!("claim_ready gave task {id} to both {earlier} and {owner}");
            }
        }
    }
    assert_eq!(
        owners.len() as u64,
        TASKS,
        "concurrent claimers together must claim every ready task"
    );
    let all: Vec<TaskId> = tasks.iter().map(|task| task.id).collect();
    let rows = ok(second.get_many(&all).await, "get_many");
    assert_eq!(rows.len(), all.len(), "get_many returns every stored task");
    for row in &rows {
        let task = readable(row, "get_many");
        let owner = &owners[&task.record.id];
        assert_eq!(
            (
                task.record.status,
                task.owner.as_ref(),
                task.record.attempts
            ),
            (TaskStatus::Running, Some(owner), 1),
            "claim_ready: a claimed row is RUNNING, owned by the claimer that got it, attempt 1"
        );
    }
}

async fn claim_skips_paused_queues(storage: Storage) {
    let store = storage.open().await;
    let other = storage.open().await;
    let ready = queued("pausable", 1);
    let mut future = queued("pausable", 2);
    future.state.run_at = at(5_000);
    insert(
        store.as_ref(),
        vec![ready.clone(), future.clone()],
        "insert",
    )
    .await;
    ok(other.set_paused("pausable", true).await, "set_paused");
    let demand = [demand("pausable", Executor::Async, 10, &[NAME])];
    let claimed = claim(
        store.as_ref(),
        "conformance-a",
        &demand,
        at(1_000),
        "claim_ready",
    )
    .await;
    assert!(
        claimed.tasks.is_empty(),
        "claim_ready must skip a queue paused (through another handle); claimed {:?}",
        ids(&claimed.tasks)
    );
    assert_eq!(
        claimed.next_run_at, None,
        "claim_ready: a paused queue has no next ready task"
    );
    ok(other.set_paused("pausable", false).await, "set_paused");
    let claimed = claim(
        store.as_ref(),
        "conformance-a",
        &demand,
        at(1_000),
        "claim_ready",
    )
    .await;
    assert_eq!(
        ids(&claimed.tasks),
        BTreeSet::from([ready.id]),
        "claim_ready must claim from a resumed queue"
    );
    assert_eq!(
        claimed.next_run_at,
        Some(at(5_000)),
        "claim_ready: a resumed queue's delayed task is next"
    );
}

async fn claim_reports_the_next_run_at(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let delayed = |queue: &str, ms: u64, run_at: u64| {
        let mut task = queued(queue, ms);
        task.state.run_at = at(run_at);
        task
    };
    let ready = delayed("soon", 1, 100);
    insert(
        store,
        vec![
            ready.clone(),
            delayed("soon", 2, 5_000),
            delayed("soon", 3, 7_000),
            delayed("later", 4, 9_000),
            delayed("undemanded", 5, 2_000),
        ],
        "insert",
    )
    .await;
    let soon = demand("soon", Executor::Async, 5, &[NAME]);
    let later = demand("later", Executor::Async, 5, &[NAME]);
    let claimed = claim(
        store,
        "conformance-a",
        &[soon.clone(), later.clone()],
        at(1_000),
        "claim_ready",
    )
    .await;
    assert_eq!(
        ids(&claimed.tasks),
        BTreeSet::from([ready.id]),
        "claim_ready takes only the ready task"
    );
    assert_eq!(
        claimed.next_run_at,
        Some(at(5_000)),
        "claim_ready: next_run_at is the earliest run_at after now among the demanded queues"
    );
    let claimed = claim(store, "conformance-a", &[later], at(1_000), "claim_ready").await;
    assert_eq!(
        claimed.next_run_at,
        Some(at(9_000)),
        "claim_ready: next_run_at counts only the demanded queues"
    );
    let claimed = claim(
        store,
        "conformance-a",
        &[demand("empty", Executor::Async, 5, &[NAME])],
        at(1_000),
        "claim_ready",
    )
    .await;
    assert_eq!(
        claimed.next_run_at, None,
        "claim_ready: a queue with nothing delayed has no next_run_at"
    );
    let claimed = claim(store, "conformance-a", &[soon], at(5_000), "claim_ready").await;
    assert_eq!(
        claimed.tasks.len(),
        1,
        "claim_ready: a task whose run_at is now is ready"
    );
    assert_eq!(
        claimed.next_run_at,
        Some(at(7_000)),
        "claim_ready: next_run_at is after now"
    );
    let no_slots = demand("soon", Executor::Async, 0, &[NAME]);
    let claimed = claim(
        store,
        "conformance-a",
        &[no_slots],
        at(5_000),
        "claim_ready",
    )
    .await;
    assert!(claimed.tasks.is_empty(), "claim_ready: no slots, no claims");
    assert_eq!(
        claimed.next_run_at,
        Some(at(7_000)),
        "claim_ready: a demand without free slots still tells its queue's next_run_at"
    );
}

async fn claim_carries_a_cancel_request(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let new = queued("cancels", 1);
    insert(store, vec![new.clone()], "insert").await;
    claim_one(store, "conformance-a", "cancels", 10).await;
    let asked = ok(store.request_cancel(new.id).await, "request_cancel");
    assert!(asked, "request_cancel of a RUNNING task answers true");
    let answers = apply(
        store,
        vec![Change::new(
            new.id,
            owned("conformance-a", 1),
            requeued(1, 20, 10),
        )],
        "apply giving the task back",
    )
    .await;
    assert_eq!(answers, [true], "apply: the owner can give its task back");
    let reclaimed = claim_one(store, "conformance-b", "cancels", 30).await;
    assert!(
        reclaimed.cancel_requested,
        "claim_ready: a cancel request made while the task ran must show when it is claimed again"
    );
    let mut cancelled = finished(TaskStatus::Cancelled, 2, 40);
    cancelled.started_at = Some(at(10));
    let answers = apply(
        store,
        vec![Change::new(new.id, owned("conformance-b", 2), cancelled)],
        "apply of the cancellation",
    )
    .await;
    assert_eq!(answers, [true], "apply: the owner can cancel its task");
    let found = get(store, new.id, "get after the cancellation").await;
    assert!(
        !found.cancel_requested,
        "apply: a final status clears the cancel request"
    );
}

async fn request_cancel_reaches_the_owner(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let pending = queued("idle", 1);
    let asked = queued("asked", 2);
    let unasked = queued("unasked", 3);
    let mut succeeded = queued("done", 4);
    succeeded.state = finished(TaskStatus::Success, 1, 5);
    insert(
        store,
        vec![
            pending.clone(),
            asked.clone(),
            unasked.clone(),
            succeeded.clone(),
        ],
        "insert",
    )
    .await;
    claim_one(store, "conformance-a", "asked", 10).await;
    claim_one(store, "conformance-b", "unasked", 10).await;
    for (what, id) in [
        ("a PENDING task", pending.id),
        ("a SUCCESS task", succeeded.id),
        ("an unknown task", TaskId::at(at(6))),
    ] {
        let answer = ok(store.request_cancel(id).await, "request_cancel");
        assert!(!answer, "request_cancel of {what} must answer false");
    }
    let answer = ok(store.request_cancel(asked.id).await, "request_cancel");
    assert!(answer, "request_cancel of a RUNNING task must answer true");
    let found = get(store, asked.id, "get after request_cancel").await;
    assert_eq!(
        (found.record.status, found.cancel_requested),
        (TaskStatus::Running, true),
        "request_cancel marks the row and leaves its status to the owner"
    );
    let found = get(store, pending.id, "get after request_cancel").await;
    assert!(
        !found.cancel_requested,
        "request_cancel of a PENDING task marks nothing"
    );

    let a = InstanceInfo::new("conformance-a", 1, "host-a");
    let b = InstanceInfo::new("conformance-b", 2, "host-b");
    let beat = ok(
        store.heartbeat(&a, Duration::from_secs(3600)).await,
        "heartbeat",
    );
    assert_eq!(
        beat.cancel,
        [asked.id],
        "heartbeat must tell the owner the tasks someone asked to cancel"
    );
    let beat = ok(
        store.heartbeat(&b, Duration::from_secs(3600)).await,
        "heartbeat",
    );
    assert!(
        beat.cancel.is_empty(),
        "heartbeat must not tell another instance about a request for a task it does not own; \
         got {:?}",
        beat.cancel
    );
}

// ------------------------------------------------------------ leases, orphans

async fn heartbeat_keeps_and_loses_leases(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let short = Duration::from_millis(50);
    let long = Duration::from_secs(3600);
    let dying = InstanceInfo::new("conformance-dying", 1, "host-a");
    let live = InstanceInfo::new("conformance-live", 2, "host-b");
    let beat = ok(store.heartbeat(&dying, short).await, "heartbeat");
    assert!(
        !beat.held,
        "heartbeat: an instance's first heartbeat registers it (held == false)"
    );
    let beat = ok(store.heartbeat(&dying, short).await, "heartbeat");
    assert!(
        beat.held,
        "heartbeat: a registered instance's next heartbeat holds its lease"
    );
    let beat = ok(store.heartbeat(&live, long).await, "heartbeat");
    assert!(
        !beat.held,
        "heartbeat: an instance's first heartbeat registers it (held == false)"
    );

    wait_for_expiry(store, &dying.id, &live.id).await;
    let beat = ok(store.heartbeat(&dying, long).await, "heartbeat");
    assert!(
        beat.held,
        "heartbeat: a lapsed lease nobody retired is renewed and still held"
    );
    let expired = ok(store.expired_instances().await, "expired_instances");
    assert!(
        !expired.contains(&dying.id),
        "expired_instances must not list an instance whose lease was renewed; got {expired:?}"
    );

    // A rescuer's retire keeps an instance that came back and renewed.
    ok(store.heartbeat(&dying, short).await, "heartbeat");
    wait_for_expiry(store, &dying.id, &live.id).await;
    ok(store.heartbeat(&dying, long).await, "heartbeat");
    let retired = ok(store.retire_expired(&dying.id).await, "retire_expired");
    assert!(
        !retired,
        "retire_expired must keep an instance that renewed its lease since it expired"
    );
    let beat = ok(store.heartbeat(&dying, short).await, "heartbeat");
    assert!(
        beat.held,
        "heartbeat: an instance retire_expired kept still holds its lease"
    );
    wait_for_expiry(store, &dying.id, &live.id).await;
    let retired = ok(store.retire_expired(&dying.id).await, "retire_expired");
    assert!(
        retired,
        "retire_expired must forget an instance whose lease expired"
    );
    let expired = ok(store.expired_instances().await, "expired_instances");
    assert!(
        !expired.contains(&dying.id),
        "expired_instances must not list a retired instance; got {expired:?}"
    );
    let beat = ok(store.heartbeat(&dying, short).await, "heartbeat");
    assert!(
        !beat.held,
        "heartbeat: after retire_expired, the instance's lease is gone (held == false)"
    );
    let retired = ok(store.retire_expired(&live.id).await, "retire_expired");
    assert!(!retired, "retire_expired must keep a live instance");

    wait_for_expiry(store, &dying.id, &live.id).await;
    ok(store.retire(&dying.id).await, "retire");
    let expired = ok(store.expired_instances().await, "expired_instances");
    assert!(
        !expired.contains(&dying.id),
        "expired_instances must not list a retired instance; got {expired:?}"
    );
    let beat = ok(store.heartbeat(&dying, long).await, "heartbeat");
    assert!(
        !beat.held,
        "heartbeat: after retire, the instance's lease is gone (held == false)"
    );
    let beat = ok(store.heartbeat(&dying, long).await, "heartbeat");
    assert!(
        beat.held,
        "heartbeat: registered afresh, the instance holds its new lease"
    );

    ok(store.retire(&live.id).await, "retire of a live instance");
    let beat = ok(store.heartbeat(&live, long).await, "heartbeat");
    assert!(
        !beat.held,
        "heartbeat: retire forgets even a live instance (held == false)"
    );
    ok(
        store.retire("conformance-never-seen").await,
        "retire of an unknown instance",
    );
}

/// Waits until `dying` is listed as expired, checking on the way that
/// `live` never is.
async fn wait_for_expiry(store: &dyn Store, dying: &str, live: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let expired = ok(store.expired_instances().await, "expired_instances");
        assert!(
            !expired.iter().any(|id| id == live),
            "expired_instances must not list an instance whose lease runs: {expired:?}"
        );
        if expired.iter().any(|id| id == dying) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expired_instances did not list an instance whose 50 ms lease passed within \
             {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn orphans_are_an_instances_running_tasks(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let tasks: Vec<NewTask> = (0..4).map(|n| queued("orphans", n)).collect();
    let mut finished_owned = queued("orphans", 10);
    finished_owned.state = finished(TaskStatus::Success, 1, 11);
    finished_owned.state.owner = Some("conformance-a".into());
    let mut all = tasks.clone();
    all.push(finished_owned);
    insert(store, all, "insert").await;
    let a1 = claim_one(store, "conformance-a", "orphans", 20).await;
    let a2 = claim_one(store, "conformance-a", "orphans", 20).await;
    let given_back = claim_one(store, "conformance-a", "orphans", 20).await;
    let b1 = claim_one(store, "conformance-b", "orphans", 20).await;
    let answers = apply(
        store,
        vec![Change::new(
            given_back.record.id,
            owned("conformance-a", 1),
            requeued(1, 30, 20),
        )],
        "apply giving a task back",
    )
    .await;
    assert_eq!(answers, [true], "apply: the owner can give its task back");

    let rows = ok(store.orphans("conformance-a").await, "orphans");
    let found: Vec<StoredTask> = rows.iter().map(|row| readable(row, "orphans")).collect();
    assert_eq!(
        ids(&found),
        BTreeSet::from([a1.record.id, a2.record.id]),
        "orphans must list exactly the instance's RUNNING tasks"
    );
    for task in &found {
        assert_eq!(
            (task.record.status, task.owner.as_deref()),
            (TaskStatus::Running, Some("conformance-a")),
            "orphans answers the rows as stored"
        );
    }
    let rows = ok(store.orphans("conformance-b").await, "orphans");
    let found: Vec<StoredTask> = rows.iter().map(|row| readable(row, "orphans")).collect();
    assert_eq!(
        ids(&found),
        BTreeSet::from([b1.record.id]),
        "orphans must list only that instance's tasks"
    );
    let rows = ok(store.orphans("conformance-nobody").await, "orphans");
    assert!(
        rows.is_empty(),
        "orphans of an instance owning nothing is empty"
    );
    for (instance, expected) in [
        (
            "conformance-a",
            BTreeSet::from([a1.record.id, a2.record.id]),
        ),
        ("conformance-b", BTreeSet::from([b1.record.id])),
        ("conformance-nobody", BTreeSet::new()),
    ] {
        let owned = ok(store.owned(instance).await, "owned");
        assert_eq!(
            owned.len(),
            expected.len(),
            "owned lists each RUNNING task of {instance} once"
        );
        assert_eq!(
            owned.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "owned must list the ids orphans finds for {instance}"
        );
    }
}

/// What a claim by an owner without a live lease answers: nothing
/// claimed, `lapsed`, and still the queues' next ready time.
fn assert_refused(claimed: &Claimed, next_run_at: Option<SystemTime>, who: &str) {
    assert!(
        claimed.tasks.is_empty(),
        "claim_ready by {who} must claim nothing; claimed {:?}",
        ids(&claimed.tasks)
    );
    assert!(
        claimed.lapsed,
        "claim_ready by {who} must say its lease lapsed (lapsed == true)"
    );
    assert_eq!(
        claimed.next_run_at, next_run_at,
        "claim_ready by {who} still tells when the next task is ready"
    );
}

/// A claimed insert by `owner` in `queue`, which must go in PENDING.
async fn insert_refused(store: &dyn Store, owner: &str, queue: &str, ms: u64, who: &str) {
    let mut task = queued(queue, ms);
    task.claim = Some(owner.to_owned());
    let answers = ok(
        store.insert(vec![task.clone()]).await,
        "insert with a claim",
    );
    assert!(
        matches!(answers.as_slice(), [Inserted::New]),
        "insert with a claim by {who} must go in PENDING, unclaimed; got {answers:?}"
    );
    let stored = get(store, task.id, "get").await;
    assert_eq!(
        (stored.record.status, stored.owner, stored.record.attempts),
        (TaskStatus::Pending, None, 0),
        "a task inserted with a claim by {who} is stored PENDING and unowned"
    );
}

async fn claim_needs_a_live_lease(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let ready = queued("leased", 1);
    let mut delayed = queued("leased", 2);
    delayed.state.run_at = at(90_000);
    insert(store, vec![ready.clone(), delayed], "insert").await;
    let want = [demand("leased", Executor::Async, 5, &[NAME])];
    let due = Some(at(90_000));

    let stranger = "conformance-stranger";
    let claimed = ok(
        store.claim_ready(stranger, &want, at(10)).await,
        "claim_ready",
    );
    assert_refused(&claimed, due, "an owner that never registered");
    insert_refused(
        store,
        stranger,
        "leased-inserts",
        3,
        "an unregistered owner",
    )
    .await;

    let lapsing = InstanceInfo::new("conformance-lapsing", 1, "host-a");
    ok(
        store.heartbeat(&lapsing, Duration::from_millis(50)).await,
        "heartbeat",
    );
    wait_for_expiry(store, &lapsing.id, "conformance-nobody").await;
    let claimed = ok(
        store.claim_ready(&lapsing.id, &want, at(10)).await,
        "claim_ready",
    );
    assert_refused(&claimed, due, "an instance whose lease expired");
    insert_refused(
        store,
        &lapsing.id,
        "leased-inserts",
        4,
        "an instance whose lease expired",
    )
    .await;

    // Renewed, it claims again.
    ok(
        store.heartbeat(&lapsing, Duration::from_secs(3600)).await,
        "heartbeat",
    );
    let claimed = ok(
        store.claim_ready(&lapsing.id, &want, at(10)).await,
        "claim_ready",
    );
    assert!(
        !claimed.lapsed,
        "claim_ready: an instance that renewed its lease is not lapsed"
    );
    assert_eq!(
        ids(&claimed.tasks),
        BTreeSet::from([ready.id]),
        "claim_ready: an instance that renewed its lease claims again"
    );

    // Retired (even with time left on its lease), it claims nothing.
    ok(store.retire(&lapsing.id).await, "retire");
    let inserts = [demand("leased-inserts", Executor::Async, 5, &[NAME])];
    let claimed = ok(
        store.claim_ready(&lapsing.id, &inserts, at(10)).await,
        "claim_ready",
    );
    assert_refused(&claimed, None, "a retired instance");
    insert_refused(
        store,
        &lapsing.id,
        "leased-inserts",
        5,
        "a retired instance",
    )
    .await;
}

async fn expired_instances_lists_owners_without_a_lease(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let live = InstanceInfo::new("conformance-live", 1, "host-a");
    ok(
        store.heartbeat(&live, Duration::from_secs(3600)).await,
        "heartbeat",
    );
    // Owners that hold no lease: one that never registered (as one that was
    // forgotten right after a claim would be), and one whose task finished.
    let ghost = "conformance-ghost";
    let with = |ms, state| {
        let mut task = queued("ghosts", ms);
        task.state = state;
        task
    };
    let (first, second) = (with(1, running(ghost, 1, 1)), with(2, running(ghost, 2, 2)));
    let mut done = with(3, finished(TaskStatus::Success, 1, 3));
    done.state.owner = Some("conformance-gone".to_owned());
    let lives = with(4, running(&live.id, 1, 4));
    insert(
        store,
        vec![first.clone(), second.clone(), done, lives.clone()],
        "insert",
    )
    .await;

    let expired = ok(store.expired_instances().await, "expired_instances");
    assert_eq!(
        expired.iter().filter(|id| *id == ghost).count(),
        1,
        "expired_instances must list, once, an owner of RUNNING tasks that holds no lease; \
         got {expired:?}"
    );
    assert!(
        !expired.contains(&live.id),
        "expired_instances must not list an instance whose lease runs; got {expired:?}"
    );
    assert!(
        !expired.iter().any(|id| id == "conformance-gone"),
        "expired_instances must not list the owner of finished tasks only; got {expired:?}"
    );
    let rows = ok(store.orphans(ghost).await, "orphans");
    let found: Vec<StoredTask> = rows.iter().map(|row| readable(row, "orphans")).collect();
    assert_eq!(
        ids(&found),
        BTreeSet::from([first.id, second.id]),
        "orphans of an owner with no lease are its RUNNING tasks"
    );
    let retired = ok(store.retire_expired(ghost).await, "retire_expired");
    assert!(
        !retired,
        "retire_expired of an owner with no instance row forgets nothing"
    );

    // An instance forgotten while it still owns a RUNNING task: listed too.
    ok(store.retire(&live.id).await, "retire");
    let expired = ok(store.expired_instances().await, "expired_instances");
    assert!(
        expired.contains(&live.id) && expired.iter().any(|id| id == ghost),
        "expired_instances must list an instance retired while it owned a RUNNING task; \
         got {expired:?}"
    );

    // Rescued, each fenced on its owner and attempt, they are no more.
    let interrupted = finished(TaskStatus::Interrupted, 2, 10);
    let answers = apply(
        store,
        vec![
            Change::new(
                first.id,
                in_status(TaskStatus::Running, 1, Some(ghost)),
                requeued(1, 10, 1),
            ),
            Change::new(
                second.id,
                in_status(TaskStatus::Running, 2, Some(ghost)),
                interrupted,
            ),
            Change::new(
                lives.id,
                in_status(TaskStatus::Running, 1, Some(&live.id)),
                requeued(1, 10, 4),
            ),
        ],
        "apply rescuing them",
    )
    .await;
    assert_eq!(
        answers,
        [true, true, true],
        "apply: the rescue of an owner with no lease is fenced like any other"
    );
    let expired = ok(store.expired_instances().await, "expired_instances");
    assert!(
        expired.is_empty(),
        "expired_instances: once their RUNNING tasks are rescued, owners with no lease are \
         not listed; got {expired:?}"
    );
}

/// A task the rescue interrupts: it may not run twice.
#[taskflow::task]
async fn stranded() {}

/// A task the rescue requeues: it runs again.
#[taskflow::task(requeue_on_interrupt = true)]
async fn stranded_again() {}

/// RUNNING rows whose owner has no instance row (it was forgotten after a
/// claim and died) are rescued by a manager's upkeep, like a dead
/// instance's: one event each, then the state their task asks for; a live
/// instance's are left alone.
async fn upkeep_rescues_tasks_of_owners_without_a_lease(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let ghost = "conformance-ghost";
    let alive = InstanceInfo::new("conformance-alive", 1, "host-b");
    ok(
        store.heartbeat(&alive, Duration::from_secs(3600)).await,
        "heartbeat",
    );
    let with = |name, ms, owner| {
        let mut task = named(name, ms);
        task.state = running(owner, 1, ms);
        task
    };
    let plain = with(stranded::NAME, 1, ghost);
    let again = with(stranded_again::NAME, 2, ghost);
    let kept = with(stranded::NAME, 3, &alive.id);
    insert(
        store,
        vec![plain.clone(), again.clone(), kept.clone()],
        "insert",
    )
    .await;

    let mut builder = storage
        .manager()
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(50));
    let mut events = builder.subscribe();
    let manager = within("building a manager", builder.build())
        .await
        .expect("a manager starts on the store");
    // The rescue's events, as the upkeep publishes them.
    let mut rescues: HashMap<TaskId, Vec<EventKind>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE / 2;
    while !(rescues.contains_key(&plain.id) && rescues.contains_key(&again.id)) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the upkeep did not rescue the RUNNING tasks of an owner with no lease \
                     within {:?}; rescued: {rescues:?}",
                    PATIENCE / 2
                )
            })
            .expect("the event stream stays open while the manager runs");
        if matches!(event.kind, EventKind::Requeued | EventKind::Interrupted) {
            rescues.entry(event.id).or_default().push(event.kind);
        }
    }
    let interrupted = wait_for_status(&manager, plain.id, TaskStatus::Interrupted).await;
    assert_eq!(
        interrupted.last_error.as_ref().map(TaskError::kind),
        Some(ErrorKind::Interrupted),
        "a rescued task that may not run twice is INTERRUPTED, saying why"
    );
    let ran = wait_for_status(&manager, again.id, TaskStatus::Success).await;
    assert_eq!(
        ran.attempts, 2,
        "a rescued requeue_on_interrupt task runs again, as its second attempt"
    );
    // A few more rounds of upkeep: no second rescue, and the live
    // instance's task stays its own.
    let heartbeats_later = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(event)) = tokio::time::timeout_at(heartbeats_later, events.recv()).await {
        if matches!(event.kind, EventKind::Requeued | EventKind::Interrupted) {
            rescues.entry(event.id).or_default().push(event.kind);
        }
    }
    within("shutdown", manager.shutdown()).await;
    assert_eq!(
        rescues.get(&plain.id).map(Vec::as_slice),
        Some(&[EventKind::Interrupted][..]),
        "the upkeep publishes one Interrupted event for a stranded task that may not run twice"
    );
    assert_eq!(
        rescues.get(&again.id).map(Vec::as_slice),
        Some(&[EventKind::Requeued][..]),
        "the upkeep publishes one Requeued event for a stranded requeue_on_interrupt task"
    );
    assert!(
        !rescues.contains_key(&kept.id),
        "the upkeep must leave a live instance's task alone; events: {rescues:?}"
    );
    let stored = get(store, kept.id, "get").await;
    assert_eq!(
        (stored.record.status, stored.owner.as_deref()),
        (TaskStatus::Running, Some(alive.id.as_str())),
        "a live instance's RUNNING task is still its own"
    );
}

// --------------------------------------------------------------- logs, reads

async fn get_returns_logs_in_order(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let (first, second) = (task(1), task(2));
    insert(store, vec![first.clone(), second.clone()], "insert").await;
    let mut with_fields = line(first.id, LogLevel::Info, 0, 10, "starting");
    with_fields.record = with_fields
        .record
        .field("user", "42")
        .field("note", "a = b, c");
    let batch = vec![
        with_fields,
        line(second.id, LogLevel::Debug, 0, 11, "other task"),
        line(first.id, LogLevel::Warn, 0, 12, "slow"),
        line(first.id, LogLevel::Error, 0, 13, "failed"),
        line(first.id, LogLevel::Trace, 1, 14, "retrying"),
    ];
    ok(store.append_logs(batch.clone(), 100).await, "append_logs");
    let more = vec![line(first.id, LogLevel::Info, 1, 15, "done")];
    ok(store.append_logs(more.clone(), 100).await, "append_logs");

    let expected: Vec<LogRecord> = batch
        .iter()
        .chain(&more)
        .filter(|line| line.task == first.id)
        .map(|line| line.record.clone())
        .collect();
    let found = get(store, first.id, "get with logs").await;
    assert_eq!(
        found.record.logs, expected,
        "get must return the task's log lines in the order appended, each with its attempt, \
         time, level, target, message and fields"
    );
    assert_eq!(
        found.record.logs_dropped, 0,
        "append_logs under the cap drops nothing"
    );
    let found = get(store, second.id, "get with logs").await;
    assert_eq!(
        found.record.logs,
        [batch[1].record.clone()],
        "get must return only the task's own log lines"
    );

    let listed = ok(store.list(&TaskFilter::new()).await, "list");
    assert!(
        listed.tasks.iter().all(|task| task.record.logs.is_empty()),
        "list leaves logs out"
    );
}

async fn append_logs_keeps_the_latest_lines(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let tasks: Vec<NewTask> = (0..5).map(task).collect();
    insert(store, tasks.clone(), "insert").await;
    let ids: Vec<TaskId> = tasks.iter().map(|task| task.id).collect();
    let words = |range: std::ops::RangeInclusive<u64>| -> Vec<String> {
        range.map(|n| format!("line {n}")).collect()
    };

    // Over the cap across calls.
    ok(
        store.append_logs(numbered(ids[0], 1, 3), 4).await,
        "append_logs",
    );
    ok(
        store.append_logs(numbered(ids[0], 4, 6), 4).await,
        "append_logs",
    );
    let found = get(store, ids[0], "get").await;
    assert_eq!(
        (messages(&found), found.record.logs_dropped),
        (words(3..=6), 2),
        "append_logs must keep the latest lines up to the cap and count the older ones dropped"
    );

    // Over the cap within one call.
    ok(
        store.append_logs(numbered(ids[1], 1, 7), 3).await,
        "append_logs",
    );
    let found = get(store, ids[1], "get").await;
    assert_eq!(
        (messages(&found), found.record.logs_dropped),
        (words(5..=7), 4),
        "append_logs of a batch past the cap must keep its latest lines and count the rest"
    );

    // A cap of zero keeps nothing.
    ok(
        store.append_logs(numbered(ids[2], 1, 2), 0).await,
        "append_logs",
    );
    let found = get(store, ids[2], "get").await;
    assert_eq!(
        (messages(&found), found.record.logs_dropped),
        (Vec::new(), 2),
        "append_logs with a cap of 0 must keep no line and count them all"
    );

    // Two tasks in one batch, each capped for itself.
    let mut mixed = numbered(ids[3], 1, 3);
    mixed.insert(1, line(ids[4], LogLevel::Info, 0, 1, "line 1"));
    ok(store.append_logs(mixed, 2).await, "append_logs");
    let found = get(store, ids[3], "get").await;
    assert_eq!(
        (messages(&found), found.record.logs_dropped),
        (words(2..=3), 1),
        "append_logs caps each task of a batch for itself"
    );
    let found = get(store, ids[4], "get").await;
    assert_eq!(
        (messages(&found), found.record.logs_dropped),
        (words(1..=1), 0),
        "append_logs caps each task of a batch for itself"
    );
    let listed = ok(store.list(&TaskFilter::new()).await, "list");
    let dropped = listed
        .tasks
        .iter()
        .find(|task| task.record.id == ids[1])
        .map(|task| task.record.logs_dropped);
    assert_eq!(dropped, Some(4), "list answers the dropped-lines count too");
}

async fn get_many_leaves_out_unknown_ids(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let (first, second, third) = (task(1), task(2), task(3));
    insert(
        store,
        vec![first.clone(), second.clone(), third.clone()],
        "insert",
    )
    .await;
    ok(
        store.append_logs(numbered(first.id, 1, 2), 10).await,
        "append_logs",
    );
    let unknown = TaskId::at(at(4));
    let rows = ok(
        store.get_many(&[third.id, unknown, first.id]).await,
        "get_many",
    );
    let found: Vec<StoredTask> = rows.iter().map(|row| readable(row, "get_many")).collect();
    assert_eq!(
        ids(&found),
        BTreeSet::from([first.id, third.id]),
        "get_many must answer the stored tasks asked for and leave unknown ids out"
    );
    for task in &found {
        let inserted = if task.record.id == first.id {
            &first
        } else {
            &third
        };
        assert_stored_as(task, inserted, "get_many");
        assert!(task.record.logs.is_empty(), "get_many leaves logs out");
    }
    let rows = ok(store.get_many(&[]).await, "get_many of no ids");
    assert!(rows.is_empty(), "get_many of no ids answers nothing");
}

async fn list_applies_every_filter(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let make = |name: &str, queue: &str, state: TaskState, tags: &[(&str, &str)], ms: u64| {
        let mut task = named(name, ms);
        task.queue = queue.to_owned();
        task.state = state;
        task.tags = Tags::from_pairs(tags.iter().copied());
        task
    };
    let (a, b) = ("conformance::a", "conformance::b");
    let pending = TaskState::pending;
    let t = [
        make(a, "q1", pending(at(1_000)), &[("tenant", "acme")], 1_000),
        make(
            b,
            "q1",
            finished(TaskStatus::Success, 1, 2_500),
            &[("tenant", "acme"), ("tier", "gold")],
            2_000,
        ),
        make(
            a,
            "q2",
            finished(TaskStatus::Failed, 1, 3_500),
            &[("tenant", "other")],
            3_000,
        ),
        make(a, "q1", running("conformance-a", 1, 4_100), &[], 4_000),
        make(b, "q2", pending(at(5_000)), &[("tenant", "acme")], 5_000),
        make(
            a,
            "q2",
            finished(TaskStatus::Cancelled, 0, 6_500),
            &[("tier", "gold")],
            6_000,
        ),
    ];
    // Inserted out of creation order: listing goes by id, not insertion.
    let mut shuffled = t.to_vec();
    shuffled.swap(0, 4);
    shuffled.swap(2, 5);
    insert(store, shuffled, "insert").await;

    let everything = ok(store.list(&TaskFilter::new()).await, "list");
    assert!(everything.corrupt.is_empty(), "list: no row is corrupt");
    for task in &everything.tasks {
        let inserted = t
            .iter()
            .find(|new| new.id == task.record.id)
            .expect("list answers only stored tasks");
        assert_stored_as(task, inserted, "list");
    }

    let cases: Vec<(&str, TaskFilter, Vec<usize>)> = vec![
        ("no filter", TaskFilter::new(), vec![5, 4, 3, 2, 1, 0]),
        (
            "status PENDING",
            TaskFilter::new().status(TaskStatus::Pending),
            vec![4, 0],
        ),
        (
            "status RUNNING",
            TaskFilter::new().status(TaskStatus::Running),
            vec![3],
        ),
        (
            "status FAILED",
            TaskFilter::new().status(TaskStatus::Failed),
            vec![2],
        ),
        (
            "status INTERRUPTED",
            TaskFilter::new().status(TaskStatus::Interrupted),
            vec![],
        ),
        ("name", TaskFilter::new().name(a), vec![5, 3, 2, 0]),
        (
            "an unknown name",
            TaskFilter::new().name("conformance::none"),
            vec![],
        ),
        ("queue", TaskFilter::new().queue("q2"), vec![5, 4, 2]),
        (
            "tag",
            TaskFilter::new().tag("tenant", "acme"),
            vec![4, 1, 0],
        ),
        (
            "a second tag of a task",
            TaskFilter::new().tag("tier", "gold"),
            vec![5, 1],
        ),
        (
            "a tag value under another key",
            TaskFilter::new().tag("tier", "acme"),
            vec![],
        ),
        (
            "created_after (inclusive)",
            TaskFilter::new().created_after(at(3_000)),
            vec![5, 4, 3, 2],
        ),
        (
            "created_before (exclusive)",
            TaskFilter::new().created_before(at(3_000)),
            vec![1, 0],
        ),
        (
            "created_after and created_before",
            TaskFilter::new()
                .created_after(at(2_000))
                .created_before(at(5_000)),
            vec![3, 2, 1],
        ),
        (
            "the before(id) cursor",
            TaskFilter::new().before(t[3].id),
            vec![2, 1, 0],
        ),
        ("limit", TaskFilter::new().limit(2), vec![5, 4]),
        ("limit 0", TaskFilter::new().limit(0), vec![]),
        (
            "name and queue",
            TaskFilter::new().name(a).queue("q2"),
            vec![5, 2],
        ),
        (
            "name and tag",
            TaskFilter::new().name(a).tag("tenant", "acme"),
            vec![0],
        ),
        (
            "status, queue and tag",
            TaskFilter::new()
                .status(TaskStatus::Pending)
                .queue("q2")
                .tag("tenant", "acme"),
            vec![4],
        ),
        (
            "cursor, name and limit",
            TaskFilter::new().before(t[5].id).name(a).limit(2),
            vec![3, 2],
        ),
    ];
    let label = |id: TaskId| {
        t.iter()
            .position(|task| task.id == id)
            .map_or_else(|| format!("unknown {id}"), |index| format!("t{index}"))
    };
    for (what, filter, expected) in cases {
        let listed = ok(store.list(&filter).await, &format!("list by {what}"));
        let found: Vec<String> = listed
            .tasks
            .iter()
            .map(|task| label(task.record.id))
            .collect();
        let expected: Vec<String> = expected.iter().map(|index| format!("t{index}")).collect();
        assert_eq!(
            found, expected,
            "list by {what} must answer exactly the matching tasks, newest first ({filter:?})"
        );
    }
}

async fn list_pages_through_everything_once(storage: Storage) {
    const TASKS: u64 = 25;
    let store = storage.open().await;
    let store = store.as_ref();
    let tasks: Vec<NewTask> = (0..TASKS)
        .map(|n| queued(if n % 2 == 0 { "even" } else { "odd" }, 1_000 + 10 * n))
        .collect();
    insert(store, tasks.clone(), "insert").await;
    let newest_first = |queue: Option<&str>| -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = tasks
            .iter()
            .filter(|task| queue.is_none_or(|queue| task.queue == queue))
            .map(|task| task.id)
            .collect();
        ids.reverse();
        ids
    };
    for (what, base, limit, expected, pages) in [
        (
            "every task",
            TaskFilter::new(),
            7,
            newest_first(None),
            vec![7, 7, 7, 4],
        ),
        (
            "a queue's tasks",
            TaskFilter::new().queue("even"),
            4,
            newest_first(Some("even")),
            vec![4, 4, 4, 1],
        ),
    ] {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut filter = base.clone().limit(limit);
        // Bounded: a cursor that does not advance fails instead of looping.
        for _ in 0..=TASKS {
            let listed = ok(store.list(&filter).await, "list of a page");
            let Some(last) = listed.tasks.last() else {
                break;
            };
            filter = base.clone().limit(limit).before(last.record.id);
            sizes.push(listed.tasks.len());
            seen.extend(listed.tasks.iter().map(|task| task.record.id));
        }
        assert_eq!(
            sizes, pages,
            "list: paging through {what} with before(last id) must give full pages then the rest"
        );
        assert_eq!(
            seen, expected,
            "list: paging through {what} must give each task exactly once, newest first"
        );
    }
}

// ---------------------------------------------------------------- retention

async fn prune_removes_only_old_finished_tasks(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let cutoff = 10_000;
    let ended = |status: TaskStatus, finished_ms: u64, ms: u64| {
        let mut task = task(ms);
        task.state = finished(status, 1, finished_ms);
        task.tags = Tags::from_pairs([("batch", "old")]);
        task
    };
    let old = [
        ended(TaskStatus::Success, 1_000, 1),
        ended(TaskStatus::Failed, 2_000, 2),
        ended(TaskStatus::Cancelled, 3_000, 3),
        ended(TaskStatus::Interrupted, 4_000, 4),
    ];
    let at_cutoff = ended(TaskStatus::Success, cutoff, 5);
    let recent = ended(TaskStatus::Failed, 20_000, 6);
    let mut old_pending = task(7);
    old_pending.tags = Tags::from_pairs([("batch", "old")]);
    old_pending.state.run_at = at(8);
    let mut old_running = task(8);
    old_running.state = running("conformance-a", 1, 9);
    let kept = [at_cutoff, recent, old_pending.clone(), old_running];
    insert(store, old.iter().chain(&kept).cloned().collect(), "insert").await;
    ok(
        store.append_logs(numbered(old[0].id, 1, 3), 10).await,
        "append_logs",
    );
    ok(
        store.append_logs(numbered(old_pending.id, 1, 2), 10).await,
        "append_logs",
    );

    let pruned = ok(store.prune(at(cutoff)).await, "prune");
    assert_eq!(
        pruned, 4,
        "prune must delete exactly the finished tasks that finished before the cutoff and \
         say how many"
    );
    for task in &old {
        absent(store, task.id, "prune must delete an old finished task").await;
    }
    for task in &kept {
        get(
            store,
            task.id,
            "prune must keep PENDING and RUNNING tasks and tasks finished at or after the cutoff",
        )
        .await;
    }
    let found = get(store, old_pending.id, "get").await;
    assert_eq!(
        messages(&found),
        ["line 1", "line 2"],
        "prune must keep the logs of the tasks it keeps"
    );
    let pruned = ok(store.prune(at(cutoff)).await, "prune");
    assert_eq!(pruned, 0, "prune again finds nothing more to delete");

    // The pruned id is free again; nothing of the old row (logs, tags)
    // comes back with it.
    let mut reborn = old[0].clone();
    reborn.tags = Tags::default();
    reborn.state = TaskState::pending(at(1));
    insert(store, vec![reborn.clone()], "insert of a pruned task's id").await;
    let found = get(store, reborn.id, "get").await;
    assert!(
        found.record.logs.is_empty(),
        "prune must delete a pruned task's logs; found {:?}",
        messages(&found)
    );
    let listed = ok(
        store.list(&TaskFilter::new().tag("batch", "old")).await,
        "list",
    );
    let found: BTreeSet<TaskId> = ids(&listed.tasks);
    assert_eq!(
        found,
        BTreeSet::from([old_pending.id, kept[0].id, kept[1].id]),
        "prune must delete a pruned task's tags"
    );
}

// ------------------------------------------------------------------- queues

async fn queues_count_work_and_share_pauses(storage: Storage) {
    let store = storage.open().await;
    let other = storage.open().await;
    let empty = ok(store.queues().await, "queues");
    assert!(
        empty.is_empty(),
        "queues of an empty store is empty; got {empty:?}"
    );

    let mut tasks: Vec<NewTask> = (0..4).map(|n| queued("q-a", n)).collect();
    tasks[3].state = finished(TaskStatus::Success, 1, 5);
    let mut delayed = queued("q-b", 10);
    delayed.state.run_at = at(99_000);
    tasks.push(delayed);
    let mut only_finished = queued("q-d", 20);
    only_finished.state = finished(TaskStatus::Failed, 1, 21);
    tasks.push(only_finished);
    insert(store.as_ref(), tasks, "insert").await;
    claim_one(store.as_ref(), "conformance-a", "q-a", 100).await;
    ok(
        other.set_paused("q-c", true).await,
        "set_paused of a queue without tasks",
    );

    let row = |name: &str, paused: bool, pending: u64, running: u64| {
        let mut row = QueueRow::default();
        row.name = name.to_owned();
        row.paused = paused;
        row.pending = pending;
        row.running = running;
        row
    };
    let sorted = |mut rows: Vec<QueueRow>| {
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    };
    let found = sorted(ok(store.queues().await, "queues"));
    assert_eq!(
        found,
        [
            row("q-a", false, 2, 1),
            row("q-b", false, 1, 0),
            row("q-c", true, 0, 0),
        ],
        "queues must list each queue with a setting or with PENDING or RUNNING tasks, \
         with its paused flag and counts"
    );

    ok(other.set_paused("q-a", true).await, "set_paused");
    ok(other.set_paused("q-a", true).await, "set_paused twice");
    let found = sorted(ok(store.queues().await, "queues"));
    assert_eq!(
        found.first(),
        Some(&row("q-a", true, 2, 1)),
        "set_paused through one handle must show through another"
    );
    ok(store.set_paused("q-a", false).await, "set_paused");
    let found = sorted(ok(other.queues().await, "queues"));
    assert_eq!(
        found.first(),
        Some(&row("q-a", false, 2, 1)),
        "a resumed queue is not paused"
    );
}

async fn unfinished_names_lists_each_once(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let names = ok(store.unfinished_names().await, "unfinished_names");
    assert!(
        names.is_empty(),
        "unfinished_names of an empty store is empty; got {names:?}"
    );
    let with = |name: &str, ms: u64, state: TaskState| {
        let mut task = named(name, ms);
        task.state = state;
        task
    };
    let delayed = TaskState::pending(at(50_000));
    insert(
        store,
        vec![
            with("conformance::pending", 1, TaskState::pending(at(1))),
            with("conformance::pending", 2, TaskState::pending(at(2))),
            with("conformance::running", 3, running("conformance-a", 1, 3)),
            with("conformance::delayed", 4, delayed),
            with(
                "conformance::succeeded",
                5,
                finished(TaskStatus::Success, 1, 5),
            ),
            with("conformance::failed", 6, finished(TaskStatus::Failed, 1, 6)),
            with(
                "conformance::cancelled",
                7,
                finished(TaskStatus::Cancelled, 0, 7),
            ),
            with(
                "conformance::interrupted",
                8,
                finished(TaskStatus::Interrupted, 1, 8),
            ),
        ],
        "insert",
    )
    .await;
    let mut names = ok(store.unfinished_names().await, "unfinished_names");
    names.sort();
    assert_eq!(
        names,
        [
            "conformance::delayed",
            "conformance::pending",
            "conformance::running",
        ],
        "unfinished_names must list the names of PENDING and RUNNING tasks, each once"
    );
}

// ---------------------------------------------------------------- schedules

/// Schedule `name` of [`NAME`], every second, created at `at(0)`.
fn schedule_row(name: &str) -> ScheduleRow {
    ScheduleRow::new(name, NAME, "every 1000", at(0))
}

/// The fire of tick `at(tick)` of `schedule`, its task created at
/// `at(tick + created)` (distinct ids for racing fires of one tick).
fn fire_of(schedule: &str, tick: u64, created: u64) -> Fire {
    let mut task = NewTask::new(
        TaskId::at(at(tick + created)),
        NAME,
        Executor::Async,
        at(tick + created),
    );
    task.state = TaskState::pending(at(tick));
    task.tags = Tags::from_pairs([("origin", schedule)]);
    Fire::new(schedule, at(tick), task)
}

async fn fire(store: &dyn Store, fire: Fire, what: &str) -> Fired {
    let answers = ok(store.fire(vec![fire]).await, what);
    assert_eq!(answers.len(), 1, "{what}: fire answers each fire");
    answers[0]
}

async fn fire_writes_one_task_per_tick(storage: Storage) {
    const TICKS: u64 = 8;
    const FIRERS: u64 = 4;
    let first = storage.open().await;
    let second = storage.open().await;
    ok(
        first.add_schedule(schedule_row("every-second")).await,
        "add_schedule",
    );
    // Four firers on two handles fire every tick at once, each with a task
    // of its own: one task per tick goes in.
    let mut firers = Vec::new();
    for firer in 0..FIRERS {
        let store = match firer % 2 {
            0 => first.clone(),
            _ => second.clone(),
        };
        firers.push(tokio::spawn(async move {
            let mut new = Vec::new();
            for tick in 1..=TICKS {
                let fired = fire(
                    store.as_ref(),
                    fire_of("every-second", tick * 1000, firer + 1),
                    "a racing fire",
                )
                .await;
                match fired {
                    Fired::New => new.push(tick),
                    Fired::Taken => {}
                    other => panic!("fire of a tick fired by another firer: {other:?}"),
                }
                tokio::task::yield_now().await;
            }
            new
        }));
    }
    let mut fired: Vec<u64> = Vec::new();
    for firer in firers {
        fired.extend(firer.await.expect("a firer does not panic"));
    }
    fired.sort_unstable();
    assert_eq!(
        fired,
        (1..=TICKS).collect::<Vec<_>>(),
        "fire: exactly one of the racing fires of each tick writes its task"
    );
    let listed = ok(
        second
            .list(&TaskFilter::new().schedule("every-second"))
            .await,
        "list by schedule",
    );
    let mut ticks: Vec<SystemTime> = listed
        .tasks
        .iter()
        .map(|task| {
            let tick = task
                .record
                .scheduled
                .clone()
                .expect("a fired task names its schedule and tick");
            assert_eq!(tick.schedule, "every-second");
            assert_eq!(task.record.status, TaskStatus::Pending);
            assert_eq!(
                task.record.run_at, tick.at,
                "a fired task is due at its tick"
            );
            assert_eq!(
                task.record.tags.get("origin"),
                Some("every-second"),
                "a fired task keeps its tags"
            );
            tick.at
        })
        .collect();
    ticks.sort();
    assert_eq!(
        ticks,
        (1..=TICKS).map(|tick| at(tick * 1000)).collect::<Vec<_>>(),
        "list: one task per tick, each naming its tick"
    );
    // The schedule's state names the last fire.
    let rows = ok(first.schedules().await, "schedules");
    let row = rows
        .iter()
        .filter_map(|row| row.as_ref().ok())
        .find(|row| row.name == "every-second")
        .expect("the schedule is stored");
    assert_eq!(
        row.last_tick,
        Some(at(TICKS * 1000)),
        "schedules: last tick"
    );
    let last = listed
        .tasks
        .iter()
        .find(|task| task.record.scheduled.as_ref().map(|t| t.at) == Some(at(TICKS * 1000)))
        .expect("the last tick's task");
    assert_eq!(row.last_task, Some(last.record.id), "schedules: last task");
    // An earlier tick, or the last one again, writes nothing.
    for tick in [3, TICKS] {
        assert_eq!(
            fire(
                first.as_ref(),
                fire_of("every-second", tick * 1000, 50),
                "a late fire"
            )
            .await,
            Fired::Taken,
            "fire of tick {tick}, at or before the last fired one"
        );
    }
    // A batch answers each fire in order: later ticks of one schedule
    // after earlier ones, a tick repeated within the batch taken.
    let batch: Vec<Fire> = [9, 10, 10, 11]
        .into_iter()
        .enumerate()
        .map(|(n, tick)| fire_of("every-second", tick * 1000, 70 + n as u64))
        .collect();
    assert_eq!(
        ok(second.fire(batch).await, "a batch of fires"),
        [Fired::New, Fired::New, Fired::Taken, Fired::New],
        "fire: a batch is answered fire by fire, in order"
    );
    // A task another schedule fires at the same tick is its own.
    ok(
        first.add_schedule(schedule_row("twin")).await,
        "add_schedule",
    );
    assert_eq!(
        fire(
            first.as_ref(),
            fire_of("twin", 1000, 60),
            "another schedule's tick"
        )
        .await,
        Fired::New,
        "fire: ticks are unique per schedule, not across schedules"
    );
}

async fn fire_refuses_paused_stale_and_unknown_schedules(storage: Storage) {
    let store = storage.open().await;
    let other = storage.open().await;
    let store = store.as_ref();
    assert_eq!(
        fire(
            store,
            fire_of("nowhere", 1000, 1),
            "fire of an unknown schedule"
        )
        .await,
        Fired::Unknown,
        "fire: a schedule that is not stored fires nothing"
    );
    ok(
        store.add_schedule(schedule_row("nightly")).await,
        "add_schedule",
    );
    assert!(
        ok(
            other.set_schedule_paused("nightly", true, at(1500)).await,
            "pause"
        ),
        "set_schedule_paused: the schedule exists"
    );
    assert_eq!(
        fire(store, fire_of("nightly", 2000, 1), "fire while paused").await,
        Fired::Paused,
        "fire: a schedule paused through another handle fires nothing"
    );
    assert!(ok(
        other.set_schedule_paused("nightly", false, at(5500)).await,
        "resume"
    ));
    // The ticks it slept through are not fired after the resume...
    assert_eq!(
        fire(
            store,
            fire_of("nightly", 5000, 1),
            "fire of a tick slept through"
        )
        .await,
        Fired::Stale,
        "fire: a tick at or before the resume is not fired"
    );
    // ...unless asked (a schedule that runs on start).
    let mut on_start = fire_of("nightly", 5000, 2);
    on_start.ignore_since = true;
    assert_eq!(
        fire(store, on_start, "fire ignoring since").await,
        Fired::New,
        "fire: ignore_since fires a tick before since"
    );
    assert_eq!(
        fire(store, fire_of("nightly", 6000, 1), "fire after the resume").await,
        Fired::New,
        "fire: a resumed schedule fires its next tick"
    );
    assert!(
        !ok(
            store.set_schedule_paused("nowhere", true, at(7000)).await,
            "pause unknown"
        ),
        "set_schedule_paused: an unknown schedule is not found"
    );
    let listed = ok(
        store.list(&TaskFilter::new().schedule("nightly")).await,
        "list",
    );
    assert_eq!(
        listed.tasks.len(),
        2,
        "only the two fires that went in wrote tasks"
    );
}

async fn schedules_keep_their_definition_and_state(storage: Storage) {
    let store = storage.open().await;
    let other = storage.open().await;
    let store = store.as_ref();
    assert!(
        ok(store.schedules().await, "schedules").is_empty(),
        "schedules of an empty store"
    );
    let mut declared =
        ScheduleRow::new("app::report", "app::report", "cron 0 9 * * MON-FRI", at(0));
    declared.timezone = Some("Europe/Paris".to_owned());
    declared.declared = true;
    declared.catch_up = CatchUp::Skip;
    let mut added = schedule_row("cleanup");
    added.args = vec![1, 2, 3];
    added.tags = Tags::from_pairs([("tenant", "acme")]);
    added.queue = Some("maintenance".to_owned());
    added.priority = Some(-3);
    ok(
        store.declare_schedules(vec![declared.clone()]).await,
        "declare_schedules",
    );
    assert!(ok(store.add_schedule(added.clone()).await, "add_schedule"));
    assert!(
        !ok(
            other.add_schedule(schedule_row("cleanup")).await,
            "add again"
        ),
        "add_schedule: a name taken is refused"
    );
    let read = |rows: Vec<taskflow::store::ScheduleRead>| -> Vec<ScheduleRow> {
        rows.into_iter()
            .map(|row| row.expect("a schedule row reads back"))
            .collect()
    };
    let rows = read(ok(other.schedules().await, "schedules"));
    assert_eq!(
        rows,
        vec![declared.clone(), added.clone()],
        "schedules: every field as written, by name"
    );
    // Fired and paused, then declared again with a new definition: the
    // definition changes, the state stays.
    assert_eq!(
        fire(store, fire_of("app::report", 3000, 1), "fire").await,
        Fired::New
    );
    assert!(ok(
        store
            .set_schedule_paused("app::report", true, at(4000))
            .await,
        "pause"
    ));
    let mut redeclared = declared.clone();
    redeclared.spec = "cron 0 10 * * *".to_owned();
    redeclared.catch_up = CatchUp::One;
    redeclared.since = at(9000);
    // A declaration never takes over a schedule added at run time.
    let mut clash = schedule_row("cleanup");
    clash.declared = true;
    clash.spec = "every 5000".to_owned();
    ok(
        other
            .declare_schedules(vec![redeclared.clone(), clash])
            .await,
        "declare again",
    );
    let rows = read(ok(store.schedules().await, "schedules"));
    let report = &rows[0];
    assert_eq!(
        (&report.spec, report.catch_up),
        (&redeclared.spec, CatchUp::One),
        "declare_schedules: a declared schedule takes the new definition"
    );
    assert_eq!(
        (report.paused, report.since, report.last_tick),
        (true, at(0), Some(at(3000))),
        "declare_schedules: a declared schedule keeps its state"
    );
    assert_eq!(
        rows[1], added,
        "declare_schedules: an added schedule is left alone"
    );
    assert!(ok(other.remove_schedule("cleanup").await, "remove"));
    assert!(
        !ok(other.remove_schedule("cleanup").await, "remove again"),
        "remove_schedule: whether it existed"
    );
    let names: Vec<String> = read(ok(store.schedules().await, "schedules"))
        .into_iter()
        .map(|row| row.name)
        .collect();
    assert_eq!(
        names,
        ["app::report"],
        "remove_schedule deletes the schedule"
    );
    let tasks = ok(
        store.list(&TaskFilter::new().schedule("app::report")).await,
        "list",
    );
    assert_eq!(
        tasks.tasks.len(),
        1,
        "a schedule's tasks outlive changes to it"
    );
}

async fn list_filters_by_schedule_and_run_at(storage: Storage) {
    let store = storage.open().await;
    let store = store.as_ref();
    let mut later = task(1);
    later.state = TaskState::pending(at(50_000));
    let mut latest = task(2);
    latest.state = TaskState::pending(at(90_000));
    let now = task(3);
    insert(
        store,
        vec![later.clone(), latest.clone(), now.clone()],
        "insert",
    )
    .await;
    ok(store.add_schedule(schedule_row("s")).await, "add_schedule");
    let tick = fire_of("s", 4000, 1);
    let fired = tick.task.id;
    assert_eq!(fire(store, tick, "fire").await, Fired::New);
    let listed = |filter: TaskFilter| async move {
        let mut ids: Vec<TaskId> = ok(store.list(&filter).await, "list")
            .tasks
            .into_iter()
            .map(|task| task.record.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        listed(TaskFilter::new().run_after(at(10_000))).await,
        vec![later.id, latest.id],
        "list: run_after keeps tasks due at or after the time"
    );
    assert_eq!(
        listed(
            TaskFilter::new()
                .run_after(at(50_000))
                .run_before(at(90_000))
        )
        .await,
        vec![later.id],
        "list: run_before keeps tasks due before the time"
    );
    assert_eq!(
        listed(TaskFilter::new().schedule("s")).await,
        vec![fired],
        "list: schedule keeps the tasks that schedule fired"
    );
    assert_eq!(
        listed(TaskFilter::new().schedule("t")).await,
        Vec::<TaskId>::new(),
        "list: another schedule's tasks are left out"
    );
    let got = get(store, fired, "get").await;
    assert_eq!(
        got.record.scheduled,
        Some(Tick::new("s", at(4000))),
        "get: a fired task's record names its schedule and tick"
    );
    assert_eq!(
        get(store, now.id, "get").await.record.scheduled,
        None,
        "get: an enqueued task names no schedule"
    );
}
