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

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::fsutil::{touch, ProcessIdentity};
use crate::{ObjectId, Store, StoreError};

/// Who holds a lock, as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// `<host>.<pid>.<nonce>`, or `unknown` while the file is being written.
    pub owner: String,
    /// `build` (building or replacing the object) or `gc` (removing it).
    pub purpose: String,
}

/// Why a lock is taken; readers wait only for `Gc` (see [`Store::pin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Building the object, or replacing it (`--force`).
    Build,
    /// Removing the object (`gc`).
    Gc,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Build => "build",
            Purpose::Gc => "gc",
        }
    }
}

/// The outcome of [`Store::lock_object`].
#[derive(Debug)]
pub enum Acquired {
    /// We hold the lock; build, publish, then drop the guard.
    Locked(LockGuard),
    /// The object was published (by someone else) while we waited: use it.
    Present,
}

/// A file kept alive by a heartbeat thread (a lock or a pin); dropping it stops the
/// heartbeat and removes the file if it is still ours.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    ino: u64,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

/// A held build lock; dropping it stops the heartbeat and removes the file.
pub type LockGuard = Held;

impl Drop for Held {
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

/// Creates `path` with `O_EXCL`, writes `body` (JSON, so it starts with `{`), and keeps
/// it alive every `interval`. `Ok(None)` when the file exists already.
pub(crate) fn hold_new_file(
    path: &Path,
    body: &serde_json::Value,
    interval: Duration,
) -> Result<Option<Held>, StoreError> {
    let mut file = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let written = file
        .write_all(body.to_string().as_bytes())
        .and_then(|_| file.sync_all());
    let ino = file.metadata().map(|m| m.ino());
    let ino = match written.and(ino) {
        Ok(ino) => ino,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(StoreError::io(path, e));
        }
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let heartbeat = std::thread::spawn(move || {
        // The handle stays bound to our inode even if the path is taken over.
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
            let _ = touch(&file);
        }
    });
    Ok(Some(Held {
        path: path.to_path_buf(),
        ino,
        stop: Some(stop),
        heartbeat: Some(heartbeat),
    }))
}

/// What a waiter remembers about a lock file it found.
struct Observation {
    ino: u64,
    mtime: SystemTime,
    since: Instant,
}

impl Store {
    pub(crate) fn lock_path(&self, id: &ObjectId) -> PathBuf {
        self.root()
            .join("locks")
            .join(format!("{}.{}.lock", id.kind, id.fingerprint))
    }

    fn lock_body(&self, id: &ObjectId, purpose: Purpose) -> serde_json::Value {
        serde_json::json!({
            "owner": self.identity.token(),
            "kind": id.kind,
            "fingerprint": id.fingerprint,
            "purpose": purpose.as_str(),
        })
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
        Ok(match self.acquire(id, Purpose::Build, true, on_wait)? {
            Some(guard) => Acquired::Locked(guard),
            None => Acquired::Present,
        })
    }

    /// Takes the build lock of `id` to replace the object (`--force`), waiting while
    /// another live process holds it, whether or not the object exists.
    pub fn lock_for_replace(
        &self,
        id: &ObjectId,
        on_wait: &mut dyn FnMut(&LockHolder),
    ) -> Result<LockGuard, StoreError> {
        let guard = self.acquire(id, Purpose::Build, false, on_wait)?;
        Ok(guard.expect("acquire without present_ok always locks"))
    }

    /// Takes the lock of `id` for `purpose` if nobody holds it; `None` if someone does.
    pub(crate) fn try_lock(
        &self,
        id: &ObjectId,
        purpose: Purpose,
    ) -> Result<Option<LockGuard>, StoreError> {
        let path = self.lock_path(id);
        self.ensure_dir("locks")?;
        hold_new_file(&path, &self.lock_body(id, purpose), self.lease / 4)
    }

    /// The lock loop. With `present_ok`, returns `None` once the object is published.
    fn acquire(
        &self,
        id: &ObjectId,
        purpose: Purpose,
        present_ok: bool,
        on_wait: &mut dyn FnMut(&LockHolder),
    ) -> Result<Option<LockGuard>, StoreError> {
        let path = self.lock_path(id);
        self.ensure_dir("locks")?;
        let poll = self.poll_interval();
        let mut seen: Option<Observation> = None;
        let mut announced = false;
        loop {
            if present_ok && self.has_object(id) {
                return Ok(None);
            }
            if let Some(guard) = hold_new_file(&path, &self.lock_body(id, purpose), self.lease / 4)?
            {
                // Someone may have published between our check and our create.
                if present_ok && self.has_object(id) {
                    return Ok(None);
                }
                return Ok(Some(guard));
            }
            if self.wait_step(&path, &mut seen, &mut |h| {
                if !announced {
                    on_wait(h);
                    announced = true;
                }
            })? {
                std::thread::sleep(poll);
            }
        }
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        (self.lease / 20).clamp(Duration::from_millis(10), Duration::from_millis(200))
    }

