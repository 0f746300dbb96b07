"""The committed sweep results behind notebooks 03 and 04 are complete and were made by the scripts as they are."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINE_KEYS = {"torch", "cpu_capability", "machine", "threads"}  # where the sweep ran, not what it ran


def script(name):
    spec = importlib.util.spec_from_file_location(f"sweep_{name}", ROOT / "sweeps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["intrinsic_mlp", "lora_vs_subspace"])
def test_results_file_is_complete_and_matches_its_script(name):
    sweep = script(name)
    stored = json.loads((ROOT / "sweeps" / f"{name}_results.json").read_text())
    done = {r["key"]: r for r in stored["runs"]}
    assert len(done) == len(stored["runs"]), "duplicate run keys"
    ours = {k: v for k, v in sweep.config().items() if k not in MACHINE_KEYS}
    theirs = {k: v for k, v in stored["config"].items() if k not in MACHINE_KEYS}
    assert json.loads(json.dumps(ours)) == theirs, "the script's settings changed since the results were made"
    planned = sweep.plan_lr() + sweep.plan_extensions(done)
    planned += sweep.plan_final(done) if name == "lora_vs_subspace" else sweep.plan_rest()
    missing = [sweep.key(r) for r in planned if sweep.key(r) not in done]
    target = {"intrinsic_mlp": "make sweep-03", "lora_vs_subspace": "make sweep-04"}[name]
    assert not missing, f"{len(missing)} planned runs missing, e.g. {missing[:3]}: run {target}"


def test_peft_motivation_results_are_complete_and_match_the_script():
    sweep = script("peft_motivation")
    stored = json.loads((ROOT / "sweeps" / "peft_motivation_results.json").read_text())
    ours = {k: v for k, v in sweep.config().items() if k not in MACHINE_KEYS}
    theirs = {k: v for k, v in stored["config"].items() if k not in MACHINE_KEYS}
    assert json.loads(json.dumps(ours)) == theirs, "the script's settings changed since the results were made"
    keys = [r["key"] for r in stored["runs"]]
    assert len(keys) == len(set(keys)), "duplicate run keys"
    missing = [sweep.key(*r) for r in sweep.plan() if sweep.key(*r) not in set(keys)]
    assert not missing, f"{len(missing)} planned runs missing, e.g. {missing[:3]}: run make sweep-01"
    assert set(stored["pretrained_source_acc"]) == set(sweep.TRANSFER_PAIRS)
