//! Token id files: `tokens-<split>.arrow`, one per dataset split.
//!
//! Each file is an **Arrow IPC file** (format version V5, little-endian, no
//! compression, no dictionaries, buffers aligned and padded to 64 bytes) holding
//! exactly **one record batch** with one row per document, in the order of the
//! documents table:
//!
//! | column   | Arrow type                           | nulls | meaning                               |
//! |----------|--------------------------------------|-------|---------------------------------------|
//! | `doc_id` | `UInt64`                             | no    | the document's id in the documents table |
//! | `tokens` | `LargeList<item: UInt16 or UInt32>`  | no    | the document's token ids (items non-null) |
//!
//! The item type is `UInt16` when every id fits (vocabulary size <= 65536) and
//! `UInt32` otherwise. The schema's custom metadata holds `ausa.format =
//! "tokens/1"`, `ausa.vocab_size` (decimal; every id is below it) and `ausa.id_width`
//! (`"16"` or `"32"`, matching the item type). Field metadata is empty. The
//! `tokenize` stage writes the tokenizer's id space (one more than its largest id)
//! as the vocabulary size.
//!
//! Because a `LargeList` column is stored as one flat values buffer plus an offsets
//! buffer, the file is a CSR layout: the values buffer is the whole split's token
//! stream (documents concatenated in row order) and the offsets buffer (`ndocs + 1`
//! little-endian 64-bit integers, the first 0, non-decreasing, the last equal to
//! the number of ids) delimits documents. A reader maps the file and uses both
//! buffers in place. The producing stage decides what a document's ids are (`tokenize`
//! ends every document with the `</s>` id, so the flat buffer is the LM stream).
//!
//! Byte layout (all integers little-endian; every offset named below is a multiple
//! of 64 from the start of the file):
//!
//! ```text
//! 0        "ARROW1", zero-padded to 64 bytes
//! 64       schema message: FF FF FF FF, int32 size M1, then M1 bytes: the flatbuffer
//!          Message (Schema: the two fields above, the custom metadata) zero-padded
//!          so that 8 + M1 is a multiple of 64
//! B        record batch message: FF FF FF FF, int32 size M2, then the flatbuffer
//!          Message (RecordBatch: length = ndocs; field nodes doc_id(ndocs),
//!          tokens(ndocs), item(nids), every null_count 0; the six buffers below as
//!          (offset, length) relative to the body) zero-padded likewise
//! B+8+M2   body: each buffer starts at a multiple of 64 and is zero-padded to one:
//!            doc_id validity   0 bytes (no nulls)
//!            doc_id values     u64 x ndocs
//!            tokens validity   0 bytes
//!            tokens offsets    i64 x (ndocs + 1)
//!            item validity     0 bytes
//!            item values       u16 or u32 x nids
//! F        footer: the flatbuffer Footer (version V5, the schema again, one Block
//!          {offset B, metaDataLength 8 + M2, bodyLength}), then int32 footer
//!          size, then "ARROW1"
//! ```
//!
//! Any Arrow implementation reads the file as an ordinary table (for example
//! `pyarrow.ipc.open_file`). The writer is deterministic: the same documents and
//! vocabulary size give byte-identical files.
//!
//! [`TokensFile::open`] memory-maps the file and validates it once: magic numbers,
//! footer, schema and metadata, the block and every buffer inside the file, 64-byte
//! alignment, offsets (start at 0, non-decreasing, end at the number of ids), and
//! every id below `ausa.vocab_size`. The id check reads the file sequentially rather
//! than through the mapping, so opening does not make the whole file resident.
//! Afterwards [`TokensFile::ids`], [`TokensFile::doc_offsets`] and
//! [`TokensFile::document`] return slices that point into the mapping (no copy).

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, LargeListArray, RecordBatch, UInt16Array, UInt32Array, UInt64Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use crate::table::FORMAT_KEY;
use crate::{ArtifactError, Split};

mod reader;

pub use reader::TokensFile;
pub(crate) use reader::{id_buffer, IdBuffer};

/// The `ausa.format` tag of token files.
pub const TOKENS_FORMAT: &str = "tokens/1";

/// The schema metadata key holding the vocabulary size (every id is below it).
pub const VOCAB_SIZE_KEY: &str = "ausa.vocab_size";

/// The schema metadata key holding the id width in bits (`"16"` or `"32"`).
pub const ID_WIDTH_KEY: &str = "ausa.id_width";

/// Alignment and padding of every message and buffer, in bytes.
pub const TOKENS_ALIGNMENT: usize = crate::ipc::ALIGNMENT;

/// The name of the token file of `split` (`tokens-train.arrow`, ...).
pub fn tokens_file_name(split: Split) -> String {
    format!("tokens-{}.arrow", split.as_str())
}

