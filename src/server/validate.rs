//! Request validation: every request is checked here, against `Limits`, before it can reach
//! the log or the store, and turned into what the handler needs. Each error is
//! INVALID_ARGUMENT and names the field, the limit and what to change.

use keepsake_raft::{DeleteOp, Op, PutOp, Write};
use tonic::Status;

use crate::limits::Limits;
use crate::proto::v1::{
    batch_op, BatchOp, BatchRequest, Consistency, DeleteRequest, Durability, GetRequest, ItemKey, ListRequest,
    PutRequest,
};

/// A write to commit, and whether it waits for the archive (ARCHIVED).
pub type CheckedWrite = (Write, bool);

pub fn put(limits: &Limits, req: PutRequest) -> Result<CheckedWrite, Status> {
    let key = key(limits, req.key.as_ref())?;
    value(limits, "value", &req.value, &req.content_type)?;
    let archived = durability(req.durability)?;
    let op = Op::Put(PutOp {
        collection: key.collection,
        item_id: key.item_id,
        value: req.value,
        content_type: req.content_type,
        if_revision: req.if_revision,
    });
    Ok((Write { user_id: key.user_id, ops: vec![op] }, archived))
}

pub fn delete(limits: &Limits, req: DeleteRequest) -> Result<CheckedWrite, Status> {
    let key = key(limits, req.key.as_ref())?;
    let archived = durability(req.durability)?;
    let op = Op::Delete(DeleteOp { collection: key.collection, item_id: key.item_id, if_revision: req.if_revision });
    Ok((Write { user_id: key.user_id, ops: vec![op] }, archived))
}

pub fn batch_request(limits: &Limits, req: BatchRequest) -> Result<CheckedWrite, Status> {
    let ops = batch(limits, &req.user_id, &req.ops)?;
    Ok((Write { user_id: req.user_id, ops }, durability(req.durability)?))
}

pub fn get(limits: &Limits, req: &GetRequest) -> Result<(ItemKey, Consistency), Status> {
    Ok((key(limits, req.key.as_ref())?, consistency(req.consistency)?))
}

/// One page of a collection to read.
#[derive(Debug)]
pub struct ListQuery {
    pub user_id: String,
    pub collection: String,
    /// The item id the page starts after.
    pub after: Option<String>,
    pub size: usize,
    pub consistency: Consistency,
}

pub fn list(limits: &Limits, req: ListRequest) -> Result<ListQuery, Status> {
    id(limits, "user_id", &req.user_id)?;
    id(limits, "collection", &req.collection)?;
    if req.page_size > limits.max_page_size {
        return Err(Status::invalid_argument(format!(
            "page_size {} is over the limit of {}; ask for fewer items per page",
            req.page_size, limits.max_page_size
        )));
    }
    let after = if req.page_token.is_empty() {
        None
    } else {
        id(limits, "page_token", &req.page_token)?;
        Some(req.page_token)
    };
    Ok(ListQuery {
        user_id: req.user_id,
        collection: req.collection,
        after,
        size: if req.page_size == 0 { limits.default_page_size } else { req.page_size } as usize,
        consistency: consistency(req.consistency)?,
    })
}

/// A read of one user's whole data (Changes, ExportUser): the user id and the consistency.
pub fn user_read(limits: &Limits, user_id: &str, raw_consistency: i32) -> Result<Consistency, Status> {
    id(limits, "user_id", user_id)?;
    consistency(raw_consistency)
}

pub fn id(limits: &Limits, field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty; give a non-empty id")));
    }
    if value.len() > limits.max_id_bytes {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, over the limit of {} bytes; use a shorter id",
            value.len(),
            limits.max_id_bytes
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "{field} contains the control character U+{:04X}; ids must be printable text",
            c as u32
        )));
    }
    Ok(())
}

pub fn key(limits: &Limits, key: Option<&ItemKey>) -> Result<ItemKey, Status> {
    let key = key.ok_or_else(|| Status::invalid_argument("key is missing; give user_id, collection and item_id"))?;
    id(limits, "key.user_id", &key.user_id)?;
    id(limits, "key.collection", &key.collection)?;
    id(limits, "key.item_id", &key.item_id)?;
    Ok(key.clone())
}

