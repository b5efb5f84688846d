//! The tests' TLS: one CA for every cluster a test process starts, with a certificate for node
//! ids 1 to 9 (for 127.0.0.1 and localhost), an operator's client certificate as `client.crt`
//! (what the CLI presents by default), a gateway's scoped to one tenant and a reader's, in a
//! directory the CLI finds through `KEEPSAKE_CERTS_DIR`. Made once per process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keepsake::tls::certs;
use keepsake::tls::identity::{Identity, Role};
use tonic::transport::ClientTlsConfig;

/// The highest node id with a certificate.
pub const MAX_NODE_ID: u64 = 9;

/// The directory of the shared test certificates.
pub fn certs_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Kept for the process's lifetime: nodes read their files until they stop.
        let dir = tempfile::Builder::new().prefix("keepsake-test-certs-").tempdir().expect("a certs dir").keep();
        make(&dir);
        dir
    })
}

fn make(dir: &Path) {
    certs::create_ca(dir, "keepsake test CA", 30).expect("create the test CA");
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    for id in 1..=MAX_NODE_ID {
        certs::create_node(dir, id, &hosts, 30).expect("create a test node certificate");
    }
    let operator = Identity::Client { role: Role::Operator, tenants: vec![] };
    let pair = certs::create_client(dir, "operator", &operator, 30).expect("create the operator's certificate");
    std::fs::copy(&pair.cert, dir.join("client.crt")).expect("client.crt");
    std::fs::copy(&pair.key, dir.join("client.key")).expect("client.key");
    let gateway = Identity::Client { role: Role::Gateway, tenants: vec![GATEWAY_TENANT.into()] };
    certs::create_client(dir, "gateway", &gateway, 30).expect("create a gateway's certificate");
    let reader = Identity::Client { role: Role::Reader, tenants: vec![] };
    certs::create_client(dir, "reader", &reader, 30).expect("create a reader's certificate");
}

/// The tenant (user-id prefix) the `gateway` client certificate is scoped to.
pub const GATEWAY_TENANT: &str = "acme:";

/// A client certificate's files by name (`operator`).
pub fn client_pair(name: &str) -> certs::Pair {
    certs::client_pair(certs_dir(), name)
}

/// The `[tls]` table of node `id`'s config: its files in `dir`, or the shared ones.
pub fn node_tls_config(dir: Option<&Path>, id: u64) -> String {
    assert!(id <= MAX_NODE_ID, "the test certificates cover node ids up to {MAX_NODE_ID}");
    let dir = dir.unwrap_or(certs_dir());
    let pair = certs::node_pair(dir, id);
    format!(
        "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        dir.join(certs::CA_CERT).display().to_string(),
        pair.cert.display().to_string(),
        pair.key.display().to_string()
    )
}

/// Copies node `id`'s files and the CA certificate into `dir`; returns `dir`.
pub fn copy_node_files(dir: &Path, id: u64) -> PathBuf {
    std::fs::create_dir_all(dir).expect("a node's TLS directory");
    let pair = certs::node_pair(certs_dir(), id);
    let into = certs::node_pair(dir, id);
    for (from, to) in
        [(certs_dir().join(certs::CA_CERT), dir.join(certs::CA_CERT)), (pair.cert, into.cert), (pair.key, into.key)]
    {
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    dir.to_path_buf()
}

/// Issues node `id` a new certificate and key from the test CA and puts them in place of the
/// ones in `dir`, each by a rename (as an operator's tool would); returns the new certificate.
pub fn rotate_node_files(dir: &Path, id: u64) -> Vec<u8> {
    let fresh = tempfile::tempdir().expect("a scratch directory");
    for name in [certs::CA_CERT, certs::CA_KEY] {
        std::fs::copy(certs_dir().join(name), fresh.path().join(name)).expect("copy the CA");
    }
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let made = certs::create_node(fresh.path(), id, &hosts, 30).expect("a new node certificate");
    let into = certs::node_pair(dir, id);
    // Both files renamed within the same directory: the node sees each whole or not at all.
    let (cert_tmp, key_tmp) = (dir.join("next.crt"), dir.join("next.key"));
    std::fs::copy(&made.cert, &cert_tmp).expect("stage the certificate");
    std::fs::copy(&made.key, &key_tmp).expect("stage the key");
    std::fs::rename(&key_tmp, &into.key).expect("replace the key");
    std::fs::rename(&cert_tmp, &into.cert).expect("replace the certificate");
    der_of(&into.cert)
}

/// The DER bytes of the first certificate in a PEM file.
pub fn der_of(pem: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(pem).expect("a PEM certificate").to_vec()
}

/// The certificate a TLS port presents (DER).
pub async fn served_certificate(addr: &str) -> std::io::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client_config()?).connect(server_name(addr)?, tcp).await?;
    let (_, session) = tls.get_ref();
    let first =
        session.peer_certificates().and_then(|c| c.first()).ok_or_else(|| std::io::Error::other("no certificate"))?;
    Ok(first.to_vec())
}

/// A TLS connection to `addr` whose handshake is done and which has sent nothing since.
pub async fn handshaken(addr: &str) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(client_config()?).connect(server_name(addr)?, tcp).await
}

/// tonic's TLS settings for a channel, as the operator.
pub fn client_tls() -> ClientTlsConfig {
    keepsake::tls::client::ClientFiles {
        ca: certs_dir().join(certs::CA_CERT),
        identity: Some((certs_dir().join("client.crt"), certs_dir().join("client.key"))),
    }
    .tonic()
    .expect("the test client's TLS settings")
}

/// One bodiless HTTPS/1.1 request to a node's HTTP port; returns the status code and the whole
/// response.
pub fn https_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let conn = rustls::ClientConnection::new(client_config()?, server_name(addr)?).map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    super::http::request_over(rustls::StreamOwned::new(conn, tcp), addr, method, path)
}

/// rustls settings trusting the test CA, with no client certificate and no ALPN offered (the
/// HTTP port speaks http/1.1, the others h2, and each takes a client that offers none).
fn client_config() -> std::io::Result<Arc<rustls::ClientConfig>> {
    let files = keepsake::tls::material::TlsFiles {
        ca: certs_dir().join(certs::CA_CERT),
        cert: PathBuf::new(),
        key: PathBuf::new(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(files.roots().map_err(std::io::Error::other)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a TLS client checks a node's certificate for: the host of `addr`.
fn server_name(addr: &str) -> std::io::Result<rustls_pki_types::ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    rustls_pki_types::ServerName::try_from(host).map_err(std::io::Error::other)
}
