"""sweeps/minilm.py (notebook 05's full sweep): its plan, the learning-rate choice, and the results file's checks."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("minilm_sweep", ROOT / "sweeps" / "minilm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lr_points(sweep, best):
    """Finished lr-stage points in which `best[(method, weights)]` had the top validation accuracy."""
    out = []
    for (m, w), lrs in sweep.LR_GRID.items():
        for lr in lrs:
            out.append(dict(stage="lr", method=m, weights=w, size=sweep.LR_SIZE.get(m, 0), seed=0, lr=lr,
                            val_acc=0.9 if lr == best.get((m, w), lrs[0]) else 0.5))
    return out


def test_the_plan_covers_every_family_and_keys_are_unique(sweep):
    plan = sweep.plan([])
    keys = [sweep.key(p) for p in plan]
    assert len(keys) == len(set(keys))
    lr_stage = [p for p in plan if p["stage"] == "lr"]
    assert len(lr_stage) == sum(len(v) for v in sweep.LR_GRID.values())
    grid = [p for p in plan if p["stage"] == "grid"]
    assert {(p["method"], p["weights"]) for p in grid} >= {(m, w) for m, w in sweep.LR_GRID}
    assert all(p["lr"] is None for p in grid)  # no learning rate is known before the lr stage ran
    assert [p["size"] for p in grid if p["method"] == "said" and p["weights"] == "pre-trained"][-1] == 11_526
    assert sweep.LORA_R1_BUDGET == 2 * 384 * 12 + 2310  # LoRA r=1 on W_q, W_v of 6 layers, plus the head


def test_grid_points_take_their_family_s_best_learning_rate(sweep):
    best = {("said", "pre-trained"): sweep.LR_GRID["said", "pre-trained"][2], ("full", "random"): 3e-4}
    points = _lr_points(sweep, best)
    chosen = sweep.chosen_lrs(points)
    assert chosen["said", "pre-trained"] == best["said", "pre-trained"] and chosen["full", "random"] == 3e-4
    grid = {sweep.key(p): p for p in sweep.plan(points) if p["stage"] == "grid"}
    assert grid["grid/fastfood/pre-trained/1000/0"]["lr"] == best["said", "pre-trained"]  # plain Fastfood: SAID's
    assert grid["grid/said/pre-trained/250/1"]["lr"] == best["said", "pre-trained"]
    # a family with an unfinished lr point has no lr yet, and a diverged run (val_acc None) is never chosen
    partial = [p for p in points if not (p["method"] == "lora" and p["weights"] == "random" and p["lr"] == 1e-3)]
    assert ("lora", "random") not in sweep.chosen_lrs(partial)
    diverged = [dict(p, val_acc=None) if p["method"] == "head" and p["lr"] == 3e-3 else p for p in points]
    assert sweep.chosen_lrs(diverged)["head", "pre-trained"] != 3e-3


def test_results_file_refuses_another_configuration_but_lets_lr_grids_grow(sweep, tmp_path):
    path = tmp_path / "results.json"
    data = {"config": sweep.config(), "runs": []}
    sweep.write_json(path, data)
    assert sweep.read(path)["config"] == sweep.config()
    smaller = sweep.config()
    smaller["lr_grid"] = {k: v[:2] for k, v in smaller["lr_grid"].items()}  # an older file, before a grid grew
    sweep.write_json(path, {"config": smaller, "runs": []})
    assert sweep.read(path)["config"] == sweep.config()
    other = dict(sweep.config(), steps=sweep.STEPS + 1)
    sweep.write_json(path, {"config": other, "runs": []})
    with pytest.raises(SystemExit, match="another configuration"):
        sweep.read(path)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary file left behind
    assert json.loads(path.read_text())["config"]["steps"] == sweep.STEPS + 1


def test_committed_results_are_complete_and_match_the_script(sweep):
    path = ROOT / "sweeps" / "minilm_results.json"
    stored = sweep.read(path)  # raises SystemExit if the script's settings changed since the file was made
    done = {p["key"] for p in stored["runs"]}
    assert len(done) == len(stored["runs"]), "duplicate run keys"
    missing = [sweep.key(p) for p in sweep.plan(stored["runs"]) if sweep.key(p) not in done]
    assert not missing, f"{len(missing)} planned runs missing, e.g. {missing[:3]}: run make sweep-05"


def test_val_mask_is_stratified_and_fixed():
    import torch

    from sweeps.minilm import val_mask
    y = torch.tensor([0] * 1749 + [1] * 251)  # SMS spam's training labels' counts
    m = val_mask(y)
    assert m.sum() == 500 and int(y[m].sum()) in (62, 63)  # 251 / 2,000 of 500 = 62.75 spam
    assert torch.equal(m, val_mask(y))  # the same split every time (its own generator: no global RNG touched)
