//! B7, the claim taskflow exists for: request latency stays flat while a
//! burst of background work runs on the same runtime, when the caps are set.
//!
//! ```text
//! cargo run --release --example burst_latency
//! cargo run --release --example burst_latency -- --quick
//! ```
//!
//! An axum server on 127.0.0.1 (an ephemeral port) serves `/async`, a
//! trivial handler, and `/blocking`, which answers through `spawn_blocking`
//! as a sync request handler would. A client on its own OS thread (so the
//! runtime's congestion cannot stall the clock) keeps one HTTP/1.1
//! keep-alive connection per handler and, about every millisecond, sends one
//! request on each, timing each round trip. Meanwhile this program runs, on
//! the server's runtime:
//!
//! - idle stretches, with no background work;
//! - async bursts: 2000 tasks of a 10 ms sleep then ~50 µs of CPU, with
//!   `max_concurrent_tasks(10)` and with no cap, and capped with
//!   `async_worker_threads(1)` and `background_nice(10)` (the tasks on a
//!   thread of their own, which yields the CPU to the server's);
//! - sync bursts: 1000 tasks sleeping 20 ms, on `max_sync_threads(8)` and
//!   on tokio's shared blocking pool (no cap), the pool `spawn_blocking`
//!   handlers use too.
//!
//! A request counts for a burst when it was sent while the burst ran (from
//! its first enqueue until its last task finished); for idle when it was
//! sent in one of the two idle stretches, before the first burst and after
//! the last. (Pauses between bursts do not count: a burst's aftermath, such
//! as hundreds of idle blocking-pool threads, would flatter the ratios.) The table gives p50 and
//! p99 per handler and situation, and the ratio of each p99 to the same
//! handler's idle p99; the target (issue 5, B7) is ≤ 2 for `/async` during
//! the capped async burst and for `/blocking` during the capped sync burst.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use taskflow::{TaskManager, task};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One async task of a burst: waits like I/O, then computes a little.
#[task]
async fn background_io() {
    tokio::time::sleep(Duration::from_millis(10)).await;
    spin(Duration::from_micros(50));
}

/// One sync task of a burst: blocks its thread like a slow call.
#[task]
fn background_blocking() {
    std::thread::sleep(Duration::from_millis(20));
}

/// Keeps this thread's core busy for `duration`.
fn spin(duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

async fn trivial() -> &'static str {
    "ok"
}

async fn blocking_handler() -> &'static str {
    tokio::task::spawn_blocking(|| "ok")
        .await
        .unwrap_or("error")
}

// ---------------------------------------------------------------- the client

const HANDLERS: [&str; 2] = ["/async", "/blocking"];

/// One timed request.
struct Sample {
    handler: usize,
    sent: Instant,
    latency: Duration,
}

/// An HTTP/1.1 keep-alive connection for GET requests to one path.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl Connection {
    fn open(address: SocketAddr, path: &str) -> io::Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Connection {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            request: format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes(),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends the request and reads the whole response.
    fn get(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.request)?;
        let mut length = 0;
        let mut first = true;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                return Err(io::Error::other("the server closed the connection"));
            }
            let line = self.line.trim_end();
            if first {
                if !line.starts_with("HTTP/1.1 200") {
                    return Err(io::Error::other(format!("unexpected status: {line}")));
                }
                first = false;
            } else if line.is_empty() {
                break;
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(io::Error::other)?;
            }
        }
        self.body.resize(length, 0);
        io::Read::read_exact(&mut self.reader, &mut self.body)
    }
}

/// Requests one of each handler about every `interval` until `stop` is set
/// or `limit` has passed.
fn client(
    address: SocketAddr,
    interval: Duration,
    stop: &AtomicBool,
    limit: Duration,
) -> io::Result<Vec<Sample>> {
    let mut connections = HANDLERS
        .iter()
        .map(|path| Connection::open(address, path))
        .collect::<io::Result<Vec<_>>>()?;
    let deadline = Instant::now() + limit;
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        for (handler, connection) in connections.iter_mut().enumerate() {
            let sent = Instant::now();
            connection.get()?;
            samples.push(Sample {
                handler,
                sent,
                latency: sent.elapsed(),
            });
        }
        next += interval;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            None => next = now,
        }
    }
    Ok(samples)
}

