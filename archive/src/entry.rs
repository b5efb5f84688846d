//! Conversion between openraft log entries and their archived form (`ArchivedEntry`), the
//! documented protobuf a restore replays.
//!
//! Invariant: `to_command(archived(e))` gives back exactly the command of `e`, so a restore
//! applies the same writes, with the same times, that the cluster applied.

use keepsake_raft::types::Entry;
use keepsake_raft::{Command, DeleteOp, Op, PutOp, Write};
use openraft::EntryPayload;

use crate::proto::{self as pb, archived_entry::Payload};

pub fn archived(entry: &Entry) -> pb::ArchivedEntry {
    let (proposed_at_us, payload) = match &entry.payload {
        EntryPayload::Blank => (0, Payload::Blank(pb::Blank {})),
        EntryPayload::Normal(c) => {
            (c.proposed_at_us, Payload::Writes(pb::Writes { writes: c.writes.iter().map(write).collect() }))
        }
        EntryPayload::Membership(m) => {
            let voters: Vec<u64> = m.voter_ids().collect();
            let learners = m.learner_ids().collect();
            (0, Payload::Membership(pb::MembershipChange { voters, learners }))
        }
    };
    pb::ArchivedEntry {
        index: entry.log_id.index,
        term: entry.log_id.leader_id.term,
        proposed_at_us,
        payload: Some(payload),
    }
}

fn write(w: &Write) -> pb::Write {
    let ops = w
        .ops
        .iter()
        .map(|op| match op {
            Op::Put(p) => pb::Op {
                collection: p.collection.clone(),
                item_id: p.item_id.clone(),
                if_revision: p.if_revision,
                kind: Some(pb::op::Kind::Put(pb::Put { value: p.value.clone(), content_type: p.content_type.clone() })),
            },
            Op::Delete(d) => pb::Op {
                collection: d.collection.clone(),
                item_id: d.item_id.clone(),
                if_revision: d.if_revision,
                kind: Some(pb::op::Kind::Delete(pb::Delete {})),
            },
        })
        .collect();
    pb::Write { user_id: w.user_id.clone(), ops }
}

/// The client writes an archived entry carries (None for blank and membership entries).
pub fn to_command(entry: &pb::ArchivedEntry) -> Result<Option<Command>, String> {
    let Some(Payload::Writes(w)) = &entry.payload else {
        return match entry.payload {
            Some(_) => Ok(None),
            None => Err(format!("entry {} has no payload", entry.index)),
        };
    };
    let writes = w
        .writes
        .iter()
        .map(|w| {
            let ops = w
                .ops
                .iter()
                .map(|op| match &op.kind {
                    Some(pb::op::Kind::Put(p)) => Ok(Op::Put(PutOp {
                        collection: op.collection.clone(),
                        item_id: op.item_id.clone(),
                        value: p.value.clone(),
                        content_type: p.content_type.clone(),
                        if_revision: op.if_revision,
                    })),
                    Some(pb::op::Kind::Delete(_)) => Ok(Op::Delete(DeleteOp {
                        collection: op.collection.clone(),
                        item_id: op.item_id.clone(),
                        if_revision: op.if_revision,
                    })),
                    None => Err(format!("entry {}: an op is neither a put nor a delete", entry.index)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Write { user_id: w.user_id.clone(), ops })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(Command { proposed_at_us: entry.proposed_at_us, writes }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};

    #[test]
    fn a_command_survives_the_round_trip_through_its_archived_form() {
        let command = Command {
            proposed_at_us: 1_700_000_000_000_000,
            writes: vec![Write {
                user_id: "u".into(),
                ops: vec![
                    Op::Put(PutOp {
                        collection: "c".into(),
                        item_id: "a".into(),
                        value: b"v".to_vec(),
                        content_type: "text/plain".into(),
                        if_revision: Some(0),
                    }),
                    Op::Delete(DeleteOp { collection: "c".into(), item_id: "b".into(), if_revision: None }),
                ],
            }],
        };
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 42),
            payload: EntryPayload::Normal(command.clone()),
        };
        let a = archived(&entry);
        assert_eq!((a.index, a.term, a.proposed_at_us), (42, 3, command.proposed_at_us));
        assert_eq!(to_command(&a).unwrap(), Some(command));
        let blank =
            archived(&Entry { log_id: LogId::new(CommittedLeaderId::new(3, 1), 43), payload: EntryPayload::Blank });
        assert_eq!(to_command(&blank).unwrap(), None);
    }
}
