//! The SQLite task store, for real: history across restarts, requeue after a
//! graceful stop and after `kill -9`, several processes on one file,
//! idempotency keys, retry, retention, and the files that cannot be opened.
//!
//! Like `process.rs`, this binary enters worker mode first and runs its tests
//! with libtest-mimic, one at a time. Tests that need a crash, or two
//! managers in two processes, start this binary again as a *scenario*.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use serde::{Deserialize, Serialize};
use taskflow::{Error, EventKind, TaskFilter, TaskId, TaskManager, TaskStatus, task};
use taskflow_tests::harness::{self, finish, lines, read_until, scenario_name, trial};
use taskflow_tests::{eventually, wait_for_status, within};

const DB: &str = "TASKFLOW_TEST_DB";
const SIDE: &str = "TASKFLOW_TEST_SIDE";

// ---------------------------------------------------------------- the tasks

/// Appends `<n> <pid>` to the side file: the proof a body ran, and where.
fn record_run(n: u32, side: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(side)
        .unwrap();
    // One write per line: appends from concurrent bodies never interleave.
    file.write_all(format!("{n} {}\n", std::process::id()).as_bytes())
        .unwrap();
}

#[task]
async fn durable_step(n: u32, side: String) {
    record_run(n, &side);
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[task(requeue_on_interrupt = true)]
async fn idempotent_step(n: u32, side: String) {
    record_run(n, &side);
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[task]
async fn runs_once(n: u32, side: String) {
    record_run(n, &side);
}

#[task(persist = true)]
async fn persisted_alone(n: u32, side: String) {
    record_run(n, &side);
}

#[task]
async fn blocker(millis: u64) {
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[task(requeue_on_interrupt = true)]
async fn idempotent_blocker(millis: u64, side: String) {
    record_run(0, &side);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Line {
    sku: String,
    quantity: u32,
    discount: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Order {
    id: u64,
    lines: Vec<Line>,
    note: Option<String>,
    attributes: BTreeMap<String, Vec<u8>>,
    state: OrderState,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum OrderState {
    Open,
    Held { reason: String, until: (u32, u8) },
}

fn sample_order() -> Order {
    Order {
        id: 42,
        lines: vec![
            Line {
                sku: "tea".into(),
                quantity: 3,
                discount: None,
            },
            Line {
                sku: "cup".into(),
                quantity: 1,
                discount: Some(0.25),
            },
        ],
        note: Some("leave at the door".into()),
        attributes: BTreeMap::from([("gift".to_owned(), vec![1, 2, 3])]),
        state: OrderState::Held {
            reason: "fraud check".into(),
            until: (2027, 1),
        },
    }
}

#[task]
async fn echo_order(order: Order, label: (u8, String)) -> (Order, (u8, String)) {
    (order, label)
}

/// Fails until `flag` exists.
#[task]
async fn fails_until(flag: String) -> Result<u32, String> {
    match std::fs::metadata(&flag) {
        Ok(_) => Ok(7),
        Err(_) => Err(format!("{flag} is missing")),
    }
}

#[task]
async fn keyed_work(n: u32, side: String) -> u32 {
    record_run(n, &side);
    tokio::time::sleep(Duration::from_millis(300)).await;
    n * 10
}

#[task]
async fn sized(payload: Vec<u8>) -> usize {
    payload.len()
}

#[task(executor = "process")]
fn crunch(n: u32, side: String) -> u32 {
    record_run(n, &side);
    n * 3
}

#[task(executor = "process")]
fn process_blocker(millis: u64) {
    std::thread::sleep(Duration::from_millis(millis));
}

// ---------------------------------------------------------------- helpers

/// Runs per task number in the side file, and the pids that ran each.
fn runs(side: &Path) -> HashMap<u32, Vec<u32>> {
    let mut runs: HashMap<u32, Vec<u32>> = HashMap::new();
    let text = std::fs::read_to_string(side).unwrap_or_default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(n), Some(pid)) = (fields.next(), fields.next()) {
            runs.entry(n.parse().unwrap())
                .or_default()
                .push(pid.parse().unwrap());
        }
    }
    runs
}

/// A fresh directory, its task store path and its side file path.
fn files() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (db, side) = (dir.path().join("tasks.db"), dir.path().join("runs"));
    (dir, db, side)
}

/// A manager on `db`. Its lease is short, so that when a scenario process
/// holding one is killed, the next manager rescues its tasks promptly.
async fn with_store(db: &Path) -> TaskManager {
    TaskManager::builder()
        .snapshot_db(db)
        .lease(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

/// Waits for `future` from a synchronous predicate (the trials run on a
/// multi-threaded runtime, where a worker may block in place).
fn wait<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

fn record(manager: &TaskManager, id: TaskId) -> taskflow::TaskRecord {
    wait(manager.get(id))
        .unwrap()
        .unwrap_or_else(|| panic!("task {id} is unknown"))
}

/// Whether the file has no unfinished task left.
fn settled(manager: &TaskManager) -> bool {
    [TaskStatus::Pending, TaskStatus::Running]
        .into_iter()
        .all(|status| {
            wait(manager.list(&TaskFilter::new().status(status)))
                .unwrap()
                .is_empty()
        })
}

/// This binary, as a scenario process on `db` with side file `side`.
fn scenario(name: &str, db: &Path, side: &Path) -> Command {
    let mut command = harness::scenario(name);
    command.env(DB, db).env(SIDE, side);
    command
}

/// Warnings the runtime logged, captured by a minimal `tracing` subscriber.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

// ---------------------------------------------------------------- in-process

fn every_stored_field_round_trips_through_a_restart() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let flag = dir.path().join("flag").display().to_string();

        let first = TaskManager::builder()
            .snapshot_db(&db)
            .max_concurrent_tasks(1)
            .requeue_pending(true)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .await
            .unwrap();
        let done = echo_order::call(sample_order(), (7, "seven".into()))
            .tag("tenant", "acme")
            .tag("source", "api")
            .enqueue_on(&first)
            .unwrap();
        let done_id = done.id();
        done.await.unwrap();
        let failed = fails_until::call(flag.clone()).enqueue_on(&first).unwrap();
        let failed_id = failed.id();
        assert!(failed.await.is_err());
        // Left PENDING behind a blocker, to run again after the restart.
        let blocker = blocker::call(60_000).enqueue_on(&first).unwrap();
        wait_for_status(&first, blocker.id(), TaskStatus::Running).await;
        let waiting = echo_order::call(sample_order(), (9, "nine".into()))
            .tag("tenant", "acme")
            .enqueue_on(&first)
            .unwrap();
        waiting.persisted().await.unwrap();
        let waiting_id = waiting.id();
        let before = [record(&first, done_id), record(&first, failed_id)];
        first.shutdown().await;

        let second = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .build()
            .await
            .unwrap();
        for live in &before {
            let stored = record(&second, live.id);
            let micros = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
            };
            assert_eq!(stored.name, live.name);
            assert_eq!(stored.executor, live.executor);
            assert_eq!(stored.status, live.status);
            assert_eq!(stored.attempts, live.attempts);
            assert_eq!(stored.last_error, live.last_error);
            assert_eq!(stored.tags, live.tags);
            assert_eq!(micros(stored.created_at), micros(live.created_at));
            assert_eq!(stored.started_at.map(micros), live.started_at.map(micros));
            assert_eq!(stored.finished_at.map(micros), live.finished_at.map(micros));
        }
        assert_eq!(
            record(&second, failed_id).last_error.unwrap().message(),
            format!("{flag} is missing")
        );

        // The requeued task ran with its original nested arguments and tags.
        let mut events = second.subscribe();
        eventually("the requeued task to finish", || {
            record(&second, waiting_id).status == TaskStatus::Success
        })
        .await;
        let requeued = record(&second, waiting_id);
        assert_eq!(requeued.tags.get("tenant"), Some("acme"));
        let _ = events.try_recv();
        // Its arguments survived: retry re-runs a copy of the failed task too.
        std::fs::write(&flag, b"").unwrap();
        let retried = second.retry(failed_id).await.unwrap();
        eventually("the retry to succeed", || {
            record(&second, retried).status == TaskStatus::Success
        })
        .await;
        assert_ne!(retried, failed_id);
        second.shutdown().await;
    })
}

fn pending_tasks_run_again_after_a_restart_under_their_own_ids() -> Result<(), Failed> {
    trial(async {
        let (_dir, db, side) = files();
        let side_text = side.display().to_string();
        let first = TaskManager::builder()
            .snapshot_db(&db)
            .max_concurrent_tasks(1)
            .requeue_pending(true)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .await
            .unwrap();
        runs_once::call(100, side_text.clone())
            .enqueue_on(&first)
            .unwrap()
            .await
            .unwrap();
        let blocked = blocker::call(60_000).enqueue_on(&first).unwrap();
        let blocked_id = blocked.id();
        let mut ids = Vec::new();
        for n in 0..5 {
            let handle = runs_once::call(n, side_text.clone())
                .enqueue_on(&first)
                .unwrap();
            handle.persisted().await.unwrap();
            ids.push(handle.id());
        }
        let report = first.shutdown().await;
        assert_eq!(report.pending_interrupted, 5);
        for &id in &ids {
            assert_eq!(record(&first, id).status, TaskStatus::Interrupted);
        }

        let second = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .build()
            .await
            .unwrap();
        for &id in &ids {
            eventually("requeued tasks to finish", || {
                record(&second, id).status == TaskStatus::Success
            })
            .await;
        }
        let runs = runs(&side);
        for n in 0..5 {
            assert_eq!(runs[&n].len(), 1, "task {n} ran once: {runs:?}");
        }
        assert_eq!(
            runs[&100].len(),
            1,
            "a task that succeeded is never run again"
        );
        assert_eq!(record(&second, blocked_id).status, TaskStatus::Interrupted);
        second.shutdown().await;

        // A third start finds nothing left to do.
        let third = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .build()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(crate::runs(&side).values().map(Vec::len).sum::<usize>(), 6);
        third.shutdown().await;
    })
}

fn persist_true_requeues_that_task_alone() -> Result<(), Failed> {
    trial(async {
        let (_dir, db, side) = files();
        let side_text = side.display().to_string();
        let first = TaskManager::builder()
            .snapshot_db(&db)
            .max_concurrent_tasks(1)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .await
            .unwrap();
        let _blocked = blocker::call(60_000).enqueue_on(&first).unwrap();
        let kept = persisted_alone::call(1, side_text.clone())
            .enqueue_on(&first)
            .unwrap();
        let dropped = runs_once::call(2, side_text.clone())
            .enqueue_on(&first)
            .unwrap();
        kept.persisted().await.unwrap();
        dropped.persisted().await.unwrap();
        let (kept, dropped) = (kept.id(), dropped.id());
        first.shutdown().await;

        let second = with_store(&db).await;
        eventually("the persist = true task to run", || {
            record(&second, kept).status == TaskStatus::Success
        })
        .await;
        assert_eq!(
            record(&second, dropped).status,
            TaskStatus::Interrupted,
            "{:?}",
            record(&second, dropped)
        );
        assert_eq!(runs(&side).keys().copied().collect::<Vec<_>>(), [1]);
        second.shutdown().await;
    })
}

fn interrupted_tasks_run_again_only_when_declared() -> Result<(), Failed> {
    trial(async {
        let (_dir, db, side) = files();
        let first = TaskManager::builder()
            .snapshot_db(&db)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .await
            .unwrap();
        let again = idempotent_blocker::call(3_000, side.display().to_string())
            .enqueue_on(&first)
            .unwrap();
        let once = blocker::call(60_000).enqueue_on(&first).unwrap();
        let (again, once) = (again.id(), once.id());
        eventually("both to run", || {
            record(&first, again).status == TaskStatus::Running
                && record(&first, once).status == TaskStatus::Running
        })
        .await;
        first.shutdown().await;
        assert_eq!(record(&first, again).status, TaskStatus::Interrupted);

        let second = with_store(&db).await;
        eventually("the idempotent task to run again", || {
            record(&second, again).status == TaskStatus::Success
        })
        .await;
        assert_eq!(
            record(&second, again).attempts,
            2,
            "its second run is its second attempt"
        );
        assert_eq!(record(&second, once).status, TaskStatus::Interrupted);
        assert_eq!(runs(&side)[&0].len(), 2);
        second.shutdown().await;
    })
}

fn unregistered_names_are_kept_untouched_with_a_warning() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        with_store(&db).await.shutdown().await;
        let orphan_id = TaskId::new();
        {
            let raw = rusqlite::Connection::open(&db).unwrap();
            raw.execute(
                "INSERT INTO tasks (id, name, executor, status, args, created_at, owner, codec) \
                 VALUES (?1, 'retired::task', 'async', 'PENDING', x'00', 1, NULL, 2)",
                [orphan_id.to_bytes()],
            )
            .unwrap();
        }
        WARNINGS.lock().unwrap().clear();
        let manager = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .build()
            .await
            .unwrap();
        let stored = record(&manager, orphan_id);
        assert_eq!(
            (stored.name.as_str(), stored.status),
            ("retired::task", TaskStatus::Pending)
        );
        let warnings = WARNINGS.lock().unwrap().clone();
        assert!(
            warnings.iter().any(|w| w.contains("retired::task")),
            "a warning names the unregistered task: {warnings:?}"
        );
        manager.shutdown().await;
        let raw = rusqlite::Connection::open(&db).unwrap();
        let status: String = raw
            .query_row(
                "SELECT status FROM tasks WHERE id = ?1",
                [orphan_id.to_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(status, "PENDING", "the row is left as it was");
    })
}

