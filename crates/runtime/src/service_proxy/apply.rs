//! Installs the rule set of [`super::rules`] on the host: one `iptables-restore --noflush` per
//! sync (each table replaced atomically, other programs' chains untouched), the jumps from the
//! built-in chains added once at start, and everything removed at a graceful stop.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::rules::{ChainNames, RuleSet, ServicePort, rules};
use crate::error::RuntimeError;

/// The most of a command's output kept (for errors and `iptables-save` scans).
const MAX_OUTPUT: usize = 4 << 20;

/// Where the kernel allows routing 127.0.0.0/8 addresses off loopback: what a NodePort on
/// 127.0.0.1 needs once DNAT'd to a pod (kube-proxy sets it too).
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// The Service data path of one server, as installed. Blocking methods (they run `iptables`).
#[derive(Debug)]
pub struct ServiceProxy {
    names: ChainNames,
    comment: String,
    /// What is installed; held through each change so syncs and the removal never overlap.
    installed: Mutex<Installed>,
}

/// The chains the last sync (or the start's scan) left, and whether the rules were removed
/// for good (a sync racing the stop then does nothing).
#[derive(Debug, Default)]
struct Installed {
    nat: BTreeSet<String>,
    filter: BTreeSet<String>,
    removed: bool,
}

impl ServiceProxy {
    /// The data path of the server whose pods are on `bridge` (an interface name), checked.
    pub fn new(bridge: &str) -> Result<Self, RuntimeError> {
        let plain = !bridge.is_empty()
            && bridge.len() <= 15
            && bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(error(format!("{bridge:?} is not an interface name")));
        }
        Ok(ServiceProxy {
            names: ChainNames::for_bridge(bridge),
            comment: format!("imc services of {bridge}"),
            installed: Mutex::new(Default::default()),
        })
    }

    /// The names of this server's chains.
    pub fn names(&self) -> &ChainNames {
        &self.names
    }

    /// Installs an empty rule set (removing what a crashed run left), lets NodePorts answer on
    /// 127.0.0.1 (`route_localnet`) and adds the jumps from the built-in chains. Idempotent.
    pub fn install(&self) -> Result<(), RuntimeError> {
        {
            let (nat, filter) = self.existing()?;
            *self.lock() = Installed {
                nat,
                filter,
                removed: false,
            };
        }
        self.sync(&[])?;
        std::fs::write(ROUTE_LOCALNET, "1")
            .map_err(|e| error(format!("enabling {ROUTE_LOCALNET}: {e}")))?;
        self.ensure_jumps()
    }

    /// Adds the jumps from the built-in chains that are missing (all of them at start; any
    /// that another program flushed since). Idempotent.
    pub fn ensure_jumps(&self) -> Result<(), RuntimeError> {
        if self.lock().removed {
            return Ok(());
        }
        for (table, chain, target, extra) in self.jumps() {
            let mut rule = vec![chain];
            rule.extend(extra.iter().map(String::as_str));
            rule.extend(["-m", "comment", "--comment", &self.comment, "-j", &target]);
            if !iptables(table, "-C", &rule)?.0 {
                let mut insert = rule.clone();
                insert.insert(1, "1");
                let (ok, stderr) = iptables(table, "-I", &insert)?;
                if !ok {
                    return Err(error(format!(
                        "iptables -t {table} -I {}: {}",
                        insert.join(" "),
                        stderr.trim()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Replaces the rules with those of `ports`: one `iptables-restore --noflush` that refills
    /// this server's chains and deletes those no longer used. Returns the set installed (its
    /// `skipped` lists the ports left out, and why).
    pub fn sync(&self, ports: &[ServicePort]) -> Result<RuleSet, RuntimeError> {
        let set = rules(&self.names, ports);
        let mut installed = self.lock();
        if installed.removed {
            return Ok(set);
        }
        let stale = |old: &BTreeSet<String>, new: &[String]| -> Vec<String> {
            old.iter().filter(|c| !new.contains(c)).cloned().collect()
        };
        let stale_nat = stale(&installed.nat, &set.nat_chains);
        let stale_filter = stale(&installed.filter, &set.filter_chains);
        restore(&set.restore_text(&stale_nat, &stale_filter))?;
        installed.nat = set.nat_chains.iter().cloned().collect();
        installed.filter = set.filter_chains.iter().cloned().collect();
        Ok(set)
    }

    /// Removes the jumps, then every chain of this server (what is already gone is fine);
    /// later syncs do nothing until the next [`ServiceProxy::install`].
    pub fn remove(&self) -> Result<(), RuntimeError> {
        let mut installed = self.lock();
        installed.removed = true;
        for (table, chain, target, extra) in self.jumps() {
            let mut rule = vec![chain];
            rule.extend(extra.iter().map(String::as_str));
            rule.extend(["-m", "comment", "--comment", &self.comment, "-j", &target]);
            // A crash between two installs could have left a jump twice.
            for _ in 0..8 {
                if !iptables(table, "-D", &rule)?.0 {
                    break;
                }
            }
        }
        let (nat, filter) = self.existing()?;
        let mut text = String::new();
        for (table, chains) in [("nat", &nat), ("filter", &filter)] {
            text.push_str(&format!("*{table}\n"));
            for c in chains {
                text.push_str(&format!(":{c} - [0:0]\n"));
            }
            for c in chains {
                text.push_str(&format!("-X {c}\n"));
            }
            text.push_str("COMMIT\n");
        }
        restore(&text)?;
        installed.nat.clear();
        installed.filter.clear();
        Ok(())
    }

    /// The jumps into this server's chains: (table, built-in chain, target, match).
    fn jumps(&self) -> Vec<(&'static str, &'static str, String, Vec<String>)> {
        let new: Vec<String> = ["-m", "conntrack", "--ctstate", "NEW"]
            .map(str::to_owned)
            .to_vec();
        vec![
            ("nat", "PREROUTING", self.names.services(), vec![]),
            ("nat", "OUTPUT", self.names.services(), vec![]),
            ("nat", "POSTROUTING", self.names.postrouting(), vec![]),
            ("filter", "INPUT", self.names.firewall(), vec![]),
            ("filter", "INPUT", self.names.reject(), new.clone()),
            ("filter", "FORWARD", self.names.reject(), new.clone()),
            ("filter", "OUTPUT", self.names.reject(), new),
        ]
    }

    /// This server's chains present on the host now: (nat, filter).
    fn existing(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), RuntimeError> {
        let mut found = (BTreeSet::new(), BTreeSet::new());
        for table in ["nat", "filter"] {
            let out = run("iptables-save", &["-t", table], None)?;
            let text = String::from_utf8_lossy(&out);
            for line in text.lines() {
                let Some(chain) = line.strip_prefix(':').and_then(|l| l.split(' ').next()) else {
                    continue;
                };
                if self.names.owns(chain) {
                    let set = if table == "nat" {
                        &mut found.0
                    } else {
                        &mut found.1
                    };
                    set.insert(chain.to_owned());
                }
            }
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Installed> {
        self.installed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn error(message: String) -> RuntimeError {
    RuntimeError::Cni {
        action: "programming the Service data path".into(),
        message,
    }
}

/// Feeds `text` to `iptables-restore --noflush`.
fn restore(text: &str) -> Result<(), RuntimeError> {
    run("iptables-restore", &["-w", "5", "--noflush"], Some(text)).map(|_| ())
}

/// Runs `iptables -w 5 -t TABLE OP ARGS`: whether it succeeded, and its error output.
fn iptables(table: &str, op: &str, args: &[&str]) -> Result<(bool, String), RuntimeError> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", table, op])
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| error(format!("running iptables: {e}")))?;
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    stderr.truncate(1024);
    Ok((out.status.success(), stderr))
}

/// Runs `program args` with `stdin`; its output, or an error carrying its error output.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Vec<u8>, RuntimeError> {
    let mut child = Command::new(program)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| error(format!("running {program}: {e}")))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| error(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| error(format!("running {program}: {e}")))?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.truncate(2048);
        return Err(error(format!(
            "{program} {}: {}",
            args.join(" "),
            stderr.trim()
        )));
    }
    let mut stdout = out.stdout;
    stdout.truncate(MAX_OUTPUT);
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_proxy::{Endpoint, Protocol};

    fn ours(proxy: &ServiceProxy) -> Vec<String> {
        let mut lines = Vec::new();
        for table in ["nat", "filter"] {
            let out = run("iptables-save", &["-t", table], None).unwrap();
            lines.extend(
                String::from_utf8_lossy(&out)
                    .lines()
                    .filter(|l| l.contains(&format!("-{}", proxy.names().tag())))
                    .map(str::to_owned),
            );
        }
        lines
    }

    /// Installs, syncs and removes real rules (a bridge and addresses no test network uses).
    #[test]
    fn install_sync_and_remove_leave_the_host_as_found() {
        let proxy = ServiceProxy::new("imcproxytest").unwrap();
        proxy.install().unwrap();
        proxy.install().unwrap();
        let base = ours(&proxy);
        assert_eq!(
            base.iter()
                .filter(|l| l.starts_with("-A PREROUTING"))
                .count(),
            1,
            "{base:#?}"
        );
        let port = ServicePort {
            namespace: "default".into(),
            service: "web".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: Some("10.254.78.50".parse().unwrap()),
            port: 80,
            node_port: None,
            affinity_seconds: Some(60),
            endpoints: vec![Endpoint {
                ip: "10.254.79.2".parse().unwrap(),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
            }],
        };
        proxy.sync(std::slice::from_ref(&port)).unwrap();
        let with = ours(&proxy);
        assert!(
            with.iter()
                .any(|l| l.contains("--to-destination 10.254.79.2:8080")),
            "{with:#?}"
        );
        // A Service gone: its chains go too.
        proxy.sync(&[]).unwrap();
        let after = ours(&proxy);
        assert!(
            !after
                .iter()
                .any(|l| l.contains("IMC-SVC-") || l.contains("IMC-SEP-")),
            "{after:#?}"
        );
        proxy.sync(std::slice::from_ref(&port)).unwrap();
        // A jump another program deleted comes back with the next check.
        let services = proxy.names().services();
        let (deleted, _) = iptables(
            "nat",
            "-D",
            &[
                "PREROUTING",
                "-m",
                "comment",
                "--comment",
                &proxy.comment,
                "-j",
                &services,
            ],
        )
        .unwrap();
        assert!(deleted);
        proxy.ensure_jumps().unwrap();
        let jumps = |p: &ServiceProxy| {
            ours(p)
                .iter()
                .filter(|l| l.starts_with("-A PREROUTING"))
                .count()
        };
        assert_eq!(jumps(&proxy), 1);
        proxy.remove().unwrap();
        // Removed for good: neither a late sync nor a check puts anything back.
        proxy.sync(std::slice::from_ref(&port)).unwrap();
        proxy.ensure_jumps().unwrap();
        assert!(ours(&proxy).is_empty(), "{:#?}", ours(&proxy));
        proxy.remove().unwrap();
    }
}
