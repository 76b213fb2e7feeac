//! Priorities: with one slot, tasks that waited start highest priority
//! first and in arrival order within one priority, whether the slot is a
//! queue's `concurrency(1)` or the executor's `max_concurrent_tasks(1)`,
//! without a task store, with one, and after a restart on the store's file.
//!
//! Each test enqueues 50 tasks of seeded random priorities while a blocker
//! holds the only slot, then lets the blocker finish; the bodies record the
//! order they start in. Each runs twice: with each task due as it is
//! enqueued, and with one `run_at` in the past for all of them, where only
//! arrival tells tasks of one priority apart.

// The tests share helpers outside `#[test]` functions: a panic is how they
// report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use taskflow::{
    QueueConfig, TaskHandle, TaskId, TaskManager, TaskManagerBuilder, TaskStatus, task,
};
use taskflow_tests::{Gates, eventually, within};

/// Tasks per test.
const TASKS: u32 = 50;

/// Start order per test run: the `n` of each body, as it started.
static STARTS: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

/// Blockers wait on the gate named after their test run.
static GATES: Gates = Gates::new();

#[task]
async fn ranked(run: String, n: u32) {
    STARTS
        .lock()
        .expect("no body panics holding the lock")
        .push((run, n));
}

/// Holds the only slot until the test opens its gate.
#[task]
async fn blocker(run: String) {
    assert!(
        GATES.wait(&run).await,
        "the test never opened the gate of {run}"
    );
}

fn starts(run: &str) -> Vec<u32> {
    STARTS
        .lock()
        .expect("no body panics holding the lock")
        .iter()
        .filter(|(name, _)| name == run)
        .map(|&(_, n)| n)
        .collect()
}

/// `TASKS` priorities from `seed`, few enough distinct ones that many tie.
fn priorities(seed: u64) -> Vec<i16> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..TASKS).map(|_| rng.i16(-3..=3)).collect()
}

/// The order tasks `0..` with `priorities` must start in: higher first, in
/// arrival order within one priority.
fn expected_order(priorities: &[i16]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..TASKS).collect();
    order.sort_by_key(|&n| std::cmp::Reverse(priorities[n as usize]));
    order
}

/// Where the test's tasks wait: a named queue of concurrency 1 in an
/// uncapped executor, or the default queue of an executor with one slot.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Queue,
    Executor,
}

const QUEUE: &str = "ranked";

fn builder(slot: Slot, db: Option<&Path>) -> TaskManagerBuilder {
    let builder = match slot {
        Slot::Queue => TaskManager::builder().queue(QUEUE, QueueConfig::new().concurrency(1)),
        Slot::Executor => TaskManager::builder().max_concurrent_tasks(1),
    };
    match db {
        Some(db) => builder.snapshot_db(db),
        None => builder,
    }
}

fn place<T: 'static>(call: taskflow::TaskCall<T>, slot: Slot) -> taskflow::TaskCall<T> {
    match slot {
        Slot::Queue => call.queue(QUEUE),
        Slot::Executor => call,
    }
}

/// Starts a blocker on the only slot and enqueues the 50 behind it (each
/// one on disk, with a store, before the slot frees up). Returns the
/// blocker's id and the tasks' ids.
async fn fill(
    manager: &TaskManager,
    run: &str,
    slot: Slot,
    priorities: &[i16],
    durable: bool,
    same_run_at: bool,
) -> (TaskId, Vec<TaskId>) {
    let blocked = place(blocker::call(run.to_owned()), slot)
        .enqueue_on(manager)
        .unwrap();
    eventually("the blocker to hold the slot", || GATES.reached(run)).await;
    // One `run_at` for all, already past: only arrival tells ties apart.
    let due = SystemTime::now() - Duration::from_secs(1);
    let mut handles: Vec<TaskHandle<()>> = Vec::new();
    for (n, &priority) in (0..TASKS).zip(priorities) {
        let call = place(ranked::call(run.to_owned(), n), slot).priority(priority);
        let call = match same_run_at {
            true => call.run_at(due),
            false => call,
        };
        let handle = call.enqueue_on(manager).unwrap();
        assert_eq!(handle.record().priority, priority);
        assert_eq!(handle.status(), TaskStatus::Pending);
        handles.push(handle);
    }
    if durable {
        for handle in &handles {
            within("a task to reach the store", handle.persisted())
                .await
                .unwrap();
        }
    }
    assert!(starts(run).is_empty(), "nothing started behind the blocker");
    (blocked.id(), handles.iter().map(TaskHandle::id).collect())
}

