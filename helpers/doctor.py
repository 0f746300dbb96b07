"""`make doctor` (`python -m helpers.doctor`): what to paste into a bug report.

One line per check, each `[OK]` or `[FAIL]` with the fix: Python and every pinned package (requirements.txt,
requirements-nodeps.txt) against its pin, torch's build (CPU or CUDA) and ATen's CPU kernels, threads, the
JupyterLab settings override `make setup` installs, the kernel culling `make lab` and Binder read, the bundled data
files and the model package with their SHA-256 (the same checks helpers.data and helpers.text make on every load),
and where `helpers` is imported from. Needs nothing beyond the standard library to start: a broken torch or a
missing package is reported as a line, not a traceback. Exit status 1 if any line is [FAIL].
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
KERNEL_PATH_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file (comments and options skipped): {name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-") and (m := PIN.match(line)):
            pins[m.group(1)] = m.group(2)
    return pins


def _ok(text: str) -> tuple[bool, str]:
    return True, text


def _fail(text: str, fix: str) -> tuple[bool, str]:
    return False, f"{text} -> fix: {fix}"


def check_python() -> tuple[bool, str]:
    version = platform.python_version()
    where = f"Python {version} ({platform.python_implementation()}, {platform.system()} {platform.machine()})"
    if sys.version_info < (3, 10):  # noqa: UP036 (this report runs on an old Python too, to say so)
        return _fail(where + ", the series needs 3.10+", "install Python 3.10 or newer, then `make clean setup`")
    return _ok(where)


def check_pins(requirements: Path, nodeps: bool = False) -> list[tuple[bool, str]]:
    """Each pinned package: installed at its pinned version (a local build label such as +cpu is allowed)."""
    how = "--no-deps -r requirements-nodeps.txt" if nodeps else "-r requirements.txt"
    out = []
    for name, pinned in read_pins(requirements).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            flag = "--no-deps " if nodeps else ""
            out.append(_fail(f"{name} not installed (pinned {pinned})",
                             f"`make setup`, or `python -m pip install {flag}{name}=={pinned}`"))
            continue
        if installed.split("+")[0] == pinned:
            out.append(_ok(f"{name} {installed}"))
        else:
            out.append(_fail(f"{name} {installed}, pinned {pinned} in {requirements.name}",
                             f"`python -m pip install {'--no-deps ' if nodeps else ''}{name}=={pinned}` "
                             f"(or `make clean setup`; every pin: `python -m pip install {how}`)"))
    return out


def check_torch() -> list[tuple[bool, str]]:
    try:
        import torch
    except Exception as e:  # a broken install is a line of the report, not a traceback
        return [_fail(f"torch does not import ({type(e).__name__}: {e})", "`make clean setup`")]
    cuda = torch.version.cuda
    build = "CPU-only build" if cuda is None else f"CUDA {cuda} build (the series runs on the CPU; `make setup` " \
                                                  "on Linux installs the 2 GB smaller CPU-only build)"
    capability = torch.backends.cpu.get_cpu_capability()
    forced = {v: os.environ[v] for v in KERNEL_PATH_VARS if v in os.environ}
    kernels = f"ATen CPU kernels: {capability}" + (f" (set by {forced})" if forced else "")
    threads = (f"threads: torch {torch.get_num_threads()} of {os.cpu_count()} CPUs; "
               + ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in THREAD_VARS)
               + " (each notebook sets one thread itself)")
    return [_ok(f"torch {torch.__version__}: {build}"), _ok(kernels), _ok(threads)]


def check_lab_settings(root: Path = ROOT, prefix: Path = Path(sys.prefix)) -> tuple[bool, str]:
    """JupyterLab's settings override (closing a tab shuts its kernel down; no news pop-up) is installed."""
    wanted = root / "jupyter" / "overrides.json"
    installed = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    fix = f"`make setup` (it copies jupyter/overrides.json there), or `cp jupyter/overrides.json {installed}`"
    if not installed.is_file():
        return _fail("JupyterLab settings override not installed", fix)
    try:
        same = json.loads(installed.read_text()) == json.loads(wanted.read_text())
    except ValueError as e:
        return _fail(f"JupyterLab settings override is not valid JSON ({e})", fix)
    if not same:
        return _fail("JupyterLab settings override differs from jupyter/overrides.json", fix)
    return _ok("JupyterLab settings override installed (closing a tab shuts its kernel down; no news pop-up)")


