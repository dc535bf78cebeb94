//! [`TokensFile`]: the validating, zero-copy reader of token files.
//!
//! Opening validates the file's structure through [`crate::ipc::open_batch`] (every
//! offset and length checked against the file before Arrow's decoder slices
//! anything, arrays built over the mapping with `require_alignment`), then checks
//! the token schema, the document offsets and the range of every id.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow_array::{Array, LargeListArray, RecordBatch, UInt16Array, UInt32Array, UInt64Array};
use arrow_buffer::{Buffer, ScalarBuffer};
use arrow_schema::{DataType, Schema};

use super::{IdWidth, TokenIds, ID_WIDTH_KEY, TOKENS_FORMAT, VOCAB_SIZE_KEY};
use crate::ipc::{self, Check};
use crate::table::FORMAT_KEY;
use crate::{mmap, ArtifactError};

/// Bytes per sequential read when checking the id range at open.
const CHECK_CHUNK: usize = 1 << 20;

/// Ids at their stored width, inside a mapping (shared by every format holding ids).
#[derive(Debug, Clone)]
pub(crate) enum IdBuffer {
    U16(ScalarBuffer<u16>),
    U32(ScalarBuffer<u32>),
}

/// A memory-mapped, validated token file (see the [module docs](super) for the
/// format). Slices it returns point into the mapping; nothing is copied.
#[derive(Debug, Clone)]
pub struct TokensFile {
    path: PathBuf,
    data: Buffer,
    vocab_size: u32,
    doc_ids: ScalarBuffer<u64>,
    offsets: ScalarBuffer<u64>,
    ids: IdBuffer,
}

/// What the schema says about the ids.
#[derive(Debug, Clone, Copy)]
struct Layout {
    vocab_size: u32,
    width: IdWidth,
}

impl TokensFile {
    /// Maps and validates the token file at `path`.
    ///
    /// Every check of the [module docs](super) runs here, once; an error names the
    /// file and what is wrong. Opening reads the ids sequentially once (to check
    /// their range) without making the mapping resident.
    pub fn open(path: impl AsRef<Path>) -> Result<TokensFile, ArtifactError> {
        let file = Self::open_structure(path)?;
        file.check_id_range()?;
        Ok(file)
    }

    /// Maps the file and validates its structure (metadata and document offsets)
    /// but not the range of every id: O(documents), not O(tokens), for readers that
    /// must open large files in milliseconds (training batches). Out-of-range ids
    /// cannot cause unsafety here (every access is bounds-checked); callers that
    /// index a vocabulary-sized table check the ids they read, as
    /// [`crate::SetArtifacts::gather`] does.
    pub fn open_structure(path: impl AsRef<Path>) -> Result<TokensFile, ArtifactError> {
        let path = path.as_ref();
        let data = mmap::map_readonly(path)?;
        Self::validate(path, data).map_err(|detail| invalid(path, detail))
    }

    fn validate(path: &Path, data: Buffer) -> Check<TokensFile> {
        let mut layout = None;
        let mapped = ipc::open_batch(data, |schema| {
            layout = Some(check_schema(schema)?);
            Ok(())
        })?;
        let layout = layout.ok_or("the schema was not checked (bug)")?;
        assemble(path, mapped.data, layout, &mapped.batch)
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every id is below this (`ausa.vocab_size`).
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The stored id width.
    pub fn id_width(&self) -> IdWidth {
        self.ids().width()
    }

    /// Number of documents (rows).
    pub fn num_documents(&self) -> usize {
        self.doc_ids.len()
    }

    /// Number of ids, all documents together.
    pub fn num_tokens(&self) -> usize {
        self.ids().len()
    }

    /// The whole split's ids (documents concatenated in row order), in the mapping.
    pub fn ids(&self) -> TokenIds<'_> {
        self.ids.ids()
    }

    /// `num_documents() + 1` offsets into [`TokensFile::ids`]: document `i` is
    /// `ids[offsets[i]..offsets[i + 1]]`. Starts at 0, ends at `num_tokens()`.
    pub fn doc_offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// The documents' ids in the documents table, in row order.
    pub fn doc_ids(&self) -> &[u64] {
        &self.doc_ids
    }

