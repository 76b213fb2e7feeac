//! The SQLite task store: every task in one file that survives restarts and
//! crashes.
//!
//! One thread owns the writing connection. Changes reach it as the cells
//! that changed, through a channel; it drains whatever has arrived, writes
//! each cell's *current* state in one transaction and commits (WAL,
//! `synchronous = NORMAL`), so many transitions cost one commit and the async
//! runtime never waits on the disk. A failed commit keeps its cells and is
//! retried with backoff: tasks keep running meanwhile, the failure is
//! reported once on the event bus and in the log, and writing resumes when
//! the disk recovers.
//!
//! Several managers may share a file. Each registers an *instance* with a
//! heartbeat; rows carry the instance that owns them. At start, rows owned
//! by instances that are gone are claimed with one `UPDATE … RETURNING`
//! each, so two managers starting together never both take a row.
//!
//! Reads (`get`, `list`, `retry`) use a second connection; WAL lets them
//! proceed while the writer commits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use taskflow_worker::registry::{Registry, TaskEntry};
use taskflow_worker::{ErrorKind, Executor, Tags, TaskError, TaskId, codec};

use crate::core::Core;
use crate::error::Error;
use crate::lifecycle::TaskStatus;
use crate::record::{SharedCell, TaskFilter, TaskRecord};

/// Migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_tasks.sql")];

/// How often an instance proves it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A heartbeat older than this marks an instance as gone.
const STALE_AFTER: Duration = Duration::from_secs(10);
/// Most cells written in one transaction.
const MAX_BATCH: usize = 8192;

/// How the store was asked to behave.
#[derive(Clone, Debug)]
pub(crate) struct StoreConfig {
    pub(crate) path: PathBuf,
    pub(crate) requeue_pending: bool,
    pub(crate) retention: Option<Duration>,
    pub(crate) busy_timeout: Duration,
    pub(crate) max_size: Option<u64>,
    /// Permission bits of a newly created file (and so of its -wal and
    /// -shm, which SQLite creates with the database file's mode).
    pub(crate) file_mode: u32,
}

/// A row taken over at start, to be dispatched again under its own id.
pub(crate) struct Recovered {
    pub(crate) id: TaskId,
    pub(crate) entry: &'static TaskEntry,
    pub(crate) args: Vec<u8>,
    pub(crate) tags: Tags,
    pub(crate) attempts: u32,
    pub(crate) created_at: SystemTime,
    pub(crate) idempotency_key: Option<String>,
}

/// What the writer is asked to do.
pub(crate) enum Write {
    /// Write this cell's current state.
    Cell(SharedCell),
    /// Insert this new keyed cell unless its key is taken; answer which.
    Claim(SharedCell, std_mpsc::SyncSender<Result<Claimed, String>>),
    /// Answer once everything sent before is committed.
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Commit what is left, retire the instance and exit.
    Stop(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The outcome of a keyed insert.
pub(crate) enum Claimed {
    /// The row was inserted: the key was free.
    Inserted,
    /// The key is held by this existing task.
    Existing(Box<StoredRow>),
    /// The key is held by a row that cannot be read.
    Corrupt(CorruptRow),
}

/// A row as read back.
pub(crate) struct StoredRow {
    pub(crate) record: TaskRecord,
    pub(crate) args: Vec<u8>,
    pub(crate) output: Option<Vec<u8>>,
}

pub(crate) struct SqliteStore {
    path: PathBuf,
    instance: Arc<str>,
    writes: Sender<Write>,
    /// What the writer thread takes when it starts.
    inbox: Mutex<Option<WriterParts>>,
    reader: Mutex<Connection>,
    retention: Option<Duration>,
}

/// The writer's inbox, its connection and the identity of the file it opened.
type WriterParts = (Receiver<Write>, Connection, Option<FileIdentity>);

fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::OpenStore {
        path: path.to_owned(),
        source: Box::new(source),
    }
}

fn micros(time: SystemTime) -> i64 {
    i64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(i64::MAX)
}

fn time(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
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

/// The identity of the file a store opened: device and inode. A file
/// deleted or replaced under a running manager has another identity (or
/// none), while SQLite keeps writing to the unlinked one; comparing before
/// each commit is how the loss is noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(path: &Path) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(metadata) => Ok(Some(FileIdentity {
                device: metadata.dev(),
                inode: metadata.ino(),
            })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    #[cfg(not(unix))]
    fn of(_path: &Path) -> std::io::Result<Option<Self>> {
        Ok(None)
    }
}

