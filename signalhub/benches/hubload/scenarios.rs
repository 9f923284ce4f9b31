//! The scenarios: delivery (fan-out, channels, one in flight), POST rate, idle subscribers and idle
//! connections by kind; each measures one hub and writes its figures into the report.

use crate::*;

pub(crate) struct Snapshot {
    pub(crate) at: Instant,
    pub(crate) hub_cpu: Option<f64>,
    /// CPU seconds of each measured process (a cluster's nodes and Redis).
    pub(crate) parts: Vec<Option<f64>>,
    pub(crate) gen_cpu: f64,
    pub(crate) machine: Option<f64>,
    pub(crate) delivered: u64,
    pub(crate) posts: u64,
}

pub(crate) fn snapshot(hub: &HubProc, shared: &Shared) -> Snapshot {
    // The hub's CPU is that of its process.
    snapshot_of(&[hub.pid], shared)
}

/// A snapshot whose hub CPU is the sum over `pids` (unknown if one is).
pub(crate) fn snapshot_of(pids: &[Option<u32>], shared: &Shared) -> Snapshot {
    let parts: Vec<Option<f64>> = pids
        .iter()
        .map(|&pid| pid.and_then(|p| cpu_secs(Some(p))))
        .collect();
    Snapshot {
        at: Instant::now(),
        hub_cpu: parts.iter().copied().sum(),
        parts,
        gen_cpu: cpu_secs(None).unwrap_or(0.0),
        machine: machine_busy_secs(),
        delivered: shared.delivered.load(SeqCst),
        posts: shared.posts.load(SeqCst),
    }
}

/// Rates and CPU between two snapshots, per unit of work (deliveries or POSTs).
pub(crate) struct Usage {
    pub(crate) secs: f64,
    pub(crate) work: u64,
    pub(crate) hub_cpu: Option<f64>,
    /// CPU seconds of each measured process.
    pub(crate) parts: Vec<Option<f64>>,
    pub(crate) gen_cpu: f64,
    /// CPU seconds of all processes of the machine.
    pub(crate) machine_cpu: Option<f64>,
    /// CPU seconds of every other process of the machine (other work competing for the cores).
    pub(crate) other_cpu: Option<f64>,
}

impl Usage {
    pub(crate) fn between(a: &Snapshot, b: &Snapshot, deliveries: bool) -> Usage {
        let hub_cpu = a.hub_cpu.zip(b.hub_cpu).map(|(a, b)| b - a);
        let gen_cpu = b.gen_cpu - a.gen_cpu;
        Usage {
            secs: (b.at - a.at).as_secs_f64(),
            work: if deliveries {
                b.delivered - a.delivered
            } else {
                b.posts - a.posts
            },
            hub_cpu,
            parts: a
                .parts
                .iter()
                .zip(&b.parts)
                .map(|(a, b)| a.zip(*b).map(|(a, b)| b - a))
                .collect(),
            gen_cpu,
            machine_cpu: a.machine.zip(b.machine).map(|(a, b)| b - a),
            other_cpu: a
                .machine
                .zip(b.machine)
                .filter(|_| hub_cpu.is_some())
                .map(|(a, b)| (b - a - gen_cpu - hub_cpu.unwrap_or(0.0)).max(0.0)),
        }
    }

    /// Idle share of the machine's cores during the run.
    pub(crate) fn idle_pct(&self) -> Option<f64> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.machine_cpu
            .map(|c| (100.0 - c * 100.0 / (self.secs * cores)).max(0.0))
    }

    pub(crate) fn other_pct(&self) -> Option<f64> {
        self.other_cpu.map(|c| c * 100.0 / self.secs)
    }

    pub(crate) fn rate(&self) -> f64 {
        self.work as f64 / self.secs
    }
    pub(crate) fn hub_us(&self) -> Option<f64> {
        (self.work > 0).then_some(())?;
        self.hub_cpu.map(|c| c * 1e6 / self.work as f64)
    }
    pub(crate) fn gen_us(&self) -> Option<f64> {
        (self.work > 0).then(|| self.gen_cpu * 1e6 / self.work as f64)
    }
    pub(crate) fn gen_pct(&self) -> f64 {
        self.gen_cpu * 100.0 / self.secs
    }
    pub(crate) fn hub_pct(&self) -> Option<f64> {
        self.hub_cpu.map(|c| c * 100.0 / self.secs)
    }
}

