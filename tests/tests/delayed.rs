//! Delayed tasks: a task enqueued with `delay` is PENDING with its `run_at`
//! on its record and in `list`, and starts no earlier than that, without a
//! task store and with one. A retry's backoff is a persisted `run_at` too: a
//! process killed (SIGKILL) while its task waits for its retry leaves the
//! task PENDING in the file, and the next instance runs the retry at the
//! persisted time: not at once, and not never. A task due beyond the
//! memory horizon waits in the store alone, and still runs on time.
//!
//! Like `persistence.rs`, this binary runs its tests with libtest-mimic and
//! starts itself again as a *scenario* process for the crash.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};
use taskflow::store::PostgresConfig;
use taskflow::{
    QueueConfig, TaskFilter, TaskId, TaskManager, TaskManagerBuilder, TaskStatus, task,
};
use taskflow_tests::harness::{self, KillOnDrop, lines, read_until, scenario_name, trial};
use taskflow_tests::postgres::{self, Schema};
use taskflow_tests::{PATIENCE, wait_for, wait_for_status, within};

const DB: &str = "TASKFLOW_TEST_DB";
const SIDE: &str = "TASKFLOW_TEST_SIDE";

/// Delayed tasks per mode.
const TASKS: u32 = 1000;

/// When each body started, by run and task number.
static STARTED: Mutex<Vec<(String, u32, SystemTime)>> = Mutex::new(Vec::new());

#[task]
async fn punctual(run: String, n: u32) {
    let now = SystemTime::now();
    STARTED.lock().unwrap().push((run, n, now));
}

/// Fails its first attempt; the retry waits 2 s. Each attempt appends
/// `<attempt> <pid> <start µs> <end µs>` to the side file.
#[task(retries = 1, delay = "2s")]
async fn fails_first(side: String) -> Result<u32, String> {
    let start = micros(SystemTime::now());
    let attempt = taskflow::context().expect("inside a task").attempt;
    let end = micros(SystemTime::now());
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&side)
        .unwrap();
    file.write_all(format!("{attempt} {} {start} {end}\n", std::process::id()).as_bytes())
        .unwrap();
    match attempt {
        0 => Err("the first attempt fails".into()),
        n => Ok(n),
    }
}

/// Fails its first attempt; the retry waits 10 s (beyond the horizon of
/// `far_tasks_wait_in_the_store_alone`).
#[task(retries = 1, delay = "10s")]
async fn fails_then_waits() -> Result<u32, String> {
    match taskflow::context().expect("inside a task").attempt {
        0 => Err("the first attempt fails".into()),
        n => Ok(n),
    }
}

/// Microseconds since the epoch: the store's resolution, so times read back
/// from it compare exactly with times taken here.
fn micros(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap().as_micros()
}

// ---------------------------------------------------------------- tests

/// What the test knows of one delayed task.
struct Delayed {
    id: TaskId,
    /// `run_at` must lie between these: the clock read before `delay` and
    /// after the enqueue, each plus the delay.
    earliest: SystemTime,
    latest: SystemTime,
    run_at: SystemTime,
}

