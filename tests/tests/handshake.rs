//! The worker handshake, against a real second program: a worker built from
//! other task types is refused before any task is sent to it, with an error
//! naming the task and both sides' types; a worker with the same types is
//! accepted.
//!
//! The other program is `src/bin/mismatched_worker.rs`, which declares these
//! tasks under the same names and executors, with `handshake::square`'s types
//! changed: only the types tell the two programs apart. This
//! binary's own `main` enters worker mode first, so it serves as the worker
//! program with the same types.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::process::ExitCode;

use libtest_mimic::{Failed, Trial};
use taskflow::{Error, TaskManager, TaskStatus, task};
use taskflow_tests::harness::{self, alive, trial};
use taskflow_tests::{PATIENCE, wait_for_status, wait_until};

#[task(executor = "process", name = "handshake::greet")]
fn greet(name: String) -> String {
    format!("hello, {name}")
}

#[task(executor = "process", name = "handshake::square")]
fn square(n: u64) -> u64 {
    n * n
}

/// What the refusal of `mismatched_worker` must say.
const SQUARE_DIFFERS: &str = "task `handshake::square` differs: here it takes `(u64,)` and returns `u64`; the worker's takes `(u32,)` and returns `u32`";

/// The pid in "worker process handshake failed (pid 123, …)".
fn refused_pid(message: &str) -> u32 {
    let (_, rest) = message
        .split_once("(pid ")
        .unwrap_or_else(|| panic!("no pid in {message:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

fn a_worker_program_built_from_different_task_types_is_refused_at_the_handshake()
-> Result<(), Failed> {
    trial(async {
        let tasks = TaskManager::builder()
            .max_process_workers(1)
            .worker_program(env!("CARGO_BIN_EXE_mismatched_worker"))
            .build()
            .await
            .unwrap();

        let error = tasks.prewarm().await.unwrap_err();
        let Error::WorkerStart(message) = &error else {
            panic!("not a worker start error: {error:?}");
        };
        assert!(message.contains(SQUARE_DIFFERS), "{message}");
        assert!(tasks.worker_pids().is_empty(), "{:?}", tasks.worker_pids());
        let pid = refused_pid(message);
        assert!(
            wait_until(PATIENCE, || !alive(pid)).await,
            "the refused worker {pid} is still running"
        );

        // A task sent its way fails with the same reason instead of running
        // on bytes the worker would misread; so does one whose own types
        // agree, since the whole worker is refused.
        let handle = square::call(3).enqueue_on(&tasks).unwrap();
        let id = handle.id();
        let failure = handle.await.unwrap_err();
        assert!(failure.message().contains(SQUARE_DIFFERS), "{failure:?}");
        wait_for_status(&tasks, id, TaskStatus::Failed).await;
        let failure = greet::call("ada".into())
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap_err();
        assert!(failure.message().contains(SQUARE_DIFFERS), "{failure:?}");
        tasks.shutdown().await;
    })
}

fn a_worker_program_with_the_same_types_passes() -> Result<(), Failed> {
    trial(async {
        let tasks = TaskManager::builder()
            .max_process_workers(1)
            .worker_program(std::env::current_exe().unwrap())
            .build()
            .await
            .unwrap();
        tasks.prewarm().await.unwrap();
        assert_eq!(tasks.worker_pids().len(), 1);
        let squared = square::call(12).enqueue_on(&tasks).unwrap().await.unwrap();
        assert_eq!(squared, 144);
        let greeting = greet::call("ada".into())
            .enqueue_on(&tasks)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(greeting, "hello, ada");
        tasks.shutdown().await;
    })
}

fn main() -> ExitCode {
    taskflow::init();
    harness::run(vec![
        Trial::test(
            "a_worker_program_built_from_different_task_types_is_refused_at_the_handshake",
            a_worker_program_built_from_different_task_types_is_refused_at_the_handshake,
        ),
        Trial::test(
            "a_worker_program_with_the_same_types_passes",
            a_worker_program_with_the_same_types_passes,
        ),
    ])
}
