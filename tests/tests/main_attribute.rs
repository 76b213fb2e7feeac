//! `#[taskflow::main]` as an application uses it: worker processes enter
//! worker mode before the body runs, build their resources with the
//! registered initializer, and never reach the body.

use taskflow::{Resource, Resources, TaskManager, task};

#[derive(Debug)]
struct Label(&'static str);

#[task(executor = "process")]
fn describe(n: u32, label: Resource<Label>) -> (String, u32) {
    (format!("{} {n}", label.0), std::process::id())
}

fn worker_resources(resources: &mut Resources) {
    resources.insert(Label("worker-built"));
}

#[taskflow::main(flavor = "current_thread", resources = worker_resources)]
async fn main() {
    let tasks = TaskManager::builder()
        .max_process_workers(1)
        .build()
        .await
        .expect("builds");
    let (text, pid) = describe::call(7)
        .enqueue_on(&tasks)
        .expect("enqueued")
        .await
        .expect("ran");
    assert_eq!(text, "worker-built 7");
    assert_ne!(
        pid,
        std::process::id(),
        "the task ran in a worker, not in main"
    );
    tasks.shutdown().await;
    assert!(tasks.worker_pids().is_empty());
    println!("test main_attribute ... ok");
}
