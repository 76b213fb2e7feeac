//! The PostgreSQL backend (feature `postgres`): one queue shared by every
//! host that names the same database and schema, each task run once.
//!
//! **Client.** `tokio-postgres` with a `deadpool-postgres` pool: async,
//! pipelined (statements sent together travel together), no database at
//! compile time, and a pool that drops connections the server closed
//! (`pg_terminate_backend`, a restart) and opens new ones on demand. The
//! store drives its connections on a runtime of its own (one thread,
//! `taskflow-postgres`), as the SQLite store owns its writer thread: a
//! store call completes whatever runtime polls it, or none (a synchronous
//! keyed enqueue parks its thread on one), and the store's I/O never
//! queues behind the application's tasks.
//!
//! **Schema.** Every table lives in the store's schema (`taskflow` unless
//! configured), created at the first start by numbered migration files
//! ([`migrate`]) under an advisory lock, so hosts starting at once migrate
//! once; a schema from a newer taskflow is refused with
//! [`Error::DatabaseSchemaTooNew`]. Statements name tables with the schema
//! ([`sql`]), so they mean the same on the store's pool, an application's
//! pool, and inside an application's transaction.
//!
//! **Claims.** One statement per claim: for each demand (a queue and
//! executor, its task names and free slots), the best ready rows in claim
//! order (priority, `run_at`, then `seq`, the insertion order), locked
//! with `FOR UPDATE SKIP LOCKED` so concurrent claimers pass over each
//! other's rows instead of waiting, then marked RUNNING for the claimer.
//! The claimer must hold a live lease (by the server's clock) in the same
//! statement, so an instance found dead claims nothing more.
//! Rows of another codec version are left to a binary that reads them;
//! a claimed row that turns out unreadable is given back and skipped by
//! this store's later claims.
//!
//! **Claim on insert, between hosts.** A batch inserted with claims checks,
//! per queue and executor, that no ready PENDING task as good waits and
//! that the queue is not paused, and writes its rows, in one statement:
//! the check and the write see one snapshot. A task that committed before
//! that snapshot is seen, so a claimed insert never jumps it. One that
//! commits while the statement runs was enqueued concurrently: either
//! order is a correct queue, and PostgreSQL's serializable isolation
//! itself would accept this one (the insert ordered first). A per-queue
//! advisory lock would order such inserts by commit instead, but every
//! insert of every host would then take it, and a host frozen while
//! holding it (`SIGSTOP`, a partition) would stall enqueues of that queue
//! on all hosts: the snapshot gives the rule without a lock to hold.
//!
//! **Wake-ups.** Statements `NOTIFY` at commit when tasks become ready or
//! finish; one connection per store `LISTEN`s ([`listen`]) and wakes the
//! claimer through [`Store::notifications`], so work queued on one host
//! starts on an idle one at once. Polling stays the fallback, and the only
//! query of an idle instance. Behind a pooler that drops notifications,
//! [`PostgresConfig::listen`] turns listening off.
//!
//! **Leases and upkeep.** Instance leases and the upkeep lease
//! ([`Store::lead`]: one instance at a time rescues dead instances' tasks
//! and prunes) are measured with the server's clock, `now()`, so hosts
//! with skewed clocks agree. Task times (`run_at`, `started_at`) are the
//! callers', as the trait says.
//!
//! **Failures.** Every failure of a call is a [`StoreError::Backend`]
//! naming what was being done; the runtime keeps what it wanted to write
//! and tries again. A first connection that fails is a typed error:
//! [`Error::DatabaseUnreachable`], [`Error::DatabaseAuth`],
//! [`Error::DatabaseMissing`].

mod config;
pub(crate) mod insert;
mod listen;
mod migrate;
mod rows;
mod schedules;
mod sql;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Object, Pool};
use taskflow_worker::codec::{self, CODEC_VERSION};
use taskflow_worker::{LogRecord, TaskId};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::types::ToSql;

use self::config::{Target, connect_error, refused};
use self::insert::{Failure, Prepared, insert_tasks};
use self::migrate::{Migrated, migrate};
use self::sql::{InsertSql, Sql};
use super::{
    BoxFuture, Change, Claimed, Demand, Expect, Fire, Fired, Heartbeat, Inserted, InstanceInfo,
    Listed, LogLine, NewTask, Notifications, QueueRow, Row, ScheduleRead, ScheduleRow, Store,
    StoreError, queue_rows,
};
use crate::error::Error;
use crate::record::TaskFilter;