/// Opens `path` with the settings every connection uses.
fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection, rusqlite::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(busy_timeout)?;
    // Reading the schema here makes a file that is not SQLite fail now,
    // with SQLite's own "file is not a database".
    connection.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

/// Brings the schema up to date.
///
/// # Errors
///
/// [`Error::SchemaTooNew`] for a file written by a newer taskflow.
pub(crate) fn migrate(connection: &mut Connection, path: &Path) -> Result<(), Error> {
    let supported = MIGRATIONS.len() as i64;
    loop {
        // IMMEDIATE: two processes opening a new file at once take turns,
        // and the second sees the first's schema instead of creating it again.
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_error(path))?;
        let version: i64 = transaction
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(open_error(path))?;
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
        transaction.execute_batch(sql).map_err(open_error(path))?;
        transaction
            .pragma_update(None, "user_version", version + 1)
            .map_err(open_error(path))?;
        transaction.commit().map_err(open_error(path))?;
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

impl SqliteStore {
    /// Opens (creating if need be) the store, registers this instance and
    /// claims the rows left by instances that are gone.
    pub(crate) fn open(
        config: &StoreConfig,
        registry: &Registry,
    ) -> Result<(Self, Vec<Recovered>, Vec<CorruptRow>), Error> {
        let path = &config.path;
        create_private(path, config.file_mode).map_err(|source| Error::OpenStore {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let mut writer = connect(path, config.busy_timeout).map_err(open_error(path))?;
        let identity = FileIdentity::of(path).map_err(|source| Error::OpenStore {
            path: path.clone(),
            source: Box::new(source),
        })?;
        migrate(&mut writer, path)?;
        if let Some(bytes) = config.max_size {
            let page_size: i64 = writer
                .query_row("PRAGMA page_size", [], |row| row.get(0))
                .map_err(open_error(path))?;
            writer
                .pragma_update(
                    None,
                    "max_page_count",
                    i64::try_from(bytes.div_ceil(page_size.max(512).unsigned_abs()))
                        .unwrap_or(i64::MAX),
                )
                .map_err(open_error(path))?;
        }
        let reader = connect(path, config.busy_timeout).map_err(open_error(path))?;

        let instance: Arc<str> = TaskId::new().to_string().into();
        let now = micros(SystemTime::now());
        writer
            .execute(
                "INSERT INTO instances (id, pid, host, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![&*instance, std::process::id(), host_name(), now],
            )
            .map_err(open_error(path))?;
        let (recovered, corrupt) =
            recover(&writer, &instance, config, registry).map_err(open_error(path))?;

        let (writes, inbox) = crossbeam_channel::unbounded();
        let store = SqliteStore {
            path: path.clone(),
            instance,
            writes,
            inbox: Mutex::new(Some((inbox, writer, identity))),
            reader: Mutex::new(reader),
            retention: config.retention,
        };
        Ok((store, recovered, corrupt))
    }

    /// Starts the writer thread; it reports to `core` while it lives.
    pub(crate) fn start(&self, core: Weak<Core>) -> Result<(), Error> {
        let taken = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((inbox, connection, identity)) = taken else {
            return Ok(());
        };
        let writer = Writer {
            connection,
            path: self.path.clone(),
            identity,
            lost: None,
            inbox,
            core,
            instance: self.instance.clone(),
            retention: self.retention,
        };
        std::thread::Builder::new()
            .name("taskflow-store".into())
            .spawn(move || writer.run())
            .map(drop)
            .map_err(|source| Error::SpawnThread {
                name: "taskflow-store".into(),
                source,
            })
    }

    /// Queues a write of the cell's current state.
    pub(crate) fn write(&self, cell: SharedCell) {
        // Only fails once the writer has stopped, after shutdown.
        let _ = self.writes.send(Write::Cell(cell));
    }

    /// Inserts a keyed cell unless its key is held, waiting for the answer.
    pub(crate) fn claim(&self, cell: SharedCell) -> Result<Claimed, Error> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.writes
            .send(Write::Claim(cell, reply))
            .map_err(|_| Error::ShutDown)?;
        match answer.recv() {
            Ok(Ok(claimed)) => Ok(claimed),
            Ok(Err(message)) => Err(Error::Store(message)),
            Err(_) => Err(Error::ShutDown),
        }
    }

    /// Waits until everything queued so far is committed.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writes
            .send(Write::Flush(reply))
            .map_err(|_| Error::ShutDown)?;
        answer
            .await
            .map_err(|_| Error::ShutDown)?
            .map_err(Error::Store)
    }

    /// Commits what is queued, retires this instance and stops the writer.
    pub(crate) async fn stop(&self) -> Result<(), Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.writes.send(Write::Stop(reply)).is_err() {
            return Ok(());
        }
        answer
            .await
            .map_err(|_| Error::ShutDown)?
            .map_err(Error::Store)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&reader).map_err(|source| Error::ReadStore {
            path: self.path.clone(),
            source: Box::new(source),
        })
    }

    /// The row of task `id`: `Ok(Some(Err(_)))` when it is there but corrupt.
    pub(crate) fn get(&self, id: TaskId) -> Result<Option<ReadRow>, Error> {
        self.read(|db| {
            db.query_row(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
                [id_bytes(id)],
                read_row,
            )
            .optional()
        })
    }

    /// Rows matching `filter`, newest first, and the corrupt rows met on
    /// the way (skipped, so one bad row never hides the others).
    pub(crate) fn list(
        &self,
        filter: &TaskFilter,
    ) -> Result<(Vec<TaskRecord>, Vec<CorruptRow>), Error> {
        let limit = filter
            .limit
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        self.read(|db| {
            let mut statement = db.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks \
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR name = ?2) \
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = statement.query_map(
                params![
                    filter.status.map(TaskStatus::as_str),
                    filter.name.as_deref(),
                    limit
                ],
                read_row,
            )?;
            let (mut records, mut corrupt) = (Vec::new(), Vec::new());
            for row in rows {
                match row? {
                    Ok(stored) => records.push(stored.record),
                    Err(bad) => corrupt.push(bad),
                }
            }
            Ok((records, corrupt))
        })
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, name, executor, status, args, tags, attempts, created_at, started_at, \
                       finished_at, error_kind, error_message, output, rowid";

