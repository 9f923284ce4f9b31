//! The latency histogram (percentiles) and the Markdown report every scenario writes into.

use crate::*;

// Latency histogram: log-linear buckets, 32 per power of two (about 3 % resolution).

pub(crate) const SUB_BITS: u32 = 5;
pub(crate) const SUB: usize = 1 << SUB_BITS;
pub(crate) const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

pub(crate) struct Hist {
    pub(crate) counts: Box<[u64]>,
    pub(crate) n: u64,
    pub(crate) max: u64,
}

impl Hist {
    pub(crate) fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            n: 0,
            max: 0,
        }
    }

    #[inline]
    pub(crate) fn index(v: u64) -> usize {
        if v < (2 * SUB) as u64 {
            v as usize
        } else {
            let msb = 63 - v.leading_zeros();
            let shift = msb - SUB_BITS;
            (shift as usize + 1) * SUB + ((v >> shift) as usize & (SUB - 1))
        }
    }

    /// The middle of a bucket.
    pub(crate) fn value(index: usize) -> u64 {
        if index < 2 * SUB {
            index as u64
        } else {
            let shift = (index / SUB - 1) as u32;
            let mantissa = (SUB + index % SUB) as u64;
            (mantissa << shift) + (1u64 << shift) / 2
        }
    }

    #[inline]
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    pub(crate) fn clear(&mut self) {
        self.counts.fill(0);
        self.n = 0;
        self.max = 0;
    }

    pub(crate) fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// One histogram per generator thread: readers add their samples to the histogram of the thread
/// they run on, which stays in cache (a histogram per reader would not, with 1000 readers).
pub(crate) static HISTS: Mutex<Vec<Arc<Mutex<Hist>>>> = Mutex::new(Vec::new());

thread_local! {
    static THREAD_HIST: Arc<Mutex<Hist>> = {
        let hist = Arc::new(Mutex::new(Hist::new()));
        HISTS.lock().unwrap().push(hist.clone());
        hist
    };
}

pub(crate) fn record_latencies(samples: &mut Vec<u64>) {
    THREAD_HIST.with(|hist| {
        let mut hist = hist.lock().unwrap();
        for &sample in samples.iter() {
            hist.record(sample);
        }
    });
    samples.clear();
}

pub(crate) fn reset_latencies() {
    for hist in HISTS.lock().unwrap().iter() {
        hist.lock().unwrap().clear();
    }
}

pub(crate) fn merged_latencies() -> Hist {
    let mut merged = Hist::new();
    for hist in HISTS.lock().unwrap().iter() {
        merged.merge(&hist.lock().unwrap());
    }
    merged
}

#[derive(Clone, Copy)]
pub(crate) enum Unit {
    PerSec,
    /// Microseconds of CPU.
    CpuUs,
    /// Latency in nanoseconds, shown in µs or ms.
    Latency,
    KiB,
    Count,
    Percent,
}

pub(crate) fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

pub(crate) fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSec => format!("{}/s", thousands(v)),
        Unit::CpuUs => format!("{v:.2} µs"),
        Unit::Latency if v < 1e6 => format!("{:.0} µs", v / 1e3),
        Unit::Latency => format!("{:.2} ms", v / 1e6),
        Unit::KiB if v >= 1024.0 => format!("{:.1} MiB", v / 1024.0),
        Unit::KiB => format!("{v:.2} KiB"),
        Unit::Count => thousands(v),
        Unit::Percent => format!("{v:.0} %"),
    }
}

pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) metric: String,
    pub(crate) unit: Unit,
    pub(crate) goal: &'static str,
    pub(crate) values: Vec<(String, f64)>,
    /// Whether Rust/JS means anything for this row.
    pub(crate) ratio: bool,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
    pub(crate) problems: Vec<String>,
}

