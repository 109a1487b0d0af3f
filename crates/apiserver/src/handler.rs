//! The REST verbs over the resource table: create, get, list, update, patch, delete, and the
//! object bookkeeping Kubernetes does on each (uid, timestamps, generation, finalizers, owner
//! garbage collection).

use std::sync::{Arc, RwLock, Weak};

use kube::core::admission::Operation;
use rand::Rng;
use serde_json::{Value, json};

use crate::admission::Admission;
use crate::clock;
use crate::error::{ApiError, Cause, Result};
use crate::logs::{LogOptions, PodLogs};
use crate::managed_fields::{self, ApplyRequest, Scope};
use crate::names;
use crate::patch::{self, PatchType};
use crate::pod_security::PodSecurity;
use crate::resources::{ResourceDef, Resources};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Expect, Key, Store};
use crate::strategies::{FollowUp, NameRule};
use crate::webhooks::dispatch::{self as webhooks, write_options};

/// The API server's state: store, served resources, admission hooks and the log provider.
pub struct ApiServer {
    pub(crate) store: Store,
    /// The served kinds; replaced whole when a custom resource definition changes.
    resources: RwLock<Arc<Resources>>,
    /// Custom resource definitions' Rust strategies and cleanups ([`crate::crd`]).
    pub(crate) custom: crate::crd::registry::Registry,
    admission: Admission,
    pod_security: PodSecurity,
    openapi: RwLock<Option<Arc<crate::discovery::OpenApiDocs>>>,
    /// Counts changes of the served kinds (so a stale OpenAPI rendering is not kept).
    kinds_version: std::sync::atomic::AtomicU64,
    logs: RwLock<Option<Arc<dyn PodLogs>>>,
    streams: RwLock<Option<Arc<dyn crate::streaming::PodStreams>>>,
    metrics: RwLock<Option<MetricsFn>>,
    me: Weak<ApiServer>,
}

/// Renders the Prometheus text exposition served at `/metrics`.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A new random UID in the UUID v4 format.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        ["8", "9", "a", "b"][usize::from(b[8] & 3)],
        &h[17..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn rv_of(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The field manager of what the server writes on its own (namespaces and service accounts it
/// creates).
const SERVER_MANAGER: &str = "imc-server";

/// The 400 of an apply without a field manager, in kube-apiserver's words.
fn apply_needs_manager() -> ApiError {
    ApiError::BadRequest("fieldManager is required for apply requests".into())
}

/// An apply body without what the server, not the client, decides.
fn apply_config(body: &Value) -> Value {
    let mut config = body.clone();
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    config
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// A label name or value part: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn is_label_part(s: &str) -> bool {
    names::label_value(s).is_empty()
}

/// A qualified key: `[prefix/]name`, the prefix a DNS subdomain.
fn is_qualified_key(k: &str) -> bool {
    names::qualified_name(k).is_empty()
}

/// Label and annotation keys and label values Kubernetes would refuse, one cause each.
fn label_causes(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let invalid = |field: &str, message: String| Cause {
        field: field.to_owned(),
        reason: "FieldValueInvalid".into(),
        message,
    };
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_key(k) {
                causes.push(invalid("metadata.labels", format!("{k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', at most 63 characters, with an optional DNS subdomain prefix and '/'")));
            }
            match v.as_str() {
                Some(v) if is_label_part(v) => {}
                _ => causes.push(invalid("metadata.labels", format!("{v}: a valid label value must be at most 63 characters of alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric"))),
            }
        }
    }
    if let Some(annotations) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in annotations {
            if !is_qualified_key(k) {
                causes.push(invalid("metadata.annotations", format!("{k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', with an optional DNS subdomain prefix and '/'")));
            }
            if !v.is_string() {
                causes.push(invalid(
                    "metadata.annotations",
                    format!("{k:?}: annotation values must be strings"),
                ));
            }
        }
    }
    causes
}

/// How fields a kind does not declare are treated (`fieldValidation`): dropped silently,
/// dropped with a warning (the default, as in Kubernetes), or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Dropped.
    Ignore,
    /// Dropped, each named in a `Warning` header.
    #[default]
    Warn,
    /// The request is refused (400) naming them.
    Strict,
}

impl FieldValidation {
    /// Parses the `fieldValidation` query parameter (absent: `Warn`).
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is invalid: valid values are Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Where a write goes, who sends it, whether it is only tried (`dryRun`), and how unknown
/// fields are treated.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions<'a> {
    /// `Some("status")` for the status subresource.
    pub sub: Option<&'a str>,
    /// The `fieldManager` (required for server-side apply).
    pub manager: Option<&'a str>,
    /// `dryRun=All`: everything but storing.
    pub dry_run: bool,
    /// Unknown fields: dropped, warned about, or refused.
    pub field_validation: FieldValidation,
    /// The write is a server-side apply (its refusals are worded as such).
    pub apply: bool,
    /// A server-side apply takes fields other managers own instead of refusing (`force=true`).
    pub force: bool,
}

