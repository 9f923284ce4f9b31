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
//! verifier refuses, a queue over its bound, a stream that ends inside a frame, a remote that
//! stalls past [`ReplicateOptions::idle_timeout`]) ends the replication with a typed
//! [`ReplicateError`]; nothing of the offending node is stored.
//!
//! A remote that ends its side cleanly (at a frame boundary) before the exchange is complete is
//! not an error, as in JS hyperlog, where the stream just ends: a JS peer does that when it
//! refuses one of our nodes, for one. The replication then ends with a [`Summary`] whose
//! [`Summary::ended_early`] says where the exchange stood and how many announced nodes never
//! came; everything received before is stored.
//!
//! Every queue of a session is bounded: the retry queue by [`ReplicateOptions::max_pending`] and
//! [`ReplicateOptions::max_pending_bytes`]; the Wants that answer the remote's Haves, which pile
//! up when the remote sends faster than it reads, by [`ReplicateOptions::max_send_queue_bytes`];
//! the decoder by [`ReplicateOptions::max_frame_size`] (plus one read-ahead); everything else by
//! the local log (one Have, one outgoing cursor and one served Want per local log).
//!
//! Keep-alive: in a live session with nothing to send, a zero-length frame (the single byte `00`)
//! goes out every [`ReplicateOptions::keep_alive`]. JS hyperlog's framing
//! (`length-prefixed-stream`, without its opt-in `allowEmpty`) skips zero-length frames without
//! passing them on, as this crate's [`FrameDecoder`] does, so older peers of either kind ignore
//! them. A remote seen sending one is held to the idle timeout in live mode too; a remote that
//! never sends one (JS hyperlog) may stay silent in live mode for as long as it likes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::hyperlog::{Log, LogError, ReceiveBatch, Refused};
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

/// Default bound on the Wants queued for the remote and not yet written: 8 MiB of memory
/// (about 40 000 Wants).
///
/// Each Have for a log missing here queues a Want, which waits until the remote reads. An honest
/// peer reads as it writes, and announces one Have per log; a peer that floods Haves without
/// reading hits this bound and the replication ends with [`ReplicateError::SendQueueFull`].
pub const DEFAULT_MAX_SEND_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Default idle timeout: 60 s (see [`ReplicateOptions::idle_timeout`]).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default keep-alive interval of a live session: 20 s (see [`ReplicateOptions::keep_alive`]).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// What a queued Want costs, beyond its log id: its slot in the queue (see
/// [`DEFAULT_MAX_SEND_QUEUE_BYTES`]).
const QUEUED_MESSAGE_COST: usize = std::mem::size_of::<Message>() + 16;

/// How much to write to the stream at once.
const WRITE_CHUNK: usize = 64 * 1024;
/// Runs `f`, which blocks (signature checks, hashing, a redb commit that may wait for the disk),
/// without holding up the runtime's other tasks: on a multi-threaded runtime the worker hands
/// its other tasks to another thread first (`block_in_place`). A current-thread runtime has no
/// other thread to hand them to: there `f` runs inline, as before (use a multi-threaded runtime,
/// or [`super::async_log::AsyncLog`] for appends, where that matters).
fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

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
    /// Bound on the Wants queued for the remote and not yet written, in bytes of memory
    /// ([`DEFAULT_MAX_SEND_QUEUE_BYTES`]).
    pub max_send_queue_bytes: usize,
    /// How long the session may make no progress while it waits for the remote before it fails
    /// with [`ReplicateError::IdleTimeout`] (default [`DEFAULT_IDLE_TIMEOUT`], 60 s; `None`:
    /// never). It waits for the remote to read while something is being written (no byte
    /// accepted for this long), and for the remote to write until the exchange is complete,
    /// while a frame is partly received, after a side has ended, and in live mode when the
    /// remote sends keep-alives. A live session whose remote sends no keep-alives (JS hyperlog)
    /// may stay quiet indefinitely, as live sessions do when nobody writes. Timeouts and
    /// keep-alives use tokio's timer: the runtime needs its time driver (`enable_all`).
    pub idle_timeout: Option<Duration>,
    /// In a live session, send a keep-alive (a zero-length frame, which hyperlog peers skip)
    /// after this long without writing anything (default [`DEFAULT_KEEP_ALIVE`], 20 s; `None`:
    /// never). Keep it well below the remote's idle timeout.
    pub keep_alive: Option<Duration>,
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
            max_send_queue_bytes: DEFAULT_MAX_SEND_QUEUE_BYTES,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
        }
    }
}

