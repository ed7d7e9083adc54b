"""The two-layer feed-forward block of a transformer layer (HTSAT's Swin blocks, the mappers) and the activations
of the language models' blocks, by transformers' names."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def new_gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's `gelu_new`: the tanh approximation of GELU, written out as transformers writes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


# transformers' activation names (GPT-2's `activation_function`, CLIP's `hidden_act`) -> the function
ACTIVATIONS = {
    "gelu_new": new_gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "quick_gelu": quick_gelu,
    "relu": F.relu,
}


# activation(fc1(x)), given fc1 and x: a fused kernel (cpu_kernels.linear_gelu) may compute both in one pass.
FirstLayer = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def linear_relu(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(layer(x))


class Mlp(nn.Module):
    """dim -> hidden -> dim with an activation between; the weights are `fc1` and `fc2` (the checkpoints' names)."""

    def __init__(self, dim: int, hidden: int, first: FirstLayer):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.first(self.fc1, x))
