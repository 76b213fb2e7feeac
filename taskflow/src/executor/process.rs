//! The process executor: tasks run in worker processes that are this very
//! executable started again in worker mode.
//!
//! Admission is a FIFO gate of `max_process_workers` permits, as for async
//! tasks; an admitted attempt checks a worker out of the pool (starting one
//! if none is idle), sends it the task, relays its log records, and awaits
//! its answer. A worker runs one attempt at a time, so at most
//! `max_process_workers` process tasks are RUNNING.
//!
//! Failure is contained to the attempt that met it:
//! - the task's `Err` or panic comes back as a failure and the worker lives on;
//! - a worker that dies (killed, aborted, out of memory) fails only the
//!   attempt it was running, with its exit status; it is not reused;
//! - an attempt past its `timeout` gets its worker killed.
//!
//! Every child ever started is kept in one table until it has been reaped,
//! so shutdown can kill and wait for each of them: afterwards no process this
//! pool started exists. Workers are started from one long-lived thread, since
//! Linux delivers the parent-death signal when the *thread* that forked a
//! child exits.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, PipeReader, PipeWriter};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use taskflow_worker::protocol::{self, FromWorker, PROTOCOL_VERSION, ProtocolError, ToWorker};
use taskflow_worker::registry::Registry;
use taskflow_worker::{ErrorKind, TaskError, sys, worker};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::oneshot;

use super::gate::{Gate, Permit};
use super::spawn_attempt;
use crate::core::Core;
use crate::record::{Produced, SharedCell, TaskCell};

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
    gate: Gate,
    pool: Arc<Pool>,
}

impl ProcessExecutor {
    pub(crate) fn new(config: ProcessConfig) -> Self {
        ProcessExecutor {
            gate: Gate::new(config.workers),
            pool: Arc::new(Pool {
                config,
                state: Mutex::new(PoolState::default()),
                spawner: Mutex::new(None),
                settled: tokio::sync::Notify::new(),
            }),
        }
    }

    pub(crate) fn submit(&self, core: &Arc<Core>, cell: SharedCell) {
        self.gate
            .submit(core, cell, |core| Some(&core.process_tasks.gate), start);
    }

    /// Starts every worker now rather than on the first task.
    pub(crate) async fn prewarm(&self, core: &Arc<Core>) -> Result<(), TaskError> {
        let missing = self.pool.config.workers.saturating_sub(self.pool.live());
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let (pool, core) = (self.pool.clone(), core.clone());
            starts.spawn(async move {
                let worker = pool.start(&core).await?;
                pool.check_in(&core, worker);
                Ok(())
            });
        }
        let mut result = Ok(());
        while let Some(started) = starts.join_next().await {
            if let Ok(Err(error)) = started {
                result = result.and(Err(error));
            }
        }
        result
    }

    /// Kills every worker and waits until each has been reaped.
    pub(crate) async fn kill_all(&self) {
        self.pool.kill_all().await;
    }

    /// The pids of live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.pool.state().children.keys().copied().collect();
        pids.sort_unstable();
        pids
    }
}

/// Spawns one admitted attempt.
fn start(core: &Arc<Core>, cell: SharedCell, permit: Option<Permit>) {
    spawn_attempt(
        &core.runtime,
        &cell.clone(),
        attempt(core.clone(), cell, permit),
    );
}

/// Runs one attempt on a worker; after a failure with retries left, waits
/// (holding no permit) and queues the task again.
async fn attempt(core: Arc<Core>, cell: SharedCell, permit: Option<Permit>) {
    let Some(attempt) = core.start(&cell) else {
        return;
    };
    let pool = core.process_tasks.pool.clone();
    let result = pool.attempt(&core, &cell, attempt).await;
    let retry_in = core.finish(&cell, result);
    drop(permit);
    if let Some(wait) = retry_in {
        tokio::time::sleep(wait).await;
        core.process_tasks.submit(&core, cell);
    }
}

/// A started, greeted worker.
struct Worker {
    pid: u32,
    requests: pipe::Sender,
    /// Buffered, so a frame usually arrives in one read.
    replies: BufReader<pipe::Receiver>,
    served: u32,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Worker>,
    /// Every started child not yet reaped, by pid.
    children: HashMap<u32, Child>,
    /// Starts in flight; shutdown waits for them to settle.
    starting: usize,
    /// Children taken out of `children` and being waited for; shutdown
    /// waits for these too, so none outlives it.
    reaping: usize,
    closed: bool,
}

