//! `imc explain-match` against a real `imc server` holding ImageCaches whose status was set
//! through the status subresource, as the cache controller would.

use std::process::Command;

use imc_testkit::apiserver::TestServer;

fn ok(out: std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Creates an ImageCache and gives it an id and phase through the status subresource.
fn cache(server: &TestServer, name: &str, id: &str, phase: &str, images: &[&str]) {
    let manifest = serde_json::json!({
        "apiVersion": "eci.alibabacloud.com/v1",
        "kind": "ImageCache",
        "metadata": {"name": name},
        "spec": {"images": images},
    });
    ok(
        server
            .kubectl_stdin(&["create", "-f", "-"], Some(&manifest.to_string()))
            .unwrap(),
        "kubectl create",
    );
    let status = serde_json::json!({"status": {"imageCacheId": id, "phase": phase}});
    ok(
        server
            .kubectl(&[
                "patch",
                "imagecache",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ])
            .unwrap(),
        "kubectl patch status",
    );
}

#[test]
fn explains_the_winner_and_every_exclusion() {
    let server = TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).expect("start server");
    cache(
        &server,
        "exact",
        "imc-aaaaaaaaaaaaaaaaaaaa",
        "Ready",
        &["r.example/app:1", "r.example/base:2"],
    );
    cache(
        &server,
        "other-tag",
        "imc-bbbbbbbbbbbbbbbbbbbb",
        "Ready",
        &["r.example/app:0"],
    );
    cache(
        &server,
        "building",
        "imc-cccccccccccccccccccc",
        "Creating",
        &["r.example/app:1"],
    );
    cache(
        &server,
        "unrelated",
        "imc-dddddddddddddddddddd",
        "Ready",
        &["r.example/zzz:1"],
    );

    let pod = server.data_dir().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    k8s.aliyun.com/eci-image-cache: \"true\"\nspec:\n  containers:\n  - name: app\n    image: r.example/app:1\n",
    )
    .unwrap();
    let out = ok(
        Command::new(env!("CARGO_BIN_EXE_imc"))
            .args(["explain-match", "-f"])
            .arg(&pod)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .output()
            .unwrap(),
        "imc explain-match",
    );
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{out}"))
            .to_owned()
    };
    assert!(line("exact").ends_with("WINNER"), "{out}");
    assert!(line("other-tag").ends_with("candidate"), "{out}");
    assert!(line("building").ends_with("excluded: not Ready"), "{out}");
    assert!(
        line("unrelated").ends_with("excluded: holds none of the pod's images or layers"),
        "{out}"
    );
    assert!(
        out.contains("admission would choose imc-aaaaaaaaaaaaaaaaaaaa (Automatic)"),
        "{out}"
    );

    // A pod pinned to the Creating cache: the verdict is the denial admission would give.
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    k8s.aliyun.com/eci-image-snapshot-id: imc-cccccccccccccccccccc\nspec:\n  containers:\n  - name: app\n    image: r.example/app:1\n",
    )
    .unwrap();
    let out = ok(
        Command::new(env!("CARGO_BIN_EXE_imc"))
            .args(["explain-match", "-f"])
            .arg(&pod)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .output()
            .unwrap(),
        "imc explain-match (pinned)",
    );
    assert!(
        out.contains(
            "admission would deny the pod: image cache imc-cccccccccccccccccccc (building) is Creating, not Ready"
        ),
        "{out}"
    );
}
