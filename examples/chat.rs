//! `chat`: peer-to-peer IRC in the terminal, in the rooms of substack's chatwizard.
//!
//! ```text
//! cargo run --example chat -- '#room' ['#other' …] [--hub URL]… [--nick NAME] [--data DIR]
//! ```
//!
//! Each room is a live-replicating JSON hyperlog shared over a WebRTC swarm, exactly as
//! chatwizard makes them: the signalhub app is the hex SHA-1 of `chatwizard.` + the room (with
//! its `#`), and a line is the log entry `{"time":ms,"who":nick,"message":text}` written as JS
//! `JSON.stringify` writes it. So a terminal here and a browser on chatwizard's page (or this
//! project's, `signalhub listen --web`) chat in the same room and see the same history.
//!
//! With no `--hub`, it uses `http://127.0.0.1:8080`, and if nothing answers there it starts a
//! hub inside this process on that address: two terminals on one machine chat with no set-up.
//! With `--data DIR`, each room's log is kept on disk (`DIR/<room>.redb`), so history survives a
//! restart and is served to peers who join later; without it the log lives in memory, as in
//! chatwizard.
//!
//! On a terminal it shows a full-screen UI: the rooms on the left, the current room's lines
//! sorted by time (`HH:MM:SS <nick> text`), a status line (time, nick, peers) and an input line.
//! When standard input or output is not a terminal (or with `--plain`) it reads lines from
//! stdin and prints each room line as it arrives on stdout, so it can be scripted; status goes
//! to stderr. Commands in both: `/join #room`, `/part [#room]`, `/nick NAME`, `/help`, `/quit`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use swarm::{
    Log, LogOptions, PeerReplication, PeerReplicationError, PeerReplicationOptions, Swarm,
    SwarmEvent, SwarmOptions, SwarmPeer,
};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "chat/tui.rs"]
mod tui;

/// The hub used when none is given, and where one is started if nothing answers.
const DEFAULT_HUB: &str = "127.0.0.1:8080";

#[derive(Parser, Debug)]
#[command(about = "Peer-to-peer IRC over WebRTC, in chatwizard's rooms", version)]
struct Cli {
    /// Rooms to join, e.g. '#lobby' (quote the '#' in a shell). Default: #lobby.
    rooms: Vec<String>,
    /// Signalhub URL (repeatable). Default: http://127.0.0.1:8080, started in this process if
    /// nothing answers there.
    #[arg(long = "hub", value_name = "URL")]
    hubs: Vec<String>,
    /// Your nick. Default: 6 random hex characters, as in chatwizard.
    #[arg(long)]
    nick: Option<String>,
    /// Keep each room's log in DIR (history survives restarts). Default: in memory.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Plain lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Local UDP address for WebRTC (repeatable), e.g. 127.0.0.1:0 for loopback only.
    /// Default: every interface.
    #[arg(long = "udp", value_name = "ADDR")]
    udp: Vec<SocketAddr>,
}

/// What the rooms tell the front end.
#[derive(Debug, Clone)]
pub enum Update {
    /// A line of a room (local or replicated), once per log entry.
    Line { room: String, line: ChatLine },
    /// The number of connected peers of a room changed.
    Peers { room: String, peers: usize },
    /// Something to tell the user.
    Status(String),
}

/// One chat line, as chatwizard shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChatLine {
    pub time: i64,
    pub who: String,
    pub message: String,
}

impl ChatLine {
    /// Reads a log value; `None` if it is not a chatwizard line (chatwizard itself would fail on
    /// it; here it is skipped).
    fn parse(value: &[u8]) -> Option<ChatLine> {
        let value: Value = serde_json::from_slice(value).ok()?;
        Some(ChatLine {
            time: value.get("time")?.as_f64()? as i64,
            who: value.get("who")?.as_str()?.to_string(),
            message: value.get("message")?.as_str()?.to_string(),
        })
    }

    /// `HH:MM:SS <who> message`, in local time.
    pub fn render(&self) -> String {
        format!("{} <{}> {}", clock(self.time), self.who, self.message)
    }
}

/// `HH:MM:SS` of a time in ms since the epoch, in local time.
pub fn clock(ms: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%H:%M:%S").to_string()
        }
        chrono::LocalResult::None => "??:??:??".to_string(),
    }
}

