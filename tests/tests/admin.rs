//! The admin HTTP API (`taskflow::admin::router`), served on 127.0.0.1 and
//! used with a real HTTP client, nested at `/tasks` as an application would:
//! every endpoint and error status, auth on every route (the stream and the
//! OpenAPI document included), CSRF refusals, cookie sessions, the audit
//! log, paging through 10 000 stored tasks without gaps or repeats, retry-all
//! dispatching each failure once however often it runs, and the stream
//! delivering a task's PENDING → SUCCESS live, coalesced and resumable.

// The helpers below are test code too: a failed request fails the test.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use taskflow::admin::{self, AdminConfig, CSRF_HEADER};
use taskflow::{LogLevel, Resource, TaskManager, TaskStatus, task};
use taskflow_tests::{Latch, PATIENCE, wait_for, wait_for_status, within};

const TOKEN: &str = "s3cret-token-for-tests";

// --- tasks ------------------------------------------------------------------

#[task]
async fn quick(n: u32) -> u32 {
    n
}

#[task(retries = 1)]
async fn doomed(n: u32) -> Result<u32, String> {
    let attempt = taskflow::context().expect("inside a task").attempt;
    taskflow::log(LogLevel::Info, format!("doomed {n} attempt {attempt}"));
    Err(format!("doomed {n} failed on attempt {attempt}"))
}

static HELD_RELEASE: Latch = Latch::new();

#[task]
async fn held() -> bool {
    HELD_RELEASE.wait().await
}

static STREAMED_RELEASE: Latch = Latch::new();

#[task]
async fn streamed() -> bool {
    STREAMED_RELEASE.wait().await
}

/// Logs one line and fails, with no retry: its one attempt runs on one
/// host. (`doomed` retries, and its attempts can run on two hosts.)
#[task]
async fn refused(n: u32) -> Result<u32, String> {
    taskflow::log(LogLevel::Info, format!("refused {n}"));
    Err(format!("refused {n}"))
}

/// Fails with a long message: stream batches that weigh.
#[task]
async fn wordy(n: u32) -> Result<(), String> {
    Err(format!("{n}: {}", "x".repeat(64 * 1024)))
}

#[task]
async fn parked() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// An argument that is a struct, with a list and an absent option.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Address {
    street: String,
    zip: u32,
    lines: Vec<String>,
    note: Option<String>,
}

/// Parameters declared out of alphabetical order: the admin keeps theirs.
#[task]
async fn deliver(recipient: String, count: i64, address: Address) -> usize {
    recipient.len() + address.lines.len() + usize::try_from(count).unwrap_or(0)
}

/// What `mail` takes as a resource: not one of its arguments.
#[derive(Debug)]
struct Mailer;

#[task]
async fn mail(user: u64, mailer: Resource<Mailer>, subject: String) -> u64 {
    let _: &Mailer = &mailer;
    user + subject.len() as u64
}

#[task]
async fn bare() {}

// --- the server and client ---------------------------------------------------

