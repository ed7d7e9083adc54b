"""The training loop on tiny models: the loss, learning, freezing, exact resume, DDP, set-up and dry run."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel, GPT2LMHeadModel
from transformers.utils import logging as transformers_logging
from typer.testing import CliRunner, Result

import pengi_search.model
from pengi_search.cli import app
from pengi_search.config import PengiConfig
from pengi_search.encoders import clip_text_config
from pengi_search.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_TERMINATED, EXIT_USAGE, UsageError
from pengi_search.messages import print_warning
from pengi_search.model import Pengi, gpt2_config
from pengi_search.model_dir import WEIGHTS_FILE, ModelDir
from pengi_search.testing import tiny_clip_tokenizer, tiny_config, tiny_gpt2_tokenizer
from pengi_search.tokenization import Tokenizers
from pengi_search.torchrun_env import Place
from pengi_search.versions import software_versions
from trainer.config import ConfigError, TrainConfig, load_config, parse_overrides
from trainer.distributed import resolve_device, start_processes
from trainer.dry_run import dry_run_report
from trainer.evaluation import generate_answers
from trainer.export import export_checkpoint
from trainer.loop import Trainer
from trainer.model_setup import apply_freezing, build_model, set_train_mode
from trainer.objective import AnswerNll, ModelInputs, placeholder_inputs
from trainer.optimization import warmup_then_linear_decay
from trainer.reporting import METRICS_FILE, TrainingProgress, read_metrics
from trainer.resume_plan import EpochSize, RunRecord, check_steps
from trainer.run import train
from trainer.state import Position

from .indexing import signal_when
from .reference import fixture_dirs, missing_reference
from .test_progress import Screen
from .torchrun_runs import TORCHRUN_ENV, torchrun, torchrun_command, torchrun_worker

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "trainer" / "example.yaml"
SAMPLE_RATE = 44_100
CAPTION_PROMPT = "generate audio caption"


def synthetic_sounds() -> dict[str, tuple[np.ndarray, str]]:
    """Four one-second sounds a tiny random audio encoder tells apart, each with its own caption."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE)
    return {
        "hum": (0.5 * np.sin(2 * np.pi * 220 * t), "a low hum"),
        "noise": (0.3 * noise, "water runs from a tap"),
        "chord": (0.2 * sum(np.sin(2 * np.pi * f * t) for f in (300, 700, 1500, 3100)), "a bell rings twice"),
        "beeps": (0.5 * np.sin(2 * np.pi * 1000 * t) * (np.sin(2 * np.pi * 4 * t) > 0), "a high beep"),
    }


@pytest.fixture(scope="module")
def sounds(tmp_path_factory) -> Path:
    """A folder with the four sounds as wav files and `train.jsonl`, their caption manifest."""
    root = tmp_path_factory.mktemp("sounds")
    rows = []
    for name, (wave, caption) in synthetic_sounds().items():
        sf.write(root / f"{name}.wav", wave.astype(np.float32), SAMPLE_RATE)
        rows.append({"audio": f"{name}.wav", "task": "caption", "answer": caption})
    (root / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_config(folder: Path, model_dir: Path, manifest: Path, **sections: Any) -> Path:
    """A small CPU run: batches of 2, no workers, logs every step, no evaluation unless asked."""
    base = {
        "output_dir": str(folder / "run"),
        "seed": 0,
        "model": {"init": str(model_dir)},
        "data": {"train": str(manifest), "batch_size": 2, "num_workers": 0},
        "optimization": {"lr": 1e-3, "warmup_steps": 2, "max_steps": 4},
        "runtime": {"device": "cpu"},
        "logging": {"every": 1, "quiet": True},
        "evaluation": {"every": 1000, "samples": 0},
        "checkpoints": {"every": 1000},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(merge(base, sections)))
    return path


def train_command(config_path: Path, *options: str) -> Result:
    """`pengi-search train CONFIG [OPTIONS]` as a user runs it (the same command as `python -m trainer`)."""
    return CliRunner().invoke(app, ["train", str(config_path), *options])


def check_trained(config_path: Path, *options: str) -> None:
    result = train_command(config_path, *options)
    assert result.exit_code == 0, result.output


def losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in read_metrics(output_dir / METRICS_FILE, "train")]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / WEIGHTS_FILE))


def sound_waves() -> tuple[np.ndarray, list[str]]:
    """The sounds as the model sees them (a second repeated to the 7 s clip) and their captions."""
    clips = [(np.tile(wave, 7)[: 7 * SAMPLE_RATE], caption) for wave, caption in synthetic_sounds().values()]
    return np.stack([clip for clip, _ in clips]).astype(np.float32), [caption for _, caption in clips]


# --- Objective ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "base_no_text_enc"])
def test_training_loss_equals_the_reference_caption_loss(variant: str) -> None:
    directories = fixture_dirs()
    if not directories:
        missing_reference("no fixture directory")
    directory = directories[0]
    fixture = json.loads((directory / "fixture.json").read_text())
    config = PengiConfig.from_reference_architecture(fixture["architecture"], variant)
    model = Pengi.from_pretrained(directory / f"{variant}.pth", config)
    expected = np.load(directory / f"{variant}_expected.npz")
    inputs = {
        "wave": torch.from_numpy(np.load(directory / "inputs.npz")["audio"][:2]),
        "prompt_ids": torch.from_numpy(expected["prompt_input_ids"][:2]).long(),
        "prompt_mask": torch.from_numpy(expected["prompt_attention_mask"][:2]).long(),
        "answer_ids": torch.from_numpy(expected["caption_ids"]).long(),
        "answer_mask": torch.from_numpy(expected["caption_mask"]).long(),
    }
    with torch.no_grad():
        loss = AnswerNll(model.eval())(**inputs) / inputs["answer_mask"].sum()
    assert abs(float(loss) - float(expected["caption_loss"])) <= 1e-3


def test_an_empty_batch_adds_no_loss_but_reaches_the_parameters_a_real_one_does(tiny_model_dir) -> None:
    """The placeholder of an empty batch has no answer token, so nothing goes through the vocabulary projection;
    its backward pass must still give each parameter a real batch trains a gradient (zero), as
    DistributedDataParallel needs of every process's step."""
    model = Pengi.from_pretrained(tiny_model_dir).eval()
    tokenizers = Tokenizers.load(model.cfg, tiny_model_dir)
    empty = placeholder_inputs(tokenizers, (model.cfg.audio.clip_samples,))
    real = dataclasses.replace(empty, answer_ids=torch.tensor([[5, 9]]), answer_mask=torch.tensor([[1, 1]]))

    def graded(inputs: ModelInputs) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = AnswerNll(model)(**vars(inputs))
        loss.backward()
        return loss.item(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    loss, grads = graded(empty)
    assert loss == 0 and grads.keys() == graded(real)[1].keys()
    assert not any(grad.any() for grad in grads.values())


# --- Learning, export -------------------------------------------------------------------------------------------


def test_a_tiny_model_learns_four_sounds_and_exports_a_loadable_model(tmp_path, sounds, tiny_model_dir) -> None:
    # The tiny language model is random: a prefix cannot steer a frozen random LM (its loss stays at log(vocab)),
    # so this run trains it. The random tiny HTSAT learns slowly and erratically from four clips, so it stays
    # frozen here and the mappers learn to tell its fixed embeddings apart (freezing is tested below).
    config_path = write_config(
        tmp_path,
        tiny_model_dir,
        sounds / "train.jsonl",
        model={"dropout": 0.0},
        freeze={"language_model": False, "audio_encoder": True},
        data={"batch_size": 4},
        optimization={"lr": 1e-2, "warmup_steps": 5, "max_steps": 100},
        logging={"every": 10},
        evaluation={"every": 100, "samples": 4, "beam": 1, "max_len": 12},
    )
    result = train(load_config(config_path))
    waves, captions = sound_waves()
    prompts = [CAPTION_PROMPT] * len(captions)

    assert generate_answers(result.model, result.tokenizers, waves, prompts, beam=1) == captions
    (last,) = read_metrics(tmp_path / "run" / METRICS_FILE, "samples")
    assert [sample["generated"] for sample in last["samples"]] == [sample["answer"] for sample in last["samples"]]

    model_dir = result.model_dir
    loaded = Pengi.from_pretrained(model_dir)
    tokenizers = ModelDir.read(model_dir).tokenizers
    assert generate_answers(loaded, tokenizers, waves, prompts, beam=1) == captions
    assert generate_answers(loaded, tokenizers, waves, prompts, beam=3) == captions

    # The whole loop, as a user runs it: `pengi-search describe` with the exported model.
    files = [str(sounds / f"{name}.wav") for name in synthetic_sounds()]
    cli = CliRunner().invoke(app, ["describe", *files, "--model", str(model_dir), "-p", CAPTION_PROMPT, "--json"])
    assert cli.exit_code == 0, cli.output
    described = [entry["windows"][0]["answers"][CAPTION_PROMPT] for entry in json.loads(cli.stdout)]
    assert described == captions

    before, after = weights(tiny_model_dir), weights(model_dir)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("audio_encoder."))
    language_model = [key for key in before if key.startswith("caption_decoder.gpt.")]
    assert all(not torch.equal(before[key], after[key]) for key in language_model if key.endswith("c_fc.weight"))


