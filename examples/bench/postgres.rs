//! B12, the PostgreSQL store: burn-down of queued no-op tasks by one host
//! and by four (each a separate process), enqueue→start latency with idle
//! workers, and statements per task; against plain SQL on the same tables
//! in the same run.
//!
//! B12 runs when `TASKFLOW_BENCH_POSTGRES_URL` (or else
//! `TASKFLOW_TEST_POSTGRES_URL`, the tests' variable) names a server, for
//! example `postgres://postgres@127.0.0.1:5432/test`; otherwise it says why
//! it is skipped. Each run works in a schema of its own (`tfbench_…`),
//! created by taskflow's own migrations and dropped afterwards.
//!
//! - **Burn-down.** A manager with the default queue paused enqueues the
//!   tasks (timed: the durable enqueue) and shuts down leaving them PENDING;
//!   then one or four hosts start, each this binary re-executed
//!   ([`CHILD_ENV`]` = pg-host`) with `TaskManager::builder().postgres(..)`
//!   on the schema, and the clock runs from resuming the queue until every
//!   host has run its share and flushed its writes. The raw side inserts
//!   the same rows in batches (`INSERT … SELECT FROM unnest(..)`), then
//!   burns them down with one or four connections, each looping "claim a
//!   batch (`UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`), mark
//!   it done" until nothing is left.
//! - **Statements per task.** Both sides reach the server through
//!   [`wire::Proxy`](crate::wire::Proxy), which counts what they send.
//! - **Latency.** One task at a time, each enqueued once the previous one
//!   ran and a few milliseconds passed, so the host is idle: enqueued on
//!   the host that runs it, and enqueued by another process with
//!   `enqueue_in` (its own transaction) and run by a host in a child. The
//!   raw side: an `INSERT` that notifies, a `LISTEN`ing connection woken by
//!   it, and the claim `UPDATE`. Latency is measured without the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use taskflow::store::{PostgresConfig, PostgresStore, Store};
use taskflow::{TaskId, TaskManager, task};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::BoxError;
use crate::raw::CHILD_ENV;
use crate::report::{Measure, Row, Target, median};
use crate::wire::{Counts, Proxy};

/// The variable naming B12's server.
pub(crate) const URL_ENV: &str = "TASKFLOW_BENCH_POSTGRES_URL";
/// The tests' variable, used when [`URL_ENV`] is not set.
pub(crate) const TEST_URL_ENV: &str = "TASKFLOW_TEST_POSTGRES_URL";
/// With `1`, a server that does not answer fails B12 instead of skipping it.
const REQUIRE_ENV: &str = "TASKFLOW_REQUIRE_POSTGRES";
/// A host child's connection string and schema.
const HOST_URL_ENV: &str = "TASKFLOW_BENCH_HOST_URL";
const HOST_SCHEMA_ENV: &str = "TASKFLOW_BENCH_HOST_SCHEMA";

/// Rows the raw loop claims at once: taskflow's claim batch for an
/// executor without a cap.
const RAW_CLAIM_BATCH: i64 = 512;
/// Rows per raw insert: the store writer's largest batch.
const RAW_INSERT_BATCH: usize = 4096;
/// The codec version taskflow writes rows with (the raw loop never reads
/// the column; it is set so the rows are alike).
const CODEC: i32 = 2;
/// Longest wait for anything here: a stuck run fails rather than hangs.
const PATIENCE: Duration = Duration::from_secs(120);

/// B12's latency probe: how long after `sent_micros` (microseconds since
/// the epoch) it started.
#[task]
async fn pg_probe(sent_micros: u64) {
    PROBES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(crate::lateness(sent_micros));
}

/// Every probe's lateness in this process, in microseconds.
static PROBES: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

fn take_probes() -> Vec<u64> {
    std::mem::take(&mut *PROBES.lock().unwrap_or_else(|p| p.into_inner()))
}

// ---------------------------------------------------------------- the server

