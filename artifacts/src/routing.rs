//! Routing tables: `routing-<split>.arrow`, one per dataset split.
//!
//! The static token -> set candidate structure. Which sets token `t` of a sequence
//! may use depends only on where the sequence's sets end (causal tables admit sets
//! with `end <= t + 1`, the `topk` most recent of them when `topk > 0`; non-causal
//! ones every set of the sequence), and set ends depend only on the sequence length,
//! window and stride. So the file stores one CSR table per distinct *layout* (the
//! list of set ends), not one per sequence: a split of fixed-length sequences has a
//! single layout, and the file is a few kilobytes however large the corpus. A
//! sequence finds its table through its set ends ([`RoutingFile::layout_of`]).
//! Nothing here depends on learned parameters.
//!
//! Arrow IPC, single batch, 64-byte aligned, no nulls, one row per layout in order
//! of first appearance in the bank file:
//!
//! | column       | Arrow type                               | meaning                          |
//! |--------------|------------------------------------------|----------------------------------|
//! | `ends`       | `LargeList<item: UInt32>`                | the layout: each set's `end`     |
//! | `candidates` | `LargeList<LargeList<item: UInt32>>`     | per token position, local set ids |
//!
//! A layout with ends `e` has `max(e)` token positions; candidate ids index `e`.
//! Schema metadata: `ausa.format = "routing/2"`, `ausa.causal` (`true`/`false`),
//! `ausa.router_topk`, `ausa.sequences` (sequences of the bank file it was built
//! from, checked when opened next to it). Body buffers: validity 0 B, end offsets
//! i64 x (Nlayouts+1), validity 0 B, ends u32, validity 0 B, token offsets i64 x
//! (Nlayouts+1), validity 0 B, candidate offsets i64 x (Ntokens+1), validity 0 B,
//! set ids u32. [`RoutingFile::open`] validates everything (layouts are few and
//! small): ends non-decreasing, one token position per position up to the last end,
//! every candidate id names a set of its layout and, for causal tables, ends at or
//! before `t + 1`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{Array, ArrayRef, LargeListArray, RecordBatch, UInt32Array};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema};

use crate::banks::invalid;
use crate::ipc::{self, Check};
use crate::table::FORMAT_KEY;
use crate::{ArtifactError, Split};

/// The `ausa.format` tag of routing files.
pub const ROUTING_FORMAT: &str = "routing/2";

const CAUSAL_KEY: &str = "ausa.causal";
const TOPK_KEY: &str = "ausa.router_topk";
const SEQUENCES_KEY: &str = "ausa.sequences";

/// The name of the routing file of `split` (`routing-train.arrow`, ...).
pub fn routing_file_name(split: Split) -> String {
    format!("routing-{}.arrow", split.as_str())
}

/// The path of the routing file of `split` inside artifact directory `dir`.
pub fn routing_path(dir: impl AsRef<Path>, split: Split) -> PathBuf {
    dir.as_ref().join(routing_file_name(split))
}

fn u32_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::UInt32, false))
}

fn token_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::LargeList(u32_field()), false))
}

fn routing_fields() -> Schema {
    Schema::new(vec![
        Field::new("ends", DataType::LargeList(u32_field()), false),
        Field::new("candidates", DataType::LargeList(token_field()), false),
    ])
}

/// One layout's table in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingLayout {
    /// The end of every set of the layout, non-decreasing.
    pub ends: Vec<u32>,
    /// `Ntokens + 1` offsets into `sets`, `Ntokens` = the last end.
    pub token_offsets: Vec<u64>,
    /// Candidate set ids (indices into `ends`) per token, concatenated.
    pub sets: Vec<u32>,
}

/// A routing table in memory: what [`write_routing`] stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// Whether tokens see only sets that end at or before `t + 1`.
    pub causal: bool,
    /// At most this many candidates per token (0 = all).
    pub topk: u32,
    /// Sequences of the bank file the table was built from.
    pub sequences: u64,
    /// The distinct layouts, in order of first appearance.
    pub layouts: Vec<RoutingLayout>,
}

