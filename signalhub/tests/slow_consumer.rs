//! Two subscribers stop reading (one on each of the hub's two SSE paths) while others receive
//! 10 000 messages: the others get every one, in order; the stalled ones are dropped and their
//! connections closed; the hub's queues stay within their bounds the whole time.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use signalhub::HubConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const MESSAGES: usize = 10_000;
const FAST_READERS: usize = 3;
const QUEUE_BYTES: usize = 512 * 1024;

/// A subscriber that reads the response head and then nothing, with a small receive buffer so
/// the kernel cannot absorb the backlog for it. `after_post` makes the subscription on a
/// kept-alive connection after a chunked POST, which leaves the connection with hyper: hyper
/// serves the subscription rather than the hub's direct path.
async fn stalled_subscriber(addr: SocketAddr, after_post: bool) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    if after_post {
        leave_with_hyper(&mut stream, addr).await;
    }
    stream
        .write_all(format!("GET /v1/app/feed HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200 OK"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_and_the_others_get_everything() {
    let hub = start_hub(HubConfig {
        queue_max_bytes: QUEUE_BYTES,
        queue_max_messages: 1024,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut stalled = [
        stalled_subscriber(addr, false).await,
        stalled_subscriber(addr, true).await,
    ];
    let mut readers = Vec::new();
    for _ in 0..FAST_READERS {
        let mut sub = SseClient::connect(addr, "/v1/app/feed").await;
        readers.push(tokio::spawn(async move {
            for expected in 0..MESSAGES {
                let data = sub.next_data().await;
                let seq: usize = data[7..data.find(',').unwrap()].parse().unwrap();
                assert_eq!(seq, expected, "messages arrive whole and in order");
            }
            (MESSAGES, sub)
        }));
    }
    wait_subscribers(&hub, 2 + FAST_READERS as i64).await;
    let rss_before = rss_bytes();

    // Watch the hub's queued bytes while the messages flow.
    let peak_queued = Arc::new(AtomicI64::new(0));
    let sampler = {
        let peak = peak_queued.clone();
        let url = format!("{}/metrics", hub.url());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                if let Ok(response) = http.get(&url).send().await {
                    let text = response.text().await.unwrap_or_default();
                    let queued = metric(&text, "signalhub_queued_bytes") as i64;
                    peak.fetch_max(queued, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let http = reqwest::Client::new();
    let padding = "p".repeat(4000);
    let url = format!("{}/v1/app/feed", hub.url());
    for seq in 0..MESSAGES {
        let body = format!("{{\"seq\":{seq},\"pad\":\"{padding}\"}}");
        let response = http.post(&url).body(body).send().await.expect("POST");
        assert_eq!(response.status(), 200);
    }
    let mut still_subscribed = Vec::new();
    for reader in readers {
        let (got, sub) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("fast readers finish")
            .expect("reader task");
        assert_eq!(got, MESSAGES);
        still_subscribed.push(sub);
    }
    sampler.abort();

    let text = hub.metrics().encode();
    assert_eq!(
        metric(&text, "signalhub_subscribers_dropped_total"),
        2.0,
        "{text}"
    );
    assert!(metric(&text, "signalhub_messages_dropped_total") >= 1.0);
    assert!(
        metric(&text, "signalhub_messages_delivered_total") as usize >= FAST_READERS * MESSAGES
    );
    wait_subscribers(&hub, FAST_READERS as i64).await;

    // Bounded: never more queued than every subscriber's queue full at once, although 40 MB went
    // to a subscriber that read none of it.
    let peak = peak_queued.load(Ordering::Relaxed) as usize;
    assert!(
        peak <= (2 + FAST_READERS) * QUEUE_BYTES,
        "peak queued bytes {peak}"
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 24 << 20,
        "process memory grew by {} MiB",
        grown >> 20
    );

    // The hub closed both stalled connections: draining what the kernel holds reaches the end.
    let mut sink = vec![0u8; 64 * 1024];
    for (which, stream) in stalled.iter_mut().enumerate() {
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "stalled subscriber {which} was closed by the hub"
        );
    }
}
