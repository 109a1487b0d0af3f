//! ConfigMaps, Secrets and the downward API in pods (issue 9 item 1): configMap and secret
//! volumes with `items`, `defaultMode`, per-item modes and `subPath`, updates reaching the
//! running container through the atomic `..data` swap (not through a `subPath`), secrets on a
//! tmpfs, env from both (`valueFrom`, `envFrom`), a missing configMap keeping the container in
//! `CreateContainerConfigError` (and a volume in `FailedMount`) until it exists, downwardAPI
//! files following `kubectl label` and `kubectl annotate`, `kube-root-ca.crt` in every
//! namespace, and a projected service-account token an in-pod client calls the API with. Real
//! `imc server`, kubectl, runc and mounts; what a container sees is read from its log (the
//! containers print it in a loop).

mod run_support;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{eventually, pod_running};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

fn start(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        "imc-config-node".to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

/// The host directory of volume `volume` (a `plugin` such as `kubernetes.io~configmap`) of pod
/// `name`.
fn volume_dir(server: &TestServer, name: &str, plugin: &str, volume: &str) -> std::path::PathBuf {
    let uid = server.get_json("pod", name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    server
        .data_dir()
        .join(format!("pods/{uid}/volumes/{plugin}/{volume}"))
}

/// The last line of `log` that starts with `prefix`.
fn last_line<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .rev()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{log}"))
}

#[test]
fn config_map_and_secret_volumes_with_items_modes_sub_path_and_updates() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.kubectl_ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
        "--from-literal=color=blue",
    ]);
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    let script = r#"
        stat -c "mode %a %n" /cfg/conf/greeting.txt
        stat -L -c "mode %a %n" /cfg/color /sec/password /whole/greeting
        while read dev mnt fs rest; do [ "$mnt" = /sec ] && echo "fs $mnt $fs"; done < /proc/mounts
        touch /whole/new 2>/dev/null || echo whole-is-read-only
        echo "secret $(cat /sec/password)"
        while true; do
          echo "now greeting=$(cat /whole/greeting) item=$(cat /cfg/conf/greeting.txt) sub=$(cat /sub/greeting)"
          sleep 0.3
        done"#;
    server.create_ok(pod(
        "cfg",
        json!({
            "volumes": [
                {"name": "cfg", "configMap": {"name": "app", "defaultMode": 0o440, "items": [
                    {"key": "greeting", "path": "conf/greeting.txt"},
                    {"key": "color", "path": "color", "mode": 0o600}]}},
                {"name": "whole", "configMap": {"name": "app"}},
                {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}}
            ],
            "containers": [{"name": "app", "image": reg.busybox,
                "command": ["sh", "-c", script],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "whole", "mountPath": "/whole"},
                    {"name": "whole", "mountPath": "/sub/greeting", "subPath": "greeting"},
                    {"name": "sec", "mountPath": "/sec"}]}]
        }),
    ));
    server.wait_for("pod", "cfg", "Running", pod_running);
    let log = server.wait_for_log("cfg", "app", "now greeting=hello item=hello sub=hello");
    for want in [
        "mode 440 /cfg/conf/greeting.txt",
        "mode 600 /cfg/color",
        "mode 400 /sec/password",
        "mode 644 /whole/greeting",
        "fs /sec tmpfs",
        "whole-is-read-only",
        "secret s3cret",
    ] {
        assert!(log.contains(want), "{want:?} in:\n{log}");
    }

    // On the host: the kubelet's layout, the secret on its own tmpfs.
    let whole = volume_dir(&server, "cfg", "kubernetes.io~configmap", "whole");
    let data = std::fs::read_link(whole.join("..data")).unwrap();
    assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
    assert_eq!(
        std::fs::read_link(whole.join("greeting")).unwrap(),
        std::path::Path::new("..data/greeting")
    );
    let sec = volume_dir(&server, "cfg", "kubernetes.io~secret", "sec");
    let sec = std::fs::canonicalize(sec).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sec_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(sec.to_str().unwrap()))
        .unwrap_or_else(|| panic!("the secret volume {sec:?} is a mount point"));
    assert!(sec_mount.contains(" - tmpfs "), "{sec_mount}");

    // An update reaches the volume (not the subPath, as upstream).
    server.kubectl_ok(&[
        "patch",
        "configmap",
        "app",
        "-p",
        r#"{"data":{"greeting":"bye"}}"#,
    ]);
    let log = server.wait_for_log("cfg", "app", "now greeting=bye");
    assert_eq!(
        last_line(&log, "now "),
        "now greeting=bye item=bye sub=hello"
    );
    assert!(
        !whole.join(&data).exists(),
        "the old timestamped dir is gone"
    );

    // A replaced secret reaches it too (its `stringData` stored as `data`).
    let replaced = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"password": "n3w"}});
    let (ok, out) = server.kubectl_args_stdin(&["replace", "-f", "-"], &replaced.to_string());
    assert!(ok, "{out}");
    let written = eventually("the replaced secret is written", || {
        std::fs::read_to_string(sec.join("password"))
            .ok()
            .filter(|s| s == "n3w")
    });
    assert_eq!(written.as_deref(), Some("n3w"));

    server.kubectl_ok(&["delete", "pod", "cfg", "--grace-period=1"]);
    server.wait_gone("pod", "cfg");
    assert!(
        imc_testkit::leftovers::mounts_under(server.data_dir()).is_empty(),
        "the secret's tmpfs was unmounted"
    );
}

