//! When schedules fire, across both 2026 daylight-saving transitions in
//! Europe/Paris and America/New_York: next fire times checked against a
//! table written by hand (in UTC, from the zones' published rules), not
//! computed by the code under test.
//!
//! 2026 transitions:
//! - Europe/Paris: Sun 29 March 02:00 CET → 03:00 CEST (01:00 UTC);
//!   Sun 25 October 03:00 CEST → 02:00 CET (01:00 UTC).
//! - America/New_York: Sun 8 March 02:00 EST → 03:00 EDT (07:00 UTC);
//!   Sun 1 November 02:00 EDT → 01:00 EST (06:00 UTC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskflow::{Schedule, ScheduleError};

/// `y-m-d h:min` UTC, as a `SystemTime` (days from the civil calendar,
/// Howard Hinnant's algorithm).
fn utc(y: i64, m: i64, d: i64, h: i64, min: i64) -> SystemTime {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + min * 60;
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
}

/// The next `n` fire times after `from`.
fn fires(schedule: &Schedule, from: SystemTime, n: usize) -> Vec<SystemTime> {
    let mut out = Vec::new();
    let mut at = from;
    for _ in 0..n {
        at = schedule.next_after(at).expect("a next fire time");
        out.push(at);
    }
    out
}

fn show(times: &[SystemTime]) -> Vec<u64> {
    times
        .iter()
        .map(|t| t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs())
        .collect()
}

fn check(cron: &str, zone: &str, from: SystemTime, expected: &[SystemTime]) {
    let schedule = Schedule::cron_in(cron, zone).expect("a valid schedule");
    let got = fires(&schedule, from, expected.len());
    assert_eq!(
        show(&got),
        show(expected),
        "`{cron}` in {zone} from {from:?}"
    );
    // Walking back from each fire finds that very fire, and before it the
    // previous one: catch-up after a stop reads the same ticks.
    for pair in expected.windows(2) {
        assert_eq!(schedule.latest_at_or_before(pair[1]), Some(pair[1]));
        assert_eq!(
            schedule.latest_at_or_before(pair[1] - Duration::from_secs(1)),
            Some(pair[0]),
            "`{cron}` in {zone}: the fire before {:?}",
            pair[1]
        );
    }
}

#[test]
fn a_daily_0230_job_runs_once_on_the_paris_spring_forward_day() {
    // 02:30 does not exist on 29 March: it runs once, at 03:00 CEST.
    check(
        "30 2 * * *",
        "Europe/Paris",
        utc(2026, 3, 27, 12, 0),
        &[
            utc(2026, 3, 28, 1, 30), // 02:30 CET
            utc(2026, 3, 29, 1, 0),  // the gap: 03:00 CEST
            utc(2026, 3, 30, 0, 30), // 02:30 CEST
        ],
    );
}

#[test]
fn a_daily_0230_job_runs_once_on_the_paris_fall_back_day() {
    // 02:30 happens twice on 25 October: it runs at the first.
    check(
        "30 2 * * *",
        "Europe/Paris",
        utc(2026, 10, 23, 12, 0),
        &[
            utc(2026, 10, 24, 0, 30), // 02:30 CEST
            utc(2026, 10, 25, 0, 30), // the first 02:30 (CEST), not the CET one
            utc(2026, 10, 26, 1, 30), // 02:30 CET
        ],
    );
}

#[test]
fn a_daily_0230_job_runs_once_on_the_new_york_spring_forward_day() {
    check(
        "30 2 * * *",
        "America/New_York",
        utc(2026, 3, 6, 12, 0),
        &[
            utc(2026, 3, 7, 7, 30), // 02:30 EST
            utc(2026, 3, 8, 7, 0),  // the gap: 03:00 EDT
            utc(2026, 3, 9, 6, 30), // 02:30 EDT
        ],
    );
}

