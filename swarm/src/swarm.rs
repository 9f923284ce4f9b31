//! A swarm: every program that joins the same app on the same hub(s) connects directly to the
//! others over WebRTC data channels, speaking the signalling of JS `webrtc-swarm` 2.9 and
//! `simple-peer`, so Rust, Node and browser peers meet in one swarm.
//!
//! One task, the swarm's loop, owns all the state: it reads the hub's `all` channel (announces)
//! and the swarm's inbox (signals to it), the events of every peer, the announce timer and the
//! stall checks, so the rules below need no locks. Per remote id, a small outbox task POSTs
//! the signals for it one at a time, so they arrive in order, even across a glare or restart
//! that replaces the peer.
//!
//! The sequence is the JS one (spec §4): subscribe to `all` and to the own id; announce
//! `{"type":"connect","from":id}` (plus [`GLARE_RULE_KEY`], which JS ignores) on `all` once the
//! inbox is open, then every 3–5 s while alone
//! and 13–15 s with peers; whoever hears an announce from an unknown id offers; an unknown sender
//! is accepted only with an offer. Where JS breaks, this does better:
//!
//! - **Glare** (both sides offered): between swarms of this crate (their messages say so with
//!   [`GLARE_RULE_KEY`]), the side with the greater id keeps its offer and ignores the other's;
//!   the other side answers it: one round trip instead of two teardowns and an announce period.
//!   A JS peer in Node destroys its attempt when our offer reaches it, and one in a browser rolls
//!   its offer back and answers ours: we keep ours for that answer and announce again at once
//!   ([`ANNOUNCE_SOON`]), which a Node peer answers with an offer, alone. An own offer older than
//!   [`GLARE_WINDOW`] always yields to a new incoming offer. Within the window, an offer that
//!   arrives after the other side already answered ours is the late half of a glare it resolved,
//!   and is ignored (answering it would tear down the connection it just accepted).
//! - **Several hubs**: the hub client delivers each message once; a repeated offer or answer is
//!   ignored by the peer. Redundancy instead of broken handshakes.
//! - **Stalls**: a handshake not connected after [`SwarmOptions::handshake_timeout`] is
//!   abandoned, so the next announce retries it. JS keeps it forever and ignores that peer, so a
//!   JS peer is told to drop its side too ([`Signal::Abandon`], on which simple-peer destroys its
//!   peer), and the swarm announces again at once for its fresh offer. A browser's answer after a
//!   glare that brings no candidate is given up the same way after
//!   [`GLARE_ANSWER_CANDIDATES_WAIT`] (a Chromium bug leaves such an answer without ICE).
//! - **A new offer from a known peer** means it started over (it lost the old connection first):
//!   the old peer is closed and the new offer answered.
//! - **A full swarm** (`max_peers`) pauses its announcements and resumes them once a peer
//!   leaves (JS stops them for good); offers from unknown peers are refused while full.
//! - **Hubs going away** leave connected peers alone; the subscriptions reconnect by themselves,
//!   and the swarm announces at once when its inbox is back.
//! - **ICE servers from the hub** ([`SwarmOptions::ice_servers_from_hub`], on by default): the
//!   STUN/TURN servers and short-lived TURN credentials a hub hands out at `GET /ice-servers`
//!   are fetched at join and before the credential expires, and used for every new connection.
//! - **No path** (NATs that STUN cannot cross and no usable TURN): the handshake is reported as
//!   [`SwarmEvent::Disconnected`] with [`CloseReason::IceFailed`] at the handshake timeout, and
//!   retried on the next announce.
//! - **Signed signalling** (with [`SwarmOptions::keypair`]): the id is the public key in hex and
//!   every message is a signed envelope ([`crate::signal::seal`]); messages whose signature does
//!   not verify for their claimed sender, app and channel are dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use signalhub::client::{Client, ClientError, ClientOptions, Subscription};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ice_servers::{self, HubIceServers, IceServersError};
use crate::log::sign::Keypair;
use crate::peer::{
    unsupported_ice_urls, CloseReason, IceServer, Peer, PeerConfig, PeerError, PeerEvent,
    PeerMessage, SelectedPath,
};
use crate::signal::{hex, open_sealed, seal, HubMessage, Signal};
use crate::stream::PeerStream;

/// How long an own offer counts as "just sent" for glare: within it, the greater id keeps its
/// offer; past it, an incoming offer wins (the other side evidently did not take ours).
pub const GLARE_WINDOW: Duration = Duration::from_secs(2);

/// How soon after a glare with a JS peer the swarm announces again: time for our offer to reach
/// it and end its attempt, so that the announce finds it with none and it offers.
pub const ANNOUNCE_SOON: Duration = Duration::from_millis(300);

/// How long a browser's answer after a glare may come without a candidate before the swarm gives
/// the attempt up. Chromium, rolling its own offer back to answer ours right after it set that
/// offer, sometimes never gathers candidates for its answer (reproduced with two
/// `RTCPeerConnection`s in one page: ~8 % of such rollbacks), so its ICE never starts and the
/// attempt can only fail; and since webrtc-swarm keeps a failed attempt for good, every later
/// offer of ours renegotiated that same broken connection. Normally the first candidate comes a
/// hub round trip after the answer.
pub const GLARE_ANSWER_CANDIDATES_WAIT: Duration = Duration::from_secs(1);

