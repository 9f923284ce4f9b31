//! `PeerReplication`: a log replicated with a swarm peer over a real WebRTC data channel, through
//! a real hub on 127.0.0.1, with the policy around it (live following, dropping a connection that
//! carries nothing, closing the connection at the end).

mod support;

use std::time::{Duration, Instant};

use signalhub::RunningHub;
use swarm::{
    Log, LogOptions, PeerReplication, PeerReplicationError, PeerReplicationOptions, Swarm,
    SwarmPeer,
};
use tokio::time::timeout;

use support::*;

fn log(id: &str, values: &[&str]) -> Log {
    let log = Log::memory_with_id(id, LogOptions::default()).expect("log");
    for value in values {
        log.append(value.as_bytes().to_vec()).expect("append");
    }
    log
}

async fn until_changes(log: &Log, changes: u64, what: &str) {
    let mut watch = log.watch_changes();
    timeout(CONNECT, watch.wait_for(|&c| c >= changes))
        .await
        .unwrap_or_else(|_| panic!("{what}: {} of {changes} changes in time", log.changes()))
        .expect("log alive");
}

async fn pair(app: &str) -> (RunningHub, Swarm, Swarm, SwarmPeer, SwarmPeer) {
    let hub = start_hub().await;
    let mut a = Swarm::join([hub.url()], app, loopback_options())
        .await
        .expect("join");
    let mut b = Swarm::join([hub.url()], app, loopback_options())
        .await
        .expect("join");
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let at_a = connected_to(&mut a, &b_id).await;
    let at_b = connected_to(&mut b, &a_id).await;
    (hub, a, b, at_a, at_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_their_logs_then_follow_live_until_one_leaves() {
    let (_hub, a, mut b, at_a, at_b) = pair("peer-replication").await;
    let log_a = log("A", &["a1", "a2", "a3"]);
    let log_b = log("B", &["b1", "b2"]);
    let (la, lb) = (log_a.clone(), log_b.clone());
    let run_a = tokio::spawn(async move {
        PeerReplication::new(&la, Default::default())
            .run(&at_a)
            .await
    });
    let run_b = tokio::spawn(async move {
        PeerReplication::new(&lb, Default::default())
            .run(&at_b)
            .await
    });
    until_changes(&log_a, 5, "A gets B's nodes").await;
    until_changes(&log_b, 5, "B gets A's nodes").await;
    // Live: a later append crosses over without a new replication.
    log_a.append(b"a4".to_vec()).expect("append");
    until_changes(&log_b, 6, "B follows A live").await;
    assert!(
        !run_a.is_finished() && !run_b.is_finished(),
        "both still live"
    );

    // A leaves: both replications end, neither as a failure, and B's connection is closed.
    let a_id = a.id().to_string();
    a.close().await;
    let ended_b = timeout(CONNECT, run_b)
        .await
        .expect("B ends")
        .expect("task");
    assert!(
        matches!(ended_b, Ok(_) | Err(PeerReplicationError::Closed)),
        "B's replication ended by A leaving, not failing: {ended_b:?}"
    );
    let ended_a = timeout(CONNECT, run_a)
        .await
        .expect("A ends")
        .expect("task");
    assert!(
        matches!(ended_a, Ok(_) | Err(PeerReplicationError::Closed)),
        "A's replication ended with its swarm: {ended_a:?}"
    );
    disconnected_from(&mut b, &a_id).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_carries_no_replication_is_dropped_after_first_traffic() {
    let (_hub, a, mut b, at_a, _at_b) = pair("peer-replication-stall").await;
    let log_a = log("A", &["a1"]);
    let first_traffic = Duration::from_millis(600);
    let options = PeerReplicationOptions {
        start_delay: Duration::ZERO,
        first_traffic,
        ..PeerReplicationOptions::default()
    };
    // B never replicates (a peer that connected and then hung): A must give up on its own.
    let started = Instant::now();
    let ended = timeout(CONNECT, PeerReplication::new(&log_a, options).run(&at_a))
        .await
        .expect("A gives up in time");
    let took = started.elapsed();
    assert!(
        matches!(ended, Err(PeerReplicationError::Stalled(d)) if d == first_traffic),
        "stalled, got {ended:?}"
    );
    assert!(took >= first_traffic, "not before first_traffic: {took:?}");
    assert!(at_a.is_closed(), "A closed the connection");
    let a_id = a.id().to_string();
    disconnected_from(&mut b, &a_id).await;
    a.close().await;
    b.close().await;
}
