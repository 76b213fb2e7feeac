//! Named queues: a queue's `concurrency` caps its running tasks while other
//! queues run freely; `max_size` refuses the enqueue past its cap with
//! `Error::QueueFull` and records nothing, and accepts again once a PENDING
//! task leaves; `pause` stops admissions and `resume` restarts them, also
//! across processes sharing a task store; a queue's concurrency changes at
//! run time, up and down; `queue_stats` reports all of it.
//! Each behaviour is checked without a task store and with one.
//!
//! Like `persistence.rs`, this binary runs its tests with libtest-mimic and
//! starts itself again as a *scenario* process for the cross-process test.

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use taskflow::{
    DEFAULT_QUEUE, Error, QueueConfig, QueueStats, TaskFilter, TaskManager, TaskManagerBuilder,
    TaskStatus, task,
};
use taskflow_tests::harness::{self, KillOnDrop, finish, lines, read_until, scenario_name, trial};
use taskflow_tests::{Gates, Gauge, eventually, wait_for, wait_for_status, within};

const DB: &str = "TASKFLOW_TEST_DB";
const SIDE: &str = "TASKFLOW_TEST_SIDE";

/// Bodies wait on gates named by the test.
static GATES: Gates = Gates::new();

/// Per mode (0: no store, 1: a store): bodies of the capped queue and of
/// the default queue executing now.
static NARROW: [Gauge; 2] = [Gauge::new(), Gauge::new()];
static WIDE: [Gauge; 2] = [Gauge::new(), Gauge::new()];

/// A task of the capped queue: waits for the gate, then lingers a little
/// so that a queue admitting too many would show it.
#[task]
async fn narrow(mode: usize, gate: String) {
    let _executing = NARROW[mode].enter();
    assert!(GATES.wait(&gate).await, "gate {gate} never opened");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[task]
async fn wide(mode: usize, gate: String) {
    let _executing = WIDE[mode].enter();
    assert!(GATES.wait(&gate).await, "gate {gate} never opened");
}

static ELASTIC: [Gauge; 2] = [Gauge::new(), Gauge::new()];

/// A task of a queue whose cap changes: waits for its own gate.
#[task]
async fn elastic(mode: usize, gate: String) {
    let _executing = ELASTIC[mode].enter();
    assert!(GATES.wait(&gate).await, "gate {gate} never opened");
}

static LOOSE: [Gauge; 2] = [Gauge::new(), Gauge::new()];

/// A task of a queue that starts without a cap: waits for its own gate.
#[task]
async fn loose(mode: usize, gate: String) {
    let _executing = LOOSE[mode].enter();
    assert!(GATES.wait(&gate).await, "gate {gate} never opened");
}

/// Holds its slot until the gate opens.
#[task]
async fn held(gate: String) {
    assert!(GATES.wait(&gate).await, "gate {gate} never opened");
}

/// Appends `<n> <pid>` to the side file: the proof it ran, and where.
#[task]
async fn shared_work(n: u32, side: String) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&side)
        .unwrap();
    file.write_all(format!("{n} {}\n", std::process::id()).as_bytes())
        .unwrap();
}

/// Bodies of the `tight` queue (concurrency 2) executing now.
static TIGHT: Gauge = Gauge::new();

/// A no-op that gives way once, so that attempts overlap.
#[task]
async fn blip(n: u32, tight: bool) -> u32 {
    let _executing = tight.then(|| TIGHT.enter());
    tokio::task::yield_now().await;
    n
}

#[task]
fn blip_thread(n: u32, tight: bool) -> u32 {
    let _executing = tight.then(|| TIGHT.enter());
    std::thread::yield_now();
    n
}

#[task(executor = "process")]
fn crunch(n: u32) -> u32 {
    n * 3
}

// ---------------------------------------------------------------- helpers

fn builder(db: Option<&Path>) -> TaskManagerBuilder {
    let builder = TaskManager::builder();
    match db {
        Some(db) => builder.snapshot_db(db),
        None => builder,
    }
}

fn stats_of(stats: &[QueueStats], name: &str) -> QueueStats {
    stats
        .iter()
        .find(|stat| stat.name == name)
        .unwrap_or_else(|| panic!("no stats for queue {name}: {stats:?}"))
        .clone()
}

