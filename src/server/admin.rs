//! The Admin service (SREs): status, membership, leadership, snapshots, digests.
//!
//! Membership changes and leader transfer run on the leader; a follower passes them on to it
//! through the leader's own Admin service.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use keepsake_raft::{Error, Node, NodeId};
use openraft::{ChangeMembers, ServerState};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use super::{deadline, status};
use crate::backup::scrub;
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::admin_server::Admin;
use crate::proto::v1::*;
use crate::replica::Replica;

pub struct AdminService {
    replica: Arc<Replica>,
}

impl AdminService {
    pub fn new(replica: Arc<Replica>) -> Self {
        AdminService { replica }
    }

    fn local_status(&self) -> NodeStatus {
        let r = &self.replica;
        let m = r.consensus().metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                node_id: *id,
                client_addr: n.client_addr.clone(),
                peer_addr: n.peer_addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        NodeStatus {
            node_id: r.id(),
            client_addr: r.config().client_addr.clone(),
            role: role.into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: r.consensus().committed_index(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            leader_id: m.current_leader,
            members,
            cluster_id: r.config().cluster_id.clone(),
            error: String::new(),
            digest_format: r.consensus().reader().digest_format().map_or(0, |f| f.number()),
        }
    }

    /// The leader's Admin client, or None when this node is the leader.
    fn leader_client(&self) -> Result<Option<AdminClient<tonic::transport::Channel>>, Status> {
        match self.replica.leader() {
            None => Err(status::from_error(Error::NoLeader("no leader is elected right now; retry shortly".into()))),
            Some((id, _)) if id == self.replica.id() => Ok(None),
            Some((_, node)) => Ok(Some(self.admin_client(&node.client_addr)?)),
        }
    }

    fn membership_response(&self, log_index: u64) -> MembershipResponse {
        MembershipResponse { members: self.local_status().members, log_index }
    }

    async fn change(&self, change: ChangeMembers<NodeId, Node>, retain: bool) -> Result<MembershipResponse, Status> {
        let index = self.replica.consensus().change_membership(change, retain).await.map_err(status::from_error)?;
        Ok(self.membership_response(index))
    }
}

impl AdminService {
    /// Another node's Admin API, reached as this node (its certificate) over TLS.
    fn admin_client(&self, addr: &str) -> Result<AdminClient<tonic::transport::Channel>, Status> {
        let tls = self.replica.peers().tls_config();
        let bad = |e: tonic::transport::Error| Status::internal(format!("bad node address {addr}: {e}"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(bad)?
            .connect_timeout(Duration::from_millis(500));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(bad)?;
        }
        Ok(AdminClient::new(endpoint.connect_lazy()))
    }
}

/// Passes the request to the leader when this node is not the leader.
macro_rules! on_leader {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some(mut leader) = $self.leader_client()? {
            return leader.$method($request.into_inner()).await;
        }
    };
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let me = self.local_status();
        let others: Vec<Member> = me.members.iter().filter(|m| m.node_id != me.node_id).cloned().collect();
        let asks = others.into_iter().map(|m| async move {
            let ask = async {
                let mut req = Request::new(NodeStatusRequest {});
                req.set_timeout(Duration::from_secs(1));
                self.admin_client(&m.client_addr)?.get_node_status(req).await.map(Response::into_inner)
            };
            match tokio::time::timeout(Duration::from_millis(1500), ask).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => unreachable_status(&m, e.message()),
                Err(_) => unreachable_status(&m, "timed out"),
            }
        });
        let mut nodes = futures::future::join_all(asks).await;
        let leader_id = me.leader_id;
        nodes.push(me);
        nodes.sort_by_key(|n| n.node_id);
        Ok(Response::new(ClusterStatusResponse { nodes, leader_id }))
    }

    async fn get_node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(self.local_status()))
    }

    async fn add_learner(&self, request: Request<AddLearnerRequest>) -> Result<Response<MembershipResponse>, Status> {
        on_leader!(self, request, add_learner);
        let deadline = deadline::of(&request, Duration::from_secs(60));
        let req = request.into_inner();
        if req.node_id == 0 || req.client_addr.is_empty() || req.peer_addr.is_empty() {
            return Err(Status::invalid_argument("node_id (above 0), client_addr and peer_addr are all required"));
        }
        crate::upgrade::check_joining(self.replica.peers(), req.node_id, &req.peer_addr, deadline).await?;
        let node = Node { client_addr: req.client_addr, peer_addr: req.peer_addr };
        let index =
            self.replica.consensus().add_learner(req.node_id, node, deadline).await.map_err(status::from_error)?;
        Ok(Response::new(self.membership_response(index)))
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        on_leader!(self, request, change_membership);
        let voters: BTreeSet<NodeId> = request.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument(
                "voters is empty; name at least one voter (three for a quorum of two)",
            ));
        }
        Ok(Response::new(self.change(ChangeMembers::ReplaceAllVoters(voters), true).await?))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        on_leader!(self, request, remove_node);
        let id = request.into_inner().node_id;
        if id == self.replica.id() {
            return Err(Status::failed_precondition(
                "this node is the leader; transfer leadership first (keepsake cluster transfer-leader), then remove it",
            ));
        }
        let ids = BTreeSet::from([id]);
        if self.replica.consensus().voters().contains(&id) {
            self.change(ChangeMembers::RemoveVoters(ids.clone()), true).await?;
        }
        Ok(Response::new(self.change(ChangeMembers::RemoveNodes(ids), false).await?))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        on_leader!(self, request, transfer_leader);
        let deadline = deadline::of(&request, Duration::from_secs(10));
        let to = request.into_inner().to_node_id;
        let (leader_id, term) = self.replica.transfer_leader(to, deadline).await.map_err(status::from_error)?;
        Ok(Response::new(TransferLeaderResponse { leader_id, term }))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let deadline = deadline::of(&request, Duration::from_secs(60));
        let covered = self.replica.consensus().snapshot_covering_applied();
        match tokio::time::timeout_at(deadline, covered).await {
            Ok(result) => {
                Ok(Response::new(TriggerSnapshotResponse { snapshot_index: result.map_err(status::from_error)? }))
            }
            Err(_) => {
                Err(Status::deadline_exceeded("the snapshot is still being built; check `keepsake cluster status`"))
            }
        }
    }

    async fn backup_status(
        &self,
        request: Request<BackupStatusRequest>,
    ) -> Result<Response<BackupStatusResponse>, Status> {
        on_leader!(self, request, backup_status);
        Ok(Response::new(backup_status(&self.replica)))
    }

    async fn backup_snapshot(
        &self,
        request: Request<BackupSnapshotRequest>,
    ) -> Result<Response<BackupSnapshotResponse>, Status> {
        on_leader!(self, request, backup_snapshot);
        let deadline = deadline::of(&request, Duration::from_secs(300));
        let upload = self.replica.archive().snapshotter.snapshot_now();
        match tokio::time::timeout_at(deadline, upload).await {
            Ok(Ok(up)) => Ok(Response::new(BackupSnapshotResponse {
                index: up.index,
                chunks: up.chunks as u32,
                new_chunks: up.new_chunks as u32,
                new_bytes: up.new_bytes,
            })),
            Ok(Err(e)) => Err(Status::unavailable(format!("the archive snapshot failed: {e}; retry"))),
            Err(_) => Err(Status::deadline_exceeded(
                "the archive snapshot is not done yet; `keepsake backup list` shows it once its manifest is written",
            )),
        }
    }

    async fn backup_scrub(
        &self,
        request: Request<BackupScrubRequest>,
    ) -> Result<Response<BackupScrubResponse>, Status> {
        on_leader!(self, request, backup_scrub);
        let deadline = deadline::of(&request, Duration::from_secs(3600));
        match tokio::time::timeout_at(deadline, self.replica.archive().snapshotter.scrub_now()).await {
            Ok(Ok(r)) => {
                let archive = &self.replica.archive().snapshotter.archive;
                Ok(Response::new(BackupScrubResponse {
                    chunks: r.chunks,
                    bytes: r.bytes,
                    repaired: scrub::names(archive, &r.repaired),
                    damaged: scrub::names(archive, &r.damaged),
                }))
            }
            Ok(Err(e)) => Err(Status::unavailable(format!("the scrub failed: {e}; retry"))),
            Err(_) => Err(Status::deadline_exceeded(
                "the scrub did not finish before the deadline; give it a longer --timeout (an unfinished pass records \
                 nothing; the scheduled scrub goes on)",
            )),
        }
    }

    async fn backup_adopt_archive(
        &self,
        request: Request<BackupAdoptArchiveRequest>,
    ) -> Result<Response<BackupAdoptArchiveResponse>, Status> {
        use keepsake_raft::history::{self, HistoryRecord};
        on_leader!(self, request, backup_adopt_archive);
        let deadline = deadline::of(&request, Duration::from_secs(10));
        let consensus = self.replica.consensus();
        let (record, revision) =
            history::read_current(consensus.reader()).await.map_err(status::from_store)?.ok_or_else(|| {
                Status::failed_precondition(
                    "this cluster has no history id yet (its leader sets one when it first archives); retry shortly",
                )
            })?;
        let archive = self.replica.config().archive.location();
        let previous = record.archive.clone().unwrap_or_default();
        if record.archive.as_deref() != Some(archive.as_str()) {
            let adopted = HistoryRecord { archive: Some(archive.clone()), ..record };
            let committed =
                consensus.propose(history::set(&adopted, revision), deadline).await.map_err(status::from_error)?;
            if !matches!(committed.outcome, keepsake_raft::WriteOutcome::Applied { .. }) {
                return Err(Status::aborted("the cluster's history record changed meanwhile; retry"));
            }
            tracing::warn!(%previous, %archive, "the cluster's archive is now this leader's configured one");
        }
        Ok(Response::new(BackupAdoptArchiveResponse { previous, archive }))
    }

    async fn digest(&self, request: Request<DigestRequest>) -> Result<Response<DigestResponse>, Status> {
        let index = request.into_inner().index;
        let reader = self.replica.consensus().reader();
        let point = if index == 0 {
            reader.applied()
        } else {
            reader.digest_at(index).await.map_err(status::from_store)?.ok_or_else(|| {
                Status::not_found(format!(
                    "no digest recorded at index {index} on this node (not applied yet, or older than its history)"
                ))
            })?
        };
        Ok(Response::new(DigestResponse {
            index: point.index,
            digest: point.digest.to_hex(),
            revision: point.revision,
            item_count: point.items,
        }))
    }
}

