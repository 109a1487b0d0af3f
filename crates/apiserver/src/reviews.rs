//! The self reviews kubectl's `auth` commands create: SelfSubjectAccessReview (`kubectl auth
//! can-i VERB RESOURCE`), SelfSubjectRulesReview (`kubectl auth can-i --list`) and
//! SelfSubjectReview (`kubectl auth whoami`). They are never stored: the answer is the
//! request with its `status` filled in by the [`Authorizer`].

use serde_json::{Value, json};

use crate::authn::User;
use crate::authz::{Attributes, Authorizer, ResourceAttributes};
use crate::error::{ApiError, Cause, Result};
use crate::resources::ResourceDef;
use crate::schema::Schema;

fn review_def<T: schemars::JsonSchema>(group: &str, kind: &str, plural: &str) -> ResourceDef {
    let mut def = ResourceDef::new(group, "v1", kind, plural, false);
    def.review = true;
    def.verbs = vec!["create"];
    def.columns = Vec::new();
    def.schema = Schema::of::<T>();
    def
}

/// The three review kinds, create-only.
pub fn defs() -> Vec<ResourceDef> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectRulesReview};
    vec![
        review_def::<SelfSubjectAccessReview>(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
        ),
        review_def::<SelfSubjectRulesReview>(
            "authorization.k8s.io",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
        ),
        review_def::<SelfSubjectReview>(
            "authentication.k8s.io",
            "SelfSubjectReview",
            "selfsubjectreviews",
        ),
    ]
}

fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn invalid(def: &ResourceDef, field: &str, message: &str) -> ApiError {
    ApiError::Invalid {
        kind: def.kind.clone(),
        name: String::new(),
        causes: vec![Cause {
            field: field.to_owned(),
            reason: "FieldValueInvalid".into(),
            message: message.to_owned(),
        }],
    }
}

/// The answer to a review of kind `def` that `user` created.
pub fn answer(
    def: &ResourceDef,
    mut review: Value,
    user: &User,
    authz: &Authorizer,
) -> Result<Value> {
    if !review.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    review["apiVersion"] = json!(def.api_version());
    review["kind"] = json!(def.kind);
    if !review.get("metadata").is_some_and(Value::is_object) {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    review["status"] = match def.kind.as_str() {
        "SelfSubjectAccessReview" => {
            let attrs = access_attributes(def, &spec)?;
            json!({"allowed": authz.allowed(user, &attrs)})
        }
        "SelfSubjectRulesReview" => authz.rules_review(user, &text(&spec, "namespace")),
        "SelfSubjectReview" => json!({"userInfo": user.user_info()}),
        other => {
            return Err(ApiError::Internal(format!("{other} is not a review kind")));
        }
    };
    Ok(review)
}

/// The attributes a SelfSubjectAccessReview asks about: exactly one of `resourceAttributes`
/// and `nonResourceAttributes`.
fn access_attributes(def: &ResourceDef, spec: &Value) -> Result<Attributes> {
    match (
        spec.get("resourceAttributes").filter(|v| v.is_object()),
        spec.get("nonResourceAttributes").filter(|v| v.is_object()),
    ) {
        (Some(r), None) => Ok(Attributes {
            verb: text(r, "verb"),
            resource: Some(ResourceAttributes {
                group: text(r, "group"),
                version: text(r, "version"),
                resource: text(r, "resource"),
                subresource: text(r, "subresource"),
                namespace: text(r, "namespace"),
                name: text(r, "name"),
            }),
            path: String::new(),
        }),
        (None, Some(n)) => Ok(Attributes {
            verb: text(n, "verb"),
            resource: None,
            path: text(n, "path"),
        }),
        _ => Err(invalid(
            def,
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}
