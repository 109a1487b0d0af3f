//! Dynamic admission: Mutating- and ValidatingWebhookConfigurations on a real `imc server`,
//! called as kube-apiserver calls them, driven with the real kubectl. The webhooks are
//! [`TestWebhook`]s (HTTPS with their own CA) deciding in the test, and the real `imc webhook`.

mod run_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use imc_testkit::apiserver::TestServer;
use imc_testkit::https::RawRequest;
use imc_testkit::kubectl::eventually;
use imc_testkit::webhook::{
    TestCa, TestWebhook, allow, configuration, core_rule, deny, hook, patch,
};
use serde_json::{Value, json};

fn api_server() -> TestServer {
    TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).expect("imc server starts")
}

fn config_map(name: &str, namespace: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "data": {"k": "v"}})
}

/// A loopback HTTPS URL nothing listens on.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("https://127.0.0.1:{port}/")
}

fn names_seen(webhook: &TestWebhook) -> Vec<String> {
    webhook
        .requests()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn configurations_are_validated_and_defaulted() {
    let server = api_server();
    let cc = json!({"url": "https://127.0.0.1:1/x"});
    let rules = json!([core_rule(&["CREATE"], &["configmaps"])]);
    // (a bad webhook entry, kube's cause)
    let cases = [
        (
            hook("short.name", cc.clone(), rules.clone()),
            "webhooks[0].name: Invalid value: \"short.name\": should be a domain with at least three segments separated by dots",
        ),
        (
            hook(
                "a.imc.test",
                json!({"url": "http://127.0.0.1:1/x"}),
                rules.clone(),
            ),
            "webhooks[0].clientConfig.url: Invalid value: \"http://127.0.0.1:1/x\": 'https' is the only allowed URL scheme",
        ),
        (
            hook(
                "a.imc.test",
                json!({"url": "https://127.0.0.1:1/x", "service": {"namespace": "default", "name": "w"}}),
                rules.clone(),
            ),
            "webhooks[0].clientConfig: Required value: exactly one of url or service is required",
        ),
        (
            {
                let mut h = hook("a.imc.test", cc.clone(), rules.clone());
                h.as_object_mut().unwrap().remove("sideEffects");
                h
            },
            "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun",
        ),
        (
            {
                let mut h = hook("a.imc.test", cc.clone(), rules.clone());
                h["sideEffects"] = json!("Some");
                h
            },
            "webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\"",
        ),
        (
            {
                let mut h = hook("a.imc.test", cc.clone(), rules.clone());
                h["timeoutSeconds"] = json!(31);
                h
            },
            "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
        ),
        (
            {
                let mut h = hook("a.imc.test", cc.clone(), rules.clone());
                h["admissionReviewVersions"] = json!(["v1beta1"]);
                h
            },
            "webhooks[0].admissionReviewVersions: Invalid value: [\"v1beta1\"]: must include at least one of v1",
        ),
        (
            {
                let mut h = hook("a.imc.test", cc.clone(), rules.clone());
                h["failurePolicy"] = json!("Maybe");
                h
            },
            "webhooks[0].failurePolicy: Unsupported value: \"Maybe\": supported values: \"Fail\", \"Ignore\"",
        ),
    ];
    for (i, (bad, cause)) in cases.into_iter().enumerate() {
        let (ok, out) = server.create(configuration(true, &format!("bad-{i}"), vec![bad]));
        assert!(!ok, "case {i} was accepted: {out}");
        assert!(out.contains(cause), "case {i}: want {cause:?} in {out}");
    }
    let (ok, out) = server.create(configuration(
        false,
        "dup",
        vec![
            hook("same.imc.test", cc.clone(), rules.clone()),
            hook("same.imc.test", cc.clone(), rules.clone()),
        ],
    ));
    assert!(!ok);
    assert!(
        out.contains("webhooks[1].name: Duplicate value: \"same.imc.test\""),
        "{out}"
    );

    server.create_ok(configuration(
        true,
        "good",
        vec![hook(
            "good.imc.test",
            json!({"service": {"namespace": "default", "name": "hooks"}}),
            rules.clone(),
        )],
    ));
    let stored = server
        .get_json("mutatingwebhookconfiguration", "good")
        .expect("stored");
    let w = &stored["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["matchPolicy"], "Equivalent");
    assert_eq!(w["reinvocationPolicy"], "Never");
    assert_eq!(w["timeoutSeconds"], 10);
    assert_eq!(w["namespaceSelector"], json!({}));
    assert_eq!(w["objectSelector"], json!({}));
    assert_eq!(w["rules"][0]["scope"], "*");
    assert_eq!(w["clientConfig"]["service"]["port"], 443);
    // kubectl apply, client-side (strategic merge) and server-side, as for any manifest.
    let mut applied = hook(
        "applied.imc.test",
        json!({"url": "https://127.0.0.1:1/x"}),
        rules.clone(),
    );
    for (i, server_side) in [(5, false), (6, false), (7, true), (8, true)] {
        applied["timeoutSeconds"] = json!(i);
        let name = if server_side {
            "applied-ssa"
        } else {
            "applied"
        };
        let manifest = configuration(false, name, vec![applied.clone()]).to_string();
        let args: &[&str] = if server_side {
            &["apply", "--server-side", "-f", "-"]
        } else {
            &["apply", "-f", "-"]
        };
        let (ok, out) = server.kubectl_args_stdin(args, &manifest);
        assert!(ok, "{out}");
        let stored = server
            .get_json("validatingwebhookconfiguration", name)
            .expect("applied");
        assert_eq!(stored["webhooks"][0]["timeoutSeconds"], i, "{stored:#}");
        assert_eq!(stored["webhooks"].as_array().map(Vec::len), Some(1));
    }
    let explained = server.kubectl_ok(&[
        "explain",
        "mutatingwebhookconfiguration.webhooks.reinvocationPolicy",
    ]);
    assert!(explained.contains("reinvocationPolicy"), "{explained}");
    let table = server.kubectl_ok(&["get", "mutatingwebhookconfigurations"]);
    assert!(table.contains("WEBHOOKS"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("good ")), "{table}");
}

#[test]
fn a_mutating_webhook_patch_is_stored_and_the_request_is_complete() {
    let server = api_server();
    let webhook = TestWebhook::start(|_req| {
        patch(json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "by-webhook"}]))
    })
    .unwrap();
    server.create_ok(configuration(
        true,
        "label-adder",
        vec![hook(
            "label.imc.test",
            webhook.client_config("/mutate"),
            json!([core_rule(&["CREATE"], &["configmaps"])]),
        )],
    ));
    server.create_ok(config_map("one", "default", json!({"mine": "yes"})));
    let yaml = server.kubectl_ok(&["get", "configmap", "one", "-o", "yaml"]);
    assert!(yaml.contains("mutated: by-webhook"), "{yaml}");
    assert!(yaml.contains("mine: \"yes\""), "{yaml}");

    let requests = webhook.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let r = &requests[0];
    assert!(r["uid"].as_str().is_some_and(|u| !u.is_empty()), "{r:#}");
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "configmaps"})
    );
    assert_eq!(r["requestKind"], r["kind"]);
    assert_eq!(r["requestResource"], r["resource"]);
    assert_eq!(r["name"], "one");
    assert_eq!(r["namespace"], "default");
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(r["userInfo"]["username"], "imc-admin");
    assert!(
        r["userInfo"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|x| x == "system:authenticated")),
        "{r:#}"
    );
    assert_eq!(r["object"]["data"]["k"], "v");
    assert!(r["oldObject"].is_null());
    assert_eq!(r["dryRun"], false);
    assert_eq!(r["options"]["kind"], "CreateOptions");
    // Not an UPDATE rule: an update is not sent.
    server.kubectl_ok(&["label", "configmap", "one", "more=1"]);
    assert_eq!(webhook.requests().len(), 1);
}

