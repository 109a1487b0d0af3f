//! Decoding of the protobuf request bodies kubectl's typed clients send
//! (`kubectl create namespace|configmap|secret|serviceaccount|token|deployment|job|cronjob|service`,
//! `kubectl auth can-i` and `whoami`) into JSON objects.
//!
//! The body is `k8s\0` + `runtime.Unknown{typeMeta, raw}`, where `raw` is the object's own
//! protobuf message. Only the messages of the kinds listed in [`schema_for`] are known; unknown
//! fields are skipped (the server sets uid, timestamps and versions itself anyway).

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// How one protobuf field maps to JSON.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bytes,
    Bool,
    Int,
    Msg(&'static [Field]),
    RepeatedStr,
    RepeatedMsg(&'static [Field]),
    MapStr,
    MapBytes,
    /// `intstr.IntOrString`: `{type, intVal, strVal}`, a number or a string in JSON.
    IntOrStr,
}

type Field = (u64, &'static str, Kind);

const LOCAL_REF: &[Field] = &[(1, "name", Kind::Str)];
const OBJECT_REF: &[Field] = &[
    (1, "kind", Kind::Str),
    (2, "namespace", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
];
const OWNER_REF: &[Field] = &[
    (1, "kind", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "controller", Kind::Bool),
    (7, "blockOwnerDeletion", Kind::Bool),
];
const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "generateName", Kind::Str),
    (3, "namespace", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (11, "labels", Kind::MapStr),
    (12, "annotations", Kind::MapStr),
    (13, "ownerReferences", Kind::RepeatedMsg(OWNER_REF)),
    (14, "finalizers", Kind::RepeatedStr),
];
const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[(1, "finalizers", Kind::RepeatedStr)]),
    ),
];
const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStr),
    (3, "binaryData", Kind::MapBytes),
    (4, "immutable", Kind::Bool),
];
const SECRET: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapBytes),
    (3, "type", Kind::Str),
    (4, "stringData", Kind::MapStr),
    (5, "immutable", Kind::Bool),
];
const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "secrets", Kind::RepeatedMsg(OBJECT_REF)),
    (3, "imagePullSecrets", Kind::RepeatedMsg(LOCAL_REF)),
    (4, "automountServiceAccountToken", Kind::Bool),
];
const RESOURCE_ATTRIBUTES: &[Field] = &[
    (1, "namespace", Kind::Str),
    (2, "verb", Kind::Str),
    (3, "group", Kind::Str),
    (4, "version", Kind::Str),
    (5, "resource", Kind::Str),
    (6, "subresource", Kind::Str),
    (7, "name", Kind::Str),
];
const NON_RESOURCE_ATTRIBUTES: &[Field] = &[(1, "path", Kind::Str), (2, "verb", Kind::Str)];
const SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[
            (1, "resourceAttributes", Kind::Msg(RESOURCE_ATTRIBUTES)),
            (
                2,
                "nonResourceAttributes",
                Kind::Msg(NON_RESOURCE_ATTRIBUTES),
            ),
        ]),
    ),
];
const SELF_SUBJECT_RULES_REVIEW: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(&[(1, "namespace", Kind::Str)])),
];
const SELF_SUBJECT_REVIEW: &[Field] = &[(1, "metadata", Kind::Msg(OBJECT_META))];
const BOUND_OBJECT_REF: &[Field] = &[
    (1, "kind", Kind::Str),
    (2, "apiVersion", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
];
const TOKEN_REQUEST: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[
            (1, "audiences", Kind::RepeatedStr),
            (3, "boundObjectRef", Kind::Msg(BOUND_OBJECT_REF)),
            (4, "expirationSeconds", Kind::Int),
        ]),
    ),
];
const LABEL_SELECTOR: &[Field] = &[
    (1, "matchLabels", Kind::MapStr),
    (
        2,
        "matchExpressions",
        Kind::RepeatedMsg(&[
            (1, "key", Kind::Str),
            (2, "operator", Kind::Str),
            (3, "values", Kind::RepeatedStr),
        ]),
    ),
];
const CONTAINER_PORT: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "hostPort", Kind::Int),
    (3, "containerPort", Kind::Int),
    (4, "protocol", Kind::Str),
    (5, "hostIP", Kind::Str),
];
const ENV_VAR: &[Field] = &[(1, "name", Kind::Str), (2, "value", Kind::Str)];
const CONTAINER: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "image", Kind::Str),
    (3, "command", Kind::RepeatedStr),
    (4, "args", Kind::RepeatedStr),
    (5, "workingDir", Kind::Str),
    (6, "ports", Kind::RepeatedMsg(CONTAINER_PORT)),
    (7, "env", Kind::RepeatedMsg(ENV_VAR)),
    (13, "terminationMessagePath", Kind::Str),
    (14, "imagePullPolicy", Kind::Str),
    (20, "terminationMessagePolicy", Kind::Str),
];
/// The fields of a PodSpec that kubectl's generators (`create deployment|job`) fill.
const POD_SPEC: &[Field] = &[
    (2, "containers", Kind::RepeatedMsg(CONTAINER)),
    (3, "restartPolicy", Kind::Str),
    (4, "terminationGracePeriodSeconds", Kind::Int),
    (5, "activeDeadlineSeconds", Kind::Int),
    (6, "dnsPolicy", Kind::Str),
    (7, "nodeSelector", Kind::MapStr),
    (8, "serviceAccountName", Kind::Str),
    (20, "initContainers", Kind::RepeatedMsg(CONTAINER)),
];
const POD_TEMPLATE_SPEC: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(POD_SPEC)),
];
const DEPLOYMENT: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[
            (1, "replicas", Kind::Int),
            (2, "selector", Kind::Msg(LABEL_SELECTOR)),
            (3, "template", Kind::Msg(POD_TEMPLATE_SPEC)),
            (4, "strategy", Kind::Msg(&[(1, "type", Kind::Str)])),
            (5, "minReadySeconds", Kind::Int),
            (6, "revisionHistoryLimit", Kind::Int),
            (7, "paused", Kind::Bool),
            (9, "progressDeadlineSeconds", Kind::Int),
        ]),
    ),
];
const JOB: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(JOB_SPEC)),
];
const JOB_SPEC: &[Field] = &[
    (1, "parallelism", Kind::Int),
    (2, "completions", Kind::Int),
    (3, "activeDeadlineSeconds", Kind::Int),
    (4, "selector", Kind::Msg(LABEL_SELECTOR)),
    (5, "manualSelector", Kind::Bool),
    (6, "template", Kind::Msg(POD_TEMPLATE_SPEC)),
    (7, "backoffLimit", Kind::Int),
    (8, "ttlSecondsAfterFinished", Kind::Int),
    (9, "completionMode", Kind::Str),
    (10, "suspend", Kind::Bool),
];
/// `kubectl create cronjob` (k8s.io/api/batch/v1 `CronJob`, `CronJobSpec`, `JobTemplateSpec`).
const CRON_JOB: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[
            (1, "schedule", Kind::Str),
            (2, "startingDeadlineSeconds", Kind::Int),
            (3, "concurrencyPolicy", Kind::Str),
            (4, "suspend", Kind::Bool),
            (
                5,
                "jobTemplate",
                Kind::Msg(&[
                    (1, "metadata", Kind::Msg(OBJECT_META)),
                    (2, "spec", Kind::Msg(JOB_SPEC)),
                ]),
            ),
            (6, "successfulJobsHistoryLimit", Kind::Int),
            (7, "failedJobsHistoryLimit", Kind::Int),
            (8, "timeZone", Kind::Str),
        ]),
    ),
];
const SERVICE_PORT: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "protocol", Kind::Str),
    (3, "port", Kind::Int),
    (4, "targetPort", Kind::IntOrStr),
    (5, "nodePort", Kind::Int),
    (6, "appProtocol", Kind::Str),
];
/// `k8s.io/api/core/v1` ServiceSpec (`kubectl create service ...`).
const SERVICE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[
            (1, "ports", Kind::RepeatedMsg(SERVICE_PORT)),
            (2, "selector", Kind::MapStr),
            (3, "clusterIP", Kind::Str),
            (4, "type", Kind::Str),
            (5, "externalIPs", Kind::RepeatedStr),
            (7, "sessionAffinity", Kind::Str),
            (8, "loadBalancerIP", Kind::Str),
            (9, "loadBalancerSourceRanges", Kind::RepeatedStr),
            (10, "externalName", Kind::Str),
            (11, "externalTrafficPolicy", Kind::Str),
            (12, "healthCheckNodePort", Kind::Int),
            (13, "publishNotReadyAddresses", Kind::Bool),
            (
                14,
                "sessionAffinityConfig",
                Kind::Msg(&[(
                    1,
                    "clientIP",
                    Kind::Msg(&[(1, "timeoutSeconds", Kind::Int)]),
                )]),
            ),
            (17, "ipFamilyPolicy", Kind::Str),
            (18, "clusterIPs", Kind::RepeatedStr),
            (19, "ipFamilies", Kind::RepeatedStr),
            (20, "allocateLoadBalancerNodePorts", Kind::Bool),
            (21, "loadBalancerClass", Kind::Str),
            (22, "internalTrafficPolicy", Kind::Str),
            (23, "trafficDistribution", Kind::Str),
        ]),
    ),
];
const INT_OR_STRING: &[Field] = &[
    (1, "type", Kind::Int),
    (2, "intVal", Kind::Int),
    (3, "strVal", Kind::Str),
];
const TYPE_META: &[Field] = &[(1, "apiVersion", Kind::Str), (2, "kind", Kind::Str)];
const UNKNOWN: &[Field] = &[
    (1, "typeMeta", Kind::Msg(TYPE_META)),
    (2, "raw", Kind::Bytes),
];

