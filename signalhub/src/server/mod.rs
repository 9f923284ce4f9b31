//! The hub server: configuration, the accept loop, one task per connection, and graceful shutdown.
//!
//! Connections are accepted here rather than by `axum::serve` because the hub needs three things
//! at the connection level: limits counted per address before any request is read, optional TLS,
//! and a kill switch that closes a connection from outside (a subscriber dropped for falling
//! behind may have hyper blocked in a write, where no response body is ever polled again).

pub(crate) mod access;
pub(crate) mod broker;
mod channels;
mod config;
mod connection;
mod front;
mod ice;
mod lent;
pub(crate) mod limits;
mod message;
mod metrics;
mod redis_broker;
mod response;
pub(crate) mod routes;
mod socket;
mod sse;
mod state;
mod web;
mod ws;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::{
    generate_token_keys, mint_token, parse_signing_key, parse_verifying_key, Access, KeyError,
    TokenClaims,
};
use channels::{FanOut, QueueLimits, Registry, SHARDS};
pub use config::{default_max_connections, HubConfig, MAX_REFUSALS};
use connection::ConnectionContext;
pub use ice::{turn_credential, IceConfigError, IceServers};
use lent::{Lent, ResponseProgress, TrackedBody};
use limits::{Limits, PathLimits, Refusal};
pub use metrics::{Metrics, Rejection};
pub use redis_broker::{ClusterError, RedisConfig};
use socket::ClientSocket;
use state::HubState;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot read {path}: {source}")]
    ReadFile { path: String, source: io::Error },
    #[error("invalid TLS key or certificate: {0}")]
    Tls(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A hub bound to a socket, ready to serve.
pub struct Hub {
    state: Arc<HubState>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Hub {
    /// Binds the hub's listening socket (the first address `addr` resolves to that can be bound),
    /// with a listen backlog of [`LISTEN_BACKLOG`] so that a reconnect storm is queued, not refused.
    pub async fn bind(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        config: HubConfig,
    ) -> Result<Hub, HubError> {
        let describe = format!("{addr:?}");
        let bind_error = |source| HubError::Bind {
            addr: describe.clone(),
            source,
        };
        let mut last_error = io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        );
        for resolved in tokio::net::lookup_host(&addr).await.map_err(bind_error)? {
            match listen(resolved) {
                Ok(listener) => return Hub::from_listener(listener, config),
                Err(err) => last_error = err,
            }
        }
        Err(bind_error(last_error))
    }

    /// A hub on a socket that is already listening. With [`HubConfig::redis`], it joins its
    /// cluster (Redis need not be reachable yet); call it inside a tokio runtime.
    pub fn from_listener(listener: TcpListener, config: HubConfig) -> Result<Hub, HubError> {
        let metrics = Arc::new(if config.redis.is_some() {
            Metrics::with_cluster()
        } else {
            Metrics::new()
        });
        let registry = Arc::new(Registry::new(
            metrics.clone(),
            FanOut {
                max_broadcasts: config.max_broadcasts,
            },
            QueueLimits::new(config.queue_max_messages, config.queue_max_bytes),
            config.queued_bytes_budget,
        ));
        if let (Some(redis), Some(cluster_metrics)) = (&config.redis, &metrics.cluster) {
            let node = broker::new_node_id();
            tracing::info!("cluster node {node}: joining the cluster on Redis {redis:?}");
            let broker = redis_broker::RedisBroker::start(
                redis,
                node,
                cluster_metrics.clone(),
                registry.clone(),
            )?;
            registry.set_broker(broker);
        }
        let limits = Arc::new(Limits::new(
            config.max_connections,
            if config.trust_forwarded_for {
                0
            } else {
                config.max_connections_per_ip
            },
            config.broadcasts_per_sec,
            config.broadcast_burst,
        ));
        let path_limits = PathLimits {
            max_target_bytes: config.max_target_bytes,
            max_name_bytes: config.max_name_bytes,
            max_channels: config.max_channels_per_subscribe.max(1),
        };
        let state = Arc::new(HubState {
            config,
            path_limits,
            registry,
            metrics,
            limits,
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        Ok(Hub {
            state,
            listener,
            tls: None,
        })
    }

    /// Serves HTTPS (and WSS) with the PEM key and certificate chain in these files.
    pub fn with_tls(mut self, key: &Path, cert: &Path) -> Result<Hub, HubError> {
        self.tls = Some(tls_acceptor(key, cert)?);
        Ok(self)
    }

    /// The address the hub listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stops accepting, ends every
    /// stream cleanly, waits up to the grace period for connections to finish, closes the rest.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), HubError> {
        let Hub {
            state,
            listener,
            tls,
        } = self;
        let maintenance = tokio::spawn(maintain(state.clone()));
        // Refusing a connection politely takes a task; this many at a time at most.
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
        let mut accept_errors = RateLimitedLog::new(Duration::from_secs(10));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                _ = state.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors or a connection reset before accept: keep serving
                        // the connections there are, and try again shortly.
                        state.metrics.accept_errors.inc();
                        if let Some(suppressed) = accept_errors.should_log() {
                            tracing::warn!(
                                "accept failed: {err} ({} open connections, limit {}; {suppressed} more such failures since the last warning)",
                                state.limits.open_connections(),
                                state.config.max_connections,
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let guard = match state.limits.admit(peer.ip()) {
                Ok(guard) => guard,
                Err(refusal) => {
                    refuse(&state, &refusals, tls.is_some(), stream, peer, refusal);
                    continue;
                }
            };
            let conn = Arc::new(ConnectionContext::new(
                peer,
                state.force.child_token(),
                state.metrics.clone(),
                guard,
                state.tracker.token(),
            ));
            let stream = ClientSocket::new(stream, conn.kill.clone(), state.config.write_timeout);
            let state = state.clone();
            match &tls {
                None => {
                    tokio::spawn(serve_connection(state, conn, stream));
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let handshake = tokio::time::timeout(
                            state.config.request_timeout,
                            acceptor.accept(stream),
                        );
                        match handshake.await {
                            Ok(Ok(stream)) => serve_connection(state, conn, stream).await,
                            Ok(Err(err)) => {
                                tracing::debug!(peer = %conn.peer, "TLS handshake failed: {err}")
                            }
                            Err(_) => state.metrics.reject(Rejection::Timeout),
                        }
                    });
                }
            }
        }
        drop(listener);
        tracing::info!(
            "shutting down: ending {} streams and waiting up to {} s for {} connections",
            state.metrics.sse_connections.get() + state.metrics.ws_connections.get(),
            state.config.shutdown_grace.as_secs_f64(),
            state.limits.open_connections()
        );
        state.shutdown.cancel();
        state.registry.close_all();
        state.tracker.close();
        if tokio::time::timeout(state.config.shutdown_grace, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connections still open after the grace period: closing them",
                state.limits.open_connections()
            );
            state.force.cancel();
            state.tracker.wait().await;
        }
        if let Some(broker) = state.registry.broker() {
            broker.shutdown().await;
        }
        maintenance.abort();
        Ok(())
    }

    /// Serves in a background task until [`RunningHub::shutdown`].
    pub fn spawn(self) -> Result<RunningHub, HubError> {
        let addr = self.local_addr()?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let stop = CancellationToken::new();
        let metrics = self.metrics();
        let task = tokio::spawn(self.run_until(stop.clone().cancelled_owned()));
        Ok(RunningHub {
            addr,
            url: format!("{scheme}://{addr}"),
            stop,
            metrics,
            task,
        })
    }
}

