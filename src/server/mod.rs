//! The node's servers: Store, Admin, health and reflection (v1 and v1alpha, listing only what
//! the port serves) on the client port; the Raft transport on the peer port (`peer`); metrics
//! and health checks on the HTTP port (`http`).
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
    let descriptors = client_descriptors()?;
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_file_descriptor_set(descriptors.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
        CLIENT_SERVICES.iter().fold(builder, |b, name| b.with_service_name(*name))
    };
    // v1alpha too: what grpcio-reflection and older tools speak.
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let store = StoreServer::new(store::StoreService::new(replica.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(admin::AdminService::new(replica.clone()));
    Server::builder()
        .layer(auth)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(store)
        .add_service(admin)
        .serve_with_incoming_shutdown(crate::tls::server::incoming(accepted), shutdown)
        .await?;
    Ok(())
}

/// The services the client port serves, as reflection lists them.
pub const CLIENT_SERVICES: [&str; 5] = [
    "keepsake.v1.Store",
    "keepsake.v1.Admin",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The public API's file descriptors: every file of the build's set but the peer transport's,
/// which the client port does not serve.
fn client_descriptors() -> anyhow::Result<prost_types::FileDescriptorSet> {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(crate::proto::DESCRIPTOR_SET)?;
    set.file.retain(|f| f.package() != "keepsake.raft.v1");
    Ok(set)
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