/// `n` as the codec writes a length: a LEB128 varint.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn stored_bytes_that_lie_about_their_length_fail_their_task_not_the_process() -> Result<(), Failed>
{
    trial(async {
        let (_dir, db, side) = files();
        with_store(&db).await.shutdown().await;
        let (mut ids, mut bad_tags) = (Vec::new(), Vec::new());
        {
            let raw = rusqlite::Connection::open(&db).unwrap();
            for claimed in [1 << 40, 1 << 63, u64::MAX] {
                // `runs_once(n: u32, side: String)` whose string claims
                // `claimed` bytes; and a row whose tags (`Some` of a list)
                // claim as many.
                let mut args = vec![7];
                args.extend(varint(claimed));
                args.extend_from_slice(b"x");
                let mut tags = vec![1];
                tags.extend(varint(claimed));
                for (list, args, tags) in [
                    (&mut ids, args, None),
                    (&mut bad_tags, vec![7, 0], Some(tags)),
                ] {
                    let id = TaskId::new();
                    raw.execute(
                        "INSERT INTO tasks (id, name, executor, status, args, tags, created_at, owner, codec) \
                         VALUES (?1, ?2, 'async', 'PENDING', ?3, ?4, 1, NULL, 2)",
                        rusqlite::params![id.to_bytes(), runs_once::NAME, args, tags],
                    )
                    .unwrap();
                    list.push(id);
                }
            }
        }
        let manager = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .build()
            .await
            .unwrap();
        for &id in &ids {
            eventually("the lying rows to fail", || {
                record(&manager, id).status == TaskStatus::Failed
            })
            .await;
            let error = record(&manager, id).last_error.unwrap();
            assert!(
                error
                    .message()
                    .contains("cannot decode the task's arguments"),
                "{error}"
            );
        }
        // Unreadable tags make the row unreadable: reported, left in place.
        for &id in &bad_tags {
            let error = manager.get(id).await.unwrap_err();
            assert!(matches!(error, Error::CorruptRow { .. }), "{error:?}");
        }
        assert!(runs(&side).is_empty(), "no body ran");
        manager.shutdown().await;
    })
}

