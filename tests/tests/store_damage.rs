//! A damaged or vanished task store, as an unlucky operator (or anyone with
//! write access to the file) would leave it: corrupt rows are reported once
//! and skipped while every good row still loads, lists and runs; a store file
//! deleted or replaced under a running manager is noticed instead of silently
//! acknowledging tasks no restart will see; a new store file is private.
//!
//! The tests share a global `tracing` capture, so they run one at a time
//! (libtest-mimic, like `persistence.rs`).

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use taskflow::{Error, EventKind, TaskFilter, TaskId, TaskManager, TaskStatus, task};
use taskflow_tests::harness::{self, trial};
use taskflow_tests::{PATIENCE, eventually, wait_for_status, within};

/// Appends `<n>` to the side file: the proof a body ran.
fn record_run(n: u32, side: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(side)
        .unwrap();
    file.write_all(format!("{n}\n").as_bytes()).unwrap();
}

fn runs(side: &Path) -> Vec<u32> {
    std::fs::read_to_string(side)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

#[task]
async fn note(n: u32, side: String) {
    record_run(n, &side);
}

#[task(requeue_on_interrupt = true)]
async fn idempotent_note(n: u32, side: String) {
    record_run(n, &side);
}

/// Error-level log lines the runtime wrote, captured by a minimal subscriber.
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many captured error lines mention `text`.
fn errors_mentioning(text: &str) -> usize {
    ERRORS
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(text))
        .count()
}

/// Which `n` each task enqueued by the first manager was given.
static TAGGED: Mutex<Vec<(u32, TaskId)>> = Mutex::new(Vec::new());

fn id(n: u32) -> TaskId {
    TAGGED
        .lock()
        .unwrap()
        .iter()
        .find(|(m, _)| *m == n)
        .unwrap_or_else(|| panic!("no task {n}"))
        .1
}

/// A tags column whose sequence length claims 2^40 entries (LEB128): the
/// bytes an attacker, or one corrupted byte, leaves behind.
const HUGE_TAGS: &[u8] = &[0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];

fn corrupt_rows_are_reported_once_and_every_good_row_still_works() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let side = dir.path().join("runs");
        let side_text = side.display().to_string();

        // Real rows, written by taskflow itself.
        let first = TaskManager::builder()
            .snapshot_db(&db)
            .build()
            .await
            .unwrap();
        for n in 0..4 {
            let handle = note::call(n, side_text.clone())
                .tag("n", n.to_string())
                .enqueue_on(&first)
                .unwrap();
            TAGGED.lock().unwrap().push((n, handle.id()));
            within("a first run", handle).await.unwrap();
        }
        for n in 10..12 {
            let handle = idempotent_note::call(n, side_text.clone())
                .tag("n", n.to_string())
                .enqueue_on(&first)
                .unwrap();
            TAGGED.lock().unwrap().push((n, handle.id()));
            within("a first run", handle).await.unwrap();
        }
        first.flush().await.unwrap();
        first.shutdown().await;
        std::fs::remove_file(&side).unwrap();

        // Then damaged by someone else: row 0 left to run again (good), row 1
        // left to run again with undecodable tags, row 2 with a status no
        // taskflow writes, row 10 left RUNNING by a dead instance with
        // undecodable arguments, row 11 left RUNNING by it intact.
        let sql = rusqlite::Connection::open(&db).unwrap();
        let set = |n: u32, assignments: &str, value: &dyn rusqlite::ToSql| {
            sql.execute(
                &format!("UPDATE tasks SET {assignments} WHERE id = ?2"),
                rusqlite::params![value, id(n).to_bytes()],
            )
            .unwrap();
        };
        let requeued = "status = 'PENDING', owner = NULL, started_at = NULL, finished_at = NULL, attempts = 0, tags = coalesce(?1, tags)";
        set(0, requeued, &rusqlite::types::Null);
        set(1, requeued, &HUGE_TAGS);
        set(2, "status = ?1", &"BOGUS");
        sql.execute(
            "INSERT INTO instances (id, pid, host, started_at, heartbeat_at) VALUES ('gone', 0, 'elsewhere', 0, 0)",
            [],
        )
        .unwrap();
        let dead_running =
            "status = 'RUNNING', owner = 'gone', finished_at = NULL, args = coalesce(?1, args)";
        set(10, dead_running, &vec![0xffu8; 8]);
        set(11, dead_running, &rusqlite::types::Null);
        drop(sql);

        ERRORS.lock().unwrap().clear();
        let mut builder = TaskManager::builder()
            .snapshot_db(&db)
            .requeue_pending(true);
        let mut events = builder.subscribe();
        let second = within("a build over corrupt rows", builder.build())
            .await
            .expect("corrupt rows never stop a manager from building");

        // The good rows run: the released one and the intact interrupted one.
        wait_for_status(&second, id(0), TaskStatus::Success).await;
        wait_for_status(&second, id(11), TaskStatus::Success).await;
        // The row with bad arguments fails with why, and nothing else is hurt.
        let bad_args = wait_for_status(&second, id(10), TaskStatus::Failed).await;
        let reason = bad_args.last_error.unwrap();
        assert!(
            reason
                .message()
                .contains("cannot decode the task's arguments"),
            "{reason}"
        );
        let mut ran = runs(&side);
        ran.sort_unstable();
        assert_eq!(
            ran,
            [0, 11],
            "the good rows ran once each, the bad ones never"
        );

        // Listing skips the unreadable rows and shows every other one.
        let listed = second.list(&TaskFilter::new()).await.unwrap();
        let mut shown: Vec<TaskId> = listed.iter().map(|record| record.id).collect();
        shown.sort_unstable();
        let mut expected = vec![id(0), id(3), id(10), id(11)];
        expected.sort_unstable();
        assert_eq!(shown, expected);
        // Again: nothing new to report.
        second.list(&TaskFilter::new()).await.unwrap();

        // Each bad row is reported once: in the log and on the bus.
        for n in [1, 2] {
            assert_eq!(
                errors_mentioning(&id(n).to_string()),
                1,
                "row {n} is reported exactly once: {:?}",
                ERRORS.lock().unwrap()
            );
        }
        let mut reported = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let EventKind::CorruptRow(reason) = &event.kind {
                reported.push((event.id, reason.clone()));
            }
        }
        reported.sort();
        let mut expected_ids = vec![id(1), id(2)];
        expected_ids.sort();
        assert_eq!(
            reported.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            expected_ids,
            "{reported:?}"
        );
        let reason = |n: u32| {
            let wanted = id(n);
            reported
                .iter()
                .find(|(id, _)| *id == wanted)
                .map(|(_, reason)| reason.clone())
                .unwrap()
        };
        assert!(reason(1).contains("tags"), "{reported:?}");
        assert!(reason(2).contains("unknown status `BOGUS`"), "{reported:?}");

        // Asked for by id, a corrupt row is a clear error, not a panic.
        let error = second.get(id(1)).await.unwrap_err();
        assert!(matches!(error, Error::CorruptRow { .. }), "{error:?}");
        assert!(error.to_string().contains("tags"), "{error}");
        second.shutdown().await;

        // And the next start is as uneventful.
        let third = within(
            "a second build over corrupt rows",
            TaskManager::builder()
                .snapshot_db(&db)
                .requeue_pending(true)
                .build(),
        )
        .await
        .unwrap();
        assert_eq!(third.list(&TaskFilter::new()).await.unwrap().len(), 4);
        third.shutdown().await;
    })
}

