"""Subspace training steps against their baselines and their physical bounds, measured side by side in one run.

MLP scale (MNIST MLP 784-200-200-10, D = 199,210, batch 128), every configuration interleaved with direct
training and with the operations that bound it:
- Fastfood d = 1,000: step ÷ direct step (goal <= 1.8x); bound: the four Walsh–Hadamard transforms of a step
  (two per product, forward and backward) timed alone, so the row shows how much of the rest is overhead.
- Sparse d = 1,000: step ÷ direct step (goal <= 1.5x).
- Dense d = 500: step ÷ (bytes of P streamed per step ÷ memory bandwidth) (goal <= 1.3), the read bandwidth
  measured in the same run (a dense P is read twice per step: P θ forward, P^T g backward).
Transformer scale (all-MiniLM-L6-v2's shapes with random weights: no download; batch 16 × 32 tokens):
- SAID Fastfood d = 1,000 over D = 10.85M (word embeddings and pooler outside the subspace, as in notebook 05)
  ÷ full fine-tuning step (goal <= 1.5x); projection memory ÷ the model's fp32 bytes (goal <= 0.25); peak RSS
  of a process running only the subspace step (goal <= 1.5 GB).
Writes benchmarks/subspace_step.json. Usage: python benchmarks/subspace_step.py [--profile] [--skip-transformer]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _timing import bandwidth, interleaved, machine, write_text
from helpers.models import mlp
from helpers.subspace import SubspaceModel, fwht
from helpers.training import training_step

BATCH = 128
MLP_CONFIGS = [("direct", None), ("fastfood", 1000), ("sparse", 1000), ("dense", 500)]
GOALS = {"fastfood": 1.8, "sparse": 1.5, "dense_bound": 1.3, "transformer": 1.5, "transformer_memory": 0.25,
         "transformer_rss_gb": 1.5}
CAUSES = {
    "transformer_memory": (
        "Le et al.'s Fastfood draws a random sign, Gaussian and permutation for every one of the D coordinates; "
        "stored compactly (int8 signs, float32 Gaussians, int32 permutation and its inverse) that is 13 bytes "
        "per projected parameter, 3.25x the parameter's own 4 bytes. Regenerating the Gaussians from the "
        "generator each product would save 4 bytes at ~70 ms per product, but the permutations (8 bytes) "
        "cannot be regenerated at any useful speed (an argsort of D keys), and scattering with the forward "
        "permutation instead of gathering with its inverse was 5x slower. Reaching 0.25x needs a different P "
        "(e.g. permutations shared across blocks, or computed from a hash): not the same P for the same seed."),
}


class AutogradPath(nn.Module):
    """The same SubspaceModel trained the way it was before the lean path (kept here to measure the gain side
    by side): P θ through the projection's own autograd Function, θ0 + f · P θ per parameter as separate
    tensors, autograd's split/cat for the gradient."""

    def __init__(self, sub: SubspaceModel):
        super().__init__()
        self.sub = sub

    def forward(self, *args):
        sub = self.sub
        delta = sub.projection(sub.theta_d)
        params = {}
        for i, (name, t0, dl, shape) in enumerate(zip(sub._names, sub.theta0.split(sub._numels),
                                                    delta.split(sub._numels), sub._shapes)):
            f = sub._scales[i] * (sub.lambdas[sub._block_of[i]] if sub.said else 1.0)
            params[name] = (t0 + f * dl).view(shape)
        own = dict(sub.model.named_parameters())
        params.update({n: own[n].detach() for n in sub._frozen})
        return torch.func.functional_call(sub.model, params, args)


