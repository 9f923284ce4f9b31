//! The cluster on Redis, in one process: several real hubs (nodes) started with the same real
//! `redis-server`, SSE and WebSocket clients on different nodes, and Redis killed and restarted
//! under them. The load-balanced, multi-process and JS-client tests are in `cluster_lb.rs`.

#[path = "support/cluster.rs"]
mod cluster;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use cluster::RedisServer;
use common::*;
use futures_util::{SinkExt, StreamExt};
use signalhub::{HubConfig, RedisConfig, RunningHub};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A node of the cluster on `redis`, reporting every 100 ms with a 1 s record TTL so that the
/// count tests run quickly.
async fn node(redis: &RedisServer) -> RunningHub {
    let mut cluster = RedisConfig::new(&redis.url()).expect("valid URL");
    cluster.report_every = Duration::from_millis(100);
    cluster.record_ttl = Duration::from_secs(1);
    start_hub(HubConfig {
        redis: Some(cluster),
        ..unlimited()
    })
    .await
}

async fn ws(hub: &RunningHub, app: &str) -> Ws {
    let url = format!("ws://{}/{app}", hub.local_addr());
    let (socket, _) = tokio::time::timeout(STEP, connect_async(url))
        .await
        .expect("connect in time")
        .expect("websocket handshake");
    socket
}

/// The next text frame, or None if none comes within `wait`.
async fn ws_next(socket: &mut Ws, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(text) = message {
            return Some(text.to_string());
        }
    }
}

async fn sse_next(sse: &mut SseClient, wait: Duration) -> Option<String> {
    tokio::time::timeout(wait, sse.next_data()).await.ok()
}

async fn post(hub: &RunningHub, target: &str, body: &str) {
    let response = request(hub.local_addr(), "POST", target, body.as_bytes()).await;
    assert_eq!(response.status, 200, "POST {target}: {}", response.text());
}

fn gauge(hub: &RunningHub, name: &str) -> f64 {
    metric(&hub.metrics().encode(), name)
}

/// Posts `{"probe":n}` on `from` until `arrived` sees one, then drains what is left: the way a
/// test knows that every node has subscribed in Redis (a subscription takes effect cluster-wide
/// one Redis round trip after it starts).
async fn until_sse(from: &RunningHub, target: &str, to: &mut SseClient) {
    for n in 0..200 {
        post(from, target, &format!("{{\"probe\":{n}}}")).await;
        if sse_next(to, Duration::from_millis(50)).await.is_some() {
            return;
        }
    }
    panic!("no probe crossed the cluster in 10 s");
}

/// [`until_sse`], for a WebSocket client.
async fn until_ws(from: &RunningHub, target: &str, to: &mut Ws) {
    for n in 0..200 {
        post(from, target, &format!("{{\"probe\":{n}}}")).await;
        if ws_next(to, Duration::from_millis(50)).await.is_some() {
            return;
        }
    }
    panic!("no probe crossed the cluster in 10 s");
}

