//! One container of a pod through its instances (the kubelet's `kuberuntime_container.go` and
//! the restart part of `kuberuntime_manager.go`): start, `postStart` hook, running with its
//! probes, stop (`preStop` hook within the grace period, SIGTERM, SIGKILL), termination
//! message, and restart as its role and the pod's `restartPolicy` say, after the crash-loop
//! back-off. An earlier run of the node (before `imc server` restarted) is continued from the
//! pod's status in the API: restart count, last state, and the log of the instance it left
//! (which becomes the previous log).

use std::sync::Arc;
use std::time::Duration;

use imc_runtime::Container as RuntimeContainer;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::container_spec::not_run;
use super::lifecycle::{self, POST_START_FAILED, PRE_STOP_FAILED};
use super::pod::{PodRun, WantedImage};
use super::prober::action::Hook;
use super::prober::worker::{self, ProbeSet, ProbeUpdate, Probes};
use super::prober::{ProbeType, Target};
use super::restart::{Backoff, RestartPolicy, go_duration};
use super::status::{ContainerView, Observed, PodView};
use super::termination::{self, MessagePolicy};
use super::{NodeError, eviction};

/// First wait before trying again to start a container that could not be started (image
/// pull, runtime error); doubles per attempt up to [`MAX_START_RETRY`].
const START_RETRY: Duration = Duration::from_secs(1);
const MAX_START_RETRY: Duration = Duration::from_secs(60);

/// The least time between SIGTERM and SIGKILL after a preStop hook used up the grace period
/// (the kubelet's `minimumGracePeriodInSeconds`).
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// How long a container may take to exit after SIGKILL before its init process is killed
/// again, directly.
const KILL_RETRY: Duration = Duration::from_secs(10);

/// Which of the pod's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Slot {
    /// `spec.initContainers[i]`.
    Init(usize),
    /// `spec.containers[i]`.
    Main(usize),
}

/// What a container is to its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// A regular container.
    Main,
    /// An init container: runs to completion before the next one starts.
    Init,
    /// An init container with `restartPolicy: Always`: started before the next init
    /// container, runs (and is restarted) alongside the regular containers, stopped after them.
    Sidecar,
}

impl Role {
    /// The role of container `c` in `slot`.
    pub(super) fn of(slot: Slot, c: &Container) -> Self {
        match slot {
            Slot::Main(_) => Role::Main,
            Slot::Init(_) if c.restart_policy.as_deref() == Some("Always") => Role::Sidecar,
            Slot::Init(_) => Role::Init,
        }
    }
}

/// How a container's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LoopEnd {
    /// The pod is being deleted (or the node stops).
    Stopped,
    /// An init container completed.
    Completed,
    /// An init container failed for good (`restartPolicy: Never`).
    Failed,
    /// The container will not run again; it was kept until the pod's deletion.
    Done,
}

type Exit = Result<imc_runtime::ExitInfo, imc_runtime::RuntimeError>;

/// Why a running instance's wait ended.
enum Ended {
    /// Its process exited by itself.
    Exited(Exit),
    /// The pod is being deleted (or the node stops): it was stopped.
    Stopped(Exit),
    /// Its image changed in the pod spec: it was stopped to be started with the new one.
    Changed(Exit),
    /// It used more local storage than its limit: the pod is evicted (this message).
    Evicted(Exit, String),
    /// The node killed it: a failed startup or liveness probe, or a failed postStart hook
    /// (whose message is kept).
    Killed(Exit, Option<String>),
    /// A sidecar whose pod's regular containers have all ended for good.
    NoLongerNeeded(Exit),
}

