//! Timestamps in the formats Kubernetes uses, and kubectl's short "age" rendering.

use jiff::Timestamp;

/// `metav1.Time` for now: RFC 3339, whole seconds, UTC.
pub fn now_time() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `metav1.Time` `secs` seconds from now.
pub fn time_after(secs: i64) -> String {
    let t = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// How long ago `ts` (an RFC 3339 string) was, as kubectl prints it ("5s", "3m12s", "2d").
pub fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|s| s.parse::<Timestamp>().ok()) else {
        return "<unknown>".to_owned();
    };
    let secs = Timestamp::now().as_second() - t.as_second();
    human_duration(secs.max(0))
}

/// kubectl's `duration.HumanDuration` for whole seconds.
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (125, "2m5s"),
            (900, "15m"),
            (3 * 3600 + 60, "3h1m"),
            (86400 * 3, "3d"),
            (86400 * 800, "2y"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
        assert_eq!(age(Some("garbage")), "<unknown>");
    }
}
