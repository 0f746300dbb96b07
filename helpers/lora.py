"""LoRA from scratch: the layer, model surgery, merging, and adapters in PEFT's file layout.

Notation (the series'): a frozen layer computes W₀x + b with W₀ ∈ R^{d_out×d_in}. LoRA adds a trainable
low-rank update ΔW = B A with A ∈ R^{r×d_in} (Kaiming-uniform, a=√5) and B ∈ R^{d_out×r} (zeros), so

    h = W₀x + b + s · B A x,    s = α/r   (rsLoRA: s = α/√r).

Because B starts at zero, the adapted model equals the base model at step 0.

Adapters are saved the way `peft` saves them (`adapter_model.safetensors` + `adapter_config.json`, tensor keys
`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`), so `peft.PeftModel.from_pretrained` loads ours
and `load_adapter` loads peft's. Only safetensors and JSON are read: nothing is ever unpickled.

The surgery API (public; helpers/quant.py builds QLoRA on it):
- `LoRALinear(base, ...)` accepts any `base` module with `in_features`, `out_features` and a `weight`; its
  forward is `base(x) + lora_forward(x)`. A subclass over a quantised base keeps `lora_forward`,
  `delta_weight`, `scaling` and the A/B/dropout modules, and sets `cannot_merge` to the reason (and
  overrides `merge`) if its base cannot absorb ΔW in place.
- `find_targets(model, target_modules, layer_types)`: name -> layer for every match (peft's rule), or a
  ValueError naming what exists. `linear_names(model, layer_types)`: the candidate layer names.
- `replace_modules(model, target_modules, make_layer, check=..., layer_types=...)` is the model surgery
  behind `add_lora`: it validates every match (and `check(name, module)`) and builds every new layer before
  changing anything, then swaps each match for `make_layer(name, module)`.
- `freeze_all_but_lora(model)`: only lora_A / lora_B require grad. `lora_layers(model)`: name -> LoRALinear.
- `check_lora_args(r, alpha, dropout, rslora)` and `check_rank_fits(name, layer, r)`: the argument checks.
`add_qlora` calls `replace_modules` with its own factory, and `load_adapter(..., inject=add_qlora)` loads a
saved adapter onto that kind of layer.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from numbers import Real
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from helpers.checks import as_int

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
KEY_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")

# adapter_config.json keys that describe the file, not the adapter's math: any value is accepted.
_METADATA_KEYS = {"peft_version", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
                  "inference_mode", "init_lora_weights", "megatron_core", "qalora_group_size", "runtime_config"}
_CORE_KEYS = {"peft_type", "r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora", "bias", "modules_to_save"}


def check_lora_args(r, alpha, dropout, rslora) -> None:
    """ValueError unless r is a positive int, alpha a positive finite number, dropout in [0, 1), rslora a bool."""
    r = as_int(r)  # a numpy integer is an integer
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive integer (the rank of ΔW = BA), got {r!r}; use e.g. r=4")
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a positive number (the scale is α/r), got {alpha!r}; "
                         "use e.g. alpha=8, fixed for every rank as in the LoRA paper")
    if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0 <= dropout < 1:  # NaN fails too
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}; use 0.0 to switch it off")
    if not isinstance(rslora, bool):
        raise ValueError(f"rslora must be True or False, got {rslora!r}")


def check_rank_fits(name: str, base: nn.Module, r: int) -> None:
    """ValueError unless r <= min(d_in, d_out) of layer `name`."""
    d_in, d_out = base.in_features, base.out_features
    if r > min(d_in, d_out):
        raise ValueError(f"r={r} is larger than min(d_in, d_out) = min({d_in}, {d_out}) of layer {name!r}: a rank-r "
                         f"update of a {d_out}x{d_in} matrix cannot have rank above {min(d_in, d_out)}; lower r "
                         f"or leave {name!r} out of target_modules")


class LoRALinear(nn.Module):
    """A frozen `base` layer plus a trainable low-rank branch: h = base(x) + s · B A dropout(x).

    base: nn.Linear (or any module with `in_features`, `out_features`, `weight`, called as base(x)).
    lora_A: nn.Linear(d_in -> r, no bias), weight A of shape (r, d_in), Kaiming-uniform with a=√5.
    lora_B: nn.Linear(r -> d_out, no bias), weight B of shape (d_out, r), zeros.
    scaling s = alpha / r, or alpha / √r with `rslora`. Dropout (probability `dropout`) acts on the LoRA
    branch's input only and only in train mode. `merge()` folds s·BA into base.weight (then forward is base
    alone); `unmerge()` takes it out again. Both are idempotent; `merged` says which state the layer is in.
    Train unmerged: a merged layer's forward skips the branch, so A and B get no gradient.
    `cannot_merge` (class attribute): None when `merge` can fold ΔW into this kind of base, else the reason.
    """

    cannot_merge: str | None = None

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        r = as_int(r)  # an int in the saved adapter_config.json, not a numpy scalar
        check_lora_args(r, alpha, dropout, rslora)
        if not all(hasattr(base, a) for a in ("in_features", "out_features", "weight")):
            raise ValueError(f"base must have in_features, out_features and weight (like nn.Linear), "
                             f"got {type(base).__name__}; wrap an nn.Linear")
        check_rank_fits(type(base).__name__, base, r)
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.in_features, self.out_features = base.in_features, base.out_features
        dtype = base.weight.dtype if base.weight.is_floating_point() else torch.float32
        factory = {"device": base.weight.device, "dtype": dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A Kaiming-uniform (a=√5, as nn.Linear's default init), B zeros: ΔW = 0, the layer equals its base."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def lora_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branch alone, s · B A dropout(x): (..., d_in) -> (..., d_out).

        The scale multiplies the r-wide intermediate (cheaper than scaling the d_out-wide output);
        with dropout off the dropout module is skipped, not called.
        """
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            x = self.lora_dropout(x)
        return F.linear(F.linear(x, self.lora_A.weight) * self.scaling, self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.lora_forward(x)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B A, shape (d_out, d_in), in the adapter's dtype."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W₀ <- W₀ + s·BA, so forward costs one matmul; no-op when already merged."""
        reason = None if self.merged else _merge_refusal(self)
        if reason:
            raise ValueError(reason)
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W₀ <- W₀ - s·BA (exact up to float rounding); no-op when not merged."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, rslora={self.rslora}, merged={self.merged}"


def _merge_refusal(m: LoRALinear) -> str | None:
    """Why `m` cannot fold ΔW into its base in place (None if it can): its class's `cannot_merge`, or a base
    whose W₀ is not a float tensor it holds (e.g. a LinearNF4 computes its weight from 4-bit codes on access)."""
    if m.cannot_merge:
        return m.cannot_merge
    held = {**m.base._parameters, **m.base._buffers}.get("weight")
    if isinstance(held, torch.Tensor) and held.is_floating_point():
        return None
    return (f"cannot merge into a {type(m.base).__name__} base: it does not hold W₀ as a float tensor (an NF4 base "
            "stores 4-bit codes and dequantises W₀ on every access), so it cannot absorb ΔW = s·BA in place. "
            "Dequantise the base to a float layer first (an nn.Linear with weight base.weight and its bias), then "
            "merge; or keep the adapter separate (save_adapter)")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Name -> LoRALinear for every LoRA layer in `model` (named_modules order)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the model itself")
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every named submodule, except the insides of LoRA layers (their base and A/B are not targets)."""
    inside = [name + "." for name, m in model.named_modules() if isinstance(m, LoRALinear) and name]
    return [(name, m) for name, m in model.named_modules()
            if name and not any(name.startswith(p) for p in inside)]


def _matches(target_modules: str | Iterable[str], name: str) -> bool:
    """peft's rule: a string is a regex that must match the whole name; a list entry matches the whole
    name or its dotted suffix (target "fc1" matches "fc1" and "encoder.fc1", not "xfc1")."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def linear_names(model: nn.Module, layer_types=(nn.Linear,)) -> list[str]:
    """Names of the layers of `layer_types` that could be targeted (not the insides of LoRA layers)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the model itself")
    if not isinstance(layer_types, tuple) or not layer_types or not all(isinstance(t, type) for t in layer_types):
        raise ValueError(f"layer_types must be a tuple of module classes, got {layer_types!r}: e.g. (nn.Linear,)")
    return [name for name, m in _candidate_modules(model) if isinstance(m, layer_types)]


def find_targets(model: nn.Module, target_modules, layer_types=(nn.Linear,)) -> dict[str, nn.Module]:
    """Name -> module for every targeted layer; ValueError (naming what exists) when a target is wrong."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass e.g. mlp()")
    if isinstance(target_modules, str):
        targets = target_modules
        if not targets:
            raise ValueError("target_modules is empty: pass layer names such as ['fc2', 'fc3']")
    else:
        if (target_modules is None or isinstance(target_modules, (bytes, nn.Module))
                or not hasattr(target_modules, "__iter__")):
            raise ValueError(f"target_modules must be a list of layer names (or one regex string), got "
                             f"{target_modules!r}; e.g. ['fc2', 'fc3']")
        targets = list(target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"target_modules must be a non-empty list of layer names, got {target_modules!r}; "
                             "e.g. ['fc2', 'fc3']")
    existing = linear_names(model, layer_types)
    kinds = "/".join(("nn." if t.__module__.startswith("torch.nn") else "") + t.__name__ for t in layer_types)
    hint = f"{kinds} layers in this model: {', '.join(existing) or 'none'}"
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise ValueError(f"target_modules {targets!r} is not a valid regex ({e}): fix it or pass a list of "
                             f"layer names; {hint}") from None
    candidates = _candidate_modules(model)
    adapted = [name for name, m in candidates if isinstance(m, LoRALinear) and _matches(targets, name)]
    if adapted:
        raise ValueError(f"layer(s) {', '.join(adapted)} already carry a LoRA adapter: adapting a layer twice is "
                         "not supported; call merge_and_unload(model) first, or start from a fresh base model")
    found = {name: m for name, m in candidates if _matches(targets, name)}
    if isinstance(targets, str):
        if not found:
            raise ValueError(f"target_modules regex {targets!r} matches no module; {hint}")
    else:
        for t in targets:
            if not any(_matches([t], name) for name in found):
                raise ValueError(f"target module {t!r} matches no module (a name must match exactly or as a "
                                 f"dotted suffix); {hint}")
    wrong = {name: type(m).__name__ for name, m in found.items() if not isinstance(m, layer_types)}
    if wrong:
        listed = ", ".join(f"{n} ({k})" for n, k in wrong.items())
        raise ValueError(f"target(s) {listed} are not {kinds}: LoRA here adapts {kinds} layers only; "
                         f"remove them from target_modules. {hint}")
    return found