/// chatwizard's signalhub app for a room: hex SHA-1 of `chatwizard.` + room.
pub fn room_app(room: &str) -> String {
    let digest = Sha1::digest(format!("chatwizard.{room}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A room name as typed: `lobby` → `#lobby`.
pub fn normalize_room(room: &str) -> String {
    let room = room.trim();
    if room.starts_with('#') {
        room.to_string()
    } else {
        format!("#{room}")
    }
}

/// A joined room: its log, and the task that keeps it in the swarm.
pub struct Room {
    pub name: String,
    log: Log,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Room {
    /// Appends a line as chatwizard does (off the async threads: a durable append waits for
    /// the disk).
    pub async fn say(&self, who: &str, message: &str) -> Result<()> {
        let time = chrono::Utc::now().timestamp_millis();
        let value = swarm::js_stringify(&json!({"time": time, "who": who, "message": message}));
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.append(value.into_bytes())).await??;
        Ok(())
    }

    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// How rooms are joined.
#[derive(Clone)]
pub struct Network {
    hubs: Vec<String>,
    data: Option<PathBuf>,
    udp: Vec<SocketAddr>,
    updates: mpsc::UnboundedSender<Update>,
}

impl Network {
    pub async fn join(&self, name: &str) -> Result<Room> {
        let name = normalize_room(name);
        let log = match &self.data {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let file = dir.join(format!("{}.redb", file_name(&name)));
                Log::open(&file, LogOptions::default())
                    .with_context(|| format!("cannot open {}", file.display()))?
            }
            None => Log::memory(LogOptions::default())?,
        };
        let mut options = SwarmOptions::default();
        if !self.udp.is_empty() {
            options.udp_addrs = self.udp.clone();
        }
        let app = room_app(&name);
        let swarm = Swarm::join(&self.hubs, &app, options)
            .await
            .with_context(|| format!("cannot join {name}"))?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_room(
            name.clone(),
            log.clone(),
            swarm,
            self.updates.clone(),
            stop.clone(),
        ));
        let _ = self.updates.send(Update::Status(format!(
            "joined {name} (signalhub app {app})"
        )));
        Ok(Room {
            name,
            log,
            stop,
            task,
        })
    }
}

/// A file name for a room: its characters, with anything unusual hex-escaped.
fn file_name(room: &str) -> String {
    room.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("%{:02x}", c as u32)
            }
        })
        .collect()
}

/// Keeps a room in its swarm: replicates with every peer, and shows every line of its log.
async fn run_room(
    room: String,
    log: Log,
    mut swarm: Swarm,
    updates: mpsc::UnboundedSender<Update>,
    stop: CancellationToken,
) {
    // Every entry, from the first: history first, then live ones.
    let mut entries = log.subscribe(0);
    let mut replications = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            entry = entries.next() => match entry {
                Some(Ok(node)) => {
                    if let Some(line) = ChatLine::parse(&node.value) {
                        let _ = updates.send(Update::Line { room: room.clone(), line });
                    }
                }
                Some(Err(error)) => {
                    let _ = updates.send(Update::Status(format!("{room}: log error: {error}")));
                    break;
                }
                None => break,
            },
            event = swarm.next_event() => match event {
                Some(SwarmEvent::Connected { peer, .. }) => {
                    let _ = updates.send(Update::Peers { room: room.clone(), peers: swarm.peers().len() });
                    replications.spawn(replicate_with(room.clone(), log.clone(), peer, updates.clone()));
                }
                Some(SwarmEvent::Disconnected { .. }) => {
                    let _ = updates.send(Update::Peers { room: room.clone(), peers: swarm.peers().len() });
                }
                None => break,
            },
            Some(_) = replications.join_next(), if !replications.is_empty() => {}
        }
    }
    replications.shutdown().await;
    swarm.close().await;
}

/// Live replication of a room's log with one peer, until either side goes.
async fn replicate_with(
    room: String,
    log: Log,
    peer: SwarmPeer,
    updates: mpsc::UnboundedSender<Update>,
) {
    let replication = PeerReplication::new(&log, PeerReplicationOptions::default());
    match replication.run(&peer).await {
        Ok(_) | Err(PeerReplicationError::Closed) => {}
        Err(error @ PeerReplicationError::Stalled(_)) => {
            tracing::info!(peer = peer.id(), "{error}");
        }
        Err(PeerReplicationError::Replicate(error)) => {
            let _ = updates.send(Update::Status(format!(
                "{room}: replication with {} ended: {error}",
                peer.id()
            )));
        }
    }
}

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Say(String),
    Join(String),
    Part(Option<String>),
    Nick(String),
    Help,
    Quit,
    Unknown(String),
}

impl Input {
    pub fn parse(line: &str) -> Option<Input> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return None;
        }
        let Some(command) = line.strip_prefix('/') else {
            return Some(Input::Say(line.to_string()));
        };
        let mut words = command.split_whitespace();
        let name = words.next().unwrap_or_default();
        let arg = words.next().map(str::to_string);
        Some(match (name, arg) {
            ("join" | "j", Some(room)) => Input::Join(normalize_room(&room)),
            ("part" | "p", room) => Input::Part(room.map(|r| normalize_room(&r))),
            ("nick" | "n", Some(nick)) => Input::Nick(nick),
            ("help" | "h", _) => Input::Help,
            ("quit" | "q", _) => Input::Quit,
            _ => Input::Unknown(line.to_string()),
        })
    }
}

pub const HELP: &str =
    "commands: /join #room (/j), /part [#room] (/p), /nick NAME (/n), /help (/h), /quit (/q); \
anything else is said in the current room";

/// The state both front ends share: rooms, the current one, the nick.
pub struct Chat {
    pub network: Network,
    pub rooms: BTreeMap<String, Room>,
    pub current: Option<String>,
    pub nick: String,
}

