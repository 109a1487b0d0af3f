//! The pure rules of upstream's DaemonSet controller: which nodes should run the daemon pod
//! (`NodeShouldRunDaemonPod`: node name, `nodeSelector` and required node affinity, NoSchedule
//! and NoExecute taints against the pod's tolerations plus the automatic ones), the daemon pod
//! for one node (pinned with the `matchFields metadata.name` node-affinity term, labelled with
//! `controller-revision-hash`), and what one pass does: create a pod on each node that lacks
//! one, delete pods on nodes that should not run them, duplicates and failed pods, replace old
//! pods within `maxUnavailable` or beside them within `maxSurge` (RollingUpdate) or leave them
//! (OnDelete), and the status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::pods::{self, availability, is_ready};
use super::rolling::scaled_value;
use crate::scheduler::fit::{self, NodeFacts};

/// The label carrying the hash of the template a pod was made from (and of each revision).
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The tolerations every daemon pod gets (`AddOrUpdateDaemonPodTolerations`): `(key, effect)`,
/// operator Exists.
const AUTOMATIC_TOLERATIONS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// Whether a node should run the daemon pod, and whether a pod already there may stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// A pod should run there.
    pub should_run: bool,
    /// A pod already there may keep running (it tolerates the NoExecute taints).
    pub should_continue: bool,
}

/// `template` with the automatic daemon tolerations added (those it lacks).
fn with_tolerations(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    let spec = t.spec.get_or_insert_with(Default::default);
    let host_network = spec.host_network == Some(true);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let mut wanted: Vec<(&str, &str)> = AUTOMATIC_TOLERATIONS.to_vec();
    if host_network {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in wanted {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.to_owned()),
                operator: Some("Exists".to_owned()),
                effect: Some(effect.to_owned()),
                ..Default::default()
            });
        }
    }
    t
}

/// The daemon pod of `template` for `node` (not yet pinned), as the fit check sees it.
fn candidate(template: &PodTemplateSpec) -> Pod {
    let t = with_tolerations(template);
    Pod {
        metadata: t.metadata.unwrap_or_default(),
        spec: t.spec,
        status: None,
    }
}

/// Upstream's `NodeShouldRunDaemonPod` for the DaemonSet's `template` on `node`.
pub fn node_fit(template: &PodTemplateSpec, node: &NodeFacts) -> Fit {
    let pod = candidate(template);
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("");
    if !(node_name.is_empty() || node_name == node.name) || !fit::affinity_matches(&pod, node) {
        return Fit {
            should_run: false,
            should_continue: false,
        };
    }
    if fit::untolerated_taint(&pod, node, &["NoSchedule", "NoExecute"]).is_some() {
        return Fit {
            should_run: false,
            should_continue: fit::untolerated_taint(&pod, node, &["NoExecute"]).is_none(),
        };
    }
    Fit {
        should_run: true,
        should_continue: true,
    }
}

/// The required node-affinity terms of a pod pinned to `node`: upstream's
/// `ReplaceDaemonSetPodNodeNameNodeAffinity` keeps each term's `matchExpressions` and replaces
/// its `matchFields` with `metadata.name In [node]`.
fn pin(affinity: Option<Affinity>, node: &str) -> Affinity {
    let field = NodeSelectorRequirement {
        key: "metadata.name".to_owned(),
        operator: "In".to_owned(),
        values: Some(vec![node.to_owned()]),
    };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields = Some(vec![field.clone()]);
    }
    affinity
}

/// The daemon pod of `template` for `node`, owned by the DaemonSet and labelled with `hash`.
pub fn daemon_pod(
    template: &PodTemplateSpec,
    prefix: &str,
    owner: OwnerReference,
    node: &str,
    hash: &str,
) -> Pod {
    let mut pod = pods::pod_from_template(&with_tolerations(template), prefix, owner);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_LABEL.to_owned(), hash.to_owned());
    if let Some(spec) = pod.spec.as_mut() {
        spec.affinity = Some(pin(spec.affinity.take(), node));
    }
    pod
}

/// The node a daemon pod is for: its `nodeName`, or the node its `matchFields` term names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_owned());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// One node as a pass sees it.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The node's name.
    pub name: String,
    /// Whether it should run the pod.
    pub fit: Fit,
    /// The DaemonSet's pods for the node (those being deleted too), oldest first.
    pub pods: Vec<Pod>,
}

