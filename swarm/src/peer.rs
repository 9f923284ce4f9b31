//! One WebRTC peer connection carrying one data channel, as simple-peer 6.x makes them for
//! webrtc-swarm: the only file that touches the WebRTC engine (`webrtc` 0.21, on the sans-I/O
//! `rtc` core), so the engine can be swapped without touching the swarm.
//!
//! A [`Peer`] is built as initiator or answerer. The initiator creates exactly one in-band
//! (DCEP), ordered, reliable data channel labelled with 40 random hex characters, then the offer;
//! the answerer adopts the channel that arrives (spec §5.4). Signalling is trickle ICE:
//! everything the peer wants to send to the other side comes out of [`Peer::next_event`] as
//! [`PeerEvent::Signal`], and whatever the other side sent goes in through [`Peer::signal`].
//! Remote candidates that arrive before the remote description are held back until it is set.
//! [`PeerEvent::Connected`] means the data channel is open; [`PeerEvent::Closed`] is the last
//! event. Messages are whole data-channel messages, text or binary as on the wire
//! ([`Peer::send`] binary, [`Peer::send_text`] text; [`Peer::recv_message`] says which kind
//! arrived, [`Peer::recv`] gives either as bytes). [`Peer::selected_path`] tells which candidate
//! pair ICE chose (host, server-reflexive, peer-reflexive or relay, both ends), its RTT and the
//! bytes it carried.
//!
//! Across NATs (tested in a lab of network namespaces, `swarm/tests/nat.rs`): STUN and TURN over
//! UDP work; TURN over TCP or TLS does not exist in webrtc 0.21 (such URLs are left out, see
//! [`unsupported_ice_urls`]); with ICE servers set, loopback is neither offered nor used (see
//! [`PeerConfig::udp_addrs`]); a failed ICE ends in [`CloseReason::IceFailed`].
//!
//! The peer needs a Tokio runtime: the engine spawns its driver task on the current one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::transport::{RTCDtlsRole, RTCIceRole};
use tokio::sync::{mpsc, Mutex, Notify};
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceConnectionState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, RTCStatsReportEntry,
    SettingEngineBuilder, StatsSelector,
};

use crate::signal::{IceCandidate, Signal};

mod check_gate;
mod sockets;

use check_gate::{candidate_ip, CheckGate};
use sockets::{PeerRuntime, ReadNudge};

/// How many received messages wait for [`Peer::recv`] before the data channel stops reading
/// (and SCTP flow control slows the sender down).
const RECEIVE_QUEUE: usize = 256;

/// Unacknowledged bytes a data channel may hold before [`Peer::send`] waits.
const SEND_BUFFER_LIMIT: usize = 1024 * 1024;

/// The default [`PeerConfig::keepalive`]: rtc-ice's own, and about libwebrtc's (2.5 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(2);

/// The engine's tick while ICE is checking (a second or so per connection): a trickled
/// candidate is first checked on the next tick (webrtc 0.21's `add_ice_candidate` does not wake
/// its driver for it).
const CHECK_TICK: Duration = Duration::from_millis(5);

/// How long ICE keeps trying one candidate pair, whatever the tick (webrtc's default: 7 checks
/// 200 ms apart).
const ICE_CHECK_SPAN: Duration = Duration::from_millis(1400);

/// How long after ICE starts checking the controlling side may nominate a pair whose end is a
/// server-reflexive or peer-reflexive candidate (and, for the engine, a relay one: see
/// [`RELAY_WAIT`]). rtc-ice 0.21's defaults (500 ms, 1 s, 2 s) hold every such pair back that
/// long even when it is the only one that works, in case a better one succeeds meanwhile:
/// through symmetric NATs every connection took 2.1 s, and a connection whose first check came
/// before the other side's candidate (a peer-reflexive pair) 1 s more. Host pairs still win
/// when they work: they are checked first and succeed within milliseconds.
const SRFLX_WAIT: Duration = Duration::from_millis(100);
const PRFLX_WAIT: Duration = Duration::from_millis(100);
/// The engine's own wait for relay pairs: no shorter than for server-reflexive ones. How long
/// the relay really waits is the offerer's check gate's call (see [`RELAY_WAIT`]).
const ENGINE_RELAY_WAIT: Duration = SRFLX_WAIT;
/// The longest the offerer holds relay pairs back after its first check, in case a direct
/// pair works (its check gate holds them, see `peer/check_gate.rs`, "Relay hold"; against a
/// peer of this crate it lets them through sooner once the remote's checks come only through
/// our relay). 700 ms: libwebrtc (Node's wrtc, browsers) paces its checks, and behind a cone
/// NAT the direct pair works only once the remote's own check has opened its NAT. It came ~1 s
/// in while our host candidates were advertised first; since the offerer advertises them below
/// its server-reflexive one (`checked_first_by_the_remote`), Node's comes within ~200 ms, but
/// Chromium's still after 400 ms in some tries (253–424 ms in a third of the runs measured in
/// 2026-12): with a 400 ms wait a Rust offerer relayed to a Chromium page across cone NATs in 2
/// runs of 6 of `nat::rust_and_chromium_behind_cone_nats_connect_directly` (300 ms: 2 of 5),
/// with 600 and 700 ms in none of 8 (the NAT tests assert the direct path, against Rust, Node
/// and Chromium).
///
/// A peer of this crate checks every pair every 5 ms (rtc-ice), so when the remote is one
/// ([`PeerConfig::remote_paces_checks`] false) its check of the direct pair comes within a
/// round trip, and the relay waits at most [`PROMPT_RELAY_WAIT`] instead. And once two STUN
/// servers saw one of our sockets at two addresses (our NAT maps per destination), the relay
/// waits only for our own direct checks' round trips, whoever the remote is (the gate's "Relay
/// hold").
const RELAY_WAIT: Duration = Duration::from_millis(700);
/// The relay's longest wait against a remote that does not pace its checks (see
/// [`RELAY_WAIT`]).
const PROMPT_RELAY_WAIT: Duration = Duration::from_millis(300);

/// How often [`nudge_handshake`] wakes the engine's driver: every millisecond for the first
/// [`NUDGE_SPAN`] after ICE connects (a handshake takes a few round trips), then every
/// [`SLOW_NUDGE_INTERVAL`] until the channel opens.
const NUDGE_INTERVAL: Duration = Duration::from_millis(1);
const NUDGE_SPAN: Duration = Duration::from_secs(2);
const SLOW_NUDGE_INTERVAL: Duration = Duration::from_millis(25);

/// How often [`keep_relayed_writes_moving`] wakes the engine's driver on a connection through
/// our own relay candidate.
const RELAY_NUDGE_INTERVAL: Duration = Duration::from_millis(1);

/// How long an answer waits, at most, for the engine to report its host candidates, which it
/// then carries (see [`Peer::signal`]'s offer case). They come a millisecond or so after the
/// answer is applied.
const ANSWER_CANDIDATES_WAIT: Duration = Duration::from_millis(20);

/// How long [`Peer::close`] waits for the data channel's closing handshake, which is what lets
/// the other side notice at once, before it tears the connection down anyway.
const CHANNEL_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long an initiator told to expect the remote's own data channel
/// ([`Peer::expect_remote_channel`]) waits for it once its own channel is open, before it takes
/// its own. The remote opens its channel as soon as the association is up, so it comes within
/// about one round trip.
pub const REMOTE_CHANNEL_WAIT: Duration = Duration::from_secs(2);

/// Values of `Shared::ice_progress`.
const ICE_NEW: u8 = 0;
const ICE_CHECKING: u8 = 1;
const ICE_CONNECTED: u8 = 2;

/// Whether the engine can use this ICE server URL. webrtc 0.21 gathers TURN only over UDP:
/// `turns:` and `turn:…?transport=tcp` are skipped with a warning in its
/// `peer_connection/transport/turn_relayer.rs` (`RTCTurnRelayer::gather`: "Skipping unsupported
/// secure TURN url", "Skipping unsupported non-UDP TURN url"); STUN is UDP only.
fn ice_url_is_supported(url: &str) -> bool {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once(':').unwrap_or((lower.as_str(), ""));
    let transport = rest
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("transport="));
    match scheme {
        "stun" | "turn" => transport.is_none_or(|transport| transport == "udp"),
        _ => false,
    }
}

/// The URLs of `servers` that webrtc 0.21 cannot use and a peer therefore leaves out: TURN over
/// TCP or TLS (`turn:…?transport=tcp`, `turns:`), and anything that is not `stun:` or `turn:`.
/// A peer whose only way out is one of these (UDP blocked) cannot connect; its handshakes fail
/// with [`CloseReason::IceFailed`].
pub fn unsupported_ice_urls(servers: &[IceServer]) -> Vec<String> {
    servers
        .iter()
        .flat_map(|server| server.urls.iter())
        .filter(|url| !ice_url_is_supported(url))
        .cloned()
        .collect()
}

