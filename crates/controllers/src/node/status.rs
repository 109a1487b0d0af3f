//! Pod status as a pure function of what the node observed of its containers.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The node's address, and a pod's when it has no network of its own (loopback only, or
/// `hostNetwork`); probes and hooks connect to a pod's address inside its namespace.
pub(super) const LOOPBACK: &str = "127.0.0.1";

/// The state of one container as the node sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Not running: being created, backing off, or failing to start.
    Waiting {
        /// Why it waits, e.g. `ContainerCreating` or `CrashLoopBackOff`.
        reason: String,
        /// What the node knows beyond the reason (e.g. the start error), if anything.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// When its process started.
        started_at: Timestamp,
    },
    /// Its process ended.
    Terminated {
        /// The process's exit code.
        exit_code: i32,
        /// The signal that ended the process, when one did and it is known.
        signal: Option<i32>,
        /// `Completed`, `Error`, `OOMKilled`, `StartError`; by the exit code when `None`.
        reason: Option<String>,
        /// Why, when the node knows more than the exit code says.
        message: Option<String>,
        /// When its process started.
        started_at: Timestamp,
        /// When its process ended.
        finished_at: Timestamp,
    },
}

/// One container of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// The container's name.
    pub name: String,
    /// The image as the container spec gives it.
    pub image: String,
    /// The manifest digest (`sha256:…`) once the image is known.
    pub image_id: String,
    /// Its current state.
    pub state: Observed,
    /// The previous instance's end, after a restart.
    pub last_state: Option<Observed>,
    /// How many times it has been restarted.
    pub restart_count: i32,
    /// Whether a terminated container will be started again (restart policy).
    pub will_restart: bool,
    /// Whether it has ever been started.
    pub ever_started: bool,
    /// `runc://<runc id>` of the current or last instance.
    pub container_id: Option<String>,
    /// Whether the running instance has started: its startup probe succeeded (at once
    /// without one).
    pub started: bool,
    /// Whether the running instance is ready: started, and its readiness probe succeeded
    /// (at once without one).
    pub ready: bool,
    /// An init container with `restartPolicy: Always` (a sidecar).
    pub sidecar: bool,
}

impl ContainerView {
    /// A container not created yet, waiting for `reason`.
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        ContainerView {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            state: Observed::Waiting {
                reason: reason.into(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            will_restart: false,
            ever_started: false,
            container_id: None,
            started: false,
            ready: false,
            sidecar: false,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, Observed::Running { .. })
    }

    /// Ready as the status reports it: only a running instance is.
    fn is_ready(&self) -> bool {
        self.running() && self.ready
    }

    fn is_started(&self) -> bool {
        self.running() && self.started
    }

    /// Ended for good (terminated, not to be restarted).
    pub fn is_done(&self) -> bool {
        matches!(self.state, Observed::Terminated { .. }) && !self.will_restart
    }
}

/// The pod as the node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// Its init containers, in order (sidecars among them).
    pub init_containers: Vec<ContainerView>,
    /// Its regular containers, in spec order.
    pub containers: Vec<ContainerView>,
    /// When the node accepted the pod.
    pub start_time: Timestamp,
    /// When readiness last changed (the Ready conditions' transition time).
    pub ready_transition: Timestamp,
    /// When the Initialized condition last changed.
    pub initialized_transition: Timestamp,
    /// An init container failed and will not be retried (restartPolicy Never), or the pod's
    /// sandbox could not be made: the pod cannot run.
    pub init_failed: bool,
    /// Why the node evicted the pod (it then fails, reason `Evicted`), if it did.
    pub evicted: Option<String>,
    /// The pod's addresses (its network's, or the node's with `hostNetwork` or loopback only).
    pub pod_ips: Vec<String>,
}

