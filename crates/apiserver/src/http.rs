//! HTTP routing: authentication, authorization and in-flight admission of every request, the
//! discovery and OpenAPI endpoints, and the resource paths (`/api/v1/...`,
//! `/apis/GROUP/VERSION/...`) mapped onto [`ApiServer`] verbs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::authn::{Authenticator, User};
use crate::authz::{Attributes, Authorizer, ResourceAttributes};
use crate::body::{self, Format};
use crate::connections::Connection;
use crate::discovery;
use crate::error::{ApiError, Result};
use crate::handler::{ApiServer, FieldValidation, ListOptions, WriteOptions, Written};
use crate::inflight::{self, Class, Inflight};
use crate::logs::LogOptions;
use crate::patch::PatchType;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::EventType;
use crate::table::{self, Include};

/// Shared state of the HTTP layer.
pub struct HttpState {
    /// The API.
    pub api: Arc<ApiServer>,
    /// Who a request's bearer token belongs to.
    pub authn: Authenticator,
    /// What each user may do.
    pub authz: Authorizer,
    /// In-flight caps and request timeouts.
    pub inflight: Inflight,
}

/// Authenticates every request (401 Status without a valid bearer token), notes the user for
/// the handlers, and counts the request as open on its connection until its answer is sent.
pub async fn authenticate(
    State(state): State<Arc<HttpState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let conn = req.extensions().get::<Arc<Connection>>().cloned();
    let _open = conn.as_ref().map(Connection::open_request);
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(user) = state.authn.authenticate(header) else {
        return ApiError::Unauthorized.into_response();
    };
    if let Some(c) = &conn {
        c.prove();
    }
    req.extensions_mut().insert(user.clone());
    // Admission webhooks are told who the caller is.
    let response = crate::webhooks::as_caller(user, next.run(req)).await;
    match _open {
        Some(open) => crate::guarded_body::guard(response, open),
        None => response,
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// A JSON document already rendered.
fn raw_json(text: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        text.to_owned(),
    )
        .into_response()
}

fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

/// At most this much warning text goes into one answer (kube-apiserver's limit is 4 KiB).
const MAX_WARNINGS_BYTES: usize = 4096;

/// A written object, with each warning as a `Warning: 299 - "text"` header.
fn written_response(code: StatusCode, written: Written) -> Response {
    let mut response = json_response(code, &written.object);
    let mut budget = MAX_WARNINGS_BYTES;
    let mut seen = std::collections::HashSet::new();
    for text in written.warnings.iter().filter(|w| seen.insert(w.as_str())) {
        let Some(value) = warning_header(text) else {
            continue;
        };
        if value.len() > budget {
            break;
        }
        budget -= value.len();
        response.headers_mut().append(header::WARNING, value);
    }
    response
}

/// `299 - "text"`, with quotes and backslashes escaped and anything but printable ASCII
/// replaced, so the header is always valid.
fn warning_header(text: &str) -> Option<header::HeaderValue> {
    let mut quoted = String::with_capacity(text.len() + 8);
    quoted.push_str("299 - \"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            _ => quoted.push('?'),
        }
    }
    quoted.push('"');
    header::HeaderValue::from_str(&quoted).ok()
}

