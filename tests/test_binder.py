"""Binder's files read the way repo2docker reads them: environment.yml parses as conda YAML whose pip
section pip accepts line by line, postBuild runs as an executable script, and the lab settings override
is valid JSON naming a real JupyterLab setting."""
import json
import os
import shlex
import subprocess
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
    assert data.startswith((b"#!/bin/bash\n", b"#!/usr/bin/env bash\n")), data[:30]
    assert b"\r" not in data, "postBuild has CRLF line endings: repo2docker's bash would fail on them"
    assert os.access(path, os.X_OK), "postBuild is not executable: chmod +x postBuild (and commit the mode)"
    assert b"set -euo pipefail" in data


def test_lab_settings_override_names_real_settings():
    overrides = json.loads((ROOT / "jupyter" / "overrides.json").read_text())
    # closing a notebook's tab shuts its kernel down; no "receive Jupyter news?" pop-up over the code
    assert overrides == {"@jupyterlab/notebook-extension:tracker": {"kernelShutdown": True},
                         "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}
    schemas = Path(sys.prefix) / "share/jupyter/lab/schemas/@jupyterlab"
    assert "kernelShutdown" in json.loads((schemas / "notebook-extension/tracker.json").read_text())["properties"]
    fetch_news = json.loads((schemas / "apputils-extension/notification.json").read_text())["properties"]["fetchNews"]
    assert "false" in [choice["const"] for choice in fetch_news["oneOf"]]
    assert "jupyter/overrides.json" in (ROOT / "postBuild").read_text()


def server_config():
    return json.loads((ROOT / "jupyter" / "jupyter_server_config.json").read_text())


def test_server_config_culls_idle_kernels_with_real_traits():
    from jupyter_server.services.kernels.kernelmanager import MappingKernelManager
    config = server_config()
    assert set(config) == {"MappingKernelManager"}
    assert set(config["MappingKernelManager"]) <= set(MappingKernelManager.class_trait_names())
    cull = config["MappingKernelManager"]
    # an open tab keeps its kernel (cull_connected false); a running cell is never cut (cull_busy false)
    assert 0 < cull["cull_interval"] < cull["cull_idle_timeout"]
    assert not cull["cull_connected"] and not cull["cull_busy"]


def test_make_lab_and_binder_both_read_the_server_config(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    assert "lab: export JUPYTER_CONFIG_PATH := $(CURDIR)/jupyter" in makefile
    # run postBuild's merge step against a scratch prefix holding a config of its own, then ask Jupyter what it reads
    postbuild = (ROOT / "postBuild").read_text()
    snippet = postbuild.split("python - <<'PY'\n")[1].split("\nPY\n")[0]
    etc = tmp_path / "etc" / "jupyter"
    etc.mkdir(parents=True)
    (etc / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"iopub_data_rate_limit": 1e7}}))
    code = f"import sys; sys.prefix = {str(tmp_path)!r}; exec({snippet!r})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    merged = json.loads((etc / "jupyter_server_config.json").read_text())
    assert merged == {"ServerApp": {"iopub_data_rate_limit": 1e7}, **server_config()}
    for folder in (etc, ROOT / "jupyter"):
        shown = subprocess.run([sys.executable, "-m", "jupyter", "server", "--show-config"], capture_output=True,
                               text=True, env=dict(os.environ, JUPYTER_CONFIG_PATH=str(folder)), timeout=120).stdout
        assert f".cull_idle_timeout = {server_config()['MappingKernelManager']['cull_idle_timeout']}" in shown, shown


def test_no_binder_folder_hides_the_top_level_files():
    # repo2docker reads only binder/ (or .binder/) when it exists, and would then ignore environment.yml.
    assert not (ROOT / "binder").exists() and not (ROOT / ".binder").exists()
