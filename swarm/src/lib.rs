//! `swarm`: peers that interoperate with the JavaScript p2p stack of the "disintermediated web"
//! (hyperlog, hyperlog-sodium, chatwizard).
//!
//! With the default `webrtc` feature it holds the swarm: [`Swarm::join`] meets the other peers of
//! a topic through one or more signalhubs, speaking JS `webrtc-swarm` 2.9 / `simple-peer`
//! signalling ([`swarm`], [`signal`]), and connects to each over a WebRTC data channel ([`peer`]),
//! which a program uses as messages or as a tokio byte stream ([`PeerStream`]), or to replicate a
//! log with ([`PeerReplication`]). [`RECOMMENDED_LOG_FILTER`] and [`EngineRepeatFilter`] keep the
//! WebRTC engine's routine and repeated log lines out of a program's output.
//!
//! Without it, the crate is [`log`]: a hyperlog-compatible signed append-only log, namely the node model
//! and its content keys ([`Key`], [`Node`]), hyperlog-sodium 2.x signatures ([`Keypair`],
//! [`Verifier`]), the replication wire format ([`Message`], [`FrameDecoder`]) and a
//! `JSON.stringify`-exact JSON writer ([`log::json`]); the log itself ([`Log`], in memory or durable
//! on redb) and its replication with hyperlog peers over any tokio byte stream ([`replicate`],
//! [`Replication`]). And [`signal`]: the signalling messages of
//! webrtc-swarm and simple-peer as they travel through a signalhub.
//!
//! ```
//! use swarm::{FrameDecoder, Key, Keypair, Message, Node, Verifier};
//!
//! // Append-like: a node linking the previous head, signed as hyperlog-sodium does.
//! let keypair = Keypair::from_seed(&[1; 32]);
//! let mut n1 = Node::new(vec![], b"hello".to_vec(), "A".into(), 1, 1);
//! keypair.sign_node(&mut n1);
//! assert_eq!(n1.key.to_hex(), "8c7efb22472592f561a7a7647f8c5ee93134880b4ca0c92889a61848cd5c4602");
//!
//! // On the wire and back, split anywhere.
//! let frame = Message::Node(n1.to_message()).to_frame();
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&frame[..10]);
//! assert_eq!(decoder.next_message(), Ok(None));
//! decoder.push(&frame[10..]);
//! let Ok(Some(Message::Node(msg))) = decoder.next_message() else { panic!("a node") };
//! let received = Node::from_message(msg).expect("well-formed");
//! received.check_key().expect("content matches key");
//! Verifier::for_keypair(&keypair).verify_node(&received).expect("signed by keypair");
//! assert_eq!(Key::compute(&received.links, &received.value), received.key);
//! ```

/// A `tracing` filter (`tracing_subscriber::EnvFilter` directives) for a program that uses the
/// swarm and sets no `RUST_LOG`: warnings and errors from everything, but only errors from the
/// WebRTC engine (webrtc-rs: the `webrtc` crate and the `rtc*` crates, which log through `log`
/// and reach `tracing` through `tracing-log`). The engine warns about routine things on most
/// connections (`Unsupported Extension Type` for DTLS extensions browsers and Node send,
/// `pingAllCandidates called with no candidate pairs` before the other side's candidates
/// arrive, `password is empty`); this crate reports what matters of them itself (a peer that
/// failed, ICE that found no path) as warnings or events. Add the program's own crate at
/// `info` if wanted, e.g. `format!("{RECOMMENDED_LOG_FILTER},myapp=info")`.
///
/// ```
/// let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| swarm::RECOMMENDED_LOG_FILTER.into());
/// # let _ = filter;
/// ```
pub const RECOMMENDED_LOG_FILTER: &str = "warn,webrtc=error,rtc=error";

#[cfg(feature = "webrtc")]
pub mod engine_log;
#[cfg(feature = "webrtc")]
pub mod ice_servers;
pub mod log;
#[cfg(feature = "webrtc")]
pub mod peer;
#[cfg(feature = "webrtc")]
pub mod peer_replication;
pub mod signal;
#[cfg(feature = "webrtc")]
pub mod stream;
#[cfg(feature = "webrtc")]
pub mod swarm;

#[cfg(feature = "webrtc")]
pub use engine_log::EngineRepeatFilter;
pub use log::async_log::AsyncLog;
pub use log::hyperlog::{BatchItem, Log, LogError, LogOptions, Subscription};
pub use log::json::{is_js_canonical, stringify as js_stringify};
pub use log::node::{Key, KeyError, Node, NodeError};
pub use log::replicate::{
    replicate, EarlyEnd, Mode, Phase, Progress, ReplicateError, ReplicateOptions, Replication,
    Stall, StopHandle, Summary,
};
pub use log::sign::{verify_key_signature, verify_signature, Keypair, SignError, Verifier};
pub use log::store::{MemoryStore, RedbStore, Store, StoreError};
pub use log::view::{ChatMessage, ChatMessages, Fold, View, ViewError};
pub use log::wire::{
    FrameDecoder, Handshake, LogSeq, Message, NodeMessage, WireError, DEFAULT_MAX_FRAME_SIZE,
};
#[cfg(feature = "webrtc")]
pub use peer::{
    CandidateKind, CloseReason, IceServer, PathEnd, Peer, PeerConfig, PeerError, PeerEvent,
    PeerMessage, SelectedPath,
};
#[cfg(feature = "webrtc")]
pub use peer_replication::{PeerReplication, PeerReplicationError, PeerReplicationOptions};
#[cfg(feature = "webrtc")]
pub use stream::PeerStream;
#[cfg(feature = "webrtc")]
pub use swarm::{Swarm, SwarmError, SwarmEvent, SwarmOptions, SwarmPeer};
