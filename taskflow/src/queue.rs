//! The one queue: named queues × priority × `run_at`, in front of every
//! executor.
//!
//! Admission needs two kinds of slot: one of the task's **queue** (its
//! `concurrency`, across all executors of this instance) and one of its
//! **executor** (`max_concurrent_tasks` for async tasks, the sync pool's
//! threads, the process pool's workers). A task holds both from admission
//! until it leaves RUNNING (a retry's wait holds none), recorded by the
//! `admitted` mark on its cell, which `Core::transition` clears and
//! releases.
//!
//! Without a task store this module is the queue itself: ready tasks wait in
//! per-queue, per-executor lists by priority (higher first, first in first
//! out within one), and delayed ones (`run_at` in the future: a `delay`, a
//! retry's backoff) wait in one timer heap served by one tokio task, however
//! many there are. With a task store the store's table is the queue; this
//! module only counts free slots, so the claimer asks the store for exactly
//! as many tasks as can start ([`Scheduler::reserve`]).
//!
//! A queue with no concurrency cap on an executor with no cap admits a ready
//! task on the spot, without a lock: its queue counts it with one atomic add
//! (so that a cap set at run time knows how many run), and nothing more.

use std::cmp::Reverse;

use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, SystemTime};

use taskflow_worker::Executor;
use tokio::sync::Notify;

use crate::core::Core;
use crate::record::SharedCell;
use crate::store::Demand;
use crate::tally::Tally;

/// The queue of tasks that name none.
pub const DEFAULT_QUEUE: &str = "default";

/// Looks a pool thread takes at its queue's lane before it gives its slots
/// back (half of them spinning, half yielding its time slice).
const LINGER_ROUNDS: u32 = 16;

/// Most tasks asked of the store per queue and executor in one claim when
/// nothing caps them.
const CLAIM_BATCH: usize = 512;

/// Why `name` cannot name a queue, if it cannot: the rule `#[task(queue =
/// …)]` checks at compile time, applied to names given at run time.
pub(crate) fn invalid_queue_name(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("a queue name must not be blank")
    } else if name.len() > 128 {
        Some("a queue name must be at most 128 bytes")
    } else if name.chars().any(char::is_control) {
        Some("a queue name must not contain control characters")
    } else {
        None
    }
}

/// A queue's settings, for [`TaskManagerBuilder::queue`](crate::TaskManagerBuilder::queue).
///
/// ```
/// use taskflow::QueueConfig;
/// let emails = QueueConfig::new().concurrency(4).max_size(10_000);
/// # let _ = emails;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// At most this many of the queue's tasks run at once in this instance,
    /// across all executors. `None`: no cap beyond the executors'.
    pub concurrency: Option<usize>,
    /// At most this many of the queue's tasks PENDING at once; an enqueue
    /// beyond it is [`Error::QueueFull`](crate::Error::QueueFull). Counted
    /// per instance, as `concurrency` is: with a store that several
    /// instances share, each counts the PENDING tasks it holds (enqueued
    /// here and not taken elsewhere, or waiting here to retry), not the
    /// store's.
    pub max_size: Option<usize>,
}

impl QueueConfig {
    /// No caps.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` of the queue's tasks run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// At most `n` of the queue's tasks wait PENDING at once.
    pub fn max_size(mut self, n: usize) -> Self {
        self.max_size = Some(n);
        self
    }
}

/// One queue's numbers, from [`TaskManager::queue_stats`](crate::TaskManager::queue_stats).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Tasks waiting (including delayed ones and retry waits).
    pub pending: u64,
    /// Tasks running.
    pub running: u64,
    /// Whether admission is paused.
    pub paused: bool,
    /// Its concurrency cap in this instance.
    pub concurrency: Option<usize>,
    /// Its cap on PENDING tasks.
    pub max_size: Option<usize>,
}

/// No cap.
const UNLIMITED: usize = usize::MAX;

/// A counter on cache lines of its own: the threads that write it (every
/// admission and release) do not evict what the others only read (a
/// queue's cap, its paused flag, its lanes).
#[derive(Default)]
#[repr(align(128))]
struct Own(AtomicUsize);

impl std::ops::Deref for Own {
    type Target = AtomicUsize;

