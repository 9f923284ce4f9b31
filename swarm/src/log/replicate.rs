//! hyperlog 4.x replication over any tokio byte stream (spec §2.5–2.7).
//!
//! Each side sends its Handshake first. At the remote handshake a side that sends heads takes a
//! snapshot of its change counter, announces the logs of its heads with `Have{log, seq}` (the
//! highest seq within the snapshot) and sends SentHeads. A `Want{log, seq}` is served with that
//! log's entries after `seq` up to the snapshot, from a min-heap ordered by local change; the
//! logs a node links into are announced (a "lazy Have") before the node is queued. The receiving
//! side counts the nodes it is missing from the Haves, asks with `Want{log, head}`, inserts what
//! arrives (§1.7), keeps nodes whose links or earlier seqs are not here yet in a bounded retry
//! queue, and sends SentWants when nothing is missing. The consecutive nodes of one read from
//! the stream are inserted, each exactly as alone, into one store transaction
//! ([`Log::begin_receive`]), committed before any other message is handled. When both sides have sent and received
//! SentHeads and SentWants, a non-live replication half-closes its write side and ends when the
//! remote's end arrives; a live one keeps streaming every local node with a change after the
//! snapshot, in change order, until stopped or until the remote ends.
//!
//! Any malformed or hostile input (bad frames, a node whose key does not match, a signature the
//! verifier refuses, a retry queue over its bound, an end of stream before completion) ends the
//! replication with a typed [`ReplicateError`]; nothing of the offending node is stored.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::hyperlog::{Log, LogError, ReceiveBatch};
use super::node::{Node, NodeError};
use super::wire::{FrameDecoder, Handshake, LogSeq, Message, WireError, DEFAULT_MAX_FRAME_SIZE};

/// Default bound on the retry queue of nodes that arrived before their links (or before the
/// earlier entries of their log): 1024 nodes.
///
/// An honest hyperlog sender streams each log in seq order and announces dependency logs before
/// the nodes that need them, so out-of-order nodes only wait for the other logs in flight; the
/// queue stays far below this. A peer that fills it is hostile or broken.
pub const DEFAULT_MAX_PENDING: usize = 1024;
/// Default bound on the bytes (values and links) held in the retry queue: 64 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// How much to write to the stream at once.
const WRITE_CHUNK: usize = 64 * 1024;
/// How much already-arrived input is gathered before its nodes are inserted: the nodes of one
/// gathering go into one store transaction, and on a durable store each costs a sync to disk
/// (16 KiB, one read, holds only ~45 nodes; a WebRTC stream delivers 16 KiB messages).
const READ_AHEAD: usize = 256 * 1024;

/// A replication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send and receive.
    Sync,
    /// Only send.
    Push,
    /// Only receive.
    Pull,
}

impl Mode {
    /// The mode's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Push => "push",
            Mode::Pull => "pull",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        match s {
            "sync" => Some(Mode::Sync),
            "push" => Some(Mode::Push),
            "pull" => Some(Mode::Pull),
            _ => None,
        }
    }
}

/// Options of a replication. `mode` and `live` are sent in the handshake only when set, as
/// hyperlog does with its `opts.mode` and `opts.live`.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// The local mode (`None`: sync, and no mode field in the handshake).
    pub mode: Option<Mode>,
    /// Ask for live mode (`None`: no live field; either side's `true` turns it on for both).
    pub live: Option<bool>,
    /// Metadata for the remote.
    pub metadata: Option<Vec<u8>>,
    /// Bound on the retry queue, in nodes ([`DEFAULT_MAX_PENDING`]).
    pub max_pending: usize,
    /// Bound on the retry queue, in bytes ([`DEFAULT_MAX_PENDING_BYTES`]).
    pub max_pending_bytes: usize,
    /// Largest accepted frame body ([`DEFAULT_MAX_FRAME_SIZE`]).
    pub max_frame_size: usize,
}

impl Default for ReplicateOptions {
    fn default() -> ReplicateOptions {
        ReplicateOptions {
            mode: None,
            live: None,
            metadata: None,
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        }
    }
}

