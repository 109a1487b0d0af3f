//! The endpoint controllers of kube-controller-manager, written with kube-rs: for every Service
//! with a selector (not ExternalName), the EndpointSlices ([`endpoint_slice`]) and the `v1`
//! Endpoints ([`core_endpoints`]) of the pods it selects. Services without a selector are the
//! user's (their Endpoints and slices are left alone); the `kubernetes` Service's are the API
//! server's. The rules are pure functions: [`backends`] (which pods, ready or not, their
//! ports), [`slices`] and [`subsets`].

pub mod backends;
pub mod core_endpoints;
pub mod endpoint_slice;
pub mod slices;
pub mod subsets;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::workloads::error::{Subject, WorkloadError};

/// Runs the EndpointSlice and Endpoints controllers until the process ends.
pub async fn run(client: kube::Client) {
    let tasks = [
        tokio::spawn(endpoint_slice::run(client.clone())),
        tokio::spawn(core_endpoints::run(client)),
    ];
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "an endpoint controller stopped");
        }
    }
}

/// The selector of a Service the endpoint controllers serve, if it is one (a selector, not
/// ExternalName, not being deleted).
pub(crate) fn served_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if svc.metadata.deletion_timestamp.is_some() || spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// The pods in the Service's namespace its selector matches.
pub(crate) async fn selected_pods(
    client: &kube::Client,
    svc: &Service,
    selector: &BTreeMap<String, String>,
    subject: &Subject,
) -> Result<Vec<Pod>, WorkloadError> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    Ok(pods
        .list(&ListParams::default().labels(&labels))
        .await
        .map_err(subject.err("listing pods of"))?
        .items)
}

/// The Services (from the controller's store) whose selector matches `pod`: whom a pod's
/// change concerns.
pub(crate) fn services_of(store: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    store
        .state()
        .into_iter()
        .filter(|svc| svc.metadata.namespace == pod.metadata.namespace)
        .filter(|svc| {
            served_selector(svc)
                .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .map(|svc| ObjectRef::from_obj(&*svc))
        .collect()
}
