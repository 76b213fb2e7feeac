use taskflow::task;

#[task(cron = "0 9 * * MON-FRI", timezone = "Europe/Pariss")]
async fn weekday_report() {}

fn main() {}
