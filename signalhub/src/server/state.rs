//! What every part of the server shares: the configuration, the registry of subscriptions, the
//! metrics and limits, and the shutdown signals. Built once by `Hub`, handed to each connection.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::channels::Registry;
use super::config::HubConfig;
use super::limits::{Limits, PathLimits};
use super::metrics::Metrics;

/// What every part of the server shares.
pub(crate) struct HubState {
    pub(crate) config: HubConfig,
    pub(crate) path_limits: PathLimits,
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Arc<Limits>,
    /// Cancelled when shutdown starts: no new connections, streams asked to finish.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the grace period is over: every connection is closed.
    pub(crate) force: CancellationToken,
    pub(crate) tracker: TaskTracker,
}
