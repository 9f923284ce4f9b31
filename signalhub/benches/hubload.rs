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
//! - `idle-kinds`: the Rust hub's RSS per idle connection of each kind: an SSE subscriber on the
//!   direct path (a fresh connection's first request), an SSE subscriber served by hyper (after
//!   a POST on the same connection), and an idle WebSocket. `--idle` of each (default 10 000).
//! - `post`: POSTs at concurrency 64 to a channel nobody subscribes to: requests/s, hub CPU per request.
//!
//! The generator is a tokio multi-thread runtime with hand-written HTTP/1.1 on raw TCP streams:
//! keep-alive POST connections, SSE readers that de-chunk and scan for frames in place (no
//! allocation per message). Its own CPU time is reported next to every rate, to show its headroom.
//! Client sockets are bound to several loopback source addresses (127.0.0.2, ...) so that the
//! ephemeral port range of one address is no limit.

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
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Clock, /proc

/// Nanoseconds since the first call, on the monotonic clock. Send and receipt times of every message
/// are taken in this process, so they compare directly.
fn now_ns() -> u64 {
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn clock_ticks_per_sec() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    })
}

fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// User + system CPU seconds of a process (`None`: this process), all threads.
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_sec())
}

/// CPU seconds all processes of the machine have used (user, nice, system, irq, softirq, steal).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy / clock_ticks_per_sec())
}

/// Resident set size in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(Some(pid), "status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// "soft/hard" open-file limit of a process.
fn nofile_limit(pid: Option<u32>) -> Option<String> {
    let limits = std::fs::read_to_string(proc_path(pid, "limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    Some(format!("{}/{}", words.next()?, words.next()?))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// File descriptors this process may still open, keeping a reserve.
fn fd_budget() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    (soft as usize).saturating_sub(open_fds() + 64)
}

/// Raises the open-file limit: to `want` if this process may raise the hard limit, else to the
/// hard limit. Child hubs inherit it.
fn raise_nofile(want: u64) -> String {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    if hard < want && rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        return format!("open-file limit raised to {want}");
    }
    match rlimit::increase_nofile_limit(want.max(soft)) {
        Ok(now) if now < want => format!(
            "open-file limit {now} (hard limit {hard}; raising it needs CAP_SYS_RESOURCE): fewer than {want} connections fit"
        ),
        Ok(now) => format!("open-file limit {now}"),
        Err(err) => format!("could not raise the open-file limit ({soft}/{hard}): {err}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets, 32 per power of two (about 3 % resolution).

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

struct Hist {
    counts: Box<[u64]>,
    n: u64,
    max: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            n: 0,
            max: 0,
        }
    }

    #[inline]
    fn index(v: u64) -> usize {
        if v < (2 * SUB) as u64 {
            v as usize
        } else {
            let msb = 63 - v.leading_zeros();
            let shift = msb - SUB_BITS;
            (shift as usize + 1) * SUB + ((v >> shift) as usize & (SUB - 1))
        }
    }

    /// The middle of a bucket.
    fn value(index: usize) -> u64 {
        if index < 2 * SUB {
            index as u64
        } else {
            let shift = (index / SUB - 1) as u32;
            let mantissa = (SUB + index % SUB) as u64;
            (mantissa << shift) + (1u64 << shift) / 2
        }
    }

    #[inline]
    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    fn clear(&mut self) {
        self.counts.fill(0);
        self.n = 0;
        self.max = 0;
    }

    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// One histogram per generator thread: readers add their samples to the histogram of the thread
/// they run on, which stays in cache (a histogram per reader would not, with 1000 readers).
static HISTS: Mutex<Vec<Arc<Mutex<Hist>>>> = Mutex::new(Vec::new());

thread_local! {
    static THREAD_HIST: Arc<Mutex<Hist>> = {
        let hist = Arc::new(Mutex::new(Hist::new()));
        HISTS.lock().unwrap().push(hist.clone());
        hist
    };
}

fn record_latencies(samples: &mut Vec<u64>) {
    THREAD_HIST.with(|hist| {
        let mut hist = hist.lock().unwrap();
        for &sample in samples.iter() {
            hist.record(sample);
        }
    });
    samples.clear();
}

fn reset_latencies() {
    for hist in HISTS.lock().unwrap().iter() {
        hist.lock().unwrap().clear();
    }
}

fn merged_latencies() -> Hist {
    let mut merged = Hist::new();
    for hist in HISTS.lock().unwrap().iter() {
        merged.merge(&hist.lock().unwrap());
    }
    merged
}

// ------------------------------------------------------------------------------------------------
// Hub address, loopback source addresses, connections

struct HubAddr {
    sock: SocketAddr,
    host: String,
    /// Bind client sockets to other loopback source addresses (only when the hub is on loopback).
    loopback: bool,
}

async fn resolve(url: &str) -> Result<HubAddr> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        bail!("hubload speaks plain HTTP only: {url}");
    } else {
        url
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        bail!("no host in hub URL {url:?}");
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let sock = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {with_port}"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{with_port} has no IPv4 address"))?;
    Ok(HubAddr {
        loopback: sock.ip().is_loopback(),
        sock,
        host: authority.to_string(),
    })
}

/// Loopback source addresses handed out over the whole run (127.a.b.c, 127.a.b.c+1, ...), fresh
/// ones for every scenario so that sockets in TIME_WAIT from an earlier one never get in the way.
/// Each run starts at a random place in 127.0.0.0/8: the thousands of sockets an earlier run left
/// in TIME_WAIT on its addresses make binding to those slow.
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

fn next_source() -> u32 {
    if NEXT_SOURCE.load(Relaxed) == 0 {
        let start = 0x01_0000 + rand::random::<u32>() % 0xF0_0000;
        let _ = NEXT_SOURCE.compare_exchange(0, start, Relaxed, Relaxed);
    }
    NEXT_SOURCE.fetch_add(1, Relaxed)
}

/// Connections per source address: well under the ~28 000 ephemeral ports of one address.
const PER_SOURCE: usize = 8_000;

struct Sources(Vec<Ipv4Addr>);

impl Sources {
    fn new(connections: usize, hub: &HubAddr) -> Sources {
        if !hub.loopback {
            return Sources(Vec::new());
        }
        let count = connections.div_ceil(PER_SOURCE).max(1);
        let mut addrs = Vec::with_capacity(count);
        while addrs.len() < count {
            let n = next_source();
            let ip = Ipv4Addr::from(0x7f00_0000 | (n & 0x00ff_ffff));
            let last = ip.octets()[3];
            if last != 0 && last != 255 && ip != Ipv4Addr::new(127, 0, 0, 1) {
                addrs.push(ip);
            }
        }
        Sources(addrs)
    }

    fn get(&self, i: usize) -> Option<Ipv4Addr> {
        (!self.0.is_empty()).then(|| self.0[i % self.0.len()])
    }
}

async fn connect(hub: &HubAddr, src: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        socket.bind(SocketAddr::new(ip.into(), 0))?;
    }
    let stream = socket.connect(hub.sock).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_status(head: &[u8]) -> Result<u16> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(head);
    let code = line
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok());
    code.with_context(|| format!("not an HTTP response: {:?}", String::from_utf8_lossy(line)))
}

fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(body, b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
    out
}

