"""The full sweep behind notebook 05 (`make sweep-05`): LoRA, SAID and friends on all-MiniLM-L6-v2 / TREC-6.

A *point* is one training run: stage × method × size × weights × seed. Two stages:

- "lr": each family (method × weights) tries a few learning rates for `LR_STEPS` steps on a validation split
  (500 questions carved, stratified, from the 4,381 training questions; never the test set); the best
  validation accuracy picks the family's lr (LoRA at r = 8 and SAID at d = 1,000 stand for their sizes).
- "grid": every method at its chosen lr, trained on all 4,381 training questions for `STEPS` steps of batch
  16, test accuracy on the 1,000 test questions every `EVAL_EVERY` steps. The linear probe (frozen sentence
  embeddings, full-batch logistic regression) picks its L2 strength on the same validation split.

Results go to sweeps/minilm_results.json, written after every point (temp file, then os.replace): an
interrupted sweep keeps what it finished and a rerun skips it. `--workers 2` runs two one-thread worker
processes that claim points from the file under a lock (a claim by a process that died is released).
Runtime: see the Makefile's sweep-05 line. Notebook 05 reads the file and re-runs a few points live.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sweeps._results import alive, locked, read_results  # noqa: E402
from sweeps._results import write_json as _write_json  # noqa: E402

RESULTS = ROOT / "sweeps" / "minilm_results.json"
STEPS, LR_STEPS, BATCH, EVAL_EVERY, EVAL_BATCH = 200, 100, 16, 50, 64
N_VAL, VAL_SEED = 500, 0
HEAD_LR = 1e-2  # full fine-tuning: the fresh head's own lr (the encoder's is swept)
LAMBDA_LR = 1e-2  # SAID: the λs' own lr (θ^(d)'s is swept)
LORA_TARGETS = ("query", "value")  # Hu et al.'s choice for their GLUE runs: W_q and W_v in every layer
# alpha = 8 at every rank (scale α/r = 8/r), the series' convention (notebooks 01, 02, 04) and Hu et al.'s:
# α is set once and not tuned, so the lr chosen at r = 8 serves every rank. The ablation "lora2r" (pre-trained only)
# is the same LoRA with α = 2r (scale fixed at 2, a common transformer recipe), with its own lr chosen at r = 8.
LORA_ALPHA = 8
PROBE_L2 = (1e-4, 1e-3, 1e-2, 1e-1)
LR_GRID = {
    # a grid whose best value was at its edge got one more value (head/random 0.1, said 0.3 and 0.1)
    ("head", "pre-trained"): (3e-3, 1e-2, 3e-2), ("head", "random"): (3e-3, 1e-2, 3e-2, 1e-1),
    ("lora", "pre-trained"): (1e-3, 3e-3, 1e-2), ("lora", "random"): (1e-3, 3e-3, 1e-2),
    ("lora2r", "pre-trained"): (1e-3, 3e-3, 1e-2),
    ("full", "pre-trained"): (3e-5, 1e-4, 3e-4), ("full", "random"): (1e-4, 3e-4, 1e-3),
    ("said", "pre-trained"): (1e-2, 3e-2, 1e-1, 3e-1), ("said", "random"): (3e-3, 1e-2, 3e-2, 1e-1),
}
LR_SIZE = {"lora": 8, "lora2r": 8, "said": 1000}
SEEDS = (0, 1, 2)  # three seeds: each draws the head, LoRA's A, P, the batch order, dropout (and random weights)
LORA_RANKS = {"pre-trained": (1, 2, 4, 8, 16), "random": (1, 16)}
LORA_EXTRA_RANKS_RANDOM = (4,)  # run last, if the sweep gets that far
LORA_R1_BUDGET = 1 * 2 * 384 * 2 * 6 + 384 * 6 + 6  # 11,526: LoRA r=1 on W_q, W_v of 6 layers + the head
SAID_DIMS = {"pre-trained": (250, 1000, 4000, LORA_R1_BUDGET), "random": (250, 1000, 4000)}
FASTFOOD_DIMS = {"pre-trained": (1000,)}  # plain Fastfood (no λ), same exclusions and head rescaling
LR_FROM = {"fastfood": "said"}  # plain Fastfood takes SAID's lr


def config() -> dict:
    return {"steps": STEPS, "lr_steps": LR_STEPS, "batch_size": BATCH, "eval_every": EVAL_EVERY, "n_val": N_VAL,
            "val_seed": VAL_SEED, "head_lr": HEAD_LR, "lambda_lr": LAMBDA_LR, "lora_targets": list(LORA_TARGETS),
            "lora_alpha": LORA_ALPHA, "probe_l2": list(PROBE_L2), "max_len": 32, "optimizer": "adam (constant lr)",
            "lr_grid": {f"{m}/{w}": list(v) for (m, w), v in LR_GRID.items()}, "lr_size": LR_SIZE,
            "said": "fastfood, compact, exclude word embeddings + pooler, head rows rescaled, one λ per block (8)"}


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

def key(p: dict) -> str:
    return "/".join(str(p[k]) for k in ("stage", "method", "weights", "size", "seed")) + (
        f"/lr={p['lr']:g}" if p["stage"] == "lr" else "")


def chosen_lrs(points: list[dict]) -> dict[tuple[str, str], float]:
    """(method, weights) -> the lr with the best validation accuracy, for families whose lr points all finished."""
    out = {}
    for (method, weights), lrs in LR_GRID.items():
        rows = [p for p in points if p["stage"] == "lr" and p["method"] == method and p["weights"] == weights]
        if {p["lr"] for p in rows} >= set(lrs):
            best = max(rows, key=lambda p: -1.0 if p["val_acc"] is None else p["val_acc"])
            out[method, weights] = best["lr"]
    return out


def plan(points: list[dict]) -> list[dict]:
    """Every point in the order workers take them; grid points carry lr=None until their family's lr is known."""
    lrs = chosen_lrs(points)
    out = []
    cheap, said = ["head", "lora", "full"], ["said"]
    for methods in (cheap, said):
        for m in methods:
            for w in ("pre-trained", "random"):
                for lr in LR_GRID.get((m, w), ()):
                    out.append(dict(stage="lr", method=m, weights=w, size=LR_SIZE.get(m, 0), seed=0, lr=lr))
        if methods is cheap:
            out.append(dict(stage="grid", method="probe", weights="pre-trained", size=0, seed=0, lr=None))
            out += [dict(stage="grid", method="probe", weights="random", size=0, seed=s, lr=None) for s in SEEDS]
    def direct(w, ranks):
        return ([dict(method="head", weights=w, size=0, seed=s) for s in SEEDS]
                + [dict(method="full", weights=w, size=0, seed=s) for s in SEEDS]
                + [dict(method="lora", weights=w, size=r, seed=s) for r in ranks for s in SEEDS])

    def subspace(method, dims, w):
        return [dict(method=method, weights=w, size=d, seed=s) for d in dims for s in SEEDS]

    # the pre-trained model first (the thesis), then the random-weights control; extras last
    grid = (direct("pre-trained", LORA_RANKS["pre-trained"]) + subspace("said", SAID_DIMS["pre-trained"], "pre-trained")
            + direct("random", LORA_RANKS["random"]) + subspace("said", SAID_DIMS["random"], "random")
            + subspace("fastfood", FASTFOOD_DIMS["pre-trained"], "pre-trained")
            + [dict(method="lora", weights="random", size=r, seed=s) for r in LORA_EXTRA_RANKS_RANDOM for s in SEEDS])
    # the α = 2r ablation last: its lr stage, then every pre-trained rank
    out += [dict(stage="lr", method="lora2r", weights="pre-trained", size=LR_SIZE["lora2r"], seed=0, lr=lr)
            for lr in LR_GRID["lora2r", "pre-trained"]]
    grid += [dict(method="lora2r", weights="pre-trained", size=r, seed=s)
             for r in LORA_RANKS["pre-trained"] for s in SEEDS]
    for g in grid:
        g.update(stage="grid", lr=lrs.get((LR_FROM.get(g["method"], g["method"]), g["weights"])))
    return out + grid


