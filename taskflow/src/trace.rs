//! `tracing` events inside in-process tasks become the task's log lines, as
//! they do inside worker processes.
//!
//! An async attempt runs with a scoped dispatcher (`WithDispatch`), a thread
//! attempt inside `dispatcher::with_default`: a [`Tee`] that passes every
//! call on to the dispatcher the application had when the manager was built
//! (so its subscriber sees everything as before, spans included: the tee has
//! no spans of its own) and also records each event emitted inside a task,
//! at or above the manager's task log level, on that task.
//!
//! One limit: inside a task, `Dispatch::downcast_ref` finds the tee, not the
//! application's subscriber. Forwarding a downcast needs `unsafe`, which
//! taskflow keeps to its system calls, so tools that downcast the current
//! dispatcher (span-trace capture, say) see nothing inside tasks.

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_core::span::Current;

use taskflow_worker::LogRecord;

/// Forwards to the application's dispatcher and copies task events to the
/// running task's log.
pub(crate) struct Tee {
    inner: Dispatch,
    max: LevelFilter,
    /// The most verbose level either side wants (the application's, as its
    /// dispatchers said when the tee was made).
    hint: LevelFilter,
}

impl Tee {
    /// A dispatcher that forwards to the calling thread's current one (the
    /// application's) and records task events up to `max`.
    pub(crate) fn dispatch(max: LevelFilter) -> Dispatch {
        let inner = tracing::dispatcher::get_default(Dispatch::clone);
        let hint = LevelFilter::current().max(max);
        Dispatch::new(Tee { inner, max, hint })
    }

    fn records(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && self.max >= *metadata.level()
    }
}

impl Subscriber for Tee {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        let inner = self.inner.register_callsite(metadata);
        match self.records(metadata) {
            // Whether an event is inside a task is known only when it fires.
            true if inner.is_always() => Interest::always(),
            true => Interest::sometimes(),
            false => inner,
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata) || self.records(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.hint)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        if self.inner.enabled(metadata) {
            self.inner.event(event);
        }
        if self.records(metadata)
            && let Some(context) = taskflow_worker::context()
        {
            context.emit(LogRecord::from_event(event));
        }
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> Current {
        self.inner.current_span()
    }
}
