"""Issue 22: helpers hardened, round two. One section per class of the issue.

Every refusal is a ValueError whose message names the problem and the fix (`says` checks the fragments in order);
around it, `unchanged` asserts that models (weights, requires_grad, every module's train/eval flag, BatchNorm
buffers, grads), input tensors, files, DataFrames and the global torch and numpy random states are exactly as
before. Where an input is accepted instead, the result is checked against an independent computation.
"""
import copy
import gzip
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import says, unchanged
from torch import nn
from torch.nn import functional as F

import helpers.text as T
from helpers import analysis, data, intrinsic, lora, memory, quant, subspace, training
from helpers.checks import check_seed
from helpers.models import mlp, with_new_head

SIZES = (6, 8, 5, 3)


def _task(n=20, seed=0, width=SIZES[0], n_classes=SIZES[-1]):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, width, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------ 1. token ids and masks

@pytest.fixture(scope="module")
def tok():
    return T.MiniLMTokenizer(T._package_dir() / "model" / "tokenizer.json")  # no SHA-256 of the 90 MB weights


class TinyEncoder(nn.Module):
    """BERT's interface in a few lines (config, forward(input_ids=, attention_mask=) -> .last_hidden_state): token and
    absolute position embeddings and one self-attention that ignores padding keys, so mask-0 columns never change
    the real tokens' vectors. MiniLM's vocabulary, hidden size 8: helpers.text's code paths in milliseconds."""

    def __init__(self, seed=0, positions=40):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=30522, hidden_size=8, max_position_embeddings=positions)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.tokens, self.positions = nn.Embedding(30522, 8), nn.Embedding(positions, 8)
            self.attention = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
            self.dropout = nn.Dropout(0.1)

    def forward(self, input_ids, attention_mask=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        h = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1]))
        mixed, _ = self.attention(h, h, h, key_padding_mask=mask == 0, need_weights=False)
        return SimpleNamespace(last_hidden_state=self.dropout(h + mixed))


@pytest.fixture
def clf():
    return T.SentenceClassifier(TinyEncoder(), 3).eval()


TEXTS = ["What is a cafe ?", "Who was Buffalo Bill ?", "How did serfdom develop in and then leave Russia ?"]


def _left_padded(ids, mask):
    shift = [int(mask.shape[1] - m.sum()) for m in mask]
    return (torch.stack([torch.roll(r, s) for r, s in zip(ids, shift)]),
            torch.stack([torch.roll(r, s) for r, s in zip(mask, shift)]))


@pytest.mark.parametrize("make, fragments", [
    (lambda ids, mask: _left_padded(ids, mask), ("row 0 of attention_mask has padding before a token",
                                                 "left padding", "pad on the right")),
    (lambda ids, mask: (ids, mask[:, :20]), ("must both have shape (N, L), got (3, 32) and (3, 20)",
                                             "tokenizer(texts)")),
    (lambda ids, mask: (ids, -mask), ("must hold only 0 (padding) and 1 (token), got values from -1 to 0",
                                      "tokenizer(texts)")),
    (lambda ids, mask: (ids.float() + 0.4, mask), ("input_ids must hold whole numbers", "with fractions",
                                                   "nothing is rounded here")),
    (lambda ids, mask: (ids + (ids == 102).long() * 30500, mask),
     ("input_ids go from 0 to 30602", "outside the vocabulary 0..30521", "another tokenizer")),
    (lambda ids, mask: (ids - 5, mask), ("input_ids go from -5", "outside the vocabulary", "another tokenizer")),
    (lambda ids, mask: (None, None), ("input_ids must be a torch.Tensor of token ids, got NoneType",
                                      "tokenizer.features(texts)")),
    (lambda ids, mask: (ids[:0], mask[:0]), ("the batch is empty (shape (0, 32))", "at least one text")),
    (lambda ids, mask: (ids, torch.cat([mask[:2], mask[2:] * 0])), ("row 2 of attention_mask has no token",
                                                                    "drop that row")),
    (lambda ids, mask: (ids.bool(), mask), ("input_ids must hold whole numbers, got dtype torch.bool",)),
    (lambda ids, mask: (ids, mask.float() * 0.5), ("attention_mask must hold whole numbers", "with fractions")),
    (lambda ids, mask: (ids, mask.clone().index_fill_(1, torch.tensor([2]), 0)),
     ("row 0 of attention_mask has padding before a token", "a hole")),
], ids=["left-padded", "mask-shorter", "mask-minus-one", "fractional-ids", "id-past-vocabulary", "negative-ids",
        "none", "empty-batch", "row-without-tokens", "bool-ids", "fractional-mask", "mask-with-a-hole"])
def test_sentence_classifier_validates_ids_and_masks_before_the_encoder(make, fragments, tok, clf):
    ids, mask = make(*tok(TEXTS))
    tensors = [t for t in (ids, mask) if t is not None]
    with unchanged(models=[clf], tensors=tensors), pytest.raises(ValueError, match=says(*fragments)):
        clf(ids, mask)


def test_more_tokens_than_positions_is_refused(tok, clf):
    ids = torch.full((2, 48), 1996)
    mask = torch.ones_like(ids)
    with unchanged(models=[clf], tensors=[ids, mask]), pytest.raises(
            ValueError, match=says("a row has 48 tokens, more than the model's 40 positions", "max_len=40")):
        clf(ids, mask)


def test_a_right_padded_batch_equals_each_text_alone_without_padding(tok, clf):
    ids, mask = tok(TEXTS)
    with torch.no_grad():
        batch = clf(ids, mask)
        for i in range(len(TEXTS)):
            n = int(mask[i].sum())
            h = clf.encoder(input_ids=ids[i:i + 1, :n]).last_hidden_state[0]
            assert torch.allclose(batch[i], clf.head(h.mean(0)), atol=1e-5, rtol=0)
        assert torch.equal(clf(torch.stack([ids, mask], 1).float()), batch)  # the features form, exactly


