//! The admin dashboard in a real browser: headless Chromium driven over
//! WebDriver (`chromedriver`), against the router served on 127.0.0.1 and
//! nested at `/tasks`. Each step reads like what a person does: open the
//! page, log in, watch a task go from PENDING to SUCCESS without reloading,
//! open a failed task and read its error, logs and arguments, retry it and
//! see the new task, filter the table, pause a queue and see it hold its
//! task, use it in a narrow window, and find arguments hidden where the
//! configuration does not show them. A screenshot of the main view is written to
//! `target/admin-dashboard.png`.
//!
//! Without `chromedriver` on the machine the test is skipped with a message;
//! with `TASKFLOW_REQUIRE_BROWSER=1` (as `.ci/run` sets) it fails instead.

// The helpers below are test code too: a failed step fails the test.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use taskflow::admin::{self, AdminConfig};
use taskflow::{LogLevel, QueueConfig, TaskManager, TaskStatus, task};
use taskflow_tests::{Latch, PATIENCE, wait_for_status, within};

#[task]
async fn watched() -> bool {
    WATCHED_RELEASE.wait().await
}

static WATCHED_RELEASE: Latch = Latch::new();

#[task]
async fn report(n: u32) -> u32 {
    n
}

#[task]
async fn broken(n: u32) -> Result<(), String> {
    let attempt = taskflow::context().expect("inside a task").attempt;
    taskflow::log(
        LogLevel::Warn,
        format!("broken {n} tried attempt {attempt}"),
    );
    Err(format!("broken {n}: the upstream answered 502"))
}

/// `chromedriver` on a free loopback port, in a process group of its own
/// with the browser it starts: the whole group is killed, and chromedriver
/// reaped, on drop, even when a step failed before the session closed.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let killed = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        if !killed.is_ok_and(|status| status.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<String> {
    let candidates = [
        "chromedriver",
        "/usr/bin/chromedriver",
        "/usr/lib/chromium/chromedriver",
    ];
    candidates
        .into_iter()
        .find(|program| {
            Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .map(str::to_owned)
}

async fn start_driver() -> Option<Driver> {
    let required = std::env::var("TASKFLOW_REQUIRE_BROWSER").is_ok_and(|value| value == "1");
    let Some(program) = chromedriver() else {
        assert!(
            !required,
            "TASKFLOW_REQUIRE_BROWSER=1 but chromedriver is not installed (Debian: chromium chromium-driver)"
        );
        println!(
            "admin_browser: skipped, chromedriver is not installed (Debian: chromium chromium-driver)"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(driver)
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        // No crash reporter: its handler leaves the process group.
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--disable-breakpad",
                         "--disable-crash-reporter", "--window-size=1280,900"] }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    within(
        "a browser session",
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver.url),
    )
    .await
    .unwrap()
}

