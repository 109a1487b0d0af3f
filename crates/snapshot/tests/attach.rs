//! Attaching cache disks with real loop devices and mounts: once per host, reference-counted,
//! and cleaned after a crash.

use std::fs;
use std::path::{Path, PathBuf};

use imc_api::Digest;
use imc_snapshot::{
    AttachedCache, Attacher, BackendChoice, BuildImage, BuildOptions, CacheUser, SnapshotBuilder,
    is_mount_point,
};

fn build_disk(root: &Path) -> (PathBuf, Digest) {
    let d = Digest::of(b"layer");
    let dir = root.join("layers/sha256").join(d.hex());
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/hello"), b"hi").unwrap();
    let store = root.to_path_buf();
    let builder = SnapshotBuilder::new(move |d: &Digest| store.join("layers/sha256").join(d.hex()));
    let out = root.join("caches/test.erofs");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let image = BuildImage {
        reference: "r.example/a:1".into(),
        manifest_digest: Digest::of(b"m"),
        config: serde_json::json!({}),
        layers: vec![d.clone()],
    };
    let options = BuildOptions {
        output: out.clone(),
        size_limit: 1 << 30,
        backend: BackendChoice::Erofs,
        work_dir: root.join("tmp"),
    };
    builder.build(&[image], &options).unwrap();
    (out, d)
}

fn mounts_of(path: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy().into_owned();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(p.as_str()))
        .count()
}

fn loops_backed_by(disk: &Path) -> usize {
    let canonical = fs::canonicalize(disk).unwrap();
    fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| Path::new(b.trim_end()) == canonical)
        .count()
}

#[test]
fn attach_twice_mounts_once_and_last_release_detaches() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, layer) = build_disk(tmp.path());
    let attacher = Attacher::new(tmp.path()).unwrap();

    let a = attacher
        .attach(&disk, CacheUser::current_process("pod-a"))
        .unwrap();
    let b = attacher
        .attach(&disk, CacheUser::current_process("pod-b"))
        .unwrap();

    assert_eq!(a.mount_point, b.mount_point);
    assert_eq!(mounts_of(&a.mount_point), 1);
    assert_eq!(loops_backed_by(&disk), 1);
    assert_eq!(
        fs::read(a.layer_dir(&layer).unwrap().join("etc/hello")).unwrap(),
        b"hi"
    );
    // Read-only: even root cannot write into the cache.
    let err = fs::write(a.mount_point.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // Counts are on disk, where a restarted imc finds them.
    let fresh = Attacher::new(tmp.path()).unwrap();
    assert_eq!(fresh.users(&a.id).unwrap().len(), 2);

    assert!(!attacher.release(&a.id, "pod-a").unwrap());
    assert!(is_mount_point(&a.mount_point));
    assert!(attacher.release(&a.id, "pod-b").unwrap());
    assert_eq!(mounts_of(&a.mount_point), 0);
    assert_eq!(loops_backed_by(&disk), 0);
    assert!(!a.mount_point.exists());
}

/// Attaches `disk` for user `name` owned by a process that then dies.
fn attach_for_a_dead_process(attacher: &Attacher, disk: &Path, name: &str) -> AttachedCache {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let a = attacher
        .attach(disk, CacheUser::for_process(name, child.id()))
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    a
}

#[test]
fn recover_detaches_a_disk_whose_users_died() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, _) = build_disk(tmp.path());
    let attacher = Attacher::new(tmp.path()).unwrap();
    let a = attach_for_a_dead_process(&attacher, &disk, "dead-pod");
    // Also a mount that lost its refs file.
    let b_dir = tmp.path().join("run/caches/orphan");
    fs::create_dir_all(&b_dir).unwrap();
    assert!(
        std::process::Command::new("mount")
            .args(["-t", "erofs", "-o", "ro,loop"])
            .arg(&disk)
            .arg(&b_dir)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(mounts_of(&b_dir), 1);

    let report = Attacher::new(tmp.path()).unwrap().recover();

    assert_eq!(report.dead_users, vec!["dead-pod".to_string()]);
    assert_eq!(report.leftovers, Vec::<String>::new());
    assert_eq!(mounts_of(&a.mount_point), 0);
    assert_eq!(mounts_of(&b_dir), 0);
    assert_eq!(loops_backed_by(&disk), 0);
}

#[test]
fn directory_disk_is_attached_as_a_read_only_bind_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let d = Digest::of(b"layer");
    let dir = root.join("layers/sha256").join(d.hex());
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("hello"), b"hi").unwrap();
    let store = root.to_path_buf();
    let builder = SnapshotBuilder::new(move |d: &Digest| store.join("layers/sha256").join(d.hex()));
    let out = root.join("caches/dir-cache");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let image = BuildImage {
        reference: "r.example/a:1".into(),
        manifest_digest: Digest::of(b"m"),
        config: serde_json::json!({}),
        layers: vec![d.clone()],
    };
    let options = BuildOptions {
        output: out.clone(),
        size_limit: 1 << 30,
        backend: BackendChoice::Directory,
        work_dir: root.join("tmp"),
    };
    builder.build(&[image], &options).unwrap();
    let attacher = Attacher::new(root).unwrap();

    let a = attacher
        .attach(&out, CacheUser::current_process("pod-a"))
        .unwrap();

    assert_eq!(mounts_of(&a.mount_point), 1);
    assert_eq!(
        fs::read(a.layer_dir(&d).unwrap().join("hello")).unwrap(),
        b"hi"
    );
    let err = fs::write(a.layer_dir(&d).unwrap().join("hello"), b"changed").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(attacher.release(&a.id, "pod-a").unwrap());
    assert_eq!(mounts_of(&a.mount_point), 0);
    assert_eq!(
        fs::read(out.join("layers/sha256").join(d.hex()).join("hello")).unwrap(),
        b"hi"
    );
}

#[test]
fn recovery_goes_on_past_a_corrupt_refs_file_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, _) = build_disk(tmp.path());
    let attacher = Attacher::new(tmp.path()).unwrap();
    let a = attach_for_a_dead_process(&attacher, &disk, "dead-pod");
    // Another attachment whose refs file is garbage.
    let bad = tmp.path().join("run/caches/aaa-corrupt.refs");
    fs::write(&bad, b"{not json").unwrap();

    let report = attacher.recover();

    assert_eq!(
        mounts_of(&a.mount_point),
        0,
        "the good one is still detached"
    );
    assert_eq!(loops_backed_by(&disk), 0);
    assert_eq!(report.leftovers.len(), 1, "{:?}", report.leftovers);
    assert!(
        report.leftovers[0].contains("aaa-corrupt"),
        "{:?}",
        report.leftovers
    );
}

#[test]
fn opening_removes_half_written_disks_of_dead_builds_and_makes_dirs_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let caches = tmp.path().join("caches");
    fs::create_dir_all(&caches).unwrap();
    fs::set_permissions(&caches, fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = caches.join(format!(".c1.g1.erofs.imc-tmp-{dead}-1"));
    fs::write(&stale, b"half").unwrap();
    let disk = caches.join("c1.g0.erofs");
    fs::write(&disk, b"a finished disk").unwrap();

    Attacher::new(tmp.path()).unwrap();

    assert!(!stale.exists(), "the half-written disk is removed");
    assert!(disk.exists(), "finished disks are kept");
    for d in ["", "caches", "run", "run/caches"] {
        let mode = fs::metadata(tmp.path().join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "DIR/{d}");
    }
}
