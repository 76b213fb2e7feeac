use taskflow::task;

// The body is not the attribute's to parse: the compiler's own error is the
// only one, and the function and its companion are still there.
#[task]
async fn ping(n: u32) -> u32 {
    let doubled = n * ;
    doubled
}

#[allow(dead_code)]
fn call_sites() {
    let _ = ping(1);
    let _ = ping::enqueue(1);
    let _ = ping::NAME;
}

fn main() {}