/// How many connections the kernel queues for the hub before it accepts them.
pub const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Lets a restarted hub bind its port while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A hub serving in the background.
pub struct RunningHub {
    addr: SocketAddr,
    url: String,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    task: JoinHandle<Result<(), HubError>>,
}

impl RunningHub {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (or `https://`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Shuts down gracefully and waits until it is done.
    pub async fn shutdown(self) -> Result<(), HubError> {
        self.stop.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(HubError::Io(io::Error::other(join))),
        }
    }
}

/// Heartbeats (one shard at a time, so the whole hub is covered once a period without a burst)
/// and pruning of the rate limiter's table.
async fn maintain(state: Arc<HubState>) {
    let period = (state.config.heartbeat / SHARDS as u32).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut shard = 0usize;
    let mut memory = MemoryReturn::default();
    loop {
        tick.tick().await;
        state.registry.heartbeat_shard(shard);
        state.registry.enforce_budget();
        memory.observe(state.limits.open_connections());
        shard = (shard + 1) % SHARDS;
        if shard == 0 {
            state.limits.sweep();
            memory.maybe_trim(state.limits.open_connections());
        }
    }
}

/// Gives memory back to the system after many connections have closed.
///
/// glibc's allocator keeps what a burst of connections freed in its per-thread arenas: measured,
/// 5000 subscribers served by hyper that come and go left the hub at 79 MB, and five such cycles
/// at 113 MB, with no connection open; `malloc_trim(0)` (called from gdb) brought it back to
/// 8 MB, so this is the allocator's retention, not a leak. The hub trims once the open
/// connections have fallen by [`TRIM_AFTER_CLOSED`] from their peak since the last trim.
#[derive(Default)]
struct MemoryReturn {
    peak: usize,
}

