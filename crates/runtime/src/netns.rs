//! The pod sandbox: a directory under `DIR/pods/<uid>/` and a network namespace with loopback up,
//! held by a bind mount of its nsfs file at `DIR/pods/<uid>/netns` (no pause process).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;
use tracing::debug;

use crate::RuntimeError;

/// A pod's directory and network namespace, shared by its containers.
#[derive(Debug, Clone)]
pub struct PodSandbox {
    /// Pod uid.
    pub uid: String,
    /// `DIR/pods/<uid>`.
    pub dir: PathBuf,
    /// The network namespace file containers join.
    pub netns: PathBuf,
}

impl PodSandbox {
    /// Creates the pod dir and a fresh network namespace with `lo` up; reuses them when they
    /// exist already (a second container of the same pod).
    pub fn create(pods_dir: &Path, uid: &str) -> Result<Self, RuntimeError> {
        let dir = pods_dir.join(uid);
        fs::create_dir_all(&dir).map_err(RuntimeError::io("creating", &dir))?;
        let netns = dir.join("netns");
        let sandbox = PodSandbox {
            uid: uid.to_string(),
            dir,
            netns,
        };
        if imc_snapshot::is_mount_point(&sandbox.netns) {
            return Ok(sandbox);
        }
        fs::write(&sandbox.netns, b"").map_err(RuntimeError::io("creating", &sandbox.netns))?;
        let target = sandbox.netns.clone();
        // unshare(CLONE_NEWNET) moves only the calling thread: do it on a throwaway thread.
        let result = std::thread::spawn(move || -> std::io::Result<()> {
            // SAFETY: only the network namespace of this short-lived thread changes; it shares
            // no file descriptors or state that depend on the namespace.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)? };
            loopback_up()?;
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("network namespace thread panicked")));
        result.map_err(|source| RuntimeError::Network {
            pod: uid.to_string(),
            cause: source,
        })?;
        debug!(pod = %uid, "pod network namespace created");
        Ok(sandbox)
    }

    /// Removes the network namespace and the pod dir.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        let _ = rustix::mount::unmount(&self.netns, UnmountFlags::DETACH);
        if self.dir.exists() {
            crate::container::remove_tree(&self.dir)?;
        }
        Ok(())
    }
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid socket we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which outlives the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
