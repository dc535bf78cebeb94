#!/usr/bin/env bash
# The README's test command: installs libtorch into .libtorch/ when it is missing
# (tests/libtorch.sh: PyPI torch 2.11.0, about 1.3 GB) and the Python packages the tests
# read our output back with into .venv/ (tests/pyenv.sh), then runs every test of the
# workspace on CPU, the kernel and trainer tests included (the CLI's `train` feature).
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/libtorch.sh >/dev/null
tests/pyenv.sh --optional
# torch-sys reads LIBTORCH (.cargo/config.toml sets it to .libtorch/torch when unset);
# the test binaries find the libraries through their RPATH (build.rs), no LD_LIBRARY_PATH.
exec cargo test --workspace --features ausa-cli/train --locked "$@"
