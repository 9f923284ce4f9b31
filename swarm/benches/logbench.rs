//! The log benchmark (issue 4): replication, durable appends and the Ed25519 limits of this
//! machine, side by side with JavaScript hyperlog 4.12.1 + memdb (js/hyperlog-bench.mjs).
//!
//! `cargo bench -p swarm --bench logbench -- [--quick] [--nodes N] [--no-js] [--appends]`
//!
//! Prints one table. Every rate is nodes (or operations) per second of wall time. Replication
//! is one run each; the durable batched appends and the sign rate they are held against are the
//! medians of [`ROUNDS`] interleaved rounds, since on a shared machine single figures are noisy
//! (the 1-core sign rate alone moves by ±15 % from run to run here). `--appends` runs only those
//! rounds, printing each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use swarm::{replicate, BatchItem, Keypair, Log, LogOptions, ReplicateOptions, Verifier};
use tokio::net::{TcpListener, TcpStream};

const BATCH: usize = 1000;
/// Rounds of (durable batched appends, sign rate) whose medians make the appends target.
const ROUNDS: usize = 5;
const SEED: [u8; 32] = [1; 32];

struct Args {
    quick: bool,
    nodes: usize,
    js: bool,
    appends_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        quick: false,
        nodes: 0,
        js: true,
        appends_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--no-js" => a.js = false,
            "--appends" => a.appends_only = true,
            "--nodes" => {
                a.nodes = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--nodes takes a number")
            }
            _ => {} // --bench, filters: ignored
        }
    }
    if a.nodes == 0 {
        a.nodes = if a.quick { 10_000 } else { 100_000 };
    }
    a
}

fn value(i: usize) -> Vec<u8> {
    format!(
        r#"{{"time":{},"who":"bench","message":"message number {i}"}}"#,
        1_461_500_000_000u64 + i as u64
    )
    .into_bytes()
}

fn writer_options(signed: bool) -> LogOptions {
    LogOptions {
        keypair: signed.then(|| Keypair::from_seed(&SEED)),
        verifier: None,
    }
}

fn reader_options(signed: bool) -> LogOptions {
    LogOptions {
        keypair: None,
        verifier: signed.then(|| Verifier::for_keypair(&Keypair::from_seed(&SEED))),
    }
}

/// Appends `n` nodes in batches of `batch`; returns the time taken.
fn fill(log: &Log, n: usize, batch: usize) -> Duration {
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let items = (i..end).map(|j| BatchItem::Append(value(j))).collect();
        log.batch(items).expect("append");
        i = end;
    }
    t0.elapsed()
}

/// Replicates `src` to `dst` over loopback TCP (default sync, not live); returns the time from
/// the connection to both sides' end.
async fn replicate_tcp(src: &Log, dst: &Log) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let t0 = Instant::now();
    let a = src.clone();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        sock.set_nodelay(true).ok();
        replicate(&a, sock, ReplicateOptions::default()).await
    });
    let b = dst.clone();
    let client = tokio::spawn(async move {
        let sock = TcpStream::connect(addr).await.expect("connect");
        sock.set_nodelay(true).ok();
        replicate(&b, sock, ReplicateOptions::default()).await
    });
    let (s, c) = (server.await.expect("join"), client.await.expect("join"));
    let elapsed = t0.elapsed();
    s.expect("sender side");
    let summary = c.expect("receiver side");
    assert_eq!(summary.progress.nodes_received, src.changes());
    assert_eq!(dst.changes(), src.changes());
    elapsed
}

/// One round of the appends target: durable batched appends of `n` nodes, unsigned then signed,
/// each into a new database in `dir`, then this machine's 1-core sign rate.
struct AppendRound {
    unsigned: f64,
    signed: f64,
    sign: f64,
}

