//! For test binaries with their own `main` (`harness = false`): the process
//! and persistence tests, which must enter worker mode before anything else
//! and sometimes start themselves again as a separate *scenario* process.

use std::future::Future;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdout, Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

/// Names the scenario a re-started test binary runs instead of its tests.
pub const SCENARIO: &str = "TASKFLOW_TEST_SCENARIO";

/// How long a scenario process may take before the test gives up on it.
const SCENARIO_PATIENCE: Duration = Duration::from_secs(120);

/// Runs the trials one at a time: each starts its own workers or managers,
/// and on a two-core machine they take turns.
pub fn run(trials: Vec<Trial>) -> ExitCode {
    let mut arguments = Arguments::from_args();
    arguments.test_threads.get_or_insert(1);
    libtest_mimic::run(&arguments, trials).exit_code()
}

/// Runs an async test body on a fresh two-worker runtime.
///
/// # Errors
///
/// When the runtime cannot start; a failing body panics, as in any test.
pub fn trial(test: impl Future<Output = ()>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(test);
    Ok(())
}

/// The scenario this process was started to run, if any.
pub fn scenario_name() -> Option<String> {
    std::env::var(SCENARIO).ok()
}

/// This test binary, to be started as a process running `scenario`.
///
/// # Panics
///
/// When the binary's own path is unknown.
pub fn scenario(scenario: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command.env(SCENARIO, scenario);
    command
}

/// A scenario's stdout, read line by line.
pub type Lines = std::io::Lines<std::io::BufReader<ChildStdout>>;

/// The lines of a child started with a piped stdout.
///
/// # Panics
///
/// When its stdout was not piped.
pub fn lines(child: &mut Child) -> Lines {
    std::io::BufReader::new(child.stdout.take().expect("a piped stdout")).lines()
}

/// Reads the child's stdout until a line starting with `prefix`.
///
/// # Panics
///
/// When the child ends first (it is killed and reaped).
pub fn read_until(child: &mut Child, lines: &mut Lines, prefix: &str) -> String {
    for line in lines.by_ref() {
        let line = line.expect("the scenario's output is text");
        if line.starts_with(prefix) {
            return line;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the scenario ended before printing `{prefix}`");
}

/// Waits for a scenario to exit successfully.
///
/// # Panics
///
/// When it fails, or does not finish within two minutes (it is killed).
pub fn finish(mut child: Child) {
    let deadline = Instant::now() + SCENARIO_PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("the scenario can be waited for") {
            assert!(status.success(), "the scenario failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the scenario did not finish within {SCENARIO_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Whether `pid` is a zombie: exited, but not reaped by its parent.
pub fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Kills `pid` with SIGKILL if it is still a live process named `name`: a
/// test's cleanup of a process it started indirectly (so it cannot wait
/// for it), checked by name so a reused pid is left alone.
pub fn kill_if_named(pid: u32, name: &str) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if alive(pid) && comm.trim_end() == name {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// A child process killed and reaped when dropped, so a test that fails
/// half-way leaves no process behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    /// The child, still guarded.
    ///
    /// # Panics
    ///
    /// After [`take`](Self::take).
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child was not taken")
    }

    /// The child, no longer guarded (to [`finish`] it).
    ///
    /// # Panics
    ///
    /// When taken twice.
    pub fn take(&mut self) -> Child {
        self.0.take().expect("the child was not taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A scenario process the test talks to: lines to its stdin, lines read
/// back from its stdout (by a thread of its own, so every read has a
/// deadline). Killed and reaped when dropped, so a test that fails half-way
/// leaves no process behind, even a stopped one.
#[derive(Debug)]
pub struct Running {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, in order.
    seen: Vec<String>,
}

impl Running {
    /// Starts `command` with its stdin and stdout piped.
    ///
    /// # Panics
    ///
    /// When it cannot start.
    pub fn start(mut command: Command) -> Self {
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = command.spawn().expect("the scenario starts");
        let out = lines(&mut child);
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child: KillOnDrop::new(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Its process id.
    pub fn pid(&mut self) -> u32 {
        self.child.child().id()
    }

    /// The next line it prints that starts with `prefix`.
    ///
    /// # Panics
    ///
    /// When it ends first, or prints none within two minutes.
    pub fn read(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + SCENARIO_PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the scenario printed no `{prefix}` within {SCENARIO_PATIENCE:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the scenario ended before printing `{prefix}`")
                }
            }
        }
    }

    /// The lines it prints up to the first that starts with `prefix`,
    /// that one included.
    ///
    /// # Panics
    ///
    /// As [`read`](Self::read).
    pub fn read_through(&mut self, prefix: &str) -> Vec<String> {
        let from = self.seen.len();
        self.read(prefix);
        self.seen[from..].to_vec()
    }

    /// Sends it one line.
    ///
    /// # Panics
    ///
    /// When its stdin is not piped, or it is gone.
    pub fn say(&mut self, line: &str) {
        let stdin = self.child.child().stdin.as_mut().expect("a piped stdin");
        writeln!(stdin, "{line}").expect("the scenario reads its stdin");
        stdin.flush().expect("the scenario reads its stdin");
    }

    /// Sends it `signal` (`-STOP`, `-CONT`, ...) with `kill`.
    ///
    /// # Panics
    ///
    /// When `kill` fails.
    pub fn signal(&mut self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("`kill` runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Closes its stdin (a scenario then shuts down gracefully), waits for
    /// it to exit successfully, and returns every line it printed.
    ///
    /// # Panics
    ///
    /// As [`finish`].
    pub fn stop(mut self) -> Vec<String> {
        drop(self.child.child().stdin.take());
        finish(self.child.take());
        self.rest()
    }

    /// Kills it (SIGKILL), reaps it, and returns every line it printed.
    pub fn kill(mut self) -> Vec<String> {
        let mut child = self.child.take();
        let _ = child.kill();
        let _ = child.wait();
        self.rest()
    }

    /// Every line it printed, once it has exited.
    fn rest(&mut self) -> Vec<String> {
        // Its stdout is closed now (once the processes it started, which
        // share it, are gone too): the reader sends what is left and stops.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

/// In a scenario: waits until the test closes this process's stdin (its
/// signal to shut down).
pub async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await;
}
