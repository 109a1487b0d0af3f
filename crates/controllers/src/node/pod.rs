//! One pod's worker: picks the cache disk, runs each container (restarting it as the restart
//! policy says), writes status and events, and on deletion stops, cleans up and confirms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imc_api::annotations::{AUTO_CREATED_LABEL, ENABLE_REUSE, MATCHED_IMAGE_CACHE};
use imc_api::image_cache::Phase;
use imc_api::{ImageCache, ImageCacheSpec, Reference};
use imc_runtime::{Container, ContainerIo, ContainerSpec, PodSandbox, StartRequest, StartTimings};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodStatus};
use kube::Resource;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::container_spec::{
    ConfigError, NodeLimits, Planned, not_run, runtime_spec, sandbox_config,
};
use super::env::EnvSources;
use super::image::{self, PullPolicy, Source};
use super::status::{ContainerView, Observed, PodView, pod_status};
use super::volumes::{self, PodVolumes, container_mounts};
use super::{Node, NodeError, confirm_deletion, eviction, network};
use crate::admission::{pinned_cache_id, pod_images, wants_automatic};
use crate::metrics::CacheUse;

/// First wait before restarting a container; doubles per restart up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A container that ran this long resets the backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The cache disk a pod's containers take their layers from.
struct MatchedCache {
    id: String,
    disk: PathBuf,
}

struct PodState {
    view: PodView,
    /// Containers whose image has been obtained once.
    prepared: usize,
    /// Whether the start latency was recorded.
    start_recorded: bool,
}

/// What every container task of one pod shares.
struct PodRun {
    node: Arc<Node>,
    pod: Pod,
    uid: String,
    name: String,
    reference: ObjectReference,
    sandbox: PodSandbox,
    cache: Option<MatchedCache>,
    auto_create: bool,
    restart_policy: String,
    state: Mutex<PodState>,
    status: watch::Sender<Option<PodStatus>>,
    /// Node-wide limits of every container.
    limits: NodeLimits,
    /// The pod's latest spec.
    updates: watch::Receiver<Pod>,
    /// Set when the pod is evicted: every container stops.
    evicted: watch::Sender<bool>,
    /// The pod's volumes, set up.
    volumes: PodVolumes,
    /// `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` of every container.
    etc_mounts: Vec<imc_runtime::VolumeMount>,
}

/// Runs `pod` until `stop` says it is being deleted, then cleans up and confirms the deletion.
/// `updates` carries the pod's later specs (a changed image restarts its container).
pub(super) async fn run(
    node: Arc<Node>,
    pod: Pod,
    stop: watch::Receiver<Option<i64>>,
    updates: watch::Receiver<Pod>,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let span = info_span!("pod", pod = %name, uid = %uid);
    run_inner(node.clone(), pod, stop, updates)
        .instrument(span)
        .await;
    node.worker_done(&uid);
}

