"""Robustness (issue 7, item 3): bad inputs across `helpers` fail loudly and leave everything as it was.

Every bad input below must raise ValueError whose message names the problem (usually the bad value) and the
fix; the `match=` regex asserts both, in the order the message states them. Around every failing call the
model (structure, module identities, train/eval mode, every state_dict tensor byte for byte, requires_grad
flags, .grad), the input tensors and every file in the test's directory (bytes and mtime) are snapshotted
and compared. Loading adapters and data never unpickles: pickles planted under the names the loaders read
would create a marker file if they were ever unpickled, and the marker must never appear.
"""
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_dir_unchanged, assert_model_unchanged, says, snapshot_dir, snapshot_model, unchanged
from torch import nn

from helpers import analysis, data, intrinsic, lora, memory, quant, subspace, training
from helpers.lora import LoRALinear, add_lora, load_adapter, save_adapter
from helpers.models import mlp, n_params

SIZES = (6, 8, 5, 3)  # fc1 6->8, act1, fc2 8->5, act2, head 5->3: D = 56 + 45 + 18 = 119
MARKER = "UNPICKLED"  # created by the planted pickles if anything ever unpickles them


class Booby:
    """Unpickling this creates `path` (pickle calls open(path, "w")): proof that a loader executed a pickle."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# ------------------------------------------------------------------------------------------ the checks check

def _flip_one_bit(m):
    with torch.no_grad():
        m.fc2.weight.view(torch.int32)[0, 0] ^= 1


def _swap_for_identical_copy(m):
    twin = nn.Linear(8, 5)
    twin.load_state_dict(m.fc2.state_dict())
    m.fc2 = twin


@pytest.mark.parametrize("mutate", [
    _flip_one_bit,
    lambda m: m.head.bias.requires_grad_(False),
    lambda m: m.act1.eval(),
    _swap_for_identical_copy,
    lambda m: setattr(m.fc1.weight, "grad", torch.zeros_like(m.fc1.weight)),
    lambda m: m.fc1.register_buffer("extra", torch.zeros(1)),
    lambda m: setattr(m.fc1.weight, "data", m.fc1.weight.data.double()),
], ids=["one-bit", "requires-grad", "mode", "module-swapped", "grad-appeared", "buffer-added", "dtype"])
def test_model_snapshot_catches_every_kind_of_change(mutate):
    model = mlp(SIZES)
    before = snapshot_model(model)
    assert_model_unchanged(model, before)
    mutate(model)
    with pytest.raises(AssertionError):
        assert_model_unchanged(model, before)


def test_model_snapshot_is_nan_safe():
    model = mlp(SIZES)
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    assert_model_unchanged(model, snapshot_model(model))


def _same_bytes_new_mtime(root):
    f = root / "a" / "w.bin"
    f.write_bytes(f.read_bytes())
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _new_bytes_same_mtime(root):
    f = root / "a" / "w.bin"
    st = f.stat()
    f.write_bytes(b"\x00\x01\x02\x04")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("mutate", [
    _same_bytes_new_mtime,
    _new_bytes_same_mtime,
    lambda root: (root / "a" / "new.json").write_text("{}"),
    lambda root: (root / "b").mkdir(),
    lambda root: (root / "a" / "w.bin").unlink(),
], ids=["rewritten-same-bytes", "changed-same-mtime", "file-added", "folder-added", "file-removed"])
def test_dir_snapshot_catches_every_kind_of_change(mutate, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"\x00\x01\x02\x03")
    before = snapshot_dir(tmp_path)
    assert_dir_unchanged(tmp_path, before)
    mutate(tmp_path)
    with pytest.raises(AssertionError):
        assert_dir_unchanged(tmp_path, before)


# ------------------------------------------------------------------------------------------ helpers.data

@pytest.fixture
def mnist_dir(tmp_path):
    """A private copy of data/mnist_5k.npz, so tests may damage it."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy2(data.DATA_DIR / data.MNIST_5K_FILE, folder / data.MNIST_5K_FILE)
    return folder


@pytest.mark.parametrize("subset", ["5K", "mnist", 5000, None])
def test_load_mnist_unknown_subset(subset, mnist_dir):
    with unchanged(dirs=[mnist_dir]), pytest.raises(ValueError, match=says(f"unknown MNIST subset {subset!r}",
                                                                            "use subset='5k'", "subset='full'")):
        data.load_mnist(subset, data_dir=mnist_dir)


def test_load_mnist_unknown_subset_leaves_the_bundled_file_alone():
    with unchanged(dirs=[data.DATA_DIR]), pytest.raises(ValueError, match=says("unknown MNIST subset '10k'",
                                                                              "use subset='5k'", "subset='full'")):
        data.load_mnist("10k")


def _flip_byte(path: Path, at=None) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 if at is None else at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip_byte, lambda path: _flip_byte(path, at=100), _truncate],
                         ids=["one-byte-flipped", "header-byte-flipped", "truncated"])
def test_load_mnist_corrupted_copy(damage, mnist_dir):
    damage(mnist_dir / data.MNIST_5K_FILE)
    with unchanged(dirs=[mnist_dir]), pytest.raises(
            ValueError, match=says("mnist_5k.npz is corrupted or truncated", "SHA-256",
                                   "git checkout -- data/mnist_5k.npz")):
        data.load_mnist("5k", data_dir=mnist_dir)


def test_load_mnist_missing_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says("mnist_5k.npz is missing",
                                                                          "git checkout -- data/mnist_5k.npz")):
        data.load_mnist("5k", data_dir=tmp_path / "empty")


def _object_npz(path: Path, marker: Path) -> None:
    """An npz with the expected keys whose X_train is an object array holding a booby-trapped pickle."""
    z = np.zeros((2, 784), np.uint8), np.zeros(2, np.int64)
    np.savez(path, X_train=np.array([Booby(marker)], dtype=object), y_train=z[1], X_test=z[0], y_test=z[1])


def test_load_mnist_object_array_npz_is_rejected_not_unpickled(mnist_dir):
    _object_npz(mnist_dir / data.MNIST_5K_FILE, mnist_dir / MARKER)
    with unchanged(dirs=[mnist_dir]), pytest.raises(ValueError, match=says("corrupted", "git checkout")):
        data.load_mnist("5k", data_dir=mnist_dir)
    assert not (mnist_dir / MARKER).exists()


