//! Token files (`tokens-<split>.arrow`): round trips, determinism, zero-copy reads, and
//! rejection of damaged or foreign files without panics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Int32Array, LargeListArray, RecordBatch, UInt16Array, UInt64Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_ipc::MetadataVersion;
use arrow_schema::{DataType, Field, Schema};
use ausa_artifacts::{
    tokens_file_name, ArtifactError, DocumentsWriter, IdWidth, Split, TokenIds, TokensFile,
    TokensWriter,
};

/// `(doc_id, ids)` of a few documents of varied length, one of them empty.
fn sample_docs(vocab: u32) -> Vec<(u64, Vec<u32>)> {
    (0..7u64)
        .map(|d| {
            let len = [5, 0, 1, 17, 64, 3, 9][d as usize];
            let ids = (0..len)
                .map(|i| ((d * 7919 + i * 104_729) % u64::from(vocab)) as u32)
                .collect();
            (100 + d, ids)
        })
        .collect()
}

fn write(path: &Path, vocab: u32, docs: &[(u64, Vec<u32>)]) {
    let mut writer = TokensWriter::create(path, vocab).unwrap();
    for (doc_id, ids) in docs {
        writer.push_document(*doc_id, ids).unwrap();
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.documents, docs.len() as u64);
}

fn assert_round_trip(vocab: u32, width: IdWidth) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(tokens_file_name(Split::Train));
    let docs = sample_docs(vocab);
    write(&path, vocab, &docs);
    let file = TokensFile::open(&path).unwrap();
    assert_eq!(file.vocab_size(), vocab);
    assert_eq!(file.id_width(), width);
    assert_eq!(file.num_documents(), docs.len());
    let all: Vec<u32> = docs.iter().flat_map(|(_, ids)| ids.clone()).collect();
    assert_eq!(file.ids().to_vec(), all);
    assert_eq!(file.num_tokens(), all.len());
    let doc_ids: Vec<u64> = docs.iter().map(|(d, _)| *d).collect();
    assert_eq!(file.doc_ids(), doc_ids.as_slice());
    for (i, (_, ids)) in docs.iter().enumerate() {
        assert_eq!(&file.document(i).unwrap().to_vec(), ids, "document {i}");
    }
    assert!(file.document(docs.len()).is_none());
    let offsets = file.doc_offsets();
    assert_eq!((offsets[0], offsets[docs.len()]), (0, all.len() as u64));
}

#[test]
fn round_trip_u16() {
    assert_round_trip(8192, IdWidth::U16);
    assert_round_trip(65_536, IdWidth::U16);
}

#[test]
fn round_trip_u32() {
    assert_round_trip(65_537, IdWidth::U32);
    assert_round_trip(1_000_003, IdWidth::U32);
}

#[test]
fn empty_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens-test.arrow");
    write(&path, 300, &[]);
    let file = TokensFile::open(&path).unwrap();
    assert_eq!((file.num_documents(), file.num_tokens()), (0, 0));
    assert_eq!(file.doc_offsets(), &[0]);
}

#[test]
fn writer_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.arrow"), dir.path().join("b.arrow"));
    write(&a, 8192, &sample_docs(8192));
    write(&b, 8192, &sample_docs(8192));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn slices_point_into_the_mapping() {
    for vocab in [8192, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.arrow");
        write(&path, vocab, &sample_docs(vocab));
        let file = TokensFile::open(&path).unwrap();
        let map = file.mapped_bytes().as_ptr_range();
        let inside = |r: std::ops::Range<*const u8>| map.start <= r.start && r.end <= map.end;
        assert!(inside(file.ids().as_ptr_range()));
        assert!(inside(file.document(3).unwrap().as_ptr_range()));
        let offsets = file.doc_offsets().as_ptr_range();
        assert!(inside(offsets.start.cast()..offsets.end.cast()));
        let ids = file.ids().as_ptr_range().start as usize;
        assert_eq!(ids % 64, 0, "ids buffer is 64-byte aligned");
    }
}

#[test]
fn writer_rejects_ids_outside_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.arrow");
    let mut writer = TokensWriter::create(&path, 300).unwrap();
    let err = writer
        .push_document(7, &[1, 2, 300])
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.arrow") && err.contains("token id 300") && err.contains("document 7"));
    assert!(TokensWriter::create(&path, 0).is_err());
}

#[test]
fn token_ids_helpers() {
    let ids = TokenIds::U16(&[1, 2, 3]);
    assert_eq!((ids.len(), ids.get(2), ids.get(3)), (3, Some(3), None));
    assert_eq!(ids.slice(1..3).unwrap().to_vec(), vec![2, 3]);
    assert!(ids.slice(2..4).is_none());
    assert_eq!(TokenIds::U32(&[]).width(), IdWidth::U32);
    assert_eq!(IdWidth::for_vocab(65_536), IdWidth::U16);
    assert_eq!(IdWidth::for_vocab(65_537).bits(), 32);
}

/// Opens `path`, which must fail with an error naming it.
fn assert_rejected(path: &Path, what: &str) -> String {
    match TokensFile::open(path) {
        Ok(_) => panic!("{what}: opened"),
        Err(err) => {
            let text = error_chain(&err);
            assert!(text.contains(&path.display().to_string()), "{what}: {text}");
            text
        }
    }
}

fn error_chain(err: &ArtifactError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn sample_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("good.arrow");
    write(&path, 1000, &sample_docs(1000));
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn truncation_anywhere_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = sample_file(dir.path());
    let cut = dir.path().join("cut.arrow");
    let eighths = (0..8).map(|k| bytes.len() * k / 8);
    for len in eighths.chain(0..bytes.len()) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        assert_rejected(&cut, &format!("cut at {len}"));
    }
}

