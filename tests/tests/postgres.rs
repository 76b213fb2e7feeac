//! The PostgreSQL task store, for real, against the server named by
//! `TASKFLOW_TEST_POSTGRES_URL`: what `build` says when the server, the
//! user, the database or the schema is wrong; migrations when hosts start
//! at once; the upkeep lease; the transactional enqueue; a manager running
//! async, thread and process tasks with its whole query API; two hosts
//! sharing a burst, each counting what it ran; an application's pool;
//! connections the server kills.
//!
//! Like `process.rs`, this binary enters worker mode first and runs its
//! tests with libtest-mimic, one at a time. Each test works in a schema of
//! its own, dropped at its end. Without a server each test that needs one
//! prints that it is skipped (and fails instead under
//! `TASKFLOW_REQUIRE_POSTGRES=1`).

// These are tests without `#[test]` (libtest-mimic trials): a panic is how
// they report a failure, as in any test.
#![allow(clippy::unwrap_used)]

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use taskflow::store::{InstanceInfo, NewTask, PostgresConfig, PostgresStore, Store, StoreError};
use taskflow::{Error, Executor, TaskFilter, TaskId, TaskManager, TaskStatus, task};
use taskflow_tests::harness::{self, trial};
use taskflow_tests::postgres::{self, Schema, connect};
use taskflow_tests::{PATIENCE, wait_for, wait_for_status, within};

// ---------------------------------------------------------------- the tasks

#[task]
async fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[task]
fn shout(text: String) -> String {
    text.to_uppercase()
}

#[task(executor = "process")]
fn square(n: u64) -> u64 {
    n * n
}

#[task]
async fn wait_ms(millis: u64) {
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// Fails while `FLAKY` is zero, then succeeds.
static FLAKY: AtomicU32 = AtomicU32::new(0);

#[task]
async fn flaky() -> Result<u32, String> {
    match FLAKY.load(Ordering::SeqCst) {
        0 => Err("not yet".to_owned()),
        n => Ok(n),
    }
}

/// The numbers `outbox` bodies ran with.
static OUTBOX: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[task(queue = "outbox")]
async fn outbox(n: u64) {
    OUTBOX.lock().unwrap().push(n);
}

fn outbox_runs() -> Vec<u64> {
    OUTBOX.lock().unwrap().clone()
}

// ---------------------------------------------------------------- helpers

/// A manager on `schema`. Its poll interval is long: what it runs soon
/// after another host (or a transaction) queued it, it learned of by
/// notification.
async fn manager(url: &str, schema: &Schema) -> TaskManager {
    TaskManager::builder()
        .postgres(PostgresConfig::new(url).schema(schema.name()).pool_size(4))
        .poll_interval(Duration::from_secs(3600))
        .lease(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

/// `url` with its user, database or options replaced.
fn with(url: &str, user: Option<&str>, database: Option<&str>) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = user.or(config.get_user()).unwrap_or("postgres");
    let database = database.or(config.get_dbname()).unwrap_or("postgres");
    format!("postgres://{user}@{host}:{port}/{database}")
}

// ------------------------------------------------------------- bad starts

fn an_unreachable_server_is_a_clear_error() -> Result<(), Failed> {
    trial(async {
        // Nothing listens on port 1 of this machine.
        let url = "postgres://postgres@127.0.0.1:1/test";
        let error = TaskManager::builder()
            .postgres(PostgresConfig::new(url).connect_timeout(Duration::from_secs(5)))
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::DatabaseUnreachable { server, .. } if server == "127.0.0.1:1/test"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "cannot reach the PostgreSQL server at 127.0.0.1:1/test"
        );
    })
}

fn wrong_credentials_are_a_clear_error() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("wrong_credentials_are_a_clear_error").await else {
            return;
        };
        let stranger = with(&url, Some("taskflow_no_such_user"), None);
        let error = TaskManager::builder()
            .postgres(stranger.as_str())
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::DatabaseAuth { user, .. } if user == "taskflow_no_such_user"),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("refused user `taskflow_no_such_user`"),
            "{error}"
        );
    })
}

