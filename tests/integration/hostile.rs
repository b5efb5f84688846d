//! Hostile and careless clients against a live 3-node cluster: bytes that are not protobuf,
//! messages over the size limits, thousands of idle connections, a thousand open `Changes`
//! follow streams. Each bad request gets a clear status; the node keeps serving everyone else,
//! its memory stays bounded, and what the clients leave behind is released.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use keepsake::proto::raft::raft_transport_client::RaftTransportClient;
use keepsake::proto::raft::RaftMessage;
use keepsake::proto::v1::{ChangesRequest, PutRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

use crate::common::{handshaken, key, request, Cluster};

/// A codec that sends whatever bytes it is given, protobuf or not.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` on the node's client port with `body` as the request message.
async fn raw_call(cluster: &Cluster, id: u64, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(cluster.channel(id)).max_decoding_message_size(64 << 20);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(request(body, Duration::from_secs(5)), path, Raw).await.map(|r| r.into_inner())
}

/// A put and a linearizable get through `id` both work, within `limit`.
async fn still_serves(cluster: &Cluster, id: u64, name: &str, limit: Duration) {
    let started = Instant::now();
    let mut store = cluster.store(id);
    crate::common::put(&mut store, "bystander", "c", name, "fine")
        .await
        .unwrap_or_else(|e| panic!("a well-behaved put failed ({name}): {e}"));
    let item = crate::common::get(&mut store, "bystander", "c", name)
        .await
        .unwrap_or_else(|e| panic!("a get failed ({name}): {e}"));
    assert_eq!(item.value, b"fine");
    assert!(started.elapsed() < limit, "serving a bystander took {:?} ({name})", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_protobuf_get_a_clear_status_and_the_node_serves_on() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let garbage: [&[u8]; 4] =
        [&[0xff; 16], &[0x0a, 0x7f], &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f], b"not protobuf at all"];
    for path in
        ["/keepsake.v1.Store/Put", "/keepsake.v1.Store/Get", "/keepsake.v1.Store/Batch", "/keepsake.v1.Admin/Digest"]
    {
        for bytes in garbage {
            let status = raw_call(&cluster, leader, path, bytes.to_vec()).await.expect_err("garbage was accepted");
            // gRPC's convention (grpc-go and tonic alike) for a request that does not parse.
            assert_eq!(status.code(), Code::Internal, "{path} {bytes:02x?}: {status:?}");
            assert!(status.message().contains("decode"), "{path}: the status does not say what is wrong: {status:?}");
        }
    }
    // Valid protobuf that breaks the rules: unknown enum values, ids with control characters.
    let put = PutRequest { key: Some(key("u\u{1}", "c", "i")), durability: 9, ..Default::default() };
    let status = cluster.store(leader).put(request(put, Duration::from_secs(5))).await.expect_err("accepted");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("U+0001"), "{status:?}");
    // The peer port, as a member (a node's certificate) whose messages are garbage: a payload
    // that is not a Raft message is refused with a status that names it, and Raft goes on.
    let member = keepsake::tls::certs::node_pair(crate::common::certs_dir(), leader);
    let tls = keepsake::tls::client::ClientFiles {
        ca: crate::common::certs_dir().join(keepsake::tls::certs::CA_CERT),
        identity: Some((member.cert, member.key)),
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.peer_addr(leader)))
        .expect("an endpoint")
        .tls_config(tls.tonic().expect("TLS settings"))
        .expect("TLS applies")
        .connect()
        .await
        .expect("connect");
    let mut peer = RaftTransportClient::new(channel);
    for rpc in 0..3 {
        let msg = RaftMessage { payload: vec![0xff; 40] };
        let status = match rpc {
            0 => peer.append_entries(request(msg, Duration::from_secs(5))).await,
            1 => peer.vote(request(msg, Duration::from_secs(5))).await,
            _ => peer.install_snapshot(request(msg, Duration::from_secs(5))).await,
        }
        .expect_err("a malformed Raft message was accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("malformed"), "{status:?}");
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    still_serves(&cluster, leader, "after-garbage", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_without_being_buffered() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    // Over the value limit (4 MiB) but within the message limit: the validation says so.
    let put = PutRequest { key: Some(key("u", "c", "big")), value: vec![7; (4 << 20) + 1], ..Default::default() };
    let status = cluster.store(leader).put(request(put, Duration::from_secs(10))).await.expect_err("accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("over the limit of 4194304 bytes"), "{status:?}");
    // Far over the message limit, ten times: refused from the length prefix, not buffered.
    let before = cluster.rss_bytes(leader).expect("rss");
    for _ in 0..10 {
        let status = raw_call(&cluster, leader, "/keepsake.v1.Store/Put", vec![0x0a; 48 << 20])
            .await
            .expect_err("a 48 MiB message was accepted");
        assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
        assert!(status.message().contains("too large"), "the status does not say what is wrong: {status:?}");
    }
    let grown = cluster.rss_bytes(leader).expect("rss").saturating_sub(before);
    assert!(grown < 96 << 20, "refusing 480 MiB of oversized messages grew the node by {} MiB", grown >> 20);
    still_serves(&cluster, leader, "after-oversized", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_after_its_handshake_is_closed_within_seconds() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let silent = |addr: String| async move {
        let mut tls = handshaken(&addr).await.expect("a TLS handshake");
        let began = std::time::Instant::now();
        // Never sends the HTTP/2 preface (or an HTTP/1 request): reads what the node sends (its
        // HTTP/2 settings) until it hangs up.
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "{addr}: the silent connection is still open after 30 s (the node sent {} bytes)",
            got.len()
        );
        began.elapsed()
    };
    let (client, http) = tokio::join!(silent(cluster.client_addr(leader)), silent(cluster.http_addr(leader)));
    for (port, held) in [("client", client), ("http", http)] {
        println!("the {port} port closed a silent connection after {held:?}");
        assert!(held >= Duration::from_secs(9), "the {port} port closed a connection that was only quiet for {held:?}");
        assert!(held <= Duration::from_secs(15), "the {port} port held a silent connection for {held:?}");
    }
    still_serves(&cluster, leader, "after-silence", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_neither_stop_the_node_nor_stay_behind() {
    const IDLE: usize = 3000;
    // The test and the nodes it starts (which inherit the limit) each hold IDLE descriptors.
    raise_open_file_limit(IDLE as u64 + 1000);
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    still_serves(&cluster, leader, "warm-up", Duration::from_secs(2)).await;
    let (rss, fds) = (cluster.rss_bytes(leader).expect("rss"), cluster.open_fds(leader).expect("fds"));
    // A third send nothing, a third the start of a TLS record that never ends, a third half an
    // HTTP/1 request.
    let mut idle = Vec::with_capacity(IDLE);
    for n in 0..IDLE {
        // From 127.0.0.2: thousands of ephemeral ports on 127.0.0.1 could take one that a
        // test running beside this one has picked for a node to listen on.
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind("127.0.0.2:0".parse().unwrap()).expect("bind 127.0.0.2");
        let addr = cluster.client_addr(leader).parse().expect("a socket address");
        let mut s = socket.connect(addr).await.expect("connect");
        match n % 3 {
            0 => {}
            // A handshake record header announcing 512 bytes, then nothing.
            1 => s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.expect("send a record header"),
            _ => s.write_all(b"POST /keepsake.v1.Store/Put HTTP/1.1\r\nHost: x\r\n").await.expect("send half"),
        }
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    still_serves(&cluster, leader, "among-idle", Duration::from_secs(2)).await;
    // The node closes what is not TLS at once, and what is over the address's cap.
    for (n, s) in idle.iter_mut().enumerate().filter(|(n, _)| n % 3 == 2) {
        // (It answers with a TLS alert first.)
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "HTTP/1 connection {n} was not closed (it sent {buf:02x?})");
    }
    // One address has at most 32 handshakes under way: the rest were closed at once.
    let held = cluster.open_fds(leader).expect("fds").saturating_sub(fds);
    assert!(held >= 24, "the node holds only {held} idle connections: the test tests nothing");
    assert!(held <= 32 + 16, "the node holds {held} unfinished handshakes from one address, over its cap of 32");
    let grown = cluster.rss_bytes(leader).expect("rss").saturating_sub(rss);
    eprintln!("{IDLE} idle connections: the node holds {held} more descriptors, RSS grew by {} KiB", grown >> 10);
    assert!(grown < 128 << 20, "{IDLE} idle connections grew the node by {} MiB", grown >> 20);
    // A handshake not done in 10 s is dropped, whether or not the client goes.
    let dropped = crate::common::eventually(Duration::from_secs(20), || async {
        (cluster.open_fds(leader).expect("fds") <= fds + 8).then_some(())
    })
    .await;
    assert!(dropped.is_some(), "unfinished handshakes hold {} descriptors", cluster.open_fds(leader).unwrap() - fds);
    drop(idle);
    // Their descriptors are released once the clients go.
    let released = crate::common::eventually(Duration::from_secs(10), || async {
        (cluster.open_fds(leader).expect("fds") <= fds + 50).then_some(())
    })
    .await;
    assert!(released.is_some(), "closed connections left {} descriptors open", cluster.open_fds(leader).unwrap() - fds);
    still_serves(&cluster, leader, "after-idle", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_follow_streams_each_see_their_users_writes_and_memory_stays_bounded() {
    const STREAMS: usize = 1000;
    const USERS: usize = 50;
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    still_serves(&cluster, leader, "warm-up", Duration::from_secs(2)).await;
    let rss = cluster.rss_bytes(leader).expect("rss");
    // Ten connections of a hundred streams each, as ten gateways would hold them.
    let channels: Vec<_> = (0..10).map(|_| crate::common::connect(&cluster.client_addr(leader))).collect();
    let mut streams = Vec::with_capacity(STREAMS);
    for n in 0..STREAMS {
        let mut store = keepsake::proto::v1::store_client::StoreClient::new(channels[n % 10].clone());
        let req = ChangesRequest { user_id: format!("device-{}", n % USERS), follow: true, ..Default::default() };
        let opening = store.changes(tonic::Request::new(req));
        let stream = tokio::time::timeout(Duration::from_secs(10), opening)
            .await
            .unwrap_or_else(|_| panic!("opening follow stream {n} took over 10 s"))
            .expect("open a follow stream")
            .into_inner();
        streams.push(stream);
    }
    let opened = cluster.rss_bytes(leader).expect("rss").saturating_sub(rss);
    still_serves(&cluster, leader, "among-streams", Duration::from_secs(2)).await;
    // One write per user; every stream of that user sees it.
    for u in 0..USERS {
        let put = PutRequest { key: Some(key(&format!("device-{u}"), "c", "x")), value: vec![1], ..Default::default() };
        cluster.store(leader).put(request(put, Duration::from_secs(5))).await.expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (n, stream) in streams.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let change = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("stream {n} saw nothing within 30 s"))
            .expect("the stream failed")
            .expect("the stream ended");
        assert_eq!(change.key.expect("a key").user_id, format!("device-{}", n % USERS), "stream {n}");
    }
    let grown = cluster.rss_bytes(leader).expect("rss").saturating_sub(rss);
    eprintln!(
        "{STREAMS} follow streams: node RSS grew by {} KiB open, {} KiB after a write each",
        opened >> 10,
        grown >> 10
    );
    assert!(grown < 128 << 20, "{STREAMS} follow streams grew the node by {} MiB", grown >> 20);
    drop(streams);
    drop(channels);
    still_serves(&cluster, leader, "after-streams", Duration::from_secs(2)).await;
}

/// Raises this process's soft limit on open files to at least `want` (up to the hard limit).
#[allow(unsafe_code)]
fn raise_open_file_limit(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
        }
        assert!(limit.rlim_cur >= want, "the hard limit on open files ({}) is below {want}", limit.rlim_max);
    }
}
