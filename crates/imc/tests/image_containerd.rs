//! Where a layer's path runs through a symlink that a LOWER layer created, imc's unpacked trees
//! merged by overlayfs must show what containerd shows for the same image. Both views are
//! listed by the same busybox command: inside `ctr run` for containerd (1.6, overlayfs
//! snapshotter, private daemon), and chrooted into an overlay mount of imc's layer trees.

use std::fs;
use std::path::Path;
use std::process::Command;

use imc_testkit::containerd::Containerd;
use imc_testkit::image::{Compression, Format, ImageBuilder, LayerBuilder, Meta};
use imc_testkit::registry::{Auth, TestRegistry};

const SCRIPT: &str = "for p in /lib /abs /usr/lib /opt/cfg; do \
    echo \"== $p $(/bin/busybox stat -c %F $p)\"; /bin/busybox ls -1a $p/ | /bin/busybox sort; done";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn paths_through_lower_layer_symlinks_match_containerd() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    let euid = fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(euid, 0, "this test mounts overlayfs: run as root");
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (busybox-static) is needed");
    let registry = TestRegistry::start(Auth::None);
    let lower = LayerBuilder::new()
        .compression(Compression::Gzip)
        .dir("bin")
        .file_with("bin/busybox", &busybox, Meta::mode(0o755))
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/a.so", b"a")
        .file("usr/lib/gone.so", b"g")
        .symlink("lib", "usr/lib")
        .symlink("abs", "/usr/lib")
        .dir("opt")
        .dir("opt/cfg")
        .file("opt/cfg/old", b"old")
        .build();
    let upper = LayerBuilder::new()
        .compression(Compression::Gzip)
        .file("lib/b.so", b"b")
        .file("abs/c.so", b"c")
        .whiteout("usr/lib/gone.so")
        .opaque("opt/cfg")
        .file("opt/cfg/new", b"new")
        .build();
    let image = ImageBuilder::new(Format::Oci)
        .layer(lower)
        .layer(upper)
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(
        &registry.host(),
        "cross/app",
        "1",
        &image,
        None,
    ))
    .unwrap();
    let reference = format!("{}/cross/app:1", registry.host());

    // containerd's view.
    let containerd = Containerd::start(None).expect("start containerd");
    containerd.pull(&reference, true).expect("ctr pull");
    let (_, out) = containerd
        .run(
            &reference,
            "imc-cross-layer",
            &["/bin/busybox", "sh", "-c", SCRIPT],
        )
        .expect("ctr run");
    let theirs = text(&out.stdout);

    // imc's view: the layer trees merged by overlayfs, as the runtime will do.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imc"))
        .args([
            "image",
            "pull",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--plain-http",
            &registry.host(),
            &reference,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let layer = |i: usize| {
        data.path()
            .join("layers/sha256")
            .join(image.layers[i].diff_id.hex())
    };
    let target = data.path().join("merged");
    fs::create_dir(&target).unwrap();
    let lowerdir = format!("lowerdir={}:{}", layer(1).display(), layer(0).display());
    let mount = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &lowerdir])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        mount.status.success(),
        "mount overlay: {}",
        text(&mount.stderr)
    );
    let ours = Command::new("chroot")
        .arg(&target)
        .args(["/bin/busybox", "sh", "-c", SCRIPT])
        .output();
    let umount = Command::new("umount").arg(&target).status();
    let ours = ours.unwrap();
    assert!(umount.unwrap().success());
    assert!(ours.status.success(), "{}", text(&ours.stderr));
    let ours = text(&ours.stdout);

    assert_eq!(ours, theirs, "imc's merged view differs from containerd's");
    // And what that view is: the upper layer's `lib/` and `abs/` are real directories that hide
    // the lower symlinks (containerd applies a layer into its own upperdir too), the whiteout
    // hides gone.so and the opaque dir hides the lower content.
    assert!(ours.contains("== /lib directory\n.\n..\nb.so\n"), "{ours}");
    assert!(ours.contains("== /abs directory\n.\n..\nc.so\n"), "{ours}");
    assert!(
        ours.contains("== /usr/lib directory\n.\n..\na.so\n"),
        "{ours}"
    );
    assert!(
        ours.contains("== /opt/cfg directory\n.\n..\nnew\n"),
        "{ours}"
    );
    assert!(Path::new(&layer(1)).join("lib").is_dir());
}
