use taskflow::task;

struct Report {
    pages: u32,
}

#[task]
async fn build(pages: u32) -> Report {
    Report { pages }
}

// The companion is still emitted, and its call sites add no error of their own.
#[allow(dead_code)]
fn call_sites() {
    let _ = build::enqueue(3);
    let _ = build::call(3).tag("kind", "monthly");
}

fn main() {}