pub use self::config::{DEFAULT_SCHEMA, PostgresConfig};

/// Tasks in a PostgreSQL database, shared by every host that opens the
/// same database and schema.
///
/// A manager opens one with
/// [`TaskManagerBuilder::postgres`](crate::TaskManagerBuilder::postgres);
/// opening one directly is for tools and for testing the [`Store`]
/// contract.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use taskflow::store::{PostgresConfig, PostgresStore, Store};
/// let config = PostgresConfig::new("postgres://postgres@127.0.0.1/app").schema("jobs");
/// let store = PostgresStore::open(config).await?;
/// for queue in store.queues().await? {
///     println!("{}: {} pending", queue.name, queue.pending);
/// }
/// # Ok(())
/// # }
/// ```
pub struct PostgresStore {
    shared: Arc<Shared>,
    wake: Option<Arc<Notifications>>,
    schema: String,
    server: String,
    handle: Handle,
    /// Last: the connections above stop before their runtime does.
    _driver: Driver,
}

/// What every call of a store works with, on the store's runtime.
struct Shared {
    pool: Pool,
    sql: Sql,
    channel: String,
    /// This store's mark on its notifications, so its listener passes over
    /// its own (the claimer here learns of those without them).
    token: String,
    /// Rows this store found unreadable: claims skip them.
    corrupt: Mutex<HashSet<i64>>,
}

impl PostgresStore {
    /// Connects as `config` says, creates the store's schema and tables
    /// or brings them up to date, and starts listening for other hosts'
    /// changes (unless told not to).
    ///
    /// # Errors
    ///
    /// [`Error::DatabaseUnreachable`] when no server answers (within the
    /// connect timeout), [`Error::DatabaseAuth`] when it refuses the user
    /// or password, [`Error::DatabaseMissing`] when the database does not
    /// exist, [`Error::DatabaseSchemaTooNew`] for a schema written by a
    /// newer taskflow, [`Error::OpenDatabase`] for an invalid connection
    /// string or a schema that cannot be created, [`Error::InvalidOption`]
    /// for an invalid schema name, and [`Error::SpawnThread`] when the
    /// store's thread cannot start.
    pub async fn open(config: PostgresConfig) -> Result<Self, Error> {
        let schema = config.checked_schema()?.to_owned();
        let target = config.target()?;
        let (driver, handle) = Driver::start(config.lent_pool().cloned())?;
        let server = target.server.clone();
        let setup = {
            let schema = schema.clone();
            handle.spawn(async move {
                let mut client = target
                    .pool
                    .get()
                    .await
                    .map_err(|error| refused(error, &target, &schema))?;
                match migrate(&mut client, &schema).await {
                    Ok(Migrated::UpToDate) => Ok(target),
                    Ok(Migrated::TooNew { found, supported }) => Err(Error::DatabaseSchemaTooNew {
                        server: target.server.clone(),
                        schema,
                        found,
                        supported,
                    }),
                    Err(error) => Err(connect_error(error, &target, &schema)),
                }
            })
        };
        let target: Target = setup.await.map_err(|error| Error::OpenDatabase {
            server: server.clone(),
            schema: schema.clone(),
            source: format!("the store's setup stopped: {error}").into(),
        })??;
        let channel = listen::channel(&schema);
        let token = TaskId::new().to_string();
        let wake = target.listen.map(|listen_config| {
            let wake = Arc::new(Notifications::default());
            let mark = (channel.clone(), token.clone());
            drop(handle.spawn(listen::listen(listen_config, mark, wake.clone())));
            wake
        });
        Ok(PostgresStore {
            shared: Arc::new(Shared {
                pool: target.pool,
                sql: Sql::new(&schema),
                channel,
                token,
                corrupt: Mutex::default(),
            }),
            wake,
            schema,
            server,
            handle,
            _driver: driver,
        })
    }