/// How long a joining swarm waits for the hub's ICE servers
/// ([`SwarmOptions::ice_servers_from_hub`]) before it starts connections: its first announce,
/// and the announces and offers it hears, wait (they are handled in order once the servers are
/// in). Connections made before would have no TURN server. A hub that hands out none answers
/// at once (404).
pub const FIRST_ICE_SERVERS_WAIT: Duration = Duration::from_secs(3);

/// How soon to ask the hub again after fetching its ICE servers failed.
const ICE_SERVERS_RETRY: Duration = Duration::from_secs(30);

/// The key a swarm of this crate adds to its signal messages, and its value: "I resolve glare by
/// the id rule" (the greater id keeps its offer). JS webrtc-swarm ignores unknown keys.
pub const GLARE_RULE_KEY: &str = "glare";
pub const GLARE_RULE: &str = "greater-id-offers";

/// `wrap(message, channel)`: applied to every message before it is posted to `channel`.
pub type WrapHook = Arc<dyn Fn(Value, &str) -> Value + Send + Sync>;
/// `unwrap(message, channel)`: applied to every message received on `channel` (`all` or the own
/// id); `None` drops it.
pub type UnwrapHook = Arc<dyn Fn(Value, &str) -> Option<Value> + Send + Sync>;

/// How to join a swarm. `Default` gives JS webrtc-swarm's behaviour with no ICE servers.
#[derive(Clone)]
pub struct SwarmOptions {
    /// The own id, also the inbox channel's name. Default: 25 lowercase base-36 characters, like
    /// the cuid webrtc-swarm uses; with a keypair, the public key in hex (and nothing else is
    /// allowed).
    pub id: Option<String>,
    /// The most connected peers; announcing pauses and unknown offers are refused at it.
    pub max_peers: usize,
    /// STUN/TURN servers (empty: host candidates only).
    pub ice_servers: Vec<IceServer>,
    /// Also use the STUN/TURN servers the hub hands out at `GET /ice-servers` (`signalhub
    /// listen --ice-server … --turn-secret …`; a hub without them answers 404, which is fine):
    /// fetched at join (connections wait up to [`FIRST_ICE_SERVERS_WAIT`] for them) and
    /// again before their TURN credential expires, and added to `ice_servers` for every new
    /// connection. On by default.
    pub ice_servers_from_hub: bool,
    /// Local UDP addresses for host candidates (see [`PeerConfig::udp_addrs`]).
    pub udp_addrs: Vec<SocketAddr>,
    /// Resolve remote mDNS (`*.local`) candidates, as browsers send them.
    pub resolve_mdns: bool,
    /// See [`PeerConfig::keepalive`] (2 s).
    pub keepalive: Duration,
    /// See [`PeerConfig::relay_pace`] (24 datagrams a millisecond through a relay).
    pub relay_pace: Option<std::num::NonZeroU32>,
    /// Sign every message and accept only signed ones (see the module docs).
    pub keypair: Option<Keypair>,
    /// webrtc-swarm's `wrap` hook.
    pub wrap: Option<WrapHook>,
    /// webrtc-swarm's `unwrap` hook.
    pub unwrap: Option<UnwrapHook>,
    /// A handshake not connected after this is abandoned (10 s).
    pub handshake_timeout: Duration,
    /// The announce period while alone (3 s) and with peers (13 s), each plus a random jitter
    /// (2 s), as in webrtc-swarm.
    pub announce_alone: Duration,
    pub announce_with_peers: Duration,
    pub announce_jitter: Duration,
    /// The hub client's timings.
    pub client: ClientOptions,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            id: None,
            max_peers: usize::MAX,
            ice_servers: Vec::new(),
            ice_servers_from_hub: true,
            udp_addrs: PeerConfig::default().udp_addrs,
            resolve_mdns: false,
            keepalive: crate::peer::DEFAULT_KEEPALIVE,
            relay_pace: crate::peer::DEFAULT_RELAY_PACE,
            keypair: None,
            wrap: None,
            unwrap: None,
            handshake_timeout: Duration::from_secs(10),
            announce_alone: Duration::from_secs(3),
            announce_with_peers: Duration::from_secs(13),
            announce_jitter: Duration::from_secs(2),
            client: ClientOptions::default(),
        }
    }
}