pub(crate) struct DeliverySpec {
    pub(crate) channels: usize,
    pub(crate) subs_per_channel: usize,
    pub(crate) posters: usize,
    pub(crate) window: u64,
    pub(crate) warmup: Duration,
}

pub(crate) struct DeliveryResult {
    pub(crate) usage: Usage,
    pub(crate) posts_per_sec: f64,
    pub(crate) hist: Hist,
    pub(crate) reads_per_frame: f64,
    pub(crate) problems: Vec<String>,
}

pub(crate) static RUN: AtomicU64 = AtomicU64::new(0);

/// Where a delivery run connects, and whose CPU it measures.
pub(crate) struct Layout {
    /// Subscriber `k` of each channel connects to `subscribers[k % len]`.
    pub(crate) subscribers: Vec<Arc<HubAddr>>,
    /// Posts to channel `c` go to `posts[c % len]`.
    pub(crate) posts: Vec<Arc<HubAddr>>,
    /// The processes whose CPU counts as the hub's.
    pub(crate) pids: Vec<Option<u32>>,
    /// Before posting, wait until each of these hubs reports at least this many Redis
    /// subscriptions (`signalhub_cluster_redis_subscriptions`): a cluster node subscribes in
    /// Redis a moment after its first local subscriber arrives.
    pub(crate) settle: Vec<(Arc<HubAddr>, u64)>,
}

impl Layout {
    /// Everything on one hub.
    pub(crate) fn single(hub: &HubProc) -> Layout {
        Layout {
            subscribers: vec![hub.addr.clone()],
            posts: vec![hub.addr.clone()],
            pids: vec![hub.pid],
            settle: Vec::new(),
        }
    }
}

pub(crate) async fn run_delivery(
    layout: &Layout,
    spec: &DeliverySpec,
    cfg: &Cfg,
    label: &str,
) -> Result<DeliveryResult> {
    let run = RUN.fetch_add(1, Relaxed);
    let shared = Arc::new(Shared::default());
    let total = spec.channels * spec.subs_per_channel;
    let sources = Sources::new(
        total + spec.posters * layout.posts.len(),
        &layout.subscribers[0],
    );
    let opening = Arc::new(Semaphore::new(OPENING));
    let paths: Vec<String> = (0..spec.channels)
        .map(|c| format!("/v1/bench/r{run}-c{c}"))
        .collect();
    let mut readers = Vec::with_capacity(total);
    for i in 0..total {
        let sub = SubSpec {
            path: paths[i % spec.channels].clone(),
            src: sources.get(i),
            buf_size: 32 * 1024,
            hist: true,
            open_timeout: Duration::from_secs(10),
            status: None,
        };
        let hub = &layout.subscribers[(i / spec.channels) % layout.subscribers.len()];
        readers.push(tokio::spawn(subscriber(
            hub.clone(),
            sub,
            shared.clone(),
            opening.clone(),
        )));
    }
    let opened_in_time = wait_opened(&shared, total, Duration::from_secs(60)).await;
    let failed = shared.failed.load(SeqCst);
    if !opened_in_time || failed > 0 {
        let ready = shared.ready.load(SeqCst);
        stop_readers(readers, &shared).await;
        bail!(
            "{label}: only {ready} of {total} subscribers opened ({failed} failed{}): {}",
            if opened_in_time { "" } else { ", timed out" },
            shared.first_error().unwrap_or_default()
        );
    }
    for (hub, want) in &layout.settle {
        if let Err(err) = settle_subscriptions(hub, *want, Duration::from_secs(30)).await {
            stop_readers(readers, &shared).await;
            bail!("{label}: {err:#}");
        }
    }
    let plan = Arc::new(Plan {
        paths,
        fanout: spec.subs_per_channel as u64,
        window: spec.window,
        body_bytes: cfg.body_bytes,
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        credit: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
    });
    let posters: Vec<JoinHandle<()>> = (0..spec.posters)
        .map(|p| {
            let conns = (layout.posts.iter().enumerate())
                .map(|(h, hub)| {
                    PostConn::new(hub.clone(), sources.get(total + p * layout.posts.len() + h))
                })
                .collect();
            tokio::spawn(poster(conns, plan.clone(), shared.clone()))
        })
        .collect();
    tokio::time::sleep(spec.warmup).await;
    reset_latencies();
    let a = snapshot_of(&layout.pids, &shared);
    shared.recording.store(true, SeqCst);
    tokio::time::sleep(cfg.duration).await;
    shared.recording.store(false, SeqCst);
    let b = snapshot_of(&layout.pids, &shared);
    plan.stop.store(true, SeqCst);
    shared.notify.notify_waiters();
    for handle in posters {
        let _ = handle.await;
    }
    // Everything posted should arrive: wait for stragglers, then count what never came.
    let expected = plan.sent.load(SeqCst) * plan.fanout;
    let deadline = Instant::now() + Duration::from_secs(3);
    while shared.delivered.load(SeqCst) + plan.credit.load(SeqCst) < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = expected.saturating_sub(shared.delivered.load(SeqCst) + plan.credit.load(SeqCst));
    let lost = shared.lost.load(SeqCst);
    let outs = stop_readers(readers, &shared).await;
    let hist = merged_latencies();
    let (mut reads, mut frames) = (0u64, 0u64);
    for out in &outs {
        reads += out.reads_recorded;
        frames += out.frames_recorded;
    }
    let mut problems = Vec::new();
    if lost > 0 {
        problems.push(format!(
            "{label}: {lost} of {total} subscribers lost their stream during the run"
        ));
    }
    if missing > 0 {
        problems.push(format!(
            "{label}: {missing} deliveries never arrived (of {expected} expected)"
        ));
    }
    let errors = plan.errors.load(Relaxed);
    if errors > 0 {
        problems.push(format!(
            "{label}: {errors} POSTs failed; first error: {}",
            shared.first_error().unwrap_or_default()
        ));
    }
    let stalls = plan.stalls.load(Relaxed);
    if stalls > 0 {
        problems.push(format!(
            "{label}: posters stalled {stalls} time(s) for {} s waiting for deliveries",
            STALL.as_secs()
        ));
    }
    let usage = Usage::between(&a, &b, true);
    let posts_per_sec = (b.posts - a.posts) as f64 / usage.secs;
    Ok(DeliveryResult {
        usage,
        posts_per_sec,
        hist,
        reads_per_frame: if frames > 0 {
            reads as f64 / frames as f64
        } else {
            0.0
        },
        problems,
    })
}

