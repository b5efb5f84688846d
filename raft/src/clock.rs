//! Wall-clock time as Keepsake records it: microseconds since the Unix epoch.
//!
//! The leader stamps a write when it proposes it (never at apply, so apply stays deterministic);
//! the archive, retention and restore leases compare against the same clock. Stamps never step
//! back across leaders (`proposer.rs`), whatever the nodes' clocks say.
//!
//! With the `failpoints` feature, `KEEPSAKE_CLOCK_OFFSET_MS` shifts this node's clock, so a
//! test can run one node with a skewed clock; a release binary has no such hook.

/// Now, in microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    now.saturating_add(offset_us())
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn offset_us() -> i64 {
    0
}

#[cfg(feature = "failpoints")]
fn offset_us() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("KEEPSAKE_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |ms| ms.saturating_mul(1000))
    })
}
