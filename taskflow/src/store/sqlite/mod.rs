//! The SQLite backend: every task in one file that survives restarts and
//! crashes, shared by every process that opens it.
//!
//! Writes go to one thread that owns the writing connection and commits in
//! groups ([`writer`]); WAL and `synchronous = NORMAL` keep a commit cheap,
//! so a burst of enqueues, claims and completions from many threads costs a
//! few commits. Reads use a second connection on tokio's blocking pool; WAL
//! lets them proceed while the writer commits.
//!
//! A claim is one `IMMEDIATE` transaction: it checks that the claimer holds
//! a live lease, selects the best ready rows of a queue and executor, checks
//! each can be read, and marks those RUNNING for the claimer; SQLite's
//! single writer makes that atomic across processes, as `FOR UPDATE SKIP
//! LOCKED` does on PostgreSQL. Rows found unreadable are
//! remembered by this store and skipped by later claims, so a corrupt row
//! never blocks its queue.
//!
//! Schema changes are numbered migration files, applied in order under
//! `PRAGMA user_version`; a file from a newer taskflow is refused.

mod rows;
mod schedules;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::types::Value;
use rusqlite::vtab::array::Array;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use taskflow_worker::codec::{self, CODEC_VERSION};
use taskflow_worker::{Executor, LogRecord, TaskId};

use self::rows::{COLUMNS, LOG_COLUMNS, micros, status_text, time};
use self::writer::{FileIdentity, Jobs, Writer, backend};
use super::{
    BoxFuture, Change, Claimed, Demand, Expect, Fire, Fired, Heartbeat, Inserted, InstanceInfo,
    Listed, LogLine, NewTask, QueueRow, Row, ScheduleRead, ScheduleRow, Store, StoreError,
    queue_rows,
};
use crate::error::Error;
use crate::lifecycle::TaskStatus;
use crate::record::TaskFilter;
use crate::store::encode_tags;

/// Migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_tasks.sql"),
    include_str!("migrations/0002_queues_leases_logs.sql"),
    include_str!("migrations/0003_schedules.sql"),
];

/// How the manager opens its store.
#[derive(Clone, Debug)]
pub(crate) struct StoreConfig {
    pub(crate) path: PathBuf,
    pub(crate) busy_timeout: Duration,
    pub(crate) max_size: Option<u64>,
    /// Permission bits of a newly created file (and so of its -wal and
    /// -shm, which SQLite creates with the database file's mode).
    pub(crate) file_mode: u32,
}

impl StoreConfig {
    /// The defaults for a file at `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        StoreConfig {
            path,
            busy_timeout: Duration::from_secs(5),
            max_size: None,
            file_mode: 0o600,
        }
    }
}

