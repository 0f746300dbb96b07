"""NF4 storage and dequantisation speed: ours (helpers.quant) against bitsandbytes' CPU kernels, one run.

Per weight shape, with and without double quantisation, it prints and writes to
benchmarks/quant_dequant.json:
- bits per parameter measured from the bytes of the stored tensors (goal with double quantisation: <= 4.13),
  ours and bitsandbytes' (packed codes + absmax + nested state);
- dequantisation time, ours with kernel="fused" (one pass; what the default, kernel="auto", uses from 2^20 values up)
  and with kernel="torch" (three PyTorch passes; the default below that) vs bitsandbytes.functional.dequantize_4bit
  on the same tensor, and the throughput ratios
  ours / theirs (= their time / our time; > 1 means ours is faster);
- the share of dequantised values that are identical to bitsandbytes';
- the bound each side works against at 4096 x 4096: writing the 67 MB float32 output into fresh memory, with
  PyTorch's allocator (bitsandbytes, kernel="torch") and with NumPy's (the fused kernel's output; on Linux NumPy asks
  for transparent huge pages, so first writes fault 512x fewer pages);
- the control for that allocator difference: the 4096 x 4096 cases again in a child process whose glibc malloc asks
  for huge pages too (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), so that bitsandbytes' output gets them as well and
  only the kernels differ; the child's own fresh-write bounds show whether the setting took effect.
Timings are interleaved (ours, theirs, theirs, ours, ...) and summarised by the median, on one thread
(torch and OpenMP) so that the other core's load disturbs less. Nothing here asserts a timing.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch / bitsandbytes load OpenMP

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _timing import bandwidth, interleaved, machine, write_text
from helpers.quant import dequantize_nf4, import_bitsandbytes, quantize_nf4

CASES = [  # name, weight shape (d_out, d_in)
    ("notebook 02 MLP layer", (256, 256)),
    ("MNIST MLP fc1", (200, 784)),
    ("1024 x 1024", (1024, 1024)),
    ("LLaMA-7B q_proj", (4096, 4096)),
]
REPEATS = 21
OUT = Path(__file__).with_suffix(".json")
HUGE_PAGES_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def bnb_nbytes(packed, state) -> int:
    tensors = [packed, state.absmax]
    if state.nested:
        tensors += [state.state2.absmax, state.offset]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_case(bnb, name, shape, double_quant):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.02
    ours = quantize_nf4(w, block_size=64, double_quant=double_quant)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    calls = max(1, 2 ** 22 // w.numel())  # ~4M values per timed sample
    fns = {"ours": lambda: dequantize_nf4(ours, kernel="fused"), "bnb": lambda: bnb.dequantize_4bit(packed, state),
           "torch": lambda: dequantize_nf4(ours, kernel="torch")}
    if not torch.equal(dequantize_nf4(ours, kernel="fused"), dequantize_nf4(ours, kernel="torch")):
        raise SystemExit(f"{name}: the fused kernel's output differs from the torch kernel's")
    for f in fns.values():
        f()
    t = interleaved(fns, calls, REPEATS)
    same = (dequantize_nf4(ours) == bnb.dequantize_4bit(packed, state).view(shape)).float().mean().item()
    return {"case": name, "shape": list(shape), "double_quant": double_quant, "numel": w.numel(),
            "bits_per_param_ours": ours.bits_per_param, "bits_per_param_bnb": 8 * bnb_nbytes(packed, state) / w.numel(),
            "codes_identical": bool(torch.equal(ours.codes, packed.view(-1))),
            "values_identical_share": same,
            "dequant_ours_ms": t["ours"] * 1e3, "dequant_bnb_ms": t["bnb"] * 1e3,
            "throughput_ratio_ours_over_bnb": t["bnb"] / t["ours"],
            "dequant_torch_kernel_ms": t["torch"] * 1e3,
            "throughput_ratio_torch_kernel_over_bnb": t["bnb"] / t["torch"]}


def huge_pages_child() -> None:
    """The 4096 x 4096 cases and the fresh-write bounds, printed as JSON (run with HUGE_PAGES_ENV)."""
    torch.set_num_threads(1)
    bnb, _ = import_bitsandbytes()
    results = [run_case(bnb, name, shape, dq) for name, shape in CASES if shape == (4096, 4096) for dq in (False, True)]
    print(json.dumps({"bandwidth": bandwidth(), "results": results}))


def huge_pages_control() -> dict | None:
    env = {**os.environ, **HUGE_PAGES_ENV}
    out = subprocess.run([sys.executable, __file__, "--huge-pages-child"], env=env, capture_output=True, text=True)
    if out.returncode:
        print(f"huge-pages control failed:\n{out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    torch.set_num_threads(1)
    bnb, why_not = import_bitsandbytes()
    if bnb is None:
        sys.exit(f"skipped: {why_not}")
    results = [run_case(bnb, name, shape, dq) for name, shape in CASES for dq in (False, True)]
    bw = bandwidth()
    for r in results:  # both sides return a new float32 tensor: the bound is writing it into fresh memory
        r["write_bound_ms"] = 1e3 * 4 * r["numel"] / bw["write_fresh"]
        r["write_bound_numpy_ms"] = 1e3 * 4 * r["numel"] / bw["write_fresh_numpy"]
        r["ours_over_bound"] = r["dequant_ours_ms"] / r["write_bound_numpy_ms"]
        r["bnb_over_bound"] = r["dequant_bnb_ms"] / r["write_bound_ms"]
        r["torch_kernel_over_bound"] = r["dequant_torch_kernel_ms"] / r["write_bound_ms"]
    control = huge_pages_control()
    print(f"{'case':<22} {'DQ':>3} | {'bits ours':>9} {'bits bnb':>8} | {'same codes':>10} {'same values':>11} | "
          f"{'fused':>9} {'bnb':>9} {'fused/bnb':>9} | {'torch kernel':>12} {'/bnb':>5}")
    for r in results:
        print(f"{r['case']:<22} {'yes' if r['double_quant'] else 'no':>3} | {r['bits_per_param_ours']:>9.4f} "
              f"{r['bits_per_param_bnb']:>8.4f} | {str(r['codes_identical']):>10} "
              f"{100 * r['values_identical_share']:>10.2f}% | "
              f"{r['dequant_ours_ms']:>7.3f}ms {r['dequant_bnb_ms']:>7.3f}ms "
              f"{r['throughput_ratio_ours_over_bnb']:>9.2f} | "
              f"{r['dequant_torch_kernel_ms']:>10.3f}ms {r['throughput_ratio_torch_kernel_over_bnb']:>5.2f}")
    big = [r for r in results if r["numel"] >= 2 ** 20]
    bits_dq = max(r["bits_per_param_ours"] for r in big if r["double_quant"])
    ratios = [r["throughput_ratio_ours_over_bnb"] for r in results]
    print(f"bits/param with double quantisation (tensors >= 1M values): {bits_dq:.4f} (goal <= 4.13); "
          f"without: {max(r['bits_per_param_ours'] for r in big if not r['double_quant']):.4f}")
    print(f"dequantisation throughput ours / bitsandbytes: median {statistics.median(ratios):.2f} over the cases "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}; > 1 means ours is faster)")
    for r in (r for r in results if r["shape"] == [4096, 4096]):  # large enough that the allocator cannot recycle
        print(f"{r['case']} (DQ {'yes' if r['double_quant'] else 'no'}): writing the {4 * r['numel'] / 1e6:.0f} MB "
              f"output into fresh memory takes {r['write_bound_ms']:.1f} ms with PyTorch's allocator, "
              f"{r['write_bound_numpy_ms']:.1f} ms with NumPy's; ours {r['ours_over_bound']:.2f}x its bound (NumPy's), "
              f"bitsandbytes {r['bnb_over_bound']:.2f}x, the torch kernel {r['torch_kernel_over_bound']:.2f}x "
              f"(PyTorch's)")
    if control:
        cb = control["bandwidth"]
        print(f"control, glibc malloc with huge pages ({HUGE_PAGES_ENV['GLIBC_TUNABLES']}): fresh writes "
              f"{cb['write_fresh'] / 1e9:.2f} GB/s (PyTorch's allocator) and {cb['write_fresh_numpy'] / 1e9:.2f} GB/s "
              f"(NumPy's); before {bw['write_fresh'] / 1e9:.2f} and {bw['write_fresh_numpy'] / 1e9:.2f}")
        for r in control["results"]:
            print(f"  4096 x 4096 (DQ {'yes' if r['double_quant'] else 'no'}): ours / bitsandbytes "
                  f"{r['throughput_ratio_ours_over_bnb']:.2f}, torch kernel / bitsandbytes "
                  f"{r['throughput_ratio_torch_kernel_over_bnb']:.2f}")
    print("note: 200 x 784 values differ because bitsandbytes 0.50.2's AVX-512 CPU dequantiser mis-indexes "
          "absmax when the row length is a multiple of 16 but not of the block size; the codes are identical")
    write_text(OUT, json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "machine_info": machine(), "bandwidth": bw,
                               "repeats": REPEATS, "results": results, "huge_pages_control": control,
                               "bits_per_param_double_quant": bits_dq,
                               "median_throughput_ratio_ours_over_bnb": statistics.median(ratios)}, indent=2) + "\n")


if __name__ == "__main__":
    if "--huge-pages-child" in sys.argv:
        huge_pages_child()
    else:
        main()
