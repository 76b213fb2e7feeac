use taskflow::task;

#[task(timeout = "30s")]
fn crunch(n: u64) -> u64 {
    n * 2
}

// With bad options the function and its companion are still emitted, with
// defaults, so call sites keep compiling while the attribute is fixed.
#[allow(dead_code)]
fn call_sites() {
    let _ = crunch(2);
    let _ = crunch::enqueue(2);
}

fn main() {}
