//! Pod networking through the standard CNI plugins (issue 9 item 3): every pod gets an address
//! from the server's pod range on its own bridge, pods reach each other and the host reaches
//! them, `hostPort` works, the hostname is the pod's name and `/etc/hosts` and
//! `/etc/resolv.conf` are the kubelet's. Only addresses on the test server's own bridge (a
//! private /24 per test server) and loopback are used. Real `imc server`, kubectl, runc, CNI.

mod run_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{PATIENCE, pod_running};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

fn start(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        "imc-network-node".to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

/// A pod serving `text` over HTTP on port 8080 (busybox httpd), with extra spec fields.
fn web_pod(reg: &Registry, name: &str, text: &str, extra: Value) -> Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "web", "image": reg.busybox,
            "command": ["sh", "-c", format!("mkdir -p /www && echo {text} > /www/index.html && httpd -f -p 8080 -h /www")],
            "ports": [{"containerPort": 8080}]}]
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

/// `GET /` of `host:port` with a plain HTTP/1.0 request; the body, once the server answers.
fn http_get(host: &str, port: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(
                &format!("{host}:{port}").parse().unwrap(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(answer) if answer.contains("\r\n\r\n") => {
                return answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("GET http://{host}:{port}/: {other:?}"),
        }
    }
}

fn pod_ip(pod: &Value) -> Ipv4Addr {
    pod["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .parse()
        .expect("an IPv4 address")
}

/// Whether `ip` is inside `cidr` (`a.b.c.d/n`).
fn inside(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let (net, bits): (Ipv4Addr, u32) = (net.parse().unwrap(), bits.parse().unwrap());
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(net) & mask
}

#[test]
fn pods_get_addresses_reach_each_other_and_the_host_reaches_them() {
    let reg = registry_with_images();
    let server = start(&reg);
    let (cidr, _) = server.pod_network();
    let cidr = cidr.to_owned();
    server.create_ok(web_pod(&reg, "alpha", "from-alpha", json!({})));
    server.create_ok(web_pod(&reg, "beta", "from-beta", json!({})));
    let alpha = server.wait_for("pod", "alpha", "Running", pod_running);
    let beta = server.wait_for("pod", "beta", "Running", pod_running);
    let (a, b) = (pod_ip(&alpha), pod_ip(&beta));
    assert_ne!(a, b);
    assert!(
        inside(a, &cidr) && inside(b, &cidr),
        "{a} {b} not in {cidr}"
    );
    assert_eq!(alpha["status"]["podIPs"], json!([{"ip": a.to_string()}]));

    // The host reaches a pod's address on the bridge.
    assert_eq!(http_get(&a.to_string(), 8080).trim(), "from-alpha");

    // A pod reaches another pod's address; its env and files know its own.
    server.create_ok(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": reg.busybox,
            "env": [{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "command": ["sh", "-c", format!(
                "wget -q -O- http://{b}:8080/; echo ip=$MY_IP; echo host=$(hostname); cat /etc/hosts; echo ---; cat /etc/resolv.conf")]}]}}));
    let client = server.wait_for("pod", "client", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let c = pod_ip(&client);
    let log = server.kubectl_ok(&["logs", "client"]);
    assert!(log.starts_with("from-beta\n"), "{log}");
    assert!(log.contains(&format!("ip={c}\n")), "{log}");
    assert!(log.contains("host=client\n"), "{log}");
    assert!(log.contains("# Kubernetes-managed hosts file."), "{log}");
    assert!(log.contains(&format!("{c}\tclient\n")), "{log}");
    let resolv = log.split("---\n").nth(1).unwrap_or("");
    // ClusterFirst: the cluster DNS on the pod network's gateway (e2e_dns tests its answers).
    let gateway = {
        let net: Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
        Ipv4Addr::from(u32::from(net) + 1)
    };
    assert!(
        resolv.starts_with(&format!(
            "nameserver {gateway}\nsearch default.svc.cluster.local svc.cluster.local cluster.local"
        )),
        "{resolv}"
    );
    assert!(resolv.ends_with("options ndots:5\n"), "{resolv}");
    assert!(
        !server
            .events_about("client")
            .iter()
            .any(|e| e["reason"] == "MissingClusterDNS"),
        "the cluster DNS is configured"
    );
}

#[test]
fn host_port_forwards_to_the_pod_and_deletion_frees_the_address() {
    let reg = registry_with_images();
    let server = start(&reg);
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    server.kubectl_ok(&["create", "namespace", "ops"]);
    server.kubectl_ok(&[
        "label",
        "namespace",
        "ops",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    let mut pod = web_pod(&reg, "exposed", "through-host-port", json!({}));
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080, "hostPort": host_port}]);
    let (ok, out) =
        server.kubectl_args_stdin(&["create", "-n", "ops", "-f", "-"], &pod.to_string());
    assert!(ok, "{out}");
    let running = server.wait_for_in("pod", "exposed", &["-n", "ops"], "Running", pod_running);
    let ip = pod_ip(&running);
    assert_eq!(http_get("127.0.0.1", host_port).trim(), "through-host-port");

    server.kubectl_ok(&["delete", "pod", "-n", "ops", "exposed"]);
    let deadline = Instant::now() + PATIENCE;
    while server
        .get_json_in("pod", "exposed", &["-n", "ops"])
        .is_some()
    {
        assert!(Instant::now() < deadline, "the pod was never removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its address went back to the pool (host-local keeps one file per lease).
    let lease = server.data_dir().join("cni/ipam/imc").join(ip.to_string());
    assert!(!lease.exists(), "{} is still leased", lease.display());
    // And the host port forwards nothing any more.
    assert!(
        TcpStream::connect_timeout(
            &format!("127.0.0.1:{host_port}").parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_err(),
        "the host port still answers"
    );
}

/// Pods go out through the host: a server in a network that has no route to the pod range sees
/// the host's address (imc's one masquerade rule set for the range), and a graceful stop removes
/// the rules.
#[test]
fn pods_reach_the_outside_through_the_host_and_a_stop_removes_the_masquerade() {
    let reg = registry_with_images();
    let mut server = start(&reg);
    let outside = imc_testkit::outside::OutsideNetwork::start().expect("an outside network");
    let bridge = server.pod_network().1.to_owned();
    let chain = format!("IMC-MASQ-{bridge}");
    let nat_rules = || {
        let out = std::process::Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .expect("iptables-save");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&chain))
            .count()
    };
    assert!(nat_rules() > 0, "no {chain} rules while the server runs");
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "out"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": reg.busybox,
            "command": ["/bin/busybox", "timeout", "10", "/bin/busybox", "wget", "-q", "-O-",
                outside.whoami_url()]}]}}),
    );
    server.wait_for("pod", "out", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"
    });
    let log = server.kubectl_ok(&["logs", "out"]);
    assert_eq!(log.trim(), outside.host_ip, "the outside saw {log:?}");
    assert!(server.stop().expect("stop"), "the server stopped cleanly");
    assert_eq!(nat_rules(), 0, "{chain} left behind by a graceful stop");
}
