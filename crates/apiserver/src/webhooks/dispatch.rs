//! Calling the configured webhooks for one write, as kube-apiserver's `MutatingAdmissionWebhook`
//! and `ValidatingAdmissionWebhook` plugins do: mutating webhooks one after the other (sorted by
//! configuration name, then webhook order), their JSON patches applied, `reinvocationPolicy:
//! IfNeeded` honoured; validating webhooks afterwards, all at once. `failurePolicy` decides
//! whether a webhook that cannot be called refuses the request or is skipped (logged).

use std::time::Duration;

use base64::Engine;
use kube::core::admission::Operation;
use serde_json::{Value, json};

use super::caller::{self, CallError, Endpoint};
use super::configuration::{self, DEFAULT_TIMEOUT_SECONDS, GROUP, MUTATING, VALIDATING};
use super::matcher::{self, RequestAttributes};
use crate::error::{ApiError, Result};
use crate::handler::ApiServer;
use crate::resources::ResourceDef;

/// One write as admission sees it.
#[derive(Clone)]
pub struct Write<'a> {
    /// The resource written.
    pub def: &'a ResourceDef,
    /// CREATE, UPDATE or DELETE.
    pub operation: Operation,
    /// The subresource (`status`), if any.
    pub sub: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// The object's namespace (None for cluster-scoped kinds).
    pub namespace: Option<&'a str>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The request's options (CreateOptions, UpdateOptions, DeleteOptions).
    pub options: Value,
    /// The kind of the object sent when it is not the resource's own (`Binding` for
    /// `pods/binding`); None for the resource's kind.
    pub object_kind: Option<&'a str>,
}

impl Write<'_> {
    fn operation_name(&self) -> &'static str {
        match self.operation {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }

    fn attributes(&self) -> RequestAttributes<'_> {
        RequestAttributes {
            operation: self.operation_name(),
            group: &self.def.group,
            version: &self.def.version,
            resource: &self.def.plural,
            sub: self.sub.unwrap_or(""),
            namespaced: self.def.namespaced,
        }
    }
}

/// The options of a create, update or patch, as the AdmissionReview carries them.
pub fn write_options(kind: &str, manager: Option<&str>, dry_run: bool) -> Value {
    let mut options = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if let Some(m) = manager {
        options["fieldManager"] = json!(m);
    }
    if dry_run {
        options["dryRun"] = json!(["All"]);
    }
    options
}

/// One configured webhook: its configuration's name and its entry of `webhooks[]`.
struct Webhook {
    spec: Value,
}

impl Webhook {
    fn name(&self) -> &str {
        self.spec.get("name").and_then(Value::as_str).unwrap_or("")
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.spec.get(key).and_then(Value::as_str)
    }

    fn ignores_failures(&self) -> bool {
        self.text("failurePolicy") == Some("Ignore")
    }