fn idempotency_keys_hold_while_live_or_successful() -> Result<(), Failed> {
    trial(async {
        let (dir, db, side) = files();
        let side_text = side.display().to_string();
        for store in [None, Some(db.clone())] {
            let mut builder = TaskManager::builder().max_concurrent_tasks(1);
            if let Some(db) = &store {
                builder = builder.snapshot_db(db);
            }
            let manager = builder.build().await.unwrap();
            let blocked = blocker::call(60_000).enqueue_on(&manager).unwrap();
            // PENDING holds the key.
            let first = keyed_work::call(1, side_text.clone())
                .idempotency_key("order-1")
                .enqueue_on(&manager)
                .unwrap();
            let again = keyed_work::call(2, side_text.clone())
                .idempotency_key("order-1")
                .enqueue_on(&manager)
                .unwrap();
            assert_eq!(first.id(), again.id(), "{store:?}");
            // Another task's key space is its own.
            let other = durable_step::call(3, side_text.clone())
                .idempotency_key("order-1")
                .enqueue_on(&manager)
                .unwrap();
            assert_ne!(other.id(), first.id());
            // CANCELLED releases it.
            manager.cancel(first.id()).await.unwrap();
            let fresh = keyed_work::call(4, side_text.clone())
                .idempotency_key("order-1")
                .enqueue_on(&manager)
                .unwrap();
            assert_ne!(fresh.id(), first.id());
            manager.cancel(blocked.id()).await.unwrap();
            // RUNNING and SUCCESS hold it; both handles read the output.
            assert_eq!(fresh.await.unwrap(), 40);
            let done = keyed_work::call(5, side_text.clone())
                .idempotency_key("order-1")
                .enqueue_on(&manager)
                .unwrap();
            assert_eq!(done.status(), TaskStatus::Success);
            assert_eq!(
                done.await.unwrap(),
                40,
                "a later handle to a finished keyed task reads its output"
            );
            // FAILED releases it.
            let flag = dir
                .path()
                .join(format!("never-{}", store.is_some()))
                .display()
                .to_string();
            let failing = fails_until::call(flag.clone())
                .idempotency_key("k")
                .enqueue_on(&manager)
                .unwrap();
            let failing_id = failing.id();
            assert!(failing.await.is_err());
            let retried = fails_until::call(flag)
                .idempotency_key("k")
                .enqueue_on(&manager)
                .unwrap();
            assert_ne!(retried.id(), failing_id);
            let _ = retried.await;
            manager.shutdown().await;
        }

        // Across a restart, the file remembers a successful key and its output.
        let manager = with_store(&db).await;
        let done = keyed_work::call(6, side_text.clone())
            .idempotency_key("order-1")
            .enqueue_on(&manager)
            .unwrap();
        assert_eq!(done.await.unwrap(), 40);
        assert!(!runs(&side).contains_key(&6), "the body did not run again");
        manager.shutdown().await;
    })
}