/// A STUN or TURN server, as in `RTCIceServer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, …
    pub urls: Vec<String>,
    /// TURN only.
    pub username: String,
    /// TURN only.
    pub credential: String,
}

/// How to build a [`Peer`].
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Whether this side creates the data channel and sends the offer. In webrtc-swarm the peer
    /// that hears an announcement is the initiator.
    pub initiator: bool,
    /// STUN/TURN servers; empty means host candidates only.
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to gather host candidates on. A wildcard (`0.0.0.0:0`) stands for
    /// every non-loopback interface, so loopback must be listed on its own; port 0 picks a free
    /// port. Unspecified addresses are never advertised.
    ///
    /// With STUN or TURN servers (a peer set up for the internet) loopback addresses are left
    /// out, unless nothing else is listed, and the other side's loopback candidates are not
    /// used: from a loopback socket nothing but loopback is reachable (the engine's checks to
    /// every other address failed with EINVAL, an error logged per check), and a TURN server
    /// refuses to relay to loopback (`403 Forbidden IP`, which webrtc 0.21 asks again on every
    /// check, an error logged each time). Peers on one machine still meet through its
    /// interface addresses.
    pub udp_addrs: Vec<SocketAddr>,
    /// Resolve remote mDNS (`*.local`) host candidates, as browsers send them. Off by default:
    /// it opens a multicast socket. Local candidates always carry plain IP addresses.
    pub resolve_mdns: bool,
    /// How often a connected peer sends a STUN binding request on its path ([`DEFAULT_KEEPALIVE`],
    /// 2 s): ICE's keepalive and consent freshness (RFC 7675), one request and its answer, about
    /// 200 bytes. Anything received, these or data, keeps the connection alive; nothing for 5 s
    /// ends it ([`CloseReason::Disconnected`]), so a keepalive over ~2 s risks cutting a quiet
    /// connection over one lost packet. The handshake does not wait for this timer: ICE checks
    /// every 5 ms while it checks, and the peer wakes the engine itself for the rest (see
    /// `nudge_handshake`). Until 2026-12 this was the engine's 25 ms tick, 40 requests a second
    /// per idle peer (8 KB/s), which the handshake needed then.
    pub keepalive: Duration,
    /// Whether the remote may pace its connectivity checks, as libwebrtc does (browsers, Node's
    /// wrtc): then a controlling peer holds a relay pair back 700 ms, time for the remote's
    /// check of a direct pair to open its NAT. `false` for a peer of this crate, which checks
    /// every pair at once: the relay then waits up to 300 ms, less once the remote's checks
    /// come only through our relay (see `peer/check_gate.rs`; a swarm knows such peers by the
    /// rule key in their announces and signals). Default `true`.
    pub remote_paces_checks: bool,
    /// How many datagrams a millisecond each of the peer's sockets may send through a TURN
    /// server, in bursts of as many; `None` sends them unpaced. Default [`DEFAULT_RELAY_PACE`]
    /// (24, ~29 MB/s of 1.2 KB datagrams). webrtc-rs's SCTP sends its whole congestion window
    /// at once, and a TURN server reading its sockets from one thread drops such bursts: in the
    /// NAT lab relayed throughput went from ~2.5 to ~19.5 MB/s with the default, and moved
    /// between 10 and 34 MB/s at 32 and 40, with losses at coturn again. A TURN host with
    /// bigger socket buffers (`net.core.rmem_max`) or more relay threads may take more.
    pub relay_pace: Option<NonZeroU32>,
}

/// The default [`PeerConfig::relay_pace`]: 24 datagrams a millisecond through a relay.
pub const DEFAULT_RELAY_PACE: Option<NonZeroU32> = NonZeroU32::new(24);

impl Default for PeerConfig {
    /// An answerer with no ICE servers, on every interface plus loopback, without mDNS.
    fn default() -> Self {
        PeerConfig {
            initiator: false,
            ice_servers: Vec::new(),
            udp_addrs: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            ],
            resolve_mdns: false,
            keepalive: DEFAULT_KEEPALIVE,
            remote_paces_checks: true,
            relay_pace: DEFAULT_RELAY_PACE,
        }
    }
}

/// What a [`Peer`] reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A signal to deliver to the other side (offer, answer or trickled candidate), in the order
    /// they come.
    Signal(Signal),
    /// The data channel is open: [`Peer::send`] works from now on.
    Connected,
    /// The peer is gone, for this reason. The last event.
    Closed(CloseReason),
}

/// One received data-channel message, of the kind it was sent as: a text message (a string in
/// JS: `channel.send("…")`, simple-peer's `peer.send("…")`) or a binary one (an `ArrayBuffer`,
/// typed array or `Buffer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// A text message. A text message that is not valid UTF-8 arrives as
    /// [`PeerMessage::Binary`] instead (browsers and Node send only valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl PeerMessage {
    /// Whether it was sent as text.
    pub fn is_text(&self) -> bool {
        matches!(self, PeerMessage::Text(_))
    }

    /// The message's bytes (a text message's UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            PeerMessage::Text(text) => text.as_bytes(),
            PeerMessage::Binary(bytes) => bytes,
        }
    }

    /// The message's bytes, whatever its kind.
    pub fn into_bytes(self) -> Bytes {
        match self {
            PeerMessage::Text(text) => Bytes::from(text),
            PeerMessage::Binary(bytes) => bytes,
        }
    }

    /// Builds a message from what the engine delivered.
    fn from_wire(is_string: bool, data: Bytes) -> PeerMessage {
        if !is_string {
            return PeerMessage::Binary(data);
        }
        match String::from_utf8(data.to_vec()) {
            Ok(text) => PeerMessage::Text(text),
            Err(_) => {
                debug!("a text message that is not UTF-8; handing it out as binary");
                PeerMessage::Binary(data)
            }
        }
    }
}

/// Why a [`Peer`] closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Peer::close`] was called, or the peer was dropped.
    Local,
    /// The data channel closed (usually the other side closed it).
    ChannelClosed,
    /// ICE lost the other side (no traffic for a few seconds). simple-peer gives up here too.
    Disconnected,
    /// ICE found no working path to the other side: every candidate pair was checked without an
    /// answer (for example both sides behind symmetric NATs with no TURN server, or UDP blocked
    /// and no relay reachable). Reported by the engine, or by the swarm when a handshake whose
    /// connectivity checks had started does not connect in time.
    IceFailed,
    /// DTLS failed, or the engine closed the connection.
    Failed,
}

/// How a candidate was found (RFC 8445 §5.1.1; `candidateType` in WebRTC stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of a local interface.
    Host,
    /// The address a NAT gave us, as a STUN server saw it.
    ServerReflexive,
    /// An address learnt from a connectivity check that came from it.
    PeerReflexive,
    /// An address on a TURN server, relaying for us.
    Relay,
}

impl CandidateKind {
    /// The short name WebRTC uses (`host`, `srflx`, `prflx`, `relay`).
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Host => "host",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::Relay => "relay",
        }
    }
}

impl std::fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One end of the path a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEnd {
    pub kind: CandidateKind,
    /// The candidate's address (for a relay candidate, the address on the TURN server). `None`
    /// when the engine does not report it.
    pub address: Option<SocketAddr>,
    /// `udp` or `tcp` (empty when unknown).
    pub protocol: String,
}

/// The candidate pair ICE selected for a connection, and what went over it so far.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedPath {
    pub local: PathEnd,
    pub remote: PathEnd,
    /// The latest round-trip time of a connectivity check on this pair, if one was measured.
    pub rtt: Option<Duration>,
    /// Bytes sent and received on this pair (every packet: STUN, DTLS, SCTP).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Whether this side's ICE agent is the controlling one, which chose (nominated) the pair.
    /// The offerer starts controlling; only an ICE role conflict changes that.
    pub controlling: bool,
    /// Whether this side's NAT maps per destination ("symmetric"): two STUN servers saw one of
    /// its sockets at two different addresses, so what STUN learns is of no use to a remote,
    /// and only a relay reaches a remote behind a NAT that filters. `false` also when it could
    /// not be told: fewer than two STUN servers answered (configure two, at different
    /// addresses, to know).
    pub nat_maps_per_destination: bool,
}

impl SelectedPath {
    /// Whether a TURN server carries the traffic (either end is a relay candidate).
    pub fn is_relayed(&self) -> bool {
        self.local.kind == CandidateKind::Relay || self.remote.kind == CandidateKind::Relay
    }
}

