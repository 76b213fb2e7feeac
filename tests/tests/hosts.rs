//! Several hosts on one PostgreSQL schema, for real: separate OS processes
//! (this test binary started again as a `host` scenario), each a manager
//! with its own async, thread and process executors.
//!
//! - Four hosts share 20,000 tasks enqueued from three of them: each runs
//!   exactly once, and every record ends SUCCESS.
//! - A host killed with `kill -9` in the middle of a burst loses nothing
//!   acknowledged: its RUNNING tasks are rescued by the others (requeued
//!   and run again where the task opted in, INTERRUPTED otherwise), and
//!   every acknowledged task ends with a record. 30 trials.
//! - A host stopped (SIGSTOP) past its lease while it runs a task, then
//!   resumed: the task was rescued elsewhere, and the stale host's
//!   completion is refused (it reports `EventKind::Lost`; the record keeps
//!   the rescuer's outcome); the resumed host serves on.
//! - A host holding handles to tasks another host runs shuts down at once:
//!   it has nothing of its own to wait for.
//!
//! Every run of a task body appends `<n> <host pid> <runner pid> <start|end>`
//! to a side file (the runner is the worker process for process tasks):
//! that, not the store, is the proof of how often and where a body ran.
//! Tests assert counts and states; the one ceiling on time (a rescue) is
//! generous, for a noisy two-core machine.
//!
//! Without a PostgreSQL server (`TASKFLOW_TEST_POSTGRES_URL`) each test
//! prints that it is skipped (and fails under `TASKFLOW_REQUIRE_POSTGRES=1`).

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use libtest_mimic::{Failed, Trial};
use taskflow::store::{PostgresConfig, PostgresStore, Store, StoredTask};
use taskflow::{
    EventKind, RecvError, TaskFilter, TaskHandle, TaskId, TaskManager, TaskRecord, TaskStatus, task,
};
use taskflow_tests::PATIENCE;
use taskflow_tests::harness::{self, Running, scenario_name};
use taskflow_tests::postgres::{self, Schema};

const SCHEMA: &str = "TASKFLOW_TEST_SCHEMA";
const SIDE: &str = "TASKFLOW_TEST_SIDE";
const LEASE_MS: &str = "TASKFLOW_TEST_LEASE_MS";
/// A host's slots: `<async>,<threads>,<process workers>`.
const SLOTS: &str = "TASKFLOW_TEST_SLOTS";

/// A body told to work this long waits for its gate file instead.
const GATE: u64 = u64::MAX;

// ---------------------------------------------------------------- the tasks

// One task per executor, and the same again declared
// `requeue_on_interrupt`; each takes its number and how long to work.

#[task]
async fn on_async(n: u32, millis: u64) {
    work_async(n, millis).await;
}

#[task]
fn on_thread(n: u32, millis: u64) {
    work_blocking(n, millis, std::process::id());
}

#[task(executor = "process")]
fn on_process(n: u32, millis: u64) {
    work_blocking(n, millis, std::os::unix::process::parent_id());
}

#[task(requeue_on_interrupt = true)]
async fn again_async(n: u32, millis: u64) {
    work_async(n, millis).await;
}

#[task(requeue_on_interrupt = true)]
fn again_thread(n: u32, millis: u64) {
    work_blocking(n, millis, std::process::id());
}

#[task(executor = "process", requeue_on_interrupt = true)]
fn again_process(n: u32, millis: u64) {
    work_blocking(n, millis, std::os::unix::process::parent_id());
}

/// The task kinds, by index: executors async, thread, process; then the
/// same requeued on interrupt.
const KINDS: [&str; 6] = [
    on_async::NAME,
    on_thread::NAME,
    on_process::NAME,
    again_async::NAME,
    again_thread::NAME,
    again_process::NAME,
];

fn requeues(name: &str) -> bool {
    KINDS[3..].contains(&name)
}

fn enqueue_kind(manager: &TaskManager, kind: usize, n: u32, millis: u64) -> TaskHandle<()> {
    enqueue_keyed(manager, kind, n, millis, None)
}

