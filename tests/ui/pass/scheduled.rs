//! Scheduled tasks: a period, a cron expression in a time zone, with every
//! schedule option, on each executor, with resources.
use taskflow::{Resource, task};

pub struct Db;

#[task(every = "5m")]
async fn cleanup(db: Resource<Db>) {
    let _ = db;
}

#[task(
    cron = "0 9 * * MON-FRI",
    timezone = "Europe/Paris",
    run_on_start = true,
    catch_up = "skip",
    queue = "reports",
    retries = 2
)]
fn weekday_report() -> u64 {
    42
}

#[task(cron = "*/10 * * * * *", executor = "process", catch_up = "one")]
fn every_ten_seconds() {}

#[task(every = "200ms", run_on_start = false, name = "jobs::heartbeat")]
async fn heartbeat() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = (cleanup::NAME, weekday_report::NAME, every_ten_seconds::NAME, heartbeat::NAME);
}
