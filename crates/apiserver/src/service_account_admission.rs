//! The ServiceAccount admission plugin of kube-apiserver, on pod create: the pod runs as
//! `spec.serviceAccountName` (`default` when empty), which must exist in its namespace
//! (`error looking up service account NS/NAME: serviceaccount "NAME" not found`, 403), and
//! unless `automountServiceAccountToken` is false (on the pod, else on the ServiceAccount)
//! every container and init container mounts a `kube-api-access-xxxxx` projected volume
//! (a bound token `token` for 3607 s, `ca.crt` from the `kube-root-ca.crt` ConfigMap and the
//! pod's `namespace`) read-only at `/var/run/secrets/kubernetes.io/serviceaccount`, unless
//! it already mounts something there. In-pod clients (client-go's in-cluster config) read
//! those three files.

use rand::Rng;
use serde_json::{Value, json};

use crate::error::ApiError;

/// Where the API access files are mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The volume name prefix (`kube-api-access-` plus five random characters).
pub const VOLUME_PREFIX: &str = "kube-api-access-";

/// How long the projected token lives (upstream's `WarnOnlyBoundTokenExpirationSeconds`).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;

/// The characters of generated name suffixes (Kubernetes' `utilrand.String`: no vowels, no
/// look-alikes).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The projected volume source of the API access files.
pub fn token_volume_source() -> Value {
    json!({
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]
    })
}

/// Admits a new pod of namespace `ns`: `service_account` looks a ServiceAccount of that
/// namespace up by name.
pub fn admit(
    pod: &mut Value,
    ns: &str,
    service_account: impl Fn(&str) -> Option<Value>,
) -> Result<(), ApiError> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // Mirror pods (static pods of a kubelet) are left alone upstream; imc has none, and a
    // client-made one gets no API access either.
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return Ok(());
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    spec.insert("serviceAccountName".into(), json!(name));
    spec.insert("serviceAccount".into(), json!(name));
    let Some(account) = service_account(&name) else {
        return Err(ApiError::Forbidden(format!(
            "pods {pod_name:?} is forbidden: error looking up service account {ns}/{name}: \
             serviceaccount {name:?} not found"
        )));
    };
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            account
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .find(|n| n.starts_with(VOLUME_PREFIX))
                .map(str::to_owned)
        });
    let volume = existing.clone().unwrap_or_else(|| {
        let mut rng = rand::rng();
        let suffix: String = (0..5)
            .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
            .collect();
        format!("{VOLUME_PREFIX}{suffix}")
    });
    let mount = json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if !mounts.is_array() {
                *mounts = json!([]);
            }
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            let taken = mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH));
            if !taken {
                mounts.push(mount.clone());
                needed = true;
            }
        }
    }
    if needed && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if !volumes.is_array() {
            *volumes = json!([]);
        }
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(json!({"name": volume, "projected": token_volume_source()}));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec})
    }

    fn accounts(name: &str) -> Option<Value> {
        match name {
            "default" => Some(json!({"metadata": {"name": "default"}})),
            "quiet" => {
                Some(json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false}))
            }
            _ => None,
        }
    }

    /// The mount paths of each container, init containers first.
    fn mounts(pod: &Value) -> Vec<Vec<String>> {
        ["initContainers", "containers"]
            .iter()
            .flat_map(|l| pod["spec"][l].as_array().cloned().unwrap_or_default())
            .map(|c| {
                c["volumeMounts"]
                    .as_array()
                    .map(|ms| {
                        ms.iter()
                            .map(|m| m["mountPath"].as_str().unwrap().to_owned())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn api_access_is_mounted_as_the_service_account_plugin_does() {
        let two = json!({"initContainers": [{"name": "i"}],
                         "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}],
                         "volumes": [{"name": "own", "emptyDir": {}}]});
        let sa = |spec: &Value, name: &str| {
            let mut s = spec.clone();
            s["serviceAccountName"] = json!(name);
            s
        };
        let mut off = two.clone();
        off["automountServiceAccountToken"] = json!(false);
        let mut forced_on = sa(&two, "quiet");
        forced_on["automountServiceAccountToken"] = json!(true);
        // (spec, the account used, the mount paths of each container, a projected volume added)
        let s = MOUNT_PATH.to_owned();
        let cases: Vec<(Value, &str, Vec<Vec<String>>, bool)> = vec![
            (
                two.clone(),
                "default",
                vec![vec![s.clone()], vec![s.clone()], vec![s.clone()]],
                true,
            ),
            (off, "default", vec![vec![], vec![], vec![s.clone()]], false),
            (
                sa(&two, "quiet"),
                "quiet",
                vec![vec![], vec![], vec![s.clone()]],
                false,
            ),
            (
                forced_on,
                "quiet",
                vec![vec![s.clone()], vec![s.clone()], vec![s.clone()]],
                true,
            ),
        ];
        for (spec, account, want, added) in cases {
            let mut p = pod(spec.clone());
            admit(&mut p, "team", accounts).unwrap();
            assert_eq!(p["spec"]["serviceAccountName"], account, "{spec}");
            assert_eq!(p["spec"]["serviceAccount"], account, "{spec}");
            assert_eq!(mounts(&p), want, "{spec}");
            let projected: Vec<&Value> = p["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["name"].as_str().unwrap().starts_with(VOLUME_PREFIX))
                .collect();
            assert_eq!(projected.len(), usize::from(added), "{spec}");
            if let Some(v) = projected.first() {
                let name = v["name"].as_str().unwrap();
                assert_eq!(name.len(), VOLUME_PREFIX.len() + 5);
                assert_eq!(v["projected"], token_volume_source());
                let m = &p["spec"]["containers"][0]["volumeMounts"][0];
                assert_eq!(
                    m,
                    &json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH})
                );
            }
        }
    }

    #[test]
    fn a_missing_service_account_is_refused() {
        let mut p = pod(json!({"serviceAccountName": "ghost", "containers": [{"name": "a"}]}));
        let err = admit(&mut p, "team", accounts).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)));
        assert_eq!(
            err.to_string(),
            r#"pods "p" is forbidden: error looking up service account team/ghost: serviceaccount "ghost" not found"#
        );
    }
}