fn accept_header(headers: &HeaderMap) -> &str {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Where a resource request points.
struct Target {
    def: Arc<ResourceDef>,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// Every request after authentication.
pub async fn dispatch(State(state): State<Arc<HttpState>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let Some(user) = parts.extensions.get::<User>().cloned() else {
        return ApiError::Unauthorized.into_response();
    };
    // Only the streaming subresources upgrade (to WebSocket); the others ignore it.
    let upgrade = if parts.headers.contains_key(header::UPGRADE) {
        use axum::extract::FromRequestParts;
        axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .ok()
    } else {
        None
    };
    let request = Incoming {
        upgrade,
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        user,
    };
    match route(&state, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A request as the router sees it.
struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    user: User,
    /// A WebSocket upgrade the client asked for.
    upgrade: Option<axum::extract::ws::WebSocketUpgrade>,
}

/// kube-apiserver's answer to a path nothing serves: Go's plain `404 page not found` (kubectl
/// turns it into "the server could not find the requested resource").
fn page_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

/// Authorizes a non-resource request and takes its in-flight slot.
fn admit_path(state: &HttpState, req: &Incoming) -> Result<inflight::Slot> {
    let attrs = Attributes {
        verb: req.method.as_str().to_ascii_lowercase(),
        resource: None,
        path: req.uri.path().to_owned(),
    };
    state.authz.check(&req.user, &attrs)?;
    state.inflight.enter(Class::Read)
}

/// The authorization verb of a resource request.
fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET" | "HEAD", _) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

async fn route(state: &HttpState, req: Incoming) -> Result<Response> {
    let api = &state.api;
    let served = api.resources();
    let resources = &*served;
    let path = req.uri.path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query: HashMap<String, String> = Query::try_from_uri(&req.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let accept = accept_header(&req.headers).to_owned();
    // Everything but resources: discovery, OpenAPI, health, metrics.
    let non_resource = match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => Some(Ok("ok".into_response())),
        ["metrics"] => Some(
            api.metrics_text()
                .map(|text| {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                })
                .ok_or(()),
        ),
        ["version"] => Some(Ok(ok(discovery::version()))),
        ["api" | "apis"] if discovery::wants_aggregated(&accept) => {
            let doc = discovery::aggregated(resources, segs[0] == "api");
            Some(Ok((
                [(header::CONTENT_TYPE, discovery::AGGREGATED_V2)],
                doc.to_string(),
            )
                .into_response()))
        }
        ["api"] => Some(Ok(ok(discovery::core_versions()))),
        ["apis"] => Some(Ok(ok(discovery::groups(resources)))),
        ["api", v] => Some(discovery::resource_list(resources, "", v).map(ok).ok_or(())),
        ["apis", g] => Some(discovery::group(resources, g).map(ok).ok_or(())),
        ["apis", g, v] => Some(discovery::resource_list(resources, g, v).map(ok).ok_or(())),
        ["openapi", "v2"] if accept.contains("protobuf") => Some(Ok((
            [(header::CONTENT_TYPE, discovery::OPENAPI_V2_PROTOBUF)],
            api.openapi().v2_protobuf(),
        )
            .into_response())),
        ["openapi", "v2"] => Some(Ok(raw_json(api.openapi().v2()))),
        ["openapi", "v3"] => Some(Ok(raw_json(api.openapi().root()))),
        ["openapi", "v3", "api", v] => {
            Some(api.openapi().group_version("", v).map(raw_json).ok_or(()))
        }
        ["openapi", "v3", "apis", g, v] => {
            Some(api.openapi().group_version(g, v).map(raw_json).ok_or(()))
        }
        _ => None,
    };
    if let Some(answer) = non_resource {
        let _slot = admit_path(state, &req)?;
        return Ok(answer.unwrap_or_else(|()| page_not_found()));
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => {
            let _slot = admit_path(state, &req)?;
            return Ok(page_not_found());
        }
    };
    let target = match rest {
        ["namespaces", ns, plural, more @ ..]
            if resources
                .find(group, version, plural)
                .is_some_and(|d| d.namespaced) =>
        {
            resources.find(group, version, plural).map(|def| Target {
                def,
                ns: Some((*ns).to_owned()),
                name: more.first().map(|s| (*s).to_owned()),
                sub: more.get(1).map(|s| (*s).to_owned()),
            })
        }
        [plural, more @ ..] => resources
            .find(group, version, plural)
            .filter(|def| !def.namespaced || more.is_empty())
            .map(|def| Target {
                def,
                ns: None,
                name: more.first().map(|s| (*s).to_owned()),
                sub: more.get(1).map(|s| (*s).to_owned()),
            }),
        [] => None,
    };
    let Some(target) = target.filter(|_| rest.len() <= 5) else {
        let _slot = admit_path(state, &req)?;
        return Ok(page_not_found());
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let streaming = crate::streaming::Kind::of(&target.def, target.sub.as_deref())
        .filter(|_| target.name.is_some());
    // As kube-apiserver 1.31+ does, a streaming request (a WebSocket GET included) needs
    // `create` on the subresource.
    let verb = match streaming {
        Some(_) => "create",
        None => verb(&req.method, target.name.is_some(), watching),
    };
    let attrs = Attributes {
        verb: verb.to_owned(),
        resource: Some(ResourceAttributes {
            group: target.def.group.clone(),
            version: target.def.version.clone(),
            resource: target.def.plural.clone(),
            subresource: target.sub.clone().unwrap_or_default(),
            namespace: target.ns.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
        }),
        path: path.clone(),
    };
    state.authz.check(&req.user, &attrs)?;
    let class = Class::of(&req.method, watching, target.sub.as_deref());
    let slot = state.inflight.enter(class)?;
    if let (Some(kind), Some(name)) = (streaming, target.name.as_deref()) {
        let response = crate::streaming::serve(
            api,
            &target.def,
            target.ns.as_deref(),
            name,
            kind,
            &req.uri,
            req.upgrade,
        )
        .await?;
        drop(slot);
        return Ok(response);
    }
    if class == Class::LongRunning {
        let response = resource(state, req, target, query, &accept).await?;
        return Ok(inflight::hold_until_sent(response, slot));
    }
    let limit = state.inflight.time_limit(&query)?;
    let work = async move {
        match resource(state, req, target, query, &accept).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    };
    let response = Inflight::within(limit, work).await;
    drop(slot);
    Ok(response)
}

/// A resourceVersion as kube-apiserver parses it: empty or "0" is none, anything else an
/// unsigned 64-bit number (400 otherwise).
fn parse_resource_version(text: Option<&str>) -> Result<Option<u64>> {
    match text {
        None | Some("") | Some("0") => Ok(None),
        Some(t) => t.parse::<u64>().map(Some).map_err(|e| {
            ApiError::BadRequest(format!(
                "resourceVersion: Invalid value: {t:?}: strconv.ParseUint: parsing {t:?}: {}",
                if t.bytes().all(|b| b.is_ascii_digit()) {
                    "value out of range"
                } else {
                    let _ = e;
                    "invalid syntax"
                }
            ))
        }),
    }
}

/// How long a request for a resourceVersion newer than the store's waits for it, as
/// kube-apiserver's watch cache does, before answering 504.
const FUTURE_VERSION_WAIT: Duration = Duration::from_secs(3);

/// Waits (up to [`FUTURE_VERSION_WAIT`]) until the store has reached `rv`; kube-apiserver's
/// "Too large resource version" 504 otherwise.
async fn wait_for_version(api: &ApiServer, rv: u64) -> Result<()> {
    let mut changes = api.store.subscribe();
    let deadline = tokio::time::Instant::now() + FUTURE_VERSION_WAIT;
    loop {
        let current = api.store.current_rv();
        if current >= rv {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ApiError::Timeout {
                    message: format!("Too large resource version: {rv}, current: {current}"),
                    retry_after: Some(1),
                    cause: Some(("ResourceVersionTooLarge", "Too large resource version".into())),
                });
            }
            r = changes.recv() => if let Err(RecvError::Closed) = r {
                return Err(ApiError::Internal("the store stopped".into()));
            },
        }
    }
}

/// A resource request, authorized and admitted.
async fn resource(
    state: &HttpState,
    req: Incoming,
    target: Target,
    query: HashMap<String, String>,
    accept: &str,
) -> Result<Response> {
    let api = &state.api;
    let Incoming {
        method,
        headers,
        body: raw_body,
        user,
        ..
    } = req;
    let def = target.def.clone();
    let ns = target.ns.as_deref();
    let as_table = table::wants_table(accept);
    let include = Include::parse(query.get("includeObject").map(String::as_str));
    let sub = target.sub.as_deref();
    match sub {
        None | Some("status") => {}
        Some("log") if def.log_subresource => {}
        Some("binding") if def.binding_subresource => {}
        Some("token") if def.token_subresource => {}
        Some("scale") if def.scale.is_some() => {}
        Some(_) => return Ok(page_not_found()),
    }
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    // kubectl asks for Strict by default (`--validate=strict`): unknown fields are refused, as
    // the Kubernetes API server does, so a typo in a manifest is not silently dropped.
    let field_validation =
        FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?;
    // Without a fieldManager, a write is recorded under the client's user agent up to its first
    // `/`, as kube-apiserver does (`kubectl`, `kube-rs`, `imc`).
    let agent_manager = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(|m| m.chars().take(128).collect::<String>())
        .filter(|m| !m.is_empty());
    let explicit_manager = query.get("fieldManager").cloned();
    let manager = explicit_manager.clone().or(agent_manager);
    let force = query.get("force").is_some_and(|f| f == "true");
    let write_options = |sub| WriteOptions {
        sub,
        manager: manager.as_deref(),
        dry_run,
        field_validation,
        apply: false,
        force,
    };
    let needs_body = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let raw = if needs_body {
        body::read(&headers, raw_body).await?
    } else {
        Bytes::new()
    };
    let object_body = |raw: &Bytes| -> Result<Value> { body::decode(Format::of(&headers)?, raw) };
    if def.review {
        return match method {
            Method::POST => {
                let review = object_body(&raw)?;
                let answer = crate::reviews::answer(&def, review, &user, &state.authz)?;
                Ok(json_response(StatusCode::CREATED, &answer))
            }
            m => Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource: {m}"
            ))),
        };
    }
    match (&method, target.name.as_deref()) {
        (&Method::GET, None) => {
            let opts = list_options(&query)?;
            let since = parse_resource_version(query.get("resourceVersion").map(String::as_str))?;
            if let Some(rv) = since {
                wait_for_version(api, rv).await?;
            }
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return Ok(watch(
                    api.clone(),
                    def,
                    ns.map(str::to_owned),
                    opts,
                    since,
                    &query,
                    as_table.then_some(include),
                ));
            }
            let (items, rv) = api.list(&def, ns, &opts);
            if as_table {
                return Ok(ok(table::table(
                    &def,
                    items.iter().map(|o| &**o),
                    Some(rv),
                    include,
                )));
            }
            Ok(list_response(&def, &items, rv))
        }
        (&Method::POST, None) => {
            let obj = object_body(&raw)?;
            let created = api.create_with(&def, ns, obj, write_options(None)).await?;
            Ok(written_response(StatusCode::CREATED, created))
        }
        (&Method::DELETE, None) => {
            let opts = list_options(&query)?;
            let (items, rv) = api.list(&def, ns, &opts);
            let options = if raw.is_empty() {
                json!({})
            } else {
                object_body(&raw)?
            };
            let mut deleted = Vec::new();
            for item in items {
                let name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let ins = item
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match api.delete(&def, ins.as_deref(), &name, &options).await {
                    Ok(o) => deleted.push(o),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ok(
                json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
            ))
        }
        (&Method::POST, Some(name)) if sub == Some("binding") => {
            let binding = object_body(&raw)?;
            let status = api.bind(&def, ns, name, &binding, dry_run).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (&Method::POST, Some(name)) if sub == Some("token") => {
            let mut request = object_body(&raw)?;
            // Admission webhooks see a CREATE of serviceaccounts/token with the TokenRequest.
            crate::webhooks::dispatch::admit_subresource_create(
                api,
                &def,
                ns,
                name,
                "token",
                "TokenRequest",
                dry_run,
                &mut request,
            )
            .await?;
            let answer =
                crate::token_request::issue(api, state.authn.issuer(), &def, ns, name, request)?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        (_, Some(_)) if matches!(sub, Some("binding" | "token")) => {
            Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            )))
        }
        (&Method::GET, Some(name)) if sub == Some("scale") => {
            Ok(ok(api.get_scale(&def, ns, name)?))
        }
        (&Method::PUT, Some(name)) if sub == Some("scale") => {
            let scale = object_body(&raw)?;
            let options = write_options(None);
            Ok(ok(api
                .update_scale(&def, ns, name, &scale, options)
                .await?))
        }
        (&Method::PATCH, Some(name)) if sub == Some("scale") => {
            let patch_type = PatchType::from_content_type(&body::media_type(&headers))?;
            let options = write_options(None);
            let scale = api
                .patch_scale(&def, ns, name, patch_type, &raw, options)
                .await?;
            Ok(ok(scale))
        }
        (_, Some(_)) if sub == Some("scale") => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        ))),
        (&Method::GET, Some(name)) if sub == Some("log") => {
            let options = LogOptions::from_query(&query, name)?;
            let body = api.pod_logs(&def, ns, name, options).await?;
            Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
        }
        (&Method::GET, Some(name)) => {
            if let Some(rv) =
                parse_resource_version(query.get("resourceVersion").map(String::as_str))?
            {
                wait_for_version(api, rv).await?;
            }
            let obj = api.get(&def, ns, name)?;
            if as_table {
                return Ok(ok(table::table(&def, [&obj], None, include)));
            }
            Ok(ok(obj))
        }
        (&Method::PUT, Some(name)) => {
            let obj = object_body(&raw)?;
            let updated = api.update(&def, ns, name, obj, write_options(sub)).await?;
            Ok(written_response(StatusCode::OK, updated))
        }
        (&Method::PATCH, Some(name)) => {
            let patch_type = PatchType::from_content_type(&body::media_type(&headers))?;
            // An apply names its manager; kube-apiserver does not guess it.
            let options = match patch_type {
                PatchType::Apply => WriteOptions {
                    manager: explicit_manager.as_deref(),
                    ..write_options(sub)
                },
                _ => write_options(sub),
            };
            let patched = api.patch(&def, ns, name, patch_type, &raw, options).await?;
            Ok(written_response(StatusCode::OK, patched))
        }
        (&Method::DELETE, Some(name)) => {
            let mut options = if raw.is_empty() {
                json!({})
            } else {
                object_body(&raw)?
            };
            if dry_run && options.is_object() {
                options["dryRun"] = json!(["All"]);
            }
            Ok(ok(api.delete(&def, ns, name, &options).await?))
        }
        (m, _) => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {m}"
        ))),
    }
}

