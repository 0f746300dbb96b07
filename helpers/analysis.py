"""Analysis of learned updates: singular-value spectra and LoRA subspace similarity (Hu et al. 2021, Eq. 4)."""
from __future__ import annotations

import torch


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
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    return int((energy_captured(M) < energy - 1e-12).sum().item()) + 1
