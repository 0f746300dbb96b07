"""Timing shared by the benchmarks: things compared are timed side by side, interleaved, median of repeats."""
import statistics
import time


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
