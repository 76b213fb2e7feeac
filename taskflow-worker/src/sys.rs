//! The system calls of the process boundary: the only `unsafe` in taskflow.
//!
//! A worker is this executable started again with two pipes on inherited
//! descriptors, [`REQUESTS_FD`] (parent to worker) and [`REPLIES_FD`] (worker
//! to parent), and [`WORKER_ENV`] naming the parent's pid. Pipes rather than
//! a socket pair: reading a socket wakes the peer's waiters, so every reply
//! the parent read would wake an idle worker for nothing.
//!
//! Every system call this module makes, and why:
//! - between `fork` and `exec` of a worker: `fcntl` and `dup2` place the
//!   pipes on their descriptors; `setpgid(0, 0)` (through std's
//!   `process_group`) makes the worker the leader of its own process group,
//!   so the processes its tasks start can be killed with it; `prctl`
//!   (Linux) asks the kernel to kill the worker when its parent dies, and
//!   `getppid` checks the parent did not die first; `setpriority` applies
//!   the configured nice value;
//! - in a starting process: `fstat` tells whether the inherited descriptors
//!   are pipes, `fcntl` marks them close-on-exec once adopted;
//! - in the parent: `kill` with a negative pid kills a worker's process
//!   group ([`kill_group`]); `pidfd_open` (Linux 5.3+, through `syscall`)
//!   gives a descriptor that becomes readable when a worker exits
//!   ([`exit_descriptor`]); `waitid` with `WNOWAIT` tells whether a worker
//!   has exited without reaping it ([`has_exited`]), where pidfds are
//!   missing; `poll` waits on pipes and pidfds together ([`PollSet`]);
//!   `fcntl` makes a pipe end non-blocking ([`set_nonblocking`]);
//! - anywhere: `kill` with signal 0 tells whether a pid exists
//!   ([`process_exists`]); `gettid` and `setpriority` lower one thread's
//!   priority ([`set_thread_nice`]).
//!
//! Each `unsafe` block says why it is sound. The functions that signal or
//! wait for a pid are only sound *for the caller's purpose* while that pid
//! is an unreaped child of this process (so it cannot have been reused):
//! upholding that is the caller's job, and their docs say so.
#![allow(unsafe_code)]

