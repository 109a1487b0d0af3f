//! The EndpointSlice controller: keeps the slices of every Service with a selector (labelled
//! `kubernetes.io/service-name` and managed by `endpointslice-controller.k8s.io`, owned by the
//! Service) holding the pods it selects, as [`super::slices`] computes them, whenever the
//! Service, one of its pods or one of its slices changes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tracing::warn;

use super::backends::backend;
use super::slices::{self, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};
use crate::workloads::error::{Subject, WorkloadError, is_gone_or_conflict};

/// How often a Service is looked at again without a change (a safety net: changes of the
/// Service, its pods and its objects trigger reconciles at once).
const RESYNC: Duration = Duration::from_secs(60);

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

/// Brings one Service's slices up to date.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    let Some(selector) = super::served_selector(&svc) else {
        return Ok(Action::await_change());
    };
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let subject = Subject {
        kind: "Service",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let pods = super::selected_pods(&ctx.client, &svc, selector, &subject).await?;
    let backends: Vec<_> = pods.iter().filter_map(|p| backend(&svc, p, true)).collect();
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await
        .map_err(subject.err("listing the endpoint slices of"))?
        .items;
    // Slices of an earlier Service of the same name go (the garbage collector would too).
    let (mine, stale): (Vec<_>, Vec<_>) = listed.into_iter().partition(|s| {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid)
    });
    let mut plan = slices::plan(&svc, &mine, slices::desired(&backends));
    plan.delete
        .extend(stale.into_iter().filter_map(|s| s.metadata.name));
    for slice in plan.update {
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        match api
            .replace(&slice_name, &PostParams::default(), &slice)
            .await
        {
            Ok(_) => {}
            // Someone wrote first: the change event brings us back.
            Err(e) if is_gone_or_conflict(&e) => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(subject.err("updating an endpoint slice of")(e)),
        }
    }
    for slice in plan.create {
        match api.create(&PostParams::default(), &slice).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {}
            Err(e) => return Err(subject.err("creating an endpoint slice for")(e)),
        }
    }
    for slice_name in plan.delete {
        match api.delete(&slice_name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("deleting an endpoint slice of")(e)),
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Retries a failed Service after a while.
pub fn error_policy(_svc: Arc<Service>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling the endpoint slices of a Service");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let services: Api<Service> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let endpoint_slices: Api<EndpointSlice> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(
            endpoint_slices,
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        )
        .watches(pods, watcher::Config::default(), move |pod| {
            super::services_of(&store, &pod)
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
