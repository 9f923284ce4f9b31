//! The cluster as operators run it: three `signalhub listen --redis …` processes on one real
//! `redis-server`, behind a real HAProxy (Debian's package), driven by the real JavaScript clients
//! from npm (`signalhub` 4.9.0 over SSE/POST, `signalhubws` 1.0.12 over WebSocket). Nodes are
//! killed (SIGKILL) and stopped (SIGTERM) under their clients.
//!
//! Needs `redis-server`, `haproxy`, `node` and `js/node_modules` (`bash .ci/run` installs them all);
//! without them the tests fail with the command that installs them.

#[path = "support/cluster.rs"]
mod cluster;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cluster::{LoadBalancer, RedisServer};
use common::metric;
use serde_json::{json, Value};

#[path = "support/node_script.rs"]
mod node_script;
use node_script::{require_js_setup, NodeScript};

fn node(redis: &RedisServer) -> cluster::Node {
    cluster::Node::start(Path::new(env!("CARGO_BIN_EXE_signalhub")), redis)
}

/// The longest wait for any one expected event (the machine may be loaded).
const STEP: Duration = Duration::from_secs(60);
const SCRIPT_TIMEOUT_SECS: &str = "240";
const JS: &[(&str, Option<&str>)] = &[
    ("signalhub", Some("4.9.0")),
    ("signalhubws", Some("1.0.12")),
    ("ws", None),
];

fn is_probe(data: &Value) -> bool {
    data.get("probe").is_some()
}

/// Posts probes to `node` until `script` has a data event that is one (a subscription takes
/// effect cluster-wide one Redis round trip after it starts; the JS clients say "open" sooner).
async fn until_probe_arrives(node: &str, script: &mut NodeScript, what: &str) {
    let deadline = Instant::now() + STEP;
    let mut n = 0;
    loop {
        n += 1;
        let response = reqwest::Client::new()
            .post(format!("{node}/v1/interop/ch"))
            .body(format!("{{\"probe\":{n}}}"))
            .send()
            .await
            .expect("POST a probe");
        assert_eq!(response.status(), 200);
        let arrived = tokio::time::timeout(
            Duration::from_millis(200),
            script.wait_for(what, |e| e["event"] == "data" && is_probe(&e["data"])),
        )
        .await;
        if arrived.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "no probe reached {what}");
    }
}

/// The non-probe messages of `data` events, as (from, n).
fn messages(events: impl IntoIterator<Item = Value>) -> Vec<(String, u64)> {
    events
        .into_iter()
        .filter(|e| e["event"] == "data" && !is_probe(&e["data"]))
        .map(|e| {
            (
                e["data"]["from"].as_str().expect("from").to_string(),
                e["data"]["n"].as_u64().expect("n"),
            )
        })
        .collect()
}

/// Each publisher's messages `0..count` exactly once, in order.
fn assert_once_in_order(who: &str, got: &[(String, u64)], publishers: &[&str], count: u64) {
    for publisher in publishers {
        let theirs: Vec<u64> = got
            .iter()
            .filter(|(from, _)| from == publisher)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            theirs,
            (0..count).collect::<Vec<_>>(),
            "{who}: {publisher}'s messages, once each and in order"
        );
    }
}

