//! Who is subscribed to what, and fan-out to them.
//!
//! The registry is the one place that owns subscriptions. It is sharded by key so that posts to
//! different channels do not contend. Every subscriber (an SSE response or a WebSocket) has an
//! [`Outbox`]: a queue bounded in messages and bytes. A broadcast never waits for a subscriber:
//! it pushes one shared, already-framed `Bytes` into each outbox, and a subscriber whose outbox is
//! full is dropped (its connection is killed and the drop counted), so one reader that stops
//! cannot slow the others or grow the hub's memory. A global budget on queued bytes bounds the
//! sum over all outboxes as well, fairly: past it, the subscribers that are behind are dropped
//! (at their next message, and by a sweep for those that get none), while those that keep up are
//! still served.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use rand::seq::index::sample;
use slab::Slab;
use tokio_util::sync::CancellationToken;

use super::broker::{app_of, Broker, Inbound, Origin, Topic};
use super::connection::ConnectionContext;
use super::metrics::Metrics;

/// A channel key as JS signalhub keeps it: `<app>/<channel>`, raw (never percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ChannelKey(Box<str>);

impl ChannelKey {
    pub(crate) fn new(app: &str, channel: &str) -> Self {
        let mut key = String::with_capacity(app.len() + 1 + channel.len());
        key.push_str(app);
        key.push('/');
        key.push_str(channel);
        ChannelKey(key.into_boxed_str())
    }

    /// A key from a broadcast path, already `<app>/<channel>`.
    pub(crate) fn from_raw(key: String) -> Self {
        ChannelKey(key.into_boxed_str())
    }
}

/// The channel of a raw `<app>/<channel>` key: everything after the first `/`.
fn channel_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(_, channel)| channel)
}

/// Lets the registry's maps be searched with a raw key (a message from another node) without
/// building a `ChannelKey`: its hash and equality are those of the text.
impl std::borrow::Borrow<str> for ChannelKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bounds of one subscriber's outgoing queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// A subscriber holding more than this many bytes is behind: when the hub's queued bytes are
    /// over budget, subscribers that are behind are dropped, and the others still served.
    pub behind_bytes: usize,
}

impl QueueLimits {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        let max_bytes = max_bytes.max(1);
        QueueLimits {
            max_messages: max_messages.max(1),
            max_bytes,
            // One eighth of a queue: 64 KiB by default, one full write of the fast path.
            behind_bytes: max_bytes / 8,
        }
    }
}

/// What a push into an outbox did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    Queued,
    /// The outbox was full: the subscriber is now dropped, and this many messages (the queued
    /// ones and this one) will never reach it.
    Overflowed {
        lost: usize,
    },
    /// The subscriber is already closed or dropped.
    Closed,
}

/// What a subscriber's writer gets from its outbox.
#[derive(Debug)]
pub(crate) enum Next {
    Data(Bytes),
    /// The hub is shutting down and everything queued has been handed out: end the stream cleanly.
    End,
    /// The subscriber fell too far behind and was dropped: abort the connection.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Open,
    Closing,
    Dropped,
}

#[derive(Debug)]
struct OutboxState {
    queue: VecDeque<Bytes>,
    bytes: usize,
    status: Status,
    waker: Option<Waker>,
}

/// One subscriber's bounded outgoing queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    limits: QueueLimits,
    /// Cancelled when the subscriber is dropped, so that its connection is closed even while the
    /// server is blocked writing to it.
    kill: CancellationToken,
    /// Bytes queued across every outbox of the hub.
    queued_total: Arc<AtomicUsize>,
    queued_budget: usize,
}

