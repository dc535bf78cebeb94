//! The content-addressed object store of ausa.
//!
//! This crate owns the store directory: objects, manifests, refs, lock files, temp
//! dirs, the stat cache, hashing, verification and garbage collection. It knows
//! nothing about stages, DAG files or artifact formats; an object is a directory of
//! files plus a manifest.
//!
//! # Layout
//!
//! ```text
//! <store>/
//!   objects/<kind>/<fingerprint>/   published objects, read-only (files 0444, dirs 0555)
//!     manifest.json                 the commit point: lists every file with size and blake3
//!     ...                           the stage's files
//!   refs/<dag>/<stage>              JSON: which object a DAG's stage last built (and its key)
//!   locks/<kind>.<fingerprint>.lock build lock, created with O_EXCL, kept alive by a heartbeat
//!   tmp/<host>.<pid>.<nonce>.<kind>.<fp16>/   a build in progress, renamed into objects/ when done
//!   cache/stat/<id>                 content digests of external input files, keyed by stat data
//! ```
//!
//! Writers build in `tmp/`, fsync every file, write the manifest, and publish with one
//! atomic `rename(2)` into `objects/`. A reader therefore sees either no object or a
//! complete one; a killed build leaves only a temp dir and a lock file, which the next
//! run (or `ausa gc`) removes. Published objects are never modified in place.
//!
//! ```no_run
//! let store = ausa_store::Store::open(ausa_store::Store::default_root(None)).unwrap();
//! for object in store.list_objects().unwrap() {
//!     println!("{}/{}", object.kind, object.fingerprint);
//! }
//! ```

mod error;
mod fsutil;
mod gc;
mod hash;
mod lock;
mod manifest;
mod publish;
mod refs;
mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::StoreError;
pub use gc::GcReport;
pub use hash::{hash_file, StatCache};
pub use lock::{Acquired, LockHolder};
pub use manifest::{
    check_file_name, BuildInfo, FileEntry, Manifest, MANIFEST_FORMAT, MANIFEST_NAME,
};
pub use publish::{Published, StagedFile, Staging};
pub use refs::{Ref, RefEntry, RefName};
pub use verify::{Problem, VerifyMode};

/// Identifies an object: its stage kind and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectId {
    /// Stage kind (first path component under `objects/`).
    pub kind: String,
    /// 64 hex chars of blake3.
    pub fingerprint: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.fingerprint)
    }
}

/// An open store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    identity: fsutil::ProcessIdentity,
    lease: Duration,
}

/// How long a lock may go without a heartbeat before others take it over.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl Store {
    /// The store directory to use: `explicit` (`--store`), else `$AUSA_STORE`, else
    /// `$XDG_CACHE_HOME/ausa`, else `~/.cache/ausa`.
    pub fn default_root(explicit: Option<&Path>) -> PathBuf {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        explicit
            .map(Path::to_path_buf)
            .or_else(|| env("AUSA_STORE"))
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("ausa")))
            .or_else(|| env("HOME").map(|p| p.join(".cache").join("ausa")))
            .unwrap_or_else(|| PathBuf::from(".ausa-store"))
    }

    /// Opens (creating if needed) the store at `root`.
    ///
    /// The lock lease is 30 s unless `AUSA_LOCK_LEASE_MS` says otherwise (tests use a
    /// short lease to exercise takeover).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for sub in ["objects", "refs", "locks", "tmp", "cache/stat"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        let lease = std::env::var("AUSA_LOCK_LEASE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_LEASE);
        Ok(Store {
            root,
            identity: fsutil::ProcessIdentity::current(),
            lease,
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of an object (which may not exist).
    pub fn object_dir(&self, id: &ObjectId) -> PathBuf {
        self.root
            .join("objects")
            .join(&id.kind)
            .join(&id.fingerprint)
    }

    /// Whether the object is published (its manifest exists).
    pub fn has_object(&self, id: &ObjectId) -> bool {
        self.object_dir(id).join(MANIFEST_NAME).is_file()
    }

    /// Every published-looking object directory, sorted.
    pub fn list_objects(&self) -> Result<Vec<ObjectId>, StoreError> {
        let objects = self.root.join("objects");
        let mut out = Vec::new();
        for kind in fsutil::sorted_dir_names(&objects)? {
            for fingerprint in fsutil::sorted_dir_names(&objects.join(&kind))? {
                out.push(ObjectId {
                    kind: kind.clone(),
                    fingerprint,
                });
            }
        }
        Ok(out)
    }

    /// Removes temp dirs left by processes of this host that are no longer running.
    /// Cheap; run at the start of every build.
    pub fn clean_dead_temp_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        gc::remove_temp_dirs(self, |owner| owner.is_dead_on_this_host(&self.identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_prefers_explicit_path() {
        assert_eq!(
            Store::default_root(Some(Path::new("/x/y"))),
            PathBuf::from("/x/y")
        );
    }

    #[test]
    fn open_creates_layout_and_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        for sub in ["objects", "refs", "locks", "tmp", "cache/stat"] {
            assert!(store.root().join(sub).is_dir(), "{sub}");
        }
        assert!(store.list_objects().unwrap().is_empty());
    }
}
