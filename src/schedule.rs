//! When an account is due: pure functions over the schedule and the account's last runs. No
//! clock reads and no I/O, so every case (intervals, daily times across DST changes and time
//! zones, failure backoff, jitter) is a unit test.

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::domain::{Health, Outcome};

/// How often an account runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Cadence {
    /// Every `d` after the last run started.
    Every(Duration),
    /// Daily at a wall-clock time in a time zone.
    DailyAt { time: NaiveTime, tz: Tz },
}

impl Cadence {
    /// The time between two of its slots: what an account may wait past its due time before
    /// it has missed a whole slot.
    pub fn period(&self) -> Duration {
        match self {
            Cadence::Every(d) => *d,
            Cadence::DailyAt { .. } => Duration::from_secs(86_400),
        }
    }
}

/// The accounts due now that no process is syncing, as one scheduler round sees them: a fleet
/// whose runs cannot keep up with its schedules (too few run slots, `sync.max_concurrent_accounts`
/// times the replicas, or too small a request budget for its pages) has them wait longer and
/// longer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Due, and waiting for a free run slot.
    pub waiting: usize,
    /// Of those, the ones that have waited longer than their schedule's period
    /// ([`Cadence::period`]): a whole slot missed.
    pub behind: usize,
    /// How long the one that has waited longest has waited.
    pub longest: Duration,
}

impl Backlog {
    /// Counts an account on `schedule` that has waited to start since `since` (not its slot,
    /// which may be long past for an account just resumed or a process just started: the
    /// first round that found it due and could not start it) until `now`.
    pub fn add(&mut self, schedule: &Schedule, since: DateTime<Utc>, now: DateTime<Utc>) {
        let waited = (now - since).to_std().unwrap_or(Duration::ZERO);
        self.waiting += 1;
        if waited > schedule.cadence.period() {
            self.behind += 1;
        }
        self.longest = self.longest.max(waited);
    }
}

/// An account's effective schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub cadence: Cadence,
    /// Run every account once as soon as the process starts.
    pub run_on_start: bool,
    /// Each account's slots are shifted by a stable offset in [0, jitter) so that accounts do
    /// not all start at once.
    pub jitter: Duration,
    /// First retry of a failed account; doubles per consecutive failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// First probe of an unhealthy account (needs re-authorization, blocked, ...); doubles per
    /// failed probe up to `health_retry_max`.
    pub health_retry_initial: Duration,
    pub health_retry_max: Duration,
}

impl Schedule {
    /// When it runs, in words: `every 6h, jitter 30s`, `daily at 02:30 Europe/Paris`.
    pub fn words(&self) -> String {
        let mut s = match &self.cadence {
            Cadence::Every(d) => format!("every {}", humantime::format_duration(*d)),
            Cadence::DailyAt { time, tz } => format!("daily at {} {tz}", time.format("%H:%M")),
        };
        if !self.jitter.is_zero() {
            s.push_str(&format!(
                ", jitter {}",
                humantime::format_duration(self.jitter)
            ));
        }
        s
    }
}

/// What the scheduler knows of an account's runs (from `sync_state`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunHistory {
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    /// How the last run ended, or `Running` while one is under way (or its process died).
    pub last_outcome: Option<Outcome>,
    pub consecutive_failures: u32,
    /// Whether the account can be synced, or why not until someone acts upstream.
    pub health: Option<Health>,
    /// Failed probes in a row while unhealthy.
    pub health_failures: u32,
    /// The server holds the account's requests back until then (a quota spent): no run before.
    pub held_until: Option<DateTime<Utc>>,
}

impl RunHistory {
    /// True unless the account's last runs found it needs re-authorization, blocked, etc.
    pub fn healthy(&self) -> bool {
        self.health.is_none_or(Health::is_ok)
    }
}

/// The account's stable jitter offset in [0, jitter).
pub fn jitter_offset(account: Uuid, jitter: Duration) -> Duration {
    let ms = jitter.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    let h = xxhash_rust::xxh3::xxh3_64(account.as_bytes());
    Duration::from_millis(h % ms)
}

