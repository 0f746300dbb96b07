"""Intrinsic dimension (Li et al., ICLR 2018): sweeps over d, d_int90 under both threshold rules, the toy problem.

- `sweep` trains a `SubspaceModel` for every (projection, d, seed) with `helpers.training.train` and
  returns a tidy table (θ^(d)'s lr fixed, or scaled as 1/√d by `subspace_lr`); `baseline` does the same for
  direct training.
- `dint90` reads the intrinsic dimension off such a table: the d at which the mean test accuracy reaches
  90% of the baseline ("relative", the paper's stated rule), 0.90 accuracy ("absolute", what the paper's
  own plotting code used for MNIST's 750) or 90% of the way from a reference accuracy to the baseline ("gap":
  from chance, or from what a trivial baseline such as the head alone already reaches), on the grid or
  interpolated between grid points, with each seed's own estimate and a bootstrap over seeds.
- The toy problem of the paper's §2: θ ∈ R^1000, ten blocks of 100 whose sums must be 1, 2, ..., 10;
  its solutions form a 990-dimensional plane, so its intrinsic dimension is exactly 10.
"""
from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers.checks import as_int, check_int, check_number, check_seed
from helpers.models import mlp
from helpers.subspace import PROJECTIONS, SubspaceModel
from helpers.training import evaluate, progress_bar, train

RULES = ("relative", "absolute", "gap")


# ---------------------------------------------------------------------------------------------
# Sweeps over d
# ---------------------------------------------------------------------------------------------

def _as_list(x, name: str) -> list:
    if isinstance(x, (numbers.Number, str)) or (isinstance(x, torch.Tensor) and x.dim() == 0):
        return [as_int(x)]
    try:
        out = [as_int(v) for v in x]  # numpy integers (ds=np.array([...])) are integers
    except TypeError:
        raise ValueError(f"{name} must be a list of values, got {x!r}: e.g. {name}=[0, 1, 2]") from None
    if not out:
        raise ValueError(f"{name} is empty: pass at least one value")
    return out


def subspace_lr(lr: float, d: int, lr_ref_d: int | None = None) -> float:
    """θ^(d)'s learning rate at subspace size d: `lr`, or lr · √(lr_ref_d / d) when `lr_ref_d` is given.

    Adam moves every coordinate of θ^(d) by about lr per step, and P's d unit-norm, nearly orthogonal columns
    turn that into a step of about lr·√d in θ^(D). Scaling lr by 1/√d keeps that step the same at every d, so
    one lr chosen at d = lr_ref_d serves a grid that spans orders of magnitude (a fixed lr under-trains the
    small subspaces or makes the large ones noisy).
    """
    check_number("lr", lr, positive=True, example="lr=0.1")
    check_int("d", d, 1, "d=1000")
    if lr_ref_d is None:
        return float(lr)
    check_int("lr_ref_d", lr_ref_d, 1, "lr_ref_d=1000 (the d at which lr was chosen), or None for one lr")
    return float(lr) * math.sqrt(lr_ref_d / d)


def sweep(X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor, ds: Iterable[int],
          seeds: Iterable[int] = (0, 1, 2), projections: str | Iterable[str] = "fastfood", *,
          model_fn: Callable[[int], nn.Module] | None = None, epochs: int = 10, lr: float = 1e-2,
          lr_ref_d: int | None = None, batch_size: int = 128, optimizer: str = "adam",
          progress: bool = True) -> pd.DataFrame:
    """Train `SubspaceModel(model_fn(seed), d, projection, seed)` for every projection × d × seed.

    model_fn(seed) builds a fresh model (default: the paper's MLP 784-200-200-10 initialised with
    `seed`); the same seed draws P and the minibatch order, so a seed fixes a whole run. θ^(d)'s lr is
    `lr` at every d, or `subspace_lr(lr, d, lr_ref_d)` = lr · √(lr_ref_d / d) when lr_ref_d is given.
    Returns one row per run: projection, d, seed, D, lr, train_acc, test_acc, seconds (wall time of
    training plus the per-epoch test evaluations) and history (the dict `train` returned: epoch,
    loss, seconds, test_acc per epoch — what the notebook's widget draws).
    """
    ds, seeds, projections = _as_list(ds, "ds"), _as_list(seeds, "seeds"), _as_list(projections, "projections")
    seeds = [check_seed(s) for s in seeds]
    bad = [d for d in ds if isinstance(d, bool) or not isinstance(d, int) or d < 1]
    if bad:
        raise ValueError(f"d must be a positive integer, got {bad[0]!r} in ds={ds}: "
                         "use d >= 1, e.g. ds=[10, 100, 1000]")
    for p in projections:
        if p not in PROJECTIONS:
            raise ValueError(f"unknown projection {p!r}: choose from {sorted(PROJECTIONS)}")
    lrs = {d: subspace_lr(lr, d, lr_ref_d) for d in ds}
    model_fn = model_fn or (lambda seed: mlp(seed=seed))
    runs = [(p, d, s) for p in projections for d in ds for s in seeds]
    rows = []
    bar = progress_bar(len(runs), "sweep", progress)
    for projection, d, seed in runs:
        bar.set_postfix(projection=projection, d=d, seed=seed)
        t0 = time.perf_counter()
        model = SubspaceModel(model_fn(seed), d, projection=projection, seed=seed)
        history = train(model, X, y, epochs=epochs, lr=lrs[d], batch_size=batch_size, optimizer=optimizer,
                        seed=seed, eval_data=(X_test, y_test), progress=False)
        rows.append({"projection": projection, "d": d, "seed": seed, "D": model.D, "lr": lrs[d],
                     "train_acc": evaluate(model, X, y), "test_acc": history["test_acc"][-1],
                     "seconds": time.perf_counter() - t0, "history": history})
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