fn id_bytes(id: TaskId) -> [u8; 16] {
    id.to_bytes()
}

/// A stored row that cannot be read as a task: a column of the wrong type,
/// an unknown status or executor, undecodable tags. It is reported once and
/// left in place; every other row still loads.
#[derive(Clone, Debug)]
pub(crate) struct CorruptRow {
    /// The task's id, when that column at least is intact.
    pub(crate) id: Option<TaskId>,
    /// SQLite's own row id, which identifies the row whatever its columns hold.
    pub(crate) rowid: i64,
    /// What is wrong with it.
    pub(crate) reason: String,
}

impl std::fmt::Display for CorruptRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "task {id} (row {})", self.rowid)?,
            None => write!(f, "row {}", self.rowid)?,
        }
        write!(f, " in the task store is corrupt: {}", self.reason)
    }
}

/// A row as read: the task, or why it is not one. The outer error is
/// SQLite's (a query that failed), the inner one the row's own.
type ReadRow = Result<StoredRow, CorruptRow>;

/// Reads a row selected with [`COLUMNS`]. Every column is checked rather
/// than trusted: the file may have been written by anyone.
fn read_row(row: &Row<'_>) -> rusqlite::Result<ReadRow> {
    use rusqlite::types::ValueRef;
    let rowid: i64 = row.get(13)?;
    let id = match row.get_ref(0)? {
        ValueRef::Blob(bytes) => <[u8; 16]>::try_from(bytes).ok().map(TaskId::from_bytes),
        _ => None,
    };
    let corrupt = |reason: String| CorruptRow { id, rowid, reason };
    let Some(task_id) = id else {
        return Ok(Err(corrupt("its id is not 16 bytes".into())));
    };
    let text = |index: usize, column: &str| -> Result<Option<String>, CorruptRow> {
        match row.get_ref(index) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Text(bytes)) => std::str::from_utf8(bytes)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| corrupt(format!("its {column} is not UTF-8"))),
            _ => Err(corrupt(format!("its {column} is not text"))),
        }
    };
    let blob = |index: usize, column: &str| -> Result<Option<Vec<u8>>, CorruptRow> {
        match row.get_ref(index) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Blob(bytes)) => Ok(Some(bytes.to_vec())),
            _ => Err(corrupt(format!("its {column} is not a blob"))),
        }
    };
    let integer = |index: usize, column: &str| -> Result<Option<i64>, CorruptRow> {
        match row.get_ref(index) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Integer(n)) => Ok(Some(n)),
            _ => Err(corrupt(format!("its {column} is not an integer"))),
        }
    };
    let read = || -> Result<StoredRow, CorruptRow> {
        let required = |value: Option<String>, column: &str| {
            value.ok_or_else(|| corrupt(format!("its {column} is missing")))
        };
        let name = required(text(1, "name")?, "name")?;
        let executor = required(text(2, "executor")?, "executor")?;
        let status = required(text(3, "status")?, "status")?;
        let record = TaskRecord {
            id: task_id,
            name,
            executor: Executor::parse(&executor)
                .ok_or_else(|| corrupt(format!("unknown executor `{executor}`")))?,
            status: status
                .parse()
                .map_err(|_| corrupt(format!("unknown status `{status}`")))?,
            created_at: time(integer(7, "creation time")?.unwrap_or(0)),
            started_at: integer(8, "start time")?.map(time),
            finished_at: integer(9, "finish time")?.map(time),
            attempts: integer(6, "attempt count")?
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| corrupt("its attempt count is out of range".into()))?,
            last_error: match (text(10, "error kind")?, text(11, "error message")?) {
                (Some(kind), message) => Some(TaskError::new(
                    ErrorKind::parse(&kind).unwrap_or(ErrorKind::Error),
                    message.unwrap_or_default(),
                )),
                (None, _) => None,
            },
            tags: decode_tags(blob(5, "tags")?).map_err(corrupt)?,
            logs: Vec::new(),
        };
        Ok(StoredRow {
            record,
            args: blob(4, "arguments")?.unwrap_or_default(),
            output: blob(12, "output")?,
        })
    };
    Ok(read())
}

