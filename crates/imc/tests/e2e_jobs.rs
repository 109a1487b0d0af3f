//! Jobs end to end (issue 11): a real `imc server` with its Job controller, runc, a real
//! docker-registry and the real kubectl: `kubectl create job` to completion, a failing Job
//! reaching its backoffLimit, parallel completions, and ttlSecondsAfterFinished.

mod run_support;

use imc_testkit::apiserver::TestServer;
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-test-node";

fn setup() -> (Registry, TestServer) {
    let reg = registry_with_images();
    let args = vec![
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    let server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    (reg, server)
}

fn condition<'a>(job: &'a Value, kind: &str) -> Option<&'a Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

#[test]
fn kubectl_create_job_runs_to_completion() {
    let (reg, server) = setup();
    server.kubectl_ok(&[
        "create",
        "job",
        "hello",
        &format!("--image={}", reg.busybox),
        "--",
        "sh",
        "-c",
        "echo job-done",
    ]);
    let job = server.wait_for("job", "hello", "Complete", |j| {
        condition(j, "Complete").is_some()
    });
    assert_eq!(job["status"]["succeeded"], 1);
    assert!(job["status"]["completionTime"].is_string());
    assert_eq!(
        condition(&job, "Complete").expect("Complete")["reason"],
        "CompletionsReached"
    );
    let uid = job["metadata"]["uid"].as_str().expect("a uid");
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    let pods = server.pods_with("job-name=hello");
    assert_eq!(pods.len(), 1, "{pods:#?}");
    let pod = &pods[0];
    assert_eq!(pod["status"]["phase"], "Succeeded");
    assert_eq!(pod["metadata"]["labels"]["controller-uid"], uid);
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
        true
    );
    let name = pod["metadata"]["name"].as_str().expect("a name");
    assert!(server.kubectl_ok(&["logs", name]).contains("job-done"));
    let table = server.kubectl_ok(&["get", "jobs"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("hello "))
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..3], &["Complete", "1/1"], "{table}");
    // Deleting the Job (kubectl's default, background) takes its pods along.
    server.kubectl_ok(&["delete", "job", "hello"]);
    server.wait_for_pods("job-name=hello", "gone", <[Value]>::is_empty);
}

#[test]
fn a_failing_job_stops_at_its_backoff_limit() {
    let (reg, server) = setup();
    server.create_ok(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "broken"},
        "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": reg.busybox, "command": ["sh", "-c", "exit 3"]}]}}}}));
    let job = server.wait_for("job", "broken", "Failed", |j| {
        condition(j, "Failed").is_some()
    });
    let failed = condition(&job, "Failed").expect("Failed");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(
        failed["message"],
        "Job has reached the specified backoff limit"
    );
    assert_eq!(job["status"]["failed"], 2, "the first pod and one retry");
    assert!(condition(&job, "Complete").is_none());
    let pods = server.pods_with("job-name=broken");
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Failed"));
    let table = server.kubectl_ok(&["get", "job", "broken"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("broken ") && l.split_whitespace().nth(1) == Some("Failed")),
        "{table}"
    );
}

#[test]
fn parallel_completions_and_ttl_after_finished() {
    let (reg, server) = setup();
    server.create_ok(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "fanout"},
        "spec": {"completions": 4, "parallelism": 2, "ttlSecondsAfterFinished": 2,
            "template": {"spec": {"restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": reg.busybox, "command": ["sh", "-c", "echo piece"]}]}}}}));
    let job = server.wait_for("job", "fanout", "Complete", |j| {
        condition(j, "Complete").is_some()
    });
    assert_eq!(job["status"]["succeeded"], 4);
    // ttlSecondsAfterFinished: the Job and its pods go.
    server.wait_gone("job", "fanout");
    server.wait_for_pods("job-name=fanout", "gone", <[Value]>::is_empty);
}
