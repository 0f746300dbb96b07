"""The controls behind notebook 05's intrinsic-dimension claims (`make sweep-05-controls`), all-MiniLM-L6-v2 / TREC-6.

Same data, batch, optimiser, validation split and learning-rate protocol as sweeps/minilm.py (whose stored
results give the learning rates of the families it already ran); every run here is new. In the order a single
worker takes them (the priorities of issue 21), so an interrupted sweep leaves a coherent prefix:

1. "headsub": a random subspace over the head alone (D = 2,310; the encoder frozen but in training mode, dropout
   on, as in the SAID runs), its own lr stage at d = 1,000, then d = 100 ... 2,310 (= D) x 3 seeds. The encoder's
   outputs are computed once per seed and data split (helpers.text.training_embeddings: the same batches and
   dropout masks as train() draws with the encoder in the loop; tests/test_minilm_controls.py checks the replay
   is exact), so a run costs seconds.
2. "said", pre-trained, a denser grid: d = 700 and 2,000 (x 3 seeds), beside the crossings the old grid's 4x steps
   left between 250 and 1,000 and between 1,000 and 4,000.
3. "said_tensor": SAID with the public implementations' projection
   (`SubspaceModel(..., "fastfood", per_tensor=True)`: an independent Fastfood per parameter tensor, each tensor's
   share of a column of norm ~1, one λ per tensor, no head rescaling; word embeddings and pooler still excluded), its
   own lr stage at d = 1,000, then d = 1,000 x 3.
4. "full", pre-trained, seeds 3 and 4: more anchors for the target (sweeps/minilm.py has seeds 0-2); then SAID at
   d = 500, 1,400, 2,800.
5. Random weights with 3x the steps (600): full fine-tuning and SAID at d = 4,000 (x 3 seeds).
6. "said_lrd": SAID with θ's lr scaled per d (helpers.intrinsic.subspace_lr(lr, d, 1000)) at d = 250 and 4,000.
7. "said" at d = 6,000.

Test accuracy (1,000 questions) is measured after the last step (`final_acc`), and for "said_tensor" every 50 steps.
Results go to sweeps/minilm_controls_results.json, rewritten atomically after every run (sweeps/_results.py); a rerun
skips finished points. `touch sweeps/minilm_controls_results.stop` stops the worker before its next point.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sweeps import minilm as base  # noqa: E402
from sweeps._results import read_results, write_json  # noqa: E402

RESULTS = ROOT / "sweeps" / "minilm_controls_results.json"
BASE_RESULTS = ROOT / "sweeps" / "minilm_results.json"
STEPS, LR_STEPS, LONG_STEPS = base.STEPS, base.LR_STEPS, 3 * base.STEPS
SEEDS = base.SEEDS
HEAD_D = 384 * 6 + 6  # 2,310: the whole head
LR_GRID = {("headsub", "pre-trained"): (3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
           ("said_tensor", "pre-trained"): (3e-3, 1e-2, 3e-2)}
LR_SIZE = {"headsub": 1000, "said_tensor": 1000}
HEADSUB_DIMS = (100, 250, 500, 700, 1000, 1400, 2000, HEAD_D)
LR_REF_D = 1000  # said_lrd: θ's lr is SAID's chosen lr at d = 1,000, scaled by √(1000 / d)


def config() -> dict:
    return {"steps": STEPS, "lr_steps": LR_STEPS, "long_steps": LONG_STEPS, "batch_size": base.BATCH,
            "n_val": base.N_VAL, "val_seed": base.VAL_SEED, "head_lr": base.HEAD_LR, "lambda_lr": base.LAMBDA_LR,
            "max_len": 32, "optimizer": "adam (constant lr)", "eval": "test accuracy after the last step",
            "lr_grid": {f"{m}/{w}": list(v) for (m, w), v in LR_GRID.items()}, "lr_size": LR_SIZE,
            "lr_ref_d": LR_REF_D, "base_results": BASE_RESULTS.name}


def key(p: dict) -> str:
    out = "/".join(str(p[k]) for k in ("stage", "method", "weights", "size", "seed"))
    if p["stage"] == "lr":
        out += f"/lr={p['lr']:g}"
    if p.get("steps", STEPS) != STEPS and p["stage"] == "grid":
        out += f"/steps={p['steps']}"
    return out


def base_lrs() -> dict:
    """(method, weights) -> lr chosen by sweeps/minilm.py's lr stage (its stored results)."""
    return base.chosen_lrs(json.loads(BASE_RESULTS.read_text())["runs"])


