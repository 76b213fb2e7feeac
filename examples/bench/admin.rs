//! B14, the admin API over a big store: the list endpoint with `rows`
//! finished tasks in SQLite, timed over loopback HTTP against the same
//! page's SQL run directly; and the event stream under a burst of no-op
//! tasks: messages against transitions, bytes per second, and the
//! process's CPU with and without a stream client.
//!
//! - **The store.** A manager runs one task that succeeds and one that
//!   fails on a fresh file and shuts down; their rows are the templates of
//!   `rows` finished rows inserted directly with rusqlite (one in
//!   [`FAILED_EVERY`] FAILED, the rest SUCCESS), created one millisecond
//!   apart, with ids made by `TaskId::at` as the manager makes them. Each
//!   part then builds a manager on the filled file (its migrations and
//!   start-up reads run over it; the first build is timed) and serves the
//!   admin router on 127.0.0.1 with a bearer token.
//! - **The list.** `GET /api/tasks?limit=50`: the first page, a page from a
//!   cursor in the middle of the rows, and filtered pages, each requested
//!   `requests` times in turns over one kept-alive connection by a minimal
//!   HTTP/1.1 client ([`Http`]). Raw: the statement the store runs for the
//!   same page (the page and one more row) on a rusqlite connection of its
//!   own, every column read.
//! - **The stream.** A client on a thread of its own ([`Side`]) reads
//!   `GET /events` and counts messages, task changes and bytes while a
//!   burst of no-op tasks runs on the manager, until the stream has been
//!   quiet for [`QUIET`]. The process's CPU time over the burst, less the
//!   client thread's own, is the server's: against the same burst with no
//!   stream client (run first: once started, the stream's hub follows the
//!   manager's bus for good, so each run has a manager of its own). A last
//!   burst, with the stream, has a second client asking for the first page
//!   every 20 ms: the list's latency while the burst and the stream run.
//!   After the last run the first page is timed again, idle, on a manager
//!   that now holds the bursts' finished records in memory.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, params};
use taskflow::admin::{self, AdminConfig};
use taskflow::{TaskId, TaskManager, task};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::report::{Measure, Row, Target};
use crate::schedules::{cpu_time, cpu_time_of};
use crate::{BoxError, count, percentiles};

/// One stored row in this many is a failure.
const FAILED_EVERY: usize = 100;
/// Tasks per page, the dashboard's.
const PAGE: usize = 50;
/// The issue's target for a page.
const TARGET: Duration = Duration::from_millis(50);
/// The stream has gone quiet after this long without a message (4 × its
/// default interval).
const QUIET: Duration = Duration::from_secs(1);
/// How often the probe asks for the first page during a burst.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for anything here: a stuck run fails rather than hangs.
const PATIENCE: Duration = Duration::from_secs(120);
/// The bearer token the bench's clients send.
const TOKEN: &str = "b14-bench-token";
/// The columns the SQLite store selects for a task, in its order.
const COLUMNS: &str = "id, name, executor, status, args, tags, attempts, created_at, \
     started_at, finished_at, error_kind, error_message, output, rowid, queue, priority, run_at, \
     idempotency_key, owner, cancel_requested, codec, logs_dropped, schedule, tick";
/// How many columns that is.
const COLUMN_COUNT: usize = 24;

/// The template of every stored success.
#[task]
async fn listed_ok() {}

/// The template of every stored failure.
#[task]
async fn listed_fails() -> Result<(), String> {
    Err("b14: the upstream answered 502".to_owned())
}

// ---------------------------------------------------------------- the store

/// A stored row's columns that come from its template.
struct Template {
    name: String,
    executor: String,
    queue: String,
    priority: i64,
    status: String,
    args: Vec<u8>,
    tags: Option<Vec<u8>>,
    attempts: i64,
    error_kind: Option<String>,
    error_message: Option<String>,
    codec: i64,
}

/// The filled store.
struct Filled {
    /// The id of the row in the middle: a deep page's cursor.
    middle: TaskId,
    /// How long inserting the rows took.
    took: Duration,
}

fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Writes the templates through taskflow, then `rows` rows like them.
async fn fill(path: &Path, rows: usize) -> Result<Filled, BoxError> {
    let manager = TaskManager::builder().snapshot_db(path).build().await?;
    listed_ok::call().enqueue_on(&manager)?.await?;
    if listed_fails::call().enqueue_on(&manager)?.await.is_ok() {
        return Err("the failing template succeeded".into());
    }
    manager.flush().await?;
    manager.shutdown().await;
    let path = path.to_owned();
    crate::blocking(move || insert_rows(&path, rows)).await
}

