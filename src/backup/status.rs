//! What the archive holds and how the archiver is doing, as this node knows it: the archiver
//! publishes it on a watch channel; the write path (ARCHIVED writes, backpressure), the
//! snapshotter, `backup status` and `/metrics` read it.

/// What the archive holds and how the archiver is doing, as this node knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiveStatus {
    /// The last index in the archive (None: nothing archived yet, or not known yet).
    pub archived_index: Option<u64>,
    /// Whether this node is the one uploading.
    pub uploading: bool,
    /// When the oldest committed entry not yet archived was first seen (0: none waiting). While
    /// a new leader cannot learn the archive's last index, the time it started trying.
    pub pending_since_us: i64,
    pub last_success_us: i64,
    pub last_error: String,
    pub segments_uploaded: u64,
    pub bytes_uploaded: u64,
    /// This node leads, and its archiver has listed the archive and found this cluster's
    /// history there, not another's: only then may the snapshotter upload and retention delete.
    pub owned: bool,
    /// Why this node, leading, archives nothing (the root belongs to another history, or the
    /// store cannot fence writers); empty while it is not refusing. ARCHIVED writes are
    /// refused at once meanwhile, and `/readyz` says so.
    pub refused: String,
    /// The history this node archives as, once it owns the root.
    pub history: Option<keepsake_raft::HistoryId>,
    /// The Raft term this node owns the root in (0: it does not): chunks it writes go under
    /// this term, and it deletes none of a later one (keepsake_archive::snapshot::ChunkId).
    pub term: u64,
}
