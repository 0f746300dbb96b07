"""sweeps/minilm_controls.py (notebook 05's controls): its plan and results file, and the per-tensor Fastfood
projection (helpers.subspace.TensorwiseFastfoodProjection) its "said_tensor" runs use."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers.subspace import SubspaceModel, TensorwiseFastfoodProjection

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("minilm_controls", ROOT / "sweeps" / "minilm_controls.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE_LRS = {("said", "pre-trained"): 0.1, ("said", "random"): 0.03, ("full", "pre-trained"): 1e-4,
            ("full", "random"): 3e-4}


def test_plan_order_keys_and_learning_rates(sweep):
    plan = sweep.plan([], BASE_LRS)
    keys = [sweep.key(p) for p in plan]
    assert len(keys) == len(set(keys))
    assert keys[0].startswith("lr/headsub/")  # the cheap control first, the random model's long runs late
    assert keys.index("grid/headsub/pre-trained/2310/2") < keys.index("grid/said/pre-trained/700/0") < keys.index(
        "grid/said_tensor/pre-trained/1000/0")
    assert "grid/said/random/4000/0/steps=600" in keys and "grid/full/random/0/2/steps=600" in keys
    by_key = {sweep.key(p): p for p in plan}
    assert by_key["grid/headsub/pre-trained/250/0"]["lr"] is None  # waits for its own lr stage
    assert by_key["grid/said/pre-trained/700/1"]["lr"] == 0.1  # SAID's lr from sweeps/minilm.py
    assert by_key["grid/said_lrd/pre-trained/4000/0"]["lr"] == pytest.approx(0.1 * (1000 / 4000) ** 0.5)
    lr_points = [dict(p, val_acc=0.9 if p["lr"] == 3e-2 else 0.5) for p in plan if p["stage"] == "lr"]
    chosen = {sweep.key(p): p["lr"] for p in sweep.plan(lr_points, BASE_LRS)}
    assert chosen["grid/headsub/pre-trained/1000/1"] == 3e-2 and chosen["grid/said_tensor/pre-trained/1000/0"] == 3e-2


def test_committed_results_match_the_plan(sweep):
    """The committed file may be a prefix of the plan (the sweep runs in priority order), never anything else."""
    stored = sweep.read(ROOT / "sweeps" / "minilm_controls_results.json")
    keys = [p["key"] for p in stored["runs"]]
    assert len(keys) == len(set(keys)), "duplicate run keys"
    planned = {sweep.key(p): p for p in sweep.plan(stored["runs"])}
    for run in stored["runs"]:
        assert run["key"] in planned, f"{run['key']} is not in the plan"
        assert run["lr"] == pytest.approx(planned[run["key"]]["lr"])
        assert run.get("final_acc", run.get("val_acc")) is not None
    # every (method, weights, size) the file has is complete over its seeds (a coherent subset)
    grid = {}
    for p in planned.values():
        if p["stage"] == "grid":
            grid.setdefault((p["method"], p["weights"], p["size"], p["steps"]), set()).add(sweep.key(p))
    done = set(keys)
    started = [g for g, ks in grid.items() if ks & done]
    assert all(grid[g] <= done for g in started[:-1]), "only the last point family may be partial"


def test_tensorwise_fastfood_gives_each_tensor_a_unit_norm_share():
    sizes = [300, 7, 1200, 40]
    proj = TensorwiseFastfoodProjection(sum(sizes), 64, seed=1, sizes=sizes)
    P = proj.matrix()
    assert P.shape == (sum(sizes), 64)
    lo, shares = 0, []
    for n in sizes:
        shares.append(P[lo:lo + n].square().sum(0).mean().item())  # a tensor's share of a column, squared norm
        lo += n
    assert shares == pytest.approx([1.0] * 4, rel=0.25)  # ~1 each, even for the 7-element tensor (n < d)
    # independent blocks: the two equal-seeded calls agree, another seed differs
    assert torch.equal(P, TensorwiseFastfoodProjection(sum(sizes), 64, seed=1, sizes=sizes).matrix())
    assert not torch.allclose(P, TensorwiseFastfoodProjection(sum(sizes), 64, seed=2, sizes=sizes).matrix())
    with pytest.raises(ValueError, match="sum to"):
        TensorwiseFastfoodProjection(100, 10, sizes=[50, 40])
    with pytest.raises(ValueError, match="sizes must list"):
        TensorwiseFastfoodProjection(100, 10)


def test_said_with_tensorwise_projection_matches_the_explicit_formula():
    net = nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3))
    sub = SubspaceModel(net, 40, "fastfood", seed=3, said=True, per_tensor=True)  # one λ per tensor: 4
    assert len(sub.blocks) == 4 and sub.d == 40 and sub.projection.sizes == [91, 13, 39, 3]
    with torch.no_grad():
        sub.theta_d.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        sub.lambdas.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    P = sub.projection.matrix()
    lam = torch.repeat_interleave(sub.lambdas, torch.tensor(sub.projection.sizes))
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(4))
    out = sub(x)
    grads = torch.autograd.grad(out.square().sum(), [sub.theta_d, sub.lambdas])
    theta_d, lambdas = sub.theta_d.detach().requires_grad_(), sub.lambdas.detach().requires_grad_()
    flat = sub.theta0 + torch.repeat_interleave(lambdas, torch.tensor(sub.projection.sizes)) * (P @ theta_d)
    params = dict(zip([n for n, _ in net.named_parameters()],
                      [t.view(s) for t, s in zip(flat.split(sub.projection.sizes), sub._shapes)]))
    ref = torch.func.functional_call(net, params, (x,))
    ref_grads = torch.autograd.grad(ref.square().sum(), [theta_d, lambdas])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))
    torch.testing.assert_close(sub.flat_params().detach(), sub.theta0 + lam.detach() * (P @ sub.theta_d.detach()))


def test_training_embeddings_replay_the_frozen_encoder_run_exactly():
    """A head-only subspace trained on cached training-mode embeddings is the run with the encoder in the loop:
    same batches, same dropout masks, same losses and the same θ^(d)."""
    from helpers.data import load_trec6
    from helpers.text import SentenceClassifier, load_minilm, training_embeddings
    from helpers.training import train
    texts, y, *_ = load_trec6()
    encoder, tok = load_minilm()
    X, y = tok.features(texts[:48]), y[:48]
    kw = dict(steps=6, batch_size=8, seed=3)
    state = torch.random.get_rng_state()
    clf = SentenceClassifier(encoder, 6, seed=3).eval()
    E = training_embeddings(clf, X, **kw)
    assert torch.equal(torch.random.get_rng_state(), state) and not clf.training  # RNG and mode as they were
    assert int((E.abs().sum(1) > 0).sum()) == 48  # 6 steps x 8 rows: every row drawn once
    full = SubspaceModel(clf, 100, "fastfood", seed=3, exclude=("encoder",))
    h_full = train(full, X, y, lr=0.03, progress=False, **kw)
    head = SubspaceModel(SentenceClassifier(encoder, 6, seed=3).head, 100, "fastfood", seed=3)
    h_head = train(head, E, y, lr=0.03, progress=False, **kw)
    assert h_full["loss"] == pytest.approx(h_head["loss"], rel=1e-6)
    torch.testing.assert_close(full.theta_d, head.theta_d, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="drawn twice"):
        training_embeddings(clf, X, steps=7, batch_size=8, seed=0)


def test_per_tensor_is_a_fastfood_option_validated_before_anything_is_built():
    net = nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3))
    before = [p.detach().clone() for p in net.parameters()]
    for bad, match in [(dict(projection="dense", per_tensor=True), "Fastfood option"),
                       (dict(projection="fastfood", per_tensor="yes"), "per_tensor='yes'")]:
        with pytest.raises(ValueError, match=match):
            SubspaceModel(net, 20, seed=0, **bad)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    plain = SubspaceModel(net, 20, "fastfood", seed=0, per_tensor=False)
    assert not isinstance(plain.projection, TensorwiseFastfoodProjection)
