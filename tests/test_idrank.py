"""helpers.idrank (notebook 07) and sweeps/id_vs_rank.py: task builders, counts, crossings, statistics, the plan and
the committed results file."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.idrank import (
    bootstrap_spearman,
    complete_sizes,
    crossing_table,
    gap_estimates,
    load_text_task,
    loglog_slope,
    lora_head_count,
    mlp_model,
    mlp_tasks,
    spearman,
    vera_count,
)
from helpers.models import mlp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("id_vs_rank", ROOT / "sweeps" / "id_vs_rank.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tasks():
    return mlp_tasks()


def test_mlp_tasks_splits_and_labels(tasks):
    out, (Xs, ys) = tasks
    assert list(out) == ["parity", "ge5", "mod3", "digits", "rot90", "parity200"]
    assert len(Xs) == 2000 and int(ys.max()) == 9
    for name, t in out.items():
        X, y = t["train"]
        assert int(y.max()) + 1 == t["n_out"] and len(t["test"][0]) == 1000
        assert len(t["val"][0]) == 500
        if name == "parity200":
            assert len(X) == 200 and t["fit"][0] is X
        else:
            assert len(X) == 2000 and len(t["fit"][0]) == 1500
        # the validation images are never the test images and, except for parity200, a part of the training pool
        assert not any(torch.equal(t["val"][0][0], row) for row in t["test"][0][:50])
    assert torch.equal(out["parity"]["train"][1], out["digits"]["train"][1] % 2)
    assert torch.equal(out["ge5"]["train"][1], (out["digits"]["train"][1] >= 5).long())
    img = out["digits"]["train"][0][0].view(28, 28)
    assert torch.equal(out["rot90"]["train"][0][0].view(28, 28), torch.rot90(img, 1, dims=(0, 1)))


def test_mlp_tasks_are_deterministic_and_leave_the_global_rng(tasks):
    state = torch.random.get_rng_state()
    again, _ = mlp_tasks()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again["mod3"]["val"][0], tasks[0]["mod3"]["val"][0])


@pytest.mark.parametrize("n_out", [2, 3, 10])
def test_counts_match_the_models(n_out):
    body = mlp((784, 200, 200, 10), seed=0)
    for r in (0, 1, 4):
        model = mlp_model("pre-trained", "lora_head", r, 0, n_out, body)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == lora_head_count(r, n_out)
    for r in (1, 16):
        model = mlp_model("pre-trained", "vera", r, 0, n_out, body)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == vera_count(r, n_out)
    assert lora_head_count(0, n_out) == 400 + 200 * n_out + n_out


def test_mlp_model_starts_and_refusals():
    body = mlp((784, 200, 200, 10), seed=0)
    state = torch.random.get_rng_state()
    a = mlp_model("pre-trained", "head", 0, 3, 2, body)
    b = mlp_model("random", "full", 0, 3, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.fc1.weight, body.fc1.weight) and a.fc1.weight is not body.fc1.weight  # a copy
    assert torch.equal(b.fc1.weight, mlp((784, 200, 200, 2), seed=103).fc1.weight)
    with pytest.raises(ValueError, match="body="):
        mlp_model("pre-trained", "full", 0, 0, 2)
    with pytest.raises(ValueError, match="method"):
        mlp_model("random", "prefix", 0, 0, 2)


def test_text_tasks_load_with_their_checksums(tmp_path):
    texts, y, texts_test, y_test, names = load_text_task("sms_spam")
    assert len(texts) == 2000 and len(texts_test) == 500 and names == ("ham", "spam") and y.dtype == torch.int64
    assert int(y.sum()) == 251
    texts, y, _, y_test, names = load_text_task("movie")
    assert names == ("negative", "positive") and abs(int(y.sum()) - 1000) < 20
    (tmp_path / "sms_spam.npz").write_bytes(b"not the file")
    with pytest.raises(ValueError):
        load_text_task("sms_spam", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown text task"):
        load_text_task("imdb")


def _runs(curve: dict, full=(0.95, 0.96, 0.97), head=(0.80, 0.81, 0.79), method="subspace") -> pd.DataFrame:
    rows = [dict(method="full", size=0, seed=s, trainable=10_000, test_acc=a) for s, a in enumerate(full)]
    rows += [dict(method="head", size=0, seed=s, trainable=20, test_acc=a) for s, a in enumerate(head)]
    for size, acc in curve.items():
        rows += [dict(method=method, size=size, seed=s, trainable=10 * size, test_acc=acc) for s in range(3)]
    return pd.DataFrame(rows)


def test_gap_estimates_interpolate_the_gap_rule():
    # threshold = 0.80 + 0.9 x (0.96 - 0.80) = 0.944; the curve crosses halfway (in accuracy) from 100 to 400
    est = gap_estimates(_runs({100: 0.904, 400: 0.984}), anchor=None)
    assert est["resolved"] and est["gap"] == pytest.approx(0.16)
    assert est["subspace"]["threshold"] == pytest.approx(0.944)
    assert est["subspace"]["d_int90"] == pytest.approx(200.0)  # log-linear: halfway between 100 and 400 is 200
    lora = gap_estimates(_runs({1: 0.90, 4: 0.95}, method="lora"), anchor=None)["lora"]
    assert lora["d_int90"] < 40  # read in the trainable count (10 per size); the head's runs are its size-0 point
    first = gap_estimates(_runs({4: 0.95, 16: 0.97}, method="lora"), anchor=None)["lora"]
    assert first["smallest"] == 40 and 20 < first["d_int90"] < 40  # between the head (20) and the smallest adapter
    assert "smallest" not in est["subspace"]  # a subspace's d is not a family of discrete adapters
    never = gap_estimates(_runs({100: 0.85, 400: 0.90}), anchor=None)["subspace"]
    assert math.isinf(never["d_int90"])


def test_gap_estimates_exclude_a_task_the_head_already_solves():
    est = gap_estimates(_runs({100: 0.9, 400: 0.96}, full=(0.90, 0.95, 0.92), head=(0.93, 0.91, 0.94)))
    assert not est["resolved"] and "subspace" not in est


def test_complete_sizes_and_crossing_table():
    runs = _runs({100: 0.9, 400: 0.96})
    partial = runs[~((runs.method == "subspace") & (runs["size"] == 400) & (runs.seed == 2))]
    kept = complete_sizes(partial[partial.method == "subspace"], range(3))
    assert set(kept["size"]) == {100}
    with pytest.raises(ValueError, match="same seeds"):
        crossing_table(partial[partial.method == "subspace"], size="size")
    with pytest.raises(ValueError, match="no column"):
        crossing_table(pd.DataFrame({"d": [1]}))


def test_spearman_and_slope():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="finite"):
        spearman([1, math.inf], [1, 2])
    b, a = loglog_slope([10, 100, 1000], [20, 200, 2000])
    assert b == pytest.approx(1.0) and a == pytest.approx(math.log10(2))
    with pytest.raises(ValueError):
        loglog_slope([0, 1], [1, 2])


def test_bootstrap_spearman_interval():
    rng = np.random.default_rng(0)
    xs = [rng.normal(10 * k, 1, 200) for k in range(1, 7)]
    ys = [rng.normal(100 * k, 5, 200) for k in range(1, 7)]
    mx, my = [v.mean() for v in xs], [v.mean() for v in ys]
    out = bootstrap_spearman(mx, my, xs, ys, n_boot=500, seed=1)
    assert out["rho"] == pytest.approx(1.0) and out["low"] > 0.5 and out["n_tasks"] == 6
    shuffled = bootstrap_spearman(mx, my[::-1], xs, ys[::-1], n_boot=500, seed=1)
    assert shuffled["rho"] == pytest.approx(-1.0) and shuffled["high"] < -0.5
    noisy = bootstrap_spearman([1, 2, 3, 4], [1, 2, 3, 4], [np.array([1.0, np.inf])] * 4, [np.array([1.0, 2.0])] * 4,
                               n_boot=50)
    assert len(noisy["samples"]) <= 50
    with pytest.raises(ValueError, match="at least 3"):
        bootstrap_spearman(mx[:2], my[:2], xs[:2], ys[:2])


def test_sweep_plan_order_and_refinements(sweep):
    plan = sweep.plan({})
    keys = [sweep.key(p) for p in plan]
    assert len(keys) == len(set(keys))
    first_text = next(i for i, p in enumerate(plan) if p["task"] in sweep.TEXT_N_CLASSES)
    assert all(p["task"] in sweep.TEXT_N_CLASSES for p in plan[first_text:])  # MLP tasks first: a coherent prefix
    assert keys.index("lr/parity/pre-trained/full/0/0/lr=0.0001") < keys.index("final/parity/random/full/0/0")
    assert {p["lr"] for p in plan if p["stage"] == "final" and p["task"] in ("parity", "rot90")} == {None}
    runs = {}

    def add(**p):
        p = dict(stage="final", start="pre-trained", task="parity", seed=0, lr=1e-3, **p)
        for s in sweep.SEEDS:
            runs[sweep.key(dict(p, seed=s))] = dict(p, seed=s, key=sweep.key(dict(p, seed=s)))
    add(method="full", size=0, test_acc=0.95)
    add(method="head", size=0, test_acc=0.85)
    for d in sweep.DIMS:  # thresholds 0.90 (level 0.5: first reached at d = 100) and 0.94 (level 0.9: at d = 800)
        add(method="subspace", size=d, test_acc=0.95 if d >= 800 else 0.9 if d >= 100 else 0.85)
    assert sweep.refinements(runs, "parity", "pre-trained", "subspace", sweep.DIMS) == [35, 71, 141, 283, 566, 1131]
    assert sweep.refinements(runs, "parity", "pre-trained", "lora_head", sweep.RANKS) == []  # grid not run yet


def test_sweep_lr_choice_extends_at_the_edge(sweep):
    runs = {}
    for lr in sweep.LR_GRID["head"]:
        p = dict(stage="lr", task="ge5", start="random", method="head", size=0, seed=0, lr=lr)
        runs[sweep.key(p)] = dict(p, val_acc=lr)  # the largest lr is best: one more step is due
    assert sweep.chosen_lr(runs, "ge5", "random", "head") is None
    todo = [p for p in sweep.plan(runs) if p["stage"] == "lr" and sweep.key(p) not in runs and p["task"] == "ge5"
            and p["start"] == "random" and p["method"] == "head"]
    assert [p["lr"] for p in todo] == [0.1]
    p = dict(todo[0])
    runs[sweep.key(p)] = dict(p, val_acc=0.0)
    assert sweep.chosen_lr(runs, "ge5", "random", "head") == 3e-2


def test_sweep_text_tasks_use_their_own_lr_stage(sweep):
    runs = {}
    for lr in sweep.TEXT_LR_GRID["said"]:
        p = dict(stage="lr", task="movie", start="pre-trained", method="said", size=1000, seed=0, lr=lr)
        runs[sweep.key(p)] = dict(p, val_acc=lr)  # the largest lr is best: one more step is due, as on the MLP
    assert sweep.chosen_lr(runs, "movie", "pre-trained", "said") is None
    todo = [p for p in sweep.plan(runs) if p["stage"] == "lr" and not sweep.done(p, runs) and p["task"] == "movie"
            and p["method"] == "said"]
    assert [p["lr"] for p in todo] == [1.0]
    runs[sweep.key(todo[0])] = dict(todo[0], val_acc=0.0)
    assert sweep.chosen_lr(runs, "movie", "pre-trained", "said") == 0.3
    assert sweep.chosen_lr(runs, "trec6", "pre-trained", "said") == sweep.TEXT_LR["said"]  # minilm.py's choice
    final = dict(stage="final", task="movie", start="pre-trained", method="said", size=1000, seed=0, lr=0.3)
    runs[sweep.key(final)] = dict(final, lr=0.1, test_acc=0.7)  # made at TREC-6's rate: due again
    assert not sweep.done(final, runs)
    runs[sweep.key(final)]["lr"] = 0.3
    assert sweep.done(final, runs) and not sweep.done(dict(final, lr=None), runs)
    stray = dict(final, size=123, key="final/movie/pre-trained/said/123/0")  # a refined size no longer planned
    kept = sweep.retire_unplanned({"runs": [dict(r, key=k) for k, r in runs.items()] + [stray]})
    assert [r["key"] for r in kept["superseded"]] == [stray["key"]] and stray not in kept["runs"]


def test_committed_results_match_the_script(sweep):
    """The results file, if present, was written with the script's current settings and holds only planned points,
    each complete where the notebook reads it."""
    path = ROOT / "sweeps" / "id_vs_rank_results.json"
    if not path.exists():
        pytest.skip("no results yet")
    stored = json.loads(path.read_text())
    assert stored["config"] == sweep.config()
    runs = {r["key"]: r for r in stored["runs"]}
    assert len(runs) == len(stored["runs"]), "duplicate keys"
    planned = {sweep.key(p): p for p in sweep.plan(runs)}
    for k, r in runs.items():
        assert k in planned, f"{k} is not in the plan"
        assert sweep.done(planned[k], runs), f"{k} was made at lr {r['lr']:g}, the plan now says {planned[k]['lr']}"
        assert r.get("test_acc", r.get("val_acc")) is not None or "diverged" in r
