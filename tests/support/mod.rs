//! What the example tests share: finding an example's executable (the one `cargo test` builds
//! next to the test binaries), and reading a child process's output while it runs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{mpsc, Arc, Mutex};

/// The executable of `examples/<name>.rs`, next to this test's (`target/<profile>/deps/…`).
/// Fails, naming the command that builds it, when it is missing or older than its source.
pub fn example(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the test executable");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let exe = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.exists(),
        "{} is missing: a plain `cargo test` builds it; with a filter, run \
         `cargo build --example {name}` first",
        exe.display()
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(src), Some(bin)) = (modified(&source), modified(&exe)) {
        assert!(
            bin >= src,
            "{} is older than examples/{name}.rs: run `cargo build --example {name}` (or a plain \
             `cargo test`)",
            exe.display()
        );
    }
    exe
}

/// The `signalhub` binary `cargo test` builds next to the test binaries (`target/<profile>/`).
/// Fails, naming the command that builds it, when it is missing.
pub fn signalhub_binary() -> PathBuf {
    let me = std::env::current_exe().expect("the test executable");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let exe = profile_dir.join(format!("signalhub{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.exists(),
        "{} is missing: a plain `cargo test` builds it; with a filter, run `cargo build -p signalhub` first",
        exe.display()
    );
    exe
}

/// `js/`, where the Node scripts and their packages are.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// The lines of a piped stdout, as they come, from a reader thread.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Everything a piped stderr writes, collected by a reader thread (for failure messages).
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
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
    stderr
}