def chosen_lrs(points: list[dict]) -> dict:
    """This sweep's own lr stages (head-only subspace, per-tensor SAID), as sweeps/minilm.py chooses them."""
    out = {}
    for (method, weights), lrs in LR_GRID.items():
        rows = [p for p in points if p["stage"] == "lr" and p["method"] == method and p["weights"] == weights]
        if {p["lr"] for p in rows} >= set(lrs):
            out[method, weights] = max(rows, key=lambda p: -1.0 if p["val_acc"] is None else p["val_acc"])["lr"]
    return out


def plan(points: list[dict], lrs_base: dict | None = None) -> list[dict]:
    """Every point, in the order the worker takes them; grid points carry lr=None until their lr is known."""
    lrs_base = base_lrs() if lrs_base is None else lrs_base
    own = chosen_lrs(points)

    def lr_stage(method):
        return [dict(stage="lr", method=method, weights="pre-trained", size=LR_SIZE[method], seed=0, lr=lr,
                     steps=LR_STEPS) for lr in LR_GRID[method, "pre-trained"]]

    def grid(method, weights, sizes, steps=STEPS, seeds=SEEDS):
        return [dict(stage="grid", method=method, weights=weights, size=d, seed=s, steps=steps)
                for d in sizes for s in seeds]

    out = (lr_stage("headsub") + grid("headsub", "pre-trained", HEADSUB_DIMS)
           + grid("said", "pre-trained", (700, 2000))
           + lr_stage("said_tensor") + grid("said_tensor", "pre-trained", (1000,))
           + grid("full", "pre-trained", (0,), seeds=(3, 4)) + grid("said", "pre-trained", (500, 1400, 2800))
           + grid("full", "random", (0,), steps=LONG_STEPS) + grid("said", "random", (4000,), steps=LONG_STEPS)
           + grid("said_lrd", "pre-trained", (250, 4000)) + grid("said", "pre-trained", (6000,)))
    for p in out:
        if p["stage"] == "grid":
            m = p["method"]
            lr = own.get((m, p["weights"])) if (m, p["weights"]) in LR_GRID else lrs_base.get(
                ("said" if m == "said_lrd" else m, p["weights"]))
            if m == "said_lrd" and lr is not None:
                from helpers.intrinsic import subspace_lr
                lr = subspace_lr(lr, p["size"], LR_REF_D)
            p["lr"] = lr
    return out


def build(p: dict, encoder):
    """(model, lr_for, trainable count, D) for the point's method; "full" and "said" exactly as sweeps/minilm.py."""
    from helpers.subspace import SubspaceModel
    from helpers.text import SAID_EXCLUDE, SentenceClassifier
    m = p["method"]
    if m in ("full", "said", "said_lrd"):
        return base.build(dict(p, method="said" if m == "said_lrd" else m), encoder)
    clf = SentenceClassifier(encoder, 6, seed=p["seed"])
    if m == "said_tensor":
        model = SubspaceModel(clf, p["size"], "fastfood", seed=p["seed"], exclude=SAID_EXCLUDE, said=True,
                              compact=True, per_tensor=True)
        return model, {"lambdas": base.LAMBDA_LR}, model.d, model.D
    raise ValueError(f"unknown method {m!r}")


_CACHE: dict = {}


def head_features(p: dict, data: dict) -> tuple:
    """Training-mode embeddings (as train draws them for this seed and length) and eval-mode ones, batch by batch
    as `evaluate` makes them: what the head sees in a frozen-encoder run, computed once per (split, seed, steps)."""
    from helpers.text import SentenceClassifier, load_minilm, training_embeddings
    lr_stage = p["stage"] == "lr"
    k = (lr_stage, p["seed"], p["steps"], p["weights"])
    if k not in _CACHE:
        encoder, _ = load_minilm(random_weights=p["weights"] == "random", seed=p["seed"])
        clf = SentenceClassifier(encoder, 6, seed=p["seed"])
        X, y = data["fit" if lr_stage else "train"]
        X_eval, y_eval = data["val" if lr_stage else "test"]
        E = training_embeddings(clf, X, steps=p["steps"], batch_size=base.BATCH, seed=p["seed"])
        clf.eval()
        with torch.no_grad():
            E_eval = torch.cat([clf.embeddings(X_eval[i:i + base.EVAL_BATCH])
                                for i in range(0, len(X_eval), base.EVAL_BATCH)])
        _CACHE[k] = (E, y, E_eval, y_eval, clf.head)
    return _CACHE[k]


