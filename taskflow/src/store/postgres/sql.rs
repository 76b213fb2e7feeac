//! The statements the PostgreSQL store runs, each written once with `{s}`
//! standing for the store's schema.
//!
//! Names are schema-qualified rather than found through `search_path`, so a
//! statement means the same on a connection of the store's own pool, of a
//! pool the application lent it, and inside the application's transaction
//! (`enqueue_in`). The schema is the only text put into SQL: a name checked
//! against `[a-z_][a-z0-9_]*` when the store is configured, then quoted.
//! Every value is a bound parameter.
//!
//! Claims and fences are single statements whose `WHERE` clause states the
//! rule, so a statement is atomic without a transaction around it, and no
//! store call leaves a transaction open while it waits on the client.

use std::fmt::Write;

/// Every column a row is read from, in the order `rows::read` expects.
pub(super) const COLUMNS: &str = "id, name, executor, status, args, tags, attempts, created_at, \
     started_at, finished_at, error_kind, error_message, output, seq, queue, priority, run_at, \
     idempotency_key, owner, cancel_requested, codec, logs_dropped, schedule, tick";

/// The columns of a log line, as `rows::read_log` expects them.
const LOG_COLUMNS: &str = "attempt, at, level, target, message, fields";

/// Inserts a batch of tasks, each row taken from parallel arrays, in order.
///
/// A row with a `claim` goes in RUNNING for that owner when its queue and
/// executor are *granted*: the claimer holds a live lease (by the server's
/// clock), no ready PENDING task of theirs as good as the lowest-priority
/// claimed row waits, and the queue is not paused. The
/// check reads the statement's snapshot, taken before any row of the batch
/// is written, so the batch's own PENDING rows do not count; see the
/// module documentation of the backend for why one snapshot is the right
/// fence between hosts. Rows whose id or idempotency key is taken are left
/// out (`ON CONFLICT DO NOTHING`) and found by the caller. Listeners learn
/// of new PENDING rows when the statement's transaction commits; each
/// notification carries the notifying store's token, so a store can tell
/// its own from other hosts'.
///
/// Each row learns whether it is claimed by a join with `granted` (one row
/// per queue, executor and claimer), not by a subquery per row: the planner costs
/// a subquery once per use per row, and a batch of a few hundred rows
/// then looked expensive enough for PostgreSQL to JIT-compile the
/// statement, which took over a second per execution (B12 in
/// `BENCHMARKS.md`).
const INSERT: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[],
                         $7::bytea[], $8::bytea[], $9::int4[], $10::timestamptz[],
                         $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], $14::text[],
                         $15::text[], $16::text[], $17::text[], $18::bytea[], $19::text[])
        WITH ORDINALITY AS i (id, name, executor, queue, priority, status, args, tags, attempts,
                              created_at, run_at, started_at, finished_at, error_kind,
                              error_message, idempotency_key, owner, output, claim, ord)
),
granted AS (
    SELECT g.queue, g.executor, g.claim
    FROM (SELECT queue, executor, claim, min(priority) AS lowest FROM input
          WHERE claim IS NOT NULL GROUP BY queue, executor, claim) g
    WHERE EXISTS (SELECT 1 FROM {s}.instances l
                  WHERE l.id = g.claim AND l.lease_until >= now())
      AND NOT EXISTS (SELECT 1 FROM {s}.tasks t
                      WHERE t.status = 'PENDING' AND t.queue = g.queue
                        AND t.executor = g.executor AND t.priority >= g.lowest
                        AND t.run_at <= $20::timestamptz)
      AND NOT EXISTS (SELECT 1 FROM {s}.queues q WHERE q.name = g.queue AND q.paused)
),
decided AS (
    SELECT i.*, i.claim IS NOT NULL AND g.queue IS NOT NULL AS claimed
    FROM input i LEFT JOIN granted g
        ON g.queue = i.queue AND g.executor = i.executor AND g.claim = i.claim
),
new AS (
    INSERT INTO {s}.tasks (id, name, executor, queue, priority, status, args, tags, attempts,
                           created_at, run_at, started_at, finished_at, error_kind,
                           error_message, idempotency_key, owner, output, codec)
    SELECT id, name, executor, queue, priority,
           CASE WHEN claimed THEN 'RUNNING' ELSE status END,
           args, tags,
           CASE WHEN claimed THEN attempts + 1 ELSE attempts END,
           created_at, run_at,
           CASE WHEN claimed THEN coalesce(started_at, $20::timestamptz) ELSE started_at END,
           finished_at, error_kind, error_message, idempotency_key,
           CASE WHEN claimed THEN claim ELSE owner END,
           output, $21::int4
    FROM decided ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING id, status
),
tagged AS (
    INSERT INTO {s}.task_tags (task_id, key, value)
    SELECT t.task_id, t.key, t.value
    FROM unnest($22::uuid[], $23::text[], $24::text[]) AS t (task_id, key, value)
    WHERE t.task_id IN (SELECT id FROM new)
    ON CONFLICT DO NOTHING
),
notified AS (
    SELECT pg_notify($25::text, 'ready ' || $26::text) FROM new WHERE status = 'PENDING' LIMIT 1
)
SELECT id, status, (SELECT count(*) FROM notified) FROM new";