impl std::fmt::Debug for SwarmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmOptions")
            .field("id", &self.id)
            .field("max_peers", &self.max_peers)
            .field("ice_servers", &self.ice_servers)
            .field("ice_servers_from_hub", &self.ice_servers_from_hub)
            .field("udp_addrs", &self.udp_addrs)
            .field("signed", &self.keypair.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Why [`Swarm::join`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// A hub URL, the app or the id was refused by the hub client.
    #[error(transparent)]
    Hub(#[from] ClientError),
    /// With a keypair, the id must be the public key in hex.
    #[error("with a keypair the swarm's id is its public key ({expected}), not {given}")]
    IdIsNotPublicKey { given: String, expected: String },
    /// No randomness for the id.
    #[error("no randomness for the swarm id: {0}")]
    Random(String),
}

/// What a swarm reports.
#[derive(Debug, Clone)]
pub enum SwarmEvent {
    /// A peer's data channel opened.
    Connected { id: String, peer: SwarmPeer },
    /// A connected peer went away, for this reason. Also a handshake that found no path
    /// ([`CloseReason::IceFailed`]: its connectivity checks started and it did not connect
    /// within [`SwarmOptions::handshake_timeout`], or ICE failed), with no `Connected` before
    /// it: the peer is there but cannot be reached. The next announce retries it.
    ///
    /// Messages first: every message the peer sent before it closed has been queued by then,
    /// and [`SwarmPeer::recv`] / [`SwarmPeer::recv_message`] still hand them out, in order, then
    /// `None`. (Unless over 256 messages were waiting unread: then `Disconnected` comes after a
    /// second at most and the rest still follow on `recv`.)
    Disconnected { id: String, reason: CloseReason },
}

/// A connected peer of the swarm: a handle, cheap to clone.
#[derive(Clone)]
pub struct SwarmPeer {
    id: Arc<str>,
    peer: Arc<Peer>,
}

impl std::fmt::Debug for SwarmPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmPeer")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl SwarmPeer {
    /// The remote peer's swarm id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this side offered.
    pub fn is_initiator(&self) -> bool {
        self.peer.is_initiator()
    }

    /// Sends one binary message (an `ArrayBuffer`/`Buffer` on the JS side; waits while the
    /// channel's send buffer is full).
    pub async fn send(&self, message: impl Into<Bytes>) -> Result<(), PeerError> {
        self.peer.send(message.into()).await
    }

    /// Sends one text message: a JS peer's `data` event gets a string, as from
    /// `peer.send("…")` in simple-peer (waits while the channel's send buffer is full).
    pub async fn send_text(&self, text: &str) -> Result<(), PeerError> {
        self.peer.send_text(text).await
    }

    /// The next message, text or binary, as bytes; `None` once the peer is closed and every
    /// message received before has been returned (also after [`SwarmEvent::Disconnected`]).
    pub async fn recv(&self) -> Option<Bytes> {
        self.peer.recv().await
    }

    /// The next message with its kind ([`PeerMessage::Text`] or [`PeerMessage::Binary`]);
    /// `None` as for [`SwarmPeer::recv`]. Use one of the two (or the stream) for reading.
    pub async fn recv_message(&self) -> Option<PeerMessage> {
        self.peer.recv_message().await
    }

    /// The peer as a byte stream. Use either the stream or [`SwarmPeer::recv`] for reading, not
    /// both.
    pub fn stream(&self) -> PeerStream {
        PeerStream::new(self.peer.clone())
    }

    pub fn is_closed(&self) -> bool {
        self.peer.is_closed()
    }

    /// The path the connection takes: the selected candidate pair's two ends (host, server-
    /// reflexive, peer-reflexive or relay, and their addresses), whether a TURN server relays
    /// it, the round-trip time and the bytes sent and received on it. `None` once closed.
    pub async fn path(&self) -> Option<SelectedPath> {
        self.peer.selected_path().await
    }

    /// Closes the connection; the swarm reports it disconnected and may meet the peer again.
    pub async fn close(&self) {
        self.peer.close().await
    }
}

/// A joined swarm: its events as a [`Stream`], its connected peers. Dropping it leaves the
/// swarm (as [`Swarm::close`] does, without waiting).
pub struct Swarm {
    id: String,
    events: mpsc::UnboundedReceiver<SwarmEvent>,
    peers: watch::Receiver<Vec<SwarmPeer>>,
    /// Becomes true once the inbox is open and an announce has been posted.
    ready: watch::Receiver<bool>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("id", &self.id)
            .field("peers", &self.peers.borrow().len())
            .finish()
    }
}

impl Swarm {
    /// Joins `app` through `hubs`: subscribes at once and starts announcing when the inbox is
    /// open. Needs a Tokio runtime.
    pub async fn join<I, S>(hubs: I, app: &str, options: SwarmOptions) -> Result<Swarm, SwarmError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let id = match (&options.keypair, &options.id) {
            (Some(keypair), given) => {
                let expected = hex(&keypair.public_key());
                match given {
                    Some(given) if *given != expected => {
                        return Err(SwarmError::IdIsNotPublicKey {
                            given: given.clone(),
                            expected,
                        })
                    }
                    _ => expected,
                }
            }
            (None, Some(id)) => id.clone(),
            (None, None) => new_id()?,
        };
        let unsupported = unsupported_ice_urls(&options.ice_servers);
        if !unsupported.is_empty() {
            warn!(
                ?unsupported,
                "the WebRTC engine (webrtc-rs 0.21) cannot use TURN over TCP or TLS; \
                 ignoring these ICE server URLs"
            );
        }
        let client = Client::with_options(app, hubs, options.client.clone())?;
        let all = client.subscribe(["all"])?;
        let inbox = client.subscribe([id.as_str()])?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (peers_tx, peers) = watch::channel(Vec::new());
        let (ready_tx, ready) = watch::channel(false);
        let stop = CancellationToken::new();
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let (ice_results_tx, ice_results) = mpsc::unbounded_channel();
        let inbox_hubs = inbox.connected_hubs();
        let swarm_loop = SwarmLoop {
            id: id.clone(),
            app: app.to_string(),
            options,
            client,
            all,
            inbox,
            inbox_hubs,
            remotes: HashMap::new(),
            outboxes: HashMap::new(),
            announce_soon: false,
            generation: 0,
            events: events_tx,
            peers: peers_tx,
            ready: Arc::new(ready_tx),
            notices_tx,
            notices,
            hub_ice_servers: Vec::new(),
            ice_results_tx,
            ice_results,
            tasks: JoinSet::new(),
        };
        info!(%id, app, "joining the swarm");
        let task = tokio::spawn(swarm_loop.run(stop.clone()));
        Ok(Swarm {
            id,
            events,
            peers,
            ready,
            stop,
            task: Some(task),
        })
    }

    /// The own id (the inbox channel).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event; `None` once the swarm is closed.
    pub async fn next_event(&mut self) -> Option<SwarmEvent> {
        self.events.recv().await
    }

    /// Waits until the swarm is ready: subscribed (its inbox is open on a hub, so offers reach
    /// it) and announced (its first announce was posted, so the peers already there offer to
    /// it). Returns at once if it is ready already (it stays so, even while a hub is away);
    /// `false` if the swarm ended before. Not needed to use the swarm: [`Swarm::join`] returns
    /// at once and the swarm gets ready by itself; this is for a program or test that must not
    /// act before others can find it.
    pub async fn ready(&self) -> bool {
        let mut ready = self.ready.clone();
        let ready = ready.wait_for(|ready| *ready).await.is_ok();
        ready
    }

    /// Whether the swarm is ready (see [`Swarm::ready`]).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The peers connected now.
    pub fn peers(&self) -> Vec<SwarmPeer> {
        self.peers.borrow().clone()
    }

    /// The connected peers, as a value that can be watched for changes.
    pub fn watch_peers(&self) -> watch::Receiver<Vec<SwarmPeer>> {
        self.peers.clone()
    }

    /// Leaves: stops the subscriptions and announcements, closes every peer and waits until
    /// every task of the swarm has ended.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Stream for Swarm {
    type Item = SwarmEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SwarmEvent>> {
        self.events.poll_recv(cx)
    }
}

