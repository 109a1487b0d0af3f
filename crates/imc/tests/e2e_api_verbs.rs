//! The everyday kubectl verbs against a real `imc server --api-only` (issue 10 item 4): `auth
//! can-i` and `whoami` for the admin, the read-only and a service account's token, the
//! read-only kubeconfig enforced in upstream's words, RBAC manifests applied, TokenRequest,
//! objects without a namespace created in `default`, Opaque secrets, core/v1 Event fields sorted
//! by kubectl, Node columns, kinds the server does not serve, `v1 List` manifests, and
//! server-side apply conflicts.

use imc_testkit::apiserver::{KUBECTL, TestServer};
use imc_testkit::https::RawRequest;
use serde_json::{Value, json};

fn server() -> TestServer {
    assert!(
        std::path::Path::new(KUBECTL).exists(),
        "{KUBECTL} is required for these tests"
    );
    TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).expect("start imc server")
}

/// kubectl with the read-only kubeconfig the server wrote.
fn as_viewer(s: &TestServer, args: &[&str]) -> (bool, String) {
    let view = s.data_dir().join("kubeconfig-view.yaml");
    let view = view.to_str().expect("utf-8 path");
    let mut all = vec!["--kubeconfig", view];
    all.extend_from_slice(args);
    let out = s.kubectl(&all).expect("kubectl");
    (
        out.status.success(),
        imc_testkit::kubectl::output_text(&out),
    )
}

#[test]
fn auth_can_i_and_whoami_answer_for_admin_and_viewer() {
    let s = server();
    let me = s.kubectl_ok(&["auth", "whoami", "-o", "json"]);
    let me: Value = serde_json::from_str(&me).expect("json");
    assert_eq!(me["status"]["userInfo"]["username"], "imc-admin", "{me}");
    let groups = me["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:masters"), "{groups}");
    assert_eq!(
        s.kubectl_ok(&["auth", "can-i", "create", "pods"]).trim(),
        "yes"
    );
    assert_eq!(s.kubectl_ok(&["auth", "can-i", "*", "*"]).trim(), "yes");

    let (ok, out) = as_viewer(&s, &["auth", "whoami"]);
    assert!(ok && out.contains("imc-view"), "{out}");
    // (verb, resource, answer) as kubectl prints it for the read-only user.
    let cases = [
        ("get", "pods", "yes"),
        ("list", "configmaps", "yes"),
        ("watch", "imagecaches", "yes"),
        ("create", "pods", "no"),
        ("delete", "namespaces", "no"),
        ("patch", "nodes", "no"),
        ("get", "secrets", "no"),
    ];
    for (verb, resource, answer) in cases {
        let (_, out) = as_viewer(&s, &["auth", "can-i", verb, resource]);
        // kubectl may add a warning line (a cluster-scoped resource asked in a namespace).
        assert_eq!(out.lines().next(), Some(answer), "{verb} {resource}: {out}");
    }
    let (ok, out) = as_viewer(&s, &["auth", "can-i", "--list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("pods") && out.contains("[get list watch]"),
        "{out}"
    );
}