#[tokio::test]
async fn broadcasts_reach_every_node_exactly_once_in_order_across_transports() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis).await, node(&redis).await, node(&redis).await);
    let mut on_a = SseClient::connect(a.local_addr(), "/v1/app/room").await;
    let mut on_b = SseClient::connect(b.local_addr(), "/v1/app/room").await;
    let mut ws_c = ws(&c, "app").await;

    // Warm up: until a probe from A reaches B's SSE subscriber and C's WebSocket client.
    until_sse(&a, "/v1/app/room", &mut on_b).await;
    until_ws(&a, "/v1/app/room", &mut ws_c).await;
    // Drop what the probes left in every queue.
    while sse_next(&mut on_a, Duration::from_millis(200))
        .await
        .is_some()
    {}
    while sse_next(&mut on_b, Duration::from_millis(200))
        .await
        .is_some()
    {}
    while ws_next(&mut ws_c, Duration::from_millis(200))
        .await
        .is_some()
    {}

    // 200 POSTs on A and 100 WebSocket frames from C, concurrently.
    let posts = async {
        for n in 0..200 {
            post(&a, "/v1/app/room", &format!("{{\"from\":\"a\",\"n\":{n}}}")).await;
        }
    };
    let frames = async {
        for n in 0..100 {
            let frame = format!(
                "{{\"app\":\"app\",\"channel\":\"room\",\"message\":{{\"from\":\"c\",\"n\":{n}}}}}"
            );
            ws_c.send(Message::text(frame)).await.expect("send a frame");
        }
    };
    tokio::join!(posts, frames);

    // Every SSE subscriber, whatever its node: each message exactly once, each publisher's in order.
    for (name, sse) in [("A", &mut on_a), ("B", &mut on_b)] {
        let mut next: HashMap<String, u64> = HashMap::new();
        for _ in 0..300 {
            let data = sse_next(sse, STEP)
                .await
                .unwrap_or_else(|| panic!("SSE on {name}: a message is missing ({next:?})"));
            let value: serde_json::Value = serde_json::from_str(&data).expect("JSON");
            let from = value["from"].as_str().expect("from").to_string();
            let n = value["n"].as_u64().expect("n");
            let expected = next.entry(from.clone()).or_insert(0);
            assert_eq!(
                n, *expected,
                "SSE on {name}: {from}'s messages in order, once each"
            );
            *expected += 1;
        }
        assert_eq!(next.get("a"), Some(&200));
        assert_eq!(next.get("c"), Some(&100));
        assert!(
            sse_next(sse, Duration::from_millis(300)).await.is_none(),
            "SSE on {name}: nothing delivered twice"
        );
    }
    // The WebSocket client on C: A's 200 (bridged, as signalhubws frames) and its own 100 echoed.
    let mut next: HashMap<String, u64> = HashMap::new();
    for _ in 0..300 {
        let text = ws_next(&mut ws_c, STEP)
            .await
            .unwrap_or_else(|| panic!("WS on C: a message is missing ({next:?})"));
        let frame: serde_json::Value = serde_json::from_str(&text).expect("JSON frame");
        assert_eq!(frame["app"], "app");
        assert_eq!(frame["channel"], "room");
        let from = frame["message"]["from"].as_str().expect("from").to_string();
        let n = frame["message"]["n"].as_u64().expect("n");
        let expected = next.entry(from.clone()).or_insert(0);
        assert_eq!(
            n, *expected,
            "WS on C: {from}'s messages in order, once each"
        );
        *expected += 1;
    }
    assert!(ws_next(&mut ws_c, Duration::from_millis(300))
        .await
        .is_none());

    let text = a.metrics().encode();
    assert_eq!(metric(&text, "signalhub_cluster_redis_connected"), 1.0);
    assert!(metric(&text, "signalhub_cluster_publishes_total") >= 200.0);
    assert!(metric(&text, "signalhub_cluster_messages_received_total") >= 100.0);
    assert!(metric(&text, "signalhub_cluster_delivery_lag_seconds_count") >= 100.0);
    for hub in [a, b, c] {
        hub.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn a_node_subscribes_in_redis_only_while_it_has_local_subscribers() {
    let redis = RedisServer::start();
    let a = node(&redis).await;
    let b = node(&redis).await;
    // No topic yet (the node's control channel is not counted).
    eventually("A connected, subscribed to no topic", || {
        gauge(&a, "signalhub_cluster_redis_connected") == 1.0
            && gauge(&a, "signalhub_cluster_redis_subscriptions") == 0.0
    })
    .await;
    let publishes = gauge(&a, "signalhub_cluster_publishes_total");
    post(&a, "/v1/app/nobody", "{}").await;
    eventually(
        "one publish for a channel with no subscriber anywhere",
        || gauge(&a, "signalhub_cluster_publishes_total") == publishes + 1.0,
    )
    .await;

    let sub = SseClient::connect(b.local_addr(), "/v1/app/x,y").await;
    eventually("B subscribed to x and y", || {
        gauge(&b, "signalhub_cluster_redis_subscriptions") == 2.0
    })
    .await;
    assert_eq!(
        shard_channels(&redis),
        vec![
            "signalhub:c:app/x",
            "signalhub:c:app/y",
            "signalhub:control"
        ],
        "Redis's own view (PUBSUB SHARDCHANNELS)"
    );
    drop(sub);
    eventually("B unsubscribed when its last subscriber left", || {
        gauge(&b, "signalhub_cluster_redis_subscriptions") == 0.0
    })
    .await;
    assert_eq!(shard_channels(&redis), vec!["signalhub:control"]);
    a.shutdown().await.expect("clean shutdown");
    b.shutdown().await.expect("clean shutdown");
}

/// The shard channels Redis has subscribers for, sorted, from `redis-cli`.
fn shard_channels(redis: &RedisServer) -> Vec<String> {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "PUBSUB", "SHARDCHANNELS"])
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    let mut channels: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    channels.sort();
    channels
}

