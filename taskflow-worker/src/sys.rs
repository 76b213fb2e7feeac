//! The system calls of the process boundary: the only `unsafe` in taskflow.
//!
//! A worker is this executable started again with the parent's end of a Unix
//! socket pair on descriptor [`CHANNEL_FD`] and [`WORKER_ENV`] naming the
//! parent's pid. Three things need raw system calls: placing the socket on
//! that descriptor between `fork` and `exec`, asking the kernel to kill the
//! worker when its parent dies, and adopting the inherited descriptor in the
//! worker. Each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The descriptor a worker finds its channel on.
pub const CHANNEL_FD: RawFd = 3;

/// Set in a worker's environment to the parent's pid.
pub const WORKER_ENV: &str = "TASKFLOW_WORKER_PARENT";

/// Prepares `command` to start a worker: the worker's end of the channel goes
/// to [`CHANNEL_FD`], the worker is killed when the parent dies (Linux), and
/// runs at `nice` when given.
pub fn prepare_worker(command: &mut Command, channel: &UnixStream, nice: Option<i32>) {
    let channel_fd = channel.as_raw_fd();
    let parent = std::process::id();
    command.env(WORKER_ENV, parent.to_string());
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. It makes only raw system calls
    // (dup2, fcntl, prctl, getppid, setpriority), allocates nothing, takes no
    // lock, and touches only integers copied in above.
    unsafe {
        command.pre_exec(move || {
            if channel_fd == CHANNEL_FD {
                // dup2 onto itself would keep close-on-exec set; clear it.
                let flags = libc::fcntl(CHANNEL_FD, libc::F_GETFD);
                if flags < 0
                    || libc::fcntl(CHANNEL_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(channel_fd, CHANNEL_FD) < 0 {
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
    /// A worker: serve tasks from this channel for the parent `parent`.
    Worker {
        /// The channel to the parent.
        channel: UnixStream,
        /// The parent's pid.
        parent: u32,
    },
}

/// Decides whether this process is a worker, adopting the channel if so.
///
/// The environment marker alone is not enough: a process the worker's task
/// starts inherits the environment too. It does not inherit the channel,
/// which is close-on-exec in a running worker, so a worker is a process with
/// the marker *and* a socket on [`CHANNEL_FD`].
pub fn startup() -> Startup {
    let Some(parent) = std::env::var(WORKER_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return Startup::Application;
    };
    // SAFETY: fstat only reads the descriptor's metadata into a zeroed,
    // properly sized buffer; an unused descriptor number yields EBADF.
    let is_socket = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(CHANNEL_FD, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        return Startup::Application;
    }
    // SAFETY: the descriptor is open (fstat succeeded) and was placed there
    // by `prepare_worker` in the parent for this process alone; nothing else
    // in the process knows its number, so this becomes its single owner.
    let owned = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    // SAFETY: fcntl on a descriptor this process owns; sets close-on-exec so
    // programs a task starts do not inherit the channel.
    unsafe {
        let flags = libc::fcntl(CHANNEL_FD, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(CHANNEL_FD, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    if std::os::unix::process::parent_id() != parent {
        return Startup::Orphan;
    }
    Startup::Worker {
        channel: UnixStream::from(owned),
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
