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
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};
use serde::{Deserialize, Serialize};
use taskflow::{
    Error, EventKind, LogLevel, RecvError, TaskFilter, TaskId, TaskManager, TaskStatus, task,
};
use taskflow_tests::harness::{self, alive, kill_if_named, scenario, scenario_name, trial, zombie};
use taskflow_tests::{PATIENCE, wait_for, wait_until, wait_until_blocking, within};

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

/// Starts a long `sleep` (in its worker's process group), leaves its pid in
/// `marker`, and outstays its timeout. The sleep outlasts any wait of the
/// test, so only a kill ends it in time.
#[task(executor = "process", timeout = "1s")]
// The point is a child the task leaves behind: its worker is killed first.
#[allow(clippy::zombie_processes)]
fn leaves_a_child(marker: String) -> u32 {
    let child = Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(&marker, child.id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// Starts a long `sleep` and returns its pid at once, leaving it running.
#[task(executor = "process")]
fn returns_leaving_a_child() -> u32 {
    Command::new("sleep").arg("300").spawn().unwrap().id()
}

/// Starts `sleep 8` outside its worker's process group, with its stdout on
/// the worker's reply pipe (so it holds that pipe open after the worker is
/// gone), leaves its pid in `marker`, and outstays its timeout.
#[task(executor = "process", timeout = "1s")]
// The point is a child the task leaves behind: its worker is killed first.
#[allow(clippy::zombie_processes)]
fn lends_its_channel(marker: String) -> u32 {
    let channel = reply_channel();
    let child = Command::new("sleep")
        .arg("8")
        .stdout(channel)
        .process_group(0)
        .spawn()
        .unwrap();
    std::fs::write(&marker, child.id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// What a task writes on its worker's reply channel, behind the worker's
/// back.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum Forgery {
    /// A well-formed log record, made by hand: proves the hand-made
    /// encoding below is the codec's.
    FairLog,
    /// A well-formed failure for this very task, made by hand; the task
    /// then exits, so the worker's own reply never comes.
    FairDone,
    /// A log record whose target claims 2^40 bytes.
    HugeLogString,
    /// A failure whose message claims 2^63 bytes.
    HugeDoneMessage,
    /// A length prefix of 3 GiB.
    HugeFrame,
    /// 1 KiB of (seeded) random bytes, as they come.
    Noise,
    /// 1 KiB of (seeded) random bytes as a frame's header, with honest
    /// lengths around it.
    FramedNoise,
    /// A greeting, in the middle of a task.
    Hello,
    /// The end of some other task.
    DoneForAnother,
}

#[task(executor = "process")]
fn forges(forgery: Forgery) -> u32 {
    let id = taskflow::context()
        .expect("a process task has a context")
        .id;
    let bytes = match forgery {
        Forgery::FairLog => frame(&log_header(id, b"crafted", "crafted by hand")),
        Forgery::FairDone => {
            let mut header = vec![2];
            push_id(id, &mut header);
            // Some(TaskError { kind: Error (0), message })
            header.extend_from_slice(&[1, 0]);
            push_str(b"crafted failure", &mut header);
            frame(&header)
        }
        Forgery::HugeLogString => {
            let mut header = log_header(id, b"", "");
            // Cut after the target's length, then claim 2^40 bytes for it.
            header.truncate(header.len() - 2);
            push_varint(1 << 40, &mut header);
            header.extend_from_slice(b"tiny");
            frame(&header)
        }
        Forgery::HugeDoneMessage => {
            let mut header = vec![2];
            push_id(id, &mut header);
            header.extend_from_slice(&[1, 0]);
            push_varint(1 << 63, &mut header);
            header.extend_from_slice(b"tiny");
            frame(&header)
        }
        Forgery::HugeFrame => {
            let mut bytes = (3u32 << 30).to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0; 60]);
            bytes
        }
        Forgery::Noise => noise(1024),
        Forgery::FramedNoise => frame(&noise(1024)),
        Forgery::Hello => {
            // protocol, codec, fingerprint, pid
            let mut header = vec![0, 2, 2, 7];
            push_varint(u64::from(std::process::id()), &mut header);
            frame(&header)
        }
        Forgery::DoneForAnother => {
            let mut header = vec![2];
            push_id(taskflow::TaskId::new(), &mut header);
            header.push(0); // no failure
            frame(&header)
        }
    };
    reply_channel().write_all(&bytes).unwrap();
    if let Forgery::FairDone = forgery {
        std::process::exit(0);
    }
    7
}

/// The worker's reply pipe, opened anew through `/proc` (a worker keeps it
/// on descriptor 4, close-on-exec, so nothing inherits it by accident).
fn reply_channel() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/4")
        .unwrap()
}

