//! A `tracing` subscriber for worker processes: events emitted inside a task
//! become log records on that task, sent to the parent as they happen.
//!
//! Spans are not tracked (a worker has no use for them); an event's message
//! and its fields become the record's message and fields.

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

use crate::log::LogRecord;

/// Makes the forwarder the worker's global subscriber. Nothing else runs in
/// a worker before this, so no subscriber is displaced.
pub(super) fn install(level: Option<&str>) {
    let max = match level.map(str::to_ascii_lowercase).as_deref() {
        Some("error") => LevelFilter::ERROR,
        Some("warn") => LevelFilter::WARN,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        Some("off") => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    };
    let _ = tracing::subscriber::set_global_default(Forwarder { max });
}

struct Forwarder {
    max: LevelFilter,
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        match self.max >= *metadata.level() && metadata.is_event() {
            // Whether an event is inside a task is known only when it fires.
            true => Interest::sometimes(),
            false => Interest::never(),
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max >= *metadata.level() && metadata.is_event()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if let Some(context) = crate::context::context() {
            context.emit(LogRecord::from_event(event));
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
