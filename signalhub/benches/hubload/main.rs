//! `hubload`: a load generator for signalhub v1 hubs (SSE subscribe + POST broadcast).
//!
//! By default it starts the Rust hub (this crate's `signalhub` binary) and the JS reference hub
//! (signalhub 4.9.0 from `js/node_modules`) as child processes on 127.0.0.1, a fresh process for
//! every scenario, runs each scenario against each, and prints one Markdown table with both figures
//! and their ratio (Rust/JS). With `--hub URL` it measures that hub only (`--hub-pid PID` adds its
//! CPU time and memory, read from `/proc`).
//!
//! ```text
//! cargo bench -p signalhub --bench hubload -- [--quick] [--only rust|js]
//!     [--scenario fanout,channels,inflight,idle,idle-kinds,post] [--duration SECS] [--max-idle N]
//!     [--hub http://127.0.0.1:8080 [--hub-pid PID]]
//! ```
//!
//! Scenarios:
//! - `fanout`: 1, 100 and 1000 SSE subscribers of one channel; posters keep a bounded number of
//!   messages in flight. Delivered messages/s, latency p50/p99 of every delivery (POST written to
//!   frame read, one monotonic clock: the body carries the send time), hub CPU per delivery.
//! - `channels`: 1000 channels x 2 subscribers, posts spread round-robin over the channels.
//! - `inflight`: 1000 subscribers of one channel, one message at a time: POST, wait until all 1000
//!   got it, POST the next. Latency p50/p99 of every delivery.
//! - `idle`: 10 000 idle subscribers, each on its own channel: hub RSS per subscriber; then a ramp up
//!   to `--max-idle` (default 100 000 for the Rust hub, 10 000 for the JS hub) that reports how many
//!   the hub held, and checks a sample of them still gets messages.
//! - `idle-kinds`: the Rust hub's RSS per idle connection of each kind: an SSE subscriber on a
//!   fresh connection, one after a POST on the same kept-alive connection (both served on the
//!   hub's direct path), one served by hyper (after a chunked POST, which leaves the connection
//!   with hyper), and an idle WebSocket. `--idle` of each (default 10 000).
//! - `post`: POSTs at concurrency 64 to a channel nobody subscribes to: requests/s, hub CPU per request.
//!
//! The generator is a tokio multi-thread runtime with hand-written HTTP/1.1 on raw TCP streams:
//! keep-alive POST connections, SSE readers that de-chunk and scan for frames in place (no
//! allocation per message). Its own CPU time is reported next to every rate, to show its headroom.
//! Client sockets are bound to several loopback source addresses (127.0.0.2, ...) so that the
//! ephemeral port range of one address is no limit.
//!
//! With `--cluster N` it starts a `redis-server` and N hub nodes (`signalhub listen --redis`) as
//! well as a single hub, and runs `idle` (100 000 subscribers held across the nodes by worker
//! processes), `fanout`, `channels` and `inflight` across nodes against the single hub: see
//! `cluster_scenarios.rs`.
//!
//! ```text
//! cargo bench -p signalhub --bench hubload -- --cluster 6 [--scenario idle,fanout,channels,inflight]
//!     [--rounds 3] [--max-idle 100000] [--worker-subscribers 15000] [--threads N]
//! ```
//!
//! The files: `main.rs` (command line, settings, the run), `client.rs` (the load clients: SSE
//! readers, posters, idle connections), `scenarios.rs` (each scenario, and how its figures go into
//! the report), `hubs.rs` (starting and stopping the hubs under test), `report.rs` (latency
//! histogram, the Markdown table), `sys.rs` (clock and `/proc`), `cluster.rs` (Redis, cluster
//! nodes, generator worker processes) and `cluster_scenarios.rs` (the `--cluster` scenarios).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

mod client;
mod cluster;
mod cluster_scenarios;
mod hubs;
mod report;
mod scenarios;
mod sys;

use client::*;
use cluster::*;
use cluster_scenarios::*;
use hubs::*;
use report::*;
use scenarios::*;
use sys::*;

// ------------------------------------------------------------------------------------------------
// Command line