def baseline(X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
             seeds: Iterable[int] = (0, 1, 2), *, model_fn: Callable[[int], nn.Module] | None = None,
             epochs: int = 20, lr: float = 1e-3, batch_size: int = 128, optimizer: str = "adam",
             progress: bool = True) -> pd.DataFrame:
    """Direct training of all D parameters, one row per seed, same columns as `sweep` (d = D)."""
    seeds = [check_seed(s) for s in _as_list(seeds, "seeds")]
    model_fn = model_fn or (lambda seed: mlp(seed=seed))
    rows = []
    bar = progress_bar(len(seeds), "baseline", progress)
    for seed in seeds:
        t0 = time.perf_counter()
        model = model_fn(seed)
        history = train(model, X, y, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                        seed=seed, eval_data=(X_test, y_test), progress=False)
        D = sum(p.numel() for p in model.parameters())
        rows.append({"projection": "direct", "d": D, "seed": seed, "D": D,
                     "train_acc": evaluate(model, X, y), "test_acc": history["test_acc"][-1],
                     "seconds": time.perf_counter() - t0, "history": history})
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# d_int90
# ---------------------------------------------------------------------------------------------

def _crossing(ds: np.ndarray, acc: np.ndarray, threshold: float, interpolate: bool) -> float:
    """Smallest d with acc >= threshold (inf if none); optionally log-linear between grid points."""
    hit = np.flatnonzero(acc >= threshold)
    if len(hit) == 0:
        return math.inf
    i = hit[0]
    if not interpolate or i == 0:
        return float(ds[i])
    lo, hi = np.log(ds[i - 1]), np.log(ds[i])
    frac = (threshold - acc[i - 1]) / (acc[i] - acc[i - 1])
    return float(np.exp(lo + frac * (hi - lo)))