    /// The ids of document `i` (row order), or `None` past the last document.
    pub fn document(&self, i: usize) -> Option<TokenIds<'_>> {
        let start = usize::try_from(*self.offsets.get(i)?).ok()?;
        let end = usize::try_from(*self.offsets.get(i + 1)?).ok()?;
        self.ids().slice(start..end)
    }

    /// The whole file as mapped (every slice above lies inside it).
    pub fn mapped_bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The ids' byte range in the file (they are inside the mapping by construction).
    fn ids_file_range(&self) -> Range<usize> {
        let base = self.data.as_ptr() as usize;
        let ids = self.ids().as_ptr_range();
        (ids.start as usize - base)..(ids.end as usize - base)
    }

    /// Checks that every id is below the vocabulary size by reading the file
    /// sequentially (not through the mapping, which would make it all resident).
    fn check_id_range(&self) -> Result<(), ArtifactError> {
        if self.num_tokens() == 0 {
            return Ok(());
        }
        let range = self.ids_file_range();
        let width = self.id_width();
        let mut file = File::open(&self.path).map_err(|e| ArtifactError::io(&self.path, e))?;
        file.seek(SeekFrom::Start(range.start as u64))
            .map_err(|e| ArtifactError::io(&self.path, e))?;
        let mut chunk = vec![0u8; CHECK_CHUNK];
        let mut position = 0usize;
        let mut left = range.len();
        while left > 0 {
            let n = left.min(CHECK_CHUNK);
            file.read_exact(&mut chunk[..n])
                .map_err(|e| ArtifactError::io(&self.path, e))?;
            if let Some((i, id)) = first_out_of_range(&chunk[..n], width, self.vocab_size) {
                let detail = format!(
                    "token id {id} at position {} is not below {VOCAB_SIZE_KEY} = {}",
                    position + i,
                    self.vocab_size
                );
                return Err(invalid(&self.path, detail));
            }
            position += n / width.bytes();
            left -= n;
        }
        Ok(())
    }
}

/// The error for a file that is not a valid token file.
fn invalid(path: &Path, detail: String) -> ArtifactError {
    ArtifactError::schema(
        path,
        format!(
            "not a valid {TOKENS_FORMAT} token file: {detail}; rebuild it with the \
             `tokenize` stage (`ausa verify` finds damaged store objects)"
        ),
    )
}

/// `(index, id)` of the first little-endian id in `bytes` that is `>= vocab_size`.
fn first_out_of_range(bytes: &[u8], width: IdWidth, vocab_size: u32) -> Option<(usize, u32)> {
    let ids: Box<dyn Iterator<Item = u32>> = match width {
        IdWidth::U16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))),
        ),
        IdWidth::U32 => Box::new(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
    };
    ids.enumerate().find(|&(_, id)| id >= vocab_size)
}