/// A peer's event, tagged with whose it is.
struct Notice {
    id: String,
    generation: u64,
    event: PeerEvent,
}

/// The queue of one remote id's signals, and how many are not posted yet.
struct Outbox {
    queue: mpsc::UnboundedSender<Bytes>,
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

/// A remote peer, connecting or connected.
struct Remote {
    generation: u64,
    peer: Arc<Peer>,
    connected: bool,
    started: Instant,
    /// After ignoring its offer in a glare, its candidates belong to the abandoned attempt until
    /// its answer to ours arrives.
    dropping_candidates: bool,
    /// A JS peer's offer crossed ours (see [`SwarmLoop::on_inbox`]), this one: ours waits for
    /// the answer a browser sends, and a new offer from it (a Node peer's) is answered instead.
    /// A copy of this one (from another hub) is not new.
    js_glare: Option<String>,
    /// When the JS peer's answer after such a glare came without candidates, until one comes
    /// (see [`GLARE_ANSWER_CANDIDATES_WAIT`]).
    glare_answered: Option<Instant>,
    /// Whether its messages carry the rule key (it is a swarm of this crate, not JS).
    of_this_crate: bool,
}

struct SwarmLoop {
    id: String,
    app: String,
    options: SwarmOptions,
    client: Client,
    all: Subscription,
    inbox: Subscription,
    inbox_hubs: watch::Receiver<usize>,
    remotes: HashMap<String, Remote>,
    generation: u64,
    events: mpsc::UnboundedSender<SwarmEvent>,
    peers: watch::Sender<Vec<SwarmPeer>>,
    /// Set once an announce was posted (see [`Swarm::ready`]).
    ready: Arc<watch::Sender<bool>>,
    notices_tx: mpsc::UnboundedSender<Notice>,
    notices: mpsc::UnboundedReceiver<Notice>,
    /// Per remote id, the signals to POST to it, in order. Kept across the peers made for one
    /// id (a glare or a restart replaces the peer), so an answer can never overtake the offer
    /// it replaces; dropped once the id has no peer and nothing left to send.
    outboxes: HashMap<String, Outbox>,
    /// Set to announce shortly, out of turn (after a glare with a JS peer).
    announce_soon: bool,
    /// The STUN/TURN servers the hub handed out last (see
    /// [`SwarmOptions::ice_servers_from_hub`]), used with the options' own.
    hub_ice_servers: Vec<IceServer>,
    ice_results_tx: mpsc::UnboundedSender<IceServersResult>,
    ice_results: mpsc::UnboundedReceiver<IceServersResult>,
    /// Peer pumps, outboxes and announces.
    tasks: JoinSet<()>,
}

type IceServersResult = Result<Option<HubIceServers>, IceServersError>;

impl SwarmLoop {
    async fn run(mut self, stop: CancellationToken) {
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let announce = tokio::time::sleep_until(far);
        tokio::pin!(announce);
        let mut stall_check = tokio::time::interval(Duration::from_millis(500));
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox_open = false;
        let ice_refresh = tokio::time::sleep_until(far);
        tokio::pin!(ice_refresh);
        // Until the hub's ICE servers are in (or FIRST_ICE_SERVERS_WAIT has passed), nothing
        // starts a connection: the announce waits, and announces and offers heard meanwhile are
        // held, then handled in order. Connections made before would have no TURN server.
        let joined = Instant::now();
        let mut holding = self.options.ice_servers_from_hub;
        let mut held: Vec<(bool, Value)> = Vec::new();
        let mut announce_due = false;
        if holding {
            self.fetch_ice_servers();
        }
        loop {
            let mut release = false;
            tokio::select! {
                () = stop.cancelled() => break,
                changed = self.inbox_hubs.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let open = *self.inbox_hubs.borrow_and_update() > 0;
                    if open && !inbox_open {
                        // The inbox is open (again): announce now, as JS does on `open`.
                        debug!("inbox open; announcing");
                        announce.as_mut().reset(Instant::now());
                    }
                    inbox_open = open;
                }
                () = &mut announce, if !announce_due => {
                    if holding {
                        debug!("holding the first announce for the hub's ICE servers");
                        announce_due = true;
                    } else {
                        if self.connected_count() < self.options.max_peers {
                            self.announce();
                        } else {
                            debug!("full: not announcing");
                        }
                        announce.as_mut().reset(Instant::now() + self.announce_period());
                    }
                }
                Some(message) = self.all.next() => {
                    if holding {
                        held.push((true, message));
                    } else {
                        self.on_all(message).await;
                    }
                }
                Some(message) = self.inbox.next() => {
                    if holding {
                        held.push((false, message));
                    } else {
                        self.on_inbox(message).await;
                    }
                }
                Some(notice) = self.notices.recv() => self.on_notice(notice),
                Some(result) = self.ice_results.recv() => {
                    let again = self.on_ice_servers(result);
                    ice_refresh.as_mut().reset(again.map_or(far, |after| Instant::now() + after));
                    release = holding;
                }
                () = &mut ice_refresh => {
                    ice_refresh.as_mut().reset(far);
                    self.fetch_ice_servers();
                }
                () = tokio::time::sleep_until(joined + FIRST_ICE_SERVERS_WAIT), if holding => {
                    debug!("no ICE servers from the hub in time; going on without them");
                    release = true;
                }
                _ = stall_check.tick() => self.drop_stalled(),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
            if release {
                holding = false;
                for (on_all, message) in std::mem::take(&mut held) {
                    if on_all {
                        self.on_all(message).await;
                    } else {
                        self.on_inbox(message).await;
                    }
                }
                if std::mem::take(&mut announce_due) {
                    announce.as_mut().reset(Instant::now());
                }
            }
            if std::mem::take(&mut self.announce_soon) {
                announce.as_mut().reset(Instant::now() + ANNOUNCE_SOON);
            }
        }
        self.shut_down().await;
    }

