//! The process executor, for real: worker processes that are this test binary
//! started again, crashes, timeouts, logs, shutdown and orphans.
//!
//! This binary's `main` enters worker mode before anything else, exactly as an
//! application's would, then runs the tests with libtest-mimic, one at a time
//! (each starts its own workers on a 2-core machine). Two tests also start
//! this binary as a separate *parent* process (a scenario, chosen by an
//! environment variable) so they can flood its output or kill it.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};
use serde::{Deserialize, Serialize};
use taskflow::{
    Error, EventKind, LogLevel, RecvError, TaskFilter, TaskId, TaskManager, TaskStatus, task,
};
use taskflow_tests::harness::{self, alive, scenario, scenario_name, trial};
use taskflow_tests::{wait_until, wait_until_blocking};

// ---------------------------------------------------------------- the tasks

#[task(executor = "process")]
fn double_elsewhere(n: u32) -> (u32, u32) {
    (n * 2, std::process::id())
}

#[task(executor = "process")]
async fn increment_elsewhere(n: u32) -> (u32, u32) {
    tokio::time::sleep(Duration::from_millis(1)).await;
    (n + 1, std::process::id())
}

/// When a stretch of work ran, and where.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct Span {
    pid: u32,
    start_us: u128,
    end_us: u128,
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// Burns the CPU for `millis`.
#[task(executor = "process")]
fn burn(millis: u64) -> Span {
    let start_us = now_us();
    let until = Instant::now() + Duration::from_millis(millis);
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    Span {
        pid: std::process::id(),
        start_us,
        end_us: now_us(),
    }
}

#[task(executor = "process")]
fn fails() -> Result<u32, String> {
    Err("the ledger does not balance".into())
}

#[task(executor = "process")]
fn panics() -> u32 {
    panic!("worker boom")
}

fn kill_self() {
    let pid = std::process::id().to_string();
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    std::thread::sleep(Duration::from_secs(30));
}

#[task(executor = "process")]
fn kills_itself() -> u32 {
    kill_self();
    0
}

#[task(executor = "process", timeout = "500ms")]
fn sleeps_too_long() -> u32 {
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// Dies on its first attempt (leaving its pid in `marker`), succeeds after.
#[task(executor = "process", retries = 1)]
fn dies_once(marker: String) -> u32 {
    if std::fs::metadata(&marker).is_err() {
        let _ = std::fs::write(&marker, std::process::id().to_string());
        kill_self();
    }
    std::process::id()
}

/// Prints `megabytes` to stdout and to stderr, then returns a known buffer.
#[task(executor = "process")]
fn noisy(megabytes: usize) -> Vec<u8> {
    use std::io::Write;
    let line = [b'#'; 1023];
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for _ in 0..megabytes * 1024 {
        let _ = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
        let _ = err.write_all(&line).and_then(|()| err.write_all(b"\n"));
    }
    let _ = out.flush();
    (0..65_536u32).map(|i| (i % 251) as u8).collect()
}

#[task(executor = "process")]
fn logs_then_fails() -> Result<(), String> {
    taskflow::log(LogLevel::Info, "step one");
    tracing::warn!(step = 2, "step two");
    taskflow::log(LogLevel::Error, "step three");
    Err("failed after logging".into())
}

#[task(executor = "process")]
fn sleeper(millis: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(millis));
    std::process::id()
}

#[task(executor = "process")]
fn context_echo() -> (String, String, u32, Option<String>) {
    let context = taskflow::context().expect("a process task has a context");
    let tenant = context.tags.get("tenant").map(str::to_owned);
    (
        context.id.to_string(),
        context.name.to_owned(),
        context.attempt,
        tenant,
    )
}

/// A shape the codec cannot carry: decoding it needs a self-describing format.
#[derive(Serialize, Deserialize, Debug)]
#[serde(untagged)]
enum Loose {
    Number(u32),
    Text(String),
}

#[task(executor = "process")]
fn takes_loose(shape: Loose) -> u32 {
    match shape {
        Loose::Number(n) => n,
        Loose::Text(text) => text.len() as u32,
    }
}

/// A resource each worker builds for itself (see `main`).
#[derive(Debug)]
struct Greeting(String);

#[task(executor = "process")]
fn greet(name: String, greeting: taskflow::Resource<Greeting>) -> String {
    format!("{} {name}", greeting.0)
}

/// This process's nice value, from `/proc/self/stat`.
#[task(executor = "process")]
fn my_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // Field 19 of stat; the first field after the command name is field 3.
    fields
        .get(16)
        .and_then(|nice| nice.parse().ok())
        .unwrap_or(i64::MIN)
}