#[derive(Parser, Debug)]
#[command(
    name = "hubload",
    about = "Load generator for signalhub v1 hubs: fan-out, channels, latency, idle memory, POST rate"
)]
struct Opts {
    /// Measure this hub (`http://host:port`) instead of starting the Rust and JS hubs.
    #[arg(long)]
    hub: Option<String>,
    /// Process id of the `--hub` server, to read its CPU time and memory from /proc.
    #[arg(long, requires = "hub")]
    hub_pid: Option<u32>,
    /// Start and measure only this hub.
    #[arg(long, value_enum, conflicts_with = "hub")]
    only: Option<Which>,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Shorter runs and smaller counts.
    #[arg(long)]
    quick: bool,
    /// Seconds of each measured run (default 5; 2 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Subscriber counts of the fan-out scenario (default 1,100,1000).
    #[arg(long, value_delimiter = ',')]
    fanout: Vec<usize>,
    /// Channels of the `channels` scenario, 2 subscribers each (default 1000; 250 with --quick).
    #[arg(long)]
    channels: Option<usize>,
    /// Idle subscribers for the RSS-per-subscriber figure (default 10 000; 2 000 with --quick).
    #[arg(long)]
    idle: Option<usize>,
    /// Ramp idle subscribers up to N and report the most the hub held (default: 100 000 for the
    /// Rust hub and --hub, 10 000 for the JS hub; given explicitly, it applies to both).
    #[arg(long)]
    max_idle: Option<usize>,
    /// Size of each broadcast body in bytes (single-line JSON).
    #[arg(long, default_value_t = 128)]
    body_bytes: usize,
    /// Concurrent POST connections of the `post` scenario.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Node.js executable for the JS hub.
    #[arg(long, default_value = "node")]
    node: String,
    /// Worker threads of the generator's runtime (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Run N hub nodes on one redis-server (started here) and compare them with a single hub, in
    /// the `idle`, `fanout`, `channels` and `inflight` scenarios (the default with --cluster).
    #[arg(long, value_name = "N", conflicts_with = "hub", value_parser = clap::value_parser!(u16).range(2..))]
    cluster: Option<u16>,
    /// With --cluster: most idle subscribers one generator process (worker) holds; the idle
    /// scenario starts as many workers as it needs.
    #[arg(long, default_value_t = 15_000)]
    worker_subscribers: usize,
    /// With --cluster: rounds of each delivery scenario, the single hub and the cluster taking
    /// turns (default 3; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Internal: run as a load-generator worker of --cluster (a job on standard input).
    #[arg(long, hide = true)]
    worker: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Rust,
    Js,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Fanout,
    Channels,
    Inflight,
    Idle,
    /// Idle connections of each kind (SSE served directly, SSE served by hyper, WebSocket): hub
    /// RSS per connection. Rust hub only.
    IdleKinds,
    Post,
}

/// Settings derived from the options.
struct Cfg {
    warmup: Duration,
    duration: Duration,
    fanouts: Vec<usize>,
    channels: usize,
    inflight_subs: usize,
    idle: usize,
    max_idle_rust: usize,
    max_idle_js: usize,
    body_bytes: usize,
    concurrency: usize,
    ramp_batch: usize,
    rounds: usize,
}

impl Cfg {
    fn new(opts: &Opts) -> Cfg {
        let quick = opts.quick;
        let duration = opts.duration.unwrap_or(if quick { 2.0 } else { 5.0 });
        let idle = opts.idle.unwrap_or(if quick { 2_000 } else { 10_000 });
        let (rust_max, js_max) = match opts.max_idle {
            Some(n) => (n, n),
            None if quick => (10_000, idle),
            None => (100_000, 10_000),
        };
        Cfg {
            warmup: Duration::from_secs_f64(if quick { 0.5 } else { 1.0 }),
            duration: Duration::from_secs_f64(duration.max(0.5)),
            fanouts: if opts.fanout.is_empty() {
                vec![1, 100, 1000]
            } else {
                opts.fanout.clone()
            },
            channels: opts.channels.unwrap_or(if quick { 250 } else { 1000 }),
            inflight_subs: 1000,
            idle,
            max_idle_rust: rust_max.max(idle),
            max_idle_js: js_max.max(idle),
            body_bytes: opts.body_bytes.max(40),
            concurrency: opts.concurrency.max(1),
            ramp_batch: if quick { 1_000 } else { 2_500 },
            rounds: opts.rounds.unwrap_or(if quick { 1 } else { 3 }).max(1),
        }
    }
}

