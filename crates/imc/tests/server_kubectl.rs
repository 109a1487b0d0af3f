//! `imc server` driven by the real kubectl (/usr/bin/kubectl) with the kubeconfig it writes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use imc_testkit::apiserver::{KUBECTL, TestServer};
use imc_testkit::kubectl::table_header;

/// The seed document's ImageCache manifest, unchanged.
const SEED: &str = include_str!("fixtures/imagecache-sample-test.yaml");

fn server() -> TestServer {
    assert!(
        std::path::Path::new(KUBECTL).exists(),
        "{KUBECTL} is required for these tests"
    );
    TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).expect("start imc server")
}

/// Runs kubectl, asserting success; returns stdout.
fn ok(s: &TestServer, args: &[&str]) -> String {
    ok_stdin(s, args, None)
}

fn ok_stdin(s: &TestServer, args: &[&str], stdin: Option<&str>) -> String {
    let out = s.kubectl_stdin(args, stdin).expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

/// Runs kubectl, asserting failure; returns stderr.
fn fails(s: &TestServer, args: &[&str], stdin: Option<&str>) -> String {
    let out = s.kubectl_stdin(args, stdin).expect("run kubectl");
    assert!(
        !out.status.success(),
        "kubectl {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn seed_manifest_create_get_describe_explain_delete() {
    let s = server();
    std::fs::write(s.data_dir().join("seed.yaml"), SEED).unwrap();
    let seed = s.data_dir().join("seed.yaml");
    let out = ok(&s, &["create", "-f", seed.to_str().unwrap()]);
    assert_eq!(
        out.trim(),
        "imagecache.eci.alibabacloud.com/imagecache-sample-test created"
    );

    let out = ok(&s, &["get", "imagecache", "imagecache-sample-test"]);
    assert_eq!(
        table_header(&out),
        ["NAME", "AGE", "CACHEID", "PHASE", "PROGRESS"]
    );
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("imagecache-sample-test "),
        "{out}"
    );

    let out = ok(&s, &["get", "imc"]);
    assert_eq!(
        table_header(&out),
        ["NAME", "AGE", "CACHEID", "PHASE", "PROGRESS"]
    );
    assert!(out.contains("imagecache-sample-test"));

    let yaml = ok(&s, &["get", "imc", "imagecache-sample-test", "-o", "yaml"]);
    for want in [
        "imageCacheSize: 25",
        "retentionDays: 7",
        "k8s.aliyun.com/eci-image-cache: \"true\"",
        "uid: ",
        "creationTimestamp: ",
        "generation: 1",
        "registry.cn-shanghai.aliyuncs.com/eci_open/busybox:1.30",
    ] {
        assert!(yaml.contains(want), "missing {want:?} in\n{yaml}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s, &["get", "imc", "-o", "json"])).unwrap();
    assert_eq!(
        json["items"][0]["spec"]["images"].as_array().unwrap().len(),
        2
    );

    let out = ok(&s, &["describe", "imagecache", "imagecache-sample-test"]);
    assert!(
        out.contains("imagecache-sample-test") && out.contains("Image Cache Size:  25"),
        "{out}"
    );

    let out = ok(&s, &["explain", "imagecache"]);
    assert!(
        out.contains("KIND:       ImageCache") && out.contains("spec\t<Object>"),
        "{out}"
    );
    let out = ok(&s, &["explain", "imagecache.spec"]);
    assert!(
        out.contains("imageCacheSize\t<integer>") && out.contains("images\t<[]string>"),
        "{out}"
    );

    let out = ok(&s, &["delete", "imagecache", "imagecache-sample-test"]);
    assert_eq!(
        out.trim(),
        "imagecache.eci.alibabacloud.com \"imagecache-sample-test\" deleted"
    );
    let err = fails(&s, &["get", "imc", "imagecache-sample-test"], None);
    assert!(
        err.contains("imagecaches.eci.alibabacloud.com \"imagecache-sample-test\" not found"),
        "{err}"
    );
}

const APPLIED: &str = "apiVersion: eci.alibabacloud.com/v1
kind: ImageCache
metadata:
  name: applied
spec:
  images: [\"registry.example/ns/busybox:1.36\"]
";

#[test]
fn apply_label_annotate_patch() {
    let s = server();
    let jp = |path: &str| {
        ok(
            &s,
            &["get", "imc", "applied", "-o", &format!("jsonpath={path}")],
        )
    };
    assert_eq!(
        ok_stdin(&s, &["apply", "-f", "-"], Some(APPLIED)).trim(),
        "imagecache.eci.alibabacloud.com/applied created"
    );
    // Defaulted by the server.
    assert_eq!(jp("{.spec.imageCacheSize}"), "20");
    let changed = APPLIED.replace("1.36", "1.37");
    assert_eq!(
        ok_stdin(&s, &["apply", "-f", "-"], Some(&changed)).trim(),
        "imagecache.eci.alibabacloud.com/applied configured"
    );
    assert_eq!(jp("{.spec.images[0]}"), "registry.example/ns/busybox:1.37");
    assert_eq!(jp("{.metadata.generation}"), "2");

    let ssa = APPLIED.replace("1.36", "1.38");
    let out = ok_stdin(&s, &["apply", "--server-side", "-f", "-"], Some(&ssa));
    assert_eq!(
        out.trim(),
        "imagecache.eci.alibabacloud.com/applied serverside-applied"
    );
    assert_eq!(jp("{.spec.images[0]}"), "registry.example/ns/busybox:1.38");
    let ssa_new = ssa.replace("name: applied", "name: applied-ssa");
    assert!(
        ok_stdin(&s, &["apply", "--server-side", "-f", "-"], Some(&ssa_new))
            .contains("serverside-applied")
    );
    ok(&s, &["get", "imc", "applied-ssa"]);

    assert_eq!(
        ok(&s, &["label", "imc", "applied", "team=cache"]).trim(),
        "imagecache.eci.alibabacloud.com/applied labeled"
    );
    assert_eq!(
        ok(&s, &["annotate", "imc", "applied", "note=hello"]).trim(),
        "imagecache.eci.alibabacloud.com/applied annotated"
    );
    assert_eq!(
        jp("{.metadata.labels.team} {.metadata.annotations.note} {.metadata.generation}"),
        "cache hello 3"
    );
    let out = ok(&s, &["get", "imc", "-l", "team=cache", "-o", "name"]);
    assert_eq!(out.trim(), "imagecache.eci.alibabacloud.com/applied");
    let out = ok(
        &s,
        &["get", "imc", "-l", "team notin (cache)", "-o", "name"],
    );
    assert_eq!(out.trim(), "imagecache.eci.alibabacloud.com/applied-ssa");

    ok(
        &s,
        &[
            "patch",
            "imc",
            "applied",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"retentionDays":9}}"#,
        ],
    );
    ok(
        &s,
        &[
            "patch",
            "imc",
            "applied",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/imageCacheSize","value":30}]"#,
        ],
    );
    assert_eq!(
        jp("{.spec.retentionDays} {.spec.imageCacheSize} {.metadata.generation}"),
        "9 30 5"
    );
    // Strategic merge patch is refused for a custom resource, as Kubernetes does.
    let err = fails(
        &s,
        &[
            "patch",
            "imc",
            "applied",
            "-p",
            r#"{"spec":{"retentionDays":3}}"#,
        ],
        None,
    );
    assert!(err.contains("strategic-merge-patch"), "{err}");
    // An invalid patch is rejected with the field.
    let err = fails(
        &s,
        &[
            "patch",
            "imc",
            "applied",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"imageCacheSize":5}}"#,
        ],
        None,
    );
    assert!(err.contains("spec.imageCacheSize"), "{err}");

    // kubectl diff: a server-side dry-run apply compared with the live object.
    let changed = format!("{ssa}  retentionDays: 11\n");
    let out = s
        .kubectl_stdin(&["diff", "-f", "-"], Some(&changed))
        .unwrap();
    let diff = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{diff}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        diff.contains("-  retentionDays: 9") && diff.contains("+  retentionDays: 11"),
        "{diff}"
    );
    assert_eq!(jp("{.spec.retentionDays}"), "9");

    // --dry-run=server validates and answers, and stores nothing.
    let dry = APPLIED.replace("name: applied", "name: dry");
    let out = ok_stdin(&s, &["apply", "--dry-run=server", "-f", "-"], Some(&dry));
    assert_eq!(
        out.trim(),
        "imagecache.eci.alibabacloud.com/dry created (server dry run)"
    );
    let out = ok_stdin(
        &s,
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&dry),
    );
    assert!(out.contains("(server dry run)"), "{out}");
    let err = fails(&s, &["get", "imc", "dry"], None);
    assert!(err.contains("not found"), "{err}");
    let bad = dry.replace("images: [", "imageCacheSize: 5\n  images: [");
    let err = fails(&s, &["create", "--dry-run=server", "-f", "-"], Some(&bad));
    assert!(err.contains("spec.imageCacheSize"), "{err}");
    ok(&s, &["delete", "imc", "applied", "--dry-run=server"]);
    ok(
        &s,
        &["label", "imc", "applied", "dry=run", "--dry-run=server"],
    );
    assert_eq!(jp("{.metadata.labels}"), r#"{"team":"cache"}"#);
}

