//! Containers: start (overlay rootfs + OCI spec + runc), wait, kill, remove.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imc_snapshot::{AttachedCache, Attacher, CacheUser};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug, info_span, warn};

use crate::cni::CniNetwork;
use crate::exec::ContainerExec;
use crate::image::ImageConfig;
use crate::log_writer::{LogLimits, LogWriter};
use crate::netns::SandboxConfig;
use crate::runc::{ContainerStatus, Runc};
use crate::security::{capabilities, verify_non_root};
use crate::spec::SpecInput;
use crate::{
    PodSandbox, PreparedImage, ResourceSpec, RuntimeError, SecuritySpec, StartTimings, cgroups,
    generate_spec, names, resolve_user, rootfs,
};

/// What to run, as a Kubernetes container spec says it.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Container name, unique in its pod.
    pub name: String,
    /// Replaces the image's Entrypoint.
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub args: Option<Vec<String>>,
    /// Environment added to (and overriding) the image's.
    pub env: Vec<(String, String)>,
    /// Replaces the image's WorkingDir.
    pub working_dir: Option<String>,
    /// The port the container serves on; sets `PORT` (else the image's first exposed TCP port).
    pub port: Option<u16>,
    /// What the process may do (`securityContext`).
    pub security: SecuritySpec,
    /// Its cgroup limits (`resources`).
    pub resources: ResourceSpec,
    /// `terminationMessagePath`: where in the container a file is bind-mounted that the
    /// process may write its termination message to (read by
    /// [`Container::termination_message`] after its exit). Absolute, without `..`.
    pub termination_message_path: Option<String>,
    /// Host paths bind-mounted into it (its volumes), in order.
    pub mounts: Vec<VolumeMount>,
}

/// A host path bind-mounted into a container (one `volumeMounts` entry, resolved by the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Absolute path inside the container (runc creates it, resolved inside the rootfs).
    pub destination: String,
    /// The host file or directory mounted there.
    pub source: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Where the container's stdout/stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerIo {
    /// Both to `DIR/pods/<uid>/<name>/container.log` in the CRI log format, rotated within
    /// the runtime's [`LogLimits`].
    Log,
    /// Both to this file (its directory must exist) in the CRI log format, rotated within the
    /// runtime's [`LogLimits`]: a log kept apart from the container dir outlives the
    /// container (the node keeps logs across restarts).
    LogAt(PathBuf),
    /// The calling process's own stdout/stderr (`imc run` in the foreground).
    Inherit,
}

/// How a container ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// Exit code; 128 + signal number when killed by a signal; -1 when unknown (the process
    /// was not started by this process, so its status could not be collected).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer killed a process of the container (its memory limit).
    pub oom_killed: bool,
    /// When it ended (RFC 3339).
    pub finished_at: String,
}

/// One container start.
#[derive(Debug)]
pub struct StartRequest<'a> {
    /// The pod the container joins (its network namespace and directory).
    pub sandbox: &'a PodSandbox,
    /// What to run.
    pub container: ContainerSpec,
    /// The image, with every layer present on this host.
    pub image: PreparedImage,
    /// The cache disk the image's layers partly or fully come from (already attached for this
    /// container; released when it is removed).
    pub cache: Option<AttachedCache>,
    /// Where stdout/stderr go.
    pub io: ContainerIo,
    /// The process whose death means the container is abandoned (recovery kills it).
    pub owner_pid: u32,
    /// When the start began and the timings of the steps done by the caller (attach, pull).
    pub started: Instant,
    /// Timings of the caller's steps (attach, layers pulled); the start fills in the rest.
    pub timings: StartTimings,
}

/// What recovery needs to clean a container after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContainerRecord {
    pub runc_id: String,
    pub owner: CacheUser,
    pub rootfs: PathBuf,
    /// (attachment id, user name) of the cache it uses.
    pub cache: Option<(String, String)>,
}