// The wire format, by hand (postcard through serde): integers are LEB128
// varints, an enum is its variant's index, a string is its length and bytes,
// a task id (a uuid) is 16 bytes with their length before them, an `Option`
// is a 0 or 1 byte. A frame is the length of the rest and the length of the
// header (little-endian u32s), the header, then the payload (none here).

fn push_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn push_str(text: &[u8], out: &mut Vec<u8>) {
    push_varint(text.len() as u64, out);
    out.extend_from_slice(text);
}

fn push_id(id: taskflow::TaskId, out: &mut Vec<u8>) {
    push_str(&id.to_bytes(), out);
}

/// `FromWorker::Log { id, record }`, the record at INFO.
fn log_header(id: taskflow::TaskId, target: &[u8], message: &str) -> Vec<u8> {
    let mut header = vec![1];
    push_id(id, &mut header);
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    push_varint(at.as_secs(), &mut header);
    push_varint(u64::from(at.subsec_nanos()), &mut header);
    header.push(2); // LogLevel::Info
    push_str(target, &mut header);
    push_str(message.as_bytes(), &mut header);
    header.push(0); // attempt 0
    header.push(0); // no structured fields
    header
}

fn frame(header: &[u8]) -> Vec<u8> {
    let header_len = u32::try_from(header.len()).unwrap();
    let mut bytes = (header_len + 4).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(header);
    bytes
}

/// `len` bytes of splitmix64 from a fixed seed, so a failure can be
/// replayed. These happen to begin with a frame length that fits (66 MB)
/// followed by a header length that does not fit in it.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x5EED;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
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
    let running = || async {
        tasks
            .get(id)
            .await
            .expect("the store is readable")
            .is_some_and(|r| r.status == TaskStatus::Running)
    };
    assert!(
        wait_for(Duration::from_secs(30), running).await,
        "task {id} never ran"
    );
    // RUNNING comes as a slot takes the task, the worker a moment after.
    assert!(wait_until(Duration::from_secs(30), || !tasks.worker_pids().is_empty()).await);
    tasks.worker_pids()
}

/// Runs one task on each of the two slots of `tasks` at once: both succeed,
/// on two different live workers.
async fn both_slots_serve(tasks: &TaskManager) {
    let first = sleeper::call(500).enqueue_on(tasks).unwrap();
    let second = sleeper::call(500).enqueue_on(tasks).unwrap();
    let first = within("a task on the first slot", first).await.unwrap();
    let second = within("a task on the second slot", second).await.unwrap();
    assert_ne!(first, second, "two tasks at once ran on one worker");
    let pids = tasks.worker_pids();
    assert!(
        pids.contains(&first) && pids.contains(&second),
        "{first} and {second} are not among {pids:?}"
    );
}

/// The pid in a failure's "(pid N)".
fn pid_in(message: &str) -> u32 {
    let (_, rest) = message
        .split_once("(pid ")
        .expect("the message names a pid");
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .expect("a pid")
}

