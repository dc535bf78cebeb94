//! Build locks that work on NFS: O_EXCL lock files with a heartbeat lease.
//!
//! `flock(2)` is unreliable across NFS clients, so a lock is a file
//! `locks/<kind>.<fingerprint>.lock` created with `O_CREAT|O_EXCL` (atomic on NFSv3+).
//! Its content is JSON `{"owner": "<host>.<pid>.<nonce>", "kind", "fingerprint"}`.
//! While the build runs, a heartbeat thread bumps the file's mtime every lease/4.
//!
//! A waiter treats the lock as stale when
//! - its owner is a process of the waiter's own host that no longer exists (a build
//!   killed with `kill -9` is taken over at once), or
//! - its mtime has not changed for a whole lease, as timed by the **waiter's** clock
//!   (so clock skew between machines does not matter).
//!
//! Takeover renames the stale file to a unique name (only one waiter wins the rename),
//! checks by inode that it moved the file it judged stale, and deletes it. Locks only
//! save duplicate work: correctness rests on the atomic publish, where a second
//! publisher of the same fingerprint finds the object present and discards its copy.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::fsutil::ProcessIdentity;
use crate::{ObjectId, Store, StoreError};

/// Who holds a lock, as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// `<host>.<pid>.<nonce>`, or `unknown` while the file is being written.
    pub owner: String,
}

/// The outcome of [`Store::lock_object`].
#[derive(Debug)]
pub enum Acquired {
    /// We hold the lock; build, publish, then drop the guard.
    Locked(LockGuard),
    /// The object was published (by someone else) while we waited: use it.
    Present,
}

/// A held build lock; dropping it stops the heartbeat and removes the file.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
    ino: u64,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        // Remove the file only if it is still ours (it may have been taken over).
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a waiter remembers about a lock file it found.
struct Observation {
    ino: u64,
    mtime: SystemTime,
    since: Instant,
}

impl Store {
    fn lock_path(&self, id: &ObjectId) -> PathBuf {
        self.root()
            .join("locks")
            .join(format!("{}.{}.lock", id.kind, id.fingerprint))
    }

    /// Takes the build lock of `id`, waiting while another live builder holds it.
    ///
    /// Returns [`Acquired::Present`] as soon as the object is published. `on_wait` is
    /// called once when we start waiting on another holder.
    pub fn lock_object(
        &self,
        id: &ObjectId,
        on_wait: &mut dyn FnMut(&LockHolder),
    ) -> Result<Acquired, StoreError> {
        let path = self.lock_path(id);
        let poll = (self.lease / 20).clamp(Duration::from_millis(10), Duration::from_millis(200));
        let mut seen: Option<Observation> = None;
        let mut announced = false;
        loop {
            if self.has_object(id) {
                return Ok(Acquired::Present);
            }
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let guard = self.start_holding(path.clone(), file, id)?;
                    // Someone may have published between our check and our create.
                    if self.has_object(id) {
                        return Ok(Acquired::Present);
                    }
                    return Ok(Acquired::Locked(guard));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let holder = read_holder(&path);
            let observation = match seen.take() {
                Some(o)
                    if o.ino == meta.ino()
                        && o.mtime == meta.modified().ok().unwrap_or(o.mtime) =>
                {
                    o
                }
                _ => Observation {
                    ino: meta.ino(),
                    mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    since: Instant::now(),
                },
            };
            let dead_owner = ProcessIdentity::parse(&holder.owner)
                .is_some_and(|o| o.is_dead_on_this_host(&self.identity));
            if dead_owner || observation.since.elapsed() > self.lease {
                self.take_over(&path, observation.ino)?;
                continue;
            }
            if !announced {
                on_wait(&holder);
                announced = true;
            }
            seen = Some(observation);
            std::thread::sleep(poll);
        }
    }

