"""Shared by the data build scripts: a seeded stratified split and a byte-for-byte reproducible npz writer."""
import io
import zipfile
from pathlib import Path

import numpy as np


def stratified_test_mask(y: np.ndarray, test_per_class, seed: int) -> np.ndarray:
    """Boolean mask of the test rows: test_per_class[c] rows of class c, drawn without replacement, class by class
    from one generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c, k in enumerate(test_per_class):
        test[rng.choice(np.flatnonzero(y == c), k, replace=False)] = True
    return test


def write_npz(out: Path, arrays: dict) -> None:
    """An .npz (no pickle) whose bytes depend only on the arrays: fixed zip timestamps and member order."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)