def replace_modules(model: nn.Module, target_modules, make_layer: Callable[[str, nn.Module], nn.Module],
                     check: Callable[[str, nn.Module], None] | None = None,
                     layer_types=(nn.Linear,)) -> dict[str, nn.Module]:
    """Swap each targeted layer for `make_layer(name, layer)`, in place; returns name -> new layer.

    Matching follows peft (exact name or dotted suffix; a string is a full-match regex). Every match is
    validated first — it exists, is one of `layer_types`, is not adapted yet, and passes `check(name, layer)`
    (raise ValueError there) — and every new layer is built before the first swap, so on any error the model
    is unchanged.
    """
    if not callable(make_layer) or (check is not None and not callable(check)):
        raise ValueError(f"make_layer (and check, if given) must be functions of (name, layer), got "
                         f"{type(make_layer).__name__} and {type(check).__name__}: "
                         "e.g. lambda name, m: LoRALinear(m, 4, 8)")
    found = find_targets(model, target_modules, layer_types)
    if check is not None:
        for name, module in found.items():
            check(name, module)
    new = {name: make_layer(name, module) for name, module in found.items()}
    for name, layer in new.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return new


def add_lora(model: nn.Module, target_modules: str | Iterable[str], r: int, alpha: float, dropout: float = 0.0,
             rslora: bool = False) -> nn.Module:
    """Replace each targeted nn.Linear by a LoRALinear (in place) and freeze everything else; returns model.

    target_modules: names like ["fc2", "fc3"], matching a module's full name or its dotted suffix (peft's
    rule), or one regex string that must match a full name. Afterwards only lora_A / lora_B require grad:
    r·(d_in + d_out) trainable parameters per adapted layer. On any ValueError the model is unchanged.
    """
    check_lora_args(r, alpha, dropout, rslora)
    replace_modules(model, target_modules, lambda name, m: LoRALinear(m, r, alpha, dropout, rslora),
                     check=lambda name, m: check_rank_fits(name, m, r))
    freeze_all_but_lora(model)
    return model


