//! The hub's counters and gauges, served at `GET /metrics` in the Prometheus (OpenMetrics) text
//! format.
//!
//! Hot-path metrics are plain atomics handed out once at start-up; only rejections, which are
//! rare, go through a labelled family lookup.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why the hub refused a request, a connection or a frame: the `reason` label of
/// `signalhub_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// A POST body or WebSocket frame over the size limit (413).
    BodyTooLarge,
    /// A POST body with a raw CR or LF (400).
    BodyHasNewline,
    /// An empty POST body (400).
    EmptyBody,
    /// A message that is JSON `null`, which ends JS clients' streams (400).
    NullMessage,
    /// The body could not be read (400).
    BadBody,
    /// An app or channel name over the limit (414).
    NameTooLong,
    /// A request target over the limit (414).
    UriTooLong,
    /// Too many channels in one subscribe (400).
    TooManyChannels,
    /// A target under `/v1/` that names no app or channel (400).
    MalformedPath,
    /// Over the broadcast rate of one address (429).
    RateLimited,
    /// Over the connection limit of one address (429).
    TooManyConnectionsPerIp,
    /// Over the hub's connection limit (503).
    TooManyConnections,
    /// A body that did not arrive in time (408), or a TLS handshake that did not finish.
    Timeout,
    /// A WebSocket upgrade that was not valid (400).
    BadWebSocket,
    /// A WebSocket frame that is not a signalhubws message.
    BadFrame,
    /// A subscribe request that declares a body (400): a subscription carries none.
    BodyOnSubscribe,
    /// Bytes sent up a subscription stream, where the client has nothing to send: the connection
    /// is closed.
    UnexpectedBytes,
    /// A request whose framing is ambiguous, such as `Transfer-Encoding` given twice (400).
    AmbiguousFraming,
    /// A client that read nothing for the write timeout: the connection is closed.
    WriteTimeout,
    /// A browser request from an origin not in `--allow-origin` (403).
    OriginNotAllowed,
    /// An app not in `--apps` (404).
    AppNotServed,
    /// No token, on a hub that needs one (401).
    TokenMissing,
    /// A token that is malformed or not signed by a trusted key (403).
    TokenInvalid,
    /// A token past its expiry (403).
    TokenExpired,
    /// A token for another app (403).
    TokenWrongApp,
}

impl Rejection {
    /// Every reason, so that each is exported (at zero) from the start.
    pub const ALL: [Rejection; 25] = [
        Rejection::BodyTooLarge,
        Rejection::BodyHasNewline,
        Rejection::EmptyBody,
        Rejection::NullMessage,
        Rejection::BadBody,
        Rejection::NameTooLong,
        Rejection::UriTooLong,
        Rejection::TooManyChannels,
        Rejection::MalformedPath,
        Rejection::RateLimited,
        Rejection::TooManyConnectionsPerIp,
        Rejection::TooManyConnections,
        Rejection::Timeout,
        Rejection::BadWebSocket,
        Rejection::BadFrame,
        Rejection::BodyOnSubscribe,
        Rejection::UnexpectedBytes,
        Rejection::AmbiguousFraming,
        Rejection::WriteTimeout,
        Rejection::OriginNotAllowed,
        Rejection::AppNotServed,
        Rejection::TokenMissing,
        Rejection::TokenInvalid,
        Rejection::TokenExpired,
        Rejection::TokenWrongApp,
    ];