/// One short request on its own connection (`Connection: close`): status and body.
async fn http_get(hub: &HubAddr, path: &str, within: Duration) -> Result<(u16, String)> {
    tokio::time::timeout(within, async {
        let mut stream = TcpStream::connect(hub.sock).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            hub.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        let end = find(&buf, b"\r\n\r\n").context("no response head")?;
        let head = &buf[..end];
        let status = parse_status(head)?;
        let body = &buf[end + 4..];
        let body = if header(head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            dechunk(body)
        } else {
            body.to_vec()
        };
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .map_err(|_| anyhow!("GET {path}: no answer within {} s", within.as_secs_f64()))?
}

/// The subscriber count the hub's info document (`GET /`) reports.
async fn hub_subscribers(hub: &HubAddr) -> Option<u64> {
    let (status, body) = http_get(hub, "/", Duration::from_secs(3)).await.ok()?;
    if status != 200 {
        return None;
    }
    let info: serde_json::Value = serde_json::from_str(&body).ok()?;
    info.get("subscribers")?.as_u64()
}

// ------------------------------------------------------------------------------------------------
// SSE reader: de-chunks the response body and counts frames in place.

#[derive(Clone, Copy)]
enum Chunk {
    /// Not chunked: the body runs to the end of the connection.
    Identity,
    /// Reading a chunk-size line.
    Size(u64),
    /// Skipping a chunk extension, then the end of the size line.
    Ext(u64),
    Data(u64),
    /// The CRLF after a chunk's data.
    AfterData,
    /// The last chunk: the hub ended the stream.
    Done,
}

/// The first bytes of each line are kept: enough for `data: {"t":<20 digits>`.
const LINE_KEEP: usize = 48;

struct Decoder {
    chunk: Chunk,
    line: [u8; LINE_KEEP],
    line_len: usize,
    has_data: bool,
    sent_at: u64,
}

/// What one reader saw.
#[derive(Default)]
struct ReaderOut {
    /// Whether to take latency samples.
    latency: bool,
    /// Latency samples of the last read, moved to the thread's histogram after it.
    samples: Vec<u64>,
    /// Data frames received.
    frames: u64,
    /// Comment-only frames (heartbeats).
    comments: u64,
    /// Reads while recording, to show how many deliveries one read carried.
    reads_recorded: u64,
    /// Frames received while recording (counted even without a histogram).
    frames_recorded: u64,
    /// The hub closed the stream or the connection failed before the end of the scenario.
    lost: bool,
}

impl Decoder {
    fn new(chunked: bool) -> Decoder {
        Decoder {
            chunk: if chunked {
                Chunk::Size(0)
            } else {
                Chunk::Identity
            },
            line: [0; LINE_KEEP],
            line_len: 0,
            has_data: false,
            sent_at: 0,
        }
    }

    fn ended(&self) -> bool {
        matches!(self.chunk, Chunk::Done)
    }

    /// Feeds bytes as read from the socket; returns the data frames completed.
    fn feed(&mut self, mut d: &[u8], now: u64, recording: bool, out: &mut ReaderOut) -> u64 {
        let mut frames = 0;
        while !d.is_empty() {
            match self.chunk {
                Chunk::Identity => {
                    frames += self.sse(d, now, recording, out);
                    break;
                }
                Chunk::Size(v) | Chunk::Ext(v) => {
                    let b = d[0];
                    d = &d[1..];
                    let in_ext = matches!(self.chunk, Chunk::Ext(_));
                    self.chunk = match b {
                        b'\n' if v == 0 => Chunk::Done,
                        b'\n' => Chunk::Data(v),
                        _ if in_ext => Chunk::Ext(v),
                        b'0'..=b'9' => Chunk::Size(v * 16 + u64::from(b - b'0')),
                        b'a'..=b'f' => Chunk::Size(v * 16 + u64::from(b - b'a' + 10)),
                        b'A'..=b'F' => Chunk::Size(v * 16 + u64::from(b - b'A' + 10)),
                        b';' => Chunk::Ext(v),
                        _ => Chunk::Size(v),
                    };
                }
                Chunk::Data(rem) => {
                    let take = (rem as usize).min(d.len());
                    frames += self.sse(&d[..take], now, recording, out);
                    d = &d[take..];
                    let rem = rem - take as u64;
                    self.chunk = if rem == 0 {
                        Chunk::AfterData
                    } else {
                        Chunk::Data(rem)
                    };
                }
                Chunk::AfterData => {
                    if d[0] == b'\n' {
                        self.chunk = Chunk::Size(0);
                    }
                    d = &d[1..];
                }
                Chunk::Done => break,
            }
        }
        frames
    }

    #[inline]
    fn append(&mut self, seg: &[u8]) {
        if self.line_len < LINE_KEEP {
            let n = seg.len().min(LINE_KEEP - self.line_len);
            self.line[self.line_len..self.line_len + n].copy_from_slice(&seg[..n]);
        }
        self.line_len += seg.len();
    }

    fn sse(&mut self, mut d: &[u8], now: u64, recording: bool, out: &mut ReaderOut) -> u64 {
        let mut frames = 0;
        loop {
            let Some(i) = find_newline(d) else {
                self.append(d);
                return frames;
            };
            self.append(&d[..i]);
            d = &d[i + 1..];
            let blank = self.line_len == 0 || (self.line_len == 1 && self.line[0] == b'\r');
            if blank {
                if self.has_data {
                    frames += 1;
                    out.frames += 1;
                    if recording {
                        out.frames_recorded += 1;
                        if out.latency && self.sent_at > 0 {
                            out.samples.push(now.saturating_sub(self.sent_at));
                        }
                    }
                } else {
                    out.comments += 1;
                }
                self.has_data = false;
                self.sent_at = 0;
            } else {
                let line = &self.line[..self.line_len.min(LINE_KEEP)];
                if let Some(rest) = line.strip_prefix(b"data:") {
                    if !self.has_data {
                        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                        if let Some(digits) = rest.strip_prefix(br#"{"t":"#) {
                            let mut t = 0u64;
                            for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
                                t = t * 10 + u64::from(b - b'0');
                            }
                            self.sent_at = t;
                        }
                    }
                    self.has_data = true;
                }
            }
            self.line_len = 0;
        }
    }
}

/// The first `\n`, eight bytes at a time.
#[inline]
fn find_newline(d: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut i = 0;
    while i + 8 <= d.len() {
        let word = u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes")) ^ NL;
        // The lowest byte that was `\n` is now zero; its high bit is the lowest set here.
        let zero = word.wrapping_sub(LO) & !word & HI;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    d[i..].iter().position(|&b| b == b'\n').map(|p| i + p)
}

/// What every task of one scenario shares.
#[derive(Default)]
struct Shared {
    /// Data frames received by all readers.
    delivered: AtomicU64,
    /// POSTs answered 200.
    posts: AtomicU64,
    /// Latency and per-read counts are recorded while this is set.
    recording: AtomicBool,
    /// A poster waits for deliveries: the next reader that gets some wakes it.
    waiting: AtomicBool,
    notify: Notify,
    /// Subscriptions opened (200 and headers read), failed to open, and lost after opening.
    ready: AtomicUsize,
    failed: AtomicUsize,
    lost: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Results of readers, pushed when a reader task ends or is aborted.
    results: Mutex<Vec<ReaderOut>>,
}

impl Shared {
    fn error(&self, message: String) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(message);
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap().clone()
    }
}

/// A reader's tallies, handed to [`Shared::results`] when the task ends, also when it is aborted.
struct Tally {
    out: ReaderOut,
    shared: Arc<Shared>,
    /// Per-subscriber state for the idle scenario: 1 open, 2 failed, 3 lost.
    status: Option<(Arc<[AtomicU8]>, usize)>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let out = std::mem::take(&mut self.out);
        if let Ok(mut results) = self.shared.results.lock() {
            results.push(out);
        }
    }
}

struct SubSpec {
    path: String,
    src: Option<Ipv4Addr>,
    buf_size: usize,
    hist: bool,
    open_timeout: Duration,
    status: Option<(Arc<[AtomicU8]>, usize)>,
}

async fn open_sse(
    hub: &HubAddr,
    src: Option<Ipv4Addr>,
    path: &str,
    buf: &mut [u8],
) -> Result<(TcpStream, bool, Range<usize>)> {
    let mut stream = connect(hub, src).await.context("connect")?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        hub.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            bail!("subscribe: response head larger than {} bytes", buf.len());
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("subscribe: connection closed before the response head");
        }
        filled += n;
        if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            let head = &buf[..end];
            let status = parse_status(head)?;
            if status != 200 {
                bail!(
                    "subscribe answered {status}: {}",
                    String::from_utf8_lossy(&buf[end + 4..filled]).trim()
                );
            }
            let chunked = header(head, "transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            return Ok((stream, chunked, end + 4..filled));
        }
    }
}