def test_a_bool_mask_counts_as_zeros_and_ones(tok, clf):
    ids, mask = tok(TEXTS)
    with torch.no_grad():
        assert torch.equal(clf(ids, mask.bool()), clf(ids, mask))


@pytest.mark.parametrize("ids, fragments", [
    ([101, 40000, 102], ("token id 40000 is not a whole number in 0..30521", "ids this tokenizer made")),
    ([101, -5, 102], ("token id -5", "0..30521")),
    (torch.tensor([101.0, 2054.5, 102.0]), ("token id 2054.5 is not a whole number",)),
    (torch.tensor([[101, 2054, 102]]), ("one sequence of ids (1-D), got shape (1, 3)", "decode each row")),
    (None, ("decode takes a sequence of token ids, got NoneType", "tokenizer.decode(ids[0])")),
], ids=["past-vocabulary", "negative", "fractional", "two-dimensional", "none"])
def test_decode_refuses_ids_it_would_drop_or_round(ids, fragments, tok):
    tensors = [ids] if isinstance(ids, torch.Tensor) else []
    with unchanged(tensors=tensors), pytest.raises(ValueError, match=says(*fragments)):
        tok.decode(ids)


def test_decode_reads_whole_float_ids_as_the_features_store_them(tok):
    X = tok.features(TEXTS)
    assert [tok.decode(row) for row in X[:, 0]] == [tok.decode(row) for row in tok(TEXTS)[0]]


@pytest.mark.parametrize("texts, got", [(None, "NoneType"), (5, "int"), (b"hi", "bytes")])
def test_tokenizer_refuses_texts_that_are_not_strings(texts, got, tok):
    with pytest.raises(ValueError, match=says(f"texts must be a non-empty list of str, got {got}",
                                              "tokenizer(['What is a cafe ?'])")):
        tok(texts)


@pytest.mark.parametrize("make, fragments", [
    (lambda h, m: (h, m[:, :4]), ("attention_mask must have shape (N, L) = (2, 5) like hidden, got (2, 4)",
                                  "after any trimming")),
    (lambda h, m: (h[0], m), ("hidden must be the (N, L, H) float token vectors, got (5, 4)", "last_hidden_state")),
    (lambda h, m: (h, m * 2), ("must hold only 0 (padding) and 1 (token)",)),
], ids=["mask-other-length", "hidden-2d", "mask-of-twos"])
def test_mean_pool_refuses_shapes_that_would_broadcast(make, fragments):
    h, m = torch.rand(2, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    h2, m2 = make(h, m)
    with unchanged(tensors=[h, m]), pytest.raises(ValueError, match=says(*fragments)):
        T.mean_pool(h2, m2)


def test_mean_pool_is_the_mean_over_real_tokens():
    h, m = torch.rand(2, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.stack([h[0, :3].mean(0), h[1].mean(0)])
    assert torch.allclose(T.mean_pool(h, m), expected, atol=1e-6, rtol=0)


def test_sentence_classifier_refuses_a_missing_encoder():
    with pytest.raises(ValueError, match=says("encoder must be a torch.nn.Module", "got NoneType", "load_minilm()")):
        T.SentenceClassifier(None, 3)


def test_embed_restores_every_modules_own_mode(tok):
    encoder = TinyEncoder().train()
    next(m for m in encoder.modules() if isinstance(m, nn.Dropout)).eval()  # one module the caller froze
    with unchanged(models=[encoder]):
        E = T.embed(encoder, tok, TEXTS, normalize=False)
    ids, mask = tok(TEXTS)
    with torch.no_grad():
        expected = T.mean_pool(copy.deepcopy(encoder).eval()(input_ids=ids, attention_mask=mask).last_hidden_state,
                               mask)
    assert torch.allclose(E, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ 2. modes per module, RNG, buffers

def _bn_model():
    """Train mode, except its BatchNorm and first Dropout, which the caller froze in eval mode."""
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3),
                          nn.Dropout(0.2)).train()
    model[1].eval()
    model[2].eval()
    training.train(model, *_task(), epochs=1, batch_size=10, progress=False)  # non-trivial BN statistics
    model.train()
    model[1].eval()
    model[2].eval()
    return model


def test_predict_gives_every_module_its_own_mode_back():
    model, (X, _) = _bn_model(), _task()
    expected = copy.deepcopy(model).eval()(X).argmax(-1)
    with unchanged(models=[model], tensors=[X]):
        assert torch.equal(training.predict(model, X, batch_size=7), expected)


def test_predict_failing_gives_every_module_its_own_mode_back():
    model, (X, _) = _bn_model(), _task(width=5)
    with unchanged(models=[model], tensors=[X]), pytest.raises(RuntimeError):
        training.predict(model, X)


def test_evaluate_gives_every_module_its_own_mode_back():
    model, (X, y) = _bn_model(), _task()
    expected = (copy.deepcopy(model).eval()(X).argmax(-1) == y).float().mean().item()
    with unchanged(models=[model], tensors=[X, y]):
        assert training.evaluate(model, X, y) == expected


def test_train_refused_after_the_width_probe_gives_every_module_its_mode_back():
    model, (X, y) = _bn_model(), _task()
    y = y + 3  # found out only after the model's output width is read
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says("go up to", "remap")):
        training.train(model, X, y, epochs=1, progress=False)


class Bomb(nn.Module):
    def __init__(self, after):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("boom")
        return x


