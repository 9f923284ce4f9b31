//! Rust ↔ Rust replication: over `tokio::io::duplex` and TCP on 127.0.0.1, plus scripted peers
//! that check the exact frames of spec §2.9 and feed hostile input.

use std::time::Duration;

use swarm::{
    replicate, EarlyEnd, FrameDecoder, Handshake, Key, Keypair, Log, LogError, LogOptions, LogSeq,
    Message, Mode, Node, Phase, ReplicateError, ReplicateOptions, Replication, Stall, Summary,
    Verifier,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn mem(id: &str) -> Log {
    Log::memory_with_id(id, LogOptions::default()).expect("memory log")
}

fn opts(mode: Option<Mode>, live: Option<bool>) -> ReplicateOptions {
    ReplicateOptions {
        mode,
        live,
        ..ReplicateOptions::default()
    }
}

/// Replicates a and b over a duplex pipe with these options.
async fn pair(
    a: &Log,
    b: &Log,
    oa: ReplicateOptions,
    ob: ReplicateOptions,
) -> (
    Result<swarm::Summary, ReplicateError>,
    Result<swarm::Summary, ReplicateError>,
) {
    let (x, y) = tokio::io::duplex(4096);
    let ra = replicate(a, x, oa);
    let rb = replicate(b, y, ob);
    timeout(T, async { tokio::join!(ra, rb) })
        .await
        .expect("replication finished in time")
}

fn values(log: &Log) -> Vec<String> {
    log.changes_since(0)
        .map(|n| String::from_utf8(n.expect("node").value).expect("utf8"))
        .collect()
}

#[tokio::test]
async fn sync_one_way_over_duplex() {
    let a = mem("A");
    let b = mem("B");
    a.append("hello").unwrap();
    let n2 = a.append("world").unwrap();
    let (ra, rb) = pair(&a, &b, opts(None, Some(false)), opts(None, None)).await;
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.progress.nodes_sent, 2);
    assert_eq!(rb.progress.nodes_received, 2);
    assert!(ra.progress.synced && rb.progress.synced);
    assert_eq!(b.head_keys().unwrap(), vec![n2.key]);
    assert_eq!(values(&b), ["hello", "world"]);
    assert_eq!(b.log_head("A").unwrap(), 2);
    // Again: nothing to do.
    let (ra, rb) = pair(&a, &b, opts(None, None), opts(None, None)).await;
    assert_eq!(ra.unwrap().progress.nodes_sent, 0);
    assert_eq!(rb.unwrap().progress.nodes_sent, 0);
}

#[tokio::test]
async fn both_writing_sync_converges() {
    let a = mem("A");
    let b = mem("B");
    for i in 0..50 {
        a.append(format!("a{i}")).unwrap();
        b.append(format!("b{i}")).unwrap();
    }
    let (ra, rb) = pair(&a, &b, opts(None, None), opts(None, None)).await;
    assert_eq!(ra.unwrap().progress.nodes_received, 50);
    assert_eq!(rb.unwrap().progress.nodes_received, 50);
    assert_eq!(a.changes(), 100);
    assert_eq!(b.changes(), 100);
    let heads = a.head_keys().unwrap();
    assert_eq!(heads.len(), 2);
    assert_eq!(heads, b.head_keys().unwrap());
    // A merge node links both heads, and replicates back.
    let merge = a.append("merge").unwrap();
    assert_eq!(merge.links, heads);
    pair(&a, &b, opts(None, None), opts(None, None))
        .await
        .1
        .unwrap();
    assert_eq!(b.head_keys().unwrap(), vec![merge.key]);
}

#[tokio::test]
async fn push_and_pull() {
    let a = mem("A");
    let b = mem("B");
    a.append("from a").unwrap();
    b.append("from b").unwrap();
    let (ra, rb) = pair(
        &a,
        &b,
        opts(Some(Mode::Push), None),
        opts(Some(Mode::Pull), None),
    )
    .await;
    assert_eq!(ra.unwrap().progress.nodes_received, 0);
    assert_eq!(rb.unwrap().progress.nodes_received, 1);
    assert_eq!(values(&a), ["from a"]);
    assert_eq!(values(&b), ["from b", "from a"]);
    // Pull against sync (which hangs between two JS peers; see Replication): only the puller
    // receives.
    let c = mem("C");
    let (rc, ra) = pair(&c, &a, opts(Some(Mode::Pull), None), opts(None, None)).await;
    rc.unwrap();
    assert_eq!(ra.unwrap().progress.nodes_received, 0);
    assert_eq!(values(&c), ["from a"]);
}

