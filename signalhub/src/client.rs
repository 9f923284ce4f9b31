//! A signalhub client: subscribe to channels and broadcast to them through one or more hubs.
//!
//! It speaks the v1 HTTP API (server-sent events in, POST out) and works with any signalhub 3.x/4.x
//! hub, this crate's or the JavaScript one. Where the JavaScript client falls short it does more:
//! a subscription reconnects by itself with a bounded backoff and notices a silent hub by its
//! missing heartbeats; with several hubs it listens to all and POSTs to all, yet delivers each
//! distinct message once (the JS client delivers it once per hub, signalhub issue #39), and keeps
//! working while at least one hub is up.
//!
//! ```no_run
//! # async fn run() -> Result<(), signalhub::client::ClientError> {
//! use futures_util::StreamExt;
//! let client = signalhub::client::Client::new("my-app", ["http://127.0.0.1:8080"])?;
//! let mut messages = client.subscribe(["hello"])?;
//! client.broadcast("hello", &serde_json::json!({"hi": "there"})).await?;
//! while let Some(message) = messages.next().await {
//!     println!("{message}");
//! }
//! # Ok(()) }
//! ```

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Timings and bounds of a client. `Default` gives the values below.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Wait before the first reconnect after a subscription drops (3 s, as the JS client).
    pub reconnect_delay: Duration,
    /// The longest wait between reconnects: the delay doubles on each failure up to this (30 s).
    pub max_reconnect_delay: Duration,
    /// Time allowed for a hub to answer a POST or to start a subscription's response (10 s).
    pub request_timeout: Duration,
    /// A subscription that receives nothing at all (not even a heartbeat, which hubs send every
    /// 30 s) for this long is taken as dead and reconnected (75 s).
    pub idle_timeout: Duration,
    /// How long a message is remembered to recognise its copies from other hubs (30 s).
    pub dedup_window: Duration,
    /// The largest event a hub may send; a larger one ends that hub's stream (1 MiB).
    pub max_event_bytes: usize,
    /// Messages buffered for a subscriber that is not reading; past it, reading from the hubs
    /// pauses (256).
    pub buffer: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            reconnect_delay: Duration::from_secs(3),
            max_reconnect_delay: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            dedup_window: Duration::from_secs(30),
            max_event_bytes: 1024 * 1024,
            buffer: 256,
        }
    }
}

/// What went wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the app name is empty")]
    EmptyApp,
    #[error("no hub URL given")]
    NoHubs,
    #[error("invalid hub URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("invalid name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("the client is closed")]
    Closed,
    #[error("the message cannot be written as JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the broadcast reached no hub: {}", list(.0))]
    AllHubsFailed(Vec<HubFailure>),
    #[error("could not start the HTTP client: {0}")]
    Http(String),
}

fn list(failures: &[HubFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why one hub did not take a broadcast.
#[derive(Debug, Clone)]
pub struct HubFailure {
    pub hub: String,
    /// The HTTP status, when the hub answered.
    pub status: Option<u16>,
    /// The hub's message, or the transport error.
    pub message: String,
}

impl fmt::Display for HubFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} answered {status}: {}", self.hub, self.message),
            None => write!(f, "{}: {}", self.hub, self.message),
        }
    }
}

/// A client of one app on one or more hubs. Cloning it is cheap and shares the hubs.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    app: String,
    hubs: Vec<String>,
    http: reqwest::Client,
    options: ClientOptions,
    closed: CancellationToken,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("app", &self.inner.app)
            .field("hubs", &self.inner.hubs)
            .finish()
    }
}

/// A hub URL as the JS client takes it: one trailing `/` dropped, `http://` added when there is no
/// scheme. Unlike the JS CLI (signalhub issue #35), a full `https://host/` URL is used as given.
pub fn normalize_hub_url(url: &str) -> Result<String, ClientError> {
    let trimmed = url.strip_suffix('/').unwrap_or(url);
    let full = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let parsed = url::Url::parse(&full).map_err(|e| ClientError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(ClientError::BadUrl {
            url: url.to_string(),
            reason: "the scheme must be http or https".to_string(),
        });
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ClientError::BadUrl {
            url: url.to_string(),
            reason: "a hub URL has no query or fragment".to_string(),
        });
    }
    Ok(full)
}