/// Deletes the store file or swaps another in, under a running manager.
async fn lose_the_store_file(replace: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let side = dir.path().join("runs").display().to_string();
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .build()
        .await
        .unwrap();
    let mut events = manager.subscribe();
    let before = note::call(1, side.clone()).enqueue_on(&manager).unwrap();
    before.persisted().await.unwrap();

    if replace {
        // Renamed over the path, so that no write in between can find the
        // path empty (which is a deletion, and reported as one).
        let other = dir.path().join("other.db");
        rusqlite::Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE unrelated (x)")
            .unwrap();
        std::fs::rename(&other, &db).unwrap();
    } else {
        let _ = std::fs::remove_file(&db);
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    let after = note::call(2, side.clone()).enqueue_on(&manager).unwrap();
    let error = within("persisted() after the loss", after.persisted())
        .await
        .expect_err("a task written to a lost file is not acknowledged");
    assert!(matches!(error, Error::Store(_)), "{error:?}");
    // It still runs, in memory: only durability is lost.
    within("the task after the loss", after).await.unwrap();
    let error = manager.flush().await.unwrap_err();
    let what = if replace { "replaced" } else { "deleted" };
    assert!(error.to_string().contains(what), "{error}");

    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while failures.is_empty() && tokio::time::Instant::now() < deadline {
        while let Ok(event) = events.try_recv() {
            if let EventKind::StoreFailed(message) = event.kind {
                failures.push(message);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(failures.len(), 1, "reported once: {failures:?}");
    assert!(failures[0].contains(what), "{}", failures[0]);
    assert!(failures[0].contains("tasks.db"), "{}", failures[0]);
    // A third task: still not acknowledged, and no second report.
    let third = note::call(3, side).enqueue_on(&manager).unwrap();
    assert!(third.persisted().await.is_err());
    eventually("the third task", || third.status() == TaskStatus::Success).await;
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event.kind, EventKind::StoreFailed(_)),
            "the loss is reported once"
        );
    }
    manager.shutdown().await;
}

fn a_deleted_store_file_is_noticed() -> Result<(), Failed> {
    trial(lose_the_store_file(false))
}

fn a_replaced_store_file_is_noticed() -> Result<(), Failed> {
    trial(lose_the_store_file(true))
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn a_new_store_file_is_private() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        for (name, chosen, expected) in [
            ("private.db", None, 0o600),
            ("shared.db", Some(0o640), 0o640),
        ] {
            let db = dir.path().join(name);
            let mut builder = TaskManager::builder().snapshot_db(&db);
            if let Some(mode) = chosen {
                builder = builder.store_file_mode(mode);
            }
            let manager = builder.build().await.unwrap();
            let handle = note::call(1, dir.path().join("runs").display().to_string())
                .enqueue_on(&manager)
                .unwrap();
            handle.persisted().await.unwrap();
            for suffix in ["", "-wal", "-shm"] {
                let file = dir.path().join(format!("{name}{suffix}"));
                assert_eq!(
                    mode(&file),
                    expected,
                    "{} has mode {:o}",
                    file.display(),
                    mode(&file)
                );
            }
            manager.shutdown().await;
        }
    })
}

fn main() -> ExitCode {
    taskflow::init();
    taskflow_tests::logs::LogCapture::new(&ERRORS, tracing::Level::ERROR).install();
    harness::run(vec![
        Trial::test(
            "corrupt_rows_are_reported_once_and_every_good_row_still_works",
            corrupt_rows_are_reported_once_and_every_good_row_still_works,
        ),
        Trial::test(
            "a_deleted_store_file_is_noticed",
            a_deleted_store_file_is_noticed,
        ),
        Trial::test(
            "a_replaced_store_file_is_noticed",
            a_replaced_store_file_is_noticed,
        ),
        Trial::test("a_new_store_file_is_private", a_new_store_file_is_private),
    ])
}
