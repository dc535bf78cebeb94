//! Push: files first (in parallel, large ones in parts), the manifest last.
//!
//! Every byte is hashed while it is read for upload, instead of in a separate
//! verification pass first: the push costs one read of the object, not two, and the
//! hashing overlaps the network. A file whose blake3 does not match its manifest is
//! never completed on the remote (a single PUT is sent only after its hash checks, a
//! multipart upload is aborted before its completion), and the manifest is uploaded
//! only after every file checked, so a damaged local object is still never pushed.

use std::path::{Path, PathBuf};

use ausa_store::{FileEntry, Manifest, ObjectId, Store, StoreError, VerifyMode, MANIFEST_NAME};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::{
    exists, file_path, Remote, RemoteError, Transfer, TransferProgress, FILE_CONCURRENCY,
    MAX_PARTS, MULTIPART_THRESHOLD, OBJECT_CONCURRENCY, PART_SIZE, PUSH_BODIES,
};

impl Remote {
    /// Uploads every object of `ids` that the remote lacks; returns what happened to
    /// each, in order.
    ///
    /// Each local object's files are checked against its manifest (sizes up front,
    /// blake3 while they are read for upload): a damaged object is never pushed and
    /// gives [`StoreError::Corrupt`]. Its manifest is uploaded only after all its
    /// files, so pullers never see a partial object. Files already on the remote with
    /// the right size (an earlier, interrupted push) are not sent again. Two machines
    /// pushing the same object at once write the same bytes to the same names, which
    /// is harmless.
    pub fn push_objects(
        &self,
        store: &Store,
        ids: &[ObjectId],
        progress: &dyn TransferProgress,
    ) -> Result<Vec<(ObjectId, Transfer)>, RemoteError> {
        let present = self.present(ids)?;
        let mut todo = Vec::new();
        for (id, _) in ids.iter().zip(&present).filter(|(_, p)| !**p) {
            // The key is not rehashed (that needs ausa-dag's encoding): pullers check
            // it against the fingerprint before publishing anything.
            let manifest =
                store.check_object(id, VerifyMode::Sizes, &|_| id.fingerprint.clone())?;
            todo.push((id.clone(), store.object_dir(id), manifest));
        }
        progress.start(todo.iter().map(|(_, _, m)| m.total_size()).sum());
        let bodies = Bodies::new(tokio::sync::Semaphore::new(PUSH_BODIES));
        self.runtime.block_on(
            futures::stream::iter(&todo)
                .map(|(id, dir, manifest)| push_object(self, dir, id, manifest, &bodies, progress))
                .buffer_unordered(OBJECT_CONCURRENCY)
                .try_collect::<()>(),
        )?;
        Ok(ids
            .iter()
            .zip(present)
            .map(|(id, p)| {
                let sent = todo.iter().find(|(t, _, _)| t == id);
                let t = match (p, sent) {
                    (false, Some((_, _, m))) => Transfer::Copied(m.total_size()),
                    _ => Transfer::Present,
                };
                (id.clone(), t)
            })
            .collect())
    }

    /// Whether the remote has each object committed, asked in parallel.
    pub fn present(&self, ids: &[ObjectId]) -> Result<Vec<bool>, RemoteError> {
        let objects = self.objects.as_ref();
        self.runtime.block_on(
            futures::stream::iter(ids)
                .map(|id| async move {
                    let path = file_path(id, MANIFEST_NAME);
                    exists(objects, &path)
                        .await
                        .map_err(|e| self.backend(&path, e))
                })
                .buffered(FILE_CONCURRENCY)
                .try_collect(),
        )
    }
}

/// Permits for request bodies in memory or in flight, shared by all files of a push,
/// so memory stays bounded (`PUSH_BODIES` parts) however many files are large.
type Bodies = std::sync::Arc<tokio::sync::Semaphore>;

