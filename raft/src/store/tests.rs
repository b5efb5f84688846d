//! Store tests: openraft's storage suite, and the state machine's own promises (deterministic
//! apply, preconditions, the digest).

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use tempfile::TempDir;

use super::{open, LogStore, StateMachine};
use crate::command::*;
use crate::types::{StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let store = open(dir.path()).expect("open store");
        Ok((dir, store.log, store.machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite passes");
}

fn put(user: &str, id: &str, value: &str, if_revision: Option<u64>) -> Write {
    Write {
        user_id: user.into(),
        ops: vec![Op::Put(PutOp {
            collection: "contacts".into(),
            item_id: id.into(),
            value: value.as_bytes().to_vec(),
            content_type: "text/plain".into(),
            if_revision,
        })],
    }
}

fn delete(user: &str, id: &str, if_revision: Option<u64>) -> Write {
    Write {
        user_id: user.into(),
        ops: vec![Op::Delete(DeleteOp { collection: "contacts".into(), item_id: id.into(), if_revision })],
    }
}

fn entry(index: u64, writes: Vec<Write>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command { proposed_at_us: index as i64 * 1000, writes }),
    }
}

async fn apply_all(sm: &mut StateMachine, entries: Vec<Entry<TypeConfig>>) -> Vec<CommandResult> {
    sm.apply(entries).await.expect("apply")
}

fn sample_log() -> Vec<Entry<TypeConfig>> {
    vec![
        entry(1, vec![put("u1", "a", "1", None), put("u2", "a", "x", None)]),
        entry(2, vec![put("u1", "b", "2", Some(0)), put("u1", "a", "1b", Some(1))]),
        entry(3, vec![delete("u2", "a", None), put("u1", "c", "3", None)]),
        entry(4, vec![put("u1", "a", "stale", Some(1)), delete("u1", "zzz", None)]),
    ]
}

#[tokio::test]
async fn apply_is_deterministic_across_nodes_and_batchings() {
    let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (mut one, mut two) = (open(d1.path()).unwrap(), open(d2.path()).unwrap());
    // Node one applies the log in a single call, node two one entry at a time.
    let r1 = apply_all(&mut one.machine, sample_log()).await;
    let mut r2 = Vec::new();
    for e in sample_log() {
        r2.extend(apply_all(&mut two.machine, vec![e]).await);
    }
    assert_eq!(r1, r2);
    let (p1, p2) = (one.reader.applied(), two.reader.applied());
    assert_eq!(p1, p2);
    assert_eq!(p1.index, 4);
    assert_eq!(p1.revision, 6, "six ops applied, two rejected");
    assert_eq!(p1.items, 3, "u1/a, u1/b, u1/c live; u2/a deleted");
    let (c1, c2) = (one.reader.changes("u1", 0, 100).await.unwrap(), two.reader.changes("u1", 0, 100).await.unwrap());
    assert_eq!(c1, c2);
}

#[tokio::test]
async fn preconditions_are_checked_and_reported_with_the_current_revision() {
    let dir = TempDir::new().unwrap();
    let mut s = open(dir.path()).unwrap();
    let r = apply_all(&mut s.machine, sample_log()).await;
    assert_eq!(
        r[0].outcomes,
        vec![WriteOutcome::Applied { revisions: vec![1] }, WriteOutcome::Applied { revisions: vec![2] }]
    );
    assert_eq!(r[1].outcomes[0], WriteOutcome::Applied { revisions: vec![3] }, "if_revision 0 on a new item");
    assert_eq!(r[1].outcomes[1], WriteOutcome::Applied { revisions: vec![4] }, "if_revision matches");
    assert_eq!(
        r[3].outcomes[0],
        WriteOutcome::Rejected { op: 0, reason: Rejection::RevisionMismatch { expected: 1, current: 4 } }
    );
    assert_eq!(r[3].outcomes[1], WriteOutcome::Rejected { op: 0, reason: Rejection::NotFound });
    let a = s.reader.get("u1", "contacts", "a").await.unwrap().expect("u1/a exists");
    assert_eq!(a.record.value, b"1b");
    assert_eq!(a.record.revision, 4);

    // A create-only put on an existing item fails; after a delete it succeeds again.
    let r = apply_all(&mut s.machine, vec![entry(5, vec![put("u1", "a", "new", Some(0))])]).await;
    assert_eq!(
        r[0].outcomes[0],
        WriteOutcome::Rejected { op: 0, reason: Rejection::RevisionMismatch { expected: 0, current: 4 } }
    );
    let r =
        apply_all(&mut s.machine, vec![entry(6, vec![delete("u1", "a", Some(4)), put("u1", "a", "again", Some(0))])])
            .await;
    assert!(matches!(r[0].outcomes[1], WriteOutcome::Applied { .. }), "a deleted item counts as absent");
}

