//! The pure rules of upstream's CronJob controller (v2): the most recent unmet schedule time
//! since the last one (or creation), bounded by `startingDeadlineSeconds`, with the "too many
//! missed start times" rule (more than 100); whether to start a Job now (too late, already
//! started, Forbid with one running, Replace); the Job's name (`<cronjob>-<minutes since the
//! epoch>`); when to look again; and which finished Jobs the history limits drop.

use imc_api::cron_schedule::Schedule;
use jiff::Timestamp;

/// More missed start times than this only warn (upstream's arbitrary 100).
pub const TOO_MANY_MISSED: i64 = 100;

/// The most recent schedule time that has come and not been handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// The most recent unmet time, if any.
    pub time: Option<Timestamp>,
    /// Whether more than [`TOO_MANY_MISSED`] start times were missed.
    pub too_many_missed: bool,
}

/// Upstream's `mostRecentScheduleTime`: the schedule times after the last schedule (or
/// creation), and after `now - startingDeadlineSeconds` when `with_deadline`, up to `now`.
pub fn most_recent(
    schedule: &Schedule,
    created: Timestamp,
    last_schedule: Option<Timestamp>,
    starting_deadline: Option<i64>,
    now: Timestamp,
    with_deadline: bool,
) -> Result<Unmet, String> {
    let mut earliest = last_schedule.unwrap_or(created);
    if with_deadline
        && let Some(d) = starting_deadline
        && let Ok(deadline) = Timestamp::from_second(now.as_second() - d)
        && deadline > earliest
    {
        earliest = deadline;
    }
    let none = Unmet {
        time: None,
        too_many_missed: false,
    };
    let Some(t1) = schedule.next_after(earliest) else {
        return Ok(none);
    };
    if now < t1 {
        return Ok(none);
    }
    let Some(t2) = schedule.next_after(t1) else {
        return Ok(Unmet {
            time: Some(t1),
            too_many_missed: false,
        });
    };
    if now < t2 {
        return Ok(Unmet {
            time: Some(t1),
            too_many_missed: false,
        });
    }
    let between = t2.as_second() - t1.as_second();
    if between < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let missed = (now.as_second() - t1.as_second()) / between + 1;
    let start = t1.as_second() + (missed - 2) * between;
    let mut most_recent = None;
    let mut t = Timestamp::from_second(start)
        .ok()
        .and_then(|s| schedule.next_after(s));
    while let Some(x) = t
        && x <= now
    {
        most_recent = Some(x);
        t = schedule.next_after(x);
    }
    Ok(Unmet {
        time: most_recent,
        too_many_missed: missed > TOO_MANY_MISSED,
    })
}

/// When to look again: the schedule's next time after the most recent one (or after the
/// earliest time considered), from `now`, plus upstream's 100 ms of slack.
pub fn next_wake(
    schedule: &Schedule,
    created: Timestamp,
    last_schedule: Option<Timestamp>,
    now: Timestamp,
) -> std::time::Duration {
    let from = most_recent(schedule, created, last_schedule, None, now, false)
        .ok()
        .and_then(|u| u.time)
        .unwrap_or_else(|| last_schedule.unwrap_or(created));
    let next = schedule
        .next_after(from.max(now))
        .or_else(|| schedule.next_after(from));
    let secs = next.map_or(300, |n| (n.as_second() - now.as_second()).max(0));
    std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0))
        + std::time::Duration::from_millis(100)
}

/// What the CronJob's spec and status say for this pass.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The schedule in its time zone.
    pub schedule: &'a Schedule,
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    /// `status.lastScheduleTime`.
    pub last_schedule: Option<Timestamp>,
    /// `spec.startingDeadlineSeconds`.
    pub starting_deadline: Option<i64>,
    /// `spec.concurrencyPolicy`.
    pub policy: &'a str,
    /// Names of the Jobs in `status.active`.
    pub active: &'a [String],
    /// The CronJob's name.
    pub name: &'a str,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due.
    Wait,
    /// The due time is past `startingDeadlineSeconds` (`MissSchedule`).
    TooLate(Timestamp),
    /// The Job of the due time exists already.
    AlreadyStarted,
    /// Forbid, and a Job is still running (`JobAlreadyActive`).
    Forbidden,
    /// Start the Job of `at` named `job`, first deleting the active Jobs if `replace`.
    Start {
        /// The scheduled time.
        at: Timestamp,
        /// The Job's name.
        job: String,
        /// Replace: the active Jobs go first.
        replace: bool,
        /// More than 100 start times were missed (`TooManyMissedTimes`).
        too_many_missed: bool,
    },
}

