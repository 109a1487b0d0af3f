//! The `serviceaccounts/token` subresource (TokenRequest, `kubectl create token SA`): a signed
//! service account token for the named service account, bound to a pod when the request says
//! so, valid for `spec.expirationSeconds` (default one hour, at least ten minutes). The server
//! accepts it as a bearer token for that service account while it (and the pod) exists.

use serde_json::{Value, json};

use crate::error::{ApiError, Cause, Result};
use crate::handler::ApiServer;
use crate::resources::ResourceDef;
use crate::sa_token::{
    DEFAULT_EXPIRATION_SECONDS, ISSUER, MAX_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS, TokenIssuer,
};
use crate::store::Key;

fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        kind: "TokenRequest".into(),
        name: name.to_owned(),
        causes: vec![Cause {
            field: field.to_owned(),
            reason: "FieldValueInvalid".into(),
            message,
        }],
    }
}

/// Answers a TokenRequest for service account `name` in `ns` (`def` is the ServiceAccount
/// resource): the request with `status.token` and `status.expirationTimestamp`.
pub fn issue(
    api: &ApiServer,
    issuer: &TokenIssuer,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    request: Value,
) -> Result<Value> {
    let ns = ns.unwrap_or("");
    let sa = api.get(def, Some(ns), name)?;
    let uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            invalid(
                name,
                "spec.expirationSeconds",
                format!("Invalid value: {v}: must be an integer"),
            )
        })?,
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            format!(
                "Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(ISSUER.to_owned());
    }
    let bound = spec.get("boundObjectRef").filter(|b| b.is_object());
    let pod = match bound {
        None => None,
        Some(b) => {
            let kind = b.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind != "Pod" {
                return Err(invalid(
                    name,
                    "spec.boundObjectRef.kind",
                    format!("Unsupported value: {kind:?}: supported values: \"Pod\""),
                ));
            }
            let pod_name = b.get("name").and_then(Value::as_str).unwrap_or("");
            let pod = api
                .store
                .get(&Key {
                    res: "/pods".into(),
                    ns: ns.to_owned(),
                    name: pod_name.to_owned(),
                })
                .ok_or_else(|| ApiError::NotFound {
                    kind: "pods".into(),
                    name: pod_name.to_owned(),
                })?;
            let pod_uid = pod
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Some(want) = b
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && want != pod_uid
            {
                return Err(ApiError::Conflict {
                    kind: "pods".into(),
                    name: pod_name.to_owned(),
                });
            }
            Some((pod_name.to_owned(), pod_uid))
        }
    };
    let (token, expires) = issuer.issue(
        ns,
        name,
        uid,
        &audiences,
        seconds,
        pod.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
    )?;
    let expiry = jiff::Timestamp::from_second(expires)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut answer_spec = json!({"audiences": audiences, "expirationSeconds": seconds});
    if let Some(b) = bound {
        answer_spec["boundObjectRef"] = b.clone();
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::clock::now_time()},
        "spec": answer_spec,
        "status": {"token": token, "expirationTimestamp": expiry},
    }))
}