#[test]
fn the_read_only_kubeconfig_reads_and_is_refused_writes_in_upstream_words() {
    let s = server();
    s.kubectl_ok(&["create", "configmap", "seen", "--from-literal=k=v"]);
    let (ok, out) = as_viewer(&s, &["get", "configmap", "seen", "-o", "name"]);
    assert!(ok && out.contains("configmap/seen"), "{out}");
    let (ok, out) = as_viewer(&s, &["create", "configmap", "nope"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"configmaps is forbidden: User "imc-view" cannot create resource "configmaps" in API group "" in the namespace "default""#),
        "{out}"
    );
    let (ok, out) = as_viewer(&s, &["delete", "namespace", "default"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"namespaces "default" is forbidden: User "imc-view" cannot delete resource "namespaces" in API group "" at the cluster scope"#),
        "{out}"
    );
    let (ok, out) = as_viewer(&s, &["get", "secrets"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    assert!(s.get_json("configmap", "nope").is_none());
}

#[test]
fn rbac_manifests_apply_and_grant_what_they_say() {
    let s = server();
    let manifest = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: cm-reader}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cm-reader}
subjects:
- {kind: ServiceAccount, name: reader, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: nothing, namespace: default}
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: nobody}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cm-reader}
subjects: []
"#;
    let (ok, out) = s.kubectl_args_stdin(&["apply", "-f", "-"], manifest);
    assert!(ok, "{out}");
    let names = s.kubectl_ok(&["get", "clusterroles,rolebindings,roles", "-o", "name"]);
    for want in [
        "clusterrole.rbac.authorization.k8s.io/cm-reader",
        "rolebinding.rbac.authorization.k8s.io/reader-reads",
        "role.rbac.authorization.k8s.io/nothing",
    ] {
        assert!(names.contains(want), "{want} in {names}");
    }
    // Applying again changes nothing.
    let (ok, out) = s.kubectl_args_stdin(&["apply", "-f", "-"], manifest);
    assert!(ok && out.contains("unchanged"), "{out}");

    // The service account's token (TokenRequest) is accepted, and grants what the binding says.
    let token = s.kubectl_ok(&["create", "token", "reader", "--duration=15m"]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let as_sa = |args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        let out = s.kubectl(&all).expect("kubectl");
        (
            out.status.success(),
            imc_testkit::kubectl::output_text(&out),
        )
    };
    let (ok, out) = as_sa(&["auth", "whoami"]);
    assert!(
        ok && out.contains("system:serviceaccount:default:reader"),
        "{out}"
    );
    s.kubectl_ok(&["create", "configmap", "visible", "--from-literal=k=v"]);
    let (ok, out) = as_sa(&["get", "configmap", "visible", "-o", "name"]);
    assert!(ok, "{out}");
    let (_, out) = as_sa(&["auth", "can-i", "list", "configmaps"]);
    assert_eq!(out.trim(), "yes");
    let (_, out) = as_sa(&["auth", "can-i", "list", "configmaps", "-n", "kube-system"]);
    assert_eq!(out.trim(), "no");
    let (ok, out) = as_sa(&["delete", "configmap", "visible"]);
    assert!(
        !ok && out.contains(
            r#"User "system:serviceaccount:default:reader" cannot delete resource "configmaps""#
        ),
        "{out}"
    );
    // A tampered token is nobody.
    let mut forged = token.to_owned();
    forged.pop();
    let answer = s
        .raw(&RawRequest {
            method: "GET",
            path: "/api/v1/namespaces/default/configmaps",
            authorization: Some(format!("Bearer {forged}")),
            ..Default::default()
        })
        .expect("request");
    assert_eq!(answer.status, 401, "{}", answer.body);
    // Deleting the service account revokes its tokens.
    s.kubectl_ok(&["delete", "serviceaccount", "reader"]);
    let (ok, out) = as_sa(&["get", "configmaps"]);
    assert!(!ok && out.contains("Unauthorized"), "{out}");
}

#[test]
fn objects_without_a_namespace_go_to_default_and_secrets_are_opaque() {
    let s = server();
    s.kubectl_ok(&["create", "configmap", "plain", "--from-literal=a=b"]);
    s.kubectl_ok(&["create", "secret", "generic", "hush", "--from-literal=a=b"]);
    s.kubectl_ok(&["create", "serviceaccount", "robot"]);
    for (kind, name) in [
        ("configmap", "plain"),
        ("secret", "hush"),
        ("serviceaccount", "robot"),
    ] {
        let obj = s
            .get_json(kind, name)
            .unwrap_or_else(|| panic!("{kind} {name}"));
        assert_eq!(obj["metadata"]["namespace"], "default", "{obj}");
    }
    // A manifest without a namespace, through kube's POST path.
    let (ok, out) = s.kubectl_args_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"untyped"},"stringData":{"k":"v"}}"#,
    );
    assert!(ok, "{out}");
    let secret = s.get_json("secret", "untyped").expect("secret");
    assert_eq!(secret["type"], "Opaque", "{secret}");
    assert_eq!(secret["data"]["k"], "dg==", "{secret}");
}