def freeze_all_but_lora(model: nn.Module) -> None:
    """requires_grad=True for every lora_A / lora_B weight, False for every other parameter."""
    lora = {id(p) for m in lora_layers(model).values() for p in (m.lora_A.weight, m.lora_B.weight)}
    for p in model.parameters():
        p.requires_grad_(id(p) in lora)


def _check_mergeable(model: nn.Module, layers: dict[str, LoRALinear]) -> None:
    """ValueError, before any layer is merged, if a layer cannot merge or its W₀ is shared with another tensor."""
    if not layers:
        raise ValueError("the model has no LoRA layers to merge: call add_lora (or load_adapter) first")
    refused = {name: _merge_refusal(m) for name, m in layers.items() if not m.merged and _merge_refusal(m)}
    if refused:
        raise ValueError(f"layer(s) {', '.join(refused)}: {next(iter(refused.values()))} (nothing was merged)")
    owners: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        owners.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    for name, m in layers.items():
        if not _merge_refusal(m):
            sharing = [n for n in owners.get(m.base.weight.untyped_storage().data_ptr(), [])
                       if n != f"{name}.base.weight"]
            if sharing:
                raise ValueError(f"the weight of LoRA layer {name!r} shares its memory with {', '.join(sharing)}: "
                                 "merging would change those too; nothing was merged. Untie it first, e.g. "
                                 f"model.get_submodule({name + '.base'!r}).weight = "
                                 "nn.Parameter(w.detach().clone(), requires_grad=False)")


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer (W₀ <- W₀ + s·BA); inference then costs what the base model costs.

    All layers are checked first (each can merge; no W₀ is shared with another layer), so on ValueError
    no layer is merged.
    """
    layers = lora_layers(model)
    _check_mergeable(model, layers)
    for m in layers.values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo `merge_lora` in every LoRA layer (to train on, or to swap adapters)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to unmerge: call add_lora (or load_adapter) first")
    for m in layers.values():
        m.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer and put its (now updated) base layer back: a plain model, no LoRA modules.

    In place; returns the model. The base layers keep requires_grad=False, as add_lora left them. Every layer
    is checked before the first merge, so on ValueError the model is unchanged.
    """
    layers = lora_layers(model)
    _check_mergeable(model, layers)
    for name, m in layers.items():
        m.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, m.base)
    return model


