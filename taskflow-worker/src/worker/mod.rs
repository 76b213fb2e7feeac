//! The worker loop: what a re-executed binary runs instead of its `main`.
//!
//! [`enter`] returns at once in an ordinary process. In a worker (see
//! [`sys::startup`]) it never returns: it greets the
//! parent, then runs one task at a time, each on this thread (a blocking body
//! directly, an async body on a small current-thread runtime), streams the
//! task's log records as they are emitted, answers with the encoded output or
//! the failure, and exits when the parent says stop, closes the channel, or
//! dies. A watchdog thread notices a dead parent within a fraction of a
//! second even while a task keeps this thread busy; on Linux the kernel's
//! parent-death signal does so at once.

use std::io::{BufReader, PipeReader, PipeWriter};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::attempt::{CatchUnwind, catch_panic, record_panic_locations};
use crate::codec::CODEC_VERSION;
use crate::context::{self, TaskContext};
use crate::failure::TaskError;
use crate::id::{Tags, TaskId};
use crate::log::{LogRecord, LogSink, SharedSink};
use crate::protocol::{self, FromWorker, MAX_FRAME, PROTOCOL_VERSION, ProtocolError, ToWorker};
use crate::registry::{Body, Output, Registry};
use crate::resource::Resources;
use crate::sys::{self, Startup};

mod forward;

/// Set by the parent to the most verbose `tracing` level forwarded from a
/// worker's tasks (`error`, `warn`, `info`, `debug`, `trace`).
pub const LOG_LEVEL_ENV: &str = "TASKFLOW_WORKER_LOG";

/// Builds the resources process tasks take, inside each worker.
pub type Initializer = Box<dyn FnOnce(&mut Resources)>;

/// Serves tasks and exits if this process is a worker; returns at once
/// otherwise. `init` builds the worker's resources before its first task.
pub fn enter(init: Option<Initializer>) {
    match sys::startup() {
        Startup::Application => {}
        Startup::Orphan => std::process::exit(0),
        Startup::Worker {
            requests,
            replies,
            parent,
        } => std::process::exit(serve(requests, replies, parent, init)),
    }
}

/// The worker's replies, shared by the loop and log sinks.
#[derive(Clone)]
struct Channel(Arc<Mutex<PipeWriter>>);

impl Channel {
    fn send(&self, message: &FromWorker, payload: &[u8]) -> Result<(), ProtocolError> {
        let frame = protocol::encode_frame(message, payload)?;
        let mut stream = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::io::Write::write_all(&mut *stream, &frame)?;
        Ok(())
    }
}

impl LogSink for Channel {
    fn emit(&self, id: TaskId, record: LogRecord) {
        // A failed send means the parent is gone; the loop will notice.
        let _ = self.send(&FromWorker::Log { id, record }, &[]);
    }
}

fn serve(requests: PipeReader, replies: PipeWriter, parent: u32, init: Option<Initializer>) -> i32 {
    spawn_watchdog(parent);
    record_panic_locations();
    let writer = Channel(Arc::new(Mutex::new(replies)));
    forward::install(std::env::var(LOG_LEVEL_ENV).ok().as_deref());

    let registry = match Registry::global() {
        Ok(registry) => registry,
        Err(error) => {
            eprintln!("taskflow worker: {error}");
            return 2;
        }
    };
    let hello = FromWorker::Hello {
        protocol: PROTOCOL_VERSION,
        codec: CODEC_VERSION,
        fingerprint: registry.fingerprint(),
        pid: std::process::id(),
    };
    if writer.send(&hello, &[]).is_err() {
        return 0;
    }

    let mut state = State {
        registry,
        writer,
        init,
        resources: None,
        runtime: None,
    };
    let mut reader = BufReader::new(requests);
    loop {
        match protocol::read_frame::<ToWorker<'static>>(&mut reader) {
            Ok((
                ToWorker::Run {
                    id,
                    name,
                    attempt,
                    tags,
                },
                args,
            )) => {
                let done = state.run(id, &name, attempt, tags, &args);
                if !done {
                    return 0;
                }
            }
            Ok((ToWorker::Stop, _)) | Err(ProtocolError::Closed) => return 0,
            Err(error) => {
                eprintln!("taskflow worker: {error}");
                return 2;
            }
        }
    }
}

