//! Containers started by real runc on a real overlay over a real EROFS cache disk, with layer
//! trees made on disk the way the layer store unpacks them (overlay whiteouts, opaque xattrs).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Instant;

use imc_api::Digest;
use imc_runtime::{
    ContainerIo, ContainerSpec, PreparedImage, Runtime, SandboxConfig, StartRequest, StartTimings,
};
use imc_snapshot::{BackendChoice, BuildImage, BuildOptions, SnapshotBuilder};

fn layer_dir(root: &Path, d: &Digest) -> PathBuf {
    root.join("layers/sha256").join(d.hex())
}

/// Base layer: busybox-static and its applet symlinks, /etc/passwd.
fn base_layer(root: &Path) -> Digest {
    let d = Digest::of(b"base");
    let dir = layer_dir(root, &d);
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("busybox-static must be installed (/bin/busybox)");
    for applet in [
        "sh", "cat", "ls", "echo", "stat", "readlink", "id", "touch", "rm", "mkdir", "sleep",
        "test", "sync", "wc",
    ] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    d
}

/// Lower app layer: files an upper layer deletes, replaces and makes opaque.
fn lower_layer(root: &Path) -> Digest {
    let d = Digest::of(b"lower");
    let dir = layer_dir(root, &d);
    fs::create_dir_all(dir.join("data/opaque")).unwrap();
    fs::write(dir.join("data/doomed"), "doomed").unwrap();
    fs::write(dir.join("data/replaced"), "old").unwrap();
    fs::hard_link(dir.join("data/replaced"), dir.join("data/hardlink")).unwrap();
    fs::write(dir.join("data/opaque/old-entry"), "x").unwrap();
    fs::write(dir.join("data/owned"), "o").unwrap();
    std::os::unix::fs::chown(dir.join("data/owned"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(dir.join("data/owned"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("/data/replaced", dir.join("data/abs-link")).unwrap();
    d
}

/// Upper layer: whiteout, opaque dir, replaced file.
fn upper_layer(root: &Path) -> Digest {
    let d = Digest::of(b"upper");
    let dir = layer_dir(root, &d);
    fs::create_dir_all(dir.join("data/opaque")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("data/doomed"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0),
        0,
    )
    .unwrap();
    xattr::set(dir.join("data/opaque"), "trusted.overlay.opaque", b"y").unwrap();
    fs::write(dir.join("data/opaque/new-entry"), "y").unwrap();
    fs::write(dir.join("data/replaced"), "new").unwrap();
    d
}

#[tokio::test]
async fn layer_semantics_inside_a_container_started_from_a_cache_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root), lower_layer(root), upper_layer(root)];
    let store = root.to_path_buf();
    let builder = SnapshotBuilder::new(move |d: &Digest| layer_dir(&store, d));
    let disk = root.join("caches/test.erofs");
    fs::create_dir_all(disk.parent().unwrap()).unwrap();
    let config = serde_json::json!({"config": {"Cmd": ["sh"], "User": "0"}});
    let image = BuildImage {
        reference: "r.example/sem:1".into(),
        manifest_digest: Digest::of(b"m"),
        config: config.clone(),
        layers: layers.clone(),
    };
    builder
        .build(
            &[image],
            &BuildOptions {
                output: disk.clone(),
                size_limit: 1 << 30,
                backend: BackendChoice::Erofs,
                work_dir: root.join("tmp"),
            },
        )
        .unwrap();

    let runtime = Runtime::new(root).unwrap();
    let sandbox = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-sem", "pod-sem"),
            std::process::id(),
        )
        .await
        .unwrap();
    let (cache, attach) = runtime
        .attach_cache(&disk, "pod-sem", "main", std::process::id())
        .await
        .unwrap();
    let store = root.to_path_buf();
    let prepared = PreparedImage::locate(
        "r.example/sem:1",
        config,
        &layers,
        Some(&cache),
        &|d: &Digest| layer_dir(&store, d),
    )
    .unwrap();
    let script = [
        "test -e /data/doomed && echo doomed-present || echo doomed-absent",
        "echo opaque: $(ls /data/opaque)",
        "echo replaced: $(cat /data/replaced) hardlink: $(cat /data/hardlink)",
        "echo owned: $(stat -c '%u:%g %a' /data/owned)",
        "echo link: $(cat /data/abs-link)",
        "echo port: $PORT",
    ]
    .join("; ");
    let spec = ContainerSpec {
        name: "main".into(),
        command: Some(vec!["sh".into(), "-c".into(), script]),
        port: Some(8080),
        ..Default::default()
    };
    let container = runtime
        .start(StartRequest {
            sandbox: &sandbox,
            container: spec,
            image: prepared,
            cache: Some(cache.clone()),
            io: ContainerIo::Log,
            owner_pid: std::process::id(),
            started: Instant::now(),
            timings: StartTimings {
                attach,
                ..Default::default()
            },
        })
        .await
        .unwrap();
    let exit = container.wait().await.unwrap();
    let log = String::from_utf8(imc_runtime::log_text(
        &fs::read(&container.log_path).unwrap(),
    ))
    .unwrap();
    assert_eq!(container.timings.layers_from_cache, 3);
    container.remove().await.unwrap();
    sandbox.remove().await.unwrap();

    assert_eq!(exit.code, 0, "log: {log}");
    assert_eq!(
        log,
        "doomed-absent\nopaque: new-entry\nreplaced: new hardlink: old\nowned: 1000:1000 640\nlink: new\nport: 8080\n"
    );
    assert!(
        !cache.mount_point.exists(),
        "the cache is detached after the last container"
    );
}