// ---------------------------------------------------------------- helpers

async fn manager(workers: usize) -> TaskManager {
    TaskManager::builder()
        .max_process_workers(workers)
        .build()
        .await
        .expect("the manager builds")
}

/// Waits until task `id` is RUNNING and its worker has started; the pids
/// of the manager's workers then.
async fn running_on_a_worker(tasks: &TaskManager, id: TaskId) -> Vec<u32> {
    let running = || {
        tasks
            .get(id)
            .expect("the store is readable")
            .is_some_and(|r| r.status == TaskStatus::Running)
    };
    assert!(
        wait_until(Duration::from_secs(30), running).await,
        "task {id} never ran"
    );
    // RUNNING comes as a slot takes the task, the worker a moment after.
    assert!(wait_until(Duration::from_secs(30), || !tasks.worker_pids().is_empty()).await);
    tasks.worker_pids()
}

// ---------------------------------------------------------------- the tests

fn returns_result_from_another_process() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(2).await;
        let (doubled, pid) = double_elsewhere::call(21)
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(doubled, 42);
        assert_ne!(pid, std::process::id(), "the body ran in a worker");
        assert!(tasks.worker_pids().contains(&pid));

        let (incremented, async_pid) = increment_elsewhere::call(41)
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(incremented, 42);
        assert_ne!(
            async_pid,
            std::process::id(),
            "the async body ran in a worker"
        );
        tasks.shutdown().await;
    })
}

fn context_crosses_the_boundary() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(1).await;
        let handle = context_echo::call()
            .tag("tenant", "acme")
            .enqueue_on(&tasks)
            .unwrap();
        let id = handle.id();
        let (seen_id, name, attempt, tenant) = handle.await.unwrap();
        assert_eq!(seen_id, id.to_string());
        assert_eq!(name, context_echo::NAME);
        assert_eq!(attempt, 0);
        assert_eq!(tenant.as_deref(), Some("acme"));
        tasks.shutdown().await;
    })
}

fn two_workers_run_at_most_two_tasks_at_once() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(2).await;
        let mut events = tasks.subscribe();
        let handles: Vec<_> = (0..6)
            .map(|_| burn::call(150).enqueue_on(&tasks).unwrap())
            .collect();
        let ids: BTreeSet<_> = handles.iter().map(|h| h.id()).collect();

        // Watch the lifecycle: RUNNING never exceeds two.
        let watcher = tokio::spawn(async move {
            let (mut running, mut peak, mut finished) = (0i32, 0i32, 0);
            while finished < 6 {
                match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
                    Ok(Ok(event)) if ids.contains(&event.id) => match event.kind {
                        EventKind::Started => {
                            running += 1;
                            peak = peak.max(running);
                        }
                        EventKind::Succeeded | EventKind::Failed(_) => {
                            running -= 1;
                            finished += 1;
                        }
                        _ => {}
                    },
                    Ok(Ok(_)) => {}
                    Ok(Err(RecvError::Lagged(_))) => panic!("the watcher fell behind"),
                    other => panic!("no event within a minute: {other:?}"),
                }
            }
            peak
        });
        let mut spans = Vec::new();
        for handle in handles {
            spans.push(handle.await.unwrap());
        }
        let peak = watcher.await.unwrap();
        assert!((1..=2).contains(&peak), "peak RUNNING was {peak}");

        // And the bodies agree: at no body's start were three executing.
        for span in &spans {
            let executing = spans
                .iter()
                .filter(|other| other.start_us <= span.start_us && span.start_us < other.end_us)
                .count();
            assert!(
                executing <= 2,
                "{executing} bodies executing at the start of {span:?}"
            );
        }
        let pids: BTreeSet<u32> = spans.iter().map(|s| s.pid).collect();
        assert!(pids.len() <= 2, "served by {pids:?}");
        assert!(!pids.contains(&std::process::id()));
        tasks.shutdown().await;
    })
}