struct State {
    registry: &'static Registry,
    writer: Channel,
    init: Option<Initializer>,
    resources: Option<Resources>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl State {
    /// Runs one attempt and reports it; `false` when the parent is gone.
    fn run(&mut self, id: TaskId, name: &str, attempt: u32, tags: Tags, args: &[u8]) -> bool {
        let (failure, output) = match self.attempt(id, name, attempt, tags, args) {
            Ok(output) => (None, output),
            Err(failure) => (Some(failure), Vec::new()),
        };
        match self.writer.send(&FromWorker::Done { id, failure }, &output) {
            Ok(()) => true,
            // The output fit the check below but not with its header.
            Err(ProtocolError::FrameTooLarge { size, limit }) => {
                let failure = Some(output_too_large(size, limit));
                self.writer
                    .send(&FromWorker::Done { id, failure }, &[])
                    .is_ok()
            }
            Err(_) => false,
        }
    }

    fn attempt(
        &mut self,
        id: TaskId,
        name: &str,
        attempt: u32,
        tags: Tags,
        args: &[u8],
    ) -> Result<Vec<u8>, TaskError> {
        let entry = self.registry.get(name).ok_or_else(|| {
            TaskError::error(format!(
                "task `{name}` is not registered in the worker process"
            ))
        })?;
        let resources = match self.resources.take() {
            Some(resources) => resources,
            None => {
                let mut resources = Resources::new();
                if let Some(init) = self.init.take() {
                    catch_panic(|| {
                        init(&mut resources);
                        Ok(())
                    })
                    .map_err(|e| {
                        TaskError::error(format!(
                            "the worker's resource initializer panicked: {}",
                            e.message()
                        ))
                    })?;
                }
                resources
            }
        };
        let resources = &*self.resources.insert(resources);
        let context = TaskContext::new(id, entry.name(), attempt, tags)
            .with_sink(SharedSink(Arc::new(self.writer.clone())));
        let output: Output = match entry.body() {
            Body::Blocking(body) => {
                context::enter(context, || catch_panic(|| body(args, resources)))?
            }
            Body::Async(body) => {
                let runtime = match self.runtime.take() {
                    Some(runtime) => runtime,
                    None => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| {
                            TaskError::error(format!(
                                "cannot start the worker's async runtime: {e}"
                            ))
                        })?,
                };
                let runtime = &*self.runtime.insert(runtime);
                let future = catch_panic(|| body(args, resources))?;
                runtime.block_on(context::scope(context, CatchUnwind::new(future)))?
            }
        };
        let bytes = entry
            .encode_output(output.as_ref())
            .map_err(|e| TaskError::error(format!("cannot encode the task's output: {e}")))?;
        // Checked before the frame is built, so a huge output is not copied.
        if bytes.len() > MAX_OUTPUT {
            return Err(output_too_large(bytes.len(), MAX_OUTPUT));
        }
        Ok(bytes)
    }
}

/// The largest output a worker sends back: a frame, less room for its header.
const MAX_OUTPUT: usize = MAX_FRAME - 1024;

fn output_too_large(size: usize, limit: usize) -> TaskError {
    TaskError::error(format!(
        "the task's output is too large to send back: {size} bytes, limit {limit}"
    ))
}

/// Exits this worker soon after its parent dies, even while a task runs.
fn spawn_watchdog(parent: u32) {
    let watchdog = std::thread::Builder::new()
        .name("taskflow-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if std::os::unix::process::parent_id() != parent {
                    std::process::exit(0);
                }
            }
        });
    if let Err(error) = watchdog {
        eprintln!("taskflow worker: cannot start its watchdog: {error}");
    }
}
