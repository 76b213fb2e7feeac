use taskflow::task;

#[task(retries = 3, delay = "100ms", backoff = 0.5)]
async fn ping() {}

// With bad options the function and its companion are still emitted, with
// defaults, so call sites keep compiling while the attribute is fixed.
#[allow(dead_code)]
fn call_sites() {
    let _ = ping();
    let _ = ping::enqueue();
    let _ = ping::NAME;
}

fn main() {}