use std::fmt;
use std::io::{self, PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// The descriptor a worker reads requests from.
pub const REQUESTS_FD: RawFd = 3;

/// The descriptor a worker writes replies to.
pub const REPLIES_FD: RawFd = 4;

/// Set in a worker's environment to the parent's pid.
pub const WORKER_ENV: &str = "TASKFLOW_WORKER_PARENT";

/// Prepares `command` to start a worker: `requests` (the read end of the
/// parent-to-worker pipe) goes to [`REQUESTS_FD`], `replies` (the write end
/// of the worker-to-parent pipe) to [`REPLIES_FD`]; the worker leads a
/// process group of its own (its pgid is its pid, see [`kill_group`]), is
/// killed when the parent dies (Linux), and runs at `nice` when given.
pub fn prepare_worker(
    command: &mut Command,
    requests: &PipeReader,
    replies: &PipeWriter,
    nice: Option<i32>,
) {
    let (requests, replies) = (requests.as_raw_fd(), replies.as_raw_fd());
    let parent = std::process::id();
    command.env(WORKER_ENV, parent.to_string());
    // std calls setpgid(0, 0) in the child before the closure below runs.
    // Besides letting the parent kill a task's children with its worker, it
    // keeps a terminal's ^C (sent to the foreground group) away from the
    // workers: the application decides when they stop.
    command.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. It makes only raw system calls
    // (fcntl, dup2, prctl, getppid, setpriority), allocates nothing, takes no
    // lock, and touches only integers copied in above.
    unsafe {
        command.pre_exec(move || {
            // Copy both ends above the targets first, so placing one cannot
            // overwrite the other (either may already sit on 3 or 4). The
            // copies are close-on-exec; dup2's targets are not.
            let high_requests = libc::fcntl(requests, libc::F_DUPFD_CLOEXEC, 10);
            let high_replies = libc::fcntl(replies, libc::F_DUPFD_CLOEXEC, 10);
            if high_requests < 0
                || high_replies < 0
                || libc::dup2(high_requests, REQUESTS_FD) < 0
                || libc::dup2(high_replies, REPLIES_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("parent exited while starting a worker"));
                }
            }
            if let Some(nice) = nice {
                // `which` is an unsigned int on glibc and an int elsewhere.
                #[allow(clippy::useless_conversion)]
                if libc::setpriority(libc::PRIO_PROCESS as _, 0, nice) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// What a process finds at start about being a worker.
#[derive(Debug)]
pub enum Startup {
    /// Not a worker: run the application.
    Application,
    /// A worker whose parent has already gone: exit at once.
    Orphan,
    /// A worker: serve requests for the parent `parent`.
    Worker {
        /// Requests from the parent.
        requests: PipeReader,
        /// Replies to the parent.
        replies: PipeWriter,
        /// The parent's pid.
        parent: u32,
    },
}

/// Whether `fd` is an open pipe.
fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat only reads the descriptor's metadata into a zeroed,
    // properly sized buffer; an unused descriptor number yields EBADF.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

/// Adopts an inherited descriptor, setting close-on-exec so programs a task
/// starts do not inherit it.
///
/// # Safety
///
/// `fd` must be open and owned by nobody else in this process.
unsafe fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and unowned.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on a descriptor this process now owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    owned
}

/// Decides whether this process is a worker, adopting its pipes if so.
///
/// The environment marker alone is not enough: a process the worker's task
/// starts inherits the environment too. It does not inherit the pipes, which
/// are close-on-exec in a running worker, so a worker is a process with the
/// marker *and* pipes on [`REQUESTS_FD`] and [`REPLIES_FD`].
///
/// Only the first call decides (a worker never returns from serving): a
/// later call, in the application, is [`Startup::Application`] without
/// touching a descriptor, so the pipes can never be adopted twice.
pub fn startup() -> Startup {
    static DECIDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DECIDED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Startup::Application;
    }
    let Some(parent) = std::env::var(WORKER_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return Startup::Application;
    };
    if !is_pipe(REQUESTS_FD) || !is_pipe(REPLIES_FD) {
        return Startup::Application;
    }
    // SAFETY: both descriptors are open pipes (checked above), placed there
    // by `prepare_worker` in the parent for this process alone; nothing else
    // in the process knows their numbers, so each gets a single owner here.
    let (requests, replies) = unsafe { (adopt(REQUESTS_FD), adopt(REPLIES_FD)) };
    if std::os::unix::process::parent_id() != parent {
        return Startup::Orphan;
    }
    Startup::Worker {
        requests: PipeReader::from(requests),
        replies: PipeWriter::from(replies),
        parent,
    }
}

/// Whether a process with this pid exists on this machine (a zombie counts).
/// Used to tell a crashed manager's rows from a live one's without waiting
/// for its heartbeat to go stale.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 delivers nothing; it only checks whether the
    // pid exists (EPERM means it exists but belongs to someone else).
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sets the calling thread's nice value (Linux, where nice is per thread),
/// so a background thread yields the CPU to the application's threads.
///
/// # Errors
///
/// What `setpriority` reports, e.g. `EACCES` for a value below the current
/// one without privilege; on other systems, `Unsupported`.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority only read their integer arguments;
        // PRIO_PROCESS with a thread id changes that one thread on Linux.
        let result = unsafe {
            let tid = libc::gettid();
            #[allow(clippy::useless_conversion)]
            libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, nice)
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "per-thread nice needs Linux",
        ))
    }
}

/// Kills (`SIGKILL`) every process in process group `pgid`: a worker and
/// whatever its tasks started and left in its group.
///
/// Sound for the caller only while the group's leader, `pgid`, is an
/// unreaped child of this process: until it is reaped, no other process or
/// group can take that number.
///
/// # Errors
///
/// What `kill` reports (`ESRCH` once the group is empty); `InvalidInput` for
/// 0 and 1, which negated would name this process's own group and every
/// process it may signal, and for numbers past `pid_t`.
pub fn kill_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|&pgid| pgid > 1)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill only reads its integer arguments; `-pgid` is a negative
    // number below -1, which names exactly process group `pgid`.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A descriptor that becomes readable when process `pid` exits (a pidfd),
