//! A replication session fed well-formed frames in a fuzzer-chosen order: handshakes with any
//! mode and live flag, Haves and Wants of any log and seq, nodes with correct (or corrupted)
//! keys, links to earlier nodes and to the local log's, signed by the trusted remote or not,
//! SentHeads, SentWants, unknown types and raw bytes. Raw bytes rarely get past the frame and key
//! checks; this target reaches the session logic behind them (Want service, the retry queue,
//! live mode, the end of a session). Same checks as `replicate`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use swarm::{Handshake, Key, LogSeq, Message, Node};

#[path = "replication_driver.rs"]
mod driver;

#[derive(Debug, Arbitrary)]
struct Script {
    setup: [u8; 2],
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum LogName {
    Local,
    RemoteA,
    RemoteB,
    Empty,
    Other(String),
}

impl LogName {
    fn id(&self) -> String {
        match self {
            LogName::Local => driver::LOCAL_LOG.to_string(),
            LogName::RemoteA => "remote-a".to_string(),
            LogName::RemoteB => "remote-b".to_string(),
            LogName::Empty => String::new(),
            LogName::Other(name) => name.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    Handshake {
        version: u8,
        mode: Option<u8>,
        metadata: Option<Vec<u8>>,
        live: Option<bool>,
    },
    Have {
        log: LogName,
        seq: u16,
    },
    Want {
        log: LogName,
        seq: u16,
    },
    Node {
        log: LogName,
        /// `None`: the next seq of that log among the nodes sent so far.
        seq: Option<u16>,
        /// Indices into the nodes known so far (the local log's, then those sent).
        links: Vec<u8>,
        value: Vec<u8>,
        signed: bool,
        corrupt_key: bool,
        change: u16,
    },
    SentHeads,
    SentWants,
    Unknown {
        type_byte: u8,
        payload: Vec<u8>,
    },
    /// Bytes written as they are (a broken frame, most likely).
    Raw(Vec<u8>),
}

fuzz_target!(|script: Script| {
    let setup = driver::Setup::from_bytes(script.setup[0], script.setup[1]);
    // The keys a node may link to: the local log's nodes first.
    let mut known: Vec<Key> = driver::local_log(&setup)
        .changes_since(0)
        .map(|node| node.expect("a local node").key)
        .collect();
    let mut seqs: Vec<(String, u64)> = Vec::new();
    let mut bytes = Vec::new();
    for step in script.steps {
        let message = match step {
            Step::Handshake {
                version,
                mode,
                metadata,
                live,
            } => Message::Handshake(Handshake {
                version: u64::from(version),
                mode: mode.map(|m| match m % 5 {
                    0 => "sync".to_string(),
                    1 => "push".to_string(),
                    2 => "pull".to_string(),
                    3 => String::new(),
                    _ => "both".to_string(),
                }),
                metadata,
                live,
            }),
            Step::Have { log, seq } => Message::Have(LogSeq::new(log.id(), u64::from(seq))),
            Step::Want { log, seq } => Message::Want(LogSeq::new(log.id(), u64::from(seq))),
            Step::Node {
                log,
                seq,
                links,
                value,
                signed,
                corrupt_key,
                change,
            } => {
                let log = log.id();
                let seq = match seq {
                    Some(seq) => u64::from(seq),
                    None => match seqs.iter_mut().find(|(l, _)| *l == log) {
                        Some((_, seq)) => {
                            *seq += 1;
                            *seq
                        }
                        None => {
                            seqs.push((log.clone(), 1));
                            1
                        }
                    },
                };
                let links = if known.is_empty() {
                    Vec::new()
                } else {
                    links
                        .iter()
                        .map(|&i| known[usize::from(i) % known.len()])
                        .collect()
                };
                let mut node = Node::new(links, value, log, seq, u64::from(change));
                if signed {
                    driver::remote_keypair().sign_node(&mut node);
                }
                known.push(node.key);
                let mut message = node.to_message();
                if corrupt_key {
                    message.key = Key::compute(&[], &message.key.clone().into_bytes()).to_hex();
                }
                Message::Node(message)
            }
            Step::SentHeads => Message::SentHeads,
            Step::SentWants => Message::SentWants,
            Step::Unknown { type_byte, payload } => Message::Unknown {
                type_byte: type_byte.max(6),
                payload,
            },
            Step::Raw(raw) => {
                bytes.extend_from_slice(&raw);
                continue;
            }
        };
        message.encode_frame(&mut bytes);
    }
    driver::run(setup, &bytes);
});
