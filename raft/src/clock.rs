//! Wall-clock time as Keepsake records it: microseconds since the Unix epoch.
//!
//! The leader stamps a write when it proposes it (never at apply, so apply stays deterministic);
//! the archive, retention and restore leases compare against the same clock.

/// Now, in microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
