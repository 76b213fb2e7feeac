//! What `#[task(...)]` declares takes effect at run time: a declared `queue`
//! and `priority` are every call's defaults (on its record, and in the order
//! its queue runs it), and a call's own `.queue(..)` and `.priority(..)`
//! override them. The expansion is also lint-clean in the user's crate: the
//! clippy lints below hold it to that whenever the workspace is linted.

#![warn(
    clippy::used_underscore_binding,
    clippy::used_underscore_items,
    clippy::no_effect_underscore_binding
)]

use std::sync::Mutex;

use taskflow::{QueueConfig, TaskFilter, TaskManager, TaskStatus, task};
use taskflow_tests::{Latch, wait_for_status, within};

#[task(queue = "q1", priority = 3)]
async fn placed() -> u32 {
    7
}

#[tokio::test]
async fn a_declared_queue_and_priority_are_the_defaults_of_every_call() {
    within("the declared queue and priority", async {
        let tasks = TaskManager::builder().build().await.expect("a manager");
        let handle = placed::call().enqueue_on(&tasks).expect("enqueued");
        let id = handle.id();
        let record = handle.record();
        assert_eq!((record.queue.as_str(), record.priority), ("q1", 3));
        assert_eq!(handle.await.expect("the output"), 7);

        let record = tasks.get(id).await.expect("a query").expect("known");
        assert_eq!(record.status, TaskStatus::Success);
        assert_eq!((record.queue.as_str(), record.priority), ("q1", 3));
        let in_q1 = tasks
            .list(&TaskFilter::new().queue("q1"))
            .await
            .expect("a query");
        assert_eq!(in_q1.iter().map(|r| r.id).collect::<Vec<_>>(), [id]);
        tasks.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_call_overrides_the_declared_queue_and_priority() {
    within("the overridden queue and priority", async {
        let tasks = TaskManager::builder().build().await.expect("a manager");
        let handle = placed::call()
            .queue("other")
            .priority(-1)
            .enqueue_on(&tasks)
            .expect("enqueued");
        let id = handle.id();
        let record = handle.record();
        assert_eq!((record.queue.as_str(), record.priority), ("other", -1));
        assert_eq!(handle.await.expect("the output"), 7);

        let record = tasks.get(id).await.expect("a query").expect("known");
        assert_eq!((record.queue.as_str(), record.priority), ("other", -1));
        let in_q1 = tasks
            .list(&TaskFilter::new().queue("q1"))
            .await
            .expect("a query");
        assert!(in_q1.is_empty(), "{in_q1:?}");
        tasks.shutdown().await;
    })
    .await;
}

static HOLD_RELEASE: Latch = Latch::new();
static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Holds the one slot of queue `ordered` until the test releases it.
#[task(queue = "ordered")]
async fn hold() -> bool {
    HOLD_RELEASE.wait().await
}

#[task(queue = "ordered", priority = 3)]
async fn ordered(label: String) {
    RAN.lock().unwrap_or_else(|p| p.into_inner()).push(label);
}

#[tokio::test]
async fn the_declared_priority_orders_the_queue() {
    within("the queue's order", async {
        let tasks = TaskManager::builder()
            .queue("ordered", QueueConfig::new().concurrency(1))
            .build()
            .await
            .expect("a manager");
        let holder = hold::call().enqueue_on(&tasks).expect("enqueued");
        wait_for_status(&tasks, holder.id(), TaskStatus::Running).await;

        // Both wait behind `hold`: the earlier with a call's priority 1,
        // above the undeclared default of 0 but below the declared 3 of the
        // later one, which therefore runs first.
        let earlier = ordered::call("earlier".into())
            .priority(1)
            .enqueue_on(&tasks)
            .expect("enqueued");
        let later = ordered::call("later".into())
            .enqueue_on(&tasks)
            .expect("enqueued");
        assert_eq!(earlier.record().status, TaskStatus::Pending);
        HOLD_RELEASE.open();
        assert!(holder.await.expect("the holder's output"));
        later.await.expect("the later one ran");
        earlier.await.expect("the earlier one ran");
        let ran = RAN.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(ran, ["later", "earlier"]);
        tasks.shutdown().await;
    })
    .await;
}

/// A parameter named `_unused` binds nothing the generated code lints on
/// (`non_snake_case`, clippy's `used_underscore_binding`), and a `_`
/// parameter still takes its argument.
#[task]
async fn ignores(_unused: u32, _: String, kept: u8) -> u8 {
    kept
}

#[tokio::test]
async fn underscore_parameters_take_their_arguments() {
    within("a task with underscore parameters", async {
        let tasks = TaskManager::builder().build().await.expect("a manager");
        let handle = ignores::call(1, "two".into(), 3)
            .enqueue_on(&tasks)
            .expect("enqueued");
        assert_eq!(handle.await.expect("the output"), 3);
        tasks.shutdown().await;
    })
    .await;
}

/// A queue named at run time follows the rule `#[task(queue = …)]` checks
/// at compile time: a bad name is a clear error and records nothing.
#[tokio::test]
async fn a_bad_queue_name_at_run_time_is_refused() {
    within("bad queue names", async {
        let tasks = TaskManager::builder().build().await.expect("a manager");
        for (name, why) in [
            ("", "blank"),
            ("   ", "blank"),
            ("tab\there", "control characters"),
            (&"q".repeat(129) as &str, "128 bytes"),
        ] {
            let error = placed::call()
                .queue(name)
                .enqueue_on(&tasks)
                .expect_err("a bad queue name is refused");
            assert!(
                matches!(error, taskflow::Error::InvalidQueue { .. }),
                "{error:?}"
            );
            assert!(error.to_string().contains(why), "{error}");
        }
        assert!(
            tasks
                .list(&taskflow::TaskFilter::new())
                .await
                .expect("a list")
                .is_empty()
        );
        let built = TaskManager::builder()
            .queue(" ", taskflow::QueueConfig::new())
            .build()
            .await;
        assert!(matches!(built, Err(taskflow::Error::InvalidQueue { .. })));
        tasks.shutdown().await;
    })
    .await;
}