    /// One look at an existing lock file: takes it over when stale (returns `false`:
    /// try again at once), else reports its holder to `waiting` (returns `true`: sleep).
    fn wait_step(
        &self,
        path: &Path,
        seen: &mut Option<Observation>,
        waiting: &mut dyn FnMut(&LockHolder),
    ) -> Result<bool, StoreError> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(false);
        };
        let holder = read_holder(path);
        let observation = match seen.take() {
            Some(o)
                if o.ino == meta.ino() && o.mtime == meta.modified().ok().unwrap_or(o.mtime) =>
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
            self.take_over(path, observation.ino)?;
            return Ok(false);
        }
        waiting(&holder);
        *seen = Some(observation);
        Ok(true)
    }

    /// Waits while a live `gc` holds the lock of `id` (readers call this after pinning,
    /// see [`Store::pin`]). A stale gc lock is ignored: gc removes an object with one
    /// rename, so a dead gc left it either present or gone.
    pub(crate) fn wait_for_gc(&self, id: &ObjectId) {
        let path = self.lock_path(id);
        let poll = self.poll_interval();
        let mut seen: Option<(u64, SystemTime, Instant)> = None;
        loop {
            let Ok(meta) = std::fs::metadata(&path) else {
                return;
            };
            let holder = read_holder(&path);
            if holder.purpose != Purpose::Gc.as_str() {
                return;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let since = match seen {
                Some((ino, m, since)) if ino == meta.ino() && m == mtime => since,
                _ => Instant::now(),
            };
            let dead = ProcessIdentity::parse(&holder.owner)
                .is_some_and(|o| o.is_dead_on_this_host(&self.identity));
            if dead || since.elapsed() > self.lease {
                return;
            }
            seen = Some((meta.ino(), mtime, since));
            std::thread::sleep(poll);
        }
    }

    fn take_over(&self, path: &Path, judged_ino: u64) -> Result<(), StoreError> {
        take_over(path, judged_ino, &self.identity.token())
    }
}

/// Removes the stale lock file `path` that a waiter judged (by inode) to be stale:
/// renames it to a name unique to `token` (only one waiter wins the rename), checks that
/// the moved file is the judged one, and deletes it.
fn take_over(path: &Path, judged_ino: u64, token: &str) -> Result<(), StoreError> {
    let grave = path.with_extension(format!("stale.{token}"));
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

/// Whether the lock file at `path` belongs to a live holder: it exists, and its owner is
/// not a dead process of this host, and its heartbeat touched it within `lease` (by this
/// machine's clock, so hosts sharing a directory need clocks within a lease).
fn live_holder(path: &Path, lease: Duration, me: &ProcessIdentity) -> Option<(bool, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let holder = read_holder(path);
    let dead = ProcessIdentity::parse(&holder.owner).is_some_and(|o| o.is_dead_on_this_host(me));
    let expired = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age > lease);
    Some((!dead && !expired, meta.ino()))
}

/// Takes a lock on any path without waiting (the lock of one run of a parameter sweep,
/// shared by every `ausa sweep` writing the same directory, on any host): the file is
/// created with `O_EXCL` and kept alive by a heartbeat every `lease / 4`, as the store's
/// build locks are. A lock whose owner is a dead process of this host, or whose
/// heartbeat stopped a whole `lease` ago, is taken over. `Ok(None)` while a live
/// holder has it. Dropping the [`Held`] removes the file.
pub fn try_lock_path(path: &Path, lease: Duration) -> Result<Option<Held>, StoreError> {
    let me = ProcessIdentity::current();
    let body = serde_json::json!({"owner": me.token(), "purpose": "run"});
    // Two tries: a stale file taken over on the first is free on the second.
    for _ in 0..2 {
        if let Some(held) = hold_new_file(path, &body, lease / 4)? {
            return Ok(Some(held));
        }
        match live_holder(path, lease, &me) {
            // Released between our create and our look: try again.
            None => continue,
            Some((true, _)) => return Ok(None),
            Some((false, ino)) => take_over(path, ino, &me.token())?,
        }
    }
    Ok(None)
}

/// Whether a live process holds the lock at `path` (see [`try_lock_path`]); reads only.
pub fn is_locked(path: &Path, lease: Duration) -> bool {
    live_holder(path, lease, &ProcessIdentity::current()).is_some_and(|(live, _)| live)
}

/// Reads the owner and purpose of a lock or pin file.
pub(crate) fn read_holder(path: &Path) -> LockHolder {
    let value = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let field = |name: &str, default: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(name).and_then(|o| o.as_str()).map(String::from))
            .unwrap_or_else(|| default.into())
    };
    LockHolder {
        owner: field("owner", "unknown"),
        purpose: field("purpose", "build"),
    }
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
    fn a_path_lock_is_exclusive_released_on_drop_and_taken_from_the_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.lock");
        let lease = Duration::from_secs(30);
        let held = try_lock_path(&path, lease).unwrap().expect("free lock");
        assert!(is_locked(&path, lease));
        assert!(try_lock_path(&path, lease).unwrap().is_none(), "held twice");
        drop(held);
        assert!(!path.exists() && !is_locked(&path, lease));
        // A lock of a process of this host that is gone is free at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let host = ProcessIdentity::current().host;
        std::fs::write(&path, format!(r#"{{"owner":"{host}.{pid}.dead"}}"#)).unwrap();
        assert!(!is_locked(&path, lease));
        assert!(try_lock_path(&path, lease).unwrap().is_some());
        // Another host's lock is live until its heartbeat is a lease old.
        std::fs::write(&path, r#"{"owner":"elsewhere.1.abc"}"#).unwrap();
        assert!(try_lock_path(&path, lease).unwrap().is_none());
        let short = Duration::from_millis(200);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!is_locked(&path, short));
        assert!(try_lock_path(&path, short).unwrap().is_some());
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
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
        let mut store = Store::create(dir.path()).unwrap();
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
        let store = Store::create(dir.path()).unwrap();
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
        let mut store = Store::create(dir.path()).unwrap();
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