pub(crate) const RECORD_FILE: &str = "container.json";
/// The host side of the container's termination message file, in its container dir.
const TERMINATION_LOG: &str = "termination-log";
/// The most of a termination message that is read (its end), as the kubelet's
/// `MaxContainerTerminationMessageLength`.
pub const MAX_TERMINATION_MESSAGE: usize = 4096;
/// How long [`Container::wait`] waits for the log of an exited container to be complete (its
/// pipes close when its last process is gone, at once unless something outside holds them).
const LOG_DRAIN_BOUND: Duration = Duration::from_secs(5);
pub(crate) const POD_OWNER_FILE: &str = "owner.json";
/// Prefix of a pod dir being created (renamed into place once its owner is recorded).
pub(crate) const NEW_POD_PREFIX: &str = ".new-";

/// Runs containers for one data directory: `DIR/pods/` for rootfs, logs and bundles,
/// `DIR/run/runc` for runc's state, `DIR/run/caches` for attached disks.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub(crate) pods_dir: PathBuf,
    /// `DIR/seccomp`: where `Localhost` seccomp profiles are read from.
    pub(crate) seccomp_dir: PathBuf,
    /// The CNI network pods join; loopback only without one.
    pub(crate) network: Option<Arc<CniNetwork>>,
    pub(crate) runc: Runc,
    pub(crate) attacher: Attacher,
    pub(crate) log_limits: LogLimits,
}

