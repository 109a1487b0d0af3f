//! Safe unpack of one layer tar into an empty directory (DESIGN §8).
//!
//! Layers are hostile input. Every path is resolved relative to one directory fd opened once on
//! the layer root, with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: the kernel resolves
//! `..`, absolute symlinks and relative symlinks that climb as if the root were `/`, so no entry
//! can name anything outside it. Only the *parent* of an entry is resolved that way; the final
//! component is created with `*at` calls on the parent fd and is never followed (`O_NOFOLLOW`,
//! `O_EXCL`, `AT_SYMLINK_NOFOLLOW`), so a symlink planted by an earlier entry cannot redirect a
//! write.
//!
//! Semantics follow containerd's `archive.Apply` with `OverlayConvertWhiteout`, which is what
//! containerd's overlayfs snapshotter runs (`diff/apply/apply_linux.go`):
//!
//! - Entry names are cleaned lexically against `/` first, so `../../x` and `/x` both mean `x` in
//!   the root (containerd does `filepath.Clean` + `fs.RootPath`; Docker's archive code rejects
//!   them instead). Such an entry is odd but cannot escape, so it is applied, not refused.
//! - Symlinks are stored verbatim (absolute targets are legitimate in images); only paths we
//!   *resolve* are confined.
//! - A hardlink's target is resolved inside the root and must exist there: a link to
//!   `/etc/passwd` means the layer's own `etc/passwd`, and fails if the layer has none.
//! - Cross-layer behaviour: layers are unpacked into separate trees (one per diffID, shared by
//!   every image that uses the layer) and merged later by overlayfs. containerd does the same: it
//!   applies a layer into the snapshot's empty *upperdir* (not into the merged mount), so a path
//!   that runs through a symlink created by a LOWER layer (say a lower layer has `lib ->
//!   usr/lib` and this layer has `lib/x.so`) does not see that symlink: `lib` is created as a
//!   real directory in this layer's tree, and in the merged view that directory hides the lower
//!   symlink. We do exactly that. The one difference: containerd gives such implied parent
//!   directories the mode/owner of the same path in the lower layers (`WithParents`), while our
//!   trees are keyed by diffID and must not depend on which image they sit under, so an implied
//!   parent is `0755 root:root`. Image builders emit an entry for every parent directory, so
//!   implied parents are rare in practice. `crates/imc/tests/image_containerd.rs` checks this
//!   against containerd 1.6: the merged views of the same image are identical.
//! - Whiteouts become overlayfs whiteouts: `.wh.x` → character device 0/0 named `x`;
//!   `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory. Other `.wh..wh.*` names are
//!   AUFS metadata and are skipped.
//! - Device nodes are refused unless [`UnpackOptions::allow_devices`]; FIFOs are harmless and
//!   created. `trusted.overlay.*` xattrs carried in the tar are dropped: a layer must not steer
//!   overlayfs (redirects, metacopy) behind the whiteout rules above.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use imc_api::Digest;
use imc_api::digest::Hasher;
use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags, makedev,
};
use rustix::io::Errno;

use crate::error::UnpackError;

/// Limits and permissions for [`unpack_layer_with`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Refuse a layer whose decompressed tar stream, or whose regular files, exceed this many
    /// bytes.
    pub max_size: u64,
    /// Create character and block devices other than whiteouts (off: a layer that ships one is
    /// refused).
    pub allow_devices: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            max_size: 64 << 30,
            allow_devices: false,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the whole decompressed tar stream, i.e. the layer's diffID when it is intact.
    pub diff_id: Digest,
    /// Length of the decompressed tar stream.
    pub tar_bytes: u64,
    /// Bytes of regular-file content written.
    pub unpacked_bytes: u64,
    /// Tar entries applied (whiteouts included, skipped AUFS metadata not).
    pub entries: u64,
}

/// Safe unpack of one (decompressed) layer tar into an empty directory (DESIGN §8), with the
/// default [`UnpackOptions`].
pub fn unpack_layer(tar: impl Read, root: &Path) -> Result<UnpackStats, UnpackError> {
    unpack_layer_with(tar, root, &UnpackOptions::default())
}

