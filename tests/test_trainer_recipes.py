"""From labels to a model: `train init` (manifests, label map, config from a recipe), the run's watchable parts
(validation accuracy, best model, early stopping, samples across classes, honest samples/s, Ctrl-C and SIGTERM,
export of any checkpoint, the plot), augmentation, the feature cache and what `--dry-run` warns about."""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path
from signal import SIGHUP, SIGINT, SIGTERM, getsignal, raise_signal

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from torch.utils.data import get_worker_info
from typer.testing import CliRunner

from pengi_search.audio import load_audio
from pengi_search.cli import app
from pengi_search.errors import (
    EXIT_FAILED,
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_TERMINATED,
    EXIT_USAGE,
    UsageError,
)
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir
from pengi_search.stop_signals import interrupted_by_stop_signals, interrupted_exit_code
from pengi_search.units import duration_text
from trainer.augment import augment
from trainer.checkpoint_files import checkpoint_path
from trainer.config import AugmentationSection, load_config
from trainer.data import AudioTextDataset, read_manifest
from trainer.dry_run import dry_run_report
from trainer.evaluation import sample_rows
from trainer.features import FeatureDataset, encode_clips
from trainer.loop import Trainer
from trainer.model_setup import build_model, parameter_groups
from trainer.recipes import RECIPES, init_run, read_labels_csv
from trainer.reporting import METRICS_FILE, PLOT_FILE, RateWindow, read_metrics
from trainer.run import train
from trainer.state import Position, save_checkpoint
from trainer.stopping import InterruptRequest

from .indexing import send_to_self, signal_when

RATE = 44_100
LABELS = ("low", "high", "hiss", "buzz")