#[test]
fn a_validating_webhook_denies_in_kubes_words() {
    let server = api_server();
    let webhook = TestWebhook::start(|req| {
        if req["name"] == "bad" || req["operation"] == "DELETE" {
            deny(403, "not this one")
        } else {
            allow()
        }
    })
    .unwrap();
    server.create_ok(configuration(
        false,
        "guard",
        vec![hook(
            "guard.imc.test",
            webhook.client_config("/validate"),
            json!([core_rule(&["CREATE", "DELETE"], &["configmaps"])]),
        )],
    ));
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(&config_map("bad", "default", json!({})).to_string()),
    );
    assert!(
        err.contains("admission webhook \"guard.imc.test\" denied the request: not this one"),
        "{err}"
    );
    assert!(err.contains("Forbidden"), "{err}");
    assert!(server.get_json("configmap", "bad").is_none());
    server.create_ok(config_map("good", "default", json!({})));
    let err = server.kubectl_err(&["delete", "configmap", "good"], None);
    assert!(
        err.contains("admission webhook \"guard.imc.test\" denied the request: not this one"),
        "{err}"
    );
    assert!(server.get_json("configmap", "good").is_some());
    let delete = webhook
        .requests()
        .into_iter()
        .find(|r| r["operation"] == "DELETE")
        .expect("the delete was sent");
    assert!(delete["object"].is_null());
    assert_eq!(delete["oldObject"]["metadata"]["name"], "good");
    assert_eq!(delete["options"]["kind"], "DeleteOptions");
}