/// What an earlier run of the node left of a container, read from the pod's status in the API
/// when its worker starts (the API's status is this node's record: the runtime's state of
/// that run is gone, removed at shutdown or by crash recovery).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Earlier {
    pub restart_count: i32,
    /// The last state to show until the next instance ends.
    pub last_state: Option<Observed>,
    /// The instance that ended, to be counted as restarted when the next one starts (its log
    /// becomes the previous log).
    pub previous: Option<Observed>,
    /// The container ended for good (its pod's restart policy): it is not run again.
    pub done: Option<Observed>,
}

impl Earlier {
    /// What the status of container `name` in `pod` (written by an earlier run of the node)
    /// says, for a container of `role` under `policy`.
    pub(super) fn of(pod: &Pod, name: &str, role: Role, policy: RestartPolicy) -> Self {
        let status = pod.status.as_ref().and_then(|s| {
            let list = match role {
                Role::Main => s.container_statuses.as_ref(),
                Role::Init | Role::Sidecar => s.init_container_statuses.as_ref(),
            };
            list?.iter().find(|c| c.name == name)
        });
        let Some(status) = status else {
            return Earlier::default();
        };
        let state = status.state.as_ref().and_then(Observed::from_api);
        let last = status.last_state.as_ref().and_then(Observed::from_api);
        let mut earlier = Earlier {
            restart_count: status.restart_count.max(0),
            last_state: last.clone(),
            ..Default::default()
        };
        match state {
            Some(Observed::Running { started_at }) => {
                // It ran when the node stopped; the node does not know how it ended.
                earlier.previous = Some(Observed::Terminated {
                    exit_code: 255,
                    signal: None,
                    reason: Some("Unknown".into()),
                    message: Some("the node stopped while the container ran".into()),
                    started_at,
                    finished_at: Timestamp::now(),
                });
            }
            Some(t @ Observed::Terminated { exit_code, .. }) => {
                let again = match role {
                    Role::Main => policy.restarts_after_exit(exit_code),
                    Role::Sidecar => true,
                    // Init containers run again in the pod's new sandbox (as the kubelet's).
                    Role::Init => true,
                };
                if again {
                    earlier.previous = Some(t);
                } else {
                    earlier.done = Some(t);
                }
            }
            // Backing off after a crash: the instance in its last state is the one to count.
            Some(Observed::Waiting { .. }) => earlier.previous = last,
            None => {}
        }
        earlier
    }
}

/// Runs the container in `slot` of the pod until the pod is deleted (or, for an init
/// container, until it completed or failed for good).
pub(super) async fn run(
    run: Arc<PodRun>,
    slot: Slot,
    stop: watch::Receiver<Option<i64>>,
) -> LoopEnd {
    let Some(k8s) = run.container_spec(slot).cloned() else {
        return LoopEnd::Done;
    };
    let span = info_span!("container", container = %k8s.name);
    run_container(run, slot, k8s, stop).instrument(span).await
}