/// Enqueues task `n` of `kind`, under idempotency key `key` if any.
fn enqueue_keyed(
    manager: &TaskManager,
    kind: usize,
    n: u32,
    millis: u64,
    key: Option<String>,
) -> TaskHandle<()> {
    macro_rules! enqueue {
        ($task:ident) => {{
            let call = $task::call(n, millis);
            match key {
                Some(key) => call.idempotency_key(key).enqueue_on(manager),
                None => call.enqueue_on(manager),
            }
        }};
    }
    match kind {
        0 => enqueue!(on_async),
        1 => enqueue!(on_thread),
        2 => enqueue!(on_process),
        3 => enqueue!(again_async),
        4 => enqueue!(again_thread),
        _ => enqueue!(again_process),
    }
    .unwrap()
}

async fn work_async(n: u32, millis: u64) {
    let host = std::process::id();
    record(n, host, "start");
    match millis {
        0 => return,
        GATE => {
            let gate = gate_path(n);
            let deadline = Instant::now() + PATIENCE;
            while !gate.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        millis => tokio::time::sleep(Duration::from_millis(millis)).await,
    }
    record(n, host, "end");
}

fn work_blocking(n: u32, millis: u64, host: u32) {
    record(n, host, "start");
    match millis {
        0 => return,
        GATE => {
            let gate = gate_path(n);
            let deadline = Instant::now() + PATIENCE;
            while !gate.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        millis => std::thread::sleep(Duration::from_millis(millis)),
    }
    record(n, host, "end");
}

/// Appends one line to the side file.
fn record(n: u32, host: u32, what: &str) {
    let side = std::env::var(SIDE).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(side)
        .unwrap();
    // One write per line: appends from concurrent bodies never interleave.
    file.write_all(format!("{n} {host} {} {what}\n", std::process::id()).as_bytes())
        .unwrap();
}

/// The file whose existence lets gated body `n` finish.
fn gate_path(n: u32) -> PathBuf {
    PathBuf::from(format!("{}.gate-{n}", std::env::var(SIDE).unwrap()))
}

/// One line of the side file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    host: u32,
    runner: u32,
    start: bool,
}

/// The side file's lines by task number, in order.
fn runs(side: &Path) -> BTreeMap<u32, Vec<Run>> {
    let mut runs: BTreeMap<u32, Vec<Run>> = BTreeMap::new();
    for line in std::fs::read_to_string(side).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [n, host, runner, what] = parts.as_slice() else {
            panic!("a torn line in the side file: {line:?}");
        };
        runs.entry(n.parse().unwrap()).or_default().push(Run {
            host: host.parse().unwrap(),
            runner: runner.parse().unwrap(),
            start: *what == "start",
        });
    }
    runs
}

