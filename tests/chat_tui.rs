//! The `chat` example's full-screen UI as a person meets it: real chat processes in a real
//! terminal (a tmux pane, whose screen and cursor these tests read), talking over real WebRTC
//! through a real hub started here. What the screen must show:
//!
//! - two chats: peers joining and leaving as notices, a long line wrapped with its continuation
//!   rows indented under the text, `/help` in the room window, `/me` as `* nick does x`, a nick
//!   change as a notice, an unread count with a mention mark in the room list, Tab completing a
//!   nick, `/names`, `/peers` with the path ICE selected, and `/part` + `/join` showing every
//!   history line once (and the parted room gone from the list);
//! - one chat: line editing (Left/Home/End, Ctrl+U/W/K/Y, Backspace/Delete), Up/Down history, the
//!   input scrolling sideways, a wide character's cursor column, scrolling that stops at the first
//!   line with a `-- more (N) --` mark and comes back with one PgDn, a resize that keeps the lines
//!   (scrolled up too), `//text` and `/clear`, the status window reachable with Alt+1 and
//!   Ctrl+K/J, and times in the local time zone (TZ set here).
//!
//! The screen captured near the end of the two-chat test is written to
//! `target/debug/chat-tui-screen.txt` (the README's picture of the chat, kept in
//! `examples/chat/SCREEN.txt`, comes from there).
//!
//! Needs tmux (`apt-get install tmux`); without it the tests fail, they do not skip.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use signalhub::{Hub, HubConfig, RunningHub};

mod support;
use support::example;

/// How long a screen may take to show something (a WebRTC handshake plus a replication round).
const STEP: Duration = Duration::from_secs(45);
/// The terminal's size.
const WIDTH: u16 = 100;
const HEIGHT: u16 = 24;
/// The room list's width, and where the lines pane starts (after the list's border).
const LIST: usize = 20;
/// A time zone with a half-hour offset and no daylight saving, so that local time cannot be
/// mistaken for UTC.
const TZ: &str = "XST-5:30";

fn require_tmux() {
    match Command::new("tmux").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        other => panic!("`tmux -V` failed ({other:?}): apt-get install tmux"),
    }
}

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

/// The chat example's executable, checked to be newer than the UI's modules too
/// (`support::example` checks `examples/chat.rs`; the UI lives in `examples/chat/`).
fn chat_exe() -> PathBuf {
    let exe = example("chat");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/chat");
    for entry in std::fs::read_dir(&dir).expect("examples/chat/").flatten() {
        let source = entry.path();
        if source.extension().is_some_and(|e| e == "rs") {
            if let (Some(src), Some(bin)) = (modified(&source), modified(&exe)) {
                assert!(
                    bin >= src,
                    "{} is older than {}: run `cargo build --example chat` (or a plain `cargo \
                     test`)",
                    exe.display(),
                    source.display()
                );
            }
        }
    }
    exe
}

/// A tmux server of its own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let socket = format!(
            "chat-tui-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Tmux { socket }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A chat in a new WIDTH × HEIGHT terminal, in `room` as `nick`.
    fn chat(&self, hub: &str, nick: &str, room: &str) -> Screen<'_> {
        let exe = chat_exe();
        let exe = exe.to_str().expect("a UTF-8 path");
        let tz = format!("TZ={TZ}");
        let (w, h) = (WIDTH.to_string(), HEIGHT.to_string());
        self.run(&[
            "new-session",
            "-d",
            "-s",
            nick,
            "-x",
            &w,
            "-y",
            &h,
            "-e",
            &tz,
            exe,
            room,
            "--hub",
            hub,
            "--nick",
            nick,
            "--udp",
            "127.0.0.1:0",
        ]);
        // Keep the pane when the chat exits, so that a failure shows its last screen.
        self.run(&["set-option", "-t", nick, "remain-on-exit", "on"]);
        let screen = Screen {
            tmux: self,
            name: nick.to_string(),
        };
        screen.wait("the input line", |s| {
            s.last_row().starts_with(&format!("[{room}]"))
        });
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// One chat's terminal.
struct Screen<'a> {
    tmux: &'a Tmux,
    name: String,
}