    /// The schema this store keeps its tables in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Runs `work` on the store's runtime with a pooled connection, now
    /// (not at the first poll, so calls made back to back pipeline), and
    /// returns the wait for its answer.
    fn run<T, F, Fut>(
        &self,
        what: &'static str,
        work: F,
    ) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>, Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let shared = self.shared.clone();
        let task = self.handle.spawn(async move {
            let client = shared.pool.get().await?;
            work(shared, client).await
        });
        Box::pin(async move {
            let backend = |source: Failure| StoreError::Backend {
                context: format!("cannot {what}"),
                source,
            };
            match task.await {
                Ok(outcome) => outcome.map_err(backend),
                Err(error) if error.is_cancelled() => Err(StoreError::Closed),
                Err(error) => Err(backend(format!("the store's task failed: {error}").into())),
            }
        })
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.server)
            .field("schema", &self.schema)
            .field("listening", &self.wake.is_some())
            .finish_non_exhaustive()
    }
}

/// The runtime the store's connections live on; stopped with the store.
/// A connection's driver runs where it was opened, so connections the store
/// opens in an application's pool (`lent`) die with this runtime: they are
/// taken out of that pool first, and the application's next `get` opens
/// fresh ones instead of receiving one that is about to close.
struct Driver {
    runtime: Option<Runtime>,
    lent: Option<Pool>,
}

impl Driver {
    /// Starts the runtime; a handle to spawn on it.
    fn start(lent: Option<Pool>) -> Result<(Self, Handle), Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("taskflow-postgres")
            .enable_all()
            .build()
            .map_err(|source| Error::SpawnThread {
                name: "taskflow-postgres".into(),
                source,
            })?;
        let handle = runtime.handle().clone();
        let runtime = Some(runtime);
        Ok((Driver { runtime, lent }, handle))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pool) = self.lent.take() {
            // Idle connections, whoever opened them: those the application
            // opened cost a reconnect, which is cheaper than telling them
            // apart. One checked out now closes under its user (its next
            // query fails once) and is discarded when it is returned.
            drop(pool.retain(|_, _| false));
        }
        // Without waiting: a store may be dropped on an async runtime's
        // thread, where blocking is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Inserts `task` within the application's `transaction`, into the store
/// in `schema`: the row [`Store::insert`] would write, there if and only if
/// the transaction commits (listeners learn of it then).
pub(crate) async fn insert_in(
    transaction: &tokio_postgres::Transaction<'_>,
    schema: &str,
    task: NewTask,
) -> Result<Inserted, Error> {
    config::check_schema(schema)?;
    let failed = |source: Failure| {
        Error::StoreFailed(StoreError::Backend {
            context: "cannot enqueue a task in the transaction".to_owned(),
            source,
        })
    };
    let sql = InsertSql::new(schema);
    let prepared = Prepared::Typed(&sql);
    // Marked by no store: every listener takes it as another's.
    let channel = listen::channel(schema);
    let mut answers = insert_tasks(transaction, &prepared, (&channel, ""), &[task])
        .await
        .map_err(failed)?;
    answers
        .pop()
        .ok_or_else(|| failed("the store answered nothing".into()))
}

/// The codec version this binary reads and writes, as stored.
pub(super) fn codec_version() -> i32 {
    i32::try_from(CODEC_VERSION).unwrap_or(i32::MAX)
}

/// Microseconds of `duration`, as the server's interval arithmetic takes
/// them.
fn micros(duration: Duration) -> f64 {
    duration.as_micros() as f64
}

impl Store for PostgresStore {
    fn insert(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<Inserted>, StoreError>> {
        self.run("insert tasks", move |shared, client| async move {
            if tasks.is_empty() {
                return Ok(Vec::new());
            }
            let prepared = Prepared::cached(&client, &shared.sql.insert).await?;
            let notify = (shared.channel.as_str(), shared.token.as_str());
            insert_tasks(&**client, &prepared, notify, &tasks).await
        })
    }

    fn apply(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        self.run("update tasks", move |shared, client| async move {
            apply(&shared, client, &changes).await
        })
    }

    fn append_logs(
        &self,
        lines: Vec<LogLine>,
        per_task: u32,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run("store log lines", move |shared, client| async move {
            append_logs(&shared, &client, &lines, per_task).await
        })
    }

    fn claim_ready<'a>(
        &'a self,
        owner: &'a str,
        demand: &'a [Demand],
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Claimed, StoreError>> {
        let (owner, demand) = (owner.to_owned(), demand.to_vec());
        self.run("claim tasks", move |shared, client| async move {
            claim_ready(&shared, &client, &owner, &demand, now).await
        })
    }

    fn get(&self, id: TaskId) -> BoxFuture<'_, Result<Option<Row>, StoreError>> {
        self.run("read a task", move |shared, client| async move {
            let (get, logs) = tokio::try_join!(
                client.prepare_cached(&shared.sql.get),
                client.prepare_cached(&shared.sql.logs),
            )?;
            let id = id.as_uuid();
            let by_id: &[&(dyn ToSql + Sync)] = &[&id];
            let (row, logs) =
                tokio::try_join!(client.query_opt(&get, by_id), client.query(&logs, by_id))?;
            Ok(row.map(|row| {
                rows::read(&row).map(|mut task| {
                    task.record.logs = logs.iter().map(rows::read_log).collect();
                    task
                })
            }))
        })
    }

