"""Issue 11: a failed call changes nothing, a result is right or refused. One section per class of defect.

Every refusal is a ValueError whose message names the problem and the fix (`says` checks both, in order); around
it, `unchanged` asserts that models (weights, requires_grad, train/eval mode, grads), input tensors and files
are exactly as before.
"""
import json
import math

import pandas as pd
import pytest
import torch
from conftest import says, unchanged
from torch import nn

from helpers import analysis, data, intrinsic, lora, memory, models, quant, subspace, training
from helpers.models import mlp

SIZES = (6, 8, 5, 3)


def _task(n=20, seed=0, n_classes=SIZES[-1]):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, SIZES[0], generator=g), torch.randint(0, n_classes, (n,), generator=g)


def _adapted(seed=0, targets=("fc1", "fc2"), **kwargs):
    model = lora.add_lora(mlp(SIZES, seed=seed), list(targets), r=2, alpha=4, **kwargs)
    with torch.no_grad():
        for m in lora.lora_layers(model).values():
            m.lora_B.weight.normal_(generator=torch.Generator().manual_seed(seed))
    return model


def _mixed():
    """fc1 a LoRALinear over nn.Linear, fc2 a QLoRALinear: the first can merge, the second cannot."""
    model = lora.add_lora(mlp(SIZES), ["fc1"], r=2, alpha=4)
    return quant.add_qlora(model, ["fc2"], r=2, alpha=4)


class Bomb(nn.Module):
    """Identity that raises on its `after`+1-th call in train mode: a step that fails part-way through."""

    def __init__(self, after):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("boom")
        return x


# ------------------------------------------------------------------------------ 1. loops that fail part-way

@pytest.mark.parametrize("call", [lora.merge_lora, lora.merge_and_unload], ids=["merge_lora", "merge_and_unload"])
def test_merging_mixed_adapters_merges_nothing(call):
    model = _mixed()
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("fc2", "cannot merge into a 4-bit NF4 base",
                                                                          "Keep the adapter separate",
                                                                          "nothing was merged")):
        call(model)


@pytest.mark.parametrize("labels, fragments", [
    (lambda y: torch.cat([y[:-1], torch.tensor([3])]), ("go up to 3", "outputs 3 classes", "remap the labels")),
    (lambda y: torch.cat([y[:-1], torch.tensor([-1])]), ("must be class indices >= 0, got -1", "wrap to the last")),
    (lambda y: y.view(-1, 1), ("shape (N,), got (20, 1)", "y.view(-1)")),
    (lambda y: y.float(), ("int64", "y.long()")),
], ids=["label-too-big-in-last-batch", "label-minus-one", "column-of-labels", "float-labels"])
def test_train_checks_every_label_before_the_first_step(labels, fragments):
    model, (X, y) = mlp(SIZES), _task()
    y = labels(y)
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        training.train(model, X, y, epochs=2, batch_size=8, progress=False)


@pytest.mark.parametrize("eval_data, fragments", [
    (lambda X, y: (X, y + 5), ("y_test go up to", "remap the labels")),
    (lambda X, y: (X[:, :4], y), ("X_test rows have shape (4,)", "training data's features")),
    (lambda X, y: (X, y[:5]), ("20 rows but y_test has 5 labels",)),
    (lambda X, y: X, ("eval_data must be a pair", "eval_data=(X_test, y_test)")),
    (lambda X, y: (X * float("nan"), y), ("X_test contains NaN or inf", "nan_to_num")),
], ids=["labels", "features", "lengths", "not-a-pair", "nan"])
def test_train_checks_eval_data_before_the_first_step(eval_data, fragments):
    model, (X, y) = mlp(SIZES), _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        training.train(model, X, y, epochs=2, batch_size=8, eval_data=eval_data(X, y), progress=False)


@pytest.mark.parametrize("mode", [True, False], ids=["train-mode", "eval-mode"])
def test_a_step_failing_part_way_restores_weights_grads_and_mode(mode):
    model = nn.Sequential(mlp(SIZES), Bomb(after=3)).train(mode)
    X, y = _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(RuntimeError, match="boom"):
        training.train(model, X, y, epochs=2, batch_size=4, progress=False)


