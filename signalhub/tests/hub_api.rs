//! The v1 HTTP API against the real hub, byte for byte: every row of the hub checklist in
//! `shared/specs/signalhub-and-webrtc-swarm.md` §9, and every bad input the hub refuses, each
//! checked for its status and message and for the hub still serving everyone else.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use signalhub::HubConfig;

#[tokio::test]
async fn options_is_200_with_cors_and_empty_body_on_any_path() {
    let hub = start_hub(unlimited()).await;
    for target in ["/", "/v1/app/ch", "/anything/else", "/v1/", "/metrics"] {
        let response = request(hub.local_addr(), "OPTIONS", target, b"").await;
        assert_eq!(response.status, 200, "OPTIONS {target}");
        assert_cors(&response.headers);
        assert!(
            response.body.is_empty(),
            "OPTIONS {target}: {:?}",
            response.text()
        );
    }
}

#[tokio::test]
async fn info_document_is_exact_and_only_at_slash() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let _a = SseClient::connect(addr, "/v1/app/a,b").await;
    let _b = SseClient::connect(addr, "/v1/app/x").await;
    wait_subscribers(&hub, 3).await;
    for method in ["GET", "POST"] {
        let response = request(addr, method, "/", b"").await;
        assert_eq!(response.status, 200);
        assert_cors(&response.headers);
        assert_eq!(
            response.header("Content-Type"),
            Some("application/json; charset=utf-8")
        );
        let expected = format!(
            "{{\n  \"name\": \"signalhub\",\n  \"version\": \"{}\",\n  \"subscribers\": 3\n}}\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            response.text(),
            expected,
            "{method} /: subscribers counts (connection, channel) pairs"
        );
    }
    let response = request(addr, "GET", "/?x", b"").await;
    assert_eq!(response.status, 404, "/?x is not /");
}

#[tokio::test]
async fn everything_else_is_404_with_cors_and_no_body() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let cases = [
        ("GET", "/v2/app/ch"),
        ("GET", "/app/ch"),
        ("POST", "/app/ch"),
        ("GET", "/v1"),
        ("PUT", "/v1/app/ch"),
        ("DELETE", "/v1/app/ch"),
        ("PATCH", "/v1/app/ch"),
        ("HEAD", "/v1/app/ch"),
    ];
    for (method, target) in cases {
        let response = request(addr, method, target, b"").await;
        assert_eq!(response.status, 404, "{method} {target}");
        assert_cors(&response.headers);
        if method != "HEAD" {
            assert_eq!(
                response.header("Content-Length"),
                Some("0"),
                "{method} {target}"
            );
        }
        assert!(response.body.is_empty());
    }
}

