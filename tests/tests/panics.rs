//! Panics: a panicking task ends FAILED with the panic message and
//! `is_panic()`, and neither the manager, the async permits nor a sync pool
//! thread is lost to it.

use std::sync::atomic::{AtomicU32, Ordering};

use taskflow::{TaskManager, TaskStatus, task};
use taskflow_tests::{thread_name, within};

#[task]
async fn async_boom(code: u32) -> u32 {
    tokio::task::yield_now().await;
    if code > 0 {
        panic!("async boom {code}");
    }
    code
}

#[task]
fn sync_boom(code: u32) -> String {
    if code > 0 {
        panic!("sync boom {code}");
    }
    thread_name()
}

static RECOVERING_RUNS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 1)]
fn panics_once() -> u32 {
    RECOVERING_RUNS.fetch_add(1, Ordering::SeqCst);
    let attempt = taskflow::context().expect("inside a task").attempt;
    assert!(attempt > 0, "first attempt panics");
    attempt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_async_task_fails_and_the_permit_returns() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(1)
        .build()
        .await
        .unwrap();
    for code in 1..=3 {
        let handle = async_boom::call(code).enqueue_on(&manager).unwrap();
        let id = handle.id();
        let error = within("a panicking async task", handle).await.unwrap_err();
        assert!(error.is_panic(), "{error:?}");
        assert!(
            error.message().starts_with(&format!("async boom {code}")),
            "{error:?}"
        );
        let record = manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap();
        assert_eq!(record.status, TaskStatus::Failed);
        assert_eq!(record.attempts, 1);
        let recorded = record.last_error.unwrap();
        assert!(recorded.is_panic());
        assert_eq!(recorded.message(), error.message());
    }
    // The single permit came back each time.
    let handles: Vec<_> = (0..5)
        .map(|_| async_boom::call(0).enqueue_on(&manager).unwrap())
        .collect();
    for handle in handles {
        assert_eq!(within("a task after panics", handle).await.unwrap(), 0);
    }
    let metrics = manager.metrics();
    assert_eq!((metrics.failed, metrics.success), (3, 5));
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_sync_task_fails_and_the_one_thread_serves_on() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let panics: Vec<_> = (1..=3)
        .map(|code| sync_boom::call(code).enqueue_on(&manager).unwrap())
        .collect();
    let later: Vec<_> = (0..5)
        .map(|_| sync_boom::call(0).enqueue_on(&manager).unwrap())
        .collect();
    for (code, handle) in (1..=3).zip(panics) {
        let id = handle.id();
        let error = within("a panicking sync task", handle).await.unwrap_err();
        assert!(error.is_panic(), "{error:?}");
        assert!(
            error.message().starts_with(&format!("sync boom {code}")),
            "{error:?}"
        );
        let record = manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap();
        assert_eq!(record.status, TaskStatus::Failed);
        assert!(record.last_error.unwrap().is_panic());
    }
    for handle in later {
        let thread = within("a task after panics", handle).await.unwrap();
        assert_eq!(thread, "taskflow-sync-1", "the pool's only thread survived");
    }
    let metrics = manager.metrics();
    assert_eq!((metrics.failed, metrics.success), (3, 5));
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_task_on_tokios_blocking_pool_fails_cleanly() {
    let manager = TaskManager::builder().build().await.unwrap();
    let error = within(
        "a panicking sync task",
        sync_boom::call(9).enqueue_on(&manager).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        error.is_panic() && error.message().starts_with("sync boom 9"),
        "{error:?}"
    );
    let fine = sync_boom::call(0).enqueue_on(&manager).unwrap();
    assert!(within("a task after a panic", fine).await.is_ok());
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_retried_like_any_failure() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let handle = panics_once::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    assert_eq!(within("a task that panics once", handle).await.unwrap(), 1);
    let record = manager
        .get(id)
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!((record.status, record.attempts), (TaskStatus::Success, 2));
    assert_eq!(record.last_error, None);
    assert_eq!(RECOVERING_RUNS.load(Ordering::SeqCst), 2);
    manager.shutdown().await;
}
