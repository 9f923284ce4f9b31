//! What a hub node needs from a message broker to be one node of a cluster, and the format of the
//! messages nodes exchange through it.
//!
//! The registry tells the broker which topics this node has local subscribers for
//! ([`Broker::set_interest`]) and hands it every broadcast made on this node
//! ([`Broker::publish`]), after delivering it locally itself: a node's own subscribers never wait
//! for the broker. The broker carries broadcasts from other nodes back in through [`Inbound`].
//! The engine (Redis today, see `redis_broker.rs`) lives behind these two traits, so another
//! (NATS) could follow without touching the registry.
//!
//! Two kinds of topic exist because the hub has two kinds of subscriber: an SSE subscriber listens
//! to one channel of an app, a signalhubws client to every channel of its app. A message reaches
//! each kind through its own topic, so a node that has both kinds never gets a message twice.
//!
//! A message between nodes is an [`Envelope`]: a short text header, then the message bytes
//! untouched. The header carries the sending node (a node drops what it sent itself, having
//! delivered it already), the time it was published (for the cross-node lag metric), whether it
//! came by POST or WebSocket (they are framed differently for SSE subscribers), and the channel key.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// What a node subscribes to in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Topic<'a> {
    /// One channel's SSE subscribers: the key is `<app>/<channel>`.
    Channel(&'a str),
    /// Every channel of an app, for its signalhubws clients.
    App(&'a str),
}

/// How a broadcast entered the hub, which decides how SSE subscribers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A POST body: sent to SSE subscribers as it is.
    Http,
    /// The `message` of a signalhubws frame: sent to SSE subscribers on one line.
    WebSocket,
}

/// The node's side of a broker: never blocks, never fails (a broker that is down drops
/// what it cannot carry, counts it, and says so in its health).
pub(crate) trait Broker: Send + Sync {
    /// This node has (`wanted`) or no longer has local subscribers for `topic`. Called in order
    /// for each topic, under the registry's lock for it.
    fn set_interest(&self, topic: Topic<'_>, wanted: bool);
    /// Carries a broadcast made on this node to the other nodes' subscribers.
    fn publish(&self, origin: Origin, key: &str, message: &Bytes);
    /// Subscribers on the other nodes, as last summed (`None` until known).
    fn remote_subscribers(&self) -> Option<i64>;
    /// `None` when the broker is reachable; otherwise why not, for `/health`.
    fn degraded(&self) -> Option<String>;
    /// Leaves the cluster: unsubscribes, withdraws this node's count, closes the connections.
    fn shutdown(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// The registry's side: delivery of broadcasts made on other nodes, to local subscribers only.
pub(crate) trait Inbound: Send + Sync {
    /// To the local SSE subscribers of the channel `key`.
    fn deliver_channel(&self, origin: Origin, key: &str, message: &[u8]);
    /// To the local signalhubws clients of the app `key` belongs to.
    fn deliver_app(&self, key: &str, message: &[u8]);
    /// This node's subscribers, as `GET /` counts them.
    fn local_subscribers(&self) -> i64;
    /// The apps this node has signalhubws clients for.
    fn local_apps(&self) -> Vec<String>;
}

/// A node's id: random, 16 hex digits, new at every start (a restarted node is a new node).
pub(crate) fn new_node_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A broadcast as it travels between nodes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub node: &'a str,
    /// When the sending node published it, in microseconds since the Unix epoch.
    pub sent_micros: u64,
    pub origin: Origin,
    pub key: &'a str,
    pub message: &'a [u8],
}

/// Why bytes from the broker are not an [`Envelope`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    #[error("no header line")]
    NoHeader,
    #[error("unknown envelope version {0:?}")]
    Version(String),
    #[error("malformed header {0:?}")]
    Header(String),
    #[error("the key is {declared} bytes but only {available} follow the header")]
    ShortKey { declared: usize, available: usize },
    #[error("the key is not UTF-8")]
    KeyNotUtf8,
}

/// The envelope format's version, the header's first word.
const VERSION: &str = "sh1";

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Envelope<'_> {
    /// `sh1 <node> <sent_micros> <h|w> <key length>\n<key><message>`.
    pub(crate) fn encode(&self) -> Bytes {
        let origin = match self.origin {
            Origin::Http => 'h',
            Origin::WebSocket => 'w',
        };
        let header = format!(
            "{VERSION} {} {} {origin} {}\n",
            self.node,
            self.sent_micros,
            self.key.len()
        );
        let mut out = BytesMut::with_capacity(header.len() + self.key.len() + self.message.len());
        out.put_slice(header.as_bytes());
        out.put_slice(self.key.as_bytes());
        out.put_slice(self.message);
        out.freeze()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
        // The header is short; a longer first line is not ours.
        let newline = bytes
            .iter()
            .take(128)
            .position(|&b| b == b'\n')
            .ok_or(EnvelopeError::NoHeader)?;
        let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| {
            EnvelopeError::Header(String::from_utf8_lossy(&bytes[..newline]).into())
        })?;
        let bad = || EnvelopeError::Header(header.to_string());
        let mut words = header.split(' ');
        let version = words.next().ok_or_else(bad)?;
        if version != VERSION {
            return Err(EnvelopeError::Version(version.to_string()));
        }
        let node = words.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
        let sent_micros = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let origin = match words.next() {
            Some("h") => Origin::Http,
            Some("w") => Origin::WebSocket,
            _ => return Err(bad()),
        };
        let key_len: usize = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        if words.next().is_some() {
            return Err(bad());
        }
        let rest = &bytes[newline + 1..];
        if rest.len() < key_len {
            return Err(EnvelopeError::ShortKey {
                declared: key_len,
                available: rest.len(),
            });
        }
        let key = std::str::from_utf8(&rest[..key_len]).map_err(|_| EnvelopeError::KeyNotUtf8)?;
        Ok(Envelope {
            node,
            sent_micros,
            origin,
            key,
            message: &rest[key_len..],
        })
    }
}

