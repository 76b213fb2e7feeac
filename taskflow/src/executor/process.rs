//! The process executor: tasks run in worker processes that are this very
//! executable started again in worker mode.
//!
//! The pool is `max_process_workers` *slots*. Each slot is a thread of this
//! process that owns one worker at a time: it starts the worker, takes the
//! next task from one first-in, first-out queue, writes the request, waits
//! for the replies (relaying log records as they come), and records the
//! result. A round trip is then a pipe write and a `poll` and read on each
//! side, close to the raw pipe echo it is measured against, and at most
//! `max_process_workers` process tasks are RUNNING. A slot forks its own
//! workers, and Linux delivers the parent-death signal when the *thread* that
//! forked a child exits; a slot lives as long as the pool.
//!
//! Failure is contained to the attempt that met it:
//! - the task's `Err` or panic comes back as a failure and the worker lives on;
//! - a worker that dies (killed, aborted, out of memory) fails only the
//!   attempt it was running, with its exit status; the slot starts a
//!   replacement at once;
//! - a worker that sends a malformed frame (one the protocol cannot decode,
//!   one over the size limit, or a message that makes no sense mid-task: a
//!   greeting, the end of another task) fails its attempt with an
//!   [`ErrorKind::Protocol`] failure, "worker sent a malformed frame…", and
//!   is killed and replaced: nothing more it says can be trusted. (A frame
//!   is only known once it is whole: garbage whose first eight bytes read as
//!   a frame length and a header length that both fit leaves the slot
//!   waiting for the rest, until the worker exits or the task's timeout
//!   kills it);
//! - an attempt past its `timeout`, or cancelled, or interrupted by shutdown,
//!   gets its worker killed (a timer or the canceller kills it; the slot sees
//!   it exit).
//!
//! **Kills are complete.** A worker leads a process group of its own, and
//! every kill signals the whole group, so what its tasks started dies with
//! it. Every reap, including a worker's normal exit (a stop at
//! `max_tasks_per_worker` or at shutdown), is preceded by a group kill: no
//! process a task left in its worker's group outlives the worker. (A task
//! that wants a process to outlive it must take it out of the group, with
//! `setsid` or its own process group; the pool then neither kills nor waits
//! for it.)
//!
//! **An attempt ends when its worker exits**, not when its reply pipe reaches
//! its end: a process the task started holds that pipe too, and may outlive
//! the worker. The slot waits with `poll` on both the reply pipe and the
//! worker's pidfd (Linux; elsewhere it asks `waitid` on a coarse tick); once
//! the worker has exited, it reads what is already in the pipe without
//! waiting (log records sent before a crash still reach the task's record)
//! and then treats the channel as closed. Requests are written the same way:
//! a write that would block waits for the pipe or the worker's exit.
//!
//! **Idle workers are watched.** A slot with nothing to run blocks on its
//! channels (a crossbeam `select!`, which is what keeps the hand-off of a
//! task cheap), so it cannot `poll` its worker. One watcher thread per pool
//! does: it polls every worker's pidfd, plus a wake pipe that tells it a
//! worker started or the pool closed, and reports each exit once to the
//! worker's slot as a [`Control::Exited`] message. A slot whose idle worker
//! exited reaps it at once, logs a warning with its pid and exit status, and
//! starts a replacement; a report about a worker that died mid-task is stale
//! by then (the attempt saw the exit itself) and ignored. One thread for all
//! workers rather than one per slot: it costs nothing while no worker exits,
//! and the slots' fast path stays untouched. Without pidfds the watcher asks
//! `waitid` for each worker on the same coarse tick.
//!
//! Every child ever started stays in one table until its slot reaps it, and
//! a killer only signals a child still in the table, so a pid (or a process
//! group, whose number is its leader's pid) is never signalled after it may
//! have been reused: a group is killed while its leader is unreaped, then
//! the leader is reaped. Shutdown kills every child's group and waits for
//! every slot to exit: afterwards no process this pool started exists,
//! except what a task deliberately moved out of its worker's group. If this
//! process dies without shutting down, the kernel kills its workers (the
//! parent-death signal) but not their groups: a task's own children then
//! live on, as they would after any `kill -9` of their parent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use taskflow_worker::codec::CODEC_VERSION;
use taskflow_worker::protocol::{self, FromWorker, PROTOCOL_VERSION, ProtocolError, ToWorker};
use taskflow_worker::registry::{self, RegisteredTask, Registry};
use taskflow_worker::sys::{Interest, PollSet};
use taskflow_worker::{ErrorKind, TaskError, sys, worker};
use tokio::sync::{Notify, oneshot};

use crate::core::Core;
use crate::record::{Abort, KillWorker, Produced, SharedCell, WorkerAbort};

/// How often a worker's exit is checked where the kernel offers no pidfd
/// to wait on.
const FALLBACK_TICK: Duration = Duration::from_millis(100);

/// The most a slot reads from a worker's reply pipe after the worker has
/// exited. What the worker itself wrote is at most what the pipe holds (64
/// KiB by default, 1 MiB at most without privilege); the bound keeps a
/// process it left behind from keeping the slot busy by writing on.
const DRAIN_LIMIT: usize = 1 << 20;

