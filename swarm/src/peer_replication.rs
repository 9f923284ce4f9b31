//! Replicating a log with one swarm peer, with the policy a swarm application needs around the
//! bare [`Replication`]: a short wait before starting, dropping a connection over which nothing
//! replicates, and closing the connection when replication ends, so that the swarm's next
//! announce can bring the peer back.
//!
//! ```no_run
//! # async fn example(log: swarm::Log, peer: swarm::SwarmPeer) {
//! use swarm::{PeerReplication, PeerReplicationOptions};
//!
//! let replication = PeerReplication::new(&log, PeerReplicationOptions::default());
//! let mut progress = replication.progress(); // counts, as the replication goes
//! match replication.run(&peer).await {
//!     Ok(summary) => {
//!         println!("sent {} received {}", summary.progress.nodes_sent, summary.progress.nodes_received);
//!         // The peer left (or gave up) before the exchange completed: not an error.
//!         if let Some(early) = summary.ended_early {
//!             println!("{early}");
//!         }
//!     }
//!     Err(error) => eprintln!("{error}"),
//! }
//! # }
//! ```
//!
//! A peer that ends its side before the exchange completes (a JS peer that refused one of our
//! nodes, or left) ends the replication with a summary whose
//! [`Summary::ended_early`](crate::log::replicate::Summary::ended_early) says where it stood, as
//! [`replicate`](crate::log::replicate::replicate) does. A peer that stalls is dropped after
//! [`ReplicateOptions::idle_timeout`] (60 s by default; a live peer that sends no keep-alives, as
//! JS peers do not, may stay quiet).

use std::time::Duration;

use tokio::sync::watch;

use crate::log::hyperlog::Log;
use crate::log::replicate::{Progress, ReplicateError, ReplicateOptions, Replication, Summary};
use crate::swarm::SwarmPeer;

/// How [`PeerReplication`] replicates with one peer.
#[derive(Debug, Clone)]
pub struct PeerReplicationOptions {
    /// How long to wait after the data channel opens before replicating. `@roamhq/wrtc` (the
    /// WebRTC of Node peers) can reorder a channel's very first messages, which breaks a JS
    /// hyperlog replication that starts at once. Default 250 ms.
    pub start_delay: Duration,
    /// A connection over which the other side has neither sent a node nor finished its initial
    /// sync this long after replication started is closed (after a glare, a pair of JS peers can
    /// end up connected with nothing flowing; the next announce retries). Default 10 s.
    pub first_traffic: Duration,
    /// The replication itself. Default: live (it follows new nodes until a side leaves).
    pub replicate: ReplicateOptions,
}

impl Default for PeerReplicationOptions {
    fn default() -> Self {
        PeerReplicationOptions {
            start_delay: Duration::from_millis(250),
            first_traffic: Duration::from_secs(10),
            replicate: ReplicateOptions {
                live: Some(true),
                ..ReplicateOptions::default()
            },
        }
    }
}

/// Why a [`PeerReplication`] ended without a summary.
#[derive(Debug, thiserror::Error)]
pub enum PeerReplicationError {
    /// The connection closed before or during replication (the other side left, or the swarm
    /// replaced the connection): not a failure of either side.
    #[error("the connection to the peer closed")]
    Closed,
    /// Nothing replicated within [`PeerReplicationOptions::first_traffic`]; the connection was
    /// closed so that it can be retried.
    #[error("no replication traffic from the peer within {0:?}; dropped the connection so that it can be retried")]
    Stalled(Duration),
    /// The replication failed (a protocol error, a bad signature, a storage error...).
    #[error(transparent)]
    Replicate(#[from] ReplicateError),
}

/// A log's replication with one swarm peer (see the module docs).
#[derive(Debug)]
pub struct PeerReplication {
    replication: Replication,
    options: PeerReplicationOptions,
}

impl PeerReplication {
    /// A replication of `log`, not started.
    pub fn new(log: &Log, options: PeerReplicationOptions) -> PeerReplication {
        PeerReplication {
            replication: Replication::new(log, options.replicate.clone()),
            options,
        }
    }

    /// The counters, updated as nodes are sent and received.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.replication.progress()
    }

    /// Waits the start delay, replicates over `peer`'s byte stream until either side ends it,
    /// and closes the connection, whatever the outcome.
    pub async fn run(self, peer: &SwarmPeer) -> Result<Summary, PeerReplicationError> {
        tokio::time::sleep(self.options.start_delay).await;
        if peer.is_closed() {
            return Err(PeerReplicationError::Closed);
        }
        let first_traffic = self.options.first_traffic;
        let mut progress = self.replication.progress();
        let stalled = async {
            let got_going = tokio::time::timeout(
                first_traffic,
                progress.wait_for(|p| p.synced || p.nodes_received > 0),
            )
            .await
            .is_ok_and(|seen| seen.is_ok());
            if got_going {
                // It got going: from here on only the replication decides.
                std::future::pending::<()>().await;
            }
        };
        let outcome = tokio::select! {
            result = self.replication.run(peer.stream()) => match result {
                Ok(summary) => {
                    if let Some(early) = summary.ended_early {
                        tracing::debug!(peer = peer.id(), "replication: {early}");
                    }
                    Ok(summary)
                }
                Err(_) if peer.is_closed() => Err(PeerReplicationError::Closed),
                Err(error) => Err(PeerReplicationError::Replicate(error)),
            },
            () = stalled => Err(PeerReplicationError::Stalled(first_traffic)),
        };
        peer.close().await;
        outcome
    }
}