/// Reads the pid a task left in `marker`.
fn pid_from(marker: &std::path::Path) -> u32 {
    std::fs::read_to_string(marker)
        .expect("the task left its child's pid")
        .parse()
        .expect("a pid")
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
                .await
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
        let record = tasks.get(id).await.expect("the store is readable").unwrap();
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
        let record = tasks.get(id).await.expect("the store is readable").unwrap();
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

        let record = tasks.get(id).await.expect("the store is readable").unwrap();
        let lines: Vec<_> = record
            .logs
            .iter()
            .map(|r| (r.level, r.message.as_str(), r.fields.clone()))
            .collect();
        assert_eq!(
            lines,
            [
                (LogLevel::Info, "step one", vec![]),
                (
                    LogLevel::Warn,
                    "step two",
                    vec![("step".to_owned(), "2".to_owned())]
                ),
                (LogLevel::Error, "step three", vec![]),
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
        assert_eq!(seen, ["step one", "step two", "step three"]);
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
                .await
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
        tasks.cancel(id).await.unwrap();
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
                .await
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

fn a_malformed_frame_costs_one_attempt_and_one_worker() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(2).await;
        tasks.prewarm().await.unwrap();

        // First, frames made by hand that are well formed: the parent
        // takes them for the worker's own, so the encoding below is right.
        let handle = forges::call(Forgery::FairLog).enqueue_on(&tasks).unwrap();
        let id = handle.id();
        assert_eq!(within("a fair log", handle).await.unwrap(), 7);
        let record = tasks.get(id).await.expect("the store is readable").unwrap();
        assert!(
            record
                .logs
                .iter()
                .any(|r| r.message == "crafted by hand" && r.target == "crafted"),
            "the hand-made record is on the task: {:?}",
            record.logs
        );
        let before = tasks.worker_pids();
        let handle = forges::call(Forgery::FairDone).enqueue_on(&tasks).unwrap();
        let error = within("a fair failure", handle).await.unwrap_err();
        assert!(error.is_error(), "{error:?}");
        assert_eq!(error.message(), "crafted failure");
        // That worker exited once idle: the pool replaces it on its own.
        assert!(
            wait_until(PATIENCE, || {
                let pids = tasks.worker_pids();
                pids.len() == 2 && pids != before
            })
            .await,
            "{before:?} became {:?}",
            tasks.worker_pids()
        );
        both_slots_serve(&tasks).await;

        for forgery in [
            Forgery::HugeLogString,
            Forgery::HugeDoneMessage,
            Forgery::HugeFrame,
            Forgery::Noise,
            Forgery::FramedNoise,
            Forgery::Hello,
            Forgery::DoneForAnother,
        ] {
            let handle = forges::call(forgery).enqueue_on(&tasks).unwrap();
            let id = handle.id();
            let error = within(&format!("an attempt that forged {forgery:?}"), handle)
                .await
                .unwrap_err();
            assert!(error.is_protocol(), "{forgery:?}: {error:?}");
            assert!(
                error.message().starts_with("worker sent a malformed frame"),
                "{forgery:?}: {error:?}"
            );
            let record = tasks.get(id).await.expect("the store is readable").unwrap();
            assert_eq!(record.status, TaskStatus::Failed, "{forgery:?}");
            let liar = pid_in(error.message());
            assert!(
                wait_until(PATIENCE, || !alive(liar) && !zombie(liar)).await,
                "{forgery:?}: the worker that forged it is still there"
            );
            assert!(
                wait_until(PATIENCE, || tasks.worker_pids().len() == 2).await,
                "{forgery:?}: the pool is not back to two workers: {:?}",
                tasks.worker_pids()
            );
            assert!(!tasks.worker_pids().contains(&liar));
            both_slots_serve(&tasks).await;
        }
        let report = within("shutdown", tasks.shutdown()).await;
        assert!(report.drained, "{report:?}");
    })
}

