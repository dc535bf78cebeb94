//! Garbage collection: sweep policies over configurations, objects no configuration
//! references, temp dirs of dead builds, expired locks and pins.
//!
//! gc is safe beside running builds on any host: it removes an object only under the
//! object's lock (purpose `gc`) and only when no live pin names it (see the `pin`
//! module for the protocol), and a lock or pin only when its lease expired on the
//! store's clock or its owner is a dead process of this host.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::fsutil::{remove_tree, server_now, ProcessIdentity};
use crate::lock::Purpose;
use crate::{ConfigInfo, ObjectId, Store, StoreError, LEGACY_CONFIG};

/// What to collect.
#[derive(Debug, Default, Clone)]
pub struct GcOptions {
    /// Only report what would be removed.
    pub dry_run: bool,
    /// Drop configurations that last built longer ago than this.
    pub older_than: Option<Duration>,
    /// Per DAG, keep only the configurations that built most recently, this many.
    pub keep_last: Option<usize>,
}

/// What `gc` removed (or would remove, on a dry run).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Configurations dropped by a policy (their refs removed), as labels.
    pub configs: Vec<String>,
    /// Objects no configuration references.
    pub objects: Vec<ObjectId>,
    /// Bytes those objects held.
    pub object_bytes: u64,
    /// Unreferenced objects kept because a running build pins or locks them.
    pub in_use: Vec<ObjectId>,
    /// Temp dirs of builds that are no longer running, and removed copies.
    pub temp_dirs: Vec<PathBuf>,
    /// Lock and pin files whose lease expired (or whose owner died on this host).
    pub stale_locks: Vec<PathBuf>,
}

impl Store {
    /// Applies the sweep policies, then removes unreferenced objects, dead temp dirs
    /// and expired locks and pins (`opts.dry_run`: only reports them).
    ///
    /// A temp dir is dead when its owner is a vanished process of this host, or, for
    /// another host, when no live lock or pin names its owner.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        // List temp dirs before reading locks: a build that starts after this listing
        // is not considered, and one that started before holds its lock by now.
        let temp_owners = temp_dirs(self)?;
        let now = if opts.dry_run {
            std::time::SystemTime::now()
        } else {
            server_now(&self.root().join("locks"))?
        };
        let locks = self.lease_files("locks", now)?;
        let pins = self.lease_files("pins", now)?;
        let live: BTreeSet<&str> = locks
            .iter()
            .chain(&pins)
            .filter(|f| f.live)
            .map(|f| f.owner.as_str())
            .collect();
        for f in locks.iter().chain(&pins).filter(|f| !f.live) {
            report.stale_locks.push(f.path.clone());
        }
        for (dir, owner, trash_of) in temp_owners {
            let dead = match (&owner, &trash_of) {
                // A removed copy may go once nobody pins its object.
                (_, Some(id)) => !Store::pinned(&pins, id),
                (Some(o), None) if o.host == self.identity.host => {
                    o.is_dead_on_this_host(&self.identity)
                }
                (Some(o), None) => !live.contains(o.token().as_str()),
                (None, None) => true,
            };
            if dead {
                report.temp_dirs.push(dir);
            }
        }
        let configs = self.list_configs()?;
        let dropped = swept(&configs, opts, now);
        report.configs = dropped.iter().map(|c| c.label()).collect();
        let mut referenced = BTreeSet::new();
        for info in configs.iter().filter(|c| !dropped.contains(c)) {
            for stage in &info.stages {
                let name = crate::RefName {
                    dag: info.dag.clone(),
                    config: info.id.clone(),
                    stage: stage.clone(),
                };
                if let Ok(Some(r)) = self.read_ref(&name) {
                    referenced.insert(r.object());
                }
            }
        }
        if !opts.dry_run {
            for info in &dropped {
                self.remove_config(info)?;
            }
            for path in &report.stale_locks {
                let _ = std::fs::remove_file(path);
            }
            for dir in &report.temp_dirs {
                remove_tree(dir)?;
            }
        }
        for id in self.list_objects()? {
            if referenced.contains(&id) {
                continue;
            }
            let bytes = crate::Manifest::read(&self.object_dir(&id)).map_or(0, |m| m.total_size());
            if Store::pinned(&pins, &id) {
                report.in_use.push(id);
                continue;
            }
            if !opts.dry_run && !self.remove_unpinned(&id)? {
                report.in_use.push(id);
                continue;
            }
            report.object_bytes += bytes;
            report.objects.push(id);
        }
        Ok(report)
    }

    /// Removes `id` under its lock if no live pin names it; `false` when it is in use.
    fn remove_unpinned(&self, id: &ObjectId) -> Result<bool, StoreError> {
        let Some(_lock) = self.try_lock(id, Purpose::Gc)? else {
            return Ok(false); // being built or replaced right now
        };
        crate::hooks::point("gc:locked");
        // Pins are listed after our lock exists: a reader that pinned later waits for
        // our lock to go before it looks at the object (`Store::pin`).
        let now = server_now(&self.root().join("locks"))?;
        if Store::pinned(&self.lease_files("pins", now)?, id) {
            return Ok(false);
        }
        self.remove_object(id)?;
        Ok(true)
    }
}