/// Why a replication ended in error. The stream is dead after any of these.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// Reading or writing the stream failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A malformed frame or message.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({buffered} bytes buffered)")]
    TruncatedFrame {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
    /// The stream ended before the replication completed.
    #[error("the stream ended before the replication completed")]
    UnexpectedEof,
    /// A message other than the handshake came first.
    #[error("the remote sent a message before its handshake")]
    NoHandshake,
    /// A second handshake.
    #[error("the remote sent a second handshake")]
    DuplicateHandshake,
    /// "Remote uses invalid mode".
    #[error("remote uses invalid mode {0:?}")]
    InvalidMode(String),
    /// "Remote and local are both pulling".
    #[error("remote and local are both pulling")]
    BothPulling,
    /// "Remote and local are both pushing".
    #[error("remote and local are both pushing")]
    BothPushing,
    /// A node message whose key or links are not keys.
    #[error("bad node: {0}")]
    BadNode(#[from] NodeError),
    /// A node refused by the log (checksum mismatch, invalid signature) or a store failure.
    #[error("node refused: {0}")]
    Log(#[from] LogError),
    /// The retry queue of out-of-order nodes is over its bound.
    #[error("more than {max_nodes} nodes or {max_bytes} bytes wait for their links")]
    QueueFull {
        /// The node bound.
        max_nodes: usize,
        /// The byte bound.
        max_bytes: usize,
    },
}

/// Counters of a running replication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Node messages sent.
    pub nodes_sent: u64,
    /// Nodes received and inserted (new nodes and dedup entries).
    pub nodes_received: u64,
    /// Whether both sides have sent SentHeads and SentWants (the sync part is over).
    pub synced: bool,
}

/// How a replication went.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The final counters.
    pub progress: Progress,
    /// The remote's handshake (its mode, metadata and live flag).
    pub remote: Handshake,
    /// Whether the replication went live.
    pub live: bool,
}

/// Ends a live replication (or, before completion, turns live mode off): the local side
/// half-closes once its pending frames are written, and the replication ends when the remote's
/// end arrives.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl StopHandle {
    /// Asks the replication to finish.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// One replication session of a [`Log`] with one remote.
#[derive(Debug)]
pub struct Replication {
    log: Log,
    options: ReplicateOptions,
    progress: watch::Sender<Progress>,
    stop: Arc<watch::Sender<bool>>,
}

/// Replicates `log` over `stream` (see [`Replication`]).
pub async fn replicate<S>(
    log: &Log,
    stream: S,
    options: ReplicateOptions,
) -> Result<Summary, ReplicateError>
where
    S: AsyncRead + AsyncWrite,
{
    Replication::new(log, options).run(stream).await
}

impl Replication {
    /// A replication of `log`, not started.
    pub fn new(log: &Log, options: ReplicateOptions) -> Replication {
        Replication {
            log: log.clone(),
            options,
            progress: watch::Sender::new(Progress::default()),
            stop: Arc::new(watch::Sender::new(false)),
        }
    }

