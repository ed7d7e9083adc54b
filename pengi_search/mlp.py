"""The two-layer feed-forward block of a transformer layer, shared by HTSAT's Swin blocks and the mappers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Mlp(nn.Module):
    """dim -> hidden -> dim with `activation` between; the weights are `fc1` and `fc2` (the checkpoints' names)."""

    def __init__(self, dim: int, hidden: int, activation: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))