async fn info_subscribers(hub: &RunningHub) -> i64 {
    let response = request(hub.local_addr(), "GET", "/", b"").await;
    let value: serde_json::Value = serde_json::from_str(&response.text()).expect("info JSON");
    value["subscribers"].as_i64().expect("subscribers")
}

#[tokio::test]
async fn the_count_is_the_clusters_and_follows_nodes_that_come_and_go() {
    let redis = RedisServer::start();
    let a = node(&redis).await;
    let b = node(&redis).await;
    let _on_a = SseClient::connect(a.local_addr(), "/v1/app/one,two").await;
    let _on_b = SseClient::connect(b.local_addr(), "/v1/app/three").await;
    let mut ws_b = ws(&b, "app").await;
    let _ = ws_next(&mut ws_b, Duration::from_millis(1)).await;
    for hub in [&a, &b] {
        let deadline = tokio::time::Instant::now() + STEP;
        while info_subscribers(hub).await != 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET / counts 2 + 1 + 1 on every node"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A node that leaves gracefully withdraws its count before it exits.
    b.shutdown().await.expect("clean shutdown");
    let left = tokio::time::Instant::now();
    while info_subscribers(&a).await != 2 {
        assert!(
            left.elapsed() < Duration::from_millis(500),
            "B's count is gone within a report period, not a TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = node(&redis).await;
    let _on_c = SseClient::connect(c.local_addr(), "/v1/app/four").await;
    let deadline = tokio::time::Instant::now() + STEP;
    while info_subscribers(&a).await != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node that joins is counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await.expect("clean shutdown");
    c.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn without_redis_each_node_serves_its_own_and_the_cluster_heals() {
    let mut redis = RedisServer::start();
    let a = node(&redis).await;
    let b = node(&redis).await;
    let mut on_a = SseClient::connect(a.local_addr(), "/v1/app/room").await;
    let mut on_b = SseClient::connect(b.local_addr(), "/v1/app/room").await;
    until_sse(&a, "/v1/app/room", &mut on_b).await;
    while sse_next(&mut on_a, Duration::from_millis(100))
        .await
        .is_some()
    {}
    while sse_next(&mut on_b, Duration::from_millis(100))
        .await
        .is_some()
    {}

    redis.kill();
    let health = loop {
        let health = request(a.local_addr(), "GET", "/health", b"").await;
        if health.text().contains("degraded") {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        health.status, 200,
        "a degraded node stays in the load balancer"
    );
    assert_eq!(gauge(&a, "signalhub_cluster_redis_connected"), 0.0);
    // Local delivery never stops, without a pause: each message at once.
    for n in 0..20 {
        post(&a, "/v1/app/room", &format!("{{\"local\":{n}}}")).await;
        let data = sse_next(&mut on_a, Duration::from_millis(500))
            .await
            .expect("same-node delivery while Redis is down");
        assert_eq!(data, format!("{{\"local\":{n}}}"));
    }
    assert!(
        sse_next(&mut on_b, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing crossed nodes while Redis was down (and nothing arrives late)"
    );
    // Counted once the node knows Redis is gone, or a publish already sent times out (3 s).
    eventually("the lost publishes counted", || {
        gauge(&a, "signalhub_cluster_publishes_dropped_total") >= 1.0
    })
    .await;

    redis.restart();
    let healed = tokio::time::Instant::now();
    until_sse(&a, "/v1/app/room", &mut on_b).await;
    eprintln!(
        "cross-node delivery resumed {:.1} s after Redis came back",
        healed.elapsed().as_secs_f64()
    );
    eventually("both nodes healthy again", || {
        gauge(&a, "signalhub_cluster_redis_connected") == 1.0
            && gauge(&b, "signalhub_cluster_redis_connected") == 1.0
    })
    .await;
    assert!(gauge(&b, "signalhub_cluster_resubscriptions_total") >= 1.0);
    let health = request(a.local_addr(), "GET", "/health", b"").await;
    assert_eq!(health.text(), "ok\n");
    a.shutdown().await.expect("clean shutdown");
    b.shutdown().await.expect("clean shutdown");
}