pub fn value(limits: &Limits, field: &str, value: &[u8], content_type: &str) -> Result<(), Status> {
    if value.len() > limits.max_value_bytes {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, over the limit of {} bytes; split it or store it elsewhere",
            value.len(),
            limits.max_value_bytes
        )));
    }
    if content_type.len() > limits.max_content_type_bytes || content_type.chars().any(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "content_type must be printable and at most {} bytes",
            limits.max_content_type_bytes
        )));
    }
    Ok(())
}

/// True for ARCHIVED: the write is acknowledged only once it is in the archive.
pub fn durability(raw: i32) -> Result<bool, Status> {
    match Durability::try_from(raw) {
        Ok(Durability::Unspecified | Durability::Quorum) => Ok(false),
        Ok(Durability::Archived) => Ok(true),
        Err(_) => Err(Status::invalid_argument(format!(
            "durability {raw} is not a known value; use QUORUM (1) or ARCHIVED (2)"
        ))),
    }
}

pub fn consistency(raw: i32) -> Result<Consistency, Status> {
    match Consistency::try_from(raw) {
        Ok(Consistency::Unspecified | Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(Consistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(Status::invalid_argument(format!(
            "consistency {raw} is not a known value; use LINEARIZABLE (1) or STALE (2)"
        ))),
    }
}

/// Checks a whole batch and turns it into log ops.
pub fn batch(limits: &Limits, user_id: &str, ops: &[BatchOp]) -> Result<Vec<Op>, Status> {
    id(limits, "user_id", user_id)?;
    if ops.is_empty() {
        return Err(Status::invalid_argument("the batch has no ops; give at least one put or delete"));
    }
    if ops.len() > limits.max_batch_ops {
        return Err(Status::invalid_argument(format!(
            "the batch has {} ops, over the limit of {}; split it into several batches",
            ops.len(),
            limits.max_batch_ops
        )));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(ops.len());
    for (n, op) in ops.iter().enumerate() {
        let field = |f: &str| format!("ops[{n}].{f}");
        let converted = match &op.op {
            Some(batch_op::Op::Put(p)) => {
                id(limits, &field("collection"), &p.collection)?;
                id(limits, &field("item_id"), &p.item_id)?;
                value(limits, &field("value"), &p.value, &p.content_type)?;
                total += p.value.len() + p.item_id.len() + p.collection.len();
                Op::Put(PutOp {
                    collection: p.collection.clone(),
                    item_id: p.item_id.clone(),
                    value: p.value.clone(),
                    content_type: p.content_type.clone(),
                    if_revision: p.if_revision,
                })
            }
            Some(batch_op::Op::Delete(d)) => {
                id(limits, &field("collection"), &d.collection)?;
                id(limits, &field("item_id"), &d.item_id)?;
                total += d.item_id.len() + d.collection.len();
                Op::Delete(DeleteOp {
                    collection: d.collection.clone(),
                    item_id: d.item_id.clone(),
                    if_revision: d.if_revision,
                })
            }
            None => return Err(Status::invalid_argument(format!("ops[{n}] is neither a put nor a delete"))),
        };
        out.push(converted);
    }
    if total > limits.max_batch_bytes {
        return Err(Status::invalid_argument(format!(
            "the batch carries {total} bytes, over the limit of {} bytes; split it",
            limits.max_batch_bytes
        )));
    }
    Ok(out)
}

/// Checks a write a follower forwarded, on the leader, as the client port checked it: a peer's
/// word is not enough to write an id, a value or a batch the rules refuse (or the system user).
pub fn forwarded(limits: &Limits, write: &Write) -> Result<(), Status> {
    id(limits, "user_id", &write.user_id)?;
    if write.ops.is_empty() || write.ops.len() > limits.max_batch_ops {
        return Err(Status::invalid_argument(format!(
            "a forwarded write has {} ops; between 1 and {} are allowed",
            write.ops.len(),
            limits.max_batch_ops
        )));
    }
    let mut total = 0usize;
    for (n, op) in write.ops.iter().enumerate() {
        let field = |f: &str| format!("ops[{n}].{f}");
        id(limits, &field("collection"), op.collection())?;
        id(limits, &field("item_id"), op.item_id())?;
        total += op.collection().len() + op.item_id().len();
        if let Op::Put(p) = op {
            value(limits, &field("value"), &p.value, &p.content_type)?;
            total += p.value.len();
        }
    }
    if write.ops.len() > 1 && total > limits.max_batch_bytes {
        return Err(Status::invalid_argument(format!(
            "the batch carries {total} bytes, over the limit of {} bytes; split it",
            limits.max_batch_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{BatchDelete, BatchPut};
    use tonic::Code;

    fn limits() -> Limits {
        Limits { max_value_bytes: 10, max_id_bytes: 8, max_batch_ops: 2, max_batch_bytes: 16, ..Limits::default() }
    }

    fn k(u: &str, c: &str, i: &str) -> ItemKey {
        ItemKey { user_id: u.into(), collection: c.into(), item_id: i.into() }
    }

    #[test]
    fn ids_must_be_present_short_and_printable() {
        let l = limits();
        assert!(key(&l, Some(&k("u", "c", "i"))).is_ok());
        assert!(key(&l, None).unwrap_err().message().contains("missing"));
        let e = key(&l, Some(&k("", "c", "i"))).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("user_id is empty"));
        let e = key(&l, Some(&k("u", "c", "123456789"))).unwrap_err();
        assert!(e.message().contains("9 bytes, over the limit of 8"));
        let e = key(&l, Some(&k("u", "c\u{0}x", "i"))).unwrap_err();
        assert!(e.message().contains("U+0000"));
        assert!(key(&l, Some(&k("u\n", "c", "i"))).is_err());
        assert!(key(&l, Some(&k("ü", "日本", "i"))).is_ok(), "non-ASCII printable text is fine");
    }

    #[test]
    fn values_over_the_limit_are_refused() {
        let l = limits();
        assert!(value(&l, "value", &[0; 10], "").is_ok());
        let e = value(&l, "value", &[0; 11], "").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("11 bytes, over the limit of 10"));
        assert!(value(&l, "value", b"", "text/\u{7}").is_err());
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        assert_eq!(durability(7).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(consistency(-1).unwrap_err().code(), Code::InvalidArgument);
        assert!(!durability(0).unwrap());
        assert!(durability(2).unwrap());
        assert_eq!(consistency(2).unwrap(), Consistency::Stale);
    }

    #[test]
    fn batches_are_bounded_in_ops_and_bytes() {
        let l = limits();
        let put = |id: &str, v: &[u8]| BatchOp {
            op: Some(batch_op::Op::Put(BatchPut {
                collection: "c".into(),
                item_id: id.into(),
                value: v.to_vec(),
                content_type: String::new(),
                if_revision: None,
            })),
        };
        let del = BatchOp {
            op: Some(batch_op::Op::Delete(BatchDelete {
                collection: "c".into(),
                item_id: "x".into(),
                if_revision: None,
            })),
        };
        assert_eq!(batch(&l, "u", &[put("a", b"1"), del.clone()]).unwrap().len(), 2);
        assert!(batch(&l, "u", &[]).unwrap_err().message().contains("no ops"));
        assert!(batch(&l, "u", &[del.clone(), del.clone(), del.clone()]).unwrap_err().message().contains("3 ops"));
        let e = batch(&l, "u", &[put("a", &[0; 10]), put("b", &[0; 10])]).unwrap_err();
        assert!(e.message().contains("over the limit of 16 bytes"), "{}", e.message());
        assert!(batch(&l, "u", &[BatchOp { op: None }]).is_err());
        assert!(batch(&l, "u", &[put("bad\u{1}", b"")]).unwrap_err().message().contains("ops[0].item_id"));
    }

    #[test]
    fn a_forwarded_write_is_checked_as_a_client_one_and_never_reaches_the_system_user() {
        let ok = Write {
            user_id: "u".into(),
            ops: vec![Op::Delete(DeleteOp { collection: "c".into(), item_id: "i".into(), if_revision: None })],
        };
        forwarded(&limits(), &ok).expect("an ordinary write");
        let system = Write { user_id: keepsake_raft::history::SYSTEM_USER.into(), ..ok.clone() };
        assert_eq!(forwarded(&limits(), &system).unwrap_err().code(), Code::InvalidArgument);
        let big = Write {
            ops: vec![Op::Put(PutOp {
                collection: "c".into(),
                item_id: "i".into(),
                value: vec![0; 11],
                content_type: String::new(),
                if_revision: None,
            })],
            ..ok.clone()
        };
        assert!(forwarded(&limits(), &big).unwrap_err().message().contains("over the limit"));
        let empty = Write { ops: vec![], ..ok };
        assert!(forwarded(&limits(), &empty).is_err());
    }
}
