"""Wall time and peak memory of every notebook, and the total time of `make test`'s command.

Each notebook is executed headless into a temporary copy (the committed notebook is not touched) under
`/usr/bin/time -v`; "Maximum resident set size" covers the kernel too (it is a reaped child of nbconvert).
Writes benchmarks/notebooks.json. Goals: each notebook <= 4 minutes and <= 1.5 GB; `make test` <= 15 minutes.
"""
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, write_text  # noqa: E402

OUT = Path(__file__).with_suffix(".json")
PY = sys.executable


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a command run under /usr/bin/time -v; raises if it fails."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return seconds, peak_kb * 1024


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            seconds, peak = timed([PY, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                                   "--ExecutePreprocessor.timeout=1200", "--ExecutePreprocessor.kernel_name=python3",
                                   "--output-dir", tmp, str(nb)])
            rows.append({"notebook": nb.stem, "seconds": seconds, "peak_bytes": peak})
            print(f"{nb.stem:<36} {seconds:7.1f} s  {peak / 1e9:5.2f} GB")
    seconds, peak = timed(["make", "--no-print-directory", "test"])  # unit tests, then nbval on both CPU paths
    print(f"{'make test':<36} {seconds:7.1f} s  {peak / 1e9:5.2f} GB")
    write_text(OUT, json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "machine_info": machine(),
                               "notebooks": rows,
                               "make_test_seconds": seconds, "make_test_peak_bytes": peak,
                               "measured_at": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
