//! Safe unpack against real tars on a real filesystem (runs as root: owners, device whiteouts
//! and `trusted.*` xattrs need it, and the test fails without it).
//!
//! The hostile corpus asserts two things per layer: nothing outside the layer root changed (a
//! sentinel directory next to the root, `/tmp`, `/etc/passwd`), and either the error names the
//! entry, or (for names that containerd also resolves inside the root) the content landed inside
//! the root.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imc_api::Digest;
use imc_layers::{UnpackError, UnpackOptions, unpack_layer, unpack_layer_with};

/// A layer tar built entry by entry with raw names (the `tar` crate's path setters refuse `..`
/// and absolute names, which is exactly what hostile layers contain).
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, name: &str, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        let field = &mut h.as_old_mut().name;
        assert!(name.len() < field.len(), "test name too long");
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    fn with_link(kind: tar::EntryType, name: &str, target: &str) -> tar::Header {
        let mut h = Self::header(kind, name, 0o777);
        let field = &mut h.as_old_mut().linkname;
        field[..target.len()].copy_from_slice(target.as_bytes());
        h
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.push(Self::header(tar::EntryType::Directory, name, mode), b"")
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.push(Self::header(tar::EntryType::Regular, name, 0o644), data)
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(Self::with_link(tar::EntryType::Symlink, name, target), b"")
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(Self::with_link(tar::EntryType::Link, name, target), b"")
    }
    fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

/// A scratch area: `outer/root` (the layer root, empty) and `outer/sentinel` (host content that
/// must never change).
struct Scratch {
    _dir: tempfile::TempDir,
    outer: PathBuf,
    root: PathBuf,
    sentinel: PathBuf,
}

fn scratch() -> Scratch {
    assert!(
        rustix::process::geteuid().is_root(),
        "unpack tests must run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let outer = dir.path().to_owned();
    let root = outer.join("root");
    let sentinel = outer.join("sentinel");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("keep"), b"host data").unwrap();
    Scratch {
        _dir: dir,
        outer,
        root,
        sentinel,
    }
}

/// Everything under `dir` (not following symlinks): path → (kind, size, mode, content hash).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                Digest::of(&fs::read(&p).unwrap()).to_string()
            } else if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            out.insert(
                p.strip_prefix(base).unwrap().to_owned(),
                format!("{:o} {} {} {content}", m.mode(), m.nlink(), m.size()),
            );
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn host_state(s: &Scratch) -> (BTreeMap<PathBuf, String>, Vec<PathBuf>, String) {
    let passwd = fs::symlink_metadata("/etc/passwd").unwrap();
    let mut outer: Vec<PathBuf> = fs::read_dir(&s.outer)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    outer.sort();
    (
        snapshot(&s.sentinel),
        outer,
        format!(
            "{} {} {}",
            passwd.nlink(),
            passwd.size(),
            Digest::of(&fs::read("/etc/passwd").unwrap())
        ),
    )
}

/// Unpacks `tar` and asserts nothing outside the root changed; returns the outcome.
fn unpack_hostile(s: &Scratch, tar: &[u8], tmp_probe: &str) -> Result<(), UnpackError> {
    let before = host_state(s);
    assert!(!Path::new("/tmp").join(tmp_probe).exists());
    let result = unpack_layer(tar, &s.root).map(|_| ());
    assert_eq!(host_state(s), before, "host changed outside the layer root");
    assert!(
        !Path::new("/tmp").join(tmp_probe).exists(),
        "layer wrote into the host's /tmp"
    );
    result
}

fn probe(tag: &str) -> String {
    format!("imc-unpack-escape-{tag}-{}", std::process::id())
}

#[test]
fn dotdot_entries_stay_in_root() {
    let s = scratch();
    let p = probe("dotdot");
    let tar = Layer::new()
        .file(&format!("../../../../../../tmp/{p}"), b"evil")
        .file("../sentinel/keep", b"evil")
        .finish();
    unpack_hostile(&s, &tar, &p).unwrap();
    // Cleaned against `/` like containerd: the names land inside the root.
    assert_eq!(fs::read(s.root.join("tmp").join(&p)).unwrap(), b"evil");
    assert_eq!(fs::read(s.root.join("sentinel/keep")).unwrap(), b"evil");
}

#[test]
fn absolute_entries_stay_in_root() {
    let s = scratch();
    let p = probe("abs");
    let sentinel_keep = s.sentinel.join("keep");
    let tar = Layer::new()
        .file(&format!("/tmp/{p}"), b"evil")
        .file(sentinel_keep.to_str().unwrap(), b"evil")
        .finish();
    unpack_hostile(&s, &tar, &p).unwrap();
    assert_eq!(fs::read(s.root.join("tmp").join(&p)).unwrap(), b"evil");
    let inside = s.root.join(sentinel_keep.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside).unwrap(), b"evil");
}