# ---------------------------------------------------------------------------------------------
# One point
# ---------------------------------------------------------------------------------------------

def val_mask(y: torch.Tensor, n_val: int = N_VAL, seed: int = VAL_SEED) -> torch.Tensor:
    """The validation split: n_val training examples, stratified by class (largest remainders), drawn with a fixed
    seed; a boolean mask over y."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y.numpy())
    per_class = np.floor(counts / counts.sum() * n_val).astype(int)
    per_class[np.argsort(-(counts / counts.sum() * n_val - per_class))[:n_val - per_class.sum()]] += 1
    val = np.zeros(len(y), dtype=bool)
    for c, k in enumerate(per_class):
        val[rng.choice(np.flatnonzero(y.numpy() == c), k, replace=False)] = True
    return torch.from_numpy(val)


def load_data():
    from helpers.data import load_trec6
    from helpers.text import load_minilm, sort_by_length
    texts, y, texts_test, y_test, _ = load_trec6()
    _, tok = load_minilm()
    X, X_test = tok.features(texts), tok.features(texts_test)
    val = val_mask(y)
    return {"train": (X, y), "test": sort_by_length(X_test, y_test), "fit": (X[~val], y[~val]),
            "val": sort_by_length(X[val], y[val]), "texts": texts, "texts_test": texts_test, "y_test": y_test,
            "val_mask": val}


def build(p: dict, encoder):
    """The model of point p from a fresh encoder: (model to train, lr_for, trainable count, D or None)."""
    from helpers.lora import add_lora
    from helpers.subspace import SubspaceModel
    from helpers.text import SAID_EXCLUDE, SentenceClassifier, said_block
    torch.manual_seed(p["seed"])  # LoRA's A matrices come from the global generator, as nn.Linear's weights do
    clf = SentenceClassifier(encoder, 6, seed=p["seed"])
    m = p["method"]
    if m == "head":
        clf.requires_grad_(False)
        clf.head.requires_grad_(True)
        return clf, None, sum(q.numel() for q in clf.head.parameters()), None
    if m == "full":
        return clf, {"head": HEAD_LR}, sum(q.numel() for q in clf.parameters()), None
    if m in ("lora", "lora2r"):
        add_lora(clf, list(LORA_TARGETS), r=p["size"], alpha=LORA_ALPHA if m == "lora" else 2 * p["size"])
        clf.head.requires_grad_(True)  # add_lora froze it: the fresh head trains directly, counted in the budget
        return clf, None, sum(q.numel() for q in clf.parameters() if q.requires_grad), None
    said = m == "said"
    model = SubspaceModel(clf, p["size"], "fastfood", seed=p["seed"], exclude=SAID_EXCLUDE, rescale=("head",),
                          said=said, groups=said_block if said else None, compact=True)
    return model, ({"lambdas": LAMBDA_LR} if said else None), model.d, model.D


def run_probe(p: dict, data: dict, encoder, tok) -> dict:
    from helpers.text import embed
    from helpers.training import evaluate, fit_linear_probe
    t0 = time.perf_counter()
    E = embed(encoder, tok, data["texts"], normalize=False)
    E_test = embed(encoder, tok, data["texts_test"], normalize=False)
    y, y_test, val = data["train"][1], data["y_test"], data["val_mask"]
    val_acc = {}
    for l2 in PROBE_L2:
        probe = fit_linear_probe(E[~val], y[~val], 6, l2=l2)
        val_acc[l2] = evaluate(probe, E[val], y[val])
    l2 = max(PROBE_L2, key=lambda v: val_acc[v])
    probe = fit_linear_probe(E, y, 6, l2=l2)
    acc = evaluate(probe, E_test, y_test)
    return {"l2": l2, "val_acc_by_l2": {f"{k:g}": v for k, v in val_acc.items()}, "final_acc": acc,
            "trainable": 384 * 6 + 6, "wall_seconds": time.perf_counter() - t0}


def run_point(p: dict, data: dict) -> dict:
    from helpers.text import load_minilm
    from helpers.training import TrainingDiverged, train
    t0 = time.perf_counter()
    encoder, tok = load_minilm(random_weights=p["weights"] == "random", seed=p["seed"])
    if p["method"] == "probe":
        return run_probe(p, data, encoder, tok)
    model, lr_for, trainable, D = build(p, encoder)
    lr_stage = p["stage"] == "lr"
    X, y = data["fit" if lr_stage else "train"]
    steps = LR_STEPS if lr_stage else STEPS
    out = {"trainable": trainable, "D": D, "steps": steps}
    try:
        h = train(model, X, y, steps=steps, lr=p["lr"], lr_for=lr_for, batch_size=BATCH, seed=p["seed"],
                  eval_data=data["val" if lr_stage else "test"], eval_every=steps if lr_stage else EVAL_EVERY,
                  eval_batch_size=EVAL_BATCH, progress=False)
    except TrainingDiverged as e:  # recorded (val_acc None: never chosen), the sweep goes on
        out.update(diverged=str(e), val_acc=None, final_acc=None, wall_seconds=time.perf_counter() - t0)
        return out
    out.update(eval_steps=h["step"], acc=h["test_acc"], train_seconds=h["seconds"], loss=h["loss"],
               s_per_step=h["seconds"][-1] / h["step"][-1], wall_seconds=time.perf_counter() - t0)
    if lr_stage:
        out["val_acc"] = out.pop("acc")[-1]
    else:
        out["final_acc"] = out["acc"][-1]
    if p["method"] == "said":
        out["lambdas"] = dict(zip(model.blocks, model.lambdas.detach().tolist()))
    return out


# ---------------------------------------------------------------------------------------------
# The results file, shared by the workers under a lock
# ---------------------------------------------------------------------------------------------

def read(path: Path) -> dict:
    return read_results(path, config())


def write_json(path: Path, data: dict) -> None:
    _write_json(path, data, indent=1)


def worker(path: Path, only: str | None) -> None:
    torch.set_num_threads(1)
    claims_path = path.with_suffix(".claims.json")
    data = load_data()
    env = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "threads": 1,
           "machine": platform.machine()}
    while True:
        if path.with_suffix(".stop").exists():
            print(f"[{os.getpid()}] {path.with_suffix('.stop').name} exists: stopping before the next point",
                  flush=True)
            return
        with locked(path):
            results = read(path)
            done = {p["key"] for p in results["runs"]}
            claims = json.loads(claims_path.read_text()) if claims_path.exists() else {}
            claims = {k: pid for k, pid in claims.items() if k not in done and alive(pid)}
            todo = [p for p in plan(results["runs"])
                    if key(p) not in done and (only is None or re.search(only, key(p)))]
            free = [p for p in todo if key(p) not in claims and (p["stage"] == "lr" or p["method"] == "probe"
                                                                  or p["lr"] is not None)]
            if free:
                point = free[0]
                claims[key(point)] = os.getpid()
            write_json(claims_path, claims)
        if not todo:
            return
        if not free and not claims:
            print(f"[{os.getpid()}] {len(todo)} points wait for learning rates that no run will choose (their lr stage "
                  f"is outside --only): first {key(todo[0])}", flush=True)
            return
        if not free:
            time.sleep(15)
            continue
        print(f"[{os.getpid()}] {key(point)} ...", flush=True)
        rec = {"key": key(point), **point, **run_point(point, data), **env, "finished": time.strftime("%Y-%m-%d %H:%M")}
        with locked(path):
            results = read(path)
            results["runs"].append(rec)
            write_json(path, results)
            claims = json.loads(claims_path.read_text()) if claims_path.exists() else {}
            claims.pop(rec["key"], None)
            write_json(claims_path, claims)
        acc = rec.get("val_acc", rec.get("final_acc"))
        print(f"[{os.getpid()}] {rec['key']}: acc {acc}, {rec['wall_seconds']:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--workers", type=int, default=2, help="one-thread worker processes (default 2)")
    ap.add_argument("--only", default=None, help="a regex: run only the points whose key matches")
    ap.add_argument("--smoke", action="store_true", help="4 steps per run (to check the script; use another --results)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        global STEPS, LR_STEPS, EVAL_EVERY
        STEPS, LR_STEPS, EVAL_EVERY = 4, 2, 2
        if args.results.resolve() == RESULTS:
            raise SystemExit("--smoke writes 4-step results: pass another --results file")
    path = args.results.resolve()
    if args.worker:
        worker(path, args.only)
        return
    with locked(path):
        write_json(path, read(path))  # refuse a file from another configuration before anything starts
    t0 = time.perf_counter()
    cmd = ([sys.executable, __file__, "--worker", "--results", str(path)] + (["--only", args.only] if args.only else [])
           + (["--smoke"] if args.smoke else []))
    procs = []
    for _ in range(args.workers):
        procs.append(subprocess.Popen(cmd))
        time.sleep(5)
    codes = [p.wait() for p in procs]
    results = read(path)
    left = [key(p) for p in plan(results["runs"]) if key(p) not in {q["key"] for q in results["runs"]}
            and (args.only is None or re.search(args.only, key(p)))]
    print(f"sweep: {len(results['runs'])} points in {path.name}, {len(left)} left; this run took "
          f"{(time.perf_counter() - t0) / 60:.1f} min; worker exit codes {codes}")
    if any(codes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
