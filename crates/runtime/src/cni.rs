//! Pod networking through the standard CNI plugins (Debian's `containernetworking-plugins`):
//! a network configuration list (by default imc's own: `bridge` with `host-local` IPAM, then
//! `portmap`; masquerade for the whole pod range by [`crate::PodMasquerade`]) is run against each pod's network namespace, as containerd's CRI
//! plugin runs it through libcni: `ADD` plugin by plugin with the previous result, `DEL` in
//! reverse with the result of the `ADD`.
//!
//! Plugins are external programs: each runs with a time limit and its output is bounded. Every
//! call blocks (it waits for a process): run it on the blocking pool.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::RuntimeError;

/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest output read from a plugin, and the largest configuration list read.
const MAX_OUTPUT: u64 = 1 << 20;
/// The interface the pod sees.
pub const POD_INTERFACE: &str = "eth0";

/// One `hostPort` of a pod, as the `portmap` plugin's `portMappings` capability takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port on the host.
    pub host_port: u16,
    /// The port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The host address to bind, empty for all.
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty", default)]
    pub host_ip: String,
}

/// A CNI network: its configuration list and where its plugins are.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    /// The parsed `.conflist`.
    pub conflist: Value,
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
}

/// What `ADD` gave a pod, kept in its directory so that `DEL` works even after the
/// configuration changed or the process restarted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// The configuration list the pod was added with.
    pub conflist: Value,
    /// Where the plugins were.
    pub bin_dirs: Vec<PathBuf>,
    /// The final CNI result.
    pub result: Value,
    /// The port mappings given to `portmap`.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

impl Attachment {
    /// The pod's addresses, from the result's `ips`.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect()
    }
}

/// imc's default network: a bridge (`bridge`, gateway on the host) with addresses from `cidr`
/// (`host-local` IPAM keeping its leases under `ipam_dir`), then `portmap` for host ports.
/// Outbound traffic is masqueraded by [`crate::PodMasquerade`] for the whole range, which the
/// server installs with this list, rather than by the plugin's per-pod `ipMasq` chain.
pub fn default_conflist(bridge: &str, cidr: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "imc",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

fn cni_error(action: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Cni {
        action: action.to_owned(),
        message: message.into(),
    }
}

impl CniNetwork {
    /// Reads a `.conflist` (bounded, a regular file).
    pub fn load(path: &Path, bin_dirs: Vec<PathBuf>) -> Result<Self, RuntimeError> {
        let file = std::fs::File::open(path).map_err(RuntimeError::io("opening", path))?;
        let meta = file.metadata().map_err(RuntimeError::io("reading", path))?;
        if !meta.is_file() || meta.len() > MAX_OUTPUT {
            return Err(cni_error(
                "loading the network configuration",
                format!("{} is not a regular file of at most 1 MiB", path.display()),
            ));
        }
        let mut text = String::new();
        file.take(MAX_OUTPUT)
            .read_to_string(&mut text)
            .map_err(RuntimeError::io("reading", path))?;
        let conflist: Value = serde_json::from_str(&text).map_err(|e| {
            cni_error(
                "loading the network configuration",
                format!("{}: {e}", path.display()),
            )
        })?;
        let network = CniNetwork { conflist, bin_dirs };
        network.check()?;
        Ok(network)
    }

    fn check(&self) -> Result<(), RuntimeError> {
        let bad = |m: &str| cni_error("loading the network configuration", m);
        if self.conflist["name"].as_str().is_none_or(str::is_empty) {
            return Err(bad("the configuration list has no name"));
        }
        let plugins = self.conflist["plugins"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("the configuration list has no plugins"))?;
        for p in plugins {
            let t = p["type"].as_str().unwrap_or("");
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(bad(&format!(
                    "plugin type {t:?} is not a plain program name"
                )));
            }
        }
        Ok(())
    }

    /// Adds the pod `id` whose network namespace is `netns`: runs every plugin's `ADD`.
    pub fn add(
        &self,
        id: &str,
        netns: &Path,
        port_mappings: &[PortMapping],
    ) -> Result<Attachment, RuntimeError> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let config = self.plugin_config(plugin, prev.as_ref(), port_mappings);
            let result = run_plugin(&self.bin_dirs, "ADD", id, netns, &config)?;
            prev = Some(result);
        }
        Ok(Attachment {
            conflist: self.conflist.clone(),
            bin_dirs: self.bin_dirs.clone(),
            result: prev.unwrap_or(Value::Null),
            port_mappings: port_mappings.to_vec(),
        })
    }

    fn plugins(&self) -> impl DoubleEndedIterator<Item = &Value> {
        self.conflist["plugins"].as_array().into_iter().flatten()
    }

    /// One plugin's configuration as libcni builds it: the plugin's object with the list's
    /// `name` and `cniVersion`, the previous result, and the runtime values its capabilities ask
    /// for.
    fn plugin_config(
        &self,
        plugin: &Value,
        prev: Option<&Value>,
        port_mappings: &[PortMapping],
    ) -> Value {
        let mut config = plugin.clone();
        config["name"] = self.conflist["name"].clone();
        config["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            config["prevResult"] = prev.clone();
        }
        if plugin["capabilities"]["portMappings"] == json!(true) {
            config["runtimeConfig"] = json!({ "portMappings": port_mappings });
        }
        config
    }
}

