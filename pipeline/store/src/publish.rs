//! Building an object in a temp dir and publishing it atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::fsutil::{list_files, remove_tree, set_tree_mode, sync_dir, write_atomic};
use crate::hash::hash_file;
use crate::hooks::point;
use crate::manifest::{
    check_file_name, manifest_digest, BuildInfo, FileEntry, Manifest, MANIFEST_DIGEST_NAME,
    MANIFEST_FORMAT, MANIFEST_NAME,
};
use crate::{ObjectId, Store, StoreError};

/// A temp dir a stage writes an object into. Dropping it unpublished removes it, so a
/// failed stage (full disk included) leaves nothing behind.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    id: ObjectId,
    published: bool,
    /// Replace an existing object (`--force`) instead of deferring to it.
    replace: bool,
    /// Digests of the files written through [`Staging::create_file`], by name.
    written: Arc<Mutex<BTreeMap<String, FileEntry>>>,
}

/// A file of a staging dir written through the store, which hashes every byte as it is
/// written so that publishing needs no second read of the file (a pull of a 1 GiB
/// object saves a full blake3 pass after the download).
///
/// Invariant: the file is written only through this handle. [`Staging::publish_verbatim`]
/// and [`Staging::publish`] use the recorded digest when the file's size on disk still
/// matches, and rehash it otherwise.
#[derive(Debug)]
pub struct StagedFile {
    name: String,
    path: PathBuf,
    file: std::fs::File,
    hasher: blake3::Hasher,
    size: u64,
    written: Arc<Mutex<BTreeMap<String, FileEntry>>>,
}

impl StagedFile {
    /// Appends `bytes`, hashing them.
    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// The file's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second handle to the same file, for flushing it to disk (`sync_data`) while
    /// writing goes on. It must not be used to write.
    pub fn sync_handle(&self) -> std::io::Result<std::fs::File> {
        self.file.try_clone()
    }

    /// Records the file's size and digest for the publish.
    pub fn finish(self) {
        let entry = FileEntry {
            name: self.name.clone(),
            size: self.size,
            blake3: self.hasher.finalize().to_hex().to_string(),
        };
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.insert(self.name, entry);
    }
}

/// The outcome of [`Staging::publish`].
#[derive(Debug)]
pub enum Published {
    /// Our files are now the object (with `replace`: they replaced the old copy).
    New(Box<Manifest>),
    /// Another builder published the same fingerprint first; ours was discarded.
    AlreadyPresent,
}

impl Store {
    /// Creates an empty temp dir for building `id`.
    pub fn stage(&self, id: &ObjectId) -> Result<Staging, StoreError> {
        self.stage_with(id, false)
    }

    /// Creates an empty temp dir for building a replacement of `id` (`--force`): its
    /// publish swaps it in atomically even when the object exists. Hold the object's
    /// lock ([`Store::lock_for_replace`]) meanwhile.
    pub fn stage_replacement(&self, id: &ObjectId) -> Result<Staging, StoreError> {
        self.stage_with(id, true)
    }

    fn stage_with(&self, id: &ObjectId, replace: bool) -> Result<Staging, StoreError> {
        let name = format!(
            "{}.{}.{}",
            self.identity.token(),
            id.kind,
            &id.fingerprint[..16.min(id.fingerprint.len())]
        );
        let dir = self.ensure_dir("tmp")?.join(name);
        remove_tree(&dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(Staging {
            dir,
            id: id.clone(),
            published: false,
            replace,
            written: Arc::default(),
        })
    }
}

impl Staging {
    /// The directory to write the object's files into.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the file `name` (a plain relative path, see [`check_file_name`]) and
    /// its parent directories, to be written through the returned [`StagedFile`].
    pub fn create_file(&self, name: &str) -> Result<StagedFile, StoreError> {
        let path = self.dir.join(name);
        check_file_name(name).map_err(|reason| StoreError::Unpublishable {
            path: path.clone(),
            reason: reason.into(),
        })?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        let file = std::fs::File::create(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(StagedFile {
            name: name.to_string(),
            path,
            file,
            hasher: blake3::Hasher::new(),
            size: 0,
            written: self.written.clone(),
        })
    }

    /// Hashes and fsyncs every file, writes the manifest, and renames the directory to
    /// `objects/<kind>/<fingerprint>`; then makes it read-only.
    pub fn publish(
        self,
        store: &Store,
        key: serde_json::Value,
        stats: serde_json::Value,
        seconds: f64,
    ) -> Result<Published, StoreError> {
        point("publish:data-written");
        let files = self.hash_and_sync()?;
        point("publish:synced");
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            kind: self.id.kind.clone(),
            fingerprint: self.id.fingerprint.clone(),
            key,
            files,
            stats,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            built: BuildInfo {
                host: store.identity.host.clone(),
                time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                seconds,
            },
        };
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        self.commit(store, &text, manifest)
    }

