//! Runs one replication session of an in-memory log against a scripted remote: the remote's end
//! of a `tokio::io::duplex` writes the given bytes (in chunks), then ends its side, and reads and
//! discards everything the local side sends. The session must end on its own, well within
//! [`DEADLINE`], in success or with an error, never by panicking; what it stored must be sound.
//! Shared by the `replicate` and `replicate_messages` targets.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Duration;

use swarm::{replicate, Keypair, Log, LogOptions, Mode, ReplicateOptions, Verifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a session fed a finite input may take before the target reports a hang.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The local log's writer.
pub fn local_keypair() -> &'static Keypair {
    static KEYPAIR: OnceLock<Keypair> = OnceLock::new();
    KEYPAIR.get_or_init(|| Keypair::from_seed(&[1; 32]))
}

/// The remote writer the local log trusts when it verifies.
pub fn remote_keypair() -> &'static Keypair {
    static KEYPAIR: OnceLock<Keypair> = OnceLock::new();
    KEYPAIR.get_or_init(|| Keypair::from_seed(&[2; 32]))
}

/// The local log's id.
pub const LOCAL_LOG: &str = "local";

/// How the local side is set up, decided by the input.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub mode: Option<Mode>,
    pub live: Option<bool>,
    /// Whether the local log verifies remote nodes (trusting [`remote_keypair`]).
    pub verify: bool,
    /// Nodes appended locally before the session (0..=3), so that there are Haves to send and
    /// Wants to serve.
    pub local_nodes: u8,
    /// The size of the remote's writes (1..=256 bytes, or all at once when 0).
    pub chunk: u16,
    /// A small frame limit instead of the default.
    pub small_frames: bool,
}

impl Setup {
    /// A setup from two bytes of input.
    pub fn from_bytes(a: u8, b: u8) -> Setup {
        Setup {
            mode: match a & 3 {
                0 => None,
                1 => Some(Mode::Sync),
                2 => Some(Mode::Push),
                _ => Some(Mode::Pull),
            },
            live: match (a >> 2) & 3 {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            },
            verify: a & 0x10 != 0,
            local_nodes: (a >> 5) & 3,
            chunk: u16::from(b & 0x7f) * 2,
            small_frames: b & 0x80 != 0,
        }
    }
}

/// The nodes appended locally before a session, made once (their keys are what a scripted remote
/// can link to).
pub fn local_log(setup: &Setup) -> Log {
    let options = LogOptions {
        keypair: Some(local_keypair().clone()),
        verifier: setup
            .verify
            .then(|| Verifier::for_keypair(remote_keypair())),
    };
    let log = Log::memory_with_id(LOCAL_LOG, options).expect("an in-memory log");
    for i in 0..setup.local_nodes {
        log.append(vec![b'a' + i]).expect("a local append");
    }
    log
}

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
    );
}

/// Runs the session and checks what the log holds afterwards.
pub fn run(setup: Setup, remote_bytes: &[u8]) {
    let log = local_log(&setup);
    let mut options = ReplicateOptions {
        mode: setup.mode,
        live: setup.live,
        metadata: Some(b"fuzz".to_vec()),
        ..ReplicateOptions::default()
    };
    if setup.small_frames {
        options.max_frame_size = 512;
        options.max_pending = 4;
        options.max_pending_bytes = 1024;
    }
    let chunk = match setup.chunk {
        0 => remote_bytes.len().max(1),
        n => usize::from(n),
    };
    RUNTIME.with(|runtime| {
        runtime.borrow().block_on(async {
            let (local, remote) = tokio::io::duplex(16 * 1024);
            let (mut remote_rd, mut remote_wr) = tokio::io::split(remote);
            let session = replicate(&log, local, options);
            let write = async move {
                for piece in remote_bytes.chunks(chunk) {
                    if remote_wr.write_all(piece).await.is_err() {
                        return;
                    }
                }
                let _ = remote_wr.shutdown().await;
            };
            let read = async move {
                let mut sink = vec![0; 16 * 1024];
                while let Ok(n) = remote_rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let all = async { tokio::join!(session, write, read).0 };
            match tokio::time::timeout(DEADLINE, all).await {
                Ok(_result) => {}
                Err(_) => panic!(
                    "the replication did not end within {DEADLINE:?} of a remote that wrote {} \
                     bytes and ended its side ({setup:?})",
                    remote_bytes.len()
                ),
            }
        })
    });
    check(&log, &setup);
}

/// Everything stored has the key of its content, is in its log at its seq, and (when the log
/// verifies) every remote node carries a signature of the trusted remote writer.
fn check(log: &Log, setup: &Setup) {
    for node in log.changes_since(0) {
        let node = node.expect("a stored node reads back");
        node.check_key()
            .expect("a stored node has the key of its content");
        if setup.verify && node.log != LOCAL_LOG {
            assert_eq!(
                node.identity.as_deref(),
                Some(&remote_keypair().public_key()[..]),
                "an unverified remote node was stored"
            );
        }
        if node.seq > 0 {
            let entry = log.entry(&node.log, node.seq).expect("an entry reads back");
            assert!(entry.is_some(), "node {} is not at its seq", node.key);
        }
    }
}
