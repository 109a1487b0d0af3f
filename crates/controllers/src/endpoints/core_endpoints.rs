//! The Endpoints controller: keeps the `v1` Endpoints of every Service with a selector (same
//! name, labelled `endpointslice.kubernetes.io/skip-mirror: "true"`) listing the pods it
//! selects, as [`super::subsets`] computes them (terminating pods left out unless the Service
//! publishes not-ready addresses). The Endpoints are owned by their Service, so they go with it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tracing::warn;

use super::backends::backend;
use super::subsets::subsets;
use crate::workloads::error::{Subject, WorkloadError, is_gone_or_conflict};
use crate::workloads::pods::controller_ref;

/// The label telling the EndpointSlice mirroring controller to leave these Endpoints alone.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

/// How often a Service is looked at again without a change (a safety net: changes of the
/// Service, its pods and its objects trigger reconciles at once).
const RESYNC: Duration = Duration::from_secs(60);

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

/// Brings one Service's Endpoints up to date.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    let Some(selector) = super::served_selector(&svc) else {
        return Ok(Action::await_change());
    };
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let subject = Subject {
        kind: "Service",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let pods = super::selected_pods(&ctx.client, &svc, selector, &subject).await?;
    let backends: Vec<_> = pods
        .iter()
        .filter_map(|p| backend(&svc, p, false))
        .collect();
    let service_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map_or(0, Vec::len);
    let subsets = subsets(&backends, service_ports);
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SKIP_MIRROR_LABEL.to_owned(), "true".to_owned());
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let current = api
        .get_opt(&name)
        .await
        .map_err(subject.err("reading the endpoints of"))?;
    let result = match current {
        Some(ep) if ep.subsets == subsets && ep.metadata.labels.as_ref() == Some(&labels) => {
            return Ok(Action::requeue(RESYNC));
        }
        Some(mut ep) => {
            ep.subsets = subsets;
            ep.metadata.labels = Some(labels);
            ep.metadata.managed_fields = None;
            api.replace(&name, &PostParams::default(), &ep).await
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![controller_ref("v1", "Service", &svc.metadata)]),
                    ..Default::default()
                },
                subsets,
            };
            api.create(&PostParams::default(), &ep).await
        }
    };
    match result {
        Ok(_) => Ok(Action::requeue(RESYNC)),
        Err(e) if is_gone_or_conflict(&e) => Ok(Action::requeue(Duration::from_millis(200))),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Action::await_change()),
        Err(e) => Err(subject.err("writing the endpoints of")(e)),
    }
}

/// Retries a failed Service after a while.
pub fn error_policy(_svc: Arc<Service>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling the endpoints of a Service");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let services: Api<Service> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let endpoints: Api<Endpoints> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(
            endpoints,
            watcher::Config::default().labels(&format!("{SKIP_MIRROR_LABEL}=true")),
        )
        .watches(pods, watcher::Config::default(), move |pod| {
            super::services_of(&store, &pod)
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