def _adapter_config(layers: dict[str, LoRALinear]) -> dict:
    settings = {(m.r, m.alpha, _dropout_p(m), m.rslora) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"the LoRA layers disagree on (r, alpha, dropout, rslora): {sorted(settings)}; one adapter "
                         "file holds one setting — adapt all layers in a single add_lora call")
    r, alpha, dropout, rslora = settings.pop()
    alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
    return {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": sorted(layers),
            "lora_dropout": dropout, "use_rslora": rslora, "bias": "none"}


def _dropout_p(m: LoRALinear) -> float:
    return float(m.lora_dropout.p) if isinstance(m.lora_dropout, nn.Dropout) else 0.0


_MODEL_CARD = """---
library_name: peft
tags:
- lora
---

# LoRA adapter

A LoRA adapter written by `helpers.lora.save_adapter` in peft's file layout.

- rank r = {r}, lora_alpha = {lora_alpha}, use_rslora = {use_rslora} (scaling = {scaling:.4g}), \
lora_dropout = {lora_dropout}
- adapted layers: {targets}
- trainable parameters: {n_params:,d}

Load it onto the same base model with either

```python
from helpers.lora import load_adapter
model = load_adapter(base_model, "path/to/this/folder")
```

or

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "path/to/this/folder")
```
"""