def test_load_mnist_never_unpickles_even_with_a_matching_checksum(mnist_dir, monkeypatch):
    """Second line of defence: were the checksum to match, np.load(allow_pickle=False) still refuses."""
    path = mnist_dir / data.MNIST_5K_FILE
    _object_npz(path, mnist_dir / MARKER)
    monkeypatch.setattr(data, "MNIST_5K_SHA256", data.sha256(path))
    with unchanged(dirs=[mnist_dir]), pytest.raises(ValueError, match="allow_pickle=False"):
        data.load_mnist("5k", data_dir=mnist_dir)
    assert not (mnist_dir / MARKER).exists()


def test_load_mnist_raw_pickle_named_like_the_data_is_never_unpickled(mnist_dir, monkeypatch):
    path = mnist_dir / data.MNIST_5K_FILE
    path.write_bytes(pickle.dumps({"X_train": Booby(mnist_dir / MARKER)}))
    with unchanged(dirs=[mnist_dir]), pytest.raises(ValueError, match=says("corrupted", "git checkout")):
        data.load_mnist("5k", data_dir=mnist_dir)
    monkeypatch.setattr(data, "MNIST_5K_SHA256", data.sha256(path))
    with unchanged(dirs=[mnist_dir]), pytest.raises(ValueError, match="pickled"):
        data.load_mnist("5k", data_dir=mnist_dir)
    assert not (mnist_dir / MARKER).exists()


def test_load_mnist_full_without_files_and_download_off(tmp_path):
    with unchanged(dirs=[tmp_path]), pytest.raises(
            ValueError, match=says("full MNIST needs train-images-idx3-ubyte.gz", f"in {tmp_path / 'mnist'}",
                                   "download was off", "load_mnist('full', download=True)")):
        data.load_mnist("full", data_dir=tmp_path, download=False)
    assert not (tmp_path / "mnist").exists()


def test_load_mnist_full_with_wrong_files_deletes_nothing(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in data.MNIST_FULL_SHA256:
        (folder / name).write_bytes(b"not mnist")
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says("does not match its SHA-256",
                                                                          "delete it and load again")):
        data.load_mnist("full", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("raw, fragments", [
    (b"\x00\x00\x0d\x01" + b"\x00" * 8, ("not an unsigned-byte idx file", "bad magic 00000d01", "re-download")),
    (b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x01" * 7,
     ("is truncated", "shape (10,)", "but 7 bytes follow", "download it again")),
    (b"\x00\x00\x08\x02" + (3).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\x01" * 13,
     ("is truncated", "shape (3, 5) (15 bytes)", "but 13 bytes follow", "download it again")),
], ids=["bad-magic", "truncated", "truncated-2d"])
def test_read_idx_bad_files(raw, fragments, tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(raw)
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says(*fragments)):
        data.read_idx(path)


@pytest.mark.parametrize("classes, shown", [([0, 10], "[0, 10]"), ([3, 3], "[3, 3]"), ([], "[]"),
                                            ([1.5], "[1.5]")], ids=["ten", "repeated", "empty", "float"])
def test_select_classes_bad_classes(classes, shown):
    X, y = torch.rand(12, 784), torch.arange(12) % 10
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says("classes must be distinct digits 0..9",
                                                                         f"got {shown}")):
        data.select_classes(X, y, classes)


def test_select_classes_float_labels():
    X, y = torch.rand(12, 784), (torch.arange(12) % 10).float()
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says("float32", "long")):
        data.select_classes(X, y, [0, 1])


def test_make_moons_too_few_points():
    with pytest.raises(ValueError, match=says("make_moons needs n >= 2 points", "got 1")):
        data.make_moons(1)


# ------------------------------------------------------------------------------------------ helpers.memory

@pytest.mark.parametrize("kwargs, fragments", [
    (dict(n_params=-1), ("parameter counts must be >= 0", "n_params=-1")),
    (dict(n_params=100, n_trainable=-5), ("parameter counts must be >= 0", "n_trainable=-5")),
    (dict(n_params=100, n_trainable=200), ("n_trainable (200) exceeds n_params (100)",
                                           "pass the model's total as n_params")),
    (dict(n_params=100, precision="fp16"), ("unknown precision 'fp16'", "choose one of ['fp32', 'mixed']")),
    (dict(n_params=100, optimizer="rmsprop"), ("unknown optimizer 'rmsprop'", "choose one of", "'adam'")),
    (dict(n_params=100, frozen_dtype="int4"), ("unknown frozen_dtype 'int4'", "choose one of", "'nf4'")),
    pytest.param(dict(n_params=float("nan")), ("n_params", "nan", ">= 0")),
    pytest.param(dict(n_params="7B"), ("n_params", "'7B'", "number")),
], ids=["negative-params", "negative-trainable", "trainable-exceeds-total", "unknown-precision",
        "unknown-optimizer", "unknown-frozen-dtype", "nan-params", "string-params"])
def test_training_memory_bad_arguments(kwargs, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        memory.training_memory(**kwargs)


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(model="LLaMA-3 8B"), ("unknown model 'LLaMA-3 8B'", "choose one of", "'LLaMA-2 7B'")),
    (dict(method="prefix"), ("unknown method 'prefix'", "choose one of ['full', 'lora', 'qlora']")),
    (dict(method="lora", r=0), ("r and matrices_per_layer must all be >= 1",)),
], ids=["unknown-model", "unknown-method", "rank-zero"])
def test_finetune_memory_bad_arguments(kwargs, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        memory.finetune_memory(**kwargs)


def test_measure_training_memory_nothing_trainable():
    model = mlp(SIZES).requires_grad_(False)
    X, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(
            ValueError, match=says("no parameter requires grad", "unfreeze what should train")):
        memory.measure_training_memory(model, X, y)


def test_measure_training_memory_unknown_optimizer():
    model = mlp(SIZES)
    X, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(
            ValueError, match=says("unknown optimizer 'lion'", "choose one of", "'sgd_momentum'")):
        memory.measure_training_memory(model, X, y, optimizer="lion")


# ------------------------------------------------------------------------------------------ helpers.training

def _task(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, SIZES[0], generator=g), torch.randint(0, SIZES[-1], (n,), generator=g)


@pytest.mark.parametrize("freeze, kwargs, fragments", [
    (True, {}, ("nothing to train", "no parameter requires grad", "did you freeze everything?")),
    (False, dict(params=[]), ("nothing to train",)),
    (False, dict(optimizer="rmsprop"), ("unknown optimizer 'rmsprop'", "choose one of ['adam', 'adamw', 'sgd']")),
    (False, dict(epochs=0), ("need epochs >= 1", "got 0")),
    (False, dict(lr=0.0), ("lr > 0", "0.0")),
    (False, dict(batch_size=0), ("batch_size >= 1", "got 10, 0")),
], ids=["all-frozen", "empty-params", "unknown-optimizer", "zero-epochs", "zero-lr", "zero-batch"])
def test_train_bad_arguments(freeze, kwargs, fragments):
    model = mlp(SIZES).requires_grad_(not freeze).eval()
    X, y = _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        training.train(model, X, y, **{"epochs": 10, "progress": False, **kwargs})


def test_train_refused_in_train_mode_keeps_the_mode_and_the_grads():
    model, (X, y) = mlp(SIZES).train(), _task()
    model(X).sum().backward()  # grads present before the call must survive it
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says("unknown optimizer 'lion'",
                                                                                         "choose one of")):
        training.train(model, X, y, optimizer="lion", progress=False)