struct Pool {
    config: ProcessConfig,
    state: Mutex<PoolState>,
    /// The thread that forks workers, started with the first one.
    spawner: Mutex<Option<mpsc::Sender<SpawnRequest>>>,
    /// Signalled when a start settles.
    settled: tokio::sync::Notify,
}

/// A started child, the write end of its requests and the read end of its replies.
type Spawned = io::Result<(Child, PipeWriter, PipeReader)>;

struct SpawnRequest {
    reply: oneshot::Sender<Spawned>,
}

impl Pool {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> usize {
        self.state().children.len()
    }

    /// One attempt of `cell` on a worker.
    async fn attempt(
        self: &Arc<Self>,
        core: &Arc<Core>,
        cell: &TaskCell,
        attempt: u32,
    ) -> Result<Produced, TaskError> {
        let request = ToWorker::Run {
            id: cell.id,
            name: Cow::Borrowed(cell.entry.name()),
            attempt,
            tags: cell.tags.clone(),
        };
        let frame = protocol::encode_frame(&request, &cell.args)
            .map_err(|e| TaskError::error(format!("cannot send the task to a worker: {e}")))?;
        let mut busy = Busy {
            pool: self.clone(),
            core: core.clone(),
            worker: Some(self.deliver(core, &frame).await?),
        };
        let exchange = async {
            let worker = busy.worker.as_mut().ok_or(ProtocolError::Closed)?;
            loop {
                let (message, payload) =
                    protocol::read_frame_async::<FromWorker>(&mut worker.replies).await?;
                match message {
                    FromWorker::Log { id, record } if id == cell.id => core.log(cell, record),
                    FromWorker::Done { id, failure } if id == cell.id => {
                        return Ok((failure, payload));
                    }
                    // A stray frame from an earlier task: nothing to do with this one.
                    FromWorker::Log { .. } => {}
                    FromWorker::Hello { .. } | FromWorker::Done { .. } => {
                        return Err(ProtocolError::Closed);
                    }
                }
            }
        };
        let outcome = match cell.entry.defaults().timeout {
            None => Ok(exchange.await),
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| limit),
        };
        let pid = busy.worker.as_ref().map_or(0, |w| w.pid);
        match outcome {
            Ok(Ok((failure, payload))) => {
                if let Some(mut worker) = busy.worker.take() {
                    worker.served += 1;
                    self.check_in(core, worker);
                }
                match failure {
                    None => Ok(Produced::Encoded(payload)),
                    Some(failure) => Err(failure),
                }
            }
            Ok(Err(error)) => {
                busy.worker.take();
                let status = self.reap(pid, Duration::from_secs(2)).await;
                self.replace(core);
                Err(TaskError::new(
                    ErrorKind::WorkerDied,
                    format!(
                        "worker process died while running the task (pid {pid}, {}; {error})",
                        describe(status)
                    ),
                ))
            }
            Err(limit) => {
                busy.worker.take();
                self.kill(pid).await;
                self.replace(core);
                Err(TaskError::new(
                    ErrorKind::Timeout,
                    format!(
                        "attempt exceeded the timeout of {limit:?}; its worker process (pid {pid}) was killed"
                    ),
                ))
            }
        }
    }

    /// Starts a worker in the background to take a lost one's place, so the
    /// next task does not wait for a process start.
    fn replace(self: &Arc<Self>, core: &Arc<Core>) {
        let short = {
            let state = self.state();
            !state.closed && state.children.len() + state.starting < self.config.workers
        };
        if short {
            let (pool, core) = (self.clone(), core.clone());
            drop(core.runtime.clone().spawn(async move {
                match pool.start(&core).await {
                    Ok(worker) => pool.check_in(&core, worker),
                    Err(error) => tracing::warn!("cannot replace a lost worker process: {error}"),
                }
            }));
        }
    }

    /// Hands `frame` to an idle worker, or a new one. A worker that died
    /// while idle cannot take it: it is reaped and another tried, without
    /// blaming the task.
    async fn deliver(
        self: &Arc<Self>,
        core: &Arc<Core>,
        frame: &[u8],
    ) -> Result<Worker, TaskError> {
        let mut tries = self.config.workers + 1;
        loop {
            let idle = self.state().idle.pop();
            let mut worker = match idle {
                Some(worker) => worker,
                None => self.start(core).await?,
            };
            match worker.requests.write_all(frame).await {
                Ok(()) => return Ok(worker),
                Err(error) if tries > 1 => {
                    tries -= 1;
                    tracing::debug!(pid = worker.pid, "a worker died while idle: {error}");
                    self.kill(worker.pid).await;
                }
                Err(error) => {
                    self.kill(worker.pid).await;
                    return Err(TaskError::error(format!(
                        "cannot reach a worker process: {error}"
                    )));
                }
            }
        }
    }

    /// Returns a worker to the idle list, or retires it.
    fn check_in(self: &Arc<Self>, core: &Arc<Core>, worker: Worker) {
        let retire = {
            let mut state = self.state();
            let worn = self
                .config
                .max_tasks_per_worker
                .is_some_and(|max| worker.served >= max);
            if state.closed || worn {
                Some(worker)
            } else {
                state.idle.push(worker);
                None
            }
        };
        if let Some(worker) = retire {
            let pool = self.clone();
            drop(core.runtime.spawn(async move { pool.retire(worker).await }));
        }
    }

    /// Asks a worker to stop, killing it if it does not within a second.
    async fn retire(&self, mut worker: Worker) {
        let asked = protocol::write_frame_async(&mut worker.requests, &ToWorker::Stop, &[]).await;
        let grace = if asked.is_ok() {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        self.reap(worker.pid, grace).await;
    }

    /// Kills a worker and waits for it.
    async fn kill(&self, pid: u32) -> Option<ExitStatus> {
        self.reap(pid, Duration::ZERO).await
    }

    /// Waits up to `grace` for a worker to exit, then kills it and waits.
    async fn reap(&self, pid: u32, grace: Duration) -> Option<ExitStatus> {
        let mut taken = self.take(pid)?;
        let child = &mut taken.child;
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        }
    }

    /// Takes a child out of the table to wait for it, counted in `reaping`
    /// until the returned guard is dropped.
    fn take(&self, pid: u32) -> Option<Taken<'_>> {
        let mut state = self.state();
        let child = state.children.remove(&pid)?;
        state.reaping += 1;
        Some(Taken { pool: self, child })
    }

    /// Signals a worker to die now, leaving it in the table to be reaped.
    fn signal_kill(&self, pid: u32) {
        if let Some(child) = self.state().children.get_mut(&pid) {
            let _ = child.start_kill();
        }
    }

    /// Starts a worker and checks its greeting.
    async fn start(self: &Arc<Self>, core: &Arc<Core>) -> Result<Worker, TaskError> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(TaskError::new(
                    ErrorKind::Interrupted,
                    "the manager is shutting down",
                ));
            }
            state.starting += 1;
        }
        let started = self.spawn(core).await;
        let registered = {
            let mut state = self.state();
            state.starting -= 1;
            match started {
                Ok((child, requests, replies)) => {
                    let pid = child.id().unwrap_or(0);
                    state.children.insert(pid, child);
                    Ok((pid, requests, replies, state.closed))
                }
                Err(error) => Err(error),
            }
        };
        self.settled.notify_waiters();
        let failed =
            |message: String| TaskError::error(format!("cannot start a worker process: {message}"));
        let (pid, requests, replies, closed) = registered.map_err(|e| failed(e.to_string()))?;
        if closed {
            self.kill(pid).await;
            return Err(TaskError::new(
                ErrorKind::Interrupted,
                "the manager is shutting down",
            ));
        }
        let requests = pipe::Sender::from_owned_fd(requests.into());
        let replies = pipe::Receiver::from_owned_fd(replies.into());
        let (requests, replies) = match (requests, replies) {
            (Ok(requests), Ok(replies)) => (requests, replies),
            (Err(error), _) | (_, Err(error)) => {
                self.kill(pid).await;
                return Err(failed(error.to_string()));
            }
        };
        let mut worker = Worker {
            pid,
            requests,
            replies: BufReader::with_capacity(64 * 1024, replies),
            served: 0,
        };
        match tokio::time::timeout(self.config.handshake_timeout, self.handshake(&mut worker)).await
        {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(message)) => {
                let status = self.kill(pid).await;
                Err(TaskError::error(format!(
                    "worker process handshake failed (pid {pid}, {}): {message}",
                    describe(status)
                )))
            }
            Err(_) => {
                self.kill(pid).await;
                Err(TaskError::error(format!(
                    "worker process (pid {pid}) did not greet within {:?}; does `main` call `taskflow::init()` or use `#[taskflow::main]` first thing?",
                    self.config.handshake_timeout
                )))
            }
        }
    }

    async fn handshake(&self, worker: &mut Worker) -> Result<(), String> {
        let (hello, _) = protocol::read_frame_async::<FromWorker>(&mut worker.replies)
            .await
            .map_err(|error| match error {
                ProtocolError::Closed => "it exited before greeting; does `main` call `taskflow::init()` or use `#[taskflow::main]` first thing?".to_owned(),
                other => other.to_string(),
            })?;
        let FromWorker::Hello {
            protocol,
            fingerprint,
            pid: _,
        } = hello
        else {
            return Err("it spoke before greeting".to_owned());
        };
        let ours = Registry::global()
            .map(Registry::fingerprint)
            .unwrap_or_default();
        check_hello(protocol, fingerprint, ours)
    }

    /// Forks a worker on the spawner thread.
    async fn spawn(&self, core: &Arc<Core>) -> Spawned {
        let (reply, answer) = oneshot::channel();
        let sent = {
            let mut spawner = self.spawner.lock().unwrap_or_else(|p| p.into_inner());
            if spawner.is_none() {
                *spawner = Some(start_spawner(self.config.clone(), core.runtime.clone())?);
            }
            spawner.as_ref().map(|s| s.send(SpawnRequest { reply }))
        };
        match sent {
            Some(Ok(())) => answer
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the spawner thread is gone"))),
            _ => Err(io::Error::other("the spawner thread is gone")),
        }
    }

    /// Kills every worker and waits until each has been reaped; starts in
    /// flight are waited for first so none appears afterwards.
    async fn kill_all(&self) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut state = self.state();
                state.closed = true;
                if state.starting == 0 && state.reaping == 0 {
                    break;
                }
            }
            // Bounded: a start settles within the spawn plus the handshake
            // timeout, a reap within a kill.
            let _ = tokio::time::timeout(Duration::from_secs(5), settled).await;
        }
        let children: Vec<Child> = {
            let mut state = self.state();
            state.idle.clear();
            state.children.drain().map(|(_, child)| child).collect()
        };
        for mut child in children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Whether a worker's greeting matches this process.
