"""QLoRA's storage format from scratch: NF4 codes, blockwise absmax, double quantisation, and the layers.

A frozen weight W₀ ∈ R^{d_out×d_in} is flattened and cut into blocks of `block_size` (64) values. Each block
is divided by its absolute maximum, so it lies in [-1, 1], and every value is replaced by the index of the
nearest of 16 NormalFloat levels (`NF4_CODES`): a 4-bit code, two codes packed per byte (the first value in
the high nibble). Storage per parameter: 4 bits + one fp32 absmax per block = 4 + 32/64 = 4.5 bits.

Double quantisation (QLoRA §3) stores the absmax constants themselves in 8 bits: subtract their mean, cut
them into blocks of 256, scale each block by its absmax and round to the nearest level of bitsandbytes'
signed 8-bit dynamic map (`DYNAMIC_CODES`). Then a parameter costs 4 + 8/64 + 32/(64·256) ≈ 4.127 bits.

The format is bitsandbytes' (`quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=...)`):
the same levels, nibble order, tie rule (a value exactly on a midpoint takes the lower level) and
arithmetic, so the packed codes agree byte for byte; tests/test_quant.py measures the agreement. The 8-bit
constants are rounded to the exact nearest level, as bitsandbytes' CUDA and pure-PyTorch kernels do; its CPU C
kernel (0.50) rounds through a 65,536-entry lookup table instead and lands one level off for ~0.2 % of them.

Layers: `LinearNF4` is a frozen linear layer whose weight lives as an `NF4Tensor` and is dequantised on
every forward; `QLoRALinear` is `helpers.lora.LoRALinear` over a `LinearNF4` base (the LoRA branch is
lora.py's, not a second implementation); `add_qlora` does lora's model surgery with that layer.
"""
from __future__ import annotations

import logging
import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from helpers import lora
from helpers.checks import as_int, check_int
from helpers.memory import tensor_bytes

# QLoRA's offset: the outermost quantile probed is 1 - ½(1/30 + 1/32) = 0.96770833..., which the paper's
# code and bitsandbytes write as 0.9677083; that literal, in float32 as they use it, reproduces the
# published table bit for bit.
NF4_OFFSET = 0.9677083