#[tokio::test]
async fn subscribe_sends_the_sse_head_at_once_and_frames_posts_verbatim() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    // The head must arrive before any message exists: connect() reads it.
    let mut sub = SseClient::connect(addr, "/v1/demo/all").await;
    assert_eq!(sub.status, 200);
    assert_cors(&sub.headers);
    assert_eq!(
        sub.header("Content-Type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(sub.header("Cache-Control"), Some("no-cache"));
    assert_eq!(sub.header("X-Accel-Buffering"), Some("no"));
    assert_eq!(sub.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(sub.header("Content-Encoding"), None);

    let body = br#"{"type":"connect","from":"peerB","x":"\r\n \u00e9"}"#;
    let response = request(addr, "POST", "/v1/demo/all", body).await;
    assert_eq!(response.status, 200);
    assert_cors(&response.headers);
    assert_eq!(response.header("Content-Length"), Some("0"));
    let frame = sub.next_frame().await.expect("a frame");
    assert_eq!(
        frame.as_bytes(),
        [b"data: ".as_slice(), body, b"\n\n"].concat()
    );
}

/// A subscription on a fresh connection, or on a kept-alive one after a POST, is served directly;
/// one made after a request that leaves the connection with hyper (a chunked body) is served by
/// hyper. Clients must not be able to tell them apart.
#[tokio::test]
async fn both_subscription_paths_send_the_same_bytes() {
    let hub = start_hub(HubConfig {
        heartbeat: Duration::from_millis(300),
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut direct = SseClient::connect(addr, "/v1/app/ch").await;
    let mut kept_alive = SseClient::connect_after_post(addr, "/v1/app/ch").await;
    let mut via_hyper = SseClient::connect_via_hyper(addr, "/v1/app/ch").await;
    wait_subscribers(&hub, 3).await;
    assert_eq!(sse_streams(addr).await, (3.0, 1.0));
    let without_date = |headers: &[(String, String)]| -> Vec<(String, String)> {
        headers
            .iter()
            .filter(|(n, _)| n != "Date")
            .cloned()
            .collect()
    };
    for other in [&kept_alive, &via_hyper] {
        assert_eq!(direct.status, other.status);
        assert_eq!(without_date(&direct.headers), without_date(&other.headers));
        assert!(direct.header("Date").is_some() && other.header("Date").is_some());
    }
    for body in [r#"{"n":1}"#, r#"{"n":2}"#] {
        assert_eq!(
            request(addr, "POST", "/v1/app/ch", body.as_bytes())
                .await
                .status,
            200
        );
    }
    for sub in [&mut direct, &mut kept_alive, &mut via_hyper] {
        let mut data = Vec::new();
        while data.len() < 2 {
            let frame = sub.next_frame().await.expect("frame");
            if frame == ":heartbeat signal\n\n" {
                continue;
            }
            data.push(frame);
        }
        assert_eq!(data, ["data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"]);
        // Heartbeats reach both.
        loop {
            if sub.next_frame().await.expect("frame") == ":heartbeat signal\n\n" {
                break;
            }
        }
    }
    // Both end cleanly on shutdown.
    hub.shutdown().await.unwrap();
    for sub in [&mut direct, &mut kept_alive, &mut via_hyper] {
        while let Some(frame) = sub.next_frame().await {
            assert_eq!(frame, ":heartbeat signal\n\n");
        }
        assert!(sub.ended);
    }
}

/// Reads one response with a `Content-Length` body off a kept-alive connection.
async fn next_response<R: tokio::io::AsyncBufReadExt + Unpin>(
    reader: &mut R,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::AsyncReadExt;
    let (status, headers) = read_head(reader).await;
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("a length"))
        .unwrap_or_else(|| panic!("a Content-Length in {headers:?}"));
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.expect("the body");
    (status, headers, String::from_utf8(body).expect("text"))
}

/// Requests sent back to back on one connection (pipelined) are answered in order, each on the
/// kept-alive connection (a body the hub does not read included), and a subscription after them
/// is served on the hub's direct path, as on a fresh connection.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_subscription_after_them_is_direct() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let requests = [
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        format!("POST /v1/app/ch HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 7\r\n\r\n{{\"a\":1}}"),
        format!("OPTIONS /v1/app/ch HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        // A body nobody reads (no such route): the hub skips it and reads the next request.
        format!("POST /nowhere HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 12\r\n\r\nGET / HTTP/1"),
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        format!("GET /v1/app/ch HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    ]
    .concat();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, headers, body) = next_response(&mut reader).await;
        assert!(
            !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("connection")),
            "a kept-alive answer: {headers:?}"
        );
        answers.push((status, body));
    }
    assert_eq!(answers[0], (200, "ok\n".to_string()));
    assert_eq!(answers[1], (200, String::new()));
    assert_eq!(answers[2], (200, String::new()));
    assert_eq!(answers[3], (404, String::new()));
    assert_eq!(answers[4].0, 200);
    assert!(
        answers[4].1.contains("\"name\": \"signalhub\""),
        "{answers:?}"
    );
    let (status, headers) = read_head(&mut reader).await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&(
            "Content-Type".into(),
            "text/event-stream; charset=utf-8".into()
        )),
        "{headers:?}"
    );
    wait_subscribers(&hub, 1).await;
    assert_eq!(sse_streams(addr).await, (1.0, 0.0), "served directly");
    assert_eq!(
        request(addr, "POST", "/v1/app/ch", b"{\"b\":2}")
            .await
            .status,
        200
    );
    let mut chunk = String::new();
    loop {
        chunk.clear();
        reader.read_line(&mut chunk).await.unwrap();
        if chunk.starts_with("data: ") {
            break;
        }
    }
    assert_eq!(chunk, "data: {\"b\":2}\n");
}

