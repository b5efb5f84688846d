//! `keepsake token`: bearer tokens for clients that present no certificate
//! (`crate::server::tokens`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, Output};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Add a token to a tokens file (created if missing) and print it: the file keeps only its
    /// hash, so it is shown this once. Nodes pick the change up within a second.
    Create(CreateArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The tokens file the nodes read (`auth.tokens_file`).
    #[arg(long)]
    file: PathBuf,
    /// Who holds the token (named in audit lines); unique in the file.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    grant: super::cert::Grant,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub async fn run(cmd: TokenCommand) -> Result<(), Failure> {
    let TokenCommand::Create(a) = cmd;
    let token = crate::server::tokens::create(&a.file, &a.name, a.grant.role, a.grant.tenants)
        .map_err(|message| Failure { message, code: 1 })?;
    match a.output {
        Output::Json => println!("{}", json!({"name": a.name, "token": token})),
        Output::Text => println!("{token}"),
    }
    Ok(())
}