#[tokio::test]
async fn js_clients_on_three_nodes_exchange_across_transports_exactly_once_in_order() {
    require_js_setup(JS);
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let ws_url = nodes[1].url().replacen("http://", "ws://", 1);
    // X: SSE subscriber of `ch` on node 0; A: signalhubws client of `ch` on node 1; Z: a
    // signalhub client on node 2 that only broadcasts.
    let mut x = NodeScript::spawn(
        "signalhub-client.mjs",
        &[&nodes[0].url(), "reconnect", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    let mut a = NodeScript::spawn(
        "signalhubws-client.mjs",
        &[&ws_url, "bridge", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    let mut z = NodeScript::spawn(
        "signalhub-client.mjs",
        &[&nodes[2].url(), "broadcast", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    x.wait_event("open").await;
    a.wait_for("A open", |e| e["event"] == "open" && e["client"] == "A")
        .await;
    z.wait_event("ready").await;
    until_probe_arrives(&nodes[2].url(), &mut x, "X (SSE on node 0)").await;
    until_probe_arrives(&nodes[2].url(), &mut a, "A (WebSocket on node 1)").await;

    // 30 messages from each of Z (POST, node 2), A (WebSocket, node 1) and X (POST, node 0),
    // interleaved; each publisher sends its next once the previous was accepted.
    const COUNT: u64 = 30;
    for n in 0..COUNT {
        z.send(
            json!({"cmd": "broadcast", "id": n, "channel": "ch", "message": {"from": "z", "n": n}}),
        );
        a.send(json!({"cmd": "broadcast", "client": "A", "id": n, "channel": "ch", "message": {"from": "a", "n": n}}));
        x.send(
            json!({"cmd": "broadcast", "id": n, "channel": "ch", "message": {"from": "x", "n": n}}),
        );
        for (script, name) in [(&mut z, "z"), (&mut a, "a"), (&mut x, "x")] {
            let done = script
                .wait_for(&format!("{name}'s broadcast {n} accepted"), |e| {
                    e["event"] == "broadcasted" && e["id"] == n
                })
                .await;
            assert!(
                done.get("error").is_none_or(Value::is_null),
                "{name}'s broadcast {n} failed: {done}"
            );
        }
    }
    // Everything arrives: 90 messages at X and at A.
    let mut received = [Vec::new(), Vec::new()];
    for ((script, who), received) in [(&mut x, "X"), (&mut a, "A")]
        .into_iter()
        .zip(&mut received)
    {
        for _ in 0..3 * COUNT {
            let event = script
                .wait_for(&format!("all 90 messages at {who}"), |e| {
                    e["event"] == "data" && !is_probe(&e["data"])
                })
                .await;
            received.push(event);
        }
    }
    // Nothing more comes (no duplicates): whatever else arrived is in what `close` returns.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [on_x, on_a] = received;
    for ((script, who), mut events) in [(x, "X (SSE, node 0)"), (a, "A (WebSocket, node 1)")]
        .into_iter()
        .zip([on_x, on_a])
    {
        events.extend(script.close().await);
        let got = messages(events);
        assert_eq!(
            got.len() as u64,
            3 * COUNT,
            "{who}: exactly 90 messages, got {got:?}"
        );
        assert_once_in_order(who, &got, &["z", "a", "x"], COUNT);
    }
    z.close().await;
    for node in &nodes {
        let text = node.metrics();
        assert_eq!(metric(&text, "signalhub_cluster_redis_connected"), 1.0);
        assert_eq!(
            metric(&text, "signalhub_cluster_publishes_dropped_total"),
            0.0
        );
        assert_eq!(metric(&text, "signalhub_cluster_messages_lost_total"), 0.0);
    }
}

#[tokio::test]
async fn behind_haproxy_a_killed_nodes_clients_reconnect_to_the_others() {
    require_js_setup(JS);
    let redis = RedisServer::start();
    let mut nodes = vec![node(&redis), node(&redis), node(&redis)];
    let lb = LoadBalancer::start(&nodes.iter().collect::<Vec<_>>());
    let mut client = NodeScript::spawn(
        "signalhub-client.mjs",
        &[&lb.url(), "reconnect", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    client.wait_event("open").await;
    // Which node the load balancer gave it.
    let mut home = None;
    for (i, node) in nodes.iter().enumerate() {
        if metric(&node.metrics(), "signalhub_subscribers") == 1.0 {
            home = Some(i);
        }
    }
    let home = home.expect("the client is on one node");
    let other = (home + 1) % 3;
    until_probe_arrives(
        &nodes[other].url(),
        &mut client,
        "the client behind HAProxy",
    )
    .await;
    // Every node counts the cluster's one subscriber.
    for node in &nodes {
        eventually_count(node, 1).await;
    }

    let killed = Instant::now();
    nodes[home].kill();
    // The stream ended: the JS client retries after 3 s, through the load balancer, which sends
    // it to a live node.
    client.wait_event("retry").await;
    client.wait_event("reconnect").await;
    until_probe_arrives(&nodes[other].url(), &mut client, "the client, reconnected").await;
    eprintln!(
        "the client was back in the cluster {:.1} s after its node was killed",
        killed.elapsed().as_secs_f64()
    );
    drop(nodes.remove(home));
    // The dead node's record expires; the survivors count the reconnected client once.
    for node in &nodes {
        eventually_count(node, 1).await;
    }

    // A node stopped with SIGTERM exits 0 and withdraws its count at once.
    let mut extra = NodeScript::spawn(
        "signalhub-client.mjs",
        &[&nodes[1].url(), "reconnect", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    extra.wait_event("open").await;
    eventually_count(&nodes[0], 2).await;
    let status = nodes[1].terminate();
    assert!(status.success(), "SIGTERM: exit 0, got {status}");
    // Its record would live 5 s more; withdrawn, the count falls within one report (1 s). The
    // client behind HAProxy may be back on node 0 by then: at most 1.
    let stopped = Instant::now();
    while nodes[0].subscribers().unwrap_or(2) > 1 {
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "the stopped node's count went at once, not after its record's TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    extra.kill();
    client.kill();
}

/// Waits until `node` counts `n` subscribers in the cluster (`GET /`).
async fn eventually_count(node: &cluster::Node, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let count = node.subscribers().unwrap_or(-1);
        if count == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} counts {count} subscribers in the cluster, not {n}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
