//! The swarm benchmark's NAT lab (`--nat`): join → open data channel and throughput between
//! homes behind cone NATs (a direct path through server-reflexive addresses), behind
//! symmetric NATs and from a cone home to a symmetric one (both through coturn's relay), for
//! Rust↔Rust, Rust↔Node and Node↔Node in the same run, in the test internet of `tests/netlab/netlab.sh` (root, iproute2, nftables, coturn).
//!
//! Each home runs one long-lived Rust peer (this benchmark binary, re-run with
//! `SWARMBENCH_LAB_PEER` set: [`lab_peer`]) and one Node peer (`js/swarm-lab-peer.mjs`), which
//! join and leave a swarm on command, so a try times the join and the handshake, not a process
//! start. A try: A joins and waits until it has announced; then B is told to join, and the
//! sample is from that command to the later of the two sides' "connect" lines, each stamped when
//! this process read it (the same clock for every namespace). Both sides take their ICE servers
//! from the hub (`GET /ice-servers`), as users do.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use swarm::{Swarm, SwarmEvent, SwarmOptions, SwarmPeer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../tests/support/netlab.rs"]
mod netlab;
use netlab::{hub_ice_flags, Lab, Line, HUB_PORT, INET};

/// The environment variable that makes this binary a lab peer, holding the hub's URL.
pub const LAB_PEER_ENV: &str = "SWARMBENCH_LAB_PEER";

const STEP: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Rust,
    Node,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Rust => "Rust",
            Side::Node => "Node",
        }
    }
}

/// A lab peer process in a home.
struct LabPeer {
    side: Side,
    home: String,
    index: usize,
    lines: mpsc::Receiver<Line>,
}

impl LabPeer {
    fn start(lab: &mut Lab, home: &str, side: Side) -> LabPeer {
        let hub = format!("http://{INET}:{HUB_PORT}");
        let ns = lab.home_ns(home);
        let name = format!("{}-{home}", side.name().to_lowercase());
        let (index, lines) = match side {
            Side::Rust => {
                let exe = std::env::current_exe().expect("the benchmark executable");
                let log = std::env::var("SWARMBENCH_LAB_LOG").unwrap_or_else(|_| "warn".into());
                lab.spawn(
                    &name,
                    &ns,
                    &exe,
                    &[],
                    &[(LAB_PEER_ENV, hub), ("RUST_LOG", log)],
                )
            }
            Side::Node => {
                let script = netlab::repo_root().join("js/swarm-lab-peer.mjs");
                let config = json!({"hubs": [hub], "iceServersFromHub": true});
                lab.spawn(
                    &name,
                    &ns,
                    Path::new("node"),
                    &[script.to_string_lossy().into_owned(), config.to_string()],
                    &[],
                )
            }
        };
        LabPeer {
            side,
            home: home.to_string(),
            index,
            lines,
        }
    }

    fn send(&self, lab: &mut Lab, command: Value) {
        lab.send_line(self.index, &command);
    }

    /// The next JSON line `wanted` accepts, and when it was read; a `fatal` line or nothing
    /// within `STEP` panics with every process's log.
    fn wait(&self, lab: &Lab, what: &str, wanted: impl Fn(&Value) -> bool) -> (Instant, Value) {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "{} peer in {}: no {what} within {STEP:?}\n{}",
                    self.side.name(),
                    self.home,
                    lab.logs()
                );
            };
            let Ok(value) = serde_json::from_str::<Value>(&line.text) else {
                continue;
            };
            assert_ne!(value["event"], "fatal", "{value}\n{}", lab.logs());
            if wanted(&value) {
                return (line.at, value);
            }
        }
    }

    /// Joins `app` and waits until the peer has announced itself; returns its id.
    fn join(&self, lab: &mut Lab, app: &str) -> String {
        self.send(lab, json!({"cmd": "join", "app": app}));
        let (_, joined) = self.wait(lab, "join", |v| v["event"] == "joined");
        joined["id"].as_str().unwrap_or_default().to_string()
    }

    fn leave(&self, lab: &mut Lab) {
        self.send(lab, json!({"cmd": "leave"}));
        self.wait(lab, "leave", |v| v["reply"] == "leave");
    }
}

