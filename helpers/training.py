"""Seeded train / evaluate loops shared by every notebook (they never copy a training loop), and the one
training step (`training_step`) that `train`, `helpers.memory` and the benchmarks take.

`train` knows no fine-tuning method: it optimises whichever parameters require grad (or the ones
passed in `params`), so full fine-tuning, LoRA, BitFit and subspace training all go through it.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import time
from collections.abc import Callable
from numbers import Real
from typing import NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from helpers.checks import (
    as_int,
    check_choice,
    check_features,
    check_int,
    check_labels,
    check_lora_unmerged,
    check_number,
    check_seed,
    modes_restored,
    restore_modes,
    save_modes,
)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}  # the one table


class TrainingDiverged(ValueError):
    """`train` stopped because the loss became NaN or inf (the model was restored); a ValueError."""


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return type(get_ipython()).__name__ == "ZMQInteractiveShell"


class _NotebookBar:
    """A one-line text bar that a notebook updates in place (IPython display_id).

    Unlike a widget bar, what the saved notebook keeps is the bar's last state ("33/33 … done"),
    readable on GitHub and identical in JupyterLab, and it needs no widget state.
    """

    def __init__(self, total: int, desc: str, min_interval: float = 0.5):
        from IPython.display import display
        self.total, self.desc, self.n, self.postfix = total, desc, 0, ""
        self.min_interval, self.t0 = min_interval, time.perf_counter()
        self.last = -math.inf
        self.handle = display({"text/plain": self.line()}, raw=True, display_id=True)

    def line(self, done: bool = False) -> str:
        width = 24
        filled = width if not self.total else min(width, width * self.n // self.total)
        status = f"done in {time.perf_counter() - self.t0:.0f} s" if done else f"{time.perf_counter() - self.t0:.0f} s"
        return (f"{self.desc}: {'█' * filled}{'·' * (width - filled)} {self.n}/{self.total} [{status}]"
                + (f" {self.postfix}" if self.postfix else ""))

    def refresh(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self.last >= self.min_interval:
            self.handle.update({"text/plain": self.line()}, raw=True)
            self.last = now

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        self.refresh()

    def close(self) -> None:
        self.handle.update({"text/plain": self.line(done=True)}, raw=True)


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A progress bar with update(n), set_postfix(**kw) and close().

    In a notebook: one text line updated in place that ends in its finished state (what a saved
    notebook shows). Elsewhere: tqdm on stderr. enabled=False: a silent bar.
    """
    if enabled and _in_notebook():
        return _NotebookBar(total, desc)
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def set_seed(seed: int) -> None:
    """Seed torch's global generator (model init, dropout). The only helper that touches global RNG state."""
    torch.manual_seed(check_seed(seed))


