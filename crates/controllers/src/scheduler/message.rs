//! kube-scheduler's words: the reason each filter gives for one node, and the `FailedScheduling`
//! message that sums them up over every node (`FitError.Error()` upstream), so `kubectl describe
//! pod` reads as it does on any cluster.

use std::collections::BTreeMap;

/// NodeUnschedulable: `spec.unschedulable` and no toleration of it.
pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// NodeAffinity: `nodeSelector` or required node affinity not met.
pub const AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
/// NodePorts: a host port the pod wants is taken on the node.
pub const PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
/// NodeResourcesFit: the node runs as many pods as it allows.
pub const TOO_MANY_PODS: &str = "Too many pods";
/// Said when there is no node at all (`ErrNoNodesAvailable`).
pub const NO_NODES: &str = "no nodes available to schedule pods";
/// The preemption verdict for a node where evicting pods could help (imc never preempts).
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// The preemption verdict for a node no eviction could make fit.
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// The `PodScheduled` reason of a pod that fits nowhere.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";
/// The `PodScheduled` reason of a pod held back by `spec.schedulingGates`.
pub const REASON_GATED: &str = "SchedulingGated";
/// The `PodScheduled` message of a pod held back by `spec.schedulingGates`.
pub const GATED: &str = "Scheduling is blocked due to non-empty scheduling gates";

/// TaintToleration: the first taint (NoSchedule or NoExecute) the pod does not tolerate.
pub fn untolerated_taint(key: &str, value: &str) -> String {
    format!("node(s) had untolerated taint {{{key}: {value}}}")
}

/// NodeResourcesFit: not enough of `resource` left on the node.
pub fn insufficient(resource: &str) -> String {
    format!("Insufficient {resource}")
}

/// Why one node was filtered out: the failing filter's reasons (NodeResourcesFit may give
/// several) and whether evicting pods could make room (upstream `Unschedulable`, against
/// `UnschedulableAndUnresolvable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Reasons, as the filter words them.
    pub reasons: Vec<String>,
    /// Whether preemption could help on this node.
    pub resolvable: bool,
}

impl Rejection {
    /// A rejection no eviction can undo (taints, affinity, an unschedulable node).
    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Self {
            reasons: vec![reason.into()],
            resolvable: false,
        }
    }

    /// A rejection that freeing resources or ports could undo.
    pub fn resolvable(reasons: Vec<String>) -> Self {
        Self {
            reasons,
            resolvable: true,
        }
    }
}

/// The message of a pod that fits on none of `rejections` (one per node):
/// `0/N nodes are available: <histogram>. preemption: 0/N nodes are available: <histogram>.`
/// Each histogram counts nodes per reason, `"<count> <reason>"` entries sorted as strings and
/// joined by `", "`, as upstream prints them.
pub fn fit_error(rejections: &[Rejection]) -> String {
    if rejections.is_empty() {
        return NO_NODES.to_owned();
    }
    let n = rejections.len();
    let filter = histogram(rejections.iter().flat_map(|r| r.reasons.iter().cloned()));
    let preemption = histogram(rejections.iter().map(|r| {
        if r.resolvable {
            NO_VICTIMS.to_owned()
        } else {
            NOT_HELPFUL.to_owned()
        }
    }));
    format!(
        "0/{n} nodes are available: {filter}. preemption: 0/{n} nodes are available: {preemption}."
    )
}

/// `"<count> <reason>"` per distinct reason, sorted as strings, joined by `", "`.
fn histogram(reasons: impl Iterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut entries: Vec<String> = counts.iter().map(|(r, c)| format!("{c} {r}")).collect();
    entries.sort();
    entries.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Rejection {
        Rejection::resolvable(vec![insufficient("memory")])
    }

    #[test]
    fn fit_error_messages() {
        let cases: Vec<(&str, Vec<Rejection>, &str)> = vec![
            (
                "no node at all",
                vec![],
                "no nodes available to schedule pods",
            ),
            (
                "one node short of memory",
                vec![memory()],
                "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are \
                 available: 1 No preemption victims found for incoming pod.",
            ),
            (
                "one node whose labels do not match",
                vec![Rejection::unresolvable(AFFINITY)],
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. \
                 preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            ),
            (
                "one tainted node",
                vec![Rejection::unresolvable(untolerated_taint(
                    "dedicated",
                    "gpu",
                ))],
                "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. \
                 preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            ),
            (
                "a taint without a value",
                vec![Rejection::unresolvable(untolerated_taint(
                    "node.kubernetes.io/not-ready",
                    "",
                ))],
                "0/1 nodes are available: 1 node(s) had untolerated taint \
                 {node.kubernetes.io/not-ready: }. preemption: 0/1 nodes are available: 1 \
                 Preemption is not helpful for scheduling.",
            ),
            (
                "cpu and memory short on one node: both reasons, counted once each",
                vec![Rejection::resolvable(vec![
                    insufficient("cpu"),
                    insufficient("memory"),
                ])],
                "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. preemption: \
                 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            ),
            (
                "three nodes, mixed: the histogram is sorted as text",
                vec![memory(), memory(), Rejection::unresolvable(UNSCHEDULABLE)],
                "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient memory. \
                 preemption: 0/3 nodes are available: 1 Preemption is not helpful for \
                 scheduling, 2 No preemption victims found for incoming pod.",
            ),
            (
                "ports and pod count",
                vec![
                    Rejection::resolvable(vec![PORTS.to_owned()]),
                    Rejection::resolvable(vec![TOO_MANY_PODS.to_owned()]),
                ],
                "0/2 nodes are available: 1 Too many pods, 1 node(s) didn't have free ports for \
                 the requested pod ports. preemption: 0/2 nodes are available: 2 No preemption \
                 victims found for incoming pod.",
            ),
        ];
        for (case, rejections, want) in cases {
            assert_eq!(fit_error(&rejections), want, "{case}");
        }
    }
}