#[tokio::test]
async fn a_batch_applies_all_of_its_ops_or_none() {
    let dir = TempDir::new().unwrap();
    let mut s = open(dir.path()).unwrap();
    apply_all(&mut s.machine, vec![entry(1, vec![put("u", "a", "1", None)])]).await;
    let before = s.reader.applied();
    let mut w = put("u", "b", "2", None);
    w.ops.extend(put("u", "a", "x", Some(99)).ops);
    let r = apply_all(&mut s.machine, vec![entry(2, vec![w])]).await;
    assert_eq!(
        r[0].outcomes[0],
        WriteOutcome::Rejected { op: 1, reason: Rejection::RevisionMismatch { expected: 99, current: 1 } }
    );
    assert!(s.reader.get("u", "contacts", "b").await.unwrap().is_none(), "the first op was not applied");
    let after = s.reader.applied();
    assert_eq!((before.digest, before.revision), (after.digest, after.revision));
}

#[tokio::test]
async fn digest_moves_on_put_and_delete_and_returns_when_a_put_is_undone() {
    let dir = TempDir::new().unwrap();
    let mut s = open(dir.path()).unwrap();
    apply_all(&mut s.machine, vec![entry(1, vec![put("u", "a", "1", None)])]).await;
    let base = s.reader.applied().digest;
    apply_all(&mut s.machine, vec![entry(2, vec![put("u", "b", "2", None)])]).await;
    let with_b = s.reader.applied().digest;
    assert_ne!(base, with_b, "a put changes the digest");
    apply_all(&mut s.machine, vec![entry(3, vec![put("u", "a", "1-changed", None)])]).await;
    assert_ne!(with_b, s.reader.applied().digest, "an overwrite changes the digest");
    apply_all(&mut s.machine, vec![entry(4, vec![delete("u", "b", None)])]).await;
    let without_b = s.reader.applied().digest;
    assert_ne!(without_b, with_b, "a delete changes the digest");
    // Undo: delete the item just created; the digest returns exactly.
    apply_all(&mut s.machine, vec![entry(5, vec![put("u", "c", "3", None)])]).await;
    apply_all(&mut s.machine, vec![entry(6, vec![delete("u", "c", None)])]).await;
    assert_eq!(s.reader.applied().digest, without_b);
    // The digest history remembers each index.
    assert_eq!(s.reader.digest_at(2).await.unwrap().map(|p| p.digest), Some(with_b));
    assert_eq!(s.reader.digest_at(4).await.unwrap().map(|p| p.digest), Some(without_b));
}

#[tokio::test]
async fn state_and_digest_survive_reopening() {
    let dir = TempDir::new().unwrap();
    let point = {
        let mut s = open(dir.path()).unwrap();
        apply_all(&mut s.machine, sample_log()).await;
        s.reader.applied()
    };
    let s = open(dir.path()).unwrap();
    assert_eq!(s.reader.applied(), point);
    assert_eq!(s.reader.list("u1", "contacts", None, 10).await.unwrap().0.len(), 3);
}

