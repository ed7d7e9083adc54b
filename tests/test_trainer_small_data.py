"""Training on real audio, as a researcher meets it: a run stopped while it encodes its clips, and sets too small
for the batch (a dry run's plan, the rows an epoch leaves out)."""

from __future__ import annotations

from pathlib import Path
from signal import SIGINT

import numpy as np
import soundfile as sf
import torch

from pengi_search.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from trainer.config import load_config
from trainer.data import AudioTextDataset, project_load_audio, read_manifest
from trainer.features import cache_key, encode_clips
from trainer.model_setup import build_model

from .indexing import send_to_self
from .test_trainer_recipes import RATE, cli, label_run_config


class ReadsThenStops:
    """Stands in for the clips' decoder: reads each clip as the run would, noting its path, and sends this process
    SIGINT (Ctrl-C) as it starts the `stop_at`-th read."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.reads: list[Path] = []
        self.stop_at = stop_at

    def __call__(self, path: Path, *, sample_rate: int) -> np.ndarray:
        self.reads.append(path)
        if len(self.reads) == self.stop_at:
            send_to_self(SIGINT)
        return project_load_audio(path, sample_rate=sample_rate)


def test_a_run_stopped_while_it_encodes_keeps_what_it_encoded_and_its_next_start_encodes_only_the_rest(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """Ctrl-C while the frozen encoder's outputs were computed said only "interrupted" and lost every clip encoded:
    minutes of a CPU's work on real audio. The encodings are written as they are made; the stop says what it kept,
    and the same command then encodes only the clips it lacks."""
    label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_steps=1)  # 8 training clips, batches of 4
    monkeypatch.chdir(tmp_path)
    stopping = ReadsThenStops(stop_at=6)  # in the second batch: the first one's 4 clips are encoded
    monkeypatch.setattr("trainer.data.project_load_audio", stopping)
    result = cli("train", "run.yaml")
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert result.output.splitlines()[-1] == (
        "interrupted: the run stopped while encoding the training clips: 4 of 8 encodings made, kept in "
        "run/features; run the same command to encode only the rest"
    )
    training_clips = {example.audio for example in read_manifest(tmp_path / "train.jsonl")}
    reading = ReadsThenStops()
    monkeypatch.setattr("trainer.data.project_load_audio", reading)
    result = cli("train", "run.yaml")
    assert result.exit_code == EXIT_OK, result.output
    read_again = [path for path in reading.reads if path in training_clips]
    assert len(read_again) == 4 and not set(read_again) & set(stopping.reads[:4])


def test_an_edited_clip_is_encoded_again(tmp_path, tiny_no_text_model_dir) -> None:
    """The cache is keyed on the clips' files as they are now: a clip rewritten under its name is not read from the
    encodings of its old contents."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    config = load_config(config_path)
    model, _ = build_model(config, config_path)
    examples = read_manifest(tmp_path / "train.jsonl")
    dataset = AudioTextDataset(examples, train=True, seed=0)
    before = cache_key(model.audio_encoder.backbone, dataset, 1)
    assert cache_key(model.audio_encoder.backbone, dataset, 1) == before
    sf.write(examples[0].audio, np.zeros(RATE, dtype=np.float32), RATE)  # as long as it was: only its time tells
    assert cache_key(model.audio_encoder.backbone, dataset, 1) != before


def test_a_dry_run_with_too_few_examples_for_a_step_says_so_without_a_plan_of_no_steps(
    tmp_path, tiny_no_text_model_dir
) -> None:
    """It printed the error, then `steps per epoch 0, total steps 0`, `about 0.0 s an epoch` and a warning that
    warm-up is not shorter than a run of 0 steps: a plan of a run that cannot start."""
    overrides = {"data__batch_size": 64, "optimization__max_steps": None, "optimization__epochs": 2}
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, **overrides)
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_FAILED, result.output
    said = " ".join(result.output.split())
    assert "8 usable examples are too few for one step of batch_size 64" in said
    assert "plan:" not in said and "time:" not in said and "warm-up" not in said
    assert result.output.rstrip().endswith("cannot train")


def test_the_dry_run_says_how_many_rows_each_epoch_leaves_out_for_want_of_a_whole_step(
    tmp_path, tiny_no_text_model_dir
) -> None:
    """The loader keeps whole steps (batch_size x grad_accumulation): the rows past the last one are left out of
    the epoch, which the dry run did not say (8 of 56 rows of the smoke set, each epoch)."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, data__batch_size=2)
    result = cli("train", str(config_path), "--dry-run", "--set", "optimization.grad_accumulation=3")
    assert result.exit_code == EXIT_OK, result.output
    assert (
        "each epoch trains 6 of its 8 rows: the 2 left over fill no whole step of 6 (data.batch_size 2 x "
        "optimization.grad_accumulation 3); the shuffle leaves out other rows each epoch"
    ) in " ".join(result.output.split())
    result = cli("train", str(config_path), "--dry-run")  # 4 steps of 2 rows: none left out
    assert result.exit_code == EXIT_OK and "left over" not in result.output, result.output


def test_encoding_the_clips_draws_nothing_from_the_global_random_stream(tmp_path, tiny_no_text_model_dir) -> None:
    """Each loader of the encoding drew its seed from torch's global stream, which the run's dropout then draws
    from: a run started again after a stop while it encoded (fewer loaders) trained otherwise than one that never
    stopped (the smoke set's loss at step 10: 6.2446 against 6.2441)."""
    label_run_config(tmp_path, tiny_no_text_model_dir)
    dataset = AudioTextDataset(read_manifest(tmp_path / "train.jsonl"), train=True, seed=0)
    before = torch.get_rng_state()
    encode_clips(lambda audio: audio[:, :3], dataset, 2, device=torch.device("cpu"), batch_size=4, num_workers=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_under_torchrun_the_first_process_of_each_machine_keeps_the_encodings(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """Every process encodes every clip; were each to keep its parts, eight GPUs would fill the disk eight times."""
    label_run_config(tmp_path, tiny_no_text_model_dir)
    dataset = AudioTextDataset(read_manifest(tmp_path / "train.jsonl"), train=True, seed=0)
    options = {"device": torch.device("cpu"), "batch_size": 4, "num_workers": 0}
    for rank, kept in ((1, False), (0, True)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        cache = encode_clips(lambda audio: audio[:, :3], dataset, 1, folder=tmp_path / "features", **options)
        assert len(cache.rows) == len(dataset) and (tmp_path / "features").is_dir() == kept


def test_a_run_says_why_it_encodes_again_what_an_earlier_version_kept_in_features(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """Encodings kept before the cache's parts layout (`features/KEY.pt`) are not read: the run encoded the clips
    again, minutes on a CPU, without a word of why."""
    label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_steps=1, logging__quiet=False)
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "run" / "features" / "0123456789abcdef01234567.pt"
    earlier.parent.mkdir(parents=True)
    torch.save({"features": torch.zeros(1, 8, 3)}, earlier)

    result = cli("train", "run.yaml")

    assert result.exit_code == EXIT_OK, result.output
    assert (
        "run/features holds 1 file of encodings an earlier pengi-search wrote (features/KEY.pt), which this one "
        "does not read (its keys hold each clip's file size and time too): the clips are encoded again, into "
        "features/KEY/; the earlier files may be deleted"
    ) in result.output.splitlines()
