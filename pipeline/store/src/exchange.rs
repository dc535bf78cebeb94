//! Atomic exchange of two directories (`renameat2(RENAME_EXCHANGE)`), for `--force`.
//!
//! A forced rebuild replaces a published object by its rebuilt copy. `rename(2)` cannot
//! replace a non-empty directory, so without an exchange there is a moment in which the
//! object is absent. Linux can swap two paths in one step; where the filesystem cannot
//! (NFS, some FUSE filesystems: `EINVAL`), [`exchange`] reports `Unsupported` and the
//! caller falls back to two renames under the object's build lock.
//!
//! The workspace denies `unsafe_code`; this module allows it for the one FFI call.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Swaps the directory entries `a` and `b` atomically. Both must exist.
pub(crate) fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (a, b) = (c(a)?, c(b)?);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `a` and `b` are valid NUL-terminated strings that outlive the call;
        // renameat2 reads them and keeps no pointer. AT_FDCWD makes them relative to the
        // current directory, as for rename(2).
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                Err(std::io::Error::new(std::io::ErrorKind::Unsupported, e))
            }
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "no atomic exchange on this platform",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exchange_swaps_two_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("f"), b"from a").unwrap();
        std::fs::write(b.join("f"), b"from b").unwrap();
        match super::exchange(&a, &b) {
            Ok(()) => {
                assert_eq!(std::fs::read(a.join("f")).unwrap(), b"from b");
                assert_eq!(std::fs::read(b.join("f")).unwrap(), b"from a");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}"),
        }
    }
}
