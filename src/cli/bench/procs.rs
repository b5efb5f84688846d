//! What the servers cost while the benchmark runs: CPU seconds and peak resident memory of each
//! watched process *and its descendants* (PostgreSQL serves each connection from a child
//! process; pgBackRest runs as a child of its archiver), read from `/proc` (Linux).

use serde::Serialize;

/// A process tree's CPU time so far (live processes plus reaped children) and the largest peak
/// RSS (the kernel's high-water mark, `VmHWM`) of any process in it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

/// (parent pid, user + system ticks of the process, of its reaped children) from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after_name.split(' ').collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // Fields 4 (ppid) and 14–17 (utime, stime, cutime, cstime) of the line: 1 and 11–14 here.
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// `root` and every live descendant.
fn tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.0)))
        .collect();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

fn sample(root: u32) -> Option<Sample> {
    let (_, own, reaped) = stat(root)?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let procs = tree(root);
    let descendants: u64 = procs[1..].iter().filter_map(|p| stat(*p)).map(|(_, t, _)| t).sum();
    let peak_rss_bytes = procs.iter().map(|p| peak_rss(*p)).max().unwrap_or(0);
    Some(Sample { cpu_seconds: (own + reaped + descendants) as f64 / hz, peak_rss_bytes })
}

/// The processes to report on, with their CPU time when the measured run began.
pub struct Watch {
    procs: Vec<(String, u32, Option<Sample>)>,
}

#[derive(Debug, Serialize)]
pub struct ProcReport {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (user + system) the process and its descendants spent during the measured
    /// run.
    pub cpu_seconds: f64,
    /// The largest peak resident set size of the process or any live descendant.
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
        let child = std::process::Command::new("sleep").arg("5").spawn().expect("start a child");
        assert!(super::tree(std::process::id()).contains(&child.id()), "descendants are found");
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
}