def save_adapter(model: nn.Module, directory: str | Path, card: dict | None = None,
                 extra_files: dict[str, bytes] | None = None, modules_to_save=None) -> Path:
    """Write the model's LoRA adapter to `directory` (created if needed) in peft's layout; returns the path.

    Files: adapter_model.safetensors (keys base_model.model.<module>.lora_A.weight / .lora_B.weight),
    adapter_config.json (peft_type "LORA", r, lora_alpha, target_modules = the adapted layers' full names,
    lora_dropout, use_rslora, bias "none") and a short model card README.md. Only A and B are stored.
    Everything is checked and serialised first, then each file is written beside its target and renamed into
    place, so a refused call leaves an existing adapter in `directory` exactly as it was.

    card (optional, for sharing): {"base_model": str, "task": str, "metrics": {name: number}, and optionally
    "how_to_load": str (a code block's contents), "versions": {package: version} (default: the installed
    torch, transformers, peft, safetensors), "notes": str} -> README.md becomes a model card stating the base
    model, the task, the metrics, how to load it and the pinned versions (`model_card`). Without `card` the
    short README is written, as before. extra_files (optional): {file name: bytes} written into the folder in
    the same atomic step (e.g. a classification head as safetensors bytes); plain names only, not the three above.
    modules_to_save (optional): names of whole modules trained beside the adapter (e.g. ["head"]), stored as peft
    stores its `modules_to_save` (keys base_model.model.<module>.<parameter>, the config lists them), so
    `peft.PeftModel.from_pretrained` and `load_adapter` both restore them.
    """
    from safetensors.torch import save

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save: call add_lora (or load_adapter) first")
    config = _adapter_config(layers)
    if not isinstance(directory, (str, Path)) or not str(directory):
        raise ValueError(f"directory must be a folder path (str or Path), got {directory!r}: e.g. 'adapters/run1'")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file, not a directory: pass a folder path for the adapter")
    below = next((p for p in directory.parents if p.exists() or p.is_symlink()), None)
    if below is not None and not below.is_dir():
        raise ValueError(f"{below} is a file, so the folder {directory} cannot be created below it: pass a folder "
                         "path whose parents are folders (or remove that file)")
    tensors = {}
    for name, m in layers.items():
        for which, w in (("A", m.lora_A.weight), ("B", m.lora_B.weight)):
            if not bool(torch.isfinite(w).all()):
                raise ValueError(f"lora_{which} of layer {name!r} contains NaN or inf (training diverged): an adapter "
                                 "that poisons every output is not saved; retrain with a lower lr")
            tensors[f"{KEY_PREFIX}{name}.lora_{which}.weight"] = w.detach().cpu().contiguous()
    if modules_to_save is not None:
        saved = _modules_to_save_tensors(model, modules_to_save)
        tensors.update(saved)
        config["modules_to_save"] = list(modules_to_save)
    scaling = config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
    files = {WEIGHTS_NAME: save(tensors, metadata={"format": "pt"}),
             CONFIG_NAME: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
             "README.md": (_MODEL_CARD.format(**config, scaling=scaling, targets=", ".join(config["target_modules"]),
                                              n_params=sum(t.numel() for t in tensors.values())) if card is None
                           else model_card(config, sum(t.numel() for t in tensors.values()), card)).encode(),
             **_check_extra_files(extra_files)}
    blocked = [name for name in files if (directory / name).exists() and not (directory / name).is_file()]
    if blocked:
        raise ValueError(f"{', '.join(blocked)} in {directory} is not a file (a folder?): remove it or pick "
                         "another directory")
    directory.mkdir(parents=True, exist_ok=True)
    _write_files_atomically(directory, files)
    return directory


_CARD_KEYS = {"base_model", "task", "metrics", "how_to_load", "versions", "notes"}
PINNED_PACKAGES = ("torch", "transformers", "peft", "safetensors")


def installed_versions(packages=PINNED_PACKAGES) -> dict[str, str]:
    """{package: installed version} (importlib.metadata), "not installed" for a missing one."""
    from importlib import metadata
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def model_card(config: dict, n_params: int, card: dict) -> str:
    """A Hugging Face model card (README.md) for a LoRA adapter: YAML front matter (base_model, library_name,
    tags, metrics) and sections saying what the adapter is, for which base model and task, how well it does,
    how to load it, and the versions it was made with. `config` is the adapter_config.json dict, `n_params` the
    stored LoRA numbers, `card` as in `save_adapter`. ValueError naming the key and the fix on a bad `card`."""
    if not isinstance(card, dict):
        raise ValueError(f"card must be a dict such as {{'base_model': ..., 'task': ..., 'metrics': {{...}}}}, got "
                         f"{type(card).__name__}")
    unknown = sorted(set(card) - _CARD_KEYS)
    if unknown:
        raise ValueError(f"unknown card key(s) {unknown}: use {sorted(_CARD_KEYS)}")
    for k in ("base_model", "task"):
        if not isinstance(card.get(k), str) or not card[k].strip():
            raise ValueError(f"card[{k!r}] must be a non-empty str (the model card states it), got {card.get(k)!r}")
    metrics = card.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and isinstance(v, Real) and not isinstance(v, bool)
                                                and math.isfinite(v) for k, v in metrics.items()):
        raise ValueError(f"card['metrics'] must map names to finite numbers, e.g. {{'test accuracy': 0.93}}, "
                         f"got {metrics!r}")
    versions = card.get("versions", installed_versions())
    if not isinstance(versions, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in versions.items()):
        raise ValueError(f"card['versions'] must map package names to version strings, got {versions!r}")
    for k in ("how_to_load", "notes"):
        if k in card and not isinstance(card[k], str):
            raise ValueError(f"card[{k!r}] must be a str, got {type(card[k]).__name__}")
    how = card.get("how_to_load", "from transformers import AutoModel\nfrom peft import PeftModel\n\n"
                   f"base = AutoModel.from_pretrained({card['base_model']!r})\n"
                   "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")  # or the Hub repo id")
    scaling = config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
    lines = ["---", f"base_model: {card['base_model']}", "library_name: peft", "tags:", "- lora"]
    if metrics:
        lines += ["metrics:"] + [f"- {k}: {v:.4g}" for k, v in metrics.items()]
    lines += ["---", "", f"# LoRA adapter for {card['base_model']}: {card['task']}", "",
              f"- **base model**: {card['base_model']}", f"- **task**: {card['task']}",
              f"- **adapter**: LoRA, rank r = {config['r']}, lora_alpha = {config['lora_alpha']} (scaling "
              f"{scaling:.4g}), use_rslora = {config['use_rslora']}, lora_dropout = {config['lora_dropout']}, "
              f"{n_params:,} numbers", f"- **adapted layers**: {', '.join(config['target_modules'])}", ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()] + [""]
    lines += ["## How to load", "", "```python", how, "```", ""]
    if card.get("notes"):
        lines += ["## Notes", "", card["notes"], ""]
    lines += ["## Versions it was made with", ""] + [f"- {k} {v}" for k, v in versions.items()] + [""]
    return "\n".join(lines)


