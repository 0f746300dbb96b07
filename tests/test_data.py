import gzip
import hashlib

import numpy as np
import pytest
import torch
from conftest import says, unchanged

from helpers import data
from helpers.data import load_mnist, make_moons, read_idx, select_classes, split_off_validation


def test_mnist_5k_shapes_ranges_and_stratified_split():
    X_train, y_train, X_test, y_test = load_mnist("5k")
    assert X_train.shape == (4000, 784) and X_test.shape == (1000, 784)
    assert X_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert X_train.min().item() == 0.0 and X_train.max().item() == 1.0
    assert torch.bincount(y_train).tolist() == [400] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10
    # train and test are disjoint images
    train_rows = {bytes(r) for r in (X_train * 255).round().to(torch.uint8).numpy()}
    assert not any(bytes(r) in train_rows for r in (X_test * 255).round().to(torch.uint8).numpy())


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_parser_reads_what_was_written(tmp_path, compress):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    got = read_idx(_write_idx(tmp_path / "x.idx", images, compress))
    assert got.shape == (2, 3, 4) and (got == images).all()


def test_full_mnist_loads_verified_idx_files(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
             "train-labels-idx1-ubyte.gz": np.arange(6) % 10,
             "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28)),
             "t10k-labels-idx1-ubyte.gz": np.array([3, 7])}
    sums = {name: hashlib.sha256(_write_idx(folder / name, arr, True).read_bytes()).hexdigest()
            for name, arr in files.items()}
    monkeypatch.setattr(data, "MNIST_FULL_SHA256", sums)
    X_train, y_train, X_test, y_test = load_mnist("full", data_dir=tmp_path, download=False)
    assert X_train.shape == (6, 784) and X_test.shape == (2, 784) and y_test.tolist() == [3, 7]
    assert torch.allclose(X_train[0] * 255,
                          torch.tensor(files["train-images-idx3-ubyte.gz"][0].ravel(), dtype=torch.float32))
    sums["t10k-labels-idx1-ubyte.gz"] = "0" * 64
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz does not match its SHA-256"):
        load_mnist("full", data_dir=tmp_path, download=False)


def test_select_classes_relabels_in_given_order():
    X = torch.arange(6.0).unsqueeze(1)
    y = torch.tensor([5, 0, 6, 5, 9, 1])
    Xs, ys = select_classes(X, y, [6, 5])
    assert Xs.squeeze(1).tolist() == [0.0, 2.0, 3.0] and ys.tolist() == [1, 0, 1]


def test_make_moons_is_seeded_balanced_and_rotates():
    X, y = make_moons(200, seed=3)
    X2, y2 = make_moons(200, seed=3)
    assert torch.equal(X, X2) and torch.equal(y, y2) and y.sum().item() == 100
    Xr, _ = make_moons(200, seed=3, rotation=90)
    assert torch.allclose(Xr, torch.stack([-X[:, 1], X[:, 0]], 1), atol=1e-6)


def test_minilm_sweep_loads_and_a_broken_file_names_the_fix(tmp_path):
    from helpers.data import load_sweep_results
    results = load_sweep_results("minilm")
    config, runs = results["config"], results["runs"]
    assert config["batch_size"] == 16 and len(runs) > 0
    assert {"stage", "method", "weights", "size", "seed", "lr"} <= set(runs.columns)
    with pytest.raises(ValueError, match=says("minilm_results.json is missing",
                                              "git checkout -- sweeps/minilm_results.json", "make sweep-05")):
        load_sweep_results("minilm", tmp_path / "minilm_results.json")
    (tmp_path / "minilm_results.json").write_text('{"config": {}, "runs": [')
    with pytest.raises(ValueError, match=says("minilm_results.json is corrupted", "make sweep-05")):
        load_sweep_results("minilm", tmp_path / "minilm_results.json")
    (tmp_path / "minilm_results.json").write_text('{"config": {}, "runs": [{"key": "a", "stage": "lr"}]}')
    with pytest.raises(ValueError, match=says("columns ['lr', 'method', 'seed', 'size', 'weights'] missing")):
        load_sweep_results("minilm", tmp_path / "minilm_results.json")


def test_split_off_validation_partitions_the_rows_and_leaves_the_global_rng_alone():
    X, y = make_moons(50, seed=0)
    state = torch.random.get_rng_state()
    (X_fit, y_fit), (X_val, y_val) = split_off_validation(X, y, 10, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(X_val) == len(y_val) == 10 and len(X_fit) == len(y_fit) == 40
    rows = sorted(map(tuple, torch.cat([X_fit, X_val]).tolist()))
    assert rows == sorted(map(tuple, X.tolist()))
    again = split_off_validation(X, y, 10, seed=1)
    assert torch.equal(again[1][0], X_val) and not torch.equal(split_off_validation(X, y, 10, seed=2)[1][0], X_val)


@pytest.mark.parametrize("n_val, fragments", [(0, ["n_val must be >= 1, got 0"]), (2.5, ["n_val must be an integer"]),
                                              (50, ["n_val=50 leaves nothing to fit on (50 rows)", "n_val < 50"])])
def test_split_off_validation_bad_sizes(n_val, fragments):
    X, y = make_moons(50, seed=0)
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        split_off_validation(X, y, n_val)


def test_split_off_validation_mismatched_rows():
    X, y = make_moons(50, seed=0)
    with pytest.raises(ValueError, match=says("X has shape (50, 2) and y (49,)", "one label per row")):
        split_off_validation(X, y[:-1], 5)


def test_load_sweep_results_reads_json_and_names_the_fix(tmp_path):
    import json

    from helpers.data import load_sweep_results
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"config": {"epochs": 10}, "chosen_lr": {"direct": 1e-3},
                                "runs": [{"key": "a", "test_acc": 0.9}, {"key": "b", "test_acc": 0.8}]}))
    out = load_sweep_results("intrinsic_mlp", good)
    assert out["config"] == {"epochs": 10} and out["chosen_lr"] == {"direct": 1e-3}
    assert list(out["runs"]["test_acc"]) == [0.9, 0.8]
    with pytest.raises(ValueError, match="make sweep-03"):
        load_sweep_results("intrinsic_mlp", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({"config": {}, "runs": []}), json.dumps([1, 2]),
                 json.dumps({"config": {}, "runs": [{"key": "a"}, {"key": "a"}]})):
        bad.write_text(text)
        with pytest.raises(ValueError, match="corrupted.*make sweep-04"):
            load_sweep_results("lora_vs_subspace", bad)
    with pytest.raises(ValueError, match="unknown sweep"):
        load_sweep_results("nope")