# --- Freezing -----------------------------------------------------------------------------------------------------


def test_frozen_parts_stay_in_eval_mode_while_the_rest_trains(tiny_model_dir, tmp_path) -> None:
    config = load_config(write_config(tmp_path, tiny_model_dir, tmp_path / "unused.jsonl"))
    model, _ = build_model(config, tmp_path)
    frozen = apply_freezing(model, config.freeze)
    set_train_mode(model, frozen, config.freeze)
    assert not model.gpt.training and not model.caption_encoder.training
    assert model.audio_encoder.training and model.caption_decoder.audio_project.training
    assert not any(p.requires_grad for p in model.gpt.parameters())
    assert not any(p.requires_grad for p in model.caption_encoder.parameters())
    assert model.audio_encoder.projection.linear1.weight.requires_grad

    config.freeze.batch_norm_statistics = True
    set_train_mode(model, frozen, config.freeze)
    assert not model.audio_encoder.htsat.bn0.training and model.audio_encoder.htsat.layers.training


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sounds, tiny_model_dir) -> Path:
    """Six steps with the paper's freezing and default dropout: batch 1, two micro-batches a step, checkpoints
    every three steps (mid-epoch: an epoch of four examples is two steps)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    config_path = write_config(
        folder,
        tiny_model_dir,
        sounds / "train.jsonl",
        data={"batch_size": 1},
        optimization={"max_steps": 6, "grad_accumulation": 2},
        checkpoints={"every": 3},
    )
    check_trained(config_path)
    return folder


def test_every_model_a_run_writes_records_its_manifests_sha256_and_the_software_versions(
    uninterrupted, sounds, tmp_path
) -> None:
    """The configuration names the manifests by path alone: a manifest regenerated in place (more clips, other
    captions) would leave two models that claim the same data. The run's model, and a model exported from any of
    its checkpoints later, carry what identifies it and the code that trained it."""
    manifest = sounds / "train.jsonl"
    expected = {
        "manifests": {"train": {"path": str(manifest), "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}},
        "versions": software_versions(),
    }
    exported = export_checkpoint(uninterrupted / "run" / "checkpoints" / "step-00000003.pt", tmp_path / "model-3")
    for model_dir in (uninterrupted / "run" / "model", exported):
        assert ModelDir.read(model_dir).meta["trained"]["provenance"] == expected


def test_a_resume_says_a_manifest_whose_contents_changed_since_the_checkpoint(tmp_path, sounds, tiny_model_dir) -> None:
    """Captions edited in place keep the rows' number, which was all a resume checked: the run went on with other
    data, and its model recorded only the new manifest. It goes on all the same (a typo fixed), and says so."""
    captions = {name: caption for name, (_, caption) in synthetic_sounds().items()}
    rows = [
        {"audio": str(sounds / f"{name}.wav"), "task": "caption", "answer": text} for name, text in captions.items()
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config_path = write_config(
        tmp_path, tiny_model_dir, manifest, optimization={"max_steps": 4}, checkpoints={"every": 2}
    )
    check_trained(config_path)
    manifest.write_text("".join(json.dumps(row | {"answer": row["answer"].upper()}) + "\n" for row in rows))

    resumed = train_command(config_path, "--resume-from", str(tmp_path / "run" / "checkpoints" / "step-00000002.pt"))

    assert resumed.exit_code == 0, resumed.output
    said = f"warning: the train manifest {manifest} changed since the checkpoint (another sha256): the run goes on "
    assert said + "with it as it is now" in resumed.stderr.splitlines()


def test_frozen_weights_stay_bit_identical_and_trained_ones_change(uninterrupted, tiny_model_dir) -> None:
    before, after = weights(tiny_model_dir), weights(uninterrupted / "run" / "model")
    htsat_fixed = ("tscam_conv.", "head.", "spectrogram_extractor.", "logmel_extractor.")  # unused, or DFT kernels
    frozen_prefixes = (
        "caption_decoder.gpt.",
        "caption_encoder.",
        *(f"audio_encoder.base.htsat.{p}" for p in htsat_fixed),
    )
    parameters = [name for name, _ in Pengi.from_pretrained(tiny_model_dir).named_parameters() if name in before]
    frozen = [name for name in before if name.startswith(frozen_prefixes)]
    trained = [name for name in parameters if not name.startswith(frozen_prefixes)]
    assert len(frozen) > 20 and len(trained) > 20
    assert [name for name in frozen if not torch.equal(before[name], after[name])] == []
    assert [name for name in trained if torch.equal(before[name], after[name])] == []


def test_each_part_with_its_own_learning_rate_logs_it_beside_lr(tmp_path, sounds, tiny_model_dir) -> None:
    """`lr` is optimization.lr as scheduled, also when no parameter trains at it; each part that trains at its own
    rate (optimization.part_lr) logs it as `lr_<part>`; a part that is frozen trains at none and logs none."""
    part_lr = {"mappers": 1e-2, "audio_encoder": 1e-5, "language_model": 1e-6}  # GPT-2 is frozen by default
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", optimization={"part_lr": part_lr})
    check_trained(config_path, "--set", "optimization.max_steps=2")
    records = read_metrics(tmp_path / "run" / METRICS_FILE, "train")
    # The scheduler's factor at steps 1 and 2 of a 2-step warm-up, the same for every group.
    for record, factor in zip(records, [0.5, 1.0], strict=True):
        rates = {key: value for key, value in record.items() if key.startswith("lr")}
        assert rates == pytest.approx(
            {"lr": 1e-3 * factor, "lr_mappers": 1e-2 * factor, "lr_audio_encoder": 1e-5 * factor}
        )
    assert (tmp_path / "run" / "metrics.png").is_file()

    # Only the mappers train: every parameter has its part's rate, and `lr` is still optimization.lr's.
    only_mappers = write_config(
        tmp_path / "mappers", tiny_model_dir, sounds / "train.jsonl", optimization={"part_lr": {"mappers": 1e-2}}
    )
    check_trained(only_mappers, "--set", "optimization.max_steps=1", "--set", "freeze.audio_encoder=true")
    (record,) = read_metrics(tmp_path / "mappers" / "run" / METRICS_FILE, "train")
    assert (record["lr"], record["lr_mappers"]) == pytest.approx((1e-3 * 0.5, 1e-2 * 0.5))


def test_a_resume_that_changes_the_schedule_batch_or_seed_is_refused_even_with_a_new_length(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """A resumed run trained at the rates its checkpoint's optimizer held whatever optimization.lr said (with a
    warning), and took another warm-up, batch or seed without a word: each made another run of it. Refused now, on
    one line naming the setting; logging, evaluation and checkpoints may change, and `lr` logs the run's rates."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    check_trained(config_path, "--set", "optimization.max_steps=1")
    longer = ("--set", "optimization.max_steps=2")
    changes = {
        "optimization.lr=1e-2": "optimization.lr 0.01 (the run's: 0.001)",
        "optimization.warmup_steps=5": "optimization.warmup_steps 5 (the run's: 2)",
        "optimization.part_lr={mappers: 0.01}": 'optimization.part_lr {"mappers": 0.01} (the run\'s: null)',
        "data.batch_size=1": "data.batch_size 1 (the run's: 2)",
        "seed=3": "seed 3 (the run's: 0)",
    }
    for setting, named in changes.items():
        result = train_command(config_path, "--resume", *longer, "--set", setting)
        assert result.exit_code == EXIT_USAGE, result.output
        (line,) = result.stderr.splitlines()
        assert named in line and line.endswith("of these, only the length can change on resume, given with --set")
    free = ("logging.every=2", "evaluation.every=5", "checkpoints.keep=1", "optimization.grad_clip=0.5")
    result = train_command(config_path, "--resume", *longer, *(f"--set={setting}" for setting in free))
    assert result.exit_code == 0, result.output
    records = read_metrics(tmp_path / "run" / METRICS_FILE, "train")
    # The factors of steps 1 and 2 of a 2-step warm-up, times the rate the run started with.
    assert [(record["step"], record["lr"]) for record in records] == pytest.approx([(1, 1e-3 * 0.5), (2, 1e-3)])


