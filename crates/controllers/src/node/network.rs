//! The files of a pod's network identity, as the kubelet writes them into every container:
//! `/etc/hosts` (the pod's own name and address, `hostAliases`), `/etc/resolv.conf` (by
//! `dnsPolicy` and `dnsConfig`) and `/etc/hostname`. The text is computed by pure functions;
//! [`write_pod_files`] puts it in the pod dir for the runtime to bind-mount.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use imc_runtime::VolumeMount;
use k8s_openapi::api::core::v1::Pod;

/// The host's resolver configuration, the base of `dnsPolicy: Default`.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The host's hosts file, what `hostNetwork` pods see.
const HOST_HOSTS: &str = "/etc/hosts";
/// The most of a host file read.
const MAX_HOST_FILE: u64 = 64 << 10;
/// The cluster domain without a cluster DNS (`cluster.local`, the kubelet's default).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The cluster DNS as the kubelet's `--cluster-dns` and `--cluster-domain` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDnsConfig {
    /// The address pods send their questions to.
    pub nameserver: IpAddr,
    /// The cluster domain (e.g. `cluster.local`).
    pub domain: String,
}

/// `/etc/hosts` of a pod with its own network: localhost entries, the pod's address under its
/// hostname (and FQDN in cluster domain `domain` with a `subdomain`), then `hostAliases`.
pub fn hosts_file(pod: &Pod, hostname: &str, ip: Option<IpAddr>, domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        let spec = pod.spec.as_ref();
        match spec
            .and_then(|s| s.subdomain.as_deref())
            .filter(|s| !s.is_empty())
        {
            Some(sub) => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                out.push_str(&format!(
                    "{ip}\t{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}\n"
                ));
            }
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    out.push_str(&host_aliases(pod));
    out
}

/// `hostAliases`, as the kubelet appends them.
fn host_aliases(pod: &Pod) -> String {
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_ref())
        .filter(|a| !a.is_empty());
    let Some(aliases) = aliases else {
        return String::new();
    };
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for a in aliases {
        let names = a.hostnames.clone().unwrap_or_default().join("\t");
        out.push_str(&format!("{}\t{names}\n", a.ip));
    }
    out
}

/// `/etc/resolv.conf` by the pod's `dnsPolicy` and `dnsConfig`, from the host's file and the
/// cluster DNS, and a warning when the policy had to fall back: without a cluster DNS,
/// `ClusterFirst` falls back to `Default`, as the kubelet does without `--cluster-dns` (event
/// `MissingClusterDNS`).
pub fn resolv_conf(
    pod: &Pod,
    host: &str,
    cluster: Option<&ClusterDnsConfig>,
) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut warning = None;
    let (mut servers, mut searches, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "ClusterFirst" | "ClusterFirstWithHostNet" => {
            if policy == "ClusterFirst" && host_network {
                parse_resolv(host)
            } else if let Some(dns) = cluster {
                // The kubelet's: the cluster DNS alone, the pod's namespace first in the
                // search path, then the host's search domains, and ndots:5.
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                let d = &dns.domain;
                let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
                searches.extend(parse_resolv(host).1);
                (
                    vec![dns.nameserver.to_string()],
                    searches,
                    vec!["ndots:5".to_owned()],
                )
            } else {
                warning = Some(format!(
                    "pod: {:?}. kubelet does not have ClusterDNS IP configured and cannot create Pod using \"{policy}\" policy. Falling back to \"Default\" policy.",
                    pod.metadata.name.as_deref().unwrap_or("")
                ));
                parse_resolv(host)
            }
        }
        _ => parse_resolv(host),
    };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.clone().unwrap_or_default());
        searches.extend(cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.clone().unwrap_or_default() {
            let opt = match o.value {
                Some(v) => format!("{}:{v}", o.name.unwrap_or_default()),
                None => o.name.unwrap_or_default(),
            };
            let key = opt.split(':').next().unwrap_or("").to_owned();
            options.retain(|x: &String| x.split(':').next() != Some(key.as_str()));
            options.push(opt);
        }
    }
    // Duplicates dropped and the resolver's own limits kept, as the kubelet does.
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| seen.insert(s.clone()));
    servers.truncate(3);
    let mut seen = std::collections::HashSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    searches.truncate(32);
    let mut out = String::new();
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    (out, warning)
}

/// (nameservers, search domains, options) of a resolv.conf text.
fn parse_resolv(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
            Some("search" | "domain") => {
                searches = words.map(str::to_owned).collect();
            }
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (servers, searches, options)
}

fn read_host_file(path: &str) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_HOST_FILE).read_to_string(&mut text);
    }
    text
}

