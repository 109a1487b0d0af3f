//! Resolving the image's `User` (`uid`, `uid:gid`, `name`, `name:group`) against the rootfs.

use std::io::Read;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::RuntimeError;

/// The numeric identity the container process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Resolves `user` (empty = root) using `/etc/passwd` and `/etc/group` inside `rootfs`. Names
/// are looked up with every path resolved inside the rootfs, so an image's symlinked
/// /etc/passwd can never make imc read a host file.
pub fn resolve_user(
    rootfs: &Path,
    user: Option<&str>,
    container: &str,
) -> Result<ResolvedUser, RuntimeError> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok(ResolvedUser::default());
    };
    let unknown = || RuntimeError::UnknownUser {
        container: container.to_string(),
        user: user.to_string(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = read_in_root(rootfs, "etc/passwd")
                .and_then(|p| passwd_entries(&p).find(|e| e.2 == uid).map(|e| e.3))
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => {
            let passwd = read_in_root(rootfs, "etc/passwd").ok_or_else(unknown)?;
            let entry = passwd_entries(&passwd)
                .find(|e| e.0 == u)
                .ok_or_else(unknown)?;
            (entry.2, entry.3)
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = read_in_root(rootfs, "etc/group").ok_or_else(unknown)?;
                group
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse::<u32>().ok())
                            .flatten()
                    })
                    .next()
                    .ok_or_else(unknown)?
            }
        },
    };
    Ok(ResolvedUser { uid, gid })
}

/// (name, password, uid, gid) of each well-formed passwd line.
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, &str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((f[0], f[1], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

fn read_in_root(rootfs: &Path, rel: &str) -> Option<String> {
    let root = rustix::fs::open(
        rootfs,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .ok()?;
    let mut file = std::fs::File::from(fd);
    let mut text = String::new();
    // Bounded: a hostile image could make /etc/passwd huge.
    file.by_ref().take(4 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(t.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        t
    }

    #[test]
    fn resolves_each_user_form() {
        let r = rootfs();
        let cases: &[(Option<&str>, (u32, u32))] = &[
            (None, (0, 0)),
            (Some(""), (0, 0)),
            (Some("app"), (1000, 1001)),
            (Some("1000"), (1000, 1001)),
            (Some("4242"), (4242, 0)),
            (Some("app:staff"), (1000, 50)),
            (Some("7:8"), (7, 8)),
        ];
        for (user, (uid, gid)) in cases {
            assert_eq!(
                resolve_user(r.path(), *user, "c").unwrap(),
                ResolvedUser {
                    uid: *uid,
                    gid: *gid
                },
                "{user:?}"
            );
        }
    }

    #[test]
    fn unknown_name_is_an_error_naming_it() {
        let r = rootfs();
        let err = resolve_user(r.path(), Some("nobody-here"), "c").unwrap_err();
        assert!(err.to_string().contains("nobody-here"));
    }

    #[test]
    fn passwd_symlink_cannot_escape_the_rootfs() {
        let r = rootfs();
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        // "/etc/passwd" resolves inside the rootfs, i.e. to itself: a loop, so not found.
        assert!(resolve_user(r.path(), Some("root"), "c").is_err());
    }
}
