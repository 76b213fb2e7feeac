//! Two `#[task]` declarations under one name make `build()` fail with an
//! error naming both declarations. Every task in this binary is declared
//! here, so no other test can build a manager in it.

use taskflow::{Error, TaskManager, task};

mod billing {
    use super::task;

    #[task(name = "same")]
    pub(crate) fn first_twin() {}
}

mod reports {
    use super::task;

    #[task(name = "same")]
    pub(crate) async fn second_twin() {}
}

#[tokio::test]
async fn two_tasks_under_one_name_fail_the_build() {
    assert_eq!(billing::first_twin::NAME, "same");
    assert_eq!(reports::second_twin::NAME, "same");

    let error = TaskManager::builder().build().await.unwrap_err();
    assert!(matches!(error, Error::DuplicateTask(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("`same`"), "{message}");
    assert!(message.contains("billing::first_twin"), "{message}");
    assert!(message.contains("reports::second_twin"), "{message}");
    assert!(message.contains("duplicate_names.rs"), "{message}");

    // Asking again gives the same answer, not a half-built registry.
    let again = TaskManager::builder()
        .max_sync_threads(1)
        .build()
        .await
        .unwrap_err();
    assert_eq!(again.to_string(), message);
}
