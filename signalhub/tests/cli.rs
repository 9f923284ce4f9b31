//! The `signalhub` binary as users run it: `listen` (as the container runs it: `PORT=… signalhub
//! listen`), graceful exit on SIGTERM/SIGINT, TLS, and the `subscribe`/`broadcast` commands.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_signalhub");

/// A `signalhub listen` process and the port it reported.
struct Listener {
    child: Child,
    port: u16,
    stderr: mpsc::Receiver<String>,
}

fn listen(args: &[&str]) -> Listener {
    let mut child = Command::new(BIN)
        .arg("listen")
        .args(args)
        .env("PORT", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start signalhub listen");
    let (lines, stderr) = mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + STEP;
    let port = loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the hub says where it listens");
        if let Some(rest) = line.split("listening on port ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    Listener {
        child,
        port,
        stderr,
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the hub exits in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_serves_and_exits_cleanly_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let mut hub = listen(&["--host", "127.0.0.1"]);
        let addr = format!("127.0.0.1:{}", hub.port).parse().unwrap();
        let health = request(addr, "GET", "/health", b"").await;
        assert_eq!(health.status, 200);
        // The container's HEALTHCHECK command.
        let probe = Command::new(BIN)
            .arg("health")
            .env("PORT", hub.port.to_string())
            .output()
            .unwrap();
        assert!(
            probe.status.success(),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&probe.stdout), "ok\n");
        let mut sub = SseClient::connect(addr, "/v1/app/ch").await;
        signal(&hub.child, sig);
        assert_eq!(
            sub.next_frame().await,
            None,
            "the stream ends cleanly on SIG{sig}"
        );
        assert!(sub.ended);
        let status = tokio::task::spawn_blocking(move || wait_exit(&mut hub.child))
            .await
            .unwrap();
        assert!(status.success(), "exit status after SIG{sig}: {status}");
        drop(hub.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_prints_json_lines_and_broadcast_sends_them() {
    let hub = start_hub(unlimited()).await;
    let port = hub.local_addr().port();
    // No scheme: `http://` is assumed (and the JS CLI's host:port mix-up, issue #35, is gone).
    let hub_arg = format!("127.0.0.1:{port}");
    let mut subscriber = Command::new(BIN)
        .args(["subscribe", "app", "ch,other", "--hub", &hub_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_subscribers(&hub, 2).await;
    for (channel, json) in [("ch", r#"{"b":1,"a":[true,null]}"#), ("other", r#""x""#)] {
        let output = Command::new(BIN)
            .args([
                "broadcast",
                "app",
                channel,
                json,
                "--hub",
                &format!("http://{hub_arg}/"),
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = subscriber.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(2)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    });
    let lines = tokio::time::timeout(STEP, lines).await.unwrap().unwrap();
    assert_eq!(lines, [r#"{"b":1,"a":[true,null]}"#, r#""x""#]);
    subscriber.kill().unwrap();
    let _ = subscriber.wait();
}

#[test]
fn broadcast_errors_are_clear_and_exit_nonzero() {
    let output = Command::new(BIN)
        .args([
            "broadcast",
            "app",
            "ch",
            "{not json",
            "--hub",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not JSON"));

    let output = Command::new(BIN)
        .args(["broadcast", "app", "ch", "{}", "--hub", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reached no hub") && stderr.contains("http://127.0.0.1:9"),
        "{stderr}"
    );

    let output = Command::new(BIN)
        .args(["health", "--url", "http://127.0.0.1:9/health"])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "health fails when nothing answers"
    );

    let output = Command::new(BIN)
        .args(["listen", "--key", "k.pem"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "--key needs --cert");
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_serves_https_with_key_and_cert() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key_path = dir.path().join("key.pem");
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    let mut hub = listen(&[
        "--host",
        "127.0.0.1",
        "--key",
        key_path.to_str().unwrap(),
        "--cert",
        cert_path.to_str().unwrap(),
    ]);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve(
            "localhost",
            format!("127.0.0.1:{}", hub.port).parse().unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", hub.port);
    let mut stream = http.get(format!("{base}/v1/app/ch")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let post = http
        .post(format!("{base}/v1/app/ch"))
        .body("{\"tls\":true}")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    let chunk = tokio::time::timeout(STEP, stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..], b"data: {\"tls\":true}\n\n");
    signal(&hub.child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut hub.child))
        .await
        .unwrap();
    assert!(status.success());
}