async fn run_inner(
    node: Arc<Node>,
    pod: Pod,
    mut stop: watch::Receiver<Option<i64>>,
    updates: watch::Receiver<Pod>,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let api: Api<Pod> = Api::namespaced(node.ctx.client.clone(), &namespace);
    let reference = pod.object_ref(&());
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let now = Timestamp::now();
    let view = PodView {
        containers: containers
            .iter()
            .map(|c| ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: String::new(),
                state: Observed::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                last_state: None,
                restart_count: 0,
                will_restart: false,
                ever_started: false,
                container_id: None,
            })
            .collect(),
        start_time: now,
        ready_transition: now,
        init_failed: false,
        evicted: None,
        pod_ips: Vec::new(),
    };
    let (status_tx, status_rx) = watch::channel(Some(pod_status(&view)));
    let writer = tokio::spawn(write_status(
        node.clone(),
        api.clone(),
        name.clone(),
        status_rx,
    ));

    let sandbox = match sandbox_config(&pod) {
        Ok(config) => node
            .runtime
            .create_sandbox(&config, std::process::id())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.0),
    };
    let sandbox = match sandbox {
        Ok(s) => s,
        Err(e) => {
            node.events.warning(
                &reference,
                "FailedCreatePodSandBox",
                format!("Failed to create pod sandbox: {e}"),
            );
            let mut failed = view.clone();
            failed.init_failed = true;
            status_tx.send_replace(Some(pod_status(&failed)));
            let _ = stop.wait_for(Option::is_some).await;
            drop(status_tx);
            let _ = writer.await;
            if !node.is_shutting_down() {
                confirm_deletion(&api, &name, &uid).await;
            }
            return;
        }
    };
    // The pod's address, as its status and its containers' env (`status.podIP`) show it.
    let mut pod = pod;
    let mut view = view;
    view.pod_ips = sandbox.ips.iter().map(ToString::to_string).collect();
    if let Some(ip) = view.pod_ips.first() {
        pod.status.get_or_insert_with(Default::default).pod_ip = Some(ip.clone());
    }
    status_tx.send_replace(Some(pod_status(&view)));
    let Some(volumes) =
        volumes::manager::prepare(&node, &pod, &sandbox.dir, &reference, &mut stop).await
    else {
        // Deleted before its volumes could be set up.
        if let Err(e) = sandbox.remove().await {
            warn!(error = %e, "removing the pod sandbox");
        }
        drop(status_tx);
        let _ = writer.await;
        if !node.is_shutting_down() {
            confirm_deletion(&api, &name, &uid).await;
        }
        return;
    };
    let etc_files = {
        let (p, dir, host, ip) = (
            pod.clone(),
            sandbox.dir.clone(),
            sandbox.hostname.clone(),
            sandbox.ips.first().copied(),
        );
        tokio::task::spawn_blocking(move || network::write_pod_files(&p, &dir, &host, ip)).await
    };
    let etc_mounts = match etc_files {
        Ok(Ok((mounts, warning))) => {
            if let Some(w) = warning {
                node.events.warning(&reference, "MissingClusterDNS", w);
            }
            mounts
        }
        Ok(Err(e)) => {
            warn!(error = %e, "writing the pod's hosts and resolv.conf");
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, "writing the pod's hosts and resolv.conf");
            Vec::new()
        }
    };
    let (cache, auto_create) = resolve_cache(&node, &pod, &reference).await;
    let run = Arc::new(PodRun {
        restart_policy: pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into()),
        node: node.clone(),
        uid: uid.clone(),
        name: name.clone(),
        reference,
        sandbox,
        cache,
        auto_create,
        state: Mutex::new(PodState {
            view,
            prepared: 0,
            start_recorded: false,
        }),
        status: status_tx,
        limits: NodeLimits {
            pids_limit: node.ctx.settings.container_pids_limit,
        },
        updates,
        evicted: watch::Sender::new(false),
        volumes,
        etc_mounts,
        pod,
    });
    // configMap, secret, downwardAPI and projected volumes follow what they show.
    let volume_sync = tokio::spawn(volumes::manager::keep_in_sync(
        node.clone(),
        run.updates.clone(),
        run.volumes.clone(),
        run.reference.clone(),
        stop.clone(),
    ));
    // Disk-backed emptyDirs over their sizeLimit get the pod evicted, as the kubelet does.
    for (volume, dir, limit, text) in run.volumes.limited.clone() {
        let run = run.clone();
        tokio::spawn(async move {
            let mut evicted = run.evicted.subscribe();
            tokio::select! {
                _ = eviction::exceeded(Some(limit), vec![dir]) => {
                    let why = format!("Usage of EmptyDir volume {volume:?} exceeds the limit {text:?}. ");
                    run.node.events.warning(&run.reference, "Evicted", why.clone());
                    run.evict(&why);
                }
                _ = evicted.wait_for(|e| *e) => {}
            }
        });
    }

    let init_ok = run_init_containers(&run, &mut stop).await;
    if !init_ok {
        {
            let mut state = run.state.lock().unwrap_or_else(|e| e.into_inner());
            state.view.init_failed = true;
            run.status.send_replace(Some(pod_status(&state.view)));
        }
        let _ = stop.wait_for(Option::is_some).await;
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for idx in 0..containers.len() {
            tasks.spawn(container_loop(run.clone(), idx, stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
    // Containers end only when the pod is deleted; a pod without any waits here too.
    let _ = stop.wait_for(Option::is_some).await;
    // No volume write may be under way when the pod dir goes.
    if let Err(e) = volume_sync.await {
        warn!(error = %e, "keeping the pod's volumes up to date");
    }
    node.tokens.forget_pod(&uid);
    if let Err(e) = run.sandbox.remove().await {
        warn!(error = %e, "removing the pod sandbox");
    }
    match Arc::try_unwrap(run) {
        // Dropping the sender lets the writer finish with the last status.
        Ok(run) => {
            drop(run.status);
            let _ = writer.await;
        }
        Err(_) => {
            warn!("pod state still shared after its containers ended");
            writer.abort();
        }
    }
    if node.is_shutting_down() {
        // The pod stays as it is: the next start of the node runs it again.
        info!("pod's containers stopped and removed for shutdown");
        return;
    }
    info!("pod stopped and cleaned up");
    confirm_deletion(&api, &name, &uid).await;
}

/// Writes the latest status whenever it changes (older unsent ones are skipped).
async fn write_status(
    node: Arc<Node>,
    api: Api<Pod>,
    name: String,
    mut rx: watch::Receiver<Option<PodStatus>>,
) {
    loop {
        let status = rx.borrow_and_update().clone();
        // A shutdown leaves the pod's status as the API has it (the API answers no more).
        if node.is_shutting_down() {
            return;
        }
        if let Some(status) = status {
            let patch = json!({ "status": status });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => warn!(pod = %name, error = %e, "writing the pod status"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Finds the cache disk of the pod's matched (or pinned) cache, with the events saying what
/// happened; `(None, true)` when automatic matching found nothing (an auto cache is created).
async fn resolve_cache(
    node: &Node,
    pod: &Pod,
    reference: &ObjectReference,
) -> (Option<MatchedCache>, bool) {
    let annotations = pod.metadata.annotations.as_ref();
    let matched = annotations
        .and_then(|a| a.get(MATCHED_IMAGE_CACHE))
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .or_else(|| pinned_cache_id(pod));
    let Some(id) = matched else {
        if wants_automatic(pod) {
            node.events.warning(
                reference,
                "ImageCacheMissed",
                "no image cache matched the pod's images; pulling them (an image cache will be created for them)".into(),
            );
            node.ctx.metrics.cache_miss();
            return (None, true);
        }
        return (None, false);
    };
    let cache = match node.view.by_id(id) {
        Some(c) => Some(c),
        // The watch may lag behind a cache created this instant.
        None => Api::<ImageCache>::all(node.ctx.client.clone())
            .list(&ListParams::default())
            .await
            .ok()
            .and_then(|l| {
                l.items.into_iter().find(|c| {
                    c.status.as_ref().and_then(|s| s.image_cache_id.as_deref()) == Some(id)
                })
            }),
    };
    let Some(cache) = cache else {
        node.events.warning(
            reference,
            "ImageCacheNotFound",
            format!("image cache {id} not found; pulling the images"),
        );
        return (None, false);
    };
    let cache_name = cache.metadata.name.clone().unwrap_or_default();
    let phase = cache.status.as_ref().and_then(|s| s.phase);
    // While a Ready cache is rebuilt (Updating) or after its rebuild failed (UpdateFailed), its
    // previous disk still serves pods.
    if !matches!(
        phase,
        Some(Phase::Ready | Phase::Updating | Phase::UpdateFailed)
    ) {
        node.events.normal(
            reference,
            "ImageCacheNotComplete",
            format!(
                "image cache {id} ({cache_name}) is {}, not complete; pulling the images",
                phase.map_or("Pending", Phase::as_str)
            ),
        );
        return (None, false);
    }
    // The id comes from an annotation: it becomes a file name only as a valid CacheId. A
    // deleted cache's disk is kept (with the cache object) until its last pod is gone.
    let data_dir = &node.ctx.settings.data_dir;
    let disk = id
        .parse::<imc_api::CacheId>()
        .ok()
        .and_then(|id| crate::cache::current_disk(data_dir, &id));
    let Some(disk) = disk else {
        node.events.warning(
            reference,
            "ImageCacheNotFound",
            format!(
                "the disk of image cache {id} ({cache_name}) is missing from {}; pulling the images",
                crate::cache::disk::caches_dir(data_dir).display()
            ),
        );
        return (None, false);
    };
    node.events.normal(
        reference,
        "SuccessfulHitImageCache",
        format!(
            "Successfully hit image cache {id} ({cache_name}), eliminating the need to pull images"
        ),
    );
    node.ctx.metrics.cache_hit();
    (
        Some(MatchedCache {
            id: id.to_owned(),
            disk,
        }),
        false,
    )
}

impl PodRun {
    /// Marks the pod evicted (it fails; containers are not restarted) and stops its other
    /// containers as the kubelet's eviction does.
    fn evict(&self, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.view.evicted = Some(why.to_owned());
        self.status.send_replace(Some(pod_status(&state.view)));
        drop(state);
        self.evicted.send_replace(true);
    }

    /// The volume mounts of container `c` (subPaths resolved and pinned), on the blocking pool.
    async fn mounts_of(
        &self,
        c: &k8s_openapi::api::core::v1::Container,
    ) -> Result<Vec<imc_runtime::VolumeMount>, volumes::VolumeError> {
        let (volumes, c, dir) = (self.volumes.clone(), c.clone(), self.sandbox.dir.clone());
        let mut mounts = tokio::task::spawn_blocking(move || container_mounts(&volumes, &c, &dir))
            .await
            .unwrap_or_else(|e| {
                Err(volumes::VolumeError(format!(
                    "resolving volume mounts: {e}"
                )))
            })?;
        // The pod's own files, unless the container mounts something there itself.
        for m in &self.etc_mounts {
            if !mounts.iter().any(|v| v.destination == m.destination) {
                mounts.push(m.clone());
            }
        }
        Ok(mounts)
    }

    /// Plans container `c` with the ConfigMaps and Secrets its environment reads, as found now.
    async fn plan(
        &self,
        c: &k8s_openapi::api::core::v1::Container,
    ) -> Result<Planned, ConfigError> {
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let objects = self
            .node
            .objects
            .resolve(namespace, &super::env::references(c))
            .await;
        let sources = EnvSources {
            objects: &objects,
            allocatable: Some(&self.node.allocatable),
        };
        runtime_spec(&self.pod, c, &self.limits, sources)
    }

    /// Waits until an object container `c`'s environment reads changes (or, as the kubelet's
    /// sync loop retries, a while has passed).
    async fn env_sources_changed(
        &self,
        c: &k8s_openapi::api::core::v1::Container,
        changes: &mut tokio::sync::broadcast::Receiver<super::object_cache::Change>,
    ) {
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let refs = super::env::references(c);
        tokio::select! {
            _ = super::object_cache::changed(changes, namespace, &refs) => {}
            _ = tokio::time::sleep(super::volumes::manager::RESYNC) => {}
        }
    }

    /// Changes the view of container `idx` and publishes the new status.
    fn update(&self, idx: usize, f: impl FnOnce(&mut ContainerView)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let was_ready = state.view.ready();
        if let Some(c) = state.view.containers.get_mut(idx) {
            f(c);
        }
        if state.view.ready() != was_ready {
            state.view.ready_transition = Timestamp::now();
        }
        self.status.send_replace(Some(pod_status(&state.view)));
    }

    fn container_spec(&self, idx: usize) -> Option<&k8s_openapi::api::core::v1::Container> {
        self.pod.spec.as_ref()?.containers.get(idx)
    }

    /// Obtains the image and starts one instance of container `idx`.
    async fn start_instance(
        &self,
        idx: usize,
        spec: &ContainerSpec,
        image: &WantedImage,
        first: bool,
        stop: &mut watch::Receiver<Option<i64>>,
    ) -> Result<Option<Container>, NodeError> {
        let (image_name, reference, policy) = (image.name.as_str(), &image.reference, image.policy);
        let started = Instant::now();
        let node = &self.node;
        let me = std::process::id();
        let mut timings = StartTimings::default();
        let attached = match &self.cache {
            Some(c) => {
                let (a, took) = node
                    .runtime
                    .attach_cache(&c.disk, &self.uid, &spec.name, me)
                    .await?;
                timings.attach = took;
                Some(a)
            }
            None => None,
        };
        let t = Instant::now();
        let obtained = async {
            let store = &node.ctx.layers;
            let source = {
                let (store, reference, cache) =
                    (store.clone(), reference.clone(), attached.clone());
                tokio::task::spawn_blocking(move || {
                    image::plan(&store, &reference, policy, cache.as_ref())
                })
                .await
                .map_err(|e| NodeError::Worker {
                    action: "planning where the image comes from",
                    reason: e.to_string(),
                })??
            };
            if source == Source::Registry {
                node.events.normal(
                    &self.reference,
                    "Pulling",
                    format!("Pulling image {image_name:?}"),
                );
            }
            let settings = &node.ctx.settings;
            image::obtain(
                store,
                &settings.registry,
                settings.jobs,
                &settings.platform,
                reference,
                source,
                attached.as_ref(),
            )
            .await
        };
        // A pod deleted while its image is pulled stops at once; the start itself is never
        // interrupted (it is short, and a half-made container would need recovery).
        let obtained = tokio::select! {
            r = obtained => Some(r),
            _ = async { stop.wait_for(Option::is_some).await.is_ok() } => None,
        };
        timings.layers_pulled = t.elapsed();
        let got = match obtained {
            Some(Ok(g)) => g,
            other => {
                if let Some(a) = &attached
                    && let Err(r) = node.runtime.release_cache(a).await
                {
                    warn!(error = %r, "releasing the cache disk of a container not started");
                }
                return match other {
                    Some(Err(e)) => Err(e),
                    _ => Ok(None),
                };
            }
        };
        node.events.normal(
            &self.reference,
            "Pulled",
            image::pulled_message(image_name, &got, self.cache.as_ref().map(|c| c.id.as_str())),
        );
        node.ctx.metrics.downloaded(got.downloaded_bytes);
        node.ctx.metrics.served_from_cache(got.bytes_from_cache);
        let image_id = got.manifest_digest.to_string();
        self.update(idx, |c| c.image_id = image_id);
        if first {
            let all_prepared = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.prepared += 1;
                state.prepared == state.view.containers.len()
            };
            if all_prepared && self.auto_create {
                let client = node.ctx.client.clone();
                let (uid, images) = (self.uid.clone(), pod_images(&self.pod));
                tokio::spawn(create_auto_cache(client, uid, images));
            }
        }
        let container = node
            .runtime
            .start(StartRequest {
                sandbox: &self.sandbox,
                container: spec.clone(),
                image: got.image,
                cache: attached,
                io: ContainerIo::Log,
                owner_pid: me,
                started,
                timings,
            })
            .await?;
        debug!(container = %spec.name, timings = ?container.timings, "container started");
        node.events.normal(
            &self.reference,
            "Created",
            format!("Created container {}", spec.name),
        );
        node.events.normal(
            &self.reference,
            "Started",
            format!("Started container {}", spec.name),
        );
        if idx != INIT {
            self.record_start();
        }
        Ok(Some(container))
    }

    /// Records the pod start latency (API create → first container started) once.
    fn record_start(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.start_recorded {
            return;
        }
        state.start_recorded = true;
        if let Some(created) = &self.pod.metadata.creation_timestamp {
            let seconds = (Timestamp::now() - created.0)
                .total(jiff::Unit::Second)
                .unwrap_or(0.0)
                .max(0.0);
            let used = if self.cache.is_some() {
                CacheUse::Hit
            } else {
                CacheUse::Miss
            };
            self.node.ctx.metrics.pod_started(used, seconds);
        }
    }
}

/// The image a container asks for.
struct WantedImage {
    /// As written in the pod.
    name: String,
    reference: Reference,
    policy: PullPolicy,
}

impl WantedImage {
    /// The image of `c`, or why its reference is invalid.
    fn of(c: &k8s_openapi::api::core::v1::Container) -> Result<Self, NodeError> {
        let name = c.image.clone().unwrap_or_default();
        let reference: Reference =
            name.parse()
                .map_err(
                    |e: imc_api::reference::ReferenceError| NodeError::InvalidImage {
                        container: c.name.clone(),
                        image: name.clone(),
                        reason: e.to_string(),
                    },
                )?;
        Ok(WantedImage {
            policy: PullPolicy::of(c.image_pull_policy.as_deref(), &reference),
            name,
            reference,
        })
    }
}

/// Waits `d` unless the pod is stopped first; true when stopped.
async fn sleep_or_stop(stop: &mut watch::Receiver<Option<i64>>, d: Duration) -> bool {
    tokio::select! {
        // The loop checks the stop signal again before starting anything.
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(Option::is_some) => true,
    }
}

/// Index passed for init containers, which have no place in the pod view.
const INIT: usize = usize::MAX;

/// Runs the init containers one after the other, each to completion. False when one failed
/// (the pod fails; init containers are not retried) or the pod was deleted meanwhile.
async fn run_init_containers(run: &PodRun, stop: &mut watch::Receiver<Option<i64>>) -> bool {
    let init = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default();
    for k8s in init {
        if stop.borrow().is_some() {
            return false;
        }
        let fail = |message: String| {
            run.node
                .events
                .warning(&run.reference, "Failed", format!("Error: {message}"));
            false
        };
        // A configuration error (a missing configMap or secret) waits for what it reads, as
        // the kubelet retries it.
        let mut last: Option<String> = None;
        let mut spec = loop {
            let mut changes = run.node.objects.subscribe();
            match run.plan(&k8s).await {
                Ok(planned) => break planned.spec,
                Err(e) => {
                    if last.as_deref() != Some(e.0.as_str()) {
                        run.node
                            .events
                            .warning(&run.reference, "Failed", format!("Error: {e}"));
                        last = Some(e.0);
                    }
                    tokio::select! {
                        _ = stop.wait_for(Option::is_some) => return false,
                        _ = run.env_sources_changed(&k8s, &mut changes) => {}
                    }
                }
            }
        };
        match run.mounts_of(&k8s).await {
            Ok(m) => spec.mounts = m,
            Err(e) => {
                run.node
                    .events
                    .warning(&run.reference, "FailedMount", e.0.clone());
                return fail(format!("init container {}: {e}", k8s.name));
            }
        }
        let wanted = match WantedImage::of(&k8s) {
            Ok(w) => w,
            Err(e) => return fail(format!("init container {}: {e}", spec.name)),
        };
        let container = match run.start_instance(INIT, &spec, &wanted, false, stop).await {
            Ok(Some(c)) => c,
            Ok(None) => return false,
            Err(e) => return fail(format!("init container {}: {e}", spec.name)),
        };
        let exit = {
            // One wait for the process (its exit status can be collected only once).
            let wait = container.wait();
            tokio::pin!(wait);
            let stopped = tokio::select! {
                exit = &mut wait => Some(exit),
                _ = stop.wait_for(Option::is_some) => None,
            };
            match stopped {
                Some(exit) => Some(exit),
                None => {
                    let _ = stop_container(&container, wait.as_mut(), stop, 0).await;
                    None
                }
            }
        };
        if let Err(e) = container.remove().await {
            warn!(container = %spec.name, error = %e, "removing the init container");
        }
        match exit {
            None => return false,
            Some(Ok(info)) if info.code == 0 => {}
            Some(Ok(info)) => {
                return fail(format!(
                    "init container {} exited with code {}",
                    spec.name, info.code
                ));
            }
            Some(Err(e)) => return fail(format!("init container {}: {e}", spec.name)),
        }
    }
    true
}

/// Stops a running container: SIGTERM, then SIGKILL once `grace` seconds passed, or sooner
/// when the stop signal shortens the grace period meanwhile (a force delete, the node's
/// shutdown). Returns how it ended.
async fn stop_container<F>(
    container: &Container,
    mut wait: std::pin::Pin<&mut F>,
    stop: &mut watch::Receiver<Option<i64>>,
    grace: i64,
) -> Result<imc_runtime::ExitInfo, imc_runtime::RuntimeError>
where
    F: std::future::Future<Output = Result<imc_runtime::ExitInfo, imc_runtime::RuntimeError>>,
{
    if let Err(e) = container.kill("TERM").await {
        debug!(error = %e, "sending SIGTERM");
    }
    let started = Instant::now();
    let mut grace = Duration::from_secs(grace.max(0) as u64);
    loop {
        let deadline = started + grace;
        tokio::select! {
            exit = &mut wait => return exit,
            _ = tokio::time::sleep_until(deadline.into()) => break,
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Some(g) = *stop.borrow_and_update() {
                    grace = grace.min(Duration::from_secs(g.max(0) as u64));
                }
            }
        }
    }
    if let Err(e) = container.kill("KILL").await {
        debug!(error = %e, "sending SIGKILL");
    }
    wait.await
}

/// Why a running container's wait ended.
enum Ended {
    /// Its process exited by itself.
    Exited(Result<imc_runtime::ExitInfo, imc_runtime::RuntimeError>),
    /// The pod is being deleted (or the node stops): it was stopped.
    Stopped(Result<imc_runtime::ExitInfo, imc_runtime::RuntimeError>),
    /// Its image changed in the pod spec: it was stopped to be started with the new one.
    Changed(Result<imc_runtime::ExitInfo, imc_runtime::RuntimeError>),
    /// It used more local storage than its limit: the pod is evicted (this message).
    Evicted(
        Result<imc_runtime::ExitInfo, imc_runtime::RuntimeError>,
        String,
    ),
}

/// The image container `name` asks for in `pod`.
fn image_of(pod: &Pod, name: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)?
        .image
        .clone()
}

/// The pod's grace period (`terminationGracePeriodSeconds`, default 30).
fn grace_of(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(super::DEFAULT_GRACE_SECONDS)
}

/// Runs container `idx` of the pod: start, wait, restart per policy (and when its image
/// changes), stop on deletion.
async fn container_loop(run: Arc<PodRun>, idx: usize, mut stop: watch::Receiver<Option<i64>>) {
    let Some(first_spec) = run.container_spec(idx).cloned() else {
        return;
    };
    let span = info_span!("container", container = %first_spec.name);
    async move {
        let mut updates = run.updates.clone();
        let mut k8s = first_spec;
        let mut backoff = INITIAL_BACKOFF;
        let mut first = true;
        loop {
            if stop.borrow().is_some() {
                return;
            }
            if *run.evicted.borrow() {
                // An evicted pod starts nothing more; it waits to be deleted.
                let _ = stop.wait_for(Option::is_some).await;
                return;
            }
            // The latest spec of this container (its image may have changed).
            if let Some(image) = image_of(&updates.borrow_and_update(), &k8s.name) {
                k8s.image = Some(image);
            }
            // Subscribed before the objects are read, so no change in between is missed.
            let mut env_changes = run.node.objects.subscribe();
            let planned = run.plan(&k8s).await.and_then(|p| {
                WantedImage::of(&k8s)
                    .map(|w| (p, w))
                    .map_err(|e| ConfigError(e.to_string()))
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
                    run.update(idx, |c| {
                        c.state = Observed::Waiting {
                            reason: reason.into(),
                            message: Some(e.0.clone()),
                        }
                    });
                    // Nothing will change this but a new spec (an image update), a change of
                    // what the environment reads, or deletion.
                    let updated = tokio::select! {
                        _ = stop.wait_for(Option::is_some) => return,
                        changed = updates.changed() => changed.is_ok(),
                        _ = run.env_sources_changed(&k8s, &mut env_changes) => true,
                    };
                    if !updated {
                        let _ = stop.wait_for(Option::is_some).await;
                        return;
                    }
                    continue;
                }
            };
            let mut spec = planned.spec;
            let ephemeral = planned.ephemeral_limit.clone();
            match run.mounts_of(&k8s).await {
                Ok(m) => spec.mounts = m,
                Err(e) => {
                    run.node.events.warning(&run.reference, "FailedMount", e.0.clone());
                    run.update(idx, |c| {
                        c.state = Observed::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(e.0.clone()),
                        }
                    });
                    if sleep_or_stop(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
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
            let skipped = not_run(&k8s);
            if first && !skipped.is_empty() {
                run.node.events.warning(
                    &run.reference,
                    "Unsupported",
                    format!(
                        "container {}: {} not run by this node yet (Ready means started)",
                        spec.name,
                        skipped.join(", ")
                    ),
                );
            }
            run.update(idx, |c| c.image = wanted.name.clone());
            let container = match run
                .start_instance(idx, &spec, &wanted, first, &mut stop)
                .await
            {
                Ok(Some(c)) => c,
                Ok(None) => return,
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
                    run.node.events.warning(&run.reference, "Failed", note.clone());
                    if matches!(e, NodeError::Runtime(_)) && !config && run.restart_policy == "Never"
                    {
                        // The process could not start and will not be retried: it ended, as
                        // kubelet reports it, with exit code 128.
                        let now = Timestamp::now();
                        run.update(idx, |c| {
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
                        let _ = stop.wait_for(Option::is_some).await;
                        return;
                    }
                    run.update(idx, |c| {
                        c.state = Observed::Waiting {
                            reason: reason.into(),
                            message: Some(note),
                        }
                    });
                    if sleep_or_stop(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            first = false;
            let started_at = Timestamp::now();
            let ran = Instant::now();
            run.node.set_running(&run.uid, &spec.name, true);
            let container_id = format!("runc://{}", container.id);
            run.update(idx, |c| {
                c.state = Observed::Running { started_at };
                c.ever_started = true;
                c.container_id = Some(container_id);
            });
            let running_image = wanted.name.clone();
            let ended = {
            // One wait for the process (its exit status can be collected only once).
            let wait = container.wait();
            tokio::pin!(wait);
            tokio::select! {
                exit = &mut wait => Ended::Exited(exit),
                grace = async { stop.wait_for(Option::is_some).await.map_or(0, |g| g.unwrap_or(0)) } => {
                    if !run.node.is_shutting_down() {
                        run.node.events.normal(&run.reference, "Killing", format!("Stopping container {}", spec.name));
                    }
                    Ended::Stopped(stop_container(&container, wait.as_mut(), &mut stop, grace).await)
                }
                _ = async {
                    loop {
                        if updates.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        let image = image_of(&updates.borrow_and_update(), &spec.name);
                        if image.is_some_and(|i| i != running_image) {
                            return;
                        }
                    }
                } => {
                    run.node.events.normal(
                        &run.reference,
                        "Killing",
                        format!("Container {} definition changed, will be restarted", spec.name),
                    );
                    let grace = grace_of(&updates.borrow());
                    Ended::Changed(stop_container(&container, wait.as_mut(), &mut stop, grace).await)
                }
                // The container dir holds its writable layer and its logs (the rootfs mount
                // in it is another file system, not counted twice).
                used = eviction::exceeded(ephemeral.as_ref().map(|l| l.0), vec![container.dir.clone()]) => {
                    let limit = ephemeral.as_ref().map(|l| l.1.clone()).unwrap_or_default();
                    let message = eviction::message(&spec.name, &limit);
                    warn!(used, limit = %limit, "container over its ephemeral storage limit: evicting the pod");
                    run.node.events.warning(&run.reference, "Evicted", message.clone());
                    Ended::Evicted(stop_container(&container, wait.as_mut(), &mut stop, 0).await, message)
                }
                // Another container of the pod got it evicted: this one stops too.
                _ = async { run.evicted.subscribe().wait_for(|e| *e).await.map(|_| ()) } => {
                    Ended::Evicted(stop_container(&container, wait.as_mut(), &mut stop, 0).await, String::new())
                }
            }
            };
            run.node.set_running(&run.uid, &spec.name, false);
            let (exit, stopped, changed, evicted) = match ended {
                Ended::Exited(e) => (e, false, false, None),
                Ended::Stopped(e) => (e, true, false, None),
                Ended::Changed(e) => (e, false, true, None),
                Ended::Evicted(e, why) => (e, false, false, Some(why)),
            };
            let (code, signal, oom) = match &exit {
                Ok(info) => (info.code, info.signal, info.oom_killed),
                Err(e) => {
                    warn!(error = %e, "waiting for the container");
                    (-1, None, false)
                }
            };
            if let Some(why) = evicted.as_deref().filter(|w| !w.is_empty()) {
                run.evict(why);
            }
            let will_restart = !stopped
                && evicted.is_none()
                && (changed
                    || match run.restart_policy.as_str() {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    });
            let finished_at = Timestamp::now();
            let reason = if oom {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let terminated = Observed::Terminated {
                exit_code: code,
                signal,
                reason: Some(reason.into()),
                message: None,
                started_at,
                finished_at,
            };
            run.update(idx, |c| {
                c.state = terminated.clone();
                c.will_restart = will_restart;
            });
            if !will_restart {
                if !stopped {
                    // Kept (and its log served) until the pod is deleted.
                    let _ = stop.wait_for(Option::is_some).await;
                }
                if let Err(e) = container.remove().await {
                    warn!(error = %e, "removing the container");
                }
                return;
            }
            if ran.elapsed() >= BACKOFF_RESET {
                backoff = INITIAL_BACKOFF;
            }
            // Kept for `kubectl logs --previous`; the container dir goes with the container.
            let previous = run.sandbox.dir.join(super::logs::previous_log_name(&spec.name));
            if let Err(e) =
                super::logs::keep_previous(container.log_path.clone(), previous).await
            {
                debug!(error = %e, "keeping the previous instance's log");
            }
            if let Err(e) = container.remove().await {
                warn!(error = %e, "removing the container before its restart");
            }
            run.update(idx, |c| {
                c.last_state = Some(terminated);
                c.restart_count += 1;
                if !changed {
                    c.state = Observed::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(format!(
                            "back-off {}s restarting failed container={} pod={}",
                            backoff.as_secs(),
                            spec.name,
                            run.name
                        )),
                    };
                }
            });
            // A new image starts at once; a crash waits out the back-off.
            if !changed {
                if sleep_or_stop(&mut stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    .instrument(span)
    .await
}

/// After a miss with automatic matching: an ImageCache holding the pod's images, built from the
/// local layer store (reuse), labelled as auto-created.
async fn create_auto_cache(client: kube::Client, uid: String, images: Vec<String>) {
    if images.is_empty() {
        return;
    }
    let name = format!(
        "auto-create-for-{}",
        uid.chars().take(8).collect::<String>()
    );
    let mut cache = ImageCache::new(
        &name,
        ImageCacheSpec {
            images,
            ..Default::default()
        },
    );
    cache.metadata.labels = Some(BTreeMap::from([(
        AUTO_CREATED_LABEL.to_owned(),
        "true".to_owned(),
    )]));
    cache.metadata.annotations = Some(BTreeMap::from([(
        ENABLE_REUSE.to_owned(),
        "true".to_owned(),
    )]));
    let api: Api<ImageCache> = Api::all(client);
    match api.create(&PostParams::default(), &cache).await {
        Ok(_) => info!(cache = %name, "created an image cache for the missed pod"),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => warn!(cache = %name, error = %e, "creating the auto image cache"),
    }
}
