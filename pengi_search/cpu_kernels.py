"""Matrix products on the CPU through oneDNN, for the engine's float32 inference.

PyTorch computes `nn.Linear` (and GPT-2's `Conv1D`, an `addmm`) on the CPU with MKL, which on CPUs not made by
Intel runs its AVX2 kernels whatever the CPU offers. oneDNN, which PyTorch also ships, picks its kernels by
instruction set: on this project's AVX-512 development machine (AMD EPYC) it multiplies GPT-2's and HTSAT's
matrices about twice as fast in float32 (benchmarks/README.md, "Where the time goes"). The arithmetic is the same
float32 product with a different summation order, so results move by float rounding only, as they do between
MKL's own kernels; beams stay identical (tests/test_reference_parity.py runs the converted model too).

`use_onednn_linear` converts a model in place for inference; with gradients on, the converted layers fall back to
PyTorch's product (oneDNN's operator has no backward pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gpt2 import Conv1D, is_conv1d


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused linear operator (x86 builds with MKLDNN do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDnnLinear(nn.Module):
    """y = x W^T + b through oneDNN, for inputs of any leading shape. `weight` is the replaced layer's own
    parameter, shared: (out, in) for an `nn.Linear`, (in, out) for a GPT-2 `Conv1D` (`transposed`), which oneDNN
    reads through a transposed view as fast and with the same result as a contiguous copy. The state dict's names
    and shapes are the replaced layer's."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, transposed: bool) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.transposed = transposed

    @classmethod
    def of(cls, layer: nn.Linear | Conv1D) -> OneDnnLinear:
        return cls(layer.weight, layer.bias, transposed=is_conv1d(layer))

    @property
    def matrix(self) -> torch.Tensor:
        """The weight as (out, in)."""
        return self.weight.t() if self.transposed else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:  # oneDNN's operator has no backward pass
            return F.linear(x, self.matrix, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.matrix, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        out_features, in_features = self.matrix.shape
        return f"in_features={in_features}, out_features={out_features}, bias={self.bias is not None}"


def _convertible(layer: nn.Module) -> bool:
    """float32 `nn.Linear` (exactly that class: subclasses such as attention's output projection are read by
    their owner's own code) or GPT-2 `Conv1D` layers on the CPU."""
    if type(layer) is not nn.Linear and not is_conv1d(layer):
        return False
    return layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32


def use_onednn_linear(model: nn.Module) -> int:
    """Route every float32 CPU linear layer of `model` through oneDNN, in place; returns how many were converted
    (0 when this PyTorch has no oneDNN). Modules whose forward reads their children's weights directly
    (`nn.MultiheadAttention`) are left alone."""
    if not onednn_available():
        return 0
    converted = 0
    for parent in list(model.modules()):
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for name, child in list(parent.named_children()):
            if _convertible(child):
                setattr(parent, name, OneDnnLinear.of(child))
                converted += 1
    return converted


def linear_gelu(layer: nn.Module, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(layer(x)) (`approximate`: "none", the erf form, or "tanh", GPT-2's); computed inside the product, without
    a second pass over its output, when `layer` is oneDNN's."""
    if isinstance(layer, OneDnnLinear) and not torch.is_grad_enabled():
        return torch.ops.mkldnn._linear_pointwise(x, layer.matrix, layer.bias, "gelu", [], approximate)
    return F.gelu(layer(x), approximate=approximate)


def linear_add(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + layer(x); the sum is written by the product itself when `layer` is oneDNN's."""
    if isinstance(layer, OneDnnLinear) and not torch.is_grad_enabled():
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.matrix, layer.bias, "add")
    return residual + layer(x)