/// How many connections must have closed since the peak before memory is trimmed.
const TRIM_AFTER_CLOSED: usize = 1024;

impl MemoryReturn {
    fn observe(&mut self, open: usize) {
        self.peak = self.peak.max(open);
    }

    fn maybe_trim(&mut self, open: usize) {
        if self.peak.saturating_sub(open) < TRIM_AFTER_CLOSED {
            return;
        }
        self.peak = open;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

async fn serve_connection<S>(state: Arc<HubState>, conn: Arc<ConnectionContext>, mut io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buffered = Vec::new();
    let mut later = false;
    // Made once for all the requests a connection carries: each registers with its token when
    // first polled, which costs more than a request's parse.
    let mut ended = Ended {
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        kill: Box::pin(conn.kill.clone().cancelled_owned()),
    };
    loop {
        let next = tokio::select! {
            next = front::next_request(&state, &mut io, buffered, later) => next,
            _ = &mut ended.shutdown => return,
            _ = &mut ended.kill => return,
        };
        match next {
            front::Dispatch::Gone => return,
            front::Dispatch::Subscribe(keys, origin) => {
                drop(ended);
                return front::serve_subscription(state, conn, io, keys, origin).await;
            }
            front::Dispatch::Hyper(prefix) => {
                drop(ended);
                return serve_with_hyper(state, conn, Lent::for_good(prefix, io)).await;
            }
            front::Dispatch::One {
                buffered: prefix,
                len,
            } => {
                let lent = Lent::one_request(prefix, len, io);
                match serve_one_with_hyper(&state, &conn, &mut ended, lent).await {
                    Some((back, rest)) => {
                        io = back;
                        buffered = Vec::from(rest);
                        later = true;
                    }
                    None => return,
                }
            }
        }
    }
}

/// What ends a connection from outside: the hub's shutdown, and the connection's kill switch.
struct Ended {
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    kill: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// A response on its way, boxed so that hyper can hand the connection back (`into_parts` needs an
/// `Unpin` future).
type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The hub's routes as a hyper service. With `progress`, responses note when hyper has let go of
/// their body (for a connection lent to hyper for one request).
fn hub_service(
    state: &Arc<HubState>,
    conn: &Arc<ConnectionContext>,
    progress: Option<Arc<ResponseProgress>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = ResponseFuture,
> + Clone {
    let state = state.clone();
    let conn = conn.clone();
    service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        let conn = conn.clone();
        let progress = progress.clone();
        // Its own task: hyper drops a request's future when the client shuts its side after
        // sending it (hyper notices the end of stream to let go of subscribers that leave, so
        // half-close is off), and a broadcast whose body was read in full must still reach its
        // subscribers, as Node's http server (JS signalhub) delivers it.
        let handler = tokio::spawn(routes::handle(state, conn, request.map(Body::new)));
        Box::pin(async move {
            let response = handler.await.unwrap_or_else(|err| {
                tracing::error!("request handler failed: {err}");
                response::error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            });
            let response = match progress {
                None => response,
                Some(progress) => {
                    let closing = response
                        .headers()
                        .get_all(header::CONNECTION)
                        .iter()
                        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
                    if closing {
                        progress.set_closing();
                    }
                    response.map(|body| Body::new(TrackedBody::new(body, progress)))
                }
            };
            Ok::<_, Infallible>(response)
        }) as ResponseFuture
    })
}

fn hyper_builder(state: &HubState) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.request_timeout)
        .title_case_headers(true)
        .max_buf_size(64 * 1024);
    builder
}

