"""The sweep behind notebook 07 (`make sweep-07`): a task's intrinsic dimension against the LoRA rank it needs.

A *point* is one training run: stage × task × start × method × size × seed (× lr in the lr stage).

MLP tasks (helpers.idrank.mlp_tasks: parity, >= 5, digit mod 3, the ten digits, digits rotated by 90 degrees, parity
from 200 images), each fine-tuned from the 784-200-200 network pre-trained on the other half of the training images
("pre-trained"), and three of them from a fresh network ("random", mlp(seed=100 + seed)):

- methods: "full" (every parameter: the baseline), "head" (the head alone: the reference, what the gap rule must
  not already count as learning), "lora_head" (LoRA of rank r on fc1 and fc2, α = 8, with the head and every bias
  trained in full, as peft's modules_to_save=["head"] and bias="all"; r = 0 is the head and the biases alone),
  "subspace" (Fastfood θ^(d) over all parameters, as notebooks 03 and 04), "vera" (peft's VeraConfig on fc1 and fc2,
  the same head and biases trained in full; its trainable count is read the same way).
- stage "lr": each (task, start, method) tries LR_GRID on one seed, training on the task's "fit" split and scoring its
  validation split (never the test set), at the size LR_SIZE; a best lr at an end of the tried range gets the next
  step of LR_LADDER beyond it (at most MAX_EXTEND steps). One lr per method serves all its sizes (as notebook 04).
- stage "final": seeds 0-2 at the chosen lr, STEPS Adam steps of batch BATCH on the task's training images, test
  accuracy after the last step (the subspace's lr scaled by √(LR_SIZE / d), helpers.intrinsic.subspace_lr, as
  notebook 03 does: Adam's step in θ^(D) grows as √d, and one fixed lr had the d = 25,600 runs fall to 79 % on
  parity). Sizes: the coarse grids (LoRA ranks and d in factor-2 steps), then, once a method's
  coarse grid, full and head are all done, the geometric midpoints of the three grid intervals around each
  crossing of its seed-mean curve with the gap rule's thresholds (head + level × (full - head), level 0.5 and 0.9),
  so that the grid is √2-dense where the answers are read.

Text tasks on all-MiniLM-L6-v2 (notebook 05's setting: max_len 32, batch 16, 200 steps): SMS spam and movie-review
snippets (helpers.idrank.load_text_task) get head, full, LoRA (W_q, W_v, α = 8, the head trained) at TEXT_RANKS, SAID
at TEXT_DIMS and VeRA at TEXT_VERA_RANKS, each at the rate its own lr stage chose (TEXT_LR_GRID at TEXT_LR_SIZE, seed
0, TEXT_LR_STEPS steps on 1,500 training texts, scored on the other 500; extended at an edge as the MLP grids are).
TREC-6's head, full, LoRA and SAID runs are notebook 05's stored sweeps (sweeps/minilm.py's rates, chosen on TREC-6's
validation split), so here it only gets VeRA (its lr chosen on that split) at TEXT_VERA_RANKS. SAID's lr is the same
at every d, as in minilm.py. Text runs are scored once, after the last step, on their test set. A final run is done
when its key and its lr are stored; one made at another lr (SMS spam and movie runs first made at TREC-6's rates) is
re-run and the old record moves to the file's "superseded" list. Last, the control "said_lrd" on SMS spam and the movie
snippets: SAID at TEXT_LRD_DIMS with its chosen lr scaled by √(1000 / d) (helpers.intrinsic.subspace_lr), because at
one lr for every d it fell at the largest d. The text grids are 4x apart (a run costs minutes), so once a text
task's grid and baselines are done, each method gets one more size per crossing (`text_refinements`).

Priority order, so that an interrupted sweep leaves a coherent prefix: every MLP task's full grid (parity, >= 5 and
rotated digits from both starts first, then the other pre-trained tasks), then the text tasks (TREC-6's VeRA,
then the other tasks' lr stages and baselines). Results go to sweeps/id_vs_rank_results.json, written atomically
after every point (sweeps/_results.py; a file written with other settings is refused). `--workers N` runs N
one-thread worker processes that claim points under a lock (a dead process's claim is released); the file
sweeps/id_vs_rank_results.stop makes every worker stop before its next point. `--only REGEX` restricts a run to
the matching keys. Once nothing is left, runs the plan no longer holds move to "superseded" (`retire_unplanned`).
"""
from __future__ import annotations

