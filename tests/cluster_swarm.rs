//! Swarms across a hub cluster: peers whose hubs are different nodes of one cluster (real
//! `signalhub listen --redis` processes on a real `redis-server`) meet and talk — a real
//! webrtc-swarm peer in Node and Rust swarm peers — and a swarm whose node is killed behind
//! HAProxy comes back through another node and meets a newcomer.
//!
//! Needs `redis-server`, `haproxy`, `node` with `js/node_modules`, and the `signalhub` binary
//! (`cargo test` builds it; with a filter, `cargo build -p signalhub` first).

#[path = "../signalhub/tests/support/cluster.rs"]
mod cluster;
#[path = "../signalhub/tests/support/node_script.rs"]
mod node_script;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cluster::{LoadBalancer, Node, RedisServer};
use node_script::{require_js_setup, NodeScript};
use serde_json::json;
use signalhub::client::ClientOptions;
use support::signalhub_binary;
use swarm::{Swarm, SwarmEvent, SwarmOptions, SwarmPeer};
use tokio::time::timeout;

/// Long enough for a WebRTC handshake on a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(45);

/// Loopback host candidates only; quick announces and hub reconnects.
fn options() -> SwarmOptions {
    SwarmOptions {
        udp_addrs: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
        announce_alone: Duration::from_millis(500),
        announce_with_peers: Duration::from_secs(2),
        announce_jitter: Duration::from_millis(300),
        client: ClientOptions {
            reconnect_delay: Duration::from_millis(300),
            max_reconnect_delay: Duration::from_secs(1),
            ..ClientOptions::default()
        },
        ..SwarmOptions::default()
    }
}

/// Waits until `swarm` is connected to each of `ids`; the peers in that order.
async fn connected_to_all(swarm: &mut Swarm, ids: &[&str]) -> Vec<SwarmPeer> {
    let deadline = tokio::time::Instant::now() + STEP;
    let mut peers: Vec<SwarmPeer> = Vec::new();
    while !ids.iter().all(|id| peers.iter().any(|p| p.id() == *id)) {
        let event = tokio::time::timeout_at(deadline, swarm.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: not connected to all of {ids:?} in {STEP:?}",
                    swarm.id()
                )
            })
            .expect("the swarm is open");
        match event {
            SwarmEvent::Connected { peer, .. } => {
                // A retried handshake replaces an earlier connection to the same peer.
                peers.retain(|p| p.id() != peer.id());
                peers.push(peer);
            }
            SwarmEvent::Disconnected { id, .. } => peers.retain(|p| p.id() != id),
        }
    }
    ids.iter()
        .map(|id| {
            let at = peers.iter().position(|p| p.id() == *id).expect("connected");
            peers.swap_remove(at)
        })
        .collect()
}

/// This node's own subscribers (`signalhub_subscribers`).
fn subscribers(node: &Node) -> f64 {
    node.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("signalhub_subscribers "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn recv_text(peer: &SwarmPeer) -> String {
    let bytes = timeout(STEP, peer.recv())
        .await
        .expect("a message in time")
        .expect("the peer is open");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_rust_peers_on_different_nodes_meet_and_talk() {
    require_js_setup(&[
        ("webrtc-swarm", Some("2.9.0")),
        ("@roamhq/wrtc", Some("0.10.0")),
        ("signalhub", Some("4.9.0")),
    ]);
    let redis = RedisServer::start();
    let binary = signalhub_binary();
    let nodes = [
        Node::start(&binary, &redis),
        Node::start(&binary, &redis),
        Node::start(&binary, &redis),
    ];
    let app = "cluster-swarm";
    // A webrtc-swarm peer in Node on node 0, Rust peers on nodes 1 and 2.
    let config = json!({"hubs": [nodes[0].url()], "app": app}).to_string();
    let mut js = NodeScript::spawn("swarm-peer.mjs", &[&config], STEP);
    let js_id = js.wait_event("ready").await["id"]
        .as_str()
        .expect("an id")
        .to_string();
    js.wait_event("subscribed").await;
    let mut first = Swarm::join([nodes[1].url()], app, options())
        .await
        .expect("join through node 1");
    let mut second = Swarm::join([nodes[2].url()], app, options())
        .await
        .expect("join through node 2");
    let (first_id, second_id) = (first.id().to_string(), second.id().to_string());

    let mut from_first = connected_to_all(&mut first, &[&js_id, &second_id]).await;
    let first_to_second = from_first.pop().expect("to second");
    let first_to_js = from_first.pop().expect("to js");
    let mut from_second = connected_to_all(&mut second, &[&first_id, &js_id]).await;
    from_second.pop();
    let second_to_first = from_second.pop().expect("to first");
    for id in [&first_id, &second_id] {
        js.wait_for(&format!("Node connected to {id}"), |e| {
            e["event"] == "connect" && e["id"] == id.as_str()
        })
        .await;
    }

    first_to_js.send("from rust on node 1").await.expect("send");
    let got = js
        .wait_for("the Rust message", |e| {
            e["event"] == "data" && e["from"] == first_id.as_str()
        })
        .await;
    assert_eq!(got["data"], "from rust on node 1");
    js.send(json!({"cmd": "send", "to": first_id, "data": "from node on node 0"}));
    assert_eq!(recv_text(&first_to_js).await, "from node on node 0");
    first_to_second
        .send("node 1 to node 2")
        .await
        .expect("send");
    assert_eq!(recv_text(&second_to_first).await, "node 1 to node 2");

    // Signalling crossed the cluster: each node delivered messages it got from Redis.
    for node in &nodes {
        let metrics = node.metrics();
        let received = metrics
            .lines()
            .find_map(|l| l.strip_prefix("signalhub_cluster_messages_received_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            received > 0.0,
            "node {} received nothing from Redis",
            node.addr
        );
    }
    js.kill();
    first.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_whose_node_is_killed_comes_back_through_another_and_meets_a_newcomer() {
    let redis = RedisServer::start();
    let binary = signalhub_binary();
    let mut nodes = [Node::start(&binary, &redis), Node::start(&binary, &redis)];
    let lb = LoadBalancer::start(&nodes.iter().collect::<Vec<_>>());
    let app = "cluster-failover";
    let mut old = Swarm::join([lb.url()], app, options())
        .await
        .expect("join through HAProxy");
    let old_id = old.id().to_string();
    // The swarm holds two subscriptions (its inbox and `all`), one stream each; with
    // `leastconn` they sit on both nodes. Wait for both, then kill node 0.
    let deadline = Instant::now() + STEP;
    while nodes.iter().map(subscribers).sum::<f64>() < 2.0 {
        assert!(Instant::now() < deadline, "the swarm did not subscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = Instant::now();
    nodes[0].kill();
    // The swarm's client reconnects through HAProxy, which sends it to the surviving node.
    let deadline = Instant::now() + STEP;
    while subscribers(&nodes[1]) < 2.0 {
        assert!(Instant::now() < deadline, "the swarm did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the swarm was subscribed on the surviving node {:.1} s after node 0 was killed",
        killed.elapsed().as_secs_f64()
    );
    let mut newcomer = Swarm::join([lb.url()], app, options())
        .await
        .expect("a newcomer joins through HAProxy");
    let newcomer_id = newcomer.id().to_string();
    let from_old = connected_to_all(&mut old, &[&newcomer_id]).await.remove(0);
    let from_new = connected_to_all(&mut newcomer, &[&old_id]).await.remove(0);
    from_new
        .send("hello after the failover")
        .await
        .expect("send");
    assert_eq!(recv_text(&from_old).await, "hello after the failover");
    old.close().await;
    newcomer.close().await;
}