    fn deref(&self) -> &AtomicUsize {
        &self.0
    }
}

/// Slots: a capacity and how many are taken. An executor's slots are fixed
/// at build time, and when unlimited never counted, so the uncapped path
/// touches no shared counter. A queue's cap can change at run time, so its
/// slots are always counted: a cap set later then knows how many run.
struct Slots {
    capacity: AtomicUsize,
    taken: Own,
    /// Counted even while unlimited.
    adjustable: bool,
}

impl Slots {
    fn fixed(capacity: Option<usize>) -> Self {
        Slots {
            capacity: AtomicUsize::new(capacity.unwrap_or(UNLIMITED)),
            taken: Own::default(),
            adjustable: false,
        }
    }

    fn adjustable(capacity: Option<usize>) -> Self {
        Slots {
            adjustable: true,
            ..Slots::fixed(capacity)
        }
    }

    /// The cap, read `SeqCst` like the counter (see [`Scheduler::release`]).
    fn capacity(&self) -> Option<usize> {
        Some(self.capacity.load(Ordering::SeqCst)).filter(|&c| c != UNLIMITED)
    }

    fn is_unlimited(&self) -> bool {
        self.capacity().is_none()
    }

    /// Changes the cap; slots taken stay taken until given back.
    fn set_capacity(&self, capacity: Option<usize>) {
        self.capacity
            .store(capacity.unwrap_or(UNLIMITED), Ordering::SeqCst);
    }

    fn take(&self) -> bool {
        self.take_up_to(1) == 1
    }

    /// Takes up to `n`; how many it got.
    fn take_up_to(&self, n: usize) -> usize {
        let capacity = self.capacity.load(Ordering::SeqCst);
        if capacity == UNLIMITED {
            if self.adjustable {
                self.taken.fetch_add(n, Ordering::SeqCst);
            }
            return n;
        }
        // Nothing free: no write, so a full pool's counter stays shared
        // in the caches of the threads that look at it.
        let mut got = 0;
        let _ = self
            .taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |taken| {
                got = capacity.saturating_sub(taken).min(n);
                (got > 0).then_some(taken + got)
            });
        got
    }

    /// Whether what is taken is within the cap (which may have been
    /// lowered since the slots were taken).
    fn within_capacity(&self) -> bool {
        let capacity = self.capacity.load(Ordering::SeqCst);
        capacity == UNLIMITED || self.taken.load(Ordering::SeqCst) <= capacity
    }

    fn give(&self, n: usize) {
        if self.adjustable || self.capacity.load(Ordering::Relaxed) != UNLIMITED {
            self.taken.fetch_sub(n, Ordering::SeqCst);
        }
    }

    fn free(&self) -> usize {
        match self.capacity() {
            None => UNLIMITED,
            Some(capacity) => capacity.saturating_sub(self.taken.load(Ordering::SeqCst)),
        }
    }
}

/// Ready tasks of one queue and executor: by priority, then arrival.
///
/// Most tasks have the default priority 0: they wait in a lock-free
/// first-in, first-out lane, so a burst of them and the threads that finish
/// tasks never meet on a lock. Tasks of other priorities wait in an ordered
/// map behind a lock, looked at only while it holds any: those above 0 go
/// before the lane, those below after it.
///
/// Whether any wait is read from the lane's own ends and a count of the
/// map, so a push and a pop of the lane write nothing the other side
/// writes. (A task counted before it was in, or after it was out, made
/// threads spin on tasks not there yet.)
struct Ready {
    lane: (Sender<SharedCell>, Receiver<SharedCell>),
    others: Mutex<BTreeMap<Reverse<i16>, VecDeque<SharedCell>>>,
    /// Tasks in `others`.
    others_len: AtomicUsize,
}

impl Default for Ready {
    fn default() -> Self {
        Ready {
            lane: crossbeam_channel::unbounded(),
            others: Mutex::default(),
            others_len: AtomicUsize::new(0),
        }
    }
}

