//! Hosts sharing one PostgreSQL store steer each other's tasks: cancel,
//! retry, pause and resume, queue statistics, `get` and `list` (paged),
//! idempotency keys and awaited handles work from any host; and a burst of
//! tasks rides out every connection being terminated under it, losing
//! nothing acknowledged, with one event and a log line saying so.
//!
//! Two managers on one schema in this process are two "hosts" for most
//! tests (each knows only what the store tells it about the other's
//! tasks); cancelling a task that is running elsewhere uses a separate OS
//! process as the other host. Like `runs_once.rs`, this binary starts
//! itself again as such a *scenario* process (chosen by an environment
//! variable), enters worker mode first, and runs its tests one at a time.
//! Each test works in a schema of its own, dropped at its end; without a
//! PostgreSQL server each test prints that it is skipped (and fails instead
//! under `TASKFLOW_REQUIRE_POSTGRES=1`).

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use taskflow::store::PostgresConfig;
use taskflow::{
    EventKind, Resource, TaskFilter, TaskId, TaskManager, TaskManagerBuilder, TaskStatus, task,
};
use taskflow_tests::harness::{self, KillOnDrop, Lines, lines, read_until, scenario_name, trial};
use taskflow_tests::postgres::{self, Schema};
use taskflow_tests::{Gates, PATIENCE, wait_for_status, wait_until, within};

/// The schema a scenario process works in.
const SCHEMA: &str = "TASKFLOW_TEST_SCHEMA";
/// The file a scenario's task bodies write what they did to.
const SIDE: &str = "TASKFLOW_TEST_SIDE";

// ---------------------------------------------------------------- the tasks

