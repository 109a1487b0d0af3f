//! Knative Serving's API (`serving.knative.dev/v1`) as imc serves it: the Rust types of
//! Service, Configuration, Revision and Route, their CustomResourceDefinitions (short names,
//! categories and printer columns as Knative's), and Knative's defaulting and validation of
//! them, so the same manifests behave on `imc server` as on a Knative cluster (DESIGN §12).
//!
//! Defaulting and validation work on the JSON objects the API server stores (nothing is lost
//! to a typed round trip); the reconcilers read the typed form.

pub mod crds;
pub mod defaults;
pub mod serving;
pub mod validation;

pub use crds::crds;
pub use serving::{
    Configuration, ConfigurationSpec, Revision, RevisionSpec, RevisionTemplateSpec, Route,
    RouteSpec, Service, ServiceSpec, TrafficTarget,
};
pub use validation::FieldError;

/// The API group of Knative Serving.
pub const GROUP: &str = "serving.knative.dev";
