//! The `log` example as users run it: its commands, replication between two processes over
//! loopback TCP, and crash safety (every key `append-stdin` printed survives a `kill -9`).
//!
//! The example's executable is the one `cargo test` builds next to the test binaries
//! (`target/<profile>/examples/log`): run these tests through a plain `cargo test` (or
//! `cargo test --workspace`), which builds the examples too.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::example;

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(30);

/// `log append hello` on an empty log: the node with no links and value "hello".
const HELLO: &str = "8c7efb22472592f561a7a7647f8c5ee93134880b4ca0c92889a61848cd5c4602";

fn log_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(example("log"));
    cmd.arg("--dir").arg(dir);
    cmd.env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
    cmd
}

/// Waits for `child`, killing it after `STEP`.
fn wait_output(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + STEP;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish in {STEP:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `log --dir DIR ARGS` to completion; its stdout. Panics unless it succeeds.
fn run_ok(dir: &Path, args: &[&str]) -> String {
    let child = log_cmd(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start log");
    let out = wait_output(child, &format!("log {args:?}"));
    assert!(
        out.status.success(),
        "log {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `log --dir DIR ARGS` expecting failure; its stderr.
fn run_err(dir: &Path, args: &[&str]) -> String {
    let child = log_cmd(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start log");
    let out = wait_output(child, &format!("log {args:?}"));
    assert!(!out.status.success(), "log {args:?} should fail");
    String::from_utf8(out.stderr).expect("UTF-8 output")
}

/// One line of `log list` / `log heads`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    change: u64,
    seq: u64,
    log: String,
    key: String,
    value: String,
}

fn parse_list(out: &str) -> Vec<Listed> {
    out.lines()
        .map(|line| {
            let mut parts = line.splitn(5, ' ');
            let mut next = || {
                parts
                    .next()
                    .unwrap_or_else(|| panic!("short line {line:?}"))
            };
            Listed {
                change: next().parse().expect("change"),
                seq: next().parse().expect("seq"),
                log: next().to_string(),
                key: next().to_string(),
                value: next().to_string(),
            }
        })
        .collect()
}

/// The (key, value) pairs of a list, whatever their order.
fn contents(list: &[Listed]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|n| (n.key.clone(), n.value.clone()))
        .collect()
}

/// A process whose stderr lines arrive on a channel.
struct Running {
    /// `None` once [`Running::finish`] has taken it; a process still here is killed on drop.
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start log");
        let pipe = child.stderr.take().expect("stderr");
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child: Some(child),
            stderr,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; the line.
    fn expect_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no {needle:?} on stderr; saw {:?}", self.seen),
            }
        }
    }

    /// Waits for the end; stdout. Panics unless it succeeded.
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the process is still held")
    }

    fn finish(mut self, what: &str) -> String {
        let child = self.child.take().expect("the process is still held");
        let out = wait_output(child, what);
        let rest: Vec<String> = self.stderr.try_iter().collect();
        assert!(
            out.status.success(),
            "{what} failed ({}); stderr: {:?} {rest:?}",
            out.status,
            self.seen
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }
}

impl Drop for Running {
    /// A test that ends early (or drops a server it no longer needs) leaves no process behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `replicate --listen 127.0.0.1:0 EXTRA` in `dir`; the process and its address.
fn listen(dir: &Path, extra: &[&str]) -> (Running, String) {
    let mut cmd = log_cmd(dir);
    cmd.args(["replicate", "--listen", "127.0.0.1:0"])
        .args(extra);
    let mut running = Running::start(cmd);
    let line = running.expect_stderr("listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .expect("an address")
        .trim()
        .to_string();
    (running, addr)
}

fn connect(dir: &Path, addr: &str, extra: &[&str]) -> Running {
    let mut cmd = log_cmd(dir);
    cmd.args(["replicate", "--connect", addr]).args(extra);
    Running::start(cmd)
}

#[test]
fn append_list_heads_and_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/nested");
    let id = run_ok(&dir, &["id"]);
    let id = id.trim();
    assert!(!id.is_empty() && !id.contains(' '), "{id:?}");
    assert_eq!(run_ok(&dir, &["id"]).trim(), id, "the id is persisted");

    assert_eq!(run_ok(&dir, &["append", "hello"]).trim(), HELLO);
    let world = run_ok(&dir, &["append", "wide world"]).trim().to_string();
    let list = parse_list(&run_ok(&dir, &["list"]));
    assert_eq!(
        list,
        vec![
            Listed {
                change: 1,
                seq: 1,
                log: id.to_string(),
                key: HELLO.into(),
                value: "hello".into(),
            },
            Listed {
                change: 2,
                seq: 2,
                log: id.to_string(),
                key: world.clone(),
                value: "wide world".into(),
            },
        ]
    );
    assert_eq!(parse_list(&run_ok(&dir, &["heads"])), vec![list[1].clone()]);
}

#[test]
fn append_stdin_prints_a_key_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = log_cmd(tmp.path())
        .arg("append-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\r\nthree")
        .unwrap();
    let out = wait_output(child, "append-stdin");
    assert!(out.status.success(), "{out:?}");
    let keys: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let list = parse_list(&run_ok(tmp.path(), &["list"]));
    let listed: Vec<(String, String)> = list
        .iter()
        .map(|n| (n.key.clone(), n.value.clone()))
        .collect();
    let expected: Vec<(String, String)> = keys
        .into_iter()
        .zip(["one", "two", "three"].map(String::from))
        .collect();
    assert_eq!(listed, expected);
}

#[test]
fn replicate_between_two_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(&a, &["append", "a1"]);
    run_ok(&a, &["append", "a2"]);
    run_ok(&b, &["append", "b1"]);

    let (server, addr) = listen(&a, &[]);
    let client = connect(&b, &addr, &[]);
    let client_out = client.finish("replicate --connect");
    let server_out = server.finish("replicate --listen");
    assert_eq!(client_out.lines().last(), Some("sent 1 received 2"));
    assert_eq!(server_out.lines().last(), Some("sent 2 received 1"));

    let list_a = parse_list(&run_ok(&a, &["list"]));
    let list_b = parse_list(&run_ok(&b, &["list"]));
    assert_eq!(list_a.len(), 3);
    assert_eq!(contents(&list_a), contents(&list_b));

    // Nothing new: nothing moves. Pull-only: the puller sends nothing.
    run_ok(&a, &["append", "a3"]);
    let (server, addr) = listen(&a, &["--mode", "push"]);
    let client = connect(&b, &addr, &["--mode", "pull"]);
    assert_eq!(
        client.finish("pull").lines().last(),
        Some("sent 0 received 1")
    );
    assert_eq!(
        server.finish("push").lines().last(),
        Some("sent 1 received 0")
    );
    assert_eq!(
        contents(&parse_list(&run_ok(&a, &["list"]))),
        contents(&parse_list(&run_ok(&b, &["list"])))
    );
}