impl Outbox {
    pub(crate) fn new(
        limits: QueueLimits,
        kill: CancellationToken,
        queued_total: Arc<AtomicUsize>,
        queued_budget: usize,
    ) -> Self {
        Outbox {
            state: Mutex::new(OutboxState {
                queue: VecDeque::new(),
                bytes: 0,
                status: Status::Open,
                waker: None,
            }),
            limits,
            kill,
            queued_total,
            queued_budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic while holding this lock leaves the queue consistent (every update is a single
        // push or pop), so a poisoned lock is safe to keep using.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one framed message without waiting.
    pub(crate) fn push(&self, message: &Bytes) -> Push {
        let mut state = self.lock();
        if state.status != Status::Open {
            return Push::Closed;
        }
        let over_own_limit = state.queue.len() >= self.limits.max_messages
            || state.bytes + message.len() > self.limits.max_bytes;
        // Past the hub's budget only those that are behind pay: a reader that keeps up holds at
        // most a burst, and is never dropped for what the others left unread.
        let over_budget = state.bytes > self.limits.behind_bytes
            && self.queued_total.load(Ordering::Relaxed) + message.len() > self.queued_budget;
        if over_own_limit || over_budget {
            return Push::Overflowed {
                lost: self.overflow(state) + 1,
            };
        }
        state.queue.push_back(message.clone());
        state.bytes += message.len();
        self.queued_total
            .fetch_add(message.len(), Ordering::Relaxed);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Push::Queued
    }

    /// Drops the subscriber, throwing its queue away; returns how many messages were in it.
    fn overflow(&self, mut state: MutexGuard<'_, OutboxState>) -> usize {
        let lost = state.queue.len();
        self.queued_total.fetch_sub(state.bytes, Ordering::Relaxed);
        state.queue = VecDeque::new();
        state.bytes = 0;
        state.status = Status::Dropped;
        let waker = state.waker.take();
        drop(state);
        self.kill.cancel();
        if let Some(waker) = waker {
            waker.wake();
        }
        lost
    }

    /// Drops the subscriber if it is behind (holds more than [`QueueLimits::behind_bytes`]);
    /// returns how many messages it lost, if it was dropped.
    fn drop_if_behind(&self) -> Option<usize> {
        let state = self.lock();
        (state.status == Status::Open && state.bytes > self.limits.behind_bytes)
            .then(|| self.overflow(state))
    }

    /// Asks the writer to end cleanly once the queue is empty (hub shutdown).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if state.status == Status::Open {
            state.status = Status::Closing;
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Takes the next message, waiting for one.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        self.poll_take(cx, 0)
    }

    /// Takes every queued message up to `max_bytes` (at least one) as one buffer, waiting for one.
    /// A reader that fell behind so catches up in few writes instead of one write a message.
    pub(crate) fn poll_batch(&self, cx: &mut Context<'_>, max_bytes: usize) -> Poll<Next> {
        self.poll_take(cx, max_bytes)
    }

    /// Moves queued messages (at least one, then up to `max_bytes` and `max_items`) into `out`
    /// without copying them, waiting for one. `Next::Data` carries an empty buffer: the data is
    /// in `out`. For writers that send several buffers in one vectored write.
    pub(crate) fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Bytes>,
        max_bytes: usize,
        max_items: usize,
    ) -> Poll<Next> {
        let mut state = self.lock();
        if state.status == Status::Dropped {
            return Poll::Ready(Next::Dropped);
        }
        if state.queue.is_empty() {
            return Self::when_empty(&mut state, cx);
        }
        let mut taken = 0;
        while let Some(next) = state.queue.front() {
            if !out.is_empty() && (taken + next.len() > max_bytes || out.len() >= max_items) {
                break;
            }
            taken += next.len();
            if let Some(next) = state.queue.pop_front() {
                out.push(next);
            }
        }
        state.bytes -= taken;
        self.queued_total.fetch_sub(taken, Ordering::Relaxed);
        Poll::Ready(Next::Data(Bytes::new()))
    }

    /// What a writer gets from an empty queue: the end, the drop, or a wait for the next push.
    fn when_empty(state: &mut OutboxState, cx: &mut Context<'_>) -> Poll<Next> {
        match state.status {
            Status::Open => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Status::Closing => Poll::Ready(Next::End),
            Status::Dropped => Poll::Ready(Next::Dropped),
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>, max_bytes: usize) -> Poll<Next> {
        let mut state = self.lock();
        let Some(first) = state.queue.pop_front() else {
            return Self::when_empty(&mut state, cx);
        };
        if state.status == Status::Dropped {
            return Poll::Ready(Next::Dropped);
        }
        let mut taken = first.len();
        let batch = if max_bytes > first.len()
            && state
                .queue
                .front()
                .is_some_and(|next| first.len() + next.len() <= max_bytes)
        {
            let mut buf = BytesMut::with_capacity(max_bytes.min(state.bytes));
            buf.put_slice(&first);
            while let Some(next) = state.queue.front() {
                if buf.len() + next.len() > max_bytes {
                    break;
                }
                buf.put_slice(next);
                taken += next.len();
                state.queue.pop_front();
            }
            buf.freeze()
        } else {
            first
        };
        state.bytes -= taken;
        self.queued_total.fetch_sub(taken, Ordering::Relaxed);
        Poll::Ready(Next::Data(batch))
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let state = self.lock();
        self.queued_total.fetch_sub(state.bytes, Ordering::Relaxed);
    }
}

type Subscribers = Slab<Arc<Outbox>>;

#[derive(Default)]
struct Shard {
    /// SSE subscribers by channel key.
    channels: HashMap<ChannelKey, Subscribers>,
    /// WebSocket subscribers by app (signalhubws clients get every channel of their app).
    apps: HashMap<Box<str>, Subscribers>,
}

/// Fan-out options fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FanOut {
    /// At most this many SSE subscribers of a channel get one broadcast (a random subset).
    pub max_broadcasts: Option<usize>,
}

/// The subscriptions of the whole hub.
pub(crate) struct Registry {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    fan_out: FanOut,
    pub(crate) queue_limits: QueueLimits,
    pub(crate) queued_total: Arc<AtomicUsize>,
    pub(crate) queued_budget: usize,
    /// The cluster's broker, when the hub is a node of one: told which topics have local
    /// subscribers, and handed every local broadcast after its local delivery.
    broker: std::sync::OnceLock<Arc<dyn Broker>>,
}

/// The SSE comment JS signalhub writes to keep idle streams open.
pub(crate) const HEARTBEAT: &[u8] = b":heartbeat signal\n\n";

/// How many shards the registry has: enough that two cores rarely meet on one lock.
pub(crate) const SHARDS: usize = 32;

impl Registry {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        fan_out: FanOut,
        queue_limits: QueueLimits,
        queued_budget: usize,
    ) -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            metrics,
            fan_out,
            queue_limits,
            queued_total: Arc::new(AtomicUsize::new(0)),
            queued_budget,
            broker: std::sync::OnceLock::new(),
        }
    }

    /// Makes this registry one node's part of a cluster. Set once, before serving.
    pub(crate) fn set_broker(&self, broker: Arc<dyn Broker>) {
        let _ = self.broker.set(broker);
    }

    pub(crate) fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.broker.get()
    }

    fn shard(&self, name: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(name) as usize) % self.shards.len();
        self.shard_at(index)
    }

    fn shard_at(&self, index: usize) -> MutexGuard<'_, Shard> {
        // Shard maps are updated by single inserts and removes; a panic cannot leave one half-done.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new outbox for a subscriber of the given connection.
    pub(crate) fn outbox(&self, conn: &ConnectionContext) -> Arc<Outbox> {
        Arc::new(Outbox::new(
            self.queue_limits,
            conn.kill.clone(),
            self.queued_total.clone(),
            self.queued_budget,
        ))
    }

    /// Subscribed (connection, channel) pairs plus WebSocket clients, as `GET /` reports them.
    pub(crate) fn subscriber_count(&self) -> i64 {
        self.metrics.subscribers.get()
    }

    fn add(&self, key: &ChannelKey, outbox: &Arc<Outbox>) -> usize {
        let mut shard = self.shard(&key.0);
        let subscribers = shard.channels.entry(key.clone()).or_insert_with(|| {
            self.metrics.channels.inc();
            if let Some(broker) = self.broker.get() {
                broker.set_interest(Topic::Channel(&key.0), true);
            }
            Slab::new()
        });
        self.metrics.subscribers.inc();
        subscribers.insert(outbox.clone())
    }

    fn remove(&self, key: &ChannelKey, slot: usize) {
        let mut shard = self.shard(&key.0);
        if let Some(subscribers) = shard.channels.get_mut(key) {
            if subscribers.try_remove(slot).is_some() {
                self.metrics.subscribers.dec();
            }
            if subscribers.is_empty() {
                shard.channels.remove(key);
                self.metrics.channels.dec();
                if let Some(broker) = self.broker.get() {
                    broker.set_interest(Topic::Channel(&key.0), false);
                }
            }
        }
    }

    pub(crate) fn add_ws(&self, app: &str, outbox: &Arc<Outbox>) -> usize {
        let mut shard = self.shard(app);
        let subscribers = shard.apps.entry(app.into()).or_insert_with(|| {
            if let Some(broker) = self.broker.get() {
                broker.set_interest(Topic::App(app), true);
            }
            Slab::new()
        });
        self.metrics.subscribers.inc();
        subscribers.insert(outbox.clone())
    }

    pub(crate) fn remove_ws(&self, app: &str, slot: usize) {
        let mut shard = self.shard(app);
        if let Some(subscribers) = shard.apps.get_mut(app) {
            if subscribers.try_remove(slot).is_some() {
                self.metrics.subscribers.dec();
            }
            if subscribers.is_empty() {
                shard.apps.remove(app);
                if let Some(broker) = self.broker.get() {
                    broker.set_interest(Topic::App(app), false);
                }
            }
        }
    }

    /// Delivers a POSTed body: `data: <body>\n\n` to the channel's SSE subscribers, and a
    /// signalhubws frame to the WebSocket clients of its app.
    pub(crate) fn broadcast_http(&self, key: &ChannelKey, body: Bytes) {
        self.metrics.broadcasts_http.inc();
        self.deliver_http(key, &body);
        if let Some(broker) = self.broker.get() {
            broker.publish(Origin::Http, &key.0, &body);
        }
    }

    fn deliver_http(&self, key: &ChannelKey, body: &[u8]) {
        let frame = sse_frame(body);
        self.deliver_sse(&key.0, &frame);
        self.deliver_ws_clients(&key.0, body);
    }

    /// A message of channel `key` (`<app>/<channel>`) to the signalhubws clients of its app.
    fn deliver_ws_clients(&self, key: &str, message: &[u8]) {
        let app = app_of(key);
        let shard = self.shard(app);
        if let Some(subscribers) = shard.apps.get(app) {
            let frame = ws_frame(app, channel_of(key), message);
            self.deliver(subscribers.iter().map(|(_, outbox)| outbox), &frame);
        }
    }

    /// Delivers a signalhubws frame: verbatim to every WebSocket client of `app` (the sender too, as
    /// the signalhubws server does), and its `message` to the SSE subscribers of `app/channel`.
    pub(crate) fn broadcast_ws(&self, app: &str, channel: &str, frame: Bytes, message: &[u8]) {
        self.metrics.broadcasts_ws.inc();
        {
            let shard = self.shard(app);
            if let Some(subscribers) = shard.apps.get(app) {
                self.deliver(subscribers.iter().map(|(_, outbox)| outbox), &frame);
            }
        }
        let key = ChannelKey::new(app, channel);
        self.deliver_sse(&key.0, &sse_frame(&one_line(message)));
        if let Some(broker) = self.broker.get() {
            broker.publish(Origin::WebSocket, &key.0, &Bytes::copy_from_slice(message));
        }
    }

    fn deliver_sse(&self, key: &str, frame: &Bytes) {
        let shard = self.shard(key);
        let Some(subscribers) = shard.channels.get(key) else {
            return;
        };
        match self.fan_out.max_broadcasts {
            Some(max) if max < subscribers.len() => {
                let all: Vec<&Arc<Outbox>> = subscribers.iter().map(|(_, o)| o).collect();
                let chosen = sample(&mut rand::rng(), all.len(), max);
                self.deliver(chosen.into_iter().map(|i| all[i]), frame);
            }
            _ => self.deliver(subscribers.iter().map(|(_, outbox)| outbox), frame),
        }
    }

    fn deliver<'a>(&self, outboxes: impl Iterator<Item = &'a Arc<Outbox>>, frame: &Bytes) {
        let mut delivered = 0u64;
        for outbox in outboxes {
            match outbox.push(frame) {
                Push::Queued => delivered += 1,
                Push::Overflowed { lost } => {
                    self.metrics.subscribers_dropped.inc();
                    self.metrics.messages_dropped.inc_by(lost as u64);
                }
                Push::Closed => {}
            }
        }
        self.metrics.messages_delivered.inc_by(delivered);
    }

    /// Writes the heartbeat comment to every SSE subscription in one shard: once per (connection,
    /// channel) pair, as JS signalhub's per-channel timers do. Called for each shard in turn, so
    /// the whole hub is covered once per heartbeat period without one large burst.
    pub(crate) fn heartbeat_shard(&self, index: usize) {
        let heartbeat = Bytes::from_static(HEARTBEAT);
        let shard = self.shard_at(index % self.shards.len());
        for subscribers in shard.channels.values() {
            for (_, outbox) in subscribers.iter() {
                if let Push::Overflowed { lost } = outbox.push(&heartbeat) {
                    self.metrics.subscribers_dropped.inc();
                    self.metrics.messages_dropped.inc_by(lost as u64 - 1);
                }
            }
        }
    }

    /// When the queued bytes are over the budget, drops every subscriber that is behind, so that
    /// those who stopped reading pay for the budget even when no new message comes their way.
    /// Returns how many were dropped.
    pub(crate) fn enforce_budget(&self) -> usize {
        if self.queued_total.load(Ordering::Relaxed) <= self.queued_budget {
            return 0;
        }
        let mut dropped = 0;
        for index in 0..self.shards.len() {
            let shard = self.shard_at(index);
            for subscribers in shard.channels.values().chain(shard.apps.values()) {
                for (_, outbox) in subscribers.iter() {
                    if let Some(lost) = outbox.drop_if_behind() {
                        dropped += 1;
                        self.metrics.subscribers_dropped.inc();
                        self.metrics.messages_dropped.inc_by(lost as u64);
                    }
                }
            }
        }
        dropped
    }

    /// Asks every subscriber to finish cleanly (hub shutdown).
    pub(crate) fn close_all(&self) {
        for index in 0..self.shards.len() {
            let shard = self.shard_at(index);
            for subscribers in shard.channels.values().chain(shard.apps.values()) {
                for (_, outbox) in subscribers.iter() {
                    outbox.close();
                }
            }
        }
    }
}

