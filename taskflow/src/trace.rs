//! `tracing` events inside in-process tasks become the task's log lines, as
//! they do inside worker processes.
//!
//! Every poll of an async attempt, and every thread attempt, runs with a
//! scoped dispatcher ([`TaskTee::scope`]): a [`Tee`] that passes every
//! call on to the dispatcher the application had when the manager was built
//! (so its subscriber sees everything as before, spans included: the tee has
//! no spans of its own) and also records each event emitted inside a task,
//! at or above the manager's task log level, on that task.
//!
//! One limit: inside a task, `Dispatch::downcast_ref` finds the tee, not the
//! application's subscriber. Forwarding a downcast needs `unsafe`, which
//! taskflow keeps to its system calls, so tools that downcast the current
//! dispatcher (span-trace capture, say) see nothing inside tasks.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_core::span::Current;

use taskflow_worker::LogRecord;

/// Most tees a thread keeps a `Dispatch` of (one per manager whose
/// attempts it ran lately).
const HELD_PER_THREAD: usize = 4;

thread_local! {
    /// This thread's own `Dispatch` of each tee it ran attempts with lately,
    /// by the tee's address (a held `Dispatch` keeps its tee, so the address
    /// is not reused meanwhile).
    static HELD: RefCell<Vec<(usize, Dispatch)>> = const { RefCell::new(Vec::new()) };
}

/// A manager's tee, made a thread's dispatcher around each attempt.
///
/// Making a dispatcher the default clones it. One `Dispatch` shared by
/// every thread would be one reference count that all of them write on
/// every poll, so each thread makes (once) and clones a `Dispatch` of its
/// own over the one tee.
pub(crate) struct TaskTee(Arc<Tee>);

impl TaskTee {
    /// A tee that forwards to the calling thread's current dispatcher (the
    /// application's) and records task events up to `max`.
    pub(crate) fn new(max: LevelFilter) -> Self {
        let inner = tracing::dispatcher::get_default(Dispatch::clone);
        let hint = LevelFilter::current().max(max);
        TaskTee(Arc::new(Tee { inner, max, hint }))
    }

    /// Runs `f` with the tee as this thread's dispatcher (unless it records
    /// nothing: then as it is).
    pub(crate) fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.0.max == LevelFilter::OFF {
            return f();
        }
        let key = Arc::as_ptr(&self.0) as usize;
        // Made the default from the thread's own `Dispatch` while it is
        // borrowed: the guard holds the one clone a switch needs.
        let _guard = HELD
            .try_with(|held| {
                let mut held = held.borrow_mut();
                if let Some((_, dispatch)) = held.iter().find(|(tee, _)| *tee == key) {
                    return tracing::dispatcher::set_default(dispatch);
                }
                if held.len() == HELD_PER_THREAD {
                    held.remove(0);
                }
                let dispatch = Dispatch::new(self.0.clone());
                let guard = tracing::dispatcher::set_default(&dispatch);
                held.push((key, dispatch));
                guard
            })
            // The thread is exiting: a `Dispatch` for this once.
            .unwrap_or_else(|_| tracing::dispatcher::set_default(&Dispatch::new(self.0.clone())));
        f()
    }
}

impl fmt::Debug for TaskTee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskTee").field("max", &self.0.max).finish()
    }
}

/// Forwards to the application's dispatcher and copies task events to the
/// running task's log.
struct Tee {
    inner: Dispatch,
    max: LevelFilter,
    /// The most verbose level either side wants (the application's, as its
    /// dispatchers said when the tee was made).
    hint: LevelFilter,
}

impl Tee {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The application's subscriber: counts the events it is given.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Subscriber for Counter {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }

        fn record(&self, _: &Id, _: &Record<'_>) {}

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, _: &Event<'_>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn the_application_sees_every_event_under_more_tees_than_a_thread_holds() {
        let counter = Arc::new(Counter::default());
        let application = Dispatch::new(counter.clone());
        let tees = HELD_PER_THREAD + 2;
        tracing::dispatcher::with_default(&application, || {
            let tees: Vec<TaskTee> = (0..tees).map(|_| TaskTee::new(LevelFilter::INFO)).collect();
            for round in 0..3 {
                for tee in &tees {
                    tee.scope(|| tracing::info!(round, "inside a tee"));
                }
            }
            std::thread::scope(|threads| {
                threads.spawn(|| tees[0].scope(|| tracing::info!("on another thread")));
            });
        });
        assert_eq!(counter.0.load(Ordering::SeqCst), 3 * tees + 1);
    }

    #[test]
    fn a_tee_that_records_nothing_leaves_the_dispatcher_alone() {
        let inside = |level| {
            TaskTee::new(level).scope(|| tracing::dispatcher::get_default(|d| d.is::<Tee>()))
        };
        assert!(inside(LevelFilter::INFO));
        assert!(!inside(LevelFilter::OFF));
    }
}
