//! A log written by an earlier version opens in this one: `fixtures/log-format-1.redb.gz` is a
//! database of the first store format (nodes keyed by node key), made by the code of that
//! format: a signed local log of three nodes (one single append, one batch of two), two signed
//! nodes received from another log, a dedup entry, and the chat view folded over all of it.
//!
//! Opening it converts it to the current format; every node, entry, head, the change counter,
//! the local id and the view's rows must come through, and the log must go on working.

use std::path::{Path, PathBuf};
use std::process::Command;

use swarm::{ChatMessages, Key, Keypair, Log, LogOptions, Verifier, View};

/// `change log seq key value` of every node of the fixture, in change order, as the first
/// format's code listed them.
const NODES: [(u64, &str, u64, &str, &str); 5] = [
    (
        1,
        LOCAL_ID,
        1,
        "b6ca9626640ca00f94932461a01fa14ea4a93e82c1c3180b383d92f8699765d3",
        r#"{"time":2,"who":"ann","message":"hello"}"#,
    ),
    (
        2,
        LOCAL_ID,
        2,
        "7b0e6e447d94c1dc55acc855e9ee1c5b44ed9a71055cc5fa0653c3d07d6b428e",
        "plain",
    ),
    (
        3,
        LOCAL_ID,
        3,
        "554570ff0240b44c854039e8d3254cb219f26b14ff8ecb851e806f1b6d60b29a",
        "second",
    ),
    (
        4,
        "peer-log",
        1,
        "5393735301678638d1840340c5ec8356a705d35fa04217f8c2b5a2b75a1cbfdb",
        r#"{"time":3,"who":"bob","message":"hi from bob"}"#,
    ),
    (
        5,
        "peer-log",
        2,
        "803c291a5708883ab4c1d107fcadd9481aa1c29f2c4c74bc1d797062fd9a36b2",
        r#"{"time":1,"who":"bob","message":"first"}"#,
    ),
];
const LOCAL_ID: &str = "cmwu6bzx7lo80t3x78q512rgk";
const LOCAL_SEED: [u8; 32] = [7; 32];
const PEER_SEED: [u8; 32] = [8; 32];

/// Unpacks the fixture into `dir` (with Debian's `gzip`, which every machine here has).
fn unpack_fixture(dir: &Path) -> PathBuf {
    let packed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-format-1.redb.gz");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&packed)
        .output()
        .expect("gzip runs (apt-get install gzip)");
    assert!(out.status.success(), "gzip -dc {}", packed.display());
    let path = dir.join("log.redb");
    std::fs::write(&path, out.stdout).expect("write the unpacked fixture");
    path
}

fn key(hex: &str) -> Key {
    Key::parse(hex).expect("fixture key")
}

fn options() -> LogOptions {
    LogOptions {
        keypair: Some(Keypair::from_seed(&LOCAL_SEED)),
        verifier: None,
    }
}

/// Everything the first format held, read through the current one.
fn assert_fixture_contents(log: &Log) {
    assert_eq!(log.id(), LOCAL_ID);
    assert!(log.changes() >= 5);
    let local = Verifier::for_keypair(&Keypair::from_seed(&LOCAL_SEED));
    let peer = Verifier::for_keypair(&Keypair::from_seed(&PEER_SEED));
    for (change, log_id, seq, hex, value) in NODES {
        let node = log
            .at_change(change)
            .expect("read")
            .expect("node at change");
        assert_eq!(node.key, key(hex), "change {change}");
        assert_eq!((node.log.as_str(), node.seq), (log_id, seq));
        assert_eq!(node.value, value.as_bytes());
        assert_eq!(log.get(&key(hex)).expect("read"), Some(node.clone()));
        let verifier = if log_id == LOCAL_ID { &local } else { &peer };
        verifier
            .verify_node(&node)
            .expect("signatures survive the conversion");
    }
    // The dedup: peer-log's first node, filed again as the local log's 4th entry.
    let dedup = log.entry(LOCAL_ID, 4).expect("read").expect("dedup entry");
    assert_eq!(
        (dedup.key, dedup.change),
        (key(NODES[3].3), 4),
        "the dedup entry points at the first copy"
    );
    assert_eq!(log.log_head("peer-log").expect("read"), 2);
}

#[test]
fn a_format_1_log_is_converted_on_open_and_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = unpack_fixture(dir.path());
    {
        let log = Log::open(&path, options()).expect("a format 1 database opens");
        assert_fixture_contents(&log);
        assert_eq!(log.changes(), 5);
        assert_eq!(log.log_head(LOCAL_ID).expect("read"), 4);
        assert_eq!(
            log.head_keys().expect("heads"),
            vec![key(NODES[2].3), key(NODES[4].3)],
            "the fixture's two heads"
        );
        // The view kept its rows and its place: nothing new to fold.
        let mut view = View::open(&log, ChatMessages).expect("view");
        assert_eq!(view.change(), 5);
        assert_eq!(view.catch_up().expect("catch up"), 0);
        let texts: Vec<String> = ChatMessages::read(&view)
            .expect("rows")
            .into_iter()
            .map(|m| m.message)
            .collect();
        assert_eq!(texts, ["first", "hello", "hi from bob"]);
        // And it goes on: an append links both heads and is signed.
        let node = log
            .append(b"after the conversion".to_vec())
            .expect("append");
        assert_eq!(node.change, 6);
        assert_eq!(node.seq, 5);
        assert_eq!(node.links, vec![key(NODES[2].3), key(NODES[4].3)]);
        Verifier::for_keypair(&Keypair::from_seed(&LOCAL_SEED))
            .verify_node(&node)
            .expect("signed");
    }
    // Reopening finds the current format: no second conversion, nothing lost.
    let log = Log::open(&path, options()).expect("reopen");
    assert_fixture_contents(&log);
    assert_eq!(log.changes(), 6);
    let last = log.at_change(6).expect("read").expect("node 6");
    assert_eq!(last.value, b"after the conversion");
    assert_eq!(log.heads().expect("heads"), vec![last]);
}
