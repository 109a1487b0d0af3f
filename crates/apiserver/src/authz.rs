//! Authorization, as kube-apiserver's `Node,RBAC` chain would decide for imc's users: the admin
//! (`system:masters`) may do anything; every authenticated user may read discovery, `/version`,
//! `/healthz` and OpenAPI and ask who it is and what it may do (the `system:basic-user`,
//! `system:discovery` and `system:public-info-viewer` roles); the read-only user may `get`,
//! `list` and `watch` everything but Secrets (the upstream `view` role's rule); everything else
//! is granted by the RBAC objects stored (Roles, ClusterRoles and their bindings), evaluated as
//! kube-apiserver's RBAC authorizer does. Refusals are worded as upstream's.

use serde_json::{Value, json};

use crate::authn::{MASTERS, User, VIEWERS};
use crate::error::ApiError;
use crate::store::Store;

/// What a request does, in authorization terms (`authorizer.Attributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// Set for resource requests; None for a non-resource path such as `/metrics`.
    pub resource: Option<ResourceAttributes>,
    /// The request path (non-resource requests).
    pub path: String,
}

/// The resource part of [`Attributes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// API group ("" for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name.
    pub resource: String,
    /// Subresource, "" for none.
    pub subresource: String,
    /// Namespace, "" for cluster-scoped (or all namespaces).
    pub namespace: String,
    /// Object name, "" for collections.
    pub name: String,
}

/// One RBAC `PolicyRule`, read leniently from a stored Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Verbs (`*` for all).
    pub verbs: Vec<String>,
    /// API groups (`*` for all).
    pub api_groups: Vec<String>,
    /// Resources, `res/sub` for subresources (`*` for all).
    pub resources: Vec<String>,
    /// Object names the rule is limited to (empty: all).
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/api/*`, `*`).
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Rule {
    fn from_value(v: &Value) -> Self {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// The rule as a SelfSubjectRulesReview lists it: (resource rule, non-resource rule).
    fn to_review(&self) -> (Option<Value>, Option<Value>) {
        let resource = (!self.resources.is_empty()).then(|| {
            let mut r = json!({"verbs": self.verbs, "apiGroups": self.api_groups, "resources": self.resources});
            if !self.resource_names.is_empty() {
                r["resourceNames"] = json!(self.resource_names);
            }
            r
        });
        let non_resource = (!self.non_resource_urls.is_empty())
            .then(|| json!({"verbs": self.verbs, "nonResourceURLs": self.non_resource_urls}));
        (resource, non_resource)
    }

    /// Whether the rule allows `attrs` (rbac/v1 `RuleAllows`).
    pub fn allows(&self, attrs: &Attributes) -> bool {
        if !self.verbs.iter().any(|v| v == "*" || *v == attrs.verb) {
            return false;
        }
        match &attrs.resource {
            Some(r) => {
                let group_ok = self.api_groups.iter().any(|g| g == "*" || *g == r.group);
                let full = if r.subresource.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}/{}", r.resource, r.subresource)
                };
                let resource_ok = self.resources.iter().any(|res| {
                    res == "*"
                        || *res == full
                        || (!r.subresource.is_empty() && *res == format!("*/{}", r.subresource))
                });
                let name_ok =
                    self.resource_names.is_empty() || self.resource_names.contains(&r.name);
                group_ok && resource_ok && name_ok
            }
            None => self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == attrs.path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| attrs.path.starts_with(prefix))
            }),
        }
    }
}

