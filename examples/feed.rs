//! `feed`: the signed p2p feed of substack's talk "the disintermediated web", in Rust.
//!
//! ```text
//! cargo run --example feed -- keygen [--keys keys.json] [--force]
//! cargo run --example feed -- sign MESSAGE [--keys keys.json]
//! cargo run --example feed -- verify SIGNATURE MESSAGE [--keys keys.json | --public-key HEX]
//! cargo run --example feed -- publish [--keys keys.json] [--hub URL]... [--data DIR] [--loopback]
//! cargo run --example feed -- subscribe PUBLIC_KEY [--hub URL]... [--data DIR] [--loopback]
//! ```
//!
//! An account is an Ed25519 keypair: `keygen` writes `keys.json` as the talk's script does
//! (`{"publicKey":"<hex>","secretKey":"<hex>"}`, libsodium's 64-byte secret key `seed || public
//! key`) and prints `PUBLIC KEY: <hex>`. `sign` prints the hex detached signature of MESSAGE's
//! UTF-8 bytes; `verify` prints `true` or `false` (and exits 1 with a message on stderr when false).
//!
//! `publish` appends each line of stdin to a hyperlog signed as hyperlog-sodium 2.x signs (empty
//! lines are skipped, as the talk's `split2` does), prints each new entry's key on stdout, joins the
//! webrtc-swarm whose signalhub app is the public key in hex, and replicates live with every peer.
//! When stdin ends it keeps serving the feed until Ctrl-C or SIGTERM, which leave cleanly (exit 0).
//!
//! `subscribe` joins the same swarm with a log that accepts only nodes signed by PUBLIC_KEY (any
//! other node ends that peer's replication with an "invalid signature" error, and nothing of it is
//! stored), prints each entry's value as a line of UTF-8 as it arrives, and serves the feed to
//! every other peer too, so followers host it while the publisher is offline. It runs until
//! Ctrl-C or SIGTERM.
//!
//! Both sides refuse what hyperlog would let through: a node from a peer that claims this
//! process's own log id without this log's signature (hyperlog would even sign it with the
//! publisher's key; the `swarm` log refuses it); the publisher also accepts only its own key's
//! nodes from peers, as `hsodium(sodium, keypair)` does. With each peer, replication follows
//! `swarm::PeerReplication`: it starts 250 ms after the data channel opens (Node's wrtc can
//! reorder a channel's first messages), and a connection that carries nothing for 5 s is closed so
//! that the next announce retries it.
//!
//! Hubs default to `http://127.0.0.1:8080` (`--hub` repeats). Without `--data` the log lives in
//! memory; with it, in `DIR/feed.redb`, and `DIR/public-key` records whose feed it is (a
//! directory is never reused for another key). A durable subscriber prints every stored entry
//! again when it restarts, as the talk's `createReadStream({live: true})` does.
//!
//! `--loopback` gathers WebRTC host candidates on 127.0.0.1 only (tests, and demos on one
//! machine); by default every interface is used. No STUN servers are ever used. Status goes to
//! stderr; `RUST_LOG` sets the level of the crates' tracing output.