/// The router served on an ephemeral loopback port, nested at `/tasks`.
struct Served {
    base: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(manager: &TaskManager, config: AdminConfig) -> Served {
    let app = axum::Router::new().nest("/tasks", admin::router(manager, config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Served {
        base: format!("http://{address}/tasks"),
        client: reqwest::Client::new(),
        server,
    }
}

fn config() -> AdminConfig {
    AdminConfig::new()
        .bearer_token("ops-bot", TOKEN)
        .stream_interval(Duration::from_millis(50))
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .header(CSRF_HEADER, "1")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GETs `path`, expecting 200.
    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{body}"
    );
}

fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn memory_manager() -> TaskManager {
    TaskManager::builder().build().await.unwrap()
}

async fn stored_manager(db: &Path) -> TaskManager {
    TaskManager::builder()
        .snapshot_db(db)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_is_served_without_data_or_credentials() {
    let manager = memory_manager().await;
    let served = serve(&manager, config()).await;
    for path in ["", "/index.html"] {
        let response = served.client.get(served.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
        let page = response.text().await.unwrap();
        assert!(page.contains("<title>taskflow admin</title>"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no CDN, no absolute links"
        );
    }
    manager.shutdown().await;
}

// --- auth and CSRF -------------------------------------------------------------

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/0191e0a0-0000-7000-8000-000000000000"),
    (
        "POST",
        "/api/tasks/0191e0a0-0000-7000-8000-000000000000/cancel",
    ),
    (
        "POST",
        "/api/tasks/0191e0a0-0000-7000-8000-000000000000/retry",
    ),
    ("POST", "/api/tasks/retry"),
    ("POST", "/api/tasks/retry-failed"),
    ("POST", "/api/history/prune"),
    ("GET", "/api/metrics"),
    ("GET", "/api/queues"),
    ("POST", "/api/queues/default/pause"),
    ("POST", "/api/queues/default/resume"),
    ("POST", "/api/queues/default/concurrency"),
    ("GET", "/api/registered"),
    ("GET", "/api/audit"),
    ("GET", "/api/session"),
    ("POST", "/api/logout"),
    ("GET", "/events"),
    ("GET", "/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_missing_or_wrong_credentials() {
    let manager = memory_manager().await;
    let served = serve(&manager, config()).await;
    for &(method, path) in ROUTES {
        for token in [None, Some("wrong-token"), Some("")] {
            let mut request = match method {
                "GET" => served.client.get(served.url(path)),
                _ => served
                    .client
                    .post(served.url(path))
                    .header(CSRF_HEADER, "1")
                    .json(&json!({})),
            };
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer",
                "{method} {path}"
            );
            let body: Value = response.json().await.unwrap();
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    // A forged session cookie is no better.
    let response = served
        .client
        .get(served.url("/api/tasks"))
        .header("cookie", format!("{}=00.00", admin::SESSION_COOKIE))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A config with no credentials at all admits nobody.
    let closed = serve(&manager, AdminConfig::new()).await;
    let response = closed
        .client
        .get(closed.url("/api/tasks"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Opting out is explicit, and the actor is recorded as anonymous.
    let open = serve(&manager, AdminConfig::new().insecure_no_auth()).await;
    let response = open
        .client
        .get(open.url("/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["actor"], "anonymous");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_csrf_header_and_their_own_origin() {
    let manager = memory_manager().await;
    // CSRF protection holds even without auth.
    let served = serve(&manager, config().insecure_no_auth()).await;
    let path = served.url("/api/queues/default/pause");
    let refused = [
        served.client.post(&path).bearer_auth(TOKEN),
        served.client.post(&path).header(CSRF_HEADER, ""),
        served
            .client
            .post(&path)
            .header(CSRF_HEADER, "1")
            .header("origin", "http://evil.example"),
    ];
    for request in refused {
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }
    let stats = manager.queue_stats().await.unwrap();
    assert!(
        stats.iter().all(|queue| !queue.paused),
        "nothing was paused"
    );

    // Same origin, with the header: done.
    let host = served.base.trim_end_matches("/tasks").to_owned();
    let response = served
        .client
        .post(&path)
        .header(CSRF_HEADER, "1")
        .header("origin", host)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Reads need no header.
    let response = served
        .client
        .get(served.url("/api/queues"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Behind a proxy, the public origin is allowed by name.
    let proxied = serve(
        &manager,
        config()
            .insecure_no_auth()
            .allow_origin("https://admin.example.com"),
    )
    .await;
    for (origin, expected) in [
        ("https://admin.example.com", StatusCode::OK),
        ("https://evil.example.com", StatusCode::FORBIDDEN),
    ] {
        let response = proxied
            .client
            .post(proxied.url("/api/queues/default/resume"))
            .header(CSRF_HEADER, "1")
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{origin}");
    }
    manager.shutdown().await;
}

fn session_cookie(response: &reqwest::Response) -> (String, String) {
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set)
}

/// Five wrong passwords in a row for a user are free; then each try must
/// wait (429 with `Retry-After`, the password not even checked, the right
/// one included), and a right password once the wait is over starts the
/// user afresh. Other users are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_make_the_next_login_wait() {
    let manager = memory_manager().await;
    let hash = admin::hash_password_with_rounds("correct horse", 1000).unwrap();
    let config = config()
        .user("alice", &hash)
        .unwrap()
        .user("bob", &hash)
        .unwrap();
    let served = serve(&manager, config).await;
    let login = |user: &str, password: &str| {
        served
            .client
            .post(served.url("/api/login"))
            .header(CSRF_HEADER, "1")
            .json(&json!({ "user": user, "password": password }))
            .send()
    };
    for _ in 0..5 {
        let response = login("alice", "wrong").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // From now on, tries wait.
    let response = login("alice", "correct horse").await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(wait, 1, "the first wait is a second");
    assert!(response.headers().get("set-cookie").is_none());
    let body: Value = response.json().await.unwrap();
    assert_error(
        StatusCode::TOO_MANY_REQUESTS,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
    );
    let response = login("bob", "correct horse").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "another user logs in");

    tokio::time::sleep(Duration::from_secs(wait)).await;
    let response = login("alice", "correct horse").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "after the wait");
    // Afresh: five more wrong passwords are free again.
    for _ in 0..5 {
        let response = login("alice", "wrong").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let audit = served.ok("/api/audit?limit=100").await;
    let throttled = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["outcome"] == "too many failed logins: not checked")
        .count();
    assert_eq!(throttled, 1);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_gives_a_signed_httponly_cookie_that_needs_its_csrf_token() {
    let manager = memory_manager().await;
    let hash = admin::hash_password_with_rounds("correct horse", 1000).unwrap();
    let served = serve(&manager, config().user("alice", &hash).unwrap()).await;
    let login = |user: &str, password: &str| {
        served
            .client
            .post(served.url("/api/login"))
            .header(CSRF_HEADER, "1")
            .json(&json!({ "user": user, "password": password }))
    };
    for (user, password) in [("alice", "wrong"), ("mallory", "correct horse")] {
        let response = login(user, password).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get("set-cookie").is_none());
    }
    let response = served
        .client
        .post(served.url("/api/login"))
        .json(&json!({ "user": "alice", "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "login needs the header too"
    );
    let response = served
        .client
        .post(served.url("/api/login"))
        .header(CSRF_HEADER, "1")
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let response = login("alice", "correct horse").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (cookie, set_cookie) = session_cookie(&response);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/tasks", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["actor"], "alice");
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();

    // The cookie reads…
    let response = served
        .client
        .get(served.url("/api/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["actor"].as_str(), body["csrf_token"].as_str()),
        (Some("alice"), Some(csrf.as_str()))
    );
    // …but changes only with the session's own CSRF token.
    let pause = || {
        served
            .client
            .post(served.url("/api/queues/default/pause"))
            .header("cookie", &cookie)
    };
    for header in [None, Some("1"), Some("0000")] {
        let mut request = pause();
        if let Some(header) = header {
            request = request.header(CSRF_HEADER, header);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }
    let response = pause().header(CSRF_HEADER, &csrf).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A tampered cookie is refused.
    let (name, value) = cookie.split_once('=').unwrap();
    let (payload, tag) = value.split_once('.').unwrap();
    let forged = format!("{name}={}.{tag}", payload.replacen("6", "7", 1));
    let response = served
        .client
        .get(served.url("/api/tasks"))
        .header("cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Logout clears it; the audit log names alice.
    let response = served
        .client
        .post(served.url("/api/logout"))
        .header("cookie", &cookie)
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (cleared, _) = session_cookie(&response);
    assert_eq!(cleared, format!("{}=", admin::SESSION_COOKIE));
    let audit = served.ok("/api/audit").await;
    let actions: Vec<(&str, &str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["actor"].as_str().unwrap(),
                entry["action"].as_str().unwrap(),
                entry["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions[0], ("alice", "logout", "ok"));
    assert_eq!(actions[1], ("alice", "pause", "ok"));
    assert_eq!(actions[2], ("alice", "login", "ok"));
    assert!(actions.contains(&("mallory", "login", "unauthorized: wrong user or password")));
    manager.shutdown().await;
}

// --- reading tasks ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_list_by_every_filter_and_show_their_logs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manager = stored_manager(&dir.path().join("tasks.db")).await;
    let served = serve(&manager, config()).await;
    // A few milliseconds apart, so creation times (to the millisecond in
    // the API) and ids order them.
    let pause = || tokio::time::sleep(Duration::from_millis(3));
    let mut done = Vec::new();
    for n in 0..3 {
        done.push(
            quick::call(n)
                .tag("tenant", "acme")
                .queue("emails")
                .enqueue_on(&manager)
                .unwrap()
                .id(),
        );
        pause().await;
    }
    let failed = doomed::call(7)
        .tag("tenant", "globex")
        .enqueue_on(&manager)
        .unwrap()
        .id();
    for id in &done {
        wait_for_status(&manager, *id, TaskStatus::Success).await;
    }
    wait_for_status(&manager, failed, TaskStatus::Failed).await;
    manager.flush().await.unwrap();

    let all = served.ok("/api/tasks").await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(all["next_cursor"], Value::Null);
    let newest_first: Vec<String> = [failed, done[2], done[1], done[0]]
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids(&all), newest_first);

    let query = |q: &str| format!("/api/tasks?{q}");
    let expect = [
        ("status=FAILED", vec![failed.to_string()]),
        ("status=failed", vec![failed.to_string()]),
        (
            "status=SUCCESS&limit=2",
            vec![done[2].to_string(), done[1].to_string()],
        ),
        (&format!("name={}", doomed::NAME), vec![failed.to_string()]),
        ("queue=emails&tag=tenant:acme", newest_first[1..].to_vec()),
        ("tag=tenant:globex", vec![failed.to_string()]),
        ("q=ON+ATTEMPT+1", vec![failed.to_string()]),
        (
            &format!("q={}", &done[1].to_string()[24..]),
            vec![done[1].to_string()],
        ),
        ("q=quick", newest_first[1..].to_vec()),
        ("q=nothing-matches", vec![]),
    ];
    for (q, want) in expect {
        assert_eq!(ids(&served.ok(&query(q)).await), want, "{q}");
    }
    // A time window, from the API's own timestamps.
    let first_created = all["tasks"][3]["created_at"].as_str().unwrap().to_owned();
    let last_created = all["tasks"][0]["created_at"].as_str().unwrap().to_owned();
    let window = served
        .ok(&query(&format!(
            "created_after={first_created}&created_before={last_created}"
        )))
        .await;
    assert!(ids(&window).contains(&done[0].to_string()));
    assert!(!ids(&window).contains(&failed.to_string()));

    // Paging by cursor, with and without text search.
    let page = served.ok(&query("limit=3")).await;
    assert_eq!(ids(&page), newest_first[..3]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = served.ok(&query(&format!("limit=3&cursor={cursor}"))).await;
    assert_eq!(ids(&rest), newest_first[3..]);
    assert_eq!(rest["next_cursor"], Value::Null);
    let page = served.ok(&query("limit=2&q=quick")).await;
    assert_eq!(ids(&page), newest_first[1..3]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = served
        .ok(&query(&format!("limit=2&q=quick&cursor={cursor}")))
        .await;
    assert_eq!(ids(&rest), newest_first[3..]);

    // Bad filters are 400s.
    for q in [
        "status=BOGUS",
        "created_after=yesterday",
        "created_before=2024-13-45T00:00:00Z",
        "tag=no-colon",
        "cursor=not-an-id",
        "limit=0",
        "limit=1001",
        "limit=many",
    ] {
        let (status, body) = served.get(&query(q)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }

    // One task: error, attempts, timings, logs per attempt.
    let detail = served.ok(&format!("/api/tasks/{failed}")).await;
    assert_eq!(detail["status"], "FAILED");
    assert_eq!(detail["name"], doomed::NAME);
    assert_eq!(detail["attempts"], 2);
    assert_eq!(detail["error"]["kind"], "error");
    assert_eq!(detail["error"]["message"], "doomed 7 failed on attempt 1");
    assert_eq!(detail["tags"]["tenant"], "globex");
    assert!(detail["started_at"].is_string() && detail["finished_at"].is_string());
    assert!(detail["duration_ms"].as_f64().unwrap() >= 0.0);
    let logs: Vec<(u64, &str)> = detail["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|log| {
            (
                log["attempt"].as_u64().unwrap(),
                log["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(logs, [(0, "doomed 7 attempt 0"), (1, "doomed 7 attempt 1")]);
    assert!(
        detail.get("arguments").is_none() && detail.get("arguments_error").is_none(),
        "arguments are hidden by default: {detail}"
    );

    let (status, body) = served
        .get("/api/tasks/0191e0a0-0000-7000-8000-000000000000")
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = served.get("/api/tasks/not-an-id").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = served.get("/api/no-such-route").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_ten_thousand_stored_tasks_has_no_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let manager = stored_manager(&dir.path().join("tasks.db")).await;
    let served = serve(&manager, config()).await;
    let mut enqueued = HashSet::new();
    let mut handles = Vec::new();
    for n in 0..10_000 {
        let handle = quick::call(n).enqueue_on(&manager).unwrap();
        enqueued.insert(handle.id().to_string());
        handles.push(handle);
    }
    within("10k tasks", async {
        for handle in handles {
            handle.await.unwrap();
        }
    })
    .await;
    manager.flush().await.unwrap();

    for limit in [1000, 373] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 / limit + 2 {
            let path = match &cursor {
                Some(cursor) => format!("/api/tasks?limit={limit}&cursor={cursor}"),
                None => format!("/api/tasks?limit={limit}"),
            };
            let page = served.ok(&path).await;
            seen.extend(ids(&page));
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        assert!(cursor.is_none(), "paging ended");
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), 10_000, "no repeats (limit {limit})");
        assert_eq!(unique, enqueued, "no gaps (limit {limit})");
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first (limit {limit})");
    }
    manager.shutdown().await;
}

// --- changing tasks -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_retry_and_bulk_retry_answer_with_the_right_status() {
    let manager = memory_manager().await;
    let served = serve(&manager, config()).await;
    let runaway = parked::call().enqueue_on(&manager).unwrap().id();
    wait_for_status(&manager, runaway, TaskStatus::Running).await;
    let failed = doomed::call(1).enqueue_on(&manager).unwrap().id();
    let succeeded = quick::call(1).enqueue_on(&manager).unwrap().id();
    wait_for_status(&manager, failed, TaskStatus::Failed).await;
    wait_for_status(&manager, succeeded, TaskStatus::Success).await;

    let (status, body) = served
        .post(&format!("/api/tasks/{runaway}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, &body["id"]),
        (StatusCode::OK, &json!(runaway.to_string()))
    );
    wait_for_status(&manager, runaway, TaskStatus::Cancelled).await;
    let (status, body) = served
        .post(&format!("/api/tasks/{runaway}/cancel"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let unknown = "0191e0a0-0000-7000-8000-000000000000";
    let (status, body) = served
        .post(&format!("/api/tasks/{unknown}/cancel"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = served.post("/api/tasks/xyz/cancel", json!({})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    let (status, body) = served
        .post(&format!("/api/tasks/{failed}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let retry = body["retry"].as_str().unwrap().to_owned();
    let copy = served.ok(&format!("/api/tasks/{retry}")).await;
    assert_eq!(copy["retry_of"], failed.to_string());
    assert_eq!(copy["name"], doomed::NAME);
    wait_for_status(&manager, retry.parse().unwrap(), TaskStatus::Failed).await;
    let original = served.ok(&format!("/api/tasks/{failed}")).await;
    assert_eq!(original["retried_by"], json!([retry]));
    let (status, body) = served
        .post(&format!("/api/tasks/{succeeded}/retry"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = served
        .post(&format!("/api/tasks/{unknown}/retry"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Bulk: each id on its own.
    let (status, body) = served
        .post(
            "/api/tasks/retry",
            json!({ "ids": [failed.to_string(), succeeded.to_string(), unknown, runaway.to_string()] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert!(results[0]["retry"].is_string());
    assert_eq!(results[1]["error"]["code"], "conflict");
    assert_eq!(results[2]["error"]["code"], "not_found");
    assert!(results[3]["retry"].is_string(), "a cancelled task retries");
    let runaway_again = results[3]["retry"].as_str().unwrap().parse().unwrap();
    wait_for_status(&manager, runaway_again, TaskStatus::Running).await;
    manager.cancel(runaway_again).await.unwrap();

    // Bad bodies are 422s.
    for body in [
        json!({ "ids": ["not-an-id"] }),
        json!({ "ids": "one" }),
        json!({ "identifiers": [] }),
        json!({ "ids": vec![unknown; 1001] }),
    ] {
        let (status, answer) = served.post("/api/tasks/retry", body).await;
        assert_error(
            status,
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
    }
    let response = served
        .client
        .post(served.url("/api/tasks/retry"))
        .bearer_auth(TOKEN)
        .header(CSRF_HEADER, "1")
        .header("content-type", "application/json")
        .body("{\"ids\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Every change is in the audit log, newest first, with its ids.
    let audit = served.ok("/api/audit?limit=100").await;
    let entries: Vec<(String, String, Vec<String>, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            assert_eq!(entry["actor"], "ops-bot");
            assert!(entry["at"].is_string());
            (
                entry["action"].as_str().unwrap().to_owned(),
                entry["outcome"].as_str().unwrap().to_owned(),
                entry["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_str().unwrap().to_owned())
                    .collect(),
                entry["seq"].to_string(),
            )
        })
        .collect();
    let actions: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "bulk_retry",
            "retry",
            "retry",
            "retry",
            "cancel",
            "cancel",
            "cancel"
        ],
        "bad requests change nothing and are not recorded"
    );
    assert_eq!(entries[0].1, "retried 2 of 4");
    assert_eq!(entries[3].2, vec![failed.to_string(), retry.clone()]);
    assert_eq!(entries[3].1, "ok");
    assert!(entries[5].1.starts_with("conflict"), "{}", entries[5].1);
    assert_eq!(entries[6].2, vec![runaway.to_string()]);
    let (status, body) = served.get("/api/audit?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_dispatches_each_failure_once_however_often_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let manager = stored_manager(&dir.path().join("tasks.db")).await;
    let served = serve(&manager, config()).await;
    let before = served.ok("/api/tasks?limit=1").await;
    assert!(before["tasks"].as_array().unwrap().is_empty());
    let mut failures = Vec::new();
    for n in 0..20 {
        failures.push(doomed::call(n).enqueue_on(&manager).unwrap().id());
    }
    let fine = quick::call(0).enqueue_on(&manager).unwrap().id();
    for id in &failures {
        wait_for_status(&manager, *id, TaskStatus::Failed).await;
    }
    wait_for_status(&manager, fine, TaskStatus::Success).await;
    // The store's rows say FAILED too (listing by status reads them).
    manager.flush().await.unwrap();
    let first = served.ok("/api/tasks?limit=1000").await;
    let since = first["tasks"].as_array().unwrap().last().unwrap()["created_at"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = served
        .post("/api/tasks/retry-failed", json!({ "created_after": since }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let retried: HashSet<String> = body["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = failures.iter().map(ToString::to_string).collect();
    assert_eq!(retried, expected);
    assert_eq!(body["skipped"], 0);

    // Again, at once (the copies may still be running) and after the
    // copies failed too: nothing more runs.
    let (status, body) = served
        .post("/api/tasks/retry-failed", json!({ "created_after": since }))
        .await;
    assert_eq!(
        (status, &body["retried"]),
        (StatusCode::OK, &json!([])),
        "{body}"
    );
    let copies = served
        .ok(&format!(
            "/api/tasks?limit=1000&created_after={since}&name={}",
            doomed::NAME
        ))
        .await;
    for task in copies["tasks"].as_array().unwrap() {
        let id = task["id"].as_str().unwrap().parse().unwrap();
        wait_for_status(&manager, id, TaskStatus::Failed).await;
    }
    manager.flush().await.unwrap();
    let (status, body) = served
        .post("/api/tasks/retry-failed", json!({ "created_after": since }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["retried"], &body["skipped"]),
        (&json!([]), &json!(40))
    );
    let all = served.ok("/api/tasks?limit=1000").await;
    assert_eq!(
        all["tasks"].as_array().unwrap().len(),
        41,
        "20 failures, 20 copies, 1 success"
    );

    // By name: another task's failures only.
    let (status, body) = served
        .post(
            "/api/tasks/retry-failed",
            json!({ "created_after": since, "name": quick::NAME }),
        )
        .await;
    assert_eq!(
        (status, &body["retried"], &body["skipped"]),
        (StatusCode::OK, &json!([]), &json!(0))
    );

    for bad in [
        json!({}),
        json!({ "created_after": "last tuesday" }),
        json!({ "created_after": since, "created_before": 5 }),
        json!({ "created_after": since, "status": "FAILED" }),
    ] {
        let (status, body) = served.post("/api/tasks/retry-failed", bad).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
    }
    let audit = served.ok("/api/audit").await;
    let outcomes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert_eq!(outcomes[0], "retried 0, skipped 0, failed 0");
    assert_eq!(outcomes[1], "retried 0, skipped 40, failed 0");
    assert!(
        outcomes[2].starts_with("retried 0, skipped "),
        "{}",
        outcomes[2]
    );
    assert_eq!(outcomes[3], "retried 20, skipped 0, failed 0");
    assert_eq!(audit[3]["ids"].as_array().unwrap().len(), 20);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_pause_and_resume_for_every_caller() {
    let manager = memory_manager().await;
    let served = serve(&manager, config()).await;
    let (status, body) = served.post("/api/queues/reports/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "queue": "reports", "paused": true }));
    let queued = quick::call(5)
        .queue("reports")
        .enqueue_on(&manager)
        .unwrap();
    let queues = served.ok("/api/queues").await;
    let reports = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|queue| queue["name"] == "reports")
        .unwrap()
        .clone();
    assert_eq!(
        (reports["paused"].clone(), reports["pending"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(queued.status(), TaskStatus::Pending);
    let (status, body) = served.post("/api/queues/reports/resume", json!({})).await;
    assert_eq!(
        (status, body["paused"].clone()),
        (StatusCode::OK, json!(false))
    );
    assert_eq!(within("the resumed task", queued).await.unwrap(), 5);
    manager.shutdown().await;
}

/// A queue's concurrency changes here through the API: the new cap holds
/// at once, is reported by `/api/queues`, is audited, and a bad body or
/// name is refused with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_concurrency_changes_through_the_api() {
    let manager = memory_manager().await;
    let served = serve(&manager, config()).await;
    let (status, body) = served
        .post("/api/queues/slow/concurrency", json!({ "concurrency": 1 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "queue": "slow", "concurrency": 1 }));
    let handles: Vec<_> = (0..3)
        .map(|_| parked::call().queue("slow").enqueue_on(&manager).unwrap())
        .collect();
    let slow = || async {
        let queues = served.ok("/api/queues").await;
        queues
            .as_array()
            .unwrap()
            .iter()
            .find(|queue| queue["name"] == "slow")
            .unwrap()
            .clone()
    };
    let one_running = wait_for(PATIENCE, || async {
        let queue = slow().await;
        (queue["running"].clone(), queue["pending"].clone()) == (json!(1), json!(2))
    })
    .await;
    assert!(
        one_running,
        "one task runs under a cap of 1: {}",
        slow().await
    );
    assert_eq!(slow().await["concurrency"], json!(1));

    let (status, body) = served
        .post(
            "/api/queues/slow/concurrency",
            json!({ "concurrency": null }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let all_running = wait_for(PATIENCE, || async { slow().await["running"] == json!(3) }).await;
    assert!(all_running, "uncapped, all three run: {}", slow().await);
    assert_eq!(slow().await["concurrency"], Value::Null);

    for bad in [
        json!({ "concurrency": 0 }),
        json!({}),
        json!({ "concurrency": "two" }),
        json!({ "concurrency": 2, "queue": "slow" }),
    ] {
        let (status, body) = served.post("/api/queues/slow/concurrency", bad).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
    }
    let (status, body) = served
        .post("/api/queues/%20/concurrency", json!({ "concurrency": 2 }))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    let audit = served.ok("/api/audit").await;
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["action"].as_str().unwrap(),
                entry["ids"][0].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("concurrency 2", " "),
            ("concurrency none", "slow"),
            ("concurrency 1", "slow"),
        ],
        "newest first; a refused body is no action"
    );
    for handle in &handles {
        manager.cancel(handle.id()).await.unwrap();
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_finished_history_older_than_an_age() {
    let dir = tempfile::tempdir().unwrap();
    let manager = stored_manager(&dir.path().join("tasks.db")).await;
    let served = serve(&manager, config()).await;
    let mut finished = Vec::new();
    for n in 0..5 {
        finished.push(quick::call(n).enqueue_on(&manager).unwrap().id());
    }
    for id in &finished {
        wait_for_status(&manager, *id, TaskStatus::Success).await;
    }
    let waiting = held::call().enqueue_on(&manager).unwrap().id();
    wait_for_status(&manager, waiting, TaskStatus::Running).await;
    manager.flush().await.unwrap();

    let (status, body) = served
        .post("/api/history/prune", json!({ "older_than_seconds": 3600 }))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "deleted": 0 })));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = served
        .post("/api/history/prune", json!({ "older_than_seconds": 0 }))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "deleted": 5 })));
    let left = served.ok("/api/tasks").await;
    assert_eq!(ids(&left), [waiting.to_string()], "the running task stays");
    let (status, _) = served.get(&format!("/api/tasks/{}", finished[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for bad in [
        json!({ "older_than_seconds": -1 }),
        json!({ "older_than": 5 }),
    ] {
        let (status, body) = served.post("/api/history/prune", bad).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
    }
    let audit = served.ok("/api/audit").await;
    assert_eq!(audit[0]["action"], "prune");
    assert_eq!(audit[0]["outcome"], "deleted 5 finished before 0s ago");
    HELD_RELEASE.open();
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_without_a_store_forgets_finished_tasks_in_memory() {
    let manager = memory_manager().await;
    let served = serve(&manager, config()).await;
    let done = quick::call(1).enqueue_on(&manager).unwrap().id();
    wait_for_status(&manager, done, TaskStatus::Success).await;
    let (status, body) = served
        .post("/api/history/prune", json!({ "older_than_seconds": 0 }))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "deleted": 1 })));
    let (status, _) = served.get(&format!("/api/tasks/{done}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(manager.metrics().success, 1, "metrics still count it");
    manager.shutdown().await;
}

// --- numbers and documents ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_registered_tasks_and_the_openapi_document() {
    let manager = memory_manager().await;
    let served = serve(&manager, config()).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push((
            quick::call(n).enqueue_on(&manager).unwrap().id(),
            TaskStatus::Success,
        ));
    }
    for n in 0..2 {
        ids.push((
            doomed::call(n).enqueue_on(&manager).unwrap().id(),
            TaskStatus::Failed,
        ));
    }
    let runaway = parked::call().enqueue_on(&manager).unwrap().id();
    wait_for_status(&manager, runaway, TaskStatus::Running).await;
    manager.cancel(runaway).await.unwrap();
    for (id, status) in &ids {
        wait_for_status(&manager, *id, *status).await;
    }

    let metrics = served.ok("/api/metrics?minutes=5").await;
    assert_eq!(metrics["window_minutes"], 5);
    assert_eq!(
        metrics["counts"],
        json!({ "pending": 0, "running": 0, "success": 6, "failed": 2, "cancelled": 1, "interrupted": 0 })
    );
    assert_eq!(metrics["success_rate"], 0.75);
    let mean = metrics["mean_duration_ms"].as_f64().unwrap();
    let p95 = metrics["p95_duration_ms"].as_f64().unwrap();
    assert!(mean >= 0.0 && p95 >= 0.0);
    let throughput = metrics["throughput"].as_array().unwrap();
    assert_eq!(throughput.len(), 5);
    let (succeeded, failed) = throughput.iter().fold((0, 0), |(s, f), minute| {
        (
            s + minute["succeeded"].as_u64().unwrap(),
            f + minute["failed"].as_u64().unwrap(),
        )
    });
    assert_eq!((succeeded, failed), (6, 2));
    assert_eq!(metrics["truncated"], false);
    assert_eq!(metrics["instance"]["success"], 6);
    for bad in ["minutes=0", "minutes=1441", "minutes=x"] {
        let (status, body) = served.get(&format!("/api/metrics?{bad}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }

    let registered = served.ok("/api/registered").await;
    let doomed_entry = registered
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["name"] == doomed::NAME)
        .unwrap();
    assert_eq!(doomed_entry["retries"], 1);
    assert_eq!(doomed_entry["executor"], "async");
    assert_eq!(doomed_entry["arguments"], "(u32,)");

    let document = served.ok("/openapi.json").await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(document["servers"][0]["url"], "/tasks");
    for path in [
        "/api/tasks",
        "/api/tasks/{id}",
        "/api/tasks/{id}/cancel",
        "/api/tasks/{id}/retry",
        "/api/tasks/retry",
        "/api/tasks/retry-failed",
        "/api/history/prune",
        "/api/metrics",
        "/api/queues",
        "/api/queues/{name}/pause",
        "/api/queues/{name}/resume",
        "/api/queues/{name}/concurrency",
        "/api/registered",
        "/api/audit",
        "/api/login",
        "/events",
    ] {
        assert!(document["paths"][path].is_object(), "{path} documented");
    }
    for schema in [
        "TaskView",
        "TaskDetail",
        "TaskPage",
        "TaskStatus",
        "ErrorBody",
        "MetricsView",
        "QueueStats",
    ] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "{schema} documented"
        );
    }
    manager.shutdown().await;
}

// --- task arguments ------------------------------------------------------------------

fn address() -> Address {
    Address {
        street: "1 Rue de l'Église".into(),
        zip: 75001,
        lines: vec!["3rd floor".into(), "door \"B\"".into()],
        note: None,
    }
}

/// How `deliver("Ada Lovelace", -3, address())` shows.
fn delivered_json() -> Value {
    json!({
        "recipient": "Ada Lovelace",
        "count": -3,
        "address": {
            "street": "1 Rue de l'Église",
            "zip": 75001,
            "lines": ["3rd floor", "door \"B\""],
            "note": null,
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_are_hidden_by_default_and_shown_by_name_when_allowed() {
    let manager = TaskManager::builder()
        .resource(Mailer)
        .build()
        .await
        .unwrap();
    let hidden = serve(&manager, config()).await;
    let shown = serve(&manager, config().show_arguments(true)).await;
    let delivered = deliver::call("Ada Lovelace".into(), -3, address())
        .enqueue_on(&manager)
        .unwrap()
        .id();
    let mailed = mail::call(7, "hello".into())
        .enqueue_on(&manager)
        .unwrap()
        .id();
    let bared = bare::call().enqueue_on(&manager).unwrap().id();
    for id in [delivered, mailed, bared] {
        wait_for_status(&manager, id, TaskStatus::Success).await;
        let detail = hidden.ok(&format!("/api/tasks/{id}")).await;
        assert_eq!(detail["status"], "SUCCESS");
        assert!(
            detail.get("arguments").is_none() && detail.get("arguments_error").is_none(),
            "hidden by default: {detail}"
        );
    }

    // The exact values, by parameter name.
    let detail = shown.ok(&format!("/api/tasks/{delivered}")).await;
    assert_eq!(detail["arguments"], delivered_json(), "{detail}");
    assert!(detail.get("arguments_error").is_none(), "{detail}");
    // In declaration order, not alphabetical, in the text sent.
    let text = shown
        .client
        .get(shown.url(&format!("/api/tasks/{delivered}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
    assert!(
        at("recipient") < at("count") && at("count") < at("address"),
        "{text}"
    );
    // A resource is not an argument, wherever it sits among them.
    let detail = shown.ok(&format!("/api/tasks/{mailed}")).await;
    assert_eq!(
        detail["arguments"],
        json!({ "user": 7, "subject": "hello" }),
        "{detail}"
    );
    let detail = shown.ok(&format!("/api/tasks/{bared}")).await;
    assert_eq!(detail["arguments"], json!({}), "{detail}");

    // The Rust API the admin reads them through.
    let arguments = manager.arguments(delivered).await.unwrap().unwrap();
    assert_eq!(arguments.name(), deliver::NAME);
    let decoded: (String, i64, Address) = arguments.decode().unwrap();
    assert_eq!(decoded, ("Ada Lovelace".to_owned(), -3, address()));
    assert!(arguments.decode::<(u64,)>().is_err());
    assert!(
        !format!("{arguments:?}").contains("Ada"),
        "Debug keeps the values out of logs"
    );

    // The OpenAPI document knows both fields, neither of them required.
    let document = shown.ok("/openapi.json").await;
    let detail_schema = &document["components"]["schemas"]["TaskDetail"];
    let own = detail_schema["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|part| part["properties"].is_object())
        .unwrap();
    for (field, kind) in [("arguments", "object"), ("arguments_error", "string")] {
        let types = own["properties"][field]["type"].as_array().unwrap();
        assert!(types.contains(&json!(kind)), "{field}: {detail_schema}");
        let required = own["required"].as_array().unwrap();
        assert!(
            !required.contains(&json!(field)),
            "{field}: {detail_schema}"
        );
    }
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_that_cannot_be_read_are_an_error_in_the_answer_not_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let first = stored_manager(&db).await;
    let enqueue = || {
        deliver::call("Ada Lovelace".into(), -3, address())
            .enqueue_on(&first)
            .unwrap()
            .id()
    };
    let (intact, damaged) = (enqueue(), enqueue());
    let renamed = quick::call(5).enqueue_on(&first).unwrap().id();
    for id in [intact, damaged, renamed] {
        wait_for_status(&first, id, TaskStatus::Success).await;
    }
    first.flush().await.unwrap();
    first.shutdown().await;

    // Damaged by another program: arguments that are not `deliver`'s, and
    // a task this binary does not register.
    let sql = rusqlite::Connection::open(&db).unwrap();
    sql.execute(
        "UPDATE tasks SET args = ?1 WHERE id = ?2",
        rusqlite::params![vec![0xffu8; 3], damaged.to_bytes()],
    )
    .unwrap();
    sql.execute(
        "UPDATE tasks SET name = 'elsewhere::gone' WHERE id = ?1",
        rusqlite::params![renamed.to_bytes()],
    )
    .unwrap();
    drop(sql);

    // Read back from the store, after a restart.
    let manager = stored_manager(&db).await;
    let served = serve(&manager, config().show_arguments(true)).await;
    let detail = served.ok(&format!("/api/tasks/{intact}")).await;
    assert_eq!(detail["arguments"], delivered_json(), "{detail}");

    let detail = served.ok(&format!("/api/tasks/{damaged}")).await;
    assert_eq!(detail["status"], "SUCCESS");
    assert!(detail.get("arguments").is_none(), "{detail}");
    let error = detail["arguments_error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "cannot read the stored arguments of task `{}`: cannot decode value: ",
            deliver::NAME
        )),
        "{error}"
    );

    let detail = served.ok(&format!("/api/tasks/{renamed}")).await;
    assert_eq!(detail["name"], "elsewhere::gone");
    assert!(detail.get("arguments").is_none(), "{detail}");
    assert_eq!(
        detail["arguments_error"],
        "no task named `elsewhere::gone` is registered in this binary"
    );
    manager.shutdown().await;
}

// --- the stream ---------------------------------------------------------------------

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<String>,
    data: String,
}

/// Reads server-sent events from a response, counting keep-alive comments.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
    comments: usize,
}

impl SseReader {
    async fn open(served: &Served, last_event_id: Option<&str>) -> Self {
        let mut request = served.client.get(served.url("/events")).bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event, within `PATIENCE`.
    async fn next(&mut self) -> Sse {
        within("the next server-sent event", async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut sse = Sse {
                        event: "message".into(),
                        id: None,
                        data: String::new(),
                    };
                    let mut fields = false;
                    for line in block.lines() {
                        if line.starts_with(':') {
                            self.comments += 1;
                        } else if let Some((field, value)) = line.split_once(':') {
                            fields = true;
                            let value = value.strip_prefix(' ').unwrap_or(value);
                            match field {
                                "event" => sse.event = value.to_owned(),
                                "id" => sse.id = Some(value.to_owned()),
                                "data" => sse.data.push_str(value),
                                _ => {}
                            }
                        }
                    }
                    if fields {
                        return sse;
                    }
                    continue;
                }
                let chunk = self.response.chunk().await.unwrap().expect("stream open");
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
    }

    /// Reads `tasks` batches until `id` shows `status`; the batches read.
    async fn until(&mut self, id: &str, status: &str) -> Vec<Sse> {
        let mut read = Vec::new();
        loop {
            let sse = self.next().await;
            let found = sse.event == "tasks"
                && serde_json::from_str::<Value>(&sse.data)
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|change| change["id"] == id && change["status"] == status);
            read.push(sse);
            if found {
                return read;
            }
        }
    }
}

/// The change to `status` of task `id` among the events `seen`.
fn change_in(seen: &[Sse], id: &str, status: &str) -> Value {
    seen.iter()
        .flat_map(|sse| serde_json::from_str::<Vec<Value>>(&sse.data).unwrap())
        .find(|change| change["id"] == id && change["status"] == status)
        .unwrap_or_else(|| panic!("no change of {id} to {status} in {seen:?}"))
}

/// With another instance on the same store, the stream shows the changes
/// it makes too: here a task that instance enqueues and runs (this one has
/// no free slot to claim it) appears live, up to SUCCESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_what_another_instance_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let shared = |slots: usize| {
        TaskManager::builder()
            .snapshot_db(&db)
            .max_concurrent_tasks(slots)
            .lease(Duration::from_secs(1))
            .build()
    };
    let here = shared(1).await.unwrap();
    let blocker = parked::call().enqueue_on(&here).unwrap();
    wait_for_status(&here, blocker.id(), TaskStatus::Running).await;
    let there = shared(4).await.unwrap();
    let served = serve(&here, config()).await;
    let mut stream = SseReader::open(&served, None).await;
    assert_eq!(stream.next().await.event, "snapshot");
    // Each instance learns of the other at its next heartbeat.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let handle = quick::call(21).enqueue_on(&there).unwrap();
    let id = handle.id().to_string();
    assert_eq!(within("the task there", handle).await.unwrap(), 21);
    let seen = stream.until(&id, "SUCCESS").await;
    let change = change_in(&seen, &id, "SUCCESS");
    assert_eq!(change["name"], quick::NAME);
    assert_eq!(change["change"], "observed");
    let record = here.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    here.cancel(blocker.id()).await.unwrap();
    there.shutdown().await;
    here.shutdown().await;
}

/// What another instance does before this one has noticed it (at its next
/// heartbeat) is shown too: the first look at the store once it has is not
/// taken as the starting point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_what_another_instance_did_before_it_was_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let shared = || {
        TaskManager::builder()
            .snapshot_db(&db)
            .lease(Duration::from_secs(1))
            .build()
    };
    let here = shared().await.unwrap();
    let served = serve(&here, config()).await;
    let mut stream = SseReader::open(&served, None).await;
    assert_eq!(stream.next().await.event, "snapshot");

    // Started and done before this instance's next heartbeat.
    let there = shared().await.unwrap();
    let handle = quick::call(34).enqueue_on(&there).unwrap();
    let id = handle.id().to_string();
    assert_eq!(within("the task there", handle).await.unwrap(), 34);
    let seen = stream.until(&id, "SUCCESS").await;
    let change = change_in(&seen, &id, "SUCCESS");
    assert_eq!(change["change"], "observed");
    there.shutdown().await;
    here.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_pending_to_success_live_and_resumes() {
    let manager = memory_manager().await;
    let served = serve(
        &manager,
        config().stream_keep_alive(Duration::from_millis(100)),
    )
    .await;
    let mut stream = SseReader::open(&served, None).await;
    let snapshot = stream.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.data, "[]");

    let handle = streamed::call().enqueue_on(&manager).unwrap();
    let id = handle.id().to_string();
    let started = stream.until(&id, "RUNNING").await;
    STREAMED_RELEASE.open();
    let finished = stream.until(&id, "SUCCESS").await;
    assert!(within("the task", handle).await.unwrap());
    let last_id = finished.last().unwrap().id.clone().unwrap();
    let first_id = started.first().unwrap().id.clone().unwrap();
    // Idle: keep-alive comments flow.
    let deadline = Instant::now() + PATIENCE;
    while stream.comments == 0 && Instant::now() < deadline {
        let next = within("a keep-alive", async {
            tokio::time::timeout(Duration::from_millis(500), stream.response.chunk()).await
        })
        .await;
        if let Ok(chunk) = next {
            let chunk = chunk.unwrap().unwrap();
            let text = std::str::from_utf8(&chunk).unwrap();
            stream.comments += text
                .lines()
                .filter(|line| line.starts_with(':') && line.contains("keep-alive"))
                .count();
        }
    }
    assert!(stream.comments > 0, "keep-alive comments");
    drop(stream);

    // Resuming from before the task replays its batches, not a snapshot.
    let before_first = (first_id.parse::<u64>().unwrap() - 1).to_string();
    let mut resumed = SseReader::open(&served, Some(&before_first)).await;
    let replayed = resumed.until(&id, "SUCCESS").await;
    assert_eq!(
        replayed.first().unwrap().id.as_deref(),
        Some(first_id.as_str())
    );
    assert!(replayed.iter().all(|sse| sse.event == "tasks"));
    assert_eq!(
        replayed.last().unwrap().id.as_deref(),
        Some(last_id.as_str())
    );
    drop(resumed);

    // A reconnect from an unknown point gets a snapshot with the task.
    let mut fresh = SseReader::open(&served, Some("999999")).await;
    let snapshot = fresh.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let tasks: Value = serde_json::from_str(&snapshot.data).unwrap();
    assert_eq!(tasks[0]["id"], id);
    assert_eq!(tasks[0]["status"], "SUCCESS");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_transitions_is_coalesced_per_task() {
    // Room on the bus for the whole burst (6000 events), so the stream
    // never has to ask for a resync.
    let manager = TaskManager::builder()
        .event_capacity(16_384)
        .build()
        .await
        .unwrap();
    let served = serve(
        &manager,
        config().stream_interval(Duration::from_millis(250)),
    )
    .await;
    let mut stream = SseReader::open(&served, None).await;
    assert_eq!(stream.next().await.event, "snapshot");
    let mut handles = Vec::new();
    for n in 0..2000 {
        handles.push(quick::call(n).enqueue_on(&manager).unwrap());
    }
    let ids: Vec<String> = handles.iter().map(|h| h.id().to_string()).collect();
    within("the burst", async {
        for handle in handles {
            handle.await.unwrap();
        }
    })
    .await;
    // Every task's SUCCESS arrives, in far fewer messages than the 6000
    // transitions, each task at most once per message.
    let mut succeeded = HashSet::new();
    let mut messages = 0;
    while succeeded.len() < ids.len() {
        let sse = stream.next().await;
        assert_eq!(sse.event, "tasks");
        messages += 1;
        let changes: Value = serde_json::from_str(&sse.data).unwrap();
        let mut in_message = HashSet::new();
        for change in changes.as_array().unwrap() {
            let id = change["id"].as_str().unwrap().to_owned();
            assert!(
                in_message.insert(id.clone()),
                "one change per task per message"
            );
            if change["status"] == "SUCCESS" {
                succeeded.insert(id);
            }
        }
    }
    assert!(messages < 200, "{messages} messages for 2000 tasks");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_not_buffered() {
    let manager = TaskManager::builder()
        .event_capacity(16_384)
        .build()
        .await
        .unwrap();
    let served = serve(
        &manager,
        config()
            .stream_interval(Duration::from_millis(1))
            .stream_client_buffer(2),
    )
    .await;
    let mut stalled = SseReader::open(&served, None).await;
    assert_eq!(stalled.next().await.event, "snapshot");
    // About 64 MB of changes while the client reads nothing: more than the
    // sockets can hold (at most 36 MB here, buffers fully grown), so the
    // server's buffer for it fills.
    let handles: Vec<_> = (0..1000)
        .map(|n| wordy::call(n).enqueue_on(&manager).unwrap())
        .collect();
    within("the burst", async {
        for handle in handles {
            assert!(handle.await.is_err());
        }
    })
    .await;
    // A client connecting now is served as usual.
    let mut fresh = SseReader::open(&served, None).await;
    assert_eq!(fresh.next().await.event, "snapshot");
    drop(fresh);

    // The stalled one gets what was already on its way, then the end.
    let mut failed_seen = 0usize;
    let ended = within("the stalled stream to end", async {
        loop {
            match stalled.response.chunk().await {
                Ok(Some(chunk)) => {
                    failed_seen += chunk.windows(8).filter(|w| w == b"\"FAILED\"").count();
                }
                Ok(None) => return true,
                Err(_) => return true,
            }
        }
    })
    .await;
    assert!(ended);
    assert!(
        failed_seen < 1000,
        "the stalled client missed changes ({failed_seen} of 1000 seen) rather than the server keeping them"
    );
    manager.shutdown().await;
}

// --- many processes -------------------------------------------------------------------

async fn postgres_manager(url: &str, schema: &taskflow_tests::postgres::Schema) -> TaskManager {
    TaskManager::builder()
        .postgres(
            taskflow::store::PostgresConfig::new(url)
                .schema(schema.name())
                .pool_size(4),
        )
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_postgres_store_the_admin_acts_on_every_hosts_tasks() {
    let test = "with_a_shared_postgres_store_the_admin_acts_on_every_hosts_tasks";
    let Some(url) = taskflow_tests::postgres::server(test).await else {
        return;
    };
    let schema = taskflow_tests::postgres::Schema::new(&url, "admin_hosts").await;
    let worker = postgres_manager(&url, &schema).await;
    let console = postgres_manager(&url, &schema).await;
    let served = serve(&console, config().show_arguments(true)).await;

    // Another host's tasks: 500 that succeed, 10 that fail.
    let mut enqueued = HashSet::new();
    let mut failures = Vec::new();
    for n in 0..500 {
        enqueued.insert(quick::call(n).enqueue_on(&worker).unwrap().id());
    }
    for n in 0..10 {
        let id = refused::call(n).enqueue_on(&worker).unwrap().id();
        enqueued.insert(id);
        failures.push(id);
    }
    for id in &enqueued {
        let status = if failures.contains(id) {
            TaskStatus::Failed
        } else {
            TaskStatus::Success
        };
        wait_for_status(&worker, *id, status).await;
    }
    worker.flush().await.unwrap();

    // Paged through the console's API: every one, once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let path = match &cursor {
            Some(cursor) => format!("/api/tasks?limit=97&cursor={cursor}"),
            None => "/api/tasks?limit=97".to_owned(),
        };
        let page = served.ok(&path).await;
        seen.extend(ids(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let expected: HashSet<String> = enqueued.iter().map(ToString::to_string).collect();
    assert_eq!(seen.len(), expected.len(), "no repeats");
    assert_eq!(
        seen.into_iter().collect::<HashSet<_>>(),
        expected,
        "no gaps"
    );
    // Its log lines, written by the other host (shortly after its status),
    // and its arguments, read from the store.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let detail = served.ok(&format!("/api/tasks/{}", failures[0])).await;
        assert_eq!(detail["status"], "FAILED");
        assert_eq!(detail["arguments"], json!({ "n": 0 }), "{detail}");
        let logs = detail["logs"].as_array().unwrap().len();
        if logs == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs from the other host: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Retry-all from the console: each failure once, however often.
    let (status, body) = served
        .post(
            "/api/tasks/retry-failed",
            json!({ "created_after": "2000-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["retried"].as_array().unwrap().len(), 10);
    console.flush().await.unwrap();
    let (_, again) = served
        .post(
            "/api/tasks/retry-failed",
            json!({ "created_after": "2000-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(again["retried"], json!([]), "{again}");
    worker.shutdown().await;
    console.shutdown().await;
}
