//! CronJobs end to end (issue 11): a real `imc server` (API server, CronJob and Job
//! controllers, node with runc), a real docker-registry and the real kubectl: `kubectl create
//! cronjob` (a protobuf body) firing a Job that completes, `kubectl create job --from=cronjob/X`,
//! the history limits deleting old Jobs, suspend stopping the firing, and bad schedules and time
//! zones refused in kube's words. Waits for a schedule time are waits, never timed assertions.

mod run_support;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{eventually, wait_past_second};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-test-node";
const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

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

fn complete(job: &Value) -> bool {
    job["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Complete" && c["status"] == "True")
    })
}

/// The Jobs controlled by the CronJob `name`.
fn jobs_of(server: &TestServer, name: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&server.kubectl_ok(&["get", "jobs", "-o", "json"]))
        .expect("kubectl prints JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| {
            j["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|rs| {
                    rs.iter()
                        .any(|r| r["kind"] == "CronJob" && r["name"] == name)
                })
        })
        .cloned()
        .collect()
}

fn cron_job(name: &str, schedule: &str, image: &str, extra: Value) -> Value {
    let mut cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
        "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": image, "command": ["sh", "-c", "echo tick"]}]}}}}}});
    if let (Some(spec), Some(extra)) = (cj["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    cj
}

#[test]
fn kubectl_create_cronjob_fires_a_job_that_completes() {
    let (reg, server) = setup();
    server.kubectl_ok(&[
        "create",
        "cronjob",
        "tick",
        &format!("--image={}", reg.busybox),
        "--schedule=* * * * *",
        "--",
        "sh",
        "-c",
        "echo tick",
    ]);
    let cj = server.get_json("cj", "tick").expect("the cron job");
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
    assert_eq!(
        cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["sh", "-c", "echo tick"])
    );
    // The next minute starts a Job (a wait of up to a minute, not a timed assertion).
    let job = eventually("the cron job starts a job", || {
        jobs_of(&server, "tick").into_iter().next()
    })
    .expect("a job");
    let name = job["metadata"]["name"].as_str().expect("a name").to_owned();
    let scheduled: jiff::Timestamp = job["metadata"]["annotations"][SCHEDULED]
        .as_str()
        .expect("the scheduled timestamp")
        .parse()
        .expect("RFC 3339");
    assert_eq!(scheduled.as_second() % 60, 0);
    assert_eq!(name, format!("tick-{}", scheduled.as_second() / 60));
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], cj["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    server.wait_for("job", &name, "Complete", complete);
    let cj = server.wait_for("cj", "tick", "past its first run", |c| {
        c["status"]["lastSuccessfulTime"].is_string() && c["status"]["active"].is_null()
    });
    assert_eq!(
        cj["status"]["lastScheduleTime"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
        Some(scheduled)
    );
    let table = server.kubectl_ok(&["get", "cronjobs"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("tick "))
        .expect("a row")
        .split_whitespace()
        .collect();
    // NAME, the five schedule fields, TIMEZONE, SUSPEND, ACTIVE, LAST SCHEDULE, AGE.
    assert_eq!(&row[6..9], &["<none>", "False", "0"], "{table}");
    assert!(
        server
            .kubectl_ok(&["get", "all"])
            .contains("cronjob.batch/tick")
    );

    // kubectl create job --from: a Job of the template, owned by the CronJob, run now.
    server.kubectl_ok(&["create", "job", "by-hand", "--from=cronjob/tick"]);
    let manual = server.wait_for("job", "by-hand", "Complete", complete);
    assert_eq!(
        manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(manual["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let pods = server.pods_with("job-name=by-hand");
    assert_eq!(pods.len(), 1);
    let pod = pods[0]["metadata"]["name"].as_str().expect("a name");
    assert!(server.kubectl_ok(&["logs", pod]).contains("tick"));

    // Deleting the CronJob takes its Jobs along.
    server.kubectl_ok(&["delete", "cronjob", "tick"]);
    eventually("the jobs are gone", || {
        jobs_of(&server, "tick").is_empty().then_some(())
    })
    .expect("the jobs go with the cron job");
}

#[test]
fn history_limits_delete_old_jobs_and_suspend_stops_firing() {
    let (reg, server) = setup();
    // Suspended, so only the Jobs started by hand run; they are the CronJob's all the same.
    server.create_ok(cron_job(
        "kept",
        "* * * * *",
        &reg.busybox,
        json!({"suspend": true, "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0}),
    ));
    for n in ["kept-1", "kept-2", "kept-3"] {
        server.kubectl_ok(&["create", "job", n, "--from=cronjob/kept"]);
        let job = server.wait_for("job", n, "Complete", complete);
        // The next Job starts in a later second, so "oldest" is unambiguous.
        wait_past_second(job["status"]["startTime"].as_str().expect("a start time"));
    }
    eventually("only the newest finished job is kept", || {
        let names: Vec<String> = jobs_of(&server, "kept")
            .iter()
            .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        (names == ["kept-3"]).then_some(())
    })
    .expect("old jobs are deleted");

    // A suspended CronJob and a running one on the same schedule: once the running one has
    // fired (a wait of up to a minute), the suspended one has started nothing.
    server.create_ok(cron_job(
        "paused",
        "* * * * *",
        &reg.busybox,
        json!({"suspend": true}),
    ));
    server.create_ok(cron_job("witness", "* * * * *", &reg.busybox, json!({})));
    eventually("the witness fires", || {
        (!jobs_of(&server, "witness").is_empty()).then_some(())
    })
    .expect("the witness fires");
    assert!(jobs_of(&server, "paused").is_empty());
    let paused = server.get_json("cj", "paused").expect("the cron job");
    assert!(
        paused["status"]["lastScheduleTime"].is_null(),
        "{paused:#?}"
    );
    let table = server.kubectl_ok(&["get", "cj", "paused"]);
    assert!(table.lines().any(|l| l.contains(" True ")), "{table}");
}

#[test]
fn bad_schedules_and_time_zones_are_refused() {
    let (reg, server) = setup();
    // (case, spec fields, message)
    let rows = [
        (
            "too few fields",
            json!({"schedule": "* * *"}),
            "spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields, found 3: [* * *]",
        ),
        (
            "CRON_TZ",
            json!({"schedule": "CRON_TZ=Europe/Berlin 0 9 * * *"}),
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ),
        (
            "unknown time zone",
            json!({"timeZone": "Mars/Olympus"}),
            "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
        ),
        (
            "out of range",
            json!({"schedule": "0 24 * * *"}),
            "end of range (24) above maximum (23): 24",
        ),
    ];
    for (case, extra, message) in rows {
        let (ok, out) = server.create(cron_job("bad", "0 9 * * *", &reg.busybox, extra));
        assert!(!ok, "{case}: {out}");
        assert!(out.contains(message), "{case}: {out}");
    }
    // A real time zone is accepted and shown.
    server.create_ok(cron_job(
        "berlin",
        "0 9 * * *",
        &reg.busybox,
        json!({"timeZone": "Europe/Berlin"}),
    ));
    let table = server.kubectl_ok(&["get", "cj", "berlin"]);
    assert!(table.contains("Europe/Berlin"), "{table}");
}