    fn timeout(&self) -> Duration {
        let secs = self
            .spec
            .get("timeoutSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
            .clamp(1, configuration::MAX_TIMEOUT_SECONDS);
        Duration::from_secs(secs.unsigned_abs())
    }

    fn ca_bundle(&self) -> Vec<u8> {
        self.spec
            .pointer("/clientConfig/caBundle")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default()
    }

    fn supports_dry_run(&self) -> bool {
        matches!(self.text("sideEffects"), Some("None" | "NoneOnDryRun"))
    }
}

/// The webhooks of every configuration of one kind, sorted by configuration name and then in
/// their order, as upstream calls them.
fn configured(api: &ApiServer, plural: &str) -> Vec<Webhook> {
    let (mut configs, _) = api.store.list(&format!("{GROUP}/{plural}"), None);
    configs.sort_by(|a, b| {
        let name = |o: &Value| {
            o.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        name(a).cmp(&name(b))
    });
    configs
        .iter()
        .flat_map(|c| {
            c.get("webhooks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|spec| Webhook { spec })
        .collect()
}

/// The labels `namespaceSelector` is evaluated on: the object's namespace's, a Namespace's own;
/// None for other cluster-scoped kinds (the selector does not apply to them).
fn namespace_labels(
    api: &ApiServer,
    w: &Write<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Option<serde_json::Map<String, Value>> {
    if w.def.group.is_empty() && w.def.plural == "namespaces" {
        return Some(matcher::labels_of(object.or(old)));
    }
    let ns = w.namespace.filter(|_| w.def.namespaced)?;
    let def = api.resources().find("", "v1", "namespaces")?;
    let stored = api.store.get(&ApiServer::key(&def, None, ns));
    Some(matcher::labels_of(stored.as_deref()))
}

/// Whether `hook` is to be called for this write.
fn applies(
    hook: &Webhook,
    w: &Write<'_>,
    ns_labels: Option<&serde_json::Map<String, Value>>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<bool> {
    if !matcher::webhook_rules_match(&hook.spec, &w.attributes()) {
        return Ok(false);
    }
    let bad_selector = |e: String| ApiError::Admission {
        code: 500,
        message: format!(
            "Internal error occurred: failed calling webhook {:?}: {e}",
            hook.name()
        ),
    };
    if let Some(labels) = ns_labels
        && !matcher::selector_matches(hook.spec.get("namespaceSelector"), labels)
            .map_err(bad_selector)?
    {
        return Ok(false);
    }
    let selector = hook.spec.get("objectSelector");
    for o in [object, old].into_iter().flatten() {
        if matcher::selector_matches(selector, &matcher::labels_of(Some(o)))
            .map_err(bad_selector)?
        {
            return Ok(true);
        }
    }
    Ok(object.is_none() && old.is_none())
}

/// Where the webhook is reached: its `url`, or its Service (the ClusterIP and port when the
/// server serves Services and the Service has one, else the Service's DNS name).
fn endpoint(api: &ApiServer, hook: &Webhook) -> std::result::Result<Endpoint, CallError> {
    let config = hook.spec.get("clientConfig").unwrap_or(&Value::Null);
    if let Some(url) = config.get("url").and_then(Value::as_str) {
        // Validated on create; checked again where it is used.
        if let Some(problem) = configuration::url_problem(url) {
            return Err(CallError::Transport {
                url: url.to_owned(),
                reason: problem.to_owned(),
            });
        }
        return Ok(Endpoint {
            url: url.to_owned(),
            resolve: None,
        });
    }
    let service = config.get("service").unwrap_or(&Value::Null);
    let text = |k: &str| service.get(k).and_then(Value::as_str).unwrap_or("");
    let (ns, name) = (text("namespace"), text("name"));
    // Validated on create; checked again here since they become a host name.
    if !crate::names::dns_label(ns).is_empty() || !crate::names::dns_label(name).is_empty() {
        return Err(CallError::Transport {
            url: format!("https://{name}.{ns}.svc"),
            reason: "invalid service reference".into(),
        });
    }
    let port = service
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(443);
    let host = format!("{name}.{ns}.svc");
    let url = format!("https://{host}:{port}{}", text("path"));
    let cluster_ip = api
        .resources()
        .find("", "v1", "services")
        .and_then(|def| api.store.get(&ApiServer::key(&def, Some(ns), name)))
        .and_then(|s| {
            s.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        });
    Ok(Endpoint {
        url,
        resolve: cluster_ip.map(|ip| (host, std::net::SocketAddr::new(ip, port))),
    })
}

/// The userInfo of the request's caller.
fn user_info() -> Value {
    match super::caller_user() {
        Some(u) => {
            let mut info = json!({"username": u.name, "groups": u.groups});
            if !u.uid.is_empty() {
                info["uid"] = json!(u.uid);
            }
            if !u.extra.is_empty() {
                info["extra"] = json!(u.extra);
            }
            info
        }
        None => {
            json!({"username": super::SERVER_USER, "groups": ["system:masters", "system:authenticated"]})
        }
    }
}

fn review(w: &Write<'_>, uid: &str, object: Option<&Value>, old: Option<&Value>) -> Value {
    let def = w.def;
    let kind = json!({"group": def.group, "version": def.version,
        "kind": w.object_kind.unwrap_or(&def.kind)});
    let resource = json!({"group": def.group, "version": def.version, "resource": def.plural});
    let mut request = json!({
        "uid": uid,
        "kind": kind, "requestKind": kind,
        "resource": resource, "requestResource": resource,
        "name": w.name,
        "operation": w.operation_name(),
        "userInfo": user_info(),
        "object": object,
        "oldObject": old,
        "dryRun": w.dry_run,
        "options": w.options,
    });
    if let Some(sub) = w.sub {
        request["subResource"] = json!(sub);
        request["requestSubResource"] = json!(sub);
    }
    if let Some(ns) = w.namespace.filter(|_| def.namespaced) {
        request["namespace"] = json!(ns);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// What a webhook answered that the request goes on with.
struct Answer {
    /// The JSON patch to apply (mutating webhooks only).
    patch: Option<Value>,
    warnings: Vec<String>,
}

fn internal(message: String) -> ApiError {
    ApiError::Admission {
        code: 500,
        message: format!("Internal error occurred: {message}"),
    }
}

/// Calls one webhook. Err: the request is refused (a denial, or a failure under
/// `failurePolicy: Fail`); Ok(None): the call failed and `failurePolicy: Ignore` skips it.
async fn call_one(
    api: &ApiServer,
    hook: &Webhook,
    w: &Write<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
    mutating: bool,
) -> Result<Option<Answer>> {
    let name = hook.name().to_owned();
    if w.dry_run && !hook.supports_dry_run() {
        return Err(ApiError::Admission {
            code: 400,
            message: format!("admission webhook {name:?} does not support dry run"),
        });
    }
    let uid = crate::handler::new_uid();
    let body = review(w, &uid, object, old);
    let answered = match endpoint(api, hook) {
        Ok(endpoint) => {
            let result = caller::call(&endpoint, &hook.ca_bundle(), hook.timeout(), &body).await;
            match (result, &endpoint.resolve) {
                (Err(CallError::Transport { url, reason }), None)
                    if hook.spec.pointer("/clientConfig/service").is_some() =>
                {
                    Err(CallError::Transport {
                        url,
                        reason: format!(
                            "{reason} (this server has no ClusterIP for the Service, so its name must resolve through DNS)"
                        ),
                    })
                }
                (r, _) => r,
            }
        }
        Err(e) => Err(e),
    };
    let response = answered.and_then(|v| check_response(v, &uid));
    let response = match response {
        Ok(r) => r,
        Err(e) if hook.ignores_failures() => {
            tracing::warn!(webhook = %name, error = %e, "failed calling webhook, failing open (failurePolicy Ignore)");
            return Ok(None);
        }
        Err(e) => return Err(internal(format!("failed calling webhook {name:?}: {e}"))),
    };
    let warnings: Vec<String> = response
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if response.get("allowed") != Some(&Value::Bool(true)) {
        return Err(denied(&name, response.get("status")));
    }
    // A patch matters from a mutating webhook on an object only (ignored otherwise, as upstream).
    let patch = match response.get("patch").and_then(Value::as_str) {
        _ if !mutating || object.is_none() => None,
        None => None,
        Some(encoded) => {
            match response.get("patchType").and_then(Value::as_str) {
                Some("JSONPatch") => {}
                other => {
                    return Err(internal(format!(
                        "admission webhook {name:?} returned a patch of unsupported patchType {other:?}"
                    )));
                }
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| {
                    internal(format!(
                        "admission webhook {name:?} returned a patch that is not base64: {e}"
                    ))
                })?;
            Some(crate::body::json(&bytes, "the webhook's patch")?)
        }
    };
    Ok(Some(Answer { patch, warnings }))
}

/// The `response` of an AdmissionReview answer, checked to be the answer to request `uid`.
fn check_response(answer: Value, uid: &str) -> std::result::Result<Value, CallError> {
    let Some(Value::Object(mut review)) = Some(answer) else {
        return Err(CallError::InvalidResponse("not a JSON object".into()));
    };
    let Some(response) = review.remove("response").filter(Value::is_object) else {
        return Err(CallError::InvalidResponse(
            "webhook response was absent".into(),
        ));
    };
    let got = response.get("uid").and_then(Value::as_str).unwrap_or("");
    if got != uid {
        return Err(CallError::InvalidResponse(format!(
            "expected response.uid={uid:?}, got {got:?}"
        )));
    }
    Ok(response)
}

/// A webhook's refusal as kube-apiserver words it (`webhookerrors.ToStatusErr`).
pub fn denied(name: &str, status: Option<&Value>) -> ApiError {
    let text = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .unwrap_or(400);
    let by = format!("admission webhook {name:?} denied the request");
    let message = match (text("message"), text("reason")) {
        (m, _) if !m.is_empty() => format!("{by}: {m}"),
        (_, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    ApiError::Admission { code, message }
}

/// Admits the CREATE of a subresource whose body is another kind (`pods/binding` takes a
/// `Binding`, `serviceaccounts/token` a `TokenRequest`): the mutating webhooks may patch `body`,
/// then the validating webhooks see it. Their warnings.
#[allow(clippy::too_many_arguments)]
pub async fn admit_subresource_create(
    api: &ApiServer,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    sub: &str,
    kind: &str,
    dry_run: bool,
    body: &mut Value,
) -> Result<Vec<String>> {
    let write = Write {
        def,
        operation: Operation::Create,
        sub: Some(sub),
        name,
        namespace: ns,
        dry_run,
        options: write_options("CreateOptions", None, dry_run),
        object_kind: Some(kind),
    };
    let mut warnings = mutate(api, &write, body, None).await?;
    warnings.extend(validate(api, &write, Some(body), None).await?);
    Ok(warnings)
}

/// Refuses a patch that changed what identifies the object.
fn check_identity(name: &str, before: &Value, after: &Value) -> Result<()> {
    for pointer in [
        "/metadata/name",
        "/metadata/namespace",
        "/kind",
        "/apiVersion",
    ] {
        if before.pointer(pointer) != after.pointer(pointer) {
            return Err(internal(format!(
                "admission webhook {name:?} may not change {}",
                pointer.trim_start_matches('/').replace('/', ".")
            )));
        }
    }
    Ok(())
}

/// Calls the mutating webhooks for a create or update, applying their patches to `object` in
/// turn (and once more to those with `reinvocationPolicy: IfNeeded` when a later one changed
/// the object); the warnings they returned.
pub async fn mutate(
    api: &ApiServer,
    w: &Write<'_>,
    object: &mut Value,
    old: Option<&Value>,
) -> Result<Vec<String>> {
    if configuration::is_configuration(w.def) {
        return Ok(Vec::new());
    }
    let hooks = configured(api, MUTATING);
    if hooks.is_empty() {
        return Ok(Vec::new());
    }
    let ns_labels = namespace_labels(api, w, Some(object), old);
    let mut warnings = Vec::new();
    // The object as each webhook left it; None for webhooks not called.
    let mut after: Vec<Option<Value>> = Vec::with_capacity(hooks.len());
    for hook in &hooks {
        if !applies(hook, w, ns_labels.as_ref(), Some(object), old)? {
            after.push(None);
            continue;
        }
        run_mutating(api, hook, w, object, old, &mut warnings).await?;
        after.push(Some(object.clone()));
    }
    for (hook, seen) in hooks.iter().zip(after) {
        let reinvoke = hook.text("reinvocationPolicy") == Some("IfNeeded")
            && seen.is_some_and(|s| s != *object);
        if reinvoke && applies(hook, w, ns_labels.as_ref(), Some(object), old)? {
            run_mutating(api, hook, w, object, old, &mut warnings).await?;
        }
    }
    Ok(warnings)
}

async fn run_mutating(
    api: &ApiServer,
    hook: &Webhook,
    w: &Write<'_>,
    object: &mut Value,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let Some(answer) = call_one(api, hook, w, Some(object), old, true).await? else {
        return Ok(());
    };
    warnings.extend(answer.warnings);
    if let Some(patch) = answer.patch {
        let before = object.clone();
        crate::patch::json(object, &patch)?;
        check_identity(hook.name(), &before, object)?;
    }
    Ok(())
}

/// Calls the validating webhooks (all at once) for a write; `object` is None for a delete.
/// For a delete the mutating webhooks are called first, one after the other, as upstream
/// (their patches have nothing to apply to).
pub async fn validate(
    api: &ApiServer,
    w: &Write<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<Vec<String>> {
    if configuration::is_configuration(w.def) {
        return Ok(Vec::new());
    }
    let mutating = if object.is_none() {
        configured(api, MUTATING)
    } else {
        Vec::new()
    };
    let validating = configured(api, VALIDATING);
    if mutating.is_empty() && validating.is_empty() {
        return Ok(Vec::new());
    }
    let ns_labels = namespace_labels(api, w, object, old);
    let mut warnings = Vec::new();
    for hook in &mutating {
        if applies(hook, w, ns_labels.as_ref(), object, old)?
            && let Some(a) = call_one(api, hook, w, object, old, true).await?
        {
            warnings.extend(a.warnings);
        }
    }
    let mut calls = Vec::new();
    for hook in &validating {
        if applies(hook, w, ns_labels.as_ref(), object, old)? {
            calls.push(call_one(api, hook, w, object, old, false));
        }
    }
    for answer in futures::future::join_all(calls).await {
        if let Some(a) = answer? {
            warnings.extend(a.warnings);
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_worded_as_upstream() {
        // (status, code, message)
        let table = [
            (
                json!({"code": 403, "message": "no"}),
                403,
                "admission webhook \"a.b.c\" denied the request: no",
            ),
            (
                json!({"message": "no"}),
                400,
                "admission webhook \"a.b.c\" denied the request: no",
            ),
            (
                json!({"code": 200, "reason": "Because"}),
                400,
                "admission webhook \"a.b.c\" denied the request: Because",
            ),
            (
                json!({}),
                400,
                "admission webhook \"a.b.c\" denied the request without explanation",
            ),
        ];
        for (status, code, message) in table {
            match denied("a.b.c", Some(&status)) {
                ApiError::Admission {
                    code: c,
                    message: m,
                } => {
                    assert_eq!((c, m.as_str()), (code, message), "{status}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn answers_must_carry_the_request_uid() {
        let ok = json!({"response": {"uid": "u1", "allowed": true}});
        assert!(check_response(ok, "u1").is_ok());
        let wrong = json!({"response": {"uid": "u2", "allowed": true}});
        let e = check_response(wrong, "u1").unwrap_err().to_string();
        assert!(e.contains("expected response.uid=\"u1\""), "{e}");
        let e = check_response(json!({"kind": "AdmissionReview"}), "u1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhook response was absent"), "{e}");
    }
}
