//! The Nodes the scheduler places pods on, each with the [`NodeFacts`] its filters read,
//! computed once per change of the object rather than once per pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::fit::NodeFacts;

/// Every Node, by name (sorted, so a scheduling pass is deterministic).
#[derive(Default)]
pub struct NodeSet {
    nodes: BTreeMap<String, (Arc<Node>, Arc<NodeFacts>)>,
}

/// Whether a node change may let a pending pod fit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// Only what the scheduler does not read changed (a heartbeat, say).
    No,
    /// A node was added, or its labels, taints, schedulability, allocatable or readiness
    /// changed.
    Yes,
}

impl NodeSet {
    /// A node was added or changed.
    pub fn apply(&mut self, node: Node) -> Changed {
        let facts = NodeFacts::of(&node);
        let changed = match self.nodes.get(&facts.name) {
            Some((_, old)) if **old == facts => Changed::No,
            _ => Changed::Yes,
        };
        self.nodes
            .insert(facts.name.clone(), (Arc::new(node), Arc::new(facts)));
        changed
    }

    /// A node was deleted.
    pub fn delete(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.nodes.remove(name);
        }
    }

    /// Takes over `fresh`, built from a new list (after the watch restarted); changed if any
    /// node is new or different.
    pub fn replace(&mut self, fresh: NodeSet) -> Changed {
        let changed = fresh
            .nodes
            .iter()
            .any(|(name, (_, facts))| self.nodes.get(name).is_none_or(|(_, old)| old != facts));
        *self = fresh;
        if changed { Changed::Yes } else { Changed::No }
    }

    /// Every node with its facts, by name.
    pub fn all(&self) -> Vec<(Arc<Node>, Arc<NodeFacts>)> {
        self.nodes.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: serde_json::Value, heartbeat: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": labels},
            "status": {"allocatable": {"cpu": "2"},
                       "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_scheduling_relevant_changes_count() {
        let mut set = NodeSet::default();
        assert_eq!(
            set.apply(node(json!({}), "2025-01-01T00:00:00Z")),
            Changed::Yes
        );
        // A heartbeat.
        assert_eq!(
            set.apply(node(json!({}), "2025-01-01T00:00:10Z")),
            Changed::No
        );
        // kubectl label node.
        assert_eq!(
            set.apply(node(json!({"disk": "ssd"}), "2025-01-01T00:00:10Z")),
            Changed::Yes
        );
        assert_eq!(set.all().len(), 1);
        let mut fresh = NodeSet::default();
        fresh.apply(node(json!({"disk": "ssd"}), "2025-01-01T00:00:20Z"));
        assert_eq!(set.replace(fresh), Changed::No);
        set.delete(&node(json!({}), "2025-01-01T00:00:30Z"));
        assert!(set.all().is_empty());
    }
}