/// Why a [`Peer`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The WebRTC engine failed at `op`.
    #[error("WebRTC engine failed to {op}: {message}")]
    Engine { op: &'static str, message: String },
    /// The remote session description was rejected.
    #[error("the remote {kind} was rejected: {message}")]
    BadDescription { kind: &'static str, message: String },
    /// A signal that does not fit this peer's state, e.g. an offer to an initiator (glare: both
    /// sides offered) or a second, different answer.
    #[error("unexpected {signal}: {why}")]
    UnexpectedSignal {
        signal: &'static str,
        why: &'static str,
    },
    /// The data channel is not open yet.
    #[error("the data channel is not open yet")]
    NotConnected,
    /// The peer is closed.
    #[error("the peer is closed")]
    Closed,
}

impl PeerError {
    fn engine(op: &'static str) -> impl FnOnce(webrtc::error::Error) -> PeerError {
        move |error| PeerError::Engine {
            op,
            message: error.to_string(),
        }
    }

    fn bad(kind: &'static str) -> impl FnOnce(webrtc::error::Error) -> PeerError {
        move |error| PeerError::BadDescription {
            kind,
            message: error.to_string(),
        }
    }
}

/// One WebRTC peer connection with one data channel. See the module docs.
///
/// Every method takes `&self`, so one task can `select!` over [`Peer::next_event`],
/// [`Peer::recv`] and the hub at once (both are cancel-safe).
pub struct Peer {
    /// Whether the other side's loopback candidates are left out (see
    /// [`PeerConfig::udp_addrs`]).
    skip_remote_loopback: bool,
    /// How many host candidates the engine will report (one per local socket that is not on
    /// an unspecified address): what an answer waits for (see [`ANSWER_CANDIDATES_WAIT`]).
    host_candidates: usize,
    shared: Arc<Shared>,
    negotiation: Mutex<Negotiation>,
    events: Mutex<mpsc::UnboundedReceiver<PeerEvent>>,
    messages: Mutex<mpsc::Receiver<PeerMessage>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("initiator", &self.is_initiator())
            .field("label", &self.label())
            .field("connected", &self.is_connected())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A closed peer's connection and channel, still to be closed in the engine.
type ToClose = (Arc<dyn PeerConnection>, Option<Arc<dyn DataChannel>>);

/// What the engine's event handler, the channel reader and the [`Peer`] share.
struct Shared {
    /// Taken (set to `None`) when the peer closes, which also ends the handler ↔ connection
    /// reference cycle.
    connection: StdMutex<Option<Arc<dyn PeerConnection>>>,
    /// Dropped after the `Closed` event, so [`Peer::next_event`] then returns `None`.
    events: StdMutex<Option<mpsc::UnboundedSender<PeerEvent>>>,
    /// Given to the channel reader when the channel is adopted; dropped on close otherwise.
    messages: StdMutex<Option<mpsc::Sender<PeerMessage>>>,
    channel: OnceLock<Arc<dyn DataChannel>>,
    label: OnceLock<String>,
    /// The media id of the data section, for outgoing candidates (`sdpMid`).
    mid: StdMutex<String>,
    connected: AtomicBool,
    closed: AtomicBool,
    /// The furthest ICE got: [`ICE_NEW`], [`ICE_CHECKING`] or [`ICE_CONNECTED`].
    ice_progress: AtomicU8,
    /// Signalled when the channel reader stops (the channel closed).
    reader_done: Notify,
    /// Whether the channel reader runs (from adoption until the channel's last message is
    /// queued for [`Peer::recv`]).
    reading: AtomicBool,
    /// Wakes every waiter when the channel reader stops.
    reader_stopped: Notify,
    /// The adopted reader's sender, for the readers of channels the remote opens besides it;
    /// weak so that only that reader keeps [`Peer::recv`] open (see [`Shared::adopt`]).
    extra_messages: StdMutex<Option<mpsc::WeakSender<PeerMessage>>>,
    /// Whether the adopted channel is the one this side created (as the initiator).
    adopted_own: AtomicBool,
    /// The channel to send on when it is not the adopted one (see [`Shared::adopt`]).
    send_channel: OnceLock<Arc<dyn DataChannel>>,
    /// Set by [`Peer::expect_remote_channel`]: `Connected` waits for the remote's own channel.
    expect_remote: AtomicBool,
    /// The remote's own channel (the send channel) has opened; `remote_opened` wakes the wait.
    remote_open: AtomicBool,
    remote_opened: Notify,
    /// Whether [`nudge_handshake`] was started.
    nudging: AtomicBool,
    /// Whether this side offers (and so controls ICE).
    initiator: bool,
    /// Whether host candidates are advertised below server-reflexive ones (see
    /// [`checked_first_by_the_remote`]).
    host_advertised_low: bool,
    /// While the answer is made: the local candidates the engine reported meanwhile, sent after
    /// the answer unless the answer carries them (see [`Peer::signal`]'s offer case).
    held_candidates: StdMutex<Option<Vec<IceCandidate>>>,
    /// Wakes [`Peer::wait_for_host_candidates`] when a candidate is held.
    candidate_reported: Notify,
    /// Told our ICE credentials before each local description is applied.
    check_gate: Arc<CheckGate>,
    /// Runs the engine's read path when a reader that fell behind has caught up.
    read_nudge: Arc<ReadNudge>,
}

#[derive(Default)]
struct Negotiation {
    /// The remote SDP once applied (a repeat of it is a duplicate and ignored).
    remote_sdp: Option<String>,
    /// Remote candidates that came before the remote description.
    pending: Vec<IceCandidate>,
}

impl Peer {
    /// Builds a peer. An initiator creates its data channel and emits its offer right away
    /// (the first [`PeerEvent::Signal`]); an answerer waits for [`Signal::Offer`].
    pub async fn new(config: PeerConfig) -> Result<Peer, PeerError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (messages_tx, messages_rx) = mpsc::channel(RECEIVE_QUEUE);
        let shared = Arc::new(Shared {
            connection: StdMutex::new(None),
            events: StdMutex::new(Some(events_tx)),
            messages: StdMutex::new(Some(messages_tx)),
            channel: OnceLock::new(),
            label: OnceLock::new(),
            mid: StdMutex::new("0".to_string()),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ice_progress: AtomicU8::new(ICE_NEW),
            reader_done: Notify::new(),
            reading: AtomicBool::new(false),
            reader_stopped: Notify::new(),
            extra_messages: StdMutex::new(None),
            adopted_own: AtomicBool::new(false),
            send_channel: OnceLock::new(),
            expect_remote: AtomicBool::new(false),
            remote_open: AtomicBool::new(false),
            remote_opened: Notify::new(),
            nudging: AtomicBool::new(false),
            initiator: config.initiator,
            host_advertised_low: config.initiator || config.remote_paces_checks,
            held_candidates: StdMutex::new(None),
            candidate_reported: Notify::new(),
            check_gate: Arc::new(CheckGate::new(
                config.initiator,
                if config.remote_paces_checks {
                    RELAY_WAIT
                } else {
                    PROMPT_RELAY_WAIT
                },
                !config.remote_paces_checks,
            )),
            read_nudge: Arc::new(ReadNudge::default()),
        });

        let ice_servers: Vec<RTCIceServer> = config
            .ice_servers
            .into_iter()
            .filter_map(|server| {
                // URLs the engine cannot use are left out here (the swarm warns about them once
                // per join, see `unsupported_ice_urls`), so the engine does not warn per peer.
                let urls: Vec<String> = server
                    .urls
                    .into_iter()
                    .filter(|url| ice_url_is_supported(url))
                    .collect();
                (!urls.is_empty()).then_some(RTCIceServer {
                    urls,
                    username: server.username,
                    credential: server.credential,
                })
            })
            .collect();
        let for_internet = !ice_servers.is_empty();
        let mut udp_addrs = config.udp_addrs;
        if for_internet && udp_addrs.iter().any(|a| !a.ip().is_loopback()) {
            udp_addrs.retain(|a| !a.ip().is_loopback());
        }
        let skip_remote_loopback = for_internet && !udp_addrs.iter().any(|a| a.ip().is_loopback());
        let host_candidates = udp_addrs
            .iter()
            .filter(|a| !a.ip().is_unspecified())
            .count();
        let keepalive = config.keepalive.max(Duration::from_millis(1));
        let checks = (ICE_CHECK_SPAN.as_millis() / CHECK_TICK.as_millis()).clamp(7, 1000) as u16;
        let mdns = if config.resolve_mdns {
            MulticastDnsMode::QueryOnly
        } else {
            MulticastDnsMode::Disabled
        };
        let connection = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(ice_servers)
                    .build(),
            )
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(mdns)
                    .with_ice_timeouts(None, None, Some(keepalive))
                    .with_ice_connection_attempts(Some(CHECK_TICK), Some(checks))
                    .with_srflx_acceptance_min_wait(Some(SRFLX_WAIT))
                    .with_prflx_acceptance_min_wait(Some(PRFLX_WAIT))
                    .with_relay_acceptance_min_wait(Some(ENGINE_RELAY_WAIT))
                    // The offerer holds the data channel, so it can wake the engine at each
                    // handshake step (see `nudge_handshake`); as DTLS client it also sends the
                    // SCTP INIT, so every step that waits on the engine is on the side that can
                    // wake it.
                    .with_answering_dtls_role(RTCDtlsRole::Server)
                    .build(),
            )
            .with_runtime(
                PeerRuntime::shared(
                    shared.check_gate.clone(),
                    shared.read_nudge.clone(),
                    config.relay_pace,
                )
                .ok_or_else(|| PeerError::Engine {
                    op: "find the Tokio runtime",
                    message: "no async runtime available".into(),
                })?,
            )
            .with_handler(Arc::new(Handler {
                shared: shared.clone(),
            }))
            .with_udp_addrs(udp_addrs)
            .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
            .build()
            .await
            .map_err(PeerError::engine("build the peer connection"))?;
        let connection: Arc<dyn PeerConnection> = Arc::new(connection);
        *lock(&shared.connection) = Some(connection.clone());

        let peer = Peer {
            skip_remote_loopback,
            host_candidates,
            shared,
            negotiation: Mutex::new(Negotiation::default()),
            events: Mutex::new(events_rx),
            messages: Mutex::new(messages_rx),
        };
        if config.initiator {
            if let Err(error) = peer.start_offer(&connection).await {
                peer.close().await;
                return Err(error);
            }
        }
        Ok(peer)
    }

    async fn start_offer(&self, connection: &Arc<dyn PeerConnection>) -> Result<(), PeerError> {
        let label = random_label()?;
        let channel = connection
            .create_data_channel(&label, Some(RTCDataChannelInit::default()))
            .await
            .map_err(PeerError::engine("create the data channel"))?;
        let _ = self.shared.label.set(label);
        self.shared.adopt(channel, true);

        let offer = connection
            .create_offer(None)
            .await
            .map_err(PeerError::engine("create the offer"))?;
        self.shared.remember_mid(&offer);
        // Queued before the description is applied, hence before any candidate it gathers.
        self.shared.emit(PeerEvent::Signal(Signal::Offer {
            sdp: offer.sdp.clone(),
        }));
        self.shared.check_gate.admit(&offer.sdp);
        connection
            .set_local_description(offer)
            .await
            .map_err(PeerError::engine("apply the local offer"))
    }

    /// Waits until the engine has reported [`Peer::host_candidates`] local candidates while
    /// they are held for the answer, or [`ANSWER_CANDIDATES_WAIT`] has passed.
    async fn wait_for_host_candidates(&self) {
        let deadline = tokio::time::Instant::now() + ANSWER_CANDIDATES_WAIT;
        loop {
            let reported = self.shared.candidate_reported.notified();
            tokio::pin!(reported);
            reported.as_mut().enable();
            let held = lock(&self.shared.held_candidates)
                .as_ref()
                .map_or(0, Vec::len);
            if held >= self.host_candidates {
                return;
            }
            if tokio::time::timeout_at(deadline, reported).await.is_err() {
                debug!(
                    held,
                    wanted = self.host_candidates,
                    "answering before every host candidate"
                );
                return;
            }
        }
    }

    /// Tells an initiator that the remote is a simple-peer 6.x initiator that took our offer in
    /// a glare (the swarm knows: it got the remote's own offer): it will open a data channel of
    /// its own and read only that one (see `Shared::adopt`). [`PeerEvent::Connected`] then
    /// waits until that channel is open (at most [`REMOTE_CHANNEL_WAIT`] after ours), so that
    /// nothing is sent on ours, which the remote never reads. Too late once `Connected` came.
    pub fn expect_remote_channel(&self) {
        if self.shared.initiator && !self.shared.expect_remote.swap(true, Ordering::AcqRel) {
            debug!("expecting the remote's own data channel");
        }
    }

    /// Whether this side offers.
    pub fn is_initiator(&self) -> bool {
        self.shared.initiator
    }

    /// The data channel's label: known at once on the initiator, once the channel arrives on
    /// the answerer.
    pub fn label(&self) -> Option<&str> {
        self.shared.label.get().map(String::as_str)
    }

    /// Whether the data channel is open and the peer not closed.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire) && !self.is_closed()
    }

    /// Whether the peer is closed (locally or by the other side).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether ICE started its connectivity checks (both descriptions and some remote candidate
    /// were in) without having connected yet: a handshake that stalls in this state failed for
    /// want of a path, not for want of signals.
    pub fn is_ice_checking(&self) -> bool {
        self.shared.ice_progress.load(Ordering::Acquire) == ICE_CHECKING
    }

    /// The candidate pair ICE selected and what went over it, from the engine's statistics;
    /// `None` before ICE has selected a pair, or once the peer is closed.
    pub async fn selected_path(&self) -> Option<SelectedPath> {
        let mut path = selected_path_of(&self.shared.connection()?).await?;
        path.nat_maps_per_destination = self.shared.check_gate.own_mapping_varies();
        Some(path)
    }

    /// Applies a signal from the other side.
    ///
    /// An offer is answered (the answer comes out as an event), an answer completes the
    /// handshake, a candidate is added or, before the remote description, held back.
    /// [`Signal::Ignored`] is ignored, and so is an exact repeat of the offer or answer already
    /// applied (two hubs deliver everything twice). A remote candidate the engine cannot use
    /// (e.g. an mDNS one with [`PeerConfig::resolve_mdns`] off) is logged and skipped.
    ///
    /// An error leaves the peer as it was; after a [`PeerError::BadDescription`] or
    /// [`PeerError::UnexpectedSignal`] the caller should normally close it, as simple-peer would.
    pub async fn signal(&self, signal: Signal) -> Result<(), PeerError> {
        let connection = self.shared.connection().ok_or(PeerError::Closed)?;
        let mut negotiation = self.negotiation.lock().await;
        match signal {
            Signal::Ignored { kind } => {
                debug!(%kind, "ignoring a simple-peer 9.x signal");
                Ok(())
            }
            Signal::Abandon => Err(PeerError::UnexpectedSignal {
                signal: "abandon",
                why: "the swarm, not the peer, acts on it",
            }),
            Signal::Candidate(candidate) => {
                if negotiation.remote_sdp.is_none() {
                    debug!("holding a remote candidate until the remote description");
                    negotiation.pending.push(candidate);
                } else {
                    add_candidate(
                        &connection,
                        &self.shared.check_gate,
                        candidate,
                        self.skip_remote_loopback,
                    )
                    .await;
                }
                Ok(())
            }
            Signal::Offer { sdp } => {
                if self.shared.initiator {
                    return Err(PeerError::UnexpectedSignal {
                        signal: "offer",
                        why: "this peer is the initiator (both sides offered)",
                    });
                }
                if is_repeat(&negotiation, &sdp, "offer")? {
                    return Ok(());
                }
                let offer = RTCSessionDescription::offer(self.usable_sdp(&sdp))
                    .map_err(PeerError::bad("offer"))?;
                self.shared.remember_mid(&offer);
                connection
                    .set_remote_description(offer)
                    .await
                    .map_err(PeerError::bad("offer"))?;
                negotiation.remote_sdp = Some(sdp);
                self.flush_pending(&connection, &mut negotiation).await;

                let answer = connection
                    .create_answer(None)
                    .await
                    .map_err(PeerError::engine("create the answer"))?;
                // The answer goes out with the candidates gathered when it is applied (the host
                // ones): our connectivity checks start at once, and a check that reaches the
                // offerer before the candidate it comes from makes it a peer-reflexive pair,
                // which the offerer (controlling) may nominate only after `PRFLX_WAIT` (rtc-ice
                // 0.21 keeps the type when the candidate arrives): ~120 ms instead of ~20 in
                // one Rust↔Rust connection in thirty on loopback. The engine gathers after the
                // description is applied, so the answer waits for the host candidates (a
                // millisecond or so; at most `ANSWER_CANDIDATES_WAIT`). Candidates reported
                // meanwhile are held, so that none goes out before the answer.
                *lock(&self.shared.held_candidates) = Some(Vec::new());
                self.shared.check_gate.admit(&answer.sdp);
                let applied = connection.set_local_description(answer.clone()).await;
                if applied.is_ok() {
                    self.wait_for_host_candidates().await;
                }
                let sdp = match (&applied, connection.local_description().await) {
                    (Ok(()), Some(described)) => without_unspecified_candidates(&described.sdp),
                    _ => answer.sdp,
                };
                let mut held = lock(&self.shared.held_candidates);
                debug!(
                    described = sdp.matches("a=candidate:").count(),
                    reported = held.as_ref().map_or(0, Vec::len),
                    "answering with the candidates gathered so far"
                );
                if applied.is_ok() {
                    self.shared
                        .emit(PeerEvent::Signal(Signal::Answer { sdp: sdp.clone() }));
                }
                for candidate in held.take().unwrap_or_default() {
                    if !sdp.contains(&format!("a={}\r\n", candidate.candidate)) {
                        self.shared
                            .emit(PeerEvent::Signal(Signal::Candidate(candidate)));
                    }
                }
                drop(held);
                applied.map_err(PeerError::engine("apply the local answer"))
            }
            Signal::Answer { sdp } => {
                if !self.shared.initiator {
                    return Err(PeerError::UnexpectedSignal {
                        signal: "answer",
                        why: "this peer did not offer",
                    });
                }
                if is_repeat(&negotiation, &sdp, "answer")? {
                    return Ok(());
                }
                let answer = RTCSessionDescription::answer(self.usable_sdp(&sdp))
                    .map_err(PeerError::bad("answer"))?;
                self.shared.check_gate.note_remote_description(&answer.sdp);
                connection
                    .set_remote_description(answer)
                    .await
                    .map_err(PeerError::bad("answer"))?;
                negotiation.remote_sdp = Some(sdp);
                self.flush_pending(&connection, &mut negotiation).await;
                Ok(())
            }
        }
    }

    /// Adds the remote candidates that came before the remote description.
    async fn flush_pending(
        &self,
        connection: &Arc<dyn PeerConnection>,
        negotiation: &mut Negotiation,
    ) {
        for candidate in std::mem::take(&mut negotiation.pending) {
            add_candidate(
                connection,
                &self.shared.check_gate,
                candidate,
                self.skip_remote_loopback,
            )
            .await;
        }
    }

    /// The remote description as the engine gets it: without loopback candidates when they are
    /// not used (libwebrtc puts the candidates it has gathered into its description too).
    fn usable_sdp(&self, sdp: &str) -> String {
        if !self.skip_remote_loopback {
            return sdp.to_string();
        }
        sdp.split_inclusive('\n')
            .filter(|line| {
                let loopback = line.starts_with("a=candidate:")
                    && candidate_ip(line.trim_end()).is_some_and(|ip| ip.is_loopback());
                if loopback {
                    debug!(candidate = %line.trim_end(), "not using a remote loopback candidate");
                }
                !loopback
            })
            .collect()
    }

    /// Whether the other side's offer or answer has been applied.
    pub async fn has_remote_description(&self) -> bool {
        self.negotiation.lock().await.remote_sdp.is_some()
    }

    /// Whether `sdp` is the remote description already applied.
    pub async fn remote_description_is(&self, sdp: &str) -> bool {
        self.negotiation.lock().await.remote_sdp.as_deref() == Some(sdp)
    }

    /// The next event; `None` after [`PeerEvent::Closed`] has been returned.
    pub async fn next_event(&self) -> Option<PeerEvent> {
        self.events.lock().await.recv().await
    }

    /// Sends one binary message. Waits while the send buffer is full.
    pub async fn send(&self, data: Bytes) -> Result<(), PeerError> {
        let channel = self.open_channel()?;
        let sent = channel.send(BytesMut::from(&data[..])).await;
        self.sent(sent)
    }

    /// Sends one text message (a string on the JS side). Waits while the send buffer is full.
    pub async fn send_text(&self, text: &str) -> Result<(), PeerError> {
        let channel = self.open_channel()?;
        let sent = channel.send_text(text).await;
        self.sent(sent)
    }

    /// The data channel, if messages can be sent on it.
    fn open_channel(&self) -> Result<&Arc<dyn DataChannel>, PeerError> {
        if self.is_closed() {
            return Err(PeerError::Closed);
        }
        let channel = self.shared.send_channel.get().or(self.shared.channel.get());
        match channel {
            Some(channel) if self.shared.connected.load(Ordering::Acquire) => Ok(channel),
            _ => Err(PeerError::NotConnected),
        }
    }

    /// The outcome of a send, as a [`PeerError`].
    fn sent<E: std::fmt::Display>(&self, result: Result<(), E>) -> Result<(), PeerError> {
        result.map_err(|error| {
            if self.is_closed() {
                PeerError::Closed
            } else {
                PeerError::Engine {
                    op: "send",
                    message: error.to_string(),
                }
            }
        })
    }

    /// The next message received, in order; `None` once the channel is closed and every message
    /// before the close has been returned.
    /// Text messages come as their UTF-8 bytes; [`Peer::recv_message`] tells the kinds apart.
    pub async fn recv(&self) -> Option<Bytes> {
        self.recv_message().await.map(PeerMessage::into_bytes)
    }

    /// The next message received, text or binary as it was sent, in order; `None` once the
    /// channel is closed and every message before the close has been returned.
    pub async fn recv_message(&self) -> Option<PeerMessage> {
        self.messages.lock().await.recv().await
    }

    /// Closes the data channel (so the other side notices at once) and the connection, and
    /// releases sockets and tasks. Idempotent.
    pub async fn close(&self) {
        let Some((connection, channel)) = self.shared.shut(CloseReason::Local) else {
            return;
        };
        if let Some(channel) = channel {
            if channel.close().await.is_ok() {
                let closed =
                    tokio::time::timeout(CHANNEL_CLOSE_WAIT, self.shared.reader_done.notified());
                if closed.await.is_err() {
                    debug!("the data channel did not finish closing; closing the connection");
                }
            }
        }
        if let Err(error) = connection.close().await {
            debug!(%error, "closing the peer connection");
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some((connection, _)) = self.shared.shut(CloseReason::Local) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = connection.close().await;
                });
            }
        }
    }
}

