//! A container that writes everywhere it can never changes the cache disk.

mod run_support;

use run_support::{busybox_cache, imc, sha256};

#[test]
fn container_writing_everywhere_leaves_the_disk_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, disk) = busybox_cache(tmp.path());
    let before = sha256(&disk);
    let script = "for d in / /bin /etc /tmp /root /var; do mkdir -p $d; echo scribble > $d/scribble || exit 1; done; \
                  echo overwritten > /bin/busybox.copy; rm -f /etc/passwd; rm -f /bin/ls; chmod 777 /bin; \
                  dd if=/dev/zero of=/big bs=1024 count=1024 2>/dev/null; sync; echo wrote-all";

    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--cache")
        .arg(&disk)
        .arg(&reg.busybox)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();

    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "wrote-all\n");
    assert_eq!(sha256(&disk), before, "the cache disk must not change");

    // A second container sees the pristine image: nothing leaked between containers either.
    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--cache")
        .arg(&disk)
        .arg(&reg.busybox)
        .args([
            "--",
            "sh",
            "-c",
            "test -e /scribble && echo leaked; cat /etc/passwd; test -L /bin/ls && echo ls-present",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nls-present\n"
    );
    assert_eq!(sha256(&disk), before);
}
