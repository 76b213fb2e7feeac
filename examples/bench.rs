//! Every executor against the raw primitive beneath it, in the same run
//! (workloads B1–B6 and B8–B14; B7 is the `burst_latency` example; B12,
//! the PostgreSQL store, runs when `TASKFLOW_BENCH_POSTGRES_URL` or
//! `TASKFLOW_TEST_POSTGRES_URL` names a server).
//!
//! ```text
//! cargo run --release --example bench                  # the full table, a few minutes
//! cargo run --release --example bench -- --quick       # a small version, seconds
//! cargo run --release --example bench -- --markdown table.md --json table.json
//! cargo run --release --example bench -- --only B4,B6 --runs 9
//! ```
//!
//! Each figure is the median of several runs; within a run the raw
//! baseline and taskflow take turns. The table says, per row, what the ratio
//! means and whether the target is met; `BENCHMARKS.md` at the repository
//! root explains what dominates each figure.
//!
//! This binary is also its own children. `#[taskflow::main]` sends
//! taskflow's worker processes into their loop first; then, before anything
//! else, `main` checks whether it was started as a raw echo child (the
//! baseline for the process executor) or as a memory child (B9, measured in
//! a fresh process).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use taskflow::{TaskHandle, TaskManager, TaskManagerBuilder, task};

#[path = "bench/admin.rs"]
mod admin;
#[path = "bench/memory.rs"]
mod memory;
#[path = "bench/persistence.rs"]
mod persistence;
#[path = "bench/postgres.rs"]
mod postgres;
#[path = "bench/raw.rs"]
mod raw;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/schedules.rs"]
mod schedules;
#[path = "bench/wire.rs"]
mod wire;

use report::{Measure, Row, Target, median, median_time, spread};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------- the tasks

/// B1, B8, B9: the cheapest async task there is.
#[task]
async fn noop() {}

/// B9: holds the only slot of a capped manager for good.
#[task]
async fn hold() {
    std::future::pending::<()>().await;
}

/// B11: how late a delayed task starts, against the time it was due
/// (microseconds since the epoch).
#[task]
async fn due(at_micros: u64) {
    LATENESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(lateness(at_micros));
}

/// B11: every delayed task's lateness, in microseconds.
static LATENESS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn lateness(at_micros: u64) -> u64 {
    now_micros().saturating_sub(at_micros)
}

/// B2: the cheapest sync task.
#[task]
fn noop_blocking() {}

/// B3: a sync task that sleeps.
#[task]
fn nap(millis: u64) {
    std::thread::sleep(Duration::from_millis(millis));
}

/// B4, B6: identity on a small argument, in a worker process.
#[task(executor = "process")]
fn echo(value: u64) -> u64 {
    value
}

/// B5: CPU-bound work in a worker process.
#[task(executor = "process")]
fn crunch(rounds: u32) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for round in 0..rounds {
        for byte in 0..4096u32 {
            hash = (hash ^ u64::from(byte.wrapping_add(round))).wrapping_mul(0x0100_0000_01b3);
        }
    }
    std::hint::black_box(hash)
}

// ---------------------------------------------------------------- options

const USAGE: &str =
    "usage: bench [--quick] [--runs N] [--only B1,B4,…] [--markdown PATH] [--json PATH]
       bench --only B2|B4|B12 --side taskflow|raw[-throughput|-latency] [--runs N]
             (one side of B2, B4 or B12 alone, for a profiler; the other side's figures are dummies)";

struct Options {
    quick: bool,
    runs: Option<usize>,
    only: Option<Vec<String>>,
    markdown: Option<PathBuf>,
    json: Option<PathBuf>,
    /// Only this side of B2, B4 or B12, for profiling.
    side: Option<String>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            quick: false,
            runs: None,
            only: None,
            markdown: None,
            json: None,
            side: None,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--runs" => {
                    let runs = value("--runs")?;
                    let runs = runs.parse().map_err(|_| format!("bad --runs `{runs}`"))?;
                    options.runs = Some(usize::max(runs, 1));
                }
                "--only" => {
                    let ids = value("--only")?;
                    options.only =
                        Some(ids.split(',').map(|id| id.trim().to_uppercase()).collect());
                }
                "--markdown" => options.markdown = Some(value("--markdown")?.into()),
                "--json" => options.json = Some(value("--json")?.into()),
                "--side" => {
                    let side = value("--side")?;
                    let (who, what) = side.split_once('-').unwrap_or((&side, "both"));
                    if !matches!(who, "taskflow" | "raw")
                        || !matches!(what, "both" | "throughput" | "latency")
                    {
                        return Err(format!("bad --side `{side}`"));
                    }
                    options.side = Some(side);
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(options)
    }

    fn wants(&self, id: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == id))
    }
}