async fn thousand_delayed_tasks(run: &str, db: Option<&Path>) {
    let builder = TaskManager::builder();
    let manager = match db {
        Some(db) => builder.snapshot_db(db),
        None => builder,
    }
    .build()
    .await
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut tasks = Vec::new();
    let mut handles = Vec::new();
    for n in 0..TASKS {
        let delay = Duration::from_millis(rng.u64(0..=300));
        let before = SystemTime::now();
        let handle = punctual::call(run.to_owned(), n)
            .delay(delay)
            .enqueue_on(&manager)
            .unwrap();
        let after = SystemTime::now();
        let record = handle.record();
        assert!(
            record.run_at >= before + delay && record.run_at <= after + delay,
            "task {n}: run_at is its enqueue time plus its delay of {delay:?}"
        );
        tasks.push(Delayed {
            id: handle.id(),
            earliest: before + delay,
            latest: after + delay,
            run_at: record.run_at,
        });
        handles.push(handle);
    }
    // One more, far enough ahead that it is surely still waiting below.
    let late = punctual::call(run.to_owned(), TASKS)
        .delay(Duration::from_secs(2))
        .enqueue_on(&manager)
        .unwrap();
    let late_run_at = late.record().run_at;

    // While PENDING, `run_at` is on the record and in `list`.
    let pending: HashMap<TaskId, SystemTime> = manager
        .list(&TaskFilter::new().status(TaskStatus::Pending))
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.id, record.run_at))
        .collect();
    let listed_at = SystemTime::now();
    let record = manager.get(late.id()).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Pending);
    assert_eq!(micros(record.run_at), micros(late_run_at));
    assert_eq!(
        pending.get(&late.id()).map(|&t| micros(t)),
        Some(micros(late_run_at))
    );
    // A task not due when `list` returned was PENDING in it.
    for task in tasks.iter().filter(|task| task.run_at > listed_at) {
        let listed = pending.get(&task.id).copied();
        assert_eq!(
            listed.map(micros),
            Some(micros(task.run_at)),
            "task {} is listed PENDING with its run_at",
            task.id
        );
    }

    for handle in handles {
        within("every delayed task", handle).await.unwrap();
    }
    within("the late task", late).await.unwrap();
    let started: HashMap<u32, SystemTime> = STARTED
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, ..)| name == run)
        .map(|&(_, n, at)| (n, at))
        .collect();
    assert_eq!(started.len(), TASKS as usize + 1, "each body ran once");
    if db.is_some() {
        manager.flush().await.unwrap();
    }
    let unfinished: Vec<_> = manager
        .list(&TaskFilter::new())
        .await
        .unwrap()
        .into_iter()
        .filter(|record| record.status != TaskStatus::Success)
        .collect();
    assert!(
        unfinished.is_empty(),
        "{run}: every task is recorded SUCCESS once its handle resolved: {unfinished:#?}"
    );
    for (n, task) in (0..TASKS).zip(&tasks) {
        let record = manager.get(task.id).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Success);
        assert_eq!(micros(record.run_at), micros(task.run_at));
        assert!(task.earliest <= task.run_at && task.run_at <= task.latest);
        let body = started[&n];
        assert!(
            micros(body) >= micros(task.run_at),
            "task {n} started {:?} before its run_at",
            task.run_at.duration_since(body).unwrap_or_default()
        );
        let started_at = record.started_at.unwrap();
        assert!(
            micros(started_at) >= micros(task.run_at),
            "task {n}: {record:?}"
        );
    }
    assert!(micros(started[&TASKS]) >= micros(late_run_at));
    manager.shutdown().await;
}

fn delayed_tasks_start_no_earlier_than_their_run_at() -> Result<(), Failed> {
    trial(thousand_delayed_tasks("memory", None))
}

fn stored_delayed_tasks_start_no_earlier_than_their_run_at() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    trial(thousand_delayed_tasks(
        "store",
        Some(&dir.path().join("tasks.db")),
    ))
}

