"""The sweep behind notebook 03's stored results (`make sweep-03`): learning rates chosen on a validation split,
d_int90 across MLP widths and depths (Li et al. 2018, Fig. 3), and memorising shuffled labels (their
shuffled-label MNIST runs, "MNIST-SL" in their results notebook). Notebook 03 runs its main MNIST sweep live,
reads this file for the rest, and re-runs a few of its points live, asserting that they agree.

A *run* is one training: stage × experiment × architecture/labels × d × seed (× lr in the lr stage).

- stage "lr" (seed 0; 1,000 of the 4,000 training images carved off as validation, training on the other
  3,000; never the test set): direct training at BASE_LRS (BASE_EPOCHS epochs) and θ^(d) (EPOCHS epochs,
  Fastfood) at lr0 in SUBSPACE_LRS, used at every d as `helpers.intrinsic.subspace_lr(lr0, d, LR_REF_D)` =
  lr0 · √(LR_REF_D / d) (a step of the same size in θ^(D) at every d); the lr0 with the best mean validation
  accuracy over the d in LR_DS is chosen. Memorisation (shuffled labels) has no held-out score: its θ^(d) lr is the
  one with the best *training* accuracy at MEMO_LR_AT, on seed 100 (not one of the reported seeds). When the best lr
  is the largest (or smallest) tried, the next half-decade step beyond it is tried too (at most 3 per side).
- stage "width_depth": for every architecture in ARCHS, direct training (the baseline) and Fastfood θ^(d) for
  d in WD_GRID, seeds 0-2, on all 4,000 training images; test accuracy.
- stage "data_size": d_int90 against the number of training images N (N in DS_N; N < 4,000 a random subset
  drawn with seed DS_SEED, nested: the 1,000 lie inside the 2,000): the 784-200-200-10 MLP, direct training
  (the baseline) and Fastfood θ^(d) for d in DS_GRID, seeds 0-2, exactly the protocol of notebook 03's live
  sweep (EPOCHS epochs, the chosen lrs, θ^(d)'s scaled as 1/√d), so N = 4,000 repeats that sweep; test accuracy
  on the same 1,000 test images. Epochs are fixed, so the number of steps grows with N (as it would at 60,000).
- stage "memorise": N training images (N in MEMO_N, a random subset drawn with seed 0) with their true labels
  or with the labels shuffled among them (seed 0), direct training (baseline) and θ^(d) for the d of
  MEMO_GRID, MEMO_EPOCHS epochs, seeds 0-2; the score is training accuracy (what memorising means). θ^(d)'s
  lr is lr0 · √(d0 / d), lr0 the one chosen at d0 (MEMO_LR_AT), the same rule as above. (One lr for d from 250
  to 8,000 trained the largest d into divergence: memorising 1,000 shuffled labels fell from 85% at d = 2,000 to
  14% at d = 8,000 at lr 0.3; a fixed lr 0.1 for the MNIST grid left accuracy on a noisy plateau near 90% from
  d = 1,500 to 6,000.)

Results go to sweeps/intrinsic_mlp_results.json, rewritten after every run (temp file, then os.replace): an
interrupted sweep keeps what it finished and a rerun skips it. One process, one thread.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from helpers.data import load_mnist, split_off_validation  # noqa: E402
from helpers.intrinsic import subspace_lr  # noqa: E402
from helpers.models import mlp  # noqa: E402
from helpers.subspace import SubspaceModel  # noqa: E402
from helpers.training import evaluate, train  # noqa: E402
from sweeps._results import write_json  # noqa: E402

RESULTS = ROOT / "sweeps" / "intrinsic_mlp_results.json"
EPOCHS, BASE_EPOCHS, BATCH, SEEDS = 10, 20, 128, (0, 1, 2)
BASE_LRS, SUBSPACE_LRS, LR_DS, LR_REF_D = (3e-4, 1e-3, 3e-3), (1e-2, 3e-2, 1e-1), (500, 2000), 1000
N_VAL, SPLIT_SEED = 1000, 2
LR_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # half-decade steps
MAX_EXTEND = 3
ARCHS = {"784-50-50-10": (784, 50, 50, 10), "784-100-100-10": (784, 100, 100, 10),
         "784-200-200-10": (784, 200, 200, 10), "784-400-400-10": (784, 400, 400, 10),
         "784-200-10": (784, 200, 10), "784-200-200-200-10": (784, 200, 200, 200, 10),
         "784-200-200-200-200-10": (784, 200, 200, 200, 200, 10)}
WD_GRID = (150, 300, 450, 600, 850, 1200, 1700, 2400)  # 450, 850, 1,700 added: √2 steps around the crossings
DS_N, DS_SEED = (1000, 2000, 4000), 0
DS_GRID = (100, 150, 200, 300, 450, 600, 750, 1000, 1500, 2000, 3000, 4000)
MEMO_N, MEMO_EPOCHS, MEMO_SEED = (250, 500, 1000), 100, 0
MEMO_GRID = {"true": (25, 50, 100, 200, 400, 800), "shuffled": (250, 500, 1000, 2000, 4000, 8000)}
MEMO_LRS, MEMO_LR_AT, MEMO_LR_SEED = (3e-2, 1e-1), {"true": (500, 100), "shuffled": (500, 1000)}, 100


# ---------------------------------------------------------------------------------------------
# Data (the notebook builds the same; its live re-runs check that they agree)
# ---------------------------------------------------------------------------------------------

def memorise_data(X: torch.Tensor, y: torch.Tensor, n: int, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """n training images drawn with seed MEMO_SEED, with their labels or those labels shuffled among them."""
    (_, _), (Xn, yn) = split_off_validation(X, y, n, seed=MEMO_SEED)
    if labels == "shuffled":
        yn = yn[torch.randperm(n, generator=torch.Generator().manual_seed(MEMO_SEED))]
    return Xn, yn


def data_subset(X: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data-size stage's n training images: all of them in their order if n = len(X), else n drawn with seed
    DS_SEED (nested: a smaller n takes the first images of the same permutation)."""
    if n == len(X):
        return X, y
    (_, _), (Xn, yn) = split_off_validation(X, y, n, seed=DS_SEED)
    return Xn, yn