async fn run_container(
    run: Arc<PodRun>,
    slot: Slot,
    mut k8s: Container,
    mut stop: watch::Receiver<Option<i64>>,
) -> LoopEnd {
    let role = Role::of(slot, &k8s);
    let name = k8s.name.clone();
    let mut updates = run.updates.clone();
    // Regular init containers have neither probes nor hooks (the API refuses them).
    let (probes, post_start, pre_stop) = if role == Role::Init {
        (Probes::default(), None, None)
    } else {
        let hook = |f: fn(
            &k8s_openapi::api::core::v1::Lifecycle,
        ) -> Option<&k8s_openapi::api::core::v1::LifecycleHandler>| {
            k8s.lifecycle
                .as_ref()
                .and_then(f)
                .map(|h| Hook::of(h, &k8s))
        };
        (
            Probes::of(&k8s),
            hook(|l| l.post_start.as_ref()),
            hook(|l| l.pre_stop.as_ref()),
        )
    };
    let message_policy = MessagePolicy::parse(k8s.termination_message_policy.as_deref());
    let log_path = run.log_path(&name);

    let earlier = Earlier::of(&run.pod, &name, role, run.restart_policy);
    if earlier != Earlier::default() {
        run.update(slot, |c| {
            c.restart_count = earlier.restart_count;
            c.last_state = earlier.last_state.clone();
            c.ever_started = earlier.previous.is_some() || earlier.done.is_some();
        });
    }
    if let Some(done) = earlier.done {
        // It ended for good before the node restarted: its status and log stay as they were.
        run.update(slot, |c| {
            c.state = done;
            c.will_restart = false;
        });
        let _ = stop.wait_for(Option::is_some).await;
        return LoopEnd::Done;
    }
    let mut previous = earlier.previous;

    let mut backoff = Backoff::default();
    let mut retry = START_RETRY;
    let mut first = true;
    loop {
        if stop.borrow().is_some() {
            return LoopEnd::Stopped;
        }
        if *run.evicted.borrow() {
            // An evicted pod starts nothing more; it waits to be deleted.
            let _ = stop.wait_for(Option::is_some).await;
            return LoopEnd::Stopped;
        }
        // The latest spec of this container (its image may have changed).
        if let Some(image) = image_of(&updates.borrow_and_update(), slot) {
            k8s.image = Some(image);
        }
        // Subscribed before the objects are read, so no change in between is missed.
        let mut env_changes = run.node.objects.subscribe();
        let planned = run.plan(&k8s).await.and_then(|p| {
            WantedImage::of(&k8s)
                .map(|w| (p, w))
                .map_err(|e| super::container_spec::ConfigError(e.to_string()))
        });
        let (planned, wanted) = match planned {
            Ok(p) => p,
            Err(e) => {
                let reason = if e.0.contains("invalid image reference") {
                    "InvalidImageName"
                } else {
                    "CreateContainerConfigError"
                };
                run.node
                    .events
                    .warning(&run.reference, "Failed", format!("Error: {e}"));
                run.update(slot, |c| {
                    c.state = Observed::Waiting {
                        reason: reason.into(),
                        message: Some(e.0.clone()),
                    }
                });
                // Nothing will change this but a new spec (an image update), a change of what
                // the environment reads (a ConfigMap or Secret appearing), or deletion.
                let updated = tokio::select! {
                    _ = stop.wait_for(Option::is_some) => return LoopEnd::Stopped,
                    changed = updates.changed() => changed.is_ok(),
                    _ = run.env_sources_changed(&k8s, &mut env_changes) => true,
                };
                if !updated {
                    let _ = stop.wait_for(Option::is_some).await;
                    return LoopEnd::Stopped;
                }
                continue;
            }
        };
        let mut spec = planned.spec;
        let ephemeral = planned.ephemeral_limit.clone();
        match run.mounts_of(&k8s).await {
            Ok(m) => spec.mounts = m,
            Err(e) => {
                // Retried, as the kubelet's volume manager retries (a hostPath may appear).
                run.node
                    .events
                    .warning(&run.reference, "FailedMount", e.0.clone());
                run.update(slot, |c| {
                    c.state = Observed::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(e.0.clone()),
                    }
                });
                if sleep_or_stop(&mut stop, retry).await {
                    return LoopEnd::Stopped;
                }
                retry = (retry * 2).min(MAX_START_RETRY);
                continue;
            }
        }
        if first {
            for skipped in &planned.skipped_env {
                run.node.events.warning(
                    &run.reference,
                    "InvalidEnvironmentVariableNames",
                    skipped.clone(),
                );
            }
        }
        let skipped = not_run(&k8s, role == Role::Init);
        if first && !skipped.is_empty() {
            run.node.events.warning(
                &run.reference,
                "Unsupported",
                format!(
                    "container {}: {} not run by this node",
                    spec.name,
                    skipped.join(", ")
                ),
            );
        }
        run.update(slot, |c| c.image = wanted.name.clone());
        // The instance that ended is now counted as restarted, and its log is the previous one.
        if let Some(ended) = previous.take() {
            if let Err(e) = run.keep_previous_log(&name).await {
                debug!(error = %e, "keeping the previous instance's log");
            }
            run.update(slot, |c| {
                c.restart_count += 1;
                c.last_state = Some(ended);
            });
        } else if let Err(e) = run.prepare_log_dir(&name).await {
            warn!(error = %e, "creating the container's log directory");
        }
        let container = match run
            .start_instance(slot, &spec, &wanted, first, &mut stop)
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return LoopEnd::Stopped,
            Err(e) => {
                let config = matches!(
                    &e,
                    NodeError::Runtime(
                        imc_runtime::RuntimeError::NonRoot { .. }
                            | imc_runtime::RuntimeError::Security { .. }
                    )
                );
                let (reason, note) = match &e {
                    NodeError::Pull { .. } | NodeError::Registry { .. } => {
                        ("ErrImagePull", e.to_string())
                    }
                    NodeError::ImageNeverPull { .. } => ("ErrImageNeverPull", e.to_string()),
                    _ if config => ("CreateContainerConfigError", format!("Error: {e}")),
                    _ => ("CreateContainerError", format!("Error: {e}")),
                };
                run.node
                    .events
                    .warning(&run.reference, "Failed", note.clone());
                let retried = match role {
                    Role::Sidecar => true,
                    _ => run.restart_policy != RestartPolicy::Never,
                };
                if matches!(e, NodeError::Runtime(_)) && !config && !retried {
                    // The process could not start and will not be retried: it ended, as
                    // kubelet reports it, with exit code 128.
                    let now = Timestamp::now();
                    run.update(slot, |c| {
                        c.state = Observed::Terminated {
                            exit_code: 128,
                            signal: None,
                            reason: Some("StartError".into()),
                            message: Some(note.clone()),
                            started_at: now,
                            finished_at: now,
                        };
                        c.will_restart = false;
                    });
                    if role == Role::Init {
                        return LoopEnd::Failed;
                    }
                    let _ = stop.wait_for(Option::is_some).await;
                    return LoopEnd::Done;
                }
                run.update(slot, |c| {
                    c.state = Observed::Waiting {
                        reason: reason.into(),
                        message: Some(note),
                    }
                });
                if sleep_or_stop(&mut stop, retry).await {
                    return LoopEnd::Stopped;
                }
                retry = (retry * 2).min(MAX_START_RETRY);
                continue;
            }
        };
        first = false;
        retry = START_RETRY;
        let process_started = Timestamp::now();
        let container_id = format!("runc://{}", container.id);
        run.update(slot, |c| c.container_id = Some(container_id));
        let target = Target {
            exec: Some(container.exec_handle()),
            sandbox: run.sandbox.clone(),
            pod_ip: run.pod_ip.clone(),
        };
        run.node.set_running(&run.uid, &name, Some(target.clone()));
        let stopper = Stopper {
            run: &run,
            container: &container,
            target: &target,
            pre_stop: pre_stop.as_ref(),
            name: &name,
        };
        let running_image = wanted.name.clone();
        let ended = {
            // One wait for the process (its exit status can be collected only once).
            let wait = container.wait();
            tokio::pin!(wait);
            let mut ended = None;
            if let Some(hook) = &post_start {
                let result = tokio::select! {
                    r = lifecycle::run(hook, &target, &name, &run.pod_ref) => Some(r),
                    grace = stop_requested(&mut stop) => {
                        stopper.killing(format!("Stopping container {name}"));
                        ended = Some(Ended::Stopped(stopper.stop(wait.as_mut(), &mut stop, grace).await));
                        None
                    }
                };
                if let Some(Err(message)) = result {
                    warn!(%message, "postStart hook failed");
                    run.node.events.warning(
                        &run.reference,
                        "FailedPostStartHook",
                        POST_START_FAILED.into(),
                    );
                    stopper.killing("FailedPostStartHook".into());
                    let grace = grace_of(&updates.borrow());
                    let exit = stopper.stop(wait.as_mut(), &mut stop, grace).await;
                    ended = Some(Ended::Killed(exit, Some(message)));
                }
            }
            match ended {
                Some(e) => e,
                None => {
                    run.update(slot, |c| {
                        c.state = Observed::Running {
                            started_at: process_started,
                        };
                        c.ever_started = true;
                        c.started = probes.startup.is_none();
                        c.ready = c.started && probes.readiness.is_none();
                    });
                    let report = {
                        let (events, reference) = (run.node.events.clone(), run.reference.clone());
                        Arc::new(move |reason: &'static str, message: String| {
                            events.warning(&reference, reason, message)
                        })
                    };
                    let mut probe_set = (probes.startup.is_some()
                        || probes.liveness.is_some()
                        || probes.readiness.is_some())
                    .then(|| worker::start(&probes, target.clone(), Instant::now(), report));
                    // The container dir holds its writable layer (the rootfs mount in it is
                    // another file system, not counted twice); its logs are counted too.
                    let over_limit = eviction::exceeded(
                        ephemeral.as_ref().map(|l| l.0),
                        vec![container.dir.clone(), run.log_dir(&name)],
                    );
                    tokio::pin!(over_limit);
                    loop {
                        tokio::select! {
                            exit = &mut wait => break Ended::Exited(exit),
                            grace = stop_requested(&mut stop) => {
                                if role == Role::Sidecar {
                                    // Sidecars stop after the regular containers.
                                    let bound = Duration::from_secs(grace.max(0) as u64);
                                    let _ = tokio::time::timeout(bound, run.wait_until(main_stopped)).await;
                                }
                                if !run.node.is_shutting_down() {
                                    stopper.killing(format!("Stopping container {name}"));
                                }
                                break Ended::Stopped(stopper.stop(wait.as_mut(), &mut stop, grace).await);
                            }
                            _ = image_changed(&mut updates, slot, &running_image), if role != Role::Init => {
                                stopper.killing(format!("Container {name} definition changed, will be restarted"));
                                let grace = grace_of(&updates.borrow());
                                break Ended::Changed(stopper.stop(wait.as_mut(), &mut stop, grace).await);
                            }
                            used = &mut over_limit => {
                                let limit = ephemeral.as_ref().map(|l| l.1.clone()).unwrap_or_default();
                                let message = eviction::message(&name, &limit);
                                warn!(used, limit = %limit, "container over its ephemeral storage limit: evicting the pod");
                                run.node.events.warning(&run.reference, "Evicted", message.clone());
                                break Ended::Evicted(stopper.stop(wait.as_mut(), &mut stop, 0).await, message);
                            }
                            // Another container of the pod got it evicted: this one stops too.
                            _ = async { run.evicted.subscribe().wait_for(|e| *e).await.map(|_| ()) } => {
                                break Ended::Evicted(stopper.stop(wait.as_mut(), &mut stop, 0).await, String::new());
                            }
                            _ = run.wait_until(main_done), if role == Role::Sidecar => {
                                stopper.killing(format!("Stopping container {name}"));
                                let grace = grace_of(&updates.borrow());
                                break Ended::NoLongerNeeded(stopper.stop(wait.as_mut(), &mut stop, grace).await);
                            }
                            update = next_update(&mut probe_set) => match update {
                                ProbeUpdate::Started => run.update(slot, |c| {
                                    c.started = true;
                                    c.ready = probes.readiness.is_none();
                                }),
                                ProbeUpdate::Ready(ready) => run.update(slot, |c| c.ready = ready && c.started),
                                ProbeUpdate::Failed(kind) => {
                                    let restarts = match role {
                                        Role::Sidecar => true,
                                        _ => run.restart_policy.restarts_after_kill(),
                                    };
                                    let which = if kind == ProbeType::Startup { "startup" } else { "liveness" };
                                    let mut message = format!("Container {name} failed {which} probe");
                                    if restarts {
                                        message.push_str(", will be restarted");
                                    }
                                    stopper.killing(message);
                                    let grace = probes
                                        .get(kind)
                                        .and_then(|p| p.termination_grace_seconds)
                                        .unwrap_or_else(|| grace_of(&updates.borrow()));
                                    break Ended::Killed(stopper.stop(wait.as_mut(), &mut stop, grace).await, None);
                                }
                            },
                        }
                    }
                }
            }
        };
        run.node.set_running(&run.uid, &name, None);
        let (exit, hook_message) = match &ended {
            Ended::Exited(e)
            | Ended::Stopped(e)
            | Ended::Changed(e)
            | Ended::Evicted(e, _)
            | Ended::NoLongerNeeded(e) => (e, None),
            Ended::Killed(e, why) => (e, why.clone()),
        };
        let (code, signal, oom) = match exit {
            Ok(info) => (info.code, info.signal, info.oom_killed),
            Err(e) => {
                warn!(error = %e, "waiting for the container");
                (-1, None, false)
            }
        };
        if let Ended::Evicted(_, why) = &ended
            && !why.is_empty()
        {
            run.evict(why);
        }
        let will_restart = match (role, &ended) {
            (_, Ended::Stopped(_) | Ended::Evicted(..) | Ended::NoLongerNeeded(_)) => false,
            (Role::Sidecar, _) => true,
            (Role::Main, Ended::Changed(_)) => true,
            (Role::Main, Ended::Exited(_)) => run.restart_policy.restarts_after_exit(code),
            (Role::Main, Ended::Killed(..)) => run.restart_policy.restarts_after_kill(),
            (Role::Init, _) => code != 0 && run.restart_policy != RestartPolicy::Never,
        };
        let reason = if oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let written =
            termination::message(&container, message_policy, code, log_path.clone()).await;
        let message = match (hook_message, written) {
            (Some(h), Some(w)) => Some(format!("{h}: {w}")),
            (h, w) => h.or(w),
        };
        let terminated = Observed::Terminated {
            exit_code: code,
            signal,
            reason: Some(reason.into()),
            message,
            started_at: process_started,
            finished_at: Timestamp::now(),
        };
        run.update(slot, |c| {
            c.state = terminated.clone();
            c.will_restart = will_restart;
            c.started = false;
            c.ready = false;
        });
        let stopped = matches!(ended, Ended::Stopped(_));
        if !will_restart {
            let end = match role {
                _ if stopped => LoopEnd::Stopped,
                Role::Init if code == 0 => LoopEnd::Completed,
                Role::Init => LoopEnd::Failed,
                _ => LoopEnd::Done,
            };
            if end == LoopEnd::Done {
                // Kept (and its log served) until the pod is deleted.
                let _ = stop.wait_for(Option::is_some).await;
            }
            if let Err(e) = container.remove().await {
                warn!(error = %e, "removing the container");
            }
            return end;
        }
        if let Err(e) = container.remove().await {
            warn!(error = %e, "removing the container before its restart");
        }
        previous = Some(terminated.clone());
        // A new image starts at once; anything else waits out the crash-loop back-off.
        if !matches!(ended, Ended::Changed(_)) {
            let finished = Instant::now();
            if let Some(wait) = backoff.remaining(finished, finished) {
                let message = format!(
                    "back-off {} restarting failed container={name} pod={}",
                    go_duration(backoff.current()),
                    run.pod_ref
                );
                run.update(slot, |c| {
                    c.state = Observed::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(message),
                    };
                    c.last_state = Some(terminated.clone());
                });
                run.node.events.warning(
                    &run.reference,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}",
                        run.pod_ref
                    ),
                );
                if sleep_or_stop(&mut stop, wait).await {
                    return LoopEnd::Stopped;
                }
            }
            backoff.restarted(Instant::now());
        }
    }
}

