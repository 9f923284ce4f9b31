//! Peak memory of the log's replication under large and hostile input, measured from the
//! process's own peak RSS (`VmHWM` in /proc/self/status, reset through /proc/self/clear_refs).
//!
//! One test function runs every scenario in turn, so that nothing else in this process allocates
//! meanwhile (each integration test file is its own process). It prints the figures:
//!
//! ```sh
//! cargo test -p swarm --no-default-features --test log_memory -- --nocapture
//! ```
//!
//! Sizes can be changed with `LOG_MEMORY_VALUE_MB` (the large node, default 50) and
//! `LOG_MEMORY_HAVES_MB` (the Have flood, default 55).

use std::time::Duration;

use swarm::{
    replicate, Handshake, Log, LogOptions, LogSeq, Message, Node, ReplicateError, ReplicateOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

fn status_kib(field: &str) -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak RSS to the current RSS; returns the current RSS in bytes, or `None` where
/// /proc does not allow it (then the test only prints that it could not measure).
fn reset_peak() -> Option<usize> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    Some(status_kib("VmRSS:")? * 1024)
}

fn peak() -> Option<usize> {
    Some(status_kib("VmHWM:")? * 1024)
}

fn env_mb(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn frames(msgs: &[Message]) -> Vec<u8> {
    msgs.iter().flat_map(Message::to_frame).collect()
}

/// Feeds `input` to a replication of `log` in 64 KiB writes, reading (and dropping) what it
/// sends, and returns how it ended.
async fn feed(
    log: &Log,
    options: ReplicateOptions,
    input: &[u8],
) -> Result<swarm::Summary, ReplicateError> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let log = log.clone();
    let task = tokio::spawn(async move { replicate(&log, theirs, options).await });
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    for chunk in input.chunks(64 * 1024) {
        if wr.write_all(chunk).await.is_err() {
            break;
        }
    }
    wr.shutdown().await.ok();
    let result = task.await.expect("replication task");
    drain.await.ok();
    result
}

/// Receives one node whose value is `value_len` bytes; the peak RSS above the start.
fn receive_large_node(log: &Log, value_len: usize) -> Option<usize> {
    let input = {
        let node = Node::new(vec![], vec![0x5a; value_len], "A".into(), 1, 1);
        frames(&[
            Message::Handshake(Handshake::new()),
            Message::Have(LogSeq::new("A", 1)),
            Message::SentHeads,
            Message::Node(node.to_message()),
            Message::SentWants,
        ])
    };
    let options = ReplicateOptions {
        max_frame_size: value_len + 1024,
        ..ReplicateOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = reset_peak();
    let summary = rt
        .block_on(feed(log, options, &input))
        .expect("the large node replicates");
    let peak = peak();
    assert_eq!(summary.progress.nodes_received, 1);
    assert_eq!(
        log.get(&log.head_keys().unwrap()[0])
            .unwrap()
            .unwrap()
            .value
            .len(),
        value_len
    );
    Some(peak?.saturating_sub(start?))
}

/// A peer sends `haves_len` bytes of Haves for logs the receiver lacks and never reads the
/// Wants that answer them; the peak RSS above the start and how the replication ended.
fn have_flood(haves_len: usize) -> (Option<usize>, Result<swarm::Summary, ReplicateError>) {
    let mut input = Message::Handshake(Handshake::new()).to_frame();
    let mut i = 0u64;
    while input.len() < haves_len {
        // 25 characters, as a hyperlog (cuid) log id.
        Message::Have(LogSeq::new(format!("c{i:024}"), 1)).encode_frame(&mut input);
        i += 1;
    }
    let log = Log::memory_with_id("B", LogOptions::default()).expect("log");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = reset_peak();
    let result = rt.block_on(async {
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let task = {
            let log = log.clone();
            tokio::spawn(async move { replicate(&log, theirs, ReplicateOptions::default()).await })
        };
        // Never read: write everything (or until the replication gives up on us).
        for chunk in input.chunks(64 * 1024) {
            if ours.write_all(chunk).await.is_err() {
                break;
            }
        }
        // Give it the time to take in what is buffered, then leave.
        let ended = tokio::time::timeout(Duration::from_millis(500), async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let _ = ended;
        let peak = peak();
        drop(ours);
        (peak, task.await.expect("replication task"))
    });
    let (peak, result) = result;
    (peak.and_then(|p| Some(p.saturating_sub(start?))), result)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

#[test]
fn peak_memory_of_large_and_hostile_input() {
    let value_mb = env_mb("LOG_MEMORY_VALUE_MB", 50);
    let haves_mb = env_mb("LOG_MEMORY_HAVES_MB", 55);
    let value_len = value_mb * MIB;

    // Item 11: a large node is received with at most one copy beyond the frame it arrived in.
    let memory = Log::memory_with_id("B", LogOptions::default()).expect("log");
    let in_memory = receive_large_node(&memory, value_len);
    drop(memory);
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = Log::open(dir.path().join("b.redb"), LogOptions::default()).expect("log");
    let on_redb = receive_large_node(&durable, value_len);
    drop(durable);

    // Item 9: a Have flood from a peer that never reads ends at the send queue's bound.
    let (flood, result) = have_flood(haves_mb * MIB);

    let show = |p: Option<usize>| p.map_or_else(|| "not measurable here".to_string(), mib);
    eprintln!(
        "figure: receive a {value_mb} MiB value, memory store: peak RSS +{}",
        show(in_memory)
    );
    eprintln!(
        "figure: receive a {value_mb} MiB value, redb store: peak RSS +{}",
        show(on_redb)
    );
    eprintln!(
        "figure: {haves_mb} MiB of Haves from a peer that never reads: peak RSS +{}, ended with {:?}",
        show(flood),
        result.as_ref().map(|s| s.progress).map_err(ToString::to_string)
    );

    // The frame (one value) plus one copy, with 25% for the rest (allocator, buffers).
    let bound = value_len * 5 / 2;
    if let Some(p) = in_memory {
        assert!(
            p <= bound,
            "memory store: peak +{} > {}",
            mib(p),
            mib(bound)
        );
    }
    if let Some(p) = on_redb {
        assert!(p <= bound, "redb store: peak +{} > {}", mib(p), mib(bound));
    }
    assert!(
        matches!(result, Err(ReplicateError::SendQueueFull { .. })),
        "{result:?}"
    );
    if let Some(p) = flood {
        let limit = swarm::log::replicate::DEFAULT_MAX_SEND_QUEUE_BYTES;
        assert!(p <= 2 * limit + 16 * MIB, "Have flood: peak +{}", mib(p));
    }
}