fn template(db: &Connection, name: &str) -> rusqlite::Result<Template> {
    db.query_row(
        "SELECT name, executor, queue, priority, status, args, tags, attempts, error_kind, \
         error_message, codec FROM tasks WHERE name = ?1",
        [name],
        |row| {
            Ok(Template {
                name: row.get(0)?,
                executor: row.get(1)?,
                queue: row.get(2)?,
                priority: row.get(3)?,
                status: row.get(4)?,
                args: row.get(5)?,
                tags: row.get(6)?,
                attempts: row.get(7)?,
                error_kind: row.get(8)?,
                error_message: row.get(9)?,
                codec: row.get(10)?,
            })
        },
    )
}

/// Inserts `rows` finished rows in one transaction. Blocking.
fn insert_rows(path: &Path, rows: usize) -> Result<Filled, BoxError> {
    let mut db = Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    // A benchmark's scratch file: no need to survive a power cut mid-fill.
    db.pragma_update(None, "synchronous", "OFF")?;
    db.pragma_update(None, "cache_size", -262_144)?;
    let ok = template(&db, listed_ok::NAME)?;
    let failed = template(&db, listed_fails::NAME)?;
    if failed.status != "FAILED" || ok.status != "SUCCESS" {
        return Err(format!(
            "the templates are {} and {}, not SUCCESS and FAILED",
            ok.status, failed.status
        )
        .into());
    }
    let start = Instant::now();
    let newest = SystemTime::now() - Duration::from_secs(60);
    let oldest = newest - Duration::from_millis(rows as u64);
    let mut middle = None;
    let transaction = db.transaction()?;
    {
        let mut insert = transaction.prepare(
            "INSERT INTO tasks (id, name, executor, queue, priority, status, args, tags, \
             attempts, created_at, run_at, started_at, finished_at, error_kind, error_message, \
             codec) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        for i in 0..rows {
            let created = oldest + Duration::from_millis(i as u64);
            let id = TaskId::at(created);
            if i == rows / 2 {
                middle = Some(id);
            }
            let row = match i % FAILED_EVERY == FAILED_EVERY - 1 {
                true => &failed,
                false => &ok,
            };
            let at = micros(created);
            insert.execute(params![
                id.to_bytes(),
                row.name,
                row.executor,
                row.queue,
                row.priority,
                row.status,
                row.args,
                row.tags,
                row.attempts,
                at,
                at + 200,
                at + 300,
                row.error_kind,
                row.error_message,
                row.codec,
            ])?;
        }
    }
    transaction.commit()?;
    let took = start.elapsed();
    let stored: i64 = db.query_row("SELECT count(*) FROM tasks", [], |row| row.get(0))?;
    if stored != rows as i64 + 2 {
        return Err(format!("the store holds {stored} rows, expected {}", rows + 2).into());
    }
    let middle = middle.ok_or("no rows to list")?;
    Ok(Filled { middle, took })
}

// ---------------------------------------------------------------- HTTP

/// A minimal HTTP/1.1 client over one kept-alive loopback connection:
/// enough for the admin API (a GET with a bearer token; an answer with a
/// `Content-Length` or a chunked body, or a stream of chunks).
struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

/// An answer's status and how its body is framed.
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// Sends `GET path` and reads the answer's head.
    async fn request(&mut self, path: &str) -> Result<Head, BoxError> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
            self.host
        );
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
        let mut head = Head {
            status,
            length: None,
            chunked: false,
        };
        loop {
            self.line(&mut line).await?;
            if line.is_empty() {
                return Ok(head);
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => head.length = value.parse().ok(),
                    "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
        }
    }

    /// One line, without its line end; an error at the end of the stream.
    async fn line(&mut self, line: &mut String) -> Result<(), BoxError> {
        line.clear();
        if self.reader.read_line(line).await? == 0 {
            return Err("the server closed the connection".into());
        }
        line.truncate(line.trim_end_matches(['\r', '\n']).len());
        Ok(())
    }

    /// Appends the next chunk of a chunked body to `into`; false after the
    /// last one.
    async fn chunk(&mut self, into: &mut Vec<u8>) -> Result<bool, BoxError> {
        let mut line = String::new();
        self.line(&mut line).await?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk {line:?}"))?;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                self.line(&mut line).await?;
                if line.is_empty() {
                    return Ok(false);
                }
            }
        }
        let start = into.len();
        into.resize(start + size, 0);
        self.reader.read_exact(&mut into[start..]).await?;
        self.line(&mut line).await?;
        Ok(true)
    }

    /// `GET path`: the status and the body.
    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), BoxError> {
        let head = self.request(path).await?;
        let mut body = Vec::new();
        if head.chunked {
            while self.chunk(&mut body).await? {}
        } else {
            let length = head.length.ok_or("an answer with no length")?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body).await?;
        }
        Ok((head.status, body))
    }
}

