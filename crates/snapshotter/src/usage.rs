//! Disk usage of a snapshot directory, as containerd's `fs.DiskUsage` counts it: bytes of
//! allocated blocks and inodes, each hard-linked inode once. Blocks: call from a blocking thread.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::SnapshotterError;

/// `(bytes, inodes)` under `root`, not following symlinks nor crossing mounts.
pub fn disk_usage(root: &Path) -> Result<(i64, i64), SnapshotterError> {
    let top = std::fs::symlink_metadata(root).map_err(SnapshotterError::io("measuring", root))?;
    let mut seen = HashSet::new();
    let mut size = 0i64;
    let mut stack = vec![root.to_path_buf()];
    seen.insert((top.dev(), top.ino()));
    size += (top.blocks() * 512) as i64;
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(SnapshotterError::io("measuring", &dir))?;
        for entry in entries {
            let entry = entry.map_err(SnapshotterError::io("measuring", &dir))?;
            let meta = entry
                .metadata()
                .map_err(SnapshotterError::io("measuring", entry.path()))?;
            if meta.dev() != top.dev() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            size += (meta.blocks() * 512) as i64;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((size, seen.len() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![7u8; 10_000]).unwrap();
        let (one, inodes_one) = disk_usage(dir.path()).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let (two, inodes_two) = disk_usage(dir.path()).unwrap();
        assert_eq!(inodes_one, 2, "the directory and the file");
        assert_eq!(inodes_two, 2, "a hard link adds no inode");
        assert_eq!(one, two, "nor bytes");
        assert!(one >= 10_000, "{one}");
    }
}
