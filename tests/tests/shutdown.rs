//! Shutdown: running tasks get the shutdown timeout, what is still running
//! after it and everything PENDING ends INTERRUPTED, later enqueues fail with
//! `Error::ShutDown`, nothing starts afterwards, and the sync pool's threads
//! exit. Dropping the last manager closes it too.
//!
//! Only `shutdown_with_running_and_pending_tasks` builds a dedicated sync pool
//! in this binary, so the `taskflow-sync-*` threads it counts are its own.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use taskflow::{Error, TaskFilter, TaskManager, TaskStatus, task};
use taskflow_tests::{Latch, PATIENCE, live_threads_named, wait_for_status, wait_until, within};

/// Bodies of the main scenario that ever started.
static STARTS: AtomicU32 = AtomicU32::new(0);
static SHORT_RELEASE: Latch = Latch::new();
static LONG_SYNC_RELEASE: Latch = Latch::new();
static LONG_SYNC_RETURNED: AtomicBool = AtomicBool::new(false);
static LONG_ASYNC_REACHED_END: AtomicBool = AtomicBool::new(false);

#[task]
async fn short_async() -> bool {
    STARTS.fetch_add(1, Ordering::SeqCst);
    SHORT_RELEASE.wait().await
}

#[task]
async fn long_async() {
    STARTS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(120)).await;
    LONG_ASYNC_REACHED_END.store(true, Ordering::SeqCst);
}

#[task]
fn short_sync() -> bool {
    STARTS.fetch_add(1, Ordering::SeqCst);
    SHORT_RELEASE.wait_blocking()
}

#[task]
fn long_sync() -> bool {
    STARTS.fetch_add(1, Ordering::SeqCst);
    let released = LONG_SYNC_RELEASE.wait_blocking();
    LONG_SYNC_RETURNED.store(true, Ordering::SeqCst);
    released
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_running_and_pending_tasks() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(2)
        .max_sync_threads(2)
        .shutdown_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    // A new thread names itself once it runs, so give both a moment.
    let pool = ["taskflow-sync-1", "taskflow-sync-2"];
    let named = wait_until(PATIENCE, || live_threads_named("taskflow-sync-") == pool).await;
    assert!(
        named,
        "pool threads: {:?}",
        live_threads_named("taskflow-sync-")
    );

    let short_async = short_async::call().enqueue_on(&manager).unwrap();
    let long_async = long_async::call().enqueue_on(&manager).unwrap();
    let short_sync = short_sync::call().enqueue_on(&manager).unwrap();
    let long_sync = long_sync::call().enqueue_on(&manager).unwrap();
    let running = [
        short_async.id(),
        long_async.id(),
        short_sync.id(),
        long_sync.id(),
    ];
    for id in running {
        wait_for_status(&manager, id, TaskStatus::Running).await;
    }
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(short_async::call().enqueue_on(&manager).unwrap().id());
        pending.push(short_sync::call().enqueue_on(&manager).unwrap().id());
    }
    assert!(wait_until(PATIENCE, || STARTS.load(Ordering::SeqCst) == 4).await);
    let metrics = manager.metrics();
    assert_eq!((metrics.running, metrics.pending), (4, 6));

    let shutting_down = tokio::spawn({
        let manager = manager.clone();
        async move { manager.shutdown().await }
    });
    assert!(wait_until(PATIENCE, || manager.is_shut_down()).await);
    for &id in &pending {
        wait_for_status(&manager, id, TaskStatus::Interrupted).await;
    }
    assert!(matches!(
        short_async::call().enqueue_on(&manager),
        Err(Error::ShutDown)
    ));
    // The short ones may finish within the grace period.
    SHORT_RELEASE.open();
    let report = within("shutdown", shutting_down).await.unwrap();
    let starts_at_return = STARTS.load(Ordering::SeqCst);

    assert_eq!(report.pending_interrupted, 6, "{report:?}");
    assert_eq!(report.running_interrupted, 2, "{report:?}");
    assert!(!report.drained, "{report:?}");
    assert_eq!(short_async.status(), TaskStatus::Success);
    assert_eq!(short_sync.status(), TaskStatus::Success);
    assert_eq!(long_async.status(), TaskStatus::Interrupted);
    assert_eq!(long_sync.status(), TaskStatus::Interrupted);
    for &id in &pending {
        let record = manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap();
        assert_eq!(
            (record.status, record.attempts),
            (TaskStatus::Interrupted, 0)
        );
    }
    assert!(within("short async", short_async).await.unwrap());
    assert!(within("short sync", short_sync).await.unwrap());
    assert!(
        within("long async", long_async)
            .await
            .unwrap_err()
            .is_interrupted()
    );
    let long_sync_id = long_sync.id();
    assert!(
        within("long sync", long_sync)
            .await
            .unwrap_err()
            .is_interrupted()
    );

    // Let the last busy thread return; nothing new may start on it.
    LONG_SYNC_RELEASE.open();
    assert!(wait_until(PATIENCE, || LONG_SYNC_RETURNED.load(Ordering::SeqCst)).await);
    let threads_gone =
        wait_until(PATIENCE, || live_threads_named("taskflow-sync-").is_empty()).await;
    assert!(
        threads_gone,
        "left running: {:?}",
        live_threads_named("taskflow-sync-")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        STARTS.load(Ordering::SeqCst),
        starts_at_return,
        "a body started after shutdown"
    );
    assert_eq!(starts_at_return, 4);
    assert!(
        !LONG_ASYNC_REACHED_END.load(Ordering::SeqCst),
        "the interrupted async body was aborted"
    );
    assert_eq!(
        manager
            .get(long_sync_id)
            .await
            .expect("the store is readable")
            .unwrap()
            .status,
        TaskStatus::Interrupted,
        "late result ignored"
    );
    let metrics = manager.metrics();
    assert_eq!(
        (metrics.success, metrics.interrupted, metrics.total()),
        (2, 8, 10)
    );
}