#[test]
fn events_carry_core_v1_fields_and_sort_by_last_timestamp() {
    let s = server();
    let event = |name: &str, reason: &str, first: &str, last: &str| {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default", "fieldPath": "spec.containers{app}"},
            "reason": reason, "message": format!("{reason} happened"), "type": "Normal",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": first, "lastTimestamp": last, "count": 3
        })
    };
    s.create_ok(event(
        "late",
        "Late",
        "2026-01-01T00:00:00Z",
        "2026-01-03T00:00:00Z",
    ));
    s.create_ok(event(
        "early",
        "Early",
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
    ));
    let out = s.kubectl_ok(&[
        "get",
        "events",
        "--sort-by=.lastTimestamp",
        "-o",
        "custom-columns=REASON:.reason,COUNT:.count,FIELD:.involvedObject.fieldPath,SOURCE:.source.component",
    ]);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with("Early") && rows[1].starts_with("Late"),
        "{out}"
    );
    assert!(
        rows[1].contains("3")
            && rows[1].contains("spec.containers{app}")
            && rows[1].contains("kubelet"),
        "{out}"
    );
    // A repeat of an event (same source, object, type, reason, message) within ten minutes
    // is counted on the first, as client-go's recorder aggregates.
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut again = event("again-1", "Again", &now, &now);
    again["count"] = json!(1);
    s.create_ok(again.clone());
    again["metadata"]["name"] = json!("again-2");
    s.create_ok(again);
    let out = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector=reason=Again",
        "-o",
        "custom-columns=NAME:.metadata.name,COUNT:.count",
        "--no-headers",
    ]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows, [vec!["again-1", "2"]], "{out}");
    // The events.k8s.io/v1 view of the same event.
    let v1 = s.kubectl_ok(&["get", "events.v1.events.k8s.io", "late", "-o", "json"]);
    let v1: Value = serde_json::from_str(&v1).expect("json");
    assert_eq!(v1["deprecatedCount"], 3, "{v1}");
    assert_eq!(v1["regarding"]["fieldPath"], "spec.containers{app}", "{v1}");
}

#[test]
fn nodes_print_upstream_columns_and_wide() {
    let s = server();
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "n1"}],
            "nodeInfo": {
                "kubeletVersion": "v1.32.0-imc", "osImage": "Debian GNU/Linux 13", "kernelVersion": "6.12.0",
                "containerRuntimeVersion": "runc://1.2.5", "architecture": "amd64", "operatingSystem": "linux",
                "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""
            },
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }
    });
    s.create_ok(node);
    let out = s.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    let header = out.lines().next().unwrap_or("");
    for col in [
        "NAME",
        "STATUS",
        "ROLES",
        "AGE",
        "VERSION",
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ] {
        assert!(header.contains(col), "{col} in {out}");
    }
    let row = out.lines().find(|l| l.starts_with("n1")).expect("row n1");
    assert!(row.contains("control-plane"), "{out}");
}

#[test]
fn kinds_not_served_and_lists_answer_as_kube_apiserver_does() {
    let s = server();
    let budget = r#"{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"d"},"spec":{}}"#;
    let (ok, out) = s.kubectl_args_stdin(&["apply", "-f", "-"], budget);
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"no matches for kind "PodDisruptionBudget" in version "policy/v1""#),
        "{out}"
    );
    let list = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}, "data": {"a": "1"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two"}, "data": {"a": "2"}}
        ]
    });
    let (ok, out) = s.create(list);
    assert!(ok, "{out}");
    assert!(s.get_json("configmap", "one").is_some() && s.get_json("configmap", "two").is_some());
    // A path nothing serves is Go's plain 404, which kubectl words as upstream's.
    let (ok, out) = s.kubectl_args_stdin(
        &["get", "--raw", "/apis/policy/v1/poddisruptionbudgets"],
        "",
    );
    assert!(
        !ok && out.contains("the server could not find the requested resource"),
        "{out}"
    );
}

#[test]
fn server_side_apply_conflicts_unless_forced_and_names_its_managers() {
    let s = server();
    let manifest = |value: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"owned","namespace":"default"}},"data":{{"k":"{value}"}}}}"#
        )
    };
    let (ok, out) = s.kubectl_args_stdin(&["apply", "--server-side", "-f", "-"], &manifest("a"));
    assert!(ok, "{out}");
    let (ok, out) = s.kubectl_args_stdin(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        &manifest("b"),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("conflict"), "{out}");
    assert!(
        out.contains(r#"conflict with "kubectl""#) && out.contains(".data.k"),
        "{out}"
    );
    let cm = s.get_json("configmap", "owned").expect("cm");
    assert_eq!(
        cm["data"]["k"], "a",
        "the conflicting apply changed it: {cm}"
    );
    let (ok, out) = s.kubectl_args_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &manifest("b"),
    );
    assert!(ok, "{out}");
    let cm = s
        .get_json_in("configmap", "owned", &["--show-managed-fields"])
        .expect("cm");
    assert_eq!(cm["data"]["k"], "b", "{cm}");
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|e| e["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(managers.contains(&"other"), "{managers:?}");
    // A write without a fieldManager is recorded under the user agent's program name, as a
    // kube-rs controller's is.
    let answer = s
        .raw(&RawRequest {
            user_agent: Some("imc-cache-controller/0.1 (linux/amd64) kube-rs"),
            ..RawRequest::admin(&s, "PATCH", "/api/v1/namespaces/default/configmaps/owned")
                .expect("token")
                .with_body("application/merge-patch+json", r#"{"data":{"other":"x"}}"#)
        })
        .expect("patch");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cm = s
        .get_json_in("configmap", "owned", &["--show-managed-fields"])
        .expect("cm");
    let owners: Vec<(&str, String)> = cm["metadata"]["managedFields"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or(""),
                        e["fieldsV1"].to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|(m, f)| *m == "imc-cache-controller" && f.contains("f:other")),
        "{owners:?}"
    );
}

