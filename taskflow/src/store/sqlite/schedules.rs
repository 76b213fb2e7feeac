//! Schedules in the SQLite file: their rows, and the fire of one tick.
//!
//! A fire is one writer job, so one transaction: it reads the schedule's
//! state, inserts the tick's task (the unique index on `(schedule, tick)`
//! admits it once, whichever process commits first) and records the fire.
//! SQLite's single writer serializes fires across processes; the index is
//! what makes a second fire of the tick write nothing, whatever the state
//! it read.

use rusqlite::{Connection, OptionalExtension, params};
use taskflow_worker::TaskId;
use taskflow_worker::codec::CODEC_VERSION;

use super::rows::{micros, status_text, time};
use crate::lifecycle::TaskStatus;
use crate::schedule::CatchUp;
use crate::store::{CorruptSchedule, Fire, Fired, ScheduleRead, ScheduleRow};
use crate::store::{decode_tags, encode_tags};

const COLUMNS: &str = "name, task, spec, timezone, declared, catch_up, args, tags, queue, \
     priority, codec, paused, since, last_tick, last_task";

pub(super) fn fire(db: &Connection, fire: &Fire) -> rusqlite::Result<Fired> {
    let state: Option<(bool, i64, Option<i64>)> = db
        .prepare_cached("SELECT paused, since, last_tick FROM schedules WHERE name = ?1")?
        .query_row([&fire.schedule], |row| {
            Ok((row.get::<_, i64>(0)? != 0, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((paused, since, last_tick)) = state else {
        return Ok(Fired::Unknown);
    };
    let tick = micros(fire.tick);
    if paused {
        return Ok(Fired::Paused);
    }
    if last_tick.is_some_and(|last| tick <= last) {
        return Ok(Fired::Taken);
    }
    if !fire.ignore_since && tick <= since {
        return Ok(Fired::Stale);
    }
    let task = &fire.task;
    let inserted = db
        .prepare_cached(
            "INSERT INTO tasks (id, name, executor, queue, priority, status, args, tags, attempts, \
             created_at, run_at, codec, schedule, tick) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            task.id.to_bytes(),
            task.name,
            task.executor.as_str(),
            task.queue,
            task.priority,
            status_text(TaskStatus::Pending),
            task.args,
            encode_tags(&task.tags),
            micros(task.created_at),
            micros(task.state.run_at),
            CODEC_VERSION,
            fire.schedule,
            tick,
        ])?;
    if inserted == 0 {
        return Ok(Fired::Taken);
    }
    let mut tag = db.prepare_cached(
        "INSERT INTO task_tags (task_id, key, value) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )?;
    for (key, value) in task.tags.iter() {
        tag.execute(params![task.id.to_bytes(), key, value])?;
    }
    db.prepare_cached("UPDATE schedules SET last_tick = ?2, last_task = ?3 WHERE name = ?1")?
        .execute(params![fire.schedule, tick, task.id.to_bytes()])?;
    Ok(Fired::New)
}

/// The values of a row's definition and state, in [`COLUMNS`] order.
fn insert(db: &Connection, row: &ScheduleRow, on_conflict: &str) -> rusqlite::Result<usize> {
    let tags = encode_tags(&row.tags);
    db.prepare_cached(&format!(
        "INSERT INTO schedules ({COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) {on_conflict}"
    ))?
    .execute(params![
        row.name,
        row.task,
        row.spec,
        row.timezone,
        row.declared,
        row.catch_up.as_str(),
        row.args,
        tags,
        row.queue,
        row.priority,
        CODEC_VERSION,
        row.paused,
        micros(row.since),
        row.last_tick.map(micros),
        row.last_task.map(|id| id.to_bytes()),
    ])
}

pub(super) fn declare(db: &Connection, rows: &[ScheduleRow]) -> rusqlite::Result<()> {
    for row in rows {
        insert(
            db,
            row,
            "ON CONFLICT (name) DO UPDATE SET task = excluded.task, spec = excluded.spec, \
             timezone = excluded.timezone, catch_up = excluded.catch_up, args = excluded.args, \
             tags = excluded.tags, queue = excluded.queue, priority = excluded.priority, \
             codec = excluded.codec WHERE schedules.declared = 1",
        )?;
    }
    Ok(())
}

pub(super) fn add(db: &Connection, row: &ScheduleRow) -> rusqlite::Result<bool> {
    Ok(insert(db, row, "ON CONFLICT DO NOTHING")? == 1)
}

pub(super) fn remove(db: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(db.execute("DELETE FROM schedules WHERE name = ?1", [name])? == 1)
}

pub(super) fn set_paused(
    db: &Connection,
    name: &str,
    paused: bool,
    now: i64,
) -> rusqlite::Result<bool> {
    let changed = db.execute(
        "UPDATE schedules SET \
         since = CASE WHEN paused = 1 AND ?2 = 0 THEN max(since, ?3) ELSE since END, \
         paused = ?2 WHERE name = ?1",
        params![name, paused, now],
    )?;
    Ok(changed == 1)
}

pub(super) fn list(db: &Connection) -> rusqlite::Result<Vec<ScheduleRead>> {
    let mut statement =
        db.prepare_cached(&format!("SELECT {COLUMNS} FROM schedules ORDER BY name"))?;
    statement.query_map([], read)?.collect()
}

fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleRead> {
    let name: String = row.get(0)?;
    let corrupt = |reason: String| CorruptSchedule {
        name: name.clone(),
        reason,
    };
    let codec: i64 = row.get(10)?;
    if codec != i64::from(CODEC_VERSION) {
        return Ok(Err(corrupt(format!(
            "it was encoded with codec version {codec}; this taskflow reads version {CODEC_VERSION}"
        ))));
    }
    let tags = match decode_tags(row.get(7)?) {
        Ok(tags) => tags,
        Err(reason) => return Ok(Err(corrupt(reason))),
    };
    let catch_up: String = row.get(5)?;
    let Ok(catch_up) = catch_up.parse::<CatchUp>() else {
        return Ok(Err(corrupt(format!("unknown catch-up `{catch_up}`"))));
    };
    let priority: Option<i64> = row.get(9)?;
    let last_task: Option<Vec<u8>> = row.get(14)?;
    Ok(Ok(ScheduleRow {
        name: name.clone(),
        task: row.get(1)?,
        spec: row.get(2)?,
        timezone: row.get(3)?,
        declared: row.get::<_, i64>(4)? != 0,
        catch_up,
        args: row.get(6)?,
        tags,
        queue: row.get(8)?,
        priority: priority.and_then(|p| i16::try_from(p).ok()),
        paused: row.get::<_, i64>(11)? != 0,
        since: time(row.get(12)?),
        last_tick: row.get::<_, Option<i64>>(13)?.map(time),
        last_task: last_task
            .and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok())
            .map(TaskId::from_bytes),
    }))
}