@pytest.mark.parametrize("n_X, n_y", [(20, 23), (20, 17)], ids=["more-labels", "fewer-labels"])
def test_train_rows_and_labels_disagree(n_X, n_y):
    model = mlp(SIZES).eval()
    X, y = _task(n_X)[0], _task(n_y)[1]
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(str(n_X), str(n_y))):
        training.train(model, X, y, epochs=1, batch_size=8, progress=False)


def test_train_on_no_data():
    model = mlp(SIZES).eval()
    X, y = _task()
    with unchanged(models=[model]), pytest.raises(ValueError, match="no rows|empty"):
        training.train(model, X[:0], y[:0], epochs=1, progress=False)


# ------------------------------------------------------------------------------------------ helpers.lora

@pytest.mark.parametrize("targets, kwargs, fragments", [
    (["fc2"], dict(r=0), ("r must be a positive integer", "got 0", "use e.g. r=4")),
    (["fc2"], dict(r=-2), ("r must be a positive integer", "got -2", "use e.g. r=4")),
    (["fc2"], dict(r=2.0), ("r must be a positive integer", "got 2.0", "use e.g. r=4")),
    (["fc2"], dict(r=6), ("r=6 is larger than min(d_in, d_out) = min(8, 5) of layer 'fc2'", "lower r",
                          "leave 'fc2' out of target_modules")),
    (["fc1", "fc2"], dict(r=6), ("r=6 is larger than min(d_in, d_out) = min(8, 5) of layer 'fc2'", "lower r")),
    (["fc2"], dict(alpha=0), ("alpha must be a positive number", "got 0", "use e.g. alpha=8")),
    (["fc2"], dict(alpha=-1.5), ("alpha must be a positive number", "got -1.5", "fixed for every rank")),
    (["fc2"], dict(alpha=float("nan")), ("alpha must be a positive number", "got nan", "alpha=8")),
    (["fc2"], dict(dropout=1.0), ("dropout must be in [0, 1)", "got 1.0", "use 0.0 to switch it off")),
    (["fc2"], dict(dropout=-0.1), ("dropout must be in [0, 1)", "got -0.1", "use 0.0")),
    (["fc2"], dict(rslora="yes"), ("rslora must be True or False", "got 'yes'")),
    (["fc9"], {}, ("target module 'fc9' matches no module", "nn.Linear layers in this model: fc1, fc2, head")),
    (["fc1", "fc9"], {}, ("target module 'fc9' matches no module", "layers in this model: fc1, fc2, head")),
    ("fc[7-9]", {}, ("regex 'fc[7-9]' matches no module", "layers in this model: fc1, fc2, head")),
    (["act1"], {}, ("act1 (ReLU) are not nn.Linear", "remove them from target_modules", "fc1, fc2, head")),
    (["fc1", "act2"], {}, ("act2 (ReLU) are not nn.Linear", "remove them from target_modules")),
    ([], {}, ("target_modules must be a non-empty list", "e.g. ['fc2', 'fc3']")),
    ("", {}, ("target_modules is empty", "pass layer names")),
    (None, {}, ("target_modules must be a list of layer names", "got None", "e.g. ['fc2', 'fc3']")),
    pytest.param("fc[", {}, ("fc[", "regex", "fc1, fc2, head")),
    pytest.param(5, {}, ("target_modules must be a list of layer names", "got 5")),
], ids=["r-zero", "r-negative", "r-float", "r-above-min-dim", "r-above-min-dim-of-later-target", "alpha-zero",
        "alpha-negative", "alpha-nan", "dropout-one", "dropout-negative", "rslora-not-bool", "no-match",
        "one-of-two-missing", "regex-no-match", "not-linear", "linear-and-not-linear", "empty-list", "empty-string",
        "none", "invalid-regex", "int"])
def test_add_lora_bad_arguments(targets, kwargs, fragments):
    model = mlp(SIZES)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says(*fragments)):
        add_lora(model, targets, **{"r": 2, "alpha": 4, **kwargs})


@pytest.mark.parametrize("targets, fragments", [
    (["fc1", "fc2"], ("fc1 already carry a LoRA adapter", "adapting a layer twice is not supported",
                      "call merge_and_unload(model) first")),
    (["lora_A"], ("target module 'lora_A' matches no module", "nn.Linear layers in this model: fc2, head")),
], ids=["adapted-layer", "inside-of-a-lora-layer"])
def test_add_lora_twice_on_the_same_layer(targets, fragments):
    model = add_lora(mlp(SIZES), ["fc1"], r=2, alpha=4)
    with torch.no_grad():
        model.fc1.lora_B.weight.fill_(0.5)  # as after training: the adapter's state must survive too
    with unchanged(models=[model]), pytest.raises(ValueError, match=says(*fragments)):
        add_lora(model, targets, r=2, alpha=4)