/// Which host a manager is: each gives its tasks its own name.
#[derive(Debug)]
struct Host(&'static str);

/// Every run of `remember` and `fails_first_time`: the test's label, the
/// task's number, and the host that ran it.
static RUNS: Mutex<Vec<(String, u64, &'static str)>> = Mutex::new(Vec::new());

fn ran(label: &str, n: u64, host: &'static str) {
    RUNS.lock().unwrap().push((label.to_owned(), n, host));
}

/// The runs of test `label`: (task number, host), in the order they started.
fn runs(label: &str) -> Vec<(u64, &'static str)> {
    RUNS.lock()
        .unwrap()
        .iter()
        .filter(|(l, ..)| l == label)
        .map(|(_, n, host)| (*n, *host))
        .collect()
}

/// Records that it ran, and where; answers the host's name.
#[task]
async fn remember(label: String, n: u64, host: Resource<Host>) -> String {
    ran(&label, n, host.0);
    host.0.to_owned()
}

/// The same in the thread pool.
#[task]
fn remember_sync(label: String, n: u64, host: Resource<Host>) -> String {
    ran(&label, n, host.0);
    host.0.to_owned()
}

/// Fails the first time it runs for `label`, saying where; succeeds after.
#[task]
async fn fails_first_time(label: String, host: Resource<Host>) -> Result<String, String> {
    let first = runs(&label).is_empty();
    ran(&label, 0, host.0);
    match first {
        true => Err(format!("the first attempt fails, on {}", host.0)),
        false => Ok(host.0.to_owned()),
    }
}

/// Gates the blockers below wait on, one per test.
static GATES: Gates = Gates::new();

#[task]
async fn wait_at(gate: String) {
    GATES.wait(&gate).await;
}

#[task]
fn wait_at_sync(gate: String) {
    GATES.wait_blocking(&gate);
}

/// Waits at `gate`, then answers `n`.
#[task]
async fn answer_at(gate: String, n: u64) -> u64 {
    GATES.wait(&gate).await;
    n
}

/// Appends one line to the side file (one write: lines never interleave).
fn side_line(side: &str, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(side)
        .unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// Says on the side file that the async body below was dropped (its
/// attempt aborted), whether or not it finished.
struct SaysDropped(String);

impl Drop for SaysDropped {
    fn drop(&mut self) {
        side_line(&self.0, "dropped async");
    }
}

/// Runs for two minutes unless stopped; says when it starts, finishes, and
/// when its future is dropped.
#[task]
async fn hold(side: String) {
    side_line(&side, &format!("started async {}", std::process::id()));
    let _dropped = SaysDropped(side.clone());
    tokio::time::sleep(Duration::from_secs(120)).await;
    side_line(&side, "finished async");
}

/// The same in a worker process, which says its pid.
#[task(executor = "process")]
fn hold_in_worker(side: String) {
    side_line(&side, &format!("started process {}", std::process::id()));
    std::thread::sleep(Duration::from_secs(120));
    side_line(&side, "finished process");
}

/// Tasks in the burst.
const BURST: usize = 3000;

/// How many times each task of the burst started.
static BURST_RUNS: [AtomicU32; BURST] = [const { AtomicU32::new(0) }; BURST];

#[task]
async fn burst_step(n: u32) -> u32 {
    BURST_RUNS[n as usize].fetch_add(1, Ordering::SeqCst);
    // Long enough that tasks are running at every moment of the burst.
    tokio::time::sleep(Duration::from_millis(2)).await;
    n
}

fn burst_started() -> usize {
    BURST_RUNS
        .iter()
        .map(|runs| runs.load(Ordering::SeqCst) as usize)
        .sum()
}

// ---------------------------------------------------------------- helpers

/// A manager of host `name` on `schema` (at `url`). It polls hourly: what
/// it learns of other hosts' changes soon, it learns by notification.
fn host(url: &str, schema: &Schema, name: &'static str) -> TaskManagerBuilder {
    TaskManager::builder()
        .postgres(PostgresConfig::new(url).schema(schema.name()).pool_size(4))
        .resource(Host(name))
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_secs(3600))
}

/// Waits until hosts `a` and `b` both say task `id` is in `status` (a task
/// enqueued on one host is unknown to the other until its row is written),
/// checks they agree, and returns the record.
async fn both_see(
    a: &TaskManager,
    b: &TaskManager,
    id: TaskId,
    status: TaskStatus,
) -> taskflow::TaskRecord {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen_by_a = a.get(id).await.unwrap();
        let seen_by_b = b.get(id).await.unwrap();
        if let (Some(x), Some(y)) = (&seen_by_a, &seen_by_b)
            && x.status == status
            && y.status == status
        {
            assert_same(x, y);
            return seen_by_a.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "task {id} did not reach {status} on both hosts within {PATIENCE:?}: \
             A says {:?}, B says {:?}",
            seen_by_a.map(|r| r.status),
            seen_by_b.map(|r| r.status)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two hosts' records of one task say the same (times to the
/// microsecond, as the store keeps them).
fn assert_same(a: &taskflow::TaskRecord, b: &taskflow::TaskRecord) {
    let micros = |time: Option<std::time::SystemTime>| {
        time.map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros())
    };
    assert_eq!(
        (
            a.id,
            &a.name,
            a.executor,
            &a.queue,
            a.priority,
            a.status,
            a.attempts,
            &a.tags,
            a.last_error.as_ref().map(|e| e.message()),
        ),
        (
            b.id,
            &b.name,
            b.executor,
            &b.queue,
            b.priority,
            b.status,
            b.attempts,
            &b.tags,
            b.last_error.as_ref().map(|e| e.message()),
        ),
        "two hosts disagree on task {}",
        a.id
    );
    for (x, y) in [
        (Some(a.created_at), Some(b.created_at)),
        (a.started_at, b.started_at),
        (a.finished_at, b.finished_at),
    ] {
        assert_eq!(
            micros(x),
            micros(y),
            "two hosts disagree on task {}'s times",
            a.id
        );
    }
}

/// Every page of `filter` (`page` records at a time, through the cursor).
async fn pages(manager: &TaskManager, filter: &TaskFilter, page: usize) -> Vec<TaskId> {
    let mut ids = Vec::new();
    let mut next = filter.clone().limit(page);
    for _ in 0..10_000 {
        let records = manager.list(&next).await.unwrap();
        assert!(records.len() <= page, "a page holds at most its limit");
        let Some(last) = records.last() else {
            return ids;
        };
        next = filter.clone().limit(page).before(last.id);
        ids.extend(records.iter().map(|record| record.id));
    }
    panic!("paging did not end");
}

/// This binary as scenario `name` on `schema`, with side file `side`.
fn scenario(name: &str, url: &str, schema: &Schema, side: &Path) -> Command {
    let mut command = harness::scenario(name);
    command
        .env(postgres::URL, url)
        .env(SCHEMA, schema.name())
        .env(SIDE, side)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    command
}

/// A scenario process (killed if the test fails half-way), its output
/// lines, and a way to end it.
struct Running {
    child: KillOnDrop,
    lines: Lines,
}

impl Running {
    fn start(mut command: Command) -> Self {
        let mut child = command.spawn().unwrap();
        let lines = lines(&mut child);
        Running {
            child: KillOnDrop::new(child),
            lines,
        }
    }

    /// The next line starting with `prefix`, without it.
    fn read(&mut self, prefix: &str) -> String {
        let line = read_until(self.child.child(), &mut self.lines, prefix);
        line[prefix.len()..].trim().to_owned()
    }

    /// Closes its stdin (it shuts down gracefully) and waits for it.
    fn stop(mut self) {
        drop(self.child.child().stdin.take());
        harness::finish(self.child.take());
    }
}

fn side_lines(side: &Path) -> Vec<String> {
    std::fs::read_to_string(side)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_for_stdin_to_close() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await;
}

// ---------------------------------------------------------------- scenarios

/// Host "there": enqueues `hold` and `hold_in_worker` and runs both
/// (`async <id>`, `process <id>`), says `cancelled <id>` when its own bus
/// sees one of its tasks cancelled, and serves until stdin closes.
async fn hold_two() -> ExitCode {
    let url = std::env::var(postgres::URL).unwrap();
    let schema = std::env::var(SCHEMA).unwrap();
    let side = std::env::var(SIDE).unwrap();
    let mut builder = TaskManager::builder()
        .postgres(PostgresConfig::new(url).schema(schema).pool_size(2))
        .resource(Host("there"))
        .max_process_workers(1)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_secs(3600));
    let mut events = builder.subscribe();
    let manager = builder.build().await.unwrap();
    drop(tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if event.kind == EventKind::Cancelled {
                println!("cancelled {}", event.id);
            }
        }
    }));
    let in_async = hold::call(side.clone()).enqueue_on(&manager).unwrap();
    let in_worker = hold_in_worker::call(side).enqueue_on(&manager).unwrap();
    in_async.persisted().await.unwrap();
    in_worker.persisted().await.unwrap();
    println!("async {}", in_async.id());
    println!("process {}", in_worker.id());
    wait_for_stdin_to_close().await;
    manager.shutdown().await;
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------- the tests

