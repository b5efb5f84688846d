//! Small wrappers over the operating system and std that the harness shares: a signal to a
//! child process, and a mutex lock that survives a test that panicked while holding it.

use std::sync::{Mutex, MutexGuard};

#[allow(unsafe_code)]
pub(super) fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a child we have not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