def adam_step(model: nn.Module, X: torch.Tensor, y: torch.Tensor, lr: float = 1e-3, batch: int | None = None):
    """A closure running one helpers.training.training_step (Adam) on fixed pre-drawn batches."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if batch is None:
        return lambda: training_step(model, opt, X, y)
    batches = [torch.randint(0, len(X), (batch,), generator=torch.Generator().manual_seed(i)) for i in range(64)]
    state = {"i": 0}

    def step():
        idx = batches[state["i"] % len(batches)]
        state["i"] += 1
        training_step(model, opt, X[idx], y[idx])
    return step


def name_of(row: dict) -> str:
    return row["config"].split()[0]


def profile_table(step, n: int, title: str) -> None:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(n):
            step()
    print(f"\n== profile: {title} ({n} steps)")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


# --------------------------------------------------------------------------------------- MLP scale

def mlp_scale(repeats: int, steps: int, profile: bool) -> dict:
    torch.manual_seed(0)
    X, y = torch.rand(4000, 784), torch.randint(0, 10, (4000,))
    models, fns = {}, {}
    for name, d in MLP_CONFIGS:
        base = mlp(seed=0)
        models[name] = base if d is None else SubspaceModel(base, d, projection=name, seed=0)
        fns[name] = adam_step(models[name], X, y, batch=BATCH)
    for name in ("fastfood", "sparse"):  # the same subspaces trained the way they were before the lean path
        models[f"{name} autograd"] = AutogradPath(SubspaceModel(mlp(seed=0), 1000, projection=name, seed=0))
        fns[f"{name} autograd"] = adam_step(models[f"{name} autograd"], X, y, batch=BATCH)
    ff = models["fastfood"].projection
    blocks = torch.randn(ff.n_blocks, ff.L)
    fns["fwht x4"] = lambda: [fwht(blocks) for _ in range(4)]  # the transforms of one step, alone
    for f in fns.values():  # warm-up: allocator, caches, Adam state
        for _ in range(10):
            f()
    dense_every = 10  # dense steps are ~15x slower: time fewer of them
    t = interleaved({k: f for k, f in fns.items() if k != "dense"}, steps, repeats)
    t["dense"] = interleaved({"dense": fns["dense"]}, max(2, steps // dense_every), repeats)["dense"]
    bw = bandwidth()
    direct = t["direct"]
    dense = models["dense"].projection
    dense_bytes = 2 * dense.D * dense.d * 4
    out = {"batch": BATCH, "repeats": repeats, "steps_per_repeat": steps, "bandwidth": bw,
           "direct_ms": 1e3 * direct, "rows": []}
    for name, d in MLP_CONFIGS[1:]:
        r = {"config": f"{name} d={d}", "ms_per_step": 1e3 * t[name], "ratio": t[name] / direct,
             "projection_bytes": models[name].projection.nbytes}
        if name == "fastfood":
            r.update(goal=GOALS["fastfood"], transforms_ms=1e3 * t["fwht x4"],
                     before_ratio=t["fastfood autograd"] / direct,
                     bound_ratio=(direct + t["fwht x4"]) / direct,
                     overhead_ms=1e3 * (t[name] - direct - t["fwht x4"]))
        elif name == "sparse":
            r.update(goal=GOALS["sparse"], before_ratio=t["sparse autograd"] / direct)
        else:
            bound = dense_bytes / bw["read"]
            r.update(goal=GOALS["dense_bound"], streamed_bytes=dense_bytes, bound_ms=1e3 * bound,
                     ratio_to_bound=t[name] / bound)
        out["rows"].append(r)
    print(f"MLP scale: direct step {1e3 * direct:.2f} ms; read bandwidth {bw['read'] / 1e9:.1f} GB/s")
    for r in out["rows"]:
        line = f"  {r['config']:<16} {r['ms_per_step']:8.2f} ms/step  {r['ratio']:5.2f}x direct"
        if "transforms_ms" in r:
            line += (f"  | 4 transforms alone {r['transforms_ms']:.2f} ms -> bound {r['bound_ratio']:.2f}x, "
                     f"other overhead {r['overhead_ms']:.2f} ms; autograd path (before) {r['before_ratio']:.2f}x")
        if name_of(r) == "sparse":
            line += f"  | autograd path (before) {r['before_ratio']:.2f}x"
        if "bound_ms" in r:
            line += f"  | P streamed {r['streamed_bytes'] / 1e6:.0f} MB / bandwidth = {r['bound_ms']:.1f} ms: " \
                    f"{r['ratio_to_bound']:.2f}x the bound"
        print(line)
    if profile:
        for name in ("direct", "fastfood"):
            profile_table(fns[name], 50, f"MLP {name}")
    return out


# --------------------------------------------------------------------------------------- transformer scale

def minilm_shapes_random(seed: int = 0) -> nn.Module:
    """A SentenceClassifier over a BertModel of all-MiniLM-L6-v2's shapes with random weights (no files)."""
    from transformers import BertConfig, BertModel

    from helpers.text import SentenceClassifier
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = BertModel(config)
    return SentenceClassifier(encoder, 6, seed=seed).train()


