//! Every option at once, on each executor that accepts it.
use taskflow::task;

#[task(
    name = "reports::render",
    executor = "async",
    retries = 3,
    delay = "500ms",
    backoff = 2.0,
    timeout = "2m",
    persist = true,
    requeue_on_interrupt = true,
    queue = "reports",
    priority = 10
)]
pub async fn render(id: u64) -> Vec<u8> {
    id.to_le_bytes().to_vec()
}

#[task(
    name = "reports::crunch",
    executor = "thread",
    retries = 2,
    delay = "1s 500ms",
    backoff = 1,
    queue = "batch jobs: nightly",
    priority = -32768
)]
fn crunch(n: u64) -> u64 {
    n * 2
}

#[task(
    executor = "process",
    retries = 1,
    delay = "10ms",
    backoff = 1.5,
    timeout = "30s",
    queue = "cpu",
    priority = 32767
)]
fn heavy(n: u64) -> u64 {
    n * n
}

fn main() {
    assert_eq!(render::NAME, "reports::render");
    assert_eq!(crunch::NAME, "reports::crunch");
    assert!(heavy::NAME.ends_with("::heavy"));
    assert_eq!(crunch(2), 4);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    assert_eq!(runtime.block_on(render(1)), vec![1, 0, 0, 0, 0, 0, 0, 0]);
}
