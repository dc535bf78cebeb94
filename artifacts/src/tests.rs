use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::*;

fn sample_docs(n: u64) -> Vec<Document> {
    (0..n)
        .map(|i| Document {
            doc_id: i,
            split: Split::ALL[(i % 3) as usize],
            text: format!(
                "document {i} — ünïcödé text {}",
                "word ".repeat((i % 17) as usize)
            ),
        })
        .collect()
}

fn write_docs(path: &Path, docs: &[Document]) -> u64 {
    let mut writer = DocumentsWriter::create(path).unwrap();
    for d in docs {
        writer.push(d.doc_id, d.split, &d.text).unwrap();
    }
    writer.finish().unwrap()
}

fn write_foreign(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn row_group_rows(path: &Path) -> Vec<i64> {
    let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect()
}

#[test]
fn documents_writer_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let docs = sample_docs(20_000);
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    assert_eq!(write_docs(&a, &docs), 20_000);
    write_docs(&b, &docs);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn footer_has_fixed_created_by_and_format_tag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DOCUMENTS_FILE);
    write_docs(&path, &sample_docs(3));
    let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
    let meta = reader.metadata().file_metadata();
    assert_eq!(meta.created_by(), Some("ausa"));
    let kv = meta.key_value_metadata().unwrap();
    assert!(kv
        .iter()
        .any(|k| k.key == "ausa.format" && k.value.as_deref() == Some("documents/1")));
}

#[test]
fn documents_round_trip_in_bounded_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = documents_path(dir.path());
    let docs = sample_docs(20_000);
    write_docs(&path, &docs);
    assert_eq!(read_documents(&path).unwrap(), docs);
    assert_eq!(row_group_rows(&path), vec![8192, 8192, 3616]);
    let batches = document_batches(&path).unwrap();
    assert_eq!(batches.num_rows(), 20_000);
    let lens: Vec<usize> = batches.map(|b| b.unwrap().len()).collect();
    assert_eq!(lens.iter().sum::<usize>(), 20_000);
    assert!(lens.len() >= 3, "streamed in several batches: {lens:?}");
}

#[test]
fn large_texts_close_row_groups_early() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DOCUMENTS_FILE);
    let big = "x".repeat(3 << 20);
    let docs: Vec<Document> = (0..7)
        .map(|i| Document {
            doc_id: i,
            split: Split::Train,
            text: big.clone(),
        })
        .collect();
    write_docs(&path, &docs);
    // 3 MiB each: the third document crosses 8 MiB and closes the group.
    assert_eq!(row_group_rows(&path), vec![3, 3, 1]);
    assert_eq!(read_documents(&path).unwrap(), docs);
}

#[test]
fn empty_table_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DOCUMENTS_FILE);
    assert_eq!(write_docs(&path, &[]), 0);
    assert!(read_documents(&path).unwrap().is_empty());
}

#[test]
fn missing_column_error_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.parquet");
    write_foreign(
        &path,
        vec![
            (
                "doc_id",
                Arc::new(UInt64Array::from(vec![1u64])) as ArrayRef,
            ),
            ("text", Arc::new(StringArray::from(vec!["a"]))),
        ],
    );
    let err = read_documents(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::Schema { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("foreign.parquet"), "{msg}");
    assert!(msg.contains("missing column `split`"), "{msg}");
    assert!(msg.contains("[doc_id, text]"), "{msg}");
}

#[test]
fn wrong_type_error_names_column_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.parquet");
    write_foreign(
        &path,
        vec![
            ("doc_id", Arc::new(Int64Array::from(vec![1i64])) as ArrayRef),
            ("split", Arc::new(StringArray::from(vec!["train"]))),
            ("text", Arc::new(StringArray::from(vec!["a"]))),
        ],
    );
    let msg = document_batches(&path).err().unwrap().to_string();
    assert!(msg.contains("foreign.parquet"), "{msg}");
    assert!(
        msg.contains("column `doc_id` has type Int64, expected UInt64"),
        "{msg}"
    );
}

#[test]
fn bad_split_value_and_nulls_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bad_split = dir.path().join("bad_split.parquet");
    write_foreign(
        &bad_split,
        vec![
            (
                "doc_id",
                Arc::new(UInt64Array::from(vec![0u64, 1])) as ArrayRef,
            ),
            ("split", Arc::new(StringArray::from(vec!["train", "dev"]))),
            ("text", Arc::new(StringArray::from(vec!["a", "b"]))),
        ],
    );
    let msg = read_documents(&bad_split).unwrap_err().to_string();
    assert!(
        msg.contains("bad_split.parquet") && msg.contains("`dev` in row 1"),
        "{msg}"
    );

    let nulls = dir.path().join("nulls.parquet");
    write_foreign(
        &nulls,
        vec![
            (
                "doc_id",
                Arc::new(UInt64Array::from(vec![0u64])) as ArrayRef,
            ),
            ("split", Arc::new(StringArray::from(vec!["train"]))),
            ("text", Arc::new(StringArray::from(vec![None::<&str>]))),
        ],
    );
    let msg = read_documents(&nulls).unwrap_err().to_string();
    assert!(
        msg.contains("nulls.parquet") && msg.contains("`text` contains 1 null"),
        "{msg}"
    );
}

#[test]
fn io_and_parquet_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.parquet");
    let err = read_documents(&missing).unwrap_err();
    assert!(matches!(err, ArtifactError::Io { .. }));
    assert!(err.to_string().contains("missing.parquet"));

    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"not parquet at all").unwrap();
    let err = read_doc_stats(&garbage).unwrap_err();
    assert!(matches!(err, ArtifactError::Parquet { .. }));
    assert!(err.to_string().contains("garbage.parquet"));
}

#[test]
fn doc_stat_measures_words_and_scalars() {
    let stat = DocStat::measure(7, Split::Test, "  héllo\twörld \n\n x ");
    assert_eq!(
        stat,
        DocStat {
            doc_id: 7,
            split: Split::Test,
            words: 3,
            chars: 19
        }
    );
}

#[test]
fn doc_stats_round_trip_and_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let stats: Vec<DocStat> = sample_docs(70_000)
        .iter()
        .map(|d| DocStat::measure(d.doc_id, d.split, &d.text))
        .collect();
    let write = |path: &Path| {
        let mut writer = DocStatsWriter::create(path).unwrap();
        stats.iter().for_each(|s| writer.push(s).unwrap());
        writer.finish().unwrap()
    };
    let (a, b) = (doc_stats_path(dir.path()), dir.path().join("b.parquet"));
    assert_eq!(write(&a), 70_000);
    write(&b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(row_group_rows(&a), vec![65536, 4464]);
    assert_eq!(read_doc_stats(&a).unwrap(), stats);
}

#[test]
fn doc_stats_reader_rejects_documents_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DOCUMENTS_FILE);
    write_docs(&path, &sample_docs(2));
    let msg = read_doc_stats(&path).unwrap_err().to_string();
    assert!(
        msg.contains(DOCUMENTS_FILE) && msg.contains("missing column `words`"),
        "{msg}"
    );
}

#[test]
fn split_names_round_trip() {
    for split in Split::ALL {
        assert_eq!(Split::from_name(split.as_str()), Some(split));
    }
    assert_eq!(Split::from_name("dev"), None);
    assert_eq!(Split::Validation.to_string(), "validation");
}
