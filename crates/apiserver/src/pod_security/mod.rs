//! Pod Security Admission, built into the API server as kube-apiserver has it: each namespace
//! chooses a level of the Pod Security Standards (`privileged`, `baseline`, `restricted`) for
//! `enforce`, `warn` and `audit` with `pod-security.kubernetes.io/<mode>` labels (and
//! `<mode>-version`: `latest` or `v1.x`). Pods that break the enforced level are refused with
//! upstream's wording; `warn` answers with `Warning` headers; `audit` logs. A namespace without
//! an `enforce` label gets the server's default (`imc server --pod-security-default`, `baseline`
//! unless changed); `warn` and `audit` default to `privileged`.

pub mod checks;

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::field::{Path, invalid};
use crate::resources::ResourceDef;
use crate::store::{Key, Store};

/// A level of the Pod Security Standards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations refused.
    Baseline,
    /// Hardened: non-root, no capabilities, seccomp.
    Restricted,
}

impl Level {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a level or version label value is refused (upstream's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Not a level.
    #[error("must be one of privileged, baseline, restricted")]
    Level,
    /// Not a version.
    #[error("must be \"latest\" or \"v1.x\"")]
    Version,
}

impl FromStr for Level {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(LabelError::Level),
        }
    }
}

/// The version of the standards checked: `latest` (this server's, 1.32) or `v1.x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The newest checks.
    Latest,
    /// The checks as Kubernetes 1.x had them.
    Minor(u32),
}

/// The Kubernetes minor version whose checks `latest` means.
pub const LATEST_MINOR: u32 = 32;

impl Version {
    /// The minor version the checks follow (versions past this server's count as `latest`).
    pub fn effective_minor(self) -> u32 {
        match self {
            Version::Latest => LATEST_MINOR,
            Version::Minor(m) => m.min(LATEST_MINOR),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Minor(m) => write!(f, "v1.{m}"),
        }
    }
}

impl FromStr for Version {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let minor = s.strip_prefix("v1.").ok_or(LabelError::Version)?;
        let canonical = minor == "0" || (!minor.starts_with('0') && !minor.is_empty());
        if !canonical || !minor.bytes().all(|c| c.is_ascii_digit()) {
            return Err(LabelError::Version);
        }
        minor
            .parse()
            .map(Version::Minor)
            .map_err(|_| LabelError::Version)
    }
}

/// A level at a version, written `baseline:latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// The version.
    pub version: Version,
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// What a namespace enforces, warns about and audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Refused.
    pub enforce: LevelVersion,
    /// Answered with a warning.
    pub warn: LevelVersion,
    /// Logged.
    pub audit: LevelVersion,
}

const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// The policy of a namespace with `labels`, the server's `defaults` where a label is absent,
/// and one cause per bad label value. As upstream, a bad `enforce` level means `restricted`
/// (fail closed) and a bad `warn` or `audit` level means `privileged`; a bad version means
/// `latest`.
pub fn policy_from_labels(
    labels: Option<&Map<String, Value>>,
    defaults: Policy,
) -> (Policy, Vec<Cause>) {
    let mut p = defaults;
    let mut causes = Vec::new();
    let Some(labels) = labels else {
        return (p, causes);
    };
    let path = Path::new("metadata").child("labels");
    for (mode, fallback) in [
        ("enforce", Level::Restricted),
        ("warn", Level::Privileged),
        ("audit", Level::Privileged),
    ] {
        let lv = match mode {
            "enforce" => &mut p.enforce,
            "warn" => &mut p.warn,
            _ => &mut p.audit,
        };
        let level_key = format!("{LABEL_PREFIX}{mode}");
        if let Some(v) = labels.get(&level_key) {
            let text = v.as_str().unwrap_or("");
            lv.level = text.parse().unwrap_or_else(|e: LabelError| {
                causes.push(invalid(&path.key(&level_key), &json!(text), &e.to_string()));
                fallback
            });
        }
        let version_key = format!("{LABEL_PREFIX}{mode}-version");
        if let Some(v) = labels.get(&version_key) {
            let text = v.as_str().unwrap_or("");
            lv.version = text.parse().unwrap_or_else(|e: LabelError| {
                causes.push(invalid(
                    &path.key(&version_key),
                    &json!(text),
                    &e.to_string(),
                ));
                Version::Latest
            });
        }
    }
    (p, causes)
}

