//! Helpers shared by the black-box tests in `tests/tests/`.
//!
//! Every wait here is bounded: a test that would hang fails instead, with a
//! message saying what it was waiting for. Nothing asserts a timing; timeouts
//! are generous ceilings for a shared, noisy machine.

pub mod conformance;
pub mod harness;
pub mod logs;
pub mod postgres;

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use taskflow::{TaskId, TaskManager, TaskRecord, TaskStatus};

/// The ceiling for anything a test waits on that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often the waits below poll.
const POLL: Duration = Duration::from_millis(5);

/// Polls `predicate` until it holds or `timeout` passes; whether it held.
pub async fn wait_until(timeout: Duration, mut predicate: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if predicate() {
            return true;
        }
        if Instant::now() >= deadline {
            return predicate();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// As [`wait_until`], with a predicate that awaits (a query of the manager).
pub async fn wait_for<F, Fut>(timeout: Duration, mut predicate: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if predicate().await {
            return true;
        }
        if Instant::now() >= deadline {
            return predicate().await;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// As [`wait_until`], blocking the calling thread (for sync task bodies).
pub fn wait_until_blocking(timeout: Duration, mut predicate: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if predicate() {
            return true;
        }
        if Instant::now() >= deadline {
            return predicate();
        }
        std::thread::sleep(POLL);
    }
}

/// Awaits `future`, failing the test if it takes longer than [`PATIENCE`].
///
/// # Panics
///
/// When `future` does not complete in time; `what` names it.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not complete within {PATIENCE:?}"),
    }
}

/// Waits until task `id` of `manager` is in `status` and returns its record.
///
/// # Panics
///
/// When the task is unknown or does not reach `status` within [`PATIENCE`].
pub async fn wait_for_status(manager: &TaskManager, id: TaskId, status: TaskStatus) -> TaskRecord {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let record = manager
            .get(id)
            .await
            .expect("the store is readable")
            .expect("the task has a record");
        if record.status == status {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} did not reach {status} within {PATIENCE:?}; it is {}",
            record.status
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The name of the calling thread, or `""` for an unnamed one.
pub fn thread_name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

/// Names of this process's live threads whose name starts with `prefix`,
/// read from `/proc/self/task/*/comm` (Linux; names are cut at 15 bytes).
///
/// # Panics
///
/// When `/proc/self/task` cannot be read.
pub fn live_threads_named(prefix: &str) -> Vec<String> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task is readable");
    let mut names: Vec<String> = tasks
        .filter_map(Result::ok)
        // A thread may exit between listing and reading: skip it.
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// A one-way gate that task bodies wait on, so a test decides when they
/// finish instead of guessing with sleeps. Waits are bounded by
/// [`PATIENCE`], so a forgotten `open` fails slowly rather than hangs.
#[derive(Debug, Default)]
pub struct Latch {
    open: AtomicBool,
}

impl Latch {
    /// A closed latch.
    pub const fn new() -> Self {
        Latch {
            open: AtomicBool::new(false),
        }
    }

    /// Opens the latch for good.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits (async) until open; whether it opened within [`PATIENCE`].
    pub async fn wait(&self) -> bool {
        wait_until(PATIENCE, || self.is_open()).await
    }

    /// Waits (blocking) until open; whether it opened within [`PATIENCE`].
    pub fn wait_blocking(&self) -> bool {
        wait_until_blocking(PATIENCE, || self.is_open())
    }
}

/// Named one-way gates, for tests that need a [`Latch`] per run in one
/// binary (a static latch, once open, stays open for every later test).
/// Bodies [`wait`](Self::wait) on a name; the test [`open`](Self::open)s it.
#[derive(Debug, Default)]
pub struct Gates {
    /// Per name: whether it is open.
    gates: Mutex<Vec<(String, bool)>>,
}

impl Gates {
    /// No gates yet.
    pub const fn new() -> Self {
        Gates {
            gates: Mutex::new(Vec::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<(String, bool)>) -> R) -> R {
        // A panicking test thread may poison it; the list stays usable.
        f(&mut self.gates.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Opens gate `name` for good (creating it if no body reached it yet).
    pub fn open(&self, name: &str) {
        self.with(|gates| match gates.iter_mut().find(|(n, _)| n == name) {
            Some((_, open)) => *open = true,
            None => gates.push((name.to_owned(), true)),
        });
    }

    /// Whether a body has reached gate `name` (or it was opened).
    pub fn reached(&self, name: &str) -> bool {
        self.with(|gates| gates.iter().any(|(n, _)| n == name))
    }

    /// Whether gate `name` is open.
    pub fn is_open(&self, name: &str) -> bool {
        self.with(|gates| gates.iter().any(|(n, open)| n == name && *open))
    }

    fn arrive(&self, name: &str) {
        self.with(|gates| {
            if !gates.iter().any(|(n, _)| n == name) {
                gates.push((name.to_owned(), false));
            }
        });
    }

    /// Marks gate `name` reached and waits (async) until it is open;
    /// whether it opened within [`PATIENCE`].
    pub async fn wait(&self, name: &str) -> bool {
        self.arrive(name);
        wait_until(PATIENCE, || self.is_open(name)).await
    }

    /// As [`wait`](Self::wait), blocking the calling thread.
    pub fn wait_blocking(&self, name: &str) -> bool {
        self.arrive(name);
        wait_until_blocking(PATIENCE, || self.is_open(name))
    }
}

/// Counts task bodies executing at once and remembers the peak; the bodies
/// themselves hold a [`GaugeGuard`] while they run.
#[derive(Debug, Default)]
pub struct Gauge {
    current: AtomicUsize,
    peak: AtomicUsize,
    entered: AtomicUsize,
}

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Gauge {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
        }
    }

    /// Counts one more body executing until the guard drops (also when an
    /// aborted async body's future is dropped).
    pub fn enter(&self) -> GaugeGuard<'_> {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.entered.fetch_add(1, Ordering::SeqCst);
        GaugeGuard(self)
    }

    /// Bodies executing now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    /// The most bodies ever executing at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Bodies ever entered.
    pub fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

/// One body counted by a [`Gauge`].
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until `done` holds, failing the test after [`PATIENCE`].
///
/// # Panics
///
/// When `done` does not hold in time; `what` names what was awaited.
pub async fn eventually(what: &str, done: impl FnMut() -> bool) {
    assert!(
        wait_until(PATIENCE, done).await,
        "timed out after {PATIENCE:?} waiting for {what}"
    );
}

/// The calling thread's nice value, from `/proc/thread-self/stat` (Linux).
///
/// # Panics
///
/// When the file cannot be read or parsed.
pub fn thread_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .expect("/proc/thread-self/stat is readable");
    // Field 19; the first field after the parenthesised command name is field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    rest.split_whitespace()
        .nth(16)
        .and_then(|nice| nice.parse().ok())
        .expect("a nice value in field 19")
}
