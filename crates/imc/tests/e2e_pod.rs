//! Pods end to end (issue 5, DESIGN §4 and §5): a real `imc server` process (admission, cache
//! controller, node), a real docker-registry with busybox-based images, real runc, real kubectl.
//! Caches are created with kubectl and built by the server's cache controller.

mod run_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{PATIENCE, pod_running, wait_past_second};
use imc_testkit::proxy::{Fault, Proxy};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-test-node";
const PINNED: &str = "k8s.aliyun.com/eci-image-snapshot-id";
const AUTO: &str = "k8s.aliyun.com/eci-image-cache";
const MATCHED: &str = "k8s.aliyun.com/eci-matched-image-cache";

fn start_server(plain_http: &[String]) -> TestServer {
    let mut args = vec!["--node-name".to_owned(), NODE.to_owned()];
    for host in plain_http {
        args.extend(["--plain-http".to_owned(), host.clone()]);
    }
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

fn cache_manifest(name: &str, images: &[&str]) -> Value {
    json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
           "metadata": {"name": name}, "spec": {"images": images}})
}

fn pod_manifest(
    name: &str,
    image: &str,
    annotations: &[(&str, &str)],
    script: &str,
    restart: &str,
) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "annotations": annotations},
           "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "app", "image": image, "command": ["sh", "-c", script]}]}})
}

/// Creates a cache, waits for Ready and returns its id.
fn ready_cache(server: &TestServer, name: &str, images: &[&str]) -> String {
    let (ok, out) = server.create(cache_manifest(name, images));
    assert!(ok, "{out}");
    let cache = server.wait_for("imagecache", name, "Ready", |o| {
        o["status"]["phase"] == "Ready"
    });
    server.assert_cache_is_erofs(&cache);
    cache["status"]["imageCacheId"]
        .as_str()
        .expect("a Ready cache has an id")
        .to_owned()
}

fn container_state<'a>(pod: &'a Value, state: &str) -> &'a Value {
    &pod["status"]["containerStatuses"][0]["state"][state]
}

fn disk(server: &TestServer, id: &str) -> PathBuf {
    server.data_dir().join(format!("caches/{id}.erofs"))
}

fn setup() -> (Registry, TestServer) {
    let reg = registry_with_images();
    let server = start_server(&[reg.registry.host()]);
    (reg, server)
}

