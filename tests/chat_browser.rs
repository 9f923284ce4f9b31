//! The browser chat page (`js/browser/chat/`, bundled into `js/dist/chat/`) as users get it: a hub
//! started here with `web_root` serves it, headless Chromium opens it (`js/chat-browser.mjs`,
//! camera and microphone granted so that it offers loopback candidates), and
//!
//! - two pages in one room exchange lines both ways, and a page that joins after one of them has
//!   left gets every earlier line from the one still there;
//! - a page and the `chat` example (plain-line mode) exchange lines both ways, each showing the
//!   other's line exactly as it shows its own (`HH:MM:SS <nick> text`, UTC); `/me` both ways
//!   reads `HH:MM:SS * nick does x` on both; the page shows notices of the peer joining and
//!   leaving and of its nick change; after `/part` + `/join` the page shows each history line
//!   once; `/names` lists the nicks and `/clear` empties the window.
//!
//! Needs `node`, `js/node_modules` and the page bundle (`npm ci --prefix js`, which builds it) and
//! Chromium (`apt-get install chromium`); without them the tests fail, they do not skip.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalhub::{Hub, HubConfig, RunningHub};

mod support;
use support::{collect_stderr, example, js_dir, stdout_lines};

/// Chromium can take a while to start on a loaded machine.
const START: Duration = Duration::from_secs(120);
/// How long one line may take to show up (a WebRTC handshake plus a replication round).
const STEP: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

fn web_root() -> PathBuf {
    js_dir().join("dist/chat")
}

/// Fails (never skips) when Node, playwright-core, the page bundle or Chromium is missing, naming
/// the setup command.
fn require_browser_setup() {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "`node --version` failed ({other:?}): install Node.js 20, then run `npm ci --prefix js` in the workspace root"
        ),
    }
    let manifest = js_dir().join("node_modules/playwright-core/package.json");
    assert!(
        manifest.is_file(),
        "{} is missing: run `npm ci --prefix js` in the workspace root",
        manifest.display()
    );
    for file in ["index.html", "chat.js"] {
        let path = web_root().join(file);
        assert!(
            path.is_file(),
            "{} is missing: run `npm ci --prefix js` (or `npm run --prefix js build`) in the workspace root",
            path.display()
        );
    }
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: apt-get install chromium"
    );
}

async fn start_hub() -> RunningHub {
    let config = HubConfig {
        quiet: true,
        web_root: Some(web_root()),
        ..HubConfig::default()
    };
    Hub::bind("127.0.0.1:0", config)
        .await
        .expect("bind a hub")
        .spawn()
        .expect("serve the hub")
}

