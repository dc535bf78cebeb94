//! Reading local `.txt` / `.tokens`, `.jsonl` and `.parquet` files into the corpus.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ausa_artifacts::Split;
use ausa_dag::{ExternalFile, ProgressUnit, StageContext, StageError};

use crate::lines::normalize_line_endings;
use crate::parquet_text;
use crate::sink::DocumentSink;
use crate::txt::{split_documents, TextFormat};

/// The file extensions the local source reads (the planner rejects others). `.tokens`
/// is plain text: WikiText ships as `wiki.train.tokens`, ...
pub(crate) const EXTENSIONS: &[&str] = &["txt", "tokens", "jsonl", "parquet"];

/// The splits, in output order, each with the `Paths` parameter listing its files.
pub(crate) const SPLIT_PARAMS: [(Split, &str); 3] = [
    (Split::Train, "train"),
    (Split::Validation, "validation"),
    (Split::Test, "test"),
];

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
    #[error("`{}`: {detail}", path.display())]
    Content { path: PathBuf, detail: String },
}

/// The `corpus` parameters that apply to local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalOptions<'a> {
    pub(crate) text_format: TextFormat,
    pub(crate) jsonl_field: &'a str,
    pub(crate) parquet_column: &'a str,
    pub(crate) replace_invalid_utf8: bool,
}

/// Reads every split's files in order into `sink`; a split whose parameter lists
/// paths but yields no document is an error naming its files.
pub(crate) fn write_local(
    options: &LocalOptions<'_>,
    sink: &mut DocumentSink,
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
        if added == 0 && !files.is_empty() {
            return Err(format!("split `{split}` is empty: {}", describe(param, files)).into());
        }
        documents += added;
    }
    if documents == 0 {
        return Err("the local corpus is empty: no input file holds a document".into());
    }
    Ok(())
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
    options: &LocalOptions<'_>,
    sink: &mut DocumentSink,
) -> Result<(), StageError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("txt" | "tokens") => {
            let bytes = read_bytes(path)?;
            let text = decode(path, &bytes, options.replace_invalid_utf8)?;
            let text = normalize_line_endings(&text);
            split_documents(&text, options.text_format)
                .into_iter()
                .try_for_each(|d| sink.push(split, d))
        }
        Some("jsonl") => read_jsonl(path, split, options, sink),
        Some("parquet") => {
            parquet_text::for_each_row(path, options.parquet_column, "parquet_column", &mut |t| {
                sink.push(split, t)
            })
        }
        _ => Err(LocalError::Content {
            path: path.to_path_buf(),
            detail: format!(
                "unsupported file type; expected .{}",
                EXTENSIONS.join(", .")
            ),
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
    options: &LocalOptions<'_>,
    sink: &mut DocumentSink,
) -> Result<(), StageError> {
    let bytes = read_bytes(path)?;
    let text = decode(path, &bytes, options.replace_invalid_utf8)?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let doc = jsonl_text(line, options.jsonl_field).map_err(|detail| LocalError::Jsonl {
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
