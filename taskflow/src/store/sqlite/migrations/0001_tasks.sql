-- Every task this file has seen. Ids are UUIDv7 bytes, so the primary-key
-- index grows at its end as tasks are enqueued.
CREATE TABLE tasks (
    id              BLOB    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    executor        TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    args            BLOB    NOT NULL,
    tags            BLOB,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL, -- microseconds since the Unix epoch
    started_at      INTEGER,
    finished_at     INTEGER,
    error_kind      TEXT,
    error_message   TEXT,
    idempotency_key TEXT,
    owner           TEXT,             -- the instance that runs it, NULL when released
    output          BLOB              -- kept for tasks with an idempotency key
);

-- One live task per task name and key: PENDING, RUNNING and SUCCESS hold the
-- key; FAILED, CANCELLED and INTERRUPTED release it.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (name, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('PENDING', 'RUNNING', 'SUCCESS');

CREATE INDEX tasks_status ON tasks (status);
CREATE INDEX tasks_unfinished_owner ON tasks (owner) WHERE status IN ('PENDING', 'RUNNING');
CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;

-- Managers using this file, each with a heartbeat. Rows owned by a live
-- instance are never taken by another.
CREATE TABLE instances (
    id           TEXT    NOT NULL PRIMARY KEY,
    pid          INTEGER NOT NULL,
    host         TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