async fn serve(
    manager: &TaskManager,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BoxError> {
    let app = admin::router(manager, AdminConfig::new().bearer_token("bench", TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("B14: the admin server stopped: {error}");
        }
    });
    Ok((addr, server))
}

// ---------------------------------------------------------------- the list

/// One page the bench asks for, and the statement the store runs for it.
struct Page {
    label: String,
    path: String,
    sql: String,
    values: Vec<Value>,
    /// Tasks the page holds, and the status and name each must have.
    expect: (usize, Option<&'static str>, Option<&'static str>),
}

/// The store's condition for a finished status: the partial index's own
/// condition stated beside it, so SQLite reads that index.
const FINISHED_STATUS: &str = "WHERE status = ? AND status NOT IN ('PENDING', 'RUNNING')";

fn pages(middle: TaskId) -> Vec<Page> {
    let select = |condition: &str| {
        format!("SELECT {COLUMNS} FROM tasks {condition} ORDER BY id DESC LIMIT ?")
    };
    let cursor = Value::Blob(middle.to_bytes().to_vec());
    let limit = Value::Integer(PAGE as i64 + 1);
    let text = |s: &str| Value::Text(s.to_owned());
    let failing = listed_fails::NAME;
    vec![
        Page {
            label: "first page".into(),
            path: format!("/api/tasks?limit={PAGE}"),
            sql: select(""),
            values: vec![limit.clone()],
            expect: (PAGE, None, None),
        },
        Page {
            label: "deep page (cursor at the middle row)".into(),
            path: format!("/api/tasks?limit={PAGE}&cursor={middle}"),
            sql: select("WHERE id < ?"),
            values: vec![cursor.clone(), limit.clone()],
            expect: (PAGE, None, None),
        },
        Page {
            label: "status=FAILED, first page".into(),
            path: format!("/api/tasks?limit={PAGE}&status=FAILED"),
            sql: select(FINISHED_STATUS),
            values: vec![text("FAILED"), limit.clone()],
            expect: (PAGE, Some("FAILED"), None),
        },
        Page {
            label: "status=FAILED, deep page".into(),
            path: format!("/api/tasks?limit={PAGE}&status=FAILED&cursor={middle}"),
            sql: select(&format!("{FINISHED_STATUS} AND id < ?")),
            values: vec![text("FAILED"), cursor, limit.clone()],
            expect: (PAGE, Some("FAILED"), None),
        },
        Page {
            label: "name=<the failing task>, first page".into(),
            path: format!("/api/tasks?limit={PAGE}&name={failing}"),
            sql: select("WHERE name = ?"),
            values: vec![text(failing), limit.clone()],
            expect: (PAGE, None, Some(failing)),
        },
        Page {
            label: "status=CANCELLED (none stored)".into(),
            path: format!("/api/tasks?limit={PAGE}&status=CANCELLED"),
            sql: select(FINISHED_STATUS),
            values: vec![text("CANCELLED"), limit.clone()],
            expect: (0, None, None),
        },
        Page {
            label: "status=PENDING (none stored)".into(),
            path: format!("/api/tasks?limit={PAGE}&status=PENDING"),
            // The store's count of the few, then its read of their index.
            sql: "SELECT id FROM tasks INDEXED BY tasks_ready WHERE status = 'PENDING' \
                  ORDER BY id DESC LIMIT ?"
                .to_owned(),
            values: vec![limit],
            expect: (0, None, None),
        },
    ]
}

/// Checks an answer holds what the page should.
fn check(page: &Page, status: u16, body: &[u8]) -> Result<(), BoxError> {
    if status != 200 {
        return Err(format!(
            "{}: status {status}: {}",
            page.label,
            String::from_utf8_lossy(body)
        )
        .into());
    }
    let answer: serde_json::Value = serde_json::from_slice(body)?;
    let tasks = answer["tasks"]
        .as_array()
        .ok_or("an answer with no tasks")?;
    let (len, status, name) = page.expect;
    let fits = |task: &serde_json::Value| {
        status.is_none_or(|s| task["status"] == s) && name.is_none_or(|n| task["name"] == n)
    };
    if tasks.len() != len || !tasks.iter().all(fits) {
        return Err(format!("{}: an unexpected page: {answer}", page.label).into());
    }
    Ok(())
}