/// Writes the pod's `hosts`, `resolv.conf` and `hostname` into `pod_dir` and returns their
/// mounts (and the DNS fallback warning, if any). A container mounting its own file at one of
/// these paths keeps it. Blocking.
pub fn write_pod_files(
    pod: &Pod,
    pod_dir: &Path,
    hostname: &str,
    ip: Option<IpAddr>,
    cluster: Option<&ClusterDnsConfig>,
) -> std::io::Result<(Vec<VolumeMount>, Option<String>)> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let hosts = if host_network {
        read_host_file(HOST_HOSTS) + &host_aliases(pod)
    } else {
        let domain = cluster.map_or(CLUSTER_DOMAIN, |c| c.domain.as_str());
        hosts_file(pod, hostname, ip, domain)
    };
    let (resolv, warning) = resolv_conf(pod, &read_host_file(HOST_RESOLV_CONF), cluster);
    let files = [
        ("etc-hosts", "/etc/hosts", hosts),
        ("resolv.conf", "/etc/resolv.conf", resolv),
        ("etc-hostname", "/etc/hostname", format!("{hostname}\n")),
    ];
    let mut mounts = Vec::new();
    for (file, destination, text) in files {
        let path = pod_dir.join(file);
        let tmp = pod_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        mounts.push(VolumeMount {
            destination: destination.to_owned(),
            source: path,
            read_only: false,
        });
    }
    Ok((mounts, warning))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn hosts_name_the_pod_and_its_aliases() {
        let ip: IpAddr = "10.88.0.7".parse().unwrap();
        let plain = hosts_file(
            &pod(json!({"containers": []})),
            "web",
            Some(ip),
            CLUSTER_DOMAIN,
        );
        assert!(plain.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(plain.ends_with("10.88.0.7\tweb\n"), "{plain}");
        let sub = hosts_file(
            &pod(json!({"subdomain": "db", "containers": [],
                "hostAliases": [{"ip": "10.0.0.9", "hostnames": ["a", "b"]}]})),
            "web",
            Some(ip),
            "corp.example",
        );
        assert!(
            sub.contains("10.88.0.7\tweb.db.shop.svc.corp.example\tweb\n"),
            "{sub}"
        );
        assert!(
            sub.ends_with("# Entries added by HostAliases.\n10.0.0.9\ta\tb\n"),
            "{sub}"
        );
    }

    #[test]
    fn resolv_conf_follows_the_dns_policy() {
        let host =
            "# generated\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch lan\noptions edns0\n";
        let (text, warn) = resolv_conf(&pod(json!({"containers": []})), host, None);
        assert_eq!(
            text,
            "nameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch lan\noptions edns0\n"
        );
        assert!(warn.unwrap().contains("Falling back to \"Default\" policy"));
        let (text, warn) = resolv_conf(
            &pod(json!({"dnsPolicy": "Default", "containers": []})),
            host,
            None,
        );
        assert!(warn.is_none());
        assert!(text.starts_with("nameserver 1.1.1.1\n"));
        let (text, _) = resolv_conf(
            &pod(json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {
                "nameservers": ["9.9.9.9"], "searches": ["x.local"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}})),
            host,
            None,
        );
        assert_eq!(
            text,
            "nameserver 9.9.9.9\nsearch x.local\noptions ndots:2 rotate\n"
        );
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_as_the_kubelet_writes_it() {
        let host = "nameserver 1.1.1.1\nsearch lan corp\noptions edns0\n";
        let dns = ClusterDnsConfig {
            nameserver: "10.88.0.1".parse().unwrap(),
            domain: "cluster.local".into(),
        };
        let cluster = "nameserver 10.88.0.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local lan corp\noptions ndots:5\n";
        // (case, pod spec, resolv.conf wanted)
        let rows = [
            ("ClusterFirst is the default", json!({"containers": []}), cluster.to_owned()),
            (
                "ClusterFirst",
                json!({"dnsPolicy": "ClusterFirst", "containers": []}),
                cluster.to_owned(),
            ),
            (
                "Default keeps the host's",
                json!({"dnsPolicy": "Default", "containers": []}),
                host.to_owned(),
            ),
            (
                "hostNetwork with ClusterFirst keeps the host's",
                json!({"hostNetwork": true, "containers": []}),
                host.to_owned(),
            ),
            (
                "ClusterFirstWithHostNet",
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []}),
                cluster.to_owned(),
            ),
            (
                "dnsConfig merged: servers and searches appended, options by name",
                json!({"containers": [], "dnsConfig": {"nameservers": ["9.9.9.9", "10.88.0.1"],
                    "searches": ["x.local", "lan"],
                    "options": [{"name": "ndots", "value": "2"}, {"name": "single-request"}]}}),
                "nameserver 10.88.0.1\nnameserver 9.9.9.9\nsearch shop.svc.cluster.local svc.cluster.local cluster.local lan corp x.local\noptions ndots:2 single-request\n".to_owned(),
            ),
            (
                "None takes dnsConfig alone",
                json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {"nameservers": ["9.9.9.9"]}}),
                "nameserver 9.9.9.9\n".to_owned(),
            ),
        ];
        for (case, spec, want) in rows {
            let (text, warning) = resolv_conf(&pod(spec), host, Some(&dns));
            assert_eq!(text, want, "{case}");
            assert!(warning.is_none(), "{case}");
        }
    }
}