/// Which of these ids are stored.
const STORED_IDS: &str = "SELECT id FROM {s}.tasks WHERE id = ANY($1)";

/// The tasks holding these (name, key) pairs.
const KEY_HOLDERS: &str = "
SELECT {COLUMNS} FROM {s}.tasks
WHERE (name, idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
  AND status IN ('PENDING', 'RUNNING', 'SUCCESS')";

/// Applies compare-and-set changes to distinct tasks, from parallel arrays;
/// answers the position (from 1) of each change written. A final status
/// clears a cancel request; a change without output keeps the stored one.
/// Listeners learn of tasks made PENDING (ready work) and of tasks that
/// finished (for handles following them) at commit.
///
/// `t.id = ANY($1)` repeats the join's key as an index condition: without
/// it the planner, seeing a few thousand changes, joins them by hashing
/// the whole table, live and dead rows alike, on every batch (four times
/// slower at 100 000 rows, and growing with the table).
const APPLY: &str = "
WITH c AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[],
                         $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[], $9::text[],
                         $10::bytea[], $11::text[], $12::int4[], $13::text[])
        WITH ORDINALITY AS c (id, status, attempts, run_at, started_at, finished_at, error_kind,
                              error_message, owner, output, was_status, was_attempts, was_owner,
                              ord)
),
done AS (
    UPDATE {s}.tasks t
    SET status = c.status, attempts = c.attempts, run_at = c.run_at,
        started_at = c.started_at, finished_at = c.finished_at, error_kind = c.error_kind,
        error_message = c.error_message, owner = c.owner, output = coalesce(c.output, t.output),
        cancel_requested = t.cancel_requested AND c.status IN ('PENDING', 'RUNNING')
    FROM c
    WHERE t.id = ANY($1) AND t.id = c.id AND t.status = c.was_status
      AND t.attempts = c.was_attempts
      AND (c.was_owner IS NULL OR t.owner = c.was_owner)
    RETURNING c.ord, c.status
),
ready AS (
    SELECT pg_notify($14::text, 'ready ' || $15::text) FROM done WHERE status = 'PENDING' LIMIT 1
),
changed AS (
    SELECT pg_notify($14::text, 'changed ' || $15::text) FROM done
    WHERE status NOT IN ('PENDING', 'RUNNING') LIMIT 1
)
SELECT ord, (SELECT count(*) FROM ready), (SELECT count(*) FROM changed) FROM done";

/// The latest log line number of each of these tasks that has lines.
const LAST_LOG_LINES: &str = "
SELECT task_id, max(seq) FROM {s}.task_logs WHERE task_id = ANY($1) GROUP BY task_id";

/// Writes numbered log lines and trims each task to its latest ones: per
/// task, lines numbered at or below `keep_after` go, and the task counts
/// them (plus the batch's own `skipped` lines) as dropped.
const APPEND_LOGS: &str = "
WITH written AS (
    INSERT INTO {s}.task_logs (task_id, seq, attempt, at, level, target, message, fields)
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int4[], $4::timestamptz[], $5::text[],
                         $6::text[], $7::text[], $8::bytea[])
    ON CONFLICT DO NOTHING
),
caps AS (
    SELECT * FROM unnest($9::uuid[], $10::int8[], $11::int8[]) AS c (task_id, keep_after, skipped)
),
evicted AS (
    DELETE FROM {s}.task_logs l USING caps c
    WHERE l.task_id = c.task_id AND l.seq <= c.keep_after
    RETURNING l.task_id
),
dropped AS (
    SELECT c.task_id, c.skipped + (SELECT count(*) FROM evicted e WHERE e.task_id = c.task_id) AS n
    FROM caps c
)
UPDATE {s}.tasks t SET logs_dropped = t.logs_dropped + d.n
FROM dropped d WHERE t.id = d.task_id AND d.n > 0";

