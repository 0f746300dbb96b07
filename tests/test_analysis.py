import pytest
import torch

from helpers.analysis import effective_rank, energy_captured, subspace_similarity


def test_identical_adapters_overlap_fully():
    A = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    phi = subspace_similarity(A, A)
    assert phi.shape == (8, 8) and torch.allclose(phi, torch.ones(8, 8, dtype=torch.float64), atol=1e-10)


def test_orthogonal_row_spaces_do_not_overlap():
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(1)))
    phi = subspace_similarity(Q[:, :4].T, Q[:, 4:10].T)
    assert phi.shape == (4, 6) and phi.abs().max() < 1e-10


def test_nested_subspace_and_known_partial_overlap():
    e = torch.eye(10)
    A1 = torch.stack([3 * e[0], 2 * e[1]])          # top direction e0, then e1
    A2 = torch.stack([5 * e[1], 4 * e[7], 1 * e[0]])  # top e1, then e7, then e0
    phi = subspace_similarity(A1, A2)
    assert phi[0, 0] == pytest.approx(0.0)   # e0 vs e1
    assert phi[1, 0] == pytest.approx(1.0)   # span{e0, e1} contains e1
    assert phi[0, 2] == pytest.approx(1.0)   # e0 is inside span{e1, e7, e0}
    assert phi[1, 1] == pytest.approx(0.5)   # span{e0,e1} vs span{e1,e7}: one shared direction of two


def test_energy_and_effective_rank_of_a_low_rank_matrix():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(30, 2, generator=g) @ torch.randn(2, 20, generator=g)
    energy = energy_captured(M)
    assert energy[1] == pytest.approx(1.0) and effective_rank(M, 0.999) <= 2
    assert effective_rank(torch.eye(10), 0.9) == 9


def _counted_flops(model, batch=16):
    from torch.utils.flop_counter import FlopCounterMode
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(X), y).backward()
    return counter.get_total_flops()


def test_step_flops_formula_equals_pytorch_flop_counter_for_full_and_lora():
    import copy

    from helpers.analysis import training_step_flops
    from helpers.lora import add_lora
    from helpers.models import mlp
    sizes = (784, 200, 200, 10)
    assert training_step_flops(sizes, 16)["total"] == _counted_flops(mlp(sizes))
    lora = add_lora(copy.deepcopy(mlp(sizes)), ["fc1", "fc2"], r=8, alpha=16)
    add_lora(lora, ["head"], r=4, alpha=8)
    assert training_step_flops(sizes, 16, "lora", r={0: 8, 1: 8, 2: 4})["total"] == _counted_flops(lora)


def test_step_flops_subspace_adds_the_projection():
    from helpers.analysis import training_step_flops
    sizes = (784, 200, 200, 10)
    full = training_step_flops(sizes, 128)["total"]
    dense = training_step_flops(sizes, 128, "subspace", d=500, projection="dense")
    assert dense["model"] == full and dense["extra"] == 4 * 199_210 * 500
    fastfood = training_step_flops(sizes, 128, "subspace", d=1000, projection="fastfood")
    assert fastfood["extra"] == 2 * 195 * (2 * 1024 * 10 + 3 * 1024)


def test_measured_step_flops_counts_what_runs_and_leaves_the_model_alone():
    from helpers.analysis import measured_step_flops, training_step_flops
    from helpers.models import mlp
    from helpers.subspace import SubspaceModel
    sizes = (784, 200, 200, 10)
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(16, 784, generator=g), torch.randint(0, 10, (16,), generator=g)
    model = mlp(sizes)
    assert measured_step_flops(model, X, y) == training_step_flops(sizes, 16)["total"]
    assert all(p.grad is None for p in model.parameters())
    sub = SubspaceModel(mlp(sizes), 1000, "fastfood")
    ideal = training_step_flops(sizes, 16, "subspace", d=1000)
    as_run = measured_step_flops(sub, X, y)
    # the Hadamard transforms run as 32 x 32 matrix products: 2 * L * (32 + 32) per block and transform
    assert as_run == ideal["model"] + 4 * 195 * 2 * 1024 * 64 and as_run > ideal["total"]
    assert sub.theta_d.grad is None
    with pytest.raises(ValueError, match="requires grad"):
        measured_step_flops(mlp(sizes).requires_grad_(False), X, y)
