//! openraft's network over the peer transport, plus the two calls a follower makes to the
//! leader for clients (forwarding a write, asking for a read index), the leader transfer's
//! TimeoutNow, and asking a peer what its build can read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keepsake_raft::lease::Acks;
use keepsake_raft::{Node, NodeId, TypeConfig, Write, WriteOutcome};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::{decode, encode};
use crate::proto::raft::raft_transport_client::RaftTransportClient;
use crate::proto::raft::{CapabilitiesRequest, ProposeRequest, RaftMessage, ReadIndexRequest, TimeoutNowRequest};
use crate::tls::client::PeerTls;

/// One channel per peer address, shared by openraft's replication and client forwarding.
#[derive(Clone, Default)]
pub struct Peers {
    /// Each channel with the TLS generation it was made in.
    channels: Arc<Mutex<HashMap<String, (u64, Channel)>>>,
    /// Which AppendEntries each peer accepted, and when they were sent: the leader's lease.
    pub acks: Arc<Acks>,
    max_message_bytes: usize,
    /// Where outgoing connections come from; None: the OS chooses.
    source_ip: Option<IpAddr>,
    /// This node's certificate and the cluster's CA; None: plaintext (insecure mode).
    tls: Option<Arc<PeerTls>>,
}

impl Peers {
    pub fn new(max_message_bytes: usize, source_ip: Option<IpAddr>, tls: Option<Arc<PeerTls>>) -> Self {
        Peers { channels: Arc::default(), acks: Arc::default(), max_message_bytes, source_ip, tls }
    }

    /// This node's TLS settings as a client of another node (None: insecure mode).
    pub fn tls_config(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.tls.as_ref().map(|t| t.config().1)
    }

    pub fn client(&self, addr: &str) -> Result<RaftTransportClient<Channel>, tonic::Status> {
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        let mut channels = self.channels.lock().expect("peer channel map is never poisoned");
        let channel = match channels.get(addr) {
            Some((made_in, c)) if *made_in == generation => c.clone(),
            _ => {
                // Built only when a channel is made: not on every RPC.
                let tls = self.tls.as_ref().map(|t| t.config());
                let made_in = tls.as_ref().map_or(0, |(g, _)| *g);
                let scheme = if tls.is_some() { "https" } else { "http" };
                let bad = |e: tonic::transport::Error| tonic::Status::internal(format!("bad peer address {addr}: {e}"));
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(bad)?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .local_address(self.source_ip)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                if let Some((_, config)) = tls {
                    endpoint = endpoint.tls_config(config).map_err(bad)?;
                }
                let c = endpoint.connect_lazy();
                channels.insert(addr.to_owned(), (made_in, c.clone()));
                c
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// Forwards a client's write to the leader; returns (log index, proposed at, outcome).
    pub async fn propose(
        &self,
        leader_addr: &str,
        write: &Write,
        archived: bool,
        timeout: Duration,
    ) -> Result<(u64, i64, WriteOutcome), tonic::Status> {
        let mut req = tonic::Request::new(ProposeRequest { write: encode(write), archived });
        req.set_timeout(timeout);
        let resp = self.client(leader_addr)?.propose(req).await?.into_inner();
        Ok((resp.log_index, resp.proposed_at_us, decode(&resp.outcome, "write outcome")?))
    }

    /// Asks the leader which index a linearizable read must wait for.
    pub async fn read_index(&self, leader_addr: &str, timeout: Duration) -> Result<u64, tonic::Status> {
        let mut req = tonic::Request::new(ReadIndexRequest {});
        req.set_timeout(timeout);
        Ok(self.client(leader_addr)?.read_index(req).await?.into_inner().index)
    }

    /// Tells a peer to start an election now (leader transfer by the leader `from` of `term`).
    pub async fn timeout_now(
        &self,
        addr: &str,
        from: NodeId,
        term: u64,
        timeout: Duration,
    ) -> Result<(), tonic::Status> {
        let mut req = tonic::Request::new(TimeoutNowRequest { from_node_id: from, term });
        req.set_timeout(timeout);
        self.client(addr)?.timeout_now(req).await.map(|_| ())
    }

    /// The digest formats the peer at `addr` can sum (UNIMPLEMENTED: a build older than formats).
    pub async fn digest_formats(&self, addr: &str, timeout: Duration) -> Result<Vec<u32>, tonic::Status> {
        let mut req = tonic::Request::new(CapabilitiesRequest {});
        req.set_timeout(timeout);
        Ok(self.client(addr)?.capabilities(req).await?.into_inner().digest_formats)
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        PeerLink { target, addr: node.peer_addr.clone(), peers: self.clone() }
    }
}

/// openraft's connection to one peer.
pub struct PeerLink {
    target: NodeId,
    addr: String,
    peers: Peers,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerLink {
    /// Sends one Raft RPC; the peer answers with a postcard `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(&self, method: &'static str, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let unreachable = |e: &dyn std::error::Error| RPCError::Unreachable(Unreachable::new(&AnyErr(e.to_string())));
        let mut client = self.peers.client(&self.addr).map_err(|e| unreachable(&e))?;
        let mut request = tonic::Request::new(RaftMessage { payload: encode(req) });
        request.set_timeout(option.hard_ttl());
        let resp = match method {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => return Err(unreachable(&status)),
            Err(status) => return Err(RPCError::Network(NetworkError::new(&status))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&resp.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

#[derive(Debug)]
struct AnyErr(String);
impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for AnyErr {}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let (vote, sent) = (rpc.vote, std::time::Instant::now());
        let resp = self.call("append", &rpc, &option).await;
        if matches!(resp, Ok(ref r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.peers.acks.record(self.target, vote, sent);
        }
        resp
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call("vote", &rpc, &option).await
    }
}