fn check_hello(protocol: u32, fingerprint: u64, ours: u64) -> Result<(), String> {
    if protocol != PROTOCOL_VERSION {
        return Err(format!(
            "it speaks protocol version {protocol}, this process version {PROTOCOL_VERSION}"
        ));
    }
    if fingerprint != ours {
        return Err(format!(
            "it registered different tasks (fingerprint {fingerprint:016x}, expected {ours:016x}); was the executable replaced, or a different worker program configured?"
        ));
    }
    Ok(())
}

/// A worker checked out for an attempt. If the attempt is abandoned (the
/// task was cancelled or interrupted and its future dropped), the worker is
/// still running the task: kill it rather than reuse it.
struct Busy {
    pool: Arc<Pool>,
    core: Arc<Core>,
    worker: Option<Worker>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            // Killed now, reaped soon; shutdown waits for either.
            self.pool.signal_kill(worker.pid);
            let pool = self.pool.clone();
            drop(
                self.core
                    .runtime
                    .spawn(async move { pool.kill(worker.pid).await }),
            );
        }
    }
}

/// A child being waited for, out of the table.
struct Taken<'a> {
    pool: &'a Pool,
    child: Child,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.pool.state().reaping -= 1;
        self.pool.settled.notify_waiters();
    }
}

fn start_spawner(
    config: ProcessConfig,
    runtime: tokio::runtime::Handle,
) -> io::Result<mpsc::Sender<SpawnRequest>> {
    let (requests, inbox) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("taskflow-spawner".into())
        .spawn(move || {
            // tokio registers each child with the runtime's reaper.
            let _runtime = runtime.enter();
            for request in inbox {
                let _ = request.reply.send(spawn_worker(&config));
            }
        })?;
    Ok(requests)
}

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
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
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
            .field("config", &self.pool.config)
            .field("live", &self.pool.live())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_from_another_build_is_refused_with_the_reason() {
        assert_eq!(check_hello(PROTOCOL_VERSION, 7, 7), Ok(()));
        let version = check_hello(PROTOCOL_VERSION + 1, 7, 7).unwrap_err();
        assert!(version.contains("protocol version"), "{version}");
        let tasks = check_hello(PROTOCOL_VERSION, 8, 7).unwrap_err();
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
