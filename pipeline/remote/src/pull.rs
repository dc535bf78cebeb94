//! Pull: validate the manifest, download into a staging dir while hashing, then
//! publish through the store's atomic publish (which checks every file again).

use std::path::{Path, PathBuf};

use ausa_store::{FileEntry, Manifest, ObjectId, Published, Store, MANIFEST_NAME};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tokio::io::AsyncWriteExt;

use crate::push::store_io;
use crate::{file_path, get_bytes, Remote, RemoteError, Transfer, TransferProgress};

/// A manifest fetched from the remote and validated, with its original bytes.
struct Fetched {
    id: ObjectId,
    bytes: bytes::Bytes,
    manifest: Manifest,
}

impl Remote {
    /// Downloads every object of `ids` that the local store lacks; returns what
    /// happened to each, in order.
    ///
    /// Remote content is untrusted: a manifest that fails the store's validation
    /// (unsafe paths, another object, a key that does not hash to the fingerprint per
    /// `fingerprint_of`), a file whose size or blake3 differ, or a truncated download is
    /// rejected with [`RemoteError::Untrusted`] and nothing of that object is published.
    /// An interrupted pull leaves only a temp dir, removed by the next pull or build.
    pub fn pull_objects(
        &self,
        store: &Store,
        ids: &[ObjectId],
        fingerprint_of: &(dyn Fn(&serde_json::Value) -> String + Sync),
        progress: &dyn TransferProgress,
    ) -> Result<Vec<(ObjectId, Transfer)>, RemoteError> {
        // Leftovers of killed pulls on this host; failing to clean is not fatal.
        let _ = store.clean_dead_temp_dirs();
        let missing: Vec<&ObjectId> = ids.iter().filter(|id| !store.has_object(id)).collect();
        let fetched = self.runtime.block_on(
            futures::stream::iter(missing)
                .map(|id| self.fetch_manifest(id, fingerprint_of))
                .buffered(crate::FILE_CONCURRENCY)
                .try_collect::<Vec<_>>(),
        )?;
        progress.start(fetched.iter().map(|f| f.manifest.total_size()).sum());
        let copied = self.runtime.block_on(
            futures::stream::iter(&fetched)
                .map(|f| self.pull_object(store, f, fingerprint_of, progress))
                .buffer_unordered(crate::OBJECT_CONCURRENCY)
                .try_collect::<Vec<_>>(),
        )?;
        Ok(ids
            .iter()
            .map(|id| {
                let t = copied
                    .iter()
                    .find(|(c, _)| c == id)
                    .map_or(Transfer::Present, |(_, t)| *t);
                (id.clone(), t)
            })
            .collect())
    }

    async fn fetch_manifest(
        &self,
        id: &ObjectId,
        fingerprint_of: &(dyn Fn(&serde_json::Value) -> String + Sync),
    ) -> Result<Fetched, RemoteError> {
        let path = file_path(id, MANIFEST_NAME);
        let bytes = match get_bytes(self.objects.as_ref(), &path).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RemoteError::NotOnRemote {
                    object: id.to_string(),
                })
            }
            Err(e) => return Err(self.backend(&path, e)),
        };
        let untrusted = |reason: String| RemoteError::Untrusted {
            location: self.location(&path),
            reason,
        };
        let manifest = Manifest::parse(&bytes, id, Path::new(&self.location(&path)))
            .map_err(|e| untrusted(e.to_string()))?;
        if fingerprint_of(&manifest.key) != id.fingerprint {
            return Err(untrusted(
                "the key in the manifest does not hash to the object's fingerprint".into(),
            ));
        }
        Ok(Fetched {
            id: id.clone(),
            bytes,
            manifest,
        })
    }

    async fn pull_object(
        &self,
        store: &Store,
        f: &Fetched,
        fingerprint_of: &(dyn Fn(&serde_json::Value) -> String + Sync),
        progress: &dyn TransferProgress,
    ) -> Result<(ObjectId, Transfer), RemoteError> {
        let staging = store.stage(&f.id)?;
        let dir = staging.path().to_path_buf();
        futures::stream::iter(&f.manifest.files)
            .map(|file| self.download(&f.id, file, &dir, progress))
            .buffer_unordered(crate::FILE_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        let origin = PathBuf::from(self.location(&file_path(&f.id, MANIFEST_NAME)));
        // Rehashes everything on disk: the store trusts no caller's word for it.
        let published = staging
            .publish_verbatim(store, &f.bytes, &origin, fingerprint_of)
            .map_err(|e| match e {
                e if e.is_corruption() => RemoteError::Untrusted {
                    location: origin.display().to_string(),
                    reason: e.to_string(),
                },
                e => RemoteError::Store(e),
            })?;
        let t = match published {
            Published::New(m) => Transfer::Copied(m.total_size()),
            Published::AlreadyPresent => Transfer::Present,
        };
        Ok((f.id.clone(), t))
    }

    /// Streams one file into the staging dir, hashing as it goes; stops at the first
    /// byte past the manifest's size and rejects short or mismatching content.
    async fn download(
        &self,
        id: &ObjectId,
        entry: &FileEntry,
        dir: &Path,
        progress: &dyn TransferProgress,
    ) -> Result<(), RemoteError> {
        let path = file_path(id, &entry.name);
        let local = dir.join(&entry.name);
        if let Some(parent) = local.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RemoteError::Store(store_io(parent, e)))?;
        }
        let untrusted = |reason: String| RemoteError::Untrusted {
            location: self.location(&path),
            reason,
        };
        let mut stream = match self.objects.get(&path).await {
            Ok(r) => r.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(untrusted("listed in the manifest but missing".into()))
            }
            Err(e) => return Err(self.backend(&path, e)),
        };
        let mut out = tokio::fs::File::create(&local)
            .await
            .map_err(|e| RemoteError::Store(store_io(&local, e)))?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.backend(&path, e))?;
            size += chunk.len() as u64;
            if size > entry.size {
                return Err(untrusted(format!(
                    "longer than the manifest's {} bytes",
                    entry.size
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| RemoteError::Store(store_io(&local, e)))?;
            progress.advance(chunk.len() as u64);
        }
        out.flush()
            .await
            .map_err(|e| RemoteError::Store(store_io(&local, e)))?;
        if size != entry.size {
            return Err(untrusted(format!(
                "truncated: {size} bytes, the manifest says {}",
                entry.size
            )));
        }
        let digest = hasher.finalize().to_hex().to_string();
        if digest != entry.blake3 {
            return Err(untrusted(format!(
                "blake3 {} does not match the manifest's {}",
                &digest[..16],
                &entry.blake3[..16.min(entry.blake3.len())]
            )));
        }
        Ok(())
    }
}