#[test]
fn failure_policy_fail_refuses_and_ignore_admits() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let server =
        TestServer::start_logging_to(env!("CARGO_BIN_EXE_imc"), &["--api-only".to_owned()], &log)
            .unwrap();
    let down = json!({"url": closed_url()});
    // Every group, the webhook configuration kinds' own included.
    let rules = json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]);
    server.create_ok(configuration(
        false,
        "down",
        vec![hook("down.imc.test", down.clone(), rules.clone())],
    ));
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(&config_map("refused", "default", json!({})).to_string()),
    );
    assert!(
        err.contains("Internal error occurred: failed calling webhook \"down.imc.test\": failed to call webhook: Post \"https://127.0.0.1:"),
        "{err}"
    );
    assert!(server.get_json("configmap", "refused").is_none());
    // The webhook configuration kinds are never sent to webhooks: a broken one can be removed.
    server.kubectl_ok(&["delete", "validatingwebhookconfiguration", "down"]);

    let mut ignore = hook("down.imc.test", down, rules);
    ignore["failurePolicy"] = json!("Ignore");
    server.create_ok(configuration(false, "down-ignored", vec![ignore]));
    server.create_ok(config_map("admitted", "default", json!({})));
    assert!(server.get_json("configmap", "admitted").is_some());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("failing open (failurePolicy Ignore)")
                && l.contains("down.imc.test")),
        "{logged}"
    );
}

#[test]
fn a_webhook_that_is_down_does_not_stop_a_restart() {
    let mut server = api_server();
    let rules = json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]}]);
    server.create_ok(configuration(
        true,
        "down-everywhere",
        vec![hook("down.imc.test", json!({"url": closed_url()}), rules)],
    ));
    server.restart().expect("the server starts again");
    let err = server.kubectl_err(&["create", "namespace", "blocked"], None);
    assert!(
        err.contains("failed calling webhook \"down.imc.test\""),
        "{err}"
    );
    server.kubectl_ok(&["delete", "mutatingwebhookconfiguration", "down-everywhere"]);
    server.kubectl_ok(&["create", "namespace", "admitted"]);
}

#[test]
fn timeout_seconds_is_enforced() {
    let server = api_server();
    let webhook = TestWebhook::start(|_| allow()).unwrap();
    webhook.set_delay(Duration::from_secs(3));
    let mut slow = hook(
        "slow.imc.test",
        webhook.client_config("/slow"),
        json!([core_rule(&["CREATE"], &["configmaps"])]),
    );
    slow["timeoutSeconds"] = json!(1);
    server.create_ok(configuration(false, "slow", vec![slow]));
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(&config_map("late", "default", json!({})).to_string()),
    );
    assert!(
        err.contains("failed calling webhook \"slow.imc.test\""),
        "{err}"
    );
    assert!(
        err.contains("?timeout=1s\": context deadline exceeded"),
        "{err}"
    );
    assert!(server.get_json("configmap", "late").is_none());
}

