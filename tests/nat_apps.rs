//! The examples across NATs, in the test internet of network namespaces
//! (`tests/netlab/netlab.sh`, driven through `swarm/tests/support/netlab.rs`): the real hub and
//! coturn on the "internet" segment, each user in a home behind its own NAT router, every peer
//! taking its STUN/TURN servers from the hub (`GET /ice-servers`) by default.
//!
//! - `chat`: a terminal chat behind a cone NAT, one behind a symmetric NAT and the browser chat
//!   page (headless Chromium) behind a third NAT talk in one room; each sees the others' lines,
//!   and `/peers` shows the paths ICE chose: direct between the two cone homes, through the TURN
//!   relay to and from the symmetric one.
//! - `feed`: a follower behind a symmetric NAT follows a publisher behind a cone NAT.
//!
//! Needs root, iproute2, nftables and coturn, Node with `npm ci --prefix js` and Chromium; a
//! missing one fails with the command that installs it. The example binaries and the hub are the
//! ones `cargo test` builds next to this test.

use std::path::Path;
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;
use support::{example, js_dir};
#[path = "../swarm/tests/support/netlab.rs"]
mod netlab;
use netlab::{hub_ice_flags, Lab, Line, HUB_PORT, INET};

/// How long one line may take to show up (a WebRTC handshake through the relay, a replication
/// round, and Chromium's start).
const STEP: Duration = Duration::from_secs(90);

/// One lab at a time: timings (and the 2 cores) are not shared with another test's WebRTC.
static LAB_LOCK: Mutex<()> = Mutex::new(());

fn hub_url() -> String {
    format!("http://{INET}:{HUB_PORT}")
}

/// Starts the hub with the lab's STUN/TURN servers (and `extra` flags) and coturn.
fn lab_with_hub(homes: &[(&str, &str)], extra: &[String]) -> Lab {
    let mut lab = Lab::up(homes);
    lab.start_coturn();
    let mut flags = hub_ice_flags(&["udp"], 3600);
    flags.extend(extra.iter().cloned());
    lab.start_hub(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    lab
}

/// Waits for a stdout line that `wanted` accepts, keeping every line seen in `seen`.
fn wait_line(
    lab: &Lab,
    lines: &mpsc::Receiver<Line>,
    seen: &mut Vec<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    if let Some(line) = seen.iter().find(|l| wanted(l)) {
        return line.clone();
    }
    let deadline = Instant::now() + STEP;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        seen.push(line.text.clone());
        if wanted(&line.text) {
            return line.text;
        }
    }
    panic!(
        "no {what} within {STEP:?}; stdout was:\n{}\n{}",
        seen.join("\n"),
        lab.logs()
    );
}

/// A terminal chat (plain-line mode: stdin is a pipe) in a home.
struct Chat {
    nick: &'static str,
    index: usize,
    lines: mpsc::Receiver<Line>,
    seen: Vec<String>,
}

impl Chat {
    fn start(lab: &mut Lab, home: &str, nick: &'static str, room: &str) -> Chat {
        let ns = lab.home_ns(home);
        let hub = hub_url();
        let args: Vec<String> = [room, "--hub", &hub, "--nick", nick]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (index, lines) = lab.spawn(&format!("chat-{nick}"), &ns, &example("chat"), &args, &[]);
        Chat {
            nick,
            index,
            lines,
            seen: Vec::new(),
        }
    }

    fn say(&mut self, lab: &mut Lab, text: &str) {
        lab.write_line(self.index, text);
    }

