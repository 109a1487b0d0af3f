//! The probing of one running container instance, as the kubelet's prober workers do it: one
//! task per probe, each waiting `initialDelaySeconds` from the container's start, then probing
//! every `periodSeconds`. Liveness and readiness probes wait until the container has
//! started (its startup probe succeeded). A result is set once `successThreshold` successes or
//! `failureThreshold` failures come in a row; a probe that could not be run at all is not
//! counted. Every failure gives an `Unhealthy` event. A failed startup or liveness probe ends
//! its worker (the container is killed and a new instance gets new workers).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Outcome, ProbeSpec, ProbeType, Target};

/// What the probes of a container instance tell its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::node) enum ProbeUpdate {
    /// The startup probe succeeded: the container has started.
    Started,
    /// The readiness probe's result changed.
    Ready(bool),
    /// The startup or liveness probe failed: the container must be killed.
    Failed(ProbeType),
}

/// The probes a container has.
#[derive(Debug, Clone, Default)]
pub(in crate::node) struct Probes {
    pub startup: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
}

impl Probes {
    /// The probes of container `c`.
    pub(in crate::node) fn of(c: &Container) -> Self {
        let spec =
            |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().map(|p| ProbeSpec::of(p, c));
        Probes {
            startup: spec(&c.startup_probe),
            liveness: spec(&c.liveness_probe),
            readiness: spec(&c.readiness_probe),
        }
    }

    /// The probe of type `t`.
    pub(in crate::node) fn get(&self, t: ProbeType) -> Option<&ProbeSpec> {
        match t {
            ProbeType::Startup => self.startup.as_ref(),
            ProbeType::Liveness => self.liveness.as_ref(),
            ProbeType::Readiness => self.readiness.as_ref(),
        }
    }
}

/// Reports an event about the pod: (reason, message).
pub(in crate::node) type Report = Arc<dyn Fn(&'static str, String) + Send + Sync>;

/// The running probe workers of one container instance; dropping it stops them.
pub(in crate::node) struct ProbeSet {
    _tasks: JoinSet<()>,
    /// Their updates, in order.
    pub updates: mpsc::Receiver<ProbeUpdate>,
}

/// Starts the workers of `probes` for a container instance that started at `started_at`.
pub(in crate::node) fn start(
    probes: &Probes,
    target: Target,
    started_at: Instant,
    report: Report,
) -> ProbeSet {
    let (tx, updates) = mpsc::channel(8);
    let started = Arc::new(watch::Sender::new(probes.startup.is_none()));
    let mut tasks = JoinSet::new();
    for kind in [
        ProbeType::Startup,
        ProbeType::Liveness,
        ProbeType::Readiness,
    ] {
        if let Some(spec) = probes.get(kind) {
            tasks.spawn(work(
                kind,
                spec.clone(),
                target.clone(),
                started_at,
                started.clone(),
                tx.clone(),
                report.clone(),
            ));
        }
    }
    ProbeSet {
        _tasks: tasks,
        updates,
    }
}

/// One probe's worker.
async fn work(
    kind: ProbeType,
    spec: ProbeSpec,
    target: Target,
    started_at: Instant,
    started: Arc<watch::Sender<bool>>,
    tx: mpsc::Sender<ProbeUpdate>,
    report: Report,
) {
    tokio::time::sleep_until(started_at + spec.initial_delay).await;
    if kind != ProbeType::Startup {
        // Liveness and readiness probes wait for the startup probe.
        let mut started = started.subscribe();
        if started.wait_for(|s| *s).await.is_err() {
            return;
        }
    }
    let mut ticker = tokio::time::interval(spec.period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut thresholds = Thresholds::new(kind, spec.success_threshold, spec.failure_threshold);
    loop {
        ticker.tick().await;
        let outcome = super::run(&spec.action, &target, spec.timeout).await;
        if let Some((reason, message)) = super::event(kind, &outcome) {
            report(reason, message);
        }
        if matches!(outcome, Outcome::Error(_)) {
            continue;
        }
        let Some(result) = thresholds.observe(outcome.succeeded()) else {
            continue;
        };
        let update = match (kind, result) {
            (ProbeType::Startup, true) => {
                started.send_replace(true);
                ProbeUpdate::Started
            }
            (ProbeType::Startup | ProbeType::Liveness, false) => ProbeUpdate::Failed(kind),
            (ProbeType::Liveness, true) => continue,
            (ProbeType::Readiness, ready) => ProbeUpdate::Ready(ready),
        };
        if tx.send(update).await.is_err() {
            return;
        }
        if matches!(update, ProbeUpdate::Started | ProbeUpdate::Failed(_)) {
            // A startup probe is done once the container started; a failed probe waits for
            // the next instance.
            return;
        }
    }
}

/// A probe's result from its runs (the kubelet worker's `resultRun` rule).
#[derive(Debug, Clone)]
pub(in crate::node) struct Thresholds {
    success: u32,
    failure: u32,
    /// The last run's success, and how many runs in a row had it.
    last: Option<bool>,
    run: u32,
    /// The result set (initially the kubelet's: readiness failed, liveness succeeded,
    /// startup unknown).
    current: Option<bool>,
}

impl Thresholds {
    /// Thresholds of a probe of type `kind`.
    pub(in crate::node) fn new(kind: ProbeType, success: u32, failure: u32) -> Self {
        Thresholds {
            success: success.max(1),
            failure: failure.max(1),
            last: None,
            run: 0,
            current: match kind {
                ProbeType::Readiness => Some(false),
                ProbeType::Liveness => Some(true),
                ProbeType::Startup => None,
            },
        }
    }

    /// Counts a run; the new result when it changes.
    pub(in crate::node) fn observe(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok { self.success } else { self.failure };
        if self.run < needed || self.current == Some(ok) {
            return None;
        }
        self.current = Some(ok);
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        // (case, probe, success threshold, failure threshold, runs, results set)
        type Row = (
            &'static str,
            ProbeType,
            u32,
            u32,
            &'static str,
            Vec<Option<bool>>,
        );
        let rows: Vec<Row> = vec![
            (
                "readiness succeeds at once",
                ProbeType::Readiness,
                1,
                3,
                "+",
                vec![Some(true)],
            ),
            (
                "readiness needs two successes in a row",
                ProbeType::Readiness,
                2,
                3,
                "+-++",
                vec![None, None, None, Some(true)],
            ),
            (
                "readiness fails after three failures in a row",
                ProbeType::Readiness,
                1,
                3,
                "+--+---",
                vec![Some(true), None, None, None, None, None, Some(false)],
            ),
            (
                "not ready from the start: failures change nothing",
                ProbeType::Readiness,
                1,
                1,
                "--",
                vec![None, None],
            ),
            (
                "liveness fails at the threshold",
                ProbeType::Liveness,
                1,
                2,
                "+-+--",
                vec![None, None, None, None, Some(false)],
            ),
            (
                "startup succeeds",
                ProbeType::Startup,
                1,
                3,
                "-+",
                vec![None, Some(true)],
            ),
            (
                "startup fails",
                ProbeType::Startup,
                1,
                2,
                "--",
                vec![None, Some(false)],
            ),
        ];
        for (name, kind, success, failure, runs, want) in rows {
            let mut t = Thresholds::new(kind, success, failure);
            let got: Vec<Option<bool>> = runs.chars().map(|c| t.observe(c == '+')).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
