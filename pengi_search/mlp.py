"""The two-layer feed-forward block of a transformer layer, shared by HTSAT's Swin blocks and the mappers."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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
