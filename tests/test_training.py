"""helpers.training: train / evaluate / training_step, the progress bar a saved notebook keeps, and the widget
stand-in text."""
import math
from unittest import mock

import pytest
import torch
from conftest import says, unchanged
from torch import nn

from helpers import training
from helpers.models import mlp
from helpers.plotting import show_interactive

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
    with mock.patch("IPython.display.display",
                    lambda data, raw, display_id: handle.shown.append(data["text/plain"]) or handle):
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


# --- steps, per-parameter learning rates, the linear probe -----------------------------------

def test_steps_runs_exactly_that_many_steps_across_epochs():
    X, y = _task()  # 24 rows, batch 5: 5 steps per epoch
    history = training.train(mlp(SIZES), X, y, steps=12, batch_size=5, eval_every=4, eval_data=(X, y), progress=False)
    assert history["step"] == [4, 8, 12] and history["epoch"] == [0.8, 1.6, 2.4]
    assert len(history["test_acc"]) == 3


def test_the_first_k_steps_of_a_longer_run_are_a_k_step_run():
    X, y = _task()
    short, long = mlp(SIZES, seed=1), mlp(SIZES, seed=1)
    h_short = training.train(short, X, y, steps=7, batch_size=5, eval_every=1, seed=3, progress=False)
    h_long = training.train(long, X, y, steps=12, batch_size=5, eval_every=1, seed=3, progress=False)
    assert h_long["loss"][:7] == h_short["loss"]  # constant lr, same batches: the same trajectory


def test_steps_matches_the_same_number_of_epochs():
    X, y = _task()
    a, b = mlp(SIZES, seed=1), mlp(SIZES, seed=1)
    ha = training.train(a, X, y, epochs=2, batch_size=5, seed=2, progress=False)
    hb = training.train(b, X, y, steps=10, batch_size=5, eval_every=5, seed=2, progress=False)
    assert ha["loss"] == hb["loss"] and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_lr_for_gives_a_parameter_group_its_own_learning_rate():
    X, y = _task()
    model = mlp(SIZES, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = mlp(SIZES, seed=1)  # the first batch's gradient, by hand: train's batch order from its seed
    first = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:5]
    nn.functional.cross_entropy(probe(X[first]), y[first]).backward()
    grads = {n: p.grad for n, p in probe.named_parameters()}
    training.train(model, X, y, steps=1, batch_size=5, optimizer="sgd", lr=0.1, lr_for={"head": 0.5}, seed=0,
                   progress=False)
    for n, p in model.named_parameters():
        lr = 0.5 if n.startswith("head.") else 0.1
        assert torch.allclose(before[n] - p.detach(), lr * grads[n], atol=1e-6), n


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(steps=3, epochs=2), ("pass epochs or steps, not both",)),
    (dict(steps=0), ("steps must be >= 1, got 0",)),
    (dict(steps=2.0), ("steps must be an integer, got 2.0",)),
    (dict(steps=2, lr_for={"body": 1e-2}),
     ("lr_for entry 'body' matches no trained parameter", "start with fc1, head")),
    (dict(steps=2, lr_for={"head": 0.0}), ("lr_for['head'] must be > 0, got 0.0",)),
    (dict(steps=2, lr_for={"head": 1e-2, "head.weight": 1e-3}), ("also selected by another lr_for entry",)),
    (dict(steps=2, lr_for=[("head", 1e-2)]), ("lr_for must be a non-empty dict",)),
    (dict(steps=2, eval_batch_size=0), ("eval_batch_size must be >= 1, got 0",)),
], ids=["both", "zero-steps", "float-steps", "unknown-prefix", "zero-lr", "overlap", "not-a-dict", "eval-batch"])
def test_steps_and_lr_for_refuse_bad_values_and_change_nothing(kwargs, fragments):
    model, (X, y) = mlp(SIZES), _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        training.train(model, X, y, progress=False, **kwargs)


