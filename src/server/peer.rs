//! Answers peers on the peer port: Raft RPCs for openraft, TimeoutNow for a leader transfer,
//! writes and read-index requests that followers pass to the leader on behalf of their
//! clients, and what this build can read (Capabilities). Payloads use `crate::peer`'s encoding.

use std::sync::Arc;
use std::time::Duration;

use keepsake_raft::digest::DigestFormat;
use keepsake_raft::{TypeConfig, Write};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use super::{deadline, status, validate};
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

/// The node a peer's certificate names, in its requests' extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerNode(pub u64);

/// The peer port serves only nodes: a client certificate of the cluster's CA (checked in the
/// handshake) that names a node id. Membership is not checked here: a follower that has not yet
/// applied the change adding a new leader must still take its entries. What a node may say is
/// checked per RPC (`speaks_for`). In insecure mode, anyone.
#[allow(clippy::result_large_err)]
pub fn only_nodes(secure: bool) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        if !secure {
            return Ok(req);
        }
        let identity = req.extensions().get::<Peer>().and_then(|p| p.identity.clone());
        match identity {
            Some(Ok(Identity::Node(id))) => {
                req.extensions_mut().insert(PeerNode(id));
                Ok(req)
            }
            None => Err(Status::unauthenticated("the peer port serves only cluster nodes: present a node certificate")),
            Some(Err(e)) => Err(Status::unauthenticated(format!("the peer port serves only cluster nodes: {e}"))),
            Some(Ok(other)) => Err(Status::permission_denied(format!(
                "the peer port serves only cluster nodes, and this certificate names a client ({other})"
            ))),
        }
    }
}

/// Refuses a Raft message whose sender (`claimed`: the candidate or leader it names) is not the
/// node whose certificate sent it: no node speaks for another.
#[allow(clippy::result_large_err)]
fn speaks_for<T>(request: &Request<T>, claimed: Option<u64>, what: &str) -> Result<(), Status> {
    match request.extensions().get::<PeerNode>() {
        Some(PeerNode(id)) if claimed != Some(*id) => Err(Status::permission_denied(format!(
            "node {id}'s certificate sent a {what} in the name of node {}",
            claimed.map_or("(none)".into(), |c| c.to_string())
        ))),
        _ => Ok(()),
    }
}

impl PeerService {
    /// Refuses a request from a node outside the current membership: forwarding a client's
    /// write or read is a member's job (a removed node's certificate stays valid until it
    /// expires).
    #[allow(clippy::result_large_err)]
    fn check_member<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match request.extensions().get::<PeerNode>() {
            Some(PeerNode(id)) if !super::auth::is_member(self.replica.consensus().raft(), *id) => {
                Err(Status::permission_denied(format!("node {id} is not a member of this cluster")))
            }
            _ => Ok(()),
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
        speaks_for(&request, rpc.vote.leader_id().voted_for(), "append-entries")?;
        reply(&self.replica.consensus().raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<u64> = decode(&request.get_ref().payload, "vote")?;
        speaks_for(&request, rpc.vote.leader_id().voted_for(), "vote request")?;
        reply(&self.replica.consensus().raft().vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&request.get_ref().payload, "install-snapshot")?;
        speaks_for(&request, rpc.vote.leader_id().voted_for(), "snapshot")?;
        reply(&self.replica.consensus().raft().install_snapshot(rpc).await)
    }

    async fn timeout_now(&self, request: Request<TimeoutNowRequest>) -> Result<Response<TimeoutNowResponse>, Status> {
        speaks_for(&request, Some(request.get_ref().from_node_id), "leader transfer")?;
        let TimeoutNowRequest { from_node_id: from, term } = request.into_inner();
        self.replica.consensus().stand_for_election(from, term).await.map_err(status::from_error)?;
        Ok(Response::new(TimeoutNowResponse {}))
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let deadline = deadline::of(&request, Duration::from_millis(self.replica.config().limits.default_timeout_ms));
        let req = request.get_ref();
        self.check_member(&request)?;
        let write: Write = decode(&req.write, "forwarded write")?;
        validate::forwarded(&self.replica.config().limits, &write)?;
        let committed = self.replica.write(write, req.archived, deadline, true).await.map_err(status::from_error)?;
        Ok(Response::new(ProposeResponse {
            log_index: committed.log_index,
            proposed_at_us: committed.proposed_at_us,
            outcome: encode(&committed.outcome),
        }))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        self.check_member(&request)?;
        let deadline = deadline::of(&request, Duration::from_millis(self.replica.config().limits.default_timeout_ms));
        let index = self.replica.consensus().read_index(deadline).await.map_err(status::from_error)?;
        Ok(Response::new(ReadIndexResponse { index }))
    }

    async fn capabilities(&self, _: Request<CapabilitiesRequest>) -> Result<Response<CapabilitiesResponse>, Status> {
        let digest_formats = DigestFormat::ALL.iter().map(|f| f.number()).collect();
        Ok(Response::new(CapabilitiesResponse { digest_formats }))
    }
}
