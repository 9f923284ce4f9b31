//! The processes of `--cluster N`: a `redis-server` and N hub nodes (`signalhub listen --redis`)
//! on free loopback ports, and load-generator workers (this executable again, `--worker`), each
//! holding at most `--worker-subscribers` sockets so that no process meets its open-file limit.
//! Every child is killed when its guard is dropped: at the end, on an error, on a panic.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, Stdio};

use serde::{Deserialize, Serialize};

use crate::*;

// ------------------------------------------------------------------------------------------------
// Redis

/// A `redis-server` on a free loopback port, without persistence; killed when dropped.
pub(crate) struct RedisProc {
    pub(crate) port: u16,
    pub(crate) pid: u32,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisProc {
    pub(crate) async fn start(tag: &str) -> Result<RedisProc> {
        let port = free_port()?;
        let log =
            std::env::temp_dir().join(format!("hubload-{}-redis-{tag}.log", std::process::id()));
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning", "--maxclients", "1000"])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .die_with_parent()
            .spawn()
            .context("cannot start redis-server (Debian: apt-get install redis-server)")?;
        let mut redis = RedisProc {
            port,
            pid: child.id(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_ping(port).await.is_err() {
            if let Some(status) = redis
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "redis-server exited ({status}); its log:\n{}",
                    log_tail(&redis.log)
                );
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen on port {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

// ------------------------------------------------------------------------------------------------
// A single hub, or a cluster of nodes on one Redis

/// The hubs of one scenario: one Rust hub (`redis: None`), or N nodes and their Redis. The nodes
/// are dropped (killed) before Redis.
pub(crate) struct Nodes {
    pub(crate) nodes: Vec<HubProc>,
    pub(crate) targets: Vec<Target>,
    pub(crate) redis: Option<RedisProc>,
}

impl Nodes {
    /// `cluster`: the number of nodes, or `None` for a single hub without Redis.
    pub(crate) async fn start(cluster: Option<usize>, opts: &Opts, tag: &str) -> Result<Nodes> {
        let Some(n) = cluster else {
            let target = Target {
                name: "single".into(),
                kind: Kind::Rust,
            };
            let hub = HubProc::start(&target, opts, tag).await?;
            return Ok(Nodes {
                nodes: vec![hub],
                targets: vec![target],
                redis: None,
            });
        };
        let redis = RedisProc::start(tag).await?;
        let mut nodes = Nodes {
            nodes: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            redis: None,
        };
        for i in 0..n {
            let target = Target {
                name: format!("node{i}"),
                kind: Kind::Node { redis: redis.url() },
            };
            nodes.nodes.push(HubProc::start(&target, opts, tag).await?);
            nodes.targets.push(target);
        }
        nodes.redis = Some(redis);
        // Each node says when both its connections to Redis are up.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, hub) in nodes.nodes.iter().enumerate() {
            loop {
                let connected = metric(&hub.addr, "signalhub_cluster_redis_connected").await;
                if connected == Some(1.0) {
                    break;
                }
                if Instant::now() > deadline {
                    let health = http_get(&hub.addr, "/health", Duration::from_secs(3))
                        .await
                        .map_or_else(|e| format!("{e:#}"), |(s, b)| format!("{s} {}", b.trim()));
                    let redis = nodes.redis.as_ref().expect("started");
                    bail!(
                        "node{i} did not connect to Redis within 20 s (signalhub_cluster_redis_connected {connected:?}; /health: {health}; Redis on port {} answers PING: {}); its log:\n{}",
                        redis.port,
                        redis_ping(redis.port).await.map_or_else(|e| format!("no ({e:#})"), |_| "yes".into()),
                        hub.log.as_deref().map(log_tail).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(nodes)
    }

    /// [`Nodes::start`], and once more if that fails (a machine shared with others' tests may
    /// take a free port between our look and our bind): the first failure goes into the notes.
    pub(crate) async fn start_retry(
        cluster: Option<usize>,
        opts: &Opts,
        tag: &str,
        report: &mut Report,
    ) -> Result<Nodes> {
        match Nodes::start(cluster, opts, tag).await {
            Ok(nodes) => Ok(nodes),
            Err(err) => {
                eprintln!("    starting the hubs failed, trying once more: {err:#}");
                report.notes.push(format!(
                    "{tag}: starting the hubs failed once, then retried: {err:#}"
                ));
                Nodes::start(cluster, opts, tag).await
            }
        }
    }

    pub(crate) fn addr(&self, i: usize) -> Arc<HubAddr> {
        self.nodes[i % self.nodes.len()].addr.clone()
    }

    /// The hub processes, then Redis.
    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        let mut pids: Vec<Option<u32>> = self.nodes.iter().map(|n| n.pid).collect();
        if let Some(redis) = &self.redis {
            pids.push(Some(redis.pid));
        }
        pids
    }

    /// Stops every node (collecting the problems they report), then Redis.
    pub(crate) async fn finish(mut self, label: &str, report: &mut Report) {
        for (hub, target) in self.nodes.iter_mut().zip(&self.targets) {
            finish_hub(hub, target, label, report).await;
        }
        drop(self);
    }
}

/// Sends `PING` to the Redis on this loopback port and expects `+PONG`.
pub(crate) async fn redis_ping(port: u16) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        if !buf[..n].starts_with(b"+PONG") {
            bail!(
                "answered {:?}, not +PONG",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow!("no answer to PING within 2 s"))?
}

/// The hub's `/metrics`, sample by sample (`name` or `name{labels}` → value).
pub(crate) async fn metrics(hub: &HubAddr) -> Result<Vec<(String, f64)>> {
    let (status, text) = http_get(hub, "/metrics", Duration::from_secs(5)).await?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// One sample of the hub's `/metrics`.
pub(crate) async fn metric(hub: &HubAddr, name: &str) -> Option<f64> {
    metrics(hub)
        .await
        .ok()?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// Waits until the node is subscribed in Redis to `channels` channels (the gauge leaves out the
/// cluster's control channel).
pub(crate) async fn settle_subscriptions(
    hub: &HubAddr,
    channels: u64,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let now = metric(hub, "signalhub_cluster_redis_subscriptions").await;
        if now.is_some_and(|v| v >= channels as f64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {} subscribed in Redis to {} channels, not {}, within {} s",
                hub.host,
                now.map_or("?".into(), |v| v.to_string()),
                channels,
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Workers: this executable with `--worker`, holding idle SSE subscribers

/// What a worker is asked to do: hold subscribers `from..to`, subscriber `i` on
/// `hubs[i % hubs.len()]`, channel `<prefix><i>`.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct WorkerJob {
    pub(crate) hubs: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// What a worker reports, every 200 ms, on its standard output.
#[derive(Serialize, Deserialize, Clone, Default, Debug)]
pub(crate) struct WorkerStatus {
    pub(crate) ready: usize,
    pub(crate) failed: usize,
    pub(crate) lost: usize,
    /// Data frames its subscribers received.
    pub(crate) delivered: u64,
    /// Its own CPU seconds.
    pub(crate) cpu: f64,
    pub(crate) error: Option<String>,
    /// Set once the worker has stopped reporting (exited, or its output was not a status).
    #[serde(skip)]
    pub(crate) gone: bool,
}

/// A worker process; killed when dropped.
pub(crate) struct WorkerProc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    status: Arc<Mutex<WorkerStatus>>,
}

impl WorkerProc {
    pub(crate) fn start(job: &WorkerJob) -> Result<WorkerProc> {
        let exe = std::env::current_exe().context("this executable's path")?;
        let mut child = Command::new(exe)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .die_with_parent()
            .spawn()
            .context("cannot start a worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let status = Arc::new(Mutex::new(WorkerStatus::default()));
        let mut worker = WorkerProc {
            child: Some(child),
            stdin: None,
            status: status.clone(),
        };
        writeln!(stdin, "{}", serde_json::to_string(job)?).context("write the worker's job")?;
        stdin.flush()?;
        worker.stdin = Some(stdin);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<WorkerStatus>(&line) {
                    Ok(now) => *status.lock().unwrap() = now,
                    Err(_) => break,
                }
            }
            status.lock().unwrap().gone = true;
        });
        Ok(worker)
    }

    pub(crate) fn status(&self) -> WorkerStatus {
        self.status.lock().unwrap().clone()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        // Its standard input closing tells it to stop; the kill makes sure.
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The workers' statuses summed.
pub(crate) fn sum_status(workers: &[WorkerProc]) -> WorkerStatus {
    let mut sum = WorkerStatus::default();
    for worker in workers {
        let s = worker.status();
        sum.ready += s.ready;
        sum.failed += s.failed;
        sum.lost += s.lost;
        sum.delivered += s.delivered;
        sum.cpu += s.cpu;
        sum.gone |= s.gone;
        if sum.error.is_none() {
            sum.error = s.error;
        }
    }
    sum
}

/// The worker's side (`hubload --worker`): reads one [`WorkerJob`] line from standard input, opens
/// its subscribers, reports a [`WorkerStatus`] line every 200 ms, and exits when its standard input
/// closes.
pub(crate) fn worker_main() -> Result<()> {
    raise_nofile(1 << 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Standard input, read on a thread: the job line, then whatever comes until it closes.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    runtime.block_on(async {
        let job: WorkerJob =
            serde_json::from_str(&lines.recv().await.context("no job on standard input")?)?;
        let mut hubs = Vec::with_capacity(job.hubs.len());
        for hub in &job.hubs {
            hubs.push(Arc::new(resolve(hub).await?));
        }
        let count = job.to - job.from;
        let sources = Sources::new(count, &hubs[0]);
        let shared = Arc::new(Shared::default());
        let opening = Arc::new(Semaphore::new(OPENING));
        let readers: Vec<JoinHandle<()>> = (job.from..job.to)
            .map(|i| {
                let sub = SubSpec {
                    path: format!("{}{i}", job.prefix),
                    src: sources.get(i),
                    buf_size: 2048,
                    hist: false,
                    open_timeout: Duration::from_secs(30),
                    status: None,
                };
                tokio::spawn(subscriber(
                    hubs[i % hubs.len()].clone(),
                    sub,
                    shared.clone(),
                    opening.clone(),
                ))
            })
            .collect();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut out = std::io::stdout();
        loop {
            tokio::select! {
                line = lines.recv() => {
                    if line.is_none() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let status = WorkerStatus {
                        ready: shared.ready.load(SeqCst),
                        failed: shared.failed.load(SeqCst),
                        lost: shared.lost.load(SeqCst),
                        delivered: shared.delivered.load(SeqCst),
                        cpu: cpu_secs(None).unwrap_or(0.0),
                        error: shared.first_error(),
                        gone: false,
                    };
                    if writeln!(out, "{}", serde_json::to_string(&status)?)
                        .and_then(|_| out.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        stop_readers(readers, &shared).await;
        Ok(())
    })
}