#[test]
fn pinned_pod_runs_from_a_ready_cache_without_downloading() {
    let (reg, server) = setup();
    let id = ready_cache(&server, "busybox", &[&reg.busybox]);

    let manifest = pod_manifest(
        "pinned",
        &reg.busybox,
        &[(PINNED, &id)],
        "echo hello from the cache; exec sleep 3600",
        "Always",
    );
    let (ok, out) = server.create(&manifest);
    assert!(ok, "{out}");
    let pod = server.wait_for("pod", "pinned", "Running", pod_running);
    assert_eq!(pod["metadata"]["annotations"][MATCHED], id.as_str());
    assert_eq!(pod["spec"]["nodeName"], NODE);
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], 0);
    assert_eq!(status["ready"], true);
    assert!(
        status["imageID"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{status:#}"
    );
    assert!(pod["status"]["startTime"].is_string());
    let conditions: Vec<(String, String)> = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            conditions.contains(&(t.to_owned(), "True".to_owned())),
            "{t} not True in {conditions:?}"
        );
    }

    // Admission recorded the match on the cache (retention of auto-created caches uses it).
    server.wait_for("imagecache", "busybox", "matched", |c| {
        c["status"]["lastMatchedTime"].is_string()
    });

    // kubectl get pods: READY 1/1, Running.
    let table = server.kubectl_ok(&["get", "pods"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("pinned "))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..3], &["1/1", "Running"], "{table}");

    // describe: the cache hit and no download.
    let describe = server.kubectl_ok(&["describe", "pod", "pinned"]);
    for needle in [
        "SuccessfulHitImageCache".to_owned(),
        format!("Successfully hit image cache {id}"),
        "(0 B downloaded, 1 layer from cache".to_owned(),
        "Created".to_owned(),
        "Started".to_owned(),
    ] {
        assert!(describe.contains(&needle), "{needle} missing:\n{describe}");
    }
    assert!(!describe.contains("Pulling"), "{describe}");

    // Logs of the running container.
    let logs = server.kubectl_ok(&["logs", "pinned"]);
    assert_eq!(logs, "hello from the cache\n");

    // Metrics: one hit, its start latency, layer bytes served from the cache.
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    for needle in [
        "imc_cache_hits_total 1",
        "imc_pod_start_seconds_count{cache=\"Hit\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    let served = metrics
        .lines()
        .find_map(|l| l.strip_prefix("imc_cache_served_bytes_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(served > 0, "{metrics}");

    // The node and its lease.
    let node = server
        .get_json("node", NODE)
        .expect("the node is registered");
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(node["status"]["conditions"][0]["status"], "True");
    for r in ["cpu", "memory", "ephemeral-storage", "pods"] {
        assert!(node["status"]["capacity"][r].is_string(), "{r}: {node:#}");
    }
    let lease = server.kubectl_ok(&["get", "lease", NODE, "-n", "kube-node-lease", "-o", "json"]);
    let lease: Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], NODE);

    // Deleting the cache while the pod uses it: the controller decides to wait for the pod
    // (its event says so), the pod keeps running, the disk stays.
    server.kubectl_ok(&["delete", "imagecache", "busybox", "--wait=false"]);
    server.wait_for("imagecache", "busybox", "waiting for its pod", |_| {
        server.events_about("busybox").iter().any(|e| {
            e["reason"] == "DeletionWaiting"
                && e["message"]
                    .as_str()
                    .or_else(|| e["note"].as_str())
                    .is_some_and(|m| m.contains(": default/pinned;"))
        })
    });
    let pod = server.get_json("pod", "pinned").unwrap();
    assert!(pod_running(&pod), "{pod:#}");
    assert!(
        disk(&server, &id).exists(),
        "disk removed under a running pod"
    );
    assert_eq!(
        server.kubectl_ok(&["logs", "pinned"]),
        "hello from the cache\n"
    );

    // Deleting the pod: stopped (sleep ignores TERM as pid 1, so killed after the grace period),
    // removed, and then the cache disk goes too.
    server.kubectl_ok(&["delete", "pod", "pinned"]);
    server.wait_gone("pod", "pinned");
    let deadline = Instant::now() + PATIENCE;
    while disk(&server, &id).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!disk(&server, &id).exists(), "disk kept after its last pod");
    server.wait_gone("imagecache", "busybox");
    let describe_events = server.kubectl_ok(&["get", "events", "-o", "json"]);
    assert!(describe_events.contains("Killing"), "{describe_events}");
}