/// Runs every page's statement once on `db`, every column read; the time
/// each took (µs).
fn raw_round(db: &Connection, pages: &[Page]) -> rusqlite::Result<Vec<u64>> {
    let mut times = Vec::with_capacity(pages.len());
    for page in pages {
        let start = Instant::now();
        let mut statement = db.prepare_cached(&page.sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(&page.values))?;
        while let Some(row) = rows.next()? {
            for column in 0..COLUMN_COUNT {
                std::hint::black_box(row.get::<_, Value>(column)?);
            }
        }
        times.push(start.elapsed().as_micros() as u64);
    }
    Ok(times)
}

/// Every page `requests` times through the API and as raw SQL, in turns:
/// the samples (µs) of each, and each answer's size.
async fn time_pages(
    addr: SocketAddr,
    path: &Path,
    pages: Arc<Vec<Page>>,
    requests: usize,
) -> Result<(Vec<Vec<u64>>, Vec<Vec<u64>>, Vec<usize>), BoxError> {
    let mut http = Http::connect(addr).await?;
    let mut sizes = Vec::new();
    for page in pages.iter() {
        let (status, body) = http.get(&page.path).await?;
        check(page, status, &body)?;
        sizes.push(body.len());
    }
    let mut raw = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut ours = vec![Vec::with_capacity(requests); pages.len()];
    let mut theirs = vec![Vec::with_capacity(requests); pages.len()];
    // Five rounds of warm-up, then the measured ones.
    for round in 0..requests + 5 {
        let mut times = Vec::with_capacity(pages.len());
        for page in pages.iter() {
            let start = Instant::now();
            let (status, _) = http.get(&page.path).await?;
            times.push(start.elapsed().as_micros() as u64);
            if status != 200 {
                return Err(format!("{}: status {status}", page.label).into());
            }
        }
        let shared = pages.clone();
        let (db, raw_times) = crate::blocking(move || {
            let times = raw_round(&raw, &shared)?;
            Ok((raw, times))
        })
        .await?;
        raw = db;
        if round >= 5 {
            for (samples, time) in ours.iter_mut().zip(times) {
                samples.push(time);
            }
            for (samples, time) in theirs.iter_mut().zip(raw_times) {
                samples.push(time);
            }
        }
    }
    Ok((ours, theirs, sizes))
}

fn micros_measure(us: f64) -> Measure {
    Measure::Time(Duration::from_secs_f64(us / 1e6))
}

fn list_rows(
    rows: usize,
    pages: &[Page],
    (ours, theirs, sizes): &(Vec<Vec<u64>>, Vec<Vec<u64>>, Vec<usize>),
    context: &str,
) -> Vec<Row> {
    let mut out = Vec::new();
    for (((page, ours), theirs), size) in pages.iter().zip(ours).zip(theirs).zip(sizes) {
        let (p50, p99, max) = percentiles(ours);
        let (raw_p50, raw_p99, raw_max) = percentiles(theirs);
        let mut row = Row::new(
            "B14",
            format!(
                "{} finished tasks in SQLite: GET /api/tasks?limit={PAGE}, {}: p99",
                count(rows),
                page.label
            ),
            Target::AtMost(Measure::Time(TARGET)),
        );
        row.taskflow = Some(micros_measure(p99));
        row.raw = Some(micros_measure(raw_p99));
        row.raw_name = "the store's SELECT for the page on rusqlite".to_owned();
        row.ratio_meaning = "taskflow / raw p99";
        row.ratio = Some(p99 / raw_p99.max(1.0));
        row.samples = ours
            .iter()
            .zip(theirs)
            .map(|(&a, &b)| (a as f64 / 1e6, b as f64 / 1e6))
            .collect();
        row.note = format!(
            "p50 {} (raw {}), max {} (raw {}); {} requests over one kept-alive loopback connection; answer {size} B; {context}",
            micros_measure(p50).text(),
            micros_measure(raw_p50).text(),
            micros_measure(max).text(),
            micros_measure(raw_max).text(),
            ours.len(),
        );
        out.push(row);
    }
    out
}

// ---------------------------------------------------------------- the stream

/// A client on a thread of its own with a single-threaded runtime, so its
/// CPU time can be told apart from the server's.
struct Side<T> {
    /// The thread's `/proc` stat file.
    stat: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<T, String>>>,
}

