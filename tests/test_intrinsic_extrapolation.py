"""helpers.intrinsic.power_law_extrapolation: the log-log fit, its bootstrap, and its refusals."""
import math

import numpy as np
import pytest

from helpers.intrinsic import power_law_extrapolation


def test_exact_power_law_is_recovered():
    n = [1000, 2000, 4000]
    values = [[3 * x ** 0.5] * 3 for x in n]  # no seed noise: the bootstrap has nothing to resample
    out = power_law_extrapolation(n, values, 60000, n_boot=50)
    assert out["slope"] == pytest.approx(0.5, abs=1e-9)
    assert out["prediction"] == pytest.approx(3 * math.sqrt(60000), rel=1e-9)
    assert out["pred_low"] == pytest.approx(out["prediction"], rel=1e-9) == pytest.approx(out["pred_high"], rel=1e-9)


def test_seed_noise_widens_the_interval_and_the_bootstrap_is_seeded():
    n = [1000, 2000, 4000]
    values = [[400, 500, 600], [500, 640, 700], [600, 700, 900]]
    a = power_law_extrapolation(n, values, 60000, n_boot=500, seed=3)
    b = power_law_extrapolation(n, values, 60000, n_boot=500, seed=3)
    assert np.array_equal(a["boot_preds"], b["boot_preds"])
    assert a["pred_low"] < a["prediction"] < a["pred_high"] and a["slope_low"] < a["slope"] < a["slope_high"]


@pytest.mark.parametrize("n, values, at", [([1000], [[1.0]], 10), ([1000, 1000], [[1.0], [2.0]], 10),
                                           ([1000, 2000], [[1.0]], 10), ([1000, 2000], [[1.0], [math.inf]], 10),
                                           ([1000, 2000], [[1.0], []], 10), ([1000, 2000], [[1.0], [2.0]], 0)])
def test_bad_input_is_refused(n, values, at):
    with pytest.raises(ValueError):
        power_law_extrapolation(n, values, at)
