//! Cleaning up after a crash: containers and pods whose owning process is gone, then cache
//! disks nobody uses any more.

use std::fs;

use imc_snapshot::{CacheUser, RecoveryReport};
use serde::Serialize;
use tracing::warn;

use crate::container::{
    ContainerRecord, NEW_POD_PREFIX, POD_OWNER_FILE, RECORD_FILE, remove_container,
};
use crate::{PodSandbox, Runtime, RuntimeError};

/// What [`Runtime::recover`] cleaned.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeRecovery {
    /// runc ids of abandoned containers that were killed and removed.
    pub containers: Vec<String>,
    /// Uids of abandoned pods whose sandbox was removed.
    pub pods: Vec<String>,
    /// What the cache attacher cleaned.
    pub caches: RecoveryReport,
}

impl Runtime {
    /// Kills and removes containers whose owner died (e.g. `imc run` killed with -9), removes
    /// their pods' sandboxes, then lets the attacher detach disks left without live users.
    /// Safe to run while other imc processes run containers: only dead owners' state is touched.
    pub async fn recover(&self) -> Result<RuntimeRecovery, RuntimeError> {
        let mut report = RuntimeRecovery::default();
        let pods = match fs::read_dir(&self.pods_dir) {
            Ok(p) => p,
            Err(e) => return Err(RuntimeError::io("listing", &self.pods_dir)(e)),
        };
        for pod in pods.flatten() {
            let pod_dir = pod.path();
            let owner: Option<CacheUser> = read_json(&pod_dir.join(POD_OWNER_FILE));
            let pod_alive = owner.as_ref().is_some_and(|o| o.is_alive());
            if pod
                .file_name()
                .to_string_lossy()
                .starts_with(NEW_POD_PREFIX)
            {
                // A pod being created; abandoned only when its recorded owner is dead.
                if owner.is_some() && !pod_alive {
                    let _ = fs::remove_dir_all(&pod_dir);
                }
                continue;
            }
            let mut containers_left = 0;
            for c in fs::read_dir(&pod_dir).into_iter().flatten().flatten() {
                let dir = c.path();
                if !dir.is_dir() {
                    continue;
                }
                let Some(record) = read_json::<ContainerRecord>(&dir.join(RECORD_FILE)) else {
                    if !pod_alive {
                        let _ = fs::remove_dir_all(&dir);
                    }
                    continue;
                };
                if record.owner.is_alive() {
                    containers_left += 1;
                    continue;
                }
                warn!(container = %record.runc_id, "removing container abandoned by a dead imc process");
                let removed = remove_container(
                    self,
                    &record.runc_id,
                    &dir,
                    &record.rootfs,
                    record.cache.as_ref(),
                )
                .await;
                match removed {
                    Ok(()) => report.containers.push(record.runc_id),
                    // One stuck container must not keep the others (or the caches) uncleaned.
                    Err(e) => {
                        warn!(container = %record.runc_id, error = %e, "could not remove abandoned container");
                        containers_left += 1;
                    }
                }
            }
            if containers_left == 0 && !pod_alive {
                let uid = pod.file_name().to_string_lossy().into_owned();
                let sandbox = PodSandbox {
                    uid: uid.clone(),
                    dir: pod_dir,
                    hostname: String::new(),
                    namespaces: Default::default(),
                };
                sandbox.remove().await?;
                report.pods.push(uid);
            }
        }
        report.caches = self.attacher.recover()?;
        Ok(report)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}
