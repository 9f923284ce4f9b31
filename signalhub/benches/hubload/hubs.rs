//! Starting, measuring and stopping the hubs under test: this crate's `signalhub`, JS signalhub,
//! or a hub given by URL.

use crate::*;

#[derive(Clone)]
pub(crate) enum Kind {
    Rust,
    Js,
    External {
        url: String,
        pid: Option<u32>,
    },
    /// The Rust hub as one node of a cluster on this Redis (`--redis URL`).
    Node {
        redis: String,
    },
}

#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) kind: Kind,
}

pub(crate) struct HubProc {
    pub(crate) addr: Arc<HubAddr>,
    pub(crate) pid: Option<u32>,
    pub(crate) child: Option<Child>,
    pub(crate) log: Option<PathBuf>,
    /// The kernel's count of connections dropped because a listen queue was full, at start.
    pub(crate) overflows_at_start: Option<u64>,
}

/// `TcpExt: ListenOverflows` of /proc/net/netstat: connection attempts dropped because the
/// listening socket's accept queue (its backlog) was full. The client retries its SYN after 1 s.
pub(crate) fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

pub(crate) fn js_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../js/node_modules/signalhub/bin.js")
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

impl HubProc {
    pub(crate) async fn start(target: &Target, opts: &Opts, tag: &str) -> Result<HubProc> {
        let (mut command, port) = match &target.kind {
            Kind::External { url, pid } => {
                return Ok(HubProc {
                    addr: Arc::new(resolve(url).await?),
                    pid: *pid,
                    child: None,
                    log: None,
                    overflows_at_start: listen_overflows(),
                })
            }
            Kind::Rust | Kind::Node { .. } => {
                let port = free_port()?;
                let mut command = Command::new(env!("CARGO_BIN_EXE_signalhub"));
                command.args([
                    "listen",
                    "--host",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-q",
                ]);
                command.args([
                    "--rate",
                    "0",
                    "--max-connections",
                    "0",
                    "--max-connections-per-ip",
                    "0",
                ]);
                if let Kind::Node { redis } = &target.kind {
                    command.args(["--redis", redis]);
                }
                (command, port)
            }
            Kind::Js => {
                let bin = js_bin();
                if !bin.exists() {
                    bail!(
                        "the JS hub is not installed ({} is missing): run `npm ci --prefix js` in the repository root, or pass --only rust",
                        bin.display()
                    );
                }
                let port = free_port()?;
                let mut command = Command::new(&opts.node);
                command.arg(&bin);
                command.args(["listen", "-p", &port.to_string(), "-h", "127.0.0.1", "-q"]);
                (command, port)
            }
        };
        let log = std::env::temp_dir().join(format!(
            "hubload-{}-{}-{}.log",
            std::process::id(),
            target.name,
            tag
        ));
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .die_with_parent();
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_file(&log);
                return Err(err)
                    .with_context(|| format!("cannot start the {} hub: {command:?}", target.name));
            }
        };
        let mut hub = HubProc {
            addr: Arc::new(HubAddr {
                sock: SocketAddr::from(([127, 0, 0, 1], port)),
                host: format!("127.0.0.1:{port}"),
                loopback: true,
            }),
            pid: Some(child.id()),
            child: Some(child),
            log: Some(log.clone()),
            overflows_at_start: listen_overflows(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = hub.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the {} hub exited ({status}) before it answered; its log ({}):\n{}",
                    target.name,
                    log.display(),
                    log_tail(&log)
                );
            }
            if let Ok((200, _)) = http_get(&hub.addr, "/", Duration::from_secs(1)).await {
                return Ok(hub);
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} hub did not answer GET / within 20 s; its log ({}):\n{}",
                    target.name,
                    log.display(),
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }

    /// Problems the hub itself reports: drop and rejection counters of the Rust hub's /metrics.
    pub(crate) async fn metric_problems(&self) -> Vec<String> {
        let Ok((200, text)) = http_get(&self.addr, "/metrics", Duration::from_secs(3)).await else {
            return Vec::new();
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.contains("dropped") || l.contains("rejected"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                (value > 0.0).then(|| format!("hub metric {name} = {value}"))
            })
            .collect()
    }

    /// Stops the hub; returns unexpected lines of its log.
    pub(crate) fn stop(&mut self, rust: bool) -> Vec<String> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let Some(log) = &self.log else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let odd: Vec<&str> = text
            .lines()
            .filter(|l| {
                if rust {
                    l.contains("WARN") || l.contains("ERROR") || l.contains("panicked")
                } else {
                    !l.starts_with("signalhub listening on port") && !l.trim().is_empty()
                }
            })
            .collect();
        if odd.is_empty() {
            let _ = std::fs::remove_file(log);
            return Vec::new();
        }
        vec![format!(
            "hub log {} has {} unexpected line(s), first: {}",
            log.display(),
            odd.len(),
            odd[0].trim()
        )]
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) async fn finish_hub(
    hub: &mut HubProc,
    target: &Target,
    label: &str,
    report: &mut Report,
) {
    let overflows = hub
        .overflows_at_start
        .zip(listen_overflows())
        .map_or(0, |(a, b)| b.saturating_sub(a));
    if overflows > 0 {
        report.problems.push(format!(
            "{}: {label}: {overflows} connection attempts overflowed the listen queue (TcpExt ListenOverflows; the client retries after 1 s): the hub's listen backlog is too small for {OPENING} connections opening at once",
            target.name
        ));
    }
    for p in hub.metric_problems().await {
        report
            .problems
            .push(format!("{}: {label}: {p}", target.name));
    }
    for p in hub.stop(matches!(target.kind, Kind::Rust | Kind::Node { .. })) {
        report
            .problems
            .push(format!("{}: {label}: {p}", target.name));
    }
    // Let the kernel finish closing the hub's sockets before the next scenario starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
}
