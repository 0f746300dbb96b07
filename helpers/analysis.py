"""Analysis of learned updates and training cost: spectra, LoRA subspace similarity (Hu et al. 2021, Eq. 4),
step FLOPs.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from helpers.checks import as_int, check_features, check_int, check_labels, check_lora_unmerged, modes_restored


def _as_matrix(name: str, M: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(M) or M.dim() != 2 or min(M.shape) < 1:
        raise ValueError(f"{name} must be a 2-D tensor with at least one row and column, got "
                         f"{tuple(M.shape) if torch.is_tensor(M) else type(M).__name__}")
    if not torch.isfinite(M).all():
        raise ValueError(f"{name} contains NaN or inf: check the training run that produced it")
    return M.detach().double()


def top_right_singular_vectors(A: torch.Tensor) -> torch.Tensor:
    """Right-singular vectors of A (r x k) as the columns of a k x r matrix, largest singular value first."""
    _, _, Vh = torch.linalg.svd(_as_matrix("A", A), full_matrices=False)
    return Vh.T


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """φ(i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F / min(i, j) for i = 1..r₁, j = 1..r₂ (Hu et al. 2021, Eq. 4).

    A1: r₁ x k and A2: r₂ x k, two LoRA A matrices of the same layer; U are their right-singular vectors.
    Returns an r₁ x r₂ float64 tensor in [0, 1]: 1 where the top-i directions of one contain the top-j of the
    other, 0 where they are orthogonal. Entry [i-1, j-1] holds φ(i, j).
    """
    A1, A2 = _as_matrix("A1", A1), _as_matrix("A2", A2)
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(f"A1 and A2 must act on the same input size k, got {A1.shape[1]} and {A2.shape[1]}: "
                         "pass the lora_A of the same layer from both adapters")
    for name, A in (("A1", A1), ("A2", A2)):
        if A.shape[0] > A.shape[1]:
            raise ValueError(f"{name} is {A.shape[0]} x {A.shape[1]}, taller than wide: a LoRA A is r x k with r <= k "
                             "(only k directions exist); pass lora_A.weight, not lora_B or a transpose")
        if not bool(A.any()):
            raise ValueError(f"{name} is all zeros: it spans no directions, so φ would be arbitrary; pass a trained "
                             "(or initialised) lora_A")
    U1, U2 = top_right_singular_vectors(A1), top_right_singular_vectors(A2)
    overlap = (U1.T @ U2) ** 2  # r1 x r2, squared cosines between single directions
    cumulative = overlap.cumsum(0).cumsum(1)  # [i-1, j-1] = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F
    i = torch.arange(1, U1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, U2.shape[1] + 1, dtype=torch.float64)[None, :]
    return (cumulative / torch.minimum(i, j)).clamp(0, 1)


def singular_values(M: torch.Tensor) -> torch.Tensor:
    """Singular values of a matrix, descending (float64)."""
    return torch.linalg.svdvals(_as_matrix("M", M))


def energy_captured(M: torch.Tensor) -> torch.Tensor:
    """Fraction of ‖M‖²_F in the top-k singular directions, for k = 1..rank: entry k-1 is Σ_{≤k} σ² / Σ σ²."""
    s2 = singular_values(M) ** 2
    if s2.sum() == 0:
        raise ValueError("M is all zeros: it has no energy to split (was the update trained?)")
    return s2.cumsum(0) / s2.sum()


def effective_rank(M: torch.Tensor, energy: float = 0.9) -> int:
    """Smallest k whose top-k singular directions hold `energy` of ‖M‖²_F."""
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    return int((energy_captured(M) < energy - 1e-12).sum().item()) + 1


def training_step_flops(sizes, batch: int, method: str = "full", r: dict | int | None = None, d: int = 0,
                        projection: str = "fastfood") -> dict[str, int]:
    """Analytic matmul FLOPs of one training step (forward + backward) of an MLP: 2·m·n·k per m×k @ k×n product
    (element-wise ops, biases and the loss are not counted), the convention of PyTorch's FlopCounterMode.

    For "full" and "lora" this equals what FlopCounterMode counts for the model as it runs (tested). For
    "subspace" it does not: the projection is counted here as an *ideal* Walsh–Hadamard transform (L·log2 L
    additions per block), while `helpers.subspace.fwht` runs it as small dense Hadamard matrix products
    (factors of size <= 32), which FlopCounterMode counts at 2·L·(sum of the factor sizes) per block and
    transform (L = 1024: 2·L·(32 + 32) = 128·L instead of the ideal 10·L). Faster on a CPU, more FLOPs:
    `measured_step_flops` counts the implementation as it runs.

    sizes: the MLP's widths (d_in, hidden..., d_out); batch b. For a layer d_in -> d_out, with N_l = d_in·d_out:
    - "full": forward 2bN_l, weight gradient 2bN_l, input gradient 2bN_l (none for the first layer: the data
      needs no gradient).
    - "lora" (adapters of rank r[l] on every layer; r an int or {layer index: rank}, 0 = not adapted): the frozen
      W₀ costs its forward and, past the first layer, its input gradient; each adapter adds
      2b·r(d_in + d_out) forward and 2b·r(2·d_out + d_in) backward (+2b·r·d_in for its input gradient past
      the first layer).
    - "subspace": the whole model's "full" cost (every weight needs its gradient to reach θ^(d)) plus the
      projection, forward and backward alike: dense 2·D·d, sparse 2·nnz with nnz = d·√D, fastfood per block of
      L = 2^⌈log2 d⌉ two Walsh–Hadamard transforms of L·log2 L additions plus 3L multiplies, ⌈D/L⌉ blocks.
    Returns {"model": ..., "extra": ..., "total": ...}.
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sizes must be the MLP's widths, got {sizes!r}; e.g. (784, 200, 10)")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output width, got {sizes}; e.g. (784, 200, 10)")
    sizes = [check_int(f"sizes[{i}]", s, 1, "sizes=(784, 200, 10)") for i, s in enumerate(sizes)]
    batch = check_int("batch", batch, 1, "batch=128")
    if r is not None:
        for layer, k in (r.items() if isinstance(r, dict) else [(None, r)]):
            check_int("r" if layer is None else f"r[{layer!r}]", k, 0, "r=8 or {0: 8, 1: 4}")
        r = {as_int(k): check_int("r", v, 0) for k, v in r.items()} if isinstance(r, dict) else check_int("r", r, 0)
    d = check_int("d", d, 0)
    if isinstance(r, dict) and not set(r) <= set(range(len(sizes) - 1)):
        raise ValueError(f"r has layer indices {sorted(r, key=str)}, but the MLP has layers 0..{len(sizes) - 2}: "
                         "key r by layer index, e.g. {0: 8}")
    if method not in ("full", "lora", "subspace"):
        raise ValueError(f"unknown method {method!r}: choose 'full', 'lora' or 'subspace'")
    layers = list(zip(sizes[:-1], sizes[1:]))
    ranks = {i: (r if isinstance(r, int) else (r or {}).get(i, 0)) for i in range(len(layers))}
    if method == "lora" and not any(ranks.values()):
        raise ValueError("method 'lora' needs r: an int or {layer index: rank}")
    b, model, extra = batch, 0, 0
    for i, (din, dout) in enumerate(layers):
        first = i == 0
        if method == "lora":
            model += 2 * b * din * dout * (1 if first else 2)
            k = ranks[i]
            extra += 2 * b * k * (din + dout) + 2 * b * k * (2 * dout + din) + (0 if first else 2 * b * k * din)
        else:
            model += 2 * b * din * dout * (2 if first else 3)
    if method == "subspace":
        D = sum(din * dout + dout for din, dout in layers)
        if not 1 <= d <= D:
            raise ValueError(f"method 'subspace' needs 1 <= d <= D = {D}, got d={d}")
        if projection == "dense":
            extra = 2 * (2 * D * d)
        elif projection == "sparse":
            extra = 2 * (2 * round(d * math.sqrt(D)))
        elif projection == "fastfood":
            L = 1 << max(0, math.ceil(math.log2(d)))
            extra = 2 * (-(-D // L)) * (2 * L * int(math.log2(L)) + 3 * L)
        else:
            raise ValueError(f"unknown projection {projection!r}: choose 'dense', 'sparse' or 'fastfood'")
    return {"model": model, "extra": extra, "total": model + extra}


def measured_step_flops(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward (cross-entropy on the batch X: (b, d_in) floats,
    y: (b,) int64) as PyTorch's FlopCounterMode counts them for the model as it runs: every matmul-like op
    that actually executes, at 2·m·n·k (element-wise ops and the optimizer step are not counted).

    For a `SubspaceModel` this includes the projection's products as implemented (Fastfood's Hadamard
    transforms as small dense matrix products), unlike `training_step_flops`' ideal count. The model's
    gradients, buffers (batch-norm statistics), every module's mode and the global RNG are left as they were (the
    backward's gradients are discarded; the forward runs in the model's own modes).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass e.g. mlp()")
    check_features("X", X)
    check_labels("y", y, len(X))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter of the model requires grad, so a training step has no backward to count: "
                         "unfreeze what you mean to train (e.g. add_lora, or SubspaceModel's θ^(d))")
    check_lora_unmerged(model, params)
    saved = [(p, p.grad) for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]  # batch-norm statistics a train-mode forward updates
    try:
        for p in params:
            p.grad = None
        with modes_restored(model), torch.random.fork_rng(), FlopCounterMode(display=False) as counter:
            nn.functional.cross_entropy(model(X), y).backward()
        return int(counter.get_total_flops())
    finally:
        for p, g in saved:
            p.grad = g
        with torch.no_grad():
            for b, copy in buffers:
                b.copy_(copy)
