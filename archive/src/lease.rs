//! Restore leases: `leases/<holder>.lease` marks an archive that a restore or drill is reading.
//!
//! Invariant: retention (in the node) deletes nothing while any lease is live, and a lease that
//! cannot be read counts as live. A reader renews its lease while it works and deletes it when
//! done; one it could not delete expires after `LEASE_DURATION`.

use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::envelope::Kind;
use crate::store::Archive;
use keepsake_raft::clock::now_us;

/// How long a lease holds without being renewed.
pub const LEASE_DURATION: Duration = Duration::from_secs(3600);

/// One lease object: who reads the archive, and until when.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    expires_us: i64,
}

/// A restore's or drill's hold on an archive; `release` deletes it.
pub struct LeaseGuard {
    archive: Archive,
    path: Path,
    holder: String,
}

impl LeaseGuard {
    /// Takes (or renews) a lease for `holder` lasting `LEASE_DURATION`.
    pub async fn take(archive: &Archive, holder: &str) -> Result<LeaseGuard, object_store::Error> {
        let guard = LeaseGuard {
            archive: archive.clone(),
            path: archive.path(&format!("leases/{holder}.lease")),
            holder: holder.into(),
        };
        guard.renew().await?;
        Ok(guard)
    }

    pub async fn renew(&self) -> Result<(), object_store::Error> {
        let lease = Lease { holder: self.holder.clone(), expires_us: now_us() + LEASE_DURATION.as_micros() as i64 };
        let body = self.archive.keys.seal(Kind::Lease, &serde_json::to_vec(&lease).expect("a lease encodes"));
        self.archive.store.put(&self.path, body.into()).await.map(|_| ())
    }

    pub async fn release(self) {
        if let Err(e) = self.archive.store.delete(&self.path).await {
            tracing::warn!(lease = %self.path, "cannot delete the lease (it expires on its own): {e}");
        }
    }
}

/// Whether any restore or drill holds a live lease on the archive.
pub async fn held(archive: &Archive) -> Result<bool, String> {
    let leases: Vec<_> = archive
        .store
        .list(Some(&archive.path("leases")))
        .try_collect()
        .await
        .map_err(|e| format!("listing leases: {e}"))?;
    for o in leases {
        let bytes = match archive.store.get(&o.location).await {
            Ok(got) => got.bytes().await.map_err(|e| format!("reading {}: {e}", o.location))?,
            Err(object_store::Error::NotFound { .. }) => continue, // released meanwhile
            Err(e) => return Err(format!("reading {}: {e}", o.location)),
        };
        // A lease that cannot be read holds, rather than being ignored.
        let lease = match archive.keys.open(Kind::Lease, o.location.as_ref(), &bytes) {
            Ok(opened) => serde_json::from_slice::<Lease>(&opened.bytes).ok(),
            Err(e) => {
                tracing::warn!("a lease that does not open holds retention until it is deleted: {e}");
                None
            }
        };
        let live = lease.is_none_or(|l| l.expires_us > now_us());
        if live {
            return Ok(true);
        }
    }
    Ok(false)
}