/// How the pool starts and treats its workers.
#[derive(Clone, Debug)]
pub(crate) struct ProcessConfig {
    pub(crate) workers: usize,
    pub(crate) max_tasks_per_worker: Option<u32>,
    pub(crate) nice: Option<i32>,
    pub(crate) program: Option<PathBuf>,
    pub(crate) log_level: Option<String>,
    pub(crate) handshake_timeout: Duration,
}

pub(crate) struct ProcessExecutor {
    config: ProcessConfig,
    /// Tasks waiting for a slot, oldest first.
    queue: (Sender<SharedCell>, Receiver<SharedCell>),
    /// Each started slot's control channel; empty until the first task.
    slots: Mutex<Vec<Sender<Control>>>,
    shared: Arc<Shared>,
}

/// Messages to one slot, which it reads before taking another task.
enum Control {
    /// Start your worker now (`prewarm`).
    Warm(oneshot::Sender<Result<(), TaskError>>),
    /// Exit once the current task, if any, is done.
    Stop,
    /// The watcher saw the worker with this serial number exit.
    Exited(u64),
}

/// What slots, killers and the watcher share.
struct Shared {
    state: Mutex<SharedState>,
    /// Signalled when a slot exits.
    exited: Notify,
}

#[derive(Default)]
struct SharedState {
    /// Every started child not yet reaped, by pid.
    children: HashMap<u32, Tracked>,
    /// Slot threads alive.
    slots: usize,
    /// Set at shutdown: no more workers start.
    closed: bool,
    /// The next worker's serial number: a report about a worker is never
    /// taken for its successor, which may get the same pid.
    next_serial: u64,
    /// Wakes the watcher (non-blocking); `None` until it runs.
    wake: Option<PipeWriter>,
}

/// A started child, until its slot reaps it.
struct Tracked {
    child: Child,
    serial: u64,
    exit: Arc<Exit>,
    /// The control channel of the slot that owns it.
    slot: Sender<Control>,
    /// Whether the watcher has reported its exit.
    reported: bool,
}

impl Tracked {
    /// Kills the child's process group, and the child itself in case it
    /// left the group. Only called while the child is in the table, so
    /// unreaped: neither number can have been reused.
    fn kill(&mut self) {
        let _ = sys::kill_group(self.child.id());
        let _ = self.child.kill();
    }
}

impl SharedState {
    fn wake_watcher(&self) {
        if let Some(mut wake) = self.wake.as_ref() {
            // Full means a wake-up is pending already.
            let _ = wake.write(&[1]);
        }
    }
}

impl ProcessExecutor {
    pub(crate) fn new(config: ProcessConfig) -> Self {
        ProcessExecutor {
            config,
            queue: crossbeam_channel::unbounded(),
            slots: Mutex::new(Vec::new()),
            shared: Arc::new(Shared {
                state: Mutex::new(SharedState::default()),
                exited: Notify::new(),
            }),
        }
    }

    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        // Only fails if the receiver is gone, and this struct owns it.
        let _ = self.queue.0.send(cell);
        self.start_slots(core);
    }

    /// Starts the watcher and the slot threads, once; a thread the OS
    /// refuses is logged and the pool runs with the others.
    fn start_slots(&self, core: &Arc<Core>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !slots.is_empty() || self.shared.state().closed {
            return;
        }
        self.start_watcher();
        for index in 1..=self.config.workers {
            let (control, inbox) = crossbeam_channel::unbounded();
            let slot = Slot {
                core: core.clone(),
                config: self.config.clone(),
                shared: self.shared.clone(),
                queue: self.queue.1.clone(),
                control: inbox,
                reports: control.clone(),
                worker: None,
                frame: Vec::new(),
            };
            self.shared.state().slots += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("taskflow-proc-{index}"))
                .spawn(move || slot.serve());
            match spawned {
                Ok(_) => slots.push(control),
                Err(error) => {
                    self.shared.slot_exited();
                    tracing::error!("cannot start process slot thread {index}: {error}");
                }
            }
        }
    }

    /// Starts the thread that watches workers for exits. Without it the pool
    /// still works; a worker that dies while idle is then noticed when the
    /// next task is written to it.
    fn start_watcher(&self) {
        let started = io::pipe().and_then(|(wakes, wake)| {
            sys::set_nonblocking(wake.as_fd())?;
            let shared = Arc::downgrade(&self.shared);
            std::thread::Builder::new()
                .name("taskflow-proc-watch".into())
                .spawn(move || watch(&shared, &wakes))?;
            Ok(wake)
        });
        match started {
            Ok(wake) => self.shared.state().wake = Some(wake),
            Err(error) => tracing::error!(
                "cannot start the thread that watches idle worker processes: {error}"
            ),
        }
    }

    /// Starts every worker now rather than on the first task.
    pub(crate) async fn prewarm(&self, core: &Arc<Core>) -> Result<(), TaskError> {
        self.start_slots(core);
        let answers: Vec<_> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .iter()
                .map(|slot| {
                    let (reply, answer) = oneshot::channel();
                    let _ = slot.send(Control::Warm(reply));
                    answer
                })
                .collect()
        };
        let mut result = Ok(());
        for answer in answers {
            let warmed = answer.await.unwrap_or_else(|_| {
                Err(TaskError::new(
                    ErrorKind::Interrupted,
                    "the pool is shutting down",
                ))
            });
            result = result.and(warmed);
        }
        result
    }

    /// Lets every slot exit once its current task, if any, is done.
    pub(crate) fn close(&self) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.iter() {
            let _ = slot.send(Control::Stop);
        }
    }

    /// Kills every worker (and its group) and waits until every slot has
    /// reaped its worker and exited.
    pub(crate) async fn kill_all(&self) {
        self.close();
        {
            let mut state = self.shared.state();
            state.closed = true;
            for child in state.children.values_mut() {
                child.kill();
            }
            // The watcher exits: slots reap what was killed.
            state.wake_watcher();
        }
        // Bounded: a killed worker exits at once, and its slot, waiting on
        // its exit, sees the end of its task and exits.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let exited = self.shared.exited.notified();
            tokio::pin!(exited);
            exited.as_mut().enable();
            if self.shared.state().slots == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, exited).await.is_err() {
                tracing::error!("process slots did not exit within 30 s of shutdown");
                return;
            }
        }
    }

    /// The pids of live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.shared.state().children.keys().copied().collect();
        pids.sort_unstable();
        pids
    }
}