/// Why a replication ended in error. The stream is dead after any of these.
///
/// A variant that wraps another error shows that error's message as its own and has no
/// `source()` of its own (`#[error(transparent)]`), so that an error chain (`{:#}` of an
/// `anyhow::Error`) says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// Reading or writing the stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A malformed frame or message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({buffered} bytes buffered)")]
    TruncatedFrame {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
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
    #[error(transparent)]
    BadNode(#[from] NodeError),
    /// A node refused by the log (checksum mismatch, invalid signature) or a store failure.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The retry queue of out-of-order nodes is over its bound
    /// ([`ReplicateOptions::max_pending`], [`ReplicateOptions::max_pending_bytes`]).
    #[error("more than {max_nodes} nodes or {max_bytes} bytes wait for their links (max_pending, max_pending_bytes)")]
    QueueFull {
        /// The node bound.
        max_nodes: usize,
        /// The byte bound.
        max_bytes: usize,
    },
    /// The remote's Haves queued more Wants than [`ReplicateOptions::max_send_queue_bytes`]
    /// allows while it did not read them.
    #[error("the remote asked for more than the send queue holds ({max_bytes} bytes, max_send_queue_bytes) without reading the answers")]
    SendQueueFull {
        /// The bound, in bytes.
        max_bytes: usize,
    },
    /// Nothing moved for [`ReplicateOptions::idle_timeout`] while the session waited for the
    /// remote.
    #[error("the remote {stalled} for {timeout:?} (idle_timeout)")]
    IdleTimeout {
        /// The timeout.
        timeout: Duration,
        /// What the session was waiting for.
        stalled: Stall,
    },
}

/// What an idle session was waiting for (see [`ReplicateError::IdleTimeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// For the remote to read what is being written to it.
    NotReading,
    /// For the remote to send something (the rest of a frame, its next message, its end).
    Silent,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stall::NotReading => "read nothing of what was sent to it",
            Stall::Silent => "sent nothing",
        })
    }
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
    /// The remote's handshake (its mode, metadata and live flag); `None` if the remote ended
    /// before sending one.
    pub remote: Option<Handshake>,
    /// Whether the replication went live.
    pub live: bool,
    /// `Some` when the remote ended its side (cleanly, at a frame boundary) before the exchange
    /// was complete: what this side had not got yet. This is how JS hyperlog ends a replication
    /// it gives up on (it refused a node, its application stopped it), and a normal end there;
    /// nothing failed on this side, and what arrived before is stored. `None`: the exchange
    /// completed (and, live, went on until a side ended it).
    pub ended_early: Option<EarlyEnd>,
}

/// Where the exchange stood when the remote ended early (see [`Summary::ended_early`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyEnd {
    /// The phase the remote left in.
    pub phase: Phase,
    /// Nodes the remote announced (in its Haves) that did not arrive.
    pub missing: u64,
}

/// The phases of an exchange, from this side (see [`EarlyEnd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the remote's handshake: nothing was exchanged.
    Handshake,
    /// Before the remote announced all its heads (its SentHeads).
    Heads,
    /// Waiting for nodes the remote announced ([`EarlyEnd::missing`] of them).
    Nodes,
    /// Waiting for the remote to finish asking for and receiving this side's nodes (its
    /// SentWants).
    Wants,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Handshake => "before its handshake",
            Phase::Heads => "before announcing all its heads",
            Phase::Nodes => "before sending every node it announced",
            Phase::Wants => "before receiving everything it asked for",
        })
    }
}

