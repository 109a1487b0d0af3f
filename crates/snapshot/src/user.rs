//! Users of an attached cache disk and how their liveness is checked after a restart.

use serde::{Deserialize, Serialize};

/// One user of an attached cache: a name (e.g. `pod/<uid>/<container>`) and the process whose
/// life bounds the use. When that process is gone, recovery drops the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheUser {
    /// Unique name of the user.
    pub name: String,
    /// Process id of the owning process.
    pub pid: u32,
    /// Start time of that process (clock ticks since boot), so a reused pid is not mistaken for it.
    pub start_time: u64,
}

impl CacheUser {
    /// A user owned by the calling process.
    pub fn current_process(name: impl Into<String>) -> Self {
        let pid = std::process::id();
        CacheUser {
            name: name.into(),
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        }
    }

    /// A user owned by process `pid`.
    pub fn for_process(name: impl Into<String>, pid: u32) -> Self {
        CacheUser {
            name: name.into(),
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the owning process still runs.
    pub fn is_alive(&self) -> bool {
        match process_start_time(self.pid) {
            Some(t) => self.start_time == 0 || t == self.start_time,
            None => false,
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`; `None` when the process does not exist or is a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state).
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_dead_pid_is_not() {
        assert!(CacheUser::current_process("me").is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let user = CacheUser::for_process("child", pid);
        child.wait().unwrap();
        assert!(!user.is_alive());
    }
}