/// What every authenticated user may do (`system:basic-user`, `system:discovery`,
/// `system:public-info-viewer`).
fn basic_rules() -> Vec<Rule> {
    vec![
        Rule {
            verbs: list(&["create"]),
            api_groups: list(&["authorization.k8s.io"]),
            resources: list(&["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            ..Rule::default()
        },
        Rule {
            verbs: list(&["create"]),
            api_groups: list(&["authentication.k8s.io"]),
            resources: list(&["selfsubjectreviews"]),
            ..Rule::default()
        },
        Rule {
            verbs: list(&["get"]),
            non_resource_urls: list(&[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/openapi",
                "/openapi/*",
                "/version",
                "/version/",
                "/healthz",
                "/livez",
                "/readyz",
            ]),
            ..Rule::default()
        },
    ]
}

/// The read-only user's rule: the upstream `view` role's reach (every kind, Secrets excepted).
fn view_rules(resources: &[String]) -> Vec<Rule> {
    vec![Rule {
        verbs: list(&["get", "list", "watch"]),
        api_groups: list(&["*"]),
        resources: resources.to_vec(),
        ..Rule::default()
    }]
}

fn everything() -> Rule {
    Rule {
        verbs: list(&["*"]),
        api_groups: list(&["*"]),
        resources: list(&["*"]),
        non_resource_urls: list(&["*"]),
        ..Rule::default()
    }
}

/// Whether a binding subject names `user`; `binding_ns` is the namespace of a RoleBinding.
fn subject_matches(subject: &Value, user: &User, binding_ns: &str) -> bool {
    let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => name == user.name,
        Some("Group") => user.in_group(name),
        Some("ServiceAccount") => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// Decides requests.
pub struct Authorizer {
    store: Store,
    /// Every served resource a viewer may read (`plural` and `plural/sub` of readable
    /// subresources), Secrets excepted.
    viewable: Vec<String>,
}

impl Authorizer {
    /// An authorizer reading RBAC objects from `store`; `viewable` is what the read-only user
    /// may read.
    pub fn new(store: Store, viewable: Vec<String>) -> Self {
        Authorizer { store, viewable }
    }

    /// The rules the stored RBAC objects grant `user`: those of ClusterRoleBindings
    /// everywhere, and those of the RoleBindings of `namespace` when given.
    fn rbac_rules(&self, user: &User, namespace: Option<&str>) -> Vec<Rule> {
        let mut rules = Vec::new();
        let role_rules = |res: &str, ns: &str, name: &str| -> Vec<Rule> {
            self.store
                .get(&crate::store::Key {
                    res: res.to_owned(),
                    ns: ns.to_owned(),
                    name: name.to_owned(),
                })
                .and_then(|r| r.get("rules").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .iter()
                .map(Rule::from_value)
                .collect()
        };
        let (crbs, _) = self
            .store
            .list("rbac.authorization.k8s.io/clusterrolebindings", None);
        for b in crbs {
            let bound = b
                .get("subjects")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, "")));
            if bound && b.pointer("/roleRef/kind").and_then(Value::as_str) == Some("ClusterRole") {
                let role = b
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                rules.extend(role_rules(
                    "rbac.authorization.k8s.io/clusterroles",
                    "",
                    role,
                ));
            }
        }
        let Some(namespace) = namespace else {
            return rules;
        };
        let (rbs, _) = self
            .store
            .list("rbac.authorization.k8s.io/rolebindings", Some(namespace));
        for b in rbs {
            let ns = b
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let bound = b
                .get("subjects")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, ns)));
            if !bound {
                continue;
            }
            let role = b
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            match b.pointer("/roleRef/kind").and_then(Value::as_str) {
                Some("Role") => {
                    rules.extend(role_rules("rbac.authorization.k8s.io/roles", ns, role))
                }
                Some("ClusterRole") => rules.extend(role_rules(
                    "rbac.authorization.k8s.io/clusterroles",
                    "",
                    role,
                )),
                _ => {}
            }
        }
        rules
    }

    /// Every rule that applies to `user` in `namespace` (None: at the cluster scope, where no
    /// RoleBinding applies).
    fn rules(&self, user: &User, namespace: Option<&str>) -> Vec<Rule> {
        if user.in_group(MASTERS) {
            return vec![everything()];
        }
        let mut rules = basic_rules();
        if user.in_group(VIEWERS) {
            rules.extend(view_rules(&self.viewable));
        }
        rules.extend(self.rbac_rules(user, namespace));
        rules
    }

    /// Whether `user` may do what `attrs` describe.
    pub fn allowed(&self, user: &User, attrs: &Attributes) -> bool {
        let ns = attrs
            .resource
            .as_ref()
            .map(|r| r.namespace.as_str())
            .filter(|n| !n.is_empty());
        self.rules(user, ns).iter().any(|r| r.allows(attrs))
    }

    /// Refuses with upstream's 403 unless `user` may do what `attrs` describe.
    pub fn check(&self, user: &User, attrs: &Attributes) -> Result<(), ApiError> {
        if self.allowed(user, attrs) {
            Ok(())
        } else {
            Err(forbidden(user, attrs))
        }
    }

    /// A SelfSubjectRulesReview's status for `user` in `namespace`.
    pub fn rules_review(&self, user: &User, namespace: &str) -> Value {
        let mut resource_rules = Vec::new();
        let mut non_resource_rules = Vec::new();
        for rule in self.rules(user, Some(namespace).filter(|n| !n.is_empty())) {
            let (r, n) = rule.to_review();
            resource_rules.extend(r);
            non_resource_rules.extend(n);
        }
        json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
    }
}

