//! Schedules: when a recurring task fires.
//!
//! A [`Schedule`] is either a fixed period (`every = "5m"`) or a cron
//! expression read in a time zone (`cron = "0 9 * * MON-FRI", timezone =
//! "Europe/Paris"`). It answers one question, the tick after a given
//! instant ([`Schedule::next_after`]), and the firing code (see
//! [`ticker`]) builds everything else on it: catch-up after a stop,
//! exactly one task per tick across processes, pause and resume.
//!
//! **Ticks are instants every process computes alike.** A tick is the
//! identity of a fire: the store makes the insert of a tick's task unique
//! on (schedule, tick), so two processes (or hosts) firing the same tick
//! write one task. For that they must agree on the tick times without
//! talking: a period is aligned on the Unix epoch (`every = "5m"` ticks at
//! :00, :05, … whenever each process started), and a cron expression is
//! read in its named time zone with a time-zone database built into the
//! binary (never the host's, which may differ or be missing).
//!
//! **Daylight saving.** A cron expression names wall-clock times, and on
//! the two days a year the clock jumps, some wall-clock times do not exist
//! and some happen twice. The rule (OCPS, Vixie cron's, and `croner`'s):
//! a job at a fixed time that falls in a spring-forward gap runs once, at
//! the first instant after the gap (02:30 → 03:00 on that day); a
//! fixed-time job in a repeated hour runs once, at its first occurrence;
//! an interval job (`*/15 * * * *`, `0 * * * *`) runs at every real
//! instant that matches, so an hourly job runs on both 02:00s of a
//! fall-back night. `tests/tests/schedule_times.rs` holds a hand-written table
//! of both 2026 transitions in Europe/Paris and America/New_York.
//!
//! **Why `croner`.** The cron arithmetic sits behind this module's own
//! type, so the crate can be swapped without an API change. `croner` is
//! the one kept up that does the three things a schedule needs: time
//! zones through `jiff` (a zone's rules as data, with explicit handling of
//! gaps and folds, which `croner`'s own DST tests cover), POSIX/Vixie
//! semantics for day-of-month with day-of-week (the `cron` crate uses
//! Quartz's, where `MON-FRI` and a day of month cannot be combined the way
//! crontab users expect), and parsing that needs no time library, so the
//! `#[task]` macro validates expressions at compile time with the very
//! parser the runtime uses. `saffron` has no time zones; `cron` has them
//! only through `chrono-tz` and no DST rule of its own.

pub(crate) mod ticker;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskflow_worker::TaskId;
use taskflow_worker::registry::TaskEntry;

/// The shortest period `every` accepts.
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(10);

/// When a recurring task fires: every fixed period, or on a cron
/// expression in a time zone.
///
/// Every process computes the same ticks: a period is aligned on the Unix
/// epoch, and a cron expression is read in its IANA time zone with the tz
/// database built into the binary. On the days the clock jumps, a job at a
/// fixed time that falls in the spring-forward gap runs once, at the first
/// instant after it (02:30 → 03:00); one in the repeated hour of a
/// fall-back night runs once, at its first occurrence; an interval job
/// (`*/15 * * * *`, `0 * * * *`) runs at every real instant that matches.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use taskflow::Schedule;
///
/// let five = Schedule::every(Duration::from_secs(300))?;
/// let t = UNIX_EPOCH + Duration::from_secs(1_000);
/// assert_eq!(five.next_after(t), Some(UNIX_EPOCH + Duration::from_secs(1_200)));
///
/// let weekdays = Schedule::cron_in("0 9 * * MON-FRI", "Europe/Paris")?;
/// assert_eq!(weekdays.to_string(), "cron `0 9 * * MON-FRI` in Europe/Paris");
/// assert!(weekdays.next_after(SystemTime::now()).is_some());
///
/// let error = Schedule::cron_in("0 9 * * MON-FRI", "Europe/Pariss").unwrap_err();
/// assert_eq!(error.field(), "timezone");
/// # Ok::<(), taskflow::ScheduleError>(())
/// ```
#[derive(Clone)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// Ticks at every multiple of the period since the Unix epoch.
    Every(Duration),
    Cron {
        expression: String,
        cron: Box<croner::Cron>,
        zone: jiff::tz::TimeZone,
        zone_name: String,
    },
}

