"""The sweep behind notebook 01 (`make sweep-01`): every PEFT family at every learning rate of one grid, five seeds,
on two source -> target pairs; what each learns of the target and what it keeps of the source.

A *run* is one training: pair x method x lr x seed.

- pairs (`helpers.data.transfer_pair`): "digits->parity" (pre-trained on the ten digits of 3,000 images, adapted
  to even/odd with 100 images of a pool the source never saw: a related task with few labels) and "0-4->5-9"
  (pre-trained on digits 0-4, adapted to 5-9 with 1,600 images: an unrelated pair). The source model: an MLP
  784-200-200-n_source, 20 epochs of Adam at 1e-3, seed 0.
- methods: "from scratch" (a fresh MLP, every parameter trained), "head on random features" (the same fresh MLP,
  only its head trained), and from the pre-trained body with a fresh head: "head only", "BitFit" (every bias and
  the head), "LoRA r=1/4/8" (adapters on fc1 and fc2, alpha = 8 at every rank, plus the head), "full fine-tuning".
  The seed draws the fresh head (or the fresh MLP: mlp(seed=100 + seed)), LoRA's A and the batch order.
- every run records its validation accuracy (on the target's validation split, which chooses the learning rate),
  its target test accuracy and, for the methods that start from the pre-trained body, its source test accuracy
  with the source head put back on the adapted body (what is left of the source task: forgetting).

Results go to sweeps/peft_motivation_results.json, rewritten atomically after every run (sweeps/_results.py): an
interrupted sweep keeps what it finished and a rerun skips it. One process, one thread.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from helpers.data import TRANSFER_PAIRS, transfer_pair  # noqa: E402
from helpers.lora import add_lora  # noqa: E402
from helpers.models import mlp, with_new_head  # noqa: E402
from helpers.training import TrainingDiverged, evaluate, train  # noqa: E402
from sweeps._results import write_json  # noqa: E402

RESULTS = ROOT / "sweeps" / "peft_motivation_results.json"
METHODS = ("from scratch", "head on random features", "head only", "BitFit", "LoRA r=1", "LoRA r=4", "LoRA r=8",
           "full fine-tuning")
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SEEDS = (0, 1, 2, 3, 4)
ALPHA = 8
TRAINING = {"digits->parity": {"epochs": 30, "batch_size": 32}, "0-4->5-9": {"epochs": 20, "batch_size": 128}}
PRETRAIN = {"epochs": 20, "lr": 1e-3, "seed": 0}


def pretrain(data: dict) -> torch.nn.Module:
    model = mlp((784, 200, 200, data["n_source"]), seed=PRETRAIN["seed"])
    train(model, *data["source"], epochs=PRETRAIN["epochs"], lr=PRETRAIN["lr"], seed=PRETRAIN["seed"], progress=False)
    return model


def build(method: str, pretrained: torch.nn.Module, n_target: int, seed: int) -> torch.nn.Module:
    """A model whose trainable parameters are the method's (the notebook's `build` does the same)."""
    if method in ("from scratch", "head on random features"):
        model = mlp((784, 200, 200, n_target), seed=100 + seed)
        model.requires_grad_(method == "from scratch")
        model.head.requires_grad_(True)
        return model
    model = with_new_head(copy.deepcopy(pretrained), n_target, seed=seed).requires_grad_(False)
    if method == "full fine-tuning":
        model.requires_grad_(True)
    elif method == "BitFit":
        for name, p in model.named_parameters():
            p.requires_grad = name.endswith("bias")
    elif method.startswith("LoRA"):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            add_lora(model, ["fc1", "fc2"], r=int(method.removeprefix("LoRA r=")), alpha=ALPHA)
    model.head.requires_grad_(True)
    return model


def source_accuracy_after(model: torch.nn.Module, pretrained: torch.nn.Module, source_test) -> float:
    """Source test accuracy of the adapted body with the source head put back."""
    probe = copy.deepcopy(model)
    probe.head = copy.deepcopy(pretrained.head)
    return evaluate(probe, *source_test)


def key(pair: str, method: str, lr: float, seed: int) -> str:
    return f"{pair}|{method}|{lr:g}|{seed}"


def plan() -> list[tuple]:
    return [(p, m, lr, s) for p in TRANSFER_PAIRS for m in METHODS for lr in LRS for s in SEEDS]


def config() -> dict:
    return {"pairs": list(TRANSFER_PAIRS), "methods": list(METHODS), "lrs": list(LRS), "seeds": list(SEEDS),
            "alpha": ALPHA, "training": TRAINING, "pretrain": PRETRAIN, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(), "threads": 1}


def run_one(pair, method, lr, seed, data, pretrained) -> dict:
    model = build(method, pretrained, data["n_target"], seed)
    t0 = time.perf_counter()
    try:
        train(model, *data["fit"], lr=lr, seed=seed, progress=False, **TRAINING[pair])
    except TrainingDiverged:
        return {"key": key(pair, method, lr, seed), "pair": pair, "method": method, "lr": lr, "seed": seed,
                "val_acc": None, "target_acc": None, "source_acc": None, "diverged": True}
    scratch = method in ("from scratch", "head on random features")
    return {"key": key(pair, method, lr, seed), "pair": pair, "method": method, "lr": lr, "seed": seed,
            "val_acc": evaluate(model, *data["val"]), "target_acc": evaluate(model, *data["test"]),
            "source_acc": None if scratch else source_accuracy_after(model, pretrained, data["source_test"]),
            "diverged": False, "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    cfg = config()
    if stored and {k: v for k, v in stored["config"].items() if k not in ("torch", "cpu_capability", "machine")} != \
            {k: v for k, v in cfg.items() if k not in ("torch", "cpu_capability", "machine")}:
        raise SystemExit(f"{RESULTS} was made with other settings: move it away to start over")
    runs = stored.get("runs", [])
    done = {r["key"] for r in runs}
    pretrained_acc = stored.get("pretrained_source_acc", {})
    todo = [r for r in plan() if key(*r) not in done]
    print(f"{len(done)} runs done, {len(todo)} to go")
    t0 = time.time()
    for pair in TRANSFER_PAIRS:
        mine = [r for r in todo if r[0] == pair]
        if not mine:
            continue
        data = transfer_pair(pair)
        pretrained = pretrain(data)
        pretrained_acc[pair] = evaluate(pretrained, *data["source_test"])
        for i, (p, method, lr, seed) in enumerate(mine, 1):
            runs.append(run_one(p, method, lr, seed, data, pretrained))
            write_json(RESULTS, {"config": cfg, "pretrained_source_acc": pretrained_acc, "runs": runs})
            if i % 20 == 0 or i == len(mine):
                print(f"{pair}: {i}/{len(mine)} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
