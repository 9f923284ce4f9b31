//! The cluster's broker on Redis: every node started with the same Redis is one logical hub.
//!
//! - Broadcasts travel by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7), so the same code
//!   runs on one Redis or a Redis Cluster, where a shard channel lives on one node instead of being
//!   copied to every node as classic `PUBLISH` is. A channel's SSE subscribers listen on
//!   `signalhub:c:<app>/<channel>`, an app's signalhubws clients on `signalhub:a:<app>`.
//! - A node subscribes only to the topics it has local subscribers for, and unsubscribes when the
//!   last one leaves. A broadcast costs one `SPUBLISH`, plus one to its app's topic when some other
//!   node has signalhubws clients of that app (nodes tell each other on `signalhub:control` at
//!   once, and in their records every second).
//! - Each node keeps a record, `{signalhub}:node:<id>` (its subscriber count and the apps it has
//!   signalhubws clients for), that expires unless refreshed, and lists itself in
//!   `{signalhub}:nodes`; summing the live records gives `GET /` the cluster's count. The braces
//!   keep these keys in one hash slot, so one `MGET` reads them on a Redis Cluster too.
//! - Redis pub/sub is at-most-once: what is published while a node is cut off from Redis does not
//!   reach it. While Redis is away each node keeps serving its own subscribers (local delivery
//!   never goes through Redis), drops and counts what it cannot publish, says `degraded` in
//!   `/health`, reconnects with a backoff capped at 2 s and subscribes again to every topic it needs.
//! - Publishes go out in order, in pipelined batches, from one task, so each publisher's messages
//!   reach the other nodes in the order it sent them; a publish is never retried (a retry after
//!   a lost reply could deliver a message twice).
//!
//! fred is the client: it speaks RESP, reconnects, and routes sharded commands on a Redis Cluster.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface, SetsInterface};
use fred::types::config::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::{Builder, Expiration, Value};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::broker::{app_of, now_micros, Broker, Envelope, Inbound, Origin, Topic};
use super::metrics::ClusterMetrics;

/// How a node joins a cluster (`--redis`).
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// How often a node refreshes its record and re-reads the others'.
    pub report_every: Duration,
    /// How long a node's record outlives its last refresh: a node that died leaves the count
    /// within this time.
    pub record_ttl: Duration,
}

impl std::fmt::Debug for RedisConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = match url::Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &shown)
            .field("report_every", &self.report_every)
            .field("record_ttl", &self.record_ttl)
            .finish()
    }
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--redis {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot start the Redis client: {0}")]
    Client(String),
}

impl RedisConfig {
    /// A configuration with the default timings, its URL checked.
    pub fn new(url: &str) -> Result<RedisConfig, ClusterError> {
        Config::from_url(url).map_err(|err| ClusterError::Url {
            url: url.to_string(),
            reason: err.details().to_string(),
        })?;
        Ok(RedisConfig {
            url: url.to_string(),
            report_every: Duration::from_secs(1),
            record_ttl: Duration::from_secs(5),
        })
    }
}

const PREFIX: &str = "signalhub";
/// Publishes waiting for Redis at most, and their bytes; past either (Redis slow or away) they
/// are dropped and counted, so a slow Redis cannot grow the hub's memory.
const PUBLISH_QUEUE: usize = 16 * 1024;
const PUBLISH_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Publishes sent in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// Subscription changes in flight at once while catching up (e.g. after a reconnect).
const SUBSCRIBE_CONCURRENCY: usize = 64;

fn topic_channel(topic: Topic<'_>) -> String {
    match topic {
        Topic::Channel(key) => format!("{PREFIX}:c:{key}"),
        Topic::App(app) => format!("{PREFIX}:a:{app}"),
    }
}

fn control_channel() -> String {
    format!("{PREFIX}:control")
}

fn nodes_key() -> String {
    format!("{{{PREFIX}}}:nodes")
}

fn node_key(node: &str) -> String {
    format!("{{{PREFIX}}}:node:{node}")
}

