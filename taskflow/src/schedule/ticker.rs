//! Firing schedules: one ticker task per manager.
//!
//! The ticker knows every schedule (declared in this binary, added at run
//! time here or, with a task store, by any instance sharing it) and sleeps
//! until the earliest next tick. At each wake it plans, per schedule, which
//! ticks are due ([`plan`]) and fires them:
//!
//! - **With a task store**, a fire is [`Store::fire`](crate::store::Store::fire):
//!   one insert the store makes unique on (schedule, tick), so however many
//!   instances fire the same tick, one task is written. Only the instance
//!   the store makes its upkeep leader fires (`Store::lead`, asked by the
//!   keeper each heartbeat: one instance on PostgreSQL, every instance on
//!   SQLite, whose `lead` does not elect); leadership changing hands while
//!   a tick fires costs nothing, since the insert is what decides. The
//!   fired row is then claimed like any other, by whichever instance has a
//!   slot. Each heartbeat the ticker reads the schedules back from the
//!   store: pauses, resumes and schedules added or removed elsewhere.
//! - **Without one**, a fire enqueues the task on this manager, and the
//!   ticker's own state makes it once per tick.
//!
//! **Missed ticks.** A tick no instance fired within [`ON_TIME`] of its
//! time was missed (no instance ran, or all were stalled). Per schedule,
//! `catch_up = "one"` fires the latest missed tick once, `"skip"` none;
//! either way the ticks that are on time fire, and never more than one
//! missed tick, so a schedule that was stopped a week does not storm.
//! `run_on_start` fires, when an instance starts, the latest tick at or
//! before the start if it has not fired (even one before the schedule
//! existed): replicas starting together still fire it once. Ticks a paused
//! schedule slept through are never fired: resuming moves its `since`.
//!
//! A schedule whose task this binary does not register (added by a binary
//! with more tasks) is reported once and never fired here.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskflow_worker::registry::{Registry, TaskEntry};
use taskflow_worker::{Tags, TaskId};
use tokio::sync::Notify;

use super::{CatchUp, Schedule, ScheduleEntry, ScheduleInfo, Tick};
use crate::core::{Core, Placement};
use crate::error::Error;
use crate::events::{EventKind, TaskEvent};
use crate::lifecycle::TaskStatus;
use crate::queue::DEFAULT_QUEUE;
use crate::store::{Fire, Fired, NewTask, ScheduleRow, TaskState};

/// A tick fired this long after its time is still on time; older, it was
/// missed, and `catch_up` decides.
pub(crate) const ON_TIME: Duration = Duration::from_secs(1);

/// Most ticks of one schedule fired in one wake (a period of 10 ms over
/// [`ON_TIME`] is 100).
const MOST_TICKS: usize = 128;

/// Most fires in flight at once.
const MOST_IN_FLIGHT: usize = 256;

/// How often the ticker reads the schedules back without a task store
/// (nothing changes behind its back then: only to notice shutdown).
const IDLE: Duration = Duration::from_secs(60);

/// What a schedule enqueues at each tick.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) entry: &'static TaskEntry,
    pub(crate) args: Vec<u8>,
    pub(crate) tags: Tags,
    pub(crate) queue: Option<String>,
    pub(crate) priority: Option<i16>,
}

/// One schedule as this instance knows it.
#[derive(Debug)]
struct Slot {
    /// The task, when this binary registers it.
    entry: Option<&'static TaskEntry>,
    task: String,
    schedule: Schedule,
    declared: bool,
    /// Declared by this very binary.
    ours: bool,
    catch_up: CatchUp,
    args: Vec<u8>,
    tags: Tags,
    queue: Option<String>,
    priority: Option<i16>,
    paused: bool,
    since: SystemTime,
    last_tick: Option<SystemTime>,
    last_task: Option<TaskId>,
    /// `run_on_start` has yet to be done by this instance.
    starting: bool,
}