use std::fs::OpenOptions;
use std::io::{BufRead, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use swarm::{
    Keypair, Log, LogOptions, PeerReplication, PeerReplicationError, PeerReplicationOptions, Swarm,
    SwarmEvent, SwarmOptions, SwarmPeer, Verifier,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The hub when no `--hub` is given.
const DEFAULT_HUB: &str = "http://127.0.0.1:8080";
/// A connection with no replication traffic from the other side this long after replication
/// started is closed, so that the next announce retries it (half the swarm crate's default: a
/// feed's followers should not wait long for a retry).
const FIRST_TRAFFIC: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(about = "Signed p2p feeds: keys, signatures, and a hyperlog feed over webrtc-swarm")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Net {
    /// A signalhub to meet peers through (repeatable).
    #[arg(long = "hub", value_name = "URL", default_value = DEFAULT_HUB)]
    hubs: Vec<String>,
    /// Keep the log in DIR/feed.redb (default: in memory).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Gather WebRTC host candidates on 127.0.0.1 only (tests, one-machine demos).
    #[arg(long)]
    loopback: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account: write a new Ed25519 keypair to the keys file, print the public key.
    Keygen {
        /// The keys file (`{"publicKey": hex, "secretKey": hex}`).
        #[arg(long, value_name = "FILE", default_value = "keys.json")]
        keys: PathBuf,
        /// Overwrite an existing keys file.
        #[arg(long)]
        force: bool,
    },
    /// Print the hex Ed25519 signature of MESSAGE (its UTF-8 bytes).
    Sign {
        /// The message (its UTF-8 bytes are signed).
        message: String,
        /// The keys file (`{"publicKey": hex, "secretKey": hex}`).
        #[arg(long, value_name = "FILE", default_value = "keys.json")]
        keys: PathBuf,
    },
    /// Print `true` if SIGNATURE (hex) signs MESSAGE for the public key, else `false` (exit 1).
    Verify {
        /// The signature, 128 hex characters.
        signature: String,
        /// The message.
        message: String,
        /// The keys file (`{"publicKey": hex, "secretKey": hex}`).
        #[arg(long, value_name = "FILE", default_value = "keys.json")]
        keys: PathBuf,
        /// Check against this public key (hex) instead of the keys file's.
        #[arg(long, value_name = "HEX", conflicts_with = "keys")]
        public_key: Option<String>,
    },
    /// Append each stdin line to the signed feed, print each key; serve the feed until stopped.
    Publish {
        /// The keys file (`{"publicKey": hex, "secretKey": hex}`).
        #[arg(long, value_name = "FILE", default_value = "keys.json")]
        keys: PathBuf,
        #[command(flatten)]
        net: Net,
    },
    /// Follow the feed of PUBLIC_KEY: print each entry as it arrives, and serve it to others.
    Subscribe {
        /// The feed's public key (hex).
        public_key: String,
        #[command(flatten)]
        net: Net,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The engine logs some errors on every connectivity check: each shows once a minute.
    let filter =
        tracing_subscriber::EnvFilter::from_default_env().and(swarm::EngineRepeatFilter::default());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keygen { keys, force } => keygen(&keys, force)?,
        Command::Sign { message, keys } => {
            let keypair = read_keys(&keys)?;
            println!("{}", to_hex(&keypair.sign(message.as_bytes())));
        }
        Command::Verify {
            signature,
            message,
            keys,
            public_key,
        } => {
            let public_key = match public_key {
                Some(hex) => parse_public_key(&hex)?,
                None => read_keys(&keys)?.public_key(),
            };
            let signature = from_hex(signature.trim())
                .filter(|s| s.len() == 64)
                .ok_or_else(|| anyhow!("the signature must be 128 hex characters (64 bytes)"))?;
            match swarm::verify_signature(&public_key, message.as_bytes(), &signature) {
                Ok(()) => println!("true"),
                Err(error) => {
                    println!("false");
                    eprintln!(
                        "error: the signature does not verify ({error}): {message:?} was not \
                         signed with the secret key of {}",
                        to_hex(&public_key)
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Publish { keys, net } => {
            let keypair = read_keys(&keys)?;
            runtime()?.block_on(publish(keypair, net))?;
        }
        Command::Subscribe { public_key, net } => {
            let public_key = parse_public_key(&public_key)?;
            runtime()?.block_on(subscribe(public_key, net))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

// ---------------------------------------------------------------------------------------------
// Keys

fn keygen(path: &Path, force: bool) -> Result<()> {
    let keypair = Keypair::generate().context("generating a keypair")?;
    let public_key = to_hex(&keypair.public_key());
    // The talk writes JSON.stringify(keys): compact, these two keys in this order.
    let json = serde_json::json!({
        "publicKey": public_key,
        "secretKey": to_hex(&keypair.secret_key()),
    })
    .to_string();
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600); // it holds the secret key
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "{} exists already: not overwriting an account (use --force to replace it)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(json.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("PUBLIC KEY: {public_key}");
    Ok(())
}

/// The keypair of a keys file (`{"publicKey": hex, "secretKey": hex}`), checked for consistency.
fn read_keys(path: &Path) -> Result<Keypair> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the keys file {} (create one with `feed keygen`)",
            path.display()
        )
    })?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let field = |name: &str| {
        json.get(name)
            .and_then(Value::as_str)
            .and_then(from_hex)
            .ok_or_else(|| anyhow!("{} has no hex \"{name}\"", path.display()))
    };
    let secret_key = field("secretKey")?;
    let keypair = Keypair::from_secret_key(&secret_key)
        .with_context(|| format!("the secretKey of {}", path.display()))?;
    if field("publicKey")? != keypair.public_key() {
        bail!(
            "{}: publicKey is not the public half of secretKey",
            path.display()
        );
    }
    Ok(keypair)
}

fn parse_public_key(hex: &str) -> Result<[u8; 32]> {
    from_hex(hex.trim())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| anyhow!("a public key is 64 hex characters (32 bytes), not {hex:?}"))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The feed

/// The feed's log: durable in `data` (for this feed only) or in memory.
fn open_log(data: Option<&Path>, public_key: &[u8; 32], options: LogOptions) -> Result<Log> {
    let Some(dir) = data else {
        return Log::memory(options).context("creating the log");
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let marker = dir.join("public-key");
    let hex = to_hex(public_key);
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == hex => {}
        Ok(found) => bail!(
            "{} holds the feed of {}, not {hex}: use another --data directory",
            dir.display(),
            found.trim()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::write(&marker, &hex)
            .with_context(|| format!("cannot write {}", marker.display()))?,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", marker.display())),
    }
    let path = dir.join("feed.redb");
    Log::open(&path, options).with_context(|| {
        format!(
            "cannot open the log {} (is another process using it?)",
            path.display()
        )
    })
}

async fn join(net: &Net, public_key: &[u8; 32], log: &Log) -> Result<Swarm> {
    let mut options = SwarmOptions::default();
    if net.loopback {
        options.udp_addrs = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)];
    }
    let app = to_hex(public_key);
    let swarm = Swarm::join(&net.hubs, &app, options)
        .await
        .context("joining the swarm")?;
    eprintln!(
        "joined swarm {app} through {} as {} (local log id {})",
        net.hubs.join(", "),
        swarm.id(),
        log.id()
    );
    Ok(swarm)
}

async fn publish(keypair: Keypair, net: Net) -> Result<()> {
    let public_key = keypair.public_key();
    // As hsodium(sodium, keypair): sign local nodes, and accept only this key's nodes from
    // peers (so that nobody can make the publisher serve forged entries).
    let verifier = Verifier::for_keypair(&keypair);
    let options = LogOptions {
        verifier: Some(verifier.clone()),
        keypair: Some(keypair),
    };
    let log = open_log(net.data.as_deref(), &public_key, options)?;
    let mut swarm = join(&net, &public_key, &log).await?;

    // stdin: one thread reads lines and appends them, printing each key once it is stored.
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let append_log = log.clone();
    std::thread::spawn(move || {
        let _ = stdin_tx.send(append_stdin(&append_log));
    });
    serve(&mut swarm, &log, Some(stdin_rx)).await?;
    swarm.close().await;
    Ok(())
}

fn append_stdin(log: &Log) -> Result<()> {
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        if line.is_empty() {
            continue;
        }
        let node = log
            .append(line.into_bytes())
            .context("appending to the log")?;
        let mut out = stdout.lock();
        writeln!(out, "{}", node.key).and_then(|()| out.flush())?;
    }
    Ok(())
}

async fn subscribe(public_key: [u8; 32], net: Net) -> Result<()> {
    // As hsodium(sodium, {publicKey}): accept only nodes signed by the feed's key.
    let verifier = Verifier::new([public_key]);
    let options = LogOptions {
        keypair: None,
        verifier: Some(verifier.clone()),
    };
    let log = open_log(net.data.as_deref(), &public_key, options)?;
    let mut swarm = join(&net, &public_key, &log).await?;

    // log.createReadStream({live: true}).on('data', ...): every entry, then each new one.
    let mut entries = log.subscribe(0);
    let (failed_tx, failed) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let printed = async {
            while let Some(node) = entries.next().await {
                let node = node.context("reading the log")?;
                // The log verified every node from a peer already; this also skips anything a
                // durable directory might hold from an older, looser version.
                if let Err(error) = verifier.verify_node(&node) {
                    eprintln!("skipping entry {}: {error}", node.key);
                    continue;
                }
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", String::from_utf8_lossy(&node.value))
                    .and_then(|()| out.flush())
                    .context("writing to stdout")?;
            }
            Err(anyhow!("the log's subscription ended"))
        };
        let _ = failed_tx.send(printed.await);
    });
    let served = serve(&mut swarm, &log, Some(failed)).await;
    printer.abort();
    swarm.close().await;
    served
}