    /// The counters, updated while it runs.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// A handle to end it.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Runs the replication to its end.
    pub async fn run<S>(self, stream: S) -> Result<Summary, ReplicateError>
    where
        S: AsyncRead + AsyncWrite,
    {
        let (rd, wr) = tokio::io::split(stream);
        tokio::pin!(rd);
        tokio::pin!(wr);
        let mut stop_rx = self.stop.subscribe();
        let mut changes_rx = self.log.watch_changes();
        let mut session = Session::new(&self);
        let mut decoder = FrameDecoder::with_max_frame_size(self.options.max_frame_size);
        let mut rbuf = vec![0u8; 16 * 1024];
        let mut wbuf: Vec<u8> = Vec::new();
        let mut wpos = 0;
        let mut read_eof = false;
        let mut write_closed = false;
        // The handshake goes out first, before anything is read (JS does the same).
        if let Some(first) = session.control.pop_front() {
            wr.write_all(&first.to_frame()).await?;
        }
        loop {
            if *stop_rx.borrow_and_update() {
                session.stopping = true;
            }
            if wpos == wbuf.len() {
                wbuf.clear();
                wpos = 0;
                let counter = *changes_rx.borrow_and_update();
                while wbuf.len() < WRITE_CHUNK && session.next_frame(&mut wbuf, counter)? {}
                self.progress.send_if_modified(|p| {
                    let modified = *p != session.progress;
                    *p = session.progress;
                    modified
                });
            }
            let want_write = wpos < wbuf.len();
            if !want_write && !write_closed && session.done_sending() {
                wr.shutdown().await?;
                write_closed = true;
            }
            if write_closed && read_eof {
                break;
            }
            let wait_live = !want_write && session.live_waiting();
            tokio::select! {
                r = rd.read(&mut rbuf), if !read_eof => {
                    let mut n = r?;
                    let mut gathered = n;
                    if n > 0 {
                        decoder.push(&rbuf[..n]);
                        // Take what else has arrived already, without waiting, so that its nodes
                        // share one transaction.
                        while gathered < READ_AHEAD {
                            let more = std::future::poll_fn(|cx| {
                                let mut buf = tokio::io::ReadBuf::new(&mut rbuf);
                                match rd.as_mut().poll_read(cx, &mut buf) {
                                    std::task::Poll::Ready(r) => {
                                        std::task::Poll::Ready(Some(r.map(|()| buf.filled().len())))
                                    }
                                    std::task::Poll::Pending => std::task::Poll::Ready(None),
                                }
                            })
                            .await;
                            match more {
                                Some(Ok(0)) => {
                                    read_eof = true;
                                    break;
                                }
                                Some(Ok(m)) => {
                                    decoder.push(&rbuf[..m]);
                                    gathered += m;
                                }
                                Some(Err(e)) => return Err(e.into()),
                                None => break,
                            }
                        }
                        session.on_messages(&mut decoder)?;
                        self.progress.send_if_modified(|p| {
                            let modified = *p != session.progress;
                            *p = session.progress;
                            modified
                        });
                        if read_eof {
                            n = 0;
                        }
                    }
                    if n == 0 {
                        read_eof = true;
                        if !decoder.is_at_boundary() {
                            return Err(ReplicateError::TruncatedFrame { buffered: decoder.buffered() });
                        }
                        if !session.complete {
                            return Err(ReplicateError::UnexpectedEof);
                        }
                        // The remote is done: send what is pending, then end too.
                        session.stopping = true;
                    }
                }
                r = wr.write(&wbuf[wpos..]), if want_write => {
                    let n = r?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    }
                    wpos += n;
                }
                r = changes_rx.changed(), if wait_live => {
                    if r.is_err() {
                        session.stopping = true;
                    }
                }
                r = stop_rx.changed(), if !session.stopping => {
                    if r.is_err() || *stop_rx.borrow() {
                        session.stopping = true;
                    }
                }
            }
        }
        let remote = session
            .remote
            .clone()
            .ok_or(ReplicateError::UnexpectedEof)?;
        self.progress.send_replace(session.progress);
        Ok(Summary {
            progress: session.progress,
            remote,
            live: session.live,
        })
    }
}

/// The protocol state of one side (spec §2.5–2.6).
struct Session {
    log: Log,
    local_mode: Mode,
    local_live: bool,
    max_pending: usize,
    max_pending_bytes: usize,
    remote: Option<Handshake>,
    live: bool,
    /// The snapshot: the change counter at the remote handshake (0 for a puller, as in JS).
    changes0: u64,
    sent_haves: HashSet<String>,
    /// Logs a Want was served for (a second Want for the same log is ignored: an honest peer
    /// sends one per Have, and a Have goes out once per log).
    wanted: HashSet<String>,
    control: VecDeque<Message>,
    /// Entries to send: (change, log, seq), smallest change first.
    outgoing: BinaryHeap<Reverse<(u64, String, u64)>>,
    missing: i64,
    local_sent_wants: bool,
    local_sent_heads: bool,
    remote_sent_wants: bool,
    remote_sent_heads: bool,
    /// Nodes waiting for their links, by (sender's change, arrival).
    pending: BTreeMap<(u64, u64), Node>,
    pending_bytes: usize,
    arrivals: u64,
    complete: bool,
    live_next: u64,
    stopping: bool,
    progress: Progress,
}

fn node_size(node: &Node) -> usize {
    node.value.len() + 64 * node.links.len() + node.log.len() + 128
}

