//! The load clients: hub addresses and loopback source addresses, SSE readers that de-chunk and
//! count frames in place, keep-alive POST connections and their pacing, idle connections of each
//! kind (SSE, WebSocket).

use crate::*;

pub(crate) struct HubAddr {
    pub(crate) sock: SocketAddr,
    pub(crate) host: String,
    /// Bind client sockets to other loopback source addresses (only when the hub is on loopback).
    pub(crate) loopback: bool,
}

pub(crate) async fn resolve(url: &str) -> Result<HubAddr> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        bail!("hubload speaks plain HTTP only: {url}");
    } else {
        url
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        bail!("no host in hub URL {url:?}");
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let sock = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {with_port}"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{with_port} has no IPv4 address"))?;
    Ok(HubAddr {
        loopback: sock.ip().is_loopback(),
        sock,
        host: authority.to_string(),
    })
}

/// Loopback source addresses handed out over the whole run (127.a.b.c, 127.a.b.c+1, ...), fresh
/// ones for every scenario so that sockets in TIME_WAIT from an earlier one never get in the way.
/// Each run starts at a random place in 127.0.0.0/8: the thousands of sockets an earlier run left
/// in TIME_WAIT on its addresses make binding to those slow.
pub(crate) static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_source() -> u32 {
    if NEXT_SOURCE.load(Relaxed) == 0 {
        let start = 0x01_0000 + rand::random::<u32>() % 0xF0_0000;
        let _ = NEXT_SOURCE.compare_exchange(0, start, Relaxed, Relaxed);
    }
    NEXT_SOURCE.fetch_add(1, Relaxed)
}

/// Connections per source address: well under the ~28 000 ephemeral ports of one address.
pub(crate) const PER_SOURCE: usize = 8_000;

pub(crate) struct Sources(pub(crate) Vec<Ipv4Addr>);

impl Sources {
    pub(crate) fn new(connections: usize, hub: &HubAddr) -> Sources {
        if !hub.loopback {
            return Sources(Vec::new());
        }
        let count = connections.div_ceil(PER_SOURCE).max(1);
        let mut addrs = Vec::with_capacity(count);
        while addrs.len() < count {
            let n = next_source();
            let ip = Ipv4Addr::from(0x7f00_0000 | (n & 0x00ff_ffff));
            let last = ip.octets()[3];
            if last != 0 && last != 255 && ip != Ipv4Addr::new(127, 0, 0, 1) {
                addrs.push(ip);
            }
        }
        Sources(addrs)
    }

    pub(crate) fn get(&self, i: usize) -> Option<Ipv4Addr> {
        (!self.0.is_empty()).then(|| self.0[i % self.0.len()])
    }
}

pub(crate) async fn connect(hub: &HubAddr, src: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        socket.bind(SocketAddr::new(ip.into(), 0))?;
    }
    let stream = socket.connect(hub.sock).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn parse_status(head: &[u8]) -> Result<u16> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(head);
    let code = line
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok());
    code.with_context(|| format!("not an HTTP response: {:?}", String::from_utf8_lossy(line)))
}

pub(crate) fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub(crate) fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(body, b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
    out
}

