//! Helpers shared by the integration tests: a real hub on 127.0.0.1:0, raw HTTP/1.1 over TCP (so
//! tests see the bytes the hub writes), and an SSE reader.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use signalhub::{Hub, HubConfig, RunningHub};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// How long any single awaited step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

pub async fn start_hub(config: HubConfig) -> RunningHub {
    Hub::bind("127.0.0.1:0", config)
        .await
        .expect("bind the hub")
        .spawn()
        .expect("start the hub")
}

/// A config with no rate or connection limits, for tests about something else.
pub fn unlimited() -> HubConfig {
    HubConfig {
        broadcasts_per_sec: 0,
        max_connections: 0,
        max_connections_per_ip: 0,
        quiet: true,
        ..HubConfig::default()
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines in the order sent, names as written.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind source address");
    }
    tokio::time::timeout(STEP, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub async fn request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> RawResponse {
    request_from(addr, None, method, target, body).await
}

pub async fn request_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    method: &str,
    target: &str,
    body: &[u8],
) -> RawResponse {
    let mut stream = connect_from(addr, source).await;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    // A body the hub refuses early may not be read whole; that is fine.
    let _ = stream.write_all(body).await;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader).await;
    let mut body = Vec::new();
    tokio::time::timeout(STEP, reader.read_to_end(&mut body))
        .await
        .expect("response body in time")
        .ok();
    RawResponse {
        status,
        headers,
        body,
    }
}

pub async fn read_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    tokio::time::timeout(STEP, reader.read_line(&mut status_line))
        .await
        .expect("status line in time")
        .expect("read status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        tokio::time::timeout(STEP, reader.read_line(&mut line))
            .await
            .expect("header in time")
            .expect("read header");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header has a colon");
        headers.push((name.to_string(), value.trim().to_string()));
    }
    (status, headers)
}

/// The five CORS headers every response carries, as JS signalhub writes them.
pub const CORS: [(&str, &str); 5] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Access-Control-Max-Age", "86400"),
    (
        "Access-Control-Allow-Headers",
        "X-Requested-With, X-HTTP-Method-Override, Content-Type, Accept, Authorization",
    ),
];

pub fn assert_cors(response_headers: &[(String, String)]) {
    for (name, value) in CORS {
        let found = response_headers.iter().find(|(n, _)| n == name);
        assert_eq!(
            found.map(|(_, v)| v.as_str()),
            Some(value),
            "header {name} (exact case) in {response_headers:?}"
        );
    }
}

/// A raw SSE subscriber: the response head, then the decoded chunked body as it arrives.
pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body bytes received and not yet consumed.
    pending: Vec<u8>,
    chunk_left: usize,
    pub ended: bool,
}

impl SseClient {
    pub async fn connect(addr: SocketAddr, target: &str) -> SseClient {
        Self::connect_with(connect_from(addr, None).await, addr, target).await
    }

    pub async fn connect_with(mut stream: TcpStream, addr: SocketAddr, target: &str) -> SseClient {
        let head =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write GET");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).await;
        SseClient {
            reader,
            status,
            headers,
            pending: Vec::new(),
            chunk_left: 0,
            ended: false,
        }
    }