/// A stored (or, with `dryRun`, computed) object and the warnings for the client.
#[derive(Debug, Clone)]
pub struct Written {
    /// The object as stored.
    pub object: Value,
    /// `Warning` header texts (unknown fields dropped, PodSecurity `warn`).
    pub warnings: Vec<String>,
}

/// Query options of a list or watch.
#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl ListOptions {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

impl ApiServer {
    /// State over `store` serving `resources`, with Pod Security Admission's defaults.
    pub fn new(store: Store, resources: Resources, pod_security: PodSecurity) -> Arc<Self> {
        Arc::new_cyclic(|me| ApiServer {
            store,
            resources: RwLock::new(Arc::new(resources)),
            custom: crate::crd::registry::Registry::default(),
            admission: Admission::default(),
            pod_security,
            openapi: RwLock::new(None),
            kinds_version: std::sync::atomic::AtomicU64::new(0),
            logs: RwLock::new(None),
            streams: RwLock::new(None),
            metrics: RwLock::new(None),
            me: me.clone(),
        })
    }

    /// Where controllers register admission functions.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Installs the provider of `exec`, `attach` and `portforward` (the node).
    pub fn set_pod_streams(&self, streams: Arc<dyn crate::streaming::PodStreams>) {
        *self.streams.write().unwrap_or_else(|e| e.into_inner()) = Some(streams);
    }

    /// The installed provider of the streaming subresources.
    pub(crate) fn pod_streams(&self) -> Option<Arc<dyn crate::streaming::PodStreams>> {
        self.streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs the provider of pod logs (the node).
    pub fn set_pod_logs(&self, logs: Arc<dyn PodLogs>) {
        *self.logs.write().unwrap_or_else(|e| e.into_inner()) = Some(logs);
    }

    /// Installs the provider of `/metrics` (Prometheus text; served behind the same token).
    pub fn set_metrics(&self, metrics: MetricsFn) {
        *self.metrics.write().unwrap_or_else(|e| e.into_inner()) = Some(metrics);
    }

    /// The `/metrics` text, when a provider is installed.
    pub fn metrics_text(&self) -> Option<String> {
        let f = self
            .metrics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        f.map(|f| f())
    }

    /// The OpenAPI v3 documents of the served resources (rendered on first use after each
    /// change of the served kinds).
    pub fn openapi(&self) -> Arc<crate::discovery::OpenApiDocs> {
        if let Some(docs) = self
            .openapi
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return docs;
        }
        // Never holds both locks: the kinds' version tells whether they changed meanwhile.
        let version = self.kinds_version.load(std::sync::atomic::Ordering::SeqCst);
        let resources = self.resources();
        let docs = Arc::new(crate::discovery::OpenApiDocs::render(&resources));
        let mut slot = self.openapi.write().unwrap_or_else(|e| e.into_inner());
        if self.kinds_version.load(std::sync::atomic::Ordering::SeqCst) == version {
            *slot = Some(docs.clone());
        }
        docs
    }

