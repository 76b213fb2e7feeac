//! The system calls of the process boundary: the only `unsafe` in taskflow.
//!
//! A worker is this executable started again with two pipes on inherited
//! descriptors, [`REQUESTS_FD`] (parent to worker) and [`REPLIES_FD`] (worker
//! to parent), and [`WORKER_ENV`] naming the parent's pid. Pipes rather than
//! a socket pair: reading a socket wakes the peer's waiters, so every reply
//! the parent read would wake an idle worker for nothing.
//!
//! What needs raw system calls: placing the pipes on those descriptors
//! between `fork` and `exec`, asking the kernel to kill the worker when its
//! parent dies, adopting the inherited descriptors in the worker, telling
//! whether a pid still exists (a crashed manager's rows), and lowering one
//! thread's priority. Each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::io::{self, PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The descriptor a worker reads requests from.
pub const REQUESTS_FD: RawFd = 3;

/// The descriptor a worker writes replies to.
pub const REPLIES_FD: RawFd = 4;

/// Set in a worker's environment to the parent's pid.
pub const WORKER_ENV: &str = "TASKFLOW_WORKER_PARENT";

/// Prepares `command` to start a worker: `requests` (the read end of the
/// parent-to-worker pipe) goes to [`REQUESTS_FD`], `replies` (the write end
/// of the worker-to-parent pipe) to [`REPLIES_FD`]; the worker is killed
/// when the parent dies (Linux), and runs at `nice` when given.
pub fn prepare_worker(
    command: &mut Command,
    requests: &PipeReader,
    replies: &PipeWriter,
    nice: Option<i32>,
) {
    let (requests, replies) = (requests.as_raw_fd(), replies.as_raw_fd());
    let parent = std::process::id();
    command.env(WORKER_ENV, parent.to_string());
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
pub fn startup() -> Startup {
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
