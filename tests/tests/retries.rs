//! Retries: `retries = N` allows N+1 attempts, the last error is recorded,
//! a success clears it, attempts are spaced by `delay`, `delay × backoff`, …,
//! and a task waiting out its retry delay holds no slot.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use taskflow::{EventKind, RecvError, TaskManager, TaskStatus, task};
use taskflow_tests::{PATIENCE, wait_for_status, wait_until, within};

static ASYNC_DOOMED_RUNS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
async fn async_doomed() -> Result<(), String> {
    ASYNC_DOOMED_RUNS.fetch_add(1, Ordering::SeqCst);
    let attempt = taskflow::context().expect("inside a task").attempt;
    Err(format!("attempt {attempt} failed"))
}

static SYNC_DOOMED_RUNS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
fn sync_doomed() -> Result<(), String> {
    SYNC_DOOMED_RUNS.fetch_add(1, Ordering::SeqCst);
    let attempt = taskflow::context().expect("inside a task").attempt;
    Err(format!("attempt {attempt} failed"))
}

static ASYNC_FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
async fn async_flaky() -> Result<u32, String> {
    ASYNC_FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    match taskflow::context().expect("inside a task").attempt {
        0 => Err("first attempt fails".into()),
        attempt => Ok(attempt),
    }
}

static SYNC_FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
fn sync_flaky() -> Result<u32, String> {
    SYNC_FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    match taskflow::context().expect("inside a task").attempt {
        0 => Err("first attempt fails".into()),
        attempt => Ok(attempt),
    }
}

static ASYNC_SPACED_STARTS: Mutex<Vec<(u32, Instant)>> = Mutex::new(Vec::new());

#[task(retries = 2, delay = "150ms", backoff = 2.0)]
async fn async_spaced() -> Result<(), String> {
    let attempt = taskflow::context().expect("inside a task").attempt;
    ASYNC_SPACED_STARTS
        .lock()
        .expect("no body panics holding the lock")
        .push((attempt, Instant::now()));
    Err("always".into())
}

static SYNC_SPACED_STARTS: Mutex<Vec<(u32, Instant)>> = Mutex::new(Vec::new());

#[task(retries = 2, delay = "100ms", backoff = 3.0)]
fn sync_spaced() -> Result<(), String> {
    let attempt = taskflow::context().expect("inside a task").attempt;
    SYNC_SPACED_STARTS
        .lock()
        .expect("no body panics holding the lock")
        .push((attempt, Instant::now()));
    Err("always".into())
}

/// Fails its first attempt, then waits a minute before its retry.
#[task(retries = 1, delay = "60s")]
async fn async_slow_retry() -> Result<(), String> {
    Err("try again later".into())
}

#[task(retries = 1, delay = "60s")]
fn sync_slow_retry() -> Result<(), String> {
    Err("try again later".into())
}

#[task]
async fn async_quick() -> u32 {
    7
}

