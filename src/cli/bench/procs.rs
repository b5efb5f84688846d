//! What the servers cost while the benchmark runs: CPU seconds and peak resident memory of each
//! watched process, read from `/proc` (Linux).

use serde::Serialize;

/// One process's CPU time so far and its peak RSS (the kernel's high-water mark, `VmHWM`).
#[derive(Clone, Copy, Debug)]
struct Sample {
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(Sample { cpu_seconds: ticks as f64 / hz, peak_rss_bytes: hwm_kib * 1024 })
}

/// The processes to report on, with their CPU time when the measured run began.
pub struct Watch {
    procs: Vec<(String, u32, Option<Sample>)>,
}

#[derive(Debug, Serialize)]
pub struct ProcReport {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (user + system) spent during the measured run.
    pub cpu_seconds: f64,
    /// Peak resident set size over the process's life.
    pub peak_rss_bytes: u64,
}

impl Watch {
    pub fn new(procs: Vec<(String, u32)>) -> Self {
        Watch { procs: procs.into_iter().map(|(n, p)| (n, p, None)).collect() }
    }

    /// Marks the start of the measured run.
    pub fn start(&mut self) {
        for (_, pid, start) in &mut self.procs {
            *start = sample(*pid);
        }
    }

    pub fn report(&self) -> Vec<ProcReport> {
        self.procs
            .iter()
            .filter_map(|(name, pid, start)| {
                let now = sample(*pid)?;
                let base = start.map_or(0.0, |s| s.cpu_seconds);
                Some(ProcReport {
                    name: name.clone(),
                    pid: *pid,
                    cpu_seconds: now.cpu_seconds - base,
                    peak_rss_bytes: now.peak_rss_bytes,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let s = super::sample(std::process::id()).expect("read /proc/self");
        assert!(s.peak_rss_bytes > 1 << 20, "a test process holds more than 1 MiB: {}", s.peak_rss_bytes);
        assert!(s.cpu_seconds >= 0.0);
        assert!(super::sample(u32::MAX).is_none(), "no such process");
    }
}