/// One demand's part of a claim: its best ready rows, locked, skipping rows
/// another claimer holds, while the claimer (`$1`) holds a live lease by
/// the server's clock. `{p}`..`{p3}` are its queue, executor, names and
/// slots; `$2` is now, `$3` the codec version this binary reads and `$4`
/// the rows found unreadable before. The lease and pause checks name no
/// column of `tasks`: each is evaluated once, before any row is read, and
/// the rows still come from the ready index in claim order.
const CLAIM_PART: &str = "
    SELECT id FROM {s}.tasks
    WHERE status = 'PENDING' AND queue = {p} AND executor = {p1} AND name = ANY({p2})
      AND run_at <= $2 AND codec = $3 AND NOT (seq = ANY($4))
      AND EXISTS (SELECT 1 FROM {s}.instances i WHERE i.id = $1 AND i.lease_until >= now())
      AND NOT EXISTS (SELECT 1 FROM {s}.queues q WHERE q.name = {p} AND q.paused)
    ORDER BY priority DESC, run_at, seq
    LIMIT {p3}
    FOR UPDATE SKIP LOCKED";

/// Marks the picked rows RUNNING for the claimer (`$1`) and answers them in
/// claim order.
const CLAIM_TAKE: &str = "
claimed AS (
    UPDATE {s}.tasks t
    SET status = 'RUNNING', owner = $1, attempts = t.attempts + 1,
        started_at = coalesce(t.started_at, $2)
    WHERE t.id IN ({picked})
    RETURNING t.*
)
SELECT {COLUMNS} FROM claimed ORDER BY priority DESC, run_at, seq";

/// The earliest `run_at` after now (`$2`) of a delayed PENDING task of these
/// queues that are not paused; and whether the claimer (`$3`) holds a live
/// lease (a claim alongside claims nothing otherwise).
const NEXT_RUN_AT: &str = "
SELECT min(n.run_at),
       EXISTS (SELECT 1 FROM {s}.instances i WHERE i.id = $3 AND i.lease_until >= now())
FROM unnest($1::text[]) AS q (name)
CROSS JOIN LATERAL (
    SELECT min(t.run_at) AS run_at FROM {s}.tasks t
    WHERE t.status = 'PENDING' AND t.run_at > t.created_at AND t.queue = q.name AND t.run_at > $2
) n
WHERE NOT EXISTS (SELECT 1 FROM {s}.queues p WHERE p.name = q.name AND p.paused)";

/// Gives back a claimed row that turned out unreadable.
const UNCLAIM: &str = "
UPDATE {s}.tasks SET status = 'PENDING', owner = NULL, attempts = attempts - 1
WHERE seq = $1 AND status = 'RUNNING' AND owner = $2";

const GET: &str = "SELECT {COLUMNS} FROM {s}.tasks WHERE id = $1";
const LOGS: &str = "SELECT {LOG_COLUMNS} FROM {s}.task_logs WHERE task_id = $1 ORDER BY seq";
const GET_MANY: &str = "SELECT {COLUMNS} FROM {s}.tasks WHERE id = ANY($1)";

const REQUEST_CANCEL: &str = "
UPDATE {s}.tasks SET cancel_requested = true WHERE id = $1 AND status = 'RUNNING'";

/// Renews instance `$1`'s lease for `$2` microseconds of the server's
/// clock, or registers it; whether it was registered already.
const HEARTBEAT: &str = "
WITH renewed AS (
    UPDATE {s}.instances
    SET lease_until = now() + $2::float8 * interval '1 microsecond', heartbeat_at = now()
    WHERE id = $1
    RETURNING id
),
registered AS (
    INSERT INTO {s}.instances (id, pid, host, started_at, heartbeat_at, lease_until)
    SELECT $1::text, $3::int8, $4::text, now(), now(), now() + $2::float8 * interval '1 microsecond'
    WHERE NOT EXISTS (SELECT 1 FROM renewed)
    ON CONFLICT (id) DO NOTHING
)
SELECT EXISTS (SELECT 1 FROM renewed)";

const CANCELS: &str = "
SELECT id FROM {s}.tasks WHERE owner = $1 AND status = 'RUNNING' AND cancel_requested";

const OTHERS: &str = "
SELECT count(*) FROM {s}.instances WHERE id <> $1 AND lease_until >= now()";

/// The owners to rescue: instances whose lease expired, and owners of
/// RUNNING rows with no instance row (read through the running-owner
/// index; RUNNING rows are few).
const EXPIRED: &str = "
SELECT id FROM {s}.instances WHERE lease_until < now()
UNION
SELECT t.owner FROM {s}.tasks t
WHERE t.status = 'RUNNING' AND t.owner IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {s}.instances i WHERE i.id = t.owner)";

