use taskflow::task;

#[task(queue = "", retries = 3)]
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
