//! Moving the cluster's replicated formats forward once every member can read them: today the
//! state digest's format (docs/archive-format.md, "State digest"), named by the history record.
//!
//! The leader asks every member of the current membership, voters and learners, which formats
//! its build can sum (the peer port's Capabilities). A member on a build from before formats
//! (UNIMPLEMENTED), one that lacks the format, or one that cannot be asked holds the switch
//! back: it would go on summing in the old format, archive digests that a restore in the new
//! format refuses when it leads, and fail to install a Raft snapshot of the new format. A new
//! history's record names the new format at once where every member sums it, and a node is
//! added only if its build sums this build's format.
//!
//! Invariant: a leader of this build names a newer format in the history record only by a write
//! conditional on the record's revision (a racing write wins, and it asks again), and only once
//! every member at the time of the check has said it can sum it; it never names an older one.

use std::sync::Arc;
use std::time::Duration;

use keepsake_raft::digest::DigestFormat;
use keepsake_raft::history::{self, HistoryRecord};
use keepsake_raft::{Consensus, NodeId, WriteOutcome};
use tokio::time::Instant;
use tonic::Status;

use crate::peer::client::Peers;

/// How often a leader looks at the record's format (a local read once it is current).
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long a member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a node being added is asked again when it did not answer.
const RETRY: Duration = Duration::from_millis(250);

/// Runs until the task is aborted.
pub async fn run(consensus: Arc<Consensus>, peers: Peers) {
    let mut said = String::new();
    loop {
        if consensus.metrics().current_leader == Some(consensus.id()) {
            let news = match step(&consensus, &peers).await {
                Ok(Some(moved)) => moved,
                Ok(None) => String::new(),
                Err(waiting) => waiting,
            };
            // Each reason once, not every few seconds.
            if !news.is_empty() && news != said {
                tracing::info!("{news}");
            }
            said = news;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// One check: what moved (`Ok(Some)`), nothing to do (`Ok(None)`), or why it waits (`Err`).
async fn step(consensus: &Consensus, peers: &Peers) -> Result<Option<String>, String> {
    let target = DigestFormat::CURRENT.number();
    // A history without its record after the last restore gets one from the archiver first.
    let Some((record, revision)) = history::read_current(consensus.reader()).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if record.digest_format >= target {
        return Ok(None);
    }
    let behind = members_behind(consensus, peers, target).await;
    if !behind.is_empty() {
        return Err(format!(
            "the state digest stays in format {} until every member can sum format {target}: {}",
            record.digest_format.max(1),
            behind.join("; ")
        ));
    }
    let moved = HistoryRecord { digest_format: target, ..record };
    // Applying it re-sums the whole state on every node: give a large state time.
    let deadline = Instant::now() + Duration::from_secs(600);
    let committed = consensus.propose(history::set(&moved, revision), deadline).await.map_err(|e| e.to_string())?;
    match committed.outcome {
        WriteOutcome::Applied { .. } => Ok(Some(format!(
            "every member sums digest format {target}: the state moved to it at index {}",
            committed.log_index
        ))),
        // Another write of the record came first: look again next time.
        WriteOutcome::Rejected { .. } => Err("the history record changed while moving the digest format".into()),
    }
}

/// The digest format a new history record names: the one the state is in (`carried`), or this
/// build's where every member can already sum it (a new cluster starts in it, with no re-sum
/// later).
pub async fn format_for_new_history(consensus: &Consensus, peers: &Peers, carried: u32) -> u32 {
    let target = DigestFormat::CURRENT.number();
    if carried < target && members_behind(consensus, peers, target).await.is_empty() {
        target
    } else {
        carried
    }
}

/// Refuses to add a node whose build cannot sum this build's digest format: once the cluster
/// moves to it, that node would sum in an older one. Asks until `deadline`, since a node just
/// started may not listen yet.
pub async fn check_joining(peers: &Peers, id: NodeId, peer_addr: &str, deadline: Instant) -> Result<(), Status> {
    let target = DigestFormat::CURRENT.number();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let answer = peers.digest_formats(peer_addr, ASK_TIMEOUT.min(wait)).await;
        let answer = answer.map_err(|s| (s.code(), s.message().to_owned()));
        let why = match behind(id, &answer, target) {
            None => return Ok(()),
            Some(why) => why,
        };
        match answer {
            Err(_) if wait > RETRY => tokio::time::sleep(RETRY).await,
            Err(_) => return Err(Status::unavailable(format!("{why}: start it, on this version, before adding it"))),
            Ok(_) => {
                return Err(Status::failed_precondition(format!("{why}: run this version on it before adding it")))
            }
        }
    }
}

/// Why each member holds a switch to `format` back (empty: every member sums it). Every member
/// of the current membership is asked at once.
async fn members_behind(consensus: &Consensus, peers: &Peers, format: u32) -> Vec<String> {
    let members: Vec<(NodeId, String)> = {
        let metrics = consensus.metrics();
        metrics.membership_config.membership().nodes().map(|(id, n)| (*id, n.peer_addr.clone())).collect()
    };
    let asks = members.iter().map(|(id, addr)| async move {
        let answer = peers.digest_formats(addr, ASK_TIMEOUT).await;
        (*id, answer.map_err(|s| (s.code(), s.message().to_owned())))
    });
    let answers = futures::future::join_all(asks).await;
    answers.iter().filter_map(|(id, answer)| behind(*id, answer, format)).collect()
}

/// A member's answer: the formats its build sums, or the status it answered with.
type Answer = Result<Vec<u32>, (tonic::Code, String)>;

/// Why node `id`, answering `answer`, holds a switch to `format` back (None: it does not).
fn behind(id: NodeId, answer: &Answer, format: u32) -> Option<String> {
    match answer {
        Ok(formats) if formats.contains(&format) => None,
        Ok(formats) => Some(format!("node {id} sums only digest formats {formats:?}")),
        Err((tonic::Code::Unimplemented, _)) => Some(format!("node {id} runs a build from before digest formats")),
        Err((code, message)) => Some(format!("node {id} cannot be asked ({code:?}: {message})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_holds_the_switch_back_unless_it_says_it_sums_the_format() {
        assert_eq!(behind(1, &Ok(vec![1, 2]), 2), None);
        let old = behind(2, &Err((tonic::Code::Unimplemented, "unknown method".into())), 2).expect("held back");
        assert!(old.contains("node 2 runs a build from before digest formats"), "{old}");
        let down = behind(3, &Err((tonic::Code::Unavailable, "connection refused".into())), 2).expect("held back");
        assert!(down.contains("node 3 cannot be asked (Unavailable: connection refused)"), "{down}");
        let partial = behind(4, &Ok(vec![1]), 2).expect("held back");
        assert!(partial.contains("node 4 sums only digest formats [1]"), "{partial}");
    }
}