def test_a_run_without_matplotlib_warns_as_the_command_line_does_and_ends_well(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """No metrics.png without matplotlib: said on the run's console as every warning is (it went to the logging
    module, which printed it only where logging was set up), and the run still exports its model."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    result = train_command(config_path, "--set", "optimization.max_steps=1")
    assert result.exit_code == 0, result.output
    assert "warning: matplotlib is not installed: no metrics.png (pip install matplotlib)" in result.stderr.splitlines()
    assert (tmp_path / "run" / "model").is_dir() and not (tmp_path / "run" / "metrics.png").exists()


def test_a_warning_prints_its_message_as_written_on_one_line() -> None:
    """The one warning printer of the command line and the trainer: brackets in a message (a path, a label) are not
    read as markup, and a long message is not broken at the console's width."""
    console = Console(file=io.StringIO(), width=40)
    message = "[bold]labels[/bold] in " + "/a/long/folder" * 5
    print_warning(console, message)
    assert console.file.getvalue() == f"warning: {message}\n"


# --- Resume -------------------------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def test_resume_continues_exactly_like_an_uninterrupted_run(uninterrupted, tmp_path, monkeypatch) -> None:
    config_path = tmp_path / "config.yaml"
    config = yaml.safe_load((uninterrupted / "config.yaml").read_text())
    config["output_dir"] = str(tmp_path / "run")
    config_path.write_text(yaml.safe_dump(config))

    # Crash after step 4 was logged: the run goes back to its step-3 checkpoint and step 4 is not logged twice.
    after_step = Trainer._after_step

    def crash_after_step_4(self: Trainer) -> None:
        after_step(self)
        if self.position.step == 4:
            raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_after_step", crash_after_step_4)
        assert isinstance(train_command(config_path).exception, Crash)
    assert [step for step, _ in losses(tmp_path / "run")] == [1, 2, 3, 4]
    assert train_command(config_path).exit_code == EXIT_USAGE  # a fresh run would overwrite the checkpoints
    # Where it resumes and where it stops, said by the run (even quiet) and by its dry run in the same words.
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000003.pt"
    said = f"resuming from {checkpoint} at step 3 of 6 (epoch 2, 2 steps an epoch)"
    planned = train_command(config_path, "--resume", "--dry-run")
    assert planned.exit_code == 0 and said in planned.stdout.splitlines(), planned.output
    result = train_command(config_path, "--resume")
    assert result.exit_code == 0 and said in result.stderr.splitlines(), result.output

    assert losses(tmp_path / "run") == losses(uninterrupted / "run")
    assert [step for step, _ in losses(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    resumed, reference = weights(tmp_path / "run" / "model"), weights(uninterrupted / "run" / "model")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)


def test_resuming_a_finished_run_says_so_and_writes_nothing_and_a_raised_max_steps_trains_on(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """--resume after the run reached max_steps trained nothing, wrote the model again and logged a second `end`,
    without a word."""
    folder = tmp_path / "my runs"  # a space: the commands it names are quoted for the shell
    config_path = write_config(folder, tiny_model_dir, sounds / "train.jsonl")  # max_steps 4
    check_trained(config_path)
    run = folder / "run"

    def written() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")}

    before, metrics = written(), (run / METRICS_FILE).read_bytes()
    result = train_command(config_path, "--resume")
    assert result.exit_code == 0, result.output
    message = " ".join(result.stderr.split())
    assert "the run already finished at step 4 (optimization.max_steps 4): nothing was trained or written" in message
    assert f"its model is in {run / 'model'}" in message
    assert message.endswith("To train on, resume with a higher optimization.max_steps, given with --set")
    assert written() == before and (run / METRICS_FILE).read_bytes() == metrics
    result = train_command(config_path, "--resume-from", str(run / "checkpoints" / "step-00000004.pt"))
    assert result.exit_code == 0 and "already finished at step 4" in result.stderr and written() == before
    # More steps in the config file alone: another run, refused with the --set that trains this one on.
    longer = yaml.safe_load(config_path.read_text())
    longer["optimization"]["max_steps"] = 6
    (folder / "longer.yaml").write_text(yaml.safe_dump(longer))
    result = train_command(folder / "longer.yaml", "--resume")
    assert result.exit_code == EXIT_USAGE and written() == before, result.output
    assert result.stderr.strip().endswith(
        "optimization.max_steps 6 (the run's: 4); resume it as it was with --set optimization.max_steps=4, or train "
        "it on to this length with --set optimization.max_steps=6"
    )

    # More steps given with --set: the run goes on from its last checkpoint to the new end, and says so.
    result = train_command(config_path, "--resume", "--set", "optimization.max_steps=6")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[:2] == [
        "the run's length changes to optimization.max_steps 6 (it was optimization.max_steps 4), as --set asks: the "
        "learning rate now decays over the new length",
        f"resuming from {run / 'checkpoints' / 'step-00000004.pt'} at step 4 of 6 (epoch 3, 2 steps an epoch)",
    ]
    assert [step for step, _ in losses(run)] == [1, 2, 3, 4, 5, 6]
    # The decay is planned over the new length, as if the run had been set so long: the rate, zero at step 4 of
    # 4, goes on from where a 6-step schedule is (the README says so).
    planned = warmup_then_linear_decay(2, 6)
    rates = [record["lr"] for record in read_metrics(run / METRICS_FILE, "train")]
    assert rates[4:] == pytest.approx([1e-3 * planned(4), 1e-3 * planned(5)]) and min(rates[4:]) > 0
    assert [end["step"] for end in read_metrics(run / METRICS_FILE, "end")] == [4, 6]
    assert json.loads((run / "model" / "config.json").read_text())["trained"]["steps"] == 6

    # Its model folder gone: the message names the command that writes it again, ready to paste.
    shutil.rmtree(run / "model")
    checkpoint = run / "checkpoints" / "step-00000006.pt"
    result = train_command(config_path, "--resume-from", str(checkpoint), "--set", "optimization.max_steps=6")
    export = re.search(r"`(pengi-search train export [^`]*)` writes its model", " ".join(result.stderr.split()))
    assert result.exit_code == 0 and export, result.stderr
    assert shlex.split(export[1]) == ["pengi-search", "train", "export", str(checkpoint)]


def test_a_second_ctrl_c_during_the_final_export_keeps_the_model_folder_whole_and_the_resume_names_the_export(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """A second Ctrl-C interrupts at once, here as the resumed run wrote model/: its new weights went beside the
    first stop's config.json (whose sha256 they failed), and the next --resume called that folder the run's model.
    Now model/ stays the whole model of the first stop, and the resume names the `train export` of the run's end."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")  # max_steps 4
    run = tmp_path / "run"
    after_step = Trainer._after_step

    def press_ctrl_c_at_step_2(self: Trainer) -> None:
        after_step(self)
        if self.position.step == 2:
            self.interrupt.requested = True  # what the first SIGINT's handler sets

    monkeypatch.setattr(Trainer, "_after_step", press_ctrl_c_at_step_2)
    assert train_command(config_path).exit_code == EXIT_INTERRUPTED
    monkeypatch.setattr(Trainer, "_after_step", after_step)
    first_stop = {path.name: path.read_bytes() for path in (run / "model").iterdir() if path.is_file()}
    hashed = pengi_search.model.file_sha256

    def second_ctrl_c_once_the_weights_are_written(path: Path) -> str:
        if path.parent.name in ("model", ".model.partial"):  # model/'s weights, written in place or aside
            raise KeyboardInterrupt  # what the second SIGINT's handler raises
        return hashed(path)

    monkeypatch.setattr(pengi_search.model, "file_sha256", second_ctrl_c_once_the_weights_are_written)
    assert train_command(config_path, "--resume").exit_code == EXIT_INTERRUPTED
    monkeypatch.setattr(pengi_search.model, "file_sha256", hashed)
    assert {path.name: path.read_bytes() for path in (run / "model").iterdir() if path.is_file()} == first_stop
    assert [path.name for path in run.iterdir() if path.name.startswith(".")] == []  # no partial folder left

    result = train_command(config_path, "--resume")
    message = " ".join(result.stderr.split())
    assert result.exit_code == 0 and "the run already finished at step 4" in message, result.stderr
    assert f"`pengi-search train export {run / 'checkpoints' / 'step-00000004.pt'}` writes its model" in message


def test_a_resume_is_the_run_that_was_started_not_what_the_config_file_says(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """A run started with `--set optimization.max_steps=4 --set optimization.epochs=null` over a recipe's epochs:
    `--resume` without them took the file's epochs and trained on towards another end, the learning-rate decay
    planned over another length. Refused now, and by the dry run, before any set-up, on one line naming each
    setting and the --set that resumes the run as it was; that resumes it (it had finished), and a new length given
    with --set trains it on."""
    import trainer.run

    recipe_like = {"max_steps": None, "epochs": 1000}
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", optimization=recipe_like)
    check_trained(config_path, "--set", "optimization.max_steps=4", "--set", "optimization.epochs=null")
    run = tmp_path / "run"
    metrics = (run / METRICS_FILE).read_bytes()
    refused = (
        f"error: {config_path}: differs from the run it resumes ({run / 'checkpoints' / 'step-00000004.pt'}): "
        "optimization.max_steps null (the run's: 4), optimization.epochs 1000 (the run's: null); resume it as it was "
        "with --set optimization.max_steps=4 --set optimization.epochs=null, or train it on to this length with "
        "--set optimization.epochs=1000"
    )
    with monkeypatch.context() as during:
        during.setattr(trainer.run, "Trainer", None)  # set-up (minutes of feature encoding) must not start
        for dry_run in ([], ["--dry-run"]):
            result = train_command(config_path, "--resume", *dry_run)
            assert result.exit_code == EXIT_USAGE, result.output
            assert result.stderr.splitlines() == [refused]
    assert (run / METRICS_FILE).read_bytes() == metrics

    as_it_was = shlex.split(re.search(r"resume it as it was with (.*), or", refused)[1])
    result = train_command(config_path, "--resume", *as_it_was)
    assert result.exit_code == 0, result.output
    assert "the run already finished at step 4 (optimization.max_steps 4)" in result.stderr
    assert (run / METRICS_FILE).read_bytes() == metrics

    result = train_command(config_path, "--resume", "--set", "optimization.epochs=3")  # 2 steps an epoch
    assert result.exit_code == 0, result.output
    assert f"resuming from {run / 'checkpoints' / 'step-00000004.pt'} at step 4 of 6 (epoch 3 of 3)" in result.stderr
    assert [step for step, _ in losses(run)] == [1, 2, 3, 4, 5, 6]


def test_a_resume_in_another_precision_is_refused_like_the_other_run_settings(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """runtime.precision was not compared: a run resumed in bf16 or fp16 took another rounding, and an fp16 one its
    gradient scaler's state from a run that had none. Refused before any set-up, as the schedule, batch and seed
    are, with the --set that resumes the run as it was."""
    import trainer.run

    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    check_trained(config_path, "--set", "optimization.max_steps=1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # mixed precision is allowed on CUDA only
    monkeypatch.setattr(trainer.run, "Trainer", None)  # set-up must not start
    on_a_gpu = ("--set", "runtime.device=auto", "--set", "runtime.precision=bf16")
    for dry_run in ([], ["--dry-run"]):
        result = train_command(config_path, "--resume", "--set", "optimization.max_steps=2", *on_a_gpu, *dry_run)
        assert result.exit_code == EXIT_USAGE, result.output
        (line,) = result.stderr.splitlines()
        assert "differs from the run it resumes" in line and "runtime.precision bf16 (the run's: fp32)" in line
        assert "--set runtime.precision=fp32; of these" in line
        assert line.endswith("of these, only the length can change on resume, given with --set")


def test_a_run_in_epochs_keeps_its_steps_when_an_epoch_has_more_rows_or_trains_on_as_set(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """A run of optimization.epochs resumed with more training rows (or processes) went on to another number of
    steps, its learning-rate decay planned over them, with only a warning that the data order differs. Its length
    in steps is the run's: another one is refused (by the run once its set-up has counted the rows, and by its dry
    run), writing nothing, as a length changed in the file is, with the --set that keeps the run's steps and the
    one that trains its epochs at the new size; each does as it says."""
    manifest = tmp_path / "train.jsonl"
    rows = [json.loads(line) for line in (sounds / "train.jsonl").read_text().splitlines()]
    rows = [{**row, "audio": str(sounds / row["audio"])} for row in rows]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    epochs = {"max_steps": None, "epochs": 2}  # 4 rows in batches of 2: 2 steps an epoch, 4 in all
    config_path = write_config(tmp_path, tiny_model_dir, manifest, optimization=epochs)
    check_trained(config_path)
    with manifest.open("a") as more:  # 6 rows: 3 steps an epoch
        more.write("".join(json.dumps(row) + "\n" for row in rows[:2]))
    run, metrics = tmp_path / "run", (tmp_path / "run" / METRICS_FILE).read_bytes()
    refused = (
        f"error: {config_path}: differs from the run it resumes ({run / 'checkpoints' / 'step-00000004.pt'}) in its "
        "length: optimization.epochs 2 make 6 steps now, the run's 4, as the training set has 6 rows (the run's: 4); "
        "keep the run's 4 steps with --set optimization.max_steps=4 --set optimization.epochs=null, or train it on to "
        "6 with --set optimization.epochs=2"
    )
    for dry_run in ([], ["--dry-run"]):
        result = train_command(config_path, "--resume", *dry_run)
        assert result.exit_code == EXIT_USAGE, result.output
        assert result.stderr.splitlines() == [refused]
    assert (run / METRICS_FILE).read_bytes() == metrics and len(list((run / "checkpoints").iterdir())) == 1

    keep = shlex.split(re.search(r"with (--set .*), or", refused)[1])
    result = train_command(config_path, "--resume", *keep)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        "the run's length changes to optimization.max_steps 4 (it was optimization.epochs 2, 4 steps), as --set "
        "asks: still 4 steps, the same decay"
    )
    assert "the run already finished at step 4 (optimization.max_steps 4)" in result.stderr

    result = train_command(config_path, "--resume", "--set", "optimization.epochs=2")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        "the run's length changes to optimization.epochs 2, 6 steps (it was optimization.epochs 2, 4 steps), as "
        "--set asks: the learning rate now decays over the new length"
    )
    assert [step for step, _ in losses(run)] == [1, 2, 3, 4, 5, 6]


def test_a_run_in_epochs_on_another_number_of_processes_names_them(tmp_path, sounds, tiny_model_dir) -> None:
    """torchrun with 2 processes where the run had 1: each reads half the rows, so an epoch has half the steps."""
    in_epochs = parse_overrides(["optimization.max_steps=null", "optimization.epochs=2"])
    config = load_config(write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl"), in_epochs)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002.pt"
    payload = {"total_steps": 4, "train_examples": 4, "rng": [{}]}  # as one process wrote it: 2 steps an epoch
    record = RunRecord(checkpoint, config.to_dict(), Position(step=2), payload)
    assert check_steps(config, record, EpochSize(4, 1, 4), (), "config.yaml") is None
    halved = r"make 2 steps now, the run's 4, as it trains on 2 processes \(the run's: 1\)"
    with pytest.raises(ConfigError, match=halved):
        check_steps(config, record, EpochSize(4, 2, 2), (), "config.yaml")


def test_a_resume_reads_its_checkpoint_from_disk_once(tmp_path, sounds, tiny_model_dir, monkeypatch) -> None:
    """The checkpoint was read twice: mapped to check the configuration, then whole to load the states."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    check_trained(config_path, "--set", "optimization.max_steps=1")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000001.pt"
    reads: list[Path] = []
    load = torch.load

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(Path(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    check_trained(config_path, "--resume", "--set", "optimization.max_steps=2")
    assert reads.count(checkpoint) == 1
    assert [step for step, _ in losses(tmp_path / "run")] == [1, 2]


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("optimizaton.max_steps=3", "--set: unknown key optimizaton; known keys here: output_dir, seed, model,"),
        ("optimization.max_step=3", "--set: unknown key optimization.max_step; known keys here: lr,"),
        ("optimization.max_steps=abc", "--set: optimization.max_steps must be int, got 'abc'"),
        ("optimization.max_steps=0", "--set: optimization.max_steps must be at least 1"),
        ("seed.value=3", "--set: cannot set seed.value: seed is not a section"),
    ],
)
def test_a_mistyped_set_is_named_as_the_set_not_as_the_config_file_which_does_not_hold_it(
    tmp_path, sounds, tiny_model_dir, setting: str, said: str
) -> None:
    """`error: config.yaml: unknown key optimizaton` sent the user looking for a typo in a file without one."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    result = train_command(config_path, "--set", setting)
    assert result.exit_code == EXIT_USAGE and result.stderr.startswith(f"error: {said}"), result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_config_files_own_mistake_is_named_after_the_file_whatever_set_gives(tmp_path, sounds, tiny_model_dir):
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", optimization={"lr": -1})
    for options in ([], ["--set", "optimization.max_steps=3"]):
        result = train_command(config_path, *options)
        assert result.exit_code == EXIT_USAGE, result.stderr
        assert result.stderr == f"error: {config_path}: optimization.lr must be positive\n"
    fixed = train_command(config_path, "--set", "optimization.lr=0.01", "--set", "optimization.max_steps=1")
    assert fixed.exit_code == 0, fixed.stderr


def test_resume_without_a_checkpoint_is_bad_usage_like_a_missing_resume_from_file(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """The checkpoint asked for does not exist and nothing was done: exit code 2 (it was 1), with the way out."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    for dry_run in ([], ["--dry-run"]):
        result = train_command(config_path, "--resume", *dry_run)
        assert result.exit_code == EXIT_USAGE, result.stderr
        assert "no checkpoint to resume from: start the run without --resume" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_clip_that_fails_to_load_is_skipped_counted_and_said_once_as_every_command_says_it(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """The dataset logged `skipping PATH (row n): reason` through the logging module for every row, every epoch
    and every evaluation that met the clip (from DataLoader workers, and every process under torchrun). The run
    now says each clip once, `skipped PATH: reason` on stderr with the path as typed here, as every command does,
    and exits 3."""
    (tmp_path / "broken.wav").write_text("not audio")
    rows = [json.loads(line) for line in (sounds / "train.jsonl").read_text().splitlines()[:3]]
    rows = [{**row, "audio": str(sounds / row["audio"])} for row in rows]
    broken = [
        {"audio": "broken.wav", "task": "caption", "answer": "a crackle"},
        {"audio": "broken.wav", "task": "sound_event", "answer": ["crackle"]},  # another row, the same clip
    ]
    manifest, validation = tmp_path / "with-broken.jsonl", tmp_path / "validation.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows + broken))
    validation.write_text("".join(json.dumps(row) + "\n" for row in rows[:1] + broken[:1]))
    # Batches of one: a broken clip's micro-batch is empty and trains on nothing. Two epochs, four evaluations.
    config_path = write_config(
        tmp_path,
        tiny_model_dir,
        manifest,
        data={"batch_size": 1, "validation": str(validation)},
        optimization={"max_steps": 10},
        evaluation={"every": 3, "patience": None},
    )
    monkeypatch.chdir(tmp_path)
    result = train_command(config_path)
    # As for every command: it ran, but some audio could not be used (the dry run says 3 for the same manifest).
    assert result.exit_code == EXIT_PARTIAL, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith(("skipped", "skipping", "WARNING"))]
    assert said == ["skipped broken.wav: not a readable audio file (unknown format or corrupt data)"], said
    assert "warning: trained without the clips reported above" in result.stderr
    assert (tmp_path / "run" / "model").is_dir()
    records = read_metrics(tmp_path / "run" / METRICS_FILE, "train")
    assert sum(record["skipped"] for record in records) == 4  # two rows, two epochs: counted where met
    assert sum(record["samples"] for record in records) == 6
    assert [record["loss"] is None for record in records] == [record["samples"] == 0 for record in records]
    assert all(np.isfinite(record["loss"]) for record in records if record["loss"] is not None)
    assert all(record["skipped"] == 1 for record in read_metrics(tmp_path / "run" / METRICS_FILE, "eval"))


# --- Distributed ------------------------------------------------------------------------------------------------


def test_a_process_holds_its_place_as_torchrun_env_reads_it_and_knows_its_rank_from_it(monkeypatch):
    """One source for rank, world size and local rank (`torchrun_env.place`): a hand-set LOCAL_RANK without RANK,
    one machine, is rank 1 of 2 (the process group is not started here: it is already "initialised")."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    processes = start_processes("cpu")
    assert processes.place == Place(rank=1, world_size=2, local_rank=1, launched=True)
    assert (processes.rank, processes.world_size, processes.local_rank) == (1, 2, 1)
    assert processes.distributed and not processes.main and processes.device == torch.device("cpu")


def test_a_machine_with_more_processes_than_gpus_is_refused_before_the_set_up(monkeypatch):
    """Four processes on two GPUs: the third and fourth would share a GPU with the first two, which NCCL refuses
    only at the first collective, after minutes of set-up. Each process has its own GPU, or the run is refused at
    once: by every process of the machine, as each knows how many torchrun started there (LOCAL_WORLD_SIZE)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", 1, 2) == resolve_device("cuda", 1, 2) == torch.device("cuda", 1)
    assert resolve_device("cpu", 3, 4) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UsageError) as refused:
        resolve_device("auto", 0, 4)
    assert str(refused.value) == (
        "4 processes on this machine (torchrun's LOCAL_WORLD_SIZE): PyTorch sees 2 CUDA GPUs on this machine (cuda:0 "
        "to cuda:1): start at most 2 per machine, one per GPU (--nproc-per-node 2), or set runtime.device to cpu"
    )
    assert refused.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError, match=r"^process 2 of this machine \(torchrun's LOCAL_RANK\): PyTorch sees 2"):
        resolve_device("auto", 2)  # a launcher that does not say how many: the process past the GPUs says it


def test_more_processes_than_gpus_are_said_once_per_machine_by_its_first_process(
    tmp_path, sounds, tiny_model_dir, monkeypatch
):
    """Every process of the machine, those with a GPU too, meets the refusal: the first says it and exits 2 (which
    torchrun reports), the others end well without a word, so that torchrun does not stop the first before it has
    said it. Said by each process past the GPUs instead, it came three times from a run of four on one GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", runtime={"device": "auto"})
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    said = []
    for local_rank in range(4):
        monkeypatch.setenv("RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        said.append(train_command(config_path))
    assert said[0].exit_code == EXIT_USAGE and said[0].stderr.count("error: ") == 1, said[0].output
    assert "start at most 1 per machine, one per GPU (--nproc-per-node 1)" in said[0].stderr
    assert [(result.exit_code, result.output) for result in said[1:]] == [(0, "")] * 3
    assert not (tmp_path / "run").exists()


# How long a run may take to end after a stop signal (within a step, a checkpoint and the model; torchrun kills what
# outstays 30 s of its own stop), against a hang as `torchrun_runs.TORCHRUN_S`.
TORCHRUN_STOP_S = 120


def test_two_gloo_processes_equal_one_process_with_the_combined_batch(tmp_path, sounds, tiny_model_dir) -> None:
    # DDP averages gradients; the loop divides each process's summed NLL by the answer tokens of all processes,
    # so the captions' different lengths still give exactly the gradient of one batch. Dropout off and BatchNorm
    # on its running statistics: otherwise a batch of 1 and a batch of 2 would differ by design.
    common = {
        "model": {"dropout": 0.0},
        "freeze": {"batch_norm_statistics": True},
        "optimization": {"max_steps": 2},
    }
    two = write_config(tmp_path / "two", tiny_model_dir, sounds / "train.jsonl", data={"batch_size": 1}, **common)
    one = write_config(tmp_path / "one", tiny_model_dir, sounds / "train.jsonl", **common)
    accumulated = write_config(
        tmp_path / "accumulated",
        tiny_model_dir,
        sounds / "train.jsonl",
        data={"batch_size": 1},
        **merge(common, {"optimization": {"grad_accumulation": 2}}),
    )
    launched = torchrun(str(two))
    assert launched.returncode == 0, launched.stderr[-3000:]
    check_trained(one)
    check_trained(accumulated)

    (end,) = read_metrics(tmp_path / "two" / "run" / METRICS_FILE, "end")
    assert end["ranks_in_sync"] and len(set(end["rank_digests"])) == 1 and len(end["rank_digests"]) == 2
    reference = weights(tmp_path / "one" / "run" / "model")
    for other in ("two", "accumulated"):
        curve = [loss for _, loss in losses(tmp_path / other / "run")]
        assert np.allclose(curve, [loss for _, loss in losses(tmp_path / "one" / "run")], rtol=1e-5, atol=0)
        trained = weights(tmp_path / other / "run" / "model")
        assert all(torch.allclose(trained[key], reference[key], rtol=0, atol=1e-6) for key in reference), other
    mapper = "caption_decoder.audio_project.linear.weight"
    assert not torch.equal(reference[mapper], weights(tiny_model_dir)[mapper])  # it did train


def test_under_torchrun_rank_0_alone_says_each_clip_that_fails_once(tmp_path, sounds, tiny_model_dir) -> None:
    """Each process meets the broken clips of its shard, each epoch; under `python -m trainer` the dataset logged
    `WARNING trainer.data: skipping PATH (row n): reason` every time, on every process. Now rank 0 says each clip
    once, `skipped PATH: reason`, whichever process met it."""
    for name in ("crackle", "static"):
        (tmp_path / f"{name}.wav").write_text("not audio")
    rows = [{"audio": str(sounds / f"{name}.wav"), "task": "caption", "answer": "a sound"} for name in ("hum", "noise")]
    broken = ["crackle.wav", "static.wav", "gone.wav"]
    rows += [{"audio": name, "task": task, "answer": "a crackle"} for name in broken for task in ("caption", "qa")]
    for row in rows[2:]:
        row["question"] = "what is it?" if row["task"] == "qa" else None
    manifest = tmp_path / "with-broken.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # 8 rows, 2 processes, batches of one: 4 steps an epoch; two epochs.
    config_path = write_config(tmp_path, tiny_model_dir, manifest, data={"batch_size": 1})
    launched = torchrun(str(config_path), "--set", "optimization.max_steps=8", cwd=tmp_path)
    said = [line for line in launched.stderr.splitlines() if "skipp" in line]
    unreadable = "not a readable audio file (unknown format or corrupt data)"
    assert sorted(said) == [
        f"skipped crackle.wav: {unreadable}",
        "skipped gone.wav: file not found",
        f"skipped static.wav: {unreadable}",
    ], launched.stderr[-3000:]
    assert launched.stderr.count("trained without the clips reported above") == 1, launched.stderr[-3000:]
    # Rank 0 exits 3 (torchrun reports it and exits 1); the others end well: a process that exited 3 first made
    # torchrun stop rank 0 (SIGTERM) as it ended.
    assert "SIGTERM" not in launched.stderr and re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 3 ", launched.stderr)
    assert (tmp_path / "run" / "model").is_dir()


def test_under_torchrun_a_resume_refused_once_set_up_is_said_once_and_a_warning_counts_processes_in_words(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """A run in epochs trained by one process, resumed by two: each reads half the rows, so its epochs make half
    the steps, which every process found and said (`error: ...` once per process). Rank 0 says it, once, and exits
    with 2 (torchrun reports it), the others end well. Trained on to a length given with --set, the run warned that
    the checkpoint "was written by 1 processes"."""
    epochs = {"max_steps": None, "epochs": 2}  # 4 rows in batches of 2: 4 steps
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", optimization=epochs)
    check_trained(config_path)

    def resumed(*options: str) -> subprocess.CompletedProcess:
        return torchrun(str(config_path), "--resume", *options)

    refused = resumed()
    assert refused.stderr.count("error: ") == 1, refused.stderr[-3000:]
    assert "make 2 steps now, the run's 4, as it trains on 2 processes (the run's: 1)" in refused.stderr
    assert "SIGTERM" not in refused.stderr and re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 2 ", refused.stderr)

    trained_on = resumed("--set", "optimization.max_steps=5", "--set", "optimization.epochs=null")
    assert trained_on.returncode == 0, trained_on.stderr[-3000:]
    written_by = "warning: the checkpoint was written by 1 process, not 2: random streams restart"
    assert trained_on.stderr.count(written_by) == 1, trained_on.stderr[-3000:]
    assert [step for step, _ in losses(tmp_path / "run")] == [1, 2, 3, 4, 5]


# `python -m trainer` whose rank 1 runs out of memory as it ends its second step, while rank 0 goes on to the next
# collective, where it waits for rank 1.
FAILING_RANK_1 = """
import os, torch
import trainer.loop
from trainer.__main__ import main

if os.environ["RANK"] == "1":
    after_step, steps = trainer.loop.Trainer._after_step, []
    def failing(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return after_step(self, *args, **kwargs)
    trainer.loop.Trainer._after_step = failing
main()
"""


def test_under_torchrun_a_process_that_fails_mid_run_is_said_by_it_and_the_others_say_they_lost_it(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """Rank 1 fails in its step (out of memory). Rank 0, waiting for it in a collective, ended with gloo's
    traceback ("Connection closed by peer"); now each says its own line, rank 1 why it failed, rank 0 that it lost
    a process of the run, and neither a traceback."""
    config_path = write_config(
        tmp_path, tiny_model_dir, sounds / "train.jsonl", data={"batch_size": 1}, optimization={"max_steps": 1000}
    )
    script = tmp_path / "failing.py"
    script.write_text(FAILING_RANK_1)
    launched = torchrun(str(config_path), entry=(str(script),))
    errors = sorted(line for line in launched.stderr.splitlines() if line.startswith("error: "))
    assert errors == [
        "error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB): a smaller batch needs less "
        "(--batch-size; `train`: data.batch_size), or free the memory",
        "error: rank 0: another process of the run ended while this one waited for it (its message or torchrun's "
        "says why)",
    ], launched.stderr[-3000:]
    assert "[rank0]: Traceback" not in launched.stderr and "[rank1]: Traceback" not in launched.stderr


def test_under_torchrun_an_error_every_process_meets_in_its_set_up_is_said_once_by_rank_0(
    tmp_path, sounds, tiny_model_dir
) -> None:
    """4 rows in batches of 4 over 2 processes make no whole step. Every process found it and said it (`error: ...`
    once per process), as every error of the set-up that each process meets alike (nothing to train, too large a
    data.max_answer_tokens, a prompt too long). Rank 0 says it, once, and exits with its code (torchrun reports
    it); the others end well."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", data={"batch_size": 4})
    launched = torchrun(str(config_path))
    assert launched.stderr.count("error: ") == 1, launched.stderr[-3000:]
    too_few = "4 usable examples are too few for one step of batch_size 4 x grad_accumulation 1 x 2 processes"
    assert too_few in launched.stderr
    assert "SIGTERM" not in launched.stderr and re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 1 ", launched.stderr)


# `python -m trainer` that writes its exit code to the file named by its rank in $EXIT_CODES: torchrun, stopped by a
# signal, reports none of its workers' codes. A worker that a signal ended writes none. With $SLOW_RANK_0
# (`MODULE:NAME`, `MODULE:CLASS.NAME`), rank 0 touches $SLOWED and sleeps 3 s after each call of that function: rank 1
# meanwhile waits for rank 0 in its next collective, where a signal sent it then lands.
EXIT_CODE_RECORDER = """
import functools, importlib, os, pathlib, time
from trainer.__main__ import main

def slowed(function):
    @functools.wraps(function)
    def slow(*args, **kwargs):
        result = function(*args, **kwargs)
        pathlib.Path(os.environ["SLOWED"]).touch()
        time.sleep(3)
        return result
    return slow

if os.environ.get("SLOW_RANK_0") and os.environ["RANK"] == "0":
    module, _, name = os.environ["SLOW_RANK_0"].partition(":")
    *path, attribute = name.split(".")
    owner = functools.reduce(getattr, path, importlib.import_module(module))
    setattr(owner, attribute, slowed(getattr(owner, attribute)))
try:
    main()
except SystemExit as end:
    pathlib.Path(os.environ["EXIT_CODES"], os.environ["RANK"]).write_text(str(end.code or 0))
    raise
"""
RUN_END = "trainer.loop:export_model"  # the model written as the run reaches its last step


@pytest.mark.parametrize(
    ("whom", "slow", "number", "code"),
    [
        # `kill -TERM` of one worker as it waits for rank 0: in the step's vote, as rank 0 ends its step or writes a
        # checkpoint (the signal's handler runs as the vote returns), and at the run's end, as rank 0 writes the model
        ("rank 1", "trainer.loop:Trainer._after_step", signal.SIGTERM, EXIT_TERMINATED),
        ("rank 1", "trainer.state:RunCheckpoints.write", signal.SIGTERM, EXIT_TERMINATED),
        ("rank 1", RUN_END, signal.SIGTERM, EXIT_TERMINATED),
        ("torchrun", None, signal.SIGTERM, EXIT_TERMINATED),  # which sends it on to every worker
        ("group", None, signal.SIGINT, EXIT_INTERRUPTED),  # a terminal's Ctrl-C: torchrun and every worker (twice)
    ],
    ids=["rank-1-in-a-step", "rank-1-in-a-checkpoint", "rank-1-in-the-export", "torchrun", "ctrl-c"],
)
def test_under_torchrun_a_stopped_run_is_said_once_by_rank_0_with_the_signals_exit_code(
    tmp_path, sounds, tiny_model_dir, whom: str, slow: str | None, number: int, code: int
) -> None:
    """Every process said "interrupted" and exited with 130 or 143; a worker signalled alone exited first, so
    torchrun stopped rank 0 (SIGTERM) and reported that. Now every process stops after the same step, they write the
    checkpoint and the model together, and rank 0 alone says it, with the signal's exit code (the one signalled or
    not); the others end well, after it, and torchrun reports rank 0's code. Whenever the signal comes: a worker
    that stopped on a signal that came as it waited in the step's vote went on alone, and the run hung."""
    steps = 3 if slow == RUN_END else 100_000
    config_path = write_config(
        tmp_path,
        tiny_model_dir,
        sounds / "train.jsonl",
        data={"batch_size": 1},
        optimization={"max_steps": steps},
        checkpoints={"every": 2},
    )
    metrics, recorder, codes = tmp_path / "run" / METRICS_FILE, tmp_path / "recorder.py", tmp_path / "codes"
    recorder.write_text(EXIT_CODE_RECORDER)
    codes.mkdir()
    slowed = tmp_path / "slowed"

    def ready() -> bool:  # a step logged: both processes are in the loop; or rank 0 is where it was slowed
        return slowed.exists() if slow else metrics.is_file() and bool(read_metrics(metrics, "train"))

    _, stderr = signal_when(
        torchrun_command(str(config_path), entry=(str(recorder),)),
        ready,
        number,
        group=whom == "group",
        env={**TORCHRUN_ENV, "EXIT_CODES": str(codes), "SLOWED": str(slowed), "SLOW_RANK_0": slow or ""},
        target=functools.partial(torchrun_worker, rank=1) if whom == "rank 1" else None,
        ends_within=TORCHRUN_STOP_S,
    )
    assert sum(line.startswith("interrupted: ") for line in stderr.splitlines()) == 1, stderr[-3000:]
    assert {path.name: int(path.read_text()) for path in codes.iterdir()} == {"0": code, "1": 0}, stderr[-3000:]
    if whom == "rank 1":  # torchrun, not signalled itself, reports its workers' codes
        assert "SIGTERM" not in stderr and re.search(rf"rank\s*: 0 .*\n\s*exitcode\s*: {code} ", stderr), stderr
    [end] = read_metrics(metrics, "end")
    assert (tmp_path / "run" / "checkpoints" / f"step-{end['step']:08d}.pt").is_file()
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["trained"]["steps"] == end["step"]
    check_trained(config_path, "--resume", "--set", f"optimization.max_steps={end['step'] + 1}")
    assert losses(tmp_path / "run")[-1][0] == end["step"] + 1


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--set", "optimization.bogus=1"], "unknown key optimization.bogus"),  # read by the command line
        (["--bogus"], "No such option: --bogus"),  # found by the option parser
        (["--resume", "--set", "optimization.lr=0.5"], "optimization.lr 0.5 (the run's: 0.001)"),  # by the run
    ],
    ids=["bad-config", "bad-option", "resume-refused"],
)
def test_under_torchrun_a_failure_found_before_the_processes_connect_is_said_once_per_machine(
    tmp_path, sounds, tiny_model_dir, options: list[str], said: str
) -> None:
    """A bad configuration or option, or a resume refused, is found by every process before they connect, and each
    said it (`error: ...` once per process). The machine's first process (LOCAL_RANK 0) says it, once, and exits 2
    (torchrun reports it); the others end well, without a word, so that torchrun does not stop the first before it
    has said it."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    if "--resume" in options:
        check_trained(config_path, "--set", "optimization.max_steps=1")
    launched = torchrun(str(config_path), *options)
    assert launched.stderr.count("error: ") == 1 and said in launched.stderr, launched.stderr[-3000:]
    assert re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: 2 ", launched.stderr), launched.stderr[-3000:]
    assert not re.search(r"rank\s*: 1 .*\n\s*exitcode\s*: 2 ", launched.stderr), launched.stderr[-3000:]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--set", "optimization.bogus=1"], "unknown key optimization.bogus"),
        (["--bogus"], "No such option: --bogus"),
        (["--resume"], "no checkpoint to resume from"),
        (["--set", "runtime.precision=fp16"], "fp16"),  # found by the run, before it connects
    ],
)
def test_before_the_processes_connect_the_machines_first_process_alone_says_what_fails(
    tmp_path, sounds, tiny_model_dir, monkeypatch, options: list[str], said: str
) -> None:
    """What torchrun's environment makes of it, whichever process is quicker: the second process of a machine
    (LOCAL_RANK 1) ends well without a word, the first says the failure with its exit code."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    second = train_command(config_path, *options)
    assert (second.exit_code, second.output) == (0, ""), second.output
    monkeypatch.setenv("LOCAL_RANK", "0")
    first = train_command(config_path, *options)
    assert first.exit_code == EXIT_USAGE and first.stderr.count("error: ") == 1 and said in first.stderr