/// The server to run against, `None` (with the reason printed) when B12 is
/// skipped.
async fn server() -> Result<Result<String, String>, BoxError> {
    let url = [URL_ENV, TEST_URL_ENV].iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|url| !url.trim().is_empty())
    });
    let Some(url) = url else {
        return Ok(Err(format!(
            "skipped: set {URL_ENV} (or {TEST_URL_ENV}), e.g. postgres://postgres@127.0.0.1:5432/test"
        )));
    };
    let answered =
        tokio_postgres::connect(&url, NoTls).await.map_err(
            |error| match std::error::Error::source(&error) {
                Some(cause) => format!("{error}: {cause}"),
                None => error.to_string(),
            },
        );
    match answered {
        Ok(_) => Ok(Ok(url)),
        Err(error) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => Err(format!(
            "{REQUIRE_ENV}=1 but the PostgreSQL server does not answer: {error}"
        )
        .into()),
        Err(error) => Ok(Err(format!(
            "skipped: the PostgreSQL server does not answer: {error}"
        ))),
    }
}

/// A client on `url`, its connection driven in the background.
async fn connect(url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    drop(tokio::spawn(connection));
    Ok(client)
}

/// A schema of one run's own, created by taskflow's migrations and dropped
/// (with everything in it) when this drops, whatever happened.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    async fn new(url: &str) -> Result<Schema, BoxError> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let schema = Schema {
            url: url.to_owned(),
            name: format!("tfbench_{}_{serial}", std::process::id()),
        };
        let client = connect(url).await?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.name))
            .await?;
        // taskflow's migrations make the tables, as a first host would.
        drop(PostgresStore::open(schema.config(url).listen(false)).await?);
        Ok(schema)
    }

    fn config(&self, url: &str) -> PostgresConfig {
        PostgresConfig::new(url).schema(&self.name)
    }

    fn table(&self) -> String {
        format!("{}.tasks", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Possibly on a runtime thread, where blocking on a future is not
        // allowed: a thread of its own drops it.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let client = connect(&url).await.ok()?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .ok()
            })
        });
        if dropped.join().ok().flatten().is_none() {
            eprintln!("B12: could not drop schema {}", self.name);
        }
    }
}

/// The rows of `schema` by status, and the most attempts any took.
async fn tally(url: &str, schema: &Schema) -> Result<(i64, i64, i32), BoxError> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE status = 'SUCCESS'), \
                 coalesce(max(attempts), 0) FROM {}",
                schema.table()
            ),
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// The rows of `schema` per status and owner, for a message.
async fn statuses(url: &str, schema: &Schema) -> Result<String, BoxError> {
    let client = connect(url).await?;
    let rows = client
        .query(
            &format!(
                "SELECT status || ' ' || coalesce(owner, '-') || ' ' || count(*) FROM {} \
                 GROUP BY status, owner ORDER BY 1",
                schema.table()
            ),
            &[],
        )
        .await?;
    let parts = rows
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(", "))
}

