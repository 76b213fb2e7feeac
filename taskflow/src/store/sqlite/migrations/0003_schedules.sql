-- Schedules: recurring tasks, fired once per tick however many processes
-- share the file.
--
-- A task a schedule fired names its schedule and tick (microseconds since
-- the epoch). The fire is an insert that this unique index admits once per
-- (schedule, tick): two processes firing the same tick write one task,
-- whichever commits first, with no lock that could expire mid-fire.
ALTER TABLE tasks ADD COLUMN schedule TEXT;
ALTER TABLE tasks ADD COLUMN tick INTEGER;
CREATE UNIQUE INDEX tasks_schedule_tick ON tasks (schedule, tick)
    WHERE schedule IS NOT NULL;

-- Every schedule and its state, shared by every process: declared ones
-- (`#[task(every | cron = …)]`) are written by each process at its start,
-- added ones by `add_schedule`. `spec` is `every <ms>` or `cron <expr>`.
CREATE TABLE schedules (
    name       TEXT    NOT NULL PRIMARY KEY,
    task       TEXT    NOT NULL,
    spec       TEXT    NOT NULL,
    timezone   TEXT,
    declared   INTEGER NOT NULL,
    catch_up   TEXT    NOT NULL,
    args       BLOB    NOT NULL,
    tags       BLOB,                -- encoded by the codec; NULL for none
    queue      TEXT,                -- NULL: the task's own queue
    priority   INTEGER,             -- NULL: the task's own priority
    codec      INTEGER NOT NULL,
    paused     INTEGER NOT NULL DEFAULT 0,
    -- Ticks at or before this (microseconds) are never fired: when it was
    -- created, or last resumed.
    since      INTEGER NOT NULL,
    last_tick  INTEGER,             -- the tick it last fired
    last_task  BLOB                 -- the task that fire created
);
