//! [`TaskCall`]: one call of a task with per-call options.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use taskflow_worker::codec::ArgsWriter;
use taskflow_worker::registry::TaskEntry;
use taskflow_worker::{CodecError, Tags};

use crate::core::{Core, Placement};
use crate::error::Error;
use crate::handle::TaskHandle;
use crate::manager::{self, TaskManager};

/// A call of a task, built by the generated `name::call(args…)`, with options
/// set before it is enqueued.
///
/// ```
/// #[taskflow::task]
/// async fn greet(name: String) -> String {
///     let tenant = taskflow::context().and_then(|c| c.tags.get("tenant").map(str::to_owned));
///     format!("hello {name} from {}", tenant.unwrap_or_default())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = taskflow::TaskManager::builder().build().await?;
/// let handle = greet::call("ada".into()).tag("tenant", "acme").enqueue_on(&manager)?;
/// assert_eq!(handle.await?, "hello ada from acme");
/// # Ok(())
/// # }
/// ```
#[must_use = "a call does nothing until it is enqueued"]
pub struct TaskCall<T> {
    entry: &'static TaskEntry,
    args: Result<Vec<u8>, (&'static str, CodecError)>,
    tags: Vec<(String, String)>,
    idempotency_key: Option<String>,
    placement: Placement,
    output: PhantomData<fn() -> T>,
}

impl<T: 'static> TaskCall<T> {
    pub(crate) fn new(entry: &'static TaskEntry, args: ArgsWriter) -> Self {
        TaskCall {
            entry,
            args: args.finish(),
            tags: Vec::new(),
            idempotency_key: None,
            placement: Placement::default(),
            output: PhantomData,
        }
    }