/// What each node says about itself in Redis.
#[derive(Serialize, Deserialize, Default)]
struct NodeRecord {
    subscribers: i64,
    #[serde(default)]
    ws_apps: Vec<String>,
}

/// State shared by the broker's handle and its tasks.
struct Shared {
    node: String,
    metrics: ClusterMetrics,
    /// Subscribers on the other nodes; -1 until first summed.
    remote_subscribers: AtomicI64,
    /// Apps that have signalhubws clients on some other node.
    remote_ws_apps: RwLock<HashSet<String>>,
    /// Apps other nodes announced on the control channel, and when: kept until their records,
    /// refreshed every second, have had time to say so too.
    noted_ws_apps: Mutex<HashMap<String, Instant>>,
    /// When Redis was last found unreachable, while it still is.
    down_since: Mutex<Option<Instant>>,
    subscriber_up: AtomicBool,
    publisher_up: AtomicBool,
    /// Bytes of the publishes waiting for Redis.
    queued_bytes: AtomicUsize,
}

impl Shared {
    fn set_up(&self, flag: &AtomicBool, up: bool) {
        // One lock around the flag, the gauge and the health: the subscriber's and the
        // publisher's tasks both call this, and whichever comes last must see the other's flag
        // (found by the cluster benchmark: a node left saying "degraded" while connected).
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        flag.store(up, Ordering::Relaxed);
        let all_up =
            self.subscriber_up.load(Ordering::Relaxed) && self.publisher_up.load(Ordering::Relaxed);
        self.metrics.redis_connected.set(i64::from(all_up));
        match (all_up, down.is_some()) {
            (true, true) => {
                tracing::info!("cluster: Redis reachable again");
                *down = None;
            }
            (false, false) => {
                tracing::warn!(
                    "cluster: Redis unreachable: serving local subscribers only, reconnecting"
                );
                *down = Some(Instant::now());
            }
            _ => {}
        }
    }
}

/// A change of interest in one topic (`app` is set for an app's topic).
struct Interest {
    channel: String,
    app: Option<String>,
    wanted: bool,
}

/// The Redis broker: a handle the registry calls, and the tasks that talk to Redis.
pub(crate) struct RedisBroker {
    shared: Arc<Shared>,
    publishes: mpsc::Sender<(String, Bytes)>,
    interest: mpsc::UnboundedSender<Interest>,
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    publisher: Client,
    subscriber: Client,
}

fn builder(config: &RedisConfig) -> Result<Builder, ClusterError> {
    let redis = Config::from_url(&config.url).map_err(|err| ClusterError::Url {
        url: config.url.clone(),
        reason: err.details().to_string(),
    })?;
    let mut builder = Builder::from_config(redis);
    builder
        // Never give up; back off from 100 ms to at most 2 s between attempts.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .set_connection_config(ConnectionConfig {
            connection_timeout: Duration::from_secs(2),
            internal_command_timeout: Duration::from_secs(2),
            // A publish that may have reached Redis is not sent again: no duplicates.
            max_command_attempts: 1,
            ..ConnectionConfig::default()
        })
        .set_performance_config(PerformanceConfig {
            default_command_timeout: Duration::from_secs(3),
            // Messages from Redis wait here for the receiving task; it only copies them into
            // outboxes, so a deep buffer is rarely touched.
            broadcast_channel_capacity: 8192,
            ..PerformanceConfig::default()
        });
    Ok(builder)
}