impl PodView {
    /// Sidecars and regular containers that are not ready (the ContainersReady rule).
    fn unready(&self) -> Vec<&str> {
        self.init_containers
            .iter()
            .filter(|c| c.sidecar)
            .chain(&self.containers)
            .filter(|c| !c.is_ready())
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Init containers not done: regular ones not completed, sidecars not started.
    fn incomplete(&self) -> Vec<&str> {
        self.init_containers
            .iter()
            .filter(|c| {
                if c.sidecar {
                    !c.is_started()
                } else {
                    !matches!(c.state, Observed::Terminated { exit_code: 0, .. })
                }
            })
            .map(|c| c.name.as_str())
            .collect()
    }

    /// True when every container (and sidecar) is ready and the pod is not finished.
    pub fn ready(&self) -> bool {
        !self.containers.is_empty()
            && self.unready().is_empty()
            && !matches!(self.phase(), "Succeeded" | "Failed")
    }

    /// The Initialized condition: every init container done, or a regular container started
    /// already (the pod was initialized before).
    pub fn initialized(&self) -> bool {
        !self.init_failed
            && (self.incomplete().is_empty()
                || self.containers.iter().any(|c| c.ever_started)
                || self.phase() == "Succeeded")
    }

    /// The pod phase (kubelet's rules): Pending while init containers run or until every
    /// container started; Succeeded/Failed once every container has ended for good; else
    /// Running.
    pub fn phase(&self) -> &'static str {
        if self.init_failed || self.evicted.is_some() {
            return "Failed";
        }
        let any_started = self.containers.iter().any(|c| c.ever_started);
        let pending_init = self
            .init_containers
            .iter()
            .filter(|c| !c.sidecar)
            .any(|c| !matches!(c.state, Observed::Terminated { exit_code: 0, .. }));
        let pending_sidecar = self
            .init_containers
            .iter()
            .filter(|c| c.sidecar)
            .any(|c| !c.is_started() && c.last_state.is_none());
        if pending_init || (pending_sidecar && !any_started) {
            return "Pending";
        }
        if !self.containers.is_empty() && self.containers.iter().all(ContainerView::is_done) {
            let failed = self.containers.iter().any(
                |c| matches!(c.state, Observed::Terminated { exit_code, .. } if exit_code != 0),
            );
            return if failed { "Failed" } else { "Succeeded" };
        }
        if self.containers.iter().all(|c| c.ever_started) {
            "Running"
        } else {
            "Pending"
        }
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn state(o: &Observed) -> ContainerState {
    match o {
        Observed::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        Observed::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        Observed::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                signal: *signal,
                reason: Some(reason.clone().unwrap_or_else(|| {
                    if *exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .to_owned()
                })),
                message: message.clone(),
                started_at: Some(time(*started_at)),
                finished_at: Some(time(*finished_at)),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

impl Observed {
    /// A state as the API's status records it (what an earlier run of the node wrote).
    pub fn from_api(s: &ContainerState) -> Option<Observed> {
        if let Some(t) = &s.terminated {
            let finished_at = t.finished_at.as_ref().map_or_else(Timestamp::now, |f| f.0);
            return Some(Observed::Terminated {
                exit_code: t.exit_code,
                signal: t.signal,
                reason: t.reason.clone(),
                message: t.message.clone(),
                started_at: t.started_at.as_ref().map_or(finished_at, |s| s.0),
                finished_at,
            });
        }
        if let Some(r) = &s.running {
            return Some(Observed::Running {
                started_at: r.started_at.as_ref().map_or_else(Timestamp::now, |s| s.0),
            });
        }
        s.waiting.as_ref().map(|w| Observed::Waiting {
            reason: w.reason.clone().unwrap_or_default(),
            message: w.message.clone(),
        })
    }
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ready: c.is_ready(),
        started: Some(c.is_started()),
        restart_count: c.restart_count,
        state: Some(state(&c.state)),
        last_state: c.last_state.as_ref().map(state),
        ..Default::default()
    }
}

/// `[a b]`, as Go prints a list of names in the kubelet's condition messages.
fn names(list: &[&str]) -> String {
    format!("[{}]", list.join(" "))
}

/// The `status` the node writes for a pod.
pub fn pod_status(view: &PodView) -> PodStatus {
    let phase = view.phase();
    let condition =
        |type_: &str, status: bool, at: Timestamp, why: Option<(&str, String)>| PodCondition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            last_transition_time: Some(time(at)),
            reason: why.as_ref().map(|(r, _)| (*r).to_owned()),
            message: why.and_then(|(_, m)| (!m.is_empty()).then_some(m)),
            ..Default::default()
        };
    let ready = view.ready();
    let not_ready = (!ready).then(|| match phase {
        "Failed" => ("PodFailed", String::new()),
        "Succeeded" => ("PodCompleted", String::new()),
        _ => {
            let unready = view.unready();
            let message = if unready.is_empty() {
                String::new()
            } else {
                format!("containers with unready status: {}", names(&unready))
            };
            ("ContainersNotReady", message)
        }
    });
    let initialized = view.initialized();
    let not_initialized = (!initialized).then(|| {
        let incomplete = view.incomplete();
        let message = if incomplete.is_empty() {
            String::new()
        } else {
            format!("containers with incomplete status: {}", names(&incomplete))
        };
        ("ContainersNotInitialized", message)
    });
    let initialized_why = (initialized && phase == "Succeeded" && !view.init_containers.is_empty())
        .then(|| ("PodCompleted", String::new()));
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(vec![
            condition("PodScheduled", true, view.start_time, None),
            condition(
                "Initialized",
                initialized,
                view.initialized_transition,
                not_initialized.or(initialized_why),
            ),
            condition(
                "ContainersReady",
                ready,
                view.ready_transition,
                not_ready.clone(),
            ),
            condition("Ready", ready, view.ready_transition, not_ready),
        ]),
        init_container_statuses: (!view.init_containers.is_empty())
            .then(|| view.init_containers.iter().map(container_status).collect()),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        reason: view.evicted.as_ref().map(|_| "Evicted".to_owned()),
        message: view.evicted.clone(),
        start_time: Some(time(view.start_time)),
        host_ip: Some(LOOPBACK.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: LOOPBACK.to_owned(),
        }]),
        pod_ip: Some(
            view.pod_ips
                .first()
                .cloned()
                .unwrap_or_else(|| LOOPBACK.to_owned()),
        ),
        pod_ips: Some(if view.pod_ips.is_empty() {
            vec![PodIP {
                ip: LOOPBACK.to_owned(),
            }]
        } else {
            view.pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn c(state: Observed, will_restart: bool, ever_started: bool) -> ContainerView {
        let running = matches!(state, Observed::Running { .. });
        ContainerView {
            image_id: "sha256:ab".into(),
            state,
            will_restart,
            ever_started,
            started: running,
            ready: running,
            ..ContainerView::waiting("app", "r.io/a:1", "ContainerCreating")
        }
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            init_containers: Vec::new(),
            containers,
            start_time: t(0),
            ready_transition: t(1),
            initialized_transition: t(0),
            init_failed: false,
            evicted: None,
            pod_ips: Vec::new(),
        }
    }

    fn waiting() -> Observed {
        Observed::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        }
    }
    fn running() -> Observed {
        Observed::Running { started_at: t(1) }
    }
    fn exited(code: i32) -> Observed {
        Observed::Terminated {
            exit_code: code,
            signal: None,
            reason: None,
            message: None,
            started_at: t(1),
            finished_at: t(2),
        }
    }