impl Shared {
    /// Wakes the engine's driver, changing nothing: sets the data channel's low-water mark to
    /// the value it has (0: this crate never sets it), which ends in the driver's
    /// `wake_writes`; before there is a channel (an answerer's handshake), applies the
    /// connection's configuration unchanged, which sends the driver an event (its ICE servers
    /// are kept for a next gathering, which never comes: this crate restarts no ICE). `false`
    /// once the peer is closed.
    async fn wake_driver(&self) -> bool {
        if let Some(channel) = self.send_channel.get().or(self.channel.get()) {
            return channel.set_buffered_amount_low_threshold(0).await.is_ok();
        }
        let Some(connection) = self.connection() else {
            return false;
        };
        let configuration = connection.get_configuration().await;
        connection.set_configuration(configuration).await.is_ok()
    }

    fn connection(&self) -> Option<Arc<dyn PeerConnection>> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.connection).clone()
    }

    fn emit(&self, event: PeerEvent) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(event);
        }
    }

    /// Marks the peer closed, once: emits `Closed(reason)` as the last event and hands back the
    /// connection and channel to close. `None` if it was closed already.
    ///
    /// When the peer did not close it itself and its channel was open, `Closed` waits (up to
    /// [`CHANNEL_CLOSE_WAIT`]) until the channel reader has queued every message the engine had
    /// received for [`Peer::recv`]: the engine reports a closed connection on another path than
    /// the channel's messages, and could overtake the last of them. So `Closed` comes after
    /// them, unless more than [`RECEIVE_QUEUE`] wait unread.
    fn shut(self: &Arc<Self>, reason: CloseReason) -> Option<ToClose> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        match reason {
            CloseReason::Local => debug!("closing the peer"),
            _ => info!(?reason, "peer closed"),
        }
        if let Some(events) = lock(&self.events).take() {
            let wait_for_reader = reason != CloseReason::Local
                && self.connected.load(Ordering::Acquire)
                && self.reading.load(Ordering::Acquire);
            if wait_for_reader {
                let shared = self.clone();
                tokio::spawn(async move {
                    let stopped = shared.reader_stopped.notified();
                    tokio::pin!(stopped);
                    stopped.as_mut().enable();
                    if shared.reading.load(Ordering::Acquire)
                        && tokio::time::timeout(CHANNEL_CLOSE_WAIT, stopped)
                            .await
                            .is_err()
                    {
                        debug!("closed with received messages still unqueued");
                    }
                    let _ = events.send(PeerEvent::Closed(reason));
                });
            } else {
                let _ = events.send(PeerEvent::Closed(reason));
            }
        }
        lock(&self.messages).take();
        lock(&self.extra_messages).take();
        let connection = lock(&self.connection).take()?;
        let channel = self.send_channel.get().or(self.channel.get()).cloned();
        Some((connection, channel))
    }

    /// Closes the peer from inside the engine (its handler or the channel reader).
    fn fail(self: &Arc<Self>, reason: CloseReason) {
        if let Some((connection, _)) = self.shut(reason) {
            tokio::spawn(async move {
                let _ = connection.close().await;
            });
        }
    }

    fn remember_mid(&self, description: &RTCSessionDescription) {
        let mid = description.unmarshal().ok().and_then(|parsed| {
            parsed
                .media_descriptions
                .first()
                .and_then(|media| media.attribute("mid").flatten().map(str::to_string))
        });
        if let Some(mid) = mid {
            *lock(&self.mid) = mid;
        }
    }

    /// Takes `channel` as the peer's data channel and starts reading it (`own`: this side
    /// created it, as the initiator).
    ///
    /// A further channel the remote opens is kept open and read into the same queue, never
    /// closed; and if the adopted channel was our own, messages go out on the remote's from then
    /// on. That is glare with simple-peer 6.x: an initiator that received our offer answers it
    /// (Chromium rolls its own offer back) but still opens its own channel, and reads and writes
    /// only that one; it destroys the whole peer when that channel closes. (Closing it here cut
    /// Rust↔Chromium connections a few milliseconds after they opened; sending on ours alone
    /// reached nobody.)
    fn adopt(self: &Arc<Self>, channel: Arc<dyn DataChannel>, own: bool) {
        let messages = lock(&self.messages).take();
        let (Some(messages), Ok(())) = (messages, self.channel.set(channel.clone())) else {
            debug!("the remote opened another data channel: keeping it open, reading it too");
            let sends_on_it = !own
                && self.adopted_own.load(Ordering::Acquire)
                && self.send_channel.set(channel.clone()).is_ok();
            if sends_on_it {
                debug!("the remote answered our offer with its own channel: sending on it");
            }
            if let Some(messages) = lock(&self.extra_messages).clone() {
                tokio::spawn(read_extra_channel(
                    self.clone(),
                    channel,
                    messages,
                    sends_on_it,
                ));
            }
            return;
        };
        self.adopted_own.store(own, Ordering::Release);
        *lock(&self.extra_messages) = Some(messages.downgrade());
        self.reading.store(true, Ordering::Release);
        tokio::spawn(read_channel(self.clone(), channel, messages));
    }
}

