//! Inserting tasks: one function for the store's own connections and for
//! the application's transaction (`TaskCall::enqueue_in`), so both write
//! the same rows and answer the same way.
//!
//! The batch goes in with one statement (see `sql::INSERT`); the rows it
//! left out are then told apart: an id already stored is a duplicate, a key
//! already held answers its holder. A holder can release its key between
//! the insert and the look-up (it failed or was cancelled meanwhile): the
//! rows so left are inserted again, a bounded number of times.

use std::collections::HashMap;
use std::time::SystemTime;

use taskflow_worker::TaskId;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row, Statement};

use super::rows;
use super::sql::InsertSql;
use crate::lifecycle::TaskStatus;
use crate::store::encode_tags;
use crate::store::{Inserted, NewTask};

/// What an insert failed with.
pub(crate) type Failure = Box<dyn std::error::Error + Send + Sync>;

/// How many times rows whose key was released while they were being
/// inserted are tried again before the insert gives up.
const RETRIES: usize = 3;

/// The insert's statements, as the connection that runs them takes them.
pub(crate) enum Prepared<'a> {
    /// Prepared, from a pooled connection's statement cache.
    Cached {
        insert: Statement,
        stored_ids: Statement,
        key_holders: Statement,
    },
    /// As text with their parameters' types, each parsed, bound and run in
    /// one round trip: for the application's transaction, whose connection
    /// keeps no statement of the store's, so that an `enqueue_in` costs
    /// one round trip (the insert) rather than two (a prepare, then it).
    Typed(&'a InsertSql),
}

impl Prepared<'static> {
    /// `sql` from the statement cache of a pooled connection.
    pub(super) async fn cached(
        client: &deadpool_postgres::ClientWrapper,
        sql: &InsertSql,
    ) -> Result<Self, Failure> {
        let (insert, stored_ids, key_holders) = tokio::try_join!(
            client.prepare_cached(&sql.insert),
            client.prepare_cached(&sql.stored_ids),
            client.prepare_cached(&sql.key_holders),
        )?;
        Ok(Prepared::Cached {
            insert,
            stored_ids,
            key_holders,
        })
    }
}

/// The insert statement's parameter types, in order (`sql::INSERT`).
const INSERT_TYPES: [Type; 26] = [
    Type::UUID_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT2_ARRAY,
    Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT4_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY,
    Type::TEXT_ARRAY,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::UUID_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT,
    Type::TEXT,
];

/// Runs `text` with `params` of `types`: parsed, bound and run in one
/// round trip.
async fn query_typed<C>(
    client: &C,
    text: &str,
    params: &[&(dyn ToSql + Sync)],
    types: &[Type],
) -> Result<Vec<Row>, tokio_postgres::Error>
where
    C: GenericClient + Sync,
{
    let typed: Vec<(&(dyn ToSql + Sync), Type)> =
        params.iter().copied().zip(types.iter().cloned()).collect();
    client.query_typed(text, &typed).await
}

impl Prepared<'_> {
    /// The insert, as `sql::INSERT` binds it.
    async fn insert<C>(
        &self,
        client: &C,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        C: GenericClient + Sync,
    {
        match self {
            Prepared::Cached { insert, .. } => client.query(insert, params).await,
            Prepared::Typed(sql) => query_typed(client, &sql.insert, params, &INSERT_TYPES).await,
        }
    }

    /// Which of `ids` are stored.
    async fn stored_ids<C>(
        &self,
        client: &C,
        ids: &[uuid::Uuid],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        C: GenericClient + Sync,
    {
        match self {
            Prepared::Cached { stored_ids, .. } => client.query(stored_ids, &[&ids]).await,
            Prepared::Typed(sql) => {
                query_typed(client, &sql.stored_ids, &[&ids], &[Type::UUID_ARRAY]).await
            }
        }
    }

    /// The tasks holding these (name, key) pairs.
    async fn key_holders<C>(
        &self,
        client: &C,
        names: &[&str],
        keys: &[&str],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        C: GenericClient + Sync,
    {
        let params: [&(dyn ToSql + Sync); 2] = [&names, &keys];
        match self {
            Prepared::Cached { key_holders, .. } => client.query(key_holders, &params).await,
            Prepared::Typed(sql) => {
                let types = [Type::TEXT_ARRAY, Type::TEXT_ARRAY];
                query_typed(client, &sql.key_holders, &params, &types).await
            }
        }
    }
}

/// Inserts `tasks` through `client`, as [`Store::insert`] documents, and
/// notifies `channel` of new PENDING rows (at commit), as `token`.
///
/// [`Store::insert`]: crate::store::Store::insert
pub(crate) async fn insert_tasks<C>(
    client: &C,
    sql: &Prepared<'_>,
    (channel, token): (&str, &str),
    tasks: &[NewTask],
) -> Result<Vec<Inserted>, Failure>
where
    C: GenericClient + Sync,
{
    let mut answers: Vec<Option<Inserted>> = tasks.iter().map(|_| None).collect();
    let mut left: Vec<usize> = (0..tasks.len()).collect();
    for _ in 0..RETRIES {
        if left.is_empty() {
            break;
        }
        let batch: Vec<&NewTask> = left.iter().map(|&at| &tasks[at]).collect();
        let written = write(client, sql, (channel, token), &batch).await?;
        let mut missing = Vec::new();
        // Each id answers once: a second task with the same id in the
        // batch is a duplicate of the first.
        let mut written = written;
        for &at in &left {
            let task = &tasks[at];
            match written.remove(&task.id) {
                Some(status) => {
                    let claimed = task.claim.is_some()
                        && task.state.status == TaskStatus::Pending
                        && status == TaskStatus::Running.as_str();
                    answers[at] = Some(match claimed {
                        true => Inserted::Claimed,
                        false => Inserted::New,
                    });
                }
                None => missing.push(at),
            }
        }
        left = explain(client, sql, tasks, &missing, &mut answers).await?;
    }
    if let Some(&at) = left.first() {
        return Err(format!(
            "task {} was refused by the store's constraints",
            tasks[at].id
        )
        .into());
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Inserted::Duplicate))
        .collect())
}