/// A row's tags: none, or their encoding.
fn decode_tags(bytes: Option<Vec<u8>>) -> Result<Tags, String> {
    match bytes {
        None => Ok(Tags::default()),
        Some(bytes) => codec::decode(&bytes).map_err(|error| format!("its tags: {error}")),
    }
}

fn key_holder(db: &Connection, name: &str, key: &str) -> rusqlite::Result<Option<ReadRow>> {
    db.query_row(
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE name = ?1 AND idempotency_key = ?2 \
             AND status IN ('PENDING', 'RUNNING', 'SUCCESS')"
        ),
        [name, key],
        read_row,
    )
    .optional()
}

/// Instances other than `me` that are gone: stale heartbeat, or a pid that
/// no longer exists on this host.
fn dead_instances(db: &Connection, me: &str) -> rusqlite::Result<Vec<String>> {
    let host = host_name();
    let stale_before = micros(SystemTime::now()) - STALE_AFTER.as_micros() as i64;
    let mut statement =
        db.prepare("SELECT id, pid, host, heartbeat_at FROM instances WHERE id != ?1")?;
    let rows = statement.query_map([me], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, u32>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, i64>(3)?,
        ))
    })?;
    let mut dead = Vec::new();
    for row in rows {
        let (id, pid, their_host, heartbeat) = row?;
        let gone_here = their_host == host && !process_exists(pid);
        if heartbeat < stale_before || gone_here {
            dead.push(id);
        }
    }
    Ok(dead)
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    taskflow_worker::sys::process_exists(pid)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    // Without a cheap check, rely on the heartbeat alone.
    true
}

