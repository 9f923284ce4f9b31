//! The swarm benchmark (issue 3), side by side with JS webrtc-swarm 2.9 (+ @roamhq/wrtc in Node,
//! and Chromium's own WebRTC), all through this crate's hub on loopback:
//!
//! - join → open data channel, median and p95 over N tries (Rust↔Rust, Node↔Node);
//! - join → open with a Chromium tab already in the swarm: a Rust peer and a Node peer joining
//!   it (alternately, a fresh tab each try);
//! - data-channel throughput for one pair (Rust↔Rust, Node↔Node, Rust↔Chromium);
//! - full-mesh formation time for 8 Rust peers;
//! - with `--nat` (root, iproute2, nftables, coturn): the same join → open across the NAT lab,
//!   cone and symmetric, Rust↔Rust, Rust↔Node and Node↔Node in one run, and throughput on the
//!   direct and the relayed path (`nat.rs`). `--nat-only` runs just that.
//!
//! `cargo bench -p swarm --bench swarmbench -- [--quick] [--tries N] [--mib N] [--no-js]
//! [--no-browser] [--nat | --nat-only]`
//!
//! `RUST_LOG=swarm=debug` shows where a handshake's time goes. One run each; on a shared machine
//! the figures are noisy.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalhub::{Hub, HubConfig, RunningHub};
use swarm::{Swarm, SwarmEvent, SwarmOptions, SwarmPeer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

mod nat;

const STEP: Duration = Duration::from_secs(60);

struct Args {
    tries: usize,
    mib: usize,
    mesh: usize,
    js: bool,
    browser: bool,
    nat: bool,
    loopback: bool,
}

fn args() -> Args {
    let mut a = Args {
        tries: 20,
        mib: 64,
        mesh: 8,
        js: true,
        browser: true,
        nat: false,
        loopback: true,
    };
    let mut quick = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> usize {
            it.next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--quick" => quick = true,
            "--tries" => a.tries = number("--tries"),
            "--mib" => a.mib = number("--mib"),
            "--mesh" => a.mesh = number("--mesh"),
            "--no-js" => a.js = false,
            "--no-browser" => a.browser = false,
            "--nat" => a.nat = true,
            "--nat-only" => {
                a.nat = true;
                a.loopback = false;
            }
            _ => {} // --bench and filters
        }
    }
    if quick {
        a.tries = a.tries.min(5);
        a.mib = a.mib.min(8);
    }
    a
}

fn options() -> SwarmOptions {
    let keepalive = std::env::var("SWARM_KEEPALIVE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    SwarmOptions {
        udp_addrs: vec!["127.0.0.1:0".parse().expect("an address")],
        keepalive: keepalive.unwrap_or(swarm::peer::DEFAULT_KEEPALIVE),
        ..SwarmOptions::default()
    }
}

async fn start_hub() -> RunningHub {
    let config = HubConfig {
        quiet: true,
        max_connections_per_ip: 100_000,
        broadcasts_per_sec: 1_000_000,
        broadcast_burst: 1_000_000,
        ..HubConfig::default()
    };
    Hub::bind("127.0.0.1:0", config)
        .await
        .expect("bind the hub")
        .spawn()
        .expect("serve the hub")
}

async fn next_connected(swarm: &mut Swarm) -> SwarmPeer {
    loop {
        match timeout(STEP, swarm.next_event()).await {
            Ok(Some(SwarmEvent::Connected { peer, .. })) => return peer,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the swarm ended"),
            Err(_) => panic!("no connection in {STEP:?}"),
        }
    }
}

/// (median, p95, min, max) in ms.
fn summary(samples: &mut [f64]) -> (f64, f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), samples[0], samples[samples.len() - 1])
}

/// Rust↔Rust: A is in the swarm (and announcing); B joins. Time from B's join to both sides'
/// open data channel.
async fn rust_connect(hub: &str, tries: usize) -> Vec<f64> {
    let mut samples = Vec::new();
    for i in 0..tries {
        let app = format!("bench-connect-{i}");
        let mut a = Swarm::join([hub], &app, options()).await.expect("join");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let mut b = Swarm::join([hub], &app, options()).await.expect("join");
        let (_pa, _pb) = tokio::join!(next_connected(&mut a), next_connected(&mut b));
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        a.close().await;
        b.close().await;
    }
    samples
}

