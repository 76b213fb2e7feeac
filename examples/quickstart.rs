//! The quickstart: declare async and sync tasks, enqueue a burst, watch them
//! finish, print a summary.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::Duration;

use taskflow::{TaskFilter, TaskManager, TaskStatus, task};

/// An I/O-bound task: runs on the async runtime, at most 10 at once.
#[task(retries = 2, delay = "50ms", backoff = 2.0)]
async fn send_email(to: String) -> Result<String, String> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ctx = taskflow::context().expect("inside a task");
    // One address fails on its first attempt, to show a retry.
    if to.starts_with("flaky") && ctx.attempt == 0 {
        return Err(format!("smtp refused {to}"));
    }
    Ok(format!("sent to {to}"))
}

/// A blocking task: runs on the dedicated pool of 4 threads, never on the
/// runtime's workers.
#[task]
fn checksum(data: Vec<u8>) -> u64 {
    std::thread::sleep(Duration::from_millis(50));
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A task that always fails, to show what FAILED looks like.
#[task]
async fn doomed() -> Result<(), String> {
    Err("this task always fails".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tasks = TaskManager::builder()
        .max_concurrent_tasks(10)
        .max_sync_threads(4)
        .build()
        .await?
        .install();

    let started = std::time::Instant::now();
    let mut emails = Vec::new();
    for n in 0..40 {
        let to = if n == 7 {
            "flaky@example.com".to_owned()
        } else {
            format!("user{n}@example.com")
        };
        emails.push(send_email::call(to).tag("batch", "welcome").enqueue()?);
    }
    let mut sums = Vec::new();
    for n in 0..20u8 {
        sums.push(checksum::enqueue(vec![n; 1024])?);
    }
    let failing = doomed::enqueue()?;
    println!(
        "enqueued {} tasks; {} running now",
        emails.len() + sums.len() + 1,
        tasks.metrics().running
    );

    for handle in emails {
        handle.await?;
    }
    for handle in sums {
        handle.await?;
    }
    let error = failing.await.expect_err("doomed always fails");
    println!("doomed failed as expected: {error}");

    let metrics = tasks.metrics();
    println!("\nfinished in {:.2?}", started.elapsed());
    for status in TaskStatus::ALL {
        println!("  {:<12} {}", status.as_str(), metrics.count(status));
    }
    if let Some(mean) = metrics.mean_duration {
        println!("  mean duration {mean:.2?}");
    }
    println!("\nretried tasks:");
    for record in tasks
        .list(&TaskFilter::new().status(TaskStatus::Success))
        .await?
    {
        if record.attempts > 1 {
            println!(
                "  {} {} attempts={} duration={:.2?}",
                record.name,
                record.id,
                record.attempts,
                record.duration().unwrap_or_default()
            );
        }
    }
    tasks.shutdown().await;
    Ok(())
}