#[task]
fn sync_quick() -> u32 {
    7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_async_task_makes_three_attempts() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(2)
        .build()
        .await
        .unwrap();
    let mut events = manager.subscribe();
    let handle = async_doomed::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    let error = within("a doomed task", handle).await.unwrap_err();
    assert!(error.is_error(), "{error:?}");
    assert_eq!(error.message(), "attempt 2 failed");

    let record = manager
        .get(id)
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.last_error.unwrap().message(), "attempt 2 failed");
    assert_eq!(ASYNC_DOOMED_RUNS.load(Ordering::SeqCst), 3);

    let mut kinds = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => kinds.push((event.kind, event.attempt)),
            Err(RecvError::Empty) => break,
            Err(other) => panic!("{other}"),
        }
    }
    let retried: Vec<_> = kinds
        .iter()
        .filter_map(|(kind, attempt)| match kind {
            EventKind::Retrying { error, .. } => Some((error.message().to_owned(), *attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(
        retried,
        [
            ("attempt 0 failed".to_owned(), 0),
            ("attempt 1 failed".to_owned(), 1)
        ]
    );
    assert!(
        matches!(kinds.last(), Some((EventKind::Failed(e), 2)) if e.message() == "attempt 2 failed")
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_sync_task_makes_three_attempts() {
    let manager = TaskManager::builder()
        .max_sync_threads(2)
        .build()
        .await
        .unwrap();
    let handle = sync_doomed::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    let error = within("a doomed task", handle).await.unwrap_err();
    assert_eq!(error.message(), "attempt 2 failed");
    let record = manager
        .get(id)
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.last_error.unwrap().message(), "attempt 2 failed");
    assert_eq!(SYNC_DOOMED_RUNS.load(Ordering::SeqCst), 3);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_once_then_succeeding_takes_two_attempts() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let async_handle = async_flaky::call().enqueue_on(&manager).unwrap();
    let sync_handle = sync_flaky::call().enqueue_on(&manager).unwrap();
    let ids = [async_handle.id(), sync_handle.id()];
    assert_eq!(
        within("an async flaky task", async_handle).await.unwrap(),
        1
    );
    assert_eq!(within("a sync flaky task", sync_handle).await.unwrap(), 1);
    for id in ids {
        let record = manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap();
        assert_eq!(record.status, TaskStatus::Success);
        assert_eq!(record.attempts, 2);
        assert_eq!(record.last_error, None, "a success clears the error");
    }
    assert_eq!(ASYNC_FLAKY_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(SYNC_FLAKY_RUNS.load(Ordering::SeqCst), 2);
    manager.shutdown().await;
}

/// Gaps between consecutive attempt starts, checking the attempts are 0, 1, 2.
fn gaps(starts: &Mutex<Vec<(u32, Instant)>>) -> Vec<Duration> {
    let starts = starts.lock().expect("no body panics holding the lock");
    let attempts: Vec<u32> = starts.iter().map(|(attempt, _)| *attempt).collect();
    assert_eq!(attempts, [0, 1, 2]);
    starts
        .windows(2)
        .map(|pair| pair[1].1 - pair[0].1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_spaced_by_delay_then_delay_times_backoff() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let mut events = manager.subscribe();
    let async_handle = async_spaced::call().enqueue_on(&manager).unwrap();
    let sync_handle = sync_spaced::call().enqueue_on(&manager).unwrap();
    let async_id = async_handle.id();
    assert!(within("an async spaced task", async_handle).await.is_err());
    assert!(within("a sync spaced task", sync_handle).await.is_err());

    let async_gaps = gaps(&ASYNC_SPACED_STARTS);
    assert!(
        async_gaps[0] >= Duration::from_millis(150),
        "{async_gaps:?}"
    );
    assert!(
        async_gaps[1] >= Duration::from_millis(300),
        "{async_gaps:?}"
    );
    let sync_gaps = gaps(&SYNC_SPACED_STARTS);
    assert!(sync_gaps[0] >= Duration::from_millis(100), "{sync_gaps:?}");
    assert!(sync_gaps[1] >= Duration::from_millis(300), "{sync_gaps:?}");

    // The announced waits are exactly the policy's.
    let mut delays = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let (true, EventKind::Retrying { delay, .. }) = (event.id == async_id, &event.kind) {
            delays.push(*delay);
        }
    }
    assert_eq!(
        delays,
        [Duration::from_millis(150), Duration::from_millis(300)]
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_task_in_retry_delay_does_not_hold_the_only_permit() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(1)
        .build()
        .await
        .unwrap();
    let waiting = async_slow_retry::call().enqueue_on(&manager).unwrap();
    let in_delay = wait_until(PATIENCE, || {
        let record = waiting.record();
        record.status == TaskStatus::Pending && record.attempts == 1
    })
    .await;
    assert!(
        in_delay,
        "the first attempt failed and the retry is scheduled"
    );

    let other = async_quick::call().enqueue_on(&manager).unwrap();
    let other_id = other.id();
    assert_eq!(
        within("a task behind a retry delay", other).await.unwrap(),
        7
    );
    wait_for_status(&manager, other_id, TaskStatus::Success).await;
    let record = waiting.record();
    assert_eq!(
        (record.status, record.attempts),
        (TaskStatus::Pending, 1),
        "still waiting to retry"
    );
    let report = manager.shutdown().await;
    assert_eq!(report.pending_interrupted, 1);
    assert_eq!(waiting.status(), TaskStatus::Interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_task_in_retry_delay_does_not_hold_the_only_thread() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let waiting = sync_slow_retry::call().enqueue_on(&manager).unwrap();
    let in_delay = wait_until(PATIENCE, || {
        let record = waiting.record();
        record.status == TaskStatus::Pending && record.attempts == 1
    })
    .await;
    assert!(
        in_delay,
        "the first attempt failed and the retry is scheduled"
    );

    let other = sync_quick::call().enqueue_on(&manager).unwrap();
    assert_eq!(
        within("a task behind a retry delay", other).await.unwrap(),
        7
    );
    let record = waiting.record();
    assert_eq!(
        (record.status, record.attempts),
        (TaskStatus::Pending, 1),
        "still waiting to retry"
    );
    manager.shutdown().await;
    assert_eq!(waiting.status(), TaskStatus::Interrupted);
}
