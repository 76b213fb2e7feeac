//! Recurring tasks, as a user sees them: each tick of a schedule makes
//! exactly one task however many processes share the store (SQLite file,
//! PostgreSQL schema); ticks missed while no process ran are handled per
//! `catch_up`; a pause or resume in one process holds in another; and the
//! programmatic API (`schedules`, `add_schedule`, …) with its typed errors.
//!
//! The schedules are declared in this binary, so every manager it builds
//! fires them: the scenario processes (started again from this binary, each
//! on its store) are where they are observed; their task bodies record a
//! run only when the scenario names a side file.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use libtest_mimic::{Failed, Trial};
use taskflow::store::{PostgresConfig, PostgresStore, ScheduleRow, SqliteStore, Store};
use taskflow::{Error, Schedule, TaskFilter, TaskId, TaskManager, TaskStatus, task};
use taskflow_tests::harness::{self, Running, scenario_name, trial};
use taskflow_tests::postgres::{Schema, server};
use taskflow_tests::{PATIENCE, within};

const DB: &str = "TASKFLOW_TEST_DB";
const PG_URL: &str = "TASKFLOW_TEST_PG_URL";
const PG_SCHEMA: &str = "TASKFLOW_TEST_PG_SCHEMA";
const SIDE: &str = "TASKFLOW_TEST_SIDE";

const TICK200: &str = "sched::tick200";
const EACH_SECOND_ONE: &str = "sched::each_second_one";
const EACH_SECOND_SKIP: &str = "sched::each_second_skip";

// ---------------------------------------------------------------- the tasks

#[task(every = "200ms", name = "sched::tick200")]
async fn tick200() {
    record(TICK200);
}

#[task(every = "1s", name = "sched::each_second_one")]
fn each_second_one() {
    record(EACH_SECOND_ONE);
}

#[task(every = "1s", catch_up = "skip", name = "sched::each_second_skip")]
fn each_second_skip() {
    record(EACH_SECOND_SKIP);
}

/// Hourly, and at each start for the current hour if not yet fired.
#[task(every = "1h", run_on_start = true, name = "sched::hourly_on_start")]
async fn hourly_on_start() {}

/// A task scheduled at run time, with an argument.
#[task]
async fn remind(who: String) -> String {
    format!("reminded {who}")
}

/// Appends `<schedule> <task id> <pid>` to the side file, if the scenario
/// names one: the proof a body ran, and where.
fn record(schedule: &str) {
    let Ok(side) = std::env::var(SIDE) else {
        return;
    };
    let id = taskflow::context().map(|c| c.id.to_string()).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(side)
        .unwrap();
    // One write per line: appends from concurrent bodies never interleave.
    file.write_all(format!("{schedule} {id} {}\n", std::process::id()).as_bytes())
        .unwrap();
}

/// The task ids the side file says ran, with how many times each.
fn runs(side: &Path, schedule: &str) -> BTreeMap<String, usize> {
    let mut runs = BTreeMap::new();
    for line in std::fs::read_to_string(side).unwrap_or_default().lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(schedule) {
            *runs.entry(parts.next().unwrap().to_owned()).or_default() += 1;
        }
    }
    runs
}

// ---------------------------------------------------------------- scenarios

/// Serves the store named by the environment (a SQLite file, or a
/// PostgreSQL schema) until stdin closes, obeying `pause NAME`, `resume
/// NAME` and `status NAME` lines on the way.
async fn serve() -> ExitCode {
    let mut builder = TaskManager::builder()
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50));
    builder = match (std::env::var(DB), std::env::var(PG_URL)) {
        (Ok(db), _) => builder.snapshot_db(db),
        (_, Ok(url)) => builder
            .postgres(PostgresConfig::new(url.as_str()).schema(std::env::var(PG_SCHEMA).unwrap())),
        _ => panic!("a scenario needs {DB} or {PG_URL}"),
    };
    let manager = builder.build().await.unwrap();
    println!("ready {}", std::process::id());
    let (lines, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let (verb, name) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb {
            "pause" => {
                manager.pause_schedule(name).await.unwrap();
                println!("paused {name}");
            }
            "resume" => {
                manager.resume_schedule(name).await.unwrap();
                println!("resumed {name}");
            }
            "status" => {
                let schedules = manager.schedules().await.unwrap();
                let found = schedules.iter().find(|s| s.name == name).unwrap();
                println!("status {name} paused={}", found.paused);
            }
            other => panic!("unknown command {other}"),
        }
    }
    manager.shutdown().await;
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------- helpers

