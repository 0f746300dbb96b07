"""The MLPs used across the series, with named layers so adapters can target them by name; parameter counts."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from helpers.checks import check_int, check_seed


def mlp(sizes=(784, 200, 200, 10), seed: int = 0) -> nn.Sequential:
    """A ReLU MLP with layers named fc1, fc2, ... and a final linear layer named `head`.

    sizes: (d_in, hidden..., d_out), whole numbers >= 1; the paper's MNIST MLP is the default 784-200-200-10
    (D = 199,210 parameters). Weights use PyTorch's default init drawn after torch.manual_seed(seed) inside
    `torch.random.fork_rng()`: the same seed gives the same weights, and the caller's global RNG state is
    left exactly as it was.
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sizes must be a sequence of layer widths, got {sizes!r}; e.g. sizes=(784, 200, 10)")
    sizes = tuple(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output width, got {sizes}; e.g. (784, 10)")
    for i, s in enumerate(sizes):
        check_int(f"sizes[{i}]", s, 1, "sizes=(784, 200, 200, 10)")
    sizes = tuple(int(s) for s in sizes)
    seed = check_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers: list[tuple[str, nn.Module]] = []
        for i, (a, b) in enumerate(zip(sizes[:-2], sizes[1:-1]), start=1):
            layers += [(f"fc{i}", nn.Linear(a, b)), (f"act{i}", nn.ReLU())]
        layers.append(("head", nn.Linear(sizes[-2], sizes[-1])))
    return nn.Sequential(OrderedDict(layers))


def body(model: nn.Sequential) -> nn.Sequential:
    """Everything before `head`: the feature extractor a new task can reuse."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}: pass the model itself")
    return nn.Sequential(OrderedDict((name, m) for name, m in model.named_children() if name != "head"))


def with_new_head(model: nn.Sequential, n_out: int, seed: int = 0) -> nn.Sequential:
    """A copy-free re-headed model: the same body modules (shared, not copied) and a fresh `head`
    nn.Linear(d_head_in -> n_out), initialised under torch.manual_seed(seed) inside `fork_rng` (the caller's
    global RNG state is untouched)."""
    if not isinstance(model, nn.Sequential) or not isinstance(getattr(model, "head", None), nn.Linear):
        raise ValueError(f"with_new_head needs an nn.Sequential whose last layer is an nn.Linear named 'head' "
                         f"(as mlp() builds), got {type(model).__name__}; build the model with mlp()")
    n_out = check_int("n_out", n_out, 1, "n_out=2 for a binary task")
    seed = check_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Linear(model.head.in_features, n_out)
    return nn.Sequential(OrderedDict([*body(model).named_children(), ("head", head)]))


def n_params(model: nn.Module) -> int:
    """Total number of parameters, trainable or not (shared parameters counted once)."""
    return count_parameters(model)[1]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared parameters are counted once."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}: pass the model itself")
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def print_trainable_parameters(model: nn.Module) -> None:
    """Print the counts in peft's format: `trainable params: 52,162 || all params: 4,100,164 || trainable%: 1.2722`."""
    trainable, total = count_parameters(model)
    if total == 0:
        raise ValueError(f"{type(model).__name__} has no parameters, so there is no trainable fraction to print: "
                         "pass a model with at least one parameter")
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")