/// How far the archive is behind, as this node sees it (the leader uploads).
pub fn backup_status(r: &Replica) -> BackupStatusResponse {
    let s = r.archive().status.borrow().clone();
    let newest = r.archive().snapshotter.newest();
    let scrubbed = r.archive().snapshotter.scrubbed();
    let committed = r.consensus().committed_index();
    let next = s.archived_index.map_or(0, |a| a + 1);
    let lag_seconds = if s.pending_since_us == 0 {
        0.0
    } else {
        (keepsake_raft::clock::now_us() - s.pending_since_us).max(0) as f64 / 1e6
    };
    BackupStatusResponse {
        node_id: r.id(),
        archive_url: r.archive().url.clone(),
        archived_index: s.archived_index,
        committed_index: committed,
        lag_entries: (committed + 1).saturating_sub(next),
        lag_seconds,
        last_error: s.last_error,
        last_success_unix_us: s.last_success_us,
        segments_uploaded: s.segments_uploaded,
        bytes_uploaded: s.bytes_uploaded,
        uploading: s.uploading,
        lag_bytes: r.archive_backlog_bytes(s.archived_index),
        newest_snapshot_index: newest.map(|(i, _)| i),
        newest_snapshot_unix_us: newest.map_or(0, |(_, t)| t),
        local_directory: !keepsake_archive::store::is_object_storage(&r.archive().url),
        refused: s.refused,
        history_id: s.history.map(|h| h.to_hex()).unwrap_or_default(),
        scrubbed_chunks: scrubbed.chunks,
        scrubbed_bytes: scrubbed.bytes,
        repaired_chunks: scrubbed.repaired,
        damaged_chunks: scrub::names(&r.archive().snapshotter.archive, &scrubbed.damaged),
    }
}

fn unreachable_status(m: &Member, error: &str) -> NodeStatus {
    NodeStatus {
        node_id: m.node_id,
        client_addr: m.client_addr.clone(),
        role: "unreachable".into(),
        error: error.into(),
        ..Default::default()
    }
}