/// What one pass does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Nodes to create a daemon pod for.
    pub create_on: Vec<String>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// The status after the pass's observations (before its writes land).
    pub status: DaemonSetStatus,
    /// Seconds until a pod becomes available (minReadySeconds), if one will.
    pub next_available: Option<i64>,
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// What to do for `nodes` given the current template `hash`, the spec and `now`.
pub fn plan(
    spec: &DaemonSetSpec,
    nodes: &[NodeState],
    hash: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Plan {
    let mut out = Plan::default();
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let available = |p: &Pod, next: &mut Option<i64>| match availability(p, min_ready, now) {
        Ok(()) => true,
        Err(left) => {
            if let Some(l) = left {
                *next = Some(next.map_or(l, |n: i64| n.min(l)));
            }
            false
        }
    };
    let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
    let (mut ready, mut avail, mut updated) = (0, 0, 0);
    let rolling = rolling(spec);
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let desired_total =
        i32::try_from(nodes.iter().filter(|n| n.fit.should_run).count()).unwrap_or(i32::MAX);
    let max_surge = if rolling {
        scaled_value(ru.and_then(|r| r.max_surge.as_ref()), desired_total, true)
    } else {
        0
    };
    // Nodes whose only pod is old and available: candidates for a rolling replacement.
    let mut old_available: Vec<(String, String)> = Vec::new();
    let mut unavailable_nodes = 0;
    let mut surging = 0;
    for node in nodes {
        let live = node
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none());
        let running: Vec<&Pod> = live
            .clone()
            .filter(|p| pods::phase(p) != "Failed")
            .collect();
        out.delete
            .extend(live.filter(|p| pods::phase(p) == "Failed").map(name_of));
        // A pod still terminating holds the node (its ports, say) until it is gone.
        let terminating = node.pods.len() > running.len();
        if !node.fit.should_run {
            if !node.pods.is_empty() {
                misscheduled += 1;
            }
            if !node.fit.should_continue {
                out.delete.extend(running.iter().map(|p| name_of(p)));
            }
            continue;
        }
        desired += 1;
        // The status reads the oldest pod of the node, as upstream.
        let Some(first) = running.first() else {
            if !terminating {
                out.create_on.push(node.name.clone());
            }
            unavailable_nodes += 1;
            continue;
        };
        current += 1;
        if hash_of(first) == Some(hash) {
            updated += 1;
        }
        if is_ready(first) {
            ready += 1;
        }
        let first_available = available(first, &mut out.next_available);
        if first_available {
            avail += 1;
        }
        // Several pods of one kind on a node: the oldest of each stays.
        let news: Vec<&Pod> = running
            .iter()
            .copied()
            .filter(|p| hash_of(p) == Some(hash))
            .collect();
        let olds: Vec<&Pod> = running
            .iter()
            .copied()
            .filter(|p| hash_of(p) != Some(hash))
            .collect();
        out.delete.extend(news.iter().skip(1).map(|p| name_of(p)));
        out.delete.extend(olds.iter().skip(1).map(|p| name_of(p)));
        if !first_available {
            unavailable_nodes += 1;
        }
        let (Some(old), true) = (olds.first(), rolling) else {
            continue;
        };
        let old_available_now = first_available && hash_of(first) != Some(hash);
        match news.first() {
            // Surge: the old pod goes once its replacement is available.
            Some(new) => {
                surging += 1;
                if available(new, &mut out.next_available) {
                    out.delete.push(name_of(old));
                }
            }
            // An old pod that is not available anyway is replaced at once.
            None if !old_available_now => {
                if max_surge > 0 {
                    out.create_on.push(node.name.clone());
                } else {
                    out.delete.push(name_of(old));
                }
            }
            None => old_available.push((node.name.clone(), name_of(old))),
        }
    }
    if rolling {
        if max_surge > 0 {
            // Start replacements beside old pods, within maxSurge nodes at once.
            let budget = usize::try_from(max_surge - surging).unwrap_or(0);
            out.create_on
                .extend(old_available.into_iter().take(budget).map(|(n, _)| n));
        } else {
            let max_unavailable =
                scaled_value(ru.and_then(|r| r.max_unavailable.as_ref()), desired, true).max(1);
            let budget = usize::try_from(max_unavailable - unavailable_nodes).unwrap_or(0);
            out.delete
                .extend(old_available.into_iter().take(budget).map(|(_, p)| p));
        }
    }
    out.status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(avail),
        number_unavailable: Some(desired - avail),
        updated_number_scheduled: Some(updated),
        observed_generation: generation,
        ..Default::default()
    };
    out
}