impl RedisBroker {
    /// Starts the clients and the tasks. Redis need not be reachable yet: the node serves its
    /// own subscribers meanwhile and joins the cluster when it is.
    pub(crate) fn start(
        config: &RedisConfig,
        node: String,
        metrics: ClusterMetrics,
        local: Arc<dyn Inbound>,
    ) -> Result<Arc<RedisBroker>, ClusterError> {
        let builder = builder(config)?;
        let publisher = builder
            .build()
            .map_err(|err| ClusterError::Client(err.to_string()))?;
        // A connection of its own for subscriptions (a subscribed connection takes no other
        // commands); a plain client, since this broker tracks and restores its subscriptions
        // itself (fred's subscriber client would keep a second copy of every channel name).
        let subscriber = builder
            .build()
            .map_err(|err| ClusterError::Client(err.to_string()))?;
        let shared = Arc::new(Shared {
            node,
            metrics,
            remote_subscribers: AtomicI64::new(-1),
            remote_ws_apps: RwLock::new(HashSet::new()),
            noted_ws_apps: Mutex::new(HashMap::new()),
            down_since: Mutex::new(Some(Instant::now())),
            subscriber_up: AtomicBool::new(false),
            publisher_up: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
        });
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        // Listeners first, so no message or connection event is missed.
        let messages = subscriber.message_rx();
        let subscriber_events = (subscriber.reconnect_rx(), subscriber.error_rx());
        let publisher_events = (publisher.reconnect_rx(), publisher.error_rx());
        // The connection tasks run (and reconnect) until `quit`; their handles are not needed.
        drop(publisher.connect());
        drop(subscriber.connect());
        let tasks = vec![
            tokio::spawn(receive(
                shared.clone(),
                messages,
                local.clone(),
                stop.clone(),
            )),
            tokio::spawn(publish(
                shared.clone(),
                publisher.clone(),
                publish_rx,
                stop.clone(),
            )),
            tokio::spawn(subscribe(
                shared.clone(),
                subscriber.clone(),
                publisher.clone(),
                interest_rx,
                subscriber_events,
                stop.clone(),
            )),
            tokio::spawn(report(
                shared.clone(),
                publisher.clone(),
                publisher_events,
                local,
                config.report_every,
                config.record_ttl,
                stop.clone(),
            )),
        ];
        Ok(Arc::new(RedisBroker {
            shared,
            publishes: publish_tx,
            interest: interest_tx,
            stop,
            tasks: Mutex::new(tasks),
            publisher,
            subscriber,
        }))
    }

    fn enqueue(&self, channel: String, payload: Bytes) {
        let len = payload.len();
        let queued = &self.shared.queued_bytes;
        if !self.shared.publisher_up.load(Ordering::Relaxed) {
            self.shared.metrics.publishes_dropped.inc();
            return;
        }
        if queued.fetch_add(len, Ordering::Relaxed) + len > PUBLISH_QUEUE_BYTES {
            queued.fetch_sub(len, Ordering::Relaxed);
            self.shared.metrics.publishes_dropped.inc();
            return;
        }
        if self.publishes.try_send((channel, payload)).is_err() {
            queued.fetch_sub(len, Ordering::Relaxed);
            self.shared.metrics.publishes_dropped.inc();
        }
    }
}

impl Broker for RedisBroker {
    fn set_interest(&self, topic: Topic<'_>, wanted: bool) {
        let app = match topic {
            Topic::App(app) => Some(app.to_string()),
            Topic::Channel(_) => None,
        };
        let _ = self.interest.send(Interest {
            channel: topic_channel(topic),
            app,
            wanted,
        });
    }

    fn publish(&self, origin: Origin, key: &str, message: &Bytes) {
        let envelope = Envelope {
            node: &self.shared.node,
            sent_micros: now_micros(),
            origin,
            key,
            message,
        }
        .encode();
        self.enqueue(topic_channel(Topic::Channel(key)), envelope.clone());
        let app = app_of(key);
        let remote_ws = self
            .shared
            .remote_ws_apps
            .read()
            .map(|apps| apps.contains(app))
            .unwrap_or(false);
        if remote_ws {
            self.enqueue(topic_channel(Topic::App(app)), envelope);
        }
    }

    fn remote_subscribers(&self) -> Option<i64> {
        let count = self.shared.remote_subscribers.load(Ordering::Relaxed);
        (count >= 0).then_some(count)
    }