fn append_round(dir: &Path, round: usize, n: usize, sign_budget: Duration) -> AppendRound {
    let mut rates = [0.0; 2];
    for (slot, signed) in rates.iter_mut().zip([false, true]) {
        let path = dir.join(format!("bat-{round}-{signed}.redb"));
        let log = Log::open(&path, writer_options(signed)).expect("log");
        *slot = rate(n, fill(&log, n, BATCH));
        drop(log);
        std::fs::remove_file(&path).ok();
    }
    AppendRound {
        unsigned: rates[0],
        signed: rates[1],
        sign: sign_rate(sign_budget),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Operations per second of `op`, run for about `budget`.
fn per_second(budget: Duration, mut op: impl FnMut(u64)) -> f64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < budget {
        for _ in 0..256 {
            op(n);
            n += 1;
        }
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Ed25519 signatures per second on one core (what a log signs: 32-byte keys).
fn sign_rate(budget: Duration) -> f64 {
    let sk = SigningKey::from_bytes(&SEED);
    let mut msg = [0u8; 32];
    per_second(budget, |i| {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        std::hint::black_box(sk.sign(std::hint::black_box(&msg)));
    })
}

/// Ed25519 signatures per second of all cores signing at once (each thread as [`sign_rate`]).
fn sign_rate_all_cores(budget: Duration) -> (f64, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| sign_rate(budget)))
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("signing thread"))
            .sum::<f64>()
    });
    (total, threads)
}

/// Strict Ed25519 verifications per second on one core.
fn verify_rate(budget: Duration) -> f64 {
    let sk = SigningKey::from_bytes(&SEED);
    let vk = sk.verifying_key();
    let msgs: Vec<[u8; 32]> = (0u8..64).map(|i| [i; 32]).collect();
    let sigs: Vec<_> = msgs.iter().map(|m| sk.sign(m)).collect();
    per_second(budget, |i| {
        let k = (i % 64) as usize;
        vk.verify_strict(std::hint::black_box(&msgs[k]), &sigs[k])
            .expect("valid");
    })
}

struct Js {
    append_unsigned: f64,
    append_signed: f64,
    repl_unsigned: f64,
    repl_signed: f64,
    nodes_unsigned: usize,
    nodes_signed: usize,
    appends_unsigned: usize,
    appends_signed: usize,
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../js")
}

fn run_js(quick: bool, nodes: usize) -> Result<Js, String> {
    // JS signs with Node's native Ed25519 (see js/hyperlog-bench.mjs): sodium-signatures as
    // installed today falls back to tweetnacl, ~100x slower than the native libsodium it had.
    let (nu, ns, au, as_) = if quick {
        (nodes.min(2000), nodes.min(2000), 500, 500)
    } else {
        (nodes.min(5000), nodes.min(5000), 2000, 2000)
    };
    let config = format!(
        r#"{{"nodes_unsigned":{nu},"nodes_signed":{ns},"appends_unsigned":{au},"appends_signed":{as_},"signer":"native"}}"#
    );
    let out = Command::new("node")
        .arg(js_dir().join("hyperlog-bench.mjs"))
        .arg(config)
        .output()
        .map_err(|e| format!("node: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "node failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("node output: {e}"))?;
    let f = |k: &str| v[k].as_f64().ok_or(format!("node output lacks {k}"));
    Ok(Js {
        append_unsigned: f("append_unsigned")?,
        append_signed: f("append_signed")?,
        repl_unsigned: f("repl_unsigned")?,
        repl_signed: f("repl_signed")?,
        nodes_unsigned: f("nodes_unsigned")? as usize,
        nodes_signed: f("nodes_signed")? as usize,
        appends_unsigned: f("appends_unsigned")? as usize,
        appends_signed: f("appends_signed")? as usize,
    })
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        let s = format!("{:.0}", r);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    } else {
        format!("{r:.1}")
    }
}

fn row(what: &str, rust: Option<f64>, js: Option<f64>, note: &str) {
    let ratio = match (rust, js) {
        (Some(r), Some(j)) if j > 0.0 => format!("{:.1}x", r / j),
        _ => "-".into(),
    };
    println!(
        "| {what:<46} | {:>11} | {:>9} | {ratio:>8} | {note}",
        rust.map_or("-".into(), fmt_rate),
        js.map_or("-".into(), fmt_rate),
    );
}