    /// Publishes an object copied from elsewhere (a remote) under its original
    /// manifest, kept byte for byte so the copy is identical to the source.
    ///
    /// The bytes are untrusted: the manifest must pass [`Manifest::parse`] for this
    /// staging's object (no unsafe paths), its key must hash to the fingerprint
    /// (`fingerprint_of`, as in [`Store::verify_object`]), and the staged files must be
    /// exactly the listed ones with the listed sizes and blake3. Anything else is a
    /// [`StoreError::Corrupt`] or [`StoreError::Manifest`], and nothing is published.
    pub fn publish_verbatim(
        self,
        store: &Store,
        manifest_bytes: &[u8],
        origin: &Path,
        fingerprint_of: &dyn Fn(&serde_json::Value) -> String,
    ) -> Result<Published, StoreError> {
        let manifest = Manifest::parse(manifest_bytes, &self.id, origin)?;
        if fingerprint_of(&manifest.key) != self.id.fingerprint {
            return Err(StoreError::Manifest {
                path: origin.to_path_buf(),
                reason: "its key does not hash to the object's fingerprint".into(),
            });
        }
        let found = self.hash_and_sync()?;
        let problems = compare_files(&manifest.files, &found);
        if !problems.is_empty() {
            return Err(StoreError::Corrupt {
                dir: origin.to_path_buf(),
                problems,
            });
        }
        self.commit(store, manifest_bytes, manifest)
    }

    /// Writes the manifest (the commit point) and its digest, and renames the dir into
    /// `objects/` (swapping it with the old copy when replacing).
    fn commit(
        mut self,
        store: &Store,
        manifest_bytes: &[u8],
        manifest: Manifest,
    ) -> Result<Published, StoreError> {
        point("publish:before-manifest");
        write_atomic(&self.dir.join(MANIFEST_NAME), manifest_bytes)?;
        write_atomic(
            &self.dir.join(MANIFEST_DIGEST_NAME),
            manifest_digest(manifest_bytes).as_bytes(),
        )?;
        point("publish:after-manifest");
        // Writable until renamed: moving a directory to another parent updates its `..`.
        set_tree_mode(&self.dir, 0o755, 0o444)?;
        let target = store.object_dir(&self.id);
        let parent = target.parent().expect("object dirs have a parent");
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        if self.replace && std::fs::symlink_metadata(&target).is_ok() {
            self.swap_in(store, &target)?;
        } else {
            match std::fs::rename(&self.dir, &target) {
                Ok(()) => {}
                Err(_) if store.has_object(&self.id) => return Ok(Published::AlreadyPresent),
                Err(e) => return Err(StoreError::io(&target, e)),
            }
        }
        self.published = true;
        point("publish:renamed");
        sync_dir(parent)?;
        set_tree_mode(&target, store.dir_mode, 0o444)?;
        Ok(Published::New(Box::new(manifest)))
    }

