"""The stored runs behind notebook 06 (`make sweep-06`): the same LoRA four ways on all-MiniLM-L6-v2 / TREC-6.

A *point* is one training run: kind × seed, kind one of `helpers.text.LORA_KINDS` but "ours":
"peft" (peft's LoraConfig / get_peft_model, the head in modules_to_save), "qlora-ours"
(every linear layer of the encoder in our NF4 with double quantisation, LoRA on top) and "qlora-bnb"
(transformers' BitsAndBytesConfig 4-bit NF4 + double quantisation on the CPU, peft on top). Every kind is the
LoRA of notebook 05: W_q and W_v of all six layers, r = 8, α = 8, a trainable head (76,038 numbers), trained with
notebook 05's settings (`sweeps/minilm.py`: 200 steps of batch 16, Adam at a constant lr, test accuracy every 50
steps) at the learning rate notebook 05's sweep chose for LoRA r = 8 on its validation split (3e-3; this sweep
reads it from sweeps/minilm_results.json rather than choosing again). Seeds 0, 1, 2. "ours" (helpers.lora) is not
run again: `lora_classifier("ours", seed)` builds exactly notebook 05's LoRA r = 8 model (the same head, the same A
from the same seed; tests/test_minilm_interop.py checks it), trained by the same call, so its runs are notebook 05's
stored `grid/lora/pre-trained/8/<seed>`.

Results go to sweeps/minilm_practice_results.json, written after every point (sweeps/_results.py: temp file, then
os.replace) under a lock: an interrupted sweep keeps what it finished, a rerun skips it, and `--only REGEX` lets
two processes share the list (`make sweep-06` runs two). s/step here is per process: the notebook times the
kinds side by side in one process for any ratio.

`--memory` adds the peak resident memory (ru_maxrss of a fresh process, `helpers.memory.peak_rss`) of training
steps at batch 16 x 32 tokens for full fine-tuning, LoRA and QLoRA (ours and bitsandbytes), with and without gradient
checkpointing, and of the same process that only loads the model ("load"): the "memory" list of the file.
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

import torch  # noqa: E402

from sweeps._results import locked, write_json  # noqa: E402
from sweeps.minilm import BATCH, EVAL_BATCH, EVAL_EVERY, LORA_ALPHA, LORA_TARGETS, STEPS, load_data  # noqa: E402

RESULTS = ROOT / "sweeps" / "minilm_practice_results.json"
SEEDS = (0, 1, 2)
RANK = 8


def lora_lr() -> float:
    """Notebook 05's choice for LoRA r = 8 (pre-trained): the lr with the best validation accuracy in its sweep."""
    runs = json.loads((ROOT / "sweeps" / "minilm_results.json").read_text())["runs"]
    rows = [p for p in runs if p["key"].startswith("lr/lora/pre-trained/8/")]
    return max(rows, key=lambda p: p["val_acc"])["lr"]


def config() -> dict:
    return {"steps": STEPS, "batch_size": BATCH, "eval_every": EVAL_EVERY, "r": RANK, "lora_alpha": LORA_ALPHA,
            "lora_targets": list(LORA_TARGETS), "lr": lora_lr(),
            "lr_from": "sweeps/minilm_results.json, lr/lora/pre-trained/8",
            "max_len": 32, "optimizer": "adam (constant lr)", "seeds": list(SEEDS)}


def key(kind: str, seed: int) -> str:
    return f"{kind}/{seed}"


def run_point(kind: str, seed: int, data: dict, cfg: dict) -> dict:
    from helpers.text import lora_classifier
    from helpers.training import train
    t0 = time.perf_counter()
    model = lora_classifier(kind, seed=seed, r=RANK, alpha=LORA_ALPHA, targets=LORA_TARGETS)
    X, y = data["train"]
    h = train(model, X, y, steps=cfg["steps"], lr=cfg["lr"], batch_size=BATCH, seed=seed, eval_data=data["test"],
              eval_every=EVAL_EVERY, eval_batch_size=EVAL_BATCH, progress=False)
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "eval_steps": h["step"],
            "acc": h["test_acc"], "final_acc": h["test_acc"][-1], "loss": h["loss"], "train_seconds": h["seconds"],
            "s_per_step": h["seconds"][-1] / h["step"][-1], "wall_seconds": time.perf_counter() - t0}