def training_step(model: nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One step: forward, cross-entropy, zero_grad, backward, optimizer step; returns the loss (detached scalar).

    X: (batch, d_in) floats; y: (batch,) int64 class indices. The step `train`, `measure_training_memory`
    and the benchmarks all take.
    """
    loss = nn.functional.cross_entropy(model(X), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass e.g. mlp()")


def _output_width(model: nn.Module, X: torch.Tensor) -> int:
    """Classes the model outputs, from one row in eval mode under no_grad (no state changes, no RNG draw)."""
    with modes_restored(model), torch.no_grad():
        model.eval()
        out = model(X[:1])
    if out.dim() != 2:
        raise ValueError(f"the model maps {tuple(X[:1].shape)} to {tuple(out.shape)}, not (batch, n_classes) "
                         "logits: train and evaluate need a classifier")
    return out.shape[1]


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Predicted class per row of X (N, d_in) -> int64 (N,), in eval mode; every module's own train/eval mode
    is restored afterwards, also when the forward fails."""
    _check_model(model)
    check_features("X", X)
    batch_size = check_int("batch_size", batch_size, 1, "batch_size=4096")
    with modes_restored(model):
        model.eval()
        return torch.cat([model(X[i:i + batch_size]).argmax(-1) for i in range(0, len(X), batch_size)])


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Accuracy in [0, 1] of `model` on X (N, d_in) and y (N,) int64; y of shape (N, 1) is refused."""
    check_features("X", X)
    check_labels("y", y, len(X))
    return (predict(model, X, batch_size) == y).float().mean().item()


def _lr_groups(model: nn.Module, params: list, lr: float, lr_for) -> list[dict]:
    """Optimizer parameter groups: {"params": [...], "lr": ...}, one per distinct lr (see `train`'s lr_for)."""
    if lr_for is None:
        return [{"params": params}]
    if not isinstance(lr_for, dict) or not lr_for:
        raise ValueError(f"lr_for must be a non-empty dict {{name prefix: lr}}, got {lr_for!r}: "
                         f"e.g. lr_for={{'head': 1e-2}}")
    trained = {id(p) for p in params}
    names = [(n, p) for n, p in model.named_parameters() if id(p) in trained]
    chosen: dict[int, float] = {}
    for prefix, value in lr_for.items():
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"lr_for keys must be parameter-name prefixes (str), got {prefix!r}: "
                             f"e.g. lr_for={{'head': 1e-2}}")
        check_number(f"lr_for[{prefix!r}]", value, positive=True, example=f"lr_for={{{prefix!r}: 1e-2}}")
        hits = [p for n, p in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({n.split(".")[0] for n, _ in names})
            raise ValueError(f"lr_for entry {prefix!r} matches no trained parameter; trained parameters start with "
                             f"{', '.join(tops)} (e.g. {names[0][0]!r})")
        for p in hits:
            if id(p) in chosen:
                raise ValueError(f"a parameter under {prefix!r} is also selected by another lr_for entry: give each "
                                 "parameter one learning rate")
            chosen[id(p)] = float(value)
    lrs = [chosen.get(id(p), float(lr)) for p in params]
    return [{"params": [p for p, v in zip(params, lrs) if v == value], "lr": value} for value in dict.fromkeys(lrs)]


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int | None = None, lr: float = 1e-3,
          batch_size: int = 128, optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 0,
          params=None, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          eval_every: int | None = None, progress: bool = True, desc: str = "train",
          steps: int | None = None, lr_for: dict[str, float] | None = None,
          eval_batch_size: int = 4096) -> dict[str, list]:
    """Minibatch training with cross-entropy; returns a history of lists.

    X: (N, d_in) floats (or any float tensor whose rows the model takes, e.g. (N, 2, L) token ids and masks),
    y: (N,) int64 in 0..n_classes-1. `seed` fixes everything random: the batch order
    (a local generator) and dropout (drawn inside `torch.random.fork_rng`, seeded with `seed`), so two calls
    with the same seed give the same losses and the caller's global RNG state is left exactly as it was.
    Only `params` (default: every parameter with requires_grad) are optimised.
    Length: `epochs` passes over the data (default 10), or exactly `steps` optimiser steps (the data is
    reshuffled at every pass, as with epochs; give one of the two). A constant learning rate: the first k
    steps of a longer run are exactly a k-step run with the same seed.
    `lr_for`: per-parameter learning rates, {name prefix: lr}; a trained parameter whose name (in
    `model.named_parameters()`) is the prefix or starts with prefix + "." uses that lr, the others `lr`
    (e.g. lr=1e-4, lr_for={"head": 1e-2}: the encoder at 1e-4, a fresh head at 1e-2).
    History keys: step, epoch, loss (mean over the steps since the last record), seconds (training
    time so far, evaluation excluded) and, with `eval_data=(X_test, y_test)`, test_acc. A record is
    written every `eval_every` steps (default: at the end of each epoch) and after the last step;
    evaluation runs `eval_batch_size` rows at a time (a transformer wants small batches of similar length).
    Training runs with every module in train mode (model.train()); the model ends in eval mode.
    Every argument (and every label against the model's output width) is checked before the first step;
    if a step fails or the loss turns NaN/inf, the trained tensors, their grads, batch-norm statistics
    and every module's own train/eval mode are restored and the error is raised.
    """
    _check_model(model)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_features("X", X)
    if not isinstance(y, torch.Tensor) or len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y) if hasattr(y, '__len__') else y!r} labels: "
                         "pass one label per row")
    if epochs is not None and steps is not None:
        raise ValueError(f"pass epochs or steps, not both (got epochs={epochs!r}, steps={steps!r}): e.g. steps=200")
    if steps is not None:
        steps = check_int("steps", steps, 1, "steps=200 (optimiser steps), or epochs=10 instead")
    elif epochs is None:
        epochs = 10
    epochs, batch_size = as_int(epochs), as_int(batch_size)  # numpy integers are integers
    if (any(isinstance(v, bool) or not isinstance(v, int) or v < 1
            for v in (1 if epochs is None else epochs, batch_size))
            or not isinstance(lr, Real) or not lr > 0):
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs!r}, {batch_size!r}, {lr!r}")
    check_number("lr", lr, positive=True, example="lr=1e-3")
    check_number("weight_decay", weight_decay, minimum=0, example="weight_decay=0.0")
    seed = check_seed(seed)
    if eval_every is not None:
        eval_every = check_int("eval_every", eval_every, 1, "eval_every=10 (steps), or None for once per epoch")
    eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1, "eval_batch_size=64")
    if params is not None:
        if isinstance(params, torch.Tensor) or not hasattr(params, "__iter__"):
            raise ValueError(f"params must be a list of the model's parameters, got {type(params).__name__}: e.g. "
                             "params=list(model.head.parameters())")
        params, own = list(params), {id(p) for p in model.parameters()}
        if not all(isinstance(p, torch.Tensor) and id(p) in own for p in params):
            raise ValueError("params must be parameters of the model being trained (from model.parameters()); "
                             "another model's tensors would never receive a gradient: pass e.g. "
                             "params=list(model.head.parameters())")
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad (did you freeze everything?)")
    check_lora_unmerged(model, params)
    groups = _lr_groups(model, params, lr, lr_for)
    n_classes = _output_width(model, X)
    check_labels("y", y, len(X), n_classes)
    if eval_data is not None:
        if not isinstance(eval_data, (tuple, list)) or len(eval_data) != 2:
            raise ValueError(f"eval_data must be a pair (X_test, y_test), got {type(eval_data).__name__}: "
                             "pass eval_data=(X_test, y_test)")
        check_features("X_test", eval_data[0])
        if eval_data[0].shape[1:] != X.shape[1:]:
            raise ValueError(f"X_test rows have shape {tuple(eval_data[0].shape[1:])}, X rows {tuple(X.shape[1:])}: "
                             "pass test data with the training data's features")
        check_labels("y_test", eval_data[1], len(eval_data[0]), n_classes)

    opt = OPTIMIZERS[optimizer](groups, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(X) // batch_size)
    total = steps if steps is not None else epochs * steps_per_epoch
    eval_every = eval_every or steps_per_epoch
    history: dict[str, list] = {"step": [], "epoch": [], "loss": [], "seconds": []}
    if eval_data is not None:
        history["test_acc"] = []
    step, seconds, running = 0, 0.0, []
    modes = save_modes(model)
    # what a step can change: the trained tensors, their grads, batch-norm statistics (restored on failure)
    stats = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) for b in m.buffers()]
    saved = [(t, t.detach().clone()) for t in params + stats]
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in params]
    bar = progress_bar(total, desc, progress)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # dropout draws: deterministic per seed, the caller's state is restored
            model.train()
            while step < total:
                order = torch.randperm(len(X), generator=gen)
                for i in range(0, len(X), batch_size):
                    if step == total:
                        break
                    t0 = time.perf_counter()
                    idx = order[i:i + batch_size]
                    loss = training_step(model, opt, X[idx], y[idx]).item()
                    seconds += time.perf_counter() - t0
                    if not math.isfinite(loss):
                        raise TrainingDiverged(f"the loss became {loss} at step {step + 1} (lr={lr}): training "
                                               "diverged; the model was restored — lower lr")
                    running.append(loss)
                    step += 1
                    bar.update(1)
                    if step % eval_every == 0 or step == total:
                        history["step"].append(step)
                        history["epoch"].append(step / steps_per_epoch)
                        history["loss"].append(sum(running) / len(running))
                        history["seconds"].append(seconds)
                        running = []
                        if eval_data is not None:
                            history["test_acc"].append(evaluate(model, *eval_data, batch_size=eval_batch_size))
                            bar.set_postfix(test_acc=f"{history['test_acc'][-1]:.3f}")
    except BaseException:
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
        for p, g in grads:
            p.grad = g
        restore_modes(modes)
        raise
    finally:
        bar.close()
    model.eval()
    return history