/// One short request on its own connection (`Connection: close`): status and body.
pub(crate) async fn http_get(hub: &HubAddr, path: &str, within: Duration) -> Result<(u16, String)> {
    tokio::time::timeout(within, async {
        let mut stream = TcpStream::connect(hub.sock).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            hub.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        let end = find(&buf, b"\r\n\r\n").context("no response head")?;
        let head = &buf[..end];
        let status = parse_status(head)?;
        let body = &buf[end + 4..];
        let body = if header(head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            dechunk(body)
        } else {
            body.to_vec()
        };
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .map_err(|_| anyhow!("GET {path}: no answer within {} s", within.as_secs_f64()))?
}

/// The subscriber count the hub's info document (`GET /`) reports.
pub(crate) async fn hub_subscribers(hub: &HubAddr) -> Option<u64> {
    let (status, body) = http_get(hub, "/", Duration::from_secs(3)).await.ok()?;
    if status != 200 {
        return None;
    }
    let info: serde_json::Value = serde_json::from_str(&body).ok()?;
    info.get("subscribers")?.as_u64()
}

// ------------------------------------------------------------------------------------------------
// SSE reader: de-chunks the response body and counts frames in place.

#[derive(Clone, Copy)]
pub(crate) enum Chunk {
    /// Not chunked: the body runs to the end of the connection.
    Identity,
    /// Reading a chunk-size line.
    Size(u64),
    /// Skipping a chunk extension, then the end of the size line.
    Ext(u64),
    Data(u64),
    /// The CRLF after a chunk's data.
    AfterData,
    /// The last chunk: the hub ended the stream.
    Done,
}

/// The first bytes of each line are kept: enough for `data: {"t":<20 digits>`.
pub(crate) const LINE_KEEP: usize = 48;

pub(crate) struct Decoder {
    pub(crate) chunk: Chunk,
    pub(crate) line: [u8; LINE_KEEP],
    pub(crate) line_len: usize,
    pub(crate) has_data: bool,
    pub(crate) sent_at: u64,
}

/// What one reader saw.
#[derive(Default)]
pub(crate) struct ReaderOut {
    /// Whether to take latency samples.
    pub(crate) latency: bool,
    /// Latency samples of the last read, moved to the thread's histogram after it.
    pub(crate) samples: Vec<u64>,
    /// Data frames received.
    pub(crate) frames: u64,
    /// Comment-only frames (heartbeats).
    pub(crate) comments: u64,
    /// Reads while recording, to show how many deliveries one read carried.
    pub(crate) reads_recorded: u64,
    /// Frames received while recording (counted even without a histogram).
    pub(crate) frames_recorded: u64,
    /// The hub closed the stream or the connection failed before the end of the scenario.
    pub(crate) lost: bool,
}

impl Decoder {
    pub(crate) fn new(chunked: bool) -> Decoder {
        Decoder {
            chunk: if chunked {
                Chunk::Size(0)
            } else {
                Chunk::Identity
            },
            line: [0; LINE_KEEP],
            line_len: 0,
            has_data: false,
            sent_at: 0,
        }
    }

    pub(crate) fn ended(&self) -> bool {
        matches!(self.chunk, Chunk::Done)
    }

    /// Feeds bytes as read from the socket; returns the data frames completed.
    pub(crate) fn feed(
        &mut self,
        mut d: &[u8],
        now: u64,
        recording: bool,
        out: &mut ReaderOut,
    ) -> u64 {
        let mut frames = 0;
        while !d.is_empty() {
            match self.chunk {
                Chunk::Identity => {
                    frames += self.sse(d, now, recording, out);
                    break;
                }
                Chunk::Size(v) | Chunk::Ext(v) => {
                    let b = d[0];
                    d = &d[1..];
                    let in_ext = matches!(self.chunk, Chunk::Ext(_));
                    self.chunk = match b {
                        b'\n' if v == 0 => Chunk::Done,
                        b'\n' => Chunk::Data(v),
                        _ if in_ext => Chunk::Ext(v),
                        b'0'..=b'9' => Chunk::Size(v * 16 + u64::from(b - b'0')),
                        b'a'..=b'f' => Chunk::Size(v * 16 + u64::from(b - b'a' + 10)),
                        b'A'..=b'F' => Chunk::Size(v * 16 + u64::from(b - b'A' + 10)),
                        b';' => Chunk::Ext(v),
                        _ => Chunk::Size(v),
                    };
                }
                Chunk::Data(rem) => {
                    let take = (rem as usize).min(d.len());
                    frames += self.sse(&d[..take], now, recording, out);
                    d = &d[take..];
                    let rem = rem - take as u64;
                    self.chunk = if rem == 0 {
                        Chunk::AfterData
                    } else {
                        Chunk::Data(rem)
                    };
                }
                Chunk::AfterData => {
                    if d[0] == b'\n' {
                        self.chunk = Chunk::Size(0);
                    }
                    d = &d[1..];
                }
                Chunk::Done => break,
            }
        }
        frames
    }

    #[inline]
    pub(crate) fn append(&mut self, seg: &[u8]) {
        if self.line_len < LINE_KEEP {
            let n = seg.len().min(LINE_KEEP - self.line_len);
            self.line[self.line_len..self.line_len + n].copy_from_slice(&seg[..n]);
        }
        self.line_len += seg.len();
    }

    pub(crate) fn sse(
        &mut self,
        mut d: &[u8],
        now: u64,
        recording: bool,
        out: &mut ReaderOut,
    ) -> u64 {
        let mut frames = 0;
        loop {
            let Some(i) = find_newline(d) else {
                self.append(d);
                return frames;
            };
            self.append(&d[..i]);
            d = &d[i + 1..];
            let blank = self.line_len == 0 || (self.line_len == 1 && self.line[0] == b'\r');
            if blank {
                if self.has_data {
                    frames += 1;
                    out.frames += 1;
                    if recording {
                        out.frames_recorded += 1;
                        if out.latency && self.sent_at > 0 {
                            out.samples.push(now.saturating_sub(self.sent_at));
                        }
                    }
                } else {
                    out.comments += 1;
                }
                self.has_data = false;
                self.sent_at = 0;
            } else {
                let line = &self.line[..self.line_len.min(LINE_KEEP)];
                if let Some(rest) = line.strip_prefix(b"data:") {
                    if !self.has_data {
                        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                        if let Some(digits) = rest.strip_prefix(br#"{"t":"#) {
                            let mut t = 0u64;
                            for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
                                t = t * 10 + u64::from(b - b'0');
                            }
                            self.sent_at = t;
                        }
                    }
                    self.has_data = true;
                }
            }
            self.line_len = 0;
        }
    }
}

/// The first `\n`, eight bytes at a time.
#[inline]
pub(crate) fn find_newline(d: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut i = 0;
    while i + 8 <= d.len() {
        let word = u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes")) ^ NL;
        // The lowest byte that was `\n` is now zero; its high bit is the lowest set here.
        let zero = word.wrapping_sub(LO) & !word & HI;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    d[i..].iter().position(|&b| b == b'\n').map(|p| i + p)
}

/// What every task of one scenario shares.
#[derive(Default)]
pub(crate) struct Shared {
    /// Data frames received by all readers.
    pub(crate) delivered: AtomicU64,
    /// POSTs answered 200.
    pub(crate) posts: AtomicU64,
    /// Latency and per-read counts are recorded while this is set.
    pub(crate) recording: AtomicBool,
    /// A poster waits for deliveries: the next reader that gets some wakes it.
    pub(crate) waiting: AtomicBool,
    pub(crate) notify: Notify,
    /// Subscriptions opened (200 and headers read), failed to open, and lost after opening.
    pub(crate) ready: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) lost: AtomicUsize,
    pub(crate) first_error: Mutex<Option<String>>,
    /// Results of readers, pushed when a reader task ends or is aborted.
    pub(crate) results: Mutex<Vec<ReaderOut>>,
}

impl Shared {
    pub(crate) fn error(&self, message: String) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(message);
        }
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap().clone()
    }
}

