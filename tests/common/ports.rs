//! Ports for the test nodes: `free_ports` picks them in a range reserved below the kernel's
//! ephemeral one and holds a `flock` on one lock file per port, so that no concurrent test
//! process and no outgoing connection takes a port before its node listens on it.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::ops::Range;
use std::sync::Mutex;

use super::os::lock;

/// Where test processes reserve ports: one lock file per port, locked for the life of the
/// process that holds it (the kernel drops the lock when that process dies, however it dies).
const PORT_LOCKS: &str = "keepsake-test-ports";

/// The reserved port range: below the kernel's ephemeral range (32768–60999 by default), so an
/// outgoing connection never takes a node's port between its choice and the node's bind, or
/// while a killed node is down; and below the bench tests' 20000–30100 blocks.
const TEST_PORTS: Range<u16> = 10_000..20_000;

/// `n` distinct ports on 127.0.0.1, each free when chosen and reserved for this test process
/// (see `PORT_LOCKS`), so that neither a concurrent test nor an outgoing connection can take it
/// before a node listens on it.
pub(super) fn free_ports(n: usize) -> Vec<u16> {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join(PORT_LOCKS);
    std::fs::create_dir_all(&dir).expect("create the test port-lock directory");
    let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    let mut next = u64::from(std::process::id()).wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut held = lock(&HELD);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        next = next.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let port = TEST_PORTS.start + ((next >> 33) % span) as u16;
        if ports.contains(&port) {
            continue;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .expect("open a test port-lock file");
        if try_lock(&file) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            held.push(file);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "not enough free ports in {TEST_PORTS:?} on 127.0.0.1");
    ports
}

/// An exclusive `flock` on `file`, if no other open file holds one (`File::try_lock` needs
/// Rust 1.89, above the crate's minimum).
#[allow(unsafe_code)]
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor the `File` owns and keeps open.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