/// Counts and logs how a hyper connection ended in error.
fn hyper_ended(state: &HubState, conn: &ConnectionContext, err: &hyper::Error) {
    if err.is_timeout() {
        state.metrics.reject(Rejection::Timeout);
    } else if is_write_timeout(err) {
        state.metrics.reject(Rejection::WriteTimeout);
    }
    tracing::debug!(peer = %conn.peer, "connection ended: {err}");
}

/// Serves one request with hyper; the socket back, with the bytes read past the request, when the
/// connection may carry another. The response is written in full before hyper is asked to stop,
/// so hyper stops between requests and the client sees a plain kept-alive connection.
async fn serve_one_with_hyper<S>(
    state: &Arc<HubState>,
    conn: &Arc<ConnectionContext>,
    ended: &mut Ended,
    lent: Lent<S>,
) -> Option<(S, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let progress = lent.progress();
    // The whole head is already read (the front's timeout covered it), and hyper reads nothing
    // past this request: its header timer would only be armed and dropped.
    let mut connection = hyper_builder(state)
        .header_read_timeout(None)
        .serve_connection(
            TokioIo::new(lent),
            hub_service(state, conn, Some(progress.clone())),
        );
    let mut asked_to_stop = false;
    let mut draining = false;
    loop {
        tokio::select! {
            result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => {
                if let Err(err) = result {
                    hyper_ended(state, conn, &err);
                    return None;
                }
                break;
            }
            _ = progress.written(), if !asked_to_stop => {
                Pin::new(&mut connection).graceful_shutdown();
                asked_to_stop = true;
            }
            _ = &mut ended.kill => return None,
            _ = &mut ended.shutdown, if !draining => {
                Pin::new(&mut connection).graceful_shutdown();
                draining = true;
            }
        }
    }
    let parts = connection.into_parts();
    let lent = parts.io.into_inner();
    // Hyper stopped on its own (an error answer that closes, a client that left), or the
    // response asked to close, or the hub is shutting down: the connection ends, as hyper would
    // have ended it.
    if !asked_to_stop || draining || progress.closing() || !parts.read_buf.is_empty() {
        let mut io = lent.into_inner();
        let _ = tokio::time::timeout(state.config.write_timeout, io.shutdown()).await;
        return None;
    }
    lent.take_back()
}

/// Serves a connection with hyper, for as many requests as it carries.
async fn serve_with_hyper<S>(state: Arc<HubState>, conn: Arc<ConnectionContext>, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper_builder(&state)
        .serve_connection(TokioIo::new(io), hub_service(&state, &conn, None))
        .with_upgrades();
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    hyper_ended(&state, &conn, &err);
                }
                break;
            }
            _ = conn.kill.cancelled() => break,
            _ = state.shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// True when an error of hyper's comes from the socket's write timeout.
fn is_write_timeout(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    false
}