impl Schedule {
    /// A tick every `period`, aligned on the Unix epoch, so every process
    /// computes the same ticks (`every(5 min)` fires at :00, :05, … UTC).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidEvery`] for a period under 10 ms or
    /// not a whole number of milliseconds.
    pub fn every(period: Duration) -> Result<Self, ScheduleError> {
        let invalid = |reason: &str| ScheduleError::InvalidEvery {
            value: humantime::format_duration(period).to_string(),
            reason: reason.to_owned(),
        };
        if period < MIN_PERIOD {
            return Err(invalid("it must be at least 10ms"));
        }
        if !period.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(invalid("it must be a whole number of milliseconds"));
        }
        Ok(Schedule {
            kind: Kind::Every(period),
        })
    }

    /// A tick every period written as `"200ms"`, `"5m"` or `"1h 30m"` (see
    /// [`every`](Self::every)).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidEvery`] for text that is not a duration, or
    /// a period [`every`](Self::every) refuses.
    pub fn parse_every(text: &str) -> Result<Self, ScheduleError> {
        let period =
            humantime::parse_duration(text).map_err(|error| ScheduleError::InvalidEvery {
                value: text.to_owned(),
                reason: error.to_string(),
            })?;
        Self::every(period)
    }

    /// A cron expression in UTC: five fields (minute, hour, day of month,
    /// month, day of week) or six with seconds first, names (`MON-FRI`,
    /// `JAN`) and nicknames (`@daily`) included.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidCron`] for an expression that does not parse.
    pub fn cron(expression: &str) -> Result<Self, ScheduleError> {
        Self::cron_in(expression, "UTC")
    }

    /// A cron expression read in the IANA time zone `timezone`
    /// (`"Europe/Paris"`, `"America/New_York"`), daylight saving included:
    /// see [`Schedule`] for the rule on the days the clock jumps.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidCron`] for an expression that does not parse,
    /// [`ScheduleError::UnknownTimeZone`] for a zone the built-in database
    /// does not know.
    pub fn cron_in(expression: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let cron = parse_cron(expression)?;
        let zone = jiff::tz::db()
            .get(timezone)
            .map_err(|_| ScheduleError::UnknownTimeZone {
                name: timezone.to_owned(),
            })?;
        let zone_name = zone.iana_name().unwrap_or(timezone).to_owned();
        Ok(Schedule {
            kind: Kind::Cron {
                expression: expression.trim().to_owned(),
                cron: Box::new(cron),
                zone,
                zone_name,
            },
        })
    }

    /// The first tick strictly after `after`; `None` when there is none
    /// (a cron expression that never matches again, or a time out of range).
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every(period) => {
                let period = period.as_nanos();
                let since = after.duration_since(UNIX_EPOCH).ok()?.as_nanos();
                let next = (since / period + 1).checked_mul(period)?;
                from_nanos(next)
            }
            Kind::Cron { cron, zone, .. } => {
                let start = zoned(after, zone)?;
                let next = cron.find_next_occurrence(&start, false).ok()?;
                Some(SystemTime::from(next.timestamp()))
            }
        }
    }

    /// The latest tick at or before `at`; `None` when there is none.
    pub fn latest_at_or_before(&self, at: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every(period) => {
                let period = period.as_nanos();
                let since = at.duration_since(UNIX_EPOCH).ok()?.as_nanos();
                from_nanos(since / period * period)
            }
            Kind::Cron { cron, zone, .. } => {
                let start = zoned(at, zone)?;
                let previous = cron.find_previous_occurrence(&start, true).ok()?;
                Some(SystemTime::from(previous.timestamp()))
            }
        }
    }

    /// The period of an `every` schedule.
    pub fn period(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Every(period) => Some(*period),
            Kind::Cron { .. } => None,
        }
    }

    /// The cron expression of a cron schedule.
    pub fn cron_expression(&self) -> Option<&str> {
        match &self.kind {
            Kind::Every(_) => None,
            Kind::Cron { expression, .. } => Some(expression),
        }
    }

    /// The time zone of a cron schedule.
    pub fn timezone(&self) -> Option<&str> {
        match &self.kind {
            Kind::Every(_) => None,
            Kind::Cron { zone_name, .. } => Some(zone_name),
        }
    }

    /// How the schedule is stored: `every <ms>` or `cron <expression>`,
    /// with the time zone apart.
    pub(crate) fn stored(&self) -> (String, Option<String>) {
        match &self.kind {
            Kind::Every(period) => (format!("every {}", period.as_millis()), None),
            Kind::Cron {
                expression,
                zone_name,
                ..
            } => (format!("cron {expression}"), Some(zone_name.clone())),
        }
    }

    /// The schedule [`stored`](Self::stored) wrote.
    pub(crate) fn from_stored(spec: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        match spec.split_once(' ') {
            Some(("every", millis)) => {
                let millis: u64 = millis.parse().map_err(|_| ScheduleError::InvalidEvery {
                    value: millis.to_owned(),
                    reason: "it is not a whole number of milliseconds".to_owned(),
                })?;
                Self::every(Duration::from_millis(millis))
            }
            Some(("cron", expression)) => Self::cron_in(expression, timezone.unwrap_or("UTC")),
            _ => Err(ScheduleError::InvalidCron {
                expression: spec.to_owned(),
                reason: "it is neither `every` nor `cron`".to_owned(),
            }),
        }
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.stored() == other.stored()
    }
}