/// Claims the rows of gone instances and of released rows, returning those
/// to dispatch again; marks rows left RUNNING as INTERRUPTED unless their
/// task asks to run again.
fn recover(
    db: &Connection,
    me: &str,
    config: &StoreConfig,
    registry: &Registry,
) -> rusqlite::Result<(Vec<Recovered>, Vec<CorruptRow>)> {
    let now = micros(SystemTime::now());
    let mut owners: Vec<Option<String>> = dead_instances(db, me)?.into_iter().map(Some).collect();
    // Rows a graceful shutdown released for the next start.
    owners.push(None);

    let mut recovered = Vec::new();
    let mut corrupt = Vec::new();
    let mut unregistered = std::collections::BTreeSet::new();
    for owner in &owners {
        // Each statement claims atomically: a row is taken by whichever
        // manager's UPDATE reaches it first, and by no other.
        for name in names_of(db, owner.as_deref())? {
            let Some(entry) = registry.get(&name) else {
                unregistered.insert(name);
                continue;
            };
            let policy = entry.defaults();
            if policy.requeue_on_interrupt {
                claim(
                    db,
                    owner.as_deref(),
                    entry,
                    "RUNNING",
                    me,
                    &mut recovered,
                    &mut corrupt,
                )?;
            } else {
                db.execute(
                    "UPDATE tasks SET status = 'INTERRUPTED', finished_at = ?1, \
                     error_kind = 'interrupted', error_message = 'the instance running it is gone' \
                     WHERE status = 'RUNNING' AND owner IS ?2 AND name = ?3",
                    params![now, owner, name],
                )?;
            }
            // A released row (no owner) was left PENDING by a graceful stop
            // precisely so that the next start runs it.
            if owner.is_none() || config.requeue_pending || policy.persist {
                claim(
                    db,
                    owner.as_deref(),
                    entry,
                    "PENDING",
                    me,
                    &mut recovered,
                    &mut corrupt,
                )?;
            }
        }
        if let Some(owner) = owner {
            let unfinished: i64 = db.query_row(
                "SELECT count(*) FROM tasks WHERE owner = ?1 AND status IN ('PENDING', 'RUNNING')",
                [owner],
                |row| row.get(0),
            )?;
            if unfinished == 0 {
                db.execute("DELETE FROM instances WHERE id = ?1", [owner])?;
            }
        }
    }
    for name in unregistered {
        tracing::warn!(
            task = %name,
            "the task store holds unfinished tasks named `{name}`, which this binary does not register; they are left untouched"
        );
    }
    recovered.sort_by_key(|r| r.id);
    Ok((recovered, corrupt))
}

fn names_of(db: &Connection, owner: Option<&str>) -> rusqlite::Result<Vec<String>> {
    let mut statement = db.prepare_cached(
        "SELECT DISTINCT name FROM tasks WHERE owner IS ?1 AND status IN ('PENDING', 'RUNNING')",
    )?;
    let names = statement.query_map([owner], |row| row.get(0))?;
    names.collect()
}

/// Takes `owner`'s rows of task `entry` in `status` for `me`, as PENDING.
/// A row whose tags cannot be decoded is not taken: it goes to `corrupt`
/// and stays as it is.
fn claim(
    db: &Connection,
    owner: Option<&str>,
    entry: &'static TaskEntry,
    status: &str,
    me: &str,
    recovered: &mut Vec<Recovered>,
    corrupt: &mut Vec<CorruptRow>,
) -> rusqlite::Result<()> {
    let mut candidates = db.prepare_cached(
        "SELECT rowid, id, args, tags, attempts, created_at, idempotency_key FROM tasks \
         WHERE owner IS ?1 AND name = ?2 AND status = ?3",
    )?;
    let rows = candidates.query_map(params![owner, entry.name(), status], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, Vec<u8>>(2)?,
            row.get::<_, Option<Vec<u8>>>(3)?,
            row.get::<_, u32>(4)?,
            row.get::<_, i64>(5)?,
            row.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut readable = Vec::new();
    for row in rows {
        let (rowid, id, args, tags, attempts, created_at, idempotency_key) = match row {
            Ok(row) => row,
            // A column of the wrong type: the full reader says which.
            Err(
                rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..),
            ) => {
                continue;
            }
            Err(error) => return Err(error),
        };
        let id = <[u8; 16]>::try_from(id.as_slice())
            .ok()
            .map(TaskId::from_bytes);
        match (id, decode_tags(tags)) {
            (Some(id), Ok(tags)) => readable.push(Recovered {
                id,
                entry,
                args,
                tags,
                attempts,
                created_at: time(created_at),
                idempotency_key,
            }),
            (id, Err(reason)) => corrupt.push(CorruptRow { id, rowid, reason }),
            (None, Ok(_)) => corrupt.push(CorruptRow {
                id: None,
                rowid,
                reason: "its id is not 16 bytes".into(),
            }),
        }
    }
    // One row at a time, each taken only if it is still as it was read: a
    // row is taken by whichever manager's UPDATE reaches it first.
    let mut take = db.prepare_cached(
        "UPDATE tasks SET status = 'PENDING', owner = ?1, started_at = NULL, finished_at = NULL \
         WHERE id = ?2 AND owner IS ?3 AND status = ?4",
    )?;
    for task in readable {
        if take.execute(params![me, id_bytes(task.id), owner, status])? == 1 {
            recovered.push(task);
        }
    }
    Ok(())
}

