//! The monotonic clock, and what `/proc` says about processes: CPU time, memory, open-file limits.

use crate::*;

/// Nanoseconds since the first call, on the monotonic clock. Send and receipt times of every message
/// are taken in this process, so they compare directly.
pub(crate) fn now_ns() -> u64 {
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub(crate) fn clock_ticks_per_sec() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    })
}

pub(crate) fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// User + system CPU seconds of a process (`None`: this process), all threads.
pub(crate) fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_sec())
}

/// CPU seconds all processes of the machine have used (user, nice, system, irq, softirq, steal).
pub(crate) fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy / clock_ticks_per_sec())
}

/// Children that die with this process: the Drop guards kill them at the end, on an error or a
/// panic; this covers a hubload that is killed itself (SIGKILL, or SIGTERM to it alone).
pub(crate) trait DieWithParent {
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe, and the closure allocates nothing. The signal comes
        // when the spawning thread ends: hubload spawns from its main thread.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

/// Resident set size in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(Some(pid), "status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// "soft/hard" open-file limit of a process.
pub(crate) fn nofile_limit(pid: Option<u32>) -> Option<String> {
    let limits = std::fs::read_to_string(proc_path(pid, "limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    Some(format!("{}/{}", words.next()?, words.next()?))
}

pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// File descriptors this process may still open, keeping a reserve.
pub(crate) fn fd_budget() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    (soft as usize).saturating_sub(open_fds() + 64)
}

/// Raises the open-file limit: to `want` if this process may raise the hard limit, else to the
/// hard limit. Child hubs inherit it.
pub(crate) fn raise_nofile(want: u64) -> String {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    if hard < want && rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        return format!("open-file limit raised to {want}");
    }
    match rlimit::increase_nofile_limit(want.max(soft)) {
        Ok(now) if now < want => format!(
            "open-file limit {now} (hard limit {hard}; raising it needs CAP_SYS_RESOURCE): fewer than {want} connections fit"
        ),
        Ok(now) => format!("open-file limit {now}"),
        Err(err) => format!("could not raise the open-file limit ({soft}/{hard}): {err}"),
    }
}