fn a_missing_database_is_a_clear_error() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("a_missing_database_is_a_clear_error").await else {
            return;
        };
        let nowhere = with(&url, None, Some("taskflow_no_such_database"));
        let error = TaskManager::builder()
            .postgres(nowhere.as_str())
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::DatabaseMissing { database, .. } if database == "taskflow_no_such_database"),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("database `taskflow_no_such_database` does not exist"),
            "{error}"
        );
    })
}

fn a_schema_from_a_newer_taskflow_is_refused() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("a_schema_from_a_newer_taskflow_is_refused").await else {
            return;
        };
        let schema = Schema::new(&url, "too_new").await;
        let config = || PostgresConfig::new(url.as_str()).schema(schema.name());
        drop(PostgresStore::open(config()).await.unwrap());
        schema
            .execute(&format!(
                "INSERT INTO \"{}\".schema_migrations (version) VALUES (99)",
                schema.name()
            ))
            .await;
        let error = PostgresStore::open(config()).await.unwrap_err();
        assert!(
            matches!(&error, Error::DatabaseSchemaTooNew { found: 99, supported, schema: name, .. }
                if *supported < 99 && name == schema.name()),
            "{error:?}"
        );
        assert!(error.to_string().contains("upgrade taskflow"), "{error}");
        let error = TaskManager::builder()
            .postgres(config())
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::DatabaseSchemaTooNew { .. }),
            "{error:?}"
        );
        // Refused before anything changed: its tables are still there.
        let tables = schema
            .query(&format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{}'",
                schema.name()
            ))
            .await;
        assert!(tables[0].get::<_, i64>(0) >= 6);
    })
}

fn hosts_starting_at_once_migrate_once() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("hosts_starting_at_once_migrate_once").await else {
            return;
        };
        let schema = Schema::new(&url, "migrate_once").await;
        let open = || {
            let config = PostgresConfig::new(url.as_str())
                .schema(schema.name())
                .pool_size(1);
            tokio::spawn(PostgresStore::open(config))
        };
        let starts = [open(), open(), open(), open()];
        let mut stores = Vec::new();
        for start in starts {
            stores.push(within("a store to open", start).await.unwrap().unwrap());
        }
        let applied = schema
            .query(&format!(
                "SELECT version, count(*) FROM \"{}\".schema_migrations GROUP BY version ORDER BY version",
                schema.name()
            ))
            .await;
        let versions: Vec<(i32, i64)> =
            applied.iter().map(|row| (row.get(0), row.get(1))).collect();
        let once: Vec<(i32, i64)> = (1..=versions.len() as i32).map(|v| (v, 1)).collect();
        assert!(
            versions.len() >= 2,
            "every migration is applied: {versions:?}"
        );
        assert_eq!(versions, once, "each migration is applied once");
        // And all four work on the one schema.
        let now = std::time::SystemTime::now();
        let task = NewTask::new(TaskId::at(now), "postgres::add", Executor::Async, now);
        stores[0].insert(vec![task.clone()]).await.unwrap();
        for store in &stores {
            assert!(store.get(task.id).await.unwrap().is_some());
        }
    })
}

fn an_invalid_schema_name_is_refused() -> Result<(), Failed> {
    trial(async {
        let error = PostgresStore::open(
            PostgresConfig::new("postgres://postgres@127.0.0.1:1/test").schema("Tasks; DROP"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidOption {
                    option: "postgres schema",
                    ..
                }
            ),
            "{error:?}"
        );
    })
}

// ---------------------------------------------------------------- upkeep

fn one_instance_at_a_time_does_the_upkeep() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("one_instance_at_a_time_does_the_upkeep").await else {
            return;
        };
        let schema = Schema::new(&url, "upkeep").await;
        let config = || PostgresConfig::new(url.as_str()).schema(schema.name());
        let a = PostgresStore::open(config()).await.unwrap();
        let b = PostgresStore::open(config()).await.unwrap();
        let long = Duration::from_secs(3600);
        assert!(a.lead("a", long).await.unwrap(), "the first asks, leads");
        assert!(!b.lead("b", long).await.unwrap(), "another does not");
        assert!(a.lead("a", long).await.unwrap(), "the leader keeps it");
        // A graceful stop hands it over at once.
        a.retire("a").await.unwrap();
        assert!(b.lead("b", Duration::from_millis(200)).await.unwrap());
        assert!(!a.lead("a", long).await.unwrap());
        // A leader that stops renewing loses it once its lease lapses, by
        // the server's clock.
        assert!(
            wait_for(PATIENCE, || async { a.lead("a", long).await.unwrap() }).await,
            "the upkeep passes on when its holder's lease lapses"
        );
        assert!(!b.lead("b", long).await.unwrap());
    })
}