#[test]
fn env_from_config_maps_and_secrets() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.kubectl_ok(&[
        "create",
        "configmap",
        "env-cfg",
        "--from-literal=LOG_LEVEL=debug",
        "--from-literal=1bad=x",
    ]);
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "env-sec",
        "--from-literal=token=t0ken",
    ]);
    server.create_ok(pod(
        "env",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": reg.busybox,
                "resources": {"limits": {"memory": "64Mi"}},
                "command": ["sh", "-c", "echo \"LOG_LEVEL=$LOG_LEVEL SEC_token=$SEC_token MODE=$MODE PASS=$PASS OPT=${OPT-unset} MEM=$MEM\""],
                "envFrom": [{"configMapRef": {"name": "env-cfg"}},
                            {"secretRef": {"name": "env-sec"}, "prefix": "SEC_"},
                            {"configMapRef": {"name": "absent", "optional": true}}],
                "env": [
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "env-cfg", "key": "LOG_LEVEL"}}},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "env-sec", "key": "token"}}},
                    {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}
                ]}]
        }),
    ));
    server.wait_for("pod", "env", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(
        server.kubectl_ok(&["logs", "env"]),
        "LOG_LEVEL=debug SEC_token=t0ken MODE=debug PASS=t0ken OPT=unset MEM=64\n"
    );
    let skipped = server.wait_for_event("env", "InvalidEnvironmentVariableNames", |e| {
        e["reason"] == "InvalidEnvironmentVariableNames"
    });
    assert_eq!(
        skipped["message"],
        "Keys [1bad] from the EnvFrom configMap default/env-cfg were skipped since they are considered invalid environment variable names."
    );
    let events = server.events_about("env");
    assert!(
        events
            .iter()
            .all(|e| !e["message"].as_str().unwrap_or_default().contains("t0ken")),
        "no event shows a secret: {events:#?}"
    );
}

