//! Probes, lifecycle hooks and restarts end to end (issue 9 item 2): a real `imc server`, real
//! runc, real kubectl, busybox images from a real docker-registry. Readiness gates `Ready`;
//! httpGet and tcpSocket probes reach a pod's ports from inside its network
//! namespace; a failing liveness probe restarts the container with the kubelet's back-off and
//! events; a startup probe holds the other probes back; postStart and preStop hooks run in
//! order; termination messages come from the file or the log; init containers are retried;
//! a sidecar starts before the next init container and runs alongside the app;
//! restart counts and previous logs survive a crash of the server.
//!
//! The test waits only on observable state (status, events, files the containers write);
//! where a pod must reach the test itself, it uses the host's network (`hostNetwork`, in a
//! namespace whose Pod Security level allows it) and a listener of the test on loopback.

mod run_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{PATIENCE, pod_running};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-probes-node";

fn start_server(reg: &Registry) -> TestServer {
    let args = vec![
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

/// A pod of `containers` (each a JSON object completed with the image) and extra spec fields.
fn pod(name: &str, image: &str, containers: Vec<Value>, spec: Value) -> Value {
    let containers: Vec<Value> = containers
        .into_iter()
        .map(|mut c| {
            c["image"] = json!(image);
            c
        })
        .collect();
    let mut spec_obj = json!({"terminationGracePeriodSeconds": 2, "containers": containers});
    if let (Some(s), Some(extra)) = (spec_obj.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec_obj})
}

/// A container running `script` with `sh -c`, with extra fields.
fn container(name: &str, script: &str, extra: Value) -> Value {
    let mut c = json!({"name": name, "command": ["sh", "-c", script]});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn exec_probe(command: &str, extra: Value) -> Value {
    let mut p = json!({"exec": {"command": ["sh", "-c", command]}, "periodSeconds": 1});
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

/// The status of container `name` (regular or init) of a pod object.
fn status_of<'a>(pod: &'a Value, name: &str) -> &'a Value {
    for list in ["containerStatuses", "initContainerStatuses"] {
        if let Some(s) = pod["status"][list]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == name))
        {
            return s;
        }
    }
    &Value::Null
}