/// Tasks in one SQLite file (built in; nothing to install).
///
/// A manager opens one with
/// [`TaskManagerBuilder::snapshot_db`](crate::TaskManagerBuilder::snapshot_db);
/// opening one directly is for tools and for testing the [`Store`] contract.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use taskflow::store::{SqliteStore, Store};
/// let dir = std::env::temp_dir().join(format!("taskflow-store-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("tasks.db"))?;
/// assert!(store.queues().await?.is_empty());
/// # drop(store);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub struct SqliteStore {
    path: PathBuf,
    jobs: Jobs,
    reader: Arc<Mutex<Connection>>,
    /// Rows this store found unreadable: claims skip them.
    corrupt: Arc<Mutex<HashSet<i64>>>,
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file (mode 0600) and its
    /// schema if need be. Blocks while it opens: call it off the async
    /// runtime's threads, or at start-up.
    ///
    /// # Errors
    ///
    /// [`Error::OpenStore`] for a file that cannot be created or opened, is
    /// not SQLite, or is locked by another process past the busy timeout;
    /// [`Error::SchemaTooNew`] for a file written by a newer taskflow.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::open_with(&StoreConfig::new(path.into()))
    }

    pub(crate) fn open_with(config: &StoreConfig) -> Result<Self, Error> {
        let path = &config.path;
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::OpenStore {
            path: path.clone(),
            source,
        };
        create_private(path, config.file_mode).map_err(|e| open_error(Box::new(e)))?;
        let mut writer = connect(path, config.busy_timeout).map_err(|e| open_error(Box::new(e)))?;
        migrate(&mut writer, path)?;
        if let Some(bytes) = config.max_size {
            limit_size(&writer, bytes).map_err(|e| open_error(Box::new(e)))?;
        }
        let identity = FileIdentity::of(path).map_err(|e| open_error(Box::new(e)))?;
        let reader = connect(path, config.busy_timeout).map_err(|e| open_error(Box::new(e)))?;
        let jobs =
            Writer::start(writer, path.clone(), identity).map_err(|source| Error::SpawnThread {
                name: "taskflow-store".into(),
                source,
            })?;
        Ok(SqliteStore {
            path: path.clone(),
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            corrupt: Arc::default(),
        })
    }

    /// The file this store opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` on the reading connection, on tokio's blocking pool.
    async fn read<T, F>(&self, what: &'static str, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        let run = move || {
            let connection = reader.lock().unwrap_or_else(|p| p.into_inner());
            read(&connection).map_err(backend(what))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(run)
                .await
                .map_err(|_| StoreError::Closed)?,
            // Outside a runtime (a tool, a test): read on this thread.
            Err(_) => run(),
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store for SqliteStore {
    fn insert(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<Inserted>, StoreError>> {
        Box::pin(
            self.jobs
                .run("insert tasks", move |db| insert_tasks(db, &tasks)),
        )
    }

    fn apply(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        Box::pin(
            self.jobs
                .run("update tasks", move |db| apply_changes(db, &changes)),
        )
    }

    fn append_logs(
        &self,
        lines: Vec<LogLine>,
        per_task: u32,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.jobs.run("store log lines", move |db| {
            append_logs(db, &lines, per_task)
        }))
    }

    fn claim_ready<'a>(
        &'a self,
        owner: &'a str,
        demand: &'a [Demand],
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Claimed, StoreError>> {
        let (owner, demand, corrupt) = (owner.to_owned(), demand.to_vec(), self.corrupt.clone());
        Box::pin(async move {
            let skip: Vec<i64> = corrupt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect();
            let claimed = self
                .jobs
                .run("claim tasks", move |db| {
                    claim_ready(db, &owner, &demand, now, &skip)
                })
                .await?;
            corrupt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(claimed.corrupt.iter().map(|row| row.key));
            Ok(claimed)
        })
    }

    fn get(&self, id: TaskId) -> BoxFuture<'_, Result<Option<Row>, StoreError>> {
        Box::pin(self.read("read a task", move |db| {
            let row = db
                .query_row(
                    &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
                    [id.to_bytes()],
                    rows::read,
                )
                .optional()?;
            let Some(Ok(mut task)) = row else {
                return Ok(row);
            };
            let mut statement = db.prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM task_logs WHERE task_id = ?1 ORDER BY seq"
            ))?;
            task.record.logs = statement
                .query_map([id.to_bytes()], rows::read_log)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some(Ok(task)))
        }))
    }

    fn get_many<'a>(&'a self, ids: &'a [TaskId]) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        let ids: Vec<[u8; 16]> = ids.iter().map(TaskId::to_bytes).collect();
        Box::pin(self.read("read tasks", move |db| {
            let ids = array(ids.into_iter().map(|id| Value::Blob(id.to_vec())));
            let mut statement = db.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE id IN rarray(?1)"
            ))?;
            statement.query_map([ids], rows::read)?.collect()
        }))
    }

    fn list<'a>(&'a self, filter: &'a TaskFilter) -> BoxFuture<'a, Result<Listed, StoreError>> {
        let filter = filter.clone();
        Box::pin(self.read("list tasks", move |db| list(db, &filter)))
    }

    fn request_cancel(&self, id: TaskId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.jobs.run("ask for a cancellation", move |db| {
            let changed = db.execute(
                "UPDATE tasks SET cancel_requested = 1 WHERE id = ?1 AND status = 'RUNNING'",
                [id.to_bytes()],
            )?;
            Ok(changed == 1)
        }))
    }

    fn heartbeat<'a>(
        &'a self,
        instance: &'a InstanceInfo,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Heartbeat, StoreError>> {
        let instance = instance.clone();
        Box::pin(self.jobs.run("renew this instance's lease", move |db| {
            let now = micros(SystemTime::now());
            let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
            let held = db.execute(
                "UPDATE instances SET lease_until = ?2, heartbeat_at = ?3 WHERE id = ?1",
                params![instance.id, until, now],
            )? == 1;
            if !held {
                db.execute(
                    "INSERT INTO instances (id, pid, host, started_at, heartbeat_at, lease_until) \
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                    params![instance.id, instance.pid, instance.host, now, until],
                )?;
            }
            let mut statement = db.prepare_cached(
                "SELECT id FROM tasks WHERE owner = ?1 AND status = 'RUNNING' AND cancel_requested = 1",
            )?;
            let mut cancel = Vec::new();
            for id in statement.query_map([&instance.id], |row| row.get::<_, Vec<u8>>(0))? {
                if let Ok(bytes) = <[u8; 16]>::try_from(id?.as_slice()) {
                    cancel.push(TaskId::from_bytes(bytes));
                }
            }
            let others: i64 = db.query_row(
                "SELECT count(*) FROM instances WHERE id != ?1 AND lease_until >= ?2",
                params![instance.id, now],
                |row| row.get(0),
            )?;
            Ok(Heartbeat {
                held,
                cancel,
                others: usize::try_from(others).unwrap_or(0),
            })
        }))
    }

    fn expired_instances(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.read("find expired instances", |db| {
            let now = micros(SystemTime::now());
            // The owners with no row are read from the running-owner index
            // (RUNNING rows are few), each looked up by the primary key.
            let mut statement = db.prepare_cached(
                "SELECT id FROM instances WHERE lease_until < ?1 \
                 UNION SELECT owner FROM tasks INDEXED BY tasks_running_owner \
                 WHERE status = 'RUNNING' AND owner IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM instances WHERE instances.id = tasks.owner)",
            )?;
            statement.query_map([now], |row| row.get(0))?.collect()
        }))
    }

    fn orphans<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<Row>, StoreError>> {
        let instance = instance.to_owned();
        Box::pin(self.read("find an instance's tasks", move |db| {
            let mut statement = db.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE owner = ?1 AND status = 'RUNNING'"
            ))?;
            statement.query_map([instance], rows::read)?.collect()
        }))
    }

    fn owned<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<TaskId>, StoreError>> {
        let instance = instance.to_owned();
        Box::pin(self.read("find an instance's task ids", move |db| {
            let mut statement =
                db.prepare_cached("SELECT id FROM tasks WHERE owner = ?1 AND status = 'RUNNING'")?;
            let ids = statement.query_map([instance], |row| rows::id(row, 0))?;
            ids.filter_map(Result::transpose).collect()
        }))
    }

    fn retire<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let instance = instance.to_owned();
        Box::pin(self.jobs.run("retire an instance", move |db| {
            db.execute("DELETE FROM instances WHERE id = ?1", [&instance])?;
            Ok(())
        }))
    }

    fn retire_expired<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let instance = instance.to_owned();
        Box::pin(self.jobs.run("retire an expired instance", move |db| {
            let now = micros(SystemTime::now());
            let retired = db.execute(
                "DELETE FROM instances WHERE id = ?1 AND lease_until < ?2",
                params![instance, now],
            )?;
            Ok(retired == 1)
        }))
    }

    fn prune(&self, before: SystemTime) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.jobs.run("prune old tasks", move |db| {
            let cutoff = micros(before);
            let finished = "SELECT id FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                            AND status NOT IN ('PENDING', 'RUNNING')";
            db.execute(
                &format!("DELETE FROM task_logs WHERE task_id IN ({finished})"),
                [cutoff],
            )?;
            db.execute(
                &format!("DELETE FROM task_tags WHERE task_id IN ({finished})"),
                [cutoff],
            )?;
            let pruned = db.execute(
                "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                 AND status NOT IN ('PENDING', 'RUNNING')",
                [cutoff],
            )?;
            Ok(pruned as u64)
        }))
    }

    fn unfinished_names(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.read("read task names", |db| {
            let mut statement = db.prepare_cached(
                "SELECT DISTINCT name FROM tasks WHERE status IN ('PENDING', 'RUNNING') ORDER BY name",
            )?;
            statement.query_map([], |row| row.get(0))?.collect()
        }))
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<QueueRow>, StoreError>> {
        Box::pin(self.read("read queues", |db| {
            let settings = db
                .prepare_cached("SELECT name, paused FROM queues")?
                .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? != 0)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let counts = db
                .prepare_cached(
                    "SELECT queue, status, count(*) FROM tasks \
                     WHERE status IN ('PENDING', 'RUNNING') GROUP BY queue, status",
                )?
                .query_map([], |row| {
                    let count = u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0);
                    Ok((row.get(0)?, row.get(1)?, count))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(queue_rows(settings, counts))
        }))
    }

    fn set_paused<'a>(
        &'a self,
        queue: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let queue = queue.to_owned();
        Box::pin(self.jobs.run("pause or resume a queue", move |db| {
            db.execute(
                "INSERT INTO queues (name, paused) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
                params![queue, paused],
            )?;
            Ok(())
        }))
    }

    fn fire(&self, fires: Vec<Fire>) -> BoxFuture<'_, Result<Vec<Fired>, StoreError>> {
        Box::pin(self.jobs.run("fire schedules", move |db| {
            fires.iter().map(|fire| schedules::fire(db, fire)).collect()
        }))
    }

    fn declare_schedules(&self, rows: Vec<ScheduleRow>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(
            self.jobs
                .run("declare schedules", move |db| schedules::declare(db, &rows)),
        )
    }

    fn add_schedule(&self, row: ScheduleRow) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(
            self.jobs
                .run("add a schedule", move |db| schedules::add(db, &row)),
        )
    }

    fn remove_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let name = name.to_owned();
        Box::pin(
            self.jobs
                .run("remove a schedule", move |db| schedules::remove(db, &name)),
        )
    }

    fn set_schedule_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let name = name.to_owned();
        Box::pin(self.jobs.run("pause or resume a schedule", move |db| {
            schedules::set_paused(db, &name, paused, micros(now))
        }))
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<ScheduleRead>, StoreError>> {
        Box::pin(self.read("read schedules", schedules::list))
    }
}

