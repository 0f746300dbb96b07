"""Seeded train / evaluate loops shared by every notebook (they never copy a training loop).

`train` knows no fine-tuning method: it optimises whichever parameters require grad (or the ones
passed in `params`), so full fine-tuning, LoRA, BitFit and subspace training all go through it.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


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
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
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
