//! The `--cluster N` scenarios: each runs on a fresh single hub and then on a fresh cluster (N
//! nodes on one `redis-server`), and prints both side by side with their ratio.
//!
//! - `idle`: `--max-idle` (default 100 000) idle SSE subscribers, each on its own channel, spread
//!   round-robin over the nodes and held by worker processes (`--worker-subscribers` each); hub RSS
//!   per subscriber on each node, Redis's RSS, and a liveness sample: a message posted on another
//!   node to 200 of the subscribers' channels reaches each. The single hub holds one node's share.
//! - `fanout`: `--fanout` (default 1000) subscribers of one channel on node B, posted on node A.
//! - `channels`: `--channels` (default 1000) channels × 2 subscribers, one on node A and one on
//!   node B; posts alternate between the nodes (the signalling pattern: each peer posts to its own
//!   node, reaching itself there and the other peer through Redis).
//! - `inflight`: 1000 subscribers, one message in flight: same node (posted on A, subscribers on A)
//!   and across nodes (posted on A, subscribers on B).
//!
//! Hub CPU is utime+stime of every node plus Redis, per delivered message.

use crate::*;

pub(crate) async fn run_cluster(
    opts: &Opts,
    cfg: &Cfg,
    n: usize,
    limit_note: String,
) -> Result<()> {
    now_ns();
    if opts.only == Some(Which::Js) {
        bail!("--cluster measures the Rust hub only");
    }
    let scenarios: Vec<Scenario> = if opts.scenario.is_empty() {
        vec![
            Scenario::Idle,
            Scenario::Fanout,
            Scenario::Channels,
            Scenario::Inflight,
        ]
    } else {
        opts.scenario.clone()
    };
    let mut report = Report::default();
    report.notes.push(format!(
        "{} CPU(s); cluster: {n} nodes (`signalhub listen --redis`) and one redis-server, all on this machine; single: one hub without Redis; a fresh hub, cluster and Redis for every scenario; generator: tokio, {} worker thread(s) in this process, plus worker processes of at most {} subscribers for `idle`; {limit_note}; runs of {} s after {} s warm-up; bodies of {} bytes",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        opts.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        thousands(opts.worker_subscribers as f64),
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.body_bytes,
    ));
    let started = Instant::now();
    for scenario in scenarios {
        match scenario {
            Scenario::Idle => cluster_idle(opts, cfg, n, &mut report).await,
            Scenario::Fanout => {
                let fanouts = if opts.fanout.is_empty() {
                    vec![1000]
                } else {
                    cfg.fanouts.clone()
                };
                for f in fanouts {
                    let label = format!("fan-out to {f} subscribers on node B, posted on node A");
                    let spec = DeliverySpec {
                        channels: 1,
                        subs_per_channel: f.max(1),
                        posters: 4,
                        window: 16,
                        warmup: cfg.warmup,
                    };
                    let variants = [
                        Variant {
                            column: "single",
                            suffix: "",
                            also: None,
                            cluster: false,
                            place: Place::Same,
                        },
                        Variant {
                            column: "cluster",
                            suffix: "",
                            also: None,
                            cluster: true,
                            place: Place::Across,
                        },
                    ];
                    compare(&label, &spec, &variants, "≤ 1.5", opts, cfg, n, &mut report).await;
                }
            }
            Scenario::Channels => {
                let label = format!(
                    "{} channels × 2 subscribers (one on node A, one on node B)",
                    cfg.channels
                );
                let spec = DeliverySpec {
                    channels: cfg.channels.max(1),
                    subs_per_channel: 2,
                    posters: 32,
                    window: 256,
                    warmup: cfg.warmup,
                };
                let variants = [
                    Variant {
                        column: "single",
                        suffix: "",
                        also: None,
                        cluster: false,
                        place: Place::Pairs,
                    },
                    Variant {
                        column: "cluster",
                        suffix: "",
                        also: None,
                        cluster: true,
                        place: Place::Pairs,
                    },
                ];
                compare(&label, &spec, &variants, "≤ 3", opts, cfg, n, &mut report).await;
            }
            Scenario::Inflight => cluster_inflight(opts, cfg, n, &mut report).await,
            Scenario::IdleKinds | Scenario::Post => report.notes.push(format!(
                "{scenario:?}: not a --cluster scenario (run it without --cluster)"
            )),
        }
    }
    report.notes.push(format!(
        "CPU: utime+stime from /proc/<pid>/stat of every hub process (and Redis) over the measured run (tick {} ms); machine idle: /proc/stat; other processes: the machine's busy time less the hubs', Redis's and the generator's",
        1000.0 / clock_ticks_per_sec()
    ));
    report.notes.push(format!(
        "total time {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    report.print_columns(
        &["single", "cluster"],
        ("cluster", "single"),
        "goal (cluster/single)",
    );
    Ok(())
}

/// Where a delivery scenario's subscribers and posts go.
#[derive(Clone, Copy)]
pub(crate) enum Place {
    /// Subscribers on node B, posts on node A.
    Across,
    /// Everything on node A.
    Same,
    /// Each channel's subscribers on A and B, posts alternating between A and B.
    Pairs,
}

fn layout(nodes: &Nodes, place: Place, spec: &DeliverySpec) -> Layout {
    let (a, b) = (nodes.addr(0), nodes.addr(1));
    let cluster = nodes.redis.is_some();
    let (subscribers, posts) = match place {
        Place::Across => (vec![b.clone()], vec![a.clone()]),
        Place::Same => (vec![a.clone()], vec![a.clone()]),
        Place::Pairs => (vec![a.clone(), b.clone()], vec![a.clone(), b.clone()]),
    };
    let mut settle = Vec::new();
    if cluster {
        for hub in &subscribers {
            settle.push((hub.clone(), spec.channels as u64));
        }
    }
    Layout {
        subscribers,
        posts,
        pids: nodes.pids(),
        settle,
    }
}

/// One way to run a delivery case: on which setup, where, and its column and row suffix.
struct Variant {
    column: &'static str,
    suffix: &'static str,
    /// Its figures also stand in these rows (the single hub's same-node figures stand for its
    /// "across nodes" too: it has no other node).
    also: Option<&'static str>,
    cluster: bool,
    place: Place,
}

/// Results of one variant's rounds.
#[derive(Default)]
struct Rounds {
    results: Vec<DeliveryResult>,
}

impl Rounds {
    /// All rounds as one: histograms merged, CPU and work summed.
    fn merged(&self) -> Option<DeliveryResult> {
        let first = self.results.first()?;
        let mut usage = Usage {
            secs: 0.0,
            work: 0,
            hub_cpu: Some(0.0),
            parts: vec![Some(0.0); first.usage.parts.len()],
            gen_cpu: 0.0,
            machine_cpu: Some(0.0),
            other_cpu: Some(0.0),
        };
        let mut hist = Hist::new();
        let mut posts = 0.0;
        for r in &self.results {
            let u = &r.usage;
            usage.secs += u.secs;
            usage.work += u.work;
            usage.gen_cpu += u.gen_cpu;
            let add = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
            usage.hub_cpu = add(usage.hub_cpu, u.hub_cpu);
            usage.machine_cpu = add(usage.machine_cpu, u.machine_cpu);
            usage.other_cpu = add(usage.other_cpu, u.other_cpu);
            for (a, b) in usage.parts.iter_mut().zip(&u.parts) {
                *a = add(*a, *b);
            }
            hist.merge(&r.hist);
            posts += r.posts_per_sec * u.secs;
        }
        Some(DeliveryResult {
            posts_per_sec: posts / usage.secs.max(1e-9),
            usage,
            hist,
            reads_per_frame: 0.0,
            problems: Vec::new(),
        })
    }
}

/// Runs a delivery case's variants in turns, `--rounds` times, on one single hub and one cluster
/// started for the case (so that the machine's other load falls on all of them alike), and
/// records each variant's merged figures, plus the per-round ratios as notes.
#[allow(clippy::too_many_arguments)]
async fn compare(
    label: &str,
    spec: &DeliverySpec,
    variants: &[Variant],
    cpu_goal: &'static str,
    opts: &Opts,
    cfg: &Cfg,
    n: usize,
    report: &mut Report,
) {
    let single = match Nodes::start_retry(None, opts, "delivery", report).await {
        Ok(nodes) => nodes,
        Err(err) => {
            eprintln!("    error: {err:#}");
            report.problems.push(format!("single: {label}: {err:#}"));
            return;
        }
    };
    let cluster = match Nodes::start_retry(Some(n), opts, "delivery", report).await {
        Ok(nodes) => nodes,
        Err(err) => {
            eprintln!("    error: {err:#}");
            report.problems.push(format!("cluster: {label}: {err:#}"));
            single.finish(label, report).await;
            return;
        }
    };
    let mut rounds: Vec<Rounds> = variants.iter().map(|_| Rounds::default()).collect();
    for round in 0..cfg.rounds {
        for (v, variant) in variants.iter().enumerate() {
            eprintln!(
                "[{}] {label}{} (round {} of {}) ...",
                variant.column,
                variant.suffix,
                round + 1,
                cfg.rounds
            );
            let nodes = if variant.cluster { &cluster } else { &single };
            match run_delivery(&layout(nodes, variant.place, spec), spec, cfg, label).await {
                Ok(r) => {
                    print_delivery(&r);
                    for p in &r.problems {
                        report.problems.push(format!("{}: {p}", variant.column));
                    }
                    rounds[v].results.push(r);
                }
                Err(err) => {
                    eprintln!("    error: {err:#}");
                    report.problems.push(format!("{}: {err:#}", variant.column));
                }
            }
        }
    }
    for (variant, r) in variants.iter().zip(&rounds) {
        if let Some(merged) = r.merged() {
            record_cluster_delivery(
                report,
                label,
                variant.column,
                &merged,
                variant.suffix,
                cpu_goal,
            );
            if let Some(also) = variant.also {
                record_cluster_delivery(report, label, variant.column, &merged, also, cpu_goal);
            }
        }
    }
    // Per-round figures: each cluster variant against the single hub's same round.
    let base = variants.iter().position(|v| !v.cluster);
    for (v, variant) in variants.iter().enumerate().filter(|(_, v)| v.cluster) {
        let Some(b) = base else { break };
        let per_round: Vec<String> = rounds[v]
            .results
            .iter()
            .zip(&rounds[b].results)
            .map(|(c, s)| {
                let cpu = c.usage.hub_us().zip(s.usage.hub_us()).map(|(c, s)| c / s);
                let p99 = c.hist.quantile(0.99).zip(s.hist.quantile(0.99));
                format!(
                    "CPU/delivery ×{} p99 {} vs {}",
                    cpu.map_or("n/a".into(), |q| format!("{q:.2}")),
                    p99.map_or("n/a".into(), |(c, _)| fmt_value(c as f64, Unit::Latency)),
                    p99.map_or("n/a".into(), |(_, s)| fmt_value(s as f64, Unit::Latency)),
                )
            })
            .collect();
        report.notes.push(format!(
            "{label}{}: cluster against single, round by round: {}",
            variant.suffix,
            per_round.join("; ")
        ));
    }
    if variants
        .iter()
        .any(|v| matches!(v.place, Place::Across | Place::Pairs))
    {
        if let Some(lag) = redis_hop(&cluster.addr(1)).await {
            report.notes.push(format!("{label}: {lag}"));
        }
    }
    single.finish(label, report).await;
    cluster.finish(label, report).await;
}

fn print_delivery(r: &DeliveryResult) {
    let u = &r.usage;
    eprintln!(
        "    {} deliveries/s ({} POSTs/s), latency {}; hub CPU {} / delivery ({}); generator CPU {} / delivery ({}); machine idle {}; other processes {}",
        thousands(u.rate()),
        thousands(r.posts_per_sec),
        latency_detail(&r.hist),
        u.hub_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
        u.hub_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent)),
        u.gen_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
        fmt_value(u.gen_pct(), Unit::Percent),
        u.idle_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent)),
        u.other_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent)),
    );
}

