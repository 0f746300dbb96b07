"""The sweep behind notebook 04 (`make sweep-04`): LoRA vs random subspaces at matched budgets, from a random
and from a pre-trained start, and intrinsic dimension after pre-training. Notebook 04 reads the results file
and re-runs a few points live, asserting that they agree.

A *run* is one training: stage × task × start × method × size × seed (× lr in the lr stage).

- tasks: "digits" (the 4,000 MNIST training images, ten classes); "parity" (even/odd of the 2,000-image
  target pool, the half of the training images the body was *not* pre-trained on); "5-9" (digits 5-9, the
  body pre-trained on 0-4). Test sets: the 1,000 test images (parity: their parity; 5-9: the 5-9 among them).
- starts: "random" (a fresh MLP 784-200-200-n_out) or "pre-trained" (a body pre-trained on the source task,
  20 epochs of Adam at 1e-3, with a fresh head).
- methods: "full" (every parameter), "head" (the head alone, a linear probe), "lora" (adapters of rank r on
  fc1, fc2 and the head, the head's rank capped at its output width; α = 8 at every rank, scale α/r, as in
  notebook 02 and the LoRA paper; W₀ and biases frozen: the ablation with a frozen head), "lora_head" (adapters
  of rank r on fc1 and fc2, α = 8, with the head and every bias trained in full: peft's modules_to_save=["head"]
  and bias="all"; all of them counted in its budget), "subspace" (Fastfood θ^(d) over all parameters,
  biases and head included, d = the budget of "lora" or of "lora_head" at the same rank, or the
  intrinsic-dimension grid: ID_GRID, denser for parity, ID_GRID_PARITY). The subspace at LoRA + head's budget
  is run for the digits only: on parity (a 2-way head) it exceeds the frozen-head budget by 400-600 parameters,
  so the subspace at that slightly smaller budget is the (conservative) comparison.
- stage "lr": each (task, start, method, size) tries the lrs of LR_GRID for one seed on a validation split
  carved from the task's training images (never the test set), training on the rest; the best validation
  accuracy picks the lr (ties: the smaller). When the best lr is the largest (or smallest) tried, the next
  step of LR_LADDER beyond it is tried too, until the best lies inside the tried range (at most MAX_EXTEND
  extra steps per side). For the intrinsic-dimension grid, θ^(d)'s lr is picked at d = ID_LR_AT and used for
  every d.
- stage "final": the chosen lr, trained on all of the task's training images for EPOCHS epochs, seeds 0-2
  (the seed draws θ0's random parts, LoRA's A, P and the batch order), test accuracy every EVAL_EVERY steps.

Results go to sweeps/lora_vs_subspace_results.json, rewritten after every run (temp file, then os.replace): an
interrupted sweep keeps what it finished and a rerun skips it. One process, one thread.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from helpers.data import load_mnist, select_classes, split_off_validation  # noqa: E402
from helpers.lora import add_lora  # noqa: E402
from helpers.models import mlp, with_new_head  # noqa: E402
from helpers.subspace import SubspaceModel  # noqa: E402
from helpers.training import evaluate, train  # noqa: E402
from sweeps._results import write_json  # noqa: E402

RESULTS = ROOT / "sweeps" / "lora_vs_subspace_results.json"
EPOCHS, BATCH, ALPHA, SEEDS = 10, 128, 8, (0, 1, 2)
RANKS = (1, 2, 4, 8, 16, 32)
ID_GRID, ID_LR_AT = (10, 25, 50, 100, 200, 400, 800), 100
# parity's ID grid, denser (about √2 steps) so that no threshold rule's crossing falls between far-apart points
ID_GRID_PARITY = (10, 15, 25, 35, 50, 70, 100, 150, 200, 300, 400, 600, 800, 1000, 1250, 1600, 2000, 2500, 3200)
LR_GRID = {"full": (1e-4, 3e-4, 1e-3, 3e-3), "head": (1e-3, 3e-3, 1e-2, 3e-2),
           "lora": (1e-3, 3e-3, 1e-2, 3e-2), "lora_head": (1e-3, 3e-3, 1e-2, 3e-2),
           "subspace": (3e-3, 1e-2, 3e-2, 1e-1)}
LR_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # half-decade steps
MAX_EXTEND = 3
N_VAL = {"digits": 1000, "parity": 500, "5-9": 500}
EVAL_EVERY = {"digits": 8, "parity": 4, "5-9": 4}
SPLIT_SEED, POOL_SEED, PRETRAIN = 2, 1, {"epochs": 20, "lr": 1e-3, "seed": 0}
RANDOM_SEED_OFFSET = {"digits": 0, "parity": 100, "5-9": 100}  # random start on a target task: mlp(seed=100+s)


# ---------------------------------------------------------------------------------------------
# Data, starts, methods: the notebook defines the same (its live re-runs check that they agree)
# ---------------------------------------------------------------------------------------------

def tasks() -> dict:
    """task -> (X_train, y_train, X_test, y_test, n_out); sources: task -> (X, y, n_classes) to pre-train on."""
    X, y, Xt, yt = load_mnist("5k")
    (Xs, ys), (Xg, yg) = split_off_validation(X, y, 2000, seed=POOL_SEED)  # source pool, target pool
    out = {"digits": (X, y, Xt, yt, 10), "parity": (Xg, yg % 2, Xt, yt % 2, 2),
           "5-9": (*select_classes(X, y, range(5, 10)), *select_classes(Xt, yt, range(5, 10)), 5)}
    sources = {"parity": (Xs, ys, 10), "5-9": (*select_classes(X, y, range(5)), 5)}
    return out, sources


def pretrain(X, y, n_classes) -> torch.nn.Module:
    body = mlp((784, 200, 200, n_classes), seed=PRETRAIN["seed"])
    train(body, X, y, epochs=PRETRAIN["epochs"], lr=PRETRAIN["lr"], seed=PRETRAIN["seed"], progress=False)
    return body


def start_model(task: str, start: str, seed: int, n_out: int, pretrained: dict) -> torch.nn.Module:
    if start == "random":
        return mlp((784, 200, 200, n_out), seed=RANDOM_SEED_OFFSET[task] + seed)
    return copy.deepcopy(with_new_head(pretrained[task], n_out, seed=seed))


def with_method(model: torch.nn.Module, method: str, size: int, seed: int, n_out: int) -> torch.nn.Module:
    if method == "full":
        return model
    if method == "head":
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        return model
    if method == "lora_head":
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # LoRA's A init is drawn from the global generator
            add_lora(model, ["fc1", "fc2"], r=size, alpha=ALPHA)
        model.head.requires_grad_(True)  # modules_to_save=["head"]
        for layer in (model.fc1.base, model.fc2.base):  # bias="all"
            layer.bias.requires_grad_(True)
        return model
    if method == "lora":
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # LoRA's A init is drawn from the global generator
            add_lora(model, ["fc1", "fc2"], r=size, alpha=ALPHA)
            add_lora(model, ["head"], r=min(size, n_out), alpha=ALPHA)
        return model
    return SubspaceModel(model, size, projection="fastfood", seed=seed)


def lora_budget(r: int, n_out: int) -> int:
    return r * (784 + 200) + r * (200 + 200) + min(r, n_out) * (200 + n_out)


def lora_head_budget(r: int, n_out: int) -> int:
    """Adapters of rank r on fc1 and fc2, plus the whole head (weights and bias) and fc1's and fc2's biases."""
    return r * (784 + 200) + r * (200 + 200) + (200 * n_out + n_out) + 200 + 200


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

def families() -> list[dict]:
    """Each family: task, start, method, sizes, and lr_at(size) -> the size whose lr stage decides its lr."""
    fams = []
    budget_starts = {"digits": ("random",), "parity": ("random", "pre-trained")}
    for task, starts in budget_starts.items():
        n_out = {"digits": 10, "parity": 2}[task]
        for start in starts:
            fams += [{"task": task, "start": start, "method": "full", "sizes": (0,), "lr_at": None},
                     {"task": task, "start": start, "method": "head", "sizes": (0,), "lr_at": None},
                     {"task": task, "start": start, "method": "lora", "sizes": RANKS, "lr_at": None},
                     {"task": task, "start": start, "method": "subspace",
                      "sizes": tuple(lora_budget(r, n_out) for r in RANKS), "lr_at": None}]
    for task, starts in budget_starts.items():  # LoRA with a trainable head and biases, and its matched budgets
        n_out = {"digits": 10, "parity": 2}[task]
        for start in starts:
            fams.append({"task": task, "start": start, "method": "lora_head", "sizes": RANKS, "lr_at": None})
            if task == "digits":  # parity's two-way head makes the two budgets differ by < 1,000: no runs of its own
                fams.append({"task": task, "start": start, "method": "subspace",
                             "sizes": tuple(lora_head_budget(r, n_out) for r in RANKS), "lr_at": None})
    for task in ("parity", "5-9"):
        for start in ("random", "pre-trained"):
            if task != "parity":
                fams.append({"task": task, "start": start, "method": "full", "sizes": (0,), "lr_at": None})
            fams.append({"task": task, "start": start, "method": "subspace",
                         "sizes": ID_GRID_PARITY if task == "parity" else ID_GRID, "lr_at": ID_LR_AT})
    return fams


def key(run: dict) -> str:
    k = "/".join(str(run[f]) for f in ("stage", "task", "start", "method", "size", "seed"))
    return k + (f"/lr={run['lr']:g}" if run["stage"] == "lr" else "")


def plan_lr() -> list[dict]:
    runs, seen = [], set()
    for f in families():
        for size in ({f["lr_at"]} if f["lr_at"] else f["sizes"]):
            for lr in LR_GRID[f["method"]]:
                run = {"stage": "lr", "task": f["task"], "start": f["start"], "method": f["method"], "size": size,
                       "seed": 0, "lr": lr}
                if key(run) not in seen:
                    seen.add(key(run))
                    runs.append(run)
    return runs


def lr_scores(done: dict, task: str, start: str, method: str, size: int) -> dict[float, float]:
    return {r["lr"]: r["val_acc"] for r in done.values() if r["stage"] == "lr" and r["task"] == task
            and r["start"] == start and r["method"] == method and r["size"] == size}


def chosen_lr(done: dict, task: str, start: str, method: str, size: int) -> float | None:
    scores = lr_scores(done, task, start, method, size)
    if not set(LR_GRID[method]) <= set(scores):
        return None
    return max(sorted(scores), key=lambda lr: scores[lr])  # sorted ascending: a tie keeps the smaller lr


def plan_extensions(done: dict) -> list[dict]:
    """One more lr beyond each family whose best tried lr is the largest or smallest it tried."""
    runs = []
    for f in families():
        for size in ({f["lr_at"]} if f["lr_at"] else f["sizes"]):
            scores = lr_scores(done, f["task"], f["start"], f["method"], size)
            best = chosen_lr(done, f["task"], f["start"], f["method"], size)
            if best is None:
                continue
            tried = sorted(scores)
            i = LR_LADDER.index(best)
            for edge, step in ((tried[-1], 1), (tried[0], -1)):
                base = LR_LADDER.index(LR_GRID[f["method"]][-1 if step == 1 else 0])
                nxt = i + step
                if best == edge and 0 <= nxt < len(LR_LADDER) and abs(nxt - base) <= MAX_EXTEND:
                    runs.append({"stage": "lr", "task": f["task"], "start": f["start"], "method": f["method"],
                                 "size": size, "seed": 0, "lr": LR_LADDER[nxt]})
    return runs


def plan_final(done: dict) -> list[dict]:
    runs, seen = [], set()
    for f in families():
        for size in f["sizes"]:
            lr = chosen_lr(done, f["task"], f["start"], f["method"], f["lr_at"] or size)
            for seed in SEEDS:
                run = {"stage": "final", "task": f["task"], "start": f["start"], "method": f["method"],
                       "size": size, "seed": seed, "lr": lr}
                if key(run) not in seen:
                    seen.add(key(run))
                    runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def execute(run: dict, data: dict, pretrained: dict) -> dict:
    X, y, Xt, yt, n_out = data[run["task"]]
    model = with_method(start_model(run["task"], run["start"], run["seed"], n_out, pretrained),
                        run["method"], run["size"], run["seed"], n_out)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    if run["stage"] == "lr":
        (Xf, yf), (Xv, yv) = split_off_validation(X, y, N_VAL[run["task"]], seed=SPLIT_SEED)
        train(model, Xf, yf, epochs=EPOCHS, lr=run["lr"], batch_size=BATCH, seed=run["seed"], progress=False)
        out = {"val_acc": evaluate(model, Xv, yv)}
    else:
        id_grid = ID_GRID_PARITY if run["task"] == "parity" else ID_GRID
        every = EVAL_EVERY[run["task"]] if run["method"] != "subspace" or run["size"] not in id_grid else None
        h = train(model, X, y, epochs=EPOCHS, lr=run["lr"], batch_size=BATCH, seed=run["seed"], progress=False,
                  eval_data=(Xt, yt), eval_every=every)
        out = {"test_acc": h["test_acc"][-1], "train_acc": evaluate(model, X, y), "curve_step": h["step"],
               "curve_test_acc": [round(a, 4) for a in h["test_acc"]], "train_seconds": h["seconds"][-1],
               "steps": h["step"][-1]}
    return {**run, "key": key(run), "trainable": trainable, "wall_seconds": time.perf_counter() - t0, **out}


def config() -> dict:
    return {"epochs": EPOCHS, "batch_size": BATCH, "lora_alpha": ALPHA, "lora_targets": ["fc1", "fc2", "head"],
            "seeds": list(SEEDS), "ranks": list(RANKS), "id_grid": list(ID_GRID), "id_lr_at": ID_LR_AT,
            "id_grid_parity": list(ID_GRID_PARITY),
            "lora_head": {"targets": ["fc1", "fc2"], "modules_to_save": ["head"], "bias": "all"},
            "lr_grid": {m: list(v) for m, v in LR_GRID.items()}, "lr_ladder": list(LR_LADDER),
            "max_extend": MAX_EXTEND, "n_val": N_VAL, "eval_every": EVAL_EVERY,
            "split_seed": SPLIT_SEED, "pool_seed": POOL_SEED, "pretrain": PRETRAIN,
            "random_seed_offset": RANDOM_SEED_OFFSET, "optimizer": "adam (constant lr)",
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def save(done: dict, meta: dict, path: Path = RESULTS) -> None:
    payload = {"config": config(), "pretrained": meta, "runs": sorted(done.values(), key=lambda r: r["key"])}
    write_json(path, payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="print how many runs are planned and done, then stop")
    parser.add_argument("--only", default="", help="a second worker: run only the final runs whose key matches this "
                        "regex, writing to --out (the lr stage must be complete)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where a second worker writes its runs")
    parser.add_argument("--merge", type=Path, help="add the runs of a second worker's file to the results, then stop "
                        "(while no other worker is writing the results)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    done = {}
    if RESULTS.exists():
        done = {r["key"]: r for r in json.loads(RESULTS.read_text())["runs"]}
    if args.merge:
        other = json.loads(args.merge.read_text())
        done.update({r["key"]: r for r in other["runs"]})
        save(done, other["pretrained"])
        print(f"merged: {len(done)} runs in {RESULTS.name}")
        return
    data, sources = tasks()
    lr_runs = [r for r in plan_lr() if key(r) not in done] if not args.only else []
    print(f"lr stage: {len(plan_lr())} runs, {len(lr_runs)} to do", flush=True)
    if args.dry:
        return
    t0 = time.perf_counter()
    pretrained = {task: pretrain(*src) for task, src in sources.items()}
    meta = {task: {"source_train_acc": evaluate(body, *sources[task][:2])} for task, body in pretrained.items()}
    for i, run in enumerate(lr_runs, 1):
        done[key(run)] = execute(run, data, pretrained)
        save(done, meta, args.out)
        print(f"[{time.perf_counter() - t0:6.0f} s] lr {i}/{len(lr_runs)} {key(run)}: "
              f"val {done[key(run)]['val_acc']:.3f}", flush=True)
    while extra := [r for r in plan_extensions(done) if key(r) not in done]:
        for run in extra:  # the best lr was at an end of the tried range: one step further
            done[key(run)] = execute(run, data, pretrained)
            save(done, meta, args.out)
            print(f"[{time.perf_counter() - t0:6.0f} s] lr (extended) {key(run)}: val {done[key(run)]['val_acc']:.3f}",
                  flush=True)
    final = [r for r in plan_final(done) if key(r) not in done and re.search(args.only, key(r))]
    print(f"final stage: {len(final)} runs to do", flush=True)
    for i, run in enumerate(final, 1):
        done[key(run)] = execute(run, data, pretrained)
        save(done, meta, args.out)
        print(f"[{time.perf_counter() - t0:6.0f} s] final {i}/{len(final)} {key(run)} lr={run['lr']:g}: "
              f"test {done[key(run)]['test_acc']:.3f}", flush=True)
    save(done, meta, args.out)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