def test_train_failing_part_way_restores_modes_per_module_and_batch_norm_statistics():
    model = _bn_model()
    model.append(Bomb(after=2))
    X, y = _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(RuntimeError, match="boom"):
        training.train(model, X, y, epochs=2, batch_size=5, progress=False)


def test_train_success_ends_with_every_module_in_eval_mode():
    model, (X, y) = _bn_model(), _task()
    with unchanged(tensors=[X, y]):
        training.train(model, X, y, epochs=1, batch_size=5, progress=False, eval_data=(X, y))
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("batch_norm_training", [False, True], ids=["frozen-batch-norm", "training-batch-norm"])
def test_measured_flops_leave_batch_norm_statistics_modes_grads_and_rng_alone(batch_norm_training):
    model, (X, y) = _bn_model(), _task(n=4)
    model[1].train(batch_norm_training)
    model(X).sum().backward()  # grads present before the call
    with unchanged(models=[model], tensors=[X, y]):
        flops = analysis.measured_step_flops(model, X, y)
    assert flops == analysis.training_step_flops((6, 8, 3), 4)["total"]  # BatchNorm and dropout count no matmuls


def test_measured_flops_of_a_subspace_model_leave_the_wrapped_batch_norm_alone():
    sub = subspace.SubspaceModel(_bn_model(), 5, projection="dense", seed=0).train()
    X, y = _task(n=4)
    with unchanged(models=[sub, sub.model], tensors=[X, y]):
        analysis.measured_step_flops(sub, X, y)


def test_load_adapter_leaves_the_global_rng_alone(tmp_path):
    trained = lora.add_lora(mlp(SIZES, seed=1), ["fc1", "fc2"], r=2, alpha=4)
    with torch.no_grad():
        trained.fc2.lora_B.weight.fill_(0.3)
    folder = lora.save_adapter(trained, tmp_path / "adapter")
    with unchanged(dirs=[tmp_path]):
        loaded = lora.load_adapter(mlp(SIZES, seed=1), folder)
    X = _task()[0]
    assert torch.equal(loaded(X), trained(X))


def test_measure_training_memory_leaves_the_global_rng_and_the_model_alone():
    model = lora.add_lora(mlp(SIZES), ["fc1"], r=2, alpha=4, dropout=0.5)
    X, y = _task()
    with unchanged(models=[model], tensors=[X, y]):
        out = memory.measure_training_memory(model, X, y)
    assert out["weights"] == 4 * sum(p.numel() for p in model.parameters())


def test_the_snapshot_catches_rng_draws():
    # the draws must come from the global RNGs: the point is that the snapshot notices them
    for draw in (lambda: torch.rand(1), lambda: np.random.rand()):  # noqa: NPY002 (a deliberate global draw)
        with pytest.raises(AssertionError, match="RNG advanced"), unchanged():
            draw()


# ------------------------------------------------------------------------------ 3. numpy scalars, strings, lists

def _history(**kwargs):
    model, (X, y) = mlp(SIZES), _task()
    history = training.train(model, X, y, progress=False, **kwargs)
    return history["loss"], model.head.weight.detach().clone()


@pytest.mark.parametrize("kwargs", [dict(seed=np.int64(3)), dict(batch_size=np.int64(7), epochs=np.int32(2)),
                                    dict(steps=np.int64(5), eval_every=np.int64(2), eval_batch_size=np.int16(4))],
                         ids=["seed", "batch-and-epochs", "steps-and-eval"])
def test_train_takes_numpy_integers_as_the_same_ints(kwargs):
    loss, head = _history(**kwargs)
    ref_loss, ref_head = _history(**{k: int(v) for k, v in kwargs.items()})
    assert loss == ref_loss and torch.equal(head, ref_head)


@pytest.mark.parametrize("call, fragments", [
    (lambda m, X, y: training.train(m, X, y, optimizer=["adam"], progress=False),
     ("optimizer must be one name (a str), got ['adam'] (list)", "choose one of ['adam', 'adamw', 'sgd']")),
    (lambda m, X, y: memory.measure_training_memory(m, X, y, optimizer=["adam"]),
     ("optimizer must be one name (a str)", "choose one of")),
    (lambda m, X, y: subspace.SubspaceModel(m, 4, projection=["dense"]),
     ("projection must be one name (a str), got ['dense'] (list)", "choose one of ['dense', 'fastfood', 'sparse']")),
    (lambda m, X, y: training.train(m, X, y, seed="0", progress=False), ("seed must be an integer, got '0'",)),
    (lambda m, X, y: training.train(m, X, y, batch_size="8", progress=False), ("batch_size >= 1", "'8'")),
], ids=["train-optimizer-list", "memory-optimizer-list", "projection-list", "seed-string", "batch-string"])
def test_lists_and_strings_where_a_name_or_a_number_belongs(call, fragments):
    model, (X, y) = mlp(SIZES), _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        call(model, X, y)


def test_load_sweep_results_refuses_a_list_for_the_name():
    with unchanged(dirs=[data.SWEEPS_DIR]), pytest.raises(ValueError, match=says(
            "sweep must be one name (a str), got ['minilm'] (list)", "choose one of [", "'intrinsic_mlp'")):
        data.load_sweep_results(["minilm"])


def test_lora_rank_as_numpy_integer_saves_an_int_in_the_config(tmp_path):
    model = lora.add_lora(mlp(SIZES), ["fc1"], r=np.int64(2), alpha=np.float32(4.0))
    assert type(model.fc1.r) is int and model.fc1.scaling == 2.0
    folder = lora.save_adapter(model, tmp_path / "a")
    config = json.loads((folder / lora.CONFIG_NAME).read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 4)