async fn push_object(
    remote: &Remote,
    dir: &Path,
    id: &ObjectId,
    manifest: &Manifest,
    bodies: &Bodies,
    progress: &dyn TransferProgress,
) -> Result<(), RemoteError> {
    futures::stream::iter(&manifest.files)
        .map(|f| push_file(remote, dir, id, f, bodies, progress))
        .buffer_unordered(FILE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    ausa_store::hooks::point("push:before-manifest");
    // The original bytes, so a pulled copy is byte-identical.
    let local = dir.join(MANIFEST_NAME);
    let bytes = tokio::fs::read(&local)
        .await
        .map_err(|e| RemoteError::Store(store_io(&local, e)))?;
    let path = file_path(id, MANIFEST_NAME);
    remote
        .objects
        .put(&path, bytes.into())
        .await
        .map_err(|e| remote.backend(&path, e))?;
    Ok(())
}

async fn push_file(
    remote: &Remote,
    dir: &Path,
    id: &ObjectId,
    entry: &FileEntry,
    bodies: &Bodies,
    progress: &dyn TransferProgress,
) -> Result<(), RemoteError> {
    let path = file_path(id, &entry.name);
    if let Ok(meta) = remote.objects.head(&path).await {
        if meta.size == entry.size {
            progress.advance(entry.size);
            return Ok(());
        }
    }
    let reader = HashingReader::open(dir, entry)?;
    let result = if entry.size < MULTIPART_THRESHOLD {
        put_whole(remote.objects.as_ref(), &path, reader, bodies, progress).await?
    } else {
        upload_parts(remote.objects.as_ref(), &path, reader, bodies, progress).await?
    };
    result.map_err(|e| remote.backend(&path, e))
}

/// Waits for room for one more request body.
async fn body_permit(bodies: &Bodies) -> tokio::sync::OwnedSemaphorePermit {
    bodies
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed")
}

/// A single PUT, sent only after the whole file has been read and its hash checked.
/// The outer error is local (I/O, a damaged file), the inner the backend's.
async fn put_whole(
    objects: &dyn ObjectStore,
    path: &object_store::path::Path,
    reader: HashingReader,
    bodies: &Bodies,
    progress: &dyn TransferProgress,
) -> Result<object_store::Result<()>, RemoteError> {
    let _permit = body_permit(bodies).await;
    let (mut reader, bytes) = reader.next_part_blocking(usize::MAX).await?;
    reader.finish()?;
    let n = bytes.len() as u64;
    let result = objects.put(path, bytes.into()).await.map(|_| ());
    progress.advance(n);
    Ok(result)
}

/// A multipart upload, completed only if the file's hash checks; otherwise (and on
/// any failure) aborted, so no half-written or damaged file becomes visible. Parts
/// are sent as soon as they are read, each holding a permit of `bodies` until it is
/// acknowledged. The outer error is local (I/O, a damaged file), the inner the
/// backend's.
async fn upload_parts(
    objects: &dyn ObjectStore,
    path: &object_store::path::Path,
    mut reader: HashingReader,
    bodies: &Bodies,
    progress: &dyn TransferProgress,
) -> Result<object_store::Result<()>, RemoteError> {
    let mut upload = match objects.put_multipart(path).await {
        Ok(u) => u,
        Err(e) => return Ok(Err(e)),
    };
    let part_size = part_size(reader.size);
    let mut parts = tokio::task::JoinSet::new();
    let sent = loop {
        let permit = body_permit(bodies).await;
        let part = match reader.next_part_blocking(part_size).await {
            Ok((r, part)) => {
                reader = r;
                part
            }
            Err(e) => break Err(e),
        };
        if part.is_empty() {
            break reader.finish();
        }
        let n = part.len() as u64;
        let request = upload.put_part(part.into());
        parts.spawn(async move {
            let acknowledged = request.await;
            drop(permit);
            acknowledged.map(|()| n)
        });
        // Count what is done; a failed part fails the file at once, not after
        // reading the rest.
        while let Some(r) = next_acknowledged(&mut parts, progress, false).await {
            if let Err(e) = r {
                return Ok(abort(upload, parts, e).await);
            }
        }
    };
    if let Err(e) = sent {
        parts.shutdown().await;
        let _ = upload.abort().await;
        return Err(e);
    }
    while let Some(r) = next_acknowledged(&mut parts, progress, true).await {
        if let Err(e) = r {
            return Ok(abort(upload, parts, e).await);
        }
    }
    Ok(match upload.complete().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    })
}