pub(crate) struct PostResult {
    pub(crate) usage: Usage,
    pub(crate) problems: Vec<String>,
}

pub(crate) async fn run_post(hub: &HubProc, cfg: &Cfg) -> Result<PostResult> {
    let run = RUN.fetch_add(1, Relaxed);
    let shared = Arc::new(Shared::default());
    let sources = Sources::new(cfg.concurrency, &hub.addr);
    let plan = Arc::new(Plan {
        paths: vec![format!("/v1/bench/r{run}-nobody")],
        fanout: 0,
        window: 0,
        body_bytes: cfg.body_bytes,
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        credit: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stalls: AtomicU64::new(0),
    });
    let posters: Vec<JoinHandle<()>> = (0..cfg.concurrency)
        .map(|p| {
            tokio::spawn(poster(
                vec![PostConn::new(hub.addr.clone(), sources.get(p))],
                plan.clone(),
                shared.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(cfg.warmup).await;
    let a = snapshot(hub, &shared);
    tokio::time::sleep(cfg.duration).await;
    let b = snapshot(hub, &shared);
    plan.stop.store(true, SeqCst);
    for handle in posters {
        let _ = handle.await;
    }
    let mut problems = Vec::new();
    let errors = plan.errors.load(Relaxed);
    if errors > 0 {
        problems.push(format!(
            "post: {errors} POSTs failed; first error: {}",
            shared.first_error().unwrap_or_default()
        ));
    }
    Ok(PostResult {
        usage: Usage::between(&a, &b, false),
        problems,
    })
}

pub(crate) struct IdleResult {
    pub(crate) count: usize,
    pub(crate) rss_base: Option<u64>,
    pub(crate) rss_per_sub: Option<f64>,
    pub(crate) open_rate: f64,
    pub(crate) asked: usize,
    pub(crate) held: usize,
    pub(crate) rss_per_sub_at_max: Option<f64>,
    pub(crate) rss_at_max: Option<u64>,
    pub(crate) hub_reports: Option<u64>,
    pub(crate) stop_reason: String,
    pub(crate) liveness: String,
    pub(crate) problems: Vec<String>,
}

/// Opens `count` idle connections of one kind and returns the hub's RSS growth per connection
/// (KiB), measured after 1 s of quiet.
pub(crate) async fn run_idle_kind(
    hub: &HubProc,
    kind: IdleKind,
    count: usize,
) -> Result<Option<f64>> {
    let count = count.min(fd_budget());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = hub.rss();
    let sources = Arc::new(Sources::new(count + 1, &hub.addr));
    let opening = Arc::new(Semaphore::new(OPENING));
    let tasks: Vec<JoinHandle<Result<TcpStream>>> = (0..count)
        .map(|i| {
            let addr = hub.addr.clone();
            let sources = sources.clone();
            let opening = opening.clone();
            tokio::spawn(async move {
                let _permit = opening.acquire_owned().await?;
                tokio::time::timeout(
                    Duration::from_secs(10),
                    open_idle(&addr, sources.get(i), kind, i),
                )
                .await
                .context("opening timed out")?
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for task in tasks {
        held.push(task.await??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = base
        .zip(hub.rss())
        .map(|(a, b)| (b as f64 - a as f64) / count.max(1) as f64);
    drop(held);
    Ok(grown)
}

pub(crate) async fn run_idle(
    hub: &HubProc,
    cfg: &Cfg,
    asked: usize,
    label: &str,
) -> Result<IdleResult> {
    let run = RUN.fetch_add(1, Relaxed);
    let shared = Arc::new(Shared::default());
    let mut problems = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base = hub.rss();
    let budget = fd_budget();
    let count = cfg.idle.min(budget);
    if count < cfg.idle {
        problems.push(format!(
            "{label}: only {count} idle subscribers fit in this process's open-file limit (asked {})",
            cfg.idle
        ));
    }
    let limit = asked.max(count).min(budget);
    let sources = Sources::new(limit + 1, &hub.addr);
    let status: Arc<[AtomicU8]> = (0..limit).map(|_| AtomicU8::new(0)).collect();
    let opening = Arc::new(Semaphore::new(OPENING));
    let path = |i: usize| format!("/v1/bench/r{run}-idle{i}");
    let spawn = |i: usize| {
        let sub = SubSpec {
            path: path(i),
            src: sources.get(i),
            buf_size: 2048,
            hist: false,
            open_timeout: Duration::from_secs(10),
            status: Some((status.clone(), i)),
        };
        tokio::spawn(subscriber(
            hub.addr.clone(),
            sub,
            shared.clone(),
            opening.clone(),
        ))
    };
    let started = Instant::now();
    let mut readers: Vec<JoinHandle<()>> = (0..count).map(spawn).collect();
    let opened_in_time = wait_opened(&shared, count, Duration::from_secs(120)).await;
    let open_secs = started.elapsed().as_secs_f64();
    let ready = shared.ready.load(SeqCst);
    if !opened_in_time || ready < count {
        problems.push(format!(
            "{label}: {ready} of {count} idle subscribers opened; first error: {}",
            shared.first_error().unwrap_or_default()
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_at_count = hub.rss();
    let held_at_count = ready - shared.lost.load(SeqCst);
    let rss_per_sub = rss_base
        .zip(rss_at_count)
        .filter(|_| held_at_count > 0)
        .map(|(a, b)| (b as f64 - a as f64) / held_at_count as f64);
    // Ramp up in batches until the asked count, a failure, or this process's open-file limit.
    let mut spawned = count;
    let mut stop_reason = String::new();
    let ramp_deadline = Instant::now() + Duration::from_secs(180);
    if opened_in_time && ready == count && asked > count {
        while spawned < limit {
            let next = (spawned + cfg.ramp_batch).min(limit);
            readers.extend((spawned..next).map(spawn));
            spawned = next;
            let settled = wait_opened(&shared, spawned, Duration::from_secs(30)).await;
            if !settled || shared.failed.load(SeqCst) > 0 || shared.lost.load(SeqCst) > 0 {
                stop_reason = format!(
                    "stopped at the first failure: {}",
                    shared
                        .first_error()
                        .unwrap_or_else(|| "subscribers lost their stream".to_string())
                );
                break;
            }
            if Instant::now() > ramp_deadline {
                stop_reason = "stopped: the ramp took over 180 s".to_string();
                break;
            }
            eprintln!("    {} idle subscribers open", shared.ready.load(SeqCst));
        }
        // Whatever is still opening gets its chance.
        wait_opened(&shared, spawned, Duration::from_secs(12)).await;
        if stop_reason.is_empty() {
            stop_reason = if spawned >= asked {
                "reached the asked count".to_string()
            } else {
                format!(
                    "stopped at this generator's open-file limit ({}); hub's limit {}",
                    nofile_limit(None).unwrap_or_default(),
                    hub.pid
                        .and_then(|p| nofile_limit(Some(p)))
                        .unwrap_or_else(|| "unknown".into())
                )
            };
        }
    } else if asked <= count {
        stop_reason = "no ramp beyond the RSS measurement".to_string();
    } else {
        stop_reason = "no ramp: the first subscribers did not all open".to_string();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = shared.ready.load(SeqCst) - shared.lost.load(SeqCst);
    let rss_at_max = hub.rss();
    let rss_per_sub_at_max = rss_base
        .zip(rss_at_max)
        .filter(|_| held > 0)
        .map(|(a, b)| (b as f64 - a as f64) / held as f64);
    let hub_reports = hub_subscribers(&hub.addr).await;
    // Liveness: POST to a sample of the open subscribers' channels; each must get its message.
    let open: Vec<usize> = (0..spawned)
        .filter(|&i| status[i].load(Relaxed) == 1)
        .collect();
    let sample: Vec<usize> = if open.is_empty() {
        Vec::new()
    } else {
        let n = open.len().min(200);
        (0..n).map(|k| open[k * open.len() / n]).collect()
    };
    let before = shared.delivered.load(SeqCst);
    let mut conn = PostConn::new(hub.addr.clone(), sources.get(limit));
    let mut posted = 0u64;
    let mut post_error = None;
    for &i in &sample {
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            conn.post(&path(i), i as u64, cfg.body_bytes),
        )
        .await;
        match result {
            Ok(Ok(200)) => posted += 1,
            Ok(Ok(status)) => post_error = Some(format!("POST answered {status}")),
            Ok(Err(err)) => post_error = Some(format!("{err:#}")),
            Err(_) => post_error = Some("POST not answered within 5 s".to_string()),
        }
        if post_error.is_some() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.delivered.load(SeqCst) - before < posted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = shared.delivered.load(SeqCst) - before;
    let liveness = match post_error {
        Some(err) => format!(
            "{got}/{} sampled subscribers got a message; {err}",
            sample.len()
        ),
        None => format!("{got}/{posted} sampled subscribers got a message"),
    };
    if got < sample.len() as u64 {
        problems.push(format!(
            "{label}: liveness check at {held} idle subscribers: {liveness}"
        ));
    }
    drop(conn);
    let lost = shared.lost.load(SeqCst);
    if lost > 0 {
        problems.push(format!(
            "{label}: {lost} idle subscribers lost their stream"
        ));
    }
    stop_readers(readers, &shared).await;
    Ok(IdleResult {
        count,
        rss_base,
        rss_per_sub,
        open_rate: held_at_count as f64 / open_secs,
        asked,
        held,
        rss_per_sub_at_max,
        rss_at_max,
        hub_reports,
        stop_reason,
        liveness,
        problems,
    })
}

/// The delivery scenarios' cases: a label, how to run it, and the goal for its p99.
pub(crate) fn delivery_cases(
    scenario: Scenario,
    cfg: &Cfg,
) -> Vec<(String, DeliverySpec, &'static str)> {
    match scenario {
        Scenario::Fanout => cfg
            .fanouts
            .iter()
            .map(|&n| {
                let (posters, window) = match n {
                    0..=9 => (32, 64),
                    10..=299 => (8, 32),
                    _ => (4, 16),
                };
                (
                    format!(
                        "fan-out to {n} subscriber{} of 1 channel",
                        if n == 1 { "" } else { "s" }
                    ),
                    DeliverySpec {
                        channels: 1,
                        subs_per_channel: n.max(1),
                        posters,
                        window,
                        warmup: cfg.warmup,
                    },
                    "",
                )
            })
            .collect(),
        Scenario::Channels => vec![(
            format!("{} channels × 2 subscribers", cfg.channels),
            DeliverySpec {
                channels: cfg.channels.max(1),
                subs_per_channel: 2,
                posters: 32,
                window: 256,
                warmup: cfg.warmup,
            },
            "",
        )],
        Scenario::Inflight => vec![(
            format!("{} subscribers, 1 message in flight", cfg.inflight_subs),
            DeliverySpec {
                channels: 1,
                subs_per_channel: cfg.inflight_subs,
                posters: 1,
                window: 1,
                warmup: cfg.warmup / 2,
            },
            "≤ 0.25",
        )],
        Scenario::Idle | Scenario::IdleKinds | Scenario::Post => Vec::new(),
    }
}

/// Runs one delivery case against each target, a fresh hub for each.
pub(crate) async fn delivery(
    scenario: Scenario,
    (label, spec, p99_goal): &(String, DeliverySpec, &'static str),
    targets: &[Target],
    opts: &Opts,
    cfg: &Cfg,
    report: &mut Report,
) {
    for target in targets {
        eprintln!("[{}] {label} ...", target.name);
        let mut hub =
            match HubProc::start(target, opts, &format!("{scenario:?}").to_lowercase()).await {
                Ok(hub) => hub,
                Err(err) => {
                    report
                        .problems
                        .push(format!("{}: {label}: {err:#}", target.name));
                    eprintln!("    error: {err:#}");
                    continue;
                }
            };
        match run_delivery(&Layout::single(&hub), spec, cfg, label).await {
            Ok(result) => {
                record_delivery(report, label, &target.name, &result, p99_goal);
                for p in result.problems {
                    report.problems.push(format!("{}: {p}", target.name));
                }
            }
            Err(err) => {
                eprintln!("    error: {err:#}");
                report.problems.push(format!("{}: {err:#}", target.name));
            }
        }
        finish_hub(&mut hub, target, label, report).await;
    }
}

/// The Rust hub's RSS per idle connection of each kind.
pub(crate) async fn idle_kinds(targets: &[Target], opts: &Opts, cfg: &Cfg, report: &mut Report) {
    for target in targets.iter().filter(|t| !matches!(t.kind, Kind::Js)) {
        let label = "idle connections by kind".to_string();
        for kind in IdleKind::ALL {
            eprintln!(
                "[{}] {label}: {} {} ...",
                target.name,
                cfg.idle,
                kind.name()
            );
            let mut hub = match HubProc::start(target, opts, "idle-kinds").await {
                Ok(hub) => hub,
                Err(err) => {
                    report
                        .problems
                        .push(format!("{}: {label}: {err:#}", target.name));
                    continue;
                }
            };
            match run_idle_kind(&hub, kind, cfg.idle).await {
                Ok(per_connection) => {
                    let metric = format!("hub RSS / {}", kind.name());
                    report.set(&label, &metric, Unit::KiB, "", &target.name, per_connection);
                    report.no_ratio(&label, &metric);
                    eprintln!(
                        "    {}",
                        per_connection.map_or("n/a".into(), |v| fmt_value(v, Unit::KiB))
                    );
                }
                Err(err) => {
                    eprintln!("    error: {err:#}");
                    report
                        .problems
                        .push(format!("{}: {label}: {err:#}", target.name));
                }
            }
            finish_hub(&mut hub, target, &label, report).await;
        }
    }
}

/// Idle subscribers: RSS per subscriber, then a ramp to the most the hub holds.
pub(crate) async fn idle(targets: &[Target], opts: &Opts, cfg: &Cfg, report: &mut Report) {
    for target in targets {
        let asked = match target.kind {
            Kind::Js => cfg.max_idle_js,
            _ => cfg.max_idle_rust,
        };
        let label = "idle subscribers (1 channel each)".to_string();
        eprintln!(
            "[{}] {label}: {} for RSS, then up to {asked} ...",
            target.name, cfg.idle
        );
        let mut hub = match HubProc::start(target, opts, "idle").await {
            Ok(hub) => hub,
            Err(err) => {
                report
                    .problems
                    .push(format!("{}: {label}: {err:#}", target.name));
                continue;
            }
        };
        match run_idle(&hub, cfg, asked, &label).await {
            Ok(r) => {
                let name = &target.name;
                report.set(
                    &label,
                    &format!("hub RSS / subscriber at {}", thousands(r.count as f64)),
                    Unit::KiB,
                    "≤ 0.33",
                    name,
                    r.rss_per_sub,
                );
                report.set(
                    &label,
                    "hub RSS before subscribers",
                    Unit::KiB,
                    "",
                    name,
                    r.rss_base.map(|v| v as f64),
                );
                report.set(
                    &label,
                    "subscribers opened per s",
                    Unit::PerSec,
                    "",
                    name,
                    Some(r.open_rate),
                );
                report.set(
                    &label,
                    "most held (ramp)",
                    Unit::Count,
                    "≥ 100 000 (rust)",
                    name,
                    Some(r.held as f64),
                );
                report.set(
                    &label,
                    "asked (--max-idle)",
                    Unit::Count,
                    "",
                    name,
                    Some(r.asked as f64),
                );
                report.set(
                    &label,
                    "hub RSS / subscriber at most held",
                    Unit::KiB,
                    "",
                    name,
                    r.rss_per_sub_at_max,
                );
                report.set(
                    &label,
                    "hub RSS at most held",
                    Unit::KiB,
                    "",
                    name,
                    r.rss_at_max.map(|v| v as f64),
                );
                for metric in [
                    "most held (ramp)",
                    "asked (--max-idle)",
                    "hub RSS at most held",
                ] {
                    report.no_ratio(&label, metric);
                }
                report.notes.push(format!(
                    "{name} idle ramp: held {} of {} asked ({}); the hub's GET / reports {} subscribers; liveness: {}",
                    thousands(r.held as f64),
                    thousands(r.asked as f64),
                    r.stop_reason,
                    r.hub_reports.map_or("n/a".into(), |v| thousands(v as f64)),
                    r.liveness
                ));
                eprintln!(
                    "    RSS {} / subscriber at {}; held {} of {} ({}); RSS {} / subscriber there; liveness {}",
                    r.rss_per_sub.map_or("n/a".into(), |v| fmt_value(v, Unit::KiB)),
                    r.count,
                    r.held,
                    r.asked,
                    r.stop_reason,
                    r.rss_per_sub_at_max.map_or("n/a".into(), |v| fmt_value(v, Unit::KiB)),
                    r.liveness
                );
                for p in r.problems {
                    report.problems.push(format!("{name}: {p}"));
                }
            }
            Err(err) => {
                eprintln!("    error: {err:#}");
                report
                    .problems
                    .push(format!("{}: {label}: {err:#}", target.name));
            }
        }
        finish_hub(&mut hub, target, &label, report).await;
    }
}

/// POSTs to a channel nobody subscribes to.
pub(crate) async fn post(targets: &[Target], opts: &Opts, cfg: &Cfg, report: &mut Report) {
    let label = format!("POST, no subscribers, {} connections", cfg.concurrency);
    for target in targets {
        eprintln!("[{}] {label} ...", target.name);
        let mut hub = match HubProc::start(target, opts, "post").await {
            Ok(hub) => hub,
            Err(err) => {
                report
                    .problems
                    .push(format!("{}: {label}: {err:#}", target.name));
                continue;
            }
        };
        match run_post(&hub, cfg).await {
            Ok(r) => {
                let u = &r.usage;
                let name = &target.name;
                report.set(&label, "requests/s", Unit::PerSec, "", name, Some(u.rate()));
                report.set(
                    &label,
                    "hub CPU / request",
                    Unit::CpuUs,
                    "≤ 0.10",
                    name,
                    u.hub_us(),
                );
                report.set(
                    &label,
                    "hub CPU (% of a core)",
                    Unit::Percent,
                    "",
                    name,
                    u.hub_pct(),
                );
                report.set(
                    &label,
                    "generator CPU / request",
                    Unit::CpuUs,
                    "",
                    name,
                    u.gen_us(),
                );
                report.set(
                    &label,
                    "generator CPU (% of a core)",
                    Unit::Percent,
                    "",
                    name,
                    Some(u.gen_pct()),
                );
                note_noise(report, &label, name, u);
                eprintln!(
                    "    {} requests/s; hub CPU {} / request ({}); generator CPU {} / request ({}); other processes {}",
                    thousands(u.rate()),
                    u.hub_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
                    u.hub_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent)),
                    u.gen_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
                    fmt_value(u.gen_pct(), Unit::Percent),
                    u.other_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent))
                );
                for p in r.problems {
                    report.problems.push(format!("{name}: {p}"));
                }
            }
            Err(err) => {
                eprintln!("    error: {err:#}");
                report
                    .problems
                    .push(format!("{}: {label}: {err:#}", target.name));
            }
        }
        finish_hub(&mut hub, target, &label, report).await;
    }
}