fn retry_enqueues_a_copy_with_the_original_arguments_and_tags() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let flag = dir.path().join("flag").display().to_string();
        let manager = with_store(&db).await;
        let failed = fails_until::call(flag.clone())
            .tag("batch", "7")
            .enqueue_on(&manager)
            .unwrap();
        let failed_id = failed.id();
        assert!(failed.await.is_err());
        let ok = sized::call(vec![1, 2]).enqueue_on(&manager).unwrap();
        let ok_id = ok.id();
        ok.await.unwrap();
        assert!(matches!(
            manager.retry(ok_id).await,
            Err(Error::NotRetryable {
                status: TaskStatus::Success,
                ..
            })
        ));
        assert!(matches!(
            manager.retry(TaskId::new()).await,
            Err(Error::NotFound(_))
        ));
        manager.shutdown().await;

        // From the file, after a restart.
        std::fs::write(&flag, b"").unwrap();
        let manager = with_store(&db).await;
        let copy = manager.retry(failed_id).await.unwrap();
        eventually("the copy to succeed", || {
            record(&manager, copy).status == TaskStatus::Success
        })
        .await;
        let copy = record(&manager, copy);
        assert_eq!(copy.name, fails_until::NAME);
        assert_eq!(copy.tags.get("batch"), Some("7"));
        assert_eq!(
            copy.retry_of(),
            Some(failed_id),
            "the copy records its origin"
        );
        assert_eq!(
            record(&manager, failed_id).status,
            TaskStatus::Failed,
            "the original stays as it was"
        );
        manager.shutdown().await;
    })
}

fn retention_prunes_finished_rows_and_never_unfinished_ones() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let manager = TaskManager::builder()
            .snapshot_db(&db)
            .retention(Duration::from_millis(300))
            .max_finished_in_memory(0)
            .max_concurrent_tasks(1)
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .await
            .unwrap();
        let running = blocker::call(60_000).enqueue_on(&manager).unwrap();
        let pending = sized::call(vec![0]).enqueue_on(&manager).unwrap();
        let finished = sized::call(vec![1]).enqueue_on(&manager);
        let finished_id = finished.as_ref().unwrap().id();
        manager.cancel(finished_id).await.unwrap();
        manager.flush().await.unwrap();
        assert!(
            manager.get(finished_id).await.unwrap().is_some(),
            "kept until it is old enough"
        );
        eventually("the finished row to be pruned", || {
            wait(manager.get(finished_id)).unwrap().is_none()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(manager.get(running.id()).await.unwrap().is_some());
        assert!(manager.get(pending.id()).await.unwrap().is_some());
        manager.shutdown().await;
    })
}

fn files_that_cannot_be_used_are_clear_errors() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x42; 8192]).unwrap();
        let error = with_store_err(&garbage).await;
        assert!(matches!(error, Error::OpenStore { .. }), "{error:?}");
        assert!(
            chain(&error).contains("not a database"),
            "{}",
            chain(&error)
        );

        let unwritable = dir.path().join("no-such-dir").join("tasks.db");
        let error = with_store_err(&unwritable).await;
        assert!(matches!(error, Error::OpenStore { .. }), "{error:?}");
        assert!(error.to_string().contains("no-such-dir"), "{error}");

        let newer = dir.path().join("newer.db");
        rusqlite::Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = with_store_err(&newer).await;
        assert!(
            matches!(error, Error::SchemaTooNew { found: 99, .. }),
            "{error:?}"
        );

        let locked = dir.path().join("locked.db");
        with_store(&locked).await.shutdown().await;
        let holder = rusqlite::Connection::open(&locked).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let started = Instant::now();
        let error = TaskManager::builder()
            .snapshot_db(&locked)
            .store_busy_timeout(Duration::from_millis(200))
            .build()
            .await
            .unwrap_err();
        assert!(matches!(error, Error::OpenStore { .. }), "{error:?}");
        assert!(chain(&error).contains("locked"), "{}", chain(&error));
        assert!(started.elapsed() < Duration::from_secs(30));
        holder.execute_batch("ROLLBACK").unwrap();
    })
}