/// A list bound as one parameter, for `IN rarray(?)`.
fn array(values: impl IntoIterator<Item = Value>) -> Array {
    std::rc::Rc::new(values.into_iter().collect())
}

fn insert_tasks(db: &Connection, tasks: &[NewTask]) -> rusqlite::Result<Vec<Inserted>> {
    let mut insert = db.prepare_cached(
        "INSERT INTO tasks (id, name, executor, queue, priority, status, args, tags, attempts, \
         created_at, run_at, started_at, finished_at, error_kind, error_message, \
         idempotency_key, owner, output, codec) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
         ON CONFLICT DO NOTHING",
    )?;
    let mut tag = db.prepare_cached(
        "INSERT INTO task_tags (task_id, key, value) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )?;
    let granted = claims_granted(db, tasks)?;
    let now = SystemTime::now();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let claimed = task.state.status == TaskStatus::Pending
            && task.state.run_at <= now
            && task.claim.as_deref().is_some_and(|claimer| {
                granted.contains(&(task.queue.as_str(), task.executor, claimer))
            });
        let mut state = std::borrow::Cow::Borrowed(&task.state);
        if claimed {
            let state = state.to_mut();
            state.status = TaskStatus::Running;
            state.attempts += 1;
            state.started_at.get_or_insert(now);
            state.owner.clone_from(&task.claim);
        }
        let error = state.last_error.as_ref();
        let inserted = insert.execute(params![
            task.id.to_bytes(),
            task.name,
            task.executor.as_str(),
            task.queue,
            task.priority,
            status_text(state.status),
            task.args,
            encode_tags(&task.tags),
            state.attempts,
            micros(task.created_at),
            micros(state.run_at),
            state.started_at.map(micros),
            state.finished_at.map(micros),
            error.map(|e| e.kind().as_str()),
            error.map(|e| e.message()),
            task.idempotency_key,
            state.owner,
            state.output,
            CODEC_VERSION,
        ])? == 1;
        if inserted {
            for (key, value) in task.tags.iter() {
                tag.execute(params![task.id.to_bytes(), key, value])?;
            }
            answers.push(match claimed {
                true => Inserted::Claimed,
                false => Inserted::New,
            });
            continue;
        }
        let exists: bool = db
            .query_row(
                "SELECT 1 FROM tasks WHERE id = ?1",
                [task.id.to_bytes()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if exists {
            answers.push(Inserted::Duplicate);
            continue;
        }
        let holder = match &task.idempotency_key {
            Some(key) => db
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM tasks WHERE name = ?1 AND idempotency_key = ?2 \
                         AND status IN ('PENDING', 'RUNNING', 'SUCCESS')"
                    ),
                    params![task.name, key],
                    rows::read,
                )
                .optional()?,
            None => None,
        };
        answers.push(match holder {
            Some(row) => Inserted::Existing(Box::new(row)),
            // Neither its id nor its key: a constraint this code does not
            // know refused it. Say so rather than pretend.
            None => {
                return Err(rusqlite::Error::ModuleError(format!(
                    "task {} was refused by the store's constraints",
                    task.id
                )));
            }
        });
    }
    Ok(answers)
}

