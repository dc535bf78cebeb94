//! Remotes of the ausa store: push and pull objects and refs to an S3-compatible
//! object store (`s3://bucket/prefix`) or another directory (`file:///path`).
//!
//! This crate owns the remote layout and the transfer protocol. It talks to remotes
//! only through the `object_store` crate (no hand-written S3 client) and runs its async
//! API on a small private tokio runtime, so callers see a plain blocking API. It never
//! writes the local store's files directly: objects enter the local store only through
//! [`ausa_store::Staging::publish_verbatim`], the same atomic publish a build uses, and
//! leave it only after [`ausa_store::Store::check_object`] checked their sizes, with
//! every byte hashed against the manifest as it is read for upload.
//!
//! # Remote layout
//!
//! ```text
//! <prefix>/objects/<kind>/<fingerprint>/<file>          files, uploaded first
//! <prefix>/objects/<kind>/<fingerprint>/manifest.json   uploaded last: the commit point
//! <prefix>/refs/<dag>/<stage>                           uploaded after their objects
//! ```
//!
//! It mirrors the local store, so a `file://` remote is itself a valid store.
//! An object without a manifest is invisible to pullers, so an interrupted push
//! publishes nothing; pushing again uploads only the files still missing. Everything
//! downloaded is untrusted until its manifest passes the store's validation and every
//! file's size and blake3 match it.
//!
//! ```no_run
//! let store = ausa_store::Store::create("/tmp/store").unwrap();
//! let remote = ausa_remote::Remote::open("s3://bucket/ausa").unwrap();
//! let ids = store.list_objects().unwrap();
//! remote.push_objects(&store, &ids, &ausa_remote::NoProgress).unwrap();
//! ```

mod error;
mod profile;
mod pull;
mod push;

use std::sync::Arc;

use ausa_store::{ObjectId, Ref, RefName, MANIFEST_NAME};
use object_store::path::Path as RemotePath;
use object_store::{ObjectStore, ObjectStoreExt};

pub use error::RemoteError;

/// Files at least this large are uploaded in parts.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Part size of multipart uploads (S3 requires at least 5 MiB), unless the file needs
/// larger parts to stay within S3's 10,000 parts. Larger parts were slower against
/// the loopback test server (see docs/benchmarks.md), more only cost memory.
const PART_SIZE: u64 = 16 << 20;
/// S3's limit on the parts of one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Files of one object transferred at once.
const FILE_CONCURRENCY: usize = 8;
/// Request bodies (whole small files, parts of large ones) read or in flight at once
/// during a push, across all its files: the push holds at most this many times
/// `PART_SIZE` in memory.
const PUSH_BODIES: usize = 8;
/// Objects transferred at once (each with up to `FILE_CONCURRENCY` files) by one
/// push or pull; also how many single-object pulls a read-through build should run
/// at once.
pub const OBJECT_CONCURRENCY: usize = 2;

/// Receives transfer progress; called from several threads.
pub trait TransferProgress: Sync {
    /// The number of bytes this transfer will move (called once, first).
    fn start(&self, total_bytes: u64);
    /// `n` more bytes were moved.
    fn advance(&self, n: u64);
}

/// A [`TransferProgress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl TransferProgress for NoProgress {
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _n: u64) {}
}

/// What a push or pull did with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transfer {
    /// The destination already had it; nothing moved.
    Present,
    /// Copied, this many bytes of files.
    Copied(u64),
}