fn schema_for(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    match (api_version, kind) {
        ("v1", "Namespace") => Some(NAMESPACE),
        ("v1", "ConfigMap") => Some(CONFIG_MAP),
        ("v1", "Secret") => Some(SECRET),
        ("v1", "ServiceAccount") => Some(SERVICE_ACCOUNT),
        ("v1", "Service") => Some(SERVICE),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => Some(SELF_SUBJECT_ACCESS_REVIEW),
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => Some(SELF_SUBJECT_RULES_REVIEW),
        ("authentication.k8s.io/v1", "SelfSubjectReview") => Some(SELF_SUBJECT_REVIEW),
        ("authentication.k8s.io/v1", "TokenRequest") => Some(TOKEN_REQUEST),
        ("apps/v1", "Deployment") => Some(DEPLOYMENT),
        ("batch/v1", "Job") => Some(JOB),
        ("batch/v1", "CronJob") => Some(CRON_JOB),
        _ => None,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn malformed() -> ApiError {
    ApiError::BadRequest("malformed protobuf body".into())
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(malformed)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed())
    }
    fn bytes(&mut self) -> Result<&'a [u8], ApiError> {
        let len = usize::try_from(self.varint()?).map_err(|_| malformed())?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(malformed)?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn skip(&mut self, wire: u64) -> Result<(), ApiError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => Err(malformed()),
        }
    }
    fn advance(&mut self, n: usize) -> Result<(), ApiError> {
        if self.pos + n > self.buf.len() {
            return Err(malformed());
        }
        self.pos += n;
        Ok(())
    }
}

