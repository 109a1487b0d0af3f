//! Services end to end (issue 11 item 2, the API half): a real `imc server` (API server,
//! workload and endpoint controllers, node with runc and CNI) and the real kubectl driving
//! `create deployment` + `expose`, `create service clusterip|nodeport|externalname`, a pod
//! whose readiness probe fails, `cluster-info`, and a restart. Traffic through the cluster IPs
//! is the data path's (not waited for here).

mod run_support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{pod_ready, pod_running};
use run_support::{Registry, push, registry_with_images, server_image};
use serde_json::{Value, json};

const NODE: &str = "imc-services-node";
const WEB: &str = "kubernetes.io/service-name=web";

fn start(reg: &Registry) -> TestServer {
    let args = vec![
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

fn in_service_range(ip: &str) -> bool {
    let ip: Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|_| panic!("{ip:?} is not an IPv4"));
    let n = u32::from(ip);
    n & 0xfff0_0000 == u32::from(Ipv4Addr::new(10, 96, 0, 0)) && ip != Ipv4Addr::new(10, 96, 0, 1)
}

/// The (address, ready) pairs of the endpoints of `slices`.
fn slice_endpoints(slices: &[Value]) -> BTreeSet<(String, bool)> {
    slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap_or_default().to_owned(),
                e["conditions"]["ready"] == true,
            )
        })
        .collect()
}

/// The IPs under `field` (`addresses` or `notReadyAddresses`) of an Endpoints object.
fn endpoint_ips(ep: &Value, field: &str) -> BTreeSet<String> {
    ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s[field].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().map(str::to_owned))
        .collect()
}

fn pod_ip(pod: &Value) -> String {
    pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn exposed_deployment_has_a_cluster_ip_and_endpoints_that_follow_readiness() {
    let reg = registry_with_images();
    let image = push(&reg, "imc/web", &server_image("serving"));
    let server = start(&reg);
    server.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image={image}"),
        "--replicas=2",
    ]);
    let pods = server.wait_for_pods("app=web", "2 Ready", |p| {
        p.len() == 2 && p.iter().all(pod_ready)
    });
    let ips: BTreeSet<String> = pods.iter().map(pod_ip).collect();
    server.kubectl_ok(&["expose", "deploy", "web", "--port=80", "--target-port=8080"]);
    let svc = server.get_json("svc", "web").expect("the service");
    let cluster_ip = svc["spec"]["clusterIP"].as_str().expect("a cluster IP");
    assert!(in_service_range(cluster_ip), "{svc:#}");
    assert_eq!(svc["spec"]["clusterIPs"], json!([cluster_ip]));
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    assert_eq!(
        svc["spec"]["ports"][0],
        json!({"port": 80, "protocol": "TCP", "targetPort": 8080})
    );

    // Both pods, ready, on 8080, in the slices and the Endpoints.
    let want: BTreeSet<(String, bool)> = ips.iter().map(|ip| (ip.clone(), true)).collect();
    let slices = server.wait_for_list("endpointslices", WEB, "both pods", |s| {
        slice_endpoints(s) == want
    });
    assert_eq!(slices.len(), 1, "{slices:#?}");
    let slice = &slices[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert!(
        slice["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("web-")),
        "{slice:#}"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(
        slice["metadata"]["ownerReferences"][0]["uid"],
        svc["metadata"]["uid"]
    );
    assert_eq!(slice["ports"][0]["port"], 8080);
    for e in slice["endpoints"].as_array().expect("endpoints") {
        assert_eq!(e["nodeName"], NODE);
        assert_eq!(e["targetRef"]["kind"], "Pod");
        assert_eq!(e["conditions"]["serving"], true);
        assert_eq!(e["conditions"]["terminating"], false);
    }
    let ep = server.wait_for("ep", "web", "both pods", |ep| {
        endpoint_ips(ep, "addresses") == ips
    });
    assert_eq!(
        ep["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"],
        "true"
    );
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
    let table = server.kubectl_ok(&["get", "ep", "web"]);
    for ip in &ips {
        assert!(table.contains(&format!("{ip}:8080")), "{table}");
    }

    // A pod whose readiness probe fails is listed, not ready; once it passes it is ready;
    // failing again, it leaves the ready endpoints.
    server.create_ok(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gated", "labels": {"app": "web"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "web", "image": image,
            "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1}
        }]}
    }));
    let gated = server.wait_for("pod", "gated", "running", pod_running);
    let gated_ip = pod_ip(&gated);
    let with = |ready: bool| {
        let mut w = want.clone();
        w.insert((gated_ip.clone(), ready));
        w
    };
    server.wait_for_list("endpointslices", WEB, "the gated pod not ready", |s| {
        slice_endpoints(s) == with(false)
    });
    let ep = server.wait_for("ep", "web", "the gated pod not ready", |ep| {
        endpoint_ips(ep, "notReadyAddresses") == BTreeSet::from([gated_ip.clone()])
    });
    assert_eq!(endpoint_ips(&ep, "addresses"), ips);
    server.kubectl_ok(&["exec", "gated", "--", "touch", "/tmp/ready"]);
    server.wait_for_list("endpointslices", WEB, "the gated pod ready", |s| {
        slice_endpoints(s) == with(true)
    });
    server.kubectl_ok(&["exec", "gated", "--", "rm", "/tmp/ready"]);
    server.wait_for_list(
        "endpointslices",
        WEB,
        "the gated pod not ready again",
        |s| slice_endpoints(s) == with(false),
    );
    server.wait_for("ep", "web", "the gated pod not ready again", |ep| {
        endpoint_ips(ep, "addresses") == ips
            && endpoint_ips(ep, "notReadyAddresses") == BTreeSet::from([gated_ip.clone()])
    });

    // A deleted pod leaves; the Service's deletion takes its slices and Endpoints along.
    server.kubectl_ok(&["delete", "pod", "gated", "--wait=false"]);
    server.wait_gone("pod", "gated");
    server.wait_for_list("endpointslices", WEB, "without the gated pod", |s| {
        slice_endpoints(s) == want
    });
    server.kubectl_ok(&["delete", "svc", "web"]);
    server.wait_for_list("endpointslices", WEB, "gone", <[Value]>::is_empty);
    server.wait_gone("ep", "web");
}