fn failures_have_the_right_kind_and_text() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(2).await;

        let error = fails::call().enqueue_on(&tasks).unwrap().await.unwrap_err();
        assert!(error.is_error(), "{error:?}");
        assert_eq!(error.message(), "the ledger does not balance");

        let error = panics::call()
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap_err();
        assert!(error.is_panic(), "{error:?}");
        assert!(error.message().starts_with("worker boom at "), "{error:?}");
        assert!(
            error.message().contains("process.rs:"),
            "the location is recorded: {error:?}"
        );

        let handle = kills_itself::call().enqueue_on(&tasks).unwrap();
        let id = handle.id();
        let error = handle.await.unwrap_err();
        assert!(error.is_worker_died(), "{error:?}");
        assert!(error.message().contains("worker process died"), "{error:?}");
        assert!(
            error.message().contains("signal 9"),
            "the signal is recorded: {error:?}"
        );
        assert_eq!(
            tasks
                .get(id)
                .expect("the store is readable")
                .unwrap()
                .status,
            TaskStatus::Failed
        );

        let handle = sleeps_too_long::call().enqueue_on(&tasks).unwrap();
        let id = handle.id();
        let error = handle.await.unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        assert!(error.message().contains("was killed"), "{error:?}");
        let record = tasks.get(id).expect("the store is readable").unwrap();
        assert_eq!(record.status, TaskStatus::Failed);
        assert_eq!(
            record.last_error.as_ref().map(|e| e.is_timeout()),
            Some(true)
        );

        // The pool replaced what it lost and carries on.
        let (value, _) = double_elsewhere::call(5)
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(value, 10);
        tasks.shutdown().await;
    })
}

fn a_crash_costs_one_attempt_and_the_retry_runs_elsewhere() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("first-attempt-pid");
        let tasks = manager(2).await;
        let handle = dies_once::call(marker.display().to_string())
            .enqueue_on(&tasks)
            .unwrap();
        let id = handle.id();
        let second_pid = handle.await.unwrap();
        let first_pid: u32 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
        assert_ne!(first_pid, second_pid, "the retry ran on a fresh worker");
        let record = tasks.get(id).expect("the store is readable").unwrap();
        assert_eq!(record.status, TaskStatus::Success);
        assert_eq!(record.attempts, 2);
        assert!(!alive(first_pid), "the dead worker was reaped");
        tasks.shutdown().await;
    })
}

fn a_crash_leaves_tasks_on_other_workers_untouched() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(2).await;
        tasks.prewarm().await.unwrap();
        let survivor = sleeper::call(800).enqueue_on(&tasks).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let crash = kills_itself::call().enqueue_on(&tasks).unwrap();
        assert!(crash.await.unwrap_err().is_worker_died());
        let survivor_pid = survivor.await.unwrap();
        assert!(tasks.worker_pids().contains(&survivor_pid));
        // The pool replaces the lost worker by itself.
        assert!(
            wait_until(Duration::from_secs(30), || tasks.worker_pids().len() == 2).await,
            "the pool did not replace its lost worker: {:?}",
            tasks.worker_pids()
        );
        tasks.shutdown().await;
    })
}

fn megabytes_of_output_do_not_disturb_the_protocol() -> Result<(), Failed> {
    let mut child = scenario("noisy")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes concurrently so neither side blocks.
    let mut stderr = child.stderr.take().unwrap();
    let stderr_bytes = std::thread::spawn(move || {
        let mut sink = Vec::new();
        stderr.read_to_end(&mut sink).map(|_| sink.len())
    });
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    let stderr_bytes = stderr_bytes.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&stdout);
    assert!(status.success(), "the noisy scenario failed: {status}");
    assert!(
        text.contains("noisy: result intact"),
        "no verdict in its output"
    );
    assert!(
        stdout.len() >= 4 << 20,
        "the worker's stdout came through: {} bytes",
        stdout.len()
    );
    assert!(
        stderr_bytes >= 4 << 20,
        "the worker's stderr came through: {stderr_bytes} bytes"
    );
    Ok(())
}

fn logs_before_a_failure_are_on_the_record_in_order() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(1).await;
        let mut events = tasks.subscribe();
        let handle = logs_then_fails::call().enqueue_on(&tasks).unwrap();
        let id = handle.id();
        assert_eq!(handle.await.unwrap_err().message(), "failed after logging");

        let record = tasks.get(id).expect("the store is readable").unwrap();
        let lines: Vec<(LogLevel, &str)> = record
            .logs
            .iter()
            .map(|r| (r.level, r.message.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (LogLevel::Info, "step one"),
                (LogLevel::Warn, "step two step=2"),
                (LogLevel::Error, "step three"),
            ]
        );

        // On the bus too, before the failure.
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("events arrive")
                .expect("no lag");
            if event.id != id {
                continue;
            }
            match event.kind {
                EventKind::Log(record) => seen.push(record.message),
                EventKind::Failed(_) => break,
                _ => {}
            }
        }
        assert_eq!(seen, ["step one", "step two step=2", "step three"]);
        tasks.shutdown().await;
    })
}

