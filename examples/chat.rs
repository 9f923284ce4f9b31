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
//! On a terminal it shows a full-screen UI in the manner of irssi and weechat (`chat/tui.rs`):
//! numbered windows on the left (1 is the status window, then the rooms, with unread counts and
//! mention marks), the current room's lines sorted by time (`HH:MM:SS <nick> text`, local time,
//! wrapped with an indent), a status line and an input line that edits and scrolls. When
//! standard input or output is not a terminal (or with `--plain`) it reads lines from stdin and
//! prints each room line once as it arrives on stdout, so it can be scripted; notices go to
//! stderr, without colour codes, and the WebRTC engine's routine warnings are off unless
//! `RUST_LOG` asks for them.
//!
//! Commands in both: `/join #room`, `/part [#room]`, `/nick NAME`, `/me does x`, `/names`,
//! `/peers`, `/clear`, `/help`, `/quit`, and `//text` says `/text`. chatwizard has no action
//! line, so `/me waves` writes the ordinary line `* nick waves` (what IRC shows for an action):
//! chatwizard shows it as `<nick> * nick waves`, this chat and the browser page as
//! `* nick waves`. Nothing else new goes on the wire: notices of peers coming and going and of
//! nick changes are worked out locally (a nick change shows when a peer's log writes under a new
//! nick, since chatwizard announces nothing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use swarm::{
    CloseReason, Key, Log, LogOptions, PathEnd, PeerReplication, PeerReplicationError,
    PeerReplicationOptions, SelectedPath, Swarm, SwarmEvent, SwarmOptions, SwarmPeer,
};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

#[path = "chat/editor.rs"]
mod editor;
#[path = "chat/scrollback.rs"]
mod scrollback;
#[path = "chat/tui.rs"]
mod tui;

/// The hub used when none is given, and where one is started if nothing answers.
const DEFAULT_HUB: &str = "127.0.0.1:8080";

/// The tracing filter without `RUST_LOG`: this program's and the project's crates at `warn`,
/// every dependency at `error`. The WebRTC engine (webrtc, rtc_ice, rtc_dtls, …) warns on every
/// connect about things that are routine here (`Unsupported Extension Type`,
/// `pingAllCandidates called with no candidate pairs`, `conn.remote_addr is empty`); its errors
/// still show.
const DEFAULT_FILTER: &str = "error,chat=warn,swarm=warn,signalhub=warn";

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

/// What the rooms tell the front end. Room updates carry the join they come from (`gen`), so
/// that what a parted room's task sent before it stopped is not shown in the room joined again.
#[derive(Debug, Clone)]
pub enum Update {
    /// A line of a room (local or replicated), once per log entry.
    Line {
        room: String,
        gen: u64,
        key: Key,
        /// The id of the log (writer) the entry is filed under: one per chat process and room.
        writer: String,
        line: ChatLine,
    },
    /// A peer connected to (or left) a room's swarm.
    Peer {
        room: String,
        gen: u64,
        id: String,
        joined: bool,
        /// Connected peers now.
        peers: usize,
        /// Why it left.
        reason: Option<String>,
    },
    /// Something to tell the user, about a room or not.
    Status { room: Option<String>, text: String },
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

    /// The action of a `/me` line (`* who does x` written by `who`): `does x`.
    pub fn action(&self) -> Option<&str> {
        self.message
            .strip_prefix("* ")?
            .strip_prefix(self.who.as_str())?
            .strip_prefix(' ')
    }

    /// `HH:MM:SS <who> message` (or `HH:MM:SS * who does x`), in local time, with control
    /// characters replaced.
    pub fn render(&self) -> String {
        let who = scrollback::clean(&self.who);
        match self.action() {
            Some(action) => format!("{} * {who} {}", clock(self.time), scrollback::clean(action)),
            None => format!(
                "{} <{who}> {}",
                clock(self.time),
                scrollback::clean(&self.message)
            ),
        }
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

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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

/// `1 peer`, `2 peers`.
pub fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// A peer id as shown: its first 8 characters (swarm ids are 25).
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(at, _)| &id[..at])
}