def test_under_torchrun_the_dry_run_checks_and_reports_once_per_machine(tmp_path, sounds, tiny_model_dir) -> None:
    """Every process ran the dry run (encoding the clips, timing steps) and printed its whole report."""
    config_path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl")
    launched = torchrun(str(config_path), "--dry-run")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("plan: processes 2, examples per step 4") == 1, launched.stdout
    assert launched.stdout.count("ready to train") == 1, launched.stdout


# --- Set-up from scratch ---------------------------------------------------------------------------------------


def local_parts(folder: Path, architecture: PengiConfig) -> tuple[GPT2LMHeadModel, CLIPModel]:
    """A GPT-2 and a CLIP model of `architecture`'s sizes, with the tiny tokenizers, in `folder`/gpt2 and /clip."""
    torch.manual_seed(1)
    language_model = GPT2LMHeadModel(gpt2_config(architecture.decoder))
    language_model.save_pretrained(folder / "gpt2")
    tiny_gpt2_tokenizer().save_pretrained(folder / "gpt2")
    text = clip_text_config(architecture.text_encoder)
    vision = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32)
    clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=text.projection_dim))
    clip.save_pretrained(folder / "clip")
    tiny_clip_tokenizer().save_pretrained(folder / "clip")
    return language_model, clip


