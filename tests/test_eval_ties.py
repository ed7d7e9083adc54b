"""Tied scores in `eval`: results that score alike (identical captions) are ordered by path, not by the order of the
CSV's rows or of the library's windows, and the report says how far another order of them would move each R@k.
Labels that tie are ordered by name, and the classification report says likewise how far another order of them
would move accuracy, top-k accuracy and top-1 precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pengi_search.classify import Prediction
from pengi_search.evaluation.classification import evaluate_classification
from pengi_search.evaluation.datasets import read_caption_set
from pengi_search.evaluation.metrics import average_precision
from pengi_search.evaluation.multilabel import evaluate_multi_label
from pengi_search.evaluation.retrieval import available_rankings, evaluate_retrieval
from pengi_search.library import Library
from pengi_search.query_embedders import query_embedder
from pengi_search.ties import rank
from pengi_search.truth import read_truth

from .search_library import caption_library

# z.wav is stored first, a.wav second, with the one caption: storage order and path order disagree.
TWINS = {"z.wav": (2.0, ["a dog barks"]), "a.wav": (2.0, ["a dog barks"]), "m.wav": (2.0, ["a bell rings"])}
SET_ROWS = {"z.wav": "a dog barks", "a.wav": "a dog barks", "m.wav": "a bell rings"}
TWINS_ORDERS = (["z.wav", "a.wav", "m.wav"], ["m.wav", "a.wav", "z.wav"])  # the set's rows, in two orders


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("eval-ties")
    return caption_library(str(root / "index.db"), root / "sounds", tiny_model_dir, captioned=TWINS)


def caption_csv(root: Path, order: list[str]) -> Path:
    """The captioned set, its rows in `order`."""
    path = root / f"captions-{'-'.join(name[0] for name in order)}.csv"
    path.write_text("file_name,caption\n" + "".join(f"{name},{SET_ROWS[name]}\n" for name in order))
    return path


def evaluated(library: Library, csv: Path, model_dir: Path) -> dict:
    caption_set = read_caption_set(csv)
    embedder = query_embedder(library, str(model_dir), "cpu")
    return evaluate_retrieval(library, caption_set, available_rankings(library, embedder, caption_set.audio_root))


def ranks(result: dict, direction: str) -> dict[str, tuple[int, list[int] | None]]:
    """Per file of the set, its row's rank and, where a tie makes it uncertain, its best and worst rank."""
    rows = result["queries"]["caption"][direction]
    return {row["path"]: (row["rank"], row.get("ranks")) for row in rows}


def test_tied_results_rank_by_path_whatever_the_order_of_rows_and_windows(twins, tiny_model_dir):
    """z.wav and a.wav hold the same caption: each one's caption finds both at one score, and each file scores
    both captions alike. a.wav ranks first in either tie, although z.wav is stored first and, in one set, listed
    first: the order of the CSV's rows or of the library's windows does not change a number."""
    with Library.open(twins.db) as library:
        results = [evaluated(library, caption_csv(twins.root, order), tiny_model_dir) for order in TWINS_ORDERS]
    first, second = results
    expected = {"a.wav": (1, [1, 2]), "z.wav": (2, [1, 2]), "m.wav": (1, None)}
    for direction in ("text_to_audio", "audio_to_text"):
        assert ranks(first, direction) == ranks(second, direction) == expected
    assert first["metrics"] == second["metrics"] and first["ties"] == second["ties"]
    assert first["metrics"]["caption"]["text_to_audio"]["R@1"] == pytest.approx(2 / 3)


def test_the_report_says_how_far_another_order_of_tied_results_moves_r_at_k(twins, tiny_model_dir):
    """Two of the three queries have a tie across the first place: R@1 is 2/3 with ties by path, between 1/3 (each
    own file last of its tie) and 1 (first). Three files: no tie crosses the fifth or tenth place."""
    with Library.open(twins.db) as library:
        result = evaluated(library, caption_csv(twins.root, list(SET_ROWS)), tiny_model_dir)
    for direction in ("text_to_audio", "audio_to_text"):
        ties = result["ties"]["caption"][direction]
        assert ties["R@1"] == {"queries": 2, "lowest": pytest.approx(1 / 3), "highest": 1.0}
        assert ties["R@5"] == ties["R@10"] == {"queries": 0, "lowest": 1.0, "highest": 1.0}
    assert result["notes"] == [
        f"caption, {arrow}: ties ordered by path: R@1 is 0.6667 in this order; 2 queries tie across its cut-off: "
        "another order gives 0.3333 to 1.0000"
        for arrow in ("text → audio", "audio → text")
    ]