impl Session {
    fn new(rep: &Replication) -> Session {
        let mut control = VecDeque::new();
        control.push_back(Message::Handshake(Handshake {
            version: 1,
            mode: rep.options.mode.map(|m| m.as_str().to_string()),
            metadata: rep.options.metadata.clone(),
            live: rep.options.live,
        }));
        Session {
            log: rep.log.clone(),
            local_mode: rep.options.mode.unwrap_or(Mode::Sync),
            local_live: rep.options.live.unwrap_or(false),
            max_pending: rep.options.max_pending,
            max_pending_bytes: rep.options.max_pending_bytes,
            remote: None,
            live: false,
            changes0: 0,
            sent_haves: HashSet::new(),
            wanted: HashSet::new(),
            control,
            outgoing: BinaryHeap::new(),
            missing: 0,
            local_sent_wants: false,
            local_sent_heads: false,
            remote_sent_wants: false,
            remote_sent_heads: false,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            arrivals: 0,
            complete: false,
            live_next: 0,
            stopping: false,
            progress: Progress::default(),
        }
    }

    /// Whether everything that will ever be sent has been handed out.
    fn done_sending(&self) -> bool {
        self.complete
            && (!self.live || self.stopping)
            && self.control.is_empty()
            && self.outgoing.is_empty()
    }

    /// Whether the only thing left to send is future changes.
    fn live_waiting(&self) -> bool {
        self.complete
            && self.live
            && !self.stopping
            && self.control.is_empty()
            && self.outgoing.is_empty()
    }

