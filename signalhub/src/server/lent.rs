//! A connection lent to hyper for one request, and taken back once the response is out.
//!
//! Between requests a kept-alive connection belongs to the front (`front.rs`), which serves a
//! subscription itself and lends the connection to hyper for any other request. Left with hyper,
//! a subscription made after a `POST` or a `GET /ice-servers` on the same connection (what
//! browsers and Node's keep-alive agents do) would keep hyper's buffers for as long as it lives:
//! about five times what the front's own path costs.
//!
//! [`Lent`] is the socket hyper sees: it replays the bytes the front has read, lets hyper read no
//! further than the end of its request (the next request's bytes stay the front's), and notes when
//! hyper has written out the whole response. [`TrackedBody`] is the response body that tells it
//! when hyper has taken the last of the body. Hyper calls the socket's flush only once its own
//! write buffer is empty, so a flush after the body is gone means every byte of the response has
//! reached the socket: only then is hyper asked to stop, and it stops between requests, where it
//! adds nothing to the response (no `Connection: close`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// What the connection's task learns from hyper's side while a response goes out.
#[derive(Default)]
pub(crate) struct ResponseProgress {
    /// Hyper has dropped the response body: the last of it is in hyper's write buffer.
    body_taken: AtomicBool,
    /// The response asked for the connection to close (`Connection: close`).
    closing: AtomicBool,
    /// Hyper flushed after `body_taken`: the whole response has been written to the socket.
    written: AtomicBool,
    written_notify: Notify,
}

impl ResponseProgress {
    /// Waits until the whole response has been written to the socket.
    pub(crate) async fn written(&self) {
        while !self.written.load(Ordering::Acquire) {
            self.written_notify.notified().await;
        }
    }

    /// Notes that the response says `Connection: close`; the connection is then not taken back.
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// The socket as hyper sees it while it serves one request (or, with no limit, the rest of the
/// connection).
pub(crate) struct Lent<S> {
    inner: S,
    /// Bytes read from the socket by the front and not yet given to hyper.
    buffered: Bytes,
    /// How many more bytes hyper may read: the rest of its request. `None`: no limit.
    allowance: Option<usize>,
    progress: Arc<ResponseProgress>,
}

impl<S> Lent<S> {
    /// Lent for one request of `len` bytes (head and body), which `buffered` begins with.
    pub(crate) fn one_request(buffered: Bytes, len: usize, inner: S) -> Self {
        Lent {
            inner,
            buffered,
            allowance: Some(len),
            progress: Arc::default(),
        }
    }

    /// Given to hyper for good, starting with `buffered`.
    pub(crate) fn for_good(buffered: Bytes, inner: S) -> Self {
        Lent {
            inner,
            buffered,
            allowance: None,
            progress: Arc::default(),
        }
    }

    pub(crate) fn progress(&self) -> Arc<ResponseProgress> {
        self.progress.clone()
    }

    /// The socket back, with the bytes read past the request; `None` if hyper did not read all of
    /// its request (a body left unread): what follows on the socket is then no request's start.
    pub(crate) fn take_back(self) -> Option<(S, Bytes)> {
        match self.allowance {
            Some(0) => Some((self.inner, self.buffered)),
            _ => None,
        }
    }

    /// The socket itself, to close it.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lent<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let limit = match this.allowance {
            // The request is all read: hyper is looking for the next one, which is the front's to
            // read. Hyper is asked to stop once its response is out (and it does not need a wake-up
            // for that: the connection's task polls it).
            Some(0) => return Poll::Pending,
            Some(allowance) => allowance.min(buf.remaining()),
            None => buf.remaining(),
        };
        let n = if !this.buffered.is_empty() {
            let n = this.buffered.len().min(limit);
            buf.put_slice(&this.buffered[..n]);
            this.buffered.advance(n);
            if this.buffered.is_empty() {
                // An emptied `Bytes` still holds its whole buffer: let it go now (a connection may
                // live for hours).
                this.buffered = Bytes::new();
            }
            n
        } else {
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(limit));
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
            let n = limited.filled().len();
            buf.advance(n);
            n
        };
        if let Some(allowance) = &mut this.allowance {
            *allowance -= n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lent<S> {
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
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        // Hyper flushes the socket only when its own write buffer is empty.
        let progress = &self.progress;
        if progress.body_taken.load(Ordering::Acquire)
            && !progress.written.swap(true, Ordering::AcqRel)
        {
            progress.written_notify.notify_one();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that notes when hyper lets go of it (after buffering its last bytes, or when
/// it needs none of it, as for `HEAD`).
pub(crate) struct TrackedBody {
    inner: Body,
    progress: Arc<ResponseProgress>,
}

impl TrackedBody {
    pub(crate) fn new(inner: Body, progress: Arc<ResponseProgress>) -> Self {
        TrackedBody { inner, progress }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.progress.body_taken.store(true, Ordering::Release);
    }
}