def _nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels: normal quantiles at evenly spaced probabilities, scaled to [-1, 1].

    Positive side: quantiles at 8 probabilities from `offset` down towards ½ (exclusive); negative side:
    7 of them; plus an exact zero. Asymmetric on purpose: 8 positive, 7 negative and a true 0 use all 16
    codes while zero (padding, ReLU outputs, pruned weights) stays exactly representable.
    """
    probs_pos = torch.linspace(offset, 0.5, 9)[:-1]          # float32, as the reference implementation
    probs_neg = torch.linspace(offset, 0.5, 8)[:-1]
    pos = torch.special.ndtri(probs_pos.double())             # Φ⁻¹, in float64
    neg = -torch.special.ndtri(probs_neg.double())
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).float().sort().values
    return levels / levels.max()


def _dynamic_levels() -> torch.Tensor:
    """The signed 8-bit "dynamic tree" map (Dettmers 2016) that bitsandbytes uses for the absmax constants.

    For decimal exponents 10⁻⁶ … 10⁰, 2^e linearly spaced fractions in [0.1, 1] (the midpoints of
    2^e + 1 edges) times 10^(e-6), with both signs, plus 0 and 1: 127 + 127 + 2 = 256 sorted levels,
    dense near zero and coarse near ±1.
    """
    levels = [torch.zeros(1), torch.ones(1)]
    for e in range(7):
        edges = torch.linspace(0.1, 1.0, 2 ** e + 1)
        fractions = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (e - 6)
        levels += [fractions, -fractions]
    return torch.cat(levels).sort().values


NF4_CODES = _nf4_levels()
DYNAMIC_CODES = _dynamic_levels()
_NF4_MIDPOINTS = (NF4_CODES[:-1] + NF4_CODES[1:]) / 2
_DYNAMIC_MIDPOINTS = (DYNAMIC_CODES[:-1] + DYNAMIC_CODES[1:]) / 2
_FLOAT32_MAX = torch.finfo(torch.float32).max
_TINY = 1e-38  # a block of zeros keeps absmax 0 but is scaled by 1/1e-38 (its codes are all "0.0")


# ---------------------------------------------------------------------------------------------- packing

def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (any shape, values 0..15) -> uint8 of length ceil(n/2); codes[2i] in the high nibble.

    An odd count is padded with code 7 (NF4's exact zero), as bitsandbytes does.
    """
    if (not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex()
            or codes.dtype == torch.bool):
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"4-bit codes must be an integer tensor, got {got}: pass level indices (e.g. torch.bucketize "
                         "output), not values")
    if codes.numel() and int(codes.min()) < 0:
        raise ValueError(f"4-bit codes must lie in 0..15, got a minimum of {int(codes.min())}; pass level indices")
    flat = codes.reshape(-1)
    if flat.numel() and int(flat.max()) > 15:
        raise ValueError(f"4-bit codes must lie in 0..15, got a maximum of {int(flat.max())}; pass level indices")
    flat = flat.to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), 7)])
    return (flat[0::2] << 4) | flat[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_nibbles`: uint8 (ceil(n/2),) -> the first n codes as uint8 values 0..15
    (0 <= n <= 2 · bytes; packed bytes of any shape are read in order)."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"packed must be a uint8 tensor of packed codes, got {got}: pass pack_nibbles' output "
                         "(e.g. NF4Tensor.codes)")
    n = check_int("n", n, 0, "n=w.numel(), the number of codes that were packed")
    if n > 2 * packed.numel():
        raise ValueError(f"n={n} codes asked for, but {packed.numel()} bytes hold only {2 * packed.numel()}: pass the "
                         "number of codes that were packed (e.g. w.numel()), at most two per byte")
    packed = packed.reshape(-1)
    out = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)
    return out[:n]


# ---------------------------------------------------------------------------------------------- the tensor

@dataclass
class NF4Tensor:
    """A weight stored in NF4: packed codes plus per-block constants (optionally double-quantised).

    codes: uint8 (ceil(numel/2),), two 4-bit level indices per byte.
    absmax: float32 (n_blocks,) — or, with double quantisation, uint8 (n_blocks,) indices into
        DYNAMIC_CODES, with absmax_scale float32 (ceil(n_blocks/dq_block_size),) and absmax_offset a
        float32 scalar (the mean that was subtracted).
    shape, dtype: the original tensor's, restored by `dequantize`.
    The level tables (16 + 256 floats) are global constants shared by every tensor and not counted.
    """
    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    block_size: int
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None
    dq_block_size: int | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return self.absmax.numel()

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this weight is made of (what `nbytes` counts)."""
        out = {"codes": self.codes, "absmax": self.absmax}
        if self.double_quant:
            out.update(absmax_scale=self.absmax_scale, absmax_offset=self.absmax_offset)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: codes + constants (element size × count of each stored tensor)."""
        return tensor_bytes(self.stored_tensors().values())

    @property
    def bits_per_param(self) -> float:
        """8 · nbytes / numel: 4.5 for block_size 64 without double quantisation, ≈ 4.127 with it."""
        return 8 * self.nbytes / self.numel

    def scales(self) -> torch.Tensor:
        """The per-block absmax as float32 (n_blocks,), dequantised from 8 bits when double-quantised."""
        if not self.double_quant:
            return self.absmax
        return _blockwise_dequantize(DYNAMIC_CODES.to(self.absmax.device), self.absmax, self.absmax_scale,
                                     self.dq_block_size) + self.absmax_offset

    def dequantize(self) -> torch.Tensor:
        return dequantize_nf4(self)

    def __repr__(self) -> str:
        dq = f", double_quant(block {self.dq_block_size})" if self.double_quant else ""
        return (f"NF4Tensor(shape={tuple(self.shape)}, dtype={self.dtype}, block_size={self.block_size}{dq}, "
                f"nbytes={self.nbytes:,}, bits_per_param={self.bits_per_param:.3f})")


# ---------------------------------------------------------------------------------------------- checks

def _check_power_of_two(name: str, value, fix: str) -> None:
    value = as_int(value)  # a numpy integer is an integer
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 2 (whole bytes of codes per block), got {value!r}; {fix}")


def _check_weight(w) -> None:
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of weights, got {type(w).__name__}; pass e.g. layer.weight")
    if not w.is_floating_point():
        raise ValueError(f"NF4 quantises floating-point weights, got dtype {w.dtype}; convert first, e.g. w.float()")
    if w.numel() == 0:
        raise ValueError(f"cannot quantise an empty tensor (shape {tuple(w.shape)}): there is nothing to store; "
                         "pass a weight with at least one element")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("the weight contains NaN or inf, which would poison its block's absmax; "
                         "find where training diverged, or replace them (torch.nan_to_num) before quantising")
    biggest = float(w.detach().abs().max())
    if biggest > _FLOAT32_MAX:
        raise ValueError(f"the weight holds |values| up to {biggest:.3g}, beyond float32's {_FLOAT32_MAX:.3g}: they "
                         "are processed in float32 and would become inf; rescale the weight first")


def _check_quant_args(block_size, double_quant, dq_block_size) -> int | None:
    """Validate the settings; returns the double-quant block size to use (None without double quant)."""
    _check_power_of_two("block_size", block_size, "QLoRA uses block_size=64")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be True or False, got {double_quant!r}")
    if not double_quant:
        if dq_block_size is not None:
            raise ValueError(f"dq_block_size={dq_block_size!r} only applies to double quantisation, which is off; "
                             "drop dq_block_size or pass double_quant=True")
        return None
    dq_block_size = 256 if dq_block_size is None else as_int(dq_block_size)
    _check_power_of_two("dq_block_size", dq_block_size,
                        "it counts absmax constants per 8-bit block; QLoRA uses dq_block_size=256")
    return dq_block_size


# ---------------------------------------------------------------------------------------------- blockwise core

def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) -> (n_blocks, block_size), the last block padded with zeros (absmax is unchanged by zeros)."""
    n_blocks = -(-flat.numel() // block_size)
    return F.pad(flat, (0, n_blocks * block_size - flat.numel())).view(n_blocks, block_size)


def _blockwise_quantize(flat: torch.Tensor, levels_midpoints: torch.Tensor, block_size: int):
    """Nearest-level indices (uint8, padded to whole blocks) and float32 absmax per block."""
    blocks = _blocks(flat, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks * (1.0 / absmax.clamp(min=_TINY)).unsqueeze(1)   # multiply by the reciprocal, like bnb
    idx = torch.bucketize(scaled, levels_midpoints, out_int32=True)  # on a midpoint -> the lower level
    return idx.to(torch.uint8).view(-1), absmax


def _blockwise_dequantize(levels: torch.Tensor, idx: torch.Tensor, absmax: torch.Tensor, block_size: int):
    n = idx.numel()
    values = torch.index_select(levels, 0, idx.int())
    return (_blocks(values, block_size) * absmax.unsqueeze(1)).view(-1)[:n]


# ---------------------------------------------------------------------------------------------- public API

def quantize_nf4(w: torch.Tensor, block_size: int = 64, double_quant: bool = True,
                 dq_block_size: int | None = None) -> NF4Tensor:
    """Quantise a floating-point tensor of any shape to NF4 with per-block absmax scaling.

    block_size: values per absmax block (a power of two; QLoRA: 64). double_quant: also store the absmax
    constants in 8 bits, in blocks of dq_block_size (default 256) after subtracting their mean.
    Values are processed in float32 (as bitsandbytes does); `dequantize_nf4` returns the original dtype.
    """
    _check_weight(w)
    block_size = as_int(block_size)
    dq_block_size = _check_quant_args(block_size, double_quant, dq_block_size)
    flat = w.detach().reshape(-1).float()
    idx, absmax = _blockwise_quantize(flat, _NF4_MIDPOINTS.to(flat.device), block_size)
    q = NF4Tensor(pack_nibbles(idx[:flat.numel()]), absmax, w.shape, w.dtype, block_size)
    if double_quant:
        offset = absmax.mean()
        if not bool(torch.isfinite(offset)):
            raise ValueError("the mean of the blocks' absmax constants overflows float32, so double quantisation "
                             "cannot store them; pass double_quant=False or rescale the weight")
        idx8, scale = _blockwise_quantize(absmax - offset, _DYNAMIC_MIDPOINTS.to(flat.device), dq_block_size)
        q.absmax, q.absmax_scale, q.absmax_offset = idx8[:absmax.numel()], scale, offset
        q.dq_block_size = dq_block_size
    return q


def _quad_table(device: torch.device) -> torch.Tensor:
    """uint16 -> the 4 levels its two bytes hold, in element order: 65,536 entries of 4 float32 (1 MB).

    Each entry's 16 bytes are viewed as one complex128 number, an opaque 16-byte element, so that a
    1-D `index_select` (PyTorch's fast gather path) fetches four values per index. Built once per device,
    laid out for this machine's byte order.
    """
    if device not in _QUAD_TABLES:
        u = torch.arange(65536)
        first, second = (u & 255, u >> 8) if sys.byteorder == "little" else (u >> 8, u & 255)
        quads = NF4_CODES[torch.stack([first >> 4, first & 15, second >> 4, second & 15], 1)].contiguous()
        _QUAD_TABLES[device] = quads.view(torch.complex128).view(-1).to(device)
    return _QUAD_TABLES[device]


_QUAD_TABLES: dict[torch.device, torch.Tensor] = {}


def _check_nf4(q) -> None:
    """ValueError unless every stored tensor of `q` has the dtype and length its shape and block sizes imply."""
    if not isinstance(q, NF4Tensor):
        raise ValueError(f"expected an NF4Tensor (from quantize_nf4), got {type(q).__name__}")
    _check_power_of_two("block_size", q.block_size, "use the NF4Tensor quantize_nf4 returned")
    n_blocks = -(-q.numel // q.block_size)
    expected = {"codes": (torch.uint8, -(-q.numel // 2)),
                "absmax": (torch.uint8 if q.double_quant else torch.float32, n_blocks)}
    if q.double_quant:
        _check_power_of_two("dq_block_size", q.dq_block_size, "use the NF4Tensor quantize_nf4 returned")
        expected.update(absmax_scale=(torch.float32, -(-n_blocks // q.dq_block_size)), absmax_offset=(torch.float32, 1))
    for name, (dtype, numel) in expected.items():
        t = getattr(q, name)
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.numel() != numel:
            got = f"{t.dtype} with {t.numel()} elements" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"NF4Tensor.{name} should be {dtype} with {numel} elements for shape {tuple(q.shape)} "
                             f"(block_size {q.block_size}), got {got}: the tensor is truncated or mixed up; "
                             "quantise the weight again with quantize_nf4")
    if not q.dtype.is_floating_point:
        raise ValueError(f"NF4Tensor.dtype must be a floating-point dtype, got {q.dtype}: quantise again")


KERNELS = ("auto", "fused", "torch")
FUSED_MIN_NUMEL = 2**20  # kernel="auto" takes the fused kernel from here (a 4 MB float32 output) up


def dequantize_nf4(q: NF4Tensor, kernel: str = "auto") -> torch.Tensor:
    """NF4Tensor -> tensor of the original shape and dtype: level[code] · absmax of the code's block.

    Every stored tensor's length is checked against the shape first (truncated codes are refused). Two kernels give
    bit-identical values (one float32 multiply per value either way):
    - "torch": vectorised PyTorch, any device. The packed bytes are read two at a time as uint16, one gather from a
      65,536-entry table yields four values per index, and one in-place multiply applies each block's absmax:
      three passes over the tensor.
    - "fused": one pass, as bitsandbytes' CPU kernel does it. A loop compiled by numba on first use (about a
      second) reads each packed byte, looks its two levels up in a 256-entry table (2 KB, in L1) and multiplies
      them by the block's absmax while they are in registers. The output is a NumPy allocation, which on Linux
      asks for transparent huge pages for large arrays: fewer page faults when the fresh tensor is first written.
      CPU tensors only; needs numba (requirements.txt).
    - "auto" (default): "fused" for a CPU tensor of at least FUSED_MIN_NUMEL (2^20) values when numba can be
      imported, else "torch". Importing numba and compiling the loop costs a process about a second and ~145 MB
      of memory once; below a million values (every layer of notebooks 02 and 06) the fused pass saves well under
      a millisecond per call, so small layers keep the torch kernel and the notebooks' memory budgets.
    """
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}; 'auto' picks the fastest available")
    _check_nf4(q)
    cpu = q.codes.device.type == "cpu"
    if kernel == "fused":
        if not cpu:
            raise ValueError(f"kernel='fused' runs on CPU tensors, these are on {q.codes.device}; use kernel='torch'")
        if _fused_kernel() is None:
            raise ValueError(f"kernel='fused' needs numba, which cannot be imported here ({_FUSED['why']}); "
                             "install the pinned version (`make setup`, or pip install -r requirements.txt), "
                             "or use kernel='torch'")
    if kernel == "torch" or not cpu or (kernel == "auto" and q.numel < FUSED_MIN_NUMEL) or _fused_kernel() is None:
        return _dequantize_torch(q)
    codes = q.codes.reshape(-1).contiguous().numpy()
    out = np.empty(2 * codes.shape[0], dtype=np.float32)  # NumPy's allocator: madvise(MADV_HUGEPAGE) on Linux
    if q.double_quant:  # the absmax constants are decoded in the same pass: level8[code8] · scale + offset
        consts = (q.absmax.reshape(-1).contiguous().numpy(), _DYNAMIC_NP,
                  q.absmax_scale.reshape(-1).contiguous().numpy(), q.absmax_offset.reshape(1).contiguous().numpy(),
                  q.dq_block_size)
    else:
        consts = (np.zeros(0, np.uint8), _DYNAMIC_NP, q.absmax.reshape(-1).contiguous().numpy(),
                  np.zeros(1, np.float32), 1)
    _fused_kernel()(codes, *consts, q.double_quant, _PAIR_TABLE, q.block_size // 2, out)
    return torch.from_numpy(out)[:q.numel].view(q.shape).to(q.dtype)


def _dequantize_torch(q: NF4Tensor) -> torch.Tensor:
    codes, device = q.codes, q.codes.device
    if codes.numel() % 2 or codes.storage_offset() % 2 or not codes.is_contiguous():
        codes = torch.cat([codes.reshape(-1), codes.new_zeros(codes.numel() % 2)])
    idx = codes.view(torch.uint16).int()
    padded = q.n_blocks * q.block_size
    out = torch.empty(-(-padded // 4) * 4, device=device)
    torch.index_select(_quad_table(device), 0, idx, out=out.view(torch.complex128)[:idx.numel()])
    out = out[:padded].view(q.n_blocks, q.block_size).mul_(q.scales().unsqueeze(1))
    return out.view(-1)[:q.numel].view(q.shape).to(q.dtype)


# byte -> (level of its high nibble, level of its low nibble): the first value of a pair sits in the high nibble
_PAIR_TABLE = NF4_CODES[torch.stack([torch.arange(256) >> 4, torch.arange(256) & 15], 1)].contiguous().numpy()
_DYNAMIC_NP = DYNAMIC_CODES.numpy()
_FUSED: dict = {}


def _fused_kernel():
    """The compiled one-pass loop (numba, compiled on first call), or None when numba cannot be imported."""
    if "fn" not in _FUSED:
        try:
            import numba
        except Exception as e:  # not installed, or an install that does not fit this numpy
            _FUSED.update(fn=None, why=f"{type(e).__name__}: {e}")
            return None

        @numba.njit(nogil=True, cache=False)
        def dequantize_pairs(codes, codes8, levels8, scale, offset, dq_block, double_quant, pairs, half, out):
            # codes: uint8, two 4-bit codes per byte, 2·half values per block. Each block's absmax is scale[b] or,
            # double-quantised, levels8[codes8[b]] · scale[b // dq_block] + offset[0] (float32, as PyTorch rounds it)
            n_blocks = codes8.shape[0] if double_quant else scale.shape[0]
            for b in range(n_blocks):
                s = levels8[codes8[b]] * scale[b // dq_block] + offset[0] if double_quant else scale[b]
                for i in range(b * half, min((b + 1) * half, codes.shape[0])):
                    c = codes[i]
                    out[2 * i] = pairs[c, 0] * s
                    out[2 * i + 1] = pairs[c, 1] * s

        _FUSED.update(fn=dequantize_pairs, why="")
    return _FUSED["fn"]


# ---------------------------------------------------------------------------------------------- comparison

def quantize_int(w: torch.Tensor, bits: int, block_size: int = 64) -> tuple[torch.Tensor, int]:
    """Symmetric absmax integer quantisation (the uniform grid NF4 is compared with); a round trip.

    Each block of `block_size` values is scaled by its absmax and rounded to the nearest of the
    2·(2^(bits-1) - 1) + 1 evenly spaced levels k / (2^(bits-1) - 1) in [-1, 1] (int8: ±127, int4: ±7).
    Returns (dequantised tensor in w's shape and dtype, bytes it would take: ceil(numel·bits/8) for the
    integers + 4 per fp32 absmax). block_size can be any positive integer, e.g. d_in for one scale per row.
    """
    _check_weight(w)
    bits, block_size = as_int(bits), as_int(block_size)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}; e.g. bits=8 for int8")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}; e.g. 64, or d_in per row")
    flat = w.detach().reshape(-1).float()
    blocks = _blocks(flat, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    top = 2 ** (bits - 1) - 1
    w_hat = (torch.round(blocks / absmax.clamp(min=_TINY) * top) / top * absmax).view(-1)[:flat.numel()]
    nbytes = -(-flat.numel() * bits // 8) + 4 * blocks.shape[0]
    return w_hat.view(w.shape).to(w.dtype), nbytes


# ---------------------------------------------------------------------------------------------- layers

class LinearNF4(nn.Module):
    """A frozen linear layer, y = x W₀ᵀ + b, whose W₀ is stored in NF4 and dequantised on every forward.

    Built from an nn.Linear: W₀ (d_out × d_in) is quantised with `quantize_nf4(block_size, double_quant)`;
    the codes and constants are buffers (they move with .to() and sit in the state_dict); the bias stays
    in its dtype as a frozen parameter. No dequantised copy is kept between calls: that is the point.
    `weight` returns W₀ as the forward sees it (a fresh dequantised tensor on each access).
    """

    def __init__(self, linear: nn.Linear, block_size: int = 64, double_quant: bool = True):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"LinearNF4 quantises an nn.Linear, got {type(linear).__name__}; "
                             "pass the layer to replace")
        q = quantize_nf4(linear.weight, block_size, double_quant)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.dq_block_size = q.block_size, q.dq_block_size
        self._dtype = q.dtype
        self.register_buffer("weight_codes", q.codes)
        self.register_buffer("weight_absmax", q.absmax)
        self.register_buffer("weight_absmax_scale", q.absmax_scale)
        self.register_buffer("weight_absmax_offset", q.absmax_offset)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def double_quant(self) -> bool:
        return self.weight_absmax_scale is not None

    @property
    def quantized_weight(self) -> NF4Tensor:
        """W₀ as stored: an NF4Tensor over this layer's buffers (no copy)."""
        return NF4Tensor(self.weight_codes, self.weight_absmax, torch.Size((self.out_features, self.in_features)),
                         self._dtype, self.block_size, self.weight_absmax_scale, self.weight_absmax_offset,
                         self.dq_block_size)

    @property
    def weight(self) -> torch.Tensor:
        """W₀ dequantised, (d_out, d_in) in the original dtype: computed on each access, not stored."""
        return dequantize_nf4(self.quantized_weight)

    @property
    def nbytes(self) -> int:
        """Bytes this layer stores: NF4 codes and constants plus the bias."""
        return self.quantized_weight.nbytes + tensor_bytes([self.bias])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _apply(self, fn, recurse=True):
        """.to(), .double(), .half(), .cpu() follow their meaning for the bias and the dtype W₀ is dequantised to
        (so .double() gives a float64 layer over the same 4-bit weight); the quantised buffers (uint8 codes, float32
        constants: the stored format) only follow the device, their dtypes and bytes stay as they are."""
        stored = {k: b for k, b in self._buffers.items() if b is not None}
        dtype = fn(torch.empty(0, dtype=self._dtype, device=self.weight_codes.device)).dtype
        super()._apply(fn, recurse)
        for k, b in stored.items():
            self._buffers[k] = b.to(self._buffers[k].device)
        self._dtype = dtype
        return self

    def extra_repr(self) -> str:
        dq = f", double_quant(block {self.dq_block_size})" if self.double_quant else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={self.block_size}{dq}")


class QLoRALinear(lora.LoRALinear):
    """QLoRA's layer: a frozen NF4 base (`LinearNF4`) plus helpers.lora's trainable branch.

    h = W₀x + b + s · B A dropout(x), with W₀ dequantised from 4 bits on the fly and A, B in full precision
    (the dtype of the original weight). Everything LoRA-specific — init, scaling, dropout, `lora_forward`,
    `delta_weight` — is inherited from `LoRALinear`. `base` may be an nn.Linear (quantised here) or a
    `LinearNF4`. Merging is refused: ΔW cannot be added to 4-bit codes without re-quantising it away.
    """

    cannot_merge = ("cannot merge into a 4-bit NF4 base: W₀ + s·BA would have to be re-quantised, which rounds most "
                    "of the update away. Keep the adapter separate (save_adapter), or load it into the full-precision "
                    "base with load_adapter and merge there")

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 block_size: int = 64, double_quant: bool = True):
        lora.check_lora_args(r, alpha, dropout, rslora)
        if isinstance(base, nn.Linear):
            _check_quant_args(block_size, double_quant, None)
            lora.check_rank_fits(type(base).__name__, base, r)
            base = LinearNF4(base, block_size, double_quant)
        elif not isinstance(base, LinearNF4):
            raise ValueError(f"QLoRALinear wraps an nn.Linear or a LinearNF4, got {type(base).__name__}")
        super().__init__(base, r, alpha, dropout, rslora)

    def merge(self) -> None:
        raise ValueError(self.cannot_merge)


def _check_finite_weight(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Linear) and not bool(torch.isfinite(layer.weight).all()):
        raise ValueError(f"layer {name!r} has NaN or inf weights, which NF4 cannot store; fix or reload that "
                         "layer's weights before quantising")


def add_qlora(model: nn.Module, target_modules, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
              block_size: int = 64, double_quant: bool = True) -> nn.Module:
    """QLoRA surgery, in place: each targeted nn.Linear (or LinearNF4) becomes a QLoRALinear; returns model.

    Matching, validation and replacement are helpers.lora's (`replace_modules`: exact name or dotted suffix,
    or a full-match regex; every target checked before anything changes, so on ValueError the model is
    unchanged). Afterwards only lora_A / lora_B require grad. Layers not targeted keep their precision;
    `quantize_model` stores them in NF4 too.
    """
    lora.check_lora_args(r, alpha, dropout, rslora)
    _check_quant_args(block_size, double_quant, None)

    def check(name, layer):
        lora.check_rank_fits(name, layer, r)
        _check_finite_weight(name, layer)

    lora.replace_modules(model, target_modules,
                          lambda name, m: QLoRALinear(m, r, alpha, dropout, rslora, block_size, double_quant),
                          check=check, layer_types=(nn.Linear, LinearNF4))
    lora.freeze_all_but_lora(model)
    return model


def quantize_model(model: nn.Module, target_modules=None, block_size: int = 64, double_quant: bool = True) -> nn.Module:
    """Replace nn.Linear layers by frozen LinearNF4 layers, in place; returns model.

    target_modules: as in add_lora (names or dotted suffixes, or one regex); default: every nn.Linear that
    is not inside a LoRA layer. On ValueError the model is unchanged. Use before `add_qlora` to keep the
    whole frozen base in 4 bits, the way QLoRA loads a model.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the model itself")
    _check_quant_args(block_size, double_quant, None)
    if target_modules is None:
        target_modules = lora.linear_names(model, (nn.Linear,))
        if not target_modules:
            raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantise")
    lora.replace_modules(model, target_modules, lambda name, m: LinearNF4(m, block_size, double_quant),
                          check=_check_finite_weight)
    return model


def storage_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes the model stores, split into "trainable" (parameters that require grad) and "frozen" (every
    other parameter and every buffer, e.g. NF4 codes and constants); shared tensors counted once."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the model itself")
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids = {id(p) for p in trainable}
    return {"trainable": tensor_bytes(trainable),
            "frozen": tensor_bytes([*(p for p in model.parameters() if id(p) not in ids), *model.buffers()])}


# ---------------------------------------------------------------------------------------------- bitsandbytes

def import_bitsandbytes():
    """(bitsandbytes.functional, None) when bitsandbytes imports, else (None, the reason).

    bitsandbytes 0.50 logs a warning at import on CPUs with AVX-512 BF16 when the optional `kernels`
    package is missing, and triggers torch.jit deprecation warnings; both are silenced here so they do
    not reach notebook output. Its CPU kernels are what the cross-checks compare against.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes.functional as bnb_functional
    except Exception as e:  # ImportError, or a missing native library raising something else
        return None, f"bitsandbytes cannot be imported here ({type(e).__name__}: {e})"
    return bnb_functional, None
