//! The registry of tasks declared with `#[task]`.
//!
//! Each `#[task]` emits one `static` [`TaskEntry`] (const data: name, executor,
//! defaults, source location, a type-erased entry point, a function that
//! names its argument and output types, and one that shows stored arguments
//! as JSON) and submits a reference to it through
//! `inventory`. [`Registry::global`] gathers them into a name → entry map the
//! first time it is asked, and reports a name claimed by two declarations
//! instead of picking one.
//!
//! A worker finds a task by name in its own registry and decodes the
//! arguments the parent encoded, so both must agree on more than names. The
//! registry lists every task as a [`RegisteredTask`] (name, executor,
//! argument and output types), sorted by name, and hashes that list with the
//! [`CODEC_VERSION`] into a [`fingerprint`](Registry::fingerprint). Parent and
//! worker compare fingerprints at the handshake; when they differ,
//! [`first_difference`] names the first task, in name order, that one side
//! lacks or declares differently. Type names are `std::any::type_name`'s,
//! which the standard library does not promise to keep across compiler
//! versions: a worker built by another compiler may be refused even with the
//! same types, never accepted with different ones.

use std::any::Any;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{CODEC_VERSION, CodecError};
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
    /// The queue its calls wait in, unless a call names another; `None` for
    /// the default queue.
    pub queue: Option<&'static str>,
    /// Its calls' priority in their queue, unless a call sets one: higher
    /// runs first.
    pub priority: i16,
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
        queue: None,
        priority: 0,
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

    /// The defaults with `queue` set.
    pub const fn queue(mut self, queue: &'static str) -> Self {
        self.queue = Some(queue);
        self
    }

    /// The defaults with `priority` set.
    pub const fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
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

/// The types a task takes and returns, as `std::any::type_name` spells them.
///
/// ```
/// use std::any::type_name;
/// use taskflow_worker::registry::Signature;
/// // What `#[task] fn square(n: u64) -> u64` registers.
/// let signature = Signature::new(type_name::<(u64,)>(), type_name::<u64>());
/// assert_eq!(signature.output, "u64");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Signature {
    /// The tuple of its arguments (resources excluded), `()` for none.
    pub arguments: &'static str,
    /// What a successful attempt produces: the `Ok` type of a `Result`.
    pub output: &'static str,
}

impl Signature {
    /// The signature of a task taking `arguments` and producing `output`.
    pub const fn new(arguments: &'static str, output: &'static str) -> Self {
        Signature { arguments, output }
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
    // A function, not data: `type_name` is not `const`, and an entry is.
    signature: fn() -> Signature,
    arguments_json: fn(&[u8]) -> Result<String, CodecError>,
}

/// The [`TaskEntry::arguments_json`] of an entry built without one.
fn no_arguments_json(_: &[u8]) -> Result<String, CodecError> {
    Err(CodecError::Encode(
        "this task's entry cannot show its arguments".into(),
    ))
}

impl TaskEntry {
    /// An entry with default policy, no resources and an unknown location.
    /// `signature` names the types that `body` decodes and `encode_output`
    /// encodes, so a worker that decodes others is refused at the handshake.
    pub const fn new(
        name: &'static str,
        executor: Executor,
        body: Body,
        encode_output: fn(&(dyn Any + Send)) -> Result<Vec<u8>, CodecError>,
        signature: fn() -> Signature,
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
            signature,
            arguments_json: no_arguments_json,
        }
    }