impl Runtime {
    /// Opens the runtime of `data_dir`. Makes this process a child subreaper, so container init
    /// processes are re-parented to it and their exit codes can be collected. The data dir,
    /// `pods/`, `run/` and `run/runc/` are made mode 0700 (pod root filesystems hold images'
    /// setuid binaries). Container logs use the default [`LogLimits`].
    pub fn new(data_dir: &Path) -> Result<Self, RuntimeError> {
        let pods_dir = data_dir.join("pods");
        let runc_root = data_dir.join("run/runc");
        imc_layers::ensure_data_dir(data_dir).map_err(RuntimeError::io("creating", data_dir))?;
        for d in [&pods_dir, &data_dir.join("run"), &runc_root] {
            imc_layers::ensure_private_dir(d).map_err(RuntimeError::io("creating", d))?;
        }
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| RuntimeError::io("becoming child subreaper", "/proc/self")(e.into()))?;
        Ok(Runtime {
            pods_dir,
            seccomp_dir: data_dir.join("seccomp"),
            network: None,
            runc: Runc::new(&runc_root),
            attacher: Attacher::new(data_dir)?,
            log_limits: LogLimits::default(),
        })
    }

    /// This runtime with containers' logs ([`ContainerIo::Log`]) rotated within `limits`.
    pub fn with_log_limits(mut self, limits: LogLimits) -> Self {
        self.log_limits = limits;
        self
    }

    /// This runtime with pods joined to `network` (their own address through the CNI plugins)
    /// instead of loopback only.
    pub fn with_network(mut self, network: CniNetwork) -> Self {
        self.network = Some(Arc::new(network));
        self
    }

    /// The cache attacher of this data directory.
    pub fn attacher(&self) -> &Attacher {
        &self.attacher
    }

    /// Creates (or reuses) the sandbox of pod `config.uid`, owned by process `owner_pid`.
    pub async fn create_sandbox(
        &self,
        config: &SandboxConfig,
        owner_pid: u32,
    ) -> Result<PodSandbox, RuntimeError> {
        let (pods_dir, config, network) =
            (self.pods_dir.clone(), config.clone(), self.network.clone());
        crate::blocking("creating the pod sandbox", move || {
            create_sandbox_now(&pods_dir, &config, network.as_deref(), owner_pid)
        })
        .await
    }

    /// Attaches `disk` for container `name` of pod `uid`, owned by `owner_pid`.
    pub async fn attach_cache(
        &self,
        disk: &Path,
        uid: &str,
        name: &str,
        owner_pid: u32,
    ) -> Result<(AttachedCache, Duration), RuntimeError> {
        names::check_component("pod uid", uid)?;
        names::check_component("container name", name)?;
        let (attacher, disk) = (self.attacher.clone(), disk.to_path_buf());
        let user = CacheUser::for_process(format!("pod/{uid}/{name}"), owner_pid);
        crate::blocking("attaching the cache disk", move || {
            let t = Instant::now();
            let cache = attacher.attach(&disk, user)?;
            Ok((cache, t.elapsed()))
        })
        .await
    }

    /// Releases a cache disk attached by [`Runtime::attach_cache`] for a container that was
    /// not started after all.
    pub async fn release_cache(&self, cache: &AttachedCache) -> Result<(), RuntimeError> {
        let (attacher, id, user) = (self.attacher.clone(), cache.id.clone(), cache.user.clone());
        crate::blocking("releasing the cache disk", move || {
            attacher.release(&id, &user)?;
            Ok(())
        })
        .await
    }

    /// Assembles the rootfs, writes the OCI spec and starts the process with runc.
    pub async fn start(&self, req: StartRequest<'_>) -> Result<Container, RuntimeError> {
        // The span is attached to the future (not entered across awaits), so concurrent starts
        // on one thread never log under each other's pod.
        let span = info_span!("container_start", pod = %req.sandbox.uid, container = %req.container.name, image = %req.image.reference);
        self.start_in_span(req).instrument(span).await
    }

    async fn start_in_span(&self, req: StartRequest<'_>) -> Result<Container, RuntimeError> {
        let name = req.container.name.clone();
        names::check_component("pod uid", &req.sandbox.uid)?;
        names::check_component("container name", &name)?;
        let runc_id = format!("{}-{}", req.sandbox.uid, name);
        let dir = req.sandbox.dir.join(&name);
        let rootfs = dir.join("rootfs");
        let mut timings = req.timings;
        timings.layers_from_cache = req.image.layers.iter().filter(|l| l.from_cache).count();
        timings.layers_from_store = req.image.layers.len() - timings.layers_from_cache;
        let log_path = match &req.io {
            ContainerIo::LogAt(path) => path.clone(),
            _ => dir.join("container.log"),
        };
        let container = Container {
            id: runc_id.clone(),
            pod_uid: req.sandbox.uid.clone(),
            name: name.clone(),
            log_path,
            dir: dir.clone(),
            rootfs: rootfs.clone(),
            pid: 0,
            timings: StartTimings::default(),
            cache: req.cache.as_ref().map(|c| (c.id.clone(), c.user.clone())),
            log: None,
            runtime: self.clone(),
        };
        let record = ContainerRecord {
            runc_id: runc_id.clone(),
            owner: CacheUser::for_process(runc_id.clone(), req.owner_pid),
            rootfs: rootfs.clone(),
            cache: container.cache.clone(),
        };

        let mut c = container;
        let bundle = Bundle {
            dir,
            rootfs,
            record,
            sandbox: req.sandbox.clone(),
            container: req.container,
            image: req.image,
            seccomp_dir: self.seccomp_dir.clone(),
        };
        match self.start_inner(bundle, req.io, &mut c, &mut timings).await {
            Ok(()) => {
                timings.total = req.started.elapsed();
                debug!(
                    pid = c.pid,
                    total_ms = timings.total.as_millis() as u64,
                    "container started"
                );
                c.timings = timings;
                Ok(c)
            }
            Err(e) => {
                if let Err(cleanup) = c.remove().await {
                    warn!(error = %cleanup, "cleaning up a failed start");
                }
                Err(e)
            }
        }
    }

    async fn start_inner(
        &self,
        bundle: Bundle,
        io: ContainerIo,
        c: &mut Container,
        timings: &mut StartTimings,
    ) -> Result<(), RuntimeError> {
        let t = Instant::now();
        crate::blocking("preparing the container's bundle", move || bundle.prepare()).await?;
        timings.rootfs_assembled = t.elapsed();

        let t = Instant::now();
        let (stdout, stderr) = match io {
            ContainerIo::Inherit => (Stdio::inherit(), Stdio::inherit()),
            ContainerIo::Log | ContainerIo::LogAt(_) => {
                let (writer, pipes) =
                    LogWriter::start(&c.log_path, self.log_limits, &c.name).await?;
                c.log = Some(writer);
                (Stdio::from(pipes.stdout), Stdio::from(pipes.stderr))
            }
        };
        let runc_log = c.dir.join("runc.log");
        c.pid = self
            .runc
            .run_detached(&c.id, &c.dir, &runc_log, stdout, stderr)
            .await?;
        timings.runtime_started = t.elapsed();
        debug!(pid = c.pid, "runc started the container");
        Ok(())
    }
}