/// `HH:MM:SS <who> message`, the time being two-digit fields.
fn is_line(text: &str, who: &str, message: &str) -> bool {
    let wanted = format!(" <{who}> {message}");
    text.len() == 8 + wanted.len()
        && text.ends_with(&wanted)
        && text[..8].bytes().enumerate().all(|(i, b)| {
            if i == 2 || i == 5 {
                b == b':'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// One Chromium with the chat page, through `node js/chat-browser.mjs`.
struct Page {
    nick: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<String>,
    /// Events read but not yet asked for.
    backlog: VecDeque<Value>,
    /// Every event read, for failure messages.
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    /// Chromium's profile, removed here should the script be killed.
    profile: Option<PathBuf>,
    seq: u64,
}

impl Page {
    /// Opens `url` as `nick` and waits until the page runs.
    fn open(url: &str, nick: &str) -> Page {
        let config = json!({ "url": url, "nick": nick }).to_string();
        let mut child = Command::new("node")
            .arg(js_dir().join("chat-browser.mjs"))
            .arg(&config)
            .current_dir(js_dir())
            // The page shows UTC times then, as the Rust chat prints them.
            .env_remove("TZ")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run `node js/chat-browser.mjs`: {err}"));
        let events = stdout_lines(&mut child);
        let stderr = collect_stderr(&mut child);
        let mut page = Page {
            nick: nick.to_string(),
            stdin: child.stdin.take(),
            child,
            events,
            backlog: VecDeque::new(),
            seen: Vec::new(),
            stderr,
            profile: None,
            seq: 0,
        };
        let browser = page.wait_for("the browser event", START, |e| e["event"] == "browser");
        page.profile = browser["userDataDir"].as_str().map(PathBuf::from);
        let ready = page.wait_for("ready", START, |e| e["event"] == "ready");
        assert_eq!(ready["nick"], nick, "the page took the nick");
        page
    }

    fn diagnostics(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".to_string(),
            Err(err) => err.to_string(),
        };
        format!(
            "the page of {} ({status})\nevents so far:\n{}\nstderr:\n{}",
            self.nick,
            self.seen
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    fn send(&mut self, command: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        if let Err(err) = writeln!(stdin, "{command}").and_then(|()| stdin.flush()) {
            let diagnostics = self.diagnostics();
            panic!("cannot send {command} ({err}) to {diagnostics}");
        }
    }

    /// The first event (read before or now) that `matches`, waiting at most `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(at) = self.backlog.iter().position(&matches) {
            return self.backlog.remove(at).expect("in range");
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) => {
                    let event: Value = serde_json::from_str(&line).unwrap_or_else(|err| {
                        panic!("chat-browser.mjs wrote a line that is not JSON ({err}): {line}")
                    });
                    self.seen.push(event.clone());
                    if event["event"] == "fatal" {
                        let diagnostics = self.diagnostics();
                        panic!("fatal while waiting for {what}: {diagnostics}");
                    }
                    if matches(&event) {
                        return event;
                    }
                    self.backlog.push_back(event);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(500));
                    let diagnostics = self.diagnostics();
                    panic!("stdout ended while waiting for {what}: {diagnostics}");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let diagnostics = self.diagnostics();
                    panic!("waited {limit:?} for {what}: {diagnostics}");
                }
            }
        }
    }

    /// Sends a command and waits for its reply; fails on an error reply.
    fn request(&mut self, mut command: Value) -> Value {
        self.seq += 1;
        let seq = self.seq;
        command["seq"] = json!(seq);
        let name = command["cmd"].clone();
        self.send(command);
        let reply = self.wait_for(&format!("the reply to {name}"), STEP, |e| {
            e["reply"] == name && e["seq"] == seq
        });
        if let Some(error) = reply.get("error") {
            let diagnostics = self.diagnostics();
            panic!("{name} failed: {error}: {diagnostics}");
        }
        reply
    }

    fn say(&mut self, text: &str) {
        self.request(json!({"cmd": "say", "text": text}));
    }

    /// Waits until the page shows `HH:MM:SS <who> message`; the line event.
    fn expect_line(&mut self, who: &str, message: &str) -> Value {
        let line = self.wait_for(&format!("the line <{who}> {message}"), STEP, |e| {
            e["event"] == "line" && e["who"] == who && e["message"] == message
        });
        let text = line["text"].as_str().unwrap_or_default();
        assert!(
            is_line(text, who, message),
            "the page shows {text:?} for <{who}> {message}"
        );
        line
    }

    /// Waits until the page shows `HH:MM:SS * who action` (a `/me`).
    fn expect_action(&mut self, who: &str, action: &str) {
        let wanted = format!(" * {who} {action}");
        let line = self.wait_for(&format!("the action * {who} {action}"), STEP, |e| {
            e["event"] == "line"
                && e["who"] == who
                && e["text"].as_str().is_some_and(|t| t.ends_with(&wanted))
        });
        let text = line["text"].as_str().unwrap_or_default();
        assert_eq!(text.len(), 8 + wanted.len(), "{text:?}");
    }

    /// Waits for a notice (local line) that contains every one of `parts`.
    fn expect_notice(&mut self, parts: &[&str]) -> String {
        let notice = self.wait_for(&format!("a notice with {parts:?}"), STEP, |e| {
            e["event"] == "notice"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| parts.iter().all(|p| m.contains(p)))
        });
        notice["message"].as_str().unwrap_or_default().to_string()
    }

    /// The lines the page shows in its current room, sorted by time.
    fn lines(&mut self) -> Vec<String> {
        let reply = self.request(json!({"cmd": "lines"}));
        serde_json::from_value(reply["lines"].clone()).expect("lines are strings")
    }

    /// Closes the page and checks that the script exits cleanly and the page threw nothing.
    fn close(mut self) {
        self.send(json!({"cmd": "close"}));
        self.wait_for("closed", START, |e| e["event"] == "closed");
        drop(self.stdin.take());
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                break status;
            }
            if Instant::now() > deadline {
                let diagnostics = self.diagnostics();
                panic!("chat-browser.mjs did not exit after close: {diagnostics}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            let diagnostics = self.diagnostics();
            panic!("chat-browser.mjs failed: {diagnostics}");
        }
        if let Some(profile) = &self.profile {
            assert!(!profile.exists(), "{} was not removed", profile.display());
        }
        let errors: Vec<&Value> = self
            .seen
            .iter()
            .filter(|e| e["event"] == "console" && e["type"] == "pageerror")
            .collect();
        assert!(
            errors.is_empty(),
            "the page of {} threw: {errors:#?}",
            self.nick
        );
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Chromium exits by itself when its pipe to the script closes; its profile may remain.
        if let Some(dir) = &self.profile {
            if dir.exists() {
                std::thread::sleep(Duration::from_millis(500));
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// A `chat` process in plain-line mode (its stdin and stdout are pipes).
struct ChatProcess {
    nick: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl ChatProcess {
    fn start(hub: &str, nick: &str, room: &str) -> ChatProcess {
        let mut child = Command::new(example("chat"))
            .args([room, "--hub", hub, "--nick", nick, "--udp", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            // UTC times, as the page shows them here.
            .env_remove("TZ")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the chat example");
        let lines = stdout_lines(&mut child);
        let stderr = collect_stderr(&mut child);
        ChatProcess {
            nick: nick.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn say(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{text}").expect("write to chat");
        stdin.flush().expect("flush");
    }

    /// Waits for `HH:MM:SS <who> text` on stdout; the line.
    fn expect_line(&mut self, who: &str, text: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| is_line(l, who, text)) {
            return line.clone();
        }
        let deadline = Instant::now() + STEP;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if is_line(&line, who, text) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "chat {} never printed `HH:MM:SS <{who}> {text}`; it printed: {:#?}\nstderr:\n{}",
            self.nick,
            self.seen,
            self.stderr.lock().unwrap()
        );
    }

    /// Waits for `HH:MM:SS * who action` (a `/me`) on stdout.
    fn expect_action(&mut self, who: &str, action: &str) {
        let wanted = format!(" * {who} {action}");
        let is_it = |l: &String| l.len() == 8 + wanted.len() && l.ends_with(&wanted);
        let deadline = Instant::now() + STEP;
        while !self.seen.iter().any(is_it) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "chat {} never printed `HH:MM:SS * {who} {action}`; it printed: {:#?}\nstderr:\n{}",
                    self.nick,
                    self.seen,
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    fn quit(mut self) {
        self.say("/quit");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "chat {} exited with {status}", self.nick);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chat {} did not quit; stderr:\n{}",
                self.nick,
                self.stderr.lock().unwrap()
            );
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
async fn two_pages_chat_and_a_late_joiner_gets_the_history() {
    require_browser_setup();
    let hub = start_hub().await;
    let origin = hub.url().to_string();
    tokio::task::spawn_blocking(move || {
        // Alice's page names no hub: it uses the hub that served it. Bob's names it.
        let mut alice = Page::open(&format!("{origin}/#browsers"), "alice");
        alice.say("hello from alice");
        alice.expect_line("alice", "hello from alice");

        let mut bob = Page::open(&format!("{origin}/?hub={origin}#browsers"), "bob");
        // History: a line written before Bob came.
        bob.expect_line("alice", "hello from alice");
        bob.say("hi alice, ünïcödé \"quoted\" <b>not bold</b>");
        alice.expect_line("bob", "hi alice, ünïcödé \"quoted\" <b>not bold</b>");
        alice.say("and a third line");
        bob.expect_line("alice", "and a third line");
        let seen_by_bob = bob.lines();
        bob.close();

        // Carol comes after Bob has left and gets all three lines from Alice's log.
        let mut carol = Page::open(&format!("{origin}/#browsers"), "carol");
        carol.expect_line("alice", "hello from alice");
        carol.expect_line("bob", "hi alice, ünïcödé \"quoted\" <b>not bold</b>");
        carol.expect_line("alice", "and a third line");
        let seen_by_carol = carol.lines();
        let seen_by_alice = alice.lines();
        assert_eq!(seen_by_alice.len(), 3, "{seen_by_alice:#?}");
        assert_eq!(seen_by_alice, seen_by_bob, "same lines, same order");
        assert_eq!(seen_by_alice, seen_by_carol, "same lines, same order");
        carol.say("late but here");
        alice.expect_line("carol", "late but here");
        carol.close();
        alice.close();
    })
    .await
    .expect("the browsers");
    hub.shutdown().await.expect("hub shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_chat_and_a_browser_page_talk_both_ways() {
    require_browser_setup();
    let hub = start_hub().await;
    let origin = hub.url().to_string();
    tokio::task::spawn_blocking(move || {
        let room = "#mixed";
        let mut rusty = ChatProcess::start(&origin, "rusty", room);
        rusty.say("from the terminal");
        let own = rusty.expect_line("rusty", "from the terminal");

        let mut webby = Page::open(&format!("{origin}/#mixed"), "webby");
        webby.expect_notice(&["peer ", " joined #mixed (1 peer)"]);
        // History from the Rust log, shown as the terminal shows it.
        let line = webby.expect_line("rusty", "from the terminal");
        assert_eq!(
            line["text"], own,
            "the page and the terminal render a line alike"
        );
        webby.say("from the browser: ünïcödé \"quoted\"");
        let theirs = rusty.expect_line("webby", "from the browser: ünïcödé \"quoted\"");
        let shown = webby.expect_line("webby", "from the browser: ünïcödé \"quoted\"");
        assert_eq!(shown["text"], theirs);

        // Both ways again, now that they are connected.
        rusty.say("/nick rustacean");
        rusty.say("still here");
        webby.expect_line("rustacean", "still here");
        webby.expect_notice(&["rusty is now known as rustacean"]);

        // /me both ways: an ordinary line, shown as an action by both.
        rusty.say("/me waves from the terminal");
        webby.expect_action("rustacean", "waves from the terminal");
        webby.request(json!({"cmd": "input", "text": "/me waves back"}));
        rusty.expect_action("webby", "waves back");
        let entries = webby.request(json!({"cmd": "entries"}));
        assert!(
            entries["entries"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["message"] == "* webby waves back")),
            "the wire form is the line `* webby waves back`: {entries}"
        );
        webby.request(json!({"cmd": "input", "text": "/nick webster"}));
        webby.request(json!({"cmd": "input", "text": "typed into the page"}));
        rusty.expect_line("webster", "typed into the page");
        let peers = webby.request(json!({"cmd": "peers"}));
        assert_eq!(
            peers["peers"], 1,
            "the page counts the terminal as its one peer"
        );

        // Part and join again: the history comes back from the terminal, each line once.
        let before = webby.lines();
        webby.request(json!({"cmd": "input", "text": "/part"}));
        webby.request(json!({"cmd": "input", "text": "/join #mixed"}));
        let deadline = Instant::now() + STEP;
        let after = loop {
            let lines = webby.lines();
            if lines.len() >= before.len() || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            after, before,
            "the same lines, once each, after /part + /join"
        );

        // /names: the page's nick first, then the nicks that wrote, as the terminal's /names.
        webby.request(json!({"cmd": "input", "text": "/names"}));
        webby.expect_notice(&["#mixed: webster rustacean "]);
        // /clear empties the window (only the window: the log is not touched).
        webby.request(json!({"cmd": "input", "text": "/clear"}));
        assert_eq!(webby.lines(), Vec::<String>::new());

        rusty.quit();
        webby.expect_notice(&["peer ", " left #mixed (0 peers)"]);
        webby.close();
    })
    .await
    .expect("the chat and the browser");
    hub.shutdown().await.expect("hub shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_takes_the_hubs_ice_servers_by_default() {
    require_browser_setup();
    // Loopback STUN/TURN addresses that nothing serves: only the configuration is under test.
    let hub = Hub::bind(
        "127.0.0.1:0",
        HubConfig {
            quiet: true,
            web_root: Some(web_root()),
            ice_servers: Some(signalhub::IceServers {
                urls: vec![
                    "stun:127.0.0.1:3478".to_string(),
                    "turn:127.0.0.1:3478".to_string(),
                ],
                turn_secret: Some("page-secret".to_string()),
                ttl: Duration::from_secs(600),
                tag: "signalhub".to_string(),
            }),
            ..HubConfig::default()
        },
    )
    .await
    .expect("bind a hub")
    .spawn()
    .expect("serve the hub");
    let origin = hub.url().to_string();
    tokio::task::spawn_blocking(move || {
        let mut page = Page::open(&format!("{origin}/#ice"), "ice");
        let deadline = Instant::now() + STEP;
        let servers = loop {
            let reply = page.request(json!({"cmd": "ice"}));
            let servers = reply["servers"].as_array().cloned().unwrap_or_default();
            if !servers.is_empty() {
                break servers;
            }
            assert!(
                Instant::now() < deadline,
                "the page never took the hub's ICE servers"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(servers[0], json!({"urls": ["stun:127.0.0.1:3478"]}));
        assert_eq!(servers[1]["urls"], json!(["turn:127.0.0.1:3478"]));
        let username = servers[1]["username"].as_str().expect("a TURN username");
        assert_eq!(
            servers[1]["credential"].as_str(),
            Some(signalhub::turn_credential("page-secret", username).as_str()),
            "the hub's credential, as issued"
        );
        page.close();
    })
    .await
    .expect("the page");
    hub.shutdown().await.expect("hub shutdown");
}