async fn with_store_err(db: &Path) -> Error {
    TaskManager::builder()
        .snapshot_db(db)
        .build()
        .await
        .unwrap_err()
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn process_tasks_are_stored_and_requeued_too() -> Result<(), Failed> {
    trial(async {
        let (_dir, db, side) = files();
        let side_text = side.display().to_string();
        let first = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .max_process_workers(1)
            .process_shutdown_timeout(Duration::from_millis(100))
            .build()
            .await
            .unwrap();
        let done = crunch::call(1, side_text.clone())
            .enqueue_on(&first)
            .unwrap();
        let done_id = done.id();
        assert_eq!(done.await.unwrap(), 3);
        let blocked = process_blocker::call(60_000).enqueue_on(&first).unwrap();
        let waiting = crunch::call(2, side_text.clone())
            .enqueue_on(&first)
            .unwrap();
        waiting.persisted().await.unwrap();
        let (blocked, waiting) = (blocked.id(), waiting.id());
        eventually("the blocker to run", || {
            record(&first, blocked).status == TaskStatus::Running
        })
        .await;
        first.shutdown().await;

        let second = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .max_process_workers(1)
            .build()
            .await
            .unwrap();
        assert_eq!(record(&second, done_id).status, TaskStatus::Success);
        assert_eq!(record(&second, blocked).status, TaskStatus::Interrupted);
        eventually("the requeued process task to run", || {
            record(&second, waiting).status == TaskStatus::Success
        })
        .await;
        let runs = runs(&side);
        assert_eq!(runs[&2].len(), 1);
        assert_ne!(
            runs[&2][0],
            std::process::id(),
            "it ran in a worker process"
        );
        second.shutdown().await;
    })
}

/// Claims the file's one PENDING task for its one live instance, as a
/// claim (or an insert made claimed) whose answer was lost leaves it:
/// RUNNING under that owner, the attempt counted, due now.
fn claim_behind_its_back(db: &Path) {
    let file = rusqlite::Connection::open(db).unwrap();
    file.busy_timeout(Duration::from_secs(10)).unwrap();
    let me: String = file
        .query_row("SELECT id FROM instances", [], |row| row.get(0))
        .unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let claimed = file
        .execute(
            "UPDATE tasks SET status = 'RUNNING', owner = ?1, attempts = attempts + 1, \
             started_at = ?2, run_at = ?2 WHERE status = 'PENDING'",
            rusqlite::params![me, now],
        )
        .unwrap();
    assert_eq!(claimed, 1);
}

/// A row the store says a live instance runs, though it never started it
/// (a claim that committed but whose answer was lost on the way): the
/// instance finds it, puts it back and runs it, once, as a first attempt.
fn a_claim_whose_answer_was_lost_is_run_after_all() -> Result<(), Failed> {
    let (_dir, db, side) = files();
    let side_text = side.to_str().unwrap().to_owned();
    trial(async {
        // Another instance leaves a task waiting in the file, due later.
        let other = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true)
            .build()
            .await
            .unwrap();
        let waiting = durable_step::call(7, side_text.clone())
            .delay(Duration::from_secs(3600))
            .enqueue_on(&other)
            .unwrap();
        waiting.persisted().await.unwrap();
        let id = waiting.id();
        drop(waiting);
        other.shutdown().await;

        let manager = with_store(&db).await;
        let mut events = manager.subscribe();
        claim_behind_its_back(&db);

        let record = wait_for_status(&manager, id, TaskStatus::Success).await;
        assert_eq!(record.attempts, 1, "{record:?}");
        assert_eq!(runs(&side)[&7].len(), 1, "it ran once");
        let requeued = within("the requeue's event", async {
            loop {
                let event = events.recv().await.unwrap();
                if event.id == id && event.kind == EventKind::Requeued {
                    return event;
                }
            }
        })
        .await;
        assert_eq!(requeued.status, TaskStatus::Pending);
        manager.shutdown().await;
    })
}

/// A row inserted already claimed whose answer was lost: the retried
/// insert finds it there, and the instance's own task waits in memory while
/// its row says RUNNING here. The instance finds it, puts the row back and
/// runs the task, once, and its handle resolves.
fn an_insert_claimed_whose_answer_was_lost_is_run_after_all() -> Result<(), Failed> {
    let (_dir, db, side) = files();
    let side_text = side.to_str().unwrap().to_owned();
    trial(async {
        let manager = with_store(&db).await;
        let handle = durable_step::call(8, side_text.clone())
            .delay(Duration::from_secs(3600))
            .enqueue_on(&manager)
            .unwrap();
        handle.persisted().await.unwrap();
        let id = handle.id();
        claim_behind_its_back(&db);

        within("the task's handle", handle).await.unwrap();
        let record = wait_for_status(&manager, id, TaskStatus::Success).await;
        assert_eq!(record.attempts, 1, "{record:?}");
        assert_eq!(runs(&side)[&8].len(), 1, "it ran once");
        manager.shutdown().await;
    })
}

/// Tasks running here through several looks for strays (one a second with
/// a 500 ms lease) are left alone: their rows say RUNNING here, and they
/// are.
fn tasks_running_through_the_stray_checks_are_left_alone() -> Result<(), Failed> {
    let (_dir, db, _side) = files();
    trial(async {
        let manager = with_store(&db).await;
        let mut events = manager.subscribe();
        let handles: Vec<_> = (0..2)
            .map(|_| blocker::call(2_500).enqueue_on(&manager).unwrap())
            .collect();
        let ids: Vec<TaskId> = handles.iter().map(|handle| handle.id()).collect();
        for handle in handles {
            within("a long task", handle).await.unwrap();
        }
        for &id in &ids {
            let record = manager.get(id).await.unwrap().expect("its record");
            assert_eq!(
                (record.status, record.attempts),
                (TaskStatus::Success, 1),
                "{record:?}"
            );
        }
        while let Ok(event) = events.try_recv() {
            assert!(
                !(ids.contains(&event.id) && event.kind == EventKind::Requeued),
                "a running task was put back: {event:?}"
            );
        }
        manager.shutdown().await;
    })
}

/// Opened by the test: `gated` returns.
static LAG_GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[task]
async fn gated() -> u32 {
    LAG_GATE.notified().await;
    5
}

