//! The NAT lab from Rust: a test internet of network namespaces made by `tests/netlab/netlab.sh`,
//! the processes started inside it (the hub and coturn on the "internet" segment, peers in the
//! homes), their logs, and its teardown. Shared by `tests/nat.rs` and the swarm benchmark
//! (`benches/swarmbench.rs --nat`), which include it with `#[path]`.
//!
//! Needs root, iproute2, nftables and coturn; a missing one fails with the command that
//! installs it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The lab script, shared with CI and the benchmark.
pub fn netlab_script() -> PathBuf {
    repo_root().join("tests/netlab/netlab.sh")
}

/// The repository's root: this file is included by the `swarm` crate's tests and benchmark and
/// by the root package's tests.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("tests/netlab").is_dir() {
        manifest.to_path_buf()
    } else {
        manifest.join("..")
    }
}

/// The "internet" address the hub and coturn listen on (see netlab.sh).
pub const INET: &str = "198.51.100.2";
/// coturn's second address: a second STUN server (see netlab.sh).
pub const INET_2: &str = "198.51.100.3";
pub const HUB_PORT: u16 = 8080;
pub const TURN_PORT: u16 = 3478;
/// The secret coturn and the credentials share (`use-auth-secret`).
pub const TURN_SECRET: &str = "netlab-secret";

static LAB_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Fails, naming the setup command, unless everything the lab needs is here.
pub fn require_lab_tools() {
    let uid = Command::new("id").arg("-u").output().expect("run `id -u`");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the NAT lab needs root (network namespaces, nftables)"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("turnserver", "coturn"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|out| out.status.success());
        assert!(
            found,
            "`{tool}` is missing: apt-get install coturn nftables iproute2 (package {package})"
        );
    }
}

/// A lab made by `netlab.sh up`, torn down (with everything running in it) when dropped, also
/// when the test fails.
pub struct Lab {
    pub prefix: String,
    pub vars: HashMap<String, String>,
    pub dir: tempfile::TempDir,
    pub processes: Vec<Proc>,
}

