//! Set banks: `banks-<split>.arrow`, one per dataset split.
//!
//! A sequence's bank is its sets: one per window of `window` tokens moved by
//! `stride`, each the sorted distinct atom (token) ids of its window with the
//! window's span `[start, end)` in sequence positions. The file is an Arrow IPC file
//! written and validated by the shared single-batch machinery of this crate (V5,
//! little-endian, uncompressed, every message and buffer 64-byte aligned and padded,
//! one record batch, no nulls) with one row per sequence, in sequence order:
//!
//! | column  | Arrow type                                        | meaning                          |
//! |---------|---------------------------------------------------|----------------------------------|
//! | `sets`  | `LargeList<LargeList<item: UInt16 or UInt32>>`     | the sequence's sets, in span order |
//! | `spans` | `LargeList<FixedSizeList<item: UInt32, 2>>`        | each set's `[start, end)`         |
//!
//! This is the two-level CSR of the method, in place: `seq_offsets` (u64 x Nseq+1,
//! the outer offsets of `sets`), `set_offsets` (u64 x Nsets+1, its inner offsets)
//! and `values` (atom ids); `spans` holds `start, end` (u32) per set and its outer
//! offsets equal `seq_offsets`. Schema metadata: `ausa.format = "banks/1"`,
//! `ausa.vocab_size`, `ausa.id_width` (as in token files), `ausa.window`,
//! `ausa.stride`. Body buffers in order (each at a multiple of 64, zero-padded):
//!
//! ```text
//! sets validity 0 B | seq_offsets i64 x (Nseq+1) | inner validity 0 B |
//! set_offsets i64 x (Nsets+1) | item validity 0 B | values u16/u32 x Natoms |
//! spans validity 0 B | spans offsets i64 x (Nseq+1) | pair validity 0 B |
//! u32 validity 0 B | span values u32 x 2*Nsets
//! ```
//!
//! [`BanksFile::open`] checks the structure (every buffer inside the file,
//! aligned, offsets monotone and in bounds: Arrow's validation, O(offsets)), that
//! both columns share `seq_offsets`, and every span (`start < end`, ends
//! non-decreasing within a sequence): O(metadata + Nseq + Nsets). Atom ids are not
//! read at open (that would be O(size)); consumers that index embeddings
//! with them check the ids they use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{FixedSizeListArray, LargeListArray, RecordBatch, UInt32Array};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema};

use crate::ipc::{self, Check};
use crate::table::FORMAT_KEY;
use crate::tokens::{id_buffer, item_field, IdBuffer, IdVec, ID_WIDTH_KEY, VOCAB_SIZE_KEY};
use crate::{ArtifactError, IdWidth, Split, TokenIds};

/// The `ausa.format` tag of bank files.
pub const BANKS_FORMAT: &str = "banks/1";

const WINDOW_KEY: &str = "ausa.window";
const STRIDE_KEY: &str = "ausa.stride";

/// The name of the bank file of `split` (`banks-train.arrow`, ...).
pub fn banks_file_name(split: Split) -> String {
    format!("banks-{}.arrow", split.as_str())
}

/// The path of the bank file of `split` inside artifact directory `dir`.
pub fn banks_path(dir: impl AsRef<Path>, split: Split) -> PathBuf {
    dir.as_ref().join(banks_file_name(split))
}

/// How windows were cut; stored in the file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankShape {
    /// Every id is below this.
    pub vocab_size: u32,
    /// Tokens per window.
    pub window: u32,
    /// Tokens between window starts.
    pub stride: u32,
}

fn span_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::UInt32, false))
}

fn pair_field() -> Arc<Field> {
    Arc::new(Field::new(
        "item",
        DataType::FixedSizeList(span_field(), 2),
        false,
    ))
}

fn set_field(width: IdWidth) -> Arc<Field> {
    Arc::new(Field::new(
        "item",
        DataType::LargeList(item_field(width)),
        false,
    ))
}

fn bank_fields(width: IdWidth) -> Schema {
    Schema::new(vec![
        Field::new("sets", DataType::LargeList(set_field(width)), false),
        Field::new("spans", DataType::LargeList(pair_field()), false),
    ])
}

fn bank_schema(shape: BankShape) -> Schema {
    let width = IdWidth::for_vocab(shape.vocab_size);
    let metadata = [
        (FORMAT_KEY, BANKS_FORMAT.to_string()),
        (VOCAB_SIZE_KEY, shape.vocab_size.to_string()),
        (ID_WIDTH_KEY, width.bits().to_string()),
        (WINDOW_KEY, shape.window.to_string()),
        (STRIDE_KEY, shape.stride.to_string()),
    ];
    let metadata = ipc::metadata(&metadata);
    bank_fields(width).with_metadata(metadata)
}

