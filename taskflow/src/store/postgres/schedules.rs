//! Schedules in PostgreSQL: their rows, and the fire of one tick.
//!
//! A fire is one statement ([`FIRE`]): it locks the schedule's row if the
//! tick may fire (not paused, after its last fire and its `since`),
//! inserts the tick's task, whose unique index on `(schedule, tick)`
//! admits it once, and records the fire. Two hosts firing the same tick
//! meet on the row lock: the second waits for the first to commit, then
//! finds the tick fired and writes nothing; the unique index holds even if
//! they did not meet there.

use std::time::SystemTime;

use taskflow_worker::TaskId;
use tokio_postgres::Row;

use super::{Failure, Shared};
use crate::schedule::CatchUp;
use crate::store::encode_tags;
use crate::store::{CorruptSchedule, Fire, Fired, ScheduleRead, ScheduleRow};

/// Fires a tick: `$1` schedule, `$2` tick, `$3` ignore `since`, then the
/// task (`$4` id … `$13` codec), its tags as arrays (`$14`–`$16`), and the
/// notification channel and token (`$17`, `$18`). Answers whether the task
/// went in, and the schedule's state as the statement found it.
const FIRE: &str = "
WITH s AS (
    SELECT name FROM {s}.schedules
    WHERE name = $1 AND NOT paused AND (last_tick IS NULL OR last_tick < $2)
      AND ($3 OR since < $2)
    FOR UPDATE
),
new AS (
    INSERT INTO {s}.tasks (id, name, executor, queue, priority, status, args, tags, attempts,
                           created_at, run_at, codec, schedule, tick)
    SELECT $4, $5, $6, $7, $8, 'PENDING', $9, $10, 0, $11, $12, $13, $1, $2 FROM s
    ON CONFLICT DO NOTHING
    RETURNING id
),
tagged AS (
    INSERT INTO {s}.task_tags (task_id, key, value)
    SELECT t.task_id, t.key, t.value
    FROM unnest($14::uuid[], $15::text[], $16::text[]) AS t (task_id, key, value)
    WHERE EXISTS (SELECT 1 FROM new)
    ON CONFLICT DO NOTHING
),
marked AS (
    UPDATE {s}.schedules SET last_tick = $2, last_task = $4
    WHERE name = $1 AND EXISTS (SELECT 1 FROM new)
),
notified AS (
    SELECT pg_notify($17::text, 'ready ' || $18::text) FROM new
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM notified),
       sc.name IS NOT NULL, coalesce(sc.paused, false), sc.since
FROM (SELECT 1) AS one LEFT JOIN {s}.schedules sc ON sc.name = $1";

const COLUMNS: &str = "name, task, spec, timezone, declared, catch_up, args, tags, queue, \
     priority, codec, paused, since, last_tick, last_task";

const INSERT: &str = "INSERT INTO {s}.schedules (name, task, spec, timezone, declared, catch_up, \
     args, tags, queue, priority, codec, paused, since, last_tick, last_task) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

const DECLARE: &str = " ON CONFLICT (name) DO UPDATE SET task = excluded.task, \
     spec = excluded.spec, timezone = excluded.timezone, catch_up = excluded.catch_up, \
     args = excluded.args, tags = excluded.tags, queue = excluded.queue, \
     priority = excluded.priority, codec = excluded.codec WHERE {s}.schedules.declared";

const REMOVE: &str = "DELETE FROM {s}.schedules WHERE name = $1";

const SET_PAUSED: &str = "UPDATE {s}.schedules SET \
     since = CASE WHEN paused AND NOT $2 THEN greatest(since, $3) ELSE since END, \
     paused = $2 WHERE name = $1";

const LIST: &str = "SELECT {COLUMNS} FROM {s}.schedules ORDER BY name";

pub(super) async fn fire(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    fire: &Fire,
) -> Result<Fired, Failure> {
    let statement = client.prepare_cached(&shared.sql.fill(FIRE)).await?;
    let task = &fire.task;
    let id = task.id.as_uuid();
    let tag_task: Vec<uuid::Uuid> = task.tags.iter().map(|_| id).collect();
    let tag_key: Vec<&str> = task.tags.iter().map(|(key, _)| key).collect();
    let tag_value: Vec<&str> = task.tags.iter().map(|(_, value)| value).collect();
    let codec = super::codec_version();
    let row = client
        .query_one(
            &statement,
            &[
                &fire.schedule,
                &fire.tick,
                &fire.ignore_since,
                &id,
                &task.name,
                &task.executor.as_str(),
                &task.queue,
                &task.priority,
                &task.args,
                &encode_tags(&task.tags),
                &task.created_at,
                &task.state.run_at,
                &codec,
                &tag_task,
                &tag_key,
                &tag_value,
                &shared.channel,
                &shared.token,
            ],
        )
        .await?;
    let written: i64 = row.try_get(0)?;
    if written == 1 {
        return Ok(Fired::New);
    }
    let exists: bool = row.try_get(2)?;
    let paused: bool = row.try_get(3)?;
    let since: Option<SystemTime> = row.try_get(4)?;
    Ok(match (exists, paused) {
        (false, _) => Fired::Unknown,
        (true, true) => Fired::Paused,
        _ if !fire.ignore_since && since.is_some_and(|since| fire.tick <= since) => Fired::Stale,
        _ => Fired::Taken,
    })
}

