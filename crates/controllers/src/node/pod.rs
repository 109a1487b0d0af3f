//! One pod's worker (the kubelet's pod worker): makes the pod's sandbox, picks the cache disk,
//! runs the init containers in order (sidecars started along the way), then the regular
//! containers (each through [`super::container`]), writes status and events, and on deletion
//! stops, cleans up and confirms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use imc_api::annotations::{AUTO_CREATED_LABEL, ENABLE_REUSE, MATCHED_IMAGE_CACHE};
use imc_api::image_cache::Phase;
use imc_api::{ImageCache, ImageCacheSpec, Reference};
use imc_runtime::{Container, ContainerIo, ContainerSpec, PodSandbox, StartRequest, StartTimings};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container as K8sContainer;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodStatus};
use kube::Resource;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::container::{self, LoopEnd, Role, Slot};
use super::container_spec::{ConfigError, NodeLimits, Planned, runtime_spec, sandbox_config};
use super::env::EnvSources;
use super::image::{self, PullPolicy, Source};
use super::restart::RestartPolicy;
use super::status::{ContainerView, LOOPBACK, PodView, pod_status};
use super::volumes::{self, PodVolumes, container_mounts};
use super::{Node, NodeError, confirm_deletion, eviction, network};
use crate::admission::{pinned_cache_id, pod_images, wants_automatic};
use crate::metrics::CacheUse;

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
pub(super) struct PodRun {
    pub(super) node: Arc<Node>,
    pub(super) pod: Pod,
    pub(super) uid: String,
    /// The pod as the kubelet names it in messages: `name_namespace(uid)`.
    pub(super) pod_ref: String,
    pub(super) reference: ObjectReference,
    pub(super) sandbox: PodSandbox,
    /// The pod's IP (where probes and hooks without a host connect, in its namespace).
    pub(super) pod_ip: String,
    cache: Option<MatchedCache>,
    auto_create: bool,
    pub(super) restart_policy: RestartPolicy,
    state: Mutex<PodState>,
    status: watch::Sender<Option<PodStatus>>,
    /// Node-wide limits of every container.
    pub(super) limits: NodeLimits,
    /// The pod's latest spec.
    pub(super) updates: watch::Receiver<Pod>,
    /// Set when the pod is evicted: every container stops.
    pub(super) evicted: watch::Sender<bool>,
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
    let init_containers = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default();
    // An earlier run of the node (before a restart) started the pod already.
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or_else(Timestamp::now, |t| t.0);
    let first_state = if init_containers.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let view_of = |c: &K8sContainer, state: &str| ContainerView {
        sidecar: c.restart_policy.as_deref() == Some("Always"),
        ..ContainerView::waiting(&c.name, c.image.as_deref().unwrap_or_default(), state)
    };
    let view = PodView {
        init_containers: init_containers
            .iter()
            .map(|c| view_of(c, "PodInitializing"))
            .collect(),
        containers: containers.iter().map(|c| view_of(c, first_state)).collect(),
        start_time,
        ready_transition: start_time,
        initialized_transition: start_time,
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
        let (p, dir, host, ip, dns) = (
            pod.clone(),
            sandbox.dir.clone(),
            sandbox.hostname.clone(),
            sandbox.ips.first().copied(),
            node.cluster_dns.clone(),
        );
        tokio::task::spawn_blocking(move || {
            network::write_pod_files(&p, &dir, &host, ip, dns.as_ref())
        })
        .await
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
    // Probes and hooks connect to it from inside the pod's network namespace.
    let pod_ip = sandbox
        .ips
        .first()
        .map_or_else(|| LOOPBACK.to_owned(), ToString::to_string);
    let run = Arc::new(PodRun {
        restart_policy: RestartPolicy::parse(
            pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()),
        ),
        node: node.clone(),
        uid: uid.clone(),
        pod_ref: format!("{name}_{namespace}({uid})"),
        pod_ip,
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
    // Sidecars run alongside everything started after them.
    let mut tasks = tokio::task::JoinSet::new();
    // Disk-backed emptyDirs over their sizeLimit get the pod evicted, as the kubelet does.
    for (volume, dir, limit, text) in run.volumes.limited.clone() {
        let (run, mut stop) = (run.clone(), stop.clone());
        tasks.spawn(async move {
            let mut evicted = run.evicted.subscribe();
            tokio::select! {
                _ = eviction::exceeded(Some(limit), vec![dir]) => {
                    let why = format!("Usage of EmptyDir volume {volume:?} exceeds the limit {text:?}. ");
                    run.node.events.warning(&run.reference, "Evicted", why.clone());
                    run.evict(&why);
                }
                _ = evicted.wait_for(|e| *e) => {}
                _ = stop.wait_for(Option::is_some) => {}
            }
        });
    }
    match run_init_containers(&run, &mut stop, &mut tasks).await {
        LoopEnd::Completed => {
            for idx in 0..containers.len() {
                let (run, stop) = (run.clone(), stop.clone());
                tasks.spawn(async move {
                    container::run(run, Slot::Main(idx), stop).await;
                });
            }
        }
        LoopEnd::Failed => {
            let mut state = run.state.lock().unwrap_or_else(|e| e.into_inner());
            state.view.init_failed = true;
            run.status.send_replace(Some(pod_status(&state.view)));
        }
        LoopEnd::Stopped | LoopEnd::Done => {}
    }
    while tasks.join_next().await.is_some() {}
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
        // The pod stays as it is: the next start of the node runs it again (its logs stay).
        info!("pod's containers stopped and removed for shutdown");
        return;
    }
    node.remove_logs(&uid).await;
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
    pub(super) fn evict(&self, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.view.evicted = Some(why.to_owned());
        self.status.send_replace(Some(pod_status(&state.view)));
        drop(state);
        self.evicted.send_replace(true);
    }

    /// The volume mounts of container `c` (subPaths resolved and pinned), on the blocking pool.
    pub(super) async fn mounts_of(
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
    pub(super) async fn plan(
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
            api: self.node.api_service.as_ref(),
        };
        runtime_spec(&self.pod, c, &self.limits, sources)
    }

    /// Waits until an object container `c`'s environment reads changes (or, as the kubelet's
    /// sync loop retries, a while has passed).
    pub(super) async fn env_sources_changed(
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

    /// Changes the view of the container in `slot` and publishes the new status.
    pub(super) fn update(&self, slot: Slot, f: impl FnOnce(&mut ContainerView)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (was_ready, was_initialized) = (state.view.ready(), state.view.initialized());
        let view = match slot {
            Slot::Main(i) => state.view.containers.get_mut(i),
            Slot::Init(i) => state.view.init_containers.get_mut(i),
        };
        if let Some(c) = view {
            f(c);
        }
        if state.view.ready() != was_ready {
            state.view.ready_transition = Timestamp::now();
        }
        if state.view.initialized() != was_initialized {
            state.view.initialized_transition = Timestamp::now();
        }
        self.status.send_replace(Some(pod_status(&state.view)));
    }

    /// Waits until `done` holds for the pod's view.
    pub(super) async fn wait_until(&self, done: impl Fn(&PodView) -> bool) {
        let mut changes = self.status.subscribe();
        loop {
            if done(&self.state.lock().unwrap_or_else(|e| e.into_inner()).view) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The spec of the container in `slot`.
    pub(super) fn container_spec(&self, slot: Slot) -> Option<&K8sContainer> {
        let spec = self.pod.spec.as_ref()?;
        match slot {
            Slot::Main(i) => spec.containers.get(i),
            Slot::Init(i) => spec.init_containers.as_ref()?.get(i),
        }
    }

    /// `DIR/logs/<uid>/<name>`: the logs of container `name`, kept apart from its runtime
    /// state so that they outlive a restart of the node.
    pub(super) fn log_dir(&self, name: &str) -> PathBuf {
        self.node.log_dir(&self.uid, name)
    }

    /// The current log of container `name`.
    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir(name).join(super::logs::CURRENT_LOG)
    }

    /// Creates the log dir of container `name` (owner-only).
    pub(super) async fn prepare_log_dir(&self, name: &str) -> std::io::Result<()> {
        let dir = self.log_dir(name);
        tokio::task::spawn_blocking(move || imc_layers::ensure_private_dir(&dir))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Makes the log of the instance of container `name` that ended the previous log
    /// (`kubectl logs --previous`).
    pub(super) async fn keep_previous_log(&self, name: &str) -> std::io::Result<()> {
        self.prepare_log_dir(name).await?;
        let dir = self.log_dir(name);
        super::logs::keep_previous(
            dir.join(super::logs::CURRENT_LOG),
            dir.join(super::logs::PREVIOUS_LOG),
        )
        .await
    }

    /// Obtains the image and starts one instance of the container in `slot`.
    pub(super) async fn start_instance(
        &self,
        slot: Slot,
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
        self.update(slot, |c| c.image_id = image_id);
        if first && matches!(slot, Slot::Main(_)) {
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
                io: ContainerIo::LogAt(self.log_path(&spec.name)),
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
        if matches!(slot, Slot::Main(_)) {
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
pub(super) struct WantedImage {
    /// As written in the pod.
    pub(super) name: String,
    reference: Reference,
    policy: PullPolicy,
}

impl WantedImage {
    /// The image of `c`, or why its reference is invalid.
    pub(super) fn of(c: &K8sContainer) -> Result<Self, NodeError> {
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

/// Runs the init containers in order: each regular one to completion (retried as the pod's
/// restart policy says), each sidecar started (and left running in `tasks`) before the next
/// one. [`LoopEnd::Completed`] when the pod may start its containers, [`LoopEnd::Failed`] when
/// an init container failed for good, [`LoopEnd::Stopped`] when the pod was deleted meanwhile.
async fn run_init_containers(
    run: &Arc<PodRun>,
    stop: &mut watch::Receiver<Option<i64>>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> LoopEnd {
    let init = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default();
    for (i, k8s) in init.iter().enumerate() {
        if stop.borrow().is_some() {
            return LoopEnd::Stopped;
        }
        let slot = Slot::Init(i);
        if Role::of(slot, k8s) == Role::Sidecar {
            let (r, s) = (run.clone(), stop.clone());
            tasks.spawn(async move {
                container::run(r, slot, s).await;
            });
            // The next init container starts once the sidecar has started.
            let started = run.wait_until(move |v| {
                v.init_containers.get(i).is_none_or(|c| {
                    c.started && matches!(c.state, super::status::Observed::Running { .. })
                })
            });
            tokio::select! {
                _ = started => {}
                _ = stop.wait_for(Option::is_some) => return LoopEnd::Stopped,
            }
            continue;
        }
        match container::run(run.clone(), slot, stop.clone()).await {
            LoopEnd::Completed => {}
            other => return other,
        }
    }
    LoopEnd::Completed
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
