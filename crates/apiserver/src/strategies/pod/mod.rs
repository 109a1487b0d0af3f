//! Pod: defaults (`defaults.rs`), validation (`validation.rs`), update rules (`update.rs`) and
//! the QoS class (`qos.rs`) as kube-apiserver 1.32 has them, the real `v1 Pod` schema from
//! k8s-openapi, kubectl's columns, the `log` and `binding` subresources, and graceful deletion
//! of pods bound to a node.

pub mod defaults;
pub mod qos;
pub mod update;
pub mod validation;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::Strategy;
use crate::clock;
use crate::error::Cause;
use crate::resources::{Cell, Column, ResourceDef, age_column, none_if_missing};
use crate::schema::Schema;

/// The Pod strategy.
pub struct PodStrategy;

impl Strategy for PodStrategy {
    fn default(&self, obj: &mut Value) {
        defaults::default_pod(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        defaults::admit_new_pod(obj);
        let mut status = json!({"phase": "Pending", "qosClass": qos::qos_class(obj)});
        let gated = obj
            .pointer("/spec/schedulingGates")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty());
        if gated {
            status["conditions"] = json!([{"type": "PodScheduled", "status": "False",
                "reason": "SchedulingGated", "message": "Scheduling is blocked due to non-empty scheduling gates",
                "lastProbeTime": null, "lastTransitionTime": clock::now_time()}]);
        }
        obj["status"] = status;
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validation::validate_pod(obj)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        update::validate_pod_update(new, old)
    }

    /// A pod bound to a node is only marked: the request's `gracePeriodSeconds`, else the
    /// pod's `terminationGracePeriodSeconds`, else 30. Its node stops the containers, then
    /// deletes it with grace period 0 (as kubelet and virtual-kubelet do).
    fn grace_period(&self, obj: &Value, options: &Value) -> Option<i64> {
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !bound {
            return None;
        }
        Some(
            options
                .get("gracePeriodSeconds")
                .and_then(Value::as_i64)
                .or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0),
        )
    }
}

/// `v1` Pod.
pub fn def() -> ResourceDef {
    let mut pod = ResourceDef::new("", "v1", "Pod", "pods", true)
        .short(&["po"])
        .with_status()
        .with_strategy(PodStrategy);
    pod.log_subresource = true;
    pod.binding_subresource = true;
    pod.categories = vec!["all".into()];
    pod.schema = Schema::of::<Pod>();
    pod.columns = vec![
        Column::new("Ready", Cell::Func(pod_ready)),
        Column::new("Status", Cell::Func(pod_status)),
        Column::new("Restarts", Cell::Func(pod_restarts)),
        age_column(),
        Column::new("IP", Cell::Func(|o| none_if_missing(o, ".status.podIP"))).wide(),
        Column::new("Node", Cell::Func(|o| none_if_missing(o, ".spec.nodeName"))).wide(),
    ];
    pod
}

/// The READY column as kube-apiserver's pod printer computes it: ready regular containers, and
/// sidecars (`restartPolicy: Always` init containers) counted among them once started and
/// ready.
fn pod_ready(o: &Value) -> Value {
    let sidecars: Vec<&str> = o
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|c| c["restartPolicy"] == "Always")
                .filter_map(|c| c["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
        + sidecars.len();
    let statuses = |path: &str| {
        o.pointer(path)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let ready = statuses("/status/containerStatuses")
        .iter()
        .filter(|c| c["ready"] == json!(true))
        .count()
        + statuses("/status/initContainerStatuses")
            .iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| sidecars.contains(&n)))
            .filter(|c| c["started"] == json!(true) && c["ready"] == json!(true))
            .count();
    Value::String(format!("{ready}/{total}"))
}

/// The STATUS column as kubectl's pod printer computes it: an init container's progress or
/// failure (`Init:1/2`, `Init:Error`, `Init:CrashLoopBackOff`) until the pod is initialized,
/// then the first regular container's waiting or terminated reason, else the phase.
fn pod_status(o: &Value) -> Value {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    if let Some(reason) = o.pointer("/status/reason") {
        return reason.clone();
    }
    let initialized = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Initialized" && c["status"] == "True")
        });
    let sidecars: Vec<&str> = o
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|c| c["restartPolicy"] == "Always")
                .filter_map(|c| c["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let inits = o
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !initialized {
        let total = o
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for (i, c) in inits.iter().enumerate() {
            let terminated = c.pointer("/state/terminated");
            let sidecar = c["name"].as_str().is_some_and(|n| sidecars.contains(&n));
            if terminated.is_some_and(|t| t["exitCode"] == 0) || (sidecar && c["started"] == true) {
                continue;
            }
            if let Some(t) = terminated {
                return match t["reason"].as_str().filter(|r| !r.is_empty()) {
                    Some(r) => json!(format!("Init:{r}")),
                    None => json!(format!("Init:ExitCode:{}", t["exitCode"])),
                };
            }
            if let Some(r) = c
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty() && *r != "PodInitializing")
            {
                return json!(format!("Init:{r}"));
            }
            return json!(format!("Init:{i}/{total}"));
        }
    }
    let waiting = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|s| {
            s.iter().find_map(|c| {
                c.pointer("/state/waiting/reason")
                    .or(c.pointer("/state/terminated/reason"))
            })
        });
    if let Some(reason) = waiting {
        return reason.clone();
    }
    o.pointer("/status/phase")
        .cloned()
        .unwrap_or(json!("Pending"))
}

