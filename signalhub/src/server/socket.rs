//! The hub's side of one client's TCP socket: what it may hold in the kernel, how long a write
//! may stall, and how it is closed.
//!
//! Three promises of the hub depend on the socket rather than on anything above it:
//!
//! - **A bounded send buffer.** Linux grows a socket's send buffer on its own up to
//!   `net.ipv4.tcp_wmem`'s maximum (4 MiB by default), outside every limit of the hub: a
//!   subscriber that never reads would hold that much kernel memory before its own outbox even
//!   starts to fill. Every client socket gets a fixed send buffer of [`SEND_BUFFER`] bytes
//!   (the kernel doubles it for its bookkeeping), which is ample for signalling messages.
//! - **A write timeout.** A write that makes no progress for the configured time fails with
//!   `TimedOut`, whatever path the connection took (SSE, hyper, WebSocket, files), so a client
//!   that stops reading cannot hold a connection, its buffers and its task forever.
//! - **An abortive close for connections the hub kills.** Closing a socket normally leaves what
//!   is still unsent in the kernel, which keeps retrying for minutes while the peer stays
//!   connected without reading. When the hub kills a connection (a subscriber dropped for falling
//!   behind, or the end of the shutdown grace) the socket is closed with `SO_LINGER` 0: a reset,
//!   and the kernel frees the buffer at once.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// The send buffer asked for on every client socket (the kernel reserves twice this).
pub(crate) const SEND_BUFFER: usize = 64 * 1024;

/// A client's TCP socket as the hub uses it.
pub(crate) struct ClientSocket {
    stream: TcpStream,
    /// The connection's kill switch: when it has fired, dropping the socket resets it.
    kill: CancellationToken,
    write_timeout: Duration,
    /// Armed while a write is waiting for room in the send buffer.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// Set when a write timed out: the client is not reading, so what is unsent is thrown away.
    reset_on_drop: bool,
}

impl ClientSocket {
    /// Wraps an accepted stream, setting its send buffer and `TCP_NODELAY`.
    pub(crate) fn new(stream: TcpStream, kill: CancellationToken, write_timeout: Duration) -> Self {
        let _ = stream.set_nodelay(true);
        if let Err(err) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
            tracing::debug!("cannot set a client socket's send buffer: {err}");
        }
        ClientSocket {
            stream,
            kill,
            write_timeout,
            write_deadline: None,
            reset_on_drop: false,
        }
    }

    /// Runs a write attempt under the write timeout: `Pending` arms the deadline (once), progress
    /// disarms it, and a deadline that passes turns the wait into `TimedOut`.
    fn poll_timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match attempt(Pin::new(&mut self.stream), cx) {
            Poll::Ready(result) => {
                self.write_deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let deadline = self
                    .write_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.write_deadline = None;
                        self.reset_on_drop = true;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the client read nothing for {} s", timeout.as_secs_f64()),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if self.reset_on_drop || self.kill.is_cancelled() {
            // Reset rather than leave unsent bytes to the kernel's retries.
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_timed(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_timed(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_timed(cx, |stream, cx| stream.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(write_timeout: Duration) -> (ClientSocket, TcpStream, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let kill = CancellationToken::new();
        (
            ClientSocket::new(server, kill.clone(), write_timeout),
            client,
            kill,
        )
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_times_out() {
        let (mut server, _client, _kill) = pair(Duration::from_millis(300)).await;
        let chunk = vec![0u8; 64 * 1024];
        let started = std::time::Instant::now();
        let err = loop {
            if let Err(err) = server.write_all(&chunk).await {
                break err;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never timed out"
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }

    #[tokio::test]
    async fn the_send_buffer_is_bounded() {
        let (server, _client, _kill) = pair(Duration::from_secs(1)).await;
        let size = socket2::SockRef::from(&server.stream)
            .send_buffer_size()
            .unwrap();
        // Linux reports twice what was asked for.
        assert_eq!(
            size,
            2 * SEND_BUFFER,
            "the send buffer is fixed, not left to autotuning"
        );
    }

    #[tokio::test]
    async fn a_killed_connection_is_reset_not_left_to_drain() {
        let (mut server, mut client, kill) = pair(Duration::from_secs(1)).await;
        server.write_all(b"unread").await.unwrap();
        kill.cancel();
        drop(server);
        let mut buf = [0u8; 16];
        // The unread bytes are thrown away: the client sees a reset, not the data and a FIN.
        let mut outcome = client.read(&mut buf).await;
        if let Ok(n) = outcome {
            assert!(n > 0, "a clean end instead of a reset");
            outcome = client.read(&mut buf).await;
        }
        assert_eq!(
            outcome.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }
}
