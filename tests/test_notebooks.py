"""Hygiene of the committed notebooks: executed top to bottom, no errors, no local paths, small."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LOCAL_PATH = re.compile(r"(/work/|/root/|/home/|/tmp/|/Users/|[A-Z]:\\\\Users)")


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:1] == ["01"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_in_order_without_errors(path):
    cells = code_cells(path)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    assert sum(bool(c["outputs"]) for c in cells) >= len(cells) // 2, "most cells should show their output"
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"error outputs committed: {[e.get('ename') for e in errors]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_local_paths_in_outputs(path):
    for c in code_cells(path):
        text = json.dumps([o for o in c["outputs"]])
        text = re.sub(r'"image/png": "[^"]*"', "", text)
        assert not LOCAL_PATH.search(text), f"cell {c['execution_count']} shows a local path: {LOCAL_PATH.search(text).group()}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_under_two_megabytes(path):
    assert path.stat().st_size < 2 * 1024 * 1024


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_the_one_jupyterlab_writes(path):
    # JupyterLab rewrites any other display_name on open, marking the notebook modified.
    kernelspec = json.loads(path.read_text())["metadata"]["kernelspec"]
    assert kernelspec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_read_well_without_a_kernel(path):
    for c in code_cells(path):
        for o in c["outputs"]:
            text = "".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
            assert not text.startswith("interactive(children="), f"cell {c['execution_count']}: a widget's repr"
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {}):
                assert text.startswith("interactive: run the notebook"), f"cell {c['execution_count']}: {text[:80]!r}"
            assert not re.search(r"\b0%\|.*\?it/s", text), f"cell {c['execution_count']}: an unfinished progress bar"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_markers_are_exact(path):
    # nbval honours a marker only when it is the whole comment: "# NBVAL_IGNORE_OUTPUT (why)" is silently ignored
    for c in code_cells(path):
        for line in "".join(c["source"]).splitlines():
            if "NBVAL_" in line:
                assert line.strip().lstrip("#").strip() in {"NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP", "NBVAL_CHECK_OUTPUT",
                                                            "NBVAL_RAISES_EXCEPTION"}, line