async fn all_succeed(manager: &TaskManager, ids: &[TaskId]) {
    for &id in ids {
        taskflow_tests::wait_for_status(manager, id, TaskStatus::Success).await;
    }
}

fn assert_order(run: &str, priorities: &[i16]) {
    let started = starts(run);
    let expected = expected_order(priorities);
    let ranks: Vec<i16> = started.iter().map(|&n| priorities[n as usize]).collect();
    assert_eq!(
        started, expected,
        "{run}: tasks started out of order (priorities in start order: {ranks:?})"
    );
}

/// Each test runs twice: tasks enqueued one after another (each due when
/// enqueued), and tasks all given one `run_at` in the past.
async fn start_in_priority_order(run: &str, slot: Slot, store: bool, seed: u64) {
    for same_run_at in [false, true] {
        let run = format!("{run}-{same_run_at}");
        start_in_priority_order_once(&run, slot, store, seed, same_run_at).await;
    }
}

async fn start_in_priority_order_once(
    run: &str,
    slot: Slot,
    store: bool,
    seed: u64,
    same_run_at: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let manager = builder(slot, store.then_some(db.as_path()))
        .build()
        .await
        .unwrap();
    let priorities = priorities(seed);
    let (_, ids) = fill(&manager, run, slot, &priorities, store, same_run_at).await;
    GATES.open(run);
    all_succeed(&manager, &ids).await;
    assert_order(run, &priorities);
    for (&id, &priority) in ids.iter().zip(&priorities) {
        let record = manager.get(id).await.unwrap().unwrap();
        assert_eq!(record.priority, priority);
        let queue = match slot {
            Slot::Queue => QUEUE,
            Slot::Executor => taskflow::DEFAULT_QUEUE,
        };
        assert_eq!(record.queue, queue);
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_one_starts_by_priority_then_arrival() {
    start_in_priority_order("memory-queue", Slot::Queue, false, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_of_one_starts_by_priority_then_arrival() {
    start_in_priority_order("memory-executor", Slot::Executor, false, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_queue_of_one_starts_by_priority_then_arrival() {
    start_in_priority_order("store-queue", Slot::Queue, true, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_executor_of_one_starts_by_priority_then_arrival() {
    start_in_priority_order("store-executor", Slot::Executor, true, 4).await;
}

/// The 50 are left PENDING in the file by a graceful shutdown
/// (`requeue_pending`); a new manager on the file starts them in order.
async fn keep_priority_order_across_a_restart(run: &str, slot: Slot, seed: u64) {
    for same_run_at in [false, true] {
        let run = format!("{run}-{same_run_at}");
        keep_priority_order_across_a_restart_once(&run, slot, seed, same_run_at).await;
    }
}

async fn keep_priority_order_across_a_restart_once(
    run: &str,
    slot: Slot,
    seed: u64,
    same_run_at: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let first = builder(slot, Some(&db))
        .requeue_pending(true)
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let priorities = priorities(seed);
    let (blocked, ids) = fill(&first, run, slot, &priorities, true, same_run_at).await;
    let report = first.shutdown().await;
    assert_eq!(report.pending_interrupted, TASKS as usize);
    assert!(starts(run).is_empty(), "nothing ran before the restart");

    let second = builder(slot, Some(&db)).build().await.unwrap();
    for (&id, &priority) in ids.iter().zip(&priorities) {
        let stored = second.get(id).await.unwrap().unwrap();
        assert_eq!(stored.priority, priority, "the priority is stored");
    }
    all_succeed(&second, &ids).await;
    assert_order(run, &priorities);
    let blocker = second.get(blocked).await.unwrap().unwrap();
    assert_eq!(blocker.status, TaskStatus::Interrupted);
    second.flush().await.unwrap();
    let ran: HashMap<TaskId, u32> = second
        .list(&taskflow::TaskFilter::new().status(TaskStatus::Success))
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.id, record.attempts))
        .collect();
    assert_eq!(ran.len(), TASKS as usize, "each ran under its own id");
    assert!(ran.values().all(|&attempts| attempts == 1), "{ran:?}");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_one_keeps_priority_order_across_a_restart() {
    keep_priority_order_across_a_restart("restart-queue", Slot::Queue, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_of_one_keeps_priority_order_across_a_restart() {
    keep_priority_order_across_a_restart("restart-executor", Slot::Executor, 6).await;
}