/// Stops a running container instance.
struct Stopper<'a> {
    run: &'a PodRun,
    container: &'a RuntimeContainer,
    target: &'a Target,
    pre_stop: Option<&'a Hook>,
    name: &'a str,
}

impl Stopper<'_> {
    /// The `Killing` event saying why.
    fn killing(&self, message: String) {
        self.run
            .node
            .events
            .normal(&self.run.reference, "Killing", message);
    }

    /// The preStop hook (within the grace period), SIGTERM, then SIGKILL once `grace`
    /// seconds passed since the stop began, or sooner when the stop signal shortens the grace
    /// period meanwhile (a force delete, the node's shutdown). After a preStop hook the
    /// process gets at least 2 s between SIGTERM and SIGKILL, unless a force delete cut the
    /// grace period to nothing. Returns how it ended.
    async fn stop<F>(
        &self,
        mut wait: std::pin::Pin<&mut F>,
        stop: &mut watch::Receiver<Option<i64>>,
        grace: i64,
    ) -> Exit
    where
        F: std::future::Future<Output = Exit>,
    {
        let started = Instant::now();
        let seconds = |g: i64| Duration::from_secs(g.max(0) as u64);
        let mut grace = seconds(grace);
        let mut forced = grace.is_zero();
        if let Some(hook) = self.pre_stop
            && !grace.is_zero()
        {
            let hook_run = lifecycle::run(hook, self.target, self.name, &self.run.pod_ref);
            tokio::pin!(hook_run);
            loop {
                tokio::select! {
                    result = &mut hook_run => {
                        if let Err(message) = result {
                            warn!(%message, "preStop hook failed");
                            self.run.node.events.warning(
                                &self.run.reference,
                                "FailedPreStopHook",
                                PRE_STOP_FAILED.into(),
                            );
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(started + grace) => {
                        debug!("preStop hook not completed in the grace period");
                        break;
                    }
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        shorten(stop, &mut grace, &mut forced);
                    }
                }
            }
            if !forced {
                grace = grace.max(started.elapsed() + MIN_GRACE_AFTER_HOOK);
            }
        }
        if let Err(e) = self.container.kill("TERM").await {
            debug!(error = %e, "sending SIGTERM");
        }
        loop {
            tokio::select! {
                exit = &mut wait => return exit,
                _ = tokio::time::sleep_until(started + grace) => break,
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    shorten(stop, &mut grace, &mut forced);
                }
            }
        }
        if let Err(e) = self.container.kill("KILL").await {
            debug!(error = %e, "sending SIGKILL");
        }
        // runc may fail to deliver it (a command of its own that timed out under load): the
        // init process is then killed directly, so a stop never hangs.
        loop {
            tokio::select! {
                exit = &mut wait => return exit,
                _ = tokio::time::sleep(KILL_RETRY) => {
                    warn!("the container outlived SIGKILL: killing its init process directly");
                    if let Err(e) = self.container.kill_init() {
                        warn!(error = %e, "killing the container's init process");
                    }
                }
            }
        }
    }
}

