//! Discovery (`/api`, `/apis`, group versions), `/version` and the OpenAPI v3 documents kubectl
//! reads for field validation and `kubectl explain`. All are derived from the resource table.

use serde_json::{Value, json};

use crate::resources::{ResourceDef, Resources};

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32",
        "gitVersion": format!("v1.32.0+imc-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "", "compiler": "rustc", "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

/// `/apis`.
pub fn groups(resources: &Resources) -> Value {
    let groups: Vec<Value> = resources
        .groups()
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`.
pub fn group(resources: &Resources, group: &str) -> Option<Value> {
    let (g, versions) = resources.groups().into_iter().find(|(g, _)| g == group)?;
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": vs, "preferredVersion": vs[0]}),
    )
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
pub fn resource_list(resources: &Resources, group: &str, version: &str) -> Option<Value> {
    let defs = resources.in_group_version(group, version);
    if defs.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for d in &defs {
        let mut r = json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": d.verbs,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        list.push(r);
        if d.token_subresource {
            list.push(json!({"name": format!("{}/token", d.plural), "singularName": "", "namespaced": d.namespaced, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
        if d.status_subresource {
            list.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
        }
        if d.log_subresource {
            list.push(json!({"name": format!("{}/log", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get"]}));
        }
        if d.scale.is_some() {
            list.push(json!({"name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if d.binding_subresource {
            list.push(json!({"name": format!("{}/binding", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": "Binding", "verbs": ["create"]}));
        }
    }
    let gv = defs[0].api_version();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// The media type of the protobuf OpenAPI v2 document.
pub const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The media type of aggregated discovery (`/api`, `/apis` with kubectl's first Accept).
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|t| {
        let params: Vec<&str> = t.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// Aggregated discovery: every group (core only, for `/api`; the others, for `/apis`) with its
/// versions and resources in one document.
pub fn aggregated(resources: &Resources, core: bool) -> Value {
    let groups: Vec<(String, Vec<String>)> = if core {
        vec![("".into(), vec!["v1".into()])]
    } else {
        resources.groups()
    };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let rs: Vec<Value> = resources
                        .in_group_version(&g, v)
                        .iter()
                        .map(|d| {
                            let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
                            let mut subs = Vec::new();
                            if d.status_subresource {
                                subs.push(json!({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]}));
                            }
                            if d.log_subresource {
                                subs.push(json!({"subresource": "log", "responseKind": {"group": "", "version": "", "kind": ""}, "verbs": ["get"]}));
                            }
                            if d.scale.is_some() {
                                subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                            }
                            if d.binding_subresource {
                                subs.push(json!({"subresource": "binding", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]}));
                            }
                            if d.token_subresource {
                                subs.push(json!({"subresource": "token", "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
                            }
                            let mut r = json!({
                                "resource": d.plural,
                                "responseKind": gvk,
                                "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": d.singular,
                                "verbs": d.verbs,
                            });
                            if !d.short_names.is_empty() {
                                r["shortNames"] = json!(d.short_names);
                            }
                            if !d.categories.is_empty() {
                                r["categories"] = json!(d.categories);
                            }
                            if !subs.is_empty() {
                                r["subresources"] = json!(subs);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": rs, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// FNV-1a, enough to change the document hash when the served schemas change.
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// The OpenAPI v3 documents, rendered once: the served kinds do not change while a server runs.
pub struct OpenApiDocs {
    root: String,
    docs: std::collections::HashMap<String, String>,
}

impl OpenApiDocs {
    /// Renders the root and every group version's document.
    pub fn render(resources: &Resources) -> Self {
        let mut docs = std::collections::HashMap::new();
        let mut gvs: Vec<(String, String)> = vec![("".into(), "v1".into())];
        for (g, vs) in resources.groups() {
            gvs.extend(vs.into_iter().map(|v| (g.clone(), v)));
        }
        for (g, v) in gvs {
            if let Some(doc) = openapi_gv(resources, &g, &v) {
                docs.insert(gv_path(&g, &v), doc.to_string());
            }
        }
        OpenApiDocs {
            root: openapi_root(resources).to_string(),
            docs,
        }
    }

    /// `/openapi/v3`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `/openapi/v2`: a Swagger 2.0 document without definitions. kubectl validates kinds of
    /// a group version OpenAPI v3 does not list (an unserved `apps/v1 Deployment`, a `v1 List`)
    /// against it; finding no schema there it skips validation, as with kube-apiserver for an
    /// unknown kind, and then reports what kube-apiserver makes it report: `no matches for kind
    /// "Deployment" in version "apps/v1"`, or creates the List's items one by one. The served
    /// kinds' schemas are in the v3 documents, which kubectl prefers.
    pub fn v2(&self) -> &str {
        r#"{"swagger":"2.0","info":{"title":"Kubernetes","version":"v1.32.0"},"paths":{},"definitions":{}}"#
    }

    /// The same document in the protobuf encoding kubectl asks for (gnostic's
    /// `openapi_v2.Document`: `swagger`, `info.title`, `info.version`).
    pub fn v2_protobuf(&self) -> Vec<u8> {
        fn field(no: u8, payload: &[u8]) -> Vec<u8> {
            let mut v = vec![(no << 3) | 2, payload.len() as u8];
            v.extend_from_slice(payload);
            v
        }
        let info = [field(1, b"Kubernetes"), field(2, b"v1.32.0")].concat();
        [field(1, b"2.0"), field(2, &info)].concat()
    }

    /// `/openapi/v3/api/v1` (group "") or `/openapi/v3/apis/GROUP/VERSION`.
    pub fn group_version(&self, group: &str, version: &str) -> Option<&str> {
        self.docs.get(&gv_path(group, version)).map(String::as_str)
    }
}

/// `/openapi/v3`: where each group version's document is.
pub fn openapi_root(resources: &Resources) -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(String, String)> = vec![("".into(), "v1".into())];
    for (g, vs) in resources.groups() {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    for (g, v) in gvs {
        let hash = openapi_gv(resources, &g, &v)
            .map(|d| fnv(&d.to_string()))
            .unwrap_or_default();
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// The component schema name of a kind, in Kubernetes' reversed-domain style.
fn schema_name(d: &ResourceDef) -> String {
    let group = if d.group.is_empty() {
        "io.k8s.api.core".to_owned()
    } else {
        d.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{group}.{}.{}", d.version, d.kind)
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/GROUP/VERSION`.
pub fn openapi_gv(resources: &Resources, group: &str, version: &str) -> Option<Value> {
    let defs = resources.in_group_version(group, version);
    if defs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for d in &defs {
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let name = schema_name(d);
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let body = json!({"content": {"application/json": {"schema": reference}}});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let field_validation = json!({"name": "fieldValidation", "in": "query", "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.", "schema": {"type": "string", "uniqueItems": true}});
        let mut patch_types = serde_json::Map::new();
        for ct in [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ] {
            patch_types.insert(ct.into(), json!({"schema": {"type": "object"}}));
        }
        // Strategic merge patch is accepted for built-in kinds but not advertised here: the
        // schemas served are permissive, so kubectl must compute its patches from its own
        // compiled-in types rather than from this document.
        let base = format!("/{}", gv_path(&d.group, &d.version));
        let prefix = if d.namespaced {
            format!("{base}/namespaces/{{namespace}}")
        } else {
            base
        };
        let item = format!("{prefix}/{}/{{name}}", d.plural);
        if d.review {
            paths.insert(
                format!("{prefix}/{}", d.plural),
                json!({"post": {"operationId": format!("create{}", d.kind), "requestBody": body, "responses": ok, "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk}}),
            );
        } else {
            paths.insert(
            format!("{prefix}/{}", d.plural),
            json!({
                "get": {"operationId": format!("list{}", d.kind), "responses": ok, "x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk},
                "post": {"operationId": format!("create{}", d.kind), "parameters": [field_validation], "requestBody": body, "responses": ok, "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk},
            }),
        );
            paths.insert(
            item.clone(),
            json!({
                "get": {"operationId": format!("read{}", d.kind), "responses": ok, "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
                "put": {"operationId": format!("replace{}", d.kind), "parameters": [field_validation], "requestBody": body, "responses": ok, "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk},
                "patch": {"operationId": format!("patch{}", d.kind), "parameters": [field_validation], "requestBody": {"content": patch_types}, "responses": ok, "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk},
                "delete": {"operationId": format!("delete{}", d.kind), "responses": ok, "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk},
            }),
        );
        }
        for (component, schema) in d.schema.components.iter() {
            schemas
                .entry(component.clone())
                .or_insert_with(|| schema.clone());
        }
        let mut schema = d.schema.root.clone();
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_is_chosen_by_accept() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        let mut r = Resources::builtin();
        r.register(crate::strategies::image_cache::def());
        let doc = aggregated(&r, false);
        let list: kube::client::APIGroupDiscoveryList = serde_json::from_value(doc).unwrap();
        let eci = list
            .items
            .iter()
            .find(|g| {
                g.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some("eci.alibabacloud.com")
            })
            .unwrap();
        let r = &eci.versions[0].resources[0];
        assert_eq!(
            (r.resource.as_deref(), r.scope.as_deref()),
            (Some("imagecaches"), Some("Cluster"))
        );
        assert_eq!(r.short_names, ["imc"]);
    }

    #[test]
    fn image_cache_is_discoverable_with_its_short_name_and_schema() {
        let mut r = Resources::builtin();
        r.register(crate::strategies::image_cache::def());
        let list = resource_list(&r, "eci.alibabacloud.com", "v1").unwrap();
        let rs = list["resources"].as_array().unwrap();
        assert_eq!(rs[0]["shortNames"], json!(["imc"]));
        assert_eq!(rs[1]["name"], "imagecaches/status");
        let doc = openapi_gv(&r, "eci.alibabacloud.com", "v1").unwrap();
        let s = &doc["components"]["schemas"]["com.alibabacloud.eci.v1.ImageCache"];
        assert!(s["properties"]["spec"]["properties"]["images"].is_object());
        let core = resource_list(&r, "", "v1").unwrap();
        let binding = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/binding")
            .unwrap();
        assert_eq!(
            (&binding["kind"], &binding["verbs"]),
            (&json!("Binding"), &json!(["create"]))
        );
        let root = openapi_root(&r);
        assert!(root["paths"]["apis/eci.alibabacloud.com/v1"]["serverRelativeURL"].is_string());
    }
}