impl Ready {
    fn push(&self, cell: SharedCell) {
        if cell.priority == 0 {
            // Only fails if the receiver is gone, and this struct owns it.
            let _ = self.lane.0.send(cell);
        } else {
            let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
            others
                .entry(Reverse(cell.priority))
                .or_default()
                .push_back(cell);
            self.others_len.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The best task that has not finished meanwhile (cancelled while it
    /// waited: dropped here); `None` once none waits.
    fn pop(&self) -> Option<SharedCell> {
        loop {
            let cell = self
                .pop_other(|priority| priority > 0)
                .or_else(|| self.lane.1.try_recv().ok())
                .or_else(|| self.pop_other(|_| true))?;
            if !cell.status().is_finished() {
                return Some(cell);
            }
        }
    }

    /// The first task of the ordered map, if its priority passes `wanted`.
    fn pop_other(&self, wanted: impl Fn(i16) -> bool) -> Option<SharedCell> {
        if self.others_len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        let mut entry = others.first_entry()?;
        if !wanted(entry.key().0) {
            return None;
        }
        let cell = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        }
        if cell.is_some() {
            self.others_len.fetch_sub(1, Ordering::SeqCst);
        }
        cell
    }

    /// Whether no task waits. The lane's ends are `SeqCst`, as the map's
    /// count is (see [`Scheduler::pump`]).
    fn is_empty(&self) -> bool {
        self.lane.1.is_empty() && self.others_len.load(Ordering::SeqCst) == 0
    }
}

/// One named queue. Aligned so that its fields do not share a cache line
/// with its `Arc`'s reference count, which every task of the queue changes
/// when it is made and dropped.
#[repr(align(128))]
pub(crate) struct Queue {
    name: Arc<str>,
    config: QueueConfig,
    slots: Slots,
    paused: AtomicBool,
    /// Ready tasks per executor (memory mode only).
    ready: [Ready; 3],
    /// PENDING and RUNNING counts of this instance's tasks in the queue;
    /// not kept for the default queue, whose counts are what the others'
    /// leave of the manager's (see [`Scheduler::stats`]), so most tasks
    /// count once, not twice.
    counts: Tally<2>,
    is_default: bool,
    /// Exact PENDING count, kept only for a queue with a `max_size`.
    queued: AtomicUsize,
}

const PENDING: usize = 0;
const RUNNING: usize = 1;

impl Queue {
    fn new(name: Arc<str>, config: QueueConfig) -> Self {
        Queue {
            is_default: &*name == DEFAULT_QUEUE,
            name,
            config,
            slots: Slots::adjustable(config.concurrency),
            paused: AtomicBool::new(false),
            ready: Default::default(),
            counts: Tally::default(),
            queued: AtomicUsize::new(0),
        }
    }

    /// Counts a new PENDING task against `max_size`; `false` when full.
    pub(crate) fn reserve_pending(&self) -> bool {
        let Some(max) = self.config.max_size else {
            return true;
        };
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < max).then_some(queued + 1)
            })
            .is_ok()
    }

    /// Counts a task entering PENDING whatever the cap (a retry, a task
    /// claimed from the store).
    pub(crate) fn reserve_pending_unchecked(&self) {
        if self.config.max_size.is_some() {
            self.queued.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Counts a task leaving PENDING.
    pub(crate) fn unreserve_pending(&self) {
        if self.config.max_size.is_some() {
            let _ = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    Some(queued.saturating_sub(1))
                });
        }
    }

    /// The queue's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its settings now (its concurrency may have changed since build).
    pub(crate) fn config(&self) -> QueueConfig {
        QueueConfig {
            concurrency: self.slots.capacity(),
            ..self.config
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Counts a task entering PENDING (`+1`) or leaving it (`-1`).
    pub(crate) fn count_pending(&self, delta: i64) {
        if !self.is_default {
            self.counts.add(PENDING, delta);
        }
    }

    /// Counts a task entering RUNNING (`+1`) or leaving it (`-1`).
    pub(crate) fn count_running(&self, delta: i64) {
        if !self.is_default {
            self.counts.add(RUNNING, delta);
        }
    }
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("config", &self.config())
            .field("paused", &self.is_paused())
            .finish_non_exhaustive()
    }
}