/// Replicates with every peer of `swarm` until Ctrl-C or SIGTERM, or until `side` (the stdin
/// reader of a publisher, the printer of a subscriber) fails. `Ok` from it means stdin ended.
async fn serve(
    swarm: &mut Swarm,
    log: &Log,
    side: Option<mpsc::UnboundedReceiver<Result<()>>>,
) -> Result<()> {
    let mut side = side;
    let mut peers = JoinSet::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            event = swarm.next_event() => match event {
                Some(SwarmEvent::Connected { id, peer }) => {
                    eprintln!("peer {id} connected");
                    peers.spawn(serve_peer(log.clone(), id, peer));
                }
                Some(SwarmEvent::Disconnected { id, reason }) => {
                    eprintln!("peer {id} disconnected ({reason:?})");
                }
                None => bail!("the swarm ended"),
            },
            done = recv_or_pending(&mut side) => {
                side = None;
                match done {
                    Some(Ok(())) => eprintln!(
                        "stdin ended; still serving the feed to peers (Ctrl-C or SIGTERM to stop)"
                    ),
                    Some(Err(error)) => return Err(error),
                    None => bail!("the stdin reader or printer stopped"),
                }
            },
            Some(_) = peers.join_next(), if !peers.is_empty() => {}
            signal = &mut stop => {
                signal?;
                eprintln!("stopping");
                return Ok(());
            }
        }
    }
}