impl std::fmt::Display for EarlyEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the remote ended {}", self.phase)?;
        if self.missing > 0 {
            write!(f, " ({} announced nodes did not arrive)", self.missing)?;
        }
        Ok(())
    }
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
        let idle_timeout = self.options.idle_timeout;
        let keep_alive = self.options.keep_alive;
        let mut rbuf = vec![0u8; 16 * 1024];
        let mut wbuf: Vec<u8> = Vec::new();
        let mut wpos = 0;
        let mut read_eof = false;
        let mut write_closed = false;
        // The remote went away on the write side (a broken pipe, a reset): nothing more is
        // written, and the replication ends when the read side does.
        let mut write_broken = false;
        // The last time the remote sent something, and the last time it took something (or
        // something new was queued for it).
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        // The handshake goes out first, before anything is read (JS does the same).
        if let Some(first) = session.control.pop_front() {
            let frame = first.to_frame();
            match idle_timeout {
                Some(t) => tokio::time::timeout(t, wr.write_all(&frame))
                    .await
                    .map_err(|_| ReplicateError::IdleTimeout {
                        timeout: t,
                        stalled: Stall::NotReading,
                    })??,
                None => wr.write_all(&frame).await?,
            }
            last_write = Instant::now();
        }
        loop {
            if *stop_rx.borrow_and_update() {
                session.stopping = true;
            }
            if wpos == wbuf.len() {
                wbuf.clear();
                wpos = 0;
                if wbuf.capacity() > 4 * WRITE_CHUNK {
                    // Do not keep a large node's buffer for the rest of the session.
                    wbuf = Vec::new();
                }
                if !write_broken {
                    let counter = *changes_rx.borrow_and_update();
                    while wbuf.len() < WRITE_CHUNK && session.next_frame(&mut wbuf, counter)? {}
                }
                if !wbuf.is_empty() {
                    last_write = Instant::now();
                }
                self.progress.send_if_modified(|p| {
                    let modified = *p != session.progress;
                    *p = session.progress;
                    modified
                });
            }
            let want_write = wpos < wbuf.len();
            if !want_write && !write_closed && (write_broken || session.done_sending()) {
                match wr.shutdown().await {
                    Ok(()) => {}
                    Err(e) if write_broken || is_disconnect(&e) => write_broken = true,
                    Err(e) => return Err(e.into()),
                }
                write_closed = true;
            }
            if write_closed && read_eof {
                break;
            }
            let wait_live = !want_write && !write_broken && session.live_waiting();
            // What the session waits for from the remote, and until when.
            let waiting_for_remote = !read_eof
                && (!session.complete
                    || !session.live
                    || session.stopping
                    || write_broken
                    || !decoder.is_at_boundary()
                    || decoder.empty_frames() > 0);
            let idle_deadline = match idle_timeout {
                Some(t) if want_write => Some((last_write + t, t, Stall::NotReading)),
                Some(t) if waiting_for_remote => {
                    Some((last_read.max(last_write) + t, t, Stall::Silent))
                }
                _ => None,
            };
            let keep_alive_at = match keep_alive {
                Some(k) if wait_live => Some(last_write + k),
                _ => None,
            };
            tokio::select! {
                r = rd.read(&mut rbuf), if !read_eof => {
                    let mut n = r?;
                    let mut gathered = n;
                    if n > 0 {
                        last_read = Instant::now();
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
                        // Verifying, hashing and the durable commit of what arrived block: on a
                        // multi-threaded runtime, off the worker, so the other tasks run meanwhile.
                        off_the_runtime(|| session.on_messages(&mut decoder))?;
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
                            session.end_early();
                        }
                        // The remote is done: send what is pending, then end too.
                        session.stopping = true;
                    }
                }
                r = wr.write(&wbuf[wpos..]), if want_write => {
                    match r {
                        Ok(0) => {
                            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                        }
                        Ok(n) => {
                            wpos += n;
                            last_write = Instant::now();
                        }
                        // The remote is gone, or going: what it sent may still end cleanly.
                        Err(e) if is_disconnect(&e) => {
                            tracing::debug!(error = %e, "replication: the remote stopped reading");
                            write_broken = true;
                            wpos = wbuf.len();
                        }
                        Err(e) => return Err(e.into()),
                    }
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
                stalled = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                    if let Some((timeout, stalled)) = stalled {
                        return Err(ReplicateError::IdleTimeout { timeout, stalled });
                    }
                }
                _ = sleep_until(keep_alive_at.map(|at| (at, (), ()))), if keep_alive_at.is_some() => {
                    // A zero-length frame.
                    wbuf.push(0);
                    last_write = Instant::now();
                }
            }
        }
        if write_broken && session.ended_early.is_none() && !session.complete {
            // The remote stopped reading and then ended its side: an early end all the same.
            session.end_early();
        }
        self.progress.send_replace(session.progress);
        Ok(Summary {
            progress: session.progress,
            remote: session.remote.clone(),
            live: session.live,
            ended_early: session.ended_early,
        })
    }
}

