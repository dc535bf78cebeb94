//! Plumbing shared by every table: deterministic writer settings and validated reading.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::ArtifactError;

/// The `created_by` string of every file; fixed so that output bytes never depend on
/// the version of the Parquet library that wrote them.
pub(crate) const CREATED_BY: &str = "ausa";

/// The key-value metadata key naming the format and its version.
pub(crate) const FORMAT_KEY: &str = "ausa.format";

const ZSTD_LEVEL: i32 = 3;

/// Rows decoded per batch when reading.
const READ_BATCH_ROWS: usize = 8192;

/// One column of a table format. All columns are non-null.
pub(crate) struct ColumnSpec {
    pub(crate) name: &'static str,
    pub(crate) ty: DataType,
}

/// One table format: its columns, the `ausa.format` tag, and the columns worth a
/// dictionary (low-cardinality strings; everything else is mostly unique).
pub(crate) struct TableSpec {
    pub(crate) columns: &'static [ColumnSpec],
    pub(crate) format: &'static str,
    pub(crate) dictionary: &'static [&'static str],
    pub(crate) no_statistics: &'static [&'static str],
}

impl TableSpec {
    fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(c.name, c.ty.clone(), false))
            .collect();
        Arc::new(Schema::new(fields))
    }

    fn properties(&self) -> Result<WriterProperties, parquet::errors::ParquetError> {
        let mut builder = WriterProperties::builder()
            .set_created_by(CREATED_BY.to_string())
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_dictionary_enabled(false)
            .set_key_value_metadata(Some(vec![KeyValue::new(
                FORMAT_KEY.to_string(),
                self.format.to_string(),
            )]));
        for name in self.dictionary {
            builder = builder.set_column_dictionary_enabled(ColumnPath::from(*name), true);
        }
        for name in self.no_statistics {
            builder = builder
                .set_column_statistics_enabled(ColumnPath::from(*name), EnabledStatistics::None);
        }
        Ok(builder.build())
    }
}

/// Writes a table one row group per call to [`TableWriter::write_row_group`].
pub(crate) struct TableWriter {
    path: PathBuf,
    schema: SchemaRef,
    inner: ArrowWriter<File>,
    rows: u64,
}

impl TableWriter {
    pub(crate) fn create(path: &Path, spec: &TableSpec) -> Result<TableWriter, ArtifactError> {
        let file = File::create(path).map_err(|e| ArtifactError::io(path, e))?;
        let schema = spec.arrow_schema();
        let props = spec
            .properties()
            .map_err(|e| ArtifactError::parquet(path, e))?;
        let inner = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| ArtifactError::parquet(path, e))?;
        Ok(TableWriter {
            path: path.to_path_buf(),
            schema,
            inner,
            rows: 0,
        })
    }

    /// Writes `columns` (in schema order) as one complete row group, so that row group
    /// sizes are decided by the caller's buffering, not by the library's defaults.
    pub(crate) fn write_row_group(&mut self, columns: Vec<ArrayRef>) -> Result<(), ArtifactError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| ArtifactError::parquet(&self.path, e))?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.inner
            .write(&batch)
            .map_err(|e| ArtifactError::parquet(&self.path, e))?;
        self.inner
            .flush()
            .map_err(|e| ArtifactError::parquet(&self.path, e))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Writes the footer and closes the file; returns the number of rows.
    pub(crate) fn finish(self) -> Result<u64, ArtifactError> {
        self.inner
            .into_inner()
            .map_err(|e| ArtifactError::parquet(&self.path, e))?;
        Ok(self.rows)
    }
}

/// Reads a table's columns batch by batch after checking that the file has them.
pub(crate) struct TableReader {
    path: PathBuf,
    inner: ParquetRecordBatchReader,
    rows: u64,
}

impl TableReader {
    /// Opens `path` and checks that every column of `spec` exists with the right type.
    /// Extra columns are allowed and not decoded.
    pub(crate) fn open(path: &Path, spec: &TableSpec) -> Result<TableReader, ArtifactError> {
        let file = File::open(path).map_err(|e| ArtifactError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| ArtifactError::parquet(path, e))?;
        let roots = validate_schema(path, builder.schema(), spec)?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let inner = builder
            .with_projection(mask)
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| ArtifactError::parquet(path, e))?;
        Ok(TableReader {
            path: path.to_path_buf(),
            inner,
            rows,
        })
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The number of rows, from the footer.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// The next batch, or `None` at the end.
    pub(crate) fn next_batch(&mut self) -> Option<Result<RecordBatch, ArtifactError>> {
        let next = self.inner.next()?;
        Some(next.map_err(|e| ArtifactError::parquet(&self.path, e)))
    }
}

/// Returns the root column indices of `spec`'s columns in the file.
fn validate_schema(
    path: &Path,
    schema: &Schema,
    spec: &TableSpec,
) -> Result<Vec<usize>, ArtifactError> {
    let mut roots = Vec::with_capacity(spec.columns.len());
    for column in spec.columns {
        let Some((index, field)) = schema.column_with_name(column.name) else {
            let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(ArtifactError::schema(
                path,
                format!(
                    "missing column `{}` ({}); the file has columns [{}]",
                    column.name,
                    column.ty,
                    found.join(", ")
                ),
            ));
        };
        if field.data_type() != &column.ty {
            return Err(ArtifactError::schema(
                path,
                format!(
                    "column `{}` has type {}, expected {}",
                    column.name,
                    field.data_type(),
                    column.ty
                ),
            ));
        }
        roots.push(index);
    }
    Ok(roots)
}

/// Column `name` of a batch read by [`TableReader`], as array type `T`, without nulls.
pub(crate) fn column<'a, T: Array + 'static>(
    path: &Path,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T, ArtifactError> {
    let array = batch
        .column_by_name(name)
        .and_then(|a| a.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            ArtifactError::schema(path, format!("column `{name}` has an unexpected type"))
        })?;
    if array.null_count() > 0 {
        return Err(ArtifactError::schema(
            path,
            format!(
                "column `{name}` contains {} null value(s)",
                array.null_count()
            ),
        ));
    }
    Ok(array)
}