fn only_the_leader_rescues_a_dead_instances_tasks() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("only_the_leader_rescues_a_dead_instances_tasks").await
        else {
            return;
        };
        let schema = Schema::new(&url, "rescue").await;
        let store = PostgresStore::open(PostgresConfig::new(url.as_str()).schema(schema.name()))
            .await
            .unwrap();
        // An instance that claimed a task and died: its lease lapses at
        // once, by the server's clock.
        let dead = InstanceInfo::new("dead-host", 1, "gone");
        store
            .heartbeat(&dead, Duration::from_millis(1))
            .await
            .unwrap();
        let now = std::time::SystemTime::now();
        let mut orphan = NewTask::new(TaskId::at(now), wait_ms::NAME, Executor::Async, now);
        orphan.state.status = TaskStatus::Running;
        orphan.state.attempts = 1;
        orphan.state.started_at = Some(now);
        orphan.state.owner = Some(dead.id.clone());
        store.insert(vec![orphan.clone()]).await.unwrap();
        // Another instance does the upkeep for now.
        assert!(
            store
                .lead("keeper", Duration::from_secs(3600))
                .await
                .unwrap()
        );

        let tasks = TaskManager::builder()
            .postgres(PostgresConfig::new(url.as_str()).schema(schema.name()))
            .lease(Duration::from_millis(250))
            .build()
            .await
            .unwrap();
        // Many keeper rounds (one per 50 ms): none rescues, not leading.
        tokio::time::sleep(Duration::from_millis(750)).await;
        let record = tasks.get(orphan.id).await.unwrap().unwrap();
        assert_eq!(
            record.status,
            TaskStatus::Running,
            "an instance that does not lead leaves the orphan to the one that does"
        );
        // The leader stops: this instance takes over the upkeep, and rescues.
        store.retire("keeper").await.unwrap();
        let record = wait_for_status(&tasks, orphan.id, TaskStatus::Interrupted).await;
        assert_eq!(
            record.last_error.map(|e| e.kind()),
            Some(taskflow::ErrorKind::Interrupted)
        );
        tasks.shutdown().await;
    })
}

fn leases_follow_the_servers_clock() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("leases_follow_the_servers_clock").await else {
            return;
        };
        let schema = Schema::new(&url, "leases").await;
        let store = PostgresStore::open(PostgresConfig::new(url.as_str()).schema(schema.name()))
            .await
            .unwrap();
        let me = InstanceInfo::new("leases-me", 1, "here");
        store
            .heartbeat(&me, Duration::from_secs(3600))
            .await
            .unwrap();
        let until: std::time::SystemTime = schema
            .query(&format!(
                "SELECT lease_until FROM \"{}\".instances WHERE id = 'leases-me'",
                schema.name()
            ))
            .await[0]
            .get(0);
        let now: std::time::SystemTime = schema.query("SELECT now()").await[0].get(0);
        let ahead = until.duration_since(now).unwrap();
        assert!(
            ahead > Duration::from_secs(3000) && ahead <= Duration::from_secs(3600),
            "the lease runs an hour past the server's now: {ahead:?}"
        );
    })
}

// ------------------------------------------------------ transactional enqueue

