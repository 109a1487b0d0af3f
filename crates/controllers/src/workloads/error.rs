//! Errors of the workload controllers.

/// Why a workload could not be reconciled (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// An API call failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        /// What the controller was doing ("listing pods of", "creating a pod for", …).
        action: &'static str,
        /// The kind of the object reconciled.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The error of the API call.
        #[source]
        source: kube::Error,
    },
    /// The object could not be turned into what the controller writes.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// Names the object an API error is about.
pub(crate) struct Subject {
    pub(crate) kind: &'static str,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl Subject {
    /// A closure turning a kube error into a [`WorkloadError`] while doing `action`.
    pub(crate) fn err(
        &self,
        action: &'static str,
    ) -> impl FnOnce(kube::Error) -> WorkloadError + '_ {
        move |source| WorkloadError::Api {
            action,
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }
}

/// Whether the error is a 404 (the object is gone already) or 409 (someone wrote first; the
/// next event retries).
pub(crate) fn is_gone_or_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}
