//! The admin HTTP API and dashboard (feature `admin`): an [`axum::Router`]
//! to nest in the application's own app, built on exactly the public [`TaskManager`] API,
//! so with a shared task store it shows and steers every process's tasks.
//!
//! ```no_run
//! # async fn serve(tasks: taskflow::TaskManager) -> std::io::Result<()> {
//! use taskflow::admin::{self, AdminConfig};
//!
//! let config = AdminConfig::new().bearer_token("ops", std::env::var("ADMIN_TOKEN").unwrap_or_default());
//! let app = axum::Router::new().nest("/tasks", admin::router(&tasks, config));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! Routes, relative to where the router is nested (`/tasks` above):
//!
//! | Method and path | What |
//! |---|---|
//! | `GET /api/tasks` | tasks, newest first, filtered and paged ([`ListQuery`]) |
//! | `GET /api/tasks/{id}` | one task with its logs, and its arguments if allowed ([`TaskDetail`]) |
//! | `POST /api/tasks/{id}/cancel` | cancel it |
//! | `POST /api/tasks/{id}/retry` | enqueue it again |
//! | `POST /api/tasks/retry` | retry several by id ([`RetryIds`]) |
//! | `POST /api/tasks/retry-failed` | retry each FAILED or INTERRUPTED task of a window once ([`RetryAllRequest`]) |
//! | `POST /api/history/prune` | delete finished tasks older than an age ([`PruneRequest`]) |
//! | `GET /api/metrics` | counts, success rate, durations, throughput ([`MetricsView`]) |
//! | `GET /api/queues` | queues with their depth and paused flag |
//! | `POST /api/queues/{name}/pause`, `…/resume` | pause or resume a queue |
//! | `POST /api/queues/{name}/concurrency` | change a queue's concurrency cap here |
//! | `GET /api/registered` | the tasks this binary registers, with their options |
//! | `GET /api/audit` | the audit log, newest first |
//! | `POST /api/login`, `POST /api/logout`, `GET /api/session` | cookie sessions |
//! | `GET /events` | server-sent events of task changes |
//! | `GET /openapi.json` | the OpenAPI document of all this |
//! | `GET /` | the dashboard: one page, no build step, no CDN |
//!
//! Errors are `{ "error": …, "code": … }` ([`ErrorBody`]) with status 400 (a
//! bad filter), 401 (no or wrong credentials), 403 (a cross-site or
//! CSRF-less state change), 404 (unknown id), 409 (wrong state) or 422 (a
//! bad body). Nothing binds a port: the application serves the router.
//! axum's `nest("/tasks", …)` answers `/tasks` but leaves `/tasks/` to the
//! application: route it to a redirect if people will type it.
//!
//! Task arguments may hold personal data, so they are not shown unless
//! [`AdminConfig::show_arguments`] allows it. Then a task's detail carries
//! them as JSON, decoded with the argument types the task registers in this
//! binary ([`TaskArguments::to_json`](crate::TaskArguments::to_json)), or
//! says why they cannot be read (a task this binary does not register, or
//! stored arguments that no longer decode as its types).

mod api;
mod audit;
mod auth;
mod dashboard;
mod error;
mod stream;
mod types;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::TaskManager;

pub use api::{AuditQuery, ListQuery, LoginRequest, MetricsQuery, SessionView};
pub use auth::{
    CSRF_HEADER, DEFAULT_ROUNDS, InvalidPasswordHash, SESSION_COOKIE, hash_password,
    hash_password_with_rounds,
};
pub use error::{AdminError, ErrorBody};
pub use stream::StreamEvent;
pub use types::{
    AuditEntry, BulkRetry, Cancelled, ConcurrencyChange, DurationBucket, ErrorView, LogView,
    MetricsView, MinuteCounts, PruneRequest, Pruned, QueueConcurrency, QueueState,
    RegisteredTaskView, Retried, RetryAll, RetryAllRequest, RetryIds, RetryOutcome, StatusCounts,
    TaskDetail, TaskPage, TaskView,
};

use auth::{Credentials, PasswordHash};