/// Wakes the engine's driver every [`NUDGE_INTERVAL`] from ICE's connection until the data
/// channel opens (at most [`NUDGE_SPAN`]), on the side that created the channel.
///
/// Why: webrtc 0.21's driver loop (`webrtc/src/peer_connection/driver.rs`, `run`) sends what
/// the engine queued (`poll_writes`) *before* it hands out the engine's events
/// (`poll_events`), and some handshake steps queue their packet while an event is handled:
/// the DTLS ClientHello when ICE connects, the SCTP INIT when DTLS completes, the DCEP open
/// when the association is up. Each then waited for the driver's next wake, the ICE timer,
/// which once ICE is connected is the keepalive ([`PeerConfig::keepalive`], 2 s). Setting the
/// channel's low-water mark to the value it has (0: this crate never sets it) changes nothing
/// but wakes the driver (`wake_writes`), whose next pass sends what is queued. The fix belongs
/// upstream: `run` should loop again when `poll_events` queued writes.
///
/// A handshake slower than [`NUDGE_SPAN`] (a long or lossy path, DTLS retransmitting) is still
/// woken, every [`SLOW_NUDGE_INTERVAL`], until it opens or the peer closes: the swarm closes a
/// handshake that has not connected in its handshake timeout.
async fn nudge_handshake(shared: Arc<Shared>) {
    if shared.channel.get().is_none() {
        return; // the answerer: as DTLS server it has nothing queued by an event
    }
    let fast_until = tokio::time::Instant::now() + NUDGE_SPAN;
    while !shared.connected.load(Ordering::Acquire) && !shared.closed.load(Ordering::Acquire) {
        if !shared.wake_driver().await {
            return;
        }
        let interval = if tokio::time::Instant::now() < fast_until {
            NUDGE_INTERVAL
        } else {
            SLOW_NUDGE_INTERVAL
        };
        tokio::time::sleep(interval).await;
    }
}

