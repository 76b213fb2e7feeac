//! The registry of tasks declared with `#[task]`.
//!
//! Each `#[task]` emits one `static` [`TaskEntry`] (const data: name, executor,
//! defaults, source location and a type-erased entry point) and submits a
//! reference to it through `inventory`. [`Registry::global`] gathers them into
//! a name → entry map the first time it is asked, and reports a name claimed by
//! two declarations instead of picking one. Parent and worker processes build
//! the same map from the same binary, so a worker finds a task by name.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::CodecError;
use crate::failure::TaskError;
use crate::resource::{ResourceKey, Resources};

/// Where a task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Executor {
    /// On the async runtime, admitted by `max_concurrent_tasks`.
    Async,
    /// On a thread: the dedicated pool of `max_sync_threads`, or tokio's
    /// blocking pool when that is unset.
    Thread,
    /// In a worker process.
    Process,
}

impl Executor {
    /// The executor's lowercase name, as `#[task(executor = "…")]` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Executor::Async => "async",
            Executor::Thread => "thread",
            Executor::Process => "process",
        }
    }

    /// The executor named by [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "async" => Executor::Async,
            "thread" => Executor::Thread,
            "process" => Executor::Process,
            _ => return None,
        })
    }
}

impl fmt::Display for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's declared retry and timeout policy.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct TaskDefaults {
    /// Attempts after the first; `retries = 2` means up to three attempts.
    pub retries: u32,
    /// Wait before the first retry.
    pub delay: Duration,
    /// Factor applied to the wait before each further retry.
    pub backoff: f64,
    /// Limit on one attempt's running time.
    pub timeout: Option<Duration>,
    /// With a task store: requeue this task's PENDING rows at start even
    /// without `requeue_pending(true)`.
    pub persist: bool,
    /// With a task store: run this task again at start when an instance that
    /// died (or shut down) left it RUNNING. For idempotent work only.
    pub requeue_on_interrupt: bool,
}

impl TaskDefaults {
    /// No retries, no delay, backoff 1, no timeout.
    pub const DEFAULT: TaskDefaults = TaskDefaults {
        retries: 0,
        delay: Duration::ZERO,
        backoff: 1.0,
        timeout: None,
        persist: false,
        requeue_on_interrupt: false,
    };

    /// The defaults with `retries` set.
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The defaults with `delay` set.
    pub const fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The defaults with `backoff` set.
    pub const fn backoff(mut self, backoff: f64) -> Self {
        self.backoff = backoff;
        self
    }

    /// The defaults with `timeout` set.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The defaults with `persist` set.
    pub const fn persist(mut self, persist: bool) -> Self {
        self.persist = persist;
        self
    }

    /// The defaults with `requeue_on_interrupt` set.
    pub const fn requeue_on_interrupt(mut self, requeue: bool) -> Self {
        self.requeue_on_interrupt = requeue;
        self
    }

    /// The wait before retry number `retry` (1 for the first retry):
    /// `delay × backoff^(retry − 1)`, saturating at one day.
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskflow_worker::TaskDefaults;
    /// let policy = TaskDefaults::DEFAULT.delay(Duration::from_millis(100)).backoff(2.0);
    /// assert_eq!(policy.retry_delay(1), Duration::from_millis(100));
    /// assert_eq!(policy.retry_delay(3), Duration::from_millis(400));
    /// ```
    pub fn retry_delay(&self, retry: u32) -> Duration {
        const CEILING: Duration = Duration::from_secs(24 * 60 * 60);
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.delay.as_secs_f64() * self.backoff.powi(exponent);
        Duration::try_from_secs_f64(seconds).map_or(CEILING, |d| d.min(CEILING))
    }
}

/// Where a task was declared, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The function's full path, `crate::module::function`.
    pub path: &'static str,
    /// The source file.
    pub file: &'static str,
    /// The line of the function.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({}:{})", self.path, self.file, self.line)
    }
}

/// A task's result, type-erased; its type is the task's output type.
pub type Output = Box<dyn Any + Send>;

/// One async attempt in flight.
pub type AttemptFuture = Pin<Box<dyn Future<Output = Result<Output, TaskError>> + Send>>;

/// The type-erased entry point of a task: decodes the arguments, takes the
/// resources, and runs the user's function once.
#[derive(Clone, Copy)]
pub enum Body {
    /// An `async fn`: returns the attempt's future.
    Async(fn(&[u8], &Resources) -> Result<AttemptFuture, TaskError>),
    /// A plain `fn`: runs to completion on the calling thread.
    Blocking(fn(&[u8], &Resources) -> Result<Output, TaskError>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Body::Async(_) => "Body::Async",
            Body::Blocking(_) => "Body::Blocking",
        })
    }
}

/// Everything the runtime knows about one declared task.
#[derive(Debug)]
pub struct TaskEntry {
    name: &'static str,
    executor: Executor,
    defaults: TaskDefaults,
    location: Location,
    resources: &'static [ResourceKey],
    body: Body,
    encode_output: fn(&(dyn Any + Send)) -> Result<Vec<u8>, CodecError>,
}

impl TaskEntry {
    /// An entry with default policy, no resources and an unknown location.
    pub const fn new(
        name: &'static str,
        executor: Executor,
        body: Body,
        encode_output: fn(&(dyn Any + Send)) -> Result<Vec<u8>, CodecError>,
    ) -> Self {
        TaskEntry {
            name,
            executor,
            defaults: TaskDefaults::DEFAULT,
            location: Location {
                path: name,
                file: "",
                line: 0,
            },
            resources: &[],
            body,
            encode_output,
        }
    }