impl KillWorker for Shared {
    /// Kills a worker and its group, if it has not been reaped yet.
    fn kill(&self, pid: u32) {
        if let Some(child) = self.state().children.get_mut(&pid) {
            child.kill();
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `grace` for a worker to exit, then kills its group (and
    /// it, if it is still running), and reaps it. Only the worker's slot
    /// calls this, so nobody reaps the pid behind its back.
    fn reap(&self, pid: u32, grace: Duration) -> Option<ExitStatus> {
        let exit = self.state().children.get(&pid)?.exit.clone();
        if !grace.is_zero() {
            exit.wait(grace);
        }
        let mut child = {
            let mut state = self.state();
            let mut child = state.children.remove(&pid)?;
            // The leader is unreaped, so its group's number is still its
            // own: whatever its tasks left in the group dies now.
            child.kill();
            child
        };
        child.child.wait().ok()
    }

    fn slot_exited(&self) {
        self.state().slots -= 1;
        self.exited.notify_waiters();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Only reached if slots never reaped (they hold no reference then):
        // leave no child behind.
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, mut child) in state.children.drain() {
            child.kill();
            let _ = child.child.wait();
        }
    }
}

/// The watcher thread: reports each worker's exit, once, to its slot.
///
/// It holds no strong reference to the pool while it waits: it ends when
/// the pool closes or is dropped (the wake pipe then reaches its end).
fn watch(shared: &Weak<Shared>, wakes: &PipeReader) {
    let mut poll = PollSet::new();
    // Each unreported worker: pid, serial, exit, and its entry in `poll`
    // (`None`: no pidfd, asked on a tick instead).
    let mut watched: Vec<(u32, u64, Arc<Exit>, Option<usize>)> = Vec::new();
    loop {
        {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let state = shared.state();
            if state.closed {
                return;
            }
            watched.clear();
            watched.extend(
                state
                    .children
                    .iter()
                    .filter(|(_, child)| !child.reported)
                    .map(|(&pid, child)| (pid, child.serial, child.exit.clone(), None)),
            );
        }
        poll.clear();
        let woken = poll.add(wakes.as_fd(), Interest::Read);
        let mut tick = None;
        for (_, _, exit, entry) in &mut watched {
            match &exit.fd {
                Some(fd) => *entry = Some(poll.add(fd.as_fd(), Interest::Read)),
                None => tick = Some(FALLBACK_TICK),
            }
        }
        if let Err(error) = poll.wait(tick) {
            tracing::error!("the worker watcher cannot poll: {error}");
            std::thread::sleep(FALLBACK_TICK);
            continue;
        }
        if poll.is_ready(woken) {
            let mut drained = [0; 64];
            let mut wakes = wakes;
            // Ready, so this does not block; the end means the pool is gone.
            if matches!(wakes.read(&mut drained), Ok(0)) {
                return;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.state();
        for &(pid, serial, _, entry) in &watched {
            let Some(child) = state
                .children
                .get_mut(&pid)
                .filter(|child| child.serial == serial && !child.reported)
            else {
                continue;
            };
            let exited = match entry {
                Some(entry) => poll.is_ready(entry),
                // Still in the table under the lock, so unreaped: waitid
                // asks about this worker and no other.
                None => sys::has_exited(pid).unwrap_or(false),
            };
            if exited {
                child.reported = true;
                let _ = child.slot.send(Control::Exited(serial));
            }
        }
    }
}

/// How a worker's exit is noticed without reaping it.
struct Exit {
    pid: u32,
    /// Readable once the worker has exited (a Linux pidfd); without one,
    /// `sys::has_exited` is asked every [`FALLBACK_TICK`].
    fd: Option<OwnedFd>,
}

impl Exit {
    /// Called while `pid` is an unreaped child, so the pidfd is its.
    fn open(pid: u32) -> Exit {
        let fd = match sys::exit_descriptor(pid) {
            Ok(fd) => Some(fd),
            Err(error) => {
                tracing::debug!(pid, "no pidfd for a worker; its exit is polled: {error}");
                None
            }
        };
        Exit { pid, fd }
    }

    /// Waits up to `limit` for the worker to exit; whether it has. Only the
    /// worker's slot calls this: it alone reaps the worker, so the pid is
    /// still its worker's.
    fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut poll = PollSet::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let exited = match &self.fd {
                Some(fd) => {
                    poll.clear();
                    let entry = poll.add(fd.as_fd(), Interest::Read);
                    match poll.wait(Some(left)) {
                        Ok(_) => poll.is_ready(entry),
                        Err(_) => sys::has_exited(self.pid).unwrap_or(true),
                    }
                }
                // An error (no such child) means there is nothing to wait for.
                None => sys::has_exited(self.pid).unwrap_or(true),
            };
            if exited {
                return true;
            }
            if left.is_zero() {
                return false;
            }
            if self.fd.is_none() {
                std::thread::sleep(left.min(Duration::from_millis(5)));
            }
        }
    }
}

/// The parent's end of a worker's reply pipe: reads block until data
/// arrives or the worker exits, never until the pipe's end of file, which a
/// process the task started may postpone indefinitely.
struct Replies {
    pipe: PipeReader,
    exit: Arc<Exit>,
    poll: PollSet,
    /// Once the worker has exited: how much more may be read.
    drain: Option<usize>,
}

impl Replies {
    fn new(pipe: PipeReader, exit: Arc<Exit>) -> Self {
        Replies {
            pipe,
            exit,
            poll: PollSet::new(),
            drain: None,
        }
    }
}

impl Read for Replies {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.poll.clear();
            let pipe = self.poll.add(self.pipe.as_fd(), Interest::Read);
            if let Some(left) = self.drain {
                // The worker is gone: what it wrote is in the pipe already,
                // so take it without waiting, then report the end.
                let take = buf.len().min(left);
                if take == 0 || self.poll.wait(Some(Duration::ZERO))? == 0 {
                    return Ok(0);
                }
                let read = self.pipe.read(&mut buf[..take])?;
                self.drain = Some(left - read);
                return Ok(read);
            }
            let exit = self
                .exit
                .fd
                .as_ref()
                .map(|fd| self.poll.add(fd.as_fd(), Interest::Read));
            let tick = if exit.is_some() {
                None
            } else {
                Some(FALLBACK_TICK)
            };
            self.poll.wait(tick)?;
            // Data first: records sent just before an exit still count.
            if self.poll.is_ready(pipe) {
                return self.pipe.read(buf);
            }
            let exited = match exit {
                Some(exit) => self.poll.is_ready(exit),
                None => sys::has_exited(self.exit.pid).unwrap_or(true),
            };
            if exited {
                self.drain = Some(DRAIN_LIMIT);
            }
        }
    }
}

