//! The installed default manager: `name::enqueue` and `call(…).enqueue()` fail
//! with `Error::NoManager` before `install()`, then go to the installed
//! manager, a later `install()` replaces it, and its shutdown is seen.
//!
//! Installing is process-global, so this binary holds a single test.

use taskflow::{Error, TaskManager, task};
use taskflow_tests::within;

#[task]
async fn ping(n: u32) -> u32 {
    n + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_goes_to_the_installed_manager() {
    assert!(TaskManager::installed().is_none());
    let error = ping::enqueue(1).unwrap_err();
    assert!(matches!(error, Error::NoManager), "{error:?}");
    assert!(error.to_string().contains("install"), "{error}");
    assert!(matches!(ping::call(1).enqueue(), Err(Error::NoManager)));

    let first = TaskManager::builder().build().await.unwrap().install();
    assert!(TaskManager::installed().is_some());
    let handle = ping::enqueue(1).unwrap();
    let id = handle.id();
    assert_eq!(
        within("a task on the installed manager", handle)
            .await
            .unwrap(),
        2
    );
    assert!(
        first
            .get(id)
            .await
            .expect("the store is readable")
            .is_some(),
        "the task went to the installed manager"
    );
    let handle = ping::call(2).tag("via", "call").enqueue().unwrap();
    let id = handle.id();
    assert_eq!(
        within("a call on the installed manager", handle)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        first
            .get(id)
            .await
            .expect("the store is readable")
            .unwrap()
            .tags
            .get("via"),
        Some("call")
    );

    let second = TaskManager::builder().build().await.unwrap().install();
    let handle = ping::enqueue(3).unwrap();
    let id = handle.id();
    assert_eq!(
        within("a task on the new manager", handle).await.unwrap(),
        4
    );
    assert!(
        second
            .get(id)
            .await
            .expect("the store is readable")
            .is_some()
    );
    assert!(
        first
            .get(id)
            .await
            .expect("the store is readable")
            .is_none(),
        "install replaced the earlier default"
    );

    second.shutdown().await;
    assert!(matches!(ping::enqueue(4), Err(Error::ShutDown)));
    first.shutdown().await;
}
