//! Single-batch Arrow IPC files over a memory map: the writer settings and the
//! validation every `.arrow` format of this crate shares.
//!
//! Every such format (token ids, sequences, banks, signatures, routing) is an Arrow
//! IPC file (version V5, little-endian, uncompressed, no dictionaries, messages and
//! buffers aligned and padded to [`ALIGNMENT`] bytes) holding exactly one record
//! batch whose columns are non-null. [`write_batch`] writes one deterministically;
//! [`open_batch`] maps one and checks, before Arrow's decoder slices anything (the
//! decoder panics on out-of-range buffers): both magic numbers, the footer, the
//! schema (through the caller's check), the one block and every buffer inside the
//! file and aligned, whole elements per buffer, no nulls. The decoder then builds the
//! arrays over the mapping with `require_alignment` (a misaligned buffer is an error,
//! not a silent copy) and validates list offsets. The cost is the metadata plus one
//! pass over the list offsets; value buffers are never read at open.

use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use arrow_array::types::ArrowPrimitiveType;
use arrow_array::{Array, LargeListArray, PrimitiveArray, RecordBatch};
use arrow_buffer::{Buffer, ScalarBuffer};
use arrow_ipc::reader::FileDecoder;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_ipc::{Block, Footer, MetadataVersion};
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};

use crate::{mmap, ArtifactError};

/// Alignment and padding of every message and buffer, in bytes.
pub(crate) const ALIGNMENT: usize = 64;

/// `"ARROW1"`, the magic at both ends of an Arrow IPC file.
const MAGIC: &[u8; 6] = b"ARROW1";

/// The trailer: int32 footer size, then the magic.
const TRAILER_LEN: usize = 10;

/// The start of the first message: the magic, zero-padded to the alignment.
const HEADER_LEN: usize = ALIGNMENT;

/// A validation failure, before the path is attached.
pub(crate) type Check<T> = Result<T, String>;

/// A mapped file and its one record batch, whose buffers point into the mapping.
pub(crate) struct MappedBatch {
    /// The whole file as mapped.
    pub(crate) data: Buffer,
    /// The decoded record batch.
    pub(crate) batch: RecordBatch,
}

/// Writes `batch` as the one record batch of an IPC file at `path` (64-byte
/// alignment, no compression: the bytes depend only on the schema and the values).
pub(crate) fn write_batch(path: &Path, batch: &RecordBatch) -> Result<(), ArtifactError> {
    let file = File::create(path).map_err(|e| ArtifactError::io(path, e))?;
    write_ipc(file, &batch.schema(), batch)
        .map_err(|e| ArtifactError::io(path, std::io::Error::other(e)))
}

/// Writes `batch` into `file` (see [`write_batch`]).
pub(crate) fn write_ipc(
    file: File,
    schema: &Schema,
    batch: &RecordBatch,
) -> Result<(), ArrowError> {
    let options = IpcWriteOptions::try_new(ALIGNMENT, false, MetadataVersion::V5)?;
    let mut writer = FileWriter::try_new_with_options(BufWriter::new(file), schema, options)?;
    writer.write(batch)?;
    writer.finish()?;
    writer
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    Ok(())
}

/// Maps `path` and validates it as a single-batch file whose schema passes
/// `check_schema`; errors are plain details for the caller to wrap with the path.
pub(crate) fn map_batch(
    path: &Path,
    check_schema: impl FnOnce(&Schema) -> Check<()>,
) -> Result<Check<MappedBatch>, ArtifactError> {
    let data = mmap::map_readonly(path)?;
    Ok(open_batch(data, check_schema))
}

/// Validates mapped bytes as a single-batch file (see the module docs).
pub(crate) fn open_batch(
    data: Buffer,
    check_schema: impl FnOnce(&Schema) -> Check<()>,
) -> Check<MappedBatch> {
    let footer_at = footer_range(&data)?;
    let footer = arrow_ipc::root_as_footer(&data[footer_at.clone()])
        .map_err(|e| format!("the Arrow IPC footer does not parse ({e})"))?;
    let schema = read_schema(&footer)?;
    check_schema(&schema)?;
    let block = single_block(&footer)?;
    let range = check_block(&block, footer_at.start)?;
    let message = &data[range.start..range.start + range.meta];
    let layout = BufferLayout::of(&schema)?;
    check_message(message, range.body, &layout)?;
    let batch = decode(&data, &block, range, schema)?;
    Ok(MappedBatch { data, batch })
}

