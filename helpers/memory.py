"""Memory and storage accounting for fine-tuning: the formula, and the bytes a real model measures.

Conventions (bytes per parameter; activations are never included — they depend on batch and sequence):
- a trainable parameter, precision "fp32": weight 4 + gradient 4 + optimizer 4 per state
  (Adam keeps two states, m and v: 4 + 4 + 8 = 16);
- a trainable parameter, precision "mixed" (fp16/bf16 training as in ZeRO): weight 2 + gradient 2 +
  optimizer 4 (fp32 master copy) + 4 per state (Adam: 2 + 2 + 12 = 16);
- a frozen parameter costs only its stored weight: 4 (fp32), 2 (fp16/bf16), 1 (int8), 0.5 (nf4), or
  4.127/8 (nf4 with double quantisation: 4 bits + 8-bit absmax per 64 + fp32 constant per 64·256).
"""
from __future__ import annotations

import copy as copy_module
import math
import numbers

import torch
from torch import nn

from helpers.checks import (
    as_int,
    check_choice,
    check_features,
    check_int,
    check_labels,
    check_lora_unmerged,
    check_number,
)
from helpers.training import OPTIMIZERS, training_step

DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5,
               "nf4-dq": (4 + 8 / 64 + 32 / (64 * 256)) / 8}
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd_momentum": 1, "sgd": 0}
PRECISIONS = {"fp32": (4, 4, 0), "mixed": (2, 2, 4)}  # (weight, gradient, master copy) bytes per trainable param
PARTS = ["weights", "gradients", "optimizer"]

# Published sizes; d_model and n_layers set the LoRA count for adapters on W_q and W_v (d_model x d_model each;
# LLaMA-2 70B's grouped-query W_v is smaller, so its LoRA count here is a slight over-estimate).
MODELS = {
    "GPT-2 1.5B": dict(n_params=1.5e9, d_model=1600, n_layers=48),
    "LLaMA-2 7B": dict(n_params=6.74e9, d_model=4096, n_layers=32),
    "LLaMA-2 13B": dict(n_params=13.0e9, d_model=5120, n_layers=40),
    "LLaMA-2 70B": dict(n_params=69.0e9, d_model=8192, n_layers=80),
    "GPT-3 175B": dict(n_params=175e9, d_model=12288, n_layers=96),
}
METHODS = ["full", "lora", "qlora"]


def _check_choice(name: str, value, options) -> None:
    check_choice(name, value, options)


def training_memory(n_params: float, n_trainable: float | None = None, precision: str = "fp32",
                    optimizer: str = "adam", frozen_dtype: str | None = None) -> dict[str, float]:
    """Bytes for weights, gradients and optimizer states (and their total) when training a model.

    n_params: all parameters; n_trainable: how many of them train (default: all).
    precision: "fp32" or "mixed" for the trainable ones; frozen_dtype: how frozen weights are stored
    (default fp32 for "fp32", bf16 for "mixed"; "nf4"/"nf4-dq" for QLoRA). Optimizer states are fp32.
    """
    n_trainable = n_params if n_trainable is None else n_trainable
    n_params, n_trainable = as_int(n_params), as_int(n_trainable)  # numpy integers count as ints
    for name, value in (("n_params", n_params), ("n_trainable", n_trainable)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not a finite number of parameters: pass a number >= 0 such as "
                             "7e9 (not a string like '7B')")
    if n_params < 0 or n_trainable < 0:
        raise ValueError(f"parameter counts must be >= 0, got n_params={n_params}, n_trainable={n_trainable}")
    if n_trainable > n_params:
        raise ValueError(f"n_trainable ({n_trainable:,}) exceeds n_params ({n_params:,}): pass the model's "
                         "total as n_params and the trained subset as n_trainable")
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    frozen_dtype = ("fp32" if precision == "fp32" else "bf16") if frozen_dtype is None else frozen_dtype
    _check_choice("frozen_dtype", frozen_dtype, DTYPE_BYTES)
    w, g, master = PRECISIONS[precision]
    out = {"weights": n_trainable * w + (n_params - n_trainable) * DTYPE_BYTES[frozen_dtype],
           "gradients": n_trainable * g,
           "optimizer": n_trainable * (master + 4 * OPTIMIZER_STATES[optimizer])}
    out["total"] = sum(out[p] for p in PARTS)
    return out


