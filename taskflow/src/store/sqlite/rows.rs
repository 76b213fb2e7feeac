//! Reading rows back: every column checked, nothing trusted.
//!
//! The file may have been written by another build or by anyone with write
//! access to it, so a row is decoded column by column and any surprise (a
//! wrong type, an unknown status, undecodable tags, another codec version)
//! makes it a [`CorruptRow`] naming the row and what is wrong, never a panic
//! and never an error that hides the other rows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Row;
use rusqlite::types::ValueRef;
use taskflow_worker::codec::CODEC_VERSION;
use taskflow_worker::{ErrorKind, Executor, LogRecord, TaskError, TaskId};

use crate::lifecycle::TaskStatus;
use crate::record::TaskRecord;
use crate::schedule::Tick;
use crate::store::{CorruptRow, Row as StoredRow, StoredTask, decode_tags, log_line};

/// The columns [`read`] expects, in order.
pub(super) const COLUMNS: &str = "id, name, executor, status, args, tags, attempts, created_at, \
     started_at, finished_at, error_kind, error_message, output, rowid, queue, priority, run_at, \
     idempotency_key, owner, cancel_requested, codec, logs_dropped, schedule, tick";

/// Microseconds since the epoch, as stored.
pub(super) fn micros(time: SystemTime) -> i64 {
    i64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(i64::MAX)
}

/// The time `micros` microseconds after the epoch (the epoch for negatives).
pub(super) fn time(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// Reads a row selected with [`COLUMNS`]: the task, or why it is not one.
/// The outer error is SQLite's (a column index out of range: a bug here).
pub(super) fn read(row: &Row<'_>) -> rusqlite::Result<StoredRow> {
    let key: i64 = row.get(13)?;
    let id = id(row, 0)?;
    Ok(Columns { row, id, key }.task())
}

/// The task id in column `index`, if it reads as one.
pub(super) fn id(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<TaskId>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Blob(bytes) => <[u8; 16]>::try_from(bytes).ok().map(TaskId::from_bytes),
        _ => None,
    })
}

/// One row being read, with what identifies it for a report.
struct Columns<'a, 'r> {
    row: &'a Row<'r>,
    id: Option<TaskId>,
    key: i64,
}

impl Columns<'_, '_> {
    fn corrupt(&self, reason: impl Into<String>) -> CorruptRow {
        CorruptRow {
            id: self.id,
            key: self.key,
            reason: reason.into(),
        }
    }

    fn value(&self, index: usize) -> Result<ValueRef<'_>, CorruptRow> {
        self.row
            .get_ref(index)
            .map_err(|error| self.corrupt(format!("column {index}: {error}")))
    }

    fn text(&self, index: usize, column: &str) -> Result<Option<String>, CorruptRow> {
        match self.value(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| self.corrupt(format!("its {column} is not UTF-8"))),
            _ => Err(self.corrupt(format!("its {column} is not text"))),
        }
    }

    fn required_text(&self, index: usize, column: &str) -> Result<String, CorruptRow> {
        self.text(index, column)?
            .ok_or_else(|| self.corrupt(format!("its {column} is missing")))
    }

    fn blob(&self, index: usize, column: &str) -> Result<Option<Vec<u8>>, CorruptRow> {
        match self.value(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(bytes) => Ok(Some(bytes.to_vec())),
            _ => Err(self.corrupt(format!("its {column} is not a blob"))),
        }
    }

    fn integer(&self, index: usize, column: &str) -> Result<Option<i64>, CorruptRow> {
        match self.value(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            _ => Err(self.corrupt(format!("its {column} is not an integer"))),
        }
    }

    fn time(&self, index: usize, column: &str) -> Result<Option<SystemTime>, CorruptRow> {
        Ok(self.integer(index, column)?.map(time))
    }

    fn task(&self) -> StoredRow {
        let Some(id) = self.id else {
            return Err(self.corrupt("its id is not 16 bytes"));
        };
        let codec = self.integer(20, "codec version")?.unwrap_or(0);
        if codec != i64::from(CODEC_VERSION) {
            return Err(self.corrupt(format!(
                "it was encoded with codec version {codec}; this taskflow reads version {CODEC_VERSION}"
            )));
        }
        let executor = self.required_text(2, "executor")?;
        let status = self.required_text(3, "status")?;
        let created_at = self.time(7, "creation time")?.unwrap_or(UNIX_EPOCH);
        let record = TaskRecord {
            id,
            name: self.required_text(1, "name")?,
            executor: Executor::parse(&executor)
                .ok_or_else(|| self.corrupt(format!("unknown executor `{executor}`")))?,
            queue: self.required_text(14, "queue")?,
            priority: self
                .integer(15, "priority")?
                .and_then(|n| i16::try_from(n).ok())
                .ok_or_else(|| self.corrupt("its priority is out of range"))?,
            status: status
                .parse()
                .map_err(|_| self.corrupt(format!("unknown status `{status}`")))?,
            created_at,
            run_at: self.time(16, "run time")?.unwrap_or(created_at),
            started_at: self.time(8, "start time")?,
            finished_at: self.time(9, "finish time")?,
            attempts: self
                .integer(6, "attempt count")?
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.corrupt("its attempt count is out of range"))?,
            last_error: match (
                self.text(10, "error kind")?,
                self.text(11, "error message")?,
            ) {
                (Some(kind), message) => Some(TaskError::new(
                    ErrorKind::parse(&kind).unwrap_or(ErrorKind::Error),
                    message.unwrap_or_default(),
                )),
                (None, _) => None,
            },
            tags: decode_tags(self.blob(5, "tags")?).map_err(|reason| self.corrupt(reason))?,
            logs: Vec::new(),
            logs_dropped: self
                .integer(21, "dropped log count")?
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(u32::MAX),
            scheduled: match (self.text(22, "schedule")?, self.time(23, "tick")?) {
                (Some(schedule), Some(at)) => Some(Tick::new(schedule, at)),
                _ => None,
            },
        };
        Ok(StoredTask {
            record,
            args: self.blob(4, "arguments")?.unwrap_or_default(),
            output: self.blob(12, "output")?,
            idempotency_key: self.text(17, "idempotency key")?,
            owner: self.text(18, "owner")?,
            cancel_requested: self.integer(19, "cancel flag")?.unwrap_or(0) != 0,
        })
    }
}

/// The columns of a log line, as selected by `get`.
pub(super) const LOG_COLUMNS: &str = "attempt, at, level, target, message, fields";

/// Reads a log line; a malformed one becomes a line saying so, so one bad
/// line never hides a task's other lines.
pub(super) fn read_log(row: &Row<'_>) -> rusqlite::Result<LogRecord> {
    let attempt: i64 = row.get::<_, Option<i64>>(0)?.unwrap_or(0);
    let at: i64 = row.get::<_, Option<i64>>(1)?.unwrap_or(0);
    let text = |index: usize| -> String {
        match row.get_ref(index) {
            Ok(ValueRef::Text(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        }
    };
    let fields = match row.get_ref(5) {
        Ok(ValueRef::Blob(bytes)) => Some(bytes),
        _ => None,
    };
    Ok(log_line(
        u32::try_from(attempt).unwrap_or(0),
        time(at),
        &text(2),
        text(3),
        text(4),
        fields,
    ))
}

/// The stored text of a status.
pub(super) fn status_text(status: TaskStatus) -> &'static str {
    status.as_str()
}
