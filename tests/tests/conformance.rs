//! The SQLite backend keeps the [`Store`] contract: the shared suite
//! (`taskflow_tests::conformance`) run against `SqliteStore`, one fresh file
//! per check in a temporary directory.

use std::sync::Arc;

use taskflow::store::{SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().to_owned();
    taskflow_tests::conformance::conformance(move |name| {
        // The same name opens the same file again: a second handle, as
        // another process would have.
        let path = root.join(format!("{name}.db"));
        async move {
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(path))
                .await
                .expect("opening the store does not panic")
                .expect("the store opens");
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
    drop(dir);
}
