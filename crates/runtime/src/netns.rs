//! The pod sandbox: a directory under `DIR/pods/<uid>/` and a network namespace with loopback up,
//! held by a bind mount of its nsfs file at `DIR/pods/<uid>/netns` (no pause process); a
//! `hostNetwork` pod has none and uses the host's.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;
use tracing::debug;

use crate::spec::PodNamespaces;
use crate::{RuntimeError, names};

/// What a pod's sandbox is made of (the pod spec's part of it).
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Pod uid: the name of the pod's directory.
    pub uid: String,
    /// The containers' hostname: the pod's `hostname`, else its name (at most 63 characters).
    pub hostname: String,
    /// `hostNetwork`: no network namespace of its own.
    pub host_network: bool,
    /// `hostPID`.
    pub host_pid: bool,
    /// `hostIPC`.
    pub host_ipc: bool,
}

impl SandboxConfig {
    /// A sandbox with its own namespaces for pod `uid`, whose containers are named `hostname`.
    pub fn new(uid: &str, hostname: &str) -> Self {
        SandboxConfig {
            uid: uid.to_owned(),
            hostname: hostname.to_owned(),
            ..Default::default()
        }
    }
}

/// A pod's directory and namespaces, shared by its containers.
#[derive(Debug, Clone)]
pub struct PodSandbox {
    /// Pod uid.
    pub uid: String,
    /// `DIR/pods/<uid>`.
    pub dir: PathBuf,
    /// The containers' hostname.
    pub hostname: String,
    /// The namespaces its containers share (the network namespace file, or the host's).
    pub namespaces: PodNamespaces,
}

/// The file holding a pod's network namespace (a bind mount of its nsfs file).
pub(crate) fn netns_file(pod_dir: &Path) -> PathBuf {
    pod_dir.join("netns")
}

impl PodSandbox {
    /// Creates the pod dir and, unless `hostNetwork`, a fresh network namespace with `lo` up;
    /// reuses them when they exist already (a second container of the same pod). Blocking.
    pub(crate) fn create(pods_dir: &Path, config: &SandboxConfig) -> Result<Self, RuntimeError> {
        names::check_component("pod uid", &config.uid)?;
        let uid = config.uid.as_str();
        let dir = pods_dir.join(uid);
        fs::create_dir_all(&dir).map_err(RuntimeError::io("creating", &dir))?;
        let netns = netns_file(&dir);
        let sandbox = PodSandbox {
            uid: uid.to_string(),
            dir,
            hostname: config.hostname.clone(),
            namespaces: PodNamespaces {
                netns: (!config.host_network).then(|| netns.clone()),
                host_pid: config.host_pid,
                host_ipc: config.host_ipc,
            },
        };
        if config.host_network || imc_snapshot::is_mount_point(&netns) {
            return Ok(sandbox);
        }
        fs::write(&netns, b"").map_err(RuntimeError::io("creating", &netns))?;
        let target = netns.clone();
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

    /// Removes the network namespace, the pod's cgroups and the pod dir.
    pub async fn remove(&self) -> Result<(), RuntimeError> {
        let sandbox = self.clone();
        crate::blocking("removing the pod sandbox", move || sandbox.remove_now()).await
    }

    /// [`PodSandbox::remove`] on the calling (blocking) thread.
    pub(crate) fn remove_now(&self) -> Result<(), RuntimeError> {
        names::check_component("pod uid", &self.uid)?;
        let _ = rustix::mount::unmount(netns_file(&self.dir), UnmountFlags::DETACH);
        // Volumes the node mounted for the pod (memory-backed emptyDirs, subPath binds).
        let dir = fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        for m in imc_snapshot::mounts_under(&dir) {
            let _ = rustix::mount::unmount(&m, UnmountFlags::DETACH);
        }
        crate::cgroups::remove_pod(&self.uid);
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
