//! One benchmark client's connection to the system under test, and the three operations every
//! workload is made of: put, linearizable get, and the resync of one user's collection.
//!
//! Every system is driven through the same calls, so the comparison measures the servers and
//! not three different clients: Keepsake through its gRPC Store API here, etcd and PostgreSQL
//! through `compare.rs` (only with the `bench-compare` feature). Each client owns one
//! connection, or shares one (`share`) where the protocol multiplexes calls (gRPC).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::target::{item_id, status_error, user_id, Connect, OpError, Target, COLLECTION};
use crate::proto::v1::store_client::StoreClient;
use crate::proto::v1::{ChangesRequest, Consistency, Durability, GetRequest, ItemKey, PutRequest};

pub enum Driver {
    Keepsake {
        store: StoreClient<Channel>,
        durability: Durability,
        timeout: Duration,
    },
    /// etcd or PostgreSQL, in a binary built with `--features bench-compare`.
    #[cfg(feature = "bench-compare")]
    Other(super::compare::Other),
}

impl Driver {
    pub async fn connect(c: &Connect, client_no: usize) -> anyhow::Result<Driver> {
        match c.target {
            Target::Keepsake => {
                // Spread clients over the endpoints given (the benchmark passes the leader alone
                // unless told otherwise); each client has its own HTTP/2 connection.
                let addr = &c.endpoints[client_no % c.endpoints.len()];
                let scheme = if c.tls.is_some() { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true);
                if let Some(tls) = &c.tls {
                    endpoint = endpoint.tls_config(tls.clone())?;
                }
                let channel = endpoint.connect().await.map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
                let store = StoreClient::new(channel).max_decoding_message_size(64 << 20);
                Ok(Driver::Keepsake { store, durability: c.durability, timeout: c.timeout })
            }
            other => connect_other(c, other).await,
        }
    }

    /// Another client on the same connection: gRPC targets multiplex calls over one HTTP/2
    /// connection; PostgreSQL cannot (None).
    pub fn share(&self) -> Option<Driver> {
        match self {
            Driver::Keepsake { store, durability, timeout } => {
                Some(Driver::Keepsake { store: store.clone(), durability: *durability, timeout: *timeout })
            }
            #[cfg(feature = "bench-compare")]
            Driver::Other(other) => other.share().map(Driver::Other),
        }
    }

    /// Creates what the workload needs before any client connects (PostgreSQL's table).
    pub async fn prepare_target(c: &Connect) -> anyhow::Result<()> {
        match c.target {
            #[cfg(feature = "bench-compare")]
            Target::Postgres => super::compare::prepare_postgres(c).await,
            _ => Ok(()),
        }
    }

    pub async fn put(&mut self, user: u64, item: u64, value: Vec<u8>) -> Result<(), OpError> {
        match self {
            Driver::Keepsake { store, durability, timeout } => {
                let mut req = tonic::Request::new(PutRequest {
                    key: Some(ItemKey {
                        user_id: user_id(user),
                        collection: COLLECTION.into(),
                        item_id: item_id(item),
                    }),
                    value,
                    content_type: String::new(),
                    if_revision: None,
                    durability: *durability as i32,
                });
                req.set_timeout(*timeout);
                store.put(req).await.map(drop).map_err(status_error)
            }
            #[cfg(feature = "bench-compare")]
            Driver::Other(other) => other.put(user, item, value).await,
        }
    }

    /// A linearizable read of one item; a missing item is not an error.
    pub async fn get(&mut self, user: u64, item: u64) -> Result<(), OpError> {
        match self {
            Driver::Keepsake { store, timeout, .. } => {
                let mut req = tonic::Request::new(GetRequest {
                    key: Some(ItemKey {
                        user_id: user_id(user),
                        collection: COLLECTION.into(),
                        item_id: item_id(item),
                    }),
                    consistency: Consistency::Linearizable as i32,
                });
                req.set_timeout(*timeout);
                match store.get(req).await {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                    Err(s) => Err(status_error(s)),
                }
            }
            #[cfg(feature = "bench-compare")]
            Driver::Other(other) => other.get(user, item).await,
        }
    }

    /// A device's full resync: every item of one user's collection, read to the end. Returns
    /// how many items came back.
    pub async fn resync(&mut self, user: u64) -> Result<u64, OpError> {
        match self {
            Driver::Keepsake { store, timeout, .. } => {
                let mut req = tonic::Request::new(ChangesRequest {
                    user_id: user_id(user),
                    since_revision: 0,
                    follow: false,
                    consistency: Consistency::Linearizable as i32,
                });
                req.set_timeout(*timeout);
                let mut stream = store.changes(req).await.map_err(status_error)?.into_inner();
                let mut n = 0;
                while let Some(change) = stream.message().await.map_err(status_error)? {
                    n += u64::from(!change.deleted);
                }
                Ok(n)
            }
            #[cfg(feature = "bench-compare")]
            Driver::Other(other) => other.resync(user).await,
        }
    }
}

#[cfg(feature = "bench-compare")]
async fn connect_other(c: &Connect, _: Target) -> anyhow::Result<Driver> {
    super::compare::Other::connect(c).await.map(Driver::Other)
}

#[cfg(not(feature = "bench-compare"))]
async fn connect_other(_: &Connect, target: Target) -> anyhow::Result<Driver> {
    let target = format!("{target:?}").to_lowercase();
    anyhow::bail!(
        "--target {target} needs a keepsake built with `--features bench-compare` (ops/bench/compare.sh builds \
         one); this one drives Keepsake only"
    )
}