    /// The entry with the function that shows its stored arguments as JSON
    /// (see [`arguments_json`](Self::arguments_json)). Without it, showing
    /// them is an error.
    pub const fn with_arguments_json(
        mut self,
        arguments_json: fn(&[u8]) -> Result<String, CodecError>,
    ) -> Self {
        self.arguments_json = arguments_json;
        self
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

    /// The types it takes and returns.
    pub fn signature(&self) -> Signature {
        (self.signature)()
    }

    /// Encodes an output this task produced (for the trip back from a worker).
    ///
    /// # Errors
    ///
    /// When the value cannot be encoded.
    pub fn encode_output(&self, output: &(dyn Any + Send)) -> Result<Vec<u8>, CodecError> {
        (self.encode_output)(output)
    }

    /// Decodes a call's stored arguments (the bytes [`body`](Self::body)
    /// runs from) with this task's own argument types and shows them as
    /// JSON text, for people to read: an object with one member per
    /// argument, keyed by parameter name, in declaration order (a
    /// parameter that is a pattern is named `argument N`, from 1).
    /// `Resource<T>` parameters are not arguments and do not appear.
    ///
    /// `#[task]` supplies the function; it writes JSON only when `taskflow`
    /// is built with its `admin` feature, and fails otherwise.
    ///
    /// # Errors
    ///
    /// [`CodecError::Decode`] or [`CodecError::TrailingBytes`] for bytes
    /// that are not this task's arguments; [`CodecError::Encode`] for
    /// arguments that JSON cannot express (a map keyed by structs, tuples
    /// or sequences), or without the `admin` feature.
    pub fn arguments_json(&self, bytes: &[u8]) -> Result<String, CodecError> {
        (self.arguments_json)(bytes)
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

/// One task as the worker handshake compares it: what a parent and a worker
/// must agree on for the worker to run the task from the parent's bytes.
///
/// Borrowed from its entry in a [`Registry`]; owned when decoded from a
/// worker's greeting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredTask {
    /// Its registered name.
    pub name: Cow<'static, str>,
    /// Where it runs.
    pub executor: Executor,
    /// The tuple of its argument types, as [`Signature::arguments`].
    pub arguments: Cow<'static, str>,
    /// Its output type, as [`Signature::output`].
    pub output: Cow<'static, str>,
}

impl RegisteredTask {
    fn of(entry: &'static TaskEntry) -> Self {
        let signature = entry.signature();
        RegisteredTask {
            name: Cow::Borrowed(entry.name),
            executor: entry.executor,
            arguments: Cow::Borrowed(signature.arguments),
            output: Cow::Borrowed(signature.output),
        }
    }
}

/// How the first task that two registries disagree on differs, from the
/// side of the process that compares ("here") against a worker; see
/// [`first_difference`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskDifference {
    /// Registered here, absent from the worker.
    OnlyHere(RegisteredTask),
    /// Registered in the worker, absent here.
    OnlyInWorker(RegisteredTask),
    /// Registered on both sides, with another executor or other types.
    Declared {
        /// This process's declaration.
        here: RegisteredTask,
        /// The worker's.
        worker: RegisteredTask,
    },
}

impl fmt::Display for TaskDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskDifference::OnlyHere(task) => write!(
                f,
                "task `{}` is registered here but not in the worker",
                task.name
            ),
            TaskDifference::OnlyInWorker(task) => write!(
                f,
                "task `{}` is registered in the worker but not here",
                task.name
            ),
            TaskDifference::Declared { here, worker } => {
                let executor = here.executor != worker.executor;
                let types = (&here.arguments, &here.output) != (&worker.arguments, &worker.output);
                // Show what differs; types also when nothing visible does,
                // so the message never reads as an empty comparison.
                let describe = |task: &RegisteredTask| match (executor, types) {
                    (true, false) => format!("runs on the `{}` executor", task.executor),
                    (true, true) => format!(
                        "runs on the `{}` executor, takes `{}` and returns `{}`",
                        task.executor, task.arguments, task.output
                    ),
                    (false, _) => {
                        format!("takes `{}` and returns `{}`", task.arguments, task.output)
                    }
                };
                write!(
                    f,
                    "task `{}` differs: here it {}; the worker's {}",
                    here.name,
                    describe(here),
                    describe(worker)
                )
            }
        }
    }
}

/// The first task, in name order, that `here` and `worker` do not declare
/// alike; `None` when the two lists hold the same tasks. Neither list needs
/// to be sorted.
///
/// ```
/// use std::borrow::Cow;
/// use taskflow_worker::Executor;
/// use taskflow_worker::registry::{RegisteredTask, first_difference};
/// let task = |output: &'static str| RegisteredTask {
///     name: Cow::Borrowed("app::compute"),
///     executor: Executor::Process,
///     arguments: Cow::Borrowed("(u64,)"),
///     output: Cow::Borrowed(output),
/// };
/// assert_eq!(first_difference(&[task("u64")], &[task("u64")]), None);
/// let difference = first_difference(&[task("u64")], &[task("u32")]).unwrap();
/// assert_eq!(
///     difference.to_string(),
///     "task `app::compute` differs: here it takes `(u64,)` and returns `u64`; \
///      the worker's takes `(u64,)` and returns `u32`"
/// );
/// ```
pub fn first_difference(
    here: &[RegisteredTask],
    worker: &[RegisteredTask],
) -> Option<TaskDifference> {
    fn by_name(tasks: &[RegisteredTask]) -> Vec<&RegisteredTask> {
        let mut sorted: Vec<_> = tasks.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted
    }
    let (here, worker) = (by_name(here), by_name(worker));
    let (mut here, mut worker) = (here.into_iter().peekable(), worker.into_iter().peekable());
    loop {
        let (ours, theirs) = match (here.peek(), worker.peek()) {
            (None, None) => return None,
            (Some(&ours), None) => return Some(TaskDifference::OnlyHere(ours.clone())),
            (None, Some(&theirs)) => return Some(TaskDifference::OnlyInWorker(theirs.clone())),
            (Some(&ours), Some(&theirs)) => (ours, theirs),
        };
        match ours.name.cmp(&theirs.name) {
            Ordering::Less => return Some(TaskDifference::OnlyHere(ours.clone())),
            Ordering::Greater => return Some(TaskDifference::OnlyInWorker(theirs.clone())),
            Ordering::Equal if ours != theirs => {
                return Some(TaskDifference::Declared {
                    here: ours.clone(),
                    worker: theirs.clone(),
                });
            }
            Ordering::Equal => {
                here.next();
                worker.next();
            }
        }
    }
}