/// The record batch block, as checked byte positions in the file.
#[derive(Debug, Clone, Copy)]
struct BlockRange {
    start: usize,
    meta: usize,
    body: usize,
}

/// The byte range of the footer flatbuffer, after checking both magic numbers.
fn footer_range(data: &[u8]) -> Check<Range<usize>> {
    let len = data.len();
    if len < HEADER_LEN + TRAILER_LEN || !data.starts_with(MAGIC) || !data.ends_with(MAGIC) {
        return Err(format!(
            "not an Arrow IPC file ({len} bytes; it must start and end with `ARROW1`): \
             truncated, or a different format"
        ));
    }
    let size_at = len - TRAILER_LEN;
    let size = i32::from_le_bytes([
        data[size_at],
        data[size_at + 1],
        data[size_at + 2],
        data[size_at + 3],
    ]);
    match usize::try_from(size) {
        Ok(size) if size > 0 && size <= size_at - HEADER_LEN => Ok(size_at - size..size_at),
        _ => Err(format!(
            "footer size {size} does not fit in a file of {len} bytes"
        )),
    }
}

/// The schema from the footer, on a little-endian machine, metadata version V5.
fn read_schema(footer: &Footer<'_>) -> Check<SchemaRef> {
    if footer.version() != MetadataVersion::V5 {
        return Err(format!(
            "metadata version {:?}, expected V5",
            footer.version()
        ));
    }
    let fb = footer.schema().ok_or("the footer has no schema")?;
    if fb.endianness() != arrow_ipc::Endianness::Little || cfg!(target_endian = "big") {
        return Err("only little-endian files on little-endian machines are supported".into());
    }
    let schema = arrow_ipc::convert::try_fb_to_schema(fb)
        .map_err(|e| format!("the schema does not parse ({e})"))?;
    Ok(Arc::new(schema))
}

/// The only record batch block; the formats have no dictionaries.
fn single_block(footer: &Footer<'_>) -> Check<Block> {
    if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
        return Err("the file has dictionary batches; the format has none".into());
    }
    let blocks = footer
        .recordBatches()
        .ok_or("the footer lists no record batch")?;
    match blocks.len() {
        1 => Ok(*blocks.get(0)),
        n => Err(format!(
            "the file has {n} record batches, expected exactly 1"
        )),
    }
}

/// Checks that the block lies between the header and the footer, aligned.
fn check_block(block: &Block, footer_start: usize) -> Check<BlockRange> {
    let fields = (
        usize::try_from(block.offset()),
        usize::try_from(block.metaDataLength()),
        usize::try_from(block.bodyLength()),
    );
    let (Ok(start), Ok(meta), Ok(body)) = fields else {
        return Err("the record batch block has a negative offset or length".into());
    };
    let end = start.checked_add(meta).and_then(|m| m.checked_add(body));
    let inside = start >= HEADER_LEN && meta >= 8 && end.is_some_and(|e| e <= footer_start);
    if !inside {
        return Err(format!(
            "the record batch block (offset {start}, metadata {meta}, body {body} bytes) \
             does not lie between the header and the footer at {footer_start}"
        ));
    }
    if start % ALIGNMENT != 0 || (start + meta) % ALIGNMENT != 0 {
        return Err(format!(
            "the record batch at offset {start} (body at {}) is not {ALIGNMENT}-byte aligned",
            start + meta
        ));
    }
    Ok(BlockRange { start, meta, body })
}

/// What the schema implies about the record batch: one field node per (nested)
/// field and the element size of every buffer, in IPC order.
struct BufferLayout {
    nodes: usize,
    /// Bytes per element of each buffer (1 for validity bitmaps, read as bytes).
    elements: Vec<i64>,
}

impl BufferLayout {
    fn of(schema: &Schema) -> Check<BufferLayout> {
        let mut layout = BufferLayout {
            nodes: 0,
            elements: Vec::new(),
        };
        for field in schema.fields() {
            layout.add(field.data_type())?;
        }
        Ok(layout)
    }

