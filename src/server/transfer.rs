//! Leader transfer on openraft 0.9, which has no built-in one.
//!
//! The leader checks the target is a voter that has every entry, stops heartbeats so the
//! followers' leader lease runs out, then tells the target to start an election (TimeoutNow).
//! Heartbeats resume whatever happens, so a failed transfer leaves the old leader in place.
//! From the TimeoutNow on, this node answers no read from its own lease (`lease.rs`) in the
//! term the transfer ran in.

use std::time::Duration;

use keepsake_raft::NodeId;
use tokio::time::Instant;
use tonic::Status;

use crate::proto::v1::TransferLeaderResponse;
use crate::replica::Replica;

pub async fn run(replica: &Replica, to: NodeId, deadline: Instant) -> Result<TransferLeaderResponse, Status> {
    let raft = &replica.raft;
    let metrics = raft.metrics().borrow().clone();
    if to == replica.id {
        return Ok(TransferLeaderResponse { leader_id: to, term: metrics.current_term });
    }
    let membership = metrics.membership_config.membership();
    let Some(target) = membership.get_node(&to).cloned() else {
        return Err(Status::not_found(format!("node {to} is not a member; see `keepsake cluster status`")));
    };
    if !membership.voter_ids().any(|v| v == to) {
        return Err(Status::failed_precondition(format!("node {to} is a learner; promote it to a voter first")));
    }
    wait_caught_up(replica, to, deadline).await?;

    let lease = replica.config.raft.election_timeout_max();
    raft.runtime_config().heartbeat(false);
    // Also when the caller goes away mid-transfer and this future is dropped.
    let _resume = Resume(replica);
    async {
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        // The target will not wait for this leader's lease to run out: stop trusting it first.
        replica.read_index.lease.give_up();
        let term = metrics.current_term;
        replica.peers.timeout_now(&target.peer_addr, replica.id, term, Duration::from_secs(2)).await.map_err(|e| {
            Status::unavailable(format!("node {to} did not take the election request: {}", e.message()))
        })?;
        let mut m = raft.metrics();
        let elected = async move {
            m.wait_for(|m| m.current_leader.is_some_and(|l| l != replica.id))
                .await
                .map(|m| TransferLeaderResponse { leader_id: m.current_leader.unwrap_or(0), term: m.current_term })
        };
        match tokio::time::timeout_at(deadline, elected).await {
            Ok(Ok(resp)) => Ok(resp),
            _ => {
                Err(Status::deadline_exceeded(format!("node {to} did not become leader in time; the old leader stays")))
            }
        }
    }
    .await
}

/// Ends a transfer, however it ends: heartbeats resume, and a lease given up stays given up in
/// the term the transfer ran in.
struct Resume<'a>(&'a Replica);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let raft = &self.0.raft;
        raft.runtime_config().heartbeat(true);
        self.0.read_index.lease.given_up_through(raft.metrics().borrow().current_term);
    }
}

/// Waits until the target has matched the leader's last log entry.
async fn wait_caught_up(replica: &Replica, to: NodeId, deadline: Instant) -> Result<(), Status> {
    let mut m = replica.raft.metrics();
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
        _ => Err(Status::unavailable(format!("node {to} has not caught up with the log; retry when it has"))),
    }
}