#[tokio::test]
async fn changes_hold_each_items_latest_write_in_revision_order() {
    let dir = TempDir::new().unwrap();
    let mut s = open(dir.path()).unwrap();
    apply_all(&mut s.machine, sample_log()).await;
    let changes = s.reader.changes("u1", 0, 100).await.unwrap();
    let seen: Vec<(u64, &str)> = changes.iter().map(|c| (c.revision, c.item_id.as_str())).collect();
    assert_eq!(seen, vec![(3, "b"), (4, "a"), (6, "c")]);
    let u2 = s.reader.changes("u2", 0, 100).await.unwrap();
    assert_eq!(u2.len(), 1);
    assert!(u2[0].item.is_none(), "u2/a is a tombstone");
    assert_eq!(s.reader.changes("u1", 4, 100).await.unwrap().len(), 1);
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

/// A leader's state through `index` (term 2), as a snapshot; the directory holds its file.
async fn leader_snapshot(index: u64) -> (TempDir, openraft::Snapshot<TypeConfig>) {
    use openraft::RaftSnapshotBuilder;
    let dir = TempDir::new().unwrap();
    let mut leader = open(dir.path()).unwrap();
    leader.machine.apply((1..=index).map(|i| blank(2, i))).await.unwrap();
    let snapshot = leader.machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    (dir, snapshot)
}

/// A follower whose log ends before the snapshot it installs, with its purge gate behind that
/// snapshot (the archive lags): the log it keeps must load at the next start. Entries kept
/// below the snapshot would leave a hole before the entries appended after it.
#[tokio::test]
async fn a_snapshot_installed_past_the_end_of_the_log_leaves_no_hole_for_the_next_start() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, StorageHelper};
    let id = log_id;

    let (_leader, snapshot) = leader_snapshot(20).await;

    // A deposed leader's log (term 1) ends at 10; its archive reaches 3.
    let dir = TempDir::new().unwrap();
    {
        let mut s = open(dir.path()).unwrap();
        s.log.blocking_append((1..=10).map(|i| blank(1, i))).await.unwrap();
        s.gate.set_limit(3);
        s.machine.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        s.log.purge(id(2, 20)).await.unwrap();
        s.log.blocking_append((21..=25).map(|i| blank(2, i))).await.unwrap();
    }
    let mut s = open(dir.path()).unwrap();
    StorageHelper::new(&mut s.log, &mut s.machine).get_initial_state().await.expect("openraft loads the log");
    let log = s.log.get_log_state().await.unwrap();
    assert_eq!((log.last_purged_log_id, log.last_log_id), (Some(id(2, 20)), Some(id(2, 25))));
}

/// openraft lets go of a finished snapshot stream before it hands the stream's file over for
/// install, so a new leader's first chunk can open the next receive in between. The finished
/// file must install whole.
#[tokio::test]
async fn a_snapshot_waiting_to_install_keeps_its_bytes_when_the_next_one_begins() {
    use tokio::io::AsyncWriteExt;
    let (_leader, mut snapshot) = leader_snapshot(20).await;
    let dir = TempDir::new().unwrap();
    let mut s = open(dir.path()).unwrap();

    let mut finished = s.machine.begin_receiving_snapshot().await.unwrap();
    tokio::io::copy(&mut snapshot.snapshot, &mut finished).await.unwrap();
    finished.flush().await.unwrap();
    let mut next = s.machine.begin_receiving_snapshot().await.unwrap();
    next.write_all(b"the next leader's first chunk").await.unwrap();
    next.flush().await.unwrap();

    s.machine.install_snapshot(&snapshot.meta, finished).await.expect("the finished snapshot installs whole");
    assert_eq!(s.reader.applied().index, 20);
}