/// A PENDING task that host A enqueued, cancelled from host B, never runs
/// anywhere; both hosts record it CANCELLED, and A's handle says so.
fn a_pending_task_cancelled_from_another_host_never_runs() -> Result<(), Failed> {
    const LABEL: &str = "pending_cancel";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A").build().await.unwrap();
        let b = host(&url, &schema, "B").build().await.unwrap();
        // Both due soon, the cancelled one first: once the later one has
        // run, both hosts have passed the cancelled one's time.
        let doomed = remember::call(LABEL.into(), 1)
            .delay(Duration::from_millis(500))
            .enqueue_on(&a)
            .unwrap();
        let later = remember::call(LABEL.into(), 2)
            .delay(Duration::from_millis(1_000))
            .enqueue_on(&a)
            .unwrap();
        doomed.persisted().await.unwrap();
        later.persisted().await.unwrap();
        let id = doomed.id();
        b.cancel(id).await.unwrap();
        let error = within("the cancelled task's handle", doomed)
            .await
            .unwrap_err();
        assert!(error.is_cancelled(), "{error:?}");
        within("the later task", later).await.unwrap();
        let record = both_see(&a, &b, id, TaskStatus::Cancelled).await;
        assert_eq!(record.attempts, 0, "it never started");
        assert_eq!(
            runs(LABEL).iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [2],
            "the cancelled task never ran"
        );
        // Cancelling it again, from either host, says it is over.
        for host in [&a, &b] {
            let again = host.cancel(id).await.unwrap_err();
            assert!(
                matches!(
                    again,
                    taskflow::Error::AlreadyFinished {
                        status: TaskStatus::Cancelled,
                        ..
                    }
                ),
                "{again:?}"
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    })
}

/// Tasks running in another process (an async one and a process one) are
/// cancelled from here: that process stops each (the async body is
/// dropped, the worker killed), its own bus says CANCELLED, neither body
/// finishes, and every host records them CANCELLED after one attempt.
fn a_running_task_cancelled_here_stops_in_the_process_running_it() -> Result<(), Failed> {
    const LABEL: &str = "running_cancel";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let dir = tempfile::tempdir().unwrap();
        let side = dir.path().join("side");
        let mut there = Running::start(scenario("hold-two", &url, &schema, &side));
        let (in_async, in_worker) = tokio::task::block_in_place(|| {
            let in_async: TaskId = there.read("async ").parse().unwrap();
            let in_worker: TaskId = there.read("process ").parse().unwrap();
            (in_async, in_worker)
        });
        // Both bodies are running there.
        let started = |what: &str| {
            side_lines(&side).iter().find_map(|line| {
                line.strip_prefix(&format!("started {what} "))
                    .map(str::to_owned)
            })
        };
        assert!(
            wait_until(PATIENCE, || started("async").is_some()
                && started("process").is_some())
            .await,
            "both tasks start in the other process: {:?}",
            side_lines(&side)
        );
        let worker: u32 = started("process").unwrap().parse().unwrap();
        let there_pid: u32 = started("async").unwrap().parse().unwrap();
        assert_ne!(worker, there_pid, "a process task runs in a worker");

        let here = host(&url, &schema, "here").build().await.unwrap();
        for id in [in_async, in_worker] {
            assert_eq!(
                here.get(id).await.unwrap().unwrap().status,
                TaskStatus::Running
            );
            here.cancel(id).await.unwrap();
        }
        // The process running them hears of it and stops them.
        let mut cancelled = tokio::task::block_in_place(|| {
            vec![
                there.read("cancelled ").parse::<TaskId>().unwrap(),
                there.read("cancelled ").parse::<TaskId>().unwrap(),
            ]
        });
        cancelled.sort();
        let mut expected = vec![in_async, in_worker];
        expected.sort();
        assert_eq!(cancelled, expected);
        for id in [in_async, in_worker] {
            let record = wait_for_status(&here, id, TaskStatus::Cancelled).await;
            assert_eq!(record.attempts, 1);
        }
        assert!(
            wait_until(PATIENCE, || !harness::alive(worker)).await,
            "the worker running the cancelled task is killed"
        );
        assert!(
            wait_until(PATIENCE, || side_lines(&side)
                .iter()
                .any(|l| l == "dropped async"))
            .await,
            "the cancelled async body is dropped: {:?}",
            side_lines(&side)
        );
        here.shutdown().await;
        tokio::task::block_in_place(|| there.stop());
        let lines = side_lines(&side);
        assert!(
            !lines.iter().any(|line| line.starts_with("finished")),
            "a cancelled body ran to its end: {lines:?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("started")).count(),
            2,
            "each started once: {lines:?}"
        );
    })
}