import argparse
import json
import math
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

RESULTS = ROOT / "sweeps" / "id_vs_rank_results.json"
STEPS, BATCH, ALPHA, SEEDS, LEVEL = 150, 128, 8, (0, 1, 2), 0.9
REFINE_LEVELS = (0.5, 0.9)  # the grid is made √2-dense around the crossings of these levels of the gap
RANDOM_SEED_OFFSET = 100
PRETRAINED_TASKS = ("parity", "ge5", "rot90", "mod3", "parity200", "digits")
RANDOM_TASKS = ("parity", "ge5", "rot90")
# priority: three tasks from both starts first (the random-weights comparison needs both), then the other tasks
MLP_ORDER = ([("pre-trained", t) for t in PRETRAINED_TASKS[:3]] + [("random", t) for t in RANDOM_TASKS]
             + [("pre-trained", t) for t in PRETRAINED_TASKS[3:]])
RANKS = (0, 1, 2, 4, 8, 16, 32, 64, 128)  # LoRA with a trainable head: coarse grid (r = 0: head and biases)
DIMS = (25, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600)  # random subspace: coarse grid
VERA_RANKS = (1, 4, 16, 64, 256, 1024)
LR_SIZE = {"full": 0, "head": 0, "lora_head": 8, "subspace": 400, "vera": 256}
LR_GRID = {"full": (1e-4, 3e-4, 1e-3, 3e-3), "head": (1e-3, 3e-3, 1e-2, 3e-2),
           "lora_head": (1e-3, 3e-3, 1e-2, 3e-2), "subspace": (3e-3, 1e-2, 3e-2, 1e-1),
           "vera": (3e-3, 1e-2, 3e-2, 1e-1)}
LR_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
MAX_EXTEND = 2
# text (MiniLM): sweeps/minilm.py's settings and chosen learning rates (pre-trained weights)
TEXT_TASKS = ("sms_spam", "movie")
TEXT_STEPS, TEXT_LR_STEPS, TEXT_BATCH, TEXT_EVAL_BATCH = 200, 100, 16, 64
TEXT_LR = {"head": 1e-2, "full": 1e-4, "lora": 3e-3, "said": 1e-1}
TEXT_HEAD_LR, TEXT_LAMBDA_LR, TEXT_LORA_TARGETS = 1e-2, 1e-2, ("query", "value")
TEXT_RANKS, TEXT_DIMS = (1, 4, 16), (250, 1000, 4000, 16000)  # 16,000: above LoRA r = 1 (9,986 numbers)
TEXT_VERA_RANKS, TEXT_VERA_LR_GRID = (256, 16, 1024, 64), (3e-3, 1e-2, 3e-2)  # lr chosen at the first
TEXT_GRIDS = {"lora": TEXT_RANKS, "said": TEXT_DIMS, "vera": tuple(sorted(TEXT_VERA_RANKS))}
# SMS spam and the movie snippets' own lr stage (500 of their 2,000 training texts held out, stratified, as minilm.py
# does for TREC-6): three rates around TREC-6's choice per method, seed 0, TEXT_LR_STEPS steps, extended along
# LR_LADDER as the MLP grids are when the best rate sits at an edge. Their final runs use the rates it chooses; a final
# run first made at TREC-6's rate and re-run at the task's own is kept in the file's "superseded" list.
TEXT_LR_GRID = {"head": (3e-3, 1e-2, 3e-2), "full": (3e-5, 1e-4, 3e-4), "lora": (1e-3, 3e-3, 1e-2),
                "said": (3e-2, 1e-1, 3e-1), "vera": (1e-2, 3e-2, 1e-1)}