/// How big each workload is: the issue's sizes, or a quick version.
struct Scale {
    runs: usize,
    async_tasks: usize,
    sync_tasks: usize,
    sleepers: usize,
    process_tasks: usize,
    latency_rounds: usize,
    cpu_task: Duration,
    cold_starts: usize,
    persisted_tasks: usize,
    memory_tasks: usize,
    memory_runs: usize,
    priority_tasks: usize,
    delayed_tasks: usize,
    /// B13: schedules, and the seconds they fire for.
    schedules: (usize, u64),
    /// B12: tasks queued in PostgreSQL, and latency probes per run.
    pg_tasks: usize,
    pg_probes: usize,
    /// B14: finished tasks stored, requests per page, tasks in a burst.
    admin: (usize, usize, usize),
}

impl Scale {
    fn new(options: &Options) -> Self {
        let mut scale = if options.quick {
            Scale {
                runs: 1,
                async_tasks: 20_000,
                sync_tasks: 10_000,
                sleepers: 80,
                process_tasks: 2_000,
                latency_rounds: 200,
                cpu_task: Duration::from_millis(25),
                cold_starts: 3,
                persisted_tasks: 5_000,
                memory_tasks: 50_000,
                memory_runs: 1,
                priority_tasks: 10_000,
                delayed_tasks: 10_000,
                schedules: (500, 1),
                pg_tasks: 5_000,
                pg_probes: 50,
                admin: (20_000, 100, 10_000),
            }
        } else {
            Scale {
                runs: 5,
                async_tasks: 200_000,
                sync_tasks: 100_000,
                sleepers: 400,
                process_tasks: 20_000,
                latency_rounds: 2_000,
                cpu_task: Duration::from_millis(250),
                cold_starts: 11,
                persisted_tasks: 100_000,
                memory_tasks: 1_000_000,
                memory_runs: 3,
                priority_tasks: 100_000,
                delayed_tasks: 100_000,
                schedules: (10_000, 10),
                pg_tasks: 100_000,
                pg_probes: 500,
                admin: (1_000_000, 500, 100_000),
            }
        };
        if let Some(runs) = options.runs {
            scale.runs = runs;
            scale.cold_starts = 2 * runs + 1;
            scale.memory_runs = runs;
        }
        scale
    }
}

/// `200000` as `200k`, `1000000` as `1M`.
fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn rate(tasks: usize, elapsed: Duration) -> f64 {
    tasks as f64 / elapsed.as_secs_f64()
}

/// Runs `future` as a task on a runtime worker, where a request handler
/// would enqueue from, and returns its output.
async fn on_worker<T: Send + 'static>(
    future: impl Future<Output = Result<T, BoxError>> + Send + 'static,
) -> Result<T, BoxError> {
    tokio::spawn(future)
        .await
        .map_err(|e| format!("the benchmark task failed: {e}"))?
}

/// Runs blocking `work` off the runtime and returns its output.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
) -> Result<T, BoxError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("the benchmark thread failed: {e}"))?
}

/// A throughput row: median rates of `taskflow` and `raw` runs of `tasks`.
fn rate_row(
    id: &'static str,
    workload: String,
    tasks: usize,
    taskflow: &[Duration],
    raw: &[Duration],
    raw_name: &str,
    target: Target,
) -> Row {
    let rates = |times: &[Duration]| times.iter().map(|&t| rate(tasks, t)).collect::<Vec<_>>();
    let (ours, theirs) = (median(&rates(taskflow)), median(&rates(raw)));
    let mut row = Row::new(id, workload, target);
    row.taskflow = Some(Measure::Rate(ours));
    row.raw = Some(Measure::Rate(theirs));
    row.raw_name = raw_name.to_owned();
    row.ratio_meaning = "taskflow / raw throughput";
    row.ratio = Some(ours / theirs);
    row.samples = rates(taskflow).into_iter().zip(rates(raw)).collect();
    row.note = format!(
        "taskflow runs {}, raw runs {}",
        spread(taskflow),
        spread(raw)
    );
    row
}

// ---------------------------------------------------------------- B1