/// A task that FAILED on host A is retried from host B, which has never
/// seen it: it runs again as a new task and succeeds; the failed one stays
/// FAILED, and both hosts agree on both.
fn a_task_failed_on_one_host_is_retried_from_another() -> Result<(), Failed> {
    const LABEL: &str = "retry";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A").build().await.unwrap();
        let failing = fails_first_time::call(LABEL.into()).enqueue_on(&a).unwrap();
        let failed = failing.id();
        let error = within("the failing task", failing).await.unwrap_err();
        assert_eq!(error.message(), "the first attempt fails, on A");
        // B starts only now: A ran the first attempt.
        let b = host(&url, &schema, "B").build().await.unwrap();
        let retried = b.retry(failed).await.unwrap();
        assert_ne!(retried, failed, "a retry is a new task");
        let record = both_see(&a, &b, retried, TaskStatus::Success).await;
        assert_eq!(record.attempts, 1);
        let record = both_see(&a, &b, failed, TaskStatus::Failed).await;
        assert_eq!(
            record.last_error.map(|e| e.message().to_owned()).as_deref(),
            Some("the first attempt fails, on A")
        );
        assert_eq!(runs(LABEL).len(), 2, "one failed run, one retried run");
        // A SUCCESS cannot be retried, from either host.
        for host in [&a, &b] {
            let refused = host.retry(retried).await.unwrap_err();
            assert!(
                matches!(refused, taskflow::Error::NotRetryable { .. }),
                "{refused:?}"
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    })
}

/// A queue paused on host A is paused on host B: B starts none of its
/// tasks (its own or A's) while its other queues run, and both hosts'
/// `queue_stats` say the same; resumed on A, both hosts run them.
fn a_queue_paused_on_one_host_is_paused_on_every_host() -> Result<(), Failed> {
    const LABEL: &str = "pause";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A").build().await.unwrap();
        let b = host(&url, &schema, "B")
            .poll_interval(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        a.pause("gated").await.unwrap();
        let mut held = Vec::new();
        for n in 0..10 {
            let on = if n % 2 == 0 { &a } else { &b };
            let handle = remember::call(LABEL.into(), n)
                .queue("gated")
                .enqueue_on(on)
                .unwrap();
            handle.persisted().await.unwrap();
            held.push(handle);
        }
        // B claims on: a task of another queue, due later, which only B
        // serves (A never used that queue), runs there after B's claims
        // have passed over the paused queue many times.
        let probe = remember::call(LABEL.into(), 100)
            .queue("b_only")
            .delay(Duration::from_millis(500))
            .enqueue_on(&b)
            .unwrap();
        assert_eq!(within("the other queue's task", probe).await.unwrap(), "B");
        for handle in &held {
            for host in [&a, &b] {
                assert_eq!(
                    host.get(handle.id()).await.unwrap().unwrap().status,
                    TaskStatus::Pending,
                    "a paused queue's task waits"
                );
            }
        }
        assert_eq!(runs(LABEL), [(100, "B")], "no host started a paused task");
        a.flush().await.unwrap();
        b.flush().await.unwrap();
        let stats = |stats: Vec<taskflow::QueueStats>| {
            stats
                .into_iter()
                .map(|q| (q.name, q.paused, q.pending, q.running))
                .collect::<Vec<_>>()
        };
        let seen_by_a = stats(a.queue_stats().await.unwrap());
        let seen_by_b = stats(b.queue_stats().await.unwrap());
        let gated = seen_by_a.iter().find(|q| q.0 == "gated").cloned();
        assert_eq!(gated, Some(("gated".to_owned(), true, 10, 0)));
        assert_eq!(
            seen_by_a
                .iter()
                .filter(|q| q.2 + q.3 > 0 || q.1)
                .collect::<Vec<_>>(),
            seen_by_b
                .iter()
                .filter(|q| q.2 + q.3 > 0 || q.1)
                .collect::<Vec<_>>(),
            "both hosts' queue stats agree"
        );

        a.resume("gated").await.unwrap();
        for handle in held {
            within("a resumed task", handle).await.unwrap();
        }
        let ran: BTreeSet<u64> = runs(LABEL).iter().map(|(n, _)| *n).collect();
        assert_eq!(ran, (0..10).chain([100]).collect());
        assert_eq!(runs(LABEL).len(), 11, "each ran once");
        a.flush().await.unwrap();
        b.flush().await.unwrap();
        for host in [&a, &b] {
            let gated = host
                .queue_stats()
                .await
                .unwrap()
                .into_iter()
                .find(|q| q.name == "gated")
                .map(|q| (q.paused, q.pending, q.running));
            assert_eq!(gated, Some((false, 0, 0)));
        }
        a.shutdown().await;
        b.shutdown().await;
    })
}

