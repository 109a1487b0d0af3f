//! Credentials never leak: not in error messages (Display or Debug), not in the Debug of options
//! or the client, and not in any log event (captured at TRACE level from every crate, reqwest
//! and hyper included) during Basic and token-auth pulls with right and wrong passwords.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use imc_registry::{Credentials, RegistryOptions};
use imc_testkit::image::{self, Format};
use imc_testkit::registry::{Auth, TestRegistry};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const RIGHT: &str = "Right-Secret-Pw-1";
const WRONG: &str = "Wrong-Secret-Pw-2";

#[tokio::test]
async fn passwords_and_tokens_appear_nowhere() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut texts = Vec::new();
    for auth in [Auth::basic("erin", RIGHT), Auth::token("erin", RIGHT)] {
        let reg = TestRegistry::start(auth.clone());
        let built = three_layer_image(Format::Oci);
        image::push(&reg.host(), "secret/app", "v1", &built, auth.credentials())
            .await
            .expect("push");
        let r = reference(&format!("{}/secret/app:v1", reg.host()));
        for password in [RIGHT, WRONG] {
            let options = RegistryOptions {
                plain_http: vec![reg.host()],
                credentials: Credentials::basic(&reg.host(), "erin", password),
                retry: fast_retry(),
                ..Default::default()
            };
            texts.push(format!("{options:?}"));
            let client = imc_registry::Client::new(options).expect("client");
            texts.push(format!("{client:?}"));
            match client.resolve(&r, &amd64()).await {
                Ok(resolved) => {
                    assert_eq!(password, RIGHT, "{auth:?} accepted a wrong password");
                    fetch_layers(&client, &resolved).await;
                }
                Err(e) => {
                    assert_eq!(password, WRONG, "{auth:?} refused the right password: {e}");
                    texts.push(e.to_string());
                    texts.push(format!("{e:?}"));
                }
            }
        }
        // The token server really issued tokens; none of them may show up either.
        if matches!(auth, Auth::Token { .. }) {
            assert!(reg.tokens_issued() > 0);
        }
    }
    let logged = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8 logs");
    // reqwest and hyper events are in the capture too, so a header they logged would be caught.
    assert!(
        logged.contains("reqwest") || logged.contains("hyper"),
        "no HTTP client events captured"
    );
    assert!(!logged.is_empty(), "no log events were captured");
    texts.push(logged);
    let basic_right = base64_std(&format!("erin:{RIGHT}"));
    let basic_wrong = base64_std(&format!("erin:{WRONG}"));
    for t in &texts {
        for secret in [
            RIGHT,
            WRONG,
            basic_right.as_str(),
            basic_wrong.as_str(),
            "Bearer ey",
            "Basic ZXJp",
        ] {
            assert!(!t.contains(secret), "{secret:?} leaked into:\n{t}");
        }
    }
}
