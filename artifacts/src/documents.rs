//! The documents table: `documents.parquet`.
//!
//! One row per document, in the order the producing stage chose (for `corpus`: train
//! documents, then validation, then test, each in input order; `doc_id` is the row
//! index).
//!
//! | column   | Arrow type | nulls | meaning                                             |
//! |----------|------------|-------|-----------------------------------------------------|
//! | `doc_id` | `UInt64`   | no    | document id, unique within the file                 |
//! | `split`  | `Utf8`     | no    | `"train"`, `"validation"` or `"test"`               |
//! | `text`   | `Utf8`     | no    | the document text (`corpus` writes it trimmed, non-empty) |
//!
//! Encoding: Parquet format 1.0 pages, every column zstd level 3; `split` is
//! dictionary encoded, the other columns plain; no statistics for `text`. Each row
//! group holds at most 8192 documents and is closed early once its text reaches
//! 8 MiB, so readers can stream large corpora with bounded memory. The footer's
//! `created_by` is `"ausa"` and its key-value metadata has `ausa.format =
//! "documents/1"`; nothing time-dependent is written, so the same rows always give
//! byte-identical files.
//!
//! Readers check that the three columns exist with these types (extra columns are
//! ignored), that no value is null, and that every `split` value is one of the three
//! names; an error names the file and the column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::DataType;

use crate::table::{column, ColumnSpec, TableReader, TableSpec, TableWriter};
use crate::{ArtifactError, Split};

/// The file name of the documents table inside an artifact directory.
pub const DOCUMENTS_FILE: &str = "documents.parquet";

/// The `ausa.format` tag written into the footer's key-value metadata.
pub const DOCUMENTS_FORMAT: &str = "documents/1";

/// Documents per row group, at most.
const ROW_GROUP_DOCS: usize = 8192;

/// Text bytes after which a row group is closed early.
const ROW_GROUP_TEXT_BYTES: usize = 8 << 20;

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
            name: "text",
            ty: DataType::Utf8,
        },
    ],
    format: DOCUMENTS_FORMAT,
    dictionary: &["split"],
    no_statistics: &["text"],
};

/// One document, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Document id.
    pub doc_id: u64,
    /// Split.
    pub split: Split,
    /// Text.
    pub text: String,
}

/// One document, borrowed from a [`DocumentBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentRef<'a> {
    /// Document id.
    pub doc_id: u64,
    /// Split.
    pub split: Split,
    /// Text.
    pub text: &'a str,
}

/// Streams documents into a `documents.parquet` file.
///
/// Call [`DocumentsWriter::finish`]; a writer dropped without it leaves an invalid file.
pub struct DocumentsWriter {
    table: TableWriter,
    doc_ids: UInt64Builder,
    splits: StringBuilder,
    texts: StringBuilder,
    buffered_rows: usize,
    buffered_text: usize,
}

impl DocumentsWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<DocumentsWriter, ArtifactError> {
        Ok(DocumentsWriter {
            table: TableWriter::create(path.as_ref(), &SPEC)?,
            doc_ids: UInt64Builder::with_capacity(ROW_GROUP_DOCS),
            splits: StringBuilder::new(),
            texts: StringBuilder::new(),
            buffered_rows: 0,
            buffered_text: 0,
        })
    }

    /// Appends one document.
    pub fn push(&mut self, doc_id: u64, split: Split, text: &str) -> Result<(), ArtifactError> {
        self.doc_ids.append_value(doc_id);
        self.splits.append_value(split.as_str());
        self.texts.append_value(text);
        self.buffered_rows += 1;
        self.buffered_text += text.len();
        if self.buffered_rows >= ROW_GROUP_DOCS || self.buffered_text >= ROW_GROUP_TEXT_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered documents and the footer; returns the number of documents.
    pub fn finish(mut self) -> Result<u64, ArtifactError> {
        self.flush()?;
        self.table.finish()
    }

    fn flush(&mut self) -> Result<(), ArtifactError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.doc_ids.finish()),
            Arc::new(self.splits.finish()),
            Arc::new(self.texts.finish()),
        ];
        self.buffered_rows = 0;
        self.buffered_text = 0;
        self.table.write_row_group(columns)
    }
}