/// Starts `script` as container `name` of `sandbox` from the layer store (no cache) and returns
/// its exit code and log.
async fn run_in(
    runtime: &Runtime,
    sandbox: &imc_runtime::PodSandbox,
    root: &Path,
    layers: &[Digest],
    name: &str,
    script: &str,
) -> (i32, String) {
    let store = root.to_path_buf();
    let config = serde_json::json!({"config": {"Cmd": ["sh"]}});
    let prepared = PreparedImage::locate("r.example/net:1", config, layers, None, &|d: &Digest| {
        layer_dir(&store, d)
    })
    .unwrap();
    let container = runtime
        .start(StartRequest {
            sandbox,
            container: ContainerSpec {
                name: name.into(),
                command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                ..Default::default()
            },
            image: prepared,
            cache: None,
            io: ContainerIo::Log,
            owner_pid: std::process::id(),
            started: Instant::now(),
            timings: StartTimings::default(),
        })
        .await
        .unwrap();
    assert_eq!(container.timings.layers_from_store, layers.len());
    let exit = container.wait().await.unwrap();
    let log = String::from_utf8(imc_runtime::log_text(
        &fs::read(&container.log_path).unwrap(),
    ))
    .unwrap();
    container.remove().await.unwrap();
    (exit.code, log)
}

#[tokio::test]
async fn containers_of_one_pod_share_a_private_network_namespace_with_loopback_up() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root)];
    let runtime = Runtime::new(root).unwrap();
    let pod_a = runtime
        .create_sandbox(&SandboxConfig::new("pod-a", "pod-a"), std::process::id())
        .await
        .unwrap();
    let pod_b = runtime
        .create_sandbox(&SandboxConfig::new("pod-b", "pod-b"), std::process::id())
        .await
        .unwrap();
    let script = "readlink /proc/self/ns/net; cat /sys/class/net/lo/operstate; ls /sys/class/net";

    let (code_a1, a1) = run_in(&runtime, &pod_a, root, &layers, "one", script).await;
    let (code_a2, a2) = run_in(&runtime, &pod_a, root, &layers, "two", script).await;
    let (code_b, b) = run_in(&runtime, &pod_b, root, &layers, "one", script).await;
    pod_a.remove().await.unwrap();
    pod_b.remove().await.unwrap();

    assert_eq!((code_a1, code_a2, code_b), (0, 0, 0), "{a1} {a2} {b}");
    let host_ns = fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ns = |log: &str| log.lines().next().unwrap().to_string();
    assert_eq!(
        ns(&a1),
        ns(&a2),
        "containers of one pod share the namespace"
    );
    assert_ne!(ns(&a1), ns(&b), "pods do not share");
    assert_ne!(ns(&a1), host_ns);
    // Loopback is the only interface, and it is up.
    assert_eq!(
        a1.lines().skip(1).collect::<Vec<_>>(),
        vec!["unknown", "lo"]
    );
}

#[tokio::test]
async fn an_image_with_more_layers_than_a_mount_option_page_holds_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut layers = vec![base_layer(root)];
    // 81 layers × ~95-byte paths: ~7.7 KB of lower dirs, over the 4 KB mount(2) option limit.
    for i in 0..80 {
        let d = Digest::of(format!("layer-{i}").as_bytes());
        let dir = layer_dir(root, &d);
        fs::create_dir_all(dir.join("l")).unwrap();
        fs::write(dir.join("l").join(format!("{i:02}")), i.to_string()).unwrap();
        // Each layer also replaces /l/top, so the topmost must win.
        fs::write(dir.join("l/top"), i.to_string()).unwrap();
        layers.push(d);
    }
    let runtime = Runtime::new(root).unwrap();
    let pod = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-many", "pod-many"),
            std::process::id(),
        )
        .await
        .unwrap();

    let (code, log) = run_in(
        &runtime,
        &pod,
        root,
        &layers,
        "main",
        "ls /l | wc -l; cat /l/top",
    )
    .await;
    pod.remove().await.unwrap();

    assert_eq!(code, 0, "{log}");
    assert_eq!(log, "81\n79");
}