/// A queue, an executor and a claimer.
type ClaimKey<'t> = (&'t str, Executor, &'t str);

/// The queues, executors and claimers whose claimed inserts may go in
/// claimed: those where the claimer holds a live lease and no ready PENDING
/// task as good as the lowest-priority claimed one waits already, in a
/// queue that is not paused. Checked before anything of the call is
/// written, so its own PENDING tasks do not count.
fn claims_granted<'t>(
    db: &Connection,
    tasks: &'t [NewTask],
) -> rusqlite::Result<HashSet<ClaimKey<'t>>> {
    let now = SystemTime::now();
    let mut lowest: HashMap<ClaimKey<'t>, i16> = HashMap::new();
    for task in tasks {
        if let Some(claimer) = task.claim.as_deref()
            && task.state.status == TaskStatus::Pending
            && task.state.run_at <= now
        {
            let entry = lowest
                .entry((task.queue.as_str(), task.executor, claimer))
                .or_insert(task.priority);
            *entry = (*entry).min(task.priority);
        }
    }
    let mut granted = HashSet::with_capacity(lowest.len());
    if lowest.is_empty() {
        return Ok(granted);
    }
    let mut waiting = db.prepare_cached(
        "SELECT 1 FROM tasks INDEXED BY tasks_ready \
         WHERE status = 'PENDING' AND queue = ?1 AND executor = ?2 AND priority >= ?3 \
         AND run_at <= ?4 \
         UNION ALL SELECT 1 FROM queues WHERE name = ?1 AND paused = 1 LIMIT 1",
    )?;
    // The runtime's inserts have one claimer: its lease is read once.
    let mut leases: HashMap<&str, bool> = HashMap::new();
    let now = micros(now);
    for ((queue, executor, claimer), priority) in lowest {
        let live = match leases.get(claimer) {
            Some(&live) => live,
            None => {
                let live = holds_lease(db, claimer)?;
                leases.insert(claimer, live);
                live
            }
        };
        if !live {
            continue;
        }
        let blocked = waiting
            .query_row(params![queue, executor.as_str(), priority, now], |_| Ok(()))
            .optional()?
            .is_some();
        if !blocked {
            granted.insert((queue, executor, claimer));
        }
    }
    Ok(granted)
}

