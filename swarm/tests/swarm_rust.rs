//! Rust swarms meeting through a real hub on loopback and connecting over real WebRTC: pairs and a
//! full mesh moving bytes, a killed peer, a restarted hub, glare, two hubs, signed signalling,
//! a stalled handshake, a full swarm, and when a swarm is ready.
#![cfg(feature = "webrtc")]

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalhub::client::Client;
use swarm::signal::{seal, HubMessage, Signal};
use swarm::{Keypair, Peer, PeerConfig, PeerEvent, Swarm, SwarmEvent, SwarmOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use support::*;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible enough, reproducible.
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_connect_and_stream_bytes_both_ways() {
    let hub = start_hub().await;
    let mut a = Swarm::join([hub.url()], "pair", loopback_options())
        .await
        .unwrap();
    let mut b = Swarm::join([hub.url()], "pair", loopback_options())
        .await
        .unwrap();
    assert_eq!(a.id().len(), 25);
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let at_a = connected_to(&mut a, &b_id).await;
    let at_b = connected_to(&mut b, &a_id).await;
    assert_ne!(
        at_a.is_initiator(),
        at_b.is_initiator(),
        "exactly one side offers"
    );
    assert_eq!(a.peers().len(), 1);

    // 1 MiB each way at once, through the byte streams (16 KiB messages underneath).
    let to_b = random_bytes(1 << 20, 1);
    let to_a = random_bytes(1 << 20, 2);
    let (mut stream_a, mut stream_b) = (at_a.stream(), at_b.stream());
    let (sent_a, sent_b) = (to_b.clone(), to_a.clone());
    let writer_a = tokio::spawn(async move {
        stream_a.write_all(&sent_a).await.unwrap();
        stream_a.flush().await.unwrap();
        let mut got = vec![0u8; 1 << 20];
        stream_a.read_exact(&mut got).await.unwrap();
        got
    });
    let writer_b = tokio::spawn(async move {
        stream_b.write_all(&sent_b).await.unwrap();
        stream_b.flush().await.unwrap();
        let mut got = vec![0u8; 1 << 20];
        stream_b.read_exact(&mut got).await.unwrap();
        got
    });
    let got_at_a = timeout(CONNECT, writer_a).await.expect("in time").unwrap();
    let got_at_b = timeout(CONNECT, writer_b).await.expect("in time").unwrap();
    assert!(got_at_a == to_a, "A received B's bytes intact");
    assert!(got_at_b == to_b, "B received A's bytes intact");

    // Closing one side is noticed by the other.
    at_a.close().await;
    disconnected_from(&mut b, &a_id).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_peers_form_a_full_mesh() {
    let hub = start_hub().await;
    let mut swarms = Vec::new();
    for _ in 0..5 {
        swarms.push(
            Swarm::join([hub.url()], "mesh", loopback_options())
                .await
                .unwrap(),
        );
    }
    let ids: Vec<String> = swarms.iter().map(|s| s.id().to_string()).collect();
    let mut all_peers = Vec::new();
    for swarm in &mut swarms {
        let others: Vec<String> = ids.iter().filter(|id| *id != swarm.id()).cloned().collect();
        let peers = connected_to_all(swarm, &others).await;
        assert_eq!(peers.len(), 4, "{} has exactly the 4 others", swarm.id());
        all_peers.push(peers);
    }
    // Every peer says hello to every other, as a message.
    for (i, peers) in all_peers.iter().enumerate() {
        for peer in peers {
            peer.send(format!("hello from {}", ids[i])).await.unwrap();
        }
    }
    for (i, peers) in all_peers.iter().enumerate() {
        for peer in peers {
            let message = timeout(CONNECT, peer.recv())
                .await
                .expect("in time")
                .unwrap();
            assert_eq!(
                message,
                format!("hello from {}", peer.id()).as_bytes(),
                "{} ← {}",
                ids[i],
                peer.id()
            );
        }
    }
    for swarm in swarms {
        swarm.close().await;
    }
}

/// Run by `killed_peer_is_noticed_and_removed` as a child process: joins the swarm and streams
/// bytes to whoever connects, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process, started by killed_peer_is_noticed_and_removed"]
async fn child_peer_streaming_until_killed() {
    let (Ok(hub), Ok(app)) = (
        std::env::var("SWARM_CHILD_HUB"),
        std::env::var("SWARM_CHILD_APP"),
    ) else {
        panic!("run only by killed_peer_is_noticed_and_removed");
    };
    let mut swarm = Swarm::join([hub], &app, loopback_options()).await.unwrap();
    println!("CHILD-ID {}", swarm.id());
    while let Some(event) = swarm.next_event().await {
        if let SwarmEvent::Connected { peer, .. } = event {
            tokio::spawn(async move {
                let mut stream = peer.stream();
                let chunk = vec![7u8; 4096];
                while stream.write_all(&chunk).await.is_ok() {}
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_is_noticed_and_removed() {
    let hub = start_hub().await;
    let mut a = Swarm::join([hub.url()], "kill", loopback_options())
        .await
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_peer_streaming_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("SWARM_CHILD_HUB", hub.url())
        .env("SWARM_CHILD_APP", "kill")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-run this test binary as the child peer");
    let peer = match next_event(&mut a, "the child peer").await {
        SwarmEvent::Connected { peer, .. } => peer,
        other => panic!("{other:?}"),
    };
    let child_id = peer.id().to_string();
    let mut stream = peer.stream();
    let mut buf = vec![0u8; 64 * 1024];
    stream
        .read_exact(&mut buf)
        .await
        .expect("the child streams");
    assert!(buf.iter().all(|&b| b == 7));

    // Mid-stream, no goodbye: SIGKILL.
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let reason = disconnected_from(&mut a, &child_id).await;
    let noticed = killed.elapsed();
    println!("a killed peer was noticed after {noticed:?} ({reason:?})");
    assert!(a.peers().is_empty(), "the killed peer is removed");
    // The stream ends instead of hanging.
    let rest = timeout(Duration::from_secs(5), async {
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).await
    })
    .await
    .expect("the stream of a dead peer reaches end-of-file");
    assert!(rest.is_ok());
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_survive_a_hub_restart_and_a_new_peer_joins_after_it() {
    let hub = start_hub().await;
    let port = hub.local_addr().port();
    let url = hub.url().to_string();
    let mut a = Swarm::join([&url], "restart", loopback_options())
        .await
        .unwrap();
    let mut b = Swarm::join([&url], "restart", loopback_options())
        .await
        .unwrap();
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let at_a = connected_to(&mut a, &b_id).await;
    let at_b = connected_to(&mut b, &a_id).await;

    hub.shutdown().await.unwrap();
    // The hub is gone; the direct connection is not.
    at_a.send("while the hub is down").await.unwrap();
    let got = timeout(CONNECT, at_b.recv()).await.unwrap().unwrap();
    assert_eq!(got, "while the hub is down".as_bytes());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!at_a.is_closed() && !at_b.is_closed());

    // Back on the same port: the swarms resubscribe, and a newcomer meets both.
    let _hub = start_hub_on(port).await;
    let mut c = Swarm::join([&url], "restart", loopback_options())
        .await
        .unwrap();
    let c_id = c.id().to_string();
    connected_to_all(&mut c, &[a_id.clone(), b_id.clone()]).await;
    connected_to(&mut a, &c_id).await;
    connected_to(&mut b, &c_id).await;
    // Nothing was lost on the way: A and B are still connected to each other.
    assert!(a.peers().iter().any(|p| p.id() == b_id));
    for swarm in [a, b, c] {
        swarm.close().await;
    }
}

/// Records the offers a swarm posts, and holds back what it hears on `all` until opened.
struct Probe {
    offers_sent: Arc<Mutex<usize>>,
    hearing: Arc<AtomicBool>,
}

fn probed(options: SwarmOptions) -> (SwarmOptions, Probe) {
    let offers_sent = Arc::new(Mutex::new(0));
    let hearing = Arc::new(AtomicBool::new(false));
    let (count, gate) = (offers_sent.clone(), hearing.clone());
    let options = SwarmOptions {
        wrap: Some(Arc::new(move |message: Value, _channel: &str| {
            if message["signal"]["type"] == "offer" {
                *count.lock().unwrap() += 1;
            }
            message
        })),
        unwrap: Some(Arc::new(move |message: Value, channel: &str| {
            (channel != "all" || gate.load(Ordering::SeqCst)).then_some(message)
        })),
        ..options
    };
    (
        options,
        Probe {
            offers_sent,
            hearing,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glare_resolves_in_one_round_trip() {
    let hub = start_hub().await;
    // Glare needs each side to hear the other's announce before the other's offer arrives (they
    // come on two different streams). The test announces both at the same instant; when one
    // offer still wins the race, that round was no glare, and it tries again.
    for round in 0..8 {
        if glare_round(hub.url(), &format!("glare-{round}")).await {
            return;
        }
        println!("round {round}: one offer arrived first, no glare; again");
    }
    panic!("8 rounds without a glare");
}

/// One attempt at glare in `app`: false if it did not happen (only one side offered).
async fn glare_round(hub: &str, app: &str) -> bool {
    // Neither hears the other's announces until both are in, and each announces only once.
    let quiet = SwarmOptions {
        announce_alone: Duration::from_secs(600),
        announce_with_peers: Duration::from_secs(600),
        ..loopback_options()
    };
    let (a_options, a_probe) = probed(quiet.clone());
    let (b_options, b_probe) = probed(quiet);
    let mut a = Swarm::join([hub], app, a_options).await.unwrap();
    let mut b = Swarm::join([hub], app, b_options).await.unwrap();
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    tokio::time::sleep(Duration::from_millis(500)).await; // both subscribed, first announces gone
    a_probe.hearing.store(true, Ordering::SeqCst);
    b_probe.hearing.store(true, Ordering::SeqCst);

    let client = Client::new(app, [hub]).unwrap();
    let started = Instant::now();
    let (announce_a, announce_b) = (
        json!({"type": "connect", "from": a_id}),
        json!({"type": "connect", "from": b_id}),
    );
    let (x, y) = tokio::join!(
        client.broadcast("all", &announce_a),
        client.broadcast("all", &announce_b),
    );
    x.unwrap();
    y.unwrap();
    let at_a = connected_to(&mut a, &b_id).await;
    let at_b = connected_to(&mut b, &a_id).await;
    let took = started.elapsed();
    let offers = (
        *a_probe.offers_sent.lock().unwrap(),
        *b_probe.offers_sent.lock().unwrap(),
    );
    if offers != (1, 1) {
        assert!(offers.0 + offers.1 == 1, "offers sent: {offers:?}");
        a.close().await;
        b.close().await;
        return false;
    }
    println!("glare resolved in {took:?}");
    // The greater id kept its offer.
    let a_wins = a_id > b_id;
    assert_eq!(at_a.is_initiator(), a_wins);
    assert_eq!(at_b.is_initiator(), !a_wins);
    // No announce round was needed (they are 10 min apart), and nothing was torn down.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let calm = timeout(Duration::from_secs(2), a.next_event()).await;
    assert!(calm.is_err(), "no further event at A: {calm:?}");
    a.close().await;
    b.close().await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_are_redundancy_not_duplicated_handshakes() {
    let hub1 = start_hub().await;
    let hub2 = start_hub().await;
    let hubs = [hub1.url().to_string(), hub2.url().to_string()];
    let mut a = Swarm::join(&hubs, "twohubs", loopback_options())
        .await
        .unwrap();
    let mut b = Swarm::join(&hubs, "twohubs", loopback_options())
        .await
        .unwrap();
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let at_a = connected_to(&mut a, &b_id).await;
    let at_b = connected_to(&mut b, &a_id).await;
    at_b.send("over one connection").await.unwrap();
    assert_eq!(
        timeout(CONNECT, at_a.recv()).await.unwrap().unwrap(),
        "over one connection".as_bytes()
    );
    // Both hubs carried the signalling (every POST went to both): each delivered at least the
    // two announces, an offer and an answer.
    for hub in [&hub1, &hub2] {
        let text = hub.metrics().encode();
        let delivered = text
            .lines()
            .find_map(|line| line.strip_prefix("signalhub_messages_delivered_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or_else(|| {
                panic!("no delivered count in the metrics of {}: {text}", hub.url())
            });
        assert!(
            delivered >= 4.0,
            "{} delivered {delivered} messages",
            hub.url()
        );
    }
    // Duplicates tore nothing down: no further events for a while.
    let calm = timeout(Duration::from_secs(3), a.next_event()).await;
    assert!(calm.is_err(), "no further event at A: {calm:?}");
    let calm = timeout(Duration::from_millis(100), b.next_event()).await;
    assert!(calm.is_err(), "no further event at B: {calm:?}");

    // And one hub is enough: with hub 1 gone, a newcomer still joins through hub 2.
    hub1.shutdown().await.unwrap();
    let mut c = Swarm::join(&hubs, "twohubs", loopback_options())
        .await
        .unwrap();
    let c_id = c.id().to_string();
    connected_to_all(&mut c, &[a_id, b_id]).await;
    connected_to(&mut a, &c_id).await;
    for swarm in [a, b, c] {
        swarm.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_signalling_connects_and_drops_forged_signals() {
    let hub = start_hub().await;
    let alice = Keypair::from_seed(&[0xa1; 32]);
    let bob = Keypair::from_seed(&[0xb0; 32]);
    let mallory = Keypair::from_seed(&[0x66; 32]);
    let alice_id = hex(&alice.public_key());
    let signed = |keypair: &Keypair| SwarmOptions {
        keypair: Some(keypair.clone()),
        ..loopback_options()
    };

    // Bob alone first; the test listens on Alice's inbox, as Alice would.
    let mut b = Swarm::join([hub.url()], "signed", signed(&bob))
        .await
        .unwrap();
    let b_id = b.id().to_string();
    assert_eq!(b_id, hex(&bob.public_key()));
    let client = Client::new("signed", [hub.url()]).unwrap();
    let mut alice_inbox = client.subscribe([alice_id.as_str()]).unwrap();
    alice_inbox.opened().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A real offer, as Alice's peer would make it.
    let peer = Peer::new(PeerConfig {
        initiator: true,
        udp_addrs: loopback_options().udp_addrs,
        ..PeerConfig::default()
    })
    .await
    .unwrap();
    let Some(PeerEvent::Signal(offer @ Signal::Offer { .. })) = peer.next_event().await else {
        panic!("an initiator's first event is its offer");
    };
    let offer = HubMessage::Signal {
        from: alice_id.clone(),
        signal: offer,
    };
    // Mallory signs it herself, or lifts Alice's key into the envelope: both dropped.
    let forged = seal(&mallory, "signed", &b_id, &offer);
    let mut lifted = forged.clone();
    lifted["from"] = Value::String(alice_id.clone());
    // Unsigned, as a plain JS peer would send it: dropped too.
    for message in [forged, lifted, offer.to_value()] {
        client.broadcast(&b_id, &message).await.unwrap();
    }
    let answered = timeout(
        Duration::from_secs(3),
        futures_util::StreamExt::next(&mut alice_inbox),
    )
    .await;
    assert!(
        answered.is_err(),
        "Bob answered a forged offer: {answered:?}"
    );

    // The control: the same offer signed by Alice is answered, signed by Bob.
    client
        .broadcast(&b_id, &seal(&alice, "signed", &b_id, &offer))
        .await
        .unwrap();
    let answer = timeout(CONNECT, futures_util::StreamExt::next(&mut alice_inbox))
        .await
        .expect("Bob answers Alice's signed offer")
        .unwrap();
    assert_eq!(answer["from"], b_id);
    let opened = swarm::signal::open_sealed(&answer, "signed", &alice_id).expect("signed by Bob");
    assert!(matches!(
        opened,
        HubMessage::Signal {
            signal: Signal::Answer { .. },
            ..
        }
    ));
    peer.close().await;
    drop(alice_inbox);

    // And two signed swarms connect.
    let mut a = Swarm::join([hub.url()], "signed", signed(&alice))
        .await
        .unwrap();
    // Bob's half-done handshake with the test's Alice stalls out first (10 s) or is replaced by
    // the real Alice's offer; either way they meet.
    connected_to(&mut a, &b_id).await;
    connected_to(&mut b, &alice_id).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_abandoned_and_retried() {
    let hub = start_hub().await;
    // A loses every signal for the first 2 s, so its first attempt stalls; it gives up after 1 s.
    let deaf = Arc::new(AtomicBool::new(true));
    let gate = deaf.clone();
    let a_options = SwarmOptions {
        handshake_timeout: Duration::from_secs(1),
        unwrap: Some(Arc::new(move |message: Value, channel: &str| {
            (channel == "all" || !gate.load(Ordering::SeqCst)).then_some(message)
        })),
        ..loopback_options()
    };
    let mut a = Swarm::join([hub.url()], "stall", a_options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = Swarm::join([hub.url()], "stall", loopback_options())
        .await
        .unwrap();
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        a.peers().is_empty() && b.peers().is_empty(),
        "nothing can connect yet"
    );
    deaf.store(false, Ordering::SeqCst);
    // JS would now ignore B for good; this swarm retries on B's next announce.
    connected_to(&mut a, &b_id).await;
    connected_to(&mut b, &a_id).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_swarm_pauses_and_resumes_when_a_peer_leaves() {
    let hub = start_hub().await;
    let mut a = Swarm::join(
        [hub.url()],
        "full",
        SwarmOptions {
            max_peers: 1,
            ..loopback_options()
        },
    )
    .await
    .unwrap();
    let a_id = a.id().to_string();
    let mut b = Swarm::join([hub.url()], "full", loopback_options())
        .await
        .unwrap();
    let b_id = b.id().to_string();
    connected_to(&mut a, &b_id).await;
    connected_to(&mut b, &a_id).await;

    // C meets B but not A, which is full.
    let mut c = Swarm::join([hub.url()], "full", loopback_options())
        .await
        .unwrap();
    let c_id = c.id().to_string();
    connected_to(&mut b, &c_id).await;
    connected_to(&mut c, &b_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_a: HashSet<String> = a.peers().iter().map(|p| p.id().to_string()).collect();
    assert_eq!(
        at_a,
        HashSet::from([b_id.clone()]),
        "A stays at max_peers = 1"
    );

    // B leaves: A has room again, announces again, and C meets it.
    b.close().await;
    disconnected_from(&mut a, &b_id).await;
    connected_to(&mut a, &c_id).await;
    a.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_writer_to_a_reader_that_does_not_read_is_held_back() {
    use std::sync::atomic::AtomicU64;

    let hub = start_hub().await;
    let mut a = Swarm::join([hub.url()], "flow", loopback_options())
        .await
        .unwrap();
    let mut b = Swarm::join([hub.url()], "flow", loopback_options())
        .await
        .unwrap();
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let at_a = connected_to(&mut a, &b_id).await;
    let at_b = connected_to(&mut b, &a_id).await;

    // A writes as fast as it can; B reads nothing for a while.
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let mut writer = at_a.stream();
    let writing = tokio::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        loop {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plateau = written.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = written.load(Ordering::SeqCst);
    println!(
        "a writer facing a reader that does not read stopped after {plateau} bytes (then {later})"
    );
    // What may be in flight: B's receive queue (256 messages of 16 KiB: 4 MiB), the kernel's UDP
    // buffers (4 MiB each way), the SCTP receive window and A's send buffer (1 MiB each), the
    // stream's window (128 KiB): about 15 MiB. Unbounded buffering would have taken gigabytes in
    // 5 s on loopback.
    assert!(
        later < 24 << 20,
        "{later} bytes written to a reader that reads nothing"
    );
    assert_eq!(plateau, later, "the writer is held, not trickling on");

    // B reads: everything arrives and the writer moves again.
    let mut reader = at_b.stream();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < later + (8 << 20) {
        let n = timeout(CONNECT, reader.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        assert!(buf[..n].iter().all(|&x| x == 1));
        got += n as u64;
    }
    assert!(written.load(Ordering::SeqCst) > later, "the writer resumed");
    writing.abort();
    a.close().await;
    b.close().await;
}

/// In a glare with a JS peer, its offer can reach us after its answer to ours (its two POSTs
/// cross): that late offer must not replace the connection it just accepted. Seen in CI with
/// Chromium, under load; here the late offer is sent by hand into the initiator's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_offer_from_a_resolved_glare_leaves_the_connection_alone() {
    let hub = start_hub().await;
    // The late offer must come within GLARE_WINDOW of the initiator's own offer; a round whose
    // connection took too long for that is tried again.
    for round in 0..5 {
        if late_offer_round(hub.url(), &format!("late-offer-{round}")).await {
            return;
        }
        println!("round {round}: the connection took too long to test inside the window; again");
    }
    panic!("5 rounds without a connection inside the glare window");
}

async fn late_offer_round(hub: &str, app: &str) -> bool {
    let mut a = Swarm::join([hub], app, loopback_options()).await.unwrap();
    let started = Instant::now();
    let mut b = Swarm::join([hub], app, loopback_options()).await.unwrap();
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let at_a = connected_to(&mut a, &b_id).await;
    let at_b = connected_to(&mut b, &a_id).await;
    if started.elapsed() > Duration::from_millis(1200) {
        a.close().await;
        b.close().await;
        return false;
    }
    let (initiator, answerer_id) = if at_a.is_initiator() {
        (&at_a, b_id.clone())
    } else {
        (&at_b, a_id.clone())
    };
    let initiator_id = if at_a.is_initiator() { &a_id } else { &b_id };

    // A real offer, as the answerer's abandoned attempt would have made it.
    let stale = Peer::new(PeerConfig {
        initiator: true,
        udp_addrs: loopback_options().udp_addrs,
        ..PeerConfig::default()
    })
    .await
    .unwrap();
    let Some(PeerEvent::Signal(offer @ Signal::Offer { .. })) = stale.next_event().await else {
        panic!("an initiator's first event is its offer");
    };
    let client = Client::new(app, [hub]).unwrap();
    let late = HubMessage::Signal {
        from: answerer_id,
        signal: offer,
    };
    client
        .broadcast(initiator_id, &late.to_value())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !initiator.is_closed(),
        "the late offer replaced a working connection"
    );
    // Still the same connection, both ways.
    at_a.send("after the late offer").await.unwrap();
    let got = timeout(CONNECT, at_b.recv())
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(got, "after the late offer".as_bytes());
    at_b.send("and back").await.unwrap();
    let got = timeout(CONNECT, at_a.recv())
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(got, "and back".as_bytes());
    stale.close().await;
    a.close().await;
    b.close().await;
    true
}

/// `Swarm::ready` resolves once the swarm is subscribed and has announced itself: a client that
/// listens on `all` hears the announce, and a peer joining afterwards connects. With no hub to
/// reach it does not resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_subscribed_and_announced() {
    // Nothing listens on this port: the swarm can neither subscribe nor announce.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_hub = format!("http://{}", nowhere.local_addr().unwrap());
    drop(nowhere);
    let lonely = Swarm::join([dead_hub.as_str()], "ready", loopback_options())
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_secs(2), lonely.ready())
            .await
            .is_err(),
        "ready without a hub"
    );
    assert!(!lonely.is_ready());
    lonely.close().await;

    let hub = start_hub().await;
    let listener = Client::new("ready", [hub.url()]).unwrap();
    let mut all = listener.subscribe(["all"]).unwrap();
    let mut open = all.connected_hubs();
    timeout(CONNECT, open.wait_for(|hubs| *hubs > 0))
        .await
        .expect("the listener subscribes")
        .unwrap();
    // Announces every 10 minutes: the announce heard is the first one.
    let options = SwarmOptions {
        announce_alone: Duration::from_secs(600),
        announce_with_peers: Duration::from_secs(600),
        ..loopback_options()
    };
    let mut a = Swarm::join([hub.url()], "ready", options).await.unwrap();
    assert!(timeout(CONNECT, a.ready()).await.expect("ready in time"));
    assert!(a.is_ready());
    assert!(a.ready().await, "ready stays ready");
    let a_id = a.id().to_string();
    let heard = timeout(CONNECT, async {
        while let Some(message) = futures_util::StreamExt::next(&mut all).await {
            if message["type"] == "connect" && message["from"] == a_id.as_str() {
                // The rule key, which JS ignores, tells another swarm of this crate what it is.
                assert_eq!(
                    message,
                    json!({"type": "connect", "from": a_id, swarm::swarm::GLARE_RULE_KEY: swarm::swarm::GLARE_RULE})
                );
                return;
            }
        }
        panic!("the listener's subscription ended");
    })
    .await;
    assert!(heard.is_ok(), "ready before the announce was posted");
    // A's one announce is out; B, joining now, is offered to only because it announces: and B
    // meets A, whose inbox is open.
    let mut b = Swarm::join([hub.url()], "ready", loopback_options())
        .await
        .unwrap();
    let b_id = b.id().to_string();
    connected_to(&mut a, &b_id).await;
    connected_to(&mut b, &a_id).await;
    a.close().await;
    b.close().await;
}

/// An abandon (`{"type":"abandon"}`) from a peer whose handshake is under way ends it at once:
/// the peer's next announce brings a new offer, instead of being ignored as a known peer's until
/// the handshake times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandon_ends_the_handshake_and_the_next_announce_is_offered_to() {
    use futures_util::StreamExt;
    let hub = start_hub().await;
    let options = SwarmOptions {
        announce_alone: Duration::from_secs(600),
        ..loopback_options()
    };
    let rust = Swarm::join([hub.url()], "abandon", options).await.unwrap();
    let rust_id = rust.id().to_string();
    // A stranger that announces like a JS peer and never answers.
    let client = Client::new("abandon", [hub.url()]).unwrap();
    let mut inbox = client.subscribe(["stranger"]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // its subscription is open
    let announce = json!({"type": "connect", "from": "stranger"});
    let next_offer = async |inbox: &mut signalhub::client::Subscription| loop {
        let message = timeout(Duration::from_secs(2), inbox.next())
            .await
            .expect("an offer within 2 s")
            .expect("the subscription is open");
        if message["signal"]["type"] == "offer" {
            assert_eq!(message["from"], rust_id.as_str());
            return;
        }
    };
    client.broadcast("all", &announce).await.unwrap();
    next_offer(&mut inbox).await;
    client
        .broadcast(
            &rust_id,
            &json!({"from": "stranger", "signal": {"type": "abandon"}}),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.broadcast("all", &announce).await.unwrap();
    next_offer(&mut inbox).await;
    rust.close().await;
}