    async fn shut_down(mut self) {
        debug!(id = %self.id, "leaving the swarm");
        self.client.close();
        let remotes: Vec<Remote> = self.remotes.drain().map(|(_, remote)| remote).collect();
        let closing = remotes.iter().map(|remote| remote.peer.close());
        futures_util::future::join_all(closing).await;
        drop(remotes);
        self.outboxes.clear();
        self.peers.send_replace(Vec::new());
        // Pumps end with their peer's `Closed`, outboxes once their sender is gone (an in-flight
        // POST fails fast on the closed client); anything slower is cut off.
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            warn!("swarm tasks did not end in 5 s; aborting them");
            self.tasks.shutdown().await;
        }
    }

    /// Asks the hubs for their ICE servers, in a task; the answer comes to the loop.
    fn fetch_ice_servers(&mut self) {
        let hubs = self.client.hubs().to_vec();
        let timeout = self.options.client.request_timeout;
        let results = self.ice_results_tx.clone();
        self.tasks.spawn(async move {
            let _ = results.send(ice_servers::fetch(&hubs, timeout).await);
        });
    }

    /// Takes the hubs' answer; returns when to ask again.
    fn on_ice_servers(&mut self, result: IceServersResult) -> Option<Duration> {
        match result {
            Ok(Some(answer)) => {
                let now = std::time::SystemTime::now();
                if answer.is_expired(now) {
                    warn!(hub = %answer.hub, "the hub's TURN credential has expired already (clocks apart?)");
                }
                let urls: Vec<&str> = answer
                    .servers
                    .iter()
                    .flat_map(|server| server.urls.iter().map(String::as_str))
                    .collect();
                debug!(hub = %answer.hub, ?urls, "ICE servers from the hub");
                let unsupported = unsupported_ice_urls(&answer.servers);
                if !unsupported.is_empty() && self.hub_ice_servers.is_empty() {
                    info!(
                        ?unsupported,
                        "the hub offers ICE server URLs the WebRTC engine cannot use (TURN over \
                         TCP or TLS); using the others"
                    );
                }
                self.hub_ice_servers = answer.servers.clone();
                answer.refresh_in(now)
            }
            Ok(None) => {
                debug!("the hub hands out no ICE servers");
                None
            }
            Err(error) => {
                warn!(%error, "cannot fetch ICE servers from the hub; retrying in 30 s");
                Some(ICE_SERVERS_RETRY)
            }
        }
    }

    fn connected_count(&self) -> usize {
        self.remotes.values().filter(|r| r.connected).count()
    }

    fn announce_period(&self) -> Duration {
        let base = if self.connected_count() > 0 {
            self.options.announce_with_peers
        } else {
            self.options.announce_alone
        };
        let jitter_ms = self.options.announce_jitter.as_millis() as u64;
        base + Duration::from_millis(if jitter_ms == 0 {
            0
        } else {
            random_u64() % jitter_ms
        })
    }