/// An open remote.
pub struct Remote {
    url: String,
    objects: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// Opens `s3://bucket[/prefix]` or `file:///abs/path` (created if missing).
    ///
    /// S3 credentials, region and endpoint come from the standard `AWS_*` environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
    /// `AWS_ENDPOINT_URL`), then from the profile `$AWS_PROFILE` (else `default`) of
    /// `~/.aws/credentials` and `~/.aws/config`; an `http://` endpoint (a local test
    /// server) is allowed.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        let bad = |reason: &str| RemoteError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let objects: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            open_s3(url, rest).map_err(|e| bad(&e))?
        } else if let Some(path) = url.strip_prefix("file://") {
            open_dir(path).map_err(|e| bad(&e))?
        } else {
            return Err(bad("expected s3://bucket/prefix or file:///path"));
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .map_err(|e| bad(&format!("cannot start the I/O runtime: {e}")))?;
        Ok(Remote {
            url: url.trim_end_matches('/').to_string(),
            objects,
            runtime,
        })
    }

    /// The URL this remote was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the remote has the object committed (its manifest exists).
    pub fn has_object(&self, id: &ObjectId) -> Result<bool, RemoteError> {
        let path = file_path(id, MANIFEST_NAME);
        self.runtime
            .block_on(exists(self.objects.as_ref(), &path))
            .map_err(|e| self.backend(&path, e))
    }

    /// Uploads a ref (after its object: call [`Remote::push_objects`] first).
    pub fn push_ref(&self, name: &RefName, r: &Ref) -> Result<(), RemoteError> {
        let path = ref_path(name);
        let bytes = serde_json::to_vec(r).expect("refs serialize");
        self.runtime
            .block_on(self.objects.put(&path, bytes.into()))
            .map(|_| ())
            .map_err(|e| self.backend(&path, e))
    }

    /// Downloads a ref; `None` if the remote has none of that name.
    pub fn pull_ref(&self, name: &RefName) -> Result<Option<Ref>, RemoteError> {
        let path = ref_path(name);
        let bytes = match self
            .runtime
            .block_on(get_bytes(self.objects.as_ref(), &path))
        {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend(&path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RemoteError::Untrusted {
                location: self.location(&path),
                reason: format!("invalid ref: {e}"),
            })
    }

    fn location(&self, path: &RemotePath) -> String {
        format!("{}/{path}", self.url)
    }

    fn backend(&self, path: &RemotePath, source: object_store::Error) -> RemoteError {
        RemoteError::Backend {
            location: self.location(path),
            source: Box::new(source),
        }
    }
}

fn open_s3(url: &str, rest: &str) -> Result<Arc<dyn ObjectStore>, String> {
    // reqwest is built without a default TLS provider; install ring's once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
    if let Some(profile) = profile::Sources::from_env().load()? {
        builder = profile.apply(builder);
    }
    let endpoint = builder
        .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
        .unwrap_or_default();
    if endpoint.starts_with("http://") {
        builder = builder.with_allow_http(true);
    }
    // Have S3 check every part and file against a SHA-256 of the bytes we read: the
    // client computes that digest anyway to sign the payload, so it costs nothing, and
    // servers then keep per-part checksums (moto otherwise checksums whole objects
    // when completing an upload, a copy of the file in memory). AWS_CHECKSUM_ALGORITHM
    // chooses another.
    if std::env::var_os("AWS_CHECKSUM_ALGORITHM").is_none() {
        builder = builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    }
    let s3 = builder.build().map_err(|e| e.to_string())?;
    let prefix = rest
        .split_once('/')
        .map_or("", |(_, p)| p)
        .trim_matches('/');
    Ok(Arc::new(object_store::prefix::PrefixStore::new(
        s3,
        RemotePath::from(prefix),
    )))
}

fn open_dir(path: &str) -> Result<Arc<dyn ObjectStore>, String> {
    if !path.starts_with('/') {
        return Err("a file:// URL needs an absolute path: file:///abs/path".into());
    }
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    let fs =
        object_store::local::LocalFileSystem::new_with_prefix(path).map_err(|e| e.to_string())?;
    Ok(Arc::new(fs))
}

/// `objects/<kind>/<fingerprint>/<name>` on the remote.
fn file_path(id: &ObjectId, name: &str) -> RemotePath {
    RemotePath::from(format!("objects/{}/{}/{name}", id.kind, id.fingerprint))
}

/// `refs/<dag>/<stage>` on the remote.
fn ref_path(name: &RefName) -> RemotePath {
    RemotePath::from(format!("refs/{}/{}/{}", name.dag, name.config, name.stage))
}

