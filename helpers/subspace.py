"""Random-subspace training (Li et al., ICLR 2018): θ^(D) = θ0^(D) + P θ^(d).

Only the d-vector θ^(d) is trained; a fixed random P ∈ R^{D×d} with unit-norm columns maps it into the
space of all D parameters of a model, biases included. Three ways to store and apply P:

- `DenseProjection`: Gaussian entries, D·d floats; simple, memory-bound (streams D·d floats twice a step).
- `SparseProjection`: k ≈ √D random ±1/√k entries per column (density ≈ 1/√D); stores P^T only.
- `FastfoodProjection`: P = stacked blocks H G Π H S (Hadamard, Gaussian, permutation, Hadamard, signs);
  O(D) memory and O(D log d) time per product. The sign diagonal S is stored in the buffer named `B` (the
  state_dict key; the series calls it S because B is LoRA's up-projection).

`SubspaceModel(model, d, projection)` wraps any `nn.Module`; its only parameter is θ^(d), so
`helpers.training.train` trains it like any model.
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings

import torch
from torch import nn
from torch.func import functional_call

from helpers.checks import check_choice, check_seed
from helpers.memory import tensor_bytes

DENSE_MAX_BYTES = 2**30  # 1 GiB: a dense (or sparse) P bigger than this raises unless max_bytes is raised
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
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"fwht needs a torch.Tensor, got {type(x).__name__}: convert with torch.as_tensor(x).float()")
    if not torch.is_floating_point(x):
        raise ValueError(f"fwht needs a floating-point tensor, got dtype {x.dtype}: pass x.float()")
    L = x.shape[-1] if x.dim() else 0
    if L < 1 or L & (L - 1):
        raise ValueError(f"fwht needs the last dimension to be a power of two, got {L}: "
                         f"zero-pad it to {1 << max(L - 1, 0).bit_length()}")
    k = L.bit_length() - 1
    if k == 0:
        return x.clone()
    y = x.reshape(-1, L)
    post = L
    for s in _factor_logs(k):
        a = 1 << s
        post //= a
        H = _hadamard(a, x.dtype, x.device)
        # the factor acts on the axis of size a in the (rows, ..., a, post) view
        y = y.reshape(-1, a) @ H if post == 1 else torch.matmul(H, y.reshape(-1, a, post))
    return y.reshape(x.shape)


def _factor_logs(k: int) -> list[int]:
    """log2 of the Hadamard factors of H_{2^k}: as few as possible, each <= 2**_FACTOR_LOG2, sizes balanced
    (k = 18 -> 5, 5, 4, 4)."""
    m = -(-k // _FACTOR_LOG2)
    return [k // m + (i < k % m) for i in range(m)]


def _fwht_pingpong(x: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
    """`fwht` of the contiguous 2-D tensor x (rows, L), each factor written with out= into the other of
    x / `spare` (same shape): no allocation. Returns whichever of the two holds the result; the other is
    clobbered. The same products in the same order as `fwht`, so the same values."""
    L = x.shape[-1]
    src, dst = x, spare
    post = L
    for s in _factor_logs(L.bit_length() - 1):
        a = 1 << s
        post //= a
        H = _hadamard(a, x.dtype, x.device)
        if post == 1:
            torch.mm(src.view(-1, a), H, out=dst.view(-1, a))
        else:
            torch.matmul(H, src.view(-1, a, post), out=dst.view(-1, a, post))
        src, dst = dst, src
    return src


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
        self.seed = check_seed(seed)

    @staticmethod
    def _check_budget(need: int, max_bytes: int, what: str, fix: str) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer number of bytes, got {max_bytes!r}; "
                             f"e.g. max_bytes={DENSE_MAX_BYTES}")
        if need > max_bytes:
            raise ValueError(f"{what} needs {need:,} bytes ({need / 2**30:.2f} GiB), over the budget "
                             f"max_bytes={max_bytes:,}: {fix}")

    @property
    def nbytes(self) -> int:
        """Bytes of state this projection stores (its buffers)."""
        return tensor_bytes(self.buffers())

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of P's values (float32 unless moved with .to() / .double())."""
        return next(b.dtype for b in self.buffers() if b.is_floating_point())

    def _check_input(self, theta_d: torch.Tensor, base: torch.Tensor | None) -> None:
        for name, t in (("theta_d", theta_d), ("base", base)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != self.dtype):
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a {self.dtype} tensor like P, got {got}: "
                                 f"pass {name}.to({self.dtype}) "
                                 f"or move the projection with .to({got})")
        if theta_d.shape != (self.d,):
            raise ValueError(f"{type(self).__name__} maps vectors of shape ({self.d},), got {tuple(theta_d.shape)}: "
                             f"pass θ^(d) as a 1-D tensor of length d={self.d}")
        if base is not None and base.shape != (self.D,):
            raise ValueError(f"base must have shape ({self.D},) like P θ, got {tuple(base.shape)}: "
                             "pass the flat θ0^(D)")

    def matrix(self) -> torch.Tensor:
        """P as a dense (D, d) tensor, built column by column (for tests and small pictures)."""
        with torch.no_grad():
            return torch.stack([self(e) for e in torch.eye(self.d, dtype=self.dtype, device=self.device)], 1)

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    # -- the lean path SubspaceModel trains through: products into reused scratch tensors ----------------
    # _V_lean(θ) -> P θ (D,), possibly a view of a workspace, valid until the next _V_lean call;
    # _gbuf() -> a (D,) workspace view the caller fills with ∂L/∂(P θ); _VT_lean() -> P^T of it, (d,).
    # Large temporaries are the cost at transformer scale: a fresh 43 MB tensor is mapped page by page by
    # the OS on first touch (~4x the time of writing into a tensor that already exists).

    def _workspace(self, i: int, shape: tuple) -> torch.Tensor:
        """Scratch tensor number i of `shape` in P's dtype and device, kept between calls. Not state: not a
        buffer, not in state_dict or `nbytes`; dropped when the projection moves or changes dtype."""
        ws = self.__dict__.setdefault("_ws", {})
        t = ws.get(i)
        if t is None or t.shape != shape:
            t = ws[i] = torch.empty(shape, dtype=self.dtype, device=self.device)
        return t

    def _apply(self, fn, *args, **kwargs):
        """.to() / .double() / .cpu() also drop the workspaces (the next step allocates them anew)."""
        self.__dict__.pop("_ws", None)
        return super()._apply(fn, *args, **kwargs)

    @property
    def workspace_bytes(self) -> int:
        """Bytes of the scratch tensors the lean path keeps between steps (0 before the first step)."""
        return tensor_bytes(self.__dict__.get("_ws", {}).values())

    def _V_lean(self, theta_d: torch.Tensor) -> torch.Tensor:
        out = self._workspace(0, (self.D,))
        self._gen = getattr(self, "_gen", 0) + 1
        return out.copy_(self(theta_d.detach()))

    def _V_last(self) -> torch.Tensor:
        return self._workspace(0, (self.D,))

    def _gbuf(self) -> torch.Tensor:
        return self._workspace(1, (self.D,))

    def _VT_lean(self) -> torch.Tensor:
        theta = torch.zeros(self.d, dtype=self.dtype, device=self.device, requires_grad=True)
        with torch.enable_grad():
            self(theta).backward(self._gbuf())
        return theta.grad

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
        self._check_budget(self.D * self.d * 4, max_bytes, f"a dense P of {self.D:,} × {self.d:,} float32",
                           "use projection='sparse' or 'fastfood' (a few MB), a smaller d, or raise max_bytes")
        gen = torch.Generator().manual_seed(self.seed)
        PT = torch.randn(self.d, self.D, generator=gen)
        PT /= PT.norm(dim=1, keepdim=True)
        self.register_buffer("PT", PT)

    def forward(self, theta_d: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """P θ^(d), or base + P θ^(d) in one fused pass when `base` (shape (D,)) is given."""
        self._check_input(theta_d, base)
        return self.PT.t() @ theta_d if base is None else torch.addmv(base, self.PT.t(), theta_d)

    def _V_lean(self, theta_d: torch.Tensor) -> torch.Tensor:
        self._gen = getattr(self, "_gen", 0) + 1
        return torch.mv(self.PT.t(), theta_d.detach(), out=self._workspace(0, (self.D,)))

    def _VT_lean(self) -> torch.Tensor:
        return self.PT @ self._gbuf()


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
    column j, and `vals` (d, k), its value (d·k·(8 + 4 + 4) bytes, checked against `max_bytes` before any
    allocation, as for the dense P) — P^T in CSR form (`crow`, `col`: the same indices as int32
    for the sparse kernel). Forward (scatter-add of the rows of P^T) and backward (CSR
    matrix-vector product with P^T) each touch the d·k ≈ d·√D nonzeros once.
    """

    def __init__(self, D: int, d: int, seed: int = 0, max_bytes: int = DENSE_MAX_BYTES):
        super().__init__(D, d, seed)
        D, d = self.D, self.d
        k = min(D, max(1, round(math.sqrt(D))))
        idx_bytes = 4 if torch.iinfo(torch.int32).max >= d * k else 8
        self._check_budget(d * k * (8 + 4 + idx_bytes) + (d + 1) * idx_bytes, max_bytes,
                           f"a sparse P of {D:,} × {d:,} with {k} nonzeros per column",
                           "use projection='fastfood' (O(D) memory), a smaller d, or raise max_bytes")
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

    def _V_lean(self, theta_d: torch.Tensor) -> torch.Tensor:
        self._gen = getattr(self, "_gen", 0) + 1
        out = self._workspace(0, (self.D,)).zero_()
        return out.scatter_add_(0, self.rows.flatten(), (self.vals * theta_d.detach()[:, None]).flatten())

    def _VT_lean(self) -> torch.Tensor:
        return torch.mv(self.transpose_csr(), self._gbuf())


# ---------------------------------------------------------------------------------------------
# Fastfood
# ---------------------------------------------------------------------------------------------

class _FastfoodMatvec(torch.autograd.Function):
    """δ = V θ with V = stacked (H G Π H S) blocks; backward applies V^T = S H Π^T G H just as cheaply
    (S, the sign diagonal, is the buffer `B`)."""

    @staticmethod
    def forward(ctx, theta_d, proj):
        ctx.proj = proj
        return proj._apply_V(theta_d)

    @staticmethod
    def backward(ctx, grad):
        return ctx.proj._apply_VT(grad), None


class FastfoodProjection(_Projection):
    """Fastfood P (Le, Sarlós & Smola 2013), as in the paper's code: V = H G Π H S, blocks stacked.

    θ^(d) is zero-padded to L = 2^⌈log2 d⌉; each of n = ⌈D/L⌉ independent blocks applies
    S (random ±1 diagonal, stored in the buffer `B`: the state_dict keeps that name, the series writes S
    because B is LoRA's up-projection), H (Walsh–Hadamard), Π (random permutation), G (Gaussian diagonal) and
    H again; the n·L outputs are stacked and cut to D. Every block column has norm √L·‖g‖ exactly,
    which G's scaling divides out, and an overall √(L/D) makes the expected squared column norm 1
    (exactly 1 when L divides D; only the cut last block adds a small deviation).
    (The paper's code uses one block of size 2^⌈log2 D⌉; blocks of size ≈ d cost O(D log d).)
    Stores S (as `B`), G and the permutation and its inverse: O(D) memory, independent of d — 24 bytes per
    parameter (S and G float32, the permutations int64), or 13 with `compact=True` (S as int8 signs, the
    permutations as int32): the same P from the same seed, bit for bit, for models with millions of parameters.
    """

    def __init__(self, D: int, d: int, seed: int = 0, compact: bool = False):
        super().__init__(D, d, seed)
        if not isinstance(compact, bool):
            raise ValueError(f"compact must be True or False, got {compact!r}")
        D, d = self.D, self.d
        L = 1 << (d - 1).bit_length()
        n = -(-D // L)
        gen = torch.Generator().manual_seed(self.seed)
        # compact: ±1 is exact in int8, and n·L < 2^31 indices fit int32; B * x then promotes to x's dtype
        # and index_select takes int32 indices, so every product is bit-identical to the default storage
        compact = compact and n * L <= torch.iinfo(torch.int32).max
        self.L, self.n_blocks, self.compact = L, n, compact
        if compact:
            self._init_compact(D, L, n, gen)
            return
        B = torch.randint(0, 2, (n, L), generator=gen).float() * 2 - 1
        perm = torch.rand(n, L, generator=gen).argsort(dim=1) + torch.arange(n)[:, None] * L
        G = torch.randn(n, L, generator=gen)
        G *= math.sqrt(L / D) / (math.sqrt(L) * G.norm(dim=1, keepdim=True))
        self.register_buffer("B", B)
        self.register_buffer("G", G)
        self.register_buffer("perm", perm.flatten())
        self.register_buffer("inv_perm", perm.flatten().argsort())

    def _init_compact(self, D: int, L: int, n: int, gen: torch.Generator, rows: int = 1024) -> None:
        """The same draws as the default storage, in the same order, narrowed as they come and sorted a
        chunk of blocks at a time: no full-size int64 permutation and no global argsort is ever built (at
        D = 10.8M the default path's transient copies peak ~0.26 GB higher; measured 0.94 vs 0.68 GB RSS).
        Each block permutes only its own L positions, so the inverse is blockwise too: the same values as
        the default's global argsort."""
        B = torch.randint(0, 2, (n, L), generator=gen).to(torch.int8) * 2 - 1
        keys = torch.rand(n, L, generator=gen)
        perm = torch.empty(n, L, dtype=torch.int32)
        inv_perm = torch.empty(n, L, dtype=torch.int32)
        for i in range(0, n, rows):
            local = keys[i:i + rows].argsort(dim=1)
            offset = torch.arange(i, min(i + rows, n))[:, None] * L
            perm[i:i + rows] = local + offset
            inv_perm[i:i + rows] = local.argsort(dim=1) + offset
        del keys
        G = torch.randn(n, L, generator=gen)
        G *= math.sqrt(L / D) / (math.sqrt(L) * G.norm(dim=1, keepdim=True))
        self.register_buffer("B", B)
        self.register_buffer("G", G)
        self.register_buffer("perm", perm.flatten())
        self.register_buffer("inv_perm", inv_perm.flatten())

    def _apply_V(self, theta_d: torch.Tensor) -> torch.Tensor:
        """V θ for θ of shape (..., d) -> (..., D)."""
        x = nn.functional.pad(theta_d, (0, self.L - self.d))[..., None, :]
        x = fwht(self.B * x)  # H S θ (S = the signs in B), one row per block: (..., n, L)
        x = x.flatten(-2).index_select(-1, self.perm).view(x.shape)  # Π
        return fwht(self.G * x).flatten(-2)[..., :self.D]  # H G

    def _apply_VT(self, g: torch.Tensor) -> torch.Tensor:
        y = nn.functional.pad(g, (0, self.n_blocks * self.L - self.D)).view_as(self.G)
        y = self.G * fwht(y)  # G H g
        y = y.flatten().index_select(0, self.inv_perm).view_as(self.B)  # Π^T
        return (self.B * fwht(y)).sum(0)[:self.d]  # S H, summed over blocks

    # The lean path: the same products as _apply_V / _apply_VT, in the same order (so the same values), each
    # written with out= into three (n, L) workspaces: 0 and 1 for V θ, 2 for the gradient; the backward
    # uses whichever of 0/1 does not hold V θ, so V θ survives until the backward (SAID's λ need it).
    _SIGN_ROWS = 256  # int8 signs are widened to floats this many blocks at a time (a small reused tensor)

    def _V_lean(self, theta_d: torch.Tensor) -> torch.Tensor:
        shape = (self.n_blocks, self.L)
        a, b = self._workspace(0, shape), self._workspace(1, shape)
        theta = theta_d.detach()
        if self.B.dtype == a.dtype:
            torch.mul(self.B[:, :self.d], theta, out=a[:, :self.d])
        else:  # int8 signs: widening them first, then multiplying in place, is ~5x faster than a mixed-dtype mul
            a[:, :self.d].copy_(self.B[:, :self.d])
            a[:, :self.d].mul_(theta)
        a[:, self.d:].zero_()  # θ zero-padded to L
        r = _fwht_pingpong(a, b)  # H S θ
        o = b if r is a else a
        torch.index_select(r.view(-1), 0, self.perm, out=o.view(-1))  # Π
        o.mul_(self.G)
        r = _fwht_pingpong(o, r)  # H G
        self._vres, self._gen = r, getattr(self, "_gen", 0) + 1
        return r.view(-1)[:self.D]

    def _V_last(self) -> torch.Tensor:
        return self._vres.view(-1)[:self.D]

    def _gbuf(self) -> torch.Tensor:
        g = self._workspace(2, (self.n_blocks, self.L)).view(-1)
        g[self.D:].zero_()
        return g[:self.D]

    def _VT_lean(self) -> torch.Tensor:
        shape = (self.n_blocks, self.L)
        g = self._workspace(2, shape)
        vres = getattr(self, "_vres", None)
        spare = self._workspace(1, shape) if vres is self._workspace(0, shape) else self._workspace(0, shape)
        r = _fwht_pingpong(g, spare)  # H g
        r.mul_(self.G)
        o = spare if r is g else g
        torch.index_select(r.view(-1), 0, self.inv_perm, out=o.view(-1))  # Π^T
        r = _fwht_pingpong(o, r)  # H
        if self.B.is_floating_point():
            r.mul_(self.B)
        else:
            k = min(self._SIGN_ROWS, self.n_blocks)
            signs = self._workspace(3, (k, self.L))
            for i in range(0, self.n_blocks, k):
                rows = min(k, self.n_blocks - i)
                r[i:i + rows].mul_(signs[:rows].copy_(self.B[i:i + rows]))
        return r.sum(0)[:self.d]  # S, summed over blocks

    def matrix(self) -> torch.Tensor:
        """P as a dense (D, d) tensor, all d columns in one batched transform."""
        with torch.no_grad():
            return self._apply_V(torch.eye(self.d, dtype=self.dtype, device=self.device)).t()

    def forward(self, theta_d: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """P θ^(d), or base + P θ^(d) when `base` (shape (D,)) is given."""
        self._check_input(theta_d, base)
        delta = _FastfoodMatvec.apply(theta_d, self)
        return delta if base is None else base + delta


class _FastfoodPart(FastfoodProjection):
    """A Fastfood block for one tensor of D rows; unlike FastfoodProjection it allows d > D (a 384-element bias in a
    1,000-dimensional subspace): it draws one block of L >= d rows, keeps the first D and rescales G so the expected
    squared column norm is still 1."""

    def __init__(self, D: int, d: int, seed: int, compact: bool):
        super().__init__(max(D, d), d, seed, compact)
        if d > D:
            self.G.mul_(math.sqrt(d / D))
            self.D = D


class TensorwiseFastfoodProjection(_Projection):
    """An independent Fastfood P_t for every parameter tensor t, stacked: P = [P_1; P_2; ...], the layout of
    Aghajanyan et al.'s SAID code and its PyTorch re-implementations (one transform per tensor, normalised to that
    tensor's size). Each tensor's share of every column has expected squared norm 1, so a whole column has norm
    about √(number of tensors), and a 6-weight bias moves as much per unit of θ^(d) as a 147k-weight matrix.
    (`FastfoodProjection` is one transform over all D: a tensor's share of a column has norm ≈ √(D_t / D).)

    `sizes`: the tensors' element counts, in order, summing to D (`SubspaceModel(..., "fastfood", per_tensor=True)`
    passes them). Tensor t's transform is drawn from its own seed (taken from a generator seeded with `seed`);
    `compact` as in FastfoodProjection. Cost: about one Fastfood over D, plus a block of L >= d rows for each
    tensor smaller than d.
    """

    def __init__(self, D: int, d: int, seed: int = 0, sizes=None, compact: bool = False):
        super().__init__(D, d, seed)
        if sizes is None or isinstance(sizes, (str, bytes)):
            raise ValueError(f"sizes must list the parameter tensors' element counts (summing to D={self.D}), got "
                             f"{sizes!r}: e.g. sizes=[p.numel() for p in model.parameters()]")
        sizes = list(sizes)
        if not sizes or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in sizes):
            raise ValueError(f"sizes must be positive integers, got {sizes[:5]}{'...' if len(sizes) > 5 else ''}")
        if sum(sizes) != self.D:
            raise ValueError(f"sizes sum to {sum(sizes):,} but D={self.D:,}: pass one count per projected tensor")
        gen = torch.Generator().manual_seed(self.seed)
        seeds = torch.randint(0, 2**62, (len(sizes),), generator=gen).tolist()
        self.parts = nn.ModuleList(_FastfoodPart(int(n), self.d, s, compact) for n, s in zip(sizes, seeds))
        self.sizes = [int(n) for n in sizes]

    def _bounds(self):
        lo = 0
        for n, part in zip(self.sizes, self.parts):
            yield lo, lo + n, part
            lo += n

    def forward(self, theta_d: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """P θ^(d), or base + P θ^(d) when `base` (shape (D,)) is given."""
        self._check_input(theta_d, base)
        delta = torch.cat([_FastfoodMatvec.apply(theta_d, part) for part in self.parts])
        return delta if base is None else base + delta

    def matrix(self) -> torch.Tensor:
        """P as a dense (D, d) tensor, the tensors' blocks stacked."""
        return torch.cat([part.matrix() for part in self.parts])

    def _V_lean(self, theta_d: torch.Tensor) -> torch.Tensor:
        out, theta = self._workspace(0, (self.D,)), theta_d.detach()
        for lo, hi, part in self._bounds():
            out[lo:hi] = part._apply_V(theta)
        self._gen = getattr(self, "_gen", 0) + 1
        return out

    def _VT_lean(self) -> torch.Tensor:
        g = self._gbuf()
        return sum(part._apply_VT(g[lo:hi]) for lo, hi, part in self._bounds())


PROJECTIONS = {"dense": DenseProjection, "sparse": SparseProjection, "fastfood": FastfoodProjection}


def _runs(numels: list[int], factors: list[float]) -> list[tuple[int, int, float]]:
    """(start, stop, factor) of the maximal runs of consecutive parameters sharing one factor."""
    runs, lo = [], 0
    for n, f in zip(numels, factors):
        if runs and runs[-1][2] == f:
            runs[-1] = (runs[-1][0], lo + n, f)
        else:
            runs.append((lo, lo + n, f))
        lo += n
    return runs


class _Reparameterise(torch.autograd.Function):
    """θ^(D) = θ0 + f ⊙ P θ^(d), returned as one flat tensor per projected parameter (views of one fresh
    vector), f_i = c_i · λ_b(i) (rescale, SAID; 1 otherwise). Backward, with an explicit transpose:
    ∂θ^(d) = P^T (f ⊙ g), f ⊙ g written straight into the projection's workspace, and
    ∂λ_b = Σ_{i in block b} c_i ⟨g_i, (P θ^(d))_i⟩. No D-sized temporary is allocated except θ^(D) itself
    (autograd's path allocated ~6: padding, products, the per-parameter scaled copies, the cat of the
    gradients)."""

    @staticmethod
    def forward(ctx, theta_d, lambdas, sub):
        proj = sub.projection
        v = proj._V_lean(theta_d)
        factors = sub._factors(lambdas if sub.said else None)
        out = torch.empty_like(sub.theta0)
        for lo, hi, f in _runs(sub._numels, factors):  # one fused add per run of equal factors
            torch.add(sub.theta0[lo:hi], v[lo:hi], alpha=f, out=out[lo:hi])
        ctx.sub, ctx.gen, ctx.factors = sub, proj._gen, factors
        ctx.save_for_backward(theta_d, lambdas)
        return tuple(out.split(sub._numels))

    @staticmethod
    def backward(ctx, *grads):
        sub, proj = ctx.sub, ctx.sub.projection
        theta_d, lambdas = ctx.saved_tensors
        grad_lambdas = None
        if ctx.needs_input_grad[1]:
            # P θ from the forward, still in the workspace unless another forward ran since (then recomputed)
            v = proj._V_lean(theta_d) if proj._gen != ctx.gen else proj._V_last()
            dots = [0.0] * len(sub._numels)
            lo = 0
            for i, (n, grad) in enumerate(zip(sub._numels, grads)):
                if grad is not None:
                    dots[i] = sub._scales[i] * torch.dot(grad.reshape(-1), v[lo:lo + n]).item()
                lo += n
            grad_lambdas = torch.zeros_like(lambdas)
            for i, b in enumerate(sub._block_of):
                grad_lambdas[b] += dots[i]
        grad_theta = None
        if ctx.needs_input_grad[0]:
            g = proj._gbuf()
            lo = 0
            for n, grad, f in zip(sub._numels, grads, ctx.factors):
                if grad is None:
                    g[lo:lo + n].zero_()
                elif f == 1.0:
                    g[lo:lo + n].copy_(grad.reshape(-1))
                else:
                    torch.mul(grad.reshape(-1), f, out=g[lo:lo + n])
                lo += n
            grad_theta = proj._VT_lean()
        return grad_theta, grad_lambdas, None


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------

def _match(entries, names: list[str], what: str) -> list[list[str]]:
    """For each entry: the parameter names it selects (the name itself, or every name under it as a prefix
    ending at a dot: "encoder.pooler" selects "encoder.pooler.dense.weight"); each must select one or more."""
    if isinstance(entries, str):
        entries = (entries,)
    try:
        entries = list(entries)
    except TypeError:
        entries = [entries]
    out = []
    for e in entries:
        if not isinstance(e, str) or not e:
            raise ValueError(f"{what} must name parameters (or modules) as strings, got {e!r}: e.g. "
                             f"{what}=('embeddings.word_embeddings',)")
        hits = [n for n in names if n == e or n.startswith(e + ".")]
        if not hits:
            tops = sorted({n.rsplit(".", 1)[0] for n in names})
            raise ValueError(f"{what} entry {e!r} matches no parameter of the model; module names with parameters "
                             f"include {', '.join(tops[:12])}{', ...' if len(tops) > 12 else ''}")
        out.append(hits)
    return out


class SubspaceModel(nn.Module):
    """`model` re-parameterised as θ^(D) = θ0^(D) + P θ^(d); θ^(d) is the only parameter.

    - `theta_d` (nn.Parameter, shape (d,), zeros): the one trainable vector — `parameters()` and
      `named_parameters()` yield it alone.
    - `theta0` (buffer, shape (D,)): the wrapped model's initial parameters, flattened in
      `named_parameters()` order, biases included; the projection's state is in `projection`'s buffers.
    - `model`: the wrapped model, a submodule, so `.to()`, `.double()`, `train()` / `eval()` and
      `state_dict()` reach it (a BatchNorm's running statistics survive a state_dict round trip). Its own
      parameters are never used or changed by forward, and are kept out of `parameters()`.
    - forward: builds every parameter tensor as a view of θ0 + P θ^(d) and runs the wrapped model with
      them through `torch.func.functional_call`.
    `projection` is "dense", "sparse" or "fastfood" (with `per_tensor=True`: an independent Fastfood per projected
    tensor, `TensorwiseFastfoodProjection`, as Aghajanyan et al.'s code); `projection_kwargs` go to its constructor
    (e.g. max_bytes for dense and sparse, compact for fastfood). P is drawn in float32 from `seed` and stored in
    the model's dtype (float32 or float64; all parameters must share one floating dtype).

    Three options for large pre-trained models (none used: the behaviour above, bit for bit):

    - `exclude`: parameters kept frozen at their value and outside the subspace (entries name a parameter or a
      module: "embeddings.word_embeddings" selects its weight). D counts only the others. They enter the
      forward detached, so they never receive a gradient.
    - `rescale`: blocks whose rows of P are multiplied by √(D / D_block) (D_block: that entry's parameter
      count), so the block's share of every column has expected norm 1 instead of √(D_block / D). A small
      block inside a big subspace (a 2k-weight classifier head among 11M) otherwise moves ~√(D_block/D) per
      unit of θ^(d) and barely learns.
    - `said=True`: SAID (Aghajanyan et al. 2020), θ_i^(D) = θ0_i^(D) + λ_b(i) · (P θ^(d))_i with one learned
      scale λ_b per block b (parameter `lambdas`, starting at 1), counted inside the budget: θ^(d) has
      d − m coordinates for m blocks, so exactly d numbers are trained. `groups` maps a parameter name to
      its block's name; default: one block per parameter tensor (as the paper's code). `blocks` lists them.
    """

    def __init__(self, model: nn.Module, d: int, projection: str = "fastfood", seed: int = 0, *,
                 exclude=(), rescale=(), said: bool = False, groups=None, **projection_kwargs):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: "
                             "wrap your function in a Module")
        named = list(model.named_parameters())
        if not named:
            raise ValueError(f"{type(model).__name__} has no parameters, so there is nothing to project: "
                             f"wrap a model with at least one nn.Parameter")
        check_choice("projection", projection, PROJECTIONS)
        takes = {name: set(inspect.signature(cls).parameters) - {"D", "d", "seed"} for name, cls in PROJECTIONS.items()}
        for key in projection_kwargs:
            if key != "per_tensor" and key not in takes[projection]:  # per_tensor: checked with its sizes below
                where = [name for name, keys in takes.items() if key in keys]
                belongs = f" ({key} belongs to projection=" + " or ".join(map(repr, where)) + ")" if where else ""
                raise ValueError(f"{key}= does not apply to projection={projection!r}, which takes "
                                 f"{', '.join(sorted(takes[projection])) or 'no options'}"
                                 f"{belongs}: drop {key}= "
                                 "or choose the projection it belongs to")
        dtypes = sorted({str(p.dtype) for _, p in named})
        if len(dtypes) > 1 or not named[0][1].is_floating_point():
            raise ValueError(f"the model's parameters have dtype(s) {', '.join(dtypes)}; θ0 + Pθ needs one floating "
                             "dtype: convert the model first, e.g. model.float() or model.double()")
        if not isinstance(said, bool):
            raise ValueError(f"said must be True or False, got {said!r}")
        if groups is not None and not callable(groups):
            raise ValueError(f"groups must be a function from a parameter name to its block's name, got "
                             f"{type(groups).__name__}: e.g. groups=lambda name: name.rsplit('.', 1)[0]")
        if groups is not None and not said:
            raise ValueError("groups only matters with said=True (one λ per block): pass said=True or drop groups")
        all_names = [n for n, _ in named]
        frozen = {n for hits in _match(exclude, all_names, "exclude") for n in hits}
        kept = [(n, p) for n, p in named if n not in frozen]
        if not kept:
            raise ValueError("exclude leaves no parameter to project: keep at least one outside exclude")
        self._names = [n for n, _ in kept]
        self._shapes = [p.shape for _, p in kept]
        self._numels = [p.numel() for _, p in kept]
        self._frozen = [n for n in all_names if n in frozen]
        D = sum(self._numels)
        scales = [1.0] * len(self._names)
        rescaled: set[str] = set()
        for hits in _match(rescale, all_names, "rescale"):
            if any(n in frozen for n in hits):
                raise ValueError(f"rescale entry selecting {hits[0]!r} is in exclude: an excluded block is not in "
                                 "the subspace, so it cannot be rescaled; drop it from one of the two")
            factor = math.sqrt(D / sum(self._numels[self._names.index(n)] for n in hits))
            for n in hits:
                i = self._names.index(n)
                if n in rescaled:
                    raise ValueError(f"{n!r} is selected by two rescale entries: name each block once")
                rescaled.add(n)
                scales[i] = factor
        self._scales = scales
        self.said = said
        self.blocks: list[str] = []
        self._block_of: list[int] = []
        if said:
            for n in self._names:
                key = n if groups is None else groups(n)
                if not isinstance(key, str):
                    raise ValueError(f"groups({n!r}) returned {key!r}: it must return a block name (str)")
                if key not in self.blocks:
                    self.blocks.append(key)
                self._block_of.append(self.blocks.index(key))
        m = len(self.blocks)
        if said:
            _check_dims(D, d)
        if said and d <= m:
            raise ValueError(f"d={d} leaves no room for θ^(d): SAID spends {m} of the d trained numbers on one λ "
                             f"per block; use d > {m} (or fewer blocks via groups=)")
        dtype = named[0][1].dtype
        d_proj = d - m if said else d
        cls, per_tensor = PROJECTIONS[projection], projection_kwargs.pop("per_tensor", False)
        # one Fastfood per projected tensor (TensorwiseFastfoodProjection): it needs their sizes
        if per_tensor is not False:
            if per_tensor is not True or projection != "fastfood":
                raise ValueError(f"per_tensor={per_tensor!r} with projection={projection!r}: "
                                 "per_tensor=True is a Fastfood "
                                 "option; pass projection='fastfood', per_tensor=True (or drop per_tensor)")
            cls, projection_kwargs = TensorwiseFastfoodProjection, {"sizes": self._numels, **projection_kwargs}
        self.projection = cls(D, d_proj, seed=seed, **projection_kwargs).to(dtype)
        self.D, self.projection_name = self.projection.D, projection
        self.d = self.projection.d + m
        self.theta_d = nn.Parameter(torch.zeros(self.projection.d, dtype=dtype))
        if said:
            self.lambdas = nn.Parameter(torch.ones(m, dtype=dtype))
        self.register_buffer("theta0", torch.cat([p.detach().flatten() for _, p in kept]).clone())
        self.model = model

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Only θ^(d) (and parameters added beside it): the wrapped model's own parameters are not trained."""
        wrapped = {id(p) for p in self.model.parameters()}
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if id(p) not in wrapped:
                yield name, p

    def _factors(self, lambdas: torch.Tensor | None = None) -> list[float]:
        """f_i = c_i · λ_b(i) per projected parameter (1.0 for plain subspace training)."""
        if not self.said:
            return list(self._scales)
        lam = (self.lambdas if lambdas is None else lambdas).tolist()
        return [c * lam[b] for c, b in zip(self._scales, self._block_of)]

    def _parts(self) -> tuple[torch.Tensor, ...]:
        """Each projected parameter at the current θ^(d), flat: θ0_i + f_i · (P θ^(d))_i (views of one vector)."""
        lambdas = self.lambdas if self.said else self.theta_d.new_empty(0)
        return _Reparameterise.apply(self.theta_d, lambdas, self)

    def flat_params(self) -> torch.Tensor:
        """θ^(D) = θ0 + P θ^(d), shape (D,) (with SAID and rescaling: θ0 + λ · c · P θ^(d) per block)."""
        return torch.cat(self._parts())

    def params_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's parameters at the current θ^(d): name -> tensor (views of θ^(D)); excluded
        parameters as the wrapped model's own tensors, detached."""
        out = {n: t.view(s) for n, t, s in zip(self._names, self._parts(), self._shapes)}
        if self._frozen:
            own = dict(self.model.named_parameters())
            out.update({n: own[n].detach() for n in self._frozen})
        return out

    def forward(self, *args, **kwargs):
        return functional_call(self.model, self.params_dict(), args, kwargs)

    def extra_repr(self) -> str:
        extra = ""
        if self._frozen:
            extra += f", excluded={sum(dict(self.model.named_parameters())[n].numel() for n in self._frozen):,}"
        if self.said:
            extra += f", said=True ({len(self.blocks)} λ + {self.projection.d:,} θ)"
        if not all(c == 1.0 for c in self._scales):
            extra += ", rescaled blocks"
        return f"D={self.D:,}, d={self.d:,}, projection={self.projection_name!r}{extra}"