#[test]
fn pinned_pods_on_a_creating_or_unknown_cache_are_denied() {
    let reg = registry_with_images();
    // The cache's only layer trickles in, so it stays Creating for the test.
    let proxy = Proxy::start(&reg.registry.host()).unwrap();
    proxy.add_fault(
        reg.base.digest.hex(),
        Fault::Slow {
            bytes_per_sec: 2048,
        },
    );
    let server = start_server(&[reg.registry.host(), proxy.host_port()]);
    let slow_image = reg
        .busybox
        .replace(&reg.registry.host(), &proxy.host_port());
    let (ok, out) = server.create(cache_manifest("slow", &[&slow_image]));
    assert!(ok, "{out}");
    let cache = server.wait_for("imagecache", "slow", "Creating", |o| {
        o["status"]["phase"] == "Creating" && o["status"]["imageCacheId"].is_string()
    });
    let id = cache["status"]["imageCacheId"].as_str().unwrap();

    let (ok, out) = server.create(pod_manifest(
        "early",
        &reg.busybox,
        &[(PINNED, id)],
        "true",
        "Never",
    ));
    assert!(!ok, "a pod on a Creating cache was admitted: {out}");
    assert!(
        out.contains(&format!("image cache {id} (slow) is Creating, not Ready")),
        "{out}"
    );

    let unknown = "imc-zzzzzzzzzzzzzzzzzzzz";
    let (ok, out) = server.create(pod_manifest(
        "lost",
        &reg.busybox,
        &[("k8s.aliyun.com/eci-imc-id", unknown)],
        "true",
        "Never",
    ));
    assert!(!ok, "a pod on an unknown cache was admitted: {out}");
    assert!(
        out.contains(&format!("image cache {unknown} not found")),
        "{out}"
    );
    assert!(server.get_json("pod", "early").is_none());
    assert!(server.get_json("pod", "lost").is_none());

    // A pod deleted while its image trickles in is stopped without waiting for the pull (at
    // this rate the pull would outlast the test's patience).
    let (ok, out) = server.create(pod_manifest("patient", &slow_image, &[], "true", "Never"));
    assert!(ok, "{out}");
    server.wait_for("pod", "patient", "pulling", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let describe = server.kubectl_ok(&["describe", "pod", "patient"]);
        if describe.contains("Pulling") {
            break;
        }
        assert!(Instant::now() < deadline, "never pulling: {describe}");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.kubectl_ok(&["delete", "pod", "patient", "--wait=false"]);
    server.wait_gone("pod", "patient");
}

#[test]
fn automatic_matching_annotates_the_best_cache() {
    let (reg, server) = setup();
    // A second and third tag of the busybox repository (same layers as :1).
    let tag2 = reg.busybox.replace(":1", ":2");
    push_retag(&reg, "2");
    // Exact beats same repository: only "other-tag" holds :2 exactly.
    let other_tag = ready_cache(&server, "other-tag", &[&tag2]);
    // Size: both hold :1 exactly; "small-old" is closer in size to the pod's image although
    // "big-new" is newer.
    let small_old = ready_cache(&server, "small-old", &[&reg.busybox]);
    // "Newer" is by creationTimestamp, whole seconds: the next cache is created a second later.
    wait_past_creation(&server, "small-old");
    let _big_new = ready_cache(&server, "big-new", &[&reg.busybox, &reg.layered]);

    let matched = |pod: &str, image: &str| -> String {
        let (ok, out) = server.create(pod_manifest(
            pod,
            image,
            &[(AUTO, "true")],
            "exec sleep 3600",
            "Always",
        ));
        assert!(ok, "{out}");
        let pod = server.get_json("pod", pod).unwrap();
        pod["metadata"]["annotations"][MATCHED]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(matched("exact", &tag2), other_tag, "exact beats same repo");
    assert_eq!(
        matched("closest", &reg.busybox),
        small_old,
        "closest size wins"
    );

    // Newest wins a tie: the same images as "small-old", created later.
    wait_past_creation(&server, "big-new");
    let small_new = ready_cache(&server, "small-new", &[&reg.busybox]);
    assert_eq!(
        matched("newest", &reg.busybox),
        small_new,
        "newest wins ties"
    );

    // The chosen cache is the one the pod runs from.
    let pod = server.wait_for("pod", "newest", "Running", pod_running);
    assert_eq!(pod["metadata"]["annotations"][MATCHED], small_new.as_str());
    let describe = server.kubectl_ok(&["describe", "pod", "newest"]);
    assert!(
        describe.contains(&format!("Successfully hit image cache {small_new}")),
        "{describe}"
    );
}

/// Waits until the server's clock (this host's) is past the creation second of cache `name`.
fn wait_past_creation(server: &TestServer, name: &str) {
    let cache = server
        .get_json("imagecache", name)
        .expect("the cache exists");
    wait_past_second(
        cache["metadata"]["creationTimestamp"]
            .as_str()
            .expect("a creation time"),
    );
}

/// Pushes the busybox image again under `tag`.
fn push_retag(reg: &Registry, tag: &str) {
    let image = run_support_busybox_image();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(
        &reg.registry.host(),
        "imc/busybox",
        tag,
        &image,
        None,
    ))
    .expect("push");
}

fn run_support_busybox_image() -> imc_testkit::image::BuiltImage {
    use imc_testkit::image::{Format, ImageBuilder, ImageConfig};
    ImageBuilder::new(Format::Oci)
        .config(ImageConfig {
            cmd: Some(vec!["sh".to_owned()]),
            ..Default::default()
        })
        .layer(run_support::busybox_layer())
        .build()
}

#[test]
fn a_miss_pulls_then_creates_an_auto_cache_with_nothing_downloaded() {
    let (reg, server) = setup();
    let (ok, out) = server.create(pod_manifest(
        "missed",
        &reg.partial,
        &[(AUTO, "true")],
        "cat /app/marker; echo; exec sleep 3600",
        "Always",
    ));
    assert!(ok, "{out}");
    let pod = server.wait_for("pod", "missed", "Running", pod_running);
    assert!(pod["metadata"]["annotations"][MATCHED].is_null(), "{pod:#}");
    let describe = server.kubectl_ok(&["describe", "pod", "missed"]);
    assert!(describe.contains("ImageCacheMissed"), "{describe}");
    assert!(describe.contains("Pulling"), "{describe}");
    assert!(describe.contains("Successfully pulled image"), "{describe}");
    assert_eq!(server.kubectl_ok(&["logs", "missed"]), "partial-top\n");

    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let name = format!("auto-create-for-{}", &uid[..8]);
    let cache = server.wait_for("imagecache", &name, "Ready", |o| {
        o["status"]["phase"] == "Ready"
    });
    assert_eq!(cache["metadata"]["labels"]["imc.dev/auto-created"], "true");
    assert_eq!(cache["spec"]["images"], json!([reg.partial]));
    assert_eq!(cache["status"]["downloadedBytes"], 0, "{cache:#}");
}

#[test]
fn logs_follow_tail_and_exit_status_with_restart_policies() {
    let (reg, server) = setup();
    let (ok, out) = server.create(pod_manifest(
        "talker",
        &reg.busybox,
        &[],
        "echo one; sleep 2; echo two; sleep 1; echo three",
        "Never",
    ));
    assert!(ok, "{out}");
    server.wait_for("pod", "talker", "started", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
            || p["status"]["phase"] == "Succeeded"
    });
    // -f follows until the container ends.
    let followed = server.kubectl_ok(&["logs", "-f", "talker", "-c", "app"]);
    assert_eq!(followed, "one\ntwo\nthree\n");
    let pod = server.wait_for("pod", "talker", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let terminated = container_state(&pod, "terminated");
    assert_eq!(terminated["exitCode"], 0);
    assert_eq!(terminated["reason"], "Completed");
    assert!(terminated["finishedAt"].is_string());
    assert_eq!(
        server.kubectl_ok(&["logs", "talker", "--tail=2"]),
        "two\nthree\n"
    );
    let table = server.kubectl_ok(&["get", "pods"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("talker ") && l.contains("Completed")),
        "{table}"
    );

    // Never: a failing container fails the pod; OnFailure: it is restarted.
    let (ok, out) = server.create(pod_manifest("doomed", &reg.busybox, &[], "exit 3", "Never"));
    assert!(ok, "{out}");
    let pod = server.wait_for("pod", "doomed", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(container_state(&pod, "terminated")["exitCode"], 3);
    // A process that cannot start fails a Never pod (exit code 128) with the runtime's reason.
    let mut unstartable = pod_manifest("unstartable", &reg.busybox, &[], "", "Never");
    unstartable["spec"]["containers"][0]["command"] = json!(["/no/such/binary"]);
    let (ok, out) = server.create(&unstartable);
    assert!(ok, "{out}");
    let pod = server.wait_for("pod", "unstartable", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(container_state(&pod, "terminated")["exitCode"], 128);
    let describe = server.kubectl_ok(&["describe", "pod", "unstartable"]);
    assert!(describe.contains("/no/such/binary"), "{describe}");
    let (ok, out) = server.create(pod_manifest(
        "retried",
        &reg.busybox,
        &[],
        "echo attempt; exit 3",
        "OnFailure",
    ));
    assert!(ok, "{out}");
    let pod = server.wait_for("pod", "retried", "restarted", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .is_some_and(|n| n >= 1)
    });
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        3
    );
    // The previous instance's log; a container never restarted has none.
    assert_eq!(
        server.kubectl_ok(&["logs", "retried", "--previous"]),
        "attempt\n"
    );
    let out = server.kubectl(&["logs", "doomed", "--previous"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("previous terminated container"),
        "{out:?}"
    );

    // Env from literals and the pod's own fields; $(VAR) expanded in the command.
    let mut envy = pod_manifest(
        "envy",
        &reg.busybox,
        &[],
        "echo $(GREETING) from $(POD) on $NODE",
        "Never",
    );
    envy["spec"]["containers"][0]["env"] = json!([
        {"name": "GREETING", "value": "hello"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]);
    let (ok, out) = server.create(&envy);
    assert!(ok, "{out}");
    server.wait_for("pod", "envy", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(
        server.kubectl_ok(&["logs", "envy"]),
        format!("hello from envy on {NODE}\n")
    );

    // Init containers run to completion first; a failing one fails the pod.
    let with_init = |name: &str, init_script: &str| {
        let mut m = pod_manifest(name, &reg.busybox, &[], "echo main ran", "Never");
        m["spec"]["initContainers"] =
            json!([{"name": "init", "image": reg.busybox, "command": ["sh", "-c", init_script]}]);
        let (ok, out) = server.create(&m);
        assert!(ok, "{out}");
    };
    with_init("init-ok", "exit 0");
    with_init("init-bad", "exit 5");
    server.wait_for("pod", "init-ok", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(server.kubectl_ok(&["logs", "init-ok"]), "main ran\n");
    server.wait_for("pod", "init-bad", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    let describe = server.kubectl_ok(&["describe", "pod", "init-bad"]);
    assert!(
        describe.contains("init container init exited with code 5"),
        "{describe}"
    );

    let all = [
        "talker",
        "doomed",
        "unstartable",
        "retried",
        "envy",
        "init-ok",
        "init-bad",
    ];
    for name in all {
        server.kubectl_ok(&["delete", "pod", name]);
    }
    for name in all {
        server.wait_gone("pod", name);
    }
}

/// Ten pods started one after another from a Ready cache (through kube-rs, as a client would):
/// each runs from the cache without pulling, and deleting them leaves nothing behind: no
/// container dirs, no attachment of the disk. (Start latency is measured by `imc-bench pod`.)
#[test]
fn pods_started_one_by_one_from_a_ready_cache_all_hit_it_and_leave_nothing() {
    let (reg, server) = setup();
    let id = ready_cache(&server, "busybox", &[&reg.busybox]);
    let names: Vec<String> = (0..10).map(|i| format!("seq-{i}")).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{Api, PostParams};
        use kube::runtime::wait::await_condition;
        let client = server.client().await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client, "default");
        for name in &names {
            let pod: Pod = serde_json::from_value(pod_manifest(
                name,
                &reg.busybox,
                &[(PINNED, &id)],
                "echo up; exec sleep 3600",
                "Always",
            ))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
            let running = |p: Option<&Pod>| {
                p.and_then(|p| p.status.as_ref())
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref())
                    .is_some_and(|s| s.running.is_some())
            };
            tokio::time::timeout(PATIENCE, await_condition(pods.clone(), name, running))
                .await
                .expect("pod runs")
                .unwrap();
        }
    });
    for name in &names {
        let describe = server.kubectl_ok(&["describe", "pod", name]);
        assert!(
            describe.contains(&format!("Successfully hit image cache {id}")),
            "{name}: {describe}"
        );
        assert!(!describe.contains("Pulling"), "{name}: {describe}");
        assert_eq!(server.kubectl_ok(&["logs", name]), "up\n");
    }
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    assert!(metrics.contains("imc_cache_hits_total 10"), "{metrics}");
    assert_eq!(run_support::loops_backed_by(&disk(&server, &id)), 1);

    server.kubectl_ok(&["delete", "pods", "--all", "--grace-period=1"]);
    for name in &names {
        server.wait_gone("pod", name);
    }
    let pods_dir = server.data_dir().join("pods");
    let deadline = Instant::now() + PATIENCE;
    let left = loop {
        let left: Vec<String> = std::fs::read_dir(&pods_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let attached = run_support::loops_backed_by(&disk(&server, &id));
        if (left.is_empty() && attached == 0) || Instant::now() > deadline {
            break (left, attached);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        left,
        (Vec::<String>::new(), 0),
        "pod dirs and attachments left"
    );
    let mounts = run_support::mounts_under(server.data_dir());
    assert!(mounts.is_empty(), "{mounts:?}");
}

#[test]
fn twenty_pods_from_one_cache_share_one_attachment() {
    let (reg, server) = setup();
    let id = ready_cache(&server, "busybox", &[&reg.busybox]);
    let names: Vec<String> = (0..20).map(|i| format!("many-{i}")).collect();
    // One kubectl create of a JSON stream: the pods arrive at once.
    let docs: Vec<String> = names
        .iter()
        .map(|n| {
            pod_manifest(
                n,
                &reg.busybox,
                &[(PINNED, &id)],
                "echo up; exec sleep 3600",
                "Always",
            )
            .to_string()
        })
        .collect();
    let out = server
        .kubectl_stdin(&["create", "-f", "-"], Some(&docs.join("\n")))
        .expect("kubectl runs");
    let ok = out.status.success();
    let out = String::from_utf8_lossy(&out.stderr);
    assert!(ok, "{out}");
    for n in &names {
        server.wait_for("pod", n, "Running", pod_running);
    }
    let table = server.kubectl_ok(&["get", "pods", "--no-headers"]);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("1/1")
                && l.split_whitespace().nth(2) == Some("Running"))
            .count(),
        20,
        "{table}"
    );
    let disk = disk(&server, &id);
    assert_eq!(
        run_support::loops_backed_by(&disk),
        1,
        "one loop device for all pods"
    );
    for n in &names {
        assert_eq!(server.kubectl_ok(&["logs", n]), "up\n");
    }
    server.kubectl_ok(&["delete", "pods", "--all", "--grace-period=1"]);
    for n in &names {
        server.wait_gone("pod", n);
    }
    assert_eq!(
        run_support::loops_backed_by(&disk),
        0,
        "the disk is detached after its last pod"
    );
}

#[test]
fn deletion_stops_containers_with_term_then_kill_and_cleans_up() {
    let (reg, server) = setup();
    let polite = pod_manifest(
        "polite",
        &reg.busybox,
        &[],
        "trap 'exit 0' TERM; echo ready; while true; do sleep 1; done",
        "Always",
    );
    // sleep as pid 1 has no TERM handler, so the signal is ignored until SIGKILL.
    let stubborn = pod_manifest("stubborn", &reg.busybox, &[], "exec sleep 3600", "Always");
    for m in [&polite, &stubborn] {
        let (ok, out) = server.create(m);
        assert!(ok, "{out}");
    }
    for n in ["polite", "stubborn"] {
        server.wait_for("pod", n, "Running", pod_running);
    }
    let uids: Vec<String> = ["polite", "stubborn"]
        .iter()
        .map(|n| {
            server.get_json("pod", n).unwrap()["metadata"]["uid"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    server.kubectl_ok(&["delete", "pod", "polite", "stubborn"]);
    for n in ["polite", "stubborn"] {
        server.wait_gone("pod", n);
    }
    // Each was told to stop (the Killing event), and nothing of them is left on the host.
    let events: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "events", "-o", "json"])).unwrap();
    for (name, uid) in ["polite", "stubborn"].iter().zip(&uids) {
        assert!(
            events["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["reason"] == "Killing"
                    && e["involvedObject"]["name"] == *name
                    && e["message"] == "Stopping container app"),
            "no Killing event for {name}: {events:#}"
        );
        let dir = server.data_dir().join("pods").join(uid);
        let deadline = Instant::now() + PATIENCE;
        while dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(run_support::mounts_under(server.data_dir()).is_empty());
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(server.data_dir().join("run/runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&runc.stdout).trim(),
        "",
        "runc containers left"
    );
}

#[test]
fn image_errors_show_in_status_and_events() {
    let (reg, server) = setup();
    let missing = format!("{}/imc/nope:1", reg.registry.host());
    let (ok, out) = server.create(pod_manifest("nope", &missing, &[], "true", "Never"));
    assert!(ok, "{out}");
    let mut never = pod_manifest("never", &reg.partial, &[], "true", "Never");
    never["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    let (ok, out) = server.create(&never);
    assert!(ok, "{out}");

    let waiting = |p: &Value, reason: &str| {
        p["status"]["phase"] == "Pending"
            && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == reason
    };
    server.wait_for("pod", "nope", "ErrImagePull", |p| {
        waiting(p, "ErrImagePull")
    });
    server.wait_for("pod", "never", "ErrImageNeverPull", |p| {
        waiting(p, "ErrImageNeverPull")
    });
    let describe = server.kubectl_ok(&["describe", "pod", "nope"]);
    assert!(
        describe.contains(&format!("failed to pull image {missing:?}")),
        "{describe}"
    );
    let describe = server.kubectl_ok(&["describe", "pod", "never"]);
    assert!(
        describe.contains("is not present with pull policy of Never"),
        "{describe}"
    );
    assert!(!describe.contains("Pulling"), "{describe}");
    for n in ["nope", "never"] {
        server.kubectl_ok(&["delete", "pod", n]);
        server.wait_gone("pod", n);
    }
}

#[test]
fn pods_run_again_after_the_server_is_killed_and_deleting_them_cleans_up() {
    let (reg, mut server) = setup();
    let id = ready_cache(&server, "busybox", &[&reg.busybox]);
    let (ok, out) = server.create(pod_manifest(
        "survivor",
        &reg.busybox,
        &[(PINNED, &id)],
        "cat /proc/sys/kernel/random/uuid; exec sleep 3600",
        "Always",
    ));
    assert!(ok, "{out}");
    let before = server.wait_for("pod", "survivor", "Running", pod_running);
    let container_id = |p: &Value| p["status"]["containerStatuses"][0]["containerID"].clone();

    // Each run of the container prints a fresh random id.
    let first_run = server.kubectl_ok(&["logs", "survivor"]);
    assert_eq!(first_run.trim().len(), 36, "{first_run:?}");

    server.restart().expect("server restarts");
    // Right after the start, admission waits for its first list of caches rather than calling
    // the cache unknown.
    let (ok, out) = server.create(pod_manifest(
        "newcomer",
        &reg.busybox,
        &[(PINNED, &id)],
        "true",
        "Never",
    ));
    assert!(ok, "{out}");
    // The node cleans up the dead process's container and runs the pod again.
    let deadline = Instant::now() + PATIENCE;
    let second_run = loop {
        let out = server.kubectl(&["logs", "survivor"]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.trim().len() == 36 && text != first_run {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the pod never ran again: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(second_run, first_run);
    let after = server.wait_for("pod", "survivor", "Running", pod_running);
    assert_eq!(container_id(&after), container_id(&before));
    let disk = disk(&server, &id);
    assert_eq!(run_support::loops_backed_by(&disk), 1);

    server.wait_for("pod", "newcomer", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    server.kubectl_ok(&["delete", "pod", "survivor", "newcomer", "--grace-period=1"]);
    server.wait_gone("pod", "survivor");
    server.wait_gone("pod", "newcomer");
    let dir = server
        .data_dir()
        .join("pods")
        .join(after["metadata"]["uid"].as_str().unwrap());
    let deadline = Instant::now() + PATIENCE;
    while (dir.exists() || run_support::loops_backed_by(&disk) > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(
        run_support::loops_backed_by(&disk),
        0,
        "cache disk still attached"
    );
}
