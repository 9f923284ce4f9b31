//! Driving the Node scripts of `js/` from tests: the setup check that fails (never skips) with the
//! command that installs what is missing, and a script spoken to over stdin (one JSON command a
//! line) and heard over stdout (one JSON event a line).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

pub fn js_dir() -> PathBuf {
    // Included by member crates' tests (`signalhub/`, `swarm/`) and by the root package's.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = if manifest.join("js").is_dir() {
        manifest
    } else {
        manifest.join("..")
    };
    root.join("js")
}

/// Fails (never skips) when Node or the npm packages are missing, naming the setup command.
pub fn require_js_setup(packages: &[(&str, Option<&str>)]) -> PathBuf {
    let dir = js_dir();
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "`node --version` failed ({other:?}): install Node.js 20, then run `npm ci --prefix js` in the workspace root"
        ),
    }
    for (package, version) in packages {
        let manifest = dir.join("node_modules").join(package).join("package.json");
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|err| {
            panic!(
                "{} is missing ({err}): run `npm ci --prefix js` in the workspace root",
                manifest.display()
            )
        });
        let found: Value = serde_json::from_str(&text).expect("package.json is JSON");
        let Some(version) = version else { continue };
        assert_eq!(
            found["version"],
            json!(version),
            "js/node_modules/{package} is not version {version}: run `npm ci --prefix js` in the workspace root"
        );
    }
    dir
}

/// A Node script of `js/`, spoken to over stdin and heard over stdout.
pub struct NodeScript {
    name: String,
    /// The longest wait for one event.
    step: Duration,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Events read but not yet asked for.
    backlog: VecDeque<Value>,
    /// Every event read, for failure messages.
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl NodeScript {
    pub fn spawn(script: &str, args: &[&str], step: Duration) -> NodeScript {
        let dir = js_dir();
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run `node {script}`: {err}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        NodeScript {
            name: format!("{script} {}", args.join(" ")),
            step,
            stdin: child.stdin.take(),
            child,
            lines,
            backlog: VecDeque::new(),
            seen: Vec::new(),
            stderr,
        }
    }

    pub fn diagnostics(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".to_string(),
            Err(err) => err.to_string(),
        };
        format!(
            "`node {}` ({status})\nevents so far:\n{}\nstderr:\n{}",
            self.name,
            self.seen
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    pub fn send(&mut self, command: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        let written = writeln!(stdin, "{command}").and_then(|()| stdin.flush());
        if let Err(err) = written {
            let diagnostics = self.diagnostics();
            panic!("cannot send {command} ({err}) to {diagnostics}");
        }
    }

    /// The first event (read before or now) that `matches`, waiting at most the script's step.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(at) = self.backlog.iter().position(&matches) {
            return self.backlog.remove(at).expect("position is in range");
        }
        let deadline = tokio::time::Instant::now() + self.step;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let event: Value = serde_json::from_str(&line).unwrap_or_else(|err| {
                        panic!(
                            "`node {}` wrote a line that is not JSON ({err}): {line}",
                            self.name
                        )
                    });
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return event;
                    }
                    self.backlog.push_back(event);
                }
                Ok(None) => {
                    // Give the process a moment to be reaped, for its exit status.
                    for _ in 0..50 {
                        if let Ok(Some(_)) = self.child.try_wait() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let diagnostics = self.diagnostics();
                    panic!("stdout ended while waiting for {what} from {diagnostics}");
                }
                Err(_) => {
                    let diagnostics = self.diagnostics();
                    panic!("waited {:?} for {what} from {diagnostics}", self.step);
                }
            }
        }
    }

    pub async fn wait_event(&mut self, name: &str) -> Value {
        self.wait_for(&format!("event {name:?}"), |e| e["event"] == name)
            .await
    }

    /// Sends `close`, waits for the script to confirm and exit 0, and returns the events never
    /// asked for.
    pub async fn close(mut self) -> Vec<Value> {
        self.send(json!({"cmd": "close"}));
        self.wait_event("closed").await;
        drop(self.stdin.take());
        let deadline = Instant::now() + self.step;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                break status;
            }
            if Instant::now() > deadline {
                let diagnostics = self.diagnostics();
                panic!("the script did not exit after close: {diagnostics}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !status.success() {
            let diagnostics = self.diagnostics();
            panic!("the script failed: {diagnostics}");
        }
        // Anything written before `closed` is in the channel already.
        while let Ok(line) = self.lines.try_recv() {
            if let Ok(event) = serde_json::from_str(&line) {
                self.backlog.push_back(event);
            }
        }
        self.backlog.drain(..).collect()
    }
    /// Waits for the script to exit by itself, and fails if it did not succeed.
    pub async fn wait_exit(&mut self) {
        let deadline = Instant::now() + self.step;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                if !status.success() {
                    let diagnostics = self.diagnostics();
                    panic!("the script failed: {diagnostics}");
                }
                return;
            }
            if Instant::now() > deadline {
                let diagnostics = self.diagnostics();
                panic!("the script did not exit: {diagnostics}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the script now if it is still running.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        self.kill();
    }
}