/// The parent's end of a worker's request pipe, non-blocking: a write that
/// would block waits for room or for the worker's exit, which fails it.
struct Requests {
    pipe: PipeWriter,
    exit: Arc<Exit>,
    poll: PollSet,
}

impl Write for Requests {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.pipe.write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            self.poll.clear();
            let pipe = self.poll.add(self.pipe.as_fd(), Interest::Write);
            let exit = self
                .exit
                .fd
                .as_ref()
                .map(|fd| self.poll.add(fd.as_fd(), Interest::Read));
            let tick = if exit.is_some() {
                None
            } else {
                Some(FALLBACK_TICK)
            };
            self.poll.wait(tick)?;
            if self.poll.is_ready(pipe) {
                continue;
            }
            let exited = match exit {
                Some(exit) => self.poll.is_ready(exit),
                None => sys::has_exited(self.exit.pid).unwrap_or(true),
            };
            if exited {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the worker process exited",
                ));
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A started, greeted worker, owned by its slot.
struct Worker {
    serial: u64,
    pid: u32,
    requests: Requests,
    /// Buffered, so a frame usually arrives in one read.
    replies: BufReader<Replies>,
    served: u32,
}

/// How an attempt's exchange with its worker ended without a `Done`.
enum Broken {
    /// The channel ended or failed: the worker is gone, or going.
    Lost(ProtocolError),
    /// The worker sent a malformed frame; what it is.
    Malformed(String),
}

impl From<ProtocolError> for Broken {
    fn from(error: ProtocolError) -> Self {
        match error {
            ProtocolError::Malformed(source) => Broken::Malformed(crate::error::chain(&source)),
            too_large @ ProtocolError::FrameTooLarge { .. } => {
                Broken::Malformed(crate::error::chain(&too_large))
            }
            other => Broken::Lost(other),
        }
    }
}