/// Creates the pod dir with its owner recorded, then the sandbox. Blocking.
fn create_sandbox_now(
    pods_dir: &Path,
    config: &SandboxConfig,
    network: Option<&CniNetwork>,
    owner_pid: u32,
) -> Result<PodSandbox, RuntimeError> {
    names::check_component("pod uid", &config.uid)?;
    let uid = config.uid.as_str();
    let owner = CacheUser::for_process(format!("pod/{uid}"), owner_pid);
    let dir = pods_dir.join(uid);
    if dir.exists() {
        write_json(&dir.join(POD_OWNER_FILE), &owner)?;
    } else {
        // The pod dir appears with its owner already recorded, so a concurrent recovery in
        // another imc process never mistakes it for an abandoned pod.
        let tmp = pods_dir.join(format!("{NEW_POD_PREFIX}{uid}"));
        fs::create_dir_all(&tmp).map_err(RuntimeError::io("creating", &tmp))?;
        write_json(&tmp.join(POD_OWNER_FILE), &owner)?;
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            if !dir.exists() {
                return Err(RuntimeError::io("creating", &dir)(e));
            }
        }
    }
    PodSandbox::create(pods_dir, config, network)
}

/// What the blocking part of a start works on: everything to assemble the rootfs and write
/// the OCI bundle.
struct Bundle {
    dir: PathBuf,
    rootfs: PathBuf,
    record: ContainerRecord,
    sandbox: PodSandbox,
    container: ContainerSpec,
    image: PreparedImage,
    seccomp_dir: PathBuf,
}

