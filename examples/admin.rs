//! The admin API in an axum service: tasks that fail, retry and log, and
//! the router nested at `/tasks` beside the service's own routes.
//!
//! ```text
//! cargo run --example admin
//! ```
//!
//! It prints the dashboard's URL and a token (set `TASKFLOW_ADMIN_TOKEN` to
//! choose one): log in as `admin` with the token as password, or send it as
//! a bearer token. It enqueues a few tasks every two seconds until Ctrl-C.
//! Try the `curl` lines it prints too: failed tasks with their errors and
//! logs, one task with its arguments, metrics, a retry of every failure,
//! the live stream.

use std::time::Duration;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use taskflow::admin::{self, AdminConfig};
use taskflow::{LogLevel, TaskManager, task};

/// Fails its first attempt for odd orders, then succeeds.
#[task(retries = 2, delay = "300ms", backoff = 2.0)]
async fn send_receipt(order: u64) -> Result<String, String> {
    let attempt = taskflow::context().map_or(0, |context| context.attempt);
    taskflow::log(LogLevel::Info, format!("order {order}: attempt {attempt}"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    if order % 2 == 1 && attempt == 0 {
        taskflow::log(LogLevel::Warn, "mail server busy; retrying");
        return Err(format!("order {order}: mail server busy"));
    }
    Ok(format!("receipt for order {order} sent"))
}

/// Always fails: something for "retry all failed" to act on.
#[task(retries = 1, delay = "200ms")]
async fn sync_crm(order: u64) -> Result<(), String> {
    taskflow::log(LogLevel::Error, format!("order {order}: CRM said 503"));
    Err(format!("order {order}: CRM unavailable"))
}

/// A plain function on the sync pool.
#[task]
fn thumbnail(image: u64) -> u64 {
    taskflow::log(LogLevel::Debug, format!("image {image}: resizing"));
    std::thread::sleep(Duration::from_millis(100));
    image * 2
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    taskflow::init();
    let tasks = TaskManager::builder()
        .max_concurrent_tasks(8)
        .max_sync_threads(2)
        .build()
        .await?;
    let token = match std::env::var("TASKFLOW_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => token,
        _ => random_token()?,
    };
    // A lighter work factor than `hash_password`'s, so logging in to an
    // unoptimized build of this example stays quick.
    let hash = admin::hash_password_with_rounds(&token, 50_000)?;
    let config = AdminConfig::new()
        .bearer_token("operator", &token)
        .user("admin", &hash)?
        // Off by default, since arguments can hold personal data; this
        // example's are order numbers, shown in each task's detail.
        .show_arguments(true);
    let app = Router::new()
        .route("/", get(|| async { "the service itself\n" }))
        .nest("/tasks", admin::router(&tasks, config))
        // The nested router answers `/tasks`; send `/tasks/` there too.
        .route("/tasks/", get(|| async { Redirect::permanent("/tasks") }));

    let listener = match tokio::net::TcpListener::bind("127.0.0.1:8080").await {
        Ok(listener) => listener,
        // Port taken: any free one.
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let base = format!("http://{}/tasks", listener.local_addr()?);
    println!("taskflow dashboard at {base}/ (user admin, password: the token)");
    println!("token: {token}");
    println!();
    println!("  curl -H 'Authorization: Bearer {token}' '{base}/api/tasks?status=FAILED'");
    println!(
        "  curl -H 'Authorization: Bearer {token}' {base}/api/tasks/<id>   # with its arguments"
    );
    println!("  curl -H 'Authorization: Bearer {token}' {base}/api/metrics");
    println!("  curl -N -H 'Authorization: Bearer {token}' {base}/events");
    println!(
        "  curl -X POST -H 'Authorization: Bearer {token}' -H '{}: 1' \\\n    \
         -H 'Content-Type: application/json' -d '{{\"created_after\": \"2000-01-01T00:00:00Z\"}}' \\\n    \
         {base}/api/tasks/retry-failed",
        admin::CSRF_HEADER
    );
    println!("  OpenAPI document: {base}/openapi.json");
    println!("Ctrl-C stops.");

    let producer = tasks.clone();
    let produce = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        for order in 1u64.. {
            ticker.tick().await;
            let enqueued = [
                send_receipt::call(order)
                    .enqueue_on(&producer)
                    .map(|h| h.id()),
                thumbnail::call(order).enqueue_on(&producer).map(|h| h.id()),
            ];
            let crm = (order % 3 == 0).then(|| sync_crm::call(order).enqueue_on(&producer));
            if enqueued.iter().any(Result::is_err) || matches!(crm, Some(Err(_))) {
                break; // shut down
            }
        }
    });

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    produce.abort();
    let report = tasks.shutdown().await;
    println!("stopped: {report:?}");
    Ok(())
}
