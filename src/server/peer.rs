//! Answers peers on the peer port: Raft RPCs for openraft, TimeoutNow for a leader transfer,
//! writes and read-index requests that followers pass to the leader on behalf of their
//! clients, and what this build can read (Capabilities). Payloads use `crate::peer`'s encoding.

use std::sync::Arc;
use std::time::Duration;

use keepsake_raft::digest::DigestFormat;
use keepsake_raft::{TypeConfig, Write};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use super::{deadline, status};
use crate::peer::{decode, encode};
use crate::proto::raft::raft_transport_server::RaftTransport;
use crate::proto::raft::*;
use crate::replica::Replica;
use crate::tls::identity::Identity;
use crate::tls::server::Peer;

pub struct PeerService {
    replica: Arc<Replica>,
}

impl PeerService {
    pub fn new(replica: Arc<Replica>) -> Self {
        PeerService { replica }
    }
}

/// The peer port serves only peers: a client certificate from the cluster's CA (checked in the
/// handshake) naming a node id of the current membership. A node with no membership yet (a
/// learner about to be sent its first entries) takes any node's. In insecure mode, anyone.
#[allow(clippy::result_large_err)]
pub fn only_members(
    raft: keepsake_raft::Raft,
    secure: bool,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        if !secure {
            return Ok(req);
        }
        let identity = req.extensions().get::<Peer>().and_then(|p| p.identity.clone());
        match identity {
            None => {
                Err(Status::unauthenticated("the peer port serves only cluster members: present a node certificate"))
            }
            Some(Err(e)) => Err(Status::unauthenticated(format!("the peer port serves only cluster members: {e}"))),
            Some(Ok(Identity::Node(id))) => {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                let membership = metrics.membership_config.membership();
                if membership.nodes().next().is_none() || membership.get_node(&id).is_some() {
                    Ok(req)
                } else {
                    Err(Status::permission_denied(format!("node {id} is not a member of this cluster")))
                }
            }
            Some(Ok(other)) => Err(Status::permission_denied(format!(
                "the peer port serves only cluster members, and this certificate names a client ({other})"
            ))),
        }
    }
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage { payload: encode(value) }))
}

#[tonic::async_trait]
impl RaftTransport for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&request.get_ref().payload, "append-entries")?;
        reply(&self.replica.consensus().raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<u64> = decode(&request.get_ref().payload, "vote")?;
        reply(&self.replica.consensus().raft().vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&request.get_ref().payload, "install-snapshot")?;
        reply(&self.replica.consensus().raft().install_snapshot(rpc).await)
    }

    async fn timeout_now(&self, request: Request<TimeoutNowRequest>) -> Result<Response<TimeoutNowResponse>, Status> {
        let TimeoutNowRequest { from_node_id: from, term } = request.into_inner();
        self.replica.consensus().stand_for_election(from, term).await.map_err(status::from_error)?;
        Ok(Response::new(TimeoutNowResponse {}))
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let deadline = deadline::of(&request, Duration::from_millis(self.replica.config().limits.default_timeout_ms));
        let req = request.get_ref();
        let write: Write = decode(&req.write, "forwarded write")?;
        let committed = self.replica.write(write, req.archived, deadline, true).await.map_err(status::from_error)?;
        Ok(Response::new(ProposeResponse {
            log_index: committed.log_index,
            proposed_at_us: committed.proposed_at_us,
            outcome: encode(&committed.outcome),
        }))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let deadline = deadline::of(&request, Duration::from_millis(self.replica.config().limits.default_timeout_ms));
        let index = self.replica.consensus().read_index(deadline).await.map_err(status::from_error)?;
        Ok(Response::new(ReadIndexResponse { index }))
    }

    async fn capabilities(&self, _: Request<CapabilitiesRequest>) -> Result<Response<CapabilitiesResponse>, Status> {
        let digest_formats = DigestFormat::ALL.iter().map(|f| f.number()).collect();
        Ok(Response::new(CapabilitiesResponse { digest_formats }))
    }
}