/// Sleeps until the deadline, then gives its payload; never, without one.
async fn sleep_until<A, B>(deadline: Option<(Instant, A, B)>) -> Option<(A, B)> {
    match deadline {
        Some((at, a, b)) => {
            tokio::time::sleep_until(at).await;
            Some((a, b))
        }
        None => std::future::pending().await,
    }
}

/// Whether a write error means the remote closed the connection.
fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, NotConnected};
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected
    )
}

/// The protocol state of one side (spec §2.5–2.6).
struct Session {
    log: Log,
    local_mode: Mode,
    local_live: bool,
    max_pending: usize,
    max_pending_bytes: usize,
    max_send_queue_bytes: usize,
    /// Memory held by the Wants in `control` (see [`DEFAULT_MAX_SEND_QUEUE_BYTES`]).
    queued_want_bytes: usize,
    remote: Option<Handshake>,
    live: bool,
    /// The snapshot: the change counter at the remote handshake (0 for a puller, as in JS).
    changes0: u64,
    sent_haves: HashSet<String>,
    /// Logs a Want was served for (a second Want for the same log is ignored: an honest peer
    /// sends one per Have, and a Have goes out once per log). Only local logs: at most one per
    /// local log.
    wanted: HashSet<String>,
    /// Messages to send before any node: the handshake, our Haves (one per local log),
    /// SentHeads, SentWants, and the Wants answering the remote's Haves (bounded by
    /// `max_send_queue_bytes`).
    control: VecDeque<Message>,
    /// Entries to send: (change, log, seq), smallest change first (at most one per local log).
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
    /// Set when the remote ended its side before completion.
    ended_early: Option<EarlyEnd>,
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
            max_send_queue_bytes: rep.options.max_send_queue_bytes,
            queued_want_bytes: 0,
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
            ended_early: None,
            progress: Progress::default(),
        }
    }

    /// The remote ended its side before completion: note where the exchange stood, and send
    /// nothing more (JS ends its side too when the remote's end arrives).
    fn end_early(&mut self) {
        let phase = if self.remote.is_none() {
            Phase::Handshake
        } else if !self.remote_sent_heads {
            Phase::Heads
        } else if self.missing > 0 {
            Phase::Nodes
        } else {
            Phase::Wants
        };
        let missing = u64::try_from(self.missing).unwrap_or(0);
        tracing::debug!(%phase, missing, "replication: the remote ended before the exchange completed");
        self.ended_early = Some(EarlyEnd { phase, missing });
        self.control.clear();
        self.queued_want_bytes = 0;
        self.outgoing.clear();
        self.stopping = true;
    }

    /// Whether everything that will ever be sent has been handed out.
    fn done_sending(&self) -> bool {
        (self.complete || self.ended_early.is_some())
            && (!self.live || self.stopping || self.ended_early.is_some())
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
        if self.ended_early.is_some() {
            return Ok(false);
        }
        if let Some(msg) = self.control.pop_front() {
            if let Message::Want(want) = &msg {
                self.queued_want_bytes = self
                    .queued_want_bytes
                    .saturating_sub(QUEUED_MESSAGE_COST + want.log.len());
            }
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
            node.encode_frame(out);
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
            node.encode_frame(out);
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
                    let cost = QUEUED_MESSAGE_COST + log.len();
                    if self.queued_want_bytes.saturating_add(cost) > self.max_send_queue_bytes {
                        return Err(ReplicateError::SendQueueFull {
                            max_bytes: self.max_send_queue_bytes,
                        });
                    }
                    self.queued_want_bytes += cost;
                    self.missing = self
                        .missing
                        .saturating_add(i64::try_from(seq - head).unwrap_or(i64::MAX));
                    self.control
                        .push_back(Message::Want(LogSeq::new(log, head)));
                }
            }
            Message::Want(LogSeq { log, seq }) => {
                // Nothing to send for a log not here (and nothing to remember of it).
                if self.wanted.contains(&log) || self.log.log_head(&log)? == 0 {
                    return Ok(());
                }
                self.wanted.insert(log.clone());
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
        // Taken, not copied: a large value goes into the store as it came off the wire.
        match batch.receive_owned(node) {
            Ok(()) => {
                self.on_inserted();
                self.retry_pending(batch)
            }
            Err(refused) if refused.error.is_not_found() => {
                let Refused { error: e, node } = *refused;
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
            Err(refused) => Err(refused.error.into()),
        }
    }

    /// Retries queued nodes in order of the sender's change until none can be inserted.
    fn retry_pending(&mut self, batch: &mut ReceiveBatch<'_>) -> Result<(), ReplicateError> {
        'outer: loop {
            let keys: Vec<(u64, u64)> = self.pending.keys().copied().collect();
            for k in keys {
                let Some(node) = self.pending.remove(&k) else {
                    continue;
                };
                let size = node_size(&node);
                match batch.receive_owned(node) {
                    Ok(()) => {
                        self.pending_bytes -= size;
                        self.on_inserted();
                        continue 'outer;
                    }
                    Err(refused)
                        if matches!(refused.error, LogError::InvalidSeq { .. })
                            && Session::is_known_position(batch, &refused.node)? =>
                    {
                        self.pending_bytes -= size;
                    }
                    Err(refused) if refused.error.is_not_found() => {
                        // Still waiting: back in its place.
                        self.pending.insert(k, refused.node);
                    }
                    Err(refused) => return Err(refused.error.into()),
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

    /// Every message of an error's chain, outermost first (what anyhow's `{:#}` joins with
    /// ": ").
    fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = vec![err.to_string()];
        let mut source = err.source();
        while let Some(e) = source {
            out.push(e.to_string());
            source = e.source();
        }
        out
    }

    #[test]
    fn error_chains_say_each_thing_once() {
        use crate::log::node::KeyError;
        use crate::log::sign::SignError;
        use crate::log::store::StoreError;
        let key = crate::log::node::Key::compute(&[], b"x");
        let errors = [
            ReplicateError::from(std::io::Error::other(StoreError::Engine(
                "disk on fire".into(),
            ))),
            ReplicateError::from(WireError::EmptyBody),
            ReplicateError::from(NodeError::BadKey(KeyError::BadLength(2))),
            ReplicateError::from(LogError::InvalidSignature {
                key,
                error: SignError::BadSignature,
            }),
            ReplicateError::from(LogError::Store(StoreError::Engine("disk on fire".into()))),
            ReplicateError::IdleTimeout {
                timeout: std::time::Duration::from_secs(60),
                stalled: Stall::Silent,
            },
        ];
        for err in errors {
            let messages = chain(&err);
            let joined = messages.join(": ");
            for (i, outer) in messages.iter().enumerate() {
                for inner in &messages[i + 1..] {
                    assert!(!outer.contains(inner.as_str()), "repeated: {joined}");
                }
            }
            assert!(!joined.is_empty());
        }
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
