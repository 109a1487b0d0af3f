//! The pod sandbox: a directory under `DIR/pods/<uid>/` and a network namespace with loopback up,
//! held by a bind mount of its nsfs file at `DIR/pods/<uid>/netns` (no pause process), joined to
//! the node's CNI network when there is one (its attachment kept in `DIR/pods/<uid>/network.json`
//! for the `DEL`); a `hostNetwork` pod has none and uses the host's.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;
use tracing::debug;

use crate::cni::{Attachment, CniNetwork, PortMapping};
use crate::spec::PodNamespaces;
use crate::{RuntimeError, names};

/// The file keeping a pod's CNI attachment.
pub(crate) const NETWORK_FILE: &str = "network.json";

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
    /// The pod's `hostPort`s (given to the CNI `portmap` plugin).
    pub port_mappings: Vec<PortMapping>,
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
    /// The pod's addresses on the node's network (none with loopback only or `hostNetwork`).
    pub ips: Vec<std::net::IpAddr>,
}

/// The file holding a pod's network namespace (a bind mount of its nsfs file).
pub(crate) fn netns_file(pod_dir: &Path) -> PathBuf {
    pod_dir.join("netns")
}

impl PodSandbox {
    /// Creates the pod dir and, unless `hostNetwork`, a fresh network namespace with `lo` up;
    /// reuses them when they exist already (a second container of the same pod). Blocking.
    pub(crate) fn create(
        pods_dir: &Path,
        config: &SandboxConfig,
        network: Option<&CniNetwork>,
    ) -> Result<Self, RuntimeError> {
        names::check_component("pod uid", &config.uid)?;
        let uid = config.uid.as_str();
        let dir = pods_dir.join(uid);
        fs::create_dir_all(&dir).map_err(RuntimeError::io("creating", &dir))?;
        let netns = netns_file(&dir);
        let mut sandbox = PodSandbox {
            uid: uid.to_string(),
            dir,
            hostname: config.hostname.clone(),
            namespaces: PodNamespaces {
                netns: (!config.host_network).then(|| netns.clone()),
                host_pid: config.host_pid,
                host_ipc: config.host_ipc,
            },
            ips: Vec::new(),
        };
        if config.host_network {
            return Ok(sandbox);
        }
        if imc_snapshot::is_mount_point(&netns) {
            sandbox.ips = sandbox.attachment().map(|a| a.ips()).unwrap_or_default();
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
        if let Some(network) = network {
            let attached = network
                .add(uid, &netns, &config.port_mappings)
                .and_then(|a| {
                    crate::container::write_json(&sandbox.dir.join(NETWORK_FILE), &a)?;
                    Ok(a)
                });
            match attached {
                Ok(a) => sandbox.ips = a.ips(),
                Err(e) => {
                    // Whatever the plugins did half-way (an address leased) is undone.
                    let partial = Attachment {
                        conflist: network.conflist.clone(),
                        bin_dirs: network.bin_dirs.clone(),
                        result: serde_json::Value::Null,
                        port_mappings: config.port_mappings.clone(),
                    };
                    let _ = partial.delete(uid, Some(&netns));
                    let _ = rustix::mount::unmount(&netns, UnmountFlags::DETACH);
                    return Err(e);
                }
            }
            debug!(pod = %uid, ips = ?sandbox.ips, "pod network attached");
        }
        Ok(sandbox)
    }

    /// The pod's CNI attachment, if it has one.
    fn attachment(&self) -> Option<Attachment> {
        read_attachment(&self.dir)
    }

    /// Removes the network namespace, the pod's cgroups and the pod dir.
    pub async fn remove(&self) -> Result<(), RuntimeError> {
        let sandbox = self.clone();
        crate::blocking("removing the pod sandbox", move || sandbox.remove_now()).await
    }

    /// [`PodSandbox::remove`] on the calling (blocking) thread.
    pub(crate) fn remove_now(&self) -> Result<(), RuntimeError> {
        names::check_component("pod uid", &self.uid)?;
        release_network(&self.dir, &self.uid);
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

/// The CNI attachment kept in a pod dir (bounded read; `None` when absent or unreadable).
fn read_attachment(pod_dir: &Path) -> Option<Attachment> {
    use std::io::Read;
    let file = fs::File::open(pod_dir.join(NETWORK_FILE)).ok()?;
    let mut bytes = Vec::new();
    file.take(1 << 20).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Takes pod `uid` (directory `pod_dir`) off its CNI network, while its network namespace is
/// still mounted: the plugins' `DEL` frees its address and host ports. Failures are logged:
/// removal goes on. Blocking.
pub(crate) fn release_network(pod_dir: &Path, uid: &str) {
    let Some(attachment) = read_attachment(pod_dir) else {
        return;
    };
    let netns = netns_file(pod_dir);
    let ns = imc_snapshot::is_mount_point(&netns).then_some(netns.as_path());
    match attachment.delete(uid, ns) {
        Ok(()) => {
            let _ = fs::remove_file(pod_dir.join(NETWORK_FILE));
        }
        Err(e) => tracing::warn!(pod = %uid, error = %e, "removing the pod from its network"),
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
