//! The rule set of the Service data path, computed from the Services' ports and their
//! endpoints: a pure function, like kube-proxy's `syncProxyRules`.
//!
//! ```text
//! nat PREROUTING, OUTPUT   -> IMC-SERVICES-<t>   (a rule per ClusterIP:port, then NodePorts)
//! IMC-SERVICES-<t>         -d <clusterIP> -p <proto> --dport <port> -> IMC-SVC-<t>-<h>
//!                          -m addrtype --dst-type LOCAL            -> IMC-NODEPORTS-<t>
//! IMC-NODEPORTS-<t>        -p <proto> --dport <nodePort>           -> IMC-SVC-<t>-<h>
//! IMC-SVC-<t>-<h>          mark for masquerade, affinity (recent --rcheck), then an even random
//!                          spread (statistic, probability 1/n, 1/(n-1), …)  -> IMC-SEP-<t>-<h>
//! IMC-SEP-<t>-<h>          (recent --set) DNAT --to-destination <ip>:<port>
//! nat POSTROUTING          -> IMC-POSTRTG-<t>: MASQUERADE what carries the mark
//! filter INPUT, FORWARD, OUTPUT (new connections) -> IMC-REJECT-<t>: REJECT the ports of
//!                          Services without a usable endpoint (icmp-port-unreachable)
//! ```
//!
//! `<t>` is a tag of the pod bridge, so two servers on one machine keep their chains apart;
//! `<h>` a hash of the Service port (and endpoint), as kube-proxy names its chains.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// The mark bit that asks POSTROUTING to masquerade (kube-proxy's `KUBE-MARK-MASQ` bit; the
/// CNI portmap plugin uses 0x2000).
pub(crate) const MASQ_MARK: &str = "0x4000";

/// A transport protocol a Service port forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The name `iptables -p` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One backend of a Service port, as an EndpointSlice lists it (conditions already defaulted:
/// an unset `ready` or `serving` counts as true, an unset `terminating` as false).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The backend's address.
    pub ip: Ipv4Addr,
    /// The port on the backend (the slice's port of the same name).
    pub port: u16,
    /// Ready for new connections.
    pub ready: bool,
    /// Serving, whether or not terminating.
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// One port of one Service with its endpoints: the unit the rules are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The port's name (may be empty for a single-port Service).
    pub port_name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The ClusterIP (`None` for headless and ExternalName Services).
    pub cluster_ip: Option<Ipv4Addr>,
    /// The Service port.
    pub port: u16,
    /// The NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// Every endpoint the slices list for this port.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `namespace/service:port`, as kube-proxy names a service port in its comments.
    pub fn display_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.service)
        } else {
            format!("{}/{}:{}", self.namespace, self.service, self.port_name)
        }
    }

    /// The endpoints traffic goes to, as kube-proxy picks them: the ready ones; when none is,
    /// those still serving while terminating (so a rollout's last pods keep answering).
    /// Sorted, without duplicates.
    pub fn usable_endpoints(&self) -> Vec<(Ipv4Addr, u16)> {
        let pick = |f: &dyn Fn(&Endpoint) -> bool| {
            self.endpoints
                .iter()
                .filter(|e| f(e))
                .map(|e| (e.ip, e.port))
                .collect::<BTreeSet<_>>()
        };
        let ready = pick(&|e| e.ready);
        let chosen = if ready.is_empty() {
            pick(&|e| e.serving && e.terminating)
        } else {
            ready
        };
        chosen.into_iter().filter(|(_, p)| *p != 0).collect()
    }
}

/// The names of one server's chains, tagged by its pod bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainNames {
    tag: String,
}

impl ChainNames {
    /// The chains of the server whose pods are on `bridge`.
    pub fn for_bridge(bridge: &str) -> Self {
        ChainNames {
            tag: short_hash(bridge, 6),
        }
    }