/// One slot: a thread that owns one worker at a time.
struct Slot {
    core: Arc<Core>,
    config: ProcessConfig,
    shared: Arc<Shared>,
    queue: Receiver<SharedCell>,
    control: Receiver<Control>,
    /// The sending side of `control`, which the watcher reports this slot's
    /// workers' exits to.
    reports: Sender<Control>,
    worker: Option<Worker>,
    /// Reused for every request frame.
    frame: Vec<u8>,
}

impl Slot {
    fn serve(mut self) {
        // Retries are scheduled, and timeouts armed, on the runtime.
        let runtime = self.core.runtime.clone();
        let _runtime = runtime.enter();
        loop {
            // Control first: a stop or a warm-up never waits behind tasks.
            let control = match self.control.try_recv().ok() {
                Some(control) => control,
                None => {
                    if let Some(cell) = self.next_soon() {
                        self.run(cell);
                        continue;
                    }
                    crossbeam_channel::select! {
                    recv(self.control) -> control => match control {
                        Ok(control) => control,
                        Err(_) => Control::Stop,
                    },
                    recv(self.queue) -> cell => match cell {
                        Ok(cell) => {
                            self.run(cell);
                            continue;
                        }
                        Err(_) => Control::Stop,
                    },
                    }
                }
            };
            match control {
                Control::Warm(reply) => {
                    let _ = reply.send(self.ensure_worker().map(drop));
                }
                Control::Exited(serial) => self.exited(serial),
                Control::Stop => break,
            }
        }
        if let Some(worker) = self.worker.take() {
            self.retire(worker);
        }
        self.shared.slot_exited();
    }

    /// The next task if one arrives within a few tens of microseconds.
    ///
    /// A task that follows another closely (a caller awaiting one result
    /// before enqueueing the next) is picked up without the slot going to
    /// sleep and being woken, which would cost more than the wait.
    fn next_soon(&self) -> Option<SharedCell> {
        const SPIN: Duration = Duration::from_micros(50);
        let deadline = Instant::now() + SPIN;
        loop {
            if let Ok(cell) = self.queue.try_recv() {
                return Some(cell);
            }
            if !self.control.is_empty() || Instant::now() >= deadline {
                return None;
            }
            std::hint::spin_loop();
        }
    }

    /// The watcher saw worker `serial` exit. If it is still this slot's
    /// worker, it died idle: reap it and start a replacement. Otherwise the
    /// report is stale: the attempt it was running saw the exit itself, and
    /// the slot has replaced it already.
    fn exited(&mut self, serial: u64) {
        let Some(worker) = self.worker.take_if(|worker| worker.serial == serial) else {
            return;
        };
        self.lost_idle(worker);
        match self.ensure_worker() {
            Ok(_) => {}
            Err(error) if error.is_interrupted() => {}
            Err(error) => tracing::warn!("cannot replace a lost worker process: {error}"),
        }
    }

    /// Reaps a worker that died while it had no task, and says so.
    fn lost_idle(&self, worker: Worker) {
        let pid = worker.pid;
        drop(worker);
        let status = self.shared.reap(pid, Duration::ZERO);
        tracing::warn!(
            pid,
            status = %describe(status),
            "a worker process exited while idle; starting a replacement"
        );
    }

    /// Runs one attempt of `cell` and records its result.
    fn run(&mut self, cell: SharedCell) {
        let core = self.core.clone();
        let Some(attempt) = core.start(&cell) else {
            return;
        };
        let result = self.attempt(&cell, attempt);
        // The attempt is over: a later cancel must not kill this worker.
        cell.clear_abort();
        core.finish(&cell, result);
    }

    fn attempt(&mut self, cell: &SharedCell, attempt: u32) -> Result<Produced, TaskError> {
        let request = ToWorker::Run {
            id: cell.id,
            name: Cow::Borrowed(cell.entry.name()),
            attempt,
            tags: cell.tags.clone(),
        };
        let mut frame = std::mem::take(&mut self.frame);
        let delivered = protocol::encode_frame_into(&request, &cell.args, &mut frame)
            .map_err(|e| TaskError::error(format!("cannot send the task to a worker: {e}")))
            .and_then(|()| self.deliver(&frame));
        self.frame = frame;
        let pid = delivered?;
        cell.set_abort(Abort::Worker(Box::new(WorkerAbort {
            pool: self.shared.clone(),
            pid,
        })));
        // Only a task with a timeout pays for a timer and its flag.
        let timer = cell.entry.defaults().timeout.map(|limit| {
            let fired = Arc::new(AtomicBool::new(false));
            let (shared, flag) = (self.shared.clone(), fired.clone());
            let kill = self.core.runtime.spawn(async move {
                tokio::time::sleep(limit).await;
                flag.store(true, Ordering::SeqCst);
                shared.kill(pid);
            });
            (kill, fired)
        });
        let outcome = self.exchange(cell);
        if let Some((kill, _)) = &timer {
            kill.abort();
        }
        let broken = match outcome {
            Ok((failure, payload)) => {
                self.served();
                return match failure {
                    None => Ok(Produced::Encoded(payload)),
                    Some(failure) => Err(failure),
                };
            }
            Err(broken) => broken,
        };
        self.worker = None;
        let timed_out = timer
            .as_ref()
            .is_some_and(|(_, fired)| fired.load(Ordering::SeqCst));
        let failure = match broken {
            // The timer killed it; whatever the channel showed after that
            // is a consequence.
            _ if timed_out => {
                self.shared.reap(pid, Duration::from_secs(2));
                let limit = cell.entry.defaults().timeout.unwrap_or_default();
                TaskError::new(
                    ErrorKind::Timeout,
                    format!(
                        "attempt exceeded the timeout of {limit:?}; its worker process (pid {pid}) was killed"
                    ),
                )
            }
            Broken::Malformed(what) => {
                // Nothing more it says can be trusted: no grace.
                self.shared.reap(pid, Duration::ZERO);
                TaskError::new(
                    ErrorKind::Protocol,
                    format!(
                        "worker sent a malformed frame: {what}; its worker process (pid {pid}) was killed"
                    ),
                )
            }
            Broken::Lost(error) => {
                let status = self.shared.reap(pid, Duration::from_secs(2));
                TaskError::new(
                    ErrorKind::WorkerDied,
                    format!(
                        "worker process died while running the task (pid {pid}, {}; {error})",
                        describe(status)
                    ),
                )
            }
        };
        // Replace the lost worker now, so the next task does not wait.
        if let Err(error) = self.ensure_worker() {
            tracing::warn!("cannot replace a lost worker process: {error}");
        }
        Err(failure)
    }