/// The starts of body `n`.
fn starts(runs: &BTreeMap<u32, Vec<Run>>, n: u32) -> Vec<Run> {
    runs.get(&n)
        .map(|lines| lines.iter().copied().filter(|run| run.start).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- the host

/// A host: a manager on the schema, driven by lines on stdin until it
/// closes, then shut down gracefully. It prints `ready <pid>`, and
/// `lost <id>` for each task its manager reports lost to a rescuer.
///
/// - `enqueue <first> <count>`: quick tasks `first..first + count` of the
///   three executors in turn; `enqueued <first>` once all are persisted.
/// - `burst <first> <count>`: working tasks of all six kinds, in batches;
///   `acked <n> <id>` as each is persisted (acknowledged).
/// - `gate <n> <kind>`: one task of that kind that waits for its gate;
///   `task <n> <id>` once persisted.
/// - `keyed <n> <kind>`: as `gate`, under the idempotency key `key-<n>`
///   (the task that holds it if there is one); `keyed <n> <id> <status>`.
/// - `settle`: `settled <pending> <running>` once its own view of its tasks
///   shows none unfinished (or after a while).
/// - `flush`: `flushed` once every change so far is written.
///
/// At the end it prints what its shutdown did.
async fn host() -> ExitCode {
    let url = std::env::var(postgres::URL).unwrap();
    let schema = std::env::var(SCHEMA).unwrap();
    let lease = Duration::from_millis(std::env::var(LEASE_MS).unwrap().parse().unwrap());
    let slots: Vec<usize> = std::env::var(SLOTS)
        .unwrap()
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let mut builder = TaskManager::builder()
        .postgres(PostgresConfig::new(url).schema(schema).pool_size(4))
        .lease(lease)
        .poll_interval(Duration::from_millis(100))
        .max_concurrent_tasks(slots[0])
        .max_sync_threads(slots[1])
        .max_process_workers(slots[2]);
    let mut events = builder.subscribe();
    let manager = builder.build().await.unwrap();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) if matches!(event.kind, EventKind::Lost) => println!("lost {}", event.id),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    println!("ready {}", std::process::id());
    let (lines_in, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines_in.send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let words: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|word| word.parse().unwrap())
            .collect();
        match (line.split_whitespace().next(), words.as_slice()) {
            (Some("enqueue"), &[first, count]) => {
                let handles: Vec<TaskHandle<()>> = (first..first + count)
                    .map(|n| enqueue_kind(&manager, n as usize % 3, n, 0))
                    .collect();
                for handle in &handles {
                    handle.persisted().await.unwrap();
                }
                println!("enqueued {first}");
            }
            (Some("burst"), &[first, count]) => burst(&manager, first, count).await,
            (Some("gate"), &[n, kind]) => {
                let handle = enqueue_kind(&manager, kind as usize, n, GATE);
                handle.persisted().await.unwrap();
                println!("task {n} {}", handle.id());
            }
            (Some("keyed"), &[n, kind]) => {
                let key = format!("key-{n}");
                let handle = enqueue_keyed(&manager, kind as usize, n, GATE, Some(key));
                handle.persisted().await.unwrap();
                println!("keyed {n} {} {}", handle.id(), handle.status());
            }
            (Some("settle"), _) => {
                // Until this host's view of the tasks it enqueued, which
                // others ran, has caught up with the store.
                let deadline = Instant::now() + PATIENCE;
                let mut metrics = manager.metrics();
                while metrics.pending + metrics.running > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    metrics = manager.metrics();
                }
                println!("settled {} {}", metrics.pending, metrics.running);
            }
            (Some("flush"), _) => {
                manager.flush().await.unwrap();
                println!("flushed");
            }
            _ => panic!("unknown command {line:?}"),
        }
    }
    let report = manager.shutdown().await;
    println!(
        "shutdown drained={} running={} pending={}",
        report.drained, report.running_interrupted, report.pending_interrupted
    );
    ExitCode::SUCCESS
}

/// How long burst task `n` works.
fn burst_millis(n: u32) -> u64 {
    30 + u64::from(n * 37 % 7) * 15
}