/// Tasks due beyond the memory horizon leave memory once written (and no
/// handle holds them): `metrics` stops counting them, the store still lists
/// them, a cancel still reaches one, its key still holds, and each runs,
/// once, no earlier than its `run_at`. A held handle keeps its task in
/// memory, and so does a queue with a `max_size`. A retry whose backoff
/// reaches beyond the horizon waits in the store alone too.
async fn far_tasks_wait_in_the_store_alone(run: &str, store: TaskManagerBuilder) {
    const RESTING: u32 = 300;
    const CAPPED: u32 = 10;
    let delay = Duration::from_secs(10);
    let manager = store
        .requeue_pending(true)
        .memory_horizon(Duration::from_secs(2))
        .lease(Duration::from_secs(2))
        .queue("capped", QueueConfig::new().max_size(100))
        .build()
        .await
        .unwrap();
    let enqueued = SystemTime::now();
    let mut ids = Vec::new();
    for n in 0..RESTING {
        let handle = punctual::call(run.to_owned(), n)
            .delay(delay)
            .enqueue_on(&manager)
            .unwrap();
        ids.push((n, handle.id()));
    }
    for n in RESTING..RESTING + CAPPED {
        let handle = punctual::call(run.to_owned(), n)
            .delay(delay)
            .queue("capped")
            .enqueue_on(&manager)
            .unwrap();
        ids.push((n, handle.id()));
    }
    let held = punctual::call(run.to_owned(), 1000)
        .delay(delay)
        .enqueue_on(&manager)
        .unwrap();
    let keyed = punctual::call(run.to_owned(), 1001)
        .delay(delay)
        .idempotency_key(format!("{run}-reminder"))
        .enqueue_on(&manager)
        .unwrap()
        .id();
    let retried = fails_then_waits::call().enqueue_on(&manager).unwrap().id();
    let doomed = punctual::call(run.to_owned(), 1002)
        .delay(delay)
        .enqueue_on(&manager)
        .unwrap()
        .id();

    // Only the held task and the capped queue's stay counted in memory.
    let memory = u64::from(CAPPED) + 1;
    let rested = wait_for(delay / 2, || {
        let manager = manager.clone();
        async move { manager.metrics().pending == memory }
    })
    .await;
    assert!(
        rested,
        "tasks due beyond the horizon left memory within {:?}: {:?}",
        delay / 2,
        manager.metrics()
    );
    assert!(
        SystemTime::now() < enqueued + delay,
        "the machine was too slow for this test: the tasks are due already"
    );
    let stats = manager.queue_stats().await.unwrap();
    let default = stats.iter().find(|q| q.name == "default").unwrap();
    assert_eq!(default.pending, u64::from(RESTING) + 4, "{stats:?}");
    let (_, first) = ids[0];
    let record = manager.get(first).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Pending);
    assert!(record.run_at >= enqueued + delay);
    let listed = manager
        .list(&TaskFilter::new().status(TaskStatus::Pending).limit(1000))
        .await
        .unwrap();
    assert_eq!(listed.len(), (RESTING + CAPPED + 4) as usize);
    let waiting = manager.get(retried).await.unwrap().unwrap();
    assert_eq!((waiting.status, waiting.attempts), (TaskStatus::Pending, 1));
    // The key still holds: the same task, from the store.
    let again = punctual::call(run.to_owned(), 1003)
        .delay(delay)
        .idempotency_key(format!("{run}-reminder"))
        .enqueue_on(&manager)
        .unwrap();
    assert_eq!(again.id(), keyed);
    drop(again);
    manager.cancel(doomed).await.unwrap();
    let cancelled = manager.get(doomed).await.unwrap().unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(
        cancelled.run_at >= enqueued + delay,
        "a cancelled task keeps the time it was due: {cancelled:?}"
    );

    within("the held task", held).await.unwrap();
    let done = wait_for(PATIENCE, || {
        let manager = manager.clone();
        async move { manager.metrics().success == u64::from(RESTING + CAPPED + 3) }
    })
    .await;
    assert!(done, "every task ran: {:?}", manager.metrics());
    let started: HashMap<u32, usize> = STARTED
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, ..)| name == run)
        .fold(HashMap::new(), |mut runs, &(_, n, _)| {
            *runs.entry(n).or_default() += 1;
            runs
        });
    assert!(!started.contains_key(&1002), "the cancelled task never ran");
    assert!(
        !started.contains_key(&1003),
        "a second task for the key never ran"
    );
    for (n, id) in ids.iter().copied().chain([(1000, keyed), (1001, keyed)]) {
        if n == 1000 {
            continue;
        }
        assert_eq!(started.get(&n), Some(&1), "task {n} ran once");
        let record = manager.get(id).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Success);
        assert!(
            micros(record.started_at.unwrap()) >= micros(record.run_at),
            "task {n} started before its run_at: {record:?}"
        );
    }
    assert_eq!(started.get(&1000), Some(&1));
    let retry = manager.get(retried).await.unwrap().unwrap();
    assert_eq!((retry.status, retry.attempts), (TaskStatus::Success, 2));
    manager.shutdown().await;
}

fn far_tasks_cost_a_row_not_memory() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    trial(far_tasks_wait_in_the_store_alone(
        "far-sqlite",
        TaskManager::builder().snapshot_db(db),
    ))
}

fn far_tasks_cost_a_row_not_memory_on_postgres() -> Result<(), Failed> {
    trial(async {
        let test = "far_tasks_cost_a_row_not_memory_on_postgres";
        let Some(url) = postgres::server(test).await else {
            return;
        };
        let schema = Schema::new(&url, "far").await;
        let config = PostgresConfig::new(url.as_str()).schema(schema.name());
        far_tasks_wait_in_the_store_alone("far-postgres", TaskManager::builder().postgres(config))
            .await;
    })
}