/// One try: A joins, then B; ms from B's join command to both sides connected, and the path
/// kinds A sees (local → remote).
fn connect_once(lab: &mut Lab, a: &LabPeer, b: &LabPeer, app: &str) -> (f64, String) {
    let a_id = a.join(lab, app);
    let started = Instant::now();
    b.send(lab, json!({"cmd": "join", "app": app}));
    let (_, joined) = b.wait(lab, "join", |v| v["event"] == "joined");
    let b_id = joined["id"].as_str().unwrap_or_default().to_string();
    let (a_at, _) = a.wait(lab, "a connection", |v| {
        v["event"] == "connect" && v["id"] == b_id.as_str()
    });
    let (b_at, _) = b.wait(lab, "a connection", |v| {
        v["event"] == "connect" && v["id"] == a_id.as_str()
    });
    let ms = (a_at.max(b_at) - started).as_secs_f64() * 1000.0;
    a.send(lab, json!({"cmd": "path", "to": b_id}));
    let (_, path) = a.wait(lab, "the path", |v| v["reply"] == "path");
    let kinds = format!("{} → {}", path["local"]["type"], path["remote"]["type"]).replace('"', "");
    a.leave(lab);
    b.leave(lab);
    (ms, kinds)
}

/// A writes `mib` MiB to B; MB/s (10^6 bytes) from B's first byte to its last.
/// MB/s from A to B, and the datagrams the kernel dropped meanwhile for want of socket buffer
/// (on the internet segment, where coturn is; in A's and B's homes).
fn throughput(lab: &mut Lab, a: &LabPeer, b: &LabPeer, app: &str, mib: usize) -> (f64, u64, u64) {
    let bytes = mib << 20;
    let namespaces = [
        lab.var("INET_NS").to_string(),
        lab.home_ns(&a.home),
        lab.home_ns(&b.home),
    ];
    let drops = |lab: &Lab| namespaces.each_ref().map(|ns| lab.udp_receive_drops(ns));
    let before = drops(lab);
    let a_id = a.join(lab, app);
    b.send(lab, json!({"cmd": "join", "app": app}));
    let (_, joined) = b.wait(lab, "join", |v| v["event"] == "joined");
    let b_id = joined["id"].as_str().unwrap_or_default().to_string();
    a.wait(lab, "a connection", |v| v["event"] == "connect");
    b.wait(lab, "a connection", |v| v["event"] == "connect");
    b.send(lab, json!({"cmd": "sink", "to": a_id, "expect": bytes}));
    b.wait(lab, "the sink", |v| v["reply"] == "sink");
    a.send(lab, json!({"cmd": "blast", "to": b_id, "bytes": bytes}));
    let (_, sunk) = b.wait(lab, "every byte", |v| v["event"] == "sunk");
    let ms = sunk["ms"].as_f64().unwrap_or(f64::NAN).max(1.0);
    let after = drops(lab);
    a.leave(lab);
    b.leave(lab);
    (
        bytes as f64 / 1e6 / (ms / 1000.0),
        after[0] - before[0],
        after[1] + after[2] - before[1] - before[2],
    )
}

/// A and B connected and idle: the UDP datagrams per second A's home sends and receives once the
/// connection has settled (ICE keepalives, which are consent checks), and the CPU A's and B's
/// processes use meanwhile (% of one core), over `IDLE_SPAN`.
fn idle_cost(lab: &mut Lab, a: &LabPeer, b: &LabPeer, app: &str) -> [f64; 4] {
    const SETTLE: Duration = Duration::from_secs(2);
    const IDLE_SPAN: Duration = Duration::from_secs(10);
    let home = lab.home_ns(&a.home);
    a.join(lab, app);
    b.send(lab, json!({"cmd": "join", "app": app}));
    b.wait(lab, "join", |v| v["event"] == "joined");
    a.wait(lab, "a connection", |v| v["event"] == "connect");
    b.wait(lab, "a connection", |v| v["event"] == "connect");
    std::thread::sleep(SETTLE);
    let (out_before, in_before) = lab.udp_datagrams(&home);
    let cpu_before = [lab.cpu_time(a.index), lab.cpu_time(b.index)];
    std::thread::sleep(IDLE_SPAN);
    let (out_after, in_after) = lab.udp_datagrams(&home);
    let cpu_after = [lab.cpu_time(a.index), lab.cpu_time(b.index)];
    a.leave(lab);
    b.leave(lab);
    let per_second = |n: u64| n as f64 / IDLE_SPAN.as_secs_f64();
    let cpu =
        |i: usize| (cpu_after[i] - cpu_before[i]).as_secs_f64() / IDLE_SPAN.as_secs_f64() * 100.0;
    [
        per_second(out_after - out_before),
        per_second(in_after - in_before),
        cpu(0),
        cpu(1),
    ]
}

/// (median, p95, max) in ms.
fn summary(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), samples[samples.len() - 1])
}