#[test]
fn wait_for_ready_condition_set_through_status() {
    let s = server();
    ok_stdin(&s, &["create", "-f", "-"], Some(APPLIED));
    let wait = Command::new(KUBECTL)
        .args([
            "wait",
            "--for=condition=Ready",
            "imc/applied",
            "--timeout=120s",
        ])
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", s.data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = r#"{"status":{"phase":"Ready","imageCacheId":"imc-abcdefghij0123456789","progress":"100%","conditions":[{"type":"Ready","status":"True","reason":"Built","message":"cache built","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    ok(
        &s,
        &[
            "patch",
            "imc",
            "applied",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            status,
        ],
    );
    let out = wait.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imagecache.eci.alibabacloud.com/applied condition met"
    );

    let table = ok(&s, &["get", "imc", "applied"]);
    let row: Vec<_> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[2], row[3], row[4]),
        ("applied", "imc-abcdefghij0123456789", "Ready", "100%")
    );
    let jp = |path: &str| {
        ok(
            &s,
            &["get", "imc", "applied", "-o", &format!("jsonpath={path}")],
        )
    };
    // A status write never bumps generation; a main-resource write never changes status.
    assert_eq!(jp("{.metadata.generation}"), "1");
    ok(
        &s,
        &[
            "patch",
            "imc",
            "applied",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Failed"},"spec":{"retentionDays":2}}"#,
        ],
    );
    assert_eq!(jp("{.status.phase} {.metadata.generation}"), "Ready 2");
}

