"""Collect the JSON written by every benchmark into benchmarks/RESULTS.md and benchmarks/results.json.

One row per measure: the figure, its goal, pass/short, and how it was measured. Ratios come from two things
timed side by side in one run (interleaved repeats, median), never from absolute times of different runs.
Run by `make bench` after the benchmarks themselves; a benchmark whose JSON is missing shows as "not run".
"""
import json
import os
import platform
from pathlib import Path

import torch

from _timing import write_text

HERE = Path(__file__).resolve().parent


def load(name):
    path = HERE / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def row(measure, value, goal, met, how, cause=None):
    out = {"measure": measure, "value": value, "goal": goal,
           "status": {None: "not run", "info": "-", True: "pass", False: "short"}[met], "how": how}
    if cause and met is False:
        out["cause"] = cause
    return out


DEQUANT_CAUSE = ("dequantize_nf4's fused kernel (the default from 2^20 values up) decodes and scales in one pass, as "
                 "bitsandbytes' CPU kernel does: a loop compiled by numba reads each packed byte, looks its two levels "
                 "up in a 256-entry table (2 KB, in L1) and multiplies them by the block's absmax in registers. Its "
                 "output is a NumPy allocation (transparent huge pages on Linux). The torch kernel (three PyTorch "
                 "passes over the tensor, the version notebook 02 teaches) is shown for comparison; the huge-pages "
                 "control row gives bitsandbytes' output huge pages too, so that only the kernels differ.")


FASTFOOD_CAUSE = ("Four Walsh-Hadamard transforms of length n·L per step (two per product) are most of it: each is "
                  "two 32x32 Hadamard-factor matrix products over the (blocks, 1024) tensor, near this core's "
                  "float32 matmul peak; smaller factors, a butterfly and a transposed layout were all slower. The "
                  "rest is the two within-block permutation gathers (index_select) and element-wise passes.")
SPARSE_CAUSE = ("The forward scatter-add of the d·√D = 446k nonzeros into the D-vector (random writes that miss "
                "the cache; ~1.2 ms here) against a direct step of ~4 ms; sorting the nonzeros by row, index_add_, "
                "a segment sum and MKL's CSR forward were all measured slower.")


