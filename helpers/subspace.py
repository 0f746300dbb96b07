"""Random-subspace training (Li et al., ICLR 2018): θ^(D) = θ0^(D) + P θ^(d).

Only the d-vector θ^(d) is trained; a fixed random P ∈ R^{D×d} with unit-norm columns maps it into the
space of all D parameters of a model, biases included. Three ways to store and apply P:

- `DenseProjection`: Gaussian entries, D·d floats; simple, memory-bound (streams D·d floats twice a step).
- `SparseProjection`: k ≈ √D random ±1/√k entries per column (density ≈ 1/√D); stores P^T only.
- `FastfoodProjection`: P = stacked blocks H G Π H B (Hadamard, Gaussian, permutation, Hadamard, signs);
  O(D) memory and O(D log d) time per product.

`SubspaceModel(model, d, projection)` wraps any `nn.Module`; its only parameter is θ^(d), so
`helpers.training.train` trains it like any model.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn
from torch.func import functional_call

DENSE_MAX_BYTES = 2**30  # 1 GiB: a dense P bigger than this raises unless max_bytes is raised
_FACTOR_LOG2 = 5  # fwht multiplies by Hadamard factors of size <= 2**5 = 32 (fastest measured here)
_HADAMARD: dict[tuple, torch.Tensor] = {}


# ---------------------------------------------------------------------------------------------
# Fast Walsh–Hadamard transform
# ---------------------------------------------------------------------------------------------

def _hadamard(n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The n×n Sylvester Hadamard matrix H_n = H_2 ⊗ ... ⊗ H_2 (entries ±1), cached."""
    key = (n, dtype, str(device))
    if key not in _HADAMARD:
        H = torch.ones(1, 1, dtype=dtype, device=device)
        while H.shape[0] < n:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        _HADAMARD[key] = H
    return _HADAMARD[key]


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform H_L x over the last dimension (L a power of two).

    Equals `x @ H_L` with the Sylvester matrix H_L[i, j] = (-1)^popcount(i & j) (symmetric, H_L H_L = L·I),
    in O(L log L): H_L = H_{a1} ⊗ H_{a2} ⊗ ... with factors a_i <= 32, so the transform is a few small
    matrix products over a reshaped tensor instead of log2(L) butterfly passes (2-3× faster on CPU).
    Differentiable (the backward of a Hadamard product is again a Hadamard product).
    """
    if not torch.is_floating_point(x):
        raise ValueError(f"fwht needs a floating-point tensor, got dtype {x.dtype}: pass x.float()")
    L = x.shape[-1] if x.dim() else 0
    if L < 1 or L & (L - 1):
        raise ValueError(f"fwht needs the last dimension to be a power of two, got {L}: "
                         f"zero-pad it to {1 << max(L - 1, 0).bit_length()}")
    k = L.bit_length() - 1
    if k == 0:
        return x.clone()
    m = -(-k // _FACTOR_LOG2)  # number of factors, then balance their sizes: 18 -> 5, 5, 4, 4
    logs = [k // m + (i < k % m) for i in range(m)]
    y = x.reshape(-1, L)
    post = L
    for s in logs:
        a = 1 << s
        post //= a
        H = _hadamard(a, x.dtype, x.device)
        # the factor acts on the axis of size a in the (rows, ..., a, post) view
        y = y.reshape(-1, a) @ H if post == 1 else torch.matmul(H, y.reshape(-1, a, post))
    return y.reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the projections and SubspaceModel
# ---------------------------------------------------------------------------------------------

def _check_dims(D, d) -> tuple[int, int]:
    for name, v in (("D", D), ("d", d)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            near = max(1, round(v)) if isinstance(v, numbers.Real) and math.isfinite(v) else 10
            raise ValueError(f"{name} must be a positive integer, got {v!r} ({type(v).__name__}): "
                             f"pass a whole number such as {name}={near}")
        if v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}: use {name} >= 1")
    if d > D:
        raise ValueError(f"d={d} exceeds D={D}: a subspace cannot have more dimensions than the parameter "
                         f"space it lives in; choose d <= {D} (d = D already reaches every direction)")
    return int(D), int(d)


class _Projection(nn.Module):
    """Base: a fixed linear map θ^(d) -> δ = P θ^(d); state in buffers, no parameters."""

    def __init__(self, D: int, d: int, seed: int):
        super().__init__()
        self.D, self.d = _check_dims(D, d)
        self.seed = int(seed)

    @property
    def nbytes(self) -> int:
        """Bytes of state this projection stores (its buffers)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _check_input(self, theta_d: torch.Tensor, base: torch.Tensor | None) -> None:
        if theta_d.shape != (self.d,):
            raise ValueError(f"{type(self).__name__} maps vectors of shape ({self.d},), got {tuple(theta_d.shape)}: "
                             f"pass θ^(d) as a 1-D tensor of length d={self.d}")
        if base is not None and base.shape != (self.D,):
            raise ValueError(f"base must have shape ({self.D},) like P θ, got {tuple(base.shape)}: pass the flat θ0^(D)")

    def matrix(self) -> torch.Tensor:
        """P as a dense (D, d) tensor, built column by column (for tests and small pictures)."""
        with torch.no_grad():
            return torch.stack([self(e) for e in torch.eye(self.d)], 1)

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, seed={self.seed}, nbytes={self.nbytes:,}"