    /// Adds a field: a validity buffer, then its own buffers, then its children's.
    fn add(&mut self, ty: &DataType) -> Check<()> {
        self.nodes += 1;
        self.elements.push(1);
        match ty {
            DataType::LargeList(item) => {
                self.elements.push(8);
                self.add(item.data_type())
            }
            DataType::FixedSizeList(item, _) => self.add(item.data_type()),
            other => match other.primitive_width() {
                Some(width) if other.is_primitive() => {
                    self.elements.push(width as i64);
                    Ok(())
                }
                _ => Err(format!("column type {other} is not part of the format")),
            },
        }
    }
}

/// Checks the record batch message: no compression, the expected non-null nodes,
/// every buffer inside the body and aligned.
fn check_message(meta: &[u8], body_len: usize, layout: &BufferLayout) -> Check<()> {
    let flatbuffer = message_flatbuffer(meta)?;
    let message = arrow_ipc::root_as_message(flatbuffer)
        .map_err(|e| format!("the record batch message does not parse ({e})"))?;
    let batch = message
        .header_as_record_batch()
        .ok_or("the block does not hold a record batch message")?;
    if message.version() != MetadataVersion::V5 || batch.compression().is_some() {
        return Err("the record batch is compressed or not metadata version V5".into());
    }
    if batch.variadicBufferCounts().is_some_and(|v| !v.is_empty()) {
        return Err("the record batch has variadic buffers; the format has none".into());
    }
    let nodes: Vec<(i64, i64)> = batch
        .nodes()
        .map(|n| n.iter().map(|n| (n.length(), n.null_count())).collect())
        .unwrap_or_default();
    check_nodes(&nodes, layout.nodes, batch.length(), body_len)?;
    let buffers: Vec<(i64, i64)> = batch
        .buffers()
        .map(|b| b.iter().map(|b| (b.offset(), b.length())).collect())
        .unwrap_or_default();
    check_buffers(&buffers, body_len, &layout.elements)
}

/// The flatbuffer inside an encapsulated message: `FF FF FF FF`, int32 size, bytes.
fn message_flatbuffer(meta: &[u8]) -> Check<&[u8]> {
    let size = match meta {
        [0xFF, 0xFF, 0xFF, 0xFF, a, b, c, d, ..] => i32::from_le_bytes([*a, *b, *c, *d]),
        _ => return Err("the record batch message has no continuation marker".into()),
    };
    usize::try_from(size)
        .ok()
        .and_then(|size| meta.get(8..8 + size))
        .ok_or_else(|| format!("the record batch message size {size} exceeds its block"))
}

/// Every node is non-null and no longer than the body has bytes (a bound that keeps
/// the decoder from allocating for absurd lengths; it checks exact lengths itself).
fn check_nodes(nodes: &[(i64, i64)], expected: usize, rows: i64, body_len: usize) -> Check<()> {
    let sane = |len: i64| (0..=body_len as i64).contains(&len);
    let ok = nodes.len() == expected
        && sane(rows)
        && nodes.iter().all(|&(len, nulls)| nulls == 0 && sane(len));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the record batch has field nodes {nodes:?} (length, null count) for {rows} rows; \
             expected {expected} non-null nodes that fit the {body_len}-byte body"
        ))
    }
}

/// Checks every buffer. Arrow reinterprets value buffers as typed slices and panics
/// when their length is not a whole number of elements, so that is checked here too.
fn check_buffers(buffers: &[(i64, i64)], body_len: usize, elements: &[i64]) -> Check<()> {
    if buffers.len() != elements.len() {
        return Err(format!(
            "the record batch has {} buffers, expected {}",
            buffers.len(),
            elements.len()
        ));
    }
    for (i, (&(offset, length), &element)) in buffers.iter().zip(elements).enumerate() {
        let fits = offset >= 0
            && length >= 0
            && length % element == 0
            && offset
                .checked_add(length)
                .is_some_and(|end| end <= body_len as i64);
        if !fits || offset % ALIGNMENT as i64 != 0 {
            return Err(format!(
                "buffer {i} (offset {offset}, length {length}) is not a {ALIGNMENT}-byte \
                 aligned range of whole {element}-byte values inside the {body_len}-byte body"
            ));
        }
    }
    Ok(())
}

/// Builds the record batch over the mapping; Arrow validates lengths and offsets.
fn decode(
    data: &Buffer,
    block: &Block,
    range: BlockRange,
    schema: SchemaRef,
) -> Check<RecordBatch> {
    let bytes = data.slice_with_length(range.start, range.meta + range.body);
    FileDecoder::new(schema, MetadataVersion::V5)
        .with_require_alignment(true)
        .read_record_batch(block, &bytes)
        .map_err(|e| format!("the record batch does not decode ({e})"))?
        .ok_or_else(|| "the record batch message is empty".to_string())
}

