//! Two WebRTC peers in one process, their signals handed straight from one to the other (no
//! hub), connecting over loopback host candidates only.
#![cfg(feature = "webrtc")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use swarm::peer::{CandidateKind, CloseReason, Peer, PeerConfig, PeerError, PeerEvent};
use swarm::signal::{IceCandidate, Signal};
use tokio::sync::mpsc;
use tokio::time::timeout;

const CONNECT: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_secs(10);

fn loopback(initiator: bool) -> PeerConfig {
    PeerConfig {
        initiator,
        ice_servers: vec![],
        udp_addrs: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
        ..PeerConfig::default()
    }
}

/// What a relay saw of its peer besides signals.
#[derive(Debug, PartialEq)]
enum Seen {
    Connected(&'static str),
    Closed(&'static str, CloseReason),
}

/// Hands every signal `from` emits to `to`, and reports the other events.
fn relay(name: &'static str, from: Arc<Peer>, to: Arc<Peer>, seen: mpsc::UnboundedSender<Seen>) {
    tokio::spawn(async move {
        while let Some(event) = from.next_event().await {
            match event {
                PeerEvent::Signal(signal) => {
                    if let Err(error) = to.signal(signal).await {
                        // The receiving side may be closed already at the end of a test.
                        assert_eq!(error, PeerError::Closed, "{name} → other: {error}");
                    }
                }
                PeerEvent::Connected => {
                    let _ = seen.send(Seen::Connected(name));
                }
                PeerEvent::Closed(reason) => {
                    let _ = seen.send(Seen::Closed(name, reason));
                }
            }
        }
    });
}

async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>, within: Duration) -> Seen {
    timeout(within, seen.recv())
        .await
        .expect("in time")
        .expect("relays alive")
}

async fn both_connected(seen: &mut mpsc::UnboundedReceiver<Seen>) {
    let mut connected = vec![];
    while connected.len() < 2 {
        match next_seen(seen, CONNECT).await {
            Seen::Connected(name) => connected.push(name),
            other => panic!("before connecting: {other:?}"),
        }
    }
    connected.sort();
    assert_eq!(connected, ["a", "b"]);
}

async fn recv(peer: &Peer) -> Bytes {
    timeout(STEP, peer.recv())
        .await
        .expect("a message in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_connect_over_loopback_and_exchange_messages() {
    let a = Arc::new(Peer::new(loopback(true)).await.expect("initiator"));
    let b = Arc::new(Peer::new(loopback(false)).await.expect("answerer"));
    assert!(a.is_initiator() && !b.is_initiator());
    let label = a.label().expect("initiator labels its channel").to_string();
    assert_eq!(label.len(), 40);
    assert!(label
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    assert_eq!(
        a.send(Bytes::from_static(b"early")).await,
        Err(PeerError::NotConnected)
    );

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    relay("a", a.clone(), b.clone(), seen_tx.clone());
    relay("b", b.clone(), a.clone(), seen_tx);
    both_connected(&mut seen).await;
    assert!(a.is_connected() && b.is_connected());
    assert_eq!(
        b.label(),
        Some(label.as_str()),
        "the answerer adopts the channel"
    );

    // One each way.
    a.send(Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(recv(&b).await, "hello");
    b.send(Bytes::from_static(b"world")).await.unwrap();
    assert_eq!(recv(&a).await, "world");

    // 16 KiB, every byte checked.
    let big: Bytes = (0..16 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    a.send(big.clone()).await.unwrap();
    assert_eq!(recv(&b).await, big);

    // A burst of 1000 small ones each way, in order.
    for i in 0..1000u32 {
        b.send(Bytes::from(format!("b{i}"))).await.unwrap();
        a.send(Bytes::from(format!("a{i}"))).await.unwrap();
    }
    for i in 0..1000u32 {
        assert_eq!(recv(&a).await, format!("b{i}"));
        assert_eq!(recv(&b).await, format!("a{i}"));
    }

    // b leaves; a notices (through the data channel, not an ICE timeout).
    b.close().await;
    assert!(b.is_closed());
    assert_eq!(
        b.send(Bytes::from_static(b"late")).await,
        Err(PeerError::Closed)
    );
    let mut closed = vec![];
    while closed.len() < 2 {
        match next_seen(&mut seen, STEP).await {
            Seen::Closed(name, reason) => closed.push((name, reason)),
            other => panic!("while closing: {other:?}"),
        }
    }
    closed.sort_by_key(|(name, _)| *name);
    assert_eq!(
        closed,
        [("a", CloseReason::ChannelClosed), ("b", CloseReason::Local)]
    );
    assert!(a.is_closed());
    assert_eq!(timeout(STEP, a.recv()).await, Ok(None));
    assert_eq!(timeout(STEP, b.recv()).await, Ok(None));
    a.close().await;
}

/// A receiver that falls far behind (messages queue up in the peer, in the engine and in SCTP)
/// gets every message, in order, as soon as it reads again. The engine (webrtc 0.21) moves
/// messages that SCTP held back for it only when its read path runs, on a packet from the
/// remote or a timer; here the sender has long finished, so without the peer's nudge the last
/// ones waited for the next ICE keepalive, ~2 s (one run in two of a burst of 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_fell_behind_gets_every_message_without_waiting_for_a_timer() {
    const SENT: u32 = 3000;
    // Far below the ~2 s an engine timer took; far above a message's time on loopback.
    const MOST_A_MESSAGE_MAY_WAIT: Duration = Duration::from_millis(1000);
    let a = Peer::new(loopback(true)).await.expect("initiator");
    let b = Peer::new(loopback(false)).await.expect("answerer");
    connect_inline(&a, &b).await;
    for i in 0..SENT {
        a.send(Bytes::from(format!("m{i}"))).await.expect("a sends");
    }
    // Everything that will move without the reader has moved, and the sender is idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slowest = Duration::ZERO;
    for i in 0..SENT {
        let asked = std::time::Instant::now();
        let message = timeout(STEP, b.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not come within {STEP:?}"))
            .expect("channel open");
        assert_eq!(message, format!("m{i}"));
        slowest = slowest.max(asked.elapsed());
    }
    assert!(
        slowest < MOST_A_MESSAGE_MAY_WAIT,
        "a message came only {slowest:?} after it was asked for: the engine held it back"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_before_the_offer_are_held_back() {
    let a = Arc::new(Peer::new(loopback(true)).await.expect("initiator"));
    let b = Arc::new(Peer::new(loopback(false)).await.expect("answerer"));

    // Collect a's offer and its first candidate, then deliver them the wrong way round.
    let mut offer = None;
    let mut candidates = vec![];
    while offer.is_none() || candidates.is_empty() {
        match timeout(STEP, a.next_event()).await.expect("in time") {
            Some(PeerEvent::Signal(signal @ Signal::Offer { .. })) => offer = Some(signal),
            Some(PeerEvent::Signal(signal @ Signal::Candidate(_))) => candidates.push(signal),
            other => panic!("before the answer: {other:?}"),
        }
    }
    for candidate in candidates {
        if let Signal::Candidate(c) = &candidate {
            assert!(c.candidate.starts_with("candidate:"), "{c:?}");
            assert!(c.candidate.contains("127.0.0.1"), "{c:?}");
            assert_eq!(c.sdp_mid.as_deref(), Some("0"));
            assert_eq!(c.sdp_m_line_index, Some(0));
        }
        b.signal(candidate).await.expect("held back");
    }
    b.signal(Signal::Ignored {
        kind: "renegotiate".into(),
    })
    .await
    .expect("ignored");
    let offer = offer.expect("offer");
    b.signal(offer.clone()).await.expect("offer applied");
    b.signal(offer.clone())
        .await
        .expect("a repeated offer is ignored");
    // Glare: an initiator refuses an offer.
    assert!(matches!(
        a.signal(offer).await,
        Err(PeerError::UnexpectedSignal { .. })
    ));

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    relay("a", a.clone(), b.clone(), seen_tx.clone());
    relay("b", b.clone(), a.clone(), seen_tx);
    both_connected(&mut seen).await;

    a.send(Bytes::from_static(b"ping")).await.unwrap();
    assert_eq!(recv(&b).await, "ping");

    a.close().await;
    b.close().await;
}

/// The answer is the answerer's first signal and already carries its host candidate, which is
/// not trickled again. (The answerer checks at once: had its candidate come after the answer, a
/// check reaching the offerer first would make a peer-reflexive pair, nominated only after
/// rtc-ice's wait for such pairs, ~100 ms.) The offerer, applying it, connects without any
/// trickled candidate of the answerer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_carries_the_answerers_host_candidates() {
    let a = Arc::new(Peer::new(loopback(true)).await.expect("initiator"));
    let b = Arc::new(Peer::new(loopback(false)).await.expect("answerer"));
    let a_signals = offer_and_first_candidate(&a).await;
    for signal in a_signals {
        b.signal(signal)
            .await
            .expect("b takes a's offer and candidate");
    }
    let answer = match timeout(STEP, b.next_event()).await.expect("in time") {
        Some(PeerEvent::Signal(Signal::Answer { sdp })) => sdp,
        other => panic!("the answerer's first event is not its answer: {other:?}"),
    };
    let described: Vec<&str> = answer
        .lines()
        .filter_map(|line| line.strip_prefix("a="))
        .filter(|line| line.starts_with("candidate:"))
        .collect();
    assert!(
        described
            .iter()
            .any(|c| c.contains("127.0.0.1") && c.contains("typ host")),
        "no host candidate in the answer:\n{answer}"
    );
    a.signal(Signal::Answer {
        sdp: answer.clone(),
    })
    .await
    .expect("answer applied");
    // None of b's later signals is passed on: a connects with the answer's candidates alone.
    connect_inline_passing(&a, &b, |signal| match signal {
        Signal::Candidate(c) => {
            assert!(
                !described.contains(&c.candidate.as_str()),
                "trickled again after the answer carried it: {c:?}"
            );
            false
        }
        other => panic!("b signalled after its answer: {other:?}"),
    })
    .await;
    a.close().await;
    b.close().await;
}

/// The answerer's checks reach the offerer before any of its candidates (here: the answer is
/// stripped of them and the trickle held back), so the offerer's engine learns the answerer as a
/// peer-reflexive candidate and connects on that pair. When the candidate with that address is
/// signalled at last, the path names its real type and address: rtc-ice keeps calling it
/// peer-reflexive, and a remote relay candidate taken so made a relayed path read as direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reflexive_remote_is_reported_as_the_candidate_later_signalled_for_it() {
    let a = Arc::new(Peer::new(loopback(true)).await.expect("initiator"));
    let b = Arc::new(Peer::new(loopback(false)).await.expect("answerer"));
    for signal in offer_and_first_candidate(&a).await {
        b.signal(signal).await.expect("b takes a's offer");
    }
    let answer = match timeout(STEP, b.next_event()).await.expect("in time") {
        Some(PeerEvent::Signal(Signal::Answer { sdp })) => sdp,
        other => panic!("the answerer's first event is not its answer: {other:?}"),
    };
    let candidates: Vec<String> = answer
        .lines()
        .filter_map(|line| line.strip_prefix("a="))
        .filter(|line| line.starts_with("candidate:") && line.contains("127.0.0.1"))
        .map(str::to_owned)
        .collect();
    let b_port = candidates
        .iter()
        .find_map(|c| c.split_whitespace().nth(5)?.parse::<u16>().ok())
        .expect("the answer's loopback candidate");
    let bare: String = answer
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("a=candidate:"))
        .collect();
    a.signal(Signal::Answer { sdp: bare })
        .await
        .expect("answer applied");
    connect_inline_passing(&a, &b, |signal| !matches!(signal, Signal::Candidate(_))).await;

    let before = a.selected_path().await.expect("a's path");
    assert_eq!(
        before.remote.kind,
        CandidateKind::PeerReflexive,
        "the engine did not learn b from its checks; the test proves nothing: {before:?}"
    );
    let b_address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b_port);
    assert_eq!(before.remote.address, Some(b_address), "{before:?}");
    for candidate in candidates {
        a.signal(Signal::Candidate(IceCandidate {
            candidate,
            sdp_m_line_index: Some(0),
            sdp_mid: Some("0".into()),
        }))
        .await
        .expect("a takes b's candidate");
    }
    let after = a.selected_path().await.expect("a's path");
    assert_eq!(after.remote.kind, CandidateKind::Host, "{after:?}");
    assert_eq!(after.remote.address, Some(b_address), "{after:?}");
    a.close().await;
    b.close().await;
}

/// A STUN binding request as another connection's ICE agent sends it: a USERNAME that is not
/// ours (`forged:other`), ICE-CONTROLLING with the greatest tie-breaker, no MESSAGE-INTEGRITY.
fn forged_controlling_check(seq: u32) -> Vec<u8> {
    let mut attributes = Vec::new();
    let username = b"forged:other"; // 12 bytes: no padding
    attributes.extend_from_slice(&0x0006u16.to_be_bytes());
    attributes.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attributes.extend_from_slice(username);
    attributes.extend_from_slice(&0x802Au16.to_be_bytes()); // ICE-CONTROLLING
    attributes.extend_from_slice(&8u16.to_be_bytes());
    attributes.extend_from_slice(&u64::MAX.to_be_bytes());
    attributes.extend_from_slice(&0x0024u16.to_be_bytes()); // PRIORITY
    attributes.extend_from_slice(&4u16.to_be_bytes());
    attributes.extend_from_slice(&2_130_706_431u32.to_be_bytes());
    let mut message = Vec::new();
    message.extend_from_slice(&0x0001u16.to_be_bytes()); // Binding request
    message.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    message.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    message.extend_from_slice(&[7; 8]);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&attributes);
    message
}

/// The port of the first `127.0.0.1 … typ host` candidate among `signals`.
fn host_port(signals: &[Signal]) -> u16 {
    signals
        .iter()
        .find_map(|signal| match signal {
            Signal::Candidate(c) => {
                let fields: Vec<&str> = c.candidate.split_whitespace().collect();
                (fields.get(4) == Some(&"127.0.0.1") && fields.get(7) == Some(&"host"))
                    .then(|| fields.get(5)?.parse().ok())
                    .flatten()
            }
            _ => None,
        })
        .expect("a loopback host candidate")
}

/// A check from another connection's agent (in a glare, the remote's abandoned attempt, which
/// got our candidates), or from anyone who knows our address, claims the controlling role with a
/// greater tie-breaker. rtc-ice 0.21 settles role conflicts before it checks a request's
/// USERNAME and MESSAGE-INTEGRITY, so such checks made the offerer controlled: then the remote's
/// real agent, also controlled, and ours argued it out, and whichever won chose the pair. The
/// peer drops checks for other credentials before the engine sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_with_another_connections_credentials_cannot_take_the_ice_role() {
    let a = Arc::new(Peer::new(loopback(true)).await.expect("initiator"));
    let b = Arc::new(Peer::new(loopback(false)).await.expect("answerer"));
    let a_signals = offer_and_first_candidate(&a).await;
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), host_port(&a_signals));
    let forger = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a socket");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forging = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seq = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let _ = forger.send_to(&forged_controlling_check(seq), target).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seq
        })
    };
    for signal in a_signals {
        b.signal(signal).await.expect("b takes a's offer");
    }
    connect_inline(&a, &b).await;
    // The forged checks keep coming after the connection: the roles must still hold.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a_path = a.selected_path().await.expect("a's path");
    let b_path = b.selected_path().await.expect("b's path");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forged = forging.await.expect("the forger");
    assert!(forged > 10, "only {forged} forged checks were sent");
    assert!(
        a_path.controlling,
        "the offerer gave up the controlling role to {forged} forged checks: {a_path:?}"
    );
    assert!(!b_path.controlling, "the answerer controls: {b_path:?}");
    a.send(Bytes::from_static(b"still here"))
        .await
        .expect("a sends");
    assert_eq!(recv(&b).await, "still here");
    a.close().await;
    b.close().await;
}