def dint90(table: pd.DataFrame, baseline: float | Sequence[float], rule: str = "relative", *,
           n_boot: int = 1000, seed: int = 0, metric: str = "test_acc", interpolate: bool = False,
           level: float = 0.90, reference: float | Sequence[float] | None = None) -> dict:
    """Intrinsic dimension d_int90 from a `sweep` table (one projection), with a bootstrap over seeds.

    rule="relative": threshold = 0.90 × baseline accuracy (the paper's stated definition);
    rule="absolute": threshold = 0.90 accuracy (the paper's plotting code, which gave MNIST's 750);
    rule="gap": threshold = reference + 0.90 × (baseline − reference), `reference` being an accuracy that
    should not count as learning the task (chance, or the head alone / a linear probe), a number or one value
    per seed (resampled with the seeds, like the baseline). With reference=0 it is the relative rule.
    `level` replaces 0.90 in all three.
    `baseline` is the direct-training accuracy, a number or one value per seed (then it is
    resampled too). The estimate is the smallest tested d whose mean `metric` over seeds reaches
    the threshold (inf if no tested d does); with interpolate=True, the log-linear crossing between
    the last d below and the first d above. The bootstrap resamples seeds with replacement
    (the same seeds for every d) `n_boot` times.
    Returns dict: rule, threshold, d_int90, boot_median, boot_low / boot_high (5th / 95th
    percentile), boot_std (over bootstrap samples that reached; nan if fewer than two),
    reached (fraction of bootstrap samples that reached the threshold within the grid), n_seeds,
    boot_samples (the n_boot estimates, a numpy array: e.g. the ratio of two tables' samples gives a ratio's
    interval), per_seed (each seed's own crossing of the same threshold, in the table's seed order; inf where
    a seed never reaches it), per_seed_mean and per_seed_std (their mean and sample std; inf / nan when a
    seed never reaches, std nan for one seed): the spread over seeds of the estimate itself.
    """
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose 'relative' (90% of baseline), 'absolute' (0.90 accuracy) "
                         "or 'gap' (90% of the way from reference= to the baseline)")
    if (rule == "gap") != (reference is not None):
        raise ValueError(f"rule={rule!r} with reference={reference!r}: the 'gap' rule needs reference= (e.g. chance, "
                         "0.1 for ten classes, or the head-only accuracy), and the other rules take none")
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame (what sweep() returns), got {type(table).__name__}: "
                         "wrap a list of run dicts with pd.DataFrame(rows)")
    level = check_number("level", level, example="level=0.90")
    if not 0 < level <= 1:
        raise ValueError(f"level must be a fraction in (0, 1], got {level!r}: pass 0.90, not 90")
    seed = check_seed(seed)
    n_boot = as_int(n_boot)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} is not a number of bootstrap samples: "
                         "use an integer >= 1, e.g. n_boot=1000")
    if len(table) == 0:
        raise ValueError("table has no rows (filtered on a misspelled projection?): pass a table from sweep()")
    if not isinstance(metric, str) or metric not in table.columns:
        raise ValueError(f"table has no column {metric!r}: pass a table from sweep() or metric= one of "
                         f"{list(table.columns)}")
    missing = [c for c in ("d", "seed") if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column {', '.join(map(repr, missing))}: dint90 reads d, seed and {metric} per "
                         "run (a table from sweep()); for runs of one seed add it, e.g. table.assign(seed=0)")
    for column in ("d", metric):
        if not pd.api.types.is_numeric_dtype(table[column]) or pd.api.types.is_bool_dtype(table[column]):
            raise ValueError(f"column {column!r} must hold numbers, got dtype {table[column].dtype} (e.g. "
                             f"{table[column].iloc[0]!r}; as text '100' sorts before '20'): convert it with "
                             f"table.assign({column}=pd.to_numeric(table[{column!r}]))")
    if not (np.isfinite(table["d"].to_numpy(dtype=float)) & (table["d"].to_numpy(dtype=float) > 0)).all():
        raise ValueError(f"column 'd' must hold subspace sizes >= 1, got values from {table['d'].min()} to "
                         f"{table['d'].max()}: drop the rows with a missing or non-positive d")
    if "projection" in table.columns and table["projection"].nunique() > 1:
        raise ValueError(f"table mixes projections {sorted(table['projection'].unique())}: "
                         f"pass table[table.projection == 'fastfood'] (one projection at a time)")
    for name, value in (("baseline", baseline), ("reference", reference)):
        if isinstance(value, (str, bytes)) or any(isinstance(v, (str, bytes))
                                                  for v in np.ravel(np.asarray(value, dtype=object))):
            raise ValueError(f"{name} must be accuracies (numbers), got {value!r}: pass e.g. 0.934, not '0.934'")
    base = np.atleast_1d(np.asarray(baseline, dtype=float))
    if base.size == 0 or not np.all((base > 0) & (base <= 1)):
        raise ValueError(f"baseline must be accuracies in (0, 1], got {baseline!r}: pass e.g. 0.934")
    ref = np.zeros(1) if reference is None else np.atleast_1d(np.asarray(reference, dtype=float))
    if ref.size == 0 or not np.all((ref >= 0) & (ref < 1)):
        raise ValueError(f"reference must be accuracies in [0, 1), got {reference!r}: pass e.g. 0.1 (chance for ten "
                         "classes) or the head-only accuracy")
    if rule == "gap" and ref.mean() >= base.mean():
        raise ValueError(f"reference {ref.mean():.3f} is not below the baseline {base.mean():.3f}: there is no gap "
                         "to close; pass a reference the baseline beats")
    if table.duplicated(["seed", "d"]).any():
        dup = table[table.duplicated(["seed", "d"], keep=False)][["seed", "d"]].drop_duplicates().values.tolist()
        raise ValueError(f"table has several rows for (seed, d) = {dup[:3]}: they would be averaged silently; "
                         "drop the repeats (table.drop_duplicates(['seed', 'd'])) or give each run its own seed")
    values = pd.to_numeric(table[metric], errors="coerce")
    if values.isna().any() or not ((values >= 0) & (values <= 1)).all():
        raise ValueError(f"{metric} must be accuracies in [0, 1], got values from {values.min()} to {values.max()}: "
                         "divide percentages by 100 and drop failed (NaN) runs")
    acc = table.pivot_table(index="seed", columns="d", values=metric)  # seeds × d
    if acc.isna().any().any():
        raise ValueError("every d needs a result for every seed: rerun sweep() with the same seeds for all d")
    ds, grid = acc.columns.to_numpy(dtype=float), acc.to_numpy()

    def threshold(b, r):
        return level if rule == "absolute" else r + level * (b - r)

    estimate = _crossing(ds, grid.mean(0), threshold(base.mean(), ref.mean()), interpolate)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, len(grid), len(grid))
        b = base[rng.integers(0, len(base), len(base))].mean()
        r = ref[rng.integers(0, len(ref), len(ref))].mean() if ref.size > 1 else ref.mean()
        boot[i] = _crossing(ds, grid[rows].mean(0), threshold(b, r), interpolate)
    finite = boot[np.isfinite(boot)]
    per_seed = [_crossing(ds, row, threshold(base.mean(), ref.mean()), interpolate) for row in grid]
    reached_all = all(math.isfinite(v) for v in per_seed)
    return {"rule": rule, "threshold": float(threshold(base.mean(), ref.mean())), "d_int90": estimate,
            "boot_median": float(np.quantile(boot, 0.5, method="lower")),
            "boot_low": float(np.quantile(boot, 0.05, method="lower")),
            "boot_high": float(np.quantile(boot, 0.95, method="higher")),
            "boot_std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
            "reached": float(len(finite) / n_boot), "n_seeds": len(grid), "boot_samples": boot,
            "per_seed": per_seed, "per_seed_mean": float(np.mean(per_seed)) if reached_all else math.inf,
            "per_seed_std": float(np.std(per_seed, ddof=1)) if reached_all and len(per_seed) > 1 else math.nan}


