//! Pod status as a pure function of what the node observed of its containers.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The node's address, and a pod's when it has no network of its own (loopback only, or
/// `hostNetwork`).
const LOOPBACK: &str = "127.0.0.1";

/// The state of one container as the node sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Not running: being created, backing off, or failing to start.
    Waiting {
        reason: String,
        message: Option<String>,
    },
    /// Its process runs.
    Running { started_at: Timestamp },
    /// Its process ended.
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        /// `Completed`, `Error`, `OOMKilled`, `StartError`; by the exit code when `None`.
        reason: Option<String>,
        /// Why, when the node knows more than the exit code says.
        message: Option<String>,
        started_at: Timestamp,
        finished_at: Timestamp,
    },
}

/// One container of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    /// The manifest digest (`sha256:…`) once the image is known.
    pub image_id: String,
    pub state: Observed,
    /// The previous instance's end, after a restart.
    pub last_state: Option<Observed>,
    pub restart_count: i32,
    /// Whether a terminated container will be started again (restart policy).
    pub will_restart: bool,
    /// Whether it has ever been started.
    pub ever_started: bool,
    /// `runc://<runc id>` of the current or last instance.
    pub container_id: Option<String>,
}

/// The pod as the node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub containers: Vec<ContainerView>,
    /// When the node accepted the pod.
    pub start_time: Timestamp,
    /// When readiness last changed (the Ready conditions' transition time).
    pub ready_transition: Timestamp,
    /// The init containers failed (the pod cannot run).
    pub init_failed: bool,
    /// Why the node evicted the pod (it then fails, reason `Evicted`), if it did.
    pub evicted: Option<String>,
    /// The pod's addresses (its network's, or the node's with `hostNetwork` or loopback only).
    pub pod_ips: Vec<String>,
}

impl PodView {
    /// True when every container runs.
    pub fn ready(&self) -> bool {
        !self.containers.is_empty()
            && self
                .containers
                .iter()
                .all(|c| matches!(c.state, Observed::Running { .. }))
    }

    /// The pod phase (kubelet's rules): Succeeded/Failed once every container has ended for good,
    /// Running once every container started and one runs or will restart, else Pending.
    pub fn phase(&self) -> &'static str {
        if self.init_failed || self.evicted.is_some() {
            return "Failed";
        }
        let ended =
            |c: &ContainerView| matches!(c.state, Observed::Terminated { .. }) && !c.will_restart;
        if !self.containers.is_empty() && self.containers.iter().all(ended) {
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

/// The `status` the node writes for a pod.
pub fn pod_status(view: &PodView) -> PodStatus {
    let ready = view.ready();
    let phase = view.phase();
    let condition = |type_: &str, status: bool, at: Timestamp| PodCondition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        last_transition_time: Some(time(at)),
        reason: (!status && type_.ends_with("Ready")).then(|| {
            if phase == "Succeeded" || phase == "Failed" {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }
            .to_owned()
        }),
        ..Default::default()
    };
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(vec![
            condition("PodScheduled", true, view.start_time),
            condition("Initialized", !view.init_failed, view.start_time),
            condition("ContainersReady", ready, view.ready_transition),
            condition("Ready", ready, view.ready_transition),
        ]),
        container_statuses: Some(
            view.containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    image_id: c.image_id.clone(),
                    container_id: c.container_id.clone(),
                    ready: matches!(c.state, Observed::Running { .. }),
                    started: Some(matches!(c.state, Observed::Running { .. })),
                    restart_count: c.restart_count,
                    state: Some(state(&c.state)),
                    last_state: c.last_state.as_ref().map(state),
                    ..Default::default()
                })
                .collect(),
        ),
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
        ContainerView {
            name: "app".into(),
            image: "r.io/a:1".into(),
            image_id: "sha256:ab".into(),
            state,
            last_state: None,
            restart_count: 0,
            will_restart,
            ever_started,
            container_id: None,
        }
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            containers,
            start_time: t(0),
            ready_transition: t(1),
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
}