    /// Writes a message for `channel`: sealed when signing, then wrapped. Plain announces and
    /// signals carry [`GLARE_RULE_KEY`] after webrtc-swarm's keys (which JS ignores), so another
    /// swarm of this crate knows that this side resolves glare by the id rule (and checks every
    /// candidate pair at once, see [`PeerConfig::remote_paces_checks`]).
    fn encode(&self, channel: &str, message: &HubMessage) -> Bytes {
        let mut value = match &self.options.keypair {
            Some(keypair) => seal(keypair, &self.app, channel, message),
            None => {
                let mut value = message.to_value();
                if let Value::Object(object) = &mut value {
                    object.insert(GLARE_RULE_KEY.into(), Value::String(GLARE_RULE.into()));
                }
                value
            }
        };
        if let Some(wrap) = &self.options.wrap {
            value = wrap(value, channel);
        }
        Bytes::from(value.to_string())
    }

    /// Reads a message received on `channel`: unwrapped, then opened when signing. Also says
    /// whether the sender resolves glare by the id rule (signed senders all do: JS cannot sign).
    fn decode(&self, channel: &str, value: Value) -> Option<(HubMessage, bool)> {
        let value = match &self.options.unwrap {
            Some(unwrap) => unwrap(value, channel)?,
            None => value,
        };
        let parsed = match &self.options.keypair {
            Some(_) => open_sealed(&value, &self.app, channel).map(|m| (m, true)),
            None => HubMessage::parse(&value).map(|m| {
                (
                    m,
                    value.get(GLARE_RULE_KEY).and_then(Value::as_str) == Some(GLARE_RULE),
                )
            }),
        };
        match parsed {
            Ok(message) => Some(message),
            Err(error) => {
                debug!(channel, %error, "dropping a hub message");
                None
            }
        }
    }

    fn announce(&mut self) {
        let body = self.encode(
            "all",
            &HubMessage::Announce {
                from: self.id.clone(),
            },
        );
        let client = self.client.clone();
        let ready = self.ready.clone();
        self.tasks.spawn(async move {
            match client.broadcast_raw("all", body.to_vec()).await {
                Ok(_) => {
                    if !ready.send_replace(true) {
                        debug!("announced: the swarm is ready");
                    }
                }
                Err(error) => debug!(%error, "announce not posted"),
            }
        });
    }

    async fn on_all(&mut self, value: Value) {
        let Some((HubMessage::Announce { from }, of_this_crate)) = self.decode("all", value) else {
            return;
        };
        if from == self.id || self.remotes.contains_key(&from) {
            return;
        }
        if self.connected_count() >= self.options.max_peers {
            debug!(%from, "full: not offering");
            return;
        }
        debug!(%from, "heard an announce; offering");
        self.start_peer(from, None, of_this_crate).await;
    }

    async fn on_inbox(&mut self, value: Value) {
        let channel = self.id.clone();
        let Some((HubMessage::Signal { from, signal }, resolves_glare)) =
            self.decode(&channel, value)
        else {
            return;
        };
        if from == self.id {
            return;
        }
        let Some(remote) = self.remotes.get_mut(&from) else {
            if !matches!(signal, Signal::Offer { .. }) {
                debug!(%from, "skipping a non-offer from an unknown peer");
                return;
            }
            if self.connected_count() >= self.options.max_peers {
                debug!(%from, "full: refusing an offer");
                return;
            }
            self.start_peer(from, Some(signal), resolves_glare).await;
            return;
        };
        match &signal {
            Signal::Abandon if !remote.connected => {
                debug!(%from, "the remote abandoned our handshake; so do we");
                if let Some(remote) = self.remotes.remove(&from) {
                    self.forget(&from, &remote, CloseReason::Local);
                    tokio::spawn(async move { remote.peer.close().await });
                }
            }
            Signal::Abandon => {
                debug!(%from, "ignoring an abandon for a connection that is up");
            }
            Signal::Offer { sdp } if remote.peer.is_initiator() => {
                let ours_is_fresh = !remote.connected
                    && !remote.peer.has_remote_description().await
                    && remote.started.elapsed() < GLARE_WINDOW;
                if remote.js_glare.as_ref() == Some(sdp) {
                    return; // a copy, from another hub, of the offer that crossed ours
                }
                if ours_is_fresh && !resolves_glare && remote.js_glare.is_none() {
                    // A JS webrtc-swarm initiator takes our offer one of two ways. In Node
                    // (@roamhq/wrtc), setRemoteDescription fails in have-local-offer and it
                    // destroys its attempt; Chromium rolls its own offer back (implicit rollback)
                    // and answers ours. So ours is kept, for a browser's answer, and we announce
                    // again soon, for the offer a Node peer with no attempt left then sends
                    // (answered in place of ours, below, even after an answer: a Node
                    // simple-peer that took our offer before its own was set answers it, then
                    // fails on its own and destroys the connection). Dropping ours left a browser's answer
                    // with nobody to take it: ~30 s until its ICE failed, or a renegotiation
                    // 3–5 s later on its next announce.
                    // Its candidates are kept (held by the peer until the answer): a browser
                    // that rolls back answers on the transport it gathered for its own offer,
                    // and may not send those candidates again (a stray one only fails its own
                    // checks).
                    debug!(%from, "glare with a peer without the id rule: keeping our offer for its answer");
                    remote.js_glare = Some(sdp.clone());
                    self.announce_soon = true;
                    return;
                }
                if ours_is_fresh && remote.js_glare.is_none() && self.id > from {
                    debug!(%from, "glare: keeping our offer, ignoring theirs");
                    remote.dropping_candidates = true;
                    return;
                }
                if remote.started.elapsed() < GLARE_WINDOW
                    && remote.js_glare.is_none()
                    && remote.peer.has_remote_description().await
                {
                    // They answered our offer: this offer of theirs is the other half of a glare,
                    // sent before ours reached them and delivered late (their two POSTs can
                    // cross). Answering it would tear down the connection they just accepted.
                    // (Its candidates are not dropped: they cannot be told from those of the
                    // answer, and a stray one only fails its own connectivity checks.)
                    debug!(%from, "ignoring a late offer from a glare they resolved by answering ours");
                    if !resolves_glare {
                        // A browser's simple-peer that answered ours (its own offer rolled back)
                        // talks only on the channel it made for its own offer.
                        remote.peer.expect_remote_channel();
                    }
                    return;
                }
                debug!(%from, "glare or restart: answering their offer instead");
                self.replace_with_answerer(from, signal, resolves_glare)
                    .await;
            }
            Signal::Offer { sdp } => {
                if remote.peer.remote_description_is(sdp).await {
                    return; // a copy from another hub
                }
                debug!(%from, "a new offer: the peer started over");
                self.replace_with_answerer(from, signal, resolves_glare)
                    .await;
            }
            Signal::Candidate(_) if remote.dropping_candidates => {
                debug!(%from, "dropping a candidate of an abandoned offer");
            }
            _ => {
                if let Signal::Answer { sdp } = &signal {
                    remote.dropping_candidates = false;
                    if remote.js_glare.is_some() {
                        // A browser that rolled its offer back talks only on the channel it
                        // made for that offer (see the late-offer case above).
                        remote.peer.expect_remote_channel();
                        if !sdp.contains("a=candidate:") {
                            remote.glare_answered = Some(Instant::now());
                        }
                    }
                } else if matches!(signal, Signal::Candidate(_)) {
                    remote.glare_answered = None;
                }
                if let Err(error) = remote.peer.signal(signal).await {
                    // A stray answer from an older attempt must not kill a good connection.
                    debug!(%from, %error, "ignoring a signal");
                }
            }
        }
    }

