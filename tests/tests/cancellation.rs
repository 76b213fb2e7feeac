//! Cancellation: a PENDING task never runs, a RUNNING async task is aborted
//! at its await, a RUNNING sync task is marked CANCELLED while its thread
//! runs on and its late result is ignored, and cancelling an unknown or
//! finished task is the right error.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use taskflow::{Error, EventKind, TaskId, TaskManager, TaskStatus, task};
use taskflow_tests::{Latch, PATIENCE, wait_for_status, wait_until, within};

// --- a PENDING task -----------------------------------------------------------

static ASYNC_BLOCKER_RELEASE: Latch = Latch::new();

#[task]
async fn async_blocker() -> bool {
    ASYNC_BLOCKER_RELEASE.wait().await
}

static ASYNC_VICTIM_RUNS: AtomicU32 = AtomicU32::new(0);

#[task]
async fn async_victim() {
    ASYNC_VICTIM_RUNS.fetch_add(1, Ordering::SeqCst);
}

static SYNC_BLOCKER_RELEASE: Latch = Latch::new();

#[task]
fn sync_blocker() -> bool {
    SYNC_BLOCKER_RELEASE.wait_blocking()
}

static SYNC_VICTIM_RUNS: AtomicU32 = AtomicU32::new(0);

#[task]
fn sync_victim() {
    SYNC_VICTIM_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[task]
async fn async_noop() {}

#[task]
async fn async_sleeper() {
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[task]
fn sync_noop() {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_cancelled_never_run() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(1)
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let async_blocker = async_blocker::call().enqueue_on(&manager).unwrap();
    let sync_blocker = sync_blocker::call().enqueue_on(&manager).unwrap();
    wait_for_status(&manager, async_blocker.id(), TaskStatus::Running).await;
    wait_for_status(&manager, sync_blocker.id(), TaskStatus::Running).await;

    let mut events = manager.subscribe();
    let async_victim = async_victim::call().enqueue_on(&manager).unwrap();
    let sync_victim = sync_victim::call().enqueue_on(&manager).unwrap();
    assert_eq!(async_victim.status(), TaskStatus::Pending);
    assert_eq!(sync_victim.status(), TaskStatus::Pending);
    manager.cancel(async_victim.id()).await.unwrap();
    manager.cancel(sync_victim.id()).await.unwrap();
    let victims = [async_victim.id(), sync_victim.id()];

    // Free the slots; a task enqueued after each victim must run past it.
    ASYNC_BLOCKER_RELEASE.open();
    SYNC_BLOCKER_RELEASE.open();
    let after = (
        async_noop::call().enqueue_on(&manager).unwrap(),
        sync_noop::call().enqueue_on(&manager).unwrap(),
    );
    assert!(within("the async blocker", async_blocker).await.unwrap());
    assert!(within("the sync blocker", sync_blocker).await.unwrap());
    within("the async task after the victim", after.0)
        .await
        .unwrap();
    within("the sync task after the victim", after.1)
        .await
        .unwrap();

    assert!(
        within("the async victim", async_victim)
            .await
            .unwrap_err()
            .is_cancelled()
    );
    assert!(
        within("the sync victim", sync_victim)
            .await
            .unwrap_err()
            .is_cancelled()
    );
    assert_eq!(ASYNC_VICTIM_RUNS.load(Ordering::SeqCst), 0);
    assert_eq!(SYNC_VICTIM_RUNS.load(Ordering::SeqCst), 0);
    for id in victims {
        let record = manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap();
        assert_eq!(record.status, TaskStatus::Cancelled);
        assert_eq!((record.attempts, record.started_at), (0, None));
        assert!(record.finished_at.is_some());
    }
    let mut victim_events = Vec::new();
    while let Ok(event) = events.try_recv() {
        if victims.contains(&event.id) {
            victim_events.push(event.kind);
        }
    }
    assert_eq!(
        victim_events,
        [
            EventKind::Enqueued,
            EventKind::Enqueued,
            EventKind::Cancelled,
            EventKind::Cancelled
        ]
    );
    assert_eq!(manager.metrics().cancelled, 2);
    manager.shutdown().await;
}

// --- a RUNNING async task -----------------------------------------------------

static ABORTED_STARTED: AtomicBool = AtomicBool::new(false);
static ABORTED_RELEASE: Latch = Latch::new();
static ABORTED_REACHED_END: AtomicBool = AtomicBool::new(false);
static ABORTED_DROPPED: AtomicBool = AtomicBool::new(false);

/// Sets a flag when the body's future is dropped, finished or not.
struct SetOnDrop(&'static AtomicBool);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[task]
async fn abortable() -> u32 {
    let _dropped = SetOnDrop(&ABORTED_DROPPED);
    ABORTED_STARTED.store(true, Ordering::SeqCst);
    ABORTED_RELEASE.wait().await;
    ABORTED_REACHED_END.store(true, Ordering::SeqCst);
    1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_async_task_is_aborted_at_its_await() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(1)
        .build()
        .await
        .unwrap();
    let handle = abortable::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    wait_for_status(&manager, id, TaskStatus::Running).await;
    assert!(wait_until(PATIENCE, || ABORTED_STARTED.load(Ordering::SeqCst)).await);

    manager.cancel(id).await.unwrap();
    assert_eq!(handle.status(), TaskStatus::Cancelled);
    let error = within("the cancelled task's handle", handle)
        .await
        .unwrap_err();
    assert!(error.is_cancelled(), "{error:?}");
    assert!(
        wait_until(PATIENCE, || ABORTED_DROPPED.load(Ordering::SeqCst)).await,
        "the body's future was dropped"
    );
    // Were the body still alive, opening its latch would let it finish.
    ABORTED_RELEASE.open();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !ABORTED_REACHED_END.load(Ordering::SeqCst),
        "the body ran past its await"
    );

    let record = manager
        .get(id)
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!((record.status, record.attempts), (TaskStatus::Cancelled, 1));
    // The only permit came back with the abort.
    within(
        "a task after the abort",
        async_noop::call().enqueue_on(&manager).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        manager
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap()
            .status,
        TaskStatus::Cancelled
    );
    manager.shutdown().await;
}

// --- a RUNNING sync task ------------------------------------------------------

static STUCK_STARTED: AtomicBool = AtomicBool::new(false);
static STUCK_RELEASE: Latch = Latch::new();
static STUCK_RETURNED: AtomicBool = AtomicBool::new(false);

#[task]
fn stuck() -> u32 {
    STUCK_STARTED.store(true, Ordering::SeqCst);
    let released = STUCK_RELEASE.wait_blocking();
    STUCK_RETURNED.store(true, Ordering::SeqCst);
    u32::from(released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_sync_task_is_cancelled_and_its_late_result_ignored() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let handle = stuck::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    wait_for_status(&manager, id, TaskStatus::Running).await;
    assert!(wait_until(PATIENCE, || STUCK_STARTED.load(Ordering::SeqCst)).await);

    manager.cancel(id).await.unwrap();
    let error = within("the cancelled task's handle", handle)
        .await
        .unwrap_err();
    assert!(error.is_cancelled(), "{error:?}");
    let cancelled = manager
        .get(id)
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);

    // The thread is still inside the function: the next task must wait.
    let next = sync_noop::call().enqueue_on(&manager).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        next.status(),
        TaskStatus::Pending,
        "the pool's slot stays taken"
    );
    assert!(!STUCK_RETURNED.load(Ordering::SeqCst));

    STUCK_RELEASE.open();
    within("the task after the cancelled one", next)
        .await
        .unwrap();
    assert!(STUCK_RETURNED.load(Ordering::SeqCst));
    let after = manager
        .get(id)
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!(after, cancelled, "the late result changed nothing");
    let metrics = manager.metrics();
    assert_eq!(
        (metrics.cancelled, metrics.success, metrics.running),
        (1, 1, 0)
    );
    manager.shutdown().await;
}

// --- errors -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_unknown_or_finished_tasks_is_an_error() {
    let manager = TaskManager::builder().build().await.unwrap();
    let unknown = TaskId::new();
    assert!(matches!(manager.cancel(unknown).await, Err(Error::NotFound(id)) if id == unknown));

    let done = async_noop::call().enqueue_on(&manager).unwrap();
    let done_id = done.id();
    within("a quick task", done).await.unwrap();
    assert!(matches!(
        manager.cancel(done_id).await,
        Err(Error::AlreadyFinished { id, status: TaskStatus::Success }) if id == done_id
    ));
    assert_eq!(
        manager
            .get(done_id)
            .await
            .expect("the store is readable")
            .unwrap()
            .status,
        TaskStatus::Success
    );

    let twice = async_sleeper::call().enqueue_on(&manager).unwrap();
    manager.cancel(twice.id()).await.unwrap();
    assert!(matches!(
        manager.cancel(twice.id()).await,
        Err(Error::AlreadyFinished {
            status: TaskStatus::Cancelled,
            ..
        })
    ));
    manager.shutdown().await;
}