/// Enqueues tasks `first..first + count` of every kind, four at a time,
/// saying which are acknowledged.
async fn burst(manager: &TaskManager, first: u32, count: u32) {
    let end = first + count;
    let mut batch = first;
    while batch < end {
        let handles: Vec<(u32, TaskHandle<()>)> = (batch..end.min(batch + 4))
            .map(|n| {
                let handle = enqueue_kind(manager, n as usize % 6, n, burst_millis(n));
                (n, handle)
            })
            .collect();
        for (n, handle) in &handles {
            handle.persisted().await.unwrap();
            println!("acked {n} {}", handle.id());
        }
        batch += 4;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("burst-done");
}

// ---------------------------------------------------------------- helpers

/// What the test sees of the schema: a store of its own that claims
/// nothing (no manager), on a runtime of the test's.
struct Observer {
    store: PostgresStore,
    runtime: tokio::runtime::Runtime,
    schema: Schema,
    url: String,
    /// The side file and gates live here.
    dir: tempfile::TempDir,
}

impl Observer {
    /// A new schema (created by the store opening it), or `None` without
    /// a server.
    fn open(test: &str, label: &str) -> Option<Observer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let url = runtime.block_on(postgres::server(test))?;
        let schema = runtime.block_on(Schema::new(&url, label));
        let store = runtime
            .block_on(PostgresStore::open(
                PostgresConfig::new(url.as_str())
                    .schema(schema.name())
                    .pool_size(2)
                    .listen(false),
            ))
            .unwrap();
        Some(Observer {
            store,
            runtime,
            schema,
            url,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn side(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// This binary as a host on the schema.
    fn host(&self, lease_ms: u64, slots: [usize; 3]) -> Command {
        let mut command = harness::scenario("host");
        command
            .env(postgres::URL, &self.url)
            .env(SCHEMA, self.schema.name())
            .env(SIDE, self.side())
            .env(LEASE_MS, lease_ms.to_string())
            .env(SLOTS, slots.map(|n| n.to_string()).join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        command
    }

    /// PENDING and RUNNING tasks, in every queue.
    fn unfinished(&self) -> u64 {
        let queues = self.runtime.block_on(self.store.queues()).unwrap();
        queues.iter().map(|q| q.pending + q.running).sum()
    }

    /// Every record.
    fn records(&self) -> Vec<TaskRecord> {
        let listed = self
            .runtime
            .block_on(self.store.list(&TaskFilter::new()))
            .unwrap();
        assert!(listed.corrupt.is_empty(), "{:?}", listed.corrupt);
        listed.tasks.into_iter().map(|task| task.record).collect()
    }

    fn get(&self, id: TaskId) -> StoredTask {
        self.runtime
            .block_on(self.store.get(id))
            .unwrap()
            .expect("the task is stored")
            .unwrap()
    }

    fn get_many(&self, ids: &[TaskId]) -> Vec<StoredTask> {
        self.runtime
            .block_on(self.store.get_many(ids))
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    /// Waits (polling) until `done`, failing after `timeout` with what the
    /// schema says of instances and unfinished tasks.
    fn wait(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}; {}",
                self.state()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The instances, the upkeep lease and the unfinished tasks, as the
    /// schema's tables hold them (for failure messages).
    fn state(&self) -> String {
        let s = self.schema.name();
        let mut state = String::new();
        for (title, sql) in [
            (
                "instances",
                format!(
                    "SELECT id || ' pid ' || pid || ' lease left ' || (lease_until - now())::text \
                     FROM \"{s}\".instances"
                ),
            ),
            (
                "upkeep",
                format!(
                    "SELECT holder || ' lease left ' || (lease_until - now())::text \
                     FROM \"{s}\".leader"
                ),
            ),
            (
                "unfinished",
                format!(
                    "SELECT id::text || ' ' || name || ' ' || status || ' attempts ' || attempts \
                     || ' owner ' || coalesce(owner, '-') FROM \"{s}\".tasks \
                     WHERE status IN ('PENDING', 'RUNNING')"
                ),
            ),
        ] {
            let rows = self.runtime.block_on(self.schema.query(&sql));
            let rows: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            state.push_str(&format!("{title}: {rows:?}; "));
        }
        state
    }
}

/// Starts a host and waits for it to be ready.
fn start(command: Command) -> (Running, u32) {
    let mut host = Running::start(command);
    let pid = host
        .read("ready")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (host, pid)
}

/// Stops a host that runs nothing now, and returns what it printed: its
/// shutdown had no task of its own to wait for or interrupt.
fn stop_idle(host: Running) -> Vec<String> {
    let lines = host.stop();
    let report = lines.iter().find(|line| line.starts_with("shutdown "));
    assert_eq!(
        report.map(String::as_str),
        Some("shutdown drained=true running=0 pending=0"),
        "{lines:?}"
    );
    lines
}

fn lost_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|line| line.starts_with("lost "))
        .collect()
}

/// Waits until body `n` ended on host `host`.
fn wait_for_end(side: &Path, n: u32, host: u32) {
    let deadline = Instant::now() + PATIENCE;
    while !runs(side)[&n]
        .iter()
        .any(|run| !run.start && run.host == host)
    {
        assert!(
            Instant::now() < deadline,
            "body {n} never ended on host {host}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the side file holds `count` starts of body `n`.
fn wait_for_starts(side: &Path, n: u32, count: usize) -> Vec<Run> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = starts(&runs(side), n);
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "body {n} started {seen:?}, not {count} times"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------- the tests

/// Tasks in the bulk test, and how many of them each host enqueues (the
/// last only serves).
const BULK: u32 = 20_000;
const SHARES: [u32; 4] = [8_000, 7_000, 5_000, 0];

fn four_hosts_run_every_task_once() -> Result<(), Failed> {
    let Some(observer) = Observer::open("four_hosts_run_every_task_once", "bulk") else {
        return Ok(());
    };
    let began = Instant::now();
    let side = observer.side();
    let mut hosts = Vec::new();
    for _ in SHARES {
        hosts.push(start(observer.host(10_000, [16, 2, 2])));
    }
    let pids: Vec<u32> = hosts.iter().map(|(_, pid)| *pid).collect();
    let mut first = 0;
    for ((host, _), share) in hosts.iter_mut().zip(SHARES) {
        if share > 0 {
            host.say(&format!("enqueue {first} {share}"));
            first += share;
        }
    }
    assert_eq!(first, BULK);
    for ((host, _), share) in hosts.iter_mut().zip(SHARES) {
        if share > 0 {
            host.read("enqueued");
        }
    }
    let enqueued = began.elapsed();
    observer.wait(
        "every task finished",
        Duration::from_secs(240),
        |observer| observer.unfinished() == 0,
    );
    let finished = began.elapsed();
    // Each host sees what it enqueued finished, wherever it ran.
    for (host, _) in &mut hosts {
        host.say("settle");
    }
    for (host, _) in &mut hosts {
        assert_eq!(host.read("settled"), "settled 0 0");
    }
    for (host, _) in hosts {
        let lines = stop_idle(host);
        assert!(
            lost_lines(&lines).is_empty(),
            "a host lost tasks: {lines:?}"
        );
    }

    let records = observer.records();
    assert_eq!(records.len(), BULK as usize, "every task has one record");
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        assert_eq!(
            (record.status, record.attempts),
            (TaskStatus::Success, 1),
            "{record:?}"
        );
        *by_name
            .entry(KINDS.iter().find(|k| **k == record.name).unwrap())
            .or_default() += 1;
    }
    assert_eq!(by_name.len(), 3, "{by_name:?}");
    assert!(
        by_name.values().all(|n| *n >= BULK as usize / 3),
        "{by_name:?}"
    );

    let runs = runs(&side);
    let mut per_host: BTreeMap<u32, usize> = BTreeMap::new();
    for n in 0..BULK {
        let started = starts(&runs, n);
        assert_eq!(started.len(), 1, "task {n} started {started:?}");
        let run = started[0];
        assert!(
            pids.contains(&run.host),
            "task {n} ran on {run:?}, not a host"
        );
        if n % 3 == 2 {
            assert!(
                run.runner != run.host && !pids.contains(&run.runner),
                "process task {n} ran in a worker: {run:?}"
            );
        } else {
            assert_eq!(run.runner, run.host, "task {n} ran in its host: {run:?}");
        }
        *per_host.entry(run.host).or_default() += 1;
    }
    assert_eq!(runs.len(), BULK as usize, "no other body ran");
    assert_eq!(
        per_host.len(),
        pids.len(),
        "every host ran tasks, the one that only serves too: {per_host:?}"
    );
    println!(
        "{BULK} tasks: enqueued in {enqueued:?}, all finished after {finished:?}, \
         test done in {:?}; runs per host {:?}",
        began.elapsed(),
        per_host.values().collect::<Vec<_>>()
    );
    Ok(())
}

/// Trials of the kill test, tasks in each burst, and the hosts' lease.
const KILL_TRIALS: u32 = 30;
const BURST: u32 = 36;
const KILL_LEASE_MS: u64 = 400;
/// Rescue is due about a lease after the kill (two when the dead host did
/// the upkeep); this ceiling is far above that, for a noisy machine, and
/// far below what anything but the lease would take.
const RESCUE_CEILING: Duration = Duration::from_secs(10);

fn a_host_killed_mid_burst_loses_nothing_acknowledged() -> Result<(), Failed> {
    let Some(observer) =
        Observer::open("a_host_killed_mid_burst_loses_nothing_acknowledged", "kill")
    else {
        return Ok(());
    };
    let began = Instant::now();
    let side = observer.side();
    let slots = [4, 2, 1];
    let mut survivors = vec![
        start(observer.host(KILL_LEASE_MS, slots)),
        start(observer.host(KILL_LEASE_MS, slots)),
    ];
    let (mut rescued, mut slowest) = (0, Duration::ZERO);
    for trial in 0..KILL_TRIALS {
        // The doomed host and a survivor each enqueue a burst: the doomed
        // host runs some of both, and the survivor awaits some of its own
        // tasks that the doomed host runs.
        let first = trial * 1_000;
        let (mut doomed, dead) = start(observer.host(KILL_LEASE_MS, slots));
        doomed.say(&format!("burst {first} {BURST}"));
        let enqueuer = &mut survivors[trial as usize % 2].0;
        enqueuer.say(&format!("burst {} {BURST}", first + 500));
        // Killed at a random point of its burst, once it runs some of it.
        for _ in 0..fastrand::u32(1..=BURST) {
            doomed.read("acked");
        }
        let deadline = Instant::now() + PATIENCE;
        while !runs(&side)
            .range(first..first + 1_000)
            .any(|(_, lines)| lines.iter().any(|run| run.host == dead))
        {
            assert!(
                Instant::now() < deadline,
                "trial {trial}: the doomed host ran nothing"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..40)));
        let mut lines = doomed.kill();
        let killed = Instant::now();
        lines.extend(survivors[trial as usize % 2].0.read_through("burst-done"));
        let acked: Vec<(u32, TaskId)> = lines
            .iter()
            .filter_map(|line| line.strip_prefix("acked "))
            .map(|rest| {
                let (n, id) = rest.split_once(' ').unwrap();
                (n.parse().unwrap(), id.parse().unwrap())
            })
            .collect();
        assert!(acked.len() > BURST as usize, "trial {trial}");
        let ids: Vec<TaskId> = acked.iter().map(|(_, id)| *id).collect();
        // Every acknowledged task ends, whoever held it.
        observer.wait(
            &format!("trial {trial}: every acknowledged task finished"),
            RESCUE_CEILING,
            |observer| {
                let tasks = observer.get_many(&ids);
                tasks.len() == ids.len() && tasks.iter().all(|t| t.record.status.is_finished())
            },
        );
        slowest = slowest.max(killed.elapsed());
        // And so does any task stored before its acknowledgement was read.
        observer.wait(
            &format!("trial {trial}: every stored task finished"),
            PATIENCE,
            |observer| observer.unfinished() == 0,
        );
        let runs = runs(&side);
        let tasks = observer.get_many(&ids);
        for (n, id) in &acked {
            let task = tasks.iter().find(|t| t.record.id == *id).unwrap();
            let record = &task.record;
            let started = starts(&runs, *n);
            let context = format!("trial {trial}: task {n} {record:?}, started {started:?}");
            let by_dead = started.iter().filter(|run| run.host == dead).count();
            if requeues(&record.name) {
                // At least once: run again elsewhere if the dead host had it.
                assert_eq!(record.status, TaskStatus::Success, "{context}");
                assert!(
                    !started.is_empty() && started.len() <= record.attempts as usize,
                    "{context}"
                );
                assert!(by_dead <= 1, "{context}");
                rescued += usize::from(record.attempts > 1);
            } else {
                // At most once: INTERRUPTED if the dead host had it.
                assert_eq!(record.attempts, 1, "{context}");
                match record.status {
                    TaskStatus::Success => assert_eq!(started.len(), 1, "{context}"),
                    TaskStatus::Interrupted => {
                        assert!(started.len() <= 1 && by_dead == started.len(), "{context}");
                        rescued += 1;
                    }
                    _ => panic!("{context}"),
                }
            }
        }
    }
    for (host, _) in survivors.drain(..) {
        let lines = stop_idle(host);
        assert!(
            lost_lines(&lines).is_empty(),
            "a survivor lost tasks: {lines:?}"
        );
    }
    // Unacknowledged tasks that were stored finished as well.
    for record in observer.records() {
        let expected = match requeues(&record.name) {
            true => [TaskStatus::Success, TaskStatus::Success],
            false => [TaskStatus::Success, TaskStatus::Interrupted],
        };
        assert!(expected.contains(&record.status), "{record:?}");
    }
    assert!(rescued > 0, "no trial killed a host while it ran tasks");
    println!(
        "{KILL_TRIALS} trials: {rescued} tasks rescued from killed hosts; \
         the slowest trial's acknowledged tasks all ended {slowest:?} after the kill \
         (lease {KILL_LEASE_MS} ms); test done in {:?}",
        began.elapsed()
    );
    Ok(())
}

const STOP_LEASE_MS: u64 = 500;

fn a_stopped_host_past_its_lease_cannot_complete_its_task() -> Result<(), Failed> {
    let Some(observer) = Observer::open(
        "a_stopped_host_past_its_lease_cannot_complete_its_task",
        "stopped",
    ) else {
        return Ok(());
    };
    let side = observer.side();
    // Two hosts for every trial: the one that runs the task is stopped, the
    // other rescues it; the stopped one, resumed, serves on.
    let mut hosts = [
        start(observer.host(STOP_LEASE_MS, [2, 1, 1])),
        start(observer.host(STOP_LEASE_MS, [2, 1, 1])),
    ];
    let mut lost = Vec::new();
    for (kind, name) in KINDS.iter().enumerate() {
        let n = u32::try_from(kind).unwrap();
        let (enqueuer, _) = &mut hosts[kind % 2];
        enqueuer.say(&format!("gate {n} {kind}"));
        let id: TaskId = enqueuer
            .read("task")
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        let started = wait_for_starts(&side, n, 1);
        let stale = hosts
            .iter()
            .position(|(_, pid)| *pid == started[0].host)
            .unwrap();
        let (stale_pid, rescuer_pid) = (hosts[stale].1, hosts[1 - stale].1);
        hosts[stale].0.signal("-STOP");
        if requeues(name) {
            // Queued again and run by the rescuer, to its end.
            let started = wait_for_starts(&side, n, 2);
            assert_eq!(started[1].host, rescuer_pid, "{name}: {started:?}");
            std::fs::write(gate_path_in(&side, n), "").unwrap();
            observer.wait(&format!("{name}: rerun to SUCCESS"), PATIENCE, |o| {
                o.get(id).record.status == TaskStatus::Success
            });
        } else {
            observer.wait(&format!("{name}: rescued as INTERRUPTED"), PATIENCE, |o| {
                o.get(id).record.status == TaskStatus::Interrupted
            });
            std::fs::write(gate_path_in(&side, n), "").unwrap();
        }
        // A worker process is not stopped with its host: its body runs to
        // its end now, its answer waiting in the pipe for the host.
        if name.ends_with("process") {
            wait_for_end(&side, n, stale_pid);
        }
        let decided = observer.get(id).record;
        let resumed = SystemTime::now();
        hosts[stale].0.signal("-CONT");
        // A thread cannot be stopped half-way: its body runs to its end on
        // the resumed host, and its completion is refused. (An async body
        // may be stopped first, once the host finds its lease was taken.)
        // Either way the stale host learns that it lost the task.
        if name.ends_with("thread") {
            wait_for_end(&side, n, stale_pid);
        }
        hosts[stale].0.read(&format!("lost {id}"));
        lost.push((id, stale_pid));
        // Whatever the stale host still had to write is written now.
        hosts[stale].0.say("flush");
        hosts[stale].0.read("flushed");
        let record = observer.get(id).record;
        let started = starts(&runs(&side), n);
        if requeues(name) {
            assert_eq!(
                (record.status, record.attempts),
                (TaskStatus::Success, 2),
                "{name}"
            );
            assert_eq!(started.len(), 2, "{name}: {started:?}");
        } else {
            assert_eq!(
                (record.status, record.attempts),
                (TaskStatus::Interrupted, 1),
                "{name}"
            );
            assert_eq!(started.len(), 1, "{name}: {started:?}");
        }
        assert_eq!(record.finished_at, decided.finished_at, "{name}");
        assert!(record.finished_at.unwrap() <= resumed, "{name}");
    }
    // Each stale host said it lost its task once, and no other did.
    let mut said: Vec<(TaskId, u32)> = Vec::new();
    for (host, pid) in hosts {
        for line in stop_idle(host) {
            if let Some(id) = line.strip_prefix("lost ") {
                said.push((id.parse().unwrap(), pid));
            }
        }
    }
    said.sort();
    lost.sort();
    assert_eq!(said, lost);
    let unfinished: HashSet<TaskStatus> = observer
        .records()
        .iter()
        .map(|r| r.status)
        .filter(|s| !s.is_finished())
        .collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    Ok(())
}

/// A host that follows a task another host runs (it holds a handle to
/// it) does not wait for that task when it shuts down: it runs nothing
/// itself, and its shutdown drains at once.
fn a_host_does_not_wait_at_shutdown_for_what_others_run() -> Result<(), Failed> {
    let Some(observer) = Observer::open(
        "a_host_does_not_wait_at_shutdown_for_what_others_run",
        "follower",
    ) else {
        return Ok(());
    };
    let side = observer.side();
    // Alone, the runner runs a task of each executor.
    let (mut runner, runner_pid) = start(observer.host(10_000, [2, 1, 1]));
    let mut ids = Vec::new();
    for kind in 0..3 {
        runner.say(&format!("keyed {kind} {kind}"));
        let line = runner.read("keyed");
        ids.push(line.split_whitespace().nth(2).unwrap().to_owned());
        let n = u32::try_from(kind).unwrap();
        assert_eq!(wait_for_starts(&side, n, 1)[0].host, runner_pid);
    }
    // The follower asks for the same keys: it holds handles to the tasks
    // the runner runs, and sees them RUNNING.
    let (mut follower, _) = start(observer.host(10_000, [2, 1, 1]));
    for (kind, id) in ids.iter().enumerate() {
        follower.say(&format!("keyed {kind} {kind}"));
        assert_eq!(follower.read("keyed"), format!("keyed {kind} {id} RUNNING"));
    }
    stop_idle(follower);
    for n in 0..3 {
        std::fs::write(gate_path_in(&side, n), "").unwrap();
    }
    observer.wait("the tasks finished", PATIENCE, |o| o.unfinished() == 0);
    stop_idle(runner);
    for record in observer.records() {
        assert_eq!(
            (record.status, record.attempts),
            (TaskStatus::Success, 1),
            "{record:?}"
        );
    }
    Ok(())
}

fn gate_path_in(side: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.gate-{n}", side.display()))
}

fn main() -> ExitCode {
    taskflow::init();
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "host" => runtime.block_on(host()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    harness::run(vec![
        Trial::test(
            "four_hosts_run_every_task_once",
            four_hosts_run_every_task_once,
        ),
        Trial::test(
            "a_host_killed_mid_burst_loses_nothing_acknowledged",
            a_host_killed_mid_burst_loses_nothing_acknowledged,
        ),
        Trial::test(
            "a_stopped_host_past_its_lease_cannot_complete_its_task",
            a_stopped_host_past_its_lease_cannot_complete_its_task,
        ),
        Trial::test(
            "a_host_does_not_wait_at_shutdown_for_what_others_run",
            a_host_does_not_wait_at_shutdown_for_what_others_run,
        ),
    ])
}
