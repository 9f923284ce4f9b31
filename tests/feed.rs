//! The `feed` example as users run it, through a real hub on 127.0.0.1 and real processes:
//! accounts (keygen, sign, verify), a Rust publisher and its followers (who keep hosting the feed
//! when the publisher is gone, and refuse entries not signed by the feed's key), and the talk's JS
//! publisher and subscriber (hyperlog + hyperlog-sodium over webrtc-swarm in Node) in both
//! directions.
//!
//! The example's executable is the one cargo builds next to the test binaries
//! (`target/<profile>/examples/feed`): run these through a plain `cargo test`, or
//! `cargo build --example feed && cargo test --test feed`. The JS tests need
//! `npm ci --prefix js`; they fail (never skip) without it.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use signalhub::{Hub, HubConfig, RunningHub};
use swarm::{
    Keypair, Log, LogOptions, Node, ReplicateOptions, Replication, Swarm, SwarmEvent, SwarmOptions,
};

mod support;
use support::{collect_stderr, example, js_dir, stdout_lines};

/// The longest wait for any one thing.
const STEP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Support

fn feed(dir: &Path) -> Command {
    let mut cmd = Command::new(example("feed"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    cmd
}

/// Runs `feed ARGS` in `dir` to completion.
fn run(dir: &Path, args: &[&str]) -> Output {
    let mut child = feed(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start feed");
    let deadline = Instant::now() + STEP;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("feed {args:?} did not finish in {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "feed {args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// A running process: stdout lines as they come, stderr collected, killed on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = stdout_lines(&mut child);
        let stderr = collect_stderr(&mut child);
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn diagnostics(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".to_string(),
            Err(e) => e.to_string(),
        };
        format!(
            "{} ({status})\nstdout so far:\n  {}\nstderr:\n{}",
            self.name,
            self.seen.join("\n  "),
            self.stderr.lock().unwrap()
        )
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            let diagnostics = self.diagnostics();
            panic!("cannot write to {diagnostics}: {e}");
        }
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line.
    fn next_line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(STEP) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => {
                let diagnostics = self.diagnostics();
                panic!("no stdout line ({e}) while waiting for {what} from {diagnostics}")
            }
        }
    }

    /// The next stdout line that is a JSON object matching `matches`.
    fn wait_json(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!(
                            "{}: a stdout line that is not JSON ({e}): {line}",
                            self.name
                        )
                    });
                    assert_ne!(
                        value["event"], "fatal",
                        "{}: fatal: {}",
                        self.name, value["message"]
                    );
                    if matches(&value) {
                        return value;
                    }
                }
                Err(e) => {
                    let diagnostics = self.diagnostics();
                    panic!("no match ({e}) while waiting for {what} from {diagnostics}")
                }
            }
        }
    }

    /// Stdout lines that arrive within `quiet` of each other, until none does.
    fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            self.seen.push(line.clone());
            got.push(line);
        }
        got
    }

    /// Waits until stderr contains every one of `needles`.
    fn wait_stderr(&mut self, what: &str, needles: &[&str]) {
        let deadline = Instant::now() + STEP;
        loop {
            {
                let text = self.stderr.lock().unwrap();
                if needles.iter().all(|n| text.contains(n)) {
                    return;
                }
            }
            if Instant::now() > deadline {
                let diagnostics = self.diagnostics();
                panic!("waited {STEP:?} for {what} ({needles:?}) in the stderr of {diagnostics}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first stderr line containing `needle`, waiting for it.
    fn stderr_line(&mut self, what: &str, needle: &str) -> String {
        self.wait_stderr(what, &[needle]);
        let text = self.stderr.lock().unwrap();
        text.lines()
            .find(|l| l.contains(needle))
            .expect("present")
            .to_string()
    }

    /// SIGTERM, then its exit status.
    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let diagnostics = self.diagnostics();
                panic!("no exit within {STEP:?} of SIGTERM: {diagnostics}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A hub on 127.0.0.1 (any port) on its own runtime, which also runs the in-process peers.
struct TestHub {
    hub: Option<RunningHub>,
    runtime: tokio::runtime::Runtime,
}

impl TestHub {
    fn start() -> TestHub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let config = HubConfig {
            quiet: true,
            max_connections_per_ip: 100_000,
            broadcasts_per_sec: 1_000_000,
            broadcast_burst: 1_000_000,
            ..HubConfig::default()
        };
        let hub = runtime.block_on(async {
            Hub::bind(("127.0.0.1", 0), config)
                .await
                .expect("bind a hub on loopback")
                .spawn()
                .expect("serve the hub")
        });
        TestHub {
            hub: Some(hub),
            runtime,
        }
    }

    fn url(&self) -> String {
        self.hub.as_ref().expect("running").url().to_string()
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            let _ = self.runtime.block_on(hub.shutdown());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `feed keygen --keys NAME` in `dir`; the keys file's public key (hex).
fn keygen(dir: &Path, name: &str) -> String {
    let out = run_ok(dir, &["keygen", "--keys", name]);
    let keys: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).expect("keys file"))
            .expect("JSON");
    let public_key = keys["publicKey"].as_str().expect("publicKey").to_string();
    assert_eq!(out, format!("PUBLIC KEY: {public_key}\n"));
    public_key
}

fn publisher(dir: &Path, hub: &str, keys: &str) -> Proc {
    publisher_with(dir, hub, keys, &[])
}

fn publisher_with(dir: &Path, hub: &str, keys: &str, extra: &[&str]) -> Proc {
    let mut cmd = feed(dir);
    cmd.args(["publish", "--keys", keys, "--hub", hub, "--loopback"])
        .args(extra);
    Proc::spawn("feed publish", cmd)
}

fn subscriber(dir: &Path, hub: &str, public_key: &str, name: &str) -> Proc {
    subscriber_with(dir, hub, public_key, name, &[])
}

fn subscriber_with(dir: &Path, hub: &str, public_key: &str, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = feed(dir);
    cmd.args(["subscribe", public_key, "--hub", hub, "--loopback"])
        .args(extra);
    Proc::spawn(name, cmd)
}

/// The local log id in the publisher's "joined swarm ... (local log id ID)" line.
fn log_id(joined: &str) -> String {
    joined
        .rsplit("(local log id ")
        .next()
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no log id in {joined:?}"))
        .to_string()
}

/// Fails (never skips) when Node or the npm packages are missing, naming the setup command.
fn require_js() {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "`node --version` failed ({other:?}): install Node.js 20, then run \
             `npm ci --prefix js` in the workspace root"
        ),
    }
    for (package, version) in [
        ("webrtc-swarm", "2.9.0"),
        ("@roamhq/wrtc", "0.10.0"),
        ("signalhub", "4.9.0"),
        ("hyperlog", "4.12.1"),
        ("hyperlog-sodium", "2.0.0"),
        ("sodium-signatures", "1.4.1"),
        ("memdb", "1.3.1"),
    ] {
        let manifest = js_dir()
            .join("node_modules")
            .join(package)
            .join("package.json");
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): run `npm ci --prefix js` in the workspace root",
                manifest.display()
            )
        });
        let found: Value = serde_json::from_str(&text).expect("package.json is JSON");
        assert_eq!(
            found["version"], version,
            "js/node_modules/{package} is not version {version}: run `npm ci --prefix js` in \
             the workspace root"
        );
    }
}

