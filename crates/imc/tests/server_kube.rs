//! `imc server` used by kube-rs exactly as a controller uses a real cluster: typed Api, watcher
//! (ordering, resume after restart, relist after 410), a finalizer-driven Controller, Recorder
//! events, optimistic concurrency.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use imc_api::ImageCache;
use imc_testkit::apiserver::TestServer;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as RecEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Guards against a hang; not a performance assertion.
const GUARD: Duration = Duration::from_secs(60);

fn cache(name: &str) -> ImageCache {
    serde_json::from_value(json!({
        "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": name},
        "spec": {"images": ["registry.example/ns/busybox:1.36"]},
    }))
    .unwrap()
}

async fn start(window: Option<u64>) -> (TestServer, Client) {
    let s =
        TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), window).expect("start imc server");
    let c = s.client().await.expect("kube client");
    (s, c)
}

#[tokio::test]
async fn typed_api_and_watcher_see_create_update_delete_in_order() {
    let (_s, client) = start(None).await;
    let api: Api<ImageCache> = Api::all(client);
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    // The initial list completes before we change anything.
    loop {
        match tokio::time::timeout(GUARD, stream.next()).await.unwrap() {
            Some(Ok(Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("watcher ended early: {other:?}"),
        }
    }
    let created = api
        .create(&PostParams::default(), &cache("w1"))
        .await
        .unwrap();
    assert_eq!(
        created.spec.image_cache_size,
        Some(20),
        "defaulted by the server"
    );
    assert!(created.uid().is_some() && created.meta().creation_timestamp.is_some());
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"retentionDays": 3}})),
    )
    .await
    .unwrap();
    api.delete("w1", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(GUARD, stream.next()).await.unwrap() {
            Some(Ok(Event::Apply(o))) => seen.push(format!(
                "apply gen={} retention={:?}",
                o.metadata.generation.unwrap_or(0),
                o.spec.retention_days
            )),
            Some(Ok(Event::Delete(o))) => seen.push(format!("delete {}", o.name_any())),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("watcher error: {e}"),
            None => panic!("watcher ended"),
        }
    }
    assert_eq!(
        seen,
        [
            "apply gen=1 retention=None",
            "apply gen=2 retention=Some(3)",
            "delete w1"
        ]
    );
}

#[tokio::test]
async fn watch_resumes_after_restart_and_relists_after_410() {
    let (mut s, client) = start(Some(4)).await;
    let api: Api<ImageCache> = Api::all(client);
    api.create(&PostParams::default(), &cache("before"))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cache("after"))
        .await
        .unwrap();

    // Resume from a resourceVersion across a crash.
    s.kill().unwrap();
    s.restart().unwrap();
    let client = s.client().await.unwrap();
    let api: Api<ImageCache> = Api::all(client.clone());
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(GUARD, w.next()).await.unwrap() {
        Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.name_any(), "after"),
        other => panic!("expected ADDED after, got {other:?}"),
    }
    drop(w);

    // A version compacted away answers 410 Expired.
    for i in 0..10 {
        api.create(&PostParams::default(), &cache(&format!("fill-{i}")))
            .await
            .unwrap();
    }
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(GUARD, w.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    drop(w);

    // The runtime watcher relists when its version expires while it was away.
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    loop {
        if let Some(Ok(Event::InitDone)) = tokio::time::timeout(GUARD, stream.next()).await.unwrap()
        {
            break;
        }
    }
    api.create(&PostParams::default(), &cache("live"))
        .await
        .unwrap();
    loop {
        if let Some(Ok(Event::Apply(o))) = tokio::time::timeout(GUARD, stream.next()).await.unwrap()
            && o.name_any() == "live"
        {
            break;
        }
    }
    // The stream is not polled while the server restarts and moves past its version.
    s.kill().unwrap();
    s.restart().unwrap();
    let api2: Api<ImageCache> = Api::all(s.client().await.unwrap());
    for i in 0..10 {
        api2.create(&PostParams::default(), &cache(&format!("gap-{i}")))
            .await
            .unwrap();
    }
    let mut relisted = Vec::new();
    loop {
        match tokio::time::timeout(GUARD, stream.next()).await.unwrap() {
            Some(Ok(Event::InitApply(o))) => relisted.push(o.name_any()),
            Some(Ok(Event::InitDone)) => break,
            Some(_) => {}
            None => panic!("watcher ended"),
        }
    }
    assert_eq!(relisted.len(), 23, "{relisted:?}");
    assert!(relisted.contains(&"gap-9".to_owned()));
}