impl Eq for Schedule {}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Every(period) => write!(f, "every {}", humantime::format_duration(*period)),
            Kind::Cron {
                expression,
                zone_name,
                ..
            } => write!(f, "cron `{expression}` in {zone_name}"),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

/// Parses a cron expression as the runtime and the `#[task]` macro both do:
/// five fields, or six with seconds first.
fn parse_cron(expression: &str) -> Result<croner::Cron, ScheduleError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expression.trim())
        .map_err(|error| ScheduleError::InvalidCron {
            expression: expression.to_owned(),
            reason: cron_reason(&error),
        })
}

/// `croner`'s reason, in the house style (lowercase, no period).
fn cron_reason(error: &croner::errors::CronError) -> String {
    let text = error.to_string();
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "it does not parse".to_owned(),
    }
}

fn zoned(at: SystemTime, zone: &jiff::tz::TimeZone) -> Option<jiff::Zoned> {
    let timestamp = jiff::Timestamp::try_from(at).ok()?;
    Some(timestamp.to_zoned(zone.clone()))
}

fn from_nanos(nanos: u128) -> Option<SystemTime> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let rest = u32::try_from(nanos % 1_000_000_000).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, rest))
}

// Not public API. Used by generated code.
//
// A schedule declared with `#[task(every | cron = …)]`: const data, one
// per declaring task, collected from the whole binary.
#[doc(hidden)]
#[derive(Debug)]
pub struct ScheduleEntry {
    pub(crate) entry: &'static TaskEntry,
    pub(crate) every_ms: u64,
    pub(crate) cron: Option<(&'static str, &'static str)>,
    pub(crate) run_on_start: bool,
    pub(crate) catch_up: CatchUp,
}

impl ScheduleEntry {
    // Not public API. Used by generated code.
    pub const fn every(entry: &'static TaskEntry, millis: u64) -> Self {
        ScheduleEntry {
            entry,
            every_ms: millis,
            cron: None,
            run_on_start: false,
            catch_up: CatchUp::One,
        }
    }

