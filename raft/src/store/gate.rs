//! The purge gate: the highest log index another component (the archiver) allows to be purged.
//!
//! Invariant: the log store never deletes an entry above the gate's limit, whatever openraft
//! asks for (docs/design.md §1.5: nothing is purged before it is archived).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct PurgeGate(Arc<AtomicU64>);

impl Default for PurgeGate {
    /// Open: with no archive, the log may be purged up to any snapshot.
    fn default() -> Self {
        PurgeGate(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl PurgeGate {
    /// Entries at or below `index` may be purged; nothing above.
    pub fn set_limit(&self, index: u64) {
        self.0.store(index, Ordering::SeqCst);
    }

    pub fn limit(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