@pytest.mark.parametrize("base, kwargs, fragments", [
    (nn.Linear(10, 12), dict(r=0), ("r must be a positive integer", "got 0", "use e.g. r=4")),
    (nn.Linear(10, 12), dict(r=-2), ("r must be a positive integer", "got -2")),
    (nn.Linear(10, 12), dict(r=2.0), ("r must be a positive integer", "got 2.0")),
    (nn.Linear(10, 12), dict(r=11), ("r=11 is larger than min(d_in, d_out) = min(10, 12)", "lower r")),
    (nn.Linear(10, 12), dict(alpha=0), ("alpha must be a positive number", "got 0", "use e.g. alpha=8")),
    (nn.Linear(10, 12), dict(alpha=-1), ("alpha must be a positive number", "got -1")),
    (nn.Linear(10, 12), dict(dropout=1.0), ("dropout must be in [0, 1)", "got 1.0", "use 0.0 to switch it off")),
    (nn.Linear(10, 12), dict(dropout=-0.1), ("dropout must be in [0, 1)", "got -0.1")),
    (nn.ReLU(), {}, ("base must have in_features", "got ReLU", "wrap an nn.Linear")),
], ids=["r-zero", "r-negative", "r-float", "r-above-min-dim", "alpha-zero", "alpha-negative", "dropout-one",
        "dropout-negative", "not-linear"])
def test_lora_linear_bad_arguments(base, kwargs, fragments):
    with unchanged(models=[base]), pytest.raises(ValueError, match=says(*fragments)):
        LoRALinear(base, **{"r": 2, "alpha": 4, **kwargs})


def test_merge_and_unload_without_lora():
    model = mlp(SIZES)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("no LoRA layers to merge",
                                                                         "call add_lora")):
        lora.merge_and_unload(model)


def test_save_adapter_without_lora_writes_nothing(tmp_path):
    model = mlp(SIZES)
    with unchanged(models=[model], dirs=[tmp_path]), pytest.raises(
            ValueError, match=says("no LoRA layers to save", "call add_lora")):
        save_adapter(model, tmp_path / "adapter")


def test_save_adapter_onto_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    model = add_lora(mlp(SIZES), ["fc2"], r=2, alpha=4)
    with unchanged(models=[model], dirs=[tmp_path]), pytest.raises(
            ValueError, match=says("notes.txt is a file, not a directory", "pass a folder path")):
        save_adapter(model, tmp_path / "notes.txt")


@pytest.mark.parametrize("old_adapter", [True, False], ids=["over-an-old-adapter", "new-folder"])
def test_save_adapter_with_mixed_settings_keeps_the_old_adapter(old_adapter, tmp_path):
    if old_adapter:
        save_adapter(trained_lora(), tmp_path / "adapter")
    mixed = add_lora(add_lora(mlp(SIZES), ["fc1"], r=2, alpha=4), ["fc2"], r=1, alpha=4)
    with unchanged(models=[mixed], dirs=[tmp_path]), pytest.raises(
            ValueError, match=says("disagree on (r, alpha, dropout, rslora)", "single add_lora call")):
        save_adapter(mixed, tmp_path / "adapter")


# ------------------------------------------------------------------------------------------ load_adapter

def trained_lora(sizes=SIZES):
    """fc1 and fc2 adapted with r=2, alpha=4, B non-zero (as after training)."""
    model = add_lora(mlp(sizes, seed=1), ["fc1", "fc2"], r=2, alpha=4)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in (model.fc1, model.fc2):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g))
    return model


def edit_config(drop=(), **changes):
    def damage(folder):
        path = folder / lora.CONFIG_NAME
        config = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
        path.write_text(json.dumps({**config, **changes}))
    return damage


def edit_weights(change):
    def damage(folder):
        from safetensors.torch import load_file, save_file
        path = folder / lora.WEIGHTS_NAME
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path))
    return damage


def write(name, make):
    """Replace (or create) one file of the adapter folder with bytes from make(folder)."""
    def damage(folder):
        (folder / name).write_bytes(make(folder))
    return damage


def remove(name):
    return lambda folder: os.remove(folder / name)


def _pickled_booby(folder):
    return pickle.dumps({"base_model.model.fc1.lora_A.weight": Booby(folder.parent / MARKER)})


def _torch_saved_booby(folder):
    path = folder.parent / "tmp.pt"
    torch.save({"base_model.model.fc1.lora_A.weight": Booby(folder.parent / MARKER)}, path)
    raw = path.read_bytes()
    path.unlink()
    return raw


def _pickle_bin_only(folder):
    os.remove(folder / lora.WEIGHTS_NAME)
    torch.save({"x": Booby(folder.parent / MARKER)}, folder / "adapter_model.bin")


A1 = "base_model.model.fc1.lora_A.weight"
B2 = "base_model.model.fc2.lora_B.weight"

def case(id, damage, sizes, fragments, marks=()):
    """One bad adapter folder: damage(folder) applied to a freshly saved adapter, loaded into mlp(sizes)."""
    return pytest.param(damage, sizes, fragments, id=id, marks=marks)