    /// A subscription made on a kept-alive connection after another request (a POST): hyper
    /// answers the POST, and the connection comes back to the hub's direct path for the
    /// subscription.
    pub async fn connect_after_post(addr: SocketAddr, target: &str) -> SseClient {
        let stream = connect_from(addr, None).await;
        let post = format!(
            "POST /v1/warmup/nobody HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        Self::connect_after(stream, addr, target, &post).await
    }

    /// A subscription made on a kept-alive connection after a POST with a chunked body, which
    /// leaves the connection with hyper: hyper serves the subscription.
    pub async fn connect_via_hyper(addr: SocketAddr, target: &str) -> SseClient {
        let stream = connect_from(addr, None).await;
        Self::connect_after(stream, addr, target, &chunked_post(addr)).await
    }

    async fn connect_after(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        first: &str,
    ) -> SseClient {
        stream
            .write_all(first.as_bytes())
            .await
            .expect("write POST");
        // Read exactly the POST's response (it has Content-Length: 0) and keep the connection.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.expect("POST response");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Self::connect_with(stream, addr, target).await
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads one more piece of the chunked body into `pending`. False at the end of the body.
    async fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if self.chunk_left == 0 {
            let mut size_line = String::new();
            let n = self
                .reader
                .read_line(&mut size_line)
                .await
                .expect("chunk size");
            if n == 0 {
                self.ended = true;
                return false;
            }
            let size = usize::from_str_radix(size_line.trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                let mut crlf = String::new();
                let _ = self.reader.read_line(&mut crlf).await;
                self.ended = true;
                return false;
            }
            self.chunk_left = size;
        }
        let mut buf = vec![0u8; self.chunk_left];
        let n = self.reader.read(&mut buf).await.expect("chunk data");
        if n == 0 {
            self.ended = true;
            return false;
        }
        self.pending.extend_from_slice(&buf[..n]);
        self.chunk_left -= n;
        if self.chunk_left == 0 {
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).await.expect("chunk CRLF");
            assert_eq!(&crlf, b"\r\n");
        }
        true
    }

    /// The next frame (everything up to and including a blank line), raw, or None at the end.
    pub async fn next_frame(&mut self) -> Option<String> {
        tokio::time::timeout(STEP, self.next_frame_untimed())
            .await
            .expect("an SSE frame in time")
    }

    pub async fn next_frame_untimed(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.pending.drain(..at + 2).collect();
                return Some(String::from_utf8(frame).expect("UTF-8 frame"));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next data frame's payload, skipping comments.
    pub async fn next_data(&mut self) -> String {
        loop {
            let frame = self.next_frame().await.expect("stream still open");
            if frame.starts_with(':') {
                continue;
            }
            let data = frame
                .strip_prefix("data: ")
                .and_then(|f| f.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("not a data frame: {frame:?}"));
            return data.to_string();
        }
    }

    /// True if no frame arrives within `wait`.
    pub async fn is_quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.next_frame_untimed())
            .await
            .is_err()
    }
}

/// This process's resident memory, in bytes (0 where `/proc` cannot tell).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Waits until `condition` holds, polling; fails the test after [`STEP`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the hub counts `n` subscribers.
pub async fn wait_subscribers(hub: &RunningHub, n: i64) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let text = hub.metrics().encode();
        let count = metric(&text, "signalhub_subscribers");
        if count == n as f64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} subscribers (have {count})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `POST` with a chunked body that leaves a kept-alive connection with hyper for good
/// (the hub's front lends a connection to hyper one request at a time only when the request's
/// head gives its end).
pub fn chunked_post(addr: SocketAddr) -> String {
    format!(
        "POST /v1/app/nobody HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    )
}

/// Sends [`chunked_post`] on `stream` and reads its answer's head (`200` with
/// `Content-Length: 0`, so the head is the whole answer).
pub async fn leave_with_hyper(stream: &mut TcpStream, addr: SocketAddr) -> String {
    stream
        .write_all(chunked_post(addr).as_bytes())
        .await
        .expect("write the POST");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("the POST's answer"));
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Length: 0"), "{head}");
    head
}

/// The hub's metrics text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    request(addr, "GET", "/metrics", b"").await.text()
}

/// How many SSE streams the hub serves, and of them how many hyper serves.
pub async fn sse_streams(addr: SocketAddr) -> (f64, f64) {
    let text = metrics_text(addr).await;
    assert!(
        text.contains("signalhub_connections{transport=\"sse_hyper\"} "),
        "{text}"
    );
    (
        metric(&text, "signalhub_connections{transport=\"sse\"}"),
        metric(&text, "signalhub_connections{transport=\"sse_hyper\"}"),
    )
}

/// The value of one sample line (name with labels as written) in a metrics text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
