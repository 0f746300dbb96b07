"""helpers.training: train / evaluate / training_step, the progress bar a saved notebook keeps, and the widget
stand-in text."""
from unittest import mock

import pytest
import torch
from torch import nn

from helpers import training
from helpers.models import mlp
from helpers.plotting import show_interactive

from conftest import says, unchanged

SIZES = (6, 8, 3)


def _task(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, SIZES[0], generator=g), torch.randint(0, SIZES[-1], (n,), generator=g)


def test_same_seed_same_history_and_weights():
    X, y = _task()
    runs = [(m := mlp(SIZES, seed=1), training.train(m, X, y, epochs=3, batch_size=5, seed=4, progress=False))
            for _ in range(2)]
    assert runs[0][1]["loss"] == runs[1][1]["loss"]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()))
    other = training.train(mlp(SIZES, seed=1), X, y, epochs=3, batch_size=5, seed=5, progress=False)
    assert other["loss"] != runs[0][1]["loss"]


@pytest.mark.parametrize("eval_every, steps", [(None, [5, 10, 15]), (2, [2, 4, 6, 8, 10, 12, 14, 15]),
                                               (7, [7, 14, 15]), (100, [15])])
def test_eval_every_sets_the_record_steps(eval_every, steps):
    X, y = _task()
    history = training.train(mlp(SIZES), X, y, epochs=3, batch_size=5, eval_every=eval_every, eval_data=(X, y),
                             progress=False)
    assert history["step"] == steps and len(history["test_acc"]) == len(steps)
    assert history["epoch"][-1] == 3.0


@pytest.mark.parametrize("mode", [True, False], ids=["from-train", "from-eval"])
def test_train_ends_in_eval_mode_and_evaluate_keeps_the_mode(mode):
    X, y = _task()
    model = mlp(SIZES).train(mode)
    training.evaluate(model, X, y)
    assert model.training is mode
    training.train(model, X, y, epochs=1, progress=False)
    assert not model.training


def test_an_interrupted_train_changes_nothing():
    model, (X, y) = mlp(SIZES).train(), _task()
    calls = {"n": 0}

    def interrupt(module, args):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
    model.fc1.register_forward_pre_hook(interrupt)
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(KeyboardInterrupt):
        training.train(model, X, y, epochs=2, batch_size=4, progress=False)


def test_training_step_takes_one_optimizer_step():
    model, (X, y) = mlp(SIZES), _task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = training.training_step(model, opt, X, y)
    assert loss.shape == () and not loss.requires_grad
    assert torch.isclose(loss, nn.functional.cross_entropy(mlp(SIZES)(X), y))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_set_seed_refuses_a_float():
    with pytest.raises(ValueError, match=says("seed must be an integer, got 0.5", "seed=0")):
        training.set_seed(0.5)


class FakeHandle:
    def __init__(self):
        self.shown = []

    def update(self, data, raw=False):
        self.shown.append(data["text/plain"])


def test_notebook_bar_ends_in_its_finished_state():
    handle = FakeHandle()
    with mock.patch("IPython.display.display", lambda data, raw, display_id: handle.shown.append(data["text/plain"]) or handle):
        bar = training._NotebookBar(total=4, desc="sweep")
        for _ in range(4):
            bar.update(1)
        bar.set_postfix(d=10)
        bar.close()
    assert handle.shown[0].startswith("sweep: ") and " 0/4 " in handle.shown[0]
    assert handle.shown[-1].startswith("sweep: " + "█" * 24 + " 4/4 [done in ") and handle.shown[-1].endswith("d=10")


def test_outside_a_notebook_the_bar_is_tqdm_and_can_be_silent(capsys):
    bar = training.progress_bar(3, "train", enabled=False)
    bar.update(3)
    bar.set_postfix(test_acc="0.9")
    bar.close()
    assert capsys.readouterr().err == ""


def test_show_interactive_displays_a_short_note_beside_the_widget_view():
    shown = []
    with mock.patch("IPython.display.display", lambda data, raw: shown.append(data)):
        widget = show_interactive(lambda x=1: None, x=[1, 2])
    assert shown[0]["text/plain"] == "interactive: run the notebook to use it"
    assert shown[0]["application/vnd.jupyter.widget-view+json"]["model_id"] == widget.model_id


@pytest.mark.parametrize("shell, expected", [(None, False), (type("TerminalInteractiveShell", (), {})(), False),
                                             (type("ZMQInteractiveShell", (), {})(), True)])
def test_notebook_detection(shell, expected):
    with mock.patch("IPython.get_ipython", lambda: shell):
        assert training._in_notebook() is expected


def test_choose_lr_picks_the_best_on_validation_and_returns_its_model():
    X, y = _task(40)
    fit, val = (X[:30], y[:30]), (X[30:], y[30:])
    state = torch.random.get_rng_state()
    choice = training.choose_lr(lambda: mlp(SIZES, seed=1), [1e-4, 1e-2, 1e-1], fit, val, epochs=3, batch_size=10,
                                progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert list(choice.val_acc) == [1e-4, 1e-2, 1e-1]
    assert choice.val_acc[choice.lr] == max(choice.val_acc.values())
    again = mlp(SIZES, seed=1)
    training.train(again, *fit, lr=choice.lr, epochs=3, batch_size=10, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), choice.model.parameters()))


def test_choose_lr_breaks_a_tie_towards_the_smaller_rate():
    X, y = _task(20)
    tiny = [1e-12, 1e-13]  # too small to change any prediction: equal validation accuracy
    choice = training.choose_lr(lambda: mlp(SIZES, seed=1), tiny, (X, y), (X, y), epochs=1, progress=False)
    assert choice.lr == 1e-13


@pytest.mark.parametrize("build, lrs, extra, fragments", [
    ("not callable", [1e-3], {}, ["build must be a function that returns a fresh model, got str"]),
    (None, [], {}, ["lrs must list at least one learning rate"]),
    (None, [1e-3, 1e-3], {}, ["each once"]),
    (None, [0.0], {}, ["each learning rate in lrs must be > 0, got 0.0"]),
    (None, 1e-3, {}, ["lrs must be a list of learning rates, got 0.001"]),
    (None, [1e-3], {"lr": 1e-2}, ["lr is set by choose_lr itself", "drop it"]),
    (lambda: "a model", [1e-3], {}, ["model must be a torch.nn.Module, got str"]),
])
def test_choose_lr_bad_arguments(build, lrs, extra, fragments):
    X, y = _task()
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        training.choose_lr(build or (lambda: mlp(SIZES)), lrs, (X, y), (X, y), progress=False, **extra)