/// The write that names `format` in the history record (what a leader of this build proposes).
fn history_naming(format: u32) -> Write {
    let record = crate::history::HistoryRecord {
        id: "00112233445566778899aabbccddeeff".into(),
        restores: 0,
        parent: None,
        archive: Some("s3://bucket/prefix".into()),
        digest_format: format,
    };
    crate::history::set(&record, 0)
}

/// The whole state of the store under `dir`, summed from scratch in `format`.
fn summed(dir: &std::path::Path, format: DigestFormat) -> crate::Digest {
    let db = super::db::open(&dir.join("db")).unwrap();
    super::apply::sum(&db, format, &Default::default()).unwrap()
}

use crate::digest::DigestFormat;

#[tokio::test]
async fn a_history_record_naming_format_2_re_sums_the_state_alike_on_every_replica() {
    let log = || {
        let mut log = sample_log();
        log.push(entry(5, vec![history_naming(2)]));
        log.push(entry(6, vec![put("u1", "a", "after", None), delete("u1", "b", None), put("u3", "t", "x", None)]));
        log
    };
    let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (one, two) = {
        let (mut one, mut two) = (open(d1.path()).unwrap(), open(d2.path()).unwrap());
        apply_all(&mut one.machine, log()).await;
        for e in log() {
            apply_all(&mut two.machine, vec![e]).await;
        }
        for index in [4, 5, 6] {
            let (a, b) = (one.reader.digest_at(index).await.unwrap(), two.reader.digest_at(index).await.unwrap());
            assert_eq!(a, b, "both replicas agree at index {index}, however they batch the switch");
        }
        (one.reader.applied(), two.reader.applied())
    };
    assert_eq!(one, two);
    assert_eq!(one.items, 4, "u1/a, u1/c, u3/t and the history record");
    assert_eq!(one.digest, summed(d1.path(), DigestFormat::V2), "kept up to date in format 2 after the switch");
    assert_ne!(one.digest, summed(d1.path(), DigestFormat::V1));
    // The format is kept with the state and outlives a restart.
    let again = open(d1.path()).unwrap();
    assert_eq!(again.reader.applied(), one);
    assert_eq!(again.reader.digest_format().unwrap(), DigestFormat::V2);
}

#[tokio::test]
async fn format_2_tells_apart_states_that_format_1_cannot() {
    let typed = |content_type: &str| {
        let mut w = put("u", "a", "same", None);
        if let Op::Put(p) = &mut w.ops[0] {
            p.content_type = content_type.into();
        }
        w
    };
    // Same keys, revisions and values: one differs in a content type, one in a tombstone's key.
    let states = [
        vec![typed("text/plain"), put("u", "gone", "x", None), delete("u", "gone", None)],
        vec![typed("text/html"), put("u", "gone", "x", None), delete("u", "gone", None)],
        vec![typed("text/plain"), put("u", "went", "x", None), delete("u", "went", None)],
    ];
    let mut digests = Vec::new();
    for format in [0, 2] {
        let mut row = Vec::new();
        for writes in &states {
            let dir = TempDir::new().unwrap();
            let mut s = open(dir.path()).unwrap();
            let mut log = vec![entry(1, vec![history_naming(format)])];
            log.extend(writes.iter().enumerate().map(|(k, w)| entry(k as u64 + 2, vec![w.clone()])));
            apply_all(&mut s.machine, log).await;
            row.push(s.reader.applied().digest);
        }
        digests.push(row);
    }
    assert!(digests[0].iter().all(|d| *d == digests[0][0]), "format 1 sees one state: {:?}", digests[0]);
    let v2 = &digests[1];
    assert!(v2[0] != v2[1] && v2[0] != v2[2] && v2[1] != v2[2], "format 2 sees three: {v2:?}");
}

