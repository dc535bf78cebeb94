//! Push: files first (in parallel, large ones in parts), the manifest last.

use std::path::Path;

use ausa_store::{Manifest, ObjectId, Store, VerifyMode, MANIFEST_NAME};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::{
    exists, file_path, Remote, RemoteError, Transfer, TransferProgress, FILE_CONCURRENCY,
    MULTIPART_THRESHOLD, PART_SIZE,
};

impl Remote {
    /// Uploads every object of `ids` that the remote lacks; returns what happened to
    /// each, in order.
    ///
    /// Each local object is first fully verified (a damaged object is never pushed).
    /// Its manifest is uploaded only after all its files, so pullers never see a
    /// partial object. Files already on the remote with the right size (an earlier,
    /// interrupted push) are not sent again. Two machines pushing the same object at
    /// once write the same bytes to the same names, which is harmless.
    pub fn push_objects(
        &self,
        store: &Store,
        ids: &[ObjectId],
        progress: &dyn TransferProgress,
    ) -> Result<Vec<(ObjectId, Transfer)>, RemoteError> {
        let present = self.present(ids)?;
        let mut todo = Vec::new();
        for (id, _) in ids.iter().zip(&present).filter(|(_, p)| !**p) {
            // Every byte is rehashed; the key is not (that needs ausa-dag's encoding):
            // pullers check it against the fingerprint before publishing anything.
            let manifest = store.check_object(id, VerifyMode::Full, &|_| id.fingerprint.clone())?;
            todo.push((id.clone(), manifest));
        }
        progress.start(todo.iter().map(|(_, m)| m.total_size()).sum());
        for (id, manifest) in &todo {
            let dir = store.object_dir(id);
            self.runtime
                .block_on(push_object(self, &dir, id, manifest, progress))?;
        }
        Ok(ids
            .iter()
            .zip(present)
            .map(|(id, p)| {
                let sent = todo.iter().find(|(t, _)| t == id);
                let t = match (p, sent) {
                    (false, Some((_, m))) => Transfer::Copied(m.total_size()),
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

async fn push_object(
    remote: &Remote,
    dir: &Path,
    id: &ObjectId,
    manifest: &Manifest,
    progress: &dyn TransferProgress,
) -> Result<(), RemoteError> {
    futures::stream::iter(&manifest.files)
        .map(|f| push_file(remote, dir, id, &f.name, f.size, progress))
        .buffer_unordered(FILE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
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
    name: &str,
    size: u64,
    progress: &dyn TransferProgress,
) -> Result<(), RemoteError> {
    let path = file_path(id, name);
    let local = dir.join(name);
    if let Ok(meta) = remote.objects.head(&path).await {
        if meta.size == size {
            progress.advance(size);
            return Ok(());
        }
    }
    let result = if size < MULTIPART_THRESHOLD {
        let bytes = tokio::fs::read(&local)
            .await
            .map_err(|e| RemoteError::Store(store_io(&local, e)))?;
        let n = bytes.len() as u64;
        let r = remote.objects.put(&path, bytes.into()).await.map(|_| ());
        progress.advance(n);
        r
    } else {
        upload_parts(remote.objects.as_ref(), &path, &local, progress).await?
    };
    result.map_err(|e| remote.backend(&path, e))
}

/// A multipart upload; the outer error is local I/O, the inner the backend's. An
/// upload that fails is aborted, so no half-written file becomes visible.
async fn upload_parts(
    objects: &dyn ObjectStore,
    path: &object_store::path::Path,
    local: &Path,
    progress: &dyn TransferProgress,
) -> Result<object_store::Result<()>, RemoteError> {
    let file = std::fs::File::open(local).map_err(|e| RemoteError::Store(store_io(local, e)))?;
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let upload = match objects.put_multipart(path).await {
        Ok(u) => u,
        Err(e) => return Ok(Err(e)),
    };
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    loop {
        // One blocking read per part: tokio::fs would split it into 2 MiB operations.
        let reader = file.clone();
        let buf = tokio::task::spawn_blocking(move || read_part(&reader))
            .await
            .expect("the read task does not panic")
            .map_err(|e| RemoteError::Store(store_io(local, e)))?;
        let n = buf.len();
        if n == 0 {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(FILE_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Ok(Err(e));
        }
        writer.put(buf.into());
        progress.advance(n as u64);
    }
    Ok(writer.finish().await.map(|_| ()))
}

/// Reads up to one part from the shared file handle.
fn read_part(file: &std::sync::Mutex<std::fs::File>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(PART_SIZE);
    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
    (&mut *file).take(PART_SIZE as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

pub(crate) fn store_io(path: &Path, source: std::io::Error) -> ausa_store::StoreError {
    ausa_store::StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