def _check_extra_files(extra_files) -> dict[str, bytes]:
    """{name: bytes} -> the same dict, or ValueError for a name that is not a plain file name or is reserved."""
    if extra_files is None:
        return {}
    if not isinstance(extra_files, dict):
        raise ValueError(f"extra_files must be a dict {{file name: bytes}}, got {type(extra_files).__name__}")
    for name, payload in extra_files.items():
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"extra file name {name!r} must be a plain file name (no folders), "
                             "e.g. 'head.safetensors'")
        if name in (WEIGHTS_NAME, CONFIG_NAME, "README.md"):
            raise ValueError(f"extra file {name!r} would overwrite the adapter's own file: pick another name, "
                             "or pass card= for README.md")
        if not isinstance(payload, (bytes, bytearray)):
            raise ValueError(f"extra file {name!r} must be bytes (e.g. safetensors.torch.save(tensors)), "
                             f"got {type(payload).__name__}")
    return {name: bytes(payload) for name, payload in extra_files.items()}


def export_merged(model: nn.Module, directory: str | Path) -> Path:
    """Merge the LoRA layers into a *copy* of `model` and save it as a plain checkpoint in a new folder.

    The copy's LoRA layers are merged and unloaded (W₀ + s·BA, no LoRA modules left); a transformers model
    (one with `save_pretrained`, e.g. a BertModel) is saved with it (config.json + model.safetensors, which
    `AutoModel.from_pretrained(directory)` loads), any other module as model.safetensors of its state_dict.
    `model` itself is not changed. Refused before anything is written: a model without LoRA layers, a layer
    that cannot merge (a 4-bit base), and an existing `directory` (an export never overwrites: pick a new
    folder or delete the old one). The files are written into a temporary folder beside `directory`, which is
    then renamed into place, so a failure leaves no half-written export.
    """
    import copy
    import shutil

    if not isinstance(directory, (str, Path)) or not str(directory):
        raise ValueError(f"directory must be a folder path (str or Path), got {directory!r}: e.g. 'adapters/merged'")
    directory = Path(directory)
    _check_mergeable(model, lora_layers(model))
    if directory.exists():
        raise ValueError(f"{directory.name!r} already exists: a merged export never overwrites a folder; pick a new "
                         "folder name or delete the old export first")
    if not directory.parent.is_dir():
        raise ValueError(f"the parent folder of {directory.name!r} does not exist: create it first")
    merged = merge_and_unload(copy.deepcopy(model))
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        if hasattr(merged, "save_pretrained"):
            merged.save_pretrained(tmp)
        else:
            from safetensors.torch import save_file
            tensors = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
            save_file(tensors, str(tmp / "model.safetensors"))
        os.rename(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def _modules_to_save_tensors(model: nn.Module, names) -> dict[str, torch.Tensor]:
    """peft's keys for whole saved modules: base_model.model.<module>.<parameter> -> tensor (ValueError if absent)."""
    if isinstance(names, str) or not hasattr(names, "__iter__") or not list(names) or \
            not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"modules_to_save must be a non-empty list of module names, e.g. ['head'], got {names!r}")
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in modules or name in lora_layers(model):
            raise ValueError(f"modules_to_save: {name!r} is not a (non-LoRA) module of the model; modules at the top "
                             f"level: {', '.join(n for n in modules if n and '.' not in n)}")
        for pname, t in modules[name].named_parameters():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}.{pname} contains NaN or inf: a module that poisons every output is not saved")
            out[f"{KEY_PREFIX}{name}.{pname}"] = t.detach().cpu().contiguous()
    return out


