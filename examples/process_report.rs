//! CPU-heavy reports on the worker pool, against the same work run
//! sequentially in this process.
//!
//! ```text
//! cargo run --release --example process_report
//! ```
//!
//! The workers are this very binary started again: `#[taskflow::main]` sends
//! a worker into its serving loop before `main`'s body would run.

use std::time::Instant;

use taskflow::{TaskManager, task};

/// A stand-in for a report: hashes `rounds` rounds of a buffer.
#[task(executor = "process", timeout = "2m")]
fn generate_report(report_id: u64, rounds: u32) -> (u64, u32) {
    taskflow::log(
        taskflow::LogLevel::Info,
        format!("report {report_id}: {rounds} rounds"),
    );
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ report_id;
    for round in 0..rounds {
        for byte in 0..4096u32 {
            hash = (hash ^ u64::from(byte.wrapping_add(round))).wrapping_mul(0x0100_0000_01b3);
        }
    }
    (hash, std::process::id())
}

#[taskflow::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let tasks = TaskManager::builder()
        .max_process_workers(workers)
        .build()
        .await?
        .install();
    tasks.prewarm().await?;
    let reports: u64 = 8;
    let rounds = 20_000;

    let started = Instant::now();
    let handles = (0..reports)
        .map(|id| generate_report::enqueue(id, rounds))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pids = std::collections::BTreeSet::new();
    let mut pooled = Vec::new();
    for handle in handles {
        let (hash, pid) = handle.await?;
        pids.insert(pid);
        pooled.push(hash);
    }
    let pool_time = started.elapsed();

    let started = Instant::now();
    let sequential: Vec<u64> = (0..reports)
        .map(|id| generate_report(id, rounds).0)
        .collect();
    let sequential_time = started.elapsed();

    assert_eq!(pooled, sequential, "the pool computed the same reports");
    println!("{reports} reports, {workers} worker processes (pids {pids:?})");
    println!("  worker pool: {pool_time:>10.2?}");
    println!("  sequential:  {sequential_time:>10.2?}");
    println!(
        "  speed-up:    {:>10.2}x",
        sequential_time.as_secs_f64() / pool_time.as_secs_f64()
    );
    tasks.shutdown().await;
    Ok(())
}