    fn get_many<'a>(&'a self, ids: &'a [TaskId]) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(TaskId::as_uuid).collect();
        self.run("read tasks", move |shared, client| async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let statement = client.prepare_cached(&shared.sql.get_many).await?;
            let rows = client.query(&statement, &[&ids]).await?;
            Ok(rows.iter().map(rows::read).collect())
        })
    }

    fn list<'a>(&'a self, filter: &'a TaskFilter) -> BoxFuture<'a, Result<Listed, StoreError>> {
        let filter = filter.clone();
        self.run("list tasks", move |shared, client| async move {
            list(&shared, &client, &filter).await
        })
    }

    fn request_cancel(&self, id: TaskId) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.run("ask for a cancellation", move |shared, client| async move {
            let statement = client.prepare_cached(&shared.sql.request_cancel).await?;
            Ok(client.execute(&statement, &[&id.as_uuid()]).await? == 1)
        })
    }

    fn heartbeat<'a>(
        &'a self,
        instance: &'a InstanceInfo,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Heartbeat, StoreError>> {
        let instance = instance.clone();
        self.run(
            "renew this instance's lease",
            move |shared, client| async move {
                let sql = &shared.sql;
                let (renew, cancels, others) = tokio::try_join!(
                    client.prepare_cached(&sql.heartbeat),
                    client.prepare_cached(&sql.cancels),
                    client.prepare_cached(&sql.others),
                )?;
                let (pid, lease) = (i64::from(instance.pid), micros(lease));
                let renewal: &[&(dyn ToSql + Sync)] = &[&instance.id, &lease, &pid, &instance.host];
                let by_id: &[&(dyn ToSql + Sync)] = &[&instance.id];
                // Sent together, run in order: the lease first.
                let (held, cancel, others) = tokio::try_join!(
                    client.query_one(&renew, renewal),
                    client.query(&cancels, by_id),
                    client.query_one(&others, by_id),
                )?;
                Ok(Heartbeat {
                    held: held.try_get(0)?,
                    cancel: cancel.iter().filter_map(|row| rows::id(row, 0)).collect(),
                    others: usize::try_from(others.try_get::<_, i64>(0)?).unwrap_or(0),
                })
            },
        )
    }

    fn expired_instances(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.run("find expired instances", |shared, client| async move {
            let statement = client.prepare_cached(&shared.sql.expired).await?;
            let rows = client.query(&statement, &[]).await?;
            Ok(rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    fn orphans<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        let instance = instance.to_owned();
        self.run(
            "find an instance's tasks",
            move |shared, client| async move {
                let statement = client.prepare_cached(&shared.sql.orphans).await?;
                let rows = client.query(&statement, &[&instance]).await?;
                Ok(rows.iter().map(rows::read).collect())
            },
        )
    }

    fn owned<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<TaskId>, StoreError>> {
        let instance = instance.to_owned();
        self.run(
            "find an instance's task ids",
            move |shared, client| async move {
                let statement = client.prepare_cached(&shared.sql.owned).await?;
                let rows = client.query(&statement, &[&instance]).await?;
                Ok(rows.iter().filter_map(|row| rows::id(row, 0)).collect())
            },
        )
    }

    fn retire<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let instance = instance.to_owned();
        self.run("retire an instance", move |shared, client| async move {
            let statement = client.prepare_cached(&shared.sql.retire).await?;
            client.execute(&statement, &[&instance]).await?;
            Ok(())
        })
    }

    fn retire_expired<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let instance = instance.to_owned();
        self.run(
            "retire an expired instance",
            move |shared, client| async move {
                let statement = client.prepare_cached(&shared.sql.retire_expired).await?;
                Ok(client.execute(&statement, &[&instance]).await? == 1)
            },
        )
    }

    fn prune(&self, before: SystemTime) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.run("prune old tasks", move |shared, client| async move {
            let statement = client.prepare_cached(&shared.sql.prune).await?;
            let pruned: i64 = client.query_one(&statement, &[&before]).await?.try_get(0)?;
            Ok(u64::try_from(pruned).unwrap_or(0))
        })
    }

    fn unfinished_names(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.run("read task names", |shared, client| async move {
            let statement = client.prepare_cached(&shared.sql.unfinished_names).await?;
            let rows = client.query(&statement, &[]).await?;
            Ok(rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<QueueRow>, StoreError>> {
        self.run("read queues", |shared, client| async move {
            let (settings, counts) = tokio::try_join!(
                client.prepare_cached(&shared.sql.queue_settings),
                client.prepare_cached(&shared.sql.queue_counts),
            )?;
            let (settings, counts) =
                tokio::try_join!(client.query(&settings, &[]), client.query(&counts, &[]))?;
            let settings = settings
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
            let counts = counts
                .iter()
                .map(|row| {
                    let count = u64::try_from(row.try_get::<_, i64>(2)?).unwrap_or(0);
                    Ok((row.try_get(0)?, row.try_get(1)?, count))
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
            Ok(queue_rows(settings, counts))
        })
    }

    fn set_paused<'a>(
        &'a self,
        queue: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let queue = queue.to_owned();
        self.run(
            "pause or resume a queue",
            move |shared, client| async move {
                let statement = client.prepare_cached(&shared.sql.set_paused).await?;
                client
                    .query(
                        &statement,
                        &[&queue, &paused, &shared.channel, &shared.token],
                    )
                    .await?;
                Ok(())
            },
        )
    }

    fn notifications(&self) -> Option<Arc<Notifications>> {
        self.wake.clone()
    }

    fn lead<'a>(
        &'a self,
        instance: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let instance = instance.to_owned();
        self.run(
            "take or keep the upkeep lease",
            move |shared, client| async move {
                let statement = client.prepare_cached(&shared.sql.lead).await?;
                let row = client
                    .query_opt(&statement, &[&instance, &micros(lease)])
                    .await?;
                Ok(row.is_some())
            },
        )
    }

    fn fire(&self, fires: Vec<Fire>) -> BoxFuture<'_, Result<Vec<Fired>, StoreError>> {
        self.run("fire schedules", move |shared, client| async move {
            let mut answers = Vec::with_capacity(fires.len());
            for fire in &fires {
                answers.push(schedules::fire(&shared, &client, fire).await?);
            }
            Ok(answers)
        })
    }

    fn declare_schedules(&self, rows: Vec<ScheduleRow>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run("declare schedules", move |shared, client| async move {
            schedules::declare(&shared, &client, &rows).await
        })
    }

    fn add_schedule(&self, row: ScheduleRow) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.run("add a schedule", move |shared, client| async move {
            schedules::add(&shared, &client, &row).await
        })
    }

    fn remove_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let name = name.to_owned();
        self.run("remove a schedule", move |shared, client| async move {
            schedules::remove(&shared, &client, &name).await
        })
    }

    fn set_schedule_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let name = name.to_owned();
        self.run(
            "pause or resume a schedule",
            move |shared, client| async move {
                schedules::set_paused(&shared, &client, &name, paused, now).await
            },
        )
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<ScheduleRead>, StoreError>> {
        self.run("read schedules", |shared, client| async move {
            schedules::list(&shared, &client).await
        })
    }
}

