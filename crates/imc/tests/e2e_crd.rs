//! CustomResourceDefinitions in `imc server`, driven by the real kubectl: a CRD modelled on
//! cert-manager's Certificate is applied and established, its objects are validated (one cause
//! per field), defaulted and pruned, listed with the CRD's columns and short names, explained,
//! listed by `kubectl get all`, split between main resource and status; CRDs and objects
//! survive a restart, deleting the CRD deletes its objects, and ImageCache is a CRD too.

use imc_testkit::apiserver::{KUBECTL, TestServer};
use imc_testkit::kubectl::table_header;

const CERT_CRD: &str = include_str!("fixtures/crd-certificate.yaml");
const CRD: &str = "crd/certificates.certs.example.io";

fn server() -> TestServer {
    assert!(
        std::path::Path::new(KUBECTL).exists(),
        "{KUBECTL} is required for these tests"
    );
    TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).expect("start imc server")
}

fn cert(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: certs.example.io/v1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{spec}"
    )
}

fn install(s: &TestServer) {
    establish(s, CERT_CRD, CRD);
}

/// Applies the CRD `yaml` and waits until `crd` (`crd/NAME`) is Established.
fn establish(s: &TestServer, yaml: &str, crd: &str) {
    let (ok, out) = s.kubectl_args_stdin(&["apply", "-f", "-"], yaml);
    assert!(ok, "{out}");
    s.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        crd,
    ]);
}