#[test]
fn symlink_to_tmp_then_file_through_it_lands_in_root() {
    let s = scratch();
    let p = probe("symtmp");
    let sentinel = s.sentinel.to_str().unwrap().to_owned();
    let tar = Layer::new()
        .symlink("t", "/tmp")
        .file(&format!("t/{p}"), b"evil")
        .symlink("s", &sentinel)
        .file("s/keep", b"evil")
        .file("s/new", b"evil")
        .finish();
    unpack_hostile(&s, &tar, &p).unwrap();
    // The absolute symlink is kept verbatim but resolved inside the root when written through.
    assert_eq!(fs::read_link(s.root.join("t")).unwrap(), Path::new("/tmp"));
    assert_eq!(fs::read(s.root.join("tmp").join(&p)).unwrap(), b"evil");
    let inside = s.root.join(s.sentinel.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("keep")).unwrap(), b"evil");
    assert_eq!(fs::read(inside.join("new")).unwrap(), b"evil");
}

#[test]
fn relative_symlink_climbing_out_stays_in_root() {
    let s = scratch();
    let p = probe("rel");
    let tar = Layer::new()
        .dir("a/", 0o755)
        .symlink("a/up", "../../../../../../../../tmp")
        .file(&format!("a/up/{p}"), b"evil")
        .symlink("a/side", "../../sentinel")
        .file("a/side/new", b"evil")
        .finish();
    unpack_hostile(&s, &tar, &p).unwrap();
    assert_eq!(fs::read(s.root.join("tmp").join(&p)).unwrap(), b"evil");
    assert_eq!(fs::read(s.root.join("sentinel/new")).unwrap(), b"evil");
}

#[test]
fn hardlink_to_host_file_is_refused() {
    let s = scratch();
    let p = probe("hard");
    let keep = s.sentinel.join("keep");
    let tar = Layer::new().hardlink("passwd", "/etc/passwd").finish();
    let err = unpack_hostile(&s, &tar, &p).unwrap_err().to_string();
    assert!(err.contains("\"passwd\""), "{err}");
    assert!(
        err.contains("/etc/passwd") && err.contains("does not exist inside the layer"),
        "{err}"
    );

    let s = scratch();
    let tar = Layer::new()
        .hardlink("k", &format!("../..{}", keep.display()))
        .finish();
    let err = unpack_hostile(&s, &tar, &p).unwrap_err().to_string();
    assert!(
        err.contains("\"k\"") && err.contains("does not exist inside the layer"),
        "{err}"
    );
}

#[test]
fn hardlink_through_symlink_to_host_is_refused() {
    let s = scratch();
    let p = probe("hardsym");
    let tar = Layer::new()
        .symlink("e", "/etc")
        .hardlink("pw", "e/passwd")
        .finish();
    let err = unpack_hostile(&s, &tar, &p).unwrap_err().to_string();
    assert!(
        err.contains("\"pw\"") && err.contains("does not exist inside the layer"),
        "{err}"
    );
}

#[test]
fn symlink_loop_is_refused() {
    let s = scratch();
    let p = probe("loop");
    let tar = Layer::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"x")
        .finish();
    let err = unpack_hostile(&s, &tar, &p).unwrap_err().to_string();
    assert!(
        err.contains("\"a/x\"") && err.contains("symlink loop"),
        "{err}"
    );
}

#[test]
fn file_over_symlink_replaces_the_symlink() {
    // A later entry at the path of a symlink must replace the link, not write through it.
    let s = scratch();
    let p = probe("over");
    let target = s.sentinel.join("keep");
    let tar = Layer::new()
        .symlink("x", target.to_str().unwrap())
        .file("x", b"replaced")
        .finish();
    unpack_hostile(&s, &tar, &p).unwrap();
    let m = fs::symlink_metadata(s.root.join("x")).unwrap();
    assert!(m.is_file());
    assert_eq!(fs::read(s.root.join("x")).unwrap(), b"replaced");
}

#[test]
fn device_nodes_are_refused() {
    let s = scratch();
    let p = probe("dev");
    let mut h = Layer::header(tar::EntryType::Block, "dev/sda", 0o600);
    h.set_device_major(8).unwrap();
    h.set_device_minor(0).unwrap();
    let tar = Layer::new().push(h, b"").finish();
    let err = unpack_hostile(&s, &tar, &p).unwrap_err().to_string();
    assert!(
        err.contains("\"dev/sda\"") && err.contains("device nodes are not allowed"),
        "{err}"
    );
    assert!(!s.root.join("dev/sda").exists());
}

#[test]
fn size_limit_names_the_entry() {
    let s = scratch();
    let tar = Layer::new()
        .file("small", &[1; 10])
        .file("big", &[2; 100_000])
        .finish();
    let err = unpack_layer_with(
        &tar[..],
        &s.root,
        &UnpackOptions {
            max_size: 50_000,
            allow_devices: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"big\"") && err.contains("size limit of 50000 bytes"),
        "{err}"
    );
    assert!(!s.root.join("big").exists());
}