/// The admission structure of one manager.
pub(crate) struct Scheduler {
    /// The queue of tasks that name none, found without a look-up.
    default: Arc<Queue>,
    queues: RwLock<HashMap<Arc<str>, Arc<Queue>>>,
    /// The same queues by name, rebuilt when one is added: what releases
    /// and claims walk, without locking the map or sorting.
    listed: RwLock<Arc<[Arc<Queue>]>>,
    /// More than one queue exists: a release may serve another queue.
    several: AtomicBool,
    /// Settings of queues named on the builder; others get defaults.
    configs: HashMap<Arc<str>, QueueConfig>,
    executors: [Slots; 3],
    /// Delayed tasks (memory mode).
    timer: Timer,
    /// With a store: the claimer to wake when slots free up.
    claimer: Arc<Notify>,
    /// The store's table is the queue (until the store is lost).
    durable: AtomicBool,
}

/// The index of an executor in per-executor arrays.
pub(crate) fn executor_index(executor: Executor) -> usize {
    match executor {
        Executor::Async => 0,
        Executor::Thread => 1,
        _ => 2,
    }
}

const EXECUTORS: [Executor; 3] = [Executor::Async, Executor::Thread, Executor::Process];

impl Scheduler {
    /// `capacities`: slots per executor (async, thread, process), `None`
    /// for no cap.
    pub(crate) fn new(
        configs: HashMap<Arc<str>, QueueConfig>,
        capacities: [Option<usize>; 3],
        durable: bool,
    ) -> Self {
        let default: Arc<str> = DEFAULT_QUEUE.into();
        let default = Arc::new(Queue::new(
            default.clone(),
            configs.get(&default).copied().unwrap_or_default(),
        ));
        let scheduler = Scheduler {
            queues: RwLock::new(HashMap::from([(default.name.clone(), default.clone())])),
            listed: RwLock::new(Arc::from(vec![default.clone()])),
            several: AtomicBool::new(false),
            default,
            configs,
            executors: capacities.map(Slots::fixed),
            timer: Timer::default(),
            claimer: Arc::new(Notify::new()),
            durable: AtomicBool::new(durable),
        };
        for name in scheduler.configs.keys() {
            scheduler.queue(name);
        }
        scheduler
    }