/// Runs the lab's figures and prints their table.
pub fn run(tries: usize, mib: usize) {
    let mut lab = Lab::up(&[
        ("c1", "cone"),
        ("c2", "cone"),
        ("s1", "symmetric"),
        ("s2", "symmetric"),
    ]);
    lab.start_coturn();
    let flags = hub_ice_flags(&["udp"], 3600);
    lab.start_hub(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let mut peers: HashMap<(String, u8), LabPeer> = HashMap::new();
    for home in ["c1", "c2", "s1", "s2"] {
        for side in [Side::Rust, Side::Node] {
            peers.insert(
                (home.to_string(), side as u8),
                LabPeer::start(&mut lab, home, side),
            );
        }
    }
    println!();
    println!("NAT lab ({tries} tries a pair; A joins first, B's join → both open):");
    println!("| NATs | pair (A↔B) | median | p95 | max | path A sees |");
    println!("|---|---|---:|---:|---:|---|");
    let pairs = [
        (Side::Rust, Side::Rust),
        (Side::Rust, Side::Node),
        (Side::Node, Side::Rust),
        (Side::Node, Side::Node),
    ];
    let mut try_no = 0;
    // A cone home joins first and a symmetric one second (and so offers): with a JS offerer,
    // the relay a Rust answerer holds back must be released by what the remote's candidates
    // show of its NAT (see `check_gate.rs`, "Relay hold").
    for (kind, (home_a, home_b)) in [
        ("cone", ("c1", "c2")),
        ("symmetric", ("s1", "s2")),
        ("cone, symmetric", ("c1", "s2")),
    ] {
        for (side_a, side_b) in pairs {
            let a = &peers[&(home_a.to_string(), side_a as u8)];
            let b = &peers[&(home_b.to_string(), side_b as u8)];
            let mut samples = Vec::new();
            let mut kinds = String::new();
            for _ in 0..tries {
                try_no += 1;
                let (ms, path) = connect_once(&mut lab, a, b, &format!("lab-{try_no}"));
                samples.push(ms);
                kinds = path;
            }
            let (median, p95, max) = summary(&mut samples);
            println!(
                "| {kind} | {}↔{} | {median:.0} ms | {p95:.0} ms | {max:.0} ms | {kinds} |",
                side_a.name(),
                side_b.name()
            );
        }
    }
    println!();
    println!("NAT lab throughput ({mib} MiB, A → B):");
    println!("| NATs | path | Rust→Rust | Node→Node | datagrams dropped (coturn's segment / the homes), Rust; Node |");
    println!("|---|---|---:|---:|---|");
    for (kind, path, (home_a, home_b)) in [
        ("cone", "srflx (direct)", ("c1", "c2")),
        ("symmetric", "relay (TURN)", ("s1", "s2")),
    ] {
        let mut figures = Vec::new();
        for side in [Side::Rust, Side::Node] {
            try_no += 1;
            let a = &peers[&(home_a.to_string(), side as u8)];
            let b = &peers[&(home_b.to_string(), side as u8)];
            figures.push(throughput(&mut lab, a, b, &format!("lab-{try_no}"), mib));
        }
        let [(rust, rust_inet, rust_homes), (node, node_inet, node_homes)] = figures[..] else {
            unreachable!("two sides")
        };
        println!(
            "| {kind} | {path} | {rust:.1} MB/s | {node:.1} MB/s | \
             {rust_inet} / {rust_homes}; {node_inet} / {node_homes} |"
        );
    }
    println!();
    println!(
        "NAT lab, a connected pair left idle (datagrams a second in A's home; CPU, % of a core):"
    );
    println!("| NATs | path | pair | A sends | A receives | A's CPU | B's CPU |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for (kind, path, (home_a, home_b)) in [
        ("cone", "srflx (direct)", ("c1", "c2")),
        ("symmetric", "relay (TURN)", ("s1", "s2")),
    ] {
        for side in [Side::Rust, Side::Node] {
            try_no += 1;
            let a = &peers[&(home_a.to_string(), side as u8)];
            let b = &peers[&(home_b.to_string(), side as u8)];
            let [sent, received, cpu_a, cpu_b] =
                idle_cost(&mut lab, a, b, &format!("lab-{try_no}"));
            println!(
                "| {kind} | {path} | {0}↔{0} | {sent:.1} | {received:.1} | {cpu_a:.1} % | {cpu_b:.1} % |",
                side.name()
            );
        }
    }
    for peer in peers.values() {
        lab.stop(peer.index);
    }
}

// ---------------------------------------------------------------------------------------------
// The Rust lab peer: the same commands and events as js/swarm-lab-peer.mjs.

fn out(value: Value) {
    println!("{value}");
}

fn path_reply(path: Option<swarm::SelectedPath>) -> Value {
    match path {
        None => json!({"reply": "path", "error": "no selected pair"}),
        Some(path) => json!({
            "reply": "path",
            "local": {"type": path.local.kind.as_str(), "address": path.local.address.map(|a| a.to_string())},
            "remote": {"type": path.remote.kind.as_str(), "address": path.remote.address.map(|a| a.to_string())},
        }),
    }
}

enum Step {
    Command(Option<Value>),
    Event(Option<SwarmEvent>),
}

/// Runs in a home namespace, started by [`run`]: joins and leaves swarms on the commands read
/// from stdin, until stdin ends.
pub async fn lab_peer(hub: String) {
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str(&line) {
                Ok(command) => {
                    if commands_tx.send(command).is_err() {
                        break;
                    }
                }
                Err(e) => out(json!({"event": "error", "message": format!("bad command: {e}")})),
            }
        }
    });
    let mut swarm: Option<Swarm> = None;
    let mut peers: HashMap<String, SwarmPeer> = HashMap::new();
    loop {
        let step = tokio::select! {
            command = commands.recv() => Step::Command(command),
            event = async {
                match swarm.as_mut() {
                    Some(swarm) => swarm.next_event().await,
                    None => std::future::pending().await,
                }
            } => Step::Event(event),
        };
        match step {
            Step::Command(None) => break,
            Step::Command(Some(command)) => {
                let to = command["to"].as_str().unwrap_or_default();
                match command["cmd"].as_str().unwrap_or_default() {
                    "join" => {
                        let app = command["app"].as_str().unwrap_or_default();
                        match Swarm::join([hub.as_str()], app, SwarmOptions::default()).await {
                            Ok(joined) => {
                                joined.ready().await;
                                out(json!({"event": "joined", "id": joined.id()}));
                                swarm = Some(joined);
                            }
                            Err(e) => out(json!({"event": "fatal", "message": e.to_string()})),
                        }
                    }
                    "leave" => {
                        peers.clear();
                        if let Some(swarm) = swarm.take() {
                            swarm.close().await;
                        }
                        out(json!({"reply": "leave"}));
                    }
                    "path" => match peers.get(to) {
                        Some(peer) => out(path_reply(peer.path().await)),
                        None => out(json!({"reply": "path", "error": "no such peer"})),
                    },
                    "blast" => {
                        let Some(peer) = peers.get(to).cloned() else {
                            out(json!({"reply": "blast", "error": "no such peer"}));
                            continue;
                        };
                        let bytes = command["bytes"].as_u64().unwrap_or(0) as usize;
                        tokio::spawn(async move {
                            let started = Instant::now();
                            let mut writer = peer.stream();
                            let chunk = vec![0x78; 16 * 1024];
                            let mut left = bytes;
                            while left > 0 {
                                let n = left.min(chunk.len());
                                if writer.write_all(&chunk[..n]).await.is_err() {
                                    break;
                                }
                                left -= n;
                            }
                            let _ = writer.flush().await;
                            out(
                                json!({"reply": "blast", "ms": started.elapsed().as_millis() as u64}),
                            );
                        });
                    }
                    "sink" => {
                        let Some(peer) = peers.get(to).cloned() else {
                            out(json!({"reply": "sink", "error": "no such peer"}));
                            continue;
                        };
                        let expect = command["expect"].as_u64().unwrap_or(0);
                        out(json!({"reply": "sink"}));
                        tokio::spawn(async move {
                            let mut reader = peer.stream();
                            let mut buf = vec![0u8; 256 * 1024];
                            let mut got = 0u64;
                            let mut first = None;
                            while got < expect {
                                match reader.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        first.get_or_insert_with(Instant::now);
                                        got += n as u64;
                                    }
                                }
                            }
                            let ms = first.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
                            out(
                                json!({"event": "sunk", "from": peer.id(), "bytes": got, "ms": ms}),
                            );
                        });
                    }
                    other => out(json!({"reply": other, "error": "unknown command"})),
                }
            }
            Step::Event(Some(SwarmEvent::Connected { id, peer })) => {
                out(json!({"event": "connect", "id": id}));
                peers.insert(id, peer);
            }
            Step::Event(Some(SwarmEvent::Disconnected { id, .. })) => {
                peers.remove(&id);
                out(json!({"event": "disconnect", "id": id}));
            }
            Step::Event(None) => {
                swarm = None;
            }
        }
    }
    if let Some(swarm) = swarm {
        swarm.close().await;
    }
}