/// Every task linked into this binary, by name.
#[derive(Debug)]
pub struct Registry {
    by_name: HashMap<&'static str, &'static TaskEntry>,
    tasks: Vec<RegisteredTask>,
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
        let mut tasks: Vec<_> = by_name.values().map(|e| RegisteredTask::of(e)).collect();
        // Names are unique here, so the order is total.
        tasks.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let fingerprint = fingerprint(&tasks);
        Ok(Registry {
            by_name,
            tasks,
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

    /// Every task as the worker handshake compares it, sorted by name.
    pub fn tasks(&self) -> &[RegisteredTask] {
        &self.tasks
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// A hash of the [`CODEC_VERSION`] and of every task's name, executor,
    /// argument types and output type. Two processes that encode alike and
    /// registered the same tasks have the same fingerprint; any difference
    /// changes it, but for a 64-bit hash collision.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// FNV-1a over the codec version and the tasks sorted by name: stable across
/// processes and builds, unlike the standard library's seeded hasher.
fn fingerprint(tasks: &[RegisteredTask]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&CODEC_VERSION.to_le_bytes());
    for task in tasks {
        let fields = [
            &*task.name,
            task.executor.as_str(),
            &*task.arguments,
            &*task.output,
        ];
        for field in fields {
            // A separator no name contains, so fields cannot run together.
            feed(field.as_bytes());
            feed(&[0]);
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

    fn unit() -> Signature {
        Signature::new("()", "()")
    }

    fn wide() -> Signature {
        Signature::new("(u64,)", "u64")
    }

    fn narrow() -> Signature {
        Signature::new("(u32,)", "u32")
    }

    const fn entry(
        name: &'static str,
        executor: Executor,
        signature: fn() -> Signature,
    ) -> TaskEntry {
        TaskEntry::new(name, executor, Body::Blocking(noop), encode_unit, signature)
    }

    static A: TaskEntry = entry("same", Executor::Thread, unit).with_location(Location {
        path: "app::b::two",
        file: "src/b.rs",
        line: 9,
    });
    static B: TaskEntry = entry("same", Executor::Thread, unit).with_location(Location {
        path: "app::a::one",
        file: "src/a.rs",
        line: 3,
    });
    static C: TaskEntry = entry("other", Executor::Async, unit);
    static WIDE: TaskEntry = entry("app::compute", Executor::Process, wide);
    static NARROW: TaskEntry = entry("app::compute", Executor::Process, narrow);
    static ON_THREAD: TaskEntry = entry("app::compute", Executor::Thread, wide);

    fn registry(entries: &[&'static TaskEntry]) -> Registry {
        Registry::from_entries(entries.iter().copied()).unwrap()
    }

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
        let one = registry(&[&A, &C, &WIDE]);
        let two = registry(&[&WIDE, &C, &A]);
        assert_eq!(one.fingerprint(), two.fingerprint());
        assert_eq!(one.tasks(), two.tasks());
        let names: Vec<_> = one.tasks().iter().map(|t| &*t.name).collect();
        assert_eq!(names, ["app::compute", "other", "same"]);
        assert_ne!(one.fingerprint(), registry(&[&A, &C]).fingerprint());
    }

    #[test]
    fn fingerprint_covers_types_and_executor() {
        let wide = registry(&[&A, &WIDE]);
        let narrow = registry(&[&NARROW, &A]);
        let on_thread = registry(&[&A, &ON_THREAD]);
        assert_ne!(wide.fingerprint(), narrow.fingerprint());
        assert_ne!(wide.fingerprint(), on_thread.fingerprint());
        assert_ne!(narrow.fingerprint(), on_thread.fingerprint());
    }

    #[test]
    fn the_first_difference_in_name_order_is_named_with_both_sides() {
        let here = registry(&[&A, &WIDE]);
        assert_eq!(first_difference(here.tasks(), here.tasks()), None);

        let worker = registry(&[&NARROW, &A]);
        let difference = first_difference(here.tasks(), worker.tasks()).unwrap();
        assert_eq!(
            difference.to_string(),
            "task `app::compute` differs: here it takes `(u64,)` and returns `u64`; the worker's takes `(u32,)` and returns `u32`"
        );

        let worker = registry(&[&ON_THREAD, &A]);
        let difference = first_difference(here.tasks(), worker.tasks()).unwrap();
        assert_eq!(
            difference.to_string(),
            "task `app::compute` differs: here it runs on the `process` executor; the worker's runs on the `thread` executor"
        );

        // `app::compute` sorts before `other` and `same`: it is reported,
        // though the worker also lacks `same`.
        let worker = registry(&[&C]);
        let difference = first_difference(here.tasks(), worker.tasks()).unwrap();
        assert_eq!(
            difference.to_string(),
            "task `app::compute` is registered here but not in the worker"
        );
        let difference = first_difference(worker.tasks(), here.tasks()).unwrap();
        assert_eq!(
            difference.to_string(),
            "task `app::compute` is registered in the worker but not here"
        );
    }

    #[test]
    fn an_unsorted_list_from_a_worker_is_compared_by_name() {
        let here = registry(&[&A, &C, &WIDE]);
        let mut reversed = here.tasks().to_vec();
        reversed.reverse();
        assert_eq!(first_difference(here.tasks(), &reversed), None);
    }
}
