//! MinHash signatures: `minhash-<split>.arrow`, one per dataset split.
//!
//! One row per set, in the set order of the split's bank file
//! ([`crate::banks`]); Arrow IPC, single batch, 64-byte aligned, no nulls (the
//! shared machinery of this crate):
//!
//! | column      | Arrow type                          | meaning                           |
//! |-------------|-------------------------------------|-----------------------------------|
//! | `signature` | `FixedSizeList<item: UInt32, k>`    | `sig_i(S) = min_{u in S} h_i(u)`  |
//! | `size`      | `UInt32`                            | the exact set size `|S|`          |
//!
//! Schema metadata: `ausa.format = "minhash/1"`, `ausa.minhash_k` (k) and
//! `ausa.seed` (the hash family's seed). Body buffers in order: signature validity
//! 0 B, item validity 0 B, signatures u32 x (Nsets * k) row-major, size validity
//! 0 B, sizes u32 x Nsets. [`SignaturesFile::open`] reads only the metadata
//! (O(1) in the number of sets): there are no offsets, and Arrow checks the buffer
//! lengths against `Nsets * k`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{FixedSizeListArray, RecordBatch, UInt32Array};
use arrow_buffer::{Buffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema};

use crate::banks::invalid;
use crate::ipc::{self, Check};
use crate::table::FORMAT_KEY;
use crate::{ArtifactError, Split};

/// The `ausa.format` tag of signature files.
pub const MINHASH_FORMAT: &str = "minhash/1";

const K_KEY: &str = "ausa.minhash_k";
const SEED_KEY: &str = "ausa.seed";

/// The name of the signature file of `split` (`minhash-train.arrow`, ...).
pub fn minhash_file_name(split: Split) -> String {
    format!("minhash-{}.arrow", split.as_str())
}

/// The path of the signature file of `split` inside artifact directory `dir`.
pub fn minhash_path(dir: impl AsRef<Path>, split: Split) -> PathBuf {
    dir.as_ref().join(minhash_file_name(split))
}

fn hash_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::UInt32, false))
}

fn signature_fields(k: u32) -> Schema {
    Schema::new(vec![
        Field::new(
            "signature",
            DataType::FixedSizeList(hash_field(), k as i32),
            false,
        ),
        Field::new("size", DataType::UInt32, false),
    ])
}

/// Writes a signature file: `signatures` holds `k` values per set (row-major),
/// `sizes` one per set.
pub fn write_signatures(
    path: impl AsRef<Path>,
    k: u32,
    seed: u64,
    signatures: impl Into<ScalarBuffer<u32>>,
    sizes: Vec<u32>,
) -> Result<(), ArtifactError> {
    let path = path.as_ref();
    let batch = signature_batch(k, seed, signatures.into(), sizes)
        .map_err(|e| ArtifactError::io(path, std::io::Error::other(e)))?;
    ipc::write_batch(path, &batch)
}

fn signature_batch(
    k: u32,
    seed: u64,
    signatures: ScalarBuffer<u32>,
    sizes: Vec<u32>,
) -> Result<RecordBatch, ArrowError> {
    let metadata = [
        (FORMAT_KEY, MINHASH_FORMAT.to_string()),
        (K_KEY, k.to_string()),
        (SEED_KEY, seed.to_string()),
    ];
    let metadata = ipc::metadata(&metadata);
    let schema = Arc::new(signature_fields(k).with_metadata(metadata));
    let flat = UInt32Array::new(signatures, None);
    let sigs = FixedSizeListArray::try_new(hash_field(), k as i32, Arc::new(flat), None)?;
    let sizes = UInt32Array::new(ScalarBuffer::from(sizes), None);
    RecordBatch::try_new(schema, vec![Arc::new(sigs), Arc::new(sizes)])
}

/// A memory-mapped, validated signature file (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct SignaturesFile {
    path: PathBuf,
    _data: Buffer,
    k: u32,
    seed: u64,
    signatures: ScalarBuffer<u32>,
    sizes: ScalarBuffer<u32>,
}

impl SignaturesFile {
    /// Maps and validates the signature file at `path`; an error names the file.
    pub fn open(path: impl AsRef<Path>) -> Result<SignaturesFile, ArtifactError> {
        let path = path.as_ref();
        let mut params = None;
        let mapped = ipc::map_batch(path, |schema| {
            params = Some(check_schema(schema)?);
            Ok(())
        })?;
        let file = mapped.and_then(|m| {
            let (k, seed) = params.ok_or("the schema was not checked (bug)")?;
            let sigs = m
                .batch
                .column(0)
                .as_any()
                .downcast_ref::<FixedSizeListArray>();
            let sigs = sigs.ok_or("signature did not decode as fixed-size lists")?;
            Ok(SignaturesFile {
                path: path.to_path_buf(),
                signatures: ipc::values::<UInt32Type>(sigs.values().as_ref(), "signature")?,
                sizes: ipc::values::<UInt32Type>(m.batch.column(1).as_ref(), "size")?,
                _data: m.data,
                k,
                seed,
            })
        });
        file.map_err(|detail| invalid(path, MINHASH_FORMAT, "minhash", detail))
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hashes per set.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// The hash family's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of sets (rows).
    pub fn num_sets(&self) -> usize {
        self.sizes.len()
    }

    /// Every signature, `k` values per set, row-major.
    pub fn signatures(&self) -> &[u32] {
        &self.signatures
    }

    /// Every set's exact size.
    pub fn sizes(&self) -> &[u32] {
        &self.sizes
    }
}

fn check_schema(schema: &Schema) -> Check<(u32, u64)> {
    let k: u32 = ipc::meta(schema, K_KEY)?;
    if !(1..=4096).contains(&k) {
        return Err(format!("{K_KEY} = {k} is out of range"));
    }
    ipc::check_fields(schema, MINHASH_FORMAT, &[signature_fields(k)])?;
    Ok((k, ipc::meta(schema, SEED_KEY)?))
}