/// A reader's tallies, handed to [`Shared::results`] when the task ends, also when it is aborted.
pub(crate) struct Tally {
    pub(crate) out: ReaderOut,
    pub(crate) shared: Arc<Shared>,
    /// Per-subscriber state for the idle scenario: 1 open, 2 failed, 3 lost.
    pub(crate) status: Option<(Arc<[AtomicU8]>, usize)>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let out = std::mem::take(&mut self.out);
        if let Ok(mut results) = self.shared.results.lock() {
            results.push(out);
        }
    }
}

pub(crate) struct SubSpec {
    pub(crate) path: String,
    pub(crate) src: Option<Ipv4Addr>,
    pub(crate) buf_size: usize,
    pub(crate) hist: bool,
    pub(crate) open_timeout: Duration,
    pub(crate) status: Option<(Arc<[AtomicU8]>, usize)>,
}

pub(crate) async fn open_sse(
    hub: &HubAddr,
    src: Option<Ipv4Addr>,
    path: &str,
    buf: &mut [u8],
) -> Result<(TcpStream, bool, Range<usize>)> {
    let mut stream = connect(hub, src).await.context("connect")?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        hub.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            bail!("subscribe: response head larger than {} bytes", buf.len());
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("subscribe: connection closed before the response head");
        }
        filled += n;
        if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            let head = &buf[..end];
            let status = parse_status(head)?;
            if status != 200 {
                bail!(
                    "subscribe answered {status}: {}",
                    String::from_utf8_lossy(&buf[end + 4..filled]).trim()
                );
            }
            let chunked = header(head, "transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            return Ok((stream, chunked, end + 4..filled));
        }
    }
}

