//! Data commands: put, get, delete, list, changes, export.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::client::{request, with_failover, Failure};
use super::{ClientOpts, Output, WriteDurability};
use crate::proto::v1::store_client::StoreClient;
use crate::proto::v1::*;

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[arg(long)]
    user: String,
    #[arg(long)]
    collection: String,
    #[arg(long)]
    id: String,
}

impl KeyArgs {
    fn key(&self) -> ItemKey {
        ItemKey { user_id: self.user.clone(), collection: self.collection.clone(), item_id: self.id.clone() }
    }
}

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The value, as text.
    #[arg(long, conflicts_with = "value_file", required_unless_present = "value_file")]
    value: Option<String>,
    /// Read the value from a file ("-" for standard input).
    #[arg(long)]
    value_file: Option<PathBuf>,
    #[arg(long, default_value = "")]
    content_type: String,
    /// Write only if the item is at this revision (0: only if it does not exist).
    #[arg(long)]
    if_revision: Option<u64>,
    /// When the write is acknowledged: on a quorum's disks, or once also archived.
    #[arg(long, value_enum, default_value_t = WriteDurability::Quorum)]
    durability: WriteDurability,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Read this node's local state, which may lag (no round trip to the leader).
    #[arg(long)]
    stale: bool,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    key: KeyArgs,
    #[arg(long)]
    if_revision: Option<u64>,
    /// When the delete is acknowledged: on a quorum's disks, or once also archived.
    #[arg(long, value_enum, default_value_t = WriteDurability::Quorum)]
    durability: WriteDurability,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    user: String,
    #[arg(long)]
    collection: String,
    /// Items per page; every page is fetched.
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args, Debug)]
pub struct ChangesArgs {
    #[arg(long)]
    user: String,
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Keep printing new changes until interrupted.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long)]
    user: String,
    /// Write JSON lines to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    opts: ClientOpts,
}

fn consistency(stale: bool) -> i32 {
    (if stale { Consistency::Stale } else { Consistency::Linearizable }) as i32
}

fn timestamp_text(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map_or(String::new(), |t| format!("{}.{:06}", t.seconds, t.nanos / 1000))
}

pub fn item_json(item: &Item) -> serde_json::Value {
    let key = item.key.clone().unwrap_or_default();
    let mut v = json!({
        "user": key.user_id, "collection": key.collection, "id": key.item_id,
        "revision": item.revision, "log_index": item.log_index,
        "content_type": item.content_type, "updated_at": timestamp_text(&item.updated_at),
    });
    match std::str::from_utf8(&item.value) {
        Ok(text) => v["value"] = json!(text),
        Err(_) => v["value_hex"] = json!(item.value.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
    v
}

pub async fn put(a: PutArgs) -> Result<(), Failure> {
    let value = match (&a.value, &a.value_file) {
        (Some(v), _) => v.clone().into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| Failure::usage(format!("cannot read the value from standard input: {e}")))?;
            buf
        }
        (None, Some(p)) => std::fs::read(p).map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))?,
        (None, None) => return Err(Failure::usage("give --value or --value-file")),
    };
    let msg = PutRequest {
        key: Some(a.key.key()),
        value,
        content_type: a.content_type.clone(),
        if_revision: a.if_revision,
        durability: a.durability.wire(),
    };
    let resp = with_failover(&a.opts, |ch| {
        let msg = msg.clone();
        let opts = a.opts.clone();
        async move { StoreClient::new(ch).max_encoding_message_size(64 << 20).put(request(&opts, msg)).await }
    })
    .await?
    .into_inner();
    match a.opts.output {
        Output::Json => println!("{}", json!({"revision": resp.revision, "log_index": resp.log_index})),
        Output::Text => println!("revision {} (log index {})", resp.revision, resp.log_index),
    }
    Ok(())
}

pub async fn get(a: GetArgs) -> Result<(), Failure> {
    let msg = GetRequest { key: Some(a.key.key()), consistency: consistency(a.stale) };
    let resp = with_failover(&a.opts, |ch| {
        let (msg, opts) = (msg.clone(), a.opts.clone());
        async move { StoreClient::new(ch).max_decoding_message_size(64 << 20).get(request(&opts, msg)).await }
    })
    .await?
    .into_inner();
    let item = resp.item.unwrap_or_default();
    match a.opts.output {
        Output::Json => println!("{}", item_json(&item)),
        Output::Text => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&item.value);
            let _ = out.write_all(b"\n");
        }
    }
    Ok(())
}

