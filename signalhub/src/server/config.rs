//! How a hub is configured: every limit, timeout and option `signalhub listen` sets, with the
//! defaults its flags show, and the connection limit derived from the process's open-file limit.

use std::path::PathBuf;
use std::time::Duration;

use super::access::Access;
use super::ice::IceServers;
use super::redis_broker::RedisConfig;

/// How the hub behaves. `Default` gives the values the `signalhub listen` flags default to.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Each broadcast reaches at most this many SSE subscribers of its channel, chosen at random
    /// (`-m`). `None`: all of them.
    pub max_broadcasts: Option<usize>,
    /// The largest POST body (and WebSocket message) accepted; larger gets `413`. JS signalhub
    /// accepts bodies under 65 536 bytes.
    pub max_body_bytes: usize,
    /// The longest app or channel name; longer gets `414`.
    pub max_name_bytes: usize,
    /// The longest request target; longer gets `414`.
    pub max_target_bytes: usize,
    /// The most channels one subscribe may name; more gets `400`.
    pub max_channels_per_subscribe: usize,
    /// How often each SSE subscription gets the `:heartbeat signal` comment, and each WebSocket a ping.
    pub heartbeat: Duration,
    /// A subscriber is dropped when this many messages wait in its queue...
    pub queue_max_messages: usize,
    /// ...or this many bytes.
    pub queue_max_bytes: usize,
    /// Bytes queued across all subscribers. Past it, subscribers that are behind (holding more
    /// than an eighth of their own queue limit) are dropped, at their next message or within a
    /// second; subscribers that keep up are still served.
    pub queued_bytes_budget: usize,
    /// Open connections in all; `0` for no limit. Past it, new connections get `503` (and
    /// `GET /health` and `GET /metrics` are still answered). The default, from
    /// [`default_max_connections`], fits the process's open-file limit with room to spare.
    pub max_connections: usize,
    /// Open connections from one address (IPv6: one /64); `0` for no limit. Past it, `429`.
    pub max_connections_per_ip: usize,
    /// Broadcasts (POSTs and WebSocket frames) per second from one address; `0` for no limit.
    /// Past it, `429` with `Retry-After`.
    pub broadcasts_per_sec: u32,
    /// How many broadcasts one address may send in a burst.
    pub broadcast_burst: u32,
    /// How long a client may take to send a request's headers, or a POST's body.
    pub request_timeout: Duration,
    /// How long a write to a client may wait for the client to read before the connection is
    /// closed (every path: streams, responses, files, WebSockets).
    pub write_timeout: Duration,
    /// On shutdown, how long open connections get to finish before they are closed.
    pub shutdown_grace: Duration,
    /// No per-message logs (subscribe, broadcast).
    pub quiet: bool,
    /// The hub runs behind one reverse proxy that appends the client's address to
    /// `X-Forwarded-For`: broadcasts are rate-limited by that address (the header's last entry),
    /// and the per-address connection limit is off, since every connection comes from the proxy.
    /// Leave it off when clients reach the hub directly: they could then claim any address.
    pub trust_forwarded_for: bool,
    /// A directory of static files for browsers (`--web DIR`): `GET /` answers its `index.html`
    /// when the `Accept` header prefers HTML (the info JSON otherwise), and `GET /<path>` its files.
    /// The API's paths (`/v1/…`, `/health`, `/metrics`) are never shadowed. `None`: no files.
    pub web_root: Option<PathBuf>,
    /// STUN/TURN servers handed out at `GET /ice-servers`, TURN ones with short-lived
    /// credentials. `None`: that path answers `404`.
    pub ice_servers: Option<IceServers>,
    /// Makes this hub one node of a cluster: every hub started with the same Redis serves the
    /// same subscribers (see `redis_broker.rs`). `None`: a single hub.
    pub redis: Option<RedisConfig>,
    /// Who may use the hub: browser origins, apps, tokens (see `access.rs`). Default: everyone.
    pub access: Access,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_broadcasts: None,
            max_body_bytes: 64 * 1024 - 1,
            max_name_bytes: 256,
            max_target_bytes: 4096,
            max_channels_per_subscribe: 64,
            heartbeat: Duration::from_secs(30),
            queue_max_messages: 1024,
            queue_max_bytes: 512 * 1024,
            queued_bytes_budget: 256 * 1024 * 1024,
            max_connections: default_max_connections(),
            max_connections_per_ip: 1024,
            broadcasts_per_sec: 500,
            broadcast_burst: 1000,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            quiet: false,
            trust_forwarded_for: false,
            web_root: None,
            ice_servers: None,
            redis: None,
            access: Access::default(),
        }
    }
}

/// Connections the hub may hold at most, given this process's open-file limit (its soft limit,
/// as it stands when called: `signalhub listen` raises it to the hard limit first). Each
/// connection is one file; the rest is kept for what the hub opens besides: refusals answered
/// while full (up to [`MAX_REFUSALS`] at once), `/health` and `/metrics` probes, files served with
/// `--web`, a broker connection, the runtime's own descriptors. 100 000 when the limit cannot be read.
pub fn default_max_connections() -> usize {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => {
            let soft = usize::try_from(soft).unwrap_or(usize::MAX);
            let reserve = (MAX_REFUSALS + 256).max(soft / 16);
            soft.saturating_sub(reserve).max(16)
        }
        Ok(_) => 1_000_000,
        Err(_) => 100_000,
    }
}

/// Connections past a limit answered at once at most; beyond that they are closed unanswered.
pub const MAX_REFUSALS: usize = 256;