def _blobs(n=300, k=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, k, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    scale = torch.logspace(-2, 2, k)  # columns on very different scales: standardisation must cope
    return (centres[y] + torch.randn(n, k, generator=g)) * scale + 5, y


def test_linear_probe_reaches_the_optimum_and_acts_on_raw_features():
    E, y = _blobs()
    probe = training.fit_linear_probe(E, y, l2=1e-2)
    assert isinstance(probe, nn.Linear) and probe.weight.shape == (3, 5) and not probe.weight.requires_grad
    assert training.evaluate(probe, E, y) > 0.9
    # at the optimum the objective's gradient (in the standardised coordinates it is defined in) vanishes
    X = E.double()
    mu, sigma = X.mean(0), X.std(0)
    W = (probe.weight.double() * sigma).requires_grad_(True)
    b = (probe.bias.double() + probe.weight.double() @ mu).requires_grad_(True)
    loss = nn.functional.cross_entropy(((X - mu) / sigma) @ W.T + b, y) + 0.5 * 1e-2 * (W * W).sum()
    loss.backward()
    assert W.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5


def test_linear_probe_is_deterministic_and_scale_free():
    E, y = _blobs()
    a, b = training.fit_linear_probe(E, y), training.fit_linear_probe(E, y)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    c = training.fit_linear_probe(E * 1000, y)  # standardised first: the same decision function
    assert torch.equal(a(E).argmax(1), c(E * 1000).argmax(1))
    before = torch.get_rng_state()
    training.fit_linear_probe(E, y)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(E=torch.rand(4, 2, 3)), ("E must be a (N, k) matrix", "(4, 2, 3)")),
    (dict(y=torch.tensor([0, 1, 2])), ("the features have 4 rows but y has 3 labels",)),
    (dict(y=torch.tensor([0, 1, 2, 3]), n_classes=3), ("go up to 3 but the model outputs 3 classes",)),
    (dict(l2=-1.0), ("l2 must be >= 0",)),
    (dict(max_iter=0), ("max_iter must be >= 1",)),
], ids=["3-d", "labels", "classes", "l2", "max-iter"])
def test_linear_probe_refuses_bad_inputs(kwargs, fragments):
    args = {"E": torch.rand(4, 3), "y": torch.tensor([0, 1, 0, 1]), **kwargs}
    with pytest.raises(ValueError, match=says(*fragments)):
        training.fit_linear_probe(args.pop("E"), args.pop("y"), **args)


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


class _Untrainable(nn.Module):
    """Outputs that no learning rate changes: the one trainable tensor enters the output times zero."""

    def __init__(self):
        super().__init__()
        self.net = mlp(SIZES, seed=1).requires_grad_(False)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.net(x) + 0 * self.dummy


def test_choose_lr_breaks_a_tie_by_validation_loss_then_towards_the_smaller_rate():
    X, y = _task(20)
    choice = training.choose_lr(_Untrainable, [1e-2, 1e-3], (X, y), (X, y), epochs=1, progress=False)
    assert choice.val_acc[1e-2] == choice.val_acc[1e-3] and choice.val_loss[1e-2] == choice.val_loss[1e-3]
    assert choice.lr == 1e-3
    losses = {1e-2: 0.1, 1e-3: 0.5}
    with mock.patch.object(training, "_mean_loss", lambda model, X, y: losses[model.lr]):
        def build():
            return setattr(m := _Untrainable(), "lr", build.lrs.pop(0)) or m
        build.lrs = [1e-2, 1e-3]
        choice = training.choose_lr(build, [1e-2, 1e-3], (X, y), (X, y), epochs=1, progress=False)
    assert choice.lr == 1e-2 and choice.val_loss == losses


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


def test_choose_lr_scores_a_diverging_rate_nan_and_never_picks_it():
    X, y = _task(20)
    with (mock.patch.object(training, "training_step", lambda *a: torch.tensor(float("nan"))),
          pytest.raises(training.TrainingDiverged, match=says("the loss became nan", "lower lr"))):
        training.choose_lr(lambda: mlp(SIZES), [1e-3, 1e-2], (X, y), (X, y), epochs=1, progress=False)
    real_step = training.training_step

    def nan_at_large_lr(model, opt, X, y):
        loss = real_step(model, opt, X, y)
        return torch.tensor(float("nan")) if opt.param_groups[0]["lr"] > 1 else loss

    with mock.patch.object(training, "training_step", nan_at_large_lr):
        choice = training.choose_lr(lambda: mlp(SIZES), [1e-2, 10.0], (X, y), (X, y), epochs=1, progress=False)
    assert choice.lr == 1e-2 and math.isnan(choice.val_acc[10.0])