/// A signalhubws message on one line, for an SSE data line. The message is JSON, where a raw CR
/// or LF can only be white space between tokens: dropping them keeps the same value.
fn one_line(message: &[u8]) -> Bytes {
    if message.iter().any(|&b| b == b'\n' || b == b'\r') {
        message
            .iter()
            .copied()
            .filter(|&b| b != b'\n' && b != b'\r')
            .collect::<Vec<u8>>()
            .into()
    } else {
        Bytes::copy_from_slice(message)
    }
}

/// Broadcasts made on other nodes of the cluster, delivered here as if made here.
impl Inbound for Registry {
    fn deliver_channel(&self, origin: Origin, key: &str, message: &[u8]) {
        match origin {
            Origin::Http => self.deliver_sse(key, &sse_frame(message)),
            Origin::WebSocket => self.deliver_sse(key, &sse_frame(&one_line(message))),
        }
    }

    fn deliver_app(&self, key: &str, message: &[u8]) {
        self.deliver_ws_clients(key, message);
    }

    fn local_subscribers(&self) -> i64 {
        self.metrics.subscribers.get()
    }

    fn local_apps(&self) -> Vec<String> {
        (0..self.shards.len())
            .flat_map(|index| {
                let shard = self.shard_at(index);
                shard
                    .apps
                    .keys()
                    .map(|app| app.to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Frames a message as one SSE event: `data: <message>\n\n`.
pub(crate) fn sse_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(message.len() + 8);
    frame.put_slice(b"data: ");
    frame.put_slice(message);
    frame.put_slice(b"\n\n");
    frame.freeze()
}

/// A signalhubws frame: `{"app":…,"channel":…,"message":<body>}`. A body that is not JSON (JS
/// signalhub does not check POSTs) travels as a JSON string, so the frame always parses.
pub(crate) fn ws_frame(app: &str, channel: &str, body: &[u8]) -> Bytes {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let message = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        String::from_utf8_lossy(body).into_owned()
    } else {
        quote(&String::from_utf8_lossy(body))
    };
    Bytes::from(format!(
        "{{\"app\":{},\"channel\":{},\"message\":{}}}",
        quote(app),
        quote(channel),
        message
    ))
}

/// An SSE response's membership in its channels; leaving is done on drop, so a closed
/// connection can never stay subscribed.
pub(crate) struct Subscription {
    registry: Arc<Registry>,
    slots: Vec<(ChannelKey, usize)>,
    pub(crate) outbox: Arc<Outbox>,
    /// Counted in `sse_hyper_connections`.
    served_by_hyper: bool,
    /// Keeps the connection counted (and its kill switch alive) for as long as the stream lives.
    _conn: Arc<ConnectionContext>,
}

impl Subscription {
    /// Subscribes one connection to `keys`. `log`: a `subscribe:` line per key (unless the hub
    /// is quiet); `closing`: the hub is shutting down, so the stream ends after its head.
    pub(crate) fn open(
        registry: &Arc<Registry>,
        conn: &Arc<ConnectionContext>,
        keys: Vec<ChannelKey>,
        log: bool,
        closing: bool,
    ) -> Self {
        if log {
            for key in &keys {
                tracing::info!(target: "signalhub::traffic", peer = %conn.peer, "subscribe: {key}");
            }
        }
        let outbox = registry.outbox(conn);
        let slots = keys
            .into_iter()
            .map(|key| {
                let slot = registry.add(&key, &outbox);
                (key, slot)
            })
            .collect();
        registry.metrics.sse_connections.inc();
        if closing {
            outbox.close();
        }
        Subscription {
            registry: registry.clone(),
            slots,
            outbox,
            served_by_hyper: false,
            _conn: conn.clone(),
        }
    }

    /// Counts the subscription among those hyper serves, until it ends.
    pub(crate) fn served_by_hyper(mut self) -> Self {
        if !self.served_by_hyper {
            self.registry.metrics.sse_hyper_connections.inc();
            self.served_by_hyper = true;
        }
        self
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for (key, slot) in self.slots.drain(..) {
            self.registry.remove(&key, slot);
        }
        self.registry.metrics.sse_connections.dec();
        if self.served_by_hyper {
            self.registry.metrics.sse_hyper_connections.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn outbox(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox::new(
            QueueLimits::new(max_messages, max_bytes),
            CancellationToken::new(),
            Arc::new(AtomicUsize::new(0)),
            usize::MAX,
        )
    }

    #[tokio::test]
    async fn outbox_batches_queued_messages() {
        let outbox = outbox(10, 1000);
        for m in ["a", "b", "c"] {
            assert_eq!(outbox.push(&Bytes::from(m)), Push::Queued);
        }
        match poll_fn(|cx| outbox.poll_batch(cx, 2)).await {
            Next::Data(d) => assert_eq!(&d[..], b"ab"),
            other => panic!("{other:?}"),
        }
        match poll_fn(|cx| outbox.poll_batch(cx, 2)).await {
            Next::Data(d) => assert_eq!(&d[..], b"c"),
            other => panic!("{other:?}"),
        }
        assert_eq!(outbox.queued_total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn outbox_drains_without_copying() {
        let outbox = outbox(10, 1000);
        for m in ["a", "bb", "c", "d"] {
            outbox.push(&Bytes::from(m));
        }
        let mut out = Vec::new();
        assert!(matches!(
            poll_fn(|cx| outbox.poll_drain(cx, &mut out, 3, 10)).await,
            Next::Data(_)
        ));
        assert_eq!(out, [Bytes::from("a"), Bytes::from("bb")]);
        out.clear();
        assert!(matches!(
            poll_fn(|cx| outbox.poll_drain(cx, &mut out, 100, 1)).await,
            Next::Data(_)
        ));
        assert_eq!(out, [Bytes::from("c")]);
        out.clear();
        outbox.close();
        assert!(matches!(
            poll_fn(|cx| outbox.poll_drain(cx, &mut out, 100, 10)).await,
            Next::Data(_)
        ));
        assert!(matches!(
            poll_fn(|cx| outbox.poll_drain(cx, &mut out, 100, 10)).await,
            Next::End
        ));
    }

    #[tokio::test]
    async fn full_outbox_drops_the_subscriber_and_kills_its_connection() {
        let outbox = outbox(2, 1000);
        outbox.push(&Bytes::from("a"));
        outbox.push(&Bytes::from("b"));
        assert_eq!(outbox.push(&Bytes::from("c")), Push::Overflowed { lost: 3 });
        assert!(outbox.kill.is_cancelled());
        assert_eq!(outbox.push(&Bytes::from("d")), Push::Closed);
        assert!(matches!(
            poll_fn(|cx| outbox.poll_next(cx)).await,
            Next::Dropped
        ));
        assert_eq!(outbox.queued_total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn byte_limit_counts() {
        let outbox = outbox(100, 5);
        assert_eq!(outbox.push(&Bytes::from("abc")), Push::Queued);
        assert_eq!(
            outbox.push(&Bytes::from("abc")),
            Push::Overflowed { lost: 2 }
        );
    }

    #[tokio::test]
    async fn closing_drains_then_ends() {
        let outbox = outbox(10, 100);
        outbox.push(&Bytes::from("a"));
        outbox.close();
        assert_eq!(outbox.push(&Bytes::from("b")), Push::Closed);
        assert!(matches!(
            poll_fn(|cx| outbox.poll_next(cx)).await,
            Next::Data(_)
        ));
        assert!(matches!(
            poll_fn(|cx| outbox.poll_next(cx)).await,
            Next::End
        ));
    }

    #[test]
    fn over_the_budget_only_subscribers_that_are_behind_are_dropped() {
        let total = Arc::new(AtomicUsize::new(0));
        // Behind: more than 100 bytes queued. Budget: 150 bytes in all.
        let limits = QueueLimits::new(100, 800);
        assert_eq!(limits.behind_bytes, 100);
        let behind = Outbox::new(limits, CancellationToken::new(), total.clone(), 150);
        let current = Outbox::new(limits, CancellationToken::new(), total.clone(), 150);
        let message = Bytes::from(vec![b'x'; 60]);
        // The non-reader fills the budget...
        assert_eq!(behind.push(&message), Push::Queued);
        assert_eq!(behind.push(&message), Push::Queued);
        assert_eq!(total.load(Ordering::Relaxed), 120);
        // ...a reader that keeps up still gets a burst of two back to back (it used to be
        // dropped at its second message)...
        assert_eq!(current.push(&message), Push::Queued);
        assert_eq!(current.push(&message), Push::Queued);
        // ...and the one that is behind pays at its next message.
        assert_eq!(behind.push(&message), Push::Overflowed { lost: 3 });
        assert_eq!(behind.push(&message), Push::Closed);
        assert_eq!(total.load(Ordering::Relaxed), 120);
    }

    #[test]
    fn a_non_reader_that_gets_nothing_more_is_dropped_by_the_budget_sweep() {
        let registry = Registry::new(
            Arc::new(Metrics::new()),
            FanOut {
                max_broadcasts: None,
            },
            QueueLimits::new(100, 800),
            150,
        );
        let kill = CancellationToken::new();
        let behind = Arc::new(Outbox::new(
            registry.queue_limits,
            kill.clone(),
            registry.queued_total.clone(),
            registry.queued_budget,
        ));
        let current = Arc::new(Outbox::new(
            registry.queue_limits,
            CancellationToken::new(),
            registry.queued_total.clone(),
            registry.queued_budget,
        ));
        let quiet = ChannelKey::new("app", "quiet");
        let busy = ChannelKey::new("app", "busy");
        registry.add(&quiet, &behind);
        registry.add(&busy, &current);
        let message = Bytes::from(vec![b'x'; 60]);
        behind.push(&message);
        behind.push(&message);
        assert_eq!(
            registry.enforce_budget(),
            0,
            "under the budget: nobody pays"
        );
        current.push(&message);
        assert_eq!(registry.enforce_budget(), 1);
        assert!(kill.is_cancelled());
        assert_eq!(registry.queued_total.load(Ordering::Relaxed), 60);
        assert_eq!(current.push(&message), Push::Queued);
    }

    #[test]
    fn frames() {
        assert_eq!(&sse_frame(b"{}")[..], b"data: {}\n\n");
        assert_eq!(
            &ws_frame("app", "c\"h", br#"{"a":1}"#)[..],
            br#"{"app":"app","channel":"c\"h","message":{"a":1}}"#
        );
        assert_eq!(
            &ws_frame("app", "ch", b"not json")[..],
            br#"{"app":"app","channel":"ch","message":"not json"}"#
        );
    }
}
