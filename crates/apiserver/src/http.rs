//! HTTP routing: bearer-token authentication, the discovery and OpenAPI endpoints, and the
//! resource paths (`/api/v1/...`, `/apis/GROUP/VERSION/...`) mapped onto [`ApiServer`] verbs.

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

use crate::discovery;
use crate::error::{ApiError, Result};
use crate::handler::{ApiServer, FieldValidation, ListOptions, WriteOptions, Written};
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
    /// The admin bearer token.
    pub token: String,
}

/// Rejects every request without the admin bearer token (401 Status).
pub async fn authenticate(
    State(state): State<Arc<HttpState>>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), state.token.as_bytes()));
    if !ok {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
pub async fn dispatch(
    State(state): State<Arc<HttpState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match route(&state, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::NotFound {
        kind: "path".into(),
        name: path.to_owned(),
    }
}

async fn route(
    state: &HttpState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let api = &state.api;
    let resources = api.resources();
    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => return Ok("ok".into_response()),
        ["metrics"] => {
            let text = api.metrics_text().ok_or_else(|| not_found_path(path))?;
            return Ok(
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
            );
        }
        ["version"] => return Ok(ok(discovery::version())),
        ["api" | "apis"] if discovery::wants_aggregated(accept_header(headers)) => {
            let doc = discovery::aggregated(resources, segs[0] == "api");
            return Ok((
                [(header::CONTENT_TYPE, discovery::AGGREGATED_V2)],
                doc.to_string(),
            )
                .into_response());
        }
        ["api"] => return Ok(ok(discovery::core_versions())),
        ["apis"] => return Ok(ok(discovery::groups(resources))),
        ["api", v] => {
            return discovery::resource_list(resources, "", v)
                .map(ok)
                .ok_or_else(|| not_found_path(path));
        }
        ["apis", g] => {
            return discovery::group(resources, g)
                .map(ok)
                .ok_or_else(|| not_found_path(path));
        }
        ["apis", g, v] => {
            return discovery::resource_list(resources, g, v)
                .map(ok)
                .ok_or_else(|| not_found_path(path));
        }
        ["openapi", "v3"] => return Ok(raw_json(api.openapi().root())),
        ["openapi", "v3", "api", v] => {
            return api
                .openapi()
                .group_version("", v)
                .map(raw_json)
                .ok_or_else(|| not_found_path(path));
        }
        ["openapi", "v3", "apis", g, v] => {
            return api
                .openapi()
                .group_version(g, v)
                .map(raw_json)
                .ok_or_else(|| not_found_path(path));
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Err(not_found_path(path)),
    };
    let target = match rest {
        ["namespaces", ns, plural, more @ ..]
            if resources
                .find(group, version, plural)
                .is_some_and(|d| d.namespaced) =>
        {
            Target {
                def: resources
                    .find(group, version, plural)
                    .ok_or_else(|| not_found_path(path))?,
                ns: Some((*ns).to_owned()),
                name: more.first().map(|s| (*s).to_owned()),
                sub: more.get(1).map(|s| (*s).to_owned()),
            }
        }
        [plural, more @ ..] => {
            let def = resources
                .find(group, version, plural)
                .ok_or_else(|| not_found_path(path))?;
            if def.namespaced && !more.is_empty() {
                return Err(not_found_path(path));
            }
            Target {
                def,
                ns: None,
                name: more.first().map(|s| (*s).to_owned()),
                sub: more.get(1).map(|s| (*s).to_owned()),
            }
        }
        [] => return Err(not_found_path(path)),
    };
    if rest.len() > 5 {
        return Err(not_found_path(path));
    }
    let def = target.def.clone();
    let ns = target.ns.as_deref();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let as_table = table::wants_table(accept);
    let include = Include::parse(query.get("includeObject").map(String::as_str));
    let sub = target.sub.as_deref();
    match sub {
        None | Some("status") => {}
        Some("log") if def.log_subresource => {}
        Some("binding") if def.binding_subresource => {}
        Some(other) => {
            return Err(ApiError::NotFound {
                kind: "subresource".into(),
                name: other.to_owned(),
            });
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let protobuf = content_type.contains("protobuf");
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    // kubectl asks for Strict by default (`--validate=strict`): unknown fields are refused, as
    // the Kubernetes API server does, so a typo in a manifest is not silently dropped.
    let field_validation =
        FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?;
    let write_options = |sub| WriteOptions {
        sub,
        manager: query.get("fieldManager").map(String::as_str),
        dry_run,
        field_validation,
        apply: false,
    };
    let parse_body = |body: &Bytes| -> Result<Value> {
        if protobuf {
            return crate::protobuf::decode_body(body);
        }
        serde_json::from_slice(body)
            .or_else(|_| serde_yaml::from_slice(body))
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
    };
    match (method, target.name.as_deref()) {
        (&Method::GET, None) => {
            let opts = list_options(&query)?;
            let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            if watching {
                return Ok(watch(
                    api.clone(),
                    def,
                    ns.map(str::to_owned),
                    opts,
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
            let obj = parse_body(&body)?;
            let created = api.create_with(&def, ns, obj, write_options(None)).await?;
            Ok(written_response(StatusCode::CREATED, created))
        }
        (&Method::DELETE, None) => {
            let opts = list_options(&query)?;
            let (items, rv) = api.list(&def, ns, &opts);
            let options = if body.is_empty() {
                json!({})
            } else {
                parse_body(&body)?
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
            let binding = parse_body(&body)?;
            let status = api.bind(&def, ns, name, &binding, dry_run).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (_, Some(_)) if sub == Some("binding") => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        ))),
        (&Method::GET, Some(name)) if sub == Some("log") => {
            let options = LogOptions::from_query(&query, name)?;
            let body = api.pod_logs(&def, ns, name, options).await?;
            Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
        }
        (&Method::GET, Some(name)) => {
            let obj = api.get(&def, ns, name)?;
            if as_table {
                return Ok(ok(table::table(&def, [&obj], None, include)));
            }
            Ok(ok(obj))
        }
        (&Method::PUT, Some(name)) => {
            let obj = parse_body(&body)?;
            let updated = api.update(&def, ns, name, obj, write_options(sub)).await?;
            Ok(written_response(StatusCode::OK, updated))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch_type = PatchType::from_content_type(ct)?;
            let patched = api
                .patch(&def, ns, name, patch_type, &body, write_options(sub))
                .await?;
            Ok(written_response(StatusCode::OK, patched))
        }
        (&Method::DELETE, Some(name)) => {
            let mut options = if body.is_empty() {
                json!({})
            } else {
                parse_body(&body)?
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
    query: &HashMap<String, String>,
    table: Option<Include>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, Infallible>>(256);
    let since = query.get("resourceVersion").cloned().unwrap_or_default();
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
        if since.is_empty() || since == "0" || initial_events {
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
            let Ok(from) = since.parse::<u64>() else {
                let _ = tx
                    .send(Ok(expired_line(&ApiError::BadRequest(format!(
                        "invalid resourceVersion {since:?}"
                    )))))
                    .await;
                return;
            };
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