/// Checks the two fields and the metadata.
fn check_schema(schema: &Schema) -> Check<Layout> {
    let fields = schema.fields();
    let width = match fields
        .iter()
        .map(|f| (f.name().as_str(), f.data_type(), f.is_nullable()))
        .collect::<Vec<_>>()[..]
    {
        [("doc_id", DataType::UInt64, false), ("tokens", DataType::LargeList(item), false)]
            if !item.is_nullable() =>
        {
            match item.data_type() {
                DataType::UInt16 => IdWidth::U16,
                DataType::UInt32 => IdWidth::U32,
                other => {
                    return Err(format!(
                        "token items are {other}, expected UInt16 or UInt32"
                    ))
                }
            }
        }
        _ => {
            return Err(format!(
                "columns are {:?}; expected non-null `doc_id: UInt64` and \
                 `tokens: LargeList<UInt16 or UInt32>`",
                fields
                    .iter()
                    .map(|f| format!("{}: {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
            ))
        }
    };
    check_metadata(schema, width)
}

fn check_metadata(schema: &Schema, width: IdWidth) -> Check<Layout> {
    let meta = |key: &str| schema.metadata().get(key).map(String::as_str);
    if meta(FORMAT_KEY) != Some(TOKENS_FORMAT) {
        return Err(format!(
            "schema metadata {FORMAT_KEY} is {:?}, expected \"{TOKENS_FORMAT}\"",
            meta(FORMAT_KEY)
        ));
    }
    let vocab_size = meta(VOCAB_SIZE_KEY)
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&v| v > 0 && (width == IdWidth::U32 || v <= 1 << 16))
        .ok_or_else(|| {
            format!(
                "schema metadata {VOCAB_SIZE_KEY} is {:?}, expected a positive integer \
                 that fits the {}-bit ids",
                meta(VOCAB_SIZE_KEY),
                width.bits()
            )
        })?;
    let bits = width.bits().to_string();
    if meta(ID_WIDTH_KEY) != Some(bits.as_str()) {
        return Err(format!(
            "schema metadata {ID_WIDTH_KEY} is {:?} but the ids are {bits}-bit",
            meta(ID_WIDTH_KEY)
        ));
    }
    Ok(Layout { vocab_size, width })
}

/// Takes the typed buffers out of the batch and checks the offsets.
fn assemble(path: &Path, data: Buffer, layout: Layout, batch: &RecordBatch) -> Check<TokensFile> {
    let doc_ids = batch
        .column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or("column doc_id did not decode as UInt64")?
        .values()
        .clone();
    let list = batch
        .column(1)
        .as_any()
        .downcast_ref::<LargeListArray>()
        .ok_or("column tokens did not decode as a LargeList")?;
    let ids = id_buffer(list.values().as_ref(), layout.width)?;
    // LargeList offsets are int64; once checked non-negative they read as u64.
    let offsets = ScalarBuffer::<u64>::from(list.offsets().inner().inner().clone());
    let file = TokensFile {
        path: path.to_path_buf(),
        data,
        vocab_size: layout.vocab_size,
        doc_ids,
        offsets,
        ids,
    };
    check_offsets(file.doc_offsets(), file.num_tokens())?;
    check_in_mapping(&file)?;
    Ok(file)
}

impl IdBuffer {
    /// Borrows the ids.
    pub(crate) fn ids(&self) -> TokenIds<'_> {
        match self {
            IdBuffer::U16(b) => TokenIds::U16(b),
            IdBuffer::U32(b) => TokenIds::U32(b),
        }
    }
}

/// The ids of a decoded `UInt16` or `UInt32` array, in place.
pub(crate) fn id_buffer(values: &dyn Array, width: IdWidth) -> Check<IdBuffer> {
    let any = values.as_any();
    let buffer = match width {
        IdWidth::U16 => any
            .downcast_ref::<UInt16Array>()
            .map(|a| IdBuffer::U16(a.values().clone())),
        IdWidth::U32 => any
            .downcast_ref::<UInt32Array>()
            .map(|a| IdBuffer::U32(a.values().clone())),
    };
    buffer.ok_or_else(|| format!("token ids did not decode as {}-bit", width.bits()))
}

/// Offsets start at 0, never decrease and end at the number of ids.
fn check_offsets(offsets: &[u64], ids: usize) -> Check<()> {
    let first = offsets.first().copied();
    let last = offsets.last().copied();
    if first != Some(0) || last != Some(ids as u64) {
        return Err(format!(
            "document offsets run from {first:?} to {last:?}, expected 0 to {ids} (the number of ids)"
        ));
    }
    match offsets.windows(2).position(|w| w[0] > w[1]) {
        Some(i) => Err(format!("document offsets decrease after document {i}")),
        None => Ok(()),
    }
}

/// Every slice must point into the mapping: proof that nothing was copied.
fn check_in_mapping(file: &TokensFile) -> Check<()> {
    let map = file.data.as_slice().as_ptr_range();
    let map = map.start as usize..map.end as usize;
    let ids = file.ids().as_ptr_range();
    let inside = |r: Range<usize>| r.is_empty() || (map.start <= r.start && r.end <= map.end);
    let slices = [
        ids.start as usize..ids.end as usize,
        ptr_range(file.doc_offsets()),
        ptr_range(file.doc_ids()),
    ];
    if slices.into_iter().all(inside) {
        Ok(())
    } else {
        Err("a buffer was not read in place from the mapping".into())
    }
}

fn ptr_range(slice: &[u64]) -> Range<usize> {
    let r = slice.as_ptr_range();
    r.start as usize..r.end as usize
}