@pytest.mark.parametrize("call", [
    lambda w, k: quant.quantize_nf4(w, block_size=k(64), dq_block_size=k(256)).codes,
    lambda w, k: quant.quantize_int(w, k(4), block_size=k(32))[0],
    lambda w, k: quant.LinearNF4(nn.Linear(64, 4), block_size=k(64)).weight,
], ids=["nf4", "int4", "linear-nf4"])
def test_quantisers_take_numpy_integers(call):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        got = call(w, np.int64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert torch.equal(got, call(w, int))


def test_sweep_takes_a_numpy_grid_and_numpy_seeds():
    X, y = _task()
    kwargs = dict(model_fn=lambda s: mlp(SIZES, seed=s), epochs=1, progress=False)
    a = intrinsic.sweep(X, y, X, y, np.array([2, 4]), seeds=np.array([0, 1]), **kwargs)
    b = intrinsic.sweep(X, y, X, y, [2, 4], seeds=[0, 1], **kwargs)
    cols = ["projection", "d", "seed", "D", "lr", "train_acc", "test_acc"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert intrinsic._as_list(np.int64(3), "ds") == [3]


def _dint_table(acc=(0.5, 0.8, 0.95)):
    return pd.DataFrame([{"projection": "fastfood", "d": d, "seed": s, "test_acc": a - 0.01 * s}
                         for s in range(3) for d, a in zip((20, 100, 1000), acc)])


@pytest.mark.parametrize("table, kwargs, fragments", [
    (lambda t: t, dict(level="0.9"), ("level must be a finite number, got '0.9'", "level=0.90")),
    (lambda t: t.assign(d=t.d.astype(str)), {}, ("column 'd' must hold numbers", "'100' sorts before '20'",
                                                  "pd.to_numeric")),
    (lambda t: t.to_dict("records"), {}, ("table must be a pandas DataFrame", "got list", "pd.DataFrame(rows)")),
    (lambda t: t.assign(test_acc=t.test_acc.astype(str)), {}, ("column 'test_acc' must hold numbers",
                                                                "pd.to_numeric")),
    (lambda t: t, dict(baseline="0.95"), ("baseline must be accuracies (numbers), got '0.95'", "not '0.934'")),
    (lambda t: t, dict(seed=1.5), ("seed must be an integer, got 1.5",)),
    (lambda t: t, dict(metric=["test_acc"]), ("table has no column ['test_acc']", "metric= one of")),
    (lambda t: t.assign(d=t.d.where(t.d != 100, 0)), {}, ("column 'd' must hold subspace sizes >= 1",
                                                          "non-positive d")),
], ids=["level-string", "d-strings", "list-of-dicts", "accuracy-strings", "baseline-string", "seed-float",
        "metric-list", "d-zero"])
def test_dint90_refuses_strings_lists_and_wrong_types(table, kwargs, fragments):
    base = _dint_table()
    t = table(base)
    frames = [base] + ([t] if isinstance(t, pd.DataFrame) else [])
    kwargs = {"baseline": 0.95, "n_boot": 10, **kwargs}
    with unchanged(frames=frames), pytest.raises(ValueError, match=says(*fragments)):
        intrinsic.dint90(t, **kwargs)


def test_dint90_takes_numpy_integers_and_levels():
    t = _dint_table()
    a = intrinsic.dint90(t, np.float32(0.95), n_boot=np.int64(50), seed=np.int64(4), level=np.float64(0.9))
    b = intrinsic.dint90(t, 0.95, n_boot=50, seed=4, level=0.9)
    assert a["d_int90"] == b["d_int90"] == 1000 and np.array_equal(a["boot_samples"], b["boot_samples"])


@pytest.mark.parametrize("call, reference", [
    (lambda: analysis.training_step_flops(np.array([6, 8, 3]), np.int64(4), "lora", r=np.int64(2)),
     lambda: analysis.training_step_flops([6, 8, 3], 4, "lora", r=2)),
    (lambda: analysis.training_step_flops((6, 8, 3), 4, "lora", r={np.int64(0): np.int64(2)}),
     lambda: analysis.training_step_flops((6, 8, 3), 4, "lora", r={0: 2})),
    (lambda: memory.training_memory(np.int64(1000), np.int64(10)), lambda: memory.training_memory(1000, 10)),
    (lambda: memory.lora_params(np.int64(64), np.int64(2), np.int64(4)), lambda: memory.lora_params(64, 2, 4)),
    (lambda: data.make_moons(np.int64(50), seed=np.int64(2)), lambda: data.make_moons(50, seed=2)),
    (lambda: analysis.effective_rank(torch.diag(torch.tensor([3.0, 2.0, 1.0])), energy=np.float32(0.9)),
     lambda: analysis.effective_rank(torch.diag(torch.tensor([3.0, 2.0, 1.0])), energy=0.9)),
    (lambda: intrinsic.solve_toy(12, steps=np.int64(5), D=40, n_blocks=4),
     lambda: intrinsic.solve_toy(12, steps=5, D=40, n_blocks=4)),
    (lambda: check_seed(torch.tensor(3)), lambda: 3),
], ids=["flops-numpy", "flops-rank-dict", "training-memory", "lora-params", "make-moons", "effective-rank-float32",
        "toy-steps", "seed-0d-tensor"])
def test_numpy_scalars_give_the_same_results_as_python_numbers(call, reference):
    got, expected = call(), reference()
    if isinstance(expected, tuple):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    else:
        assert got == expected and type(got) is type(expected)


def test_select_classes_takes_numpy_and_tensor_digits():
    X, y = torch.rand(30, 4), torch.arange(30) % 10
    expected = data.select_classes(X, y, [3, 7])
    for classes in (np.array([3, 7]), [torch.tensor(3), np.int8(7)]):
        got = data.select_classes(X, y, classes)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_check_seed_returns_a_python_int():
    assert type(check_seed(np.int64(3))) is int and check_seed(np.int64(3)) == 3


@pytest.mark.parametrize("call, fragments", [
    (lambda: memory.lora_params("8", 2, 2), ("d_model must be an integer, got '8' (str)", "d_model=4096")),
    (lambda: memory.lora_params(64, 2, 2.5), ("r must be an integer, got 2.5", "r=8")),
    (lambda: memory.finetune_memory(method="lora", r=2.5), ("r must be an integer, got 2.5",)),
    (lambda: analysis.effective_rank(torch.eye(3), energy="0.9"), ("energy must be in (0, 1]", "'0.9'")),
    (lambda: intrinsic.sweep(*_task(), *_task(), None, progress=False), ("ds must be a list of values, got None",)),
], ids=["lora-params-string", "lora-params-float-rank", "finetune-float-rank", "energy-string", "sweep-none"])
def test_strings_and_floats_where_counts_belong(call, fragments):
    with pytest.raises(ValueError, match=says(*fragments)):
        call()


# ------------------------------------------------------------------------------ 4. degenerate fits

@pytest.mark.parametrize("E, y, kwargs, fragments", [
    (torch.rand(1, 4), torch.tensor([1]), {}, ("E has 1 row", "at least two rows", "pass more examples")),
    (torch.rand(6, 4), torch.zeros(6, dtype=torch.int64), {}, ("y holds only class 0, so n_classes would be 1",
                                                              "n_classes=6")),
], ids=["one-row", "one-class"])
def test_fit_linear_probe_refuses_degenerate_data(E, y, kwargs, fragments):
    with unchanged(tensors=[E, y]), pytest.raises(ValueError, match=says(*fragments)):
        training.fit_linear_probe(E, y, **kwargs)


def test_fit_linear_probe_with_one_seen_class_and_n_classes_given_predicts_it():
    E, y = torch.rand(6, 4), torch.zeros(6, dtype=torch.int64)
    probe = training.fit_linear_probe(E, y, n_classes=2)
    assert probe.out_features == 2 and torch.isfinite(probe.weight).all() and (probe(E).argmax(1) == 0).all()


def _fit_val():
    return _task(20, seed=0), _task(10, seed=1)


def test_choose_lr_refuses_a_build_that_returns_the_same_model():
    model = mlp(SIZES)
    fit, val = _fit_val()
    with unchanged(models=[model], tensors=[*fit, *val]), pytest.raises(ValueError, match=says(
            "build() returned the same model object again (for lr=0.01)", "copy.deepcopy(pretrained)")):
        training.choose_lr(lambda: model, [1e-3, 1e-2], fit, val, epochs=1, progress=False)


def test_choose_lr_refuses_models_that_share_a_trained_body():
    pretrained = mlp(SIZES)
    fit, val = _fit_val()
    with unchanged(models=[pretrained], tensors=[*fit, *val]), pytest.raises(ValueError, match=says(
            "share fc1.weight, fc1.bias, fc2.weight ...", "training one rate would change",
            "with_new_head shares its body")):
        training.choose_lr(lambda: with_new_head(pretrained, 3), [1e-3, 1e-2], fit, val, epochs=1, progress=False)


def test_choose_lr_refuses_models_that_start_from_different_states():
    base = mlp(SIZES)
    fit, val = _fit_val()
    with unchanged(models=[base], tensors=[*fit, *val], rng=False), pytest.raises(ValueError, match=says(
            "differs from the one for lr=0.001 before training", "seed any random init inside build")):
        training.choose_lr(lambda: lora.add_lora(copy.deepcopy(base), ["fc1"], r=2, alpha=4), [1e-3, 1e-2], fit, val,
                           epochs=1, progress=False)  # A drawn from the global generator, differently each time


@pytest.mark.parametrize("val, kwargs, fragments", [
    (lambda X, y: (X, y + 3), {}, ("labels y of val go up to", "outputs 3 classes", "remap the labels")),
    (lambda X, y: (X[:, :4], y), {}, ("X of val rows have shape (4,), X of fit rows (6,)", "fitting data's features")),
    (lambda X, y: (X, y), dict(epoch=2), ("passes epoch on to train", "drop it", "epochs")),
], ids=["labels-beyond-the-head", "features-of-another-width", "unknown-setting"])
def test_choose_lr_checks_the_validation_data_before_any_training(val, kwargs, fragments):
    pretrained = mlp(SIZES)
    fit, (Xv, yv) = _fit_val()
    built = []
    with unchanged(models=[pretrained], tensors=[*fit, Xv, yv]), pytest.raises(ValueError, match=says(*fragments)):
        training.choose_lr(lambda: built.append(copy.deepcopy(pretrained)) or built[-1], [1e-3, 1e-2], fit,
                           val(Xv, yv), epochs=1, progress=False, **kwargs)
    assert all(_same_state(m, pretrained) for m in built), "a model was trained before the refusal"


def test_choose_lr_result_equals_training_at_the_chosen_rate():
    pretrained = mlp(SIZES)
    fit, val = _fit_val()
    choice = training.choose_lr(lambda: copy.deepcopy(pretrained), [1e-3, 3e-2, 1e-1], fit, val, epochs=3,
                                batch_size=5, progress=False)
    ref = copy.deepcopy(pretrained)
    training.train(ref, *fit, lr=choice.lr, epochs=3, batch_size=5, seed=0, progress=False)
    assert _same_state(ref, choice.model) and choice.val_acc[choice.lr] == training.evaluate(ref, *val)


# ------------------------------------------------------------------------------ 5. stored files

def _results(tmp_path, runs, config=None):
    path = tmp_path / "minilm_results.json"
    path.write_text(json.dumps({"config": {} if config is None else config, "runs": runs}))
    return path


RUN = {"key": "a", "stage": "lr", "method": "lora", "weights": "pretrained", "size": 4, "seed": 0, "lr": 1e-3}


@pytest.mark.parametrize("runs, fragments", [
    ([RUN, {k: v for k, v in RUN.items() if k != "key"}], ("columns ['key'] missing in 1 run(s), e.g. run 1",
                                                          "make sweep-05")),
    ([RUN, [1, 2]], ("run 1 is a list, not a dict", "git checkout -- sweeps/minilm_results.json")),
], ids=["run-without-key", "run-not-a-dict"])
def test_load_sweep_results_checks_every_run(runs, fragments, tmp_path):
    path = _results(tmp_path, runs)
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says("is corrupted", *fragments)):
        data.load_sweep_results("minilm", path)


def test_load_sweep_results_names_a_folder_as_a_folder(tmp_path):
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says(
            "is a folder, not a sweep results file", "pass the JSON file itself", "minilm_results.json")):
        data.load_sweep_results("minilm", tmp_path)


