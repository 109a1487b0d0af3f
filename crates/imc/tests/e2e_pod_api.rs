//! The Pod API of a real `imc server --api-only` as the real kubectl (and kube-rs, for the
//! `binding` subresource) sees it: validation naming each field, unknown fields refused or
//! warned about, the defaults kubectl shows, immutability of a bound pod, Pod Security
//! Admission by namespace label and server default, and owner-only state files.

use std::os::unix::fs::PermissionsExt;

use imc_testkit::apiserver::{KUBECTL, TestServer};
use k8s_openapi::api::core::v1::{Binding, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn server() -> TestServer {
    assert!(
        std::path::Path::new(KUBECTL).exists(),
        "{KUBECTL} is required for these tests"
    );
    TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).expect("start imc server")
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

/// A pod whose only container is `busybox:1.36` named `app`, with `extra` merged into it.
fn one_container(name: &str, extra: Value) -> Value {
    let mut c = json!({"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"]});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    pod(name, json!({"containers": [c]}))
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn invalid_pods_are_refused_naming_the_field() {
    let s = server();
    // (case, spec, what kubectl prints about the field)
    let cases = [
        (
            "containers: []",
            json!({"containers": []}),
            "spec.containers: Required value",
        ),
        (
            "a container without image",
            json!({"containers": [{"name": "app"}]}),
            "spec.containers[0].image: Required value",
        ),
        (
            "duplicate container names",
            json!({"containers": [{"name": "app", "image": "busybox:1.36"}, {"name": "app", "image": "busybox:1.36"}]}),
            "spec.containers[1].name: Duplicate value: \"app\"",
        ),
        (
            "a container named ../x",
            json!({"containers": [{"name": "../x", "image": "busybox:1.36"}]}),
            "spec.containers[0].name: Invalid value: \"../x\": a lowercase RFC 1123 label must consist of",
        ),
        (
            "a volume named ..",
            json!({"volumes": [{"name": "..", "emptyDir": {}}], "containers": [{"name": "app", "image": "busybox:1.36"}]}),
            "spec.volumes[0].name: Invalid value: \"..\"",
        ),
        (
            "a subPath leaving its volume",
            json!({"volumes": [{"name": "data", "emptyDir": {}}], "containers": [{"name": "app", "image": "busybox:1.36",
                "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "../../etc"}]}]}),
            "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../../etc\": must not contain '..'",
        ),
    ];
    for (case, spec, field) in cases {
        let err = s.kubectl_err(&["create", "-f", "-"], Some(&pod("bad", spec).to_string()));
        assert!(err.contains("The Pod \"bad\" is invalid"), "{case}: {err}");
        assert!(err.contains(field), "{case}: expected {field:?} in {err}");
    }
    assert_eq!(
        s.kubectl_ok(&["get", "pods", "-o", "name"]).trim(),
        "",
        "an invalid pod was stored"
    );
}

#[test]
fn unknown_fields_are_refused_by_default_and_dropped_with_a_warning_on_request() {
    let s = server();
    let typo = one_container("typo", json!({"comand": ["sh"]})).to_string();
    let strict = "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.containers[0].comand\"";
    for args in [
        &["create", "-f", "-"][..],
        &["create", "--validate=strict", "-f", "-"][..],
    ] {
        let err = s.kubectl_err(args, Some(&typo));
        assert!(err.contains(strict), "{args:?}: {err}");
    }
    let err = s.kubectl_err(&["apply", "--server-side", "-f", "-"], Some(&typo));
    assert!(
        err.contains(".spec.containers[0].comand: field not declared in schema"),
        "{err}"
    );
    assert!(s.get_json("pod", "typo").is_none());

    let (ok, out) = s.kubectl_args_stdin(&["create", "--validate=warn", "-f", "-"], &typo);
    assert!(ok, "{out}");
    assert!(
        out.contains("Warning: unknown field \"spec.containers[0].comand\""),
        "{out}"
    );
    let stored = s.get_json("pod", "typo").expect("created");
    let container = &stored["spec"]["containers"][0];
    assert!(container.get("comand").is_none(), "not pruned: {container}");
    assert_eq!(container["command"], json!(["sleep", "3600"]));
}

#[test]
fn get_shows_the_defaults_and_the_qos_class() {
    let s = server();
    s.create_ok(one_container(
        "sized",
        json!({"image": "busybox", "ports": [{"containerPort": 8080}],
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}),
    ));
    s.create_ok(one_container("plain", json!({})));
    let yaml = s.kubectl_ok(&["get", "pod", "sized", "-o", "yaml"]);
    for line in [
        "restartPolicy: Always",
        "terminationGracePeriodSeconds: 30",
        "dnsPolicy: ClusterFirst",
        "schedulerName: default-scheduler",
        "serviceAccountName: default",
        "serviceAccount: default",
        "enableServiceLinks: true",
        "securityContext: {}",
        "priority: 0",
        "preemptionPolicy: PreemptLowerPriority",
        "imagePullPolicy: Always",
        "terminationMessagePath: /dev/termination-log",
        "terminationMessagePolicy: File",
        "protocol: TCP",
        "key: node.kubernetes.io/not-ready",
        "key: node.kubernetes.io/unreachable",
        "tolerationSeconds: 300",
        "qosClass: Guaranteed",
    ] {
        assert!(yaml.contains(line), "{line:?} missing from:\n{yaml}");
    }
    let sized = s.get_json("pod", "sized").expect("sized");
    assert_eq!(
        sized["spec"]["containers"][0]["resources"]["requests"],
        json!({"cpu": "500m", "memory": "64Mi"}),
        "requests default to limits"
    );
    let plain = s.get_json("pod", "plain").expect("plain");
    assert_eq!(plain["status"]["qosClass"], "BestEffort");
    assert_eq!(
        plain["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(plain["spec"]["containers"][0]["resources"], json!({}));

    // The schema behind the field checks is the one kubectl explains.
    let explained = s.kubectl_ok(&["explain", "pod.spec.containers"]);
    assert!(
        explained.contains("FIELD: containers <[]Container>")
            && explained.contains("command\t<[]string>"),
        "{explained}"
    );
}

/// Binds `pod` to `node` as a scheduler does.
async fn bind(pods: &Api<Pod>, pod: &str, node: &str) -> kube::Result<Status> {
    let binding: Binding = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }))
    .expect("a Binding");
    pods.create_subresource("binding", pod, &PostParams::default(), &binding)
        .await
}

#[tokio::test]
async fn a_bound_pod_keeps_its_node_and_only_its_image_may_change() {
    let s = server();
    let pods: Api<Pod> = Api::namespaced(s.client().await.expect("client"), "default");
    let manifest = one_container("web", json!({})).to_string();
    s.kubectl_args_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        s.get_json("pod", "web").is_some(),
        "kubectl apply created web"
    );

    let status = bind(&pods, "web", "node-a").await.expect("first binding");
    assert_eq!(status.code, Some(201));
    match bind(&pods, "web", "node-b").await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
            assert_eq!(
                e.message,
                "Operation cannot be fulfilled on pods/binding \"web\": pod web is already assigned to node \"node-a\""
            );
        }
        other => panic!("a second binding was not refused: {other:?}"),
    }

    // The original manifest lacks nodeName: replacing with it is refused, not a way to unbind.
    let err = s.kubectl_err(&["replace", "-f", "-"], Some(&manifest));
    assert!(
        err.contains("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"),
        "{err}"
    );
    assert!(
        err.contains("spec.nodeName: \"node-a\" -> (unset)"),
        "{err}"
    );
    let web = s.get_json("pod", "web").expect("web");
    assert_eq!(web["spec"]["nodeName"], "node-a");

    // Applying the unchanged manifest is a no-op, client-side and server-side (what admission
    // added, such as the service account, belongs to no field manager and stays).
    let (ok, out) = s.kubectl_args_stdin(&["apply", "-f", "-"], &manifest);
    assert!(ok && out.contains("pod/web unchanged"), "{out}");
    let (ok, out) = s.kubectl_args_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &manifest,
    );
    assert!(ok && !out.contains("failed"), "{out}");
    let web = s.get_json("pod", "web").expect("web");
    assert_eq!(web["spec"]["nodeName"], "node-a");
    assert_eq!(web["spec"]["serviceAccountName"], "default");
    s.kubectl_ok(&["set", "image", "pod/web", "app=busybox:1.37"]);
    let web = s.get_json("pod", "web").expect("web");
    assert_eq!(web["spec"]["containers"][0]["image"], "busybox:1.37");
    assert_eq!(web["spec"]["nodeName"], "node-a");
    let err = s.kubectl_err(
        &[
            "patch",
            "pod",
            "web",
            "-p",
            r#"{"spec":{"restartPolicy":"Never"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("spec.restartPolicy: \"Always\" -> \"Never\""),
        "{err}"
    );
}

#[test]
fn pod_security_follows_namespace_labels() {
    let s = server();
    let privileged =
        one_container("priv", json!({"securityContext": {"privileged": true}})).to_string();
    let err = s.kubectl_err(&["create", "-f", "-"], Some(&privileged));
    assert!(
        err.contains("pods \"priv\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"app\" must not set securityContext.privileged=true)"),
        "{err}"
    );
    assert!(s.get_json("pod", "priv").is_none());

    s.kubectl_ok(&["create", "namespace", "open"]);
    s.kubectl_ok(&[
        "label",
        "namespace",
        "open",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    let (ok, out) = s.kubectl_args_stdin(&["create", "-n", "open", "-f", "-"], &privileged);
    assert!(ok, "{out}");
    assert!(s.get_json_in("pod", "priv", &["-n", "open"]).is_some());

    s.kubectl_ok(&["create", "namespace", "strict"]);
    s.kubectl_ok(&[
        "label",
        "namespace",
        "strict",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let err = s.kubectl_err(
        &["create", "-n", "strict", "-f", "-"],
        Some(&one_container("loose", json!({})).to_string()),
    );
    assert!(
        err.contains("violates PodSecurity \"restricted:latest\"")
            && err.contains("runAsNonRoot != true (pod or container \"app\" must set securityContext.runAsNonRoot=true)"),
        "{err}"
    );
    let hardened = one_container(
        "hardened",
        json!({"securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}),
    );
    let (ok, out) = s.kubectl_args_stdin(
        &["create", "-n", "strict", "-f", "-"],
        &hardened.to_string(),
    );
    assert!(ok, "a pod meeting restricted was refused: {out}");

    s.kubectl_ok(&["create", "namespace", "watched"]);
    s.kubectl_ok(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let (ok, out) = s.kubectl_args_stdin(
        &["create", "-n", "watched", "-f", "-"],
        &one_container("loose", json!({})).to_string(),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"),
        "{out}"
    );

    let err = s.kubectl_err(
        &[
            "label",
            "namespace",
            "watched",
            "pod-security.kubernetes.io/enforce=strictest",
        ],
        None,
    );
    assert!(
        err.contains("metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strictest\": must be one of privileged, baseline, restricted"),
        "{err}"
    );
}

#[test]
fn the_server_default_level_can_be_privileged() {
    let s = TestServer::start_with_args(
        env!("CARGO_BIN_EXE_imc"),
        &[
            "--api-only".to_owned(),
            "--pod-security-default".to_owned(),
            "privileged".to_owned(),
        ],
    )
    .expect("start imc server");
    s.create_ok(one_container(
        "priv",
        json!({"securityContext": {"privileged": true}}),
    ));
    let stored = s.get_json("pod", "priv").expect("admitted");
    assert_eq!(
        stored["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
}

#[test]
fn state_files_are_owner_only() {
    let mut s = server();
    let dir = s.data_dir().to_path_buf();
    let db = dir.join("state.db");
    // Loosened by hand (or by an older version): the next start tightens them.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod db");
    s.restart().expect("restart");
    assert_eq!(mode(&dir), 0o700, "data dir");
    for name in [
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "kubeconfig.yaml",
        "pki/admin.token",
        "pki/server.key",
    ] {
        let path = dir.join(name);
        if name == "state.db" || path.exists() {
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    assert_eq!(mode(&dir.join("pki")), 0o700, "pki");
}