fn apply_changes(db: &Connection, changes: &[Change]) -> rusqlite::Result<Vec<bool>> {
    const SET: &str = "status = ?2, attempts = ?3, run_at = ?4, started_at = ?5, finished_at = ?6, \
         error_kind = ?7, error_message = ?8, owner = ?9, output = coalesce(?10, output), \
         cancel_requested = CASE WHEN ?2 IN ('PENDING', 'RUNNING') THEN cancel_requested ELSE 0 END";
    let mut owned = db.prepare_cached(&format!(
        "UPDATE tasks SET {SET} WHERE id = ?1 AND status = 'RUNNING' AND owner = ?11 AND attempts = ?12"
    ))?;
    let mut by_status = db.prepare_cached(&format!(
        "UPDATE tasks SET {SET} WHERE id = ?1 AND status = ?11 AND attempts = ?12 \
         AND (?13 IS NULL OR owner = ?13)"
    ))?;
    let mut answers = Vec::with_capacity(changes.len());
    for change in changes {
        let state = &change.state;
        let error = state.last_error.as_ref();
        let values = params![
            change.id.to_bytes(),
            status_text(state.status),
            state.attempts,
            micros(state.run_at),
            state.started_at.map(micros),
            state.finished_at.map(micros),
            error.map(|e| e.kind().as_str()),
            error.map(|e| e.message()),
            state.owner,
            state.output,
        ];
        let written = match &change.expect {
            Expect::Owned { owner, attempts } => {
                let mut all: Vec<&dyn rusqlite::ToSql> = values.to_vec();
                all.extend([owner as &dyn rusqlite::ToSql, attempts]);
                owned.execute(all.as_slice())?
            }
            Expect::Status {
                status,
                attempts,
                owner,
            } => {
                let status = status_text(*status);
                let mut all: Vec<&dyn rusqlite::ToSql> = values.to_vec();
                all.extend([&status as &dyn rusqlite::ToSql, attempts, owner]);
                by_status.execute(all.as_slice())?
            }
        };
        answers.push(written == 1);
    }
    Ok(answers)
}

