//! Dynamic admission: `admissionregistration.k8s.io/v1` MutatingWebhookConfigurations and
//! ValidatingWebhookConfigurations, served as kinds ([`configuration`]) and called on every
//! write as kube-apiserver calls them ([`dispatch`]: rules and selectors from [`matcher`],
//! HTTPS from [`caller`]). The in-process hook point ([`crate::admission`]) runs first; the
//! webhooks follow it.
//!
//! A webhook given as a `service` is reached at the Service's ClusterIP and port when the
//! server serves Services and the Service has one, otherwise at
//! `https://NAME.NAMESPACE.svc:PORT/PATH`, which must then resolve through DNS (the error says
//! so when it does not). Either way the certificate is verified for `NAME.NAMESPACE.svc`.

pub mod caller;
pub mod configuration;
pub mod dispatch;
pub mod matcher;

use crate::authn::User;

/// The `userInfo.username` of writes the server makes itself (its controllers and node), which
/// have no authenticated caller.
pub const SERVER_USER: &str = "system:imc-server";

tokio::task_local! {
    static CALLER: User;
}

/// Runs `f` (a request's handling) with `user` as the caller webhooks are told about.
pub async fn as_caller<F: std::future::Future>(user: User, f: F) -> F::Output {
    CALLER.scope(user, f).await
}

/// The caller of the request being handled on this task, if any.
pub fn caller_user() -> Option<User> {
    CALLER.try_with(Clone::clone).ok()
}
