//! The WebSocket transport, compatible with `signalhubws` clients.
//!
//! A client connects to `<hub>/<app>` and every frame, both ways, is the text
//! `{"app":…,"channel":…,"message":…}`. As the signalhubws server does, a frame is sent verbatim
//! to every WebSocket client of its app (the sender too) with no channel filtering; and, bridging
//! the transports, its `message` goes to the SSE subscribers of `<app>/<channel>`, while a POST
//! reaches the WebSocket clients of its app.

use std::borrow::Cow;
use std::future::poll_fn;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::Response;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::channels::{Next, Outbox};
use super::connection::ConnectionContext;
use super::metrics::Rejection;
use super::state::HubState;

/// The WebSocket read buffer's starting size.
const WS_READ_BUFFER: usize = 2 * 1024;
/// Frames are gathered up to this many bytes before a write (a flush writes them anyway).
const WS_WRITE_BUFFER: usize = 16 * 1024;

/// A WebSocket that sends this many frames that are not signalhubws messages is closed: parsing
/// junk costs the hub, and no client sends it by mistake more than a few times.
const MAX_BAD_FRAMES: usize = 16;
/// Close code 1008, "policy violation".
const POLICY_VIOLATION: u16 = 1008;

/// Close code 1001, "going away": the hub is shutting down.
const GOING_AWAY: u16 = 1001;

/// A signalhubws frame, borrowed from the text it came in.
#[derive(Deserialize)]
struct WsFrame<'a> {
    #[serde(borrow)]
    app: Cow<'a, str>,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
}

/// Completes the upgrade and serves the socket until either side ends it.
pub(crate) fn accept(
    state: Arc<HubState>,
    conn: Arc<ConnectionContext>,
    client: std::net::IpAddr,
    app: String,
    upgrade: WebSocketUpgrade,
) -> Response<Body> {
    // Room for the frame's envelope around a message of the largest POST body.
    let max_frame = state.config.max_body_bytes + 2 * state.config.max_name_bytes + 64;
    upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        // tungstenite allocates its whole read buffer up front (128 KiB by default), which made an
        // idle WebSocket cost 137 KiB; a small one grows only while a large frame arrives.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let kill = conn.kill.clone();
            tokio::select! {
                _ = serve(state, conn, client, app, socket) => {}
                _ = kill.cancelled() => {}
            }
        })
}

/// Membership of one WebSocket in its app; leaving is done on drop.
struct Membership {
    state: Arc<HubState>,
    app: String,
    slot: usize,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.state.registry.remove_ws(&self.app, self.slot);
        self.state.metrics.ws_connections.dec();
    }
}

async fn serve(
    state: Arc<HubState>,
    conn: Arc<ConnectionContext>,
    client: std::net::IpAddr,
    app: String,
    socket: WebSocket,
) {
    let outbox = state.registry.outbox(&conn);
    let slot = state.registry.add_ws(&app, &outbox);
    state.metrics.ws_connections.inc();
    if !state.config.quiet {
        tracing::info!(target: "signalhub::traffic", peer = %conn.peer, "websocket: {app}");
    }
    let _membership = Membership {
        state: state.clone(),
        app,
        slot,
    };
    if state.shutdown.is_cancelled() {
        outbox.close();
    }
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(state.config.heartbeat);
    ping.tick().await;
    let mut bad_frames = 0usize;
    loop {
        if bad_frames >= MAX_BAD_FRAMES {
            tracing::debug!(peer = %conn.peer, "closed a websocket that sent {bad_frames} frames that are not signalhubws messages");
            let close = CloseFrame {
                code: POLICY_VIOLATION,
                reason: Utf8Bytes::from_static("too many frames that are not signalhubws messages"),
            };
            let _ = sink.send(Message::Close(Some(close))).await;
            break;
        }
        tokio::select! {
            next = poll_fn(|cx| outbox.poll_next(cx)) => match next {
                Next::Data(frame) => {
                    if send_queued(&mut sink, &outbox, frame).await.is_err() {
                        break;
                    }
                }
                Next::End => {
                    let close = CloseFrame { code: GOING_AWAY, reason: Utf8Bytes::from_static("hub shutting down") };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    break;
                }
                Next::Dropped => break,
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if !on_frame(&state, &conn, client, text.as_str()) {
                        bad_frames += 1;
                    }
                }
                Some(Ok(Message::Binary(data))) => match std::str::from_utf8(&data) {
                    Ok(text) => {
                        if !on_frame(&state, &conn, client, text) {
                            bad_frames += 1;
                        }
                    }
                    Err(_) => {
                        state.metrics.reject(Rejection::BadFrame);
                        bad_frames += 1;
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(err)) => {
                    tracing::debug!(peer = %conn.peer, "websocket error: {err}");
                    if err.to_string().contains("too long") || err.to_string().contains("Space limit") {
                        state.metrics.reject(Rejection::BodyTooLarge);
                    }
                    break;
                }
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Sends one frame and whatever else is already queued behind it, then flushes once.
async fn send_queued(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    outbox: &Outbox,
    first: Bytes,
) -> Result<(), axum::Error> {
    sink.feed(text_message(first)).await?;
    while let Some(Next::Data(frame)) = poll_fn(|cx| outbox.poll_next(cx)).now_or_never() {
        sink.feed(text_message(frame)).await?;
    }
    sink.flush().await
}

fn text_message(frame: Bytes) -> Message {
    // Every queued frame was built from UTF-8 text; a lossy copy is only a safety net.
    match Utf8Bytes::try_from(frame.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Text(String::from_utf8_lossy(&frame).into_owned().into()),
    }
}

/// Broadcasts one incoming frame; false when it is not a valid signalhubws message.
fn on_frame(
    state: &HubState,
    conn: &ConnectionContext,
    client: std::net::IpAddr,
    text: &str,
) -> bool {
    let frame: WsFrame<'_> = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(err) => {
            state.metrics.reject(Rejection::BadFrame);
            tracing::debug!(peer = %conn.peer, "dropped a websocket frame that is not a signalhubws message: {err}");
            return false;
        }
    };
    if super::message::is_json_null(frame.message.get().as_bytes()) {
        state.metrics.reject(Rejection::NullMessage);
        tracing::debug!(peer = %conn.peer, "dropped a websocket frame whose message is null");
        return false;
    }
    let max = state.config.max_name_bytes;
    if frame.app.is_empty() || frame.app.len() > max || frame.channel.len() > max {
        state.metrics.reject(Rejection::BadFrame);
        tracing::debug!(peer = %conn.peer, "dropped a websocket frame with an empty or over-long app or channel");
        return false;
    }
    if state.limits.check_broadcast(client).is_err() {
        state.metrics.reject(Rejection::RateLimited);
        return true;
    }
    if !state.config.quiet {
        tracing::info!(target: "signalhub::traffic", peer = %conn.peer, "broadcast: {}/{} (websocket)", frame.app, frame.channel);
    }
    state.registry.broadcast_ws(
        &frame.app,
        &frame.channel,
        Bytes::copy_from_slice(text.as_bytes()),
        frame.message.get().as_bytes(),
    );
    true
}
