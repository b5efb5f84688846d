//! The one place where internal errors become gRPC statuses, each with a message that says
//! what happened and what to do.

use keepsake_raft::{Error, Rejection, StoreError, WriteOutcome};
use tonic::{Code, Status};

pub fn from_error(e: Error) -> Status {
    match e {
        Error::NoLeader(m) | Error::NoQuorum(m) | Error::Timeout(m) => Status::unavailable(m),
        Error::Overloaded(m) | Error::ArchiveBehind(m) => Status::resource_exhausted(m),
        Error::NotArchived(m) | Error::Deadline(m) => Status::deadline_exceeded(m),
        // The leader's own answer, passed on as it was.
        Error::Remote { code, message } => Status::new(Code::from(code), message),
        Error::NotFound(m) => Status::not_found(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::ShuttingDown => Status::unavailable(e.to_string()),
        Error::Internal(m) => Status::internal(format!("{m}; the node logged details")),
    }
}

pub fn from_store(e: StoreError) -> Status {
    tracing::error!(error = %e, "storage error");
    Status::internal(format!("storage error on this node: {e}; retry on another node"))
}

/// A rejected write: which op failed and why.
pub fn from_rejection(op: u32, reason: &Rejection, batch: bool) -> Status {
    let which = if batch { format!("op {op}: ") } else { String::new() };
    match reason {
        Rejection::RevisionMismatch { expected, current: 0 } => Status::failed_precondition(format!(
            "{which}if_revision is {expected} but the item does not exist (current revision 0); \
             read it again and retry"
        )),
        Rejection::RevisionMismatch { expected, current } => Status::failed_precondition(format!(
            "{which}if_revision is {expected} but the item is at revision {current} (current revision {current}); \
             read it again and retry"
        )),
        Rejection::NotFound => {
            Status::not_found(format!("{which}the item does not exist, so there is nothing to delete"))
        }
    }
}

/// The revisions of an applied write, or the status of a rejected one.
pub fn outcome(outcome: WriteOutcome, batch: bool) -> Result<Vec<u64>, Status> {
    match outcome {
        WriteOutcome::Applied { revisions } => Ok(revisions),
        WriteOutcome::Rejected { op, reason } => Err(from_rejection(op, &reason, batch)),
    }
}