#[test]
fn server_side_apply_of_an_image_cache_does_not_duplicate_its_pull_secrets() {
    let s = server();
    let manifest = r#"{"apiVersion":"eci.alibabacloud.com/v1","kind":"ImageCache","metadata":{"name":"ssa"},
        "spec":{"images":["busybox:1.36"],"imagePullSecrets":["default:regcred","default:other"]}}"#;
    for round in 0..3 {
        let (ok, out) = s.kubectl_args_stdin(&["apply", "--server-side", "-f", "-"], manifest);
        assert!(ok, "round {round}: {out}");
    }
    let cache = s.get_json("imagecache", "ssa").expect("imagecache");
    assert_eq!(
        cache["spec"]["imagePullSecrets"],
        json!(["default:regcred", "default:other"]),
        "{cache}"
    );
    // A list of strings without list-type information is atomic: applying a shorter list
    // replaces it.
    let shorter = manifest.replace(r#","default:other""#, "");
    let (ok, out) = s.kubectl_args_stdin(&["apply", "--server-side", "-f", "-"], &shorter);
    assert!(ok, "{out}");
    let cache = s.get_json("imagecache", "ssa").expect("imagecache");
    assert_eq!(
        cache["spec"]["imagePullSecrets"],
        json!(["default:regcred"]),
        "{cache}"
    );
}

#[test]
fn deleting_a_namespace_waits_until_its_node_has_removed_its_pods() {
    let s = server();
    s.kubectl_ok(&["create", "namespace", "doomed"]);
    s.kubectl_ok(&["create", "configmap", "-n", "doomed", "settings"]);
    // A pod bound to a node: only its node may remove it (there is no node in --api-only,
    // so the test plays the node).
    s.create_ok(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker", "namespace": "doomed"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "busybox:1.36"}]}
    }));
    let mut delete = s
        .kubectl_command(&["delete", "namespace", "doomed"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl delete namespace");
    let pod = s.wait_for_in(
        "pod",
        "worker",
        &["-n", "doomed"],
        "marked for deletion",
        |p| p["metadata"]["deletionTimestamp"].is_string(),
    );
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    let ns = s.wait_for("namespace", "doomed", "reporting what is left", |n| {
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "NamespaceContentRemaining" && c["status"] == "True")
    });
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    assert!(
        s.get_json_in("configmap", "settings", &["-n", "doomed"])
            .is_none(),
        "the rest of the namespace is deleted meanwhile"
    );
    assert!(
        delete.try_wait().expect("kubectl state").is_none(),
        "kubectl delete namespace returned while its pod was still there"
    );
    // The node removes the stopped pod; the namespace goes, and kubectl returns.
    s.kubectl_ok(&[
        "delete",
        "pod",
        "worker",
        "-n",
        "doomed",
        "--grace-period=0",
        "--force",
    ]);
    let out = delete.wait_with_output().expect("kubectl delete namespace");
    assert!(
        out.status.success(),
        "{}",
        imc_testkit::kubectl::output_text(&out)
    );
    s.wait_gone("namespace", "doomed");
}

#[test]
fn the_servers_own_controllers_write_under_their_name() {
    let s = TestServer::start(env!("CARGO_BIN_EXE_imc")).expect("start imc server");
    let nodes = s.kubectl_ok(&["get", "nodes", "-o", "name"]);
    let node = nodes
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("node/"))
        .expect("the node registered")
        .to_owned();
    let obj = s.wait_for_in(
        "node",
        &node,
        &["--show-managed-fields"],
        "written by the node",
        |n| n["metadata"]["managedFields"].is_array(),
    );
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert!(managers.contains(&"imc-controllers"), "{managers:?}");
    assert!(!managers.contains(&"unknown"), "{managers:?}");
}