/// How the admin router behaves: who may use it and its limits.
///
/// [`AdminConfig::new`] admits nobody until a token or user is added, or
/// until [`insecure_no_auth`](Self::insecure_no_auth) says so explicitly.
///
/// ```
/// use std::time::Duration;
/// use taskflow::admin::{AdminConfig, hash_password_with_rounds};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hash = hash_password_with_rounds("correct horse", 1000)?;
/// let config = AdminConfig::new()
///     .bearer_token("deploy-bot", "a long random token")
///     .user("ops", &hash)?
///     .session_ttl(Duration::from_secs(8 * 3600))
///     .secure_cookie(true);
/// # let _ = config;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AdminConfig {
    pub(crate) credentials: Credentials,
    pub(crate) insecure: bool,
    pub(crate) origins: Vec<String>,
    pub(crate) secret: Option<Vec<u8>>,
    pub(crate) session_ttl: Duration,
    pub(crate) secure_cookie: bool,
    pub(crate) audit_capacity: usize,
    pub(crate) scan_limit: usize,
    pub(crate) coalesce: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) client_buffer: usize,
    pub(crate) replay: usize,
    pub(crate) show_arguments: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl AdminConfig {
    /// No credentials yet (every request is refused with 401), sessions of
    /// 12 hours, an audit log of 10 000 entries, scans of at most 100 000
    /// records, a stream coalescing changes per 250 ms, task arguments
    /// hidden.
    pub fn new() -> Self {
        AdminConfig {
            credentials: Credentials::default(),
            insecure: false,
            origins: Vec::new(),
            secret: None,
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookie: false,
            audit_capacity: 10_000,
            scan_limit: 100_000,
            coalesce: Duration::from_millis(250),
            keep_alive: Duration::from_secs(15),
            client_buffer: 64,
            replay: 1024,
            show_arguments: false,
        }
    }

    /// Admits `Authorization: Bearer <token>`, recorded in the audit log as
    /// `name`. Only the token's SHA-256 is kept. May be given several times.
    pub fn bearer_token(mut self, name: impl Into<String>, token: impl AsRef<str>) -> Self {
        let digest = auth::sha256(token.as_ref().trim().as_bytes());
        self.credentials.tokens.push((name.into(), digest));
        self
    }

    /// Admits user `name` logging in (`POST …/api/login`) with the password
    /// whose hash is `password_hash`, from [`hash_password`].
    ///
    /// # Errors
    ///
    /// [`InvalidPasswordHash`] when the hash is not one `hash_password` makes.
    pub fn user(
        mut self,
        name: impl Into<String>,
        password_hash: &str,
    ) -> Result<Self, InvalidPasswordHash> {
        let hash: PasswordHash = password_hash.parse()?;
        self.credentials.users.push((name.into(), hash));
        Ok(self)
    }

    /// Admits every request without credentials, as the `anonymous` actor.
    /// Only for a router reachable by trusted people alone (loopback, a
    /// private network behind another gate). CSRF protection stays on.
    pub fn insecure_no_auth(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// Also accepts state-changing requests whose `Origin` is `origin`
    /// (`https://admin.example.com`), besides the request's own host: for
    /// a reverse proxy that rewrites `Host`. May be given several times.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// The key session cookies are signed with (at least 32 bytes). Unset:
    /// a random one per router, so sessions end when the process restarts
    /// and are not shared between processes; set the same secret on each
    /// process behind one load balancer.
    pub fn session_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// How long a login lasts. Default 12 hours.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// Marks the session cookie `Secure` (sent over HTTPS only): set it when
    /// the admin is served over HTTPS. Default off.
    pub fn secure_cookie(mut self, secure: bool) -> Self {
        self.secure_cookie = secure;
        self
    }

    /// Keeps the newest `n` audit entries in memory. Default 10 000.
    pub fn audit_capacity(mut self, n: usize) -> Self {
        self.audit_capacity = n.max(1);
        self
    }

    /// At most `n` records are read for one metrics answer, text search
    /// page or retry-all. Default 100 000.
    pub fn scan_limit(mut self, n: usize) -> Self {
        self.scan_limit = n.max(1);
        self
    }

    /// The stream sends each task's latest change at most once per
    /// `interval`. Default 250 ms.
    pub fn stream_interval(mut self, interval: Duration) -> Self {
        self.coalesce = interval.max(Duration::from_millis(1));
        self
    }

    /// The stream sends a keep-alive comment after this long without a
    /// message. Default 15 s.
    pub fn stream_keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval.max(Duration::from_millis(1));
        self
    }

    /// Shows each task's arguments in its detail (`GET …/api/tasks/{id}`
    /// and the dashboard), as JSON keyed by parameter name. Default off:
    /// arguments can hold personal data (addresses, names, ids), and
    /// everyone the router admits would read them.
    ///
    /// ```
    /// use taskflow::admin::AdminConfig;
    /// let config = AdminConfig::new()
    ///     .bearer_token("ops", "a long random token")
    ///     .show_arguments(true);
    /// # let _ = config;
    /// ```
    pub fn show_arguments(mut self, show: bool) -> Self {
        self.show_arguments = show;
        self
    }

    /// A stream client may have at most `n` batches unsent; one that falls
    /// further behind is disconnected (it resumes with `Last-Event-ID`).
    /// Default 64.
    pub fn stream_client_buffer(mut self, n: usize) -> Self {
        self.client_buffer = n.max(1);
        self
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("credentials", &self.credentials)
            .field("insecure", &self.insecure)
            .field("origins", &self.origins)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("session_ttl", &self.session_ttl)
            .field("secure_cookie", &self.secure_cookie)
            .field("audit_capacity", &self.audit_capacity)
            .field("scan_limit", &self.scan_limit)
            .field("stream_interval", &self.coalesce)
            .field("stream_keep_alive", &self.keep_alive)
            .field("stream_client_buffer", &self.client_buffer)
            .field("show_arguments", &self.show_arguments)
            .finish()
    }
}