    // Not public API. Used by generated code.
    pub const fn cron(
        entry: &'static TaskEntry,
        expression: &'static str,
        timezone: &'static str,
    ) -> Self {
        ScheduleEntry {
            entry,
            every_ms: 0,
            cron: Some((expression, timezone)),
            run_on_start: false,
            catch_up: CatchUp::One,
        }
    }

    // Not public API. Used by generated code.
    pub const fn run_on_start(mut self, run: bool) -> Self {
        self.run_on_start = run;
        self
    }

    // Not public API. Used by generated code.
    pub const fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The schedule it declares (checked at compile time; an entry built
    /// by hand may still be wrong).
    pub(crate) fn schedule(&self) -> Result<Schedule, ScheduleError> {
        match self.cron {
            Some((expression, timezone)) => Schedule::cron_in(expression, timezone),
            None => Schedule::every(Duration::from_millis(self.every_ms)),
        }
    }
}

inventory::collect!(ScheduleEntry);

/// What a schedule does about ticks missed while no process ran it (or
/// while it could not fire): `#[task(catch_up = "skip")]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CatchUp {
    /// Fire the latest missed tick once, then go on as scheduled: never a
    /// storm of catch-up runs, never a period without one. The default.
    #[default]
    One,
    /// Fire nothing for missed ticks: wait for the next one.
    Skip,
}

impl CatchUp {
    /// `"one"` or `"skip"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::One => "one",
            CatchUp::Skip => "skip",
        }
    }
}

impl FromStr for CatchUp {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "one" => Ok(CatchUp::One),
            "skip" => Ok(CatchUp::Skip),
            other => Err(ScheduleError::InvalidCatchUp {
                value: other.to_owned(),
            }),
        }
    }
}

/// A schedule as [`TaskManager::schedules`](crate::TaskManager::schedules)
/// shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// Its name: the task's name for a declared schedule, the name given
    /// to [`add_schedule`](crate::TaskManager::add_schedule) otherwise.
    pub name: String,
    /// The task it enqueues.
    pub task: String,
    /// When it fires.
    pub schedule: Schedule,
    /// Declared with `#[task(every | cron = …)]` (rather than added at run
    /// time).
    pub declared: bool,
    /// Paused: it fires nothing until resumed.
    pub paused: bool,
    /// Its next tick (`None` while paused).
    pub next_fire: Option<SystemTime>,
    /// The tick it last fired.
    pub last_fire: Option<SystemTime>,
    /// The task its last fire created.
    pub last_task: Option<TaskId>,
    /// What it does about missed ticks.
    pub catch_up: CatchUp,
}

/// A task's origin when a schedule created it: on its
/// [`TaskRecord::scheduled`](crate::TaskRecord::scheduled).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Tick {
    /// The schedule's name.
    pub schedule: String,
    /// The tick it was created for.
    pub at: SystemTime,
}

impl Tick {
    /// Tick `at` of schedule `schedule`.
    pub fn new(schedule: impl Into<String>, at: SystemTime) -> Self {
        Tick {
            schedule: schedule.into(),
            at,
        }
    }
}

/// A schedule's expression, time zone or option is invalid. Each variant
/// names the field at fault ([`field`](Self::field)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// `cron`: the expression does not parse.
    #[error("invalid `cron` expression `{expression}`: {reason}")]
    InvalidCron {
        /// The expression.
        expression: String,
        /// Why.
        reason: String,
    },
    /// `timezone`: not a zone of the built-in IANA database.
    #[error("unknown `timezone` `{name}`; expected an IANA name such as `Europe/Paris` or `UTC`")]
    UnknownTimeZone {
        /// The name given.
        name: String,
    },
    /// `every`: not a duration, or one too short.
    #[error("invalid `every` period `{value}`: {reason}")]
    InvalidEvery {
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// `catch_up`: neither `one` nor `skip`.
    #[error("invalid `catch_up` value `{value}`; expected `one` or `skip`")]
    InvalidCatchUp {
        /// The value given.
        value: String,
    },
    /// `name`: a schedule name must be non-empty text of at most 200 bytes
    /// without control characters.
    #[error("invalid schedule `name` `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

impl ScheduleError {
    /// The field at fault: `"cron"`, `"timezone"`, `"every"`, `"catch_up"`
    /// or `"name"`.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::InvalidCron { .. } => "cron",
            ScheduleError::UnknownTimeZone { .. } => "timezone",
            ScheduleError::InvalidEvery { .. } => "every",
            ScheduleError::InvalidCatchUp { .. } => "catch_up",
            ScheduleError::InvalidName { .. } => "name",
        }
    }
}