def memorise_lr(lr0: float, labels: str, d: int) -> float:
    """θ^(d)'s lr for memorising at subspace size d: lr0 (chosen at d0) · √(d0 / d), a constant step in θ^(D)."""
    return subspace_lr(lr0, d, MEMO_LR_AT[labels][1])


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

def key(run: dict) -> str:
    k = "/".join(str(run[f]) for f in ("stage", "what", "d", "seed"))
    return k + (f"/lr={run['lr']:g}" if "lr" in run and run["stage"] == "lr" else "")


def plan_lr() -> list[dict]:
    runs = [{"stage": "lr", "what": "direct", "d": 0, "seed": 0, "lr": lr} for lr in BASE_LRS]
    runs += [{"stage": "lr", "what": "subspace", "d": d, "seed": 0, "lr": lr} for d in LR_DS for lr in SUBSPACE_LRS]
    runs += [{"stage": "lr", "what": f"memorise/{labels}/{n}", "d": d, "seed": MEMO_LR_SEED, "lr": lr}
             for labels, (n, d) in MEMO_LR_AT.items() for lr in MEMO_LRS]
    return runs


FAMILIES = {"direct": ("val_acc", BASE_LRS), "subspace": ("val_acc", SUBSPACE_LRS),
            "memorise/true": ("train_acc", MEMO_LRS), "memorise/shuffled": ("train_acc", MEMO_LRS)}


def _scores(done: dict, family: str) -> dict[float, float]:
    """lr -> mean score of the family's finished lr runs (over the d it is tried at)."""
    score, by_lr = FAMILIES[family][0], {}
    for r in done.values():
        if r["stage"] == "lr" and family_of(r["what"]) == family:
            by_lr.setdefault(r["lr"], []).append(r[score])
    return {lr: sum(v) / len(v) for lr, v in by_lr.items()}


