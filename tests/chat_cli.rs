//! The `chat` example as users script it (plain-line mode: stdin not a terminal): two chat
//! processes in one room through a real hub exchange lines both ways over WebRTC, a third that
//! joins later receives the earlier history, and with `--data` a restarted chat still has it.
//! Off a terminal, stderr has notices but no colour codes and none of the WebRTC engine's
//! routine warnings; `/me`, `//text` and `/part` + `/join` print as they should, each line once.
//!
//! Also through a hub cluster (two chats on different nodes of one Redis), and through a private
//! hub with a token-bearing hub URL.
//!
//! The example's executable is the one `cargo test` builds next to the test binaries.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use signalhub::{Hub, HubConfig, RunningHub};

mod support;
use support::{collect_stderr, example, signalhub_binary, stdout_lines};
#[path = "../signalhub/tests/support/cluster.rs"]
mod cluster;

/// How long one line may take to show up (a WebRTC handshake plus a replication round).
const STEP: Duration = Duration::from_secs(45);

async fn start_hub() -> RunningHub {
    let config = HubConfig {
        quiet: true,
        ..HubConfig::default()
    };
    Hub::bind("127.0.0.1:0", config)
        .await
        .expect("bind a hub")
        .spawn()
        .expect("serve the hub")
}

/// A chat process in plain-line mode.
struct ChatProcess {
    nick: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ChatProcess {
    fn start(hub: &str, nick: &str, room: &str, data: Option<&Path>) -> ChatProcess {
        let mut command = Command::new(example("chat"));
        command
            .args([room, "--hub", hub, "--nick", nick, "--udp", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(data) = data {
            command.arg("--data").arg(data);
        }
        let mut child = command.spawn().expect("run the chat example");
        let lines = stdout_lines(&mut child);
        ChatProcess {
            nick: nick.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn say(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{text}").expect("write to chat");
        stdin.flush().expect("flush");
    }

    /// Waits for `<who> text` (after an `HH:MM:SS` time) on stdout.
    fn expect_line(&mut self, who: &str, text: &str) {
        let wanted = format!(" <{who}> {text}");
        let is_it = |line: &str| {
            line.len() == 8 + wanted.len()
                && line.ends_with(&wanted)
                && line[..8].bytes().enumerate().all(|(i, b)| {
                    if i == 2 || i == 5 {
                        b == b':'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        };
        if self.seen.iter().any(|l| is_it(l)) {
            return;
        }
        let deadline = Instant::now() + STEP;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = is_it(&line);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "{} never printed `HH:MM:SS <{who}> {text}`; it printed: {:#?}",
            self.nick, self.seen
        );
    }

    /// Waits for `HH:MM:SS * who action` (a `/me`) on stdout.
    fn expect_action(&mut self, who: &str, action: &str) {
        let wanted = format!(" * {who} {action}");
        let deadline = Instant::now() + STEP;
        while !self
            .seen
            .iter()
            .any(|l| l.len() == 8 + wanted.len() && l.ends_with(&wanted))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "{} never printed `HH:MM:SS * {who} {action}`; it printed: {:#?}",
                    self.nick, self.seen
                ),
            }
        }
    }

    fn quit(mut self) {
        self.say("/quit");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{} exited with {status}", self.nick);
                return;
            }
            assert!(Instant::now() < deadline, "{} did not quit", self.nick);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChatProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_talk_and_a_late_joiner_gets_the_history() {
    let hub = start_hub().await;
    let url = hub.url().to_string();
    let room = "#rust-test";
    let (alice, bob) = tokio::task::spawn_blocking(move || {
        let mut alice = ChatProcess::start(&url, "alice", room, None);
        let mut bob = ChatProcess::start(&url, "bob", room, None);
        alice.say("hello from alice");
        alice.expect_line("alice", "hello from alice");
        bob.expect_line("alice", "hello from alice");
        bob.say("hi alice, ünïcödé \"quoted\"");
        alice.expect_line("bob", "hi alice, ünïcödé \"quoted\"");

        // Carol comes later and gets both lines from the others' logs.
        let mut carol = ChatProcess::start(&url, "carol", room, None);
        carol.expect_line("alice", "hello from alice");
        carol.expect_line("bob", "hi alice, ünïcödé \"quoted\"");
        carol.say("/nick caroline");
        carol.say("late but here");
        alice.expect_line("caroline", "late but here");
        bob.expect_line("caroline", "late but here");
        carol.quit();
        (alice, bob)
    })
    .await
    .unwrap();
    alice.quit();
    bob.quit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_data_the_history_survives_a_restart() {
    let hub = start_hub().await;
    let url = hub.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut dave = ChatProcess::start(&url, "dave", "#kept", Some(&data));
        dave.say("written to disk");
        dave.expect_line("dave", "written to disk");
        dave.quit();
        // Alone again, with no peer to learn from: the line comes from the disk.
        let mut again = ChatProcess::start(&url, "dave", "#kept", Some(&data));
        again.expect_line("dave", "written to disk");
        // And a newcomer without --data gets it from the restarted chat.
        let mut erin = ChatProcess::start(&url, "erin", "#kept", None);
        erin.expect_line("dave", "written to disk");
        erin.quit();
        again.quit();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_chatwizard_rooms() {
    // chatwizard's app for a room is the hex SHA-1 of "chatwizard." + room (values from the spec).
    let hub = start_hub().await;
    let url = hub.url().to_string();
    tokio::task::spawn_blocking(move || {
        for (room, app) in [
            (
                "#nodeconflondon",
                "a6c44484daaf399ebe248a572bd47a8049c55bc6",
            ),
            ("lobby", "6d9f316aaca909a094b952c298c283fda14189db"), // `#` is added
        ] {
            let mut child = Command::new(example("chat"))
                .args([room, "--hub", &url, "--udp", "127.0.0.1:0"])
                .env_remove("RUST_LOG")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run the chat example");
            let stderr = BufReader::new(child.stderr.take().expect("piped"));
            let mut joined = None;
            for line in stderr.lines() {
                let line = line.expect("stderr");
                if line.contains("joined ") {
                    joined = Some(line);
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            let joined = joined.expect("a `joined` status line");
            assert!(
                joined.contains(&format!("(signalhub app {app})")),
                "{room}: {joined}"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mode_has_no_escape_codes_or_engine_warnings() {
    let hub = start_hub().await;
    let url = hub.url().to_string();
    tokio::task::spawn_blocking(move || {
        let room = "#plain";
        let start = |nick: &str| {
            let mut child = Command::new(example("chat"))
                .args([room, "--hub", &url, "--nick", nick, "--udp", "127.0.0.1:0"])
                // The default filter, as a user gets it.
                .env_remove("RUST_LOG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run the chat example");
            let stderr = collect_stderr(&mut child);
            let lines = stdout_lines(&mut child);
            let process = ChatProcess {
                nick: nick.to_string(),
                stdin: child.stdin.take(),
                child,
                lines,
                seen: Vec::new(),
            };
            (process, stderr)
        };
        let (mut ann, ann_err) = start("ann");
        let (mut ben, ben_err) = start("ben");
        ann.say("over WebRTC");
        ben.expect_line("ann", "over WebRTC");
        ben.say("/me nods");
        ann.expect_action("ben", "nods");
        ann.say("//slash at the start");
        ben.expect_line("ann", "/slash at the start");
        // Part and join again: the history comes again from ann, and is not printed again.
        ben.say("/part");
        ben.say("/join #plain");
        ann.say("after the re-join");
        ben.expect_line("ann", "after the re-join");
        let over = ben
            .seen
            .iter()
            .filter(|l| l.ends_with(" <ann> over WebRTC"))
            .count();
        assert_eq!(over, 1, "printed once: {:#?}", ben.seen);
        ann.quit();
        ben.quit();
        for (nick, stderr) in [("ann", ann_err), ("ben", ben_err)] {
            let stderr = stderr.lock().unwrap().clone();
            assert!(
                stderr.contains("-!- #plain: peer ") && stderr.contains(" joined (1 peer)"),
                "{nick}'s stderr has the peer's notice: {stderr}"
            );
            assert!(
                !stderr.contains('\x1b'),
                "{nick}'s stderr has escape codes: {stderr:?}"
            );
            for routine in [
                "Unsupported Extension Type",
                "pingAllCandidates called with no candidate pairs",
                "conn.remote_addr is empty",
                " WARN ",
            ] {
                assert!(
                    !stderr.contains(routine),
                    "{nick}'s stderr has {routine:?}: {stderr}"
                );
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_on_different_nodes_of_a_cluster_talk() {
    let redis = cluster::RedisServer::start();
    let binary = signalhub_binary();
    let nodes = [
        cluster::Node::start(&binary, &redis),
        cluster::Node::start(&binary, &redis),
    ];
    let (first, second) = (nodes[0].url(), nodes[1].url());
    tokio::task::spawn_blocking(move || {
        let mut alice = ChatProcess::start(&first, "alice", "#cluster", None);
        let mut bob = ChatProcess::start(&second, "bob", "#cluster", None);
        alice.say("hello from node one");
        bob.expect_line("alice", "hello from node one");
        bob.say("and back from node two");
        alice.expect_line("bob", "and back from node two");
        alice.quit();
        bob.quit();
    })
    .await
    .expect("the chats talked across nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_talk_through_a_private_hub_with_a_token_in_the_hub_url() {
    let (secret, public) = signalhub::generate_token_keys();
    let secret = signalhub::parse_signing_key(&secret).expect("a key");
    let hub = Hub::bind(
        "127.0.0.1:0",
        HubConfig {
            quiet: true,
            access: signalhub::Access {
                token_keys: vec![signalhub::parse_verifying_key(&public).expect("a key")],
                ..signalhub::Access::default()
            },
            ..HubConfig::default()
        },
    )
    .await
    .expect("bind a hub")
    .spawn()
    .expect("serve the hub");
    // The chat's app (chatwizard's rooms): any app, for an hour.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 3600;
    let token = signalhub::mint_token(&secret, "*", exp);
    let url = format!("{}/t/{token}", hub.url());
    tokio::task::spawn_blocking(move || {
        let mut alice = ChatProcess::start(&url, "alice", "#private", None);
        let mut bob = ChatProcess::start(&url, "bob", "#private", None);
        alice.say("only with a token");
        bob.expect_line("alice", "only with a token");
        alice.quit();
        bob.quit();
    })
    .await
    .expect("the chats talked through the private hub");
    assert_eq!(
        hub.metrics().rejected(signalhub::Rejection::TokenMissing),
        0
    );
    hub.shutdown().await.expect("clean shutdown");
}