#[test]
fn whiteouts_and_opaque_dirs_become_overlay_markers() {
    let s = scratch();
    let tar = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.gone", b"")
        .dir("var/cache/", 0o755)
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/kept", b"k")
        .file(".wh..wh.plnk", b"")
        .finish();
    unpack_layer(&tar[..], &s.root).unwrap();
    let m = fs::symlink_metadata(s.root.join("etc/gone")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    assert!(!s.root.join("etc/.wh.gone").exists());
    let opaque = xattr::get(s.root.join("var/cache"), "trusted.overlay.opaque").unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert_eq!(fs::read(s.root.join("var/cache/kept")).unwrap(), b"k");
    assert!(!s.root.join(".wh..wh.plnk").exists());
}

#[test]
fn modes_owners_mtimes_links_and_xattrs_are_preserved() {
    let s = scratch();
    let mut layer = Layer::new();
    layer.dir("bin/", 0o755);
    let mut h = Layer::header(tar::EntryType::Regular, "bin/su", 0o4755);
    h.set_uid(0);
    h.set_mtime(1_500_000_000);
    layer.push(h, b"#!/bin/sh\n");
    let mut h = Layer::header(tar::EntryType::Directory, "tmp/", 0o1777);
    h.set_mtime(1_400_000_000);
    layer.push(h, b"");
    let mut h = Layer::header(tar::EntryType::Regular, "home/app/data", 0o640);
    h.set_uid(1000);
    h.set_gid(1001);
    layer.push(h, b"data");
    let mut h = Layer::header(tar::EntryType::Directory, "home/app/", 0o750);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_300_000_000);
    layer.push(h, b"");
    layer
        .builder
        .append_pax_extensions([
            ("SCHILY.xattr.user.origin", &b"imc-test"[..]),
            (
                "SCHILY.xattr.security.capability",
                &[
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ][..],
            ),
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        ])
        .unwrap();
    layer.file("bin/ping", b"elf");
    layer.hardlink("bin/ping6", "/bin/ping");
    let mut h = Layer::with_link(tar::EntryType::Symlink, "bin/sh", "/bin/busybox");
    h.set_uid(7);
    h.set_gid(8);
    layer.push(h, b"");
    let tar = layer.finish();
    let stats = unpack_layer(&tar[..], &s.root).unwrap();

    assert_eq!(stats.diff_id, Digest::of(&tar));
    assert_eq!(stats.tar_bytes, tar.len() as u64);
    assert_eq!(stats.unpacked_bytes, 10 + 4 + 3);

    let su = fs::metadata(s.root.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), 1_500_000_000);
    let tmp = fs::metadata(s.root.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime(), 1_400_000_000);
    let data = fs::metadata(s.root.join("home/app/data")).unwrap();
    assert_eq!(
        (data.uid(), data.gid(), data.mode() & 0o7777),
        (1000, 1001, 0o640)
    );
    let app = fs::metadata(s.root.join("home/app")).unwrap();
    assert_eq!(
        (app.uid(), app.gid(), app.mode() & 0o7777),
        (1000, 1001, 0o750)
    );
    // Set after its contents were written, so it survives them.
    assert_eq!(app.mtime(), 1_300_000_000);
    // An implied parent directory.
    let home = fs::metadata(s.root.join("home")).unwrap();
    assert_eq!(home.permissions().mode() & 0o7777, 0o755);

    let ping = fs::metadata(s.root.join("bin/ping")).unwrap();
    let ping6 = fs::metadata(s.root.join("bin/ping6")).unwrap();
    assert_eq!(ping.ino(), ping6.ino());
    assert_eq!(ping.nlink(), 2);
    assert_eq!(
        xattr::get(s.root.join("bin/ping"), "user.origin")
            .unwrap()
            .as_deref(),
        Some(&b"imc-test"[..])
    );
    assert!(
        xattr::get(s.root.join("bin/ping"), "security.capability")
            .unwrap()
            .is_some()
    );
    assert_eq!(
        xattr::get(s.root.join("bin/ping"), "trusted.overlay.redirect").unwrap(),
        None,
        "overlay xattrs from the layer must be dropped"
    );

    let sh = fs::symlink_metadata(s.root.join("bin/sh")).unwrap();
    assert!(sh.file_type().is_symlink());
    assert_eq!((sh.uid(), sh.gid()), (7, 8));
    assert_eq!(
        fs::read_link(s.root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
}

#[test]
fn diff_id_covers_trailing_padding() {
    let s = scratch();
    let mut tar = Layer::new().file("a", b"a").finish();
    tar.extend_from_slice(&[0u8; 4096]);
    let stats = unpack_layer(&tar[..], &s.root).unwrap();
    assert_eq!(stats.diff_id, Digest::of(&tar));
}

#[test]
fn size_limit_bounds_the_decompressed_stream_not_only_file_bytes() {
    // Empty files cost nothing in file bytes but 512 bytes of tar each: a compressed blob of
    // such headers is a decompression bomb the file-byte count alone would not stop.
    let s = scratch();
    let mut layer = Layer::new();
    for i in 0..100 {
        layer.file(&format!("empty-{i}"), b"");
    }
    let tar = layer.finish();
    let err = unpack_layer_with(
        &tar[..],
        &s.root,
        &UnpackOptions {
            max_size: 10_000,
            allow_devices: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"empty-") && err.contains("size limit of 10000 bytes"),
        "{err}"
    );
}