def chosen(done: dict) -> dict:
    """{"direct": lr, "subspace": lr, "memorise/true": lr, "memorise/shuffled": lr} from finished lr runs."""
    out = {}
    for family in FAMILIES:
        scores = _scores(done, family)
        out[family] = max(sorted(scores), key=lambda lr: scores[lr])  # ties: the smaller lr
    return out


def family_of(what: str) -> str:
    """"direct", "subspace", "memorise/true" or "memorise/shuffled"."""
    return "/".join(what.split("/")[:2])


def plan_extensions(done: dict) -> list[dict]:
    """The lr runs one half-decade beyond a family's tried range when its best lr sits at that end."""
    runs = []
    for family, (_, grid) in FAMILIES.items():
        scores = _scores(done, family)
        if not set(grid) <= set(scores):
            continue
        points = {(r["what"], r["d"], r["seed"]) for r in plan_lr() if family_of(r["what"]) == family}
        best, tried = max(sorted(scores), key=lambda lr: scores[lr]), sorted(scores)
        for edge, step, base in ((tried[-1], 1, grid[-1]), (tried[0], -1, grid[0])):
            nxt = LR_LADDER.index(best) + step
            if best == edge and 0 <= nxt < len(LR_LADDER) and abs(nxt - LR_LADDER.index(base)) <= MAX_EXTEND:
                runs += [{"stage": "lr", "what": w, "d": d, "seed": sd, "lr": LR_LADDER[nxt]}
                         for w, d, sd in sorted(points)]
    return runs


def plan_rest() -> list[dict]:
    runs = []
    for n in DS_N:
        runs += [{"stage": "data_size", "what": f"n/{n}", "d": d, "seed": s} for d in (0, *DS_GRID) for s in SEEDS]
    for arch in ARCHS:
        runs += [{"stage": "width_depth", "what": arch, "d": 0, "seed": s} for s in SEEDS]
        runs += [{"stage": "width_depth", "what": arch, "d": d, "seed": s} for d in WD_GRID for s in SEEDS]
    for n in MEMO_N:
        for labels, grid in MEMO_GRID.items():
            runs += [{"stage": "memorise", "what": f"memorise/{labels}/{n}", "d": d, "seed": s}
                     for d in (0, *grid) for s in SEEDS]
    return runs


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def execute(run: dict, data: tuple, lrs: dict) -> dict:
    X, y, Xt, yt = data
    t0 = time.perf_counter()
    seed, d = run["seed"], run["d"]
    if run["what"].startswith("memorise"):
        _, labels, n = run["what"].split("/")
        Xn, yn = memorise_data(X, y, int(n), labels)
        model = mlp(seed=seed) if d == 0 else SubspaceModel(mlp(seed=seed), d, projection="fastfood", seed=seed)
        lr = run.get("lr") or (1e-3 if d == 0 else memorise_lr(lrs[f"memorise/{labels}"], labels, d))
        train(model, Xn, yn, epochs=MEMO_EPOCHS, lr=lr, batch_size=BATCH, seed=seed, progress=False)
        out = {"train_acc": evaluate(model, Xn, yn), "lr": lr}
    elif run["stage"] == "lr":
        (Xf, yf), (Xv, yv) = split_off_validation(X, y, N_VAL, seed=SPLIT_SEED)
        model = mlp(seed=seed) if d == 0 else SubspaceModel(mlp(seed=seed), d, projection="fastfood", seed=seed)
        lr = run["lr"] if d == 0 else subspace_lr(run["lr"], d, LR_REF_D)  # run["lr"]: lr0 for θ^(d)
        train(model, Xf, yf, epochs=BASE_EPOCHS if d == 0 else EPOCHS, lr=lr, batch_size=BATCH, seed=seed,
              progress=False)
        out = {"val_acc": evaluate(model, Xv, yv), "lr_used": lr}
    elif run["stage"] == "data_size":
        Xn, yn = data_subset(X, y, int(run["what"].split("/")[1]))
        model = mlp(seed=seed) if d == 0 else SubspaceModel(mlp(seed=seed), d, projection="fastfood", seed=seed)
        lr = lrs["direct"] if d == 0 else subspace_lr(lrs["subspace"], d, LR_REF_D)
        train(model, Xn, yn, epochs=BASE_EPOCHS if d == 0 else EPOCHS, lr=lr, batch_size=BATCH, seed=seed,
              progress=False)
        out = {"test_acc": evaluate(model, Xt, yt), "train_acc": evaluate(model, Xn, yn), "lr": lr}
    else:
        net = mlp(ARCHS[run["what"]], seed=seed)
        model = net if d == 0 else SubspaceModel(net, d, projection="fastfood", seed=seed)
        lr = lrs["direct"] if d == 0 else subspace_lr(lrs["subspace"], d, LR_REF_D)
        train(model, X, y, epochs=BASE_EPOCHS if d == 0 else EPOCHS, lr=lr, batch_size=BATCH, seed=seed,
              progress=False)
        out = {"test_acc": evaluate(model, Xt, yt), "train_acc": evaluate(model, X, y), "lr": lr,
               "D": sum(p.numel() for p in net.parameters())}
    return {**run, **out, "key": key(run), "seconds": time.perf_counter() - t0}