/// Applies `changes` in order. Changes to distinct tasks go in one
/// statement; a task changed twice in one batch makes the batch run in
/// rounds (each task once per round), in one transaction, so each change
/// sees the row as the changes before it left it.
async fn apply(
    shared: &Shared,
    mut client: Object,
    changes: &[Change],
) -> Result<Vec<bool>, Failure> {
    let mut answers = vec![false; changes.len()];
    if changes.is_empty() {
        return Ok(answers);
    }
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<TaskId, usize> = HashMap::new();
    for (at, change) in changes.iter().enumerate() {
        let round = seen.entry(change.id).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(at);
        *round += 1;
    }
    let statement = client.prepare_cached(&shared.sql.apply).await?;
    if let [round] = rounds.as_slice() {
        let written = ChangeColumns::of(changes, round)
            .run(&**client, &statement, shared)
            .await?;
        mark(&mut answers, round, &written);
        return Ok(answers);
    }
    let transaction = client.transaction().await?;
    for round in &rounds {
        let written = ChangeColumns::of(changes, round)
            .run(&*transaction, &statement, shared)
            .await?;
        mark(&mut answers, round, &written);
    }
    transaction.commit().await?;
    Ok(answers)
}

/// Marks as written the changes of `round` at the positions (from 1) the
/// statement answered.
fn mark(answers: &mut [bool], round: &[usize], written: &[i64]) {
    for &position in written {
        let index = usize::try_from(position - 1).ok();
        if let Some(&at) = index.and_then(|index| round.get(index)) {
            answers[at] = true;
        }
    }
}

