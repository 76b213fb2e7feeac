//! Durable logs: what a task logs (`taskflow::log` and `tracing` events
//! with fields) on each of its attempts is on its record with the attempt's
//! number, level, target and fields, for async, thread and process tasks,
//! and `get` returns every line the same after a restart on the task store.
//! The per-task cap (`max_logs_per_task`) keeps the latest lines and counts
//! the rest in `logs_dropped`, in memory and after a restart.
//!
//! Process tasks need this binary to enter worker mode first, so it runs
//! its tests with libtest-mimic.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};
use taskflow::{LogLevel, LogRecord, TaskFilter, TaskId, TaskManager, TaskRecord, task};
use taskflow_tests::harness::{self, trial};
use taskflow_tests::within;

// ---------------------------------------------------------------- the tasks

/// Logs one line through `taskflow::log` and one `tracing` event with
/// fields, then fails attempts 0 and 1.
fn chatter(executor: &str) -> Result<u32, String> {
    let attempt = taskflow::context().expect("inside a task").attempt;
    taskflow::log(
        LogLevel::Info,
        format!("{executor} attempt {attempt} starts"),
    );
    tracing::warn!(attempt, executor, "{executor} attempt {attempt} traced");
    match attempt {
        0 | 1 => Err(format!("attempt {attempt} fails")),
        n => Ok(n),
    }
}

#[task(retries = 2)]
async fn chatty_async() -> Result<u32, String> {
    tokio::task::yield_now().await;
    chatter("async")
}

#[task(retries = 2)]
fn chatty_thread() -> Result<u32, String> {
    chatter("thread")
}

#[task(executor = "process", retries = 2)]
fn chatty_process() -> Result<u32, String> {
    chatter("process")
}

/// Four lines per attempt, three attempts: twelve lines.
fn verbose_lines() -> Result<u32, String> {
    let attempt = taskflow::context().expect("inside a task").attempt;
    for line in 0..4 {
        taskflow::log(LogLevel::Debug, format!("attempt {attempt} line {line}"));
    }
    match attempt {
        0 | 1 => Err(format!("attempt {attempt} fails")),
        n => Ok(n),
    }
}

#[task(retries = 2)]
async fn verbose_async() -> Result<u32, String> {
    verbose_lines()
}

#[task(executor = "process", retries = 2)]
fn verbose_process() -> Result<u32, String> {
    verbose_lines()
}

// ---------------------------------------------------------------- helpers

fn micros(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap().as_micros()
}

/// A log line as the tests compare it: everything, its time at the
/// store's resolution (`None` where the test cannot know it).
#[derive(Debug, PartialEq)]
struct Line {
    attempt: u32,
    level: LogLevel,
    target: String,
    message: String,
    fields: Vec<(String, String)>,
    at: Option<u128>,
}

fn lines(record: &TaskRecord) -> Vec<Line> {
    record
        .logs
        .iter()
        .map(|line: &LogRecord| Line {
            attempt: line.attempt,
            level: line.level,
            target: line.target.clone(),
            message: line.message.clone(),
            fields: line.fields.clone(),
            at: Some(micros(line.at)),
        })
        .collect()
}

fn without_times(mut lines: Vec<Line>) -> Vec<Line> {
    for line in &mut lines {
        line.at = None;
    }
    lines
}

/// What `chatter` logs for a task named `name` running on `executor`.
fn chatter_lines(name: &str, executor: &str) -> Vec<Line> {
    (0..3)
        .flat_map(|attempt| {
            [
                Line {
                    attempt,
                    level: LogLevel::Info,
                    target: name.to_owned(),
                    message: format!("{executor} attempt {attempt} starts"),
                    fields: Vec::new(),
                    at: None,
                },
                Line {
                    attempt,
                    level: LogLevel::Warn,
                    target: module_path!().to_owned(),
                    message: format!("{executor} attempt {attempt} traced"),
                    fields: vec![
                        ("attempt".to_owned(), attempt.to_string()),
                        ("executor".to_owned(), executor.to_owned()),
                    ],
                    at: None,
                },
            ]
        })
        .collect()
}

async fn record(manager: &TaskManager, id: TaskId) -> TaskRecord {
    manager
        .get(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("task {id} is unknown"))
}

async fn with_store(db: &Path, max_logs: Option<usize>) -> TaskManager {
    let builder = TaskManager::builder()
        .snapshot_db(db)
        .max_process_workers(1);
    match max_logs {
        Some(n) => builder.max_logs_per_task(n),
        None => builder,
    }
    .build()
    .await
    .unwrap()
}