/// The path of the token file of `split` inside artifact directory `dir`.
pub fn tokens_path(dir: impl AsRef<Path>, split: Split) -> PathBuf {
    dir.as_ref().join(tokens_file_name(split))
}

/// The name of the sequence file of `split` (`sequences-train.arrow`, ...): fixed-length
/// sequences, stored in this token file format (one row per sequence, `doc_id` = its start
/// position in the split's token stream).
pub fn sequences_file_name(split: Split) -> String {
    format!("sequences-{}.arrow", split.as_str())
}

/// The path of the sequence file of `split` inside artifact directory `dir`.
pub fn sequences_path(dir: impl AsRef<Path>, split: Split) -> PathBuf {
    dir.as_ref().join(sequences_file_name(split))
}

/// The tokenizer file of a `tokenizer` artifact: the Hugging Face `tokenizers`
/// library's `tokenizer.json` (that library defines its format, not this crate).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The path of the tokenizer file inside artifact directory `dir`.
pub fn tokenizer_path(dir: impl AsRef<Path>) -> PathBuf {
    dir.as_ref().join(TOKENIZER_FILE)
}

/// The stored width of token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdWidth {
    /// `UInt16` items: vocabularies of at most 65536 ids.
    U16,
    /// `UInt32` items.
    U32,
}

impl IdWidth {
    /// The narrowest width holding every id below `vocab_size`.
    pub fn for_vocab(vocab_size: u32) -> IdWidth {
        if vocab_size <= 1 << 16 {
            IdWidth::U16
        } else {
            IdWidth::U32
        }
    }

    /// Bits per id (16 or 32).
    pub fn bits(self) -> u32 {
        match self {
            IdWidth::U16 => 16,
            IdWidth::U32 => 32,
        }
    }

    fn bytes(self) -> usize {
        self.bits() as usize / 8
    }

    pub(crate) fn item_type(self) -> DataType {
        match self {
            IdWidth::U16 => DataType::UInt16,
            IdWidth::U32 => DataType::UInt32,
        }
    }
}

/// Token ids borrowed from a [`TokensFile`] (or any slice), at their stored width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenIds<'a> {
    /// 16-bit ids.
    U16(&'a [u16]),
    /// 32-bit ids.
    U32(&'a [u32]),
}

impl TokenIds<'static> {
    /// No ids.
    pub const EMPTY: TokenIds<'static> = TokenIds::U32(&[]);
}

impl<'a> TokenIds<'a> {
    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            TokenIds::U16(s) => s.len(),
            TokenIds::U32(s) => s.len(),
        }
    }

    /// Whether there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored width.
    pub fn width(&self) -> IdWidth {
        match self {
            TokenIds::U16(_) => IdWidth::U16,
            TokenIds::U32(_) => IdWidth::U32,
        }
    }

    /// Id `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u32> {
        match self {
            TokenIds::U16(s) => s.get(i).map(|&v| u32::from(v)),
            TokenIds::U32(s) => s.get(i).copied(),
        }
    }

    /// The ids in `range`, or `None` if it does not lie inside.
    pub fn slice(&self, range: Range<usize>) -> Option<TokenIds<'a>> {
        match *self {
            TokenIds::U16(s) => s.get(range).map(TokenIds::U16),
            TokenIds::U32(s) => s.get(range).map(TokenIds::U32),
        }
    }

    /// The ids in order, widened to `u32`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        let ids = *self;
        (0..ids.len()).map(move |i| ids.get(i).unwrap_or_default())
    }

    /// The ids copied into a `Vec<u32>`.
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// The address range of the ids in memory (to check where they live).
    pub fn as_ptr_range(&self) -> Range<*const u8> {
        match self {
            TokenIds::U16(s) => {
                let r = s.as_ptr_range();
                r.start.cast()..r.end.cast()
            }
            TokenIds::U32(s) => {
                let r = s.as_ptr_range();
                r.start.cast()..r.end.cast()
            }
        }
    }
}

/// The schema of a token file.
fn tokens_schema(vocab_size: u32, width: IdWidth) -> Schema {
    let metadata = arrow_schema::Metadata::default()
        .with(FORMAT_KEY, TOKENS_FORMAT)
        .with(VOCAB_SIZE_KEY, vocab_size.to_string())
        .with(ID_WIDTH_KEY, width.bits().to_string());
    Schema::new(vec![
        Field::new("doc_id", DataType::UInt64, false),
        Field::new("tokens", list_type(width), false),
    ])
    .with_metadata(metadata)
}

pub(crate) fn item_field(width: IdWidth) -> Arc<Field> {
    Arc::new(Field::new("item", width.item_type(), false))
}

fn list_type(width: IdWidth) -> DataType {
    DataType::LargeList(item_field(width))
}