    /// Appends the next frame to `out`; false when there is nothing to send now.
    fn next_frame(&mut self, out: &mut Vec<u8>, counter: u64) -> Result<bool, ReplicateError> {
        if let Some(msg) = self.control.pop_front() {
            msg.encode_frame(out);
            return Ok(true);
        }
        if let Some(Reverse((_, log, seq))) = self.outgoing.pop() {
            let entry = self
                .log
                .entry(&log, seq)?
                .ok_or_else(|| corrupt(format!("entry {log}/{seq} vanished")))?;
            let mut node = self
                .log
                .get(&entry.key)?
                .ok_or_else(|| corrupt(format!("node {} vanished", entry.key)))?;
            node.log = log.clone();
            node.seq = seq;
            Message::Node(node.to_message()).encode_frame(out);
            self.progress.nodes_sent += 1;
            self.send_node(&log, seq.saturating_add(1))?;
            return Ok(true);
        }
        if self.complete && self.live && !self.stopping && self.live_next <= counter {
            let change = self.live_next;
            self.live_next += 1;
            let node = self
                .log
                .at_change(change)?
                .ok_or_else(|| corrupt(format!("change {change} vanished")))?;
            Message::Node(node.to_message()).encode_frame(out);
            self.progress.nodes_sent += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Handles every whole message in `decoder`. Consecutive Node messages are inserted into
    /// one [`ReceiveBatch`] (one store transaction), committed before any other message is
    /// handled, and also when a node is refused (so that the nodes before it stay inserted).
    /// Each node goes through exactly the steps it would alone; only the commits are grouped.
    fn on_messages(&mut self, decoder: &mut FrameDecoder) -> Result<(), ReplicateError> {
        let log = self.log.clone();
        let mut batch: Option<ReceiveBatch<'_>> = None;
        let result = (|| {
            while let Some(msg) = decoder.next_message()? {
                match msg {
                    Message::Node(msg) if self.remote.is_some() => {
                        let node = Node::from_message(msg)?;
                        if batch.is_none() {
                            batch = Some(log.begin_receive()?);
                        }
                        if let Some(b) = batch.as_mut() {
                            self.on_node(node, b)?;
                        }
                    }
                    msg => {
                        if let Some(b) = batch.take() {
                            b.commit()?;
                        }
                        self.on_message(msg)?;
                    }
                }
            }
            Ok(())
        })();
        if let Some(b) = batch.take() {
            b.commit()?;
        }
        result
    }

    fn on_message(&mut self, msg: Message) -> Result<(), ReplicateError> {
        if let Message::Handshake(h) = msg {
            return self.on_handshake(h);
        }
        if self.remote.is_none() {
            return Err(ReplicateError::NoHandshake);
        }
        match msg {
            // Handled above.
            Message::Handshake(_) => {}
            Message::Have(LogSeq { log, seq }) => {
                let head = self.log.log_head(&log)?;
                if head < seq {
                    self.missing = self
                        .missing
                        .saturating_add(i64::try_from(seq - head).unwrap_or(i64::MAX));
                    self.control
                        .push_back(Message::Want(LogSeq::new(log, head)));
                }
            }
            Message::Want(LogSeq { log, seq }) => {
                if !self.wanted.insert(log.clone()) {
                    return Ok(());
                }
                if let Some(next) = seq.checked_add(1) {
                    self.send_node(&log, next)?;
                }
            }
            Message::Node(msg) => {
                let node = Node::from_message(msg)?;
                let log = self.log.clone();
                let mut batch = log.begin_receive()?;
                let result = self.on_node(node, &mut batch);
                batch.commit()?;
                result?;
            }
            Message::SentHeads => {
                if !self.local_sent_wants && self.missing == 0 {
                    self.send_sent_wants();
                }
                self.remote_sent_heads = true;
                self.check_complete();
            }
            Message::SentWants => {
                self.remote_sent_wants = true;
                self.check_complete();
            }
            Message::Unknown { .. } => {}
        }
        Ok(())
    }

    fn on_handshake(&mut self, h: Handshake) -> Result<(), ReplicateError> {
        if self.remote.is_some() {
            return Err(ReplicateError::DuplicateHandshake);
        }
        let rm = Mode::parse(h.mode_or_default())
            .ok_or_else(|| ReplicateError::InvalidMode(h.mode_or_default().to_string()))?;
        let lm = self.local_mode;
        if rm == Mode::Pull && lm == Mode::Pull {
            return Err(ReplicateError::BothPulling);
        }
        if rm == Mode::Push && lm == Mode::Push {
            return Err(ReplicateError::BothPushing);
        }
        // As hyperlog, except that a puller does not wait for SentWants (and a pusher for
        // SentHeads) from a remote in sync mode: hyperlog waits forever there, as that remote
        // (seeing a puller or pusher) never sends them. Against push/pull and sync/sync peers
        // the flags are hyperlog's.
        self.remote_sent_wants = rm == Mode::Push || lm == Mode::Pull;
        self.remote_sent_heads = rm == Mode::Pull || lm == Mode::Push;
        self.local_sent_wants = lm == Mode::Push || rm == Mode::Pull;
        self.local_sent_heads = lm == Mode::Pull || rm == Mode::Push;
        self.live = self.local_live || h.live.unwrap_or(false);
        self.remote = Some(h);
        if !self.local_sent_heads {
            let (changes0, heads) = self.log.snapshot()?;
            self.changes0 = changes0;
            for head in heads {
                self.send_have(&head.log)?;
            }
            self.control.push_back(Message::SentHeads);
            self.local_sent_heads = true;
        }
        self.check_complete();
        Ok(())
    }

    /// hyperlog's `sendHave`: once per log, the highest seq within the snapshot.
    fn send_have(&mut self, log: &str) -> Result<(), ReplicateError> {
        if !self.sent_haves.insert(log.to_string()) {
            return Ok(());
        }
        let mut seq = self.log.log_head(log)?;
        while seq > 0 {
            match self.log.entry(log, seq)? {
                Some(e) if e.change <= self.changes0 => break,
                _ => seq -= 1,
            }
        }
        if seq > 0 {
            self.control.push_back(Message::Have(LogSeq::new(log, seq)));
        }
        Ok(())
    }

    /// hyperlog's `sendNode`: queue entry `seq` of `log` if it is within the snapshot, after
    /// announcing the logs it links into.
    fn send_node(&mut self, log: &str, seq: u64) -> Result<(), ReplicateError> {
        let Some(entry) = self.log.entry(log, seq)? else {
            return Ok(());
        };
        if entry.change > self.changes0 {
            return Ok(());
        }
        for dep in &entry.log_links {
            self.send_have(dep)?;
        }
        self.outgoing
            .push(Reverse((entry.change, log.to_string(), seq)));
        Ok(())
    }

    fn send_sent_wants(&mut self) {
        self.control.push_back(Message::SentWants);
        self.local_sent_wants = true;
    }

    fn check_complete(&mut self) {
        if !self.complete
            && self.local_sent_wants
            && self.local_sent_heads
            && self.remote_sent_wants
            && self.remote_sent_heads
        {
            self.complete = true;
            self.progress.synced = true;
            self.live_next = self.changes0 + 1;
        }
    }

    fn on_inserted(&mut self) {
        self.progress.nodes_received += 1;
        if !self.local_sent_wants {
            self.missing -= 1;
            if self.missing == 0 {
                self.send_sent_wants();
                self.check_complete();
            }
        }
    }

    /// Whether a node that failed the seq check is one we already hold at that position (an
    /// echo or a repeat), to be dropped rather than queued.
    fn is_known_position(batch: &ReceiveBatch<'_>, node: &Node) -> Result<bool, ReplicateError> {
        if node.seq == 0 {
            return Ok(false);
        }
        Ok(matches!(batch.entry(&node.log, node.seq)?, Some(e) if e.key == node.key))
    }

    fn on_node(&mut self, node: Node, batch: &mut ReceiveBatch<'_>) -> Result<(), ReplicateError> {
        match batch.receive(&node) {
            Ok(_) => {
                self.on_inserted();
                self.retry_pending(batch)
            }
            Err(e) if e.is_not_found() => {
                if matches!(e, LogError::InvalidSeq { .. })
                    && Session::is_known_position(batch, &node)?
                {
                    return Ok(());
                }
                let size = node_size(&node);
                if self.pending.len() >= self.max_pending
                    || self.pending_bytes.saturating_add(size) > self.max_pending_bytes
                {
                    return Err(ReplicateError::QueueFull {
                        max_nodes: self.max_pending,
                        max_bytes: self.max_pending_bytes,
                    });
                }
                self.pending_bytes += size;
                self.arrivals += 1;
                self.pending.insert((node.change, self.arrivals), node);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Retries queued nodes in order of the sender's change until none can be inserted.
    fn retry_pending(&mut self, batch: &mut ReceiveBatch<'_>) -> Result<(), ReplicateError> {
        'outer: loop {
            let keys: Vec<(u64, u64)> = self.pending.keys().copied().collect();
            for k in keys {
                let Some(node) = self.pending.get(&k) else {
                    continue;
                };
                match batch.receive(node) {
                    Ok(_) => {
                        if let Some(n) = self.pending.remove(&k) {
                            self.pending_bytes -= node_size(&n);
                        }
                        self.on_inserted();
                        continue 'outer;
                    }
                    Err(LogError::InvalidSeq { .. })
                        if Session::is_known_position(batch, node)? =>
                    {
                        if let Some(n) = self.pending.remove(&k) {
                            self.pending_bytes -= node_size(&n);
                        }
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
    }
}

fn corrupt(msg: String) -> ReplicateError {
    ReplicateError::Log(LogError::Store(super::store::StoreError::Corrupt(msg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::hyperlog::LogOptions;
    use crate::log::sign::{Keypair, Verifier};
    use crate::log::wire::LogSeq;

    /// Feeds `input` (in one write, so it arrives in one read) and returns how it ended.
    async fn feed(log: &Log, input: Vec<u8>) -> Result<Summary, ReplicateError> {
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        let log = log.clone();
        let task =
            tokio::spawn(async move { replicate(&log, theirs, ReplicateOptions::default()).await });
        ours.write_all(&input).await.unwrap();
        ours.shutdown().await.unwrap();
        let mut sink = Vec::new();
        ours.read_to_end(&mut sink).await.ok();
        task.await.unwrap()
    }

    #[tokio::test]
    async fn nodes_before_a_refused_one_in_the_same_read_stay_inserted() {
        let author = Keypair::from_seed(&[1; 32]);
        let stranger = Keypair::from_seed(&[2; 32]);
        let b = Log::memory_with_id(
            "B",
            LogOptions {
                keypair: None,
                verifier: Some(Verifier::for_keypair(&author)),
            },
        )
        .unwrap();
        let mut n1 = Node::new(vec![], b"one".to_vec(), "A".into(), 1, 1);
        author.sign_node(&mut n1);
        let mut n2 = Node::new(vec![n1.key], b"two".to_vec(), "A".into(), 2, 2);
        stranger.sign_node(&mut n2);
        let input: Vec<u8> = [
            Message::Handshake(Handshake::new()),
            Message::Have(LogSeq::new("A", 2)),
            Message::SentHeads,
            Message::Node(n1.to_message()),
            Message::Node(n2.to_message()),
        ]
        .iter()
        .flat_map(Message::to_frame)
        .collect();
        let err = feed(&b, input).await.unwrap_err();
        assert!(
            matches!(err, ReplicateError::Log(LogError::InvalidSignature { .. })),
            "{err}"
        );
        // As when each node was its own transaction: n1 is in, nothing of n2.
        assert_eq!(b.changes(), 1);
        assert_eq!(b.get(&n1.key).unwrap().unwrap().value, b"one");
        assert_eq!(b.get(&n2.key).unwrap(), None);
    }
}