# ---------------------------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------------------------

class DenseProjection(_Projection):
    """P with i.i.d. Gaussian entries, every column scaled to unit norm; stores D·d float32.

    P is kept transposed, `PT` of shape (d, D), so both products stream contiguous rows:
    forward δ = PT.T θ, backward ∂θ = PT g (autograd); each reads all D·d floats once.
    """

    def __init__(self, D: int, d: int, seed: int = 0, max_bytes: int = DENSE_MAX_BYTES):
        super().__init__(D, d, seed)
        need = self.D * self.d * 4
        if need > max_bytes:
            raise ValueError(f"a dense P of {self.D:,} × {self.d:,} float32 needs {need:,} bytes "
                             f"({need / 2**30:.2f} GiB), over the budget max_bytes={max_bytes:,}: use "
                             f"projection='sparse' or 'fastfood' (a few MB), a smaller d, or raise max_bytes")
        gen = torch.Generator().manual_seed(self.seed)
        PT = torch.randn(self.d, self.D, generator=gen)
        PT /= PT.norm(dim=1, keepdim=True)
        self.register_buffer("PT", PT)

    def forward(self, theta_d: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """P θ^(d), or base + P θ^(d) in one fused pass when `base` (shape (D,)) is given."""
        self._check_input(theta_d, base)
        return self.PT.t() @ theta_d if base is None else torch.addmv(base, self.PT.t(), theta_d)


# ---------------------------------------------------------------------------------------------
# Sparse
# ---------------------------------------------------------------------------------------------

def _csr(crow, col, val, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # torch warns once that CSR support is "beta"
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


class _SparseMatvec(torch.autograd.Function):
    """δ = P θ from the stored transpose: forward scatters row j of P^T, scaled by θ_j, into δ;
    backward ∂θ = P^T g is one CSR matrix-vector product over the same arrays (nothing transposed per step)."""

    @staticmethod
    def forward(ctx, theta_d, proj, base):
        ctx.proj = proj
        out = theta_d.new_zeros(proj.D) if base is None else base.clone()
        return out.scatter_add_(0, proj.rows.flatten(), (proj.vals * theta_d[:, None]).flatten())

    @staticmethod
    def backward(ctx, grad):
        return torch.mv(ctx.proj.transpose_csr(), grad.contiguous()), None, None


class SparseProjection(_Projection):
    """Very sparse P: each column has k = round(√D) nonzeros ±1/√k at distinct random rows.

    Density k/D ≈ 1/√D (Li, Hastie & Church's "very sparse random projections"); every column has
    unit norm exactly. Stored as its transpose: `rows` (d, k), the row of P of each nonzero of
    column j, and `vals` (d, k), its value — P^T in CSR form (`crow`, `col`: the same indices as int32
    for the sparse kernel). Forward (scatter-add of the rows of P^T) and backward (CSR
    matrix-vector product with P^T) each touch the d·k ≈ d·√D nonzeros once.
    """

    def __init__(self, D: int, d: int, seed: int = 0):
        super().__init__(D, d, seed)
        D, d = self.D, self.d
        k = min(D, max(1, round(math.sqrt(D))))
        gen = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(D, (d, k), generator=gen)
        while True:  # redraw repeated rows within a column until all k are distinct
            rows = rows.sort(dim=1).values
            dup = torch.zeros_like(rows, dtype=torch.bool)
            dup[:, 1:] = rows[:, 1:] == rows[:, :-1]
            n_dup = int(dup.sum())
            if n_dup == 0:
                break
            rows[dup] = torch.randint(D, (n_dup,), generator=gen)
        signs = torch.randint(0, 2, (d, k), generator=gen).float() * 2 - 1
        self.k = k
        self.register_buffer("rows", rows)
        self.register_buffer("vals", signs / math.sqrt(k))
        # CSR form of P^T for the backward: MKL's kernel wants int32 indices (converting 446k int64
        # indices every step cost more than the product itself), scatter_add_ wants int64 `rows`
        idx32 = torch.iinfo(torch.int32).max >= d * k
        dtype = torch.int32 if idx32 else torch.int64
        self.register_buffer("crow", torch.arange(0, d * k + 1, k, dtype=dtype))
        self.register_buffer("col", rows.flatten().to(dtype) if idx32 else rows.flatten())

    def transpose_csr(self) -> torch.Tensor:
        """P^T (d×D) as a torch sparse CSR tensor sharing the buffers' memory (rows already sorted)."""
        return _csr(self.crow, self.col, self.vals.flatten(), (self.d, self.D))

    def forward(self, theta_d: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """P θ^(d), or base + P θ^(d) scattered straight into a copy of `base` (shape (D,))."""
        self._check_input(theta_d, base)
        return _SparseMatvec.apply(theta_d, self, base)


# ---------------------------------------------------------------------------------------------
# Fastfood
# ---------------------------------------------------------------------------------------------

class _FastfoodMatvec(torch.autograd.Function):
    """δ = V θ with V = stacked (H G Π H B) blocks; backward applies V^T = B H Π^T G H just as cheaply."""

    @staticmethod
    def forward(ctx, theta_d, proj):
        ctx.proj = proj
        return proj._apply_V(theta_d)

    @staticmethod
    def backward(ctx, grad):
        return ctx.proj._apply_VT(grad), None


class FastfoodProjection(_Projection):
    """Fastfood P (Le, Sarlós & Smola 2013), as in the paper's code: V = H G Π H B, blocks stacked.

    θ^(d) is zero-padded to L = 2^⌈log2 d⌉; each of n = ⌈D/L⌉ independent blocks applies
    B (random ±1 diagonal), H (Walsh–Hadamard), Π (random permutation), G (Gaussian diagonal) and
    H again; the n·L outputs are stacked and cut to D. Every block column has norm √L·‖g‖ exactly,
    which G's scaling divides out, and an overall √(L/D) makes the expected squared column norm 1
    (exactly 1 when L divides D; only the cut last block adds a small deviation).
    (The paper's code uses one block of size 2^⌈log2 D⌉; blocks of size ≈ d cost O(D log d).)
    Stores B, G and the permutation and its inverse: O(D) memory, independent of d.
    """

    def __init__(self, D: int, d: int, seed: int = 0):
        super().__init__(D, d, seed)
        D, d = self.D, self.d
        L = 1 << (d - 1).bit_length()
        n = -(-D // L)
        gen = torch.Generator().manual_seed(self.seed)
        B = torch.randint(0, 2, (n, L), generator=gen).float() * 2 - 1
        perm = torch.rand(n, L, generator=gen).argsort(dim=1) + torch.arange(n)[:, None] * L
        G = torch.randn(n, L, generator=gen)
        G *= math.sqrt(L / D) / (math.sqrt(L) * G.norm(dim=1, keepdim=True))
        self.L, self.n_blocks = L, n
        self.register_buffer("B", B)
        self.register_buffer("G", G)
        self.register_buffer("perm", perm.flatten())
        self.register_buffer("inv_perm", perm.flatten().argsort())

    def _apply_V(self, theta_d: torch.Tensor) -> torch.Tensor:
        """V θ for θ of shape (..., d) -> (..., D)."""
        x = nn.functional.pad(theta_d, (0, self.L - self.d))[..., None, :]
        x = fwht(self.B * x)  # H B θ, one row per block: (..., n, L)
        x = x.flatten(-2).index_select(-1, self.perm).view(x.shape)  # Π
        return fwht(self.G * x).flatten(-2)[..., :self.D]  # H G

    def _apply_VT(self, g: torch.Tensor) -> torch.Tensor:
        y = nn.functional.pad(g, (0, self.n_blocks * self.L - self.D)).view_as(self.G)
        y = self.G * fwht(y)  # G H g
        y = y.flatten().index_select(0, self.inv_perm).view_as(self.B)  # Π^T
        return (self.B * fwht(y)).sum(0)[:self.d]  # B H, summed over blocks

    def matrix(self) -> torch.Tensor:
        """P as a dense (D, d) tensor, all d columns in one batched transform."""
        with torch.no_grad():
            return self._apply_V(torch.eye(self.d)).t()

    def forward(self, theta_d: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """P θ^(d), or base + P θ^(d) when `base` (shape (D,)) is given."""
        self._check_input(theta_d, base)
        delta = _FastfoodMatvec.apply(theta_d, self)
        return delta if base is None else base + delta


PROJECTIONS = {"dense": DenseProjection, "sparse": SparseProjection, "fastfood": FastfoodProjection}


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------

class SubspaceModel(nn.Module):
    """`model` re-parameterised as θ^(D) = θ0^(D) + P θ^(d); θ^(d) is the only parameter.

    - `theta_d` (nn.Parameter, shape (d,), zeros): the one trainable vector.
    - `theta0` (buffer, shape (D,)): the wrapped model's initial parameters, flattened in
      `named_parameters()` order, biases included; the projection's state is in `projection`'s buffers.
    - forward: builds every parameter tensor as a view of θ0 + P θ^(d) and runs the wrapped model with
      them through `torch.func.functional_call`; the wrapped model's own parameters are never used
      or changed (it is kept outside the module tree, so `.parameters()` yields only θ^(d)).
    `projection` is "dense", "sparse" or "fastfood"; `projection_kwargs` go to its constructor
    (e.g. max_bytes for dense).
    """

    def __init__(self, model: nn.Module, d: int, projection: str = "fastfood", seed: int = 0,
                 **projection_kwargs):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: wrap your function in a Module")
        named = list(model.named_parameters())
        if not named:
            raise ValueError(f"{type(model).__name__} has no parameters, so there is nothing to project: "
                             f"wrap a model with at least one nn.Parameter")
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}: choose one of {sorted(PROJECTIONS)}")
        self._names = [n for n, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]
        D = sum(self._numels)
        self.projection = PROJECTIONS[projection](D, d, seed=seed, **projection_kwargs)
        self.D, self.d, self.projection_name = self.projection.D, self.projection.d, projection
        self.theta_d = nn.Parameter(torch.zeros(self.d))
        self.register_buffer("theta0", torch.cat([p.detach().flatten() for _, p in named]).clone())
        self.__dict__["model"] = model  # not a submodule: its parameters must not be trained or listed

    def flat_params(self) -> torch.Tensor:
        """θ^(D) = θ0 + P θ^(d), shape (D,)."""
        return self.projection(self.theta_d, base=self.theta0)

    def params_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's parameters at the current θ^(d): name -> tensor (views of θ^(D))."""
        flat = self.flat_params()
        return {n: t.view(s) for n, t, s in zip(self._names, flat.split(self._numels), self._shapes)}

    def forward(self, *args, **kwargs):
        return functional_call(self.model, self.params_dict(), args, kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode)  # dropout / batch-norm of the wrapped model follow the wrapper
        return self

    def extra_repr(self) -> str:
        return f"D={self.D:,}, d={self.d:,}, projection={self.projection_name!r}"
