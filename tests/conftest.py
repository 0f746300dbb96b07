"""Shared test helpers: the one "unchanged" snapshot (models, directories, tensors, DataFrames, the global torch
and numpy random states) and `says`.

Import them with `from conftest import says, unchanged` (pytest puts tests/ on sys.path).
"""
import contextlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes as a uint8 copy: equal iff byte-for-byte equal (NaN-safe, unlike torch.equal)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).clone()


def snapshot_tensor(t: torch.Tensor) -> tuple:
    return t.dtype, tuple(t.shape), t.requires_grad, _bytes(t)


def assert_tensor_unchanged(t: torch.Tensor, before: tuple) -> None:
    dtype, shape, requires_grad, raw = before
    assert (t.dtype, tuple(t.shape), t.requires_grad) == (dtype, shape, requires_grad)
    assert torch.equal(_bytes(t), raw), "tensor bytes changed"


def snapshot_model(model: nn.Module) -> dict:
    """Structure (repr; name, type, identity and train/eval mode of every module), every state_dict tensor
    (cloned bytes), requires_grad flags and .grad of every parameter."""
    return {
        "repr": repr(model),
        "modules": [(name, type(m).__qualname__, id(m), m.training) for name, m in model.named_modules()],
        "state": {k: snapshot_tensor(v) for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "grad": {k: None if p.grad is None else _bytes(p.grad) for k, p in model.named_parameters()},
    }


def assert_model_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot_model(model)
    assert after["repr"] == before["repr"]
    assert after["modules"] == before["modules"], "modules were added, removed, swapped or changed mode"
    assert after["state"].keys() == before["state"].keys()
    for k, (dtype, shape, _, raw) in before["state"].items():
        a_dtype, a_shape, _, a_raw = after["state"][k]
        assert (a_dtype, a_shape) == (dtype, shape), k
        assert torch.equal(a_raw, raw), f"{k} changed"
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad"].keys() == before["grad"].keys()
    for k, g in before["grad"].items():
        assert (g is None) == (after["grad"][k] is None) and (g is None or torch.equal(g, after["grad"][k])), k


def snapshot_dir(root: Path) -> dict:
    """Every file and folder under `root`: relative path -> (bytes, mtime_ns); folders -> (None, mtime_ns)."""
    root = Path(root)
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            out[str(p.relative_to(root))] = (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
    return out


def assert_dir_unchanged(root: Path, before: dict) -> None:
    after = snapshot_dir(root)
    assert sorted(after) == sorted(before), f"files added or removed: {sorted(set(after) ^ set(before))}"
    for k, (content, mtime) in before.items():
        assert after[k][0] == content, f"{k}: contents changed"
        assert after[k][1] == mtime, f"{k}: modified (mtime changed)"


def snapshot_rng() -> tuple:
    """The global torch generator's state and numpy's legacy global state (what np.random.* draws from)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what is watched)
    return torch.get_rng_state(), (kind, keys.copy(), pos, has_gauss, gauss)


def assert_rng_unchanged(before: tuple) -> None:
    torch_state, (kind, keys, pos, has_gauss, gauss) = before
    assert torch.equal(torch.get_rng_state(), torch_state), "the global torch RNG advanced or was reseeded"
    a_kind, a_keys, a_pos, a_has_gauss, a_gauss = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is watched)
    assert (a_kind, a_pos, a_has_gauss, a_gauss) == (kind, pos, has_gauss, gauss) and np.array_equal(a_keys, keys), \
        "the global numpy RNG advanced or was reseeded"


@contextlib.contextmanager
def unchanged(models=(), dirs=(), tensors=(), frames=(), rng=True):
    """Snapshot models, directories, tensors, DataFrames and (rng=True) the global torch and numpy random states;
    on exit assert each is exactly as before."""
    models, dirs, tensors, frames = list(models), list(dirs), list(tensors), list(frames)
    before = ([snapshot_model(m) for m in models], [snapshot_dir(d) for d in dirs],
              [snapshot_tensor(t) for t in tensors], [f.copy(deep=True) for f in frames])
    rng_before = snapshot_rng() if rng else None
    yield
    for m, b in zip(models, before[0]):
        assert_model_unchanged(m, b)
    for d, b in zip(dirs, before[1]):
        assert_dir_unchanged(d, b)
    for t, b in zip(tensors, before[2]):
        assert_tensor_unchanged(t, b)
    for f, b in zip(frames, before[3]):
        pd.testing.assert_frame_equal(f, b)
    if rng:
        assert_rng_unchanged(rng_before)


def says(*fragments: str) -> str:
    """A `match=` regex: the literal fragments, in this order, anywhere in the message."""
    return "(?s)" + ".*".join(re.escape(f) for f in fragments)


@pytest.fixture(scope="module")
def offline_one_thread():
    """For the MiniLM tests: transformers never reaches for the network, and torch runs one thread (as the notebooks
    do); both restored after the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)