/// The writer thread's state.
struct Writer {
    connection: Connection,
    /// The file's path and the identity it had when opened.
    path: PathBuf,
    identity: Option<FileIdentity>,
    /// Why the file is no longer the one this store opened, once it is not.
    lost: Option<String>,
    inbox: Receiver<Write>,
    core: Weak<Core>,
    instance: Arc<str>,
    retention: Option<Duration>,
}

/// One cell's state, as it goes into its row.
struct RowState {
    id: [u8; 16],
    status: &'static str,
    attempts: u32,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    error_kind: Option<&'static str>,
    error_message: Option<String>,
    owner: Option<Arc<str>>,
    output: Option<Arc<[u8]>>,
}

impl Writer {
    fn run(mut self) {
        let mut cells: Vec<SharedCell> = Vec::new();
        let mut claims: Vec<(SharedCell, std_mpsc::SyncSender<Result<Claimed, String>>)> =
            Vec::new();
        let mut flushes: Vec<tokio::sync::oneshot::Sender<Result<(), String>>> = Vec::new();
        let mut stop = None;
        let mut failing: Option<(Instant, Duration)> = None;
        let mut next_heartbeat = Instant::now() + HEARTBEAT;
        let mut next_prune = Instant::now();
        loop {
            let wake = match failing {
                Some((retry_at, _)) => retry_at.min(next_heartbeat),
                None => next_heartbeat,
            };
            let first = match self
                .inbox
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(write) => Some(write),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    Some(Write::Stop(tokio::sync::oneshot::channel().0))
                }
            };
            for write in first
                .into_iter()
                .chain(std::iter::from_fn(|| self.inbox.try_recv().ok()))
            {
                match write {
                    Write::Cell(cell) => cells.push(cell),
                    Write::Claim(cell, reply) => claims.push((cell, reply)),
                    Write::Flush(reply) => flushes.push(reply),
                    Write::Stop(reply) => stop = Some(reply),
                }
                if cells.len() >= MAX_BATCH || stop.is_some() {
                    break;
                }
            }

            let due =
                failing.is_none_or(|(retry_at, _)| Instant::now() >= retry_at) || stop.is_some();
            if due && (!cells.is_empty() || !claims.is_empty() || !flushes.is_empty()) {
                if self.lost.is_none() {
                    self.check_identity(&cells, &claims);
                }
                if let Some(reason) = &self.lost {
                    // Nothing reaches the file any more: say so to everyone waiting.
                    cells.drain(..).for_each(|cell| cell.mark_unwritten());
                    for (_, reply) in claims.drain(..) {
                        let _ = reply.send(Err(reason.clone()));
                    }
                    flushes
                        .drain(..)
                        .for_each(|reply| drop(reply.send(Err(reason.clone()))));
                }
            }
            if self.lost.is_none()
                && due
                && (!cells.is_empty() || !claims.is_empty() || !flushes.is_empty())
            {
                let committed = match self.commit(&cells, &mut claims) {
                    Ok(()) => Ok(()),
                    // Write what fits, one task per transaction, so a nearly
                    // full disk still takes what it can.
                    Err(error) => self.commit_singly(&mut cells).map_err(|()| error),
                };
                match committed {
                    Ok(()) => {
                        if failing.take().is_some() {
                            tracing::info!(
                                "the task store is writable again; pending changes are written"
                            );
                        }
                        self.written(&cells);
                        cells.clear();
                        flushes.drain(..).for_each(|reply| drop(reply.send(Ok(()))));
                    }
                    Err(error) => {
                        let message = format!("cannot write to the task store: {error}");
                        let backoff = match failing {
                            None => {
                                self.report(&cells, &message);
                                Duration::from_millis(100)
                            }
                            Some((_, backoff)) => (backoff * 2).min(Duration::from_secs(5)),
                        };
                        failing = Some((Instant::now() + backoff, backoff));
                        // A waiting enqueue or flush learns of it now rather than hang.
                        for (_, reply) in claims.drain(..) {
                            let _ = reply.send(Err(message.clone()));
                        }
                        flushes
                            .drain(..)
                            .for_each(|reply| drop(reply.send(Err(message.clone()))));
                    }
                }
            }