#[tokio::test]
async fn raft_snapshots_install_in_the_format_their_state_names() {
    use openraft::RaftSnapshotBuilder;
    for with_record in [false, true] {
        let dir = TempDir::new().unwrap();
        let mut leader = open(dir.path()).unwrap();
        let mut log = sample_log();
        if with_record {
            log.push(entry(5, vec![history_naming(2)]));
        }
        apply_all(&mut leader.machine, log).await;
        let snapshot = leader.machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let other = TempDir::new().unwrap();
        let mut follower = open(other.path()).unwrap();
        follower.machine.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("the snapshot installs");
        assert_eq!(follower.reader.applied(), leader.reader.applied(), "record: {with_record}");
        let format = if with_record { DigestFormat::V2 } else { DigestFormat::V1 };
        assert_eq!(follower.reader.digest_format().unwrap(), format, "the install keeps the format");
        // The follower goes on in the same format.
        let next = entry(9, vec![put("u9", "z", "1", None)]);
        apply_all(&mut leader.machine, vec![next.clone()]).await;
        apply_all(&mut follower.machine, vec![next]).await;
        assert_eq!(follower.reader.applied(), leader.reader.applied(), "record: {with_record}");
    }
}

/// Rewrites the store under `dir` as a build from before digest formats leaves it: the meta
/// written without the format mark, applied at `applied` and summed in format 1 from `from`
/// (the state's digest as this build left it).
fn as_an_older_build_leaves_it(dir: &std::path::Path, applied: u64, keep_mark: bool) {
    use super::db::{cf, encode, CF_META};
    let db = super::db::open(&dir.join("db")).unwrap();
    let mut meta: super::MachineMeta = super::db::get(&db, CF_META, super::apply::KEY_META).unwrap().unwrap();
    meta.applied = Some(log_id(1, applied));
    meta.digest = super::apply::sum(&db, DigestFormat::V1, &Default::default()).unwrap();
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(cf(&db, CF_META), super::apply::KEY_META, encode(&meta));
    if !keep_mark {
        batch.delete_cf(cf(&db, CF_META), super::apply::KEY_DIGEST_FORMAT);
    }
    super::db::write_synced(&db, batch, "as an older build leaves it").unwrap();
}

/// A build from before formats sums in format 1 and writes no format mark. Where the state is in
/// format 1 that is right, and this build takes the node over; where the record names format 2
/// (the older build applied the switch, or ran the node after it) the node's digests cannot be
/// trusted, and it refuses to start, saying how to rebuild it.
#[tokio::test]
async fn a_node_an_older_build_ran_opens_only_where_its_sum_is_right() {
    // Format 1 throughout: an upgrade from a build before formats.
    let dir = TempDir::new().unwrap();
    {
        let mut s = open(dir.path()).unwrap();
        apply_all(&mut s.machine, sample_log()).await;
    }
    as_an_older_build_leaves_it(dir.path(), 4, false);
    open(dir.path()).expect("a format 1 state an older build ran opens");

    // The older build applied the record (no mark at all), or ran the node after it (a mark
    // behind the meta).
    for (applied, keep_mark) in [(5, false), (6, true)] {
        let dir = TempDir::new().unwrap();
        {
            let mut s = open(dir.path()).unwrap();
            let mut log = sample_log();
            log.push(entry(5, vec![history_naming(2)]));
            apply_all(&mut s.machine, log).await;
        }
        as_an_older_build_leaves_it(dir.path(), applied, keep_mark);
        let refused = open(dir.path()).err().expect("the node refuses to start").to_string();
        assert!(refused.contains("a Keepsake build from before digest formats ran this node"), "{refused}");
        assert!(refused.contains("delete its data directory"), "{refused}");
    }
}

#[tokio::test]
async fn a_record_naming_a_format_this_build_does_not_know_stops_the_apply() {
    let dir = TempDir::new().unwrap();
    let mut s = open(dir.path()).unwrap();
    let failed = s.machine.apply(vec![entry(1, vec![history_naming(3)])]).await;
    assert!(failed.is_err(), "an unknown format is never summed as a known one");
    assert_eq!(s.reader.applied().index, 0, "nothing of the entry is applied");
}
