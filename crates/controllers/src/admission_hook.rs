//! Pod admission as a hook (DESIGN §4): keeps an up-to-date view of every ImageCache, runs the
//! pure [`admission::decide`] on each new pod and answers with a JSON patch (the matched cache
//! annotation) or a denial. Admission never binds a pod to a node: the scheduler does that.
//!
//! The same [`PodAdmission::admit`] serves the embedded server's hook point and, through
//! [`PodAdmission::review`], an HTTPS `AdmissionReview` webhook in cluster mode.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use imc_api::annotations::MATCHED_IMAGE_CACHE;
use imc_api::image_cache::Phase;
use imc_api::{Digest, ImageCache, Reference};
use imc_matching::CacheIndex;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::admission::{self, Decision};

/// The caches admission decides on, and the matching index over them, kept up to date one
/// watch event at a time.
#[derive(Default)]
struct Snapshot {
    caches: Vec<ImageCache>,
    /// Where each cache (by object name) sits in `caches`.
    position: HashMap<String, usize>,
    index: CacheIndex,
}

/// What of a cache admission and the node decide on besides the index: its id and phase.
fn decided_on(cache: &ImageCache) -> (Option<&str>, Option<Phase>) {
    let status = cache.status.as_ref();
    (
        status.and_then(|s| s.image_cache_id.as_deref()),
        status.and_then(|s| s.phase),
    )
}

impl Snapshot {
    /// A snapshot of `caches` built from scratch (the initial list, a relist).
    fn of(caches: Vec<ImageCache>) -> Self {
        let mut snapshot = Snapshot::default();
        for cache in caches {
            snapshot.apply(cache);
        }
        snapshot
    }

    /// Stores `cache` (new or changed); true when a decision may differ because of it (the
    /// index entry, the id or the phase changed). A build's progress changes none of them.
    fn apply(&mut self, cache: ImageCache) -> bool {
        let name = cache.name_any();
        let decision_inputs_changed = match self.position.get(&name) {
            Some(&i) => {
                let changed = decided_on(&self.caches[i]) != decided_on(&cache);
                self.caches[i] = cache;
                changed
            }
            None => {
                self.position.insert(name.clone(), self.caches.len());
                self.caches.push(cache);
                true
            }
        };
        let index_changed = match self
            .position
            .get(&name)
            .and_then(|&i| admission::cache_entry(&self.caches[i]))
        {
            Some(entry) => self.index.upsert(entry),
            None => self.index.remove(&name).is_some(),
        };
        decision_inputs_changed || index_changed
    }

    /// Forgets the cache named `name`; true when it was known.
    fn delete(&mut self, name: &str) -> bool {
        let Some(i) = self.position.remove(name) else {
            return false;
        };
        self.caches.swap_remove(i);
        if let Some(moved) = self.caches.get(i) {
            self.position.insert(moved.name_any(), i);
        }
        self.index.remove(name);
        true
    }
}

/// Every ImageCache as last seen, with a [`CacheIndex`] over them that each watch event updates
/// in place (one cache's postings; nothing for a progress-only change).
#[derive(Clone, Default)]
pub struct CacheView {
    snapshot: Arc<RwLock<Snapshot>>,
    /// Bumped by every change admission could decide differently on; 0 until the first
    /// complete list arrived.
    version: Arc<AtomicU64>,
}

/// How long admission waits for the first list of caches (just after start-up).
const LOAD_WAIT: Duration = Duration::from_secs(10);
/// How long a denial waits for the view to change before it stands: a cache that became Ready
/// an instant ago may not have reached the watch yet.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

