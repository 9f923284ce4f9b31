//! What the swarm tests share: a real hub on loopback, swarm options for loopback-only WebRTC,
//! and waiting for swarm events with a deadline that names what was awaited.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use signalhub::client::ClientOptions;
use signalhub::{Hub, HubConfig, RunningHub};
use swarm::{CloseReason, Swarm, SwarmEvent, SwarmOptions, SwarmPeer};
use tokio::time::timeout;

/// Long enough for a WebRTC handshake on a loaded 2-core machine.
pub const CONNECT: Duration = Duration::from_secs(30);

/// A hub with no abuse limits on 127.0.0.1, on `port` (0: any).
pub async fn start_hub_on(port: u16) -> RunningHub {
    let config = HubConfig {
        quiet: true,
        max_connections_per_ip: 100_000,
        broadcasts_per_sec: 1_000_000,
        broadcast_burst: 1_000_000,
        ..HubConfig::default()
    };
    Hub::bind(("127.0.0.1", port), config)
        .await
        .expect("bind a hub on loopback")
        .spawn()
        .expect("serve the hub")
}

pub async fn start_hub() -> RunningHub {
    start_hub_on(0).await
}

/// Loopback host candidates only, quick hub reconnects, quick announces.
pub fn loopback_options() -> SwarmOptions {
    SwarmOptions {
        udp_addrs: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
        announce_alone: Duration::from_millis(500),
        announce_with_peers: Duration::from_secs(2),
        announce_jitter: Duration::from_millis(300),
        client: ClientOptions {
            reconnect_delay: Duration::from_millis(200),
            max_reconnect_delay: Duration::from_millis(500),
            ..ClientOptions::default()
        },
        ..SwarmOptions::default()
    }
}

/// The next event of `swarm`, or a panic naming `what`.
pub async fn next_event(swarm: &mut Swarm, what: &str) -> SwarmEvent {
    timeout(CONNECT, swarm.next_event())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: no event in {CONNECT:?} while waiting for {what}",
                swarm.id()
            )
        })
        .unwrap_or_else(|| panic!("{}: the swarm ended while waiting for {what}", swarm.id()))
}

/// Waits for `swarm` to connect to `id`; panics on any other event.
pub async fn connected_to(swarm: &mut Swarm, id: &str) -> SwarmPeer {
    match next_event(swarm, &format!("a connection to {id}")).await {
        SwarmEvent::Connected { id: got, peer } if got == id => peer,
        other => panic!(
            "{}: expected a connection to {id}, got {other:?}",
            swarm.id()
        ),
    }
}

/// Waits for `swarm` to report `id` gone; panics on any other event.
pub async fn disconnected_from(swarm: &mut Swarm, id: &str) -> CloseReason {
    match next_event(swarm, &format!("{id} to disconnect")).await {
        SwarmEvent::Disconnected { id: got, reason } if got == id => reason,
        other => panic!("{}: expected {id} to disconnect, got {other:?}", swarm.id()),
    }
}

/// Collects connections until `swarm` is connected to every id of `ids`.
pub async fn connected_to_all(swarm: &mut Swarm, ids: &[String]) -> Vec<SwarmPeer> {
    let mut peers: Vec<SwarmPeer> = Vec::new();
    while !ids.iter().all(|id| peers.iter().any(|p| p.id() == id)) {
        match next_event(swarm, &format!("connections to all of {ids:?}")).await {
            SwarmEvent::Connected { peer, .. } => peers.push(peer),
            other => panic!("{}: unexpected {other:?} while meshing", swarm.id()),
        }
    }
    peers
}