fn create_err(server: &TestServer, args: &[&str]) -> String {
    let mut all = vec!["create", "service"];
    all.extend_from_slice(args);
    server.kubectl_err(&all, None)
}

#[test]
fn service_types_addresses_and_ports_survive_a_restart() {
    let mut server =
        TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).expect("imc server starts");
    // The `kubernetes` Service, its Endpoints and slice; cluster-info finds the API.
    let api = server
        .get_json("svc", "kubernetes")
        .expect("the kubernetes service");
    assert_eq!(api["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(api["spec"]["ports"][0]["name"], "https");
    assert_eq!(api["spec"]["ports"][0]["port"], 443);
    assert_eq!(api["spec"]["ports"][0]["targetPort"], server.addr().port());
    let ep = server.get_json("ep", "kubernetes").expect("its endpoints");
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], server.addr().port());
    assert_eq!(
        ep["subsets"][0]["addresses"][0]["ip"],
        server.addr().ip().to_string()
    );
    let slices = server.list_with("endpointslices", "kubernetes.io/service-name=kubernetes");
    assert_eq!(slices.len(), 1, "{slices:#?}");
    let info = server.kubectl_ok(&["cluster-info"]);
    assert!(
        info.contains("Kubernetes control plane is running at https://"),
        "{info}"
    );

    // kubectl's typed generators (protobuf bodies).
    server.kubectl_ok(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    server.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--clusterip=None",
    ]);
    server.kubectl_ok(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=db.example.com",
    ]);
    server.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "fixed",
        "--tcp=80",
        "--clusterip=10.96.0.10",
    ]);
    let np = server.get_json("svc", "np").expect("np");
    assert!(in_service_range(
        np["spec"]["clusterIP"].as_str().unwrap_or_default()
    ));
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    let node_port = np["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port");
    assert!((30000..=32767).contains(&node_port), "{np:#}");
    assert_eq!(np["spec"]["ports"][0]["targetPort"], 8080);
    let headless = server.get_json("svc", "headless").expect("headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    let ext = server.get_json("svc", "ext").expect("ext");
    assert_eq!(ext["spec"]["type"], "ExternalName");
    assert!(ext["spec"].get("clusterIP").is_none(), "{ext:#}");
    let row = server.kubectl_ok(&["get", "svc", "ext", "--no-headers"]);
    assert!(row.contains("db.example.com"), "{row}");
    assert_eq!(
        server.get_json("svc", "fixed").expect("fixed")["spec"]["clusterIP"],
        "10.96.0.10"
    );

    // A LoadBalancer is a NodePort here; its status stays empty (kubectl: <pending>).
    server.kubectl_ok(&["create", "service", "loadbalancer", "lb", "--tcp=443:8443"]);
    let lb = server.get_json("svc", "lb").expect("lb");
    let lb_port = lb["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port");
    assert!(
        (30000..=32767).contains(&lb_port) && lb_port != node_port,
        "{lb:#}"
    );
    let row = server.kubectl_ok(&["get", "svc", "lb", "--no-headers"]);
    assert!(row.contains("<pending>"), "{row}");

    // Refusals in kube-apiserver's words.
    let cases: &[(&[&str], &str)] = &[
        (
            &["clusterip", "again", "--tcp=80", "--clusterip=10.96.0.10"],
            "provided IP is already allocated",
        ),
        (
            &["clusterip", "away", "--tcp=80", "--clusterip=10.0.0.5"],
            "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12",
        ),
    ];
    for (args, want) in cases {
        let err = create_err(&server, args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // (kubectl checks the external name itself; the server does too.)
    let (ok, out) = server.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bad"},
        "spec": {"type": "ExternalName", "externalName": "Not_A_Name"}}));
    assert!(
        !ok && out.contains("spec.externalName: Invalid value: \"Not_A_Name\""),
        "{out}"
    );
    let taken = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": node_port}]}});
    let (ok, out) = server.create(&taken);
    assert!(
        !ok && out.contains("provided port is already allocated"),
        "{out}"
    );
    let (ok, out) = server.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "far"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 20000}]}}));
    assert!(
        !ok && out.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{out}"
    );
    let err = server.kubectl_err(
        &[
            "patch",
            "svc",
            "fixed",
            "-p",
            r#"{"spec":{"clusterIP":"10.96.0.11","clusterIPs":["10.96.0.11"]}}"#,
        ],
        None,
    );
    assert!(err.contains("may not change once set"), "{err}");

    // A restart keeps every allocation: what is taken stays taken.
    server.restart().expect("the server restarts");
    assert_eq!(
        server.get_json("svc", "np").expect("np")["spec"]["ports"][0]["nodePort"],
        node_port
    );
    let err = create_err(
        &server,
        &["clusterip", "again", "--tcp=80", "--clusterip=10.96.0.10"],
    );
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let (ok, out) = server.create(&taken);
    assert!(
        !ok && out.contains("provided port is already allocated"),
        "{out}"
    );
    let api_again = server.get_json("svc", "kubernetes").expect("still there");
    assert_eq!(api_again["metadata"]["uid"], api["metadata"]["uid"]);

    // Deleting gives the port back; changing the type to ClusterIP too.
    server.kubectl_ok(&["delete", "svc", "np"]);
    server.create_ok(&taken);
    server.kubectl_ok(&[
        "patch",
        "svc",
        "taken",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let changed = server.get_json("svc", "taken").expect("taken");
    assert!(
        changed["spec"]["ports"][0].get("nodePort").is_none(),
        "{changed:#}"
    );
    assert!(in_service_range(
        changed["spec"]["clusterIP"].as_str().unwrap_or_default()
    ));
    let mut reuse = taken.clone();
    reuse["metadata"]["name"] = json!("reuse");
    server.create_ok(&reuse);
    // Changing to ExternalName gives the cluster IP back.
    server.kubectl_ok(&[
        "patch",
        "svc",
        "fixed",
        "-p",
        r#"{"spec":{"type":"ExternalName","externalName":"db.example.com"}}"#,
    ]);
    server.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "again",
        "--tcp=80",
        "--clusterip=10.96.0.10",
    ]);
}
