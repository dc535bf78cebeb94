#!/usr/bin/env python3
"""Which CUDA kernels a change touches, without a GPU: compiles every kernels/cuda/*.cu
at git revision REV and in the working tree with NVRTC (the options of
`ausa_kernels::cuda::compile_all`: sm_90, head dimension 64, both variants of the
TOKEN_BF16 / CONTENT / OUT_BF16 switches) and compares the PTX of each kernel entry,
ignoring debug line directives and the numbering of branch labels. A kernel reported
`identical` compiles to the same instructions as at REV: a refactor that leaves every
tested kernel identical needs no GPU run to keep its tests and timings.

Usage: python3 kernels/tools/ptx_diff.py [REV=HEAD] [--arch sm_90]
Needs libnvrtc (tests/libtorch.sh installs it under .libtorch/nvidia/cu13/lib).
Exit status 0 always; the report is the output (changed kernels first).
"""

import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def nvrtc():
    for path in glob.glob(os.path.join(ROOT, ".libtorch/nvidia/cu*/lib/libnvrtc.so*")) + [
        "libnvrtc.so"
    ]:
        if "alt" in os.path.basename(path) or "builtins" in os.path.basename(path):
            continue
        try:
            # NVRTC dlopens its builtins by bare name: load them first from the same
            # folder, as ausa_kernels::cuda does.
            for builtins in glob.glob(os.path.join(os.path.dirname(path),
                                                   "libnvrtc-builtins.so.*")):
                if "alt" not in os.path.basename(builtins):
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(path)
        except OSError:
            continue
    sys.exit("libnvrtc not found: run tests/libtorch.sh first")


def compile_ptx(lib, name, text, options):
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), name.encode(), 0, None, None):
        sys.exit(f"{name}: nvrtcCreateProgram failed")
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    if status != 0:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        return None, log.value.decode(errors="replace")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value.decode(), ""


def entries(ptx):
    """Kernel name -> its PTX without .loc lines, comments and label numbers."""
    out = {}
    for m in re.finditer(r"\.entry (\w+)\(.*?\n\}\n", ptx, re.S):
        lines = [
            l for l in m.group(0).splitlines()
            if not l.strip().startswith((".loc", "//"))
        ]
        out[m.group(1)] = re.sub(r"L__BB\d+_", "L__BB_", "\n".join(lines))
    return out


def variants(name):
    if name == "layer_norm.cu":
        return [["-DLN_C=100", f"-DOUT_BF16={v}"] for v in "01"]
    return [
        ["-DHEAD_DIM=64", f"-DCONTENT={v}", f"-DTOKEN_BF16={v}", "-DDQ_TOKEN_LANES=8",
         "-DSA_LANES=16", "-DMMA_WARPS=4"]
        for v in "01"
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev", nargs="?", default="HEAD")
    p.add_argument("--arch", default="sm_90")
    a = p.parse_args()
    lib = nvrtc()
    changed, same, added, removed = [], [], [], []
    for path in sorted(glob.glob(os.path.join(ROOT, "kernels/cuda/*.cu"))):
        name = os.path.basename(path)
        new_text = open(path).read()
        old = subprocess.run(["git", "-C", ROOT, "show", f"{a.rev}:kernels/cuda/{name}"],
                             capture_output=True, text=True)
        for defines in variants(name):
            options = [f"--gpu-architecture={a.arch}", "--std=c++17"] + defines
            tag = f"{name} {' '.join(d for d in defines if 'BF16' in d or 'CONTENT' in d)}"
            new, log = compile_ptx(lib, name, new_text, options)
            if new is None:
                print(f"{tag}: the working tree does not compile:\n{log}")
                continue
            new = entries(new)
            if old.returncode != 0:
                added += [f"{tag} {k}" for k in sorted(new)]
                continue
            prev, log = compile_ptx(lib, name, old.stdout, options)
            prev = entries(prev) if prev else {}
            for k in sorted(set(prev) | set(new)):
                if k not in new:
                    removed.append(f"{tag} {k}")
                elif k not in prev:
                    added.append(f"{tag} {k}")
                elif prev[k] == new[k]:
                    same.append(f"{tag} {k}")
                else:
                    changed.append(f"{tag} {k}")
    for title, items in [("changed", changed), ("new", added), ("removed", removed),
                         ("identical", same)]:
        print(f"{title}: {len(items)}")
        for i in items:
            print(f"  {i}")


if __name__ == "__main__":
    main()