/// The queue's numbers once every change so far is in the task store (with
/// one, they are counted there, from every process's rows).
async fn queue_stats(manager: &TaskManager, name: &str) -> QueueStats {
    match manager.flush().await {
        Ok(()) | Err(Error::NotDurable) => {}
        Err(error) => panic!("the task store cannot be written: {error}"),
    }
    stats_of(&manager.queue_stats().await.unwrap(), name)
}

/// Waits until the store counts nothing PENDING or RUNNING in `queue`.
async fn settle(manager: &TaskManager, queue: &str) {
    let settled = wait_for(taskflow_tests::PATIENCE, || async {
        let stats = queue_stats(manager, queue).await;
        (stats.pending, stats.running) == (0, 0)
    })
    .await;
    assert!(settled, "queue {queue} never settled");
}

/// Runs per task number in the side file, and the pids that ran each.
fn runs(side: &Path) -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string(side).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (n, pid) = line.split_once(' ').unwrap();
            (n.parse().unwrap(), pid.parse().unwrap())
        })
        .collect()
}

/// Both modes, each in a fresh directory: no store, then a store.
fn modes() -> [(usize, Option<PathBuf>, tempfile::TempDir); 2] {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db = b.path().join("tasks.db");
    [(0, None, a), (1, Some(db), b)]
}

// ---------------------------------------------------------------- tests

fn a_queue_of_two_runs_two_while_the_default_queue_runs_ten() -> Result<(), Failed> {
    trial(async {
        for (mode, db, _dir) in modes() {
            let manager = builder(db.as_deref())
                .queue("narrow", QueueConfig::new().concurrency(2))
                .build()
                .await
                .unwrap();
            let gate = format!("cap-{mode}");
            let mut handles = Vec::new();
            for _ in 0..10 {
                handles.push(
                    narrow::call(mode, gate.clone())
                        .queue("narrow")
                        .enqueue_on(&manager)
                        .unwrap(),
                );
                handles.push(wide::call(mode, gate.clone()).enqueue_on(&manager).unwrap());
            }
            eventually("10 default and 2 narrow bodies to run at once", || {
                WIDE[mode].current() == 10 && NARROW[mode].current() == 2
            })
            .await;
            let narrow_stats = queue_stats(&manager, "narrow").await;
            assert_eq!(
                (narrow_stats.running, narrow_stats.pending),
                (2, 8),
                "mode {mode}: {narrow_stats:?}"
            );
            assert_eq!(narrow_stats.concurrency, Some(2));
            assert_eq!(narrow_stats.max_size, None);
            assert!(!narrow_stats.paused);
            let default_stats = queue_stats(&manager, DEFAULT_QUEUE).await;
            assert_eq!(
                (default_stats.running, default_stats.pending),
                (10, 0),
                "mode {mode}: {default_stats:?}"
            );
            assert_eq!(default_stats.concurrency, None);

            GATES.open(&gate);
            for handle in handles {
                within("every task to finish", handle).await.unwrap();
            }
            assert_eq!(NARROW[mode].peak(), 2, "mode {mode}: the queue's cap held");
            assert_eq!(NARROW[mode].entered(), 10);
            assert_eq!(WIDE[mode].peak(), 10, "mode {mode}: the default ran freely");
            let narrow_stats = queue_stats(&manager, "narrow").await;
            assert_eq!((narrow_stats.running, narrow_stats.pending), (0, 0));
            manager.shutdown().await;
        }
    })
}

