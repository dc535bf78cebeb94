//! Small filesystem helpers: durable writes, permissions, process identity.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::StoreError;

/// Who owns a lock or temp dir: host, pid and a per-process nonce.
///
/// Rendered as `<host>.<pid>.<nonce>`; the host is reduced to `[A-Za-z0-9-]` so the
/// three parts can be split on `.` again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessIdentity {
    pub host: String,
    pub pid: u32,
    pub nonce: String,
}

impl ProcessIdentity {
    pub fn current() -> ProcessIdentity {
        let host: String = gethostname::gethostname()
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let pid = std::process::id();
        let seed = format!(
            "{pid}{:?}{:?}",
            std::time::SystemTime::now(),
            std::thread::current().id()
        );
        let nonce = blake3::hash(seed.as_bytes()).to_hex()[..8].to_string();
        ProcessIdentity { host, pid, nonce }
    }

    pub fn token(&self) -> String {
        format!("{}.{}.{}", self.host, self.pid, self.nonce)
    }

    /// Parses the `<host>.<pid>.<nonce>` prefix of a name.
    pub fn parse(name: &str) -> Option<ProcessIdentity> {
        let mut parts = name.splitn(4, '.');
        let host = parts.next()?.to_string();
        let pid = parts.next()?.parse().ok()?;
        let nonce = parts.next()?.to_string();
        Some(ProcessIdentity { host, pid, nonce })
    }

    /// True when this identity is a process of our host that no longer runs.
    pub fn is_dead_on_this_host(&self, me: &ProcessIdentity) -> bool {
        self.host == me.host && self.pid != me.pid && !pid_alive(self.pid)
    }
}

/// Whether a process with this pid exists on this machine (Linux `/proc`; assumes
/// alive where `/proc` is missing, so nothing is taken over by mistake).
fn pid_alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    !proc_root.join("self").exists() || proc_root.join(pid.to_string()).exists()
}

/// Writes `bytes` to `path` through a temp file in the same directory, fsyncs it and
/// renames it into place: readers see the old content or the new, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    // A gc dropping the configuration may remove the directory under us: create it
    // again and retry (our write then revives the configuration, as it should).
    let mut attempts = 0;
    loop {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp.{}.{n}", ProcessIdentity::current().token()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        match result {
            Ok(()) => return sync_dir(dir),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                attempts += 1;
                if e.kind() != std::io::ErrorKind::NotFound || attempts >= 5 {
                    return Err(StoreError::io(path, e));
                }
            }
        }
    }
}

/// fsyncs a directory so a rename or create inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Sorted names of the subdirectories of `dir` (empty if `dir` is missing), skipping
/// hidden names.
pub(crate) fn sorted_dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    sorted_names(dir, false)
}

/// Sorted names of the subdirectories of `dir`, and with `symlinks` also of the
/// symlinks in it (an object directory that is a symlink must be seen to be rejected).
pub(crate) fn sorted_names(dir: &Path, symlinks: bool) -> Result<Vec<String>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry
            .file_type()
            .is_ok_and(|t| t.is_dir() || (symlinks && t.is_symlink()))
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every regular file under `dir`, relative to it, sorted; fails on symlinks and
/// special files, which an object may not contain.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    collect_files(dir, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

fn collect_files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
        let path = rel.join(entry.file_name());
        let ty = entry
            .file_type()
            .map_err(|e| StoreError::io(&root.join(&path), e))?;
        if ty.is_dir() {
            collect_files(root, &path, out)?;
        } else if ty.is_file() {
            out.push(path);
        } else {
            return Err(StoreError::Unpublishable {
                path: root.join(&path),
                reason: "objects may contain only regular files and directories".into(),
            });
        }
    }
    Ok(())
}

/// Sets `mode` on `dir` and everything below it (files get `file_mode`).
pub(crate) fn set_tree_mode(dir: &Path, dir_mode: u32, file_mode: u32) -> Result<(), StoreError> {
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::io(p, e))
    };
    // Make the directory writable first so its entries can be changed, restrict last.
    set(dir, 0o755)?;
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => set_tree_mode(&path, dir_mode, file_mode)?,
            Ok(t) if t.is_file() => set(&path, file_mode)?,
            _ => {}
        }
    }
    set(dir, dir_mode)
}

/// Removes a directory tree, making read-only parts writable first. Another process
/// removing the same tree at the same time (gc on two hosts) is not an error.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, e)),
        Ok(m) if !m.is_dir() => {
            return std::fs::remove_file(dir)
                .or_else(not_found_ok)
                .map_err(|e| StoreError::io(dir, e))
        }
        Ok(_) => {}
    }
    let _ = set_tree_mode(dir, 0o755, 0o644);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Marks a file as alive "now" by rewriting its first byte, which must be `{`.
///
/// A write sets the mtime on the file server's clock (NFS) or the kernel's (local), never
/// the writer's idea of the time, so hosts with skewed clocks compare leases in one
/// timeline: see [`server_now`].
pub(crate) fn touch(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_at(b"{", 0).map(|_| ())
}

/// "Now" on the store's clock: the mtime of a file just created in `dir`.
pub(crate) fn server_now(dir: &Path) -> Result<std::time::SystemTime, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let probe = dir.join(format!(".now.{}", ProcessIdentity::current().token()));
    let result = File::create(&probe)
        .and_then(|mut f| f.write_all(b"{}").and_then(|()| f.metadata()))
        .and_then(|m| m.modified());
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| StoreError::io(&probe, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_token() {
        let me = ProcessIdentity::current();
        let parsed = ProcessIdentity::parse(&format!("{}.kind.fp", me.token())).unwrap();
        assert_eq!(parsed, me);
        assert!(!me.is_dead_on_this_host(&me));
    }

    #[test]
    fn a_finished_process_is_dead() {
        let me = ProcessIdentity::current();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let other = ProcessIdentity { pid, ..me.clone() };
        assert!(other.is_dead_on_this_host(&me));
        let remote = ProcessIdentity {
            host: "elsewhere".into(),
            ..other
        };
        assert!(
            !remote.is_dead_on_this_host(&me),
            "other hosts are never judged by pid"
        );
    }

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_are_not_publishable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("b")).unwrap();
        let err = list_files(dir.path()).unwrap_err();
        assert!(err.to_string().contains("only regular files"), "{err}");
    }
}
