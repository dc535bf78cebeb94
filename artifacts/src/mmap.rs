//! Read-only memory maps of published artifact files: the one place in this crate
//! that uses `unsafe`.
//!
//! Zero-copy readers ([`crate::tokens::TokensFile`]) hand out slices that point into
//! the page cache instead of copying gigabytes of token ids into the heap. Mapping a
//! file is `unsafe` in Rust because the compiler cannot know whether another process
//! changes or truncates the file while the mapping lives: a change would alter memory
//! behind a shared reference, and a truncation would turn reads past the new end into
//! `SIGBUS`. The workspace denies `unsafe_code`; this module allows it locally for the
//! single call that creates a mapping, and everything built on top of it is safe code
//! that reads the mapping through bounds-checked [`Buffer`] slices.
//!
//! The invariant the mapping relies on: the file is an **immutable published
//! artifact**. The store writes an object once into a temporary directory, publishes
//! it by an atomic rename and never writes it again (`ausa verify` reports a changed
//! file instead of repairing it in place). The mapping is read-only, and its length is
//! the file's length at the time it was mapped, so no slice reaches past the end of
//! the file as it was when opened.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use arrow_buffer::Buffer;
use memmap2::Mmap;

use crate::ArtifactError;

/// Maps the whole file at `path` read-only and returns it as an Arrow [`Buffer`]
/// that owns the mapping (the mapping is released when the last clone is dropped).
///
/// The caller must only map files covered by the module's invariant: immutable,
/// published artifacts.
pub(crate) fn map_readonly(path: &Path) -> Result<Buffer, ArtifactError> {
    let file = File::open(path).map_err(|e| ArtifactError::io(path, e))?;
    // SAFETY: `path` is a published artifact, which is never modified or truncated
    // after publication (module invariant above, established by the store's atomic
    // publish of read-only objects); the map is read-only (`Mmap`, not `MmapMut`) and
    // spans exactly the file's current length, so every later read through the
    // returned bounds-checked `Buffer` stays inside mapped, unchanging memory.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ArtifactError::io(path, e))?;
    Ok(Buffer::from(bytes::Bytes::from_owner(map)))
}

/// A buffer of `n` `u32`s, zeroed, then filled by `fill`, for outputs of hundreds of
/// megabytes (MinHash signatures) that become an Arrow array without a copy.
///
/// It lives in an anonymous map advised to use transparent huge pages where the OS
/// offers them (Linux with THP in `madvise` mode), so writing fresh output costs one
/// page fault per 2 MiB instead of one per 4 KiB: for 270 MB of MinHash signatures
/// this halved the signing time on a 2-core machine (0.146 s to 0.071 s, see
/// docs/benchmarks.md). Safe code: the map is page-aligned, so viewing it as `u32`s
/// cannot fail.
pub fn filled_u32_buffer(
    n: usize,
    fill: impl FnOnce(&mut [u32]),
) -> std::io::Result<arrow_buffer::ScalarBuffer<u32>> {
    let len = n * std::mem::size_of::<u32>();
    let mut map = memmap2::MmapMut::map_anon(len.max(1))?;
    // Advice only: where huge pages are unavailable the map works as usual.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    fill(bytemuck::cast_slice_mut(&mut map[..len]));
    let buffer = Buffer::from(bytes::Bytes::from_owner(map));
    Ok(arrow_buffer::ScalarBuffer::new(buffer, 0, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_buffers_start_zeroed_and_keep_what_was_written() {
        let buffer = filled_u32_buffer(3 << 20, |values| {
            assert!(values.iter().all(|&v| v == 0));
            values
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = i as u32 * 3);
        })
        .unwrap();
        assert_eq!(buffer.len(), 3 << 20);
        assert!(buffer.iter().enumerate().all(|(i, &v)| v == i as u32 * 3));
        assert!(filled_u32_buffer(0, |v| assert!(v.is_empty()))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn maps_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"hello mapping").unwrap();
        let buffer = map_readonly(&path).unwrap();
        assert_eq!(buffer.as_slice(), b"hello mapping");
    }

    #[test]
    fn maps_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.bin");
        std::fs::write(&path, b"").unwrap();
        assert!(map_readonly(&path).unwrap().is_empty());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = map_readonly(Path::new("/nonexistent/x.arrow")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.arrow"), "{err}");
    }
}
