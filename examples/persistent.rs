//! Durable tasks: enqueue, stop, start again, and see the history and the
//! requeued work.
//!
//! ```text
//! cargo run --example persistent
//! ```
//!
//! The first manager runs a few tasks and stops while others still wait
//! behind a slow one. The second, opened on the same SQLite file with
//! `requeue_pending(true)`, shows what the first did and runs what it left,
//! under the same ids.

use std::time::Duration;

use taskflow::{TaskFilter, TaskManager, TaskStatus, task};

#[task(retries = 1, delay = "50ms")]
async fn send_invoice(order: u64, amount_cents: u64) -> Result<String, String> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    if order == 3 {
        return Err(format!("order {order}: the payment provider said no"));
    }
    Ok(format!(
        "invoice for order {order}: {}.{:02}",
        amount_cents / 100,
        amount_cents % 100
    ))
}

#[task]
async fn nightly_export() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = std::env::temp_dir().join("taskflow-persistent-example.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    println!("first run, on {}", db.display());
    let first = TaskManager::builder()
        .snapshot_db(&db)
        .requeue_pending(true)
        .max_concurrent_tasks(1)
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .await?;
    for order in 1..=3 {
        let handle = send_invoice::call(order, 1250 * order)
            .tag("customer", "acme")
            .enqueue_on(&first)?;
        let outcome = handle.await;
        println!("  order {order}: {outcome:?}");
    }
    // One slow task holds the only slot; three more wait behind it.
    let _slow = nightly_export::call().enqueue_on(&first)?;
    let mut waiting = Vec::new();
    for order in 4..=6 {
        let handle = send_invoice::call(order, 990).enqueue_on(&first)?;
        handle.persisted().await?; // on disk: it survives even a crash from here on
        waiting.push(handle.id());
    }
    let report = first.shutdown().await;
    println!(
        "  stopped: {} waiting tasks kept for the next start, {} running task interrupted",
        report.pending_interrupted, report.running_interrupted
    );

    println!("\nsecond run, same file");
    let second = TaskManager::builder()
        .snapshot_db(&db)
        .requeue_pending(true)
        .build()
        .await?;
    for id in &waiting {
        for _ in 0..500 {
            if second
                .get(*id)
                .await?
                .is_some_and(|r| r.status.is_finished())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!("  history, newest first:");
    for record in second.list(&TaskFilter::new()).await? {
        let error = record
            .last_error
            .map(|e| format!(" ({})", e.message()))
            .unwrap_or_default();
        let requeued = if waiting.contains(&record.id) {
            "  <- requeued, same id"
        } else {
            ""
        };
        println!(
            "    {} {:<11} {:<26} attempts={}{error}{requeued}",
            record.id,
            record.status.as_str(),
            record.name,
            record.attempts
        );
    }
    let failed = second
        .list(&TaskFilter::new().status(TaskStatus::Failed))
        .await?;
    if let Some(failed) = failed.first() {
        let retry = second.retry(failed.id).await?;
        println!("  retried the failed task as {retry}");
    }
    second.shutdown().await;
    Ok(())
}