    /// The served resources (a snapshot: custom resource definitions change them).
    pub fn resources(&self) -> Arc<Resources> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the served kinds with `change` (which returns whether it changed anything).
    pub(crate) fn change_resources(&self, change: impl FnOnce(&mut Resources) -> bool) {
        {
            let mut slot = self.resources.write().unwrap_or_else(|e| e.into_inner());
            let mut next = (**slot).clone();
            if !change(&mut next) {
                return;
            }
            *slot = Arc::new(next);
            self.kinds_version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        *self.openapi.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn key(def: &ResourceDef, ns: Option<&str>, name: &str) -> Key {
        Key {
            res: def.storage_res(),
            ns: if def.namespaced {
                ns.unwrap_or("").to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    pub(crate) fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::NotFound {
            kind: def.qualified(),
            name: name.to_owned(),
        }
    }

    /// The current object, in the resource's served form.
    pub fn get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Value> {
        self.store
            .get(&Self::key(def, ns, name))
            .map(|o| def.from_storage(&o))
            .ok_or_else(|| Self::not_found(def, name))
    }

    /// Matching objects and the resourceVersion the list is consistent at.
    pub fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> (Vec<Arc<Value>>, u64) {
        let ns = if def.namespaced { ns } else { None };
        let (items, rv) = self.store.list(&def.storage_res(), ns);
        let items = items
            .into_iter()
            // Shared, not copied, unless the served form differs from the stored one.
            .map(|o| def.from_storage_shared(o))
            .filter(|o| opts.matches(o))
            .collect();
        (items, rv)
    }

    fn check_namespace(&self, def: &ResourceDef, ns: Option<&str>) -> Result<()> {
        if !def.namespaced {
            return Ok(());
        }
        let ns = ns.ok_or_else(|| {
            ApiError::BadRequest("the namespace of the object must be set".into())
        })?;
        let key = Key {
            res: "/namespaces".into(),
            ns: String::new(),
            name: ns.to_owned(),
        };
        match self.store.get(&key) {
            None => Err(ApiError::NotFound {
                kind: "namespaces".into(),
                name: ns.to_owned(),
            }),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                Err(ApiError::Forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<()> {
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        };
        let api_version = def.api_version();
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != api_version => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => {}
        }
        match map.get("kind").and_then(Value::as_str) {
            Some(k) if k != def.kind => {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    def.kind
                )));
            }
            _ => {}
        }
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(def.kind));
        if !map.get("metadata").is_some_and(Value::is_object) {
            map.insert("metadata".into(), json!({}));
        }
        Ok(())
    }

    /// Fields of `obj` its kind does not declare: refused (`Strict`), or dropped and, with
    /// `Warn`, named in `warnings`.
    fn decode_fields(
        def: &ResourceDef,
        obj: &mut Value,
        opts: &WriteOptions<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        if opts.field_validation == FieldValidation::Strict {
            let unknown = def.schema.unknown_fields(obj);
            if unknown.is_empty() {
                return Ok(());
            }
            return Err(ApiError::BadRequest(if opts.apply {
                let name = meta_str(obj, "name").unwrap_or("");
                let key = match meta_str(obj, "namespace") {
                    Some(ns) if def.namespaced => format!("{ns}/{name}"),
                    _ => name.to_owned(),
                };
                format!(
                    "failed to create typed patch object ({key}; {}/{}, Kind={}): {}",
                    def.group,
                    def.version,
                    def.kind,
                    unknown
                        .iter()
                        .map(|f| format!(".{f}: field not declared in schema"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!(
                    "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {fields}",
                    kind = def.kind,
                    version = def.version,
                    fields = unknown
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }));
        }
        let dropped = def.schema.prune(obj);
        if opts.field_validation == FieldValidation::Warn {
            warnings.extend(dropped.iter().map(|f| format!("unknown field \"{f}\"")));
        }
        Ok(())
    }

    fn validate(def: &ResourceDef, obj: &Value) -> Result<()> {
        let name = meta_str(obj, "name").unwrap_or("");
        let mut causes = Vec::new();
        let (problems, rule) = match def.strategy.name_rule() {
            NameRule::DnsLabel => (names::dns_label(name), "label"),
            NameRule::DnsSubdomain => (names::dns_subdomain(name), "subdomain"),
        };
        if name.is_empty() {
            causes.push(Cause {
                field: "metadata.name".into(),
                reason: "FieldValueRequired".into(),
                message: "Required value: name or generateName is required".into(),
            });
        } else if !problems.is_empty() {
            causes.push(Cause {
                field: "metadata.name".into(),
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 {rule} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            });
        }
        causes.extend(label_causes(obj));
        causes.extend(def.strategy.validate(obj));
        Self::invalid_if_any(def, name, causes)
    }

    fn invalid_if_any(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> Result<()> {
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: def.kind.clone(),
                name: name.to_owned(),
                causes,
            })
        }
    }

    /// The admission built into the server (Pod Security Admission); its warnings.
    fn builtin_admission(
        &self,
        def: &ResourceDef,
        sub: Option<&str>,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<Vec<String>> {
        if sub.is_some() {
            return Ok(Vec::new());
        }
        self.pod_security.admit(def, &self.store, obj, old)
    }

    /// The ServiceAccount admission plugin on a new pod of namespace `ns`
    /// ([`crate::service_account_admission`]).
    fn admit_service_account(&self, pod: &mut Value, ns: &str) -> Result<()> {
        let Some(accounts) = self.resources().find("", "v1", "serviceaccounts") else {
            return Ok(());
        };
        crate::service_account_admission::admit(pod, ns, |name| {
            self.store
                .get(&Self::key(&accounts, Some(ns), name))
                .map(|o| (*o).clone())
        })
    }

    /// Creates an object (POST).
    pub async fn create(&self, def: &ResourceDef, ns: Option<&str>, obj: Value) -> Result<Value> {
        self.create_with(def, ns, obj, WriteOptions::default())
            .await
            .map(|w| w.object)
    }

    /// Creates an object on behalf of a field manager, or only tries to (`dryRun=All`).
    pub async fn create_with(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        obj: Value,
        target: WriteOptions<'_>,
    ) -> Result<Written> {
        self.create_inner(def, ns, obj, false, target).await
    }

    /// Creates an object; `keep_managed` keeps the managedFields server-side apply computed,
    /// otherwise every field is recorded as set by the target's manager.
    async fn create_inner(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        keep_managed: bool,
        target: WriteOptions<'_>,
    ) -> Result<Written> {
        let dry_run = target.dry_run;
        if let Some(reason) = def.strategy.create_refused() {
            return Err(ApiError::MethodNotAllowed(reason));
        }
        Self::check_type(def, &mut obj)?;
        let mut decode_warnings = Vec::new();
        Self::decode_fields(def, &mut obj, &target, &mut decode_warnings)?;
        // An empty namespace in the body is none (kubectl's typed generators send "").
        let body_ns = meta_str(&obj, "namespace")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let ns = if def.namespaced {
            match (ns, body_ns.as_deref()) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ApiError::BadRequest(format!(
                        "the namespace of the provided object ({b}) does not match the namespace sent on the request ({a})"
                    )));
                }
                (Some(a), _) => Some(a.to_owned()),
                (None, b) => b.map(str::to_owned),
            }
        } else {
            None
        };
        self.check_namespace(def, ns.as_deref())?;
        let generate = meta_str(&obj, "generateName").map(str::to_owned);
        let explicit = meta_str(&obj, "name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut o = obj.clone();
            let name = match (&explicit, &generate) {
                (Some(n), _) => n.clone(),
                (None, Some(g)) => format!("{g}{}", random_suffix()),
                (None, None) => String::new(),
            };
            {
                let meta = o["metadata"]
                    .as_object_mut()
                    .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
                meta.insert("name".into(), json!(name));
                match &ns {
                    Some(n) => meta.insert("namespace".into(), json!(n)),
                    None => meta.remove("namespace"),
                };
                for f in [
                    "resourceVersion",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "selfLink",
                ] {
                    meta.remove(f);
                }
                if !keep_managed {
                    meta.remove("managedFields");
                }
                meta.insert("uid".into(), json!(new_uid()));
                meta.insert("creationTimestamp".into(), json!(clock::now_time()));
                meta.insert("generation".into(), json!(1));
            }
            // As kube-apiserver: defaults (decoding), mutating admission (its output defaulted
            // again), the strategy's create preparation, validation, validating admission.
            def.strategy.default(&mut o);
            // The client owns what it sent, defaults included, as in Kubernetes; what admission
            // and the strategy add afterwards belongs to no one.
            let sent = o.clone();
            if def.group.is_empty() && def.plural == "pods" {
                self.admit_service_account(&mut o, ns.as_deref().unwrap_or(""))?;
            }
            self.admission
                .mutate(def, Operation::Create, None, &mut o, None)?;
            let hook_write = webhooks::Write {
                def,
                operation: Operation::Create,
                sub: None,
                name: &name,
                namespace: ns.as_deref(),
                dry_run,
                options: write_options("CreateOptions", target.manager, dry_run),
                object_kind: None,
            };
            let mut hook_warnings = webhooks::mutate(self, &hook_write, &mut o, None).await?;
            def.strategy.default(&mut o);
            def.strategy.prepare_for_create(&mut o);
            Self::validate(def, &o)?;
            // Given back on any failure below (dropped), kept once stored.
            let reservation = def
                .strategy
                .allocate(&mut o, None, dry_run)
                .or_else(|causes| {
                    Self::invalid_if_any(def, &name, causes)
                        .map(|()| crate::service_ips::Reservation::none())
                })?;
            let mut warnings = decode_warnings.clone();
            warnings.extend(self.builtin_admission(def, None, &o, None)?);
            self.admission
                .validate(def, Operation::Create, None, &mut o, None)?;
            hook_warnings.extend(webhooks::validate(self, &hook_write, Some(&o), None).await?);
            warnings.extend(hook_warnings);
            if !keep_managed {
                o = self.record_fields(def, &json!({}), &sent, o, None, target.manager);
            }
            let key = Self::key(def, ns.as_deref(), &name);
            if dry_run {
                if self.store.get(&key).is_some() {
                    return Err(ApiError::AlreadyExists {
                        kind: def.qualified(),
                        name,
                    });
                }
                return Ok(Written {
                    object: o,
                    warnings,
                });
            }
            let stored = def.to_storage(o.clone());
            if def.strategy.absorbs()
                && let Some(object) = self.absorb(def, ns.as_deref(), &stored).await
            {
                return Ok(Written { object, warnings });
            }
            match self
                .store
                .write(key, Some(stored), Expect::Absent, &def.qualified())
                .await
            {
                Err(ApiError::AlreadyExists { .. }) if explicit.is_none() && attempts < 5 => {
                    continue;
                }
                Err(e) => return Err(e),
                Ok(saved) => {
                    reservation.keep();
                    let object = def.from_storage(&saved);
                    def.strategy.after_write(self, &object, false);
                    for follow_up in def.strategy.after_create(&object) {
                        Box::pin(self.follow_up(follow_up)).await?;
                    }
                    return Ok(Written { object, warnings });
                }
            }
        }
    }

    /// Counts a new object (stored form) on an existing one like it, when the kind's strategy
    /// says it is the same (a repeated Event); the updated object in served form.
    async fn absorb(&self, def: &ResourceDef, ns: Option<&str>, new: &Value) -> Option<Value> {
        let (existing, _) = self.store.list(&def.storage_res(), ns);
        for e in existing {
            let Some(updated) = def.strategy.absorb(new, &e) else {
                continue;
            };
            let key = Key {
                res: def.storage_res(),
                ns: ns.unwrap_or("").to_owned(),
                name: meta_str(&e, "name").unwrap_or("").to_owned(),
            };
            // Changed meanwhile: the new object is simply created.
            return self
                .store
                .write(
                    key,
                    Some(updated),
                    Expect::Version(rv_of(&e)),
                    &def.qualified(),
                )
                .await
                .ok()
                .map(|saved| def.from_storage(&saved));
        }
        None
    }

    /// Does what a strategy asked for along with a write.
    async fn follow_up(&self, follow_up: FollowUp) -> Result<()> {
        match follow_up {
            FollowUp::CreateCore {
                plural,
                namespace,
                object,
            } => {
                let Some(def) = self.resources().find("", "v1", plural) else {
                    return Ok(());
                };
                match self.create(&def, Some(&namespace), object).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Makes sure `default` and `kube-system` exist (first start).
    pub async fn bootstrap(&self) -> Result<()> {
        let Some(ns) = self.resources().find("", "v1", "namespaces") else {
            return Ok(());
        };
        for name in ["default", "kube-system", "kube-public"] {
            // Those present are not created again: a start never goes through admission (a
            // webhook that is down would otherwise stop the server from starting).
            if self.store.get(&Self::key(&ns, None, name)).is_some() {
                continue;
            }
            match self
                .create(&ns, None, json!({"metadata": {"name": name}}))
                .await
            {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Computes the object to store when `incoming` replaces `old` through the main resource
    /// or the status subresource, and the warnings of admission. None means the object is to
    /// be removed (deleting, and its last finalizer is gone), and what the strategy reserved for
    /// it (to keep once stored).
    async fn prepare_update(
        &self,
        def: &ResourceDef,
        old: &Value,
        mut incoming: Value,
        target: WriteOptions<'_>,
    ) -> Result<(Option<Value>, Vec<String>, crate::service_ips::Reservation)> {
        let sub = target.sub;
        Self::check_type(def, &mut incoming)?;
        let name = meta_str(old, "name").unwrap_or("").to_owned();
        if let Some(n) = meta_str(&incoming, "name")
            && n != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let mut new = if sub == Some("status") {
            let mut new = old.clone();
            if let Some(m) = incoming.pointer("/metadata/managedFields") {
                new["metadata"]["managedFields"] = m.clone();
            }
            match incoming.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new
        } else {
            if def.status_subresource
                && let Some(m) = incoming.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            if let (Some(meta), Some(old_meta)) = (
                incoming.get_mut("metadata").and_then(Value::as_object_mut),
                old.get("metadata").and_then(Value::as_object),
            ) {
                for f in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "resourceVersion",
                ] {
                    match old_meta.get(f) {
                        Some(v) => meta.insert(f.into(), v.clone()),
                        None => meta.remove(f),
                    };
                }
            }
            def.strategy.default(&mut incoming);
            def.strategy.prepare_for_update(&mut incoming, old);
            incoming
        };
        if spec_part(&new) != spec_part(old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        self.admission
            .mutate(def, Operation::Update, sub, &mut new, Some(old))?;
        let hook_write = webhooks::Write {
            def,
            operation: Operation::Update,
            sub,
            name: &name,
            namespace: meta_str(old, "namespace"),
            dry_run: target.dry_run,
            options: write_options("UpdateOptions", target.manager, target.dry_run),
            object_kind: None,
        };
        let mut hook_warnings = webhooks::mutate(self, &hook_write, &mut new, Some(old)).await?;
        let mut warnings = Vec::new();
        let mut reservation = crate::service_ips::Reservation::none();
        if sub != Some("status") {
            Self::validate(def, &new)?;
            let name = meta_str(&new, "name").unwrap_or("").to_owned();
            Self::invalid_if_any(def, &name, def.strategy.validate_update(&new, old))?;
            reservation = def
                .strategy
                .allocate(&mut new, Some(old), target.dry_run)
                .or_else(|causes| {
                    Self::invalid_if_any(def, &name, causes)
                        .map(|()| crate::service_ips::Reservation::none())
                })?;
            warnings = self.builtin_admission(def, sub, &new, Some(old))?;
        } else {
            let name = meta_str(&new, "name").unwrap_or("").to_owned();
            Self::invalid_if_any(def, &name, def.strategy.validate_status(&new))?;
        }
        self.admission
            .validate(def, Operation::Update, sub, &mut new, Some(old))?;
        hook_warnings.extend(webhooks::validate(self, &hook_write, Some(&new), Some(old)).await?);
        warnings.extend(hook_warnings);
        // Removing the last finalizer removes a deleted object, but a pod still in its grace
        // period (marked for its node, no finalizers) stays until the node deletes it with
        // grace 0, so the node's status writes during shutdown remain visible (as in Kubernetes).
        let in_grace = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0);
        if new.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers_empty(&new)
            && !in_grace
            && !def.strategy.held(&new)
        {
            return Ok((None, warnings, reservation));
        }
        Ok((Some(new), warnings, reservation))
    }

    /// Replaces an object (PUT), through the main resource or the `status` subresource.
    pub async fn update(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut incoming: Value,
        target: WriteOptions<'_>,
    ) -> Result<Written> {
        let WriteOptions {
            sub,
            dry_run,
            manager,
            ..
        } = target;
        let mut warnings = Vec::new();
        Self::decode_fields(def, &mut incoming, &target, &mut warnings)?;
        let key = Self::key(def, ns, name);
        let current = self
            .store
            .get(&key)
            .ok_or_else(|| Self::not_found(def, name))?;
        let expect = match rv_of(&incoming) {
            0 => rv_of(&current),
            v => v,
        };
        let old = def.from_storage(&current);
        let (next, admitted, reservation) =
            self.prepare_update(def, &old, incoming, target).await?;
        warnings.extend(admitted);
        let next = next.map(|new| self.record_update(def, &old, new, sub, manager));
        let object = self.commit(def, key, next, expect, dry_run).await?;
        reservation.keep();
        Ok(Written { object, warnings })
    }

    async fn commit(
        &self,
        def: &ResourceDef,
        key: Key,
        next: Option<Value>,
        expect: u64,
        dry_run: bool,
    ) -> Result<Value> {
        if dry_run {
            return match next {
                Some(obj) => Ok(obj),
                None => self
                    .store
                    .get(&key)
                    .map(|o| def.from_storage(&o))
                    .ok_or_else(|| Self::not_found(def, &key.name)),
            };
        }
        match next {
            Some(obj) => {
                let saved = self
                    .store
                    .write(
                        key,
                        Some(def.to_storage(obj)),
                        Expect::Version(expect),
                        &def.qualified(),
                    )
                    .await?;
                let object = def.from_storage(&saved);
                def.strategy.after_write(self, &object, false);
                Ok(object)
            }
            None => {
                let removed = self
                    .store
                    .write(key, None, Expect::Version(expect), &def.qualified())
                    .await?;
                self.after_removal(&removed);
                let object = def.from_storage(&removed);
                def.strategy.after_write(self, &object, true);
                Ok(object)
            }
        }
    }

    /// Notes which fields a non-apply write changed, under its field manager.
    fn record_update(
        &self,
        def: &ResourceDef,
        old: &Value,
        new: Value,
        sub: Option<&str>,
        manager: Option<&str>,
    ) -> Value {
        let changed = new.clone();
        self.record_fields(def, old, &changed, new, sub, manager)
    }

    /// Notes the fields that differ between `old` and `changed` under the write's manager (the
    /// server's own name when none is given), in the managedFields of `new` (the object to
    /// store); other managers lose them.
    fn record_fields(
        &self,
        def: &ResourceDef,
        old: &Value,
        changed: &Value,
        mut new: Value,
        sub: Option<&str>,
        manager: Option<&str>,
    ) -> Value {
        let recorded = managed_fields::record_update(
            old,
            changed.clone(),
            &def.schema,
            manager.unwrap_or(SERVER_MANAGER),
            &def.api_version(),
            sub,
            Scope::of(sub, def.status_subresource),
        );
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            match recorded.pointer("/metadata/managedFields") {
                Some(m) => meta.insert("managedFields".into(), m.clone()),
                None => meta.remove("managedFields"),
            };
        }
        new
    }

    /// Patches an object (PATCH). Retries on concurrent writes like Kubernetes' guaranteed update.
    pub async fn patch<'a>(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        body: &[u8],
        target: WriteOptions<'a>,
    ) -> Result<Written> {
        let WriteOptions {
            sub,
            manager,
            dry_run,
            ..
        } = target;
        let target = WriteOptions {
            apply: patch_type == PatchType::Apply,
            ..target
        };
        if patch_type == PatchType::Strategic && def.custom {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml ({} does not support strategic merge patch)",
                def.kind
            )));
        }
        let body: Value = if patch_type == PatchType::Apply {
            patch::parse_apply(body)?
        } else {
            crate::body::json(body, "the patch")?
        };
        let apply_request = |manager: &'a str| ApplyRequest {
            manager,
            api_version: "",
            sub,
            scope: Scope::of(sub, def.status_subresource),
            force: target.force,
        };
        let api_version = def.api_version();
        let key = Self::key(def, ns, name);
        for _ in 0..8 {
            let Some(current) = self.store.get(&key) else {
                if patch_type == PatchType::Apply && sub.is_none() {
                    let manager = manager.ok_or_else(apply_needs_manager)?;
                    let mut obj = managed_fields::apply(
                        &json!({}),
                        &apply_config(&body),
                        &def.schema,
                        ApplyRequest {
                            api_version: &api_version,
                            ..apply_request(manager)
                        },
                    )
                    .map_err(|c| managed_fields::conflict_error(&def.qualified(), name, &c))?;
                    // What the client sent beyond the tracked fields (name, namespace, ...).
                    for (k, v) in body.as_object().into_iter().flatten() {
                        if k == "metadata" {
                            continue;
                        }
                        obj[k.as_str()] = v.clone();
                    }
                    if !obj.get("metadata").is_some_and(Value::is_object) {
                        obj["metadata"] = json!({});
                    }
                    if let (Some(m), Some(sent)) = (
                        obj.get_mut("metadata").and_then(Value::as_object_mut),
                        body.get("metadata").and_then(Value::as_object),
                    ) {
                        for (k, v) in sent {
                            if k != "managedFields" && k != "resourceVersion" {
                                m.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                    }
                    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("name".into(), json!(name));
                    }
                    let target = WriteOptions {
                        sub: None,
                        ..target
                    };
                    return self.create_inner(def, ns, obj, true, target).await;
                }
                return Err(Self::not_found(def, name));
            };
            let old = def.from_storage(&current);
            let mut new = old.clone();
            match patch_type {
                PatchType::Json => patch::json(&mut new, &body)?,
                PatchType::Merge => patch::merge(&mut new, &body),
                PatchType::Strategic => patch::strategic(&mut new, &body, &def.schema),
                PatchType::Apply => {
                    let manager = manager.ok_or_else(apply_needs_manager)?;
                    new = managed_fields::apply(
                        &old,
                        &apply_config(&body),
                        &def.schema,
                        ApplyRequest {
                            api_version: &api_version,
                            ..apply_request(manager)
                        },
                    )
                    .map_err(|c| managed_fields::conflict_error(&def.qualified(), name, &c))?;
                }
            }
            // A resourceVersion in the patch is a precondition, as in Kubernetes.
            let requested = rv_of(&new);
            if requested != 0 && requested != rv_of(&current) {
                return Err(ApiError::Conflict {
                    kind: def.qualified(),
                    name: name.to_owned(),
                });
            }
            let mut warnings = Vec::new();
            Self::decode_fields(def, &mut new, &target, &mut warnings)?;
            let (next, admitted, reservation) = self.prepare_update(def, &old, new, target).await?;
            warnings.extend(admitted);
            let next = match patch_type {
                PatchType::Apply => next,
                _ => next.map(|new| self.record_update(def, &old, new, sub, manager)),
            };
            match self
                .commit(def, key.clone(), next, rv_of(&current), dry_run)
                .await
            {
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
                Ok(object) => {
                    reservation.keep();
                    return Ok(Written { object, warnings });
                }
            }
        }
        Err(ApiError::Conflict {
            kind: def.qualified(),
            name: name.to_owned(),
        })
    }

    /// Deletes an object (DELETE): with finalizers it is only marked (`deletionTimestamp`);
    /// without, it is removed and its dependents are collected in the background.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<Value> {
        let key = Self::key(def, ns, name);
        loop {
            let current = self
                .store
                .get(&key)
                .ok_or_else(|| Self::not_found(def, name))?;
            if let Some(uid) = options
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                && meta_str(&current, "uid") != Some(uid)
            {
                return Err(ApiError::Conflict {
                    kind: def.qualified(),
                    name: name.to_owned(),
                });
            }
            if let Some(rv) = options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                && meta_str(&current, "resourceVersion") != Some(rv)
            {
                return Err(ApiError::Conflict {
                    kind: def.qualified(),
                    name: name.to_owned(),
                });
            }
            let old = def.from_storage(&current);
            let mut probe = old.clone();
            self.admission
                .mutate(def, Operation::Delete, None, &mut probe, Some(&old))?;
            self.admission
                .validate(def, Operation::Delete, None, &mut probe, Some(&old))?;
            let dry_run = options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x == "All"));
            let mut delete_options = options.clone();
            if let Some(o) = delete_options.as_object_mut() {
                o.insert("kind".into(), json!("DeleteOptions"));
                o.insert("apiVersion".into(), json!("meta.k8s.io/v1"));
            }
            let hook_write = webhooks::Write {
                def,
                operation: Operation::Delete,
                sub: None,
                name,
                namespace: ns,
                dry_run,
                options: delete_options,
                object_kind: None,
            };
            webhooks::validate(self, &hook_write, None, Some(&old)).await?;
            if dry_run {
                return Ok(old);
            }
            // What the kind needs done first (a namespace empties itself), or a refusal.
            let mut prepared = (*current).clone();
            def.strategy
                .prepare_for_delete(&mut prepared)
                .map_err(ApiError::Forbidden)?;
            let finishing = def.strategy.held(&prepared);
            if finalizers_empty(&current) && !finishing {
                for follow_up in def.strategy.before_removal(&old) {
                    Box::pin(self.follow_up(follow_up)).await?;
                }
            }
            let propagation =
                crate::garbage_collector::Propagation::of(options).map_err(ApiError::BadRequest)?;
            let orphan = propagation == crate::garbage_collector::Propagation::Orphan;
            // An object someone must finish (a pod bound to a node) is only marked; whoever runs
            // it deletes it again with grace period 0 (as kubelet and virtual-kubelet do).
            let grace = def.strategy.grace_period(&current, options);
            let marked_grace = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            let mut removing = false;
            let result = if let Some(grace) = grace.filter(|g| *g > 0) {
                if marked_grace.is_some_and(|m| m <= grace) {
                    return Ok(old);
                }
                let mut marked = prepared;
                marked["metadata"]["deletionTimestamp"] = json!(clock::time_after(grace));
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                self.store
                    .write(
                        key.clone(),
                        Some(marked),
                        Expect::Version(rv_of(&current)),
                        &def.qualified(),
                    )
                    .await
            } else if let Some(finalizer) = propagation
                .finalizer()
                .filter(|_| current.pointer("/metadata/deletionTimestamp").is_none())
            {
                // Foreground and orphan deletion: the owner stays, held by the policy's
                // finalizer, until the garbage collector has dealt with its dependents.
                let mut marked = prepared;
                let finalizers = marked["metadata"]
                    .as_object_mut()
                    .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?
                    .entry("finalizers")
                    .or_insert_with(|| json!([]));
                if let Some(list) = finalizers.as_array_mut()
                    && !list.iter().any(|f| f == finalizer)
                {
                    list.push(json!(finalizer));
                }
                marked["metadata"]["deletionTimestamp"] = json!(clock::now_time());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                self.store
                    .write(
                        key.clone(),
                        Some(marked),
                        Expect::Version(rv_of(&current)),
                        &def.qualified(),
                    )
                    .await
            } else if finalizers_empty(&current) && !finishing {
                removing = true;
                let removed = self
                    .store
                    .write(
                        key.clone(),
                        None,
                        Expect::Version(rv_of(&current)),
                        &def.qualified(),
                    )
                    .await;
                if let Ok(r) = &removed
                    && !orphan
                {
                    self.after_removal(r);
                }
                removed
            } else if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            } else {
                let mut marked = prepared;
                marked["metadata"]["deletionTimestamp"] = json!(clock::now_time());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                self.store
                    .write(
                        key.clone(),
                        Some(marked),
                        Expect::Version(rv_of(&current)),
                        &def.qualified(),
                    )
                    .await
            };
            match result {
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
                Ok(o) => {
                    let object = def.from_storage(&o);
                    def.strategy.after_write(self, &object, removing);
                    return Ok(object);
                }
            }
        }
    }

    /// Deletes the object at `key` as a client would (finalizers, grace periods and garbage
    /// collection honoured); a failure is logged.
    pub(crate) async fn delete_key(&self, key: &Key) {
        let Some(def) = self
            .resources()
            .all()
            .iter()
            .find(|d| d.storage.is_none() && d.storage_res() == key.res)
            .cloned()
        else {
            return;
        };
        let ns = (!key.ns.is_empty()).then_some(key.ns.as_str());
        if let Err(e) = Box::pin(self.delete(&def, ns, &key.name, &json!({}))).await
            && !matches!(e, ApiError::NotFound { .. })
        {
            tracing::warn!(resource = %key.res, namespace = %key.ns, name = %key.name, error = %e, "garbage collection failed");
        }
    }

    /// Background garbage collection after an object is gone: its dependents (by
    /// ownerReference uid).
    fn after_removal(&self, removed: &Value) {
        let Some(uid) = meta_str(removed, "uid").map(str::to_owned) else {
            return;
        };
        let Some(this) = self.weak_self() else {
            return;
        };
        tokio::spawn(async move { this.collect_dependents(&uid).await });
    }

    pub(crate) fn weak_self(&self) -> Option<Arc<ApiServer>> {
        self.me.upgrade()
    }

    /// Deletes Events older than `ttl` (by their last occurrence), every `ttl / 2` (between a
    /// second and a minute), forever.
    pub async fn expire_events(self: Arc<Self>, ttl: std::time::Duration) {
        let period = (ttl / 2).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let now = jiff::Timestamp::now().as_second();
            let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
            let (events, _) = self.store.list("/events", None);
            for e in events {
                let last = [
                    "/series/lastObservedTime",
                    "/lastTimestamp",
                    "/eventTime",
                    "/metadata/creationTimestamp",
                ]
                .iter()
                .filter_map(|p| e.pointer(p).and_then(Value::as_str))
                .filter_map(|s| s.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second())
                .max();
                if last.is_some_and(|t| now.saturating_sub(t) > ttl) {
                    let key = Key {
                        res: "/events".into(),
                        ns: meta_str(&e, "namespace").unwrap_or("").to_owned(),
                        name: meta_str(&e, "name").unwrap_or("").to_owned(),
                    };
                    self.delete_key(&key).await;
                }
            }
        }
    }

    /// Pod logs through the installed provider.
    pub async fn pod_logs(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut options: LogOptions,
    ) -> Result<axum::body::Body> {
        let pod = self.get(def, ns, name)?;
        // Before anything else sees it: the container must be one of this pod's.
        options.container = Some(crate::logs::resolve_container(&pod, &options)?);
        let provider = self.logs.read().unwrap_or_else(|e| e.into_inner()).clone();
        match provider {
            Some(p) => p.logs(pod, options).await,
            None => Err(crate::logs::no_container_yet(&pod, &options)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_like_kubernetes() {
        let ok = json!({"metadata": {"labels": {"app": "web", "example.com/tier": "", "a_b.c-d": "X.y_z"},
            "annotations": {"k8s.aliyun.com/eci-image-cache": "true"}}});
        assert!(label_causes(&ok).is_empty());
        let bad = json!({"metadata": {"labels": {"-app": "web", "x": "has space", "y": "a".repeat(64)},
            "annotations": {"bad key": "v", "n": 1}}});
        let fields: Vec<_> = label_causes(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.labels",
                "metadata.labels",
                "metadata.labels",
                "metadata.annotations",
                "metadata.annotations"
            ]
        );
    }
}