// ---------------------------------------------------------------- tests

fn every_line_of_every_attempt_survives_a_restart() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let first = with_store(&db, None).await;
        let tasks = [
            (
                chatty_async::NAME,
                "async",
                chatty_async::call().enqueue_on(&first).unwrap(),
            ),
            (
                chatty_thread::NAME,
                "thread",
                chatty_thread::call().enqueue_on(&first).unwrap(),
            ),
            (
                chatty_process::NAME,
                "process",
                chatty_process::call().enqueue_on(&first).unwrap(),
            ),
        ];
        let mut live = Vec::new();
        for (name, executor, handle) in tasks {
            let id = handle.id();
            assert_eq!(within("a chatty task", handle).await.unwrap(), 2);
            let record = record(&first, id).await;
            assert_eq!(record.attempts, 3);
            assert_eq!(
                without_times(lines(&record)),
                chatter_lines(name, executor),
                "{executor}: every line of every attempt, in order"
            );
            assert_eq!(record.logs_dropped, 0);
            live.push((id, executor, lines(&record)));
        }
        first.shutdown().await;

        let second = with_store(&db, None).await;
        for (id, executor, lines_before) in &live {
            let stored = record(&second, *id).await;
            assert_eq!(
                &lines(&stored),
                lines_before,
                "{executor}: the stored lines are the lines logged"
            );
            assert_eq!(stored.logs_dropped, 0);
        }
        // `list` leaves the lines out; `get` has them.
        let listed = second.list(&TaskFilter::new()).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|record| record.logs.is_empty()));
        second.shutdown().await;
    })
}

/// The lines `verbose_lines` keeps under a cap of 5: the latest five of
/// its twelve, as (attempt, message).
fn latest_five() -> Vec<(u32, String)> {
    let all: Vec<(u32, String)> = (0..3)
        .flat_map(|attempt| {
            (0..4).map(move |line| (attempt, format!("attempt {attempt} line {line}")))
        })
        .collect();
    all[all.len() - 5..].to_vec()
}

fn kept(record: &TaskRecord) -> Vec<(u32, String)> {
    record
        .logs
        .iter()
        .map(|line| (line.attempt, line.message.clone()))
        .collect()
}

fn the_cap_keeps_the_latest_lines_and_counts_the_rest() -> Result<(), Failed> {
    trial(async {
        // Without a store.
        let manager = TaskManager::builder()
            .max_logs_per_task(5)
            .max_process_workers(1)
            .build()
            .await
            .unwrap();
        for handle in [
            verbose_async::call().enqueue_on(&manager).unwrap(),
            verbose_process::call().enqueue_on(&manager).unwrap(),
        ] {
            let id = handle.id();
            assert_eq!(within("a verbose task", handle).await.unwrap(), 2);
            let record = record(&manager, id).await;
            assert_eq!(kept(&record), latest_five(), "{}", record.name);
            assert_eq!(record.logs_dropped, 7, "{}", record.name);
        }
        manager.shutdown().await;

        // With one, live and after a restart.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let first = with_store(&db, Some(5)).await;
        let mut ids = Vec::new();
        for handle in [
            verbose_async::call().enqueue_on(&first).unwrap(),
            verbose_process::call().enqueue_on(&first).unwrap(),
        ] {
            let id = handle.id();
            assert_eq!(within("a verbose task", handle).await.unwrap(), 2);
            let record = record(&first, id).await;
            assert_eq!(kept(&record), latest_five(), "{}", record.name);
            assert_eq!(record.logs_dropped, 7, "{}", record.name);
            ids.push((id, lines(&record)));
        }
        first.shutdown().await;
        let second = with_store(&db, Some(5)).await;
        for (id, live) in &ids {
            let stored = record(&second, *id).await;
            assert_eq!(
                kept(&stored),
                latest_five(),
                "{} after a restart",
                stored.name
            );
            assert_eq!(&lines(&stored), live, "{} after a restart", stored.name);
            assert_eq!(stored.logs_dropped, 7, "{} after a restart", stored.name);
        }
        second.shutdown().await;
    })
}

fn main() -> ExitCode {
    taskflow::init();
    harness::run(vec![
        Trial::test(
            "every_line_of_every_attempt_survives_a_restart",
            every_line_of_every_attempt_survives_a_restart,
        ),
        Trial::test(
            "the_cap_keeps_the_latest_lines_and_counts_the_rest",
            the_cap_keeps_the_latest_lines_and_counts_the_rest,
        ),
    ])
}
