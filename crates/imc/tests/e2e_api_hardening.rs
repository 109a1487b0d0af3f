//! A real `imc server --api-only` against hostile clients, as issue 10 lists them: thousands of
//! idle sockets, a nesting bomb, a copy-patch bomb, resourceVersions out of range, bodies in
//! formats it does not read, too many requests at once. Each answer is kube-apiserver's, nothing
//! is stored, the log stays small and the server starts again on the same data.

use std::io::Read;
use std::net::TcpStream;

use imc_testkit::apiserver::{KUBECTL, TestServer};
use imc_testkit::https::{RawAnswer, RawRequest};
use imc_testkit::kubectl::PATIENCE;
use serde_json::{Value, json};

fn server_with(args: &[&str]) -> TestServer {
    assert!(
        std::path::Path::new(KUBECTL).exists(),
        "{KUBECTL} is required for these tests"
    );
    let mut all = vec!["--api-only".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &all).expect("start imc server")
}

fn admin(s: &TestServer, method: &'static str, path: &'static str) -> RawRequest<'static> {
    RawRequest::admin(s, method, path).expect("admin token")
}

fn send(s: &TestServer, req: &RawRequest<'_>) -> RawAnswer {
    s.raw(req)
        .unwrap_or_else(|e| panic!("{} {}: {e:#}", req.method, req.path))
}

/// `{"a": {"a": ... {"a": "leaf"}}}` with `levels` objects.
fn nested(levels: usize) -> Value {
    let mut v = json!("leaf");
    for _ in 0..levels {
        v = json!({ "a": v });
    }
    v
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}})
}

/// The stored ConfigMap `name` in `default`, via kubectl.
fn stored(s: &TestServer, name: &str) -> Option<Value> {
    s.get_json_in("configmap", name, &["-n", "default"])
}

/// Opens `n` TCP connections that never start a TLS handshake.
fn idle_sockets(s: &TestServer, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            TcpStream::connect(s.addr()).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect()
}

/// kubectl with a one-second limit on each of its requests (`--request-timeout=1s`).
fn kubectl_within_a_second(s: &TestServer, args: &[&str]) -> String {
    let mut all = vec!["--request-timeout=1s"];
    all.extend_from_slice(args);
    s.kubectl_ok(&all)
}

#[test]
fn thousands_of_idle_connections_do_not_lock_kubectl_out_nor_fill_the_log() {
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = log_dir.path().join("server.log");
    let s =
        TestServer::start_logging_to(env!("CARGO_BIN_EXE_imc"), &["--api-only".to_owned()], &log)
            .expect("start imc server");
    // Discovery cached before the flood, as an everyday kubectl has it.
    s.kubectl_ok(&["get", "ns"]);
    let sockets = idle_sockets(&s, 2000);
    for _ in 0..3 {
        let out = kubectl_within_a_second(&s, &["get", "ns", "-o", "name"]);
        assert!(out.contains("namespace/default"), "{out}");
    }
    let out = kubectl_within_a_second(&s, &["version", "-o", "json"]);
    assert!(out.contains("serverVersion"), "{out}");
    drop(sockets);
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(size < 1 << 20, "the server log grew to {size} bytes");
}

#[test]
fn past_the_connection_cap_unauthenticated_sockets_make_room_for_kubectl() {
    let s = server_with(&["--max-connections", "300"]);
    s.kubectl_ok(&["get", "ns"]);
    let _sockets = idle_sockets(&s, 1000);
    let out = kubectl_within_a_second(&s, &["get", "ns", "-o", "name"]);
    assert!(out.contains("namespace/default"), "{out}");
}

#[test]
fn a_socket_that_never_shakes_hands_is_closed() {
    let s = server_with(&["--tls-handshake-timeout", "1s"]);
    let mut socket = TcpStream::connect(s.addr()).expect("connect");
    socket
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    match socket.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the server should close a socket without a handshake: {other:?}"),
    }
}

#[test]
fn the_open_files_limit_is_raised_to_its_maximum() {
    let s = server_with(&[]);
    let pid = s.pid().expect("server pid");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    assert_eq!(fields[3], fields[4], "{line}");
}