LOAD_CASES = [
    case("folder-missing", shutil.rmtree, SIZES,
         ("adapter folder", "does not exist", "pass the folder save_adapter wrote")),
    case("config-missing", remove(lora.CONFIG_NAME), SIZES,
         ("adapter_config.json is missing", "save the adapter with save_adapter")),
    case("config-not-json", write(lora.CONFIG_NAME, lambda f: b"{r: 2"), SIZES,
         ("adapter_config.json", "is not valid JSON", "save the adapter again")),
    case("config-not-utf8", write(lora.CONFIG_NAME, lambda f: b"\xff\xfe\x00"), SIZES,
         ("is not valid JSON", "save the adapter again")),
    case("config-a-list", write(lora.CONFIG_NAME, lambda f: b"[1, 2]"), SIZES,
         ("must hold a JSON object, got list", "save the adapter again")),
    case("peft-type-ia3", edit_config(peft_type="IA3"), SIZES,
         ("peft_type='IA3', expected 'LORA'", "use peft for other adapter types")),
    case("config-lacks-r", edit_config(drop=("r",)), SIZES, ("lacks r", "save the adapter again")),
    case("config-alpha-zero", edit_config(lora_alpha=0), SIZES,
         ("adapter_config.json is invalid", "alpha must be a positive number", "use e.g. alpha=8")),
    case("config-bias-all", edit_config(bias="all"), SIZES,
         ("bias='all'", "load this adapter with peft instead")),
    case("config-dora", edit_config(use_dora=True), SIZES,
         ("does not implement (use_dora=True)", "peft.PeftModel.from_pretrained")),
    case("config-r-differs", edit_config(r=3), SIZES,
         (f"{A1} has shape (2, 6)", "with r=3 needs (3, 6)", "load it into the base model it was trained on")),
    case("config-targets-absent-layer", edit_config(target_modules=["fc1", "fc9"]), SIZES,
         ("target module 'fc9' matches no module", "layers in this model: fc1, fc2, head")),
    case("config-targets-not-a-list", edit_config(target_modules=5), SIZES,
         ("target_modules", "5", "save the adapter again")),
    case("weights-missing", remove(lora.WEIGHTS_NAME), SIZES,
         ("adapter_model.safetensors is missing", "save the adapter with save_adapter")),
    case("weights-truncated", write(lora.WEIGHTS_NAME, lambda f: (f / lora.WEIGHTS_NAME).read_bytes()[:40]), SIZES,
         ("adapter_model.safetensors in 'adapter' is corrupt or truncated", "save the adapter again")),
    case("weights-garbled-header",
         write(lora.WEIGHTS_NAME, lambda f: b"\x00" * 8 + (f / lora.WEIGHTS_NAME).read_bytes()[8:]), SIZES,
         ("corrupt or truncated", "save the adapter again")),
    case("pickle-named-like-weights", write(lora.WEIGHTS_NAME, _pickled_booby), SIZES,
         ("corrupt or truncated", "save the adapter again")),
    case("torch-save-named-like-weights", write(lora.WEIGHTS_NAME, _torch_saved_booby), SIZES,
         ("corrupt or truncated", "save the adapter again")),
    case("only-a-pickled-bin", _pickle_bin_only, SIZES,
         ("adapter_model.bin is there: it is never unpickled here", "re-save it as safetensors")),
    case("tensor-key-missing", edit_weights(lambda t: t.pop(B2)), SIZES,
         (f"missing key {B2}", "the file is incomplete", "save the adapter again")),
    case("unexpected-tensor", edit_weights(lambda t: t.update(bias=torch.zeros(3))), SIZES,
         ("unexpected tensor 'bias'", "this is not a plain LoRA adapter")),
    case("unexpected-base-weight",
         edit_weights(lambda t: t.update({"base_model.model.head.weight": torch.zeros(3, 5)})), SIZES,
         ("unexpected tensor 'base_model.model.head.weight'", "this is not a plain LoRA adapter")),
    case("tensor-wrong-shape", edit_weights(lambda t: t.update({A1: torch.zeros(2, 5)})), SIZES,
         (f"{A1} has shape (2, 5)", "layer 'fc1' (8x6) with r=2 needs (2, 6)",
          "load it into the base model it was trained on")),
    case("config-targets-other-layer", edit_config(target_modules=["fc1", "head"]), SIZES,
         ("adapter and model disagree", "missing weights for ['head']", "weights for no targeted layer: ['fc2']",
          "load it into the base model it was trained on")),
    case("weights-for-another-layer", edit_weights(lambda t: t.update(
        {k.replace("fc2", "head"): t.pop(k) for k in [k for k in t if ".fc2." in k]})), SIZES,
         ("adapter and model disagree", "missing weights for ['fc2']", "weights for no targeted layer: ['head']",
          "load it into the base model it was trained on")),
    case("integer-tensor", edit_weights(lambda t: t.update({A1: torch.zeros(2, 6, dtype=torch.int32)})), SIZES,
         (f"{A1} has shape (2, 6) (torch.int32)", "needs (2, 6) floats")),
    case("wrong-shape-model", lambda f: None, (6, 10, 5, 3),
         ("fc1.lora_B.weight has shape (8, 2)", "layer 'fc1' (10x6) with r=2 needs (10, 2)",
          "load it into the base model it was trained on")),
]


@pytest.mark.parametrize("damage, sizes, fragments", LOAD_CASES)
def test_load_adapter_rejects(damage, sizes, fragments, tmp_path):
    folder = save_adapter(trained_lora(), tmp_path / "adapter")
    damage(folder)
    model = mlp(sizes)
    with unchanged(models=[model], dirs=[tmp_path]), pytest.raises(ValueError, match=says(*fragments)):
        load_adapter(model, folder)
    assert not (tmp_path / MARKER).exists(), "a planted pickle was unpickled"


@pytest.mark.parametrize("adapted", ["head", "fc1"], ids=["a-layer-the-adapter-skips", "a-layer-the-adapter-targets"])
def test_load_adapter_into_a_model_that_already_has_lora(adapted, tmp_path):
    folder = save_adapter(trained_lora(), tmp_path / "adapter")
    model = add_lora(mlp(SIZES), [adapted], r=1, alpha=1)
    with unchanged(models=[model], dirs=[tmp_path]), pytest.raises(
            ValueError, match=says("already has LoRA layers", "load the adapter into a fresh base model")):
        load_adapter(model, folder)


def test_load_adapter_with_qlora_inject_checks_before_quantising(tmp_path):
    folder = save_adapter(trained_lora(), tmp_path / "adapter")
    edit_config(r=3)(folder)
    model = mlp(SIZES)
    with unchanged(models=[model], dirs=[tmp_path]), pytest.raises(ValueError, match=says("with r=3 needs (3, 6)")):
        load_adapter(model, folder, inject=quant.add_qlora)


# ------------------------------------------------------------------------------------------ helpers.quant