def from_scratch_config(folder: Path, architecture: dict[str, Any]) -> Path:
    """A run from scratch of `architecture` (a mapping, as YAML gives it) with the parts of `local_parts`."""
    model = {"init": None, "architecture": architecture, "language_model": "gpt2", "text_encoder": "clip"}
    return write_config(folder, folder, folder / "unused.jsonl", model=model)


def test_from_scratch_takes_the_language_model_and_clip_text_tower_from_local_directories(tmp_path, capfd) -> None:
    gpt2_tok, clip_tok = tiny_gpt2_tokenizer(), tiny_clip_tokenizer()
    architecture = tiny_config("base", gpt2_tok, clip_tok)
    language_model, clip = local_parts(tmp_path, architecture)
    config_path = from_scratch_config(tmp_path, json.loads(json.dumps(architecture.to_dict())))  # tuples as lists
    transformers_logging.enable_progress_bar()  # as in a fresh process (a query's embedder, here, turns it off)
    capfd.readouterr()

    model, tokenizers = build_model(load_config(config_path), config_path)

    assert "Loading weights" not in capfd.readouterr().err  # transformers' bar, between the run's lines in a log

    lm_state = language_model.state_dict()
    assert all(torch.equal(tensor, lm_state[key]) for key, tensor in model.gpt.state_dict().items())
    clip_state = clip.state_dict()
    tower = model.caption_encoder.base.state_dict()
    assert tower and all(torch.equal(tensor, clip_state[f"text_model.{key}"]) for key, tensor in tower.items())
    assert torch.equal(model.caption_encoder.clip_text_projection.weight, clip_state["text_projection.weight"])
    assert tokenizers.gpt2.encode("a bell") == gpt2_tok.encode("a bell")
    assert (
        tokenizers.prompts([CAPTION_PROMPT]).input_ids.tolist()
        == Tokenizers(architecture, gpt2_tok, clip_tok).prompts([CAPTION_PROMPT]).input_ids.tolist()
    )