/// Request URLs are built by concatenation, as the JS client does, so names must be URL-safe and
/// free of the characters the hub gives a meaning to.
fn check_name(name: &str) -> Result<(), ClientError> {
    let bad = |reason| {
        Err(ClientError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.contains([',', '?', '#']) {
        return bad("',', '?' and '#' have a meaning in hub URLs");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains white space or control characters");
    }
    Ok(())
}

impl Client {
    /// A client with the default options.
    pub fn new<I, S>(app: &str, hubs: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_options(app, hubs, ClientOptions::default())
    }

    pub fn with_options<I, S>(
        app: &str,
        hubs: I,
        options: ClientOptions,
    ) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if app.is_empty() {
            return Err(ClientError::EmptyApp);
        }
        check_name(app)?;
        if app.contains('/') {
            return Err(ClientError::BadName {
                name: app.to_string(),
                reason: "an app name has no '/'",
            });
        }
        let hubs = hubs
            .into_iter()
            .map(|url| normalize_hub_url(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if hubs.is_empty() {
            return Err(ClientError::NoHubs);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(options.request_timeout)
            .tcp_nodelay(true)
            .http1_only()
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                app: app.to_string(),
                hubs,
                http,
                options,
                closed: CancellationToken::new(),
            }),
        })
    }

    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// The hub URLs, normalized.
    pub fn hubs(&self) -> &[String] {
        &self.inner.hubs
    }

    /// Subscribes to one or more channels: one server-sent-events stream per hub, merged.
    ///
    /// The returned stream yields each message's JSON (key order kept); messages that are not
    /// JSON are skipped, as the JS client skips them. It ends when the client is closed or the
    /// subscription dropped.
    pub fn subscribe<I, S>(&self, channels: I) -> Result<Subscription, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if self.inner.closed.is_cancelled() {
            return Err(ClientError::Closed);
        }
        let channels: Vec<String> = channels
            .into_iter()
            .map(|c| c.as_ref().to_string())
            .collect();
        if channels.is_empty() {
            return Err(ClientError::BadName {
                name: String::new(),
                reason: "subscribe needs at least one channel",
            });
        }
        for channel in &channels {
            check_name(channel)?;
        }
        let path = channels.join(",");
        let (sender, receiver) = mpsc::channel(self.inner.options.buffer.max(1));
        let (connected_tx, connected) = watch::channel(0usize);
        let connected_tx = Arc::new(connected_tx);
        let stop = self.inner.closed.child_token();
        let dedup = (self.inner.hubs.len() > 1)
            .then(|| Arc::new(Mutex::new(Dedup::new(self.inner.options.dedup_window))));
        for (index, hub) in self.inner.hubs.iter().enumerate() {
            let url = format!("{hub}/v1/{}/{path}", self.inner.app);
            let listener = HubListener {
                url,
                index,
                http: self.inner.http.clone(),
                options: self.inner.options.clone(),
                sender: sender.clone(),
                connected: connected_tx.clone(),
                dedup: dedup.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(listener.run());
        }
        Ok(Subscription {
            receiver,
            connected,
            _stop: stop.drop_guard(),
        })
    }

    /// Broadcasts a message (written as JSON) to a channel on every hub at once. Succeeds when at
    /// least one hub took it.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(message)?;
        self.broadcast_raw(channel, body).await
    }

    /// Broadcasts a body that is already JSON text, as is.
    pub async fn broadcast_raw(&self, channel: &str, body: Vec<u8>) -> Result<(), ClientError> {
        if self.inner.closed.is_cancelled() {
            return Err(ClientError::Closed);
        }
        check_name(channel)?;
        let body = bytes::Bytes::from(body);
        let posts = self.inner.hubs.iter().map(|hub| {
            let url = format!("{hub}/v1/{}/{channel}", self.inner.app);
            let request = self
                .inner
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .timeout(self.inner.options.request_timeout)
                .body(body.clone());
            async move {
                let failure = |status, message| HubFailure {
                    hub: hub.clone(),
                    status,
                    message,
                };
                match request.send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let text = response.text().await.unwrap_or_default();
                        let text: String = text.trim().chars().take(512).collect();
                        Err(failure(Some(status), text))
                    }
                    Err(err) => Err(failure(None, error_chain(&err))),
                }
            }
        });
        let results = futures_util::future::join_all(posts).await;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        Err(ClientError::AllHubsFailed(
            results.into_iter().filter_map(Result::err).collect(),
        ))
    }

    /// Ends every subscription of this client; later calls fail with [`ClientError::Closed`].
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The merged messages of one subscription. Dropping it stops listening.
pub struct Subscription {
    receiver: mpsc::Receiver<Value>,
    connected: watch::Receiver<usize>,
    _stop: DropGuard,
}