/// The node's mean cross-node delivery lag so far, from its histogram.
async fn redis_hop(hub: &HubAddr) -> Option<String> {
    let samples = metrics(hub).await.ok()?;
    let get = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let sum = get("signalhub_cluster_delivery_lag_seconds_sum")?;
    let count = get("signalhub_cluster_delivery_lag_seconds_count")?;
    (count > 0.0).then(|| {
        format!(
            "node B's cluster delivery lag (publish on A to B's subscriber queues, signalhub_cluster_delivery_lag_seconds): mean {} over {} messages",
            fmt_value(sum / count * 1e9, Unit::Latency),
            thousands(count)
        )
    })
}

fn record_cluster_delivery(
    report: &mut Report,
    scenario: &str,
    column: &str,
    r: &DeliveryResult,
    suffix: &str,
    cpu_goal: &'static str,
) {
    let u = &r.usage;
    let m = |name: &str| format!("{name}{suffix}");
    report.set(
        scenario,
        &m("deliveries/s"),
        Unit::PerSec,
        "",
        column,
        Some(u.rate()),
    );
    report.set(
        scenario,
        &m("latency p50"),
        Unit::Latency,
        "",
        column,
        r.hist.quantile(0.5).map(|v| v as f64),
    );
    report.set(
        scenario,
        &m("latency p99"),
        Unit::Latency,
        "",
        column,
        r.hist.quantile(0.99).map(|v| v as f64),
    );
    report.set(
        scenario,
        &m("hub CPU / delivery (all nodes + Redis)"),
        Unit::CpuUs,
        cpu_goal,
        column,
        u.hub_us(),
    );
    // Redis's share (the last process measured), on the cluster only.
    report.add_row(scenario, &m("  of which Redis"), Unit::CpuUs, "");
    if u.parts.len() > 1 {
        let redis = u.parts.last().copied().flatten();
        let work = u.work.max(1) as f64;
        report.set(
            scenario,
            &m("  of which Redis"),
            Unit::CpuUs,
            "",
            column,
            redis.map(|c| c * 1e6 / work),
        );
        report.no_ratio(scenario, &m("  of which Redis"));
    }
    report.set(
        scenario,
        &m("hub CPU (% of a core)"),
        Unit::Percent,
        "",
        column,
        u.hub_pct(),
    );
    report.set(
        scenario,
        &m("generator CPU / delivery"),
        Unit::CpuUs,
        "",
        column,
        u.gen_us(),
    );
    report.set(
        scenario,
        &m("generator CPU (% of a core)"),
        Unit::Percent,
        "",
        column,
        Some(u.gen_pct()),
    );
    report.set(
        scenario,
        &m("machine idle (% of all cores)"),
        Unit::Percent,
        "",
        column,
        u.idle_pct(),
    );
    report.set(
        scenario,
        &m("other processes (% of a core)"),
        Unit::Percent,
        "",
        column,
        u.other_pct(),
    );
    for metric in [
        "machine idle (% of all cores)",
        "other processes (% of a core)",
    ] {
        report.no_ratio(scenario, &m(metric));
    }
}