/// (status, reason, message) of condition `type_`.
fn condition(pod: &Value, type_: &str) -> (String, String, String) {
    let c = pod["status"]["conditions"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
    (s("status"), s("reason"), s("message"))
}

/// Messages of the events with `reason` about pod `name`.
fn event_messages(server: &TestServer, name: &str, reason: &str) -> Vec<String> {
    server
        .events_about(name)
        .iter()
        .filter(|e| e["reason"] == reason)
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// Polls until an event with `reason` about `name` has a message containing `needle`; all
/// messages with that reason then.
fn wait_for_event(server: &TestServer, name: &str, reason: &str, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let messages = event_messages(server, name, reason);
        if messages.iter().any(|m| m.contains(needle)) {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event about {name} containing {needle:?}; events: {:#?}",
            server.events_about(name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `DIR/pods/<uid>/<container>/rootfs`: the host's view of a running container's root.
fn rootfs(server: &TestServer, pod: &Value, container: &str) -> PathBuf {
    let uid = pod["metadata"]["uid"].as_str().expect("a pod has a uid");
    server
        .data_dir()
        .join("pods")
        .join(uid)
        .join(container)
        .join("rootfs")
}

/// A namespace whose Pod Security level admits `hostNetwork` pods.
fn privileged_namespace(server: &TestServer, name: &str) {
    server.kubectl_ok(&["create", "namespace", name]);
    server.kubectl_ok(&[
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
}

/// A listener of the test on the host's loopback recording each request's first line and
/// headers, answering each path with the status `answer` gives (path, how many requests for
/// it came before).
struct Recorder {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(answer: impl Fn(&str, usize) -> u16 + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let before = {
                    let mut r = seen.lock().unwrap();
                    let n = r
                        .iter()
                        .filter(|h| h.split_whitespace().nth(1) == Some(path.as_str()))
                        .count();
                    r.push(head);
                    n
                };
                let status = answer(&path, before);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        Recorder { port, requests }
    }

    /// The paths requested so far, in order.
    fn paths(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| h.split_whitespace().nth(1).map(str::to_owned))
            .collect()
    }

    /// The request head for `path`, once it came.
    fn wait_for(&self, path: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(h) = self
                .requests
                .lock()
                .unwrap()
                .iter()
                .find(|h| h.split_whitespace().nth(1) == Some(path))
            {
                return h.clone();
            }
            assert!(Instant::now() < deadline, "no request for {path}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn readiness_probes_gate_ready_and_reach_the_pod_inside_its_network_namespace() {
    let reg = registry_with_images();
    let server = start_server(&reg);

    // An exec readiness probe: not ready until the file exists.
    server.create_ok(pod(
        "gated",
        &reg.busybox,
        vec![container(
            "app",
            "exec sleep 3600",
            json!({"readinessProbe": exec_probe("cat /tmp/ready", json!({}))}),
        )],
        json!({}),
    ));
    let p = server.wait_for("pod", "gated", "running, not ready", |p| {
        pod_running(p) && condition(p, "Ready").2.contains("[app]")
    });
    assert_eq!(status_of(&p, "app")["ready"], false);
    assert_eq!(status_of(&p, "app")["started"], true);
    assert_eq!(
        condition(&p, "Ready"),
        (
            "False".into(),
            "ContainersNotReady".into(),
            "containers with unready status: [app]".into()
        )
    );
    assert_eq!(condition(&p, "ContainersReady").0, "False");
    wait_for_event(
        &server,
        "gated",
        "Unhealthy",
        "Readiness probe failed: cat: can't open '/tmp/ready': No such file or directory",
    );
    let table = server.kubectl_ok(&["get", "pod", "gated"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("gated ") && l.contains(" 0/1 ")),
        "{table}"
    );
    // The file appears (written through the host's view of the container's root): ready.
    std::fs::write(rootfs(&server, &p, "app").join("tmp/ready"), "").unwrap();
    let p = server.wait_for("pod", "gated", "Ready", |p| {
        condition(p, "Ready").0 == "True"
    });
    assert_eq!(status_of(&p, "app")["ready"], true);
    assert_eq!(condition(&p, "ContainersReady").0, "True");

    // busybox httpd serves in the pod's network namespace; httpGet and tcpSocket probes reach
    // it from inside that namespace. Probes of the other containers of the pod
    // check what answers and what does not.
    let web = "mkdir -p /www && echo fine > /www/healthz && exec httpd -f -p 8080 -h /www";
    let idle = "exec sleep 3600";
    server.create_ok(pod(
        "web",
        &reg.busybox,
        vec![
            container(
                "web",
                web,
                json!({"ports": [{"name": "http", "containerPort": 8080}],
                       "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                       "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}),
            ),
            container(
                "tcp",
                idle,
                json!({"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}),
            ),
            container(
                "missing",
                idle,
                json!({"readinessProbe": {"httpGet": {"path": "/missing", "port": 8080}, "periodSeconds": 1}}),
            ),
            container(
                "closed",
                idle,
                json!({"readinessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1}}),
            ),
        ],
        json!({}),
    ));
    let p = server.wait_for("pod", "web", "web and tcp ready", |p| {
        status_of(p, "web")["ready"] == true && status_of(p, "tcp")["ready"] == true
    });
    assert_eq!(status_of(&p, "missing")["ready"], false);
    assert_eq!(status_of(&p, "closed")["ready"], false);
    assert_eq!(
        status_of(&p, "web")["restartCount"],
        0,
        "the liveness probe passes"
    );
    assert_eq!(
        condition(&p, "Ready").2,
        "containers with unready status: [missing closed]"
    );
    wait_for_event(
        &server,
        "web",
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed with statuscode: 404",
    );
    // Probes without a host connect to the pod's IP (inside its network namespace).
    let pod_ip = p["status"]["podIP"].as_str().expect("the pod has an IP");
    wait_for_event(
        &server,
        "web",
        "Unhealthy",
        &format!("Readiness probe failed: dial tcp {pod_ip}:9999: connect: connection refused"),
    );
    // The probe's request as httpd logged it: nothing, it logs nothing by default; the
    // answer (200 for /healthz, 404 for /missing) is what the probes saw.
}

#[test]
fn a_failing_liveness_probe_restarts_the_container_with_back_off() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    server.create_ok(pod(
        "live",
        &reg.busybox,
        vec![container(
            "app",
            "echo started; exec sleep 3600",
            json!({"livenessProbe": exec_probe(
                "cat /tmp/alive",
                json!({"failureThreshold": 1, "terminationGracePeriodSeconds": 1}),
            )}),
        )],
        json!({"restartPolicy": "Always"}),
    ));
    // First restart at once, the next one after the back-off: CrashLoopBackOff.
    let p = server.wait_for("pod", "live", "in CrashLoopBackOff", |p| {
        status_of(p, "app")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let app = status_of(&p, "app");
    assert!(app["restartCount"].as_i64().unwrap() >= 1, "{app:#}");
    let message = app["state"]["waiting"]["message"].as_str().unwrap();
    let uid = p["metadata"]["uid"].as_str().unwrap();
    assert!(
        message.starts_with("back-off 10s restarting failed container=app pod=live_default(")
            && message.ends_with(&format!("({uid})")),
        "{message}"
    );
    // Killed with SIGKILL after the probe's 1 s grace period (sleep ignores SIGTERM as pid 1).
    let last = &app["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{app:#}");
    assert_eq!(last["reason"], "Error");
    assert_eq!(p["status"]["phase"], "Running");
    assert_eq!(condition(&p, "Ready").0, "False");

    let unhealthy = event_messages(&server, "live", "Unhealthy");
    assert!(
        unhealthy.iter().any(|m| m
            == "Liveness probe failed: cat: can't open '/tmp/alive': No such file or directory\n"
            || m == "Liveness probe failed: cat: can't open '/tmp/alive': No such file or directory"),
        "{unhealthy:?}"
    );
    let killing = event_messages(&server, "live", "Killing");
    assert!(
        killing
            .iter()
            .any(|m| m == "Container app failed liveness probe, will be restarted"),
        "{killing:?}"
    );
    let backoff = wait_for_event(&server, "live", "BackOff", "Back-off restarting");
    assert!(
        backoff.iter().any(|m| *m
            == format!("Back-off restarting failed container app in pod live_default({uid})")),
        "{backoff:?}"
    );
    // After the back-off it runs again (and is killed again).
    server.wait_for("pod", "live", "restarted twice", |p| {
        status_of(p, "app")["restartCount"].as_i64() >= Some(2)
    });
    assert_eq!(
        server.kubectl_ok(&["logs", "live", "--previous"]),
        "started\n"
    );
}

#[test]
fn a_startup_probe_holds_the_liveness_probe_back() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    // The startup probe counts its runs in a file; the liveness probe would fail at once.
    server.create_ok(pod(
        "slow",
        &reg.busybox,
        vec![container(
            "app",
            "exec sleep 3600",
            json!({
                "startupProbe": exec_probe(
                    "echo x >> /tmp/tries; test -e /tmp/started",
                    json!({"failureThreshold": 1000})),
                "livenessProbe": exec_probe(
                    "cat /tmp/alive",
                    json!({"failureThreshold": 1, "terminationGracePeriodSeconds": 1})),
            }),
        )],
        json!({}),
    ));
    let p = server.wait_for("pod", "slow", "running", pod_running);
    let root = rootfs(&server, &p, "app");
    // Five startup probes ran (five periods): the liveness probe has not run all along.
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_to_string(root.join("tmp/tries"))
        .unwrap_or_default()
        .lines()
        .count()
        < 5
    {
        assert!(Instant::now() < deadline, "the startup probe does not run");
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = server.get_json("pod", "slow").unwrap();
    let app = status_of(&p, "app");
    assert_eq!(app["restartCount"], 0, "{app:#}");
    assert_eq!(app["started"], false);
    assert_eq!(app["ready"], false);
    assert!(
        event_messages(&server, "slow", "Unhealthy")
            .iter()
            .all(|m| m.starts_with("Startup probe failed")),
        "only the startup probe ran"
    );

    // Started: the liveness probe runs, fails, and the container is restarted.
    std::fs::write(root.join("tmp/started"), "").unwrap();
    server.wait_for("pod", "slow", "started", |p| {
        status_of(p, "app")["started"] == true || status_of(p, "app")["restartCount"] != 0
    });
    wait_for_event(
        &server,
        "slow",
        "Killing",
        "Container app failed liveness probe, will be restarted",
    );
    server.wait_for("pod", "slow", "restarted", |p| {
        status_of(p, "app")["restartCount"].as_i64() >= Some(1)
    });
}

#[test]
fn post_start_and_pre_stop_hooks_run_in_order() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    privileged_namespace(&server, "hooks");
    let recorder = Recorder::start(|_, _| 200);
    let port = recorder.port;
    // The process waits for what postStart writes; on SIGTERM it reports to the test.
    let script = format!(
        "while ! test -e /tmp/post-start; do sleep 0.1; done; echo saw $(cat /tmp/post-start); \
         trap 'wget -q -O /dev/null http://127.0.0.1:{port}/term; exit 0' TERM; \
         while true; do sleep 0.2; done"
    );
    let manifest = pod(
        "hooked",
        &reg.busybox,
        vec![container(
            "app",
            &script,
            json!({"lifecycle": {
                "postStart": {"exec": {"command": ["sh", "-c", "echo from-post-start > /tmp/post-start"]}},
                "preStop": {"httpGet": {"path": "/pre-stop", "port": port, "host": "127.0.0.1"}},
            }}),
        )],
        json!({"hostNetwork": true, "terminationGracePeriodSeconds": 30}),
    );
    let (ok, out) =
        server.kubectl_args_stdin(&["create", "-n", "hooks", "-f", "-"], &manifest.to_string());
    assert!(ok, "{out}");
    server.wait_for_in("pod", "hooked", &["-n", "hooks"], "running", pod_running);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let logs = server.kubectl_ok(&["logs", "-n", "hooks", "hooked"]);
        if logs == "saw from-post-start\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container never saw the hook's file: {logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    server.kubectl_ok(&["delete", "pod", "-n", "hooks", "hooked", "--wait=false"]);
    let pre_stop = recorder.wait_for("/pre-stop").to_ascii_lowercase();
    recorder.wait_for("/term");
    assert_eq!(
        recorder.paths(),
        ["/pre-stop", "/term"],
        "preStop runs before SIGTERM"
    );
    assert!(
        pre_stop.contains("user-agent: kube-lifecycle/1.32"),
        "{pre_stop}"
    );
    server.wait_gone("pod", "hooked");

    // A failing postStart hook kills the container: event, then a restart.
    let manifest = pod(
        "bad-hook",
        &reg.busybox,
        vec![container(
            "app",
            "exec sleep 3600",
            json!({"lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "exit 3"]}}}}),
        )],
        json!({"restartPolicy": "Never"}),
    );
    server.create_ok(manifest);
    wait_for_event(
        &server,
        "bad-hook",
        "FailedPostStartHook",
        "PostStartHook failed",
    );
    wait_for_event(&server, "bad-hook", "Killing", "FailedPostStartHook");
    let p = server.wait_for("pod", "bad-hook", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    let message = status_of(&p, "app")["state"]["terminated"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.starts_with(
            "Exec lifecycle hook ([sh -c exit 3]) for Container \"app\" in Pod \"bad-hook_default("
        ) && message.contains("exited with 3"),
        "{message}"
    );
}

#[test]
fn termination_messages_come_from_the_file_or_the_log() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    let never = json!({"restartPolicy": "Never"});
    server.create_ok(pod(
        "file",
        &reg.busybox,
        vec![container(
            "app",
            "printf 'custom message' > /dev/termination-log; exit 3",
            json!({}),
        )],
        never.clone(),
    ));
    server.create_ok(pod(
        "path",
        &reg.busybox,
        vec![container(
            "app",
            "mkdir -p /run/msg && printf done > /run/msg/end",
            json!({"terminationMessagePath": "/run/msg/end"}),
        )],
        never.clone(),
    ));
    server.create_ok(pod(
        "fallback",
        &reg.busybox,
        vec![container(
            "app",
            "echo first; echo last words; exit 2",
            json!({"terminationMessagePolicy": "FallbackToLogsOnError"}),
        )],
        never.clone(),
    ));
    server.create_ok(pod(
        "fine",
        &reg.busybox,
        vec![container(
            "app",
            "echo all good",
            json!({"terminationMessagePolicy": "FallbackToLogsOnError"}),
        )],
        never,
    ));
    let message = |name: &str| {
        let p = server.wait_for("pod", name, "finished", |p| {
            matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        });
        status_of(&p, "app")["state"]["terminated"]["message"].clone()
    };
    assert_eq!(message("file"), "custom message");
    assert_eq!(message("path"), "done");
    assert_eq!(message("fallback"), "first\nlast words\n");
    assert_eq!(message("fine"), Value::Null, "no fallback after a success");
    let describe = server.kubectl_ok(&["describe", "pod", "file"]);
    assert!(describe.contains("custom message"), "{describe}");
}

#[test]
fn init_containers_are_retried_as_the_restart_policy_says() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    privileged_namespace(&server, "init");
    // The init container asks the test, which refuses the first time.
    let recorder = Recorder::start(|_, before| if before == 0 { 500 } else { 200 });
    let fetch = format!(
        "echo asking; wget -q -O /dev/null http://127.0.0.1:{}/init 2>/dev/null",
        recorder.port
    );
    let manifest = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "retried"},
        "spec": {"restartPolicy": "OnFailure", "hostNetwork": true, "terminationGracePeriodSeconds": 1,
                 "initContainers": [{"name": "init", "image": reg.busybox, "command": ["sh", "-c", fetch]}],
                 "containers": [{"name": "app", "image": reg.busybox, "command": ["sh", "-c", "echo main; exec sleep 3600"]}]}});
    let (ok, out) =
        server.kubectl_args_stdin(&["create", "-n", "init", "-f", "-"], &manifest.to_string());
    assert!(ok, "{out}");
    let p = server.wait_for_in("pod", "retried", &["-n", "init"], "running", pod_running);
    let init = status_of(&p, "init");
    assert_eq!(init["restartCount"], 1, "{init:#}");
    assert_eq!(init["lastState"]["terminated"]["exitCode"], 1, "{init:#}");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0);
    assert_eq!(init["state"]["terminated"]["reason"], "Completed");
    assert_eq!(condition(&p, "Initialized").0, "True");
    assert_eq!(recorder.paths(), ["/init", "/init"]);
    assert_eq!(
        server.kubectl_ok(&["logs", "-n", "init", "retried", "-c", "init", "--previous"]),
        "asking\n"
    );

    // restartPolicy Never: a failing init container fails the pod; nothing else runs.
    let manifest = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "doomed"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "initContainers": [{"name": "init", "image": reg.busybox, "command": ["sh", "-c", "exit 4"]}],
                 "containers": [{"name": "app", "image": reg.busybox, "command": ["sh", "-c", "exec sleep 3600"]}]}});
    server.create_ok(manifest);
    let p = server.wait_for("pod", "doomed", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(status_of(&p, "init")["state"]["terminated"]["exitCode"], 4);
    assert_eq!(status_of(&p, "init")["restartCount"], 0);
    assert_eq!(
        status_of(&p, "app")["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(
        condition(&p, "Initialized"),
        (
            "False".into(),
            "ContainersNotInitialized".into(),
            "containers with incomplete status: [init]".into()
        )
    );
    let table = server.kubectl_ok(&["get", "pod", "doomed"]);
    assert!(table.contains("Init:Error"), "{table}");
}

#[test]
fn restart_counts_and_previous_logs_survive_a_server_crash() {
    let reg = registry_with_images();
    let mut server = start_server(&reg);
    // Each instance prints something of its own (the host's uptime when it started).
    let script = "echo instance $(cat /proc/uptime); exec sleep 3600";
    server.create_ok(pod(
        "durable",
        &reg.busybox,
        vec![container("app", script, json!({}))],
        json!({}),
    ));
    server.wait_for("pod", "durable", "running", pod_running);
    let first = wait_for_output(&server);
    // A new image restarts the container: restart count 1, the first instance's log previous.
    server.kubectl_ok(&[
        "set",
        "image",
        "pod/durable",
        &format!("app={}", reg.layered),
    ]);
    let p = server.wait_for("pod", "durable", "restarted", |p| {
        status_of(p, "app")["restartCount"] == 1 && pod_running(p)
    });
    assert_eq!(status_of(&p, "app")["image"], reg.layered.as_str());
    assert_eq!(server.kubectl_ok(&["logs", "durable", "--previous"]), first);
    let second = wait_for_output(&server);
    assert_ne!(first, second);

    // The server is killed and started again: its containers are gone, the pod runs again.
    server.restart().unwrap();
    let p = server.wait_for("pod", "durable", "restarted after the crash", |p| {
        status_of(p, "app")["restartCount"] == 2 && pod_running(p)
    });
    let last = &status_of(&p, "app")["lastState"]["terminated"];
    assert_eq!(last["reason"], "Unknown", "{last:#}");
    // The log of the instance that ran when the server was killed is the previous one.
    assert_eq!(
        server.kubectl_ok(&["logs", "durable", "--previous"]),
        second
    );
    let third = wait_for_output(&server);
    assert_ne!(second, third);
}

/// The log of pod `durable` once its current instance printed its line.
fn wait_for_output(server: &TestServer) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = server.kubectl(&["logs", "durable"]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.starts_with("instance ") && text.ends_with('\n') {
            return text;
        }
        assert!(Instant::now() < deadline, "no output: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_sidecar_starts_before_the_next_init_container_and_runs_alongside_the_app() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    // The sidecar writes a file into a shared emptyDir; the init container after it and the
    // app read it, so they ran after the sidecar had started.
    let shared = json!([{"name": "shared", "mountPath": "/shared"}]);
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sided"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "volumes": [{"name": "shared", "emptyDir": {}}],
                 "initContainers": [
                     {"name": "side", "image": reg.busybox, "restartPolicy": "Always",
                      "command": ["sh", "-c", "echo up > /shared/side; exec sleep 3600"],
                      "volumeMounts": shared,
                      "startupProbe": exec_probe("test -e /shared/side", json!({}))},
                     {"name": "init", "image": reg.busybox,
                      "command": ["sh", "-c", "cat /shared/side"], "volumeMounts": shared}],
                 "containers": [
                     {"name": "app", "image": reg.busybox,
                      "command": ["sh", "-c", "cat /shared/side; exec sleep 3600"],
                      "volumeMounts": shared}]}}),
    );
    let p = server.wait_for("pod", "sided", "running and ready", |p| {
        pod_running(p) && condition(p, "Ready").0 == "True"
    });
    let side = status_of(&p, "side");
    assert_eq!(side["started"], true, "{side:#}");
    assert_eq!(side["ready"], true, "{side:#}");
    assert!(side["state"]["running"].is_object(), "{side:#}");
    let init = status_of(&p, "init");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{init:#}");
    assert_eq!(server.kubectl_ok(&["logs", "sided", "-c", "init"]), "up\n");
    server.wait_for_log("sided", "app", "up");
    // kubectl counts the sidecar among the pod's containers.
    let table = server.kubectl_ok(&["get", "pod", "sided"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("sided ") && l.contains(" 2/2 ") && l.contains("Running")),
        "{table}"
    );
    server.kubectl_ok(&["delete", "pod", "sided"]);
    server.wait_gone("pod", "sided");
}
