//! Log records a task emits while it runs.
//!
//! A task logs through [`log`] (or, in a worker process, through `tracing`).
//! The record goes to the sink of the running task's context: in the parent
//! that appends it to the task's record and publishes it on the event bus; in
//! a worker it is sent to the parent as a frame at once, so logs arrive while
//! the task runs and survive its crash. Outside any task, [`log`] forwards to
//! `tracing` so nothing is lost.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::id::TaskId;

/// How severe a log record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Progress worth knowing.
    Info,
    /// Detail for debugging.
    Debug,
    /// Even more detail.
    Trace,
}

impl LogLevel {
    /// The level in capitals: `"INFO"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
            LogLevel::Trace => "TRACE",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line a task logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogRecord {
    /// When it was emitted.
    pub at: SystemTime,
    /// Its severity.
    pub level: LogLevel,
    /// Where it came from: a `tracing` target, or the task's name.
    pub target: String,
    /// The text.
    pub message: String,
    /// Zero-based attempt of the task that logged it.
    pub attempt: u32,
    /// Structured fields (`tracing`'s `key = value`s), in order.
    pub fields: Vec<(String, String)>,
}

impl LogRecord {
    /// A record emitted now, by attempt 0 until [`in_attempt`](Self::in_attempt).
    pub fn new(level: LogLevel, target: impl Into<String>, message: impl Into<String>) -> Self {
        LogRecord {
            at: SystemTime::now(),
            level,
            target: target.into(),
            message: message.into(),
            attempt: 0,
            fields: Vec::new(),
        }
    }

    /// The record, logged by zero-based attempt `attempt`.
    pub fn in_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The record with a structured field appended.
    pub fn field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.push((key.into(), value.into()));
        self
    }
}

impl LogRecord {
    /// The record of a `tracing` event: its level, target, message, and
    /// its other fields in order (values as `Debug` prints them).
    pub fn from_event(event: &tracing::Event<'_>) -> Self {
        let mut text = EventText::default();
        event.record(&mut text);
        let metadata = event.metadata();
        let level = match *metadata.level() {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            _ => LogLevel::Trace,
        };
        let mut record = LogRecord::new(level, metadata.target(), text.message);
        record.fields = text.fields;
        record
    }
}

/// An event's message and its other fields, in order.
#[derive(Default)]
struct EventText {
    message: String,
    fields: Vec<(String, String)>,
}

impl tracing::field::Visit for EventText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        use fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }
}

/// Where a running task's log records go.
pub trait LogSink: Send + Sync {
    /// Delivers `record`, emitted by task `id`.
    fn emit(&self, id: TaskId, record: LogRecord);
}

/// A shared sink, as carried in a task's context.
#[derive(Clone)]
pub struct SharedSink(pub Arc<dyn LogSink>);

impl fmt::Debug for SharedSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogSink")
    }
}

/// Logs `message` at `level` on the running task's record.
///
/// Inside a task (async, thread or process) the record reaches the task's
/// record and the event bus while the task runs. Outside a task it is emitted
/// through `tracing` instead.
///
/// ```
/// use taskflow_worker::log::{LogLevel, log};
/// log(LogLevel::Info, "resized 12 images");
/// ```
pub fn log(level: LogLevel, message: impl Into<String>) {
    let message = message.into();
    match crate::context::context() {
        Some(context) => {
            let record = LogRecord::new(level, context.name, message);
            context.emit(record);
        }
        None => match level {
            LogLevel::Error => tracing::error!("{message}"),
            LogLevel::Warn => tracing::warn!("{message}"),
            LogLevel::Info => tracing::info!("{message}"),
            LogLevel::Debug => tracing::debug!("{message}"),
            LogLevel::Trace => tracing::trace!("{message}"),
        },
    }
}
