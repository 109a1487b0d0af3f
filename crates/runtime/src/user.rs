//! Who a container's process runs as: the image's `User` (`uid`, `uid:gid`, `name`,
//! `name:group`) or the pod's `runAsUser`/`runAsGroup`, resolved against the rootfs's
//! `/etc/passwd` and `/etc/group`, plus supplemental groups, as containerd does.
//!
//! Those files come from the image and are hostile input: they are opened without following
//! anything out of the rootfs, without blocking (a FIFO or a device is refused, not read), and
//! read up to a bound. Call this on a blocking thread: it reads files.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use crate::{RuntimeError, SecuritySpec};

/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// The numeric identity the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Other groups: those of `/etc/group` listing the user, then the pod's supplemental
    /// groups and `fsGroup`.
    pub additional_gids: Vec<u32>,
}

/// The account files of a rootfs, read once and only when needed.
struct Accounts<'a> {
    rootfs: &'a Path,
    container: &'a str,
    passwd: Option<Option<String>>,
    group: Option<Option<String>>,
}

impl<'a> Accounts<'a> {
    fn passwd(&mut self) -> Result<Option<&str>, RuntimeError> {
        if self.passwd.is_none() {
            self.passwd = Some(read_in_root(self.rootfs, "etc/passwd", self.container)?);
        }
        Ok(self.passwd.as_ref().and_then(|p| p.as_deref()))
    }

    fn group(&mut self) -> Result<Option<&str>, RuntimeError> {
        if self.group.is_none() {
            self.group = Some(read_in_root(self.rootfs, "etc/group", self.container)?);
        }
        Ok(self.group.as_ref().and_then(|g| g.as_deref()))
    }
}

