//! Opening a large token file and touching a small part of it keeps resident memory
//! small: the reader maps the file instead of reading it into the heap, and its
//! validation pass does not go through the mapping.
//!
//! Its own test binary, so no other test's allocations move this process's RSS.

use ausa_artifacts::{TokenIds, TokensFile, TokensWriter};

/// 32 M 16-bit ids: a 64 MB file, four times the RSS growth the test allows, so a
/// reader that loaded it would fail; small enough for a CI machine short of disk.
const DOCS: u64 = 320;
const IDS_PER_DOC: u32 = 100_000;
const VOCAB: u32 = 8192;

/// Resident set size of this process in bytes, from `/proc/self/status`.
fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
#[cfg(target_os = "linux")]
fn touching_one_megabyte_does_not_load_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens-train.arrow");
    let mut writer = TokensWriter::create(&path, VOCAB).unwrap();
    let doc: Vec<u32> = (0..IDS_PER_DOC).map(|i| i % VOCAB).collect();
    for d in 0..DOCS {
        writer.push_document(d, &doc).unwrap();
    }
    writer.finish().unwrap();
    drop(doc);
    let file_size = std::fs::metadata(&path).unwrap().len();
    assert!(file_size > 64_000_000, "{file_size}");

    let before_open = vm_rss();
    let file = TokensFile::open(&path).unwrap();
    let after_open = vm_rss();
    let TokenIds::U16(ids) = file.ids() else {
        panic!("expected 16-bit ids")
    };
    let touched = &ids[..512 * 1024]; // 1 MiB
    let sum: u64 = touched.iter().map(|&v| u64::from(v)).sum();
    let after_touch = vm_rss();
    assert!(sum > 0);
    let grew = after_touch.saturating_sub(before_open);
    assert!(
        grew < 16 << 20,
        "RSS grew by {grew} bytes for a {file_size}-byte file (before open {before_open}, \
         after open {after_open}, after touching 1 MiB {after_touch})"
    );
}
