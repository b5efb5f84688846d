//! Connecting to the cluster from the CLI: try each endpoint in turn until one answers, and
//! turn failures into a message and an exit code a person or script can act on.

use std::future::Future;
use std::time::Duration;

use std::path::PathBuf;

use clap::Args;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::ClientOpts;
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::{NodeStatus, NodeStatusRequest};
use crate::tls::client::ClientFiles;

/// A failed command: what to print and which exit code to return.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure { message: format!("{e:#}"), code: 1 }
    }
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure { message: message.into(), code: 2 }
    }

    pub fn from_status(status: &Status) -> Self {
        let code = match status.code() {
            Code::NotFound => 3,
            Code::FailedPrecondition => 4,
            Code::Unavailable => 5,
            Code::DeadlineExceeded => 6,
            Code::InvalidArgument => 2,
            _ => 1,
        };
        Failure { message: format!("{:?}: {}", status.code(), status.message()), code }
    }
}

/// How the CLI reaches nodes: TLS trusting the cluster's CA, presenting a client certificate
/// if it has one; or plaintext, only when asked for. Nothing given and no CA in the certs
/// directory is an error, never a quiet fall back to plaintext.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsOpts {
    /// The cluster's CA certificate (default: ca.crt in the certs directory).
    #[arg(long, env = "KEEPSAKE_CA")]
    pub ca: Option<PathBuf>,
    /// A client certificate to present (default: client.crt in the certs directory, if there).
    #[arg(long, env = "KEEPSAKE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its private key (default: client.key in the certs directory).
    #[arg(long, env = "KEEPSAKE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Where ca.crt, client.crt and client.key are looked for (default: ~/.keepsake/certs).
    #[arg(long, env = "KEEPSAKE_CERTS_DIR")]
    pub certs_dir: Option<PathBuf>,
    /// Connect in plaintext, to a cluster serving in insecure mode.
    #[arg(long, env = "KEEPSAKE_INSECURE")]
    pub insecure: bool,
    /// A bearer token to present (`keepsake token create`), instead of or with a certificate.
    #[arg(long, env = "KEEPSAKE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// TLS settings for a channel; None: plaintext.
pub type Tls = Option<ClientTlsConfig>;

/// The default certs directory: `~/.keepsake/certs`.
pub fn default_certs_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".keepsake").join("certs"))
}

impl TlsOpts {
    /// What the flags, variables and certs directory say, read now.
    pub fn resolve(&self) -> Result<Tls, Failure> {
        let fail = |message: String| Failure { message, code: 2 };
        if self.insecure && self.token.is_some() {
            return Err(fail("--insecure with a bearer token would send the token in plaintext: drop one".into()));
        }
        if self.insecure && self.ca.is_some() {
            return Err(fail(
                "--insecure and --ca are both given: choose TLS (the CA) or plaintext (--insecure)".into(),
            ));
        }
        if self.insecure {
            return Ok(None);
        }
        let dir = self.certs_dir.clone().or_else(default_certs_dir);
        let in_dir = |name: &str| dir.as_ref().map(|d| d.join(name)).filter(|p| p.exists());
        // The directory's client certificate goes with the directory's CA only: against a
        // cluster named by --ca it would be another CA's, and refused.
        let (ca, identity) = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => (Some(ca.clone()), Some((cert.clone(), key.clone()))),
            (Some(ca), _, _) => (Some(ca.clone()), None),
            (None, Some(cert), Some(key)) => (in_dir("ca.crt"), Some((cert.clone(), key.clone()))),
            (None, _, _) => (in_dir("ca.crt"), in_dir("client.crt").zip(in_dir("client.key"))),
        };
        match ca {
            Some(ca) => ClientFiles { ca, identity }.tonic().map(Some).map_err(fail),
            None => Err(fail(format!(
                "no CA to trust: pass --ca (KEEPSAKE_CA) or put ca.crt in {} (--certs-dir, KEEPSAKE_CERTS_DIR); \
                 for a cluster serving plaintext on purpose, pass --insecure",
                dir.map_or("the certs directory".into(), |d| d.display().to_string())
            ))),
        }
    }
}

pub(super) async fn connect(addr: &str, timeout: Duration, tls: &Tls) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("{addr} is not a valid endpoint: {e}"))?
        .connect_timeout(timeout.min(Duration::from_secs(2)));
    if let Some(config) = tls {
        endpoint = endpoint.tls_config(config.clone()).map_err(|e| format!("{addr}: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| format!("{addr}: {}", error_chain(&e)))
}

/// An error with its causes: "transport error" alone does not say the certificate was refused.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Runs `call` against the first endpoint that is reachable; a node that cannot be reached, or
/// that has no leader to serve the request, is skipped.
pub async fn with_failover<T, F, Fut>(opts: &ClientOpts, call: F) -> Result<T, Failure>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    // While an election is under way every node answers UNAVAILABLE: try again, within --timeout.
    let tls = opts.tls.resolve()?;
    let started = std::time::Instant::now();
    let mut errors = Vec::new();
    let mut last_status = None;
    loop {
        errors.clear();
        match try_each(opts, &tls, &call, &mut errors, &mut last_status).await {
            Some(result) => return result,
            None if started.elapsed() + Duration::from_millis(200) < opts.timeout => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => break,
        }
    }
    let message = format!(
        "no node could serve the request (tried {}):\n  {}\ncheck that the cluster is running (`keepsake cluster status`) or pass --endpoints",
        opts.endpoints.join(", "),
        errors.join("\n  ")
    );
    Err(Failure { message, code: last_status.map_or(5, |s| Failure::from_status(&s).code) })
}

/// One pass over the endpoints: Some(result) when a node answered anything but UNAVAILABLE.
async fn try_each<T, F, Fut>(
    opts: &ClientOpts,
    tls: &Tls,
    call: &F,
    errors: &mut Vec<String>,
    last_status: &mut Option<Status>,
) -> Option<Result<T, Failure>>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    for addr in &opts.endpoints {
        let channel = match connect(addr, opts.timeout, tls).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match call(channel).await {
            Ok(v) => return Some(Ok(v)),
            Err(status) if status.code() == Code::Unavailable => {
                errors.push(format!("{addr}: {}", status.message()));
                *last_status = Some(status);
            }
            Err(status) => return Some(Err(Failure::from_status(&status))),
        }
    }
    None
}

/// One node's own view (its role, the leader it knows, the members), asked of that node alone.
pub(super) async fn node_status(addr: &str, timeout: Duration, tls: &Tls) -> Result<NodeStatus, String> {
    let mut req = tonic::Request::new(NodeStatusRequest {});
    req.set_timeout(timeout);
    let status = AdminClient::new(connect(addr, timeout, tls).await?).get_node_status(req).await;
    status.map(tonic::Response::into_inner).map_err(|s| format!("{addr}: {}", s.message()))
}

/// A request carrying the command's deadline.
pub fn request<T>(opts: &ClientOpts, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(opts.timeout);
    authorize(opts, &mut r);
    r
}

/// Adds the bearer token, if the command has one.
pub fn authorize<T>(opts: &ClientOpts, request: &mut tonic::Request<T>) {
    if let Some(token) = &opts.tls.token {
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
    }
}