def test_diverging_training_is_refused_and_undone():
    model, (X, y) = mlp(SIZES), _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says("the loss became",
                                                                                         "lower lr")):
        training.train(model, X * 1e30, y, epochs=3, lr=1e30, optimizer="sgd", batch_size=4, progress=False)


@pytest.mark.parametrize("call", [training.predict, training.evaluate], ids=["predict", "evaluate"])
def test_predict_and_evaluate_restore_the_mode_when_the_forward_fails(call):
    model, (X, y) = mlp(SIZES).train(), _task()
    args = (X[:, :4],) if call is training.predict else (X[:, :4], y)
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(RuntimeError):
        call(model, *args)


# ------------------------------------------------------------------------------ 2. writes in place

def _save_then(tmp_path, mutate):
    old = _adapted(seed=0)
    folder = lora.save_adapter(old, tmp_path / "adapter")
    mutate(folder)
    return folder


def test_save_adapter_blocked_by_a_folder_keeps_the_old_adapter(tmp_path):
    folder = _save_then(tmp_path, lambda f: ((f / "README.md").unlink(), (f / "README.md").mkdir()))
    new = _adapted(seed=1)
    with unchanged(models=[new], dirs=[tmp_path]), pytest.raises(ValueError, match=says("README.md", "not a file",
                                                                                       "remove it")):
        lora.save_adapter(new, folder)


def test_save_adapter_refuses_non_finite_weights(tmp_path):
    folder = _save_then(tmp_path, lambda f: None)
    new = _adapted(seed=1)
    with torch.no_grad():
        new.fc2.lora_A.weight[0, 0] = float("inf")
    with unchanged(models=[new], dirs=[tmp_path]), pytest.raises(ValueError, match=says("lora_A of layer 'fc2'",
                                                                                       "NaN or inf",
                                                                                       "lower lr")):
        lora.save_adapter(new, folder)


@pytest.mark.parametrize("directory", [None, 3, ""], ids=["none", "int", "empty"])
def test_save_adapter_bad_directory(directory, tmp_path):
    model = _adapted()
    with unchanged(models=[model], dirs=[tmp_path]), pytest.raises(ValueError, match=says("folder path", "e.g.")):
        lora.save_adapter(model, directory)


def test_save_adapter_over_an_old_adapter_replaces_all_files_and_leaves_no_temporaries(tmp_path):
    folder = _save_then(tmp_path, lambda f: None)
    new = _adapted(seed=1, targets=("fc2",))
    lora.save_adapter(new, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((folder / "adapter_config.json").read_text())["target_modules"] == ["fc2"]
    loaded = lora.load_adapter(mlp(SIZES, seed=1), folder)
    x = _task()[0]
    assert torch.equal(loaded(x), new(x))


def test_load_adapter_refuses_non_finite_weights(tmp_path):
    from safetensors.torch import load_file, save_file
    folder = _save_then(tmp_path, lambda f: None)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors["base_model.model.fc1.lora_B.weight"][0, 0] = float("nan")
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    base = mlp(SIZES)
    with unchanged(models=[base], dirs=[tmp_path]), pytest.raises(ValueError, match=says("contains NaN or inf",
                                                                                        "save a finite adapter")):
        lora.load_adapter(base, folder)


# ------------------------------------------------------------------------------ 3. numbers that slip through

@pytest.mark.parametrize("kwargs, fragments", [
    (dict(lr=float("nan")), ("lr > 0", "nan")),
    (dict(lr=float("inf")), ("lr must be a finite number, got inf",)),
    (dict(lr="0.1"), ("lr > 0", "0.1")),
    (dict(weight_decay=float("nan")), ("weight_decay must be a finite number", "weight_decay=0.0")),
    (dict(weight_decay=-0.1), ("weight_decay must be >= 0", "got -0.1")),
    (dict(eval_every=0), ("eval_every must be >= 1, got 0", "or None")),
    (dict(eval_every=2.5), ("eval_every must be an integer, got 2.5",)),
    (dict(epochs=2.0), ("epochs >= 1", "2.0")),
    (dict(seed=1.5), ("seed must be an integer, got 1.5", "seed=0")),
    (dict(seed=True), ("seed must be an integer, got True",)),
], ids=["lr-nan", "lr-inf", "lr-str", "wd-nan", "wd-negative", "eval-every-zero", "eval-every-float",
        "epochs-float", "seed-float", "seed-bool"])
def test_train_refuses_numbers_that_would_slip_through(kwargs, fragments):
    model, (X, y) = mlp(SIZES), _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        training.train(model, X, y, **{"epochs": 2, "progress": False, **kwargs})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_train_refuses_non_finite_inputs(bad):
    model, (X, y) = mlp(SIZES), _task()
    X[3, 2] = bad
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says("X contains NaN or inf",
                                                                                         "nan_to_num")):
        training.train(model, X, y, epochs=1, progress=False)


