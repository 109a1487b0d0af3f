//! Pod defaults as kube-apiserver 1.32 fills them: the `v1` defaulting functions
//! (`pkg/apis/core/v1/defaults.go`, applied on every decode, so on create and on every update)
//! and the admission plugins that complete a new pod (ServiceAccount, Priority,
//! DefaultTolerationSeconds: on create only).

use serde_json::{Map, Value, json};

/// Seconds the default tolerations of `not-ready` and `unreachable` nodes last.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

fn set_if_empty(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match map.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    if empty {
        map.insert(key.to_owned(), value);
    }
}

/// The pull policy Kubernetes gives an image without one: `Always` when its tag is `latest`
/// (or it has neither tag nor digest), else `IfNotPresent`.
pub fn pull_policy_for(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((n, _)) => (n, true),
        None => (image, false),
    };
    // The tag is after the last ':' that comes after the last '/' (a registry port is not one).
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
        None if digest => "IfNotPresent",
        None => "Always",
    }
}

/// `SetDefaults_Pod`, `SetDefaults_PodSpec` and the defaults of what a pod spec contains.
pub fn default_pod(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    set_if_empty(spec, "dnsPolicy", json!("ClusterFirst"));
    set_if_empty(spec, "restartPolicy", json!("Always"));
    set_if_empty(spec, "securityContext", json!({}));
    set_if_empty(spec, "terminationGracePeriodSeconds", json!(30));
    set_if_empty(spec, "schedulerName", json!("default-scheduler"));
    set_if_empty(spec, "enableServiceLinks", json!(true));
    // `serviceAccount` is the deprecated spelling of `serviceAccountName`; they mirror.
    let sa_name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .map(str::to_owned);
    if let Some(sa) = sa_name {
        spec.insert("serviceAccountName".into(), json!(sa));
        spec.insert("serviceAccount".into(), json!(sa));
    }
    let host_network = spec.get("hostNetwork") == Some(&json!(true));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                default_container(c, host_network, list != "ephemeralContainers");
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            default_volume(v);
        }
    }
}

/// What the admission plugins add to a new pod: the `default` ServiceAccount, priority 0 with
/// `PreemptLowerPriority`, and tolerating `not-ready`/`unreachable` nodes for 300 s.
pub fn admit_new_pod(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    set_if_empty(spec, "serviceAccountName", json!("default"));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        spec.insert("serviceAccount".into(), sa);
    }
    set_if_empty(spec, "priority", json!(0));
    set_if_empty(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    if !spec.get("tolerations").is_some_and(Value::is_array) {
        spec.insert("tolerations".into(), json!([]));
    }
    let Some(tolerations) = spec.get_mut("tolerations").and_then(Value::as_array_mut) else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = tolerations.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
        });
        if !tolerated {
            tolerations.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}),
            );
        }
    }
}

fn default_container(c: &mut Map<String, Value>, host_network: bool, with_resources: bool) {
    if let Some(image) = c.get("image").and_then(Value::as_str) {
        let policy = pull_policy_for(image);
        set_if_empty(c, "imagePullPolicy", json!(policy));
    }
    set_if_empty(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_if_empty(c, "terminationMessagePolicy", json!("File"));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_if_empty(p, "protocol", json!("TCP"));
            if host_network
                && p.get("hostPort").is_none_or(|h| h.is_null() || h == 0)
                && let Some(port) = p.get("containerPort").cloned()
            {
                p.insert("hostPort".into(), port);
            }
        }
    }
    if with_resources {
        if !c.get("resources").is_some_and(Value::is_object) {
            c.insert("resources".into(), json!({}));
        }
        if let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut) {
            requests_from_limits(resources);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_probe(p);
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for e in env.iter_mut() {
            if let Some(f) = e
                .pointer_mut("/valueFrom/fieldRef")
                .and_then(Value::as_object_mut)
            {
                set_if_empty(f, "apiVersion", json!("v1"));
            }
        }
    }
}

/// Requests default to limits where only limits are given (`SetDefaults_Pod`).
fn requests_from_limits(resources: &mut Map<String, Value>) {
    let Some(limits) = resources
        .get("limits")
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .cloned()
    else {
        return;
    };
    if !resources.get("requests").is_some_and(Value::is_object) {
        resources.insert("requests".into(), json!({}));
    }
    if let Some(requests) = resources.get_mut("requests").and_then(Value::as_object_mut) {
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
}

fn default_probe(p: &mut Map<String, Value>) {
    set_if_empty(p, "timeoutSeconds", json!(1));
    set_if_empty(p, "periodSeconds", json!(10));
    set_if_empty(p, "successThreshold", json!(1));
    set_if_empty(p, "failureThreshold", json!(3));
    if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        set_if_empty(h, "path", json!("/"));
        set_if_empty(h, "scheme", json!("HTTP"));
    }
}

fn default_volume(v: &mut Map<String, Value>) {
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            set_if_empty(s, "defaultMode", json!(0o644));
        }
    }
    if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut)
        && h.get("type").is_none_or(Value::is_null)
    {
        h.insert("type".into(), json!(""));
    }
    if let Some(items) = v
        .get_mut("downwardAPI")
        .and_then(|d| d.get_mut("items"))
        .and_then(Value::as_array_mut)
    {
        for item in items.iter_mut() {
            if let Some(f) = item.get_mut("fieldRef").and_then(Value::as_object_mut) {
                set_if_empty(f, "apiVersion", json!("v1"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        // (image, defaulted policy)
        let rows = [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("registry.example:5000/ns/app", "Always"),
            ("registry.example:5000/ns/app:2", "IfNotPresent"),
            ("app@sha256:abcd", "IfNotPresent"),
            ("app:latest@sha256:abcd", "Always"),
        ];
        for (image, policy) in rows {
            assert_eq!(pull_policy_for(image), policy, "{image}");
        }
    }

    #[test]
    fn a_minimal_pod_gets_what_kubectl_shows() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "busybox", "ports": [{"containerPort": 80}],
             "resources": {"limits": {"cpu": "1", "memory": "64Mi"}, "requests": {"cpu": "500m"}}}]}});
        default_pod(&mut pod);
        admit_new_pod(&mut pod);
        let spec = &pod["spec"];
        for (field, want) in [
            ("restartPolicy", json!("Always")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
            ("serviceAccountName", json!("default")),
            ("serviceAccount", json!("default")),
            ("enableServiceLinks", json!(true)),
            ("securityContext", json!({})),
            ("priority", json!(0)),
            ("preemptionPolicy", json!("PreemptLowerPriority")),
        ] {
            assert_eq!(spec[field], want, "{field}");
        }
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "500m", "memory": "64Mi"})
        );
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ])
        );
    }

    #[test]
    fn what_the_user_set_is_kept() {
        let mut pod = json!({"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
            "serviceAccount": "builder", "hostNetwork": true,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "a:1", "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080, "protocol": "UDP"}]}],
            "volumes": [{"name": "s", "secret": {"secretName": "x", "defaultMode": 256}},
                        {"name": "h", "hostPath": {"path": "/data"}}]}});
        default_pod(&mut pod);
        admit_new_pod(&mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["terminationGracePeriodSeconds"], 0);
        assert_eq!(spec["serviceAccountName"], "builder");
        // A toleration of everything already tolerates not-ready and unreachable nodes.
        assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]));
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Never");
        assert_eq!(
            c["ports"][0],
            json!({"containerPort": 8080, "protocol": "UDP", "hostPort": 8080})
        );
        assert_eq!(c["resources"], json!({}));
        assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 256);
        assert_eq!(spec["volumes"][1]["hostPath"]["type"], "");
    }
}