/// When ICE has connected through a relay candidate of our own (a TURN allocation), wakes the
/// engine's driver every [`RELAY_NUDGE_INTERVAL`] until the peer closes: through the rest of
/// the handshake, and then for as long as the connection lasts.
///
/// Why: webrtc 0.21's driver loop (`webrtc/src/peer_connection/driver.rs`, `poll_writes`)
/// flushes the TURN client's queue (1.b) *before* it drains the engine's packets (1.c), and a
/// packet for the relay only joins that queue in 1.c. So every packet this side sends through
/// its relay waits in the queue for the driver's next wake: a received packet, a send of ours,
/// or the ICE timer. The SCTP acknowledgements that pace the other side's sending are such
/// packets, and so is the last packet of every burst. The fix belongs upstream: `poll_writes`
/// should flush the TURN queue after the engine's packets too.
async fn keep_relayed_writes_moving(shared: Arc<Shared>) {
    let Some(connection) = shared.connection() else {
        return;
    };
    let relayed = selected_path_of(&connection)
        .await
        .is_some_and(|path| path.local.kind == CandidateKind::Relay);
    drop(connection);
    if !relayed {
        return;
    }
    debug!("connected through our relay: waking the engine every {RELAY_NUDGE_INTERVAL:?}");
    while !shared.closed.load(Ordering::Acquire) {
        if !shared.wake_driver().await {
            return;
        }
        tokio::time::sleep(RELAY_NUDGE_INTERVAL).await;
    }
}

/// How long a reader that fell behind waits for more before it takes itself as caught up and
/// nudges the engine (see [`ChannelEvents`]).
const CAUGHT_UP_AFTER: Duration = Duration::from_millis(5);

/// How long a nudge may take to bring messages the engine held back; if none come, the engine
/// held none.
const NUDGE_ANSWER_WAIT: Duration = Duration::from_millis(100);

/// A data channel's events as its reader takes them, and the messages it hands to the receive
/// queue. When the queue was full (the application fell behind), the engine may be holding
/// messages back that it moves on only when its read path next runs (see
/// `peer/sockets.rs`, [`ReadNudge`]); so once the reader finds nothing more to take, it nudges
/// the engine, and again each time a nudge brought more.
struct ChannelEvents {
    channel: Arc<dyn DataChannel>,
    nudge: Arc<ReadNudge>,
    /// Set when a message had to wait for room in the receive queue; cleared when a nudge
    /// brings nothing.
    fell_behind: bool,
}

impl ChannelEvents {
    fn new(channel: Arc<dyn DataChannel>, shared: &Shared) -> ChannelEvents {
        ChannelEvents {
            channel,
            nudge: shared.read_nudge.clone(),
            fell_behind: false,
        }
    }

    /// The channel's next event; `None` once it has ended.
    async fn next(&mut self) -> Option<DataChannelEvent> {
        if self.fell_behind {
            // `poll` is cancel-safe: a lock, then an mpsc receive.
            if let Ok(event) = tokio::time::timeout(CAUGHT_UP_AFTER, self.channel.poll()).await {
                return event;
            }
            debug!("caught up after falling behind: nudging the engine's reads");
            self.nudge.request();
            match tokio::time::timeout(NUDGE_ANSWER_WAIT, self.channel.poll()).await {
                Ok(event) => return event,
                Err(_) => self.fell_behind = false,
            }
        }
        self.channel.poll().await
    }