fn utf8(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed())
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut r = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while r.pos < b.len() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => k = utf8(r.bytes()?)?,
            (2, 2) => {
                let raw = r.bytes()?;
                v = if bytes_value {
                    json!(base64::engine::general_purpose::STANDARD.encode(raw))
                } else {
                    json!(utf8(raw)?)
                };
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((k, v))
}

fn decode(buf: &[u8], schema: &[Field]) -> Result<Map<String, Value>, ApiError> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Map::new();
    while r.pos < buf.len() {
        let tag = r.varint()?;
        let (no, wire) = (tag >> 3, tag & 7);
        let Some((_, name, kind)) = schema.iter().find(|(n, _, _)| *n == no) else {
            r.skip(wire)?;
            continue;
        };
        let name = (*name).to_owned();
        match (kind, wire) {
            (Kind::Str, 2) => {
                // Go's marshalling writes unset (non-pointer) strings as ""; in JSON they are
                // omitted, and defaulting must see them as unset.
                let v = utf8(r.bytes()?)?;
                if !v.is_empty() {
                    out.insert(name, json!(v));
                }
            }
            (Kind::Bytes, 2) => {
                out.insert(
                    name,
                    json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
                );
            }
            (Kind::Bool, 0) => {
                out.insert(name, json!(r.varint()? != 0));
            }
            (Kind::Int, 0) => {
                // int64 fields are plain varints (two's complement for negatives).
                out.insert(name, json!(r.varint()? as i64));
            }
            (Kind::IntOrStr, 2) => {
                let v = decode(r.bytes()?, INT_OR_STRING)?;
                let value = if v.get("type").and_then(Value::as_i64) == Some(1) {
                    v.get("strVal").cloned().unwrap_or_else(|| json!(""))
                } else {
                    v.get("intVal").cloned().unwrap_or_else(|| json!(0))
                };
                out.insert(name, value);
            }
            (Kind::Msg(s), 2) => {
                out.insert(name, Value::Object(decode(r.bytes()?, s)?));
            }
            (Kind::RepeatedStr, 2) => {
                let v = json!(utf8(r.bytes()?)?);
                push(&mut out, name, v);
            }
            (Kind::RepeatedMsg(s), 2) => {
                let v = Value::Object(decode(r.bytes()?, s)?);
                push(&mut out, name, v);
            }
            (Kind::MapStr | Kind::MapBytes, 2) => {
                let (k, v) = map_entry(r.bytes()?, matches!(kind, Kind::MapBytes))?;
                let m = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(out)
}

fn push(out: &mut Map<String, Value>, name: String, v: Value) {
    let list = out.entry(name).or_insert_with(|| json!([]));
    if let Some(l) = list.as_array_mut() {
        l.push(v);
    }
}

/// Decodes a `application/vnd.kubernetes.protobuf` body into the JSON object it encodes.
pub fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    let inner = body.strip_prefix(b"k8s\0").ok_or_else(malformed)?;
    let unknown = decode(inner, UNKNOWN)?;
    let api_version = unknown
        .get("typeMeta")
        .and_then(|t| t.get("apiVersion"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = unknown
        .get("typeMeta")
        .and_then(|t| t.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let schema = schema_for(api_version, kind).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "protobuf bodies are accepted for Namespace, ConfigMap, Secret, ServiceAccount, Service, TokenRequest, Deployment, Job, CronJob and the self reviews only, not {api_version} {kind}; send JSON or YAML (kubectl create -f)"
        ))
    })?;
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(malformed)?;
    let mut obj = decode(&raw, schema)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(no: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(no << 3 | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_secret_like_kubectl_sends_it() {
        let entry = [field(1, b".dockerconfigjson"), field(2, b"{}")].concat();
        let meta = [
            field(1, b"regcred"),
            field(3, b"default"),
            field(11, &[field(1, b"a"), field(2, b"b")].concat()),
        ]
        .concat();
        let secret = [
            field(1, &meta),
            field(2, &entry),
            field(3, b"kubernetes.io/dockerconfigjson"),
        ]
        .concat();
        let tm = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm), field(2, &secret)].concat();
        let v = decode_body(&body).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["name"], "regcred");
        assert_eq!(v["metadata"]["labels"]["a"], "b");
        assert_eq!(v["type"], "kubernetes.io/dockerconfigjson");
        assert_eq!(v["data"][".dockerconfigjson"], "e30=");
    }

    fn varint_field(no: u64, v: u64) -> Vec<u8> {
        vec![(no << 3) as u8, v as u8]
    }

    #[test]
    fn decodes_a_service_like_kubectl_create_service_sends_it() {
        // `kubectl create service nodeport web --tcp=80:http`: Go writes every scalar, unset
        // ones as zero.
        let target = [varint_field(1, 1), varint_field(2, 0), field(3, b"http")].concat();
        let port = [
            field(1, b"80-http"),
            field(2, b"TCP"),
            varint_field(3, 80),
            field(4, &target),
            varint_field(5, 0),
        ]
        .concat();
        let spec = [
            field(1, &port),
            field(2, &[field(1, b"app"), field(2, b"web")].concat()),
            field(3, b""),
            field(4, b"NodePort"),
        ]
        .concat();
        let svc = [field(1, &field(1, b"web")), field(2, &spec)].concat();
        let tm = [field(1, b"v1"), field(2, b"Service")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm), field(2, &svc)].concat();
        let v = decode_body(&body).unwrap();
        assert_eq!(
            v["spec"],
            json!({
                "ports": [{"name": "80-http", "protocol": "TCP", "port": 80,
                    "targetPort": "http", "nodePort": 0}],
                "selector": {"app": "web"},
                "type": "NodePort"
            })
        );
    }
}