#[test]
fn namespace_and_object_selectors_choose_what_is_sent() {
    let server = api_server();
    let webhook = TestWebhook::start(|_| allow()).unwrap();
    server.kubectl_ok(&["create", "namespace", "watched"]);
    server.kubectl_ok(&["label", "namespace", "watched", "webhooks=on"]);
    server.kubectl_ok(&["create", "namespace", "quiet"]);
    let rules = json!([core_rule(&["CREATE"], &["configmaps"])]);
    let mut by_namespace = hook("ns.imc.test", webhook.client_config("/ns"), rules.clone());
    by_namespace["namespaceSelector"] = json!({"matchLabels": {"webhooks": "on"}});
    let mut by_object = hook("obj.imc.test", webhook.client_config("/obj"), rules);
    by_object["objectSelector"] =
        json!({"matchExpressions": [{"key": "check", "operator": "In", "values": ["yes"]}]});
    server.create_ok(configuration(
        false,
        "selective",
        vec![by_namespace, by_object],
    ));

    server.create_ok(config_map("in-watched", "watched", json!({})));
    server.create_ok(config_map("in-quiet", "quiet", json!({})));
    server.create_ok(config_map("labelled", "quiet", json!({"check": "yes"})));
    server.create_ok(config_map("unlabelled", "quiet", json!({"check": "no"})));
    let mut seen = names_seen(&webhook);
    seen.sort();
    assert_eq!(seen, ["in-watched", "labelled"]);
}

#[test]
fn subresource_rules_match_status_writes_only_when_named() {
    let server = api_server();
    let status_hook = TestWebhook::start(|_| allow()).unwrap();
    let main_hook = TestWebhook::start(|_| allow()).unwrap();
    server.create_ok(configuration(
        false,
        "pods",
        vec![
            hook(
                "status.imc.test",
                status_hook.client_config("/"),
                json!([core_rule(&["UPDATE"], &["pods/status"])]),
            ),
            hook(
                "main.imc.test",
                main_hook.client_config("/"),
                json!([core_rule(&["*"], &["pods"])]),
            ),
        ],
    ));
    server.create_ok(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]}}));
    server.kubectl_ok(&[
        "patch",
        "pod",
        "p",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"message":"hello"}}"#,
    ]);
    let status = status_hook.requests();
    assert_eq!(status.len(), 1, "{status:#?}");
    assert_eq!(status[0]["operation"], "UPDATE");
    assert_eq!(status[0]["subResource"], "status");
    assert_eq!(status[0]["object"]["status"]["message"], "hello");
    let main: Vec<String> = main_hook
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["operation"].as_str().unwrap_or(""),
                r["subResource"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(main, ["CREATE -"]);
}

#[test]
fn pod_bindings_are_sent_as_a_create_of_pods_binding() {
    let server = api_server();
    let webhook = TestWebhook::start(|req| {
        if req["object"]["target"]["name"] == "forbidden-node" {
            deny(403, "not on that node")
        } else {
            allow()
        }
    })
    .unwrap();
    server.create_ok(configuration(
        false,
        "bindings",
        vec![hook(
            "bind.imc.test",
            webhook.client_config("/"),
            json!([core_rule(&["CREATE"], &["pods/binding"])]),
        )],
    ));
    server.create_ok(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]}}));
    let bind = |node: &str| {
        let body = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        let req = RawRequest::admin(&server, "POST", "/api/v1/namespaces/default/pods/p/binding")
            .unwrap()
            .with_body("application/json", body.to_string());
        server.raw(&req).unwrap()
    };
    let refused = bind("forbidden-node");
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.json()["message"],
        "admission webhook \"bind.imc.test\" denied the request: not on that node"
    );
    let bound = bind("node-a");
    assert_eq!(bound.status, 201, "{}", bound.body);
    assert_eq!(
        server.get_json("pod", "p").unwrap()["spec"]["nodeName"],
        "node-a"
    );
    let requests = webhook.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0]["operation"], "CREATE");
    assert_eq!(requests[0]["subResource"], "binding");
    assert_eq!(requests[0]["kind"]["kind"], "Binding");
    assert_eq!(requests[0]["resource"]["resource"], "pods");
}