@pytest.mark.parametrize("call, fragments", [
    (lambda: mlp((6, 8.5, 3)), ("sizes[1] must be an integer, got 8.5",)),
    (lambda: mlp((6, -8, 3)), ("sizes[1] must be >= 1, got -8", "sizes=(784")),
    (lambda: mlp("6,3"), ("sizes must be a sequence of layer widths",)),
    (lambda: mlp(SIZES, seed=0.5), ("seed must be an integer, got 0.5",)),
    (lambda: models.with_new_head(mlp(SIZES), 0), ("n_out must be >= 1, got 0", "n_out=2")),
    (lambda: models.with_new_head(mlp(SIZES), 2, seed=2.5), ("seed must be an integer",)),
    (lambda: models.with_new_head(nn.Linear(3, 3), 2), ("named 'head'", "mlp()")),
    (lambda: models.print_trainable_parameters(nn.ReLU()), ("has no parameters", "at least one parameter")),
    (lambda: data.make_moons(100, seed=1.5), ("seed must be an integer, got 1.5",)),
    (lambda: data.make_moons(100, noise=float("nan")), ("noise must be a finite number",)),
    (lambda: data.make_moons(10.5), ("make_moons needs n >= 2 points, got 10.5",)),
    (lambda: subspace.SubspaceModel(mlp(SIZES), 4, seed=1.5), ("seed must be an integer, got 1.5",)),
    (lambda: intrinsic.solve_toy(10, lr=0.0), ("lr must be > 0, got 0.0", "None for the optimizer's default")),
    (lambda: intrinsic.solve_toy(10, steps=2.5), ("steps must be >= 1, got 2.5",)),
    (lambda: intrinsic.ToyBlockSums(10.0, 10), ("D must be an integer, got 10.0",)),
    (lambda: memory.training_memory(1e9, frozen_dtype=""), ("unknown frozen_dtype ''", "choose one of")),
    (lambda: memory.measure_training_memory(mlp(SIZES), *_task(), lr=float("nan")), ("lr must be a finite number",)),
    (lambda: analysis.training_step_flops((6, -8, 3), 4), ("sizes[1] must be >= 1, got -8",)),
    (lambda: analysis.training_step_flops((6, 8.7, 3), 4), ("sizes[1] must be an integer, got 8.7",)),
    (lambda: analysis.training_step_flops((6, 8, 3), 4, "lora", r=-2), ("r must be >= 0, got -2",)),
    (lambda: analysis.training_step_flops((6, 8, 3), 4, "lora", r={5: 2}), ("layer indices [5]", "layers 0..1")),
    (lambda: analysis.effective_rank(torch.eye(3), energy=float("nan")), ("energy must be in (0, 1]", "nan")),
], ids=["mlp-float-size", "mlp-negative-size", "mlp-str-sizes", "mlp-float-seed", "head-zero-outputs",
        "head-float-seed", "head-no-head", "print-no-params", "moons-float-seed", "moons-nan-noise", "moons-float-n",
        "subspace-float-seed", "toy-lr-zero", "toy-float-steps", "toy-float-D", "memory-empty-frozen-dtype",
        "measure-nan-lr", "flops-negative-size", "flops-float-size", "flops-negative-rank", "flops-rank-of-no-layer",
        "energy-nan"])
