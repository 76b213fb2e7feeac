//! Each backend keeps the [`Store`] contract: the shared suite
//! (`taskflow_tests::conformance`) run against `SqliteStore`, one fresh file
//! per check in a temporary directory, and against `PostgresStore`, one
//! fresh schema per check (skipped, saying so, without a test server). A
//! check that needs a manager on the same storage builds one on that file
//! or schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use taskflow::TaskManager;
use taskflow::store::{PostgresConfig, PostgresStore, SqliteStore, Store};
use taskflow_tests::postgres::{self, Schema};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().to_owned();
    let file = root.clone();
    taskflow_tests::conformance::conformance(
        move |name| {
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
        },
        move |name| TaskManager::builder().snapshot_db(file.join(format!("{name}.db"))),
    )
    .await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_store_contract() {
    let Some(url) = postgres::server("postgres_keeps_the_store_contract").await else {
        return;
    };
    // Each check's schema, kept (and dropped) until the suite ends.
    let schemas: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let guards: Arc<tokio::sync::Mutex<Vec<Schema>>> = Arc::default();
    let opened = guards.clone();
    let (manager_url, manager_schemas) = (url.clone(), schemas.clone());
    let manager = move |name: String| {
        let schema = manager_schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned()
            .expect("a check opens its store before it builds a manager");
        TaskManager::builder().postgres(
            PostgresConfig::new(manager_url.clone())
                .schema(schema)
                .pool_size(2),
        )
    };
    taskflow_tests::conformance::conformance(
        move |name| {
            let (url, schemas, guards) = (url.clone(), schemas.clone(), opened.clone());
            async move {
                let known = schemas
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    .cloned();
                // The same name opens the same schema again: a second handle,
                // as another host would have.
                let schema = match known {
                    Some(schema) => schema,
                    None => {
                        let schema = Schema::new(&url, &name).await;
                        let schema_name = schema.name().to_owned();
                        guards.lock().await.push(schema);
                        schemas
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(name, schema_name.clone());
                        schema_name
                    }
                };
                let config = PostgresConfig::new(url).schema(schema).pool_size(4);
                let store = PostgresStore::open(config).await.expect("the store opens");
                Arc::new(store) as Arc<dyn Store>
            }
        },
        manager,
    )
    .await;
    drop(guards);
}
