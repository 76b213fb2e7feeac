//! B13: many schedules on one process. `n` schedules each fire every
//! second for a window of `seconds`; how late each fire is (the task's
//! creation against its tick) and the process's CPU time per fire, in
//! memory and with a SQLite store; against a tokio task per schedule
//! sleeping until each whole second.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskflow::{Schedule, TaskFilter, TaskManager, task};

use crate::report::{Measure, Row, Target, median};
use crate::{BoxError, count, percentiles};

/// What each tick enqueues.
#[task]
async fn scheduled_noop(_schedule: u32) {}

/// CPU time this process has used (user and system), from
/// `/proc/self/stat` in clock ticks of 10 ms (`USER_HZ` on Linux).
pub(crate) fn cpu_time() -> Option<Duration> {
    cpu_time_of("/proc/self/stat")
}

/// CPU time (user and system) from a `stat` file of `/proc`: a process's,
/// or one thread's (`/proc/self/task/<tid>/stat`).
pub(crate) fn cpu_time_of(stat: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15; 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The next whole second after `at`.
fn next_second(at: SystemTime) -> SystemTime {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs + 1)
}

async fn sleep_until(at: SystemTime) {
    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait).await;
}

/// One run: fire lateness samples (µs), fires counted, CPU per fire.
async fn run(
    n: usize,
    seconds: u64,
    store: Option<&std::path::Path>,
) -> Result<(Vec<u64>, usize, Duration), BoxError> {
    let mut builder = TaskManager::builder().max_finished_in_memory(n * (seconds as usize + 4));
    if let Some(path) = store {
        builder = builder.snapshot_db(path);
    }
    let manager = builder.build().await?;
    let every = Schedule::every(Duration::from_secs(1))?;
    for i in 0..n {
        manager
            .add_schedule(
                &format!("b13-{i}"),
                every.clone(),
                scheduled_noop::call(i as u32),
            )
            .await?;
    }
    // The window starts at a whole second after everything is in place.
    let start = next_second(SystemTime::now() + Duration::from_millis(500));
    let end = start + Duration::from_secs(seconds);
    sleep_until(start - Duration::from_millis(1)).await;
    let cpu_before = cpu_time();
    sleep_until(end - Duration::from_millis(1)).await;
    let cpu_after = cpu_time();
    // Let the last fires land before reading them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = manager
        .list(&TaskFilter::new().run_after(start).run_before(end))
        .await?;
    let mut late = Vec::with_capacity(records.len());
    for record in &records {
        if let Some(tick) = &record.scheduled {
            let lateness = record
                .created_at
                .duration_since(tick.at)
                .unwrap_or_default();
            late.push(lateness.as_micros() as u64);
        }
    }
    manager.shutdown().await;
    let fires = late.len();
    let cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if fires > 0 => (after - before) / fires as u32,
        _ => Duration::ZERO,
    };
    Ok((late, fires, cpu))
}

/// The baseline: a tokio task per schedule sleeping until each whole
/// second; lateness samples (µs) and CPU per wake.
async fn raw(n: usize, seconds: u64) -> Result<(Vec<u64>, Duration), BoxError> {
    let start = next_second(SystemTime::now() + Duration::from_millis(500));
    let cpu_before = cpu_time();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut late = Vec::with_capacity(seconds as usize);
                for second in 0..seconds {
                    let tick = start + Duration::from_secs(second);
                    sleep_until(tick).await;
                    let lateness = SystemTime::now().duration_since(tick).unwrap_or_default();
                    late.push(lateness.as_micros() as u64);
                }
                late
            })
        })
        .collect();
    let mut late = Vec::with_capacity(n * seconds as usize);
    for handle in handles {
        late.extend(handle.await?);
    }
    let cpu = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) if !late.is_empty() => (after - before) / late.len() as u32,
        _ => Duration::ZERO,
    };
    Ok((late, cpu))
}

pub(crate) async fn b13(n: usize, seconds: u64, runs: usize) -> Result<Vec<Row>, BoxError> {
    let dir = tempfile::tempdir()?;
    let (mut memory, mut sqlite, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for run_index in 0..runs {
        let began = Instant::now();
        let (late, fires, cpu) = run(n, seconds, None).await?;
        memory.push((percentiles(&late), fires, cpu));
        let path = dir.path().join(format!("b13-{run_index}.db"));
        let (late, fires, cpu) = run(n, seconds, Some(&path)).await?;
        sqlite.push((percentiles(&late), fires, cpu));
        let (late, cpu) = raw(n, seconds).await?;
        baseline.push((percentiles(&late), cpu));
        eprintln!("B13 run {run_index} in {:.1?}", began.elapsed());
    }
    let micros = |us: f64| Measure::Time(Duration::from_secs_f64(us / 1e6));
    let raw_p99 = median(&baseline.iter().map(|(p, _)| p.1).collect::<Vec<_>>());
    let raw_cpu = median(
        &baseline
            .iter()
            .map(|(_, c)| c.as_secs_f64())
            .collect::<Vec<_>>(),
    );
    let expected = n * seconds as usize;
    let mut rows = Vec::new();
    for (label, results) in [("in memory", &memory), ("SQLite store", &sqlite)] {
        let p99 = median(&results.iter().map(|(p, _, _)| p.1).collect::<Vec<_>>());
        let p50 = median(&results.iter().map(|(p, _, _)| p.0).collect::<Vec<_>>());
        let max = median(&results.iter().map(|(p, _, _)| p.2).collect::<Vec<_>>());
        let fires = median(
            &results
                .iter()
                .map(|(_, f, _)| *f as f64)
                .collect::<Vec<_>>(),
        );
        let cpu = median(
            &results
                .iter()
                .map(|(_, _, c)| c.as_secs_f64())
                .collect::<Vec<_>>(),
        );
        let mut lateness = Row::new(
            "B13",
            format!(
                "{} schedules every 1 s for {seconds} s, {label}: fire lateness p99",
                count(n)
            ),
            Target::Report,
        );
        lateness.taskflow = Some(micros(p99));
        lateness.raw = Some(micros(raw_p99));
        lateness.raw_name = "a tokio task per schedule sleeping to each second".to_owned();
        lateness.note = format!(
            "task created after its tick: p50 {:.0} µs, max {:.0} µs; {fires:.0} of {expected} ticks fired in the window",
            p50, max
        );
        rows.push(lateness);
        let mut per_fire = Row::new(
            "B13",
            format!("{} schedules every 1 s, {label}: CPU per fire", count(n)),
            Target::Report,
        );
        per_fire.taskflow = Some(Measure::Time(Duration::from_secs_f64(cpu)));
        per_fire.raw = Some(Measure::Time(Duration::from_secs_f64(raw_cpu)));
        per_fire.raw_name = "CPU per wake of a sleeping tokio task".to_owned();
        per_fire.note = "process user + system CPU over the window (10 ms ticks), divided by the fires; the task's run included".to_owned();
        rows.push(per_fire);
    }
    Ok(rows)
}