/// What every handler shares.
pub(crate) struct Admin {
    pub(crate) manager: TaskManager,
    pub(crate) config: AdminConfig,
    pub(crate) secret: Vec<u8>,
    pub(crate) audit: audit::AuditLog,
    /// Serializes retry-alls, so two at once cannot both retry a task.
    pub(crate) retry_all: tokio::sync::Mutex<()>,
    pub(crate) stream: stream::Hub,
    pub(crate) logins: auth::LoginThrottle,
}

/// The admin API over `manager`, to nest in an application's router
/// (`app.nest("/tasks", router(&manager, config))`). It keeps a clone of
/// the manager. See the [module docs](self) for its routes.
///
/// Without [`AdminConfig::session_secret`], a random secret is drawn from
/// the operating system; should that fail, login is refused (bearer tokens
/// still work).
pub fn router(manager: &TaskManager, config: AdminConfig) -> Router {
    let secret = config.secret.clone().unwrap_or_else(|| {
        let mut secret = vec![0u8; 32];
        if getrandom::fill(&mut secret).is_err() {
            tracing::warn!("no random bytes for the admin session secret; logins are refused");
            secret.clear();
        }
        secret
    });
    let admin = Arc::new(Admin {
        manager: manager.clone(),
        audit: audit::AuditLog::new(config.audit_capacity),
        retry_all: tokio::sync::Mutex::new(()),
        stream: stream::Hub::new(manager, &config),
        logins: auth::LoginThrottle::new(),
        secret,
        config,
    });
    let protected = Router::new()
        .route("/api/tasks", get(api::list_tasks))
        .route("/api/tasks/retry", post(api::bulk_retry))
        .route("/api/tasks/retry-failed", post(api::retry_all))
        .route("/api/tasks/{id}", get(api::get_task))
        .route("/api/tasks/{id}/cancel", post(api::cancel_task))
        .route("/api/tasks/{id}/retry", post(api::retry_task))
        .route("/api/history/prune", post(api::prune))
        .route("/api/metrics", get(api::metrics))
        .route("/api/queues", get(api::queues))
        .route("/api/queues/{name}/pause", post(api::pause_queue))
        .route("/api/queues/{name}/resume", post(api::resume_queue))
        .route("/api/queues/{name}/concurrency", post(api::set_concurrency))
        .route("/api/registered", get(api::registered))
        .route("/api/audit", get(api::audit))
        .route("/api/session", get(api::session))
        .route("/api/logout", post(api::logout))
        .route("/events", get(stream::events))
        .route("/openapi.json", get(api::openapi))
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            auth::guard,
        ));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/index.html", get(dashboard::page))
        .route("/api/login", post(api::login))
        .merge(protected)
        .fallback(api::not_found)
        .with_state(admin)
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