TEXT_LR_SIZE = {"head": 0, "full": 0, "lora": 4, "said": 1000, "vera": 256}
TEXT_N_CLASSES = {"trec6": 6, "sms_spam": 2, "movie": 2}
# the control for SAID's fall at large d on SMS spam and the movie snippets (one lr for every d makes Adam's step in
# θ^(D) grow as √d): "said_lrd", SAID with its chosen lr scaled by √(TEXT_LR_SIZE["said"] / d) (helpers.intrinsic.
# subspace_lr, as the MLP subspace runs and notebook 05's said_lrd control), at the other sizes of its grid
TEXT_LRD_DIMS = (250, 4000, 16000)  # d = 1,000: the same run as SAID's (the factor is 1)


def config() -> dict:
    return {"steps": STEPS, "batch_size": BATCH, "lora_alpha": ALPHA, "seeds": list(SEEDS), "level": LEVEL,
            "rule": "gap: head + level x (full - head), seed means, log-interpolated first crossing",
            "refine_levels": list(REFINE_LEVELS),
            "pretrained_tasks": list(PRETRAINED_TASKS), "random_tasks": list(RANDOM_TASKS),
            "mlp_order": [list(o) for o in MLP_ORDER],
            "random_seed_offset": RANDOM_SEED_OFFSET, "ranks": list(RANKS), "dims": list(DIMS),
            "vera_ranks": list(VERA_RANKS), "lr_size": LR_SIZE,
            "subspace_lr": "chosen lr x sqrt(lr_size / d) (helpers.intrinsic.subspace_lr, as notebook 03)",
            "lr_grid": {m: list(v) for m, v in LR_GRID.items()}, "lr_ladder": list(LR_LADDER),
            "max_extend": MAX_EXTEND, "lora_head": {"targets": ["fc1", "fc2"], "modules_to_save": ["head"],
                                                    "bias": "all"},
            "vera": {"targets": ["fc1", "fc2"], "modules_to_save": ["head"], "bias": "all", "d_initial": 0.1,
                     "projection_prng_key": "seed"},
            "optimizer": "adam (constant lr)", "eval": "test accuracy after the last step",
            "text": {"tasks": list(TEXT_TASKS), "steps": TEXT_STEPS, "lr_steps": TEXT_LR_STEPS,
                     "batch_size": TEXT_BATCH, "max_len": 32, "lr": TEXT_LR, "head_lr": TEXT_HEAD_LR,
                     "lambda_lr": TEXT_LAMBDA_LR, "lora_targets": list(TEXT_LORA_TARGETS), "lora_alpha": ALPHA,
                     "ranks": list(TEXT_RANKS), "dims": list(TEXT_DIMS), "vera_ranks": list(TEXT_VERA_RANKS),
                     "vera_lr_grid": list(TEXT_VERA_LR_GRID), "vera_lr_on": "trec6 validation split (minilm.py)",
                     "refine": "sms_spam, movie: lora, said, vera get the geometric midpoint of the grid interval "
                               "holding each crossing of the refine levels, or a quarter of the first size when "
                               "the first size already crosses (said, vera)",
                     "said_lrd": {"dims": list(TEXT_LRD_DIMS), "tasks": list(TEXT_TASKS),
                                  "lr": "said's chosen lr x sqrt(1000 / d) (helpers.intrinsic.subspace_lr)"},
                     "own_lr_stage": {"lr_grid": {m: list(v) for m, v in TEXT_LR_GRID.items()},
                                      "size": TEXT_LR_SIZE, "n_val": 500, "val_seed": 0,
                                      "extension": "as the MLP grids (LR_LADDER, at most max_extend steps)",
                                      "used": "sms_spam and movie final runs use the rate it chooses (TREC-6's "
                                              "final runs: minilm.py's rates); SAID's lr is the same at every d, "
                                              "as in minilm.py"}}}


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------