fn a_committed_enqueue_runs_and_a_rolled_back_one_never_exists() -> Result<(), Failed> {
    trial(async {
        let Some(url) =
            postgres::server("a_committed_enqueue_runs_and_a_rolled_back_one_never_exists").await
        else {
            return;
        };
        let schema = Schema::new(&url, "outbox").await;
        let tasks = manager(&url, &schema).await;
        let mut client = connect(&url).await;
        client
            .batch_execute(&format!(
                "CREATE TABLE \"{}\".orders (id bigint PRIMARY KEY, paid boolean NOT NULL)",
                schema.name()
            ))
            .await
            .unwrap();
        let insert_order = format!(
            "INSERT INTO \"{}\".orders (id, paid) VALUES ($1, true)",
            schema.name()
        );

        // Rolled back: neither the order nor the task exists.
        let transaction = client.transaction().await.unwrap();
        transaction.execute(&insert_order, &[&1_i64]).await.unwrap();
        let lost = outbox::call(1)
            .enqueue_in_schema(&transaction, schema.name())
            .await
            .unwrap();
        transaction.rollback().await.unwrap();

        // Committed: both exist, and the idle manager (polling hourly)
        // runs the task, woken by the commit's notification.
        let transaction = client.transaction().await.unwrap();
        transaction.execute(&insert_order, &[&2_i64]).await.unwrap();
        let kept = outbox::call(2)
            .enqueue_in_schema(&transaction, schema.name())
            .await
            .unwrap();
        // Not visible to anyone before the commit.
        assert!(tasks.get(kept).await.unwrap().is_none());
        transaction.commit().await.unwrap();
        let done = wait_for_status(&tasks, kept, TaskStatus::Success).await;
        assert_eq!(done.name, outbox::NAME);
        assert_eq!(done.queue, "outbox", "the declared queue is kept");

        // Queued after the rolled-back one, in the same queue, and run:
        // the rolled-back one never ran, and does not exist.
        assert_eq!(outbox_runs(), [2]);
        assert!(tasks.get(lost).await.unwrap().is_none());
        let listed = tasks
            .list(&TaskFilter::new().name(outbox::NAME))
            .await
            .unwrap();
        assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [kept]);

        // A key already held answers its holder, and writes nothing.
        let transaction = client.transaction().await.unwrap();
        let first = outbox::call(3)
            .idempotency_key("order-3")
            .enqueue_in_schema(&transaction, schema.name())
            .await
            .unwrap();
        let again = outbox::call(3)
            .idempotency_key("order-3")
            .enqueue_in_schema(&transaction, schema.name())
            .await
            .unwrap();
        assert_eq!(first, again);
        transaction.commit().await.unwrap();
        wait_for_status(&tasks, first, TaskStatus::Success).await;
        assert_eq!(outbox_runs(), [2, 3]);
        tasks.shutdown().await;
    })
}

/// A row the store says a live host runs, though it never started it (a
/// claim that committed but whose answer was lost with its connection):
/// the host finds it, puts it back and runs it, once, as a first attempt.
fn a_claim_whose_answer_was_lost_is_run_after_all() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("a_claim_whose_answer_was_lost_is_run_after_all").await
        else {
            return;
        };
        let schema = Schema::new(&url, "stray").await;
        let tasks = manager(&url, &schema).await;
        let mut client = connect(&url).await;
        let transaction = client.transaction().await.unwrap();
        let id = add::call(20, 22)
            .delay(Duration::from_secs(3600))
            .enqueue_in_schema(&transaction, schema.name())
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        // Claimed for the host as a lost answer leaves it: RUNNING under
        // its owner, the attempt counted, due now.
        let claimed = client
            .execute(
                &format!(
                    "UPDATE \"{s}\".tasks SET status = 'RUNNING', \
                     owner = (SELECT id FROM \"{s}\".instances), attempts = attempts + 1, \
                     started_at = now(), run_at = now() WHERE status = 'PENDING'",
                    s = schema.name()
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(claimed, 1);
        let record = wait_for_status(&tasks, id, TaskStatus::Success).await;
        assert_eq!(record.attempts, 1, "{record:?}");
        tasks.shutdown().await;
    })
}

// ------------------------------------------------------------- the manager

