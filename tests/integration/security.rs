//! TLS on every port, with real processes: what a client without TLS, without the CA, or
//! with the wrong certificate gets on each port, and certificates rotating under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepsake::proto::raft::raft_transport_client::RaftTransportClient;
use keepsake::proto::raft::CapabilitiesRequest;
use keepsake::proto::v1::store_client::StoreClient;
use keepsake::proto::v1::{GetRequest, PutRequest};
use keepsake::tls::certs;
use keepsake::tls::client::ClientFiles;
use tonic::transport::Endpoint;

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
    let stranger = ask_peer_port(&addr, &ca, Some(certs::node_pair(certs_dir(), 9))).await.expect_err("served");
    assert!(stranger.contains("node 9 is not a member"), "{stranger}");
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