# ---------------------------------------------------------------------------------------------
# The toy problem (paper §2): intrinsic dimension exactly 10
# ---------------------------------------------------------------------------------------------

class ToyBlockSums(nn.Module):
    """θ ∈ R^D (standard Gaussian init from `seed`), cut into `n_blocks` equal blocks.

    forward() returns the n_blocks block sums; the task asks them to equal 1, 2, ..., n_blocks
    (`targets`). Those are n_blocks linear constraints, so the solutions form a plane of
    dimension D − n_blocks and the intrinsic dimension is n_blocks.
    """

    def __init__(self, D: int = 1000, n_blocks: int = 10, seed: int = 0):
        super().__init__()
        D = check_int("D", D, 1, "D=1000")
        n_blocks = check_int("n_blocks", n_blocks, 1, "n_blocks=10")
        if D % n_blocks:
            raise ValueError(f"D={D} must split into n_blocks={n_blocks} equal blocks: pick D a multiple of n_blocks")
        self.n_blocks = n_blocks
        self.theta = nn.Parameter(torch.randn(D, generator=torch.Generator().manual_seed(check_seed(seed))))
        self.register_buffer("targets", torch.arange(1, n_blocks + 1, dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.theta.view(self.n_blocks, -1).sum(1)

    def loss(self, sums: torch.Tensor) -> torch.Tensor:
        """Squared error of the block sums; the paper's performance is exp(−loss)."""
        return ((sums - self.targets) ** 2).sum()


def solve_toy(d: int, seed: int = 0, *, D: int = 1000, n_blocks: int = 10, projection: str = "dense",
              optimizer: str = "lbfgs", steps: int = 200, lr: float | None = None) -> dict:
    """Train θ^(d) of `SubspaceModel(ToyBlockSums(D, n_blocks, seed), d, projection, seed)` on the toy loss.

    The loss is quadratic in θ^(d): ‖A θ^(d) − b‖² with A = S P (S sums blocks; 10 × d), and a random
    A is often badly conditioned. optimizer="lbfgs" (default; up to `steps` iterations of
    torch.optim.LBFGS with strong-Wolfe line search, lr 1) converges on it; "adam" (lr default 0.05,
    `steps` steps) is there to show that first-order steps crawl along the ill-conditioned directions.
    Returns dict: d, seed, optimizer, iterations (optimiser steps taken), loss, performance = exp(−loss).
    """
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}: choose 'lbfgs' or 'adam'")
    steps = as_int(steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}: pass a whole number of steps, e.g. steps=200")
    if lr is not None:
        check_number("lr", lr, positive=True, example="lr=0.05, or None for the optimizer's default")
    lr = (1.0 if optimizer == "lbfgs" else 0.05) if lr is None else lr
    toy = ToyBlockSums(D, n_blocks, seed)
    model = SubspaceModel(toy, d, projection=projection, seed=seed)
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([model.theta_d], lr=lr, max_iter=steps, history_size=max(20, d),
                                tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = toy.loss(model())
            loss.backward()
            return loss
        opt.step(closure)  # runs up to `steps` iterations, stops early once converged
        iterations = opt.state[model.theta_d]["n_iter"]
    else:
        opt = torch.optim.Adam([model.theta_d], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            toy.loss(model()).backward()
            opt.step()
        iterations = steps
    with torch.no_grad():
        loss = float(toy.loss(model()))
    return {"d": d, "seed": seed, "optimizer": optimizer, "iterations": iterations, "loss": loss,
            "performance": math.exp(-loss)}


def toy_sweep(ds: Iterable[int], seeds: Iterable[int] = range(5), progress: bool = True, **kwargs) -> pd.DataFrame:
    """`solve_toy` for every d × seed; one row each (kwargs go to solve_toy)."""
    runs = [(d, check_seed(s)) for d in _as_list(ds, "ds") for s in _as_list(seeds, "seeds")]
    bar, rows = progress_bar(len(runs), "toy", progress), []
    for d, s in runs:
        rows.append(solve_toy(d, s, **kwargs))
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


def power_law_extrapolation(n: Sequence[float], values: Sequence[Sequence[float]], at: float, *,
                            n_boot: int = 2000, seed: int = 0) -> dict:
    """Fit log(value) = a + b·log(n) to per-seed estimates and extrapolate to `at`, with a bootstrap over seeds.

    n: the k sizes measured (e.g. training images, all > 0, at least two distinct); values: k sequences of
    per-seed estimates (e.g. d_int90 per seed at each size; all finite and > 0). The fit is least squares on
    the mean of log(value) at each size. The bootstrap resamples the seeds at each size independently (with
    replacement, `n_boot` times, from a local generator seeded with `seed`) and refits. Returns dict: slope b,
    intercept a, prediction exp(a + b·log(at)), slope_low / slope_high and pred_low / pred_high (5th / 95th
    percentiles of the bootstrap), boot_slopes and boot_preds (numpy arrays). Extrapolating beyond the sizes
    measured assumes the power law holds there: the interval covers seed noise only, not that assumption.
    """
    xs = np.asarray(n, dtype=float)
    if xs.ndim != 1 or len(xs) < 2 or len(np.unique(xs)) < 2 or not np.all(xs > 0):
        raise ValueError(f"n must be at least two distinct positive sizes, got {list(n)!r}: "
                         "pass e.g. [1000, 2000, 4000]")
    if len(values) != len(xs):
        raise ValueError(f"values has {len(values)} entries for {len(xs)} sizes: "
                         "pass one list of per-seed values per size")
    groups = [np.asarray(v, dtype=float) for v in values]
    if any(g.ndim != 1 or g.size == 0 or not np.all(np.isfinite(g) & (g > 0)) for g in groups):
        raise ValueError("every size needs a non-empty list of finite, positive per-seed values (a seed that never "
                         "reached the threshold has no estimate: drop that size or lower the threshold)")
    if not (isinstance(at, (int, float)) and not isinstance(at, bool) and at > 0):
        raise ValueError(f"at must be a positive size, got {at!r}: pass e.g. 60000")
    check_int("n_boot", n_boot, 1, "n_boot=2000")
    check_seed(seed)
    lx = np.log(xs)

    def fit(logs_per_size):
        b, a = np.polyfit(lx, [g.mean() for g in logs_per_size], 1)
        return b, a

    logs = [np.log(g) for g in groups]
    b, a = fit(logs)
    rng = np.random.default_rng(seed)
    boot = np.array([fit([g[rng.integers(0, len(g), len(g))] for g in logs]) for _ in range(n_boot)])
    preds = np.exp(boot[:, 1] + boot[:, 0] * math.log(at))
    return {"slope": float(b), "intercept": float(a), "prediction": float(math.exp(a + b * math.log(at))),
            "slope_low": float(np.quantile(boot[:, 0], 0.05)), "slope_high": float(np.quantile(boot[:, 0], 0.95)),
            "pred_low": float(np.quantile(preds, 0.05)), "pred_high": float(np.quantile(preds, 0.95)),
            "boot_slopes": boot[:, 0], "boot_preds": preds}
