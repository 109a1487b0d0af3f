//! Seccomp profiles applied by real runc (1.1.5, libseccomp 2.5.4) to imc's own runtime spec:
//! the spec comes from `generate_spec`, gets its seccomp section from `imc_runtime`'s profile
//! functions, and is run with `runc run` on a bundle in a temporary directory.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};

use imc_runtime::{
    ContainerSpec, DEFAULT_CAPABILITIES, ImageConfig, LocalhostProfile, PodNamespaces,
    ResolvedUser, SeccompProfile, SpecInput, generate_spec, runtime_default,
};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, LinuxSeccomp};

/// A rootfs with busybox-static and the applets the scripts use.
fn busybox_rootfs(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::create_dir_all(dir.join("mnt")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("busybox-static must be installed (/bin/busybox)");
    for applet in [
        "sh", "echo", "ls", "cat", "grep", "true", "unshare", "mount", "mkdir",
    ] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

/// What a container printed and how it exited.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `script` with `sh -c` as root with Docker's default capabilities and `seccomp` (none:
/// unconfined), in imc's runtime spec with a fresh network namespace, and waits for it.
fn run(script: &str, seccomp: Option<LinuxSeccomp>) -> Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    busybox_rootfs(&rootfs);
    let container = ContainerSpec {
        name: "c".into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    };
    let mut spec = generate_spec(SpecInput {
        image_ref: "test/seccomp",
        image: &ImageConfig::default(),
        container: &container,
        user: ResolvedUser::default(),
        rootfs: &rootfs,
        namespaces: &PodNamespaces {
            netns: Some("/unused".into()),
            ..Default::default()
        },
        hostname: "seccomp-test",
        // runc removes this (leaf) cgroup when the container is deleted.
        cgroups_path: format!(
            "/imc-seccomp-test-{}-{}",
            std::process::id(),
            tmp.path().file_name().unwrap().to_string_lossy()
        ),
        seccomp: None,
        termination_log: None,
    })
    .unwrap();
    let linux = spec.linux_mut().as_mut().unwrap();
    // A new network namespace instead of a pod's (no sandbox here).
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                let mut fresh = LinuxNamespace::default();
                fresh.set_typ(LinuxNamespaceType::Network);
                fresh
            } else {
                ns
            }
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    linux.set_seccomp(seccomp);
    spec.save(bundle.join("config.json")).unwrap();

    let id = format!(
        "imc-seccomp-test-{}-{}",
        std::process::id(),
        tmp.path().file_name().unwrap().to_string_lossy()
    );
    let out = Command::new("runc")
        .arg("--root")
        .arg(tmp.path().join("runc-state"))
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .expect("runc must be installed");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value of `Seccomp:` in the container's `/proc/self/status` (0 off, 2 filter).
fn seccomp_mode(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
}

/// The exit status a script line `echo NAME=$?` reported.
fn status_of<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
}

const PROBE: &str = "grep '^Seccomp:' /proc/self/status; echo ok; ls /; \
    unshare -U true 2>&1; echo unshare=$?; \
    mount -t tmpfs x /mnt 2>&1; echo mount=$?";

#[test]
fn runtime_default_filters_a_container_with_dockers_capabilities() {
    let profile = runtime_default(&DEFAULT_CAPABILITIES);
    // The profile names calls libseccomp 2.5.4 does not know; runc must skip them, not fail.
    let names: Vec<&String> = profile
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names())
        .collect();
    assert!(names.iter().any(|n| *n == "mseal" || *n == "getxattrat"));

    let out = run(PROBE, Some(profile));

    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(seccomp_mode(&out.stdout), Some("2"), "{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"ok"), "{}", out.stdout);
    assert!(
        lines.contains(&"bin") && lines.contains(&"proc"),
        "ls / works: {}",
        out.stdout
    );
    // A user namespace needs no capability: only the filter stops it.
    assert_ne!(
        status_of(&out.stdout, "unshare"),
        Some("0"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("unshare(0x10000000): Operation not permitted"),
        "{}",
        out.stdout
    );
    assert_ne!(status_of(&out.stdout, "mount"), Some("0"), "{}", out.stdout);
    assert!(!out.stdout.contains("tmpfs on /mnt"));
}

#[test]
fn unconfined_runs_without_a_filter() {
    let out = run(
        PROBE,
        SeccompProfile::Unconfined
            .resolve(Path::new("/nonexistent"), &DEFAULT_CAPABILITIES)
            .unwrap(),
    );

    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(seccomp_mode(&out.stdout), Some("0"), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l == "ok"));
    // The same call the default profile refuses.
    assert_eq!(
        status_of(&out.stdout, "unshare"),
        Some("0"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_localhost_profile_is_applied_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("seccomp");
    fs::create_dir_all(root.join("profiles")).unwrap();
    fs::write(
        root.join("profiles/no-mkdir.json"),
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
            ],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "excludes": {"caps": ["CAP_SYS_CHROOT"]}}
            ]
        }"#,
    )
    .unwrap();
    let profile =
        SeccompProfile::Localhost(LocalhostProfile::parse("profiles/no-mkdir.json").unwrap())
            .resolve(&root, &DEFAULT_CAPABILITIES)
            .unwrap();

    let out = run(
        "grep '^Seccomp:' /proc/self/status; mkdir /tmp/x 2>&1; echo mkdir=$?; echo ok",
        profile,
    );

    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(seccomp_mode(&out.stdout), Some("2"), "{}", out.stdout);
    assert_eq!(status_of(&out.stdout, "mkdir"), Some("1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Operation not permitted"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.lines().any(|l| l == "ok"));
}
