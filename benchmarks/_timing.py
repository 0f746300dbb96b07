"""Shared by the benchmarks: interleaved timing, the machine a figure came from, and its memory bandwidth."""
import os
import platform
import statistics
import time

import torch


def interleaved(fns: dict, calls: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each fn; each repeat times every fn once, in alternating order, so
    machine noise (other processes, frequency changes) hits all of them alike."""
    times = {name: [] for name in fns}
    names = list(fns)
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> dict:
    """CPU model, the SIMD level PyTorch's kernels use (ATen's CPU capability), threads, versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "simd": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def bandwidth(mbytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """Memory bandwidth on the current thread count, in bytes/s: `read` (sum of a tensor already in memory),
    `write` (fill of a tensor already in memory), `write_fresh` (fill of a newly allocated tensor: the
    OS maps its pages on first touch, which costs more than the writes on many machines) and `write_fresh_numpy`
    (the same with NumPy's allocator, which on Linux asks for transparent huge pages: fewer, larger faults)."""
    import numpy as np
    n = mbytes * 2**20 // 4
    x = torch.ones(n)

    def fresh():
        torch.empty(n).fill_(1.0)

    def fresh_numpy():
        np.empty(n, dtype=np.float32).fill(1.0)
    t = interleaved({"read": x.sum, "write": lambda: x.fill_(2.0), "write_fresh": fresh,
                     "write_fresh_numpy": fresh_numpy}, 1, repeats)
    return {k: 4 * n / v for k, v in t.items()}


def write_text(path, text: str) -> None:
    """Write a results file atomically: a temporary file beside it, then one rename."""
    from pathlib import Path
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