def _write_files_atomically(directory: Path, files: dict[str, bytes]) -> None:
    """Write every file to a temporary file beside its target, then rename them all into place (os.replace).

    A failure while writing removes the temporary files and leaves the old files as they were.
    """
    temps: dict[str, str] = {}
    try:
        for name, payload in files.items():
            fd, temps[name] = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        for name, tmp in temps.items():
            os.replace(tmp, directory / name)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{CONFIG_NAME} is missing in the adapter folder {directory.name!r}: save the adapter "
                         "with save_adapter (or peft's save_pretrained), which writes it next to the weights")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{CONFIG_NAME} in {directory.name!r} is not valid JSON ({e}); it is corrupt: "
                         "save the adapter again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_NAME} in {directory.name!r} must hold a JSON object, got "
                         f"{type(config).__name__}; save the adapter again")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{CONFIG_NAME} has peft_type={config.get('peft_type')!r}, expected 'LORA': only LoRA "
                         "adapters load here; use peft for other adapter types")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        raise ValueError(f"{CONFIG_NAME} lacks {', '.join(missing)}: the file is incomplete; save the adapter again")
    config = {"lora_dropout": 0.0, "use_rslora": False, "bias": "none", **config}
    if config["bias"] != "none":
        raise ValueError(f"{CONFIG_NAME} has bias={config['bias']!r}: adapters that train biases are not "
                         "implemented here (only bias='none'); load this adapter with peft instead")
    unsupported = {k: v for k, v in config.items() if k not in _CORE_KEYS | _METADATA_KEYS and v}
    if unsupported:
        listed = ", ".join(f"{k}={v!r}" for k, v in sorted(unsupported.items()))
        raise ValueError(f"{CONFIG_NAME} uses features helpers.lora does not implement ({listed}); "
                         "load this adapter with peft.PeftModel.from_pretrained instead")
    saved = config.get("modules_to_save")
    if saved is not None and (not isinstance(saved, list) or not all(isinstance(t, str) and t for t in saved)):
        raise ValueError(f"modules_to_save in {CONFIG_NAME} must be a list of module names, got {saved!r}; "
                         "save the adapter again")
    targets = config["target_modules"]
    if not isinstance(targets, (str, list)) or (isinstance(targets, list)
                                                and not all(isinstance(t, str) for t in targets)):
        raise ValueError(f"target_modules in {CONFIG_NAME} must be layer names, got {targets!r}; "
                         "save the adapter again")
    try:
        check_lora_args(config["r"], config["lora_alpha"], config["lora_dropout"], config["use_rslora"])
    except ValueError as e:
        raise ValueError(f"{CONFIG_NAME} is invalid: {e}") from None
    return config


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        other = " (a pickled adapter_model.bin is there: it is never unpickled here; re-save it as safetensors)" \
            if (directory / "adapter_model.bin").exists() else ""
        raise ValueError(f"{WEIGHTS_NAME} is missing in the adapter folder {directory.name!r}{other}: save the "
                         "adapter with save_adapter (or peft's save_pretrained)")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"{WEIGHTS_NAME} in {directory.name!r} is corrupt or truncated ({type(e).__name__}: {e}); "
                         "save the adapter again") from None