/// The admission plugin: the server's default policy and the checks.
#[derive(Debug, Clone, Copy)]
pub struct PodSecurity {
    defaults: Policy,
}

/// How many existing pods a namespace label change is checked against.
const MAX_PODS_TO_CHECK: usize = 3000;

impl PodSecurity {
    /// `enforce` defaults to `level` (latest); `warn` and `audit` to `privileged`.
    pub fn new(level: Level) -> Self {
        let at = |level| LevelVersion {
            level,
            version: Version::Latest,
        };
        PodSecurity {
            defaults: Policy {
                enforce: at(level),
                warn: at(Level::Privileged),
                audit: at(Level::Privileged),
            },
        }
    }

    /// Admits a write of `obj` (over `old` for updates) to `def`'s main resource: pods are
    /// checked against their namespace's policy, namespaces' labels are checked. Everything
    /// else passes. The warnings to answer, or the refusal.
    pub fn admit(
        &self,
        def: &ResourceDef,
        store: &Store,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<Vec<String>, ApiError> {
        if !def.group.is_empty() {
            return Ok(Vec::new());
        }
        let namespace_key = |name: &str| Key {
            res: "/namespaces".into(),
            ns: String::new(),
            name: name.to_owned(),
        };
        let name_at = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        match def.plural.as_str() {
            "pods" => {
                let namespace = store.get(&namespace_key(&name_at("/metadata/namespace")));
                self.admit_pod(obj, old, namespace.as_deref())
            }
            "namespaces" => {
                let name = name_at("/metadata/name");
                self.admit_namespace(obj, old, || store.list("/pods", Some(&name)).0)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The policy of a namespace object (its labels over the defaults).
    pub fn policy_of(&self, namespace: Option<&Value>) -> (Policy, Vec<Cause>) {
        policy_from_labels(
            namespace
                .and_then(|n| n.pointer("/metadata/labels"))
                .and_then(Value::as_object),
            self.defaults,
        )
    }

    /// Checks a pod being created, or updated from `old`, in a namespace with `namespace`'s
    /// labels: a 403 when it breaks the enforced level; otherwise the warnings to answer.
    pub fn admit_pod(
        &self,
        pod: &Value,
        old: Option<&Value>,
        namespace: Option<&Value>,
    ) -> Result<Vec<String>, ApiError> {
        if old.is_some_and(|old| !significant_update(pod, old)) {
            return Ok(Vec::new());
        }
        let (policy, label_errors) = self.policy_of(namespace);
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !label_errors.is_empty() {
            tracing::warn!(namespace = %ns, "failed to parse PodSecurity namespace labels; enforcing {}", policy.enforce);
        }
        let judge = |lv: LevelVersion| checks::evaluate(lv.level, lv.version, pod);
        let enforced = judge(policy.enforce);
        if !enforced.is_empty() {
            return Err(ApiError::Forbidden(format!(
                "pods {name:?} is forbidden: violates PodSecurity \"{}\": {}",
                policy.enforce,
                checks::forbidden_detail(&enforced)
            )));
        }
        let audited = if policy.audit == policy.enforce {
            Vec::new()
        } else {
            judge(policy.audit)
        };
        if !audited.is_empty() {
            tracing::warn!(
                namespace = %ns, pod = %name,
                "would violate PodSecurity \"{}\": {}", policy.audit, checks::forbidden_detail(&audited)
            );
        }
        let warned = if policy.warn == policy.enforce {
            Vec::new()
        } else {
            judge(policy.warn)
        };
        Ok(if warned.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "would violate PodSecurity \"{}\": {}",
                policy.warn,
                checks::forbidden_detail(&warned)
            )]
        })
    }

    /// Checks a namespace being created, or updated from `old`: its PodSecurity labels must be
    /// valid (422 naming each), and a stricter `enforce` level is answered with warnings naming
    /// the existing `pods` that would break it.
    pub fn admit_namespace(
        &self,
        namespace: &Value,
        old: Option<&Value>,
        pods: impl FnOnce() -> Vec<std::sync::Arc<Value>>,
    ) -> Result<Vec<String>, ApiError> {
        let (policy, errors) = self.policy_of(Some(namespace));
        let name = namespace
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let invalid = |causes: Vec<Cause>| ApiError::Invalid {
            kind: "Namespace".into(),
            name: name.to_owned(),
            causes,
        };
        let Some(old) = old else {
            return if errors.is_empty() {
                Ok(Vec::new())
            } else {
                Err(invalid(errors))
            };
        };
        let (old_policy, old_errors) = self.policy_of(Some(old));
        if !errors.is_empty() && (old_errors.is_empty() || errors != old_errors) {
            return Err(invalid(errors));
        }
        let (new_e, old_e) = (policy.enforce, old_policy.enforce);
        let relaxed = new_e.version == old_e.version && new_e.level <= old_e.level;
        if new_e == old_e || new_e.level == Level::Privileged || relaxed {
            return Ok(Vec::new());
        }
        Ok(existing_pod_warnings(name, new_e, &pods()))
    }
}

/// Warnings for pods of `namespace` that break `enforce`, grouped by reason as upstream does:
/// `web (and 2 other pods): privileged`.
fn existing_pod_warnings(
    namespace: &str,
    enforce: LevelVersion,
    pods: &[std::sync::Arc<Value>],
) -> Vec<String> {
    let mut groups: Vec<(String, String, usize)> = Vec::new();
    let checked = pods.len().min(MAX_PODS_TO_CHECK);
    for pod in &pods[..checked] {
        let violations = checks::evaluate(enforce.level, enforce.version, pod);
        if violations.is_empty() {
            continue;
        }
        let reason = checks::forbidden_reason(&violations);
        let pod_name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match groups.iter_mut().find(|(r, _, _)| *r == reason) {
            Some((_, first, n)) => {
                *n += 1;
                if pod_name < *first {
                    *first = pod_name;
                }
            }
            None => groups.push((reason, pod_name, 1)),
        }
    }
    let mut out = Vec::new();
    if checked < pods.len() {
        out.push(format!(
            "new PodSecurity enforce level only checked against the first {checked} of {} existing pods",
            pods.len()
        ));
    }
    if !groups.is_empty() {
        out.push(format!(
            "existing pods in namespace {namespace:?} violate the new PodSecurity enforce level \"{enforce}\""
        ));
    }
    let mut pod_warnings: Vec<String> = groups
        .into_iter()
        .map(|(reason, first, n)| match n {
            1 => format!("{first}: {reason}"),
            2 => format!("{first} (and 1 other pod): {reason}"),
            n => format!("{first} (and {} other pods): {reason}", n - 1),
        })
        .collect();
    pod_warnings.sort();
    out.extend(pod_warnings);
    out
}

/// Whether an update changes what the checks look at (upstream's `isSignificantPodUpdate`:
/// images, container counts, seccomp annotations); the spec is otherwise immutable.
fn significant_update(pod: &Value, old: &Value) -> bool {
    let spec = |p: &Value, key: &str| {
        p.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let images =
        |list: Vec<Value>| -> Vec<Value> { list.iter().map(|c| c["image"].clone()).collect() };
    let seccomp = |p: &Value| -> Vec<(String, Value)> {
        p.pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.contains("seccomp.security.alpha.kubernetes.io"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .any(|k| images(spec(pod, k)) != images(spec(old, k)))
        || seccomp(pod) != seccomp(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(labels: Value) -> Value {
        json!({"metadata": {"name": "team", "labels": labels}})
    }

    fn privileged_pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "team"}, "spec": {"containers": [
            {"name": "c", "image": "busybox", "securityContext": {"privileged": true}}]}})
    }

    #[test]
    fn labels_choose_the_policy() {
        let psa = PodSecurity::new(Level::Baseline);
        // (labels, enforce, warn, audit, bad labels)
        let rows: Vec<(Value, &str, &str, &str, Vec<&str>)> = vec![
            (
                json!({}),
                "baseline:latest",
                "privileged:latest",
                "privileged:latest",
                vec![],
            ),
            (
                json!({"pod-security.kubernetes.io/enforce": "privileged"}),
                "privileged:latest",
                "privileged:latest",
                "privileged:latest",
                vec![],
            ),
            (
                json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.25"}),
                "restricted:v1.25",
                "privileged:latest",
                "privileged:latest",
                vec![],
            ),
            (
                json!({"pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "baseline"}),
                "baseline:latest",
                "restricted:latest",
                "baseline:latest",
                vec![],
            ),
            (
                json!({"pod-security.kubernetes.io/enforce": "strict"}),
                "restricted:latest",
                "privileged:latest",
                "privileged:latest",
                vec!["metadata.labels[pod-security.kubernetes.io/enforce]"],
            ),
            (
                json!({"pod-security.kubernetes.io/warn": "bogus", "pod-security.kubernetes.io/warn-version": "1.25"}),
                "baseline:latest",
                "privileged:latest",
                "privileged:latest",
                vec![
                    "metadata.labels[pod-security.kubernetes.io/warn]",
                    "metadata.labels[pod-security.kubernetes.io/warn-version]",
                ],
            ),
            (
                json!({"pod-security.kubernetes.io/enforce-version": "v1.025"}),
                "baseline:latest",
                "privileged:latest",
                "privileged:latest",
                vec!["metadata.labels[pod-security.kubernetes.io/enforce-version]"],
            ),
        ];
        for (labels, enforce, warn, audit, bad) in rows {
            let (p, causes) = psa.policy_of(Some(&ns(labels.clone())));
            assert_eq!(
                (
                    p.enforce.to_string(),
                    p.warn.to_string(),
                    p.audit.to_string()
                ),
                (enforce.to_owned(), warn.to_owned(), audit.to_owned()),
                "{labels}"
            );
            let fields: Vec<String> = causes.into_iter().map(|c| c.field).collect();
            assert_eq!(fields, bad, "{labels}");
        }
    }

    #[test]
    fn enforcement_denies_with_upstreams_words() {
        let psa = PodSecurity::new(Level::Baseline);
        let err = psa
            .admit_pod(&privileged_pod(), None, Some(&ns(json!({}))))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"
        );
        assert_eq!(err.code_reason().0.as_u16(), 403);
        let open = ns(json!({"pod-security.kubernetes.io/enforce": "privileged"}));
        assert_eq!(
            psa.admit_pod(&privileged_pod(), None, Some(&open)).unwrap(),
            Vec::<String>::new()
        );
        let lax = PodSecurity::new(Level::Privileged);
        assert!(
            lax.admit_pod(&privileged_pod(), None, Some(&ns(json!({}))))
                .is_ok()
        );
    }

    #[test]
    fn warn_mode_answers_warnings() {
        let psa = PodSecurity::new(Level::Baseline);
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let warnings = psa
            .admit_pod(
                &pod,
                None,
                Some(&ns(
                    json!({"pod-security.kubernetes.io/warn": "restricted"}),
                )),
            )
            .unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\""),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn updates_are_checked_only_when_images_change() {
        let psa = PodSecurity::new(Level::Baseline);
        let mut labelled = privileged_pod();
        labelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(
            psa.admit_pod(&labelled, Some(&privileged_pod()), Some(&ns(json!({}))))
                .is_ok()
        );
        let mut new_image = privileged_pod();
        new_image["spec"]["containers"][0]["image"] = json!("busybox:2");
        assert!(
            psa.admit_pod(&new_image, Some(&privileged_pod()), Some(&ns(json!({}))))
                .is_err()
        );
    }

    #[test]
    fn namespace_labels_are_validated_and_tightening_warns_about_pods() {
        let psa = PodSecurity::new(Level::Baseline);
        let bad = ns(json!({"pod-security.kubernetes.io/enforce": "strict"}));
        match psa.admit_namespace(&bad, None, Vec::new) {
            Err(ApiError::Invalid { causes, .. }) => assert_eq!(
                causes[0].message,
                "Invalid value: \"strict\": must be one of privileged, baseline, restricted"
            ),
            other => panic!("{other:?}"),
        }
        let old = ns(json!({"pod-security.kubernetes.io/enforce": "privileged"}));
        let new = ns(json!({"pod-security.kubernetes.io/enforce": "baseline"}));
        let pods = || vec![std::sync::Arc::new(privileged_pod())];
        assert_eq!(
            psa.admit_namespace(&new, Some(&old), pods).unwrap(),
            [
                "existing pods in namespace \"team\" violate the new PodSecurity enforce level \"baseline:latest\"",
                "p: privileged"
            ]
        );
        // Relaxing is not checked.
        assert!(
            psa.admit_namespace(&old, Some(&new), pods)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn versions_parse_like_upstream() {
        for (text, ok) in [
            ("latest", true),
            ("v1.0", true),
            ("v1.32", true),
            ("v1.025", false),
            ("v2.1", false),
            ("1.25", false),
            ("v1.", false),
        ] {
            assert_eq!(text.parse::<Version>().is_ok(), ok, "{text}");
        }
    }
}