/// The configurations the policies drop. Legacy refs are never dropped.
fn swept(configs: &[ConfigInfo], opts: &GcOptions, now: std::time::SystemTime) -> Vec<ConfigInfo> {
    let mut dropped = Vec::new();
    let candidates: Vec<&ConfigInfo> = configs.iter().filter(|c| c.id != LEGACY_CONFIG).collect();
    if let Some(limit) = opts.older_than {
        for c in &candidates {
            let age = c
                .last_built
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if age > limit {
                dropped.push((*c).clone());
            }
        }
    }
    if let Some(keep) = opts.keep_last {
        let dags: BTreeSet<&str> = candidates.iter().map(|c| c.dag.as_str()).collect();
        for dag in dags {
            let mut of_dag: Vec<&&ConfigInfo> =
                candidates.iter().filter(|c| c.dag == dag).collect();
            // Newest first; unknown times count as oldest.
            of_dag.sort_by_key(|c| std::cmp::Reverse(c.last_built));
            for c in of_dag.into_iter().skip(keep) {
                if !dropped
                    .iter()
                    .any(|d: &ConfigInfo| d.dag == c.dag && d.id == c.id)
                {
                    dropped.push((**c).clone());
                }
            }
        }
    }
    dropped
}

impl PartialEq for ConfigInfo {
    fn eq(&self, other: &ConfigInfo) -> bool {
        self.dag == other.dag && self.id == other.id
    }
}

/// Entries of `tmp/` with their owner and, for removed copies, whose object they were.
type TempEntry = (PathBuf, Option<ProcessIdentity>, Option<ObjectId>);

fn temp_dirs(store: &Store) -> Result<Vec<TempEntry>, StoreError> {
    let tmp = store.root().join("tmp");
    let entries = match std::fs::read_dir(&tmp) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(&tmp, e)),
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = ProcessIdentity::parse(&name);
            let trash_of = name.split_once(".trash.").and_then(|(_, rest)| {
                let mut parts = rest.splitn(3, '.');
                Some(ObjectId {
                    kind: parts.next()?.to_string(),
                    fingerprint: parts.next()?.to_string(),
                })
            });
            (e.path(), owner, trash_of)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Removes the temp dirs whose owner satisfies `dead` (removed copies are left to gc,
/// which checks their pins).
pub(crate) fn remove_temp_dirs(
    store: &Store,
    dead: impl Fn(&ProcessIdentity) -> bool,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut removed = Vec::new();
    for (dir, owner, trash_of) in temp_dirs(store)? {
        if trash_of.is_none() && owner.as_ref().is_some_and(&dead) {
            remove_tree(&dir)?;
            removed.push(dir);
        }
    }
    Ok(removed)
}