impl Subscription {
    /// How many hubs this subscription is connected to right now, as a value that can be watched
    /// for changes (to notice a hub coming back, say).
    pub fn connected_hubs(&self) -> watch::Receiver<usize> {
        self.connected.clone()
    }

    /// Waits until the subscription is open on at least one hub (the JS client's `open`).
    pub async fn opened(&mut self) -> Result<(), ClientError> {
        self.connected
            .wait_for(|&n| n > 0)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Closed)
    }
}

impl Stream for Subscription {
    type Item = Value;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Value>> {
        self.receiver.poll_recv(cx)
    }
}

/// One hub's stream of a subscription: connects, reads, reconnects.
struct HubListener {
    url: String,
    index: usize,
    http: reqwest::Client,
    options: ClientOptions,
    sender: mpsc::Sender<Value>,
    connected: Arc<watch::Sender<usize>>,
    dedup: Option<Arc<Mutex<Dedup>>>,
    stop: CancellationToken,
}

/// Why a hub's stream ended.
enum StreamEnd {
    Stopped,
    Ended(String),
}

impl HubListener {
    async fn run(self) {
        let mut delay = self.options.reconnect_delay;
        loop {
            let started = Instant::now();
            let end = tokio::select! {
                _ = self.stop.cancelled() => StreamEnd::Stopped,
                end = self.connect_and_read() => end,
            };
            let reason = match end {
                StreamEnd::Stopped => return,
                StreamEnd::Ended(reason) => reason,
            };
            if self.sender.is_closed() {
                return;
            }
            // A stream that stayed up a while was a success: start the backoff over.
            if started.elapsed() > self.options.max_reconnect_delay {
                delay = self.options.reconnect_delay;
            }
            tracing::debug!(url = %self.url, "subscription ended ({reason}); reconnecting in {delay:?}");
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.options.max_reconnect_delay);
        }
    }

    async fn connect_and_read(&self) -> StreamEnd {
        let request = self
            .http
            .get(&self.url)
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache")
            .send();
        let response = match tokio::time::timeout(self.options.request_timeout, request).await {
            Err(_) => return StreamEnd::Ended("no answer in time".to_string()),
            Ok(Err(err)) => return StreamEnd::Ended(error_chain(&err)),
            Ok(Ok(response)) => response,
        };
        if response.status() != reqwest::StatusCode::OK {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            tracing::warn!(url = %self.url, "hub refused the subscription: {status} {}", text.trim());
            return StreamEnd::Ended(format!("status {status}"));
        }
        let _connected = ConnectedMark::new(&self.connected);
        let mut body = response.bytes_stream();
        let mut parser = SseParser::new(self.options.max_event_bytes);
        let mut events = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(self.options.idle_timeout, body.next()).await {
                Err(_) => return StreamEnd::Ended("no data or heartbeat in time".to_string()),
                Ok(None) => return StreamEnd::Ended("the hub ended the stream".to_string()),
                Ok(Some(Err(err))) => return StreamEnd::Ended(error_chain(&err)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            if let Err(err) = parser.feed(&chunk, &mut events) {
                return StreamEnd::Ended(err.to_string());
            }
            for data in events.drain(..) {
                if let Some(dedup) = &self.dedup {
                    let fresh = dedup
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .admit(self.index, &data);
                    if !fresh {
                        continue;
                    }
                }
                let value = match serde_json::from_str::<Value>(&data) {
                    Ok(value) => value,
                    Err(err) => {
                        tracing::debug!(url = %self.url, "skipped a message that is not JSON: {err}");
                        continue;
                    }
                };
                if self.sender.send(value).await.is_err() {
                    return StreamEnd::Stopped;
                }
            }
        }
    }
}