/// Builds a manager, then times enqueueing `tasks` tasks with `enqueue`
/// from a runtime worker and awaiting every one.
async fn timed_burst<F>(
    builder: TaskManagerBuilder,
    tasks: usize,
    enqueue: F,
) -> Result<Duration, BoxError>
where
    F: Fn(&TaskManager) -> Result<TaskHandle<()>, taskflow::Error> + Send + 'static,
{
    let manager = builder.build().await?;
    let driver = manager.clone();
    let elapsed = on_worker(async move {
        let start = Instant::now();
        let handles = (0..tasks)
            .map(|_| enqueue(&driver))
            .collect::<Result<Vec<_>, _>>()?;
        for handle in handles {
            handle.await?;
        }
        Ok(start.elapsed())
    })
    .await?;
    manager.shutdown().await;
    Ok(elapsed)
}

/// `logs`: whether `tracing` events inside tasks are recorded (the default;
/// each poll then runs with the manager's tee as its dispatcher).
async fn async_noops(tasks: usize, cap: Option<usize>, logs: bool) -> Result<Duration, BoxError> {
    let mut builder = TaskManager::builder();
    if let Some(cap) = cap {
        builder = builder.max_concurrent_tasks(cap);
    }
    if !logs {
        builder = builder.task_log_level(tracing::level_filters::LevelFilter::OFF);
    }
    timed_burst(builder, tasks, |m| noop::call().enqueue_on(m)).await
}

/// Times spawning `tasks` no-op tokio tasks with `spawn` from a runtime
/// worker and joining every one: the raw side of B1 and B2.
async fn timed_joins(
    tasks: usize,
    spawn: fn() -> tokio::task::JoinHandle<()>,
) -> Result<Duration, BoxError> {
    on_worker(async move {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks).map(|_| spawn()).collect();
        for handle in handles {
            handle.await?;
        }
        Ok(start.elapsed())
    })
    .await
}

async fn b1(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let n = scale.async_tasks;
    let (mut raw, mut uncapped, mut capped) = (Vec::new(), Vec::new(), Vec::new());
    let mut unlogged = Vec::new();
    for _ in 0..scale.runs {
        raw.push(timed_joins(n, || tokio::spawn(async {})).await?);
        uncapped.push(async_noops(n, None, true).await?);
        capped.push(async_noops(n, Some(10), true).await?);
        unlogged.push(async_noops(n, None, false).await?);
    }
    Ok(vec![
        rate_row(
            "B1",
            format!("{} no-op async tasks, enqueue→SUCCESS, no cap", count(n)),
            n,
            &uncapped,
            &raw,
            "tokio::spawn + join",
            Target::RatioAtLeast(0.30),
        ),
        rate_row(
            "B1",
            format!("{} no-op async tasks, enqueue→SUCCESS, cap 10", count(n)),
            n,
            &capped,
            &raw,
            "tokio::spawn + join",
            Target::RatioAtLeast(0.30),
        ),
        // What recording `tracing` events per task costs: the same burst
        // with the capture off.
        rate_row(
            "B1",
            format!(
                "{} no-op async tasks, no cap, task_log_level(OFF)",
                count(n)
            ),
            n,
            &unlogged,
            &raw,
            "tokio::spawn + join",
            Target::Report,
        ),
    ])
}

// ---------------------------------------------------------------- B10, B11

/// B10: the same capped burst with tasks in 8 priorities, against no
/// priority: the price of ordering by priority.
async fn b10(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let n = scale.priority_tasks;
    let (mut plain, mut prioritised) = (Vec::new(), Vec::new());
    for _ in 0..scale.runs {
        let capped = || TaskManager::builder().max_concurrent_tasks(10);
        plain.push(timed_burst(capped(), n, |m| noop::call().enqueue_on(m)).await?);
        let next = std::sync::atomic::AtomicI16::new(0);
        prioritised.push(
            timed_burst(capped(), n, move |m| {
                let priority = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
                noop::call().priority(priority).enqueue_on(m)
            })
            .await?,
        );
    }
    let mut row = rate_row(
        "B10",
        format!(
            "{} no-op async tasks in 8 priorities, one queue, cap 10",
            count(n)
        ),
        n,
        &prioritised,
        &plain,
        "the same tasks, one priority",
        Target::RatioAtLeast(0.8),
    );
    row.ratio_meaning = "with priorities / without";
    Ok(vec![row])
}