    /// Adds a tag; a later tag with the same key replaces an earlier one.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Makes the call idempotent: while a task of this name with this key
    /// is PENDING, RUNNING or SUCCESS, enqueueing returns a handle to that
    /// task instead of a new one. FAILED, CANCELLED and INTERRUPTED release
    /// the key.
    ///
    /// With a task store the key holds across restarts and across processes
    /// sharing the file (a unique index decides, so two enqueues racing in
    /// different processes still yield one task), and the enqueue waits for
    /// the store's answer. Without one it holds within this manager.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Puts the task in queue `name` (instead of its declared queue, or
    /// `"default"`): it takes a slot of that queue's concurrency and counts
    /// against its `max_size`.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.placement.queue = Some(name.into());
        self
    }

    /// Runs the task ahead of lower priorities in its queue (higher first;
    /// the same priority in arrival order). Default: its declared priority,
    /// else 0.
    pub fn priority(mut self, priority: i16) -> Self {
        self.placement.priority = Some(priority);
        self
    }

    /// Starts the task no earlier than `delay` from now. It is PENDING
    /// meanwhile, with its `run_at` on its record; with a task store it
    /// waits as a row, so a restart keeps the appointment.
    ///
    /// ```
    /// # use std::time::Duration;
    /// #[taskflow::task]
    /// async fn remind(who: String) {}
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tasks = taskflow::TaskManager::builder().build().await?;
    /// let later = remind::call("ada".into())
    ///     .delay(Duration::from_millis(50))
    ///     .enqueue_on(&tasks)?;
    /// assert!(later.record().run_at > later.record().created_at);
    /// later.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.placement.run_at = Some(SystemTime::now() + delay);
        self
    }

    /// Starts the task no earlier than `time` (a wall-clock time; one in
    /// the past means now). See [`delay`](Self::delay).
    pub fn run_at(mut self, time: SystemTime) -> Self {
        self.placement.run_at = Some(time);
        self
    }

    /// Enqueues on the installed default manager.
    ///
    /// # Errors
    ///
    /// [`Error::NoManager`] when none is installed, and everything
    /// [`enqueue_on`](Self::enqueue_on) reports.
    pub fn enqueue(self) -> Result<TaskHandle<T>, Error> {
        manager::with_installed(|core| self.enqueue_into(core)).unwrap_or(Err(Error::NoManager))
    }

    /// Enqueues on `manager`.
    ///
    /// # Errors
    ///
    /// [`Error::ShutDown`] after shutdown, [`Error::MissingResource`] when the
    /// manager lacks a resource the task takes, [`Error::Argument`] when an
    /// argument could not be encoded, and [`Error::QueueFull`] when its queue
    /// holds its `max_size` of PENDING tasks, and [`Error::InvalidQueue`] for
    /// a blank queue name, one over 128 bytes or one with control
    /// characters. Nothing is recorded in any of these cases.
    pub fn enqueue_on(self, manager: &TaskManager) -> Result<TaskHandle<T>, Error> {
        self.enqueue_into(manager.core())
    }

    /// Enqueues inside the application's PostgreSQL `transaction`, in the
    /// task store of schema `taskflow`: the task exists if and only if the
    /// transaction commits (the outbox pattern), and is then claimed by
    /// whichever instance sharing that store runs this task, woken at the
    /// commit. Returns the task's id, for
    /// [`TaskManager::get`](crate::TaskManager::get) and the rest; with an
    /// idempotency key already held, the holder's id and nothing written.
    ///
    /// The row is the one an enqueue on a manager writes, with the task's
    /// declared queue and priority unless the call sets them. What only a
    /// manager knows is not checked here: its resources and its queues'
    /// `max_size`. The store's schema must exist: a manager on the same
    /// database creates it at its first start.
    ///
    /// ```no_run
    /// #[taskflow::task]
    /// async fn send_receipt(order: u64) {}
    ///
    /// # async fn checkout(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let transaction = client.transaction().await?;
    /// transaction.execute("UPDATE orders SET paid = true WHERE id = $1", &[&42_i64]).await?;
    /// let id = send_receipt::call(42).enqueue_in(&transaction).await?;
    /// transaction.commit().await?; // the receipt is sent only if the order is paid
    /// # let _ = id;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Argument`] when an argument could not be encoded,
    /// [`Error::InvalidQueue`] for an invalid queue name, and
    /// [`Error::StoreFailed`] when the statement fails (the transaction is
    /// then aborted, as after any failed statement).
    #[cfg(feature = "postgres")]
    pub async fn enqueue_in(
        self,
        transaction: &tokio_postgres::Transaction<'_>,
    ) -> Result<taskflow_worker::TaskId, Error> {
        self.enqueue_in_schema(transaction, crate::store::DEFAULT_SCHEMA)
            .await
    }

    /// As [`enqueue_in`](Self::enqueue_in), in the task store of schema
    /// `schema` (see [`PostgresConfig::schema`](crate::store::PostgresConfig::schema)).
    ///
    /// # Errors
    ///
    /// As [`enqueue_in`](Self::enqueue_in), and [`Error::InvalidOption`]
    /// for an invalid schema name.
    #[cfg(feature = "postgres")]
    pub async fn enqueue_in_schema(
        self,
        transaction: &tokio_postgres::Transaction<'_>,
        schema: &str,
    ) -> Result<taskflow_worker::TaskId, Error> {
        let args = self.args.map_err(|(argument, source)| Error::Argument {
            task: self.entry.name(),
            argument,
            source,
        })?;
        let defaults = self.entry.defaults();
        let queue = self
            .placement
            .queue
            .as_deref()
            .or(defaults.queue)
            .unwrap_or(crate::queue::DEFAULT_QUEUE);
        if let Some(reason) = crate::queue::invalid_queue_name(queue) {
            return Err(Error::InvalidQueue {
                queue: queue.to_owned(),
                reason,
            });
        }
        let now = SystemTime::now();
        let id = taskflow_worker::TaskId::at(now);
        let mut task =
            crate::store::NewTask::new(id, self.entry.name(), self.entry.executor(), now);
        task.queue = queue.to_owned();
        task.priority = self.placement.priority.unwrap_or(defaults.priority);
        task.args = args;
        task.tags = Tags::from_pairs(self.tags);
        task.idempotency_key = self.idempotency_key;
        task.state.run_at = self.placement.run_at.unwrap_or(now);
        match crate::store::insert_in(transaction, schema, task).await? {
            crate::store::Inserted::Existing(holder) => match *holder {
                Ok(holder) => Ok(holder.record.id),
                Err(corrupt) => Err(Error::CorruptRow {
                    id: corrupt.id.unwrap_or(id),
                    reason: corrupt.reason,
                }),
            },
            _ => Ok(id),
        }
    }

    /// What a schedule added with this call enqueues at each tick: the
    /// task, its encoded arguments, tags, and queue and priority if set.
    pub(crate) fn into_schedule_call(self) -> Result<crate::schedule::ticker::Call, Error> {
        let args = self.args.map_err(|(argument, source)| Error::Argument {
            task: self.entry.name(),
            argument,
            source,
        })?;
        Ok(crate::schedule::ticker::Call {
            entry: self.entry,
            args,
            tags: Tags::from_pairs(self.tags),
            queue: self.placement.queue,
            priority: self.placement.priority,
        })
    }

    fn enqueue_into(self, core: &Arc<Core>) -> Result<TaskHandle<T>, Error> {
        let args = self.args.map_err(|(argument, source)| Error::Argument {
            task: self.entry.name(),
            argument,
            source,
        })?;
        let tags = Tags::from_pairs(self.tags);
        let cell = core.enqueue(self.entry, args, tags, self.idempotency_key, self.placement)?;
        Ok(TaskHandle::new(cell))
    }
}

impl<T> fmt::Debug for TaskCall<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCall")
            .field("task", &self.entry.name())
            .field("tags", &self.tags)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}
