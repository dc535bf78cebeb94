//! Pins: "this process is about to read (or reference) this object; gc, leave it".
//!
//! A pin is a file `pins/<kind>.<fingerprint>.<owner>.<n>` kept alive by the same
//! heartbeat as a lock. The protocol that makes gc safe beside builds, on NFS too (it
//! needs only `O_EXCL` create, rename and lookups, no `flock`):
//!
//! - a reader creates its pin, waits while a live `gc` holds the object's lock, then
//!   looks whether the object exists;
//! - gc takes the object's lock (purpose `gc`), lists the object's live pins, and
//!   removes the object (one rename out of `objects/`) only when there are none.
//!
//! If the reader's lookup of the gc lock came before gc created it, the pin existed
//! before gc listed pins, so gc keeps the object. Otherwise gc had finished, and the
//! reader's existence check sees the truth: a build then rebuilds what it lost.
//!
//! A pin is live while its owner's heartbeat keeps its mtime within one lease of the
//! store's clock ([`crate::fsutil::server_now`]), or, on the judging host, while its
//! owner process runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::fsutil::ProcessIdentity;
use crate::lock::{hold_new_file, read_holder, Held};
use crate::{ObjectId, Store, StoreError};

/// A held pin; dropping it releases the object to gc.
#[derive(Debug)]
pub struct Pin {
    _held: Held,
    /// Whether the object existed once the pin was in place.
    pub present: bool,
}

/// A lock or pin file as gc judges it.
#[derive(Debug, Clone)]
pub(crate) struct LeaseFile {
    pub path: PathBuf,
    pub owner: String,
    pub live: bool,
}

impl Store {
    fn pin_prefix(id: &ObjectId) -> String {
        format!("{}.{}.", id.kind, id.fingerprint)
    }

    /// Pins `id` so that gc does not remove it while the pin is held, and reports
    /// whether the object exists. Needs write access to `pins/`.
    pub fn pin(&self, id: &ObjectId) -> Result<Pin, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self.ensure_dir("pins")?;
        let body = serde_json::json!({
            "owner": self.identity.token(),
            "kind": id.kind,
            "fingerprint": id.fingerprint,
        });
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                "{}{}.{n}",
                Self::pin_prefix(id),
                self.identity.token()
            ));
            if let Some(held) = hold_new_file(&path, &body, self.lease / 4)? {
                self.wait_for_gc(id);
                return Ok(Pin {
                    _held: held,
                    present: self.has_object(id),
                });
            }
        }
    }

    /// Judges every file in `sub` (`locks` or `pins`) against the store's clock `now`.
    pub(crate) fn lease_files(
        &self,
        sub: &str,
        now: SystemTime,
    ) -> Result<Vec<LeaseFile>, StoreError> {
        let dir = self.root().join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let holder = read_holder(&path);
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let owner = ProcessIdentity::parse(&holder.owner);
            let dead_here = owner
                .as_ref()
                .is_some_and(|o| o.is_dead_on_this_host(&self.identity));
            // Graves of takeovers and clock probes too: anything a lease old is dead.
            let live = !dead_here && age <= self.lease;
            out.push(LeaseFile {
                path,
                owner: holder.owner,
                live,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Whether any live pin names `id`, among `pins`.
    pub(crate) fn pinned(pins: &[LeaseFile], id: &ObjectId) -> bool {
        let prefix = Self::pin_prefix(id);
        pins.iter().any(|p| {
            p.live
                && p.path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
    }
}
