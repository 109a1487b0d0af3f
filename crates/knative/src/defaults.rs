//! Knative's defaulting of the four kinds, on the objects as stored (JSON), with Knative's
//! default configuration (`config-defaults`): request timeout 300 s, no concurrency limit,
//! container names `user-container` / `init-container` (numbered when there are several), a
//! TCP readiness probe on the serving container, read-only mounts of every volume but scratch
//! ones, service links off, and 100 % of a Service's traffic to its latest revision.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// `revision-timeout-seconds` of Knative's defaults.
pub const REVISION_TIMEOUT_SECONDS: i64 = 300;
/// `container-name-template` of Knative's defaults.
pub const USER_CONTAINER_NAME: &str = "user-container";
/// `init-container-name-template` of Knative's defaults.
pub const INIT_CONTAINER_NAME: &str = "init-container";

/// Defaults a `serving.knative.dev/v1` object of `kind` (Service, Configuration, Revision or
/// Route). `creating` is false on updates: a Revision's spec is immutable and is then left as
/// it is, as Knative does.
pub fn default_object(kind: &str, obj: &mut Value, creating: bool) {
    match kind {
        "Service" => {
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_revision_spec(spec, creating);
            }
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                default_traffic(spec, true);
            }
        }
        "Configuration" => {
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_revision_spec(spec, creating);
            }
        }
        "Revision" if creating => {
            if let Some(spec) = obj.get_mut("spec") {
                default_revision_spec(spec, creating);
            }
        }
        "Route" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                default_traffic(spec, false);
            }
        }
        _ => {}
    }
}

/// A revision spec's defaults.
pub fn default_revision_spec(spec: &mut Value, creating: bool) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    if spec
        .get("timeoutSeconds")
        .and_then(Value::as_i64)
        .is_none_or(|t| t == 0)
    {
        spec.insert("timeoutSeconds".into(), json!(REVISION_TIMEOUT_SECONDS));
    }
    if spec.get("containerConcurrency").is_none_or(Value::is_null) {
        spec.insert("containerConcurrency".into(), json!(0));
    }
    let mut taken = BTreeSet::new();
    for list in ["containers", "initContainers"] {
        for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = c.get("name").and_then(Value::as_str) {
                taken.insert(name.to_owned());
            }
        }
    }
    name_containers(spec.get_mut("containers"), &taken, USER_CONTAINER_NAME);
    name_containers(spec.get_mut("initContainers"), &taken, INIT_CONTAINER_NAME);
    let scratch: BTreeSet<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| {
            ["emptyDir", "persistentVolumeClaim", "ephemeral"]
                .iter()
                .any(|k| v.get(*k).is_some())
        })
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let count = spec
        .get("containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            default_container(c, count, &scratch);
        }
    }
    if creating && spec.get("enableServiceLinks").is_none_or(Value::is_null) {
        spec.insert("enableServiceLinks".into(), json!(false));
    }
}

/// Names the unnamed containers of a list: `base` alone, `base-N` when there are several or the
/// name is taken.
fn name_containers(list: Option<&mut Value>, taken: &BTreeSet<String>, base: &str) {
    let Some(list) = list.and_then(Value::as_array_mut) else {
        return;
    };
    let several = list.len() > 1;
    let mut next = 0;
    for c in list.iter_mut().filter_map(Value::as_object_mut) {
        if c.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        {
            continue;
        }
        let mut name = base.to_owned();
        if several || taken.contains(&name) {
            loop {
                name = format!("{base}-{next}");
                next += 1;
                if !taken.contains(&name) {
                    break;
                }
            }
        }
        c.insert("name".into(), json!(name));
    }
}

fn default_container(c: &mut Map<String, Value>, containers: usize, scratch: &BTreeSet<String>) {
    for r in ["requests", "limits"] {
        let resources = c.entry("resources").or_insert_with(|| json!({}));
        if let Some(m) = resources.as_object_mut() {
            m.entry(r).or_insert_with(|| json!({}));
        }
    }
    let serving = containers == 1
        || c.get("ports")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty());
    if serving {
        let probe = c.entry("readinessProbe").or_insert_with(|| json!({}));
        if let Some(p) = probe.as_object_mut()
            && !["tcpSocket", "httpGet", "exec", "grpc"]
                .iter()
                .any(|h| p.get(*h).is_some_and(|v| !v.is_null()))
        {
            p.insert("tcpSocket".into(), json!({"port": 0}));
        }
    }
    if let Some(p) = c.get_mut("readinessProbe").and_then(Value::as_object_mut) {
        if p.get("successThreshold")
            .and_then(Value::as_i64)
            .is_none_or(|n| n == 0)
        {
            p.insert("successThreshold".into(), json!(1));
        }
        if p.get("periodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|n| n != 0)
        {
            for (k, v) in [("failureThreshold", 3), ("timeoutSeconds", 1)] {
                if p.get(k).and_then(Value::as_i64).is_none_or(|n| n == 0) {
                    p.insert(k.into(), json!(v));
                }
            }
        }
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if let Some(grpc) = c
            .get_mut(probe)
            .and_then(|p| p.get_mut("grpc"))
            .and_then(Value::as_object_mut)
        {
            grpc.entry("service").or_insert_with(|| json!(""));
        }
    }
    if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
        for m in mounts.iter_mut().filter_map(Value::as_object_mut) {
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            if !scratch.contains(name) {
                m.insert("readOnly".into(), json!(true));
            }
        }
    }
}