// ---------------------------------------------------------------- the bursts

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Situation {
    Idle,
    AsyncCapped,
    AsyncUncapped,
    /// Capped, on a manager built on a runtime of its own.
    AsyncCappedApart,
    SyncCapped,
    SyncUncapped,
}

impl Situation {
    const ALL: [Situation; 6] = [
        Situation::Idle,
        Situation::AsyncCapped,
        Situation::AsyncUncapped,
        Situation::AsyncCappedApart,
        Situation::SyncCapped,
        Situation::SyncUncapped,
    ];

    fn describe(self, scale: &Scale) -> String {
        let (a, s) = (scale.async_tasks, scale.sync_tasks);
        match self {
            Situation::Idle => "idle".to_owned(),
            Situation::AsyncCapped => format!("{a} async tasks, max_concurrent_tasks = 10"),
            Situation::AsyncUncapped => format!("{a} async tasks, no cap"),
            Situation::AsyncCappedApart => {
                format!(
                    "{a} async tasks, max_concurrent_tasks = 10, async_worker_threads = 1, background_nice = 10"
                )
            }
            Situation::SyncCapped => format!("{s} sync tasks, max_sync_threads = 8"),
            Situation::SyncUncapped => format!("{s} sync tasks, shared blocking pool"),
        }
    }

    /// Which handler's p99 has a target in this situation.
    fn target(self) -> Option<usize> {
        match self {
            Situation::AsyncCapped | Situation::AsyncCappedApart => Some(0),
            Situation::SyncCapped => Some(1),
            _ => None,
        }
    }

    fn bursts(self, scale: &Scale) -> usize {
        match self {
            Situation::Idle => 0,
            // Capped bursts last seconds; uncapped ones a few tens of ms.
            Situation::AsyncCapped | Situation::AsyncCappedApart | Situation::SyncCapped => {
                scale.capped_bursts
            }
            Situation::AsyncUncapped | Situation::SyncUncapped => scale.uncapped_bursts,
        }
    }
}

struct Scale {
    async_tasks: usize,
    sync_tasks: usize,
    idle: Duration,
    capped_bursts: usize,
    uncapped_bursts: usize,
}

/// A stretch of time and what ran during it.
struct Window {
    situation: Situation,
    start: Instant,
    end: Instant,
}

/// Enqueues one burst on a fresh manager and waits for all of it.
async fn burst(situation: Situation, scale: &Scale) -> Result<Window, BoxError> {
    let builder = TaskManager::builder();
    let builder = match situation {
        Situation::AsyncCapped => builder.max_concurrent_tasks(10),
        // On threads of their own, the tasks no longer queue ahead of
        // requests on the server's runtime.
        Situation::AsyncCappedApart => builder
            .max_concurrent_tasks(10)
            .async_worker_threads(1)
            .background_nice(10),
        Situation::SyncCapped => builder.max_sync_threads(8),
        _ => builder,
    };
    let manager = builder.build().await?;
    // Let the client see a calm runtime before the burst.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    match situation {
        Situation::AsyncCapped | Situation::AsyncUncapped | Situation::AsyncCappedApart => {
            let handles = (0..scale.async_tasks)
                .map(|_| background_io::call().enqueue_on(&manager))
                .collect::<Result<Vec<_>, _>>()?;
            for handle in handles {
                handle.await?;
            }
        }
        _ => {
            let handles = (0..scale.sync_tasks)
                .map(|_| background_blocking::call().enqueue_on(&manager))
                .collect::<Result<Vec<_>, _>>()?;
            for handle in handles {
                handle.await?;
            }
        }
    }
    let end = Instant::now();
    manager.shutdown().await;
    Ok(Window {
        situation,
        start,
        end,
    })
}

/// A stretch of `length` with no background work.
async fn idle(length: Duration) -> Window {
    let start = Instant::now();
    tokio::time::sleep(length).await;
    Window {
        situation: Situation::Idle,
        start,
        end: Instant::now(),
    }
}

