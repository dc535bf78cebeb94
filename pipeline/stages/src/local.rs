//! Reading local `.txt`, `.jsonl` and `.parquet` files into the corpus.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_schema::DataType;
use ausa_artifacts::Split;
use ausa_dag::{ExternalFile, ParamValue, Params, ProgressUnit, StageContext, StageError};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::corpus::{CorpusSink, SPLIT_PARAMS};
use crate::txt::{split_documents, TextFormat};

/// A local input file could not be read as documents. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalError {
    #[error("cannot read `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{}` is not valid UTF-8: invalid bytes at byte offset {offset} (line {line}); \
         set on_invalid_utf8 = \"replace\" to substitute U+FFFD",
        path.display()
    )]
    Utf8 {
        path: PathBuf,
        offset: usize,
        line: usize,
    },
    #[error("`{}` line {line}: {detail}", path.display())]
    Jsonl {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("cannot read Parquet file `{}`", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("`{}`: {detail}", path.display())]
    Content { path: PathBuf, detail: String },
}

/// The `corpus` parameters that apply to local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalOptions {
    pub(crate) text_format: TextFormat,
    pub(crate) jsonl_field: String,
    pub(crate) parquet_column: String,
    pub(crate) replace_invalid_utf8: bool,
}

impl LocalOptions {
    pub(crate) fn from_params(params: &Params) -> Result<LocalOptions, StageError> {
        let format = params.str("text_format")?;
        Ok(LocalOptions {
            text_format: TextFormat::from_name(format)
                .ok_or_else(|| format!("unknown text_format `{format}`"))?,
            jsonl_field: params.str("jsonl_field")?.to_string(),
            parquet_column: params.str("parquet_column")?.to_string(),
            replace_invalid_utf8: params.str("on_invalid_utf8")? == "replace",
        })
    }
}

/// Reads every split's files in order into `sink`; a split whose parameter lists
/// paths but yields no document is an error naming its files.
pub(crate) fn write_local(
    options: &LocalOptions,
    sink: &mut CorpusSink,
    ctx: &StageContext<'_>,
) -> Result<(), StageError> {
    let total: u64 = SPLIT_PARAMS
        .iter()
        .flat_map(|(_, p)| ctx.external_files(p))
        .map(|f| f.size)
        .sum();
    ctx.progress.set_total(total, ProgressUnit::Bytes);
    let mut documents = 0;
    for (split, param) in SPLIT_PARAMS {
        let files = ctx.external_files(param);
        for file in files {
            read_file(&file.path, split, options, sink)?;
            ctx.progress.advance(file.size);
        }
        let added = sink.totals(split).documents;
        if added == 0 && is_given(ctx.params, param) {
            return Err(format!("split `{split}` is empty: {}", describe(param, files)).into());
        }
        documents += added;
    }
    if documents == 0 {
        return Err("the local corpus is empty: no input file holds a document".into());
    }
    Ok(())
}

fn is_given(params: &Params, param: &str) -> bool {
    matches!(params.get(param), Some(ParamValue::Paths(p)) if !p.is_empty())
}

fn describe(param: &str, files: &[ExternalFile]) -> String {
    if files.is_empty() {
        return format!("parameter `{param}` matched no files");
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| format!("`{}`", f.path.display()))
        .collect();
    format!("no documents in {} (parameter `{param}`)", names.join(", "))
}

/// Reads one file by its extension.
pub(crate) fn read_file(
    path: &Path,
    split: Split,
    options: &LocalOptions,
    sink: &mut CorpusSink,
) -> Result<(), StageError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("txt") => {
            let bytes = read_bytes(path)?;
            let text = decode(path, &bytes, options.replace_invalid_utf8)?;
            split_documents(&text, options.text_format)
                .into_iter()
                .try_for_each(|d| sink.push(split, d))
        }
        Some("jsonl") => read_jsonl(path, split, options, sink),
        Some("parquet") => read_parquet(path, split, &options.parquet_column, sink),
        _ => Err(LocalError::Content {
            path: path.to_path_buf(),
            detail: "unsupported file type; expected .txt, .jsonl or .parquet".to_string(),
        }
        .into()),
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, LocalError> {
    std::fs::read(path).map_err(|source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Decodes UTF-8 (skipping a byte-order mark); invalid input is an error naming the
/// byte offset, or with `replace` is replaced by U+FFFD.
pub(crate) fn decode<'a>(
    path: &Path,
    bytes: &'a [u8],
    replace: bool,
) -> Result<Cow<'a, str>, LocalError> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    match std::str::from_utf8(body) {
        Ok(text) => Ok(Cow::Borrowed(text)),
        Err(_) if replace => Ok(String::from_utf8_lossy(body)),
        Err(e) => {
            let offset = e.valid_up_to() + (bytes.len() - body.len());
            let line = 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
            Err(LocalError::Utf8 {
                path: path.to_path_buf(),
                offset,
                line,
            })
        }
    }
}

fn read_jsonl(
    path: &Path,
    split: Split,
    options: &LocalOptions,
    sink: &mut CorpusSink,
) -> Result<(), StageError> {
    let bytes = read_bytes(path)?;
    let text = decode(path, &bytes, options.replace_invalid_utf8)?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let doc = jsonl_text(line, &options.jsonl_field).map_err(|detail| LocalError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            detail,
        })?;
        sink.push(split, &doc)?;
    }
    Ok(())
}

fn jsonl_text(line: &str, field: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("expected a JSON object".to_string());
    };
    match object.remove(field) {
        Some(serde_json::Value::String(text)) => Ok(text),
        Some(other) => Err(format!("field `{field}` is not a string (found `{other}`)")),
        None => Err(format!("field `{field}` is missing (see jsonl_field)")),
    }
}

fn read_parquet(
    path: &Path,
    split: Split,
    column: &str,
    sink: &mut CorpusSink,
) -> Result<(), StageError> {
    let parquet_err = |source| LocalError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let index = text_column_index(path, builder.schema(), column)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    for batch in builder.with_projection(mask).build().map_err(parquet_err)? {
        let batch = batch.map_err(|e| parquet_err(e.into()))?;
        let array = batch.column(0);
        if let Some(strings) = array.as_string_opt::<i32>() {
            strings
                .iter()
                .flatten()
                .try_for_each(|t| sink.push(split, t))?;
        } else if let Some(strings) = array.as_string_opt::<i64>() {
            strings
                .iter()
                .flatten()
                .try_for_each(|t| sink.push(split, t))?;
        }
    }
    Ok(())
}

fn text_column_index(
    path: &Path,
    schema: &arrow_schema::Schema,
    column: &str,
) -> Result<usize, LocalError> {
    let content = |detail| LocalError::Content {
        path: path.to_path_buf(),
        detail,
    };
    let Some((index, field)) = schema.column_with_name(column) else {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(content(format!(
            "no column `{column}` (see parquet_column); the file has columns [{}]",
            names.join(", ")
        )));
    };
    match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => Ok(index),
        other => Err(content(format!(
            "column `{column}` has type {other}, expected Utf8 or LargeUtf8"
        ))),
    }
}