/// Ids buffered by a writer at their stored width.
pub(crate) enum IdVec {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl IdVec {
    /// An empty buffer at `width`.
    pub(crate) fn new(width: IdWidth) -> IdVec {
        match width {
            IdWidth::U16 => IdVec::U16(Vec::new()),
            IdWidth::U32 => IdVec::U32(Vec::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            IdVec::U16(v) => v.len(),
            IdVec::U32(v) => v.len(),
        }
    }

    /// Appends ids already checked to be below the vocabulary size (so they fit).
    pub(crate) fn extend(&mut self, ids: &[u32]) {
        match self {
            IdVec::U16(v) => v.extend(ids.iter().map(|&id| id as u16)),
            IdVec::U32(v) => v.extend_from_slice(ids),
        }
    }

    pub(crate) fn into_array(self) -> ArrayRef {
        match self {
            IdVec::U16(v) => Arc::new(UInt16Array::new(ScalarBuffer::from(v), None)),
            IdVec::U32(v) => Arc::new(UInt32Array::new(ScalarBuffer::from(v), None)),
        }
    }
}

/// What [`TokensWriter::finish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokensSummary {
    /// Documents (rows).
    pub documents: u64,
    /// Token ids, all documents together.
    pub tokens: u64,
    /// The stored id width.
    pub width: IdWidth,
}

/// Collects the documents of one split and writes `tokens-<split>.arrow`.
///
/// Ids are buffered in memory at their stored width (2 or 4 bytes each) and written
/// by [`TokensWriter::finish`]; a writer dropped without it leaves an empty file.
pub struct TokensWriter {
    path: PathBuf,
    file: File,
    vocab_size: u32,
    ids: IdVec,
    offsets: Vec<i64>,
    doc_ids: Vec<u64>,
}

impl TokensWriter {
    /// Creates (or truncates) the file at `path`; every id pushed must be below
    /// `vocab_size`, which must be at least 1.
    pub fn create(path: impl AsRef<Path>, vocab_size: u32) -> Result<TokensWriter, ArtifactError> {
        let path = path.as_ref();
        if vocab_size == 0 {
            return Err(ArtifactError::schema(
                path,
                "vocabulary size 0 admits no token id; pass the tokenizer's id count",
            ));
        }
        let file = File::create(path).map_err(|e| ArtifactError::io(path, e))?;
        let ids = IdVec::new(IdWidth::for_vocab(vocab_size));
        Ok(TokensWriter {
            path: path.to_path_buf(),
            file,
            vocab_size,
            ids,
            offsets: vec![0],
            doc_ids: Vec::new(),
        })
    }

    /// Appends one document's ids (in stream order).
    pub fn push_document(&mut self, doc_id: u64, ids: &[u32]) -> Result<(), ArtifactError> {
        if let Some(&bad) = ids.iter().find(|&&id| id >= self.vocab_size) {
            return Err(ArtifactError::schema(
                &self.path,
                format!(
                    "document {doc_id} has token id {bad}, not below the vocabulary size {}; \
                     the tokenizer and the declared vocabulary size disagree",
                    self.vocab_size
                ),
            ));
        }
        self.ids.extend(ids);
        self.offsets.push(self.ids.len() as i64);
        self.doc_ids.push(doc_id);
        Ok(())
    }

    /// Documents pushed so far.
    pub fn documents(&self) -> u64 {
        self.doc_ids.len() as u64
    }

    /// Ids pushed so far.
    pub fn tokens(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Writes the file and returns what it holds.
    pub fn finish(self) -> Result<TokensSummary, ArtifactError> {
        let TokensWriter {
            path,
            file,
            vocab_size,
            ids,
            offsets,
            doc_ids,
        } = self;
        let width = IdWidth::for_vocab(vocab_size);
        let summary = TokensSummary {
            documents: doc_ids.len() as u64,
            tokens: ids.len() as u64,
            width,
        };
        let schema = Arc::new(tokens_schema(vocab_size, width));
        let to_error = |e| ArtifactError::io(&path, std::io::Error::other(e));
        let batch = build_batch(&schema, width, ids, offsets, doc_ids).map_err(to_error)?;
        crate::ipc::write_ipc(file, &schema, &batch).map_err(to_error)?;
        Ok(summary)
    }
}

/// The one record batch; the vectors are moved, not copied, into Arrow arrays.
fn build_batch(
    schema: &SchemaRef,
    width: IdWidth,
    ids: IdVec,
    offsets: Vec<i64>,
    doc_ids: Vec<u64>,
) -> Result<RecordBatch, ArrowError> {
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    let tokens = LargeListArray::try_new(item_field(width), offsets, ids.into_array(), None)?;
    let doc_ids = UInt64Array::new(ScalarBuffer::from(doc_ids), None);
    RecordBatch::try_new(schema.clone(), vec![Arc::new(doc_ids), Arc::new(tokens)])
}
