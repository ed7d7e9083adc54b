"""What a run prints where no progress bar is drawn (a log file, a pipe, a scheduler's output): its training loss."""

from __future__ import annotations

import io
import re

from rich.console import Console

import pengi_search.inference
from pengi_search.decoding import GenerationConfig, Hypothesis
from pengi_search.kv_cache import SharedPrefix
from pengi_search.model_dir import ModelDir
from trainer.reporting import METRICS_FILE, RateWindow, TrainingProgress, read_metrics

from . import test_trainer
from .test_progress import Screen
from .test_trainer import losses, train_command, write_config

sounds = test_trainer.sounds  # the fixture: four sounds and their caption manifest


def test_a_run_logged_to_a_file_prints_each_logged_loss_and_sums_it_up_at_the_end(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """Off a terminal the progress bar, the only place the training loss was shown, is not drawn: a run sent to a log
    (`train config.yaml > log`, nohup, SLURM) printed its evaluations but never its loss, nor whether it went down.
    Each logged step is a line now, and the run ends with its first and last loss."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", logging={"quiet": False, "every": 2})

    result = train_command(config_path)

    assert result.exit_code == 0, result.output
    (first, start), (last, end) = logged = losses(tmp_path / "run")
    assert [step for step, _ in logged] == [2, 4]
    lines = result.stderr.splitlines()
    for step, loss in logged:
        (line,) = [line for line in lines if line.startswith(f"step {step}/4: ")]
        assert re.fullmatch(rf"step {step}/4: loss {loss:.4f}, [0-9.]+ samples/s", line)
    summary = f"training loss {start:.4f} at step {first}, {end:.4f} at step {last}"
    assert lines.index(summary) == lines.index(f"model written to {tmp_path / 'run' / 'model'}") - 1


def test_on_a_terminal_the_loss_is_on_the_bar_not_on_lines_of_its_own() -> None:
    screen, log = Screen(), io.StringIO()
    for stream in (screen, log):
        with TrainingProgress(total=4, done=0, enabled=True, console=Console(file=stream, width=120)) as progress:
            progress.logged(2, RateWindow(), 1.5)
    assert "step 2/4: loss 1.5000" not in screen.getvalue()
    assert "loss 1.5000" in screen.getvalue()  # on the bar
    assert log.getvalue().splitlines() == ["step 2/4: loss 1.5000"]  # no rate yet: none said


def test_a_run_that_logged_its_loss_once_sums_it_up_once() -> None:
    """A run of 10 steps logged every 10 (the smoke set's first try) ended `training loss 6.2441 at step 10,
    6.2441 at step 10`."""
    log = io.StringIO()
    with TrainingProgress(total=10, done=0, enabled=True, console=Console(file=log, width=120)) as progress:
        progress.logged(10, RateWindow(), 6.2441)
        progress.summary()
    assert log.getvalue().splitlines()[-1] == "training loss 6.2441 at step 10"


def test_the_metrics_count_epochs_from_1_as_the_configuration_and_a_resume_do(tmp_path, sounds, tiny_model_dir) -> None:
    """A run of `optimization.epochs: 2` logged its last steps as epoch 1 (the position's index), while its resume
    says `epoch 2 of 2` for them: the metrics read as one epoch short of the run asked."""
    length = {"max_steps": None, "epochs": 2}  # 4 rows in batches of 2: 2 steps an epoch
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", optimization=length)

    result = train_command(config_path)

    assert result.exit_code == 0, result.output
    records = read_metrics(tmp_path / "run" / METRICS_FILE, "train")
    assert [(record["step"], record["epoch"]) for record in records] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_the_samples_a_run_prints_and_logs_end_before_a_character_their_length_limit_cut(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """The model writes "a café日本" (in 12 tokens of the tiny byte-level BPE: 本 is 3 of them) and
    `evaluation.max_len` stops it at 11: the sample showed and logged "a café日\ufffd"."""
    tokenizers = ModelDir.read(tiny_model_dir).tokenizers
    written = tokenizers.encode("a café日本")

    def writes_it(gpt: object, prefix: SharedPrefix, gen: GenerationConfig) -> list[list[Hypothesis]]:
        return [[Hypothesis(written[: gen.max_len], 0.0)] for _ in range(len(prefix.own))]

    monkeypatch.setattr(pengi_search.inference, "beam_search", writes_it)
    evaluation = {"every": 1, "samples": 1, "max_len": len(written) - 1}
    config_path = write_config(
        tmp_path,
        tiny_model_dir,
        sounds / "train.jsonl",
        logging={"quiet": False},
        evaluation=evaluation,
        optimization={"max_steps": 1},
    )

    result = train_command(config_path)

    assert result.exit_code == 0, result.output
    (record,) = read_metrics(tmp_path / "run" / METRICS_FILE, "samples")
    assert [sample["generated"] for sample in record["samples"]] == ["a café日"]
    assert "'generate audio caption' -> 'a café日' (reference " in result.stderr
