"""Model directories from a run: at its end (`model/`), at its best evaluation (`best-model/`), on Ctrl-C, and
from any of its checkpoints afterwards (`pengi-search train export CHECKPOINT`). Each loads like a released model
(`describe`, `index` and `classify` take it with `--model`)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pengi_search.checkpoint import CheckpointError
from pengi_search.hashing import file_sha256
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir, is_model_dir
from pengi_search.paths import shown_path
from pengi_search.tokenization import Tokenizers
from pengi_search.versions import software_versions
from pengi_search.written_aside import folder_written_aside
from trainer.checkpoint_files import run_folder
from trainer.config import TrainConfig, config_from_dict
from trainer.model_setup import apply_freezing, build_model, frozen_fingerprint
from trainer.state import load_checkpoint, load_model_state, seed_everything

MODEL_DIR = "model"
BEST_MODEL_DIR = "best-model"


def export_model(
    model: Pengi,
    tokenizers: Tokenizers,
    directory: Path,
    *,
    step: int,
    config: dict[str, Any],
    tasks: Sequence[str] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A model directory with the run's settings, step and training tasks (None: not known) recorded under
    `trained` in its config.json (`ModelDir.trained_tasks` reads them: `describe` asks a model what it learnt).

    Written whole or not at all: a second Ctrl-C, which interrupts at once, leaves the directory as it was (an
    earlier export of the run), never its new weights beside the old configuration."""
    trained = {"steps": step, "tasks": None if tasks is None else list(tasks), "config": config, **(extra or {})}
    with folder_written_aside(directory) as partial:
        model.save_pretrained(partial, tokenizers=tokenizers, extra={"trained": trained})
    return directory


def run_provenance(config: TrainConfig) -> dict[str, Any]:
    """What a trained model depends on beyond its configuration, which names the manifests by path only: each
    manifest's sha256 (one edited or regenerated in place keeps its path) and the software's versions. Recorded in
    every checkpoint and under `trained.provenance` in every model directory the run exports."""
    manifests = {"train": config.data.train, "validation": config.data.validation}
    data = {split: {"path": str(path), "sha256": file_sha256(path)} for split, path in manifests.items() if path}
    return {"manifests": data, "versions": software_versions()}


def changed_manifests(recorded: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, str]:
    """{split: path} of the manifests whose sha256 differs from the one `recorded` (a checkpoint's provenance;
    None, or a split it lacks: written before it was recorded, so not known to have changed)."""
    before = (recorded or {}).get("manifests", {})
    return {
        split: manifest["path"]
        for split, manifest in now["manifests"].items()
        if split in before and before[split]["sha256"] != manifest["sha256"]
    }


def finished_run_models(output_dir: Path, checkpoint: Path, step: int) -> tuple[Path | None, str]:
    """A finished run's model directory (None: it has none), and where its models are in words, the paths as the
    user would type them here: its model and best model, or the `train export` that writes one from `checkpoint`,
    the run's last, at `step`."""
    model_dir = output_dir / MODEL_DIR
    if _trained_steps(model_dir) != step:  # none, or an earlier stop's: the run's final export was interrupted
        return None, f"`pengi-search train export {shlex.quote(shown_path(checkpoint))}` writes its model"
    where = f"its model is in {shown_path(model_dir)}"
    if (output_dir / BEST_MODEL_DIR).is_dir():
        where += f" (the best evaluation's in {shown_path(output_dir / BEST_MODEL_DIR)})"
    return model_dir, where


def _trained_steps(model_dir: Path) -> int | None:
    """The step whose model `model_dir` holds, as its export recorded it; None when it holds no model of a run."""
    if not is_model_dir(model_dir):
        return None
    try:
        return ModelDir.read(model_dir).meta.get("trained", {}).get("steps")
    except CheckpointError:
        return None


def export_checkpoint(checkpoint: Path, output: Path | None = None) -> Path:
    """The model of a training checkpoint as a model directory (default: `<run>/model-step-<step>`, the run
    being the folder that holds its `checkpoints/`).

    The frozen parts are rebuilt from the sources the run's configuration names (as on resume) and checked
    against the fingerprint the checkpoint holds. The run's own files (its trained tokenizer) are read where the
    run lies now, not from the output_dir it was trained in: a run copied from another machine exports as is.
    """
    payload = load_checkpoint(checkpoint)
    config = config_from_dict(payload["config"], checkpoint, base=Path("/"))
    config.output_dir = run_folder(checkpoint, config.output_dir)
    seed_everything(config.seed)
    model, tokenizers = build_model(config, checkpoint)
    apply_freezing(model, config.freeze)
    if not config.checkpoints.full_model and payload["frozen_fingerprint"] != frozen_fingerprint(model):
        raise CheckpointError(checkpoint, "the frozen weights its configuration names have changed since the run")
    load_model_state(model, payload["model"], checkpoint)
    step = int(payload["position"]["step"])
    directory = output or config.output_dir / f"model-step-{step:08d}"
    tasks = payload.get("tasks")  # absent from checkpoints written before tasks were recorded
    extra = {"from": str(checkpoint)}
    if "provenance" in payload:  # absent from checkpoints written before it was recorded
        extra["provenance"] = payload["provenance"]
    return export_model(model, tokenizers, directory, step=step, config=payload["config"], tasks=tasks, extra=extra)
