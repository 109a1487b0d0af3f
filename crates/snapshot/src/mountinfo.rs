//! Reading `/proc/self/mountinfo`: which paths are mount points and what is mounted there.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub(crate) struct MountEntry {
    pub mount_point: PathBuf,
    pub source: String,
}

/// Every mount visible to this process; empty when mountinfo cannot be read.
pub(crate) fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let _fs_type = right.next()?;
    let source = unescape(right.next()?);
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(mount_point)),
        source,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` (paths as the kernel shows them, so `dir` should be
/// canonical), deepest first: the order to unmount them in.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by(|a, b| (b.components().count(), b).cmp(&(a.components().count(), a)));
    found.dedup();
    found
}

/// Whether `path` is currently a mount point (of any filesystem).
pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_erofs_line_with_escaped_space() {
        let line =
            "36 25 7:0 / /var/lib/imc/run/caches/a\\040b ro,nodev - erofs /dev/loop0 ro,user_xattr";
        let m = parse_line(line).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/var/lib/imc/run/caches/a b"));
        assert_eq!(m.source, "/dev/loop0");
    }
}
