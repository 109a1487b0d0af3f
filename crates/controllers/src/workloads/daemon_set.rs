//! The DaemonSet controller, as kube-controller-manager's: one pod of the template on every
//! Node that should run it ([`super::daemon_set_plan`]), named `<ds>-<random>` by the server,
//! owned by the DaemonSet (`blockOwnerDeletion`), pinned with the node-affinity term upstream
//! uses and bound by the scheduler; ControllerRevisions ([`super::history`]) for `kubectl
//! rollout history|undo`; RollingUpdate within `maxUnavailable` or OnDelete; and the status
//! kubectl's columns and `rollout status` read. Node changes reach every DaemonSet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use tracing::warn;

use super::daemon_set_plan::{self, NodeState, REVISION_LABEL};
use super::error::{Subject, WorkloadError, is_gone_or_conflict};
use super::history::{self, Owner};
use super::pods::{self, controller_of, selector_matches};
use crate::scheduler::fit::NodeFacts;

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

/// Brings one DaemonSet to a pod per fitting node and writes its status.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let subject = Subject {
        kind: "DaemonSet",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let spec = ds.spec.clone();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let selector = pods::selector_string(&spec.selector);
    let mine: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(subject.err("listing pods of"))?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .filter(|p| selector_matches(&spec.selector, &pods::labels(&p.metadata)))
        .collect();
    let live_hashes: BTreeSet<String> = mine
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_LABEL).cloned())
        .collect();
    let owner = Owner {
        api_version: "apps/v1",
        kind: "DaemonSet",
        meta: &ds.metadata,
        selector: selector.clone(),
        template: &spec.template,
        history_limit: spec.revision_history_limit.unwrap_or(10),
    };
    let current = history::sync(&ctx.client, &owner, &live_hashes, &subject).await?;
    let nodes = nodes_api
        .list(&ListParams::default())
        .await
        .map_err(subject.err("listing nodes for"))?
        .items;
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in mine {
        // A pod for no node (never made by this controller) counts as on no node.
        let node = daemon_set_plan::target_node(&p).unwrap_or_default();
        by_node.entry(node).or_default().push(p);
    }
    let mut states = Vec::new();
    for node in &nodes {
        let facts = NodeFacts::of(node);
        let mut on_node = by_node.remove(&facts.name).unwrap_or_default();
        on_node.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        states.push(NodeState {
            fit: daemon_set_plan::node_fit(&spec.template, &facts),
            name: facts.name,
            pods: on_node,
        });
    }
    let now = jiff::Timestamp::now();
    let plan = daemon_set_plan::plan(&spec, &states, &current.hash, ds.metadata.generation, now);
    // Pods for nodes that no longer exist go too.
    let orphaned: Vec<String> = by_node
        .into_values()
        .flatten()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    let owner_ref = pods::controller_ref("apps/v1", "DaemonSet", &ds.metadata);
    let creates = plan.create_on.iter().map(|node| {
        let pod = daemon_set_plan::daemon_pod(
            &spec.template,
            &name,
            owner_ref.clone(),
            node,
            &current.hash,
        );
        let api = pods_api.clone();
        async move { api.create(&PostParams::default(), &pod).await }
    });
    for result in futures::future::join_all(creates).await {
        match result {
            Ok(_) => {}
            // The namespace is going away.
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            Err(e) => return Err(subject.err("creating a pod for")(e)),
        }
    }
    let deletes = plan.delete.iter().chain(&orphaned).map(|n| {
        let api = pods_api.clone();
        let n = n.clone();
        async move { api.delete(&n, &DeleteParams::default()).await }
    });
    for result in futures::future::join_all(deletes).await {
        if let Err(e) = result
            && !is_gone_or_conflict(&e)
        {
            return Err(subject.err("deleting a pod of")(e));
        }
    }
    let mut status = plan.status.clone();
    status.collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    status.conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": status});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("writing the status of")(e)),
        }
    }
    Ok(match plan.next_available {
        Some(secs) => Action::requeue(Duration::from_secs(u64::try_from(secs.max(1)).unwrap_or(1))),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Retries a failed DaemonSet after a while.
pub fn error_policy(_ds: Arc<DaemonSet>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling a DaemonSet");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let sets: Api<DaemonSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(pods, watcher::Config::default())
        // A node added, relabelled, tainted or turning Ready may change every DaemonSet.
        .watches(nodes, watcher::Config::default(), move |_node| {
            store
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
