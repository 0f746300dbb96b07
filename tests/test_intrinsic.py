import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.intrinsic import ToyBlockSums, baseline, dint90, solve_toy, sweep, toy_sweep
from helpers.models import mlp

# --- the toy problem --------------------------------------------------------------------------

def test_toy_d10_solves_every_seed_and_d9_fails_on_most():
    table = toy_sweep([9, 10], seeds=range(10), progress=False)
    perf = table.pivot(index="seed", columns="d", values="performance")
    assert (perf[10] > 0.9).all()  # 10 random directions always reach the 990-dim solution plane
    assert (perf[9] > 0.9).sum() <= 2  # measured: 1 of 10 seeds (the residual happened to be tiny)
    assert perf[9].median() < 0.5


def test_toy_blocks_and_solution_plane():
    toy = ToyBlockSums(D=1000, n_blocks=10, seed=0)
    with torch.no_grad():
        toy.theta.copy_(torch.arange(1, 11).float().repeat_interleave(100) / 100)
    assert torch.allclose(toy(), toy.targets) and toy.loss(toy()).item() < 1e-9
    assert ToyBlockSums(seed=3).theta.shape == (1000,)


def test_adam_struggles_where_lbfgs_converges():
    lbfgs = solve_toy(10, seed=3)
    adam = solve_toy(10, seed=3, optimizer="adam", steps=3000)
    assert lbfgs["performance"] > 0.999 and adam["performance"] < 0.5


# --- d_int90 ----------------------------------------------------------------------------------

def table_from(acc: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"projection": "fastfood", "d": d, "seed": s, "test_acc": a}
                         for d, accs in acc.items() for s, a in enumerate(accs)])


SYNTH = table_from({10: [0.20, 0.22, 0.21], 100: [0.60, 0.62, 0.58], 300: [0.80, 0.86, 0.83],
                    1000: [0.88, 0.89, 0.87], 3000: [0.91, 0.90, 0.92]})


def test_dint90_relative_and_absolute_rules():
    rel = dint90(SYNTH, 0.93, "relative")
    assert rel["threshold"] == pytest.approx(0.837)
    assert rel["d_int90"] == 1000  # 300 reaches 0.830 on average: just below 0.837
    ab = dint90(SYNTH, 0.93, "absolute")
    assert ab["threshold"] == 0.90 and ab["d_int90"] == 3000
    assert rel["n_seeds"] == 3 and 0 < rel["reached"] <= 1


def test_dint90_bootstrap_spread_covers_seed_noise():
    rel = dint90(SYNTH, 0.93, "relative", n_boot=500)
    assert rel["boot_low"] == 300 and rel["boot_high"] == 1000  # seed 1 alone reaches at 300
    same = table_from({10: [0.2] * 3, 100: [0.85] * 3})
    flat = dint90(same, 0.93)
    assert flat["d_int90"] == flat["boot_low"] == flat["boot_high"] == 100 and flat["boot_std"] == 0


def test_dint90_not_reached_is_inf_and_interpolation_lands_between():
    never = dint90(SYNTH, 0.93, "absolute", level=0.95)
    assert math.isinf(never["d_int90"]) and never["reached"] == 0
    interp = dint90(SYNTH, 0.93, "relative", interpolate=True)["d_int90"]
    assert 300 < interp < 1000


def test_dint90_gap_rule_measures_from_a_reference():
    gap = dint90(SYNTH, 0.93, "gap", reference=0.5)
    assert gap["threshold"] == pytest.approx(0.887) and gap["d_int90"] == 3000  # 1000 averages 0.880
    # reference 0 is the relative rule, to the last digit and bootstrap sample
    zero, rel = dint90(SYNTH, 0.93, "gap", reference=0.0), dint90(SYNTH, 0.93, "relative")
    assert zero["threshold"] == rel["threshold"] and np.array_equal(zero["boot_samples"], rel["boot_samples"])
    # a reference per seed is resampled like the baseline: the estimate uses the mean
    per = dint90(SYNTH, [0.92, 0.93, 0.94], "gap", reference=[0.4, 0.5, 0.6])
    assert per["threshold"] == pytest.approx(0.5 + 0.9 * 0.43)