async fn recv_or_pending<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("listening for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("listening for Ctrl-C")
    }
}

/// Replicates `log` live with one peer, then closes the connection (so that a later announce can
/// bring the peer back).
async fn serve_peer(log: Log, id: String, peer: SwarmPeer) {
    let replication = PeerReplication::new(
        &log,
        PeerReplicationOptions {
            first_traffic: FIRST_TRAFFIC,
            ..PeerReplicationOptions::default()
        },
    );
    let mut progress = replication.progress();
    let report_sync = async {
        if let Ok(now) = progress.wait_for(|p| p.synced).await {
            eprintln!(
                "peer {id}: synced (sent {} received {}); following live",
                now.nodes_sent, now.nodes_received
            );
        }
        std::future::pending::<()>().await
    };
    let outcome = tokio::select! {
        outcome = replication.run(&peer) => outcome,
        () = report_sync => unreachable!("pending"),
    };
    match outcome {
        Ok(summary) => eprintln!(
            "peer {id}: replication ended (sent {} received {})",
            summary.progress.nodes_sent, summary.progress.nodes_received
        ),
        Err(PeerReplicationError::Replicate(error)) => {
            eprintln!("peer {id}: replication failed: {error}")
        }
        Err(error) => eprintln!("peer {id}: {error}"),
    }
}
