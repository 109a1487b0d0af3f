//! The `deploy` scenario of `imc-bench pod --deploy`: a Deployment whose pod template is pinned
//! to the Ready cache (the image-cache annotation), created with 0 replicas and scaled to N
//! through the `scale` subresource, timed until a watch has seen all N pods running. Set
//! against the burst of the same N bare pods, it is what the ReplicaSet and Deployment
//! controllers add.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Seconds from scaling the Deployment `bench-deploy` (template `template`, a Pod whose
/// metadata annotations and spec become the template's) from 0 to `n` until every pod runs.
pub async fn scale_up(
    client: kube::Client,
    n: usize,
    template: &Pod,
    is_running: fn(Option<&Pod>) -> bool,
    patience: std::time::Duration,
) -> anyhow::Result<f64> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench-deploy"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"bench": "deploy"}},
            "template": {"metadata": {"labels": {"bench": "deploy"},
                "annotations": template.metadata.annotations},
                "spec": template.spec}}
    }))
    .context("build the Deployment")?;
    deployments
        .create(&PostParams::default(), &d)
        .await
        .context("create the Deployment")?;
    let config = watcher::Config::default().labels("bench=deploy");
    let mut events = std::pin::pin!(watcher::watcher(pods, config).applied_objects());
    eprintln!("deploy: scaling bench-deploy 0 -> {n}");
    let t = Instant::now();
    let scale = json!({"spec": {"replicas": n}});
    deployments
        .patch_scale(
            "bench-deploy",
            &PatchParams::default(),
            &Patch::Merge(&scale),
        )
        .await
        .context("scale the Deployment")?;
    let watch = async {
        let mut running = HashSet::new();
        while running.len() < n {
            let Some(p) = events
                .try_next()
                .await
                .context("watch the Deployment's pods")?
            else {
                bail!("the watch of the Deployment's pods ended");
            };
            if is_running(Some(&p)) {
                running.insert(p.metadata.name.clone().unwrap_or_default());
            }
        }
        anyhow::Ok(t.elapsed().as_secs_f64())
    };
    let all_running = tokio::time::timeout(patience, watch)
        .await
        .context("the Deployment's pods did not run in time")??;
    eprintln!("deploy: {n} pods running after {all_running:.2} s");
    deployments
        .delete("bench-deploy", &DeleteParams::background())
        .await
        .context("delete the Deployment")?;
    Ok(all_running)
}