def check_kernel_culling(root: Path = ROOT) -> tuple[bool, str]:
    path = root / "jupyter" / "jupyter_server_config.json"
    fix = "`git checkout -- jupyter/` restores it"
    try:
        cull = json.loads(path.read_text())["MappingKernelManager"]
        minutes = cull["cull_idle_timeout"] / 60
    except (OSError, ValueError, KeyError, TypeError) as e:
        return _fail(f"jupyter/jupyter_server_config.json unreadable ({type(e).__name__})", fix)
    return _ok(f"make lab culls kernels left idle with no tab open after {minutes:g} min "
               "(jupyter/jupyter_server_config.json; Binder: postBuild installs it)")


def check_data(root: Path = ROOT) -> list[tuple[bool, str]]:
    """Every bundled data/*.npz is present with the SHA-256 helpers.data checks on load."""
    try:
        from helpers import data
    except Exception as e:
        return [_fail(f"helpers.data does not import ({type(e).__name__}: {e})", "`make clean setup`")]
    expected = {data.MNIST_5K_FILE: data.MNIST_5K_SHA256, data.TREC6_FILE: data.TREC6_SHA256}
    folder = root / "data"
    out = []
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            out.append(_fail(f"data/{name} missing", f"`git checkout -- data/{name}`"))
        elif data.sha256(path) != digest:
            out.append(_fail(f"data/{name} SHA-256 mismatch (modified or not the bundled file)",
                             f"`git checkout -- data/{name}` (data/README.md says how it was made)"))
        else:
            out.append(_ok(f"data/{name} SHA-256 OK"))
    for path in sorted(folder.glob("*.npz")):
        if path.name not in expected:
            out.append(_fail(f"data/{path.name} is not a bundled data file (no SHA-256 to check it against)",
                             "remove it, or add its SHA-256 to helpers.data"))
    return out


def check_model() -> tuple[bool, str]:
    try:
        from helpers import text
    except Exception as e:
        return _fail(f"helpers.text does not import ({type(e).__name__}: {e})", "`make clean setup`")
    try:
        text.model_dir()  # every file notebook 05 reads, against its SHA-256
    except ValueError as e:
        message = str(e)
        cause, _, fix = message.partition(": ")
        return _fail(f"model package {text.MODEL_PACKAGE}: {cause}", fix or message)
    return _ok(f"model package {text.MODEL_PACKAGE} {text.MODEL_VERSION}: every file SHA-256 OK")


def check_helpers_location(root: Path = ROOT) -> tuple[bool, str]:
    spec = importlib.util.find_spec("helpers")
    where = Path(spec.origin).resolve().parent if spec and spec.origin else None
    if where != root / "helpers":
        return _fail(f"`import helpers` loads {where}, not this checkout's {root / 'helpers'}",
                     "`python -m pip install --no-deps -e .` from this folder (`make setup` does)")
    return _ok("helpers imported from this checkout")


def report(root: Path = ROOT) -> list[tuple[bool, str]]:
    lines = [check_python()]
    lines += check_pins(root / "requirements.txt")
    lines += check_pins(root / "requirements-nodeps.txt", nodeps=True)
    lines += check_torch()
    lines += [check_lab_settings(root), check_kernel_culling(root)]
    lines += check_data(root)
    lines += [check_model(), check_helpers_location(root)]
    return lines


def main() -> int:
    lines = report()
    for ok, text in lines:
        print(f"[{'OK' if ok else 'FAIL'}] {text}")
    failed = sum(not ok for ok, _ in lines)
    print(f"{len(lines)} checks, {failed} failed" + ("" if failed else ": paste this into a bug report as it is"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