#[test]
fn token_requests_are_sent_as_a_create_of_serviceaccounts_token() {
    let server = api_server();
    let webhook = TestWebhook::start(|req| {
        if req["object"]["spec"]["expirationSeconds"] == 7200 {
            deny(403, "tokens are for one hour")
        } else {
            allow()
        }
    })
    .unwrap();
    server.create_ok(configuration(
        false,
        "tokens",
        vec![hook(
            "token.imc.test",
            webhook.client_config("/"),
            json!([core_rule(&["CREATE"], &["serviceaccounts/token"])]),
        )],
    ));
    server.kubectl_ok(&["create", "serviceaccount", "builder"]);
    let err = server.kubectl_err(&["create", "token", "builder", "--duration=2h"], None);
    assert!(
        err.contains(
            "admission webhook \"token.imc.test\" denied the request: tokens are for one hour"
        ),
        "{err}"
    );
    let token = server.kubectl_ok(&["create", "token", "builder", "--duration=1h"]);
    assert!(token.trim().split('.').count() == 3, "{token}");
    let requests = webhook.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0]["kind"]["kind"], "TokenRequest");
    assert_eq!(requests[0]["subResource"], "token");
    assert_eq!(requests[0]["name"], "builder");
}

#[test]
fn a_service_reference_without_services_must_resolve_through_dns() {
    let server = api_server();
    server.create_ok(configuration(
        false,
        "by-service",
        vec![hook(
            "svc.imc.test",
            json!({"service": {"namespace": "hooks", "name": "nowhere", "path": "/check"}}),
            json!([core_rule(&["CREATE"], &["configmaps"])]),
        )],
    ));
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(&config_map("x", "default", json!({})).to_string()),
    );
    assert!(
        err.contains("failed calling webhook \"svc.imc.test\": failed to call webhook: Post \"https://nowhere.hooks.svc:443/check?timeout=10s\""),
        "{err}"
    );
    assert!(err.contains("must resolve through DNS"), "{err}");
}

#[test]
fn a_wrong_ca_bundle_fails_the_tls_handshake() {
    let server = api_server();
    let webhook = TestWebhook::start(|_| allow()).unwrap();
    let other = TestCa::new(&[]).unwrap();
    server.create_ok(configuration(
        false,
        "untrusted",
        vec![hook(
            "untrusted.imc.test",
            json!({"url": webhook.url("/"), "caBundle": other.ca_bundle()}),
            json!([core_rule(&["CREATE"], &["configmaps"])]),
        )],
    ));
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(&config_map("x", "default", json!({})).to_string()),
    );
    assert!(
        err.contains("failed calling webhook \"untrusted.imc.test\""),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    // No caBundle: the system's roots, which do not hold the test CA either.
    server.kubectl_ok(&["delete", "validatingwebhookconfiguration", "untrusted"]);
    server.create_ok(configuration(
        false,
        "system-roots",
        vec![hook(
            "roots.imc.test",
            json!({"url": webhook.url("/")}),
            json!([core_rule(&["CREATE"], &["configmaps"])]),
        )],
    ));
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(&config_map("y", "default", json!({})).to_string()),
    );
    assert!(
        err.contains("failed calling webhook \"roots.imc.test\""),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    assert!(webhook.requests().is_empty());
}

#[test]
fn reinvocation_if_needed_reruns_an_earlier_webhook() {
    let server = api_server();
    // The first webhook records whether the second one's label is there yet.
    let first = TestWebhook::start(|req| {
        let seen = req["object"]["metadata"]["labels"]["second"]
            .as_str()
            .unwrap_or("absent")
            .to_owned();
        patch(json!([{"op": "add", "path": "/metadata/annotations", "value": {"first-saw": seen}}]))
    })
    .unwrap();
    let second = TestWebhook::start(|_| {
        patch(json!([{"op": "add", "path": "/metadata/labels/second", "value": "was-here"}]))
    })
    .unwrap();
    let rules = json!([core_rule(&["CREATE"], &["configmaps"])]);
    let mut again = hook("first.imc.test", first.client_config("/"), rules.clone());
    again["reinvocationPolicy"] = json!("IfNeeded");
    // Called by configuration name: "a-first" before "b-second".
    server.create_ok(configuration(true, "a-first", vec![again]));
    server.create_ok(configuration(
        true,
        "b-second",
        vec![hook("second.imc.test", second.client_config("/"), rules)],
    ));
    server.create_ok(config_map("twice", "default", json!({})));
    let cm = server.get_json("configmap", "twice").unwrap();
    assert_eq!(cm["metadata"]["labels"]["second"], "was-here");
    assert_eq!(cm["metadata"]["annotations"]["first-saw"], "was-here");
    assert_eq!(first.requests().len(), 2);
    assert_eq!(second.requests().len(), 1);
}