    /// `/peers` until it lists `count` peers: their lines (`-!-   ID (we offered): PATH`).
    fn paths(&mut self, lab: &mut Lab, count: usize) -> Vec<String> {
        let deadline = Instant::now() + STEP;
        loop {
            self.say(lab, "/peers");
            std::thread::sleep(Duration::from_millis(500));
            let log = lab.log_of(self.index);
            let lines: Vec<&str> = log.lines().collect();
            if let Some(at) = lines
                .iter()
                .rposition(|l| l.starts_with("-!- ") && l.ends_with(" connected:"))
            {
                let block: Vec<String> = lines[at + 1..]
                    .iter()
                    .take_while(|l| l.starts_with("-!-   "))
                    .map(|l| l.to_string())
                    .collect();
                if block.len() >= count {
                    return block;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never listed {count} peers:\n{}",
                self.nick,
                lab.logs()
            );
        }
    }

    /// Waits for `HH:MM:SS <who> text`.
    fn expect_line(&mut self, lab: &Lab, who: &str, text: &str) {
        let wanted = format!(" <{who}> {text}");
        let what = format!("`<{who}> {text}` at {}", self.nick);
        wait_line(lab, &self.lines, &mut self.seen, &what, |line| {
            line.len() == 8 + wanted.len() && line.ends_with(&wanted)
        });
    }
}

/// The browser chat page, served by the hub, in headless Chromium in a home
/// (`js/chat-browser.mjs`).
struct Page {
    index: usize,
    lines: mpsc::Receiver<Line>,
    seen: Vec<String>,
}

impl Page {
    fn open(lab: &mut Lab, home: &str, nick: &str, room: &str) -> Page {
        for file in [
            "node_modules/playwright-core/package.json",
            "dist/chat/chat.js",
        ] {
            assert!(
                js_dir().join(file).is_file(),
                "js/{file} is missing: run `npm ci --prefix js` in the workspace root"
            );
        }
        assert!(
            Path::new("/usr/bin/chromium").is_file(),
            "/usr/bin/chromium is missing: apt-get install chromium"
        );
        let ns = lab.home_ns(home);
        let config = json!({"url": format!("{}/{room}", hub_url()), "nick": nick});
        let args = [
            js_dir()
                .join("chat-browser.mjs")
                .to_string_lossy()
                .into_owned(),
            config.to_string(),
        ];
        let (index, lines) = lab.spawn(
            &format!("chromium-{nick}"),
            &ns,
            Path::new("node"),
            &args,
            &[],
        );
        Page {
            index,
            lines,
            seen: Vec::new(),
        }
    }

    fn event(&mut self, lab: &Lab, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let line = wait_line(lab, &self.lines, &mut self.seen, what, |line| {
            let value: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            assert_ne!(value["event"], "fatal", "the page: {line}\n{}", lab.logs());
            wanted(&value)
        });
        serde_json::from_str(&line).unwrap_or(Value::Null)
    }

    fn expect_line(&mut self, lab: &Lab, who: &str, message: &str) {
        self.event(lab, &format!("`<{who}> {message}` in the page"), |v| {
            v["event"] == "line" && v["who"] == who && v["message"] == message
        });
    }

