//! The system under test, how every client reaches it, and the names and errors every driver
//! shares: `driver.rs` drives Keepsake, `compare.rs` etcd and PostgreSQL, through the same
//! three operations.

use std::time::Duration;

use crate::proto::v1::Durability;

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

/// Why an operation failed: the group the report counts it under (a gRPC status code name, a
/// PostgreSQL SQLSTATE, or the kind of transport failure) and the server's message.
#[derive(Debug)]
pub struct OpError {
    pub code: String,
    pub message: String,
}

impl OpError {
    pub fn new(code: impl Into<String>, message: impl ToString) -> Self {
        OpError { code: code.into(), message: message.to_string() }
    }
}

/// Connection settings shared by all clients.
#[derive(Clone, Debug)]
pub struct Connect {
    pub target: Target,
    pub endpoints: Vec<String>,
    pub durability: Durability,
    pub timeout: Duration,
    /// libpq-style connection string (PostgreSQL only).
    #[cfg_attr(not(feature = "bench-compare"), allow(dead_code))]
    pub postgres: String,
    /// How Keepsake's nodes, or etcd's members, are reached (None: plaintext).
    pub tls: crate::cli::client::Tls,
    /// The CA PostgreSQL's certificate chains to, when it is reached with TLS.
    #[cfg_attr(not(feature = "bench-compare"), allow(dead_code))]
    pub postgres_ca: Option<std::path::PathBuf>,
}

pub fn status_error(s: tonic::Status) -> OpError {
    OpError::new(format!("{:?}", s.code()), s.message())
}
