//! Knative Serving's API on `imc server --experimental-knative-api`, driven by the real kubectl:
//! the seed's Knative Service manifest is accepted and defaulted as Knative's webhook would,
//! bad specs are refused in Knative's words, and the four kinds are listed with Knative's short
//! names, categories and columns. (Nothing reconciles them yet: issue 12.)

use imc_testkit::apiserver::{KUBECTL, TestServer};
use imc_testkit::kubectl::table_header;

/// The seed's option B, as the vendor document gives it.
const SEED_KSVC: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: helloworld-go
spec:
  template:
    metadata:
      labels:
        app: helloworld-go
      annotations:
        k8s.aliyun.com/eci-image-cache: \"true\"
    spec:
      containers:
        - image: registry.cn-hangzhou.aliyuncs.com/knative-sample/helloworld-go:73fbdd56
";

fn server() -> TestServer {
    assert!(
        std::path::Path::new(KUBECTL).exists(),
        "{KUBECTL} is required for these tests"
    );
    TestServer::start_with_args(
        env!("CARGO_BIN_EXE_imc"),
        &[
            "--disable".to_owned(),
            "controllers,node,admission".to_owned(),
            "--experimental-knative-api".to_owned(),
        ],
    )
    .expect("start imc server")
}

#[test]
fn the_seed_service_is_accepted_defaulted_and_listed_like_knatives() {
    let s = server();
    let (ok, out) = s.kubectl_args_stdin(&["apply", "-f", "-"], SEED_KSVC);
    assert!(ok, "{out}");
    assert!(
        out.contains("service.serving.knative.dev/helloworld-go created"),
        "{out}"
    );

    let ksvc = s
        .get_json("ksvc", "helloworld-go")
        .expect("the Knative Service");
    let spec = &ksvc["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["name"], "user-container", "{ksvc}");
    assert_eq!(spec["timeoutSeconds"], 300, "{ksvc}");
    assert_eq!(spec["containerConcurrency"], 0, "{ksvc}");
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["tcpSocket"]["port"], 0,
        "{ksvc}"
    );
    assert_eq!(
        ksvc["spec"]["traffic"],
        serde_json::json!([{"latestRevision": true, "percent": 100}])
    );
    assert_eq!(
        ksvc["spec"]["template"]["metadata"]["annotations"]["k8s.aliyun.com/eci-image-cache"],
        "true"
    );

    // Knative's columns, short names and categories.
    let (ok, out) = s.kubectl_args_stdin(
        &["apply", "-f", "-"],
        "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  name: hello\n  namespace: default\nspec:\n  template:\n    spec:\n      containers:\n      - image: helloworld-go:1\n---\napiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: hello\n  namespace: default\nspec:\n  traffic:\n  - configurationName: hello\n    percent: 100\n",
    );
    assert!(ok, "{out}");
    for (name, header) in [
        (
            "ksvc",
            vec![
                "NAME",
                "URL",
                "LATESTCREATED",
                "LATESTREADY",
                "READY",
                "REASON",
            ],
        ),
        (
            "kservice",
            vec![
                "NAME",
                "URL",
                "LATESTCREATED",
                "LATESTREADY",
                "READY",
                "REASON",
            ],
        ),
        (
            "cfg",
            vec!["NAME", "LATESTCREATED", "LATESTREADY", "READY", "REASON"],
        ),
        (
            "config",
            vec!["NAME", "LATESTCREATED", "LATESTREADY", "READY", "REASON"],
        ),
        ("rt", vec!["NAME", "URL", "READY", "REASON"]),
    ] {
        let out = s.kubectl_ok(&["get", name]);
        assert_eq!(table_header(&out), header, "{out}");
    }
    let rev = s.kubectl_args_stdin(
        &["apply", "-f", "-"],
        "apiVersion: serving.knative.dev/v1\nkind: Revision\nmetadata:\n  name: hello-00001\n  namespace: default\n  labels:\n    serving.knative.dev/configuration: hello\n    serving.knative.dev/configurationGeneration: \"1\"\nspec:\n  containers:\n  - image: helloworld-go:1\n",
    );
    assert!(rev.0, "{}", rev.1);
    let revs = s.kubectl_ok(&["get", "rev"]);
    assert_eq!(
        table_header(&revs),
        [
            "NAME",
            "CONFIG",
            "NAME",
            "GENERATION",
            "READY",
            "REASON",
            "ACTUAL",
            "REPLICAS",
            "DESIRED",
            "REPLICAS"
        ],
        "{revs}"
    );
    assert!(revs.contains("hello-00001   hello"), "{revs}");
    let knative = s.kubectl_ok(&["get", "knative"]);
    assert!(
        knative.contains("service.serving.knative.dev/helloworld-go")
            && knative.contains("revision.serving.knative.dev/hello-00001"),
        "{knative}"
    );
    // A Revision's spec is immutable.
    let (ok, out) = s.kubectl_args_stdin(
        &["apply", "-f", "-"],
        "apiVersion: serving.knative.dev/v1\nkind: Revision\nmetadata:\n  name: hello-00001\n  namespace: default\nspec:\n  containers:\n  - image: helloworld-go:2\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("Immutable fields changed"), "{out}");
    // Core Services keep the plain name.
    let core = s.kubectl_ok(&["get", "services", "-A"]);
    assert!(!core.contains("helloworld-go"), "{core}");
}

#[test]
fn bad_services_are_refused_in_knatives_words() {
    let s = server();
    let bad = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: bad
  namespace: default
spec:
  template:
    metadata:
      name: other-00001
    spec:
      containerConcurrency: 2000
      timeoutSeconds: 900
      containers:
        - image: helloworld-go:1
          ports:
            - containerPort: 8012
          env:
            - name: K_REVISION
              value: x
  traffic:
    - latestRevision: true
      percent: 90
";
    let (ok, out) = s.kubectl_args_stdin(&["apply", "-f", "-"], bad);
    assert!(!ok, "{out}");
    for want in [
        "the name must have the prefix \"bad-\"",
        "expected 0 <= 2000 <= 1000",
        "expected 0 <= 900 <= 600",
        "8012 is a reserved port",
        "\"K_REVISION\" is a reserved environment variable",
        "Traffic targets sum to 90, want 100",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    let (ok, out) = s.kubectl_args_stdin(
        &["apply", "-f", "-"],
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: empty\n  namespace: default\nspec:\n  template:\n    spec:\n      containers: []\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("containers"), "{out}");
}
