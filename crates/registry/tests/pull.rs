//! Resolving and fetching images from the real docker-registry: every manifest format and layer
//! compression, platform selection, each auth mode, mirrors, and the clear failures (unknown tag,
//! schema1, foreign layers).

mod common;

use common::*;
use imc_registry::{Credentials, RegistryError, RegistryOptions};
use imc_testkit::image::{
    self, DOCKER_SCHEMA1_SIGNED, Format, ImageBuilder, IndexBuilder, LayerBuilder,
};
use imc_testkit::registry::{Auth, TestRegistry};

#[tokio::test]
async fn every_format_and_compression_resolves_and_downloads() {
    let reg = TestRegistry::start(Auth::None);
    let client = client_for(&[&reg.host()], Credentials::none());
    for (format, repo) in [
        (Format::Oci, "formats/oci"),
        (Format::Docker, "formats/docker"),
    ] {
        let built = three_layer_image(format);
        image::push(&reg.host(), repo, "v1", &built, None)
            .await
            .expect("push");
        let r = reference(&format!("{}/{repo}:v1", reg.host()));
        let resolved = client.resolve(&r, &amd64()).await.expect("resolve");
        assert_eq!(resolved.reference, r);
        assert_pulls_as_built(&client, &resolved, &built).await;
        // The same image pinned by digest.
        let pinned = reference(&format!("{}/{repo}@{}", reg.host(), built.manifest_digest));
        let resolved = client
            .resolve(&pinned, &amd64())
            .await
            .expect("resolve pinned");
        assert_eq!(resolved.manifest_digest, built.manifest_digest);
    }
}

