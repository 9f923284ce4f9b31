//! The server-sent-events side of a subscription: the response head JS signalhub 4.9 sends, and a
//! body that streams the subscriber's outbox.
//!
//! The body hands hyper everything queued at once (up to [`MAX_WRITE`] bytes), so a subscriber
//! that is a few messages behind catches up in one write. When the outbox is closed for shutdown
//! the body ends, which ends the chunked response cleanly; when the subscriber is dropped for
//! falling behind, the body fails, which makes hyper abort the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use http_body::Frame;

use super::channels::{Next, Subscription};
use super::response::respond;

/// The most bytes one write to a subscriber carries.
const MAX_WRITE: usize = 64 * 1024;

/// The streaming response for a new subscription.
pub(crate) fn response(subscription: Subscription) -> Response<Body> {
    let mut response = respond(
        StatusCode::OK,
        Some("text/event-stream; charset=utf-8"),
        Body::new(SseBody { subscription }),
    );
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The error that ends a dropped subscriber's stream.
#[derive(Debug, thiserror::Error)]
#[error("subscriber dropped: its outgoing queue was full")]
pub(crate) struct SubscriberDropped;

struct SseBody {
    subscription: Subscription,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = SubscriberDropped;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SubscriberDropped>>> {
        match self.subscription.outbox.poll_batch(cx, MAX_WRITE) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Next::Data(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Next::End) => Poll::Ready(None),
            Poll::Ready(Next::Dropped) => Poll::Ready(Some(Err(SubscriberDropped))),
        }
    }
}
