//! An HTTPS registry with a self-signed certificate: refused unless its host is listed as
//! insecure, in which case only that host skips verification.

mod common;

use common::*;
use imc_registry::{Client, RegistryError, RegistryOptions};
use imc_testkit::image::{self, Format};
use imc_testkit::registry::{Auth, TestRegistry};

#[tokio::test]
async fn self_signed_registry_needs_insecure() {
    let reg = TestRegistry::start_tls(Auth::None);
    let built = three_layer_image(Format::Oci);
    image::push(&reg.url(), "app", "v1", &built, None)
        .await
        .expect("push over https");
    let r = reference(&format!("{}/app:v1", reg.host()));

    let strict = Client::new(RegistryOptions {
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client");
    let err = strict
        .resolve(&r, &amd64())
        .await
        .expect_err("untrusted certificate");
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains(&r.to_string()) && text.contains("certificate"),
        "{text}"
    );

    let other_insecure = Client::new(RegistryOptions {
        insecure: vec!["127.0.0.1:1".into()],
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client");
    let err = other_insecure
        .resolve(&r, &amd64())
        .await
        .expect_err("another host is insecure");
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");

    let insecure = Client::new(RegistryOptions {
        insecure: vec![reg.host()],
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client");
    let resolved = insecure
        .resolve(&r, &amd64())
        .await
        .expect("resolve over insecure TLS");
    assert_pulls_as_built(&insecure, &resolved, &built).await;
}
