//! Every request head of a connection, read here before hyper sees it.
//!
//! Nearly every subscriber opens a connection for its subscription alone and then only listens,
//! so the hub serves subscriptions itself: it parses the request head with `httparse`, writes the
//! SSE response head, and streams the outbox with one vectored write per batch, with no HTTP
//! machinery left behind. A hyper connection keeps about 12 KiB of buffers and futures per
//! connection for as long as a response streams; this path keeps a task, a socket and the outbox,
//! so an idle subscriber costs a small fraction of that.
//!
//! Any other request (POST, `/`, `/ice-servers`, errors) is lent to hyper alone, with the bytes
//! read so far replayed in front of the socket (`lent.rs`), and the connection comes back here
//! for its next request once the response is out: so a subscription made after a `POST` or a
//! `GET /ice-servers` on a kept-alive connection (browsers and Node's keep-alive agents do that)
//! costs what one on a fresh connection does. What cannot be lent one request at a time
//! (WebSocket upgrades, chunked bodies, `Connection: close`, HTTP/1.0, heads hyper will refuse)
//! goes to hyper for the rest of the connection, and a subscription made there is served by
//! hyper with the same bytes on the wire.

use std::io::{self, IoSlice};
use std::sync::Arc;

use axum::http::Method;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// What to do with a connection after a request head has been looked at.
pub(crate) enum Dispatch {
    /// A subscription served here, and what its answer grants for CORS.
    Subscribe(Vec<ChannelKey>, Cors),
    /// A request hyper serves alone, after which the connection comes back here: `len` bytes of
    /// head and body, which `buffered` begins with.
    One { buffered: Bytes, len: usize },
    /// Hyper serves the connection from here on, starting with these bytes.
    Hyper(Bytes),
    /// The client closed or sent nothing in time.
    Gone,
}

/// Reads a request head (within the request timeout), after the bytes `buf` already holds, and
/// decides who serves it. `later`: the connection has had requests before, so a connection that
/// simply stays idle until the timeout is a kept-alive connection ending, not a slow client.
pub(crate) async fn next_request<S>(
    state: &HubState,
    io: &mut S,
    mut buf: Vec<u8>,
    later: bool,
) -> Dispatch
where
    S: AsyncRead + Unpin,
{
    let read_head = async {
        loop {
            if head_complete(&buf) || buf.len() >= MAX_HEAD {
                return Some(());
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len().max(1024));
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(state.config.request_timeout, read_head).await {
        Ok(Some(())) => {}
        Ok(None) => return Dispatch::Gone,
        Err(_) => {
            if !later || !buf.is_empty() {
                state.metrics.reject(super::metrics::Rejection::Timeout);
            }
            return Dispatch::Gone;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(&buf) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        // An error, or a head too long to parse here: hyper's to answer.
        _ => return Dispatch::Hyper(Bytes::from(buf)),
    };
    if let Some((keys, origin)) = subscription_keys(state, &request) {
        return Dispatch::Subscribe(keys, origin);
    }
    match lendable_len(&request, head_len) {
        Some(len) => Dispatch::One {
            buffered: Bytes::from(buf),
            len,
        },
        None => Dispatch::Hyper(Bytes::from(buf)),
    }
}

/// True once `buf` holds a whole request head, or something hyper will refuse.
fn head_complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    !matches!(request.parse(buf), Ok(httparse::Status::Partial))
}

/// The most body a request may declare and still have its connection come back here after it;
/// the hub refuses bodies far smaller (64 KiB), so this only keeps a huge declared body from
/// being something the front waits through.
const MAX_LENT_BODY: u64 = 1024 * 1024;

/// The length (head and body) of a request hyper can serve alone and hand the connection back
/// after: a plain HTTP/1.1 request whose end is known from its head. `None` for anything else
/// (a WebSocket upgrade, a chunked body, `Connection: close`, HTTP/1.0, a head hyper will refuse),
/// which hyper then serves, with the rest of the connection, as it would have without the front.
fn lendable_len(request: &httparse::Request<'_, '_>, head_len: usize) -> Option<usize> {
    if request.version? != 1 {
        return None;
    }
    let mut body_len = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(header.value).ok()?;
            let ends = value.split(',').any(|token| {
                let token = token.trim();
                token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("upgrade")
            });
            if ends {
                return None;
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            // One plain decimal length: anything else is hyper's to refuse, and it closes then.
            let value = std::str::from_utf8(header.value).ok()?;
            if body_len.is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            body_len = Some(
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|&len| len <= MAX_LENT_BODY)?,
            );
        }
    }
    head_len.checked_add(usize::try_from(body_len.unwrap_or(0)).ok()?)
}

/// The channels of a plain, valid HTTP/1.1 subscribe request; `None` for anything hyper should
/// serve.
///
/// Bytes after the head (requests pipelined behind the subscribe) are dropped: a subscription's
/// response never ends, so nothing behind it would ever be answered, on any path. Serving it here
/// rather than in hyper matters because hyper, holding those unread bytes, would not read on and
/// so would not notice the client leave until a heartbeat failed to write (30 s); here the
/// connection is read, and closed at once on end of stream (or on further bytes).
fn subscription_keys(
    state: &HubState,
    request: &httparse::Request<'_, '_>,
) -> Option<(Vec<ChannelKey>, Cors)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lendable(head: &str) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = request.parse(head.as_bytes()) else {
            panic!("a complete head: {head:?}");
        };
        lendable_len(&request, head_len)
    }

    #[test]
    fn a_request_is_lent_to_hyper_alone_only_when_its_head_gives_its_end() {
        let get = "GET /health HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(lendable(get), Some(get.len()));
        let post = "POST /v1/a/b HTTP/1.1\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(lendable(post), Some(post.len() + 7));
        let keep = "POST /v1/a/b HTTP/1.1\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(lendable(keep), Some(keep.len()));
        for head in [
            "POST /v1/a/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/a/b HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/a/b HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/a/b HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /v1/a/b HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST /v1/a/b HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST /v1/a/b HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(lendable(head), None, "{head:?}");
        }
    }
}