async fn exists(objects: &dyn ObjectStore, path: &RemotePath) -> object_store::Result<bool> {
    match objects.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn get_bytes(
    objects: &dyn ObjectStore,
    path: &RemotePath,
) -> object_store::Result<bytes::Bytes> {
    objects.get(path).await?.bytes().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_and_relative_urls_are_rejected() {
        for url in ["http://x/y", "bucket/prefix", "file://relative/dir"] {
            assert!(
                matches!(Remote::open(url), Err(RemoteError::Url { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn file_remote_round_trips_an_object_and_a_ref() {
        let dir = tempfile::tempdir().unwrap();
        let a = ausa_store::Store::create(dir.path().join("a")).unwrap();
        let b = ausa_store::Store::create(dir.path().join("b")).unwrap();
        let key = serde_json::json!({"k": 1});
        let fp =
            |k: &serde_json::Value| blake3::hash(k.to_string().as_bytes()).to_hex().to_string();
        let id = ObjectId {
            kind: "k".into(),
            fingerprint: fp(&key),
        };
        // Content differs from part to part, so parts out of order would not hash.
        let staging = a.stage(&id).unwrap();
        std::fs::write(staging.path().join("f.bin"), patterned(40 << 20)).unwrap();
        staging
            .publish(&a, key.clone(), serde_json::json!({}), 0.0)
            .unwrap();
        let url = format!("file://{}/remote", dir.path().display());
        let remote = Remote::open(&url).unwrap();
        let ids = [id.clone()];
        let pushed = remote.push_objects(&a, &ids, &NoProgress).unwrap();
        assert_eq!(pushed[0].1, Transfer::Copied(40 << 20));
        assert!(remote.has_object(&id).unwrap());
        let pulled = remote.pull_objects(&b, &ids, &fp, &NoProgress).unwrap();
        assert_eq!(pulled[0].1, Transfer::Copied(40 << 20));
        let manifest =
            |s: &ausa_store::Store| std::fs::read(s.object_dir(&id).join(MANIFEST_NAME)).unwrap();
        assert_eq!(manifest(&a), manifest(&b));
        let name = ausa_store::Config::new("d", &["s.x=1"]).ref_name("s");
        let r = Ref {
            kind: id.kind.clone(),
            fingerprint: id.fingerprint.clone(),
            key,
        };
        assert_eq!(remote.pull_ref(&name).unwrap(), None);
        remote.push_ref(&name, &r).unwrap();
        assert_eq!(remote.pull_ref(&name).unwrap(), Some(r));
    }

    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 4093 + i) as u8).collect()
    }

    /// Publishes one object with one file `f.bin` of `len` bytes into `store`.
    fn object(store: &ausa_store::Store, len: usize) -> ObjectId {
        let key = serde_json::json!({ "len": len });
        let id = ObjectId {
            kind: "k".into(),
            fingerprint: blake3::hash(key.to_string().as_bytes())
                .to_hex()
                .to_string(),
        };
        let staging = store.stage(&id).unwrap();
        std::fs::write(staging.path().join("f.bin"), patterned(len)).unwrap();
        staging
            .publish(store, key, serde_json::json!({}), 0.0)
            .unwrap();
        id
    }

    #[test]
    fn damaged_local_files_are_never_pushed() {
        use std::os::unix::fs::PermissionsExt;
        // One file sent in a single PUT, one in parts (the hash is checked before the
        // PUT, and before the multipart upload is completed).
        for len in [3 << 20, 40 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let store = ausa_store::Store::create(dir.path().join("store")).unwrap();
            let id = object(&store, len);
            let file = store.object_dir(&id).join("f.bin");
            // Same size, one byte changed near the end: only the hash can tell.
            let mut bytes = std::fs::read(&file).unwrap();
            bytes[len - 10] ^= 1;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(&file, bytes).unwrap();
            let url = format!("file://{}/remote", dir.path().display());
            let remote = Remote::open(&url).unwrap();
            let err = remote
                .push_objects(&store, std::slice::from_ref(&id), &NoProgress)
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    RemoteError::Store(ausa_store::StoreError::Corrupt { .. })
                ),
                "{len}: {err}"
            );
            assert!(err.to_string().contains("f.bin"), "{err}");
            assert!(!remote.has_object(&id).unwrap());
            let pushed = dir
                .path()
                .join("remote/objects/k")
                .join(&id.fingerprint)
                .join("f.bin");
            assert!(!pushed.exists(), "{len}: a damaged file reached the remote");
        }
    }
}