    /// The queue named `name`, created with its settings on first use.
    pub(crate) fn queue(&self, name: &str) -> Arc<Queue> {
        if name == DEFAULT_QUEUE {
            return self.default.clone();
        }
        if let Some(queue) = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return queue.clone();
        }
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(name) {
            return queue.clone();
        }
        let config = self.configs.get(name).copied().unwrap_or_default();
        let queue = Arc::new(Queue::new(name.into(), config));
        queues.insert(queue.name.clone(), queue.clone());
        let mut listed: Vec<Arc<Queue>> = queues.values().cloned().collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        self.several.store(listed.len() > 1, Ordering::Release);
        *self.listed.write().unwrap_or_else(|p| p.into_inner()) = listed.into();
        queue
    }

    /// Every queue this instance knows, by name.
    pub(crate) fn queues(&self) -> Vec<Arc<Queue>> {
        self.listed().to_vec()
    }

    fn listed(&self) -> Arc<[Arc<Queue>]> {
        self.listed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The claimer's wake-up (store mode).
    pub(crate) fn claimer(&self) -> &Arc<Notify> {
        &self.claimer
    }

    /// Hands a PENDING task to the queue (memory mode): admitted now if it
    /// is ready and slots are free, else kept in order until it is.
    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        let run_at = cell.lock().run_at;
        // Due at creation (most tasks): no clock read.
        let later = (run_at > cell.created_at).then(|| run_at.get());
        self.submit_at(core, cell, later);
    }

    /// As [`submit`](Self::submit), for a task due at `run_at` (`None`: at
    /// once).
    pub(crate) fn submit_at(&self, core: &Arc<Core>, cell: SharedCell, run_at: Option<SystemTime>) {
        match run_at {
            Some(run_at) if run_at > SystemTime::now() => self.timer.add(core, cell, run_at),
            _ => self.submit_ready(core, cell),
        }
    }

    fn submit_ready(&self, core: &Arc<Core>, cell: SharedCell) {
        let executor = executor_index(cell.entry.executor());
        let slots = &self.executors[executor];
        // Nothing of this queue and executor waits: if both have a slot, the
        // task starts without touching the ordered lists (nor the queue's
        // reference count, which every thread's tasks share).
        let queue = &cell.queue;
        if !queue.is_paused()
            && slots.free() > 0
            && queue.ready[executor].is_empty()
            && slots.take()
        {
            if queue.slots.take() {
                self.start(core, cell);
                return;
            }
            slots.give(1);
        }
        // The default queue is at hand without a clone of its reference.
        let other;
        let queue: &Queue = match Arc::ptr_eq(&cell.queue, &self.default) {
            true => &self.default,
            false => {
                other = cell.queue.clone();
                &other
            }
        };
        queue.ready[executor].push(cell);
        self.pump(core, queue, executor);
    }

    /// Admits waiting tasks of `queue` on `executor` while both have slots.
    ///
    /// An enqueue puts its task in, then pumps (looks for a free slot); a
    /// release gives its slots back, then pumps (looks for a task). The
    /// counters involved are all `SeqCst`, so of two that cross, at least
    /// one sees the other's change: no task waits beside a free slot. The
    /// executor's slots are looked at first: while its pool is full (a
    /// burst) nobody writes them, so the look costs no cache miss.
    fn pump(&self, core: &Arc<Core>, queue: &Queue, executor: usize) {
        let slots = &self.executors[executor];
        loop {
            if queue.is_paused() || slots.free() == 0 || queue.ready[executor].is_empty() {
                return;
            }
            if !slots.take() {
                return;
            }
            if !queue.slots.take() {
                slots.give(1);
                return;
            }
            match queue.ready[executor].pop() {
                Some(cell) => self.start(core, cell),
                None => {
                    slots.give(1);
                    queue.slots.give(1);
                    // Only cancelled tasks were left, or other threads
                    // claimed the rest; a task pushed meanwhile saw our slots
                    // taken and is looked at on the next turn.
                    if queue.ready[executor].is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// Starts a task whose slots are taken (or need none).
    fn start(&self, core: &Arc<Core>, cell: SharedCell) {
        cell.admit();
        core.run(cell);
    }

    /// Gives back the slots of a task that left RUNNING (or finished before
    /// it started), then admits what waited for them.
    pub(crate) fn release(&self, core: &Arc<Core>, queue: &Arc<Queue>, executor: Executor) {
        let index = executor_index(executor);
        let durable = self.durable.load(Ordering::Acquire);
        // No task waits for a slot that is never short (only for a paused
        // queue's resume, which admits them itself): nothing to hand on or
        // pump, unless a cap was set meanwhile (see below).
        let never_short = self.executors[index].is_unlimited() && queue.slots.is_unlimited();
        if !durable && !never_short && self.hand_on(core, queue, index) {
            return;
        }
        self.executors[index].give(1);
        queue.slots.give(1);
        if durable {
            self.claimer.notify_one();
            return;
        }
        // The cap is read again after the give, both `SeqCst`: an enqueue
        // refused under a cap set meanwhile saw this give or is pumped here.
        if never_short && queue.slots.is_unlimited() {
            return;
        }
        // The freed slots serve the same queue and executor first. A freed
        // queue slot (a capped queue) may then serve another executor's
        // task, and a freed executor slot (a capped executor) another
        // queue's: only where tasks wait.
        self.pump(core, queue, index);
        if !queue.slots.is_unlimited() {
            for other in (0..3).filter(|&other| other != index) {
                self.pump(core, queue, other);
            }
        }
        if !self.executors[index].is_unlimited() && self.several.load(Ordering::Acquire) {
            for other in self.listed().iter() {
                if !Arc::ptr_eq(other, queue) {
                    self.pump(core, other, index);
                }
            }
        }
    }

    /// Passes the slots a task leaves straight to the next ready task of
    /// the same queue and executor, which is the one they would admit
    /// first anyway: no counter changes hands. Not while the queue is
    /// paused, nor when its cap was lowered below what runs. Whether a
    /// task took them.
    fn hand_on(&self, core: &Arc<Core>, queue: &Queue, executor: usize) -> bool {
        if queue.is_paused() || !queue.slots.within_capacity() {
            return false;
        }
        // A pool thread that just finished waits a moment for the next
        // task of its queue before it gives its slots back: in a burst one
        // comes within microseconds, and taken here it spares this thread
        // and the enqueuing one a give and a take of both slots.
        let linger = match executor == executor_index(Executor::Thread)
            && crate::executor::ending_attempt_here()
        {
            true => LINGER_ROUNDS,
            false => 0,
        };
        for round in 0..=linger {
            if round > 0 {
                match round <= linger / 2 {
                    true => std::hint::spin_loop(),
                    false => std::thread::yield_now(),
                }
                if queue.is_paused() {
                    return false;
                }
            }
            if let Some(cell) = queue.ready[executor].pop() {
                self.start(core, cell);
                return true;
            }
        }
        false
    }

    /// Pauses or resumes admission from `queue` in this instance.
    pub(crate) fn set_paused(&self, core: &Arc<Core>, queue: &str, paused: bool) {
        let queue = self.queue(queue);
        let was = queue.paused.swap(paused, Ordering::AcqRel);
        if was && !paused {
            self.admit_waiting(core, &queue);
        }
    }

    /// Changes the concurrency cap of `queue` in this instance. A lower cap
    /// lets the tasks running now finish; a higher one admits what waits.
    pub(crate) fn set_concurrency(&self, core: &Arc<Core>, queue: &str, cap: Option<usize>) {
        let queue = self.queue(queue);
        queue.slots.set_capacity(cap);
        self.admit_waiting(core, &queue);
    }

    /// Admits the tasks of `queue` that can start now.
    fn admit_waiting(&self, core: &Arc<Core>, queue: &Queue) {
        if self.durable.load(Ordering::Acquire) {
            self.claimer.notify_one();
        } else {
            for executor in 0..3 {
                self.pump(core, queue, executor);
            }
        }
    }

    /// With a store: takes every slot free now, per queue and executor, and
    /// says how many tasks to claim for each. `names` lists the tasks of
    /// each executor this binary can run. Pairs of a queue and an executor
    /// in `drained` (found without ready work earlier in this claim round)
    /// are passed over, so the executor's slots reach the queues after them.
    pub(crate) fn reserve(
        &self,
        names: &[Arc<[String]>; 3],
        drained: &[(Arc<str>, Executor)],
    ) -> Reservation {
        let mut demand = Vec::new();
        let mut starved = false;
        for queue in self.queues() {
            if queue.is_paused() {
                continue;
            }
            for (index, executor) in EXECUTORS.into_iter().enumerate() {
                if names[index].is_empty() || !cfg!(unix) && executor == Executor::Process {
                    continue;
                }
                if drained.contains(&(queue.name.clone(), executor)) {
                    continue;
                }
                let want = self.executors[index].free().min(CLAIM_BATCH);
                let from_executor = self.executors[index].take_up_to(want);
                starved |= from_executor == 0 && queue.slots.free() > 0;
                let got = queue.slots.take_up_to(from_executor);
                self.executors[index].give(from_executor - got);
                if got > 0 {
                    demand.push((
                        queue.clone(),
                        Demand::new(&*queue.name, executor, got, names[index].clone()),
                    ));
                }
            }
        }
        Reservation { demand, starved }
    }

    /// The store was lost: from now on the queue is this one, in memory.
    pub(crate) fn go_in_memory(&self) {
        self.durable.store(false, Ordering::Release);
    }

    /// Takes up to `n` slots of both `queue` and `executor` at once (for
    /// tasks claimed as they are inserted); how many it got.
    pub(crate) fn reserve_for(&self, queue: &Queue, executor: Executor, n: usize) -> usize {
        if queue.is_paused() {
            return 0;
        }
        let slots = &self.executors[executor_index(executor)];
        let from_executor = slots.take_up_to(n.min(CLAIM_BATCH));
        let got = queue.slots.take_up_to(from_executor);
        slots.give(from_executor - got);
        got
    }

    /// Gives back the unused part of a reservation.
    pub(crate) fn unreserve(&self, queue: &Queue, executor: Executor, n: usize) {
        if n > 0 {
            self.executors[executor_index(executor)].give(n);
            queue.slots.give(n);
        }
    }

    /// Stops the timer task; delayed tasks wait no more (shutdown).
    pub(crate) fn stop(&self) {
        self.timer.stop();
    }

    /// Per-queue numbers of this instance, given its PENDING and RUNNING
    /// tasks in all queues: the default queue has what the others leave.
    /// (Counts read while tasks move are a moment's approximation, as any
    /// gauge; a difference that comes out negative reads as zero.)
    pub(crate) fn stats(&self, pending: u64, running: u64) -> Vec<QueueStats> {
        let queues = self.queues();
        let [mut left_pending, mut left_running] =
            [i64::try_from(pending), i64::try_from(running)].map(|total| total.unwrap_or(i64::MAX));
        for queue in queues.iter().filter(|queue| !queue.is_default) {
            left_pending -= queue.counts.get(PENDING);
            left_running -= queue.counts.get(RUNNING);
        }
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        queues
            .iter()
            .map(|queue| {
                let (pending, running) = match queue.is_default {
                    true => (left_pending, left_running),
                    false => (queue.counts.get(PENDING), queue.counts.get(RUNNING)),
                };
                QueueStats {
                    name: queue.name.to_string(),
                    pending: count(pending),
                    running: count(running),
                    paused: queue.is_paused(),
                    concurrency: queue.slots.capacity(),
                    max_size: queue.config.max_size,
                }
            })
            .collect()
    }
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("queues", &self.queues())
            .field("durable", &self.durable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Slots taken for a claim, per queue and executor.
pub(crate) struct Reservation {
    pub(crate) demand: Vec<(Arc<Queue>, Demand)>,
    /// A queue with free slots of its own got none of an executor's: the
    /// queues before it (or running tasks) took them all.
    pub(crate) starved: bool,
}

/// Delayed tasks, ordered by when they become ready, served by one tokio
/// task that sleeps until the earliest.
#[derive(Default)]
struct Timer {
    state: Mutex<TimerState>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct TimerState {
    heap: BinaryHeap<Reverse<Delayed>>,
    /// The serving task exists.
    started: bool,
    stopped: bool,
    seq: u64,
}

struct Delayed {
    at: SystemTime,
    seq: u64,
    cell: SharedCell,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl Timer {
    fn state(&self) -> MutexGuard<'_, TimerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, core: &Arc<Core>, cell: SharedCell, at: SystemTime) {
        let (earliest, start) = {
            let mut state = self.state();
            if state.stopped {
                return;
            }
            state.seq += 1;
            let seq = state.seq;
            let earliest = state.heap.peek().is_none_or(|Reverse(first)| at < first.at);
            state.heap.push(Reverse(Delayed { at, seq, cell }));
            let start = !std::mem::replace(&mut state.started, true);
            (earliest, start)
        };
        if start {
            let core = Arc::downgrade(core);
            drop(core_runtime(&core).map(|runtime| runtime.spawn(serve_timer(core))));
        } else if earliest {
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        let mut state = self.state();
        state.stopped = true;
        state.heap.clear();
        drop(state);
        self.wake.notify_one();
    }
}

fn core_runtime(core: &Weak<Core>) -> Option<tokio::runtime::Handle> {
    core.upgrade().map(|core| core.runtime.clone())
}

/// The timer's task: sleeps until the earliest delayed task is due, then
/// hands every due one to its queue.
async fn serve_timer(core: Weak<Core>) {
    loop {
        let Some(strong) = core.upgrade() else {
            return;
        };
        let timer = &strong.scheduler.timer;
        let wake = timer.wake.clone();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (due, next) = {
            let mut state = timer.state();
            if state.stopped {
                return;
            }
            let now = SystemTime::now();
            let mut due = Vec::new();
            while let Some(Reverse(first)) = state.heap.peek() {
                if first.at > now {
                    break;
                }
                if let Some(Reverse(delayed)) = state.heap.pop() {
                    due.push(delayed.cell);
                }
            }
            let next = state
                .heap
                .peek()
                .map(|Reverse(first)| first.at.duration_since(now).unwrap_or_default());
            (due, next)
        };
        for cell in due {
            if !cell.status().is_finished() {
                strong.scheduler.submit_ready(&strong, cell);
            }
        }
        drop(strong);
        match next {
            // A wall-clock wait: a clock set back makes it longer, which is
            // how `run_at` (a wall-clock time) is meant.
            Some(wait) => {
                let _ = tokio::time::timeout(wait.max(Duration::from_micros(100)), notified).await;
            }
            None => notified.await,
        }
    }
}
