"""The helpers notebook 06 adds: saved_activation_bytes, peak_rss (helpers.memory) and step_times (helpers.text)."""
import gc
import weakref

import pytest
import torch
from conftest import says, unchanged
from torch import nn

from helpers.memory import measure_training_memory, peak_rss, saved_activation_bytes
from helpers.text import step_times


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def test_saved_activation_bytes_counts_what_backward_keeps_and_changes_nothing():
    model = _mlp().eval()
    X, y = torch.randn(32, 8), torch.arange(32) % 3
    rng = torch.random.get_rng_state()
    with unchanged(models=[model], tensors=[X, y]):
        out = saved_activation_bytes(model, X, y)
    assert torch.equal(torch.random.get_rng_state(), rng) and not model.training
    # the first layer's input, the hidden activations (ReLU output, dropout mask, second input), the log-softmax
    assert out["activations"] >= 4 * 32 * (8 + 16 + 16)
    assert out["parameters"] == 4 * 16 * 3  # the second layer's weight, saved to get the gradient of its input
    frozen = _mlp()
    frozen[0].requires_grad_(False)
    assert saved_activation_bytes(frozen, X, y)["activations"] < out["activations"]  # no input kept for fc1's grad


def test_saved_activation_bytes_leaves_nothing_alive():
    # the graph it builds is freed when it returns: no activation and no weight outlives the call (a pack hook that
    # returned the saved tensor itself made a reference cycle through autograd's C++ graph, which gc cannot free)
    model = _mlp()
    X, y = torch.randn(32, 8), torch.arange(32) % 3
    saved_activation_bytes(model, X, y)
    weight, module = weakref.ref(model[0].weight), weakref.ref(model)
    del model
    gc.collect()
    assert weight() is None and module() is None


def test_measure_training_memory_without_a_copy_trains_the_model_and_measures_the_same():
    X, y = torch.randn(32, 8), torch.arange(32) % 3
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.random.get_rng_state()
    assert measure_training_memory(model, X, y, copy=False) == measure_training_memory(_mlp(), X, y)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(p.grad is not None for p in model.parameters())  # the model itself took the step
    assert not any(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    fresh = _mlp()
    with pytest.raises(ValueError, match=says("copy must be True", "or False")), unchanged(models=[fresh]):
        measure_training_memory(fresh, X, y, copy="no")


def test_saved_activation_bytes_bad_input():
    with pytest.raises(ValueError, match=says("model must be a torch.nn.Module")):
        saved_activation_bytes("model", torch.randn(2, 8), torch.zeros(2, dtype=torch.long))


def test_peak_rss_sees_what_the_child_allocates():
    small = peak_rss("x = 1")
    big = peak_rss("x = bytearray(300_000_000); x[::4096] = b'1' * len(x[::4096])")
    assert big - small > 250e6
    with pytest.raises(ValueError, match=says("the child process failed", "ZeroDivisionError")):
        peak_rss("1 / 0")
    with pytest.raises(ValueError, match=says("code must be a non-empty str")):
        peak_rss("")


def test_step_times_times_every_model_and_leaves_the_rng():
    models = {"a": _mlp(), "b": nn.Linear(8, 3)}
    X, y = torch.randn(16, 8), torch.arange(16) % 3
    rng = torch.random.get_rng_state()
    t = step_times(models, X, y, repeats=3, steps=1)
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values())
    assert torch.equal(torch.random.get_rng_state(), rng)
    with pytest.raises(ValueError, match=says("models must be a non-empty dict")):
        step_times({}, X, y)
    with pytest.raises(ValueError, match=says("repeats")):
        step_times(models, X, y, repeats=0)