impl Bundle {
    /// Mounts the overlay rootfs, resolves the user and writes `config.json`. Blocking: it
    /// mounts and reads files of the image.
    fn prepare(self) -> Result<(), RuntimeError> {
        let name = &self.container.name;
        let upper = self.dir.join("upper");
        let work = self.dir.join("work");
        for d in [&upper, &work, &self.rootfs] {
            fs::create_dir_all(d).map_err(RuntimeError::io("creating", d))?;
        }
        // Recorded before anything is mounted or started, so a crash from here on is recoverable.
        write_json(&self.dir.join(RECORD_FILE), &self.record)?;
        let termination_log = match &self.container.termination_message_path {
            Some(path) => {
                check_container_path(name, "terminationMessagePath", path)?;
                let host = self.dir.join(TERMINATION_LOG);
                create_termination_log(&host)?;
                Some((path.clone(), host))
            }
            None => None,
        };
        let lowers: Vec<PathBuf> = self.image.layers.iter().map(|l| l.dir.clone()).collect();
        rootfs::mount_overlay(name, &lowers, &upper, &work, &self.rootfs)?;
        let config = ImageConfig::from_oci(&self.image.reference, &self.image.config)?;
        let security = &self.container.security;
        let user = resolve_user(&self.rootfs, config.user.as_deref(), security, name)?;
        if let Some(reason) = verify_non_root(security, config.user.as_deref(), user.uid) {
            return Err(RuntimeError::NonRoot {
                container: name.clone(),
                reason,
            });
        }
        let seccomp = seccomp_filter(name, security, &self.seccomp_dir)?;
        let oci = generate_spec(SpecInput {
            image_ref: &self.image.reference,
            image: &config,
            container: &self.container,
            user,
            rootfs: &self.rootfs,
            namespaces: &self.sandbox.namespaces,
            hostname: &self.sandbox.hostname,
            cgroups_path: cgroups::container_path(&self.sandbox.uid, name),
            seccomp,
            termination_log,
        })?;
        let bundle_config = self.dir.join("config.json");
        oci.save(&bundle_config).map_err(|e| RuntimeError::Spec {
            container: name.clone(),
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// The seccomp filter a container runs under: none when privileged or `Unconfined`, the
/// runtime's default profile for its capabilities, or a `Localhost` profile from `DIR/seccomp`.
fn seccomp_filter(
    container: &str,
    security: &SecuritySpec,
    seccomp_dir: &Path,
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>, RuntimeError> {
    if security.privileged {
        return Ok(None);
    }
    let caps = capabilities(container, security)?;
    security
        .seccomp
        .resolve(seccomp_dir, &caps)
        .map_err(|e| RuntimeError::Security {
            container: container.to_owned(),
            reason: format!("seccomp profile: {e}"),
        })
}

/// A started container.
#[derive(Debug)]
pub struct Container {
    /// runc container id (`<pod uid>-<name>`).
    pub id: String,
    /// Uid of its pod.
    pub pod_uid: String,
    /// Container name in the pod.
    pub name: String,
    /// `DIR/pods/<uid>/<name>`: bundle, upper/work dirs, logs.
    pub dir: PathBuf,
    /// The overlay mount the process runs in.
    pub rootfs: PathBuf,
    /// stdout/stderr with [`ContainerIo::Log`].
    pub log_path: PathBuf,
    /// Host pid of the container's init process.
    pub pid: i32,
    /// How long each step of the start took.
    pub timings: StartTimings,
    cache: Option<(String, String)>,
    /// The thread writing its log ([`ContainerIo::Log`]).
    log: Option<LogWriter>,
    runtime: Runtime,
}

impl Container {
    /// Waits for the container's process to exit, then (briefly) for its last output to reach
    /// the log.
    pub async fn wait(&self) -> Result<ExitInfo, RuntimeError> {
        let (pid, uid, name) = (self.pid, self.pod_uid.clone(), self.name.clone());
        let (status, oom_kills) = crate::blocking("waiting for the container", move || {
            let status =
                wait_pid(pid).map_err(RuntimeError::io("waiting for", format!("/proc/{pid}")))?;
            // Read before `runc delete` removes the cgroup.
            Ok((status, cgroups::oom_kills(&uid, &name)))
        })
        .await?;
        let finished_at = jiff::Timestamp::now().to_string();
        let mut info = match status {
            None => ExitInfo {
                code: -1,
                signal: None,
                oom_killed: false,
                finished_at,
            },
            Some(status) => exit_info(status, finished_at),
        };
        info.oom_killed = oom_kills > 0;
        if let Some(log) = &self.log
            && !log.finished(LOG_DRAIN_BOUND).await
        {
            warn!(container = %self.id, "the container's output is still open after its exit");
        }
        debug!(container = %self.id, code = info.code, "container exited");
        Ok(info)
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the container's init process.
    pub async fn kill(&self, signal: &str) -> Result<(), RuntimeError> {
        self.runtime.runc.kill(&self.id, signal).await
    }

    /// SIGKILL straight to the container's init process (its host pid, `kill(2)`), for when
    /// it outlived a `runc kill KILL`: its PID namespace, and so everything in it, dies with
    /// it. Only while [`Container::wait`] has not returned (the pid is not reaped, so it
    /// cannot have been reused).
    pub fn kill_init(&self) -> Result<(), RuntimeError> {
        let pid = rustix::process::Pid::from_raw(self.pid).ok_or_else(|| RuntimeError::Runc {
            action: "kill",
            container: self.id.clone(),
            message: format!("no init process (pid {})", self.pid),
        })?;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).map_err(|e| {
            RuntimeError::Runc {
                action: "kill",
                container: self.id.clone(),
                message: format!("kill({}, SIGKILL): {e}", self.pid),
            }
        })
    }

    /// What runs commands in this container ([`ContainerExec::exec`]); usable from other
    /// tasks while this one waits for the container's exit.
    pub fn exec_handle(&self) -> ContainerExec {
        ContainerExec {
            runc: self.runtime.runc.clone(),
            id: self.id.clone(),
            dir: self.dir.clone(),
        }
    }

    /// The termination message the process wrote to its `terminationMessagePath`: the last
    /// [`MAX_TERMINATION_MESSAGE`] bytes of that file, `None` when the container has none or
    /// it is empty. Read from the host's side of the bind mount, never following a symlink;
    /// anything but a regular file is refused.
    pub async fn termination_message(&self) -> Result<Option<String>, RuntimeError> {
        let path = self.dir.join(TERMINATION_LOG);
        crate::blocking("reading the termination message", move || {
            read_tail(&path, MAX_TERMINATION_MESSAGE)
                .map(|bytes| {
                    bytes
                        .filter(|b| !b.is_empty())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                })
                .map_err(RuntimeError::io("reading", &path))
        })
        .await
    }

    /// runc's view of the container; `None` once deleted.
    pub async fn status(&self) -> Result<Option<ContainerStatus>, RuntimeError> {
        Ok(self.runtime.runc.state(&self.id).await?.map(|(s, _)| s))
    }

    /// Deletes the runc container (killing what still runs), unmounts the rootfs, releases the
    /// cache disk and removes the container dir.
    pub async fn remove(self) -> Result<(), RuntimeError> {
        remove_container(
            &self.runtime,
            &self.id,
            &self.dir,
            &self.rootfs,
            self.cache.as_ref(),
        )
        .await
    }
}

pub(crate) async fn remove_container(
    runtime: &Runtime,
    runc_id: &str,
    dir: &Path,
    rootfs: &Path,
    cache: Option<&(String, String)>,
) -> Result<(), RuntimeError> {
    runtime.runc.delete(runc_id).await?;
    let (attacher, dir, rootfs) = (
        runtime.attacher.clone(),
        dir.to_path_buf(),
        rootfs.to_path_buf(),
    );
    let cache = cache.cloned();
    crate::blocking("removing the container", move || {
        rootfs::unmount(&rootfs)?;
        if let Some((id, user)) = &cache {
            attacher.release(id, user)?;
        }
        if dir.exists() {
            remove_tree(&dir)?;
        }
        Ok(())
    })
    .await
}

/// Blocks until `pid` (our child, as subreaper) exits; returns its wait status, or `None` when
/// it is not our child (ECHILD: another process started it) and its status cannot be known; then
/// it polls until the process is gone.
fn wait_pid(pid: i32) -> std::io::Result<Option<i32>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(Some(status));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => {
                while Path::new(&format!("/proc/{pid}")).exists() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(None);
            }
            _ => return Err(err),
        }
    }
}

/// Exit code (128 + signal when killed) of a wait status.
fn exit_info(status: i32, finished_at: String) -> ExitInfo {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        ExitInfo {
            code: 128 + sig,
            signal: Some(sig),
            oom_killed: false,
            finished_at,
        }
    } else {
        ExitInfo {
            code: libc::WEXITSTATUS(status),
            signal: None,
            oom_killed: false,
            finished_at,
        }
    }
}

/// Refuses a path in the container that is not absolute, holds a `..` component or a NUL.
fn check_container_path(container: &str, what: &str, path: &str) -> Result<(), RuntimeError> {
    let reason = if !path.starts_with('/') {
        "is not absolute"
    } else if path.split('/').any(|c| c == "..") {
        "contains '..'"
    } else if path.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(RuntimeError::Spec {
        container: container.to_owned(),
        reason: format!("{what} {path:?} {reason}"),
    })
}

/// Creates the empty host file bind-mounted as the termination message file, writable by any
/// user the container runs as (as the kubelet makes it). Blocking.
fn create_termination_log(path: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(RuntimeError::io("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .map_err(RuntimeError::io("setting the mode of", path))
}

/// The last `max` bytes of the regular file at `path` (`None` when it does not exist); opened
/// without following a symlink and without blocking on a FIFO. Blocking.
pub(crate) fn read_tail(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let start = meta.len().saturating_sub(max as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(max.min(meta.len() as usize));
    file.take(max as u64).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| RuntimeError::io("encoding", path)(std::io::Error::other(e)))?;
    fs::write(&tmp, bytes).map_err(RuntimeError::io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(RuntimeError::io("renaming into place", path))
}

/// Removes a directory tree; one already gone (e.g. removed by a concurrent recovery) is fine.
/// Symlinks are never followed and mounts inside it never entered ([`crate::tree`]).
pub(crate) fn remove_tree(dir: &Path) -> Result<(), RuntimeError> {
    crate::tree::remove_tree(dir).map_err(RuntimeError::io("removing", dir))
}
