//! The integration-test harness, shared by tests/integration and tests/fault: a `Cluster` of
//! real `keepsake serve` processes (`cluster`), their ports (`ports`), the `keepsake` command
//! line (`cli`), gRPC helpers bounded in time (`rpc`), plain HTTP (`http`), the test CA and
//! certificates (`tls`), archive key rings (`keys`), signals and locks (`os`) and an
//! S3-compatible server (`s3`). Every call made here carries a gRPC deadline and a local
//! timeout, so a broken cluster fails the test instead of hanging it.

#![allow(dead_code)]

mod cli;
mod cluster;
mod http;
mod keys;
mod os;
mod ports;
mod rpc;
mod s3;
mod tls;

/// Items a cluster holds besides its users' own: the history record (keepsake_raft::history),
/// which the first leader writes. Item counts and digests include it.
pub const SYSTEM_ITEMS: u64 = 1;

// Each test binary uses only some of these names (and of the items: hence `dead_code` above).
#[allow(unused_imports)]
pub use cli::{
    archive_cli, cluster_cli, json_line, keepsake_cli, keepsake_cli_crashing_at, restore_args, restore_cli, verify_cli,
};
#[allow(unused_imports)]
pub use cluster::{peer_source_ip, Cluster, ClusterBuilder};
#[allow(unused_imports)]
pub use http::{http_request, metric};
#[allow(unused_imports)]
pub use keys::{key_entry, write_key_file};
#[allow(unused_imports)]
pub use rpc::{
    bounded, bounded_for, check_items, connect, delete, eventually, get, get_with, item_id, key, list_all, put, put_if,
    request, value_of, within, write_items, RPC_TIMEOUT,
};
#[allow(unused_imports)]
pub use s3::{S3Server, S3_ENV};
#[allow(unused_imports)]
pub use tls::{
    certs_dir, client_pair, client_tls, der_of, handshaken, https_request, rotate_node_files, served_certificate,
    GATEWAY_TENANT,
};