impl Report {
    pub(crate) fn set(
        &mut self,
        scenario: &str,
        metric: &str,
        unit: Unit,
        goal: &'static str,
        target: &str,
        v: Option<f64>,
    ) {
        let Some(v) = v.filter(|v| v.is_finite()) else {
            return;
        };
        let index = match self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    scenario: scenario.to_string(),
                    metric: metric.to_string(),
                    unit,
                    goal,
                    values: Vec::new(),
                    ratio: true,
                });
                self.rows.len() - 1
            }
        };
        self.rows[index].values.push((target.to_string(), v));
    }

    /// Adds a row without values yet, so that it stands where a later value would not put it.
    pub(crate) fn add_row(&mut self, scenario: &str, metric: &str, unit: Unit, goal: &'static str) {
        if !self
            .rows
            .iter()
            .any(|r| r.scenario == scenario && r.metric == metric)
        {
            self.rows.push(Row {
                scenario: scenario.to_string(),
                metric: metric.to_string(),
                unit,
                goal,
                values: Vec::new(),
                ratio: true,
            });
        }
    }

    /// Leaves the Rust/JS ratio of a row blank.
    pub(crate) fn no_ratio(&mut self, scenario: &str, metric: &str) {
        for row in &mut self.rows {
            if row.scenario == scenario && row.metric == metric {
                row.ratio = false;
            }
        }
    }

    pub(crate) fn print(&self, targets: &[Target]) {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        self.print_columns(&names, ("rust", "js"), "issue target (rust/js)");
    }

    /// The table with a column per name, and `a/b` with the goal when both columns are there.
    pub(crate) fn print_columns(&self, names: &[&str], (a, b): (&str, &str), goal: &str) {
        let ratio = names.contains(&a) && names.contains(&b);
        let mut out = String::new();
        let _ = write!(out, "| scenario | metric |");
        for name in names {
            let _ = write!(out, " {name} |");
        }
        if ratio {
            let _ = write!(out, " {a}/{b} | {goal} |");
        }
        out.push('\n');
        let columns = 2 + names.len() + if ratio { 2 } else { 0 };
        out.push('|');
        for i in 0..columns {
            out.push_str(if i >= 2 { "---:|" } else { "---|" });
        }
        out.push('\n');
        let mut last_scenario = "";
        for row in &self.rows {
            let scenario = if row.scenario == last_scenario {
                ""
            } else {
                row.scenario.as_str()
            };
            last_scenario = &row.scenario;
            let _ = write!(out, "| {scenario} | {} |", row.metric);
            let get = |name: &str| row.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            for name in names {
                match get(name) {
                    Some(v) => {
                        let _ = write!(out, " {} |", fmt_value(v, row.unit));
                    }
                    None => out.push_str(" n/a |"),
                }
            }
            if ratio {
                match get(a).zip(get(b)) {
                    Some((r, j)) if j != 0.0 && row.ratio => {
                        let q = r / j;
                        let text = if q >= 10.0 {
                            format!("{q:.1}")
                        } else if q >= 1.0 {
                            format!("{q:.2}")
                        } else {
                            format!("{q:.3}")
                        };
                        let _ = write!(out, " {text} |");
                    }
                    _ => out.push_str(" |"),
                }
                let _ = write!(out, " {} |", row.goal);
            }
            out.push('\n');
        }
        println!("\n{out}");
        if !self.notes.is_empty() {
            println!("Notes:");
            for note in &self.notes {
                println!("- {note}");
            }
            println!();
        }
        if self.problems.is_empty() {
            println!("Problems: none seen (no lost subscribers, missing deliveries, failed requests or hub warnings).");
        } else {
            println!("Problems:");
            for problem in &self.problems {
                println!("- {problem}");
            }
        }
    }
}

pub(crate) fn latency_detail(hist: &Hist) -> String {
    let q = |p| {
        hist.quantile(p)
            .map_or("n/a".to_string(), |v| fmt_value(v as f64, Unit::Latency))
    };
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        fmt_value(hist.max as f64, Unit::Latency),
        hist.n
    )
}

pub(crate) fn record_delivery(
    report: &mut Report,
    scenario: &str,
    target: &str,
    r: &DeliveryResult,
    p99_goal: &'static str,
) {
    let u = &r.usage;
    report.set(
        scenario,
        "deliveries/s",
        Unit::PerSec,
        "",
        target,
        Some(u.rate()),
    );
    report.set(
        scenario,
        "latency p50",
        Unit::Latency,
        "",
        target,
        r.hist.quantile(0.5).map(|v| v as f64),
    );
    report.set(
        scenario,
        "latency p99",
        Unit::Latency,
        p99_goal,
        target,
        r.hist.quantile(0.99).map(|v| v as f64),
    );
    report.set(
        scenario,
        "hub CPU / delivery",
        Unit::CpuUs,
        "≤ 0.10",
        target,
        u.hub_us(),
    );
    report.set(
        scenario,
        "hub CPU (% of a core)",
        Unit::Percent,
        "",
        target,
        u.hub_pct(),
    );
    report.set(
        scenario,
        "generator CPU / delivery",
        Unit::CpuUs,
        "",
        target,
        u.gen_us(),
    );
    report.set(
        scenario,
        "generator CPU (% of a core)",
        Unit::Percent,
        "",
        target,
        Some(u.gen_pct()),
    );
    note_noise(report, scenario, target, u);
    eprintln!(
        "    {} deliveries/s ({} POSTs/s), latency {}; hub CPU {} / delivery ({}); generator CPU {} / delivery ({}, {:.2} reads per delivery); other processes {}",
        thousands(u.rate()),
        thousands(r.posts_per_sec),
        latency_detail(&r.hist),
        u.hub_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
        u.hub_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent)),
        u.gen_us().map_or("n/a".into(), |v| fmt_value(v, Unit::CpuUs)),
        fmt_value(u.gen_pct(), Unit::Percent),
        r.reads_per_frame,
        u.other_pct().map_or("n/a".into(), |v| fmt_value(v, Unit::Percent))
    );
}

/// Notes a run during which other processes took a noticeable share of the cores.
pub(crate) fn note_noise(report: &mut Report, scenario: &str, target: &str, u: &Usage) {
    if let Some(other) = u.other_pct().filter(|&p| p >= 15.0) {
        report.notes.push(format!(
            "noise: other processes used {} of a core during {target} / {scenario}",
            fmt_value(other, Unit::Percent)
        ));
    }
}