/// Checks the frame scanner on a chunked stream split at every byte, before measuring with it.
fn self_check() {
    for at in 0..40 {
        let mut line = vec![b'a'; 40];
        line[at] = b'\n';
        if at + 5 < 40 {
            line[at + 5] = b'\n';
        }
        assert_eq!(find_newline(&line), Some(at));
        assert_eq!(find_newline(&line[..at]), None);
    }
    let body: &[u8] =
        b"data: {\"t\":5,\"s\":1,\"p\":\"xx\"}\n\n:heartbeat signal\n\ndata: {\"t\":7}\n\n";
    let mut stream = Vec::new();
    for piece in [&body[..10], &body[10..33], &body[33..]] {
        stream.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        stream.extend_from_slice(piece);
        stream.extend_from_slice(b"\r\n");
    }
    for split in 0..=stream.len() {
        let mut decoder = Decoder::new(true);
        let mut out = ReaderOut {
            latency: true,
            ..ReaderOut::default()
        };
        let frames = decoder.feed(&stream[..split], 10, true, &mut out)
            + decoder.feed(&stream[split..], 10, true, &mut out);
        let mut hist = Hist::new();
        for &sample in &out.samples {
            hist.record(sample);
        }
        assert_eq!(
            (frames, out.comments, hist.n),
            (2, 1, 2),
            "split at {split}"
        );
        assert_eq!(
            (hist.quantile(0.0), hist.max),
            (Some(3), 5),
            "split at {split}"
        );
        assert!(!decoder.ended());
        decoder.feed(b"0\r\n\r\n", 10, true, &mut out);
        assert!(decoder.ended());
    }
    let mut hist = Hist::new();
    for v in [1_000u64, 2_000, 1_000_000, 50_000_000] {
        hist.record(v);
    }
    let p50 = hist.quantile(0.5).expect("p50") as f64;
    assert!((p50 - 2_000.0).abs() / 2_000.0 < 0.04, "p50 {p50}");
}

// ------------------------------------------------------------------------------------------------
// Main

fn main() -> Result<()> {
    let opts = Opts::parse();
    if opts.worker {
        return worker_main();
    }
    self_check();
    let cfg = Cfg::new(&opts);
    let want_fds = (cfg.max_idle_rust.max(cfg.max_idle_js) + 10_000) as u64;
    let limit_note = raise_nofile(want_fds);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = opts.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.enable_all().build()?;
    if let Some(n) = opts.cluster {
        return runtime.block_on(run_cluster(&opts, &cfg, n.into(), limit_note));
    }
    runtime.block_on(run(opts, cfg, limit_note))
}

async fn run(opts: Opts, cfg: Cfg, limit_note: String) -> Result<()> {
    now_ns();
    let targets: Vec<Target> = match (&opts.hub, opts.only) {
        (Some(url), _) => vec![Target {
            name: "hub".into(),
            kind: Kind::External {
                url: url.clone(),
                pid: opts.hub_pid,
            },
        }],
        (None, Some(Which::Rust)) => vec![Target {
            name: "rust".into(),
            kind: Kind::Rust,
        }],
        (None, Some(Which::Js)) => vec![Target {
            name: "js".into(),
            kind: Kind::Js,
        }],
        (None, None) => vec![
            Target {
                name: "rust".into(),
                kind: Kind::Rust,
            },
            Target {
                name: "js".into(),
                kind: Kind::Js,
            },
        ],
    };
    if targets.iter().any(|t| matches!(t.kind, Kind::Js)) && !js_bin().exists() {
        bail!(
            "the JS hub is not installed ({} is missing): run `npm ci --prefix js` in the repository root, or pass --only rust",
            js_bin().display()
        );
    }
    let scenarios: Vec<Scenario> = if opts.scenario.is_empty() {
        vec![
            Scenario::Fanout,
            Scenario::Channels,
            Scenario::Inflight,
            Scenario::Idle,
            Scenario::IdleKinds,
            Scenario::Post,
        ]
    } else {
        opts.scenario.clone()
    };
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut report = Report::default();
    report.notes.push(format!(
        "{} CPU(s); generator: tokio, {threads} worker thread(s); {limit_note}; runs of {} s after {} s warm-up; bodies of {} bytes{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.body_bytes,
        if opts.hub.is_some() { "; one hub process for every scenario" } else { "; a fresh hub process for every scenario" },
    ));
    if opts.hub.is_some() && opts.hub_pid.is_none() {
        report
            .notes
            .push("no --hub-pid: hub CPU and memory are not measured".into());
    }
    let started = Instant::now();
    for scenario in scenarios {
        match scenario {
            Scenario::Fanout | Scenario::Channels | Scenario::Inflight => {
                for case in &delivery_cases(scenario, &cfg) {
                    delivery(scenario, case, &targets, &opts, &cfg, &mut report).await;
                }
            }
            Scenario::IdleKinds => idle_kinds(&targets, &opts, &cfg, &mut report).await,
            Scenario::Idle => idle(&targets, &opts, &cfg, &mut report).await,
            Scenario::Post => post(&targets, &opts, &cfg, &mut report).await,
        }
    }
    report.notes.push(
        "latency: from just before the POST is written to the read that completes the frame, per delivery; under load it includes queueing behind the other messages in flight (fan-out: 64/32/16 messages at 1/100/1000 subscribers, channels: 256)"
            .to_string(),
    );
    report.notes.push(format!(
        "CPU: utime+stime from /proc/<pid>/stat over the measured run (tick {} ms), divided by deliveries or requests; % of a core = CPU seconds per second",
        1000.0 / clock_ticks_per_sec()
    ));
    report.notes.push(format!(
        "total time {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    report.print(&targets);
    Ok(())
}