def lora_params(d_model: int, n_layers: int, r: int, matrices_per_layer: int = 2) -> int:
    """LoRA parameters for rank-r adapters on `matrices_per_layer` d_model x d_model weights per layer:
    r·(d_in + d_out) each."""
    d_model, n_layers, r, matrices_per_layer = (check_int(name, v, example=f"{name}={good}") for name, v, good in (
        ("d_model", d_model, 4096), ("n_layers", n_layers, 32), ("r", r, 8),
        ("matrices_per_layer", matrices_per_layer, 2)))
    if min(d_model, n_layers, r, matrices_per_layer) < 1:
        raise ValueError(f"d_model, n_layers, r and matrices_per_layer must all be >= 1; got d_model={d_model}, "
                         f"n_layers={n_layers}, r={r}, matrices_per_layer={matrices_per_layer}")
    return n_layers * matrices_per_layer * r * 2 * d_model


def finetune_memory(model: str = "LLaMA-2 7B", method: str = "full", r: int = 8, precision: str = "mixed",
                    optimizer: str = "adam", n_params: float | None = None) -> dict[str, float]:
    """The calculator behind notebook 01's widget: training_memory for a named model and method.

    method "full" trains everything; "lora" freezes the base (stored per `precision`) and trains rank-r
    adapters on W_q and W_v in every layer; "qlora" does the same over an NF4 + double-quantised base.
    n_params overrides the preset's size (d_model, n_layers are kept). Adds "trainable" (a count).
    """
    _check_choice("model", model, MODELS)
    _check_choice("method", method, METHODS)
    spec = dict(MODELS[model])
    if n_params is not None:
        spec["n_params"] = check_number("n_params", n_params, minimum=0,
                                        example="n_params=7e9 (not a string like '7B')")
    trainable = spec["n_params"] if method == "full" else lora_params(spec["d_model"], spec["n_layers"], r)
    frozen = "nf4-dq" if method == "qlora" else None
    out = training_memory(spec["n_params"] + (0 if method == "full" else trainable), trainable,
                          precision, optimizer, frozen_dtype=frozen)
    out["trainable"] = trainable
    return out


def tensor_bytes(tensors) -> int:
    """Sum of numel · element size over tensors: None entries skipped, a tensor listed twice counted once.

    The one byte counter of the helpers (NF4 storage, projections, measured training memory use it)."""
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() * t.element_size() for t in unique.values())


def measure_training_memory(model: nn.Module, X: torch.Tensor, y: torch.Tensor, optimizer: str = "adam",
                            lr: float = 1e-3, copy: bool = True) -> dict[str, int]:
    """Measured bytes of parameters, .grad tensors and optimizer state after one training step.

    Runs on a deep copy, so `model` is not changed (nor the global RNG: dropout draws inside
    `torch.random.fork_rng`). copy=False trains `model` itself instead (one step: its weights change and its
    .grad are set), for a model built only to be measured: then it is not held twice. Trains what requires grad.
    Optimizer state counts the per-parameter tensors (Adam's exp_avg, exp_avg_sq; momentum buffers); Adam's
    scalar step counters (one per tensor, not per parameter) are reported apart as "step_counters" and left out
    of "total".
    """
    _check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass e.g. mlp()")
    check_number("lr", lr, positive=True, example="lr=1e-3")
    if not isinstance(copy, bool):
        raise ValueError(f"copy must be True (measure on a deep copy) or False (train the model itself), got {copy!r}")
    check_features("X", X)
    check_labels("y", y, len(X))
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no parameter requires grad: unfreeze what should train before measuring")
    check_lora_unmerged(model, [p for p in model.parameters() if p.requires_grad])
    if copy:
        model = copy_module.deepcopy(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    name, extra = ("sgd", {"momentum": 0.9}) if optimizer == "sgd_momentum" else (optimizer, {})
    opt = OPTIMIZERS[name](trainable, lr=lr, **extra)
    with torch.random.fork_rng():  # dropout draws on the copy: the caller's global RNG state is left as it was
        training_step(model, opt, X, y)
    state = [t for s in opt.state.values() for k, t in s.items() if torch.is_tensor(t) and k != "step"]
    steps = [t for s in opt.state.values() for k, t in s.items() if torch.is_tensor(t) and k == "step"]
    out = {"weights": tensor_bytes(model.parameters()),
           "gradients": tensor_bytes(p.grad for p in model.parameters()),
           "optimizer": tensor_bytes(state)}
    out["total"] = sum(out[p] for p in PARTS)
    out["step_counters"] = tensor_bytes(steps)
    return out


# LLaMA-2's feed-forward width (gate, up: d_model -> d_ffn; down: d_ffn -> d_model), for LoRA on all linear layers
FFN_WIDTH = {"LLaMA-2 7B": 11008, "LLaMA-2 13B": 13824}


def lora_params_all_linear(d_model: int, n_layers: int, d_ffn: int, r: int) -> int:
    """LoRA parameters for rank-r adapters on every linear layer of a LLaMA-style block, QLoRA's recipe:
    W_q, W_k, W_v, W_o (d_model x d_model each) and the gated MLP's gate, up (d_model -> d_ffn) and down
    (d_ffn -> d_model); r·(d_in + d_out) per matrix. (Full multi-head attention; grouped-query k/v are smaller.)
    LLaMA-2 7B at r = 64: 159,907,840."""
    if min(d_model, n_layers, d_ffn, r) < 1:
        raise ValueError(f"d_model, n_layers, d_ffn and r must all be >= 1; got d_model={d_model}, "
                         f"n_layers={n_layers}, d_ffn={d_ffn}, r={r}")
    return n_layers * r * (4 * 2 * d_model + 3 * (d_model + d_ffn))


def activation_memory(d_model: int, n_layers: int, n_heads: int, seq_len: int, batch: int = 1,
                      checkpointing: bool = False) -> float:
    """Bytes of activations kept for the backward pass of a GPT-style transformer trained in 16-bit, from
    Korthikanti et al. 2022 (arXiv:2205.05198, section 4.1, no tensor or sequence parallelism): per layer
    s·b·h·(34 + 5·a·s/h) bytes for sequence length s, batch b, width h and a heads (attention scores included).
    With gradient checkpointing every layer keeps only its 16-bit input (2·s·b·h bytes) and one layer's
    activations are recomputed at a time, so the peak is L·2·s·b·h + s·b·h·(34 + 5·a·s/h).
    An estimate: LLaMA's gated MLP and fused attention kernels change the constant, not the scaling."""
    for name, v in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads), ("seq_len", seq_len),
                    ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}; e.g. seq_len=512, batch=1")
    per_layer = seq_len * batch * d_model * (34 + 5 * n_heads * seq_len / d_model)
    if checkpointing:
        return n_layers * 2 * seq_len * batch * d_model + per_layer
    return n_layers * per_layer


