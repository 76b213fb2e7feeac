//! B8, persistence: tasks through a manager with a task store, against
//! batched raw inserts of the same rows into the same schema.
//!
//! The raw file gets its schema from taskflow itself (a manager is built on
//! it and shut down), so the baseline writes exactly the tables and indexes
//! the store maintains, with the same pragmas (WAL, `synchronous = NORMAL`)
//! and the store's batch size.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use taskflow::{TaskId, TaskManager};

use crate::BoxError;

/// The task store's largest transaction, in rows.
const BATCH: usize = 8192;

/// What one taskflow run measured.
pub(crate) struct Persisted {
    /// From the first enqueue until every task's row was acknowledged.
    pub(crate) acknowledged: Duration,
    /// From the first enqueue until every task was SUCCESS and committed.
    pub(crate) success_written: Duration,
}

/// `tasks` no-op async tasks on a manager with a task store in `dir`.
pub(crate) async fn taskflow(dir: &Path, tasks: usize) -> Result<Persisted, BoxError> {
    let path = dir.join("taskflow.db");
    let manager = TaskManager::builder().snapshot_db(&path).build().await?;
    let driver = manager.clone();
    let measured = crate::on_worker(async move {
        let start = Instant::now();
        let handles = (0..tasks)
            .map(|_| crate::noop::call().enqueue_on(&driver))
            .collect::<Result<Vec<_>, _>>()?;
        for handle in &handles {
            handle.persisted().await?;
        }
        let acknowledged = start.elapsed();
        for handle in handles {
            handle.await?;
        }
        driver.flush().await?;
        let success_written = start.elapsed();
        Ok::<_, BoxError>(Persisted {
            acknowledged,
            success_written,
        })
    })
    .await?;
    manager.shutdown().await;
    let rows: i64 = Connection::open(&path)?.query_row(
        "SELECT count(*) FROM tasks WHERE status = 'SUCCESS'",
        [],
        |row| row.get(0),
    )?;
    if rows != tasks as i64 {
        return Err(format!("the store holds {rows} SUCCESS rows, expected {tasks}").into());
    }
    Ok(measured)
}

/// Prepares a file with taskflow's schema and nothing in it.
pub(crate) async fn raw_file(dir: &Path) -> Result<std::path::PathBuf, BoxError> {
    let path = dir.join("raw.db");
    let manager = TaskManager::builder().snapshot_db(&path).build().await?;
    manager.shutdown().await;
    Ok(path)
}

/// Inserts `tasks` finished rows into `path` in transactions of the store's
/// batch size. Blocking: call it off the runtime.
pub(crate) fn raw_inserts(path: &Path, tasks: usize) -> Result<Duration, BoxError> {
    let mut db = Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    let owner = TaskId::new().to_string();
    let name = crate::noop::NAME;
    let start = Instant::now();
    let mut left = tasks;
    while left > 0 {
        let batch = left.min(BATCH);
        let transaction = db.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO tasks (id, name, executor, status, args, tags, attempts, created_at, \
                 started_at, finished_at, idempotency_key, owner) \
                 VALUES (?1, ?2, 'async', 'SUCCESS', ?3, NULL, 1, ?4, ?5, ?6, NULL, ?7)",
            )?;
            for _ in 0..batch {
                let now = micros();
                insert.execute(params![
                    TaskId::new().to_bytes(),
                    name,
                    &[] as &[u8],
                    now,
                    now,
                    now,
                    owner
                ])?;
            }
        }
        transaction.commit()?;
        left -= batch;
    }
    Ok(start.elapsed())
}

fn micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
