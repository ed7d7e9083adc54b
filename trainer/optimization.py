"""What one optimizer step does with the gradients: Adam, linear warm-up and decay, clipping, mixed precision.

`Optimization` holds the optimizer, its learning-rate schedule and the gradient scaler (fp16) together, because
they are created, stepped, checkpointed and restored together; the loop only runs the forward passes and calls
`backward` for each micro-batch, then `step` once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from pengi_search.checkpoint import CheckpointError
from pengi_search.model import Pengi
from trainer.config import OptimizationSection
from trainer.model_setup import logged_rates, parameter_groups


def warmup_then_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor for step s (0-based): (s+1)/warmup while warming up, then down linearly to 1/(remaining steps)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The forward passes' mixed precision (`runtime.precision`; the configuration allows it on CUDA only)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Optimization:
    """One run's optimizer (a parameter group per part with its own rate), schedule and gradient scaler."""

    def __init__(
        self,
        model: Pengi,
        parameters: list[torch.nn.Parameter],
        config: OptimizationSection,
        *,
        total_steps: int,
        device: torch.device,
        precision: str,
    ) -> None:
        self.config = config
        self.parameters = parameters  # the trainable ones, whose gradients are clipped together
        groups = parameter_groups(model, config.lr, config.part_lr)
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = LambdaLR(self.optimizer, warmup_then_linear_decay(config.warmup_steps, total_steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def backward(self, loss: torch.Tensor) -> None:
        """Add one micro-batch's gradients (scaled under fp16, so that small ones do not underflow)."""
        self.scaler.scale(loss).backward()

    def step(self) -> tuple[float, dict[str, float]]:
        """Update the weights from the gradients gathered since the last step; the gradient norm before clipping,
        and the learning rates this step used (`logged_rates`)."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip or math.inf)
        # The rates of this step (the scheduler moves them on below); its factor scales every group alike, and
        # `optimization.lr` by it where no parameter trains at that rate.
        scheduled = self.config.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        rates = logged_rates(self.optimizer.param_groups, scheduled)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm), rates

    def state(self) -> dict[str, Any]:
        """The states a checkpoint keeps, each under its own key of the payload."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def restore(self, payload: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint's states (`path` names it in errors). The run's rates are the configured
        ones: a resume with others is refused before (`trainer.resume_plan`)."""
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except ValueError as error:
            raise CheckpointError(path, f"the optimizer state does not fit (freezing changed?): {error}") from None
        self.scheduler.load_state_dict(payload["scheduler"])
        # The resumed step's rate comes from this run's schedule, not from the checkpoint's optimizer: a length
        # given anew with --set plans the decay over it from the first resumed step on (same length: the same
        # rates, computed the same way).
        self.scheduler = LambdaLR(self.optimizer, self.scheduler.lr_lambdas, last_epoch=self.scheduler.last_epoch - 1)
        self.scaler.load_state_dict(payload["scaler"])
