//! End-to-end tests of the real `ausa` binary, each in a fresh temp dir with its own
//! store. One test binary: the shared `common` module is compiled and linked once.
//!
//! Run one group with `cargo test --test e2e cli::` (or `realtext::`, `remote::`,
//! `robustness::`, `shared_store::`, `snapshots::`, `track::`).

mod common;

mod cli;
mod realtext;
mod remote;
mod report;
mod robustness;
mod shared_store;
mod snapshots;
#[cfg(feature = "train")]
mod sweep;
#[cfg(feature = "train")]
mod track;
#[cfg(feature = "train")]
mod train;
