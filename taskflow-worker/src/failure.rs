//! Why a task attempt, or a whole task, did not succeed.
//!
//! A [`TaskError`] is data, not a live error object: a kind and a message. It is
//! stored on the task's record, sent across the process boundary and written to
//! disk, so it holds nothing that cannot be serialized.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of failure a [`TaskError`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task returned `Err`, or its arguments could not be decoded.
    Error,
    /// The task panicked.
    Panic,
    /// The attempt ran longer than the task's `timeout`.
    Timeout,
    /// The task was cancelled through `TaskManager::cancel`.
    Cancelled,
    /// The manager shut down (or its process died) before the task finished.
    Interrupted,
    /// The worker process running the task died.
    WorkerDied,
    /// The worker process running the task sent something that is not a
    /// frame of the protocol, or a frame that makes no sense at that point;
    /// it was killed, since nothing more it says can be trusted.
    Protocol,
}

impl ErrorKind {
    /// The kind as a lowercase word, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Error => "error",
            ErrorKind::Panic => "panic",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::WorkerDied => "worker_died",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// The kind named by [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "error" => ErrorKind::Error,
            "panic" => ErrorKind::Panic,
            "timeout" => ErrorKind::Timeout,
            "cancelled" => ErrorKind::Cancelled,
            "interrupted" => ErrorKind::Interrupted,
            "worker_died" => ErrorKind::WorkerDied,
            "protocol" => ErrorKind::Protocol,
            _ => return None,
        })
    }
}

/// The failure of a task attempt, or of the task as a whole.
///
/// Awaiting a `TaskHandle` yields `Err(TaskError)` when the task did not
/// succeed; a task's record keeps the last one.
///
/// ```
/// use taskflow_worker::{ErrorKind, TaskError};
/// let err = TaskError::new(ErrorKind::Timeout, "attempt exceeded 30s");
/// assert!(err.is_timeout());
/// assert!(!err.is_panic());
/// assert_eq!(err.message(), "attempt exceeded 30s");
/// assert_eq!(err.to_string(), "task timed out: attempt exceeded 30s");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    kind: ErrorKind,
    message: String,
}

impl TaskError {
    /// A failure of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
        }
    }

    /// The task returned `Err` with this text.
    pub fn error(message: impl Into<String>) -> Self {
        TaskError::new(ErrorKind::Error, message)
    }

    /// The failure recorded from a caught panic's payload.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        TaskError::new(ErrorKind::Panic, panic_message(payload))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The text: the task's error, the panic message, or what the runtime saw.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the task returned `Err`.
    pub fn is_error(&self) -> bool {
        self.kind == ErrorKind::Error
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        self.kind == ErrorKind::Panic
    }

    /// Whether an attempt exceeded the task's timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.kind == ErrorKind::Cancelled
    }

    /// Whether shutdown or a crash interrupted the task.
    pub fn is_interrupted(&self) -> bool {
        self.kind == ErrorKind::Interrupted
    }

    /// Whether the worker process running the task died.
    pub fn is_worker_died(&self) -> bool {
        self.kind == ErrorKind::WorkerDied
    }

    /// Whether the worker process running the task broke the protocol (a
    /// malformed frame) and was killed for it.
    pub fn is_protocol(&self) -> bool {
        self.kind == ErrorKind::Protocol
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Error => "task failed",
            ErrorKind::Panic => "task panicked",
            ErrorKind::Timeout => "task timed out",
            ErrorKind::Cancelled => "task cancelled",
            ErrorKind::Interrupted => "task interrupted",
            ErrorKind::WorkerDied => "worker process died",
            ErrorKind::Protocol => "worker protocol violated",
        };
        if self.message.is_empty() {
            f.write_str(what)
        } else {
            write!(f, "{what}: {}", self.message)
        }
    }
}

impl std::error::Error for TaskError {}

/// The text of a panic payload, as `std`'s default hook prints it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_stored_word() {
        let kinds = [
            ErrorKind::Error,
            ErrorKind::Panic,
            ErrorKind::Timeout,
            ErrorKind::Cancelled,
            ErrorKind::Interrupted,
            ErrorKind::WorkerDied,
            ErrorKind::Protocol,
        ];
        for kind in kinds {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::parse("unheard of"), None);
        let error = TaskError::new(ErrorKind::Protocol, "worker sent a malformed frame");
        assert!(error.is_protocol() && !error.is_worker_died());
    }
}
