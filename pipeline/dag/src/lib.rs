//! DAG files, typed stage parameters, canonical keys and fingerprints.
//!
//! This crate owns the *description* of a build: it parses a DAG file (TOML),
//! checks every stage and parameter against the stage kinds in a [`Registry`],
//! applies `--set STAGE.PARAM=VALUE` overrides, orders the stages topologically,
//! and resolves each stage to a canonical key and its blake3 fingerprint.
//!
//! It must not touch the object store, run stages, or know what any stage kind
//! does: those live in `ausa-store`, `ausa-engine` and `ausa-stages`.
//!
//! The [`Stage`] trait defined here is the contract between the engine and the
//! stage kinds.

pub mod embedded;
pub mod key;
pub mod params;
pub mod plan;
pub mod spec;
pub mod stage;
#[cfg(feature = "testing")]
pub mod testing;

pub use embedded::{embedded_names, locate};
pub use key::{canonical_json, diff_keys, fingerprint, KeyChange};
pub use params::{FromParams, ParamDefault, ParamField, ParamSpec, ParamType, ParamValue, Params};
pub use plan::{ContentHasher, PlainHasher, Plan, PlannedStage, UNKNOWN_FINGERPRINT};
pub use spec::{DagError, DagSource, DagSpec, Location, Origin, Override, StageSpec};
pub use stage::{
    ExternalFile, InputArtifact, InputSlot, NoProgress, Pending, Progress, ProgressUnit, Registry,
    RemoteFile, RemoteInputs, Stage, StageContext, StageError, Stats, TypedStage,
};