/// B11: `n` tasks delayed evenly over one second, all waiting on one timer;
/// against `n` tokio tasks each sleeping until the same deadlines. Reports
/// the enqueue cost per delayed task and how late tasks start.
async fn b11(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let n = scale.delayed_tasks;
    let spread = Duration::from_secs(1);
    let (mut ours, mut theirs, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..scale.runs {
        // taskflow: one timer for every waiting task.
        LATENESS.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let manager = TaskManager::builder().build().await?;
        let driver = manager.clone();
        let cost = on_worker(async move {
            // A head start longer than the enqueueing takes, so no task is
            // due before every task is queued.
            let base = now_micros() + 250_000;
            let began = Instant::now();
            let handles = (0..n)
                .map(|i| {
                    let offset = spread.as_micros() as u64 * i as u64 / n as u64;
                    let at = base + offset;
                    due::call(at)
                        .run_at(std::time::UNIX_EPOCH + Duration::from_micros(at))
                        .enqueue_on(&driver)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let enqueued = began.elapsed();
            for handle in handles {
                handle.await?;
            }
            Ok::<_, BoxError>(enqueued)
        })
        .await?;
        manager.shutdown().await;
        costs.push(cost.as_secs_f64() * 1e6 / n as f64);
        ours.push(percentiles(
            &LATENESS.lock().unwrap_or_else(|p| p.into_inner()),
        ));

        // raw: a sleeping tokio task per deadline.
        let late = on_worker(async move {
            let base = now_micros() + 250_000;
            let origin = Instant::now();
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let offset = spread.as_micros() as u64 * i as u64 / n as u64;
                    let at = base + offset;
                    let deadline = origin + Duration::from_micros(at - base + 250_000);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(deadline.into()).await;
                        lateness(at)
                    })
                })
                .collect();
            let mut late = Vec::with_capacity(n);
            for handle in handles {
                late.push(handle.await?);
            }
            Ok::<_, BoxError>(late)
        })
        .await?;
        theirs.push(percentiles(&late));
    }
    let pick = |runs: &[(f64, f64, f64)], which: fn(&(f64, f64, f64)) -> f64| {
        median(&runs.iter().map(which).collect::<Vec<_>>())
    };
    let mut p99 = Row::new(
        "B11",
        format!("{} tasks delayed 0–1 s: start lateness p99", count(n)),
        Target::AtMost(Measure::Time(Duration::from_millis(5))),
    );
    let micros = |us: f64| Measure::Time(Duration::from_secs_f64(us / 1e6));
    p99.taskflow = Some(micros(pick(&ours, |r| r.1)));
    p99.raw = Some(micros(pick(&theirs, |r| r.1)));
    p99.raw_name = "a sleeping tokio task per deadline".to_owned();
    p99.note = format!(
        "lateness p50 {:.0} µs, max {:.0} µs (raw p50 {:.0} µs, max {:.0} µs); one timer task serves every delayed task",
        pick(&ours, |r| r.0),
        pick(&ours, |r| r.2),
        pick(&theirs, |r| r.0),
        pick(&theirs, |r| r.2),
    );
    let mut cost = Row::new(
        "B11",
        format!(
            "{} tasks delayed 0–1 s: enqueue cost per delayed task",
            count(n)
        ),
        Target::Report,
    );
    cost.taskflow = Some(micros(median(&costs)));
    cost.note = "wall time to enqueue them all, divided by their number".to_owned();
    Ok(vec![p99, cost])
}

/// p50, p99 and max of microsecond samples.
fn percentiles(samples: &[u64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0) as f64
    };
    (
        at(0.5),
        at(0.99),
        sorted.last().copied().unwrap_or(0) as f64,
    )
}

// ---------------------------------------------------------------- B2, B3

async fn bare_pool_noops(tasks: usize, threads: usize) -> Result<Duration, BoxError> {
    let pool = std::sync::Arc::new(raw::BarePool::new(threads)?);
    let driver = pool.clone();
    let elapsed = on_worker(async move {
        let start = Instant::now();
        let done: Vec<_> = (0..tasks).map(|_| driver.submit(|| {})).collect();
        for finished in done {
            finished.await?;
        }
        Ok(start.elapsed())
    })
    .await?;
    drop(pool);
    Ok(elapsed)
}

