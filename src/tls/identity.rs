//! Who a certificate says its holder is: a member node (by node id) or a client (by role, and
//! for a gateway the tenants it may reach). Keepsake's own certificates (`keepsake cert`) carry
//! this as URIs in the subject alternative names, readable with any X.509 tool:
//! `urn:keepsake:node:<id>`, `urn:keepsake:role:<role>`, `urn:keepsake:tenant:<prefix>` (the
//! user-id prefix percent-encoded).
//!
//! Invariant: a certificate names exactly one node id or exactly one role, never both; one
//! that names neither, or more, is nobody.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const PREFIX: &str = "urn:keepsake:";
/// Everything but unreserved URI characters is encoded.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// What a client may do (docs/security.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// The Store API, optionally only for some tenants' users.
    Gateway,
    /// Everything: Admin, backup and drill, and the Store API.
    Operator,
    /// Get, List, Changes and Export.
    Reader,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        [Role::Gateway, Role::Operator, Role::Reader].into_iter().find(|r| r.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A member of the cluster, by node id.
    Node(u64),
    /// A client in a role; `tenants` are the user-id prefixes it may reach (empty: every user).
    Client { role: Role, tenants: Vec<String> },
}

impl Identity {
    /// The subject alternative name URIs that say this identity.
    pub fn uris(&self) -> Vec<String> {
        match self {
            Identity::Node(id) => vec![format!("{PREFIX}node:{id}")],
            Identity::Client { role, tenants } => std::iter::once(format!("{PREFIX}role:{}", role.name()))
                .chain(tenants.iter().map(|t| format!("{PREFIX}tenant:{}", utf8_percent_encode(t, ENCODED))))
                .collect(),
        }
    }

    /// The identity the URIs say (only the ones under `urn:keepsake:` count).
    pub fn from_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Identity, String> {
        let (mut nodes, mut roles, mut tenants) = (Vec::new(), Vec::new(), Vec::new());
        for uri in uris {
            let Some(rest) = uri.strip_prefix(PREFIX) else { continue };
            let (kind, value) = rest.split_once(':').ok_or_else(|| format!("{uri}: no value"))?;
            match kind {
                "node" => nodes.push(value.parse::<u64>().map_err(|_| format!("{uri}: not a node id"))?),
                "role" => roles.push(Role::parse(value).ok_or_else(|| format!("{uri}: no such role"))?),
                "tenant" => {
                    let prefix = percent_decode_str(value).decode_utf8().map_err(|_| format!("{uri}: not UTF-8"))?;
                    tenants.push(prefix.into_owned());
                }
                _ => return Err(format!("{uri}: unknown Keepsake name")),
            }
        }
        match (nodes.as_slice(), roles.as_slice()) {
            ([id], []) if tenants.is_empty() => Ok(Identity::Node(*id)),
            ([], [role]) => Identity::client(*role, tenants),
            ([], []) => Err("the certificate names no Keepsake node id or role".into()),
            _ => Err("the certificate names more than one Keepsake node id or role".into()),
        }
    }

    /// A client in `role`, reaching only users whose ids start with one of `tenants` (none:
    /// every user); only a gateway is scoped to tenants.
    pub fn client(role: Role, mut tenants: Vec<String>) -> Result<Identity, String> {
        if !tenants.is_empty() && role != Role::Gateway {
            return Err("only a gateway can be scoped to tenants".into());
        }
        // An empty prefix would reach every user: never a scope.
        if tenants.iter().any(String::is_empty) {
            return Err("a tenant is a non-empty user-id prefix".into());
        }
        tenants.sort();
        tenants.dedup();
        Ok(Identity::Client { role, tenants })
    }

    /// The same caller: tenants compared as a set.
    pub fn same_as(&self, other: &Identity) -> bool {
        self == other
    }

    /// The identity a DER certificate says.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let san = cert.subject_alternative_name().map_err(|e| format!("bad subject alternative names: {e}"))?;
        let uris = san.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
        Identity::from_uris(uris)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client { role, tenants } if tenants.is_empty() => write!(f, "{}", role.name()),
            Identity::Client { role, tenants } => write!(f, "{} of tenants {tenants:?}", role.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uris() {
        for identity in [
            Identity::Node(7),
            Identity::Client { role: Role::Operator, tenants: vec![] },
            Identity::Client { role: Role::Gateway, tenants: vec!["acme:".into(), "é x/%".into()] },
        ] {
            let uris = identity.uris();
            assert!(uris.iter().all(|u| u.is_ascii()), "{uris:?}");
            assert_eq!(Identity::from_uris(uris.iter().map(String::as_str)), Ok(identity));
        }
    }

    #[test]
    fn a_certificate_naming_both_none_or_a_scoped_operator_is_nobody() {
        let bad = [
            vec!["urn:keepsake:node:1", "urn:keepsake:role:operator"],
            vec!["urn:keepsake:node:1", "urn:keepsake:node:2"],
            vec!["https://example.com"],
            vec!["urn:keepsake:role:operator", "urn:keepsake:tenant:a"],
            vec!["urn:keepsake:role:root"],
            vec!["urn:keepsake:role:gateway", "urn:keepsake:tenant:"],
            vec!["urn:keepsake:node:x"],
        ];
        for uris in bad {
            assert!(Identity::from_uris(uris.iter().copied()).is_err(), "{uris:?}");
        }
    }
}
