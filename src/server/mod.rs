//! The node's servers: Store, Admin, health and reflection on the client port; the Raft
//! transport on the peer port (`peer`); metrics and health checks on the HTTP port (`http`).
//!
//! Every request on the client port passes `auth` (a tower layer in front of every service)
//! before it reaches a handler.

pub mod admin;
pub mod auth;
pub mod deadline;
pub mod http;
pub mod peer;
pub mod status;
pub mod store;
pub mod tokens;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::Server;

use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::store_server::StoreServer;
use crate::replica::Replica;

pub async fn serve_clients(
    replica: Arc<Replica>,
    accepted: tokio::sync::mpsc::Receiver<crate::tls::server::Conn>,
    auth: auth::AuthLayer,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let max = replica.config().limits.max_message_bytes();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StoreServer<store::StoreService>>().await;
    health.set_serving::<AdminServer<admin::AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let store = StoreServer::new(store::StoreService::new(replica.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(admin::AdminService::new(replica.clone()));
    Server::builder()
        .layer(auth)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(store)
        .add_service(admin)
        .serve_with_incoming_shutdown(crate::tls::server::incoming(accepted), shutdown)
        .await?;
    Ok(())
}

pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let parsed: SocketAddr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("address {addr} does not resolve"))?;
    tokio::net::TcpListener::bind(parsed)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e} (is another process using the port?)"))
}