def config() -> dict:
    return {"epochs": EPOCHS, "base_epochs": BASE_EPOCHS, "batch_size": BATCH, "seeds": list(SEEDS),
            "base_lrs": list(BASE_LRS), "subspace_lrs": list(SUBSPACE_LRS), "lr_ds": list(LR_DS), "lr_ref_d": LR_REF_D,
            "n_val": N_VAL,
            "split_seed": SPLIT_SEED, "archs": {k: list(v) for k, v in ARCHS.items()}, "wd_grid": list(WD_GRID),
            "ds_n": list(DS_N), "ds_seed": DS_SEED, "ds_grid": list(DS_GRID),
            "memo_n": list(MEMO_N), "memo_epochs": MEMO_EPOCHS, "memo_seed": MEMO_SEED,
            "memo_grid": {k: list(v) for k, v in MEMO_GRID.items()}, "memo_lrs": list(MEMO_LRS),
            "memo_lr_at": {k: list(v) for k, v in MEMO_LR_AT.items()}, "memo_lr_seed": MEMO_LR_SEED,
            "memo_direct_lr": 1e-3, "memo_lr_rule": "lr0 * sqrt(d0 / d)", "lr_ladder": list(LR_LADDER),
            "max_extend": MAX_EXTEND,
            "projection": "fastfood", "optimizer": "adam (constant lr)",
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def save(done: dict) -> None:
    lr_done = all(key(r) in done for r in plan_lr()) and not [r for r in plan_extensions(done) if key(r) not in done]
    payload = {"config": config(), "chosen_lr": chosen(done) if lr_done else None,
               "runs": sorted(done.values(), key=lambda r: r["key"])}
    write_json(RESULTS, payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="print how many runs are planned and done, then stop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    done = {}
    if RESULTS.exists():
        done = {r["key"]: r for r in json.loads(RESULTS.read_text())["runs"]}
    todo = [r for r in plan_lr() + plan_rest() if key(r) not in done]
    print(f"{len(plan_lr()) + len(plan_rest())} runs planned, {len(todo)} to do", flush=True)
    if args.dry:
        return
    data, t0 = load_mnist("5k"), time.perf_counter()

    def run_all(runs: list[dict], lrs: dict) -> None:
        for i, run in enumerate(runs, 1):
            done[key(run)] = out = execute(run, data, lrs)
            save(done)
            score = {k: round(out[k], 3) for k in ("val_acc", "test_acc", "train_acc") if k in out}
            print(f"[{time.perf_counter() - t0:6.0f} s] {i}/{len(runs)} {key(run)}: {score}", flush=True)

    run_all([r for r in plan_lr() if key(r) not in done], {})
    while extra := [r for r in plan_extensions(done) if key(r) not in done]:
        run_all(extra, {})  # a best lr at an end of the tried range: one half-decade further
    run_all([r for r in plan_rest() if key(r) not in done], chosen(done))
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
