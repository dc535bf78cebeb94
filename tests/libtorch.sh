#!/usr/bin/env bash
# Installs libtorch (PyPI torch 2.11.0, the version tch 0.24 expects) into the git-ignored
# folder .libtorch/ at the repository root when it is missing, the way
# ../shared/docs/libtorch.md describes: torch's own wheel without dependencies, plus the two
# small CUDA runtime packages libtorch_cpu.so needs at load time even on CPU (found through
# torch's RPATH $ORIGIN/../../nvidia/cu13/lib), and NVRTC (about 90 MB), with which the
# kernel tests compile the CUDA sources on machines without a GPU, and the CUDA runtime's
# headers with their crt/ part (130 KB), which the shim's CUDA graph pool needs (types
# only: nothing links against CUDA). About 1.4 GB on disk.
#
# Usage: tests/libtorch.sh            install if missing, print the LIBTORCH path
#        source <(tests/libtorch.sh --env)   also export LIBTORCH and LD_LIBRARY_PATH
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.libtorch"
torch_version="2.11.0"
cuda_toolkit="cuda-toolkit[cudart,cupti,nvrtc,crt]==13.0.2"
crt="nvidia-cuda-crt==13.0.88"
stamp="$dir/.ausa-installed-$torch_version"

if [ ! -f "$stamp" ]; then
    echo "== installing libtorch (PyPI torch==$torch_version) into $dir" >&2
    python="${PYTHON:-python3}"
    if ! "$python" -m pip --version >/dev/null 2>&1; then
        echo "error: $python -m pip is not available; install Python 3 with pip, or set PYTHON" >&2
        exit 1
    fi
    rm -rf "$dir.partial"
    "$python" -m pip install -q --no-cache-dir --disable-pip-version-check --target "$dir.partial" --no-deps "torch==$torch_version" >&2
    "$python" -m pip install -q --no-cache-dir --disable-pip-version-check --target "$dir.partial" "$cuda_toolkit" >&2
    # The rename is the commit: an interrupted install never leaves a half folder in place.
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
    touch "$stamp"
fi

# Installs made before the shim used the CUDA headers lack crt/: add just that package.
if [ ! -f "$dir/nvidia/cu13/include/crt/host_config.h" ]; then
    echo "== adding the CUDA crt headers ($crt) to $dir" >&2
    python="${PYTHON:-python3}"
    rm -rf "$dir.crt"
    "$python" -m pip install -q --no-cache-dir --disable-pip-version-check --target "$dir.crt" --no-deps "$crt" >&2
    cp -r "$dir.crt/nvidia/cu13/include/crt" "$dir/nvidia/cu13/include/crt.partial"
    mv "$dir/nvidia/cu13/include/crt.partial" "$dir/nvidia/cu13/include/crt"
    rm -rf "$dir.crt"
fi

if [ "${1:-}" = "--env" ]; then
    echo "export LIBTORCH='$dir/torch'"
    echo "export LD_LIBRARY_PATH='$dir/torch/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
else
    echo "$dir/torch"
fi