/// Waits until the text of `css` satisfies `check`; the text.
async fn wait_text(page: &Client, css: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    loop {
        if let Ok(element) = page.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if check(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never showed what was expected; last text: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(page: &Client, css: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(element) = page.find(Locator::Css(css)).await
            && element.click().await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "could not click `{css}`");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn type_into(page: &Client, css: &str, text: &str) {
    let element = page
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .unwrap();
    element.clear().await.unwrap();
    element.send_keys(text).await.unwrap();
}

/// Opens the dashboard at `url` and logs in as alice.
async fn log_in(page: &Client, url: &str) {
    page.goto(url).await.unwrap();
    type_into(page, "#login-user", "alice").await;
    type_into(page, "#login-password", "correct horse").await;
    click(page, "#login-submit").await;
    wait_text(page, "#who", |text| text == "alice").await;
    wait_text(page, "#live", |text| text == "live").await;
}

fn row(id: impl std::fmt::Display) -> String {
    format!("#task-rows tr[data-id=\"{id}\"] .status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_watches_retries_filters_and_pauses() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let manager = TaskManager::builder()
        .queue("reports", QueueConfig::new())
        .build()
        .await
        .unwrap();
    let hash = admin::hash_password_with_rounds("correct horse", 1000).unwrap();
    let config = AdminConfig::new()
        .user("alice", &hash)
        .unwrap()
        .stream_interval(Duration::from_millis(100));
    // The same tasks at `/plain`, with arguments hidden (the default).
    let app = axum::Router::new()
        .nest(
            "/tasks",
            admin::router(&manager, config.clone().show_arguments(true)),
        )
        .nest("/plain", admin::router(&manager, config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    let base = format!("{root}/tasks");
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let page = browser(&driver).await;

    // Open the page and log in.
    log_in(&page, &base).await;

    // Watch a task go from PENDING to SUCCESS without reloading.
    page.execute("window.sameLoad = 'yes';", Vec::new())
        .await
        .unwrap();
    let handle = watched::call().enqueue_on(&manager).unwrap();
    let id = handle.id();
    wait_text(&page, &row(id), |text| {
        text == "PENDING" || text == "RUNNING"
    })
    .await;
    WATCHED_RELEASE.open();
    wait_text(&page, &row(id), |text| text == "SUCCESS").await;
    assert!(within("the watched task", handle).await.unwrap());
    let same = page
        .execute("return window.sameLoad;", Vec::new())
        .await
        .unwrap();
    assert_eq!(same, Value::from("yes"), "the page was not reloaded");

    // Open a failed task: its error, its logs and its arguments.
    let failed = broken::call(7).enqueue_on(&manager).unwrap().id();
    wait_for_status(&manager, failed, TaskStatus::Failed).await;
    wait_text(&page, &row(failed), |text| text == "FAILED").await;
    click(&page, &format!("#task-rows tr[data-id=\"{failed}\"]")).await;
    wait_text(&page, "#detail-error", |text| {
        text.contains("broken 7: the upstream answered 502")
    })
    .await;
    wait_text(&page, ".logs", |text| {
        text.contains("broken 7 tried attempt 0")
    })
    .await;
    wait_text(&page, "#detail-arguments", |text| text.contains("\"n\": 7")).await;

    // Retry it and see the new task, which names its origin.
    click(&page, "#retry-task").await;
    let origin = wait_text(&page, "#view-detail", |text| {
        text.contains(&format!("retry of {failed}"))
    })
    .await;
    assert!(origin.contains("broken"));
    let retried = manager
        .list(&taskflow::TaskFilter::new().tag(taskflow::RETRY_OF_TAG, failed.to_string()))
        .await
        .unwrap();
    assert_eq!(retried.len(), 1, "one new task");

    // Filter the table: only FAILED rows.
    wait_for_status(&manager, retried[0].id, TaskStatus::Failed).await;
    click(&page, "#back").await;
    page.find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("FAILED")
        .await
        .unwrap();
    click(&page, "#filter-apply").await;
    let statuses = wait_text(&page, "#task-rows", |text| {
        text.matches("FAILED").count() == 2 && !text.contains("SUCCESS")
    })
    .await;
    assert!(statuses.contains("broken"), "{statuses}");

    // A screenshot of the main view, for a reviewer.
    let png = page.screenshot().await.unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("admin-dashboard.png"), png).unwrap();

    // Pause a queue and see it hold its task; resume it.
    click(&page, "#nav button[data-view=queues]").await;
    click(&page, "button.queue-toggle[data-queue=reports]").await;
    wait_text(&page, "tr[data-queue=reports] .queue-state", |text| {
        text == "paused"
    })
    .await;
    let held = report::call(3)
        .queue("reports")
        .enqueue_on(&manager)
        .unwrap();
    click(&page, "#nav button[data-view=queues]").await;
    wait_text(&page, "tr[data-queue=reports] .queue-pending", |text| {
        text == "1"
    })
    .await;
    assert_eq!(
        held.status(),
        TaskStatus::Pending,
        "the paused queue holds it"
    );
    click(&page, "button.queue-toggle[data-queue=reports]").await;
    wait_text(&page, "tr[data-queue=reports] .queue-state", |text| {
        text == "running"
    })
    .await;
    assert_eq!(within("the resumed task", held).await.unwrap(), 3);

    // Failed tasks, retried in bulk from their view.
    click(&page, "#nav button[data-view=failed]").await;
    wait_text(&page, "#failed-rows", |text| {
        text.contains("the upstream answered 502")
    })
    .await;
    click(&page, "#failed-rows input[type=checkbox]").await;
    click(&page, "#retry-selected").await;
    wait_text(&page, "#failed-result", |text| text == "retried 1 of 1").await;

    // The other views: registered tasks, the pictures, the audit log.
    click(&page, "#nav button[data-view=registered]").await;
    wait_text(&page, "#registered-rows", |text| {
        text.contains("admin_browser::broken")
    })
    .await;
    click(&page, "#nav button[data-view=charts]").await;
    wait_text(&page, "#metrics-text", |text| text.contains("success rate")).await;
    let drawn = page
        .execute(
            "const c = document.getElementById('throughput').getContext('2d');
             const d = c.getImageData(0, 0, 900, 220).data;
             for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true;
             return false;",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(drawn, Value::Bool(true), "the throughput chart has bars");
    click(&page, "#nav button[data-view=audit]").await;
    wait_text(&page, "#audit-rows", |text| {
        text.contains("alice") && text.contains("bulk_retry") && text.contains("pause")
    })
    .await;

    // A narrow window still shows the table, without the wide columns.
    page.set_window_size(400, 800).await.unwrap();
    click(&page, "#nav button[data-view=tasks]").await;
    let element = page.find(Locator::Css("#task-rows")).await.unwrap();
    assert!(element.is_displayed().await.unwrap());
    let wide = page.find(Locator::Css("th.wide")).await.unwrap();
    assert!(!wide.is_displayed().await.unwrap(), "wide columns hide");

    // Where the configuration hides arguments, the detail says so.
    page.set_window_size(1280, 900).await.unwrap();
    log_in(&page, &format!("{root}/plain")).await;
    click(&page, &format!("#task-rows tr[data-id=\"{failed}\"]")).await;
    wait_text(&page, "#detail-error", |text| {
        text.contains("broken 7: the upstream answered 502")
    })
    .await;
    let hidden = wait_text(&page, "#detail-arguments", |text| {
        text.contains("hidden by configuration")
    })
    .await;
    assert!(!hidden.contains('7'), "{hidden}");

    page.close().await.unwrap();
    server.abort();
    manager.shutdown().await;
}