def test_a_clip_text_tower_whose_tokenizer_ends_texts_with_another_token_than_the_architecture_is_refused(
    tmp_path,
) -> None:
    """The text tower pools each text at its end-of-text token and prompts are padded with it: an architecture
    that keeps CLIP's own id (49407) for a CLIP directory with a smaller vocabulary would fail mid-step with an index
    error (or read every text at the wrong token). The set-up (and so the dry run) says which setting to give."""
    architecture = tiny_config("base")
    local_parts(tmp_path, architecture)
    written = json.loads(json.dumps(architecture.to_dict()))
    del written["text_encoder"]["eos_token_id"], written["text_encoder"]["bos_token_id"]  # the defaults: CLIP's
    config_path = from_scratch_config(tmp_path, written)

    end = tiny_clip_tokenizer().eos_token_id
    with pytest.raises(ConfigError, match=f"ends a text with token {end}, the text encoder with token 49407: set "):
        build_model(load_config(config_path), config_path)


# --- Configuration, dry run --------------------------------------------------------------------------------------


def test_config_reads_types_and_rejects_unknown_keys(tmp_path, sounds, tiny_model_dir) -> None:
    path = write_config(tmp_path, tiny_model_dir, sounds / "train.jsonl", optimization={"lr": "1e-4"})
    config = load_config(path)
    assert config.optimization.lr == 1e-4 and config.data.train == sounds / "train.jsonl"
    assert load_config(path, {"optimization.warmup_steps": 7}).optimization.warmup_steps == 7

    bad = write_config(tmp_path / "bad", tiny_model_dir, sounds / "train.jsonl", optimization={"learning_rate": 1})
    with pytest.raises(ConfigError, match="unknown key optimization.learning_rate"):
        load_config(bad)
    result = train_command(bad)
    assert result.exit_code == EXIT_USAGE and "optimization.learning_rate" in result.stderr
    both = write_config(tmp_path / "both", tiny_model_dir, sounds / "train.jsonl", optimization={"epochs": 2})
    with pytest.raises(ConfigError, match="exactly one of max_steps and epochs"):
        load_config(both)
    # A recipe gives epochs; shortening a run with --set max_steps says how (it said only "exactly one").
    result = train_command(both)
    assert result.exit_code == EXIT_USAGE and "both are set: make one null, e.g. --set optimization.epochs=null" in (
        " ".join(result.stderr.split())
    )
    result = train_command(path, "--set", "runtime.precision=bf16")  # autocast is for CUDA
    assert result.exit_code == EXIT_USAGE and "needs a CUDA device" in result.stderr
    overrides = parse_overrides(["optimization.lr=3e-3", "freeze.audio_encoder=true", "data.validation=null"])
    assert load_config(path, overrides).optimization.lr == 3e-3
    assert overrides == {"optimization.lr": "3e-3", "freeze.audio_encoder": True, "data.validation": None}