    /// Reads the running task's replies until its end.
    fn exchange(&mut self, cell: &SharedCell) -> Result<(Option<TaskError>, Vec<u8>), Broken> {
        let worker = self
            .worker
            .as_mut()
            .ok_or(Broken::Lost(ProtocolError::Closed))?;
        loop {
            let (message, payload) = protocol::read_frame::<FromWorker>(&mut worker.replies)?;
            match message {
                FromWorker::Log { id, record } if id == cell.id => self.core.log(cell, record),
                FromWorker::Done { id, failure } if id == cell.id => return Ok((failure, payload)),
                // A stray record from an earlier task (a thread it left
                // running may still log): nothing to do with this one.
                FromWorker::Log { .. } => {}
                FromWorker::Hello { .. } => {
                    return Err(Broken::Malformed(
                        "a greeting in the middle of a task".to_owned(),
                    ));
                }
                FromWorker::Done { id, .. } => {
                    return Err(Broken::Malformed(format!(
                        "the end of task {id} while task {} was running",
                        cell.id
                    )));
                }
            }
        }
    }

    /// Writes `frame` to this slot's worker, starting one if need be. A
    /// worker that died while idle cannot take it: it is reaped and replaced
    /// once, without blaming the task.
    fn deliver(&mut self, frame: &[u8]) -> Result<u32, TaskError> {
        let mut tries = 2;
        loop {
            let worker = self.ensure_worker()?;
            let pid = worker.pid;
            let Err(error) = worker.requests.write_all(frame) else {
                return Ok(pid);
            };
            if let Some(worker) = self.worker.take() {
                self.lost_idle(worker);
            }
            tries -= 1;
            if tries == 0 {
                return Err(TaskError::error(format!(
                    "cannot reach a worker process: {error}"
                )));
            }
        }
    }

    /// Counts a served task; retires the worker at `max_tasks_per_worker`.
    fn served(&mut self) {
        let worn = match &mut self.worker {
            Some(worker) => {
                worker.served += 1;
                self.config
                    .max_tasks_per_worker
                    .is_some_and(|max| worker.served >= max)
            }
            None => false,
        };
        if worn && let Some(worker) = self.worker.take() {
            self.retire(worker);
        }
    }

