"""The MLPs used across the series, with named layers so adapters can target them by name."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def mlp(sizes=(784, 200, 200, 10), seed: int = 0) -> nn.Sequential:
    """A ReLU MLP with layers named fc1, fc2, ... and a final linear layer named `head`.

    sizes: (d_in, hidden..., d_out); the paper's MNIST MLP is the default 784-200-200-10
    (D = 199,210 parameters). Weights use PyTorch's default init under torch.manual_seed(seed).
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output width, all >= 1; got {sizes}")
    torch.manual_seed(seed)
    layers: list[tuple[str, nn.Module]] = []
    for i, (a, b) in enumerate(zip(sizes[:-2], sizes[1:-1]), start=1):
        layers += [(f"fc{i}", nn.Linear(a, b)), (f"act{i}", nn.ReLU())]
    layers.append(("head", nn.Linear(sizes[-2], sizes[-1])))
    return nn.Sequential(OrderedDict(layers))


def body(model: nn.Sequential) -> nn.Sequential:
    """Everything before `head`: the feature extractor a new task can reuse."""
    return nn.Sequential(OrderedDict((name, m) for name, m in model.named_children() if name != "head"))


def with_new_head(model: nn.Sequential, n_out: int, seed: int = 0) -> nn.Sequential:
    """A copy-free re-headed model: the same body modules (shared, not copied) and a fresh `head`."""
    torch.manual_seed(seed)
    head = nn.Linear(model.head.in_features, n_out)
    return nn.Sequential(OrderedDict([*body(model).named_children(), ("head", head)]))


def n_params(model: nn.Module) -> int:
    """Total number of parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())
