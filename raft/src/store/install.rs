//! The hand-over between a follower's snapshot install and the log purge that comes with it.
//!
//! openraft 0.9 purges a follower's log up to a received snapshot as soon as it hands the
//! snapshot to the state machine, without waiting for the install. A crash in between would
//! leave the log purged past the applied state, with nothing on disk holding the entries in
//! between: the node could not start again (the entries it must re-apply are gone).
//!
//! Invariant: the log is purged past the applied index only once an install that covers the
//! purge is durable (its marker is written, so a restart finishes it), or when no install is
//! under way at all.
//!
//! The purge runs in openraft's core, so waiting holds the follower's core for as long as the
//! received file takes to copy, fsync and check: milliseconds for the test states, seconds for
//! a state of gigabytes, during which that follower answers no heartbeat (it is not caught up
//! until the install ends anyway).

use std::sync::Arc;

use tokio::sync::watch;

use super::error::StoreError;

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// A snapshot is being received or installed.
    receiving: bool,
    /// The last index of the newest install that is durable.
    durable_through: u64,
    /// An install failed (the node stops: openraft treats it as fatal).
    failed: bool,
}

#[derive(Clone, Default)]
pub(crate) struct Installs(Arc<watch::Sender<State>>);

impl Installs {
    /// A snapshot started to arrive.
    pub fn receiving(&self) {
        self.0.send_modify(|s| s.receiving = true);
    }

    /// The install of a snapshot ending at `index` is durable.
    pub fn durable(&self, index: u64) {
        self.0.send_modify(|s| {
            s.receiving = false;
            s.durable_through = s.durable_through.max(index);
        });
    }

    /// The state machine failed (openraft stops on it): no install will become durable.
    pub fn failed(&self) {
        self.0.send_modify(|s| {
            s.receiving = false;
            s.failed = true;
        });
    }

    /// Waits until purging the log through `index` cannot lose state the machine (applied
    /// through `applied`) lacks.
    pub async fn purgeable(&self, index: u64, applied: u64) -> Result<(), StoreError> {
        if index <= applied {
            return Ok(());
        }
        let mut state = self.0.subscribe();
        let settled = state.wait_for(|s| !s.receiving || s.failed || s.durable_through >= index).await;
        match settled {
            Ok(s) if s.failed => Err(StoreError::PurgeHeld(format!(
                "a snapshot install failed, so the log through {index} it would replace is kept"
            ))),
            Ok(_) => Ok(()),
            // Unreachable: `self` holds the sender.
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_purge_past_the_applied_state_waits_for_the_install_to_be_durable() {
        let installs = Installs::default();
        // Within the applied state, or with no install under way: at once.
        installs.purgeable(10, 10).await.unwrap();
        installs.purgeable(20, 10).await.unwrap();

        installs.receiving();
        let waiting = tokio::spawn({
            let installs = installs.clone();
            async move { installs.purgeable(50, 10).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the purge went ahead of the install");
        installs.durable(50);
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_install_fails_the_purge_it_would_have_allowed() {
        let installs = Installs::default();
        installs.receiving();
        let waiting = tokio::spawn({
            let installs = installs.clone();
            async move { installs.purgeable(50, 10).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        installs.failed();
        assert!(waiting.await.unwrap().is_err());
    }
}
