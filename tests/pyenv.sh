#!/usr/bin/env bash
# Creates the git-ignored .venv/ at the repository root with the Python packages that
# tests read our output back with, when it lacks any of them: moto's S3 server
# (tests/remote.rs), tensorboard and wandb (tests/track.rs). PyPI only. Without them
# those tests skip, visibly (`SKIPPED <test> [<requirement>]`), unless AUSA_REQUIRE
# names the requirement (.ci/run does).
#
# Usage: tests/pyenv.sh [--optional]   install what is missing; with --optional a failed
#                                      install is a warning (the tests then skip)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
packages=('moto[server]' tensorboard wandb)
if "$venv/bin/python" -c "import moto, tensorboard, wandb" >/dev/null 2>&1; then
    exit 0
fi
echo "== installing ${packages[*]} into $venv (PyPI)" >&2
if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "${packages[@]}"; } >&2; then
    if [ "${1:-}" = "--optional" ]; then
        echo "warning: could not install ${packages[*]} into $venv; the tests that need them will skip" >&2
        exit 0
    fi
    exit 1
fi
