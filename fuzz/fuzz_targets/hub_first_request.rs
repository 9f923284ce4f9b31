//! The hub's request-head reader (`next_request()` / `subscription_keys()` in
//! `signalhub/src/server/front.rs`) and what serves the request after it (hyper, the routes,
//! the handlers), through a real hub: one hub runs in the background on 127.0.0.1 for the whole
//! fuzzing run, and each input is sent as the first bytes of a new connection (in two writes,
//! split where the input's first byte says). The client reads until the first response is
//! complete (or is a stream: SSE, WebSocket), or the hub closes, or the hub has been silent for
//! [`QUIET`] (it waits for more of the request); then it ends its side and, unless a stream was
//! answered, waits for the hub to close the connection. A panic anywhere in the hub aborts the
//! process (libFuzzer's panic hook), reported with the input being served. A hub that neither
//! answers nor closes within [`DEADLINE`] of the client's end is reported as a hang, and so is a
//! hub that stops answering `GET /health`.
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use signalhub::{Hub, HubConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the hub may take to close a connection after the client ended its side.
const DEADLINE: Duration = Duration::from_secs(5);
/// Silence after which the hub is taken to wait for more of the request.
const QUIET: Duration = Duration::from_millis(3);

/// The hub, started on first use.
fn hub() -> SocketAddr {
    static HUB: OnceLock<SocketAddr> = OnceLock::new();
    *HUB.get_or_init(|| {
        // As a Rust `main` does (libFuzzer's `main` is C's): a write to a socket its client has
        // closed is an error the hub handles, not a signal that ends the process. The hub's
        // writes of several buffers at once (`writev`) cannot ask the kernel for no signal.
        // SAFETY: called before any thread of this process writes to a socket.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let config = HubConfig {
                    quiet: true,
                    // One client address makes every connection: no per-address limits.
                    max_connections_per_ip: 100_000,
                    broadcasts_per_sec: 1_000_000,
                    broadcast_burst: 1_000_000,
                    request_timeout: Duration::from_secs(2),
                    max_body_bytes: 4096,
                    ..HubConfig::default()
                };
                let hub = Hub::bind("127.0.0.1:0", config).await.expect("a hub");
                tx.send(hub.local_addr().expect("an address"))
                    .expect("sent");
                hub.run_until(std::future::pending())
                    .await
                    .expect("the hub runs");
            });
        });
        rx.recv().expect("the hub's address")
    })
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
}

/// How far the first response has come.
enum Response {
    /// Its head or body is still incomplete.
    Partial,
    /// Complete, and the connection serves requests again.
    Complete,
    /// A stream that does not end (server-sent events, a WebSocket).
    Stream,
}

fn response(buf: &[u8]) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut head = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = head.parse(buf) else {
        return Response::Partial;
    };
    if head.code == Some(101) {
        return Response::Stream;
    }
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("content-type").is_some_and(|v| v.starts_with(b"text/event-stream")) {
        return Response::Stream;
    }
    let body = &buf[head_len..];
    if let Some(len) = header("content-length") {
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .expect("a content-length");
        return if body.len() >= len {
            Response::Complete
        } else {
            Response::Partial
        };
    }
    if header("transfer-encoding").is_some() && !body.ends_with(b"0\r\n\r\n") {
        return Response::Partial;
    }
    Response::Complete
}

async fn exchange(addr: SocketAddr, first: &[u8], second: &[u8]) {
    let mut stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("the hub accepts within the deadline")
        .expect("the hub accepts");
    // Reset rather than linger in TIME_WAIT: a fuzzing run opens connections by the million.
    let _ = stream.set_zero_linger();
    let _ = stream.set_nodelay(true);
    let sent = async {
        stream.write_all(first).await?;
        tokio::task::yield_now().await;
        stream.write_all(second).await
    }
    .await;
    let mut received = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    loop {
        match tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
            // Closed (or reset) by the hub.
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            // Waiting for more of the request (or slow): end our side.
            Err(_) => break,
        }
        match response(&received) {
            Response::Partial => {}
            Response::Complete => break,
            Response::Stream => return,
        }
    }
    let _ = stream.shutdown().await;
    let drain = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if let Response::Stream = response(&received) {
                break;
            }
        }
    };
    if tokio::time::timeout(DEADLINE, drain).await.is_err() {
        panic!(
            "the hub neither answered nor closed within {DEADLINE:?} after the client's end \
             (sending: {sent:?}; received: {:?})",
            String::from_utf8_lossy(&received)
        );
    }
}

/// `GET /health` answers.
async fn healthy(addr: SocketAddr) {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await?;
        let _ = stream.set_zero_linger();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(DEADLINE, probe).await {
        Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 200") => {}
        other => panic!("the hub stopped answering GET /health: {other:?}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let [split, request @ ..] = input else {
        return;
    };
    let split = usize::from(*split).min(request.len());
    let (first, second) = request.split_at(split);
    let addr = hub();
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            exchange(addr, first, second).await;
            // Every so often, that the hub still serves.
            static RUNS: AtomicU64 = AtomicU64::new(0);
            if RUNS.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
                healthy(addr).await;
            }
        })
    });
});