const ORPHANS: &str = "SELECT {COLUMNS} FROM {s}.tasks WHERE owner = $1 AND status = 'RUNNING'";

/// The ids of an instance's RUNNING tasks.
const OWNED: &str = "SELECT id FROM {s}.tasks WHERE owner = $1 AND status = 'RUNNING'";

/// Forgets an instance, and gives up the upkeep if it led.
const RETIRE: &str = "
WITH resigned AS (DELETE FROM {s}.leader WHERE holder = $1)
DELETE FROM {s}.instances WHERE id = $1";

/// Forgets instance `$1` if its lease is still expired: a rescuer's retire,
/// which must not forget an instance that renewed its lease meanwhile.
const RETIRE_EXPIRED: &str = "DELETE FROM {s}.instances WHERE id = $1 AND lease_until < now()";

/// Takes or keeps the upkeep lease for instance `$1`, for `$2`
/// microseconds of the server's clock: granted when nobody holds it, when
/// `$1` does, or when the holder's lease lapsed. A row comes back when
/// `$1` leads.
const LEAD: &str = "
INSERT INTO {s}.leader AS l (singleton, holder, lease_until)
VALUES (true, $1, now() + $2::float8 * interval '1 microsecond')
ON CONFLICT (singleton) DO UPDATE
SET holder = excluded.holder, lease_until = excluded.lease_until
WHERE l.holder = excluded.holder OR l.lease_until < now()
RETURNING holder";

/// Deletes finished tasks that finished before `$1`, with their logs and
/// tags; how many tasks went.
const PRUNE: &str = "
WITH gone AS (
    DELETE FROM {s}.tasks
    WHERE finished_at < $1 AND status NOT IN ('PENDING', 'RUNNING')
    RETURNING id
),
logs AS (DELETE FROM {s}.task_logs WHERE task_id IN (SELECT id FROM gone)),
tags AS (DELETE FROM {s}.task_tags WHERE task_id IN (SELECT id FROM gone))
SELECT count(*) FROM gone";

const UNFINISHED_NAMES: &str = "
SELECT DISTINCT name FROM {s}.tasks WHERE status IN ('PENDING', 'RUNNING') ORDER BY name";

const QUEUE_SETTINGS: &str = "SELECT name, paused FROM {s}.queues";

const QUEUE_COUNTS: &str = "
SELECT queue, status, count(*) FROM {s}.tasks
WHERE status IN ('PENDING', 'RUNNING') GROUP BY queue, status";

/// Pauses or resumes queue `$1`; a resume wakes the listeners.
const SET_PAUSED: &str = "
WITH set AS (
    INSERT INTO {s}.queues (name, paused) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
)
SELECT pg_notify($3::text, 'ready ' || $4::text) WHERE NOT $2";

/// The statements an insert runs, for one schema: shared by the store and
/// by `TaskCall::enqueue_in`, so a task enqueued in the application's
/// transaction is the row the store would have written.
#[derive(Debug)]
pub(crate) struct InsertSql {
    pub(super) insert: String,
    pub(super) stored_ids: String,
    pub(super) key_holders: String,
}

impl InsertSql {
    pub(crate) fn new(schema: &str) -> Self {
        let q = Quoted(schema);
        InsertSql {
            insert: q.fill(INSERT),
            stored_ids: q.fill(STORED_IDS),
            key_holders: q.fill(KEY_HOLDERS),
        }
    }
}

/// Every statement of a store, for its schema.
#[derive(Debug)]
pub(super) struct Sql {
    schema: String,
    pub(super) insert: InsertSql,
    pub(super) apply: String,
    pub(super) last_log_lines: String,
    pub(super) append_logs: String,
    pub(super) next_run_at: String,
    pub(super) unclaim: String,
    pub(super) get: String,
    pub(super) logs: String,
    pub(super) get_many: String,
    pub(super) request_cancel: String,
    pub(super) heartbeat: String,
    pub(super) cancels: String,
    pub(super) others: String,
    pub(super) expired: String,
    pub(super) orphans: String,
    pub(super) owned: String,
    pub(super) retire: String,
    pub(super) retire_expired: String,
    pub(super) lead: String,
    pub(super) prune: String,
    pub(super) unfinished_names: String,
    pub(super) queue_settings: String,
    pub(super) queue_counts: String,
    pub(super) set_paused: String,
}