fn shutdown_kills_what_outlives_the_timeout() -> Result<(), Failed> {
    trial(async {
        let tasks = TaskManager::builder()
            .max_process_workers(2)
            .process_shutdown_timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap();
        let long = sleeper::call(60_000).enqueue_on(&tasks).unwrap();
        let id = long.id();
        let pids = running_on_a_worker(&tasks, id).await;

        let started = Instant::now();
        let report = tasks.shutdown().await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
        assert!(!report.drained);
        assert_eq!(report.running_interrupted, 1);
        assert_eq!(
            tasks
                .get(id)
                .expect("the store is readable")
                .unwrap()
                .status,
            TaskStatus::Interrupted
        );
        assert!(long.await.unwrap_err().is_interrupted());
        for pid in pids {
            assert!(!alive(pid), "worker {pid} outlived shutdown");
        }
        assert!(tasks.worker_pids().is_empty());
        assert!(matches!(
            sleeper::call(1).enqueue_on(&tasks),
            Err(Error::ShutDown)
        ));
    })
}

fn shutdown_of_a_pool_that_never_started_returns_at_once() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(2).await;
        let started = Instant::now();
        let report = tasks.shutdown().await;
        assert!(report.drained);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert!(tasks.worker_pids().is_empty());
    })
}

fn cancelling_a_running_process_task_kills_its_worker() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(1).await;
        let handle = sleeper::call(60_000).enqueue_on(&tasks).unwrap();
        let id = handle.id();
        let pids = running_on_a_worker(&tasks, id).await;
        tasks.cancel(id).unwrap();
        assert!(handle.await.unwrap_err().is_cancelled());
        assert!(wait_until_blocking(Duration::from_secs(10), || pids
            .iter()
            .all(|&pid| !alive(pid))));
        // The slot is free again.
        let pid = sleeper::call(1).enqueue_on(&tasks).unwrap().await.unwrap();
        assert!(!pids.contains(&pid));
        tasks.shutdown().await;
    })
}

fn killing_the_parent_leaves_no_worker_running() -> Result<(), Failed> {
    let mut parent = scenario("orphan").stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let pids: Vec<u32> = loop {
        let Some(line) = lines.next() else {
            let _ = parent.kill();
            let _ = parent.wait();
            return Err("the orphan scenario ended before naming its workers".into());
        };
        if let Some(pids) = line.unwrap().strip_prefix("workers:") {
            break pids
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
        }
    };
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| alive(pid)));
    parent.kill().unwrap(); // SIGKILL
    parent.wait().unwrap();
    let gone = wait_until_blocking(Duration::from_secs(10), || {
        pids.iter().all(|&pid| !alive(pid))
    });
    assert!(gone, "workers {pids:?} outlived their parent");
    Ok(())
}

fn an_argument_the_codec_cannot_carry_is_refused_at_enqueue() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(1).await;
        let error = takes_loose::call(Loose::Number(3))
            .enqueue_on(&tasks)
            .unwrap_err();
        match &error {
            Error::Argument { task, argument, .. } => {
                assert_eq!(*task, takes_loose::NAME);
                assert_eq!(*argument, "shape");
            }
            other => panic!("expected an argument error, got {other:?}"),
        }
        assert!(error.to_string().contains("shape"));
        assert!(
            tasks
                .list(&TaskFilter::new())
                .expect("the store is readable")
                .is_empty(),
            "no record was created"
        );
        assert!(
            tasks.worker_pids().is_empty(),
            "no worker was started for it"
        );
        tasks.shutdown().await;
    })
}

fn workers_are_recycled_after_max_tasks() -> Result<(), Failed> {
    trial(async {
        let tasks = TaskManager::builder()
            .max_process_workers(1)
            .max_tasks_per_worker(3)
            .build()
            .await
            .unwrap();
        let mut pids = BTreeSet::new();
        for n in 0..7 {
            let (_, pid) = double_elsewhere::call(n)
                .enqueue_on(&tasks)
                .unwrap()
                .await
                .unwrap();
            pids.insert(pid);
        }
        assert!(
            pids.len() >= 3,
            "seven tasks at three per worker used {pids:?}"
        );
        tasks.shutdown().await;
    })
}

fn a_worker_that_never_greets_is_an_error_not_a_hang() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let silent = dir.path().join("silent-worker");
        std::fs::write(&silent, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let tasks = TaskManager::builder()
            .max_process_workers(1)
            .worker_program(&silent)
            .worker_start_timeout(Duration::from_millis(500))
            .build()
            .await
            .unwrap();
        let error = double_elsewhere::call(1)
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap_err();
        assert!(error.message().contains("did not greet"), "{error:?}");

        let quits = TaskManager::builder()
            .max_process_workers(1)
            .worker_program("/bin/true")
            .build()
            .await
            .unwrap();
        let error = double_elsewhere::call(1)
            .enqueue_on(&quits)
            .unwrap()
            .await
            .unwrap_err();
        assert!(
            error.message().contains("exited before greeting"),
            "{error:?}"
        );
        tasks.shutdown().await;
        quits.shutdown().await;
    })
}

