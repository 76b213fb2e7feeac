//! The process executor: tasks run in worker processes that are this very
//! executable started again in worker mode.
//!
//! The pool is `max_process_workers` *slots*. Each slot is a thread of this
//! process that owns one worker at a time: it starts the worker, takes the
//! next task from one first-in, first-out queue, writes the request, blocks
//! reading the replies (relaying log records as they come), and records the
//! result. A round trip is then a pipe write and a blocking read on each
//! side, as cheap as the raw pipe echo it is measured against, and at most
//! `max_process_workers` process tasks are RUNNING. A slot forks its own
//! workers, and Linux delivers the parent-death signal when the *thread* that
//! forked a child exits; a slot lives as long as the pool.
//!
//! Failure is contained to the attempt that met it:
//! - the task's `Err` or panic comes back as a failure and the worker lives on;
//! - a worker that dies (killed, aborted, out of memory) fails only the
//!   attempt it was running, with its exit status; the slot starts a
//!   replacement at once;
//! - an attempt past its `timeout`, or cancelled, or interrupted by shutdown,
//!   gets its worker killed (a timer or the canceller kills it; the slot sees
//!   the channel close).
//!
//! Every child ever started stays in one table until its slot has reaped it,
//! and a killer only signals a child still in the table, so a pid is never
//! signalled after it may have been reused. Shutdown kills every child and
//! waits for every slot to exit: afterwards no process this pool started
//! exists.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, PipeReader, PipeWriter, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use taskflow_worker::codec::CODEC_VERSION;
use taskflow_worker::protocol::{self, FromWorker, PROTOCOL_VERSION, ProtocolError, ToWorker};
use taskflow_worker::registry::Registry;
use taskflow_worker::{ErrorKind, TaskError, sys, worker};
use tokio::sync::{Notify, oneshot};

use crate::core::Core;
use crate::record::{Abort, KillWorker, Produced, SharedCell};

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
}

/// What slots and killers share.
struct Shared {
    state: Mutex<SharedState>,
    /// Signalled when a slot exits.
    exited: Notify,
}

#[derive(Default)]
struct SharedState {
    /// Every started child not yet reaped, by pid.
    children: HashMap<u32, Child>,
    /// Slot threads alive.
    slots: usize,
    /// Set at shutdown: no more workers start.
    closed: bool,
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