#[test]
fn a_daily_0230_job_runs_once_on_the_new_york_fall_back_day() {
    // New York repeats 01:00–02:00, so 02:30 is once anyway (EST).
    check(
        "30 2 * * *",
        "America/New_York",
        utc(2026, 10, 30, 12, 0),
        &[
            utc(2026, 10, 31, 6, 30), // 02:30 EDT
            utc(2026, 11, 1, 7, 30),  // 02:30 EST
            utc(2026, 11, 2, 7, 30),  // 02:30 EST
        ],
    );
    // 01:30 is the time that repeats there: it runs at the first.
    check(
        "30 1 * * *",
        "America/New_York",
        utc(2026, 10, 30, 12, 0),
        &[
            utc(2026, 10, 31, 5, 30), // 01:30 EDT
            utc(2026, 11, 1, 5, 30),  // the first 01:30 (EDT)
            utc(2026, 11, 2, 6, 30),  // 01:30 EST
        ],
    );
}

#[test]
fn an_hourly_job_runs_every_real_hour_through_both_paris_transitions() {
    // Spring: 01:00 CET (00:00 UTC), then 03:00 CEST (01:00 UTC): the
    // hour that does not exist is not invented.
    check(
        "0 * * * *",
        "Europe/Paris",
        utc(2026, 3, 28, 23, 30),
        &[
            utc(2026, 3, 29, 0, 0), // 01:00 CET
            utc(2026, 3, 29, 1, 0), // 03:00 CEST
            utc(2026, 3, 29, 2, 0), // 04:00 CEST
        ],
    );
    // Fall: both 02:00s run.
    check(
        "0 * * * *",
        "Europe/Paris",
        utc(2026, 10, 24, 23, 30),
        &[
            utc(2026, 10, 25, 0, 0), // 02:00 CEST
            utc(2026, 10, 25, 1, 0), // 02:00 CET
            utc(2026, 10, 25, 2, 0), // 03:00 CET
        ],
    );
}

#[test]
fn weekday_mornings_follow_the_wall_clock_across_the_change() {
    // 09:00 Paris on Friday 27 March is 08:00 UTC; on Monday 30 March,
    // after the change, 07:00 UTC. The weekend is skipped.
    check(
        "0 9 * * MON-FRI",
        "Europe/Paris",
        utc(2026, 3, 26, 12, 0),
        &[
            utc(2026, 3, 27, 8, 0),
            utc(2026, 3, 30, 7, 0),
            utc(2026, 3, 31, 7, 0),
        ],
    );
    check(
        "0 9 * * MON-FRI",
        "America/New_York",
        utc(2026, 10, 29, 20, 0),
        &[
            utc(2026, 10, 30, 13, 0), // Friday 09:00 EDT
            utc(2026, 11, 2, 14, 0),  // Monday 09:00 EST
        ],
    );
}

#[test]
fn every_is_the_same_instant_in_any_zone_and_ignores_the_clock_change() {
    let schedule = Schedule::parse_every("1h").unwrap();
    let start = utc(2026, 3, 29, 0, 10);
    assert_eq!(
        show(&fires(&schedule, start, 3)),
        show(&[
            utc(2026, 3, 29, 1, 0),
            utc(2026, 3, 29, 2, 0),
            utc(2026, 3, 29, 3, 0)
        ])
    );
}

#[test]
fn bad_schedules_are_typed_errors_naming_the_field() {
    let cron = Schedule::cron_in("0 9 * * FUNDAY", "Europe/Paris").unwrap_err();
    assert!(
        matches!(cron, ScheduleError::InvalidCron { .. }),
        "{cron:?}"
    );
    assert_eq!(cron.field(), "cron");
    let zone = Schedule::cron_in("0 9 * * *", "Europe/Atlantis").unwrap_err();
    assert!(
        matches!(&zone, ScheduleError::UnknownTimeZone { name } if name == "Europe/Atlantis"),
        "{zone:?}"
    );
    assert_eq!(zone.field(), "timezone");
    let every = Schedule::parse_every("5 fortnights").unwrap_err();
    assert_eq!(every.field(), "every");
    assert!(
        every
            .to_string()
            .starts_with("invalid `every` period `5 fortnights`")
    );
    // And as the manager's error, which wraps it.
    let error = taskflow::Error::from(zone);
    assert!(error.to_string().contains("timezone"), "{error}");
}
