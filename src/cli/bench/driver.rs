//! One benchmark client's connection to the system under test, and the three operations every
//! workload is made of: put, linearizable get, and the resync of one user's collection.
//!
//! Every system is driven through the same calls, so the comparison measures the servers and
//! not three different clients: Keepsake through its gRPC Store API, etcd through its v3 API
//! (`etcd-client`: Put and linearizable Range), PostgreSQL through `tokio-postgres` against a
//! `kv(k text primary key, v bytea)` table (upsert and select on the primary). Each client owns
//! one connection, or shares one (`share`) where the protocol multiplexes calls (gRPC).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::proto::v1::store_client::StoreClient;
use crate::proto::v1::{ChangesRequest, Consistency, Durability, GetRequest, ItemKey, PutRequest};

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Keepsake,
    Etcd,
    Postgres,
}

/// The collection every benchmark item lives in.
pub const COLLECTION: &str = "bench";

pub fn user_id(user: u64) -> String {
    format!("u{user:07}")
}

pub fn item_id(item: u64) -> String {
    format!("i{item:07}")
}

/// The flat key etcd and PostgreSQL store an item under (Keepsake keeps the three parts).
fn flat_key(user: u64, item: u64) -> String {
    format!("{}/{COLLECTION}/{}", user_id(user), item_id(item))
}

fn flat_prefix(user: u64) -> String {
    format!("{}/{COLLECTION}/", user_id(user))
}

/// Why an operation failed: the group the report counts it under (a gRPC status code name, a
/// PostgreSQL SQLSTATE, or the kind of transport failure) and the server's message.
#[derive(Debug)]
pub struct OpError {
    pub code: String,
    pub message: String,
}

impl OpError {
    fn new(code: impl Into<String>, message: impl ToString) -> Self {
        OpError { code: code.into(), message: message.to_string() }
    }
}

pub enum Driver {
    Keepsake {
        store: StoreClient<Channel>,
        durability: Durability,
        timeout: Duration,
    },
    Etcd {
        client: Box<etcd_client::Client>,
    },
    Postgres {
        client: tokio_postgres::Client,
        upsert: tokio_postgres::Statement,
        select: tokio_postgres::Statement,
        scan: tokio_postgres::Statement,
    },
}

/// Connection settings shared by all clients.
#[derive(Clone, Debug)]
pub struct Connect {
    pub target: Target,
    pub endpoints: Vec<String>,
    pub durability: Durability,
    pub timeout: Duration,
    /// libpq-style connection string (PostgreSQL only).
    pub postgres: String,
}

impl Driver {
    pub async fn connect(c: &Connect, client_no: usize) -> anyhow::Result<Driver> {
        match c.target {
            Target::Keepsake => {
                // Spread clients over the endpoints given (the benchmark passes the leader alone
                // unless told otherwise); each client has its own HTTP/2 connection.
                let addr = &c.endpoints[client_no % c.endpoints.len()];
                let channel = Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
                let store = StoreClient::new(channel).max_decoding_message_size(64 << 20);
                Ok(Driver::Keepsake { store, durability: c.durability, timeout: c.timeout })
            }
            Target::Etcd => {
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(c.timeout);
                let client = etcd_client::Client::connect(&c.endpoints, Some(opts))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to etcd at {}: {e}", c.endpoints.join(",")))?;
                Ok(Driver::Etcd { client: Box::new(client) })
            }
            Target::Postgres => {
                let (client, connection) = tokio_postgres::connect(&c.postgres, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL ({}): {e}", c.postgres))?;
                tokio::spawn(connection);
                let upsert = client
                    .prepare("INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")
                    .await?;
                let select = client.prepare("SELECT v FROM kv WHERE k = $1").await?;
                let scan = client.prepare("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k").await?;
                Ok(Driver::Postgres { client, upsert, select, scan })
            }
        }
    }

    /// Another client on the same connection: gRPC targets multiplex calls over one HTTP/2
    /// connection; PostgreSQL cannot (None).
    pub fn share(&self) -> Option<Driver> {
        match self {
            Driver::Keepsake { store, durability, timeout } => {
                Some(Driver::Keepsake { store: store.clone(), durability: *durability, timeout: *timeout })
            }
            Driver::Etcd { client } => Some(Driver::Etcd { client: client.clone() }),
            Driver::Postgres { .. } => None,
        }
    }

    /// Creates what the workload needs before any client connects (PostgreSQL's table).
    pub async fn prepare_target(c: &Connect) -> anyhow::Result<()> {
        if c.target == Target::Postgres {
            let (client, connection) = tokio_postgres::connect(&c.postgres, tokio_postgres::NoTls)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL ({}): {e}", c.postgres))?;
            tokio::spawn(connection);
            client.batch_execute("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v bytea NOT NULL)").await?;
        }
        Ok(())
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
            Driver::Etcd { client } => {
                client.put(flat_key(user, item), value, None).await.map(drop).map_err(etcd_error)
            }
            Driver::Postgres { client, upsert, .. } => {
                client.execute(upsert, &[&flat_key(user, item), &value]).await.map(drop).map_err(pg_error)
            }
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
            Driver::Etcd { client } => client.get(flat_key(user, item), None).await.map(drop).map_err(etcd_error),
            Driver::Postgres { client, select, .. } => {
                client.query_opt(select, &[&flat_key(user, item)]).await.map(drop).map_err(pg_error)
            }
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
            Driver::Etcd { client } => {
                let opts = etcd_client::GetOptions::new().with_prefix();
                let resp = client.get(flat_prefix(user), Some(opts)).await.map_err(etcd_error)?;
                Ok(resp.kvs().len() as u64)
            }
            Driver::Postgres { client, scan, .. } => {
                let from = flat_prefix(user);
                // '/' + 1 = '0': the first string after every key with this prefix.
                let to = format!("{}/{COLLECTION}0", user_id(user));
                let rows = client.query(scan, &[&from, &to]).await.map_err(pg_error)?;
                Ok(rows.len() as u64)
            }
        }
    }
}

fn status_error(s: tonic::Status) -> OpError {
    OpError::new(format!("{:?}", s.code()), s.message())
}

fn etcd_error(e: etcd_client::Error) -> OpError {
    match e {
        etcd_client::Error::GRpcStatus(s) => status_error(s),
        etcd_client::Error::TransportError(t) => OpError::new("transport", t),
        other => OpError::new("etcd", other),
    }
}

fn pg_error(e: tokio_postgres::Error) -> OpError {
    match e.code() {
        Some(code) => OpError::new(format!("SQLSTATE {}", code.code()), &e),
        None if e.is_closed() => OpError::new("connection closed", &e),
        None => OpError::new("postgres", &e),
    }
}
