//! The machine a benchmark ran on, recorded beside its figures.

use std::process::Command;

use serde::Serialize;

/// CPU, memory, kernel and versions of the tools measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// UTC time of the run (RFC 3339).
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: u64,
    pub kernel: String,
    pub containerd: String,
    /// `git describe` of the tree the harness was run from (the imc binary may differ).
    pub harness_commit: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Self {
            date: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: (mem_kib + (1 << 19)) >> 20,
            kernel: output("uname", &["-r"]),
            containerd: output("containerd", &["--version"]),
            harness_commit: output("git", &["describe", "--always", "--dirty"]),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} · {} ({} cores) · {} GiB · Linux {} · {} · harness tree {}",
            self.date,
            self.cpu,
            self.cores,
            self.memory_gib,
            self.kernel,
            self.containerd,
            self.harness_commit
        )
    }
}

/// The 1, 5 and 15 minute load averages (other work on the shared machine skews figures).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