#[test]
fn a_certificate_crd_is_served_validated_defaulted_pruned_and_listed() {
    let s = server();
    install(&s);
    let crds = s.kubectl_ok(&["get", "crd"]);
    assert_eq!(table_header(&crds), ["NAME", "CREATED", "AT"]);
    assert!(crds.contains("certificates.certs.example.io"), "{crds}");
    assert!(crds.contains("imagecaches.eci.alibabacloud.com"), "{crds}");

    // Passes, and is defaulted (nested defaults too).
    let (ok, out) = s.kubectl_args_stdin(
        &["apply", "-f", "-"],
        &cert(
            "web",
            "  secretName: web-tls\n  issuerRef:\n    name: ca\n  privateKey: {}\n",
        ),
    );
    assert!(ok, "{out}");
    let web = s
        .get_json_in("cert", "web", &["-n", "default"])
        .expect("created");
    assert_eq!(web["spec"]["duration"], "2160h");
    assert_eq!(web["spec"]["replicas"], 1);
    assert_eq!(web["spec"]["privateKey"]["algorithm"], "RSA");
    assert_eq!(web["spec"]["issuerRef"]["kind"], "Issuer");

    // One cause per bad field, in kube-apiserver's words.
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&cert(
            "bad",
            "  secretName: Web_TLS\n  replicas: 9\n  usages: [telepathy]\n  privateKey:\n    algorithm: DSA\n  issuerRef: {}\n",
        )),
    );
    for want in [
        r#"The Certificate "bad" is invalid"#,
        "spec.issuerRef.name: Required value",
        r#"spec.privateKey.algorithm: Unsupported value: "DSA": supported values: "RSA", "ECDSA", "Ed25519""#,
        "spec.replicas: Invalid value: 9: spec.replicas in body should be less than or equal to 5",
        r#"spec.secretName: Invalid value: "Web_TLS": spec.secretName in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"#,
        r#"spec.usages[0]: Unsupported value: "telepathy": supported values: "digital signature", "key encipherment", "server auth", "client auth""#,
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(s.get_json_in("cert", "bad", &["-n", "default"]).is_none());

    // CEL rules: a rule with messageExpression and fieldPath, and a transition rule.
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&cert(
            "cel",
            "  secretName: cel\n  issuerRef:\n    name: ca\n  usages: [server auth, client auth, digital signature]\n",
        )),
    );
    assert!(
        err.contains(r#"spec.usages: Invalid value: "object": at most 2 usages for 1 replicas"#),
        "{err}"
    );
    let err = s.kubectl_err(
        &[
            "patch",
            "cert",
            "web",
            "-n",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"secretName":"other"}}"#,
        ],
        None,
    );
    assert!(
        err.contains(r#"spec.secretName: Invalid value: "string": secretName is immutable"#),
        "{err}"
    );

    // Unknown fields: refused by kubectl's default strict validation, warned about and pruned
    // with --validate=warn, kept under x-kubernetes-preserve-unknown-fields.
    let unknown = cert(
        "loose",
        "  secretName: loose\n  issuerRef:\n    name: ca\n  colour: blue\n  extra:\n    anything: [1, 2]\n",
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&unknown));
    assert!(err.contains(r#"unknown field "spec.colour""#), "{err}");
    let (ok, out) = s.kubectl_args_stdin(&["apply", "--validate=warn", "-f", "-"], &unknown);
    assert!(ok, "{out}");
    assert!(out.contains(r#"unknown field "spec.colour""#), "{out}");
    let loose = s
        .get_json_in("cert", "loose", &["-n", "default"])
        .expect("created");
    assert!(loose["spec"].get("colour").is_none(), "{loose}");
    assert_eq!(
        loose["spec"]["extra"]["anything"],
        serde_json::json!([1, 2])
    );

    // The status subresource: the main resource ignores status, the subresource sets it.
    s.kubectl_ok(&[
        "patch",
        "cert",
        "web",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":7}}"#,
    ]);
    let web = s.get_json_in("cert", "web", &["-n", "default"]).unwrap();
    assert!(web.get("status").is_none(), "{web}");
    s.kubectl_ok(&[
        "patch",
        "cert",
        "web",
        "-n",
        "default",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);

    // Columns from additionalPrinterColumns (a condition filter, a wide-only one, a date).
    let table = s.kubectl_ok(&["get", "cert", "-n", "default"]);
    assert_eq!(
        table_header(&table),
        ["NAME", "READY", "SECRET", "AGE"],
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .expect("web row");
    let cells: Vec<_> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["web", "True", "web-tls"], "{table}");
    let wide = s.kubectl_ok(&["get", "certs", "-n", "default", "-o", "wide"]);
    assert_eq!(
        table_header(&wide),
        ["NAME", "READY", "SECRET", "ISSUER", "AGE"],
        "{wide}"
    );
    // The category: `kubectl get all` lists them.
    let all = s.kubectl_ok(&["get", "all", "-n", "default"]);
    assert!(all.contains("certificate.certs.example.io/web"), "{all}");

    // kubectl explain shows the schema's descriptions.
    let explain = s.kubectl_ok(&["explain", "certificate.spec"]);
    assert!(
        explain.contains("What the certificate holds and who signs it."),
        "{explain}"
    );
    assert!(
        explain.contains("The Secret the signed certificate and its key are written to."),
        "{explain}"
    );
}

#[test]
fn crds_and_objects_survive_a_restart_and_go_with_their_crd() {
    let mut s = server();
    install(&s);
    s.create_ok(cert(
        "kept",
        "  secretName: kept\n  issuerRef:\n    name: ca\n",
    ));
    let ic_crd = |s: &TestServer| {
        s.get_json("crd", "imagecaches.eci.alibabacloud.com")
            .expect("ImageCache CRD")["metadata"]["resourceVersion"]
            .clone()
    };
    let before = ic_crd(&s);
    s.restart().expect("restart");
    // imc's own CRD is installed again only when it changed.
    assert_eq!(ic_crd(&s), before);
    let kept = s
        .get_json_in("cert", "kept", &["-n", "default"])
        .expect("kept across the restart");
    assert_eq!(kept["spec"]["duration"], "2160h");
    s.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        CRD,
    ]);

    // Deleting the CRD deletes its objects, then the CRD itself; the kind is no longer served.
    s.kubectl_ok(&["delete", CRD, "--wait=true", "--timeout=120s"]);
    s.wait_gone("crd", "certificates.certs.example.io");
    let err = s.kubectl_err(&["get", "certificates", "-n", "default"], None);
    // kubectl says so from fresh discovery, or from its cache as the server's 404.
    assert!(
        err.contains(r#"the server doesn't have a resource type "certificates""#)
            || err.contains("the server could not find the requested resource"),
        "{err}"
    );
    // Applied again, it starts empty.
    install(&s);
    let list = s.kubectl_ok(&["get", "certificates", "-n", "default", "-o", "name"]);
    assert!(list.trim().is_empty(), "{list}");
}

#[test]
fn bad_crds_are_refused_in_kube_words() {
    let s = server();
    let renamed = CERT_CRD.replace(
        "name: certificates.certs.example.io",
        "name: certs.certs.example.io",
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&renamed));
    assert!(
        err.contains(r#"metadata.name: Invalid value: "certs.certs.example.io": must be spec.names.plural+"."+spec.group"#),
        "{err}"
    );
    let untyped = CERT_CRD.replace(
        "                duration:\n                  description: How long the certificate is valid.\n                  type: string\n",
        "                duration:\n                  description: How long the certificate is valid.\n",
    );
    assert_ne!(untyped, CERT_CRD);
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&untyped));
    assert!(
        err.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[duration].type: Required value: must not be empty for specified object fields"),
        "{err}"
    );
    let webhook = CERT_CRD.replace(
        "  scope: Namespaced\n",
        "  scope: Namespaced\n  conversion:\n    strategy: Webhook\n    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig:\n        url: https://example.invalid/convert\n",
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&webhook));
    assert!(
        err.contains("imc server does not call conversion webhooks"),
        "{err}"
    );
    // The good one applies server-side too, and again without change.
    for _ in 0..2 {
        let (ok, out) = s.kubectl_args_stdin(&["apply", "--server-side", "-f", "-"], CERT_CRD);
        assert!(ok, "{out}");
    }
    s.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        CRD,
    ]);
}

