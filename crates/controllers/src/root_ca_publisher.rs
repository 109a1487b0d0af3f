//! The `kube-root-ca.crt` ConfigMap in every namespace (kube-controller-manager's
//! root-ca-cert-publisher): `ca.crt` holds the API server's CA so that in-pod clients (the
//! `kube-api-access-*` projected volume) can verify it. Created with each namespace, put back
//! when deleted or changed; namespaces being deleted are left alone.
//!
//! `imc server` runs it with the CA of its own `DIR/pki`; against a real cluster
//! kube-controller-manager does this and it is not started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tracing::{info, warn};

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";
/// Its key holding the PEM.
pub const KEY: &str = "ca.crt";
/// Upstream's description annotation.
const DESCRIPTION_KEY: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Why a namespace's ConfigMap could not be put right.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The API refused or failed.
    #[error("{action} {NAME} in namespace {namespace}: {source}")]
    Api {
        /// What the publisher was doing: "reading", "creating" or "updating".
        action: &'static str,
        /// The namespace of the ConfigMap.
        namespace: String,
        /// The error of the API call.
        #[source]
        source: kube::Error,
    },
}

/// What reconcile needs.
pub struct Context {
    client: kube::Client,
    /// PEM of the CA.
    ca_pem: String,
}

/// The ConfigMap a namespace should have.
pub fn desired(ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            annotations: Some(BTreeMap::from([(
                DESCRIPTION_KEY.to_owned(),
                DESCRIPTION.to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY.to_owned(), ca_pem.to_owned())])),
        ..Default::default()
    }
}

/// Whether `existing` already says what [`desired`] says (other keys and annotations added by
/// users do not matter, as upstream only compares the data and the description).
fn up_to_date(existing: &ConfigMap, ca_pem: &str) -> bool {
    let data_ok = existing
        .data
        .as_ref()
        .is_some_and(|d| d.len() == 1 && d.get(KEY).map(String::as_str) == Some(ca_pem));
    let described = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION_KEY))
        .is_some_and(|d| d == DESCRIPTION);
    data_ok && described
}

/// Makes the ConfigMap of `ns` what [`desired`] says.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, PublishError> {
    let Some(namespace) = ns.metadata.name.clone() else {
        return Ok(Action::await_change());
    };
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let err = |action| {
        let namespace = namespace.clone();
        move |source| PublishError::Api {
            action,
            namespace,
            source,
        }
    };
    let want = desired(&ctx.ca_pem);
    match api.get_opt(NAME).await.map_err(err("reading"))? {
        None => match api.create(&PostParams::default(), &want).await {
            Ok(_) => info!(namespace = %namespace, "published {NAME}"),
            // Raced with another writer, or the namespace is going away: the next event tells.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
            Err(e) => return Err(err("creating")(e)),
        },
        Some(existing) if up_to_date(&existing, &ctx.ca_pem) => {}
        Some(mut existing) => {
            existing.data = want.data;
            existing.binary_data = None;
            existing
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DESCRIPTION_KEY.to_owned(), DESCRIPTION.to_owned());
            match api.replace(NAME, &PostParams::default(), &existing).await {
                Ok(_) => info!(namespace = %namespace, "put {NAME} back"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(err("updating")(e)),
            }
        }
    }
    Ok(Action::await_change())
}

/// Retries a failed namespace after a while.
pub fn error_policy(_ns: Arc<Namespace>, e: &PublishError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "publishing the root CA");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the publisher until the process ends.
pub async fn run(client: kube::Client, ca_pem: String) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let config_maps: Api<ConfigMap> = Api::all(client.clone());
    let ctx = Arc::new(Context { client, ca_pem });
    Controller::new(namespaces, watcher::Config::default())
        .watches(
            config_maps,
            watcher::Config::default().fields(&format!("metadata.name={NAME}")),
            |cm: ConfigMap| {
                cm.metadata
                    .namespace
                    .map(|ns| ObjectRef::<Namespace>::new(&ns))
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_ca_and_description_matter() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let want = desired(pem);
        assert!(up_to_date(&want, pem));
        let mut labelled = want.clone();
        labelled.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        assert!(up_to_date(&labelled, pem), "labels are the user's");
        let rows = [
            json!({"metadata": {"name": NAME}}),
            json!({"metadata": {"name": NAME, "annotations": {DESCRIPTION_KEY: DESCRIPTION}},
                   "data": {KEY: "other"}}),
            json!({"metadata": {"name": NAME, "annotations": {DESCRIPTION_KEY: DESCRIPTION}},
                   "data": {KEY: pem, "extra": "x"}}),
            json!({"metadata": {"name": NAME}, "data": {KEY: pem}}),
        ];
        for row in rows {
            let cm: ConfigMap = serde_json::from_value(row.clone()).unwrap();
            assert!(!up_to_date(&cm, pem), "{row}");
        }
    }
}