#[test]
fn webhook_answers_and_patches_stay_within_the_api_limits() {
    let server = api_server();
    // A patch whose result is nested past the 100 levels the server stores.
    let webhook = TestWebhook::start(|req| {
        if req["name"] == "huge" {
            let mut a = allow();
            a["filler"] = json!("x".repeat(4 << 20));
            return a;
        }
        let mut deep = json!("bottom");
        for _ in 0..98 {
            deep = json!({"a": deep});
        }
        patch(json!([{"op": "add", "path": "/metadata/annotations/deep", "value": deep}]))
    })
    .unwrap();
    server.create_ok(configuration(
        true,
        "bounded",
        vec![hook(
            "bounded.imc.test",
            webhook.client_config("/"),
            json!([core_rule(&["CREATE"], &["configmaps"])]),
        )],
    ));
    let mut deep = config_map("deep", "default", json!({}));
    deep["metadata"]["annotations"] = json!({"seed": "1"});
    let err = server.kubectl_err(&["create", "-f", "-"], Some(&deep.to_string()));
    assert!(
        err.contains("the result would be nested deeper than 100 levels"),
        "{err}"
    );
    assert!(server.get_json("configmap", "deep").is_none());
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(&config_map("huge", "default", json!({})).to_string()),
    );
    assert!(
        err.contains("failed calling webhook \"bounded.imc.test\": received invalid webhook response: the response is larger than 3145728 bytes"),
        "{err}"
    );
    assert!(server.get_json("configmap", "huge").is_none());
}

#[test]
fn warnings_reach_kubectl() {
    let server = api_server();
    let webhook = TestWebhook::start(|_| {
        let mut a = allow();
        a["warnings"] = json!(["this config map is watched"]);
        a
    })
    .unwrap();
    server.create_ok(configuration(
        false,
        "warner",
        vec![hook(
            "warn.imc.test",
            webhook.client_config("/"),
            json!([core_rule(&["CREATE", "UPDATE"], &["configmaps"])]),
        )],
    ));
    let (ok, out) = server.create(config_map("warned", "default", json!({})));
    assert!(ok, "{out}");
    assert!(out.contains("Warning: this config map is watched"), "{out}");
    // Updates too.
    let out = server
        .kubectl(&["label", "configmap", "warned", "again=yes"])
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Warning: this config map is watched"), "{err}");
}

#[test]
fn dry_run_calls_side_effect_free_webhooks_with_dry_run_set() {
    let server = api_server();
    let webhook = TestWebhook::start(|_| {
        patch(json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}]))
    })
    .unwrap();
    let rules = json!([core_rule(&["CREATE"], &["configmaps"])]);
    // sideEffects Some cannot be registered in v1 (only None and NoneOnDryRun are).
    let mut some = hook("some.imc.test", webhook.client_config("/"), rules.clone());
    some["sideEffects"] = json!("Some");
    let (ok, out) = server.create(configuration(true, "some", vec![some]));
    assert!(!ok);
    assert!(out.contains("Unsupported value: \"Some\""), "{out}");
    let mut on_dry_run = hook("ondry.imc.test", webhook.client_config("/"), rules);
    on_dry_run["sideEffects"] = json!("NoneOnDryRun");
    server.create_ok(configuration(true, "dry", vec![on_dry_run]));
    let out = server.kubectl_args_stdin(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &config_map("tried", "default", json!({})).to_string(),
    );
    assert!(out.0, "{}", out.1);
    assert!(out.1.contains("\"mutated\": \"yes\""), "{}", out.1);
    assert!(server.get_json("configmap", "tried").is_none());
    let requests = webhook.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["dryRun"], true);
    assert_eq!(requests[0]["options"]["dryRun"], json!(["All"]));
}

/// `imc webhook`, spawned from the built binary, serving with the API server's certificate.
struct ImcWebhook {
    child: Child,
    url: String,
}