impl<T: Send + 'static> Side<T> {
    fn start<F, Fut>(name: &str, run: F) -> Result<Self, BoxError>
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        let (stop, stopped) = oneshot::channel();
        let (tell, told) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // `<pid>/task/<tid>`, relative to /proc.
                let me = std::fs::read_link("/proc/thread-self").ok();
                let _ = tell.send(me.map(|me| format!("/proc/{}/stat", me.display())));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| error.to_string())?;
                runtime
                    .block_on(run(stopped))
                    .map_err(|error| error.to_string())
            })?;
        let stat = told.recv_timeout(PATIENCE).ok().flatten();
        Ok(Side {
            stat,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The CPU time the thread has used so far.
    fn cpu(&self) -> Duration {
        self.stat
            .as_deref()
            .and_then(cpu_time_of)
            .unwrap_or_default()
    }

    /// Stops the client and returns what it returned.
    async fn finish(mut self) -> Result<T, BoxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take().ok_or("finished twice")?;
        crate::blocking(move || {
            thread
                .join()
                .map_err(|_| "a B14 client thread panicked")?
                .map_err(Into::into)
        })
        .await
    }
}

/// What the stream client has read.
#[derive(Debug, Default)]
struct Tally {
    /// Bytes of `text/event-stream` (the chunks' contents).
    bytes: AtomicU64,
    /// `event: tasks` messages.
    batches: AtomicU64,
    snapshots: AtomicU64,
    resyncs: AtomicU64,
    /// Task changes in the batches, and how many of them are `succeeded`.
    changes: AtomicU64,
    succeeded: AtomicU64,
    /// When the last message came, in µs after the client's start.
    last: AtomicU64,
}