async fn b2(scale: &Scale, side: Option<&str>) -> Result<Vec<Row>, BoxError> {
    let n = scale.sync_tasks;
    let (mut ours, mut spawn_blocking, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    // `--side` runs one part alone for a profiler; the rest get dummies.
    let runs = |who: &str| side.is_none_or(|side| side.starts_with(who));
    let dummy = Duration::from_secs(1);
    for _ in 0..scale.runs {
        if runs("raw") {
            spawn_blocking.push(timed_joins(n, || tokio::task::spawn_blocking(|| {})).await?);
            bare.push(bare_pool_noops(n, 8).await?);
        } else {
            spawn_blocking.push(dummy);
            bare.push(dummy);
        }
        if runs("taskflow") {
            let builder = TaskManager::builder().max_sync_threads(8);
            ours.push(timed_burst(builder, n, |m| noop_blocking::call().enqueue_on(m)).await?);
        } else {
            ours.push(dummy);
        }
    }
    Ok(vec![
        rate_row(
            "B2",
            format!("{} no-op sync tasks, dedicated pool of 8", count(n)),
            n,
            &ours,
            &spawn_blocking,
            "spawn_blocking + join",
            Target::RatioAtLeast(5.0),
        ),
        rate_row(
            "B2",
            format!("{} no-op sync tasks, dedicated pool of 8", count(n)),
            n,
            &ours,
            &bare,
            "bare 8-thread std pool",
            Target::Report,
        ),
    ])
}

async fn b3(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let (n, threads, sleep) = (scale.sleepers, 8, 5);
    let ideal = Duration::from_millis(n.div_ceil(threads) as u64 * sleep);
    let mut ours = Vec::new();
    for _ in 0..scale.runs {
        let builder = TaskManager::builder().max_sync_threads(threads);
        ours.push(timed_burst(builder, n, move |m| nap::call(sleep).enqueue_on(m)).await?);
    }
    let measured = median_time(&ours);
    let mut row = Row::new(
        "B3",
        format!("{n} sync tasks sleeping {sleep} ms, 8 threads"),
        Target::RatioAtLeast(0.95),
    );
    row.taskflow = Some(Measure::Time(measured));
    row.raw = Some(Measure::Time(ideal));
    row.raw_name = "ideal".to_owned();
    row.ratio_meaning = "ideal / measured time";
    row.ratio = Some(ideal.as_secs_f64() / measured.as_secs_f64());
    row.samples = ours
        .iter()
        .map(|t| (t.as_secs_f64(), ideal.as_secs_f64()))
        .collect();
    row.note = format!("runs {}", spread(&ours));
    Ok(vec![row])
}

// ---------------------------------------------------------------- B4, B5, B6

async fn process_manager(workers: usize) -> Result<TaskManager, BoxError> {
    let manager = TaskManager::builder()
        .max_process_workers(workers)
        .build()
        .await?;
    manager.prewarm().await?;
    Ok(manager)
}

async fn process_echoes(tasks: usize) -> Result<Duration, BoxError> {
    let manager = process_manager(2).await?;
    let driver = manager.clone();
    let elapsed = on_worker(async move {
        // A first round trip on each worker, as the raw children get.
        let warm = [
            echo::call(0).enqueue_on(&driver)?,
            echo::call(1).enqueue_on(&driver)?,
        ];
        for handle in warm {
            handle.await?;
        }
        let start = Instant::now();
        let handles = (0..tasks as u64)
            .map(|n| echo::call(n).enqueue_on(&driver))
            .collect::<Result<Vec<_>, _>>()?;
        for (n, handle) in handles.into_iter().enumerate() {
            if handle.await? != n as u64 {
                return Err("echo answered wrongly".into());
            }
        }
        Ok(start.elapsed())
    })
    .await?;
    manager.shutdown().await;
    Ok(elapsed)
}

async fn process_latency(rounds: usize) -> Result<Vec<Duration>, BoxError> {
    let manager = process_manager(1).await?;
    let driver = manager.clone();
    let samples = on_worker(async move {
        for n in 0..100 {
            echo::call(n).enqueue_on(&driver)?.await?;
        }
        let mut samples = Vec::with_capacity(rounds);
        for n in 0..rounds as u64 {
            let start = Instant::now();
            echo::call(n).enqueue_on(&driver)?.await?;
            samples.push(start.elapsed());
        }
        Ok(samples)
    })
    .await?;
    manager.shutdown().await;
    Ok(samples)
}

async fn b4(scale: &Scale, side: Option<&str>) -> Result<Vec<Row>, BoxError> {
    let n = scale.process_tasks;
    let rounds = scale.latency_rounds;
    let (mut ours, mut threads, mut tokio_raw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_latency, mut thread_latency, mut tokio_latency) =
        (Vec::new(), Vec::new(), Vec::new());
    // `--side` runs one part alone for a profiler; the rest get dummies.
    let runs = |who: &str, what: &str| {
        side.is_none_or(|side| side.starts_with(who) && !side.ends_with(what))
    };
    let dummy = Duration::from_secs(1);
    for _ in 0..scale.runs {
        if runs("raw", "latency") {
            threads.push(blocking(move || Ok(raw::echo_threads(2, n)?)).await?);
            tokio_raw.push(raw::echo_tokio(2, n).await?);
        } else {
            threads.push(dummy);
            tokio_raw.push(dummy);
        }
        if runs("taskflow", "latency") {
            ours.push(process_echoes(n).await?);
        } else {
            ours.push(dummy);
        }
        if runs("raw", "throughput") {
            thread_latency.push(median_time(
                &blocking(move || Ok(raw::latency_threads(rounds)?)).await?,
            ));
            tokio_latency.push(median_time(&raw::latency_tokio(rounds).await?));
        } else {
            thread_latency.push(dummy);
            tokio_latency.push(dummy);
        }
        if runs("taskflow", "throughput") {
            our_latency.push(median_time(&process_latency(rounds).await?));
        } else {
            our_latency.push(dummy);
        }
    }
    // The faster raw version is the baseline.
    let (raw_times, raw_name) = if median_time(&threads) <= median_time(&tokio_raw) {
        (&threads, "pipe echo, thread per child")
    } else {
        (&tokio_raw, "pipe echo, tokio")
    };
    let mut throughput = rate_row(
        "B4",
        format!("{} tiny process tasks, 2 workers", count(n)),
        n,
        &ours,
        raw_times,
        raw_name,
        Target::RatioAtLeast(0.50),
    );
    throughput.note = format!(
        "{}; raw thread-per-child {}, raw tokio {}",
        throughput.note,
        Measure::Rate(rate(n, median_time(&threads))).text(),
        Measure::Rate(rate(n, median_time(&tokio_raw))).text(),
    );

    let (raw_latency, raw_name) = if median_time(&thread_latency) <= median_time(&tokio_latency) {
        (&thread_latency, "pipe round trip, blocking")
    } else {
        (&tokio_latency, "pipe round trip, tokio")
    };
    let (ours_median, raw_median) = (median_time(&our_latency), median_time(raw_latency));
    let mut latency = Row::new(
        "B4",
        "one-worker sequential latency (median per task)",
        Target::RatioAtMost(3.0),
    );
    latency.taskflow = Some(Measure::Time(ours_median));
    latency.raw = Some(Measure::Time(raw_median));
    latency.raw_name = raw_name.to_owned();
    latency.ratio_meaning = "taskflow / raw latency";
    latency.ratio = Some(ours_median.as_secs_f64() / raw_median.as_secs_f64());
    latency.samples = our_latency
        .iter()
        .zip(raw_latency)
        .map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64()))
        .collect();
    latency.note = format!(
        "{rounds} round trips per run; raw blocking {}, raw tokio {}",
        report::duration_text(median_time(&thread_latency)),
        report::duration_text(median_time(&tokio_latency)),
    );
    Ok(vec![throughput, latency])
}