#[tokio::test]
async fn stale_update_conflicts() {
    let (_s, client) = start(None).await;
    let api: Api<ImageCache> = Api::all(client);
    let first = api
        .create(&PostParams::default(), &cache("c"))
        .await
        .unwrap();
    let mut a = first.clone();
    a.spec.retention_days = Some(5);
    api.replace("c", &PostParams::default(), &a).await.unwrap();
    let mut stale = first;
    stale.spec.retention_days = Some(6);
    match api.replace("c", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
        }
        other => panic!("expected 409, got {other:?}"),
    }
    match api.create(&PostParams::default(), &cache("c")).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    match api.get("missing").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let mut bad = cache("bad");
    bad.spec.image_cache_size = Some(5);
    match api.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(s.message.contains("spec.imageCacheSize"), "{}", s.message);
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

struct Ctx {
    api: Api<ImageCache>,
    recorder: Recorder,
    cleaned: Mutex<Vec<String>>,
}

#[derive(Debug)]
struct ReconcileError(String);

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReconcileError {}

async fn reconcile(obj: Arc<ImageCache>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let api = ctx.api.clone();
    finalizer(&api, "imc.test/cleanup", obj, |event| async {
        match event {
            Finalizer::Apply(o) => {
                let status = json!({
                    "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
                    "status": {"phase": "Ready", "progress": "100%", "observedGeneration": o.metadata.generation},
                });
                ctx.api
                    .patch_status(&o.name_any(), &PatchParams::apply("imc-test").force(), &Patch::Apply(status))
                    .await
                    .map_err(|e| ReconcileError(e.to_string()))?;
                ctx.recorder
                    .publish(
                        &RecEvent { type_: EventType::Normal, reason: "Built".into(), note: Some("cache built for the test".into()), action: "Build".into(), secondary: None },
                        &o.object_ref(&()),
                    )
                    .await
                    .map_err(|e| ReconcileError(e.to_string()))?;
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(o) => {
                ctx.cleaned.lock().unwrap().push(o.name_any());
                Ok::<_, ReconcileError>(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| ReconcileError(e.to_string()))
}

#[tokio::test]
async fn controller_with_finalizer_applies_and_cleans_up_and_events_show_in_describe() {
    let (s, client) = start(None).await;
    let api: Api<ImageCache> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        api: api.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "imc-test".into(),
                instance: None,
            },
        ),
        cleaned: Mutex::new(Vec::new()),
    });
    let controller = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(
                reconcile,
                |_, _, _| Action::requeue(Duration::from_secs(1)),
                ctx.clone(),
            )
            .for_each(|_| async {}),
    );
    api.create(&PostParams::default(), &cache("ctl"))
        .await
        .unwrap();
    let ready = tokio::time::timeout(GUARD, async {
        loop {
            let o = api.get("ctl").await.unwrap();
            let phase = o.status.as_ref().and_then(|s| s.phase).map(|p| p.as_str());
            if phase == Some("Ready") && o.finalizers().contains(&"imc.test/cleanup".to_owned()) {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("controller never made the cache Ready");
    assert_eq!(ready.status.unwrap().observed_generation, Some(1));
    assert_eq!(
        ready.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );

    let describe = s.kubectl(&["describe", "imc", "ctl"]).unwrap();
    let out = String::from_utf8_lossy(&describe.stdout);
    assert!(
        out.contains("Built") && out.contains("cache built for the test"),
        "{out}"
    );

    api.delete("ctl", &DeleteParams::default()).await.unwrap();
    tokio::time::timeout(GUARD, async {
        while api.get_opt("ctl").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("object never went away after cleanup");
    assert_eq!(*ctx.cleaned.lock().unwrap(), ["ctl"]);
    controller.abort();
}

#[tokio::test]
async fn owned_objects_are_collected_with_their_owner() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let (_s, client) = start(None).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let child: ConfigMap = serde_json::from_value(json!({"metadata": {
        "generateName": "child-",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()}],
    }}))
    .unwrap();
    let child = cms.create(&PostParams::default(), &child).await.unwrap();
    let child_name = child.name_any();
    assert!(child_name.starts_with("child-") && child_name.len() == "child-".len() + 5);
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    tokio::time::timeout(GUARD, async {
        while cms.get_opt(&child_name).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the dependent was never collected");
}

#[tokio::test]
async fn server_side_apply_removes_fields_its_manager_gave_up() {
    let (_s, client) = start(None).await;
    let api: Api<ImageCache> = Api::all(client);
    let pp = PatchParams::apply("imc-test").force();
    let spec = |retention: Option<i32>| {
        let mut spec = json!({"images": ["registry.example/ns/app:1"]});
        if let Some(r) = retention {
            spec["retentionDays"] = json!(r);
        }
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
            "metadata": {"name": "ssa", "labels": {"a": "1"}}, "spec": spec})
    };
    api.patch("ssa", &pp, &Patch::Apply(spec(Some(7))))
        .await
        .unwrap();
    let o = api
        .patch("ssa", &pp, &Patch::Apply(spec(None)))
        .await
        .unwrap();
    assert_eq!(o.spec.retention_days, None);
    assert_eq!(o.spec.image_cache_size, Some(20), "server defaults stay");
    assert_eq!(o.labels().get("a").map(String::as_str), Some("1"));

    let status = |s: serde_json::Value| json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache", "status": s});
    api.patch_status(
        "ssa",
        &pp,
        &Patch::Apply(status(
            json!({"phase": "Failed", "reason": "PullFailed", "message": "registry answered 500"}),
        )),
    )
    .await
    .unwrap();
    let o = api
        .patch_status(
            "ssa",
            &pp,
            &Patch::Apply(status(json!({"phase": "Ready", "progress": "100%"}))),
        )
        .await
        .unwrap();
    let st = o.status.unwrap();
    assert_eq!(
        (st.phase.map(|p| p.as_str()), st.reason, st.message),
        (Some("Ready"), None, None)
    );
    assert_eq!(
        o.spec.image_cache_size,
        Some(20),
        "a status apply leaves the spec alone"
    );
}

#[tokio::test]
async fn watch_follows_label_selection_and_sends_bookmarks() {
    let (_s, client) = start(None).await;
    let api: Api<ImageCache> = Api::all(client);
    let mut labelled = cache("sel");
    labelled.metadata.labels = Some([("team".to_owned(), "a".to_owned())].into());
    api.create(&PostParams::default(), &labelled).await.unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default().labels("team=a");
    let mut w = api.watch(&wp, &rv).await.unwrap().boxed();
    let relabel = |team: &str| Patch::Merge(json!({"metadata": {"labels": {"team": team}}}));
    api.patch("sel", &PatchParams::default(), &relabel("b"))
        .await
        .unwrap();
    api.patch("sel", &PatchParams::default(), &relabel("a"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut bookmark = None;
    while seen.len() < 2 || bookmark.is_none() {
        match tokio::time::timeout(GUARD, w.next()).await.unwrap() {
            Some(Ok(WatchEvent::Deleted(o))) => seen.push(format!("deleted {}", o.name_any())),
            Some(Ok(WatchEvent::Added(o))) => seen.push(format!("added {}", o.name_any())),
            Some(Ok(WatchEvent::Bookmark(b))) => bookmark = Some(b.metadata.resource_version),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["deleted sel", "added sel"]);
    let current = api.get("sel").await.unwrap().resource_version().unwrap();
    assert_eq!(
        bookmark.unwrap().parse::<u64>().unwrap(),
        current.parse::<u64>().unwrap()
    );
}

#[tokio::test]
async fn discovery_finds_image_cache_both_ways() {
    let (_s, client) = start(None).await;
    for discovery in [
        kube::Discovery::new(client.clone()).run().await.unwrap(),
        kube::Discovery::new(client.clone())
            .run_aggregated()
            .await
            .unwrap(),
    ] {
        let (ar, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(ar, _)| ar.kind == "ImageCache")
            .expect("ImageCache discovered");
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ar.plural.as_str()),
            ("eci.alibabacloud.com", "v1", "imagecaches")
        );
        assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    }
}

#[tokio::test]
async fn watcher_with_streaming_lists_gets_initial_state_then_changes() {
    let (_s, client) = start(None).await;
    let api: Api<ImageCache> = Api::all(client);
    api.create(&PostParams::default(), &cache("before"))
        .await
        .unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut stream = watcher::watcher(api.clone(), config).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(GUARD, stream.next()).await.unwrap() {
            Some(Ok(Event::InitApply(o))) => initial.push(o.name_any()),
            Some(Ok(Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["before"]);
    api.create(&PostParams::default(), &cache("after"))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(GUARD, stream.next()).await.unwrap() {
            Some(Ok(Event::Apply(o))) => {
                assert_eq!(o.name_any(), "after");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
