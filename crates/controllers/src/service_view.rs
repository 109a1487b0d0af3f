//! The node's view of Services and EndpointSlices: two kube-rs reflectors (every namespace),
//! read by the Service data path ([`crate::proxy`]) and the cluster DNS ([`crate::dns`]) as
//! kube-proxy and CoreDNS read them, whoever wrote the objects.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tracing::warn;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Services and EndpointSlices as last watched, and a signal on every change.
#[derive(Clone)]
pub struct ServiceView {
    /// Every Service.
    pub services: Store<Service>,
    /// Every EndpointSlice.
    pub slices: Store<EndpointSlice>,
    /// Notified (one stored permit) after each change, and once each list is complete.
    pub changed: Arc<Notify>,
}

impl ServiceView {
    /// Starts watching with `client`; the view fills as the lists arrive.
    pub fn watch(client: kube::Client) -> Self {
        let (services, service_writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        tokio::spawn(feed(
            Api::<Service>::all(client.clone()),
            service_writer,
            changed.clone(),
        ));
        tokio::spawn(feed(
            Api::<EndpointSlice>::all(client),
            slice_writer,
            changed.clone(),
        ));
        ServiceView {
            services,
            slices,
            changed,
        }
    }

    /// Waits until both lists have arrived once.
    pub async fn ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
    }

    /// The EndpointSlices of Service `namespace/name`.
    pub fn slices_of(&self, namespace: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices.state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(name)
        })
    }
}

/// Keeps `writer` up to date from a watch of `api`, notifying `changed`.
async fn feed<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                changed.notify_one()
            }
            Ok(_) => {}
            Err(e) if !crate::stopping::underway() => {
                warn!(kind = K::kind(&()).as_ref(), error = %e, "watching services")
            }
            Err(_) => {}
        }
    }
}