def test_load_sweep_results_refuses_a_path_that_is_not_a_path():
    with pytest.raises(ValueError, match=says("path must be a file path (str or Path), got int", "or None")):
        data.load_sweep_results("minilm", 3)


def test_load_sweep_results_reads_a_complete_file(tmp_path):
    path = _results(tmp_path, [RUN, {**RUN, "key": "b", "seed": 1}], config={"x": 1})
    out = data.load_sweep_results("minilm", path)
    assert out["config"] == {"x": 1} and out["runs"]["seed"].tolist() == [0, 1]


def _idx_gz(tmp_path, damage):
    raw = gzip.compress(b"\x00\x00\x08\x01" + (300).to_bytes(4, "big") + bytes(range(256)) + bytes(44))
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(damage(raw))
    return path


def _flip_middle(raw):
    raw = bytearray(raw)
    raw[len(raw) // 2] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize("damage, fragments", [
    (lambda raw: raw[:-12], ("is a truncated or corrupted gzip file", "EOFError", "download it again")),
    (_flip_middle, ("is a truncated or corrupted gzip file", "download it again")),
    (lambda raw: raw[:-4] + b"\x00\x00\x00\x00", ("truncated or corrupted gzip file", "download it again")),
], ids=["truncated", "garbled", "wrong-length-trailer"])
def test_read_idx_names_a_damaged_gzip(damage, fragments, tmp_path):
    path = _idx_gz(tmp_path, damage)
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says(*fragments)):
        data.read_idx(path)