fn process_tasks_take_resources_built_in_the_worker() -> Result<(), Failed> {
    trial(async {
        let tasks = TaskManager::builder()
            .max_process_workers(1)
            .resource(Greeting("built in the parent, never sent".into()))
            .build()
            .await
            .unwrap();
        let text = greet::call("ada".into())
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(text, "hello from a worker, ada");
        tasks.shutdown().await;
    })
}

fn workers_run_at_the_configured_nice_value() -> Result<(), Failed> {
    trial(async {
        let tasks = TaskManager::builder()
            .max_process_workers(1)
            .process_nice(7)
            .build()
            .await
            .unwrap();
        let nice = my_nice::call().enqueue_on(&tasks).unwrap().await.unwrap();
        assert_eq!(nice, 7);
        tasks.shutdown().await;
    })
}

// ---------------------------------------------------------------- scenarios

/// A parent whose workers print megabytes; verifies the result itself.
async fn noisy_scenario() -> ExitCode {
    let tasks = manager(1).await;
    let expected: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    let result = noisy::call(4).enqueue_on(&tasks).unwrap().await;
    tasks.shutdown().await;
    match result {
        Ok(bytes) if bytes == expected => {
            println!("noisy: result intact");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("noisy: wrong result: {:?}", other.map(|b| b.len()));
            ExitCode::FAILURE
        }
    }
}

/// A parent that names its two workers and then waits to be killed.
async fn orphan_scenario() -> ExitCode {
    let tasks = manager(2).await;
    tasks.prewarm().await.unwrap();
    let _busy = sleeper::call(120_000).enqueue_on(&tasks).unwrap();
    let pids = tasks.worker_pids();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("workers: {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(120)).await;
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    taskflow::init_with(|resources| resources.insert(Greeting("hello from a worker,".into())));
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "noisy" => runtime.block_on(noisy_scenario()),
            "orphan" => runtime.block_on(orphan_scenario()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    let trials = vec![
        Trial::test(
            "returns_result_from_another_process",
            returns_result_from_another_process,
        ),
        Trial::test("context_crosses_the_boundary", context_crosses_the_boundary),
        Trial::test(
            "two_workers_run_at_most_two_tasks_at_once",
            two_workers_run_at_most_two_tasks_at_once,
        ),
        Trial::test(
            "failures_have_the_right_kind_and_text",
            failures_have_the_right_kind_and_text,
        ),
        Trial::test(
            "a_crash_costs_one_attempt_and_the_retry_runs_elsewhere",
            a_crash_costs_one_attempt_and_the_retry_runs_elsewhere,
        ),
        Trial::test(
            "a_crash_leaves_tasks_on_other_workers_untouched",
            a_crash_leaves_tasks_on_other_workers_untouched,
        ),
        Trial::test(
            "megabytes_of_output_do_not_disturb_the_protocol",
            megabytes_of_output_do_not_disturb_the_protocol,
        ),
        Trial::test(
            "logs_before_a_failure_are_on_the_record_in_order",
            logs_before_a_failure_are_on_the_record_in_order,
        ),
        Trial::test(
            "shutdown_kills_what_outlives_the_timeout",
            shutdown_kills_what_outlives_the_timeout,
        ),
        Trial::test(
            "shutdown_of_a_pool_that_never_started_returns_at_once",
            shutdown_of_a_pool_that_never_started_returns_at_once,
        ),
        Trial::test(
            "cancelling_a_running_process_task_kills_its_worker",
            cancelling_a_running_process_task_kills_its_worker,
        ),
        Trial::test(
            "killing_the_parent_leaves_no_worker_running",
            killing_the_parent_leaves_no_worker_running,
        ),
        Trial::test(
            "an_argument_the_codec_cannot_carry_is_refused_at_enqueue",
            an_argument_the_codec_cannot_carry_is_refused_at_enqueue,
        ),
        Trial::test(
            "workers_are_recycled_after_max_tasks",
            workers_are_recycled_after_max_tasks,
        ),
        Trial::test(
            "a_worker_that_never_greets_is_an_error_not_a_hang",
            a_worker_that_never_greets_is_an_error_not_a_hang,
        ),
        Trial::test(
            "process_tasks_take_resources_built_in_the_worker",
            process_tasks_take_resources_built_in_the_worker,
        ),
        Trial::test(
            "workers_run_at_the_configured_nice_value",
            workers_run_at_the_configured_nice_value,
        ),
    ];
    harness::run(trials)
}