/// The RESTARTS column: restarts of every container, init containers included.
fn pod_restarts(o: &Value) -> Value {
    let n: i64 = ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .filter_map(|p| o.pointer(p).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    json!(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_pod_is_pending_with_its_qos_class() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i:1",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}, "status": {"phase": "Running"}});
        PodStrategy.default(&mut pod);
        PodStrategy.prepare_for_create(&mut pod);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "Guaranteed"})
        );
        let mut gated = json!({"spec": {"schedulingGates": [{"name": "g"}], "containers": [{"name": "c", "image": "i:1"}]}});
        PodStrategy.prepare_for_create(&mut gated);
        assert_eq!(
            gated["status"]["conditions"][0]["reason"],
            "SchedulingGated"
        );
    }

    #[test]
    fn columns_show_init_progress_sidecars_and_failures() {
        let init = |state: Value| json!({"name": "i", "state": state});
        // (case, pod, STATUS)
        let rows = [
            (
                "second of two running",
                json!({"spec": {"initContainers": [{"name": "a"}, {"name": "i"}]},
                       "status": {"phase": "Pending", "initContainerStatuses": [
                           {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                           init(json!({"running": {}}))]}}),
                "Init:1/2",
            ),
            (
                "failed",
                json!({"spec": {"initContainers": [{"name": "i"}]},
                       "status": {"phase": "Failed", "initContainerStatuses": [
                           init(json!({"terminated": {"exitCode": 1, "reason": "Error"}}))]}}),
                "Init:Error",
            ),
            (
                "backing off",
                json!({"spec": {"initContainers": [{"name": "i"}]},
                       "status": {"phase": "Pending", "initContainerStatuses": [
                           init(json!({"waiting": {"reason": "CrashLoopBackOff"}}))]}}),
                "Init:CrashLoopBackOff",
            ),
            (
                "initialized",
                json!({"spec": {"initContainers": [{"name": "i"}]},
                       "status": {"phase": "Running",
                                  "conditions": [{"type": "Initialized", "status": "True"}],
                                  "initContainerStatuses": [init(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))],
                                  "containerStatuses": [{"name": "c", "state": {"running": {}}}]}}),
                "Running",
            ),
        ];
        for (case, pod, want) in rows {
            assert_eq!(pod_status(&pod), json!(want), "{case}");
        }
        let with_sidecar = json!({
            "spec": {"initContainers": [{"name": "side", "restartPolicy": "Always"}, {"name": "i"}],
                     "containers": [{"name": "c"}]},
            "status": {"initContainerStatuses": [
                           {"name": "side", "started": true, "ready": true},
                           {"name": "i", "ready": false}],
                       "containerStatuses": [{"name": "c", "ready": false}]}});
        assert_eq!(pod_ready(&with_sidecar), json!("1/2"), "a sidecar counts");
        let restarted = json!({"status": {
            "initContainerStatuses": [{"restartCount": 2}],
            "containerStatuses": [{"restartCount": 1}]}});
        assert_eq!(pod_restarts(&restarted), json!(3));
    }

    #[test]
    fn grace_applies_to_bound_pods_only() {
        let bound = json!({"spec": {"nodeName": "n", "terminationGracePeriodSeconds": 5}});
        // (case, pod, delete options, grace)
        let rows = [
            ("unbound", json!({"spec": {}}), json!({}), None),
            ("the pod's own period", bound.clone(), json!({}), Some(5)),
            (
                "the request's period",
                bound.clone(),
                json!({"gracePeriodSeconds": 0}),
                Some(0),
            ),
            (
                "default 30",
                json!({"spec": {"nodeName": "n"}}),
                json!({}),
                Some(30),
            ),
        ];
        for (case, pod, options, want) in rows {
            assert_eq!(PodStrategy.grace_period(&pod, &options), want, "{case}");
        }
    }
}
