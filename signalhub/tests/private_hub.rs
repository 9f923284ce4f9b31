//! A private hub: `--allow-origin`, `--apps` and Ed25519 tokens (`--token-key`), against raw HTTP,
//! the real JS `signalhub` and `signalhubws` clients given a token-bearing hub URL, a real
//! Chromium page from an allowed and from a refused origin, and the Rust client. Each with a
//! valid, an expired, a wrong-app and a missing token.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use signalhub::{Access, HubConfig, Rejection, RunningHub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "support/node_script.rs"]
mod node_script;
use node_script::{require_js_setup, NodeScript};

const ALLOWED_ORIGIN: &str = "https://app.example";

struct Keys {
    secret: ed25519_dalek::SigningKey,
    public: String,
}

fn keys() -> Keys {
    let (secret, public) = signalhub::generate_token_keys();
    Keys {
        secret: signalhub::parse_signing_key(&secret).unwrap(),
        public,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Tokens of every kind the tests try, for app pattern `app`.
struct Tokens {
    valid: String,
    expired: String,
    wrong_app: String,
    forged: String,
}

fn tokens(keys: &Keys, app: &str) -> Tokens {
    Tokens {
        valid: signalhub::mint_token(&keys.secret, app, now() + 600),
        expired: signalhub::mint_token(&keys.secret, app, now() - 1),
        wrong_app: signalhub::mint_token(&keys.secret, "some-other-app", now() + 600),
        forged: signalhub::mint_token(&self::keys().secret, app, now() + 600),
    }
}

async fn private_hub(keys: &Keys, origins: &[&str], apps: &[&str]) -> RunningHub {
    start_hub(HubConfig {
        access: Access {
            origins: origins.iter().map(|o| o.to_string()).collect(),
            apps: apps.iter().map(|a| a.to_string()).collect(),
            token_keys: vec![signalhub::parse_verifying_key(&keys.public).unwrap()],
        },
        ..unlimited()
    })
    .await
}

/// A raw request with extra header lines; the status, the head, and the body read so far.
async fn raw(
    hub: &RunningHub,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(hub.local_addr()).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: hub\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let request = if method == "GET" {
        request.replace("Content-Length: 0\r\n", "")
    } else {
        request
    };
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // An SSE stream does not end: take what comes in a moment.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn raw_requests_get_the_right_answer_for_each_token_origin_and_app() {
    let keys = keys();
    let hub = private_hub(&keys, &[ALLOWED_ORIGIN], &["chat-*"]).await;
    let t = tokens(&keys, "chat-*");
    let origin = format!("Origin: {ALLOWED_ORIGIN}\r\n");

    // A valid token in the hub URL's path: served (the direct path), granting the allowed origin.
    let (status, head, _) = raw(
        &hub,
        "GET",
        &format!("/t/{}/v1/chat-a/x", t.valid),
        &origin,
        "",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    assert_eq!(header(&head, "vary"), Some("Origin"));
    // Not a browser (no Origin): served, with no CORS grant at all.
    let (status, head, _) = raw(&hub, "GET", &format!("/t/{}/v1/chat-a/x", t.valid), "", "").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), None);
    // In the query, and in a cookie.
    let (status, _, _) = raw(
        &hub,
        "GET",
        &format!("/v1/chat-a/x?token={}", t.valid),
        "",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let cookie = format!("Cookie: theme=dark; signalhub_token={}\r\n", t.valid);
    let (status, _, _) = raw(&hub, "GET", "/v1/chat-a/x", &cookie, "").await;
    assert_eq!(status, 200);

    for (what, target, headers, status, reason, says) in [
        (
            "missing",
            "/v1/chat-a/x".to_string(),
            origin.clone(),
            401,
            Rejection::TokenMissing,
            "needs a token",
        ),
        (
            "expired",
            format!("/t/{}/v1/chat-a/x", t.expired),
            origin.clone(),
            403,
            Rejection::TokenExpired,
            "expired",
        ),
        (
            "wrong app",
            format!("/t/{}/v1/chat-a/x", t.wrong_app),
            origin.clone(),
            403,
            Rejection::TokenWrongApp,
            "is for \"some-other-app\"",
        ),
        (
            "forged",
            format!("/t/{}/v1/chat-a/x", t.forged),
            origin.clone(),
            403,
            Rejection::TokenInvalid,
            "not signed by a key this hub trusts",
        ),
        (
            "garbage",
            "/t/nonsense/v1/chat-a/x".to_string(),
            origin.clone(),
            403,
            Rejection::TokenInvalid,
            "invalid token",
        ),
        (
            "app not served",
            format!("/t/{}/v1/other/x", t.valid),
            origin.clone(),
            404,
            Rejection::AppNotServed,
            "does not serve the app \"other\"",
        ),
        (
            "refused origin",
            format!("/t/{}/v1/chat-a/x", t.valid),
            "Origin: https://evil.example\r\n".to_string(),
            403,
            Rejection::OriginNotAllowed,
            "origin https://evil.example may not use this hub",
        ),
    ] {
        let before = hub.metrics().rejected(reason);
        for method in ["GET", "POST"] {
            let (got, head, body) = raw(&hub, method, &target, &headers, "{}").await;
            assert_eq!(got, status, "{what}, {method}: {head}\n{body}");
            assert!(body.contains(says), "{what}, {method}: {body:?}");
            assert_ne!(
                header(&head, "access-control-allow-origin"),
                Some("*"),
                "{what}: a private hub never grants every origin"
            );
        }
        assert_eq!(hub.metrics().rejected(reason), before + 2, "{what} counted");
    }

    // A broadcast with a token reaches a subscriber with one.
    let mut sub =
        SseClient::connect(hub.local_addr(), &format!("/t/{}/v1/chat-a/room", t.valid)).await;
    wait_subscribers(&hub, 1).await;
    let (status, _, _) = raw(
        &hub,
        "POST",
        &format!("/t/{}/v1/chat-a/room", t.valid),
        "",
        "{\"hi\":1}",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sub.next_data().await, "{\"hi\":1}");
    // The preflight of an allowed origin is answered for it; a refused one's is not.
    let (status, head, _) = raw(&hub, "OPTIONS", "/v1/chat-a/room", &origin, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    let (status, _, _) = raw(
        &hub,
        "OPTIONS",
        "/v1/chat-a/room",
        "Origin: https://evil.example\r\n",
        "",
    )
    .await;
    assert_eq!(status, 403);
    // /health and /metrics stay open to operators.
    assert_eq!(raw(&hub, "GET", "/health", "", "").await.0, 200);
    assert_eq!(raw(&hub, "GET", "/metrics", "", "").await.0, 200);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn turn_credentials_need_a_token_on_a_private_hub() {
    let keys = keys();
    let hub = start_hub(HubConfig {
        access: Access {
            token_keys: vec![signalhub::parse_verifying_key(&keys.public).unwrap()],
            ..Access::default()
        },
        ice_servers: Some(signalhub::IceServers {
            urls: vec!["turn:198.51.100.2:3478".to_string()],
            turn_secret: Some("s".to_string()),
            ttl: Duration::from_secs(60),
            tag: "signalhub".to_string(),
        }),
        ..unlimited()
    })
    .await;
    assert_eq!(raw(&hub, "GET", "/ice-servers", "", "").await.0, 401);
    let token = signalhub::mint_token(&keys.secret, "any-app", now() + 60);
    let (status, _, body) = raw(&hub, "GET", &format!("/t/{token}/ice-servers"), "", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"credential\""), "{body}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_rust_client_works_with_a_token_bearing_hub_url() {
    let keys = keys();
    let hub = private_hub(&keys, &[], &[]).await;
    let t = tokens(&keys, "rust-app");
    let url = |token: &str| format!("{}/t/{token}", hub.url());
    let client = signalhub::client::Client::new("rust-app", [url(&t.valid)]).unwrap();
    let mut stream = client.subscribe(["ch"]).expect("subscribe with a token");
    wait_subscribers(&hub, 1).await;
    client
        .broadcast("ch", &json!({"n": 1}))
        .await
        .expect("broadcast with a token");
    let got = tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut stream))
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(got, json!({"n": 1}));
    for bad in [&t.expired, &t.wrong_app, &t.forged] {
        let client = signalhub::client::Client::new("rust-app", [url(bad)]).unwrap();
        let err = client.broadcast("ch", &json!({"n": 2})).await.unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
    }
    let client = signalhub::client::Client::new("rust-app", [hub.url()]).unwrap();
    let err = client.broadcast("ch", &json!({"n": 3})).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    hub.shutdown().await.unwrap();
}

const JS: &[(&str, Option<&str>)] = &[
    ("signalhub", Some("4.9.0")),
    ("signalhubws", Some("1.0.12")),
    ("ws", None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_clients_work_unchanged_with_a_token_in_the_hub_url() {
    require_js_setup(JS);
    let keys = keys();
    // The JS scripts use the app `interop`.
    let hub = private_hub(&keys, &[], &["interop"]).await;
    let t = tokens(&keys, "interop");
    let url = |token: &str| format!("{}/t/{token}", hub.url());
    let step = Duration::from_secs(60);

    // signalhub (SSE + POST), valid token: subscribes and broadcasts.
    let mut sse = NodeScript::spawn(
        "signalhub-client.mjs",
        &[&url(&t.valid), "reconnect", "120"],
        step,
    );
    sse.wait_event("open").await;
    sse.send(json!({"cmd": "broadcast", "id": 1, "channel": "ch", "message": {"via": "sse"}}));
    let done = sse
        .wait_for("broadcast 1", |e| {
            e["event"] == "broadcasted" && e["id"] == 1
        })
        .await;
    assert_eq!(done["error"], Value::Null, "{done}");
    sse.wait_for("its own message", |e| {
        e["event"] == "data" && e["data"] == json!({"via": "sse"})
    })
    .await;

    // signalhubws, valid token: a frame bridges to the SSE client.
    let ws_url = url(&t.valid).replacen("http://", "ws://", 1);
    let mut ws = NodeScript::spawn("signalhubws-client.mjs", &[&ws_url, "bridge", "120"], step);
    ws.wait_for("A open", |e| e["event"] == "open" && e["client"] == "A")
        .await;
    ws.send(json!({"cmd": "broadcast", "client": "A", "id": 1, "channel": "ch", "message": {"via": "ws"}}));
    sse.wait_for("the WebSocket message", |e| {
        e["event"] == "data" && e["data"] == json!({"via": "ws"})
    })
    .await;

    // Expired, wrong-app, forged and missing tokens: the JS client's broadcast fails with the
    // hub's status, and its subscription never opens.
    for (what, hub_url, status) in [
        ("expired", url(&t.expired), 403),
        ("wrong app", url(&t.wrong_app), 403),
        ("forged", url(&t.forged), 403),
        ("missing", hub.url().to_string(), 401),
    ] {
        let mut client = NodeScript::spawn(
            "signalhub-client.mjs",
            &[&hub_url, "broadcast", "120"],
            step,
        );
        client.wait_event("ready").await;
        client.send(json!({"cmd": "broadcast", "id": 1, "channel": "ch", "message": {"no": what}}));
        let done = client
            .wait_for("the refused broadcast", |e| e["event"] == "broadcasted")
            .await;
        assert_eq!(
            done["error"],
            json!(format!("Bad status: {status}")),
            "{what}: {done}"
        );
        client.close().await;
    }
    let before = hub.metrics().rejected(Rejection::TokenExpired);
    let mut refused = NodeScript::spawn(
        "signalhub-client.mjs",
        &[&url(&t.expired), "reconnect", "120"],
        step,
    );
    refused.wait_event("ready").await;
    eventually("the expired subscription refused", || {
        hub.metrics().rejected(Rejection::TokenExpired) > before
    })
    .await;
    let ws_refused = url(&t.expired).replacen("http://", "ws://", 1);
    let before = hub.metrics().rejected(Rejection::TokenExpired);
    let mut ws_bad = NodeScript::spawn(
        "signalhubws-client.mjs",
        &[&ws_refused, "bridge", "120"],
        step,
    );
    eventually("the expired WebSocket refused", || {
        hub.metrics().rejected(Rejection::TokenExpired) > before
    })
    .await;
    let opened = tokio::time::timeout(
        Duration::from_secs(1),
        ws_bad.wait_for("an open", |e| e["event"] == "open"),
    )
    .await;
    assert!(
        opened.is_err(),
        "a WebSocket with an expired token never opens"
    );
    // Nothing from the refused clients reached the subscriber.
    ws_bad.kill();
    refused.kill();
    let rest = sse.close().await;
    assert!(
        !rest
            .iter()
            .any(|e| e["event"] == "data" && e["data"].get("no").is_some()),
        "{rest:?}"
    );
    ws.close().await;
    hub.shutdown().await.unwrap();
}

/// The page's outcome from `js/browser-cors.mjs`, serving its page on `page_port`; its Chromium
/// profile is removed even if the script is killed.
async fn browser_page(hub_url: &str, page_port: u16) -> Value {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "{} is missing: apt-get install chromium",
        chromium.display()
    );
    require_js_setup(&[("playwright-core", None)]);
    let mut node = NodeScript::spawn(
        "browser-cors.mjs",
        &[hub_url, "240", &page_port.to_string()],
        Duration::from_secs(120),
    );
    let page = node.wait_event("page").await;
    let profile = page["userDataDir"].as_str().map(std::path::PathBuf::from);
    let result = node.wait_event("result").await;
    node.wait_exit().await;
    if let Some(profile) = profile {
        let _ = std::fs::remove_dir_all(profile);
    }
    result
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_from_an_allowed_origin_work_and_from_others_are_refused() {
    let keys = keys();
    let allowed_port = free_port();
    let allowed = format!("http://127.0.0.1:{allowed_port}");
    // The page uses the app `app`.
    let hub = private_hub(&keys, &[&allowed], &["app"]).await;
    let t = tokens(&keys, "app");
    let hub_url = format!("{}/t/{}", hub.url(), t.valid);

    // From the allowed origin, with a valid token: EventSource and a preflighted fetch work.
    let result = browser_page(&hub_url, allowed_port).await;
    assert_eq!(result["origin"], json!(allowed), "{result:#}");
    assert_eq!(result["fetchStatus"], json!(200), "{result:#}");
    assert_eq!(result["received"], result["sent"], "{result:#}");
    assert_eq!(result["eventSourceErrors"], json!([]), "{result:#}");

    // From another origin: the hub refuses the EventSource (403) and the preflight, so the
    // browser gets no stream and its fetch fails.
    let before = hub.metrics().rejected(Rejection::OriginNotAllowed);
    let result = browser_page(&hub_url, free_port()).await;
    assert_ne!(result["origin"], json!(allowed));
    assert_eq!(result["received"], Value::Null, "{result:#}");
    assert!(
        !result["eventSourceErrors"].as_array().unwrap().is_empty(),
        "{result:#}"
    );
    assert!(
        result["fetchError"].is_string(),
        "the fetch failed: {result:#}"
    );
    assert!(hub.metrics().rejected(Rejection::OriginNotAllowed) >= before + 2);

    // From the allowed origin with an expired, a wrong-app or no token: refused the same way.
    for (what, url) in [
        ("expired", format!("{}/t/{}", hub.url(), t.expired)),
        ("wrong app", format!("{}/t/{}", hub.url(), t.wrong_app)),
        ("missing", hub.url().to_string()),
    ] {
        let result = browser_page(&url, allowed_port).await;
        assert_eq!(result["received"], Value::Null, "{what}: {result:#}");
        assert!(
            !result["eventSourceErrors"].as_array().unwrap().is_empty(),
            "{what}: {result:#}"
        );
        // The POST was answered (the origin is allowed) with the refusal's status.
        let status = result["fetchStatus"].as_u64();
        assert!(matches!(status, Some(401 | 403)), "{what}: {result:#}");
    }
    hub.shutdown().await.unwrap();
}