def load_adapter(model: nn.Module, directory: str | Path, inject: Callable = add_lora) -> nn.Module:
    """Insert and load a saved LoRA adapter (ours or peft's) into a fresh base model, in place; returns it.

    Reads adapter_config.json and adapter_model.safetensors only (never a pickle). Config, tensor keys and
    shapes are all checked against the model before it is touched, so on any ValueError the model is exactly
    as it was. `inject` builds the layers (default add_lora; e.g. add_qlora for a quantised base); the random A
    it draws is overwritten, inside `torch.random.fork_rng`, so the caller's global RNG state is left as it was.
    """
    if not isinstance(directory, (str, Path)):
        raise ValueError(f"directory must be a folder path (str or Path), got {type(directory).__name__}: pass "
                         "the folder save_adapter wrote")
    directory = Path(directory)
    if directory.is_file():
        raise ValueError(f"{str(directory)!r} is a file, not an adapter folder: pass the folder that holds "
                         f"{WEIGHTS_NAME} and {CONFIG_NAME}, here {str(directory.parent)!r}")
    if not directory.is_dir():
        raise ValueError(f"adapter folder {str(directory)!r} does not exist: pass the folder save_adapter wrote")
    config = _read_config(directory)
    tensors = _read_weights(directory)
    r = config["r"]

    by_module: dict[str, dict[str, torch.Tensor]] = {}
    saved_names = config.get("modules_to_save") or []
    whole: dict[str, dict[str, torch.Tensor]] = {}  # peft's modules_to_save: module -> parameter -> tensor
    for key, t in tensors.items():
        match = _KEY.match(key)
        owner = next((m for m in saved_names if key.startswith(f"{KEY_PREFIX}{m}.")), None)
        if match is None and owner is not None:
            whole.setdefault(owner, {})[key[len(f"{KEY_PREFIX}{owner}."):]] = t
            continue
        if match is None:
            raise ValueError(f"unexpected tensor {key!r} in {WEIGHTS_NAME}: expected only "
                             f"{KEY_PREFIX}<module>.lora_A.weight / .lora_B.weight; this is not a plain LoRA adapter")
        by_module.setdefault(match["module"], {})[match["which"]] = t
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers: load the adapter into a fresh base model "
                         "(or call merge_and_unload first)")
    found = find_targets(model, config["target_modules"])
    missing = sorted(set(found) - set(by_module))
    extra = sorted(set(by_module) - set(found))
    if missing or extra:
        raise ValueError(f"adapter and model disagree: target_modules {config['target_modules']!r} selects "
                         f"{sorted(found)}, the weights cover {sorted(by_module)} (missing weights for {missing}, "
                         f"weights for no targeted layer: {extra}); load it into the base model it was trained on")
    for name, layer in found.items():
        pair = by_module[name]
        expected = {"A": (r, layer.in_features), "B": (layer.out_features, r)}
        for which, shape in expected.items():
            if which not in pair:
                raise ValueError(f"missing key {KEY_PREFIX}{name}.lora_{which}.weight in {WEIGHTS_NAME}: "
                                 "the file is incomplete; save the adapter again")
            t = pair[which]
            if tuple(t.shape) != shape or not t.is_floating_point():
                raise ValueError(f"{KEY_PREFIX}{name}.lora_{which}.weight has shape {tuple(t.shape)} ({t.dtype}), "
                                 f"but layer {name!r} ({layer.out_features}x{layer.in_features}) with r={r} needs "
                                 f"{shape} floats; load it into the base model it was trained on")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{KEY_PREFIX}{name}.lora_{which}.weight contains NaN or inf: the adapter is "
                                 "corrupt or its training diverged; save a finite adapter again")

    modules = dict(model.named_modules())
    for name in saved_names:
        params = dict(modules[name].named_parameters()) if name in modules else None
        got = whole.get(name, {})
        if params is None or set(params) != set(got) or any(params[k].shape != got[k].shape for k in got):
            have = {k: tuple(v.shape) for k, v in (params or {}).items()}
            held = {k: tuple(v.shape) for k, v in got.items()}
            raise ValueError(f"modules_to_save {name!r}: the file holds {held}, "
                             f"the model has {have if params is not None else 'no such module'}; load it into the "
                             "model it was trained on (same head size)")
        if not all(bool(torch.isfinite(v).all()) for v in got.values()):
            raise ValueError(f"modules_to_save {name!r} contains NaN or inf: the adapter is corrupt")

    with torch.random.fork_rng():  # inject draws A's initial values, overwritten below: the caller's RNG is untouched
        inject(model, config["target_modules"], r=r, alpha=config["lora_alpha"], dropout=config["lora_dropout"],
               rslora=config["use_rslora"])
    layers = lora_layers(model)
    with torch.no_grad():
        for name, pair in by_module.items():
            layers[name].lora_A.weight.copy_(pair["A"])
            layers[name].lora_B.weight.copy_(pair["B"])
        for name, got in whole.items():
            params = dict(modules[name].named_parameters())
            for k, v in got.items():
                params[k].copy_(v)
    return model