/// The Job name of the run scheduled at `at`: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cron_job: &str, at: Timestamp) -> String {
    format!("{cron_job}-{}", at.as_second().div_euclid(60))
}

/// Upstream's decision for one pass of an unsuspended CronJob at `now`.
pub fn decide(f: &Facts<'_>, now: Timestamp) -> Result<Decision, String> {
    let unmet = most_recent(
        f.schedule,
        f.created,
        f.last_schedule,
        f.starting_deadline,
        now,
        true,
    )?;
    let Some(at) = unmet.time else {
        return Ok(Decision::Wait);
    };
    if let Some(d) = f.starting_deadline
        && at.as_second() + d < now.as_second()
    {
        return Ok(Decision::TooLate(at));
    }
    let job = job_name(f.name, at);
    if f.active.contains(&job) || f.last_schedule == Some(at) {
        return Ok(Decision::AlreadyStarted);
    }
    if f.policy == "Forbid" && !f.active.is_empty() {
        return Ok(Decision::Forbidden);
    }
    Ok(Decision::Start {
        at,
        job,
        replace: f.policy == "Replace" && !f.active.is_empty(),
        too_many_missed: unmet.too_many_missed,
    })
}

/// A finished Job as the history limits see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its name.
    pub name: String,
    /// Complete (true) or Failed (false).
    pub succeeded: bool,
    /// `status.startTime` (creation when missing), to find the oldest.
    pub started: Option<Timestamp>,
}

