//! The lifecycle as a user observes it: default names, `get` and `list`
//! (status and name filters, newest first, limit), `metrics()` counts and
//! mean duration, the events of one task in order, `taskflow::context()`
//! inside async and sync tasks (and `None` outside), and `TaskHandle`'s id
//! and status.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskflow::{EventKind, Executor, TaskFilter, TaskId, TaskManager, TaskStatus, task};
use taskflow_tests::{Latch, wait_for_status, within};

#[task]
async fn work(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[task]
async fn broken() -> Result<(), String> {
    Err("broken on purpose".into())
}

#[task]
fn sync_work(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// What a task body saw of its context.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Seen {
    id: TaskId,
    name: String,
    attempt: u32,
    tenant: Option<String>,
}

fn seen() -> Option<Seen> {
    taskflow::context().map(|ctx| Seen {
        id: ctx.id,
        name: ctx.name.to_owned(),
        attempt: ctx.attempt,
        tenant: ctx.tags.get("tenant").map(str::to_owned),
    })
}

#[task]
async fn whoami_async() -> Option<Seen> {
    tokio::task::yield_now().await;
    seen()
}

#[task]
fn whoami_sync() -> Option<Seen> {
    seen()
}

static GATE: Latch = Latch::new();

#[task]
async fn gated() -> bool {
    GATE.wait().await
}

#[test]
fn default_names_are_module_path_and_function() {
    assert_eq!(work::NAME, "lifecycle::work");
    assert_eq!(whoami_sync::NAME, "lifecycle::whoami_sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_filter_newest_first_with_limit() {
    let manager = TaskManager::builder().build().await.unwrap();
    let (mut work_ids, mut broken_ids, mut all_ids) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..6 {
        let id = if n % 2 == 0 {
            let handle = work::call(1)
                .tag("n", n.to_string())
                .enqueue_on(&manager)
                .unwrap();
            let id = handle.id();
            within("a work task", handle).await.unwrap();
            work_ids.push(id);
            id
        } else {
            let handle = broken::call().enqueue_on(&manager).unwrap();
            let id = handle.id();
            within("a broken task", handle).await.unwrap_err();
            broken_ids.push(id);
            id
        };
        all_ids.push(id);
        // Distinct creation times, so "newest first" has one answer.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let newest_first = |ids: &[TaskId]| ids.iter().rev().copied().collect::<Vec<_>>();
    let ids_of = async |filter: TaskFilter| {
        manager
            .list(&filter)
            .await
            .expect("the store is readable")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };

    assert_eq!(ids_of(TaskFilter::new()).await, newest_first(&all_ids));
    assert_eq!(
        ids_of(TaskFilter::new().status(TaskStatus::Failed)).await,
        newest_first(&broken_ids)
    );
    assert_eq!(
        ids_of(TaskFilter::new().status(TaskStatus::Success)).await,
        newest_first(&work_ids)
    );
    assert_eq!(
        ids_of(TaskFilter::new().name(work::NAME)).await,
        newest_first(&work_ids)
    );
    assert_eq!(
        ids_of(
            TaskFilter::new()
                .name(broken::NAME)
                .status(TaskStatus::Success)
        )
        .await,
        []
    );
    assert_eq!(ids_of(TaskFilter::new().name("no::such::task")).await, []);
    assert_eq!(
        ids_of(TaskFilter::new().limit(2)).await,
        newest_first(&all_ids)[..2]
    );
    assert_eq!(
        ids_of(TaskFilter::new().name(work::NAME).limit(1)).await,
        [work_ids[2]]
    );

    let record = manager
        .get(work_ids[1])
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!(record.id, work_ids[1]);
    assert_eq!(record.name, work::NAME);
    assert_eq!(record.executor, Executor::Async);
    assert_eq!((record.status, record.attempts), (TaskStatus::Success, 1));
    assert_eq!(record.tags.get("n"), Some("2"));
    assert_eq!(record.last_error, None);
    let (started, finished) = (record.started_at.unwrap(), record.finished_at.unwrap());
    assert!(record.created_at <= started && started <= finished);
    assert!(record.duration().unwrap() >= Duration::from_millis(1));

    let failed = manager
        .get(broken_ids[0])
        .await
        .expect("the store is readable")
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.last_error.unwrap().message(), "broken on purpose");
    assert!(failed.tags.is_empty());

    assert_eq!(
        manager
            .get(TaskId::new())
            .await
            .expect("the store is readable"),
        None
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_statuses_and_average_durations() {
    let manager = TaskManager::builder()
        .max_sync_threads(2)
        .build()
        .await
        .unwrap();
    assert_eq!(manager.metrics().total(), 0);
    assert_eq!(manager.metrics().mean_duration, None);

    let slow: Vec<_> = (0..3)
        .map(|_| work::call(40).enqueue_on(&manager).unwrap())
        .collect();
    let slow_sync = sync_work::call(40).enqueue_on(&manager).unwrap();
    let failing: Vec<_> = (0..2)
        .map(|_| broken::call().enqueue_on(&manager).unwrap())
        .collect();
    let slow_id = slow[0].id();
    for handle in slow {
        within("a work task", handle).await.unwrap();
    }
    within("a sync work task", slow_sync).await.unwrap();
    for handle in failing {
        within("a broken task", handle).await.unwrap_err();
    }

    let metrics = manager.metrics();
    assert_eq!((metrics.success, metrics.failed), (4, 2));
    assert_eq!(
        (
            metrics.pending,
            metrics.running,
            metrics.cancelled,
            metrics.interrupted
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(metrics.total(), 6);
    assert_eq!(metrics.count(TaskStatus::Success), 4);
    // Four tasks of at least 40 ms and two of about nothing: at least 26 ms.
    let mean = metrics.mean_duration.unwrap();
    assert!(mean >= Duration::from_millis(26), "{mean:?}");
    assert!(
        manager
            .get(slow_id)
            .await
            .expect("the store is readable")
            .unwrap()
            .duration()
            .unwrap()
            >= Duration::from_millis(40)
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tasks_events_arrive_in_order() {
    for sync in [false, true] {
        let manager = TaskManager::builder()
            .max_sync_threads(1)
            .build()
            .await
            .unwrap();
        let mut events = manager.subscribe();
        let (id, name) = if sync {
            let handle = sync_work::call(1).enqueue_on(&manager).unwrap();
            let id = handle.id();
            within("a sync task", handle).await.unwrap();
            (id, sync_work::NAME)
        } else {
            let handle = work::call(1).enqueue_on(&manager).unwrap();
            let id = handle.id();
            within("an async task", handle).await.unwrap();
            (id, work::NAME)
        };
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(event);
        }
        let kinds: Vec<_> = seen.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Enqueued,
                EventKind::Started,
                EventKind::Succeeded
            ]
        );
        let statuses: Vec<_> = seen.iter().map(|e| e.status).collect();
        assert_eq!(
            statuses,
            [
                TaskStatus::Pending,
                TaskStatus::Running,
                TaskStatus::Success
            ]
        );
        assert!(
            seen.iter()
                .all(|e| e.id == id && e.name == name && e.attempt == 0)
        );
        assert!(seen.windows(2).all(|pair| pair[0].at <= pair[1].at));
        manager.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_describes_the_running_task() {
    assert!(taskflow::context().is_none(), "none in the test itself");
    let outside = tokio::spawn(async { taskflow::context().is_none() });
    assert!(outside.await.unwrap(), "none in a plain tokio task");
    let blocking = tokio::task::spawn_blocking(|| taskflow::context().is_none());
    assert!(blocking.await.unwrap(), "none in a plain blocking closure");

    let pooled = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let shared = TaskManager::builder().build().await.unwrap();
    for manager in [&pooled, &shared] {
        let handle = whoami_async::call()
            .tag("tenant", "acme")
            .enqueue_on(manager)
            .unwrap();
        let id = handle.id();
        let seen = within("an async task", handle).await.unwrap();
        let expected = Seen {
            id,
            name: whoami_async::NAME.to_owned(),
            attempt: 0,
            tenant: Some("acme".to_owned()),
        };
        assert_eq!(seen, Some(expected));

        let handle = whoami_sync::call()
            .tag("tenant", "initech")
            .enqueue_on(manager)
            .unwrap();
        let id = handle.id();
        let seen = within("a sync task", handle).await.unwrap();
        let expected = Seen {
            id,
            name: whoami_sync::NAME.to_owned(),
            attempt: 0,
            tenant: Some("initech".to_owned()),
        };
        assert_eq!(seen, Some(expected));

        let untagged = within(
            "an untagged task",
            whoami_sync::call().enqueue_on(manager).unwrap(),
        )
        .await;
        assert_eq!(untagged.unwrap().unwrap().tenant, None);
    }
    assert!(taskflow::context().is_none(), "still none afterwards");
    pooled.shutdown().await;
    shared.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_reports_id_and_status() {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(1)
        .build()
        .await
        .unwrap();
    let first = gated::call().enqueue_on(&manager).unwrap();
    let second = gated::call().enqueue_on(&manager).unwrap();
    assert_ne!(first.id(), second.id());
    wait_for_status(&manager, first.id(), TaskStatus::Running).await;
    assert_eq!(first.status(), TaskStatus::Running);
    assert_eq!(second.status(), TaskStatus::Pending);
    assert_eq!(second.record().id, second.id());
    assert_eq!(second.record().status, TaskStatus::Pending);
    let listed: Vec<_> = manager
        .list(&TaskFilter::new())
        .await
        .expect("the store is readable")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(listed.contains(&first.id()) && listed.contains(&second.id()));

    GATE.open();
    let second_id = second.id();
    assert!(within("the first gated task", first).await.unwrap());
    assert!(within("the second gated task", second).await.unwrap());
    assert_eq!(
        manager
            .get(second_id)
            .await
            .expect("the store is readable")
            .unwrap()
            .status,
        TaskStatus::Success
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_declared_inside_a_function_works_like_any_other() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Local(u32);

    #[task]
    async fn local_double(value: Local) -> u32 {
        value.0 * 2
    }

    assert!(local_double::NAME.ends_with("::local_double"));
    let manager = TaskManager::builder().build().await.expect("builds");
    let doubled = local_double::call(Local(21))
        .enqueue_on(&manager)
        .expect("enqueued")
        .await;
    assert_eq!(doubled.expect("ran"), 42);
    assert_eq!(
        local_double(Local(1)).await,
        2,
        "still an ordinary function"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_a_stream_that_ends_with_the_manager() {
    use futures_core::Stream;
    use std::pin::Pin;

    fn next(
        events: &mut taskflow::EventStream,
    ) -> impl std::future::Future<Output = Option<Result<taskflow::TaskEvent, taskflow::RecvError>>> + '_
    {
        std::future::poll_fn(move |cx| Pin::new(&mut *events).poll_next(cx))
    }

    let manager = TaskManager::builder().build().await.expect("builds");
    let mut events = manager.subscribe();
    let id = work::call(1).enqueue_on(&manager).expect("enqueued").id();
    let mut kinds = Vec::new();
    while kinds.last() != Some(&EventKind::Succeeded) {
        let event = within("the next event", next(&mut events)).await;
        let event = event.expect("the stream goes on").expect("no lag");
        assert_eq!(event.id, id);
        kinds.push(event.kind);
    }
    assert_eq!(
        kinds,
        [
            EventKind::Enqueued,
            EventKind::Started,
            EventKind::Succeeded
        ]
    );
    // Nothing more is queued; once the manager is gone the stream ends.
    assert!(events.try_recv().is_err());
    manager.shutdown().await;
    drop(manager);
    assert!(
        within("the end of the stream", next(&mut events))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_records_beyond_the_window_leave_memory_oldest_first() {
    let manager = TaskManager::builder()
        .max_finished_in_memory(40)
        .max_concurrent_tasks(1)
        .build()
        .await
        .expect("builds");
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(work::call(0).enqueue_on(&manager).expect("enqueued"));
    }
    let ids: Vec<TaskId> = {
        let mut done = Vec::new();
        for handle in ids {
            done.push(handle.id());
            within("a task", handle).await.expect("ran");
        }
        done
    };
    let kept = manager.list(&TaskFilter::new()).await.expect("readable");
    // The window, plus at most the quarter that accumulates between sweeps.
    assert!(
        (40..=50).contains(&kept.len()),
        "{} records kept",
        kept.len()
    );
    assert!(
        manager.get(ids[199]).await.expect("readable").is_some(),
        "the newest stays"
    );
    assert!(
        manager.get(ids[0]).await.expect("readable").is_none(),
        "the oldest left"
    );
    assert_eq!(manager.metrics().success, 200, "counts cover every task");
    manager.shutdown().await;
}

#[task(retries = 1)]
async fn traced_async(fail_first: bool) -> Result<(), String> {
    let attempt = taskflow::context().map_or(0, |ctx| ctx.attempt);
    tracing::info!(user = "ada", attempt, "async step");
    tracing::debug!("below the level: not recorded");
    if fail_first && attempt == 0 {
        return Err("first attempt fails".into());
    }
    Ok(())
}

#[task]
fn traced_sync() {
    tracing::warn!(rows = 3, "sync step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_events_inside_tasks_are_their_log_lines() {
    let manager = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap();
    let handle = traced_async::call(true).enqueue_on(&manager).unwrap();
    let id = handle.id();
    within("the traced async task", handle).await.unwrap();
    let record = manager.get(id).await.unwrap().unwrap();
    let lines: Vec<_> = record
        .logs
        .iter()
        .map(|line| (line.attempt, line.message.as_str(), line.fields.clone()))
        .collect();
    let fields = |attempt: &str| {
        vec![
            ("user".to_owned(), "ada".to_owned()),
            ("attempt".to_owned(), attempt.to_owned()),
        ]
    };
    assert_eq!(
        lines,
        [
            (0, "async step", fields("0")),
            (1, "async step", fields("1"))
        ]
    );

    let handle = traced_sync::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    within("the traced sync task", handle).await.unwrap();
    let record = manager.get(id).await.unwrap().unwrap();
    assert_eq!(record.logs.len(), 1, "{:?}", record.logs);
    assert_eq!(record.logs[0].level, taskflow::LogLevel::Warn);
    assert_eq!(record.logs[0].message, "sync step");
    assert_eq!(record.logs[0].fields, [("rows".to_owned(), "3".to_owned())]);
    // Outside a task, an event is the application's alone.
    tracing::info!("not a task's");
    manager.shutdown().await;
}
