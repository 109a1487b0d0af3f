//! The ControllerRevisions of a DaemonSet (or StatefulSet), as upstream's `constructHistory`
//! and `cleanupHistory` keep them: one revision per distinct template, named
//! `<owner>-<hash>`, labelled with the template's labels and `controller-revision-hash`,
//! carrying the owner's annotations (`kubernetes.io/change-cause`) and the patch `kubectl
//! rollout undo` applies (`{"spec":{"template":{…,"$patch":"replace"}}}`); going back to an old
//! template makes its revision the newest again; revisions beyond `revisionHistoryLimit` that no
//! live pod uses are deleted, oldest first.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::daemon_set_plan::REVISION_LABEL;
use super::error::{Subject, WorkloadError, is_gone_or_conflict};
use super::pods::{self, controller_of};
use super::template_hash;

/// The owner of the revisions.
pub struct Owner<'a> {
    /// `apps/v1`.
    pub api_version: &'a str,
    /// `DaemonSet` or `StatefulSet`.
    pub kind: &'a str,
    /// The owner's metadata.
    pub meta: &'a ObjectMeta,
    /// The owner's selector as `?labelSelector=` takes it.
    pub selector: String,
    /// The current template.
    pub template: &'a PodTemplateSpec,
    /// `spec.revisionHistoryLimit`.
    pub history_limit: i32,
}

/// The patch a revision stores: the template, replacing the owner's whole template.
pub fn revision_data(template: &PodTemplateSpec) -> Result<Value, serde_json::Error> {
    let mut t = serde_json::to_value(template)?;
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    Ok(json!({"spec": {"template": t}}))
}

/// The current revision: its hash and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The `controller-revision-hash` of the current template.
    pub hash: String,
    /// The revision's `.revision`.
    pub revision: i64,
    /// The revision's name.
    pub name: String,
}

fn number(r: &ControllerRevision) -> i64 {
    r.revision.unwrap_or(0)
}

/// Finds or makes the current revision of `owner`, and deletes revisions beyond the history
/// limit that no live pod uses (`live_hashes`: the pods' `controller-revision-hash` labels).
pub(crate) async fn sync(
    client: &kube::Client,
    owner: &Owner<'_>,
    live_hashes: &BTreeSet<String>,
    subject: &Subject,
) -> Result<Current, WorkloadError> {
    let ns = owner.meta.namespace.clone().unwrap_or_default();
    let uid = owner.meta.uid.clone().unwrap_or_default();
    let name = owner.meta.name.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let mut mine: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(&owner.selector))
        .await
        .map_err(subject.err("listing the revisions of"))?
        .items
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|c| c.uid == uid))
        .collect();
    mine.sort_by_key(number);
    let data = revision_data(owner.template).map_err(|source| WorkloadError::Encode {
        what: "a pod template",
        source,
    })?;
    let max = mine.iter().map(number).max().unwrap_or(0);
    let hash = template_hash::compute(owner.template, None);
    let current = match mine.iter().find(|r| r.data.0 == data) {
        Some(r) if number(r) < max => {
            // An old template again: its revision becomes the newest.
            let n = r.metadata.name.clone().unwrap_or_default();
            let patch = json!({"revision": max + 1});
            api.patch(&n, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(subject.err("renumbering a revision of"))?;
            Current {
                hash: label_hash(r).unwrap_or_else(|| hash.clone()),
                revision: max + 1,
                name: n,
            }
        }
        Some(r) => Current {
            hash: label_hash(r).unwrap_or_else(|| hash.clone()),
            revision: number(r),
            name: r.metadata.name.clone().unwrap_or_default(),
        },
        None => {
            let mut labels = owner
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_LABEL.to_owned(), hash.clone());
            let rev_name = format!("{name}-{hash}");
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(rev_name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: owner.meta.annotations.clone(),
                    owner_references: Some(vec![pods::controller_ref(
                        owner.api_version,
                        owner.kind,
                        owner.meta,
                    )]),
                    ..Default::default()
                },
                data: RawExtension(data),
                revision: Some(max + 1),
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(_) => {}
                // Made by an earlier pass whose list this one missed: the next pass sees it.
                Err(e) if is_gone_or_conflict(&e) => {}
                Err(e) => return Err(subject.err("recording a revision of")(e)),
            }
            Current {
                hash,
                revision: max + 1,
                name: rev_name,
            }
        }
    };
    let limit = usize::try_from(owner.history_limit.max(0)).unwrap_or(0);
    let old: Vec<&ControllerRevision> = mine
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(current.name.as_str()))
        // Live pods name their revision by hash (DaemonSets) or by name (StatefulSets).
        .filter(|r| label_hash(r).is_none_or(|h| !live_hashes.contains(&h)))
        .filter(|r| {
            r.metadata
                .name
                .as_ref()
                .is_none_or(|n| !live_hashes.contains(n))
        })
        .collect();
    let extra = old.len().saturating_sub(limit);
    for r in old.into_iter().take(extra) {
        let n = r.metadata.name.clone().unwrap_or_default();
        if let Err(e) = api.delete(&n, &DeleteParams::background()).await
            && !is_gone_or_conflict(&e)
        {
            return Err(subject.err("deleting an old revision of")(e));
        }
    }
    Ok(current)
}

fn label_hash(r: &ControllerRevision) -> Option<String> {
    r.metadata.labels.as_ref()?.get(REVISION_LABEL).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_data_replaces_the_whole_template() {
        let t: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]}}))
            .expect("a template");
        let d = revision_data(&t).expect("data");
        assert_eq!(d["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "i:1"
        );
    }
}