/// What [`BanksWriter::finish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanksSummary {
    /// Sequences (rows).
    pub sequences: u64,
    /// Sets, all sequences together.
    pub sets: u64,
    /// Atom ids, all sets together.
    pub atoms: u64,
}

/// Collects the banks of one split in memory and writes `banks-<split>.arrow`.
pub struct BanksWriter {
    path: PathBuf,
    shape: BankShape,
    values: IdVec,
    set_offsets: Vec<i64>,
    seq_offsets: Vec<i64>,
    spans: Vec<u32>,
}

impl BanksWriter {
    /// A writer for `path` (created by [`BanksWriter::finish`]).
    pub fn new(path: impl AsRef<Path>, shape: BankShape) -> BanksWriter {
        BanksWriter {
            path: path.as_ref().to_path_buf(),
            shape,
            values: IdVec::new(IdWidth::for_vocab(shape.vocab_size)),
            set_offsets: vec![0],
            seq_offsets: vec![0],
            spans: Vec::new(),
        }
    }

    /// Appends a set of the current sequence: its sorted distinct atoms (each below
    /// the vocabulary size) and its span `[start, end)`, `start < end`.
    pub fn push_set(&mut self, atoms: &[u32], start: u32, end: u32) -> Result<(), ArtifactError> {
        if let Some(&bad) = atoms.iter().find(|&&a| a >= self.shape.vocab_size) {
            let detail = format!("atom id {bad} is not below the vocabulary size");
            return Err(ArtifactError::schema(&self.path, detail));
        }
        self.values.extend(atoms);
        self.set_offsets.push(self.values.len() as i64);
        self.spans.extend([start, end]);
        Ok(())
    }

    /// Ends the current sequence (its sets are those pushed since the last call).
    pub fn end_sequence(&mut self) {
        self.seq_offsets.push(self.set_offsets.len() as i64 - 1);
    }

    /// Writes the file and returns what it holds.
    pub fn finish(self) -> Result<BanksSummary, ArtifactError> {
        let summary = BanksSummary {
            sequences: self.seq_offsets.len() as u64 - 1,
            sets: self.set_offsets.len() as u64 - 1,
            atoms: self.values.len() as u64,
        };
        let path = self.path.clone();
        let batch = self
            .into_batch()
            .map_err(|e| ArtifactError::io(&path, std::io::Error::other(e)))?;
        ipc::write_batch(&path, &batch)?;
        Ok(summary)
    }

    fn into_batch(self) -> Result<RecordBatch, ArrowError> {
        let width = IdWidth::for_vocab(self.shape.vocab_size);
        let seq_offsets = OffsetBuffer::new(ScalarBuffer::from(self.seq_offsets));
        let set_offsets = OffsetBuffer::new(ScalarBuffer::from(self.set_offsets));
        let sets = LargeListArray::try_new(
            item_field(width),
            set_offsets,
            self.values.into_array(),
            None,
        )?;
        let sets =
            LargeListArray::try_new(set_field(width), seq_offsets.clone(), Arc::new(sets), None)?;
        let flat = UInt32Array::new(ScalarBuffer::from(self.spans), None);
        let pairs = FixedSizeListArray::try_new(span_field(), 2, Arc::new(flat), None)?;
        let spans = LargeListArray::try_new(pair_field(), seq_offsets, Arc::new(pairs), None)?;
        let schema = Arc::new(bank_schema(self.shape));
        RecordBatch::try_new(schema, vec![Arc::new(sets), Arc::new(spans)])
    }
}

/// A memory-mapped, validated bank file (see the [module docs](self)); slices point
/// into the mapping.
#[derive(Debug, Clone)]
pub struct BanksFile {
    path: PathBuf,
    data: Buffer,
    shape: BankShape,
    seq_offsets: ScalarBuffer<u64>,
    set_offsets: ScalarBuffer<u64>,
    values: IdBuffer,
    spans: ScalarBuffer<u32>,
}

impl BanksFile {
    /// Maps and validates the bank file at `path`; an error names the file.
    pub fn open(path: impl AsRef<Path>) -> Result<BanksFile, ArtifactError> {
        let path = path.as_ref();
        let mut shape = None;
        let mapped = ipc::map_batch(path, |schema| {
            shape = Some(check_schema(schema)?);
            Ok(())
        })?;
        let file = mapped.and_then(|m| {
            let shape = shape.ok_or("the schema was not checked (bug)")?;
            assemble(path, m.data, shape, &m.batch)
        });
        file.map_err(|detail| invalid(path, BANKS_FORMAT, "banks", detail))
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size, window and stride.
    pub fn shape(&self) -> BankShape {
        self.shape
    }

    /// Number of sequences (rows).
    pub fn num_sequences(&self) -> usize {
        self.seq_offsets.len() - 1
    }

    /// Number of sets, all sequences together.
    pub fn num_sets(&self) -> usize {
        self.set_offsets.len() - 1
    }

    /// `Nseq + 1` offsets into the sets: sequence `i` has sets `seq[i]..seq[i+1]`.
    pub fn seq_offsets(&self) -> &[u64] {
        &self.seq_offsets
    }

    /// `Nsets + 1` offsets into [`BanksFile::values`].
    pub fn set_offsets(&self) -> &[u64] {
        &self.set_offsets
    }

    /// Every set's atoms, concatenated in set order.
    pub fn values(&self) -> TokenIds<'_> {
        self.values.ids()
    }

