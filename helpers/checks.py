"""Argument checks shared by the helpers. Each raises ValueError naming the bad value and the fix, and runs
before a helper touches a model, a file or a random generator (so a refused call changes nothing)."""
from __future__ import annotations

import contextlib
import math
import numbers
import operator

import torch


def as_int(value):
    """An int-like (a numpy integer, a 0-d integer tensor) as a Python int; any other value, bools included,
    unchanged, for the check that follows to judge."""
    if isinstance(value, (bool, int)) or (isinstance(value, torch.Tensor) and (
            value.dim() or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def check_int(name: str, value, minimum: int | None = None, example: str = "") -> int:
    """`value` as an int; refused if it is a bool, a float (even 3.0: no silent truncation) or below `minimum`.
    numpy integers and 0-d integer tensors are ints (`as_int`)."""
    hint = f"; e.g. {example}" if example else ""
    value = as_int(value)
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
        raise ValueError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}: "
                         "use torch.tensor(..)")
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


def check_choice(name: str, value, options) -> str:
    """`value`, one of the names in `options` (a str: a list such as ['dense'] is refused, not hashed)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be one name (a str), got {value!r} ({type(value).__name__}): choose one of "
                         f"{sorted(options)}")
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}: choose one of {sorted(options)}")
    return value


def check_lora_unmerged(model, params) -> None:
    """ValueError if a LoRA layer whose A or B is among the trained `params` is merged: its forward skips the
    branch, so A and B would get no gradient (and a model with nothing else to train fails inside autograd)."""
    trained = {id(p) for p in params}
    merged = []
    for name, m in model.named_modules():
        branch = [getattr(m, "lora_A", None), getattr(m, "lora_B", None)]
        if getattr(m, "merged", False) is True and any(
                id(p) in trained for b in branch if isinstance(b, torch.nn.Module) for p in b.parameters()):
            merged.append(name)
    if merged:
        raise ValueError(f"LoRA layer(s) {', '.join(merged)} are merged (s·BA folded into W₀, the branch skipped), so "
                         "their A and B would get no gradient: call helpers.lora.unmerge_lora(model) before training "
                         "(and merge_lora after), or freeze A and B to train the rest")


def save_modes(model) -> list:
    """Every module's own train/eval flag (a BatchNorm the caller froze inside a training model keeps its own)."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(saved: list) -> None:
    """Put back the flags `save_modes` took, module by module (not model.train(flag), which sets them all)."""
    for m, flag in saved:
        m.training = flag


@contextlib.contextmanager
def modes_restored(model):
    """Run the block (e.g. in eval mode), then give every module its own train/eval flag back, also on error."""
    saved = save_modes(model)
    try:
        yield
    finally:
        restore_modes(saved)