#[tokio::test]
async fn both_pulling_or_pushing_fails() {
    let a = mem("A");
    let b = mem("B");
    let (ra, rb) = pair(
        &a,
        &b,
        opts(Some(Mode::Pull), None),
        opts(Some(Mode::Pull), None),
    )
    .await;
    assert!(matches!(ra, Err(ReplicateError::BothPulling)), "{ra:?}");
    assert!(matches!(rb, Err(ReplicateError::BothPulling)), "{rb:?}");
    let (ra, _) = pair(
        &a,
        &b,
        opts(Some(Mode::Push), None),
        opts(Some(Mode::Push), None),
    )
    .await;
    assert!(matches!(ra, Err(ReplicateError::BothPushing)), "{ra:?}");
}

#[tokio::test]
async fn multi_log_dag_lazy_have() {
    // Spec §2.10: C has c1 <- c2; A got them, then appended a1 linking c2; A syncs with empty B.
    let c = mem("C");
    let a = mem("A");
    let b = mem("B");
    c.append("c1").unwrap();
    c.append("c2").unwrap();
    pair(&c, &a, opts(None, None), opts(None, None))
        .await
        .1
        .unwrap();
    let a1 = a.append("a1").unwrap();
    assert_eq!(a1.change, 3);
    assert_eq!(a.entry("A", 1).unwrap().unwrap().log_links, vec!["C"]);
    let (ra, rb) = pair(&a, &b, opts(None, None), opts(None, None)).await;
    assert_eq!(ra.unwrap().progress.nodes_sent, 3);
    assert_eq!(rb.unwrap().progress.nodes_received, 3);
    // a1 went first and waited for c1 and c2 (change order c1, c2, a1 at B).
    assert_eq!(values(&b), ["c1", "c2", "a1"]);
    assert_eq!(b.head_keys().unwrap(), vec![a1.key]);
    assert_eq!((b.log_head("A").unwrap(), b.log_head("C").unwrap()), (1, 2));
}

#[tokio::test]
async fn dedup_entries_replicate() {
    // The same content written by two writers: B's log gets a dedup entry, which a third
    // peer receives with log B's seq space intact.
    let a = mem("A");
    let b = mem("B");
    let c = mem("C");
    a.append("same").unwrap();
    b.append("same").unwrap();
    b.append("b2").unwrap();
    pair(&a, &b, opts(None, None), opts(None, None))
        .await
        .0
        .unwrap();
    pair(&b, &c, opts(None, None), opts(None, None))
        .await
        .1
        .unwrap();
    // Only log B was announced (b2 links a node first filed in log B).
    assert_eq!(c.log_head("A").unwrap(), 0);
    assert_eq!(c.log_head("B").unwrap(), 2);
    assert_eq!(values(&c), ["same", "b2"]);
    // A writer whose only node is one C has: C records a dedup entry, no new change.
    let d = mem("D");
    d.append("same").unwrap();
    let (rd, rc) = pair(&d, &c, opts(None, None), opts(None, None)).await;
    assert_eq!(rd.unwrap().progress.nodes_sent, 1);
    assert_eq!(rc.unwrap().progress.nodes_received, 1);
    assert_eq!(c.log_head("D").unwrap(), 1);
    assert_eq!(c.changes(), 2);
    let key = |log: &str| c.entry(log, 1).unwrap().unwrap().key;
    assert_eq!(key("D"), key("B"));
}