def test_bad_numbers_are_refused(call, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        call()


@pytest.mark.parametrize("call", [lambda w: quant.quantize_nf4(w), lambda w: quant.quantize_int(w, 8)],
                         ids=["nf4", "int8"])
def test_values_that_overflow_float32_are_refused_before_the_cast(call):
    w = torch.full((4, 64), 1e39, dtype=torch.float64)
    with unchanged(tensors=[w]), pytest.raises(ValueError, match=says("up to 1e+39", "beyond float32",
                                                                      "rescale the weight")):
        call(w)


def test_double_quantisation_refuses_absmax_means_that_overflow():
    w = torch.full((8, 64), 3e38)
    with unchanged(tensors=[w]), pytest.raises(ValueError, match=says("overflows float32", "double_quant=False")):
        quant.quantize_nf4(w)
    assert torch.isfinite(quant.quantize_nf4(w, double_quant=False).dequantize()).all()


def _table(acc=(0.5, 0.8, 0.95)):
    return pd.DataFrame([{"projection": "fastfood", "d": d, "seed": s, "test_acc": a - 0.01 * s}
                         for s in range(3) for d, a in zip((10, 100, 1000), acc)])


@pytest.mark.parametrize("table, fragments", [
    (lambda t: t.assign(test_acc=t.test_acc * 100), ("must be accuracies in [0, 1]", "divide percentages by 100")),
    (lambda t: pd.concat([t, t.iloc[:1].assign(test_acc=0.0)]), ("several rows for (seed, d) = [[0, 10]]",
                                                                  "drop_duplicates")),
    (lambda t: t.assign(test_acc=t.test_acc.where(t.d != 100)), ("accuracies in [0, 1]", "drop failed (NaN) runs")),
], ids=["percent", "duplicate-seed-d", "nan"])
def test_dint90_refuses_tables_it_would_misread(table, fragments):
    t = table(_table())
    with unchanged(frames=[t]), pytest.raises(ValueError, match=says(*fragments)):
        intrinsic.dint90(t, 0.95, n_boot=10)


@pytest.mark.parametrize("y, fragments", [
    (torch.tensor([0, 1, -1, 3]), ("must be digits 0..9", "from -1 to 3", "wrap to the last class")),
    (torch.tensor([0, 1, 12, 3]), ("must be digits 0..9", "to 12")),
    (torch.tensor([[0], [1], [2], [3]]), ("shape (N,), got (4, 1)", "y.view(-1)")),
], ids=["minus-one", "twelve", "column"])
def test_select_classes_refuses_labels_that_would_wrap(y, fragments):
    X = torch.rand(4, 784)
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        data.select_classes(X, y, [0, 1])


@pytest.mark.parametrize("seeds", [[0.5], [0, 1.0]], ids=["half", "whole-float"])
def test_sweep_and_baseline_refuse_float_seeds(seeds):
    X, y = _task()
    for call in (lambda: intrinsic.sweep(X, y, X, y, [2], seeds=seeds, progress=False),
                 lambda: intrinsic.baseline(X, y, X, y, seeds=seeds, progress=False)):
        with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says("seed must be an integer")):
            call()


# ------------------------------------------------------------------------------ 4. shapes that broadcast

def test_evaluate_refuses_a_column_of_labels():
    model, (X, y) = mlp(SIZES), _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says("shape (N,), got (20, 1)",
                                                                                         "y.view(-1)")):
        training.evaluate(model, X, y[:, None])


