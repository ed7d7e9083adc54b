"""What a resume does with settings changed since its run started: a model of other sizes is one line naming the
setting, and every other change the run goes on with is said."""

from __future__ import annotations

import json
from pathlib import Path

from pengi_search.testing import tiny_clip_tokenizer, tiny_config, tiny_gpt2_tokenizer

from . import test_trainer
from .test_trainer import check_trained, local_parts, train_command, write_config

sounds = test_trainer.sounds  # the fixture: four sounds and their caption manifest

CHECKPOINT = Path("run") / "checkpoints" / "step-00000004.pt"


def scratch_run(folder: Path, manifest: Path) -> Path:
    """A run from scratch without a text encoder, every part trained: only its own sizes make its checkpoint fit."""
    architecture = tiny_config("base_no_text_enc", tiny_gpt2_tokenizer(), tiny_clip_tokenizer())
    local_parts(folder, tiny_config("base", tiny_gpt2_tokenizer(), tiny_clip_tokenizer()))
    shape = json.loads(json.dumps(architecture.to_dict()))  # tuples as lists, as YAML gives them
    model = {"init": None, "architecture": shape, "language_model": "gpt2", "text_encoder": None}
    return write_config(folder, folder, manifest, model=model, freeze={"language_model": False})


def test_a_resume_whose_model_has_other_sizes_is_one_line_naming_the_setting_and_the_dry_run_says_it(
    tmp_path, sounds
) -> None:
    """`--set model.architecture.d_proj=16` on resume built a model the checkpoint's weights do not fit: the dry run
    said "ready to train" and the run ended in load_state_dict's traceback. Now both say one line naming the
    tensors and the setting that differs from the run's (exit code 1: the run cannot start)."""
    config_path = scratch_run(tmp_path, sounds / "train.jsonl")
    check_trained(config_path)
    other_size = ("--resume", "--set", "optimization.max_steps=6", "--set", "model.architecture.d_proj=16")
    named = "; the model's settings differ from the run's: model.architecture.d_proj 16 (the run's: 32)"

    for dry_run in ([], ["--dry-run"]):
        result = train_command(config_path, *other_size, *dry_run)

        assert result.exit_code == 1, result.output
        (line,) = [line for line in result.output.splitlines() if "does not match" in line]
        assert f"{tmp_path / CHECKPOINT}: the checkpoint does not match the model (wrong shapes: " in line
        assert line.endswith(named)
        assert "Traceback" not in result.output


def test_a_resume_says_each_setting_it_goes_on_with_otherwise_than_its_run_and_not_the_free_ones(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """Augmentation, the answers' length, the model's dropout... changed on resume were taken without a word: the
    run went on otherwise than it was started. Each is said now, by the run and its dry run; what only watches or
    keeps the run (logging, evaluation, checkpoints, workers) changes silently, as before."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    check_trained(config_path)
    changes = ("data.max_answer_tokens=5", "augmentation.gain_db=3", "model.dropout=0.2")
    free = ("logging.every=2", "evaluation.every=5", "checkpoints.keep=1", "data.num_workers=1")
    options = [f"--set={setting}" for setting in ("optimization.max_steps=6", *changes, *free)]
    said = (
        "warning: the resumed run goes on with settings other than its own: augmentation.gain_db 3.0 (the run's: "
        "0.0), data.max_answer_tokens 5 (the run's: 77), model.dropout 0.2 (the run's: null)"
    )

    for dry_run in (["--dry-run"], []):
        result = train_command(config_path, "--resume", *options, *dry_run)

        assert result.exit_code == 0, result.output
        assert said in result.output.splitlines()


def test_a_resume_that_freezes_other_parts_says_so_with_the_setting_not_that_the_weights_differ(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """`--set freeze.text_encoder=false` on resume was refused as "the frozen weights differ from those this run
    started with", by the run only (the dry run said ready): the weights were the same, the frozen parts were not.
    Both say that now, with the setting."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    check_trained(config_path)
    unfrozen = ("--resume", "--set", "optimization.max_steps=6", "--set", "freeze.text_encoder=false")
    said = (
        f"{tmp_path / CHECKPOINT}: its run froze other weights than this configuration freezes; the model's settings "
        "differ from the run's: freeze.text_encoder false (the run's: true)"
    )

    for dry_run in ([], ["--dry-run"]):
        result = train_command(config_path, *unfrozen, *dry_run)

        assert result.exit_code == 1, result.output
        assert any(line.endswith(said) for line in result.output.splitlines()), result.output
