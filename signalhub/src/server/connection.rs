//! One accepted connection as the rest of the server sees it: who it is, how to close it from
//! outside, and what it holds (its place under the connection limits, shutdown's wait for it).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::limits::ConnectionGuard;
use super::metrics::Metrics;

/// One accepted connection, shared by its task and by anything serving it after an upgrade.
pub(crate) struct ConnectionContext {
    pub(crate) peer: SocketAddr,
    /// Closes the connection from outside.
    pub(crate) kill: CancellationToken,
    metrics: Arc<Metrics>,
    _guard: ConnectionGuard,
    /// Keeps shutdown waiting while any task of this connection lives.
    _task: TaskTrackerToken,
}

impl ConnectionContext {
    /// A connection just admitted: counted in `tcp_connections` until dropped.
    pub(crate) fn new(
        peer: SocketAddr,
        kill: CancellationToken,
        metrics: Arc<Metrics>,
        guard: ConnectionGuard,
        task: TaskTrackerToken,
    ) -> ConnectionContext {
        metrics.tcp_connections.inc();
        ConnectionContext {
            peer,
            kill,
            metrics,
            _guard: guard,
            _task: task,
        }
    }
}

impl Drop for ConnectionContext {
    fn drop(&mut self) {
        self.metrics.tcp_connections.dec();
    }
}
