//! The drivers for the systems Keepsake is compared with, built only with the `bench-compare`
//! feature (ops/bench/compare.sh turns it on) so the release binary carries no etcd or
//! PostgreSQL client.
//!
//! etcd through its v3 API (`etcd-client`: Put and linearizable Range); PostgreSQL through
//! `tokio-postgres` against a `kv(k text primary key, v bytea)` table (upsert and select on the
//! primary). Both store an item under one flat key, `user/collection/item`. Both speak TLS
//! (rustls on aws-lc-rs, as Keepsake does) when the benchmark is given their CA.

use std::time::Duration;

use super::target::{item_id, status_error, user_id, Connect, OpError, Target, COLLECTION};

pub enum Other {
    Etcd(Box<etcd_client::Client>),
    Postgres {
        client: tokio_postgres::Client,
        upsert: tokio_postgres::Statement,
        select: tokio_postgres::Statement,
        scan: tokio_postgres::Statement,
    },
}

/// The flat key etcd and PostgreSQL store an item under (Keepsake keeps the three parts).
fn flat_key(user: u64, item: u64) -> String {
    format!("{}/{COLLECTION}/{}", user_id(user), item_id(item))
}

fn flat_prefix(user: u64) -> String {
    format!("{}/{COLLECTION}/", user_id(user))
}

/// Connects to PostgreSQL: with TLS (rustls, verifying its certificate against `c.postgres_ca`)
/// when a CA is given, else as the connection string says without TLS.
async fn connect_postgres(c: &Connect) -> anyhow::Result<tokio_postgres::Client> {
    let conninfo = &c.postgres;
    let failed = |e: tokio_postgres::Error| anyhow::anyhow!("cannot connect to PostgreSQL ({conninfo}): {e}");
    let client = match &c.postgres_ca {
        None => {
            let (client, connection) =
                tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.map_err(failed)?;
            tokio::spawn(connection);
            client
        }
        Some(ca) => {
            let files =
                crate::tls::material::TlsFiles { ca: ca.clone(), cert: Default::default(), key: Default::default() };
            let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(files.roots().map_err(anyhow::Error::msg)?)
                .with_no_client_auth();
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            let (client, connection) = tokio_postgres::connect(conninfo, tls).await.map_err(failed)?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// Creates the table the workload uses, before any client connects.
pub async fn prepare_postgres(c: &Connect) -> anyhow::Result<()> {
    let client = connect_postgres(c).await?;
    client.batch_execute("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v bytea NOT NULL)").await?;
    Ok(())
}

impl Other {
    pub async fn connect(c: &Connect) -> anyhow::Result<Other> {
        match c.target {
            Target::Etcd => {
                let mut opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(c.timeout);
                if let Some(tls) = &c.tls {
                    opts = opts.with_tls(tls.clone());
                }
                let client = etcd_client::Client::connect(&c.endpoints, Some(opts))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to etcd at {}: {e}", c.endpoints.join(",")))?;
                Ok(Other::Etcd(Box::new(client)))
            }
            Target::Postgres => {
                let client = connect_postgres(c).await?;
                let upsert = client
                    .prepare("INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")
                    .await?;
                let select = client.prepare("SELECT v FROM kv WHERE k = $1").await?;
                let scan = client.prepare("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k").await?;
                Ok(Other::Postgres { client, upsert, select, scan })
            }
            Target::Keepsake => anyhow::bail!("Keepsake is driven by driver.rs"),
        }
    }

    /// Another client on the same connection: etcd's gRPC multiplexes calls; PostgreSQL cannot.
    pub fn share(&self) -> Option<Other> {
        match self {
            Other::Etcd(client) => Some(Other::Etcd(client.clone())),
            Other::Postgres { .. } => None,
        }
    }

    pub async fn put(&mut self, user: u64, item: u64, value: Vec<u8>) -> Result<(), OpError> {
        match self {
            Other::Etcd(client) => client.put(flat_key(user, item), value, None).await.map(drop).map_err(etcd_error),
            Other::Postgres { client, upsert, .. } => {
                client.execute(upsert, &[&flat_key(user, item), &value]).await.map(drop).map_err(pg_error)
            }
        }
    }

    pub async fn get(&mut self, user: u64, item: u64) -> Result<(), OpError> {
        match self {
            Other::Etcd(client) => client.get(flat_key(user, item), None).await.map(drop).map_err(etcd_error),
            Other::Postgres { client, select, .. } => {
                client.query_opt(select, &[&flat_key(user, item)]).await.map(drop).map_err(pg_error)
            }
        }
    }

    pub async fn resync(&mut self, user: u64) -> Result<u64, OpError> {
        match self {
            Other::Etcd(client) => {
                let opts = etcd_client::GetOptions::new().with_prefix();
                let resp = client.get(flat_prefix(user), Some(opts)).await.map_err(etcd_error)?;
                Ok(resp.kvs().len() as u64)
            }
            Other::Postgres { client, scan, .. } => {
                let from = flat_prefix(user);
                // '/' + 1 = '0': the first string after every key with this prefix.
                let to = format!("{}/{COLLECTION}0", user_id(user));
                let rows = client.query(scan, &[&from, &to]).await.map_err(pg_error)?;
                Ok(rows.len() as u64)
            }
        }
    }
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
