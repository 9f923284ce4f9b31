//! The first request of every connection, read here before hyper sees the connection.
//!
//! Nearly every subscriber opens a connection for its subscription alone and then only listens,
//! so the hub serves that case itself: it parses the request head with `httparse`, writes the SSE
//! response head, and streams the outbox with one vectored write per batch, with no HTTP machinery
//! left behind. A hyper connection keeps about 20 KiB of buffers and futures per connection for as
//! long as a response streams; this path keeps a task, a socket and the outbox, so an idle
//! subscriber costs a small fraction of that. Every other first request (POST, WebSocket, `/`,
//! errors) and every later request on a kept-alive connection goes to hyper, with the bytes read
//! so far replayed in front of the socket; a subscription made there is served by hyper with the
//! same bytes on the wire.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Method;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::access;
use super::channels::{ChannelKey, Next, Subscription};
use super::connection::ConnectionContext;
use super::response;
use super::routes::{self, Route};
use super::state::HubState;

/// The most bytes of a request head read here; a longer head goes to hyper, which has its own limit.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed at most; more goes to hyper.
const MAX_HEADERS: usize = 48;
/// The most queued messages one write sends.
const MAX_BATCH_ITEMS: usize = 64;
/// The most bytes one write sends.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// What an answer says in `Access-Control-Allow-Origin`.
pub(crate) enum Cors {
    /// `*`: a hub open to every origin.
    Any,
    /// This (allowed) origin, with `Vary: Origin`.
    Origin(String),
    /// Nothing: a hub with an origin list, asked by a client that is not a browser.
    None,
}

/// What to do with a connection after its first request head has been looked at.
pub(crate) enum First {
    /// A subscription served here, and what its answer grants for CORS.
    Subscribe(Vec<ChannelKey>, Cors),
    /// Anything else: hyper serves it, starting with these bytes.
    Hyper(Bytes),
    /// The client closed or sent nothing in time.
    Gone,
}

/// Reads the first request head (within the request timeout) and decides who serves it.
pub(crate) async fn first_request<S>(state: &HubState, io: &mut S) -> First
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        loop {
            if buf.len() >= MAX_HEAD {
                return Some(());
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len());
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Partial) => continue,
                // Complete, or an error hyper will answer properly.
                Ok(httparse::Status::Complete(_)) | Err(_) => return Some(()),
            }
        }
    };
    match tokio::time::timeout(state.config.request_timeout, read_head).await {
        Ok(Some(())) => {}
        Ok(None) => return First::Gone,
        Err(_) => {
            state.metrics.reject(super::metrics::Rejection::Timeout);
            return First::Gone;
        }
    }
    match subscription_keys(state, &buf) {
        Some((keys, origin)) => First::Subscribe(keys, origin),
        None => First::Hyper(Bytes::from(buf)),
    }
}

/// The channels of a plain, valid HTTP/1.1 subscribe request; `None` for anything hyper should
/// serve.
///
/// Bytes after the head (requests pipelined behind the subscribe) are dropped: a subscription's
/// response never ends, so nothing behind it would ever be answered, on any path. Serving it here
/// rather than in hyper matters because hyper, holding those unread bytes, would not read on and
/// so would not notice the client leave until a heartbeat failed to write (30 s); here the
/// connection is read, and closed at once on end of stream (or on further bytes).
fn subscription_keys(state: &HubState, buf: &[u8]) -> Option<(Vec<ChannelKey>, Cors)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = request.parse(buf).ok()? else {
        return None;
    };
    if request.method? != "GET" || request.version? != 1 {
        return None;
    }
    // A body (which hyper refuses for a subscription) or an upgrade: hyper's to answer.
    let expects_more = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
    });
    if expects_more {
        return None;
    }
    let target = request.path?;
    let (path_token, target) = match access::split_token_path(target) {
        Some((token, rest)) => (Some(token), rest),
        None => (None, target),
    };
    let Route::Subscribe { app, channels } = routes::route(&Method::GET, target, state.path_limits)
    else {
        return None;
    };
    let mut cors = Cors::Any;
    let rules = &state.config.access;
    if !rules.is_public() {
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let origin = header("origin");
        let token = access::find_token(path_token, target, header("cookie"));
        // A refusal is hyper's to answer, with its message and metric.
        rules.check_origin(origin).ok()?;
        rules.check_app(app, token).ok()?;
        if rules.restricts_origins() {
            cors = match rules.allow_origin_value(origin) {
                Some(origin) => Cors::Origin(origin.to_string()),
                None => Cors::None,
            };
        }
    }
    Some((
        channels
            .iter()
            .map(|channel| ChannelKey::new(app, channel))
            .collect(),
        cors,
    ))
}