    /// Hands `message` to `queue`, waiting for room; `false` if nobody receives any more.
    async fn deliver(&mut self, queue: &mpsc::Sender<PeerMessage>, message: PeerMessage) -> bool {
        match queue.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(message)) => {
                self.fell_behind = true;
                queue.send(message).await.is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Queues the messages of an extra data channel (see [`Shared::adopt`]) with the adopted
/// channel's. Its closing means nothing to the peer; its opening, when it is the channel sent on
/// (`sends_on_it`), is the peer's `Connected` if that has not come yet.
async fn read_extra_channel(
    shared: Arc<Shared>,
    channel: Arc<dyn DataChannel>,
    messages: mpsc::WeakSender<PeerMessage>,
    sends_on_it: bool,
) {
    let mut events = ChannelEvents::new(channel, &shared);
    while let Some(event) = events.next().await {
        match event {
            DataChannelEvent::OnOpen if sends_on_it => {
                shared.remote_open.store(true, Ordering::Release);
                shared.remote_opened.notify_waiters();
                if !shared.connected.swap(true, Ordering::AcqRel) {
                    debug!("the remote's own data channel is open");
                    shared.emit(PeerEvent::Connected);
                }
            }
            DataChannelEvent::OnMessage(message) => {
                let message = PeerMessage::from_wire(message.is_string, message.data.freeze());
                // Gone once the adopted channel's reader has ended: the peer is closing.
                let Some(messages) = messages.upgrade() else {
                    break;
                };
                if !events.deliver(&messages, message).await {
                    break;
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
}

/// Emits `Connected` once the remote's own channel is open (see [`Peer::expect_remote_channel`]),
/// or after [`REMOTE_CHANNEL_WAIT`] on ours if it never comes.
async fn connect_when_the_remote_channel_opens(shared: Arc<Shared>) {
    let opened = shared.remote_opened.notified();
    tokio::pin!(opened);
    opened.as_mut().enable();
    if !shared.remote_open.load(Ordering::Acquire)
        && tokio::time::timeout(REMOTE_CHANNEL_WAIT, opened)
            .await
            .is_err()
    {
        debug!("the remote opened no channel of its own; using ours");
    }
    if !shared.closed.load(Ordering::Acquire) && !shared.connected.swap(true, Ordering::AcqRel) {
        shared.emit(PeerEvent::Connected);
    }
}

/// Forwards the channel's messages to [`Peer::recv`] and its opening and closing to the events.
async fn read_channel(
    shared: Arc<Shared>,
    channel: Arc<dyn DataChannel>,
    messages: mpsc::Sender<PeerMessage>,
) {
    if shared.label.get().is_none() {
        match channel.label().await {
            Ok(label) => {
                let _ = shared.label.set(label);
            }
            Err(error) => debug!(%error, "reading the data channel label"),
        }
    }
    let mut events = ChannelEvents::new(channel, &shared);
    while let Some(event) = events.next().await {
        match event {
            DataChannelEvent::OnOpen
                if shared.adopted_own.load(Ordering::Acquire)
                    && shared.expect_remote.load(Ordering::Acquire) =>
            {
                debug!("our data channel is open; waiting for the remote's own");
                tokio::spawn(connect_when_the_remote_channel_opens(shared.clone()));
            }
            DataChannelEvent::OnOpen if !shared.connected.swap(true, Ordering::AcqRel) => {
                debug!(
                    label = shared.label.get().map(String::as_str),
                    "data channel open"
                );
                shared.emit(PeerEvent::Connected);
            }
            DataChannelEvent::OnMessage(message) => {
                let message = PeerMessage::from_wire(message.is_string, message.data.freeze());
                if !events.deliver(&messages, message).await {
                    debug!("dropping a message: nobody receives any more");
                }
            }
            DataChannelEvent::OnError => warn!("data channel error"),
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    drop(messages);
    shared.reading.store(false, Ordering::Release);
    shared.reader_stopped.notify_waiters();
    shared.reader_done.notify_one();
    shared.fail(CloseReason::ChannelClosed);
}

/// `sdp` without its candidates on an unspecified address (0.0.0.0, ::), which nobody can
/// reach: the engine describes every candidate it gathered, and such a one is not advertised
/// when trickled either (see `Handler::on_ice_candidate`).
fn without_unspecified_candidates(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .filter(|line| {
            !(line.starts_with("a=candidate:")
                && candidate_ip(line.trim_end()).is_some_and(|ip| ip.is_unspecified()))
        })
        .collect()
}

/// The selected candidate pair of `connection`, from its stats (see [`Peer::selected_path`]).
async fn selected_path_of(connection: &Arc<dyn PeerConnection>) -> Option<SelectedPath> {
    let report = connection
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let (pair_id, controlling) = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::Transport(transport)
            if !transport.selected_candidate_pair_id.is_empty() =>
        {
            Some((
                transport.selected_candidate_pair_id.clone(),
                transport.ice_role == RTCIceRole::Controlling,
            ))
        }
        _ => None,
    })?;
    let Some(RTCStatsReportEntry::IceCandidatePair(pair)) = report.get(&pair_id) else {
        return None;
    };
    // The pair names its candidates `candidate:…`; the report keys them with a prefix
    // saying which side they are on (rtc 0.21's stats accumulator). A remote candidate
    // learnt from a connectivity check (peer-reflexive) is missing from rtc 0.21's report
    // (it lists the signalled ones only), so its address is unknown here.
    let end = |id: &str, prefix: &str| {
        let entry = report
            .get(&format!("{prefix}{id}"))
            .or_else(|| report.get(id));
        let candidate = match entry {
            Some(
                RTCStatsReportEntry::LocalCandidate(candidate)
                | RTCStatsReportEntry::RemoteCandidate(candidate),
            ) => candidate,
            _ if prefix == "RTCRemoteIceCandidate_" => {
                return Some(PathEnd {
                    kind: CandidateKind::PeerReflexive,
                    address: None,
                    protocol: String::new(),
                })
            }
            _ => return None,
        };
        let kind = candidate_kind(candidate.candidate_type)?;
        let ip = candidate
            .address
            .as_deref()
            .and_then(|a| a.parse::<IpAddr>().ok());
        Some(PathEnd {
            kind,
            address: ip.map(|ip| SocketAddr::new(ip, candidate.port)),
            protocol: candidate.protocol.clone(),
        })
    };
    let rtt = (pair.current_round_trip_time.is_finite() && pair.current_round_trip_time > 0.0)
        .then(|| Duration::from_secs_f64(pair.current_round_trip_time));
    let mut remote = end(&pair.remote_candidate_id, "RTCRemoteIceCandidate_")?;
    if remote.kind == CandidateKind::PeerReflexive {
        if let Some(known) = peer_reflexive_remote(connection).await {
            remote = known;
        }
    }
    Some(SelectedPath {
        local: end(&pair.local_candidate_id, "RTCLocalIceCandidate_")?,
        remote,
        rtt,
        bytes_sent: pair.bytes_sent,
        bytes_received: pair.bytes_received,
        controlling,
        nat_maps_per_destination: false,
    })
}

/// The selected pair's remote end when the engine took it for peer-reflexive: its address, from
/// the ICE transport (the stats leave it out), and its real type when a signalled candidate has
/// that address.
///
/// Why: a check can arrive before the candidate it comes from does (the candidate travels
/// through the hub, the check goes straight). rtc-ice 0.21 then makes the sender a peer-reflexive
/// candidate and keeps that type when the signalled candidate with the same address arrives,
/// where RFC 8445 §7.3.1.3 has the agent take the signalled one. A remote relay candidate taken
/// for peer-reflexive would make a relayed path read as direct.
async fn peer_reflexive_remote(connection: &Arc<dyn PeerConnection>) -> Option<PathEnd> {
    let ice = connection.sctp().await?.transport().ice_transport();
    let pair = ice.get_selected_candidate_pair().await.ok()??;
    let remote = pair.remote();
    let address = SocketAddr::new(remote.address.parse::<IpAddr>().ok()?, remote.port);
    let signalled = ice.get_remote_candidates().await.unwrap_or_default();
    let kind = signalled
        .iter()
        .filter(|candidate| candidate.typ != RTCIceCandidateType::Prflx)
        .find(|candidate| {
            candidate.port == address.port()
                && candidate.address.parse::<IpAddr>().ok() == Some(address.ip())
        })
        .and_then(|candidate| candidate_kind(candidate.typ))
        .unwrap_or(CandidateKind::PeerReflexive);
    Some(PathEnd {
        kind,
        address: Some(address),
        protocol: remote.protocol.to_string(),
    })
}

/// Our name for an engine's candidate type (`None` for one we do not know).
fn candidate_kind(typ: RTCIceCandidateType) -> Option<CandidateKind> {
    match typ {
        RTCIceCandidateType::Host => Some(CandidateKind::Host),
        RTCIceCandidateType::Srflx => Some(CandidateKind::ServerReflexive),
        RTCIceCandidateType::Prflx => Some(CandidateKind::PeerReflexive),
        RTCIceCandidateType::Relay => Some(CandidateKind::Relay),
        _ => None,
    }
}

/// Whether `sdp` repeats the remote description already applied; an error if a different one
/// was.
fn is_repeat(
    negotiation: &Negotiation,
    sdp: &str,
    signal: &'static str,
) -> Result<bool, PeerError> {
    match &negotiation.remote_sdp {
        None => Ok(false),
        Some(applied) if applied == sdp => {
            debug!(signal, "ignoring a repeated remote description");
            Ok(true)
        }
        Some(_) => Err(PeerError::UnexpectedSignal {
            signal,
            why: "a remote description is already set (renegotiation is not supported)",
        }),
    }
}

async fn add_candidate(
    connection: &Arc<dyn PeerConnection>,
    gate: &CheckGate,
    candidate: IceCandidate,
    skip_loopback: bool,
) {
    if skip_loopback && candidate_ip(&candidate.candidate).is_some_and(|ip| ip.is_loopback()) {
        debug!(candidate = %candidate.candidate, "not using a remote loopback candidate");
        return;
    }
    debug!(candidate = %candidate.candidate, "adding a remote candidate");
    gate.note_remote_candidate(&candidate.candidate);
    let init = RTCIceCandidateInit {
        candidate: candidate.candidate,
        sdp_mid: candidate.sdp_mid,
        sdp_mline_index: candidate.sdp_m_line_index,
        username_fragment: None,
        url: None,
    };
    if let Err(error) = connection.add_ice_candidate(init.clone()).await {
        warn!(%error, candidate = %init.candidate, "skipping a remote candidate");
    }
}

/// `candidate` (an `a=candidate` value) as the offerer, or an answerer to a remote that paces
/// its checks, advertises it: a host candidate's priority is lowered just below a
/// server-reflexive one's (type preference 98 instead of 126; the rest of the priority kept).
///
/// Why: the remote orders its connectivity checks by these priorities, and libwebrtc (Node,
/// browsers) paces its checks ~50 ms apart. Across two NATs our host address is unreachable,
/// yet its pairs were checked first, and the pair that works, the remote's host to our
/// server-reflexive address, only after them. Behind a cone NAT it is the remote's own check
/// that opens its NAT to ours: Rust offering to Node across cone NATs took 463 ms, 213 ms with
/// this. As the controlling side the offerer nominates by its own priorities, which are
/// unchanged, so what it chooses stays the same (a host pair first on one network); only the
/// remote's order of checks changes.
///
/// An answerer to libwebrtc does it too: Node offering to Rust across cone NATs took ~400 ms,
/// its first direct check coming 245–389 ms into checking (now that the relay it nominated
/// first is held back, see `check_gate.rs`), and ~70 ms with this (swarmbench, 5 tries each).
/// The price: the remote, controlling, nominates by the advertised priorities, so on one
/// network behind a router that hairpins (sends back in what is addressed to its own outside
/// address) it may choose the pair through the router's mapping over the host pair. Not against
/// a peer of this crate, which checks every pair at once.
fn checked_first_by_the_remote(candidate: &str) -> String {
    const HOST_TYPE_PREFERENCE: u32 = 98;
    let fields: Vec<&str> = candidate.split(' ').collect();
    let is_host = fields
        .iter()
        .position(|f| *f == "typ")
        .and_then(|i| fields.get(i + 1))
        == Some(&"host");
    let priority = fields.get(3).and_then(|p| p.parse::<u32>().ok());
    let (true, Some(priority)) = (is_host, priority) else {
        return candidate.to_string();
    };
    let advertised = (HOST_TYPE_PREFERENCE << 24) | (priority & 0x00ff_ffff);
    let mut fields: Vec<String> = fields.into_iter().map(String::from).collect();
    fields[3] = advertised.to_string();
    fields.join(" ")
}

/// The engine's callbacks. They run on the engine's driver, so they only hand things on.
struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let unusable = event
            .candidate
            .address
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if unusable {
            debug!(address = %event.candidate.address, "not advertising an unspecified address");
            return;
        }
        match event.candidate.to_json() {
            Ok(init) => {
                self.shared.check_gate.note_local_candidate(&init.candidate);
                let mid = lock(&self.shared.mid).clone();
                let candidate = IceCandidate {
                    candidate: if self.shared.host_advertised_low {
                        checked_first_by_the_remote(&init.candidate)
                    } else {
                        init.candidate
                    },
                    sdp_m_line_index: Some(0),
                    sdp_mid: Some(mid),
                };
                let mut held = lock(&self.shared.held_candidates);
                match held.as_mut() {
                    Some(held) => {
                        held.push(candidate);
                        self.shared.candidate_reported.notify_waiters();
                    }
                    None => self
                        .shared
                        .emit(PeerEvent::Signal(Signal::Candidate(candidate))),
                }
            }
            Err(error) => warn!(%error, "cannot write a local candidate"),
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        debug!(%state, "ICE connection state");
        match state {
            RTCIceConnectionState::Checking => {
                let _ = self.shared.ice_progress.compare_exchange(
                    ICE_NEW,
                    ICE_CHECKING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                self.shared
                    .ice_progress
                    .store(ICE_CONNECTED, Ordering::Release);
                if self.shared.check_gate.ice_connected() {
                    debug!("the remote's DTLS datagram from before ICE connected, again");
                    self.shared.read_nudge.wake_reads();
                }
                if !self.shared.nudging.swap(true, Ordering::AcqRel) {
                    tokio::spawn(nudge_handshake(self.shared.clone()));
                    tokio::spawn(keep_relayed_writes_moving(self.shared.clone()));
                }
            }
            RTCIceConnectionState::Disconnected => self.shared.fail(CloseReason::Disconnected),
            RTCIceConnectionState::Failed => self.shared.fail(CloseReason::IceFailed),
            RTCIceConnectionState::Closed => self.shared.fail(CloseReason::Failed),
            _ => {}
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(%state, "connection state");
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            self.shared.fail(CloseReason::Failed);
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        if self.shared.closed.load(Ordering::Acquire) {
            tokio::spawn(async move {
                let _ = channel.close().await;
            });
            return;
        }
        self.shared.adopt(channel, false);
    }
}

/// 20 random bytes as 40 lowercase hex characters, as simple-peer labels its channel.
fn random_label() -> Result<String, PeerError> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|error| PeerError::Engine {
        op: "draw a random label",
        message: error.to_string(),
    })?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every critical section is
/// a single assignment or take).
fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offerer_advertises_host_candidates_below_server_reflexive_ones() {
        let host = "candidate:2693830880 1 udp 2130706431 10.1.0.2 50886 typ host";
        let srflx =
            "candidate:1 1 udp 1694498815 198.51.100.11 50886 typ srflx raddr 10.1.0.2 rport 50886";
        let relay = "candidate:2 1 udp 16777215 198.51.100.2 61000 typ relay raddr 198.51.100.11 rport 50886";
        let priority = |c: &str| -> u32 { c.split(' ').nth(3).unwrap().parse().unwrap() };
        let host = checked_first_by_the_remote(host);
        assert_eq!(checked_first_by_the_remote(srflx), srflx);
        assert_eq!(checked_first_by_the_remote(relay), relay);
        assert!(priority(relay) < priority(&host) && priority(&host) < priority(srflx));
        assert_eq!(priority(&host), (98 << 24) | (2130706431 & 0x00ff_ffff));
        assert_eq!(
            host,
            format!(
                "candidate:2693830880 1 udp {} 10.1.0.2 50886 typ host",
                priority(&host)
            )
        );
        for odd in [
            "",
            "candidate:1 1 udp x 10.0.0.1 1 typ host",
            "candidate:1 1 udp 5",
        ] {
            assert_eq!(checked_first_by_the_remote(odd), odd);
        }
    }

    #[test]
    fn tcp_and_tls_turn_urls_are_unsupported() {
        for url in [
            "stun:198.51.100.2:3478",
            "turn:198.51.100.2:3478",
            "turn:198.51.100.2:3478?transport=udp",
            "TURN:host:3478",
        ] {
            assert!(ice_url_is_supported(url), "{url}");
        }
        for url in [
            "turn:198.51.100.2:3478?transport=tcp",
            "turns:198.51.100.2:5349",
            "turns:198.51.100.2:5349?transport=tcp",
            "http://198.51.100.2",
        ] {
            assert!(!ice_url_is_supported(url), "{url}");
        }
        let servers = [IceServer {
            urls: vec![
                "turn:h:3478".into(),
                "turn:h:3478?transport=tcp".into(),
                "turns:h:5349".into(),
            ],
            ..IceServer::default()
        }];
        assert_eq!(
            unsupported_ice_urls(&servers),
            ["turn:h:3478?transport=tcp", "turns:h:5349"]
        );
    }

    #[test]
    fn labels_are_40_random_hex_chars() {
        let a = random_label().unwrap();
        let b = random_label().unwrap();
        assert_eq!(a.len(), 40);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}