fn a_timeout_kills_what_the_task_started() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let tasks = manager(1).await;
        let handle = leaves_a_child::call(marker.display().to_string())
            .enqueue_on(&tasks)
            .unwrap();
        let error = within("the attempt", handle).await.unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        let child = pid_from(&marker);
        let gone = wait_until(PATIENCE, || !alive(child)).await;
        kill_if_named(child, "sleep");
        assert!(gone, "the task's child {child} outlived its worker");
        tasks.shutdown().await;
    })
}

fn a_retired_worker_takes_what_its_tasks_left_running() -> Result<(), Failed> {
    trial(async {
        let tasks = TaskManager::builder()
            .max_process_workers(1)
            .max_tasks_per_worker(1)
            .build()
            .await
            .unwrap();
        let child = within(
            "the task",
            returns_leaving_a_child::call().enqueue_on(&tasks).unwrap(),
        )
        .await
        .unwrap();
        let gone = wait_until(PATIENCE, || !alive(child)).await;
        kill_if_named(child, "sleep");
        assert!(gone, "the task's child {child} outlived its retired worker");
        tasks.shutdown().await;
    })
}

fn a_process_holding_the_reply_pipe_does_not_hold_the_attempt() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let tasks = manager(1).await;
        tasks.prewarm().await.unwrap();
        let started = Instant::now();
        let handle = lends_its_channel::call(marker.display().to_string())
            .enqueue_on(&tasks)
            .unwrap();
        let error = within("the attempt", handle).await.unwrap_err();
        let took = started.elapsed();
        let child = pid_from(&marker);
        // It left the group, so the kill spared it: it still holds the pipe.
        let held = alive(child);
        kill_if_named(child, "sleep");
        assert!(error.is_timeout(), "{error:?}");
        assert!(
            took < Duration::from_secs(6),
            "a 1 s timeout took {took:?} while a process held the pipe for 8 s"
        );
        assert!(held, "the pipe's holder {child} died with the worker");
        // And the slot carries on.
        let pid = sleeper::call(1).enqueue_on(&tasks).unwrap().await.unwrap();
        assert!(tasks.worker_pids().contains(&pid));
        tasks.shutdown().await;
    })
}

fn an_idle_worker_killed_from_outside_is_reaped_and_replaced() -> Result<(), Failed> {
    trial(async {
        let tasks = manager(2).await;
        tasks.prewarm().await.unwrap();
        let before = tasks.worker_pids();
        assert_eq!(before.len(), 2);
        let victim = before[0];
        let killed = Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let replaced = wait_until(PATIENCE, || {
            let pids = tasks.worker_pids();
            !pids.contains(&victim) && pids.len() == 2
        })
        .await;
        assert!(
            replaced,
            "still {:?} after killing {victim}",
            tasks.worker_pids()
        );
        assert!(!alive(victim) && !zombie(victim), "{victim} was not reaped");
        for pid in tasks.worker_pids() {
            assert!(alive(pid), "worker {pid} is not running");
        }
        both_slots_serve(&tasks).await;
        let report = within("shutdown", tasks.shutdown()).await;
        assert!(report.drained, "{report:?}");
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
        Trial::test(
            "a_malformed_frame_costs_one_attempt_and_one_worker",
            a_malformed_frame_costs_one_attempt_and_one_worker,
        ),
        Trial::test(
            "a_timeout_kills_what_the_task_started",
            a_timeout_kills_what_the_task_started,
        ),
        Trial::test(
            "a_retired_worker_takes_what_its_tasks_left_running",
            a_retired_worker_takes_what_its_tasks_left_running,
        ),
        Trial::test(
            "a_process_holding_the_reply_pipe_does_not_hold_the_attempt",
            a_process_holding_the_reply_pipe_does_not_hold_the_attempt,
        ),
        Trial::test(
            "an_idle_worker_killed_from_outside_is_reaped_and_replaced",
            an_idle_worker_killed_from_outside_is_reaped_and_replaced,
        ),
    ];
    harness::run(trials)
}