static DRAIN_RELEASE: Latch = Latch::new();

#[task]
async fn drains_in_time() -> u32 {
    DRAIN_RELEASE.wait().await;
    5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_running_tasks_that_finish_in_time() {
    let manager = TaskManager::builder()
        .shutdown_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    let handle = drains_in_time::call().enqueue_on(&manager).unwrap();
    wait_for_status(&manager, handle.id(), TaskStatus::Running).await;
    let shutting_down = tokio::spawn({
        let manager = manager.clone();
        async move { manager.shutdown().await }
    });
    assert!(wait_until(PATIENCE, || manager.is_shut_down()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !shutting_down.is_finished(),
        "shutdown waits for the running task"
    );
    DRAIN_RELEASE.open();
    let report = within("shutdown", shutting_down).await.unwrap();
    assert!(report.drained);
    assert_eq!(
        (report.pending_interrupted, report.running_interrupted),
        (0, 0)
    );
    assert_eq!(
        handle.status(),
        TaskStatus::Success,
        "finished before shutdown returned"
    );
    assert_eq!(within("the drained task", handle).await.unwrap(), 5);

    let again = within("a second shutdown", manager.shutdown()).await;
    assert_eq!(
        (again.pending_interrupted, again.running_interrupted),
        (0, 0)
    );
    assert!(again.drained);
}

#[task]
async fn never_enqueued() {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_after_shutdown_is_refused_and_records_nothing() {
    let manager = TaskManager::builder().build().await.unwrap();
    let report = within("shutdown", manager.shutdown()).await;
    assert!(report.drained);
    assert!(manager.is_shut_down());
    let clone = manager.clone();
    assert!(clone.is_shut_down(), "clones share the state");
    let error = never_enqueued::call().enqueue_on(&clone).unwrap_err();
    assert!(matches!(error, Error::ShutDown), "{error:?}");
    assert_eq!(error.to_string(), "the task manager has shut down");
    assert!(
        manager
            .list(&TaskFilter::new())
            .await
            .expect("the store is readable")
            .is_empty()
    );
    assert_eq!(manager.metrics().total(), 0);
}

static DROP_BLOCKER_RELEASE: Latch = Latch::new();
static DROP_VICTIM_RUNS: AtomicU32 = AtomicU32::new(0);

#[task]
async fn drop_blocker() -> bool {
    DROP_BLOCKER_RELEASE.wait().await
}

#[task]
async fn drop_victim() {
    DROP_VICTIM_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_manager_interrupts_pending_and_lets_running_finish() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(1)
        .build()
        .await
        .unwrap();
    let blocker = drop_blocker::call().enqueue_on(&manager).unwrap();
    wait_for_status(&manager, blocker.id(), TaskStatus::Running).await;
    let victim = drop_victim::call().enqueue_on(&manager).unwrap();
    drop(manager);

    let error = within("the pending task", victim).await.unwrap_err();
    assert!(error.is_interrupted(), "{error:?}");
    DROP_BLOCKER_RELEASE.open();
    assert!(within("the running task", blocker).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(DROP_VICTIM_RUNS.load(Ordering::SeqCst), 0);
}