/// Where a test's processes meet: a SQLite file, or a PostgreSQL schema.
enum Shared {
    Sqlite(PathBuf),
    Postgres { url: String, schema: Schema },
}

impl Shared {
    /// This binary as the `serve` scenario on this store, recording runs
    /// in `side`.
    fn serve(&self, side: &Path) -> Running {
        let mut command = harness::scenario("serve");
        command.env(SIDE, side);
        match self {
            Shared::Sqlite(db) => command.env(DB, db),
            Shared::Postgres { url, schema } => {
                command.env(PG_URL, url).env(PG_SCHEMA, schema.name())
            }
        };
        let mut process = Running::start(command);
        process.read("ready");
        process
    }

    /// The store itself, which fires nothing: for reading what happened.
    async fn store(&self) -> Arc<dyn Store> {
        match self {
            Shared::Sqlite(db) => Arc::new(SqliteStore::open(db).unwrap()),
            Shared::Postgres { url, schema } => Arc::new(
                PostgresStore::open(PostgresConfig::new(url.as_str()).schema(schema.name()))
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// The tasks schedule `name` fired, by tick, each tick with the ids of
/// its tasks.
async fn fired(store: &dyn Store, name: &str) -> BTreeMap<SystemTime, Vec<TaskId>> {
    let listed = store.list(&TaskFilter::new().schedule(name)).await.unwrap();
    assert!(listed.corrupt.is_empty(), "{:?}", listed.corrupt);
    let mut by_tick: BTreeMap<SystemTime, Vec<TaskId>> = BTreeMap::new();
    for task in listed.tasks {
        let tick = task.record.scheduled.clone().unwrap();
        assert_eq!(tick.schedule, name);
        assert_eq!(task.record.name, name, "a declared schedule fires its task");
        by_tick.entry(tick.at).or_default().push(task.record.id);
    }
    by_tick
}

fn side_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("runs");
    (dir, side)
}

fn sleep(duration: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(duration)
}

// ---------------------------------------------------------------- the tests

/// Three processes fire the same 200 ms schedule on one store for about
/// 3 s: each tick makes exactly one task (no duplicates; no gaps beyond
/// scheduling noise), and each task runs once.
async fn three_processes_fire_each_tick_once(shared: Shared) {
    let (_dir, side) = side_file();
    let mut processes: Vec<Running> = (0..3).map(|_| shared.serve(&side)).collect();
    let started = SystemTime::now();
    sleep(Duration::from_secs(3)).await;
    let ended = SystemTime::now();
    for process in processes.drain(..) {
        process.stop();
    }
    let store = shared.store().await;
    let by_tick = fired(store.as_ref(), TICK200).await;
    let duplicates: Vec<_> = by_tick.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        duplicates.is_empty(),
        "ticks fired more than once: {duplicates:?}"
    );
    // The ticks while all three ran, on the 200 ms grid.
    let window: Vec<SystemTime> = by_tick
        .keys()
        .copied()
        .filter(|tick| *tick > started && *tick < ended)
        .collect();
    let first = *window.first().unwrap();
    let last = *window.last().unwrap();
    let expected = last.duration_since(first).unwrap().as_millis() / 200 + 1;
    let gaps = expected as usize - window.len();
    println!(
        "{} ticks fired in {:?}, {gaps} missing on the 200 ms grid",
        window.len(),
        ended.duration_since(started).unwrap()
    );
    assert!(window.len() >= 10, "only {} ticks in 3 s", window.len());
    assert!(gaps <= 2, "{gaps} ticks of {expected} were not fired");
    // Each task that ran, ran once.
    let runs = runs(&side, TICK200);
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    let ids: BTreeSet<String> = by_tick
        .values()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert!(
        runs.keys().all(|id| ids.contains(id)),
        "every run is of a fired task"
    );
    assert!(runs.len() >= window.len() - 2, "the fired tasks ran");
}

fn three_sqlite_processes_fire_each_tick_once() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        three_processes_fire_each_tick_once(Shared::Sqlite(dir.path().join("tasks.db"))).await;
    })
}