impl Drop for ImcWebhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_imc_webhook(server: &TestServer) -> ImcWebhook {
    let pki = server.data_dir().join("pki");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imc"))
        .args(["webhook", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(pki.join("server.crt"))
        .arg("--tls-key")
        .arg(pki.join("server.key"))
        .env("KUBECONFIG", server.kubeconfig())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("imc webhook starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    ImcWebhook { child, url }
}

fn pod(name: &str, annotations: Value, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "annotations": annotations},
           "spec": {"containers": [{"name": "app", "image": image}]}})
}

const MATCHED: &str = "k8s.aliyun.com/eci-matched-image-cache";

#[test]
fn imc_webhook_registered_through_a_mutating_configuration_admits_cache_pods() {
    let reg = run_support::registry_with_images();
    let server = TestServer::start_with_args(
        env!("CARGO_BIN_EXE_imc"),
        &[
            "--plain-http".to_owned(),
            reg.registry.host(),
            "--disable".to_owned(),
            "admission".to_owned(),
        ],
    )
    .unwrap();
    server.create_ok(
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
                            "metadata": {"name": "busybox"}, "spec": {"images": [reg.busybox]}}),
    );
    let cache = server.wait_for("imagecache", "busybox", "Ready", |c| {
        c["status"]["phase"] == "Ready"
    });
    let id = cache["status"]["imageCacheId"]
        .as_str()
        .expect("an id")
        .to_owned();
    let dry_run = |p: &Value| {
        server.kubectl_args_stdin(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            &p.to_string(),
        )
    };
    // The built-in admission is off: nothing picks a cache.
    let (ok, out) = dry_run(&pod(
        "auto",
        json!({"k8s.aliyun.com/eci-image-cache": "true"}),
        &reg.busybox,
    ));
    assert!(ok, "{out}");
    assert!(!out.contains(MATCHED), "{out}");

    let webhook = start_imc_webhook(&server);
    let ca = std::fs::read(server.data_dir().join("pki/ca.crt")).unwrap();
    let mut registered = hook(
        "pods.imc.alibabacloud.com",
        json!({"url": webhook.url,
               "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)}),
        json!([core_rule(&["CREATE"], &["pods"])]),
    );
    registered["failurePolicy"] = json!("Fail");
    server.create_ok(configuration(true, "imc", vec![registered]));

    // Automatic: the webhook's view of caches fills from its watch.
    let matched = eventually("the webhook matches the cache", || {
        let (ok, out) = dry_run(&pod(
            "auto",
            json!({"k8s.aliyun.com/eci-image-cache": "true"}),
            &reg.busybox,
        ));
        let p: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        p["metadata"]["annotations"][MATCHED]
            .as_str()
            .map(str::to_owned)
    })
    .expect("an automatic match");
    assert_eq!(matched, id);

    // Pinned, stored for real.
    server.create_ok(pod(
        "pinned",
        json!({"k8s.aliyun.com/eci-image-snapshot-id": id}),
        &reg.busybox,
    ));
    let stored = server.get_json("pod", "pinned").expect("stored");
    assert_eq!(stored["metadata"]["annotations"][MATCHED], id);

    // A pinned id that does not exist: the webhook's denial, in kube's words.
    let err = server.kubectl_err(
        &["create", "-f", "-"],
        Some(
            &pod(
                "unknown",
                json!({"k8s.aliyun.com/eci-image-snapshot-id": "imc-zzzzzzzzzzzzzzzzzzzz"}),
                &reg.busybox,
            )
            .to_string(),
        ),
    );
    assert!(
        err.contains("admission webhook \"pods.imc.alibabacloud.com\" denied the request: image cache imc-zzzzzzzzzzzzzzzzzzzz not found"),
        "{err}"
    );
    server.kubectl_ok(&["delete", "pod", "pinned", "--wait=false"]);
}

#[test]
fn disable_refuses_unknown_parts() {
    let out = Command::new(env!("CARGO_BIN_EXE_imc"))
        .args(["server", "--disable", "scheduler"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "\"scheduler\" cannot be disabled: the parts are admission, controllers and node"
        ),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imc"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--disable",
            "controllers",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--disable: controllers and node can only be disabled together"),
        "{err}"
    );
}