@pytest.mark.parametrize("kwargs, match", [
    ({"rule": "gap"}, "needs reference"), ({"rule": "relative", "reference": 0.1}, "take none"),
    ({"rule": "gap", "reference": 0.95}, "not below the baseline"),
    ({"rule": "gap", "reference": 1.5}, "in \\[0, 1\\)"),
    ({"rule": ["gap"]}, "unknown rule")])
def test_dint90_gap_rule_refuses_bad_references(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dint90(SYNTH, 0.93, **kwargs)


def test_dint90_per_seed_baseline_is_resampled():
    out = dint90(SYNTH, [0.92, 0.93, 0.94], "relative")
    assert out["threshold"] == pytest.approx(0.837) and out["d_int90"] == 1000


# --- sweep / baseline -------------------------------------------------------------------------

@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(64, 20, generator=g)
    y = (X[:, :3].argmax(1)).long()
    return X, y, X[:32], y[:32]


def test_sweep_returns_a_tidy_table_with_histories(tiny, capsys):
    table = sweep(*tiny, ds=[4, 16], seeds=[0, 1], projections=["fastfood", "sparse"],
                  model_fn=lambda seed: mlp((20, 8, 3), seed=seed), epochs=2, lr=0.05, progress=False)
    assert len(table) == 8
    assert {"projection", "d", "seed", "D", "train_acc", "test_acc", "seconds", "history"} <= set(table.columns)
    assert (table.D == 20 * 8 + 8 + 8 * 3 + 3).all()
    assert table.test_acc.between(0, 1).all() and (table.seconds > 0).all()
    assert all(len(h["test_acc"]) == 2 for h in table.history)
    assert capsys.readouterr().err == ""  # progress=False prints nothing
    again = sweep(*tiny, ds=[4], seeds=[1], model_fn=lambda seed: mlp((20, 8, 3), seed=seed), epochs=2,
                  lr=0.05, progress=False)
    first = table[(table.projection == "fastfood") & (table.d == 4) & (table.seed == 1)].iloc[0]
    assert again.test_acc[0] == first.test_acc  # a seed fixes the whole run


def test_baseline_trains_all_parameters(tiny):
    table = baseline(*tiny, seeds=[0], model_fn=lambda seed: mlp((20, 8, 3), seed=seed), epochs=30, lr=0.05,
                     progress=False)
    assert table.projection[0] == "direct" and table.d[0] == table.D[0] == 195
    assert table.train_acc[0] > 0.6




def test_dint90_per_seed_estimates_and_bootstrap_samples():
    out = dint90(SYNTH, 0.93, "relative", interpolate=True, n_boot=200)
    assert len(out["per_seed"]) == 3 and all(300 < v < 1000 for v in out["per_seed"][::2])
    assert out["per_seed"][1] < 300 < out["per_seed"][0]  # seed 1 reaches 0.837 between 100 and 300
    assert out["per_seed_mean"] == pytest.approx(sum(out["per_seed"]) / 3) and out["per_seed_std"] > 0
    assert out["boot_samples"].shape == (200,) and out["boot_low"] <= out["d_int90"] <= out["boot_high"]
    never = dint90(SYNTH, 0.93, "absolute", level=0.95)
    assert math.isinf(never["per_seed_mean"]) and math.isnan(never["per_seed_std"])


def test_subspace_lr_keeps_the_step_in_theta_D_constant(tiny):
    from helpers.intrinsic import subspace_lr
    assert subspace_lr(0.1, 4000) == 0.1 and subspace_lr(0.1, 4000, lr_ref_d=1000) == pytest.approx(0.05)
    assert subspace_lr(0.1, 250, lr_ref_d=1000) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="lr_ref_d must be >= 1"):
        subspace_lr(0.1, 100, lr_ref_d=0)
    table = sweep(*tiny, ds=[4, 16], seeds=[0], model_fn=lambda seed: mlp((20, 8, 3), seed=seed), epochs=1, lr=0.05,
                  lr_ref_d=4, progress=False)
    assert table.lr.tolist() == [pytest.approx(0.05), pytest.approx(0.025)]
    with pytest.raises(ValueError, match="lr_ref_d"):
        sweep(*tiny, ds=[4], seeds=[0], model_fn=lambda seed: mlp((20, 8, 3), seed=seed), epochs=1, lr_ref_d=2.5,
              progress=False)