/// While a finished task's row still says RUNNING (the file is locked by
/// another writer), a listing by status answers with what the task is:
/// among the successes, not among the running.
fn a_listing_by_status_follows_the_task_while_its_row_lags() -> Result<(), Failed> {
    let (_dir, db, _side) = files();
    trial(async {
        let manager = with_store(&db).await;
        let handle = gated::call().enqueue_on(&manager).unwrap();
        let id = handle.id();
        wait_for_status(&manager, id, TaskStatus::Running).await;
        manager.flush().await.unwrap();

        // Another writer holds the file: the end cannot be written.
        let file = rusqlite::Connection::open(&db).unwrap();
        file.execute_batch("BEGIN IMMEDIATE").unwrap();
        LAG_GATE.notify_one();
        assert_eq!(within("the task", handle).await.unwrap(), 5);
        let row: String = file
            .query_row("SELECT status FROM tasks", [], |row| row.get(0))
            .unwrap();
        assert_eq!(row, "RUNNING", "the row lags behind the task");

        let listed = |status| {
            let manager = manager.clone();
            async move {
                let records = manager
                    .list(&TaskFilter::new().status(status))
                    .await
                    .unwrap();
                records
                    .iter()
                    .map(|record| (record.id, record.status))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(listed(TaskStatus::Running).await, []);
        assert_eq!(
            listed(TaskStatus::Success).await,
            [(id, TaskStatus::Success)]
        );

        file.execute_batch("COMMIT").unwrap();
        drop(file);
        manager.flush().await.unwrap();
        assert_eq!(
            listed(TaskStatus::Success).await,
            [(id, TaskStatus::Success)]
        );
        manager.shutdown().await;
    })
}

// ---------------------------------------------------------------- processes

fn a_kill_9_mid_burst_loses_no_acknowledged_task() -> Result<(), Failed> {
    let (_dir, db, side) = files();
    let mut burst = scenario("burst", &db, &side)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let burst_pid = burst.id();
    let mut lines = lines(&mut burst);
    let acknowledged = read_until(&mut burst, &mut lines, "acknowledged");
    let total: usize = acknowledged
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, 500);
    // Kill it while the burst is running: some done, most still PENDING.
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(&side).len() < 40 {
        assert!(Instant::now() < deadline, "the burst never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    burst.kill().unwrap(); // SIGKILL
    burst.wait().unwrap();
    let at_kill = runs(&side);
    assert!(
        at_kill.len() < 500,
        "the kill came too late to prove anything"
    );

    finish(scenario("recover", &db, &side).spawn().unwrap());

    let after = runs(&side);
    trial(async {
        let manager = with_store(&db).await;
        let all = manager.list(&TaskFilter::new()).await.unwrap();
        assert_eq!(all.len(), 500, "every acknowledged task is in the file");
        let mut twice = 0;
        for task in &all {
            let n: u32 = task.tags.get("n").unwrap().parse().unwrap();
            let pids = after.get(&n).cloned().unwrap_or_default();
            let idempotent = task.name == idempotent_step::NAME;
            match task.status {
                TaskStatus::Success => {
                    let by_burst = pids.iter().filter(|&&p| p == burst_pid).count();
                    assert!(
                        by_burst <= 1 && pids.len() - by_burst <= 1,
                        "task {n} ran {pids:?}"
                    );
                    if pids.len() == 2 {
                        assert!(
                            idempotent,
                            "only a requeue_on_interrupt task runs twice: {n}"
                        );
                        twice += 1;
                    }
                    if !at_kill.contains_key(&n) {
                        assert_eq!(
                            pids.len(),
                            1,
                            "task {n}, PENDING at the kill, ran exactly once"
                        );
                    }
                }
                TaskStatus::Interrupted => {
                    assert!(
                        !idempotent,
                        "a requeue_on_interrupt task is run again, not left INTERRUPTED"
                    );
                    // Claimed (RUNNING in the file) before the kill; its
                    // body may not have started yet, but it never runs
                    // again.
                    assert!(
                        pids.is_empty() || pids == [burst_pid],
                        "task {n} was RUNNING at the kill and ran {pids:?}"
                    );
                }
                other => panic!("task {n} ended {other}"),
            }
        }
        assert!(
            twice <= 4,
            "{twice} tasks ran twice; at most the 4 in flight may"
        );
        manager.shutdown().await;
    })
}

fn two_processes_requeue_each_pending_task_exactly_once() -> Result<(), Failed> {
    let (_dir, db, side) = files();
    let mut fill = scenario("fill", &db, &side)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = lines(&mut fill);
    read_until(&mut fill, &mut lines, "filled");
    fill.kill().unwrap();
    fill.wait().unwrap();
    assert!(runs(&side).is_empty());

    let (a, b) = (
        scenario("recover", &db, &side).spawn().unwrap(),
        scenario("recover", &db, &side).spawn().unwrap(),
    );
    finish(a);
    finish(b);
    let runs = runs(&side);
    assert_eq!(runs.len(), 50, "every pending task ran");
    assert!(
        runs.values().all(|pids| pids.len() == 1),
        "each exactly once: {runs:?}"
    );
    Ok(())
}

fn idempotency_keys_hold_across_processes() -> Result<(), Failed> {
    let (_dir, db, side) = files();
    trial(async {
        with_store(&db).await.shutdown().await;
    })?;
    let children: Vec<Child> = (0..2)
        .map(|_| {
            scenario("keyed", &db, &side)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut answers = Vec::new();
    for mut child in children {
        let mut lines = lines(&mut child);
        answers.push(read_until(&mut child, &mut lines, "keyed"));
        finish(child);
    }
    assert_eq!(
        answers[0], answers[1],
        "both processes got the same task and output"
    );
    assert!(answers[0].ends_with(" 10"), "{answers:?}");
    assert_eq!(
        runs(&side).values().map(Vec::len).sum::<usize>(),
        1,
        "the body ran once"
    );
    Ok(())
}

#[task]
async fn doubled(n: u32) -> u32 {
    n * 2
}

/// An enqueue with a key waits for the store's answer on the calling
/// thread; hundreds of them in a row from one tokio task, with no `.await`
/// between, must not wear out that task's cooperative budget and spin.
fn a_burst_of_keyed_enqueues_from_one_task_completes() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let manager = with_store(&dir.path().join("tasks.db")).await;
        // Nothing is claimed while the burst runs: the burst is the test.
        manager.pause("burst").await.unwrap();
        let enqueuer = manager.clone();
        let burst = tokio::spawn(async move {
            (0..1000u32)
                .map(|n| {
                    doubled::call(n)
                        .idempotency_key(format!("burst-{n}"))
                        .queue("burst")
                        .enqueue_on(&enqueuer)
                        .unwrap()
                })
                .collect::<Vec<_>>()
        });
        let handles = within("1,000 keyed enqueues in a row", burst)
            .await
            .unwrap();
        // The keys hold: the same keys give the same tasks.
        let again = doubled::call(7)
            .idempotency_key("burst-7")
            .queue("burst")
            .enqueue_on(&manager)
            .unwrap();
        assert_eq!(again.id(), handles[7].id());
        manager.resume("burst").await.unwrap();
        for (n, handle) in (0..).zip(handles) {
            assert_eq!(within("a keyed task", handle).await.unwrap(), n * 2);
        }
        assert_eq!(within("the second handle", again).await.unwrap(), 14);
        manager.shutdown().await;
    })
}

static KEYED_RUNS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task]
async fn counted_keyed(n: u32) -> u32 {
    KEYED_RUNS.lock().unwrap().push(n);
    n
}

/// A keyed task's row is committed before its enqueue returns; a claimer
/// that takes the row meanwhile runs the task that enqueue returns a
/// handle to, exactly once, and `get` agrees with the handle.
fn keyed_tasks_claimed_as_they_are_enqueued_run_once_and_resolve() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let manager = TaskManager::builder()
            .snapshot_db(dir.path().join("tasks.db"))
            .poll_interval(Duration::from_millis(1))
            .build()
            .await
            .unwrap();
        let mut handles = Vec::new();
        for n in 0..2000u32 {
            // Unkeyed tasks keep the writer, and so the claimer, busy.
            drop(doubled::call(n).enqueue_on(&manager).unwrap());
            let handle = counted_keyed::call(n)
                .idempotency_key(format!("claimed-{n}"))
                .enqueue_on(&manager)
                .unwrap();
            handles.push(handle);
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for (n, handle) in (0..).zip(handles) {
            let id = handle.id();
            assert_eq!(within("a keyed task's handle", handle).await.unwrap(), n);
            let record = manager.get(id).await.unwrap().unwrap();
            assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        }
        let mut runs = KEYED_RUNS.lock().unwrap().clone();
        runs.sort_unstable();
        assert_eq!(runs, (0..2000).collect::<Vec<u32>>(), "each ran once");
        manager.shutdown().await;
    })
}