/// A cap set at run time holds from then on: raised, it admits what
/// waits; lowered, it lets what runs finish and admits nothing until fewer
/// run; removed, it admits everything. A cap of 0 or a blank name is an
/// `InvalidQueue` error.
fn a_queues_concurrency_changes_at_run_time() -> Result<(), Failed> {
    trial(async {
        for (mode, db, _dir) in modes() {
            let manager = builder(db.as_deref()).build().await.unwrap();
            manager.set_queue_concurrency("elastic", Some(2)).unwrap();
            assert_eq!(queue_stats(&manager, "elastic").await.concurrency, Some(2));
            let gates: Vec<String> = (0..8).map(|n| format!("elastic-{mode}-{n}")).collect();
            let handles: Vec<_> = gates
                .iter()
                .map(|gate| {
                    elastic::call(mode, gate.clone())
                        .queue("elastic")
                        .enqueue_on(&manager)
                        .unwrap()
                })
                .collect();
            let running = |n: usize| {
                let gates = gates.clone();
                move || {
                    ELASTIC[mode].current() == n
                        && gates
                            .iter()
                            .filter(|g| GATES.reached(g) && !GATES.is_open(g))
                            .count()
                            == n
                }
            };
            eventually("2 bodies under a cap of 2", running(2)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(ELASTIC[mode].current(), 2, "mode {mode}: the cap held");

            manager.set_queue_concurrency("elastic", Some(5)).unwrap();
            eventually("5 bodies once the cap is 5", running(5)).await;
            assert_eq!(queue_stats(&manager, "elastic").await.concurrency, Some(5));

            manager.set_queue_concurrency("elastic", Some(1)).unwrap();
            let started: Vec<&String> = gates.iter().filter(|g| GATES.reached(g)).collect();
            assert_eq!(started.len(), 5, "mode {mode}");
            for gate in &started[..4] {
                GATES.open(gate);
            }
            eventually("one body left of the five", running(1)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                ELASTIC[mode].current(),
                1,
                "mode {mode}: nothing admitted while one runs under a cap of 1"
            );
            let stats = queue_stats(&manager, "elastic").await;
            assert_eq!((stats.running, stats.pending), (1, 3), "mode {mode}");

            manager.set_queue_concurrency("elastic", None).unwrap();
            eventually("every waiting body once uncapped", running(4)).await;
            assert_eq!(queue_stats(&manager, "elastic").await.concurrency, None);

            for (cap, queue) in [(Some(0), "elastic"), (Some(3), " ")] {
                let refused = manager.set_queue_concurrency(queue, cap);
                assert!(
                    matches!(refused, Err(Error::InvalidQueue { .. })),
                    "{cap:?} for `{queue}`: {refused:?}"
                );
            }
            for gate in &gates {
                GATES.open(gate);
            }
            for handle in handles {
                within("every elastic task", handle).await.unwrap();
            }
            assert_eq!(ELASTIC[mode].peak(), 5, "mode {mode}");
            assert_eq!(ELASTIC[mode].entered(), 8, "mode {mode}");
            manager.shutdown().await;
        }
    })
}

/// A cap set on a queue that had none, while more of its tasks run than
/// the cap allows: the tasks enqueued after it wait, and start one at a
/// time as the running ones finish, never beyond the cap.
fn a_cap_set_while_uncapped_tasks_run_admits_as_they_finish() -> Result<(), Failed> {
    trial(async {
        for (mode, db, _dir) in modes() {
            let manager = builder(db.as_deref()).build().await.unwrap();
            let gate = |n: usize| format!("loose-{mode}-{n}");
            let enqueue = |n: usize| {
                loose::call(mode, gate(n))
                    .queue("loose")
                    .enqueue_on(&manager)
                    .unwrap()
            };
            let mut handles: Vec<_> = (0..4).map(enqueue).collect();
            eventually("4 uncapped bodies", || LOOSE[mode].current() == 4).await;

            manager.set_queue_concurrency("loose", Some(1)).unwrap();
            handles.extend((4..6).map(enqueue));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stats = queue_stats(&manager, "loose").await;
            assert_eq!((stats.running, stats.pending), (4, 2), "mode {mode}");

            for n in 0..4 {
                GATES.open(&gate(n));
            }
            eventually("one waiting task admitted", || {
                (4..6).filter(|&n| GATES.reached(&gate(n))).count() == 1
            })
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(LOOSE[mode].current(), 1, "mode {mode}: the new cap held");
            for n in 4..6 {
                eventually("the next waiting task", || GATES.reached(&gate(n))).await;
                GATES.open(&gate(n));
            }
            for handle in handles {
                within("every loose task", handle).await.unwrap();
            }
            assert_eq!(LOOSE[mode].entered(), 6, "mode {mode}");
            manager.shutdown().await;
        }
    })
}

/// Threads that enqueue while others finish tasks and free slots: every
/// task is admitted (none is left waiting beside a free slot), in both
/// executors, three priorities and two queues, and the capped queue's cap
/// holds throughout. In rounds, each awaited to the end: the last tasks of
/// a round are the ones a lost admission would strand.
fn racing_enqueues_and_releases_strand_no_task() -> Result<(), Failed> {
    const ROUNDS: u32 = 300;
    const THREADS: u32 = 4;
    const EACH: u32 = 5;
    trial(async {
        let manager = TaskManager::builder()
            .max_concurrent_tasks(3)
            .max_sync_threads(2)
            .queue("tight", QueueConfig::new().concurrency(2))
            .build()
            .await
            .unwrap();
        let enqueue = |n: u32| {
            let tight = n.is_multiple_of(3);
            let priority = [0, 1, -1][(n % 5 % 3) as usize];
            let queue = if tight { "tight" } else { DEFAULT_QUEUE };
            let handle = match n % 2 {
                0 => blip::call(n, tight)
                    .queue(queue)
                    .priority(priority)
                    .enqueue_on(&manager),
                _ => blip_thread::call(n, tight)
                    .queue(queue)
                    .priority(priority)
                    .enqueue_on(&manager),
            };
            (n, handle.unwrap())
        };
        for round in 0..ROUNDS {
            let first = round * THREADS * EACH;
            let enqueued: Vec<_> = std::thread::scope(|threads| {
                let enqueuers: Vec<_> = (0..THREADS)
                    .map(|thread| {
                        let from = first + thread * EACH;
                        threads.spawn(move || (from..from + EACH).map(enqueue).collect::<Vec<_>>())
                    })
                    .collect();
                enqueuers
                    .into_iter()
                    .flat_map(|enqueuer| enqueuer.join().unwrap())
                    .collect()
            });
            for (n, handle) in enqueued {
                let what = format!("task {n} of round {round}");
                assert_eq!(within(&what, handle).await.unwrap(), n);
            }
        }
        let total = ROUNDS * THREADS * EACH;
        assert_eq!(manager.metrics().success, u64::from(total));
        assert!(
            TIGHT.peak() <= 2,
            "the tight queue ran {} at once",
            TIGHT.peak()
        );
        assert_eq!(TIGHT.entered(), total.div_ceil(3) as usize);
        for stats in manager.queue_stats().await.unwrap() {
            assert_eq!((stats.pending, stats.running), (0, 0), "{stats:?}");
        }
        manager.shutdown().await;
    })
}

/// Queues that sort before another and hold no work (`"default"` is always
/// there) do not keep a capped executor's slots from it: an async task with
/// `max_concurrent_tasks(1)`, and a process task with the default worker
/// count, each in a queue of its own.
fn an_idle_queue_leaves_the_executor_to_a_busy_one() -> Result<(), Failed> {
    trial(async {
        for (mode, db, _dir) in modes() {
            let manager = builder(db.as_deref())
                .max_concurrent_tasks(1)
                .queue("aaa-idle", QueueConfig::new())
                .build()
                .await
                .unwrap();
            let gate = format!("idle-{mode}");
            GATES.open(&gate);
            let last = held::call(gate).queue("zzz").enqueue_on(&manager).unwrap();
            within(
                &format!("mode {mode}: the async task behind idle queues"),
                last,
            )
            .await
            .unwrap();
            let report = crunch::call(7)
                .queue("reports")
                .enqueue_on(&manager)
                .unwrap();
            assert_eq!(
                within(
                    &format!("mode {mode}: the process task behind idle queues"),
                    report
                )
                .await
                .unwrap(),
                21
            );
            manager.shutdown().await;
        }
    })
}

fn max_size_refuses_at_exactly_the_limit_and_records_nothing() -> Result<(), Failed> {
    trial(async {
        for (mode, db, _dir) in modes() {
            let manager = builder(db.as_deref())
                .queue("bounded", QueueConfig::new().concurrency(1).max_size(3))
                .build()
                .await
                .unwrap();
            let (first_gate, rest_gate) = (format!("first-{mode}"), format!("rest-{mode}"));
            let enqueue = |gate: &str| {
                held::call(gate.to_owned())
                    .queue("bounded")
                    .enqueue_on(&manager)
            };
            let assert_full = |result: Result<taskflow::TaskHandle<()>, Error>| match result {
                Err(Error::QueueFull { queue, max_size }) => {
                    assert_eq!((queue.as_str(), max_size), ("bounded", 3));
                }
                Err(other) => panic!("mode {mode}: expected QueueFull, got {other:?}"),
                Ok(handle) => panic!(
                    "mode {mode}: task {} was accepted past the cap",
                    handle.id()
                ),
            };

            // Running, so not PENDING: it does not count.
            let running = enqueue(&first_gate).unwrap();
            wait_for_status(&manager, running.id(), TaskStatus::Running).await;
            let waiting: Vec<_> = (0..3).map(|_| enqueue(&rest_gate).unwrap()).collect();
            assert_full(enqueue(&rest_gate));
            assert_full(enqueue(&rest_gate));
            // Other queues are not affected.
            let elsewhere = held::call(rest_gate.clone()).enqueue_on(&manager).unwrap();
            let stats = queue_stats(&manager, "bounded").await;
            assert_eq!(stats.max_size, Some(3));
            assert_eq!(stats.concurrency, Some(1));
            assert_eq!((stats.running, stats.pending), (1, 3), "{stats:?}");
            let listed = manager
                .list(&TaskFilter::new().queue("bounded"))
                .await
                .unwrap();
            assert_eq!(listed.len(), 4, "mode {mode}: nothing refused was recorded");

            // A cancelled task leaves the queue: one more is accepted.
            manager.cancel(waiting[0].id()).await.unwrap();
            let after_cancel = enqueue(&rest_gate).unwrap();
            assert_full(enqueue(&rest_gate));

            // A task that starts leaves it too.
            GATES.open(&first_gate);
            within("the running task", running).await.unwrap();
            wait_for_status(&manager, waiting[1].id(), TaskStatus::Running).await;
            let after_start = enqueue(&rest_gate).unwrap();
            assert_full(enqueue(&rest_gate));

            if db.is_some() {
                manager.flush().await.unwrap();
            }
            let listed = manager
                .list(&TaskFilter::new().queue("bounded"))
                .await
                .unwrap();
            assert_eq!(listed.len(), 6, "mode {mode}: {listed:#?}");
            GATES.open(&rest_gate);
            for handle in waiting
                .into_iter()
                .skip(1)
                .chain([after_cancel, after_start, elsewhere])
            {
                within("the accepted tasks", handle).await.unwrap();
            }
            let stats = queue_stats(&manager, "bounded").await;
            assert_eq!((stats.running, stats.pending), (0, 0), "{stats:?}");
            manager.shutdown().await;
        }
    })
}

fn pause_stops_admissions_and_resume_restarts_them() -> Result<(), Failed> {
    trial(async {
        for (mode, db, _dir) in modes() {
            let manager = builder(db.as_deref())
                .queue("pausable", QueueConfig::new().concurrency(4))
                .poll_interval(Duration::from_millis(50))
                .build()
                .await
                .unwrap();
            let (running_gate, later_gate) = (format!("before-{mode}"), format!("after-{mode}"));
            let running = held::call(running_gate.clone())
                .queue("pausable")
                .enqueue_on(&manager)
                .unwrap();
            wait_for_status(&manager, running.id(), TaskStatus::Running).await;

            manager.pause("pausable").await.unwrap();
            let stats = queue_stats(&manager, "pausable").await;
            assert!(stats.paused, "mode {mode}: {stats:?}");
            let handles: Vec<_> = (0..5)
                .map(|_| {
                    held::call(later_gate.clone())
                        .queue("pausable")
                        .enqueue_on(&manager)
                        .unwrap()
                })
                .collect();
            // Other queues run on.
            let elsewhere = held::call(later_gate.clone()).enqueue_on(&manager).unwrap();
            wait_for_status(&manager, elsewhere.id(), TaskStatus::Running).await;
            // A running task finishes.
            GATES.open(&running_gate);
            within("the task running at the pause", running)
                .await
                .unwrap();
            // Many claim rounds later, nothing was admitted.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for handle in &handles {
                assert_eq!(handle.status(), TaskStatus::Pending, "mode {mode}");
            }
            let stats = queue_stats(&manager, "pausable").await;
            assert_eq!(
                (stats.paused, stats.running, stats.pending),
                (true, 0, 5),
                "mode {mode}: {stats:?}"
            );

            manager.resume("pausable").await.unwrap();
            eventually("the queue's 4 slots to fill again", || {
                let running = handles.iter().filter(|h| h.status() == TaskStatus::Running);
                running.count() == 4
            })
            .await;
            let stats = queue_stats(&manager, "pausable").await;
            assert!(!stats.paused);
            assert_eq!(
                (stats.running, stats.pending),
                (4, 1),
                "mode {mode}: {stats:?}"
            );
            GATES.open(&later_gate);
            for handle in handles {
                within("the resumed tasks", handle).await.unwrap();
            }
            within("the other queue's task", elsewhere).await.unwrap();
            manager.shutdown().await;
        }
    })
}