/// A joined room: its log, and the task that keeps it in the swarm.
pub struct Room {
    pub name: String,
    /// Which join this is (see [`Update`]).
    pub gen: u64,
    log: Log,
    /// The connected peers, and since when.
    peers: watch::Receiver<Vec<SwarmPeer>>,
    since: Arc<Mutex<HashMap<String, Instant>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Room {
    /// Appends a line as chatwizard does (off the async threads: a durable append waits for
    /// the disk).
    pub async fn say(&self, who: &str, message: &str) -> Result<()> {
        let value = swarm::js_stringify(&json!({"time": now_ms(), "who": who, "message": message}));
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.append(value.into_bytes())).await??;
        Ok(())
    }

    /// This chat's own writer id in the room's log.
    pub fn writer(&self) -> &str {
        self.log.id()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.borrow().len()
    }

    /// Who is connected, and how: `/peers`. For each peer its id, which side offered, the path
    /// ICE selected (each end's candidate type and address, direct or through a TURN relay, the
    /// round-trip time, the bytes each way) and how long it has been connected.
    pub async fn describe_peers(&self) -> Vec<String> {
        let peers = self.peers.borrow().clone();
        if peers.is_empty() {
            return vec![format!("{}: no peers connected", self.name)];
        }
        let since = self.since.lock().map(|s| s.clone()).unwrap_or_default();
        let mut lines = vec![format!(
            "{}: {} connected:",
            self.name,
            plural(peers.len(), "peer")
        )];
        for peer in &peers {
            let side = if peer.is_initiator() {
                "we offered"
            } else {
                "they offered"
            };
            let path = match peer.path().await {
                Some(path) => describe_path(&path),
                None => "closing".to_string(),
            };
            let age = since
                .get(peer.id())
                .map(|t| format!(", connected {}", ago(t.elapsed())))
                .unwrap_or_default();
            lines.push(format!("  {} ({side}): {path}{age}", peer.id()));
        }
        lines
    }

    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// `host 127.0.0.1:50001 -> host 127.0.0.1:50002 udp, direct, rtt 1 ms, 4.1 kB out, 3.9 kB in`,
/// and `, our NAT maps per destination` when two STUN servers saw us at two addresses.
fn describe_path(path: &SelectedPath) -> String {
    let end = |end: &PathEnd| match end.address {
        Some(address) => format!("{} {address}", end.kind),
        // The engine does not report a remote peer-reflexive candidate's address.
        None => end.kind.to_string(),
    };
    let via = if path.is_relayed() {
        "relayed by TURN"
    } else {
        "direct"
    };
    let rtt = path
        .rtt
        .map(|rtt| format!(", rtt {} ms", rtt.as_millis()))
        .unwrap_or_default();
    let nat = if path.nat_maps_per_destination {
        ", our NAT maps per destination"
    } else {
        ""
    };
    format!(
        "{} -> {} {}, {via}{rtt}, {} out, {} in{nat}",
        end(&path.local),
        end(&path.remote),
        path.local.protocol,
        bytes(path.bytes_sent),
        bytes(path.bytes_received)
    )
}

/// `512 B`, `4.1 kB`, `2.3 MB`.
fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

/// `42s`, `3m05s`, `2h07m`.
fn ago(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
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
    pub async fn join(&self, name: &str, gen: u64) -> Result<Room> {
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
        let peers = swarm.watch_peers();
        let since = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_room(
            RoomTask {
                room: name.clone(),
                gen,
                log: log.clone(),
                updates: self.updates.clone(),
                since: since.clone(),
            },
            swarm,
            stop.clone(),
        ));
        let _ = self.updates.send(Update::Status {
            room: Some(name.clone()),
            text: format!("joined {name} (signalhub app {app})"),
        });
        Ok(Room {
            name,
            gen,
            log,
            peers,
            since,
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

/// What a room's task knows about its room.
#[derive(Clone)]
struct RoomTask {
    room: String,
    gen: u64,
    log: Log,
    updates: mpsc::UnboundedSender<Update>,
    since: Arc<Mutex<HashMap<String, Instant>>>,
}

impl RoomTask {
    fn status(&self, text: String) {
        let _ = self.updates.send(Update::Status {
            room: Some(self.room.clone()),
            text,
        });
    }
}

/// Why a peer left, in words.
fn reason_text(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Local => "closed here",
        CloseReason::ChannelClosed => "it closed the channel",
        CloseReason::Disconnected => "connection lost",
        CloseReason::IceFailed => "no network path to it",
        CloseReason::Failed => "connection failed",
    }
}

/// Keeps a room in its swarm: replicates with every peer, and shows every line of its log.
async fn run_room(task: RoomTask, mut swarm: Swarm, stop: CancellationToken) {
    // Every entry, from the first: history first, then live ones.
    let mut entries = task.log.subscribe(0);
    let mut replications = tokio::task::JoinSet::new();
    let peer_update = |id: String, joined: bool, peers: usize, reason: Option<String>| {
        let _ = task.updates.send(Update::Peer {
            room: task.room.clone(),
            gen: task.gen,
            id,
            joined,
            peers,
            reason,
        });
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            entry = entries.next() => match entry {
                Some(Ok(node)) => {
                    if let Some(line) = ChatLine::parse(&node.value) {
                        let _ = task.updates.send(Update::Line {
                            room: task.room.clone(),
                            gen: task.gen,
                            key: node.key,
                            writer: node.log.clone(),
                            line,
                        });
                    }
                }
                Some(Err(error)) => {
                    task.status(format!("{}: log error: {error}", task.room));
                    break;
                }
                None => break,
            },
            event = swarm.next_event() => match event {
                Some(SwarmEvent::Connected { id, peer }) => {
                    if let Ok(mut since) = task.since.lock() {
                        since.insert(id.clone(), Instant::now());
                    }
                    peer_update(id, true, swarm.peers().len(), None);
                    replications.spawn(replicate_with(task.clone(), peer));
                }
                Some(SwarmEvent::Disconnected { id, reason }) => {
                    if let Ok(mut since) = task.since.lock() {
                        since.remove(&id);
                    }
                    peer_update(id, false, swarm.peers().len(), Some(reason_text(&reason).to_string()));
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
async fn replicate_with(task: RoomTask, peer: SwarmPeer) {
    let replication = PeerReplication::new(&task.log, PeerReplicationOptions::default());
    match replication.run(&peer).await {
        Ok(_) | Err(PeerReplicationError::Closed) => {}
        Err(error @ PeerReplicationError::Stalled(_)) => {
            tracing::info!(peer = peer.id(), "{error}");
        }
        Err(PeerReplicationError::Replicate(error)) => {
            task.status(format!(
                "{}: replication with {} ended: {error}",
                task.room,
                peer.id()
            ));
        }
    }
}

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Say(String),
    /// `/me does x`
    Me(String),
    Join(String),
    Part(Option<String>),
    Nick(String),
    Names(Option<String>),
    Peers,
    Clear,
    Help,
    Quit,
    Unknown(String),
    /// A command without what it needs: its usage.
    Usage(&'static str),
}

impl Input {
    pub fn parse(line: &str) -> Option<Input> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return None;
        }
        // `//text` says `/text`, as in irssi.
        if line.starts_with("//") {
            return Some(Input::Say(line[1..].to_string()));
        }
        let Some(command) = line.strip_prefix('/') else {
            return Some(Input::Say(line.to_string()));
        };
        let (name, rest) = match command.split_once(char::is_whitespace) {
            Some((name, rest)) => (name, rest.trim()),
            None => (command, ""),
        };
        let arg = rest.split_whitespace().next().map(str::to_string);
        Some(match (name.to_lowercase().as_str(), arg) {
            ("join" | "j", Some(room)) => Input::Join(normalize_room(&room)),
            ("join" | "j", None) => Input::Usage("/join #room"),
            ("part" | "p" | "leave", room) => Input::Part(room.map(|r| normalize_room(&r))),
            ("nick" | "n", Some(nick)) => Input::Nick(nick),
            ("nick" | "n", None) => Input::Usage("/nick NAME"),
            ("me", Some(_)) => Input::Me(rest.to_string()),
            ("me", None) => Input::Usage("/me does something"),
            ("names", room) => Input::Names(room.map(|r| normalize_room(&r))),
            ("peers", _) => Input::Peers,
            ("clear", _) => Input::Clear,
            ("help" | "h", _) => Input::Help,
            ("quit" | "q" | "exit", _) => Input::Quit,
            _ => Input::Unknown(line.to_string()),
        })
    }
}

pub const HELP: &[&str] = &[
    "commands:",
    "  /join #room (/j)   join a room and show it",
    "  /part [#room] (/p) leave this room (or the one named)",
    "  /nick NAME (/n)    change your nick",
    "  /me does x         an action: `* nick does x`",
    "  /names [#room]     nicks that wrote in the room",
    "  /peers             who is connected, and how",
    "  /clear             empty this window",
    "  /help (/h), /quit (/q); //text says /text",
    "keys:",
    "  Alt+1..9           window 1..9 (1: this status window)",
    "  Ctrl+K/Ctrl+J      previous/next window (also Ctrl+P/N, Alt+Left/Right)",
    "  PgUp/PgDn          scroll; Up/Down: lines sent; Tab: complete a nick",
    "  Ctrl+A/E/U/W/K/Y   start, end, kill to start, kill word, kill to end",
    "                     (Ctrl+K when text follows the cursor), yank",
    "  Ctrl+L redraws; Ctrl+C quits",
];

/// What the users who wrote in a room were last called: one nick per writer (a log id, i.e.
/// a chat process or page), with the time of its last line.
#[derive(Default)]
pub struct Roster {
    writers: HashMap<String, (String, i64)>,
}

impl Roster {
    /// The nicks, most recently active first.
    pub fn nicks(&self) -> Vec<String> {
        let mut all: Vec<&(String, i64)> = self.writers.values().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut seen = HashSet::new();
        all.into_iter()
            .filter(|(nick, _)| seen.insert(nick.clone()))
            .map(|(nick, _)| nick.clone())
            .collect()
    }
}

/// What the front end is told a command did.
#[derive(Debug, Default)]
pub struct Reply {
    /// Lines to show the user (in the current window).
    pub messages: Vec<String>,
    pub quit: bool,
}

impl Reply {
    fn say(message: impl Into<String>) -> Reply {
        Reply {
            messages: vec![message.into()],
            quit: false,
        }
    }
}

/// The state both front ends share: rooms, the current one, the nick.
pub struct Chat {
    pub network: Network,
    pub rooms: BTreeMap<String, Room>,
    /// The room typed lines go to; `None` is the status window.
    pub current: Option<String>,
    pub nick: String,
    rosters: HashMap<String, Roster>,
    next_gen: u64,
}

impl Chat {
    pub fn new(network: Network, nick: String) -> Chat {
        Chat {
            network,
            rooms: BTreeMap::new(),
            current: None,
            nick,
            rosters: HashMap::new(),
            next_gen: 0,
        }
    }

    /// Applies a typed line.
    pub async fn handle(&mut self, input: Input) -> Reply {
        match input {
            Input::Say(text) => self.say(&text).await,
            Input::Me(text) => {
                // An ordinary chatwizard line that reads as IRC shows an action.
                let line = format!("* {} {text}", self.nick);
                self.say(&line).await
            }
            Input::Join(room) => {
                if !self.rooms.contains_key(&room) {
                    self.next_gen += 1;
                    match self.network.join(&room, self.next_gen).await {
                        Ok(joined) => {
                            self.rosters.insert(room.clone(), Roster::default());
                            self.rooms.insert(room.clone(), joined);
                        }
                        Err(error) => return Reply::say(format!("{error:#}")),
                    }
                }
                self.current = Some(room);
                Reply::default()
            }
            Input::Part(room) => {
                let Some(room) = room.or_else(|| self.current.clone()) else {
                    return Reply::say("the status window stays; /part a room");
                };
                let Some(left) = self.rooms.remove(&room) else {
                    return Reply::say(format!("not in {room}"));
                };
                self.rosters.remove(&room);
                left.leave().await;
                if self.current.as_deref() == Some(room.as_str()) {
                    self.current = self.rooms.keys().next().cloned();
                }
                Reply::say(format!("left {room}"))
            }
            Input::Nick(nick) => {
                self.nick = nick;
                Reply::say(format!("you are now known as {}", self.nick))
            }
            Input::Names(room) => {
                let Some(room) = room.or_else(|| self.current.clone()) else {
                    return Reply::say("usage: /names #room (or /names in a room)");
                };
                let Some(joined) = self.rooms.get(&room) else {
                    return Reply::say(format!("not in {room}"));
                };
                let mut nicks = self.names(&room);
                nicks.retain(|n| *n != self.nick);
                nicks.insert(0, self.nick.clone());
                Reply::say(format!(
                    "{room}: {} (you, then the nicks that wrote here, latest first); {} connected",
                    nicks.join(" "),
                    plural(joined.peer_count(), "peer")
                ))
            }
            Input::Peers => {
                let rooms: Vec<&Room> = match self.current.as_ref().and_then(|r| self.rooms.get(r))
                {
                    Some(room) => vec![room],
                    None => self.rooms.values().collect(),
                };
                if rooms.is_empty() {
                    return Reply::say("in no room: no peers");
                }
                let mut messages = Vec::new();
                for room in rooms {
                    messages.extend(room.describe_peers().await);
                }
                Reply {
                    messages,
                    quit: false,
                }
            }
            Input::Clear => Reply::say("/clear clears a window of the full-screen UI"),
            Input::Help => Reply {
                messages: HELP.iter().map(|l| l.to_string()).collect(),
                quit: false,
            },
            Input::Quit => Reply {
                messages: Vec::new(),
                quit: true,
            },
            Input::Unknown(line) => Reply::say(format!("unknown command {line:?}: try /help")),
            Input::Usage(usage) => Reply::say(format!("usage: {usage}")),
        }
    }

    async fn say(&mut self, text: &str) -> Reply {
        let Some(room) = self.current.as_ref().and_then(|r| self.rooms.get(r)) else {
            return Reply::say("nothing is sent from the status window: /join #room first");
        };
        match room.say(&self.nick, text).await {
            Ok(()) => Reply::default(),
            Err(error) => Reply::say(format!("not sent: {error:#}")),
        }
    }

    /// The nicks seen in a room, most recently active first.
    pub fn names(&self, room: &str) -> Vec<String> {
        self.rosters
            .get(room)
            .map(Roster::nicks)
            .unwrap_or_default()
    }

    /// Takes note of an update before it is shown. `None`: it comes from a room since parted
    /// (or from an earlier join of it), and is not shown. Otherwise, notices to show with it: a
    /// writer's line under a new nick is a nick change.
    pub fn observe(&mut self, update: &Update) -> Option<Vec<String>> {
        let (room, gen) = match update {
            Update::Line { room, gen, .. } | Update::Peer { room, gen, .. } => (room, *gen),
            Update::Status { .. } => return Some(Vec::new()),
        };
        let joined = self.rooms.get(room).filter(|r| r.gen == gen)?;
        let Update::Line { writer, line, .. } = update else {
            return Some(Vec::new());
        };
        let own = joined.writer() == writer;
        let roster = self.rosters.entry(room.clone()).or_default();
        let mut notices = Vec::new();
        match roster.writers.get_mut(writer) {
            Some((nick, time)) => {
                if line.time >= *time {
                    if *nick != line.who && !own {
                        notices.push(format!("{nick} is now known as {}", line.who));
                    }
                    *nick = line.who.clone();
                    *time = line.time;
                }
            }
            None => {
                roster
                    .writers
                    .insert(writer.clone(), (line.who.clone(), line.time));
            }
        }
        Some(notices)
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
            let _ = updates.send(Update::Status {
                room: None,
                text: format!("no hub answered at {url}; started one in this process"),
            });
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
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let levels = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    // The engine logs some errors on every connectivity check: each shows once a minute.
    let filter = levels.and(swarm::EngineRepeatFilter::default());
    // No colour codes in either: plain output is read by scripts and log files, and the status
    // window shows text.
    let logs = tracing_subscriber::fmt::layer().with_ansi(false);
    if plain {
        tracing_subscriber::registry()
            .with(logs.with_writer(std::io::stderr).with_filter(filter))
            .init();
    } else {
        // Full screen, stderr would tear the picture: events go to the status window.
        let updates = updates_tx.clone();
        let logs = logs
            .without_time()
            .with_writer(move || StatusWriter(updates.clone()));
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .init();
    }
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
    let mut chat = Chat::new(network, cli.nick.clone().unwrap_or_else(random_nick));
    let rooms = if cli.rooms.is_empty() {
        vec!["#lobby".to_string()]
    } else {
        cli.rooms.clone()
    };
    let mut first = None;
    for room in rooms {
        let room = normalize_room(&room);
        let reply = chat.handle(Input::Join(room.clone())).await;
        if let Some(message) = reply.messages.first() {
            anyhow::bail!("{message}");
        }
        first.get_or_insert(room);
    }
    // The first room named is the one shown.
    chat.current = first;
    if plain {
        run_plain(&mut chat, updates).await?;
    } else {
        tui::run(&mut chat, updates).await?;
    }
    chat.leave_all().await;
    Ok(())
}

/// Where the full-screen UI's tracing events go: each formatted event (the fmt layer writes one
/// at a time) becomes a line of the status window.
struct StatusWriter(mpsc::UnboundedSender<Update>);

impl std::io::Write for StatusWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf).trim().to_string();
        if !text.is_empty() {
            let _ = self.0.send(Update::Status { room: None, text });
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Plain lines: stdin in, room lines out (prefixed with the room when several are joined), each
/// log entry printed once even if its room is parted and joined again; notices on stderr.
async fn run_plain(chat: &mut Chat, mut updates: mpsc::UnboundedReceiver<Update>) -> Result<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut printed: HashSet<(String, Key)> = HashSet::new();
    let quit = Arc::new(tokio::sync::Notify::new());
    let signal = quit.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.notify_one();
    });
    // Notices carry what peers chose (nicks, ids): control characters are never written raw.
    let notice = |text: &str| eprintln!("-!- {}", scrollback::clean(text));
    notice(&format!("you are {}; /help for commands", chat.nick));
    loop {
        tokio::select! {
            () = quit.notified() => break,
            line = stdin.next_line(), if stdin_open => match line? {
                Some(line) => {
                    let Some(input) = Input::parse(&line) else { continue };
                    let reply = chat.handle(input).await;
                    for message in reply.messages {
                        notice(&message);
                    }
                    if reply.quit {
                        break;
                    }
                }
                // Stdin ended: keep chatting (serving history) until a signal.
                None => stdin_open = false,
            },
            Some(update) = updates.recv() => {
                let Some(notices) = chat.observe(&update) else { continue };
                let several = chat.rooms.len() > 1;
                let tag = |room: &str| if several { format!("{room} ") } else { String::new() };
                match update {
                    Update::Line { room, key, line, .. } => {
                        for text in notices {
                            notice(&format!("{}{text}", tag(&room)));
                        }
                        if printed.insert((room.clone(), key)) {
                            println!("{}{}", tag(&room), line.render());
                        }
                    }
                    Update::Peer { room, id, joined, peers, reason, .. } => {
                        let what = if joined { "joined" } else { "left" };
                        let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                        notice(&format!(
                            "{room}: peer {} {what} ({}){why}",
                            short_id(&id),
                            plural(peers, "peer")
                        ));
                    }
                    Update::Status { text, .. } => notice(&text),
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            Input::parse("//etc/passwd"),
            Some(Input::Say("/etc/passwd".into()))
        );
        assert_eq!(
            Input::parse("/me waves  hi"),
            Some(Input::Me("waves  hi".into()))
        );
        assert_eq!(
            Input::parse("/ME"),
            Some(Input::Usage("/me does something"))
        );
        assert_eq!(Input::parse("/names"), Some(Input::Names(None)));
        assert_eq!(Input::parse("/j x"), Some(Input::Join("#x".into())));
        assert_eq!(Input::parse("/clear"), Some(Input::Clear));
        assert_eq!(Input::parse("  "), None);
    }

    #[test]
    fn an_action_is_a_line_that_names_its_writer() {
        let line = |who: &str, message: &str| ChatLine {
            time: 0,
            who: who.into(),
            message: message.into(),
        };
        assert_eq!(line("al", "* al waves").action(), Some("waves"));
        assert_eq!(line("bo", "* al waves").action(), None);
        assert!(line("al", "* al waves").render().ends_with(" * al waves"));
        assert!(line("al", "hi\x1b[2J")
            .render()
            .ends_with(" <al> hi\u{fffd}[2J"));
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "peer"), "1 peer");
        assert_eq!(plural(0, "peer"), "0 peers");
        assert_eq!(short_id("c0123456789abcdef"), "c0123456");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(4_100), "4.1 kB");
    }
}