    fn degraded(&self) -> Option<String> {
        let down = self
            .shared
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        down.map(|since| {
            format!(
                "degraded: Redis unreachable for {:.0} s; serving this node's subscribers only",
                since.elapsed().as_secs_f64()
            )
        })
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.stop.cancel();
            let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            for task in tasks {
                let _ = task.await;
            }
            if self.publisher.is_connected() {
                // Withdraw this node's count before it goes.
                let node = &self.shared.node;
                let withdraw = async {
                    let _: Result<i64, _> = self.publisher.del(node_key(node)).await;
                    let _: Result<i64, _> = self.publisher.srem(nodes_key(), node.as_str()).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), withdraw).await;
            }
            if self.subscriber.is_connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    // No channel named: every shard channel of this connection.
                    self.subscriber.sunsubscribe(Vec::<String>::new()),
                )
                .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = self.subscriber.quit().await;
                let _ = self.publisher.quit().await;
            })
            .await;
        })
    }
}

/// Messages from Redis to local subscribers.
async fn receive(
    shared: Arc<Shared>,
    mut messages: broadcast::Receiver<fred::types::Message>,
    local: Arc<dyn Inbound>,
    stop: CancellationToken,
) {
    let control = control_channel();
    let channel_prefix = format!("{PREFIX}:c:");
    let app_prefix = format!("{PREFIX}:a:");
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = messages.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                shared.metrics.messages_lost.inc_by(lost);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let channel: &str = &message.channel;
        let Some(bytes) = message.value.as_bytes() else {
            shared.metrics.messages_malformed.inc();
            continue;
        };
        if channel == control {
            note_control(&shared, bytes);
            continue;
        }
        let to_app = if channel.starts_with(&channel_prefix) {
            false
        } else if channel.starts_with(&app_prefix) {
            true
        } else {
            continue;
        };
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(err) => {
                shared.metrics.messages_malformed.inc();
                tracing::debug!("cluster: a message on {channel} is not an envelope: {err}");
                continue;
            }
        };
        if envelope.node == shared.node {
            // Delivered locally when it was broadcast.
            continue;
        }
        shared.metrics.messages_received.inc();
        let lag = now_micros().saturating_sub(envelope.sent_micros);
        shared.metrics.delivery_lag.observe(lag as f64 / 1e6);
        if to_app {
            local.deliver_app(envelope.key, envelope.message);
        } else {
            local.deliver_channel(envelope.origin, envelope.key, envelope.message);
        }
    }
}

/// `ws-app <node> <app>`: another node now has signalhubws clients of `app`.
fn note_control(shared: &Shared, bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let mut words = text.splitn(3, ' ');
    if let (Some("ws-app"), Some(node), Some(app)) = (words.next(), words.next(), words.next()) {
        if node != shared.node {
            if let Ok(mut apps) = shared.remote_ws_apps.write() {
                apps.insert(app.to_string());
            }
            if let Ok(mut noted) = shared.noted_ws_apps.lock() {
                noted.insert(app.to_string(), Instant::now());
            }
        }
    }
}

/// Local broadcasts to Redis, in order, in pipelined batches.
async fn publish(
    shared: Arc<Shared>,
    client: Client,
    mut queue: mpsc::Receiver<(String, Bytes)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            n = queue.recv_many(&mut batch, PUBLISH_BATCH) => n,
        };
        if received == 0 {
            return;
        }
        let bytes: usize = batch.iter().map(|(_, payload)| payload.len()).sum();
        shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if !client.is_connected() {
            shared.metrics.publishes_dropped.inc_by(batch.len() as u64);
            batch.clear();
            continue;
        }
        let pipeline = client.pipeline();
        for (channel, payload) in batch.drain(..) {
            // Queues the command in the pipeline; nothing is sent yet.
            let _: Result<(), _> = pipeline.spublish(channel, payload).await;
        }
        for result in pipeline.try_all::<Value>().await {
            if result.is_ok() {
                shared.metrics.publishes.inc();
            } else {
                shared.metrics.publishes_dropped.inc();
            }
        }
    }
}