fn a_pause_in_one_process_stops_claims_in_another() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    let (db, side) = (dir.path().join("tasks.db"), dir.path().join("runs"));
    let side_text = side.display().to_string();
    trial(async {
        // This process enqueues and pauses, but runs nothing from "shared":
        // its one async slot is held by a task of a queue only it knows.
        let here = TaskManager::builder()
            .snapshot_db(&db)
            .max_concurrent_tasks(1)
            .poll_interval(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        let busy = held::call("busy-here".into())
            .queue("only-here")
            .enqueue_on(&here)
            .unwrap();
        wait_for_status(&here, busy.id(), TaskStatus::Running).await;

        let mut other = KillOnDrop::new(
            harness::scenario("claimer")
                .env(DB, &db)
                .env(SIDE, &side)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let other_pid = other.child().id();
        let mut out = lines(other.child());
        read_until(other.child(), &mut out, "ready");

        // The other process claims from "shared". This one watches through
        // the side file and the store's counts: its own view of a task it
        // enqueued is not what this test is about.
        shared_work::call(0, side_text.clone())
            .queue("shared")
            .enqueue_on(&here)
            .unwrap();
        eventually("the other process to run the first task", || {
            runs(&side).len() == 1
        })
        .await;
        assert_eq!(runs(&side), [(0, other_pid)]);
        settle(&here, "shared").await;

        // Paused here: the other process claims nothing more from it.
        here.pause("shared").await.unwrap();
        for n in 1..=5 {
            shared_work::call(n, side_text.clone())
                .queue("shared")
                .enqueue_on(&here)
                .unwrap();
        }
        here.flush().await.unwrap();
        // Many of the other process's poll intervals.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs(&side), [(0, other_pid)], "nothing ran while paused");
        // Counted from the rows, whichever process could claim them.
        let stats = queue_stats(&here, "shared").await;
        assert_eq!(
            (stats.paused, stats.pending, stats.running),
            (true, 5, 0),
            "{stats:?}"
        );

        // Resumed here: the other process claims them.
        here.resume("shared").await.unwrap();
        eventually("the other process to run the resumed tasks", || {
            runs(&side).len() == 6
        })
        .await;
        let mut ran = runs(&side);
        ran.sort_unstable();
        let expected: Vec<(u32, u32)> = (0..=5).map(|n| (n, other_pid)).collect();
        assert_eq!(ran, expected, "each ran once, in the other process");
        settle(&here, "shared").await;
        assert!(!queue_stats(&here, "shared").await.paused);

        // Closing its stdin tells the other process to shut down.
        drop(other.child().stdin.take());
        finish(other.take());
        GATES.open("busy-here");
        within("this process's own task", busy).await.unwrap();
        here.shutdown().await;
    })?;
    drop(dir);
    Ok(())
}

/// A task this process enqueued and another process ran is seen finished
/// here, though no handle here awaits it: by `get` and `list`, by its
/// queue's `max_size` (it left this process's PENDING count), and by its
/// handle, which yields its output as for a task run here.
fn a_task_run_by_another_process_is_seen_finished_here() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    let (db, side) = (dir.path().join("tasks.db"), dir.path().join("runs"));
    let side_text = side.display().to_string();
    trial(async {
        let here = TaskManager::builder()
            .snapshot_db(&db)
            .max_concurrent_tasks(1)
            .queue("shared", QueueConfig::new().max_size(1))
            .poll_interval(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        let busy = held::call("busy-elsewhere".into())
            .queue("only-here")
            .enqueue_on(&here)
            .unwrap();
        wait_for_status(&here, busy.id(), TaskStatus::Running).await;
        let mut other = KillOnDrop::new(
            harness::scenario("claimer")
                .env(DB, &db)
                .env(SIDE, &side)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let other_pid = other.child().id();
        let mut out = lines(other.child());
        read_until(other.child(), &mut out, "ready");

        let handle = shared_work::call(0, side_text.clone())
            .queue("shared")
            .enqueue_on(&here)
            .unwrap();
        let id = handle.id();
        eventually("the other process to run it", || runs(&side).len() == 1).await;
        assert_eq!(runs(&side), [(0, other_pid)]);
        settle(&here, "shared").await;

        wait_for_status(&here, id, TaskStatus::Success).await;
        let listed = here.list(&TaskFilter::new().queue("shared")).await.unwrap();
        let statuses: Vec<TaskStatus> = listed.iter().map(|record| record.status).collect();
        assert_eq!(statuses, [TaskStatus::Success]);
        let next = shared_work::call(1, side_text.clone())
            .queue("shared")
            .enqueue_on(&here);
        assert!(next.is_ok(), "the queue holds no PENDING task: {next:?}");
        within("the handle of a task run elsewhere", handle)
            .await
            .unwrap();

        drop(other.child().stdin.take());
        finish(other.take());
        GATES.open("busy-elsewhere");
        within("this process's own task", busy).await.unwrap();
        here.shutdown().await;
    })?;
    drop(dir);
    Ok(())
}

// ---------------------------------------------------------------- scenarios

/// Runs the "shared" queue's tasks from the file until stdin closes.
async fn claimer() -> ExitCode {
    let db = PathBuf::from(std::env::var(DB).unwrap());
    let manager = TaskManager::builder()
        .snapshot_db(&db)
        .queue("shared", QueueConfig::new())
        .poll_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    println!("ready");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    });
    let _ = stdin_closed.await;
    let drained = wait_for(Duration::from_secs(5), || async {
        manager
            .list(
                &TaskFilter::new()
                    .queue("shared")
                    .status(TaskStatus::Running),
            )
            .await
            .is_ok_and(|running| running.is_empty())
    })
    .await;
    manager.shutdown().await;
    match drained {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    taskflow::init();
    if let Some(name) = scenario_name() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match name.as_str() {
            "claimer" => runtime.block_on(claimer()),
            other => {
                eprintln!("unknown scenario {other}");
                ExitCode::FAILURE
            }
        };
    }
    harness::run(vec![
        Trial::test(
            "a_queue_of_two_runs_two_while_the_default_queue_runs_ten",
            a_queue_of_two_runs_two_while_the_default_queue_runs_ten,
        ),
        Trial::test(
            "a_queues_concurrency_changes_at_run_time",
            a_queues_concurrency_changes_at_run_time,
        ),
        Trial::test(
            "a_cap_set_while_uncapped_tasks_run_admits_as_they_finish",
            a_cap_set_while_uncapped_tasks_run_admits_as_they_finish,
        ),
        Trial::test(
            "an_idle_queue_leaves_the_executor_to_a_busy_one",
            an_idle_queue_leaves_the_executor_to_a_busy_one,
        ),
        Trial::test(
            "racing_enqueues_and_releases_strand_no_task",
            racing_enqueues_and_releases_strand_no_task,
        ),
        Trial::test(
            "max_size_refuses_at_exactly_the_limit_and_records_nothing",
            max_size_refuses_at_exactly_the_limit_and_records_nothing,
        ),
        Trial::test(
            "pause_stops_admissions_and_resume_restarts_them",
            pause_stops_admissions_and_resume_restarts_them,
        ),
        Trial::test(
            "a_pause_in_one_process_stops_claims_in_another",
            a_pause_in_one_process_stops_claims_in_another,
        ),
        Trial::test(
            "a_task_run_by_another_process_is_seen_finished_here",
            a_task_run_by_another_process_is_seen_finished_here,
        ),
    ])
}
