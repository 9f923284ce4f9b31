//! Interoperability with the real JavaScript clients from npm: `signalhub` 4.9.0 (Node build) and
//! `signalhubws` 1.0.12 (with `ws`), each driven by a Node script in `js/` that this test talks to
//! over stdin/stdout, one JSON object per line, against the hub running in-process.
//!
//! Needs `node` on the PATH and `js/node_modules` (`npm ci --prefix js` in the workspace root);
//! without them the tests fail, they do not skip.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use signalhub::{Hub, HubConfig, RunningHub};

#[path = "support/node_script.rs"]
mod node_script;
use node_script::{require_js_setup, NodeScript};
use tokio::sync::mpsc;

/// The longest wait for any one expected event (the machine may be loaded).
const STEP: Duration = Duration::from_secs(60);
/// The scripts give up by themselves after this long.
const SCRIPT_TIMEOUT_SECS: &str = "180";

async fn start_hub(addr: &str) -> RunningHub {
    Hub::bind(addr, HubConfig::default())
        .await
        .expect("bind the hub")
        .spawn()
        .expect("start the hub")
}

/// A hub on the address a stopped hub had. Binding is retried for a while: between the two hubs
/// another program's outgoing connection may hold the port for a moment.
async fn restart_hub(addr: SocketAddr) -> RunningHub {
    let deadline = Instant::now() + STEP;
    loop {
        match Hub::bind(addr, HubConfig::default()).await {
            Ok(hub) => return hub.spawn().expect("start the hub"),
            Err(err) if Instant::now() < deadline => {
                eprintln!("cannot bind {addr} again yet ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot restart the hub on {addr}: {err}"),
        }
    }
}

/// A raw SSE subscription read line by line, to check the exact bytes the hub sends.
struct RawSse {
    lines: mpsc::UnboundedReceiver<String>,
    _reader: tokio::task::JoinHandle<()>,
}

impl RawSse {
    /// Subscribes and returns once the hub has answered (and so registered the subscription).
    async fn subscribe(url: String) -> RawSse {
        let response = reqwest::Client::new()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        assert_eq!(response.status(), 200, "GET {url}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=utf-8",
            "GET {url}"
        );
        let (sender, lines) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let line = String::from_utf8(line[..end].to_vec()).expect("SSE is UTF-8");
                    if sender.send(line).is_err() {
                        return;
                    }
                }
            }
        });
        RawSse {
            lines,
            _reader: reader,
        }
    }

    /// The lines of the next event that is not only comments (heartbeats), without its blank line.
    async fn next_event(&mut self) -> Vec<String> {
        let mut event = Vec::new();
        loop {
            let line = tokio::time::timeout(STEP, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no SSE event within {STEP:?}"))
                .expect("the SSE stream ended");
            if !line.is_empty() {
                event.push(line);
            } else if event.iter().any(|l| !l.starts_with(':')) {
                return event;
            } else {
                event.clear();
            }
        }
    }
}

async fn post(url: &str, body: &str) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST {url}: {err}"));
    assert_eq!(response.status(), 200, "POST {url} {body}");
}

fn data_events<'a>(events: &'a [Value], client: Option<&'a str>) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "data")
        .filter(|e| client.is_none_or(|c| e["client"] == c))
        .map(|e| &e["data"])
        .collect()
}

const SIGNALHUB: &[(&str, Option<&str>)] = &[("signalhub", Some("4.9.0"))];
const SIGNALHUBWS: &[(&str, Option<&str>)] = &[("signalhubws", Some("1.0.12")), ("ws", None)];