def test_read_idx_reads_an_intact_gzip(tmp_path):
    assert data.read_idx(_idx_gz(tmp_path, lambda raw: raw)).tolist() == list(range(256)) + [0] * 44


@pytest.mark.parametrize("where", [lambda t: t / "missing.gz", lambda t: t, lambda t: None],
                         ids=["missing", "folder", "none"])
def test_read_idx_names_a_path_that_is_not_a_file(where, tmp_path):
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says("is not an idx file", "MNIST idx file")):
        data.read_idx(where(tmp_path))


def _adapted():
    with torch.random.fork_rng():
        torch.manual_seed(0)  # A's init: the same adapter at every call
        model = lora.add_lora(mlp(SIZES), ["fc1", "fc2"], r=2, alpha=4)
    with torch.no_grad():
        model.fc1.lora_B.weight.fill_(0.2)
    return model


@pytest.mark.parametrize("below", ["notes.txt/adapter", "notes.txt/deeper/adapter"], ids=["child", "grandchild"])
def test_save_adapter_below_a_regular_file_names_the_file(below, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    model = _adapted()
    with unchanged(models=[model], dirs=[tmp_path]), pytest.raises(ValueError, match=says(
            "notes.txt is a file, so the folder", "cannot be created below it", "whose parents are folders")):
        lora.save_adapter(model, tmp_path / below)


@pytest.mark.parametrize("name", [lora.WEIGHTS_NAME, lora.CONFIG_NAME])
def test_load_adapter_given_a_file_of_the_adapter_names_its_folder(name, tmp_path):
    folder = lora.save_adapter(_adapted(), tmp_path / "adapter")
    base = mlp(SIZES)
    with unchanged(models=[base], dirs=[tmp_path]), pytest.raises(ValueError, match=says(
            f"{name}' is a file, not an adapter folder", "pass the folder that holds", f"{folder}'")):
        lora.load_adapter(base, folder / name)


@pytest.mark.parametrize("call", [lambda f: lora.save_adapter(None, f), lambda f: lora.load_adapter(None, f),
                                  lambda f: lora.merge_lora("model")], ids=["save", "load", "merge"])
def test_lora_functions_refuse_a_model_that_is_not_a_module(call, tmp_path):
    folder = lora.save_adapter(_adapted(), tmp_path / "adapter")
    with unchanged(dirs=[tmp_path]), pytest.raises(ValueError, match=says("model must be a torch.nn.Module",
                                                                          "pass the model itself")):
        call(folder)


# ------------------------------------------------------------------------------ 6. shapes and counts

@pytest.mark.parametrize("packed, n, fragments", [
    (torch.tensor([0x12, 0x34], dtype=torch.uint8), -1, ("n must be >= 0, got -1", "n=w.numel()")),
    (torch.tensor([0x12, 0x34], dtype=torch.uint8), 5, ("n=5 codes asked for, but 2 bytes hold only 4",
                                                         "at most two per byte")),
    (torch.tensor([0x12, 0x34], dtype=torch.uint8), 2.0, ("n must be an integer, got 2.0",)),
    (torch.tensor([0x12, 0x34]), 4, ("packed must be a uint8 tensor of packed codes, got torch.int64",
                                     "NF4Tensor.codes")),
], ids=["negative", "more-than-stored", "float-count", "int64-bytes"])
def test_unpack_nibbles_refuses_counts_it_would_cut_silently(packed, n, fragments):
    with unchanged(tensors=[packed]), pytest.raises(ValueError, match=says(*fragments)):
        quant.unpack_nibbles(packed, n)


def test_unpack_nibbles_reads_packed_bytes_of_any_shape_in_order():
    codes = torch.randint(0, 16, (13,), generator=torch.Generator().manual_seed(0))
    packed = quant.pack_nibbles(codes)
    assert torch.equal(quant.unpack_nibbles(packed, 13), codes.to(torch.uint8))
    assert torch.equal(quant.unpack_nibbles(torch.cat([packed, packed]).view(2, 7), 27),
                       torch.cat([codes, torch.tensor([7]), codes]).to(torch.uint8))


@pytest.mark.parametrize("codes, fragments", [
    (torch.tensor([3, -1]), ("codes must lie in 0..15, got a minimum of -1", "pass level indices")),
    (torch.tensor([3.7, 1.0]), ("codes must be an integer tensor, got torch.float32", "not values")),
], ids=["negative", "float"])
def test_pack_nibbles_refuses_codes_it_would_wrap_or_truncate(codes, fragments):
    with unchanged(tensors=[codes]), pytest.raises(ValueError, match=says(*fragments)):
        quant.pack_nibbles(codes)


@pytest.mark.parametrize("classes, shown", [([1.0, 2], "[1.0, 2]"), ([True, 2], "[True, 2]"), ("12", "'12'")],
                         ids=["float-digit", "bool-digit", "string"])
def test_select_classes_refuses_digits_that_are_not_whole_numbers(classes, shown):
    X, y = torch.rand(12, 4), torch.arange(12) % 10
    with unchanged(tensors=[X, y]), pytest.raises(ValueError, match=says("classes must be distinct digits 0..9",
                                                                         f"got {shown}")):
        data.select_classes(X, y, classes)


def test_select_classes_refuses_arrays_for_tensors():
    X, y = np.random.default_rng(0).random((12, 4)), np.arange(12) % 10
    with pytest.raises(ValueError, match=says("X and y must be torch tensors, got ndarray and ndarray",
                                              "load_mnist returns")):
        data.select_classes(X, y, [1, 2])


@pytest.mark.parametrize("drop", ["seed", "d"])
def test_dint90_names_a_missing_seed_or_d_column(drop):
    t = _dint_table().drop(columns=drop)
    with unchanged(frames=[t]), pytest.raises(ValueError, match=says(f"table has no column '{drop}'",
                                                                     "table.assign(seed=0)")):
        intrinsic.dint90(t, 0.95, n_boot=10)


# ------------------------------------------------------------------------------ 7. layer combinations

def _lora_over_nf4(seed=0):
    layer = lora.LoRALinear(quant.LinearNF4(nn.Linear(64, 6)), 2, 4)
    with torch.no_grad():
        layer.lora_B.weight.normal_(generator=torch.Generator().manual_seed(seed))
    return layer


NF4_MERGE = ("cannot merge into a LinearNF4 base", "cannot absorb ΔW = s·BA in place",
             "Dequantise the base to a float layer first", "keep the adapter separate")


def test_lora_over_an_nf4_base_refuses_to_merge():
    layer = _lora_over_nf4()
    with unchanged(models=[layer]), pytest.raises(ValueError, match=says(*NF4_MERGE)):
        layer.merge()
    assert not layer.merged


@pytest.mark.parametrize("call", [lora.merge_lora, lora.merge_and_unload], ids=["merge_lora", "merge_and_unload"])
def test_merging_a_model_with_a_lora_over_nf4_merges_nothing(call):
    model = lora.add_lora(mlp((64, 64, 6)), ["fc1"], r=2, alpha=4)
    model.head = _lora_over_nf4()
    with torch.no_grad():
        model.fc1.lora_B.weight.fill_(0.1)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says("head", *NF4_MERGE, "nothing was merged")):
        call(model)