pub(crate) async fn subscriber(
    hub: Arc<HubAddr>,
    spec: SubSpec,
    shared: Arc<Shared>,
    opening: Arc<Semaphore>,
) {
    let mut tally = Tally {
        out: ReaderOut {
            latency: spec.hist,
            samples: Vec::with_capacity(if spec.hist { 64 } else { 0 }),
            ..ReaderOut::default()
        },
        shared: shared.clone(),
        status: spec.status,
    };
    let set_status = |tally: &Tally, s: u8| {
        if let Some((status, i)) = &tally.status {
            status[*i].store(s, Relaxed);
        }
    };
    let mut buf = vec![0u8; spec.buf_size];
    let permit = opening.acquire().await;
    let opened = tokio::time::timeout(
        spec.open_timeout,
        open_sse(&hub, spec.src, &spec.path, &mut buf),
    )
    .await;
    drop(permit);
    let (mut stream, chunked, leftover) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => {
            shared.error(format!("{err:#}"));
            shared.failed.fetch_add(1, SeqCst);
            set_status(&tally, 2);
            return;
        }
        Err(_) => {
            shared.error(format!(
                "subscribe: no response head within {} s",
                spec.open_timeout.as_secs_f64()
            ));
            shared.failed.fetch_add(1, SeqCst);
            set_status(&tally, 2);
            return;
        }
    };
    let mut decoder = Decoder::new(chunked);
    if !leftover.is_empty() {
        let frames = decoder.feed(&buf[leftover], now_ns(), false, &mut tally.out);
        shared.delivered.fetch_add(frames, SeqCst);
    }
    set_status(&tally, 1);
    shared.ready.fetch_add(1, SeqCst);
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            break;
        }
        let now = now_ns();
        let recording = shared.recording.load(Relaxed);
        if recording {
            tally.out.reads_recorded += 1;
        }
        let frames = decoder.feed(&buf[..n], now, recording, &mut tally.out);
        if !tally.out.samples.is_empty() {
            record_latencies(&mut tally.out.samples);
        }
        if frames > 0 {
            shared.delivered.fetch_add(frames, SeqCst);
            if shared.waiting.load(SeqCst) && shared.waiting.swap(false, SeqCst) {
                shared.notify.notify_waiters();
            }
        }
        if decoder.ended() {
            break;
        }
    }
    // The stream ended while the scenario still ran (readers are aborted, never ended, at its end).
    tally.out.lost = true;
    set_status(&tally, 3);
    shared.lost.fetch_add(1, SeqCst);
}

/// Subscriptions opening (connect, request, response head) at once.
pub(crate) const OPENING: usize = 256;

