//! The Service data path (issue 11 item 2): traffic to a ClusterIP:port and to a NodePort
//! reaches the ready backends an EndpointSlice lists, spread over them, with ClientIP session
//! affinity honoured; a Service without a ready endpoint refuses at once; a removed Service
//! leaves no rule, and a graceful stop no chain. Services carry an explicit `clusterIP` and
//! `nodePort` and the slices are written by hand, as any client may (the data path reads them
//! as kube-proxy does, whoever wrote them). Real `imc server`, kubectl, runc, CNI and iptables.
//!
//! Addresses used: pods of the test server's own bridge, its gateway (a host address),
//! 127.0.0.1, and ClusterIPs picked per test server. A ClusterIP is only ever connected to
//! once its rule (DNAT or REJECT) is in place, so no packet for it leaves the host.

mod run_support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_running;
use imc_testkit::web::{
    HTTP_POD_PORT, http_get, http_get_once, http_pod, iptables_rules, wait_for_rule,
};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

fn start(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        "imc-services-node".to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

/// Addresses private to this test server: (its pod gateway, two ClusterIPs, a NodePort), from
/// its pod range `10.A.B.0/24` (unique among the servers running at once).
fn addresses(server: &TestServer) -> (Ipv4Addr, Ipv4Addr, Ipv4Addr, u16) {
    let (cidr, _) = server.pod_network();
    let net: Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
    let [_, a, b, _] = net.octets();
    let key = u16::from(a - 100) * 256 + u16::from(b);
    (
        Ipv4Addr::new(10, a, b, 1),
        Ipv4Addr::new(10, 96, b, a),
        Ipv4Addr::new(10, 97, b, a),
        30000 + key % 2700,
    )
}

fn pod_ip(pod: &Value) -> String {
    pod["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .to_owned()
}

/// A hand-written EndpointSlice of Service `service`: port `http` 8080 on `endpoints`
/// (address, ready).
fn slice(service: &str, endpoints: &[(&str, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"),
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": HTTP_POD_PORT, "protocol": "TCP"}],
        "endpoints": eps})
}

/// The bodies of `n` requests to `addr` from the host.
fn bodies_from_host(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| http_get_once(addr).unwrap_or_else(|e| panic!("GET {addr}: {e}")))
        .collect()
}

/// The bodies of `n` requests to `url` from a new pod `name` (busybox wget).
fn bodies_from_pod(
    server: &TestServer,
    reg: &Registry,
    name: &str,
    url: &str,
    n: usize,
) -> Vec<String> {
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": reg.busybox, "command": ["sh", "-c", format!(
                "for i in $(seq {n}); do wget -q -O- {url} || echo FAILED; done")]}]}}),
    );
    let done = server.wait_for("pod", name, "Succeeded", |p| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    server
        .kubectl_ok(&["logs", name])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn cluster_ips_and_node_ports_reach_ready_backends_and_stop_removes_every_rule() {
    let reg = registry_with_images();
    let mut server = start(&reg);
    let (gateway, web_ip, empty_ip, node_port) = addresses(&server);
    let bridge = server.pod_network().1.to_owned();
    server.create_ok(http_pod(&reg.busybox, "web-a", "web", "from-a"));
    server.create_ok(http_pod(&reg.busybox, "web-b", "web", "from-b"));
    let a = pod_ip(&server.wait_for("pod", "web-a", "Running", pod_running));
    let b = pod_ip(&server.wait_for("pod", "web-b", "Running", pod_running));
    // Both answer on their own before they go behind the Service.
    for ip in [&a, &b] {
        http_get(SocketAddr::new(ip.parse().unwrap(), HTTP_POD_PORT));
    }

    server.create_ok(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "clusterIP": web_ip.to_string(), "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": HTTP_POD_PORT, "nodePort": node_port}]}}));
    server.create_ok(slice("web", &[(&a, true), (&b, true)]));
    for ip in [&a, &b] {
        wait_for_rule(
            "nat",
            &[&format!("--to-destination {ip}:{HTTP_POD_PORT}")],
            true,
        );
    }
    wait_for_rule("nat", &[&format!("-d {web_ip}/32"), "--dport 80"], true);

    // From the host: several requests reach both backends.
    let seen: BTreeSet<String> = bodies_from_host(SocketAddr::from((web_ip, 80)), 30)
        .into_iter()
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from(["from-a".to_owned(), "from-b".to_owned()])
    );
    // From a third pod, too (pod → ClusterIP → pod on the same bridge).
    let seen: BTreeSet<String> =
        bodies_from_pod(&server, &reg, "client", &format!("http://{web_ip}/"), 30)
            .into_iter()
            .collect();
    assert_eq!(
        seen,
        BTreeSet::from(["from-a".to_owned(), "from-b".to_owned()])
    );

    // A NodePort answers on 127.0.0.1 and on a host address (the pod network's gateway).
    for host in [Ipv4Addr::LOCALHOST, gateway] {
        let body = http_get(SocketAddr::from((host, node_port)));
        assert!(
            body == "from-a" || body == "from-b",
            "{host}:{node_port}: {body}"
        );
    }

    // ClientIP affinity: every request of one client reaches the same backend.
    server.kubectl_ok(&["patch", "service", "web", "--type=merge", "-p",
        r#"{"spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}}"#]);
    wait_for_rule("nat", &["--rcheck --seconds 600"], true);
    let from_host: BTreeSet<String> = bodies_from_host(SocketAddr::from((web_ip, 80)), 20)
        .into_iter()
        .collect();
    assert_eq!(from_host.len(), 1, "{from_host:?}");
    let from_pod: BTreeSet<String> =
        bodies_from_pod(&server, &reg, "sticky", &format!("http://{web_ip}/"), 20)
            .into_iter()
            .collect();
    assert_eq!(from_pod.len(), 1, "{from_pod:?}");

    // A Service whose slice has no ready endpoint refuses at once.
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
        "spec": {"clusterIP": empty_ip.to_string(),
            "ports": [{"name": "http", "port": 80, "targetPort": HTTP_POD_PORT}]}}),
    );
    server.create_ok(slice("empty", &[(&a, false)]));
    wait_for_rule("filter", &[&format!("-d {empty_ip}/32"), "REJECT"], true);
    let err = http_get_once(SocketAddr::from((empty_ip, 80))).expect_err("no endpoint answers");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // Removing the Service removes its rules.
    server.kubectl_ok(&["delete", "service", "web"]);
    wait_for_rule("nat", &[&format!("-d {web_ip}/32")], false);
    wait_for_rule("nat", &[&format!("--dport {node_port}")], false);

    // A graceful stop removes every chain of this server.
    let jump = iptables_rules("nat")
        .into_iter()
        .find(|r| {
            r.starts_with("-A PREROUTING") && r.contains(&format!("imc services of {bridge}"))
        })
        .expect("the jump to this server's chains");
    let chain = jump.rsplit(' ').next().unwrap().to_owned();
    let tag = chain.rsplit('-').next().unwrap().to_owned();
    assert!(server.stop().expect("stop"), "the server stops cleanly");
    for table in ["nat", "filter"] {
        let left: Vec<String> = iptables_rules(table)
            .into_iter()
            .filter(|r| r.contains(&tag))
            .collect();
        assert!(left.is_empty(), "{table}: {left:#?}");
    }
}