@pytest.mark.parametrize("make, fragments", [
    (lambda a, b: (a * 0, b), ("A1 is all zeros", "φ would be arbitrary")),
    (lambda a, b: (a, b * 0), ("A2 is all zeros",)),
    (lambda a, b: (torch.randn(8, 6), b), ("A1 is 8 x 6, taller than wide", "pass lora_A.weight")),
], ids=["zero-A1", "zero-A2", "tall-A1"])
def test_subspace_similarity_refuses_matrices_without_a_defined_answer(make, fragments):
    a, b = make(torch.randn(3, 6), torch.randn(2, 6))
    with unchanged(tensors=[a, b]), pytest.raises(ValueError, match=says(*fragments)):
        analysis.subspace_similarity(a, b)


@pytest.mark.parametrize("damage, fragments", [
    (lambda q: setattr(q, "codes", q.codes[:-1]), ("NF4Tensor.codes should be torch.uint8 with 96 elements",
                                                   "got torch.uint8 with 95", "quantise the weight again")),
    (lambda q: setattr(q, "absmax", q.absmax[:1]), ("NF4Tensor.absmax", "3 elements", "got torch.uint8 with 1")),
    (lambda q: setattr(q, "absmax_scale", None), ("NF4Tensor.absmax", "should be torch.float32")),
    (lambda q: setattr(q, "codes", q.codes.float()), ("NF4Tensor.codes should be torch.uint8", "got torch.float32")),
    (lambda q: setattr(q, "shape", torch.Size((4, 64))), ("NF4Tensor.codes should be torch.uint8 with 128",)),
], ids=["truncated-codes", "truncated-absmax", "scale-dropped", "float-codes", "wrong-shape"])
def test_dequantize_refuses_inconsistent_nf4_tensors(damage, fragments):
    q = quant.quantize_nf4(torch.randn(3, 64))
    damage(q)
    with pytest.raises(ValueError, match=says(*fragments)):
        quant.dequantize_nf4(q)


# ------------------------------------------------------------------------------ 5. SubspaceModel, a proper module

def _bn_model():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_batch_norm_statistics_survive_a_state_dict_round_trip():
    sub = subspace.SubspaceModel(_bn_model(), 5, projection="sparse", seed=0)
    X, y = _task()
    training.train(sub, X, y, epochs=2, batch_size=5, progress=False)
    fresh = subspace.SubspaceModel(_bn_model(), 5, projection="sparse", seed=0)
    fresh.load_state_dict(sub.state_dict())
    assert torch.equal(fresh.model[1].running_mean, sub.model[1].running_mean)
    assert torch.equal(fresh.eval()(X), sub.eval()(X))


@pytest.mark.parametrize("projection", sorted(subspace.PROJECTIONS))
def test_float64_models_work_in_every_projection(projection):
    sub = subspace.SubspaceModel(mlp(SIZES).double(), 7, projection=projection, seed=0)
    X, y = _task()
    assert sub.theta_d.dtype == sub.theta0.dtype == sub.projection.dtype == torch.float64
    history = training.train(sub, X.double(), y, epochs=2, batch_size=5, progress=False)
    assert math.isfinite(history["loss"][-1]) and sub.theta_d.abs().sum() > 0


@pytest.mark.parametrize("projection", sorted(subspace.PROJECTIONS))
def test_double_moves_theta_p_and_the_wrapped_model_together(projection):
    sub = subspace.SubspaceModel(_bn_model(), 4, projection=projection, seed=0).double()
    assert sub.model[1].running_mean.dtype == torch.float64
    assert sub(torch.rand(5, 6, dtype=torch.float64)).dtype == torch.float64


def test_only_theta_d_is_a_parameter_and_the_buffers_are_theta0_and_p():
    sub = subspace.SubspaceModel(mlp(SIZES), 4, projection="fastfood", seed=0)
    assert [n for n, _ in sub.named_parameters()] == ["theta_d"] and len(list(sub.parameters())) == 1
    assert [n for n, _ in sub.named_buffers()] == ["theta0", "projection.B", "projection.G", "projection.perm",
                                                   "projection.inv_perm"]
    assert sub.model in list(sub.children())


def test_sparse_projection_has_a_memory_budget():
    with pytest.raises(ValueError, match=says("a sparse P of 1,000,000 × 5,000", "over the budget max_bytes=1,000,000",
                                              "projection='fastfood'")):
        subspace.SparseProjection(10**6, 5000, max_bytes=10**6)


