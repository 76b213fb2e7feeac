use taskflow::task;

#[task(cron = "0 9 * * FUNDAY", timezone = "Europe/Paris")]
async fn weekday_report() {}

// The function and its companion are still emitted.
#[allow(dead_code)]
fn call_sites() {
    let _ = weekday_report::enqueue();
}

fn main() {}