/// Waits until `count` subscriptions have opened or failed.
pub(crate) async fn wait_opened(shared: &Shared, count: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while shared.ready.load(SeqCst) + shared.failed.load(SeqCst) < count {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

pub(crate) async fn stop_readers(handles: Vec<JoinHandle<()>>, shared: &Shared) -> Vec<ReaderOut> {
    for handle in &handles {
        handle.abort();
    }
    for handle in handles {
        let _ = handle.await;
    }
    std::mem::take(&mut *shared.results.lock().unwrap())
}

// ------------------------------------------------------------------------------------------------
// Posters: keep-alive POST connections.

pub(crate) struct PostConn {
    pub(crate) hub: Arc<HubAddr>,
    pub(crate) src: Option<Ipv4Addr>,
    pub(crate) stream: Option<TcpStream>,
    pub(crate) wbuf: Vec<u8>,
    pub(crate) body: Vec<u8>,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) rfill: usize,
}

impl PostConn {
    pub(crate) fn new(hub: Arc<HubAddr>, src: Option<Ipv4Addr>) -> PostConn {
        PostConn {
            hub,
            src,
            stream: None,
            wbuf: Vec::with_capacity(1024),
            body: Vec::with_capacity(1024),
            rbuf: vec![0; 4096],
            rfill: 0,
        }
    }

    /// POSTs `{"t":<send time>,"s":<seq>,"p":"xx..."}` (padded to `body_bytes`) and reads the answer.
    pub(crate) async fn post(&mut self, path: &str, seq: u64, body_bytes: usize) -> Result<u16> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.hub, self.src).await.context("connect")?);
            self.rfill = 0;
        }
        let result = self.exchange(path, seq, body_bytes).await;
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
        }
        result.map(|(status, _)| status)
    }

    pub(crate) async fn exchange(
        &mut self,
        path: &str,
        seq: u64,
        body_bytes: usize,
    ) -> Result<(u16, bool)> {
        let PostConn {
            hub,
            stream,
            wbuf,
            body,
            rbuf,
            rfill,
            ..
        } = self;
        let stream = stream.as_mut().expect("connected");
        body.clear();
        let _ = write!(body, "{{\"t\":{},\"s\":{seq},\"p\":\"", now_ns());
        if body.len() + 2 < body_bytes {
            body.resize(body_bytes - 2, b'x');
        }
        body.extend_from_slice(b"\"}");
        wbuf.clear();
        let _ = write!(
            wbuf,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            hub.host,
            body.len()
        );
        wbuf.extend_from_slice(body);
        stream.write_all(wbuf).await?;
        loop {
            if let Some(end) = find(&rbuf[..*rfill], b"\r\n\r\n") {
                let head = &rbuf[..end];
                let status = parse_status(head)?;
                let keep_alive =
                    !header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let body_len = if let Some(len) = header(head, "content-length") {
                    Some(len.parse::<usize>().context("bad Content-Length")?)
                } else if header(head, "transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
                {
                    find(&rbuf[end + 4..*rfill], b"0\r\n\r\n").map(|at| at + 5)
                } else {
                    Some(0)
                };
                if let Some(body_len) = body_len {
                    let total = end + 4 + body_len;
                    if *rfill >= total {
                        rbuf.copy_within(total..*rfill, 0);
                        *rfill -= total;
                        return Ok((status, keep_alive));
                    }
                }
            }
            if *rfill == rbuf.len() {
                rbuf.resize(rbuf.len() * 2, 0);
            }
            let n = stream.read(&mut rbuf[*rfill..]).await?;
            if n == 0 {
                bail!("the hub closed the connection before answering a POST");
            }
            *rfill += n;
        }
    }
}

/// How posters pace themselves.
pub(crate) struct Plan {
    /// Request targets, used round-robin.
    pub(crate) paths: Vec<String>,
    /// Deliveries one POST makes (subscribers per channel); 0: no pacing.
    pub(crate) fanout: u64,
    /// Most messages in flight: posted but not yet received by every subscriber.
    pub(crate) window: u64,
    pub(crate) body_bytes: usize,
    pub(crate) stop: AtomicBool,
    /// POSTs started.
    pub(crate) sent: AtomicU64,
    /// Deliveries written off: failed POSTs, stalls.
    pub(crate) credit: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) stalls: AtomicU64,
}

/// A window that has not moved for this long counts as a stall and is written off.
pub(crate) const STALL: Duration = Duration::from_secs(2);

