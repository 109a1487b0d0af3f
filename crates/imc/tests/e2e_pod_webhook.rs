//! Cluster-mode pod admission: `imc webhook` serves AdmissionReview over HTTPS with the same
//! decision as `imc server`'s hook. The API it watches ImageCaches through is a real `imc server`
//! (standing in for a cluster's kube-apiserver), the client is curl.

mod run_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use run_support::registry_with_images;
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(240);

struct Webhook {
    child: Child,
    url: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `imc webhook` serving with the API server's own certificate, watching through its kubeconfig.
fn start_webhook(server: &TestServer) -> Webhook {
    let pki = server.data_dir().join("pki");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imc"))
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--node-name",
            "virtual-node",
        ])
        .arg("--tls-cert")
        .arg(pki.join("server.crt"))
        .arg("--tls-key")
        .arg(pki.join("server.key"))
        .env("KUBECONFIG", server.kubeconfig())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("imc webhook starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Webhook { child, url }
}

fn review(uid: &str, annotations: Value, image: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "system:admin"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "web", "namespace": "default", "annotations": annotations},
                       "spec": {"containers": [{"name": "app", "image": image}]}},
            "oldObject": null,
            "dryRun": true
        }
    })
}

/// POSTs `body` with curl, trusting the API server's CA.
fn post(server: &TestServer, url: &str, body: &Value) -> Value {
    let mut curl = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ])
        .arg("--cacert")
        .arg(server.data_dir().join("pki/ca.crt"))
        .args(["--data-binary", "@-", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    use std::io::Write;
    curl.stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = curl.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("an AdmissionReview")
}

fn patch_of(resp: &Value) -> Value {
    use base64::Engine as _;
    let b64 = resp["response"]["patch"].as_str().expect("a patch");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
    )
    .expect("a JSON patch")
}

#[test]
fn webhook_answers_admission_reviews_like_the_embedded_hook() {
    let reg = registry_with_images();
    let server = TestServer::start_with_args(
        env!("CARGO_BIN_EXE_imc"),
        &["--plain-http".to_owned(), reg.registry.host()],
    )
    .unwrap();
    let cache = json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
                       "metadata": {"name": "busybox"}, "spec": {"images": [reg.busybox]}});
    let out = server
        .kubectl_stdin(&["create", "-f", "-"], Some(&cache.to_string()))
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        let out = server
            .kubectl(&["get", "imagecache", "busybox", "-o", "json"])
            .unwrap();
        let c: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if c["status"]["phase"] == "Ready" {
            server.assert_cache_is_erofs(&c);
            break c["status"]["imageCacheId"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "cache never Ready: {c:#}");
        std::thread::sleep(Duration::from_millis(200));
    };

    let webhook = start_webhook(&server);
    // Automatic matching; the webhook's view of caches fills from its watch.
    let auto = review(
        "uid-auto",
        json!({"k8s.aliyun.com/eci-image-cache": "true"}),
        &reg.busybox,
    );
    let deadline = Instant::now() + PATIENCE;
    let resp = loop {
        let resp = post(&server, &webhook.url, &auto);
        if resp["response"]["patch"].is_string() && patch_of(&resp).to_string().contains(&id) {
            break resp;
        }
        assert!(Instant::now() < deadline, "never matched: {resp:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["response"]["uid"], "uid-auto");
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    assert_eq!(
        patch_of(&resp),
        // The cache annotation only: `--node-name` is accepted but the webhook never binds.
        json!([
            {"op": "add", "path": "/metadata/annotations/k8s.aliyun.com~1eci-matched-image-cache", "value": id}
        ])
    );

    // A pinned unknown id is denied with the reason.
    let resp = post(
        &server,
        &webhook.url,
        &review(
            "uid-pinned",
            json!({"k8s.aliyun.com/eci-image-snapshot-id": "imc-zzzzzzzzzzzzzzzzzzzz"}),
            &reg.busybox,
        ),
    );
    assert_eq!(resp["response"]["uid"], "uid-pinned");
    assert_eq!(resp["response"]["allowed"], false);
    assert_eq!(
        resp["response"]["status"]["message"],
        "image cache imc-zzzzzzzzzzzzzzzzzzzz not found"
    );
}
