-- taskflow's tables, in the store's own schema (the migration runs with
-- `search_path` set to it, so every name below lands there).
--
-- A PENDING row is queue work any instance may claim: `queue`, `priority`
-- (higher first), `run_at` (not before) and `seq` (insertion order) order
-- the claim. A claim makes the row RUNNING with `owner` set to the
-- claiming instance and `attempts` raised by one; every later write by
-- that owner is fenced on (owner, attempts).
CREATE TABLE tasks (
    id               uuid        NOT NULL PRIMARY KEY, -- UUIDv7: grows with time
    -- Insertion order, the claim's last tie-break. Not indexed on its own:
    -- only the ready index below orders by it.
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    name             text        NOT NULL,
    executor         text        NOT NULL,
    queue            text        NOT NULL,
    priority         smallint    NOT NULL,
    status           text        NOT NULL,
    args             bytea       NOT NULL,
    tags             bytea,                 -- encoded by the codec; NULL for none
    attempts         integer     NOT NULL,
    created_at       timestamptz NOT NULL,
    run_at           timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    error_kind       text,
    error_message    text,
    idempotency_key  text,
    owner            text,                  -- the instance running it, NULL when released
    output           bytea,                 -- kept for tasks with an idempotency key
    cancel_requested boolean     NOT NULL DEFAULT false,
    codec            integer     NOT NULL,  -- the codec version of args, tags, output
    logs_dropped     bigint      NOT NULL DEFAULT 0
);

-- Every index below is one more write per task: each earns its place, and
-- partial indexes leave out the rows they are not for (a task passes
-- through PENDING and RUNNING quickly; most rows are finished).

-- One live task per task name and key: PENDING, RUNNING and SUCCESS hold
-- the key; FAILED, CANCELLED and INTERRUPTED release it.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (name, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('PENDING', 'RUNNING', 'SUCCESS');
-- The claim: ready work of one queue and executor, read in claim order.
CREATE INDEX tasks_ready ON tasks (queue, executor, priority DESC, run_at, seq)
    WHERE status = 'PENDING';
-- When the next delayed task of a queue becomes ready: only tasks that were
-- delayed (a `delay`, a retry's backoff) wait past their creation.
CREATE INDEX tasks_run_at ON tasks (queue, run_at)
    WHERE status = 'PENDING' AND run_at > created_at;
-- An instance's running tasks (heartbeats, rescue).
CREATE INDEX tasks_running_owner ON tasks (owner) WHERE status = 'RUNNING';
-- Listing finished tasks by status, newest first.
CREATE INDEX tasks_status ON tasks (status, id)
    WHERE status NOT IN ('PENDING', 'RUNNING');
CREATE INDEX tasks_name ON tasks (name, id);
CREATE INDEX tasks_queue ON tasks (queue, id);
-- Retention.
CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;

-- Tags as rows, so `list` can filter on them. No foreign key: log lines and
-- tags may be written by another connection at the same moment as their
-- task, and retention deletes all three together.
CREATE TABLE task_tags (
    task_id uuid NOT NULL,
    key     text NOT NULL,
    value   text NOT NULL,
    PRIMARY KEY (key, value, task_id)
);
CREATE INDEX task_tags_task ON task_tags (task_id);

-- What tasks logged, per attempt, in order.
CREATE TABLE task_logs (
    task_id uuid        NOT NULL,
    seq     bigint      NOT NULL,
    attempt integer     NOT NULL,
    at      timestamptz NOT NULL,
    level   text        NOT NULL,
    target  text        NOT NULL,
    message text        NOT NULL,
    fields  bytea,                  -- key-value pairs, encoded by the codec
    PRIMARY KEY (task_id, seq)
);

-- Queue settings every instance sharing the schema sees.
CREATE TABLE queues (
    name   text    NOT NULL PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false
);

-- Managers using this schema. Liveness is a lease measured by the server's
-- clock, never a pid: an instance is alive while `lease_until` is ahead of
-- the server's `now()`.
CREATE TABLE instances (
    id           text        NOT NULL PRIMARY KEY,
    pid          bigint      NOT NULL,
    host         text        NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    lease_until  timestamptz NOT NULL
);

-- The one instance that does the upkeep (rescue, retention) while its
-- lease runs; another takes over once it lapses.
CREATE TABLE leader (
    singleton   boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (singleton),
    holder      text        NOT NULL,
    lease_until timestamptz NOT NULL
);