impl Screen<'_> {
    fn rows(&self) -> Vec<String> {
        let out = self.tmux.run(&["capture-pane", "-p", "-t", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn text(&self) -> String {
        self.rows().join("\n")
    }

    /// The input line (without trailing blanks).
    fn last_row(&self) -> String {
        self.rows()
            .last()
            .map(|r| r.trim_end().to_string())
            .unwrap_or_default()
    }

    /// The status line (above the input line).
    fn status(&self) -> String {
        let rows = self.rows();
        rows.get(rows.len().saturating_sub(2))
            .cloned()
            .unwrap_or_default()
    }

    /// `N` of the status line's `-- more (N) --`: lines below the view while scrolled up.
    fn more(&self) -> Option<usize> {
        let status = self.status();
        let (_, rest) = status.split_once("more (")?;
        rest.split_once(')')?.0.parse().ok()
    }

    /// The lines pane: each row right of the room list's border (all of it when narrow).
    fn pane(&self) -> Vec<String> {
        let rows = self.rows();
        let body = &rows[..rows.len().saturating_sub(2)];
        body.iter()
            .map(|row| match row.split_once('│') {
                Some((_, pane)) => pane.to_string(),
                None => row.clone(),
            })
            .collect()
    }

    /// The lines pane's rows trimmed and joined by blanks: wrapped lines read as one.
    fn flat(&self) -> String {
        self.pane()
            .iter()
            .map(|r| r.trim())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The room list: each row left of the border.
    fn list(&self) -> Vec<String> {
        let rows = self.rows();
        rows[..rows.len().saturating_sub(2)]
            .iter()
            .filter_map(|row| {
                row.split_once('│')
                    .map(|(list, _)| list.trim_end().to_string())
            })
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    fn cursor(&self) -> (usize, usize) {
        let out = self.tmux.run(&[
            "display-message",
            "-p",
            "-t",
            &self.name,
            "#{cursor_x} #{cursor_y}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text
            .split_whitespace()
            .map(|n| n.parse().expect("a number"));
        (
            parts.next().expect("cursor x"),
            parts.next().expect("cursor y"),
        )
    }

    /// Types text as it is.
    fn type_text(&self, text: &str) {
        self.tmux.run(&["send-keys", "-t", &self.name, "-l", text]);
    }

    /// Presses keys by tmux's names (`Enter`, `C-u`, `M-2`, `PPage`, …).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        self.tmux.run(&args);
    }

    /// Types a line and presses Enter.
    fn enter(&self, line: &str) {
        self.type_text(line);
        self.keys(&["Enter"]);
    }

    /// Waits until the screen shows `what`; the failure shows the screen.
    fn wait(&self, what: &str, ok: impl Fn(&Screen) -> bool) {
        let deadline = Instant::now() + STEP;
        loop {
            if ok(self) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}'s screen never showed {what}; it shows:\n{}",
                    self.name,
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_cursor(&self, at: (usize, usize)) {
        let deadline = Instant::now() + STEP;
        while self.cursor() != at {
            assert!(
                Instant::now() < deadline,
                "{}'s cursor is at {:?}, not {at:?}; the screen:\n{}",
                self.name,
                self.cursor(),
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_text(&self, text: &str) {
        self.wait(&format!("{text:?}"), |s| s.text().contains(text));
    }

    /// How many pane rows contain `text`.
    fn count(&self, text: &str) -> usize {
        self.pane().iter().filter(|r| r.contains(text)).count()
    }

    fn resize(&self, width: u16, height: u16) {
        self.tmux.run(&[
            "resize-window",
            "-t",
            &self.name,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
    }
}

/// `HH:MM:SS` at the start of a row (after any indent).
fn starts_with_time(row: &str) -> bool {
    let b = row.as_bytes();
    b.len() >= 8
        && b[..8].iter().enumerate().all(|(i, c)| {
            if i == 2 || i == 5 {
                *c == b':'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// `target/<profile>/chat-tui-screen.txt`, next to the test's own directory (wherever the
/// target directory is).
fn screen_file() -> PathBuf {
    let me = std::env::current_exe().expect("the test executable");
    me.parent()
        .and_then(std::path::Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .join("chat-tui-screen.txt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chats_in_terminals() {
    require_tmux();
    let hub = start_hub().await;
    let url = hub.url().to_string();
    tokio::task::spawn_blocking(move || {
        let tmux = Tmux::new();
        let alice = tmux.chat(&url, "alice", "#tui");
        let bob = tmux.chat(&url, "bob", "#tui");

        // Notices: each sees the other arrive, with a correct plural.
        for screen in [&alice, &bob] {
            screen.wait("a peer joined notice", |s| {
                s.pane()
                    .iter()
                    .any(|r| r.contains("-!- peer ") && r.contains(" joined #tui (1 peer)"))
            });
            assert!(screen.status().contains(" 1 peer"), "{}", screen.status());
        }

        // A long line wraps, its continuation rows under the text.
        let long = "this line is long enough that it cannot fit in one row of the pane, \
                    so it has to wrap at a word boundary with an indent like weechat does";
        alice.enter(long);
        bob.wait_text("<alice> this line is long");
        let pane = bob.pane();
        let first = pane
            .iter()
            .position(|r| r.contains("<alice> this line is long"))
            .expect("the first row");
        let prefix = "HH:MM:SS <alice> ".len();
        let next = &pane[first + 1];
        assert!(
            next.len() > prefix
                && next[..prefix].trim().is_empty()
                && !next[prefix..].starts_with(' '),
            "the continuation row is indented by {prefix}: {next:?}\n{}",
            bob.text()
        );
        let joined: String = pane[first..]
            .iter()
            .take_while(|r| {
                !r.trim().is_empty() && (!starts_with_time(r) || r.contains("<alice> this line"))
            })
            .map(|r| r.trim())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.ends_with("like weechat does"), "{joined}");
        assert!(pane[first].chars().count() < WIDTH as usize - LIST);

        // /help shows in the room, not in a status window out of reach.
        bob.enter("/help");
        bob.wait_text("/me does x");
        assert!(bob.status().contains("[2:#tui]"), "{}", bob.status());

        // /me: an action line, as IRC shows it, on both sides.
        alice.enter("/me waves");
        bob.wait("the action", |s| {
            s.pane()
                .iter()
                .any(|r| starts_with_time(r) && r[8..].starts_with(" * alice waves"))
        });

        // Scrolled up, a line that arrives does not move the view; PgDn brings it.
        bob.keys(&["PPage"]);
        bob.wait("scrolled up", |s| s.more().is_some());
        let before = bob.pane();
        let below = bob.more().unwrap_or_default();
        alice.enter("while bob reads");
        bob.wait("one more line below", |s| s.more() == Some(below + 1));
        assert_eq!(bob.pane(), before, "the view moved");
        bob.keys(&["NPage", "NPage", "NPage"]);
        bob.wait_text("<alice> while bob reads");
        assert!(!bob.status().contains("more"), "{}", bob.status());

        // Unread and mention marks: bob looks at another room while alice names him.
        bob.enter("/join #side");
        bob.wait("window 3", |s| s.status().contains("[3:#side]"));
        alice.enter("bob: are you there?");
        alice.enter("second line");
        bob.wait("the unread count with a mention mark", |s| {
            s.list().iter().any(|l| l.trim() == "2 #tui (2!)")
        });
        assert!(bob.status().contains("[Act: 2!]"), "{}", bob.status());
        bob.keys(&["M-2"]);
        bob.wait("#tui again", |s| s.status().contains("[2:#tui]"));
        assert!(
            bob.list().iter().any(|l| l.trim() == "2 #tui"),
            "the marks are cleared: {:?}",
            bob.list()
        );

        // A nick change shows as a notice, and Tab completes the new nick.
        alice.enter("/nick alicia");
        alice.wait_text("you are now known as alicia");
        alice.enter("renamed");
        bob.wait_text("-!- alice is now known as alicia");
        bob.wait_text("<alicia> renamed");
        bob.type_text("ali");
        bob.keys(&["Tab"]);
        bob.wait("the completed nick", |s| s.last_row() == "[#tui] alicia:");
        bob.keys(&["C-u"]);

        bob.enter("/names");
        bob.wait_text("#tui: bob alicia");
        bob.enter("/peers");
        // /peers: the peer and the path ICE selected: our loopback host candidate, and theirs
        // (or a peer-reflexive one, when their check came before their candidate), direct.
        bob.wait("the peer list", |s| {
            let text = s.flat();
            text.contains("-!- #tui: 1 peer connected:")
                && text.contains(" offered): host 127.0.0.1:")
                && (text.contains(" -> host 127.0.0.1:") || text.contains(" -> prflx udp"))
                && text.contains(" udp, direct, ")
        });

        // Part and join again: the window goes, then the history shows once.
        bob.enter("/part");
        bob.wait("#tui gone from the list", |s| {
            !s.list().iter().any(|l| l.contains("#tui"))
        });
        assert!(bob.status().contains("[2:#side]"), "{}", bob.status());
        bob.enter("/join #tui");
        bob.wait_text("<alicia> renamed");
        bob.keys(&["C-l"]);
        for line in [
            "<alice> this line is long",
            "* alice waves",
            "<alice> bob: are you there?",
            "<alice> second line",
            "<alicia> renamed",
            "-!- alice is now known as alicia",
        ] {
            bob.wait(&format!("{line:?} once"), |s| s.count(line) == 1);
        }
        let rooms: Vec<String> = bob.list();
        assert_eq!(
            rooms.iter().filter(|l| l.contains("#tui")).count(),
            1,
            "{rooms:?}"
        );

        // Alice leaves: a notice, and the plural.
        bob.wait("the peer again", |s| s.status().contains(" 1 peer"));
        std::fs::write(screen_file(), bob.rows().join("\n") + "\n").expect("write the screen");
        alice.enter("/quit");
        bob.wait("the peer left notice", |s| {
            s.pane()
                .iter()
                .any(|r| r.contains("-!- peer ") && r.contains(" left #tui (0 peers)"))
        });
        assert!(bob.status().contains(" 0 peers"), "{}", bob.status());

        // The status window has what the chat said, and none of the WebRTC engine's routine
        // warnings (tracing goes there on a full screen, dependencies at `error` by default).
        bob.keys(&["M-1"]);
        bob.wait("the status window", |s| s.status().contains("[1:!status]"));
        bob.wait_text("-!- you are bob; /help for commands and keys");
        let status = bob.text();
        assert!(!status.contains("WARN"), "{status}");
        bob.keys(&["C-c"]);
    })
    .await
    .expect("the terminals");
    hub.shutdown().await.expect("hub shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chat_edits_scrolls_and_resizes() {
    require_tmux();
    let hub = start_hub().await;
    let url = hub.url().to_string();
    tokio::task::spawn_blocking(move || {
        let tmux = Tmux::new();
        let carol = tmux.chat(&url, "carol", "#solo");
        let prompt = "[#solo] ";

        // Local time: the status line's clock is UTC+5:30 (TZ), not UTC.
        let status = carol.status();
        let clock = status
            .split_once(" [")
            .and_then(|(_, rest)| rest.get(..8))
            .expect("the clock");
        let minutes = |h: &str, m: &str| -> i64 {
            h.parse::<i64>().expect("hours") * 60 + m.parse::<i64>().expect("minutes")
        };
        let shown = minutes(&clock[..2], &clock[3..5]);
        let utc = chrono::Utc::now();
        let local =
            (minutes(&utc.format("%H").to_string(), &utc.format("%M").to_string()) + 5 * 60 + 30)
                % (24 * 60);
        let off = (shown - local).rem_euclid(24 * 60);
        assert!(
            off <= 1 || off == 24 * 60 - 1,
            "the clock {clock} is not UTC+5:30 ({utc})"
        );

        // Editing: move, insert, delete, kill and yank.
        carol.type_text("hello world");
        for _ in 0..5 {
            carol.keys(&["Left"]);
        }
        carol.type_text("big ");
        carol.keys(&["Home"]);
        carol.type_text(">");
        carol.keys(&["End"]);
        carol.type_text("!!");
        carol.keys(&["BSpace"]);
        carol.wait("the edited line", |s| {
            s.last_row() == format!("{prompt}>hello big world!")
        });
        carol.keys(&["C-a", "DC", "C-e", "C-w"]);
        carol.wait("a word killed", |s| {
            s.last_row() == format!("{prompt}hello big")
        });
        carol.keys(&["C-y", "C-a", "Right", "Right", "C-k"]);
        carol.wait("killed to the end", |s| {
            s.last_row() == format!("{prompt}he")
        });
        carol.keys(&["C-y"]);
        carol.wait("yanked back", |s| {
            s.last_row() == format!("{prompt}hello big world!")
        });
        carol.keys(&["Enter"]);
        carol.wait_text("<carol> hello big world!");

        // Ctrl+U clears the line: what was typed is not sent with the command after it.
        carol.type_text("not to be sent");
        carol.keys(&["C-u"]);
        carol.enter("/nick caroline");
        carol.wait_text("-!- you are now known as caroline");
        assert!(!carol.text().contains("not to be sent"));

        // History: Up brings back what was sent, Down returns to the draft.
        carol.type_text("draft");
        carol.keys(&["Up"]);
        carol.wait("the last line sent", |s| {
            s.last_row() == format!("{prompt}/nick caroline")
        });
        carol.keys(&["Up"]);
        carol.wait("the line before", |s| {
            s.last_row() == format!("{prompt}hello big world!")
        });
        carol.keys(&["Down", "Down"]);
        carol.wait("the draft", |s| s.last_row() == format!("{prompt}draft"));
        carol.keys(&["C-u"]);

        // A wide character's cursor column: CJK and emoji take two columns each.
        carol.type_text("日本語🎉x");
        carol.wait("the wide text", |s| s.last_row().ends_with("日本語🎉x"));
        let width = prompt.len() + 2 * 4 + 1;
        carol.wait_cursor((width, HEIGHT as usize - 1));
        carol.keys(&["Left", "Left"]);
        // Left of the emoji, after three two-column characters.
        carol.wait_cursor((width - 3, HEIGHT as usize - 1));
        carol.keys(&["C-u"]);

        // An input line longer than the terminal scrolls sideways; the cursor stays in view.
        let long: String = (0..30).map(|i| format!("w{i:02} ")).collect();
        carol.type_text(&long);
        carol.wait("the end of the long input", |s| {
            s.last_row().contains("w29")
        });
        let row = carol.last_row();
        assert!(!row.contains("w00"), "scrolled: {row:?}");
        let (x, _) = carol.cursor();
        assert!(x < WIDTH as usize, "cursor at {x}");
        carol.keys(&["Home"]);
        carol.wait("the start again", |s| s.last_row().contains("w00"));
        carol.wait_cursor((prompt.len(), HEIGHT as usize - 1));
        carol.keys(&["C-u"]);

        // Scrolling: many lines, then up past the first one, and back.
        for i in 1..=40 {
            carol.enter(&format!("line {i:02}"));
        }
        carol.wait_text("<caroline> line 40");
        for _ in 0..12 {
            carol.keys(&["PPage"]);
        }
        carol.wait("the first line at the top", |s| {
            s.status().contains("-- top, more (")
        });
        let pane = carol.pane();
        assert!(
            pane[0].contains("-!- joined #solo"),
            "the first line is at the top, not an empty pane:\n{}",
            carol.text()
        );
        carol.keys(&["NPage"]);
        carol.wait("one PgDn moves at once", |s| {
            !s.pane()[0].contains("-!- joined #solo") && s.status().contains("-- more (")
        });
        for _ in 0..12 {
            carol.keys(&["NPage"]);
        }
        carol.wait("back at the bottom", |s| {
            !s.status().contains("more") && s.text().contains("<caroline> line 40")
        });

        // A resize keeps the view: the newest line stays at the bottom, rows rewrapped.
        carol.enter("a last line, long enough to wrap once the terminal is narrower than now");
        carol.wait_text("long enough to wrap");
        carol.resize(60, 16);
        carol.wait("the narrower screen", |s| {
            s.rows().len() == 16 && s.rows().iter().all(|r| r.chars().count() <= 60)
        });
        carol.wait("the last line at the bottom, wrapped", |s| {
            let pane = s.pane();
            let last = pane.iter().rposition(|r| !r.trim().is_empty());
            last.is_some_and(|at| pane[at].trim_end().ends_with("than now"))
                && pane.iter().any(|r| r.contains("<caroline> a last line"))
        });
        // Scrolled up, a resize keeps the same line at the bottom of the view.
        carol.keys(&["PPage"]);
        carol.wait("scrolled up", |s| s.more().is_some());
        let bottom = |s: &Screen| {
            s.pane()
                .iter()
                .rev()
                .find(|r| !r.trim().is_empty())
                .map(|r| r.trim().to_string())
                .unwrap_or_default()
        };
        let before = bottom(&carol);
        assert!(before.contains("<caroline> line "), "{}", carol.text());
        carol.resize(WIDTH, HEIGHT);
        carol.wait("the same bottom line after the resize", |s| {
            s.rows().len() == HEIGHT as usize && bottom(s) == before
        });
        carol.keys(&["NPage", "NPage", "NPage", "NPage"]);
        carol.wait("back at the bottom", |s| !s.status().contains("more"));

        // `//` says a line that starts with `/`; /clear empties the window (the log keeps it).
        carol.enter("//not a command");
        carol.wait_text("<caroline> /not a command");
        carol.enter("/clear");
        carol.wait("an empty window", |s| {
            s.pane().iter().all(|r| r.trim().is_empty())
        });
        carol.enter("after the clear");
        carol.wait_text("<caroline> after the clear");
        assert!(!carol.text().contains("line 40"), "{}", carol.text());

        // The status window is reachable in a room: Alt+1, and Ctrl+J back.
        carol.keys(&["M-1"]);
        carol.wait("the status window", |s| s.status().contains("[1:!status]"));
        carol.wait_text("-!- you are carol; /help for commands and keys");
        carol.keys(&["C-j"]);
        carol.wait("the room again", |s| s.status().contains("[2:#solo]"));
        carol.keys(&["C-k"]);
        carol.wait("Ctrl+K to the status window", |s| {
            s.status().contains("[1:!status]")
        });
        carol.enter("/quit");
    })
    .await
    .expect("the terminal");
    hub.shutdown().await.expect("hub shutdown");
}
