//! Leader transfer on openraft 0.9, which has no built-in one.
//!
//! The leader checks the target is a voter that has every entry, stops heartbeats so the
//! followers' leader lease runs out, then tells the target to start an election (TimeoutNow,
//! sent by the caller's transport). Heartbeats resume whatever happens, so a failed transfer
//! leaves the old leader in place. From the TimeoutNow on, this node answers no read from its
//! own lease (`lease.rs`) in the term the transfer ran in.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::lease::Lease;
use crate::{Node, NodeId, Raft};

/// The leader that hands leadership over: its Raft, id and lease, and how long its followers'
/// own lease on it lasts (`election_timeout_max`).
pub struct Leader<'a> {
    pub raft: &'a Raft,
    pub me: NodeId,
    pub lease: &'a Lease,
    pub election_timeout_max: Duration,
}

/// Hands leadership to `to`; returns the new leader and its term. `timeout_now` sends the
/// TimeoutNow request (target node, this leader's term) to the target.
pub async fn run<F, Fut>(
    leader: Leader<'_>,
    to: NodeId,
    deadline: Instant,
    timeout_now: F,
) -> Result<(NodeId, u64), Error>
where
    F: FnOnce(Node, u64) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let raft = leader.raft;
    let metrics = raft.metrics().borrow().clone();
    if to == leader.me {
        return Ok((to, metrics.current_term));
    }
    let membership = metrics.membership_config.membership();
    let Some(target) = membership.get_node(&to).cloned() else {
        return Err(Error::NotFound(format!("node {to} is not a member; see `keepsake cluster status`")));
    };
    if !membership.voter_ids().any(|v| v == to) {
        return Err(Error::FailedPrecondition(format!("node {to} is a learner; promote it to a voter first")));
    }
    wait_caught_up(raft, to, deadline).await?;

    raft.runtime_config().heartbeat(false);
    // Also when the caller goes away mid-transfer and this future is dropped.
    let _resume = Resume(&leader);
    tokio::time::sleep(leader.election_timeout_max + Duration::from_millis(50)).await;
    // The target will not wait for this leader's lease to run out: stop trusting it first.
    leader.lease.give_up();
    let term = metrics.current_term;
    timeout_now(target, term)
        .await
        .map_err(|e| Error::NoLeader(format!("node {to} did not take the election request: {e}")))?;
    let mut m = raft.metrics();
    let me = leader.me;
    let elected = async move {
        m.wait_for(|m| m.current_leader.is_some_and(|l| l != me))
            .await
            .map(|m| (m.current_leader.unwrap_or(0), m.current_term))
    };
    match tokio::time::timeout_at(deadline, elected).await {
        Ok(Ok(elected)) => Ok(elected),
        _ => Err(Error::Deadline(format!("node {to} did not become leader in time; the old leader stays"))),
    }
}

/// Ends a transfer, however it ends: heartbeats resume, and a lease given up stays given up in
/// the term the transfer ran in.
struct Resume<'a, 'b>(&'a Leader<'b>);

impl Drop for Resume<'_, '_> {
    fn drop(&mut self) {
        let raft = self.0.raft;
        raft.runtime_config().heartbeat(true);
        self.0.lease.given_up_through(raft.metrics().borrow().current_term);
    }
}

/// Waits until the target has matched the leader's last log entry.
async fn wait_caught_up(raft: &Raft, to: NodeId, deadline: Instant) -> Result<(), Error> {
    let mut m = raft.metrics();
    let caught_up = async move {
        m.wait_for(|m| {
            let last = m.last_log_index;
            m.replication.as_ref().and_then(|r| r.get(&to)).is_some_and(|matched| matched.map(|l| l.index) == last)
        })
        .await
        .map(|_| ())
    };
    match tokio::time::timeout_at(deadline, caught_up).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(Error::NoLeader(format!("node {to} has not caught up with the log; retry when it has"))),
    }
}