def test_the_advised_fix_dequantise_then_merge_gives_the_same_outputs():
    layer = _lora_over_nf4()
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = layer(x)
        dense = nn.Linear(64, 6)
        dense.weight.copy_(layer.base.weight)
        dense.bias.copy_(layer.base.bias)
        fixed = lora.LoRALinear(dense, 2, 4)
        fixed.load_state_dict({k.replace("base.", ""): v for k, v in layer.state_dict().items() if "lora_" in k},
                              strict=False)
        fixed.merge()
        assert torch.allclose(fixed(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("call", [
    lambda m, X, y: training.train(m, X, y, epochs=1, progress=False),
    lambda m, X, y: analysis.measured_step_flops(m, X, y),
    lambda m, X, y: memory.measure_training_memory(m, X, y),
    lambda m, X, y: training.choose_lr(lambda: copy.deepcopy(m), [1e-3], (X, y), (X, y), epochs=1, progress=False),
], ids=["train", "measured-flops", "measure-memory", "choose-lr"])
def test_training_a_merged_lora_is_refused_with_the_fix(call):
    model = lora.merge_lora(_adapted())
    X, y = _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(
            "LoRA layer(s) fc1, fc2 are merged", "no gradient", "unmerge_lora(model) before training")):
        call(model, X, y)


def test_a_merged_lora_with_frozen_a_and_b_trains_the_rest_like_the_merged_plain_model():
    merged = lora.merge_lora(_adapted())
    merged.requires_grad_(False).head.requires_grad_(True)
    plain = lora.merge_and_unload(_adapted())
    plain.requires_grad_(False).head.requires_grad_(True)
    X, y = _task()
    for model in (merged, plain):
        training.train(model, X, y, epochs=2, batch_size=5, progress=False)
    assert torch.equal(merged.head.weight, plain.head.weight)


def _stored(layer):
    return {k: (b.dtype, b.clone()) for k, b in layer.named_buffers()}


@pytest.mark.parametrize("double_quant", [False, True], ids=["nf4", "nf4-dq"])
def test_linear_nf4_double_is_a_float64_layer_over_the_same_codes(double_quant):
    linear = nn.Linear(64, 5)
    layer = quant.LinearNF4(linear, double_quant=double_quant)
    w, before = layer.weight, _stored(layer)
    layer.double()
    x = torch.randn(3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer(x), F.linear(x, w.double(), linear.bias.detach().double()))
    after = _stored(layer)
    assert all(after[k][0] == dtype and torch.equal(after[k][1], b) for k, (dtype, b) in before.items())
    assert torch.equal(layer.float().weight, w)  # back to float32: the same dequantised W₀


def test_qlora_double_computes_base_plus_branch_in_float64():
    layer = quant.QLoRALinear(nn.Linear(64, 5), 2, 4)
    with torch.no_grad():
        layer.lora_B.weight.fill_(0.1)
    w = layer.base.weight
    layer.double()
    x = torch.randn(3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A, B = layer.lora_A.weight, layer.lora_B.weight
    expected = F.linear(x, w.double(), layer.base.bias) + F.linear(F.linear(x, A) * layer.scaling, B)
    assert layer(x).dtype == torch.float64 and torch.allclose(layer(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(projection="dense", compact=True), ("compact= does not apply to projection='dense'", "takes max_bytes",
                                              "belongs to projection='fastfood'", "drop compact=")),
    (dict(projection="fastfood", max_bytes=10**6), ("max_bytes= does not apply to projection='fastfood'",
                                                    "projection='dense' or 'sparse'")),
    (dict(projection="sparse", compact=False), ("compact= does not apply to projection='sparse'",)),
    (dict(projection="fastfood", block=64), ("block= does not apply to projection='fastfood'", "takes compact",
                                             "drop block=")),
], ids=["compact-dense", "max-bytes-fastfood", "compact-sparse", "unknown-option"])
def test_projection_options_that_do_not_apply_are_named(kwargs, fragments):
    model = mlp(SIZES)
    with unchanged(models=[model]), pytest.raises(ValueError, match=says(*fragments)):
        subspace.SubspaceModel(model, 4, **kwargs)


@pytest.mark.parametrize("model, rescale, name", [
    (lambda: nn.Sequential(nn.Linear(3, 2)), ("0", "0"), "'0.weight'"),
    (lambda: mlp(SIZES), ("head", "head.weight"), "'head.weight'"),
    (lambda: mlp(SIZES), ("fc1", "head", "fc1.bias"), "'fc1.bias'"),
], ids=["scale-one", "module-and-its-weight", "later-overlap"])
def test_rescale_refuses_a_block_named_twice(model, rescale, name):
    m = model()
    with unchanged(models=[m]), pytest.raises(ValueError, match=says(f"{name} is selected by two rescale entries",
                                                                     "name each block once")):
        subspace.SubspaceModel(m, 2, projection="dense", rescale=rescale)


# ------------------------------------------------------------------------------ beyond the list: probed

@pytest.mark.parametrize("call, fragments", [
    (lambda m, X, y: training.train(m, X, y, params=mlp(SIZES).parameters(), progress=False),
     ("params must be parameters of the model being trained", "never receive a gradient")),
    (lambda m, X, y: training.train(m, X, y, params=m.head.weight, progress=False),
     ("params must be a list of the model's parameters, got Parameter", "params=list(model.head.parameters())")),
    (lambda m, X, y: lora.find_targets(m, ["fc1"], layer_types=nn.Linear),
     ("layer_types must be a tuple of module classes", "(nn.Linear,)")),
    (lambda m, X, y: lora.replace_modules(m, ["fc1"], None), ("make_layer (and check, if given) must be functions",
                                                              "lambda name, m:")),
    (lambda m, X, y: quant.quantize_model(None), ("model must be a torch.nn.Module, got NoneType",)),
    (lambda m, X, y: quant.storage_bytes([m]), ("model must be a torch.nn.Module, got list",)),
    (lambda m, X, y: subspace.fwht([1.0, 2.0]), ("fwht needs a torch.Tensor, got list", "torch.as_tensor")),
    (lambda m, X, y: analysis.training_step_flops(None, 4), ("sizes must be the MLP's widths, got None",
                                                             "(784, 200, 10)")),
    (lambda m, X, y: memory.finetune_memory(n_params="7B"), ("n_params must be a finite number, got '7B'",
                                                             "not a string")),
    (lambda m, X, y: __import__("helpers.models").models.body(None), ("model must be a torch.nn.Module",)),
], ids=["train-params-of-another-model", "train-params-one-tensor", "layer-types-not-a-tuple", "make-layer-none",
        "quantize-model-none", "storage-bytes-list", "fwht-list", "flops-sizes-none", "finetune-n-params-string",
        "body-none"])
def test_other_public_helpers_name_what_is_wrong(call, fragments):
    model, (X, y) = mlp(SIZES), _task()
    with unchanged(models=[model], tensors=[X, y]), pytest.raises(ValueError, match=says(*fragments)):
        call(model, X, y)