fn node(script: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new("node");
    cmd.arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir());
    Proc::spawn(&format!("node {script} {}", args.join(" ")), cmd)
}

/// Joins the swarm of `app` in-process with a log holding `forged` nodes, and replicates with
/// every peer it meets, until the returned task is aborted.
fn forger(hub: &TestHub, app: &str, log: Log) -> tokio::task::JoinHandle<()> {
    let url = hub.url();
    let app = app.to_string();
    hub.runtime.spawn(async move {
        let options = SwarmOptions {
            udp_addrs: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)],
            ..SwarmOptions::default()
        };
        let mut swarm = Swarm::join([url], &app, options)
            .await
            .expect("the forger joins");
        while let Some(event) = swarm.next_event().await {
            if let SwarmEvent::Connected { peer, .. } = event {
                let log = log.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let options = ReplicateOptions {
                        live: Some(true),
                        ..ReplicateOptions::default()
                    };
                    let _ = Replication::new(&log, options).run(peer.stream()).await;
                    peer.close().await;
                });
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn keygen_sign_and_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();

    // keygen: PUBLIC KEY: <hex>, and keys.json as JSON.stringify({publicKey, secretKey}).
    let out = run_ok(dir, &["keygen"]);
    let text = std::fs::read_to_string(dir.join("keys.json")).expect("keys.json");
    let keys: Value = serde_json::from_str(&text).expect("JSON");
    let public_key = keys["publicKey"].as_str().expect("publicKey");
    let secret_key = keys["secretKey"].as_str().expect("secretKey");
    assert_eq!(out, format!("PUBLIC KEY: {public_key}\n"));
    assert_eq!(
        text,
        format!(r#"{{"publicKey":"{public_key}","secretKey":"{secret_key}"}}"#)
    );
    assert_eq!(public_key.len(), 64);
    assert_eq!(secret_key.len(), 128);
    // libsodium's layout: seed || public key.
    assert_eq!(&secret_key[64..], public_key);
    let keypair = Keypair::from_secret_key(&unhex(secret_key)).expect("a libsodium secret key");
    assert_eq!(hex(&keypair.public_key()), public_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("keys.json"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys.json is readable by others: {mode:o}");
    }

    // An account is never overwritten by accident.
    let again = run(dir, &["keygen"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("exists already") && stderr(&again).contains("--force"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("keys.json")).expect("keys.json"),
        text
    );

    // sign: the hex detached signature of the message's UTF-8 bytes.
    let sig = run_ok(dir, &["sign", "hello london!"]);
    let sig = sig.trim_end();
    assert_eq!(sig.len(), 128, "{sig:?}");
    assert_eq!(
        unhex(sig),
        keypair.sign(b"hello london!").to_vec(),
        "Ed25519 is deterministic"
    );

    // verify: `true`, with the keys file or a public key.
    assert_eq!(run_ok(dir, &["verify", sig, "hello london!"]), "true\n");
    assert_eq!(
        run_ok(
            dir,
            &["verify", sig, "hello london!", "--public-key", public_key]
        ),
        "true\n"
    );

    // A bad signature: `false`, a message, exit 1.
    for (sig, message) in [
        (sig.to_string(), "hello paris!"),
        (
            format!(
                "{}{}",
                &sig[..127],
                if sig.ends_with('0') { "1" } else { "0" }
            ),
            "hello london!",
        ),
    ] {
        let out = run(dir, &["verify", &sig, message]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(stdout(&out), "false\n");
        assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    }

    // Another account's key refuses it too.
    let other = keygen(dir, "other.json");
    let out = run(
        dir,
        &["verify", sig, "hello london!", "--public-key", &other],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "false\n");

    // Malformed input is an error, not `false`.
    let out = run(dir, &["verify", "not-hex", "hello london!"]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("128 hex characters"),
        "{}",
        stderr(&out)
    );

    // --force replaces the account.
    let out = run_ok(dir, &["keygen", "--force"]);
    assert!(out.starts_with("PUBLIC KEY: ") && !out.contains(public_key));
    let out = run(dir, &["verify", sig, "hello london!"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn keys_and_signatures_match_sodium_signatures() {
    require_js();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    keygen(dir, "keys.json");
    let sig = run_ok(dir, &["sign", "hello london!"]);
    // The talk's sign and verify scripts, on sodium-signatures instead of chloride.
    let script = r#"
        const s = require('sodium-signatures')
        const keys = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8'))
        const msg = Buffer.from('hello london!')
        const sig = s.sign(msg, Buffer.from(keys.secretKey, 'hex'))
        console.log(sig.toString('hex'))
        console.log(s.verify(msg, Buffer.from(process.argv[2], 'hex'), Buffer.from(keys.publicKey, 'hex')))
    "#;
    let out = Command::new("node")
        .current_dir(js_dir())
        .args(["-e", script])
        .arg(dir.join("keys.json"))
        .arg(sig.trim_end())
        .output()
        .expect("run node");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}true\n", sig));
}

#[test]
fn followers_host_the_feed_and_refuse_forgeries() {
    let started = Instant::now();
    let hub = TestHub::start();
    let url = hub.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let public_key = keygen(dir, "keys.json");
    let keypair = {
        let keys: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("keys.json")).expect("keys.json"),
        )
        .expect("JSON");
        Keypair::from_secret_key(&unhex(keys["secretKey"].as_str().expect("secretKey")))
            .expect("keypair")
    };

    // The publisher appends lines and prints their keys (an empty line is skipped).
    let mut publisher = publisher(dir, &url, "keys.json");
    let lines = ["hello london!", "a signed feed", "ünïcödé ✓"];
    for line in lines {
        publisher.write_line(line);
    }
    publisher.write_line("");
    let mut keys = Vec::new();
    for line in lines {
        let key = publisher.next_line(&format!("the key of {line:?}"));
        assert_eq!(key.len(), 64, "{key:?}");
        keys.push(key);
    }
    // The first entry links nothing: its key is the framed sha256 of the value alone.
    assert_eq!(
        keys[0],
        swarm::Key::compute(&[], lines[0].as_bytes()).to_hex()
    );

    // Two forgers in the same swarm: one signs with another key, one claims the feed's key
    // with a signature that is not its.
    let other = Keypair::generate().expect("a keypair");
    let forged_other = Log::memory(LogOptions {
        keypair: Some(other.clone()),
        verifier: None,
    })
    .expect("log");
    forged_other
        .append(b"FORGED by another key".to_vec())
        .expect("append");
    let forged_claim = Log::memory(LogOptions::default()).expect("log");
    let mut node = Node::new(
        vec![],
        b"FORGED under the feed's key".to_vec(),
        "forger".into(),
        1,
        0,
    );
    node.identity = Some(keypair.public_key().to_vec());
    node.signature = Some(other.sign_key(&node.key).to_vec());
    let claimed_key = node.key.to_hex();
    forged_claim
        .receive(&node)
        .expect("an unverified log takes it");
    let forgers = [
        forger(&hub, &public_key, forged_other),
        forger(&hub, &public_key, forged_claim),
    ];

    // Subscriber 1 follows: every entry, in order, and none of the forgeries, which it refuses.
    let mut sub1 = subscriber(dir, &url, &public_key, "subscriber 1");
    for line in lines {
        assert_eq!(sub1.next_line(&format!("entry {line:?}")), line);
    }
    sub1.wait_stderr(
        "both forgeries refused",
        &[
            &format!(
                "invalid signature on node {}",
                swarm::Key::compute(&[], b"FORGED by another key").to_hex()
            ),
            "is not an allowed key",
            &format!("invalid signature on node {claimed_key}: invalid signature"),
        ],
    );

    // Live: a new line reaches the follower.
    publisher.write_line("live from the publisher");
    let key = publisher.next_line("the live entry's key");
    assert!(key.len() == 64 && !keys.contains(&key), "{key:?}");
    assert_eq!(sub1.next_line("the live entry"), "live from the publisher");

    // The publisher refused the forgers too, and leaves cleanly on SIGTERM.
    publisher.wait_stderr(
        "the publisher refusing forgeries",
        &["is not an allowed key"],
    );
    publisher.close_stdin();
    publisher.wait_stderr("stdin's end", &["stdin ended; still serving"]);
    let status = publisher.terminate();
    assert!(status.success(), "{status}: {}", publisher.diagnostics());
    assert_eq!(
        publisher.drain(Duration::from_millis(100)),
        Vec::<String>::new()
    );
    drop(publisher);

    // Subscriber 2 arrives after the publisher left and gets every entry from subscriber 1.
    let mut sub2 = subscriber(dir, &url, &public_key, "subscriber 2");
    let mut expected: Vec<&str> = lines.to_vec();
    expected.push("live from the publisher");
    for line in &expected {
        assert_eq!(sub2.next_line(&format!("entry {line:?}")), *line);
    }
    sub2.wait_stderr(
        "both forgeries refused",
        &[
            "is not an allowed key",
            &format!("invalid signature on node {claimed_key}: invalid signature"),
        ],
    );

    // Nothing else was ever printed.
    for sub in [&mut sub1, &mut sub2] {
        assert_eq!(sub.drain(Duration::from_millis(500)), Vec::<String>::new());
        assert!(
            !sub.seen.iter().any(|l| l.contains("FORGED")),
            "{:?}",
            sub.seen
        );
    }
    for sub in [&mut sub1, &mut sub2] {
        let status = sub.terminate();
        assert!(status.success(), "{status}: {}", sub.diagnostics());
    }
    for forger in forgers {
        forger.abort();
    }
    eprintln!("followers test took {:?}", started.elapsed());
}

#[test]
fn rust_follows_the_talks_js_publisher() {
    require_js();
    let started = Instant::now();
    let hub = TestHub::start();
    let url = hub.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let public_key = keygen(dir, "keys.json");
    let keys_path = dir.join("keys.json");
    let keys_path = keys_path.to_str().expect("UTF-8 path");

    let mut js = node("feed-publisher.mjs", &["--keys", keys_path, "--hub", &url]);
    let ready = js.wait_json("ready", |e| e["event"] == "ready");
    assert_eq!(ready["publicKey"], public_key.as_str());
    let lines = ["from node", "hyperlog-sodium 2 signed ✓"];
    for line in lines {
        js.write_line(line);
    }
    let mut keys = Vec::new();
    for line in lines {
        let appended = js.wait_json(&format!("the append of {line:?}"), |e| {
            e["event"] == "append"
        });
        keys.push(appended["key"].as_str().expect("key").to_string());
    }
    assert_eq!(
        keys[0],
        swarm::Key::compute(&[], lines[0].as_bytes()).to_hex()
    );

    let mut sub = subscriber(dir, &url, &public_key, "rust subscriber");
    for line in lines {
        assert_eq!(sub.next_line(&format!("entry {line:?}")), line);
    }
    js.write_line("live from node");
    js.wait_json("the live append", |e| e["event"] == "append");
    assert_eq!(sub.next_line("the live entry"), "live from node");
    assert_eq!(sub.drain(Duration::from_millis(300)), Vec::<String>::new());
    assert!(
        !js.seen.iter().any(|l| l.contains("replication-error")),
        "{}",
        js.diagnostics()
    );
    let status = sub.terminate();
    assert!(status.success(), "{status}: {}", sub.diagnostics());
    eprintln!("JS publisher test took {:?}", started.elapsed());
}

#[test]
fn the_talks_js_subscriber_follows_a_rust_feed() {
    require_js();
    let started = Instant::now();
    let hub = TestHub::start();
    let url = hub.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let public_key = keygen(dir, "keys.json");

    let mut publisher = publisher(dir, &url, "keys.json");
    let lines = ["from rust", "signed in rust ✓"];
    for line in lines {
        publisher.write_line(line);
    }
    let mut keys = Vec::new();
    for line in lines {
        keys.push(publisher.next_line(&format!("the key of {line:?}")));
    }

    let mut js = node("feed-subscriber.mjs", &[&public_key, "--hub", &url]);
    for (line, key) in lines.iter().zip(&keys) {
        let entry = js.wait_json(&format!("entry {line:?}"), |e| e["event"] == "entry");
        assert_eq!(entry["value"], *line);
        assert_eq!(entry["key"], key.as_str());
        assert_eq!(entry["identity"], public_key.as_str());
    }
    publisher.write_line("live from rust");
    let key = publisher.next_line("the live key");
    let entry = js.wait_json("the live entry", |e| e["event"] == "entry");
    assert_eq!(entry["value"], "live from rust");
    assert_eq!(entry["key"], key.as_str());
    assert_eq!(entry["links"], serde_json::json!([keys[1]]));
    assert!(
        !js.seen.iter().any(|l| l.contains("replication-error")),
        "{}",
        js.diagnostics()
    );
    let status = publisher.terminate();
    assert!(status.success(), "{status}: {}", publisher.diagnostics());
    eprintln!("JS subscriber test took {:?}", started.elapsed());
}

#[test]
fn a_publisher_never_signs_entries_that_peers_slip_into_its_log() {
    let started = Instant::now();
    let hub = TestHub::start();
    let url = hub.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let public_key = keygen(dir, "keys.json");

    let mut publisher = publisher(dir, &url, "keys.json");
    let lines = ["first", "second"];
    for line in lines {
        publisher.write_line(line);
    }
    let k1 = publisher.next_line("the first key");
    let k2 = publisher.next_line("the second key");
    // The publisher's local log id is public: every Have it sends names it.
    let joined = publisher.stderr_line("the local log id", "(local log id ");
    let log_id = log_id(&joined);

    // A peer holds copies of the feed's entries and one more, unsigned, as the next entry of
    // the publisher's own log. hyperlog would sign that one with the publisher's key.
    let forged = Log::memory(LogOptions::default()).expect("log");
    let parse = |k: &str| swarm::Key::parse(k).expect("a key");
    for node in [
        Node::new(vec![], b"first".to_vec(), log_id.clone(), 1, 0),
        Node::new(vec![parse(&k1)], b"second".to_vec(), log_id.clone(), 2, 0),
        Node::new(
            vec![parse(&k2)],
            b"FORGED into the publisher's own log".to_vec(),
            log_id.clone(),
            3,
            0,
        ),
    ] {
        forged.receive(&node).expect("an unverified log takes it");
    }
    let forger = forger(&hub, &public_key, forged);
    publisher.wait_stderr(
        "the publisher refusing the slipped-in entry",
        &["invalid signature on node", "the node has no identity"],
    );

    // A follower gets the real entries only; the forger's unsigned copies are refused.
    let mut sub = subscriber(dir, &url, &public_key, "subscriber");
    for line in lines {
        assert_eq!(sub.next_line(&format!("entry {line:?}")), line);
    }
    // Before the feed's third entry exists, the forger's third is something the follower
    // wants: so it meets it, and refuses it.
    sub.wait_stderr("the forger refused", &["the node has no identity"]);
    publisher.write_line("third");
    let k3 = publisher.next_line("the third key");
    assert_ne!(k3, k2);
    assert_eq!(sub.next_line("the live entry"), "third");
    assert_eq!(sub.drain(Duration::from_millis(500)), Vec::<String>::new());
    assert!(
        !sub.seen.iter().any(|l| l.contains("FORGED")),
        "{:?}",
        sub.seen
    );
    forger.abort();
    eprintln!("slipped-entry test took {:?}", started.elapsed());
}

#[test]
fn durable_feeds_survive_restarts() {
    let started = Instant::now();
    let hub = TestHub::start();
    let url = hub.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let public_key = keygen(dir, "keys.json");
    let pub_data = ["--data", "pub-data"];
    let sub_data = ["--data", "sub-data"];

    // Two entries, a clean stop, a restart, a third entry: it links the second (the log and
    // its local id lived on disk).
    let mut publisher = publisher_with(dir, &url, "keys.json", &pub_data);
    publisher.write_line("a");
    publisher.write_line("b");
    publisher.next_line("the key of a");
    let kb = publisher.next_line("the key of b");
    let first_id = publisher.stderr_line("the log id", "(local log id ");
    let first_id = log_id(&first_id);
    assert!(publisher.terminate().success());
    drop(publisher);
    // A backup of the publisher's data as it is now (a and b).
    std::fs::create_dir(dir.join("pub-backup")).expect("mkdir");
    for file in ["public-key", "feed.redb"] {
        std::fs::copy(
            dir.join("pub-data").join(file),
            dir.join("pub-backup").join(file),
        )
        .expect("copy");
    }
    let mut publisher = publisher_with(dir, &url, "keys.json", &pub_data);
    publisher.write_line("c");
    let kc = publisher.next_line("the key of c");
    let kb = swarm::Key::parse(&kb).expect("a key");
    assert_eq!(kc, swarm::Key::compute(&[kb], b"c").to_hex());
    let again_id = publisher.stderr_line("the log id", "(local log id ");
    assert_eq!(log_id(&again_id), first_id);

    // A durable follower gets all three; once every peer is gone, a restart prints them again
    // from its own disk.
    let mut sub = subscriber_with(dir, &url, &public_key, "subscriber", &sub_data);
    for line in ["a", "b", "c"] {
        assert_eq!(sub.next_line(&format!("entry {line:?}")), line);
    }
    assert!(publisher.terminate().success());
    assert!(sub.terminate().success());
    drop((publisher, sub));
    let mut sub = subscriber_with(dir, &url, &public_key, "subscriber", &sub_data);
    for line in ["a", "b", "c"] {
        assert_eq!(sub.next_line(&format!("stored entry {line:?}")), line);
    }

    // The publisher restored from the backup gets c back from its follower (c claims the
    // publisher's own log, and is properly signed), so its next entry follows c.
    let mut publisher = publisher_with(dir, &url, "keys.json", &["--data", "pub-backup"]);
    publisher.wait_stderr("c from the follower", &["received 1); following live"]);
    publisher.write_line("d");
    let kd = publisher.next_line("the key of d");
    let kc = swarm::Key::parse(&kc).expect("a key");
    assert_eq!(kd, swarm::Key::compute(&[kc], b"d").to_hex());
    assert_eq!(sub.next_line("entry \"d\""), "d");
    assert!(
        !publisher.diagnostics().contains("own log"),
        "{}",
        publisher.diagnostics()
    );
    assert!(publisher.terminate().success());
    assert!(sub.terminate().success());
    drop((publisher, sub));

    // A data directory belongs to one feed.
    let other = keygen(dir, "other.json");
    let args = ["subscribe", &other, "--hub", &url, "--data", "sub-data"];
    let out = run(dir, &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds the feed of"),
        "{}",
        stderr(&out)
    );
    let args = [
        "publish",
        "--keys",
        "other.json",
        "--hub",
        &url,
        "--data",
        "pub-data",
    ];
    let out = run(dir, &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds the feed of"),
        "{}",
        stderr(&out)
    );
    eprintln!("durable test took {:?}", started.elapsed());
}
