"""How far each notebook's printed numbers move when the CPU kernels take another code path.

Executes every notebook twice, side by side into a temporary folder: once as this machine runs it, once
with ATen's portable (non-SIMD) kernels, MKL capped at SSE4.2 and oneDNN at SSE4.1 (the `make test`
stand-in for another CPU). Then lists every printed line that differs between the two runs, cell by cell,
in benchmarks/kernel_drift.md. Timings differ by nature; every other difference is a trained number that
moved, which is why nbval does not compare those cells and their claims are asserts with tolerances.
Run: `make drift` (about 10 minutes on 2 cores).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).with_suffix(".md")
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def execute(notebook: Path, out_dir: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                             "--ExecutePreprocessor.timeout=1800", "--ExecutePreprocessor.kernel_name=python3",
                             "--output-dir", str(out_dir), str(notebook)],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def printed_lines(path: Path) -> list[list[str]]:
    """Per code cell, the text it printed or displayed (figures' '<Figure ...>' included)."""
    cells = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = []
        for out in cell["outputs"]:
            text.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
        cells.append("\n".join(text).splitlines())
    return cells


def table_cell(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"  # an unescaped pipe would end the table cell


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        here, other = Path(tmp, "here"), Path(tmp, "other")
        for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            t0 = time.perf_counter()
            procs = [execute(nb, here, {}), execute(nb, other, OTHER_CPU)]
            for p in procs:
                if p.wait() != 0:
                    raise SystemExit(f"{nb.name} failed:\n{p.stderr.read()[-3000:]}")
            print(f"{nb.stem}: executed on both paths in {time.perf_counter() - t0:.0f} s")
            for i, (a, b) in enumerate(zip(printed_lines(here / nb.name), printed_lines(other / nb.name)), 1):
                for line_a, line_b in zip(a, b):
                    if line_a != line_b:
                        rows.append((nb.stem, i, line_a.strip(), line_b.strip()))
    lines = ["# Printed lines that differ between CPU kernel paths", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/kernel_drift.py` on {os.cpu_count()} CPUs: "
             "this machine's kernels vs " + ", ".join(f"`{k}={v}`" for k, v in OTHER_CPU.items()) + ".", "",
             "| notebook | code cell | this CPU | other kernel path |", "|---|---|---|---|"]
    lines += [f"| {nb} | {i} | {table_cell(a)} | {table_cell(b)} |" for nb, i, a, b in rows]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} differing lines -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