def write_clips(folder: Path, per_label: int = 3) -> Path:
    """`per_label` one-second clips of each of four sounds (pitch and level vary) and a labels CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(RATE) / RATE
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for label in LABELS:
        for i in range(per_label):
            shift = 1 + 0.05 * i
            wave = {
                "low": np.sin(2 * np.pi * 200 * shift * t),
                "high": np.sin(2 * np.pi * 2500 * shift * t),
                "hiss": rng.standard_normal(RATE),
                "buzz": np.sign(np.sin(2 * np.pi * 80 * shift * t)),
            }[label]
            name = f"{label}_{i}.wav"
            sf.write(folder / name, (0.2 * (1 + i) * wave / np.abs(wave).max()).astype(np.float32), RATE)
            rows.append(f"{name},{label.replace('o', 'o')}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


# --- train init -------------------------------------------------------------------------------------------------


def test_init_splits_each_label_with_the_seed_and_writes_manifests_label_map_and_config(tmp_path) -> None:
    labels = write_clips(tmp_path / "clips", per_label=5)
    result = cli("train", "init", str(labels), "--audio-root", str(tmp_path / "clips"), "--out", str(tmp_path / "t"))
    assert result.exit_code == EXIT_OK, result.output
    train, validation = (
        read_manifest(tmp_path / "t" / "train.jsonl"),
        read_manifest(tmp_path / "t" / "validation.jsonl"),
    )
    # 20% of each label's five clips: one clip per label, taught under two prompts.
    assert sorted(e.answer for e in validation if e.task == "sound_event") == sorted(LABELS)
    assert len(train) == 2 * 4 * 4 and {e.task for e in train} == {"sound_event", "caption"}
    assert not {e.audio for e in train} & {e.audio for e in validation}
    label_map = (tmp_path / "t" / "labels.csv").read_text().splitlines()
    assert label_map[0] == "label,answer,train,validation,test" and "hiss,hiss,4,1,0" in label_map
    config = load_config(tmp_path / "t" / "config.yaml")  # the labels-cpu recipe, ready to run
    assert config.model.audio_encoder == "aisfx" and config.freeze.audio_backbone
    assert config.data.validation == (tmp_path / "t" / "validation.jsonl").resolve()

    again = init_run(labels, tmp_path / "clips", tmp_path / "again", validation=0.2, seed=0)
    assert (tmp_path / "again" / "validation.jsonl").read_text().count("wav") == len(validation)
    other_seed = init_run(labels, tmp_path / "clips", tmp_path / "other", seed=5)
    assert other_seed.manifests["validation"].read_text() != again.manifests["validation"].read_text()


def test_init_names_the_next_command_as_the_shell_takes_it(tmp_path) -> None:
    """The `next:` line can be pasted as it is, also with an output folder whose name has a space; the paths are
    printed as they are (brackets were taken for markup and dropped)."""
    labels = write_clips(tmp_path / "clips", per_label=5)
    out = tmp_path / "my [first] run"
    result = cli("train", "init", str(labels), "--audio-root", str(tmp_path / "clips"), "--out", str(out))
    [line] = [line for line in result.output.splitlines() if line.startswith("next: ")]
    assert shlex.split(line.removeprefix("next: ")) == ["pengi-search", "train", str(out / "config.yaml"), "--dry-run"]
    assert f"config (labels-cpu): {out / 'config.yaml'}" in result.output.splitlines()
    dry = cli("train", str(out / "config.yaml"), "--dry-run", "--set", "output_dir=" + str(out / "run"))
    assert any(line.startswith(f"train {out / 'train.jsonl'}: ") for line in dry.output.splitlines()), dry.output


def test_an_init_folder_moved_with_its_audio_still_finds_every_clip(tmp_path, monkeypatch) -> None:
    """The common layout, a dataset folder (clips and labels.csv) beside the init's folder: the manifests name each
    clip relative to themselves (they named it by absolute path, so moving the project lost every clip), and every
    path init prints is as typed here (the manifests' were absolute, the label map's and config's as given)."""
    project = tmp_path / "project"
    write_clips(project / "dataset", per_label=5)
    monkeypatch.chdir(project)
    result = cli("train", "init", "dataset/labels.csv", "--audio-root", "dataset", "--out", str(project / "mine"))
    assert result.exit_code == EXIT_OK, result.output
    assert [line for line in result.output.splitlines() if not line.startswith("clips: ")] == [
        "train manifest: mine/train.jsonl",
        "validation manifest: mine/validation.jsonl",
        "label map: mine/labels.csv",
        "config (labels-cpu): mine/config.yaml",
        "next: pengi-search train mine/config.yaml --dry-run",
    ]
    audio = [json.loads(line)["audio"] for line in (project / "mine" / "train.jsonl").read_text().splitlines()]
    assert audio and all(path.startswith("../dataset/") for path in audio)

    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    project.rename(moved)
    monkeypatch.chdir(moved)
    clips = {path.name for path in (moved / "dataset").glob("*.wav")}
    for split in ("train", "validation"):
        examples = read_manifest(Path("mine") / f"{split}.jsonl")
        assert {e.audio.parent for e in examples} == {(moved / "dataset").resolve()}
        clips -= {e.audio.name for e in examples}
    assert clips == set()  # every clip found, in one manifest or the other
    dry = cli("train", "mine/config.yaml", "--dry-run")
    assert dry.exit_code == EXIT_OK, dry.output
    checked = [line for line in dry.output.splitlines() if " usable, " in line]  # one line per manifest
    assert len(checked) == 2 and all(line.endswith(" 0 missing, 0 unreadable") for line in checked), dry.output


def test_init_keeps_each_group_on_one_side_of_the_validation_split(tmp_path) -> None:
    """Clips cut from one recording (a `group`) are all in training or all in validation, never both."""
    write_clips(tmp_path, per_label=6)
    takes = [f"{label}_{i}.wav,{label},{label}-take{i // 2}" for label in LABELS for i in range(6)]
    rows = ["file,label,group", *takes]
    (tmp_path / "grouped.csv").write_text("\n".join(rows) + "\n")
    for seed in range(5):
        result = init_run(tmp_path / "grouped.csv", tmp_path, tmp_path / f"out{seed}", validation=0.34, seed=seed)
        sides = {}
        for split in ("train", "validation"):
            for example in read_manifest(result.manifests[split]):
                label, take = Path(example.audio).stem.split("_")
                sides.setdefault(f"{label}-take{int(take) // 2}", set()).add(split)
        assert all(len(side) == 1 for side in sides.values()), sides
        # two of each label's six clips (34%): one whole take of two clips per label
        assert result.counts == {"train": 16, "validation": 8, "test": 0}


def test_init_keeps_a_split_column_and_never_trains_on_test_rows(tmp_path) -> None:
    write_clips(tmp_path, per_label=2)
    rows = ["filename,label,split,caption"]
    for label in LABELS:
        rows += [f"{label}_0.wav,{label},train,a {label} sound", f"{label}_1.wav,{label},test,"]
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    result = init_run(tmp_path / "split.csv", tmp_path, tmp_path / "out", validation=0.5)
    assert result.counts == {"train": 4, "validation": 0, "test": 4}  # one clip per label: nothing to hold out
    train = read_manifest(result.manifests["train"])
    assert {e.answer for e in train if e.task == "caption"} == {f"a {label} sound" for label in LABELS}
    assert all("_1.wav" in str(e.audio) for e in read_manifest(result.manifests["test"]))
    assert "validation: null" in result.config.read_text()


def test_init_refuses_a_folder_holding_an_earlier_init_unless_forced_and_then_leaves_no_stale_file(tmp_path) -> None:
    """Init again into the same --out replaced the edited config.yaml, the manifests and the label map under a run
    trained on them, and left an earlier test.jsonl behind; now it refuses as `train` refuses a used output_dir."""
    write_clips(tmp_path, per_label=3)
    with_test = [
        "file,label,split",
        *(f"{label}_{i}.wav,{label},{'test' if i == 2 else ''}" for label in LABELS for i in range(3)),
    ]
    (tmp_path / "with-test.csv").write_text("\n".join(with_test) + "\n")
    (tmp_path / "plain.csv").write_text(
        "file,label\n" + "".join(f"{label}_{i}.wav,{label}\n" for label in LABELS for i in range(3))
    )
    out = tmp_path / "t"

    def init(csv: str, *options: str):
        return cli("train", "init", str(tmp_path / csv), "--audio-root", str(tmp_path), "--out", str(out), *options)

    assert init("with-test.csv", "--validation", "0.5").exit_code == EXIT_OK
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("batch_size: 32", "batch_size: 8"))  # the user's edit
    (out / "notes.txt").write_text("mine")
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    result = init("plain.csv")
    assert result.exit_code == EXIT_USAGE
    assert result.output.strip() == (
        f"error: {out}: holds an earlier init (config.yaml, labels.csv, train.jsonl, validation.jsonl, test.jsonl): "
        "replace it with --force, or choose another --out"
    )
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # nothing written

    checkpoint = out / "run" / "checkpoints" / "step-00000010.pt"  # a run trained on the earlier manifests
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    result = init("plain.csv")
    assert result.exit_code == EXIT_USAGE and len(result.output.strip().splitlines()) == 1
    assert f"and a run trained on it ({out / 'run'}): replace the init with --force (the run stays)" in result.output

    result = init("plain.csv", "--force")
    assert result.exit_code == EXIT_OK, result.output
    assert "batch_size: 32" in config.read_text()  # replaced, as asked
    assert not (out / "test.jsonl").exists()  # the earlier init's: it would pass for this CSV's test rows
    assert sorted(path.name for path in out.iterdir()) == [
        "config.yaml",
        "labels.csv",
        "notes.txt",
        "run",
        "train.jsonl",
        "validation.jsonl",
    ]
    assert checkpoint.read_bytes() == b"weights" and (out / "notes.txt").read_text() == "mine"
    assert f"warning: the run in {out / 'run'} was trained on the manifests this init replaced" in " ".join(
        result.output.split()
    )

    (out / "labels.csv").write_bytes((tmp_path / "plain.csv").read_bytes())  # the user's CSV, where the map goes
    result = cli("train", "init", str(out / "labels.csv"), "--audio-root", str(tmp_path), "--out", str(out), "--force")
    assert result.exit_code == EXIT_USAGE and "init would write its own file of that name over it" in result.output
    assert (out / "labels.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_writes_a_loadable_config(tmp_path, recipe) -> None:
    labels = write_clips(tmp_path / "clips")
    init = str(tmp_path / "model") if recipe == "finetune-released" else None
    result = init_run(labels, tmp_path / "clips", tmp_path / recipe, recipe=recipe, init=init)
    config = load_config(result.config)
    assert config.data.train == result.manifests["train"].resolve()


@pytest.mark.parametrize("recipe", ["labels-cpu", "labels-gpu"])
def test_init_refuses_a_model_to_start_from_for_a_recipe_that_trains_from_scratch(tmp_path, recipe) -> None:
    """Only finetune-released's config starts from a Pengi model: `--init` with another recipe was written nowhere,
    and the training that followed went on without it, without a word. Refused in one line, nothing written."""
    labels = write_clips(tmp_path / "clips")
    out = tmp_path / "out"
    args = ["train", "init", str(labels), "--audio-root", str(tmp_path / "clips"), "--out", str(out)]
    result = cli(*args, "--recipe", recipe, "--init", "base")
    assert result.exit_code == EXIT_USAGE and result.stderr.splitlines() == [
        f"error: --init: is the Pengi model the finetune-released recipe starts from; {recipe} starts from none: "
        "leave it out, or use --recipe finetune-released"
    ]
    assert not out.exists()


def test_init_names_the_row_of_a_bad_csv(tmp_path) -> None:
    (tmp_path / "bad.csv").write_text("file,label\na.wav,dog\n,cat\n")
    result = cli("train", "init", str(tmp_path / "bad.csv"), "--audio-root", str(tmp_path))
    assert result.exit_code == 2 and "line 3 lacks a file" in result.output
    (tmp_path / "missing.csv").write_text("file,label\nnothere.wav,dog\n")
    result = cli("train", "init", str(tmp_path / "missing.csv"), "--audio-root", str(tmp_path))
    assert result.exit_code == 2 and "line 2: no audio file" in result.output


def test_init_takes_a_clips_file_name_as_written_where_that_file_exists_else_trimmed(tmp_path) -> None:
    """As a truth or captions CSV: values are trimmed, but a file name may start or end with a space."""
    for name in (" take 1.wav", "take 1.wav", "take 2.wav"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "labels.csv").write_text('label,file\ndog," take 1.wav"\ncat, take 2.wav\n')
    clips = read_labels_csv(tmp_path / "labels.csv", tmp_path)
    assert [clip.audio for clip in clips] == [(tmp_path / name).resolve() for name in (" take 1.wav", "take 2.wav")]


def test_init_refuses_a_file_listed_twice_and_warns_of_one_label_or_no_validation(tmp_path) -> None:
    write_clips(tmp_path, per_label=3)
    (tmp_path / "twice.csv").write_text("file,label\nlow_0.wav,low\nhigh_0.wav,high\nlow_0.wav,high\n")
    result = cli("train", "init", str(tmp_path / "twice.csv"), "--audio-root", str(tmp_path), "-o", str(tmp_path / "t"))
    # was accepted: one clip with two labels, or a duplicate on both sides of the validation split
    assert result.exit_code == 2 and "line 4: low_0.wav is listed again (first on line 2)" in result.output
    (tmp_path / "empty.csv").write_text("")
    result = cli("train", "init", str(tmp_path / "empty.csv"), "--audio-root", str(tmp_path), "-o", str(tmp_path / "e"))
    said = "empty.csv: empty file; a CSV file starts with its header: file, label[, split][, caption][, group]"
    assert result.exit_code == 2 and said in result.output

    (tmp_path / "one.csv").write_text("file,label\n" + "".join(f"low_{i}.wav,low\n" for i in range(3)))
    result = cli("train", "init", str(tmp_path / "one.csv"), "--audio-root", str(tmp_path), "-o", str(tmp_path / "a"))
    assert result.exit_code == 0 and "warning: one label only (low)" in result.output
    assert "no validation clips" not in result.output
    rows = "file,label,group\n" + "".join(f"{label}_{i}.wav,{label},take\n" for label in LABELS for i in range(3))
    (tmp_path / "group.csv").write_text(rows)  # one recording: nothing can be held out
    result = cli("train", "init", str(tmp_path / "group.csv"), "--audio-root", str(tmp_path), "-o", str(tmp_path / "g"))
    assert result.exit_code == 0 and "warning: no validation clips" in result.output
    assert "one label only" not in result.output
    assert "validation: null" in (tmp_path / "g" / "config.yaml").read_text()

    # Three clips of "low" give one to validation; one clip of each other label gives none (was silent).
    rows = "file,label\n" + "".join(f"low_{i}.wav,low\n" for i in range(3)) + "high_0.wav,high\nhiss_0.wav,hiss\n"
    (tmp_path / "few.csv").write_text(rows)
    result = cli("train", "init", str(tmp_path / "few.csv"), "--audio-root", str(tmp_path), "-o", str(tmp_path / "f"))
    assert result.exit_code == 0 and "clips: 4 train, 1 validation" in result.output
    assert "warning: 2 of 3 labels have no validation clip (high, hiss;" in " ".join(result.output.split())
    assert "covers only the other 1" in " ".join(result.output.split())


def test_classify_with_the_label_map_scores_the_answers_the_model_was_taught(tmp_path, tiny_no_text_model_dir) -> None:
    from pengi_search.classify import Classifier, ClassifySettings, read_label_map
    from pengi_search.model_dir import ModelDir

    write_clips(tmp_path, per_label=1)
    (tmp_path / "snake.csv").write_text("file,label\nlow_0.wav,low_hum\nhigh_0.wav,high\n")
    result = init_run(tmp_path / "snake.csv", tmp_path, tmp_path / "out")
    labels, texts = read_label_map(result.label_map)
    assert labels == ["high", "low_hum"] and texts == {"high": "high", "low_hum": "low hum"}
    model = ModelDir.read(tiny_no_text_model_dir)
    # The model learnt "low hum" for low_hum: that is what loglik scores (it scored "low_hum"); the label is reported.
    loglik = Classifier(labels, ClassifySettings(method="loglik"), model_dir=model, texts=texts)
    assert loglik._answers == ["high", "low hum"] and loglik.labels == labels
    assert read_label_map(tmp_path / "snake.csv")[1] == {}  # no answer column: labels are scored as they are


# --- A run on labels ------------------------------------------------------------------------------------------------


def label_run_config(folder: Path, model_dir: Path, **overrides) -> Path:
    labels = write_clips(folder / "clips", per_label=3)
    init_run(labels, folder / "clips", folder, validation=0.34, captions=False)
    config = {
        "output_dir": str(folder / "run"),
        "model": {"init": str(model_dir), "dropout": 0.0},
        "freeze": {"language_model": False, "audio_encoder": True},
        "data": {"train": "train.jsonl", "validation": "validation.jsonl", "batch_size": 4, "num_workers": 0},
        "optimization": {"lr": 1e-2, "warmup_steps": 2, "max_steps": 40},
        "runtime": {"device": "cpu"},
        "logging": {"every": 5, "quiet": True},
        "evaluation": {"every": 5, "samples": 4, "beam": 1, "max_len": 6},
        "checkpoints": {"every": 10},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_labelled_run_reports_accuracy_keeps_the_best_model_and_plots(tmp_path, tiny_no_text_model_dir) -> None:
    folder = tmp_path / "[my] runs"  # brackets are no markup, and a long path is not broken across lines
    config_path = label_run_config(folder, tiny_no_text_model_dir)
    result = cli("train", str(config_path))
    assert result.exit_code == EXIT_OK, result.output
    run = folder / "run"
    said = result.output.splitlines()  # a quiet run (logging.quiet) still says where its models are
    assert f"model written to {run / 'model'}" in said
    assert any(line.startswith("best accuracy") and line.endswith(f": {run / 'best-model'}") for line in said), said
    evals = read_metrics(run / METRICS_FILE, "eval")
    assert [e["step"] for e in evals] == list(range(5, 41, 5))
    assert all(0.0 <= e["accuracy"] <= 1.0 and e["label_examples"] == 4 for e in evals)
    assert evals[-1]["loglik_top_k"] == 1.0  # four labels, top 5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    (end,) = read_metrics(run / METRICS_FILE, "end")
    # The best accuracy; on a tie the lower validation loss, then the earlier step.
    best = min(evals, key=lambda e: (-e["accuracy"], e["val_loss"], e["step"]))
    assert end["best"]["best_step"] == best["step"] and end["best"]["best"] == best["accuracy"]
    tied = sorted(e["step"] for e in evals if e["accuracy"] == best["accuracy"] and e is not best)
    rule = end["best"]["rule"]  # the log says which rule chose it, and so does the run's last line when not the metric
    assert rule == "accuracy" if not tied else rule.startswith("lower val_loss (accuracy tied with step")
    assert read_metrics(run / METRICS_FILE, "best")[-1]["step"] == best["step"]
    assert any(line.startswith("best accuracy") and (rule == "accuracy" or rule in line) for line in said)
    assert json.loads((run / "best-model" / "config.json").read_text())["trained"]["steps"] == best["step"]
    assert (run / "checkpoints" / "best.pt").is_file() and (run / PLOT_FILE).stat().st_size > 10_000
    samples = read_metrics(run / METRICS_FILE, "samples")[-1]["samples"]
    assert len({sample["answer"] for sample in samples}) == 4  # one of each class
    assert all(record["samples_per_s"] > 0 for record in read_metrics(run / METRICS_FILE, "train"))


def test_a_run_whose_evaluations_all_tie_keeps_the_first_and_says_which_rule_chose_it(tmp_path, tiny_no_text_model_dir):
    # A learning rate too small to move any weight: every evaluation scores the same accuracy and validation loss.
    overrides = {"optimization__lr": 1e-30, "optimization__max_steps": 15, "evaluation__samples": 0}
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, **overrides)
    result = cli("train", str(config_path))
    assert result.exit_code == EXIT_OK, result.output
    run = tmp_path / "run"
    losses = {e["val_loss"] for e in read_metrics(run / METRICS_FILE, "eval")}
    assert max(losses) - min(losses) < 1e-6
    rule = "earlier step (accuracy and val_loss tied with steps 10, 15)"
    (end,) = read_metrics(run / METRICS_FILE, "end")
    assert end["best"]["best_step"] == 5 and end["best"]["rule"] == rule
    assert [record["rule"] for record in read_metrics(run / METRICS_FILE, "best")] == ["accuracy"]  # when written
    assert json.loads((run / "best-model" / "config.json").read_text())["trained"]["rule"] == "accuracy"
    best_line = next(line for line in result.output.splitlines() if line.startswith("best accuracy"))
    assert f"at step 5, chosen by {rule}: " in best_line


def test_a_run_its_dry_run_and_export_name_the_paths_the_config_resolved_as_typed_here(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """The configuration resolves its paths against its folder; what the commands print of them was absolute. Now,
    as `train init` prints its files: relative to the current folder when under it (else absolute)."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_steps=2)
    missing = tmp_path / "clips" / "gone.wav"
    with (tmp_path / "train.jsonl").open("a") as manifest:
        manifest.write(json.dumps({"audio": str(missing), "task": "sound_event", "answer": "gone"}) + "\n")
    monkeypatch.chdir(tmp_path / "clips")  # the run's folder is above: its paths stay absolute
    result = cli("train", str(config_path), "--dry-run")
    assert f"train {tmp_path / 'train.jsonl'}: " in result.stdout, result.stdout
    monkeypatch.chdir(tmp_path)
    result = cli("train", "run.yaml", "--dry-run")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "train train.jsonl: 9 examples, 8 usable, 1 missing" in result.stdout  # was /tmp/.../train.jsonl
    assert "validation validation.jsonl: " in result.stdout
    assert "  row 9: clips/gone.wav: file not found" in result.stdout.splitlines()
    sf.write(missing, np.zeros(RATE // 2, dtype=np.float32), RATE)

    result = cli("train", "run.yaml")
    assert result.exit_code == EXIT_OK, result.output
    said = result.output.splitlines()
    assert "model written to run/model" in said
    assert any(line.startswith("best accuracy") and line.endswith(": run/best-model") for line in said), said
    result = cli("train", "export", "run/checkpoints/step-00000002.pt")
    assert result.exit_code == EXIT_OK and result.stdout.strip() == "model written to run/model-step-00000002"


def test_a_manifest_the_run_cannot_use_is_named_as_typed_here(tmp_path, tiny_no_text_model_dir, monkeypatch) -> None:
    """A manifest error named the manifest by the absolute path the configuration resolved: now as the run's other
    messages name its paths, relative to the current folder when under it, and a missing one as every command
    says a missing file."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_steps=2)
    with (tmp_path / "validation.jsonl").open("a") as manifest:
        manifest.write('{"audio": "clips/low_0.wav"\n')
    rows = len((tmp_path / "validation.jsonl").read_text().splitlines())
    monkeypatch.chdir(tmp_path / "clips")
    for options in ((), ("--dry-run",)):
        result = cli("train", str(config_path), *options)
        assert result.exit_code == EXIT_USAGE and f"error: {tmp_path}/validation.jsonl, row {rows}: bad JSON" in (
            result.output
        )
    monkeypatch.chdir(tmp_path)
    for options in ((), ("--dry-run",)):
        result = cli("train", "run.yaml", *options)
        assert result.exit_code == EXIT_USAGE and result.output.startswith(f"error: validation.jsonl, row {rows}: ")
        result = cli("train", "run.yaml", "--set", "data.train=absent.jsonl", *options)
        assert (result.exit_code, result.output) == (EXIT_USAGE, "error: absent.jsonl: no such file\n")


def test_a_run_on_cached_features_says_each_clip_it_could_not_encode_once(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """Encoding the clips met a broken one once per view, and the dataset logged `skipping PATH (row n): reason`
    each time; now the run says it once, as every command says a file it went on without, and exits 3."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_steps=2)
    config = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump({**config, "augmentation": {"views": 3, "gain_db": 6.0}}))
    (tmp_path / "clips" / "broken.wav").write_text("not audio")
    for manifest in ("train.jsonl", "validation.jsonl"):
        with (tmp_path / manifest).open("a") as out:
            for task in ("sound_event", "caption"):  # two rows, one clip
                out.write(json.dumps({"audio": "clips/broken.wav", "task": task, "answer": "crackle"}) + "\n")
    monkeypatch.chdir(tmp_path)
    result = cli("train", "run.yaml")
    assert result.exit_code == EXIT_PARTIAL, result.output
    said = [line for line in result.output.splitlines() if "skipp" in line or line.startswith("WARNING")]
    assert said == ["skipped clips/broken.wav: not a readable audio file (unknown format or corrupt data)"]


def test_a_cached_run_in_epochs_with_a_broken_clip_resumes_as_the_same_run(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """A cached run's epoch is the rows whose clip encoded, not the manifest's: its resume, and the dry run of it,
    count the same rows and find the run's steps, not a length changed by the broken clip's rows."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_steps=None)
    config = yaml.safe_load(config_path.read_text())
    config["optimization"]["epochs"] = 2
    config_path.write_text(yaml.safe_dump(config))
    (tmp_path / "clips" / "broken.wav").write_text("not audio")
    with (tmp_path / "train.jsonl").open("a") as out:  # a batch's worth of rows: one step an epoch more if counted
        out.write(
            "".join(
                json.dumps({"audio": "clips/broken.wav", "task": "caption", "answer": f"crackle {n}"}) + "\n"
                for n in range(4)
            )
        )
    monkeypatch.chdir(tmp_path)
    assert cli("train", "run.yaml").exit_code == EXIT_PARTIAL
    for dry_run in ([], ["--dry-run"]):
        result = cli("train", "run.yaml", "--resume", *dry_run)
        assert result.exit_code != EXIT_USAGE and "already finished" in " ".join(result.output.split()), result.output


def test_the_dry_run_of_an_uncached_run_counts_an_epoch_as_the_run_does_broken_clips_included(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """A run that decodes its clips each epoch reads every row (a broken clip is left out of its batch, which still
    counts), where a cached run reads the rows that encoded. The dry run counted the usable rows for both: it said
    2 steps an epoch where the run trained 3."""
    config_path = label_run_config(
        tmp_path, tiny_no_text_model_dir, data__cache_features=False, optimization__max_steps=None
    )
    config = yaml.safe_load(config_path.read_text())
    config["optimization"]["epochs"] = 1
    config_path.write_text(yaml.safe_dump(config))
    (tmp_path / "clips" / "broken.wav").write_text("not audio")
    with (tmp_path / "train.jsonl").open("a") as out:  # 8 rows and 4 broken: 3 batches of 4, 2 of them usable
        out.write(
            "".join(
                json.dumps({"audio": "clips/broken.wav", "task": "caption", "answer": f"crackle {n}"}) + "\n"
                for n in range(4)
            )
        )
    monkeypatch.chdir(tmp_path)
    result = cli("train", "run.yaml", "--dry-run")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "12 examples, 8 usable" in result.output and "steps per epoch 3, total steps 3" in result.output
    assert cli("train", "run.yaml").exit_code == EXIT_PARTIAL
    (end,) = read_metrics(tmp_path / "run" / METRICS_FILE, "end")
    assert end["step"] == 3


def test_the_dry_run_of_a_resume_counts_no_encoding_for_clips_the_feature_cache_holds(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """`--resume --dry-run` estimated the encoding of every clip, which the resumed run reads from `features/` in a
    moment; a new run's dry run, whose output_dir holds no features, still estimates it."""
    label_run_config(tmp_path, tiny_no_text_model_dir)
    monkeypatch.chdir(tmp_path)
    assert cli("train", "run.yaml", "--set", "optimization.max_steps=1").exit_code == EXIT_OK
    result = cli("train", "run.yaml", "--resume", "--dry-run", "--set", "optimization.max_steps=2")
    assert result.exit_code == EXIT_OK, result.output
    said = " ".join(result.output.split())
    assert "the clips' features are already in features/ (frozen encoder, cached): no encoding" in said
    assert "encoding the clips first" not in said
    result = cli("train", "run.yaml", "--dry-run", "--set", "output_dir=elsewhere")
    assert result.exit_code == EXIT_OK, result.output
    assert "encoding the clips first (frozen encoder, cached): about" in " ".join(result.output.split())


def test_what_a_run_says_while_it_encodes_reads_one_line_each_in_a_log(tmp_path, tiny_no_text_model_dir) -> None:
    """Off a terminal, the note on the frozen encoder broke at 80 columns, and the encoding bar left a blank line.
    Its counts read with their nouns in the number they take."""
    config_path = label_run_config(tmp_path / "a long folder name", tiny_no_text_model_dir, logging__quiet=False)
    result = cli("train", str(config_path), "--set", "optimization.max_steps=1")
    assert result.exit_code == EXIT_OK, result.output
    lines = result.output.splitlines()
    frozen = next(line for line in lines if line.startswith("the audio encoder is frozen"))
    assert frozen.endswith("reused by every epoch") and len(frozen) > 80
    ready = next(index for index, line in enumerate(lines) if line.startswith("audio features ready"))
    assert lines[ready - 1] == frozen
    assert "its outputs for 8 training clips x 1 view are computed once" in frozen  # not "x 1 view(s)"
    assert lines[ready].endswith("; 0 rows skipped")


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(tmp_path, tiny_no_text_model_dir) -> None:
    config_path = label_run_config(
        tmp_path, tiny_no_text_model_dir, optimization__lr=1e-9, evaluation__patience=2, evaluation__metric="val_loss"
    )
    assert cli("train", str(config_path)).exit_code == EXIT_OK
    (stop,) = read_metrics(tmp_path / "run" / METRICS_FILE, "early_stop")
    assert stop["step"] < 40 and stop["since_best"] == 2
    (end,) = read_metrics(tmp_path / "run" / METRICS_FILE, "end")
    assert end["stopped_early"] and end["step"] == stop["step"]

    # Resumed, it trained to the next evaluation and wrote model/ and an `end` again: now it says it has finished.
    metrics = (tmp_path / "run" / METRICS_FILE).read_bytes()
    result = cli("train", str(config_path), "--resume")
    assert result.exit_code == EXIT_OK, result.output
    assert (
        f"the run already finished at step {stop['step']} (early stop: no better val_loss in 2 evaluations, "
        "evaluation.patience 2): nothing was trained or written" in " ".join(result.output.split())
    )
    assert "raise evaluation.patience and resume again" in " ".join(result.output.split())
    assert (tmp_path / "run" / METRICS_FILE).read_bytes() == metrics


def test_a_time_budget_ends_the_run_with_an_evaluation_and_a_best_model(tmp_path, tiny_no_text_model_dir) -> None:
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_minutes=1e-6)
    assert cli("train", str(config_path)).exit_code == EXIT_OK
    run = tmp_path / "run"
    (limit,) = read_metrics(run / METRICS_FILE, "time_limit")
    assert limit["step"] < 5  # stopped before the first scheduled evaluation...
    assert [e["step"] for e in read_metrics(run / METRICS_FILE, "eval")] == [limit["step"]]  # ...so it evaluated
    assert json.loads((run / "best-model" / "config.json").read_text())["trained"]["steps"] == limit["step"]


def test_ctrl_c_writes_a_checkpoint_and_the_model_and_any_checkpoint_exports(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    after_step = Trainer._after_step

    def press_ctrl_c_at_step_7(self: Trainer) -> None:
        after_step(self)
        if self.position.step == 7:
            self.interrupt.requested = True  # what the SIGINT handler sets

    monkeypatch.setattr(Trainer, "_after_step", press_ctrl_c_at_step_7)
    result = cli("train", str(config_path))
    assert result.exit_code == 130
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step-00000007.pt").is_file()
    # Said as an interrupted `index` run says it: what the run kept, and how to go on.
    assert result.stderr.splitlines()[-1] == (
        f"interrupted: the run stopped after step 7, kept in {run / 'checkpoints' / 'step-00000007.pt'} and "
        f"{run / 'model'}; run the same command with --resume to go on"
    )
    assert json.loads((run / "model" / "config.json").read_text())["trained"]["steps"] == 7

    exported = cli("train", "export", str(run / "checkpoints" / "step-00000007.pt"), "-o", str(tmp_path / "at-7"))
    assert exported.exit_code == EXIT_OK, exported.output
    at_7, interrupted = Pengi.from_pretrained(tmp_path / "at-7"), Pengi.from_pretrained(run / "model")
    interrupted_state = interrupted.state_dict()
    assert all(torch.equal(value, interrupted_state[key]) for key, value in at_7.state_dict().items())
    # Both record what the model learnt (the manifests' one task), and describe asks it that, not all three tasks.
    assert ModelDir.read(run / "model").trained_tasks == ModelDir.read(tmp_path / "at-7").trained_tasks
    assert ModelDir.read(tmp_path / "at-7").trained_tasks == ("sound_event",)
    clip = tmp_path / "clips" / "low_0.wav"
    described = cli("describe", str(clip), "--model", str(tmp_path / "at-7"), "--json", "--beam", "1", "--max-len", "2")
    assert described.exit_code == EXIT_OK, described.output
    assert [list(window["answers"]) for window in json.loads(described.stdout)[0]["windows"]] == [["sound_event"]]
    monkeypatch.setattr(Trainer, "_after_step", after_step)
    assert cli("train", str(config_path), "--resume").exit_code == EXIT_OK
    assert read_metrics(run / METRICS_FILE, "end")[-1]["step"] == 40


def test_sigterm_stops_a_run_after_its_step_with_a_checkpoint_the_model_and_its_own_exit_code(
    tmp_path, tiny_no_text_model_dir
) -> None:
    """What a scheduler's preemption, `kill` and torchrun send: the run ends as on Ctrl-C, with 143."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, optimization__max_steps=100_000, logging__every=1)
    metrics = tmp_path / "run" / METRICS_FILE
    command = [sys.executable, "-m", "pengi_search", "train", str(config_path)]
    status, stderr = signal_when(command, lambda: metrics.is_file() and bool(read_metrics(metrics, "train")), SIGTERM)
    assert status == EXIT_TERMINATED and stderr.splitlines()[-1].startswith(
        "interrupted: the run stopped after step "
    ), stderr
    [end] = read_metrics(metrics, "end")
    run = tmp_path / "run"
    assert (run / "checkpoints" / f"step-{end['step']:08d}.pt").is_file()
    assert json.loads((run / "model" / "config.json").read_text())["trained"]["steps"] == end["step"]


@pytest.mark.parametrize(
    ("number", "code"), [(SIGTERM, EXIT_TERMINATED), (SIGINT, EXIT_INTERRUPTED), (SIGHUP, EXIT_HANGUP)]
)
def test_a_stop_signal_to_the_whole_process_group_stops_a_run_with_loader_workers_as_it_stops_one_process(
    tmp_path, tiny_no_text_model_dir, number, code
) -> None:
    """systemd's stop, SLURM's preemption, `kill -- -PGID`, a terminal's Ctrl-C and its closing signal the DataLoader
    workers too: one the signal ended made PyTorch raise "DataLoader worker (pid N) is killed by signal" in the run,
    mid-step, before its checkpoint. The workers leave the signal to the run, which stops after its step as it always
    does."""
    config_path = label_run_config(
        tmp_path,
        tiny_no_text_model_dir,
        data__num_workers=2,
        data__cache_features=False,  # clips decoded by the workers at every step
        optimization__max_steps=100_000,
        logging__every=1,
        evaluation__every=2,  # and by the validation loader's workers
    )
    metrics = tmp_path / "run" / METRICS_FILE
    command = [sys.executable, "-m", "pengi_search", "train", str(config_path)]

    def trained() -> bool:  # a step logged: the workers are reading clips
        return metrics.is_file() and bool(read_metrics(metrics, "train"))

    status, stderr = signal_when(command, trained, number, group=True)
    assert status == code and stderr.splitlines()[-1].startswith("interrupted: the run stopped after step "), stderr
    assert "Traceback" not in stderr and "DataLoader" not in stderr, stderr
    [end] = read_metrics(metrics, "end")
    run = tmp_path / "run"
    assert (run / "checkpoints" / f"step-{end['step']:08d}.pt").is_file()
    assert json.loads((run / "model" / "config.json").read_text())["trained"]["steps"] == end["step"]


def signalled_then_read(reads: Path, path: Path, *, sample_rate: int) -> np.ndarray:
    """The clip, read after a DataLoader worker is sent SIGINT and SIGTERM as it starts reading it (noted in
    `reads`); read in the run's own process, as evaluation's metrics read their rows, it is only read."""
    if get_worker_info() is not None:
        (reads / str(os.getpid())).touch()
        for number in (SIGINT, SIGTERM):
            raise_signal(number)
    return load_audio(path, sample_rate=sample_rate)


@pytest.mark.parametrize("cached", [True, False], ids=["feature-encoding", "training-and-validation"])
def test_every_loader_of_a_run_leaves_the_stop_signals_to_the_run(
    tmp_path, tiny_no_text_model_dir, monkeypatch, cached
) -> None:
    """Each loader a run makes (the frozen encoder's features, the training batches, the validation loss) reads
    clips in worker processes that a stop signal does not end: it is the run's to take."""
    reads = tmp_path / "reads"
    reads.mkdir()
    monkeypatch.setattr("trainer.data.project_load_audio", functools.partial(signalled_then_read, reads))
    overrides = {"data__num_workers": 2, "data__cache_features": cached, "optimization__max_steps": 2}
    config = load_config(label_run_config(tmp_path, tiny_no_text_model_dir, evaluation__every=2, **overrides))
    result = train(config)  # a worker ended by either signal fails the run
    assert result.steps == 2 and not result.audio_skipped
    assert len(list(reads.iterdir())) >= 2  # the workers did read the clips
    assert [record["step"] for record in read_metrics(config.output_dir / METRICS_FILE, "eval")] == [2]


def test_either_stop_signal_asks_the_run_to_stop_and_a_second_one_interrupts_at_once() -> None:
    for number, code in ((SIGINT, EXIT_INTERRUPTED), (SIGTERM, EXIT_TERMINATED)):
        before = getsignal(number)
        with interrupted_by_stop_signals(), InterruptRequest() as interrupt:  # the command line's, then the run's
            try:
                send_to_self(number)
            except KeyboardInterrupt:
                pytest.fail("the run was interrupted mid-step")
            assert interrupt.requested and interrupted_exit_code() == code
            with pytest.raises(KeyboardInterrupt):
                send_to_self(number)
        assert getsignal(number) == before  # each put back the handler it found


def test_under_torchrun_a_repeated_stop_signal_is_the_same_request() -> None:
    """A terminal's Ctrl-C reaches each process of a torchrun run twice, from the terminal and forwarded by torchrun:
    interrupted at once by the second, a process would leave the others waiting in a collective, the checkpoint
    unwritten. torchrun itself ends the processes that outstay its shutdown timeout."""
    for number, code in ((SIGINT, EXIT_INTERRUPTED), (SIGTERM, EXIT_TERMINATED)):
        with interrupted_by_stop_signals(), InterruptRequest(once=True) as interrupt:
            try:
                send_to_self(number)
                send_to_self(number)
            except KeyboardInterrupt:
                pytest.fail("the run was interrupted mid-step")
            assert interrupt.requested and interrupted_exit_code() == code


def test_a_stop_signal_that_comes_after_the_vote_stops_the_run_at_the_next_one_on_every_process() -> None:
    """A process waiting in the vote's collective for the others runs the signal's handler once it returns: it
    stopped there alone (on what it was sent, not on what the processes shared), it went to the wrap-up's
    collectives while the others went on to the next step's, and the run hung."""
    with interrupted_by_stop_signals(), InterruptRequest(once=True) as interrupt:
        nobody = interrupt.votes()  # what the others summed: this process, not yet asked
        send_to_self(SIGTERM)  # as the collective returns
        assert not interrupt.agree(nobody)  # as every other process decides
        assert interrupt.agree(interrupt.votes())  # the next step's vote carries it, to every process
        assert interrupted_exit_code() == EXIT_TERMINATED


def test_before_the_processes_share_a_decision_a_stop_signal_interrupts_the_set_up_at_once() -> None:
    """The set-up (features take minutes) watches no request: it stops where the signal finds it, until `hold`."""
    with interrupted_by_stop_signals(), InterruptRequest(once=True, held=False) as interrupt:
        with pytest.raises(KeyboardInterrupt):
            send_to_self(SIGINT)
        interrupt.hold()
        send_to_self(SIGINT)
        assert interrupt.requested and interrupted_exit_code() == EXIT_INTERRUPTED


def test_per_part_learning_rates_make_their_own_groups(tiny_no_text_model_dir) -> None:
    model = Pengi.from_pretrained(tiny_no_text_model_dir)
    groups = parameter_groups(model, 1e-4, {"mappers": 1e-3, "audio_encoder": 1e-6})
    by_part = {group["part"]: group for group in groups}
    assert {part: group["lr"] for part, group in by_part.items()} == {
        "default": 1e-4,
        "mappers": 1e-3,
        "audio_encoder": 1e-6,
    }
    mapper_params = {id(p) for p in model.caption_decoder.audio_project.parameters()}
    assert mapper_params <= {id(p) for p in by_part["mappers"]["params"]}
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])


# --- Dry run ------------------------------------------------------------------------------------------------------


def test_dry_run_refuses_what_the_run_refuses_too_few_examples(tmp_path, tiny_no_text_model_dir) -> None:
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, data__batch_size=64)
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_FAILED, result.output  # was "ready to train (see the warnings)", exit code 0
    assert "usable examples are too few for one step of batch_size 64" in result.output
    assert "cannot train" in result.output
    result = cli("train", str(config_path))
    assert result.exit_code == EXIT_FAILED and "too few for one step of batch_size 64" in result.output
    assert "lower data.batch_size" in result.output  # the dry run's advice, which the run lacked


def test_a_bad_config_is_bad_usage_for_the_dry_run_as_for_the_run(tmp_path, tiny_no_text_model_dir) -> None:
    """An output_dir that is a file, or mixed precision on the CPU: both exit with 2 and say why in the same words
    (the dry run said 1, the run 2)."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    (tmp_path / "taken").write_text("a file")
    config = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "taken")}))
    taken = f"output_dir {tmp_path / 'taken'} is a file, not a folder"
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_USAGE, result.output  # was 1
    assert taken in result.output and "cannot train: fix the configuration" in result.output
    result = cli("train", str(config_path))  # was "[Errno 20] Not a directory: '.../taken/tokenizer'"
    assert result.exit_code == EXIT_USAGE and taken in result.output

    cpu_bf16 = ("--set", f"output_dir={tmp_path / 'run'}", "--set", "runtime.precision=bf16")  # device: cpu
    needs_cuda = "runtime.precision bf16 needs a CUDA device; this run is on the CPU"
    result = cli("train", str(config_path), "--dry-run", *cpu_bf16)
    assert result.exit_code == EXIT_USAGE and needs_cuda in result.output  # was "ready to train", exit code 0
    result = cli("train", str(config_path), *cpu_bf16)
    assert result.exit_code == EXIT_USAGE and needs_cuda in result.output


def test_an_output_dir_holding_a_run_is_bad_usage_for_a_new_run_and_its_dry_run_unless_resuming(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """Nothing was done and the fix is in the command (--resume) or the config (output_dir): exit code 2, as `train
    init` refusing a taken folder and --resume without a checkpoint (it was 1), on one line naming the folder as
    typed here, before any set-up."""
    import trainer.run

    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    run_at(config_path, step=10)
    monkeypatch.chdir(tmp_path)
    holds = "error: run: holds checkpoints of a run: continue it with --resume, or choose a new output_dir"
    with monkeypatch.context() as during:
        during.setattr(trainer.run, "Trainer", None)  # set-up (minutes of feature encoding) must not start
        result = cli("train", str(config_path))
        assert result.exit_code == EXIT_USAGE, result.output  # was 1
        assert result.output.strip() == holds
        with pytest.raises(UsageError, match="holds checkpoints of a run"):  # library callers alike
            trainer.run.train(load_config(config_path))
        # The dry run refuses it in the same words, among the rest of its report (the next test).
        result = CliRunner().invoke(app, ["train", str(config_path), "--dry-run"])
        assert result.exit_code == EXIT_USAGE and result.stderr.splitlines() == [holds], result.output
        assert dry_run_report(load_config(config_path)).config_problems == [holds.removeprefix("error: ")]
    result = cli("train", str(config_path), "--dry-run", "--resume")
    assert result.exit_code == EXIT_OK and "ready to train" in result.output
    assert "resuming from run/checkpoints/step-00000010.pt at step 10 of 40 (epoch 1, " in result.output
    assert "already finished" not in result.output
    run_at(config_path, step=40)  # the run's planned end (max_steps 40)
    result = cli("train", str(config_path), "--dry-run", "--resume")
    assert result.exit_code == EXIT_OK, result.output
    finished = (
        "the run already finished at step 40 (optimization.max_steps 40): resuming trains nothing; to train on, "
        "resume with a higher optimization.max_steps, given with --set"
    )
    assert finished in " ".join(result.output.split())
    result = cli("train", str(config_path), "--dry-run", "--resume-from", str(tmp_path / "nope.pt"))
    assert result.exit_code == EXIT_USAGE and "nope.pt: no such training checkpoint" in result.output


def test_a_dry_run_names_every_problem_the_run_would_stop_at_one_by_one(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """bf16 on the CPU and an output_dir holding a run: the dry run named the output_dir alone, and once it was
    fixed, the run stopped at the precision. It lists both, each on its own line in the words the run stops with,
    still reports the audio it checked, and exits 2; the run stops at the first, as before."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    run_at(config_path, step=10)
    (tmp_path / "clips" / "gone.wav").unlink(missing_ok=True)
    with (tmp_path / "train.jsonl").open("a") as out:
        out.write(json.dumps({"audio": "clips/gone.wav", "task": "caption", "answer": "nothing"}) + "\n")
    monkeypatch.chdir(tmp_path)
    bf16 = ("--set", "runtime.precision=bf16")  # device: cpu
    needs_cuda = "error: run.yaml: runtime.precision bf16 needs a CUDA device; this run is on the CPU"
    holds = "error: run: holds checkpoints of a run: continue it with --resume, or choose a new output_dir"
    result = CliRunner().invoke(app, ["train", "run.yaml", "--dry-run", *bf16])
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.splitlines() == [needs_cuda, holds]
    assert "9 examples, 8 usable, 1 missing" in result.stdout and "cannot train: fix the configuration" in result.stdout
    result = CliRunner().invoke(app, ["train", "run.yaml", *bf16])
    assert result.exit_code == EXIT_USAGE and result.stderr.splitlines() == [holds]  # the one it checks first


def test_a_dry_run_lists_a_corrupt_checkpoint_among_its_problems_with_the_runs_exit_code(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    """A checkpoint cut short (a copy that stopped, a full disk): `--resume --dry-run` stopped there with its error
    alone. It is listed among the problems in the run's words, the rest of the report follows, and the exit code is
    the run's (1: the run cannot start, as for a model file that cannot be read)."""
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    run_at(config_path, step=10)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000010.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    monkeypatch.chdir(tmp_path)
    unreadable = "run/checkpoints/step-00000010.pt: not a readable training checkpoint (RuntimeError)"
    result = CliRunner().invoke(app, ["train", "run.yaml", "--resume"])
    assert result.exit_code == EXIT_FAILED, result.output
    assert result.stderr.splitlines() == [f"error: {unreadable}"]  # named from here, as the run names its paths
    result = CliRunner().invoke(app, ["train", "run.yaml", "--resume-from", "./run/checkpoints/step-00000010.pt"])
    assert result.stderr.splitlines() == [f"error: ./{unreadable}"]  # named as given
    result = CliRunner().invoke(app, ["train", "run.yaml", "--resume", "--dry-run"])
    assert result.exit_code == EXIT_FAILED, result.output
    assert unreadable in result.stdout and "8 examples, 8 usable" in result.stdout
    assert "plan: " in result.stdout and result.stdout.rstrip().endswith("cannot train")


def run_at(config_path: Path, step: int) -> None:
    """A checkpoint of the configuration's run at `step`, with what a dry run reads of one (its run and position)."""
    config = load_config(config_path)
    payload = {"position": Position(step=step).to_dict(), "config": config.to_dict()}
    save_checkpoint(checkpoint_path(config.output_dir, step), payload, keep=None)


def test_resume_from_a_missing_checkpoint_fails_before_the_set_up(
    tmp_path, tiny_no_text_model_dir, monkeypatch
) -> None:
    import trainer.run

    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    monkeypatch.setattr(trainer.run, "Trainer", None)  # set-up (minutes of feature encoding) must not start
    result = cli("train", str(config_path), "--resume-from", str(tmp_path / "nope.pt"))
    assert result.exit_code == EXIT_USAGE and "nope.pt: no such training checkpoint" in result.output
    result = cli("train", str(config_path), "--resume")
    assert result.exit_code == EXIT_USAGE and "no checkpoint to resume from" in result.output


@pytest.mark.parametrize("given", ["missing", "folder"])
def test_a_missing_checkpoint_is_bad_usage_for_library_callers_as_on_the_command_line(
    tmp_path, tiny_no_text_model_dir, given: str
) -> None:
    """`train` and `export_checkpoint` raise the error the command line shows (they raised exit code 1 errors in
    other words), and the dry run reports it among its problems: exit code 2, what the path is and what to give
    instead."""
    import trainer.run
    from trainer.export import export_checkpoint

    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    config = load_config(config_path)
    checkpoint = tmp_path / "nope.pt" if given == "missing" else tmp_path
    expected = {
        "missing": f"{checkpoint}: no such training checkpoint",
        "folder": f"{checkpoint}: a folder, not a training checkpoint; name one of its checkpoint files",
    }[given]
    calls = {
        "train": lambda: trainer.run.train(config, resume=checkpoint),
        "export": lambda: export_checkpoint(checkpoint),
    }
    for name, call in calls.items():
        with pytest.raises(UsageError) as raised:
            call()
        assert raised.value.exit_code == EXIT_USAGE and str(raised.value).startswith(expected), name
    report = dry_run_report(config, resume=checkpoint)
    (problem,) = report.config_problems
    assert report.exit_code == EXIT_USAGE and problem.startswith(expected)
    for command in (["--resume-from", str(checkpoint)], ["--dry-run", "--resume-from", str(checkpoint)]):
        result = cli("train", str(config_path), *command)
        assert result.exit_code == EXIT_USAGE and expected in " ".join(result.output.split())
    result = cli("train", "export", str(checkpoint))
    assert result.exit_code == EXIT_USAGE and expected in " ".join(result.output.split())


def test_dry_run_times_read_in_seconds_minutes_or_hours() -> None:
    # A small set's epoch of 1.3 s was shown as "about 0.0 min an epoch".
    assert [duration_text(s) for s in (1.32, 42.4, 90, 5400)] == ["1.3 s", "42 s", "1.5 min", "1.5 h"]


def test_dry_run_warns_of_a_long_warm_up_and_refuses_a_small_vocabulary(tmp_path, tiny_no_text_model_dir) -> None:
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir, optimization__warmup_steps=2000)
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_OK
    assert "warm-up (2000 steps) is not shorter than the whole run (40 steps)" in result.output
    assert "s a step, about" in result.output and "ready to train (see the warnings)" in result.output

    scratch = yaml.safe_load(config_path.read_text())
    architecture = {
        "text_encoder": None,
        "audio": {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "num_classes": 4, "out_emb": 64},
        "decoder": {"n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 50, "n_positions": 64},
        "mapper": {"prefix_length": 2, "clip_length": 10, "num_layers": 1, "num_heads": 2},
        "d_proj": 16,
        "text_prompt_length": 12,
    }
    scratch["data"]["max_answer_tokens"] = 16
    scratch["model"] = {
        "architecture": architecture,
        "gpt2_tokenizer": str(tiny_no_text_model_dir / "tokenizer" / "gpt2"),
    }
    config_path.write_text(yaml.safe_dump(scratch))
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_FAILED
    assert "more than the language model's vocabulary (50)" in result.output
    report = dry_run_report(load_config(config_path), source=config_path)
    assert not (tmp_path / "run").exists()
    assert report.model_problems

    architecture["decoder"]["vocab_size"] = 500
    config_path.write_text(yaml.safe_dump(scratch))
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_OK, result.output
    assert "text_prompt_length (12) should equal mapper.clip_length (10)" in result.output
    architecture["text_prompt_length"] = 2  # "this is a sound of" + the end marker is longer
    config_path.write_text(yaml.safe_dump(scratch))
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_FAILED
    assert "prompt longer than 2 tokens" in result.output
    architecture["text_prompt_length"] = 12
    architecture["mapper"]["num_heads"] = 5
    config_path.write_text(yaml.safe_dump(scratch))
    result = cli("train", str(config_path), "--dry-run")
    assert result.exit_code == EXIT_FAILED
    assert "width 32 is not divisible by mapper.num_heads 5" in result.output


# --- Pieces ---------------------------------------------------------------------------------------------------------


def test_samples_are_drawn_with_the_seed_across_answers() -> None:
    class Row:
        def __init__(self, answer: str) -> None:
            self.answer = answer

    rows = [Row(label) for label in ("a", "a", "a", "a", "b", "b", "c", "d")]
    chosen = sample_rows(rows, 4, seed=0)
    assert sorted(rows[i].answer for i in chosen) == ["a", "b", "c", "d"]
    assert chosen == sample_rows(rows, 4, seed=0) and len(set(sample_rows(rows, 8, seed=1))) == 8


def test_samples_per_second_is_the_window_average_of_wall_clock_time(monkeypatch) -> None:
    clock = iter([0.0, 1.0, 2.0, 12.0, 13.0])  # start, step (1 s), step (1 s), pause ends, step (1 s)
    monkeypatch.setattr("trainer.reporting.time.perf_counter", lambda: next(clock))
    window = RateWindow(steps=10)
    window.step(8)
    window.step(8)
    window.restart_clock()  # evaluation or a checkpoint: not training time
    window.step(8)
    assert window.rate == pytest.approx(24 / 3)


def test_augmentation_is_seeded_and_keeps_the_clip_length() -> None:
    clip = np.sin(np.linspace(0, 200, RATE)).astype(np.float32)
    settings = AugmentationSection(gain_db=6, time_shift=0.3, noise_snr_db=10, time_mask=0.2, frequency_mask=0.2, mix=1)

    def other(rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(RATE).astype(np.float32)

    first = augment(clip, settings, np.random.default_rng(1), other)
    assert first.shape == clip.shape and first.dtype == np.float32
    assert np.array_equal(first, augment(clip, settings, np.random.default_rng(1), other))
    assert not np.allclose(first, augment(clip, settings, np.random.default_rng(2), other))
    assert np.array_equal(augment(clip, AugmentationSection(), np.random.default_rng(1)), clip)


def test_the_feature_cache_encodes_each_clip_once_per_view(tmp_path, tiny_no_text_model_dir) -> None:
    config_path = label_run_config(tmp_path, tiny_no_text_model_dir)
    config = load_config(config_path)
    model, _ = build_model(config, config_path)
    examples = read_manifest(tmp_path / "train.jsonl") * 2  # every clip under two rows
    settings = AugmentationSection(gain_db=6, time_shift=0.5)
    dataset = AudioTextDataset(examples, train=True, seed=0, augmentation=settings)
    calls = []

    def backbone(audio: torch.Tensor) -> torch.Tensor:
        calls.append(len(audio))
        return audio[:, :3]  # the first samples stand for the clip's features

    cache = encode_clips(backbone, dataset, 2, device=torch.device("cpu"), batch_size=4, num_workers=0)
    assert sum(calls) == 2 * len(examples) // 2  # each distinct clip, once per view
    cached = FeatureDataset(examples, cache)
    half = len(examples) // 2
    assert torch.equal(cached[0]["audio"], cached[half]["audio"])  # two rows, one clip
    cached.set_epoch(1)
    view_1 = cached[0]["audio"]
    cached.set_epoch(2)
    assert not torch.equal(view_1, cached[0]["audio"]) and cached.shape == (3,)
    dataset.set_epoch(0)
    assert torch.equal(cached[0]["audio"], dataset[0]["audio"][:3])
