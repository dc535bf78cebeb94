//! Reading the text column of a Parquet file row by row (local `.parquet` inputs of
//! `corpus`, downloaded shards of `download`).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_schema::DataType;
use ausa_dag::StageError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

/// A Parquet file could not be read as rows of text. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParquetTextError {
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
/// `param` names the stage parameter that chose the column, for the error message.
pub(crate) fn for_each_row(
    path: &Path,
    column: &str,
    param: &str,
    row: &mut dyn FnMut(&str) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let parquet_err = |source| ParquetTextError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| ParquetTextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let index = text_column(path, builder.schema(), column, param)?;
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
    param: &str,
) -> Result<usize, ParquetTextError> {
    let error = |detail| ParquetTextError::Column {
        path: path.to_path_buf(),
        detail,
    };
    let Some((index, field)) = schema.column_with_name(column) else {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(error(format!(
            "no column `{column}` (see the `{param}` parameter); the file has columns [{}]",
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