/// 1a: `hub.subscribe('single')` gets the Node client's own broadcast and one POSTed from Rust.
#[tokio::test(flavor = "multi_thread")]
async fn signalhub_js_single_channel_receives_own_and_posted_messages() {
    let started = Instant::now();
    require_js_setup(SIGNALHUB);
    let hub = start_hub("127.0.0.1:0").await;
    let mut node = NodeScript::spawn(
        "signalhub-client.mjs",
        &[hub.url(), "single", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    node.wait_event("open").await;

    let own = json!({"from": "node", "text": "h\u{e9}llo \"js\" \u{2713}\r\nsecond line", "n": [1, 2.5, null, true]});
    node.send(json!({"cmd": "broadcast", "id": 1, "channel": "single", "message": own}));
    let done = node
        .wait_for("broadcast 1 callback", |e| {
            e["event"] == "broadcasted" && e["id"] == 1
        })
        .await;
    assert_eq!(
        done["error"],
        Value::Null,
        "the Node client's broadcast failed: {done}"
    );
    node.wait_for("its own message back", |e| {
        e["event"] == "data" && e["data"] == own
    })
    .await;

    let posted = json!({"from": "rust", "emoji": "\u{1f980}", "nested": {"a": [{}]}});
    post(
        &format!("{}/v1/interop/single", hub.url()),
        &serde_json::to_string(&posted).unwrap(),
    )
    .await;
    node.wait_for("the message POSTed from Rust", |e| {
        e["event"] == "data" && e["data"] == posted
    })
    .await;

    let rest = node.close().await;
    assert_eq!(
        data_events(&rest, None),
        Vec::<&Value>::new(),
        "unexpected extra messages"
    );
    hub.shutdown().await.unwrap();
    eprintln!("took {:?}", started.elapsed());
}

/// 1b: `hub.subscribe(['a', 'b'])` (one GET for `a,b`) gets the messages of both channels.
#[tokio::test(flavor = "multi_thread")]
async fn signalhub_js_multi_channel_subscribe_receives_both_channels() {
    let started = Instant::now();
    require_js_setup(SIGNALHUB);
    let hub = start_hub("127.0.0.1:0").await;
    let mut node = NodeScript::spawn(
        "signalhub-client.mjs",
        &[hub.url(), "multi", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    node.wait_event("open").await;

    let on_a = json!({"channel": "a", "n": 1});
    let elsewhere = json!({"channel": "c", "n": 2});
    let on_b = json!({"channel": "b", "n": 3});
    node.send(json!({"cmd": "broadcast", "id": 1, "channel": "a", "message": on_a}));
    let done = node
        .wait_for("broadcast 1 callback", |e| {
            e["event"] == "broadcasted" && e["id"] == 1
        })
        .await;
    assert_eq!(
        done["error"],
        Value::Null,
        "the Node client's broadcast failed: {done}"
    );
    node.wait_for("the message on a", |e| {
        e["event"] == "data" && e["data"] == on_a
    })
    .await;
    post(
        &format!("{}/v1/interop/c", hub.url()),
        &elsewhere.to_string(),
    )
    .await;
    post(&format!("{}/v1/interop/b", hub.url()), &on_b.to_string()).await;
    node.wait_for("the message on b", |e| {
        e["event"] == "data" && e["data"] == on_b
    })
    .await;

    let rest = node.close().await;
    assert_eq!(
        data_events(&rest, None),
        Vec::<&Value>::new(),
        "unexpected extra messages (channel c is not subscribed)"
    );
    hub.shutdown().await.unwrap();
    eprintln!("took {:?}", started.elapsed());
}

/// 1c: the Node client's `broadcast` reaches a Rust SSE subscriber as exactly the body
/// `JSON.stringify` wrote.
#[tokio::test(flavor = "multi_thread")]
async fn signalhub_js_broadcast_reaches_rust_subscriber_verbatim() {
    let started = Instant::now();
    require_js_setup(SIGNALHUB);
    let hub = start_hub("127.0.0.1:0").await;
    let mut sse = RawSse::subscribe(format!("{}/v1/interop/news", hub.url())).await;
    let mut node = NodeScript::spawn(
        "signalhub-client.mjs",
        &[hub.url(), "broadcast", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    node.wait_event("ready").await;

    let message = json!({
        "from": "node",
        "text": "tab\there, quote \" backslash \\ newline \n \u{e9}\u{2713}\u{1f980} \u{2028}",
        "n": 1.5e300,
        "list": [null, false, {"deep": []}],
    });
    node.send(json!({"cmd": "broadcast", "id": 7, "channel": "news", "message": message}));
    let done = node
        .wait_for("broadcast 7 callback", |e| {
            e["event"] == "broadcasted" && e["id"] == 7
        })
        .await;
    assert_eq!(
        done["error"],
        Value::Null,
        "the Node client's broadcast failed: {done}"
    );
    let body = done["body"]
        .as_str()
        .expect("body is the JSON.stringify output");

    let event = sse.next_event().await;
    assert_eq!(event, vec![format!("data: {body}")]);
    assert_eq!(serde_json::from_str::<Value>(body).unwrap(), message);

    node.close().await;
    hub.shutdown().await.unwrap();
    eprintln!("took {:?}", started.elapsed());
}

/// 1d: a subscribed Node client reconnects after the hub restarts on the same port (`retry`, then
/// `reconnect`), and then receives a message broadcast after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn signalhub_js_reconnects_after_hub_restart() {
    let started = Instant::now();
    require_js_setup(SIGNALHUB);
    let hub = start_hub("127.0.0.1:0").await;
    let addr: SocketAddr = hub.local_addr();
    let url = hub.url().to_string();
    let mut node = NodeScript::spawn(
        "signalhub-client.mjs",
        &[&url, "reconnect", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    node.wait_event("open").await;
    let before = json!({"phase": "before restart"});
    post(&format!("{url}/v1/interop/ch"), &before.to_string()).await;
    node.wait_for("the message before the restart", |e| {
        e["event"] == "data" && e["data"] == before
    })
    .await;

    let stopping = Instant::now();
    hub.shutdown().await.unwrap();
    eprintln!("hub shut down in {:?}", stopping.elapsed());
    // The stream ended: the client says it will retry (in 3 s).
    node.wait_event("retry").await;
    let hub = restart_hub(addr).await;
    assert_eq!(hub.url(), url);
    let reconnect = Instant::now();
    node.wait_event("reconnect").await;
    eprintln!("reconnected {:?} after the restart", reconnect.elapsed());

    let after = json!({"phase": "after restart"});
    post(&format!("{url}/v1/interop/ch"), &after.to_string()).await;
    node.wait_for("the message after the restart", |e| {
        e["event"] == "data" && e["data"] == after
    })
    .await;

    let rest = node.close().await;
    assert_eq!(
        data_events(&rest, None),
        Vec::<&Value>::new(),
        "unexpected extra messages"
    );
    assert!(
        !rest.iter().any(|e| e["event"] == "open"),
        "the Node client emits `reconnect`, not a second `open`: {rest:?}"
    );
    hub.shutdown().await.unwrap();
    eprintln!("took {:?}", started.elapsed());
}

/// 2a: two signalhubws clients exchange broadcasts; each frame reaches both (the sender too).
#[tokio::test(flavor = "multi_thread")]
async fn signalhubws_js_clients_broadcast_and_receive() {
    let started = Instant::now();
    require_js_setup(SIGNALHUBWS);
    let hub = start_hub("127.0.0.1:0").await;
    let ws_url = hub.url().replacen("http://", "ws://", 1);
    let mut node = NodeScript::spawn(
        "signalhubws-client.mjs",
        &[&ws_url, "pair", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    node.wait_for("A open", |e| e["event"] == "open" && e["client"] == "A")
        .await;
    node.wait_for("B open", |e| e["event"] == "open" && e["client"] == "B")
        .await;

    let from_a = json!({"from": "A", "text": "h\u{e9}llo\n"});
    let from_b = json!({"from": "B", "list": [1, 2, 3]});
    for (sender, message) in [("A", &from_a), ("B", &from_b)] {
        node.send(json!({"cmd": "broadcast", "client": sender, "id": sender, "channel": "ch", "message": message}));
        for receiver in ["A", "B"] {
            node.wait_for(&format!("{receiver} to receive {sender}'s message"), |e| {
                e["event"] == "data" && e["client"] == receiver && e["data"] == *message
            })
            .await;
        }
    }

    let rest = node.close().await;
    assert_eq!(
        data_events(&rest, None),
        Vec::<&Value>::new(),
        "unexpected extra messages"
    );
    assert!(
        !rest.iter().any(|e| e["event"] == "error"),
        "socket errors: {rest:?}"
    );
    hub.shutdown().await.unwrap();
    eprintln!("took {:?}", started.elapsed());
}

/// 2b: a signalhubws broadcast reaches a Rust SSE subscriber of `<app>/<channel>` (the data line is
/// the message JSON), and a POST reaches the signalhubws client's channel stream.
#[tokio::test(flavor = "multi_thread")]
async fn signalhubws_js_bridges_to_sse_and_post() {
    let started = Instant::now();
    require_js_setup(SIGNALHUBWS);
    let hub = start_hub("127.0.0.1:0").await;
    let mut sse = RawSse::subscribe(format!("{}/v1/interop/ch", hub.url())).await;
    let ws_url = hub.url().replacen("http://", "ws://", 1);
    let mut node = NodeScript::spawn(
        "signalhubws-client.mjs",
        &[&ws_url, "bridge", SCRIPT_TIMEOUT_SECS],
        STEP,
    );
    node.wait_for("A open", |e| e["event"] == "open" && e["client"] == "A")
        .await;

    let message = json!({"from": "ws", "text": "quote \" \u{2713} \u{1f980}", "n": [0.1, -2]});
    node.send(
        json!({"cmd": "broadcast", "client": "A", "id": 1, "channel": "ch", "message": message}),
    );
    let done = node
        .wait_for("broadcast callback", |e| {
            e["event"] == "broadcasted" && e["id"] == 1
        })
        .await;
    let frame = done["frame"].as_str().expect("the frame signalhubws sent");
    let message_json = frame
        .strip_prefix(r#"{"app":"interop","channel":"ch","message":"#)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("unexpected signalhubws frame: {frame}"));
    assert_eq!(
        serde_json::from_str::<Value>(message_json).unwrap(),
        message
    );
    assert_eq!(
        sse.next_event().await,
        vec![format!("data: {message_json}")]
    );
    node.wait_for("A's own frame echoed back", |e| {
        e["event"] == "data" && e["data"] == message
    })
    .await;

    let posted = json!({"from": "rust", "via": "POST"});
    post(&format!("{}/v1/interop/ch", hub.url()), &posted.to_string()).await;
    node.wait_for("the POSTed message on A's channel stream", |e| {
        e["event"] == "data" && e["client"] == "A" && e["channel"] == "ch" && e["data"] == posted
    })
    .await;
    assert_eq!(sse.next_event().await, vec![format!("data: {posted}")]);

    let rest = node.close().await;
    assert_eq!(
        data_events(&rest, Some("A")),
        Vec::<&Value>::new(),
        "unexpected extra messages"
    );
    assert!(
        !rest.iter().any(|e| e["event"] == "error"),
        "socket errors: {rest:?}"
    );
    hub.shutdown().await.unwrap();
    eprintln!("took {:?}", started.elapsed());
}
