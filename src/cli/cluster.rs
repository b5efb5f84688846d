//! Cluster commands for SREs: status, membership, leadership, snapshots, digests.

use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{request, with_failover, Failure};
use super::{ClientOpts, Output};
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::*;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Every node's role, term and log / commit / apply indices.
    Status(Plain),
    /// Add a node as a learner (it catches up, then can be promoted).
    AddLearner(AddLearner),
    /// Make a learner a voter.
    Promote(NodeArg),
    /// Remove a node from the cluster.
    Remove(NodeArg),
    /// Hand leadership to another voter.
    TransferLeader(TransferArg),
    /// Build a Raft snapshot now on the first reachable node.
    Snapshot(Plain),
    /// The state digest of a node at its applied index (or at --index).
    Digest(DigestArg),
}

#[derive(Args)]
pub struct Plain {
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args)]
pub struct AddLearner {
    #[arg(long)]
    node_id: u64,
    #[arg(long)]
    client_addr: String,
    #[arg(long)]
    peer_addr: String,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args)]
pub struct NodeArg {
    #[arg(long)]
    node_id: u64,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args)]
pub struct TransferArg {
    /// The voter that should become leader.
    #[arg(long)]
    to: u64,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args)]
pub struct DigestArg {
    #[arg(long, default_value_t = 0)]
    index: u64,
    #[command(flatten)]
    opts: ClientOpts,
}

macro_rules! admin {
    ($opts:expr, $method:ident, $msg:expr) => {{
        let msg = $msg;
        with_failover($opts, |ch| {
            let (msg, opts) = (msg.clone(), $opts.clone());
            async move { AdminClient::new(ch).$method(request(&opts, msg)).await }
        })
        .await
        .map(|r| r.into_inner())
    }};
}

fn print_members(output: Output, resp: &MembershipResponse) {
    match output {
        Output::Json => println!(
            "{}",
            json!({"log_index": resp.log_index, "members": resp.members.iter().map(|m| json!({
                "node_id": m.node_id, "client_addr": m.client_addr, "peer_addr": m.peer_addr, "voter": m.voter
            })).collect::<Vec<_>>()})
        ),
        Output::Text => {
            for m in &resp.members {
                let role = if m.voter { "voter" } else { "learner" };
                println!("node {}\t{role}\tclient {}\tpeer {}", m.node_id, m.client_addr, m.peer_addr);
            }
        }
    }
}

pub async fn run(cmd: ClusterCommand) -> Result<(), Failure> {
    match cmd {
        ClusterCommand::Status(a) => {
            let resp = admin!(&a.opts, cluster_status, ClusterStatusRequest {})?;
            print_status(a.opts.output, &resp);
        }
        ClusterCommand::AddLearner(a) => {
            let msg = AddLearnerRequest {
                node_id: a.node_id,
                client_addr: a.client_addr.clone(),
                peer_addr: a.peer_addr.clone(),
            };
            print_members(a.opts.output, &admin!(&a.opts, add_learner, msg)?);
        }
        ClusterCommand::Promote(a) => {
            let status = admin!(&a.opts, get_node_status, NodeStatusRequest {})?;
            if !status.members.iter().any(|m| m.node_id == a.node_id) {
                return Err(Failure::usage(format!(
                    "node {} is not a member; add it with `keepsake cluster add-learner` first",
                    a.node_id
                )));
            }
            let mut voters: Vec<u64> = status.members.iter().filter(|m| m.voter).map(|m| m.node_id).collect();
            voters.push(a.node_id);
            print_members(a.opts.output, &admin!(&a.opts, change_membership, ChangeMembershipRequest { voters })?);
        }
        ClusterCommand::Remove(a) => {
            print_members(a.opts.output, &admin!(&a.opts, remove_node, RemoveNodeRequest { node_id: a.node_id })?);
        }
        ClusterCommand::TransferLeader(a) => {
            let resp = admin!(&a.opts, transfer_leader, TransferLeaderRequest { to_node_id: a.to })?;
            match a.opts.output {
                Output::Json => println!("{}", json!({"leader_id": resp.leader_id, "term": resp.term})),
                Output::Text => println!("node {} is leader (term {})", resp.leader_id, resp.term),
            }
        }
        ClusterCommand::Snapshot(a) => {
            let resp = admin!(&a.opts, trigger_snapshot, TriggerSnapshotRequest {})?;
            match a.opts.output {
                Output::Json => println!("{}", json!({"snapshot_index": resp.snapshot_index})),
                Output::Text => println!("snapshot at index {}", resp.snapshot_index),
            }
        }
        ClusterCommand::Digest(a) => {
            let resp = admin!(&a.opts, digest, DigestRequest { index: a.index })?;
            match a.opts.output {
                Output::Json => println!(
                    "{}",
                    json!({"index": resp.index, "digest": resp.digest, "revision": resp.revision, "items": resp.item_count})
                ),
                Output::Text => println!(
                    "index {}\tdigest {}\trevision {}\titems {}",
                    resp.index, resp.digest, resp.revision, resp.item_count
                ),
            }
        }
    }
    Ok(())
}

fn print_status(output: Output, resp: &ClusterStatusResponse) {
    match output {
        Output::Json => {
            let nodes: Vec<_> = resp
                .nodes
                .iter()
                .map(|n| {
                    json!({
                        "node_id": n.node_id, "client_addr": n.client_addr, "role": n.role, "term": n.term,
                        "last_log_index": n.last_log_index, "committed_index": n.committed_index,
                        "applied_index": n.applied_index, "snapshot_index": n.snapshot_index,
                        "purged_index": n.purged_index, "leader_id": n.leader_id, "cluster_id": n.cluster_id,
                        "digest_format": n.digest_format, "error": n.error,
                    })
                })
                .collect();
            println!("{}", json!({"leader_id": resp.leader_id, "nodes": nodes}));
        }
        Output::Text => {
            println!(
                "{:<5} {:<22} {:<11} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7}",
                "NODE", "CLIENT", "ROLE", "TERM", "LAST", "COMMIT", "APPLIED", "SNAPSHOT", "DIGEST"
            );
            for n in &resp.nodes {
                println!(
                    "{:<5} {:<22} {:<11} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7}{}",
                    n.node_id,
                    n.client_addr,
                    n.role,
                    n.term,
                    n.last_log_index,
                    n.committed_index,
                    n.applied_index,
                    n.snapshot_index,
                    if n.digest_format == 0 { "-".to_owned() } else { format!("v{}", n.digest_format) },
                    if n.error.is_empty() { String::new() } else { format!("  ({})", n.error) }
                );
            }
            match resp.leader_id {
                Some(l) => println!("leader: node {l}"),
                None => println!("leader: none (election under way or quorum lost)"),
            }
        }
    }
}
