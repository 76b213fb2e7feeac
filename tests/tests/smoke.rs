//! smoke
use std::time::Duration;

use taskflow::{TaskManager, TaskStatus, task};

#[task]
async fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[task]
fn mul(a: u32, b: u32) -> u32 {
    a * b
}

#[task(retries = 2, delay = "10ms")]
async fn flaky(fail_times: u32) -> Result<u32, String> {
    let ctx = taskflow::context().expect("inside a task");
    if ctx.attempt < fail_times {
        Err(format!("attempt {} failed", ctx.attempt))
    } else {
        Ok(ctx.attempt)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let m = TaskManager::builder()
        .max_concurrent_tasks(2)
        .max_sync_threads(2)
        .build()
        .await
        .unwrap();
    let h = add::call(1, 2).enqueue_on(&m).unwrap();
    assert_eq!(h.await.unwrap(), 3);
    let h = mul::call(3, 4).enqueue_on(&m).unwrap();
    let id = h.id();
    assert_eq!(h.await.unwrap(), 12);
    assert_eq!(m.get(id).unwrap().status, TaskStatus::Success);
    let h = flaky::call(1).enqueue_on(&m).unwrap();
    assert_eq!(h.await.unwrap(), 1);
    let h = flaky::call(5).enqueue_on(&m).unwrap();
    let id = h.id();
    let e = h.await.unwrap_err();
    assert_eq!(e.message(), "attempt 2 failed");
    assert_eq!(m.get(id).unwrap().attempts, 3);
    println!("{:?}", m.metrics());
    let r = m.shutdown().await;
    println!("{r:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