#[test]
fn invalid_manifests_are_rejected_naming_the_field() {
    let s = server();
    let many: Vec<String> = (0..21)
        .map(|i| format!("\"registry.example/ns/app{i}:1\""))
        .collect();
    let cases = [
        ("no images", "{}".to_owned(), "spec.images"),
        ("empty images", r#"{"images":[]}"#.to_owned(), "spec.images"),
        (
            "21 images",
            format!("{{\"images\":[{}]}}", many.join(",")),
            "spec.images",
        ),
        (
            "malformed reference",
            r#"{"images":["Not A Reference"]}"#.to_owned(),
            "spec.images[0]",
        ),
        (
            "size 5",
            r#"{"images":["a/b:1"],"imageCacheSize":5}"#.to_owned(),
            "spec.imageCacheSize",
        ),
        (
            "size 40000",
            r#"{"images":["a/b:1"],"imageCacheSize":40000}"#.to_owned(),
            "spec.imageCacheSize",
        ),
        (
            "retention 0",
            r#"{"images":["a/b:1"],"retentionDays":0}"#.to_owned(),
            "spec.retentionDays",
        ),
    ];
    for (name, spec, field) in cases {
        let manifest = format!(
            r#"{{"apiVersion":"eci.alibabacloud.com/v1","kind":"ImageCache","metadata":{{"name":"bad"}},"spec":{spec}}}"#
        );
        let err = fails(&s, &["create", "-f", "-"], Some(&manifest));
        assert!(
            err.contains("The ImageCache \"bad\" is invalid"),
            "{name}: {err}"
        );
        assert!(
            err.contains(&format!("{field}:")),
            "{name}: expected {field} in {err}"
        );
    }
    // A misspelt field is refused (kubectl asks for strict field validation), not dropped.
    let typo = r#"{"apiVersion":"eci.alibabacloud.com/v1","kind":"ImageCache","metadata":{"name":"typo"},"spec":{"images":["a/b:1"],"imageCachesize":25}}"#;
    let err = fails(&s, &["create", "-f", "-"], Some(typo));
    assert!(
        err.contains(r#"unknown field "spec.imageCachesize""#),
        "{err}"
    );
    assert_eq!(ok(&s, &["get", "imc", "-o", "name"]).trim(), "");
}

#[test]
fn watch_wide_pods_logs_and_unauthorized() {
    let s = server();
    let mut watch = Command::new(KUBECTL)
        .args(["get", "imc", "-w", "--request-timeout=60s"])
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", s.data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    ok_stdin(&s, &["create", "-f", "-"], Some(APPLIED));
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("applied "));
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert!(
        line.is_some(),
        "kubectl get -w never showed the new ImageCache"
    );

    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"containers":[{"name":"app","image":"registry.example/ns/busybox:1.36"}]}}"#;
    assert_eq!(
        ok_stdin(&s, &["create", "-f", "-"], Some(pod)).trim(),
        "pod/web created"
    );
    let out = ok(&s, &["get", "pods"]);
    assert_eq!(
        table_header(&out),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(4)
            .eq(["web", "0/1", "Pending", "0"]),
        "{out}"
    );
    let out = ok(&s, &["get", "pods", "-o", "wide"]);
    assert_eq!(
        table_header(&out),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    let err = fails(&s, &["logs", "web"], None);
    assert!(err.contains("no container running yet"), "{err}");
    ok(&s, &["label", "pod", "web", "app=web"]);
    ok(
        &s,
        &[
            "patch",
            "pod",
            "web",
            "-p",
            r#"{"spec":{"containers":[{"name":"app","image":"registry.example/ns/busybox:1.37"}]}}"#,
        ],
    );
    assert_eq!(
        ok(
            &s,
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.spec.containers[*].image}"
            ]
        ),
        "registry.example/ns/busybox:1.37"
    );
    assert_eq!(
        ok(&s, &["get", "sa", "-n", "kube-system", "-o", "name"]).trim(),
        "serviceaccount/default"
    );
    let uid = ok(&s, &["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"]);
    let event = format!(
        r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"web.1"}},"involvedObject":{{"kind":"Pod","name":"web","namespace":"default","uid":"{uid}"}},"reason":"Pulled","message":"image pulled","type":"Normal"}}"#
    );
    ok_stdin(&s, &["create", "-f", "-"], Some(&event));
    let out = ok(&s, &["get", "events"]);
    assert_eq!(
        table_header(&out),
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(
        out.contains("pod/web") && out.contains("image pulled"),
        "{out}"
    );
    let out = ok(&s, &["describe", "pod", "web"]);
    assert!(
        out.contains("Pulled") && out.contains("image pulled"),
        "{out}"
    );
    // kubectl's typed generators send protobuf bodies.
    ok(&s, &["create", "namespace", "team-a"]);
    assert_eq!(
        ok(&s, &["get", "sa", "-n", "team-a", "-o", "name"]).trim(),
        "serviceaccount/default"
    );
    ok(
        &s,
        &[
            "create",
            "configmap",
            "cfg",
            "-n",
            "team-a",
            "--from-literal=a=b",
        ],
    );
    let err = fails(
        &s,
        &[
            "create",
            "configmap",
            "cfg",
            "-n",
            "team-a",
            "--from-literal=a=b",
        ],
        None,
    );
    assert!(err.contains("configmaps \"cfg\" already exists"), "{err}");
    let out = ok(
        &s,
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "-n",
            "team-a",
            "--docker-server=registry.example:5000",
            "--docker-username=u",
            "--docker-password=p",
        ],
    );
    assert_eq!(out.trim(), "secret/regcred created");
    let secret = ok(
        &s,
        &[
            "get",
            "secret",
            "regcred",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.type}",
        ],
    );
    assert_eq!(secret, "kubernetes.io/dockerconfigjson");
    ok(&s, &["create", "serviceaccount", "robot", "-n", "team-a"]);
    // Deleting the namespace removes what it holds.
    ok(&s, &["delete", "namespace", "team-a"]);
    let left = ok(
        &s,
        &[
            "get",
            "configmaps,secrets,serviceaccounts",
            "-n",
            "team-a",
            "-o",
            "name",
        ],
    );
    assert_eq!(left.trim(), "", "namespace contents survived its deletion");

    let err = fails(&s, &["--token=not-the-token", "get", "imc"], None);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
    // No token at all, over TLS verified against the generated CA: a 401 Status.
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.data_dir().join("pki/ca.crt"))
        .arg(format!(
            "https://{}/apis/eci.alibabacloud.com/v1/imagecaches",
            s.addr()
        ))
        .output()
        .expect("curl is installed by scripts/deps");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "401", "{text}");
    let status: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        (
            status["kind"].as_str(),
            status["reason"].as_str(),
            status["code"].as_i64()
        ),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
}

#[test]
fn data_survives_kill_9() {
    let mut s = server();
    for i in 0..20 {
        let m = APPLIED.replace("name: applied", &format!("name: durable-{i}"));
        ok_stdin(&s, &["create", "-f", "-"], Some(&m));
    }
    let before: u64 = ok(
        &s,
        &[
            "get",
            "imc",
            "durable-19",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    )
    .parse()
    .unwrap();
    s.kill().unwrap();
    s.restart().unwrap();
    let names = ok(&s, &["get", "imc", "-o", "name"]);
    assert_eq!(names.lines().count(), 20, "{names}");
    ok_stdin(&s, &["create", "-f", "-"], Some(APPLIED));
    let after: u64 = ok(
        &s,
        &[
            "get",
            "imc",
            "applied",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    )
    .parse()
    .unwrap();
    assert!(
        after > before,
        "resourceVersion went backwards: {after} <= {before}"
    );
    assert!(s.stop().unwrap(), "graceful shutdown on SIGTERM failed");
}