/// The number of `crunch` rounds that take about `target` here.
fn calibrate(target: Duration) -> u32 {
    let probe = 200;
    let fastest = (0..3)
        .map(|_| {
            let start = Instant::now();
            crunch(probe);
            start.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1));
    ((target.as_secs_f64() / fastest.as_secs_f64()) * f64::from(probe)) as u32
}

async fn b5(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let target = scale.cpu_task;
    let rounds = blocking(move || Ok(calibrate(target))).await?;
    let (mut ours, mut ideal, mut two_threads) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..scale.runs {
        // One task's time, run directly on one thread of this process.
        let one = blocking(move || {
            let start = Instant::now();
            crunch(rounds);
            Ok(start.elapsed())
        })
        .await?;
        ideal.push(one * 4);
        // What two threads of this process do with the same 8 tasks: the
        // machine's own ceiling for two-way parallelism.
        two_threads.push(
            blocking(move || {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for _ in 0..2 {
                        scope.spawn(move || {
                            (0..4).for_each(|_| {
                                crunch(rounds);
                            })
                        });
                    }
                });
                Ok(start.elapsed())
            })
            .await?,
        );
        let manager = process_manager(2).await?;
        let driver = manager.clone();
        ours.push(
            on_worker(async move {
                let start = Instant::now();
                let handles = (0..8)
                    .map(|_| crunch::call(rounds).enqueue_on(&driver))
                    .collect::<Result<Vec<_>, _>>()?;
                for handle in handles {
                    handle.await?;
                }
                Ok(start.elapsed())
            })
            .await?,
        );
        manager.shutdown().await;
    }
    let (measured, ideal_median) = (median_time(&ours), median_time(&ideal));
    let mut row = Row::new(
        "B5",
        format!(
            "8 CPU-bound process tasks of ~{} ms, 2 workers",
            target.as_millis()
        ),
        Target::RatioAtLeast(0.95),
    );
    row.taskflow = Some(Measure::Time(measured));
    row.raw = Some(Measure::Time(ideal_median));
    row.raw_name = "ideal = 4 × one task".to_owned();
    row.ratio_meaning = "ideal / measured time";
    row.ratio = Some(ideal_median.as_secs_f64() / measured.as_secs_f64());
    row.samples = ours
        .iter()
        .zip(&ideal)
        .map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64()))
        .collect();
    let ceiling = median_time(&two_threads);
    row.note = format!(
        "one task {} ({rounds} rounds); runs {}; the same 8 tasks on 2 threads of this process: {} (ideal / that = {:.2})",
        report::duration_text(ideal_median / 4),
        spread(&ours),
        report::duration_text(ceiling),
        ideal_median.as_secs_f64() / ceiling.as_secs_f64(),
    );
    Ok(vec![row])
}