impl Attachment {
    /// Removes the pod from the network it was added to: every plugin's `DEL`, last first.
    /// Goes on past a failing plugin and reports the first failure.
    pub fn delete(&self, id: &str, netns: Option<&Path>) -> Result<(), RuntimeError> {
        let network = CniNetwork {
            conflist: self.conflist.clone(),
            bin_dirs: self.bin_dirs.clone(),
        };
        network.check()?;
        let mut first_error = None;
        for plugin in network.plugins().rev() {
            let config = network.plugin_config(plugin, Some(&self.result), &self.port_mappings);
            let ns = netns.unwrap_or(Path::new(""));
            if let Err(e) = run_plugin(&network.bin_dirs, "DEL", id, ns, &config) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs one plugin with `config` on stdin and the CNI environment; its JSON result.
fn run_plugin(
    bin_dirs: &[PathBuf],
    command: &str,
    id: &str,
    netns: &Path,
    config: &Value,
) -> Result<Value, RuntimeError> {
    let kind = config["type"].as_str().unwrap_or_default();
    let action = format!("CNI {command} ({kind})");
    let binary = bin_dirs
        .iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            cni_error(
                &action,
                format!("plugin {kind:?} not found in {bin_dirs:?}"),
            )
        })?;
    let path = std::env::join_paths(bin_dirs).unwrap_or_default();
    let mut child = Command::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", POD_INTERFACE)
        .env("CNI_PATH", &path)
        // Plugins run iptables and ip: they need a PATH of their own.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cni_error(&action, format!("running {}: {e}", binary.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config.to_string().as_bytes());
    }
    // Output is read on threads so a chatty plugin never blocks on a full pipe.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(MAX_OUTPUT).read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(cni_error(
                    &action,
                    format!("did not finish within {} s", PLUGIN_TIMEOUT.as_secs()),
                ));
            }
            Err(e) => return Err(cni_error(&action, e.to_string())),
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        // A failing plugin prints a CNI error object on stdout.
        let message = serde_json::from_slice::<Value>(&out)
            .ok()
            .and_then(|v| {
                let msg = v["msg"].as_str()?.to_owned();
                Some(match v["details"].as_str() {
                    Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                    _ => msg,
                })
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&err).trim().to_owned());
        return Err(cni_error(&action, message));
    }
    if out.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out).map_err(|e| cni_error(&action, format!("invalid result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_configs_chain_like_libcni() {
        let n = CniNetwork {
            conflist: default_conflist("imc0", "10.88.0.0/16", Path::new("/d/ipam")),
            bin_dirs: vec![],
        };
        let plugins: Vec<&Value> = n.plugins().collect();
        let first = n.plugin_config(plugins[0], None, &[]);
        assert_eq!(first["name"], "imc");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert_eq!(first["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        let pm = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        };
        let second = n.plugin_config(plugins[1], Some(&json!({"ips": []})), &[pm]);
        assert_eq!(second["prevResult"], json!({"ips": []}));
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        for bad in [
            json!({"plugins": [{"type": "bridge"}]}),
            json!({"name": "x", "plugins": []}),
            json!({"name": "x", "plugins": [{"type": "../../bin/sh"}]}),
        ] {
            let n = CniNetwork {
                conflist: bad.clone(),
                bin_dirs: vec![],
            };
            assert!(n.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_come_from_the_result() {
        let a = Attachment {
            conflist: json!({}),
            bin_dirs: vec![],
            result: json!({"ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1"}]}),
            port_mappings: vec![],
        };
        assert_eq!(a.ips(), vec!["10.88.0.5".parse::<IpAddr>().unwrap()]);
    }
}