/// Flips every byte in turn: the reader must either reject the file with an error
/// naming it, or return data that still satisfies every invariant (a flip in padding
/// or doc ids is harmless).
#[test]
fn corrupted_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = sample_file(dir.path());
    let bad = dir.path().join("bad.arrow");
    for pos in 0..bytes.len() {
        for mask in [0xFF, 0x01, 0x80] {
            let mut damaged = bytes.clone();
            damaged[pos] ^= mask;
            std::fs::write(&bad, &damaged).unwrap();
            match TokensFile::open(&bad) {
                Ok(file) => assert_invariants(&file),
                Err(err) => assert!(
                    err.to_string().contains("bad.arrow"),
                    "byte {pos}: the error must name the file: {err}"
                ),
            }
        }
    }
    // The magic bytes are always checked.
    let mut damaged = bytes.clone();
    damaged[0] ^= 0xFF;
    std::fs::write(&bad, &damaged).unwrap();
    let err = TokensFile::open(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.arrow"), "{err}");
}

fn assert_invariants(file: &TokensFile) {
    let offsets = file.doc_offsets();
    assert_eq!(offsets.len(), file.num_documents() + 1);
    assert_eq!(offsets[0], 0);
    assert_eq!(*offsets.last().unwrap(), file.num_tokens() as u64);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    assert!(file.ids().iter().all(|id| id < file.vocab_size()));
}

#[test]
fn foreign_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.arrow");
    std::fs::write(&empty, b"").unwrap();
    assert_rejected(&empty, "empty file");

    let random = dir.path().join("random.arrow");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&random, &noise).unwrap();
    assert_rejected(&random, "random bytes");

    let mut framed = b"ARROW1\0\0".to_vec();
    framed.extend_from_slice(&noise);
    framed.extend_from_slice(&[16, 0, 0, 0]);
    framed.extend_from_slice(b"ARROW1");
    std::fs::write(&random, &framed).unwrap();
    assert_rejected(&random, "random bytes between magic numbers");

    let parquet = dir.path().join("documents.parquet");
    let mut docs = DocumentsWriter::create(&parquet).unwrap();
    docs.push(0, Split::Train, "a parquet file").unwrap();
    docs.finish().unwrap();
    assert_rejected(&parquet, "parquet file");

    let missing = dir.path().join("missing.arrow");
    assert_rejected(&missing, "missing file");
}

/// Writes an arbitrary Arrow IPC file (the way another program might).
fn write_foreign(path: &Path, schema: Schema, batches: &[RecordBatch], alignment: usize) {
    let options = IpcWriteOptions::try_new(alignment, false, MetadataVersion::V5).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = FileWriter::try_new_with_options(file, &schema, options).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
}

fn tokens_schema(vocab: &str, width: &str) -> Schema {
    let item = Arc::new(Field::new("item", DataType::UInt16, false));
    Schema::new(vec![
        Field::new("doc_id", DataType::UInt64, false),
        Field::new("tokens", DataType::LargeList(item), false),
    ])
    .with_metadata(
        [
            ("ausa.format", "tokens/1"),
            ("ausa.vocab_size", vocab),
            ("ausa.id_width", width),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<std::collections::HashMap<_, _>>(),
    )
}

fn tokens_batch(schema: &Schema, ids: Vec<u16>, offsets: Vec<i64>) -> RecordBatch {
    let docs = offsets.len() - 1;
    let item = Arc::new(Field::new("item", DataType::UInt16, false));
    let list = LargeListArray::new(
        item,
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(UInt16Array::from(ids)),
        None,
    );
    let doc_ids = UInt64Array::from((0..docs as u64).collect::<Vec<_>>());
    RecordBatch::try_new(
        Arc::new(schema.clone()),
        vec![Arc::new(doc_ids), Arc::new(list)],
    )
    .unwrap()
}

#[test]
fn foreign_arrow_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.arrow");

    let schema = Schema::new(vec![Field::new("x", DataType::Int32, false)]);
    let batch = RecordBatch::try_new(
        Arc::new(schema.clone()),
        vec![Arc::new(Int32Array::from(vec![1, 2]))],
    )
    .unwrap();
    write_foreign(&path, schema, &[batch], 64);
    assert!(assert_rejected(&path, "other schema").contains("columns are"));

    let schema = tokens_schema("10", "16");
    let batch = tokens_batch(&schema, vec![1, 2, 50], vec![0, 2, 3]);
    write_foreign(&path, schema.clone(), std::slice::from_ref(&batch), 64);
    assert!(assert_rejected(&path, "id out of range").contains("token id 50 at position 2"));

    let ok = tokens_batch(&schema, vec![1, 2, 3], vec![0, 2, 3]);
    write_foreign(&path, schema.clone(), std::slice::from_ref(&ok), 64);
    TokensFile::open(&path).unwrap();
    write_foreign(&path, schema.clone(), &[ok.clone(), ok.clone()], 64);
    assert!(assert_rejected(&path, "two batches").contains("2 record batches"));
    write_foreign(&path, schema, &[ok], 8);
    assert!(assert_rejected(&path, "8-byte alignment").contains("aligned"));

    let schema = tokens_schema("10", "32");
    let batch = tokens_batch(&schema, vec![1], vec![0, 1]);
    write_foreign(&path, schema, &[batch], 64);
    assert!(assert_rejected(&path, "width mismatch").contains("ausa.id_width"));

    let schema = tokens_schema("100000", "16");
    let batch = tokens_batch(&schema, vec![1], vec![0, 1]);
    write_foreign(&path, schema, &[batch], 64);
    assert!(assert_rejected(&path, "vocab too big for u16").contains("ausa.vocab_size"));
}