fn rolling(spec: &DaemonSetSpec) -> bool {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};

    use super::*;

    fn template(spec: Value) -> PodTemplateSpec {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "i:1"}]);
        serde_json::from_value(json!({"metadata": {"labels": {"app": "agent"}}, "spec": spec}))
            .expect("a template")
    }

    fn node(labels: Value, taints: Value, ready: bool) -> NodeFacts {
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .expect("a node");
        NodeFacts::of(&n)
    }

    #[test]
    fn nodes_fit_as_upstream_decides() {
        let plain = node(json!({"disk": "ssd"}), json!([]), true);
        let tainted = node(
            json!({}),
            json!([{"key": "gpu", "effect": "NoSchedule"}]),
            true,
        );
        let evicting = node(
            json!({}),
            json!([{"key": "gpu", "effect": "NoExecute"}]),
            true,
        );
        let not_ready = node(json!({}), json!([]), false);
        let cordoned = node(
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
            true,
        );
        let (run, stay, neither) = (
            Fit {
                should_run: true,
                should_continue: true,
            },
            Fit {
                should_run: false,
                should_continue: true,
            },
            Fit {
                should_run: false,
                should_continue: false,
            },
        );
        // (case, template spec, node, fit)
        let rows = [
            ("plain", json!({}), &plain, run),
            (
                "selector matches",
                json!({"nodeSelector": {"disk": "ssd"}}),
                &plain,
                run,
            ),
            (
                "selector misses",
                json!({"nodeSelector": {"disk": "hdd"}}),
                &plain,
                neither,
            ),
            (
                "affinity on the name",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
                &plain,
                run,
            ),
            (
                "affinity on another name",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}),
                &plain,
                neither,
            ),
            (
                "affinity on labels",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]}}}}),
                &plain,
                run,
            ),
            ("untolerated NoSchedule stays", json!({}), &tainted, stay),
            (
                "tolerated NoSchedule",
                json!({"tolerations": [{"key": "gpu", "operator": "Exists"}]}),
                &tainted,
                run,
            ),
            ("untolerated NoExecute goes", json!({}), &evicting, neither),
            // Not Ready implies not-ready:NoSchedule; the automatic NoExecute toleration keeps
            // running pods.
            ("not ready", json!({}), &not_ready, stay),
            ("cordoned is tolerated", json!({}), &cordoned, run),
            (
                "another node name",
                json!({"nodeName": "n2"}),
                &plain,
                neither,
            ),
        ];
        for (case, spec, n, want) in rows {
            assert_eq!(node_fit(&template(spec), n), want, "{case}");
        }
    }

    #[test]
    fn daemon_pods_are_pinned_tolerant_and_labelled() {
        let t = template(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]}}}}),
        );
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: "agent".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let pod = daemon_pod(&t, "agent", owner, "n1", "abc");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .map(String::as_str),
            Some("abc")
        );
        let v = serde_json::to_value(&pod).expect("json");
        let term = &v["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(
            term["matchFields"],
            json!([{"key": "metadata.name", "operator": "In", "values": ["n1"]}])
        );
        assert_eq!(term["matchExpressions"][0]["key"], "disk");
        let tolerations = v["spec"]["tolerations"].as_array().expect("tolerations");
        assert_eq!(tolerations.len(), 6);
        assert_eq!(target_node(&pod).as_deref(), Some("n1"));
    }

    fn pod(name: &str, hash: &str, ready: bool, phase: &str) -> Pod {
        let mut v = json!({"metadata": {"name": name, "labels": {REVISION_LABEL: hash}},
            "spec": {"containers": []}, "status": {"phase": phase}});
        if phase == "terminating" {
            v["status"]["phase"] = json!("Running");
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:09:00Z");
        }
        if ready {
            v["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        }
        serde_json::from_value(v).expect("a pod")
    }

    fn state(name: &str, should_run: bool, pods: Vec<Pod>) -> NodeState {
        NodeState {
            name: name.into(),
            fit: Fit {
                should_run,
                should_continue: should_run,
            },
            pods,
        }
    }

    /// (case, spec, nodes, create on, delete, (desired, current, updated, available,
    /// misscheduled))
    type Row<'a> = (
        &'a str,
        &'a DaemonSetSpec,
        Vec<NodeState>,
        Vec<&'a str>,
        Vec<&'a str>,
        (i32, i32, i32, i32, i32),
    );

    #[test]
    fn passes_create_delete_and_roll_within_max_unavailable() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().expect("a time");
        let spec = |strategy: Value| -> DaemonSetSpec {
            serde_json::from_value(
                json!({"selector": {}, "template": {}, "updateStrategy": strategy}),
            )
            .expect("a spec")
        };
        let rolling1 =
            spec(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}));
        let rolling2 =
            spec(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}));
        let on_delete = spec(json!({"type": "OnDelete"}));
        let surge = spec(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        );
        // (case, spec, nodes, create on, delete, (desired, current, updated, available, misscheduled))
        let rows: Vec<Row> = vec![
            (
                "a pod per node",
                &rolling1,
                vec![
                    state("n1", true, vec![]),
                    state("n2", true, vec![pod("a", "new", true, "Running")]),
                ],
                vec!["n1"],
                vec![],
                (2, 1, 1, 1, 0),
            ),
            (
                "a node that should not run it",
                &rolling1,
                vec![state("n1", false, vec![pod("a", "new", true, "Running")])],
                vec![],
                vec!["a"],
                (0, 0, 0, 0, 1),
            ),
            (
                "duplicates and failed pods",
                &rolling1,
                vec![state(
                    "n1",
                    true,
                    vec![
                        pod("old", "new", true, "Running"),
                        pod("dup", "new", true, "Running"),
                        pod("dead", "new", false, "Failed"),
                    ],
                )],
                vec![],
                vec!["dead", "dup"],
                (1, 1, 1, 1, 0),
            ),
            (
                "one old pod at a time",
                &rolling1,
                vec![
                    state("n1", true, vec![pod("a", "old", true, "Running")]),
                    state("n2", true, vec![pod("b", "old", true, "Running")]),
                ],
                vec![],
                vec!["a"],
                (2, 2, 0, 2, 0),
            ),
            (
                "none while one is unavailable",
                &rolling1,
                vec![
                    state("n1", true, vec![pod("a", "new", false, "Running")]),
                    state("n2", true, vec![pod("b", "old", true, "Running")]),
                ],
                vec![],
                vec![],
                (2, 2, 1, 1, 0),
            ),
            (
                "two at a time",
                &rolling2,
                vec![
                    state("n1", true, vec![pod("a", "old", true, "Running")]),
                    state("n2", true, vec![pod("b", "old", true, "Running")]),
                ],
                vec![],
                vec!["a", "b"],
                (2, 2, 0, 2, 0),
            ),
            (
                "an unavailable old pod goes at once",
                &rolling1,
                vec![state("n1", true, vec![pod("a", "old", false, "Running")])],
                vec![],
                vec!["a"],
                (1, 1, 0, 0, 0),
            ),
            (
                "surge starts a new pod beside an old one",
                &surge,
                vec![
                    state("n1", true, vec![pod("a", "old", true, "Running")]),
                    state("n2", true, vec![pod("b", "old", true, "Running")]),
                ],
                vec!["n1"],
                vec![],
                (2, 2, 0, 2, 0),
            ),
            (
                "surge waits for the new pod",
                &surge,
                vec![
                    state(
                        "n1",
                        true,
                        vec![
                            pod("a", "old", true, "Running"),
                            pod("a2", "new", false, "Running"),
                        ],
                    ),
                    state("n2", true, vec![pod("b", "old", true, "Running")]),
                ],
                vec![],
                vec![],
                (2, 2, 0, 2, 0),
            ),
            (
                "surge deletes the old pod once the new one is available",
                &surge,
                vec![state(
                    "n1",
                    true,
                    vec![
                        pod("a", "old", true, "Running"),
                        pod("a2", "new", true, "Running"),
                    ],
                )],
                vec![],
                vec!["a"],
                (1, 1, 0, 1, 0),
            ),
            (
                "a terminating pod holds its node",
                &rolling1,
                vec![state(
                    "n1",
                    true,
                    vec![pod("a", "old", false, "terminating")],
                )],
                vec![],
                vec![],
                (1, 0, 0, 0, 0),
            ),
            (
                "on delete leaves old pods",
                &on_delete,
                vec![state("n1", true, vec![pod("a", "old", true, "Running")])],
                vec![],
                vec![],
                (1, 1, 0, 1, 0),
            ),
        ];
        for (case, spec, nodes, create, delete, counts) in rows {
            let p = plan(spec, &nodes, "new", Some(1), now);
            assert_eq!(p.create_on, create, "{case}");
            assert_eq!(p.delete, delete, "{case}");
            let s = &p.status;
            assert_eq!(
                (
                    s.desired_number_scheduled,
                    s.current_number_scheduled,
                    s.updated_number_scheduled.unwrap_or(0),
                    s.number_available.unwrap_or(0),
                    s.number_misscheduled
                ),
                counts,
                "{case}"
            );
        }
    }
}