/// Checks that all `tasks` rows ran once and succeeded.
async fn check_all_ran_once(url: &str, schema: &Schema, tasks: usize) -> Result<(), BoxError> {
    let (rows, success, attempts) = tally(url, schema).await?;
    if rows != tasks as i64 || success != rows || attempts != 1 {
        return Err(format!(
            "expected {tasks} SUCCESS rows run once, found {rows} rows, {success} SUCCESS, at most {attempts} attempts"
        )
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------- the raw side

/// Inserts `tasks` PENDING rows like taskflow's, in batches; how long it took.
async fn raw_fill(url: &str, schema: &Schema, tasks: usize) -> Result<Duration, BoxError> {
    let client = connect(url).await?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {} (id, name, executor, queue, priority, status, args, attempts, \
             created_at, run_at, codec) \
             SELECT id::uuid, $2, 'async', 'default', 0, 'PENDING', args, 0, at, at, $3 \
             FROM unnest($1::text[], $4::bytea[], $5::timestamptz[]) AS r (id, args, at)",
            schema.table()
        ))
        .await?;
    let name = crate::noop::NAME;
    let start = Instant::now();
    let mut left = tasks;
    while left > 0 {
        let batch = left.min(RAW_INSERT_BATCH);
        let now = SystemTime::now();
        let ids: Vec<String> = (0..batch).map(|_| TaskId::new().to_string()).collect();
        let args: Vec<Vec<u8>> = vec![Vec::new(); batch];
        let at: Vec<SystemTime> = vec![now; batch];
        client
            .execute(&insert, &[&ids, &name, &CODEC, &args, &at])
            .await?;
        left -= batch;
    }
    Ok(start.elapsed())
}

/// The raw claim: a batch of the best ready rows, locked past other
/// claimers' and marked RUNNING for `$1`, as taskflow's claim orders them.
fn raw_claim_sql(schema: &Schema) -> String {
    format!(
        "UPDATE {t} SET status = 'RUNNING', owner = $1, attempts = attempts + 1, \
         started_at = now() \
         WHERE id IN (SELECT id FROM {t} WHERE status = 'PENDING' AND queue = 'default' \
                      AND executor = 'async' AND run_at <= now() \
                      ORDER BY priority DESC, run_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING id::text",
        t = schema.table()
    )
}

/// Marks claimed rows SUCCESS, fenced on their owner as taskflow's writes are.
fn raw_done_sql(schema: &Schema) -> String {
    format!(
        "UPDATE {} SET status = 'SUCCESS', finished_at = now(), owner = NULL \
         WHERE id = ANY($1::text[]::uuid[]) AND status = 'RUNNING' AND owner = $2",
        schema.table()
    )
}

/// Burns the queue down with `loops` connections claiming batches; how
/// long until every loop found nothing left.
async fn raw_burn(url: &str, schema: &Schema, loops: usize) -> Result<Duration, BoxError> {
    let mut workers = Vec::new();
    for at in 0..loops {
        let client = connect(url).await?;
        let claim = client.prepare(&raw_claim_sql(schema)).await?;
        let done = client.prepare(&raw_done_sql(schema)).await?;
        workers.push((client, claim, done, format!("raw-{at}")));
    }
    let start = Instant::now();
    let loops = workers.into_iter().map(|(client, claim, done, owner)| {
        tokio::spawn(async move {
            loop {
                let rows = client.query(&claim, &[&owner, &RAW_CLAIM_BATCH]).await?;
                if rows.is_empty() {
                    return Ok::<_, tokio_postgres::Error>(());
                }
                let ids = rows
                    .iter()
                    .map(|row| row.try_get::<_, String>(0))
                    .collect::<Result<Vec<_>, _>>()?;
                client.execute(&done, &[&ids, &owner]).await?;
            }
        })
    });
    for outcome in join_all(loops.collect()).await {
        outcome??;
    }
    Ok(start.elapsed())
}

/// Awaits every handle, in order.
async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<Result<T, BoxError>> {
    let mut outcomes = Vec::with_capacity(handles.len());
    for handle in handles {
        outcomes.push(handle.await.map_err(|e| e.into()));
    }
    outcomes
}

/// Enqueue→start of the raw primitive, `probes` times: an `INSERT` that
/// notifies at commit, in a transaction (as the outbox `enqueue_in` is),
/// a connection `LISTEN`ing that hears it, and the claim `UPDATE` on a
/// third connection, as a host would run it.
async fn raw_latency(url: &str, schema: &Schema, probes: usize) -> Result<Vec<u64>, BoxError> {
    let channel = format!("{}_raw", schema.name);
    let (listener, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (heard, mut hear) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if heard.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    listener.batch_execute(&format!("LISTEN {channel}")).await?;
    let mut enqueuer = connect(url).await?;
    let insert = enqueuer
        .prepare(&format!(
            "WITH new AS (INSERT INTO {} (id, name, executor, queue, priority, status, args, \
             attempts, created_at, run_at, codec) \
             VALUES ($1::text::uuid, $2, 'async', 'default', 0, 'PENDING', '', 0, now(), now(), $3) \
             RETURNING id) \
             SELECT pg_notify($4, 'ready') FROM new",
            schema.table()
        ))
        .await?;
    let claimer = connect(url).await?;
    let claim = claimer.prepare(&raw_claim_sql(schema)).await?;
    let done = claimer.prepare(&raw_done_sql(schema)).await?;
    let name = crate::noop::NAME;
    let owner = "raw-latency".to_owned();
    let mut latencies = Vec::with_capacity(probes);
    for at in 0..probes + WARM_UP {
        // In a transaction, as `enqueue_in` is measured: the clock starts
        // after BEGIN and includes the COMMIT.
        let transaction = enqueuer.transaction().await?;
        let sent = Instant::now();
        let id = TaskId::new().to_string();
        transaction
            .query(&insert, &[&id, &name, &CODEC, &channel])
            .await?;
        transaction.commit().await?;
        tokio::time::timeout(PATIENCE, hear.recv())
            .await?
            .ok_or("the listening connection closed")?;
        let rows = claimer.query(&claim, &[&owner, &1_i64]).await?;
        let started = sent.elapsed();
        let ids = rows
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() != 1 {
            return Err(format!("the raw claim took {} rows, not 1", ids.len()).into());
        }
        claimer.execute(&done, &[&ids, &owner]).await?;
        if at >= WARM_UP {
            latencies.push(started.as_micros() as u64);
        }
        tokio::time::sleep(gap(at)).await;
    }
    driver.abort();
    Ok(latencies)
}

/// Probes before the measured ones: the first statements on a connection
/// are prepared.
const WARM_UP: usize = 5;

/// The pause after each probe: 2–6 ms, varied so probes do not beat with
/// any timer.
fn gap(at: usize) -> Duration {
    Duration::from_millis(2 + (at * 7 % 5) as u64)
}

// ---------------------------------------------------------------- the taskflow side

/// Enqueues `tasks` no-op tasks on a manager whose default queue is paused,
/// and waits until they are stored; how long that took. The manager then
/// shuts down and leaves them PENDING in the store.
async fn taskflow_fill(url: &str, schema: &Schema, tasks: usize) -> Result<Duration, BoxError> {
    let manager = TaskManager::builder()
        .postgres(schema.config(url))
        .requeue_pending(true)
        .build()
        .await?;
    manager.pause(taskflow::DEFAULT_QUEUE).await?;
    let driver = manager.clone();
    let elapsed = crate::on_worker(async move {
        let start = Instant::now();
        for _ in 0..tasks {
            // Fire and forget: the handle is not needed.
            drop(crate::noop::call().enqueue_on(&driver)?);
        }
        driver.flush().await?;
        Ok(start.elapsed())
    })
    .await?;
    manager.shutdown().await;
    Ok(elapsed)
}

/// Resumes the paused queue with `hosts` host processes started and idle;
/// how long until they ran every task and flushed their writes, and what
/// they sent the server meanwhile.
async fn taskflow_burn(
    url: &str,
    schema: &Schema,
    tasks: usize,
    hosts: usize,
    proxy: &Proxy,
) -> Result<(Duration, Counts), BoxError> {
    let resumer = PostgresStore::open(schema.config(url).listen(false)).await?;
    let mut started = Vec::with_capacity(hosts);
    for _ in 0..hosts {
        started.push(Host::spawn(url, &schema.name).await?);
    }
    let before = proxy.counts();
    let start = Instant::now();
    resumer
        .set_paused(taskflow::DEFAULT_QUEUE, false)
        .await
        .map_err(|e| format!("cannot resume the queue: {e}"))?;
    loop {
        let done: u64 = started.iter().map(Host::done).sum();
        if done >= tasks as u64 {
            break;
        }
        if start.elapsed() > PATIENCE {
            let mut each = Vec::new();
            for host in &mut started {
                each.push(host.ask("metrics", "metrics").await?);
            }
            return Err(format!(
                "{done} of {tasks} tasks ran within {PATIENCE:?} (per host: {}); the store holds {}",
                each.join("; "),
                statuses(url, schema).await?
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for host in &mut started {
        host.ask("flush", "flushed").await?;
    }
    let elapsed = start.elapsed();
    let counts = proxy.counts() - before;
    for host in started {
        host.stop().await;
    }
    Ok((elapsed, counts))
}

/// Enqueue→start on the host that enqueues: `probes` tasks, one at a time.
async fn latency_here(url: &str, schema: &Schema, probes: usize) -> Result<Vec<u64>, BoxError> {
    let manager = TaskManager::builder()
        .postgres(schema.config(url))
        .build()
        .await?;
    take_probes();
    let driver = manager.clone();
    crate::on_worker(async move {
        for at in 0..probes + WARM_UP {
            if at == WARM_UP {
                take_probes();
            }
            pg_probe::call(crate::now_micros())
                .enqueue_on(&driver)?
                .await?;
            tokio::time::sleep(gap(at)).await;
        }
        Ok(())
    })
    .await?;
    manager.shutdown().await;
    Ok(take_probes())
}

/// Enqueue→start on a host in another process: `probes` tasks, each
/// enqueued here in a transaction of this process's own (`enqueue_in`),
/// one at a time.
async fn latency_elsewhere(
    url: &str,
    schema: &Schema,
    probes: usize,
) -> Result<Vec<u64>, BoxError> {
    let mut host = Host::spawn(url, &schema.name).await?;
    let before = host.done();
    let mut client = connect(url).await?;
    for at in 0..probes + WARM_UP {
        let transaction = client.transaction().await?;
        pg_probe::call(crate::now_micros())
            .enqueue_in_schema(&transaction, &schema.name)
            .await?;
        transaction.commit().await?;
        host.wait_done(before + at as u64 + 1).await?;
        tokio::time::sleep(gap(at)).await;
    }
    let reply = host.ask("latencies", "latencies").await?;
    host.stop().await;
    let latencies: Vec<u64> = reply
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    if latencies.len() != probes + WARM_UP {
        return Err(format!(
            "the host ran {} probes, not {}",
            latencies.len(),
            probes + WARM_UP
        )
        .into());
    }
    Ok(latencies[WARM_UP..].to_vec())
}

// ---------------------------------------------------------------- host children

/// A host: this binary re-executed with a manager on the schema, driven
/// by lines on its stdin and stdout.
///
/// It prints `ready` once built, then `done N` whenever the number of
/// tasks it ran changed (looked at every 2 ms), and answers `flush` with
/// `flushed` once its writes are in the store, `metrics` with its
/// metrics, and `latencies` with the probes' latencies it measured. It shuts down when its stdin closes, and
/// is killed if it does not exit.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    done: Arc<AtomicU64>,
    changed: Arc<Notify>,
    replies: mpsc::UnboundedReceiver<String>,
}

impl Host {
    async fn spawn(url: &str, schema: &str) -> Result<Host, BoxError> {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command
            .env(CHILD_ENV, "pg-host")
            .env(HOST_URL_ENV, url)
            .env(HOST_SCHEMA_ENV, schema)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the host has no stdout")?;
        let done = Arc::new(AtomicU64::new(0));
        let changed = Arc::new(Notify::new());
        let (replied, replies) = mpsc::unbounded_channel();
        let (counter, wake) = (done.clone(), changed.clone());
        drop(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match line.strip_prefix("done ") {
                    Some(n) => {
                        counter.store(n.parse().unwrap_or(0), Ordering::SeqCst);
                        wake.notify_waiters();
                    }
                    None => {
                        if replied.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        let mut host = Host {
            child,
            stdin,
            done,
            changed,
            replies,
        };
        host.reply("ready").await?;
        Ok(host)
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    async fn wait_done(&self, n: u64) -> Result<(), BoxError> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let changed = self.changed.notified();
            if self.done() >= n {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, changed).await.is_err() {
                return Err(format!("the host ran {} tasks, not {n}", self.done()).into());
            }
        }
    }

    async fn reply(&mut self, expected: &str) -> Result<String, BoxError> {
        let line = tokio::time::timeout(PATIENCE, self.replies.recv())
            .await
            .map_err(|_| format!("the host did not answer `{expected}`"))?
            .ok_or_else(|| format!("the host exited before answering `{expected}`"))?;
        match line.starts_with(expected) {
            true => Ok(line),
            false => Err(format!("the host answered `{line}`, not `{expected}`").into()),
        }
    }

    async fn ask(&mut self, command: &str, expected: &str) -> Result<String, BoxError> {
        let stdin = self.stdin.as_mut().ok_or("the host's stdin is closed")?;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        stdin.flush().await?;
        self.reply(expected).await
    }

    /// Closes its stdin and waits for it to shut down (killed after 30 s).
    async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The host child's main: see [`Host`].
pub(crate) async fn host() -> Result<(), BoxError> {
    let url = std::env::var(HOST_URL_ENV)?;
    let schema = std::env::var(HOST_SCHEMA_ENV)?;
    let manager = TaskManager::builder()
        .postgres(PostgresConfig::new(url).schema(schema))
        .build()
        .await?;
    println!("ready");
    let watched = manager.clone();
    let watch = tokio::spawn(async move {
        let mut last = 0;
        loop {
            let done = watched.metrics().success;
            if done != last {
                println!("done {done}");
                last = done;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "flush" => match manager.flush().await {
                Ok(()) => println!("flushed"),
                Err(error) => println!("error {error}"),
            },
            "metrics" => println!("metrics {:?}", manager.metrics()),
            "latencies" => {
                let probes = take_probes();
                let text: Vec<String> = probes.iter().map(u64::to_string).collect();
                println!("latencies {}", text.join(" "));
            }
            other => println!("error unknown command `{other}`"),
        }
    }
    watch.abort();
    manager.shutdown().await;
    std::process::exit(0)
}

// ---------------------------------------------------------------- B12

/// What one run of a side measured.
#[derive(Default)]
struct Runs {
    fill: Vec<Duration>,
    burn: Vec<Duration>,
    fill_counts: Vec<Counts>,
    burn_counts: Vec<Counts>,
}

impl Runs {
    /// A run not made (`--side`): a placeholder figure.
    fn dummy(&mut self, time: Duration) {
        self.fill.push(time);
        self.burn.push(time);
        self.fill_counts.push(Counts::default());
        self.burn_counts.push(Counts::default());
    }
}

/// B12. `side`, as `--side` gives it, runs one part alone (for a
/// profiler): `taskflow` or `raw`, optionally `-throughput` (the
/// burn-downs) or `-latency`.
pub(crate) async fn b12(
    tasks: usize,
    probes: usize,
    runs: usize,
    side: Option<&str>,
) -> Result<Vec<Row>, BoxError> {
    let url = match server().await? {
        Ok(url) => url,
        Err(why) => {
            eprintln!("B12 {why}");
            return Ok(vec![Row::pending("B12", "PostgreSQL store", why)]);
        }
    };
    let proxy = Proxy::start(&url)
        .await?
        .ok_or("B12 counts statements through a proxy, which needs a TCP server in the URL")?;
    let via = proxy.url.clone();
    let (mut raw1, mut ours1, mut raw4, mut ours4) = (
        Runs::default(),
        Runs::default(),
        Runs::default(),
        Runs::default(),
    );
    let (mut here, mut elsewhere, mut raw_late) = (Vec::new(), Vec::new(), Vec::new());
    let mut spreads = (Vec::new(), Vec::new(), Vec::new());
    // `--side` runs one part alone, for a profiler; the rest get dummies.
    let wants = |who: &str, what: &str| {
        side.is_none_or(|side| {
            let (w, x) = side.split_once('-').unwrap_or((side, "both"));
            w == who && (x == "both" || x == what)
        })
    };
    let dummy = Duration::from_secs(1);
    for _ in 0..runs {
        for (hosts, raw, ours) in [(1, &mut raw1, &mut ours1), (4, &mut raw4, &mut ours4)] {
            if wants("raw", "throughput") {
                let schema = Schema::new(&url).await?;
                let before = proxy.counts();
                raw.fill.push(raw_fill(&via, &schema, tasks).await?);
                let filled = proxy.counts();
                raw.burn.push(raw_burn(&via, &schema, hosts).await?);
                raw.fill_counts.push(filled - before);
                raw.burn_counts.push(proxy.counts() - filled);
                check_all_ran_once(&url, &schema, tasks).await?;
                drop(schema);
            } else {
                raw.dummy(dummy);
            }
            if wants("taskflow", "throughput") {
                let schema = Schema::new(&url).await?;
                let before = proxy.counts();
                ours.fill.push(taskflow_fill(&via, &schema, tasks).await?);
                ours.fill_counts.push(proxy.counts() - before);
                let (burn, counts) = taskflow_burn(&via, &schema, tasks, hosts, &proxy).await?;
                ours.burn.push(burn);
                ours.burn_counts.push(counts);
                check_all_ran_once(&url, &schema, tasks).await?;
                drop(schema);
            } else {
                ours.dummy(dummy);
            }
        }
        let schema = Schema::new(&url).await?;
        if wants("raw", "latency") {
            let run = raw_latency(&url, &schema, probes).await?;
            spreads.2.push(percentiles(&run));
            raw_late.extend(run);
        }
        if wants("taskflow", "latency") {
            let run = latency_here(&url, &schema, probes).await?;
            spreads.0.push(percentiles(&run));
            here.extend(run);
            let run = latency_elsewhere(&url, &schema, probes).await?;
            spreads.1.push(percentiles(&run));
            elsewhere.extend(run);
        }
        drop(schema);
    }
    drop(proxy);

    let n = crate::count(tasks);
    let mut rows = Vec::new();
    let mut one = crate::rate_row(
        "B12",
        format!("{n} no-op tasks queued in PostgreSQL, burned down by one process"),
        tasks,
        &ours1.burn,
        &raw1.burn,
        "UPDATE … SKIP LOCKED claim loop, 1 connection",
        Target::RatioAtLeast(0.5),
    );
    one.note = format!(
        "{}; claim batches of {RAW_CLAIM_BATCH} on the raw side",
        one.note
    );
    let mut absolute = Row::new(
        "B12",
        format!("{n} no-op tasks queued in PostgreSQL, burned down by one process"),
        Target::AtLeast(Measure::Rate(20_000.0)),
    );
    absolute.taskflow = one.taskflow;
    absolute.samples = one.samples.clone();
    absolute.note = "the same runs' rate against the issue's absolute target".to_owned();
    let mut four = crate::rate_row(
        "B12",
        format!("{n} no-op tasks queued in PostgreSQL, burned down by four processes"),
        tasks,
        &ours4.burn,
        &raw4.burn,
        "UPDATE … SKIP LOCKED claim loops, 4 connections",
        Target::Report,
    );
    four.note = format!(
        "{}; each host a separate process; statements per task while burning down: taskflow {:.3}, raw {:.3}",
        four.note,
        per_task(&ours4.burn_counts, tasks, |c| c.statements),
        per_task(&raw4.burn_counts, tasks, |c| c.statements),
    );
    let mut fill = crate::rate_row(
        "B12",
        format!("{n} no-op tasks enqueued durably (queue paused), one process"),
        tasks,
        &[ours1.fill.clone(), ours4.fill.clone()].concat(),
        &[raw1.fill.clone(), raw4.fill.clone()].concat(),
        "batched INSERT … unnest, 4096 rows",
        Target::Report,
    );
    fill.note = format!("{}; enqueue until flush() returned", fill.note);
    rows.extend([one, absolute, four, fill]);

    let micros = |us: f64| Measure::Time(Duration::from_secs_f64(us / 1e6));
    let raw_all = percentiles(&raw_late);
    for (label, samples, runs) in [
        ("enqueued and run by the same host", &here, &spreads.0),
        (
            "enqueued by another process (enqueue_in, own transaction)",
            &elsewhere,
            &spreads.1,
        ),
    ] {
        let all = percentiles(samples);
        let max = all.2;
        for (quantile, limit) in [("p50", 5), ("p99", 25)] {
            let pick = |r: &Percentiles| if quantile == "p50" { r.0 } else { r.1 };
            let (ours, theirs) = (pick(&all), pick(&raw_all));
            let mut row = Row::new(
                "B12",
                format!("enqueue→start {quantile}, idle host, {label}"),
                Target::AtMost(Measure::Time(Duration::from_millis(limit))),
            );
            row.taskflow = Some(micros(ours));
            row.raw = Some(micros(theirs));
            row.raw_name = "INSERT + NOTIFY, COMMIT → LISTEN → claim UPDATE".to_owned();
            row.ratio_meaning = "taskflow / raw latency";
            row.ratio = Some(ours / theirs);
            row.note = format!(
                "{} probes over {} run(s), max {}; per run p50 {} and p99 {}",
                samples.len(),
                runs.len(),
                micros(max).text(),
                spread_of(runs, |r| r.0),
                spread_of(runs, |r| r.1),
            );
            // Each run's quantile (seconds), and the raw run's beside it.
            row.samples = runs
                .iter()
                .zip(&spreads.2)
                .map(|(ours, raw)| (pick(ours) / 1e6, pick(raw) / 1e6))
                .collect();
            rows.push(row);
        }
    }

    let total = |runs: &Runs| {
        per_task(&runs.fill_counts, tasks, |c| c.statements)
            + per_task(&runs.burn_counts, tasks, |c| c.statements)
    };
    let mut trips = Row::new(
        "B12",
        format!("statements per task, {n} tasks: enqueue + burn-down by one process"),
        Target::AtMost(Measure::Count(1.0)),
    );
    trips.taskflow = Some(Measure::Count(total(&ours1)));
    trips.raw = Some(Measure::Count(total(&raw1)));
    trips.raw_name = "the raw inserts and claim loop".to_owned();
    trips.ratio_meaning = "taskflow / raw statements";
    trips.ratio = Some(total(&ours1) / total(&raw1));
    let per_run = |runs: &Runs, at: usize| {
        (runs.fill_counts[at].statements + runs.burn_counts[at].statements) as f64 / tasks as f64
    };
    trips.samples = (0..ours1.fill_counts.len().min(raw1.fill_counts.len()))
        .map(|at| (per_run(&ours1, at), per_run(&raw1, at)))
        .collect();
    trips.note = format!(
        "counted on the wire (Execute and Query messages); enqueue {:.4} + burn-down {:.4} (raw {:.4} + {:.4}); \
         round trips (Sync and Query) {:.4}, prepares {:.4} per task",
        per_task(&ours1.fill_counts, tasks, |c| c.statements),
        per_task(&ours1.burn_counts, tasks, |c| c.statements),
        per_task(&raw1.fill_counts, tasks, |c| c.statements),
        per_task(&raw1.burn_counts, tasks, |c| c.statements),
        per_task(&ours1.fill_counts, tasks, |c| c.requests)
            + per_task(&ours1.burn_counts, tasks, |c| c.requests),
        per_task(&ours1.fill_counts, tasks, |c| c.prepares)
            + per_task(&ours1.burn_counts, tasks, |c| c.prepares),
    );
    rows.push(trips);
    Ok(rows)
}

/// The median over runs of `what` per task.
fn per_task(counts: &[Counts], tasks: usize, what: fn(&Counts) -> u64) -> f64 {
    median(
        &counts
            .iter()
            .map(|c| what(c) as f64 / tasks as f64)
            .collect::<Vec<_>>(),
    )
}

/// A run's p50, p99 and max, in microseconds.
type Percentiles = (f64, f64, f64);

/// p50, p99 and max of microsecond samples.
fn percentiles(samples: &[u64]) -> Percentiles {
    crate::percentiles(samples)
}

fn spread_of(runs: &[Percentiles], which: fn(&Percentiles) -> f64) -> String {
    let values: Vec<f64> = runs.iter().map(which).collect();
    if values.is_empty() {
        return "—".to_owned();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    let text = |us: f64| Measure::Time(Duration::from_secs_f64(us / 1e6)).text();
    format!("{}–{}", text(min), text(max))
}
