//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it,
//! so several replicas of `imc controller` can run and exactly one reconciles.
//!
//! A candidate takes the Lease when nobody holds it, or when the record it last saw has not
//! changed for the lease's duration, measured on its own clock from when it first saw that
//! record (never by comparing another process's `renewTime` with the local clock, so clock skew
//! between machines does not matter). Every write carries the `resourceVersion` read, so two
//! candidates never both win. The leader renews every retry period; when it could not renew for
//! the renew deadline it has lost the lease and must stop reconciling at once (the caller exits,
//! and its Deployment restarts it as a candidate).

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{debug, info, warn};

/// The timings of an election (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a record must stay unchanged before a candidate may take the lease.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate of one election.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
}

/// The record last seen and when this candidate first saw it.
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    at: Instant,
}

impl LeaderElection {
    /// A candidate named `identity` for the Lease `name` in `namespace`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timings,
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) {
        let mut observed: Option<Observed> = None;
        let mut told = false;
        loop {
            match self.try_acquire_or_renew(&mut observed).await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => {
                    if !told {
                        let holder = observed.as_ref().and_then(|o| o.holder.clone());
                        info!(lease = %self.name, holder = ?holder, "waiting to become the leader");
                        told = true;
                    }
                }
                Err(e) => warn!(lease = %self.name, error = %e, "trying to take the lease"),
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Renews the lease every retry period while this candidate leads; returns when it could
    /// not renew for the renew deadline (leadership lost: stop at once).
    pub async fn keep(&self) {
        let mut observed = None;
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            match self.try_acquire_or_renew(&mut observed).await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another candidate holds the lease");
                    return;
                }
                Err(e) => warn!(lease = %self.name, error = %e, "renewing the lease"),
            }
            if last_renewed.elapsed() >= self.timings.renew_deadline {
                warn!(lease = %self.name, "could not renew the lease within the renew deadline");
                return;
            }
        }
    }

    /// Gives the lease up (a graceful stop), so another candidate need not wait for it to
    /// expire: clears the holder if this candidate still holds it.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the lease"),
            Err(e) => warn!(lease = %self.name, error = %e, "releasing the lease"),
        }
    }

    /// One attempt: whether this candidate holds the lease afterwards.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.timings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew_time = spec.renew_time.as_ref().map(|t| t.0);
        let changed = observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew_time != renew_time);
        if changed {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew_time,
                at: Instant::now(),
            });
        }
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timings.lease_duration, Duration::from_secs);
        let expired = observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= held_for);
        if !mine && holder.is_some() && !expired {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            debug!(lease = %self.name, previous = ?holder, "taking the lease");
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // The resourceVersion read makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                let spec = l.spec.unwrap_or_default();
                *observed = Some(Observed {
                    holder: spec.holder_identity,
                    renew_time: spec.renew_time.map(|t| t.0),
                    at: Instant::now(),
                });
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
