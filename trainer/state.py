"""Training checkpoints: everything a run needs to continue exactly where it stopped.

One file per checkpoint, `<output_dir>/checkpoints/step-00001000.pt`, written atomically by rank 0: the model
weights that training changes (or all of them), the optimizer, scheduler and gradient scaler states, the position
in the data (step, epoch, micro-batches read in the epoch) and every process's random number generators.
`RunCheckpoints` writes them and reads them back.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pengi_search.checkpoint import CheckpointError, CheckpointMismatchError, load_torch_file, state_problems
from pengi_search.paths import named
from pengi_search.written_aside import written_aside
from trainer.checkpoint_files import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    checkpoint_path,
    existing_checkpoint,
    list_checkpoints,
)
from trainer.distributed import gather_objects

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.distributed import Processes
    from trainer.optimization import Optimization
    from trainer.stopping import BestTracker

FORMAT = "pengi-search-training-state"
FORMAT_VERSION = 1


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches each process has read in this epoch

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def save_checkpoint(path: Path, payload: dict[str, Any], keep: int | None) -> Path:
    """Write atomically (a crash mid-write leaves the previous checkpoints intact), then keep the newest `keep`
    step checkpoints (None: leave the others alone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_aside(path, path.with_suffix(".pt.partial")) as partial:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, partial)
    if keep is not None:
        for old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink()
    return path


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint's payload; `mmap`: its tensors mapped from the file, not read (`load_torch_file`)."""
    payload = load_torch_file(existing_checkpoint(path), "training checkpoint", mmap=mmap)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(named(path), "not a pengi-search training checkpoint")
    return payload


def resident(value: Any) -> Any:
    """`value` with each tensor copied into memory. A tensor mapped from a checkpoint (`load_checkpoint(mmap=True)`)
    keeps the file mapped while it lives, and the optimizer keeps its states for the whole run: a file that the
    run's own rotation (`checkpoints.keep`) deletes would hold its disk space until the run ends."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: resident(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(resident(item) for item in value)
    return value


class RunCheckpoints:
    """A run's checkpoints, written and read back in one place: the state the loop changes (the trained weights,
    the optimizer's and the best evaluation's states, every process's random streams, the position) with what a
    resume and `train export` check it against (the configuration, the frozen weights' fingerprint, the training
    rows, tasks and length)."""

    def __init__(
        self,
        config: TrainConfig,
        processes: Processes,
        model: nn.Module,
        optimization: Optimization,
        best: BestTracker,
        *,
        fingerprint: str,
        train_examples: int,
        tasks: Sequence[str],
        total_steps: int,
        provenance: dict[str, Any],
    ) -> None:
        self.config, self.processes, self.model = config, processes, model
        self.optimization, self.best, self.fingerprint = optimization, best, fingerprint
        self.records = {
            "train_examples": train_examples,
            "tasks": list(tasks),
            "total_steps": total_steps,
            "provenance": provenance,  # `train export` records it in the model it writes
        }

    def write(self, position: Position, *, best: bool = False) -> Path | None:
        """Gather every process's random streams (each process calls this), then write on rank 0 the step's
        checkpoint, keeping the newest `checkpoints.keep`, or the best one. Its path on rank 0, else None."""
        rng = gather_objects(self.processes, capture_rng(self.processes.device))
        if not self.processes.main:
            return None
        folder = self.config.output_dir
        path = folder / CHECKPOINT_DIR / BEST_CHECKPOINT if best else checkpoint_path(folder, position.step)
        payload = {
            "position": position.to_dict(),
            "model": model_state(self.model, self.config.checkpoints.full_model),
            "frozen_fingerprint": self.fingerprint,
            **self.optimization.state(),
            "rng": rng,
            "data": {"seed": self.config.seed, "epoch": position.epoch},
            **self.records,
            "best": self.best.state(),
            "config": self.config.to_dict(),
        }
        return save_checkpoint(path, payload, keep=None if best else self.config.checkpoints.keep)

    def load(self, payload: dict[str, Any], path: Path) -> dict[str, Any]:
        """Continue from the checkpoint `path` of this run, its `payload` read: the weights copied into the model's
        own tensors, the optimizer's and the best evaluation's states restored. The rest of the payload, in memory
        (`resident`): the position, random streams and records are the caller's to use."""
        full_model = self.config.checkpoints.full_model
        if (mismatch := resume_mismatch(self.model, payload, path, self.fingerprint, full_model)) is not None:
            raise mismatch
        self.model.load_state_dict(payload["model"], strict=False)  # copied into the model's own tensors
        rest = resident({key: value for key, value in payload.items() if key != "model"})
        self.optimization.restore(rest, path)
        self.best.restore(rest.get("best", {}))
        return rest


# --- Model weights --------------------------------------------------------------------------------------------


def model_state(model: nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """The whole state, or all but the frozen parameters (which the run's set-up rebuilds)."""
    frozen = set() if full else {name for name, p in model.named_parameters() if not p.requires_grad}
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items() if name not in frozen}


def resume_mismatch(
    model: nn.Module, payload: dict[str, Any], source: Path, fingerprint: dict[str, float], full_model: bool
) -> CheckpointMismatchError | None:
    """Why the checkpoint `source` (its `payload`) does not fit `model`, whose frozen weights have `fingerprint`
    (`model_setup.frozen_fingerprint`): its frozen weights (when `full_model` left them out), then its tensors;
    None when it loads."""
    if not full_model and (mismatch := fingerprint_mismatch(payload["frozen_fingerprint"], fingerprint, source)):
        return mismatch
    return checkpoint_mismatch(model, payload["model"], source)


def fingerprint_mismatch(run: dict[str, float], now: dict[str, float], source: Path) -> CheckpointMismatchError | None:
    """Why the frozen weights built now (`model_setup.frozen_fingerprint`) are not those of the run that wrote the
    checkpoint `source`, which holds only the others: other parts frozen, or other weights; None when they are."""
    if run == now:
        return None
    if run.keys() != now.keys():
        return CheckpointMismatchError(source, "its run froze other weights than this configuration freezes")
    return CheckpointMismatchError(source, "the frozen weights differ from those this run started with")


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy a checkpoint's weights into `model`, or raise `checkpoint_mismatch`'s error."""
    if (mismatch := checkpoint_mismatch(model, state, source)) is not None:
        raise mismatch
    model.load_state_dict(state, strict=False)


def checkpoint_mismatch(
    model: nn.Module, state: dict[str, torch.Tensor], source: Path
) -> CheckpointMismatchError | None:
    """The one error that names the tensors of the checkpoint `source` (its weights `state`) that do not fit `model`
    (a model built with other sizes than the run's); None when they load. The frozen weights may be absent
    (`model_state`)."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if problems := state_problems(model.state_dict(), state, may_lack=frozen):
        return CheckpointMismatchError(source, f"the checkpoint does not match the model ({problems})")
    return None


# --- Random number generators ---------------------------------------------------------------------------------


def capture_rng(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),  # plain values: loadable with weights_only
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def rng_kept(device: torch.device) -> Iterator[None]:
    """Within, the random streams may be drawn from; after, they are as they were before (`capture_rng`): what
    happens within is not seen by what draws from them next (a run after the dry run's timed steps)."""
    state = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(state, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