    fn start_holding(
        &self,
        path: PathBuf,
        mut file: File,
        id: &ObjectId,
    ) -> Result<LockGuard, StoreError> {
        let body = serde_json::json!({
            "owner": self.identity.token(),
            "kind": id.kind,
            "fingerprint": id.fingerprint,
        });
        let written = file
            .write_all(body.to_string().as_bytes())
            .and_then(|_| file.sync_all());
        let ino = file.metadata().map(|m| m.ino());
        let ino = match written.and(ino) {
            Ok(ino) => ino,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(StoreError::io(&path, e));
            }
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = self.lease / 4;
        let heartbeat = std::thread::spawn(move || {
            // The handle stays bound to our inode even if the path is taken over.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let _ = file.set_modified(SystemTime::now());
            }
        });
        Ok(LockGuard {
            path,
            ino,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
        })
    }

    fn take_over(&self, path: &PathBuf, judged_ino: u64) -> Result<(), StoreError> {
        let grave = path.with_extension(format!("stale.{}", self.identity.token()));
        match std::fs::rename(path, &grave) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(path, e)),
        }
        let moved_ino = std::fs::metadata(&grave)
            .map(|m| m.ino())
            .unwrap_or(judged_ino);
        if moved_ino != judged_ino {
            // We raced another waiter and moved a fresh lock: put it back unless a
            // newer one already exists (then the publish rename settles it).
            let _ = std::fs::hard_link(&grave, path);
        }
        std::fs::remove_file(&grave).map_err(|e| StoreError::io(&grave, e))
    }

    /// The owners named by the current lock files (stale ones included).
    pub(crate) fn lock_owners(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root().join("locks");
        let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(entries
            .filter_map(Result::ok)
            .map(|e| read_holder(&e.path()).owner)
            .collect())
    }
}

fn read_holder(path: &std::path::Path) -> LockHolder {
    let owner = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("owner").and_then(|o| o.as_str()).map(String::from))
        .unwrap_or_else(|| "unknown".into());
    LockHolder { owner }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ObjectId {
        ObjectId {
            kind: "k".into(),
            fingerprint: "f".repeat(64),
        }
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let Acquired::Locked(guard) = store.lock_object(&id(), &mut |_| {}).unwrap() else {
            panic!("expected the lock")
        };
        let lock = store.lock_path(&id());
        assert!(lock.exists());
        let holder = read_holder(&lock);
        assert_eq!(holder.owner, store.identity.token());
        drop(guard);
        assert!(!lock.exists());
    }

    #[test]
    fn waiter_takes_over_a_lock_without_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.lease = Duration::from_millis(200);
        // A lock left by a process on another host: only the lease can expire it.
        std::fs::write(store.lock_path(&id()), r#"{"owner":"elsewhere.1.abc"}"#).unwrap();
        let mut waited = None;
        let start = Instant::now();
        let got = store
            .lock_object(&id(), &mut |h| waited = Some(h.owner.clone()))
            .unwrap();
        assert!(matches!(got, Acquired::Locked(_)));
        assert_eq!(waited.as_deref(), Some("elsewhere.1.abc"));
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn lock_of_a_dead_local_process_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let owner = format!("{}.{pid}.dead", store.identity.host);
        std::fs::write(store.lock_path(&id()), format!(r#"{{"owner":"{owner}"}}"#)).unwrap();
        let start = Instant::now();
        assert!(matches!(
            store.lock_object(&id(), &mut |_| {}).unwrap(),
            Acquired::Locked(_)
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn heartbeat_keeps_a_live_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.lease = Duration::from_millis(300);
        let Acquired::Locked(guard) = store.lock_object(&id(), &mut |_| {}).unwrap() else {
            panic!("expected the lock")
        };
        // Another "host" waits on our live lock while we publish after 1 s.
        let other = Store {
            identity: ProcessIdentity {
                host: "other".into(),
                ..store.identity.clone()
            },
            ..store.clone()
        };
        let publisher = {
            let store = store.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1000));
                let dir = store.object_dir(&id());
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(crate::MANIFEST_NAME), b"{}").unwrap();
                drop(guard);
            })
        };
        let got = other.lock_object(&id(), &mut |_| {}).unwrap();
        publisher.join().unwrap();
        assert!(
            matches!(got, Acquired::Present),
            "a heartbeating lock must not be taken over"
        );
    }
}