def run_point(p: dict, data: dict) -> dict:
    from helpers.subspace import SubspaceModel
    from helpers.text import load_minilm
    from helpers.training import TrainingDiverged, train
    t0, cpu0 = time.perf_counter(), time.process_time()
    lr_stage = p["stage"] == "lr"
    if p["method"] == "headsub":
        X, y, X_eval, y_eval, head = head_features(p, data)
        model = SubspaceModel(copy.deepcopy(head), p["size"], "fastfood", seed=p["seed"])
        lr_for, trainable, D = None, model.d, model.D
    else:
        encoder, _ = load_minilm(random_weights=p["weights"] == "random", seed=p["seed"])
        model, lr_for, trainable, D = build(p, encoder)
        X, y = data["fit" if lr_stage else "train"]
        X_eval, y_eval = data["val" if lr_stage else "test"]
    out = {"trainable": trainable, "D": D}
    # the per-tensor runs are also scored every 50 steps, so the notebook can re-run their first 50 live
    every = base.EVAL_EVERY if p["method"] == "said_tensor" and not lr_stage else p["steps"]
    try:
        h = train(model, X, y, steps=p["steps"], lr=p["lr"], lr_for=lr_for, batch_size=base.BATCH, seed=p["seed"],
                  eval_data=(X_eval, y_eval), eval_every=every,
                  eval_batch_size=base.EVAL_BATCH, progress=False)
    except TrainingDiverged as e:
        out.update(diverged=str(e), val_acc=None, final_acc=None, wall_seconds=time.perf_counter() - t0)
        return out
    acc = h["test_acc"][-1]
    out.update({"val_acc" if lr_stage else "final_acc": acc, "train_seconds": h["seconds"][-1], "loss": h["loss"][-1],
                "s_per_step": h["seconds"][-1] / p["steps"], "wall_seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - cpu0})
    if every < p["steps"]:
        out.update(eval_steps=h["step"], acc=h["test_acc"])
    if getattr(model, "said", False):
        out["lambdas"] = dict(zip(model.blocks, model.lambdas.detach().tolist()))
    return out


def read(path: Path) -> dict:
    return read_results(path, config())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="2 steps per run (to check the script; use another --results)")
    ap.add_argument("--only", default=None, help="a regex: run only the points whose key matches (a second worker: "
                    "give it a copy of the results file and its own --only, then merge the two files' runs by key)")
    args = ap.parse_args()
    only = re.compile(args.only) if args.only else None
    path = args.results.resolve()
    if args.smoke:
        global STEPS, LR_STEPS, LONG_STEPS
        if path == RESULTS:
            raise SystemExit("--smoke writes 2-step results: pass another --results file")
        STEPS = LR_STEPS = LONG_STEPS = 2
    torch.set_num_threads(1)
    write_json(path, read(path), indent=1)  # refuse a file from another configuration before anything starts
    data = base.load_data()
    env = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "threads": 1,
           "machine": platform.machine()}
    t_start = time.perf_counter()
    while True:
        if path.with_suffix(".stop").exists():
            print(f"{path.with_suffix('.stop').name} exists: stopping before the next point", flush=True)
            break
        results = read(path)
        done = {p["key"] for p in results["runs"]}
        todo = [p for p in plan(results["runs"]) if key(p) not in done and (only is None or only.search(key(p)))]
        if args.smoke:
            todo = [dict(p, steps=2) for p in todo]
        free = [p for p in todo if p["lr"] is not None]
        if not free:
            if todo:
                print(f"{len(todo)} points wait for a learning rate no run will choose: first {key(todo[0])}")
            break
        point = free[0]
        print(f"[{os.getpid()}] {key(point)} ...", flush=True)
        rec = {"key": key(point), **point, **run_point(point, data), **env, "finished": time.strftime("%Y-%m-%d %H:%M")}
        results = read(path)
        results["runs"].append(rec)
        write_json(path, results, indent=1)
        acc = rec.get("val_acc", rec.get("final_acc"))
        print(f"[{os.getpid()}] {rec['key']}: acc {acc}, {rec['wall_seconds']:.0f} s", flush=True)
    print(f"sweep: {len(read(path)['runs'])} points in {path.name}; this run took "
          f"{(time.perf_counter() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