impl Slot {
    fn row(&self, name: &str) -> ScheduleRow {
        let (spec, timezone) = self.schedule.stored();
        let mut row = ScheduleRow::new(name, self.task.clone(), spec, self.since);
        row.timezone = timezone;
        row.declared = self.declared;
        row.catch_up = self.catch_up;
        row.args.clone_from(&self.args);
        row.tags = self.tags.clone();
        row.queue.clone_from(&self.queue);
        row.priority = self.priority;
        row.paused = self.paused;
        row.last_tick = self.last_tick;
        row.last_task = self.last_task;
        row
    }

    fn info(&self, name: &str, now: SystemTime) -> ScheduleInfo {
        ScheduleInfo {
            name: name.to_owned(),
            task: self.task.clone(),
            schedule: self.schedule.clone(),
            declared: self.declared,
            paused: self.paused,
            next_fire: match self.paused {
                true => None,
                false => self.schedule.next_after(now),
            },
            last_fire: self.last_tick,
            last_task: self.last_task,
            catch_up: self.catch_up,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    slots: BTreeMap<String, Slot>,
    /// Schedules reported (unknown task, unreadable), once each.
    reported: HashSet<String>,
}

/// A manager's schedules and the ticker's wake-up.
#[derive(Debug, Default)]
pub(crate) struct Schedules {
    state: Mutex<State>,
    wake: Arc<Notify>,
    /// The ticker has started (once).
    started: AtomicBool,
}

impl Schedules {
    /// Wakes the ticker: a schedule changed, leadership came, or shutdown.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports a schedule once: its task is unknown here, or its row
    /// cannot be read.
    fn report(&self, name: &str, message: impl FnOnce() -> String) {
        if self.lock().reported.insert(name.to_owned()) {
            tracing::warn!(schedule = %name, "{}", message());
        }
    }
}

/// The schedules this binary declares.
fn declared(now: SystemTime) -> BTreeMap<String, Slot> {
    let mut slots = BTreeMap::new();
    for declared in inventory::iter::<ScheduleEntry> {
        let name = declared.entry.name();
        let schedule = match declared.schedule() {
            Ok(schedule) => schedule,
            Err(error) => {
                tracing::error!(schedule = %name, "schedule of task `{name}` cannot fire: {error}");
                continue;
            }
        };
        slots.insert(
            name.to_owned(),
            Slot {
                entry: Some(declared.entry),
                task: name.to_owned(),
                schedule,
                declared: true,
                ours: true,
                catch_up: declared.catch_up,
                args: Vec::new(),
                tags: Tags::default(),
                queue: None,
                priority: None,
                paused: false,
                since: now,
                last_tick: None,
                last_task: None,
                starting: declared.run_on_start,
            },
        );
    }
    slots
}

/// Loads the declared schedules (writing them to the task store, if any,
/// and reading back every stored one), then starts the ticker.
pub(crate) async fn start(core: &Arc<Core>) -> Result<(), Error> {
    if core.schedules.started.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let now = SystemTime::now();
    let slots = declared(now);
    if let Some(durable) = &core.durable {
        let rows: Vec<ScheduleRow> = slots.iter().map(|(name, slot)| slot.row(name)).collect();
        if !rows.is_empty() {
            durable
                .store
                .declare_schedules(rows)
                .await
                .map_err(Error::from_store)?;
        }
    }
    core.schedules.lock().slots = slots;
    if core.durable.is_some() {
        refresh(core).await.map_err(Error::from_store)?;
    }
    for slot in core.schedules.lock().slots.values() {
        if let Some(queue) = &slot.queue {
            core.scheduler.queue(queue);
        }
    }
    drop(core.runtime.spawn(ticker(Arc::downgrade(core))));
    Ok(())
}

/// Reads the schedules back from the task store: state changed by other
/// instances, schedules they added or removed.
async fn refresh(core: &Arc<Core>) -> Result<(), crate::store::StoreError> {
    let Some(durable) = &core.durable else {
        return Ok(());
    };
    let rows = durable.store.schedules().await?;
    let registry = Registry::global().ok();
    let mut missing_declared = Vec::new();
    let mut unknown = Vec::new();
    let mut unreadable = Vec::new();
    {
        let mut state = core.schedules.lock();
        let mut seen = HashSet::new();
        for row in rows {
            let row = match row {
                Ok(row) => row,
                Err(corrupt) => {
                    seen.insert(corrupt.name.clone());
                    unreadable.push((corrupt.name.clone(), corrupt.to_string()));
                    continue;
                }
            };
            seen.insert(row.name.clone());
            if let Some(slot) = state.slots.get_mut(&row.name) {
                slot.paused = row.paused;
                slot.since = row.since;
                if row.last_tick >= slot.last_tick {
                    slot.last_tick = row.last_tick;
                    slot.last_task = row.last_task;
                }
                if !slot.ours {
                    slot.catch_up = row.catch_up;
                    slot.args = row.args;
                    slot.tags = row.tags;
                    slot.queue = row.queue;
                    slot.priority = row.priority;
                }
                continue;
            }
            let schedule = match Schedule::from_stored(&row.spec, row.timezone.as_deref()) {
                Ok(schedule) => schedule,
                Err(error) => {
                    unreadable.push((row.name.clone(), error.to_string()));
                    continue;
                }
            };
            let entry = registry.and_then(|registry| registry.get(&row.task));
            if entry.is_none() {
                unknown.push((row.name.clone(), row.task.clone()));
            }
            if let Some(queue) = &row.queue {
                core.scheduler.queue(queue);
            }
            let slot = Slot {
                entry,
                task: row.task,
                schedule,
                declared: row.declared,
                ours: false,
                catch_up: row.catch_up,
                args: row.args,
                tags: row.tags,
                queue: row.queue,
                priority: row.priority,
                paused: row.paused,
                since: row.since,
                last_tick: row.last_tick,
                last_task: row.last_task,
                starting: false,
            };
            state.slots.insert(row.name, slot);
        }
        // Removed elsewhere: gone here too. One of ours missing (a store
        // made before it was declared, or emptied by hand): declared again.
        state.slots.retain(|name, slot| {
            if seen.contains(name) {
                return true;
            }
            if slot.ours {
                missing_declared.push(slot.row(name));
            }
            slot.ours
        });
    }
    for (name, task) in unknown {
        core.schedules.report(&name, || {
            format!(
                "schedule `{name}` enqueues task `{task}`, which this binary does not register; it is not fired here"
            )
        });
    }
    for (name, reason) in unreadable {
        core.schedules.report(&name, || {
            format!("schedule `{name}` cannot be read: {reason}; it is not fired here")
        });
    }
    if !missing_declared.is_empty() {
        durable.store.declare_schedules(missing_declared).await?;
    }
    Ok(())
}

/// The ticks of one schedule to fire now, in order: the latest missed one
/// (with `catch_up = "one"`), then those on time; or, at an instance's
/// start with `run_on_start`, the latest tick at or before `now` if it has
/// not fired. Each with whether it may be at or before `since`.
pub(crate) fn plan(
    schedule: &Schedule,
    catch_up: CatchUp,
    since: SystemTime,
    last_tick: Option<SystemTime>,
    now: SystemTime,
    on_start: bool,
) -> Vec<(SystemTime, bool)> {
    let mut ticks = Vec::new();
    if on_start
        && let Some(latest) = schedule.latest_at_or_before(now)
        && last_tick.is_none_or(|last| latest > last)
    {
        ticks.push((latest, true));
        return ticks;
    }
    let floor = last_tick.map_or(since, |last| last.max(since));
    let cutoff = now.checked_sub(ON_TIME).unwrap_or(UNIX_EPOCH);
    if catch_up == CatchUp::One
        && let Some(missed) = schedule.latest_at_or_before(cutoff)
        && missed > floor
    {
        ticks.push((missed, false));
    }
    let mut at = floor.max(cutoff);
    for _ in 0..MOST_TICKS {
        match schedule.next_after(at) {
            Some(next) if next <= now => {
                ticks.push((next, false));
                at = next;
            }
            _ => break,
        }
    }
    ticks
}

/// One schedule's fires of this wake.
struct Job {
    name: String,
    entry: &'static TaskEntry,
    args: Vec<u8>,
    tags: Tags,
    queue: String,
    priority: i16,
    ticks: Vec<(SystemTime, bool)>,
}

/// The ticker's task.
async fn ticker(core: Weak<Core>) {
    let mut next_refresh = tokio::time::Instant::now();
    loop {
        let Some(strong) = core.upgrade() else {
            return;
        };
        if strong.is_closed() {
            return;
        }
        let wake = strong.schedules.wake.clone();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let refresh_every = strong
            .durable
            .as_ref()
            .map_or(IDLE, |durable| durable.heartbeat());
        let durable_live = strong
            .durable
            .as_ref()
            .is_some_and(|durable| !durable.is_lost());
        if durable_live && tokio::time::Instant::now() >= next_refresh {
            next_refresh = tokio::time::Instant::now() + refresh_every;
            if let Err(error) = refresh(&strong).await
                && let Some(durable) = &strong.durable
            {
                durable.failed(&strong, None, &error);
            }
        }
        let leading = strong
            .durable
            .as_ref()
            .is_none_or(|durable| durable.is_leading() && !durable.is_lost());
        if leading {
            let jobs = due(&strong, SystemTime::now());
            if !jobs.is_empty() {
                fire_all(&strong, jobs).await;
            }
        } else {
            // `run_on_start` is the leader's at the time of the start: an
            // instance that leads later does not run it then.
            for slot in strong.schedules.lock().slots.values_mut() {
                slot.starting = false;
            }
        }
        let now = SystemTime::now();
        let next_tick = match leading {
            true => next_tick(&strong, now),
            false => None,
        };
        drop(strong);
        let until_tick = next_tick
            .map(|at| at.duration_since(now).unwrap_or_default())
            .unwrap_or(IDLE);
        // Without a store (or once it is lost) there is nothing to read back.
        let until_refresh = match durable_live {
            true => next_refresh.saturating_duration_since(tokio::time::Instant::now()),
            false => IDLE,
        };
        let wait = until_tick.min(until_refresh).min(refresh_every);
        let _ = tokio::time::timeout(wait, notified).await;
    }
}

/// The earliest next tick of a schedule that fires here.
fn next_tick(core: &Core, now: SystemTime) -> Option<SystemTime> {
    let state = core.schedules.lock();
    state
        .slots
        .values()
        .filter(|slot| !slot.paused && slot.entry.is_some())
        .filter_map(|slot| slot.schedule.next_after(now))
        .min()
}

/// What fires now, per schedule.
fn due(core: &Core, now: SystemTime) -> Vec<Job> {
    let mut state = core.schedules.lock();
    let mut jobs = Vec::new();
    for (name, slot) in state.slots.iter_mut() {
        let Some(entry) = slot.entry else {
            continue;
        };
        if slot.paused {
            slot.starting = false;
            continue;
        }
        let ticks = plan(
            &slot.schedule,
            slot.catch_up,
            slot.since,
            slot.last_tick,
            now,
            std::mem::take(&mut slot.starting),
        );
        if ticks.is_empty() {
            continue;
        }
        let defaults = entry.defaults();
        jobs.push(Job {
            name: name.clone(),
            entry,
            args: slot.args.clone(),
            tags: slot.tags.clone(),
            queue: slot
                .queue
                .clone()
                .or_else(|| defaults.queue.map(str::to_owned))
                .unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
            priority: slot.priority.unwrap_or(defaults.priority),
            ticks,
        });
    }
    jobs
}

/// What one fire did, for the slot.
enum Outcome {
    New(SystemTime, TaskId),
    Taken(SystemTime),
    Paused,
    Stale(SystemTime),
    Unknown,
    Failed,
}

/// Fires every job and brings the slots up to date. With a task store the
/// fires go in batches of whole jobs (a schedule's ticks in order: the
/// store refuses a tick at or before the last fired one), several batches
/// in flight; without one, each is an enqueue here.
async fn fire_all(core: &Arc<Core>, jobs: Vec<Job>) {
    let outcomes = match &core.durable {
        None => jobs
            .iter()
            .map(|job| {
                let done = job
                    .ticks
                    .iter()
                    .map(|&(tick, _)| enqueue(core, job, tick))
                    .collect();
                (job.name.clone(), done)
            })
            .collect(),
        Some(_) => fire_stored(core, jobs).await,
    };
    let mut fired_any = false;
    let mut state = core.schedules.lock();
    for (name, done) in outcomes {
        let mut gone = false;
        if let Some(slot) = state.slots.get_mut(&name) {
            for outcome in done {
                match outcome {
                    Outcome::New(tick, id) => {
                        fired_any = true;
                        if slot.last_tick.is_none_or(|last| tick > last) {
                            slot.last_tick = Some(tick);
                            slot.last_task = Some(id);
                        }
                    }
                    Outcome::Taken(tick) => {
                        if slot.last_tick.is_none_or(|last| tick > last) {
                            slot.last_tick = Some(tick);
                        }
                    }
                    Outcome::Paused => slot.paused = true,
                    Outcome::Stale(tick) => slot.since = slot.since.max(tick),
                    Outcome::Unknown => gone = !slot.ours,
                    Outcome::Failed => {}
                }
            }
        }
        if gone {
            state.slots.remove(&name);
        }
    }
    drop(state);
    if fired_any && core.durable.is_some() {
        core.scheduler.claimer().notify_one();
    }
}

/// Without a task store: the tick's task is enqueued here.
fn enqueue(core: &Arc<Core>, job: &Job, tick: SystemTime) -> Outcome {
    let placement = Placement {
        queue: Some(job.queue.clone()),
        priority: Some(job.priority),
        run_at: Some(tick),
        scheduled: Some(Tick::new(job.name.clone(), tick)),
    };
    match core.enqueue(
        job.entry,
        job.args.clone(),
        job.tags.clone(),
        None,
        placement,
    ) {
        Ok(cell) => Outcome::New(tick, cell.id),
        Err(error) => {
            tracing::warn!(
                schedule = %job.name,
                "schedule `{}` could not enqueue its task: {error}",
                job.name
            );
            Outcome::Failed
        }
    }
}

/// Most fires in one store call.
const FIRE_BATCH: usize = 512;

/// With a task store: each fire an insert unique on (schedule, tick).
async fn fire_stored(core: &Arc<Core>, jobs: Vec<Job>) -> Vec<(String, Vec<Outcome>)> {
    let Some(durable) = &core.durable else {
        return Vec::new();
    };
    // Batches of whole jobs; per fire, its job's place, tick and task.
    let mut batches: Vec<Vec<(usize, SystemTime, TaskId, Fire)>> = vec![Vec::new()];
    for (at, job) in jobs.iter().enumerate() {
        if batches
            .last()
            .is_some_and(|batch| batch.len() >= FIRE_BATCH)
        {
            batches.push(Vec::new());
        }
        let now = SystemTime::now();
        for &(tick, ignore_since) in &job.ticks {
            let id = TaskId::at(now);
            let mut task = NewTask::new(id, job.entry.name(), job.entry.executor(), now);
            task.queue.clone_from(&job.queue);
            task.priority = job.priority;
            task.args.clone_from(&job.args);
            task.tags = job.tags.clone();
            task.state = TaskState::pending(tick);
            let mut fire = Fire::new(job.name.clone(), tick, task);
            fire.ignore_since = ignore_since;
            if let Some(batch) = batches.last_mut() {
                batch.push((at, tick, id, fire));
            }
        }
    }
    let mut running = tokio::task::JoinSet::new();
    let mut answered = Vec::new();
    for batch in batches.into_iter().filter(|batch| !batch.is_empty()) {
        if running.len() >= MOST_IN_FLIGHT
            && let Some(Ok(done)) = running.join_next().await
        {
            answered.push(done);
        }
        let store = durable.store.clone();
        running.spawn(async move {
            let (places, fires): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|(at, tick, id, fire)| ((at, tick, id), fire))
                .unzip();
            let answer = store.fire(fires).await;
            (places, answer)
        });
    }
    while let Some(done) = running.join_next().await {
        if let Ok(done) = done {
            answered.push(done);
        }
    }
    let mut outcomes: Vec<Vec<Outcome>> = jobs.iter().map(|_| Vec::new()).collect();
    for (places, answer) in answered {
        let answers = match answer {
            Ok(answers) => {
                durable.recovered();
                answers
            }
            Err(error) => {
                durable.failed(core, None, &error);
                Vec::new()
            }
        };
        let mut answers = answers.into_iter();
        for (at, tick, id) in places {
            let job = &jobs[at];
            let outcome = match answers.next() {
                Some(Fired::New) => {
                    core.bus.publish(|| TaskEvent {
                        id,
                        name: job.entry.name(),
                        kind: EventKind::Enqueued,
                        status: TaskStatus::Pending,
                        attempt: 0,
                        at: SystemTime::now(),
                    });
                    Outcome::New(tick, id)
                }
                Some(Fired::Taken) => Outcome::Taken(tick),
                Some(Fired::Paused) => Outcome::Paused,
                Some(Fired::Stale) => Outcome::Stale(tick),
                Some(_) => Outcome::Unknown,
                None => Outcome::Failed,
            };
            outcomes[at].push(outcome);
        }
    }
    jobs.into_iter()
        .zip(outcomes)
        .map(|(job, done)| (job.name, done))
        .collect()
}

// ------------------------------------------------------------------ the API

/// Every schedule, with its next and last fire: from the task store when
/// there is one (every instance's view), else from this manager.
pub(crate) async fn list(core: &Arc<Core>) -> Result<Vec<ScheduleInfo>, Error> {
    if core.durable.is_some() {
        refresh(core).await.map_err(Error::from_store)?;
    }
    let now = SystemTime::now();
    let state = core.schedules.lock();
    Ok(state
        .slots
        .iter()
        .map(|(name, slot)| slot.info(name, now))
        .collect())
}

/// Pauses or resumes schedule `name` for every instance.
pub(crate) async fn set_paused(core: &Arc<Core>, name: &str, paused: bool) -> Result<(), Error> {
    let now = SystemTime::now();
    if let Some(durable) = &core.durable {
        let found = durable
            .store
            .set_schedule_paused(name, paused, now)
            .await
            .map_err(Error::from_store)?;
        if !found {
            return Err(Error::UnknownSchedule(name.to_owned()));
        }
    }
    {
        let mut state = core.schedules.lock();
        match state.slots.get_mut(name) {
            Some(slot) => {
                if slot.paused && !paused {
                    slot.since = slot.since.max(now);
                }
                slot.paused = paused;
            }
            // Added by another instance: the next refresh brings it.
            None if core.durable.is_some() => {}
            None => return Err(Error::UnknownSchedule(name.to_owned())),
        }
    }
    core.schedules.wake();
    Ok(())
}

/// Adds schedule `name`, enqueueing `call` at each tick.
pub(crate) async fn add(
    core: &Arc<Core>,
    name: &str,
    schedule: Schedule,
    call: Call,
    catch_up: CatchUp,
) -> Result<(), Error> {
    super::check_name(name)?;
    if core.is_closed() {
        return Err(Error::ShutDown);
    }
    if let Some(queue) = &call.queue
        && let Some(reason) = crate::queue::invalid_queue_name(queue)
    {
        return Err(Error::InvalidQueue {
            queue: queue.clone(),
            reason,
        });
    }
    let slot = Slot {
        entry: Some(call.entry),
        task: call.entry.name().to_owned(),
        schedule,
        declared: false,
        ours: false,
        catch_up,
        args: call.args,
        tags: call.tags,
        queue: call.queue,
        priority: call.priority,
        paused: false,
        since: SystemTime::now(),
        last_tick: None,
        last_task: None,
        starting: false,
    };
    if let Some(durable) = &core.durable {
        let added = durable
            .store
            .add_schedule(slot.row(name))
            .await
            .map_err(Error::from_store)?;
        if !added {
            return Err(Error::ScheduleExists(name.to_owned()));
        }
    }
    if let Some(queue) = &slot.queue {
        core.scheduler.queue(queue);
    }
    {
        let mut state = core.schedules.lock();
        if core.durable.is_none() && state.slots.contains_key(name) {
            return Err(Error::ScheduleExists(name.to_owned()));
        }
        state.slots.insert(name.to_owned(), slot);
    }
    core.schedules.wake();
    Ok(())
}

/// Removes schedule `name` (added at run time) for every instance.
pub(crate) async fn remove(core: &Arc<Core>, name: &str) -> Result<(), Error> {
    let declared_here = core
        .schedules
        .lock()
        .slots
        .get(name)
        .is_some_and(|slot| slot.declared);
    if declared_here {
        return Err(Error::ScheduleDeclared(name.to_owned()));
    }
    let removed_here = core.schedules.lock().slots.remove(name).is_some();
    let removed = match &core.durable {
        Some(durable) => durable
            .store
            .remove_schedule(name)
            .await
            .map_err(Error::from_store)?,
        None => removed_here,
    };
    match removed {
        true => Ok(()),
        false => Err(Error::UnknownSchedule(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(n)
    }

    fn ticks(plan: Vec<(SystemTime, bool)>) -> Vec<u64> {
        plan.iter()
            .map(|(t, _)| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64)
            .collect()
    }

    #[test]
    fn on_time_ticks_fire_and_fired_ones_do_not() {
        let every = Schedule::every(Duration::from_millis(200)).unwrap();
        let plan = plan(
            &every,
            CatchUp::One,
            ms(0),
            Some(ms(10_000)),
            ms(10_450),
            false,
        );
        assert_eq!(ticks(plan), [10_200, 10_400]);
        let none = super::plan(
            &every,
            CatchUp::One,
            ms(0),
            Some(ms(10_400)),
            ms(10_450),
            false,
        );
        assert!(none.is_empty());
    }

    #[test]
    fn a_long_stop_fires_one_missed_tick_or_none() {
        let every = Schedule::every(Duration::from_secs(60)).unwrap();
        let now = ms(3_600_000 + 30_000); // 1h 0m 30s
        let one = plan(&every, CatchUp::One, ms(0), Some(ms(60_000)), now, false);
        assert_eq!(ticks(one), [3_600_000]);
        let skip = plan(&every, CatchUp::Skip, ms(0), Some(ms(60_000)), now, false);
        assert!(skip.is_empty());
        // Ticks before `since` (created or resumed then) never fire.
        let resumed = plan(
            &every,
            CatchUp::One,
            ms(3_600_000),
            Some(ms(60_000)),
            now,
            false,
        );
        assert!(resumed.is_empty());
    }

    #[test]
    fn run_on_start_fires_the_current_period_once() {
        let every = Schedule::every(Duration::from_secs(60)).unwrap();
        let now = ms(150_000);
        let first = plan(&every, CatchUp::Skip, now, None, now, true);
        assert_eq!(first, [(ms(120_000), true)]);
        let fired = plan(&every, CatchUp::Skip, now, Some(ms(120_000)), now, true);
        assert!(fired.is_empty());
    }
}