    /// Asks a worker to stop, killing it if it does not within a second;
    /// either way its group is killed before it is reaped.
    fn retire(&self, mut worker: Worker) {
        let asked = protocol::write_frame(&mut worker.requests, &ToWorker::Stop, &[]);
        let grace = if asked.is_ok() {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let pid = worker.pid;
        // Closing its pipes tells a worker that missed the stop, too.
        drop(worker);
        self.shared.reap(pid, grace);
    }

    /// This slot's worker, started and greeted if there is none.
    fn ensure_worker(&mut self) -> Result<&mut Worker, TaskError> {
        if self.worker.is_none() {
            self.worker = Some(self.start()?);
        }
        self.worker
            .as_mut()
            .ok_or_else(|| TaskError::error("no worker process"))
    }

    /// Starts a worker and checks its greeting.
    fn start(&self) -> Result<Worker, TaskError> {
        let failed =
            |message: String| TaskError::error(format!("cannot start a worker process: {message}"));
        let (child, requests, replies) =
            spawn_worker(&self.config).map_err(|e| failed(e.to_string()))?;
        let pid = child.id();
        let exit = Arc::new(Exit::open(pid));
        let serial = {
            let mut state = self.shared.state();
            let serial = state.next_serial;
            state.next_serial += 1;
            state.children.insert(
                pid,
                Tracked {
                    child,
                    serial,
                    exit: exit.clone(),
                    slot: self.reports.clone(),
                    reported: false,
                },
            );
            if state.closed {
                drop(state);
                self.shared.reap(pid, Duration::ZERO);
                return Err(TaskError::new(
                    ErrorKind::Interrupted,
                    "the manager is shutting down",
                ));
            }
            state.wake_watcher();
            serial
        };
        let mut worker = Worker {
            serial,
            pid,
            requests: Requests {
                pipe: requests,
                exit: exit.clone(),
                poll: PollSet::new(),
            },
            replies: BufReader::with_capacity(64 * 1024, Replies::new(replies, exit)),
            served: 0,
        };
        // A worker that never greets is killed at the deadline, which ends
        // the read below.
        let expired = Arc::new(AtomicBool::new(false));
        let timer = {
            let (shared, expired, limit) = (
                self.shared.clone(),
                expired.clone(),
                self.config.handshake_timeout,
            );
            self.core.runtime.spawn(async move {
                tokio::time::sleep(limit).await;
                expired.store(true, Ordering::SeqCst);
                shared.kill(pid);
            })
        };
        let answer = handshake(&mut worker);
        timer.abort();
        match answer {
            Ok(()) => Ok(worker),
            Err(message) => {
                let status = self.shared.reap(pid, Duration::from_millis(100));
                Err(if expired.load(Ordering::SeqCst) {
                    TaskError::error(format!(
                        "worker process (pid {pid}) did not greet within {:?}; does `main` call `taskflow::init()` or use `#[taskflow::main]` first thing?",
                        self.config.handshake_timeout
                    ))
                } else {
                    TaskError::error(format!(
                        "worker process handshake failed (pid {pid}, {}): {message}",
                        describe(status)
                    ))
                })
            }
        }
    }
}

fn handshake(worker: &mut Worker) -> Result<(), String> {
    let (hello, _) = protocol::read_frame::<FromWorker>(&mut worker.replies).map_err(|error| match error {
        ProtocolError::Closed => "it exited before greeting; does `main` call `taskflow::init()` or use `#[taskflow::main]` first thing?".to_owned(),
        ProtocolError::Malformed(_) => format!("its greeting is unreadable ({error}); is the worker program built with another version of taskflow?"),
        other => other.to_string(),
    })?;
    let FromWorker::Hello {
        protocol,
        codec,
        fingerprint,
        tasks,
        ..
    } = hello
    else {
        return Err("it spoke before greeting".to_owned());
    };
    let ours = Registry::global().map_err(|error| error.to_string())?;
    let refused = check_hello(protocol, codec, fingerprint, &tasks, ours);
    if refused.is_err() {
        // It speaks our protocol: let it exit by itself rather than be
        // killed, so its exit status does not read as a crash.
        let _ = protocol::write_frame(&mut worker.requests, &ToWorker::Stop, &[]);
    }
    refused
}

/// Whether a worker's greeting matches this process: the same protocol, the
/// same codec, and (by fingerprint, then task by task to name the first that
/// differs) the same tasks.
fn check_hello(
    protocol: u32,
    codec: u32,
    fingerprint: u64,
    tasks: &[RegisteredTask],
    ours: &Registry,
) -> Result<(), String> {
    if protocol != PROTOCOL_VERSION {
        return Err(format!(
            "it speaks protocol version {protocol}, this process version {PROTOCOL_VERSION}"
        ));
    }
    if codec != CODEC_VERSION {
        return Err(format!(
            "it encodes values with codec version {codec}, this process with version {CODEC_VERSION}"
        ));
    }
    if fingerprint == ours.fingerprint() {
        return Ok(());
    }
    let hint = "was the executable replaced, or a different worker program configured?";
    Err(match registry::first_difference(ours.tasks(), tasks) {
        Some(difference) => format!("it registered different tasks: {difference}; {hint}"),
        None => format!(
            "its task fingerprint {fingerprint:016x} differs from this process's {:016x} though it lists the same tasks; {hint}",
            ours.fingerprint()
        ),
    })
}

/// A started child, the write end of its requests and the read end of its replies.
type Spawned = io::Result<(Child, PipeWriter, PipeReader)>;

fn spawn_worker(config: &ProcessConfig) -> Spawned {
    // Both ends are close-on-exec; `prepare_worker` places the child's two.
    let (their_requests, our_requests) = std::io::pipe()?;
    let (our_replies, their_replies) = std::io::pipe()?;
    let program = match &config.program {
        Some(program) => program.clone(),
        // The running binary itself, even if the file was replaced since.
        None if cfg!(target_os = "linux") => PathBuf::from("/proc/self/exe"),
        None => std::env::current_exe()?,
    };
    let mut command = std::process::Command::new(program);
    if config.program.is_none()
        && let Some(arg0) = std::env::args_os().next()
    {
        command.arg0(arg0);
    }
    command.stdin(Stdio::null());
    if let Some(level) = &config.log_level {
        command.env(worker::LOG_LEVEL_ENV, level);
    }
    sys::prepare_worker(&mut command, &their_requests, &their_replies, config.nice);
    // Writes wait on the worker's exit too (see `Requests`).
    sys::set_nonblocking(our_requests.as_fd())?;
    let child = command.spawn()?;
    // Only the child may hold these, so its exit closes the pipes.
    drop((their_requests, their_replies));
    Ok((child, our_requests, our_replies))
}

/// "exited with status 3", "killed by signal 9 (SIGKILL)".
fn describe(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "exit status unknown".to_owned();
    };
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {signal}{name}{core}")
        }
        None => format!("{status}"),
    }
}