    /// Replaces the object at `target` by ours in one atomic exchange (or, where the
    /// filesystem cannot exchange, two renames under the object's lock, which every
    /// builder waits for), then disposes of the old copy.
    fn swap_in(&mut self, store: &Store, target: &Path) -> Result<(), StoreError> {
        let is_link = std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            // Moving the old copy out of objects/ updates its `..`: it must be writable
            // (in a group store it is already, for members who do not own it).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755));
        }
        let trash = store.trash_path(&self.id);
        match crate::exchange::exchange(&self.dir, target) {
            Ok(()) => {
                // Our staging path now holds the old copy.
                std::fs::rename(&self.dir, &trash).map_err(|e| StoreError::io(&self.dir, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                std::fs::rename(target, &trash).map_err(|e| StoreError::io(target, e))?;
                std::fs::rename(&self.dir, target).map_err(|e| StoreError::io(target, e))?;
            }
            Err(e) => return Err(StoreError::io(target, e)),
        }
        store.dispose_trash(&self.id, &trash);
        Ok(())
    }

    fn hash_and_sync(&self) -> Result<Vec<FileEntry>, StoreError> {
        let names = list_files(&self.dir)?;
        for reserved in [MANIFEST_NAME, MANIFEST_DIGEST_NAME] {
            if names.iter().any(|n| n == Path::new(reserved)) {
                return Err(StoreError::Unpublishable {
                    path: self.dir.join(reserved),
                    reason: format!("a stage may not write its own {reserved}"),
                });
            }
        }
        let entries = names
            .par_iter()
            .map(|rel| {
                let path = self.dir.join(rel);
                let size_now = std::fs::File::open(&path)
                    .and_then(|f| f.sync_all().and_then(|()| f.metadata()))
                    .map_err(|e| StoreError::io(&path, e))?
                    .len();
                let name = rel.to_str().ok_or_else(|| StoreError::Unpublishable {
                    path: path.clone(),
                    reason: "file names must be UTF-8".into(),
                })?;
                if let Some(entry) = self.hashed_while_written(name, size_now) {
                    return Ok(entry);
                }
                let (blake3, size) = hash_file(&path).map_err(|e| StoreError::io(&path, e))?;
                Ok(FileEntry {
                    name: name.to_string(),
                    size,
                    blake3,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        sync_dirs(&self.dir)?;
        Ok(entries)
    }

    /// The digest recorded by [`StagedFile::finish`] for `name`, if the file on disk
    /// still has the size it was written with (`size_now`).
    fn hashed_while_written(&self, name: &str, size_now: u64) -> Option<FileEntry> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written
            .get(name)
            .filter(|entry| entry.size == size_now)
            .cloned()
    }
}

/// One line per difference between the listed files and the staged ones.
fn compare_files(listed: &[FileEntry], found: &[FileEntry]) -> Vec<String> {
    let found: std::collections::BTreeMap<&str, &FileEntry> =
        found.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut problems = Vec::new();
    for want in listed {
        match found.get(want.name.as_str()) {
            None => problems.push(format!("{}: missing", want.name)),
            Some(got) if got.size != want.size => problems.push(format!(
                "{}: {} bytes, the manifest says {} (truncated?)",
                want.name, got.size, want.size
            )),
            Some(got) if got.blake3 != want.blake3 => problems.push(format!(
                "{}: blake3 {} does not match the manifest's {}",
                want.name,
                &got.blake3[..16],
                &want.blake3[..16.min(want.blake3.len())]
            )),
            Some(_) => {}
        }
    }
    let names: std::collections::BTreeSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
    for name in found.keys().filter(|n| !names.contains(*n)) {
        problems.push(format!("{name}: not in the manifest"));
    }
    problems
}

fn sync_dirs(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(dir, e))?
        .flatten()
    {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            sync_dirs(&entry.path())?;
        }
    }
    sync_dir(dir)
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = remove_tree(&self.dir);
        }
    }
}

impl Store {
    /// Where a removed or replaced copy of `id` waits to be deleted: in `tmp/`, named
    /// `<owner>.trash.<kind>.<fingerprint>` so gc knows whose object it was.
    pub(crate) fn trash_path(&self, id: &ObjectId) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root().join("tmp").join(format!(
            "{}.trash.{}.{}.{n}",
            self.identity.token(),
            id.kind,
            id.fingerprint
        ))
    }

    /// Deletes a removed copy of `id` now, unless a live pin says someone may still be
    /// reading it (on NFS, deleting a file another client reads breaks its reads); then
    /// `gc` deletes it once the pins are gone.
    pub(crate) fn dispose_trash(&self, id: &ObjectId, trash: &Path) {
        let pinned = crate::fsutil::server_now(&self.root().join("pins"))
            .and_then(|now| self.lease_files("pins", now))
            .map_or(true, |pins| Store::pinned(&pins, id));
        if !pinned {
            let _ = remove_tree(trash);
        }
    }