/// As a calendar duration, at most a century: the config allows a year at most, and no sum of
/// such durations may overflow the calendar (chrono panics past its year 262,143).
fn chrono_dur(d: Duration) -> chrono::Duration {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    chrono::Duration::from_std(d.min(CENTURY)).expect("a century fits")
}

/// The first regular slot strictly after `after` (jitter not included).
pub fn next_slot(cadence: &Cadence, after: DateTime<Utc>) -> DateTime<Utc> {
    match cadence {
        Cadence::Every(d) => after + chrono_dur(*d),
        Cadence::DailyAt { time, tz } => {
            let local_date = after.with_timezone(tz).date_naive();
            // Today's slot, or the next day's; two days cover any offset.
            for days in 0..=2 {
                let date = local_date + chrono::Days::new(days);
                let at = local_instant(tz, date, *time);
                if at > after {
                    return at;
                }
            }
            unreachable!("a daily slot exists within three days")
        }
    }
}

/// `date time` in `tz` as an instant. A time that falls in a DST gap (clocks jump forward)
/// moves forward by the gap; a time that occurs twice (clocks fall back) is taken the first time.
pub fn local_instant(tz: &Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the first local minute that exists, i.e. right after the clocks jumped.
            let mut probe = naive;
            for _ in 0..(24 * 60) {
                probe += chrono::Duration::minutes(1);
                if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                    tz.from_local_datetime(&probe)
                {
                    return t.with_timezone(&Utc);
                }
            }
            naive.and_utc()
        }
    }
}

/// When the account should next run, given its history, the process start and the schedule.
/// A time at or before `now` means "now"; missed slots collapse into one run, never a queue.
/// Never before the end of a hold the server put on the account's requests: a run before it
/// could only fail (or spend a request on another 429).
pub fn next_run(
    schedule: &Schedule,
    account: Uuid,
    history: &RunHistory,
    process_started: DateTime<Utc>,
) -> DateTime<Utc> {
    let due = scheduled(schedule, account, history, process_started);
    history.held_until.map_or(due, |held| due.max(held))
}

/// [`next_run`] as the schedule alone has it.
fn scheduled(
    schedule: &Schedule,
    account: Uuid,
    history: &RunHistory,
    process_started: DateTime<Utc>,
) -> DateTime<Utc> {
    let jitter = chrono_dur(jitter_offset(account, schedule.jitter));
    let Some(last_started) = history.last_started_at else {
        return if schedule.run_on_start {
            process_started + jitter
        } else {
            next_slot(&schedule.cadence, process_started) + jitter
        };
    };
    if schedule.run_on_start && last_started < process_started {
        return process_started + jitter;
    }
    let regular = next_slot(&schedule.cadence, last_started - jitter) + jitter;
    let finished = history.last_finished_at.unwrap_or(last_started);
    if !history.healthy() && history.last_outcome != Some(Outcome::Running) {
        // Nothing changes until someone acts upstream: probe hours apart, not on the schedule.
        let failures = history.health_failures.max(1);
        return finished + chrono_dur(health_backoff(schedule, failures));
    }
    match history.last_outcome {
        Some(Outcome::Failed) => {
            let retry =
                finished + chrono_dur(failure_backoff(schedule, history.consecutive_failures));
            retry.min(regular)
        }
        // Cut short by a shutdown or a dead process: resume soon.
        Some(Outcome::Interrupted) | Some(Outcome::Running) => {
            (finished + chrono_dur(schedule.retry_initial)).min(regular)
        }
        _ => regular,
    }
}

/// Why an account held back by the server does not run before `until` (for `status` and the
/// account's page).
pub fn held_back(until: DateTime<Utc>) -> String {
    format!(
        "the server holds its requests back until {} (its Retry-After or ratelimit-* headers asked for longer than truto.max_retry_wait_secs); no run starts before then",
        until.format("%Y-%m-%d %H:%M:%SZ")
    )
}

