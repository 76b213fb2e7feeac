//! The async executor's admission gate: `max_concurrent_tasks` caps the bodies
//! executing and the records RUNNING at once, waiting tasks stay PENDING, no
//! cap admits everything, and `timeout` aborts an attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use taskflow::{
    EventKind, EventStream, RecvError, TaskEvent, TaskFilter, TaskManager, TaskStatus, task,
};
use taskflow_tests::{
    Gauge, Latch, PATIENCE, live_threads_named, wait_for_status, wait_until, within,
};

static NAPPING: Gauge = Gauge::new();

#[task]
async fn nap(ms: u64) {
    let _executing = NAPPING.enter();
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

static HURRYING: Gauge = Gauge::new();

#[task]
async fn hurry() {
    let _executing = HURRYING.enter();
    tokio::task::yield_now().await;
}

static HELD: Gauge = Gauge::new();
static HELD_RELEASE: Latch = Latch::new();

#[task]
async fn held() -> bool {
    let _executing = HELD.enter();
    HELD_RELEASE.wait().await
}

static UNCAPPED: Gauge = Gauge::new();
static UNCAPPED_RELEASE: Latch = Latch::new();

#[task]
async fn uncapped() -> bool {
    let _executing = UNCAPPED.enter();
    UNCAPPED_RELEASE.wait().await
}

#[task]
async fn where_am_i() -> (String, i64) {
    (taskflow_tests::thread_name(), taskflow_tests::thread_nice())
}

static SLOW_REACHED_END: AtomicBool = AtomicBool::new(false);

#[task(retries = 1, timeout = "100ms")]
async fn too_slow() {
    tokio::time::sleep(Duration::from_secs(60)).await;
    SLOW_REACHED_END.store(true, Ordering::SeqCst);
}

/// Every event already published, in order.
fn drain(events: &mut EventStream) -> Vec<TaskEvent> {
    let mut out = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => out.push(event),
            Err(RecvError::Empty) => return out,
            Err(other) => panic!("event stream failed: {other}"),
        }
    }
}