@pytest.mark.parametrize("w, kwargs, fragments", [
    (torch.randn(128), dict(block_size=48), ("block_size must be a power of two", "got 48",
                                             "QLoRA uses block_size=64")),
    (torch.randn(128), dict(block_size=0), ("block_size must be a power of two >= 2", "got 0", "block_size=64")),
    (torch.randn(128), dict(block_size=-64), ("block_size must be a power of two >= 2", "got -64", "block_size=64")),
    (torch.randn(128), dict(block_size=1), ("block_size must be a power of two >= 2", "got 1", "block_size=64")),
    (torch.randn(128), dict(block_size=64.0), ("block_size must be a power of two", "got 64.0", "block_size=64")),
    (torch.randn(128), dict(block_size=True), ("block_size must be a power of two", "got True", "block_size=64")),
    (torch.randn(128), dict(dq_block_size=100), ("dq_block_size must be a power of two", "got 100",
                                                 "QLoRA uses dq_block_size=256")),
    (torch.randn(128), dict(dq_block_size=0), ("dq_block_size must be a power of two >= 2", "got 0",
                                               "QLoRA uses dq_block_size=256")),
    (torch.randn(128), dict(double_quant=False, dq_block_size=256),
     ("dq_block_size=256 only applies to double quantisation", "drop dq_block_size or pass double_quant=True")),
    (torch.randn(128), dict(double_quant=1), ("double_quant must be True or False", "got 1")),
    (torch.randn(128), dict(double_quant="yes"), ("double_quant must be True or False", "got 'yes'")),
    (torch.tensor([0.5, float("nan"), -1.0]), {}, ("contains NaN or inf", "torch.nan_to_num")),
    (torch.tensor([0.5, float("inf")]), {}, ("contains NaN or inf", "replace them")),
    (torch.arange(8, dtype=torch.int32), {}, ("floating-point weights, got dtype torch.int32",
                                              "convert first, e.g. w.float()")),
    (torch.ones(8, dtype=torch.bool), {}, ("got dtype torch.bool", "w.float()")),
    (torch.ones(0, 4), {}, ("cannot quantise an empty tensor (shape (0, 4))", "at least one element")),
], ids=["block-48", "block-0", "block-negative", "block-1", "block-float", "block-bool", "dq-block-100",
        "dq-block-0", "dq-block-without-dq", "dq-not-bool", "dq-str", "nan-weights", "inf-weights", "int-weights",
        "bool-weights", "empty"])
def test_quantize_nf4_bad_inputs(w, kwargs, fragments):
    with unchanged(tensors=[w]), pytest.raises(ValueError, match=says(*fragments)):
        quant.quantize_nf4(w, **kwargs)


@pytest.mark.parametrize("w, kind", [(np.ones(8, np.float32), "ndarray"), ([1.0, 2.0], "list")],
                         ids=["ndarray", "list"])
def test_quantize_nf4_not_a_tensor(w, kind):
    with pytest.raises(ValueError, match=says(f"expected a torch.Tensor of weights, got {kind}",
                                              "pass e.g. layer.weight")):
        quant.quantize_nf4(w)


@pytest.mark.parametrize("call, fragments", [
    (lambda w: quant.quantize_int(w, 9), ("bits must be an integer in 2..8", "got 9", "bits=8 for int8")),
    (lambda w: quant.quantize_int(w, 1), ("bits must be an integer in 2..8", "got 1", "bits=8 for int8")),
    (lambda w: quant.quantize_int(w, 8, block_size=0), ("block_size must be a positive integer", "got 0",
                                                        "e.g. 64", "or d_in per row")),
    (lambda w: quant.dequantize_nf4(w), ("expected an NF4Tensor (from quantize_nf4)", "got Tensor")),
    (lambda w: quant.dequantize_nf4(quant.quantize_nf4(w), kernel="cuda"),
     ("kernel must be one of ('auto', 'fused', 'torch')", "got 'cuda'", "'auto' picks the fastest")),
    (lambda w: quant.pack_nibbles(torch.tensor([3, 16])), ("codes must lie in 0..15", "maximum of 16",
                                                           "pass level indices")),
], ids=["int-bits-9", "int-bits-1", "int-block-0", "dequantize-a-tensor", "dequantize-bad-kernel", "pack-code-16"])
def test_quant_functions_bad_inputs(call, fragments):
    w = torch.randn(4, 16)
    with unchanged(tensors=[w]), pytest.raises(ValueError, match=says(*fragments)):
        call(w)


def test_linear_nf4_over_a_non_linear():
    relu = nn.ReLU()
    with unchanged(models=[relu]), pytest.raises(ValueError, match=says("quantises an nn.Linear, got ReLU",
                                                                        "pass the layer to replace")):
        quant.LinearNF4(relu)


@pytest.mark.parametrize("targets, kwargs, fragments", [
    (["fc9"], {}, ("target module 'fc9' matches no module",
                   "nn.Linear/LinearNF4 layers in this model: fc1, fc2, head")),
    (["act1"], {}, ("act1 (ReLU) are not nn.Linear/LinearNF4", "remove them from target_modules")),
    (["fc2"], dict(r=0), ("r must be a positive integer", "got 0", "use e.g. r=4")),
    (["fc2"], dict(r=6), ("r=6 is larger than min(d_in, d_out)", "lower r")),
    (["fc1", "fc2"], dict(r=6), ("r=6 is larger than min(d_in, d_out) = min(8, 5) of layer 'fc2'", "lower r")),
    (["fc2"], dict(block_size=3), ("block_size must be a power of two", "got 3", "QLoRA uses block_size=64")),
    (["fc2"], dict(double_quant="no"), ("double_quant must be True or False", "got 'no'")),
    (["fc2"], dict(alpha=0), ("alpha must be a positive number", "use e.g. alpha=8")),
], ids=["no-match", "not-linear", "r-zero", "r-too-large", "r-too-large-in-a-later-target", "block-3",
        "dq-not-bool", "alpha-zero"])
def test_add_qlora_bad_arguments(targets, kwargs, fragments):
    model = mlp(SIZES)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says(*fragments)):
        quant.add_qlora(model, targets, **{"r": 2, "alpha": 4, **kwargs})


@pytest.mark.parametrize("call", [lambda m: quant.add_qlora(m, ["fc1", "fc2"], r=2, alpha=4), quant.quantize_model],
                         ids=["add_qlora", "quantize_model"])
def test_add_qlora_nan_weights_in_a_later_target_changes_nothing(call):
    model = mlp(SIZES)
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")  # fc1 is fine and comes first: it must not be quantised either
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("layer 'fc2' has NaN or inf weights",
                                                                         "fix or reload that layer's weights")):
        call(model)


def test_add_qlora_twice_on_the_same_layer():
    model = quant.add_qlora(mlp(SIZES), ["fc1"], r=2, alpha=4)
    with unchanged(models=[model]), pytest.raises(
            ValueError, match=says("fc1 already carry a LoRA adapter", "call merge_and_unload(model) first")):
        quant.add_qlora(model, ["fc1"], r=2, alpha=4)


def test_quantize_model_without_linear_layers():
    model = nn.Sequential(nn.ReLU(), nn.Tanh())
    with unchanged(models=[model]), pytest.raises(ValueError, match="Sequential has no nn.Linear layer to quantise"):
        quant.quantize_model(model)