    /// The label value, in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BodyHasNewline => "body_has_newline",
            Rejection::EmptyBody => "empty_body",
            Rejection::NullMessage => "null_message",
            Rejection::BadBody => "bad_body",
            Rejection::NameTooLong => "name_too_long",
            Rejection::UriTooLong => "uri_too_long",
            Rejection::TooManyChannels => "too_many_channels",
            Rejection::MalformedPath => "malformed_path",
            Rejection::RateLimited => "rate_limited",
            Rejection::TooManyConnectionsPerIp => "too_many_connections_per_ip",
            Rejection::TooManyConnections => "too_many_connections",
            Rejection::Timeout => "timeout",
            Rejection::BadWebSocket => "bad_websocket",
            Rejection::BadFrame => "bad_frame",
            Rejection::BodyOnSubscribe => "body_on_subscribe",
            Rejection::UnexpectedBytes => "unexpected_bytes",
            Rejection::AmbiguousFraming => "ambiguous_framing",
            Rejection::WriteTimeout => "write_timeout",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::AppNotServed => "app_not_served",
            Rejection::TokenMissing => "token_missing",
            Rejection::TokenInvalid => "token_invalid",
            Rejection::TokenExpired => "token_expired",
            Rejection::TokenWrongApp => "token_wrong_app",
        }
    }
}

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabels {
    reason: Rejection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Transport {
    sse,
    /// Of the SSE streams, those hyper serves rather than the front's direct path.
    sse_hyper,
    ws,
    http,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabels {
    transport: Transport,
}

/// Every metric the hub keeps.
pub struct Metrics {
    registry: Registry,
    /// Subscriptions: (connection, channel) pairs of SSE subscribers plus WebSocket clients.
    pub(crate) subscribers: Gauge,
    /// Channels with at least one SSE subscriber.
    pub(crate) channels: Gauge,
    /// Open TCP (or TLS) connections.
    pub(crate) tcp_connections: Gauge,
    /// Open SSE streams.
    pub(crate) sse_connections: Gauge,
    /// Of them, those hyper serves (each keeps hyper's buffers: several times the direct path's
    /// memory).
    pub(crate) sse_hyper_connections: Gauge,
    /// Open WebSocket connections.
    pub(crate) ws_connections: Gauge,
    pub(crate) broadcasts_http: Counter,
    pub(crate) broadcasts_ws: Counter,
    pub(crate) messages_delivered: Counter,
    pub(crate) messages_dropped: Counter,
    pub(crate) subscribers_dropped: Counter,
    pub(crate) queued_bytes: Gauge,
    /// Failed accepts (above all, the process out of file descriptors).
    pub(crate) accept_errors: Counter,
    rejected: Family<RejectionLabels, Counter>,
    /// The cluster's metrics, when the hub is a node of one (`--redis`).
    pub(crate) cluster: Option<ClusterMetrics>,
}

/// What a node of a cluster adds to `/metrics`: `signalhub_cluster_*`.
#[derive(Clone)]
pub(crate) struct ClusterMetrics {
    /// 1 while both connections to Redis are up.
    pub(crate) redis_connected: Gauge,
    /// Broadcasts handed to Redis (one per topic published to).
    pub(crate) publishes: Counter,
    /// Broadcasts that could not be handed to Redis (down, or too slow to keep up).
    pub(crate) publishes_dropped: Counter,
    /// Broadcasts from other nodes received through Redis.
    pub(crate) messages_received: Counter,
    /// Messages from Redis lost because this node fell behind reading them.
    pub(crate) messages_lost: Counter,
    /// Messages on the hub's topics that were not envelopes.
    pub(crate) messages_malformed: Counter,
    /// From publish on one node to delivery to the outboxes of another.
    pub(crate) delivery_lag: Histogram,
    /// Times the node subscribed again to all its topics on a new connection to Redis.
    pub(crate) resubscriptions: Counter,
    /// Shard channels this node is subscribed to.
    pub(crate) redis_subscriptions: Gauge,
    /// Subscribers across the cluster, as last summed.
    pub(crate) cluster_subscribers: Gauge,
    /// Nodes with a live record.
    pub(crate) nodes: Gauge,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> ClusterMetrics {
        let registry = registry.sub_registry_with_prefix("cluster");
        let metrics = ClusterMetrics {
            redis_connected: Gauge::default(),
            publishes: Counter::default(),
            publishes_dropped: Counter::default(),
            messages_received: Counter::default(),
            messages_lost: Counter::default(),
            messages_malformed: Counter::default(),
            delivery_lag: Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
            ]),
            resubscriptions: Counter::default(),
            redis_subscriptions: Gauge::default(),
            cluster_subscribers: Gauge::default(),
            nodes: Gauge::default(),
        };
        registry.register(
            "redis_connected",
            "1 while this node's connections to Redis are up, 0 while it serves its own subscribers only",
            metrics.redis_connected.clone(),
        );
        registry.register(
            "publishes",
            "Broadcasts handed to Redis for the other nodes",
            metrics.publishes.clone(),
        );
        registry.register(
            "publishes_dropped",
            "Broadcasts that did not reach Redis (unreachable, or too slow): other nodes never got them",
            metrics.publishes_dropped.clone(),
        );
        registry.register(
            "messages_received",
            "Broadcasts from other nodes received through Redis",
            metrics.messages_received.clone(),
        );
        registry.register(
            "messages_lost",
            "Messages from Redis lost because this node fell behind reading them",
            metrics.messages_lost.clone(),
        );
        registry.register(
            "messages_malformed",
            "Messages on the hub's Redis channels that were not hub envelopes",
            metrics.messages_malformed.clone(),
        );
        registry.register_with_unit(
            "delivery_lag",
            "From a broadcast's publish on one node to its delivery on another (the nodes' clocks must agree)",
            prometheus_client::registry::Unit::Seconds,
            metrics.delivery_lag.clone(),
        );
        registry.register(
            "resubscriptions",
            "Times this node subscribed again to all its channels on a new connection to Redis",
            metrics.resubscriptions.clone(),
        );
        registry.register(
            "redis_subscriptions",
            "Redis shard channels this node is subscribed to for its subscribers (not counting its control channel)",
            metrics.redis_subscriptions.clone(),
        );
        registry.register(
            "subscribers",
            "Subscribers across the cluster, as last summed from the nodes' records",
            metrics.cluster_subscribers.clone(),
        );
        registry.register(
            "nodes",
            "Nodes with a live record in Redis",
            metrics.nodes.clone(),
        );
        metrics
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a single hub.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// The metrics of a node of a cluster: a single hub's, plus `signalhub_cluster_*`.
    pub(crate) fn with_cluster() -> Self {
        Self::build(true)
    }

    fn build(cluster: bool) -> Self {
        let mut registry = Registry::with_prefix("signalhub");
        let subscribers = Gauge::default();
        registry.register(
            "subscribers",
            "Subscriptions: (connection, channel) pairs of SSE subscribers, plus WebSocket clients",
            subscribers.clone(),
        );
        let channels = Gauge::default();
        registry.register(
            "channels",
            "Channels with at least one SSE subscriber",
            channels.clone(),
        );
        let connections = Family::<TransportLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open connections: all TCP/TLS connections (http), and of them the SSE streams (sse) and WebSockets (ws); of the SSE streams, those hyper serves (sse_hyper)",
            connections.clone(),
        );
        let gauge = |transport| {
            connections
                .get_or_create(&TransportLabels { transport })
                .clone()
        };
        let broadcasts = Family::<TransportLabels, Counter>::default();
        registry.register(
            "broadcasts",
            "Messages received for broadcast, by transport (http POST or ws frame)",
            broadcasts.clone(),
        );
        let messages_delivered = Counter::default();
        registry.register(
            "messages_delivered",
            "Messages queued to a subscriber",
            messages_delivered.clone(),
        );
        let messages_dropped = Counter::default();
        registry.register(
            "messages_dropped",
            "Messages that never reached a subscriber because it was dropped for falling behind",
            messages_dropped.clone(),
        );
        let subscribers_dropped = Counter::default();
        registry.register(
            "subscribers_dropped",
            "Subscribers disconnected because their outgoing queue was full",
            subscribers_dropped.clone(),
        );
        let queued_bytes = Gauge::default();
        registry.register(
            "queued_bytes",
            "Bytes waiting in subscribers' outgoing queues (shared messages counted once per subscriber)",
            queued_bytes.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Connections the hub failed to accept (e.g. out of file descriptors: lower --max-connections or raise the limit)",
            accept_errors.clone(),
        );
        let rejected = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "rejected",
            "Requests, connections and frames refused, by reason",
            rejected.clone(),
        );
        for reason in Rejection::ALL {
            let _ = rejected.get_or_create(&RejectionLabels { reason });
        }
        let broadcasts_http = broadcasts
            .get_or_create(&TransportLabels {
                transport: Transport::http,
            })
            .clone();
        let broadcasts_ws = broadcasts
            .get_or_create(&TransportLabels {
                transport: Transport::ws,
            })
            .clone();
        let cluster = cluster.then(|| ClusterMetrics::register(&mut registry));
        Metrics {
            cluster,
            subscribers,
            channels,
            tcp_connections: gauge(Transport::http),
            sse_connections: gauge(Transport::sse),
            sse_hyper_connections: gauge(Transport::sse_hyper),
            ws_connections: gauge(Transport::ws),
            broadcasts_http,
            broadcasts_ws,
            messages_delivered,
            messages_dropped,
            subscribers_dropped,
            queued_bytes,
            accept_errors,
            rejected,
            registry,
        }
    }

    /// Counts one refusal.
    pub(crate) fn reject(&self, reason: Rejection) {
        self.rejected
            .get_or_create(&RejectionLabels { reason })
            .inc();
    }

    /// How many refusals of one kind were counted.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected
            .get_or_create(&RejectionLabels { reason })
            .get()
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
