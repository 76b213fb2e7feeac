-- One queue, leases, durable logs (taskflow's store seam).
--
-- A PENDING row is queue work any instance may claim: `queue`, `priority`
-- (higher first) and `run_at` (not before, microseconds since the epoch)
-- order the claim. A claim makes the row RUNNING with `owner` set to the
-- claiming instance and `attempts` raised by one; every later write by that
-- owner is fenced on (owner, attempts).

ALTER TABLE tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN run_at INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET run_at = created_at;
-- Someone asked the owner of this RUNNING task to cancel it.
ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
-- The codec version `args`, `tags` and `output` are encoded with; rows
-- written before this column existed used version 1.
ALTER TABLE tasks ADD COLUMN codec INTEGER NOT NULL DEFAULT 1;
-- Log lines past the per-task cap, counted rather than kept.
ALTER TABLE tasks ADD COLUMN logs_dropped INTEGER NOT NULL DEFAULT 0;

-- Every index below is one more write per task: each earns its place, and
-- partial indexes leave out the rows they are not for (a task passes
-- through PENDING and RUNNING quickly; most rows are finished).
DROP INDEX tasks_unfinished_owner;
-- Listing finished tasks by status, newest first, reads the index in order
-- (PENDING and RUNNING ones are few, found through the indexes below).
DROP INDEX tasks_status;
CREATE INDEX tasks_status ON tasks (status, id)
    WHERE status NOT IN ('PENDING', 'RUNNING');
-- The claim: ready work of one queue and executor, best first (an index
-- ends with the rowid, so ties go in insertion order).
CREATE INDEX tasks_ready ON tasks (queue, executor, priority DESC, run_at)
    WHERE status = 'PENDING';
-- When the next delayed task of a queue becomes ready: only tasks that were
-- delayed (a `delay`, a retry's backoff) wait past their creation.
CREATE INDEX tasks_run_at ON tasks (queue, run_at)
    WHERE status = 'PENDING' AND run_at > created_at;
-- An instance's running tasks (heartbeats, rescue).
CREATE INDEX tasks_running_owner ON tasks (owner) WHERE status = 'RUNNING';
CREATE INDEX tasks_name ON tasks (name, id);
CREATE INDEX tasks_queue ON tasks (queue, id);

-- Tags as rows, so `list` can filter on them.
CREATE TABLE task_tags (
    task_id BLOB NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (key, value, task_id)
) WITHOUT ROWID;
CREATE INDEX task_tags_task ON task_tags (task_id);

-- What tasks logged, per attempt, in order.
CREATE TABLE task_logs (
    task_id BLOB    NOT NULL,
    seq     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at      INTEGER NOT NULL, -- microseconds since the Unix epoch
    level   TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    message TEXT    NOT NULL,
    fields  BLOB,             -- key-value pairs, encoded by the codec
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

-- Queue settings every instance sharing the file sees.
CREATE TABLE queues (
    name   TEXT    NOT NULL PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
);

-- Liveness is a lease, never a pid: an instance is alive while
-- `lease_until` (microseconds since the epoch) is in the future.
ALTER TABLE instances ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
