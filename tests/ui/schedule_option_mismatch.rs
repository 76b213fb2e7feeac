use taskflow::task;

#[task(every = "5m", cron = "0 * * * *")]
async fn both() {}

#[task(every = "5m", timezone = "Europe/Paris")]
async fn zone_without_cron() {}

#[task(run_on_start = true, catch_up = "skip")]
async fn not_scheduled() {}

#[task(every = "1ms", catch_up = "all")]
async fn too_fast() {}

fn main() {}
