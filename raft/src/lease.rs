//! The leader's lease: when a linearizable read needs no quorum round of its own.
//!
//! openraft 0.9's followers refuse to vote for another candidate for `election_timeout_max`
//! after they last accepted the leader's AppendEntries (openraft's `leader_lease`), and a
//! follower stands for election itself only after that plus an election timeout. So once a
//! quorum of voters has accepted AppendEntries the leader *sent* at time `t`, no other leader can
//! be elected before `t + election_timeout_max` without this leader's own vote — and a leader
//! that grants a vote has stepped down in its Raft core. The leader trusts the lease only until
//! `t + election_timeout_min`; the difference is the margin for the nodes' clocks running at
//! different rates.
//!
//! `Acks` learns `t` from the replication traffic itself: the peer transport records, per peer,
//! the send time of the newest AppendEntries it accepted (any answer but `HigherVote` means the
//! peer took the vote). Heartbeats and writes both renew it, so the lease costs no messages.
//!
//! Invariant: `Lease::confirm` answers only when (1) Raft's core (`leading`), at a moment after
//! the read arrived and in its own order with the vote requests it handles, said this node leads
//! and has committed an entry of its own term, and (2) a quorum of voters accepted, under the
//! same vote, AppendEntries sent at most `election_timeout_min` before `confirm` ran. It answers
//! the core's commit index; `read_index.rs` raises it to the leader's floor. Anything else — a
//! joint membership, a leader transfer under way, the term the process started in, a new
//! leader's first moments, `raft.lease_reads = false` — gives no answer, and the caller runs a
//! quorum round.
//!
//! Assumed, and documented for operators:
//! - The nodes' monotonic clocks advance at rates within that margin of each other. A VM whose
//!   clock stops while the VM is paused breaks this; run such nodes with lease reads off.
//! - Every node's `election_timeout_max_ms` is at least every node's `election_timeout_min_ms`.
//!   A rolling change that lowers the timeouts must turn lease reads off until it is done.
//! - A node whose data directory is wiped has forgotten its vote, as Raft itself assumes not.
//!
//! Left open: the follower handling TimeoutNow (`Consensus::stand_for_election`) checks that it still follows
//! the sender and then starts its election in two messages to its core; a newer leader whose
//! AppendEntries the follower accepts in between (microseconds) would see its lease skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::{ServerState, Vote};

use crate::{NodeId, Raft};

/// Per peer: the vote and send time of the newest AppendEntries it accepted.
#[derive(Default)]
pub struct Acks(Mutex<HashMap<NodeId, (Vote<NodeId>, Instant)>>);

impl Acks {
    /// `peer` accepted AppendEntries carrying `vote`, sent at `sent`. An answer under an older
    /// term than the one already recorded is ignored (answers can overtake each other).
    pub fn record(&self, peer: NodeId, vote: Vote<NodeId>, sent: Instant) {
        let mut acks = self.0.lock().expect("the ack map is never poisoned");
        let term = vote.leader_id().get_term();
        match acks.get_mut(&peer) {
            Some((v, t)) if *v == vote => *t = (*t).max(sent),
            Some((v, _)) if v.leader_id().get_term() > term => {}
            _ => {
                acks.insert(peer, (vote, sent));
            }
        }
    }

    /// The latest time `t` such that a majority of `voters` accepted AppendEntries sent at or
    /// after `t` under `vote`; `me` counts as accepting at `now`. None without such a majority.
    pub fn quorum_acked(&self, vote: &Vote<NodeId>, me: NodeId, voters: &[NodeId], now: Instant) -> Option<Instant> {
        let acks = self.0.lock().expect("the ack map is never poisoned");
        let mut times: Vec<Instant> = voters
            .iter()
            .filter_map(|v| match acks.get(v) {
                _ if *v == me => Some(now),
                Some((acked, t)) if acked == vote => Some(*t),
                _ => None,
            })
            .collect();
        let quorum = voters.len() / 2 + 1;
        if voters.is_empty() || times.len() < quorum {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[quorum - 1])
    }
}

/// What Raft's core said of this node's leadership at one moment.
pub struct Leading {
    pub vote: Vote<NodeId>,
    /// The commit index, when an entry of this leader's own term is committed.
    pub committed_in_term: Option<u64>,
    /// The voters, unless the membership is joint.
    pub voters: Option<Vec<NodeId>>,
}

/// Whether `vote` is a committed vote for `node`: the node it names has been elected leader.
pub fn elected(vote: &Vote<NodeId>, node: NodeId) -> bool {
    vote.is_committed() && vote.leader_id().voted_for() == Some(node)
}

