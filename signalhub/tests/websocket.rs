//! The signalhubws-compatible WebSocket transport and its bridge to SSE/POST, against the real hub.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(hub: &signalhub::RunningHub, path: &str) -> Ws {
    let url = format!("ws://{}{path}", hub.local_addr());
    let (socket, response) = tokio::time::timeout(STEP, connect_async(url))
        .await
        .expect("connect in time")
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..]),
        "CORS headers on the 101 too"
    );
    socket
}

async fn next_text(socket: &mut Ws) -> String {
    loop {
        let message = tokio::time::timeout(STEP, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn quiet(socket: &mut Ws, wait: Duration) -> bool {
    tokio::time::timeout(wait, socket.next()).await.is_err()
}

#[tokio::test]
async fn frames_reach_every_client_of_the_app_and_sse_subscribers_of_the_channel() {
    let hub = start_hub(unlimited()).await;
    let mut a = ws(&hub, "/chat").await;
    let mut b = ws(&hub, "/some/prefix/chat").await;
    let mut other_app = ws(&hub, "/other").await;
    let mut sse = SseClient::connect(hub.local_addr(), "/v1/chat/room").await;
    wait_subscribers(&hub, 4).await;

    let frame = r#"{"app":"chat","channel":"room","message":{"from":"a","text":"hi"}}"#;
    a.send(Message::text(frame)).await.unwrap();
    // Verbatim to every client of the app, the sender too, whatever the channel (as signalhubws).
    assert_eq!(next_text(&mut a).await, frame);
    assert_eq!(next_text(&mut b).await, frame);
    assert!(quiet(&mut other_app, Duration::from_millis(200)).await);
    // Bridged: the message alone to the SSE subscribers of chat/room.
    assert_eq!(sse.next_data().await, r#"{"from":"a","text":"hi"}"#);

    // A message with line breaks inside (white space of pretty JSON) stays one SSE data line.
    let pretty = "{\"app\":\"chat\",\"channel\":\"room\",\"message\":{\n  \"x\": \"a\\nb\"\n}}";
    b.send(Message::text(pretty)).await.unwrap();
    assert_eq!(sse.next_data().await, "{  \"x\": \"a\\nb\"}");
    let text = hub.metrics().encode();
    assert_eq!(
        metric(&text, "signalhub_broadcasts_total{transport=\"ws\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "signalhub_connections{transport=\"ws\"}"),
        3.0
    );
}

#[tokio::test]
async fn a_post_reaches_websocket_clients_of_its_app() {
    let hub = start_hub(unlimited()).await;
    let mut client = ws(&hub, "/chat").await;
    wait_subscribers(&hub, 1).await;
    let response = request(hub.local_addr(), "POST", "/v1/chat/room/1", br#"{"n":1}"#).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        next_text(&mut client).await,
        r#"{"app":"chat","channel":"room/1","message":{"n":1}}"#
    );
    // A body that is not JSON (JS signalhub does not check) travels as a string, so the frame parses.
    let response = request(hub.local_addr(), "POST", "/v1/chat/room", b"plain \"text\"").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        next_text(&mut client).await,
        r#"{"app":"chat","channel":"room","message":"plain \"text\""}"#
    );
}

#[tokio::test]
async fn bad_frames_are_dropped_and_the_socket_keeps_working() {
    let hub = start_hub(unlimited()).await;
    let mut a = ws(&hub, "/chat").await;
    let mut b = ws(&hub, "/chat").await;
    wait_subscribers(&hub, 2).await;
    for bad in [
        "not json",
        r#"{"app":"chat","channel":"room"}"#,
        r#"{"channel":"room","message":1}"#,
        r#"{"app":"","channel":"room","message":1}"#,
        r#"{"app":"chat","channel":"room","message":null}"#,
    ] {
        a.send(Message::text(bad)).await.unwrap();
    }
    let good = r#"{"app":"chat","channel":"room","message":1}"#;
    a.send(Message::text(good)).await.unwrap();
    assert_eq!(
        next_text(&mut b).await,
        good,
        "the bad frames were not forwarded"
    );
    let text = hub.metrics().encode();
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"bad_frame\"}"),
        4.0
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_socket() {
    let hub = start_hub(unlimited()).await;
    let mut big = ws(&hub, "/chat").await;
    let mut other = ws(&hub, "/chat").await;
    wait_subscribers(&hub, 2).await;
    let huge = format!(
        r#"{{"app":"chat","channel":"c","message":"{}"}}"#,
        "x".repeat(200_000)
    );
    let _ = big.send(Message::text(huge)).await;
    let closed = tokio::time::timeout(STEP, async {
        loop {
            match big.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the hub closed the socket that sent an oversized frame"
    );
    wait_subscribers(&hub, 1).await;
    let text = hub.metrics().encode();
    assert_eq!(
        metric(&text, "signalhub_rejected_total{reason=\"body_too_large\"}"),
        1.0,
        "{text}"
    );
    let good = r#"{"app":"chat","channel":"room","message":2}"#;
    other.send(Message::text(good)).await.unwrap();
    assert_eq!(next_text(&mut other).await, good);
}

#[tokio::test]
async fn an_upgrade_without_an_app_is_400() {
    let hub = start_hub(unlimited()).await;
    let url = format!("ws://{}/", hub.local_addr());
    match connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_closes_websockets_with_going_away() {
    let hub = start_hub(unlimited()).await;
    let mut client = ws(&hub, "/chat").await;
    wait_subscribers(&hub, 1).await;
    let shutdown = tokio::spawn(hub.shutdown());
    let message = tokio::time::timeout(STEP, client.next())
        .await
        .expect("a close frame in time")
        .expect("a frame")
        .expect("a frame");
    match message {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    drop(client);
    shutdown.await.unwrap().unwrap();
}