impl Tally {
    fn reset(&self) {
        for counter in [
            &self.bytes,
            &self.batches,
            &self.snapshots,
            &self.resyncs,
            &self.changes,
            &self.succeeded,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Reads `text/event-stream` line by line, counting into a [`Tally`].
#[derive(Default)]
struct Sse {
    line: Vec<u8>,
    event: Vec<u8>,
    changes: u64,
    succeeded: u64,
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

impl Sse {
    fn feed(&mut self, bytes: &[u8], tally: &Tally, origin: Instant) {
        for piece in bytes.split_inclusive(|&byte| byte == b'\n') {
            self.line.extend_from_slice(piece);
            if self.line.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.line);
                self.take(&line[..line.len() - 1], tally, origin);
            }
        }
    }

    fn take(&mut self, line: &[u8], tally: &Tally, origin: Instant) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The end of a message (or of a comment).
            let counter = match self.event.as_slice() {
                b"tasks" => {
                    tally.changes.fetch_add(self.changes, Ordering::Relaxed);
                    tally.succeeded.fetch_add(self.succeeded, Ordering::Relaxed);
                    Some(&tally.batches)
                }
                b"snapshot" => Some(&tally.snapshots),
                b"resync" => Some(&tally.resyncs),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
                tally
                    .last
                    .store(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            self.event.clear();
            (self.changes, self.succeeded) = (0, 0);
        } else if let Some(name) = line.strip_prefix(b"event:") {
            self.event = name.trim_ascii().to_vec();
        } else if let Some(data) = line.strip_prefix(b"data:") {
            self.changes += occurrences(data, br#"{"id":"#);
            self.succeeded += occurrences(data, br#""change":"succeeded""#);
        }
    }
}

/// Reads `GET /events` until stopped or the server ends it.
async fn follow(
    addr: SocketAddr,
    tally: Arc<Tally>,
    origin: Instant,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), BoxError> {
    let mut http = Http::connect(addr).await?;
    let head = http.request("/events").await?;
    if head.status != 200 || !head.chunked {
        return Err(format!(
            "/events answered {} (chunked: {})",
            head.status, head.chunked
        )
        .into());
    }
    let mut sse = Sse::default();
    let mut chunk = Vec::new();
    loop {
        chunk.clear();
        tokio::select! {
            more = http.chunk(&mut chunk) => if !more? {
                return Ok(());
            },
            _ = &mut stop => return Ok(()),
        }
        tally.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        sse.feed(&chunk, &tally, origin);
    }
}

/// Asks for the first page every [`PROBE_EVERY`] until stopped: each
/// request's time (µs).
async fn probe(addr: SocketAddr, mut stop: oneshot::Receiver<()>) -> Result<Vec<u64>, BoxError> {
    let mut http = Http::connect(addr).await?;
    let mut times = Vec::new();
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut stop => return Ok(times),
        }
        let start = Instant::now();
        let (status, _) = http.get(&format!("/api/tasks?limit={PAGE}")).await?;
        times.push(start.elapsed().as_micros() as u64);
        if status != 200 {
            return Err(format!("the probe's page: status {status}").into());
        }
    }
    Ok(times)
}

/// The stream client.
struct Follower {
    side: Side<()>,
    tally: Arc<Tally>,
    origin: Instant,
}

impl Follower {
    /// Connects, and waits for the first message (the snapshot).
    async fn start(addr: SocketAddr) -> Result<Self, BoxError> {
        let tally = Arc::new(Tally::default());
        let origin = Instant::now();
        let counting = tally.clone();
        let side = Side::start("b14-stream", move |stop| {
            follow(addr, counting, origin, stop)
        })?;
        let deadline = Instant::now() + PATIENCE;
        while Tally::get(&tally.snapshots) == 0 {
            if Instant::now() > deadline {
                return Err("the stream sent no snapshot".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Follower {
            side,
            tally,
            origin,
        })
    }

    /// How long since the last message.
    fn silent(&self) -> Duration {
        let last = Duration::from_micros(Tally::get(&self.tally.last));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// One burst's figures.
#[derive(Debug, Default)]
struct Burst {
    /// From the first enqueue until every task was SUCCESS and written.
    ran: Duration,
    /// The process's CPU time over the burst, less the clients' threads.
    cpu: Duration,
    /// From the first enqueue until the last stream message.
    streamed: Duration,
    bytes: u64,
    batches: u64,
    resyncs: u64,
    changes: u64,
    succeeded: u64,
    /// The probe's request times (µs).
    probes: Vec<u64>,
}

/// `tasks` no-op tasks on `manager`, with the stream client `follower`
/// reading (until it has been quiet for [`QUIET`]) and a probe asking for
/// the first page, when given.
async fn burst(
    manager: &TaskManager,
    tasks: usize,
    follower: Option<&Follower>,
    probe_at: Option<SocketAddr>,
) -> Result<Burst, BoxError> {
    let prober = match probe_at {
        Some(addr) => Some(Side::start("b14-probe", move |stop| probe(addr, stop))?),
        None => None,
    };
    let clients_cpu = || {
        follower.map_or(Duration::ZERO, |f| f.side.cpu())
            + prober.as_ref().map_or(Duration::ZERO, Side::cpu)
    };
    if let Some(follower) = follower {
        follower.tally.reset();
    }
    let (cpu_before, clients_before) = (cpu_time(), clients_cpu());
    let start = Instant::now();
    let driver = manager.clone();
    crate::on_worker(async move {
        let handles = (0..tasks)
            .map(|_| crate::noop::call().enqueue_on(&driver))
            .collect::<Result<Vec<_>, _>>()?;
        for handle in handles {
            handle.await?;
        }
        driver.flush().await?;
        Ok(())
    })
    .await?;
    let ran = start.elapsed();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let quiet = follower.is_none_or(|f| f.silent() >= QUIET);
        if start.elapsed() >= ran + QUIET && quiet {
            break;
        }
        if Instant::now() > deadline {
            return Err("the stream did not go quiet".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) => {
            (after - before).saturating_sub(clients_cpu().saturating_sub(clients_before))
        }
        _ => Duration::ZERO,
    };
    let mut measured = Burst {
        ran,
        cpu,
        ..Burst::default()
    };
    if let Some(follower) = follower {
        let tally = &follower.tally;
        let last = Duration::from_micros(Tally::get(&tally.last));
        measured.streamed = (follower.origin + last).saturating_duration_since(start);
        measured.bytes = Tally::get(&tally.bytes);
        measured.batches = Tally::get(&tally.batches);
        measured.resyncs = Tally::get(&tally.resyncs);
        measured.changes = Tally::get(&tally.changes);
        measured.succeeded = Tally::get(&tally.succeeded);
    }
    if let Some(prober) = prober {
        measured.probes = prober.finish().await?;
    }
    Ok(measured)
}

/// Lifecycle transitions of one no-op task: enqueued, started, succeeded.
const TRANSITIONS: usize = 3;

/// One run of the stream's bursts, on a manager of its own.
#[derive(Debug)]
struct StreamRun {
    /// No stream client.
    quiet: Burst,
    /// One stream client.
    streamed: Burst,
    /// The stream client and the probe.
    probed: Burst,
}

/// The median of `pick` over the runs.
fn median_of(runs: &[StreamRun], pick: impl Fn(&StreamRun) -> f64) -> f64 {
    crate::report::median(&runs.iter().map(pick).collect::<Vec<_>>())
}

/// `a`, `a–b`: the spread of `pick` over the runs, as text.
fn spread_of(
    runs: &[StreamRun],
    pick: impl Fn(&StreamRun) -> f64,
    text: impl Fn(f64) -> String,
) -> String {
    let values: Vec<f64> = runs.iter().map(pick).collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        0 | 1 => text(min),
        _ => format!("{}–{}", text(min), text(max)),
    }
}

fn stream_rows(tasks: usize, runs: &[StreamRun], idle_p99: f64) -> Vec<Row> {
    let n = count(tasks);
    let transitions = (tasks * TRANSITIONS) as f64;
    let whole = |value: f64| format!("{value:.0}");
    let time = |seconds: f64| crate::report::duration_text(Duration::from_secs_f64(seconds));
    let messages = |run: &StreamRun| (run.streamed.batches + run.streamed.resyncs) as f64;
    let sent = median_of(runs, messages);
    let mut coalescing = Row::new(
        "B14",
        format!("stream under a burst of {n} no-op tasks: messages sent"),
        Target::Report,
    );
    coalescing.taskflow = Some(Measure::Total(sent));
    coalescing.raw = Some(Measure::Total(transitions));
    coalescing.raw_name = format!("lifecycle transitions ({TRANSITIONS} per task)");
    coalescing.ratio_meaning = "transitions per message (coalescing)";
    coalescing.ratio = Some(transitions / sent.max(1.0));
    coalescing.samples = runs
        .iter()
        .map(|run| (messages(run), transitions))
        .collect();
    coalescing.note = format!(
        "{} run(s); per run: messages {}, of them `resync` {}; task changes in the batches {} (`succeeded` {} of {tasks} tasks); the last message {} after the first enqueue, the burst ran {}",
        runs.len(),
        spread_of(runs, messages, whole),
        spread_of(runs, |run| run.streamed.resyncs as f64, whole),
        spread_of(runs, |run| run.streamed.changes as f64, whole),
        spread_of(runs, |run| run.streamed.succeeded as f64, whole),
        spread_of(runs, |run| run.streamed.streamed.as_secs_f64(), time),
        spread_of(runs, |run| run.streamed.ran.as_secs_f64(), time),
    );

    let rate =
        |run: &StreamRun| run.streamed.bytes as f64 / run.streamed.streamed.as_secs_f64().max(1e-3);
    let mut bandwidth = Row::new(
        "B14",
        format!("stream under a burst of {n} no-op tasks: bytes per second"),
        Target::Report,
    );
    bandwidth.taskflow = Some(Measure::ByteRate(median_of(runs, rate)));
    bandwidth.samples = runs.iter().map(|run| (rate(run), 0.0)).collect();
    bandwidth.note = format!(
        "event-stream bytes from the first enqueue to the last message: {} per run ({}); {} B per task change",
        spread_of(runs, |run| run.streamed.bytes as f64, whole),
        spread_of(runs, rate, |r| Measure::ByteRate(r).text()),
        whole(median_of(runs, |run| {
            run.streamed.bytes as f64 / run.streamed.changes.max(1) as f64
        })),
    );

    let per_thousand = |burst: &Burst| burst.cpu.as_secs_f64() * 1000.0 / tasks.max(1) as f64;
    let (with, without) = (
        median_of(runs, |run| per_thousand(&run.streamed)),
        median_of(runs, |run| per_thousand(&run.quiet)),
    );
    let mut cpu = Row::new(
        "B14",
        format!("server CPU per 1k tasks, burst of {n}, one stream client"),
        Target::Report,
    );
    cpu.taskflow = Some(Measure::Time(Duration::from_secs_f64(with)));
    cpu.raw = Some(Measure::Time(Duration::from_secs_f64(without)));
    cpu.raw_name = "the same burst, no stream client".to_owned();
    cpu.ratio_meaning = "with / without the stream client";
    cpu.ratio = Some(with / without.max(1e-9));
    cpu.samples = runs
        .iter()
        .map(|run| (per_thousand(&run.streamed), per_thousand(&run.quiet)))
        .collect();
    cpu.note = format!(
        "process user + system CPU (10 ms ticks) from the first enqueue until the stream was quiet for {}, less the client thread's own; per run with {}, without {}; the bursts ran {} with, {} without",
        crate::report::duration_text(QUIET),
        spread_of(runs, |run| per_thousand(&run.streamed), time),
        spread_of(runs, |run| per_thousand(&run.quiet), time),
        spread_of(runs, |run| run.streamed.ran.as_secs_f64(), time),
        spread_of(runs, |run| run.quiet.ran.as_secs_f64(), time),
    );

    let probe = |run: &StreamRun| percentiles(&run.probed.probes);
    let p99 = median_of(runs, |run| probe(run).1);
    let mut during = Row::new(
        "B14",
        format!("first page during a burst of {n} with the stream: p99"),
        Target::Report,
    );
    during.taskflow = Some(micros_measure(p99));
    during.raw = Some(micros_measure(idle_p99));
    during.raw_name = "the same page, idle".to_owned();
    during.ratio_meaning = "during / idle p99";
    during.ratio = Some(p99 / idle_p99.max(1.0));
    during.samples = runs
        .iter()
        .map(|run| (probe(run).1 / 1e6, idle_p99 / 1e6))
        .collect();
    let micros = |us: f64| micros_measure(us).text();
    during.note = format!(
        "a request every {} from a second client while the burst ran, {} requests per run; per run p99 {}, p50 {}, max {}",
        crate::report::duration_text(PROBE_EVERY),
        spread_of(runs, |run| run.probed.probes.len() as f64, whole),
        spread_of(runs, |run| probe(run).1, micros),
        spread_of(runs, |run| probe(run).0, micros),
        spread_of(runs, |run| probe(run).2, micros),
    );
    vec![coalescing, bandwidth, cpu, during]
}

// ---------------------------------------------------------------- B14

/// A manager on the store at `path` with the admin router served on
/// 127.0.0.1; the server is stopped and the manager shut down after
/// `work`, whatever it returned.
async fn with_server<T, F, Fut>(path: &Path, work: F) -> Result<T, BoxError>
where
    F: FnOnce(TaskManager, SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    let manager = TaskManager::builder().snapshot_db(path).build().await?;
    let (addr, server) = serve(&manager).await?;
    let result = work(manager.clone(), addr).await;
    server.abort();
    manager.shutdown().await;
    result
}

/// One run of the stream's bursts: a warm-up, the burst with no stream
/// client (first: once a client has started the stream's hub, it follows
/// the manager's bus for good), then with one, then with the probe too.
async fn stream_run(
    manager: &TaskManager,
    addr: SocketAddr,
    tasks: usize,
) -> Result<StreamRun, BoxError> {
    burst(manager, (tasks / 10).max(1), None, None).await?;
    let quiet = burst(manager, tasks, None, None).await?;
    let follower = Follower::start(addr).await?;
    let streamed = burst(manager, tasks, Some(&follower), None).await?;
    let probed = burst(manager, tasks, Some(&follower), Some(addr)).await?;
    follower.side.finish().await?;
    Ok(StreamRun {
        quiet,
        streamed,
        probed,
    })
}

/// B14: `rows` stored tasks, `requests` requests per page, bursts of
/// `tasks`, the stream's bursts `runs` times (each on a fresh manager).
pub(crate) async fn b14(
    rows: usize,
    requests: usize,
    tasks: usize,
    runs: usize,
) -> Result<Vec<Row>, BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("b14.db");
    let filled = fill(&path, rows).await?;
    // What starting a manager on the filled file costs (its start-up reads
    // run over every stored row they touch).
    let opening = Instant::now();
    TaskManager::builder()
        .snapshot_db(&path)
        .build()
        .await?
        .shutdown()
        .await;
    let opened = opening.elapsed();
    let listed = Arc::new(pages(filled.middle));
    let timed = with_server(&path, |_, addr| {
        let (listed, path) = (listed.clone(), path.clone());
        async move { time_pages(addr, &path, listed, requests).await }
    })
    .await?;
    let context = format!(
        "rows inserted in {}; a manager's build and shutdown on the filled file took {}",
        crate::report::duration_text(filled.took),
        crate::report::duration_text(opened),
    );
    let mut out = list_rows(rows, &listed, &timed, &context);
    let idle_p99 = timed.0.first().map_or(0.0, |first| percentiles(first).1);

    let mut stream_runs = Vec::new();
    let mut after = None;
    for run in 0..runs {
        let last = run + 1 == runs;
        let first = Arc::new(pages(filled.middle).into_iter().take(1).collect::<Vec<_>>());
        let (measured, again) = with_server(&path, |manager, addr| {
            let path = path.clone();
            async move {
                let measured = stream_run(&manager, addr, tasks).await?;
                // The first page again, idle, now that this manager holds
                // the bursts' finished records in memory.
                let again = match last {
                    true => Some(time_pages(addr, &path, first, requests).await?),
                    false => None,
                };
                Ok((measured, again))
            }
        })
        .await?;
        stream_runs.push(measured);
        after = again.or(after);
    }
    out.extend(stream_rows(tasks, &stream_runs, idle_p99));
    if let Some(again) = after {
        let first: Vec<Page> = pages(filled.middle).into_iter().take(1).collect();
        for mut row in list_rows(rows, &first, &again, "idle, after the bursts") {
            row.workload = format!(
                "{} finished tasks in SQLite, after the manager ran {}: GET /api/tasks?limit={PAGE}, first page: p99",
                count(rows),
                count(tasks / 10 + 3 * tasks),
            );
            out.push(row);
        }
    }
    Ok(out)
}