fn a_manager_runs_every_executor_and_answers_every_query() -> Result<(), Failed> {
    trial(async {
        let Some(url) =
            postgres::server("a_manager_runs_every_executor_and_answers_every_query").await
        else {
            return;
        };
        let schema = Schema::new(&url, "manager").await;
        let tasks = TaskManager::builder()
            .postgres(
                PostgresConfig::new(url.as_str())
                    .schema(schema.name())
                    .pool_size(4),
            )
            .max_process_workers(1)
            .lease(Duration::from_secs(2))
            .build()
            .await
            .unwrap();

        // Each executor, for real.
        let sum = add::call(2, 3).enqueue_on(&tasks).unwrap();
        let loud = shout::call("hi".into()).enqueue_on(&tasks).unwrap();
        let squared = square::call(12).enqueue_on(&tasks).unwrap();
        let (sum_id, squared_id) = (sum.id(), squared.id());
        assert_eq!(within("add", sum).await.unwrap(), 5);
        assert_eq!(within("shout", loud).await.unwrap(), "HI");
        assert_eq!(within("square", squared).await.unwrap(), 144);
        tasks.flush().await.unwrap();

        // get and list reach the store.
        let record = tasks.get(squared_id).await.unwrap().unwrap();
        assert_eq!(
            (record.status, record.executor, record.attempts),
            (TaskStatus::Success, Executor::Process, 1)
        );
        let listed = tasks
            .list(&TaskFilter::new().status(TaskStatus::Success))
            .await
            .unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(
            listed.last().map(|r| r.id),
            Some(sum_id),
            "newest first: the first enqueued is last"
        );

        // cancel: a delayed task never runs.
        let later = wait_ms::call(1)
            .delay(Duration::from_secs(3600))
            .enqueue_on(&tasks)
            .unwrap();
        later.persisted().await.unwrap();
        tasks.cancel(later.id()).await.unwrap();
        wait_for_status(&tasks, later.id(), TaskStatus::Cancelled).await;

        // retry: a failed task runs again as a new one.
        let failed = flaky::call().enqueue_on(&tasks).unwrap();
        let failed_id = failed.id();
        assert!(within("flaky", failed).await.is_err());
        wait_for_status(&tasks, failed_id, TaskStatus::Failed).await;
        FLAKY.store(7, Ordering::SeqCst);
        let retried = tasks.retry(failed_id).await.unwrap();
        let record = wait_for_status(&tasks, retried, TaskStatus::Success).await;
        assert_ne!(record.id, failed_id);
        assert_eq!(
            record.retry_of(),
            Some(failed_id),
            "the copy records its origin"
        );

        // pause and resume, seen in queue_stats.
        tasks.pause("slow").await.unwrap();
        let held = wait_ms::call(1).queue("slow").enqueue_on(&tasks).unwrap();
        held.persisted().await.unwrap();
        let stats = tasks.queue_stats().await.unwrap();
        let slow = stats.iter().find(|q| q.name == "slow").unwrap();
        assert_eq!((slow.paused, slow.pending, slow.running), (true, 1, 0));
        assert_eq!(
            tasks.get(held.id()).await.unwrap().unwrap().status,
            TaskStatus::Pending,
            "a paused queue's task waits"
        );
        tasks.resume("slow").await.unwrap();
        within("the resumed task", held).await.unwrap();
        tasks.flush().await.unwrap();
        let stats = tasks.queue_stats().await.unwrap();
        let slow = stats.iter().find(|q| q.name == "slow").unwrap();
        assert_eq!((slow.paused, slow.pending, slow.running), (false, 0, 0));
        tasks.shutdown().await;
    })
}

fn a_second_host_runs_what_the_first_queued() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("a_second_host_runs_what_the_first_queued").await else {
            return;
        };
        let schema = Schema::new(&url, "two_hosts").await;
        // Both poll hourly: what they learn of each other, they learn by
        // notification.
        let busy = TaskManager::builder()
            .postgres(
                PostgresConfig::new(url.as_str())
                    .schema(schema.name())
                    .pool_size(2),
            )
            .max_concurrent_tasks(1)
            .poll_interval(Duration::from_secs(3600))
            .lease(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        // The busy host's one slot is taken (before the other host starts,
        // so it takes the blocker itself), so what it queues next waits in
        // the store, and the idle host starts it once notified.
        let blocker = wait_ms::call(60_000).enqueue_on(&busy).unwrap();
        wait_for_status(&busy, blocker.id(), TaskStatus::Running).await;
        let idle = manager(&url, &schema).await;
        let plain = add::call(1, 2).enqueue_on(&busy).unwrap();
        // Keyed, so its output is stored and reaches a handle elsewhere
        // (and enqueued through the store at once: the synchronous keyed
        // insert waits on the store's own thread).
        let keyed = add::call(20, 22)
            .idempotency_key("answer")
            .enqueue_on(&busy)
            .unwrap();
        // The idle host runs both; the busy host's handle follows its
        // task to the end, woken by the other host's notification.
        assert_eq!(within("a task another host ran", keyed).await.unwrap(), 42);
        wait_for_status(&idle, plain.id(), TaskStatus::Success).await;
        let record = idle.get(plain.id()).await.unwrap().unwrap();
        assert_eq!(record.attempts, 1);
        assert_eq!(
            busy.get(blocker.id()).await.unwrap().unwrap().status,
            TaskStatus::Running,
            "the busy host was busy all along"
        );
        busy.cancel(blocker.id()).await.unwrap();
        busy.shutdown().await;
        idle.shutdown().await;
    })
}