@pytest.mark.parametrize("call", [lora.merge_lora, lambda m: m.fc2.merge()], ids=["merge_lora", "layer-merge"])
def test_qlora_layer_refuses_to_merge(call):
    model = quant.add_qlora(mlp(SIZES), ["fc2"], r=2, alpha=4)
    with torch.no_grad():
        model.fc2.lora_B.weight.fill_(0.25)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("cannot merge into a 4-bit NF4 base",
                                                                         "Keep the adapter separate",
                                                                         "load it into the full-precision base "
                                                                         "with load_adapter")):
        call(model)
    assert not model.fc2.merged


# ------------------------------------------------------------------------------------------ helpers.subspace

D_SMALL = n_params(mlp(SIZES))  # 119


@pytest.mark.parametrize("d, projection, fragments", [
    (0, "fastfood", ("d must be a positive integer, got 0", "use d >= 1")),
    (-3, "sparse", ("d must be a positive integer, got -3", "use d >= 1")),
    (2.5, "fastfood", ("d must be a positive integer, got 2.5 (float)", "pass a whole number such as d=2")),
    ("10", "fastfood", ("got '10' (str)", "pass a whole number such as d=10")),
    (True, "dense", ("got True (bool)", "pass a whole number")),
    (D_SMALL + 1, "dense", (f"d={D_SMALL + 1} exceeds D={D_SMALL}", f"choose d <= {D_SMALL}")),
    (D_SMALL + 1, "sparse", (f"d={D_SMALL + 1} exceeds D={D_SMALL}", f"choose d <= {D_SMALL}")),
    (10**6, "fastfood", (f"d=1000000 exceeds D={D_SMALL}", f"choose d <= {D_SMALL}")),
    (10, "gaussian", ("unknown projection 'gaussian'", "choose one of ['dense', 'fastfood', 'sparse']")),
], ids=["d-zero", "d-negative", "d-float", "d-string", "d-bool", "d-above-D-dense", "d-above-D-sparse",
        "d-above-D-fastfood", "unknown-projection"])
def test_subspace_model_bad_arguments(d, projection, fragments):
    model = mlp(SIZES)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says(*fragments)):
        subspace.SubspaceModel(model, d, projection=projection)


@pytest.mark.parametrize("cls", [subspace.DenseProjection, subspace.SparseProjection, subspace.FastfoodProjection],
                         ids=["dense", "sparse", "fastfood"])
@pytest.mark.parametrize("d, fragments", [
    (0, ("d must be a positive integer, got 0", "use d >= 1")),
    (-3, ("d must be a positive integer, got -3", "use d >= 1")),
    (2.5, ("d must be a positive integer, got 2.5 (float)", "pass a whole number such as d=2")),
    ("10", ("d must be a positive integer, got '10' (str)", "pass a whole number such as d=10")),
    (True, ("d must be a positive integer, got True (bool)", "pass a whole number")),
    (1001, ("d=1001 exceeds D=1000", "choose d <= 1000")),
], ids=["d-zero", "d-negative", "d-float", "d-string", "d-bool", "d-above-D"])
def test_projection_bad_d(cls, d, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        cls(1000, d)


def test_subspace_model_without_parameters():
    model = nn.Sequential(nn.ReLU())
    with unchanged(models=[model]), pytest.raises(
            ValueError, match=says("Sequential has no parameters", "wrap a model with at least one nn.Parameter")):
        subspace.SubspaceModel(model, 10)


def test_subspace_model_of_a_function():
    with pytest.raises(ValueError, match=says("model must be a torch.nn.Module, got function",
                                              "wrap your function in a Module")):
        subspace.SubspaceModel(lambda x: x, 10)


def test_dense_projection_over_the_default_memory_budget():
    """The paper's MLP (D = 199,210) with d = 2,000: 1.59 GB of P. Refused before anything is allocated."""
    model = mlp()
    with unchanged(models=[model]), pytest.raises(
            ValueError, match=says("199,210 × 2,000 float32 needs 1,593,680,000 bytes", "max_bytes=1,073,741,824",
                                   "use projection='sparse' or 'fastfood'")):
        subspace.SubspaceModel(model, 2000, projection="dense")


def test_dense_projection_over_a_given_budget():
    model = mlp(SIZES)
    with unchanged(models=[model]), pytest.raises(
            ValueError, match=says(f"needs {D_SMALL * 10 * 4:,} bytes", "max_bytes=100", "'sparse' or 'fastfood'",
                                   "raise max_bytes")):
        subspace.SubspaceModel(model, 10, projection="dense", max_bytes=100)


@pytest.mark.parametrize("call, fragments", [
    (lambda: subspace.FastfoodProjection(100, 10)(torch.zeros(9)),
     ("maps vectors of shape (10,), got (9,)", "1-D tensor of length d=10")),
    (lambda: subspace.FastfoodProjection(100, 10)(torch.zeros(3, 10)),
     ("maps vectors of shape (10,), got (3, 10)", "1-D tensor of length d=10")),
    (lambda: subspace.SparseProjection(100, 10)(torch.zeros(10), base=torch.zeros(99)),
     ("base must have shape (100,)", "got (99,)", "pass the flat θ0^(D)")),
    (lambda: subspace.fwht(torch.zeros(3, 6)), ("power of two, got 6", "zero-pad it to 8")),
    (lambda: subspace.fwht(torch.zeros(3, 0)), ("power of two, got 0", "zero-pad it to 1")),
    (lambda: subspace.fwht(torch.zeros(8, dtype=torch.int64)), ("floating-point tensor, got dtype torch.int64",
                                                                "pass x.float()")),
], ids=["theta-wrong-length", "theta-two-dimensional", "base-wrong-length", "fwht-not-power-of-two", "fwht-empty",
        "fwht-integer"])
def test_projection_bad_inputs(call, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        call()


def test_subspace_training_with_nothing_trainable():
    model = subspace.SubspaceModel(mlp(SIZES), 10).requires_grad_(False)
    X, y = _task()
    with unchanged(models=[model, model.model], tensors=[X, y]), pytest.raises(ValueError, match="nothing to train"):
        training.train(model, X, y, epochs=1, progress=False)


# ------------------------------------------------------------------------------------------ helpers.intrinsic

@pytest.fixture
def table():
    """A sweep()-shaped table: one projection, d in {10, 20, 40}, seeds 0..2."""
    rows = [{"projection": "fastfood", "d": d, "seed": s, "D": 199210, "train_acc": acc + 0.01,
             "test_acc": acc + 0.01 * s}
            for d, acc in ((10, 0.50), (20, 0.80), (40, 0.90)) for s in range(3)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("transform, baseline, kwargs, fragments", [
    (None, 0.934, dict(rule="paper"), ("unknown rule 'paper'", "choose 'relative'", "'absolute'", "or 'gap'")),
    (None, 93.4, {}, ("baseline must be accuracies in (0, 1], got 93.4", "pass e.g. 0.934")),
    (None, 0.0, {}, ("baseline must be accuracies in (0, 1], got 0.0", "pass e.g. 0.934")),
    (None, float("nan"), {}, ("got nan", "pass e.g. 0.934")),
    (None, [0.93, 1.2], {}, ("got [0.93, 1.2]", "pass e.g. 0.934")),
    (None, [], {}, ("got []", "pass e.g. 0.934")),
    (None, 0.934, dict(metric="val_acc"), ("table has no column 'val_acc'", "pass a table from sweep()")),
    (lambda t: pd.concat([t, t.assign(projection="sparse")]), 0.934, {},
     ("table mixes projections ['fastfood', 'sparse']", "table[table.projection == 'fastfood']",
      "one projection at a time")),
    (lambda t: t.iloc[1:], 0.934, {}, ("every d needs a result for every seed", "rerun sweep() with the same seeds")),
    pytest.param(None, 0.934, dict(level=90), ("level", "90", "0.9")),
    pytest.param(lambda t: t[t.projection == "fastfod"], 0.934, {}, ("no rows", "sweep")),
    pytest.param(None, 0.934, dict(n_boot=0), ("n_boot", "0", ">= 1")),
], ids=["unknown-rule", "baseline-percent", "baseline-zero", "baseline-nan", "baseline-above-one", "baseline-empty",
        "unknown-metric", "mixed-projections", "missing-seed", "level-percent", "empty-table", "n-boot-zero"])
def test_dint90_bad_arguments(transform, baseline, kwargs, fragments, table):
    t = table if transform is None else transform(table)
    with unchanged(frames=[table, t]), pytest.raises(ValueError, match=says(*fragments)):
        intrinsic.dint90(t, baseline, **kwargs)


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(ds=[10], projections="gaussian"), ("unknown projection 'gaussian'", "choose from ['dense', 'fastfood'")),
    (dict(ds=[10], projections=["fastfood", "Sparse"]), ("unknown projection 'Sparse'", "choose from")),
    (dict(ds=[]), ("ds is empty", "pass at least one value")),
    (dict(ds=[10], seeds=[]), ("seeds is empty", "pass at least one value")),
    (dict(ds=[0]), ("d must be a positive integer, got 0", "use d >= 1")),
    (dict(ds=[D_SMALL + 1]), (f"exceeds D={D_SMALL}", f"choose d <= {D_SMALL}")),
], ids=["unknown-projection", "one-bad-projection", "no-ds", "no-seeds", "d-zero", "d-above-D"])
def test_sweep_bad_arguments(kwargs, fragments):
    X, y = _task()
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        intrinsic.sweep(X, y, X, y, model_fn=lambda seed: mlp(SIZES, seed=seed), epochs=1, progress=False, **kwargs)