/// Handles awaited on host A of tasks host B runs (A's slots are all
/// taken) resolve with B's outputs, async and thread alike; A polls only
/// hourly, so what wakes them is B's notification.
fn a_handle_awaited_on_one_host_resolves_with_another_hosts_output() -> Result<(), Failed> {
    const LABEL: &str = "handle";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A")
            .max_concurrent_tasks(1)
            .max_sync_threads(1)
            .build()
            .await
            .unwrap();
        // A's one async slot and one thread are taken before B starts.
        let gate = format!("{LABEL}-blockers");
        let blockers = [
            wait_at::call(gate.clone()).enqueue_on(&a).unwrap().id(),
            wait_at_sync::call(gate.clone())
                .enqueue_on(&a)
                .unwrap()
                .id(),
        ];
        for id in blockers {
            wait_for_status(&a, id, TaskStatus::Running).await;
        }
        let b = host(&url, &schema, "B").build().await.unwrap();
        let in_async: Vec<_> = (0..5)
            .map(|n| remember::call(LABEL.into(), n).enqueue_on(&a).unwrap())
            .collect();
        let in_thread: Vec<_> = (10..15)
            .map(|n| remember_sync::call(LABEL.into(), n).enqueue_on(&a).unwrap())
            .collect();
        for handle in in_async {
            assert_eq!(within("a handle of B's task", handle).await.unwrap(), "B");
        }
        for handle in in_thread {
            assert_eq!(within("a handle of B's task", handle).await.unwrap(), "B");
        }
        assert!(runs(LABEL).iter().all(|(_, host)| *host == "B"));
        assert_eq!(runs(LABEL).len(), 10);
        GATES.open(&gate);
        for id in blockers {
            wait_for_status(&a, id, TaskStatus::Success).await;
        }
        a.shutdown().await;
        b.shutdown().await;
    })
}

/// A host whose tasks another host is running shuts down at once: it
/// drains what runs here, not what it only follows, and the other host
/// finishes the task.
fn a_host_shuts_down_without_waiting_for_what_another_host_runs() -> Result<(), Failed> {
    const LABEL: &str = "shutdown";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A")
            .max_concurrent_tasks(1)
            .shutdown_timeout(Duration::from_secs(5))
            .build()
            .await
            .unwrap();
        let mine = format!("{LABEL}-a");
        let theirs = format!("{LABEL}-b");
        // A's one slot is taken before B starts: B runs what A queues next.
        let blocker = wait_at::call(mine.clone()).enqueue_on(&a).unwrap();
        wait_for_status(&a, blocker.id(), TaskStatus::Running).await;
        let b = host(&url, &schema, "B").build().await.unwrap();
        let elsewhere = wait_at::call(theirs.clone()).enqueue_on(&a).unwrap();
        let id = elsewhere.id();
        // A follows it, and sees it running (on B).
        assert!(
            wait_until(PATIENCE, || elsewhere.status() == TaskStatus::Running).await,
            "A sees B run its task"
        );
        GATES.open(&mine);
        within("A's own task", blocker).await.unwrap();
        let report = a.shutdown().await;
        assert!(report.drained, "nothing ran here at shutdown: {report:?}");
        assert_eq!(
            (report.pending_interrupted, report.running_interrupted),
            (0, 0),
            "B's task is not A's to interrupt"
        );
        GATES.open(&theirs);
        let record = wait_for_status(&b, id, TaskStatus::Success).await;
        assert_eq!(record.attempts, 1);
        b.shutdown().await;
    })
}

