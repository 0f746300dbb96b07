"""Binder's files read the way repo2docker reads them: environment.yml parses as conda YAML whose pip
section pip accepts line by line, postBuild runs as an executable script, and the lab settings override
is valid JSON naming a real JupyterLab setting."""
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement

ROOT = Path(__file__).resolve().parent.parent
# Options pip accepts inside a requirements file (repo2docker writes the pip section to one).
PIP_FILE_OPTIONS = {"--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--no-index",
                    "--pre", "--trusted-host", "--prefer-binary", "--only-binary", "--no-binary"}


def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def pip_lines():
    deps = environment()["dependencies"]
    sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one '- pip:' section"
    return sections[0]


def test_environment_yml_is_a_conda_environment():
    env = environment()
    assert isinstance(env, dict) and {"name", "channels", "dependencies"} <= env.keys()
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "pip" in conda and any(d.startswith("python=3.11") for d in conda), conda


@pytest.mark.parametrize("line", pip_lines())
def test_every_pip_line_is_a_requirement_or_an_option(line):
    assert isinstance(line, str), f"pip line {line!r} is not a string (YAML turned it into {type(line).__name__})"
    if line.startswith("-"):
        option = shlex.split(line)[0].split("=")[0]
        assert option in PIP_FILE_OPTIONS, f"{line!r}: pip does not accept {option} in a requirements file"
        return
    try:
        Requirement(line)
    except InvalidRequirement as e:
        pytest.fail(f"{line!r} is not a valid requirement: {e}")


def test_torch_comes_from_the_cpu_index_on_binder():
    lines = pip_lines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert lines.index("--extra-index-url https://download.pytorch.org/whl/cpu") < lines.index("torch==2.13.0")


def test_postbuild_is_an_executable_bash_script_with_lf_endings():
    path = ROOT / "postBuild"
    data = path.read_bytes()
    assert data.startswith(b"#!/bin/bash\n") or data.startswith(b"#!/usr/bin/env bash\n"), data[:30]
    assert b"\r" not in data, "postBuild has CRLF line endings: repo2docker's bash would fail on them"
    assert os.access(path, os.X_OK), "postBuild is not executable: chmod +x postBuild (and commit the mode)"
    assert b"set -euo pipefail" in data


def test_lab_settings_override_names_a_real_setting():
    overrides = json.loads((ROOT / "jupyter" / "overrides.json").read_text())
    assert overrides == {"@jupyterlab/notebook-extension:tracker": {"kernelShutdown": True}}
    schema = Path(sys.prefix) / "share/jupyter/lab/schemas/@jupyterlab/notebook-extension/tracker.json"
    assert "kernelShutdown" in json.loads(schema.read_text())["properties"]
    assert "jupyter/overrides.json" in (ROOT / "postBuild").read_text()


def test_no_binder_folder_hides_the_top_level_files():
    # repo2docker reads only binder/ (or .binder/) when it exists, and would then ignore environment.yml.
    assert not (ROOT / "binder").exists() and not (ROOT / ".binder").exists()
