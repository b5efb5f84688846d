//! Crash points: named places where a test can make the process die as `kill -9` would.
//!
//! `KEEPSAKE_CRASH_AT=NAME` (or `NAME:N`, the N-th time) makes the process send itself SIGKILL
//! when it reaches `point(NAME)`: no destructor, flush or fsync runs, exactly as when an operator
//! or the kernel kills it. Without the variable a point costs one load of a cached value. The
//! names are listed in `docs/reliability.md` (Crash points); tests name them, nothing else does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const VAR: &str = "KEEPSAKE_CRASH_AT";

struct Target {
    name: String,
    /// Dies on this hit (1: the first).
    nth: u64,
    hits: AtomicU64,
}

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let value = std::env::var(VAR).ok().filter(|v| !v.is_empty())?;
            let (name, nth) = match value.rsplit_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (value, 1),
            };
            Some(Target { name, nth: nth.max(1), hits: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Dies here, by SIGKILL, when `KEEPSAKE_CRASH_AT` names this point (and this is its N-th hit).
pub fn point(name: &str) {
    let Some(t) = target() else { return };
    if t.name != name || t.hits.fetch_add(1, Ordering::SeqCst) + 1 != t.nth {
        return;
    }
    eprintln!("crash point {name} (hit {}): SIGKILL", t.nth);
    // SAFETY: kill(2) on our own pid with a valid signal number; it does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
