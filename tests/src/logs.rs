//! The runtime's log lines, captured for tests by a minimal `tracing`
//! subscriber installed as the process's global default.

use std::sync::Mutex;

use tracing::Level;
use tracing::span::{Attributes, Id, Record};

/// Keeps the message of every event at `level` or more severe (and, if
/// set, of a target starting with a prefix) in a list the test reads.
#[derive(Debug)]
pub struct LogCapture {
    lines: &'static Mutex<Vec<String>>,
    level: Level,
    target: &'static str,
    with_level: bool,
}

impl LogCapture {
    /// Captures events at `level` or more severe into `lines`.
    pub const fn new(lines: &'static Mutex<Vec<String>>, level: Level) -> Self {
        LogCapture {
            lines,
            level,
            target: "",
            with_level: false,
        }
    }

    /// Only events whose target starts with `prefix`.
    #[must_use]
    pub const fn target(mut self, prefix: &'static str) -> Self {
        self.target = prefix;
        self
    }

    /// Each line starts with the event's level (`ERROR message`).
    #[must_use]
    pub const fn with_level(mut self) -> Self {
        self.with_level = true;
        self
    }

    /// Makes it the global default; a test binary installs one at most
    /// (a second install is ignored).
    pub fn install(self) {
        let _ = tracing::subscriber::set_global_default(self);
    }
}

impl tracing::Subscriber for LogCapture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= self.level && metadata.target().starts_with(self.target)
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let line = match self.with_level {
            true => format!("{} {}", event.metadata().level(), message.0),
            false => message.0,
        };
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