impl Lab {
    /// `homes`: (name, NAT kind), e.g. `("a", "cone")`.
    pub fn up(homes: &[(&str, &str)]) -> Lab {
        require_lab_tools();
        let prefix = format!(
            "nat{}x{}",
            std::process::id(),
            LAB_COUNT.fetch_add(1, Ordering::SeqCst)
        );
        let mut command = Command::new("bash");
        command.arg(netlab_script()).arg("up").arg(&prefix);
        for (name, kind) in homes {
            command.arg(format!("{name}:{kind}"));
        }
        // A lab value first, so a failing `up` is still torn down.
        let mut lab = Lab {
            prefix,
            vars: HashMap::new(),
            // NAT_LOG_DIR keeps every process's log there (for a look after the test).
            dir: match std::env::var_os("NAT_LOG_DIR") {
                Some(dir) => tempfile::Builder::new()
                    .prefix("nat-")
                    .disable_cleanup(true)
                    .tempdir_in(dir)
                    .expect("a directory in NAT_LOG_DIR"),
                None => tempfile::tempdir().expect("a temporary directory"),
            },
            processes: Vec::new(),
        };
        let out = command.output().expect("run netlab.sh");
        assert!(
            out.status.success(),
            "netlab.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        lab
    }

    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("netlab.sh did not print {key}"))
    }

    pub fn home_ns(&self, home: &str) -> String {
        self.var(&format!("HOME_NS_{home}")).to_string()
    }

    /// UDP datagrams the kernel dropped in namespace `ns` for want of room in a socket's
    /// receive buffer (`Udp: RcvbufErrors` of its `/proc/net/snmp`), since it was made.
    pub fn udp_receive_drops(&self, ns: &str) -> u64 {
        let [drops] = self.udp_counters(ns, ["RcvbufErrors"]);
        drops
    }

    /// UDP datagrams sent and received in namespace `ns` since it was made (`Udp: OutDatagrams`
    /// and `InDatagrams` of its `/proc/net/snmp`, from one reading).
    pub fn udp_datagrams(&self, ns: &str) -> (u64, u64) {
        let [sent, received] = self.udp_counters(ns, ["OutDatagrams", "InDatagrams"]);
        (sent, received)
    }

    /// Counters of the `Udp:` lines of namespace `ns`'s `/proc/net/snmp`, read once.
    fn udp_counters<const N: usize>(&self, ns: &str, names: [&str; N]) -> [u64; N] {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
            .output()
            .expect("run ip netns exec");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut udp = text.lines().filter(|line| line.starts_with("Udp:"));
        let (Some(fields), Some(values)) = (udp.next(), udp.next()) else {
            panic!("no Udp lines in {ns}'s /proc/net/snmp: {text}");
        };
        names.map(|name| {
            fields
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(field, _)| *field == name)
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {ns}'s /proc/net/snmp: {text}"))
        })
    }

    /// CPU time (user + system) process `index` has used so far, from `/proc/<pid>/stat`
    /// (`ip netns exec` runs the program in its own process).
    pub fn cpu_time(&self, index: usize) -> Duration {
        let pid = self.processes[index].child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        // USER_HZ is 100 on every Linux architecture this runs on.
        Duration::from_millis(ticks * 10)
    }

    pub fn wan(&self, home: &str) -> String {
        self.var(&format!("WAN_ADDR_{home}")).to_string()
    }

    /// Starts `program args` in namespace `ns`; its stdout lines come through the receiver,
    /// its stderr goes to a file in the lab's directory (shown when a test fails).
    pub fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> (usize, mpsc::Receiver<Line>) {
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("create a log file");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} in {ns}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines() {
                let Ok(text) = text else { break };
                let line = Line {
                    at: Instant::now(),
                    text,
                };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.processes.push(Proc {
            name: name.to_string(),
            child,
            log: log_path,
        });
        (self.processes.len() - 1, lines)
    }

    /// The stderr a process wrote so far.
    pub fn log_of(&self, index: usize) -> String {
        std::fs::read_to_string(&self.processes[index].log).unwrap_or_default()
    }

    /// Starts the hub on the internet segment, with `extra` flags, and waits until it listens.
    pub fn start_hub(&mut self, extra: &[&str]) {
        let hub = hub_binary();
        let mut args: Vec<String> = [
            "listen",
            "--host",
            INET,
            "--port",
            &HUB_PORT.to_string(),
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let ns = self.var("INET_NS").to_string();
        let (index, _) = self.spawn("hub", &ns, &hub, &args, &[]);
        self.wait_for_log(index, "listening", "the hub to listen");
    }

    /// Starts coturn on the internet segment with time-limited credentials (`use-auth-secret`),
    /// UDP and TCP on 3478, and waits until its relay is ready.
    pub fn start_coturn(&mut self) -> usize {
        let dir = self.dir.path().to_path_buf();
        let args: Vec<String> = [
            "-n",
            "--listening-ip",
            INET,
            "--listening-ip",
            INET_2,
            "--relay-ip",
            INET,
            "--listening-port",
            &TURN_PORT.to_string(),
            "--realm",
            "netlab",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--fingerprint",
            "--use-auth-secret",
            "--static-auth-secret",
            TURN_SECRET,
            "--pidfile",
            &dir.join("turnserver.pid").to_string_lossy(),
            "--userdb",
            &dir.join("turndb").to_string_lossy(),
            "--log-file",
            "stdout",
            "--simple-log",
            "--verbose",
            // One relay thread (see `start_coturn`'s doc).
            "--relay-threads",
            "1",
            // As production configurations do (no relaying into private networks): the homes'
            // host addresses are refused, which the engine's permission requests then meet.
            "--denied-peer-ip",
            "10.0.0.0-10.255.255.255",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ns = self.var("INET_NS").to_string();
        let (index, lines) = self.spawn("coturn", &ns, Path::new("turnserver"), &args, &[]);
        // coturn logs to stdout: copy it into its log file, and wait for its relay.
        let log = self.processes[index].log.clone();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(log).ok();
            let mut ready_tx = Some(ready_tx);
            for Line { text: line, .. } in lines {
                if let Some(file) = file.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                if line.contains("Relay ports initialization done") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        if ready.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!("coturn did not start:\n{}", self.log_of(index));
        }
        // Its listeners open right after the relay ports.
        std::thread::sleep(Duration::from_millis(300));
        index
    }

    pub fn wait_for_log(&self, index: usize, needle: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log_of(index).contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {what} in 10 s:\n{}", self.log_of(index));
    }

    /// Starts a JS webrtc-swarm peer in `home`, taking its ICE servers from the hub as a
    /// webrtc-swarm user would: in Node (js/swarm-peer.mjs, @roamhq/wrtc) or in headless Chromium
    /// (js/swarm-browser.mjs, the browser's own WebRTC, started inside the home's namespace).
    /// Returns the process's index and its stdout lines (JSON events and replies).
    pub fn start_js_peer(
        &mut self,
        home: &str,
        app: &str,
        js: JsPeer,
    ) -> (usize, mpsc::Receiver<Line>) {
        let js_dir = repo_root().join("js");
        let modules = js_dir.join("node_modules/webrtc-swarm");
        assert!(
            modules.exists(),
            "{} is missing: run `npm ci --prefix js` (Node.js 20)",
            modules.display()
        );
        let script = match js {
            JsPeer::Node => js_dir.join("swarm-peer.mjs"),
            JsPeer::Chromium => {
                let bundle = js_dir.join("dist/swarm-page.js");
                assert!(
                    bundle.exists(),
                    "{} is missing: run `npm ci --prefix js` (it builds the page bundle)",
                    bundle.display()
                );
                assert!(
                    Path::new("/usr/bin/chromium").exists(),
                    "/usr/bin/chromium is missing: apt-get install chromium"
                );
                js_dir.join("swarm-browser.mjs")
            }
        };
        let config = json!({
            "hubs": [format!("http://{INET}:{HUB_PORT}")],
            "app": app,
            "iceServersFromHub": true,
            // A Rust peer sends the moment its channel opens, before the test's "sink" may have
            // reached the page (the browser driver reads commands only once the page runs).
            "sinkAll": true,
        });
        let ns = self.home_ns(home);
        self.spawn(
            &format!("{}-{home}", js.name()),
            &ns,
            Path::new("node"),
            &[script.to_string_lossy().into_owned(), config.to_string()],
            &[],
        )
    }

    /// Writes one line to a process's stdin (a command to a Node peer).
    pub fn send_line(&mut self, index: usize, line: &Value) {
        self.write_line(index, &line.to_string());
    }

    /// Writes one line of text to a process's stdin (a line typed into a chat).
    pub fn write_line(&mut self, index: usize, text: &str) {
        let stdin = self.processes[index]
            .child
            .stdin
            .as_mut()
            .expect("the process's stdin is open");
        writeln!(stdin, "{text}").expect("write a line to the process");
        stdin.flush().expect("flush the process's stdin");
    }

    /// Tells a process to leave (closes its stdin) and waits for it to exit.
    pub fn stop(&mut self, index: usize) {
        let proc = &mut self.processes[index];
        drop(proc.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = proc.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not leave within 10 s of being told to", proc.name);
    }

    /// The logs of every process, for a failure message.
    pub fn logs(&self) -> String {
        (0..self.processes.len())
            .map(|i| {
                format!(
                    "--- {} ---\n{}",
                    self.processes[i].name,
                    tail(&self.log_of(i), 40)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // A browser peer is told to leave first: its driver then closes Chromium (started by
        // playwright in a process group of its own, which killing the driver would orphan, still
        // holding the namespace) and removes the browser's profile directory.
        let deadline = Instant::now() + Duration::from_secs(15);
        for proc in &mut self.processes {
            if proc.name.starts_with(JsPeer::Chromium.name()) {
                drop(proc.child.stdin.take());
            }
        }
        for proc in &mut self.processes {
            if proc.name.starts_with(JsPeer::Chromium.name()) {
                while Instant::now() < deadline && matches!(proc.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        for proc in &mut self.processes {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        let _ = Command::new("bash")
            .arg(netlab_script())
            .arg("down")
            .arg(&self.prefix)
            .status();
    }
}

/// Where a JS webrtc-swarm peer runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum JsPeer {
    Node,
    Chromium,
}

impl JsPeer {
    pub fn name(self) -> &'static str {
        match self {
            JsPeer::Node => "node",
            JsPeer::Chromium => "chromium",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            JsPeer::Node => "Node",
            JsPeer::Chromium => "Chromium",
        }
    }
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// A line a lab process wrote on stdout, and when it was read (for timings across processes).
pub struct Line {
    pub at: Instant,
    pub text: String,
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The `signalhub` binary of this build (`target/<profile>/signalhub`, or the debug one for a
/// release benchmark); fails, naming the command that builds it, when it is missing (and warns
/// when it is older than the hub's sources).
pub fn hub_binary() -> PathBuf {
    let me = std::env::current_exe().expect("the test executable");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let name = format!("signalhub{}", std::env::consts::EXE_SUFFIX);
    let candidates = [
        profile_dir.join(&name),
        profile_dir.with_file_name("debug").join(&name),
    ];
    let Some(exe) = candidates.iter().find(|exe| exe.exists()).cloned() else {
        panic!(
            "{} is missing: run `cargo build -p signalhub` (a plain `cargo test --workspace` \
             builds it)",
            candidates[0].display()
        )
    };
    let sources = repo_root().join("signalhub/src");
    let built = std::fs::metadata(&exe).and_then(|m| m.modified()).ok();
    // A warning, not a failure: in a working tree being edited the sources are often newer than
    // the last build, and cargo, not this test, knows whether that matters.
    if let (Some(built), Some(newest)) = (built, newest_mtime(&sources)) {
        if built < newest {
            eprintln!(
                "warning: {} is older than signalhub/src: run `cargo build -p signalhub`",
                exe.display()
            );
        }
    }
    exe
}

pub fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `signalhub listen` flags that hand out the lab's STUN server and coturn (TURN over
/// `transports`) with credentials from TURN_SECRET, valid `ttl` seconds.
pub fn hub_ice_flags(transports: &[&str], ttl: u64) -> Vec<String> {
    let mut flags = vec![
        "--turn-secret".to_string(),
        TURN_SECRET.to_string(),
        "--turn-ttl".to_string(),
        ttl.to_string(),
        "--ice-server".to_string(),
        format!("stun:{INET}:{TURN_PORT}"),
        "--ice-server".to_string(),
        format!("stun:{INET_2}:{TURN_PORT}"),
    ];
    for transport in transports {
        flags.push("--ice-server".to_string());
        flags.push(match *transport {
            "udp" => format!("turn:{INET}:{TURN_PORT}"),
            other => format!("turn:{INET}:{TURN_PORT}?transport={other}"),
        });
    }
    flags
}