/// Issue 11's own words: a Deployment, `kubectl expose deploy web --port=80
/// --target-port=8080`, then HTTP through the allocated ClusterIP from the host and, by name
/// through the cluster DNS, from a pod; and through the allocated NodePort. Nothing is connected
/// to before its rule is in place.
#[test]
fn an_exposed_deployment_answers_on_its_allocated_cluster_ip_name_and_node_port() {
    let reg = registry_with_images();
    let server = start(&reg);
    let pod = http_pod(&reg.busybox, "unused", "web", "from-web");
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod["spec"]}}}));
    server.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=180s"]);
    server.kubectl_ok(&[
        "expose",
        "deploy",
        "web",
        "--port=80",
        &format!("--target-port={HTTP_POD_PORT}"),
        "--type=NodePort",
    ]);
    let svc = server.get_json("svc", "web").expect("the Service");
    let cluster_ip: Ipv4Addr = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an allocated cluster IP");
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("an allocated node port");
    let pods = server.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let ips: Vec<&str> = pods.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{pods}");
    // The endpoint controller's slices reach the data path: both pods behind the ClusterIP.
    for ip in &ips {
        wait_for_rule(
            "nat",
            &[&format!("--to-destination {ip}:{HTTP_POD_PORT}")],
            true,
        );
    }
    wait_for_rule("nat", &[&format!("-d {cluster_ip}/32"), "--dport 80"], true);
    wait_for_rule("nat", &[&format!("--dport {node_port}")], true);

    assert_eq!(http_get(SocketAddr::from((cluster_ip, 80))), "from-web");
    assert_eq!(
        http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, node_port))),
        "from-web"
    );
    let bodies = bodies_from_pod(
        &server,
        &reg,
        "by-name",
        "http://web.default.svc.cluster.local/",
        3,
    );
    assert_eq!(bodies, ["from-web", "from-web", "from-web"], "{bodies:?}");
}