#[test]
fn image_cache_is_served_from_its_crd() {
    let s = server();
    let crd = s
        .get_json("crd", "imagecaches.eci.alibabacloud.com")
        .expect("the ImageCache CRD is installed");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["imageCacheSize"]["minimum"].as_f64(), Some(20.0));
    assert_eq!(spec["imageCacheSize"]["default"], 20);
    s.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd/imagecaches.eci.alibabacloud.com",
    ]);
    // The Rust strategy's messages are kept.
    let err = s.kubectl_err(
        &["create", "-f", "-"],
        Some("apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: small\nspec:\n  images: [nginx:1]\n  imageCacheSize: 5\n"),
    );
    assert!(
        err.contains("spec.imageCacheSize: Invalid value: 5: spec.imageCacheSize in body should be greater than or equal to 20"),
        "{err}"
    );
}

/// A CRD's `subresources.scale` is served: `kubectl scale` writes the spec path, and the Scale
/// reads the status path and the selector.
#[test]
fn a_crd_with_a_scale_subresource_is_scaled_by_kubectl() {
    let s = server();
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: workers.scale.example.io}
spec:
  group: scale.example.io
  scope: Namespaced
  names: {plural: workers, singular: worker, kind: Worker}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas, labelSelectorPath: .status.selector}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {replicas: {type: integer}}}
          status: {type: object, properties: {replicas: {type: integer}, selector: {type: string}}}
"#;
    establish(&s, crd, "crd/workers.scale.example.io");
    let (ok, out) = s.kubectl_args_stdin(
        &["apply", "-f", "-"],
        "apiVersion: scale.example.io/v1\nkind: Worker\nmetadata: {name: w, namespace: default}\nspec: {replicas: 1}\n",
    );
    assert!(ok, "{out}");
    let out = s.kubectl_ok(&["scale", "worker/w", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    let w = s.get_json("worker", "w").expect("the worker");
    assert_eq!(w["spec"]["replicas"], 3, "{w}");
    let scale = s.kubectl_ok(&["get", "worker", "w", "--subresource=scale", "-o", "json"]);
    let scale: serde_json::Value = serde_json::from_str(&scale).expect("a Scale");
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(scale["spec"]["replicas"], 3, "{scale}");
}