async fn insert(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    row: &ScheduleRow,
    on_conflict: &str,
) -> Result<u64, Failure> {
    let sql = shared.sql.fill(&format!("{INSERT}{on_conflict}"));
    let statement = client.prepare_cached(&sql).await?;
    let catch_up = row.catch_up.as_str();
    let codec = super::codec_version();
    let last_task = row.last_task.map(|id| id.as_uuid());
    Ok(client
        .execute(
            &statement,
            &[
                &row.name,
                &row.task,
                &row.spec,
                &row.timezone,
                &row.declared,
                &catch_up,
                &row.args,
                &encode_tags(&row.tags),
                &row.queue,
                &row.priority,
                &codec,
                &row.paused,
                &row.since,
                &row.last_tick,
                &last_task,
            ],
        )
        .await?)
}

pub(super) async fn declare(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    rows: &[ScheduleRow],
) -> Result<(), Failure> {
    for row in rows {
        insert(shared, client, row, DECLARE).await?;
    }
    Ok(())
}

pub(super) async fn add(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    row: &ScheduleRow,
) -> Result<bool, Failure> {
    Ok(insert(shared, client, row, " ON CONFLICT DO NOTHING").await? == 1)
}

pub(super) async fn remove(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    name: &str,
) -> Result<bool, Failure> {
    let statement = client.prepare_cached(&shared.sql.fill(REMOVE)).await?;
    Ok(client.execute(&statement, &[&name]).await? == 1)
}

pub(super) async fn set_paused(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    name: &str,
    paused: bool,
    now: SystemTime,
) -> Result<bool, Failure> {
    let statement = client.prepare_cached(&shared.sql.fill(SET_PAUSED)).await?;
    Ok(client.execute(&statement, &[&name, &paused, &now]).await? == 1)
}

pub(super) async fn list(
    shared: &Shared,
    client: &deadpool_postgres::Object,
) -> Result<Vec<ScheduleRead>, Failure> {
    let sql = shared.sql.fill(&LIST.replace("{COLUMNS}", COLUMNS));
    let statement = client.prepare_cached(&sql).await?;
    let rows = client.query(&statement, &[]).await?;
    rows.iter().map(read).collect()
}

fn read(row: &Row) -> Result<ScheduleRead, Failure> {
    let name: String = row.try_get(0)?;
    let corrupt = |reason: String| CorruptSchedule {
        name: name.clone(),
        reason,
    };
    let codec: i32 = row.try_get(10)?;
    if codec != super::codec_version() {
        return Ok(Err(corrupt(format!(
            "it was encoded with codec version {codec}; this taskflow reads version {}",
            super::codec_version()
        ))));
    }
    let tags = match row.try_get::<_, Option<Vec<u8>>>(7)? {
        None => taskflow_worker::Tags::default(),
        Some(bytes) => match taskflow_worker::codec::decode(&bytes) {
            Ok(tags) => tags,
            Err(error) => return Ok(Err(corrupt(format!("its tags: {error}")))),
        },
    };
    let catch_up: String = row.try_get(5)?;
    let Ok(catch_up) = catch_up.parse::<CatchUp>() else {
        return Ok(Err(corrupt(format!("unknown catch-up `{catch_up}`"))));
    };
    Ok(Ok(ScheduleRow {
        name: name.clone(),
        task: row.try_get(1)?,
        spec: row.try_get(2)?,
        timezone: row.try_get(3)?,
        declared: row.try_get(4)?,
        catch_up,
        args: row.try_get(6)?,
        tags,
        queue: row.try_get(8)?,
        priority: row.try_get(9)?,
        paused: row.try_get(11)?,
        since: row.try_get(12)?,
        last_tick: row.try_get(13)?,
        last_task: row
            .try_get::<_, Option<uuid::Uuid>>(14)?
            .map(TaskId::from_uuid),
    }))
}