/// kube-apiserver's 403 for `attrs` refused to `user`.
pub fn forbidden(user: &User, attrs: &Attributes) -> ApiError {
    let Some(r) = &attrs.resource else {
        return ApiError::Forbidden(format!(
            "forbidden: User {:?} cannot {} path {:?}",
            user.name, attrs.verb, attrs.path
        ));
    };
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace {:?}", r.namespace)
    };
    let qualified = if r.group.is_empty() {
        r.resource.clone()
    } else {
        format!("{}.{}", r.resource, r.group)
    };
    let subject = if r.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", r.name)
    };
    ApiError::Forbidden(format!(
        "{subject} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, attrs.verb, r.group
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::AUTHENTICATED;
    use crate::store::{Expect, Key};
    use std::collections::BTreeMap;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            extra: BTreeMap::new(),
        }
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource: Some(ResourceAttributes {
                group: group.into(),
                version: "v1".into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: ns.into(),
                name: name.into(),
            }),
            path: String::new(),
        }
    }

    fn path(verb: &str, p: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource: None,
            path: p.into(),
        }
    }

    async fn put(store: &Store, res: &str, ns: &str, name: &str, obj: Value) {
        store
            .write(
                Key {
                    res: res.into(),
                    ns: ns.into(),
                    name: name.into(),
                },
                Some(obj),
                Expect::Absent,
                "x",
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn who_may_do_what() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db"), 100).unwrap();
        put(&store, "rbac.authorization.k8s.io/roles", "team", "cm-editor", json!({"metadata": {},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]},
                      {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"], "resourceNames": ["web"]}]})).await;
        put(
            &store,
            "rbac.authorization.k8s.io/rolebindings",
            "team",
            "b",
            json!({"metadata": {"namespace": "team"},
            "roleRef": {"kind": "Role", "name": "cm-editor"},
            "subjects": [{"kind": "ServiceAccount", "name": "builder"}]}),
        )
        .await;
        put(
            &store,
            "rbac.authorization.k8s.io/clusterroles",
            "",
            "metrics",
            json!({"metadata": {},
            "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
        )
        .await;
        put(
            &store,
            "rbac.authorization.k8s.io/clusterrolebindings",
            "",
            "m",
            json!({"metadata": {},
            "roleRef": {"kind": "ClusterRole", "name": "metrics"},
            "subjects": [{"kind": "Group", "name": "monitoring"}]}),
        )
        .await;
        let authz = Authorizer::new(
            store,
            vec!["pods".into(), "pods/log".into(), "configmaps".into()],
        );

        let admin = user("imc-admin", &[MASTERS, AUTHENTICATED]);
        let view = user("imc-view", &[VIEWERS, AUTHENTICATED]);
        let sa = user(
            "system:serviceaccount:team:builder",
            &["system:serviceaccounts", AUTHENTICATED],
        );
        let mon = user("prom", &["monitoring", AUTHENTICATED]);
        let cases: &[(&User, Attributes, bool)] = &[
            (
                &admin,
                res("delete", "", "secrets", "", "default", "s"),
                true,
            ),
            (&admin, path("get", "/metrics"), true),
            (&view, res("list", "", "pods", "", "", ""), true),
            (&view, res("get", "", "pods", "log", "default", "p"), true),
            (&view, res("get", "", "secrets", "", "default", "s"), false),
            (
                &view,
                res("create", "", "configmaps", "", "default", ""),
                false,
            ),
            (
                &view,
                res(
                    "create",
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews",
                    "",
                    "",
                    "",
                ),
                true,
            ),
            (&view, path("get", "/apis/apps/v1"), true),
            (&view, path("get", "/metrics"), false),
            (&sa, res("create", "", "configmaps", "", "team", ""), true),
            (&sa, res("create", "", "configmaps", "", "other", ""), false),
            (&sa, res("delete", "", "configmaps", "", "team", "c"), false),
            (&sa, res("get", "", "pods", "log", "team", "web"), true),
            (&sa, res("get", "", "pods", "log", "team", "db"), false),
            (&mon, path("get", "/metrics"), true),
            (&mon, res("get", "", "configmaps", "", "team", "c"), false),
        ];
        for (u, attrs, want) in cases {
            assert_eq!(authz.allowed(u, attrs), *want, "{} {attrs:?}", u.name);
        }
        let err = authz
            .check(&view, &res("create", "", "configmaps", "", "default", ""))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"configmaps is forbidden: User "imc-view" cannot create resource "configmaps" in API group "" in the namespace "default""#
        );
        let err = forbidden(
            &view,
            &res(
                "delete",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "",
                "admin",
            ),
        );
        assert_eq!(
            err.to_string(),
            r#"clusterroles.rbac.authorization.k8s.io "admin" is forbidden: User "imc-view" cannot delete resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope"#
        );
    }
}