/// One attempt as the side file tells it.
#[derive(Debug)]
struct Attempt {
    attempt: u32,
    pid: u32,
    start: u128,
    end: u128,
}

fn attempts(side: &Path) -> Vec<Attempt> {
    std::fs::read_to_string(side)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let fields: Vec<u128> = line
                .split_whitespace()
                .map(|field| field.parse().unwrap())
                .collect();
            Attempt {
                attempt: fields[0] as u32,
                pid: fields[1] as u32,
                start: fields[2],
                end: fields[3],
            }
        })
        .collect()
}

fn a_retry_waiting_in_a_killed_process_runs_at_its_persisted_time() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    let (db, side) = (dir.path().join("tasks.db"), dir.path().join("attempts"));
    let mut crashed = KillOnDrop::new(
        harness::scenario("backoff")
            .env(DB, &db)
            .env(SIDE, &side)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let crashed_pid = crashed.child().id();
    let mut out = lines(crashed.child());
    let line = read_until(crashed.child(), &mut out, "waiting");
    let id: TaskId = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SIGKILL during the 2 s backoff.
    crashed.child().kill().unwrap();
    crashed.child().wait().unwrap();
    let first = attempts(&side);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!((first[0].attempt, first[0].pid), (0, crashed_pid));
    let failed_at = first[0].end;

    trial(async move {
        let manager = TaskManager::builder()
            .snapshot_db(&db)
            .build()
            .await
            .unwrap();
        let waiting = manager.get(id).await.unwrap().unwrap();
        let run_at = micros(waiting.run_at);
        assert!(
            run_at >= failed_at + 2_000_000,
            "the retry is due 2 s after the failure: {waiting:?}"
        );
        // Still waiting, unless this start took longer than the backoff.
        if waiting.status == TaskStatus::Pending {
            assert_eq!(waiting.attempts, 1);
            let error = waiting.last_error.as_ref().unwrap();
            assert_eq!(error.message(), "the first attempt fails");
        }

        let done = wait_for_status(&manager, id, TaskStatus::Success).await;
        assert_eq!(done.attempts, 2);
        let all = attempts(&side);
        assert_eq!(
            all.len(),
            2,
            "one attempt before the kill, one after: {all:?}"
        );
        let retry = &all[1];
        assert_eq!((retry.attempt, retry.pid), (1, std::process::id()));
        assert!(
            retry.start >= run_at,
            "the retry started {} µs before its persisted run_at",
            run_at - retry.start
        );
        assert!(micros(done.started_at.unwrap()) <= micros(done.finished_at.unwrap()));
        manager.shutdown().await;
    })?;
    drop(crashed);
    drop(dir);
    Ok(())
}

// ---------------------------------------------------------------- scenarios

/// Enqueues `fails_first`, waits until its first attempt failed and the
/// retry's wait is on disk, says so, and waits to be killed.
async fn backoff() -> ExitCode {
    let db = PathBuf::from(std::env::var(DB).unwrap());
    let side = std::env::var(SIDE).unwrap();
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .build()
        .await
        .unwrap();
    let handle = fails_first::call(side).enqueue_on(&manager).unwrap();
    let id = handle.id();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let record = manager.get(id).await.unwrap().unwrap();
        if record.status == TaskStatus::Pending && record.attempts == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry wait: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    manager.flush().await.unwrap();
    println!("waiting {id}");
    tokio::time::sleep(Duration::from_secs(120)).await;
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    taskflow::init();
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "backoff" => runtime.block_on(backoff()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    harness::run(vec![
        Trial::test(
            "delayed_tasks_start_no_earlier_than_their_run_at",
            delayed_tasks_start_no_earlier_than_their_run_at,
        ),
        Trial::test(
            "stored_delayed_tasks_start_no_earlier_than_their_run_at",
            stored_delayed_tasks_start_no_earlier_than_their_run_at,
        ),
        Trial::test(
            "far_tasks_cost_a_row_not_memory",
            far_tasks_cost_a_row_not_memory,
        ),
        Trial::test(
            "far_tasks_cost_a_row_not_memory_on_postgres",
            far_tasks_cost_a_row_not_memory_on_postgres,
        ),
        Trial::test(
            "a_retry_waiting_in_a_killed_process_runs_at_its_persisted_time",
            a_retry_waiting_in_a_killed_process_runs_at_its_persisted_time,
        ),
    ])
}