/// Answers a connection over a limit with a plain HTTP error, without serving it. A hub that is
/// full still answers `GET /health` (200, saying it is full) and `GET /metrics`, so that operators
/// and load balancers can see it.
fn refuse(
    state: &Arc<HubState>,
    refusals: &Arc<Semaphore>,
    tls: bool,
    mut stream: TcpStream,
    peer: SocketAddr,
    refusal: Refusal,
) {
    let (reason, status, message) = match refusal {
        Refusal::PerIp => (
            Rejection::TooManyConnectionsPerIp,
            "429 Too Many Requests",
            format!(
                "too many connections from your address: at most {}",
                state.config.max_connections_per_ip
            ),
        ),
        Refusal::Total => (
            Rejection::TooManyConnections,
            "503 Service Unavailable",
            format!(
                "the hub is full: at most {} connections",
                state.config.max_connections
            ),
        ),
    };
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        state.metrics.reject(reason);
        return;
    };
    if tls {
        // A plain-text answer means nothing inside TLS: closing is the answer.
        state.metrics.reject(reason);
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            // Read the request first, so that closing does not reset it before the answer is read.
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let probe = match refusal {
                Refusal::Total => probe_path(&buf[..read]),
                Refusal::PerIp => None,
            };
            let response = match probe {
                Some(Probe::Health) => {
                    let body = format!(
                        "ok: full, new connections get 503 ({} open, limit {})\n",
                        state.limits.open_connections(),
                        state.config.max_connections
                    );
                    raw_response("200 OK", "text/plain; charset=utf-8", &body, None)
                }
                Some(Probe::Metrics) => {
                    state.metrics.queued_bytes.set(
                        state
                            .registry
                            .queued_total
                            .load(std::sync::atomic::Ordering::Relaxed)
                            as i64,
                    );
                    raw_response(
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        &state.metrics.encode(),
                        None,
                    )
                }
                None => {
                    state.metrics.reject(reason);
                    tracing::debug!(%peer, "refused a connection: {message}");
                    raw_response(
                        status,
                        "text/plain; charset=utf-8",
                        &format!("{message}\n"),
                        Some(1),
                    )
                }
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// The probes a full hub still answers.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Health,
    Metrics,
}

/// `GET /health` or `GET /metrics` at the start of a request, if that is what it is.
fn probe_path(request: &[u8]) -> Option<Probe> {
    let line = request.split(|&b| b == b'\r' || b == b'\n').next()?;
    let mut parts = line.split(|&b| b == b' ');
    if parts.next()? != b"GET" {
        return None;
    }
    let target = parts.next()?;
    let path = target.split(|&b| b == b'?').next()?;
    match path {
        b"/health" => Some(Probe::Health),
        b"/metrics" => Some(Probe::Metrics),
        _ => None,
    }
}

/// A complete `Connection: close` response with the CORS headers, written without hyper.
fn raw_response(status: &str, content_type: &str, body: &str, retry_after: Option<u32>) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    out.push_str(response::raw_cors_lines());
    out.push_str(&format!("Content-Type: {content_type}\r\n"));
    if let Some(secs) = retry_after {
        out.push_str(&format!("Retry-After: {secs}\r\n"));
    }
    out.push_str(&format!(
        "Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    out
}

/// A warning that repeats at most once a period, counting what it held back.
struct RateLimitedLog {
    period: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(period: Duration) -> Self {
        RateLimitedLog {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last time)` when the event should be logged now.
    fn should_log(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn tls_acceptor(key: &Path, cert: &Path) -> Result<TlsAcceptor, HubError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| HubError::ReadFile {
            path: path.display().to_string(),
            source,
        })
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HubError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(HubError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| HubError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| HubError::Tls(format!("{}: no private key found", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HubError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_recognised_from_the_request_line() {
        assert_eq!(probe_path(b"GET /health HTTP/1.1\r\n"), Some(Probe::Health));
        assert_eq!(
            probe_path(b"GET /metrics?x HTTP/1.1\r\n"),
            Some(Probe::Metrics)
        );
        assert_eq!(probe_path(b"POST /health HTTP/1.1\r\n"), None);
        assert_eq!(probe_path(b"GET /v1/a/b HTTP/1.1\r\n"), None);
        assert_eq!(probe_path(b""), None);
    }

    #[test]
    fn the_default_connection_limit_fits_the_open_file_limit() {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let max = default_max_connections() as u64;
        if soft != rlimit::INFINITY {
            assert!(max + MAX_REFUSALS as u64 + 64 <= soft, "{max} of {soft}");
        }
    }

    #[test]
    fn a_repeated_warning_is_logged_once_a_period() {
        let mut log = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(log.should_log(), Some(0));
        for _ in 0..100 {
            assert_eq!(log.should_log(), None);
        }
        log.last = Some(std::time::Instant::now() - Duration::from_secs(3601));
        assert_eq!(log.should_log(), Some(100));
    }
}
