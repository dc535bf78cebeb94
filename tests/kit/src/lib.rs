//! Test support shared by every test binary of the workspace (a dev-dependency only).
//!
//! It owns what every test crate needs the same way:
//!
//! - **Visible skips.** A test that cannot run here (no `../shared` real data, no S3
//!   test server, no user namespaces) calls [`skip`]. The line `SKIPPED <test>
//!   [<requirement>]: <reason>` goes straight to the process's stderr, past libtest's
//!   output capture, so it shows in `cargo test` output next to the test's `ok`; it is
//!   appended to `$AUSA_SKIP_LOG` when set (`.ci/run` prints the list). When the
//!   requirement is named in `$AUSA_REQUIRE` (comma-separated; `.ci/run` sets it for
//!   what CI is equipped with), the skip is a failure instead: a CI run that should
//!   have run the test cannot pass silently.
//! - **The test Python** ([`venv_python`]): the repository's `.venv`, where
//!   `tests/pyenv.sh` (run by `tests/run.sh` and `.ci/run`) installs the Python packages that tests read our files back with (`tensorboard`,
//!   `wandb`, `moto`).
//! - **The shared real data** ([`shared_file`]): files under the `shared/` folder
//!   beside the repository (`../shared/data/wikitext-2/valid.txt`), never committed.
//!
//! It must not know about any ausa crate.
//!
//! ```no_run
//! let Some(valid) = ausa_testkit::shared_file("data/wikitext-2/valid.txt", "my_test") else {
//!     return; // skipped, visibly
//! };
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

/// What a skipped test needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// The real data under `../shared` (absent on a fresh clone).
    SharedData,
    /// The S3-compatible test server (moto).
    S3Server,
    /// Unprivileged user or mount namespaces (`unshare`), or dropping privileges.
    Namespaces,
    /// A CUDA GPU (libtorch's CUDA library and the driver).
    Gpu,
    /// NVRTC (`libnvrtc.so`), to compile the CUDA kernel sources; no GPU needed.
    Nvrtc,
    /// The `tensorboard` Python package in the repository's `.venv` (`.ci/run`).
    Tensorboard,
    /// The `wandb` Python package in the repository's `.venv` (`.ci/run`).
    Wandb,
}

impl Requirement {
    /// The name used in skip lines and in `$AUSA_REQUIRE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Requirement::SharedData => "shared-data",
            Requirement::S3Server => "s3-server",
            Requirement::Namespaces => "namespaces",
            Requirement::Gpu => "gpu",
            Requirement::Nvrtc => "nvrtc",
            Requirement::Tensorboard => "tensorboard",
            Requirement::Wandb => "wandb",
        }
    }

    /// Whether `$AUSA_REQUIRE` says this run must not skip for want of it.
    pub fn is_required(self) -> bool {
        std::env::var("AUSA_REQUIRE").is_ok_and(|v| v.split(',').any(|r| r.trim() == self.as_str()))
    }
}

/// The skip line of `test`.
pub fn skip_line(requirement: Requirement, test: &str, reason: &str) -> String {
    format!("SKIPPED {test} [{}]: {reason}", requirement.as_str())
}

/// Reports that `test` did nothing because `requirement` is missing; panics instead
/// when this run requires it (see the crate docs). Call it, then return.
pub fn skip(requirement: Requirement, test: &str, reason: &str) {
    let line = skip_line(requirement, test, reason);
    if requirement.is_required() {
        panic!(
            "{line}, but AUSA_REQUIRE names `{}`: this run must have it",
            requirement.as_str()
        );
    }
    // Written to the stream itself, not through `eprintln!`, which libtest captures.
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(log) = std::env::var_os("AUSA_SKIP_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            let _ = writeln!(std::io::stderr(), "cannot append to {log:?}: {e}");
        }
    }
}

/// The repository's `.venv/bin/python` (`tests/pyenv.sh` creates it) if it can import
/// `module`; otherwise `None` after a visible [`skip`] of `test` for `requirement`.
pub fn venv_python(module: &str, requirement: Requirement, test: &str) -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let imports = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if imports {
        return Some(python);
    }
    skip(
        requirement,
        test,
        &format!(
            "{} cannot import {module} (tests/pyenv.sh installs it)",
            python.display()
        ),
    );
    None
}

/// The `shared/` folder beside the repository.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// `shared/<relative>` if it exists; otherwise `None` after a visible [`skip`] of
/// `test`.
pub fn shared_file(relative: &str, test: &str) -> Option<PathBuf> {
    let path = shared_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    skip(
        Requirement::SharedData,
        test,
        &format!(
            "{} is absent (a fresh clone has no ../shared)",
            path.display()
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_name_the_test_and_the_requirement() {
        assert_eq!(
            skip_line(Requirement::S3Server, "push_works", "no moto"),
            "SKIPPED push_works [s3-server]: no moto"
        );
    }

    #[test]
    fn the_shared_dir_is_beside_the_repository() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert!(repo.join("Cargo.toml").is_file());
        assert!(shared_dir().ends_with("shared"));
    }
}