/// Checks a schedule name.
pub(crate) fn check_name(name: &str) -> Result<(), ScheduleError> {
    let reason = if name.trim().is_empty() {
        Some("it is empty")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if name.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ScheduleError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn every_is_aligned_on_the_epoch() {
        let s = Schedule::every(Duration::from_millis(200)).unwrap();
        let t = UNIX_EPOCH + Duration::from_millis(1_030);
        assert_eq!(
            s.next_after(t),
            Some(UNIX_EPOCH + Duration::from_millis(1_200))
        );
        assert_eq!(
            s.latest_at_or_before(t),
            Some(UNIX_EPOCH + Duration::from_millis(1_000))
        );
        let on = UNIX_EPOCH + Duration::from_millis(1_200);
        assert_eq!(s.latest_at_or_before(on), Some(on));
        assert_eq!(
            s.next_after(on),
            Some(UNIX_EPOCH + Duration::from_millis(1_400))
        );
    }

    #[test]
    fn bad_input_names_its_field() {
        assert_eq!(Schedule::parse_every("soon").unwrap_err().field(), "every");
        assert_eq!(Schedule::parse_every("1ms").unwrap_err().field(), "every");
        assert_eq!(Schedule::cron("61 * * * *").unwrap_err().field(), "cron");
        assert_eq!(Schedule::cron("* * *").unwrap_err().field(), "cron");
        let zone = Schedule::cron_in("* * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(zone.field(), "timezone");
        assert_eq!(
            zone.to_string(),
            "unknown `timezone` `Mars/Olympus`; expected an IANA name such as `Europe/Paris` or `UTC`"
        );
        let cron = Schedule::cron("0 25 * * *").unwrap_err().to_string();
        assert!(
            cron.starts_with("invalid `cron` expression `0 25 * * *`: "),
            "{cron}"
        );
        assert!(!cron.ends_with('.'), "{cron}");
        assert_eq!(
            "sometimes".parse::<CatchUp>().unwrap_err().field(),
            "catch_up"
        );
    }

    #[test]
    fn a_schedule_survives_its_stored_form() {
        for schedule in [
            Schedule::every(Duration::from_millis(1_500)).unwrap(),
            Schedule::cron_in("0 9 * * MON-FRI", "europe/paris").unwrap(),
            Schedule::cron("*/5 * * * * *").unwrap(),
        ] {
            let (spec, zone) = schedule.stored();
            let back = Schedule::from_stored(&spec, zone.as_deref()).unwrap();
            assert_eq!(back, schedule);
            assert_eq!(back.to_string(), schedule.to_string());
        }
        let paris = Schedule::cron_in("0 9 * * *", "europe/paris").unwrap();
        assert_eq!(paris.timezone(), Some("Europe/Paris"));
    }

    #[test]
    fn cron_with_seconds_ticks_each_second() {
        let s = Schedule::cron("* * * * * *").unwrap();
        assert_eq!(s.next_after(at(10)), Some(at(11)));
        assert_eq!(
            s.next_after(at(10) + Duration::from_millis(500)),
            Some(at(11))
        );
        assert_eq!(s.latest_at_or_before(at(10)), Some(at(10)));
    }
}
