"""Every message that names a path names it escaped (`pathnames.shown`): a newline or an escape sequence in a
folder's name would otherwise reach the terminal raw, breaking a line in two or turning the rest of it red."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pengi_search.cli.common import check_output_file
from pengi_search.db.access import unusable_place
from pengi_search.doctor import check_models
from pengi_search.errors import PengiSearchError
from pengi_search.pathnames import shown
from pengi_search.paths import refuse_blocked_folder
from trainer.config import config_from_dict
from trainer.export import finished_run_models
from trainer.recipes import init_run

ODD_NAMES = {"newline": "new\nline", "escape-sequence": "red\x1b[31m"}


def _raised(action: Callable[[], object]) -> str:
    with pytest.raises(PengiSearchError) as caught:
        action()
    return str(caught.value)


def _blocked_data_folder(odd: Path) -> str:
    return _raised(lambda: refuse_blocked_folder(odd / "blocker" / "pengi-search"))


def _blocked_output_file(odd: Path) -> str:
    return _raised(lambda: check_output_file(odd / "blocker" / "hits.csv", "CSV"))


def _blocked_database(odd: Path) -> str:
    return unusable_place(odd / "blocker" / "index.db") or ""


def _blocked_models_folder(odd: Path) -> str:
    _, problems = check_models(root=odd / "blocker" / "models")
    return problems[0].what


def _output_dir_a_file(odd: Path) -> str:
    raw = {
        "output_dir": "blocker",
        "model": {"init": "model"},
        "data": {"train": "train.jsonl"},
        "optimization": {"max_steps": 4},
    }
    config = config_from_dict(raw, "config.yaml", odd)
    return config.problems(cuda=False)[0]


def _export_hint(odd: Path) -> str:
    _, where = finished_run_models(odd / "run", odd / "run" / "checkpoints" / "step-4.pt", step=4)
    return where


def _missing_labelled_clip(odd: Path) -> str:
    labels = odd / "labels.csv"
    labels.write_text("file,label\nbark.wav,dog\n")
    return _raised(lambda: init_run(labels, odd, odd / "init"))


MESSAGES = {
    "blocked data folder": _blocked_data_folder,
    "blocked --output": _blocked_output_file,
    "blocked database": _blocked_database,
    "doctor: blocked models folder": _blocked_models_folder,
    "train: output_dir a file": _output_dir_a_file,
    "train: export hint": _export_hint,
    "train init: missing clip": _missing_labelled_clip,
}


@pytest.mark.parametrize("name", ODD_NAMES.values(), ids=ODD_NAMES.keys())
@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
def test_a_message_names_a_folder_with_a_control_character_escaped(
    tmp_path: Path, name: str, message: Callable[[Path], str]
) -> None:
    odd = tmp_path / name
    odd.mkdir()
    (odd / "blocker").write_text("a file where a folder would be")

    text = message(odd)
    assert shown(str(odd)) in text
    assert name not in text