fn three_postgres_processes_fire_each_tick_once() -> Result<(), Failed> {
    trial(async {
        let Some(url) = server("three_postgres_processes_fire_each_tick_once").await else {
            return;
        };
        let schema = Schema::new(&url, "ticks").await;
        three_processes_fire_each_tick_once(Shared::Postgres { url, schema }).await;
    })
}

/// A process stops; ticks pass with none running; another starts. A
/// schedule with `catch_up = "one"` fires one of the missed ticks, one with
/// `"skip"` none; both go on with their next ticks.
fn a_restart_fires_missed_ticks_per_catch_up() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::Sqlite(dir.path().join("tasks.db"));
        let (_side_dir, side) = side_file();
        let first = shared.serve(&side);
        sleep(Duration::from_millis(2_500)).await;
        first.stop();
        let store = shared.store().await;
        let before_one = fired(store.as_ref(), EACH_SECOND_ONE).await;
        let before_skip = fired(store.as_ref(), EACH_SECOND_SKIP).await;
        let last_one = *before_one.keys().last().expect("ticks before the stop");
        let last_skip = *before_skip.keys().last().expect("ticks before the stop");
        // About four ticks pass with no process running.
        sleep(Duration::from_millis(4_500)).await;
        let restarted = SystemTime::now();
        let second = shared.serve(&side);
        sleep(Duration::from_millis(2_500)).await;
        second.stop();
        let after_one: Vec<SystemTime> = fired(store.as_ref(), EACH_SECOND_ONE)
            .await
            .into_keys()
            .filter(|tick| *tick > last_one)
            .collect();
        let after_skip: Vec<SystemTime> = fired(store.as_ref(), EACH_SECOND_SKIP)
            .await
            .into_keys()
            .filter(|tick| *tick > last_skip)
            .collect();
        println!("after the restart: one {after_one:?}, skip {after_skip:?}");
        // Missed for sure: due over a second before any process ran.
        let surely_missed = restarted - Duration::from_secs(1);
        assert!(
            after_skip.iter().all(|tick| *tick > surely_missed),
            "`skip` fired a missed tick: {after_skip:?}, restarted at {restarted:?}"
        );
        let first_on_time = *after_skip.first().expect("`skip` goes on with its ticks");
        let caught_up: Vec<_> = after_one
            .iter()
            .filter(|tick| **tick < first_on_time)
            .collect();
        assert_eq!(
            caught_up.len(),
            1,
            "`one` fires exactly one missed tick: {after_one:?} (on-time from {first_on_time:?})"
        );
        assert!(
            *caught_up[0] > last_one + Duration::from_secs(1),
            "the tick caught up was missed (due while no process ran)"
        );
        // Past the catch-up, `one` fires every tick `skip` fires (and, were
        // the process stalled past a tick, one more missed one).
        assert!(
            after_skip.iter().all(|tick| after_one.contains(tick)),
            "on-time ticks fire alike: one {after_one:?}, skip {after_skip:?}"
        );
    })
}

