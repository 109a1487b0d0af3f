//! The cache controller (DESIGN §3): a kube-rs `Controller` on ImageCache that assigns the cache
//! id, builds the disk (`Pending → Creating → Ready | Failed`, rebuilds on spec changes:
//! `Updating → Ready | UpdateFailed`; which changes build is [`spec_change`]'s rule, in any
//! phase), deletes expired caches and, through a finalizer, removes a deleted cache's disks once
//! no pod uses them. Status is computed by [`status`], expiry by [`retention`]. It talks to the API only through the
//! `kube::Client` of the [`Context`], so the same code runs in `imc server` and on a cluster.
//!
//! Time: retention compares against [`crate::manager::Settings::now`], the wall clock plus
//! `Settings::clock_offset` (hidden `imc server --clock-offset-seconds`), so tests can move time
//! forward. Sizes: `imageCacheSize` GiB are `Settings::gib_bytes` bytes each (hidden
//! `imc server --gib-bytes`; `1 << 30` unless a test shrinks it).

pub mod artifact_push;
mod build;
mod controller;
pub mod disk;
mod error;
pub mod events;
pub mod fetch;
mod progress;
mod pull_config;
pub mod retention;
mod reuse;
pub mod spec_change;
pub mod status;
pub mod step;

use std::sync::Arc;

use futures::StreamExt;
use imc_api::ImageCache;
use kube::Api;
use kube::runtime::{Controller, watcher};

pub use controller::CacheController;
pub use disk::{current_disk, disk_path};
pub use error::CacheError;
pub use events::CacheEvents;

use crate::manager::Context;

/// The finalizer that keeps a deleted cache until its disks are removed.
pub const FINALIZER: &str = "imc.dev/cache-disk";
/// Name of this controller in events.
pub const CONTROLLER_NAME: &str = "imc-cache-controller";
/// How many random ids to try before accepting one (collisions are astronomically rare).
const ID_ATTEMPTS: usize = 8;

/// Runs the cache controller until the watch stream ends.
pub async fn run(ctx: Arc<Context>) {
    let attacher = match imc_snapshot::Attacher::new(&ctx.settings.data_dir) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cache controller cannot start");
            return;
        }
    };
    let events = CacheEvents::new(ctx.client.clone(), CONTROLLER_NAME, &ctx.settings.node_name);
    let api: Api<ImageCache> = Api::all(ctx.client.clone());
    let state = Arc::new(CacheController::new(ctx, events, attacher));
    tracing::info!("cache controller started");
    Controller::new(api, watcher::Config::default())
        .run(
            CacheController::reconcile,
            CacheController::error_policy,
            state,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "cache reconcile");
            }
        })
        .await;
}