impl Chat {
    /// Applies a typed line; returns a message for the user, and whether to quit.
    pub async fn handle(&mut self, input: Input) -> (Option<String>, bool) {
        match input {
            Input::Say(text) => {
                let Some(room) = self.current.as_ref().and_then(|r| self.rooms.get(r)) else {
                    return (Some("join a room first: /join #room".into()), false);
                };
                match room.say(&self.nick, &text).await {
                    Ok(()) => (None, false),
                    Err(error) => (Some(format!("not sent: {error:#}")), false),
                }
            }
            Input::Join(room) => {
                if !self.rooms.contains_key(&room) {
                    match self.network.join(&room).await {
                        Ok(joined) => {
                            self.rooms.insert(room.clone(), joined);
                        }
                        Err(error) => return (Some(format!("{error:#}")), false),
                    }
                }
                self.current = Some(room);
                (None, false)
            }
            Input::Part(room) => {
                let Some(room) = room.or_else(|| self.current.clone()) else {
                    return (Some("no room to part".into()), false);
                };
                let Some(left) = self.rooms.remove(&room) else {
                    return (Some(format!("not in {room}")), false);
                };
                left.leave().await;
                if self.current.as_deref() == Some(room.as_str()) {
                    self.current = self.rooms.keys().next().cloned();
                }
                (Some(format!("left {room}")), false)
            }
            Input::Nick(nick) => {
                self.nick = nick;
                (Some(format!("you are now {}", self.nick)), false)
            }
            Input::Help => (Some(HELP.into()), false),
            Input::Quit => (None, true),
            Input::Unknown(line) => (Some(format!("unknown command {line:?}; {HELP}")), false),
        }
    }

    pub async fn leave_all(&mut self) {
        let rooms = std::mem::take(&mut self.rooms);
        futures_util::future::join_all(rooms.into_values().map(Room::leave)).await;
    }
}

/// Finds the default hub, or starts one in this process if nothing answers there.
async fn default_hub(
    updates: &mpsc::UnboundedSender<Update>,
) -> Result<(String, Option<signalhub::RunningHub>)> {
    let url = format!("http://{DEFAULT_HUB}");
    let answers = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(DEFAULT_HUB),
    )
    .await
    .is_ok_and(|connected| connected.is_ok());
    if answers {
        return Ok((url, None));
    }
    let config = signalhub::HubConfig {
        quiet: true,
        ..signalhub::HubConfig::default()
    };
    match signalhub::Hub::bind(DEFAULT_HUB, config).await {
        Ok(hub) => {
            let hub = hub.spawn()?;
            let _ = updates.send(Update::Status(format!(
                "no hub answered at {url}; started one in this process"
            )));
            Ok((url, Some(hub)))
        }
        // Another chat started one at the same moment: use it.
        Err(_) => Ok((url, None)),
    }
}

fn random_nick() -> String {
    let mut bytes = [0u8; 3];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let plain = cli.plain || !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal();
    if plain {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let (hubs, _own_hub) = if cli.hubs.is_empty() {
        let (url, hub) = default_hub(&updates_tx).await?;
        (vec![url], hub)
    } else {
        (cli.hubs.clone(), None)
    };
    let network = Network {
        hubs,
        data: cli.data.clone(),
        udp: cli.udp.clone(),
        updates: updates_tx,
    };
    let mut chat = Chat {
        network,
        rooms: BTreeMap::new(),
        current: None,
        nick: cli.nick.clone().unwrap_or_else(random_nick),
    };
    let rooms = if cli.rooms.is_empty() {
        vec!["#lobby".to_string()]
    } else {
        cli.rooms.clone()
    };
    for room in rooms {
        let (message, _) = chat.handle(Input::Join(normalize_room(&room))).await;
        if let Some(message) = message {
            anyhow::bail!("{message}");
        }
    }
    if plain {
        run_plain(&mut chat, updates).await?;
    } else {
        tui::run(&mut chat, updates).await?;
    }
    chat.leave_all().await;
    Ok(())
}

/// Plain lines: stdin in, room lines out (prefixed with the room when several are joined).
async fn run_plain(chat: &mut Chat, mut updates: mpsc::UnboundedReceiver<Update>) -> Result<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let quit = Arc::new(tokio::sync::Notify::new());
    let signal = quit.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.notify_one();
    });
    eprintln!("* you are {}; {HELP}", chat.nick);
    loop {
        tokio::select! {
            () = quit.notified() => break,
            line = stdin.next_line(), if stdin_open => match line? {
                Some(line) => {
                    let Some(input) = Input::parse(&line) else { continue };
                    let (message, quit) = chat.handle(input).await;
                    if let Some(message) = message {
                        eprintln!("* {message}");
                    }
                    if quit {
                        break;
                    }
                }
                // Stdin ended: keep chatting (serving history) until a signal.
                None => stdin_open = false,
            },
            Some(update) = updates.recv() => match update {
                Update::Line { room, line } => {
                    if chat.rooms.len() > 1 {
                        println!("{room} {}", line.render());
                    } else {
                        println!("{}", line.render());
                    }
                }
                Update::Peers { room, peers } => eprintln!("* {room}: {peers} peers"),
                Update::Status(text) => eprintln!("* {text}"),
            },
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