/// `get` and `list` give the same records on every host, whoever enqueued
/// or ran the tasks, and paging through the cursor visits each once.
fn get_and_list_agree_on_every_host() -> Result<(), Failed> {
    const LABEL: &str = "listing";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A").build().await.unwrap();
        let b = host(&url, &schema, "B").build().await.unwrap();
        let mut handles = Vec::new();
        for n in 0..30 {
            let on = if n % 3 == 0 { &a } else { &b };
            handles.push(
                remember::call(LABEL.into(), n)
                    .tag("batch", LABEL)
                    .tag("parity", (n % 2).to_string())
                    .enqueue_on(on)
                    .unwrap(),
            );
        }
        let mut ids = Vec::new();
        let mut odd_ids = Vec::new();
        for (n, handle) in handles.into_iter().enumerate() {
            ids.push(handle.id());
            if n % 2 == 1 {
                odd_ids.push(handle.id());
            }
            within("a listed task", handle).await.unwrap();
        }
        a.flush().await.unwrap();
        b.flush().await.unwrap();
        // Newest first: by id, which grows with time.
        ids.sort_unstable_by(|x, y| y.cmp(x));
        odd_ids.sort_unstable_by(|x, y| y.cmp(x));
        let filter = TaskFilter::new().tag("batch", LABEL);
        for page in [1, 7, 30, 100] {
            assert_eq!(pages(&a, &filter, page).await, ids, "A, pages of {page}");
            assert_eq!(pages(&b, &filter, page).await, ids, "B, pages of {page}");
        }
        // Filters page the same way.
        let odd = TaskFilter::new()
            .tag("parity", "1")
            .status(TaskStatus::Success);
        assert_eq!(pages(&a, &odd, 4).await, odd_ids);
        assert_eq!(pages(&b, &odd, 4).await, odd_ids);
        let listed_by_a = a.list(&filter).await.unwrap();
        let listed_by_b = b.list(&filter).await.unwrap();
        for (x, y) in listed_by_a.iter().zip(&listed_by_b) {
            assert_same(x, y);
            assert_eq!(x.status, TaskStatus::Success);
        }
        for id in &ids {
            let x = a.get(*id).await.unwrap().unwrap();
            let y = b.get(*id).await.unwrap().unwrap();
            assert_same(&x, &y);
        }
        a.shutdown().await;
        b.shutdown().await;
    })
}

/// One idempotency key enqueued from two hosts at once is one task: both
/// get its id, it runs once, and both handles resolve with its output.
fn one_key_from_two_hosts_is_one_task() -> Result<(), Failed> {
    const LABEL: &str = "keys";
    const KEYS: u64 = 20;
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A").build().await.unwrap();
        let b = host(&url, &schema, "B").build().await.unwrap();
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let enqueue_all = |manager: TaskManager| {
            let start = start.clone();
            tokio::task::spawn_blocking(move || {
                start.wait();
                (0..KEYS)
                    .map(|n| {
                        remember::call(LABEL.into(), n)
                            .idempotency_key(format!("order-{n}"))
                            .enqueue_on(&manager)
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        };
        let (from_a, from_b) = tokio::join!(enqueue_all(a.clone()), enqueue_all(b.clone()));
        let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
        for (x, y) in from_a.iter().zip(&from_b) {
            assert_eq!(x.id(), y.id(), "one key, one task");
        }
        for (x, y) in from_a.into_iter().zip(from_b) {
            let x = within("A's handle of a keyed task", x).await.unwrap();
            let y = within("B's handle of a keyed task", y).await.unwrap();
            assert_eq!(x, y, "both handles read the one output");
        }
        let mut ran: Vec<u64> = runs(LABEL).iter().map(|(n, _)| *n).collect();
        ran.sort_unstable();
        assert_eq!(ran, (0..KEYS).collect::<Vec<_>>(), "each key ran once");
        a.flush().await.unwrap();
        b.flush().await.unwrap();
        for host in [&a, &b] {
            let listed = host
                .list(&TaskFilter::new().name(remember::NAME))
                .await
                .unwrap();
            assert_eq!(listed.len() as u64, KEYS);
        }
        // And a key enqueued again later, from the other host, still
        // answers the finished task.
        let again = remember::call(LABEL.into(), 0)
            .idempotency_key("order-0")
            .enqueue_on(&b)
            .unwrap();
        assert_eq!(
            within("a finished keyed task's new handle", again)
                .await
                .unwrap(),
            runs(LABEL).iter().find(|(n, _)| *n == 0).unwrap().1
        );
        assert_eq!(runs(LABEL).len() as u64, KEYS);
        a.shutdown().await;
        b.shutdown().await;
    })
}

/// A keyed task another host runs is awaited here by several handles, one
/// after another, some enqueued after it finished: each reads its output.
fn every_handle_here_of_a_keyed_task_run_elsewhere_reads_its_output() -> Result<(), Failed> {
    const LABEL: &str = "keyed_handles";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        let a = host(&url, &schema, "A").build().await.unwrap();
        let gate = format!("{LABEL}-gate");
        let on_a = answer_at::call(gate.clone(), 42)
            .idempotency_key("answer")
            .enqueue_on(&a)
            .unwrap();
        wait_for_status(&a, on_a.id(), TaskStatus::Running).await;
        // B starts once A runs it: B only ever follows it.
        let b = host(&url, &schema, "B").build().await.unwrap();
        let enqueue_on_b = || {
            answer_at::call(gate.clone(), 0)
                .idempotency_key("answer")
                .enqueue_on(&b)
                .unwrap()
        };
        let first = enqueue_on_b();
        let second = enqueue_on_b();
        assert_eq!(first.id(), on_a.id());
        GATES.open(&gate);
        assert_eq!(within("A's handle", on_a).await.unwrap(), 42);
        assert_eq!(within("B's first handle", first).await.unwrap(), 42);
        assert_eq!(within("B's second handle", second).await.unwrap(), 42);
        for _ in 0..2 {
            let later = enqueue_on_b();
            assert_eq!(
                within("a handle of the finished task", later)
                    .await
                    .unwrap(),
                42
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    })
}

// ------------------------------------------------------ connections killed

/// Log lines of the runtime (`taskflow` targets, INFO and above), captured
/// by a minimal `tracing` subscriber.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Terminates every server process whose connection is named
/// `application`, but for the caller's; how many.
async fn terminate(control: &tokio_postgres::Client, application: &str) -> usize {
    let killed = control
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&application],
        )
        .await
        .unwrap();
    killed.iter().filter(|row| row.get::<_, bool>(0)).count()
}

