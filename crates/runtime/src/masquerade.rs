//! Outbound NAT for imc's default pod network: one iptables rule set for the whole pod range,
//! installed when the server starts, instead of the `bridge` plugin's `ipMasq` (a chain of its
//! own per pod, made and removed with some ten `iptables` runs on every pod start and delete).
//!
//! The rules say what `ipMasq` says, for every pod at once: traffic from the pod range to
//! anywhere but the pod range and multicast leaves with the host's address.
//!
//! ```text
//! -t nat -A POSTROUTING -s <range> -m comment --comment "imc pods on <bridge>" -j IMC-MASQ-<bridge>
//! -t nat -A IMC-MASQ-<bridge> -d <range> -j RETURN
//! -t nat -A IMC-MASQ-<bridge> -d 224.0.0.0/4 -j RETURN
//! -t nat -A IMC-MASQ-<bridge> -j MASQUERADE
//! ```

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::error::RuntimeError;

/// The masquerade of one pod range, as installed. Blocking methods (they run `iptables`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMasquerade {
    chain: String,
    range: String,
    comment: String,
}

impl PodMasquerade {
    /// The rules for pods of `range` (an IPv4 CIDR) on `bridge` (an interface name), checked.
    pub fn new(bridge: &str, range: &str) -> Result<Self, RuntimeError> {
        let bad = |why: String| RuntimeError::Cni {
            action: "setting up the pod network's masquerade".into(),
            message: why,
        };
        let plain = !bridge.is_empty()
            && bridge.len() <= 15
            && bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(bad(format!("{bridge:?} is not an interface name")));
        }
        let (ip, bits) = range
            .split_once('/')
            .ok_or_else(|| bad(format!("{range:?} is not an IPv4 range")))?;
        let ok = ip.parse::<Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32);
        if !ok {
            return Err(bad(format!("{range:?} is not an IPv4 range")));
        }
        Ok(PodMasquerade {
            chain: format!("IMC-MASQ-{bridge}"),
            range: range.to_owned(),
            comment: format!("imc pods on {bridge}"),
        })
    }

    /// Installs the rules (again): the chain is made or emptied and refilled, and the jump to it
    /// added unless present. Idempotent, so a start after a crash finds them as it left them.
    pub fn install(&self) -> Result<(), RuntimeError> {
        let (made, stderr) = self.run(&["-N", &self.chain])?;
        if !made && !self.chain_exists()? {
            return Err(failed(&["-N", &self.chain], &stderr));
        }
        self.must(&["-F", &self.chain])?;
        self.must(&["-A", &self.chain, "-d", &self.range, "-j", "RETURN"])?;
        self.must(&["-A", &self.chain, "-d", "224.0.0.0/4", "-j", "RETURN"])?;
        self.must(&["-A", &self.chain, "-j", "MASQUERADE"])?;
        if !self.run(&self.jump("-C"))?.0 {
            self.must(&self.jump("-A"))?;
        }
        Ok(())
    }

    /// Removes the rules: every jump to the chain, then the chain. What is already gone is fine.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        // A crash between two installs could have left the jump twice.
        for _ in 0..8 {
            if !self.run(&self.jump("-D"))?.0 {
                break;
            }
        }
        if self.chain_exists()? {
            self.must(&["-F", &self.chain])?;
            self.must(&["-X", &self.chain])?;
        }
        Ok(())
    }

    /// Whether the chain exists in the nat table.
    fn chain_exists(&self) -> Result<bool, RuntimeError> {
        Ok(self.run(&["-S", &self.chain])?.0)
    }

    fn jump<'a>(&'a self, op: &'a str) -> [&'a str; 10] {
        [
            op,
            "POSTROUTING",
            "-s",
            &self.range,
            "-m",
            "comment",
            "--comment",
            &self.comment,
            "-j",
            &self.chain,
        ]
    }

    fn must(&self, args: &[&str]) -> Result<(), RuntimeError> {
        match self.run(args)? {
            (true, _) => Ok(()),
            (false, stderr) => Err(failed(args, &stderr)),
        }
    }

    /// Runs `iptables -w -t nat ARGS`: whether it succeeded, and its error output.
    fn run(&self, args: &[&str]) -> Result<(bool, String), RuntimeError> {
        let out = Command::new("iptables")
            .args(["-w", "5", "-t", "nat"])
            .args(args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RuntimeError::Cni {
                action: "setting up the pod network's masquerade".into(),
                message: format!("running iptables: {e}"),
            })?;
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.truncate(1024);
        Ok((out.status.success(), stderr))
    }
}

fn failed(args: &[&str], stderr: &str) -> RuntimeError {
    RuntimeError::Cni {
        action: "setting up the pod network's masquerade".into(),
        message: format!("iptables -t nat {}: {}", args.join(" "), stderr.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges_are_checked() {
        assert!(PodMasquerade::new("imc0", "10.88.0.0/16").is_ok());
        for (bridge, range) in [
            ("imc0", "10.88.0.0"),
            ("imc0", "10.88.0.0/40"),
            ("imc0", "fd00::/64"),
            ("imc0", "10.88.0.0/16 -j ACCEPT"),
            ("", "10.88.0.0/16"),
            ("a-name-longer-than-15", "10.88.0.0/16"),
            ("imc0 -j DROP", "10.88.0.0/16"),
        ] {
            assert!(
                PodMasquerade::new(bridge, range).is_err(),
                "{bridge:?} {range:?} accepted"
            );
        }
    }

    /// Installs, reinstalls and removes real rules (for a range no test network uses).
    #[test]
    fn install_is_idempotent_and_remove_leaves_nothing() {
        let m = PodMasquerade::new("imcmasqtest", "10.254.77.0/24").unwrap();
        let rules = || {
            let out = Command::new("iptables-save")
                .args(["-t", "nat"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("IMC-MASQ-imcmasqtest"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        m.install().unwrap();
        let first = rules();
        m.install().unwrap();
        assert_eq!(rules(), first, "a second install changed the rules");
        assert!(
            first
                .iter()
                .any(|l| l.contains("-A POSTROUTING -s 10.254.77.0/24")
                    && l.contains("-j IMC-MASQ-imcmasqtest")),
            "{first:#?}"
        );
        assert!(
            first.iter().any(|l| l.ends_with("-j MASQUERADE")),
            "{first:#?}"
        );
        m.remove().unwrap();
        assert!(rules().is_empty(), "{:#?}", rules());
        m.remove().unwrap();
    }
}