/// Shortens `grace` to what the stop signal says now; `forced` once it says 0.
fn shorten(stop: &mut watch::Receiver<Option<i64>>, grace: &mut Duration, forced: &mut bool) {
    if let Some(g) = *stop.borrow_and_update() {
        *grace = (*grace).min(Duration::from_secs(g.max(0) as u64));
        *forced |= g <= 0;
    }
}

/// Resolves with the grace period once the pod is to be stopped.
async fn stop_requested(stop: &mut watch::Receiver<Option<i64>>) -> i64 {
    match stop.wait_for(Option::is_some).await {
        Ok(g) => g.unwrap_or(0),
        // The node is gone: stop at once.
        Err(_) => 0,
    }
}

/// The next update of the probes; never when there are none (left).
async fn next_update(set: &mut Option<ProbeSet>) -> ProbeUpdate {
    match set {
        Some(s) => match s.updates.recv().await {
            Some(u) => u,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Resolves once the pod spec gives container `slot` another image than `running`.
async fn image_changed(updates: &mut watch::Receiver<Pod>, slot: Slot, running: &str) {
    loop {
        if updates.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let image = image_of(&updates.borrow_and_update(), slot);
        if image.is_some_and(|i| i != running) {
            return;
        }
    }
}

/// Whether every regular container has stopped (none runs).
fn main_stopped(view: &PodView) -> bool {
    view.containers
        .iter()
        .all(|c| !matches!(c.state, Observed::Running { .. }))
}

/// Whether every regular container has ended for good (or never will start: an init
/// container failed for good).
fn main_done(view: &PodView) -> bool {
    view.init_failed || view.containers.iter().all(ContainerView::is_done)
}

/// The image of container `slot` in `pod`.
fn image_of(pod: &Pod, slot: Slot) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let c = match slot {
        Slot::Main(i) => spec.containers.get(i)?,
        Slot::Init(i) => spec.init_containers.as_ref()?.get(i)?,
    };
    c.image.clone()
}

/// The pod's grace period (`terminationGracePeriodSeconds`, default 30).
pub(super) fn grace_of(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(super::DEFAULT_GRACE_SECONDS)
}

/// Waits `d` unless the pod is stopped first; true when stopped.
pub(super) async fn sleep_or_stop(stop: &mut watch::Receiver<Option<i64>>, d: Duration) -> bool {
    tokio::select! {
        // The loop checks the stop signal again before starting anything.
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(Option::is_some) => true,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pod(state: ContainerState, last: Option<ContainerState>, restarts: i32) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    state: Some(state),
                    last_state: last,
                    restart_count: restarts,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                started_at: Some(Time(t(1))),
                finished_at: Some(Time(t(2))),
                reason: Some("Error".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn observed(code: i32) -> Observed {
        Observed::Terminated {
            exit_code: code,
            signal: None,
            reason: Some("Error".into()),
            message: None,
            started_at: t(1),
            finished_at: t(2),
        }
    }

    #[test]
    fn an_earlier_run_is_continued_from_the_api_status() {
        let running = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(t(1))),
            }),
            ..Default::default()
        };
        let backing_off = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                message: None,
            }),
            ..Default::default()
        };
        let never = RestartPolicy::Never;
        let always = RestartPolicy::Always;
        // (case, pod, policy, restart count, previous instance, done)
        let rows = [
            (
                "no status: a fresh start",
                Pod::default(),
                always,
                0,
                None,
                None,
            ),
            (
                "backing off: the crashed instance is the previous one",
                pod(backing_off, Some(terminated(1)), 2),
                always,
                2,
                Some(observed(1)),
                None,
            ),
            (
                "exited, to be restarted",
                pod(terminated(1), None, 0),
                always,
                0,
                Some(observed(1)),
                None,
            ),
            (
                "exited for good",
                pod(terminated(1), None, 0),
                never,
                0,
                None,
                Some(observed(1)),
            ),
        ];
        for (name, pod, policy, count, previous, done) in rows {
            let e = Earlier::of(&pod, "app", Role::Main, policy);
            assert_eq!(e.restart_count, count, "{name}");
            assert_eq!(e.previous, previous, "{name}");
            assert_eq!(e.done, done, "{name}");
        }
        // Running when the node stopped: an instance whose end is unknown.
        let e = Earlier::of(&pod(running, None, 3), "app", Role::Main, always);
        assert_eq!(e.restart_count, 3);
        assert!(
            matches!(&e.previous, Some(Observed::Terminated { exit_code: 255, reason: Some(r), started_at, .. }) if r == "Unknown" && *started_at == t(1)),
            "{e:?}"
        );
    }
}