async fn subscriber(
    hub: Arc<HubAddr>,
    spec: SubSpec,
    shared: Arc<Shared>,
    opening: Arc<Semaphore>,
) {
    let mut tally = Tally {
        out: ReaderOut {
            latency: spec.hist,
            samples: Vec::with_capacity(if spec.hist { 64 } else { 0 }),
            ..ReaderOut::default()
        },
        shared: shared.clone(),
        status: spec.status,
    };
    let set_status = |tally: &Tally, s: u8| {
        if let Some((status, i)) = &tally.status {
            status[*i].store(s, Relaxed);
        }
    };
    let mut buf = vec![0u8; spec.buf_size];
    let permit = opening.acquire().await;
    let opened = tokio::time::timeout(
        spec.open_timeout,
        open_sse(&hub, spec.src, &spec.path, &mut buf),
    )
    .await;
    drop(permit);
    let (mut stream, chunked, leftover) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => {
            shared.error(format!("{err:#}"));
            shared.failed.fetch_add(1, SeqCst);
            set_status(&tally, 2);
            return;
        }
        Err(_) => {
            shared.error(format!(
                "subscribe: no response head within {} s",
                spec.open_timeout.as_secs_f64()
            ));
            shared.failed.fetch_add(1, SeqCst);
            set_status(&tally, 2);
            return;
        }
    };
    let mut decoder = Decoder::new(chunked);
    if !leftover.is_empty() {
        let frames = decoder.feed(&buf[leftover], now_ns(), false, &mut tally.out);
        shared.delivered.fetch_add(frames, SeqCst);
    }
    set_status(&tally, 1);
    shared.ready.fetch_add(1, SeqCst);
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            break;
        }
        let now = now_ns();
        let recording = shared.recording.load(Relaxed);
        if recording {
            tally.out.reads_recorded += 1;
        }
        let frames = decoder.feed(&buf[..n], now, recording, &mut tally.out);
        if !tally.out.samples.is_empty() {
            record_latencies(&mut tally.out.samples);
        }
        if frames > 0 {
            shared.delivered.fetch_add(frames, SeqCst);
            if shared.waiting.load(SeqCst) && shared.waiting.swap(false, SeqCst) {
                shared.notify.notify_waiters();
            }
        }
        if decoder.ended() {
            break;
        }
    }
    // The stream ended while the scenario still ran (readers are aborted, never ended, at its end).
    tally.out.lost = true;
    set_status(&tally, 3);
    shared.lost.fetch_add(1, SeqCst);
}

/// Subscriptions opening (connect, request, response head) at once.
const OPENING: usize = 256;

/// Waits until `count` subscriptions have opened or failed.
async fn wait_opened(shared: &Shared, count: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while shared.ready.load(SeqCst) + shared.failed.load(SeqCst) < count {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn stop_readers(handles: Vec<JoinHandle<()>>, shared: &Shared) -> Vec<ReaderOut> {
    for handle in &handles {
        handle.abort();
    }
    for handle in handles {
        let _ = handle.await;
    }
    std::mem::take(&mut *shared.results.lock().unwrap())
}

// ------------------------------------------------------------------------------------------------
// Posters: keep-alive POST connections.

struct PostConn {
    hub: Arc<HubAddr>,
    src: Option<Ipv4Addr>,
    stream: Option<TcpStream>,
    wbuf: Vec<u8>,
    body: Vec<u8>,
    rbuf: Vec<u8>,
    rfill: usize,
}

impl PostConn {
    fn new(hub: Arc<HubAddr>, src: Option<Ipv4Addr>) -> PostConn {
        PostConn {
            hub,
            src,
            stream: None,
            wbuf: Vec::with_capacity(1024),
            body: Vec::with_capacity(1024),
            rbuf: vec![0; 4096],
            rfill: 0,
        }
    }

    /// POSTs `{"t":<send time>,"s":<seq>,"p":"xx..."}` (padded to `body_bytes`) and reads the answer.
    async fn post(&mut self, path: &str, seq: u64, body_bytes: usize) -> Result<u16> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.hub, self.src).await.context("connect")?);
            self.rfill = 0;
        }
        let result = self.exchange(path, seq, body_bytes).await;
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
        }
        result.map(|(status, _)| status)
    }

    async fn exchange(&mut self, path: &str, seq: u64, body_bytes: usize) -> Result<(u16, bool)> {
        let PostConn {
            hub,
            stream,
            wbuf,
            body,
            rbuf,
            rfill,
            ..
        } = self;
        let stream = stream.as_mut().expect("connected");
        body.clear();
        let _ = write!(body, "{{\"t\":{},\"s\":{seq},\"p\":\"", now_ns());
        if body.len() + 2 < body_bytes {
            body.resize(body_bytes - 2, b'x');
        }
        body.extend_from_slice(b"\"}");
        wbuf.clear();
        let _ = write!(
            wbuf,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            hub.host,
            body.len()
        );
        wbuf.extend_from_slice(body);
        stream.write_all(wbuf).await?;
        loop {
            if let Some(end) = find(&rbuf[..*rfill], b"\r\n\r\n") {
                let head = &rbuf[..end];
                let status = parse_status(head)?;
                let keep_alive =
                    !header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let body_len = if let Some(len) = header(head, "content-length") {
                    Some(len.parse::<usize>().context("bad Content-Length")?)
                } else if header(head, "transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
                {
                    find(&rbuf[end + 4..*rfill], b"0\r\n\r\n").map(|at| at + 5)
                } else {
                    Some(0)
                };
                if let Some(body_len) = body_len {
                    let total = end + 4 + body_len;
                    if *rfill >= total {
                        rbuf.copy_within(total..*rfill, 0);
                        *rfill -= total;
                        return Ok((status, keep_alive));
                    }
                }
            }
            if *rfill == rbuf.len() {
                rbuf.resize(rbuf.len() * 2, 0);
            }
            let n = stream.read(&mut rbuf[*rfill..]).await?;
            if n == 0 {
                bail!("the hub closed the connection before answering a POST");
            }
            *rfill += n;
        }
    }
}

/// How posters pace themselves.
struct Plan {
    /// Request targets, used round-robin.
    paths: Vec<String>,
    /// Deliveries one POST makes (subscribers per channel); 0: no pacing.
    fanout: u64,
    /// Most messages in flight: posted but not yet received by every subscriber.
    window: u64,
    body_bytes: usize,
    stop: AtomicBool,
    /// POSTs started.
    sent: AtomicU64,
    /// Deliveries written off: failed POSTs, stalls.
    credit: AtomicU64,
    errors: AtomicU64,
    stalls: AtomicU64,
}

/// A window that has not moved for this long counts as a stall and is written off.
const STALL: Duration = Duration::from_secs(2);