def key(p: dict) -> str:
    k = "/".join(str(p[f]) for f in ("stage", "task", "start", "method", "size", "seed"))
    return k + (f"/lr={p['lr']:g}" if p["stage"] == "lr" else "")


def _lr_scores(runs: dict, task: str, start: str, method: str) -> dict[float, float]:
    return {r["lr"]: r["val_acc"] for r in runs.values() if r["stage"] == "lr" and r["task"] == task
            and r["start"] == start and r["method"] == method}


def chosen_lr(runs: dict, task: str, start: str, method: str) -> float | None:
    """The lr with the best validation accuracy (ties: the smaller), once the grid and every extension it called
    for are done; None before. TREC-6: minilm.py's rates, VeRA's from its own lr stage on TREC-6's split."""
    if task == "trec6":
        if method != "vera":
            return TEXT_LR[method]
        scores = _lr_scores(runs, "trec6", "pre-trained", "vera")
        if not set(TEXT_VERA_LR_GRID) <= set(scores):
            return None
        return max(sorted(scores), key=lambda lr: scores[lr])
    if method == "said_lrd":  # SAID's rate, scaled per d when the run is made
        return chosen_lr(runs, task, start, "said")
    grid = (TEXT_LR_GRID if task in TEXT_N_CLASSES else LR_GRID)[method]
    scores = _lr_scores(runs, task, start, method)
    if not set(grid) <= set(scores) or _extension(scores, grid):
        return None
    return max(sorted(scores), key=lambda lr: scores[lr])


def _extension(scores: dict, grid: tuple) -> float | None:
    """The next lr to try when the best tried lr is at an end of the tried range (None if none is due); at most
    MAX_EXTEND steps of LR_LADDER beyond `grid`, the method's lr grid."""
    best = max(sorted(scores), key=lambda lr: scores[lr])
    tried = sorted(scores)
    for edge, step in ((tried[-1], 1), (tried[0], -1)):
        base = LR_LADDER.index(grid[-1 if step == 1 else 0])
        nxt = LR_LADDER.index(best) + step
        if best == edge and 0 <= nxt < len(LR_LADDER) and abs(nxt - base) <= MAX_EXTEND:
            return LR_LADDER[nxt]
    return None


def _mean_acc(runs: dict, task: str, start: str, method: str, size: int) -> float | None:
    accs = [runs.get(key(dict(stage="final", task=task, start=start, method=method, size=size, seed=s)))
            for s in SEEDS]
    if any(a is None for a in accs):
        return None
    return float(np.mean([a["test_acc"] for a in accs]))


def _first_hits(runs: dict, task: str, start: str, method: str, grid: tuple) -> list[int]:
    """For each level of REFINE_LEVELS whose threshold (head + level × (full − head), seed means) the method's curve
    crosses, the index of the first grid size at or above it; [] until the grid and both baselines are done."""
    full, head = (_mean_acc(runs, task, start, m, 0) for m in ("full", "head"))
    curve = [_mean_acc(runs, task, start, method, s) for s in grid]
    if full is None or head is None or any(c is None for c in curve) or full <= head:
        return []
    hits = ([i for i, c in enumerate(curve) if c >= head + level * (full - head)] for level in REFINE_LEVELS)
    return [hit[0] for hit in hits if hit]


def refinements(runs: dict, task: str, start: str, method: str, grid: tuple) -> list[int]:
    """Midpoints of the grid intervals around the seed-mean crossings of the gap rule's thresholds
    (head + level × (full − head) for each of REFINE_LEVELS: the interval of each crossing and its two neighbours),
    once the coarse grid and the full and head baselines are done."""
    out = []
    for first in _first_hits(runs, task, start, method, grid):
        for j in (first - 2, first - 1, first):
            if 0 <= j < len(grid) - 1 and grid[j] > 0:
                mid = int(round(math.sqrt(grid[j] * grid[j + 1])))
                if grid[j] < mid < grid[j + 1] and mid not in out:
                    out.append(mid)
    return sorted(out)


