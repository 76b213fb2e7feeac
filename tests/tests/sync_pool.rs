//! The sync executor: `max_sync_threads(n)` runs plain-function tasks on at
//! most `n` dedicated `taskflow-sync-*` threads, so a burst of them never
//! starves tokio's blocking pool; unset, tasks go to tokio's blocking pool.

use std::collections::BTreeSet;
use std::time::Duration;

use taskflow::{TaskManager, TaskStatus, task};
use taskflow_tests::{Gauge, Latch, PATIENCE, thread_name, wait_until, within};

static BURST: Gauge = Gauge::new();
static BURST_RELEASE: Latch = Latch::new();

/// Blocks until the test lets the burst go, then sleeps a little; returns
/// the name of the thread it ran on.
#[task]
fn burst_item() -> String {
    let _executing = BURST.enter();
    assert!(
        BURST_RELEASE.wait_blocking(),
        "the burst was never released"
    );
    std::thread::sleep(Duration::from_millis(5));
    thread_name()
}

#[task]
fn where_am_i() -> (String, bool) {
    (thread_name(), tokio::runtime::Handle::try_current().is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_stays_on_four_dedicated_threads_and_spares_spawn_blocking() {
    let manager = TaskManager::builder()
        .max_sync_threads(4)
        .build()
        .await
        .unwrap();
    let handles: Vec<_> = (0..200)
        .map(|_| burst_item::call().enqueue_on(&manager).unwrap())
        .collect();
    assert!(
        wait_until(PATIENCE, || BURST.current() == 4).await,
        "four burst bodies start"
    );

    // A request handler's blocking work, made while the pool is saturated.
    let answer = within(
        "spawn_blocking during the burst",
        tokio::task::spawn_blocking(|| 6 * 7),
    )
    .await;
    assert_eq!(answer.unwrap(), 42);
    let metrics = manager.metrics();
    assert_eq!(
        (metrics.running, metrics.pending),
        (4, 196),
        "spawn_blocking finished while the burst waited"
    );

    BURST_RELEASE.open();
    let mut threads = BTreeSet::new();
    for handle in handles {
        threads.insert(within("a burst task", handle).await.unwrap());
    }
    assert_eq!(BURST.peak(), 4, "bodies executing at once");
    assert_eq!(BURST.entered(), 200);
    assert!(threads.len() <= 4, "ran on {threads:?}");
    let allowed: BTreeSet<String> = (1..=4).map(|n| format!("taskflow-sync-{n}")).collect();
    assert!(threads.is_subset(&allowed), "ran on {threads:?}");
    assert_eq!(manager.metrics().success, 200);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_threads_can_reach_the_runtime() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let handle = where_am_i::call().enqueue_on(&manager).unwrap();
    let (thread, in_runtime) = within("a sync task", handle).await.unwrap();
    assert_eq!(thread, "taskflow-sync-1");
    assert!(in_runtime, "Handle::current() works inside a sync task");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_uses_tokios_blocking_pool() {
    let manager = TaskManager::builder().build().await.unwrap();
    let handle = where_am_i::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    let (thread, in_runtime) = within("a sync task", handle).await.unwrap();
    assert!(!thread.starts_with("taskflow-sync-"), "ran on {thread}");
    assert_ne!(thread, thread_name(), "not on the test's own thread");
    assert!(in_runtime);
    assert_eq!(
        manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap()
            .status,
        TaskStatus::Success
    );
    manager.shutdown().await;
}

#[task]
fn my_nice() -> (String, i64) {
    (thread_name(), taskflow_tests::thread_nice())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_nice_lowers_the_pool_threads() {
    let manager = TaskManager::builder()
        .max_sync_threads(2)
        .background_nice(5)
        .build()
        .await
        .expect("the manager builds");
    let (name, nice) = my_nice::call()
        .enqueue_on(&manager)
        .expect("enqueued")
        .await
        .expect("ran");
    assert!(name.starts_with("taskflow-sync-"), "ran on {name}");
    assert_eq!(nice, 5);
    // The application's threads keep their priority.
    assert_eq!(taskflow_tests::thread_nice(), 0);
    manager.shutdown().await;
}

static PARENT_MANAGER: std::sync::OnceLock<TaskManager> = std::sync::OnceLock::new();
static CHILD_RAN: Latch = Latch::new();

#[task]
fn child() -> String {
    CHILD_RAN.open();
    thread_name()
}

/// Enqueues `child` and blocks until it has run: only another thread can
/// run it meanwhile.
#[task]
fn parent() -> String {
    let manager = PARENT_MANAGER
        .get()
        .expect("the test installed its manager");
    drop(
        child::call()
            .enqueue_on(manager)
            .expect("the child is enqueued"),
    );
    assert!(CHILD_RAN.wait_blocking(), "the child never ran");
    thread_name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_a_body_enqueues_runs_on_an_idle_thread_while_the_body_waits() {
    let manager = TaskManager::builder()
        .max_sync_threads(2)
        .build()
        .await
        .unwrap();
    assert!(PARENT_MANAGER.set(manager.clone()).is_ok());
    // A few tasks first, so that the threads have handed tasks along.
    for _ in 0..20 {
        within(
            "a warm-up task",
            where_am_i::call().enqueue_on(&manager).unwrap(),
        )
        .await
        .unwrap();
    }
    let parent_thread = within("the parent", parent::call().enqueue_on(&manager).unwrap())
        .await
        .unwrap();
    assert!(
        parent_thread.starts_with("taskflow-sync-"),
        "{parent_thread}"
    );
    assert_eq!(manager.metrics().success, 22);
    manager.shutdown().await;
}
