//! Opening the object store an archive URL names: a local directory (fsynced: it must be as
//! durable as what it backs up) or S3 and S3-compatible servers; and writing one object whole
//! (`put`), in parts when it is large, or only if no object has its name yet (`put_new`).

use std::sync::Arc;
use std::time::Duration;

use crate::sealing::Keys;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig};

/// An object store and the path of one cluster's archive in it.
#[derive(Clone, Debug)]
pub struct Archive {
    pub store: Arc<dyn ObjectStore>,
    /// `<prefix>/<cluster-id>`: every object of this cluster lives under it.
    pub root: Path,
    /// Names the archive in messages (the URL, never credentials).
    pub url: String,
    /// Whether its objects are sealed, and with which keys (`crate::keys`).
    pub keys: Keys,
}

/// How to reach an S3 archive; a local directory needs none of it.
#[derive(Clone)]
pub struct Connection {
    /// S3 endpoint for S3-compatible servers (e.g. `http://127.0.0.1:9000`); empty: AWS.
    pub endpoint: String,
    /// Empty: `AWS_REGION` or `us-east-1`.
    pub region: String,
    /// Empty: the `AWS_*` variables or the instance's role.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `bucket.endpoint` rather than path-style `endpoint/bucket`.
    pub virtual_hosted_style: bool,
    /// One object-store request gives up after this long.
    pub request_timeout: Duration,
}

impl Default for Connection {
    /// AWS with the `AWS_*` variables, path-style, 30 s per request.
    fn default() -> Self {
        Connection {
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            virtual_hosted_style: false,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &if self.secret_access_key.is_empty() { "" } else { "<redacted>" })
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("archive url {url:?}: {problem}")]
    Url { url: String, problem: String },
    #[error("archive {url}: {source}")]
    Store { url: String, source: object_store::Error },
}

/// Whether `url` names object storage (`s3://…`) rather than a directory on this machine.
pub fn is_object_storage(url: &str) -> bool {
    url.starts_with(S3)
}

const S3: &str = "s3://";

impl Archive {
    /// Opens the archive of `cluster_id` under `url`: `s3://bucket/prefix`, `file:///path` or a
    /// directory.
    pub fn open(url: &str, config: &Connection, cluster_id: &str) -> Result<Self, OpenError> {
        let url = url.to_owned();
        let bad = |problem: String| OpenError::Url { url: url.clone(), problem };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) = url.strip_prefix(S3) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("names no bucket; write s3://bucket/prefix".into()));
            }
            // One request gives up after `request_timeout`, and object_store retries little:
            // the archiver retries on its own and reports every failure in its status.
            let timeout = config.request_timeout;
            let client =
                ClientOptions::new().with_timeout(timeout).with_connect_timeout(timeout.min(Duration::from_secs(5)));
            let retry = RetryConfig { max_retries: 1, retry_timeout: timeout, ..RetryConfig::default() };
            let mut b =
                AmazonS3Builder::from_env().with_bucket_name(bucket).with_client_options(client).with_retry(retry);
            if !config.endpoint.is_empty() {
                b = b.with_endpoint(&config.endpoint).with_allow_http(config.endpoint.starts_with("http://"));
            }
            if !config.region.is_empty() {
                b = b.with_region(&config.region);
            }
            if !config.access_key_id.is_empty() {
                b = b.with_access_key_id(&config.access_key_id).with_secret_access_key(&config.secret_access_key);
            }
            b = b.with_virtual_hosted_style_request(config.virtual_hosted_style);
            let s3 = b.build().map_err(|source| OpenError::Store { url: url.clone(), source })?;
            (Arc::new(s3), prefix.trim_matches('/').to_owned())
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(&url);
            if dir.contains("://") {
                return Err(bad("unknown scheme; use s3://bucket/prefix, file:///path or a directory".into()));
            }
            std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create the directory: {e}")))?;
            let local = LocalFileSystem::new_with_prefix(dir)
                .map_err(|source| OpenError::Store { url: url.clone(), source })?
                .with_fsync(true);
            (Arc::new(local), String::new())
        };
        let root =
            if prefix.is_empty() { Path::from(cluster_id) } else { Path::from(format!("{prefix}/{cluster_id}")) };
        Ok(Archive { store, root, url, keys: Keys::plaintext() })
    }

    /// The same archive, its objects sealed and opened with `keys`.
    pub fn with_keys(self, keys: Keys) -> Archive {
        Archive { keys, ..self }
    }

    /// The full path of an object under this cluster's root (e.g. `segments/…`).
    pub fn path(&self, name: &str) -> Path {
        Path::from(format!("{}/{name}", self.root))
    }
}

/// Multipart objects have parts of at least 5 MiB; larger objects go up in parts.
const MULTIPART_ABOVE: usize = 8 << 20;

/// Writes one object whole, in parts when it is large; a failed multipart upload is aborted.
pub async fn put(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    bytes: bytes::Bytes,
) -> object_store::Result<()> {
    if bytes.len() <= MULTIPART_ABOVE {
        return store.put(path, bytes.into()).await.map(|_| ());
    }
    let mut upload = object_store::WriteMultipart::new(store.put_multipart(path).await?);
    upload.write(&bytes);
    upload.finish().await.map(|_| ())
}

/// What a create-only put found.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// This call wrote the object.
    New,
    /// An object of that name was there already and `same` accepted its bytes.
    AlreadyThere,
}

/// Writes an object only if none has its name yet (one request, `If-None-Match: *`; never in
/// parts, which cannot be conditional). When one exists, its bytes are read and `same` decides
/// whether they say what `bytes` would: if not, nothing is written and `Differs` says so —
/// an archived object is never replaced with different content.
pub async fn put_new(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: bytes::Bytes,
    same: impl FnOnce(&[u8]) -> Result<(), String>,
) -> Result<Created, PutNewError> {
    let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    let failed = |e: object_store::Error| PutNewError::Store(format!("writing {path}: {e}"));
    match store.put_opts(path, bytes.into(), create).await {
        Ok(_) => return Ok(Created::New),
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(failed(e)),
    }
    let existing = store.get(path).await.map_err(failed)?.bytes().await.map_err(failed)?;
    same(&existing).map_err(|why| {
        PutNewError::Differs(format!("{path} already exists with other content ({why}); it is left as it is"))
    })?;
    Ok(Created::AlreadyThere)
}

#[derive(Debug, thiserror::Error)]
pub enum PutNewError {
    /// The store failed; retrying may help.
    #[error("{0}")]
    Store(String),
    /// Another object already has the name and says something else; retrying cannot help.
    #[error("{0}")]
    Differs(String),
}