/// Column `i` as a `LargeList`.
pub(crate) fn large_list<'a>(
    batch: &'a RecordBatch,
    i: usize,
    name: &str,
) -> Check<&'a LargeListArray> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<LargeListArray>()
        .ok_or_else(|| format!("column {name} did not decode as a LargeList"))
}

/// The values of a primitive array, in place.
pub(crate) fn values<T: ArrowPrimitiveType>(
    array: &dyn Array,
    name: &str,
) -> Check<ScalarBuffer<T::Native>> {
    array
        .as_any()
        .downcast_ref::<PrimitiveArray<T>>()
        .map(|a| a.values().clone())
        .ok_or_else(|| format!("{name} did not decode as {}", T::DATA_TYPE))
}

/// A `LargeList`'s offsets as `u64`, checked to start at 0 and end at `len` (Arrow
/// has checked that they never decrease and stay inside the values).
pub(crate) fn offsets(list: &LargeListArray, name: &str) -> Check<ScalarBuffer<u64>> {
    // LargeList offsets are int64; once checked non-negative they read as u64.
    let offsets = ScalarBuffer::<u64>::from(list.offsets().inner().inner().clone());
    let (first, last) = (offsets.first().copied(), offsets.last().copied());
    let len = list.values().len() as u64;
    if first != Some(0) || last != Some(len) {
        return Err(format!(
            "{name} offsets run from {first:?} to {last:?}, expected 0 to {len}"
        ));
    }
    Ok(offsets)
}

/// Whether `slice` lies inside `data` (proof that a buffer was not copied).
pub(crate) fn in_mapping<T>(data: &Buffer, slice: &[T]) -> bool {
    let map = data.as_slice().as_ptr_range();
    let r = slice.as_ptr_range();
    let (start, end) = (r.start as usize, r.end as usize);
    start == end || (map.start as usize <= start && end <= map.end as usize)
}

/// The schema metadata value under `key`, parsed.
pub(crate) fn meta<T: std::str::FromStr>(schema: &Schema, key: &str) -> Check<T> {
    let raw = schema.metadata().get(key);
    raw.and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("schema metadata {key} is {raw:?}, expected a number"))
}

/// Checks `ausa.format` and that the fields are exactly one of `candidates`
/// (names, types, nullability); returns the index of the matching candidate.
pub(crate) fn check_fields(schema: &Schema, format: &str, candidates: &[Schema]) -> Check<usize> {
    let tag = schema.metadata().get(crate::table::FORMAT_KEY);
    if tag.map(String::as_str) != Some(format) {
        return Err(format!(
            "schema metadata {} is {tag:?}, expected \"{format}\"",
            crate::table::FORMAT_KEY
        ));
    }
    candidates
        .iter()
        .position(|c| c.fields() == schema.fields())
        .ok_or_else(|| {
            let want: Vec<String> = candidates.iter().map(describe).collect();
            format!(
                "columns are {}; expected {}",
                describe(schema),
                want.join(" or ")
            )
        })
}

fn describe(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    format!("[{}]", fields.join(", "))
}

/// Column `i` as `LargeList<LargeList<_>>`: outer offsets, inner offsets (both
/// checked by [`offsets`]) and the innermost values array.
pub(crate) fn nested_list(
    batch: &RecordBatch,
    i: usize,
    name: &str,
) -> Check<(ScalarBuffer<u64>, ScalarBuffer<u64>, arrow_array::ArrayRef)> {
    let outer = large_list(batch, i, name)?;
    let inner = outer
        .values()
        .as_any()
        .downcast_ref::<LargeListArray>()
        .ok_or_else(|| format!("{name} did not decode as nested lists"))?;
    Ok((
        offsets(outer, name)?,
        offsets(inner, name)?,
        inner.values().clone(),
    ))
}

/// Schema metadata from `(key, value)` pairs.
pub(crate) fn metadata(pairs: &[(&str, String)]) -> arrow_schema::Metadata {
    pairs
        .iter()
        .fold(arrow_schema::Metadata::default(), |m, (k, v)| {
            m.with(*k, v.clone())
        })
}
