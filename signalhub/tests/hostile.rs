//! Hostile clients, each a finding of the attack on the hub (issue 10): a subscribe that declares
//! a body it never sends, a full hub, non-readers and what they hold in the kernel, the queued
//! bytes budget, junk sent up a stream, ambiguous framing, slow readers of files, idle
//! WebSockets. Each test drives the real hub over loopback TCP and fails without its fix.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use signalhub::{HubConfig, Rejection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The tests here measure the process's memory and load it: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bytes waiting in the send queues of the sockets whose local port is `port`, and how many such
/// sockets there are (from `/proc/net/tcp`; the hub's sockets are those bound to its port).
fn send_queues(port: u16) -> (usize, u64, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let mut sockets = 0;
    let mut total = 0;
    let mut largest = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(queues)) = (fields.get(1), fields.get(4)) else {
            continue;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        // State 0A is LISTEN: the hub's own listening socket.
        if local_port != Some(port) || fields.get(3) == Some(&"0A") {
            continue;
        }
        let tx = queues
            .split_once(':')
            .and_then(|(tx, _)| u64::from_str_radix(tx, 16).ok())
            .unwrap_or(0);
        sockets += 1;
        total += tx;
        largest = largest.max(tx);
    }
    (sockets, total, largest)
}

/// A TCP connection with a small receive buffer, so that the kernel cannot absorb much for a
/// client that does not read.
async fn small_window(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A subscriber of `/v1/app/<channel>` that reads the `200` head and then nothing.
async fn stalled_subscriber(addr: SocketAddr, channel: &str) -> TcpStream {
    let mut stream = small_window(addr).await;
    stream
        .write_all(format!("GET /v1/app/{channel} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = head_of(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    stream
}

/// POSTs `body` to `/v1/app/<channel>`, expecting `200`.
async fn post(client: &reqwest::Client, addr: SocketAddr, channel: &str, body: String) {
    let response = client
        .post(format!("http://{addr}/v1/app/{channel}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Reads a response head off a raw stream.
async fn head_of(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(STEP, stream.read_u8())
            .await
            .expect("head in time")
            .expect("head");
        head.push(byte);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A connection that has had `GET /health` answered (`ok\n`) and is kept alive: hyper answered
/// it, and the connection is back on the hub's direct path for what comes next.
async fn after_a_health_check(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = head_of(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut body = [0u8; 3];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"ok\n");
    stream
}

/// A connection that has had a POST with a chunked body answered and is kept alive: such a
/// request leaves the connection with hyper, which serves whatever comes next on it.
async fn after_a_chunked_post(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    leave_with_hyper(&mut stream, addr).await;
    stream
}

/// A kept-alive connection after one request, on each path: back with the hub's front, or left
/// with hyper.
async fn kept_alive(addr: SocketAddr, path: &str) -> TcpStream {
    match path {
        "front" => after_a_health_check(addr).await,
        "hyper" => after_a_chunked_post(addr).await,
        _ => unreachable!("{path}"),
    }
}

/// True once the peer has closed (EOF or reset), reading whatever comes first.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_subscribe_that_declares_a_body_is_refused_and_leaves_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    for framing in ["Content-Length: 10", "Transfer-Encoding: chunked"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /v1/ab/c HTTP/1.1\r\nHost: {addr}\r\n{framing}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = head_of(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{framing}: {head}");
        assert!(head.contains("Connection: close") || head.contains("connection: close"));
        let mut body = String::new();
        let _ = tokio::time::timeout(STEP, stream.read_to_string(&mut body)).await;
        assert!(
            body.contains("a subscribe request carries no body"),
            "{framing}: {body:?}"
        );
        // The hub closed its side: nothing of the request is kept.
        assert!(closed_within(&mut stream, Duration::from_secs(1)).await);
    }
    assert_eq!(hub.metrics().rejected(Rejection::BodyOnSubscribe), 2);
    let metrics = hub.metrics();
    eventually("no connection left", || {
        metric(
            &metrics.encode(),
            "signalhub_connections{transport=\"http\"}",
        ) == 0.0
    })
    .await;
    assert_eq!(metric(&metrics.encode(), "signalhub_subscribers"), 0.0);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_body_is_forgotten_at_once() {
    let _serial = SERIAL.lock().await;
    // The attack: many open-read-close cycles of a subscribe with a body. Each one must be
    // released as soon as the client goes, not ~50 s later.
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /v1/ab/c HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        drop(stream);
    }
    let metrics = hub.metrics();
    let started = Instant::now();
    eventually("every connection released", || {
        metric(
            &metrics.encode(),
            "signalhub_connections{transport=\"http\"}",
        ) == 0.0
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connections held for {:?}",
        started.elapsed()
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_hub_says_so_and_still_answers_health_and_metrics() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(HubConfig {
        max_connections: 3,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(SseClient::connect(addr, &format!("/v1/app/ch{i}")).await);
    }
    let refused = request(addr, "GET", "/v1/app/more", b"").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.text(), "the hub is full: at most 3 connections\n");
    assert_eq!(refused.header("retry-after"), Some("1"));
    let health = request(addr, "GET", "/health", b"").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(health.text().starts_with("ok: full"), "{:?}", health.text());
    let metrics = request(addr, "GET", "/metrics", b"").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metric(
            &metrics.text(),
            "signalhub_rejected_total{reason=\"too_many_connections\"}"
        ),
        1.0,
        "{}",
        metrics.text()
    );
    drop(held);
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reader_holds_little_in_the_kernel_and_is_reset_when_dropped() {
    let _serial = SERIAL.lock().await;
    const NON_READERS: usize = 20;
    let hub = start_hub(HubConfig {
        queue_max_bytes: 64 * 1024,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut stalled = Vec::new();
    for _ in 0..NON_READERS {
        stalled.push(stalled_subscriber(addr, "flood").await);
    }
    wait_subscribers(&hub, NON_READERS as i64).await;
    let client = reqwest::Client::new();
    let message = format!("{{\"pad\":\"{}\"}}", "x".repeat(8 * 1024));
    let mut largest = 0;
    let mut posted = 0;
    while !hub.metrics().encode().contains("signalhub_subscribers 0") && posted < 2000 {
        post(&client, addr, "flood", message.clone()).await;
        posted += 1;
        if posted % 10 == 0 {
            largest = largest.max(send_queues(addr.port()).2);
        }
    }
    wait_subscribers(&hub, 0).await;
    // The kernel held at most the fixed send buffer per subscriber (Linux counts twice what the
    // hub asked for, and a little more for its bookkeeping); autotuning had let it reach ~4 MiB.
    assert!(
        largest <= 256 * 1024,
        "a non-reader held {largest} bytes in the kernel"
    );
    // Dropped subscribers are reset: their unsent bytes are freed at once, not retried for
    // minutes while the client stays connected. (The POSTs' kept-alive connection goes first:
    // left open, the hub let it go only at its 10 s idle timeout, as long as the wait below, and
    // the test failed 1 run in 6.)
    drop(client);
    let metrics = hub.metrics();
    eventually("no hub socket holding unsent bytes", || {
        metric(
            &metrics.encode(),
            "signalhub_connections{transport=\"http\"}",
        ) == 0.0
            && send_queues(addr.port()).1 == 0
    })
    .await;
    for stream in &mut stalled {
        let mut outcome = Ok(1);
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = outcome {
            if n == 0 {
                break;
            }
            outcome = stream.read(&mut buf).await;
        }
        assert_eq!(
            outcome.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "a dropped subscriber's connection is reset"
        );
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_readers_filling_the_budget_do_not_get_readers_dropped() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(HubConfig {
        // Behind: over 16 KiB queued. Budget: 96 KiB in all.
        queue_max_bytes: 128 * 1024,
        queued_bytes_budget: 96 * 1024,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_subscriber(addr, "stuck").await);
    }
    let mut reader = SseClient::connect(addr, "/v1/app/live").await;
    wait_subscribers(&hub, 5).await;
    let client = reqwest::Client::new();
    let pad = format!("{{\"pad\":\"{}\"}}", "x".repeat(4 * 1024));
    // Fill what the kernel takes, then the outboxes, until the budget is nearly full.
    for _ in 0..200 {
        post(&client, addr, "stuck", pad.clone()).await;
    }
    // Two messages back to back to the reader, as signalling does (an offer, then candidates).
    for i in 0..2 {
        post(
            &client,
            addr,
            "live",
            format!("{{\"n\":{i},\"pad\":\"{}\"}}", "y".repeat(8 * 1024)),
        )
        .await;
    }
    for i in 0..2 {
        let data = reader.next_data().await;
        assert!(data.starts_with(&format!("{{\"n\":{i},")), "{data:.20}");
    }
    // The non-readers paid: every one of them is gone, and the reader is still subscribed.
    let metrics = hub.metrics();
    eventually("the non-readers dropped", || {
        metric(&metrics.encode(), "signalhub_subscribers_dropped_total") == 4.0
    })
    .await;
    wait_subscribers(&hub, 1).await;
    drop(stalled);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_subscriber_with_pipelined_requests_that_half_closes_is_released_at_once() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A subscribe and, in the same write, a request pipelined behind it (which can never be
        // answered: the subscription's response does not end).
        let requests = format!(
            "GET /v1/app/pipelined HTTP/1.1\r\nHost: {addr}\r\n\r\nGET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        );
        stream.write_all(requests.as_bytes()).await.unwrap();
        let head = head_of(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        // The client stops sending (a half-close): the hub ends the stream at once, not at the
        // next heartbeat (30 s), which is when it noticed before.
        stream.shutdown().await.unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(2)).await,
            "the hub closed the half-closed subscription"
        );
    }
    wait_subscribers(&hub, 0).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_broadcast_from_a_client_that_half_closes_is_delivered() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut sub = SseClient::connect(addr, "/v1/app/half").await;
    wait_subscribers(&hub, 1).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v1/app/half HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
        .await
        .unwrap();
    // Sent its request, shuts its side (as `nc -N` does): hyper drops the request's future when
    // it sees that, and so the broadcast was lost. It is delivered now; the client may get no
    // answer (see README: hyper closes on the end of stream, which is how subscribers that leave
    // are noticed at once).
    stream.shutdown().await.unwrap();
    assert_eq!(sub.next_data().await, "{\"a\":1}");
    assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_subscription_on_a_kept_alive_connection_ends_when_its_client_stops_sending() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    for (path, close) in [
        ("hyper", "half"),
        ("hyper", "full"),
        ("front", "half"),
        ("front", "full"),
    ] {
        // A subscription after another request on a kept-alive connection.
        let mut stream = kept_alive(addr, path).await;
        stream
            .write_all(
                format!("GET /v1/app/kept-alive HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let head = head_of(&mut stream).await;
        assert!(head.contains("text/event-stream"), "{head}");
        wait_subscribers(&hub, 1).await;
        let hyper_streams = f64::from(path == "hyper");
        assert_eq!(sse_streams(addr).await, (1.0, hyper_streams), "{path}");
        if close == "half" {
            stream.shutdown().await.unwrap();
            assert!(
                closed_within(&mut stream, Duration::from_secs(2)).await,
                "a half-closed subscriber is let go at once"
            );
        } else {
            drop(stream);
        }
        let started = Instant::now();
        wait_subscribers(&hub, 0).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}, {close} close: released after {:?}, not at the next heartbeat",
            started.elapsed()
        );
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn bytes_sent_up_a_subscription_close_it() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /v1/app/junk HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    head_of(&mut stream).await;
    wait_subscribers(&hub, 1).await;
    // A megabyte of junk; the hub stops reading at the first bytes and closes.
    let junk = vec![b'j'; 1024 * 1024];
    let _ = tokio::time::timeout(STEP, stream.write_all(&junk)).await;
    assert!(closed_within(&mut stream, STEP).await);
    wait_subscribers(&hub, 0).await;
    assert_eq!(hub.metrics().rejected(Rejection::UnexpectedBytes), 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_chunked_transfer_encodings_are_refused() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    for headers in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /v1/app/ch HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n2\r\n{{}}\r\n0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = head_of(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{headers:?}: {head}");
        let mut body = String::new();
        let _ = tokio::time::timeout(STEP, stream.read_to_string(&mut body)).await;
        assert!(body.contains("ambiguous request framing"), "{body:?}");
    }
    assert_eq!(hub.metrics().rejected(Rejection::AmbiguousFraming), 2);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_header_timeout_on_a_kept_alive_connection_is_counted() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(HubConfig {
        request_timeout: Duration::from_millis(500),
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let metrics = hub.metrics();
    for (n, path) in [(1, "front"), (2, "hyper")] {
        let mut stream = kept_alive(addr, path).await;
        // The second request's head never ends.
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHo")
            .await
            .unwrap();
        assert!(closed_within(&mut stream, STEP).await, "{path}");
        eventually("the timeout counted", || {
            metrics.rejected(Rejection::Timeout) == n
        })
        .await;
    }
    // A kept-alive connection that stays idle is closed at the same timeout: it holds nothing
    // for longer than a slow request would.
    let mut idle = after_a_health_check(addr).await;
    let started = Instant::now();
    assert!(closed_within(&mut idle, STEP).await);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let _serial = SERIAL.lock().await;
    let hub = start_hub(HubConfig {
        write_timeout: Duration::from_millis(500),
        queue_max_bytes: 4 * 1024 * 1024,
        queue_max_messages: 100_000,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let _stream = stalled_subscriber(addr, "slow").await;
    wait_subscribers(&hub, 1).await;
    let client = reqwest::Client::new();
    let pad = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024));
    // Enough to fill both kernels' buffers, well under the queue's own limit.
    for _ in 0..40 {
        post(&client, addr, "slow", pad.clone()).await;
    }
    let metrics = hub.metrics();
    eventually("the write timeout", || {
        metrics.rejected(Rejection::WriteTimeout) == 1
    })
    .await;
    wait_subscribers(&hub, 0).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_a_large_file_hold_little_and_ranges_work() {
    let _serial = SERIAL.lock().await;
    const FILE: usize = 16 * 1024 * 1024;
    const READERS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..FILE).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &content).unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
    let hub = start_hub(HubConfig {
        web_root: Some(dir.path().to_path_buf()),
        write_timeout: Duration::from_secs(60),
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();

    // HEAD: the length, no body.
    let head = request(addr, "HEAD", "/big.bin", b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("16777216"));
    assert!(head.body.is_empty());

    // A range, as `curl -C` and browsers ask.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /big.bin HTTP/1.1\r\nHost: {addr}\r\nRange: bytes=1000-1999\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        head.contains("content-range: bytes 1000-1999/16777216"),
        "{head}"
    );
    assert_eq!(&response[split..], &content[1000..2000]);

    // Slow readers: each asks for the whole file and reads nothing.
    let before = rss_bytes();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut stream = small_window(addr).await;
        stream
            .write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        readers.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_bytes().saturating_sub(before);
    // Reading whole files into memory made this ~1 GB.
    assert!(
        grown < 128 * 1024 * 1024,
        "{READERS} slow readers of a 16 MiB file grew the hub by {} MiB",
        grown / (1024 * 1024)
    );
    // And one of them, reading at last, gets the whole file intact.
    let mut last = readers.pop().unwrap();
    let mut response = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while response.len() < FILE {
        let n = tokio::time::timeout(STEP, last.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        response.extend_from_slice(&buf[..n]);
        if let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            if response.len() - split - 4 >= FILE {
                assert_eq!(&response[split + 4..split + 4 + FILE], &content[..]);
                break;
            }
        }
    }
    drop(readers);
    hub.shutdown().await.unwrap();
}

/// Opens a WebSocket with a raw handshake and leaves it idle (a raw client costs the test process
/// almost nothing, so the process's growth is the hub's).
async fn idle_websocket(addr: SocketAddr, app: String) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /{app} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let head = head_of(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_costs_the_hub_little() {
    let _serial = SERIAL.lock().await;
    const SOCKETS: usize = 1000;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    // Warm up the runtime's and allocator's pools first.
    let warm: Vec<TcpStream> =
        futures_util::future::join_all((0..50).map(|i| idle_websocket(addr, format!("warm{i}"))))
            .await;
    let before = rss_bytes();
    let mut sockets = Vec::new();
    for i in 0..SOCKETS {
        sockets.push(idle_websocket(addr, format!("app{i}")).await);
    }
    wait_subscribers(&hub, (SOCKETS + warm.len()) as i64).await;
    let per_socket = rss_bytes().saturating_sub(before) / SOCKETS as u64;
    // It was 137 KiB (tungstenite's 128 KiB read buffer, allocated up front).
    assert!(
        per_socket < 24 * 1024,
        "an idle WebSocket costs {} KiB",
        per_socket / 1024
    );
    drop(sockets);
    drop(warm);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_websocket_that_streams_junk_is_closed() {
    let _serial = SERIAL.lock().await;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/app"))
        .await
        .unwrap();
    let junk = "j".repeat(32 * 1024);
    for _ in 0..20 {
        if socket.send(Message::text(junk.clone())).await.is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(STEP, async {
        while let Some(incoming) = socket.next().await {
            match incoming {
                Ok(Message::Close(frame)) => return frame.map(|f| (f.code, f.reason)),
                Ok(_) => {}
                Err(err) => panic!("no close frame: {err}"),
            }
        }
        None
    })
    .await
    .expect("the hub closed the socket in time");
    let (code, reason) = closed.expect("a close frame with a reason");
    assert_eq!(u16::from(code), 1008);
    assert_eq!(
        reason.as_str(),
        "too many frames that are not signalhubws messages"
    );
    assert!(hub.metrics().rejected(Rejection::BadFrame) >= 16);
    hub.shutdown().await.unwrap();
}