impl fmt::Debug for ProcessExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessExecutor")
            .field("config", &self.config)
            .field("workers", &self.pids())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_from_another_build_is_refused_with_the_reason() {
        let ours = Registry::global().unwrap();
        let (fingerprint, tasks) = (ours.fingerprint(), ours.tasks());
        let check = |protocol, codec, fingerprint, tasks: &[RegisteredTask]| {
            check_hello(protocol, codec, fingerprint, tasks, ours)
        };
        assert_eq!(
            check(PROTOCOL_VERSION, CODEC_VERSION, fingerprint, tasks),
            Ok(())
        );

        let version = check(PROTOCOL_VERSION + 1, CODEC_VERSION, fingerprint, tasks).unwrap_err();
        assert!(version.contains("protocol version"), "{version}");
        let codec = check(PROTOCOL_VERSION, CODEC_VERSION + 1, fingerprint, tasks).unwrap_err();
        assert!(codec.contains("codec version"), "{codec}");

        let mut more = tasks.to_vec();
        more.push(RegisteredTask {
            name: Cow::Borrowed("zz::only_in_the_worker"),
            executor: taskflow_worker::Executor::Process,
            arguments: Cow::Borrowed("()"),
            output: Cow::Borrowed("()"),
        });
        let extra = check(PROTOCOL_VERSION, CODEC_VERSION, fingerprint ^ 1, &more).unwrap_err();
        assert!(
            extra.contains(
                "registered different tasks: task `zz::only_in_the_worker` is registered in the worker but not here"
            ),
            "{extra}"
        );
        let same = check(PROTOCOL_VERSION, CODEC_VERSION, fingerprint ^ 1, tasks).unwrap_err();
        assert!(same.contains("though it lists the same tasks"), "{same}");
    }

    /// A child that exits with status 3 at once, and the exits to watch it
    /// by: its pidfd, and the `waitid` tick used where there is none.
    fn exiting_child() -> (Child, [Arc<Exit>; 2]) {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pid = child.id();
        (
            child,
            [Arc::new(Exit::open(pid)), Arc::new(Exit { pid, fd: None })],
        )
    }

    #[test]
    fn replies_end_at_the_exit_even_while_another_process_holds_the_pipe() {
        let (mut child, exits) = exiting_child();
        for exit in exits {
            let (pipe, mut held) = io::pipe().unwrap();
            held.write_all(b"sent before the exit").unwrap();
            // `held` stays open, as a process the task started keeps it.
            let mut replies = Replies::new(pipe, exit.clone());
            let mut got = Vec::new();
            replies.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"sent before the exit");
            assert!(exit.wait(Duration::ZERO));
            drop(held);
        }
        // Watching reaped nothing: the status is still there to collect.
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    #[test]
    fn requests_fail_at_the_exit_instead_of_blocking_on_a_full_pipe() {
        let (mut child, exits) = exiting_child();
        for exit in exits {
            let (held, pipe) = io::pipe().unwrap();
            sys::set_nonblocking(pipe.as_fd()).unwrap();
            // Nobody reads `held`: more than a pipe holds cannot be written.
            let mut requests = Requests {
                pipe,
                exit,
                poll: PollSet::new(),
            };
            let error = requests.write_all(&vec![0; 4 << 20]).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
            drop(held);
        }
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    #[test]
    fn a_group_kill_reaches_what_a_worker_started() {
        // A stand-in worker, leading its own group, with a child in it.
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & wait"])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = leader.id();
        let exit = Exit::open(pid);
        assert!(!exit.wait(Duration::from_millis(50)));
        sys::kill_group(pid).unwrap();
        assert!(exit.wait(Duration::from_secs(10)));
        assert_eq!(leader.wait().unwrap().signal(), Some(9));
        // The child went with it: it shared the leader's stdout, which
        // reaches its end only once every holder is gone.
        let mut stdout = leader.stdout.take().unwrap();
        let mut poll = PollSet::new();
        let entry = poll.add(stdout.as_fd(), Interest::Read);
        poll.wait(Some(Duration::from_secs(10))).unwrap();
        assert!(poll.is_ready(entry), "the child outlived its group's kill");
        assert_eq!(stdout.read(&mut [0; 16]).unwrap(), 0);
    }

    #[test]
    fn exit_statuses_read_as_words() {
        assert_eq!(
            describe(Some(ExitStatus::from_raw(3 << 8))),
            "exited with status 3"
        );
        assert_eq!(
            describe(Some(ExitStatus::from_raw(9))),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(describe(None), "exit status unknown");
    }
}
