"""Speed of our LoRA against peft's on the same MLP, rank and batch, measured side by side in one run.

Prints, per case, (1) our training step ÷ peft's training step (goal ≤ 1.0) and (2) inference of our
merged model ÷ inference of the base model (goal ≤ 1.02), and writes the numbers to benchmarks/lora_step.json.
A training step is helpers.training.training_step (forward + cross-entropy + backward + Adam step), the one train takes.
Timings are interleaved (ours, peft's, ours, ... in alternating order) and summarised by the median, on one
thread so that the other core's load disturbs less. Nothing here asserts a timing.
"""
from __future__ import annotations

import copy
import json
import logging
import platform
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _timing import interleaved, machine, write_text
from helpers.lora import add_lora, merge_and_unload, merge_lora
from helpers.models import mlp
from helpers.training import training_step

CASES = [  # name, MLP sizes, adapted layers, r, batch
    ("notebook 02 MLP", (2, 256, 256, 256, 256, 2), ["fc2", "fc3", "fc4"], 8, 256),
    ("MNIST MLP", (784, 200, 200, 10), ["fc1", "fc2"], 8, 128),
]
REPEATS, STEPS, FORWARDS = 21, 20, 50
OUT = Path(__file__).with_suffix(".json")


def run_case(name, sizes, targets, r, batch):
    import peft

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(batch, sizes[0], generator=g), torch.randint(0, sizes[-1], (batch,), generator=g)
    base = mlp(sizes, seed=0)
    ours = add_lora(copy.deepcopy(base), targets, r=r, alpha=2 * r)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=targets, r=r, lora_alpha=2 * r))
    opts = {m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3) for m in (ours, theirs)}
    for m in (ours, theirs):  # warm-up: allocator, Adam state
        m.train()
        for _ in range(5):
            training_step(m, opts[m], X, y)
    step = interleaved({"ours": lambda: training_step(ours, opts[ours], X, y),
                        "peft": lambda: training_step(theirs, opts[theirs], X, y)}, STEPS, REPEATS)

    merged = merge_lora(copy.deepcopy(ours))
    unloaded = merge_and_unload(copy.deepcopy(ours))
    models = {"base": base, "merged": merged, "merge_and_unload": unloaded, "unmerged": ours}
    for m in models.values():
        m.eval()
    with torch.no_grad():
        fns = {k: (lambda m=m: m(X)) for k, m in models.items()}
        for f in fns.values():
            f()
        infer = interleaved(fns, FORWARDS, REPEATS)
    return {"case": name, "sizes": list(sizes), "targets": targets, "r": r, "batch": batch,
            "step_ours_ms": step["ours"] * 1e3, "step_peft_ms": step["peft"] * 1e3,
            "step_ratio_ours_over_peft": step["ours"] / step["peft"],
            **{f"infer_{k}_ms": v * 1e3 for k, v in infer.items()},
            "infer_ratio_merged_over_base": infer["merged"] / infer["base"],
            "infer_ratio_unmerged_over_base": infer["unmerged"] / infer["base"],
            "infer_ratio_merge_and_unload_over_base": infer["merge_and_unload"] / infer["base"]}


def main():
    warnings.filterwarnings("ignore", module="peft")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports it; its optional CPU kernel is absent
    torch.set_num_threads(1)
    results = [run_case(*case) for case in CASES]
    print(f"{'case':<18} {'r':>2} {'batch':>5} | {'step ours':>9} {'step peft':>9} {'ours/peft':>9} | "
          f"{'base':>7} {'merged':>7} {'merged/base':>11} {'unmerged/base':>13}")
    for res in results:
        print(f"{res['case']:<18} {res['r']:>2} {res['batch']:>5} | {res['step_ours_ms']:>7.3f}ms "
              f"{res['step_peft_ms']:>7.3f}ms {res['step_ratio_ours_over_peft']:>9.3f} | "
              f"{res['infer_base_ms']:>5.3f}ms {res['infer_merged_ms']:>5.3f}ms "
              f"{res['infer_ratio_merged_over_base']:>11.3f} {res['infer_ratio_unmerged_over_base']:>13.3f}")
    worst_step = max(res["step_ratio_ours_over_peft"] for res in results)
    worst_merged = max(res["infer_ratio_merged_over_base"] for res in results)
    print(f"our LoRA step / peft's: {worst_step:.3f} (worst case; goal <= 1.0)")
    print(f"merged inference / base inference: {worst_merged:.3f} (worst case; goal <= 1.02)")
    write_text(OUT, json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "machine": platform.machine(), "machine_info": machine(), "repeats": REPEATS,
                               "results": results,
                               "worst_step_ratio_ours_over_peft": worst_step,
                               "worst_infer_ratio_merged_over_base": worst_merged}, indent=2) + "\n")


if __name__ == "__main__":
    main()
