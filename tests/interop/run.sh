#!/usr/bin/env bash
# Builds the demo DAG and checks its artifacts with pyarrow and the Python `tokenizers`
# package (installed into .venv from PyPI). Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check pyarrow tokenizers
cargo build -q --locked -p ausa-cli
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
target/debug/ausa build demo --store "$store" -q
.venv/bin/python tests/interop/check.py target/debug/ausa "$store" demo