def test_mixed_dtype_models_are_refused():
    model = mlp(SIZES)
    model.head.double()
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("float32, torch.float64",
                                                                         "model.float()")):
        subspace.SubspaceModel(model, 4)


def test_projection_refuses_a_theta_of_another_dtype():
    p = subspace.DenseProjection(20, 4)
    theta = torch.zeros(4, dtype=torch.float64)
    with unchanged(tensors=[theta]), pytest.raises(ValueError, match=says("theta_d must be a torch.float32 tensor",
                                                                          "got torch.float64", ".to(")):
        p(theta)


# ------------------------------------------------------------------------------ 6. determinism

def test_lora_dropout_is_reproducible_from_the_seed():
    X, y = _task()
    losses = []
    for _ in range(2):
        training.set_seed(0)  # A's init draws from the global generator, as in peft
        model = lora.add_lora(mlp(SIZES), ["fc1", "fc2"], r=2, alpha=4, dropout=0.5)
        losses.append(training.train(model, X, y, epochs=3, batch_size=4, seed=3, progress=False)["loss"])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("call", [
    lambda model: mlp(SIZES, seed=5),
    lambda model: models.with_new_head(model, 2, seed=5),
    lambda model: training.train(model, *_task(), epochs=1, progress=False),
    lambda model: subspace.SubspaceModel(model, 4, projection="sparse", seed=5),
    lambda model: data.make_moons(50, seed=5),
], ids=["mlp", "with_new_head", "train-with-dropout", "subspace", "make_moons"])
def test_helpers_leave_the_callers_global_rng_alone(call):
    model = lora.add_lora(mlp(SIZES), ["fc1"], r=2, alpha=4, dropout=0.5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    call(model)
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_same_weights_as_before():
    torch.manual_seed(7)  # what mlp(seed=7) did before it stopped reseeding the global generator
    old = nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(5, 3)
    new = mlp(SIZES, seed=7)
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
               for a, b in zip(old, (new.fc1, new.fc2, new.head)))
    torch.manual_seed(9)
    head = nn.Linear(5, 2)
    assert torch.equal(models.with_new_head(new, 2, seed=9).head.weight, head.weight)


# ------------------------------------------------------------------------------ 7. shared weights

def test_merge_refuses_a_weight_shared_with_another_layer():
    model = mlp(SIZES)
    model.extra = nn.Linear(8, 5)
    model.extra.weight = model.fc2.weight  # tied
    lora.add_lora(model, ["fc2"], r=2, alpha=4)
    with torch.no_grad():
        model.fc2.lora_B.weight.fill_(0.5)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("'fc2' shares its memory with extra.weight",
                                                                         "nothing was merged", "Untie it first")):
        lora.merge_lora(model)


def test_merge_refuses_one_base_layer_adapted_twice_through_two_names():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    lora.add_lora(model, ["0"], r=2, alpha=4)
    model[2] = model[0]
    with torch.no_grad():
        model[0].lora_B.weight.fill_(0.5)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("shares its memory", "Untie it first")):
        lora.merge_and_unload(model)


# ------------------------------------------------------------------------------ the public API

def test_quant_builds_on_public_lora_names_only():
    import inspect
    source = inspect.getsource(quant)
    assert "lora._" not in source
    for name in ("replace_modules", "find_targets", "freeze_all_but_lora", "check_lora_args", "check_rank_fits",
                 "linear_names", "lora_layers"):
        assert callable(getattr(lora, name)) and getattr(lora, name).__doc__


def test_quantize_nf4_packs_with_pack_nibbles():
    w = torch.randn(5, 13)  # odd count: the last byte is padded with code 7
    q = quant.quantize_nf4(w, double_quant=False)
    assert torch.equal(quant.unpack_nibbles(q.codes, w.numel()),
                       quant.unpack_nibbles(quant.pack_nibbles(quant.unpack_nibbles(q.codes, w.numel())), w.numel()))
    assert int(q.codes[-1]) & 15 == 7
