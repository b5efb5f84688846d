//! Who is calling the client port, and may they (docs/security.md): a client is identified by
//! its certificate (of the cluster's CA) and/or a bearer token from the tokens file, and its
//! role decides which methods it may call; a gateway's tenants decide which users it reaches.
//! Members (node certificates) may call Admin: a follower passes Admin calls to the leader as
//! itself, once it has checked the client. Health and reflection are open to any TLS client.
//!
//! Every Admin call and every refusal gets an audit line (target `keepsake::audit`): who, how
//! they proved it, the method, where from and the outcome. Never a token, never a value.
//!
//! Invariant: with TLS on, no request reaches a Store or Admin handler without a caller whose
//! role allows the method, and no Store handler touches a user outside the caller's tenants.
//! In insecure mode nobody is checked (the node warns at every start).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Status};

use super::tokens::Tokens;
use crate::tls::identity::{Identity, Role};
use crate::tls::server::Peer;

/// An authenticated caller, as the handlers see it (request extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
    /// How it proved it: "certificate", or "token NAME".
    pub via: String,
}

impl Caller {
    /// Refuses `user_id` outside a gateway's tenants.
    fn may_reach(&self, user_id: &str) -> Result<(), Status> {
        match &self.identity {
            Identity::Client { tenants, .. }
                if !tenants.is_empty() && !tenants.iter().any(|t| user_id.starts_with(t)) =>
            {
                Err(Status::permission_denied(format!(
                    "this {} may reach only users whose ids start with one of {tenants:?}",
                    self.identity
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A request's caller, taken before the handler consumes the request, to check each user it
/// touches against.
pub struct Reach {
    caller: Option<Caller>,
    from: Option<std::net::SocketAddr>,
}

impl Reach {
    pub fn of<T>(request: &Request<T>) -> Reach {
        let from = request.extensions().get::<Peer>().and_then(|p| p.addr);
        Reach { caller: request.extensions().get::<Caller>().cloned(), from }
    }

    /// Refuses `user_id` if the caller may not reach it (and says so in the audit log). No
    /// caller: insecure mode, where nobody is checked.
    #[allow(clippy::result_large_err)]
    pub fn user(&self, method: &str, user_id: &str) -> Result<(), Status> {
        let Some(caller) = &self.caller else { return Ok(()) };
        caller.may_reach(user_id).inspect_err(|status| audit(Some(caller), method, self.from, Err(status)))
    }
}

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Health and reflection.
    Open,
    /// Get, List, Changes, ExportUser.
    Read,
    /// The rest of the Store API.
    Store,
    /// The Admin API, and anything unknown.
    Admin,
}

fn need(path: &str) -> Need {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Need::Open,
        "keepsake.v1.Store" => match method {
            "Get" | "List" | "Changes" | "ExportUser" => Need::Read,
            _ => Need::Store,
        },
        _ => Need::Admin,
    }
}

fn allowed(identity: &Identity, need: Need) -> bool {
    match (identity, need) {
        (_, Need::Open) => true,
        (Identity::Node(_), need) => need == Need::Admin,
        (Identity::Client { role: Role::Operator, .. }, _) => true,
        (Identity::Client { role: Role::Gateway, .. }, need) => need != Need::Admin,
        (Identity::Client { role: Role::Reader, .. }, need) => need == Need::Read,
    }
}

/// Who the connection's certificate and the request's bearer token say the caller is.
fn authenticate(peer: Option<&Peer>, bearer: Option<&str>, tokens: Option<&Tokens>) -> Result<Caller, Status> {
    let by_certificate = match peer.and_then(|p| p.identity.clone()) {
        None => None,
        Some(Ok(identity)) => Some(identity),
        Some(Err(e)) => return Err(Status::unauthenticated(format!("the client certificate: {e}"))),
    };
    let by_token = match bearer {
        None => None,
        Some(token) => match tokens.and_then(|t| t.find(token)) {
            Some(found) => Some(found),
            None => {
                return Err(Status::unauthenticated(
                    "the bearer token is not known to this node (revoked, mistyped, or another cluster's)",
                ))
            }
        },
    };
    match (by_certificate, by_token) {
        (Some(a), Some((_, b))) if !a.same_as(&b) => Err(Status::unauthenticated(format!(
            "the client certificate ({a}) and the bearer token ({b}) name different callers"
        ))),
        (_, Some((name, identity))) => Ok(Caller { identity, via: format!("token {name}") }),
        (Some(identity), None) => Ok(Caller { identity, via: "certificate".into() }),
        (None, None) => Err(Status::unauthenticated(
            "no credentials: present a client certificate of the cluster's CA (`keepsake cert create-client`) or \
             a bearer token (`keepsake token create`)",
        )),
    }
}

/// The bearer token of an `authorization: Bearer …` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// One audit line: who, how, what, from where, and the outcome.
fn audit(caller: Option<&Caller>, method: &str, from: Option<std::net::SocketAddr>, outcome: Result<(), &Status>) {
    let who = caller.map_or("unauthenticated".to_owned(), |c| c.identity.to_string());
    let via = caller.map_or("", |c| c.via.as_str());
    let from = from.map_or(String::new(), |a| a.to_string());
    match outcome {
        Ok(()) => tracing::info!(target: "keepsake::audit", caller = %who, via, method, from, outcome = "allowed"),
        Err(status) => tracing::warn!(
            target: "keepsake::audit",
            caller = %who, via, method, from, outcome = "denied", code = ?status.code(), reason = status.message()
        ),
    }
}

/// Whether node `id` is in the current membership.
pub fn is_member(raft: &keepsake_raft::Raft, id: u64) -> bool {
    raft.metrics().borrow().membership_config.membership().get_node(&id).is_some()
}

/// Decides one request: `Ok(None)` open, `Ok(Some)` its caller, or the status that refuses it.
fn decide<B>(
    request: &http::Request<B>,
    tokens: Option<&Tokens>,
    raft: &keepsake_raft::Raft,
) -> Result<Option<Caller>, (Option<Caller>, Status)> {
    let path = request.uri().path();
    let need = need(path);
    let peer = request.extensions().get::<Peer>();
    let caller = match authenticate(peer, bearer(request.headers()), tokens) {
        Ok(caller) => caller,
        Err(_) if need == Need::Open => return Ok(None),
        Err(status) => return Err((None, status)),
    };
    if !allowed(&caller.identity, need) {
        let what = match need {
            Need::Admin => "the Admin API needs an operator",
            Need::Store => "writes need a gateway or an operator",
            Need::Read | Need::Open => "reads need a reader, a gateway or an operator",
        };
        let status = Status::permission_denied(format!("{}: {what}", caller.identity));
        return Err((Some(caller), status));
    }
    // A node's certificate acts for the cluster only while the node is a member: a removed
    // node's certificate stays valid until it expires.
    if let Identity::Node(id) = caller.identity {
        if !is_member(raft, id) {
            let status = Status::permission_denied(format!("node {id} is not a member of this cluster"));
            return Err((Some(caller), status));
        }
    }
    Ok(Some(caller))
}

/// The client port's authentication and authorization, as a tower layer in front of every
/// service. `tokens` None: no tokens file (certificates only). `secure` false: insecure mode.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
    secure: bool,
    /// The membership a node certificate must be in.
    raft: keepsake_raft::Raft,
}

impl AuthLayer {
    pub fn new(tokens: Option<Arc<Tokens>>, secure: bool, raft: keepsake_raft::Raft) -> AuthLayer {
        AuthLayer { tokens, secure, raft }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, tokens: self.tokens.clone(), secure: self.secure, raft: self.raft.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
    secure: bool,
    raft: keepsake_raft::Raft,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule for cloned services).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !self.secure {
            return Box::pin(inner.call(request));
        }
        let method = request.uri().path().to_owned();
        let from = request.extensions().get::<Peer>().and_then(|p| p.addr);
        match decide(&request, self.tokens.as_deref(), &self.raft) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    if need(&method) == Need::Admin {
                        audit(Some(&caller), &method, from, Ok(()));
                    }
                    request.extensions_mut().insert(caller);
                }
                Box::pin(inner.call(request))
            }
            Err((caller, status)) => {
                audit(caller.as_ref(), &method, from, Err(&status));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(role: Role) -> Identity {
        Identity::Client { role, tenants: vec![] }
    }

    #[test]
    fn each_role_reaches_its_methods_only() {
        let (op, gw, rd, node) =
            (client(Role::Operator), client(Role::Gateway), client(Role::Reader), Identity::Node(1));
        let cases = [
            ("/keepsake.v1.Admin/AddLearner", [true, false, false, true]),
            ("/keepsake.v1.Admin/RemoveNode", [true, false, false, true]),
            ("/keepsake.v1.Store/Put", [true, true, false, false]),
            ("/keepsake.v1.Store/Batch", [true, true, false, false]),
            ("/keepsake.v1.Store/WatchArchived", [true, true, false, false]),
            ("/keepsake.v1.Store/Get", [true, true, true, false]),
            ("/keepsake.v1.Store/ExportUser", [true, true, true, false]),
            ("/grpc.health.v1.Health/Check", [true, true, true, true]),
            ("/keepsake.v1.Unknown/Thing", [true, false, false, true]),
        ];
        for (path, expected) in cases {
            let got = [&op, &gw, &rd, &node].map(|who| allowed(who, need(path)));
            assert_eq!(got, expected, "{path}: operator, gateway, reader, node");
        }
    }

    #[test]
    fn a_gateway_reaches_only_its_tenants_users() {
        let caller = Caller {
            identity: Identity::Client { role: Role::Gateway, tenants: vec!["acme:".into()] },
            via: "certificate".into(),
        };
        assert!(caller.may_reach("acme:alice").is_ok());
        let refused = caller.may_reach("globex:bob").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("acme:"), "{}", refused.message());
        let operator = Caller { identity: client(Role::Operator), via: "certificate".into() };
        assert!(operator.may_reach("globex:bob").is_ok());
    }

    #[test]
    fn no_credentials_or_disagreeing_ones_are_unauthenticated() {
        let none = authenticate(None, None, None).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(none.message().contains("client certificate") && none.message().contains("bearer token"));
        let unknown = authenticate(None, Some("kst_nope"), None).unwrap_err();
        assert!(unknown.message().contains("not known"), "{}", unknown.message());
        let peer = Peer { addr: None, tls: true, identity: Some(Err("names no Keepsake node id or role".into())) };
        assert_eq!(authenticate(Some(&peer), None, None).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
