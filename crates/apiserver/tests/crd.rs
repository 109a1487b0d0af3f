//! CustomResourceDefinitions through a real HTTPS listener and kube-rs: a CRD's kind is served
//! within the write that creates it, validated by its structural schema (one cause per field),
//! defaulted and pruned, served in every served version, and gone with its objects once the
//! CRD is deleted; imc's own ImageCache comes through the same path.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::Discovery;
use serde_json::{Value, json};

mod support;
use support::start;

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true,
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["color"], "properties": {
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1}}},
                    "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}},
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            ]}}))
    .unwrap()
}

fn widgets(client: &kube::Client, version: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", version, "Widget"),
        "widgets",
    );
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec}))
    .unwrap()
}

fn causes(r: kube::Result<DynamicObject>) -> Vec<String> {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.details
                .map(|d| {
                    d.causes
                        .into_iter()
                        .map(|c| format!("{}: {}", c.field, c.message))
                        .collect()
                })
                .unwrap_or_default()
        }
        other => panic!("expected 422, got {other:?}"),
    }
}

async fn discovery_lacks(client: &kube::Client, group: &str) -> bool {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    discovery.get(group).is_none()
}

fn condition(crd: &CustomResourceDefinition, type_: &str) -> Option<String> {
    crd.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

#[tokio::test]
async fn a_crd_serves_its_kind_within_the_create_and_validates_defaults_and_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = start(dir.path()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let created = crds
        .create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    assert_eq!(condition(&created, "Established").as_deref(), Some("True"));
    assert_eq!(
        condition(&created, "NamesAccepted").as_deref(),
        Some("True")
    );
    let status = created.status.as_ref().unwrap();
    assert_eq!(
        status.stored_versions.as_deref(),
        Some(&["v1".to_owned()][..])
    );
    assert_eq!(
        status.accepted_names.as_ref().unwrap().list_kind.as_deref(),
        Some("WidgetList")
    );

    // Served at once: discovery lists both versions, v1 preferred; the scale paths recorded.
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery.get("example.com").expect("group discovered");
    assert_eq!(group.preferred_version_or_latest(), "v1");
    let versions: Vec<_> = group.versions().collect();
    assert_eq!(versions, ["v1", "v1beta1"]);
    let def = api
        .resources()
        .find("example.com", "v1", "widgets")
        .unwrap();
    let scale = def.scale.as_ref().expect("scale subresource recorded");
    assert_eq!(
        (scale.spec_replicas.as_str(), scale.status_replicas.as_str()),
        (".spec.replicas", ".status.replicas")
    );

    // Defaulted and pruned on create; status dropped (status subresource).
    let w = widgets(&client, "v1");
    let mut obj = widget("a", json!({"color": "red", "shade": "dark"}));
    obj.data["status"] = json!({"replicas": 5});
    let made = w.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(made.data["spec"], json!({"color": "red", "replicas": 1}));
    assert!(made.data.get("status").is_none());

    // One cause per bad field, in kube-apiserver's words.
    let bad = w
        .create(
            &PostParams::default(),
            &widget("b", json!({"color": "green", "replicas": 50})),
        )
        .await;
    assert_eq!(
        causes(bad),
        [
            "spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\"",
            "spec.replicas: Invalid value: 50: spec.replicas in body should be less than or equal to 10",
        ]
    );
    let missing = w
        .create(&PostParams::default(), &widget("c", json!({})))
        .await;
    assert_eq!(causes(missing), ["spec.color: Required value"]);

    // The other served version reads the same object with its own apiVersion.
    let beta = widgets(&client, "v1beta1").get("a").await.unwrap();
    assert_eq!(beta.types.unwrap().api_version, "example.com/v1beta1");

    // Status through the status subresource only.
    let mut with_status = w.get("a").await.unwrap();
    with_status.data["status"] = json!({"replicas": 3});
    w.replace_status("a", &PostParams::default(), &with_status)
        .await
        .unwrap();
    // The status is checked against the schema too.
    let mut bad_status = w.get("a").await.unwrap();
    bad_status.data["status"] = json!({"replicas": "three"});
    assert_eq!(
        causes(
            w.replace_status("a", &PostParams::default(), &bad_status)
                .await
        ),
        [
            "status.replicas: Invalid value: \"string\": status.replicas in body must be of type integer: \"string\""
        ]
    );
    let mut main = w.get("a").await.unwrap();
    main.data["status"] = json!({"replicas": 9});
    main.data["spec"]["color"] = json!("blue");
    let replaced = w.replace("a", &PostParams::default(), &main).await.unwrap();
    assert_eq!(replaced.data["status"]["replicas"], 3);
    assert_eq!(replaced.data["spec"]["color"], "blue");

    // Deleting the CRD deletes its objects, then the CRD, then the kind.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while crds.get_opt("widgets.example.com").await.unwrap().is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the CRD was never removed");
    assert!(
        api.resources()
            .find("example.com", "v1", "widgets")
            .is_none()
    );
    assert!(discovery_lacks(&client, "example.com").await);
    // Defined again, the kind starts empty: the objects went with the CRD.
    crds.create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    assert!(w.list(&Default::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn crds_that_break_the_rules_are_refused_with_kube_causes() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, client) = start(dir.path()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let create = |v: Value| {
        let crds = crds.clone();
        async move {
            let crd: CustomResourceDefinition = serde_json::from_value(v).unwrap();
            match crds.create(&PostParams::default(), &crd).await {
                Err(kube::Error::Api(s)) => s
                    .details
                    .unwrap()
                    .causes
                    .into_iter()
                    .map(|c| format!("{}: {}", c.field, c.message))
                    .collect::<Vec<_>>(),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    let mut bad_name = serde_json::to_value(widget_crd()).unwrap();
    bad_name["metadata"]["name"] = json!("gadgets.example.com");
    assert_eq!(
        create(bad_name).await,
        [
            "metadata.name: Invalid value: \"gadgets.example.com\": must be spec.names.plural+\".\"+spec.group"
        ]
    );
    let mut untyped = serde_json::to_value(widget_crd()).unwrap();
    untyped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["size"] = json!({"description": "no type"});
    assert_eq!(
        create(untyped).await,
        [
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[size].type: Required value: must not be empty for specified object fields"
        ]
    );
    let mut unique = serde_json::to_value(widget_crd()).unwrap();
    unique["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["tags"] = json!({"type": "array", "uniqueItems": true, "items": {"type": "string"}});
    assert_eq!(
        create(unique).await,
        [
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[tags].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ]
    );
}

#[tokio::test]
async fn image_cache_is_a_crd_and_its_schema_alone_refuses_a_small_size() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = start(dir.path()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let ic = crds.get("imagecaches.eci.alibabacloud.com").await.unwrap();
    assert_eq!(condition(&ic, "Established").as_deref(), Some("True"));
    // The schema alone, without the Rust strategy, as a real API server with this CRD.
    let crd = imc_apiserver::crd::crd_value(&imc_api::image_cache::crd());
    let schema_only = imc_apiserver::crd::served_defs(&crd, None).remove(0);
    let obj = json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache", "metadata": {"name": "x"},
        "spec": {"images": ["nginx:1", "NOT A REF"], "imageCacheSize": 5, "retentionDays": 0,
                 "imagePullSecrets": ["default"]}});
    let fields: Vec<String> = schema_only
        .strategy
        .validate(&obj)
        .into_iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    assert_eq!(
        fields,
        [
            "spec.imageCacheSize: Invalid value: 5: spec.imageCacheSize in body should be greater than or equal to 20".to_owned(),
            format!("spec.imagePullSecrets[0]: Invalid value: \"default\": spec.imagePullSecrets[0] in body should match '{}'", imc_api::image_cache::SECRET_REF_PATTERN),
            format!("spec.images[1]: Invalid value: \"NOT A REF\": spec.images[1] in body should match '{}'", imc_api::image_cache::IMAGE_PATTERN),
            "spec.retentionDays: Invalid value: 0: spec.retentionDays in body should be greater than or equal to 1".to_owned(),
        ]
    );
    // The served kind keeps the Rust strategy's defaults and messages.
    let served = api
        .resources()
        .find("eci.alibabacloud.com", "v1", "imagecaches")
        .unwrap();
    let mut o = json!({"spec": {"images": ["nginx:1"]}});
    served.strategy.default(&mut o);
    assert_eq!(o["spec"]["imageCacheSize"], 20);
}

#[tokio::test]
async fn server_side_apply_merges_lists_as_the_crd_schema_says() {
    use kube::api::{Patch, PatchParams};
    let dir = tempfile::tempdir().unwrap();
    let (_api, client) = start(dir.path()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = serde_json::to_value(widget_crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["ports"] = json!({
        "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}});
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["hosts"] = json!({
        "type": "array", "items": {"type": "string"}});
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(crd).unwrap(),
    )
    .await
    .unwrap();
    let w = widgets(&client, "v1");
    let apply = |manager: &'static str, spec: Value| {
        let w = w.clone();
        async move {
            let body = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "a"}, "spec": spec});
            w.patch("a", &PatchParams::apply(manager), &Patch::Apply(body))
                .await
                .unwrap()
        }
    };
    apply(
        "one",
        json!({"color": "red", "ports": [{"name": "http", "port": 80}], "hosts": ["a"]}),
    )
    .await;
    let merged = apply("two", json!({"ports": [{"name": "https", "port": 443}]})).await;
    // `ports` is a map list keyed by name: both managers' entries stay.
    assert_eq!(
        merged.data["spec"]["ports"],
        json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}])
    );
    // `hosts` has no list type, so it is atomic: another manager's list conflicts with the
    // first manager's instead of merging.
    let conflict = w
        .patch(
            "a",
            &PatchParams::apply("three"),
            &Patch::Apply(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "a"}, "spec": {"hosts": ["c"]}})),
        )
        .await;
    match conflict {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn a_terminating_crd_waits_for_finalized_objects_and_refuses_new_ones() {
    use kube::api::{Patch, PatchParams};
    let dir = tempfile::tempdir().unwrap();
    let (_api, client) = start(dir.path()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    let w = widgets(&client, "v1");
    let mut held = widget("held", json!({"color": "red"}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    w.create(&PostParams::default(), &held).await.unwrap();
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    // The object is marked for deletion but held by its finalizer; so is the CRD.
    let crd = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let obj = w.get("held").await.unwrap();
            if obj.metadata.deletion_timestamp.is_some() {
                return crds.get("widgets.example.com").await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the object was never marked for deletion");
    assert_eq!(condition(&crd, "Terminating").as_deref(), Some("True"));
    match w
        .create(
            &PostParams::default(),
            &widget("new", json!({"color": "red"})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 405);
            assert_eq!(
                s.message,
                "create not allowed while custom resource definition is terminating"
            );
        }
        other => panic!("expected 405, got {other:?}"),
    }
    // The finalizer removed, the object goes, then the CRD.
    w.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while crds.get_opt("widgets.example.com").await.unwrap().is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the CRD was never removed");
}
