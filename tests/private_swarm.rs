//! Rust swarms through a private hub: peers given a token-bearing hub URL
//! (`https://HOST/t/<token>`) meet and talk; a peer whose token has expired gets no further than
//! the hub's refusal.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signalhub::{Access, Hub, HubConfig, Rejection};
use swarm::{Swarm, SwarmEvent, SwarmOptions};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(45);

fn options() -> SwarmOptions {
    SwarmOptions {
        udp_addrs: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
        announce_alone: Duration::from_millis(500),
        ..SwarmOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarms_meet_through_a_private_hub_with_a_token_in_the_hub_url() {
    let (secret, public) = signalhub::generate_token_keys();
    let secret = signalhub::parse_signing_key(&secret).expect("a key");
    let hub = Hub::bind(
        "127.0.0.1:0",
        HubConfig {
            quiet: true,
            access: Access {
                apps: vec!["private-swarm".to_string()],
                token_keys: vec![signalhub::parse_verifying_key(&public).expect("a key")],
                ..Access::default()
            },
            ..HubConfig::default()
        },
    )
    .await
    .expect("bind")
    .spawn()
    .expect("serve");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let url = |exp: u64| {
        format!(
            "{}/t/{}",
            hub.url(),
            signalhub::mint_token(&secret, "private-swarm", exp)
        )
    };
    let mut a = Swarm::join([url(now + 600)], "private-swarm", options())
        .await
        .expect("join with a token");
    let mut b = Swarm::join([url(now + 600)], "private-swarm", options())
        .await
        .expect("join with a token");
    let b_id = b.id().to_string();
    let peer = loop {
        match timeout(STEP, a.next_event()).await.expect("in time") {
            Some(SwarmEvent::Connected { id, peer }) if id == b_id => break peer,
            Some(_) => continue,
            None => panic!("the swarm ended"),
        }
    };
    let from_a = loop {
        match timeout(STEP, b.next_event()).await.expect("in time") {
            Some(SwarmEvent::Connected { peer, .. }) => break peer,
            Some(_) => continue,
            None => panic!("the swarm ended"),
        }
    };
    peer.send("through a private hub").await.expect("send");
    let got = timeout(STEP, from_a.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&got[..], b"through a private hub");

    // An expired token: the hub refuses its subscription (counted), and it meets nobody.
    let before = hub.metrics().rejected(Rejection::TokenExpired);
    let mut late = Swarm::join([url(now - 1)], "private-swarm", options())
        .await
        .expect("join (the hub refuses later)");
    let deadline = tokio::time::Instant::now() + STEP;
    while hub.metrics().rejected(Rejection::TokenExpired) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired token was never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let met = timeout(Duration::from_secs(3), async {
        loop {
            if let Some(SwarmEvent::Connected { .. }) = late.next_event().await {
                return;
            }
        }
    })
    .await;
    assert!(met.is_err(), "a swarm with an expired token met someone");
    late.close().await;
    a.close().await;
    b.close().await;
    hub.shutdown().await.expect("clean shutdown");
}
