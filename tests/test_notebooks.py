"""Hygiene of the committed notebooks: executed top to bottom, no errors, no local paths, small."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERIES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOKS = SERIES + SOLUTIONS  # every hygiene test below holds the worked solutions to the series' standard
LOCAL_PATH = re.compile(r"(/work/|/root/|/home/|/tmp/|/Users/|[A-Z]:\\\\Users)")


def code_cells(path):
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]


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
        text = json.dumps(c["outputs"])
        text = re.sub(r'"image/png": "[^"]*"', "", text)
        found = LOCAL_PATH.search(text)
        assert not found, f"cell {c['execution_count']} shows a local path: {found.group()}"


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


# The cell tags nbval 0.11 reads (nbval/plugin.py: `metadata_tags`, from its comment markers, plus 'raises-exception').
NBVAL_TAGS = {"nbval-ignore-output", "nbval-check-output", "nbval-skip", "nbval-raises-exception", "raises-exception"}
CONFLICTING = [{"nbval-ignore-output", "nbval-check-output"}]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_tags_are_exact_and_code_cells_carry_no_markers(path):
    # What nbval compares is said in cell tags, so a reader's code cell shows only the lesson; nbval honours a tag
    # only when it is spelled exactly ("nbval_ignore_output", "NBVAL-IGNORE-OUTPUT" are silently ignored)
    for c in code_cells(path):
        where = f"code cell [{c['execution_count']}]"
        assert "NBVAL_" not in "".join(c["source"]), (
            f"{where} carries an nbval comment marker: tag the cell instead (metadata.tags: [\"nbval-ignore-output\"])")
        tags = c["metadata"].get("tags", [])
        assert isinstance(tags, list) and all(isinstance(t, str) for t in tags), f"{where}: tags must be a list of str"
        assert len(tags) == len(set(tags)), f"{where}: a tag is repeated: {tags}"
        near_misses = [t for t in tags if ("nbval" in t.lower() or "raises" in t.lower()) and t not in NBVAL_TAGS]
        assert not near_misses, f"{where}: nbval does not read {near_misses}; its tags are {sorted(NBVAL_TAGS)}"
        for pair in CONFLICTING:
            assert not pair <= set(tags), f"{where}: conflicting tags {sorted(pair)}"


# A compared cell's last line is shown as its output: a value that changes between runs of the same code fails nbval
# on some runs only (gc.collect() returned 3 on one CI run and 0 on the run that was committed).
UNSTABLE_LAST_LINE = re.compile(r"^(gc\.collect|time\.\w+|id|os\.getpid|random\.\w+)\(.*\)\s*$")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_compared_cells_do_not_end_in_a_value_that_changes_between_runs(path):
    for c in code_cells(path):
        if "nbval-ignore-output" in c["metadata"].get("tags", []):
            continue
        last = "".join(c["source"]).rstrip().splitlines()[-1]
        assert not UNSTABLE_LAST_LINE.match(last), (
            f"code cell [{c['execution_count']}] ends in `{last}`, whose value changes between runs and is compared "
            "by nbval: assign it (`_ = ...`) or end the line with `;`")


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.name)
def test_each_series_notebook_links_its_solutions_and_back(path):
    # solutions/NN_<stem>_solutions.ipynb exists, the series notebook's Exercises cell links it (a relative link that
    # also works in the book), and the solutions notebook links back to the series notebook
    solution = ROOT / "solutions" / f"{path.stem}_solutions.ipynb"
    assert solution.is_file(), f"no worked solutions for {path.name}: expected solutions/{solution.name}"
    cells = json.loads(path.read_text())["cells"]
    exercises = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown" and "## Exercises" in "".join(
        c["source"])]
    assert len(exercises) == 1 and f"](../solutions/{solution.name})" in exercises[0], (
        f"{path.name}'s Exercises cell should link ../solutions/{solution.name}")
    title = "".join(json.loads(solution.read_text())["cells"][0]["source"])
    assert f"](../notebooks/{path.name})" in title, f"{solution.name}'s title cell should link ../notebooks/{path.name}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_end_with_how_they_are_tested_and_a_rule(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    assert "".join(cells[-1]["source"]).startswith("---"), "the last cell is the closing '---' cell"
    assert "How this notebook is tested" in "".join(cells[-2]["source"]), (
        "the cell before the closing '---' explains how the notebook is tested")
