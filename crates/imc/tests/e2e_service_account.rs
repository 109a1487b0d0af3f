//! Service-account API access end to end (issue 9 item 1): the ServiceAccount admission
//! plugin gives a new pod the `default` account and a `kube-api-access-xxxxx` projected
//! volume; the node writes the bound token, `ca.crt` and `namespace` there, and the token
//! authenticates as the pod's service account, from the test and from inside the pod (through
//! `KUBERNETES_SERVICE_HOST`/`PORT`: the pod network's gateway, forwarded to the API). `automountServiceAccountToken: false` (pod or
//! account) is honoured, and a pod naming an account that does not exist is refused.

mod run_support;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_running;
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-sa-node";
const DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn start_server(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

fn sleeper(name: &str, image: &str, spec_extra: Value) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": image, "command": ["sleep", "100000"]}]}});
    if let (Some(spec), Some(extra)) = (pod["spec"].as_object_mut(), spec_extra.as_object()) {
        spec.extend(extra.clone());
    }
    pod
}

fn exec(server: &TestServer, pod: &str, script: &str) -> String {
    server.kubectl_ok(&["exec", pod, "--", "sh", "-c", script])
}

#[test]
fn a_pod_gets_a_token_that_authenticates_as_its_service_account() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    server.create_ok(sleeper("reader", &reg.busybox, json!({})));
    let pod = server.wait_for("pod", "reader", "Running", pod_running);

    // What admission added.
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let volume = pod["spec"]["volumes"]
        .as_array()
        .and_then(|vs| {
            vs.iter().find(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kube-api-access-"))
            })
        })
        .expect("a kube-api-access volume")
        .clone();
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"],
        json!({"expirationSeconds": 3607, "path": "token"})
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"],
        json!([{"name": volume["name"], "readOnly": true, "mountPath": DIR}])
    );

    // What the node wrote.
    assert_eq!(
        exec(&server, "reader", &format!("cat {DIR}/namespace")),
        "default"
    );
    let ca = server.kubectl_ok(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert_eq!(exec(&server, "reader", &format!("cat {DIR}/ca.crt")), ca);
    assert_eq!(
        exec(
            &server,
            "reader",
            &format!("stat -L -c %a {DIR}/token {DIR}/ca.crt {DIR}/namespace")
        ),
        "644\n644\n644\n"
    );
    let denied = server
        .kubectl(&["exec", "reader", "--", "touch", &format!("{DIR}/extra")])
        .unwrap();
    assert!(!denied.status.success(), "the volume is mounted read-only");

    // The token is the pod's identity.
    let token = exec(&server, "reader", &format!("cat {DIR}/token"));
    let who = server.kubectl_ok(&["auth", "whoami", "--token", token.trim(), "-o", "json"]);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"], "system:serviceaccount:default:default",
        "{who}"
    );
}

#[test]
fn automount_false_and_missing_accounts_are_honoured() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    server.create_ok(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "quiet"}, "automountServiceAccountToken": false}));
    server.create_ok(sleeper(
        "pod-off",
        &reg.busybox,
        json!({"automountServiceAccountToken": false}),
    ));
    server.create_ok(sleeper(
        "account-off",
        &reg.busybox,
        json!({"serviceAccountName": "quiet"}),
    ));
    for name in ["pod-off", "account-off"] {
        let pod = server.wait_for("pod", name, "Running", pod_running);
        let volumes = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            !volumes.iter().any(|v| v["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("kube-api-access-")),
            "{name}: {volumes:?}"
        );
        assert_eq!(
            exec(
                &server,
                name,
                &format!("test -e {DIR} && echo there || echo absent")
            ),
            "absent\n",
            "{name}"
        );
    }
    let (ok, out) = server.create(sleeper(
        "ghostly",
        &reg.busybox,
        json!({"serviceAccountName": "ghost"}),
    ));
    assert!(!ok);
    assert!(
        out.contains(r#"pods "ghostly" is forbidden: error looking up service account default/ghost: serviceaccount "ghost" not found"#),
        "{out}"
    );
}
