"""Seeded train / evaluate loops shared by every notebook (they never copy a training loop).

`train` knows no fine-tuning method: it optimises whichever parameters require grad (or the ones
passed in `params`), so full fine-tuning, LoRA, BitFit and subspace training all go through it.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm import tqdm

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


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
    """Seed torch's global generator (model init, dropout)."""
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Predicted class per row of X, in eval mode (the model's mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(X[i:i + batch_size]).argmax(-1) for i in range(0, len(X), batch_size)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Accuracy in [0, 1] of `model` on (X, y)."""
    return (predict(model, X, batch_size) == y).float().mean().item()


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, lr: float = 1e-3,
          batch_size: int = 128, optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 0,
          params=None, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
          eval_every: int | None = None, progress: bool = True, desc: str = "train") -> dict[str, list]:
    """Minibatch training with cross-entropy; returns a history of lists.

    Shuffling uses its own generator seeded by `seed`, so two calls with the same seed see the same
    batches. Only `params` (default: every parameter with requires_grad) are optimised.
    History keys: step, epoch, loss (mean over the steps since the last record), seconds (training
    time so far, evaluation excluded) and, with `eval_data=(X_test, y_test)`, test_acc. A record is
    written every `eval_every` steps (default: at the end of each epoch).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {sorted(OPTIMIZERS)}")
    if len(X) == 0:
        raise ValueError("X has no rows (empty dataset): pass at least one example to train on")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels: pass one label per row")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad (did you freeze everything?)")
    opt = OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(X) // batch_size)
    eval_every = eval_every or steps_per_epoch
    history: dict[str, list] = {"step": [], "epoch": [], "loss": [], "seconds": []}
    if eval_data is not None:
        history["test_acc"] = []
    step, seconds, running = 0, 0.0, []
    model.train()
    bar = progress_bar(epochs * steps_per_epoch, desc, progress)
    for epoch in range(epochs):
        order = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch_size):
            t0 = time.perf_counter()
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seconds += time.perf_counter() - t0
            running.append(loss.item())
            step += 1
            bar.update(1)
            if step % eval_every == 0 or step == epochs * steps_per_epoch:
                history["step"].append(step)
                history["epoch"].append(step / steps_per_epoch)
                history["loss"].append(sum(running) / len(running))
                history["seconds"].append(seconds)
                running = []
                if eval_data is not None:
                    history["test_acc"].append(evaluate(model, *eval_data))
                    model.train()
                    bar.set_postfix(test_acc=f"{history['test_acc'][-1]:.3f}")
    bar.close()
    model.eval()
    return history