#[test]
fn the_nesting_bomb_is_refused_with_nothing_stored_and_a_restart_is_clean() {
    let mut s = server_with(&[]);
    // A body nested deeper than the limit: 422 before anything reads it.
    let mut deep = config_map("deep");
    deep["x"] = nested(150);
    let answer = send(
        &s,
        &admin(&s, "POST", "/api/v1/namespaces/default/configmaps")
            .with_body("application/json", deep.to_string()),
    );
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(stored(&s, "deep").is_none());

    // An object within the limit, then a JSON patch whose every part is within it but whose
    // result is nested 120 deep.
    s.create_ok(config_map("bomb").to_string());
    let before = stored(&s, "bomb").expect("bomb stored");
    let path = format!("/metadata/annotations/x{}", "/a".repeat(59));
    let patch = json!([
        {"op": "add", "path": "/metadata/annotations", "value": {}},
        {"op": "add", "path": "/metadata/annotations/x", "value": nested(60)},
        {"op": "add", "path": path, "value": nested(60)},
    ]);
    let answer = send(
        &s,
        &admin(&s, "PATCH", "/api/v1/namespaces/default/configmaps/bomb")
            .with_body("application/json-patch+json", patch.to_string()),
    );
    assert_eq!(answer.status, 422, "{}", answer.body);
    let after = stored(&s, "bomb").expect("bomb still there");
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "the refused patch changed the object"
    );

    // Watches from the start still answer, and the next start reads everything back.
    let rv = before["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion");
    let answer = send(
        &s,
        &RawRequest {
            path: &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}"),
            ..admin(&s, "GET", "")
        },
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    s.restart().expect("restart");
    let names = s.kubectl_ok(&["get", "configmaps", "-n", "default", "-o", "name"]);
    assert!(names.contains("configmap/bomb"), "{names}");
}

#[test]
fn the_copy_patch_bomb_is_refused_and_memory_stays_low() {
    let mut s = server_with(&[]);
    s.create_ok(config_map("copies").to_string());
    let before = stored(&s, "copies").expect("stored");
    // Each copy doubles /metadata/annotations: 64 bytes * 2^25 = 2 GiB if nothing stopped it.
    let mut ops =
        vec![json!({"op": "add", "path": "/metadata/annotations", "value": {"s": "x".repeat(64)}})];
    for i in 0..25 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}")}));
    }
    s.reset_peak_rss().expect("reset peak rss");
    let answer = send(
        &s,
        &admin(&s, "PATCH", "/api/v1/namespaces/default/configmaps/copies")
            .with_body("application/json-patch+json", Value::from(ops).to_string()),
    );
    assert!(
        answer.status == 413 || answer.status == 422,
        "{} {}",
        answer.status,
        answer.body
    );
    let (_, peak) = s.rss_kib().expect("rss");
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
    let after = stored(&s, "copies").expect("still there");
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    s.restart().expect("restart");
    assert!(stored(&s, "copies").is_some());
}

#[test]
fn resource_versions_are_parsed_as_kube_apiserver_parses_them() {
    let s = server_with(&[]);
    // (query, status, text in the answer)
    let cases = [
        ("resourceVersion=18446744073709551616", 400, "out of range"),
        ("resourceVersion=abc", 400, "invalid syntax"),
        ("resourceVersion=-1", 400, "invalid syntax"),
        (
            "watch=true&resourceVersion=18446744073709551615",
            504,
            "Too large resource version",
        ),
        (
            "resourceVersion=18446744073709551615",
            504,
            "Too large resource version",
        ),
    ];
    for (query, status, text) in cases {
        let path = format!("/api/v1/namespaces?{query}");
        let answer = send(
            &s,
            &RawRequest {
                path: &path,
                ..admin(&s, "GET", "")
            },
        );
        assert_eq!(answer.status, status, "{query}: {}", answer.body);
        assert!(answer.body.contains(text), "{query}: {}", answer.body);
        assert_eq!(answer.json()["kind"], "Status", "{query}: {}", answer.body);
    }
}