/// [`unpack_layer`] with explicit limits.
pub fn unpack_layer_with(
    tar: impl Read,
    root: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Root {
        path: root.to_owned(),
        cause: e.into(),
    })?;
    let mut unpacker = Unpacker {
        root: root_fd,
        options,
        unpacked_bytes: 0,
        entries: 0,
        dir_times: Vec::new(),
        buf: vec![0u8; 256 * 1024],
    };
    let exceeded = Arc::new(AtomicBool::new(false));
    let mut archive = tar::Archive::new(HashingReader {
        inner: tar,
        hasher: Hasher::new(),
        count: 0,
        limit: options.max_size,
        exceeded: exceeded.clone(),
    });
    // The entry being read, for errors that surface while reading the stream.
    let mut current: Option<String> = None;
    let result = (|| {
        let entries = archive.entries().map_err(|e| UnpackError::Tar {
            entry: None,
            cause: e,
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| UnpackError::Tar {
                entry: current.clone(),
                cause: e,
            })?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            current = Some(name.clone());
            unpacker.apply(&mut entry, &name)?;
        }
        unpacker.finish_dirs()
    })();
    let mut reader = archive.into_inner();
    // The tar reader stops at the end-of-archive blocks; the diffID covers the whole stream,
    // padding included, so read what is left.
    let result = result.and_then(|()| {
        io::copy(&mut reader, &mut io::sink())
            .map(|_| ())
            .map_err(|e| UnpackError::Tar {
                entry: None,
                cause: e,
            })
    });
    if let Err(e) = result {
        if exceeded.load(Ordering::Relaxed) {
            return Err(UnpackError::TooLarge {
                entry: current.unwrap_or_else(|| "(before the first entry)".to_owned()),
                limit: options.max_size,
            });
        }
        return Err(e);
    }
    let (diff_id, tar_bytes) = reader.finish();
    Ok(UnpackStats {
        diff_id,
        tar_bytes,
        unpacked_bytes: unpacker.unpacked_bytes,
        entries: unpacker.entries,
    })
}

/// Hashes and counts everything read through it, and fails past `limit` bytes: a small gzip
/// or zstd blob can expand to any number of tar headers, so the bound is on the decompressed
/// stream, not only on file contents.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl<R: Read> HashingReader<R> {
    fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count > self.limit {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(io::Error::other("layer exceeds its size limit"));
        }
        Ok(n)
    }
}

/// Metadata common to every entry kind, taken from the header and its PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker<'a> {
    root: OwnedFd,
    options: &'a UnpackOptions,
    unpacked_bytes: u64,
    entries: u64,
    /// Directory mtimes, applied after everything else since creating entries inside a directory
    /// changes its mtime.
    dir_times: Vec<(OsString, Timespec)>,
    buf: Vec<u8>,
}

/// `name` cleaned lexically against `/`: no empty, `.` or `..` components remain.
fn clean(name: &Path) -> Vec<&OsStr> {
    let mut out = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn join<S: AsRef<OsStr>>(components: &[S]) -> OsString {
    let mut s = OsString::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            s.push("/");
        }
        s.push(c.as_ref());
    }
    if s.is_empty() {
        s.push(".");
    }
    s
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        entry: entry.to_owned(),
        op,
        cause: e.into(),
    }
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