/// `initial`, doubled per failure after the first, at most `max`.
fn doubling(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    initial.saturating_mul(2u32.saturating_pow(exp)).min(max)
}

/// Capped exponential backoff for an account that failed `failures` times in a row.
pub fn failure_backoff(schedule: &Schedule, failures: u32) -> Duration {
    doubling(schedule.retry_initial, schedule.retry_max, failures)
}

/// Capped exponential backoff between probes of an unhealthy account.
pub fn health_backoff(schedule: &Schedule, failures: u32) -> Duration {
    doubling(
        schedule.health_retry_initial,
        schedule.health_retry_max,
        failures,
    )
}

/// The end of a pause (`accounts pause --until`, the admin route's `?until=`): an RFC 3339 time, or a time from `now` (`8h`); in the
/// future, at most a year ahead.
pub fn pause_end(when: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let at = match chrono::DateTime::parse_from_rfc3339(when.trim()) {
        Ok(t) => t.with_timezone(&chrono::Utc),
        Err(_) => {
            let d = humantime::parse_duration(when.trim()).map_err(|_| {
                format!(
                    "{:?} is neither a time (2026-12-08T06:00:00Z) nor a time from now (8h, 90m, 2d)",
                    crate::text::shorten(when, 60)
                )
            })?;
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| format!("{when:?} is too far ahead"))?
        }
    };
    if at <= now {
        return Err(format!(
            "{} is not in the future",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if at > now + chrono::Duration::days(365) {
        return Err(format!(
            "{} is more than a year ahead: pause without --until instead",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_that_waits_longer_than_its_period_is_behind() {
        let now = Utc::now();
        let hourly = Schedule {
            cadence: Cadence::Every(Duration::from_secs(3600)),
            run_on_start: true,
            jitter: Duration::ZERO,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            health_retry_initial: Duration::from_secs(3600),
            health_retry_max: Duration::from_secs(86400),
        };
        let daily = Schedule {
            cadence: Cadence::DailyAt {
                time: NaiveTime::from_hms_opt(2, 0, 0).unwrap(),
                tz: chrono_tz::UTC,
            },
            ..hourly.clone()
        };
        let mut b = Backlog::default();
        b.add(&hourly, now - chrono::Duration::minutes(59), now);
        assert_eq!((b.waiting, b.behind), (1, 0));
        b.add(&hourly, now - chrono::Duration::minutes(61), now);
        // A daily account 2 h late has not missed a slot.
        b.add(&daily, now - chrono::Duration::hours(2), now);
        assert_eq!((b.waiting, b.behind), (3, 1));
        assert_eq!(b.longest, Duration::from_secs(7200));
        // Waiting since a moment after `now` (a clock read after the round's): no wait, not
        // a negative one.
        b.add(&hourly, now + chrono::Duration::seconds(1), now);
        assert_eq!(
            (b.waiting, b.behind, b.longest),
            (4, 1, Duration::from_secs(7200))
        );
    }

    #[test]
    fn a_schedule_reads_as_an_operator_would_write_it() {
        let every = Schedule {
            cadence: Cadence::Every(Duration::from_secs(90 * 60)),
            run_on_start: true,
            jitter: Duration::from_secs(30),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            health_retry_initial: Duration::from_secs(3600),
            health_retry_max: Duration::from_secs(86400),
        };
        assert_eq!(every.words(), "every 1h 30m, jitter 30s");
        let daily = Schedule {
            cadence: Cadence::DailyAt {
                time: NaiveTime::from_hms_opt(2, 30, 0).unwrap(),
                tz: "Europe/Paris".parse().unwrap(),
            },
            jitter: Duration::ZERO,
            ..every
        };
        assert_eq!(daily.words(), "daily at 02:30 Europe/Paris");
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn every(h: u64) -> Schedule {
        Schedule {
            cadence: Cadence::Every(Duration::from_secs(h * 3600)),
            run_on_start: false,
            jitter: Duration::ZERO,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            health_retry_initial: Duration::from_secs(3600),
            health_retry_max: Duration::from_secs(24 * 3600),
        }
    }

    fn daily(hm: &str, tz: &str) -> Schedule {
        Schedule {
            cadence: Cadence::DailyAt {
                time: NaiveTime::parse_from_str(hm, "%H:%M").unwrap(),
                tz: tz.parse().unwrap(),
            },
            ..every(1)
        }
    }

    fn history(started: &str, outcome: &str, failures: u32) -> RunHistory {
        RunHistory {
            last_started_at: Some(t(started)),
            last_finished_at: Some(t(started) + chrono::Duration::minutes(5)),
            last_outcome: Some(Outcome::parse(outcome).expect("an outcome")),
            consecutive_failures: failures,
            ..Default::default()
        }
    }

    const A: Uuid = Uuid::from_u128(1);

    #[test]
    fn durations_past_the_calendar_never_overflow_it() {
        // The config refuses more than a year; the schedule holds even if handed more.
        let forever = Duration::MAX;
        let s = Schedule {
            cadence: Cadence::Every(forever),
            jitter: forever,
            retry_initial: forever,
            retry_max: forever,
            health_retry_initial: forever,
            health_retry_max: forever,
            ..every(1)
        };
        let started = t("2026-01-01T00:00:00Z");
        let mut h = history("2026-01-01T10:00:00Z", "succeeded", 0);
        assert!(next_run(&s, A, &h, started) > started);
        h = history("2026-01-01T10:00:00Z", "failed", 40);
        assert!(next_run(&s, A, &h, started) > started);
        h.health = Some(Health::NeedsReauth);
        h.health_failures = 40;
        assert!(next_run(&s, A, &h, started) > started);
        assert!(next_run(&s, A, &RunHistory::default(), started) > started);
    }

    #[test]
    fn an_unhealthy_account_is_probed_hours_apart_and_a_restart_probes_at_once() {
        let s = every(1);
        let started = t("2026-01-01T00:00:00Z");
        let mut h = history("2026-01-01T10:00:00Z", "failed", 3);
        h.health = Some(Health::NeedsReauth);
        h.health_failures = 1;
        // Finished 10:05; the regular hourly slot and the 4-minute failure retry are ignored.
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T11:05:00Z"));
        h.health_failures = 3;
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T14:05:00Z"));
        h.health_failures = 30;
        assert_eq!(
            next_run(&s, A, &h, started),
            t("2026-01-02T10:05:00Z"),
            "capped"
        );
        // An operator who fixed the account restarts the daemon: it probes right away.
        let s2 = Schedule {
            run_on_start: true,
            ..every(1)
        };
        let restarted = t("2026-01-01T12:00:00Z");
        assert_eq!(next_run(&s2, A, &h, restarted), restarted);
        // Healthy again: the regular schedule.
        h.health = Some(Health::Ok);
        h.last_outcome = Some(Outcome::Succeeded);
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T11:00:00Z"));
    }

    #[test]
    fn a_hold_the_server_put_on_the_account_defers_every_kind_of_next_run_to_its_end() {
        let s = Schedule {
            run_on_start: true,
            ..every(1)
        };
        let started = t("2026-01-01T00:00:00Z");
        // Failed at 10:05 (a quota spent until 15:30): not the 1-minute retry.
        let mut h = history("2026-01-01T10:00:00Z", "failed", 1);
        h.held_until = Some(t("2026-01-01T15:30:00Z"));
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T15:30:00Z"));
        // A process started after the failure does not run it at start either.
        let restarted = t("2026-01-01T12:00:00Z");
        assert_eq!(next_run(&s, A, &h, restarted), t("2026-01-01T15:30:00Z"));
        // Nor does a probe of an unhealthy account come before it.
        h.health = Some(Health::Blocked);
        h.health_failures = 1;
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T15:30:00Z"));
        // A hold shorter than the schedule's wait changes nothing.
        h.held_until = Some(t("2026-01-01T10:06:00Z"));
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T11:05:00Z"));
        h.health = None;
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T10:06:00Z"));
        h.held_until = None;
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T10:06:00Z"));
        h.held_until = Some(t("2026-01-01T10:05:30Z"));
        assert_eq!(next_run(&s, A, &h, started), t("2026-01-01T10:06:00Z"));
    }

    #[test]
    fn an_interval_runs_again_after_the_last_start() {
        let s = every(6);
        let h = history("2026-01-01T00:00:00Z", "succeeded", 0);
        assert_eq!(
            next_run(&s, A, &h, t("2025-12-31T00:00:00Z")),
            t("2026-01-01T06:00:00Z")
        );
    }

    #[test]
    fn missed_slots_collapse_into_one_run_now() {
        let s = every(6);
        let h = history("2026-01-01T00:00:00Z", "succeeded", 0);
        // Days later the due time is simply in the past: one run, not a queue of them.
        let due = next_run(&s, A, &h, t("2025-12-31T00:00:00Z"));
        assert!(due < t("2026-01-05T00:00:00Z"));
    }

    #[test]
    fn a_new_account_waits_for_its_first_slot_unless_run_on_start() {
        let mut s = every(6);
        let start = t("2026-03-01T10:00:00Z");
        assert_eq!(
            next_run(&s, A, &RunHistory::default(), start),
            t("2026-03-01T16:00:00Z")
        );
        s.run_on_start = true;
        assert_eq!(next_run(&s, A, &RunHistory::default(), start), start);
        // run_on_start also runs accounts whose last run was before this process started.
        let h = history("2026-03-01T09:00:00Z", "succeeded", 0);
        assert_eq!(next_run(&s, A, &h, start), start);
    }

    #[test]
    fn a_failed_account_retries_sooner_with_capped_backoff_then_returns_to_schedule() {
        let s = every(6);
        let h = history("2026-01-01T00:00:00Z", "failed", 1);
        assert_eq!(
            next_run(&s, A, &h, t("2025-01-01T00:00:00Z")),
            t("2026-01-01T00:06:00Z")
        );
        let h = history("2026-01-01T00:00:00Z", "failed", 3);
        assert_eq!(
            next_run(&s, A, &h, t("2025-01-01T00:00:00Z")),
            t("2026-01-01T00:09:00Z")
        );
        let h = history("2026-01-01T00:00:00Z", "failed", 20);
        assert_eq!(
            next_run(&s, A, &h, t("2025-01-01T00:00:00Z")),
            t("2026-01-01T01:05:00Z")
        );
        // Never later than the regular slot.
        let mut short = every(1);
        short.retry_max = Duration::from_secs(7200);
        let h = history("2026-01-01T00:00:00Z", "failed", 20);
        assert_eq!(
            next_run(&short, A, &h, t("2025-01-01T00:00:00Z")),
            t("2026-01-01T01:00:00Z")
        );
        let ok = history("2026-01-01T00:00:00Z", "succeeded", 0);
        assert_eq!(
            next_run(&s, A, &ok, t("2025-01-01T00:00:00Z")),
            t("2026-01-01T06:00:00Z")
        );
    }

    #[test]
    fn an_interrupted_run_resumes_soon() {
        let s = every(6);
        let h = history("2026-01-01T00:00:00Z", "interrupted", 0);
        assert_eq!(
            next_run(&s, A, &h, t("2025-01-01T00:00:00Z")),
            t("2026-01-01T00:06:00Z")
        );
    }

    #[test]
    fn daily_at_is_the_local_wall_clock_time() {
        let s = daily("02:30", "Europe/Berlin");
        // Winter: UTC+1.
        assert_eq!(
            next_slot(&s.cadence, t("2026-01-10T12:00:00Z")),
            t("2026-01-11T01:30:00Z")
        );
        // Summer: UTC+2.
        assert_eq!(
            next_slot(&s.cadence, t("2026-07-10T00:00:00Z")),
            t("2026-07-10T00:30:00Z")
        );
        let ny = daily("23:15", "America/New_York");
        assert_eq!(
            next_slot(&ny.cadence, t("2026-01-10T12:00:00Z")),
            t("2026-01-11T04:15:00Z")
        );
        let tokyo = daily("00:05", "Asia/Tokyo");
        assert_eq!(
            next_slot(&tokyo.cadence, t("2026-01-10T15:06:00Z")),
            t("2026-01-11T15:05:00Z")
        );
    }

    #[test]
    fn a_daily_time_inside_the_spring_gap_runs_once_after_the_gap() {
        // Berlin skips 02:00–03:00 on 2026-03-29.
        let s = daily("02:30", "Europe/Berlin");
        let at = next_slot(&s.cadence, t("2026-03-28T12:00:00Z"));
        assert_eq!(
            at,
            t("2026-03-29T01:00:00Z"),
            "03:00 CEST, the first instant after the gap"
        );
        // And the day after is back to normal (02:30 CEST).
        assert_eq!(next_slot(&s.cadence, at), t("2026-03-30T00:30:00Z"));
    }

    #[test]
    fn a_daily_time_that_occurs_twice_in_autumn_runs_once() {
        // Berlin repeats 02:00–03:00 on 2026-10-25.
        let s = daily("02:30", "Europe/Berlin");
        let first = next_slot(&s.cadence, t("2026-10-24T12:00:00Z"));
        assert_eq!(first, t("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        let second = next_slot(&s.cadence, first);
        assert_eq!(
            second,
            t("2026-10-26T01:30:00Z"),
            "not the repeated 02:30, but the next day's"
        );
    }

    #[test]
    fn jitter_is_stable_per_account_and_spreads_accounts() {
        let j = Duration::from_secs(600);
        let a = jitter_offset(Uuid::from_u128(1), j);
        assert_eq!(a, jitter_offset(Uuid::from_u128(1), j));
        assert!(a < j);
        let offsets: std::collections::HashSet<Duration> = (0..20)
            .map(|i| jitter_offset(Uuid::from_u128(i), j))
            .collect();
        assert!(offsets.len() > 15);
        assert_eq!(
            jitter_offset(Uuid::from_u128(1), Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn jitter_shifts_every_slot_of_the_account() {
        let mut s = every(6);
        s.jitter = Duration::from_secs(600);
        let off = chrono::Duration::from_std(jitter_offset(A, s.jitter)).unwrap();
        let start = t("2026-03-01T10:00:00Z");
        let first = next_run(&s, A, &RunHistory::default(), start);
        assert_eq!(first, t("2026-03-01T16:00:00Z") + off);
        let h = RunHistory {
            last_started_at: Some(first),
            last_finished_at: Some(first),
            last_outcome: Some(Outcome::Succeeded),
            consecutive_failures: 0,
            ..Default::default()
        };
        assert_eq!(
            next_run(&s, A, &h, start),
            first + chrono::Duration::hours(6)
        );
    }

    #[test]
    fn a_pause_ends_at_a_time_or_after_a_while_in_the_coming_year() {
        let now: DateTime<Utc> = "2026-12-07T05:00:00Z".parse().unwrap();
        assert_eq!(
            pause_end("8h", now).unwrap(),
            "2026-12-07T13:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            pause_end("2026-12-08T07:00:00+01:00", now).unwrap(),
            "2026-12-08T06:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(pause_end("2026-12-07T04:00:00Z", now)
            .unwrap_err()
            .contains("is not in the future"));
        assert!(pause_end("400d", now)
            .unwrap_err()
            .contains("more than a year ahead"));
        assert!(pause_end("tomorrow", now)
            .unwrap_err()
            .contains("is neither a time"));
    }
}