/// The most tasks RUNNING at once according to the event stream, where a
/// Started event enters RUNNING and a Succeeded event leaves it.
fn peak_running(events: &[TaskEvent]) -> usize {
    let (mut running, mut peak) = (0usize, 0usize);
    for event in events {
        match &event.kind {
            EventKind::Started => {
                running += 1;
                peak = peak.max(running);
            }
            EventKind::Succeeded => {
                running = running
                    .checked_sub(1)
                    .expect("a task succeeded without starting");
            }
            EventKind::Enqueued => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(running, 0, "tasks left RUNNING after all succeeded");
    peak
}

/// Samples `metrics().running` (one atomic count, so each sample is one
/// moment) until `done`; the highest value seen.
async fn sample_running(manager: TaskManager, done: Arc<AtomicBool>) -> u64 {
    let mut peak = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        peak = peak.max(manager.metrics().running);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_three_of_thirty_run_at_once() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(3)
        .build()
        .await
        .unwrap();
    let mut events = manager.subscribe();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_running(manager.clone(), done.clone()));

    let handles: Vec<_> = (0..30)
        .map(|_| nap::call(50).enqueue_on(&manager).unwrap())
        .collect();
    let ids: Vec<_> = handles.iter().map(|h| h.id()).collect();
    for handle in handles {
        within("a napping task", handle).await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let metric_peak = within("the sampler", sampler).await.unwrap();

    assert_eq!(NAPPING.peak(), 3, "bodies executing at once");
    assert_eq!(NAPPING.entered(), 30);
    assert!(metric_peak <= 3, "metrics().running reached {metric_peak}");
    let events = drain(&mut events);
    assert_eq!(events.len(), 90, "Enqueued, Started, Succeeded per task");
    let peak = peak_running(&events);
    assert!(
        peak <= 3,
        "the event stream shows {peak} tasks RUNNING at once"
    );
    for id in ids {
        let record = manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap();
        assert_eq!(record.status, TaskStatus::Success);
        assert_eq!(record.attempts, 1);
    }
    assert_eq!(manager.metrics().success, 30);
    manager.shutdown().await;
}

/// Many tiny tasks hand the permits over hundreds of times: a permit released
/// before the task's record leaves RUNNING would show as a fourth RUNNING task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_records_never_exceed_the_cap_across_many_handovers() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(3)
        .build()
        .await
        .unwrap();
    let mut events = manager.subscribe();
    let handles: Vec<_> = (0..1000)
        .map(|_| hurry::call().enqueue_on(&manager).unwrap())
        .collect();
    for handle in handles {
        within("a tiny task", handle).await.unwrap();
    }
    assert!(
        HURRYING.peak() <= 3,
        "{} bodies executed at once",
        HURRYING.peak()
    );
    let events = drain(&mut events);
    assert_eq!(events.len(), 3000);
    let peak = peak_running(&events);
    assert!(
        peak <= 3,
        "the event stream shows {peak} tasks RUNNING at once"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_beyond_the_cap_wait_pending() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(3)
        .build()
        .await
        .unwrap();
    let handles: Vec<_> = (0..10)
        .map(|_| held::call().enqueue_on(&manager).unwrap())
        .collect();

    assert!(
        wait_until(PATIENCE, || HELD.current() == 3).await,
        "three bodies start"
    );
    // Give a fourth body every chance to start if the cap leaked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(HELD.current(), 3);
    let metrics = manager.metrics();
    assert_eq!((metrics.running, metrics.pending), (3, 7));
    let pending = manager
        .list(&TaskFilter::new().status(TaskStatus::Pending))
        .await
        .expect("the store is readable");
    assert_eq!(pending.len(), 7);
    for record in &pending {
        assert_eq!(record.attempts, 0, "a waiting task has not started");
        assert_eq!(record.started_at, None);
    }
    let running: Vec<_> = handles
        .iter()
        .filter(|h| h.status() == TaskStatus::Running)
        .collect();
    assert_eq!(running.len(), 3);

    HELD_RELEASE.open();
    for handle in handles {
        assert!(
            within("a held task", handle).await.unwrap(),
            "released, not timed out"
        );
    }
    assert_eq!(HELD.peak(), 3);
    assert_eq!(manager.metrics().success, 10);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cap_admits_every_task() {
    let manager = TaskManager::builder().build().await.unwrap();
    let handles: Vec<_> = (0..40)
        .map(|_| uncapped::call().enqueue_on(&manager).unwrap())
        .collect();
    let all_in = wait_until(PATIENCE, || UNCAPPED.current() == 40).await;
    assert!(all_in, "only {} of 40 bodies started", UNCAPPED.current());
    assert_eq!(manager.metrics().running, 40);
    UNCAPPED_RELEASE.open();
    for handle in handles {
        assert!(within("an uncapped task", handle).await.unwrap());
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_aborts_each_attempt() {
    let manager = TaskManager::builder().build().await.unwrap();
    let mut events = manager.subscribe();
    let handle = too_slow::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    let error = within("a timed-out task", handle).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");

    let record = wait_for_status(&manager, id, TaskStatus::Failed).await;
    assert_eq!(
        record.attempts, 2,
        "the timeout is retried like any failure"
    );
    assert!(record.last_error.unwrap().is_timeout());
    let kinds: Vec<_> = drain(&mut events).into_iter().map(|e| e.kind).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                EventKind::Enqueued,
                EventKind::Started,
                EventKind::Retrying { error: first, .. },
                EventKind::Started,
                EventKind::Failed(last),
            ] if first.is_timeout() && last.is_timeout()
        ),
        "{kinds:?}"
    );
    assert!(
        !SLOW_REACHED_END.load(Ordering::SeqCst),
        "a timed-out body ran on"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_worker_threads_run_tasks_on_threads_of_their_own() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(4)
        .async_worker_threads(2)
        .background_nice(6)
        .build()
        .await
        .unwrap();
    let mut names = Vec::new();
    for _ in 0..20 {
        names.push(where_am_i::call().enqueue_on(&manager).unwrap());
    }
    for handle in names {
        let (name, nice) = within("a task", handle).await.unwrap();
        assert!(name.starts_with("taskflow-async-"), "ran on {name}");
        assert_eq!(
            nice, 6,
            "the dedicated threads run at the background nice value"
        );
    }
    // A thread names itself once the OS first runs it, which on a loaded
    // machine can come after the other thread ran every task.
    assert!(
        wait_until(PATIENCE, || live_threads_named("taskflow-async-").len()
            == 2)
        .await,
        "threads: {:?}",
        live_threads_named("taskflow-async-")
    );
    manager.shutdown().await;
    assert!(
        wait_until(PATIENCE, || live_threads_named("taskflow-async-")
            .is_empty())
        .await,
        "the dedicated threads outlived shutdown"
    );
}