    /// The tag every chain of this server ends with or carries (`-<tag>`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The nat chain PREROUTING and OUTPUT jump to.
    pub fn services(&self) -> String {
        format!("IMC-SERVICES-{}", self.tag)
    }

    /// The nat chain of NodePorts (local destinations).
    pub fn node_ports(&self) -> String {
        format!("IMC-NODEPORTS-{}", self.tag)
    }

    /// The nat chain that marks a connection for masquerade.
    pub fn mark_masq(&self) -> String {
        format!("IMC-MARK-MASQ-{}", self.tag)
    }

    /// The nat chain POSTROUTING jumps to (masquerades marked connections).
    pub fn postrouting(&self) -> String {
        format!("IMC-POSTRTG-{}", self.tag)
    }

    /// The filter chain rejecting the ports of Services without endpoints.
    pub fn reject(&self) -> String {
        format!("IMC-REJECT-{}", self.tag)
    }

    /// The filter chain INPUT jumps to: drops connections to 127.0.0.0/8 that come from
    /// elsewhere, which `route_localnet` (set for NodePorts on 127.0.0.1) would otherwise let in
    /// (CVE-2020-8558; kube-proxy's rule).
    pub fn firewall(&self) -> String {
        format!("IMC-FIREWALL-{}", self.tag)
    }

    /// The nat chain of one Service port.
    fn svc(&self, p: &ServicePort) -> String {
        format!("IMC-SVC-{}-{}", self.tag, short_hash(&port_key(p), 12))
    }

    /// The nat chain of one endpoint of one Service port.
    fn sep(&self, p: &ServicePort, ip: Ipv4Addr, port: u16) -> String {
        let key = format!("{}/{ip}:{port}", port_key(p));
        format!("IMC-SEP-{}-{}", self.tag, short_hash(&key, 12))
    }

    /// Whether `chain` is one of this server's chains.
    pub fn owns(&self, chain: &str) -> bool {
        chain.starts_with("IMC-")
            && (chain.ends_with(&format!("-{}", self.tag))
                || chain.contains(&format!("-{}-", self.tag)))
            && !chain.starts_with("IMC-MASQ-")
    }
}

fn port_key(p: &ServicePort) -> String {
    format!(
        "{}/{}:{}/{}",
        p.namespace,
        p.service,
        p.port_name,
        p.protocol.as_str()
    )
}

fn short_hash(text: &str, len: usize) -> String {
    let mut h = hex::encode(Sha256::digest(text.as_bytes())).to_uppercase();
    h.truncate(len);
    h
}

/// A computed rule set: the chains and rules of each table, ready for `iptables-restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// The nat chains this set declares (every one is flushed and refilled).
    pub nat_chains: Vec<String>,
    /// The nat rules (`-A …` lines).
    pub nat_rules: Vec<String>,
    /// The filter chains.
    pub filter_chains: Vec<String>,
    /// The filter rules.
    pub filter_rules: Vec<String>,
    /// Service ports left out, each with the reason (a name that cannot be used safely).
    pub skipped: Vec<String>,
}