/// A validated batch of documents (one decoded slice of the file).
#[derive(Debug, Clone)]
pub struct DocumentBatch {
    doc_ids: UInt64Array,
    splits: Vec<Split>,
    texts: StringArray,
}

impl DocumentBatch {
    /// Number of documents.
    pub fn len(&self) -> usize {
        self.splits.len()
    }

    /// Whether the batch has no documents.
    pub fn is_empty(&self) -> bool {
        self.splits.is_empty()
    }

    /// Document `i` (panics if `i >= len()`).
    pub fn get(&self, i: usize) -> DocumentRef<'_> {
        DocumentRef {
            doc_id: self.doc_ids.value(i),
            split: self.splits[i],
            text: self.texts.value(i),
        }
    }

    /// The documents in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = DocumentRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Streams a `documents.parquet` file batch by batch; see [`document_batches`].
pub struct DocumentBatches {
    reader: TableReader,
    rows_read: u64,
    failed: bool,
}

impl DocumentBatches {
    /// The number of documents in the file (from the footer).
    pub fn num_rows(&self) -> u64 {
        self.reader.rows()
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        self.reader.path()
    }

    fn decode(&self, batch: &RecordBatch) -> Result<DocumentBatch, ArtifactError> {
        let path = self.reader.path();
        let doc_ids = column::<UInt64Array>(path, batch, "doc_id")?.clone();
        let texts = column::<StringArray>(path, batch, "text")?.clone();
        let names = column::<StringArray>(path, batch, "split")?;
        let splits = parse_splits(path, names, self.rows_read)?;
        Ok(DocumentBatch {
            doc_ids,
            splits,
            texts,
        })
    }
}

impl Iterator for DocumentBatches {
    type Item = Result<DocumentBatch, ArtifactError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let decoded = self.reader.next_batch()?.and_then(|b| self.decode(&b));
        match &decoded {
            Ok(batch) => self.rows_read += batch.len() as u64,
            Err(_) => self.failed = true,
        }
        Some(decoded)
    }
}

/// `first_row` is the file row of `names[0]`, for the error message.
pub(crate) fn parse_splits(
    path: &Path,
    names: &StringArray,
    first_row: u64,
) -> Result<Vec<Split>, ArtifactError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let name = name.unwrap_or_default();
            Split::from_name(name).ok_or_else(|| {
                ArtifactError::schema(
                    path,
                    format!(
                        "column `split` has value `{name}` in row {}; expected train, validation or test",
                        first_row + i as u64
                    ),
                )
            })
        })
        .collect()
}

/// Opens a `documents.parquet` file for streaming, checking its schema first.
pub fn document_batches(path: impl AsRef<Path>) -> Result<DocumentBatches, ArtifactError> {
    let reader = TableReader::open(path.as_ref(), &SPEC)?;
    Ok(DocumentBatches {
        reader,
        rows_read: 0,
        failed: false,
    })
}

/// Reads a whole `documents.parquet` file into memory (small corpora and tests).
pub fn read_documents(path: impl AsRef<Path>) -> Result<Vec<Document>, ArtifactError> {
    let mut documents = Vec::new();
    for batch in document_batches(path)? {
        documents.extend(batch?.iter().map(|d| Document {
            doc_id: d.doc_id,
            split: d.split,
            text: d.text.to_string(),
        }));
    }
    Ok(documents)
}

/// The path of the documents table inside artifact directory `dir`.
pub fn documents_path(dir: impl AsRef<Path>) -> PathBuf {
    dir.as_ref().join(DOCUMENTS_FILE)
}