async fn cold_start() -> Result<Duration, BoxError> {
    let start = Instant::now();
    let manager = TaskManager::builder()
        .max_process_workers(2)
        .build()
        .await?;
    let value = echo::call(7).enqueue_on(&manager)?.await?;
    let elapsed = start.elapsed();
    manager.shutdown().await;
    if value != 7 {
        return Err("echo answered wrongly".into());
    }
    Ok(elapsed)
}

async fn b6(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..scale.cold_starts {
        raw.push(blocking(|| Ok(raw::cold_start()?)).await?);
        ours.push(cold_start().await?);
    }
    let (ours_median, raw_median) = (median_time(&ours), median_time(&raw));
    let mut row = Row::new(
        "B6",
        "cold start: build() → first process task's result",
        Target::AtMost(Measure::Time(Duration::from_millis(3))),
    );
    row.taskflow = Some(Measure::Time(ours_median));
    row.raw = Some(Measure::Time(raw_median));
    row.raw_name = "spawn + greeting + 1 echo, bare child".to_owned();
    row.ratio_meaning = "taskflow / raw time";
    row.ratio = Some(ours_median.as_secs_f64() / raw_median.as_secs_f64());
    row.samples = ours
        .iter()
        .zip(&raw)
        .map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64()))
        .collect();
    row.note = format!(
        "{} starts; taskflow {}, raw {}",
        ours.len(),
        spread(&ours),
        spread(&raw)
    );
    Ok(vec![row])
}

// ---------------------------------------------------------------- B8, B9

