//! What a benchmark run prints: throughput, the latency distribution from an HDR histogram,
//! errors by status, the servers' CPU and memory, the archive's lag and the disk's fsync round;
//! as a table for people or one JSON object for scripts.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::fsync::FsyncRound;
use super::procs::ProcReport;

/// Latencies are recorded in microseconds, up to 10 minutes, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        Latency {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ArchiveLag {
    pub samples: u64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: super::target::Target,
    pub mix: String,
    pub durability: String,
    pub clients: usize,
    pub connections: usize,
    pub value_bytes: usize,
    pub keys: u64,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_second: f64,
    pub latency: Latency,
    pub errors: BTreeMap<String, u64>,
    /// One message per error code: the first one seen.
    pub error_messages: BTreeMap<String, String>,
    pub servers: Vec<ProcReport>,
    pub archive_lag: Option<ArchiveLag>,
    pub fsync_round: Option<FsyncRound>,
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl Report {
    pub fn print_text(&self) {
        println!(
            "{:?}  mix {}  {} clients on {} connections  {} B values  {} keys  durability {}",
            self.target, self.mix, self.clients, self.connections, self.value_bytes, self.keys, self.durability
        );
        println!("  throughput   {:.0} ops/s ({} ops in {:.1} s)", self.ops_per_second, self.ops, self.seconds);
        let l = &self.latency;
        println!(
            "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
        if self.errors.is_empty() {
            println!("  errors       none");
        }
        for (code, n) in &self.errors {
            let message = self.error_messages.get(code).map_or("", String::as_str);
            println!("  errors       {n} × {code}: {message}");
        }
        for s in &self.servers {
            println!(
                "  server       {} (pid {}): {:.1} CPU s, peak RSS {:.0} MiB",
                s.name,
                s.pid,
                s.cpu_seconds,
                s.peak_rss_bytes as f64 / (1 << 20) as f64
            );
        }
        if let Some(a) = &self.archive_lag {
            println!(
                "  archive lag  p50 {:.3} s  p99 {:.3} s  max {:.3} s ({} samples)",
                a.p50_seconds, a.p99_seconds, a.max_seconds, a.samples
            );
        }
        if let Some(f) = &self.fsync_round {
            println!(
                "  fsync round  p50 {}  p99 {} (4 KiB append + fdatasync, {} rounds in {})",
                ms(f.p50_us),
                ms(f.p99_us),
                f.rounds,
                f.dir
            );
        }
    }
}
