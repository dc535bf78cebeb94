//! Routing tables: `routing-<split>.arrow`, one per dataset split.
//!
//! The static token -> set candidate structure: for every sequence (row, in the
//! order of the bank file) and every token position `t` of it, the sets token `t`
//! may use, as indices local to the sequence's bank. Causal tables admit only sets
//! with `end <= t + 1` (the `topk` most recent of them when `topk > 0`); non-causal
//! ones every set of the sequence. Nothing here depends on learned parameters.
//! Arrow IPC, single batch, 64-byte aligned, no nulls:
//!
//! | column       | Arrow type                               | meaning                    |
//! |--------------|------------------------------------------|----------------------------|
//! | `candidates` | `LargeList<LargeList<item: UInt32>>`     | per token, local set ids   |
//!
//! Schema metadata: `ausa.format = "routing/1"`, `ausa.causal` (`true`/`false`),
//! `ausa.router_topk`. Body buffers: validity 0 B, token offsets i64 x (Nseq+1),
//! validity 0 B, candidate offsets i64 x (Ntokens+1), validity 0 B, set indices
//! u32 x Ncandidates. [`RoutingFile::open`] costs the metadata plus Arrow's pass
//! over both offset buffers; indices are checked against the bank by
//! consumers (the model indexes with them).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{LargeListArray, RecordBatch, UInt32Array};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema};

use crate::banks::invalid;
use crate::ipc;
use crate::table::FORMAT_KEY;
use crate::{ArtifactError, Split};

/// The `ausa.format` tag of routing files.
pub const ROUTING_FORMAT: &str = "routing/1";

const CAUSAL_KEY: &str = "ausa.causal";
const TOPK_KEY: &str = "ausa.router_topk";

/// The name of the routing file of `split` (`routing-train.arrow`, ...).
pub fn routing_file_name(split: Split) -> String {
    format!("routing-{}.arrow", split.as_str())
}

/// The path of the routing file of `split` inside artifact directory `dir`.
pub fn routing_path(dir: impl AsRef<Path>, split: Split) -> PathBuf {
    dir.as_ref().join(routing_file_name(split))
}

fn index_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::UInt32, false))
}

fn token_field() -> Arc<Field> {
    Arc::new(Field::new(
        "item",
        DataType::LargeList(index_field()),
        false,
    ))
}

fn routing_fields() -> Schema {
    Schema::new(vec![Field::new(
        "candidates",
        DataType::LargeList(token_field()),
        false,
    )])
}

/// A routing table in memory: the two-level CSR of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// `Nseq + 1` offsets into the tokens.
    pub seq_offsets: Vec<u64>,
    /// `Ntokens + 1` offsets into `sets`.
    pub token_offsets: Vec<u64>,
    /// Local set indices, per token in increasing order.
    pub sets: Vec<u32>,
}

/// Writes `routing` to `path` with its `causal` and `topk` metadata.
pub fn write_routing(
    path: impl AsRef<Path>,
    causal: bool,
    topk: u32,
    routing: Routing,
) -> Result<(), ArtifactError> {
    let path = path.as_ref();
    let batch = routing_batch(causal, topk, routing)
        .map_err(|e| ArtifactError::io(path, std::io::Error::other(e)))?;
    ipc::write_batch(path, &batch)
}

fn routing_batch(causal: bool, topk: u32, routing: Routing) -> Result<RecordBatch, ArrowError> {
    let metadata = [
        (FORMAT_KEY, ROUTING_FORMAT.to_string()),
        (CAUSAL_KEY, causal.to_string()),
        (TOPK_KEY, topk.to_string()),
    ];
    let metadata = ipc::metadata(&metadata);
    let schema = Arc::new(routing_fields().with_metadata(metadata));
    let signed = |v: Vec<u64>| {
        OffsetBuffer::new(ScalarBuffer::from(
            v.into_iter().map(|o| o as i64).collect::<Vec<_>>(),
        ))
    };
    let sets = UInt32Array::new(ScalarBuffer::from(routing.sets), None);
    let tokens = LargeListArray::try_new(
        index_field(),
        signed(routing.token_offsets),
        Arc::new(sets),
        None,
    )?;
    let seqs = LargeListArray::try_new(
        token_field(),
        signed(routing.seq_offsets),
        Arc::new(tokens),
        None,
    )?;
    RecordBatch::try_new(schema, vec![Arc::new(seqs)])
}

/// A memory-mapped, validated routing file (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RoutingFile {
    path: PathBuf,
    _data: Buffer,
    causal: bool,
    topk: u32,
    seq_offsets: ScalarBuffer<u64>,
    token_offsets: ScalarBuffer<u64>,
    sets: ScalarBuffer<u32>,
}

impl RoutingFile {
    /// Maps and validates the routing file at `path`; an error names the file.
    pub fn open(path: impl AsRef<Path>) -> Result<RoutingFile, ArtifactError> {
        let path = path.as_ref();
        let mut params = None;
        let mapped = ipc::map_batch(path, |schema| {
            ipc::check_fields(schema, ROUTING_FORMAT, &[routing_fields()])?;
            params = Some((ipc::meta(schema, CAUSAL_KEY)?, ipc::meta(schema, TOPK_KEY)?));
            Ok(())
        })?;
        let file = mapped.and_then(|m| {
            let (causal, topk) = params.ok_or("the schema was not checked (bug)")?;
            let (seq_offsets, token_offsets, sets) = ipc::nested_list(&m.batch, 0, "candidates")?;
            Ok(RoutingFile {
                path: path.to_path_buf(),
                sets: ipc::values::<UInt32Type>(sets.as_ref(), "set indices")?,
                _data: m.data,
                causal,
                topk,
                seq_offsets,
                token_offsets,
            })
        });
        file.map_err(|detail: String| invalid(path, ROUTING_FORMAT, "routing", detail))
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

    /// Number of sequences (rows).
    pub fn num_sequences(&self) -> usize {
        self.seq_offsets.len() - 1
    }

    /// `Nseq + 1` offsets into the tokens.
    pub fn seq_offsets(&self) -> &[u64] {
        &self.seq_offsets
    }

    /// `Ntokens + 1` offsets into [`RoutingFile::sets`].
    pub fn token_offsets(&self) -> &[u64] {
        &self.token_offsets
    }

    /// Local set indices of every token, concatenated.
    pub fn sets(&self) -> &[u32] {
        &self.sets
    }
}