/// Keeps the node's shard subscriptions equal to the topics it has local subscribers for,
/// across reconnections. Only the topics whose interest changed are looked at (a node may hold
/// 100 000 of them), and each topic's name is stored once, shared by the sets.
async fn subscribe(
    shared: Arc<Shared>,
    subscriber: Client,
    publisher: Client,
    mut interest: mpsc::UnboundedReceiver<Interest>,
    (mut reconnects, mut errors): (
        broadcast::Receiver<fred::types::config::Server>,
        broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    ),
    stop: CancellationToken,
) {
    // Topics with local subscribers; topics subscribed in Redis; topics that may differ.
    let mut desired: HashSet<Arc<str>> = HashSet::new();
    let mut active: HashSet<Arc<str>> = HashSet::new();
    let mut pending: HashSet<Arc<str>> = HashSet::new();
    // Apps this node gained signalhubws clients for, to announce once subscribed.
    let mut announce: HashSet<String> = HashSet::new();
    let control: Arc<str> = control_channel().into();
    desired.insert(control.clone());
    pending.insert(control.clone());
    let mut retry = tokio::time::interval(Duration::from_millis(500));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            change = interest.recv() => {
                let Some(change) = change else { return };
                apply(&mut desired, &mut pending, &mut announce, change);
                // Take every change already queued before talking to Redis.
                while let Ok(change) = interest.try_recv() {
                    apply(&mut desired, &mut pending, &mut announce, change);
                }
            }
            event = reconnects.recv() => {
                if event.is_ok() {
                    // A new connection has no subscriptions: all are to make again.
                    if !first {
                        shared.metrics.resubscriptions.inc();
                    }
                    first = false;
                    active.clear();
                    pending.extend(desired.iter().cloned());
                    shared.set_up(&shared.subscriber_up, true);
                }
            }
            event = errors.recv() => {
                if event.is_ok() && !subscriber.is_connected() {
                    shared.set_up(&shared.subscriber_up, false);
                }
            }
            _ = retry.tick() => {
                let up = subscriber.is_connected();
                if up != shared.subscriber_up.load(Ordering::Relaxed) {
                    if up {
                        active.clear();
                        pending.extend(desired.iter().cloned());
                    }
                    shared.set_up(&shared.subscriber_up, up);
                }
            }
        }
        if pending.is_empty() || !subscriber.is_connected() {
            continue;
        }
        let changes: Vec<(Arc<str>, bool)> = pending
            .drain()
            .filter_map(|channel| {
                let wanted = desired.contains(&channel);
                (wanted != active.contains(&channel)).then_some((channel, wanted))
            })
            .collect();
        // One channel per command: on a Redis Cluster, channels of one SSUBSCRIBE must share a slot.
        let results: Vec<(Arc<str>, bool, bool)> = futures_util::stream::iter(changes)
            .map(|(channel, subscribe)| {
                let subscriber = subscriber.clone();
                async move {
                    let name = channel.to_string();
                    let ok = if subscribe {
                        subscriber.ssubscribe(name).await.is_ok()
                    } else {
                        subscriber.sunsubscribe(name).await.is_ok()
                    };
                    (channel, subscribe, ok)
                }
            })
            .buffer_unordered(SUBSCRIBE_CONCURRENCY)
            .collect()
            .await;
        for (channel, subscribe, ok) in results {
            match (subscribe, ok) {
                (true, true) => {
                    active.insert(channel);
                }
                (false, true) => {
                    active.remove(&channel);
                }
                // Tried again at the next change or tick.
                _ => {
                    pending.insert(channel);
                }
            }
        }
        // The control channel is the node's own, not a topic of subscribers.
        let topics = active.len() - usize::from(active.contains(&control));
        shared.metrics.redis_subscriptions.set(topics as i64);
        // Now that this node hears its apps' topics, tell the others to publish there.
        let ready: Vec<String> = announce
            .iter()
            .filter(|app| active.contains(topic_channel(Topic::App(app)).as_str()))
            .cloned()
            .collect();
        for app in ready {
            let note = format!("ws-app {} {app}", shared.node);
            if publisher
                .spublish::<Value, _, _>(control.to_string(), note)
                .await
                .is_ok()
            {
                announce.remove(&app);
            }
        }
    }
}

