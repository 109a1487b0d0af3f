//! `kubectl port-forward` end to end (issue 9 item 4): a real `imc server`, real runc, real
//! kubectl 1.32, which tunnels SPDY through a WebSocket (`SPDY/3.1+portforward.k8s.io`). The
//! connections reach busybox's httpd on the pod's localhost.

mod run_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{eventually, pod_running};
use run_support::{Registry, registry_with_images};
use serde_json::json;

const NODE: &str = "imc-forward-node";

fn start_server(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

/// Runs `kubectl port-forward pod/NAME :REMOTE` and returns it with the local port it
/// chose (from its `Forwarding from 127.0.0.1:PORT -> REMOTE` line).
fn forward(server: &TestServer, pod: &str, remote: u16) -> (Child, u16) {
    let mut child = server
        .kubectl_command(&["port-forward", &format!("pod/{pod}"), &format!(":{remote}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("kubectl port-forward prints where it listens")
            .unwrap();
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split(' ').next().unwrap().parse::<u16>().unwrap();
        }
    };
    // The rest of its output is read so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}

/// An HTTP/1.0 GET of `path` through the forwarded port: the whole answer.
fn get(port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn port_forward_reaches_the_pods_localhost() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    // httpd listens on the pod's loopback only: reachable through port-forward, nothing else.
    let script = "mkdir -p /www && echo hello from the pod > /www/index.html && \
                  head -c 300000 /dev/zero | tr '\\0' x > /www/big.txt; \
                  exec httpd -f -p 127.0.0.1:8080 -h /www";
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "web", "image": reg.busybox,
                                 "command": ["sh", "-c", script]}]}}),
    );
    server.wait_for("pod", "web", "Running", pod_running);
    // httpd serves once the files are written.
    eventually("httpd serving in the pod", || {
        let out = server
            .kubectl(&[
                "exec",
                "web",
                "--",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/index.html",
            ])
            .ok()?;
        out.status.success().then_some(())
    })
    .expect("httpd serves in the pod");
    let (mut kubectl, port) = forward(&server, "web", 8080);

    let answer = get(port, "/index.html");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello from the pod\n"), "{answer}");

    // Several connections at once, each with a large answer.
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| get(port, "/big.txt"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in answers {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        assert_eq!(body.len(), 300000, "{}", &answer[..answer.len().min(200)]);
        assert!(body.bytes().all(|b| b == b'x'));
    }
    kubectl.kill().unwrap();
    kubectl.wait().unwrap();

    // A port nothing listens on: the connection ends, and kubectl reports why from the
    // stream's error channel.
    let (mut kubectl, port) = forward(&server, "web", 9999);
    let answer = get(port, "/");
    assert_eq!(answer, "", "nothing answers on port 9999");
    let _ = kubectl.kill();
    let mut stderr = String::new();
    kubectl
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    kubectl.wait().unwrap();
    assert!(
        stderr.contains("error forwarding port 9999 to pod web, uid ")
            && stderr
                .contains("failed to connect to localhost:9999 inside the pod's network namespace"),
        "{stderr}"
    );
}
