//! `log`: a durable hyperlog-compatible log on the command line.
//!
//! ```text
//! cargo run --example log -- --dir DIR id                  # the local log id
//! cargo run --example log -- --dir DIR append TEXT         # append TEXT, print the new key
//! cargo run --example log -- --dir DIR append-stdin        # append each stdin line, print each key
//! cargo run --example log -- --dir DIR list                # every node: change seq log key value
//! cargo run --example log -- --dir DIR heads               # the heads, as list prints them
//! cargo run --example log -- --dir DIR replicate --listen 127.0.0.1:7000 [--live] [--mode sync|push|pull]
//! cargo run --example log -- --dir DIR replicate --connect 127.0.0.1:7000 [--live] [--mode ...]
//! ```
//!
//! The log lives in `DIR/log.redb` (`DIR` is created if missing). Every append is durable when
//! its key is printed: a crash (even `kill -9`) keeps it. One process at a time may open a log.
//!
//! `replicate` speaks hyperlog's replication protocol over one TCP connection (`--listen`
//! accepts one peer; port 0 picks a free port, and the address is printed as
//! `listening on ADDR` on stderr). Progress goes to stderr; the last line on stdout is
//! `sent N received M`. With `--live` (on either side) the replication keeps streaming new
//! nodes until Ctrl-C. `RUST_LOG` sets the log level of the crates' tracing output.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use swarm::{Log, LogOptions, Mode, Node, Progress, ReplicateOptions, Replication, Summary};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "A durable hyperlog-compatible log", version)]
struct Cli {
    /// The log's directory (its database is DIR/log.redb; created if missing).
    #[arg(long, global = true, value_name = "DIR", default_value = "log-data")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the local log id.
    Id,
    /// Append TEXT (its UTF-8 bytes) and print the new node's key.
    Append {
        /// The value.
        text: String,
    },
    /// Append each line of stdin (without its line ending) and print each new key as soon as
    /// the node is durable.
    AppendStdin,
    /// Print every node in change order: `change seq log key value` (value as lossy UTF-8).
    List,
    /// Print the heads as `list` prints nodes.
    Heads,
    /// Replicate with one peer over TCP.
    #[command(group(ArgGroup::new("peer").required(true).args(["listen", "connect"])))]
    Replicate {
        /// Accept one connection on this address (port 0: any free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Connect to this address.
        #[arg(long, value_name = "ADDR")]
        connect: Option<String>,
        /// Keep streaming new nodes after the sync, until Ctrl-C or the peer ends.
        #[arg(long)]
        live: bool,
        /// Send and receive (sync), only send (push) or only receive (pull).
        #[arg(long, value_enum)]
        mode: Option<CliMode>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CliMode {
    Sync,
    Push,
    Pull,
}

impl From<CliMode> for Mode {
    fn from(m: CliMode) -> Mode {
        match m {
            CliMode::Sync => Mode::Sync,
            CliMode::Push => Mode::Push,
            CliMode::Pull => Mode::Pull,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let log = open(&cli.dir)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Id => writeln!(out, "{}", log.id())?,
        Command::Append { text } => {
            let node = log.append(text.into_bytes()).context("append failed")?;
            writeln!(out, "{}", node.key)?;
        }
        Command::AppendStdin => {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("reading stdin")?;
                let node = log.append(line.into_bytes()).context("append failed")?;
                writeln!(out, "{}", node.key)?;
                out.flush()?;
            }
        }
        Command::List => {
            for node in log.changes_since(0) {
                print_node(&mut out, &node.context("reading the log")?)?;
            }
        }
        Command::Heads => {
            for node in log.heads().context("reading the heads")? {
                print_node(&mut out, &node)?;
            }
        }
        Command::Replicate {
            listen,
            connect,
            live,
            mode,
        } => {
            let options = ReplicateOptions {
                mode: mode.map(Mode::from),
                live: live.then_some(true),
                ..ReplicateOptions::default()
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let summary = runtime.block_on(replicate(&log, listen, connect, options))?;
            writeln!(
                out,
                "sent {} received {}",
                summary.progress.nodes_sent, summary.progress.nodes_received
            )?;
            if let Some(early) = summary.ended_early {
                // Not a failure (JS hyperlog ends this way when it gives up): say what is missing.
                eprintln!("note: {early}; what arrived is stored");
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Opens (creating if needed) the log in `dir`.
fn open(dir: &Path) -> Result<Log> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    let path = dir.join("log.redb");
    Log::open(&path, LogOptions::default()).with_context(|| {
        format!(
            "cannot open the log {} (is the directory writable, and no other process using it?)",
            path.display()
        )
    })
}

fn print_node(out: &mut impl Write, node: &Node) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {} {} {} {}",
        node.change,
        node.seq,
        node.log,
        node.key,
        String::from_utf8_lossy(&node.value)
    )
}

/// Connects (or accepts one connection) and replicates over it; how it went.
async fn replicate(
    log: &Log,
    listen: Option<String>,
    connect: Option<String>,
    options: ReplicateOptions,
) -> Result<Summary> {
    let stream = match (listen, connect) {
        (Some(addr), None) => {
            let listener = TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr().context("the listening address")?;
            eprintln!("listening on {local}");
            let (stream, peer) = listener.accept().await.context("accepting a connection")?;
            eprintln!("connection from {peer}");
            stream
        }
        (None, Some(addr)) => {
            let stream = TcpStream::connect(&addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            eprintln!("connected to {addr}");
            stream
        }
        _ => bail!("give exactly one of --listen ADDR and --connect ADDR"),
    };
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;

    let replication = Replication::new(log, options);
    let mut progress = replication.progress();
    let stop = replication.stop_handle();
    let run = replication.run(stream);
    tokio::pin!(run);
    let mut last_print = Instant::now();
    let mut printed = Progress::default();
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            changed = progress.changed() => {
                if changed.is_err() {
                    // The replication is finishing; its result comes next.
                    break run.await;
                }
                let now = *progress.borrow_and_update();
                let newly_synced = now.synced && !printed.synced;
                if newly_synced || last_print.elapsed() >= Duration::from_millis(250) {
                    report(&now);
                    printed = now;
                    last_print = Instant::now();
                }
            }
            signal = tokio::signal::ctrl_c() => {
                signal.context("listening for Ctrl-C")?;
                if stopping {
                    bail!("interrupted before the peer ended");
                }
                eprintln!("stopping (waiting for the peer to end; Ctrl-C again to quit)");
                stop.stop();
                stopping = true;
            }
        }
    };
    let summary = result.context("replication failed")?;
    if summary.progress != printed {
        report(&summary.progress);
    }
    Ok(summary)
}

fn report(p: &Progress) {
    eprintln!(
        "progress: sent {} received {}{}",
        p.nodes_sent,
        p.nodes_received,
        if p.synced { " (synced)" } else { "" }
    );
}
