//! CronJob schedules as kube-controller-manager reads them (`cron.ParseStandard` of
//! robfig/cron v3): five fields (minute, hour, day of month, month, day of week) with numbers,
//! `*`, `?`, ranges, steps, lists and English month and weekday names, or one of the
//! descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//! `@hourly` and `@every <duration>`; times are computed in a `timeZone` from the system's
//! IANA database (UTC when none is given). The fields are checked here with robfig's rules and
//! messages and then evaluated by the `croner` crate, which is a superset of that syntax.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// Why a schedule or time zone was refused, in upstream's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

/// When a schedule fires.
#[derive(Debug, Clone)]
enum When {
    /// A five-field cron pattern.
    Pattern(Box<Cron>),
    /// `@every <duration>`: a constant delay (whole seconds, at least one).
    Every(i64),
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    when: When,
    tz: TimeZone,
}

/// `(name, lowest, highest)` of the five fields, in order.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The time zone named `name` (UTC when `None`), refused as upstream's validation refuses it.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, ScheduleError> {
    let Some(name) = name else {
        return Ok(TimeZone::UTC);
    };
    if name.is_empty() {
        return Err(ScheduleError(
            "timeZone must be nil or non-empty string".into(),
        ));
    }
    let unknown = || ScheduleError(format!("unknown time zone {name}"));
    for part in name.split('/') {
        let valid = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+'));
        if part == "." || part == ".." || part.starts_with('-') || !valid {
            return Err(unknown());
        }
    }
    if name.eq_ignore_ascii_case("local") {
        return Err(ScheduleError(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        ));
    }
    TimeZone::get(name).map_err(|_| unknown())
}

/// A Go duration as `@every` takes it (`90s`, `1h30m`, `1.5h`), in whole seconds.
fn go_duration(s: &str) -> Result<i64, ScheduleError> {
    let bad = || {
        ScheduleError(format!(
            "failed to parse duration @every {s}: time: invalid duration \"{s}\""
        ))
    };
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    // robfig rounds the delay down to whole seconds and runs at least every second.
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    // Finite and bounded just above: the cast cannot truncate.
    let secs = total.floor() as i64;
    Ok(secs.max(1))
}

/// Checks one field with robfig's rules (`N`, `*`, `?`, `a-b`, `x/step`, lists, names).
fn check_field(
    field: &str,
    (_, lo, hi): (&str, u32, u32),
    names: &[&str],
) -> Result<(), ScheduleError> {
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if let Some(step) = step {
            let n: u32 = step.parse().map_err(|_| {
                ScheduleError(format!(
                    "failed to parse int from {step}: strconv.Atoi: parsing \"{step}\": invalid syntax"
                ))
            })?;
            if n == 0 {
                return Err(ScheduleError(format!(
                    "step of range should be a positive number: {item}"
                )));
            }
        }
        if range == "*" || range == "?" {
            continue;
        }
        let value = |v: &str| -> Result<u32, ScheduleError> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
                let offset = if names.len() == 12 { 1 } else { 0 };
                return Ok(u32::try_from(i).unwrap_or(0) + offset);
            }
            v.parse().map_err(|_| {
                ScheduleError(format!(
                    "failed to parse int from {v}: strconv.Atoi: parsing \"{v}\": invalid syntax"
                ))
            })
        };
        let (start, end) = match range.split_once('-') {
            Some((a, b)) => (value(a)?, value(b)?),
            None => {
                let v = value(range)?;
                (v, v)
            }
        };
        if start < lo {
            return Err(ScheduleError(format!(
                "beginning of range ({start}) below minimum ({lo}): {item}"
            )));
        }
        if end > hi {
            return Err(ScheduleError(format!(
                "end of range ({end}) above maximum ({hi}): {item}"
            )));
        }
        if start > end {
            return Err(ScheduleError(format!(
                "beginning of range ({start}) beyond end of range ({end}): {item}"
            )));
        }
    }
    Ok(())
}