/// 1000 subscribers, one message in flight: on the single hub, on the cluster within node A, and
/// on the cluster from node A to node B.
async fn cluster_inflight(opts: &Opts, cfg: &Cfg, n: usize, report: &mut Report) {
    let label = format!("{} subscribers, 1 message in flight", cfg.inflight_subs);
    let spec = DeliverySpec {
        channels: 1,
        subs_per_channel: cfg.inflight_subs,
        posters: 1,
        window: 1,
        warmup: cfg.warmup / 2,
    };
    let (same, across) = (", same node", ", node A → node B");
    let variants = [
        Variant {
            column: "single",
            suffix: same,
            also: Some(across),
            cluster: false,
            place: Place::Same,
        },
        Variant {
            column: "cluster",
            suffix: same,
            also: None,
            cluster: true,
            place: Place::Same,
        },
        Variant {
            column: "cluster",
            suffix: across,
            also: None,
            cluster: true,
            place: Place::Across,
        },
    ];
    compare(&label, &spec, &variants, "", opts, cfg, n, report).await;
    let quantile = |report: &Report, metric: &str| {
        report
            .rows
            .iter()
            .find(|r| r.scenario == label && r.metric == metric)
            .and_then(|r| {
                r.values
                    .iter()
                    .find(|(c, _)| c == "cluster")
                    .map(|(_, v)| *v)
            })
    };
    for (q, goal) in [("p50", ""), ("p99", "≤ 2 ms (absolute)")] {
        let (a, s) = (
            quantile(report, &format!("latency {q}{across}")),
            quantile(report, &format!("latency {q}{same}")),
        );
        if let Some((a, s)) = a.zip(s) {
            let metric = format!("{q} node A → node B less {q} same node");
            report.set(&label, &metric, Unit::Latency, goal, "cluster", Some(a - s));
            report.no_ratio(&label, &metric);
        }
    }
}

