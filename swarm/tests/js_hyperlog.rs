//! Interop with the real JavaScript `hyperlog@4.12.1` (memdb, hyperlog-sodium@2.0.0 over
//! sodium-signatures) in Node, over TCP on 127.0.0.1, driven by `js/hyperlog-peer.mjs`.
//!
//! Needs `node` on the PATH and `js/node_modules` (`npm ci --prefix js` in the workspace root);
//! without them these tests fail, saying so.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use swarm::{
    replicate, Key, Keypair, Log, LogError, LogOptions, ReplicateError, ReplicateOptions,
    Replication, Summary, Verifier,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../js")
}

struct JsPeer {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    backlog: Vec<Value>,
}

impl JsPeer {
    async fn start(config: Value) -> JsPeer {
        let dir = js_dir();
        for pkg in ["hyperlog", "memdb", "hyperlog-sodium", "sodium-signatures"] {
            let manifest = dir.join("node_modules").join(pkg).join("package.json");
            assert!(
                manifest.exists(),
                "{} is missing: run `npm ci --prefix js` in the workspace root",
                manifest.display()
            );
        }
        let mut child = Command::new("node")
            .arg(dir.join("hyperlog-peer.mjs"))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): install Node.js 20, then run `npm ci --prefix js`")
            });
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        JsPeer {
            _child: child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            backlog: Vec::new(),
        }
    }

    async fn next_line(&mut self) -> Value {
        let line = timeout(T, self.lines.next_line())
            .await
            .expect("the JS peer answered in time")
            .expect("read from the JS peer")
            .expect("the JS peer is still running");
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        if v["event"] == "fatal" {
            panic!("JS peer: {}", v["message"]);
        }
        v
    }

    async fn cmd(&mut self, cmd: Value) -> Value {
        let name = cmd["cmd"].clone();
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("write");
        loop {
            let v = self.next_line().await;
            if v["reply"] == name {
                assert!(v.get("error").is_none(), "JS {name}: {v}");
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// Waits for an event matching `pred` (seen before or later).
    async fn event(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        loop {
            let v = self.next_line().await;
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    async fn append(&mut self, value: &str) -> Key {
        let r = self.cmd(json!({"cmd": "append", "value": value})).await;
        Key::parse(r["key"].as_str().expect("key")).expect("a key")
    }

    async fn keys(&mut self) -> Vec<Key> {
        let r = self.cmd(json!({"cmd": "nodes"})).await;
        r["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| Key::parse(n["key"].as_str().expect("key")).expect("a key"))
            .collect()
    }

    async fn heads(&mut self) -> Vec<Key> {
        let r = self.cmd(json!({"cmd": "heads"})).await;
        r["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| Key::parse(k.as_str().expect("key")).expect("a key"))
            .collect()
    }

    async fn listen(&mut self, opts: Value) -> u16 {
        let mut cmd = opts;
        cmd["cmd"] = json!("listen");
        let r = self.cmd(cmd).await;
        u16::try_from(r["port"].as_u64().expect("port")).expect("port")
    }
}

fn is_event(name: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == name
}

fn keys_of(log: &Log) -> Vec<Key> {
    log.changes_since(0).map(|n| n.expect("node").key).collect()
}

fn sorted(mut v: Vec<Key>) -> Vec<Key> {
    v.sort();
    v
}

/// Rust connects to a listening JS peer and replicates.
async fn rust_to_listening_js(
    log: &Log,
    js: &mut JsPeer,
    js_opts: Value,
    o: ReplicateOptions,
) -> Result<Summary, ReplicateError> {
    let port = js.listen(js_opts).await;
    let sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    timeout(T, replicate(log, sock, o))
        .await
        .expect("replication finished in time")
}

/// A JS peer connects to a Rust listener and replicates.
async fn js_to_listening_rust(
    log: &Log,
    js: &mut JsPeer,
    js_opts: Value,
    o: ReplicateOptions,
) -> Result<Summary, ReplicateError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut cmd = js_opts;
    cmd["cmd"] = json!("connect");
    cmd["port"] = json!(port);
    js.cmd(cmd).await;
    let (sock, _) = timeout(T, listener.accept())
        .await
        .expect("accept")
        .expect("accept");
    timeout(T, replicate(log, sock, o))
        .await
        .expect("replication finished in time")
}

fn mem(id: &str, options: LogOptions) -> Log {
    Log::memory_with_id(id, options).expect("memory log")
}

#[tokio::test]
async fn rust_to_js_sync() {
    let a = mem("RUST", LogOptions::default());
    a.append("hello").unwrap();
    let n2 = a.append("world").unwrap();
    let mut js = JsPeer::start(json!({"id": "JS"})).await;
    let s = rust_to_listening_js(&a, &mut js, json!({}), ReplicateOptions::default())
        .await
        .expect("replication");
    assert_eq!(s.progress.nodes_sent, 2);
    js.event(is_event("repl-end")).await;
    assert_eq!(js.keys().await, keys_of(&a));
    assert_eq!(js.heads().await, vec![n2.key]);
}

#[tokio::test]
async fn js_to_rust_sync_and_push_pull() {
    let b = mem("RUST", LogOptions::default());
    let mut js = JsPeer::start(json!({"id": "JS"})).await;
    for i in 0..10 {
        js.append(&format!("js {i}")).await;
    }
    let s = js_to_listening_rust(&b, &mut js, json!({}), ReplicateOptions::default())
        .await
        .expect("replication");
    assert_eq!(s.progress.nodes_received, 10);
    assert_eq!(keys_of(&b), js.keys().await);
    assert_eq!(b.log_head("JS").unwrap(), 10);
    // JS pushes one more to a pulling Rust.
    js.append("pushed").await;
    let o = ReplicateOptions {
        mode: Some(swarm::Mode::Pull),
        ..ReplicateOptions::default()
    };
    let s = js_to_listening_rust(&b, &mut js, json!({"mode": "push"}), o)
        .await
        .expect("replication");
    assert_eq!(s.progress.nodes_received, 1);
    assert_eq!(b.head_keys().unwrap(), js.heads().await);
}

#[tokio::test]
async fn both_writing_multi_log() {
    let a = mem("RUST", LogOptions::default());
    let mut js = JsPeer::start(json!({"id": "JS"})).await;
    for i in 0..5 {
        a.append(format!("rust {i}")).unwrap();
        js.append(&format!("js {i}")).await;
    }
    rust_to_listening_js(&a, &mut js, json!({}), ReplicateOptions::default())
        .await
        .expect("first sync");
    js.event(is_event("repl-end")).await;
    assert_eq!(sorted(keys_of(&a)), sorted(js.keys().await));
    assert_eq!(a.head_keys().unwrap(), js.heads().await);
    // Both merge (Rust's merge links into log JS, JS's into log RUST), then sync again.
    let merge = a.append("rust merge").unwrap();
    let js_merge = js.append("js merge").await;
    assert_eq!(merge.links.len(), 2);
    js_to_listening_rust(&a, &mut js, json!({}), ReplicateOptions::default())
        .await
        .expect("second sync");
    js.event(is_event("repl-end")).await;
    assert_eq!(a.changes(), 12);
    assert_eq!(sorted(keys_of(&a)), sorted(js.keys().await));
    assert_eq!(a.head_keys().unwrap(), sorted(vec![merge.key, js_merge]));
    assert_eq!(js.heads().await, a.head_keys().unwrap());
}

#[tokio::test]
async fn live_appends_on_both_sides() {
    let a = mem("RUST", LogOptions::default());
    a.append("before").unwrap();
    let mut js = JsPeer::start(json!({"id": "JS"})).await;
    js.append("js before").await;
    let port = js.listen(json!({"live": true})).await;
    let sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let rep = Replication::new(&a, ReplicateOptions::default());
    let (mut progress, stop) = (rep.progress(), rep.stop_handle());
    let task = tokio::spawn(rep.run(sock));
    timeout(T, progress.wait_for(|p| p.synced))
        .await
        .expect("synced in time")
        .expect("progress");
    assert_eq!(a.changes(), 2);
    // Rust appends: JS receives it live.
    let mut sub = a.subscribe(a.changes());
    let n = a.append("rust live").unwrap();
    let key = n.key.to_hex();
    js.event(move |v| v["event"] == "add" && v["key"] == key.as_str())
        .await;
    // JS appends: Rust receives it live.
    let jk = js.append("js live").await;
    loop {
        let got = timeout(T, sub.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        if got.key == jk {
            break;
        }
    }
    assert_eq!(a.changes(), 4);
    assert_eq!(sorted(keys_of(&a)), sorted(js.keys().await));
    stop.stop();
    let s = timeout(T, task)
        .await
        .expect("ended in time")
        .unwrap()
        .expect("ok");
    assert!(s.live);
    assert_eq!(s.progress.nodes_received, 2);
}

/// A TCP stream that counts the bytes written to it.
struct CountingStream {
    inner: TcpStream,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = result {
            self.written
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The keep-alive frames a live Rust session sends while idle (one zero-length frame each
/// `keep_alive`) are taken by JS hyperlog without complaint, for many periods, and the session
/// still carries appends both ways afterwards. (The default period is 20 s; 100 ms here stands
/// for 40 minutes of the default in 2 s.)
#[tokio::test]
async fn js_hyperlog_takes_the_keep_alive_frames_of_an_idle_live_session() {
    let a = mem("RUST", LogOptions::default());
    a.append("before").unwrap();
    let mut js = JsPeer::start(json!({"id": "JS"})).await;
    let port = js.listen(json!({"live": true})).await;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sock = CountingStream {
        inner: TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect"),
        written: written.clone(),
    };
    let options = ReplicateOptions {
        keep_alive: Some(Duration::from_millis(100)),
        ..ReplicateOptions::default()
    };
    let rep = Replication::new(&a, options);
    let (mut progress, stop) = (rep.progress(), rep.stop_handle());
    let task = tokio::spawn(rep.run(sock));
    timeout(T, progress.wait_for(|p| p.synced))
        .await
        .expect("synced in time")
        .expect("progress");
    let before = written.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let keep_alives = written.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        keep_alives >= 10,
        "an idle live session sends keep-alive frames: {keep_alives} bytes in 2 s"
    );
    // JS took them all: no replication error, and the session still works both ways.
    let jk = js.append("js after the keep-alives").await;
    let mut sub = a.subscribe(a.changes());
    loop {
        let got = timeout(T, sub.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        if got.key == jk {
            break;
        }
    }
    let n = a.append("rust after the keep-alives").unwrap();
    let key = n.key.to_hex();
    js.event(move |v| v["event"] == "add" && v["key"] == key.as_str())
        .await;
    assert!(
        !js.backlog.iter().any(|v| v["event"] == "repl-error"),
        "JS reported a replication error: {:?}",
        js.backlog
    );
    stop.stop();
    let summary = timeout(T, task)
        .await
        .expect("ended in time")
        .unwrap()
        .expect("ok");
    assert!(summary.live);
    eprintln!("{keep_alives} keep-alive bytes in 2 s of idle live replication, all taken by JS");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn signed_feeds_verified_on_each_side() {
    let js_seed = [7u8; 32];
    let js_key = Keypair::from_seed(&js_seed);
    let rust_key = Keypair::from_seed(&[8u8; 32]);
    let mut js = JsPeer::start(json!({
        "id": "JS",
        "seed": hex(&js_seed),
        "trust": [hex(&rust_key.public_key())],
    }))
    .await;
    let jk = js.append("signed in js").await;
    let a = mem(
        "RUST",
        LogOptions {
            keypair: Some(rust_key.clone()),
            verifier: Some(Verifier::for_keypair(&js_key)),
        },
    );
    let n = a.append("signed in rust").unwrap();
    rust_to_listening_js(&a, &mut js, json!({}), ReplicateOptions::default())
        .await
        .expect("both verified");
    js.event(is_event("repl-end")).await;
    let got = a.get(&jk).unwrap().expect("the JS node");
    assert_eq!(
        got.identity.as_deref(),
        Some(js_key.public_key().as_slice())
    );
    Verifier::for_keypair(&js_key)
        .verify_node(&got)
        .expect("valid");
    let r = js.cmd(json!({"cmd": "nodes"})).await;
    let theirs = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == n.key.to_hex().as_str())
        .expect("the Rust node at JS")
        .clone();
    assert_eq!(theirs["identity"], hex(&rust_key.public_key()).as_str());
}

#[tokio::test]
async fn foreign_key_refused_by_rust() {
    let trusted = Keypair::from_seed(&[7u8; 32]);
    let mut js = JsPeer::start(json!({"id": "JS", "seed": hex(&[9u8; 32])})).await;
    js.append("from an unknown key").await;
    let a = mem(
        "RUST",
        LogOptions {
            keypair: None,
            verifier: Some(Verifier::for_keypair(&trusted)),
        },
    );
    let err = rust_to_listening_js(&a, &mut js, json!({}), ReplicateOptions::default())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ReplicateError::Log(LogError::InvalidSignature { .. })),
        "{err}"
    );
    assert_eq!(a.changes(), 0);
}

#[tokio::test]
async fn foreign_key_refused_by_js() {
    let js_seed = [7u8; 32];
    // JS trusts only its own key.
    let mut js = JsPeer::start(json!({"id": "JS", "seed": hex(&js_seed)})).await;
    let a = mem(
        "RUST",
        LogOptions {
            keypair: Some(Keypair::from_seed(&[10u8; 32])),
            verifier: None,
        },
    );
    a.append("signed by a stranger").unwrap();
    let r = rust_to_listening_js(&a, &mut js, json!({}), ReplicateOptions::default()).await;
    let ev = js.event(is_event("repl-error")).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap_or("")
            .contains("Invalid signature"),
        "{ev}"
    );
    // JS destroys its stream on the refusal: for the Rust side the remote ended before a full
    // exchange, which is an outcome (nothing failed here), not an error.
    let summary = r.expect("an early end is not an error on this side");
    assert!(summary.ended_early.is_some(), "{summary:?}");
    assert_eq!(summary.progress.nodes_received, 0);
    assert!(js.keys().await.is_empty());
}
