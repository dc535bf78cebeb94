//! The per-document statistics table: `doc_stats.parquet`.
//!
//! One row per document of a documents table, in the same order.
//!
//! | column   | Arrow type | nulls | meaning                                                  |
//! |----------|------------|-------|----------------------------------------------------------|
//! | `doc_id` | `UInt64`   | no    | the document's `doc_id` in the documents table           |
//! | `split`  | `Utf8`     | no    | `"train"`, `"validation"` or `"test"`                    |
//! | `words`  | `UInt64`   | no    | words: maximal runs of non-whitespace (Unicode `White_Space`) |
//! | `chars`  | `UInt64`   | no    | Unicode scalar values (not bytes, not grapheme clusters) |
//!
//! [`DocStat::measure`] is the definition of `words` and `chars`.
//!
//! Encoding: Parquet format 1.0 pages, every column zstd level 3; `split` is
//! dictionary encoded, the other columns plain. Row groups hold at most 65536 rows.
//! The footer's `created_by` is `"ausa"` and its key-value metadata has `ausa.format =
//! "doc_stats/1"`; the same rows always give byte-identical files.
//!
//! Readers check the four columns' presence and types (extra columns are ignored),
//! that no value is null, and the `split` names; an error names the file and column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::DataType;

use crate::documents::parse_splits;
use crate::table::{column, ColumnSpec, TableReader, TableSpec, TableWriter};
use crate::{ArtifactError, Split};

/// The file name of the doc stats table inside an artifact directory.
pub const DOC_STATS_FILE: &str = "doc_stats.parquet";

/// The `ausa.format` tag written into the footer's key-value metadata.
pub const DOC_STATS_FORMAT: &str = "doc_stats/1";

/// Rows per row group, at most (rows are 30-odd bytes, so groups stay small).
const ROW_GROUP_ROWS: usize = 65536;

static SPEC: TableSpec = TableSpec {
    columns: &[
        ColumnSpec {
            name: "doc_id",
            ty: DataType::UInt64,
        },
        ColumnSpec {
            name: "split",
            ty: DataType::Utf8,
        },
        ColumnSpec {
            name: "words",
            ty: DataType::UInt64,
        },
        ColumnSpec {
            name: "chars",
            ty: DataType::UInt64,
        },
    ],
    format: DOC_STATS_FORMAT,
    dictionary: &["split"],
    no_statistics: &[],
};

/// The statistics of one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocStat {
    /// Document id.
    pub doc_id: u64,
    /// Split.
    pub split: Split,
    /// Whitespace-separated words.
    pub words: u64,
    /// Unicode scalar values.
    pub chars: u64,
}

impl DocStat {
    /// Measures `text`: this is what the `words` and `chars` columns mean.
    pub fn measure(doc_id: u64, split: Split, text: &str) -> DocStat {
        DocStat {
            doc_id,
            split,
            words: text.split_whitespace().count() as u64,
            chars: text.chars().count() as u64,
        }
    }
}

/// Streams rows into a `doc_stats.parquet` file.
///
/// Call [`DocStatsWriter::finish`]; a writer dropped without it leaves an invalid file.
pub struct DocStatsWriter {
    table: TableWriter,
    doc_ids: UInt64Builder,
    splits: StringBuilder,
    words: UInt64Builder,
    chars: UInt64Builder,
    buffered: usize,
}

impl DocStatsWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<DocStatsWriter, ArtifactError> {
        Ok(DocStatsWriter {
            table: TableWriter::create(path.as_ref(), &SPEC)?,
            doc_ids: UInt64Builder::with_capacity(ROW_GROUP_ROWS),
            splits: StringBuilder::new(),
            words: UInt64Builder::with_capacity(ROW_GROUP_ROWS),
            chars: UInt64Builder::with_capacity(ROW_GROUP_ROWS),
            buffered: 0,
        })
    }

    /// Appends one row.
    pub fn push(&mut self, stat: &DocStat) -> Result<(), ArtifactError> {
        self.doc_ids.append_value(stat.doc_id);
        self.splits.append_value(stat.split.as_str());
        self.words.append_value(stat.words);
        self.chars.append_value(stat.chars);
        self.buffered += 1;
        if self.buffered >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows and the footer; returns the number of rows.
    pub fn finish(mut self) -> Result<u64, ArtifactError> {
        self.flush()?;
        self.table.finish()
    }

    fn flush(&mut self) -> Result<(), ArtifactError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.doc_ids.finish()),
            Arc::new(self.splits.finish()),
            Arc::new(self.words.finish()),
            Arc::new(self.chars.finish()),
        ];
        self.buffered = 0;
        self.table.write_row_group(columns)
    }
}

/// Reads a whole `doc_stats.parquet` file, checking its schema and values.
///
/// The table is small (about 32 bytes a document), so it is read at once.
pub fn read_doc_stats(path: impl AsRef<Path>) -> Result<Vec<DocStat>, ArtifactError> {
    let mut reader = TableReader::open(path.as_ref(), &SPEC)?;
    let mut stats = Vec::with_capacity(usize::try_from(reader.rows()).unwrap_or(0));
    while let Some(batch) = reader.next_batch() {
        let first_row = stats.len() as u64;
        decode(reader.path(), &batch?, first_row, &mut stats)?;
    }
    Ok(stats)
}

fn decode(
    path: &Path,
    batch: &RecordBatch,
    first_row: u64,
    out: &mut Vec<DocStat>,
) -> Result<(), ArtifactError> {
    let doc_ids = column::<UInt64Array>(path, batch, "doc_id")?;
    let splits = parse_splits(
        path,
        column::<StringArray>(path, batch, "split")?,
        first_row,
    )?;
    let words = column::<UInt64Array>(path, batch, "words")?;
    let chars = column::<UInt64Array>(path, batch, "chars")?;
    out.extend(splits.into_iter().enumerate().map(|(i, split)| DocStat {
        doc_id: doc_ids.value(i),
        split,
        words: words.value(i),
        chars: chars.value(i),
    }));
    Ok(())
}

/// The word-count histogram (JSON) the `doc_stats` stage writes next to the table.
pub const HISTOGRAM_FILE: &str = "histogram.json";

/// The path of the histogram inside artifact directory `dir`.
pub fn histogram_path(dir: impl AsRef<Path>) -> PathBuf {
    dir.as_ref().join(HISTOGRAM_FILE)
}

/// The path of the doc stats table inside artifact directory `dir`.
pub fn doc_stats_path(dir: impl AsRef<Path>) -> PathBuf {
    dir.as_ref().join(DOC_STATS_FILE)
}