/// Runs the insert statement for `batch`; the status each written row went
/// in with, by id.
async fn write<C>(
    client: &C,
    sql: &Prepared<'_>,
    (channel, token): (&str, &str),
    batch: &[&NewTask],
) -> Result<HashMap<TaskId, String>, Failure>
where
    C: GenericClient + Sync,
{
    let columns = Columns::of(batch);
    let now = SystemTime::now();
    let codec = super::codec_version();
    let claim = columns.claim(now);
    let rows = sql
        .insert(
            client,
            &[
                &columns.id,
                &columns.name,
                &columns.executor,
                &columns.queue,
                &columns.priority,
                &columns.status,
                &columns.args,
                &columns.tags,
                &columns.attempts,
                &columns.created_at,
                &columns.run_at,
                &columns.started_at,
                &columns.finished_at,
                &columns.error_kind,
                &columns.error_message,
                &columns.idempotency_key,
                &columns.owner,
                &columns.output,
                &claim,
                &now,
                &codec,
                &columns.tag_task,
                &columns.tag_key,
                &columns.tag_value,
                &channel,
                &token,
            ],
        )
        .await?;
    let mut written = HashMap::with_capacity(rows.len());
    for row in rows {
        if let Some(id) = rows::id(&row, 0) {
            written.insert(id, row.try_get::<_, String>(1)?);
        }
    }
    Ok(written)
}

/// Answers the tasks at `missing` (not written): a stored id is a
/// duplicate, a held key answers its holder. Returns those with neither,
/// whose key was released meanwhile: they can go in now.
async fn explain<C>(
    client: &C,
    sql: &Prepared<'_>,
    tasks: &[NewTask],
    missing: &[usize],
    answers: &mut [Option<Inserted>],
) -> Result<Vec<usize>, Failure>
where
    C: GenericClient + Sync,
{
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<uuid::Uuid> = missing.iter().map(|&at| tasks[at].id.as_uuid()).collect();
    let stored: Vec<TaskId> = sql
        .stored_ids(client, &ids)
        .await?
        .iter()
        .filter_map(|row| rows::id(row, 0))
        .collect();
    let keyed: Vec<usize> = missing
        .iter()
        .copied()
        .filter(|&at| !stored.contains(&tasks[at].id) && tasks[at].idempotency_key.is_some())
        .collect();
    let names: Vec<&str> = keyed.iter().map(|&at| tasks[at].name.as_str()).collect();
    let keys: Vec<&str> = keyed
        .iter()
        .filter_map(|&at| tasks[at].idempotency_key.as_deref())
        .collect();
    let holders = match keyed.is_empty() {
        true => Vec::new(),
        false => sql
            .key_holders(client, &names, &keys)
            .await?
            .iter()
            .map(|row| {
                let name = row.try_get::<_, String>(1).unwrap_or_default();
                let key = row.try_get::<_, Option<String>>(17).ok().flatten();
                ((name, key), rows::read(row))
            })
            .collect(),
    };
    let mut retry = Vec::new();
    for &at in missing {
        let task = &tasks[at];
        if stored.contains(&task.id) {
            answers[at] = Some(Inserted::Duplicate);
            continue;
        }
        let holder = holders.iter().find(|((name, key), _)| {
            *name == task.name && key.as_deref() == task.idempotency_key.as_deref()
        });
        match holder {
            Some((_, row)) => answers[at] = Some(Inserted::Existing(Box::new(row.clone()))),
            None => retry.push(at),
        }
    }
    Ok(retry)
}