/// The app a channel key belongs to (`<app>/<channel>`: apps have no `/`).
pub(crate) fn app_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(app, _)| app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_any_key_and_message() {
        let key = "app/a channel\nwith \u{e9} and / and spaces";
        let message = b"{\"x\":\"\\n\"}\n\0 raw";
        let envelope = Envelope {
            node: "00ff00ff00ff00ff",
            sent_micros: 1_700_000_000_123_456,
            origin: Origin::WebSocket,
            key,
            message,
        };
        let bytes = envelope.encode();
        assert_eq!(Envelope::decode(&bytes), Ok(envelope));
    }

    #[test]
    fn hostile_envelopes_are_refused_precisely() {
        assert_eq!(
            Envelope::decode(b"no newline"),
            Err(EnvelopeError::NoHeader)
        );
        assert_eq!(
            Envelope::decode(b"sh9 n 1 h 0\n"),
            Err(EnvelopeError::Version("sh9".into()))
        );
        assert!(matches!(
            Envelope::decode(b"sh1 n 1 x 0\n"),
            Err(EnvelopeError::Header(_))
        ));
        assert!(matches!(
            Envelope::decode(b"sh1 n 1 h 0 extra\n"),
            Err(EnvelopeError::Header(_))
        ));
        assert_eq!(
            Envelope::decode(b"sh1 n 1 h 99\nab"),
            Err(EnvelopeError::ShortKey {
                declared: 99,
                available: 2
            })
        );
        assert_eq!(
            Envelope::decode(b"sh1 n 1 h 2\n\xff\xfe{}"),
            Err(EnvelopeError::KeyNotUtf8)
        );
        assert_eq!(
            Envelope::decode(&[b'a'; 300]),
            Err(EnvelopeError::NoHeader),
            "a long first line is not searched to its end"
        );
    }

    #[test]
    fn app_is_the_key_up_to_the_first_slash() {
        assert_eq!(app_of("app/ch/with/slashes"), "app");
        assert_eq!(app_of("app"), "app");
    }
}