def test_baseline_without_seeds():
    X, y = _task()
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says("seeds is empty", "at least one value")):
        intrinsic.baseline(X, y, X, y, seeds=[], progress=False)


@pytest.mark.parametrize("call, fragments", [
    (lambda: intrinsic.solve_toy(10, optimizer="sgd"), ("unknown optimizer 'sgd'", "choose 'lbfgs' or 'adam'")),
    (lambda: intrinsic.solve_toy(10, steps=0), ("steps must be >= 1", "got 0")),
    (lambda: intrinsic.solve_toy(0), ("d must be a positive integer, got 0", "use d >= 1")),
    (lambda: intrinsic.ToyBlockSums(1001, 10), ("D=1001 must split into n_blocks=10 equal blocks",
                                                "pick D a multiple of n_blocks")),
], ids=["toy-optimizer", "toy-steps", "toy-d-zero", "toy-D-not-multiple"])
def test_toy_bad_arguments(call, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        call()


# ------------------------------------------------------------------------------------------ helpers.analysis

@pytest.mark.parametrize("call, fragments", [
    (lambda a, b: analysis.subspace_similarity(a, b[:, :5]),
     ("must act on the same input size k, got 6 and 5", "pass the lora_A of the same layer")),
    (lambda a, b: analysis.singular_values(a[0]), ("M must be a 2-D tensor", "got (6,)")),
    (lambda a, b: analysis.subspace_similarity(a[0], b), ("A1 must be a 2-D tensor", "got (6,)")),
    (lambda a, b: analysis.singular_values(a / 0 * 0), ("M contains NaN or inf", "check the training run")),
    (lambda a, b: analysis.subspace_similarity(a / 0 * 0, b), ("A1 contains NaN or inf", "check the training run")),
    (lambda a, b: analysis.effective_rank(a, energy=1.5), ("energy must be in (0, 1]", "got 1.5")),
    (lambda a, b: analysis.energy_captured(a * 0), ("M is all zeros", "was the update trained?")),
], ids=["similarity-k-mismatch", "one-dimensional", "similarity-one-dimensional", "nan", "similarity-nan",
        "energy-above-one", "all-zeros"])
def test_analysis_bad_matrices(call, fragments):
    a, b = torch.randn(3, 6), torch.randn(2, 6)
    with unchanged(tensors=[a, b]), pytest.raises(ValueError, match=says(*fragments)):
        call(a, b)


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(method="qlora"), ("unknown method 'qlora'", "choose 'full', 'lora' or 'subspace'")),
    (dict(method="lora"), ("method 'lora' needs r", "an int or {layer index: rank}")),
    (dict(method="subspace", d=0), ("needs 1 <= d <= D = 83", "got d=0")),
    (dict(method="subspace", d=4, projection="gaussian"), ("unknown projection 'gaussian'", "choose 'dense'")),
    (dict(batch=0), ("batch must be >= 1",)),
], ids=["unknown-method", "lora-without-r", "subspace-d-zero", "unknown-projection", "batch-zero"])
def test_training_step_flops_bad_arguments(kwargs, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        analysis.training_step_flops(**{"sizes": (6, 8, 3), "batch": 4, **kwargs})