/// `PART_SIZE`, or larger for files that would need more than `MAX_PARTS` parts.
fn part_size(file_size: u64) -> usize {
    let size = PART_SIZE.max(file_size.div_ceil(MAX_PARTS));
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// The next finished part (waiting for one if `wait`), its bytes counted as moved.
async fn next_acknowledged(
    parts: &mut tokio::task::JoinSet<object_store::Result<u64>>,
    progress: &dyn TransferProgress,
    wait: bool,
) -> Option<object_store::Result<()>> {
    let done = if wait {
        parts.join_next().await?
    } else {
        parts.try_join_next()?
    };
    Some(
        done.expect("part uploads do not panic")
            .map(|n| progress.advance(n)),
    )
}

/// Stops the parts still in flight and aborts the upload; returns `e`.
async fn abort(
    mut upload: Box<dyn object_store::MultipartUpload>,
    mut parts: tokio::task::JoinSet<object_store::Result<u64>>,
    e: object_store::Error,
) -> object_store::Result<()> {
    parts.shutdown().await;
    let _ = upload.abort().await;
    Err(e)
}

/// Reads a local object file in parts, hashing every byte, and checks size and
/// blake3 against the manifest's entry at the end.
struct HashingReader {
    file: std::fs::File,
    /// The object directory, named in errors.
    dir: PathBuf,
    path: PathBuf,
    hasher: blake3::Hasher,
    read: u64,
    size: u64,
    blake3: String,
}

impl HashingReader {
    fn open(dir: &Path, entry: &FileEntry) -> Result<HashingReader, RemoteError> {
        let path = dir.join(&entry.name);
        let file =
            std::fs::File::open(&path).map_err(|e| RemoteError::Store(store_io(&path, e)))?;
        Ok(HashingReader {
            file,
            dir: dir.to_path_buf(),
            path,
            hasher: blake3::Hasher::new(),
            read: 0,
            size: entry.size,
            blake3: entry.blake3.clone(),
        })
    }

    /// The next part of at most `max` bytes (empty at the end), read and hashed on a
    /// blocking thread: one `read` loop per part, where tokio::fs would split it into
    /// 2 MiB operations.
    async fn next_part_blocking(
        mut self,
        max: usize,
    ) -> Result<(HashingReader, Bytes), RemoteError> {
        tokio::task::spawn_blocking(move || self.next_part(max).map(|b| (self, b)))
            .await
            .expect("the read task does not panic")
    }

    fn next_part(&mut self, max: usize) -> Result<Bytes, RemoteError> {
        use std::io::Read;
        // One byte past the manifest's size is enough to tell that the file grew.
        let want = (self.size - self.read.min(self.size) + 1).min(max as u64);
        let mut buf = Vec::with_capacity(want as usize);
        (&mut self.file)
            .take(want)
            .read_to_end(&mut buf)
            .map_err(|e| RemoteError::Store(store_io(&self.path, e)))?;
        self.read += buf.len() as u64;
        if self.read > self.size {
            return Err(self.damaged(format!(
                "longer than the manifest's {} bytes (overwritten?)",
                self.size
            )));
        }
        self.hasher.update(&buf);
        Ok(buf.into())
    }

    /// Checks the whole file was read and its blake3 matches the manifest.
    fn finish(&mut self) -> Result<(), RemoteError> {
        if self.read != self.size {
            return Err(self.damaged(format!(
                "size is {} bytes, the manifest says {} (truncated or overwritten)",
                self.read, self.size
            )));
        }
        let digest = self.hasher.finalize().to_hex();
        if digest.as_str() != self.blake3 {
            return Err(self.damaged(format!(
                "blake3 {} does not match the manifest's {} (damaged on disk?)",
                &digest[..16],
                &self.blake3[..16.min(self.blake3.len())]
            )));
        }
        Ok(())
    }

    fn damaged(&self, what: String) -> RemoteError {
        RemoteError::Store(StoreError::Corrupt {
            dir: self.dir.clone(),
            problems: vec![format!("{}: {what}", self.path.display())],
        })
    }
}

pub(crate) fn store_io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