/// A Service's traffic defaults to 100 % to the latest revision; every target without a
/// revision name follows the latest revision.
fn default_traffic(spec: &mut Map<String, Value>, has_configuration: bool) {
    let empty = spec
        .get("traffic")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if empty {
        if has_configuration {
            spec.insert(
                "traffic".into(),
                json!([{"latestRevision": true, "percent": 100}]),
            );
        }
        return;
    }
    if let Some(targets) = spec.get_mut("traffic").and_then(Value::as_array_mut) {
        for t in targets.iter_mut().filter_map(Value::as_object_mut) {
            if t.get("latestRevision").is_none_or(Value::is_null) {
                let unnamed = t
                    .get("revisionName")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty);
                t.insert("latestRevision".into(), json!(unnamed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_service_gets_knatives_defaults() {
        let mut ksvc = json!({"spec": {"template": {
            "metadata": {"labels": {"app": "helloworld-go"}},
            "spec": {"containers": [{"image": "helloworld-go:73fbdd56"}]}
        }}});
        default_object("Service", &mut ksvc, true);
        assert_eq!(
            ksvc["spec"]["template"]["spec"],
            json!({
                "containers": [{
                    "name": "user-container",
                    "image": "helloworld-go:73fbdd56",
                    "readinessProbe": {"tcpSocket": {"port": 0}, "successThreshold": 1},
                    "resources": {"requests": {}, "limits": {}}
                }],
                "containerConcurrency": 0,
                "timeoutSeconds": 300,
                "enableServiceLinks": false
            })
        );
        assert_eq!(
            ksvc["spec"]["traffic"],
            json!([{"latestRevision": true, "percent": 100}])
        );
    }

    #[test]
    fn containers_are_numbered_around_taken_names() {
        let cases = [
            (json!([{}]), vec!["user-container"]),
            (
                json!([{}, {"name": "sidecar"}, {}]),
                vec!["user-container-0", "sidecar", "user-container-1"],
            ),
            (
                json!([{"name": "user-container-0"}, {}]),
                vec!["user-container-0", "user-container-1"],
            ),
        ];
        for (containers, want) in cases {
            let mut spec = json!({"containers": containers});
            default_revision_spec(&mut spec, true);
            let got: Vec<_> = spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn only_the_serving_container_gets_a_probe_and_mounts_turn_read_only() {
        let mut spec = json!({
            "containers": [
                {"image": "a", "ports": [{"containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/healthz"}, "periodSeconds": 2},
                 "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                                  {"name": "scratch", "mountPath": "/scratch"}]},
                {"image": "b"}
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}},
                        {"name": "scratch", "emptyDir": {}}],
            "timeoutSeconds": 0,
            "containerConcurrency": 10
        });
        default_revision_spec(&mut spec, true);
        assert_eq!(
            spec["containers"][0]["readinessProbe"],
            json!({"httpGet": {"path": "/healthz"}, "periodSeconds": 2, "successThreshold": 1,
                   "failureThreshold": 3, "timeoutSeconds": 1})
        );
        assert!(spec["containers"][1].get("readinessProbe").is_none());
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["readOnly"], true);
        assert!(spec["containers"][0]["volumeMounts"][1].get("readOnly").is_none());
        assert_eq!(spec["timeoutSeconds"], 300);
        assert_eq!(spec["containerConcurrency"], 10);
    }

    #[test]
    fn traffic_targets_follow_the_latest_revision_unless_named() {
        let mut ksvc = json!({"spec": {"template": {"spec": {"containers": [{}]}},
            "traffic": [{"revisionName": "a-00001", "percent": 50}, {"percent": 50, "tag": "next"}]}});
        default_object("Service", &mut ksvc, true);
        assert_eq!(ksvc["spec"]["traffic"][0]["latestRevision"], false);
        assert_eq!(ksvc["spec"]["traffic"][1]["latestRevision"], true);
        let mut route = json!({"spec": {}});
        default_object("Route", &mut route, true);
        assert!(route["spec"].get("traffic").is_none());
    }

    #[test]
    fn a_revision_is_not_defaulted_on_update() {
        let mut rev = json!({"spec": {"containers": [{"image": "a"}]}});
        default_object("Revision", &mut rev, false);
        assert!(rev["spec"].get("timeoutSeconds").is_none());
    }
}