/// The SSE response head, as hyper writes it for the same response (so that a subscriber cannot
/// tell which path served it).
fn response_head(cors: &Cors) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let any = "Access-Control-Allow-Origin: *\r\n";
    match cors {
        Cors::Any => head.extend_from_slice(response::raw_cors_lines().as_bytes()),
        // A private hub names the (allowed) origin, or none, as hyper's path does.
        Cors::Origin(origin) => {
            let line = format!("Access-Control-Allow-Origin: {origin}\r\n");
            let lines = response::raw_cors_lines().replacen(any, &line, 1);
            head.extend_from_slice(lines.as_bytes());
            head.extend_from_slice(b"Vary: Origin\r\n");
        }
        Cors::None => {
            let lines = response::raw_cors_lines().replacen(any, "", 1);
            head.extend_from_slice(lines.as_bytes());
            head.extend_from_slice(b"Vary: Origin\r\n");
        }
    }
    head.extend_from_slice(
        b"Content-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\nDate: ",
    );
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// Serves a subscription on a connection of its own until the client leaves, the hub shuts down
/// (the chunked body then ends cleanly) or the subscriber is dropped for falling behind.
pub(crate) async fn serve_subscription<S>(
    state: Arc<HubState>,
    conn: Arc<ConnectionContext>,
    io: S,
    keys: Vec<ChannelKey>,
    cors: Cors,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let subscription = Subscription::open(
        &state.registry,
        &conn,
        keys,
        !state.config.quiet,
        state.shutdown.is_cancelled(),
    );
    let (mut reader, mut writer) = tokio::io::split(io);
    // The client has nothing more to send: reading only notices that it has gone. A client that
    // sends anyway is closed at its first bytes rather than read and discarded for as long as it
    // cares to send.
    let client_gone = async {
        let mut sink = [0u8; 512];
        if let Ok(n) = reader.read(&mut sink).await {
            if n > 0 {
                state
                    .metrics
                    .reject(super::metrics::Rejection::UnexpectedBytes);
                tracing::debug!(peer = %conn.peer, "closed a subscription whose client sent {n} bytes up it");
            }
        }
    };
    let stream = async {
        writer.write_all(&response_head(&cors)).await?;
        writer.flush().await?;
        let mut batch = Vec::new();
        loop {
            let next = std::future::poll_fn(|cx| {
                subscription
                    .outbox
                    .poll_drain(cx, &mut batch, MAX_BATCH_BYTES, MAX_BATCH_ITEMS)
            })
            .await;
            match next {
                Next::Data(_) => {
                    write_chunk(&mut writer, &batch).await?;
                    batch.clear();
                }
                Next::End => {
                    writer.write_all(b"0\r\n\r\n").await?;
                    writer.flush().await?;
                    return writer.shutdown().await;
                }
                Next::Dropped => return Ok(()),
            }
        }
    };
    tokio::select! {
        _ = client_gone => {}
        result = stream => {
            if let Err(err) = result {
                if err.kind() == io::ErrorKind::TimedOut {
                    state.metrics.reject(super::metrics::Rejection::WriteTimeout);
                }
                tracing::debug!(peer = %conn.peer, "subscriber connection ended: {err}");
            }
        }
        _ = conn.kill.cancelled() => {}
    }
}

/// Writes messages as one HTTP chunk, in as few vectored writes as the socket allows.
async fn write_chunk<W: AsyncWrite + Unpin>(writer: &mut W, messages: &[Bytes]) -> io::Result<()> {
    let len: usize = messages.iter().map(Bytes::len).sum();
    let size_line = format!("{len:x}\r\n");
    let mut slices = Vec::with_capacity(messages.len() + 2);
    slices.push(IoSlice::new(size_line.as_bytes()));
    slices.extend(messages.iter().map(|m| IoSlice::new(m)));
    slices.push(IoSlice::new(b"\r\n"));
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = writer.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    writer.flush().await
}

/// A stream that yields some bytes already read before reading on.
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An emptied `Bytes` still holds its whole buffer: let it go for the connection's
                // lifetime (a subscriber served by hyper may live for hours).
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