MEMORY_METHODS = {"full": "full", "lora": "ours", "qlora": "qlora-ours", "qlora-bnb": "qlora-bnb"}
MEMORY_STEPS = 3
MEMORY_CODE = """
import torch
torch.set_num_threads(1)
from helpers.text import SentenceClassifier, load_minilm, lora_classifier
from helpers.training import OPTIMIZERS, training_step
method, checkpointing, steps = {method!r}, {checkpointing!r}, {steps!r}
model = SentenceClassifier(load_minilm()[0], 6) if method == "full" else lora_classifier(method)
if checkpointing:
    model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{"use_reentrant": False}})
model.train()
g = torch.Generator().manual_seed(0)
X = torch.stack([torch.randint(1000, 30000, (16, 32), generator=g), torch.ones(16, 32, dtype=torch.long)], 1).float()
y = torch.arange(16) % 6
opt = OPTIMIZERS["adam"]([p for p in model.parameters() if p.requires_grad], lr=1e-4)
for _ in range(steps):
    training_step(model, opt, X, y)
"""


def memory_code(kind: str, checkpointing: bool, steps: int = MEMORY_STEPS) -> str:
    """The child process's code: load `kind` (full / a lora_classifier kind), `steps` Adam steps at 16 x 32 tokens."""
    return MEMORY_CODE.format(method=kind, checkpointing=checkpointing, steps=steps)


def run_memory(path: Path) -> None:
    from helpers.memory import peak_rss
    todo = [("load", "full", False, 0)] + [(name, kind, ckpt, MEMORY_STEPS) for name, kind in MEMORY_METHODS.items()
                                           for ckpt in (False, True)]
    for name, kind, ckpt, steps in todo:
        k = f"rss/{name}/{'checkpointing' if ckpt else 'plain'}"
        with locked(path):
            if k in {m["key"] for m in read(path).get("memory", [])}:
                continue
        rss = peak_rss(memory_code(kind, ckpt, steps), timeout=1800)
        rec = {"key": k, "method": name, "checkpointing": ckpt, "steps": steps, "peak_rss_bytes": rss,
               "finished": time.strftime("%Y-%m-%d %H:%M")}
        with locked(path):
            results = read(path)
            results.setdefault("memory", []).append(rec)
            write_json(path, results, indent=1)
        print(f"{k}: {rss / 2**20:.0f} MiB", flush=True)


def read(path: Path) -> dict:
    if not path.exists():
        return {"config": config(), "runs": []}
    data = json.loads(path.read_text())
    if data.get("config") != config():
        raise SystemExit(f"{path} was written with another configuration: move it away to start over, or restore "
                         "the settings it records")
    return data


def main() -> None:
    from helpers.text import LORA_KINDS
    kinds_run = [k for k in LORA_KINDS if k != "ours"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--only", default=None, help="a regex: run only the points whose key (kind/seed) matches")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the list, one thread each (default 1)")
    ap.add_argument("--memory", action="store_true", help="measure peak RSS per method (fresh processes) instead")
    ap.add_argument("--smoke", action="store_true", help="4 steps per run (to check the script; use another --results)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    global STEPS, EVAL_EVERY
    if args.smoke:
        STEPS, EVAL_EVERY = 4, 2
        if args.results.resolve() == RESULTS:
            raise SystemExit("--smoke writes 4-step results: pass another --results file")
    path = args.results.resolve()
    if args.workers > 1:  # one process per kind pair, each with its own share of the list
        kinds = [kinds_run[i::args.workers] for i in range(args.workers)]
        extra = ["--smoke"] if args.smoke else []
        procs = [subprocess.Popen([sys.executable, __file__, "--results", str(path), "--only",
                                   "^(" + "|".join(re.escape(k) for k in ks) + ")/"] + extra) for ks in kinds]
        codes = [p.wait() for p in procs]
        raise SystemExit(1 if any(codes) else 0)
    with locked(path):
        cfg = read(path)["config"]
        write_json(path, read(path), indent=1)
    if args.memory:
        run_memory(path)
        return
    data = load_data()
    env = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "threads": 1,
           "machine": platform.machine()}
    for seed in SEEDS:
        for kind in kinds_run:
            k = key(kind, seed)
            if args.only and not re.search(args.only, k):
                continue
            with locked(path):
                if k in {p["key"] for p in read(path)["runs"]}:
                    continue
            print(f"[{os.getpid()}] {k} ...", flush=True)
            rec = {"key": k, "kind": kind, "seed": seed, **run_point(kind, seed, data, cfg), **env,
                   "finished": time.strftime("%Y-%m-%d %H:%M")}
            with locked(path):
                results = read(path)
                if k not in {p["key"] for p in results["runs"]}:
                    results["runs"].append(rec)
                    write_json(path, results, indent=1)
            print(f"[{os.getpid()}] {k}: acc {rec['final_acc']:.3f}, {rec['s_per_step']:.3f} s/step, "
                  f"{rec['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