fn hosts_count_every_task_they_ran() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("hosts_count_every_task_they_ran").await else {
            return;
        };
        let schema = Schema::new(&url, "counts").await;
        const TASKS: u64 = 20_000;
        let host = |slots: usize| {
            TaskManager::builder()
                .postgres(
                    PostgresConfig::new(url.as_str())
                        .schema(schema.name())
                        .pool_size(4),
                )
                .max_concurrent_tasks(slots)
                .poll_interval(Duration::from_millis(50))
                .lease(Duration::from_secs(2))
                .build()
        };
        // The other host first, so the enqueuing host knows from its start
        // that its tasks may run elsewhere, and follows them.
        let other = host(1_000).await.unwrap();
        let enqueuer = host(256).await.unwrap();
        // Fewer slots here than tasks, so most wait in the store, where
        // both hosts claim them in batches, while the enqueuing host
        // follows the tasks its handles await, including those it has just
        // claimed itself: those it runs, it must count as its own.
        let handles: Vec<_> = (0..TASKS)
            .map(|n| add::call(n, 1).enqueue_on(&enqueuer).unwrap())
            .collect();
        for (n, handle) in handles.into_iter().enumerate() {
            assert_eq!(
                within("a task's handle", handle).await.unwrap(),
                n as u64 + 1
            );
        }
        let burned_down = || async {
            let stats = enqueuer.queue_stats().await.unwrap();
            stats
                .iter()
                .all(|queue| queue.pending == 0 && queue.running == 0)
        };
        assert!(wait_for(PATIENCE, burned_down).await, "tasks were left");
        enqueuer.flush().await.unwrap();
        other.flush().await.unwrap();
        let (here, there) = (enqueuer.metrics(), other.metrics());
        assert_eq!(
            here.success + there.success,
            TASKS,
            "each host counts the tasks it ran, and only those: {here:?} here, {there:?} there"
        );
        assert_eq!(
            here.pending + here.running + there.pending + there.running,
            0
        );
        let stored = schema
            .query(&format!(
                "SELECT count(*) FROM \"{}\".tasks WHERE status = 'SUCCESS' AND attempts = 1",
                schema.name()
            ))
            .await;
        assert_eq!(stored[0].get::<_, i64>(0), TASKS as i64, "each ran once");
        enqueuer.shutdown().await;
        other.shutdown().await;
    })
}

fn an_applications_pool_works_without_listening() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("an_applications_pool_works_without_listening").await
        else {
            return;
        };
        let schema = Schema::new(&url, "app_pool").await;
        let config: tokio_postgres::Config = url.parse().unwrap();
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(2)
            .build()
            .unwrap();
        let store =
            PostgresStore::open(PostgresConfig::with_pool(pool.clone()).schema(schema.name()))
                .await
                .unwrap();
        assert!(
            store.notifications().is_none(),
            "a pool alone cannot listen"
        );
        drop(store);
        let tasks = TaskManager::builder()
            .postgres(PostgresConfig::with_pool(pool).schema(schema.name()))
            .poll_interval(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        let sum = add::call(1, 1).enqueue_on(&tasks).unwrap();
        assert_eq!(within("add", sum).await.unwrap(), 2);
        tasks.shutdown().await;

        // Listening off with a connection string: polling still finds work.
        let quiet = PostgresConfig::new(url.as_str())
            .schema(schema.name())
            .listen(false);
        let store = PostgresStore::open(quiet.clone()).await.unwrap();
        assert!(store.notifications().is_none());
        let tasks = TaskManager::builder()
            .postgres(quiet)
            .poll_interval(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        let sum = add::call(2, 2).enqueue_on(&tasks).unwrap();
        assert_eq!(within("add", sum).await.unwrap(), 4);
        tasks.shutdown().await;
    })
}