    async fn replace_with_answerer(&mut self, from: String, offer: Signal, of_this_crate: bool) {
        if let Some(old) = self.remotes.remove(&from) {
            self.forget(&from, &old, CloseReason::Local);
            tokio::spawn(async move { old.peer.close().await });
        }
        self.start_peer(from, Some(offer), of_this_crate).await;
    }

    /// Creates a peer for `id`: an initiator, or an answerer of `offer`. `of_this_crate`: the
    /// remote's messages carry the rule key (it checks candidate pairs without pacing).
    async fn start_peer(&mut self, id: String, offer: Option<Signal>, of_this_crate: bool) {
        let config = PeerConfig {
            initiator: offer.is_none(),
            ice_servers: self
                .options
                .ice_servers
                .iter()
                .chain(&self.hub_ice_servers)
                .cloned()
                .collect(),
            udp_addrs: self.options.udp_addrs.clone(),
            resolve_mdns: self.options.resolve_mdns,
            keepalive: self.options.keepalive,
            remote_paces_checks: !of_this_crate,
            relay_pace: self.options.relay_pace,
        };
        let peer = match Peer::new(config).await {
            Ok(peer) => Arc::new(peer),
            Err(error) => {
                warn!(%id, %error, "cannot create a peer");
                return;
            }
        };
        if let Some(offer) = offer {
            if let Err(error) = peer.signal(offer).await {
                debug!(%id, %error, "refusing an offer");
                peer.close().await;
                return;
            }
        }
        self.generation += 1;
        let generation = self.generation;

        // The pump: the peer's events, tagged, into the loop. Ends after `Closed`.
        let notices = self.notices_tx.clone();
        let pump_peer = peer.clone();
        let pump_id = id.clone();
        self.tasks.spawn(async move {
            while let Some(event) = pump_peer.next_event().await {
                let last = matches!(event, PeerEvent::Closed(_));
                let notice = Notice {
                    id: pump_id.clone(),
                    generation,
                    event,
                };
                if notices.send(notice).is_err() || last {
                    break;
                }
            }
        });

        self.ensure_outbox(&id);

        self.remotes.insert(
            id,
            Remote {
                generation,
                peer,
                connected: false,
                started: Instant::now(),
                dropping_candidates: false,
                js_glare: None,
                glare_answered: None,
                of_this_crate,
            },
        );
    }

    fn on_notice(&mut self, notice: Notice) {
        let Notice {
            id,
            generation,
            event,
        } = notice;
        let current = self
            .remotes
            .get(&id)
            .is_some_and(|remote| remote.generation == generation);
        if !current {
            return; // from a peer already replaced or dropped
        }
        match event {
            PeerEvent::Signal(signal) => self.post_signal(&id, signal),
            PeerEvent::Connected => {
                let Some(remote) = self.remotes.get_mut(&id) else {
                    return;
                };
                remote.connected = true;
                info!(peer = %id, initiator = remote.peer.is_initiator(), "peer connected");
                let peer = SwarmPeer {
                    id: Arc::from(id.as_str()),
                    peer: remote.peer.clone(),
                };
                self.publish_peers();
                let _ = self.events.send(SwarmEvent::Connected { id, peer });
            }
            PeerEvent::Closed(reason) => {
                if let Some(remote) = self.remotes.remove(&id) {
                    self.forget(&id, &remote, reason);
                }
            }
        }
    }