pub async fn delete(a: DeleteArgs) -> Result<(), Failure> {
    let msg = DeleteRequest { key: Some(a.key.key()), if_revision: a.if_revision, durability: a.durability.wire() };
    let resp = with_failover(&a.opts, |ch| {
        let (msg, opts) = (msg.clone(), a.opts.clone());
        async move { StoreClient::new(ch).delete(request(&opts, msg)).await }
    })
    .await?
    .into_inner();
    match a.opts.output {
        Output::Json => println!("{}", json!({"revision": resp.revision, "log_index": resp.log_index})),
        Output::Text => println!("deleted at revision {} (log index {})", resp.revision, resp.log_index),
    }
    Ok(())
}

pub async fn list(a: ListArgs) -> Result<(), Failure> {
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let msg = ListRequest {
            user_id: a.user.clone(),
            collection: a.collection.clone(),
            page_token: token.clone(),
            page_size: a.page_size,
            consistency: Consistency::Linearizable as i32,
        };
        let page = with_failover(&a.opts, |ch| {
            let (msg, opts) = (msg.clone(), a.opts.clone());
            async move { StoreClient::new(ch).max_decoding_message_size(256 << 20).list(request(&opts, msg)).await }
        })
        .await?
        .into_inner();
        for item in &page.items {
            match a.opts.output {
                Output::Json => all.push(item_json(item)),
                Output::Text => {
                    let id = item.key.as_ref().map_or("", |k| k.item_id.as_str());
                    println!("{id}\trevision {}\t{}", item.revision, String::from_utf8_lossy(&item.value));
                }
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if a.opts.output == Output::Json {
        println!("{}", serde_json::Value::Array(all));
    }
    Ok(())
}

pub async fn changes(a: ChangesArgs) -> Result<(), Failure> {
    let msg = ChangesRequest { user_id: a.user.clone(), since_revision: a.since, follow: a.follow, consistency: 0 };
    let opts = a.opts.clone();
    let mut stream = with_failover(&a.opts, |ch| {
        let mut req = tonic::Request::new(msg.clone());
        if !a.follow {
            req.set_timeout(opts.timeout);
        }
        super::client::authorize(&opts, &mut req);
        async move { StoreClient::new(ch).max_decoding_message_size(256 << 20).changes(req).await }
    })
    .await?
    .into_inner();
    while let Some(change) = stream.message().await.map_err(|s| Failure::from_status(&s))? {
        let key = change.key.clone().unwrap_or_default();
        match a.opts.output {
            Output::Json => {
                let mut v = json!({"revision": change.revision, "collection": key.collection, "id": key.item_id, "deleted": change.deleted});
                if let Some(item) = &change.item {
                    v["item"] = item_json(item);
                }
                println!("{v}");
            }
            Output::Text if change.deleted => {
                println!("{}\tdelete\t{}/{}", change.revision, key.collection, key.item_id)
            }
            Output::Text => println!(
                "{}\tput\t{}/{}\t{}",
                change.revision,
                key.collection,
                key.item_id,
                String::from_utf8_lossy(&change.item.map(|i| i.value).unwrap_or_default())
            ),
        }
    }
    Ok(())
}

pub async fn export(a: ExportArgs) -> Result<(), Failure> {
    use std::io::Write;
    let msg = ExportUserRequest { user_id: a.user.clone(), consistency: 0 };
    let mut stream = with_failover(&a.opts, |ch| {
        let (msg, opts) = (msg.clone(), a.opts.clone());
        async move { StoreClient::new(ch).max_decoding_message_size(256 << 20).export_user(request(&opts, msg)).await }
    })
    .await?
    .into_inner();
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| Failure::usage(format!("cannot create {}: {e}", p.display())))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let (mut items, mut revision) = (0u64, 0u64);
    while let Some(chunk) = stream.message().await.map_err(|s| Failure::from_status(&s))? {
        revision = chunk.revision;
        for item in &chunk.items {
            writeln!(out, "{}", item_json(item))
                .map_err(|e| Failure { message: format!("cannot write: {e}"), code: 1 })?;
            items += 1;
        }
    }
    out.flush().map_err(|e| Failure { message: format!("cannot write: {e}"), code: 1 })?;
    eprintln!("exported {items} items of user {} at revision {revision}", a.user);
    Ok(())
}