#[test]
fn a_missing_config_map_holds_the_pod_until_it_exists() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.create_ok(pod(
        "late-env",
        json!({"containers": [{"name": "app", "image": reg.busybox,
            "command": ["sh", "-c", "echo \"X=$X\"; sleep 3600"],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "k"}}}]}]}),
    ));
    server.create_ok(pod(
        "late-vol",
        json!({
            "volumes": [{"name": "cfg", "configMap": {"name": "late"}}],
            "containers": [{"name": "app", "image": reg.busybox,
                "command": ["sh", "-c", "cat /cfg/k; echo; sleep 3600"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]
        }),
    ));
    let waiting = |p: &Value, message: &str| {
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        w["reason"] == "CreateContainerConfigError" && w["message"] == message
    };
    server.wait_for("pod", "late-env", "waiting for the configMap", |p| {
        waiting(p, "configmap \"late\" not found")
    });
    server.wait_for_event("late-env", "Failed", |e| {
        e["reason"] == "Failed" && e["message"] == "Error: configmap \"late\" not found"
    });
    // The volume's pod is still being created, with the kubelet's FailedMount event.
    let p = server.get_json("pod", "late-vol").unwrap();
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    server.wait_for_event("late-vol", "FailedMount", |e| {
        e["reason"] == "FailedMount"
            && e["message"]
                == "MountVolume.SetUp failed for volume \"cfg\" : configmap \"late\" not found"
    });

    server.kubectl_ok(&["create", "configmap", "late", "--from-literal=other=1"]);
    server.wait_for("pod", "late-env", "waiting for the key", |p| {
        waiting(p, "couldn't find key k in ConfigMap default/late")
    });
    server.wait_for("pod", "late-vol", "Running", pod_running);

    server.kubectl_ok(&["patch", "configmap", "late", "-p", r#"{"data":{"k":"v"}}"#]);
    server.wait_for("pod", "late-env", "Running", pod_running);
    assert_eq!(server.wait_for_log("late-env", "app", "X=v"), "X=v\n");
}

#[test]
fn downward_api_files_follow_labels_and_annotations_and_the_root_ca_is_published() {
    let reg = registry_with_images();
    let server = start(&reg);
    let mut manifest = pod(
        "info",
        json!({
            "volumes": [
                {"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}]}},
                {"name": "all", "projected": {"defaultMode": 0o440, "sources": [
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}
            ],
            "containers": [{"name": "app", "image": reg.busybox,
                "resources": {"limits": {"memory": "32Mi"}},
                "command": ["sh", "-c", r#"
                    echo "name=$(cat /podinfo/name) mem=$(cat /podinfo/mem) ns=$(cat /all/namespace) ca=$(head -1 /all/ca.crt)"
                    stat -L -c "mode %a %n" /all/ca.crt
                    while read dev mnt fs rest; do [ "$mnt" = /all ] && echo "fs $mnt $fs"; done < /proc/mounts
                    while true; do echo "labels: $(cat /podinfo/labels)"; echo "annotations: $(cat /podinfo/annotations)"; sleep 0.3; done"#],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/podinfo"},
                                 {"name": "all", "mountPath": "/all"}]}]
        }),
    );
    manifest["metadata"]["labels"] = json!({"app": "shop"});
    manifest["metadata"]["annotations"] = json!({"note": "first"});
    server.create_ok(manifest);
    server.wait_for("pod", "info", "Running", pod_running);
    let log = server.wait_for_log("info", "app", "labels: app=\"shop\"");
    for want in [
        "name=info mem=32 ns=default ca=-----BEGIN CERTIFICATE-----",
        "mode 440 /all/ca.crt",
        "fs /all tmpfs",
        "annotations: note=\"first\"",
    ] {
        assert!(log.contains(want), "{want:?} in:\n{log}");
    }

    server.kubectl_ok(&["label", "pod", "info", "tier=gold"]);
    server.wait_for_log("info", "app", "tier=\"gold\"");
    server.kubectl_ok(&["annotate", "pod", "info", "note=second", "--overwrite"]);
    let log = server.wait_for_log("info", "app", "note=\"second\"");
    assert!(
        log.contains("labels: app=\"shop\"\ntier=\"gold\""),
        "both labels, one a line:\n{log}"
    );

    // kube-root-ca.crt holds the server's CA in every namespace, new ones too, and comes back.
    let ca = std::fs::read_to_string(server.data_dir().join("pki/ca.crt")).unwrap();
    server.kubectl_ok(&["create", "namespace", "team"]);
    for ns in ["default", "team"] {
        let cm = server.wait_for_in(
            "configmap",
            "kube-root-ca.crt",
            &["-n", ns],
            "published",
            |_| true,
        );
        assert_eq!(cm["data"]["ca.crt"], ca.as_str(), "{ns}");
    }
    server.kubectl_ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "team"]);
    let back = server.wait_for_in(
        "configmap",
        "kube-root-ca.crt",
        &["-n", "team"],
        "put back",
        |_| true,
    );
    assert_eq!(back["data"]["ca.crt"], ca.as_str());
}

/// The `kube-api-access-*` volume kube-apiserver's ServiceAccount admission adds, written out
/// (imc's API server does not add it yet): the pod finds its token, CA and namespace, and the
/// token it was given authenticates to the API. The call is made from the host with the token
/// the node wrote (on the volume's tmpfs): busybox's wget cannot complete a TLS handshake with
/// imc's API server (alert 40), and the test server's API listens on the host's 127.0.0.1
/// only, which a pod on its own network cannot reach.
#[test]
fn a_projected_service_account_token_lets_a_pod_call_the_api() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.kubectl_ok(&["create", "namespace", "ops"]);
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        r#"stat -L -c "mode %a %n" {sa}/token
        echo "ns=$(cat {sa}/namespace) ca=$(head -1 {sa}/ca.crt) token-bytes=$(wc -c < {sa}/token)"
        sleep 3600"#
    );
    let manifest = json!({"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "client", "namespace": "ops"},
    "spec": {
        "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 0o644, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
        "containers": [{"name": "app", "image": reg.busybox,
            "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": sa, "readOnly": true}]}]
    }});
    let (ok, out) =
        server.kubectl_args_stdin(&["create", "-n", "ops", "-f", "-"], &manifest.to_string());
    assert!(ok, "{out}");
    let log = server.wait_for_log_in("client", "app", &["-n", "ops"], "token-bytes=");
    assert!(log.contains(&format!("mode 644 {sa}/token")), "{log}");
    assert!(
        log.contains("ns=ops ca=-----BEGIN CERTIFICATE-----"),
        "{log}"
    );
    assert!(!log.contains("token-bytes=0"), "{log}");

    let uid = server.get_json_in("pod", "client", &["-n", "ops"]).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let token_path = server.data_dir().join(format!(
        "pods/{uid}/volumes/kubernetes.io~projected/kube-api-access-abcde/token"
    ));
    let token = std::fs::read_to_string(&token_path).unwrap();
    // The API knows whom the token is for: the pod's service account (whom RBAC does not let
    // list pods, as upstream).
    let err = server.kubectl_err(&["--token", token.trim(), "get", "pods", "-n", "ops"], None);
    assert!(
        err.contains("User \"system:serviceaccount:ops:default\" cannot list resource \"pods\""),
        "{err}"
    );
}
