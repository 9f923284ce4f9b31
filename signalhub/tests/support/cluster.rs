//! The parts of a cluster the tests start for real, shared by the hub's cluster tests and the
//! swarm's (`tests/cluster_swarm.rs` includes this file): a `redis-server` on a free loopback
//! port, `signalhub listen --redis` processes (nodes), and HAProxy in front of them with the
//! README's example configuration (`docker/haproxy.cfg`). Each is killed when dropped. Std only,
//! so any test crate can include it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start.
const START: Duration = Duration::from_secs(30);

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start redis-server ({err}): install it with `apt-get install redis-server` (bash .ci/run does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: nothing is flushed, connections are cut).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// `GET path` on `addr`, blocking: (status, body). For probing the nodes.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// One `signalhub listen --redis …` process: a node of the cluster.
pub struct Node {
    pub addr: SocketAddr,
    child: Child,
}

impl Node {
    /// Starts `binary` as a node on a free loopback port and waits until it is healthy.
    pub fn start(binary: &Path, redis: &RedisServer) -> Node {
        let port = free_port();
        let child = Command::new(binary)
            .args(["listen", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--redis", &redis.url(), "--quiet", "--trust-forwarded-for"])
            .args(["--shutdown-grace-secs", "2"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let node = Node {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        };
        let deadline = Instant::now() + START;
        while http_get(node.addr, "/health") != Some((200, "ok\n".to_string())) {
            assert!(
                Instant::now() < deadline,
                "node {} did not join its cluster",
                node.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The cluster's subscribers, as this node's `GET /` counts them.
    pub fn subscribers(&self) -> Option<i64> {
        let (_, body) = http_get(self.addr, "/")?;
        let at = body.find("\"subscribers\":")? + "\"subscribers\":".len();
        body[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// SIGKILL: no goodbye to Redis or to clients.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy in front of the nodes, configured by the README's example (`docker/haproxy.cfg`)
/// with this test's address and nodes.
pub struct LoadBalancer {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl LoadBalancer {
    pub fn start(nodes: &[&Node]) -> LoadBalancer {
        let port = free_port();
        let example = include_str!("../../../docker/haproxy.cfg");
        let mut config: String = example
            .lines()
            .filter(|line| !line.trim_start().starts_with("server node"))
            .map(|line| {
                if line.trim() == "bind :8080" {
                    format!("    bind 127.0.0.1:{port}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert!(
            config.contains(&format!("bind 127.0.0.1:{port}")),
            "the example binds :8080"
        );
        for (i, node) in nodes.iter().enumerate() {
            config.push_str(&format!("    server node{i} {} check\n", node.addr));
        }
        let dir =
            std::env::temp_dir().join(format!("signalhub-haproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let check = Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&path)
            .status()
            .unwrap_or_else(|err| {
                panic!("cannot run haproxy ({err}): install it with `apt-get install haproxy` (bash .ci/run does)")
            });
        assert!(check.success(), "haproxy refused the configuration");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        LoadBalancer { addr, child, dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