/// Resolves who the process of `container` runs as: `security.run_as_user` /
/// `run_as_group` override the image's `user` (empty = root); names are looked up in the
/// rootfs with every path resolved inside it.
pub fn resolve_user(
    rootfs: &Path,
    user: Option<&str>,
    security: &SecuritySpec,
    container: &str,
) -> Result<ResolvedUser, RuntimeError> {
    let mut accounts = Accounts {
        rootfs,
        container,
        passwd: None,
        group: None,
    };
    let user = user.filter(|u| !u.is_empty());
    let unknown = |u: &str| RuntimeError::UnknownUser {
        container: container.to_string(),
        user: u.to_string(),
    };
    let (image_user, image_group) = match user {
        Some(u) => match u.split_once(':') {
            Some((u, g)) => (Some(u), Some(g)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    // (uid, primary gid, user name) of the account.
    let (uid, mut gid, name) = match (security.run_as_user, image_user) {
        (Some(uid), _) => {
            let entry = passwd_entries(accounts.passwd()?.unwrap_or("")).find(|e| e.2 == uid);
            (uid, entry.map_or(0, |e| e.3), entry.map(|e| e.0.to_owned()))
        }
        (None, None) => (0, 0, Some("root".to_owned())),
        (None, Some(u)) => match u.parse::<u32>() {
            Ok(uid) => {
                let entry = passwd_entries(accounts.passwd()?.unwrap_or("")).find(|e| e.2 == uid);
                (uid, entry.map_or(0, |e| e.3), entry.map(|e| e.0.to_owned()))
            }
            Err(_) => {
                let passwd = accounts.passwd()?.ok_or_else(|| unknown(u))?;
                let e = passwd_entries(passwd)
                    .find(|e| e.0 == u)
                    .ok_or_else(|| unknown(u))?;
                (e.2, e.3, Some(e.0.to_owned()))
            }
        },
    };
    // The image's group applies unless the pod names a user of its own.
    if security.run_as_user.is_none()
        && let Some(g) = image_group
    {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = accounts
                    .group()?
                    .ok_or_else(|| unknown(user.unwrap_or(g)))?;
                group_entries(group)
                    .find(|e| e.0 == g)
                    .map(|e| e.1)
                    .ok_or_else(|| unknown(user.unwrap_or(g)))?
            }
        };
    }
    if let Some(g) = security.run_as_group {
        gid = g;
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = &name
        && let Some(group) = accounts.group()?
    {
        for (_, g, members) in group_entries(group) {
            if members.split(',').any(|m| m.trim() == name) && !additional_gids.contains(&g) {
                additional_gids.push(g);
            }
        }
    }
    for g in &security.supplemental_groups {
        if !additional_gids.contains(g) {
            additional_gids.push(*g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
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

/// (name, gid, members) of each well-formed group line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, &str)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f.get(3).copied().unwrap_or("")))
    })
}

/// Reads `rel` inside `rootfs` (resolved as if the rootfs were `/`); `None` when it does not
/// exist. Anything but a regular file of at most [`MAX_ACCOUNT_FILE`] bytes is refused.
fn read_in_root(rootfs: &Path, rel: &str, container: &str) -> Result<Option<String>, RuntimeError> {
    let refused = |reason: String| RuntimeError::ImageFile {
        container: container.to_owned(),
        path: format!("/{rel}"),
        reason,
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RuntimeError::io("opening", rootfs)(e.into()))?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
    let fd = match rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            return Ok(None);
        }
        Err(e) => return Err(refused(format!("cannot be opened: {e}"))),
    };
    let stat =
        rustix::fs::fstat(fd.as_fd()).map_err(|e| refused(format!("cannot be read: {e}")))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(refused(format!(
            "is not a regular file (it is a {})",
            file_type_name(kind)
        )));
    }
    if stat.st_size as u64 > MAX_ACCOUNT_FILE {
        return Err(refused(format!(
            "is {} bytes, more than the {MAX_ACCOUNT_FILE} read",
            stat.st_size
        )));
    }
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(format!("cannot be read: {e}")))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn file_type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "FIFO",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Socket => "socket",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        _ => "special file",
    }
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
        std::fs::write(
            t.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\nwheel:x:10:app,other\n",
        )
        .unwrap();
        t
    }

    fn resolve(r: &Path, user: Option<&str>, sec: &SecuritySpec) -> ResolvedUser {
        resolve_user(r, user, sec, "c").unwrap()
    }

    #[test]
    fn resolves_each_user_form() {
        let r = rootfs();
        let none = SecuritySpec::default();
        /// image user, (uid, gid), additional gids.
        type Case<'a> = (Option<&'a str>, (u32, u32), &'a [u32]);
        let cases: &[Case] = &[
            (None, (0, 0), &[]),
            (Some(""), (0, 0), &[]),
            (Some("app"), (1000, 1001), &[10]),
            (Some("1000"), (1000, 1001), &[10]),
            (Some("4242"), (4242, 0), &[]),
            (Some("app:staff"), (1000, 50), &[10]),
            (Some("7:8"), (7, 8), &[]),
        ];
        for (user, (uid, gid), extra) in cases {
            assert_eq!(
                resolve(r.path(), *user, &none),
                ResolvedUser {
                    uid: *uid,
                    gid: *gid,
                    additional_gids: extra.to_vec(),
                },
                "{user:?}"
            );
        }
    }

    #[test]
    fn pod_security_context_overrides_the_image_user() {
        let r = rootfs();
        let sec = SecuritySpec {
            run_as_user: Some(1000),
            supplemental_groups: vec![3000, 10],
            ..Default::default()
        };
        assert_eq!(
            resolve(r.path(), Some("root"), &sec),
            ResolvedUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10, 3000],
            }
        );
        let sec = SecuritySpec {
            run_as_user: Some(2000),
            run_as_group: Some(3000),
            ..Default::default()
        };
        assert_eq!(
            resolve(r.path(), Some("app:staff"), &sec),
            ResolvedUser {
                uid: 2000,
                gid: 3000,
                additional_gids: vec![],
            }
        );
        let sec = SecuritySpec {
            run_as_group: Some(77),
            ..Default::default()
        };
        assert_eq!(resolve(r.path(), Some("app"), &sec).gid, 77);
    }

    #[test]
    fn unknown_name_is_an_error_naming_it() {
        let r = rootfs();
        let err =
            resolve_user(r.path(), Some("nobody-here"), &SecuritySpec::default(), "c").unwrap_err();
        assert!(err.to_string().contains("nobody-here"));
    }

    #[test]
    fn passwd_symlink_cannot_escape_the_rootfs() {
        let r = rootfs();
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        // "/etc/passwd" resolves inside the rootfs, i.e. to itself: a loop, so not found.
        assert!(resolve_user(r.path(), Some("root"), &SecuritySpec::default(), "c").is_err());
    }

    #[test]
    fn fifo_passwd_is_refused_without_blocking() {
        let r = rootfs();
        let passwd = r.path().join("etc/passwd");
        std::fs::remove_file(&passwd).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, &passwd, Mode::from_raw_mode(0o644)).unwrap();
        let err = resolve_user(r.path(), Some("app"), &SecuritySpec::default(), "c").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/etc/passwd") && text.contains("FIFO"),
            "{text}"
        );
    }
}