/// A pause made in one process holds in another (nothing fires while
/// paused, and that process reports it paused); a resume made in a third
/// process makes the second fire again, never the ticks slept through.
async fn pause_and_resume_hold_across_processes(shared: Shared) {
    let (_side_dir, side) = side_file();
    let mut pauser = shared.serve(&side);
    let mut worker = shared.serve(&side);
    let store = shared.store().await;
    within("the first ticks", async {
        while fired(store.as_ref(), TICK200).await.len() < 3 {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    pauser.say(&format!("pause {TICK200}"));
    pauser.read("paused");
    let paused_at = SystemTime::now();
    pauser.stop();
    // The other process sees it paused (from the store).
    let deadline = Instant::now() + PATIENCE;
    loop {
        worker.say(&format!("status {TICK200}"));
        if worker.read("status").ends_with("paused=true") {
            break;
        }
        assert!(Instant::now() < deadline, "the pause was never seen");
        sleep(Duration::from_millis(100)).await;
    }
    sleep(Duration::from_millis(1_500)).await;
    let while_paused: Vec<SystemTime> = fired(store.as_ref(), TICK200)
        .await
        .into_keys()
        .filter(|tick| *tick > paused_at)
        .collect();
    assert!(
        while_paused.is_empty(),
        "ticks fired while paused: {while_paused:?}"
    );
    let mut resumer = shared.serve(&side);
    resumer.say(&format!("resume {TICK200}"));
    resumer.read("resumed");
    let resumed_at = SystemTime::now();
    resumer.stop();
    // Only the worker runs now: it fires again.
    within("ticks after the resume", async {
        loop {
            let after = fired(store.as_ref(), TICK200)
                .await
                .into_keys()
                .filter(|tick| *tick > resumed_at)
                .count();
            if after >= 3 {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let slept_through = fired(store.as_ref(), TICK200)
        .await
        .into_keys()
        .filter(|tick| *tick > paused_at && *tick < resumed_at - Duration::from_millis(200))
        .count();
    assert_eq!(
        slept_through, 0,
        "ticks of the pause fired after the resume"
    );
    worker.say(&format!("status {TICK200}"));
    assert!(worker.read("status").ends_with("paused=false"));
    worker.stop();
}

fn sqlite_pause_and_resume_hold_across_processes() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        pause_and_resume_hold_across_processes(Shared::Sqlite(dir.path().join("tasks.db"))).await;
    })
}

fn postgres_pause_and_resume_hold_across_processes() -> Result<(), Failed> {
    trial(async {
        let Some(url) = server("postgres_pause_and_resume_hold_across_processes").await else {
            return;
        };
        let schema = Schema::new(&url, "pause").await;
        pause_and_resume_hold_across_processes(Shared::Postgres { url, schema }).await;
    })
}

/// Without a task store: a schedule added at run time fires its call
/// (arguments, tags) at each tick; tasks name their schedule and tick and
/// are listed by it; pause, resume and remove; typed errors.
fn schedules_added_at_run_time_fire_in_memory() -> Result<(), Failed> {
    trial(async {
        let started = SystemTime::now();
        let tasks = TaskManager::builder().build().await.unwrap();
        // `run_on_start`: the current hour's tick fires at once, once.
        let on_start = TaskFilter::new().schedule(hourly_on_start::NAME);
        within("the run-on-start fire", async {
            while tasks.list(&on_start).await.unwrap().is_empty() {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let first = tasks.list(&on_start).await.unwrap();
        assert_eq!(first.len(), 1);
        let tick = first[0].scheduled.clone().unwrap().at;
        let hour = Schedule::parse_every("1h").unwrap();
        assert_eq!(Some(tick), hour.latest_at_or_before(started));
        let schedule = Schedule::every(Duration::from_millis(100)).unwrap();
        tasks
            .add_schedule(
                "remind-ada",
                schedule.clone(),
                remind::call("ada".into()).tag("who", "ada"),
            )
            .await
            .unwrap();
        let by_schedule = TaskFilter::new().schedule("remind-ada");
        within("five fires", async {
            while tasks.list(&by_schedule).await.unwrap().len() < 5 {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let listed = tasks.list(&by_schedule).await.unwrap();
        let ticks: BTreeSet<SystemTime> = listed
            .iter()
            .map(|record| record.scheduled.clone().unwrap().at)
            .collect();
        assert_eq!(ticks.len(), listed.len(), "one task per tick");
        for record in &listed {
            assert_eq!(record.tags.get("who"), Some("ada"));
            assert_eq!(record.run_at, record.scheduled.clone().unwrap().at);
        }
        let done = taskflow_tests::wait_for_status(&tasks, listed[0].id, TaskStatus::Success).await;
        assert_eq!(done.name, remind::NAME);
        let info = tasks.schedules().await.unwrap();
        let ours = info.iter().find(|s| s.name == "remind-ada").unwrap();
        assert_eq!(ours.task, remind::NAME);
        assert!(!ours.declared && !ours.paused);
        assert!(ours.last_fire.is_some() && ours.last_task.is_some());
        assert!(ours.next_fire.is_some());
        let declared = info.iter().find(|s| s.name == TICK200).unwrap();
        assert!(declared.declared);
        assert_eq!(declared.schedule, Schedule::parse_every("200ms").unwrap());

        // Paused: nothing fires; resumed: it goes on.
        tasks.pause_schedule("remind-ada").await.unwrap();
        sleep(Duration::from_millis(50)).await;
        let count = tasks.list(&by_schedule).await.unwrap().len();
        sleep(Duration::from_millis(400)).await;
        assert_eq!(tasks.list(&by_schedule).await.unwrap().len(), count);
        assert!(
            tasks
                .schedules()
                .await
                .unwrap()
                .iter()
                .any(|s| s.name == "remind-ada" && s.paused && s.next_fire.is_none())
        );
        tasks.resume_schedule("remind-ada").await.unwrap();
        within("a fire after the resume", async {
            while tasks.list(&by_schedule).await.unwrap().len() <= count {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;

        // Typed errors.
        let taken = tasks
            .add_schedule("remind-ada", schedule.clone(), remind::call("bob".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&taken, Error::ScheduleExists(name) if name == "remind-ada"),
            "{taken:?}"
        );
        let blank = tasks
            .add_schedule(" ", schedule.clone(), remind::call("bob".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&blank, Error::Schedule(e) if e.field() == "name"),
            "{blank:?}"
        );
        let declared = tasks.remove_schedule(TICK200).await.unwrap_err();
        assert!(
            matches!(declared, Error::ScheduleDeclared(_)),
            "{declared:?}"
        );
        let unknown = tasks.pause_schedule("nowhere").await.unwrap_err();
        assert!(matches!(unknown, Error::UnknownSchedule(_)), "{unknown:?}");
        let bad = Schedule::cron_in("0 9 * * *", "Nowhere/City").unwrap_err();
        assert_eq!(bad.field(), "timezone");

        assert_eq!(
            tasks.list(&on_start).await.unwrap().len(),
            1,
            "run_on_start fires once"
        );
        tasks.remove_schedule("remind-ada").await.unwrap();
        assert!(
            !tasks
                .schedules()
                .await
                .unwrap()
                .iter()
                .any(|s| s.name == "remind-ada")
        );
        let gone = tasks.remove_schedule("remind-ada").await.unwrap_err();
        assert!(matches!(gone, Error::UnknownSchedule(_)), "{gone:?}");
        tasks.shutdown().await;
    })
}

/// A stored schedule naming a task this binary does not register is
/// listed, and never fired here; one added through the store by another
/// binary for a task this one registers fires here.
fn a_schedule_of_an_unknown_task_is_listed_not_fired() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let store = SqliteStore::open(&db).unwrap();
        let now = SystemTime::now();
        store
            .add_schedule(ScheduleRow::new(
                "elsewhere",
                "other::binary_task",
                "every 100",
                now,
            ))
            .await
            .unwrap();
        store
            .add_schedule(ScheduleRow::new("mine", remind::NAME, "every 100", now))
            .await
            .unwrap();
        let tasks = TaskManager::builder()
            .snapshot_db(&db)
            .build()
            .await
            .unwrap();
        within("the known schedule fires", async {
            while store
                .list(&TaskFilter::new().schedule("mine"))
                .await
                .unwrap()
                .tasks
                .is_empty()
            {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        sleep(Duration::from_millis(300)).await;
        let listed = tasks.schedules().await.unwrap();
        assert!(
            listed
                .iter()
                .any(|s| s.name == "elsewhere" && s.task == "other::binary_task")
        );
        let fired = store
            .list(&TaskFilter::new().schedule("elsewhere"))
            .await
            .unwrap();
        assert!(
            fired.tasks.is_empty(),
            "a schedule of an unknown task fired"
        );
        tasks.shutdown().await;
    })
}

/// A one-off run far ahead: `call(…).run_at(t).idempotency_key(k)` makes
/// one stored task, whoever enqueues it again; it is listed by when it is
/// due, from another manager on the store too, and cancelled there.
fn a_one_off_run_is_listed_by_run_at_and_cancelled() -> Result<(), Failed> {
    trial(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let first = TaskManager::builder()
            .snapshot_db(&db)
            .build()
            .await
            .unwrap();
        let now = SystemTime::now();
        let tuesday = now + Duration::from_secs(7 * 24 * 3600);
        let once = remind::call("ada".into())
            .run_at(tuesday)
            .idempotency_key("remind-ada-tuesday")
            .enqueue_on(&first)
            .unwrap();
        let again = remind::call("ada".into())
            .run_at(tuesday)
            .idempotency_key("remind-ada-tuesday")
            .enqueue_on(&first)
            .unwrap();
        assert_eq!(once.id(), again.id(), "the key makes it one task");
        once.persisted().await.unwrap();
        let second = TaskManager::builder()
            .snapshot_db(&db)
            .build()
            .await
            .unwrap();
        let due_next_week = TaskFilter::new()
            .status(TaskStatus::Pending)
            .run_after(now + Duration::from_secs(24 * 3600))
            .run_before(now + Duration::from_secs(8 * 24 * 3600));
        let listed = second.list(&due_next_week).await.unwrap();
        assert_eq!(
            listed.iter().map(|r| r.id).collect::<Vec<_>>(),
            [once.id()],
            "listed by when it is due, from another manager"
        );
        assert_eq!(listed[0].scheduled, None, "a one-off run names no schedule");
        assert!(
            second
                .list(&TaskFilter::new().run_before(now))
                .await
                .unwrap()
                .iter()
                .all(|r| r.id != once.id())
        );
        second.cancel(once.id()).await.unwrap();
        taskflow_tests::wait_for_status(&first, once.id(), TaskStatus::Cancelled).await;
        assert!(second.list(&due_next_week).await.unwrap().is_empty());
        second.shutdown().await;
        first.shutdown().await;
    })
}

fn main() -> ExitCode {
    taskflow::init();
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "serve" => runtime.block_on(serve()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    harness::run(vec![
        Trial::test(
            "three_sqlite_processes_fire_each_tick_once",
            three_sqlite_processes_fire_each_tick_once,
        ),
        Trial::test(
            "three_postgres_processes_fire_each_tick_once",
            three_postgres_processes_fire_each_tick_once,
        ),
        Trial::test(
            "a_restart_fires_missed_ticks_per_catch_up",
            a_restart_fires_missed_ticks_per_catch_up,
        ),
        Trial::test(
            "sqlite_pause_and_resume_hold_across_processes",
            sqlite_pause_and_resume_hold_across_processes,
        ),
        Trial::test(
            "postgres_pause_and_resume_hold_across_processes",
            postgres_pause_and_resume_hold_across_processes,
        ),
        Trial::test(
            "schedules_added_at_run_time_fire_in_memory",
            schedules_added_at_run_time_fire_in_memory,
        ),
        Trial::test(
            "a_schedule_of_an_unknown_task_is_listed_not_fired",
            a_schedule_of_an_unknown_task_is_listed_not_fired,
        ),
        Trial::test(
            "a_one_off_run_is_listed_by_run_at_and_cancelled",
            a_one_off_run_is_listed_by_run_at_and_cancelled,
        ),
    ])
}
