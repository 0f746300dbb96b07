import copy
import math

import pytest
import torch
from torch import nn

from helpers.models import mlp
from helpers.subspace import PROJECTIONS, DenseProjection, FastfoodProjection, SparseProjection, SubspaceModel, fwht
from helpers.training import train

ALL = [DenseProjection, SparseProjection, FastfoodProjection]


def hadamard(n: int) -> torch.Tensor:
    """Explicit Sylvester Hadamard matrix from its closed form H[i, j] = (-1)^popcount(i & j)."""
    i = torch.arange(n)
    bits = i[:, None] & i[None, :]
    parity = torch.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return (1 - 2 * parity).double()


# --- fwht -------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 2, 4, 8, 32, 64, 128, 1024, 2048])
def test_fwht_equals_explicit_hadamard_product(L):
    x = torch.randn(3, 2, L, dtype=torch.float64, generator=torch.Generator().manual_seed(L))
    assert torch.allclose(fwht(x), x @ hadamard(L), atol=1e-9)


def test_fwht_large_is_self_inverse_up_to_L():
    L = 2**18  # the MNIST MLP's size class: factored as 32·32·16·16
    x = torch.randn(L, dtype=torch.float64)
    assert torch.allclose(fwht(fwht(x)), L * x, atol=1e-6)


def test_fwht_is_differentiable():
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))


# --- projections ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [DenseProjection, SparseProjection])
@pytest.mark.parametrize("D, d", [(1000, 10), (5000, 37), (300, 300)])
def test_dense_and_sparse_columns_have_unit_norm_exactly(cls, D, d):
    norms = cls(D, d, seed=3).matrix().norm(dim=0)
    assert torch.allclose(norms, torch.ones(d), atol=1e-5)


def test_fastfood_equals_its_explicit_factors():
    D, d = 300, 50  # blocks of L = 64, n = 5 stacked, cut to 300 rows
    P = FastfoodProjection(D, d, seed=2)
    H = hadamard(P.L).float()
    blocks = []
    for i in range(P.n_blocks):
        perm = P.perm[i * P.L:(i + 1) * P.L] - i * P.L
        Pi = torch.eye(P.L)[perm]  # (Π v)_r = v[perm_r]
        blocks.append(H @ torch.diag(P.G[i]) @ Pi @ H @ torch.diag(P.B[i]))
    explicit = torch.cat(blocks)[:D, :d]
    assert torch.allclose(P.matrix(), explicit, atol=1e-5)
    assert torch.allclose(P(torch.arange(d) / d), explicit @ (torch.arange(d) / d), atol=1e-5)
    assert set(P.B.unique().tolist()) == {-1.0, 1.0}


def test_fastfood_columns_have_unit_norm_within_tolerance():
    # Only the last, cut block deviates: tiny when D spans many blocks, a few % for one cut block.
    many_blocks = FastfoodProjection(50_000, 64, seed=0).matrix().norm(dim=0)
    assert (many_blocks - 1).abs().max() < 2e-3
    one_cut_block = FastfoodProjection(1000, 1000, seed=0).matrix().norm(dim=0)
    assert (one_cut_block - 1).abs().max() < 0.05
    assert abs((one_cut_block ** 2).mean() - 1) < 0.01  # unit norm in expectation


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("D, d", [(1000, 10), (777, 100), (64, 64)])
def test_forward_and_backward_match_the_explicit_matrix(cls, D, d):
    P = cls(D, d, seed=1)
    M = P.matrix()
    theta = torch.randn(d, requires_grad=True)
    g = torch.randn(D)
    out = P(theta)
    out.backward(g)
    assert out.shape == (D,)
    assert torch.allclose(out, M @ theta.detach(), atol=1e-5)
    assert torch.allclose(theta.grad, M.t() @ g, atol=1e-4)
    base = torch.randn(D)
    assert torch.allclose(P(theta, base=base), base + M @ theta.detach(), atol=1e-5)


@pytest.mark.parametrize("cls", ALL)
def test_projection_is_deterministic_from_seed(cls):
    a, b, c = cls(500, 20, seed=7).matrix(), cls(500, 20, seed=7).matrix(), cls(500, 20, seed=8).matrix()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sparse_structure_density_and_values():
    D, d = 10_000, 50
    P = SparseProjection(D, d, seed=0)
    M = P.matrix()
    k = round(math.sqrt(D))
    assert ((M != 0).sum(0) == k).all()  # density k / D = 1/√D per column, rows distinct
    assert torch.allclose(M[M != 0].abs(), torch.full((d * k,), 1 / math.sqrt(k)))
    assert 0.3 < (M > 0).float().sum() / (d * k) < 0.7  # random signs