            if Instant::now() >= next_heartbeat {
                next_heartbeat = Instant::now() + HEARTBEAT;
                // A missed beat is harmless unless it lasts STALE_AFTER;
                // a failing store is reported by the commits above.
                let _ = self.connection.execute(
                    "UPDATE instances SET heartbeat_at = ?1 WHERE id = ?2",
                    params![micros(SystemTime::now()), &*self.instance],
                );
            }
            if let Some(retention) = self.retention
                && Instant::now() >= next_prune
            {
                next_prune = Instant::now()
                    + (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
                let cutoff = micros(SystemTime::now() - retention);
                let pruned = self.connection.execute(
                    "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                     AND status NOT IN ('PENDING', 'RUNNING')",
                    [cutoff],
                );
                if let Err(error) = pruned {
                    tracing::warn!("cannot prune old tasks from the task store: {error}");
                }
            }

            if let Some(reply) = stop.take() {
                let result = if let Some(reason) = &self.lost {
                    Err(reason.clone())
                } else if cells.is_empty() {
                    Ok(())
                } else {
                    cells.iter().for_each(|cell| cell.mark_unwritten());
                    Err(format!(
                        "{} task changes could not be written to the task store before it stopped",
                        cells.len()
                    ))
                };
                let _ = self
                    .connection
                    .execute("DELETE FROM instances WHERE id = ?1", [&*self.instance]);
                let _ = reply.send(result);
                return;
            }
        }
    }

    /// Notices a store file deleted or replaced since it was opened: SQLite
    /// would go on committing to the unlinked file, acknowledging tasks that
    /// no restart will ever see. Reported once; from then on nothing is
    /// acknowledged.
    fn check_identity(
        &mut self,
        cells: &[SharedCell],
        claims: &[(SharedCell, std_mpsc::SyncSender<Result<Claimed, String>>)],
    ) {
        let Some(expected) = self.identity else {
            return;
        };
        let what = match FileIdentity::of(&self.path) {
            Ok(Some(found)) if found == expected => return,
            Ok(Some(_)) => "was replaced by another file",
            Ok(None) => "was deleted",
            // Unreadable metadata (a directory permission changed) does not
            // prove the file is gone; the commit itself will tell.
            Err(error) => {
                tracing::debug!("cannot check the task store file: {error}");
                return;
            }
        };
        let message = format!(
            "the task store file at {} {what} while in use; task changes are no longer saved (restart to open the store again)",
            self.path.display()
        );
        tracing::error!("{message}");
        if let Some(core) = self.core.upgrade() {
            let first = cells.first().or(claims.first().map(|(cell, _)| cell));
            core.report_store_failure(first.map(|cell| &**cell), &message);
        }
        self.lost = Some(message);
    }

    /// After a failed batch: writes cells one transaction each until one
    /// fails, removing those written from `cells`. `Ok` once none is left.
    fn commit_singly(&mut self, cells: &mut Vec<SharedCell>) -> Result<(), ()> {
        let mut seen = HashSet::with_capacity(cells.len());
        cells.retain(|cell| seen.insert(cell.id));
        let mut written = 0;
        for cell in cells.iter() {
            if self
                .commit(std::slice::from_ref(cell), &mut Vec::new())
                .is_err()
            {
                break;
            }
            written += 1;
        }
        let done: Vec<SharedCell> = cells.drain(..written).collect();
        self.written(&done);
        if cells.is_empty() { Ok(()) } else { Err(()) }
    }

    /// Writes every cell's current state and every claim in one transaction.
    fn commit(
        &mut self,
        cells: &[SharedCell],
        claims: &mut Vec<(SharedCell, std_mpsc::SyncSender<Result<Claimed, String>>)>,
    ) -> rusqlite::Result<()> {
        // IMMEDIATE takes the write lock up front, so another process's
        // commit cannot invalidate this transaction halfway.
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Cells first: a claim sent after a task released its key (failed,
        // cancelled) must see that release.
        let mut seen = HashSet::with_capacity(cells.len());
        // Newest state wins: write each cell once, in order of last change.
        for cell in cells.iter().rev() {
            if !seen.insert(cell.id) {
                continue;
            }
            let state = row_state(cell, &self.instance);
            let written = match cell.is_stored() {
                true => update(&transaction, &state),
                false => insert(&transaction, cell, &self.instance, false)
                    .and_then(|_| update(&transaction, &state)),
            };
            match written {
                Ok(()) => {}
                // A row the file's constraints refuse would be refused
                // forever: report it and go on with the others.
                Err(rusqlite::Error::SqliteFailure(error, message))
                    if error.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    tracing::error!(
                        task = %cell.id,
                        "the task store refused this task's row: {}",
                        message.unwrap_or_default()
                    );
                }
                Err(error) => return Err(error),
            }
        }
        let mut answers = Vec::with_capacity(claims.len());
        for (cell, _) in claims.iter() {
            let inserted = insert(&transaction, cell, &self.instance, true)?;
            if inserted {
                answers.push(Claimed::Inserted);
            } else {
                let key = cell.key.as_deref().unwrap_or_default();
                match key_holder(&transaction, cell.entry.name(), key)? {
                    Some(Ok(row)) => answers.push(Claimed::Existing(Box::new(row))),
                    Some(Err(corrupt)) => answers.push(Claimed::Corrupt(corrupt)),
                    // Held a moment ago and released since: take it now.
                    None => {
                        insert(&transaction, cell, &self.instance, false)?;
                        answers.push(Claimed::Inserted);
                    }
                }
            }
        }
        transaction.commit()?;
        for ((cell, reply), answer) in claims.drain(..).zip(answers) {
            if matches!(answer, Claimed::Inserted) {
                cell.mark_stored();
            }
            let _ = reply.send(Ok(answer));
        }
        Ok(())
    }
}