    fn say(&mut self, lab: &mut Lab, text: &str) {
        lab.send_line(self.index, &json!({"cmd": "say", "text": text}));
        self.event(lab, "the page's reply to say", |v| v["reply"] == "say");
    }
}

#[test]
fn chat_between_cone_and_symmetric_homes_and_a_browser_page() {
    let _one = LAB_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let web = js_dir().join("dist/chat").to_string_lossy().into_owned();
    let mut lab = lab_with_hub(
        &[("c", "cone"), ("s", "symmetric"), ("w", "cone")],
        &["--web".to_string(), web],
    );
    let room = "#natlab";
    let mut alice = Chat::start(&mut lab, "c", "alice", room);
    let mut bob = Chat::start(&mut lab, "s", "bob", room);
    let mut page = Page::open(&mut lab, "w", "carol", room);
    page.event(&lab, "the page ready", |v| v["event"] == "ready");

    alice.say(&mut lab, "from behind a cone NAT");
    bob.say(&mut lab, "from behind a symmetric NAT");
    page.say(&mut lab, "from a browser behind a cone NAT");
    for chat in [&mut alice, &mut bob] {
        chat.expect_line(&lab, "alice", "from behind a cone NAT");
        chat.expect_line(&lab, "bob", "from behind a symmetric NAT");
        chat.expect_line(&lab, "carol", "from a browser behind a cone NAT");
    }
    page.expect_line(&lab, "alice", "from behind a cone NAT");
    page.expect_line(&lab, "bob", "from behind a symmetric NAT");

    // The paths: alice (cone) reaches carol (cone) directly, and bob (symmetric) through the
    // relay; bob reaches both through the relay.
    let paths = alice.paths(&mut lab, 2);
    println!("alice (cone) /peers:\n{}", paths.join("\n"));
    let relayed = paths
        .iter()
        .filter(|l| l.contains("relayed by TURN"))
        .count();
    let direct: Vec<_> = paths.iter().filter(|l| l.contains(", direct")).collect();
    assert_eq!(
        (relayed, direct.len()),
        (1, 1),
        "alice: one relayed path (to bob) and one direct (to carol):\n{}",
        paths.join("\n")
    );
    assert!(
        direct[0].contains("srflx") || direct[0].contains("prflx"),
        "the direct path crosses both NATs through their mappings: {}",
        direct[0]
    );
    assert!(
        paths
            .iter()
            .all(|l| !l.contains("our NAT maps per destination")),
        "alice's cone NAT keeps one mapping a socket (two STUN servers saw one address):\n{}",
        paths.join("\n")
    );
    let paths = bob.paths(&mut lab, 2);
    println!("bob (symmetric) /peers:\n{}", paths.join("\n"));
    assert!(
        paths.iter().all(|l| l.contains("relayed by TURN")),
        "bob is behind a symmetric NAT: every path relayed:\n{}",
        paths.join("\n")
    );
    assert!(
        paths
            .iter()
            .all(|l| l.contains("our NAT maps per destination")),
        "bob's symmetric NAT gave the two STUN servers two addresses, and his paths say so:\n{}",
        paths.join("\n")
    );
    lab.send_line(page.index, &json!({"cmd": "close"}));
    page.event(&lab, "the page closed", |v| v["event"] == "closed");
}

#[test]
fn a_feed_is_followed_across_a_symmetric_nat() {
    let _one = LAB_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let mut lab = lab_with_hub(&[("c", "cone"), ("s", "symmetric")], &[]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let keys = dir.path().join("keys.json");
    let out = std::process::Command::new(example("feed"))
        .args(["keygen", "--keys"])
        .arg(&keys)
        .output()
        .expect("run feed keygen");
    assert!(out.status.success(), "feed keygen: {out:?}");
    let public_key = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("PUBLIC KEY: ")
        .expect("feed keygen prints the public key")
        .to_string();

    let hub = hub_url();
    let keys = keys.to_string_lossy().into_owned();
    let ns = lab.home_ns("c");
    let args: Vec<String> = ["publish", "--keys", &keys, "--hub", &hub]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (publisher, published) = lab.spawn("feed-publish", &ns, &example("feed"), &args, &[]);
    let entries = ["across a symmetric NAT", "through the relay", "ünïcödé ✓"];
    for entry in entries {
        lab.write_line(publisher, entry);
    }
    for entry in entries {
        let what = format!("the key of {entry:?}");
        wait_line(&lab, &published, &mut Vec::new(), &what, |l| l.len() == 64);
    }

    let ns = lab.home_ns("s");
    let args: Vec<String> = ["subscribe", &public_key, "--hub", &hub]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (subscriber, followed) = lab.spawn("feed-subscribe", &ns, &example("feed"), &args, &[]);
    let mut seen = Vec::new();
    for entry in entries {
        wait_line(
            &lab,
            &followed,
            &mut seen,
            &format!("entry {entry:?}"),
            |l| l == entry,
        );
    }
    assert_eq!(
        seen, entries,
        "the follower prints the entries, in order, and nothing else"
    );
    // The lab's coturn refuses to relay to the homes' private addresses, and webrtc-rs asks
    // again on every check (~150 times a peer); the feed shows the engine's error once.
    for (name, index) in [("publisher", publisher), ("subscriber", subscriber)] {
        let log = lab.log_of(index);
        let count = log.matches("TURN permission request failed").count();
        assert!(
            count <= 1,
            "the {name} logged {count} refused permissions:\n{}",
            netlab::tail(&log, 10)
        );
    }
}