#[test]
fn live_replication_ends_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(&a, &["append", "a1"]);
    let (mut server, addr) = listen(&a, &["--live"]);
    let mut client = connect(&b, &addr, &[]);
    server.expect_stderr("(synced)");
    client.expect_stderr("(synced)");
    // Live on both sides now: only a stop ends it.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        client.child().try_wait().unwrap().is_none(),
        "live mode ended early"
    );
    let status = Command::new("kill")
        .args(["-s", "INT", &server.child().id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // Live, each side also streams what it received (as hyperlog does), so only the
    // received counts and the server's sent count are fixed.
    let server_out = server.finish("live --listen");
    let client_out = client.finish("live --connect");
    let summary = |out: &str| -> (u64, u64) {
        let last = out.lines().last().unwrap_or_default();
        let words: Vec<&str> = last.split(' ').collect();
        assert!(
            words.len() == 4 && words[0] == "sent" && words[2] == "received",
            "{last:?}"
        );
        (words[1].parse().unwrap(), words[3].parse().unwrap())
    };
    assert_eq!(summary(&server_out).0, 1, "{server_out}");
    assert_eq!(summary(&client_out).1, 1, "{client_out}");
    assert_eq!(parse_list(&run_ok(&b, &["list"])).len(), 1);
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let err = run_err(dir, &["replicate", "--listen", &addr]);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    drop(busy);

    // A file where the directory should be.
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    let err = run_err(&file, &["list"]);
    assert!(err.contains("cannot create the log directory"), "{err}");

    // Two processes on one log: the second is refused, with a reason.
    let (server, _addr) = listen(dir, &[]);
    let err = run_err(dir, &["list"]);
    assert!(err.contains("cannot open the log"), "{err}");
    drop(server);

    let err = run_err(dir, &["replicate"]);
    assert!(err.contains("--listen"), "{err}");
}

/// A small seeded PRNG (xorshift64*), so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// `append-stdin` is killed (SIGKILL) at random moments, mid-stream; after each kill the log
/// opens cleanly, holds every key printed before the kill, in order, has one head (the last
/// node), and only values that were sent; the next round appends to the same log.
#[test]
fn append_stdin_survives_sigkill() {
    let seed = std::env::var("LOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001u64);
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = Instant::now();
    let mut acked: Vec<(String, String)> = Vec::new(); // (key, value), in append order
    let mut sent_values = BTreeSet::new();
    let mut line_no = 0u64;
    let rounds = 20;
    let mut interrupted = 0; // rounds killed with lines still unacknowledged
    for round in 0..rounds {
        let mut child = log_cmd(dir)
            .arg("append-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start append-stdin");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut pending: Vec<String> = Vec::new(); // sent, key not read yet
                                                   // Some lines one by one (each acknowledged), then a burst left in flight, then a
                                                   // random pause, then the kill: it lands before, during or after the commits.
        let one_by_one = rng.below(8);
        let burst = rng.below(40);
        let pause = Duration::from_micros(rng.below(30_000));
        for i in 0..one_by_one + burst {
            line_no += 1;
            let value = format!(
                "r{round} l{line_no} {}",
                "x".repeat(rng.below(200) as usize)
            );
            writeln!(stdin, "{value}").unwrap();
            stdin.flush().unwrap();
            sent_values.insert(value.clone());
            pending.push(value);
            if i < one_by_one {
                let mut key = String::new();
                stdout.read_line(&mut key).unwrap();
                acked.push((key.trim().to_string(), pending.remove(0)));
            }
        }
        std::thread::sleep(pause);
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        drop(stdin);
        // Keys printed before the kill are still in the pipe.
        for line in stdout.lines() {
            let key = line.unwrap();
            assert!(!pending.is_empty(), "round {round}: more keys than lines");
            acked.push((key, pending.remove(0)));
        }

        if !pending.is_empty() {
            interrupted += 1;
        }
        let list = parse_list(&run_ok(dir, &["list"]));
        let listed: Vec<(String, String)> = list
            .iter()
            .map(|n| (n.key.clone(), n.value.clone()))
            .collect();
        // Every acknowledged node is there, in order (unacknowledged ones may be too: the
        // kill may land after a commit and before its key is written).
        let mut it = listed.iter();
        for ack in &acked {
            assert!(
                it.any(|l| l == ack),
                "seed {seed:#x} round {round}: acknowledged {ack:?} missing or out of order"
            );
        }
        for (i, n) in list.iter().enumerate() {
            assert_eq!(n.change, i as u64 + 1, "seed {seed:#x}: changes are dense");
            assert!(
                sent_values.contains(&n.value),
                "unknown value {:?}",
                n.value
            );
        }
        // Unacknowledged survivors count as appended from now on.
        acked = listed;
        let heads = parse_list(&run_ok(dir, &["heads"]));
        match list.last() {
            None => assert!(heads.is_empty()),
            Some(last) => assert_eq!(heads, vec![last.clone()], "seed {seed:#x} round {round}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too slow: {rounds} rounds must take under a minute"
        );
    }
    assert!(acked.len() > rounds, "the rounds appended something");
    eprintln!(
        "seed {seed:#x}: {rounds} rounds, {interrupted} killed mid-stream, {} nodes, {:?}",
        acked.len(),
        started.elapsed()
    );
}
