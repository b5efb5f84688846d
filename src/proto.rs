//! The generated gRPC code for the public API (`keepsake.v1`) and the peer transport
//! (`keepsake.raft.v1`). The archive's messages live in `keepsake_archive::proto`.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("keepsake.v1");
}

pub mod raft {
    tonic::include_proto!("keepsake.raft.v1");
}

/// For gRPC server reflection.
pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keepsake_descriptor");