fn main() {
    let a = args();
    let n = a.nodes;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let sign_budget = Duration::from_millis(if a.quick { 500 } else { 2000 });

    if a.appends_only {
        println!("durable batched appends ({n} nodes, batches of {BATCH}) and 1-core sign rate:");
        let rounds: Vec<AppendRound> = (0..ROUNDS)
            .map(|r| {
                let round = append_round(tmp.path(), r, n, sign_budget);
                println!(
                    "  round {}: unsigned {:>7.0}/s  signed {:>7.0}/s  sign {:>7.0}/s  signed/sign {:.2}",
                    r + 1,
                    round.unsigned,
                    round.signed,
                    round.sign,
                    round.signed / round.sign
                );
                round
            })
            .collect();
        let (signed, sign) = (
            median(rounds.iter().map(|r| r.signed).collect()),
            median(rounds.iter().map(|r| r.sign).collect()),
        );
        println!(
            "  median: unsigned {:.0}/s  signed {signed:.0}/s  sign {sign:.0}/s  signed/sign {:.2} (target 0.80)",
            median(rounds.iter().map(|r| r.unsigned).collect()),
            signed / sign
        );
        return;
    }

    // Replication, memory to memory.
    let mut repl = Vec::new();
    for signed in [false, true] {
        let src = Log::memory(writer_options(signed)).expect("log");
        fill(&src, n, BATCH);
        let dst = Log::memory(reader_options(signed)).expect("log");
        let d = rt.block_on(replicate_tcp(&src, &dst));
        repl.push(rate(n, d));
    }
    // Replication, redb to redb (unsigned and signed): the receiver commits one transaction for
    // what has arrived each time it reads (up to 256 KiB).
    let n_redb = n;
    let mut repl_redb = Vec::new();
    for signed in [false, true] {
        let src = Log::open(
            tmp.path().join(format!("src-{signed}.redb")),
            writer_options(signed),
        )
        .expect("log");
        fill(&src, n_redb, BATCH);
        let dst = Log::open(
            tmp.path().join(format!("dst-{signed}.redb")),
            reader_options(signed),
        )
        .expect("log");
        let d = rt.block_on(replicate_tcp(&src, &dst));
        repl_redb.push(rate(n_redb, d));
    }
    // Durable appends: single (one transaction each, bounded by time) and batched.
    let single_budget = Duration::from_secs(if a.quick { 1 } else { 3 });
    let mut singles = Vec::new();
    let mut batched_memory = Vec::new();
    for signed in [false, true] {
        let log = Log::open(
            tmp.path().join(format!("app-{signed}.redb")),
            writer_options(signed),
        )
        .expect("log");
        let t0 = Instant::now();
        let mut k = 0;
        while t0.elapsed() < single_budget && k < n {
            log.append(value(k)).expect("append");
            k += 1;
        }
        singles.push((rate(k, t0.elapsed()), k));
        let log = Log::memory(writer_options(signed)).expect("log");
        batched_memory.push(rate(n, fill(&log, n, BATCH)));
    }
    let rounds: Vec<AppendRound> = (0..ROUNDS)
        .map(|r| append_round(tmp.path(), r, n, sign_budget))
        .collect();
    let batched = [
        median(rounds.iter().map(|r| r.unsigned).collect()),
        median(rounds.iter().map(|r| r.signed).collect()),
    ];
    let sign = median(rounds.iter().map(|r| r.sign).collect());
    let (sign_all, cores) = sign_rate_all_cores(sign_budget);
    let verify = verify_rate(sign_budget);
    let js = if a.js { Some(run_js(a.quick, n)) } else { None };
    let (jsv, js_note) = match &js {
        Some(Ok(j)) => (Some(j), String::new()),
        Some(Err(e)) => (None, format!("JS not run: {e}")),
        None => (None, "JS not run (--no-js)".to_string()),
    };

    println!();
    println!(
        "logbench: {n} nodes{}; wall time, 2-worker tokio runtime; {} cores",
        if a.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    if !js_note.is_empty() {
        println!("{js_note}");
    }
    println!(
        "| {:<46} | {:>11} | {:>9} | {:>8} | note",
        "measure (per second)", "Rust", "JS", "Rust/JS"
    );
    println!("|{:-<48}|{:-<13}|{:-<11}|{:-<10}|------", "", "", "", "");
    let jn = |f: fn(&Js) -> usize| jsv.map_or(String::new(), |j| f(j).to_string());
    row(
        "replicate unsigned, memory -> memory (nodes)",
        Some(repl[0]),
        jsv.map(|j| j.repl_unsigned),
        &format!("JS: {} nodes", jn(|j| j.nodes_unsigned)),
    );
    row(
        "replicate signed+verified, memory -> memory",
        Some(repl[1]),
        jsv.map(|j| j.repl_signed),
        &format!("JS: {} nodes (node:crypto Ed25519)", jn(|j| j.nodes_signed)),
    );
    let redb_note =
        format!("{n_redb} nodes; 1 durable txn per gathering of arrived input (<= 256 KiB)");
    row(
        "replicate unsigned, redb -> redb",
        Some(repl_redb[0]),
        None,
        &redb_note,
    );
    row(
        "replicate signed+verified, redb -> redb",
        Some(repl_redb[1]),
        None,
        &redb_note,
    );
    row(
        "append unsigned, single (1 txn each)",
        Some(singles[0].0),
        jsv.map(|j| j.append_unsigned),
        &format!(
            "Rust: redb, {} appends; JS: memdb, {} appends",
            singles[0].1,
            jn(|j| j.appends_unsigned)
        ),
    );
    row(
        "append signed, single (1 txn each)",
        Some(singles[1].0),
        jsv.map(|j| j.append_signed),
        &format!(
            "Rust: redb, {} appends; JS: memdb, {} appends",
            singles[1].1,
            jn(|j| j.appends_signed)
        ),
    );
    row(
        &format!("append unsigned, batches of {BATCH}"),
        Some(batched[0]),
        None,
        &format!("redb; median of {ROUNDS}"),
    );
    row(
        &format!("append signed, batches of {BATCH}"),
        Some(batched[1]),
        None,
        &format!("redb; median of {ROUNDS}"),
    );
    row(
        &format!("append unsigned, batches of {BATCH}, memory"),
        Some(batched_memory[0]),
        None,
        "not durable: the cost without redb",
    );
    row(
        &format!("append signed, batches of {BATCH}, memory"),
        Some(batched_memory[1]),
        None,
        "not durable: the cost without redb",
    );
    row(
        "ed25519 sign (1 core)",
        Some(sign),
        None,
        &format!("ed25519-dalek; median of {ROUNDS}, one after each append round"),
    );
    row(
        &format!("ed25519 sign ({cores} cores at once)"),
        Some(sign_all),
        None,
        &format!(
            "{:.2}x one core: what a batch signing on every core can reach",
            sign_all / sign
        ),
    );
    row(
        "ed25519 verify_strict (1 core)",
        Some(verify),
        None,
        "ed25519-dalek",
    );
    println!();
    // The receiving side of one replication verifies on one task: one core.
    let verify_cores = 1.0;
    let target = |name: &str, got: f64, need: f64, how: String| {
        println!(
            "target {name:<36} {:>7.2} >= {:<5.2} {:<6} ({how})",
            got,
            need,
            if got >= need { "met" } else { "MISSED" }
        );
    };
    match jsv {
        Some(j) => target(
            "unsigned replication vs JS",
            repl[0] / j.repl_unsigned,
            20.0,
            "Rust memory->memory / JS memdb->memdb".into(),
        ),
        None => println!("target unsigned replication vs JS: not measured (no JS)"),
    }
    target(
        "signed replication vs verify limit",
        repl[1] / (verify * verify_cores),
        0.70,
        format!("signed nodes/s / verify/s of {verify_cores} core"),
    );
    target(
        "durable batched signed appends vs sign",
        batched[1] / sign,
        0.80,
        "redb batches of 1000 / sign/s of 1 core".into(),
    );
    println!(
        "  (against all {cores} cores signing at once: {:.2})",
        batched[1] / sign_all
    );
}