    /// `start, end` of every set, flat (2 x Nsets).
    pub fn spans(&self) -> &[u32] {
        &self.spans
    }

    /// The atoms of set `i` (global set index), or `None` past the end.
    pub fn set(&self, i: usize) -> Option<TokenIds<'_>> {
        let start = usize::try_from(*self.set_offsets.get(i)?).ok()?;
        let end = usize::try_from(*self.set_offsets.get(i + 1)?).ok()?;
        self.values().slice(start..end)
    }

    /// The global set indices of sequence `i`.
    pub fn sets_of(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(*self.seq_offsets.get(i)?).ok()?;
        let end = usize::try_from(*self.seq_offsets.get(i + 1)?).ok()?;
        Some(start..end)
    }
}

/// The error for a file that is not a valid artifact of `format`.
pub(crate) fn invalid(path: &Path, format: &str, stage: &str, detail: String) -> ArtifactError {
    ArtifactError::schema(
        path,
        format!(
            "not a valid {format} file: {detail}; rebuild it with the `{stage}` stage \
             (`ausa verify` finds damaged store objects)"
        ),
    )
}

fn check_schema(schema: &Schema) -> Check<BankShape> {
    let candidates = [bank_fields(IdWidth::U16), bank_fields(IdWidth::U32)];
    let which = ipc::check_fields(schema, BANKS_FORMAT, &candidates)?;
    let width = [IdWidth::U16, IdWidth::U32][which];
    let shape = BankShape {
        vocab_size: ipc::meta(schema, VOCAB_SIZE_KEY)?,
        window: ipc::meta(schema, WINDOW_KEY)?,
        stride: ipc::meta(schema, STRIDE_KEY)?,
    };
    let bits: u32 = ipc::meta(schema, ID_WIDTH_KEY)?;
    if bits != width.bits() || IdWidth::for_vocab(shape.vocab_size) != width {
        return Err(format!(
            "{ID_WIDTH_KEY} = {bits} and {VOCAB_SIZE_KEY} = {} do not match {}-bit ids",
            shape.vocab_size,
            width.bits()
        ));
    }
    Ok(shape)
}

fn assemble(path: &Path, data: Buffer, shape: BankShape, batch: &RecordBatch) -> Check<BanksFile> {
    let (seq_offsets, set_offsets, values) = ipc::nested_list(batch, 0, "sets")?;
    let width = IdWidth::for_vocab(shape.vocab_size);
    let values = id_buffer(values.as_ref(), width)?;
    let spans = ipc::large_list(batch, 1, "spans")?;
    if ipc::offsets(spans, "span")? != seq_offsets {
        return Err("the spans' sequence offsets differ from the sets'".into());
    }
    let pairs = spans
        .values()
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or("spans did not decode as pairs")?;
    let spans = ipc::values::<UInt32Type>(pairs.values().as_ref(), "span values")?;
    let file = BanksFile {
        path: path.to_path_buf(),
        data,
        shape,
        seq_offsets,
        set_offsets,
        values,
        spans,
    };
    check_spans(&file)?;
    let inside = ipc::in_mapping(&file.data, file.seq_offsets())
        && ipc::in_mapping(&file.data, file.set_offsets())
        && ipc::in_mapping(&file.data, file.spans());
    if !inside {
        return Err("a buffer was not read in place from the mapping".into());
    }
    Ok(file)
}

/// Every span is non-empty and ends do not decrease within a sequence (routing
/// relies on sets being in end order).
fn check_spans(file: &BanksFile) -> Check<()> {
    let spans = file.spans();
    for seq in 0..file.num_sequences() {
        let sets = file.sets_of(seq).ok_or("sequence offsets out of range")?;
        let mut last_end = 0;
        for set in sets {
            let (start, end) = (spans[2 * set], spans[2 * set + 1]);
            if start >= end || end < last_end {
                return Err(format!(
                    "set {set} of sequence {seq} has span [{start}, {end}) after an end of \
                     {last_end}; spans must be non-empty with non-decreasing ends"
                ));
            }
            last_end = end;
        }
    }
    Ok(())
}
