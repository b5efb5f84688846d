//! Crash points: named places where a test can make the process die as `kill -9` would, or
//! stop there as SIGSTOP would stop it.
//!
//! `KEEPSAKE_CRASH_AT=NAME` (or `NAME:N`, the N-th time) makes the process send itself SIGKILL
//! when it reaches `point(NAME)`: no destructor, flush or fsync runs, exactly as when an operator
//! or the kernel kills it. `KEEPSAKE_STOP_AT=NAME[:N]` makes it send itself SIGSTOP there
//! instead, so a test can change the world around a process frozen at that step and then let it
//! go on (SIGCONT). The names are listed in `docs/reliability.md` (Crash points); tests name
//! them, nothing else does.
//!
//! Compiled only with the `failpoints` feature, which the tests turn on: without it `point`
//! is empty and the release binary holds no trace of the variables (`tests/layout.rs` checks).

/// Without `failpoints`, a point is nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &str) {}

#[cfg(feature = "failpoints")]
pub use armed::point;

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    struct Target {
        name: String,
        /// Acts on this hit (1: the first).
        nth: u64,
        hits: AtomicU64,
    }

    impl Target {
        fn from_env(var: &str) -> Option<Target> {
            let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
            let (name, nth) = match value.rsplit_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (value, 1),
            };
            Some(Target { name, nth: nth.max(1), hits: AtomicU64::new(0) })
        }

        /// Whether this is the hit to act on.
        fn hit(target: &Option<Target>, name: &str) -> bool {
            target.as_ref().is_some_and(|t| t.name == name && t.hits.fetch_add(1, Ordering::SeqCst) + 1 == t.nth)
        }
    }

    fn targets() -> &'static (Option<Target>, Option<Target>) {
        static TARGETS: OnceLock<(Option<Target>, Option<Target>)> = OnceLock::new();
        TARGETS.get_or_init(|| (Target::from_env("KEEPSAKE_CRASH_AT"), Target::from_env("KEEPSAKE_STOP_AT")))
    }

    /// Dies here, by SIGKILL, when `KEEPSAKE_CRASH_AT` names this point (and this is its N-th hit);
    /// stops here, by SIGSTOP, when `KEEPSAKE_STOP_AT` does.
    pub fn point(name: &str) {
        let (crash, stop) = targets();
        for (target, verb, signal) in [(crash, "SIGKILL", libc::SIGKILL), (stop, "SIGSTOP", libc::SIGSTOP)] {
            if Target::hit(target, name) {
                eprintln!("crash point {name}: {verb}");
                // To this thread, not the process: a process-directed SIGSTOP may be taken by an
                // idle thread, and until it wakes this one runs on past the point.
                #[allow(unsafe_code)]
                // SAFETY: raise(3) with a valid signal number.
                unsafe {
                    libc::raise(signal);
                }
            }
        }
    }
}
