//! Answers peers on the peer port: Raft RPCs for openraft, and writes and read-index requests
//! that followers pass to the leader on behalf of their clients.

use std::sync::Arc;
use std::time::Duration;

use keepsake_raft::{TypeConfig, Write};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use super::{decode, encode};
use crate::proto::raft::raft_transport_server::RaftTransport;
use crate::proto::raft::*;
use crate::replica::Replica;
use crate::server::{deadline, status};

pub struct PeerService {
    replica: Arc<Replica>,
}

impl PeerService {
    pub fn new(replica: Arc<Replica>) -> Self {
        PeerService { replica }
    }
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage { payload: encode(value) }))
}

#[tonic::async_trait]
impl RaftTransport for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&request.get_ref().payload, "append-entries")?;
        reply(&self.replica.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<u64> = decode(&request.get_ref().payload, "vote")?;
        reply(&self.replica.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&request.get_ref().payload, "install-snapshot")?;
        reply(&self.replica.raft.install_snapshot(rpc).await)
    }

    async fn timeout_now(&self, request: Request<TimeoutNowRequest>) -> Result<Response<TimeoutNowResponse>, Status> {
        let TimeoutNowRequest { from_node_id: from, term } = request.into_inner();
        let raft = &self.replica.raft;
        let follows = raft
            .with_raft_state(move |st| {
                let vote = st.vote_ref();
                crate::lease::elected(vote, from) && vote.leader_id().get_term() == term
            })
            .await
            .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        if !follows {
            return Err(Status::failed_precondition(format!(
                "this node no longer follows node {from} in term {term}; not standing for election"
            )));
        }
        tracing::info!(from, term, "leader transfer: starting an election");
        raft.trigger().elect().await.map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        Ok(Response::new(TimeoutNowResponse {}))
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let deadline = deadline::of(&request, Duration::from_millis(self.replica.config.limits.default_timeout_ms));
        let req = request.get_ref();
        let write: Write = decode(&req.write, "forwarded write")?;
        let committed = self.replica.write(write, req.archived, deadline, true).await.map_err(status::from_replica)?;
        Ok(Response::new(ProposeResponse {
            log_index: committed.log_index,
            proposed_at_us: committed.proposed_at_us,
            outcome: encode(&committed.outcome),
        }))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let deadline = deadline::of(&request, Duration::from_millis(self.replica.config.limits.default_timeout_ms));
        let index = self.replica.leader_read_index(deadline).await.map_err(status::from_replica)?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}
