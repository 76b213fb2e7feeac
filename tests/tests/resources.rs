//! Shared resources: a task taking `taskflow::Resource<T>` receives the value
//! registered with the builder's `.resource(…)`, the same shared value every
//! time; a manager lacking it refuses the enqueue with
//! `Error::MissingResource` naming the type, and records nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use taskflow::{Error, Resource, TaskFilter, TaskManager, task};
use taskflow_tests::within;

/// Stands for a client or a connection pool: not data, not an argument.
#[derive(Debug)]
struct Greeter {
    greeting: String,
}

/// Counts uses across tasks, to show they all share one value.
#[derive(Debug, Default)]
struct UseCounter(AtomicU32);

#[task]
async fn greet(greeter: Resource<Greeter>, name: String) -> String {
    format!("{} {name}", greeter.greeting)
}

#[task]
fn count_use(counter: Resource<UseCounter>, by: u32) -> u32 {
    counter.0.fetch_add(by, Ordering::SeqCst) + by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_receive_the_registered_resources() {
    let counter = Arc::new(UseCounter::default());
    let manager = TaskManager::builder()
        .max_sync_threads(2)
        .resource(Greeter {
            greeting: "hello".into(),
        })
        .resource_arc(counter.clone())
        .build()
        .await
        .unwrap();

    let greeting = greet::call("ada".into()).enqueue_on(&manager).unwrap();
    assert_eq!(
        within("an async task with a resource", greeting)
            .await
            .unwrap(),
        "hello ada"
    );

    let handles: Vec<_> = (0..10)
        .map(|_| count_use::call(1).enqueue_on(&manager).unwrap())
        .collect();
    for handle in handles {
        within("a sync task with a resource", handle).await.unwrap();
    }
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        10,
        "every task used the one registered value"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_resource_of_a_type_wins() {
    let manager = TaskManager::builder()
        .resource(Greeter {
            greeting: "hi".into(),
        })
        .resource(Greeter {
            greeting: "bonjour".into(),
        })
        .build()
        .await
        .unwrap();
    let greeting = greet::call("ada".into()).enqueue_on(&manager).unwrap();
    assert_eq!(
        within("a task with a resource", greeting).await.unwrap(),
        "bonjour ada"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_resource_is_refused_at_enqueue() {
    let manager = TaskManager::builder()
        .resource(Greeter {
            greeting: "hello".into(),
        })
        .build()
        .await
        .unwrap();

    let error = count_use::call(1).enqueue_on(&manager).unwrap_err();
    match &error {
        Error::MissingResource { task, resource } => {
            assert_eq!(*task, count_use::NAME);
            assert!(resource.ends_with("UseCounter"), "{resource}");
        }
        other => panic!("expected MissingResource, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("UseCounter") && message.contains(count_use::NAME),
        "{message}"
    );

    assert!(
        manager
            .list(&TaskFilter::new())
            .await
            .expect("the store is readable")
            .is_empty(),
        "no record for a refused task"
    );
    assert_eq!(manager.metrics().total(), 0);
    // The manager itself is fine.
    let greeting = greet::call("bob".into()).enqueue_on(&manager).unwrap();
    assert_eq!(
        within("a task whose resource exists", greeting)
            .await
            .unwrap(),
        "hello bob"
    );
    manager.shutdown().await;
}