def fit_linear_probe(E: torch.Tensor, y: torch.Tensor, n_classes: int | None = None, *, l2: float = 1e-3,
                     max_iter: int = 500) -> nn.Linear:
    """A linear probe on frozen features: multinomial logistic regression fitted full-batch, to its optimum.

    E: (N, k) float features (e.g. sentence embeddings), y: (N,) int64 in 0..n_classes-1 (n_classes defaults
    to y.max() + 1). The features are standardised (train mean and std per column), then
    mean cross-entropy + (l2 / 2)·‖W‖²_F (bias not penalised) is minimised by L-BFGS (strong-Wolfe line
    search, up to `max_iter` iterations) from zero weights, in float64. The objective is strictly convex for
    l2 > 0, so the result depends on no seed and on the CPU only through rounding.
    Returns nn.Linear(k, n_classes) in float32 acting on the *raw* features (standardisation folded into the
    weights: W/σ and b − W·μ/σ), in eval mode, with requires_grad off.
    """
    check_features("E", E)
    if E.dim() != 2:
        raise ValueError(f"E must be a (N, k) matrix of features, got shape {tuple(E.shape)}: flatten or pool first")
    if len(E) < 2:
        raise ValueError(f"E has {len(E)} row: standardising needs at least two rows (one row has no spread); "
                         "pass more examples")
    check_labels("y", y, len(E))
    if n_classes is None and int(y.max()) == 0:
        raise ValueError("y holds only class 0, so n_classes would be 1: a probe separates two or more classes; pass "
                         "n_classes= the task's number of classes (e.g. n_classes=6) or labels of two or more classes")
    n_classes = int(y.max()) + 1 if n_classes is None else check_int("n_classes", n_classes, 2, "n_classes=6")
    check_labels("y", y, len(E), n_classes)
    l2 = check_number("l2", l2, minimum=0, example="l2=1e-3")
    max_iter = check_int("max_iter", max_iter, 1, "max_iter=500")
    X = E.detach().double()
    mu, sigma = X.mean(0), X.std(0).clamp_min(1e-12)
    Z = (X - mu) / sigma
    W = torch.zeros(n_classes, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(Z @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.random.fork_rng():  # nn.Linear draws an init we overwrite: leave the caller's generator alone
        probe = nn.Linear(X.shape[1], n_classes)
    with torch.no_grad():
        Ws = W / sigma
        probe.weight.copy_(Ws)
        probe.bias.copy_(b - Ws @ mu)
    return probe.requires_grad_(False).eval()


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's state (names, dtypes, shapes, bytes) and which parameters require grad."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):  # a module's extra state
            h.update(f"{name} {t!r}".encode())
            continue
        t = t.detach().cpu()
        t = t.to_dense() if t.layout != torch.strided else t
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    h.update(" ".join(n for n, p in model.named_parameters() if p.requires_grad).encode())
    return h.hexdigest()


def _changeable(model: nn.Module) -> dict[int, str]:
    """Storage address -> name of what training changes: trainable parameters and batch-norm statistics."""
    out = {p.untyped_storage().data_ptr(): n for n, p in model.named_parameters() if p.requires_grad}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            out.update({b.untyped_storage().data_ptr(): f"{name}.{k}" for k, b in m.named_buffers()})
    out.pop(0, None)  # empty tensors have no storage
    return out


def _check_fresh(model: nn.Module, others: list, start: str, lr: float, first_lr: float) -> nn.Module:
    """`model` from build() for rate `lr`: not one of `others` (models alive), sharing nothing training changes
    with them, and in the state the first model started from (its fingerprint `start`). Returns it."""
    _check_model(model)
    fix = "return a fresh copy at every call, e.g. build=lambda: copy.deepcopy(pretrained)"
    if any(model is o for o in others):
        raise ValueError(f"build() returned the same model object again (for lr={lr:g}): every rate would train one "
                         f"model in turn, each starting where the last stopped; {fix}")
    theirs = {a for o in others for a in _changeable(o)}
    shared = [n for a, n in _changeable(model).items() if a in theirs]
    if shared:
        raise ValueError(f"the models build() returns share {', '.join(shared[:3])}"
                         f"{' ...' if len(shared) > 3 else ''}: "
                         f"training one rate would change the model the next rate starts from; {fix} (with_new_head "
                         "shares its body: deepcopy the model first)")
    if _fingerprint(model) != start:
        raise ValueError(f"build() returned a model for lr={lr:g} that differs from the one for lr={first_lr:g} "
                         "before training (other weights, buffers or trainable parameters): every rate must start from "
                         "the same model; seed any random init inside build (e.g. torch.manual_seed(0) before "
                         f"add_lora), or {fix}")
    return model


class LRChoice(NamedTuple):
    """What `choose_lr` found: the chosen learning rate, validation accuracy and mean validation cross-entropy
    per learning rate (in the order tried; NaN where training diverged), and the model trained at the chosen rate."""
    lr: float
    val_acc: dict[float, float]
    val_loss: dict[float, float]
    model: nn.Module


@torch.no_grad()
def _mean_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of `model` on (X, y) in eval mode; every module's own mode is restored."""
    with modes_restored(model):
        model.eval()
        return nn.functional.cross_entropy(model(X), y).item()


def choose_lr(build: Callable[[], nn.Module], lrs, fit: tuple[torch.Tensor, torch.Tensor],
              val: tuple[torch.Tensor, torch.Tensor], *, seed: int = 0, progress: bool = True,
              desc: str = "learning rates", **train_kwargs) -> LRChoice:
    """The learning rate, among `lrs`, at which a model from `build()` scores best on validation data.

    For each lr: `model = build()` (a fresh model whose trainable parameters are set, e.g. a copy of a
    pre-trained model with LoRA added), `train(model, *fit, lr=lr, seed=seed, **train_kwargs)`, then its
    accuracy on val = (X_val, y_val) — data carved out of the training data (`split_off_validation`), never
    the test set. The best rate has the highest validation accuracy; among equal accuracies (common when a
    small validation set saturates), the lowest validation cross-entropy; then the smaller rate. A rate at which
    training diverges (`TrainingDiverged`) scores NaN and is never chosen; if every rate diverges, the last
    TrainingDiverged is raised. `build` owns any randomness of its own (e.g. it may seed LoRA's A init); this
    function draws none. Every rate must start from the same model: before any training, two models from
    `build()` are compared (not the same object, no shared trainable tensor or batch-norm statistics, the same
    state and trainable set), and every later one against the first. Returns LRChoice(lr, val_acc, val_loss, model).
    """
    if not callable(build):
        raise ValueError(f"build must be a function that returns a fresh model, got {type(build).__name__}: "
                         "pass e.g. lambda: copy.deepcopy(pretrained)")
    if isinstance(lrs, (str, bytes)) or not hasattr(lrs, "__iter__"):
        raise ValueError(f"lrs must be a list of learning rates, got {lrs!r}; e.g. lrs=[1e-3, 3e-3, 1e-2]")
    lrs = [check_number("each learning rate in lrs", lr, positive=True, example="lrs=[1e-3, 3e-3, 1e-2]")
           for lr in lrs]
    if not lrs or len(set(lrs)) != len(lrs):
        raise ValueError(f"lrs must list at least one learning rate, each once, got {lrs}; e.g. lrs=[1e-3, 1e-2]")
    for name, pair in (("fit", fit), ("val", val)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name} must be a pair (X, y), got {type(pair).__name__}: "
                             "pass the parts split_off_validation returns")
        check_features(f"X of {name}", pair[0])
        check_labels(f"y of {name}", pair[1], len(pair[0]))
    if "lr" in train_kwargs:
        raise ValueError("lr is set by choose_lr itself (it tries each of lrs): drop it from the training arguments")
    settable = set(inspect.signature(train).parameters) - {"model", "X", "y", "lr", "seed", "progress"}
    unknown = sorted(set(train_kwargs) - settable)
    if unknown:
        raise ValueError(f"choose_lr passes {', '.join(unknown)} on to train, which takes no such setting here: drop "
                         f"it; train's settings are {', '.join(sorted(settable))}")
    first = build()
    _check_model(first)
    n_classes = _output_width(first, fit[0])
    if val[0].shape[1:] != fit[0].shape[1:]:
        raise ValueError(f"X of val rows have shape {tuple(val[0].shape[1:])}, "
                         f"X of fit rows {tuple(fit[0].shape[1:])}: "
                         "pass validation data with the fitting data's features")
    check_labels("y of val", val[1], len(val[0]), n_classes)
    start = _fingerprint(first)
    ready = [first]
    if len(lrs) > 1:
        ready.append(_check_fresh(build(), [first], start, lrs[1], lrs[0]))
    bar = progress_bar(len(lrs), desc, progress)
    val_acc, val_loss, best, model = {}, {}, None, None
    try:
        for lr in lrs:
            alive = [m for m in (model, best and best[1]) if m is not None]
            model = ready.pop(0) if ready else _check_fresh(build(), alive, start, lr, lrs[0])
            try:
                train(model, *fit, lr=lr, seed=seed, progress=False, **train_kwargs)
            except TrainingDiverged as error:
                val_acc[lr], val_loss[lr], diverged = math.nan, math.nan, error
                bar.update(1)
                continue
            val_acc[lr], val_loss[lr] = evaluate(model, *val), _mean_loss(model, *val)
            score = (val_acc[lr], -val_loss[lr], -lr)
            if best is None or score > best[2]:
                best = (lr, model, score)
            bar.update(1)
            bar.set_postfix(best_lr=f"{best[0]:g}")
    finally:
        bar.close()
    if best is None:
        raise diverged
    return LRChoice(best[0], val_acc, val_loss, best[1])
