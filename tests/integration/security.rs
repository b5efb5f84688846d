//! TLS on every port, with real processes: what a client without TLS, without the CA, or
//! with the wrong certificate gets on each port, and certificates rotating under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepsake::proto::raft::raft_transport_client::RaftTransportClient;
use keepsake::proto::raft::CapabilitiesRequest;
use keepsake::proto::v1::admin_client::AdminClient;
use keepsake::proto::v1::store_client::StoreClient;
use keepsake::proto::v1::{
    AddLearnerRequest, ChangesRequest, ClusterStatusRequest, ExportUserRequest, GetRequest, ListRequest, PutRequest,
    RemoveNodeRequest,
};
use keepsake::tls::certs;
use keepsake::tls::client::ClientFiles;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::Code;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to `addr` over TLS, trusting `ca` and presenting `identity`.
async fn dial(
    addr: &str,
    ca: &std::path::Path,
    identity: Option<certs::Pair>,
) -> Result<tonic::transport::Channel, String> {
    let files = ClientFiles { ca: ca.to_path_buf(), identity: identity.map(|p| (p.cert, p.key)) };
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tls_config(files.tonic()?)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Asks the peer port at `addr` what it sums, as whoever `identity` names.
async fn ask_peer_port(addr: &str, ca: &std::path::Path, identity: Option<certs::Pair>) -> Result<Vec<u32>, String> {
    let channel = dial(addr, ca, identity).await?;
    let answer = RaftTransportClient::new(channel).capabilities(request(CapabilitiesRequest {}, RPC_TIMEOUT)).await;
    answer.map(|r| r.into_inner().digest_formats).map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_port_serves_tls_and_nothing_falls_back_to_plaintext() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    put(&mut cluster.store(leader), "u", "c", "i", b"over TLS").await.expect("a put over TLS");

    // Plaintext on the client port: no answer.
    let plain = Endpoint::from_shared(format!("http://{}", cluster.client_addr(leader))).unwrap().connect_lazy();
    let got = bounded(StoreClient::new(plain).get(request(GetRequest::default(), RPC_TIMEOUT))).await;
    assert!(got.is_err(), "a plaintext request was answered: {got:?}");
    // Plaintext on the HTTP port: no page; over TLS, one.
    let (code, _) = https_request(&cluster.http_addr(leader), "GET", "/healthz").expect("GET /healthz");
    assert_eq!(code, 200);
    assert!(http_request(&cluster.http_addr(leader), "GET", "/healthz").map_or(true, |(c, _)| c != 200));

    // The CLI trusts the CA in its certs directory; with none it refuses, and names the way out.
    let (code, text) = cluster_cli(&cluster, &["get", "--user", "u", "--collection", "c", "--id", "i"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("over TLS"), "{text}");
    let empty = tempfile::tempdir().unwrap();
    let no_ca = ["get", "--user", "u", "--collection", "c", "--id", "i", "--certs-dir"];
    let mut args: Vec<&str> = no_ca.to_vec();
    let dir = empty.path().display().to_string();
    args.push(&dir);
    let (code, text) = cluster_cli(&cluster, &args);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no CA to trust") && text.contains("--insecure"), "{text}");
    let mut args: Vec<&str> = no_ca[..no_ca.len() - 1].to_vec();
    args.extend(["--certs-dir", &dir, "--insecure", "--timeout", "2s"]);
    let (code, text) = cluster_cli(&cluster, &args);
    assert_ne!(code, 0, "plaintext to a TLS port got an answer: {text}");

    // A client certificate from another CA is refused in the handshake.
    let other = tempfile::tempdir().unwrap();
    certs::create_ca(other.path(), "another CA", 1).unwrap();
    let stranger = certs::create_client(
        other.path(),
        "stranger",
        &keepsake::tls::identity::Identity::Client { role: keepsake::tls::identity::Role::Operator, tenants: vec![] },
        1,
    )
    .unwrap();
    let ca = certs_dir().join(certs::CA_CERT);
    let refused = match dial(&cluster.client_addr(leader), &ca, Some(stranger)).await {
        Err(e) => e,
        Ok(channel) => {
            let got = StoreClient::new(channel).get(request(GetRequest::default(), RPC_TIMEOUT)).await;
            format!("{:?}", got.expect_err("a certificate of another CA was taken"))
        }
    };
    assert!(!refused.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_serves_only_member_certificates() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.peer_addr(leader);
    let ca = certs_dir().join(certs::CA_CERT);

    let member = ask_peer_port(&addr, &ca, Some(certs::node_pair(certs_dir(), 2))).await;
    assert!(member.is_ok_and(|formats| formats.contains(&2)), "a member is served");
    let client = ask_peer_port(&addr, &ca, Some(client_pair("operator"))).await.expect_err("a client was served");
    assert!(client.starts_with("PermissionDenied") && client.contains("names a client"), "{client}");
    // A node may speak only for itself: node 9 asking for node 1's vote is refused.
    let channel = dial(&addr, &ca, Some(certs::node_pair(certs_dir(), 9))).await.expect("a node certificate connects");
    let vote: openraft::raft::VoteRequest<u64> =
        openraft::raft::VoteRequest { vote: openraft::Vote::new(99, 1), last_log_id: None };
    let message = keepsake::proto::raft::RaftMessage { payload: keepsake::peer::encode(&vote) };
    let refused = RaftTransportClient::new(channel).vote(request(message, RPC_TIMEOUT)).await.expect_err("served");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("in the name of node 1"), "{refused:?}");
    // A node outside the membership can neither forward a write nor call Admin.
    let channel = dial(&addr, &ca, Some(certs::node_pair(certs_dir(), 9))).await.expect("connect");
    let write = keepsake_raft::Write {
        user_id: "u".into(),
        ops: vec![keepsake_raft::Op::Delete(keepsake_raft::DeleteOp {
            collection: "c".into(),
            item_id: "i".into(),
            if_revision: None,
        })],
    };
    let propose = keepsake::proto::raft::ProposeRequest { write: keepsake::peer::encode(&write), archived: false };
    let refused = RaftTransportClient::new(channel).propose(request(propose, RPC_TIMEOUT)).await.expect_err("served");
    assert!(refused.message().contains("node 9 is not a member"), "{refused:?}");
    let channel =
        dial(&cluster.client_addr(leader), &ca, Some(certs::node_pair(certs_dir(), 9))).await.expect("connect");
    let refused = AdminClient::new(channel).cluster_status(request(ClusterStatusRequest {}, RPC_TIMEOUT)).await;
    assert!(refused.expect_err("served").message().contains("node 9 is not a member"));
    let anonymous = ask_peer_port(&addr, &ca, None).await.expect_err("a client with no certificate was served");
    assert!(!anonymous.is_empty());
    let other = tempfile::tempdir().unwrap();
    certs::create_ca(other.path(), "another CA", 1).unwrap();
    let forged = certs::create_node(other.path(), 2, &["127.0.0.1".into()], 1).unwrap();
    let forged = ask_peer_port(&addr, &ca, Some(forged)).await.expect_err("another CA's node 2 was served");
    assert!(!forged.is_empty());
    // Raft went on throughout.
    put(&mut cluster.store(leader), "u", "c", "after", b"v").await.expect("a put");
}

/// Every node's certificate and key are replaced on disk while eight writers run: no request
/// fails, and each port serves the new certificate without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_while_writers_run_with_no_failed_request() {
    let cluster = Cluster::builder().own_certs().start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let (stop, written, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut store = cluster.store(leader);
            let (stop, written, failed) = (stop.clone(), written.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let req = PutRequest {
                        key: Some(key("rot", "c", &format!("w{w}-{i}"))),
                        value: vec![1; 64],
                        ..Default::default()
                    };
                    match bounded(store.put(request(req, RPC_TIMEOUT))).await {
                        Ok(_) => written.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("writer {w}: {e:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut fresh = Vec::new();
    for id in cluster.ids() {
        fresh.push((id, rotate_node_files(&cluster.node_tls_dir(id), id)));
    }
    // Reloaded within a second or two of the change; every port presents the new certificate.
    for (id, cert) in &fresh {
        for addr in [cluster.client_addr(*id), cluster.peer_addr(*id), cluster.http_addr(*id)] {
            let served = eventually(Duration::from_secs(10), || async {
                served_certificate(&addr).await.ok().filter(|c| c == cert)
            })
            .await;
            assert!(served.is_some(), "node {id} still serves its old certificate on {addr}");
        }
    }
    // New connections between peers and from clients work with the new files.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let (written, failed) = (written.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("{written} writes while rotating, {failed} failed");
    assert!(written > 100, "the writers wrote {written}: the test tests nothing");
    assert_eq!(failed, 0, "requests failed while the certificates rotated");
    cluster.kill(leader);
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
    let next = cluster.leader_among(&others, LEADER_TIMEOUT).await;
    put(&mut cluster.store(next), "rot", "c", "after-rotation", b"v").await.expect("a put through a new leader");
}

/// Adds a bearer token to every request.
#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ASCII"));
        }
        Ok(request)
    }
}

type As = InterceptedService<tonic::transport::Channel, Bearer>;

/// A channel to a client port as the test client certificate `name` (None: none), sending
/// `token` as a bearer token if given.
async fn channel_as(addr: &str, name: Option<&str>, token: Option<&str>) -> As {
    let ca = certs_dir().join(certs::CA_CERT);
    let channel = dial(addr, &ca, name.map(client_pair)).await.expect("connect");
    InterceptedService::new(channel, Bearer(token.map(str::to_owned)))
}

async fn put_as(
    store: &mut StoreClient<As>,
    user: &str,
    collection: &str,
    id: &str,
    value: &[u8],
) -> Result<(), tonic::Status> {
    let req = PutRequest { key: Some(key(user, collection, id)), value: value.to_vec(), ..Default::default() };
    bounded(store.put(request(req, RPC_TIMEOUT))).await.map(|_| ())
}

async fn get_as(store: &mut StoreClient<As>, user: &str, collection: &str, id: &str) -> Result<(), tonic::Status> {
    let req = GetRequest { key: Some(key(user, collection, id)), ..Default::default() };
    bounded(store.get(request(req, RPC_TIMEOUT))).await.map(|_| ())
}

fn code_and_message<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("the call was served");
    (status.code(), status.message().to_owned())
}

/// The services reflection lists, sorted, through its version `$v` (`v1`, or `v1alpha`: what
/// grpcio-reflection speaks); the two versions' messages are the same but for their package.
macro_rules! reflected_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let list = MessageRequest::ListServices(String::new());
        let ask = ServerReflectionRequest { message_request: Some(list), ..Default::default() };
        let mut client = ServerReflectionClient::new($channel);
        let info = client.server_reflection_info(request(tokio_stream::iter([ask]), RPC_TIMEOUT));
        let mut answers = bounded(info).await.expect("reflection answers");
        let answer = within(RPC_TIMEOUT, answers.message()).await.expect("an answer").expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("reflection did not list services: {answer:?}")
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_with_no_credentials_gets_unauthenticated_and_health_and_reflection_stay_open() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let anonymous = channel_as(&cluster.client_addr(leader), None, None).await;
    let get = GetRequest { key: Some(key("u", "c", "i")), ..Default::default() };
    let (code, message) = code_and_message(StoreClient::new(anonymous.clone()).get(request(get, RPC_TIMEOUT)).await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("client certificate") && message.contains("bearer token"), "{message}");
    let status =
        AdminClient::new(anonymous.clone()).cluster_status(request(ClusterStatusRequest {}, RPC_TIMEOUT)).await;
    assert_eq!(status.expect_err("served").code(), Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(anonymous.clone());
    let served =
        health.check(request(tonic_health::pb::HealthCheckRequest { service: String::new() }, RPC_TIMEOUT)).await;
    assert!(served.is_ok(), "health is open to any TLS client: {served:?}");
    // Reflection, v1 and v1alpha, lists exactly the services this port serves.
    let mut expected: Vec<String> = keepsake::server::CLIENT_SERVICES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(reflected_services!(v1, anonymous.clone()), expected, "reflection v1");
    assert_eq!(reflected_services!(v1alpha, anonymous), expected, "reflection v1alpha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_reach_their_methods_and_a_gateway_its_tenants_only() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.client_addr(leader);
    let (gateway, reader) =
        (channel_as(&addr, Some("gateway"), None).await, channel_as(&addr, Some("reader"), None).await);
    let ours = format!("{GATEWAY_TENANT}alice");

    // A gateway may not change the membership, and the refusal is in the audit log.
    let mut admin = AdminClient::new(gateway.clone());
    let add = AddLearnerRequest { node_id: 7, client_addr: "127.0.0.1:1".into(), peer_addr: "127.0.0.1:1".into() };
    let (code, message) = code_and_message(admin.add_learner(request(add, RPC_TIMEOUT)).await);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("needs an operator"), "{message}");
    let (code, _) = code_and_message(admin.remove_node(request(RemoveNodeRequest { node_id: 2 }, RPC_TIMEOUT)).await);
    assert_eq!(code, Code::PermissionDenied);
    let log = cluster.log_tail(leader, 200);
    assert!(
        log.contains("keepsake::audit") && log.contains("/keepsake.v1.Admin/AddLearner") && log.contains("denied"),
        "no audit line for the refused AddLearner: {log}"
    );

    // Its own tenant's users: every Store call works.
    let mut store = StoreClient::new(gateway.clone());
    put_as(&mut store, &ours, "contacts", "bob", b"secret-value-7f3a").await.expect("a put for its tenant");
    get_as(&mut store, &ours, "contacts", "bob").await.expect("a get for its tenant");
    // Another tenant's: Get, List, Export, Changes and writes are refused.
    let theirs = "globex:carol";
    let refused = [
        code_and_message(
            store
                .get(request(GetRequest { key: Some(key(theirs, "c", "i")), ..Default::default() }, RPC_TIMEOUT))
                .await,
        ),
        code_and_message(
            store
                .list(request(
                    ListRequest { user_id: theirs.into(), collection: "c".into(), ..Default::default() },
                    RPC_TIMEOUT,
                ))
                .await,
        ),
        code_and_message(
            store
                .export_user(request(ExportUserRequest { user_id: theirs.into(), ..Default::default() }, RPC_TIMEOUT))
                .await,
        ),
        code_and_message(
            store.changes(request(ChangesRequest { user_id: theirs.into(), ..Default::default() }, RPC_TIMEOUT)).await,
        ),
        code_and_message(
            store
                .put(request(
                    PutRequest { key: Some(key(theirs, "c", "i")), value: b"v".to_vec(), ..Default::default() },
                    RPC_TIMEOUT,
                ))
                .await,
        ),
    ];
    for (code, message) in refused {
        assert_eq!(code, Code::PermissionDenied, "{message}");
        assert!(message.contains(GATEWAY_TENANT), "the refusal names the tenants: {message}");
    }

    // A reader reads any user and writes nothing.
    let mut store = StoreClient::new(reader);
    get_as(&mut store, &ours, "contacts", "bob").await.expect("a reader's get");
    let (code, message) = code_and_message(put_as(&mut store, &ours, "contacts", "x", b"v").await);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    // No value is ever logged.
    for id in cluster.ids() {
        assert!(!cluster.log_tail(id, 5000).contains("secret-value-7f3a"), "node {id} logged a value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_tokens_identify_clients_and_are_added_and_revoked_without_a_restart() {
    use keepsake::server::tokens;
    use keepsake::tls::identity::Role;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let gateway = tokens::create(&file, "gw-eu1", Role::Gateway, vec![GATEWAY_TENANT.into()]).unwrap();
    let cluster = Cluster::builder().tokens_file(&file).start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.client_addr(leader);
    let ours = format!("{GATEWAY_TENANT}dave");

    let mut store = StoreClient::new(channel_as(&addr, None, Some(&gateway)).await);
    put_as(&mut store, &ours, "c", "i", b"v").await.expect("a put with a gateway token");
    let (code, _) = code_and_message(put_as(&mut store, "globex:erin", "c", "i", b"v").await);
    assert_eq!(code, Code::PermissionDenied, "the token's tenants apply");
    let mut wrong = StoreClient::new(channel_as(&addr, None, Some("kst_not-a-token")).await);
    let (code, message) = code_and_message(get_as(&mut wrong, &ours, "c", "i").await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("not known"), "{message}");

    // Added while the cluster runs: usable within seconds. Revoked: refused within seconds.
    let operator = tokens::create(&file, "ops", Role::Operator, vec![]).unwrap();
    let mut admin = AdminClient::new(channel_as(&addr, None, Some(&operator)).await);
    let accepted = eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move { admin.cluster_status(request(ClusterStatusRequest {}, RPC_TIMEOUT)).await.ok() }
    })
    .await;
    assert!(accepted.is_some(), "a token added to the file was not accepted");
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: String =
        text.split("[[token]]").filter(|entry| !entry.contains("\"ops\"")).collect::<Vec<_>>().join("[[token]]");
    std::fs::write(dir.path().join("next.toml"), kept).unwrap();
    std::fs::rename(dir.path().join("next.toml"), &file).unwrap();
    let revoked = eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let r = admin.cluster_status(request(ClusterStatusRequest {}, RPC_TIMEOUT)).await;
            r.err().filter(|s| s.code() == Code::Unauthenticated)
        }
    })
    .await;
    assert!(revoked.is_some(), "a token removed from the file was still accepted");
    let _ = admin.cluster_status(request(ClusterStatusRequest {}, RPC_TIMEOUT)).await;

    // Neither token appears in any log; the audit lines name the holder.
    for id in cluster.ids() {
        let log = cluster.log_tail(id, 5000);
        assert!(!log.contains(&gateway) && !log.contains(&operator), "node {id} logged a token");
    }
    assert!(cluster.log_tail(leader, 5000).contains("token gw-eu1"), "the audit line names the token's holder");
}