#[tokio::test]
async fn index_and_manifest_list_resolve_to_the_platform() {
    let reg = TestRegistry::start(Auth::None);
    let client = client_for(&[&reg.host()], Credentials::none());
    for format in [Format::Oci, Format::Docker] {
        let amd = ImageBuilder::new(format)
            .layer(LayerBuilder::new().file("arch", "amd64").build())
            .build();
        let arm = ImageBuilder::new(format)
            .platform("linux", "arm64", Some("v8"))
            .layer(LayerBuilder::new().file("arch", "arm64").build())
            .build();
        let index = IndexBuilder::new(format)
            .image(amd.clone())
            .image(arm.clone())
            .build();
        let repo = format!("multi/{format:?}").to_lowercase();
        image::push_index(&reg.host(), &repo, "latest", &index, None)
            .await
            .expect("push");
        let r = reference(&format!("{}/{repo}:latest", reg.host()));

        let got = client.resolve(&r, &amd64()).await.expect("amd64");
        assert_pulls_as_built(&client, &got, &amd).await;
        let got = client
            .resolve(&r, &"linux/aarch64".parse().expect("p"))
            .await
            .expect("arm64");
        assert_pulls_as_built(&client, &got, &arm).await;
        // Pinning the index digest still selects by platform.
        let pinned = reference(&format!("{}/{repo}@{}", reg.host(), index.digest));
        let got = client
            .resolve(&pinned, &amd64())
            .await
            .expect("pinned index");
        assert_eq!(got.manifest_digest, amd.manifest_digest);

        let err = client
            .resolve(&r, &"linux/s390x".parse().expect("p"))
            .await
            .expect_err("no s390x");
        assert!(
            matches!(err, RegistryError::NoMatchingPlatform { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&r.to_string()), "{text}");
        assert!(text.contains("linux/s390x"), "{text}");
        assert!(text.contains("linux/amd64, linux/arm64/v8"), "{text}");
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn unknown_tag_fails_at_once_with_the_registry_answer() {
    let reg = TestRegistry::start(Auth::None);
    let client = client_for(&[&reg.host()], Credentials::none());
    image::push(
        &reg.host(),
        "app",
        "v1",
        &three_layer_image(Format::Oci),
        None,
    )
    .await
    .expect("push");
    let r = reference(&format!("{}/app:nope", reg.host()));
    let err = client.resolve(&r, &amd64()).await.expect_err("unknown tag");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert_eq!(err.status(), Some(404));
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains(&r.to_string()), "{text}");
    assert!(text.contains("manifest nope"), "{text}");
    assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");
}

#[tokio::test]
async fn missing_blob_is_not_found() {
    let reg = TestRegistry::start(Auth::None);
    let client = client_for(&[&reg.host()], Credentials::none());
    let built = three_layer_image(Format::Oci);
    image::push(&reg.host(), "app", "v1", &built, None)
        .await
        .expect("push");
    let r = reference(&format!("{}/app:v1", reg.host()));
    let resolved = client.resolve(&r, &amd64()).await.expect("resolve");
    let mut blob = resolved.layers[0].blob.clone();
    blob.digest = imc_api::Digest::of(b"not there");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = tokio::fs::File::create(dir.path().join("b"))
        .await
        .expect("create");
    let err = client
        .fetch_blob_to(&r, &blob, &mut f, &|_| {})
        .await
        .expect_err("404");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("BLOB_UNKNOWN") && text.contains(&blob.digest.to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn basic_auth_right_and_wrong_password() {
    let reg = TestRegistry::start(Auth::basic("alice", "right-pass-123"));
    let built = three_layer_image(Format::Docker);
    image::push(
        &reg.host(),
        "private/app",
        "v1",
        &built,
        reg.auth().credentials(),
    )
    .await
    .expect("push");
    let r = reference(&format!("{}/private/app:v1", reg.host()));

    let good = client_for(
        &[&reg.host()],
        Credentials::basic(&reg.host(), "alice", "right-pass-123"),
    );
    let resolved = good
        .resolve(&r, &amd64())
        .await
        .expect("resolve with basic");
    assert_pulls_as_built(&good, &resolved, &built).await;

    let bad = client_for(
        &[&reg.host()],
        Credentials::basic(&reg.host(), "alice", "wrong-pass-456"),
    );
    let err = bad.resolve(&r, &amd64()).await.expect_err("wrong password");
    assert!(matches!(err, RegistryError::AccessDenied { .. }), "{err:?}");
    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(
        text.contains(&r.to_string()) && text.contains("UNAUTHORIZED"),
        "{text}"
    );
    assert!(text.contains("check the credentials"), "{text}");
    assert!(!text.contains("wrong-pass-456") && !format!("{err:?}").contains("wrong-pass-456"));

    let anonymous = client_for(&[&reg.host()], Credentials::none());
    let err = anonymous
        .resolve(&r, &amd64())
        .await
        .expect_err("no credentials");
    assert!(
        err.to_string().contains("no credentials are configured"),
        "{err}"
    );
}

#[tokio::test]
async fn token_auth_right_and_wrong_password() {
    let reg = TestRegistry::start(Auth::token("bob", "token-pass-789"));
    let built = three_layer_image(Format::Oci);
    image::push(
        &reg.host(),
        "private/app",
        "v1",
        &built,
        reg.auth().credentials(),
    )
    .await
    .expect("push");
    let r = reference(&format!("{}/private/app:v1", reg.host()));
    let issued_by_push = reg.tokens_issued();

    let good = client_for(
        &[&reg.host()],
        Credentials::basic(&reg.host(), "bob", "token-pass-789"),
    );
    let resolved = good
        .resolve(&r, &amd64())
        .await
        .expect("resolve with token");
    assert_pulls_as_built(&good, &resolved, &built).await;
    // One token serves the manifest, config and all three layers: it is cached per scope.
    assert_eq!(reg.tokens_issued() - issued_by_push, 1);

    let bad = client_for(
        &[&reg.host()],
        Credentials::basic(&reg.host(), "bob", "wrong-token-pass"),
    );
    let err = bad.resolve(&r, &amd64()).await.expect_err("wrong password");
    assert!(matches!(err, RegistryError::AccessDenied { .. }), "{err:?}");
    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(
        text.contains(&r.to_string()) && text.contains("incorrect username or password"),
        "{text}"
    );
    assert!(!text.contains("wrong-token-pass") && !format!("{err:?}").contains("wrong-token-pass"));
    assert!(reg.tokens_refused() >= 1);
}

#[tokio::test]
async fn docker_config_credentials_are_used() {
    let reg = TestRegistry::start(Auth::basic("carol", "cfg-pass"));
    let built = three_layer_image(Format::Oci);
    image::push(&reg.host(), "app", "v1", &built, reg.auth().credentials())
        .await
        .expect("push");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    let auth = base64_std("carol:cfg-pass");
    std::fs::write(
        &path,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host()
        ),
    )
    .expect("write config");
    let creds = Credentials::from_docker_config_file(&path).expect("read config");
    let client = client_for(&[&reg.host()], creds);
    let r = reference(&format!("{}/app:v1", reg.host()));
    let resolved = client.resolve(&r, &amd64()).await.expect("resolve");
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
}

#[tokio::test]
async fn mirror_serves_the_image_under_its_original_name() {
    let reg = TestRegistry::start(Auth::None);
    let built = three_layer_image(Format::Oci);
    image::push(&reg.host(), "app", "1", &built, None)
        .await
        .expect("push");
    let client = imc_registry::Client::new(RegistryOptions {
        mirrors: vec![("example.invalid".into(), reg.url())],
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client");
    let r = reference("example.invalid/app:1");
    let resolved = client
        .resolve(&r, &amd64())
        .await
        .expect("resolve via mirror");
    assert_eq!(resolved.reference.to_string(), "example.invalid/app:1");
    assert_pulls_as_built(&client, &resolved, &built).await;
}

#[tokio::test]
async fn schema1_is_rejected_saying_so() {
    let reg = TestRegistry::start(Auth::None);
    let built = three_layer_image(Format::Docker);
    image::push_blobs(&reg.host(), "old", &built, None)
        .await
        .expect("push blobs");
    let m = built.schema1_manifest("old", "v1");
    image::push_manifest(&reg.host(), "old", "v1", DOCKER_SCHEMA1_SIGNED, &m, None)
        .await
        .expect("push schema1");
    let client = client_for(&[&reg.host()], Credentials::none());
    let r = reference(&format!("{}/old:v1", reg.host()));
    let err = client.resolve(&r, &amd64()).await.expect_err("schema1");
    assert!(matches!(err, RegistryError::Schema1 { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("schema1 is not supported") && text.contains(&r.to_string()),
        "{text}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn foreign_layers_are_rejected() {
    let reg = TestRegistry::start(Auth::None);
    let client = client_for(&[&reg.host()], Credentials::none());
    for (format, media_type) in [
        (Format::Docker, image::DOCKER_FOREIGN_LAYER),
        (Format::Oci, image::OCI_NONDISTRIBUTABLE_LAYER),
    ] {
        let built = ImageBuilder::new(format)
            .layer(LayerBuilder::new().file("a", "a").build())
            .foreign_layer()
            .build();
        let repo = format!("foreign/{format:?}").to_lowercase();
        image::push(&reg.host(), &repo, "v1", &built, None)
            .await
            .expect("push");
        let r = reference(&format!("{}/{repo}:v1", reg.host()));
        let err = client.resolve(&r, &amd64()).await.expect_err("foreign");
        assert!(matches!(err, RegistryError::ForeignLayer { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("foreign") && text.contains(media_type) && text.contains(&r.to_string()),
            "{text}"
        );
    }
}

#[tokio::test]
async fn connection_refused_is_transient_and_names_the_image() {
    let reg = TestRegistry::start(Auth::None);
    let host = reg.host();
    drop(reg);
    let client = client_for(&[&host], Credentials::none());
    let r = reference(&format!("{host}/app:v1"));
    let err = client
        .resolve(&r, &amd64())
        .await
        .expect_err("nothing listening");
    assert!(matches!(err, RegistryError::Connection { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&r.to_string()), "{err}");
}

#[tokio::test]
async fn a_mirror_gets_only_its_own_credentials() {
    let reg = TestRegistry::start(Auth::basic("mallory", "mirror-pass"));
    let built = three_layer_image(Format::Oci);
    image::push(&reg.host(), "app", "1", &built, reg.auth().credentials())
        .await
        .expect("push");
    let r = reference("example.invalid/app:1");
    let client_with = |credentials: Credentials| {
        imc_registry::Client::new(RegistryOptions {
            mirrors: vec![("example.invalid".into(), reg.url())],
            credentials,
            retry: fast_retry(),
            ..Default::default()
        })
        .expect("client")
    };
    // Credentials for the mirrored registry are not sent to the mirror.
    let upstream_only = client_with(Credentials::basic(
        "example.invalid",
        "mallory",
        "mirror-pass",
    ));
    let err = upstream_only
        .resolve(&r, &amd64())
        .await
        .expect_err("mirror has no credentials");
    assert!(matches!(err, RegistryError::AccessDenied { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("no credentials are configured for {}", reg.host())),
        "{err}"
    );
    // The mirror's own credentials are.
    let mirror_creds = client_with(Credentials::basic(&reg.host(), "mallory", "mirror-pass"));
    let resolved = mirror_creds
        .resolve(&r, &amd64())
        .await
        .expect("resolve via mirror");
    assert_eq!(resolved.reference.to_string(), "example.invalid/app:1");
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
}

#[tokio::test]
async fn token_auth_with_an_identity_token_and_without_credentials() {
    let reg = TestRegistry::start(Auth::token("frank", "identity-token-value"));
    let built = three_layer_image(Format::Oci);
    image::push(&reg.host(), "app", "v1", &built, reg.auth().credentials())
        .await
        .expect("push");
    let r = reference(&format!("{}/app:v1", reg.host()));

    // A Docker config holding an identitytoken: exchanged with the OAuth2 refresh-token grant.
    let config = format!(
        r#"{{"auths":{{"{}":{{"identitytoken":"identity-token-value"}}}}}}"#,
        reg.host()
    );
    let creds = Credentials::from_dockerconfigjson(config.as_bytes()).expect("parse");
    let client = client_for(&[&reg.host()], creds);
    let resolved = client
        .resolve(&r, &amd64())
        .await
        .expect("resolve with identity token");
    assert_eq!(resolved.manifest_digest, built.manifest_digest);

    let anonymous = client_for(&[&reg.host()], Credentials::none());
    let err = anonymous
        .resolve(&r, &amd64())
        .await
        .expect_err("anonymous");
    assert!(matches!(err, RegistryError::AccessDenied { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no credentials are configured"),
        "{err}"
    );
}
