//! The PostgreSQL server the tests of the `postgres` store use, and one
//! schema per test so tests run side by side.
//!
//! The server is `TASKFLOW_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Without it, or when it does
//! not answer, a test prints that it is skipped and passes; with
//! `TASKFLOW_REQUIRE_POSTGRES=1` (as `.ci/run` sets) it fails instead.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::NoTls;

/// The variable naming the test server.
pub const URL: &str = "TASKFLOW_TEST_POSTGRES_URL";
/// The variable that makes a missing server a failure.
pub const REQUIRE: &str = "TASKFLOW_REQUIRE_POSTGRES";

/// The test server's connection string, if there is one that answers.
///
/// # Panics
///
/// When none is configured or it does not answer while
/// `TASKFLOW_REQUIRE_POSTGRES=1`.
pub async fn server(test: &str) -> Option<String> {
    let required = std::env::var(REQUIRE).is_ok_and(|value| value == "1");
    let url = match std::env::var(URL) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            assert!(
                !required,
                "{REQUIRE}=1 but {URL} is not set: the PostgreSQL tests cannot run"
            );
            println!(
                "{test}: skipped, set {URL} (e.g. postgres://postgres@127.0.0.1:5432/test) to run it"
            );
            return None;
        }
    };
    match tokio_postgres::connect(&url, NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            drop(connection);
            Some(url)
        }
        Err(error) => {
            assert!(
                !required,
                "{REQUIRE}=1 but the PostgreSQL server at {URL} does not answer: {error}"
            );
            println!("{test}: skipped, the PostgreSQL server at {URL} does not answer: {error}");
            None
        }
    }
}

/// A schema of one test's own, dropped (with everything in it) when this
/// goes out of scope, even when the test fails.
#[derive(Debug)]
pub struct Schema {
    url: String,
    name: String,
}

impl Schema {
    /// A new, empty schema name for `label`, unique to this process: an
    /// older schema of that name (a crashed run's) is dropped first. The
    /// schema itself is created by the store that opens it.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached to drop a leftover.
    pub async fn new(url: &str, label: &str) -> Schema {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("tf{}_{serial}_{label}", std::process::id());
        name.truncate(63);
        let schema = Schema {
            url: url.to_owned(),
            name,
        };
        schema.drop_now().await;
        schema
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` on a connection of its own.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the statement fails.
    pub async fn execute(&self, sql: &str) {
        let client = connect(&self.url).await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|error| panic!("`{sql}` failed: {error:?}"));
    }

    /// The rows `sql` answers, as text.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the query fails.
    pub async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let client = connect(&self.url).await;
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|error| panic!("`{sql}` failed: {error:?}"))
    }

    async fn drop_now(&self) {
        self.execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await;
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Dropping runs inside a test's runtime, where blocking on the
        // drop is not allowed: a thread of its own does it.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await.ok()?;
                let driver = tokio::spawn(connection);
                let dropped = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await;
                drop(client);
                let _ = driver.await;
                dropped.ok()
            })
        });
        if dropped.join().ok().flatten().is_none() {
            eprintln!("could not drop test schema {}", self.name);
        }
    }
}

/// A client on `url`, its connection driven in the background.
///
/// # Panics
///
/// When the server cannot be reached.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test server: {error:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}