async fn b8(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let n = scale.persisted_tasks;
    let (mut acknowledged, mut written, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..scale.runs {
        let dir = tempfile::tempdir()?;
        let raw_path = persistence::raw_file(dir.path()).await?;
        raw.push(blocking(move || persistence::raw_inserts(&raw_path, n)).await?);
        let run = persistence::taskflow(dir.path(), n).await?;
        acknowledged.push(run.acknowledged);
        written.push(run.success_written);
    }
    let raw_name = "batched raw inserts, same schema";
    Ok(vec![
        rate_row(
            "B8",
            format!(
                "{} tasks with snapshot_db: durably acknowledged enqueues",
                count(n)
            ),
            n,
            &acknowledged,
            &raw,
            raw_name,
            Target::RatioAtLeast(0.25),
        ),
        rate_row(
            "B8",
            format!(
                "{} tasks with snapshot_db: enqueue→SUCCESS written",
                count(n)
            ),
            n,
            &written,
            &raw,
            raw_name,
            Target::RatioAtLeast(0.25),
        ),
    ])
}

async fn b9(scale: &Scale) -> Result<Vec<Row>, BoxError> {
    let n = scale.memory_tasks;
    let mut rows = Vec::new();
    for (held, label, limit) in [
        (memory::Held::Pending, "in flight (PENDING)", 1024.0),
        (memory::Held::Finished, "finished record held", 512.0),
    ] {
        let mut runs = Vec::new();
        for _ in 0..scale.memory_runs {
            runs.push(memory::measure(held, n).await?);
        }
        let heap = median(&runs.iter().map(|r| r.heap).collect::<Vec<_>>());
        let blocks = median(&runs.iter().map(|r| r.blocks).collect::<Vec<_>>());
        let resident = median(&runs.iter().map(|r| r.resident).collect::<Vec<_>>());
        let mut live = Row::new(
            "B9",
            format!("memory per task, {label}, at {} tasks: live heap", count(n)),
            Target::AtMost(Measure::Bytes(limit)),
        );
        live.taskflow = Some(Measure::Bytes(heap));
        live.samples = runs.iter().map(|r| (r.heap, r.blocks)).collect();
        live.note = format!(
            "bytes live in the allocator per task, {blocks:.2} allocations per task; by size class (first run): {}",
            runs.first().map_or("—", |r| r.sizes.as_str())
        );
        let mut rss = Row::new(
            "B9",
            format!(
                "memory per task, {label}, at {} tasks: resident set growth",
                count(n)
            ),
            Target::AtMost(Measure::Bytes(limit)),
        );
        rss.taskflow = Some(Measure::Bytes(resident));
        rss.samples = runs.iter().map(|r| (r.resident, 0.0)).collect();
        rss.note = "VmRSS growth per task: the live heap plus malloc's per-chunk overhead and memory freed but kept by malloc".to_owned();
        rows.extend([live, rss]);
    }
    // A control for the finished figure: sync tasks' records hold no tokio
    // task handle.
    let control = memory::measure(memory::Held::FinishedSync, n).await?;
    if let Some(finished) = rows.get_mut(2) {
        finished.note = format!(
            "{}; control: a finished *sync* task's record, which holds no tokio task handle, is {:.0} B live heap ({})",
            finished.note, control.heap, control.sizes
        );
    }
    Ok(rows)
}

// ---------------------------------------------------------------- main

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|load| {
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[taskflow::main]
async fn main() -> Result<(), BoxError> {
    // Before anything else: this process may be one of the benchmark's own
    // children (taskflow's workers never get here).
    match std::env::var(raw::CHILD_ENV).as_deref() {
        Ok("echo") => raw::serve_echo(),
        Ok(spec) if spec.starts_with("memory:") => {
            return memory::child(&spec["memory:".len()..]).await;
        }
        Ok("pg-host") => return postgres::host().await,
        _ => {}
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let scale = Scale::new(&options);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Other load on the machine skews every figure: say how much there was.
    let load_start = load_average();
    println!(
        "taskflow bench: {} mode, {} run(s) per figure, {cores} cores, {}, load average {load_start}",
        if options.quick { "quick" } else { "full" },
        scale.runs,
        cpu_model()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut failures = 0;
    // B6 first, while this process is small: a worker is started with
    // fork(), whose cost grows with the parent's mapped memory.
    let order = [
        "B6", "B1", "B2", "B3", "B4", "B5", "B8", "B10", "B11", "B12", "B13", "B14", "B9",
    ];
    for id in order {
        if !options.wants(id) {
            continue;
        }
        let started = Instant::now();
        let result = match id {
            "B1" => b1(&scale).await,
            "B2" => b2(&scale, options.side.as_deref()).await,
            "B3" => b3(&scale).await,
            "B4" => b4(&scale, options.side.as_deref()).await,
            "B5" => b5(&scale).await,
            "B6" => b6(&scale).await,
            "B8" => b8(&scale).await,
            "B10" => b10(&scale).await,
            "B11" => b11(&scale).await,
            "B13" => {
                let (n, seconds) = scale.schedules;
                schedules::b13(n, seconds, scale.runs.min(3)).await
            }
            "B14" => {
                let (rows, requests, tasks) = scale.admin;
                admin::b14(rows, requests, tasks, scale.runs.min(3)).await
            }
            "B12" => {
                postgres::b12(
                    scale.pg_tasks,
                    scale.pg_probes,
                    scale.runs,
                    options.side.as_deref(),
                )
                .await
            }
            _ => b9(&scale).await,
        };
        match result {
            Ok(done) => rows.extend(done),
            Err(error) => {
                failures += 1;
                eprintln!("{id} failed: {error}");
                rows.push(Row::pending(id, id, format!("failed: {error}")));
            }
        }
        eprintln!("{id} done in {:.1?}", started.elapsed());
    }
    if options.wants("B7") {
        rows.push(Row::pending(
            "B7",
            "burst latency",
            "measured by `cargo run --release --example burst_latency`".to_owned(),
        ));
    }
    rows.sort_by_key(|row| row.id);
    let load_end = load_average();

    println!("\n{}", report::text(&rows));
    println!("load average at the end: {load_end}");
    if let Some(path) = &options.markdown {
        std::fs::write(path, report::markdown(&rows))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &options.json {
        let context = serde_json::json!({
            "mode": if options.quick { "quick" } else { "full" },
            "runs": scale.runs,
            "cores": cores,
            "cpu": cpu_model(),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let json = serde_json::to_string_pretty(&report::json(&rows, context))?;
        std::fs::write(path, json + "\n")?;
        println!("wrote {}", path.display());
    }
    if failures > 0 {
        return Err(format!("{failures} workload(s) failed").into());
    }
    Ok(())
}