/// A batch as parallel arrays, one per column, as the statement binds them.
struct Columns {
    id: Vec<uuid::Uuid>,
    name: Vec<String>,
    executor: Vec<&'static str>,
    queue: Vec<String>,
    priority: Vec<i16>,
    status: Vec<&'static str>,
    args: Vec<Vec<u8>>,
    tags: Vec<Option<Vec<u8>>>,
    attempts: Vec<i32>,
    created_at: Vec<SystemTime>,
    run_at: Vec<SystemTime>,
    started_at: Vec<Option<SystemTime>>,
    finished_at: Vec<Option<SystemTime>>,
    error_kind: Vec<Option<&'static str>>,
    error_message: Vec<Option<String>>,
    idempotency_key: Vec<Option<String>>,
    owner: Vec<Option<String>>,
    output: Vec<Option<Vec<u8>>>,
    claim: Vec<Option<String>>,
    pending: Vec<bool>,
    tag_task: Vec<uuid::Uuid>,
    tag_key: Vec<String>,
    tag_value: Vec<String>,
}

impl Columns {
    fn of(batch: &[&NewTask]) -> Self {
        let mut columns = Columns {
            id: Vec::with_capacity(batch.len()),
            name: Vec::with_capacity(batch.len()),
            executor: Vec::with_capacity(batch.len()),
            queue: Vec::with_capacity(batch.len()),
            priority: Vec::with_capacity(batch.len()),
            status: Vec::with_capacity(batch.len()),
            args: Vec::with_capacity(batch.len()),
            tags: Vec::with_capacity(batch.len()),
            attempts: Vec::with_capacity(batch.len()),
            created_at: Vec::with_capacity(batch.len()),
            run_at: Vec::with_capacity(batch.len()),
            started_at: Vec::with_capacity(batch.len()),
            finished_at: Vec::with_capacity(batch.len()),
            error_kind: Vec::with_capacity(batch.len()),
            error_message: Vec::with_capacity(batch.len()),
            idempotency_key: Vec::with_capacity(batch.len()),
            owner: Vec::with_capacity(batch.len()),
            output: Vec::with_capacity(batch.len()),
            claim: Vec::with_capacity(batch.len()),
            pending: Vec::with_capacity(batch.len()),
            tag_task: Vec::new(),
            tag_key: Vec::new(),
            tag_value: Vec::new(),
        };
        for task in batch {
            let state = &task.state;
            let error = state.last_error.as_ref();
            columns.id.push(task.id.as_uuid());
            columns.name.push(task.name.clone());
            columns.executor.push(task.executor.as_str());
            columns.queue.push(task.queue.clone());
            columns.priority.push(task.priority);
            columns.status.push(state.status.as_str());
            columns.args.push(task.args.clone());
            columns.tags.push(encode_tags(&task.tags));
            columns
                .attempts
                .push(i32::try_from(state.attempts).unwrap_or(i32::MAX));
            columns.created_at.push(task.created_at);
            columns.run_at.push(state.run_at);
            columns.started_at.push(state.started_at);
            columns.finished_at.push(state.finished_at);
            columns.error_kind.push(error.map(|e| e.kind().as_str()));
            columns
                .error_message
                .push(error.map(|e| e.message().to_owned()));
            columns.idempotency_key.push(task.idempotency_key.clone());
            columns.owner.push(state.owner.clone());
            columns.output.push(state.output.clone());
            columns.claim.push(task.claim.clone());
            columns.pending.push(state.status == TaskStatus::Pending);
            for (key, value) in task.tags.iter() {
                columns.tag_task.push(task.id.as_uuid());
                columns.tag_key.push(key.to_owned());
                columns.tag_value.push(value.to_owned());
            }
        }
        columns
    }

    /// The claim of each row that may go in claimed: a PENDING task ready
    /// at `now` (the store decides whether it jumps no queue).
    fn claim(&self, now: SystemTime) -> Vec<Option<&str>> {
        self.claim
            .iter()
            .zip(&self.pending)
            .zip(&self.run_at)
            .map(
                |((claim, pending), run_at)| match *pending && *run_at <= now {
                    true => claim.as_deref(),
                    false => None,
                },
            )
            .collect()
    }
}
