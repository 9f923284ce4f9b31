//! No leak: 100 times a swarm joins, connects over WebRTC to a peer that stays, exchanges a
//! message and leaves; afterwards the process has the same number of live Tokio tasks and open
//! file descriptors as before. Alone in its test binary, since file descriptors are per process.
#![cfg(feature = "webrtc")]

mod support;

use std::time::{Duration, Instant};

use swarm::Swarm;
use tokio::time::timeout;

use support::*;

const CYCLES: usize = 100;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's descriptors")
        .count()
}

fn live_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Joins, meets `stayer`, says hello both ways, leaves; waits until the stayer has let go.
async fn cycle(hub: &str, stayer: &mut Swarm, round: usize) {
    let stayer_id = stayer.id().to_string();
    let mut visitor = Swarm::join([hub], "leak", loopback_options())
        .await
        .unwrap();
    let visitor_id = visitor.id().to_string();
    let at_visitor = connected_to(&mut visitor, &stayer_id).await;
    let at_stayer = connected_to(stayer, &visitor_id).await;
    at_visitor.send(format!("hello {round}")).await.unwrap();
    let got = timeout(CONNECT, at_stayer.recv()).await.unwrap().unwrap();
    assert_eq!(got, format!("hello {round}").as_bytes());
    at_stayer.send("bye").await.unwrap();
    let got = timeout(CONNECT, at_visitor.recv()).await.unwrap().unwrap();
    assert_eq!(got, "bye".as_bytes());
    drop((at_visitor, at_stayer));
    visitor.close().await;
    disconnected_from(stayer, &visitor_id).await;
}

/// Waits (up to 20 s) until tasks and descriptors are back to `baseline`, and returns where
/// they ended.
async fn settle(baseline: (usize, usize)) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = (live_tasks(), open_fds());
        if (now.0 <= baseline.0 && now.1 <= baseline.1) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_join_leave_cycles_leak_no_task_and_no_descriptor() {
    let hub = start_hub().await;
    let mut stayer = Swarm::join([hub.url()], "leak", loopback_options())
        .await
        .unwrap();
    // Warm up: pools and lazily created runtime parts exist from here on.
    for round in 0..2 {
        cycle(hub.url(), &mut stayer, round).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = (live_tasks(), open_fds());

    let started = Instant::now();
    for round in 0..CYCLES {
        cycle(hub.url(), &mut stayer, round).await;
    }
    let took = started.elapsed();
    let after = settle(baseline).await;
    println!(
        "{CYCLES} join/leave cycles in {took:?} ({:?} each); tasks {} → {}, descriptors {} → {}",
        took / CYCLES as u32,
        baseline.0,
        after.0,
        baseline.1,
        after.1
    );
    assert!(
        after.0 <= baseline.0,
        "live tasks grew from {} to {} over {CYCLES} cycles",
        baseline.0,
        after.0
    );
    assert!(
        after.1 <= baseline.1,
        "open descriptors grew from {} to {} over {CYCLES} cycles",
        baseline.1,
        after.1
    );
    stayer.close().await;
}