def subspace_rows(data):
    if data is None or "mlp" not in data:
        return [row("subspace step ÷ direct step", "-", "see issue 12", None, "benchmarks/subspace_step.py")]
    m = data["mlp"]
    threads = data["machine"]["threads"]
    how = (f"MNIST MLP 784-200-200-10, batch {m['batch']}, {threads} thread(s), median of {m['repeats']} "
           f"interleaved repeats x {m['steps_per_repeat']} steps; direct step {m['direct_ms']:.1f} ms in this run")
    out = []
    for r in m["rows"]:
        name = r["config"]
        if name.startswith("fastfood"):
            out.append(row(f"{name}: step ÷ direct step", f"{r['ratio']:.2f}x", f"<= {r['goal']:g}x",
                           r["ratio"] <= r["goal"], how, FASTFOOD_CAUSE))
            out.append(row(f"{name}: bound, if the 4 transforms of a step were the only extra work",
                           f"{r['bound_ratio']:.2f}x", "-", "info",
                           f"the transforms timed alone in the same run: {r['transforms_ms']:.2f} ms; other overhead "
                           f"{r['overhead_ms']:.2f} ms; before the lean path (autograd, same run): "
                           f"{r['before_ratio']:.2f}x"))
        elif name.startswith("sparse"):
            out.append(row(f"{name}: step ÷ direct step", f"{r['ratio']:.2f}x", f"<= {r['goal']:g}x",
                           r["ratio"] <= r["goal"], how + f"; before the lean path (autograd, same run): "
                           f"{r['before_ratio']:.2f}x", SPARSE_CAUSE))
        else:
            out.append(row(f"{name}: step ÷ bound (P streamed ÷ memory bandwidth)", f"{r['ratio_to_bound']:.2f}",
                           f"<= {r['goal']:g}", r["ratio_to_bound"] <= r["goal"],
                           f"{r['streamed_bytes'] / 1e6:.0f} MB read per step at the read bandwidth measured in the "
                           f"same run ({m['bandwidth']['read'] / 1e9:.1f} GB/s): bound {r['bound_ms']:.1f} ms; "
                           f"{r['ratio']:.1f}x the direct step"))
        out.append(row(f"{name}: projection memory", f"{r['projection_bytes'] / 1e6:.1f} MB", "-", "info",
                       "bytes of the projection's stored tensors (.nbytes)"))
    t = data.get("transformer")
    if t:
        how = (f"all-MiniLM-L6-v2's shapes, random weights, batch {t['batch']}, {threads} thread(s), D = {t['D']:,} "
               f"(word embeddings and pooler outside the subspace), median of {t['repeats']} interleaved repeats")
        out.append(row("SAID Fastfood d=1000 on a BERT-shaped model: step ÷ full fine-tuning step",
                       f"{t['ratio']:.2f}x",
                       f"<= {t['goal']:g}x", t["ratio"] <= t["goal"],
                       how + f"; before the lean path: {t['before_ratio']:.2f}x"))
        out.append(row("SAID Fastfood d=1000 on a BERT-shaped model: projection memory ÷ model fp32 bytes",
                       f"{t['memory_ratio']:.2f}", f"<= {t['memory_goal']:g}", t["memory_ratio"] <= t["memory_goal"],
                       f"{t['projection_bytes'] / 1e6:.0f} MB stored (compact) vs "
                       f"{t['model_fp32_bytes'] / 1e6:.0f} MB; "
                       f"plus {t['workspace_bytes'] / 1e6:.0f} MB of reused workspace", t["memory_cause"]))
        out.append(row("SAID Fastfood d=1000 on a BERT-shaped model: peak RSS",
                       f"{t['said_peak_rss_bytes'] / 1e9:.2f} GB",
                       f"<= {t['rss_goal_gb']:g} GB", t["said_peak_rss_bytes"] <= t["rss_goal_gb"] * 1e9,
                       "VmHWM of a process that builds the model and runs 3 steps"))
    return out


def lora_rows(data):
    if data is None:
        return [row("our LoRA step ÷ peft's", "-", "<= 1.0", None, "benchmarks/lora_step.py")]
    how = (f"{len(data['results'])} MLPs (worst case shown), {data['threads']} thread(s), median of "
           f"{data['repeats']} interleaved repeats")
    step, merged = data["worst_step_ratio_ours_over_peft"], data["worst_infer_ratio_merged_over_base"]
    return [row("our LoRA training step ÷ peft's", f"{step:.3f}", "<= 1.0", step <= 1.0, how),
            row("merged inference ÷ base inference", f"{merged:.3f}", "<= 1.02", merged <= 1.02, how)]


