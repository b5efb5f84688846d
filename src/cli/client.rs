//! Connecting to the cluster from the CLI: try each endpoint in turn until one answers, and
//! turn failures into a message and an exit code a person or script can act on.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::ClientOpts;
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::{NodeStatus, NodeStatusRequest};

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

pub(super) async fn connect(addr: &str, timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr} is not a valid endpoint: {e}"))?
        .connect_timeout(timeout.min(Duration::from_secs(2)));
    endpoint.connect().await.map_err(|e| format!("{addr}: {e}"))
}

/// Runs `call` against the first endpoint that is reachable; a node that cannot be reached, or
/// that has no leader to serve the request, is skipped.
pub async fn with_failover<T, F, Fut>(opts: &ClientOpts, call: F) -> Result<T, Failure>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    // While an election is under way every node answers UNAVAILABLE: try again, within --timeout.
    let started = std::time::Instant::now();
    let mut errors = Vec::new();
    let mut last_status = None;
    loop {
        errors.clear();
        match try_each(opts, &call, &mut errors, &mut last_status).await {
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
    call: &F,
    errors: &mut Vec<String>,
    last_status: &mut Option<Status>,
) -> Option<Result<T, Failure>>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    for addr in &opts.endpoints {
        let channel = match connect(addr, opts.timeout).await {
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
pub(super) async fn node_status(addr: &str, timeout: Duration) -> Result<NodeStatus, String> {
    let mut req = tonic::Request::new(NodeStatusRequest {});
    req.set_timeout(timeout);
    let status = AdminClient::new(connect(addr, timeout).await?).get_node_status(req).await;
    status.map(tonic::Response::into_inner).map_err(|s| format!("{addr}: {}", s.message()))
}

/// A request carrying the command's deadline.
pub fn request<T>(opts: &ClientOpts, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(opts.timeout);
    r
}
