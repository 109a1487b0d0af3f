//! The cluster DNS (issue 11 item 2): a pod resolves a Service's name (full, and through the
//! search path the kubelet writes) to its ClusterIP, a headless Service to its ready
//! endpoints (and an endpoint's `hostname` under it), an ExternalName Service to a CNAME, and an unknown name in the cluster domain
//! not at all; `/etc/resolv.conf` is the kubelet's for `dnsPolicy: ClusterFirst`. Real
//! `imc server`, kubectl, runc and CNI; the resolver is busybox's `nslookup` in a pod, asking
//! the server on the pod network's gateway, and once through a `kube-dns`-like ClusterIP
//! Service whose endpoint is that gateway (UDP through the Service rules). Forwarding names outside the cluster domain to the
//! host's resolvers is not tested here (the test machine has no outside DNS to ask).

mod run_support;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_running;
use imc_testkit::web::{http_pod, wait_for_rule};
use run_support::registry_with_images;
use serde_json::json;

#[test]
fn pods_resolve_services_through_the_cluster_dns() {
    let reg = registry_with_images();
    let args = [
        "--node-name".to_owned(),
        "imc-dns-node".to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    let server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    // The gateway of this server's pod range `10.A.B.0/24`, and a ClusterIP no other test
    // server uses at the same time.
    let (gateway, cluster_ip, dns_ip) = {
        let (cidr, _) = server.pod_network();
        let net: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
        let [_, a, b, _] = net.octets();
        (
            std::net::Ipv4Addr::new(10, a, b, 1),
            std::net::Ipv4Addr::new(10, 98, b, a),
            std::net::Ipv4Addr::new(10, 99, b, a),
        )
    };
    server.create_ok(http_pod(&reg.busybox, "db-0", "db", "db"));
    let db = server.wait_for("pod", "db-0", "Running", pod_running);
    let db_ip = db["status"]["podIP"].as_str().expect("a pod IP").to_owned();

    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"clusterIP": cluster_ip.to_string(), "ports": [{"name": "http", "port": 80}]}}),
    );
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
    );
    server.create_ok(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432}],
        "endpoints": [
            {"addresses": [db_ip], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.254.0.9"], "conditions": {"ready": false}}]}),
    );
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "db.default.svc.cluster.local"}}),
    );

    // The cluster DNS behind a ClusterIP too, as `kube-dns` (UDP through the Service rules).
    server.create_ok(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns"},
        "spec": {"clusterIP": dns_ip.to_string(), "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}));
    server.create_ok(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-1", "labels": {"kubernetes.io/service-name": "kube-dns"}},
        "addressType": "IPv4", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [{"addresses": [gateway.to_string()], "conditions": {"ready": true}}]}),
    );
    // Only once its rule is in place may a packet go to that address.
    wait_for_rule(
        "nat",
        &[&format!("-d {dns_ip}/32"), "-p udp", "--dport 53"],
        true,
    );

    let via_service = format!(
        "echo '--- via service'; busybox nslookup -type=a web.default.svc.cluster.local {dns_ip}"
    );
    let script = [
        "cat /etc/resolv.conf",
        "echo '--- full'; busybox nslookup -type=a web.default.svc.cluster.local",
        "echo '--- short'; busybox nslookup -type=a web",
        "echo '--- headless'; busybox nslookup -type=a db.default.svc.cluster.local",
        "echo '--- member'; busybox nslookup -type=a db-0.db.default.svc.cluster.local",
        "echo '--- external'; busybox nslookup -type=a ext.default.svc.cluster.local",
        via_service.as_str(),
        "echo '--- unknown'; busybox nslookup -type=a nope.default.svc.cluster.local; echo exit=$?",
    ]
    .join("; ");
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": reg.busybox, "command": ["sh", "-c", script]}]}}),
    );
    let done = server.wait_for("pod", "client", "Succeeded", |p| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    let log = server.kubectl_ok(&["logs", "client"]);
    assert_eq!(done["status"]["phase"], "Succeeded", "{log}");
    let section = |name: &str| {
        log.split(&format!("--- {name}\n"))
            .nth(1)
            .and_then(|s| s.split("--- ").next())
            .unwrap_or_else(|| panic!("no {name} section in {log}"))
            .to_owned()
    };

    let resolv = log.split("--- full").next().unwrap();
    let host_search: Vec<String> = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("search "))
        .flat_map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let mut search = vec![
        "default.svc.cluster.local".to_owned(),
        "svc.cluster.local".to_owned(),
        "cluster.local".to_owned(),
    ];
    search.extend(host_search);
    assert_eq!(
        resolv,
        format!(
            "nameserver {gateway}\nsearch {}\noptions ndots:5\n",
            search.join(" ")
        ),
        "{log}"
    );
    assert!(
        !server
            .events_about("client")
            .iter()
            .any(|e| e["reason"] == "MissingClusterDNS"),
        "the cluster DNS is configured"
    );

    for name in ["full", "short"] {
        let s = section(name);
        assert!(s.contains("web.default.svc.cluster.local"), "{name}: {s}");
        assert!(s.contains(&format!("Address: {cluster_ip}")), "{name}: {s}");
    }
    let via_service = section("via service");
    assert!(
        via_service.contains(&format!("Address: {cluster_ip}")),
        "{via_service}"
    );
    let headless = section("headless");
    assert!(
        headless.contains(&format!("Address: {db_ip}")),
        "{headless}"
    );
    assert!(
        !headless.contains("10.254.0.9"),
        "a not-ready endpoint is not listed: {headless}"
    );
    let member = section("member");
    assert!(member.contains(&format!("Address: {db_ip}")), "{member}");
    let external = section("external");
    assert!(
        external.contains("canonical name = db.default.svc.cluster.local"),
        "{external}"
    );
    let unknown = section("unknown");
    assert!(unknown.contains("NXDOMAIN"), "{unknown}");
    assert!(!unknown.contains("Address: 10."), "{unknown}");
}
