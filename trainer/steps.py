"""One optimizer step's gradients as the loop computes them: each micro-batch's forward pass under the run's
precision, then its backward pass. The loop (`trainer.loop.Trainer`) and the dry run's timing
(`trainer.step_timing`) both run this code, so the time the dry run shows is the time of the run's own step."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.objective import ModelInputs
from trainer.optimization import Optimization, autocast


def accumulate_gradients(
    loss: nn.Module,
    optimization: Optimization,
    inputs: list[ModelInputs],
    *,
    scale: float,
    device: torch.device,
    precision: str,
) -> float:
    """Add the gradients of every micro-batch of `inputs` (each micro-batch's summed NLL times `scale`); returns
    the summed NLL. `loss` is the `AnswerNll` module, or its DistributedDataParallel wrapper, which then exchanges
    the gradients once, after the last micro-batch."""
    nll_sum = 0.0
    for index, item in enumerate(inputs):
        last = index == len(inputs) - 1
        distributed = isinstance(loss, DistributedDataParallel)
        sync = loss.no_sync() if distributed and not last else contextlib.nullcontext()
        with sync:
            with autocast(precision):
                nll = loss(**vars(item.to(device)))
            optimization.backward(nll * scale)
        nll_sum += float(nll.detach())
    return nll_sum