/// The finished Jobs to delete: the oldest successful ones beyond `successful_limit` and the
/// oldest failed ones beyond `failed_limit` (no limit: keep all).
pub fn over_history_limits(
    finished: &[Finished],
    successful_limit: Option<i32>,
    failed_limit: Option<i32>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (succeeded, limit) in [(true, successful_limit), (false, failed_limit)] {
        let Some(limit) = limit else { continue };
        let mut group: Vec<&Finished> = finished
            .iter()
            .filter(|j| j.succeeded == succeeded)
            .collect();
        group.sort_by_key(|j| j.started);
        let extra = group
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        out.extend(group.into_iter().take(extra).map(|j| j.name.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    #[test]
    fn the_most_recent_unmet_time_and_missed_starts() {
        let every_minute = Schedule::from_str("* * * * *").expect("a schedule");
        let hourly = Schedule::from_str("@hourly").expect("a schedule");
        let created = at("2026-01-01T10:00:30Z");
        // (case, schedule, last schedule, deadline, now, most recent, too many)
        let rows = [
            (
                "nothing yet",
                &every_minute,
                None,
                None,
                "2026-01-01T10:00:50Z",
                None,
                false,
            ),
            (
                "the first",
                &every_minute,
                None,
                None,
                "2026-01-01T10:01:05Z",
                Some("2026-01-01T10:01:00Z"),
                false,
            ),
            (
                "handled",
                &every_minute,
                Some("2026-01-01T10:01:00Z"),
                None,
                "2026-01-01T10:01:30Z",
                None,
                false,
            ),
            (
                "several missed",
                &every_minute,
                Some("2026-01-01T10:01:00Z"),
                None,
                "2026-01-01T10:05:10Z",
                Some("2026-01-01T10:05:00Z"),
                false,
            ),
            (
                "too many missed",
                &every_minute,
                Some("2026-01-01T10:01:00Z"),
                None,
                "2026-01-01T13:00:10Z",
                Some("2026-01-01T13:00:00Z"),
                true,
            ),
            // The deadline moves the earliest time: far fewer are missed.
            (
                "deadline bounds the count",
                &every_minute,
                Some("2026-01-01T10:01:00Z"),
                Some(200),
                "2026-01-01T13:00:10Z",
                Some("2026-01-01T13:00:00Z"),
                false,
            ),
            (
                "deadline leaves none",
                &hourly,
                Some("2026-01-01T11:00:00Z"),
                Some(60),
                "2026-01-01T12:30:00Z",
                None,
                false,
            ),
            (
                "hourly missed",
                &hourly,
                None,
                None,
                "2026-01-01T12:30:00Z",
                Some("2026-01-01T12:00:00Z"),
                false,
            ),
        ];
        for (case, s, last, deadline, now, want, many) in rows {
            let got = most_recent(s, created, last.map(at), deadline, at(now), true).expect(case);
            assert_eq!(got.time, want.map(at), "{case}");
            assert_eq!(got.too_many_missed, many, "{case}");
        }
    }

    #[test]
    fn decisions_follow_deadline_and_concurrency_policy() {
        let s = Schedule::from_str("*/10 * * * *").expect("a schedule");
        let created = at("2026-01-01T09:55:00Z");
        let running = vec!["tick-29454350".to_owned()];
        let none: Vec<String> = Vec::new();
        let due = at("2026-01-01T10:00:00Z");
        let job = job_name("tick", due);
        let start = |replace| Decision::Start {
            at: due,
            job: job.clone(),
            replace,
            too_many_missed: false,
        };
        let mine = vec![job.clone()];
        // (case, policy, active, deadline, last schedule, now, decision)
        let rows = [
            (
                "not due",
                "Allow",
                &none,
                None,
                None,
                "2026-01-01T09:59:00Z",
                Decision::Wait,
            ),
            (
                "due",
                "Allow",
                &none,
                None,
                None,
                "2026-01-01T10:00:01Z",
                start(false),
            ),
            (
                "allow runs alongside",
                "Allow",
                &running,
                None,
                None,
                "2026-01-01T10:00:01Z",
                start(false),
            ),
            (
                "forbid waits",
                "Forbid",
                &running,
                None,
                None,
                "2026-01-01T10:00:01Z",
                Decision::Forbidden,
            ),
            (
                "forbid with none running",
                "Forbid",
                &none,
                None,
                None,
                "2026-01-01T10:00:01Z",
                start(false),
            ),
            (
                "replace",
                "Replace",
                &running,
                None,
                None,
                "2026-01-01T10:00:01Z",
                start(true),
            ),
            (
                "too late",
                "Allow",
                &none,
                Some(30),
                None,
                "2026-01-01T10:00:45Z",
                Decision::Wait,
            ),
            (
                "in time",
                "Allow",
                &none,
                Some(30),
                None,
                "2026-01-01T10:00:20Z",
                start(false),
            ),
            (
                "already started",
                "Allow",
                &mine,
                None,
                None,
                "2026-01-01T10:00:20Z",
                Decision::AlreadyStarted,
            ),
            (
                "already scheduled",
                "Allow",
                &none,
                None,
                Some("2026-01-01T10:00:00Z"),
                "2026-01-01T10:00:20Z",
                Decision::Wait,
            ),
        ];
        for (case, policy, active, deadline, last, now, want) in rows {
            let f = Facts {
                schedule: &s,
                created,
                last_schedule: last.map(at),
                starting_deadline: deadline,
                policy,
                active,
                name: "tick",
            };
            assert_eq!(decide(&f, at(now)), Ok(want), "{case}");
        }
        assert_eq!(job, "tick-29454360");
    }

    #[test]
    fn the_next_wake_is_the_next_schedule_time() {
        let s = Schedule::from_str("*/10 * * * *").expect("a schedule");
        let created = at("2026-01-01T09:55:00Z");
        // (last schedule, now, seconds)
        let rows = [
            (None, "2026-01-01T09:58:00Z", 120),
            (Some("2026-01-01T10:00:00Z"), "2026-01-01T10:00:05Z", 595),
            // Behind by one: wake for the next one from now (the due one is handled now).
            (None, "2026-01-01T10:00:05Z", 595),
        ];
        for (last, now, secs) in rows {
            let d = next_wake(&s, created, last.map(at), at(now));
            assert_eq!(d.as_secs(), secs, "{last:?} {now}");
        }
    }

    #[test]
    fn history_limits_drop_the_oldest_finished() {
        let j = |name: &str, ok: bool, t: &str| Finished {
            name: name.into(),
            succeeded: ok,
            started: Some(at(t)),
        };
        let jobs = [
            j("s1", true, "2026-01-01T10:01:00Z"),
            j("s3", true, "2026-01-01T10:03:00Z"),
            j("s2", true, "2026-01-01T10:02:00Z"),
            j("f1", false, "2026-01-01T10:01:30Z"),
            j("f2", false, "2026-01-01T10:02:30Z"),
        ];
        // (successful limit, failed limit, deleted)
        let rows = [
            (Some(3), Some(1), vec!["f1"]),
            (Some(1), Some(1), vec!["s1", "s2", "f1"]),
            (Some(0), None, vec!["s1", "s2", "s3"]),
            (None, Some(5), vec![]),
        ];
        for (ok, failed, want) in rows {
            assert_eq!(
                over_history_limits(&jobs, ok, failed),
                want,
                "{ok:?} {failed:?}"
            );
        }
    }
}