impl RuleSet {
    /// The `iptables-restore --noflush` input installing this set and deleting `stale_nat` and
    /// `stale_filter` (chains of an earlier set no longer used; nothing may jump to them).
    pub fn restore_text(&self, stale_nat: &[String], stale_filter: &[String]) -> String {
        let mut out = String::new();
        for (table, chains, rules, stale) in [
            ("nat", &self.nat_chains, &self.nat_rules, stale_nat),
            (
                "filter",
                &self.filter_chains,
                &self.filter_rules,
                stale_filter,
            ),
        ] {
            let _ = writeln!(out, "*{table}");
            for c in chains.iter().chain(stale) {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for r in rules {
                let _ = writeln!(out, "{r}");
            }
            for c in stale {
                let _ = writeln!(out, "-X {c}");
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// Whether `s` may appear in a rule's comment (a DNS label or subdomain, a port name).
fn plain_name(s: &str) -> bool {
    s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// The rule set of `ports` for the server whose chains are `names`. Ports are laid out in
/// name order, so the same input always gives the same text.
pub fn rules(names: &ChainNames, ports: &[ServicePort]) -> RuleSet {
    let mut set = RuleSet::default();
    let (services, node_ports, mark, post, reject) = (
        names.services(),
        names.node_ports(),
        names.mark_masq(),
        names.postrouting(),
        names.reject(),
    );
    set.nat_chains = vec![
        services.clone(),
        node_ports.clone(),
        mark.clone(),
        post.clone(),
    ];
    set.filter_chains = vec![reject.clone(), names.firewall()];
    set.filter_rules.push(format!(
        "-A {} ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        names.firewall()
    ));
    set.nat_rules
        .push(format!("-A {mark} -j MARK --or-mark {MASQ_MARK}"));
    set.nat_rules.push(format!(
        "-A {post} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    ));
    // Cleared so a packet re-traversing (hairpin) is not masqueraded twice by other rules.
    set.nat_rules
        .push(format!("-A {post} -j MARK --xor-mark {MASQ_MARK}"));
    set.nat_rules.push(format!(
        "-A {post} -m comment --comment \"imc service traffic requiring SNAT\" -j MASQUERADE"
    ));

    let mut sorted: Vec<&ServicePort> = ports.iter().collect();
    sorted.sort_by_key(|p| port_key(p));
    sorted.dedup_by_key(|p| port_key(p));
    for p in sorted {
        if !(plain_name(&p.namespace) && plain_name(&p.service) && plain_name(&p.port_name)) {
            set.skipped.push(format!(
                "{:?}/{:?}:{:?}: not a valid namespace, Service or port name",
                p.namespace, p.service, p.port_name
            ));
            continue;
        }
        if p.cluster_ip.is_none() && p.node_port.is_none() {
            continue;
        }
        let name = p.display_name();
        let proto = p.protocol.as_str();
        let endpoints = p.usable_endpoints();
        if endpoints.is_empty() {
            if let Some(ip) = p.cluster_ip {
                set.filter_rules.push(format!(
                    "-A {reject} -d {ip}/32 -p {proto} -m comment --comment \"{name} has no endpoints\" -m {proto} --dport {} -j REJECT --reject-with icmp-port-unreachable",
                    p.port
                ));
            }
            if let Some(np) = p.node_port {
                set.filter_rules.push(format!(
                    "-A {reject} -m addrtype --dst-type LOCAL -p {proto} -m comment --comment \"{name} has no endpoints\" -m {proto} --dport {np} -j REJECT --reject-with icmp-port-unreachable"
                ));
            }
            continue;
        }
        let svc = names.svc(p);
        set.nat_chains.push(svc.clone());
        if let Some(ip) = p.cluster_ip {
            set.nat_rules.push(format!(
                "-A {services} -d {ip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {} -j {svc}",
                p.port
            ));
        }
        if let Some(np) = p.node_port {
            set.nat_rules.push(format!(
                "-A {node_ports} -p {proto} -m comment --comment \"{name}\" -m {proto} --dport {np} -j {svc}"
            ));
        }
        // Every service connection leaves with the host's address: replies of a backend on
        // the same bridge as the client (or the client itself: hairpin), and of connections
        // from 127.0.0.1 to a NodePort, then come back through the host to be un-NATed.
        set.nat_rules.push(format!("-A {svc} -j {mark}"));
        let seps: Vec<(String, Ipv4Addr, u16)> = endpoints
            .iter()
            .map(|&(ip, port)| (names.sep(p, ip, port), ip, port))
            .collect();
        if let Some(seconds) = p.affinity_seconds {
            for (sep, ip, port) in &seps {
                set.nat_rules.push(format!(
                    "-A {svc} -m comment --comment \"{name} -> {ip}:{port}\" -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck --seconds {seconds} --reap -j {sep}"
                ));
            }
        }
        let n = seps.len();
        for (i, (sep, ip, port)) in seps.iter().enumerate() {
            let left = n - i;
            let rule = if left > 1 {
                format!(
                    "-A {svc} -m comment --comment \"{name} -> {ip}:{port}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / left as f64
                )
            } else {
                format!("-A {svc} -m comment --comment \"{name} -> {ip}:{port}\" -j {sep}")
            };
            set.nat_rules.push(rule);
        }
        for (sep, ip, port) in &seps {
            set.nat_chains.push(sep.clone());
            let recent = if p.affinity_seconds.is_some() {
                format!(" -m recent --name {sep} --mask 255.255.255.255 --rsource --set")
            } else {
                String::new()
            };
            set.nat_rules.push(format!(
                "-A {sep} -p {proto} -m comment --comment \"{name}\"{recent} -j DNAT --to-destination {ip}:{port}"
            ));
        }
    }
    // NodePorts last: only local destinations, after every ClusterIP.
    set.nat_rules.push(format!(
        "-A {services} -m comment --comment \"imc service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {node_ports}"
    ));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            ready,
            serving,
            terminating,
        }
    }

    fn port(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            service: "web".into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Some("10.96.0.50".parse().unwrap()),
            port: 80,
            node_port: None,
            affinity_seconds: None,
            endpoints,
        }
    }

    fn names() -> ChainNames {
        ChainNames::for_bridge("imc0")
    }

    /// The rules of `ports` whose text contains every word of `needle`.
    fn lines<'a>(rules: &'a [String], needle: &[&str]) -> Vec<&'a String> {
        rules
            .iter()
            .filter(|r| needle.iter().all(|n| r.contains(n)))
            .collect()
    }

    #[test]
    fn connections_to_loopback_from_elsewhere_are_dropped_whatever_the_services() {
        // route_localnet (for NodePorts on 127.0.0.1) would let other hosts reach loopback-only
        // listeners such as the API server (CVE-2020-8558): INPUT drops them first.
        let set = rules(&names(), &[]);
        let firewall = names().firewall();
        assert!(set.filter_chains.contains(&firewall));
        assert_eq!(
            lines(&set.filter_rules, &[&format!("-A {firewall} ")]),
            [&format!(
                "-A {firewall} ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
            )]
        );
    }

    #[test]
    fn usable_endpoints_are_the_ready_ones_else_the_serving_terminating_ones() {
        let rows: [(&str, Vec<Endpoint>, Vec<&str>); 5] = [
            (
                "ready only",
                vec![
                    ep("10.88.0.2", true, true, false),
                    ep("10.88.0.3", false, false, false),
                ],
                vec!["10.88.0.2"],
            ),
            (
                "terminating ignored while one is ready",
                vec![
                    ep("10.88.0.2", true, true, false),
                    ep("10.88.0.3", false, true, true),
                ],
                vec!["10.88.0.2"],
            ),
            (
                "fallback to serving terminating",
                vec![
                    ep("10.88.0.3", false, true, true),
                    ep("10.88.0.4", false, false, true),
                ],
                vec!["10.88.0.3"],
            ),
            ("none", vec![ep("10.88.0.3", false, false, false)], vec![]),
            (
                "duplicates across slices count once",
                vec![
                    ep("10.88.0.2", true, true, false),
                    ep("10.88.0.2", true, true, false),
                ],
                vec!["10.88.0.2"],
            ),
        ];
        for (case, endpoints, want) in rows {
            let got: Vec<String> = port(endpoints)
                .usable_endpoints()
                .iter()
                .map(|(ip, _)| ip.to_string())
                .collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn cluster_ip_spreads_evenly_over_ready_endpoints() {
        let set = rules(
            &names(),
            &[port(vec![
                ep("10.88.0.2", true, true, false),
                ep("10.88.0.3", true, true, false),
                ep("10.88.0.4", true, true, false),
            ])],
        );
        let jump = lines(
            &set.nat_rules,
            &["-A IMC-SERVICES-", "-d 10.96.0.50/32", "--dport 80"],
        );
        assert_eq!(jump.len(), 1, "{:#?}", set.nat_rules);
        let svc = jump[0].rsplit(' ').next().unwrap().to_owned();
        assert!(svc.starts_with("IMC-SVC-") && svc.len() <= 28, "{svc}");
        let spread: Vec<&String> = lines(&set.nat_rules, &[&format!("-A {svc} "), "IMC-SEP-"]);
        assert_eq!(spread.len(), 3, "{spread:#?}");
        assert!(
            spread[0].contains("--probability 0.3333333333"),
            "{}",
            spread[0]
        );
        assert!(
            spread[1].contains("--probability 0.5000000000"),
            "{}",
            spread[1]
        );
        assert!(!spread[2].contains("statistic"), "the last takes the rest");
        // The connection is marked for masquerade before it is spread.
        let svc_rules = lines(&set.nat_rules, &[&format!("-A {svc} ")]);
        assert!(
            svc_rules[0].contains("-j IMC-MARK-MASQ-"),
            "{}",
            svc_rules[0]
        );
        for ip in ["10.88.0.2", "10.88.0.3", "10.88.0.4"] {
            let dnat = lines(&set.nat_rules, &[&format!("--to-destination {ip}:8080")]);
            assert_eq!(dnat.len(), 1, "{ip}");
            assert!(dnat[0].contains("-p tcp"), "{}", dnat[0]);
        }
        assert!(lines(&set.filter_rules, &["REJECT"]).is_empty());
        assert!(
            set.nat_rules
                .last()
                .unwrap()
                .contains("--dst-type LOCAL -j IMC-NODEPORTS-")
        );
    }

    #[test]
    fn each_case_gives_the_rules_kube_proxy_would() {
        let none_ready = port(vec![ep("10.88.0.3", false, false, false)]);
        let mut udp = port(vec![ep("10.88.0.2", true, true, false)]);
        udp.protocol = Protocol::Udp;
        udp.port = 53;
        let mut node = port(vec![ep("10.88.0.2", true, true, false)]);
        node.node_port = Some(30080);
        let mut node_empty = port(vec![]);
        node_empty.node_port = Some(30081);
        let mut affinity = port(vec![
            ep("10.88.0.2", true, true, false),
            ep("10.88.0.3", true, true, false),
        ]);
        affinity.affinity_seconds = Some(10800);
        let mut headless = port(vec![ep("10.88.0.2", true, true, false)]);
        headless.cluster_ip = None;
        let mut bad = port(vec![ep("10.88.0.2", true, true, false)]);
        bad.service = "web\" -j ACCEPT".into();
        // (case, port, nat rules expected, filter rules expected)
        // Each expected rule is the words it must contain.
        type Rules<'a> = Vec<Vec<&'a str>>;
        let rows: Vec<(&str, ServicePort, Rules, Rules)> = vec![
            (
                "no ready endpoint rejects at once",
                none_ready,
                vec![],
                vec![vec![
                    "-d 10.96.0.50/32",
                    "-p tcp",
                    "--dport 80",
                    "-j REJECT --reject-with icmp-port-unreachable",
                ]],
            ),
            (
                "udp",
                udp,
                vec![
                    vec!["-d 10.96.0.50/32", "-p udp", "-m udp --dport 53"],
                    vec!["-p udp", "DNAT --to-destination 10.88.0.2:8080"],
                ],
                vec![],
            ),
            (
                "node port",
                node,
                vec![
                    vec![
                        "-A IMC-NODEPORTS-",
                        "-p tcp",
                        "--dport 30080",
                        "-j IMC-SVC-",
                    ],
                    vec!["-d 10.96.0.50/32"],
                ],
                vec![],
            ),
            (
                "node port without endpoints rejects on local addresses",
                node_empty,
                vec![],
                vec![
                    vec!["--dst-type LOCAL", "--dport 30081", "REJECT"],
                    vec!["-d 10.96.0.50/32", "REJECT"],
                ],
            ),
            (
                "client ip affinity",
                affinity,
                vec![
                    vec![
                        "-A IMC-SVC-",
                        "-m recent --name IMC-SEP-",
                        "--rcheck --seconds 10800 --reap",
                    ],
                    vec![
                        "-A IMC-SEP-",
                        "--rsource --set",
                        "DNAT --to-destination 10.88.0.2:8080",
                    ],
                    vec![
                        "-A IMC-SEP-",
                        "--rsource --set",
                        "DNAT --to-destination 10.88.0.3:8080",
                    ],
                ],
                vec![],
            ),
            ("headless has no rules", headless, vec![], vec![]),
            ("a name that is not a name is skipped", bad, vec![], vec![]),
        ];
        for (case, p, nat, filter) in rows {
            let set = rules(&names(), std::slice::from_ref(&p));
            for want in &nat {
                assert!(
                    !lines(&set.nat_rules, want).is_empty(),
                    "{case}: {want:?} in {:#?}",
                    set.nat_rules
                );
            }
            if nat.is_empty() {
                assert!(
                    lines(&set.nat_rules, &["DNAT"]).is_empty(),
                    "{case}: {:#?}",
                    set.nat_rules
                );
            }
            for want in &filter {
                assert!(
                    !lines(&set.filter_rules, want).is_empty(),
                    "{case}: {want:?} in {:#?}",
                    set.filter_rules
                );
            }
            if filter.is_empty() {
                assert!(
                    lines(&set.filter_rules, &["REJECT"]).is_empty(),
                    "{case}: {:#?}",
                    set.filter_rules
                );
            }
        }
        let bad_set = rules(
            &names(),
            &[{
                let mut b = port(vec![]);
                b.namespace = "a b".into();
                b
            }],
        );
        assert_eq!(bad_set.skipped.len(), 1);
    }

    #[test]
    fn chain_names_fit_and_belong_to_their_server() {
        let a = ChainNames::for_bridge("imc0");
        let b = ChainNames::for_bridge("imct7");
        assert_ne!(a.tag(), b.tag());
        let set = rules(&a, &[port(vec![ep("10.88.0.2", true, true, false)])]);
        for c in set.nat_chains.iter().chain(&set.filter_chains) {
            assert!(c.len() <= 28, "{c} is longer than iptables allows");
            assert!(a.owns(c) && !b.owns(c), "{c}");
        }
        assert!(!a.owns("IMC-MASQ-imc0") && !a.owns("KUBE-SERVICES"));
    }

    #[test]
    fn restore_text_declares_refills_and_deletes_stale_chains() {
        let set = rules(&names(), &[port(vec![ep("10.88.0.2", true, true, false)])]);
        let text = set.restore_text(&["IMC-SVC-OLD".into()], &[]);
        assert!(text.starts_with("*nat\n:IMC-SERVICES-"), "{text}");
        assert!(text.contains(":IMC-SVC-OLD - [0:0]\n"), "{text}");
        let nat = text.split("COMMIT\n").next().unwrap();
        assert!(nat.ends_with("-X IMC-SVC-OLD\n"), "{nat}");
        assert!(text.contains("*filter\n:IMC-REJECT-"), "{text}");
        assert_eq!(text.matches("COMMIT\n").count(), 2);
        // The same input always gives the same text.
        assert_eq!(
            rules(&names(), &[port(vec![ep("10.88.0.2", true, true, false)])])
                .restore_text(&[], &[]),
            set.restore_text(&[], &[])
        );
    }
}