/// The nearest-rank percentile `p` (0–100) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(duration: Duration) -> String {
    let us = duration.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let quick = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--quick") => true,
        Some(other) => {
            eprintln!("unknown argument `{other}`\nusage: burst_latency [--quick]");
            std::process::exit(2);
        }
    };
    let scale = if quick {
        Scale {
            async_tasks: 400,
            sync_tasks: 200,
            idle: Duration::from_millis(300),
            capped_bursts: 1,
            uncapped_bursts: 2,
        }
    } else {
        Scale {
            async_tasks: 2000,
            sync_tasks: 1000,
            idle: Duration::from_millis(2500),
            capped_bursts: 3,
            uncapped_bursts: 10,
        }
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/async", get(trivial))
        .route("/blocking", get(blocking_handler));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let stop = Arc::new(AtomicBool::new(false));
    let client_stop = stop.clone();
    let client = std::thread::Builder::new()
        .name("client".into())
        .spawn(move || {
            client(
                address,
                Duration::from_millis(1),
                &client_stop,
                Duration::from_secs(600),
            )
        })?;

    // Warm up connections, the runtime's threads and the blocking pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut windows = vec![idle(scale.idle).await];
    for situation in &Situation::ALL[1..] {
        for _ in 0..situation.bursts(&scale) {
            windows.push(burst(*situation, &scale).await?);
            // The runtime and the blocking pool calm down between bursts.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    windows.push(idle(scale.idle).await);

    stop.store(true, Ordering::Relaxed);
    let samples = client.join().map_err(|_| "the client thread panicked")??;
    server.abort();

    // Latencies per situation and handler.
    let mut table = Vec::new();
    for situation in Situation::ALL {
        let spans: Vec<&Window> = windows
            .iter()
            .filter(|w| w.situation == situation)
            .collect();
        let burst_times: Vec<Duration> = spans.iter().map(|w| w.end - w.start).collect();
        for handler in 0..HANDLERS.len() {
            let mut latencies: Vec<Duration> = samples
                .iter()
                .filter(|s| s.handler == handler)
                .filter(|s| spans.iter().any(|w| s.sent >= w.start && s.sent < w.end))
                .map(|s| s.latency)
                .collect();
            latencies.sort();
            table.push((situation, handler, latencies, burst_times.clone()));
        }
    }
    let idle_p99 = |handler: usize| {
        table
            .iter()
            .find(|(s, h, _, _)| *s == Situation::Idle && *h == handler)
            .map_or(Duration::ZERO, |(_, _, l, _)| percentile(l, 99.0))
    };

    println!(
        "burst latency on {} cores ({} mode): a request per handler about every 1 ms\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if quick { "quick" } else { "full" }
    );
    println!(
        "| situation | handler | p50 | p99 | max | requests | burst length (median) | p99 / idle p99 | target | met |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut targets, mut missed) = (0, 0);
    for (situation, handler, latencies, bursts) in &table {
        let p99 = percentile(latencies, 99.0);
        let burst_length = match situation {
            Situation::Idle => "—".to_owned(),
            _ => {
                let mut bursts = bursts.clone();
                bursts.sort();
                format!(
                    "{} × {}",
                    bursts.len(),
                    micros(bursts.get(bursts.len() / 2).copied().unwrap_or_default())
                )
            }
        };
        let (ratio, target, met) = match situation {
            Situation::Idle => ("—".to_owned(), "—", "—"),
            _ => {
                let ratio = p99.as_secs_f64() / idle_p99(*handler).as_secs_f64();
                let has_target = situation.target() == Some(*handler);
                targets += usize::from(has_target);
                match has_target {
                    true if ratio <= 2.0 => (format!("{ratio:.2}"), "≤ 2.00", "yes"),
                    true => {
                        missed += 1;
                        (format!("{ratio:.2}"), "≤ 2.00", "**no**")
                    }
                    false => (format!("{ratio:.2}"), "report", "—"),
                }
            }
        };
        println!(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            situation.describe(&scale),
            HANDLERS[*handler],
            micros(percentile(latencies, 50.0)),
            micros(p99),
            micros(latencies.last().copied().unwrap_or_default()),
            latencies.len(),
            burst_length,
            ratio,
            target,
            met
        );
    }
    println!(
        "\n{} of {targets} targets met; a burst's requests are those sent between its first enqueue and its last task's end.",
        targets - missed
    );
    Ok(())
}