/// What one host's bus said during the burst.
#[derive(Debug, Default)]
struct Heard {
    store_failed: Vec<String>,
    lost: usize,
    requeued_or_interrupted: usize,
    missed: u64,
}

/// The rows of `schema` that are not SUCCESS: id, owner, attempts, status.
async fn unfinished(schema: &Schema) -> Vec<(String, Option<String>, i32, String)> {
    let sql = format!(
        "SELECT id::text, owner, attempts, status FROM \"{}\".tasks WHERE status <> 'SUCCESS'",
        schema.name()
    );
    schema
        .query(&sql)
        .await
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

/// Two hosts run a burst of tasks while every connection they hold is
/// terminated by the server, three times: every task acknowledged is kept,
/// each runs once and ends SUCCESS; each outage is reported as one event
/// and one log line, and its end in the log.
fn connections_terminated_mid_burst_lose_nothing() -> Result<(), Failed> {
    const LABEL: &str = "terminated";
    trial(async {
        let Some(url) = postgres::server(LABEL).await else {
            return;
        };
        let schema = Schema::new(&url, LABEL).await;
        // Their connections are told apart from everyone else's by name.
        let application = format!("taskflow_{}", schema.name());
        let separator = if url.contains('?') { '&' } else { '?' };
        let tagged = format!("{url}{separator}application_name={application}");
        let build = |name: &'static str| {
            let mut builder = TaskManager::builder()
                .postgres(
                    PostgresConfig::new(tagged.as_str())
                        .schema(schema.name())
                        .pool_size(4),
                )
                .resource(Host(name))
                .max_concurrent_tasks(32)
                // Long enough that no outage here costs an instance its lease.
                .lease(Duration::from_secs(10))
                .poll_interval(Duration::from_millis(200))
                .event_capacity(1 << 16);
            let mut events = builder.subscribe();
            let heard = std::sync::Arc::new(Mutex::new(Heard::default()));
            let listener = tokio::spawn({
                let heard = heard.clone();
                async move {
                    loop {
                        let event = events.recv().await;
                        let mut heard = heard.lock().unwrap();
                        match event {
                            Ok(event) => match event.kind {
                                EventKind::StoreFailed(message) => heard.store_failed.push(message),
                                EventKind::Lost => heard.lost += 1,
                                EventKind::Requeued | EventKind::Interrupted => {
                                    heard.requeued_or_interrupted += 1;
                                }
                                _ => {}
                            },
                            Err(taskflow::RecvError::Lagged(n)) => heard.missed += n,
                            Err(_) => return,
                        }
                    }
                }
            });
            (builder, (heard, listener))
        };
        let (a, heard_by_a) = build("A");
        let a = a.build().await.unwrap();
        let (b, heard_by_b) = build("B");
        let b = b.build().await.unwrap();
        let control = postgres::connect(&url).await;
        LOGS.lock().unwrap().clear();

        const CHUNK: usize = 100;
        let mut handles = Vec::with_capacity(BURST);
        let mut terminated = Vec::new();
        for chunk in 0..BURST / CHUNK {
            // Keep the burst going: no more than a few chunks ahead of
            // the tasks that started.
            let enqueued = chunk * CHUNK;
            assert!(
                wait_until(PATIENCE, || burst_started() + 4 * CHUNK >= enqueued).await,
                "the burst stalled at {} started of {enqueued}",
                burst_started()
            );
            if [8, 16, 24].contains(&chunk) {
                terminated.push(terminate(&control, &application).await);
            }
            let on = if chunk % 2 == 0 { &a } else { &b };
            for n in enqueued..enqueued + CHUNK {
                handles.push(burst_step::call(n as u32).enqueue_on(on).unwrap());
            }
        }
        assert!(
            terminated.iter().all(|&n| n > 0),
            "each time there were connections to terminate: {terminated:?}"
        );
        // Acknowledged, then finished: every one.
        let mut acknowledged = 0;
        for handle in &handles {
            within("an acknowledged enqueue", handle.persisted())
                .await
                .unwrap();
            acknowledged += 1;
        }
        assert_eq!(acknowledged, BURST);
        let deadline = Instant::now() + PATIENCE;
        for (n, handle) in handles.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let output = match tokio::time::timeout(left, handle).await {
                Ok(output) => output,
                Err(_) => panic!(
                    "task {n} did not finish; started {} times; unfinished rows (id, owner, \
                     attempts, status): {:?}; events: {:?}",
                    BURST_RUNS[n].load(Ordering::SeqCst),
                    unfinished(&schema).await,
                    [&heard_by_a, &heard_by_b]
                        .map(|(heard, _)| format!("{:?}", heard.lock().unwrap())),
                ),
            }
            .unwrap_or_else(|error| panic!("task {n} failed: {error:?}"));
            assert_eq!(output as usize, n);
        }
        let twice: Vec<usize> = (0..BURST)
            .filter(|&n| BURST_RUNS[n].load(Ordering::SeqCst) != 1)
            .collect();
        assert!(twice.is_empty(), "tasks started other than once: {twice:?}");
        a.flush().await.unwrap();
        b.flush().await.unwrap();
        for host in [&a, &b] {
            let done = host
                .list(
                    &TaskFilter::new()
                        .name(burst_step::NAME)
                        .status(TaskStatus::Success),
                )
                .await
                .unwrap();
            assert_eq!(done.len(), BURST);
            assert!(done.iter().all(|record| record.attempts == 1));
            let stats = host.queue_stats().await.unwrap();
            assert!(
                stats.iter().all(|q| q.pending == 0 && q.running == 0),
                "{stats:?}"
            );
        }
        // Each outage's end is said too, once the hosts' stores have
        // answered for a while.
        let lines = |what: &str| {
            LOGS.lock()
                .unwrap()
                .iter()
                .filter(|line| line.contains(what))
                .count()
        };
        const LOST: &str = "tasks keep running and their changes are kept until it can be written";
        const BACK: &str = "the task store is writable again; pending changes are written";
        assert!(
            wait_until(PATIENCE, || lines(BACK) >= lines(LOST)).await,
            "each outage ends in the log: {:?}",
            LOGS.lock().unwrap()
        );
        a.shutdown().await;
        b.shutdown().await;
        let heard = [heard_by_a, heard_by_b].map(|(heard, listener)| {
            listener.abort();
            std::mem::take(&mut *heard.lock().unwrap())
        });
        for heard in &heard {
            assert_eq!(heard.missed, 0, "every event was heard: {heard:?}");
            assert_eq!(heard.lost, 0, "no host lost a task: {heard:?}");
            assert_eq!(
                heard.requeued_or_interrupted, 0,
                "nothing was rescued: {heard:?}"
            );
            // A host that had no call in flight when its connections went
            // may have noticed nothing (its pool replaces closed ones).
            assert!(
                heard.store_failed.len() <= terminated.len(),
                "one event per outage: {heard:?} for {} outages",
                terminated.len()
            );
        }
        let events: usize = heard.iter().map(|h| h.store_failed.len()).sum();
        assert!(events > 0, "the outages were reported: {heard:?}");
        assert_eq!(
            lines(LOST),
            events,
            "one log line per event: {:?}",
            LOGS.lock().unwrap()
        );
        assert_eq!(lines(BACK), events, "{:?}", LOGS.lock().unwrap());
        for message in heard.iter().flat_map(|h| &h.store_failed) {
            assert!(
                message.contains("terminating connection") || message.contains("connection closed"),
                "the event says why: {message}"
            );
        }
    })
}

