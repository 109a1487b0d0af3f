//! Plain HTTP for tests of pod and Service traffic: a pod manifest serving a fixed text with
//! busybox `httpd`, `GET /` over a raw TCP connection, and the host's iptables rules. Only for
//! addresses of the test server's own pod network, its Service rules, and loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kubectl::PATIENCE;

/// The port [`http_pod`] serves on.
pub const HTTP_POD_PORT: u16 = 8080;

/// A pod named `name` serving `text` at `GET /` on port 8080 (busybox `httpd`, from `image`
/// which must hold busybox), labelled `app=<app>`.
pub fn http_pod(image: &str, name: &str, app: &str, text: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "web", "image": image,
                "command": ["sh", "-c", format!(
                    "mkdir -p /www && echo {text} > /www/index.html && httpd -f -p {HTTP_POD_PORT} -h /www")],
                "ports": [{"containerPort": HTTP_POD_PORT}]}]}})
}

/// `GET /` of `addr` once, with a plain HTTP/1.0 request: the body.
pub fn http_get_once(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.take(1 << 20).read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.trim().to_owned()),
        None => Err(std::io::Error::other(format!(
            "not an HTTP answer: {out:?}"
        ))),
    }
}

/// `GET /` of `addr`, retried until it answers (panics after [`PATIENCE`]): the body.
pub fn http_get(addr: SocketAddr) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match http_get_once(addr) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("GET http://{addr}/: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The host's rules of iptables `table` (`iptables-save -t TABLE`), one per line.
pub fn iptables_rules(table: &str) -> Vec<String> {
    let out = std::process::Command::new("iptables-save")
        .args(["-t", table])
        .output()
        .expect("iptables-save runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (up to [`PATIENCE`]) until some rule of `table` contains every one of `words`, or,
/// with `present` false, until none does; panics otherwise.
pub fn wait_for_rule(table: &str, words: &[&str], present: bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = iptables_rules(table)
            .iter()
            .any(|r| words.iter().all(|w| r.contains(w)));
        if found == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a {table} rule with {words:?} {}",
            if present { "never came" } else { "stayed" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