#[test]
fn bodies_are_read_by_their_content_type_and_bearer_in_any_case() {
    let s = server_with(&[]);
    let cm = config_map("typed");
    // (content type, status)
    let cases = [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/merge-patch+json", 415),
        ("application/yaml", 201),
    ];
    for (i, (ct, status)) in cases.into_iter().enumerate() {
        let mut body = cm.clone();
        body["metadata"]["name"] = json!(format!("typed-{i}"));
        let answer = send(
            &s,
            &admin(&s, "POST", "/api/v1/namespaces/default/configmaps")
                .with_body(ct, body.to_string()),
        );
        assert_eq!(answer.status, status, "{ct}: {}", answer.body);
    }
    // A PATCH must say which kind of patch it is.
    let answer = send(
        &s,
        &admin(&s, "PATCH", "/api/v1/namespaces/default/configmaps/typed-3")
            .with_body("application/json", r#"{"data":{"k":"w"}}"#),
    );
    assert_eq!(answer.status, 415, "{}", answer.body);
    // The scheme of the Authorization header is case-insensitive (RFC 7235).
    let token = s.token().expect("token");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let answer = send(
            &s,
            &RawRequest {
                method: "GET",
                path: "/api/v1/namespaces",
                authorization: Some(format!("{scheme} {token}")),
                ..Default::default()
            },
        );
        assert_eq!(answer.status, 200, "{scheme}: {}", answer.body);
    }
    let answer = send(
        &s,
        &RawRequest {
            method: "GET",
            path: "/api/v1/namespaces",
            authorization: Some(format!("Basic {token}")),
            ..Default::default()
        },
    );
    assert_eq!(answer.status, 401, "{}", answer.body);
}