/// Rust↔Rust throughput over the byte streams: MB/s (10^6 bytes) from the first write to the
/// last byte read.
async fn rust_throughput(hub: &str, mib: usize) -> f64 {
    let mut a = Swarm::join([hub], "bench-throughput", options())
        .await
        .expect("join");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = Swarm::join([hub], "bench-throughput", options())
        .await
        .expect("join");
    let (pa, pb) = tokio::join!(next_connected(&mut a), next_connected(&mut b));
    let total = mib << 20;
    let mut writer = pa.stream();
    let mut reader = pb.stream();
    let started = Instant::now();
    let write = tokio::spawn(async move {
        let chunk = vec![0x5a; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).await.expect("write");
            left -= n;
        }
        writer.flush().await.expect("flush");
        writer
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let n = timeout(STEP, reader.read(&mut buf))
            .await
            .expect("bytes keep coming")
            .expect("read");
        assert!(n > 0, "the stream ended after {got} bytes");
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(write.await);
    a.close().await;
    b.close().await;
    total as f64 / secs / 1e6
}

/// Time for `n` Rust peers joining at once to be connected every one to every other.
async fn rust_mesh(hub: &str, n: usize) -> f64 {
    let started = Instant::now();
    let mut swarms = Vec::new();
    for _ in 0..n {
        swarms.push(
            Swarm::join([hub], "bench-mesh", options())
                .await
                .expect("join"),
        );
    }
    let waits = swarms.iter().map(|swarm| {
        let mut peers = swarm.watch_peers();
        async move {
            timeout(
                Duration::from_secs(120),
                peers.wait_for(|p| p.len() == n - 1),
            )
            .await
            .expect("the mesh forms in 2 min")
            .expect("the swarm is alive");
        }
    });
    futures_util::future::join_all(waits).await;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    for swarm in swarms {
        swarm.close().await;
    }
    took
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../js")
}

/// Node↔Node with JS webrtc-swarm (js/swarm-bench.mjs), through this crate's hub.
fn node_figures(hub: &str, tries: usize, mib: usize) -> Value {
    let out = Command::new("node")
        .arg(js_dir().join("swarm-bench.mjs"))
        .args([hub, "--tries", &tries.to_string(), "--mb", &mib.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run node js/swarm-bench.mjs (set up with `npm ci --prefix js`)");
    assert!(out.status.success(), "js/swarm-bench.mjs failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("swarm-bench.mjs printed {line:?}: {e}"))
}

/// A child process speaking JSON lines (a browser driver or a Node lab peer), each line stamped
/// when read.
struct JsonChild {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl JsonChild {
    fn start(script: &str, config: Value) -> JsonChild {
        let mut child = tokio::process::Command::new("node")
            .arg(js_dir().join(script))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("run node js/{script}: {e}"));
        JsonChild {
            stdin: child.stdin.take().expect("piped"),
            lines: BufReader::new(child.stdout.take().expect("piped")).lines(),
            child,
        }
    }

    async fn send(&mut self, command: Value) {
        let line = command.to_string() + "\n";
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("a command to the JS process");
    }

    /// The first line `wanted` accepts, and when it was read.
    async fn wait(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> (Instant, Value) {
        loop {
            let line = timeout(STEP, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what} in {STEP:?}"))
                .expect("read")
                .unwrap_or_else(|| panic!("the JS process ended before {what}"));
            let at = Instant::now();
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            assert_ne!(value["event"], "fatal", "{value}");
            if wanted(&value) {
                return (at, value);
            }
        }
    }

    async fn close(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\":\"close\"}\n").await;
        drop(self.stdin);
        let _ = timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}

/// Join → open with a Chromium tab already in the swarm (webrtc-swarm on the browser's own
/// WebRTC, js/swarm-browser.mjs, a fresh tab each try): a Rust peer joining (`rust`) and a Node
/// peer joining (`js/swarm-lab-peer.mjs`), alternately, `tries` each. Times from the join to both
/// sides' open, in ms.
async fn chromium_connect(hub: &str, tries: usize) -> (Vec<f64>, Vec<f64>) {
    let mut node = JsonChild::start("swarm-lab-peer.mjs", json!({"hubs": [hub]}));
    let (mut rust_samples, mut node_samples) = (Vec::new(), Vec::new());
    for i in 0..tries * 2 {
        let app = format!("bench-chromium-{i}");
        let mut page = JsonChild::start("swarm-browser.mjs", json!({"hubs": [hub], "app": app}));
        let (_, ready) = page.wait("the page", |v| v["event"] == "ready").await;
        let page_id = ready["id"].as_str().unwrap_or_default().to_string();
        page.wait("the page's announce", |v| v["event"] == "subscribed")
            .await;
        let started = Instant::now();
        if i % 2 == 0 {
            let mut swarm = Swarm::join([hub], &app, options()).await.expect("join");
            let peer = next_connected(&mut swarm).await;
            let rust_open = Instant::now();
            assert_eq!(peer.id(), page_id);
            let (page_open, _) = page.wait("a connection", |v| v["event"] == "connect").await;
            rust_samples.push((rust_open.max(page_open) - started).as_secs_f64() * 1000.0);
            swarm.close().await;
        } else {
            node.send(json!({"cmd": "join", "app": app})).await;
            let (node_open, _) = node
                .wait("a connection", |v| {
                    v["event"] == "connect" && v["id"] == page_id.as_str()
                })
                .await;
            let (page_open, _) = page.wait("a connection", |v| v["event"] == "connect").await;
            node_samples.push((node_open.max(page_open) - started).as_secs_f64() * 1000.0);
            node.send(json!({"cmd": "leave"})).await;
            node.wait("the leave", |v| v["reply"] == "leave").await;
        }
        page.close().await;
    }
    node.close().await;
    (rust_samples, node_samples)
}

/// Node → Chromium throughput, the JS figure beside Rust → Chromium: a Node webrtc-swarm peer
/// (js/swarm-peer.mjs, "blast", 16 KiB messages as the Rust stream's) writes `mib` MiB to the
/// Chromium tab, which counts them; from the blast command to the tab's last byte.
async fn node_browser_throughput(hub: &str, mib: usize) -> f64 {
    let app = "bench-node-browser";
    let mut page = JsonChild::start("swarm-browser.mjs", json!({"hubs": [hub], "app": app}));
    let (_, ready) = page.wait("the page", |v| v["event"] == "ready").await;
    let page_id = ready["id"].as_str().unwrap_or_default().to_string();
    let mut node = JsonChild::start("swarm-peer.mjs", json!({"hubs": [hub], "app": app}));
    let (_, ready) = node.wait("the Node peer", |v| v["event"] == "ready").await;
    let node_id = ready["id"].as_str().unwrap_or_default().to_string();
    node.wait("a connection", |v| {
        v["event"] == "connect" && v["id"] == page_id.as_str()
    })
    .await;
    page.wait("a connection", |v| {
        v["event"] == "connect" && v["id"] == node_id.as_str()
    })
    .await;
    // Let the page's side settle, then count, as for Rust.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = mib << 20;
    page.send(json!({"cmd": "sink", "to": node_id, "expect": total}))
        .await;
    page.wait("the sink", |v| v["reply"] == "sink").await;
    let started = Instant::now();
    node.send(json!({"cmd": "blast", "to": page_id, "bytes": total}))
        .await;
    let (done, _) = page.wait("the bytes", |v| v["event"] == "sunk").await;
    let secs = (done - started).as_secs_f64();
    node.close().await;
    page.close().await;
    total as f64 / secs / 1e6
}

/// Rust → Chromium throughput: a Rust peer writes `mib` MiB to a headless Chromium tab running
/// webrtc-swarm (js/swarm-browser.mjs), which counts them.
async fn browser_throughput(hub: &str, mib: usize) -> f64 {
    let app = "bench-browser";
    let config = json!({"hubs": [hub], "app": app}).to_string();
    let mut child = tokio::process::Command::new("node")
        .arg(js_dir().join("swarm-browser.mjs"))
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run node js/swarm-browser.mjs");
    let mut stdin = child.stdin.take().expect("piped");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next_line = async || -> Value {
        let line = timeout(STEP, lines.next_line())
            .await
            .expect("the browser driver answers")
            .expect("read")
            .expect("the browser driver is alive");
        serde_json::from_str(&line).expect("JSON lines")
    };
    let browser_id = loop {
        let event = next_line().await;
        if event["event"] == "ready" {
            break event["id"].as_str().expect("an id").to_string();
        }
    };
    let mut swarm = Swarm::join([hub], app, options()).await.expect("join");
    let peer = next_connected(&mut swarm).await;
    assert_eq!(peer.id(), browser_id);
    // Let the page's side settle, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let command = json!({"cmd": "sink", "to": swarm.id()}).to_string() + "\n";
    stdin
        .write_all(command.as_bytes())
        .await
        .expect("to the driver");
    // Counting from the first byte: a message that came before the page took the command would
    // be shown as data, not counted.
    while next_line().await["reply"] != "sink" {}
    let total = mib << 20;
    let mut writer = peer.stream();
    let started = Instant::now();
    let chunk = vec![0x5a; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        writer.write_all(&chunk[..n]).await.expect("write");
        left -= n;
    }
    writer.flush().await.expect("flush");
    let mut received = 0u64;
    while received < total as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let command = json!({"cmd": "sunk", "to": swarm.id()}).to_string() + "\n";
        stdin
            .write_all(command.as_bytes())
            .await
            .expect("to the driver");
        loop {
            let event = next_line().await;
            if event["reply"] == "sunk" {
                received = event["bytes"].as_u64().unwrap_or(0);
                break;
            }
        }
        assert!(
            started.elapsed() < STEP,
            "Chromium received only {received} bytes"
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stdin.write_all(b"{\"cmd\":\"close\"}\n").await;
    let _ = timeout(Duration::from_secs(10), child.wait()).await;
    swarm.close().await;
    total as f64 / secs / 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        use tracing_subscriber::filter::FilterExt;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        // The engine's repeats (a TURN permission refused on every check) shown once a minute.
        let filter = tracing_subscriber::EnvFilter::from_default_env()
            .and(swarm::EngineRepeatFilter::default());
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init();
    }
    if let Ok(hub) = std::env::var(nat::LAB_PEER_ENV) {
        return nat::lab_peer(hub).await;
    }
    let args = args();
    if args.loopback {
        loopback(&args).await;
    }
    if args.nat {
        // The lab drives its processes with blocking waits.
        let (tries, mib) = (args.tries, args.mib.min(16));
        tokio::task::spawn_blocking(move || nat::run(tries, mib))
            .await
            .expect("the NAT lab's figures");
    }
}

/// Everything on one loopback interface, in this process (but the JS peers).
async fn loopback(args: &Args) {
    let hub = start_hub().await;
    let url = hub.url().to_string();
    println!(
        "swarm benchmark: hub {url}, {} tries, {} MiB, mesh of {}",
        args.tries, args.mib, args.mesh
    );

    let mut rust = rust_connect(&url, args.tries).await;
    let (median, p95, min, max) = summary(&mut rust);
    println!("join → open, Rust↔Rust:  median {median:.0} ms, p95 {p95:.0} ms (min {min:.0}, max {max:.0})");
    let node = args.js.then(|| node_figures(&url, args.tries, args.mib));
    if let Some(node) = &node {
        let c = &node["connect_ms"];
        println!(
            "join → open, Node↔Node:  median {:.0} ms, p95 {:.0} ms (min {:.0}, max {:.0})",
            c["median"].as_f64().unwrap_or(f64::NAN),
            c["p95"].as_f64().unwrap_or(f64::NAN),
            c["min"].as_f64().unwrap_or(f64::NAN),
            c["max"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let rust_mb = rust_throughput(&url, args.mib).await;
    println!(
        "throughput, Rust→Rust:   {rust_mb:.1} MB/s ({} MiB)",
        args.mib
    );
    if let Some(node) = &node {
        println!(
            "throughput, Node→Node:   {:.1} MB/s",
            node["throughput_mb_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if args.browser {
        let (mut rust, mut node) = chromium_connect(&url, args.tries).await;
        for (pair, samples) in [("Rust↔Chromium", &mut rust), ("Node↔Chromium", &mut node)] {
            let (median, p95, min, max) = summary(samples);
            println!(
                "join → open, {pair}: median {median:.0} ms, p95 {p95:.0} ms (min {min:.0}, max {max:.0})"
            );
        }
        let mb = browser_throughput(&url, args.mib).await;
        println!("throughput, Rust→Chromium: {mb:.1} MB/s");
        if args.js {
            let mb = node_browser_throughput(&url, args.mib).await;
            println!("throughput, Node→Chromium: {mb:.1} MB/s");
        }
    }
    let mesh = rust_mesh(&url, args.mesh).await;
    println!("full mesh of {} Rust peers: {mesh:.0} ms", args.mesh);
    hub.shutdown().await.expect("hub shutdown");
}