/// so one `poll` can wait for a worker's reply or its death.
///
/// Call it while `pid` is an unreaped child of this process, so it refers
/// to that child. The descriptor stays valid (and readable) after the child
/// is reaped.
///
/// # Errors
///
/// What `pidfd_open` reports (`ENOSYS` before Linux 5.3, or under a seccomp
/// filter that forbids it); `Unsupported` on other systems. Callers fall
/// back to [`has_exited`] on a tick.
pub fn exit_descriptor(pid: u32) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        let pid = libc::pid_t::try_from(pid)
            .ok()
            .filter(|&pid| pid > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: pidfd_open takes a pid and flags (0) and returns a new
        // descriptor or -1; it reads no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: the kernel just returned this descriptor to us; nothing
        // else in the process knows it. pidfds are close-on-exec by default.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "process descriptors need Linux",
        ))
    }
}

/// Whether child `pid` has exited, leaving it unreaped (`waitid` with
/// `WNOHANG | WNOWAIT`), so its pid and process group stay reserved until
/// the caller reaps it.
///
/// Call it only while `pid` is an unreaped child of this process: a reaped
/// pid may already belong to another child.
///
/// # Errors
///
/// What `waitid` reports (`ECHILD` when `pid` is not a child of this
/// process, or was reaped).
pub fn has_exited(pid: u32) -> io::Result<bool> {
    if pid == 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // `id_t` is a u32 on Linux and macOS, an i64 on FreeBSD.
    #[allow(clippy::useless_conversion)]
    let id = libc::id_t::from(pid);
    // SAFETY: siginfo_t is plain data, so all zeroes is a valid value;
    // waitid writes at most one siginfo_t into the buffer we own, and with
    // WNOWAIT it changes no process state.
    let (result, info) = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let result = libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        (result, info)
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // With WNOHANG and nothing to report the buffer stays zeroed (POSIX
    // leaves it unspecified; we zeroed it), so a signal number means exited.
    Ok(info.si_signo != 0)
}

/// Makes a pipe end non-blocking: a read or write that would wait fails
/// with `WouldBlock` instead, and the caller waits with [`PollSet`] on what
/// it chooses.
///
/// # Errors
///
/// What `fcntl` reports.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL reads and sets the status flags of
    // a descriptor the caller borrows for the duration of the call.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What a [`PollSet`] entry waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Readable, or at its end (a pipe with no writer left, an exited
    /// process's pidfd).
    Read,
    /// Writable, or broken.
    Write,
}

/// Descriptors to wait on together with `poll`.
///
/// Entries hold descriptor *numbers*: the caller keeps each descriptor open
/// until [`wait`](Self::wait) returns (a closed one is reported ready, as
/// `POLLNVAL`). The set is reused between waits to avoid allocating.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    /// An empty set.
    pub fn new() -> Self {
        PollSet::default()
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Adds `fd`; the index to ask [`is_ready`](Self::is_ready) about.
    pub fn add(&mut self, fd: BorrowedFd<'_>, interest: Interest) -> usize {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
        };
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        });
        self.fds.len() - 1
    }

    /// Waits until an entry is ready or `timeout` passes (`None`: no
    /// limit); how many entries are ready. A signal that interrupts the
    /// wait returns early with none ready: callers loop anyway.
    ///
    /// # Errors
    ///
    /// What `poll` reports, except `EINTR`.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let millis = match timeout {
            // Rounded up, so a short wait does not become a busy loop.
            Some(timeout) => timeout
                .as_nanos()
                .div_ceil(1_000_000)
                .try_into()
                .unwrap_or(libc::c_int::MAX),
            None => -1,
        };
        for entry in &mut self.fds {
            entry.revents = 0;
        }
        let count = libc::nfds_t::try_from(self.fds.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the pointer and count describe our own initialized vector,
        // which poll only writes `revents` of; it stays borrowed mutably for
        // the call.
        let ready = unsafe { libc::poll(self.fds.as_mut_ptr(), count, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(error);
        }
        Ok(usize::try_from(ready).unwrap_or(0))
    }

    /// Whether entry `index` was ready (or at its end, or in error) when
    /// [`wait`](Self::wait) last returned.
    pub fn is_ready(&self, index: usize) -> bool {
        self.fds.get(index).is_some_and(|entry| entry.revents != 0)
    }
}

impl fmt::Debug for PollSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.fds.iter().map(|entry| (entry.fd, entry.revents)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_startup_decides() {
        // This test process is no worker; whatever the first call found,
        // a second one never looks at the descriptors again.
        let _ = startup();
        assert!(matches!(startup(), Startup::Application));
        assert!(matches!(startup(), Startup::Application));
    }
}