def quant_rows(data):
    if data is None:
        return [row("NF4 bits/param (double quant)", "-", "<= 4.13", None, "benchmarks/quant_dequant.py")]
    how = (f"{len(data['results'])} tensors, {data['threads']} thread(s), "
           f"median of {data['repeats']} interleaved repeats")
    bits, ratio = data["bits_per_param_double_quant"], data["median_throughput_ratio_ours_over_bnb"]
    out = [row("NF4 bits/param with double quantisation", f"{bits:.4f}", "<= 4.13", bits <= 4.13,
               "8 x stored bytes / numel, tensors >= 1M values"),
           row("NF4 dequantisation throughput, ours ÷ bitsandbytes (median over tensors)", f"{ratio:.2f}x", "-",
               "info", how)]
    big = [r for r in data["results"] if r["shape"] == [4096, 4096] and "write_bound_ms" in r]
    for r in big:
        dq = "with" if r["double_quant"] else "without"
        out.append(row(f"NF4 dequantisation 4096x4096 {dq} double quantisation: ours ÷ bitsandbytes throughput",
                       f"{r['throughput_ratio_ours_over_bnb']:.2f}x", ">= 1.0x",
                       r["throughput_ratio_ours_over_bnb"] >= 1.0,
                       how, DEQUANT_CAUSE))
        out.append(row(f"NF4 dequantisation 4096x4096 {dq} double quantisation: torch kernel ÷ bitsandbytes",
                       f"{r['throughput_ratio_torch_kernel_over_bnb']:.2f}x", "-", "info",
                       "dequantize_nf4(q, kernel='torch'): three PyTorch passes into PyTorch's allocator"))
        out.append(row(f"NF4 dequantisation 4096x4096 {dq} double quantisation: time ÷ write bound",
                       f"ours {r['ours_over_bound']:.2f}, bitsandbytes {r['bnb_over_bound']:.2f}", "-", "info",
                       f"bound: writing the {4 * r['numel'] / 1e6:.0f} MB float32 output into fresh memory, measured "
                       f"alone in the same run: {r['write_bound_numpy_ms']:.1f} ms with NumPy's allocator (ours), "
                       f"{r['write_bound_ms']:.1f} ms with PyTorch's (bitsandbytes)"))
    control = data.get("huge_pages_control")
    for r in (control or {}).get("results", []):
        dq = "with" if r["double_quant"] else "without"
        bw = control["bandwidth"]
        out.append(row(f"control, both outputs on huge pages: 4096x4096 {dq} double quantisation, ours ÷ "
                       "bitsandbytes", f"{r['throughput_ratio_ours_over_bnb']:.2f}x", ">= 1.0x",
                       r["throughput_ratio_ours_over_bnb"] >= 1.0,
                       f"GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in a child process; fresh writes there "
                       f"{bw['write_fresh'] / 1e9:.1f} GB/s (PyTorch's allocator), "
                       f"{bw['write_fresh_numpy'] / 1e9:.1f} GB/s (NumPy's); torch kernel "
                       f"{r['throughput_ratio_torch_kernel_over_bnb']:.2f}x"))
    return out


def notebook_rows(data):
    if data is None:
        return [row("notebooks: wall time and peak memory", "-", "<= 240 s, <= 1.5 GB", None,
                    "benchmarks/notebooks.py")]
    how = f"/usr/bin/time -v, headless nbconvert into a temporary copy, {data['cpus']} CPUs"
    out = []
    for nb in data["notebooks"]:
        out.append(row(f"{nb['notebook']}: wall time", f"{nb['seconds']:.0f} s", "<= 240 s", nb["seconds"] <= 240, how))
        out.append(row(f"{nb['notebook']}: peak memory", f"{nb['peak_bytes'] / 1e9:.2f} GB", "<= 1.5 GB",
                       nb["peak_bytes"] <= 1.5e9, how))
    out.append(row("make test (unit tests + nbval), total", f"{data['make_test_seconds'] / 60:.1f} min", "<= 15 min",
                   data["make_test_seconds"] <= 900, "/usr/bin/time -v around make test's pytest command"))
    return out


def main():
    rows = (subspace_rows(load("subspace_step")) + lora_rows(load("lora_step")) + quant_rows(load("quant_dequant"))
            + notebook_rows(load("notebooks")))
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    machines = []
    for name in ("subspace_step", "lora_step", "quant_dequant", "notebooks"):
        data = load(name) or {}
        info = data.get("machine_info") or data.get("machine")
        if isinstance(info, dict):
            machines.append(f"- `{name}.json`: {info['cpu']}, SIMD level {info['simd']} (ATen), {info['cpus']} CPUs, "
                            f"{info['threads']} torch thread(s), torch {info['torch']}, Python {info['python']}")
        else:
            machines.append(f"- `{name}.json`: {'not run' if not data else 'machine not recorded (older run)'}")
    write_text(HERE / "results.json",
               json.dumps({"machine": machine, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    lines = ["# Benchmark results", "",
             f"Written by `make bench` on {machine}. Each ratio compares two things measured",
             "side by side in one run; absolute times vary from machine to machine, the ratios much less.", "",
             "Where each figure came from:", "", *machines, "",
             "| measure | value | goal | status | how measured |", "|---|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['value']} | {r['goal']} | {r['status']} | {r['how']} |" for r in rows]
    short = [r for r in rows if "cause" in r]
    if short:
        lines += ["", "## Why the short rows are short", ""] + [f"- **{r['measure']}**: {r['cause']}" for r in short]
    write_text(HERE / "RESULTS.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