/// Writes `routing` to `path`.
pub fn write_routing(path: impl AsRef<Path>, routing: &Routing) -> Result<(), ArtifactError> {
    let path = path.as_ref();
    let batch =
        routing_batch(routing).map_err(|e| ArtifactError::io(path, std::io::Error::other(e)))?;
    ipc::write_batch(path, &batch)
}

fn routing_batch(routing: &Routing) -> Result<RecordBatch, ArrowError> {
    let metadata = [
        (FORMAT_KEY, ROUTING_FORMAT.to_string()),
        (CAUSAL_KEY, routing.causal.to_string()),
        (TOPK_KEY, routing.topk.to_string()),
        (SEQUENCES_KEY, routing.sequences.to_string()),
    ];
    let schema = Arc::new(routing_fields().with_metadata(ipc::metadata(&metadata)));
    let layouts = &routing.layouts;
    let ends = list(
        u32_field(),
        layouts.iter().map(|l| l.ends.len()),
        u32s(layouts.iter().flat_map(|l| l.ends.iter().copied())),
    )?;
    let token_lists = list(
        u32_field(),
        layouts
            .iter()
            .flat_map(|l| l.token_offsets.windows(2).map(|w| (w[1] - w[0]) as usize)),
        u32s(layouts.iter().flat_map(|l| l.sets.iter().copied())),
    )?;
    let candidates = list(
        token_field(),
        layouts.iter().map(|l| l.token_offsets.len() - 1),
        Arc::new(token_lists),
    )?;
    RecordBatch::try_new(schema, vec![Arc::new(ends), Arc::new(candidates)])
}

fn u32s(values: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(values))
}

/// A `LargeList` of `values` cut into rows of `lengths`.
fn list(
    item: Arc<Field>,
    lengths: impl Iterator<Item = usize>,
    values: ArrayRef,
) -> Result<LargeListArray, ArrowError> {
    LargeListArray::try_new(item, OffsetBuffer::from_lengths(lengths), values, None)
}

/// One layout's table, borrowed from a [`RoutingFile`].
#[derive(Debug, Clone, Copy)]
pub struct LayoutTable<'a> {
    /// `Ntokens + 1` offsets into `sets` (not rebased: they index the file's sets).
    token_offsets: &'a [u64],
    sets: &'a [u32],
}

impl<'a> LayoutTable<'a> {
    /// Token positions the layout covers.
    pub fn num_tokens(&self) -> usize {
        self.token_offsets.len() - 1
    }

    /// The candidate set ids of token `t` (indices into the sequence's sets).
    ///
    /// # Panics
    /// If `t >= self.num_tokens()`.
    pub fn candidates(&self, t: usize) -> &'a [u32] {
        // In bounds: `open` checked every offset of the layout against `sets`.
        &self.sets[self.token_offsets[t] as usize..self.token_offsets[t + 1] as usize]
    }
}

/// A memory-mapped, validated routing file (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RoutingFile {
    path: PathBuf,
    _data: Buffer,
    causal: bool,
    topk: u32,
    sequences: u64,
    /// Layout ends -> the layout's range of token positions in `token_offsets`.
    layouts: HashMap<Box<[u32]>, Range<usize>>,
    token_offsets: ScalarBuffer<u64>,
    sets: ScalarBuffer<u32>,
}

/// What the schema metadata says.
struct Header {
    causal: bool,
    topk: u32,
    sequences: u64,
}