impl Unpacker<'_> {
    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let path_bytes = entry.path_bytes().into_owned();
        let path = Path::new(OsStr::from_bytes(&path_bytes));
        let components = clean(path);
        let Some((base, parents)) = components.split_last() else {
            // The root itself (`./`): containerd ignores it too; the root belongs to the store.
            return Ok(());
        };
        let base_bytes = base.as_bytes();
        // AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`) carries no content.
        if base_bytes.starts_with(b".wh..wh.") && base_bytes != b".wh..wh..opq" {
            return Ok(());
        }
        let meta = self.meta(entry, name)?;
        let parent = self.parent_dir(parents, name)?;
        self.entries += 1;

        if base_bytes == b".wh..wh..opq" {
            let dir = rustix::fs::openat(
                &parent,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err(name, "open directory for opaque marker"))?;
            rustix::fs::fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(io_err(name, "set trusted.overlay.opaque"))?;
            return Ok(());
        }
        if let Some(hidden) = base_bytes.strip_prefix(b".wh.") {
            let hidden = OsStr::from_bytes(hidden);
            if hidden.is_empty()
                || hidden == "."
                || hidden == ".."
                || hidden.as_bytes().contains(&b'/')
            {
                return Err(unsafe_entry(name, "whiteout names no file"));
            }
            self.remove_existing(&parent, hidden, name)?;
            rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(io_err(name, "create whiteout"))?;
            rustix::fs::chownat(
                &parent,
                hidden,
                uid(meta.uid),
                gid(meta.gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err(name, "chown whiteout"))?;
            return Ok(());
        }

        match kind {
            tar::EntryType::Directory => {
                let existing = rustix::fs::statat(&parent, *base, AtFlags::SYMLINK_NOFOLLOW);
                let is_dir = matches!(&existing, Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory);
                if !is_dir {
                    if existing.is_ok() {
                        self.remove_existing(&parent, base, name)?;
                    }
                    rustix::fs::mkdirat(&parent, *base, Mode::from_raw_mode(0o700))
                        .map_err(io_err(name, "create directory"))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    *base,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err(name, "open directory"))?;
                self.set_fd_meta(fd.as_fd(), &meta, name)?;
                self.dir_times.push((join(&components), meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().entry_size().map_err(|e| UnpackError::Tar {
                    entry: Some(name.to_owned()),
                    cause: e,
                })?;
                if self.unpacked_bytes.saturating_add(size) > self.options.max_size {
                    return Err(UnpackError::TooLarge {
                        entry: name.to_owned(),
                        limit: self.options.max_size,
                    });
                }
                self.remove_existing(&parent, base, name)?;
                let fd = rustix::fs::openat(
                    &parent,
                    *base,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err(name, "create file"))?;
                let mut file = std::fs::File::from(fd);
                let written = self.copy(entry, &mut file, name)?;
                self.unpacked_bytes += written;
                self.set_fd_meta(file.as_fd(), &meta, name)?;
                rustix::fs::futimens(&file, &times(meta.mtime))
                    .map_err(io_err(name, "set mtime"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(name, "symlink without a target"))?
                    .into_owned();
                self.remove_existing(&parent, base, name)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, *base)
                    .map_err(io_err(name, "create symlink"))?;
                rustix::fs::chownat(
                    &parent,
                    *base,
                    uid(meta.uid),
                    gid(meta.gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err(name, "chown symlink"))?;
                if !meta.xattrs.is_empty() {
                    // No fd can be opened on a symlink for writing xattrs; go through our own
                    // directory fd (not a path the layer controls).
                    let p = format!("/proc/self/fd/{}", parent.as_raw_fd());
                    let mut p = OsString::from(p);
                    p.push("/");
                    p.push(base);
                    for (k, v) in &meta.xattrs {
                        rustix::fs::lsetxattr(p.as_os_str(), k.as_os_str(), v, XattrFlags::empty())
                            .map_err(io_err(name, "set xattr"))?;
                    }
                }
                rustix::fs::utimensat(
                    &parent,
                    *base,
                    &times(meta.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err(name, "set mtime"))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(name, "hardlink without a target"))?
                    .into_owned();
                let target_str = String::from_utf8_lossy(&target).into_owned();
                let target_components = clean(Path::new(OsStr::from_bytes(&target)));
                let Some((tbase, tparents)) = target_components.split_last() else {
                    return Err(unsafe_entry(
                        name,
                        format!("hardlink target {target_str:?} is the layer root"),
                    ));
                };
                let missing = || {
                    unsafe_entry(
                        name,
                        format!("hardlink target {target_str:?} does not exist inside the layer"),
                    )
                };
                let tdir = match rustix::fs::openat2(
                    &self.root,
                    join(tparents),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    IN_ROOT,
                ) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT | Errno::NOTDIR) => return Err(missing()),
                    Err(Errno::LOOP) => {
                        return Err(unsafe_entry(
                            name,
                            format!("hardlink target {target_str:?} runs through a symlink loop"),
                        ));
                    }
                    Err(e) => return Err(io_err(name, "resolve hardlink target")(e)),
                };
                match rustix::fs::statat(&tdir, *tbase, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(unsafe_entry(
                            name,
                            format!("hardlink target {target_str:?} is a directory"),
                        ));
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => return Err(missing()),
                    Err(e) => return Err(io_err(name, "resolve hardlink target")(e)),
                }
                if same_entry(&tdir, tbase, &parent, base) {
                    return Ok(());
                }
                self.remove_existing(&parent, base, name)?;
                // Flags 0: a symlink target is linked itself, never followed (as containerd).
                rustix::fs::linkat(&tdir, *tbase, &parent, *base, AtFlags::empty())
                    .map_err(io_err(name, "create hardlink"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                if !self.options.allow_devices {
                    return Err(unsafe_entry(name, "device nodes are not allowed in layers"));
                }
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                let ft = if kind == tar::EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                self.remove_existing(&parent, base, name)?;
                rustix::fs::mknodat(
                    &parent,
                    *base,
                    ft,
                    Mode::from_raw_mode(0o600),
                    makedev(major, minor),
                )
                .map_err(io_err(name, "create device node"))?;
                self.set_path_meta(&parent, base, &meta, name)?;
            }
            tar::EntryType::Fifo => {
                self.remove_existing(&parent, base, name)?;
                rustix::fs::mknodat(
                    &parent,
                    *base,
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(io_err(name, "create fifo"))?;
                self.set_path_meta(&parent, base, &meta, name)?;
            }
            other => {
                return Err(unsafe_entry(
                    name,
                    format!("unsupported tar entry type {other:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Mode, owner and xattrs from the header and its PAX records.
    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Meta, UnpackError> {
        let header = entry.header();
        let bad = |e: io::Error| UnpackError::Tar {
            entry: Some(name.to_owned()),
            cause: e,
        };
        let old = header.as_old();
        // Go's archive/tar (which wrote most layers) reads an empty numeric field as 0.
        let mode = numeric(header.mode().map(u64::from), &old.mode).map_err(bad)? as u32 & 0o7777;
        let mut uid = numeric(header.uid(), &old.uid).map_err(bad)?;
        let mut gid = numeric(header.gid(), &old.gid).map_err(bad)?;
        let mut mtime = Timespec {
            tv_sec: numeric(header.mtime(), &old.mtime).map_err(bad)? as i64,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(bad)? {
            for ext in pax {
                let ext = ext.map_err(bad)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(xname) = key.strip_prefix(b"SCHILY.xattr.") {
                    if xname.starts_with(b"trusted.overlay.") {
                        tracing::warn!(entry = name, xattr = %String::from_utf8_lossy(xname), "dropping overlayfs xattr carried in layer");
                        continue;
                    }
                    xattrs.push((OsStr::from_bytes(xname).to_owned(), value.to_vec()));
                } else if key == b"uid" {
                    uid = parse_u64(value).ok_or_else(|| unsafe_entry(name, "bad PAX uid"))?;
                } else if key == b"gid" {
                    gid = parse_u64(value).ok_or_else(|| unsafe_entry(name, "bad PAX gid"))?;
                } else if key == b"mtime"
                    && let Some(t) = parse_pax_time(value)
                {
                    mtime = t;
                }
            }
        }
        let uid = u32::try_from(uid)
            .map_err(|_| unsafe_entry(name, format!("uid {uid} out of range")))?;
        let gid = u32::try_from(gid)
            .map_err(|_| unsafe_entry(name, format!("gid {gid} out of range")))?;
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Opens (O_PATH) the directory holding an entry, resolved inside the root, creating missing
    /// directories on the way with mode 0755. Like containerd's `mkparent` over `fs.RootPath`, a
    /// dangling symlink on the way is followed (inside the root) and the directory it names is
    /// created: `tmp -> /tmp` followed by `tmp/x` creates the layer's own `tmp/x`.
    fn parent_dir(&self, parents: &[&OsStr], name: &str) -> Result<OwnedFd, UnpackError> {
        let open = |comps: &[OsString]| {
            rustix::fs::openat2(
                &self.root,
                join(comps),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            )
        };
        let looped = || {
            unsafe_entry(
                name,
                "too many levels of symbolic links (symlink loop) in its parent path",
            )
        };
        let classify = |e: Errno| match e {
            Errno::LOOP => looped(),
            Errno::NOTDIR => unsafe_entry(name, "a parent path component is not a directory"),
            Errno::XDEV => unsafe_entry(name, "parent path resolves outside the layer root"),
            e => io_err(name, "resolve parent directory")(e),
        };
        // Components may include `.`/`..` from symlink targets; openat2 resolves those in-root.
        let mut comps: Vec<OsString> = parents.iter().map(|c| (*c).to_owned()).collect();
        let mut hops = 0;
        'restart: loop {
            match open(&comps) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(classify(e)),
            }
            let mut dir = open(&[]).map_err(classify)?;
            for i in 0..comps.len() {
                dir = match open(&comps[..=i]) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => match rustix::fs::mkdirat(
                        &dir,
                        comps[i].as_os_str(),
                        Mode::from_raw_mode(0o755),
                    ) {
                        Ok(()) => {
                            let fd = rustix::fs::openat(
                                &dir,
                                comps[i].as_os_str(),
                                OFlags::RDONLY
                                    | OFlags::DIRECTORY
                                    | OFlags::NOFOLLOW
                                    | OFlags::CLOEXEC,
                                Mode::empty(),
                            )
                            .map_err(io_err(name, "open parent directory"))?;
                            // mkdirat's mode is masked by the umask.
                            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                                .map_err(io_err(name, "chmod parent directory"))?;
                            fd
                        }
                        Err(Errno::EXIST) => {
                            // A dangling symlink: continue along its target, still in the root.
                            hops += 1;
                            if hops > 40 {
                                return Err(looped());
                            }
                            let target =
                                rustix::fs::readlinkat(&dir, comps[i].as_os_str(), Vec::new())
                                    .map_err(io_err(name, "read symlink in parent path"))?;
                            let target = target.as_bytes();
                            let mut next: Vec<OsString> = if target.starts_with(b"/") {
                                Vec::new()
                            } else {
                                comps[..i].to_vec()
                            };
                            next.extend(
                                target
                                    .split(|b| *b == b'/')
                                    .filter(|c| !c.is_empty())
                                    .map(|c| OsStr::from_bytes(c).to_owned()),
                            );
                            next.extend(comps[i + 1..].iter().cloned());
                            comps = next;
                            continue 'restart;
                        }
                        Err(e) => return Err(io_err(name, "create parent directory")(e)),
                    },
                    Err(e) => return Err(classify(e)),
                };
            }
            return Ok(dir);
        }
    }

    /// Removes whatever sits at `parent/base` (never following a symlink), so the entry replaces
    /// it: later entries win, as in containerd.
    fn remove_existing(
        &self,
        parent: &OwnedFd,
        base: &OsStr,
        name: &str,
    ) -> Result<(), UnpackError> {
        remove_all_at(parent.as_fd(), base).map_err(io_err(name, "replace existing file"))
    }

    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut std::fs::File,
        name: &str,
    ) -> Result<u64, UnpackError> {
        let mut total = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(UnpackError::Tar {
                        entry: Some(name.to_owned()),
                        cause: e,
                    });
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| UnpackError::Io {
                    entry: name.to_owned(),
                    op: "write file",
                    cause: e,
                })?;
            total += n as u64;
        }
        Ok(total)
    }

    /// Owner, then mode (chown clears setuid/setgid, so mode comes second), then xattrs.
    fn set_fd_meta(&self, fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), UnpackError> {
        rustix::fs::fchown(fd, uid(meta.uid), gid(meta.gid)).map_err(io_err(name, "chown"))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(io_err(name, "chmod"))?;
        for (k, v) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, k.as_os_str(), v, XattrFlags::empty())
                .map_err(io_err(name, "set xattr"))?;
        }
        Ok(())
    }

    /// Metadata for a node that cannot be opened for writing (FIFO, device).
    fn set_path_meta(
        &self,
        parent: &OwnedFd,
        base: &OsStr,
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        // O_PATH opens the node itself without side effects (a FIFO would block on open).
        let fd = rustix::fs::openat(
            parent,
            base,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err(name, "open node"))?;
        let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::chownat(
            &self.root,
            p.as_str(),
            uid(meta.uid),
            gid(meta.gid),
            AtFlags::empty(),
        )
        .map_err(io_err(name, "chown"))?;
        rustix::fs::chmodat(
            &self.root,
            p.as_str(),
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(io_err(name, "chmod"))?;
        rustix::fs::utimensat(parent, base, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(name, "set mtime"))?;
        Ok(())
    }

    /// Applies directory mtimes once nothing more is created inside them.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            let fd = match rustix::fs::openat2(
                &self.root,
                path.as_os_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            ) {
                Ok(fd) => fd,
                // Replaced or removed by a later entry: its own metadata stands.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(io_err(&path.to_string_lossy(), "open directory")(e)),
            };
            rustix::fs::futimens(&fd, &times(mtime))
                .map_err(io_err(&path.to_string_lossy(), "set mtime"))?;
        }
        Ok(())
    }
}

/// A header number, with an all-NUL/space field read as 0.
fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

fn uid(raw: u32) -> Option<rustix::fs::Uid> {
    Some(rustix::fs::Uid::from_raw_unchecked(raw))
}

fn gid(raw: u32) -> Option<rustix::fs::Gid> {
    Some(rustix::fs::Gid::from_raw_unchecked(raw))
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// PAX times are decimal seconds with an optional fraction ("1700000000.123456789").
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let tv_nsec = digits.parse().ok()?;
    if tv_sec < 0 {
        return None;
    }
    Some(Timespec { tv_sec, tv_nsec })
}

/// Whether two names (each relative to a directory fd, not followed) are the same inode, so a
/// hardlink onto itself is a no-op rather than a delete-then-link-to-nothing.
fn same_entry(a_dir: &OwnedFd, a: &OsStr, b_dir: &OwnedFd, b: &OsStr) -> bool {
    match (
        rustix::fs::statat(a_dir, a, AtFlags::SYMLINK_NOFOLLOW),
        rustix::fs::statat(b_dir, b, AtFlags::SYMLINK_NOFOLLOW),
    ) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// Removes `name` under `dir` and, if it is a directory, everything beneath it; never follows
/// symlinks. Absent is fine.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(&sub)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_owned());
        }
    }
    for n in names {
        remove_all_at(sub.as_fd(), &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_against_root() {
        let cases: [(&str, &[&str]); 7] = [
            ("a/b", &["a", "b"]),
            ("./a/./b/", &["a", "b"]),
            ("/etc/passwd", &["etc", "passwd"]),
            ("../../etc/passwd", &["etc", "passwd"]),
            ("a/../../b", &["b"]),
            ("./", &[]),
            ("..", &[]),
        ];
        for (name, want) in cases {
            let got: Vec<&str> = clean(Path::new(name))
                .iter()
                .map(|c| c.to_str().unwrap())
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"1700000000").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 0));
        assert!(parse_pax_time(b"-5").is_none());
        assert!(parse_pax_time(b"12.x").is_none());
    }

    #[test]
    fn empty_numeric_fields_read_as_zero() {
        let bad = || Err(io::Error::other("not a number"));
        assert_eq!(numeric(bad(), &[0; 8]).unwrap(), 0);
        assert_eq!(numeric(bad(), b"        ").unwrap(), 0);
        assert!(numeric(bad(), b"12x").is_err());
    }
}
