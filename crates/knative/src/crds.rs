//! The CustomResourceDefinitions of the four kinds, as `imc server` installs them and as a
//! cluster without Knative would get them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::serving::{Configuration, Revision, Route, Service};

/// Service, Configuration, Revision and Route, each with the status subresource.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [Service::crd(), Configuration::crd(), Revision::crd(), Route::crd()]
        .into_iter()
        .map(|mut crd| {
            crd.metadata
                .labels
                .get_or_insert_default()
                .insert("serving.knative.dev/release".into(), "imc".into());
            crd
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(crd: &CustomResourceDefinition) -> Vec<String> {
        crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.to_uppercase())
            .collect()
    }

    #[test]
    fn names_categories_and_columns_are_knatives() {
        let crds = crds();
        let names: Vec<_> = crds.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "services.serving.knative.dev",
                "configurations.serving.knative.dev",
                "revisions.serving.knative.dev",
                "routes.serving.knative.dev"
            ]
        );
        for crd in &crds {
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&["all".to_owned(), "knative".into(), "serving".into()][..])
            );
        }
        let short = |i: usize| crds[i].spec.names.short_names.clone().unwrap_or_default();
        assert_eq!(short(0), ["kservice", "ksvc"]);
        assert_eq!(short(1), ["config", "cfg"]);
        assert_eq!(short(2), ["rev"]);
        assert_eq!(short(3), ["rt"]);
        assert_eq!(
            columns(&crds[0]),
            ["URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"]
        );
        assert_eq!(
            columns(&crds[1]),
            ["LATESTCREATED", "LATESTREADY", "READY", "REASON"]
        );
        assert_eq!(
            columns(&crds[2]),
            [
                "CONFIG NAME",
                "GENERATION",
                "READY",
                "REASON",
                "ACTUAL REPLICAS",
                "DESIRED REPLICAS"
            ]
        );
        assert_eq!(columns(&crds[3]), ["URL", "READY", "REASON"]);
    }
}
