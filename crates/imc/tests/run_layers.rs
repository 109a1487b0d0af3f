//! Layer semantics inside a running container: image pushed to a real registry, pulled and
//! unpacked by imc, written to a real EROFS cache disk, run by real runc over a real overlay.

mod run_support;

use run_support::{cache_build, imc, registry_with_images};

#[test]
fn whiteouts_opaque_dirs_hardlinks_modes_and_symlinks_behave_as_layered() {
    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("layered.erofs");
    cache_build(&reg, tmp.path(), &[&reg.layered], &disk);
    let script = [
        "test -e /data/doomed && echo doomed-present || echo doomed-absent",
        "echo opaque: $(ls -a /data/opaque)",
        "echo replaced: $(cat /data/replaced) hardlink: $(cat /data/hardlink)",
        "echo owned: $(stat -c '%u:%g %a' /data/owned)",
        "echo setuid: $(stat -c '%a' /data/setuid) tmp: $(stat -c '%a' /tmp) busybox: $(stat -c '%a' /bin/busybox)",
        "echo abs: $(cat /data/abs-link) rel: $(cat /data/rel-link)",
        "echo escape: $(head -n 1 /data/escape-link)",
    ]
    .join("; ");

    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--cache")
        .arg(&disk)
        .args(reg.flags())
        .arg(&reg.layered)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();

    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "doomed-absent\n\
         opaque: . .. new-entry\n\
         replaced: new hardlink: old\n\
         owned: 1000:1000 640\n\
         setuid: 4755 tmp: 1777 busybox: 755\n\
         abs: new rel: new\n\
         escape: root:x:0:0:root:/root:/bin/sh\n"
    );
}

#[test]
fn exit_code_of_the_container_is_imc_runs_exit_code() {
    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("bb.erofs");
    cache_build(&reg, tmp.path(), &[&reg.busybox], &disk);

    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--cache")
        .arg(&disk)
        .arg(&reg.busybox)
        .args(["--", "sh", "-c", "echo out; echo err >&2; exit 42"])
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(42));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
}
