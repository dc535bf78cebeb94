"""Interop check: a training checkpoint read and written by Python's `safetensors`.

Usage: python tests/interop/checkpoint_check.py RUN_DIR COPY_DIR PERTURBED_DIR

RUN_DIR is a finished `ausa train lm` run. The check opens its checkpoint with
`safetensors` (the numpy front end: the PyPI torch wheel's Python module needs several
GB of CUDA libraries to import, and `safetensors.torch.load_file` parses the file with
the same Rust core), checks names, dtypes and shapes against `state.json`, and writes
every tensor back with Python's own writer into COPY_DIR (a copy of RUN_DIR). The
caller then resumes both runs: identical losses prove the values survived both ways.
PERTURBED_DIR gets the same rewrite with the token embedding scaled by 1.5: its resumed
losses must differ, which proves the resume really reads the tensors.
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def rewrite(run_dir, copy_dir, model, optim):
    shutil.copytree(run_dir, copy_dir)
    copied = os.path.join(copy_dir, "checkpoint")
    save_file(model, os.path.join(copied, "model.safetensors"))
    save_file(optim, os.path.join(copied, "optim.safetensors"))


def main(run_dir, copy_dir, perturbed_dir):
    checkpoint = os.path.join(run_dir, "checkpoint")
    state = json.load(open(os.path.join(checkpoint, "state.json")))
    model_cfg = state["config"]["model"]
    model = load_file(os.path.join(checkpoint, "model.safetensors"))
    optim = load_file(os.path.join(checkpoint, "optim.safetensors"))
    assert model, "no tensors in model.safetensors"
    vocab, d_model = model_cfg["vocab"], model_cfg["d_model"]
    embeddings = [n for n, t in model.items() if t.shape == (vocab, d_model)]
    assert embeddings, f"no [{vocab}, {d_model}] token embedding among {sorted(model)}"
    for name, tensor in model.items():
        assert tensor.dtype == np.float32, (name, tensor.dtype)
        assert np.isfinite(tensor).all(), f"{name} has non-finite values"
        assert optim[f"m.{name}"].shape == tensor.shape, name
        second = optim[f"v.{name}"]
        assert second.shape == tensor.shape, name
        assert (second >= 0).all(), f"v.{name}: negative second moment"
    assert len(optim) == 2 * len(model), (len(optim), len(model))
    params = sum(t.size for t in model.values())
    rewrite(run_dir, copy_dir, model, optim)
    perturbed = dict(model)
    perturbed[embeddings[0]] = model[embeddings[0]] * np.float32(1.5)
    rewrite(run_dir, perturbed_dir, perturbed, optim)
    print(f"checkpoint: {len(model)} tensors, {params} parameters, step {state['step']}: read and rewritten by Python safetensors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