fn row_state(cell: &SharedCell, instance: &Arc<str>) -> RowState {
    let state = cell.lock();
    let error = state.last_error.as_deref();
    // Interrupted but marked to run again at the next start: the row goes
    // back to PENDING with no owner and no times, for whichever instance
    // starts next.
    let released = state.status == TaskStatus::Interrupted && cell.is_released();
    let (status, started_at, finished_at, owner) = match released {
        true => ("PENDING", None, None, None),
        false => (
            state.status.as_str(),
            state.started_at.map(micros),
            state.finished_at.map(micros),
            Some(instance.clone()),
        ),
    };
    RowState {
        id: id_bytes(cell.id),
        status,
        attempts: state.attempts,
        started_at,
        finished_at,
        error_kind: error.map(|e| e.kind().as_str()),
        error_message: error.map(|e| e.message().to_owned()),
        owner,
        output: state.output_bytes().cloned(),
    }
}

impl Writer {
    /// After a commit: wake `persisted()` waiters, let finished cells leave memory.
    fn written(&self, cells: &[SharedCell]) {
        let core = self.core.upgrade();
        for cell in cells {
            cell.mark_stored();
            if let Some(core) = &core
                && cell.status().is_finished()
            {
                core.store.evict_when_full(cell);
            }
        }
    }

    fn report(&self, cells: &[SharedCell], message: &str) {
        tracing::error!(
            "{message}; tasks keep running and their changes are kept until it can be written"
        );
        if let (Some(core), Some(cell)) = (self.core.upgrade(), cells.first()) {
            core.report_store_failure(Some(cell), message);
        }
    }
}

/// Inserts the cell's row; with `keyed_only_if_free`, a taken key is not an
/// error but `false`.
fn insert(
    db: &Connection,
    cell: &SharedCell,
    owner: &str,
    keyed_only_if_free: bool,
) -> rusqlite::Result<bool> {
    let tags = match cell.tags.is_empty() {
        true => None,
        false => codec::encode(&cell.tags).ok(),
    };
    let sql = if keyed_only_if_free {
        "INSERT INTO tasks (id, name, executor, status, args, tags, attempts, created_at, idempotency_key, owner) \
         VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, 0, ?6, ?7, ?8) ON CONFLICT DO NOTHING"
    } else {
        "INSERT INTO tasks (id, name, executor, status, args, tags, attempts, created_at, idempotency_key, owner) \
         VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, 0, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING"
    };
    let changed = db.prepare_cached(sql)?.execute(params![
        id_bytes(cell.id),
        cell.entry.name(),
        cell.entry.executor().as_str(),
        &*cell.args,
        tags,
        micros(cell.created_at),
        cell.key.as_deref(),
        owner,
    ])?;
    Ok(changed == 1)
}

fn update(db: &Connection, state: &RowState) -> rusqlite::Result<()> {
    db.prepare_cached(
        "UPDATE tasks SET status = ?2, attempts = ?3, started_at = ?4, finished_at = ?5, \
         error_kind = ?6, error_message = ?7, owner = ?8, output = coalesce(?9, output) WHERE id = ?1",
    )?
    .execute(params![
        state.id,
        state.status,
        state.attempts,
        state.started_at,
        state.finished_at,
        state.error_kind,
        state.error_message,
        state.owner.as_deref(),
        state.output.as_deref(),
    ])?;
    Ok(())
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
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('tasks', 'instances')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2);
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