/// A List answer, written item by item so that a large list is never copied as a whole tree.
fn list_response(def: &ResourceDef, items: &[Arc<Value>], rv: u64) -> Response {
    let mut out = String::with_capacity(64 + items.len() * 512);
    out.push_str(&format!(
        r#"{{"kind":"{}List","apiVersion":"{}","metadata":{{"resourceVersion":"{rv}"}},"items":["#,
        def.kind,
        def.api_version()
    ));
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item.to_string());
    }
    out.push_str("]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response()
}

fn list_options(query: &HashMap<String, String>) -> Result<ListOptions> {
    Ok(ListOptions {
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?,
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn expired_line(e: &ApiError) -> Bytes {
    event_line("ERROR", &e.status())
}

/// A watch: replays from `resourceVersion` (or sends the current objects as ADDED), then streams
/// live changes, with BOOKMARKs when asked and an ERROR 410 once the version is compacted away.
fn watch(
    api: Arc<ApiServer>,
    def: Arc<ResourceDef>,
    ns: Option<String>,
    opts: ListOptions,
    since: Option<u64>,
    query: &HashMap<String, String>,
    table: Option<Include>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, Infallible>>(256);
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1800);
    tokio::spawn(async move {
        let res = def.storage_res();
        let ns = if def.namespaced { ns } else { None };
        let render = |obj: &Value| -> Value {
            let served = def.from_storage(obj);
            match table {
                Some(include) => table::table(&def, [&served], None, include),
                None => served,
            }
        };
        let in_scope = |key_ns: &str, obj: &Value| -> bool {
            ns.as_deref().is_none_or(|n| n == key_ns)
                && opts.labels.matches(obj)
                && opts.fields.matches(obj)
        };
        let mut live = api.store.subscribe();
        let mut seen: u64;
        if since.is_none() || initial_events {
            let (items, rv) = api.store.list(&res, ns.as_deref());
            seen = rv;
            for o in items {
                let served = def.from_storage(&o);
                if opts.labels.matches(&served)
                    && opts.fields.matches(&served)
                    && tx.send(Ok(event_line("ADDED", &render(&o)))).await.is_err()
                {
                    return;
                }
            }
            if initial_events && bookmarks {
                // Streaming list: this bookmark tells the client its initial state is complete.
                let mark = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx.send(Ok(event_line("BOOKMARK", &mark))).await.is_err() {
                    return;
                }
            }
        } else {
            let from = since.unwrap_or(0);
            match api.store.changes_since(&res, from).await {
                Err(e) => {
                    let _ = tx.send(Ok(expired_line(&e))).await;
                    return;
                }
                Ok(changes) => {
                    seen = from;
                    for c in changes {
                        seen = seen.max(c.rv);
                        let served = def.from_storage(&c.object);
                        if in_scope(&c.key.ns, &served)
                            && tx
                                .send(Ok(event_line(c.kind.as_str(), &render(&c.object))))
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let mark = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": seen.to_string()}});
                    if tx.send(Ok(event_line("BOOKMARK", &mark))).await.is_err() { return; }
                }
                change = live.recv() => match change {
                    Ok(c) => {
                        if c.rv <= seen { continue; }
                        seen = c.rv;
                        if c.key.res != res { continue; }
                        let served = def.from_storage(&c.object);
                        let now_in = in_scope(&c.key.ns, &served);
                        // An object moving into or out of the selection is ADDED or DELETED
                        // for this watcher, as in Kubernetes.
                        let was_in = c.previous.as_ref().map(|p| in_scope(&c.key.ns, &def.from_storage(p)));
                        let kind = match (c.kind, was_in, now_in) {
                            (EventType::Modified, Some(true), false) => "DELETED",
                            (EventType::Modified, Some(false), true) => "ADDED",
                            (_, _, false) => continue,
                            (EventType::Added, _, true) => "ADDED",
                            (EventType::Modified, _, true) => "MODIFIED",
                            (EventType::Deleted, _, true) => "DELETED",
                        };
                        if tx.send(Ok(event_line(kind, &render(&c.object)))).await.is_err() { return; }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(expired_line(&ApiError::Gone { requested: seen, oldest: api.store.current_rv() }))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