def said_model(seed: int = 0) -> SubspaceModel:
    from helpers.text import SAID_EXCLUDE
    return SubspaceModel(minilm_shapes_random(seed), 1000, "fastfood", seed=seed, exclude=SAID_EXCLUDE,
                         rescale=["head"], said=True, compact=True).train()


def text_batch(n: int = 16, length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (n, length), generator=g)
    X = torch.stack([ids, torch.ones_like(ids)], 1).float()  # every token real: no padding to trim
    return X, torch.randint(0, 6, (n,), generator=g)


def said_peak_rss(steps: int = 3) -> None:
    """Child-process entry: a few SAID steps alone, then print this process's peak RSS in bytes."""
    torch.set_num_threads(1)
    X, y = text_batch()
    step = adam_step(said_model(), X, y, lr=1e-2)
    for _ in range(steps):
        step()
    try:  # VmHWM: this process image's own peak (ru_maxrss would include the parent's RSS from before exec)
        with open("/proc/self/status") as f:
            print(next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def transformer_scale(repeats: int, profile: bool) -> dict:
    X, y = text_batch()
    full, said = minilm_shapes_random(), said_model()
    fns = {"full": adam_step(full, X, y, lr=1e-4), "said": adam_step(said, X, y, lr=1e-2),
           "said autograd": adam_step(AutogradPath(said_model()), X, y, lr=1e-2)}
    for f in fns.values():
        f(), f()
    t = interleaved(fns, 2, repeats)
    del fns["said autograd"]
    model_bytes = 4 * sum(p.numel() for p in full.parameters())
    proj = said.projection
    rss = int(subprocess.run([sys.executable, __file__, "--said-rss"], capture_output=True, text=True,
                             check=True).stdout.split()[-1])
    out = {"batch": "16 x 32 tokens", "repeats": repeats, "D": said.D, "model_params": model_bytes // 4,
           "full_s": t["full"], "said_s": t["said"], "ratio": t["said"] / t["full"], "goal": GOALS["transformer"],
           "said_autograd_s": t["said autograd"], "before_ratio": t["said autograd"] / t["full"],
           "projection_bytes": proj.nbytes, "workspace_bytes": proj.workspace_bytes, "model_fp32_bytes": model_bytes,
           "memory_ratio": proj.nbytes / model_bytes, "memory_goal": GOALS["transformer_memory"],
           "memory_cause": CAUSES["transformer_memory"], "said_peak_rss_bytes": rss,
           "rss_goal_gb": GOALS["transformer_rss_gb"]}
    print(f"transformer scale (MiniLM shapes, D = {said.D:,} of {model_bytes // 4:,}): full FT {t['full']:.2f} s/step, "
          f"SAID Fastfood d=1000 {t['said']:.2f} s/step = {out['ratio']:.2f}x (autograd path, before: "
          f"{out['before_ratio']:.2f}x); projection {proj.nbytes / 1e6:.0f} MB "
          f"= {out['memory_ratio']:.2f}x the model's fp32 bytes (+ {proj.workspace_bytes / 1e6:.0f} MB reused "
          f"workspace); peak RSS of a SAID-only process {rss / 1e9:.2f} GB")
    if profile:
        for name in ("full", "said"):
            profile_table(fns[name], 2, f"MiniLM shapes, {name}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40, help="MLP steps per timed block (dense uses a tenth)")
    parser.add_argument("--transformer-repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step per scale")
    parser.add_argument("--skip-transformer", action="store_true")
    parser.add_argument("--said-rss", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, like the other benchmarks: two OpenMP threads stall "
                             "badly whenever another process shares the 2 cores; 0 = torch's own choice)")
    args = parser.parse_args()
    if args.said_rss:
        return said_peak_rss()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"machine": machine(), "mlp": mlp_scale(args.repeats, args.steps, args.profile)}
    if not args.skip_transformer:
        result["transformer"] = transformer_scale(args.transformer_repeats, args.profile)
    path = Path(__file__).with_suffix(".json")
    write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
