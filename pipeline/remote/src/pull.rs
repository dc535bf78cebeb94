//! Pull: validate the manifest, download into a staging dir (checking sizes as bytes
//! arrive, flushing to disk as it goes), then publish through the store's atomic
//! publish, which hashes every file and rejects any that does not match.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ausa_store::{
    FileEntry, Manifest, ObjectId, Published, StagedFile, Staging, Store, StoreError, MANIFEST_NAME,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

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
        futures::stream::iter(&f.manifest.files)
            .map(|file| self.download(&f.id, file, &staging, progress))
            .buffer_unordered(crate::FILE_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        ausa_store::hooks::point("pull:before-publish");
        let origin = PathBuf::from(self.location(&file_path(&f.id, MANIFEST_NAME)));
        // Rehashes everything on disk: the store trusts no caller's word for it.
        let published = staging
            .publish_verbatim(store, &f.bytes, &origin, fingerprint_of)
            .map_err(|e| match e {
                StoreError::Corrupt { problems, .. } => RemoteError::Untrusted {
                    location: self.location(&file_path(&f.id, "")),
                    reason: problems.join("; "),
                },
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

    /// Streams one file into the staging dir. Stops at the first byte past the
    /// manifest's size and rejects a short file. The store hashes the bytes as they
    /// are written ([`ausa_store::StagedFile`]) and checks the digest against the
    /// manifest when it publishes the object, without reading the file again.
    async fn download(
        &self,
        id: &ObjectId,
        entry: &FileEntry,
        staging: &Staging,
        progress: &dyn TransferProgress,
    ) -> Result<(), RemoteError> {
        let path = file_path(id, &entry.name);
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
        let mut out = FileWriter::create(staging, &entry.name)?;
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
            progress.advance(chunk.len() as u64);
            out.write(chunk).await?;
        }
        out.finish().await?;
        if size != entry.size {
            return Err(untrusted(format!(
                "truncated: {size} bytes, the manifest says {}",
                entry.size
            )));
        }
        Ok(())
    }
}

/// Bytes collected before one write on a blocking thread.
const WRITE_BATCH: usize = 4 << 20;
/// Bytes written between two early flushes to disk.
const SYNC_EVERY: u64 = 64 << 20;

/// Writes a downloaded file on blocking threads, one batch in flight while the next
/// arrives, and flushes it to disk as it goes (`fdatasync` on a second handle, so
/// writing goes on meanwhile): the store's fsync at publish then finds little left,
/// instead of the whole file, to write out.
struct FileWriter {
    path: PathBuf,
    /// The file, while no write is in flight.
    file: Option<StagedFile>,
    writing: Option<tokio::task::JoinHandle<std::io::Result<StagedFile>>>,
    batch: Vec<Bytes>,
    batch_len: usize,
    /// A second handle for early flushes.
    syncer: Arc<std::fs::File>,
    syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    unsynced: u64,
}

impl FileWriter {
    fn create(staging: &Staging, name: &str) -> Result<FileWriter, RemoteError> {
        let file = staging.create_file(name)?;
        let path = file.path().to_path_buf();
        let syncer = file
            .sync_handle()
            .map_err(|e| RemoteError::Store(store_io(&path, e)))?;
        Ok(FileWriter {
            path,
            file: Some(file),
            writing: None,
            batch: Vec::new(),
            batch_len: 0,
            syncer: Arc::new(syncer),
            syncing: None,
            unsynced: 0,
        })
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), RemoteError> {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Starts writing the batch (after the previous write finished), and an early
    /// flush to disk if enough was written since the last one finished.
    async fn flush(&mut self) -> Result<(), RemoteError> {
        let mut file = self.wait_write().await?;
        let batch = std::mem::take(&mut self.batch);
        self.unsynced += std::mem::take(&mut self.batch_len) as u64;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            batch.iter().try_for_each(|b| file.write_all(b))?;
            Ok(file)
        }));
        let idle = self.syncing.as_ref().is_none_or(|s| s.is_finished());
        if self.unsynced >= SYNC_EVERY && idle {
            self.wait_sync().await?;
            self.unsynced = 0;
            let syncer = self.syncer.clone();
            self.syncing = Some(tokio::task::spawn_blocking(move || syncer.sync_data()));
        }
        Ok(())
    }

    /// Writes what is left and waits for every write and flush: an error of an early
    /// flush must not be lost (a later fsync may not report it again).
    async fn finish(mut self) -> Result<(), RemoteError> {
        if !self.batch.is_empty() {
            self.flush().await?;
        }
        let file = self.wait_write().await?;
        self.wait_sync().await?;
        file.finish();
        Ok(())
    }

    async fn wait_write(&mut self) -> Result<StagedFile, RemoteError> {
        match (self.writing.take(), self.file.take()) {
            (Some(w), _) => w
                .await
                .expect("the write task does not panic")
                .map_err(|e| RemoteError::Store(store_io(&self.path, e))),
            (None, Some(file)) => Ok(file),
            (None, None) => unreachable!("a FileWriter always has its file or a write"),
        }
    }

    async fn wait_sync(&mut self) -> Result<(), RemoteError> {
        match self.syncing.take() {
            Some(s) => s
                .await
                .expect("the flush task does not panic")
                .map_err(|e| RemoteError::Store(store_io(&self.path, e))),
            None => Ok(()),
        }
    }
}
