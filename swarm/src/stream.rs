//! A connected [`Peer`] as a tokio byte stream ([`AsyncRead`] + [`AsyncWrite`]), so anything
//! that speaks over a socket (a hyperlog replication, a line protocol) speaks over a data channel.
//!
//! Writes are cut into data-channel messages of at most [`MAX_MESSAGE`] bytes (16 KiB, the size
//! every browser accepts), handed in order to a writer task that sends them one at a time.
//! Memory stays bounded: at most [`WRITE_WINDOW`] messages wait for that task, and the engine
//! itself holds at most its send-buffer limit unacknowledged (the peer's `send` waits beyond it),
//! so a writer faster than the network is slowed to the network's pace. Reads return the bytes of
//! received messages in order, text and binary alike, as simple-peer's stream does.
//!
//! A data channel has no half-close: shutting down the write half (`poll_shutdown`) flushes and
//! then closes the peer, as simple-peer's `end()` does. Reading returns end-of-file once the
//! peer is closed and every message received before has been read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

use crate::peer::{Peer, PeerError};

/// The largest data-channel message a stream writes.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// Messages written but not yet handed to the engine.
pub const WRITE_WINDOW: usize = 8;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A connected peer as a byte stream. See the module docs.
pub struct PeerStream {
    peer: Arc<Peer>,
    /// The message being read, pending.
    reading: Option<BoxFuture<Option<Bytes>>>,
    /// What is left of the last message read.
    leftover: Bytes,
    /// One permit per message between `poll_write` and the engine.
    window: PollSemaphore,
    /// To the writer task; `None` once shut down.
    writer: Option<mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>>,
    /// Why the writer task stopped, if it failed.
    write_error: Arc<Mutex<Option<PeerError>>>,
    closing: Option<BoxFuture<()>>,
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl PeerStream {
    /// The stream of `peer`. Its writer task runs on the current Tokio runtime and ends when the
    /// stream is dropped (after sending what was written) or the peer closes.
    pub fn new(peer: Arc<Peer>) -> PeerStream {
        let semaphore = Arc::new(Semaphore::new(WRITE_WINDOW));
        let (writer, mut queue) = mpsc::unbounded_channel::<(Bytes, OwnedSemaphorePermit)>();
        let write_error = Arc::new(Mutex::new(None));
        let task_peer = peer.clone();
        let task_error = write_error.clone();
        let task_semaphore = semaphore.clone();
        tokio::spawn(async move {
            while let Some((message, permit)) = queue.recv().await {
                let sent = task_peer.send(message).await;
                drop(permit);
                if let Err(error) = sent {
                    *task_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                    // Wakes every waiting writer, which then reads the error.
                    task_semaphore.close();
                    return;
                }
            }
        });
        PeerStream {
            peer,
            reading: None,
            leftover: Bytes::new(),
            window: PollSemaphore::new(semaphore),
            writer: Some(writer),
            write_error,
            closing: None,
        }
    }

    /// The peer underneath.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    fn write_failure(&self) -> io::Error {
        let error = self
            .write_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(PeerError::Closed);
        let kind = match error {
            PeerError::Closed => io::ErrorKind::BrokenPipe,
            PeerError::NotConnected => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.leftover.is_empty() {
            let peer = self.peer.clone();
            let reading = self
                .reading
                .get_or_insert_with(|| Box::pin(async move { peer.recv().await }));
            let message = ready!(reading.as_mut().poll(cx));
            self.reading = None;
            match message {
                // An empty message is not end-of-file; skip it.
                Some(message) => self.leftover = message,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.leftover.len().min(buf.remaining());
        buf.put_slice(&self.leftover[..n]);
        self.leftover.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.writer.is_none() || self.peer.is_closed() {
            return Poll::Ready(Err(self.write_failure()));
        }
        let Some(permit) = ready!(self.window.poll_acquire(cx)) else {
            return Poll::Ready(Err(self.write_failure()));
        };
        let n = buf.len().min(MAX_MESSAGE);
        let message = Bytes::copy_from_slice(&buf[..n]);
        let queued = self
            .writer
            .as_ref()
            .is_some_and(|writer| writer.send((message, permit)).is_ok());
        if !queued {
            return Poll::Ready(Err(self.write_failure()));
        }
        Poll::Ready(Ok(n))
    }

    /// Waits until every message written has been handed to the engine.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.writer.is_none() {
            return Poll::Ready(Ok(()));
        }
        // Holding the whole window means the writer task has nothing left.
        match ready!(self.window.poll_acquire_many(cx, WRITE_WINDOW as u32)) {
            Some(all) => {
                drop(all);
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(self.write_failure())),
        }
    }

    /// Flushes, then closes the peer (a data channel cannot close one direction only).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closing.is_none() {
            if self.writer.is_some() && !self.peer.is_closed() {
                ready!(self.as_mut().poll_flush(cx))?;
            }
            self.writer = None;
            let peer = self.peer.clone();
            self.closing = Some(Box::pin(async move { peer.close().await }));
        }
        if let Some(closing) = self.closing.as_mut() {
            ready!(closing.as_mut().poll(cx));
        }
        Poll::Ready(Ok(()))
    }
}