fn connections_the_server_kills_are_replaced() -> Result<(), Failed> {
    trial(async {
        let Some(url) = postgres::server("connections_the_server_kills_are_replaced").await else {
            return;
        };
        let schema = Schema::new(&url, "terminated").await;
        // Its connections are told apart from others' by their name.
        let application = format!("taskflow_{}", schema.name());
        let separator = if url.contains('?') { '&' } else { '?' };
        let tagged = format!("{url}{separator}application_name={application}");
        let store = PostgresStore::open(
            PostgresConfig::new(tagged)
                .schema(schema.name())
                .pool_size(2),
        )
        .await
        .unwrap();
        store.queues().await.unwrap();
        let wake = store.notifications().unwrap();
        // The wake-up a listener gives once it listens.
        within("the listener to listen", wake.ready.notified()).await;
        let killed = schema
            .query(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{application}'"
            ))
            .await;
        assert!(!killed.is_empty(), "the store had connections to kill");
        // A call may fail while the pool finds its connection dead, and
        // says what it was doing; the store is usable again soon after.
        let deadline = Instant::now() + PATIENCE;
        loop {
            match store.queues().await {
                Ok(_) => break,
                Err(error) => {
                    assert!(
                        matches!(&error, StoreError::Backend { context, .. } if context == "cannot read queues"),
                        "{error:?}"
                    );
                    assert!(Instant::now() < deadline, "the store never reconnected");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        // The listening connection comes back too, and says so (what was
        // sent while it was away is lost: the claimer looks).
        within(
            "a wake-up after the listener reconnects",
            wake.ready.notified(),
        )
        .await;
    })
}

fn main() -> ExitCode {
    taskflow::init();
    let trials = vec![
        Trial::test(
            "a_claim_whose_answer_was_lost_is_run_after_all",
            a_claim_whose_answer_was_lost_is_run_after_all,
        ),
        Trial::test(
            "an_unreachable_server_is_a_clear_error",
            an_unreachable_server_is_a_clear_error,
        ),
        Trial::test(
            "wrong_credentials_are_a_clear_error",
            wrong_credentials_are_a_clear_error,
        ),
        Trial::test(
            "a_missing_database_is_a_clear_error",
            a_missing_database_is_a_clear_error,
        ),
        Trial::test(
            "a_schema_from_a_newer_taskflow_is_refused",
            a_schema_from_a_newer_taskflow_is_refused,
        ),
        Trial::test(
            "hosts_starting_at_once_migrate_once",
            hosts_starting_at_once_migrate_once,
        ),
        Trial::test(
            "an_invalid_schema_name_is_refused",
            an_invalid_schema_name_is_refused,
        ),
        Trial::test(
            "one_instance_at_a_time_does_the_upkeep",
            one_instance_at_a_time_does_the_upkeep,
        ),
        Trial::test(
            "only_the_leader_rescues_a_dead_instances_tasks",
            only_the_leader_rescues_a_dead_instances_tasks,
        ),
        Trial::test(
            "leases_follow_the_servers_clock",
            leases_follow_the_servers_clock,
        ),
        Trial::test(
            "a_committed_enqueue_runs_and_a_rolled_back_one_never_exists",
            a_committed_enqueue_runs_and_a_rolled_back_one_never_exists,
        ),
        Trial::test(
            "a_manager_runs_every_executor_and_answers_every_query",
            a_manager_runs_every_executor_and_answers_every_query,
        ),
        Trial::test(
            "a_second_host_runs_what_the_first_queued",
            a_second_host_runs_what_the_first_queued,
        ),
        Trial::test(
            "hosts_count_every_task_they_ran",
            hosts_count_every_task_they_ran,
        ),
        Trial::test(
            "an_applications_pool_works_without_listening",
            an_applications_pool_works_without_listening,
        ),
        Trial::test(
            "connections_the_server_kills_are_replaced",
            connections_the_server_kills_are_replaced,
        ),
    ];
    harness::run(trials)
}