impl CacheView {
    /// A view kept current by a watcher on ImageCaches through `client` (runs until the process
    /// ends; the watcher reconnects by itself after errors, and a relist replaces the view).
    pub fn watch(client: kube::Client) -> Self {
        let view = CacheView::default();
        let api: kube::Api<ImageCache> = kube::Api::all(client);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let updated = view.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            // A (re)list in progress: the caches listed so far.
            let mut listing: Option<Vec<ImageCache>> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => listing = Some(Vec::new()),
                    Ok(watcher::Event::InitApply(cache)) => {
                        listing.get_or_insert_with(Vec::new).push(cache)
                    }
                    Ok(watcher::Event::InitDone) => {
                        updated.set(listing.take().unwrap_or_default());
                    }
                    Ok(watcher::Event::Apply(cache)) => updated.apply(cache),
                    Ok(watcher::Event::Delete(cache)) => updated.delete(&cache.name_any()),
                    Err(e) if !crate::stopping::underway() => {
                        warn!(error = %e, "watching image caches")
                    }
                    Err(_) => {}
                }
            }
        });
        view
    }

    /// Replaces every cache (a complete list: the watch's initial list or a relist; tests).
    pub fn set(&self, caches: Vec<ImageCache>) {
        let snapshot = Snapshot::of(caches);
        *self.write() = snapshot;
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// Applies one created or changed cache.
    pub fn apply(&self, cache: ImageCache) {
        if self.write().apply(cache) {
            self.version.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Forgets one deleted cache.
    pub fn delete(&self, name: &str) {
        if self.write().delete(name) {
            self.version.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes seen so far (0: not loaded yet).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Blocks (at most `max`) until the view's version passes `seen`; true if it did. Admission
    /// functions are synchronous: on a multi-threaded runtime the wait hands this worker's
    /// other tasks (the watch among them) to another thread.
    pub fn wait_past(&self, seen: u64, max: Duration) -> bool {
        let wait = || {
            let deadline = Instant::now() + max;
            while self.version() <= seen && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.version() > seen
        };
        if self.version() > seen {
            return true;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            // A single-threaded runtime would stall its own watch: no waiting there.
            Ok(_) => false,
            Err(_) => wait(),
        }
    }

    /// The cache whose `status.imageCacheId` is `id`, as last seen.
    pub fn by_id(&self, id: &str) -> Option<ImageCache> {
        self.read()
            .caches
            .iter()
            .find(|c| c.status.as_ref().and_then(|s| s.image_cache_id.as_deref()) == Some(id))
            .cloned()
    }
}

/// Layers of an image the node already knows (from an earlier pull), for the "bytes already
/// held" ranking rule.
pub type KnownLayers = Arc<dyn Fn(&Reference) -> Vec<(Digest, u64)> + Send + Sync>;

/// An admission function as the embedded server's hook point takes it.
pub type AdmissionFn =
    Arc<dyn Fn(&AdmissionRequest<DynamicObject>) -> AdmissionResponse + Send + Sync>;

/// The pod admission function: picks a pod's cache; placement is the scheduler's.
#[derive(Clone)]
pub struct PodAdmission {
    view: CacheView,
    known_layers: KnownLayers,
    /// Records `lastMatchedTime` on the chosen cache (retention of auto-created caches).
    client: Option<kube::Client>,
}

impl PodAdmission {
    /// Admission deciding on `view`; `known_layers` tells the layers of images pulled before.
    pub fn new(view: CacheView, known_layers: KnownLayers) -> Self {
        Self {
            view,
            known_layers,
            client: None,
        }
    }

    /// Also records `status.lastMatchedTime` on each cache chosen, through `client`.
    pub fn with_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Writes `lastMatchedTime` of cache `id` in the background (admission itself never waits
    /// on the API).
    fn record_match(&self, id: &str) {
        let (Some(client), Ok(runtime)) =
            (self.client.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let Some(name) = self.view.by_id(id).and_then(|c| c.metadata.name) else {
            return;
        };
        let id = id.to_owned();
        runtime.spawn(async move {
            let api: kube::Api<ImageCache> = kube::Api::all(client);
            let patch = json!({"status": {"lastMatchedTime": jiff::Timestamp::now()}});
            if let Err(e) = api
                .patch_status(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                warn!(cache = %name, id = %id, error = %e, "recording the cache's last match");
            }
        });
    }

    /// As an [`AdmissionFn`] for the embedded server's hook point.
    pub fn into_fn(self) -> AdmissionFn {
        Arc::new(move |req| self.admit(req))
    }

    /// Decides one request: pod CREATE gets the matched cache annotation, or is denied;
    /// anything else is allowed untouched.
    pub fn admit(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let resp = AdmissionResponse::from(req);
        if req.operation != Operation::Create
            || req.kind.kind != "Pod"
            || !req.kind.group.is_empty()
        {
            return resp;
        }
        let Some(object) = &req.object else {
            return resp;
        };
        let value = match serde_json::to_value(object) {
            Ok(v) => v,
            Err(e) => return resp.deny(format!("pod cannot be encoded: {e}")),
        };
        let pod: Pod = match serde_json::from_value(value.clone()) {
            Ok(p) => p,
            Err(e) => return resp.deny(format!("pod cannot be read: {e}")),
        };
        let uses_caches =
            admission::pinned_cache_id(&pod).is_some() || admission::wants_automatic(&pod);
        if uses_caches && !self.view.wait_past(0, LOAD_WAIT) {
            return resp.deny("image caches are not loaded yet; retry in a moment");
        }
        let decide = || {
            let version = self.view.version();
            let snapshot = self.view.read();
            let decision =
                admission::decide(&pod, &snapshot.caches, &snapshot.index, &*self.known_layers);
            (decision, version)
        };
        let (mut decision, version) = decide();
        // A denial of a pinned cache may come from a view a moment behind the API (the cache
        // turned Ready just now): give the watch a moment, then decide again.
        if matches!(decision, Decision::Deny { .. })
            && admission::pinned_cache_id(&pod).is_some()
            && self.view.wait_past(version, CATCH_UP_WAIT)
        {
            decision = decide().0;
        }
        debug!(pod = %req.name, ?decision, "pod admission");
        match decision {
            Decision::Deny { message } => resp.deny(message),
            Decision::Admit { matched, .. } => {
                if let Some((id, _)) = &matched
                    && !req.dry_run
                {
                    self.record_match(id);
                }
                let patch = pod_patch(&value, matched.map(|(id, _)| id));
                if patch.is_empty() {
                    return resp;
                }
                match serde_json::from_value::<json_patch::Patch>(Value::Array(patch)) {
                    Ok(p) => match resp.clone().with_patch(p) {
                        Ok(r) => r,
                        Err(e) => resp.deny(format!("pod patch cannot be encoded: {e}")),
                    },
                    Err(e) => resp.deny(format!("pod patch cannot be encoded: {e}")),
                }
            }
        }
    }

    /// Answers an `AdmissionReview` (cluster mode: the body of a webhook request) with the
    /// review carrying the response.
    pub fn review(&self, review: AdmissionReview<DynamicObject>) -> AdmissionReview<DynamicObject> {
        let req: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
        };
        self.admit(&req).into_review()
    }

    /// [`PodAdmission::review`] on JSON text, for an HTTP handler: the request body in, the
    /// response body out.
    pub fn review_json(&self, body: &[u8]) -> Value {
        let review = match serde_json::from_slice::<AdmissionReview<DynamicObject>>(body) {
            Ok(r) => self.review(r),
            Err(e) => {
                AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review()
            }
        };
        let mut out = serde_json::to_value(review).unwrap_or_else(|e| {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "", "allowed": false, "status": {"message": e.to_string()}}})
        });
        // kube serialises the patch bytes as a JSON array of numbers; the API server's wire
        // format for `[]byte` is a base64 string.
        if let Some(patch) = out.pointer_mut("/response/patch")
            && let Some(bytes) = patch.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Vec<u8>>()
            })
        {
            use base64::Engine as _;
            *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        out
    }
}

/// The JSON patch writing the matched cache annotation (empty when nothing matched).
fn pod_patch(pod: &Value, matched: Option<String>) -> Vec<Value> {
    let mut ops = Vec::new();
    if let Some(id) = matched {
        if pod
            .pointer("/metadata/annotations")
            .is_some_and(Value::is_object)
        {
            // `/` in an annotation name is `~1` in a JSON pointer.
            let key = MATCHED_IMAGE_CACHE.replace('~', "~0").replace('/', "~1");
            ops.push(
                json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": id}),
            );
        } else {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {MATCHED_IMAGE_CACHE: id}}));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use imc_api::ImageCacheSpec;
    use imc_api::annotations::{IMAGE_CACHE, IMAGE_SNAPSHOT_ID};
    use imc_api::image_cache::{ImageCacheStatus, Phase};

    const READY: &str = "imc-aaaaaaaaaaaaaaaaaaaa";
    const CREATING: &str = "imc-bbbbbbbbbbbbbbbbbbbb";

    fn cache(name: &str, id: &str, phase: Phase, images: &[&str]) -> ImageCache {
        let mut c = ImageCache::new(
            name,
            ImageCacheSpec {
                images: images.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        c.status = Some(ImageCacheStatus {
            image_cache_id: Some(id.into()),
            phase: Some(phase),
            ..Default::default()
        });
        c
    }

    fn admission() -> PodAdmission {
        let view = CacheView::default();
        view.set(vec![
            cache("ready", READY, Phase::Ready, &["r.io/a:1"]),
            cache("building", CREATING, Phase::Creating, &["r.io/a:1"]),
        ]);
        PodAdmission::new(view, Arc::new(|_| Vec::new()))
    }

    fn review(pod: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "web",
                "namespace": "default",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        })
    }

    fn pod(annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": "default", "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "r.io/a:1"}]}})
    }

    fn decoded_patch(resp: &Value) -> Value {
        use base64::Engine as _;
        let b64 = resp["response"]["patch"].as_str().expect("a patch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64 patch");
        serde_json::from_slice(&bytes).expect("json patch")
    }

    #[test]
    fn review_round_trip_annotates_and_never_binds() {
        let a = admission();
        let body = serde_json::to_vec(&review(pod(json!({IMAGE_CACHE: "true"})))).unwrap();
        let out = a.review_json(&body);
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert_eq!(
            decoded_patch(&out),
            json!([
                {"op": "add", "path": "/metadata/annotations/k8s.aliyun.com~1eci-matched-image-cache", "value": READY}
            ])
        );
    }

    #[test]
    fn review_denies_a_pinned_cache_that_is_not_ready() {
        let a = admission();
        let body = serde_json::to_vec(&review(pod(json!({IMAGE_SNAPSHOT_ID: CREATING})))).unwrap();
        let out = a.review_json(&body);
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(
            out["response"]["status"]["message"],
            format!("image cache {CREATING} (building) is Creating, not Ready")
        );
    }

    #[test]
    fn pod_without_annotations_is_admitted_unchanged() {
        let a = admission();
        let mut p = pod(json!({}));
        p["metadata"].as_object_mut().unwrap().remove("annotations");
        let out = a.review_json(&serde_json::to_vec(&review(p)).unwrap());
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"]["patch"].is_null(), "{out}");
        // Annotation object absent: the patch creates it.
        let ops = pod_patch(
            &json!({"metadata": {}, "spec": {"nodeName": "other"}}),
            Some(READY.into()),
        );
        assert_eq!(
            ops,
            vec![
                json!({"op": "add", "path": "/metadata/annotations", "value": {MATCHED_IMAGE_CACHE: READY}})
            ]
        );
    }

    #[test]
    fn garbage_is_answered_not_panicked_on() {
        let out = admission().review_json(b"{not json");
        assert_eq!(out["response"]["allowed"], false);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("not an AdmissionReview"),
            "{out}"
        );
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use imc_api::ImageCacheSpec;
    use imc_api::image_cache::ImageCacheStatus;

    fn cache(name: &str, id: &str, phase: Phase, progress: &str) -> ImageCache {
        let mut c = ImageCache::new(
            name,
            ImageCacheSpec {
                images: vec!["r.io/a:1".into()],
                ..Default::default()
            },
        );
        c.status = Some(ImageCacheStatus {
            image_cache_id: Some(id.into()),
            phase: Some(phase),
            progress: Some(progress.into()),
            ..Default::default()
        });
        c
    }

    fn ready_names(view: &CacheView) -> Vec<String> {
        let snapshot = view.read();
        let mut names: Vec<String> = snapshot
            .index
            .entries()
            .filter(|e| e.ready)
            .map(|e| e.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn watch_events_update_the_view_in_place_and_progress_changes_nothing() {
        const A: &str = "imc-aaaaaaaaaaaaaaaaaaaa";
        const B: &str = "imc-bbbbbbbbbbbbbbbbbbbb";
        const C: &str = "imc-cccccccccccccccccccc";
        let view = CacheView::default();
        view.set(vec![
            cache("a", A, Phase::Ready, "100%"),
            cache("b", B, Phase::Creating, "10%"),
        ]);
        assert_eq!(view.version(), 1);
        assert_eq!(ready_names(&view), ["a"]);

        // Progress of a build: stored, but no decision can change.
        view.apply(cache("b", B, Phase::Creating, "55%"));
        assert_eq!(view.version(), 1, "a progress-only event is skipped");
        assert_eq!(
            view.by_id(B).unwrap().status.unwrap().progress.as_deref(),
            Some("55%")
        );

        // b becomes Ready; c appears.
        view.apply(cache("b", B, Phase::Ready, "100%"));
        assert_eq!(view.version(), 2);
        view.apply(cache("c", C, Phase::Ready, "100%"));
        assert_eq!(view.version(), 3);
        assert_eq!(ready_names(&view), ["a", "b", "c"]);

        // a goes: c, the last of the list, moves into its place and is still found.
        view.delete("a");
        assert_eq!(view.version(), 4);
        view.delete("a");
        assert_eq!(
            view.version(),
            4,
            "deleting an unknown cache changes nothing"
        );
        assert!(view.by_id(A).is_none());
        assert_eq!(view.by_id(C).unwrap().metadata.name.as_deref(), Some("c"));
        view.apply(cache("c", C, Phase::Updating, "0%"));
        assert_eq!(ready_names(&view), ["b"]);
        assert_eq!(
            view.by_id(C).unwrap().status.unwrap().phase,
            Some(Phase::Updating)
        );
    }

    #[test]
    fn waits_for_the_view_to_change() {
        let view = CacheView::default();
        assert_eq!(view.version(), 0);
        assert!(!view.wait_past(0, Duration::from_millis(20)));
        let v = view.clone();
        let t = std::thread::spawn(move || v.set(Vec::new()));
        assert!(view.wait_past(0, Duration::from_secs(30)));
        t.join().unwrap();
        assert_eq!(view.version(), 1);
    }

    #[test]
    fn unloaded_view_denies_cache_pods_but_admits_others() {
        let a = PodAdmission::new(CacheView::default(), Arc::new(|_| Vec::new()));
        let req = |annotations: Value| -> AdmissionRequest<DynamicObject> {
            let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "operation": "CREATE", "userInfo": {}, "name": "p", "namespace": "default",
                    "object": {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "p", "annotations": annotations},
                               "spec": {"containers": [{"name": "c", "image": "r.io/a:1"}]}}}
            }))
            .unwrap();
            review.try_into().unwrap()
        };
        assert!(a.admit(&req(json!({}))).allowed);
        // On a single-threaded runtime admission cannot wait for the watch: it denies at once.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let denied =
            rt.block_on(async { a.admit(&req(json!({"k8s.aliyun.com/eci-image-cache": "true"}))) });
        assert!(!denied.allowed);
        assert_eq!(
            denied.result.message,
            "image caches are not loaded yet; retry in a moment"
        );
    }
}