/// Changes to distinct tasks as parallel arrays, as `sql::APPLY` binds them.
struct ChangeColumns {
    id: Vec<uuid::Uuid>,
    status: Vec<&'static str>,
    attempts: Vec<i32>,
    run_at: Vec<SystemTime>,
    started_at: Vec<Option<SystemTime>>,
    finished_at: Vec<Option<SystemTime>>,
    error_kind: Vec<Option<&'static str>>,
    error_message: Vec<Option<String>>,
    owner: Vec<Option<String>>,
    output: Vec<Option<Vec<u8>>>,
    was_status: Vec<&'static str>,
    was_attempts: Vec<i32>,
    was_owner: Vec<Option<String>>,
}

impl ChangeColumns {
    fn of(changes: &[Change], round: &[usize]) -> Self {
        let attempts = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let mut columns = ChangeColumns {
            id: Vec::with_capacity(round.len()),
            status: Vec::with_capacity(round.len()),
            attempts: Vec::with_capacity(round.len()),
            run_at: Vec::with_capacity(round.len()),
            started_at: Vec::with_capacity(round.len()),
            finished_at: Vec::with_capacity(round.len()),
            error_kind: Vec::with_capacity(round.len()),
            error_message: Vec::with_capacity(round.len()),
            owner: Vec::with_capacity(round.len()),
            output: Vec::with_capacity(round.len()),
            was_status: Vec::with_capacity(round.len()),
            was_attempts: Vec::with_capacity(round.len()),
            was_owner: Vec::with_capacity(round.len()),
        };
        for &at in round {
            let change = &changes[at];
            let state = &change.state;
            let error = state.last_error.as_ref();
            columns.id.push(change.id.as_uuid());
            columns.status.push(state.status.as_str());
            columns.attempts.push(attempts(state.attempts));
            columns.run_at.push(state.run_at);
            columns.started_at.push(state.started_at);
            columns.finished_at.push(state.finished_at);
            columns.error_kind.push(error.map(|e| e.kind().as_str()));
            columns
                .error_message
                .push(error.map(|e| e.message().to_owned()));
            columns.owner.push(state.owner.clone());
            columns.output.push(state.output.clone());
            let (status, was_attempts, owner) = match &change.expect {
                Expect::Owned { owner, attempts } => ("RUNNING", *attempts, Some(owner.clone())),
                Expect::Status {
                    status,
                    attempts,
                    owner,
                } => (status.as_str(), *attempts, owner.clone()),
            };
            columns.was_status.push(status);
            columns.was_attempts.push(attempts(was_attempts));
            columns.was_owner.push(owner);
        }
        columns
    }

