//! Writing stage outputs: the documents sink shared by every stage kind that produces
//! a documents table (`corpus`, `download`), and the error for an unwritable file.

use std::path::{Path, PathBuf};

use ausa_artifacts::{DocumentsWriter, Split};
use ausa_dag::{StageError, Stats};
use serde_json::json;

/// An output file of a stage could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write `{}`", path.display())]
pub(crate) struct WriteError {
    pub(crate) path: PathBuf,
    #[source]
    pub(crate) source: std::io::Error,
}

/// Per-split totals reported in the stage's statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitTotals {
    pub(crate) documents: u64,
    pub(crate) words: u64,
    pub(crate) bytes: u64,
}

/// The documents writer plus the running `doc_id` (the row index) and per-split totals.
pub(crate) struct DocumentSink {
    writer: DocumentsWriter,
    next_id: u64,
    totals: [SplitTotals; 3],
}

impl DocumentSink {
    pub(crate) fn create(path: &Path) -> Result<DocumentSink, StageError> {
        Ok(DocumentSink {
            writer: DocumentsWriter::create(path)?,
            next_id: 0,
            totals: Default::default(),
        })
    }

    /// Adds a document after trimming it; empty documents are dropped.
    pub(crate) fn push(&mut self, split: Split, text: &str) -> Result<(), StageError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        self.push_counted(split, text, text.split_whitespace().count() as u64)
    }

    /// Adds a trimmed, non-empty document whose word count is known.
    pub(crate) fn push_counted(
        &mut self,
        split: Split,
        text: &str,
        words: u64,
    ) -> Result<(), StageError> {
        self.writer.push(self.next_id, split, text)?;
        self.next_id += 1;
        let totals = &mut self.totals[split.index()];
        totals.documents += 1;
        totals.words += words;
        totals.bytes += text.len() as u64;
        Ok(())
    }

    pub(crate) fn totals(&self, split: Split) -> SplitTotals {
        self.totals[split.index()]
    }

    /// Closes the file; returns the statistics: `documents`, `words` and `bytes` in
    /// all and per split.
    pub(crate) fn finish(self) -> Result<Stats, StageError> {
        self.writer.finish()?;
        let sum = |f: fn(&SplitTotals) -> u64| self.totals.iter().map(f).sum::<u64>();
        let splits: serde_json::Map<_, _> = Split::ALL
            .iter()
            .map(|&s| {
                let t = self.totals[s.index()];
                let value = json!({"documents": t.documents, "words": t.words, "bytes": t.bytes});
                (s.as_str().to_string(), value)
            })
            .collect();
        let mut stats = Stats::new();
        stats.insert("documents".into(), json!(sum(|t| t.documents)));
        stats.insert("words".into(), json!(sum(|t| t.words)));
        stats.insert("bytes".into(), json!(sum(|t| t.bytes)));
        stats.insert("splits".into(), serde_json::Value::Object(splits));
        Ok(stats)
    }
}
