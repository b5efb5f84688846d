//! The HTTP port: Prometheus `/metrics`, `/healthz` (the process serves) and `/readyz` (it
//! knows a leader and its archive is within its backlog limits).
//!
//! Metrics are computed at scrape time from the node's own state (Raft metrics, the archiver's
//! status), so there is no registry to keep in step. Names carry the `keepsake_` prefix and
//! their unit.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use super::admin::backup_status;
use crate::replica::Replica;

pub async fn serve(
    replica: Arc<Replica>,
    listener: crate::tls::server::Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(replica);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn ready(State(replica): State<Arc<Replica>>) -> impl IntoResponse {
    match (replica.leader(), replica.archive_refused()) {
        (None, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n".to_owned()),
        (Some(_), Some(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: refusing to archive: {why}\n")),
        (Some(_), None) => match replica.archive_backlog_problem() {
            Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {problem}\n")),
            None => (StatusCode::OK, "ready\n".to_owned()),
        },
    }
}

/// One metric in the Prometheus text format.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

async fn metrics(State(replica): State<Arc<Replica>>) -> impl IntoResponse {
    let mut out = String::new();
    let c = replica.consensus();
    let m = c.metrics();
    let g = |out: &mut String, name: &str, help: &str, v: f64| metric(out, name, "gauge", help, v);
    g(&mut out, "keepsake_raft_term", "Current Raft term.", m.current_term as f64);
    g(&mut out, "keepsake_raft_is_leader", "1 on the leader.", f64::from(m.current_leader == Some(replica.id())));
    g(&mut out, "keepsake_raft_last_log_index", "Last index in this node's log.", m.last_log_index.unwrap_or(0) as f64);
    g(&mut out, "keepsake_raft_committed_index", "Committed index this node knows.", c.committed_index() as f64);
    g(&mut out, "keepsake_raft_applied_index", "Last applied index.", m.last_applied.map_or(0, |l| l.index) as f64);
    g(
        &mut out,
        "keepsake_raft_snapshot_index",
        "Index of the newest Raft snapshot.",
        m.snapshot.map_or(0, |l| l.index) as f64,
    );
    let counter = |out: &mut String, name: &str, help: &str, v: f64| metric(out, name, "counter", help, v);
    counter(
        &mut out,
        "keepsake_read_index_lease_total",
        "Read-index confirmations this leader answered from its lease.",
        c.lease().answered.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    counter(
        &mut out,
        "keepsake_read_index_rounds_total",
        "Read-index confirmations this leader ran as a heartbeat round to a quorum.",
        c.read_rounds() as f64,
    );
    let point = c.reader().applied();
    g(&mut out, "keepsake_items", "Live items in the applied state.", point.items as f64);
    g(&mut out, "keepsake_revision", "Highest revision handed out.", point.revision as f64);

    let b = backup_status(&replica);
    g(&mut out, "keepsake_archive_uploading", "1 on the node that uploads (the leader).", f64::from(b.uploading));
    g(&mut out, "keepsake_archive_archived_index", "Last index in the archive.", b.archived_index.unwrap_or(0) as f64);
    g(&mut out, "keepsake_archive_lag_entries", "Committed entries not yet archived.", b.lag_entries as f64);
    g(&mut out, "keepsake_archive_lag_bytes", "Bytes of committed entries not yet archived.", b.lag_bytes as f64);
    g(&mut out, "keepsake_archive_lag_seconds", "Age of the oldest committed entry not yet archived.", b.lag_seconds);
    g(
        &mut out,
        "keepsake_archive_last_success_timestamp_seconds",
        "Unix time of the last successful upload.",
        b.last_success_unix_us as f64 / 1e6,
    );
    g(
        &mut out,
        "keepsake_archive_error",
        "1 while the last upload attempt failed.",
        f64::from(!b.last_error.is_empty()),
    );
    g(
        &mut out,
        "keepsake_archive_refused",
        "1 while the leader archives nothing: the archive root belongs to another history, or the store cannot \
         refuse an overwrite.",
        f64::from(!b.refused.is_empty()),
    );
    g(
        &mut out,
        "keepsake_archive_newest_snapshot_timestamp_seconds",
        "Unix time the newest archive snapshot was written (0: none).",
        b.newest_snapshot_unix_us as f64 / 1e6,
    );
    counter(
        &mut out,
        "keepsake_archive_scrubbed_bytes_total",
        "Archive chunk bytes this node's scrub re-read and checked.",
        b.scrubbed_bytes as f64,
    );
    counter(
        &mut out,
        "keepsake_archive_repaired_chunks_total",
        "Damaged archive chunks this node's scrub rewrote from its state.",
        b.repaired_chunks as f64,
    );
    g(
        &mut out,
        "keepsake_archive_damaged_chunks",
        "Archive chunks found damaged that this node could not rebuild.",
        b.damaged_chunks.len() as f64,
    );
    counter(
        &mut out,
        "keepsake_archive_uploaded_segments_total",
        "Segments this node uploaded.",
        b.segments_uploaded as f64,
    );
    counter(
        &mut out,
        "keepsake_archive_uploaded_bytes_total",
        "Segment bytes this node uploaded.",
        b.bytes_uploaded as f64,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