/// Keeps each task's latest `per_task` lines: a batch's lines past the cap
/// are never written, and stored lines they push past it are deleted; both
/// are counted on the task.
fn append_logs(db: &Connection, lines: &[LogLine], per_task: u32) -> rusqlite::Result<()> {
    let mut by_task: Vec<(TaskId, Vec<&LogRecord>)> = Vec::new();
    let mut place: HashMap<TaskId, usize> = HashMap::new();
    for line in lines {
        let index = *place.entry(line.task).or_insert_with(|| {
            by_task.push((line.task, Vec::new()));
            by_task.len() - 1
        });
        by_task[index].1.push(&line.record);
    }
    let mut last =
        db.prepare_cached("SELECT coalesce(max(seq), 0) FROM task_logs WHERE task_id = ?1")?;
    let mut insert = db.prepare_cached(
        "INSERT INTO task_logs (task_id, seq, attempt, at, level, target, message, fields) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut evict = db.prepare_cached("DELETE FROM task_logs WHERE task_id = ?1 AND seq <= ?2")?;
    let mut dropped =
        db.prepare_cached("UPDATE tasks SET logs_dropped = logs_dropped + ?2 WHERE id = ?1")?;
    let cap = i64::from(per_task);
    for (task, records) in by_task {
        let id = task.to_bytes();
        let mut seq: i64 = last.query_row([id], |row| row.get(0))?;
        let skip = records.len().saturating_sub(per_task as usize);
        for record in &records[skip..] {
            seq += 1;
            let fields = match record.fields.is_empty() {
                true => None,
                false => codec::encode(&record.fields).ok(),
            };
            insert.execute(params![
                id,
                seq,
                record.attempt,
                micros(record.at),
                record.level.as_str(),
                record.target,
                record.message,
                fields,
            ])?;
        }
        let evicted = evict.execute(params![id, seq - cap])?;
        let count = skip.saturating_add(evicted);
        if count > 0 {
            dropped.execute(params![id, i64::try_from(count).unwrap_or(i64::MAX)])?;
        }
    }
    Ok(())
}

/// Claims, for each demand in turn, up to its slots of the best ready rows.
fn claim_ready(
    db: &Connection,
    owner: &str,
    demand: &[Demand],
    now: SystemTime,
    skip: &[i64],
) -> rusqlite::Result<Claimed> {
    let now_micros = micros(now);
    let skip = array(skip.iter().map(|&rowid| Value::Integer(rowid)));
    let mut candidates = db.prepare_cached(&format!(
        // The ready index yields rows already in claim order, so a claim
        // reads as many rows as it takes (plus delayed ones ahead of them),
        // never the whole queue: the planner, left alone, prefers the
        // `run_at` index and sorts every ready row.
        "SELECT {COLUMNS} FROM tasks INDEXED BY tasks_ready \
         WHERE status = 'PENDING' AND queue = ?1 AND executor = ?2 AND run_at <= ?3 \
         AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1) \
         AND rowid NOT IN rarray(?5) AND name IN rarray(?6) \
         ORDER BY priority DESC, run_at, rowid LIMIT ?4"
    ))?;
    let mut take = db.prepare_cached(
        "UPDATE tasks SET status = 'RUNNING', owner = ?2, attempts = attempts + 1, \
         started_at = coalesce(started_at, ?3) WHERE rowid = ?1 AND status = 'PENDING'",
    )?;
    let mut next = db.prepare_cached(
        "SELECT min(run_at) FROM tasks \
         WHERE status = 'PENDING' AND run_at > created_at AND queue = ?1 AND run_at > ?2 \
         AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1)",
    )?;
    let mut claimed = Claimed {
        lapsed: !holds_lease(db, owner)?,
        ..Claimed::default()
    };
    let mut seen_queues = HashSet::new();
    for want in demand {
        if seen_queues.insert(want.queue.clone()) {
            let at: Option<i64> =
                next.query_row(params![want.queue, now_micros], |row| row.get(0))?;
            if let Some(at) = at.map(time) {
                claimed.next_run_at = Some(claimed.next_run_at.map_or(at, |t| t.min(at)));
            }
        }
        if want.slots == 0 || claimed.lapsed {
            continue;
        }
        let limit = i64::try_from(want.slots).unwrap_or(i64::MAX);
        let names = array(want.names.iter().map(|name| Value::Text(name.clone())));
        let rows: Vec<(Row, i64)> = candidates
            .query_map(
                params![
                    want.queue,
                    want.executor.as_str(),
                    now_micros,
                    limit,
                    skip,
                    names
                ],
                |row| Ok((rows::read(row)?, row.get::<_, i64>(13)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        for (row, rowid) in rows {
            match row {
                Ok(mut task) => {
                    if take.execute(params![rowid, owner, now_micros])? == 1 {
                        let record = &mut task.record;
                        record.status = TaskStatus::Running;
                        record.attempts += 1;
                        record.started_at.get_or_insert(time(now_micros));
                        task.owner = Some(owner.to_owned());
                        claimed.tasks.push(task);
                    }
                }
                Err(corrupt) => claimed.corrupt.push(corrupt),
            }
        }
    }
    Ok(claimed)
}

/// Whether `instance` holds a live lease now, by this host's clock (as
/// `heartbeat` measures it): the condition of every claim, read in the
/// claim's own transaction, so no claim is made on a lease a rescuer may
/// already have found expired or forgotten.
fn holds_lease(db: &Connection, instance: &str) -> rusqlite::Result<bool> {
    let now = micros(SystemTime::now());
    db.prepare_cached("SELECT 1 FROM instances WHERE id = ?1 AND lease_until >= ?2")?
        .query_row(params![instance, now], |_| Ok(()))
        .optional()
        .map(|row| row.is_some())
}

/// Unfinished tasks of one status up to which `list` reads them from their
/// partial index and sorts them, rather than walk the table newest first.
const FEW_UNFINISHED: i64 = 10_000;

/// The partial index holding the rows of an unfinished status.
fn unfinished_index(status: TaskStatus) -> Option<&'static str> {
    match status {
        TaskStatus::Pending => Some("tasks_ready"),
        TaskStatus::Running => Some("tasks_running_owner"),
        _ => None,
    }
}

/// `list`: a WHERE clause assembled from fixed fragments, values bound.
///
/// PENDING and RUNNING rows are in no index ordered by id. When they are
/// few (the usual case, beside a long history), they are read from their
/// partial index and sorted; when they are many, walking the table newest
/// first finds a page of them quickly. A bounded count decides.
fn list(db: &Connection, filter: &TaskFilter) -> rusqlite::Result<Listed> {
    let unfinished = filter
        .status
        .and_then(|status| Some((status_text(status), unfinished_index(status)?)));
    let few = match unfinished {
        Some((status, index)) => {
            let counted: i64 = db
                .prepare_cached(&format!(
                    "SELECT count(*) FROM (SELECT 1 FROM tasks INDEXED BY {index} \
                     WHERE status = '{status}' LIMIT {FEW_UNFINISHED} + 1)"
                ))?
                .query_row([], |row| row.get(0))?;
            counted <= FEW_UNFINISHED
        }
        None => false,
    };
    let (sql, values) = list_statement(filter, few);
    let mut statement = db.prepare_cached(&sql)?;
    let params: Vec<&dyn rusqlite::ToSql> = values.iter().map(|v| &**v).collect();
    let mut listed = Listed::default();
    for row in statement.query_map(params.as_slice(), rows::read)? {
        match row? {
            Ok(task) => listed.tasks.push(task),
            Err(corrupt) => listed.corrupt.push(corrupt),
        }
    }
    Ok(listed)
}

/// The statement `list` runs for `filter`, and the values it binds; with
/// `few`, an unfinished status is read from its partial index.
fn list_statement(filter: &TaskFilter, few: bool) -> (String, Vec<Box<dyn rusqlite::ToSql>>) {
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    let mut from = "tasks";
    match (few, filter.status) {
        (true, Some(TaskStatus::Pending)) => {
            from = "tasks INDEXED BY tasks_ready";
            clauses.push("status = 'PENDING'");
        }
        (true, Some(TaskStatus::Running)) => {
            from = "tasks INDEXED BY tasks_running_owner";
            clauses.push("status = 'RUNNING'");
        }
        (_, Some(status)) => {
            // `tasks_status` holds finished rows only, and SQLite reads a
            // partial index only when the query states the index's condition,
            // which it cannot infer from a bound status. Stated, a finished
            // status is read from that index in id order; without it the
            // query walks every row newer than the page (the whole table for
            // a status no row has).
            clauses.push(match status.is_finished() {
                true => "status = ? AND status NOT IN ('PENDING', 'RUNNING')",
                false => "status = ?",
            });
            values.push(Box::new(status_text(status)));
        }
        (_, None) => {}
    }
    if let Some(name) = &filter.name {
        clauses.push("name = ?");
        values.push(Box::new(name.clone()));
    }
    if let Some(queue) = &filter.queue {
        clauses.push("queue = ?");
        values.push(Box::new(queue.clone()));
    }
    if let Some((key, value)) = &filter.tag {
        clauses.push("id IN (SELECT task_id FROM task_tags WHERE key = ? AND value = ?)");
        values.push(Box::new(key.clone()));
        values.push(Box::new(value.clone()));
    }
    if let Some(after) = filter.created_after {
        clauses.push("created_at >= ?");
        values.push(Box::new(micros(after)));
    }
    if let Some(before) = filter.created_before {
        clauses.push("created_at < ?");
        values.push(Box::new(micros(before)));
    }
    if let Some(after) = filter.run_after {
        clauses.push("run_at >= ?");
        values.push(Box::new(micros(after)));
    }
    if let Some(before) = filter.run_before {
        clauses.push("run_at < ?");
        values.push(Box::new(micros(before)));
    }
    if let Some(schedule) = &filter.schedule {
        clauses.push("schedule = ?");
        values.push(Box::new(schedule.clone()));
    }
    if let Some(cursor) = filter.before {
        clauses.push("id < ?");
        values.push(Box::new(cursor.to_bytes()));
    }
    let limit = filter
        .limit
        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    values.push(Box::new(limit));
    let condition = match clauses.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", clauses.join(" AND ")),
    };
    let sql = format!("SELECT {COLUMNS} FROM {from} {condition} ORDER BY id DESC LIMIT ?");
    (sql, values)
}

/// Creates the file at `path` with permission bits `mode` unless it exists.
///
/// SQLite would create it with the umask's mode (0644 typically), readable by
/// every local user although it holds task arguments and outputs. Created
/// here first, it has `mode` exactly (not narrowed or widened by the umask),
/// and SQLite gives the -wal and -shm files it creates the same mode. An
/// existing file keeps its mode: the operator chose it.
fn create_private(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
        {
            Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(mode)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(error),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Opens `path` with the settings every connection uses.
fn connect(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    writer::set_busy_timeout(&connection, busy_timeout)?;
    // Reading the schema here makes a file that is not SQLite fail now,
    // with SQLite's own "file is not a database".
    connection.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    rusqlite::vtab::array::load_module(&connection)?;
    Ok(connection)
}

/// Caps the file at about `bytes`: a full store then behaves like a full
/// disk (`SQLITE_FULL`), which is how that case is tested.
fn limit_size(connection: &Connection, bytes: u64) -> rusqlite::Result<()> {
    let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let pages = bytes.div_ceil(page_size.max(512).unsigned_abs());
    connection.pragma_update(
        None,
        "max_page_count",
        i64::try_from(pages).unwrap_or(i64::MAX),
    )
}

/// Brings the schema up to date.
///
/// # Errors
///
/// [`Error::SchemaTooNew`] for a file written by a newer taskflow.
fn migrate(connection: &mut Connection, path: &Path) -> Result<(), Error> {
    let open_error = |source: rusqlite::Error| Error::OpenStore {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let supported = MIGRATIONS.len() as i64;
    loop {
        // IMMEDIATE: two processes opening a new file at once take turns,
        // and the second sees the first's schema instead of creating it again.
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_error)?;
        let version: i64 = transaction
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(open_error)?;
        if version > supported {
            return Err(Error::SchemaTooNew {
                path: path.to_owned(),
                found: version,
                supported,
            });
        }
        let Some(sql) = MIGRATIONS.get(usize::try_from(version).unwrap_or(usize::MAX)) else {
            return Ok(());
        };
        transaction.execute_batch(sql).map_err(open_error)?;
        transaction
            .pragma_update(None, "user_version", version + 1)
            .map_err(open_error)?;
        transaction.commit().map_err(open_error)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_to_a_fresh_database_and_are_idempotent() {
        let mut db = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        migrate(&mut db, path).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        migrate(&mut db, path).unwrap();
        let tables: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('tasks', 'instances', 'task_logs', 'task_tags', 'queues')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 5);
    }

    #[test]
    fn a_schema_newer_than_the_code_is_refused() {
        let mut db = Connection::open_in_memory().unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
        let error = migrate(&mut db, Path::new("tasks.db")).unwrap_err();
        assert!(
            matches!(error, Error::SchemaTooNew { found: 99, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("newer"), "{error}");
    }

    /// The steps of the plan SQLite makes for `list`'s statement.
    fn list_plan(db: &Connection, filter: &TaskFilter) -> Vec<String> {
        list_plan_with(db, filter, false)
    }

    fn list_plan_with(db: &Connection, filter: &TaskFilter, few: bool) -> Vec<String> {
        let (sql, values) = list_statement(filter, few);
        let params: Vec<&dyn rusqlite::ToSql> = values.iter().map(|v| &**v).collect();
        db.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params.as_slice(), |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_finished_status_is_listed_from_its_index_in_id_order() {
        let mut db = Connection::open_in_memory().unwrap();
        migrate(&mut db, Path::new(":memory:")).unwrap();
        for status in [TaskStatus::Failed, TaskStatus::Cancelled] {
            let first = TaskFilter::new().status(status).limit(51);
            let mut deep = first.clone();
            deep.before = Some(TaskId::new());
            for filter in [first, deep] {
                let plan = list_plan(&db, &filter);
                assert!(
                    plan.iter().any(|step| step.contains("INDEX tasks_status")),
                    "{status:?}: {plan:?}"
                );
                assert!(
                    !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                    "{status:?} needs no sort: {plan:?}"
                );
            }
        }
    }

    #[test]
    fn unfinished_tasks_are_listed_newest_first_whether_few_or_many() {
        let mut db = Connection::open_in_memory().unwrap();
        migrate(&mut db, Path::new(":memory:")).unwrap();
        for few in [true, false] {
            let plan = list_plan_with(&db, &TaskFilter::new().status(TaskStatus::Pending), few);
            assert_eq!(
                plan.iter().any(|step| step.contains("INDEX tasks_ready")),
                few,
                "{plan:?}"
            );
        }
        let insert = db
            .prepare(
                "INSERT INTO tasks (id, name, executor, status, args, created_at) \
                 VALUES (?1, 't', 'async', ?2, x'', 0)",
            )
            .unwrap();
        let mut insert = insert;
        let id = |n: u32| {
            let mut bytes = [0u8; 16];
            bytes[12..].copy_from_slice(&n.to_be_bytes());
            bytes.to_vec()
        };
        // Many PENDING rows among finished ones, then few.
        for n in 0..(FEW_UNFINISHED as u32 + 100) {
            let status = if n % 3 == 0 { "SUCCESS" } else { "PENDING" };
            insert.execute(params![id(n), status]).unwrap();
        }
        drop(insert);
        let newest = |db: &Connection| -> Vec<Vec<u8>> {
            let filter = TaskFilter::new().status(TaskStatus::Pending).limit(3);
            // Rows this bare read as corrupt; their ids are what counts.
            let listed = list(db, &filter).unwrap();
            let mut ids: Vec<Vec<u8>> = listed
                .tasks
                .iter()
                .map(|task| task.record.id.to_bytes().to_vec())
                .chain(
                    listed
                        .corrupt
                        .iter()
                        .filter_map(|row| row.id.map(|id| id.to_bytes().to_vec())),
                )
                .collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids
        };
        let top = FEW_UNFINISHED as u32 + 99;
        let expected: Vec<Vec<u8>> = (0..=top)
            .rev()
            .filter(|n| n % 3 != 0)
            .take(3)
            .map(id)
            .collect();
        assert_eq!(newest(&db), expected, "many");
        db.execute(
            "UPDATE tasks SET status = 'SUCCESS' WHERE rowid % 100 != 0",
            [],
        )
        .unwrap();
        let pending: Vec<u32> = (0..=top)
            .filter(|n| n % 3 != 0 && (n + 1) % 100 == 0)
            .collect();
        let expected: Vec<Vec<u8>> = pending.iter().rev().take(3).copied().map(id).collect();
        assert_eq!(newest(&db), expected, "few");
    }

    #[test]
    fn the_idempotency_index_holds_only_live_and_successful_keys() {
        let mut db = Connection::open_in_memory().unwrap();
        migrate(&mut db, Path::new(":memory:")).unwrap();
        let insert = |id: u8, status: &str| {
            db.execute(
                "INSERT INTO tasks (id, name, executor, status, args, created_at, idempotency_key) \
                 VALUES (?1, 't', 'async', ?2, x'', 0, 'k')",
                params![vec![id; 16], status],
            )
        };
        insert(1, "FAILED").unwrap();
        insert(2, "CANCELLED").unwrap();
        insert(3, "PENDING").unwrap();
        assert!(
            insert(4, "SUCCESS").is_err(),
            "a second live holder is refused"
        );
    }
}
