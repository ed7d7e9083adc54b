"""`--fast`: faster generation whose answers are close to, but not bit-identical with, exact mode (the default).

Exact mode computes in float32 what the original Pengi computes. Fast mode trades that for speed, in three ways
(benchmarks/README.md measures each one's speed and its agreement with exact mode on real recordings):

- precision `bf16`: the language model's weights in bfloat16 and the audio encoder and mappers under bf16 autocast,
  where the hardware computes bfloat16 natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs);
- precision `int8`: on other CPUs, int8 dynamic quantisation of the language model's linear layers (GPT-2's
  Conv1D layers are turned into the equivalent `nn.Linear` first, since only those are quantised);
- `greedy`: one beam instead of `--beam`, for every prompt.

`--fast` takes the best precision the device has, and greedy decoding.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .choices import EXACT_MODE
from .gpt2 import is_conv1d
from .model import Pengi

Precision = Literal["fp32", "bf16", "int8"]


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (without it, bf16 is emulated and slower than float32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence looked up with care
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@dataclass(frozen=True)
class FastMode:
    precision: Precision = "fp32"
    greedy: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> FastMode:
        """What `--fast` means on `device`: bf16 where it is native, else int8 (CPU), and greedy decoding."""
        native_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
        return cls("bf16" if native_bf16 else "int8", greedy=True)

    def __str__(self) -> str:
        parts = [] if self.precision == "fp32" else [self.precision]
        return "+".join(parts + ["greedy"] * self.greedy) or EXACT_MODE


def autocast(device: torch.device, mode: FastMode | None) -> contextlib.AbstractContextManager:
    """Where the encoders and mappers compute in bf16: always on CUDA, and on a CPU in bf16 fast mode."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if mode is not None and mode.precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def apply(model: Pengi, mode: FastMode, device: torch.device) -> None:
    """Convert the model in place for `mode` (the precision part; greedy decoding is the engine's)."""
    if mode.precision == "bf16":
        model.gpt.to(torch.bfloat16)
    elif mode.precision == "int8":
        if device.type != "cpu":
            raise ValueError("int8 quantisation runs on the CPU only")
        quantize_linear_layers(model.gpt)


def gpt2_conv1d_to_linear(module: nn.Module) -> None:
    """Replace every GPT-2 `Conv1D` (x @ W + b, W stored (in, out)) under `module` by the same `nn.Linear`."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if is_conv1d(child):
                fan_in, fan_out = child.weight.shape
                linear = nn.Linear(fan_in, fan_out, device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


def quantize_linear_layers(language_model: nn.Module) -> None:
    """In place: the linear layers hold int8 weights, and quantise their inputs on the fly."""
    gpt2_conv1d_to_linear(language_model)
    with warnings.catch_warnings():  # torch.ao's eager quantisation announces its move to torchao on every call
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(language_model, {nn.Linear}, dtype=torch.qint8, inplace=True)
