//! `keepsake cert`: a cluster's CA and its node and client certificates (`crate::tls::certs`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, Output};
use crate::tls::certs::{self, Pair};
use crate::tls::identity::{Identity, Role};

// The commands read `keepsake cert create-…`, as operators know them from `cockroach cert`.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make the cluster's certificate authority: ca.crt (give it to every node and client) and
    /// ca.key (keep it offline; it signs every other certificate).
    CreateCa(CreateCaArgs),
    /// Make a node's certificate, for the host names and addresses its ports are reached at.
    CreateNode(CreateNodeArgs),
    /// Make a client's certificate, naming its role (and for a gateway, optionally its tenants).
    CreateClient(CreateClientArgs),
}

#[derive(Args, Debug)]
pub struct Common {
    /// The directory holding ca.crt and ca.key, where the new files go. (Not the CLI's certs
    /// directory, which needs no ca.key.)
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct CreateCaArgs {
    #[command(flatten)]
    common: Common,
    /// The CA's name (its certificate's common name).
    #[arg(long, default_value = "keepsake CA")]
    name: String,
    /// How long the CA is valid.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

#[derive(Args, Debug)]
pub struct CreateNodeArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    node_id: u64,
    /// A host name or IP address the node is reached at (repeat for each).
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// How long the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

#[derive(Args, Debug)]
pub struct CreateClientArgs {
    #[command(flatten)]
    common: Common,
    /// The file name: client-NAME.crt and client-NAME.key.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    grant: Grant,
    /// How long the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// What a client certificate or a token grants: a role, and for a gateway its tenants.
#[derive(Args, Debug)]
pub struct Grant {
    #[arg(long, value_enum)]
    pub role: Role,
    /// A user-id prefix a gateway may reach (repeat for each; none: every user).
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
}

impl Grant {
    /// The client identity it names, if it is one.
    pub fn identity(self) -> Result<Identity, Failure> {
        Identity::client(self.role, self.tenants).map_err(Failure::usage)
    }
}

pub async fn run(cmd: CertCommand) -> Result<(), Failure> {
    let (common, made) = match cmd {
        CertCommand::CreateCa(a) => {
            let made = certs::create_ca(&a.common.dir, &a.name, a.days);
            (a.common, made)
        }
        CertCommand::CreateNode(a) => {
            let made = certs::create_node(&a.common.dir, a.node_id, &a.hosts, a.days);
            (a.common, made)
        }
        CertCommand::CreateClient(a) => {
            let identity = a.grant.identity()?;
            let made = certs::create_client(&a.common.dir, &a.name, &identity, a.days);
            (a.common, made)
        }
    };
    let Pair { cert, key } = made.map_err(|message| Failure { message, code: 1 })?;
    match common.output {
        Output::Json => println!("{}", json!({"cert": cert, "key": key})),
        Output::Text => println!("wrote {} and {}", cert.display(), key.display()),
    }
    Ok(())
}