def text_refinements(runs: dict, task: str, method: str) -> list[int]:
    """A text task's extra sizes, once its coarse grid and its full and head baselines are done: for each level of
    REFINE_LEVELS, the geometric midpoint of the grid interval holding the seed-mean crossing; when the first size
    already crosses, a quarter of it (SAID and VeRA; LoRA's first rank is 1). Text runs cost minutes, so one size per
    crossing, where the MLP grid gets three."""
    grid = TEXT_GRIDS[method]
    out = []
    for i in _first_hits(runs, task, "pre-trained", method, grid):
        size = int(round(math.sqrt(grid[i - 1] * grid[i]))) if i > 0 else (grid[0] // 4 if method != "lora" else 0)
        if size > 0 and size not in grid and size not in out:
            out.append(size)
    return sorted(out)


def _lr_stage(runs: dict, task: str, start: str, grids: dict, sizes: dict) -> list[dict]:
    """A task's lr stage: each method's grid, then one step further along LR_LADDER while the best rate sits at an
    edge (at most MAX_EXTEND steps)."""
    out = []
    for method, grid in grids.items():
        scores = _lr_scores(runs, task, start, method)
        lrs = list(grid)
        if set(grid) <= set(scores):
            lrs = sorted(scores)
            nxt = _extension(scores, grid)
            lrs += [nxt] if nxt is not None else []
        out += [dict(stage="lr", task=task, start=start, method=method, size=sizes[method], seed=0, lr=lr)
                for lr in lrs]
    return out


def _mlp_plan(runs: dict, task: str, start: str) -> list[dict]:
    out = _lr_stage(runs, task, start, LR_GRID, LR_SIZE)
    grids = {"full": (0,), "head": (0,), "lora_head": RANKS, "subspace": DIMS, "vera": VERA_RANKS}
    for method, grid in grids.items():
        sizes = list(grid)
        if method in ("lora_head", "subspace"):
            sizes += refinements(runs, task, start, method, grid)
        lr = chosen_lr(runs, task, start, method)
        out += [dict(stage="final", task=task, start=start, method=method, size=s, seed=seed, lr=lr)
                for s in sizes for seed in SEEDS]
    return out


def plan(runs: dict) -> list[dict]:
    """Every point in priority order; a final point carries lr=None until its lr stage is done."""
    out = []
    for start, task in MLP_ORDER:
        out += _mlp_plan(runs, task, start)
    text = []

    def pts(task, method, sizes):
        return [dict(stage="final", task=task, start="pre-trained", method=method, size=s, seed=seed,
                     lr=chosen_lr(runs, task, "pre-trained", method)) for s in sizes for seed in SEEDS]
    # TREC-6 first: its head, full, LoRA and SAID runs are stored (notebook 05), VeRA is all it lacks
    text += [dict(stage="lr", task="trec6", start="pre-trained", method="vera", size=TEXT_VERA_RANKS[0], seed=0,
                  lr=lr) for lr in TEXT_VERA_LR_GRID]
    text += pts("trec6", "vera", TEXT_VERA_RANKS[:2])
    for task in TEXT_TASKS:  # then the other tasks' own lr stages (on their validation splits) and baselines
        text += _lr_stage(runs, task, "pre-trained", TEXT_LR_GRID, TEXT_LR_SIZE)
    for task in TEXT_TASKS:
        text += pts(task, "head", (0,)) + pts(task, "full", (0,))
    for task in TEXT_TASKS:
        text += pts(task, "lora", (TEXT_RANKS[1],)) + pts(task, "said", (TEXT_DIMS[1],))
    for task in TEXT_TASKS:
        text += pts(task, "lora", (TEXT_RANKS[0], TEXT_RANKS[2])) + pts(task, "said", TEXT_DIMS[::2])
    for task in TEXT_TASKS:
        text += pts(task, "vera", TEXT_VERA_RANKS[:2])
    text += pts("trec6", "vera", TEXT_VERA_RANKS[2:])
    for task in TEXT_TASKS:
        text += pts(task, "vera", TEXT_VERA_RANKS[2:])
    for task in TEXT_TASKS:  # SAID beyond LoRA's smallest count (added once d = 4,000 had not reached half the gap)
        text += pts(task, "said", TEXT_DIMS[3:])
    for task in TEXT_TASKS:  # the sizes around each crossing
        for method in TEXT_GRIDS:
            text += pts(task, method, text_refinements(runs, task, method))
    for task in TEXT_TASKS:  # last: SAID with its lr scaled per d, where one lr for every d had it fall
        text += pts(task, "said_lrd", TEXT_LRD_DIMS)
    return out + text


def retire_unplanned(results: dict) -> dict:
    """Once the plan is complete: runs it no longer holds (a refined size whose crossing moved when a baseline was
    re-run at its task's own lr) move from "runs" to "superseded", so that "runs" is exactly the plan."""
    runs = {r["key"]: r for r in results["runs"]}
    planned = {key(p) for p in plan(runs)}
    gone = [r for r in results["runs"] if r["key"] not in planned]
    if not gone:
        return results
    return {**results, "runs": [r for r in results["runs"] if r["key"] in planned],
            "superseded": results.get("superseded", []) + gone}


def done(p: dict, runs: dict) -> bool:
    """Whether planned point `p` is stored: an lr-stage point by its key; a final point by its key and its lr (a
    final run made at another rate, e.g. TREC-6's before the task's own lr stage was read, is due again)."""
    r = runs.get(key(p))
    if r is None or p["stage"] == "lr":
        return r is not None
    return p["lr"] is not None and math.isclose(r["lr"], p["lr"], rel_tol=1e-9)


# ---------------------------------------------------------------------------------------------
# One point
# ---------------------------------------------------------------------------------------------

def run_mlp(p: dict, data: dict) -> dict:
    from helpers.idrank import mlp_model
    from helpers.intrinsic import subspace_lr
    from helpers.training import TrainingDiverged, evaluate, train
    task = data["tasks"][p["task"]]
    model = mlp_model(p["start"], p["method"], p["size"], p["seed"], task["n_out"], data["body"], alpha=ALPHA,
                      random_seed_offset=RANDOM_SEED_OFFSET)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    X, y = task["fit" if p["stage"] == "lr" else "train"]
    lr = p["lr"]
    if p["method"] == "subspace":  # Adam's step in θ^(D) grows as √d: one lr chosen at LR_SIZE, scaled per d
        lr = subspace_lr(lr, p["size"], LR_SIZE["subspace"])
    t0 = time.perf_counter()
    try:
        train(model, X, y, steps=STEPS, lr=lr, batch_size=BATCH, seed=p["seed"], progress=False)
    except TrainingDiverged as e:
        return {"trainable": trainable, "diverged": str(e), "val_acc": 0.0 if p["stage"] == "lr" else None,
                "test_acc": None, "wall_seconds": time.perf_counter() - t0}
    acc = evaluate(model, *task["val" if p["stage"] == "lr" else "test"])
    return {"trainable": trainable, ("val_acc" if p["stage"] == "lr" else "test_acc"): acc,
            "wall_seconds": time.perf_counter() - t0}


def text_data(name: str) -> dict:
    """Token features of a text task: {"train", "test", "fit", "val"} (the validation split: sweeps.minilm.val_mask)."""
    from helpers.text import load_minilm, sort_by_length
    if name == "trec6":
        from sweeps.minilm import load_data
        d = load_data()
        return {"train": d["train"], "test": d["test"], "fit": d["fit"], "val": d["val"]}
    from helpers.idrank import load_text_task
    from sweeps.minilm import val_mask
    texts, y, texts_test, y_test, _ = load_text_task(name)
    _, tok = load_minilm()
    X, val = tok.features(texts), val_mask(y)
    return {"train": (X, y), "test": sort_by_length(tok.features(texts_test), y_test), "fit": (X[~val], y[~val]),
            "val": sort_by_length(X[val], y[val])}


def text_model(p: dict, encoder):
    from helpers.lora import add_lora
    from helpers.subspace import SubspaceModel
    from helpers.text import SAID_EXCLUDE, SentenceClassifier, said_block
    clf = SentenceClassifier(encoder, TEXT_N_CLASSES[p["task"]], seed=p["seed"])
    m = p["method"]
    if m == "head":
        clf.requires_grad_(False)
        clf.head.requires_grad_(True)
        return clf, None
    if m == "full":
        return clf, {"head": TEXT_HEAD_LR}
    if m == "lora":
        with torch.random.fork_rng():
            torch.manual_seed(p["seed"])
            add_lora(clf, list(TEXT_LORA_TARGETS), r=p["size"], alpha=ALPHA)
        clf.head.requires_grad_(True)
        return clf, None
    if m == "vera":
        from helpers.idrank import with_vera
        return with_vera(clf, p["size"], p["seed"], TEXT_LORA_TARGETS, bias="none"), None
    model = SubspaceModel(clf, p["size"], "fastfood", seed=p["seed"], exclude=SAID_EXCLUDE, rescale=("head",),
                          said=True, groups=said_block, compact=True)
    return model, {"lambdas": TEXT_LAMBDA_LR}


def run_text(p: dict, cache: dict) -> dict:
    from helpers.intrinsic import subspace_lr
    from helpers.text import load_minilm
    from helpers.training import TrainingDiverged, evaluate, train
    if p["task"] not in cache:
        cache[p["task"]] = text_data(p["task"])
    data = cache[p["task"]]
    t0 = time.perf_counter()
    encoder, _ = load_minilm()
    model, lr_for = text_model(p, encoder)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    lr_stage = p["stage"] == "lr"
    X, y = data["fit" if lr_stage else "train"]
    lr = p["lr"] if p["method"] != "said_lrd" else subspace_lr(p["lr"], p["size"], TEXT_LR_SIZE["said"])
    try:
        train(model, X, y, steps=TEXT_LR_STEPS if lr_stage else TEXT_STEPS, lr=lr, lr_for=lr_for,
              batch_size=TEXT_BATCH, seed=p["seed"], progress=False, eval_batch_size=TEXT_EVAL_BATCH)
    except TrainingDiverged as e:
        return {"trainable": trainable, "diverged": str(e), "val_acc": 0.0 if lr_stage else None, "test_acc": None,
                "wall_seconds": time.perf_counter() - t0}
    Xe, ye = data["val" if lr_stage else "test"]
    model.eval()
    acc = evaluate(model, Xe, ye, batch_size=TEXT_EVAL_BATCH)
    out = {"trainable": trainable, ("val_acc" if lr_stage else "test_acc"): acc,
           "wall_seconds": time.perf_counter() - t0}
    if p["method"] in ("said", "said_lrd"):
        out["D"] = model.D
    return out


# ---------------------------------------------------------------------------------------------
# The results file, shared by the workers under a lock
# ---------------------------------------------------------------------------------------------

def read(path: Path) -> dict:
    return read_results(path, config())


def write_json(path: Path, data: dict) -> None:
    _write_json(path, data, indent=1)


def worker(path: Path, only: str | None) -> None:
    from helpers.idrank import mlp_tasks, pretrain_body
    from helpers.training import evaluate
    torch.set_num_threads(1)
    claims_path = path.with_suffix(".claims.json")
    tasks, source = mlp_tasks()
    body = pretrain_body(*source)
    data = {"tasks": tasks, "body": body}
    meta = {"source_train_acc": evaluate(body, *source)}
    text_cache: dict = {}
    env = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "threads": 1,
           "machine": platform.machine()}
    while True:
        if path.with_suffix(".stop").exists():
            print(f"[{os.getpid()}] {path.with_suffix('.stop').name} exists: stopping before the next point",
                  flush=True)
            return
        with locked(path):
            results = read(path)
            runs = {r["key"]: r for r in results["runs"]}
            claims = json.loads(claims_path.read_text()) if claims_path.exists() else {}
            todo = [p for p in plan(runs) if not done(p, runs) and (only is None or re.search(only, key(p)))]
            due = {key(p) for p in todo}
            claims = {k: pid for k, pid in claims.items() if k in due and alive(pid)}
            free = [p for p in todo if key(p) not in claims and p["lr"] is not None]
            if free:
                point = free[0]
                claims[key(point)] = os.getpid()
            write_json(claims_path, claims)
        if not todo:
            return
        if not free and not claims:
            print(f"[{os.getpid()}] {len(todo)} points wait for learning rates or grids outside --only: first "
                  f"{key(todo[0])}", flush=True)
            return
        if not free:
            time.sleep(10)
            continue
        print(f"[{os.getpid()}] {key(point)} ...", flush=True)
        out = run_text(point, text_cache) if point["task"] in TEXT_N_CLASSES else run_mlp(point, data)
        rec = {"key": key(point), **point, **out, **env, "finished": time.strftime("%Y-%m-%d %H:%M")}
        with locked(path):
            results = read(path)
            old = [r for r in results["runs"] if r["key"] == rec["key"] and not math.isclose(r["lr"], rec["lr"])]
            if old:  # made at another lr: kept, out of "runs"
                results["superseded"] = results.get("superseded", []) + old
            results["runs"] = [r for r in results["runs"] if r["key"] != rec["key"]] + [rec]
            results["pretrained"] = meta
            write_json(path, results)
            claims = json.loads(claims_path.read_text()) if claims_path.exists() else {}
            claims.pop(rec["key"], None)
            write_json(claims_path, claims)
        acc = rec.get("val_acc", rec.get("test_acc"))
        print(f"[{os.getpid()}] {rec['key']} lr={point['lr']:g}: acc {acc}, {rec['wall_seconds']:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--workers", type=int, default=2, help="one-thread worker processes (default 2)")
    ap.add_argument("--only", default=None, help="a regex: run only the points whose key matches")
    ap.add_argument("--dry", action="store_true", help="print how many points are planned and done, then stop")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    path = args.results.resolve()
    if args.worker:
        worker(path, args.only)
        return
    with locked(path):
        results = read(path)  # refuses a file from another configuration before anything starts
        write_json(path, results)
    runs = {r["key"]: r for r in results["runs"]}
    todo = [p for p in plan(runs) if not done(p, runs)]
    print(f"{len(runs)} points done, {len(todo)} planned so far (refinements are added as grids finish)", flush=True)
    if args.dry:
        return
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--worker", "--results", str(path)] + (["--only", args.only] if args.only else [])
    procs = []
    for _ in range(args.workers):
        procs.append(subprocess.Popen(cmd))
        time.sleep(5)
    codes = [p.wait() for p in procs]
    with locked(path):
        results = read(path)
        runs = {r["key"]: r for r in results["runs"]}
        left = [key(p) for p in plan(runs) if not done(p, runs)]
        if not left:
            results = retire_unplanned(results)
            write_json(path, results)
    runs = {r["key"]: r for r in results["runs"]}
    print(f"sweep: {len(runs)} points in {path.name}, {len(left)} left; this run took "
          f"{(time.perf_counter() - t0) / 60:.1f} min; worker exit codes {codes}")
    if any(codes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
