//! When a container that ended is started again, and how long the node waits first: the pod's
//! `restartPolicy` (and a sidecar's own `restartPolicy: Always`) and the kubelet's crash-loop
//! back-off (`kuberuntime_manager.go` `doBackOff` over `flowcontrol.Backoff`: 10 s doubling to
//! 5 min, forgotten after a container ran for twice that). Pure.

use std::time::Duration;

use tokio::time::Instant;

/// The first back-off after a restart (the kubelet's `backOffPeriod`).
pub(super) const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off (the kubelet's `MaxContainerBackOff`).
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The policy as the pod spells it (`Always` when unset, as the API defaults it).
    pub(super) fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` by itself is started again.
    pub(super) fn restarts_after_exit(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }

    /// Whether a container the node killed (a failed liveness or startup probe, a failed
    /// postStart hook) is started again: unless the policy is `Never`, whatever its exit code.
    pub(super) fn restarts_after_kill(self) -> bool {
        self != RestartPolicy::Never
    }
}

/// One container's crash-loop back-off, as the kubelet keeps it per container: the first
/// restart is immediate, each next one waits twice as long as the one before (10 s, 20 s, …,
/// 5 min), counted from when the container last finished; a container that ran for ten
/// minutes since its last restart starts over at 10 s.
#[derive(Debug, Clone, Default)]
pub(super) struct Backoff {
    /// The current back-off and when it was last advanced (a restart).
    entry: Option<(Duration, Instant)>,
}

impl Backoff {
    /// How much longer a container that finished at `finished` must wait before it is started
    /// again at `now`; `None` when it may start now.
    pub(super) fn remaining(&self, finished: Instant, now: Instant) -> Option<Duration> {
        let (backoff, updated) = self.entry?;
        if expired(updated, now) {
            return None;
        }
        let waited = now.saturating_duration_since(finished);
        (waited < backoff).then(|| backoff - waited)
    }

    /// The back-off a container waits out now (for messages); the initial one before any.
    pub(super) fn current(&self) -> Duration {
        self.entry.map_or(INITIAL_BACKOFF, |(b, _)| b)
    }

    /// Records a restart at `now` (the kubelet's `Backoff.Next`): the next back-off doubles,
    /// or starts over after a long enough run.
    pub(super) fn restarted(&mut self, now: Instant) {
        let next = match self.entry {
            Some((b, updated)) if !expired(updated, now) => (b * 2).min(MAX_BACKOFF),
            _ => INITIAL_BACKOFF,
        };
        self.entry = Some((next, now));
    }
}

/// Whether a back-off last advanced at `updated` is forgotten at `now`: the container has been
/// fine for twice the longest back-off.
fn expired(updated: Instant, now: Instant) -> bool {
    now.saturating_duration_since(updated) > MAX_BACKOFF * 2
}

/// The back-off as the kubelet prints a Go duration in its messages: `10s`, `1m20s`, `5m0s`.
pub(super) fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        // (policy, exit code, restarts after an exit, restarts after a kill)
        let rows = [
            ("Always", 0, true, true),
            ("Always", 1, true, true),
            ("OnFailure", 0, false, true),
            ("OnFailure", 137, true, true),
            ("Never", 1, false, false),
        ];
        for (policy, code, exit, kill) in rows {
            let p = RestartPolicy::parse(Some(policy));
            assert_eq!(p.restarts_after_exit(code), exit, "{policy} {code}");
            assert_eq!(p.restarts_after_kill(), kill, "{policy}");
        }
        assert_eq!(RestartPolicy::parse(None), RestartPolicy::Always);
    }

    #[test]
    fn crash_loop_back_off_doubles_to_five_minutes() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        // A crash loop: the container runs one second each time, then restarts as soon as the
        // back-off allows; (waited before the restart) for each restart.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let finished = now + Duration::from_secs(1);
            now = finished;
            let wait = b.remaining(finished, now).unwrap_or_default();
            waits.push(wait.as_secs());
            now += wait;
            assert_eq!(b.remaining(finished, now), None);
            b.restarted(now);
        }
        assert_eq!(waits, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(go_duration(b.current()), "5m0s");
    }

    #[test]
    fn back_off_counts_from_the_finish_and_resets_after_ten_minutes_of_running() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.restarted(t0);
        b.restarted(t0 + Duration::from_secs(1));
        // 20 s back-off; the container ran 15 s before finishing: 20 s from the finish.
        let finished = t0 + Duration::from_secs(16);
        assert_eq!(
            b.remaining(finished, finished + Duration::from_secs(5)),
            Some(Duration::from_secs(15))
        );
        // Running for more than ten minutes since the last restart: no wait, and the next
        // back-off starts over.
        let later = t0 + Duration::from_secs(1 + 601);
        assert_eq!(b.remaining(later, later), None);
        b.restarted(later);
        assert_eq!(b.current(), INITIAL_BACKOFF);
    }

    #[test]
    fn go_durations() {
        for (secs, want) in [(10, "10s"), (80, "1m20s"), (300, "5m0s"), (3661, "1h1m1s")] {
            assert_eq!(go_duration(Duration::from_secs(secs)), want);
        }
    }
}