async fn poster(mut conn: PostConn, plan: Arc<Plan>, shared: Arc<Shared>) {
    let mut consecutive_errors = 0u32;
    loop {
        if plan.stop.load(Relaxed) {
            break;
        }
        if plan.fanout > 0 {
            let deadline = tokio::time::Instant::now() + STALL;
            loop {
                let notified = shared.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                shared.waiting.store(true, SeqCst);
                let sent = plan.sent.load(SeqCst);
                let got = shared.delivered.load(SeqCst) + plan.credit.load(SeqCst);
                let want = (sent + 1) * plan.fanout;
                let allowed = got + plan.window * plan.fanout;
                if want <= allowed || plan.stop.load(SeqCst) {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    plan.stalls.fetch_add(1, Relaxed);
                    plan.credit.fetch_add(want - allowed, SeqCst);
                    break;
                }
            }
            if plan.stop.load(Relaxed) {
                break;
            }
        }
        let seq = plan.sent.fetch_add(1, SeqCst);
        let path = &plan.paths[seq as usize % plan.paths.len()];
        match conn.post(path, seq, plan.body_bytes).await {
            Ok(200) => {
                consecutive_errors = 0;
                shared.posts.fetch_add(1, Relaxed);
            }
            outcome => {
                plan.errors.fetch_add(1, Relaxed);
                plan.credit.fetch_add(plan.fanout, SeqCst);
                shared.error(match outcome {
                    Ok(status) => format!("POST {path} answered {status}"),
                    Err(err) => format!("POST {path}: {err:#}"),
                });
                consecutive_errors += 1;
                if consecutive_errors > 3 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Hubs

#[derive(Clone)]
enum Kind {
    Rust,
    Js,
    External { url: String, pid: Option<u32> },
}

#[derive(Clone)]
struct Target {
    name: String,
    kind: Kind,
}

struct HubProc {
    addr: Arc<HubAddr>,
    pid: Option<u32>,
    child: Option<Child>,
    log: Option<PathBuf>,
    /// The kernel's count of connections dropped because a listen queue was full, at start.
    overflows_at_start: Option<u64>,
}

/// `TcpExt: ListenOverflows` of /proc/net/netstat: connection attempts dropped because the
/// listening socket's accept queue (its backlog) was full. The client retries its SYN after 1 s.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

fn js_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../js/node_modules/signalhub/bin.js")
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

impl HubProc {
    async fn start(target: &Target, opts: &Opts, tag: &str) -> Result<HubProc> {
        let (mut command, port) = match &target.kind {
            Kind::External { url, pid } => {
                return Ok(HubProc {
                    addr: Arc::new(resolve(url).await?),
                    pid: *pid,
                    child: None,
                    log: None,
                    overflows_at_start: listen_overflows(),
                })
            }
            Kind::Rust => {
                let port = free_port()?;
                let mut command = Command::new(env!("CARGO_BIN_EXE_signalhub"));
                command.args([
                    "listen",
                    "--host",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-q",
                ]);
                command.args([
                    "--rate",
                    "0",
                    "--max-connections",
                    "0",
                    "--max-connections-per-ip",
                    "0",
                ]);
                (command, port)
            }
            Kind::Js => {
                let bin = js_bin();
                if !bin.exists() {
                    bail!(
                        "the JS hub is not installed ({} is missing): run `npm ci --prefix js` in the repository root, or pass --only rust",
                        bin.display()
                    );
                }
                let port = free_port()?;
                let mut command = Command::new(&opts.node);
                command.arg(&bin);
                command.args(["listen", "-p", &port.to_string(), "-h", "127.0.0.1", "-q"]);
                (command, port)
            }
        };
        let log = std::env::temp_dir().join(format!(
            "hubload-{}-{}-{}.log",
            std::process::id(),
            target.name,
            tag
        ));
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_file(&log);
                return Err(err)
                    .with_context(|| format!("cannot start the {} hub: {command:?}", target.name));
            }
        };
        let mut hub = HubProc {
            addr: Arc::new(HubAddr {
                sock: SocketAddr::from(([127, 0, 0, 1], port)),
                host: format!("127.0.0.1:{port}"),
                loopback: true,
            }),
            pid: Some(child.id()),
            child: Some(child),
            log: Some(log.clone()),
            overflows_at_start: listen_overflows(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = hub.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the {} hub exited ({status}) before it answered; its log ({}):\n{}",
                    target.name,
                    log.display(),
                    log_tail(&log)
                );
            }
            if let Ok((200, _)) = http_get(&hub.addr, "/", Duration::from_secs(1)).await {
                return Ok(hub);
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} hub did not answer GET / within 20 s; its log ({}):\n{}",
                    target.name,
                    log.display(),
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn cpu(&self) -> Option<f64> {
        self.pid.and_then(|pid| cpu_secs(Some(pid)))
    }

    fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }

    /// Problems the hub itself reports: drop and rejection counters of the Rust hub's /metrics.
    async fn metric_problems(&self) -> Vec<String> {
        let Ok((200, text)) = http_get(&self.addr, "/metrics", Duration::from_secs(3)).await else {
            return Vec::new();
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.contains("dropped") || l.contains("rejected"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                (value > 0.0).then(|| format!("hub metric {name} = {value}"))
            })
            .collect()
    }

    /// Stops the hub; returns unexpected lines of its log.
    fn stop(&mut self, rust: bool) -> Vec<String> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let Some(log) = &self.log else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let odd: Vec<&str> = text
            .lines()
            .filter(|l| {
                if rust {
                    l.contains("WARN") || l.contains("ERROR") || l.contains("panicked")
                } else {
                    !l.starts_with("signalhub listening on port") && !l.trim().is_empty()
                }
            })
            .collect();
        if odd.is_empty() {
            let _ = std::fs::remove_file(log);
            return Vec::new();
        }
        vec![format!(
            "hub log {} has {} unexpected line(s), first: {}",
            log.display(),
            odd.len(),
            odd[0].trim()
        )]
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Measurements

struct Snapshot {
    at: Instant,
    hub_cpu: Option<f64>,
    gen_cpu: f64,
    machine: Option<f64>,
    delivered: u64,
    posts: u64,
}

fn snapshot(hub: &HubProc, shared: &Shared) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        hub_cpu: hub.cpu(),
        gen_cpu: cpu_secs(None).unwrap_or(0.0),
        machine: machine_busy_secs(),
        delivered: shared.delivered.load(SeqCst),
        posts: shared.posts.load(SeqCst),
    }
}

/// Rates and CPU between two snapshots, per unit of work (deliveries or POSTs).
struct Usage {
    secs: f64,
    work: u64,
    hub_cpu: Option<f64>,
    gen_cpu: f64,
    /// CPU seconds of every other process of the machine (other work competing for the cores).
    other_cpu: Option<f64>,
}

impl Usage {
    fn between(a: &Snapshot, b: &Snapshot, deliveries: bool) -> Usage {
        let hub_cpu = a.hub_cpu.zip(b.hub_cpu).map(|(a, b)| b - a);
        let gen_cpu = b.gen_cpu - a.gen_cpu;
        Usage {
            secs: (b.at - a.at).as_secs_f64(),
            work: if deliveries {
                b.delivered - a.delivered
            } else {
                b.posts - a.posts
            },
            hub_cpu,
            gen_cpu,
            other_cpu: a
                .machine
                .zip(b.machine)
                .filter(|_| hub_cpu.is_some())
                .map(|(a, b)| (b - a - gen_cpu - hub_cpu.unwrap_or(0.0)).max(0.0)),
        }
    }

    fn other_pct(&self) -> Option<f64> {
        self.other_cpu.map(|c| c * 100.0 / self.secs)
    }

    fn rate(&self) -> f64 {
        self.work as f64 / self.secs
    }
    fn hub_us(&self) -> Option<f64> {
        (self.work > 0).then_some(())?;
        self.hub_cpu.map(|c| c * 1e6 / self.work as f64)
    }
    fn gen_us(&self) -> Option<f64> {
        (self.work > 0).then(|| self.gen_cpu * 1e6 / self.work as f64)
    }
    fn gen_pct(&self) -> f64 {
        self.gen_cpu * 100.0 / self.secs
    }
    fn hub_pct(&self) -> Option<f64> {
        self.hub_cpu.map(|c| c * 100.0 / self.secs)
    }
}

struct DeliverySpec {
    channels: usize,
    subs_per_channel: usize,
    posters: usize,
    window: u64,
    warmup: Duration,
}

struct DeliveryResult {
    usage: Usage,
    posts_per_sec: f64,
    hist: Hist,
    reads_per_frame: f64,
    problems: Vec<String>,
}

static RUN: AtomicU64 = AtomicU64::new(0);

async fn run_delivery(
    hub: &HubProc,
    spec: &DeliverySpec,
    cfg: &Cfg,
    label: &str,
) -> Result<DeliveryResult> {
    let run = RUN.fetch_add(1, Relaxed);
    let shared = Arc::new(Shared::default());
    let total = spec.channels * spec.subs_per_channel;
    let sources = Sources::new(total + spec.posters, &hub.addr);
    let opening = Arc::new(Semaphore::new(OPENING));
    let paths: Vec<String> = (0..spec.channels)
        .map(|c| format!("/v1/bench/r{run}-c{c}"))
        .collect();
    let mut readers = Vec::with_capacity(total);
    for i in 0..total {
        let sub = SubSpec {
            path: paths[i % spec.channels].clone(),
            src: sources.get(i),
            buf_size: 32 * 1024,
            hist: true,
            open_timeout: Duration::from_secs(10),
            status: None,
        };
        readers.push(tokio::spawn(subscriber(
            hub.addr.clone(),
            sub,
            shared.clone(),
            opening.clone(),
        )));
    }
    let opened_in_time = wait_opened(&shared, total, Duration::from_secs(60)).await;
    let failed = shared.failed.load(SeqCst);
    if !opened_in_time || failed > 0 {
        let ready = shared.ready.load(SeqCst);
        stop_readers(readers, &shared).await;
        bail!(
            "{label}: only {ready} of {total} subscribers opened ({failed} failed{}): {}",
            if opened_in_time { "" } else { ", timed out" },
            shared.first_error().unwrap_or_default()
        );
    }
    let plan = Arc::new(Plan {
        paths,
        fanout: spec.subs_per_channel as u64,
        window: spec.window,
        body_bytes: cfg.body_bytes,
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        credit: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
    });
    let posters: Vec<JoinHandle<()>> = (0..spec.posters)
        .map(|p| {
            let conn = PostConn::new(hub.addr.clone(), sources.get(total + p));
            tokio::spawn(poster(conn, plan.clone(), shared.clone()))
        })
        .collect();
    tokio::time::sleep(spec.warmup).await;
    reset_latencies();
    let a = snapshot(hub, &shared);
    shared.recording.store(true, SeqCst);
    tokio::time::sleep(cfg.duration).await;
    shared.recording.store(false, SeqCst);
    let b = snapshot(hub, &shared);
    plan.stop.store(true, SeqCst);
    shared.notify.notify_waiters();
    for handle in posters {
        let _ = handle.await;
    }
    // Everything posted should arrive: wait for stragglers, then count what never came.
    let expected = plan.sent.load(SeqCst) * plan.fanout;
    let deadline = Instant::now() + Duration::from_secs(3);
    while shared.delivered.load(SeqCst) + plan.credit.load(SeqCst) < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = expected.saturating_sub(shared.delivered.load(SeqCst) + plan.credit.load(SeqCst));
    let lost = shared.lost.load(SeqCst);
    let outs = stop_readers(readers, &shared).await;
    let hist = merged_latencies();
    let (mut reads, mut frames) = (0u64, 0u64);
    for out in &outs {
        reads += out.reads_recorded;
        frames += out.frames_recorded;
    }
    let mut problems = Vec::new();
    if lost > 0 {
        problems.push(format!(
            "{label}: {lost} of {total} subscribers lost their stream during the run"
        ));
    }
    if missing > 0 {
        problems.push(format!(
            "{label}: {missing} deliveries never arrived (of {expected} expected)"
        ));
    }
    let errors = plan.errors.load(Relaxed);
    if errors > 0 {
        problems.push(format!(
            "{label}: {errors} POSTs failed; first error: {}",
            shared.first_error().unwrap_or_default()
        ));
    }
    let stalls = plan.stalls.load(Relaxed);
    if stalls > 0 {
        problems.push(format!(
            "{label}: posters stalled {stalls} time(s) for {} s waiting for deliveries",
            STALL.as_secs()
        ));
    }
    let usage = Usage::between(&a, &b, true);
    let posts_per_sec = (b.posts - a.posts) as f64 / usage.secs;
    Ok(DeliveryResult {
        usage,
        posts_per_sec,
        hist,
        reads_per_frame: if frames > 0 {
            reads as f64 / frames as f64
        } else {
            0.0
        },
        problems,
    })
}

struct PostResult {
    usage: Usage,
    problems: Vec<String>,
}

async fn run_post(hub: &HubProc, cfg: &Cfg) -> Result<PostResult> {
    let run = RUN.fetch_add(1, Relaxed);
    let shared = Arc::new(Shared::default());
    let sources = Sources::new(cfg.concurrency, &hub.addr);
    let plan = Arc::new(Plan {
        paths: vec![format!("/v1/bench/r{run}-nobody")],
        fanout: 0,
        window: 0,
        body_bytes: cfg.body_bytes,
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        credit: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
    });
    let posters: Vec<JoinHandle<()>> = (0..cfg.concurrency)
        .map(|p| {
            tokio::spawn(poster(
                PostConn::new(hub.addr.clone(), sources.get(p)),
                plan.clone(),
                shared.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(cfg.warmup).await;
    let a = snapshot(hub, &shared);
    tokio::time::sleep(cfg.duration).await;
    let b = snapshot(hub, &shared);
    plan.stop.store(true, SeqCst);
    for handle in posters {
        let _ = handle.await;
    }
    let mut problems = Vec::new();
    let errors = plan.errors.load(Relaxed);
    if errors > 0 {
        problems.push(format!(
            "post: {errors} POSTs failed; first error: {}",
            shared.first_error().unwrap_or_default()
        ));
    }
    Ok(PostResult {
        usage: Usage::between(&a, &b, false),
        problems,
    })
}

struct IdleResult {
    count: usize,
    rss_base: Option<u64>,
    rss_per_sub: Option<f64>,
    open_rate: f64,
    asked: usize,
    held: usize,
    rss_per_sub_at_max: Option<f64>,
    rss_at_max: Option<u64>,
    hub_reports: Option<u64>,
    stop_reason: String,
    liveness: String,
    problems: Vec<String>,
}

/// The kinds of idle connection `idle-kinds` measures.
#[derive(Clone, Copy, Debug)]
enum IdleKind {
    SseDirect,
    SseViaHyper,
    WebSocket,
}

impl IdleKind {
    const ALL: [IdleKind; 3] = [
        IdleKind::SseDirect,
        IdleKind::SseViaHyper,
        IdleKind::WebSocket,
    ];

    fn name(self) -> &'static str {
        match self {
            IdleKind::SseDirect => "SSE subscriber (direct path)",
            IdleKind::SseViaHyper => "SSE subscriber (via hyper)",
            IdleKind::WebSocket => "idle WebSocket",
        }
    }
}

/// Reads one response head, failing unless its status is `expect`.
async fn read_head_expect(stream: &mut TcpStream, expect: u16) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut byte = [0u8; 256];
    loop {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let status = parse_status(&buf[..end])?;
            if status != expect {
                bail!("answered {status}, expected {expect}");
            }
            return Ok(());
        }
        if buf.len() > 16 * 1024 {
            bail!("response head too long");
        }
    }
}

/// Writes one request and reads its response head, failing unless its status is `expect`.
async fn exchange(stream: &mut TcpStream, request: String, expect: u16) -> Result<()> {
    stream.write_all(request.as_bytes()).await?;
    read_head_expect(stream, expect).await
}

/// Opens one idle connection of a kind and leaves it open.
async fn open_idle(
    hub: &HubAddr,
    src: Option<Ipv4Addr>,
    kind: IdleKind,
    i: usize,
) -> Result<TcpStream> {
    let mut stream = connect(hub, src).await?;
    let host = &hub.host;
    match kind {
        IdleKind::SseDirect => {
            exchange(
                &mut stream,
                format!("GET /v1/kinds/sse{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                200,
            )
            .await?;
        }
        IdleKind::SseViaHyper => {
            // The POST's answer is `200` with an empty body: the connection is then hyper's.
            exchange(
                &mut stream,
                format!("POST /v1/kinds/nobody HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"),
                200,
            )
            .await?;
            exchange(
                &mut stream,
                format!("GET /v1/kinds/hyper{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                200,
            )
            .await?;
        }
        IdleKind::WebSocket => {
            exchange(
                &mut stream,
                format!(
                    "GET /kinds{i} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ),
                101,
            )
            .await?;
        }
    }
    Ok(stream)
}

/// Opens `count` idle connections of one kind and returns the hub's RSS growth per connection
/// (KiB), measured after 1 s of quiet.
async fn run_idle_kind(hub: &HubProc, kind: IdleKind, count: usize) -> Result<Option<f64>> {
    let count = count.min(fd_budget());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = hub.rss();
    let sources = Arc::new(Sources::new(count + 1, &hub.addr));
    let opening = Arc::new(Semaphore::new(OPENING));
    let tasks: Vec<JoinHandle<Result<TcpStream>>> = (0..count)
        .map(|i| {
            let addr = hub.addr.clone();
            let sources = sources.clone();
            let opening = opening.clone();
            tokio::spawn(async move {
                let _permit = opening.acquire_owned().await?;
                tokio::time::timeout(
                    Duration::from_secs(10),
                    open_idle(&addr, sources.get(i), kind, i),
                )
                .await
                .context("opening timed out")?
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for task in tasks {
        held.push(task.await??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = base
        .zip(hub.rss())
        .map(|(a, b)| (b as f64 - a as f64) / count.max(1) as f64);
    drop(held);
    Ok(grown)
}

async fn run_idle(hub: &HubProc, cfg: &Cfg, asked: usize, label: &str) -> Result<IdleResult> {
    let run = RUN.fetch_add(1, Relaxed);
    let shared = Arc::new(Shared::default());
    let mut problems = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base = hub.rss();
    let budget = fd_budget();
    let count = cfg.idle.min(budget);
    if count < cfg.idle {
        problems.push(format!(
            "{label}: only {count} idle subscribers fit in this process's open-file limit (asked {})",
            cfg.idle
        ));
    }
    let limit = asked.max(count).min(budget);
    let sources = Sources::new(limit + 1, &hub.addr);
    let status: Arc<[AtomicU8]> = (0..limit).map(|_| AtomicU8::new(0)).collect();
    let opening = Arc::new(Semaphore::new(OPENING));
    let path = |i: usize| format!("/v1/bench/r{run}-idle{i}");
    let spawn = |i: usize| {
        let sub = SubSpec {
            path: path(i),
            src: sources.get(i),
            buf_size: 2048,
            hist: false,
            open_timeout: Duration::from_secs(10),
            status: Some((status.clone(), i)),
        };
        tokio::spawn(subscriber(
            hub.addr.clone(),
            sub,
            shared.clone(),
            opening.clone(),
        ))
    };
    let started = Instant::now();
    let mut readers: Vec<JoinHandle<()>> = (0..count).map(spawn).collect();
    let opened_in_time = wait_opened(&shared, count, Duration::from_secs(120)).await;
    let open_secs = started.elapsed().as_secs_f64();
    let ready = shared.ready.load(SeqCst);
    if !opened_in_time || ready < count {
        problems.push(format!(
            "{label}: {ready} of {count} idle subscribers opened; first error: {}",
            shared.first_error().unwrap_or_default()
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_at_count = hub.rss();
    let held_at_count = ready - shared.lost.load(SeqCst);
    let rss_per_sub = rss_base
        .zip(rss_at_count)
        .filter(|_| held_at_count > 0)
        .map(|(a, b)| (b as f64 - a as f64) / held_at_count as f64);
    // Ramp up in batches until the asked count, a failure, or this process's open-file limit.
    let mut spawned = count;
    let mut stop_reason = String::new();
    let ramp_deadline = Instant::now() + Duration::from_secs(180);
    if opened_in_time && ready == count && asked > count {
        while spawned < limit {
            let next = (spawned + cfg.ramp_batch).min(limit);
            readers.extend((spawned..next).map(spawn));
            spawned = next;
            let settled = wait_opened(&shared, spawned, Duration::from_secs(30)).await;
            if !settled || shared.failed.load(SeqCst) > 0 || shared.lost.load(SeqCst) > 0 {
                stop_reason = format!(
                    "stopped at the first failure: {}",
                    shared
                        .first_error()
                        .unwrap_or_else(|| "subscribers lost their stream".to_string())
                );
                break;
            }
            if Instant::now() > ramp_deadline {
                stop_reason = "stopped: the ramp took over 180 s".to_string();
                break;
            }
            eprintln!("    {} idle subscribers open", shared.ready.load(SeqCst));
        }
        // Whatever is still opening gets its chance.
        wait_opened(&shared, spawned, Duration::from_secs(12)).await;
        if stop_reason.is_empty() {
            stop_reason = if spawned >= asked {
                "reached the asked count".to_string()
            } else {
                format!(
                    "stopped at this generator's open-file limit ({}); hub's limit {}",
                    nofile_limit(None).unwrap_or_default(),
                    hub.pid
                        .and_then(|p| nofile_limit(Some(p)))
                        .unwrap_or_else(|| "unknown".into())
                )
            };
        }
    } else if asked <= count {
        stop_reason = "no ramp beyond the RSS measurement".to_string();
    } else {
        stop_reason = "no ramp: the first subscribers did not all open".to_string();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = shared.ready.load(SeqCst) - shared.lost.load(SeqCst);
    let rss_at_max = hub.rss();
    let rss_per_sub_at_max = rss_base
        .zip(rss_at_max)
        .filter(|_| held > 0)
        .map(|(a, b)| (b as f64 - a as f64) / held as f64);
    let hub_reports = hub_subscribers(&hub.addr).await;
    // Liveness: POST to a sample of the open subscribers' channels; each must get its message.
    let open: Vec<usize> = (0..spawned)
        .filter(|&i| status[i].load(Relaxed) == 1)
        .collect();
    let sample: Vec<usize> = if open.is_empty() {
        Vec::new()
    } else {
        let n = open.len().min(200);
        (0..n).map(|k| open[k * open.len() / n]).collect()
    };
    let before = shared.delivered.load(SeqCst);
    let mut conn = PostConn::new(hub.addr.clone(), sources.get(limit));
    let mut posted = 0u64;
    let mut post_error = None;
    for &i in &sample {
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            conn.post(&path(i), i as u64, cfg.body_bytes),
        )
        .await;
        match result {
            Ok(Ok(200)) => posted += 1,
            Ok(Ok(status)) => post_error = Some(format!("POST answered {status}")),
            Ok(Err(err)) => post_error = Some(format!("{err:#}")),
            Err(_) => post_error = Some("POST not answered within 5 s".to_string()),
        }
        if post_error.is_some() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.delivered.load(SeqCst) - before < posted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = shared.delivered.load(SeqCst) - before;
    let liveness = match post_error {
        Some(err) => format!(
            "{got}/{} sampled subscribers got a message; {err}",
            sample.len()
        ),
        None => format!("{got}/{posted} sampled subscribers got a message"),
    };
    if got < sample.len() as u64 {
        problems.push(format!(
            "{label}: liveness check at {held} idle subscribers: {liveness}"
        ));
    }
    drop(conn);
    let lost = shared.lost.load(SeqCst);
    if lost > 0 {
        problems.push(format!(
            "{label}: {lost} idle subscribers lost their stream"
        ));
    }
    stop_readers(readers, &shared).await;
    Ok(IdleResult {
        count,
        rss_base,
        rss_per_sub,
        open_rate: held_at_count as f64 / open_secs,
        asked,
        held,
        rss_per_sub_at_max,
        rss_at_max,
        hub_reports,
        stop_reason,
        liveness,
        problems,
    })
}

// ------------------------------------------------------------------------------------------------
// Report

#[derive(Clone, Copy)]
enum Unit {
    PerSec,
    /// Microseconds of CPU.
    CpuUs,
    /// Latency in nanoseconds, shown in µs or ms.
    Latency,
    KiB,
    Count,
    Percent,
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSec => format!("{}/s", thousands(v)),
        Unit::CpuUs => format!("{v:.2} µs"),
        Unit::Latency if v < 1e6 => format!("{:.0} µs", v / 1e3),
        Unit::Latency => format!("{:.2} ms", v / 1e6),
        Unit::KiB if v >= 1024.0 => format!("{:.1} MiB", v / 1024.0),
        Unit::KiB => format!("{v:.2} KiB"),
        Unit::Count => thousands(v),
        Unit::Percent => format!("{v:.0} %"),
    }
}

struct Row {
    scenario: String,
    metric: String,
    unit: Unit,
    goal: &'static str,
    values: Vec<(String, f64)>,
    /// Whether Rust/JS means anything for this row.
    ratio: bool,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    fn set(
        &mut self,
        scenario: &str,
        metric: &str,
        unit: Unit,
        goal: &'static str,
        target: &str,
        v: Option<f64>,
    ) {
        let Some(v) = v.filter(|v| v.is_finite()) else {
            return;
        };
        let index = match self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    scenario: scenario.to_string(),
                    metric: metric.to_string(),
                    unit,
                    goal,
                    values: Vec::new(),
                    ratio: true,
                });
                self.rows.len() - 1
            }
        };
        self.rows[index].values.push((target.to_string(), v));
    }

    /// Leaves the Rust/JS ratio of a row blank.
    fn no_ratio(&mut self, scenario: &str, metric: &str) {
        for row in &mut self.rows {
            if row.scenario == scenario && row.metric == metric {
                row.ratio = false;
            }
        }
    }

    fn print(&self, targets: &[Target]) {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let ratio = names.contains(&"rust") && names.contains(&"js");
        let mut out = String::new();
        let _ = write!(out, "| scenario | metric |");
        for name in &names {
            let _ = write!(out, " {name} |");
        }
        if ratio {
            let _ = write!(out, " rust/js | issue target (rust/js) |");
        }
        out.push('\n');
        let columns = 2 + names.len() + if ratio { 2 } else { 0 };
        out.push('|');
        for i in 0..columns {
            out.push_str(if i >= 2 { "---:|" } else { "---|" });
        }
        out.push('\n');
        let mut last_scenario = "";
        for row in &self.rows {
            let scenario = if row.scenario == last_scenario {
                ""
            } else {
                row.scenario.as_str()
            };
            last_scenario = &row.scenario;
            let _ = write!(out, "| {scenario} | {} |", row.metric);
            let get = |name: &str| row.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            for name in &names {
                match get(name) {
                    Some(v) => {
                        let _ = write!(out, " {} |", fmt_value(v, row.unit));
                    }
                    None => out.push_str(" n/a |"),
                }
            }
            if ratio {
                match get("rust").zip(get("js")) {
                    Some((r, j)) if j != 0.0 && row.ratio => {
                        let q = r / j;
                        let text = if q >= 10.0 {
                            format!("{q:.1}")
                        } else if q >= 1.0 {
                            format!("{q:.2}")
                        } else {
                            format!("{q:.3}")
                        };
                        let _ = write!(out, " {text} |");
                    }
                    _ => out.push_str(" |"),
                }
                let _ = write!(out, " {} |", row.goal);
            }
            out.push('\n');
        }
        println!("\n{out}");
        if !self.notes.is_empty() {
            println!("Notes:");
            for note in &self.notes {
                println!("- {note}");
            }
            println!();
        }
        if self.problems.is_empty() {
            println!("Problems: none seen (no lost subscribers, missing deliveries, failed requests or hub warnings).");
        } else {
            println!("Problems:");
            for problem in &self.problems {
                println!("- {problem}");
            }
        }
    }
}

fn latency_detail(hist: &Hist) -> String {
    let q = |p| {
        hist.quantile(p)
            .map_or("n/a".to_string(), |v| fmt_value(v as f64, Unit::Latency))
    };
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        fmt_value(hist.max as f64, Unit::Latency),
        hist.n
    )
}

fn record_delivery(
    report: &mut Report,
    scenario: &str,
    target: &str,
    r: &DeliveryResult,
    p99_goal: &'static str,
) {
    let u = &r.usage;
    report.set(
        scenario,
        "deliveries/s",
        Unit::PerSec,
        "",
        target,
        Some(u.rate()),
    );
    report.set(
        scenario,
        "latency p50",
        Unit::Latency,
        "",
        target,
        r.hist.quantile(0.5).map(|v| v as f64),
    );
    report.set(
        scenario,
        "latency p99",
        Unit::Latency,
        p99_goal,
        target,
        r.hist.quantile(0.99).map(|v| v as f64),
    );
    report.set(
        scenario,
        "hub CPU / delivery",
        Unit::CpuUs,
        "≤ 0.10",
        target,
        u.hub_us(),
    );
    report.set(
        scenario,
        "hub CPU (% of a core)",
        Unit::Percent,
        "",
        target,
        u.hub_pct(),
    );
    report.set(
        scenario,
        "generator CPU / delivery",
        Unit::CpuUs,
        "",
        target,
        u.gen_us(),
    );
    report.set(
        scenario,
        "generator CPU (% of a core)",
        Unit::Percent,
        "",
        target,
        Some(u.gen_pct()),
    );
    note_noise(report, scenario, target, u);
    eprintln!(
        "    {} deliveries/s ({} POSTs/s), latency {}; hub CPU {} / delivery ({}); generator CPU {} / delivery ({}, {:.2} reads per delivery); other processes {}",
        thousands(u.rate()),
        thousands(r.posts_per_sec),
        latency_detail(&r.hist),
        u.hub_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
        u.hub_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent)),
        u.gen_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
        fmt_value(u.gen_pct(), Unit::Percent),
        r.reads_per_frame,
        u.other_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent))
    );
}

/// Notes a run during which other processes took a noticeable share of the cores.
fn note_noise(report: &mut Report, scenario: &str, target: &str, u: &Usage) {
    if let Some(other) = u.other_pct().filter(|&p| p >= 15.0) {
        report.notes.push(format!(
            "noise: other processes used {} of a core during {target} / {scenario}",
            fmt_value(other, Unit::Percent)
        ));
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
    self_check();
    let cfg = Cfg::new(&opts);
    let want_fds = (cfg.max_idle_rust.max(cfg.max_idle_js) + 10_000) as u64;
    let limit_note = raise_nofile(want_fds);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = opts.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.enable_all().build()?;
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
        let cases: Vec<(String, DeliverySpec, &'static str)> = match scenario {
            Scenario::Fanout => cfg
                .fanouts
                .iter()
                .map(|&n| {
                    let (posters, window) = match n {
                        0..=9 => (32, 64),
                        10..=299 => (8, 32),
                        _ => (4, 16),
                    };
                    (
                        format!(
                            "fan-out to {n} subscriber{} of 1 channel",
                            if n == 1 { "" } else { "s" }
                        ),
                        DeliverySpec {
                            channels: 1,
                            subs_per_channel: n.max(1),
                            posters,
                            window,
                            warmup: cfg.warmup,
                        },
                        "",
                    )
                })
                .collect(),
            Scenario::Channels => vec![(
                format!("{} channels × 2 subscribers", cfg.channels),
                DeliverySpec {
                    channels: cfg.channels.max(1),
                    subs_per_channel: 2,
                    posters: 32,
                    window: 256,
                    warmup: cfg.warmup,
                },
                "",
            )],
            Scenario::Inflight => vec![(
                format!("{} subscribers, 1 message in flight", cfg.inflight_subs),
                DeliverySpec {
                    channels: 1,
                    subs_per_channel: cfg.inflight_subs,
                    posters: 1,
                    window: 1,
                    warmup: cfg.warmup / 2,
                },
                "≤ 0.25",
            )],
            Scenario::Idle | Scenario::IdleKinds | Scenario::Post => Vec::new(),
        };
        for (label, spec, p99_goal) in &cases {
            for target in &targets {
                eprintln!("[{}] {label} ...", target.name);
                let mut hub =
                    match HubProc::start(target, &opts, &format!("{scenario:?}").to_lowercase())
                        .await
                    {
                        Ok(hub) => hub,
                        Err(err) => {
                            report
                                .problems
                                .push(format!("{}: {label}: {err:#}", target.name));
                            eprintln!("    error: {err:#}");
                            continue;
                        }
                    };
                match run_delivery(&hub, spec, &cfg, label).await {
                    Ok(result) => {
                        record_delivery(&mut report, label, &target.name, &result, p99_goal);
                        for p in result.problems {
                            report.problems.push(format!("{}: {p}", target.name));
                        }
                    }
                    Err(err) => {
                        eprintln!("    error: {err:#}");
                        report.problems.push(format!("{}: {err:#}", target.name));
                    }
                }
                finish_hub(&mut hub, target, label, &mut report).await;
            }
        }
        if scenario == Scenario::IdleKinds {
            for target in targets.iter().filter(|t| !matches!(t.kind, Kind::Js)) {
                let label = "idle connections by kind".to_string();
                for kind in IdleKind::ALL {
                    eprintln!(
                        "[{}] {label}: {} {} ...",
                        target.name,
                        cfg.idle,
                        kind.name()
                    );
                    let mut hub = match HubProc::start(target, &opts, "idle-kinds").await {
                        Ok(hub) => hub,
                        Err(err) => {
                            report
                                .problems
                                .push(format!("{}: {label}: {err:#}", target.name));
                            continue;
                        }
                    };
                    match run_idle_kind(&hub, kind, cfg.idle).await {
                        Ok(per_connection) => {
                            let metric = format!("hub RSS / {}", kind.name());
                            report.set(
                                &label,
                                &metric,
                                Unit::KiB,
                                "",
                                &target.name,
                                per_connection,
                            );
                            report.no_ratio(&label, &metric);
                            eprintln!(
                                "    {}",
                                per_connection.map_or("n/a".into(), |v| fmt_value(v, Unit::KiB))
                            );
                        }
                        Err(err) => {
                            eprintln!("    error: {err:#}");
                            report
                                .problems
                                .push(format!("{}: {label}: {err:#}", target.name));
                        }
                    }
                    finish_hub(&mut hub, target, &label, &mut report).await;
                }
            }
        }
        if scenario == Scenario::Idle {
            for target in &targets {
                let asked = match target.kind {
                    Kind::Js => cfg.max_idle_js,
                    _ => cfg.max_idle_rust,
                };
                let label = "idle subscribers (1 channel each)".to_string();
                eprintln!(
                    "[{}] {label}: {} for RSS, then up to {asked} ...",
                    target.name, cfg.idle
                );
                let mut hub = match HubProc::start(target, &opts, "idle").await {
                    Ok(hub) => hub,
                    Err(err) => {
                        report
                            .problems
                            .push(format!("{}: {label}: {err:#}", target.name));
                        continue;
                    }
                };
                match run_idle(&hub, &cfg, asked, &label).await {
                    Ok(r) => {
                        let name = &target.name;
                        report.set(
                            &label,
                            &format!("hub RSS / subscriber at {}", thousands(r.count as f64)),
                            Unit::KiB,
                            "≤ 0.33",
                            name,
                            r.rss_per_sub,
                        );
                        report.set(
                            &label,
                            "hub RSS before subscribers",
                            Unit::KiB,
                            "",
                            name,
                            r.rss_base.map(|v| v as f64),
                        );
                        report.set(
                            &label,
                            "subscribers opened per s",
                            Unit::PerSec,
                            "",
                            name,
                            Some(r.open_rate),
                        );
                        report.set(
                            &label,
                            "most held (ramp)",
                            Unit::Count,
                            "≥ 100 000 (rust)",
                            name,
                            Some(r.held as f64),
                        );
                        report.set(
                            &label,
                            "asked (--max-idle)",
                            Unit::Count,
                            "",
                            name,
                            Some(r.asked as f64),
                        );
                        report.set(
                            &label,
                            "hub RSS / subscriber at most held",
                            Unit::KiB,
                            "",
                            name,
                            r.rss_per_sub_at_max,
                        );
                        report.set(
                            &label,
                            "hub RSS at most held",
                            Unit::KiB,
                            "",
                            name,
                            r.rss_at_max.map(|v| v as f64),
                        );
                        for metric in [
                            "most held (ramp)",
                            "asked (--max-idle)",
                            "hub RSS at most held",
                        ] {
                            report.no_ratio(&label, metric);
                        }
                        report.notes.push(format!(
                            "{name} idle ramp: held {} of {} asked ({}); the hub's GET / reports {} subscribers; liveness: {}",
                            thousands(r.held as f64),
                            thousands(r.asked as f64),
                            r.stop_reason,
                            r.hub_reports.map_or("n/a".into(), |v| thousands(v as f64)),
                            r.liveness
                        ));
                        eprintln!(
                            "    RSS {} / subscriber at {}; held {} of {} ({}); RSS {} / subscriber there; liveness {}",
                            r.rss_per_sub.map_or("n/a".into(), |v| fmt_value(v, Unit::KiB)),
                            r.count,
                            r.held,
                            r.asked,
                            r.stop_reason,
                            r.rss_per_sub_at_max.map_or("n/a".into(), |v| fmt_value(v, Unit::KiB)),
                            r.liveness
                        );
                        for p in r.problems {
                            report.problems.push(format!("{name}: {p}"));
                        }
                    }
                    Err(err) => {
                        eprintln!("    error: {err:#}");
                        report
                            .problems
                            .push(format!("{}: {label}: {err:#}", target.name));
                    }
                }
                finish_hub(&mut hub, target, &label, &mut report).await;
            }
        }
        if scenario == Scenario::Post {
            let label = format!("POST, no subscribers, {} connections", cfg.concurrency);
            for target in &targets {
                eprintln!("[{}] {label} ...", target.name);
                let mut hub = match HubProc::start(target, &opts, "post").await {
                    Ok(hub) => hub,
                    Err(err) => {
                        report
                            .problems
                            .push(format!("{}: {label}: {err:#}", target.name));
                        continue;
                    }
                };
                match run_post(&hub, &cfg).await {
                    Ok(r) => {
                        let u = &r.usage;
                        let name = &target.name;
                        report.set(&label, "requests/s", Unit::PerSec, "", name, Some(u.rate()));
                        report.set(
                            &label,
                            "hub CPU / request",
                            Unit::CpuUs,
                            "≤ 0.10",
                            name,
                            u.hub_us(),
                        );
                        report.set(
                            &label,
                            "hub CPU (% of a core)",
                            Unit::Percent,
                            "",
                            name,
                            u.hub_pct(),
                        );
                        report.set(
                            &label,
                            "generator CPU / request",
                            Unit::CpuUs,
                            "",
                            name,
                            u.gen_us(),
                        );
                        report.set(
                            &label,
                            "generator CPU (% of a core)",
                            Unit::Percent,
                            "",
                            name,
                            Some(u.gen_pct()),
                        );
                        note_noise(&mut report, &label, name, u);
                        eprintln!(
                            "    {} requests/s; hub CPU {} / request ({}); generator CPU {} / request ({}); other processes {}",
                            thousands(u.rate()),
                            u.hub_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
                            u.hub_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent)),
                            u.gen_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
                            fmt_value(u.gen_pct(), Unit::Percent),
                            u.other_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent))
                        );
                        for p in r.problems {
                            report.problems.push(format!("{name}: {p}"));
                        }
                    }
                    Err(err) => {
                        eprintln!("    error: {err:#}");
                        report
                            .problems
                            .push(format!("{}: {label}: {err:#}", target.name));
                    }
                }
                finish_hub(&mut hub, target, &label, &mut report).await;
            }
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

async fn finish_hub(hub: &mut HubProc, target: &Target, label: &str, report: &mut Report) {
    let overflows = hub
        .overflows_at_start
        .zip(listen_overflows())
        .map_or(0, |(a, b)| b.saturating_sub(a));
    if overflows > 0 {
        report.problems.push(format!(
            "{}: {label}: {overflows} connection attempts overflowed the listen queue (TcpExt ListenOverflows; the client retries after 1 s): the hub's listen backlog is too small for {OPENING} connections opening at once",
            target.name
        ));
    }
    for p in hub.metric_problems().await {
        report
            .problems
            .push(format!("{}: {label}: {p}", target.name));
    }
    for p in hub.stop(matches!(target.kind, Kind::Rust)) {
        report
            .problems
            .push(format!("{}: {label}: {p}", target.name));
    }
    // Let the kernel finish closing the hub's sockets before the next scenario starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
}
