import copy
import math

import pytest
import torch
from torch import nn

from helpers.models import mlp
from helpers.subspace import (PROJECTIONS, DenseProjection, FastfoodProjection, SparseProjection,
                              SubspaceModel, fwht)
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