impl Schedule {
    /// Parses `schedule` as `cron.ParseStandard` does (no `TZ=` prefix: CronJobs give
    /// `timeZone`), to be evaluated in `tz`.
    pub fn parse(schedule: &str, tz: TimeZone) -> Result<Schedule, ScheduleError> {
        let s = schedule.trim();
        if s.is_empty() {
            return Err(ScheduleError("empty spec string".into()));
        }
        let pattern = if let Some(d) = s.strip_prefix('@') {
            if let Some(every) = d.strip_prefix("every ") {
                let secs = go_duration(every.trim())?;
                return Ok(Schedule {
                    when: When::Every(secs),
                    tz,
                });
            }
            match d {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                _ => return Err(ScheduleError(format!("unrecognized descriptor: {s}"))),
            }
        } else {
            s
        };
        let fields: Vec<&str> = pattern.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError(format!(
                "expected exactly 5 fields, found {}: [{}]",
                fields.len(),
                fields.join(" ")
            )));
        }
        for (i, (field, spec)) in fields.iter().zip(FIELDS).enumerate() {
            let names: &[&str] = match i {
                3 => &MONTHS,
                4 => &DAYS,
                _ => &[],
            };
            check_field(field, spec, names)?;
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError(e.to_string()))?;
        Ok(Schedule {
            when: When::Pattern(Box::new(cron)),
            tz,
        })
    }

    /// The first time the schedule fires strictly after `t` (whole seconds), if any.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.when {
            When::Every(secs) => {
                let whole = Timestamp::from_second(t.as_second()).ok()?;
                whole.checked_add(SignedDuration::from_secs(*secs)).ok()
            }
            When::Pattern(cron) => {
                let mut z: Zoned = t.to_zoned(self.tz.clone());
                // croner moves a time inside a daylight-saving gap to the end of the gap;
                // robfig/cron skips it (the wall clock never shows it), so such a time is passed
                // over here.
                for _ in 0..8 {
                    let n = cron.find_next_occurrence(&z, false).ok()?;
                    if cron.is_time_matching(&n).unwrap_or(false) {
                        return Some(n.timestamp());
                    }
                    z = n;
                }
                None
            }
        }
    }

    /// The time zone the schedule is evaluated in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// A schedule evaluated in UTC.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s, TimeZone::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    #[test]
    fn next_times_follow_the_schedule_and_the_time_zone() {
        // (case, schedule, time zone, after, next)
        let rows = [
            (
                "every minute",
                "* * * * *",
                None,
                "2026-01-01T10:00:30Z",
                "2026-01-01T10:01:00Z",
            ),
            (
                "strictly after",
                "* * * * *",
                None,
                "2026-01-01T10:01:00Z",
                "2026-01-01T10:02:00Z",
            ),
            (
                "every 5 minutes",
                "*/5 * * * *",
                None,
                "2026-01-01T10:01:00Z",
                "2026-01-01T10:05:00Z",
            ),
            (
                "hourly",
                "@hourly",
                None,
                "2026-01-01T10:01:00Z",
                "2026-01-01T11:00:00Z",
            ),
            (
                "midnight",
                "@midnight",
                None,
                "2026-01-01T10:01:00Z",
                "2026-01-02T00:00:00Z",
            ),
            (
                "weekly is sunday",
                "@weekly",
                None,
                "2026-01-01T10:00:00Z",
                "2026-01-04T00:00:00Z",
            ),
            (
                "names",
                "0 9 * JAN MON-FRI",
                None,
                "2026-01-03T10:00:00Z",
                "2026-01-05T09:00:00Z",
            ),
            (
                "every 90s",
                "@every 1m30s",
                None,
                "2026-01-01T10:00:00Z",
                "2026-01-01T10:01:30Z",
            ),
            (
                "in a time zone",
                "0 9 * * *",
                Some("Europe/Berlin"),
                "2026-01-01T00:00:00Z",
                "2026-01-01T08:00:00Z",
            ),
            (
                "summer time",
                "0 9 * * *",
                Some("Europe/Berlin"),
                "2026-07-01T00:00:00Z",
                "2026-07-01T07:00:00Z",
            ),
            // 2026-03-29 02:30 does not exist in Berlin: the next day's is the next time.
            (
                "spring gap",
                "30 2 * * *",
                Some("Europe/Berlin"),
                "2026-03-28T12:00:00Z",
                "2026-03-30T00:30:00Z",
            ),
            // 2026-10-25 02:30 happens twice in Berlin: the first one counts.
            (
                "autumn fold",
                "30 2 * * *",
                Some("Europe/Berlin"),
                "2026-10-24T12:00:00Z",
                "2026-10-25T00:30:00Z",
            ),
            (
                "new york",
                "0 0 1 * *",
                Some("America/New_York"),
                "2026-01-15T00:00:00Z",
                "2026-02-01T05:00:00Z",
            ),
        ];
        for (case, schedule, tz, after, next) in rows {
            let tz = time_zone(tz).expect("a time zone");
            let s = Schedule::parse(schedule, tz).expect(case);
            assert_eq!(s.next_after(at(after)), Some(at(next)), "{case}");
        }
    }

    #[test]
    fn bad_schedules_are_refused_in_robfigs_words() {
        // (schedule, message)
        let rows = [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            (
                "0 * * * * *",
                "expected exactly 5 fields, found 6: [0 * * * * *]",
            ),
            ("@often", "unrecognized descriptor: @often"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("* * * * 7", "end of range (7) above maximum (6): 7"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            (
                "* * L * *",
                "failed to parse int from L: strconv.Atoi: parsing \"L\": invalid syntax",
            ),
        ];
        for (schedule, message) in rows {
            let err = Schedule::from_str(schedule).expect_err(schedule);
            assert_eq!(err.0, message, "{schedule}");
        }
    }

    #[test]
    fn time_zones_are_checked_as_upstream() {
        // (name, error)
        let rows = [
            (Some("Europe/Berlin"), None),
            (Some("UTC"), None),
            (None, None),
            (Some("Mars/Olympus"), Some("unknown time zone Mars/Olympus")),
            (
                Some("../etc/passwd"),
                Some("unknown time zone ../etc/passwd"),
            ),
            (Some(""), Some("timeZone must be nil or non-empty string")),
            (
                Some("Local"),
                Some(
                    "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
                ),
            ),
        ];
        for (name, want) in rows {
            let got = time_zone(name).err().map(|e| e.0);
            assert_eq!(got.as_deref(), want, "{name:?}");
        }
    }
}
