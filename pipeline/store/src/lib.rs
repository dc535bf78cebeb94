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
//!     manifest.blake3               blake3 of manifest.json's bytes (edits to it are caught)
//!   refs/<dag>/<config>/<stage>     JSON: which object a configuration's stage last built
//!   refs/<dag>/<config>/.config     JSON: the configuration (DAG + overrides)
//!   locks/<kind>.<fingerprint>.lock per-object lock (build, replace or gc), O_EXCL + heartbeat
//!   pins/<kind>.<fingerprint>.<owner>.<n>   "about to read this object": gc keeps it
//!   tmp/<host>.<pid>.<nonce>.<kind>.<fp16>/   a build in progress, renamed into objects/ when done
//!   cache/stat/<id>                 content digests of external input files, keyed by stat data
//! ```
//!
//! A store is a directory holding `objects/`. [`Store::create`] makes one (commands that
//! write: build, pull); [`Store::open`] refuses a path that is not one, so a typo in
//! `--store` does not silently start an empty cache. Subdirectories other than
//! `objects/` are created when first written, so reading a store needs no write access.
//!
//! Writers build in `tmp/`, fsync every file, write the manifest, and publish with one
//! atomic `rename(2)` into `objects/`. A reader therefore sees either no object or a
//! complete one; a killed build leaves only a temp dir and a lock file, which the next
//! run (or `ausa gc`) removes. Published objects are never modified in place.
//!
//! ```no_run
//! let store = ausa_store::Store::create(ausa_store::Store::default_root(None)).unwrap();
//! for object in store.list_objects().unwrap() {
//!     println!("{}/{}", object.kind, object.fingerprint);
//! }
//! ```

mod error;
mod exchange;
mod fsutil;
mod gc;
mod hash;
pub mod hooks;
mod lock;
mod manifest;
mod pin;
mod publish;
mod refs;
mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::StoreError;
pub use gc::{GcOptions, GcReport};
pub use hash::{hash_file, StatCache};
pub use lock::{is_locked, try_lock_path, Acquired, Held, LockGuard, LockHolder};
pub use manifest::{
    check_file_name, BuildInfo, FileEntry, Manifest, MANIFEST_DIGEST_NAME, MANIFEST_FORMAT,
    MANIFEST_NAME,
};
pub use pin::Pin;
pub use publish::{Published, StagedFile, Staging};
pub use refs::{Config, ConfigInfo, Ref, RefEntry, RefName, DEFAULT_CONFIG, LEGACY_CONFIG};
pub use verify::{Health, Problem, VerifyMode};

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
    /// Mode of published object directories: `0o555`, or `0o775` in a store whose top
    /// directory is group-writable, so every member of the group can gc and `--force`.
    dir_mode: u32,
}

/// How long a lock may go without a heartbeat before others take it over.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The subdirectories of a store (`objects` first: it marks a directory as a store).
const SUBDIRS: [&str; 6] = ["objects", "refs", "locks", "pins", "tmp", "cache/stat"];

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

    /// A handle on the store at `root` without looking at it: a missing store reads as
    /// an empty one (for `build --dry-run`), and writes create what they need.
    ///
    /// The lock lease is 30 s unless `AUSA_LOCK_LEASE_MS` says otherwise (tests use a
    /// short lease to exercise takeover).
    pub fn at(root: impl Into<PathBuf>) -> Store {
        let root = root.into();
        let lease = std::env::var("AUSA_LOCK_LEASE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_LEASE);
        let group = std::fs::metadata(&root).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o020 != 0
        });
        Store {
            root,
            identity: fsutil::ProcessIdentity::current(),
            lease,
            dir_mode: if group { 0o775 } else { 0o555 },
        }
    }

    /// Opens the existing store at `root`. Writes nothing, so it works on a read-only
    /// store; fails with [`StoreError::NoStore`] when `root` is not a store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        check_root(&root)?;
        if !root.join("objects").is_dir() {
            return Err(StoreError::NoStore {
                root,
                reason: "it has no objects/ directory".into(),
            });
        }
        Ok(Store::at(root))
    }

    /// Opens the store at `root`, creating it if needed (for commands that write).
    /// An existing store is not written to.
    pub fn create(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        match check_root(&root) {
            Ok(()) | Err(StoreError::NoStore { .. }) => {}
            Err(e) => return Err(e),
        }
        if !root.join("objects").is_dir() {
            for sub in SUBDIRS {
                let dir = root.join(sub);
                std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            }
        }
        Ok(Store::at(root))
    }

    /// Creates `sub` (one of the store's subdirectories) if missing; a stat otherwise.
    pub(crate) fn ensure_dir(&self, sub: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(sub);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        Ok(dir)
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

    /// Whether the object is published: its directory is a real directory (not a
    /// symlink) holding a regular-file manifest.
    pub fn has_object(&self, id: &ObjectId) -> bool {
        let dir = self.object_dir(id);
        std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
            && std::fs::symlink_metadata(dir.join(MANIFEST_NAME)).is_ok_and(|m| m.is_file())
    }

    /// Every published-looking object directory, sorted (symlinked ones included, so
    /// that `verify` and `ls` can reject them).
    pub fn list_objects(&self) -> Result<Vec<ObjectId>, StoreError> {
        let objects = self.root.join("objects");
        let mut out = Vec::new();
        for kind in fsutil::sorted_dir_names(&objects)? {
            for fingerprint in fsutil::sorted_names(&objects.join(&kind), true)? {
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

/// `root` must be a directory if it exists at all.
fn check_root(root: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::NotADirectory {
            root: root.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NoStore {
            root: root.to_path_buf(),
            reason: "it does not exist".into(),
        }),
        Err(e) => Err(StoreError::io(root, e)),
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
    fn create_makes_the_layout_and_open_refuses_what_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("s");
        assert!(matches!(
            Store::open(&missing),
            Err(StoreError::NoStore { .. })
        ));
        assert!(!missing.exists(), "open creates nothing");
        let store = Store::create(&missing).unwrap();
        for sub in SUBDIRS {
            assert!(store.root().join(sub).is_dir(), "{sub}");
        }
        assert!(store.list_objects().unwrap().is_empty());
        Store::open(&missing).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            Store::open(&file),
            Err(StoreError::NotADirectory { .. })
        ));
        assert!(matches!(
            Store::create(&file),
            Err(StoreError::NotADirectory { .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(
            Store::open(&empty),
            Err(StoreError::NoStore { .. })
        ));
    }
}
