//! For test binaries with their own `main` (`harness = false`): the process
//! and persistence tests, which must enter worker mode before anything else
//! and sometimes start themselves again as a separate *scenario* process.

use std::future::Future;
use std::io::BufRead;
use std::process::{Child, ChildStdout, Command, ExitCode};
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

/// A scenario process the test talks to through its stdin and stdout,
/// killed and reaped if dropped unfinished (a failing test leaves no
/// process behind).
#[derive(Debug)]
pub struct Talking {
    guard: KillOnDrop,
    lines: Lines,
}

impl Talking {
    /// Starts `command` with piped stdin and stdout.
    ///
    /// # Panics
    ///
    /// When it cannot start.
    pub fn start(mut command: Command) -> Self {
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = command.spawn().expect("the scenario starts");
        let lines = lines(&mut child);
        Talking {
            guard: KillOnDrop::new(child),
            lines,
        }
    }

    /// Its pid.
    pub fn id(&mut self) -> u32 {
        self.guard.child().id()
    }

    /// Reads its output until a line starting with `prefix`.
    ///
    /// # Panics
    ///
    /// When it ends first.
    pub fn read(&mut self, prefix: &str) -> String {
        read_until(self.guard.child(), &mut self.lines, prefix)
    }

    /// Sends it one line.
    ///
    /// # Panics
    ///
    /// When its stdin is closed.
    pub fn say(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.guard.child().stdin.as_mut().expect("a piped stdin");
        writeln!(stdin, "{line}").expect("the scenario reads its stdin");
        stdin.flush().expect("the scenario reads its stdin");
    }

    /// Closes its stdin (a scenario then shuts down gracefully) and waits
    /// for it to exit successfully.
    ///
    /// # Panics
    ///
    /// As [`finish`].
    pub fn stop(mut self) {
        let mut child = self.guard.take();
        drop(child.stdin.take());
        finish(child);
    }
}