    /// Queues `signal` for `id`'s outbox (POSTed in order).
    fn post_signal(&mut self, id: &str, signal: Signal) {
        if !signal.is_sendable() {
            return;
        }
        let body = self.encode(
            id,
            &HubMessage::Signal {
                from: self.id.clone(),
                signal,
            },
        );
        if let Some(outbox) = self.outboxes.get(id) {
            outbox
                .pending
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let _ = outbox.queue.send(body);
        }
    }

    /// Reports a removed remote as disconnected if it was connected, or if its handshake found
    /// no path.
    fn forget(&mut self, id: &str, remote: &Remote, reason: CloseReason) {
        if !remote.connected && reason == CloseReason::IceFailed {
            warn!(peer = %id, "ICE failed: no path to the peer");
            let _ = self.events.send(SwarmEvent::Disconnected {
                id: id.to_string(),
                reason,
            });
        } else if remote.connected {
            info!(peer = %id, ?reason, "peer disconnected");
            self.publish_peers();
            let _ = self.events.send(SwarmEvent::Disconnected {
                id: id.to_string(),
                reason,
            });
        } else {
            debug!(peer = %id, ?reason, "handshake ended");
        }
    }

    /// Starts the outbox task of `id` unless it runs already: its signals, POSTed one at a time.
    fn ensure_outbox(&mut self, id: &str) {
        if self.outboxes.contains_key(id) {
            return;
        }
        let (queue, mut bodies) = mpsc::unbounded_channel::<Bytes>();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = self.client.clone();
        let to = id.to_string();
        let left = pending.clone();
        self.tasks.spawn(async move {
            while let Some(body) = bodies.recv().await {
                if let Err(error) = client.broadcast_raw(&to, body.to_vec()).await {
                    debug!(%to, %error, "signal not posted");
                }
                left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        });
        self.outboxes
            .insert(id.to_string(), Outbox { queue, pending });
    }

    fn drop_stalled(&mut self) {
        // Outboxes of ids that are gone, once they have posted everything.
        let remotes = &self.remotes;
        self.outboxes.retain(|id, outbox| {
            remotes.contains_key(id)
                || outbox.pending.load(std::sync::atomic::Ordering::Acquire) > 0
        });

        // A browser's answer after a glare that brings no candidate: its ICE never starts (see
        // GLARE_ANSWER_CANDIDATES_WAIT). It is asked to drop its attempt, and our announce then
        // brings a fresh offer from it.
        let candidateless: Vec<String> = self
            .remotes
            .iter()
            .filter(|(_, r)| {
                !r.connected
                    && r.glare_answered
                        .is_some_and(|at| at.elapsed() > GLARE_ANSWER_CANDIDATES_WAIT)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in candidateless {
            if let Some(remote) = self.remotes.remove(&id) {
                info!(
                    peer = %id,
                    "the browser answered without candidates after a glare; asking it to start over"
                );
                self.post_signal(&id, Signal::Abandon);
                self.announce_soon = true;
                tokio::spawn(async move { remote.peer.close().await });
            }
        }

        let timeout = self.options.handshake_timeout;
        let stalled: Vec<String> = self
            .remotes
            .iter()
            .filter(|(_, r)| !r.connected && r.started.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stalled {
            if let Some(remote) = self.remotes.remove(&id) {
                if remote.peer.is_ice_checking() {
                    // Signalling worked (ICE had both descriptions and candidates to check) but
                    // no pair answered: behind NATs that STUN cannot cross, with no usable TURN
                    // server. Left alone, ICE would call it failed only after 30 s.
                    warn!(peer = %id, ?timeout, "ICE failed: no candidate pair answered");
                    let _ = self.events.send(SwarmEvent::Disconnected {
                        id: id.clone(),
                        reason: CloseReason::IceFailed,
                    });
                } else {
                    info!(peer = %id, ?timeout, "handshake stalled; abandoning it");
                }
                if !remote.of_this_crate {
                    // webrtc-swarm keeps its side of a failed attempt for good, and ignores our
                    // announces (and renegotiates that attempt on our next offer) until it drops
                    // it: this makes it drop it, and our announce, soon, brings its fresh offer.
                    self.post_signal(&id, Signal::Abandon);
                    self.announce_soon = true;
                }
                tokio::spawn(async move { remote.peer.close().await });
            }
        }
    }

    fn publish_peers(&self) {
        let peers = self
            .remotes
            .iter()
            .filter(|(_, r)| r.connected)
            .map(|(id, r)| SwarmPeer {
                id: Arc::from(id.as_str()),
                peer: r.peer.clone(),
            })
            .collect();
        self.peers.send_replace(peers);
    }
}

/// A new swarm id like webrtc-swarm's cuid: `c`, the time in ms in base 36 (8 characters), then
/// 16 random base-36 characters; 25 lowercase `[a-z0-9]` characters in all.
pub fn new_id() -> Result<String, SwarmError> {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(25);
    id.push('c');
    let mut millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut time = [b'0'; 8];
    for slot in time.iter_mut().rev() {
        *slot = DIGITS[(millis % 36) as usize];
        millis /= 36;
    }
    id.extend(time.iter().map(|&c| c as char));
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| SwarmError::Random(e.to_string()))?;
    // 256 is not a multiple of 36, so four digits come up 8/7 as often as the rest: harmless
    // for an id that only has to be unique.
    id.extend(random.iter().map(|&b| DIGITS[usize::from(b) % 36] as char));
    Ok(id)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_cuids() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 25);
        assert!(a.starts_with('c'));
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }
}