/// Counts a hub as connected for as long as it lives.
struct ConnectedMark<'a>(&'a watch::Sender<usize>);

impl<'a> ConnectedMark<'a> {
    fn new(sender: &'a watch::Sender<usize>) -> Self {
        sender.send_modify(|n| *n += 1);
        ConnectedMark(sender)
    }
}

impl Drop for ConnectedMark<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Recognises the copies of one message that arrive through several hubs.
///
/// For each distinct message text it counts how often each hub delivered it, and lets a copy
/// through only when that hub's count passes the number already delivered. So a message sent
/// once is delivered once however many hubs carry it, and a message legitimately sent twice (an
/// announce repeated every few seconds) is delivered twice. Entries are forgotten after the
/// window, and their number is bounded.
struct Dedup {
    window: Duration,
    hasher: RandomState,
    seen: HashMap<u64, Seen>,
    last_sweep: Instant,
}

struct Seen {
    per_hub: Vec<u32>,
    delivered: u32,
    last: Instant,
}

/// The most distinct messages remembered at once.
const DEDUP_CAPACITY: usize = 65_536;

impl Dedup {
    fn new(window: Duration) -> Self {
        Dedup {
            window,
            hasher: RandomState::new(),
            seen: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Records a copy from hub `hub`; true if it is new and should be delivered.
    fn admit(&mut self, hub: usize, data: &str) -> bool {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) > self.window / 4
            || self.seen.len() >= DEDUP_CAPACITY
        {
            let window = self.window;
            self.seen
                .retain(|_, seen| now.duration_since(seen.last) < window);
            if self.seen.len() >= DEDUP_CAPACITY {
                self.seen.clear();
            }
            self.last_sweep = now;
        }
        let key = self.hasher.hash_one(data);
        let seen = self.seen.entry(key).or_insert_with(|| Seen {
            per_hub: Vec::new(),
            delivered: 0,
            last: now,
        });
        if now.duration_since(seen.last) >= self.window {
            seen.per_hub.clear();
            seen.delivered = 0;
        }
        seen.last = now;
        if seen.per_hub.len() <= hub {
            seen.per_hub.resize(hub + 1, 0);
        }
        seen.per_hub[hub] += 1;
        if seen.per_hub[hub] > seen.delivered {
            seen.delivered += 1;
            true
        } else {
            false
        }
    }
}

/// An event stream that breaks the protocol or the client's bounds.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("an event of more than {0} bytes")]
    TooLarge(usize),
    #[error("an event that is not UTF-8")]
    NotUtf8,
}

