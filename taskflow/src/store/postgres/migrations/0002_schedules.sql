-- Schedules: recurring tasks, fired once per tick however many hosts
-- share the schema.
--
-- A task a schedule fired names its schedule and tick. The fire is an
-- insert that this unique index admits once per (schedule, tick): two
-- hosts firing the same tick write one task, whichever commits first,
-- with no lock that could expire mid-fire.
ALTER TABLE tasks ADD COLUMN schedule text;
ALTER TABLE tasks ADD COLUMN tick timestamptz;
CREATE UNIQUE INDEX tasks_schedule_tick ON tasks (schedule, tick)
    WHERE schedule IS NOT NULL;

-- Every schedule and its state, shared by every host: declared ones
-- (`#[task(every | cron = …)]`) are written by each instance at its start,
-- added ones by `add_schedule`. `spec` is `every <ms>` or `cron <expr>`.
CREATE TABLE schedules (
    name      text        NOT NULL PRIMARY KEY,
    task      text        NOT NULL,
    spec      text        NOT NULL,
    timezone  text,
    declared  boolean     NOT NULL,
    catch_up  text        NOT NULL,
    args      bytea       NOT NULL,
    tags      bytea,                  -- encoded by the codec; NULL for none
    queue     text,                   -- NULL: the task's own queue
    priority  smallint,               -- NULL: the task's own priority
    codec     integer     NOT NULL,
    paused    boolean     NOT NULL DEFAULT false,
    -- Ticks at or before this are never fired: when it was created, or
    -- last resumed.
    since     timestamptz NOT NULL,
    last_tick timestamptz,            -- the tick it last fired
    last_task uuid                    -- the task that fire created
);