impl RoutingFile {
    /// Maps and validates the routing file at `path`; an error names the file.
    pub fn open(path: impl AsRef<Path>) -> Result<RoutingFile, ArtifactError> {
        let path = path.as_ref();
        let mut header = None;
        let mapped = ipc::map_batch(path, |schema| {
            ipc::check_fields(schema, ROUTING_FORMAT, &[routing_fields()])?;
            header = Some(Header {
                causal: ipc::meta(schema, CAUSAL_KEY)?,
                topk: ipc::meta(schema, TOPK_KEY)?,
                sequences: ipc::meta(schema, SEQUENCES_KEY)?,
            });
            Ok(())
        })?;
        let file = mapped.and_then(|m| {
            let header = header.ok_or("the schema was not checked (bug)")?;
            assemble(path, m.data, header, &m.batch)
        });
        file.map_err(|detail| invalid(path, ROUTING_FORMAT, "routing", detail))
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether tokens see only sets that end at or before `t + 1`.
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// At most this many candidates per token (0 = all).
    pub fn topk(&self) -> u32 {
        self.topk
    }

    /// Sequences of the bank file the table was built from.
    pub fn num_sequences(&self) -> u64 {
        self.sequences
    }

    /// Number of distinct layouts.
    pub fn num_layouts(&self) -> usize {
        self.layouts.len()
    }

    /// The table of a sequence whose sets end at `ends`, or `None` when no sequence
    /// of the bank this was built from had that layout.
    pub fn layout_of(&self, ends: &[u32]) -> Option<LayoutTable<'_>> {
        let tokens = self.layouts.get(ends)?;
        Some(LayoutTable {
            token_offsets: &self.token_offsets[tokens.start..tokens.end + 1],
            sets: &self.sets,
        })
    }
}

fn assemble(path: &Path, data: Buffer, header: Header, batch: &RecordBatch) -> Check<RoutingFile> {
    let ends_list = ipc::large_list(batch, 0, "ends")?;
    let end_offsets = ipc::offsets(ends_list, "ends")?;
    let ends = ipc::values::<UInt32Type>(ends_list.values().as_ref(), "ends")?;
    let (layout_offsets, token_offsets, sets) = ipc::nested_list(batch, 1, "candidates")?;
    let sets = ipc::values::<UInt32Type>(sets.as_ref(), "candidate set ids")?;
    let mut layouts = HashMap::new();
    for i in 0..ends_list.len() {
        let layout_ends = &ends[end_offsets[i] as usize..end_offsets[i + 1] as usize];
        let tokens = layout_offsets[i] as usize..layout_offsets[i + 1] as usize;
        let table = LayoutTable {
            token_offsets: &token_offsets[tokens.start..tokens.end + 1],
            sets: &sets,
        };
        check_layout(i, layout_ends, table, header.causal)?;
        if layouts.insert(layout_ends.into(), tokens).is_some() {
            return Err(format!("layout {i} repeats an earlier layout"));
        }
    }
    Ok(RoutingFile {
        path: path.to_path_buf(),
        _data: data,
        causal: header.causal,
        topk: header.topk,
        sequences: header.sequences,
        layouts,
        token_offsets,
        sets,
    })
}

/// Checks one layout: ends non-decreasing, one token position per position up to
/// the last end, every candidate a set of the layout (visible at `t` if causal).
fn check_layout(i: usize, ends: &[u32], table: LayoutTable<'_>, causal: bool) -> Check<()> {
    if ends.windows(2).any(|w| w[0] > w[1]) {
        return Err(format!("layout {i} has decreasing set ends {ends:?}"));
    }
    let positions = ends.last().copied().unwrap_or(0) as usize;
    if table.num_tokens() != positions {
        return Err(format!(
            "layout {i} routes {} token positions, its sets end at {positions}",
            table.num_tokens()
        ));
    }
    for t in 0..positions {
        let bad = table.candidates(t).iter().find(|&&j| {
            ends.get(j as usize)
                .is_none_or(|&end| causal && end as usize > t + 1)
        });
        if let Some(j) = bad {
            return Err(format!(
                "layout {i} routes token {t} to set {j}, which is not a set of the layout \
                 (or, causal, ends after {})",
                t + 1
            ));
        }
    }
    Ok(())
}