fn apply(
    desired: &mut HashSet<Arc<str>>,
    pending: &mut HashSet<Arc<str>>,
    announce: &mut HashSet<String>,
    change: Interest,
) {
    let Interest {
        channel,
        app,
        wanted,
    } = change;
    let channel: Arc<str> = channel.into();
    if wanted {
        desired.insert(channel.clone());
        if let Some(app) = app {
            announce.insert(app);
        }
    } else {
        desired.remove(&channel);
        if let Some(app) = app {
            announce.remove(&app);
        }
    }
    pending.insert(channel);
}

/// Every `every`: refreshes this node's record, sums the live records for the cluster's count,
/// and learns which apps have signalhubws clients elsewhere.
async fn report(
    shared: Arc<Shared>,
    client: Client,
    (mut reconnects, mut errors): (
        broadcast::Receiver<fred::types::config::Server>,
        broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    ),
    local: Arc<dyn Inbound>,
    every: Duration,
    ttl: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            event = reconnects.recv() => {
                if event.is_ok() {
                    shared.set_up(&shared.publisher_up, true);
                }
            }
            event = errors.recv() => {
                if event.is_ok() && !client.is_connected() {
                    shared.set_up(&shared.publisher_up, false);
                }
                continue;
            }
        }
        let up = client.is_connected();
        if up != shared.publisher_up.load(Ordering::Relaxed) {
            shared.set_up(&shared.publisher_up, up);
        }
        if !up {
            continue;
        }
        let record = NodeRecord {
            subscribers: local.local_subscribers(),
            ws_apps: local.local_apps(),
        };
        let record = serde_json::to_string(&record).unwrap_or_default();
        let refreshed = async {
            let _: () = client
                .set(
                    node_key(&shared.node),
                    record,
                    Some(Expiration::PX(ttl_ms)),
                    None,
                    false,
                )
                .await?;
            let _: i64 = client.sadd(nodes_key(), shared.node.as_str()).await?;
            let nodes: Vec<String> = client.smembers(nodes_key()).await?;
            let keys: Vec<String> = nodes.iter().map(|node| node_key(node)).collect();
            let records: Vec<Option<String>> = if keys.is_empty() {
                Vec::new()
            } else {
                client.mget(keys).await?
            };
            Ok::<_, fred::error::Error>((nodes, records))
        };
        let Ok((nodes, records)) = refreshed.await else {
            continue;
        };
        let mut remote = 0i64;
        let mut remote_apps = HashSet::new();
        if let Ok(mut noted) = shared.noted_ws_apps.lock() {
            noted.retain(|_, at| at.elapsed() < every * 3);
            remote_apps.extend(noted.keys().cloned());
        }
        let mut gone = Vec::new();
        for (node, record) in nodes.iter().zip(records) {
            match record.and_then(|r| serde_json::from_str::<NodeRecord>(&r).ok()) {
                Some(record) if *node != shared.node => {
                    remote += record.subscribers.max(0);
                    remote_apps.extend(record.ws_apps);
                }
                Some(_) => {}
                None => gone.push(node.clone()),
            }
        }
        let live = nodes.len() - gone.len();
        if !gone.is_empty() {
            // Records of nodes that died have expired: forget them.
            let _: Result<i64, _> = client.srem(nodes_key(), gone).await;
        }
        shared.remote_subscribers.store(remote, Ordering::Relaxed);
        shared
            .metrics
            .cluster_subscribers
            .set(remote + local.local_subscribers());
        shared.metrics.nodes.set(live as i64);
        if let Ok(mut apps) = shared.remote_ws_apps.write() {
            *apps = remote_apps;
        }
    }
}