def test_nbytes_is_the_stored_state():
    D = 199_210
    assert DenseProjection(D, 50).nbytes == D * 50 * 4
    k = round(math.sqrt(D))
    assert SparseProjection(D, 1000).nbytes == 1000 * k * (8 + 4 + 4) + 1001 * 4  # rows, vals, CSR col, crow
    ff = [FastfoodProjection(D, d).nbytes for d in (100, 1000)]
    assert abs(ff[0] - ff[1]) < 0.01 * ff[0] and max(ff) < 24 * 1.05 * D  # O(D), not O(D·d): B, G, Π, Π⁻¹


def test_dense_over_memory_budget_names_bytes_and_fix():
    with pytest.raises(ValueError, match=r"needs 796,840,000 bytes .* use projection='sparse' or 'fastfood'"):
        DenseProjection(199_210, 1000, max_bytes=500_000_000)
    assert DenseProjection(100, 10, max_bytes=4000).nbytes == 4000


# --- SubspaceModel ----------------------------------------------------------------------------

@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(32, 784, generator=g), torch.randint(0, 10, (32,), generator=g)


@pytest.mark.parametrize("projection", sorted(PROJECTIONS))
def test_identity_at_zero_and_only_theta_d_is_a_parameter(projection, batch):
    model = mlp(seed=0)
    sub = SubspaceModel(model, 100, projection=projection, seed=0)
    assert (sub.D, sub.d) == (199_210, 100)
    assert [(n, tuple(p.shape)) for n, p in sub.named_parameters()] == [("theta_d", (100,))]
    assert torch.equal(sub.theta_d, torch.zeros(100))
    buffers = dict(sub.named_buffers())
    assert "theta0" in buffers and len(buffers) > 1  # θ0 and the projection's state
    assert torch.equal(buffers["theta0"], torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(sub(batch[0]), model(batch[0]))


def test_all_parameters_including_biases_are_projected():
    sub = SubspaceModel(mlp(seed=0), 50, projection="sparse", seed=0)
    with torch.no_grad():
        sub.theta_d.fill_(1.0)
    moved = {n: not torch.equal(p, sub.model.get_parameter(n)) for n, p in sub.params_dict().items()}
    assert moved == {n: True for n, _ in mlp().named_parameters()}  # fc1.bias, head.bias, ... all move


@pytest.mark.parametrize("projection", sorted(PROJECTIONS))
def test_gradients_reach_only_theta_d(projection, batch):
    model = mlp(seed=0)
    sub = SubspaceModel(model, 64, projection=projection)
    nn.functional.cross_entropy(sub(batch[0]), batch[1]).backward()
    assert sub.theta_d.grad is not None and sub.theta_d.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(not b.requires_grad for b in sub.buffers())


def test_trains_with_helpers_training_and_leaves_the_wrapped_model_alone(batch):
    model = mlp(seed=0)
    before = copy.deepcopy(model.state_dict())
    sub = SubspaceModel(model, 200, projection="fastfood", seed=0)
    X, y = batch
    loss0 = nn.functional.cross_entropy(sub(X), y).item()
    history = train(sub, X, y, epochs=15, lr=0.1, batch_size=32, seed=0, progress=False)
    assert history["loss"][-1] < 0.9 * loss0  # 200 numbers start memorising 32 random labels
    assert sub.theta_d.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_state_dict_round_trip_and_deepcopy(batch):
    sub = SubspaceModel(mlp(seed=0), 30, projection="sparse", seed=4)
    with torch.no_grad():
        sub.theta_d.normal_()
    fresh = SubspaceModel(mlp(seed=0), 30, projection="sparse", seed=4)
    fresh.load_state_dict(sub.state_dict())
    assert torch.equal(fresh(batch[0]), sub(batch[0]))
    assert torch.equal(copy.deepcopy(sub)(batch[0]), sub(batch[0]))


def test_train_and_eval_modes_reach_the_wrapped_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    sub = SubspaceModel(model, 3)
    sub.eval()
    assert not model.training
    sub.train()
    assert model.training


# --- options for large models: compact Fastfood, exclude, rescale, SAID -----------------------

@pytest.mark.parametrize("D, d", [(199_210, 500), (1000, 1000), (5000, 37)])
def test_compact_fastfood_is_the_same_p_bit_for_bit_in_less_memory(D, d):
    full, lean = FastfoodProjection(D, d, seed=3), FastfoodProjection(D, d, seed=3, compact=True)
    assert (lean.B.dtype, lean.perm.dtype, lean.inv_perm.dtype) == (torch.int8, torch.int32, torch.int32)
    assert torch.equal(full.B, lean.B.float()) and torch.equal(full.perm, lean.perm.long())
    assert torch.equal(full.inv_perm, lean.inv_perm.long()) and torch.equal(full.G, lean.G)
    n = full.n_blocks * full.L
    assert (full.nbytes, lean.nbytes) == (24 * n, 13 * n)
    if d <= 64:
        assert torch.equal(full.matrix(), lean.matrix())
    theta = torch.randn(d, generator=torch.Generator().manual_seed(0))
    a, b = theta.clone().requires_grad_(), theta.clone().requires_grad_()
    out_full, out_lean = full(a), lean(b)
    assert torch.equal(out_full, out_lean)
    g = torch.randn(D, generator=torch.Generator().manual_seed(1))
    out_full.backward(g)
    out_lean.backward(g)
    assert torch.equal(a.grad, b.grad)
    dbl = lean.double()
    assert dbl.B.dtype == torch.int8 and torch.equal(dbl(theta.double()), full.double()(theta.double()))


def test_compact_subspace_model_trains_identically(batch):
    X, y = batch
    runs = []
    for compact in (False, True):
        sub = SubspaceModel(mlp(seed=0), 64, "fastfood", seed=0, compact=compact)
        train(sub, X, y, epochs=3, lr=0.1, batch_size=16, seed=0, progress=False)
        runs.append(sub.theta_d.detach())
    assert torch.equal(*runs)


def test_exclude_keeps_parameters_frozen_and_outside_the_subspace(batch):
    model = mlp(seed=0)
    sub = SubspaceModel(model, 40, "fastfood", seed=0, exclude=("fc1",))
    assert sub.D == 199_210 - 784 * 200 - 200
    assert sub._frozen == ["fc1.weight", "fc1.bias"]
    X, y = batch
    with torch.no_grad():
        assert torch.equal(sub(X), model(X))
    nn.functional.cross_entropy(sub(X), y).backward()
    assert sub.theta_d.grad.abs().sum() > 0 and all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        sub.theta_d.fill_(1.0)
    p = sub.params_dict()
    assert torch.equal(p["fc1.weight"], model.fc1.weight) and not p["fc1.weight"].requires_grad
    assert not torch.equal(p["fc2.weight"], model.fc2.weight)


def test_rescale_gives_a_block_unit_norm_columns():
    sub = SubspaceModel(mlp(seed=0), 64, "dense", seed=0, rescale=("head",))
    D_head = 200 * 10 + 10
    with torch.no_grad():  # the effective P column by column
        cols = []
        for e in torch.eye(64):
            sub.theta_d.copy_(e)
            cols.append(sub.flat_params() - sub.theta0)
    P = torch.stack(cols, 1)
    head = slice(sub.D - D_head, sub.D)
    assert torch.allclose(P[head].norm(dim=0).pow(2).mean(), torch.tensor(1.0), atol=0.1)
    assert P[:sub.D - D_head].norm(dim=0).pow(2).mean() < 1.0  # the rest keeps its share (≈ 1 - D_head / D)
    plain = SubspaceModel(mlp(seed=0), 64, "dense", seed=0).projection.matrix()
    assert torch.allclose(P[head], plain[head] * math.sqrt(sub.D / D_head), atol=1e-6)


def test_said_one_lambda_per_block_inside_the_budget(batch):
    model = mlp(seed=0)
    sub = SubspaceModel(model, 100, "fastfood", seed=0, said=True)
    names = [n for n, _ in model.named_parameters()]
    assert sub.blocks == names and sub.d == 100 and sub.theta_d.shape == (100 - len(names),)
    assert {n: tuple(p.shape) for n, p in sub.named_parameters()} == {"theta_d": (94,), "lambdas": (6,)}
    X, y = batch
    with torch.no_grad():
        assert torch.equal(sub(X), model(X))  # θ^(d) = 0: the base model whatever λ is
        sub.lambdas.fill_(3.0)
        assert torch.equal(sub(X), model(X))
        sub.lambdas.fill_(1.0)
        sub.theta_d.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        # λ scales each block's update: λ = 0 on the head's two tensors leaves the head at θ0
        sub.lambdas[4:] = 0
        p = sub.params_dict()
        assert torch.equal(p["head.weight"], model.head.weight) and not torch.equal(p["fc1.weight"], model.fc1.weight)
        sub.lambdas.fill_(1.0)
    nn.functional.cross_entropy(sub(X), y).backward()
    assert (sub.lambdas.grad != 0).all() and (sub.theta_d.grad != 0).any()
    layers = SubspaceModel(mlp(seed=0), 100, "sparse", said=True, groups=lambda n: n.split(".")[0])
    assert layers.blocks == ["fc1", "fc2", "head"] and layers.theta_d.shape == (97,)
    history = train(layers, X, y, epochs=3, lr=0.05, batch_size=32, seed=0, progress=False)
    assert history["loss"][-1] < history["loss"][0] and not torch.equal(layers.lambdas, torch.ones(3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(exclude=("fc9",)), "exclude entry 'fc9' matches no parameter.*fc1, fc2, head"),
    (dict(exclude="fc"), "exclude entry 'fc' matches no parameter"),  # a prefix must end at a dot
    (dict(exclude=("fc1", "fc2", "head")), "exclude leaves no parameter to project"),
    (dict(rescale=("fc1",), exclude=("fc1",)), "rescale entry selecting 'fc1.weight' is in exclude"),
    (dict(rescale=("head", "head.bias")), "'head.bias' is selected by two rescale entries"),
    (dict(said=True, d=6), "d=6 leaves no room for θ\\^\\(d\\): SAID spends 6 .* use d > 6"),
    (dict(said=1), "said must be True or False"),
    (dict(groups=lambda n: n), "groups only matters with said=True"),
    (dict(said=True, groups="layer"), "groups must be a function"),
    (dict(said=True, groups=lambda n: 0), "groups\\('fc1.weight'\\) returned 0"),
    (dict(compact="yes"), "compact must be True or False"),
])
def test_subspace_options_bad_input_leaves_model_unchanged(kwargs, match):
    model = mlp(seed=0)
    before = copy.deepcopy(model.state_dict())
    kwargs = {"d": 20, **kwargs}
    with pytest.raises(ValueError, match=match):
        SubspaceModel(model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the lean path SubspaceModel trains through, against autograd through the projection --------------

def _reference(sub: SubspaceModel) -> dict[str, torch.Tensor]:
    """The wrapper's parameters built the plain autograd way: θ0 + c · λ · P θ per tensor, P θ through the
    projection's own forward (its autograd Function); what SubspaceModel did before the lean path."""
    delta = sub.projection(sub.theta_d)
    out = {}
    for i, (name, t0, dl, shape) in enumerate(zip(sub._names, sub.theta0.split(sub._numels),
                                                delta.split(sub._numels), sub._shapes)):
        f = sub._scales[i] * (sub.lambdas[sub._block_of[i]] if sub.said else 1.0)
        out[name] = (t0 + f * dl).view(shape)
    return out


@pytest.mark.parametrize("projection", ["dense", "sparse", "fastfood"])
@pytest.mark.parametrize("options", [{}, {"rescale": ["2"]}, {"said": True, "rescale": ["2"]},
                                     {"said": True, "compact": True}], ids=["plain", "rescale", "said", "compact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lean_path_equals_autograd_through_the_projection(projection, options, dtype):
    if "compact" in options and projection != "fastfood":
        pytest.skip("compact is a Fastfood storage option")
    net = nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3)).to(dtype)
    sub = SubspaceModel(net, 40, projection, seed=3, **options)
    with torch.no_grad():
        sub.theta_d.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        if sub.said:
            sub.lambdas.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    x = torch.randn(5, 7, dtype=dtype, generator=torch.Generator().manual_seed(4))
    params = list(sub.parameters())
    lean = torch.func.functional_call(net, sub.params_dict(), (x,))
    g_lean = torch.autograd.grad(lean.square().sum(), params)
    ref = torch.func.functional_call(net, _reference(sub), (x,))
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lean, ref, **tol)
    for a, b in zip(g_lean, g_ref):  # float32: summation order differs, so compare on the gradient's scale
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("projection", ["dense", "sparse", "fastfood"])
def test_lean_path_two_forwards_before_one_backward(projection):
    """Gradient accumulation: a second forward reuses the workspaces; the first graph's backward must still
    be right (SAID's λ gradient needs P θ of its own forward, recomputed when overwritten)."""
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    sub = SubspaceModel(net, 30, projection, seed=0, said=True)
    with torch.no_grad():
        sub.theta_d.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    x1, x2 = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(1))
    loss = sub(x1).square().sum() + sub(x2).tanh().sum()
    lean = torch.autograd.grad(loss, list(sub.parameters()))
    ref_loss = (torch.func.functional_call(net, _reference(sub), (x1,)).square().sum()
                + torch.func.functional_call(net, _reference(sub), (x2,)).tanh().sum())
    ref = torch.autograd.grad(ref_loss, list(sub.parameters()))
    for a, b in zip(lean, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(b.abs().max())))


def test_lean_path_parameter_unused_by_the_forward_gets_no_gradient_trouble():
    """A projected parameter the forward never uses (like BERT's pooler under mean pooling) has no gradient:
    its share of ∂θ^(d) is zero, exactly as through autograd."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)

    sub = SubspaceModel(TwoHeads(), 20, "fastfood", seed=0, said=True)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    lean = torch.autograd.grad(sub(x).sum(), list(sub.parameters()))
    ref = torch.autograd.grad(torch.func.functional_call(sub.model, _reference(sub), (x,)).sum(),
                              list(sub.parameters()))
    for a, b in zip(lean, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(b.abs().max())))
    assert sub.projection.workspace_bytes > 0 and "_ws" not in str(sub.state_dict().keys())
