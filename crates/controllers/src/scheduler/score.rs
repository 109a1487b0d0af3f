//! Choosing among the nodes a pod fits on. In order: the node holding the pod's matched cache
//! disk (issue 13: a hook the caller supplies; without one no node is preferred), fewer
//! untolerated `PreferNoSchedule` taints, more room left (upstream's LeastAllocated over cpu
//! and memory), then the node name, so the choice is deterministic.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::Pod;

use super::fit::{NodeFacts, NodeUsage, PodDemand, untolerated_taint};

/// What one feasible node scores for a pod; larger is better, the name breaks ties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    /// The node holds the cache disk the pod is matched to.
    pub holds_cache: bool,
    /// Untolerated `PreferNoSchedule` taints (fewer is better).
    pub soft_taints: usize,
    /// LeastAllocated, 0–100: the share of cpu and memory left after the pod, averaged.
    pub room: u64,
    /// The node's name.
    pub node: String,
}

impl Score {
    /// The score of placing `pod` on `node`; `holds_cache` is the caller's verdict.
    pub fn of(
        pod: &Pod,
        demand: &PodDemand,
        node: &NodeFacts,
        usage: &NodeUsage,
        holds_cache: bool,
    ) -> Score {
        let soft_taints = node
            .taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| {
                let only = NodeFacts {
                    taints: vec![(*t).clone()],
                    ..Default::default()
                };
                untolerated_taint(pod, &only, &["PreferNoSchedule"]).is_some()
            })
            .count();
        let cpu = least_allocated(
            usage.score_cpu.saturating_add(demand.score_cpu),
            node.allocatable.get("cpu").copied().unwrap_or(0),
        );
        let memory = least_allocated(
            usage.score_memory.saturating_add(demand.score_memory),
            node.allocatable.get("memory").copied().unwrap_or(0),
        );
        Score {
            holds_cache,
            soft_taints,
            room: (cpu + memory) / 2,
            node: node.name.clone(),
        }
    }
}

/// Upstream's `leastRequestedScore`: `(capacity - requested) * 100 / capacity`, 0 when the
/// node has none of it or is over-committed.
pub fn least_allocated(requested: u64, capacity: u64) -> u64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    let left = u128::from(capacity - requested) * 100 / u128::from(capacity);
    u64::try_from(left).unwrap_or(100)
}

impl Ord for Score {
    /// Better scores sort first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .holds_cache
            .cmp(&self.holds_cache)
            .then(self.soft_taints.cmp(&other.soft_taints))
            .then(other.room.cmp(&self.room))
            .then(self.node.cmp(&other.node))
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn score(holds_cache: bool, soft_taints: usize, room: u64, node: &str) -> Score {
        Score {
            holds_cache,
            soft_taints,
            room,
            node: node.into(),
        }
    }

    #[test]
    fn least_allocated_table() {
        for (requested, capacity, want) in [
            (0, 4000, 100),
            (1000, 4000, 75),
            (4000, 4000, 0),
            (5000, 4000, 0),
            (1, 0, 0),
            (1, 3, 66),
        ] {
            assert_eq!(
                least_allocated(requested, capacity),
                want,
                "{requested}/{capacity}"
            );
        }
    }

    #[test]
    fn best_first() {
        let cases = [
            (
                "the node with the cache wins over more room",
                score(true, 0, 10, "b"),
                score(false, 0, 90, "a"),
            ),
            (
                "fewer PreferNoSchedule taints win over more room",
                score(false, 0, 10, "b"),
                score(false, 1, 90, "a"),
            ),
            (
                "more room wins",
                score(false, 0, 60, "b"),
                score(false, 0, 50, "a"),
            ),
            (
                "ties go by name",
                score(false, 0, 50, "a"),
                score(false, 0, 50, "b"),
            ),
        ];
        for (case, better, worse) in cases {
            let mut v = [worse.clone(), better.clone()];
            v.sort();
            assert_eq!(v[0], better, "{case}");
        }
    }

    #[test]
    fn soft_taints_and_room_come_from_the_node() {
        let pod: Pod = serde_json::from_value(json!({"spec": {
            "tolerations": [{"key": "tolerated", "operator": "Exists"}],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}))
        .unwrap();
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": [
                {"key": "spot", "effect": "PreferNoSchedule"},
                {"key": "tolerated", "effect": "PreferNoSchedule"}]},
            "status": {"allocatable": {"cpu": "4", "memory": "4Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        let demand = PodDemand::of(&pod).unwrap();
        let s = Score::of(
            &pod,
            &demand,
            &NodeFacts::of(&node),
            &NodeUsage::default(),
            false,
        );
        // cpu: 3 of 4 left (75); memory: 3 of 4 left (75).
        assert_eq!(s, score(false, 1, 75, "n"));
    }
}