def test_a_ranking_returns_every_result_tied_with_the_last_it_was_asked_for(twins, tiny_model_dir):
    """Asked for the best one, the search returns both files the caption ties: which of them the cut keeps is
    what the report must know to say whether R@1 could move."""
    with Library.open(twins.db) as library:
        caption_set = read_caption_set(caption_csv(twins.root, list(SET_ROWS)))
        embedder = query_embedder(library, str(tiny_model_dir), "cpu")
        (ranking,) = available_rankings(library, embedder, caption_set.audio_root)
        (to_audio,) = ranking.text_to_audio(["a dog barks"], 1)
        (to_text,) = ranking.audio_to_text([str(twins.files["z.wav"])], list(SET_ROWS.values()), 1)
    assert sorted(Path(path).name for path, _ in to_audio) == ["a.wav", "z.wav"]
    assert to_audio[0][1] == pytest.approx(to_audio[1][1], abs=1e-6)
    assert sorted(caption for caption, _ in to_text) == [0, 1]  # the two "a dog barks", not "a bell rings"


def test_labels_that_tie_rank_by_name_whatever_their_order_in_the_labels_file():
    """ "Dog" and "dog" embed alike through a tokenizer that lower-cases: which is a file's best label must not
    depend on which the labels file (or the truth's rows) gives first. Scores a rounding apart tie too."""
    scores = {"dog": 0.8 + 4e-7, "Dog": 0.8, "cat": 0.9, "bell": 0.1}
    for labels in (["dog", "Dog", "cat", "bell"], ["bell", "cat", "Dog", "dog"]):
        ranked = rank(labels, np.array([scores[label] for label in labels]))
        assert [label for label, _ in ranked] == ["cat", "Dog", "dog", "bell"]
        assert dict(ranked) == pytest.approx(scores)


def test_a_prediction_groups_its_tied_labels_as_rank_ordered_them():
    """The groups that evaluation bounds another order of ties with are the ones `rank` ordered by name: one
    grouping, whichever of a tie's labels the rounding scored highest."""
    labels = ["bell", "dog", "Dog", "cat"]
    ranked = rank(labels, np.array([0.1, 0.8 + 4e-7, 0.8, 0.9]))
    assert list(Prediction("a.wav", ranked, 1, "decoded").tie_groups()) == [["cat"], ["Dog", "dog"], ["bell"]]


LABELS = ["dog", "Dog", "cat", "bell", "rain"]


def predicted(root: Path, name: str, scores: dict[str, float]) -> Prediction:
    """The file's prediction over every candidate label, ranked as `classify` ranks them (ties by name)."""
    return Prediction(str(root / name), rank(LABELS, np.array([scores.get(label, 0.0) for label in LABELS])), 1, "")


def test_the_classification_report_says_how_far_another_order_of_tied_labels_moves_accuracy_and_top_k(tmp_path):
    """a.wav's "Dog" and "dog" tie for first: ordered by name, "Dog" is predicted and a.wav counts as wrong, right
    in the other order. b.wav's true "rain" ties with "Dog" and "dog" across the third place: out of the top 3 by
    name, in it in another order. c.wav's label leads alone. Each uncertain rank is in its file's row."""
    truth = read_truth(write_csv(tmp_path / "truth.csv", "file,label\na.wav,dog\nb.wav,rain\nc.wav,cat\n"))
    predictions = [
        predicted(tmp_path, "a.wav", {"dog": 0.8, "Dog": 0.8 + 4e-7, "cat": 0.1}),
        predicted(tmp_path, "b.wav", {"cat": 0.9, "bell": 0.5, "Dog": 0.4, "dog": 0.4, "rain": 0.4 - 3e-7}),
        predicted(tmp_path, "c.wav", {"cat": 0.9, "dog": 0.2}),
    ]
    result = evaluate_classification(predictions, truth, LABELS)
    assert result["metrics"]["accuracy"] == pytest.approx(1 / 3) and result["metrics"]["top-3"] == pytest.approx(2 / 3)
    assert result["ties"] == {
        "accuracy": {"files": 1, "lowest": pytest.approx(1 / 3), "highest": pytest.approx(2 / 3)},
        "top-3": {"files": 1, "lowest": pytest.approx(2 / 3), "highest": 1.0},
    }
    assert result["notes"] == [
        "tied labels ordered by name: accuracy is 0.3333 in this order; 1 file ties across its cut-off: another "
        "order gives 0.3333 to 0.6667",
        "tied labels ordered by name: top-3 is 0.6667 in this order; 1 file ties across its cut-off: another order "
        "gives 0.6667 to 1.0000",
        "tied labels ordered by name: 1 file has tied best labels, so per-class scores, macro F1 and the confusion "
        "matrix are those of this order; another order gives recall 0.0000 to 1.0000 for 'dog'",
    ]
    rows = {Path(row["path"]).name: (row["rank"], row.get("ranks")) for row in result["files"]}
    assert rows == {"a.wav": (2, [1, 2]), "b.wav": (5, [3, 5]), "c.wav": (1, None)}