/// An initiator's signals up to its first candidate: its offer, then what it trickled.
async fn offer_and_first_candidate(a: &Peer) -> Vec<Signal> {
    let mut signals = vec![];
    while !signals.iter().any(|s| matches!(s, Signal::Candidate(_))) {
        match timeout(STEP, a.next_event()).await.expect("in time") {
            Some(PeerEvent::Signal(signal)) => signals.push(signal),
            other => panic!("before the answer: {other:?}"),
        }
    }
    signals
}

/// Connects `a` and `b` without background tasks, so the test keeps sole ownership of both.
async fn connect_inline(a: &Peer, b: &Peer) {
    connect_inline_passing(a, b, |_| true).await;
}

/// [`connect_inline`], passing on only those of `b`'s signals that `pass_b` accepts.
async fn connect_inline_passing(a: &Peer, b: &Peer, pass_b: impl Fn(&Signal) -> bool) {
    let (mut a_up, mut b_up) = (false, false);
    let handshake = async {
        while !(a_up && b_up) {
            tokio::select! {
                Some(event) = a.next_event() => match event {
                    PeerEvent::Signal(signal) => b.signal(signal).await.expect("b takes a's signal"),
                    PeerEvent::Connected => a_up = true,
                    PeerEvent::Closed(reason) => panic!("a closed: {reason:?}"),
                },
                Some(event) = b.next_event() => match event {
                    PeerEvent::Signal(signal) if pass_b(&signal) => {
                        a.signal(signal).await.expect("a takes b's signal");
                    }
                    PeerEvent::Signal(_) => {}
                    PeerEvent::Connected => b_up = true,
                    PeerEvent::Closed(reason) => panic!("b closed: {reason:?}"),
                },
            }
        }
    };
    timeout(CONNECT, handshake)
        .await
        .expect("connected in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_peer_closes_it_for_the_other_side() {
    let a = Peer::new(loopback(true)).await.expect("initiator");
    let b = Peer::new(loopback(false)).await.expect("answerer");
    connect_inline(&a, &b).await;
    drop(b);
    loop {
        match timeout(STEP, a.next_event())
            .await
            .expect("a notices in time")
        {
            Some(PeerEvent::Closed(reason)) => {
                assert_ne!(reason, CloseReason::Local);
                break;
            }
            Some(PeerEvent::Signal(Signal::Candidate(_))) => {}
            other => panic!("after b went away: {other:?}"),
        }
    }
    assert_eq!(a.next_event().await, None, "Closed is the last event");
    assert_eq!(timeout(STEP, a.recv()).await, Ok(None));
    a.close().await;
}