/// Holds `held` until the test opens [`GATE`].
#[task]
async fn held() -> u32 {
    assert!(GATE.wait().await, "the test never opened the gate");
    7
}

static GATE: taskflow_tests::Latch = taskflow_tests::Latch::new();

fn a_full_store_holds_new_work_without_stopping_running_tasks() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        with_store(&db).await.shutdown().await;
        // Ballast that fills most of the capped file: what the test deletes
        // to give the space back, as an operator would free a full disk.
        {
            let raw = rusqlite::Connection::open(&db).unwrap();
            raw.execute_batch("CREATE TABLE ballast (data BLOB)")
                .unwrap();
            for _ in 0..24 {
                raw.execute("INSERT INTO ballast VALUES (zeroblob(16384))", [])
                    .unwrap();
            }
        }
        // A capped file fails its writes exactly as a full disk does
        // (SQLITE_FULL).
        let manager = TaskManager::builder()
            .snapshot_db(&db)
            .store_max_size(512 * 1024)
            .build()
            .await
            .unwrap();
        let mut events = manager.subscribe();
        WARNINGS.lock().unwrap().clear();
        let running = held::call().enqueue_on(&manager).unwrap();
        wait_for_status(&manager, running.id(), TaskStatus::Running).await;

        let mut handles = Vec::new();
        let failure = loop {
            handles.push(
                sized::call(vec![7; 16 * 1024])
                    .enqueue_on(&manager)
                    .unwrap(),
            );
            if let Ok(event) = events.try_recv()
                && let EventKind::StoreFailed(message) = event.kind
            {
                break message;
            }
            assert!(handles.len() < 1000, "the store never filled up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(failure.contains("full"), "{failure}");
        assert!(
            WARNINGS
                .lock()
                .unwrap()
                .iter()
                .any(|w| w.contains("cannot write to the task store")),
            "the failure is in the log too"
        );
        // A running task keeps running and finishes; its completion waits
        // to be written.
        GATE.open();
        assert_eq!(within("the running task", running).await.unwrap(), 7);
        // New work waits: nothing that cannot be claimed durably starts.
        let last = handles.last().unwrap();
        assert_eq!(last.status(), TaskStatus::Pending);
        assert!(manager.flush().await.is_err(), "the store is still full");

        // Space returns; every change kept is written and every task runs.
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("DELETE FROM ballast")
            .unwrap();
        let enqueued = handles.len();
        for handle in handles {
            assert_eq!(
                within("a task held back by the full store", handle)
                    .await
                    .unwrap(),
                16 * 1024
            );
        }
        assert_eq!(manager.metrics().success, enqueued as u64 + 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        while manager.flush().await.is_err() {
            assert!(Instant::now() < deadline, "writing never resumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let late = sized::call(vec![1]).enqueue_on(&manager).unwrap();
        late.persisted().await.unwrap();
        manager.shutdown().await;
    })
}

// ---------------------------------------------------------------- scenarios

fn scenario_paths() -> (PathBuf, String) {
    (
        PathBuf::from(std::env::var(DB).unwrap()),
        std::env::var(SIDE).unwrap(),
    )
}

/// 500 tasks, each durably acknowledged, then running until killed.
async fn burst() -> ExitCode {
    let (db, side) = scenario_paths();
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .requeue_pending(true)
        .max_concurrent_tasks(4)
        .build()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for n in 0..500u32 {
        let call = if n % 2 == 0 {
            durable_step::call(n, side.clone())
        } else {
            idempotent_step::call(n, side.clone())
        };
        handles.push(call.tag("n", n.to_string()).enqueue_on(&manager).unwrap());
    }
    for handle in &handles {
        handle.persisted().await.unwrap();
    }
    println!("acknowledged {}", handles.len());
    tokio::time::sleep(Duration::from_secs(120)).await;
    ExitCode::FAILURE
}

/// Starts on the file, runs what it claims, waits until nothing is left.
async fn recover() -> ExitCode {
    let (db, _) = scenario_paths();
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .requeue_pending(true)
        .max_concurrent_tasks(4)
        .build()
        .await
        .unwrap();
    eventually("the file to settle", || settled(&manager)).await;
    manager.shutdown().await;
    ExitCode::SUCCESS
}

/// 50 PENDING tasks behind a blocker, durably acknowledged, then killed.
async fn fill() -> ExitCode {
    let (db, side) = scenario_paths();
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .max_concurrent_tasks(1)
        .build()
        .await
        .unwrap();
    let blocked = blocker::call(120_000).enqueue_on(&manager).unwrap();
    blocked.persisted().await.unwrap();
    for n in 0..50 {
        runs_once::call(n, side.clone())
            .enqueue_on(&manager)
            .unwrap()
            .persisted()
            .await
            .unwrap();
    }
    println!("filled");
    tokio::time::sleep(Duration::from_secs(120)).await;
    ExitCode::FAILURE
}

/// Enqueues one keyed task and prints its id and output.
async fn keyed() -> ExitCode {
    let (db, side) = scenario_paths();
    let manager = with_store(&db).await;
    let handle = keyed_work::call(1, side)
        .idempotency_key("order-42")
        .enqueue_on(&manager)
        .unwrap();
    let id = handle.id();
    let output = handle.await.unwrap();
    println!("keyed {id} {output}");
    manager.shutdown().await;
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    taskflow::init();
    taskflow_tests::logs::LogCapture::new(&WARNINGS, tracing::Level::WARN).install();
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "burst" => runtime.block_on(burst()),
            "recover" => runtime.block_on(recover()),
            "fill" => runtime.block_on(fill()),
            "keyed" => runtime.block_on(keyed()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    let trials = vec![
        Trial::test(
            "process_tasks_are_stored_and_requeued_too",
            process_tasks_are_stored_and_requeued_too,
        ),
        Trial::test(
            "every_stored_field_round_trips_through_a_restart",
            every_stored_field_round_trips_through_a_restart,
        ),
        Trial::test(
            "pending_tasks_run_again_after_a_restart_under_their_own_ids",
            pending_tasks_run_again_after_a_restart_under_their_own_ids,
        ),
        Trial::test(
            "persist_true_requeues_that_task_alone",
            persist_true_requeues_that_task_alone,
        ),
        Trial::test(
            "interrupted_tasks_run_again_only_when_declared",
            interrupted_tasks_run_again_only_when_declared,
        ),
        Trial::test(
            "unregistered_names_are_kept_untouched_with_a_warning",
            unregistered_names_are_kept_untouched_with_a_warning,
        ),
        Trial::test(
            "stored_bytes_that_lie_about_their_length_fail_their_task_not_the_process",
            stored_bytes_that_lie_about_their_length_fail_their_task_not_the_process,
        ),
        Trial::test(
            "idempotency_keys_hold_while_live_or_successful",
            idempotency_keys_hold_while_live_or_successful,
        ),
        Trial::test(
            "retry_enqueues_a_copy_with_the_original_arguments_and_tags",
            retry_enqueues_a_copy_with_the_original_arguments_and_tags,
        ),
        Trial::test(
            "retention_prunes_finished_rows_and_never_unfinished_ones",
            retention_prunes_finished_rows_and_never_unfinished_ones,
        ),
        Trial::test(
            "files_that_cannot_be_used_are_clear_errors",
            files_that_cannot_be_used_are_clear_errors,
        ),
        Trial::test(
            "a_claim_whose_answer_was_lost_is_run_after_all",
            a_claim_whose_answer_was_lost_is_run_after_all,
        ),
        Trial::test(
            "an_insert_claimed_whose_answer_was_lost_is_run_after_all",
            an_insert_claimed_whose_answer_was_lost_is_run_after_all,
        ),
        Trial::test(
            "tasks_running_through_the_stray_checks_are_left_alone",
            tasks_running_through_the_stray_checks_are_left_alone,
        ),
        Trial::test(
            "a_listing_by_status_follows_the_task_while_its_row_lags",
            a_listing_by_status_follows_the_task_while_its_row_lags,
        ),
        Trial::test(
            "a_kill_9_mid_burst_loses_no_acknowledged_task",
            a_kill_9_mid_burst_loses_no_acknowledged_task,
        ),
        Trial::test(
            "two_processes_requeue_each_pending_task_exactly_once",
            two_processes_requeue_each_pending_task_exactly_once,
        ),
        Trial::test(
            "a_burst_of_keyed_enqueues_from_one_task_completes",
            a_burst_of_keyed_enqueues_from_one_task_completes,
        ),
        Trial::test(
            "keyed_tasks_claimed_as_they_are_enqueued_run_once_and_resolve",
            keyed_tasks_claimed_as_they_are_enqueued_run_once_and_resolve,
        ),
        Trial::test(
            "idempotency_keys_hold_across_processes",
            idempotency_keys_hold_across_processes,
        ),
        Trial::test(
            "a_full_store_holds_new_work_without_stopping_running_tasks",
            a_full_store_holds_new_work_without_stopping_running_tasks,
        ),
    ];
    harness::run(trials)
}