fn main() -> ExitCode {
    taskflow::init();
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "hold-two" => runtime.block_on(hold_two()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    taskflow_tests::logs::LogCapture::new(&LOGS, tracing::Level::INFO)
        .target("taskflow")
        .with_level()
        .install();
    harness::run(vec![
        Trial::test(
            "a_pending_task_cancelled_from_another_host_never_runs",
            a_pending_task_cancelled_from_another_host_never_runs,
        ),
        Trial::test(
            "a_running_task_cancelled_here_stops_in_the_process_running_it",
            a_running_task_cancelled_here_stops_in_the_process_running_it,
        ),
        Trial::test(
            "a_task_failed_on_one_host_is_retried_from_another",
            a_task_failed_on_one_host_is_retried_from_another,
        ),
        Trial::test(
            "a_queue_paused_on_one_host_is_paused_on_every_host",
            a_queue_paused_on_one_host_is_paused_on_every_host,
        ),
        Trial::test(
            "a_handle_awaited_on_one_host_resolves_with_another_hosts_output",
            a_handle_awaited_on_one_host_resolves_with_another_hosts_output,
        ),
        Trial::test(
            "a_host_shuts_down_without_waiting_for_what_another_host_runs",
            a_host_shuts_down_without_waiting_for_what_another_host_runs,
        ),
        Trial::test(
            "get_and_list_agree_on_every_host",
            get_and_list_agree_on_every_host,
        ),
        Trial::test(
            "one_key_from_two_hosts_is_one_task",
            one_key_from_two_hosts_is_one_task,
        ),
        Trial::test(
            "every_handle_here_of_a_keyed_task_run_elsewhere_reads_its_output",
            every_handle_here_of_a_keyed_task_run_elsewhere_reads_its_output,
        ),
        Trial::test(
            "connections_terminated_mid_burst_lose_nothing",
            connections_terminated_mid_burst_lose_nothing,
        ),
    ])
}
