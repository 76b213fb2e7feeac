//! Reading rows back: every column checked, nothing trusted.
//!
//! PostgreSQL keeps each column's type, so what can be wrong with a row is
//! its content: an unknown status or executor, tags that do not decode,
//! another codec version, a number out of range. Such a row becomes a
//! [`CorruptRow`] naming the row (by its `seq`) and what is wrong, never a
//! panic and never an error that hides the other rows.

use std::time::{SystemTime, UNIX_EPOCH};

use taskflow_worker::codec::CODEC_VERSION;
use taskflow_worker::{ErrorKind, Executor, LogRecord, TaskError, TaskId};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::record::TaskRecord;
use crate::schedule::Tick;
use crate::store::{CorruptRow, Row as StoredRow, StoredTask, decode_tags, log_line};

/// Reads a row selected with [`COLUMNS`](super::sql::COLUMNS): the task,
/// or why it is not one.
pub(super) fn read(row: &Row) -> StoredRow {
    let key = row.try_get::<_, i64>(13).unwrap_or(-1);
    let id = row.try_get::<_, uuid::Uuid>(0).ok().map(TaskId::from_uuid);
    Columns { row, id, key }.task()
}

/// Reads a stored id.
pub(super) fn id(row: &Row, index: usize) -> Option<TaskId> {
    row.try_get::<_, uuid::Uuid>(index)
        .ok()
        .map(TaskId::from_uuid)
}

/// One row being read, with what identifies it for a report.
struct Columns<'a> {
    row: &'a Row,
    id: Option<TaskId>,
    key: i64,
}

impl Columns<'_> {
    fn corrupt(&self, reason: impl Into<String>) -> CorruptRow {
        CorruptRow {
            id: self.id,
            key: self.key,
            reason: reason.into(),
        }
    }

    fn get<'r, T: FromSql<'r>>(&'r self, index: usize, column: &str) -> Result<T, CorruptRow> {
        self.row
            .try_get(index)
            .map_err(|error| self.corrupt(format!("its {column} cannot be read: {error}")))
    }

    fn required_text(&self, index: usize, column: &str) -> Result<String, CorruptRow> {
        self.get::<Option<String>>(index, column)?
            .ok_or_else(|| self.corrupt(format!("its {column} is missing")))
    }

    fn task(&self) -> StoredRow {
        let Some(id) = self.id else {
            return Err(self.corrupt("its id cannot be read"));
        };
        let codec: i32 = self.get(20, "codec version")?;
        if i64::from(codec) != i64::from(CODEC_VERSION) {
            return Err(self.corrupt(format!(
                "it was encoded with codec version {codec}; this taskflow reads version {CODEC_VERSION}"
            )));
        }
        let executor = self.required_text(2, "executor")?;
        let status = self.required_text(3, "status")?;
        let created_at: SystemTime = self.get(7, "creation time")?;
        let record = TaskRecord {
            id,
            name: self.required_text(1, "name")?,
            executor: Executor::parse(&executor)
                .ok_or_else(|| self.corrupt(format!("unknown executor `{executor}`")))?,
            queue: self.required_text(14, "queue")?,
            priority: self.get(15, "priority")?,
            status: status
                .parse()
                .map_err(|_| self.corrupt(format!("unknown status `{status}`")))?,
            created_at,
            run_at: self.get(16, "run time")?,
            started_at: self.get(8, "start time")?,
            finished_at: self.get(9, "finish time")?,
            attempts: u32::try_from(self.get::<i32>(6, "attempt count")?)
                .map_err(|_| self.corrupt("its attempt count is negative"))?,
            last_error: match (
                self.get::<Option<String>>(10, "error kind")?,
                self.get::<Option<String>>(11, "error message")?,
            ) {
                (Some(kind), message) => Some(TaskError::new(
                    ErrorKind::parse(&kind).unwrap_or(ErrorKind::Error),
                    message.unwrap_or_default(),
                )),
                (None, _) => None,
            },
            tags: decode_tags(self.get(5, "tags")?).map_err(|reason| self.corrupt(reason))?,
            logs: Vec::new(),
            logs_dropped: u32::try_from(self.get::<i64>(21, "dropped log count")?.max(0))
                .unwrap_or(u32::MAX),
            scheduled: match (
                self.get::<Option<String>>(22, "schedule")?,
                self.get::<Option<SystemTime>>(23, "tick")?,
            ) {
                (Some(schedule), Some(at)) => Some(Tick::new(schedule, at)),
                _ => None,
            },
        };
        Ok(StoredTask {
            record,
            args: self.get(4, "arguments")?,
            output: self.get(12, "output")?,
            idempotency_key: self.get(17, "idempotency key")?,
            owner: self.get(18, "owner")?,
            cancel_requested: self.get(19, "cancel flag")?,
        })
    }
}

/// Reads a log line; a malformed one becomes a line saying so, so one bad
/// line never hides a task's other lines.
pub(super) fn read_log(row: &Row) -> LogRecord {
    let text = |index: usize| row.try_get::<_, String>(index).unwrap_or_default();
    let fields = row.try_get::<_, Option<Vec<u8>>>(5).ok().flatten();
    log_line(
        u32::try_from(row.try_get::<_, i32>(0).unwrap_or(0)).unwrap_or(0),
        row.try_get::<_, SystemTime>(1).unwrap_or(UNIX_EPOCH),
        &text(2),
        text(3),
        text(4),
        fields.as_deref(),
    )
}