    /// Runs the statement; the positions (from 1) of the changes written.
    async fn run<C>(
        &self,
        client: &C,
        statement: &tokio_postgres::Statement,
        shared: &Shared,
    ) -> Result<Vec<i64>, Failure>
    where
        C: tokio_postgres::GenericClient + Sync,
    {
        let rows = client
            .query(
                statement,
                &[
                    &self.id,
                    &self.status,
                    &self.attempts,
                    &self.run_at,
                    &self.started_at,
                    &self.finished_at,
                    &self.error_kind,
                    &self.error_message,
                    &self.owner,
                    &self.output,
                    &self.was_status,
                    &self.was_attempts,
                    &self.was_owner,
                    &shared.channel,
                    &shared.token,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<_, _>>()?)
    }
}

/// Keeps each task's latest `per_task` lines: a batch's lines past the cap
/// are never written, and stored lines they push past it are deleted; both
/// are counted on the task. The lines are numbered after each task's
/// latest stored line, read first (a task logs from one instance at a
/// time, so nobody numbers its lines meanwhile).
async fn append_logs(
    shared: &Shared,
    client: &Object,
    lines: &[LogLine],
    per_task: u32,
) -> Result<(), Failure> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut by_task: Vec<(TaskId, Vec<&LogRecord>)> = Vec::new();
    let mut place: HashMap<TaskId, usize> = HashMap::new();
    for line in lines {
        let index = *place.entry(line.task).or_insert_with(|| {
            by_task.push((line.task, Vec::new()));
            by_task.len() - 1
        });
        by_task[index].1.push(&line.record);
    }
    let (last, append) = tokio::try_join!(
        client.prepare_cached(&shared.sql.last_log_lines),
        client.prepare_cached(&shared.sql.append_logs),
    )?;
    let ids: Vec<uuid::Uuid> = by_task.iter().map(|(task, _)| task.as_uuid()).collect();
    let mut latest: HashMap<uuid::Uuid, i64> = HashMap::new();
    for row in client.query(&last, &[&ids]).await? {
        latest.insert(row.try_get(0)?, row.try_get(1)?);
    }
    let cap = usize::try_from(per_task).unwrap_or(usize::MAX);
    let mut line_task = Vec::new();
    let mut line_seq: Vec<i64> = Vec::new();
    let mut attempt: Vec<i32> = Vec::new();
    let mut at: Vec<SystemTime> = Vec::new();
    let mut level: Vec<&str> = Vec::new();
    let mut target: Vec<&str> = Vec::new();
    let mut message: Vec<&str> = Vec::new();
    let mut fields: Vec<Option<Vec<u8>>> = Vec::new();
    let mut cap_task = Vec::new();
    let mut keep_after: Vec<i64> = Vec::new();
    let mut skipped: Vec<i64> = Vec::new();
    for (task, records) in &by_task {
        let id = task.as_uuid();
        let mut seq = latest.get(&id).copied().unwrap_or(0);
        let skip = records.len().saturating_sub(cap);
        for record in &records[skip..] {
            seq += 1;
            line_task.push(id);
            line_seq.push(seq);
            attempt.push(i32::try_from(record.attempt).unwrap_or(i32::MAX));
            at.push(record.at);
            level.push(record.level.as_str());
            target.push(record.target.as_str());
            message.push(record.message.as_str());
            fields.push(match record.fields.is_empty() {
                true => None,
                false => codec::encode(&record.fields).ok(),
            });
        }
        cap_task.push(id);
        keep_after.push(seq - i64::from(per_task));
        skipped.push(i64::try_from(skip).unwrap_or(i64::MAX));
    }
    client
        .execute(
            &append,
            &[
                &line_task,
                &line_seq,
                &attempt,
                &at,
                &level,
                &target,
                &message,
                &fields,
                &cap_task,
                &keep_after,
                &skipped,
            ],
        )
        .await?;
    Ok(())
}

