//! Garbage collection: objects no ref points to, temp dirs of dead builds, stale locks.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::fsutil::{remove_tree, ProcessIdentity};
use crate::{ObjectId, Store, StoreError};

/// What `gc` removed (or would remove, on a dry run).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Objects no ref points to.
    pub objects: Vec<ObjectId>,
    /// Bytes those objects held.
    pub object_bytes: u64,
    /// Temp dirs of builds that are no longer running.
    pub temp_dirs: Vec<PathBuf>,
}

impl Store {
    /// Removes unreferenced objects and dead temp dirs (`dry_run`: only reports them).
    ///
    /// A temp dir is dead when its owner is a vanished process of this host, or, for
    /// another host, when no lock file names its owner any more.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        // List temp dirs before reading locks: a build that starts after this listing
        // is not considered, and one that started before holds its lock by now.
        let temp_owners = temp_dirs(self)?;
        let live: BTreeSet<String> = self.lock_owners()?.into_iter().collect();
        for (dir, owner) in temp_owners {
            let dead = match &owner {
                Some(o) if o.host == self.identity.host => o.is_dead_on_this_host(&self.identity),
                Some(o) => !live.contains(&o.token()),
                None => true,
            };
            if dead {
                report.temp_dirs.push(dir);
            }
        }
        let referenced: BTreeSet<ObjectId> = self
            .list_refs()?
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .map(|r| r.object())
            .collect();
        for id in self.list_objects()? {
            if !referenced.contains(&id) {
                report.object_bytes +=
                    crate::Manifest::read(&self.object_dir(&id)).map_or(0, |m| m.total_size());
                report.objects.push(id);
            }
        }
        if !dry_run {
            for dir in &report.temp_dirs {
                remove_tree(dir)?;
            }
            for id in &report.objects {
                self.remove_object(id)?;
            }
        }
        Ok(report)
    }
}

fn temp_dirs(store: &Store) -> Result<Vec<(PathBuf, Option<ProcessIdentity>)>, StoreError> {
    let tmp = store.root().join("tmp");
    let entries = std::fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (e.path(), ProcessIdentity::parse(&name))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Removes the temp dirs whose owner satisfies `dead`.
pub(crate) fn remove_temp_dirs(
    store: &Store,
    dead: impl Fn(&ProcessIdentity) -> bool,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut removed = Vec::new();
    for (dir, owner) in temp_dirs(store)? {
        if owner.as_ref().is_some_and(&dead) {
            remove_tree(&dir)?;
            removed.push(dir);
        }
    }
    Ok(removed)
}
