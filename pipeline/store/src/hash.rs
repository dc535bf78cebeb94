//! Content hashing: blake3 of files, and the stat cache for external inputs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fsutil::write_atomic;
use crate::Store;

/// blake3 (lowercase hex) and size of a file, read with `read(2)`, multithreaded
/// across 1 MiB chunks when the file is large.
///
/// It reads rather than maps the file: an input that another program truncates while
/// we hash it must give an error or a wrong digest, never a SIGBUS.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    const CHUNK: usize = 1 << 20;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 16 * CHUNK];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        size += filled as u64;
        if filled >= 2 * CHUNK {
            hasher.update_rayon(&buf[..filled]);
        } else {
            hasher.update(&buf[..filled]);
        }
        if filled < buf.len() {
            break;
        }
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// Remembers digests of external input files by `(device, inode, size, mtime, ctime)`,
/// so an unchanged multi-gigabyte corpus is not rehashed on every build.
///
/// Entries live in `<store>/cache/stat/`, one small file each, written atomically, so
/// concurrent builds can share the cache. A file whose mtime is less than two seconds
/// old is hashed but not cached: it could still change within the same timestamp tick
/// without changing its stat data.
#[derive(Debug, Clone)]
pub struct StatCache {
    dir: PathBuf,
}

const RACY_WINDOW: Duration = Duration::from_secs(2);

impl StatCache {
    /// The stat cache of `store`.
    pub fn new(store: &Store) -> StatCache {
        StatCache {
            dir: store.root().join("cache").join("stat"),
        }
    }

    /// `(blake3 hex, size)` of the file, from the cache when its stat data is unchanged.
    pub fn digest(&self, path: &Path) -> std::io::Result<(String, u64)> {
        let meta = std::fs::metadata(path)?;
        let stat_key = format!(
            "{}:{}:{}:{}:{}:{}:{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        let entry = self
            .dir
            .join(&blake3::hash(stat_key.as_bytes()).to_hex()[..32]);
        if let Some(hit) = std::fs::read_to_string(&entry)
            .ok()
            .and_then(|s| parse_entry(&s))
        {
            return Ok(hit);
        }
        let (digest, size) = hash_file(path)?;
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > RACY_WINDOW);
        if settled && size == meta.size() {
            // A failed cache write only costs a rehash next time.
            let _ = write_atomic(&entry, format!("{digest} {size}\n").as_bytes());
        }
        Ok((digest, size))
    }
}

fn parse_entry(text: &str) -> Option<(String, u64)> {
    let (digest, size) = text.trim().split_once(' ')?;
    (digest.len() == 64).then(|| Some((digest.to_string(), size.parse().ok()?)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_file_matches_blake3_for_small_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4096, 5 << 20, 40 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &data).unwrap();
            let (digest, size) = hash_file(&p).unwrap();
            assert_eq!(
                digest,
                blake3::hash(&data).to_hex().to_string(),
                "len {len}"
            );
            assert_eq!(size, len as u64);
        }
    }

    #[test]
    fn stat_cache_serves_settled_files_and_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("s")).unwrap();
        let cache = StatCache::new(&store);
        let p = dir.path().join("input.txt");
        std::fs::write(&p, b"hello").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let first = cache.digest(&p).unwrap();
        assert_eq!(first.0, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(
            std::fs::read_dir(dir.path().join("s/cache/stat"))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(cache.digest(&p).unwrap(), first);
        std::fs::write(&p, b"world").unwrap();
        assert_eq!(
            cache.digest(&p).unwrap().0,
            blake3::hash(b"world").to_hex().to_string()
        );
    }
}