    /// The entry with its declared policy.
    pub const fn with_defaults(mut self, defaults: TaskDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// The entry with its source location.
    pub const fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The entry with the resource types its function takes.
    pub const fn with_resources(mut self, resources: &'static [ResourceKey]) -> Self {
        self.resources = resources;
        self
    }

    /// The registered name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where it runs.
    pub fn executor(&self) -> Executor {
        self.executor
    }

    /// Its retry and timeout policy.
    pub fn defaults(&self) -> &TaskDefaults {
        &self.defaults
    }

    /// Where it was declared.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The resource types it needs.
    pub fn resources(&self) -> &'static [ResourceKey] {
        self.resources
    }

    /// Its entry point.
    pub fn body(&self) -> Body {
        self.body
    }

    /// Encodes an output this task produced (for the trip back from a worker).
    ///
    /// # Errors
    ///
    /// When the value cannot be encoded.
    pub fn encode_output(&self, output: &(dyn Any + Send)) -> Result<Vec<u8>, CodecError> {
        (self.encode_output)(output)
    }
}

// Not public API. Used by generated code.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration(pub &'static TaskEntry);

inventory::collect!(Registration);

/// Two declarations claimed one task name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task name `{name}` is registered twice: by {first} and by {second}")]
pub struct DuplicateTask {
    /// The contested name.
    pub name: &'static str,
    /// One declaration.
    pub first: Location,
    /// The other.
    pub second: Location,
}

/// Every task linked into this binary, by name.
#[derive(Debug)]
pub struct Registry {
    by_name: HashMap<&'static str, &'static TaskEntry>,
    fingerprint: u64,
}

impl Registry {
    /// The tasks of this binary, gathered once.
    ///
    /// # Errors
    ///
    /// [`DuplicateTask`] when two declarations share a name.
    pub fn global() -> Result<&'static Registry, DuplicateTask> {
        static REGISTRY: OnceLock<Result<Registry, DuplicateTask>> = OnceLock::new();
        REGISTRY
            .get_or_init(|| {
                Registry::from_entries(inventory::iter::<Registration>.into_iter().map(|r| r.0))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn from_entries(
        entries: impl Iterator<Item = &'static TaskEntry>,
    ) -> Result<Self, DuplicateTask> {
        let mut by_name: HashMap<&'static str, &'static TaskEntry> = HashMap::new();
        for entry in entries {
            if let Some(existing) = by_name.insert(entry.name, entry) {
                // inventory's order is unspecified; sort so the message is stable.
                let key = |l: &Location| (l.file, l.line, l.path);
                let (mut first, mut second) = (existing.location, entry.location);
                if key(&second) < key(&first) {
                    std::mem::swap(&mut first, &mut second);
                }
                return Err(DuplicateTask {
                    name: entry.name,
                    first,
                    second,
                });
            }
        }
        let fingerprint = fingerprint(&by_name);
        Ok(Registry {
            by_name,
            fingerprint,
        })
    }

    /// The entry registered under `name`.
    pub fn get(&self, name: &str) -> Option<&'static TaskEntry> {
        self.by_name.get(name).copied()
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &'static TaskEntry> + '_ {
        self.by_name.values().copied()
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// A hash of every name and executor, equal in two processes exactly when
    /// they registered the same tasks.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// FNV-1a over the sorted names and executors: stable across processes and
/// builds, unlike the standard library's seeded hasher.
fn fingerprint(by_name: &HashMap<&'static str, &'static TaskEntry>) -> u64 {
    let mut names: Vec<_> = by_name
        .values()
        .map(|e| (e.name, e.executor.as_str()))
        .collect();
    names.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, executor) in names {
        for byte in name.bytes().chain([0]).chain(executor.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(_: &[u8], _: &Resources) -> Result<Output, TaskError> {
        Ok(Box::new(()))
    }

    fn encode_unit(_: &(dyn Any + Send)) -> Result<Vec<u8>, CodecError> {
        Ok(Vec::new())
    }

    static A: TaskEntry =
        TaskEntry::new("same", Executor::Thread, Body::Blocking(noop), encode_unit).with_location(
            Location {
                path: "app::b::two",
                file: "src/b.rs",
                line: 9,
            },
        );
    static B: TaskEntry =
        TaskEntry::new("same", Executor::Thread, Body::Blocking(noop), encode_unit).with_location(
            Location {
                path: "app::a::one",
                file: "src/a.rs",
                line: 3,
            },
        );

    #[test]
    fn duplicate_names_both_declarations() {
        let err = Registry::from_entries([&A, &B].into_iter()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task name `same` is registered twice: by `app::a::one` (src/a.rs:3) and by `app::b::two` (src/b.rs:9)"
        );
    }

    #[test]
    fn fingerprint_ignores_order() {
        static C: TaskEntry =
            TaskEntry::new("other", Executor::Async, Body::Blocking(noop), encode_unit);
        let one = Registry::from_entries([&A, &C].into_iter()).unwrap();
        let two = Registry::from_entries([&C, &A].into_iter()).unwrap();
        assert_eq!(one.fingerprint(), two.fingerprint());
        let three = Registry::from_entries([&A].into_iter()).unwrap();
        assert_ne!(one.fingerprint(), three.fingerprint());
    }
}