/// Posts the plan's messages; path `i` goes out on `conns[i % conns.len()]` (one connection per
/// hub when a cluster's nodes take the posts in turn).
pub(crate) async fn poster(mut conns: Vec<PostConn>, plan: Arc<Plan>, shared: Arc<Shared>) {
    let mut consecutive_errors = 0u32;
    loop {
        if plan.stop.load(Relaxed) {
            break;
        }
        if plan.fanout > 0 {
            let deadline = tokio::time::Instant::now() + STALL;
            loop {
                let notified = shared.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                shared.waiting.store(true, SeqCst);
                let sent = plan.sent.load(SeqCst);
                let got = shared.delivered.load(SeqCst) + plan.credit.load(SeqCst);
                let want = (sent + 1) * plan.fanout;
                let allowed = got + plan.window * plan.fanout;
                if want <= allowed || plan.stop.load(SeqCst) {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    plan.stalls.fetch_add(1, Relaxed);
                    plan.credit.fetch_add(want - allowed, SeqCst);
                    break;
                }
            }
            if plan.stop.load(Relaxed) {
                break;
            }
        }
        let seq = plan.sent.fetch_add(1, SeqCst);
        let index = seq as usize % plan.paths.len();
        let path = &plan.paths[index];
        let at = index % conns.len();
        let conn = &mut conns[at];
        match conn.post(path, seq, plan.body_bytes).await {
            Ok(200) => {
                consecutive_errors = 0;
                shared.posts.fetch_add(1, Relaxed);
            }
            outcome => {
                plan.errors.fetch_add(1, Relaxed);
                plan.credit.fetch_add(plan.fanout, SeqCst);
                shared.error(match outcome {
                    Ok(status) => format!("POST {path} answered {status}"),
                    Err(err) => format!("POST {path}: {err:#}"),
                });
                consecutive_errors += 1;
                if consecutive_errors > 3 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The kinds of idle connection `idle-kinds` measures.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IdleKind {
    SseDirect,
    /// A subscription on a kept-alive connection after a POST.
    SseAfterPost,
    /// A subscription after a chunked POST, which leaves the connection with hyper.
    SseViaHyper,
    WebSocket,
}

impl IdleKind {
    pub(crate) const ALL: [IdleKind; 4] = [
        IdleKind::SseDirect,
        IdleKind::SseAfterPost,
        IdleKind::SseViaHyper,
        IdleKind::WebSocket,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            IdleKind::SseDirect => "SSE subscriber (fresh connection)",
            IdleKind::SseAfterPost => "SSE subscriber (after a POST, kept alive)",
            IdleKind::SseViaHyper => "SSE subscriber (via hyper, after a chunked POST)",
            IdleKind::WebSocket => "idle WebSocket",
        }
    }
}

/// Reads one response head, failing unless its status is `expect`.
pub(crate) async fn read_head_expect(stream: &mut TcpStream, expect: u16) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut byte = [0u8; 256];
    loop {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let status = parse_status(&buf[..end])?;
            if status != expect {
                bail!("answered {status}, expected {expect}");
            }
            return Ok(());
        }
        if buf.len() > 16 * 1024 {
            bail!("response head too long");
        }
    }
}

/// Writes one request and reads its response head, failing unless its status is `expect`.
pub(crate) async fn exchange(stream: &mut TcpStream, request: String, expect: u16) -> Result<()> {
    stream.write_all(request.as_bytes()).await?;
    read_head_expect(stream, expect).await
}

/// Opens one idle connection of a kind and leaves it open.
pub(crate) async fn open_idle(
    hub: &HubAddr,
    src: Option<Ipv4Addr>,
    kind: IdleKind,
    i: usize,
) -> Result<TcpStream> {
    let mut stream = connect(hub, src).await?;
    let host = &hub.host;
    match kind {
        IdleKind::SseDirect => {
            exchange(
                &mut stream,
                format!("GET /v1/kinds/sse{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                200,
            )
            .await?;
        }
        IdleKind::SseAfterPost | IdleKind::SseViaHyper => {
            // The POST's answer is `200` with an empty body. A chunked body leaves the connection
            // with hyper; after one with a length, the hub's front serves the next request.
            let framing = match kind {
                IdleKind::SseViaHyper => "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                _ => "Content-Length: 2\r\n\r\n{}",
            };
            exchange(
                &mut stream,
                format!("POST /v1/kinds/nobody HTTP/1.1\r\nHost: {host}\r\n{framing}"),
                200,
            )
            .await?;
            exchange(
                &mut stream,
                format!("GET /v1/kinds/hyper{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                200,
            )
            .await?;
        }
        IdleKind::WebSocket => {
            exchange(
                &mut stream,
                format!(
                    "GET /kinds{i} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ),
                101,
            )
            .await?;
        }
    }
    Ok(stream)
}