def test_the_classification_report_says_how_many_best_labels_tie_and_how_far_each_recall_could_move(tmp_path):
    """Per-class scores and the confusion matrix take each file's best label in the order by name. a.wav (a dog)
    and b.wav (a cat) both have "Dog" and "dog" tied first, so "Dog" is predicted for both: two files whose row
    could read otherwise. Only a.wav's true label is in its tie, so only "dog"'s recall could move: 1/2 by name
    (c.wav alone is right), 1 in the other order. "cat"'s recall is 0 in any order."""
    truth = read_truth(write_csv(tmp_path / "truth.csv", "file,label\na.wav,dog\nb.wav,cat\nc.wav,dog\n"))
    predictions = [
        predicted(tmp_path, "a.wav", {"dog": 0.8, "Dog": 0.8 + 4e-7, "cat": 0.1}),
        predicted(tmp_path, "b.wav", {"dog": 0.7, "Dog": 0.7, "cat": 0.2}),
        predicted(tmp_path, "c.wav", {"dog": 0.9, "Dog": 0.5}),
    ]
    result = evaluate_classification(predictions, truth, LABELS)
    assert result["per_class"]["dog"]["recall"] == 0.5 and result["per_class"]["cat"]["recall"] == 0.0
    assert result["top_ties"] == {"files": 2, "recall": {"dog": {"files": 1, "lowest": 0.5, "highest": 1.0}}}
    assert (
        "tied labels ordered by name: 2 files have tied best labels, so per-class scores, macro F1 and the confusion "
        "matrix are those of this order; another order gives recall 0.5000 to 1.0000 for 'dog'" in result["notes"]
    )
    rows = {Path(row["path"]).name: row.get("tied_best") for row in result["files"]}
    assert rows == {"a.wav": ["Dog", "dog"], "b.wav": ["Dog", "dog"], "c.wav": None}


def test_a_classification_report_without_tied_best_labels_has_no_note_of_them(tmp_path):
    truth = read_truth(write_csv(tmp_path / "truth.csv", "file,label\na.wav,dog\nb.wav,cat\n"))
    predictions = [predicted(tmp_path, "a.wav", {"dog": 0.8, "Dog": 0.7}), predicted(tmp_path, "b.wav", {"dog": 0.9})]
    result = evaluate_classification(predictions, truth, LABELS)
    assert result["top_ties"] == {"files": 0, "recall": {}}
    assert not any("tied best labels" in note for note in result["notes"])
    assert all("tied_best" not in row for row in result["files"])


def test_the_multi_label_report_bounds_top_1_precision_and_ties_cannot_move_map(tmp_path):
    """a.wav is a dog with a bell: its best labels tie, "Dog" (not one of its labels) first by name, "dog" in the
    other order, so top-1 precision is 1/2 between 1/2 and 1. mAP ranks the files by their score for each label,
    where tied files enter together, so no order of tied labels (or files) moves it: it has no bounds."""
    truth = read_truth(write_csv(tmp_path / "truth.csv", "file,label\na.wav,dog;bell\nb.wav,cat\n"))
    predictions = [
        predicted(tmp_path, "a.wav", {"dog": 0.8, "Dog": 0.8, "bell": 0.3}),
        predicted(tmp_path, "b.wav", {"cat": 0.9, "bell": 0.3 - 4e-7}),
    ]
    result = evaluate_multi_label(predictions, truth, LABELS)
    assert result["metrics"]["top-1 precision"] == 0.5
    assert result["ties"] == {"top-1 precision": {"files": 1, "lowest": 0.5, "highest": 1.0}}
    assert (
        "tied labels ordered by name: top-1 precision is 0.5000 in this order; 1 file ties across its cut-off: "
        "another order gives 0.5000 to 1.0000" in result["notes"]
    )
    assert result["per_class"]["bell"]["ap"] == 0.5  # a.wav and b.wav tie for "bell": together, whichever is first


def test_files_whose_scores_a_rounding_apart_tie_enter_average_precision_together():
    """Two identical captions score a label a few 1e-7 apart: which file float32 rounding puts first must not
    change AP, as it does not for exactly equal scores."""
    assert average_precision([0.5 + 4e-7, 0.5], [False, True]) == average_precision([0.5, 0.5 + 4e-7], [False, True])
    assert average_precision([0.5 + 4e-7, 0.5], [False, True]) == 0.5


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
