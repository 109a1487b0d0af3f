//! Local ephemeral storage limits, as the kubelet's eviction manager enforces them: a container
//! whose writable layer and logs use more than its `limits.ephemeral-storage` gets its pod
//! evicted (the pod fails with reason `Evicted`). Cgroups cannot limit disk use, so it is
//! measured periodically.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often usage is measured (the kubelet's housekeeping interval).
pub(super) const CHECK: Duration = Duration::from_secs(10);

/// Bytes of disk used by the files under `paths` (allocated blocks, links not followed, other
/// file systems not entered). What cannot be read counts as nothing. Blocking.
pub(super) fn usage(paths: &[PathBuf]) -> u64 {
    fn walk(path: &Path, dev: u64, total: &mut u64) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.dev() != dev {
            return;
        }
        *total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(path)
        {
            for e in entries.flatten() {
                walk(&e.path(), dev, total);
            }
        }
    }
    let mut total = 0;
    for p in paths {
        if let Ok(meta) = std::fs::symlink_metadata(p) {
            walk(p, meta.dev(), &mut total);
        }
    }
    total
}

/// Resolves once the files under `paths` use more than `limit` bytes, with the usage then;
/// never without a limit.
pub(super) async fn exceeded(limit: Option<u64>, paths: Vec<PathBuf>) -> u64 {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(CHECK).await;
        let p = paths.clone();
        if let Ok(used) = tokio::task::spawn_blocking(move || usage(&p)).await
            && used > limit
        {
            return used;
        }
    }
}

/// The kubelet's eviction message for a container over its limit.
pub(super) fn message(container: &str, limit: &str) -> String {
    format!("Container {container} exceeded its local ephemeral storage limit \"{limit}\". ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_files_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/big"), vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("link")).unwrap();
        let used = usage(&[d.path().to_path_buf()]);
        assert!(used >= 1 << 20, "{used}");
        assert!(used < 2 << 20, "a symlink to /usr is not followed: {used}");
        assert_eq!(usage(&[d.path().join("missing")]), 0);
    }
}