/// Claims, in one statement, up to each demand's slots of its best ready
/// rows; and reads, alongside, when the demanded queues' next delayed task
/// is due.
async fn claim_ready(
    shared: &Shared,
    client: &Object,
    owner: &str,
    demand: &[Demand],
    now: SystemTime,
) -> Result<Claimed, Failure> {
    let mut queues: Vec<&str> = Vec::new();
    for want in demand {
        if !queues.contains(&want.queue.as_str()) {
            queues.push(&want.queue);
        }
    }
    let wanted: Vec<&Demand> = demand.iter().filter(|want| want.slots > 0).collect();
    let next = client.prepare_cached(&shared.sql.next_run_at).await?;
    let next_params: &[&(dyn ToSql + Sync)] = &[&queues, &now, &owner];
    let next_run_at = client.query_one(&next, next_params);
    let (rows, next) = match wanted.is_empty() {
        true => (Vec::new(), Some(next_run_at.await?)),
        false => {
            let statement = client
                .prepare_cached(&shared.sql.claim(wanted.len()))
                .await?;
            let skip: Vec<i64> = shared
                .corrupt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect();
            let codec = codec_version();
            let executors: Vec<&str> = wanted.iter().map(|want| want.executor.as_str()).collect();
            let names: Vec<Vec<&str>> = wanted
                .iter()
                .map(|want| want.names.iter().map(String::as_str).collect())
                .collect();
            let limits: Vec<i64> = wanted
                .iter()
                .map(|want| i64::try_from(want.slots).unwrap_or(i64::MAX))
                .collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&owner, &now, &codec, &skip];
            for (at, want) in wanted.iter().enumerate() {
                params.extend([
                    &want.queue as &(dyn ToSql + Sync),
                    &executors[at],
                    &names[at],
                    &limits[at],
                ]);
            }
            // The claim commits on its own: once it answered, its rows are
            // this instance's, whatever happens to the look-up sent with
            // it (a connection lost between the two). Without that answer,
            // the claimer looks again at once.
            // The claim commits on its own: once it answered, its rows are
            // this instance's, whatever happens to the look-up sent with
            // it (a connection lost between the two).
            let (rows, next) = tokio::join!(client.query(&statement, &params), next_run_at);
            (rows?, next.ok())
        }
    };
    // The claim checked the lease itself; the statement beside it only
    // tells why nothing came (both read the lease, a moment apart). Without
    // its answer, the claimer looks again at once.
    let read =
        |next: &tokio_postgres::Row| -> Result<(Option<SystemTime>, bool), tokio_postgres::Error> {
            Ok((next.try_get(0)?, next.try_get(1)?))
        };
    let (next_run_at, live) = next
        .as_ref()
        .and_then(|next| read(next).ok())
        .unwrap_or((Some(now), true));
    let mut claimed = Claimed {
        next_run_at,
        lapsed: !live && rows.is_empty(),
        ..Claimed::default()
    };
    for row in &rows {
        match rows::read(row) {
            Ok(task) => claimed.tasks.push(task),
            Err(corrupt) => {
                // Claimed but unreadable: back to the queue, and skipped
                // from now on, so it never blocks the queue here.
                let unclaim = client.prepare_cached(&shared.sql.unclaim).await?;
                client.execute(&unclaim, &[&corrupt.key, &owner]).await?;
                shared
                    .corrupt
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(corrupt.key);
                claimed.corrupt.push(corrupt);
            }
        }
    }
    Ok(claimed)
}

/// `list`: a WHERE clause assembled from fixed fragments, values bound.
async fn list(shared: &Shared, client: &Object, filter: &TaskFilter) -> Result<Listed, Failure> {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut bind = |clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        values.push(value);
        clauses.push(clause.replace('?', &format!("${}", values.len())));
    };
    if let Some(status) = filter.status {
        // `tasks_status` holds finished rows only: a generic plan (a
        // prepared statement's, after a few runs) uses it only when the
        // query states the index's condition, which a bound status cannot.
        let clause = match status.is_finished() {
            true => "status = ? AND status NOT IN ('PENDING', 'RUNNING')",
            false => "status = ?",
        };
        bind(clause, Box::new(status.as_str()));
    }
    if let Some(name) = &filter.name {
        bind("name = ?", Box::new(name.clone()));
    }
    if let Some(queue) = &filter.queue {
        bind("queue = ?", Box::new(queue.clone()));
    }
    if let Some(after) = filter.created_after {
        bind("created_at >= ?", Box::new(after));
    }
    if let Some(before) = filter.created_before {
        bind("created_at < ?", Box::new(before));
    }
    if let Some(after) = filter.run_after {
        bind("run_at >= ?", Box::new(after));
    }
    if let Some(before) = filter.run_before {
        bind("run_at < ?", Box::new(before));
    }
    if let Some(schedule) = &filter.schedule {
        bind("schedule = ?", Box::new(schedule.clone()));
    }
    if let Some(cursor) = filter.before {
        bind("id < ?", Box::new(cursor.as_uuid()));
    }
    if let Some((key, value)) = &filter.tag {
        let first = values.len() + 1;
        values.push(Box::new(key.clone()));
        values.push(Box::new(value.clone()));
        clauses.push(shared.sql.tag_clause(first));
    }
    let limit: Option<i64> = filter.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    values.push(Box::new(limit));
    let condition = match clauses.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", clauses.join(" AND ")),
    };
    let statement = client
        .prepare_cached(&shared.sql.list(&condition, values.len()))
        .await?;
    let params: Vec<&(dyn ToSql + Sync)> = values
        .iter()
        .map(|value| &**value as &(dyn ToSql + Sync))
        .collect();
    let mut listed = Listed::default();
    for row in client.query(&statement, &params).await? {
        match rows::read(&row) {
            Ok(task) => listed.tasks.push(task),
            Err(corrupt) => listed.corrupt.push(corrupt),
        }
    }
    Ok(listed)
}