/// The idle scenario: subscribers held by worker processes on a single hub (one node's share) and
/// on the cluster.
async fn cluster_idle(opts: &Opts, cfg: &Cfg, n: usize, report: &mut Report) {
    let total = cfg.max_idle_rust;
    let label = format!("idle SSE subscribers (1 channel each), {n} nodes");
    for (column, cluster, count) in [("single", None, total / n), ("cluster", Some(n), total)] {
        eprintln!(
            "[{column}] {label}: {} subscribers ...",
            thousands(count as f64)
        );
        let nodes = match Nodes::start_retry(cluster, opts, "idle", report).await {
            Ok(nodes) => nodes,
            Err(err) => {
                eprintln!("    error: {err:#}");
                report.problems.push(format!("{column}: {label}: {err:#}"));
                continue;
            }
        };
        if let Err(err) = idle_on(&nodes, column, count, opts, cfg, &label, report).await {
            eprintln!("    error: {err:#}");
            report.problems.push(format!("{column}: {label}: {err:#}"));
        }
        nodes.finish(&label, report).await;
    }
}

async fn idle_on(
    nodes: &Nodes,
    column: &str,
    count: usize,
    opts: &Opts,
    cfg: &Cfg,
    label: &str,
    report: &mut Report,
) -> Result<()> {
    let run = RUN.fetch_add(1, Relaxed);
    let prefix = format!("/v1/bench/r{run}-{}-idle", std::process::id());
    let n = nodes.nodes.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base: Vec<Option<u64>> = nodes.nodes.iter().map(|h| h.rss()).collect();
    let redis_base = nodes.redis.as_ref().and_then(|r| rss_kib(r.pid));
    let per_worker = opts.worker_subscribers.max(1);
    let worker_count = count.div_ceil(per_worker).max(1);
    let hubs: Vec<String> = nodes.nodes.iter().map(|h| h.addr.host.clone()).collect();
    let mut workers = Vec::with_capacity(worker_count);
    for w in 0..worker_count {
        let job = WorkerJob {
            hubs: hubs.clone(),
            prefix: prefix.clone(),
            from: w * count / worker_count,
            to: (w + 1) * count / worker_count,
        };
        workers.push(WorkerProc::start(&job)?);
    }
    // Opening: until all opened or failed, no progress for 30 s, or a worker is gone.
    let started = Instant::now();
    let mut last = (0, Instant::now());
    let mut printed = Instant::now();
    let status = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = sum_status(&workers);
        if s.ready + s.failed >= count || s.gone {
            break s;
        }
        if s.ready + s.failed > last.0 {
            last = (s.ready + s.failed, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            break s;
        }
        if printed.elapsed() > Duration::from_secs(2) {
            eprintln!("    {} idle subscribers open", thousands(s.ready as f64));
            printed = Instant::now();
        }
    };
    let open_secs = started.elapsed().as_secs_f64();
    let gen_cpu_open = status.cpu;
    if status.ready < count {
        report.problems.push(format!(
            "{column}: {label}: {} of {count} subscribers opened ({} failed{}); first error: {}",
            status.ready,
            status.failed,
            if status.gone { ", a worker exited" } else { "" },
            status.error.clone().unwrap_or_default()
        ));
    }
    // Each node subscribes in Redis to each of its subscribers' channels.
    let mut per_node: Vec<(u64, u64)> = Vec::with_capacity(n);
    for hub in &nodes.nodes {
        let channels = metric(&hub.addr, "signalhub_channels").await.unwrap_or(0.0) as u64;
        if nodes.redis.is_some() {
            if let Err(err) =
                settle_subscriptions(&hub.addr, channels, Duration::from_secs(120)).await
            {
                report.problems.push(format!("{column}: {label}: {err:#}"));
            }
        }
        let subscribers = metric(&hub.addr, "signalhub_subscribers")
            .await
            .unwrap_or(0.0) as u64;
        per_node.push((subscribers, channels));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_now: Vec<Option<u64>> = nodes.nodes.iter().map(|h| h.rss()).collect();
    let redis_now = nodes.redis.as_ref().and_then(|r| rss_kib(r.pid));
    let held = sum_status(&workers);
    let held_count = held.ready - held.lost;
    let reported = hub_subscribers(&nodes.nodes[0].addr).await;
    let mut per_sub = Vec::with_capacity(n);
    let mut lines = Vec::with_capacity(n);
    for (i, ((base, now), (subs, _))) in rss_base.iter().zip(&rss_now).zip(&per_node).enumerate() {
        let v = base
            .zip(*now)
            .filter(|_| *subs > 0)
            .map(|(a, b)| (b as f64 - a as f64) / *subs as f64);
        if let Some(v) = v {
            per_sub.push(v);
        }
        lines.push(format!(
            "node{i}: {} subscribers, RSS {} → {} ({} / subscriber)",
            thousands(*subs as f64),
            base.map_or("n/a".into(), |v| fmt_value(v as f64, Unit::KiB)),
            now.map_or("n/a".into(), |v| fmt_value(v as f64, Unit::KiB)),
            v.map_or("n/a".into(), |v| fmt_value(v, Unit::KiB))
        ));
    }
    // Liveness: 200 sampled subscribers' channels, each posted to on another node than its own.
    let sample: Vec<usize> = (0..200.min(count))
        .map(|k| k * count / 200.min(count))
        .collect();
    let before = sum_status(&workers).delivered;
    let sources = Sources::new(n, &nodes.nodes[0].addr);
    let mut conns: Vec<PostConn> = (0..n)
        .map(|i| PostConn::new(nodes.addr(i), sources.get(i)))
        .collect();
    let mut posted = 0u64;
    let mut post_error = None;
    for &i in &sample {
        let conn = &mut conns[(i + 1) % n];
        let path = format!("{prefix}{i}");
        match tokio::time::timeout(
            Duration::from_secs(5),
            conn.post(&path, i as u64, cfg.body_bytes),
        )
        .await
        {
            Ok(Ok(200)) => posted += 1,
            Ok(Ok(status)) => post_error = Some(format!("POST answered {status}")),
            Ok(Err(err)) => post_error = Some(format!("{err:#}")),
            Err(_) => post_error = Some("POST not answered within 5 s".to_string()),
        }
        if post_error.is_some() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sum_status(&workers).delivered - before < posted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = sum_status(&workers).delivered - before;
    let liveness = format!(
        "{got}/{} sampled subscribers got the message posted {}{}",
        sample.len(),
        if n > 1 {
            "on the next node"
        } else {
            "on the hub"
        },
        post_error.map_or(String::new(), |e| format!("; {e}"))
    );
    if got < sample.len() as u64 {
        report
            .problems
            .push(format!("{column}: {label}: liveness: {liveness}"));
    }
    let after = sum_status(&workers);
    if after.lost > 0 {
        report.problems.push(format!(
            "{column}: {label}: {} idle subscribers lost their stream",
            after.lost
        ));
    }
    let gen_pct = gen_cpu_open * 100.0 / open_secs.max(1e-9);
    report.set(
        label,
        "subscribers held",
        Unit::Count,
        "100 000 (cluster)",
        column,
        Some(held_count as f64),
    );
    report.no_ratio(label, "subscribers held");
    report.set(label, "hub nodes", Unit::Count, "", column, Some(n as f64));
    report.no_ratio(label, "hub nodes");
    report.set(
        label,
        "most subscribers on one node",
        Unit::Count,
        "< 20 000 (open-file limit)",
        column,
        per_node.iter().map(|(s, _)| *s as f64).reduce(f64::max),
    );
    report.no_ratio(label, "most subscribers on one node");
    report.set(
        label,
        "hub RSS / subscriber, worst node",
        Unit::KiB,
        "≤ 3 KiB (absolute)",
        column,
        per_sub.iter().copied().reduce(f64::max),
    );
    report.set(
        label,
        "hub RSS / subscriber, mean of nodes",
        Unit::KiB,
        "",
        column,
        (!per_sub.is_empty()).then(|| per_sub.iter().sum::<f64>() / per_sub.len() as f64),
    );
    report.set(
        label,
        "hub RSS, all nodes",
        Unit::KiB,
        "",
        column,
        rss_now
            .iter()
            .copied()
            .sum::<Option<u64>>()
            .map(|v| v as f64),
    );
    report.no_ratio(label, "hub RSS, all nodes");
    if let (Some(a), Some(b)) = (redis_base, redis_now) {
        report.set(label, "Redis RSS", Unit::KiB, "", column, Some(b as f64));
        report.set(
            label,
            "Redis RSS / subscriber",
            Unit::KiB,
            "",
            column,
            (held_count > 0).then(|| (b as f64 - a as f64) / held_count as f64),
        );
    }
    report.set(
        label,
        "subscribers opened per s",
        Unit::PerSec,
        "",
        column,
        Some(status.ready as f64 / open_secs),
    );
    report.no_ratio(label, "subscribers opened per s");
    report.set(
        label,
        "generator processes",
        Unit::Count,
        "",
        column,
        Some(workers.len() as f64),
    );
    report.no_ratio(label, "generator processes");
    report.set(
        label,
        "generator CPU while opening (% of a core)",
        Unit::Percent,
        "",
        column,
        Some(gen_pct),
    );
    report.no_ratio(label, "generator CPU while opening (% of a core)");
    report.notes.push(format!(
        "{column} idle: held {} of {}; GET / on node0 reports {}; liveness: {liveness}; {}",
        thousands(held_count as f64),
        thousands(count as f64),
        reported.map_or("n/a".into(), |v| thousands(v as f64)),
        lines.join("; ")
    ));
    eprintln!(
        "    held {held_count}; {}; liveness {liveness}; Redis RSS {}",
        lines.join("; "),
        redis_now.map_or("n/a".into(), |v| fmt_value(v as f64, Unit::KiB))
    );
    drop(workers);
    Ok(())
}