#[tokio::test]
async fn tcp_durable_sync() {
    let dir = tempfile::tempdir().unwrap();
    let a = Log::open(dir.path().join("a.redb"), LogOptions::default()).unwrap();
    let b = Log::open(dir.path().join("b.redb"), LogOptions::default()).unwrap();
    for i in 0..20 {
        a.append(format!("a{i}")).unwrap();
    }
    b.append("b0").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let b2 = b.clone();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        replicate(&b2, sock, ReplicateOptions::default()).await
    });
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ra = timeout(T, replicate(&a, sock, ReplicateOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let rb = timeout(T, server).await.unwrap().unwrap().unwrap();
    assert_eq!(ra.progress.nodes_received, 1);
    assert_eq!(rb.progress.nodes_received, 20);
    assert_eq!(a.head_keys().unwrap(), b.head_keys().unwrap());
    let (path, id) = (dir.path().join("b.redb"), b.id().to_string());
    drop(b);
    let b = Log::open(path, LogOptions::default()).unwrap();
    assert_eq!((b.id(), b.changes()), (id.as_str(), 21));
}

/// A log that signs nothing and accepts only nodes signed by `author`.
fn trusting(id: &str, author: &Keypair) -> Log {
    Log::memory_with_id(
        id,
        LogOptions {
            keypair: None,
            verifier: Some(Verifier::for_keypair(author)),
        },
    )
    .unwrap()
}

fn signed(id: &str, kp: &Keypair, verifier: Option<Verifier>) -> Log {
    Log::memory_with_id(
        id,
        LogOptions {
            keypair: Some(kp.clone()),
            verifier,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn signed_feed_accepted_and_refused() {
    let author = Keypair::from_seed(&[1; 32]);
    let stranger = Keypair::from_seed(&[2; 32]);
    let a = signed("A", &author, None);
    a.append("hello").unwrap();
    a.append("world").unwrap();
    // A subscriber trusting the author.
    let b = trusting("B", &author);
    pair(&a, &b, opts(None, None), opts(None, None))
        .await
        .1
        .unwrap();
    assert_eq!(b.changes(), 2);
    let got = b.changes_since(0).next().unwrap().unwrap();
    assert_eq!(
        got.identity.as_deref(),
        Some(author.public_key().as_slice())
    );
    // A subscriber trusting only the stranger refuses the author's nodes.
    let c = trusting("C", &stranger);
    let (_, rc) = pair(&a, &c, opts(None, None), opts(None, None)).await;
    assert!(
        matches!(
            rc,
            Err(ReplicateError::Log(LogError::InvalidSignature { .. }))
        ),
        "{rc:?}"
    );
    assert_eq!(c.changes(), 0);
}

// ---------------------------------------------------------------------------------------------
// Scripted peers

struct Script {
    io: DuplexStream,
    decoder: FrameDecoder,
}

impl Script {
    async fn send(&mut self, msg: Message) {
        self.io.write_all(&msg.to_frame()).await.unwrap();
    }

    /// The next frame's bytes (re-encoded from the decoded message, which round-trips exactly
    /// for the messages checked here), or None at end of stream.
    async fn recv(&mut self) -> Option<Message> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.next_message().unwrap() {
                return Some(m);
            }
            let n = timeout(T, self.io.read(&mut buf)).await.unwrap().unwrap();
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }
}

fn scripted(log: &Log, o: ReplicateOptions) -> (Script, Replication, DuplexStream) {
    let (x, y) = tokio::io::duplex(1 << 16);
    (
        Script {
            io: y,
            decoder: FrameDecoder::new(),
        },
        Replication::new(log, o),
        x,
    )
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn golden_frames_of_spec_2_9() {
    let a = mem("A");
    let n1 = a.append("hello").unwrap();
    let n2 = a.append("world").unwrap();
    let (mut b, rep, io) = scripted(&a, opts(None, Some(false)));
    let task = tokio::spawn(rep.run(io));
    // B: Handshake {version:1}, SentHeads.
    b.io.write_all(&hex("03 00 08 01")).await.unwrap();
    b.io.write_all(&hex("01 04")).await.unwrap();
    let mut frames = Vec::new();
    for _ in 0..4 {
        frames.push(b.recv().await.unwrap().to_frame());
    }
    assert_eq!(frames[0], hex("05 00 08 01 20 00"));
    assert_eq!(frames[1], hex("06 01 0a 01 41 10 02"));
    assert_eq!(frames[2], hex("01 04"));
    assert_eq!(frames[3], hex("01 05"));
    // B: Want {log:"A", seq:0}.
    b.io.write_all(&hex("06 02 0a 01 41 10 00")).await.unwrap();
    let f1 = b.recv().await.unwrap().to_frame();
    let f2 = b.recv().await.unwrap().to_frame();
    let mut want1 = hex("51 03 08 01 12 40");
    want1.extend_from_slice(n1.key.to_hex().as_bytes());
    want1.extend_from_slice(&hex("1a 01 41 20 01 2a 05"));
    want1.extend_from_slice(b"hello");
    assert_eq!(f1, want1);
    let mut want2 = hex("93 01 03 08 02 12 40");
    want2.extend_from_slice(n2.key.to_hex().as_bytes());
    want2.extend_from_slice(&hex("1a 01 41 20 02 2a 05"));
    want2.extend_from_slice(b"world");
    want2.extend_from_slice(&hex("32 40"));
    want2.extend_from_slice(n1.key.to_hex().as_bytes());
    assert_eq!(f2, want2);
    // B: SentWants. A is complete and ends its output.
    b.io.write_all(&hex("01 05")).await.unwrap();
    assert!(b.recv().await.is_none());
    b.io.shutdown().await.unwrap();
    let summary = timeout(T, task).await.unwrap().unwrap().unwrap();
    assert_eq!(summary.progress.nodes_sent, 2);
    assert!(!summary.live);
}

#[tokio::test]
async fn push_pull_handshakes_of_spec_2_9() {
    let a = mem("A");
    let (mut b, rep, io) = scripted(&a, opts(Some(Mode::Push), Some(false)));
    let task = tokio::spawn(rep.run(io));
    b.io.write_all(&hex("09 00 08 01 12 04")).await.unwrap();
    b.io.write_all(b"pull").await.unwrap();
    let mut want = hex("0b 00 08 01 12 04");
    want.extend_from_slice(b"push");
    want.extend_from_slice(&hex("20 00"));
    assert_eq!(b.recv().await.unwrap().to_frame(), want);
    // A has no heads: SentHeads, and (B pulls, A pushes) no SentWants. B, missing nothing,
    // answers SentWants; then A completes.
    assert_eq!(b.recv().await.unwrap(), Message::SentHeads);
    b.send(Message::SentWants).await;
    assert!(b.recv().await.is_none());
    b.io.shutdown().await.unwrap();
    timeout(T, task).await.unwrap().unwrap().unwrap();
}

/// Feeds `input` and ends; how the replication ended.
async fn scripted_run(
    log: &Log,
    o: ReplicateOptions,
    input: Vec<u8>,
) -> Result<Summary, ReplicateError> {
    let (mut b, rep, io) = scripted(log, o);
    let task = tokio::spawn(rep.run(io));
    b.io.write_all(&input).await.unwrap();
    b.io.shutdown().await.unwrap();
    // Drain what A writes until it stops.
    while b.recv().await.is_some() {}
    timeout(T, task).await.unwrap().unwrap()
}

async fn hostile(log: &Log, o: ReplicateOptions, input: Vec<u8>) -> ReplicateError {
    scripted_run(log, o, input).await.unwrap_err()
}

fn handshake() -> Vec<u8> {
    Message::Handshake(Handshake::new()).to_frame()
}

#[tokio::test]
async fn truncated_and_garbage_streams_fail() {
    let a = mem("A");
    // Half a frame, then the end.
    let mut input = handshake();
    input.extend_from_slice(&hex("06 01 0a 01"));
    let err = hostile(&a, ReplicateOptions::default(), input).await;
    assert!(
        matches!(err, ReplicateError::TruncatedFrame { .. }),
        "{err}"
    );
    // A Log message without its required seq.
    let mut input = handshake();
    input.extend_from_slice(&hex("04 01 0a 01 41"));
    let err = hostile(&a, ReplicateOptions::default(), input).await;
    assert!(matches!(err, ReplicateError::Wire(_)), "{err}");
    // An over-long varint length.
    let err = hostile(&a, ReplicateOptions::default(), vec![0xff; 12]).await;
    assert!(matches!(err, ReplicateError::Wire(_)), "{err}");
    // Something before the handshake.
    let err = hostile(&a, ReplicateOptions::default(), hex("01 04")).await;
    assert!(matches!(err, ReplicateError::NoHandshake), "{err}");
    // A bad mode.
    let h = Handshake {
        mode: Some("both".into()),
        ..Handshake::new()
    };
    let err = hostile(
        &a,
        ReplicateOptions::default(),
        Message::Handshake(h).to_frame(),
    )
    .await;
    assert!(matches!(err, ReplicateError::InvalidMode(_)), "{err}");
    assert_eq!(a.changes(), 0);
}

fn frames(msgs: &[Message]) -> Vec<u8> {
    msgs.iter().flat_map(Message::to_frame).collect()
}

#[tokio::test]
async fn forged_nodes_fail_and_store_nothing() {
    let author = Keypair::from_seed(&[1; 32]);
    let stranger = Keypair::from_seed(&[2; 32]);
    let b = trusting("B", &author);
    // A node signed by the stranger, claiming the author's log.
    let mut forged = Node::new(vec![], b"evil".to_vec(), "A".into(), 1, 1);
    stranger.sign_node(&mut forged);
    let have = Message::Have(LogSeq::new("A", 1));
    let input = frames(&[
        Message::Handshake(Handshake::new()),
        have.clone(),
        Message::SentHeads,
        Message::Node(forged.to_message()),
    ]);
    let err = hostile(&b, ReplicateOptions::default(), input).await;
    assert!(
        matches!(err, ReplicateError::Log(LogError::InvalidSignature { .. })),
        "{err}"
    );
    // The author's signature over a node whose content was changed.
    let mut good = Node::new(vec![], b"good".to_vec(), "A".into(), 1, 1);
    author.sign_node(&mut good);
    let mut tampered = good.clone();
    tampered.value = b"bad".to_vec();
    let input = frames(&[
        Message::Handshake(Handshake::new()),
        have,
        Message::SentHeads,
        Message::Node(tampered.to_message()),
    ]);
    let err = hostile(&b, ReplicateOptions::default(), input).await;
    assert!(
        matches!(err, ReplicateError::Log(LogError::ChecksumMismatch { .. })),
        "{err}"
    );
    // A key that is not a key.
    let mut msg = good.to_message();
    msg.key = "zz".into();
    let input = frames(&[Message::Handshake(Handshake::new()), Message::Node(msg)]);
    let err = hostile(&b, ReplicateOptions::default(), input).await;
    assert!(matches!(err, ReplicateError::BadNode(_)), "{err}");
    assert_eq!(b.changes(), 0);
}

#[tokio::test]
async fn retry_queue_is_bounded() {
    let b = mem("B");
    let o = ReplicateOptions {
        max_pending: 3,
        ..ReplicateOptions::default()
    };
    let mut msgs = vec![Message::Handshake(Handshake::new())];
    let missing = Key::compute(&[], b"never sent");
    for i in 0..4u8 {
        let n = Node::new(vec![missing], vec![i], format!("L{i}"), 1, 1);
        msgs.push(Message::Node(n.to_message()));
    }
    let err = hostile(&b, o, frames(&msgs)).await;
    assert!(
        matches!(err, ReplicateError::QueueFull { max_nodes: 3, .. }),
        "{err}"
    );
    assert_eq!(b.changes(), 0);
}

#[tokio::test]
async fn live_mode_streams_appends_both_ways() {
    let a = mem("A");
    let b = mem("B");
    a.append("a0").unwrap();
    b.append("b0").unwrap();
    let (x, y) = tokio::io::duplex(4096);
    let ra = Replication::new(&a, opts(None, Some(true)));
    // B did not ask for live: A's handshake turns it on for both.
    let rb = Replication::new(&b, opts(None, None));
    let (stop_a, mut prog_b) = (ra.stop_handle(), rb.progress());
    let ta = tokio::spawn(ra.run(x));
    let tb = tokio::spawn(rb.run(y));
    timeout(T, prog_b.wait_for(|p| p.synced))
        .await
        .unwrap()
        .unwrap();
    let mut sub_a = a.subscribe(a.changes());
    let mut sub_b = b.subscribe(b.changes());
    let na = a.append("a1 live").unwrap();
    let got = timeout(T, sub_b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.key, na.key);
    let nb = b.append("b1 live").unwrap();
    // A may first see a1 (its own append), then b1 from B.
    loop {
        let got = timeout(T, sub_a.next()).await.unwrap().unwrap().unwrap();
        if got.key == nb.key {
            break;
        }
        assert_eq!(got.key, na.key);
    }
    assert_eq!(a.head_keys().unwrap(), b.head_keys().unwrap());
    stop_a.stop();
    let sa = timeout(T, ta).await.unwrap().unwrap().unwrap();
    let sb = timeout(T, tb).await.unwrap().unwrap().unwrap();
    assert!(sa.live && sb.live);
    assert_eq!(a.changes(), 4);
    assert_eq!(b.changes(), 4);
    // Echoes were ignored, not counted.
    assert_eq!(sa.progress.nodes_received, 2);
    assert_eq!(sb.progress.nodes_received, 2);
}

#[tokio::test]
async fn a_repeated_want_is_served_once() {
    let a = mem("A");
    a.append("hello").unwrap();
    a.append("world").unwrap();
    let (mut b, rep, io) = scripted(&a, opts(None, None));
    let task = tokio::spawn(rep.run(io));
    let want = Message::Want(LogSeq::new("A", 0));
    let input = frames(&[
        Message::Handshake(Handshake::new()),
        Message::SentHeads,
        want.clone(),
        want,
    ]);
    b.io.write_all(&input).await.unwrap();
    let mut nodes = 0;
    loop {
        match b.recv().await.unwrap() {
            Message::Node(_) => nodes += 1,
            Message::SentWants => {}
            _ => continue,
        }
        if nodes == 2 {
            break;
        }
    }
    b.send(Message::SentWants).await;
    while let Some(m) = b.recv().await {
        assert!(!matches!(m, Message::Node(_)), "a node sent twice");
    }
    b.io.shutdown().await.unwrap();
    let s = timeout(T, task).await.unwrap().unwrap().unwrap();
    assert_eq!(s.progress.nodes_sent, 2);
}

/// Random appends (some linking other writers' nodes, some duplicating content) and random
/// pairwise syncs between four peers (the seed can be changed with `GOSSIP_SEED`); after a
/// final round every peer holds the same nodes, heads and per-log seqs.
#[tokio::test]
async fn random_gossip_converges() {
    let mut rng: u64 = std::env::var("GOSSIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let peers: Vec<Log> = ["P0", "P1", "P2", "P3"].iter().map(|id| mem(id)).collect();
    for round in 0..40 {
        let p = &peers[usize::try_from(next(4)).unwrap()];
        match next(4) {
            0 => {
                // Content another writer may also write: a dedup entry somewhere.
                p.append(format!("common {}", next(3))).unwrap();
            }
            1 => {
                let x = usize::try_from(next(4)).unwrap();
                let y = usize::try_from(next(4)).unwrap();
                if x != y {
                    let live = Some(false);
                    let (rx, ry) =
                        pair(&peers[x], &peers[y], opts(None, live), opts(None, None)).await;
                    rx.unwrap();
                    ry.unwrap();
                }
            }
            _ => {
                p.append(format!("round {round}")).unwrap();
            }
        }
    }
    for _ in 0..2 {
        for x in 0..4 {
            for y in 0..4 {
                if x != y {
                    let (rx, ry) =
                        pair(&peers[x], &peers[y], opts(None, None), opts(None, None)).await;
                    rx.unwrap();
                    ry.unwrap();
                }
            }
        }
    }
    let mut sets = peers.iter().map(|p| {
        let mut keys: Vec<Key> = p.changes_since(0).map(|n| n.unwrap().key).collect();
        keys.sort();
        keys
    });
    let first = sets.next().unwrap();
    assert!(first.len() > 10, "{} nodes", first.len());
    for other in sets {
        assert_eq!(other, first);
    }
    for p in &peers[1..] {
        assert_eq!(p.head_keys().unwrap(), peers[0].head_keys().unwrap());
        for log in ["P0", "P1", "P2", "P3"] {
            assert_eq!(
                p.log_head(log).unwrap(),
                peers[0].log_head(log).unwrap(),
                "{log}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A remote that ends early (issue 10, item 13)

#[tokio::test]
async fn a_remote_that_ends_before_completion_ends_early_not_in_error() {
    let a = mem("A");
    // Nothing at all.
    let s = scripted_run(&a, ReplicateOptions::default(), Vec::new())
        .await
        .unwrap();
    assert!(s.remote.is_none());
    assert_eq!(
        s.ended_early,
        Some(EarlyEnd {
            phase: Phase::Handshake,
            missing: 0
        })
    );
    // A handshake, then the end.
    let s = scripted_run(&a, ReplicateOptions::default(), handshake())
        .await
        .unwrap();
    assert!(s.remote.is_some());
    assert_eq!(s.ended_early.map(|e| e.phase), Some(Phase::Heads));
    assert!(!s.progress.synced);

    // Two nodes announced, one sent: the one is stored, the other reported missing.
    let b = mem("B");
    let n1 = Node::new(vec![], b"one".to_vec(), "W".into(), 1, 1);
    let input = frames(&[
        Message::Handshake(Handshake::new()),
        Message::Have(LogSeq::new("W", 2)),
        Message::SentHeads,
        Message::Node(n1.to_message()),
    ]);
    let s = scripted_run(&b, ReplicateOptions::default(), input)
        .await
        .unwrap();
    assert_eq!(
        s.ended_early,
        Some(EarlyEnd {
            phase: Phase::Nodes,
            missing: 1
        })
    );
    assert_eq!(s.progress.nodes_received, 1);
    assert_eq!(b.get(&n1.key).unwrap().unwrap().value, b"one");
    assert_eq!(
        s.ended_early.unwrap().to_string(),
        "the remote ended before sending every node it announced (1 announced nodes did not arrive)"
    );
}

#[tokio::test]
async fn the_side_whose_node_the_remote_refused_ends_early_not_in_error() {
    let author = Keypair::from_seed(&[1; 32]);
    let stranger = Keypair::from_seed(&[2; 32]);
    let a = signed("A", &stranger, None);
    a.append("signed by the stranger").unwrap();
    let b = trusting("B", &author);
    let (ra, rb) = pair(&a, &b, opts(None, None), opts(None, None)).await;
    assert!(
        matches!(
            rb,
            Err(ReplicateError::Log(LogError::InvalidSignature { .. }))
        ),
        "{rb:?}"
    );
    // B refused and dropped the stream: for A that is B ending, not a failure of A's.
    let ra = ra.unwrap();
    assert!(ra.ended_early.is_some(), "{ra:?}");
    assert_eq!(b.changes(), 0);
}

// ---------------------------------------------------------------------------------------------
// Bounded queues (item 9) and idle timeouts (item 10)

/// `count` Haves for distinct logs the receiver does not have.
fn haves(count: usize) -> Vec<u8> {
    let mut input = handshake();
    for i in 0..count {
        Message::Have(LogSeq::new(format!("c{i:024}"), 1)).encode_frame(&mut input);
    }
    input
}

#[tokio::test]
async fn a_have_flood_from_a_peer_that_never_reads_ends_at_the_send_queue_bound() {
    let b = mem("B");
    let o = ReplicateOptions {
        max_send_queue_bytes: 64 * 1024,
        // Only the bound may end it.
        idle_timeout: None,
        ..ReplicateOptions::default()
    };
    let (mut ours, theirs) = tokio::io::duplex(16 * 1024);
    let task = tokio::spawn({
        let b = b.clone();
        async move { replicate(&b, theirs, o).await }
    });
    // Write Haves until the replication stops reading them; never read, never end.
    let input = haves(100_000);
    let writer = tokio::spawn(async move {
        for chunk in input.chunks(4096) {
            if ours.write_all(chunk).await.is_err() {
                break;
            }
        }
        ours
    });
    let err = timeout(T, task).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(err, ReplicateError::SendQueueFull { max_bytes: 65536 }),
        "{err}"
    );
    assert!(err.to_string().contains("max_send_queue_bytes"), "{err}");
    drop(timeout(T, writer).await.unwrap().unwrap());
}

#[tokio::test]
async fn a_peer_that_stops_mid_frame_times_out() {
    let a = mem("A");
    let o = ReplicateOptions {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ReplicateOptions::default()
    };
    let (mut b, rep, io) = scripted(&a, o);
    let task = tokio::spawn(rep.run(io));
    let mut input = handshake();
    // A frame of 6 bytes, of which 4 come.
    input.extend_from_slice(&hex("06 01 0a 01"));
    b.io.write_all(&input).await.unwrap();
    // Read what A sends, but never end nor send the rest.
    let reader = tokio::spawn(async move { while b.recv().await.is_some() {} });
    let err = timeout(T, task).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ReplicateError::IdleTimeout {
                stalled: Stall::Silent,
                ..
            }
        ),
        "{err}"
    );
    timeout(T, reader).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_peer_that_never_reads_times_out() {
    let a = mem("A");
    a.append(vec![1u8; 1 << 20]).unwrap();
    let o = ReplicateOptions {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ReplicateOptions::default()
    };
    let (mut ours, theirs) = tokio::io::duplex(4096);
    let task = tokio::spawn({
        let a = a.clone();
        async move { replicate(&a, theirs, o).await }
    });
    // Ask for A's log, then neither read nor write.
    let input = frames(&[
        Message::Handshake(Handshake::new()),
        Message::SentHeads,
        Message::Want(LogSeq::new("A", 0)),
    ]);
    ours.write_all(&input).await.unwrap();
    let err = timeout(T, task).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ReplicateError::IdleTimeout {
                stalled: Stall::NotReading,
                ..
            }
        ),
        "{err}"
    );
    drop(ours);
}

#[tokio::test]
async fn an_idle_live_session_between_rust_peers_stays_up_on_keep_alives() {
    let a = mem("A");
    let b = mem("B");
    let o = || ReplicateOptions {
        live: Some(true),
        idle_timeout: Some(Duration::from_millis(300)),
        keep_alive: Some(Duration::from_millis(50)),
        ..ReplicateOptions::default()
    };
    let (x, y) = tokio::io::duplex(4096);
    let ra = Replication::new(&a, o());
    let rb = Replication::new(&b, o());
    let (stop_a, mut prog_b) = (ra.stop_handle(), rb.progress());
    let ta = tokio::spawn(ra.run(x));
    let tb = tokio::spawn(rb.run(y));
    timeout(T, prog_b.wait_for(|p| p.synced))
        .await
        .unwrap()
        .unwrap();
    // Many idle timeouts' worth of silence from the application.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ta.is_finished() && !tb.is_finished());
    let mut sub_b = b.subscribe(b.changes());
    let na = a.append("after the silence").unwrap();
    let got = timeout(T, sub_b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.key, na.key);
    stop_a.stop();
    let sa = timeout(T, ta).await.unwrap().unwrap().unwrap();
    let sb = timeout(T, tb).await.unwrap().unwrap().unwrap();
    assert!(sa.live && sb.live);
    assert!(sa.ended_early.is_none() && sb.ended_early.is_none());
}

#[tokio::test]
async fn a_quiet_live_remote_without_keep_alives_stays_and_hears_them() {
    let a = mem("A");
    let o = ReplicateOptions {
        live: Some(true),
        idle_timeout: Some(Duration::from_millis(200)),
        keep_alive: Some(Duration::from_millis(50)),
        ..ReplicateOptions::default()
    };
    let (mut b, rep, io) = scripted(&a, o);
    let task = tokio::spawn(rep.run(io));
    // A JS hyperlog with nothing: handshake, SentHeads; then SentWants once A's SentHeads came.
    b.send(Message::Handshake(Handshake::new())).await;
    b.send(Message::SentHeads).await;
    let mut seen = Vec::new();
    while !seen.contains(&Message::SentWants) {
        seen.push(b.recv().await.unwrap());
    }
    b.send(Message::SentWants).await;
    // Live and quiet, for many of A's idle timeouts: A sends zero-length frames, and stays.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64];
    let quiet = tokio::time::Instant::now();
    while quiet.elapsed() < Duration::from_millis(1000) {
        if let Ok(n) = timeout(Duration::from_millis(100), b.io.read(&mut buf)).await {
            raw.extend_from_slice(&buf[..n.unwrap()]);
        }
    }
    assert!(
        !raw.is_empty() && raw.iter().all(|&byte| byte == 0),
        "{raw:?}"
    );
    assert!(!task.is_finished());
    // A keep-alive is skipped by a decoder, as JS's skips it.
    let mut decoder = FrameDecoder::new();
    decoder.push(&raw);
    assert_eq!(decoder.next_message(), Ok(None));
    assert!(decoder.is_at_boundary());
    b.io.shutdown().await.unwrap();
    while timeout(T, b.io.read(&mut buf)).await.unwrap().unwrap() > 0 {}
    let s = timeout(T, task).await.unwrap().unwrap().unwrap();
    assert!(s.live && s.ended_early.is_none());
}