/// Asks Raft's core, in its own order with the vote requests it handles, whether `me` leads:
/// `Ok(None)` when it does not, `Err` when Raft has stopped.
pub async fn leading(raft: &Raft, me: NodeId) -> Result<Option<Leading>, String> {
    raft.with_raft_state(move |st| {
        let vote = *st.vote_ref();
        let leads = st.server_state == ServerState::Leader && elected(&vote, me);
        let term = vote.leader_id().get_term();
        let configs = st.membership_state.effective().membership().get_joint_config();
        leads.then(|| Leading {
            vote,
            committed_in_term: st.committed.filter(|c| c.leader_id.term == term).map(|c| c.index),
            voters: (configs.len() == 1).then(|| configs[0].iter().copied().collect()),
        })
    })
    .await
    .map_err(|e| e.to_string())
}

pub struct Lease {
    me: NodeId,
    acks: std::sync::Arc<Acks>,
    /// How long after a quorum-acknowledged send this leader trusts its lease.
    trust: Duration,
    enabled: bool,
    /// The lease is given up in every term up to this one: the term the node started in (a
    /// TimeoutNow sent before a restart may still be on its way), or the term of a leader
    /// transfer; u64::MAX while a transfer runs.
    given_up_through: AtomicU64,
    /// Read indexes answered from the lease, for `/metrics`.
    pub answered: AtomicU64,
}

impl Lease {
    /// `start_term`: the Raft term this process started in; no lease in it.
    pub fn new(me: NodeId, acks: std::sync::Arc<Acks>, trust: Duration, enabled: bool, start_term: u64) -> Self {
        Lease { me, acks, trust, enabled, given_up_through: AtomicU64::new(start_term), answered: AtomicU64::new(0) }
    }

    /// The commit index, if the lease holds now for what the core has just said (`leading`,
    /// called immediately before); see the module doc.
    pub fn confirm(&self, now: &Leading) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let checked = Instant::now();
        if now.vote.leader_id().get_term() <= self.given_up_through.load(Ordering::SeqCst) {
            return None;
        }
        let committed = now.committed_in_term?;
        let acked = self.acks.quorum_acked(&now.vote, self.me, now.voters.as_ref()?, checked)?;
        if checked >= acked + self.trust {
            return None;
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        Some(committed)
    }

    /// Stops lease reads before this leader asks another node to stand for election: that node
    /// will not wait for the lease to run out.
    pub fn give_up(&self) {
        self.given_up_through.store(u64::MAX, Ordering::SeqCst);
    }

    /// After a leader transfer that gave the lease up: it stays given up in every term up to
    /// `term` (the one the transfer ran in), and comes back if this node is elected again later.
    pub fn given_up_through(&self, term: u64) {
        let _ = self.given_up_through.compare_exchange(u64::MAX, term, Ordering::SeqCst, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_quorum_is_the_leader_and_the_freshest_follower() {
        let acks = Acks::default();
        let vote = Vote::new_committed(3, 1);
        let base = Instant::now();
        let now = at(base, 100);
        assert_eq!(acks.quorum_acked(&vote, 1, &[1, 2, 3], now), None, "no follower has answered");
        acks.record(2, vote, at(base, 10));
        assert_eq!(acks.quorum_acked(&vote, 1, &[1, 2, 3], now), Some(at(base, 10)));
        acks.record(3, vote, at(base, 40));
        assert_eq!(acks.quorum_acked(&vote, 1, &[1, 2, 3], now), Some(at(base, 40)));
        // An answer that overtook a newer one does not move the time back.
        acks.record(3, vote, at(base, 20));
        assert_eq!(acks.quorum_acked(&vote, 1, &[1, 2, 3], now), Some(at(base, 40)));
        // Five voters need two followers besides the leader.
        assert_eq!(acks.quorum_acked(&vote, 1, &[1, 2, 3, 4, 5], now), Some(at(base, 10)));
        // A single voter is its own quorum.
        assert_eq!(acks.quorum_acked(&vote, 1, &[1], now), Some(now));
        // Peers that are not voters do not count.
        assert_eq!(acks.quorum_acked(&vote, 1, &[1, 4, 5], now), None);
    }

    #[test]
    fn answers_under_another_vote_do_not_count() {
        let acks = Acks::default();
        let base = Instant::now();
        let old = Vote::new_committed(3, 1);
        let new = Vote::new_committed(5, 1);
        acks.record(2, old, at(base, 50));
        assert_eq!(
            acks.quorum_acked(&new, 1, &[1, 2, 3], at(base, 60)),
            None,
            "an ack from term 3 is no lease in term 5"
        );
        acks.record(2, new, at(base, 10));
        acks.record(2, old, at(base, 90));
        assert_eq!(
            acks.quorum_acked(&new, 1, &[1, 2, 3], at(base, 100)),
            Some(at(base, 10)),
            "a late answer from an older term neither replaces nor extends the newer one"
        );
        let other_leader = Vote::new_committed(5, 2);
        assert_eq!(acks.quorum_acked(&other_leader, 1, &[1, 2, 3], at(base, 100)), None);
    }
}