    /// Starts the slot threads, once; a thread the OS refuses is logged and
    /// the pool runs with the others.
    fn start_slots(&self, core: &Arc<Core>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !slots.is_empty() || self.shared.state().closed {
            return;
        }
        for index in 1..=self.config.workers {
            let (control, inbox) = crossbeam_channel::unbounded();
            let slot = Slot {
                core: core.clone(),
                config: self.config.clone(),
                shared: self.shared.clone(),
                queue: self.queue.1.clone(),
                control: inbox,
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

    /// Kills every worker and waits until every slot has reaped its worker
    /// and exited.
    pub(crate) async fn kill_all(&self) {
        self.close();
        {
            let mut state = self.shared.state();
            state.closed = true;
            for child in state.children.values_mut() {
                let _ = child.kill();
            }
        }
        // Bounded: a killed worker's pipes close at once, so its slot sees
        // the end of its task and exits.
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
    /// Signals a worker to die, if it has not been reaped yet.
    fn kill(&self, pid: u32) {
        if let Some(child) = self.state().children.get_mut(&pid) {
            let _ = child.kill();
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `grace` for a worker to exit, then kills it, and reaps it.
    fn reap(&self, pid: u32, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.state().children.remove(&pid)?;
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
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
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A started, greeted worker, owned by its slot.
struct Worker {
    pid: u32,
    requests: PipeWriter,
    /// Buffered, so a frame usually arrives in one read.
    replies: BufReader<PipeReader>,
    served: u32,
}

/// One slot: a thread that owns one worker at a time.
struct Slot {
    core: Arc<Core>,
    config: ProcessConfig,
    shared: Arc<Shared>,
    queue: Receiver<SharedCell>,
    control: Receiver<Control>,
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
        cell.set_abort(Abort::Worker(self.shared.clone(), pid));
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
        match outcome {
            Ok((failure, payload)) => {
                self.served();
                match failure {
                    None => Ok(Produced::Encoded(payload)),
                    Some(failure) => Err(failure),
                }
            }
            Err(error) => {
                self.worker = None;
                let status = self.shared.reap(pid, Duration::from_secs(2));
                let timed_out = timer
                    .as_ref()
                    .is_some_and(|(_, fired)| fired.load(Ordering::SeqCst));
                let failure = if timed_out {
                    let limit = cell.entry.defaults().timeout.unwrap_or_default();
                    TaskError::new(
                        ErrorKind::Timeout,
                        format!(
                            "attempt exceeded the timeout of {limit:?}; its worker process (pid {pid}) was killed"
                        ),
                    )
                } else {
                    TaskError::new(
                        ErrorKind::WorkerDied,
                        format!(
                            "worker process died while running the task (pid {pid}, {}; {error})",
                            describe(status)
                        ),
                    )
                };
                // Replace the lost worker now, so the next task does not wait.
                if let Err(error) = self.ensure_worker() {
                    tracing::warn!("cannot replace a lost worker process: {error}");
                }
                Err(failure)
            }
        }
    }

    /// Reads the running task's replies until its end.
    fn exchange(
        &mut self,
        cell: &SharedCell,
    ) -> Result<(Option<TaskError>, Vec<u8>), ProtocolError> {
        let worker = self.worker.as_mut().ok_or(ProtocolError::Closed)?;
        loop {
            let (message, payload) = protocol::read_frame::<FromWorker>(&mut worker.replies)?;
            match message {
                FromWorker::Log { id, record } if id == cell.id => self.core.log(cell, record),
                FromWorker::Done { id, failure } if id == cell.id => return Ok((failure, payload)),
                // A stray record from an earlier task: nothing to do with this one.
                FromWorker::Log { .. } => {}
                FromWorker::Hello { .. } | FromWorker::Done { .. } => {
                    return Err(ProtocolError::Closed);
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
            self.worker = None;
            self.shared.reap(pid, Duration::ZERO);
            tries -= 1;
            if tries == 0 {
                return Err(TaskError::error(format!(
                    "cannot reach a worker process: {error}"
                )));
            }
            tracing::debug!(pid, "a worker died while idle: {error}");
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

    /// Asks a worker to stop, killing it if it does not within a second.
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
        {
            let mut state = self.shared.state();
            state.children.insert(pid, child);
            if state.closed {
                drop(state);
                self.shared.reap(pid, Duration::ZERO);
                return Err(TaskError::new(
                    ErrorKind::Interrupted,
                    "the manager is shutting down",
                ));
            }
        }
        let mut worker = Worker {
            pid,
            requests,
            replies: BufReader::with_capacity(64 * 1024, replies),
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
        other => other.to_string(),
    })?;
    let FromWorker::Hello {
        protocol,
        codec,
        fingerprint,
        ..
    } = hello
    else {
        return Err("it spoke before greeting".to_owned());
    };
    let ours = Registry::global()
        .map(Registry::fingerprint)
        .unwrap_or_default();
    check_hello(protocol, codec, fingerprint, ours)
}

/// Whether a worker's greeting matches this process.
fn check_hello(protocol: u32, codec: u32, fingerprint: u64, ours: u64) -> Result<(), String> {
    if protocol != PROTOCOL_VERSION {
        return Err(format!(
            "it speaks protocol version {protocol}, this process version {PROTOCOL_VERSION}"
        ));
    }
    if codec != CODEC_VERSION {
        return Err(format!(
            "it encodes values with codec version {codec}, this process version {CODEC_VERSION}"
        ));
    }
    if fingerprint != ours {
        return Err(format!(
            "it registered different tasks (fingerprint {fingerprint:016x}, expected {ours:016x}); was the executable replaced, or a different worker program configured?"
        ));
    }
    Ok(())
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
        assert_eq!(check_hello(PROTOCOL_VERSION, CODEC_VERSION, 7, 7), Ok(()));
        let version = check_hello(PROTOCOL_VERSION + 1, CODEC_VERSION, 7, 7).unwrap_err();
        assert!(version.contains("protocol version"), "{version}");
        let codec = check_hello(PROTOCOL_VERSION, CODEC_VERSION - 1, 7, 7).unwrap_err();
        assert!(codec.contains("codec version 1"), "{codec}");
        let tasks = check_hello(PROTOCOL_VERSION, CODEC_VERSION, 8, 7).unwrap_err();
        assert!(tasks.contains("registered different tasks"), "{tasks}");
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