#[test]
fn too_many_reads_at_once_are_answered_429_and_watches_count_apart() {
    let s = server_with(&["--max-requests-inflight", "1"]);
    // Watches hold no read slot: three of them open, a list still answers.
    let mut watches: Vec<_> = (0..3)
        .map(|_| {
            s.kubectl_command(&["get", "configmaps", "-A", "--watch"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("kubectl get --watch")
        })
        .collect();
    // Each kubectl lists before it watches, and a list holds the slot for a moment: a read
    // may be refused while they start. Once they watch, reads answer again; if watches held
    // slots, three of them would keep every read refused.
    let mut answer = send(&s, &admin(&s, "GET", "/api/v1/namespaces"));
    for _ in 0..50 {
        if answer.status != 429 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        answer = send(&s, &admin(&s, "GET", "/api/v1/namespaces"));
    }
    assert_eq!(answer.status, 200, "{}", answer.body);

    // A read waiting for a resourceVersion the store has not reached holds the one slot; a
    // second read meanwhile is refused with Retry-After. Tried again if the slow read ended
    // before the second arrived.
    let mut refused = None;
    for _ in 0..10 {
        let slow = std::thread::scope(|scope| {
            let slow = scope.spawn(|| {
                send(
                    &s,
                    &RawRequest {
                        path: "/api/v1/namespaces?resourceVersion=999999999",
                        ..admin(&s, "GET", "")
                    },
                )
            });
            while !slow.is_finished() {
                let answer = send(&s, &admin(&s, "GET", "/api/v1/namespaces"));
                if answer.status == 429 {
                    refused = Some(answer);
                    break;
                }
            }
            slow.join().expect("slow read")
        });
        if slow.status == 429 {
            // The slow read itself came while another read held the slot: try again.
            refused = None;
            continue;
        }
        assert_eq!(slow.status, 504, "{}", slow.body);
        if refused.is_some() {
            break;
        }
    }
    let refused = refused.expect("a second read while the slot was held is refused");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert_eq!(
        refused.json()["reason"],
        "TooManyRequests",
        "{}",
        refused.body
    );
    for w in &mut watches {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[test]
fn a_request_timeout_ends_a_slow_request_with_504() {
    let s = server_with(&[]);
    let answer = send(
        &s,
        &RawRequest {
            path: "/api/v1/namespaces?resourceVersion=999999999&timeout=1s",
            ..admin(&s, "GET", "")
        },
    );
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.json()["reason"], "Timeout", "{}", answer.body);
    assert!(
        !answer.body.contains("Too large resource version"),
        "the 1s limit, not the 3s wait for the version, should end it: {}",
        answer.body
    );
    let answer = send(
        &s,
        &RawRequest {
            path: "/api/v1/namespaces?timeout=forever",
            ..admin(&s, "GET", "")
        },
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
}

#[test]
fn a_stored_object_that_cannot_be_read_back_does_not_stop_the_server() {
    let mut s = server_with(&[]);
    s.create_ok(config_map("fine").to_string());
    s.stop().expect("stop");
    let db = s.data_dir().join("state.db");
    // JSON nested deeper than any parser of the server reads back (as a store written by an
    // older server, or damaged, may hold).
    let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!(
            "INSERT INTO objects (res, ns, name, rv, json) SELECT res, ns, 'broken', rv + 1, '{too_deep}' FROM objects WHERE name = 'fine';"
        ))
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "{}",
        imc_testkit::kubectl::output_text(&out)
    );
    s.restart()
        .expect("the server starts despite the unreadable row");
    let names = s.kubectl_ok(&["get", "configmaps", "-n", "default", "-o", "name"]);
    assert!(names.contains("configmap/fine"), "{names}");
    assert!(!names.contains("configmap/broken"), "{names}");
}

#[test]
fn a_connection_left_idle_after_its_request_is_closed() {
    use std::io::Write;
    let s = server_with(&["--idle-connection-timeout", "1s"]);
    let ca = s.data_dir().join("pki/ca.crt");
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-CAfile"])
        .arg(&ca)
        .args(["-connect", &s.addr().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let token = s.token().expect("token");
    let mut stdin = client.stdin.take().expect("stdin");
    write!(
        stdin,
        "GET /version HTTP/1.1\r\nHost: imc\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("send the request");
    stdin.flush().expect("flush");
    // stdin stays open: only the server can end the connection.
    let deadline = std::time::Instant::now() + PATIENCE;
    while client.try_wait().expect("s_client state").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = client.kill();
            panic!("the server kept an idle connection open");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut out = String::new();
    client
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read the answer");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    drop(stdin);
}

#[test]
fn out_of_file_descriptors_the_server_says_so_rarely_and_recovers() {
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = log_dir.path().join("server.log");
    let s = TestServer::start_logging_to(
        env!("CARGO_BIN_EXE_imc"),
        &[
            "--api-only".to_owned(),
            "--tls-handshake-timeout".to_owned(),
            "2s".to_owned(),
        ],
        &log,
    )
    .expect("start imc server");
    s.kubectl_ok(&["get", "ns"]);
    // As if the limit had been low from the start: accepting soon fails with EMFILE.
    let pid = s.pid().expect("pid").to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=128:128"])
        .output()
        .expect("prlimit");
    assert!(
        out.status.success(),
        "{}",
        imc_testkit::kubectl::output_text(&out)
    );
    let sockets = idle_sockets(&s, 400);
    // Meanwhile requests fail or wait; the server must not spin or flood its log.
    let _ = s.kubectl(&["--request-timeout=5s", "get", "ns"]);
    drop(sockets);
    // Once the flood's handshakes time out (2 s) their descriptors are free again.
    let names = s.kubectl_ok(&["get", "ns", "-o", "name"]);
    assert!(names.contains("namespace/default"), "{names}");
    let written = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        written.len() < 1 << 20,
        "the log grew to {} bytes",
        written.len()
    );
    assert!(
        written.contains("accepting connections failed"),
        "the descriptor shortage was never reported:\n{written}"
    );
}

#[test]
fn a_yaml_alias_bomb_is_refused_and_memory_stays_low() {
    let s = server_with(&[]);
    // 1 MiB of YAML whose aliases would expand it to 10 GB.
    let item = "x".repeat(100);
    let mut doc = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: laughs, namespace: default}\nx: &a [",
    );
    doc.push_str(&vec![item.as_str(); 10_000].join(", "));
    doc.push_str("]\ny: [");
    doc.push_str(&vec!["*a"; 10_000].join(", "));
    doc.push_str("]\n");
    s.reset_peak_rss().expect("reset peak rss");
    let answer = send(
        &s,
        &admin(&s, "POST", "/api/v1/namespaces/default/configmaps")
            .with_body("application/yaml", doc),
    );
    assert_eq!(answer.status, 413, "{}", answer.body);
    let (_, peak) = s.rss_kib().expect("rss");
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
    assert!(stored(&s, "laughs").is_none());
}