impl Sql {
    /// The statements for `schema`, a name already checked.
    pub(super) fn new(schema: &str) -> Self {
        let q = Quoted(schema);
        Sql {
            schema: schema.to_owned(),
            insert: InsertSql::new(schema),
            apply: q.fill(APPLY),
            last_log_lines: q.fill(LAST_LOG_LINES),
            append_logs: q.fill(APPEND_LOGS),
            next_run_at: q.fill(NEXT_RUN_AT),
            unclaim: q.fill(UNCLAIM),
            get: q.fill(GET),
            logs: q.fill(LOGS),
            get_many: q.fill(GET_MANY),
            request_cancel: q.fill(REQUEST_CANCEL),
            heartbeat: q.fill(HEARTBEAT),
            cancels: q.fill(CANCELS),
            others: q.fill(OTHERS),
            expired: q.fill(EXPIRED),
            orphans: q.fill(ORPHANS),
            owned: q.fill(OWNED),
            retire: q.fill(RETIRE),
            retire_expired: q.fill(RETIRE_EXPIRED),
            lead: q.fill(LEAD),
            prune: q.fill(PRUNE),
            unfinished_names: q.fill(UNFINISHED_NAMES),
            queue_settings: q.fill(QUEUE_SETTINGS),
            queue_counts: q.fill(QUEUE_COUNTS),
            set_paused: q.fill(SET_PAUSED),
        }
    }

    /// A claim of `demands` demands, as one statement: parameters `$1`
    /// owner, `$2` now, `$3` codec version, `$4` rows to skip, then per
    /// demand its queue, executor, names and slots.
    pub(super) fn claim(&self, demands: usize) -> String {
        let q = Quoted(&self.schema);
        let mut sql = String::from("WITH ");
        let mut picked = Vec::with_capacity(demands);
        for demand in 0..demands {
            let first = 5 + 4 * demand;
            let part = CLAIM_PART
                .replace("{p3}", &format!("${}", first + 3))
                .replace("{p2}", &format!("${}", first + 2))
                .replace("{p1}", &format!("${}", first + 1))
                .replace("{p}", &format!("${first}"));
            let _ = write!(sql, "p{demand} AS ({}\n),", q.fill(&part));
            picked.push(format!("SELECT id FROM p{demand}"));
        }
        sql.push_str(&q.fill(&CLAIM_TAKE.replace("{picked}", &picked.join(" UNION ALL "))));
        sql
    }

    /// `template` for this store's schema (`{s}` and `{COLUMNS}` filled).
    pub(super) fn fill(&self, template: &str) -> String {
        Quoted(&self.schema).fill(template)
    }

    /// `SELECT {COLUMNS} FROM tasks {condition} ORDER BY id DESC LIMIT $n`.
    pub(super) fn list(&self, condition: &str, limit_parameter: usize) -> String {
        Quoted(&self.schema).fill(&format!(
            "SELECT {{COLUMNS}} FROM {{s}}.tasks {condition} ORDER BY id DESC LIMIT ${limit_parameter}"
        ))
    }

    /// The tag filter of `list`, with its key and value at `$key` and
    /// `$key + 1`.
    pub(super) fn tag_clause(&self, key: usize) -> String {
        Quoted(&self.schema).fill(&format!(
            "id IN (SELECT task_id FROM {{s}}.task_tags WHERE key = ${key} AND value = ${})",
            key + 1
        ))
    }
}

/// A checked schema name, quoted as an identifier into templates.
struct Quoted<'a>(&'a str);

impl Quoted<'_> {
    fn fill(&self, template: &str) -> String {
        template
            .replace("{COLUMNS}", COLUMNS)
            .replace("{LOG_COLUMNS}", LOG_COLUMNS)
            .replace("{s}", &quote(self.0))
    }
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let sql = Sql::new("tenant_a");
        for text in [
            &sql.insert.insert,
            &sql.insert.key_holders,
            &sql.apply,
            &sql.append_logs,
            &sql.get,
            &sql.logs,
            &sql.claim(3),
            &sql.list("WHERE name = $1", 2),
            &sql.tag_clause(3),
        ] {
            assert!(!text.contains('{'), "a placeholder is left in {text}");
            assert!(text.contains("\"tenant_a\"."), "{text}");
        }
        let claim = sql.claim(2);
        assert!(claim.contains("queue = $9 AND executor = $10 AND name = ANY($11)"));
        assert!(claim.contains("LIMIT $12"));
        assert!(claim.contains("SELECT id FROM p0 UNION ALL SELECT id FROM p1"));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
