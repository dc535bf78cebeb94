//! Reading the text column of downloaded Parquet files and turning its rows into
//! documents: one per non-blank row, or WikiText articles rebuilt from rows that are
//! lines.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_schema::DataType;
use ausa_dag::StageError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::wikitext::starts_article;

/// A Parquet file could not be read as rows of text. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RowsError {
    #[error("cannot open `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read Parquet file `{}`", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("`{}`: {detail}", path.display())]
    Column { path: PathBuf, detail: String },
}

/// Calls `row` with each row of the Utf8 or LargeUtf8 column `column` of the Parquet
/// file at `path`, in order, streaming batch by batch; null rows read as `""`.
pub(crate) fn for_each_row(
    path: &Path,
    column: &str,
    row: &mut dyn FnMut(&str) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let parquet_err = |source| RowsError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| RowsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let index = text_column(path, builder.schema(), column)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    for batch in builder.with_projection(mask).build().map_err(parquet_err)? {
        let batch = batch.map_err(|e| parquet_err(e.into()))?;
        let array = batch.column(0);
        if let Some(strings) = array.as_string_opt::<i32>() {
            (0..strings.len()).try_for_each(|i| row(value_or_empty(strings, i)))?;
        } else if let Some(strings) = array.as_string_opt::<i64>() {
            (0..strings.len()).try_for_each(|i| row(value_or_empty(strings, i)))?;
        }
    }
    Ok(())
}

fn value_or_empty<O: arrow_array::OffsetSizeTrait>(
    strings: &arrow_array::GenericStringArray<O>,
    i: usize,
) -> &str {
    if strings.is_null(i) {
        ""
    } else {
        strings.value(i)
    }
}

fn text_column(
    path: &Path,
    schema: &arrow_schema::Schema,
    column: &str,
) -> Result<usize, RowsError> {
    let error = |detail| RowsError::Column {
        path: path.to_path_buf(),
        detail,
    };
    let Some((index, field)) = schema.column_with_name(column) else {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(error(format!(
            "no column `{column}` (see the `text_column` parameter); the file has columns [{}]",
            names.join(", ")
        )));
    };
    match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => Ok(index),
        other => Err(error(format!(
            "column `{column}` has type {other}, expected Utf8 or LargeUtf8 text"
        ))),
    }
}

/// Rebuilds WikiText articles from a stream of lines (the rows of a split, in order,
/// across all its files: an article may continue in the next shard).
///
/// An article starts at a level-1 heading line (` = Title = `) that has a blank line
/// (or the start of the split) before it and a blank line (or the end) after it: the
/// raw corpus also has lines shaped like headings inside articles (continued formulas,
/// table rows), and only real titles stand alone. Section headings stay inside the
/// article. Each article is emitted trimmed, lines joined with `\n`; text before the
/// first heading is a document of its own.
#[derive(Debug)]
pub(crate) struct ArticleBuilder {
    /// The lines placed in the current article, each followed by `\n`.
    article: String,
    /// The latest line: whether it starts an article depends on the line after it.
    held: Option<String>,
    /// Whether the line before `held` was blank (or `held` is the first line).
    blank_before_held: bool,
}

impl Default for ArticleBuilder {
    fn default() -> Self {
        ArticleBuilder {
            article: String::new(),
            held: None,
            blank_before_held: true,
        }
    }
}

impl ArticleBuilder {
    /// Adds one row: its text without the final `\n` is one line (or several, if it
    /// holds more newlines).
    pub(crate) fn push_row(
        &mut self,
        row: &str,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        let row = row.strip_suffix('\n').unwrap_or(row);
        row.split('\n')
            .try_for_each(|line| self.push_line(line.strip_suffix('\r').unwrap_or(line), emit))
    }

    fn push_line(
        &mut self,
        line: &str,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        if let Some(previous) = self.held.take() {
            self.place(previous, line.trim().is_empty(), emit)?;
        }
        self.held = Some(line.to_string());
        Ok(())
    }

    /// Places the held line `line`, given whether the line after it is blank.
    fn place(
        &mut self,
        line: String,
        blank_after: bool,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        if starts_article(self.blank_before_held, &line, blank_after) {
            self.flush(emit)?;
        }
        self.blank_before_held = line.trim().is_empty();
        self.article.push_str(&line);
        self.article.push('\n');
        Ok(())
    }

    /// Emits the last article.
    pub(crate) fn finish(
        mut self,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        if let Some(last) = self.held.take() {
            self.place(last, true, emit)?;
        }
        self.flush(emit)
    }

    fn flush(
        &mut self,
        emit: &mut dyn FnMut(&str) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        let text = self.article.trim();
        if !text.is_empty() {
            emit(text)?;
        }
        self.article.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn articles(rows: &[&str]) -> Vec<String> {
        let mut docs = Vec::new();
        let mut emit = |d: &str| -> Result<(), StageError> {
            docs.push(d.to_string());
            Ok(())
        };
        let mut builder = ArticleBuilder::default();
        for row in rows {
            builder.push_row(row, &mut emit).unwrap();
        }
        builder.finish(&mut emit).unwrap();
        docs
    }

    #[test]
    fn isolated_headings_start_articles_and_sections_stay_inside() {
        let rows = [
            "",
            " = Alpha = \n",
            "",
            " Alpha text . \n",
            "",
            " = = History = = \n",
            "",
            " Old . \n",
            "",
            " = Beta = \n",
            "",
            " Beta text . \n",
        ];
        assert_eq!(
            articles(&rows),
            [
                "= Alpha = \n\n Alpha text . \n\n = = History = = \n\n Old .",
                "= Beta = \n\n Beta text ."
            ]
        );
    }

    #[test]
    fn headings_not_surrounded_by_blank_lines_stay_inside() {
        let rows = [
            " = Alpha = \n",
            "",
            " x \n",
            " = 2 = \n",
            "",
            " = Gamma = \n",
            " y \n",
        ];
        let docs = articles(&rows);
        assert_eq!(docs.len(), 1, "{docs:?}");
        assert!(docs[0].contains("= 2 =") && docs[0].ends_with("y"));
    }

    #[test]
    fn text_before_the_first_heading_and_rows_without_newlines() {
        let rows = ["preface", "", "= T =", "", "body"];
        assert_eq!(articles(&rows), ["preface", "= T =\n\nbody"]);
        assert!(articles(&["", " ", ""]).is_empty());
    }

    #[test]
    fn agrees_with_the_text_splitter_on_isolated_headings() {
        let text = " \n = A = \n \n a1 \n \n = = S = = \n \n a2 \n \n = B = \n \n b1 \n";
        let rows: Vec<&str> = text.split_inclusive('\n').collect();
        let ours = articles(&rows);
        assert_eq!(ours, crate::wikitext::articles(text));
    }
}
