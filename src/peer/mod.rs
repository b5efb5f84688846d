//! The peer transport: how nodes talk to each other (Raft RPCs, forwarded writes, read-index).
//!
//! `client` is openraft's network (one lazily connected channel per peer), through which
//! `replica` also forwards writes and read-index requests; `server::peer` answers peers.
//! Payloads are openraft's own messages, postcard-encoded.

pub mod client;

/// Decodes a peer payload, naming what failed.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, tonic::Status> {
    postcard::from_bytes(bytes).map_err(|e| tonic::Status::invalid_argument(format!("malformed {what} payload: {e}")))
}

pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding into a Vec cannot fail")
}