/// A server-sent-events parser (the WHATWG rules that matter to signalhub): lines end in LF, CR
/// or CRLF, even across chunks; `data:` with or without a space; several `data` lines joined with
/// LF; comments and other fields ignored; an event ends at a blank line. Memory is bounded by
/// `max_event_bytes`.
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    after_cr: bool,
    at_start: bool,
    max_event_bytes: usize,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            at_start: true,
            max_event_bytes,
        }
    }

    /// Parses a chunk, pushing the data of every event it completes.
    pub fn feed(&mut self, chunk: &[u8], events: &mut Vec<String>) -> Result<(), SseError> {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line(events)?;
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() + self.data.len() >= self.max_event_bytes {
                        return Err(SseError::TooLarge(self.max_event_bytes));
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self, events: &mut Vec<String>) -> Result<(), SseError> {
        if self.line.is_empty() {
            if self.has_data {
                let data = std::mem::take(&mut self.data);
                self.has_data = false;
                events.push(String::from_utf8(data).map_err(|_| SseError::NotUtf8)?);
            }
            return Ok(());
        }
        let mut line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.at_start) && line.starts_with("\u{feff}".as_bytes()) {
            line.drain(..3);
        }
        if line.first().is_some_and(|&b| b != b':') {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(at) => {
                    let value = &line[at + 1..];
                    (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (&line[..], &[][..]),
            };
            if field == b"data" {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
        }
        self.line = line;
        self.line.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::new(1024);
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut events).unwrap();
        }
        events
    }

    #[test]
    fn sse_data_with_and_without_space_comments_and_multiline() {
        assert_eq!(parse(&[b"data: {\"a\":1}\n\n"]), vec!["{\"a\":1}"]);
        assert_eq!(parse(&[b"data:{\"a\":1}\n\n"]), vec!["{\"a\":1}"]);
        assert_eq!(parse(&[b":heartbeat signal\n\ndata: x\n\n"]), vec!["x"]);
        assert_eq!(parse(&[b"data: [1,\ndata: 2]\n\n"]), vec!["[1,\n2]"]);
        assert_eq!(
            parse(&[b"event: e\nid: 1\nretry: 5\ndata: y\n\n"]),
            vec!["y"]
        );
        assert_eq!(
            parse(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]),
            vec!["a", "b", "c"]
        );
        assert!(parse(&[b"data: no end yet\n"]).is_empty());
    }

    #[test]
    fn sse_split_anywhere() {
        let whole = b"\xef\xbb\xbfdata: {\"x\":\"\xc3\xa9\"}\r\n\r\n:c\r\n\r\ndata: 2\n\n";
        for cut in 0..whole.len() {
            assert_eq!(
                parse(&[&whole[..cut], &whole[cut..]]),
                vec!["{\"x\":\"é\"}", "2"],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn sse_bounds_events() {
        let mut parser = SseParser::new(16);
        let mut events = Vec::new();
        assert!(parser.feed(&[b'a'; 100], &mut events).is_err());
        let mut parser = SseParser::new(16);
        assert!(parser
            .feed(b"data: 0123456789\ndata: 0123456789\n", &mut events)
            .is_err());
    }

    #[test]
    fn dedup_delivers_each_send_once_across_hubs() {
        let mut dedup = Dedup::new(Duration::from_secs(30));
        assert!(dedup.admit(0, "m"));
        assert!(!dedup.admit(1, "m"));
        // Sent again: the first copy of the second send passes, its copy does not.
        assert!(dedup.admit(1, "m"));
        assert!(!dedup.admit(0, "m"));
        let mut dedup = Dedup::new(Duration::from_secs(30));
        assert!(dedup.admit(1, "a"));
        assert!(dedup.admit(1, "a"));
        assert!(!dedup.admit(0, "a"));
        assert!(!dedup.admit(0, "a"));
        assert!(dedup.admit(0, "a"));
        assert!(dedup.admit(0, "b"));
    }

    #[test]
    fn urls_are_normalized_like_the_js_client_without_its_cli_bug() {
        assert_eq!(
            normalize_hub_url("localhost:8080").unwrap(),
            "http://localhost:8080"
        );
        assert_eq!(
            normalize_hub_url("https://hub.example/").unwrap(),
            "https://hub.example"
        );
        assert_eq!(normalize_hub_url("http://h/base").unwrap(), "http://h/base");
        assert!(normalize_hub_url("ftp://h").is_err());
        assert!(normalize_hub_url("http://h/?q").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("all").is_ok());
        assert!(check_name("hello/people").is_ok());
        for bad in ["", "a,b", "a?b", "a b", "a#b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