def test_a_config_path_is_relative_to_its_file_and_a_leading_tilde_is_the_home_folder(
    tmp_path, sounds, tiny_model_dir, monkeypatch
) -> None:
    """No shell sees a YAML file's values, so `output_dir: ~/runs/x` means the home folder, as it would typed."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_config(tmp_path / "project", tiny_model_dir, sounds / "train.jsonl")
    config = load_config(path, {"output_dir": "~/runs/pengi", "data.validation": "val.jsonl"})
    assert config.output_dir == tmp_path / "home" / "runs" / "pengi"
    assert config.data.validation == (tmp_path / "project").resolve() / "val.jsonl"


def test_a_config_that_is_not_yaml_or_not_utf8_or_a_bad_set_value_is_one_line_and_exit_code_2(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: [unclosed\nmodel: {a: 1\n")
    result = train_command(bad, "--dry-run")
    # The problem and where it is, on one line (PyYAML's message spans four, the first alone says nothing).
    assert result.exit_code == EXIT_USAGE
    assert "not valid YAML: expected ',' or ']', but got ':' (line 2, column 6)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"output_dir: caf\xe9\n")
    result = train_command(latin1, "--dry-run")
    assert result.exit_code == EXIT_USAGE and f"{latin1}: not UTF-8 text" in result.stderr
    result = train_command(bad, "--dry-run", "--set", "data.batch_size=[1")
    assert result.exit_code == EXIT_USAGE  # was a traceback (exit code 1)
    assert "--set: data.batch_size: not a valid YAML value" in result.stderr


@pytest.mark.parametrize(
    ("args", "says", "code"),
    [
        (["typo.yaml"], "batch_sise", EXIT_USAGE),  # a typo'd key
        # The checkpoint named as typed (`./missing.pt` keeps its `./`), by the run as by its dry run and export.
        (["good.yaml", "--resume-from", "./missing.pt"], "./missing.pt: no such training checkpoint", EXIT_USAGE),
        (["good.yaml", "--dry-run", "--resume-from", "./missing.pt"], "./missing.pt: no such", EXIT_USAGE),
        (["good.yaml", "--resume"], "no checkpoint to resume from", EXIT_USAGE),  # a run with none yet
        (["export", "./missing.pt"], "./missing.pt: no such training checkpoint", EXIT_USAGE),
    ],
    ids=["config key", "resume-from", "dry-run resume-from", "resume", "export"],
)
def test_a_mistake_in_what_the_user_named_is_reported_before_torch_is_imported(tmp_path, args, says, code) -> None:
    """A typo'd key or checkpoint fails in a second, not after the seconds that importing torch and the models take."""
    (tmp_path / "typo.yaml").write_text(
        "output_dir: run\ndata: {train: train.jsonl, batch_sise: 4}\noptimization: {max_steps: 1}\n"
    )
    (tmp_path / "train.jsonl").write_text("")
    good = "output_dir: run\nmodel: {init: base}\ndata: {train: train.jsonl}\noptimization: {max_steps: 1}\n"
    (tmp_path / "good.yaml").write_text(good)
    script = f"""
import sys
from typer.testing import CliRunner
from pengi_search.cli import app
result = CliRunner().invoke(app, ["train", *{args!r}])
print(result.output)
print(result.exit_code, "torch" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert run.stdout.strip().splitlines()[-1] == f"{code} False", run.stdout
    assert says in run.stdout


def test_an_architecture_value_of_the_wrong_type_is_a_config_error_not_a_traceback(tmp_path) -> None:
    from trainer.model_setup import resolve_architecture

    source = tmp_path / "config.yaml"
    for fields, says in [
        ({"decoder": {"n_layer": "x"}}, "decoder.n_layer must be int, got 'x'"),  # was a TypeError from range()
        ({"d_proj": 1.5}, "d_proj must be int, got 1.5"),
        ({"normalize_text_embedding": 1}, "normalize_text_embedding must be bool, got 1"),
        ({"decoder": {"layers": 2}}, "unknown setting decoder.layers"),  # was DecoderConfig's TypeError
    ]:
        with pytest.raises(ConfigError, match=f"model.architecture: {says}"):
            resolve_architecture(fields, source)
    # ints where floats go, lists where tuples go, and null for an optional part are all fine
    cfg = resolve_architecture(
        {"mapper": {"mlp_ratio": 2}, "audio": {"depths": [1, 1, 1, 1]}, "text_encoder": None}, source
    )
    assert cfg.mapper.mlp_ratio == 2 and cfg.audio.depths == (1, 1, 1, 1) and cfg.text_encoder is None


def test_the_example_config_loads_and_shows_every_key() -> None:
    config = load_config(EXAMPLE_CONFIG)
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    for section in dataclasses.fields(TrainConfig):
        assert section.name in raw
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            assert sorted(raw[section.name]) == sorted(f.name for f in dataclasses.fields(value)), section.name


def test_dry_run_counts_missing_and_broken_audio_and_prints_the_task_mix(tmp_path, sounds, tiny_model_dir):
    (tmp_path / "broken.wav").write_text("not audio")
    rows = [
        {"audio": str(sounds / "hum.wav"), "task": "caption", "answer": "a low hum"},
        {"audio": str(sounds / "noise.wav"), "task": "sound_event", "answer": ["noise", "hiss"]},
        {"audio": str(sounds / "beeps.wav"), "task": "qa", "question": "is it a beep?", "answer": "yes"},
        {"audio": str(sounds / "chord.wav"), "task": "caption", "answer": "a bell rings twice"},
        {"audio": "gone.wav", "task": "caption", "answer": "nothing"},
        {"audio": "broken.wav", "task": "sound_event", "answer": "static"},
    ]
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config_path = write_config(tmp_path, tiny_model_dir, manifest)

    report = dry_run_report(load_config(config_path))
    (check,) = report.manifests
    assert (check.examples, check.usable, check.missing, check.broken) == (6, 4, 1, 1)
    assert check.tasks == {"caption": 3, "sound_event": 2, "qa": 1}
    assert report.exit_code == EXIT_PARTIAL

    result = train_command(config_path, "--dry-run")
    assert result.exit_code == EXIT_PARTIAL
    out = result.stdout
    assert "6 examples, 4 usable, 1 missing, 1 unreadable" in out
    assert "gone.wav: file not found" in out
    assert "sound_event" in out and "33.3%" in out and "50.0%" in out
    assert not (tmp_path / "run").exists()  # nothing trained


def test_dry_run_shows_a_clip_path_escaped_as_every_path_is(tmp_path, sounds, tiny_model_dir):
    """A newline or an escape sequence in a manifest's clip name would reach the terminal raw (a row broken in
    two, the rest of the report in red): the row names it escaped."""
    names = ["new\nline.wav", "red\x1b[31m.wav"]
    rows = [{"audio": str(sounds / "hum.wav"), "task": "caption", "answer": "a low hum"}]
    rows += [{"audio": name, "task": "caption", "answer": "nothing"} for name in names]
    manifest = tmp_path / "odd.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = train_command(write_config(tmp_path, tiny_model_dir, manifest), "--dry-run")
    assert result.exit_code == EXIT_PARTIAL
    assert "row 2: " in result.stdout and "new\\nline.wav: file not found\n" in result.stdout
    assert "row 3: " in result.stdout and "red\\x1b[31m.wav: file not found\n" in result.stdout
    assert not any(name in result.stdout for name in names)


def test_a_line_above_the_progress_bar_is_printed_as_written_on_one_line() -> None:
    """A sample answer holding brackets lost them to Rich markup, and piped to a log a long line broke at 80."""
    out = io.StringIO()
    answer = "a [bold] dog barks " + "and barks " * 12
    with TrainingProgress(total=4, done=0, enabled=True, console=Console(file=out, width=80)) as progress:
        progress.print(f"  {answer!r} (reference 'dog')")
    assert f"  {answer!r} (reference 'dog')" in out.getvalue().splitlines()


def test_the_encoding_bar_is_drawn_from_the_first_clip_encoded(monkeypatch) -> None:
    """A resumed run reads every clip's features from the cache: it showed an empty "encoding audio 0 clips" bar."""
    from trainer import run_data

    consoles: list[Console] = []

    def console(**_: object) -> Console:
        consoles.append(Console(file=Screen(), width=80))
        return consoles[-1]

    monkeypatch.setattr(run_data, "make_console", console)
    monkeypatch.setenv("TERM", "xterm")  # a terminal that redraws a line (a bar is off where TERM=dumb)
    with run_data.progress_bar(True) as advance:
        pass  # every clip came from the cache
    assert consoles[0].file.getvalue() == ""
    with run_data.progress_bar(True) as advance:
        advance(3)
    assert "encoding audio" in consoles[1].file.getvalue() and "3 clips" in consoles[1].file.getvalue()