def saved_activation_bytes(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Bytes autograd keeps for the backward pass of one forward + cross-entropy on (X, y): the activations.

    Every tensor an op saves for backward passes through a `torch.autograd.graph.saved_tensors_hooks` pack
    hook; each distinct storage is counted once. Saved tensors that are the model's own parameters or buffers
    cost nothing extra and are reported apart ("parameters"); everything else ("activations": layer inputs,
    attention probabilities, dropout masks, and e.g. a weight dequantised from 4 bits for this forward) is memory
    the step adds until backward frees it. The model runs in train mode (as in training) inside
    `torch.random.fork_rng` (dropout leaves the global RNG as it was) and is put back in its mode; no backward
    runs, nothing is updated. With gradient checkpointing switched on in the model, what is saved is each
    checkpointed block's input (and the recomputation during backward adds one block's activations at a time).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_labels("y", y, len(X))
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, tuple[int, bool]] = {}

    def pack(t):
        if t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = (s.nbytes(), s.data_ptr() in own)
        # a detached alias: the same storage (alive until the graph goes, so no address is counted twice), without
        # the grad_fn. Returning `t` itself would make the graph keep an op's own output, whose grad_fn keeps the
        # graph: a reference cycle through C++ that Python's garbage collector cannot see, so every call would
        # leak the graph's activations and, through them, the model's weights
        return t.detach()

    was_training = model.training
    try:
        model.train()
        with torch.random.fork_rng(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = nn.functional.cross_entropy(model(X), y)
        del loss
    finally:
        model.train(was_training)
    return {"activations": sum(n for n, is_own in seen.values() if not is_own),
            "parameters": sum(n for n, is_own in seen.values() if is_own)}


def peak_rss(code: str, timeout: float = 300) -> int:
    """Peak resident memory (bytes) of a fresh Python process that runs `code` (imports included).

    Read at the child's exit from /proc/self/status (VmHWM: the high-water mark of the child's own address space),
    not from ru_maxrss, which on Linux starts from the RSS of the process that forked the child. Runs this
    interpreter with one thread (OMP_NUM_THREADS=1). ValueError with the child's last error line if it fails
    or runs longer than `timeout` seconds; ValueError on a system without /proc (e.g. macOS, Windows).
    """
    import os
    import subprocess
    import sys
    if not isinstance(code, str) or not code.strip():
        raise ValueError("code must be a non-empty str of Python to run in a fresh process")
    if not os.path.exists("/proc/self/status"):
        raise ValueError("peak_rss reads /proc/self/status, which this system does not have (Linux only)")
    report = ("\nimport sys as _s\n_s.stdout.write('\\nVmHWM ' + next(l.split()[1] for l in open('/proc/self/status') "
              "if l.startswith('VmHWM')) + '\\n')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ValueError(f"the child process ran longer than {timeout} s: raise timeout= or run less code") from None
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        raise ValueError(f"the child process failed (exit {done.returncode}): {lines[-1] if lines else ''}")
    kib = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("VmHWM ")]
    return int(kib[-1]) * 1024