/// A `HEAD` answer has no body: the connection is taken back without one, and the next request
/// on it is answered.
#[tokio::test]
async fn a_head_request_keeps_its_connection_serving() {
    use tokio::io::{AsyncWriteExt, BufReader};
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let requests = format!(
        "HEAD /health HTTP/1.1\r\nHost: {addr}\r\n\r\nGET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    // Only GET is routed there (as in JS signalhub): 404, and no body.
    let (status, headers) = read_head(&mut reader).await;
    assert_eq!(status, 404, "{headers:?}");
    let (status, _headers, body) = next_response(&mut reader).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// A connection whose request body the hub refused unread, and that was not all sent, is not
/// read on as if the rest of the body were a request: it is closed after the answer.
#[tokio::test]
async fn a_body_refused_unread_ends_its_kept_alive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Over the hub's 64 KiB limit, refused before a byte is read; the body that follows
    // looks like a subscription.
    let head = format!("POST /v1/app/ch HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 70000\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let (status, _headers, body) = next_response(&mut reader).await;
    assert_eq!(status, 413, "{body}");
    let mut stream = reader.into_inner();
    let _ = stream
        .write_all(format!("GET /v1/app/ch HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is closed");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(sse_streams(addr).await, (0.0, 0.0));
}

#[tokio::test]
async fn raw_paths_commas_slashes_and_queries() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut encoded = SseClient::connect(addr, "/v1/app/a%2Cb").await;
    let mut a_and_b = SseClient::connect(addr, "/v1/app/a,b?ignored=1").await;
    let mut nested = SseClient::connect(addr, "/v1/app/hello/people").await;
    wait_subscribers(&hub, 4).await;

    // POST keys are raw: `a%2Cb` is one channel, never decoded or split.
    assert_eq!(
        request(addr, "POST", "/v1/app/a%2Cb", b"1").await.status,
        200
    );
    assert_eq!(encoded.next_data().await, "1");
    assert!(a_and_b.is_quiet_for(Duration::from_millis(200)).await);

    // The query is ignored on POST; a comma subscription gets both of its channels.
    assert_eq!(
        request(addr, "POST", "/v1/app/a?zzz", b"2").await.status,
        200
    );
    assert_eq!(request(addr, "POST", "/v1/app/b", b"3").await.status, 200);
    assert_eq!(a_and_b.next_data().await, "2");
    assert_eq!(a_and_b.next_data().await, "3");

    // Slashes inside channel names.
    assert_eq!(
        request(addr, "POST", "/v1/app/hello/people", b"4")
            .await
            .status,
        200
    );
    assert_eq!(nested.next_data().await, "4");

    // Another app's channel of the same name is another channel.
    assert_eq!(request(addr, "POST", "/v1/other/a", b"5").await.status, 200);
    assert!(a_and_b.is_quiet_for(Duration::from_millis(200)).await);
    assert!(encoded.is_quiet_for(Duration::from_millis(10)).await);
}

#[tokio::test]
async fn a_post_to_a_channel_nobody_watches_is_200_and_dropped() {
    let hub = start_hub(unlimited()).await;
    let response = request(hub.local_addr(), "POST", "/v1/app/nobody", b"{}").await;
    assert_eq!(response.status, 200);
    assert!(response.body.is_empty());
}

#[tokio::test]
async fn a_subscription_leaves_every_channel_when_its_connection_closes() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let sub = SseClient::connect(addr, "/v1/app/a,b,c").await;
    wait_subscribers(&hub, 3).await;
    drop(sub);
    wait_subscribers(&hub, 0).await;
    let text = hub.metrics().encode();
    assert_eq!(metric(&text, "signalhub_channels"), 0.0);
}

#[tokio::test]
async fn heartbeat_comment_once_a_period_per_channel_subscription() {
    let hub = start_hub(HubConfig {
        heartbeat: Duration::from_millis(400),
        ..unlimited()
    })
    .await;
    let mut one = SseClient::connect(hub.local_addr(), "/v1/app/solo").await;
    let mut two = SseClient::connect(hub.local_addr(), "/v1/app/x,y").await;
    assert_eq!(
        one.next_frame().await.as_deref(),
        Some(":heartbeat signal\n\n")
    );
    // Within one period a two-channel subscription gets two heartbeats, as in JS signalhub.
    let start = tokio::time::Instant::now();
    assert_eq!(
        two.next_frame().await.as_deref(),
        Some(":heartbeat signal\n\n")
    );
    assert_eq!(
        two.next_frame().await.as_deref(),
        Some(":heartbeat signal\n\n")
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    // Nothing but comments and data: never event:, id: or retry:.
    for _ in 0..3 {
        let frame = one.next_frame().await.expect("frame");
        assert_eq!(frame, ":heartbeat signal\n\n");
    }
}

#[tokio::test]
async fn max_broadcasts_sends_each_post_to_a_random_subset() {
    let hub = start_hub(HubConfig {
        max_broadcasts: Some(2),
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(SseClient::connect(addr, "/v1/app/all").await);
    }
    wait_subscribers(&hub, 5).await;
    assert_eq!(
        request(addr, "POST", "/v1/app/all", b"{}").await.status,
        200
    );
    let mut got = 0;
    for sub in &mut subs {
        if !sub.is_quiet_for(Duration::from_millis(300)).await {
            got += 1;
        }
    }
    assert_eq!(got, 2);
    let text = hub.metrics().encode();
    assert_eq!(metric(&text, "signalhub_messages_delivered_total"), 2.0);
}

/// Refused requests: the status, the message, and a subscriber that still gets the next message.
async fn assert_refused(
    hub: &signalhub::RunningHub,
    watcher: &mut SseClient,
    method: &str,
    target: &str,
    body: &[u8],
    status: u16,
    message_part: &str,
) {
    let addr = hub.local_addr();
    let response = request(addr, method, target, body).await;
    assert_eq!(
        response.status,
        status,
        "{method} {target}: {}",
        response.text()
    );
    assert_cors(&response.headers);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        response.text().contains(message_part),
        "{method} {target}: {:?} should say {message_part:?}",
        response.text()
    );
    let ok = request(addr, "POST", "/v1/app/watch", br#"{"still":"serving"}"#).await;
    assert_eq!(ok.status, 200);
    assert_eq!(watcher.next_data().await, r#"{"still":"serving"}"#);
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_the_hub_keeps_serving() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut watcher = SseClient::connect(addr, "/v1/app/watch").await;
    let mut target = SseClient::connect(addr, "/v1/app/ch").await;
    wait_subscribers(&hub, 2).await;

    // The largest body JS signalhub accepts (65 535 bytes) is delivered whole.
    let largest = format!("\"{}\"", "x".repeat(65_533));
    assert_eq!(
        request(addr, "POST", "/v1/app/ch", largest.as_bytes())
            .await
            .status,
        200
    );
    assert_eq!(target.next_data().await, largest);

    // One byte more is 413 with a message (JS drops the socket without a response).
    let too_large = format!("\"{}\"", "x".repeat(65_534));
    assert_refused(
        &hub,
        &mut watcher,
        "POST",
        "/v1/app/ch",
        too_large.as_bytes(),
        413,
        "at most 65535 bytes",
    )
    .await;
    let huge = vec![b'x'; 1 << 20];
    assert_refused(
        &hub,
        &mut watcher,
        "POST",
        "/v1/app/ch",
        &huge,
        413,
        "too large",
    )
    .await;

    // A raw line break would inject SSE frames.
    assert_refused(
        &hub,
        &mut watcher,
        "POST",
        "/v1/app/ch",
        b"{}\n\ndata: {\"forged\":1}",
        400,
        "line break",
    )
    .await;
    assert_refused(
        &hub,
        &mut watcher,
        "POST",
        "/v1/app/ch",
        b"{\r}",
        400,
        "line break",
    )
    .await;
    assert_refused(&hub, &mut watcher, "POST", "/v1/app/ch", b"", 400, "empty").await;
    // `null` ends JS clients' streams (and, bridged, crashes signalhubws clients).
    assert_refused(
        &hub,
        &mut watcher,
        "POST",
        "/v1/app/ch",
        b" null",
        400,
        "null message",
    )
    .await;
    assert!(
        target.is_quiet_for(Duration::from_millis(200)).await,
        "nothing refused was delivered"
    );

    let text = hub.metrics().encode();
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"body_too_large\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "signalhub_rejected_total{reason=\"body_has_newline\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"empty_body\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_body_over_the_limit_sent_chunked_is_413() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut stream = connect_from(addr, None).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"POST /v1/app/ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'a'; 40_000];
    for _ in 0..2 {
        let _ = stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = stream.write_all(&chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413 "), "{response}");
    assert!(response.contains("at most 65535 bytes"), "{response}");
}

#[tokio::test]
async fn bad_paths_get_clear_errors_and_the_hub_keeps_serving() {
    let hub = start_hub(HubConfig {
        max_channels_per_subscribe: 4,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut watcher = SseClient::connect(addr, "/v1/app/watch").await;
    wait_subscribers(&hub, 1).await;
    let long = "n".repeat(257);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("GET", "/v1/".into(), 400, "missing channel"),
        ("GET", "/v1/app".into(), 400, "missing channel"),
        ("GET", "/v1//ch".into(), 400, "empty app"),
        ("GET", "/v1/app/".into(), 400, "empty channel"),
        ("GET", "/v1/app/a,,b".into(), 400, "empty channel"),
        ("GET", "/v1/app/1,2,3,4,5".into(), 400, "at most 4"),
        ("GET", format!("/v1/{long}/ch"), 414, "at most 256"),
        ("GET", format!("/v1/app/ok,{long}"), 414, "at most 256"),
        (
            "GET",
            format!("/v1/app/ch?{}", "q".repeat(5000)),
            414,
            "at most 4096",
        ),
        ("POST", "/v1/app".into(), 400, "missing channel"),
        ("POST", "/v1/app/".into(), 400, "empty channel"),
        ("POST", "/v1/app/a,b".into(), 400, "one channel"),
        ("POST", format!("/v1/app/{long}"), 414, "at most 256"),
    ];
    for (method, target, status, message) in cases {
        assert_refused(&hub, &mut watcher, method, &target, b"{}", status, message).await;
    }
    let text = hub.metrics().encode();
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"malformed_path\"}"),
        8.0
    );
    assert_eq!(
        metric(
            &text,
            "signalhub_rejected_total{reason=\"too_many_channels\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"name_too_long\"}"),
        3.0
    );
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"uri_too_long\"}"),
        1.0
    );
}

#[tokio::test]
async fn broadcasts_over_the_rate_get_429_with_retry_after_per_address() {
    let hub = start_hub(HubConfig {
        broadcasts_per_sec: 2,
        broadcast_burst: 5,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut watcher = SseClient::connect(addr, "/v1/app/watch").await;
    wait_subscribers(&hub, 1).await;
    for i in 0..5 {
        let response = request(addr, "POST", "/v1/app/ch", b"{}").await;
        assert_eq!(response.status, 200, "broadcast {i} is within the burst");
    }
    let response = request(addr, "POST", "/v1/app/ch", b"{}").await;
    assert_eq!(response.status, 429);
    assert_cors(&response.headers);
    let retry: u64 = response
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(
        response.text().contains("at most 2 a second"),
        "{}",
        response.text()
    );

    // Another address has its own allowance, and subscribers are unaffected.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let response = request_from(addr, Some(other), "POST", "/v1/app/watch", b"\"other\"").await;
    assert_eq!(response.status, 200);
    assert_eq!(watcher.next_data().await, "\"other\"");
    let text = hub.metrics().encode();
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"rate_limited\"}"),
        1.0
    );
}

#[tokio::test]
async fn behind_a_proxy_limits_count_the_forwarded_address() {
    let hub = start_hub(HubConfig {
        broadcasts_per_sec: 1,
        broadcast_burst: 1,
        max_connections_per_ip: 1,
        trust_forwarded_for: true,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    // Every connection comes from the proxy's address: no per-address connection limit then.
    let _a = SseClient::connect(addr, "/v1/app/a").await;
    let _b = SseClient::connect(addr, "/v1/app/b").await;
    wait_subscribers(&hub, 2).await;
    let post = |client: &'static str| async move {
        let mut stream = connect_from(addr, None).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "POST /v1/app/a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    assert!(post("203.0.113.1").await.starts_with("HTTP/1.1 200"));
    assert!(
        post("203.0.113.1").await.starts_with("HTTP/1.1 429"),
        "same client, over its rate"
    );
    assert!(
        post("198.51.100.7, 203.0.113.2")
            .await
            .starts_with("HTTP/1.1 200"),
        "the last entry counts"
    );
}

#[tokio::test]
async fn connections_over_the_per_address_limit_get_429() {
    let hub = start_hub(HubConfig {
        max_connections_per_ip: 2,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let first = SseClient::connect(addr, "/v1/app/a").await;
    let _second = SseClient::connect(addr, "/v1/app/b").await;
    wait_subscribers(&hub, 2).await;
    let refused = request(addr, "GET", "/", b"").await;
    assert_eq!(refused.status, 429);
    assert_cors(&refused.headers);
    assert!(refused.text().contains("at most 2"), "{}", refused.text());

    let other: IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(
        request_from(addr, Some(other), "GET", "/", b"")
            .await
            .status,
        200
    );

    drop(first);
    wait_subscribers(&hub, 1).await;
    eventually("the closed connection to be released", || {
        metric(
            &hub.metrics().encode(),
            "signalhub_connections{transport=\"http\"}",
        ) <= 1.0
    })
    .await;
    assert_eq!(request(addr, "GET", "/", b"").await.status, 200);
    let text = hub.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "signalhub_rejected_total{reason=\"too_many_connections_per_ip\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn connections_over_the_total_limit_get_503() {
    let hub = start_hub(HubConfig {
        max_connections: 1,
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let _held = SseClient::connect(addr, "/v1/app/a").await;
    wait_subscribers(&hub, 1).await;
    let refused = request(addr, "GET", "/", b"").await;
    assert_eq!(refused.status, 503);
    assert!(
        refused.text().contains("at most 1 connections"),
        "{}",
        refused.text()
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let hub = start_hub(HubConfig {
        request_timeout: Duration::from_millis(500),
        ..unlimited()
    })
    .await;
    let addr = hub.local_addr();
    let mut stream = connect_from(addr, None).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /v1/app/ch HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the hub closed the connection within the timeout"
    );
    eventually("the connection to be released", || {
        metric(
            &hub.metrics().encode(),
            "signalhub_connections{transport=\"http\"}",
        ) == 0.0
    })
    .await;
}

#[tokio::test]
async fn health_and_metrics() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let health = request(addr, "GET", "/health", b"").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    let _sub = SseClient::connect(addr, "/v1/app/a,b").await;
    wait_subscribers(&hub, 2).await;
    assert_eq!(request(addr, "POST", "/v1/app/a", b"{}").await.status, 200);
    let metrics = request(addr, "GET", "/metrics", b"").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("Content-Type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = metrics.text();
    for (name, value) in [
        ("signalhub_subscribers", 2.0),
        ("signalhub_channels", 2.0),
        ("signalhub_connections{transport=\"sse\"}", 1.0),
        ("signalhub_connections{transport=\"ws\"}", 0.0),
        ("signalhub_broadcasts_total{transport=\"http\"}", 1.0),
        ("signalhub_messages_delivered_total", 1.0),
        ("signalhub_messages_dropped_total", 0.0),
        ("signalhub_subscribers_dropped_total", 0.0),
    ] {
        assert_eq!(metric(&text, name), value, "{name} in\n{text}");
    }
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"rate_limited\"}"),
        0.0
    );
    assert!(
        text.contains("signalhub_rejected_total{reason=\"rate_limited\"} 0"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn shutdown_ends_streams_cleanly_and_refuses_new_connections() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let mut sub = SseClient::connect(addr, "/v1/app/a").await;
    wait_subscribers(&hub, 1).await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(STEP, hub.shutdown())
        .await
        .expect("shutdown in time")
        .expect("clean shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no need to wait for the grace period"
    );
    // The chunked body ends with its last chunk: a clean end, not a reset.
    assert_eq!(sub.next_frame().await, None);
    assert!(sub.ended);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn ice_servers_hand_out_expiring_turn_credentials() {
    let hub = start_hub(unlimited()).await;
    let response = request(hub.local_addr(), "GET", "/ice-servers", b"").await;
    assert_eq!(
        response.status, 404,
        "without --ice-server there is nothing to hand out"
    );

    let ice = signalhub::IceServers {
        urls: vec![
            "stun:198.51.100.2:3478".to_string(),
            "turn:198.51.100.2:3478".to_string(),
            "turn:198.51.100.2:3478?transport=tcp".to_string(),
        ],
        turn_secret: Some("lab-secret".to_string()),
        ttl: Duration::from_secs(600),
        tag: "signalhub".to_string(),
    };
    let hub = start_hub(HubConfig {
        ice_servers: Some(ice),
        ..unlimited()
    })
    .await;
    let response = request(hub.local_addr(), "GET", "/ice-servers?t=1", b"").await;
    assert_eq!(response.status, 200);
    assert_cors(&response.headers);
    assert_eq!(response.header("Cache-Control"), Some("no-store"));
    let servers: serde_json::Value = serde_json::from_str(&response.text()).unwrap();
    assert_eq!(
        servers[0],
        serde_json::json!({"urls": ["stun:198.51.100.2:3478"]})
    );
    let username = servers[1]["username"].as_str().unwrap();
    let (expiry, tag) = username.split_once(':').unwrap();
    assert_eq!(tag, "signalhub");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "expiry {expiry} is the TTL from now ({now})"
    );
    assert_eq!(
        servers[1]["credential"].as_str().unwrap(),
        signalhub::turn_credential("lab-secret", username)
    );
    assert_eq!(servers[1]["urls"].as_array().unwrap().len(), 2);
}