    #[test]
    fn phases() {
        let cases = vec![
            (
                "creating",
                vec![c(waiting(), false, false)],
                "Pending",
                false,
            ),
            ("running", vec![c(running(), false, true)], "Running", true),
            (
                "one of two still creating",
                vec![c(running(), false, true), c(waiting(), false, false)],
                "Pending",
                false,
            ),
            (
                "exited 0, never restarts",
                vec![c(exited(0), false, true)],
                "Succeeded",
                false,
            ),
            (
                "exited 1, never restarts",
                vec![c(exited(1), false, true)],
                "Failed",
                false,
            ),
            (
                "exited 1, restarting",
                vec![c(exited(1), true, true)],
                "Running",
                false,
            ),
            (
                "backing off after a crash",
                vec![c(
                    Observed::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: None,
                    },
                    true,
                    true,
                )],
                "Running",
                false,
            ),
            (
                "one done, one running",
                vec![c(exited(0), false, true), c(running(), false, true)],
                "Running",
                false,
            ),
        ];
        for (name, containers, phase, ready) in cases {
            let v = view(containers);
            assert_eq!(v.phase(), phase, "{name}");
            assert_eq!(v.ready(), ready, "{name}");
        }
    }

    #[test]
    fn status_fields() {
        let s = pod_status(&view(vec![c(exited(3), false, true)]));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let conds = s.conditions.unwrap();
        let types: Vec<(&str, &str)> = conds
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", "False"),
                ("Ready", "False")
            ]
        );
        let cs = &s.container_statuses.unwrap()[0];
        let term = cs.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(term.exit_code, 3);
        assert_eq!(term.reason.as_deref(), Some("Error"));
        assert_eq!(term.finished_at, Some(Time(t(2))));
        assert_eq!(cs.image_id, "sha256:ab");
        assert_eq!(s.start_time, Some(Time(t(0))));
    }

    fn condition(s: &PodStatus, type_: &str) -> (String, Option<String>, Option<String>) {
        let c = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn readiness_follows_probes() {
        // (case, started, ready, Ready condition, reason, message, status started/ready)
        let rows = [
            ("ready", true, true, "True", None, None, (true, true)),
            (
                "readiness probe not passed",
                true,
                false,
                "False",
                Some("ContainersNotReady"),
                Some("containers with unready status: [app]"),
                (true, false),
            ),
            (
                "startup probe not passed",
                false,
                false,
                "False",
                Some("ContainersNotReady"),
                Some("containers with unready status: [app]"),
                (false, false),
            ),
        ];
        for (name, started, ready, want, reason, message, flags) in rows {
            let mut app = c(running(), false, true);
            app.started = started;
            app.ready = ready;
            let s = pod_status(&view(vec![app]));
            assert_eq!(s.phase.as_deref(), Some("Running"), "{name}");
            let (status, r, m) = condition(&s, "Ready");
            assert_eq!(
                (status.as_str(), r.as_deref(), m.as_deref()),
                (want, reason, message),
                "{name}"
            );
            assert_eq!(condition(&s, "ContainersReady").0, want, "{name}");
            let cs = &s.container_statuses.as_ref().unwrap()[0];
            assert_eq!((cs.started == Some(true), cs.ready), flags, "{name}");
        }
        let failed = pod_status(&view(vec![c(exited(1), false, true)]));
        assert_eq!(condition(&failed, "Ready").1.as_deref(), Some("PodFailed"));
        let done = pod_status(&view(vec![c(exited(0), false, true)]));
        assert_eq!(condition(&done, "Ready").1.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn init_containers_and_sidecars() {
        let init = |state: Observed, last: Option<Observed>| ContainerView {
            name: "init".into(),
            state,
            last_state: last,
            ..ContainerView::waiting("init", "r.io/a:1", "PodInitializing")
        };
        let sidecar = |started: bool| ContainerView {
            name: "side".into(),
            state: running(),
            ever_started: true,
            started,
            ready: started,
            sidecar: true,
            ..ContainerView::waiting("side", "r.io/a:1", "PodInitializing")
        };
        let waiting_app = || {
            c(
                Observed::Waiting {
                    reason: "PodInitializing".into(),
                    message: None,
                },
                false,
                false,
            )
        };
        let crash_loop = || Observed::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        };
        // (case, init containers, containers, phase, Initialized, its message)
        let rows = [
            (
                "init running",
                vec![init(running(), None)],
                vec![waiting_app()],
                "Pending",
                "False",
                Some("containers with incomplete status: [init]"),
            ),
            (
                "init failed, retried",
                vec![init(crash_loop(), Some(exited(1)))],
                vec![waiting_app()],
                "Pending",
                "False",
                Some("containers with incomplete status: [init]"),
            ),
            (
                "init done",
                vec![init(exited(0), None)],
                vec![c(running(), false, true)],
                "Running",
                "True",
                None,
            ),
            (
                "sidecar not started yet",
                vec![sidecar(false)],
                vec![waiting_app()],
                "Pending",
                "False",
                Some("containers with incomplete status: [side]"),
            ),
            (
                "sidecar started",
                vec![sidecar(true)],
                vec![c(running(), false, true)],
                "Running",
                "True",
                None,
            ),
        ];
        for (name, init_containers, containers, phase, initialized, message) in rows {
            let mut v = view(containers);
            v.init_containers = init_containers;
            let s = pod_status(&v);
            assert_eq!(s.phase.as_deref(), Some(phase), "{name}");
            let (status, _, m) = condition(&s, "Initialized");
            assert_eq!(
                (status.as_str(), m.as_deref()),
                (initialized, message),
                "{name}"
            );
            assert_eq!(
                s.init_container_statuses.as_ref().map(Vec::len),
                Some(1),
                "{name}"
            );
        }
        // A sidecar that is not ready keeps the pod from being ready.
        let mut v = view(vec![c(running(), false, true)]);
        let mut side = sidecar(true);
        side.ready = false;
        v.init_containers = vec![side];
        assert_eq!(
            condition(&pod_status(&v), "Ready").2.as_deref(),
            Some("containers with unready status: [side]")
        );
        // A regular init container that failed with restartPolicy Never fails the pod.
        let mut v = view(vec![waiting_app()]);
        v.init_containers = vec![init(exited(1), None)];
        v.init_failed = true;
        assert_eq!(pod_status(&v).phase.as_deref(), Some("Failed"));
    }
}
