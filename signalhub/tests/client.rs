//! `signalhub::client` against real hubs: subscribe and broadcast, several hubs delivering each
//! message once and surviving the loss of one, reconnecting after a hub restarts, and errors.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use signalhub::client::{Client, ClientError, ClientOptions, Subscription};
use signalhub::{Hub, RunningHub};

fn fast_options() -> ClientOptions {
    ClientOptions {
        reconnect_delay: Duration::from_millis(100),
        max_reconnect_delay: Duration::from_millis(400),
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

async fn next(sub: &mut Subscription) -> Value {
    tokio::time::timeout(STEP, sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

async fn nothing_more(sub: &mut Subscription, wait: Duration) -> bool {
    tokio::time::timeout(wait, sub.next()).await.is_err()
}

async fn restart_on(addr: SocketAddr) -> RunningHub {
    Hub::bind(addr, unlimited())
        .await
        .expect("rebind the same port")
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn subscribe_and_broadcast_keep_key_order() {
    let hub = start_hub(unlimited()).await;
    let client = Client::with_options("app", [hub.url()], fast_options()).unwrap();
    let mut sub = client.subscribe(["a", "b"]).unwrap();
    sub.opened().await.unwrap();
    client
        .broadcast("a", &json!({"type": "connect", "from": "x"}))
        .await
        .unwrap();
    client
        .broadcast_raw("b", br#"{"z":1,"a":2}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(
        next(&mut sub).await.to_string(),
        r#"{"type":"connect","from":"x"}"#
    );
    assert_eq!(next(&mut sub).await.to_string(), r#"{"z":1,"a":2}"#);
}

#[tokio::test]
async fn messages_that_are_not_json_are_skipped() {
    let hub = start_hub(unlimited()).await;
    let client = Client::with_options("app", [hub.url()], fast_options()).unwrap();
    let mut sub = client.subscribe(["a"]).unwrap();
    sub.opened().await.unwrap();
    assert_eq!(
        request(hub.local_addr(), "POST", "/v1/app/a", b"not json")
            .await
            .status,
        200
    );
    client.broadcast("a", &json!(1)).await.unwrap();
    assert_eq!(next(&mut sub).await, json!(1));
}

#[tokio::test]
async fn several_hubs_deliver_each_message_once_and_survive_losing_one() {
    let first = start_hub(unlimited()).await;
    let second = start_hub(unlimited()).await;
    let client = Client::with_options("app", [first.url(), second.url()], fast_options()).unwrap();
    let mut sub = client.subscribe(["all"]).unwrap();
    let mut connected = sub.connected_hubs();
    tokio::time::timeout(STEP, connected.wait_for(|&n| n == 2))
        .await
        .unwrap()
        .unwrap();

    client.broadcast("all", &json!({"n": 1})).await.unwrap();
    assert_eq!(next(&mut sub).await, json!({"n": 1}));
    assert!(
        nothing_more(&mut sub, Duration::from_millis(300)).await,
        "the copy from the other hub is dropped"
    );

    // The same message sent twice is two messages.
    client.broadcast("all", &json!({"n": 1})).await.unwrap();
    assert_eq!(next(&mut sub).await, json!({"n": 1}));
    assert!(nothing_more(&mut sub, Duration::from_millis(300)).await);

    // A message posted to one hub only still arrives, once.
    let only_second = Client::new("app", [second.url()]).unwrap();
    only_second
        .broadcast("all", &json!({"n": 2}))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, json!({"n": 2}));

    // One hub gone: broadcasting and receiving go on through the other.
    first.shutdown().await.unwrap();
    tokio::time::timeout(STEP, connected.wait_for(|&n| n == 1))
        .await
        .unwrap()
        .unwrap();
    client.broadcast("all", &json!({"n": 3})).await.unwrap();
    assert_eq!(next(&mut sub).await, json!({"n": 3}));
    assert!(nothing_more(&mut sub, Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_subscription_reconnects_after_the_hub_restarts() {
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let client = Client::with_options("app", [hub.url()], fast_options()).unwrap();
    let mut sub = client.subscribe(["ch"]).unwrap();
    let mut connected = sub.connected_hubs();
    sub.opened().await.unwrap();
    hub.shutdown().await.unwrap();
    tokio::time::timeout(STEP, connected.wait_for(|&n| n == 0))
        .await
        .unwrap()
        .unwrap();
    assert!(
        client.broadcast("ch", &json!(1)).await.is_err(),
        "no hub to take it"
    );

    let hub = restart_on(addr).await;
    tokio::time::timeout(STEP, connected.wait_for(|&n| n == 1))
        .await
        .unwrap()
        .unwrap();
    client
        .broadcast("ch", &json!({"after": "restart"}))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, json!({"after": "restart"}));
    drop(hub);
}

#[tokio::test]
async fn a_silent_hub_is_noticed_by_the_idle_timeout() {
    // A "hub" that answers 200 with an event stream and then says nothing, ever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            held.push(stream);
        }
    });
    let options = ClientOptions {
        idle_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let client = Client::with_options("app", [format!("http://{addr}")], options).unwrap();
    let _sub = client.subscribe(["ch"]).unwrap();
    eventually("a reconnect after the idle timeout", || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
}

#[tokio::test]
async fn broadcast_errors_name_each_hub_and_its_answer() {
    let hub = start_hub(unlimited()).await;
    let dead = "http://127.0.0.1:9"; // discard port: nothing listens there
    let client = Client::with_options("app", [hub.url(), dead], fast_options()).unwrap();
    // One hub took it: success.
    client.broadcast("ch", &json!(1)).await.unwrap();
    // Every hub refused: the error says why, per hub.
    let too_big = "x".repeat(70_000);
    match client.broadcast("ch", &too_big).await {
        Err(ClientError::AllHubsFailed(failures)) => {
            assert_eq!(failures.len(), 2);
            let from_hub = failures.iter().find(|f| f.hub == hub.url()).unwrap();
            assert_eq!(from_hub.status, Some(413));
            assert!(
                from_hub.message.contains("at most 65535 bytes"),
                "{}",
                from_hub.message
            );
            let from_dead = failures.iter().find(|f| f.hub == dead).unwrap();
            assert_eq!(from_dead.status, None);
        }
        other => panic!("expected AllHubsFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn close_ends_subscriptions_and_refuses_further_calls() {
    let hub = start_hub(unlimited()).await;
    let client = Client::with_options("app", [hub.url()], fast_options()).unwrap();
    let mut sub = client.subscribe(["ch"]).unwrap();
    sub.opened().await.unwrap();
    client.close();
    assert!(tokio::time::timeout(STEP, sub.next())
        .await
        .unwrap()
        .is_none());
    wait_subscribers(&hub, 0).await;
    assert!(matches!(
        client.broadcast("ch", &json!(1)).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(client.subscribe(["ch"]), Err(ClientError::Closed)));
}

#[tokio::test]
async fn bad_arguments_are_typed_errors() {
    assert!(matches!(Client::new("", ["h"]), Err(ClientError::EmptyApp)));
    assert!(matches!(
        Client::new("app", Vec::<String>::new()),
        Err(ClientError::NoHubs)
    ));
    assert!(matches!(
        Client::new("app", ["ftp://x"]),
        Err(ClientError::BadUrl { .. })
    ));
    let client = Client::new("app", ["127.0.0.1:1"]).unwrap();
    assert_eq!(client.hubs(), ["http://127.0.0.1:1"]);
    assert!(matches!(
        client.subscribe(["a,b"]),
        Err(ClientError::BadName { .. })
    ));
    assert!(matches!(
        client.broadcast("a?b", &1).await,
        Err(ClientError::BadName { .. })
    ));
}
