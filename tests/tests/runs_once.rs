//! Each task runs once, as documented, across processes sharing a task store
//! file: under another PID namespace, a frozen instance, a `kill -9`; and
//! what one process does to another's tasks (cancel, idempotency keys,
//! rescue events).
//!
//! Liveness is a lease in the store, never a pid: an instance in another
//! PID namespace (containers in one pod) is not judged dead from a pid it
//! cannot see, and an instance frozen past its lease loses its tasks to a
//! rescuer and cannot overwrite what the rescuer decided.
//!
//! Like `persistence.rs`, this binary starts itself again as *scenario*
//! processes (chosen by an environment variable) and runs its tests one at a
//! time.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use taskflow::{EventKind, TaskFilter, TaskId, TaskManager, TaskStatus, task};
use taskflow_tests::harness::{self, Running, scenario_name, stdin_closed, trial};
use taskflow_tests::{PATIENCE, wait_for_status, within};

const DB: &str = "TASKFLOW_TEST_DB";
const SIDE: &str = "TASKFLOW_TEST_SIDE";
const LEASE_MS: &str = "TASKFLOW_TEST_LEASE_MS";

// ---------------------------------------------------------------- the tasks

/// Appends `<n> <pid>` to the side file (the proof a body started, and
/// where), then works for `millis`.
#[task]
async fn step(n: u32, side: String, millis: u64) {
    record_run(n, &side);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[task(requeue_on_interrupt = true)]
async fn idempotent_step(n: u32, side: String, millis: u64) {
    record_run(n, &side);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[task]
async fn always_fails(n: u32) -> Result<(), String> {
    Err(format!("attempt at {n} fails"))
}

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

/// Which tasks started, and in which processes, by `n`.
fn runs(side: &Path) -> BTreeMap<u32, Vec<u32>> {
    let mut runs: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for line in std::fs::read_to_string(side).unwrap_or_default().lines() {
        let mut parts = line.split_whitespace();
        let n = parts.next().unwrap().parse().unwrap();
        let pid = parts.next().unwrap().parse().unwrap();
        runs.entry(n).or_default().push(pid);
    }
    runs
}

// ---------------------------------------------------------------- helpers

/// A temp dir with a store file and a side file in it.
fn files() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let side = dir.path().join("runs");
    (dir, db, side)
}

/// This binary as scenario `name` on `db`, with a lease of `lease_ms`.
fn scenario(name: &str, db: &Path, side: &Path, lease_ms: u64) -> Command {
    let mut command = harness::scenario(name);
    command
        .env(DB, db)
        .env(SIDE, side)
        .env(LEASE_MS, lease_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    command
}

/// The same, started in a new PID namespace (`unshare -p -f --mount-proc`),
/// or `None` where this machine does not permit one.
fn in_pid_namespace(name: &str, db: &Path, side: &Path, lease_ms: u64) -> Option<Command> {
    let permitted = Command::new("unshare")
        .args(["-p", "-f", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !permitted {
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new("unshare");
    command
        .args(["-p", "-f", "--mount-proc"])
        .arg(exe)
        .env(harness::SCENARIO, name)
        .env(DB, db)
        .env(SIDE, side)
        .env(LEASE_MS, lease_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    Some(command)
}

/// Stops `process` (SIGSTOP) at a moment it holds no write lock on `db`.
/// SQLite has one writer at a time: a process frozen inside a commit blocks
/// every other's writes until it resumes, which no lease can change, so the
/// scenario under test is a freeze between commits.
fn freeze(process: &mut Running, db: &Path) {
    let probe = rusqlite::Connection::open(db).unwrap();
    probe.busy_timeout(Duration::ZERO).unwrap();
    for _ in 0..200 {
        process.signal("-STOP");
        // Taking the write lock at once, without waiting, proves that
        // no one holds it.
        if probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_ok() {
            return;
        }
        process.signal("-CONT");
        std::thread::sleep(Duration::from_millis(3));
    }
    panic!("the process held the write lock at each of 200 tries");
}

/// A manager on `db` in this process, with a short lease so that it rescues
/// promptly what dead instances left.
async fn manager(db: &Path, lease: Duration) -> TaskManager {
    TaskManager::builder()
        .snapshot_db(db)
        .lease(lease)
        .poll_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap()
}

fn lease_ms() -> u64 {
    std::env::var(LEASE_MS).unwrap().parse().unwrap()
}

fn paths() -> (PathBuf, String) {
    (
        PathBuf::from(std::env::var(DB).unwrap()),
        std::env::var(SIDE).unwrap(),
    )
}

/// Waits until every line of the side file names a distinct task, and
/// `expected` tasks started.
fn wait_for_runs(side: &Path, expected: usize) -> BTreeMap<u32, Vec<u32>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let runs = runs(side);
        if runs.len() >= expected || Instant::now() > deadline {
            return runs;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_once(runs: &BTreeMap<u32, Vec<u32>>, trial: usize) {
    for (n, pids) in runs {
        assert_eq!(pids.len(), 1, "trial {trial}: task {n} ran {pids:?}");
    }
}

// ---------------------------------------------------------------- scenarios

/// Serves the store until stdin closes: claims and runs what is ready.
async fn serve() -> ExitCode {
    let (db, _) = paths();
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .lease(Duration::from_millis(lease_ms()))
        .poll_interval(Duration::from_millis(50))
        .max_concurrent_tasks(4)
        .build()
        .await
        .unwrap();
    println!("ready {}", std::process::id());
    stdin_closed().await;
    manager.shutdown().await;
    ExitCode::SUCCESS
}

/// Enqueues 20 plain tasks of 200 ms, waits until they are durable, then
/// serves like `serve`.
async fn enqueue_and_serve() -> ExitCode {
    let (db, side) = paths();
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .lease(Duration::from_millis(lease_ms()))
        .poll_interval(Duration::from_millis(50))
        .max_concurrent_tasks(4)
        .build()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for n in 0..20 {
        handles.push(
            step::call(n, side.clone(), 200)
                .tag("n", n.to_string())
                .enqueue_on(&manager)
                .unwrap(),
        );
    }
    for handle in &handles {
        handle.persisted().await.unwrap();
    }
    println!("acknowledged");
    stdin_closed().await;
    manager.shutdown().await;
    ExitCode::SUCCESS
}

/// Runs plain and requeue-able tasks that take long, and waits to be killed.
async fn long_tasks() -> ExitCode {
    let (db, side) = paths();
    let manager = manager(&db, Duration::from_millis(lease_ms())).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let plain = step::call(n, side.clone(), 60_000)
            .enqueue_on(&manager)
            .unwrap();
        let again = idempotent_step::call(10 + n, side.clone(), 300)
            .enqueue_on(&manager)
            .unwrap();
        plain.persisted().await.unwrap();
        again.persisted().await.unwrap();
        ids.push(format!("plain={} again={}", plain.id(), again.id()));
    }
    for id in &ids {
        println!("task {id}");
    }
    println!("acknowledged");
    stdin_closed().await;
    ExitCode::SUCCESS
}

/// Enqueues a task due in two seconds (`pending <id>`) and one that runs
/// for a minute (`running <id>`), then serves.
async fn owned_tasks() -> ExitCode {
    let (db, side) = paths();
    let manager = manager(&db, Duration::from_millis(lease_ms())).await;
    let pending = step::call(1, side.clone(), 10)
        .delay(Duration::from_secs(2))
        .enqueue_on(&manager)
        .unwrap();
    let running = step::call(2, side.clone(), 60_000)
        .enqueue_on(&manager)
        .unwrap();
    pending.persisted().await.unwrap();
    running.persisted().await.unwrap();
    println!("pending {}", pending.id());
    println!("running {}", running.id());
    stdin_closed().await;
    manager.shutdown().await;
    ExitCode::SUCCESS
}

/// For each line `go <key>` on stdin, enqueues `always_fails` under that
/// key and prints `got <key> <id>`.
async fn enqueue_keys() -> ExitCode {
    let (db, _) = paths();
    let manager = manager(&db, Duration::from_millis(lease_ms())).await;
    println!("ready");
    let (lines_in, mut lines_out) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines_in.send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = lines_out.recv().await {
        let Some(key) = line.strip_prefix("go ") else {
            continue;
        };
        let handle = always_fails::call(0)
            .idempotency_key(key)
            .enqueue_on(&manager)
            .unwrap();
        println!("got {key} {}", handle.id());
    }
    manager.shutdown().await;
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------- the tests

/// Two instances share a file, the second in a new PID namespace (as
/// containers of one pod share a volume, not PIDs). It cannot see the
/// first's pid, and must not take that for death: 0 tasks run twice.
fn another_pid_namespace_is_not_death() -> Result<(), Failed> {
    let probe = files();
    if in_pid_namespace("serve", &probe.1, &probe.2, 1_000).is_none() {
        println!("skipped: this machine does not permit `unshare -p -f --mount-proc`");
        return Ok(());
    }
    for trial in 0..20 {
        let (_dir, db, side) = files();
        let mut first = Running::start(scenario("enqueue-and-serve", &db, &side, 2_000));
        first.read("acknowledged");
        let mut second = Running::start(
            in_pid_namespace("serve", &db, &side, 2_000).expect("permitted a moment ago"),
        );
        second.read("ready");
        let runs = wait_for_runs(&side, 20);
        first.stop();
        second.stop();
        assert_eq!(runs.len(), 20, "trial {trial}: every task ran");
        assert_once(&runs, trial);
    }
    Ok(())
}

/// An instance frozen (SIGSTOP) past its lease loses its running tasks to
/// another instance; when it resumes, it can neither complete nor rerun
/// them: 0 tasks run twice, and what the rescuer decided stands (a task
/// rescued as INTERRUPTED stays so, though its body ran to its end in the
/// resumed process: that completion was refused).
fn a_frozen_instance_loses_its_tasks_and_cannot_overwrite_them() -> Result<(), Failed> {
    let mut rescued = 0;
    for trial in 0..20 {
        let (_dir, db, side) = files();
        let mut frozen = Running::start(scenario("enqueue-and-serve", &db, &side, 300));
        frozen.read("acknowledged");
        // Some of its tasks are running when it freezes.
        let deadline = Instant::now() + PATIENCE;
        while runs(&side).is_empty() {
            assert!(Instant::now() < deadline, "trial {trial}: nothing ran");
            std::thread::sleep(Duration::from_millis(2));
        }
        freeze(&mut frozen, &db);
        let mut rescuer = Running::start(scenario("serve", &db, &side, 300));
        rescuer.read("ready");
        // Well past its lease: the rescuer takes its running tasks over.
        std::thread::sleep(Duration::from_millis(1_500));
        frozen.signal("-CONT");
        let runs = wait_for_runs(&side, 20);
        frozen.stop();
        rescuer.stop();
        assert_once(&runs, trial);
        let records = all_records(&db);
        assert_eq!(records.len(), 20, "trial {trial}");
        for record in &records {
            assert!(
                matches!(record.status, TaskStatus::Success | TaskStatus::Interrupted),
                "trial {trial}: {record:?}"
            );
        }
        rescued += records
            .iter()
            .filter(|r| r.status == TaskStatus::Interrupted)
            .count();
    }
    assert!(rescued > 0, "no trial froze an instance with running tasks");
    Ok(())
}

/// Every record in the store, read by a manager of this process once the
/// scenarios have ended.
fn all_records(db: &Path) -> Vec<taskflow::TaskRecord> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let manager = manager(db, Duration::from_secs(10)).await;
        let records = manager.list(&TaskFilter::new()).await.unwrap();
        manager.shutdown().await;
        records
    })
}

/// A plain task acknowledged and in flight at `kill -9` is INTERRUPTED once
/// the instance's lease expires, and never runs again.
fn a_plain_task_in_flight_at_kill_9_is_interrupted_never_rerun() -> Result<(), Failed> {
    for round in 0..20 {
        let (_dir, db, side) = files();
        let mut doomed = Running::start(scenario("long-tasks", &db, &side, 300));
        doomed.read("acknowledged");
        let started = wait_for_runs(&side, 6);
        assert_eq!(started.len(), 6, "round {round}: all six started");
        let _ = doomed.kill();
        trial(async {
            let mut builder = TaskManager::builder()
                .snapshot_db(&db)
                .lease(Duration::from_millis(300))
                .poll_interval(Duration::from_millis(50));
            let mut events = builder.subscribe();
            let rescuer = builder.build().await.unwrap();
            // One event per rescued task, once the dead lease expires.
            let (mut requeued, mut interrupted) = (0, 0);
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while requeued + interrupted < 6 {
                let event = tokio::time::timeout_at(deadline, events.recv())
                    .await
                    .expect("every orphan is rescued in time")
                    .unwrap();
                match event.kind {
                    EventKind::Requeued => requeued += 1,
                    EventKind::Interrupted => interrupted += 1,
                    _ => {}
                }
            }
            assert_eq!((requeued, interrupted), (3, 3), "round {round}");
            let plain = rescuer
                .list(&TaskFilter::new().name(step::NAME))
                .await
                .unwrap();
            assert_eq!(plain.len(), 3);
            assert!(
                plain.iter().all(|r| r.status == TaskStatus::Interrupted),
                "round {round}: {plain:?}"
            );
            // The requeue-able ones run again here; the plain ones never.
            let again = rescuer
                .list(&TaskFilter::new().name(idempotent_step::NAME))
                .await
                .unwrap();
            for record in again {
                wait_for_status(&rescuer, record.id, TaskStatus::Success).await;
            }
            rescuer.shutdown().await;
        })?;
        let runs = runs(&side);
        for n in 0..3 {
            assert_eq!(runs[&n].len(), 1, "round {round}: plain task {n} ran again");
        }
        for n in 10..13 {
            assert_eq!(runs[&n].len(), 2, "round {round}: task {n} was requeued");
        }
    }
    Ok(())
}

/// A PENDING task of another process is cancelled from here and never
/// runs; a RUNNING one is stopped by the process running it, which learns
/// of the request from the store within a bounded time.
fn cancel_reaches_another_process() -> Result<(), Failed> {
    let (_dir, db, side) = files();
    let mut owner = Running::start(scenario("owned-tasks", &db, &side, 1_000));
    let pending: TaskId = owner
        .read("pending")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let running: TaskId = owner
        .read("running")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    wait_for_runs(&side, 1);
    trial(async {
        let here = manager(&db, Duration::from_secs(1)).await;
        here.cancel(pending).await.unwrap();
        // It was PENDING: CANCELLED at once, and nobody ever runs it, though
        // it was due two seconds after it was enqueued.
        let record = here.get(pending).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Cancelled);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!runs(&side).contains_key(&1), "a cancelled task ran");

        here.cancel(running).await.unwrap();
        let record = wait_for_status(&here, running, TaskStatus::Cancelled).await;
        assert_eq!(record.attempts, 1);
        here.shutdown().await;
    })?;
    owner.stop();
    assert_eq!(runs(&side)[&2].len(), 1, "the cancelled task ran once");
    Ok(())
}

/// When a keyed task ends FAILED, its key is released in the store before
/// any handle observes the end: a process enqueuing the same key at once
/// gets a new task, never the failed one. 30 trials.
fn a_failed_key_is_free_before_its_handle_resolves() -> Result<(), Failed> {
    let (_dir, db, side) = files();
    let mut other = Running::start(scenario("enqueue-keys", &db, &side, 2_000));
    other.read("ready");
    trial(async {
        let here = manager(&db, Duration::from_secs(2)).await;
        for trial in 0..30 {
            let key = format!("order-{trial}");
            let handle = always_fails::call(trial)
                .idempotency_key(key.clone())
                .enqueue_on(&here)
                .unwrap();
            let failed = handle.id();
            let error = within("the failing keyed task", handle).await.unwrap_err();
            assert!(error.message().contains("fails"), "{error}");
            other.say(&format!("go {key}"));
            let answer = tokio::task::block_in_place(|| other.read("got"));
            let id: TaskId = answer.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert_ne!(
                id, failed,
                "trial {trial}: the other process reused the failed task"
            );
        }
        here.shutdown().await;
    })?;
    other.stop();
    Ok(())
}

fn main() -> ExitCode {
    taskflow::init();
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "serve" => runtime.block_on(serve()),
            "enqueue-and-serve" => runtime.block_on(enqueue_and_serve()),
            "long-tasks" => runtime.block_on(long_tasks()),
            "enqueue-keys" => runtime.block_on(enqueue_keys()),
            "owned-tasks" => runtime.block_on(owned_tasks()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    harness::run(vec![
        Trial::test(
            "another_pid_namespace_is_not_death",
            another_pid_namespace_is_not_death,
        ),
        Trial::test(
            "a_frozen_instance_loses_its_tasks_and_cannot_overwrite_them",
            a_frozen_instance_loses_its_tasks_and_cannot_overwrite_them,
        ),
        Trial::test(
            "a_plain_task_in_flight_at_kill_9_is_interrupted_never_rerun",
            a_plain_task_in_flight_at_kill_9_is_interrupted_never_rerun,
        ),
        Trial::test(
            "cancel_reaches_another_process",
            cancel_reaches_another_process,
        ),
        Trial::test(
            "a_failed_key_is_free_before_its_handle_resolves",
            a_failed_key_is_free_before_its_handle_resolves,
        ),
    ])
}