def test_loglik_accuracy_breaks_ties_as_classify_does(monkeypatch) -> None:
    """Labels within `ties.TIE_TOLERANCE` of each other rank in name order, for `classify --method loglik` and the
    trainer's loglik_accuracy alike: float32 noise between two near-equal likelihoods decides neither."""
    from types import SimpleNamespace

    from pengi_search.decoding import CandidateScore
    from pengi_search.ties import rank
    from trainer import evaluation
    from trainer.data import Example

    prompt, labels = "this is a sound of", ["cat", "dog"]
    means = {"cat": -1.0000004, "dog": -1.0}  # a tie: "dog" leads by noise alone
    monkeypatch.setattr(evaluation, "row_embeddings", lambda _m, _d, rows, **_: (torch.zeros(len(rows), 4), rows))
    monkeypatch.setattr(evaluation, "generate_for_embeddings", lambda _e, _x, prompts, **_: ["" for _ in prompts])
    engine = SimpleNamespace(
        model=None,
        windows_per_batch=lambda _prompts: 8,
        score=lambda embeds, _prompt, candidates: [
            [CandidateScore(total=means[c], mean=means[c]) for c in candidates] for _ in range(len(embeds))
        ],
    )
    dataset = SimpleNamespace(examples=[Example(Path("a.wav"), prompt, "dog", "sound_event", None, None, 1)])

    metrics = evaluation.label_metrics(engine, dataset, [0], {prompt: labels}, cached=False, beam=1, max_len=5, top_k=1)

    assert [label for label, _ in rank(labels, [means[label] for label in labels])] == ["cat", "dog"]
    assert metrics is not None and (metrics.loglik_accuracy, metrics.loglik_top_k) == (0.0, 0.0)
