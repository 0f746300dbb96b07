"""Argument checks shared by the helpers. Each raises ValueError naming the bad value and the fix, and runs
before a helper touches a model, a file or a random generator (so a refused call changes nothing)."""
from __future__ import annotations

import math
import numbers

import torch


def check_int(name: str, value, minimum: int | None = None, example: str = "") -> int:
    """`value` as an int; refused if it is a bool, a float (even 3.0: no silent truncation) or below `minimum`."""
    hint = f"; e.g. {example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}): pass a whole "
                         f"number{hint}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}{hint}")
    return int(value)


def check_seed(seed) -> int:
    """A seed for a local torch.Generator: an integer (a float seed would be silently truncated)."""
    return check_int("seed", seed, 0, "seed=0")


def check_number(name: str, value, *, positive: bool = False, minimum: float | None = None,
                 example: str = "") -> float:
    """A finite real number (NaN and inf are refused: they would train silently into NaN weights)."""
    hint = f"; e.g. {example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{hint}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}{hint}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}{hint}")
    return float(value)


def check_features(name: str, X) -> None:
    """X: a floating-point tensor with at least one row and only finite values."""
    if not isinstance(X, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(X).__name__}: convert with torch.as_tensor")
    if not X.is_floating_point():
        raise ValueError(f"{name} must hold floats, got dtype {X.dtype}: pass {name}.float()")
    if X.dim() == 0 or len(X) == 0:
        raise ValueError(f"{name} has no rows (empty dataset, shape {tuple(X.shape)}): pass at least one example")
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} contains NaN or inf: clean the data first (e.g. torch.nan_to_num) or drop those rows")


def check_labels(name: str, y, n_rows: int, n_classes: int | None = None) -> None:
    """y: int64 class indices of shape (n_rows,), each in 0..n_classes-1 (-1 would wrap to the last class)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}: use torch.tensor(..)")
    if y.dtype != torch.int64:
        raise ValueError(f"labels {name} must be int64 class indices, got dtype {y.dtype}: pass {name}.long()")
    if y.dim() != 1:
        raise ValueError(f"labels {name} must have shape (N,), got {tuple(y.shape)}: pass {name}.view(-1) "
                         "(a column of labels would broadcast against the predictions)")
    if len(y) != n_rows:
        raise ValueError(f"the features have {n_rows} rows but {name} has {len(y)} labels: pass one label per row")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"labels {name} must be class indices >= 0, got {int(y.min())}: a negative label would "
                         "wrap to the last class; remap the labels to 0..n_classes-1")
    if n_classes is not None and len(y) and int(y.max()) >= n_classes:
        raise ValueError(f"labels {name} go up to {int(y.max())} but the model outputs {n_classes} classes: "
                         f"remap the labels to 0..{n_classes - 1} or give the model a wider head")