    /// Removes an object: it is first renamed into `tmp/`, so readers never see a
    /// half-deleted object. Take its lock first (gc does, see [`Store::gc`]).
    pub fn remove_object(&self, id: &ObjectId) -> Result<(), StoreError> {
        let dir = self.object_dir(id);
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        if meta.is_dir() {
            // Moving a directory to another parent updates its `..`: make it writable
            // (in a group store it is already, for members who do not own it).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        }
        self.ensure_dir("tmp")?;
        let trash = self.trash_path(id);
        match std::fs::rename(&dir, &trash) {
            Ok(()) => remove_tree(&trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id() -> ObjectId {
        ObjectId {
            kind: "k".into(),
            fingerprint: "ab".repeat(32),
        }
    }

    /// Files written through `create_file` publish with the digest computed while
    /// writing, equal to a fresh hash of the file; a file changed behind the handle's
    /// back (here: grown) is hashed again, so its digest is still the truth.
    #[test]
    fn staged_files_are_hashed_while_written_and_rehashed_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let staging = store.stage(&id()).unwrap();
        let mut a = staging.create_file("sub/a.bin").unwrap();
        a.write_all(b"hel").unwrap();
        a.write_all(b"lo").unwrap();
        a.finish();
        let mut b = staging.create_file("b.bin").unwrap();
        b.write_all(b"short").unwrap();
        b.finish();
        std::fs::OpenOptions::new()
            .append(true)
            .open(staging.path().join("b.bin"))
            .unwrap()
            .write_all(b" and longer")
            .unwrap();
        assert!(staging.create_file("../escape").is_err());
        assert!(staging.create_file(MANIFEST_NAME).is_err());
        let entries = staging.hash_and_sync().unwrap();
        let digest = |bytes: &[u8]| blake3::hash(bytes).to_hex().to_string();
        let find = |name: &str| entries.iter().find(|e| e.name == name).unwrap().clone();
        assert_eq!(find("sub/a.bin").blake3, digest(b"hello"));
        assert_eq!(find("sub/a.bin").size, 5);
        assert_eq!(find("b.bin").blake3, digest(b"short and longer"));
    }

    /// A verbatim publish of content written through `create_file` still rejects
    /// bytes that do not match the manifest.
    #[test]
    fn verbatim_publish_rejects_tampered_staged_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            kind: id().kind,
            fingerprint: id().fingerprint,
            key: serde_json::json!({"k": 1}),
            files: vec![FileEntry {
                name: "a.bin".into(),
                size: 5,
                blake3: blake3::hash(b"hello").to_hex().to_string(),
            }],
            stats: serde_json::json!({}),
            tool_version: "t".into(),
            built: BuildInfo {
                host: "h".into(),
                time: "2026-01-01T00:00:00Z".into(),
                seconds: 0.0,
            },
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let fingerprint_of = |_: &serde_json::Value| id().fingerprint;
        let publish = |content: &[u8]| {
            let staging = store.stage(&id()).unwrap();
            let mut a = staging.create_file("a.bin").unwrap();
            a.write_all(content).unwrap();
            a.finish();
            staging.publish_verbatim(&store, &bytes, Path::new("remote"), &fingerprint_of)
        };
        let err = publish(b"jello").unwrap_err();
        assert!(err.to_string().contains("a.bin"), "{err}");
        assert!(!store.has_object(&id()));
        assert!(matches!(publish(b"hello"), Ok(Published::New(_))));
        assert!(store.has_object(&id()));
    }

    #[test]
    fn publish_makes_a_complete_read_only_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let staging = store.stage(&id()).unwrap();
        std::fs::write(staging.path().join("a.bin"), b"hello").unwrap();
        std::fs::create_dir(staging.path().join("sub")).unwrap();
        std::fs::write(staging.path().join("sub/b.bin"), b"x").unwrap();
        let tmp_dir = staging.path().to_path_buf();
        let Published::New(m) = staging
            .publish(
                &store,
                serde_json::json!({"k": 1}),
                serde_json::json!({}),
                0.1,
            )
            .unwrap()
        else {
            panic!("expected a new object")
        };
        assert!(!tmp_dir.exists());
        let names: Vec<_> = m.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.bin", "sub/b.bin"]);
        assert_eq!(
            m.files[0].blake3,
            blake3::hash(b"hello").to_hex().to_string()
        );
        let obj = store.object_dir(&id());
        assert_eq!(Manifest::read(&obj).unwrap(), *m);
        let mode = std::fs::metadata(obj.join("a.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o444);
        assert_eq!(
            std::fs::metadata(&obj).unwrap().permissions().mode() & 0o777,
            0o555
        );
    }

    #[test]
    fn second_publisher_of_same_fingerprint_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let a = store.stage(&id()).unwrap();
        std::fs::write(a.path().join("f"), b"1").unwrap();
        let b_dir = store.root().join("tmp/other");
        std::fs::create_dir_all(&b_dir).unwrap();
        let b = Staging {
            dir: b_dir.clone(),
            id: id(),
            published: false,
            replace: false,
            written: Arc::default(),
        };
        std::fs::write(b.path().join("f"), b"1").unwrap();
        assert!(matches!(
            a.publish(&store, serde_json::json!({}), serde_json::json!({}), 0.0)
                .unwrap(),
            Published::New(_)
        ));
        assert!(matches!(
            b.publish(&store, serde_json::json!({}), serde_json::json!({}), 0.0)
                .unwrap(),
            Published::AlreadyPresent
        ));
        assert!(!b_dir.exists(), "the losing copy is removed");
    }

    fn key_hash(key: &serde_json::Value) -> String {
        blake3::hash(key.to_string().as_bytes())
            .to_hex()
            .to_string()
    }

    fn verbatim_id() -> (ObjectId, serde_json::Value) {
        let key = serde_json::json!({"k": 2});
        let id = ObjectId {
            kind: "k".into(),
            fingerprint: key_hash(&key),
        };
        (id, key)
    }

    fn manifest_bytes(id: &ObjectId, key: &serde_json::Value, files: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format": MANIFEST_FORMAT, "kind": id.kind, "fingerprint": id.fingerprint,
            "key": key, "files": files, "stats": {}, "tool_version": "0",
            "built": {"host": "h", "time": "t", "seconds": 0.0}
        }))
        .unwrap()
    }

    #[test]
    fn publish_verbatim_keeps_manifest_bytes_and_rejects_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let (id, key) = verbatim_id();
        let digest = blake3::hash(b"hello").to_hex().to_string();
        let good = manifest_bytes(
            &id,
            &key,
            serde_json::json!([{"name": "a", "size": 5, "blake3": digest}]),
        );
        let origin = Path::new("remote");
        for (content, bytes) in [
            (&b"hellO"[..], good.clone()),
            (&b"hell"[..], good.clone()),
            (
                &b"hello"[..],
                manifest_bytes(
                    &id,
                    &key,
                    serde_json::json!([{"name": "../a", "size": 5, "blake3": digest}]),
                ),
            ),
            (
                &b"hello"[..],
                manifest_bytes(
                    &id,
                    &serde_json::json!({"k": 3}),
                    serde_json::json!([{"name": "a", "size": 5, "blake3": digest}]),
                ),
            ),
        ] {
            let s = store.stage(&id).unwrap();
            std::fs::write(s.path().join("a"), content).unwrap();
            assert!(s
                .publish_verbatim(&store, &bytes, origin, &key_hash)
                .is_err());
            assert!(!store.has_object(&id));
        }
        let s = store.stage(&id).unwrap();
        std::fs::write(s.path().join("a"), b"hello").unwrap();
        let published = s
            .publish_verbatim(&store, &good, origin, &key_hash)
            .unwrap();
        assert!(matches!(published, Published::New(_)));
        let obj = store.object_dir(&id);
        assert_eq!(std::fs::read(obj.join(MANIFEST_NAME)).unwrap(), good);
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let s = store.stage(&id()).unwrap();
        std::fs::write(s.path().join("partial"), b"...").unwrap();
        drop(s);
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0
        );
        assert!(!store.has_object(&id()));
    }

    #[test]
    fn remove_object_deletes_read_only_trees() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let s = store.stage(&id()).unwrap();
        std::fs::write(s.path().join("f"), b"1").unwrap();
        s.publish(&store, serde_json::json!({}), serde_json::json!({}), 0.0)
            .unwrap();
        store.remove_object(&id()).unwrap();
        assert!(!store.object_dir(&id()).exists());
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0
        );
    }
}
