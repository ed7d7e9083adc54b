"""Multi-label truth (a file with several labels, as FSD50K and AudioSet have): read from a truth CSV, scored as
mAP over the classes with a positive file, per-class AP; hand cases against an independent formula (and
scikit-learn where installed), and `eval classify` end to end on generated audio with a tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pengi_search.classify import Prediction
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK, EXIT_USAGE
from pengi_search.evaluation.metrics import average_precision
from pengi_search.evaluation.multilabel import evaluate_multi_label, score_matrix, write_scores
from pengi_search.evaluation.report import compare_reports
from pengi_search.evaluation.ties import rank_span, tie_bounds
from pengi_search.text_files import CSV_LIST_SEPARATOR
from pengi_search.truth import LabelsError, Truth, read_truth

from .indexing import write_tone
from .traced_memory import python_peak

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def ap_by_hand(scores: list[float], positive: list[bool]) -> float:
    """The mean, over the positive files, of the precision among the files scored at least as high as it (ties
    counted together): scikit-learn's AP, written the other way round."""
    precisions = []
    for score, is_positive in zip(scores, positive, strict=True):
        if is_positive:
            above = [p for s, p in zip(scores, positive, strict=True) if s >= score]
            precisions.append(sum(above) / len(above))
    return sum(precisions) / len(precisions)


# -- truth files ---------------------------------------------------------------------------------------------------


def test_a_truth_cell_holds_several_labels_separated_as_a_manifest_separates_them(tmp_path):
    assert CSV_LIST_SEPARATOR == ";"  # what README documents, for truth files and training manifests alike
    text = 'file,label\na.wav,dog;bark\nb.wav, rain \nc.wav,"dog ; rain;dog"\nd.wav,"alarm,clock"\n'
    truth = read_truth(write(tmp_path / "truth.csv", text))
    assert truth.multi_label and truth.multi_label_reason == "line 2 gives a file several labels"
    assert truth.labels_of(tmp_path / "a.wav") == ("dog", "bark")
    assert truth.labels_of(tmp_path / "b.wav") == ("rain",)
    assert truth.labels_of(tmp_path / "c.wav") == ("dog", "rain")  # trimmed, each once
    assert truth.labels_of(tmp_path / "d.wav") == ("alarm,clock",)  # a quoted comma is still inside one label
    assert truth.labels == ["dog", "bark", "rain", "alarm,clock"]


def test_a_truth_of_one_label_a_file_is_not_multi_label(tmp_path):
    truth = read_truth(write(tmp_path / "truth.csv", 'file,label\na.wav,"dog,bark"\nb.wav,rain\n'))
    assert not truth.multi_label and truth.multi_label_reason is None
    assert truth.label_of(tmp_path / "a.wav") == "dog,bark"


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("dog;", "line 3 has an empty label in 'dog;'"),
        ("dog;;bark", "line 3 has an empty label in 'dog;;bark'"),
    ],
)
def test_a_truth_cell_with_an_empty_label_is_refused(tmp_path, cell, message):
    with pytest.raises(LabelsError, match=message):
        read_truth(write(tmp_path / "truth.csv", f"file,label\na.wav,bark;dog\na.wav,{cell}\n"))


def test_a_file_listed_twice_with_the_same_labels_in_another_order_is_one_file(tmp_path):
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\na.wav,bark;dog\na.wav,dog;bark\n"))
    assert set(truth.labels_of(tmp_path / "a.wav")) == {"dog", "bark"}


def test_a_file_named_on_several_rows_has_every_rows_labels_as_audioset_lists_them(tmp_path):
    """AudioSet's layout: one row a file and label. The file on rows of other labels is multi-label, as a cell of
    several labels makes it; the same label again adds nothing."""
    text = "file,label\na.wav,Dog\nb.wav,Rain\na.wav,Bark\na.wav,Dog\nc.wav,Bark;Owl\nc.wav,Dog\n"
    truth = read_truth(write(tmp_path / "truth.csv", text))
    assert truth.multi_label and truth.multi_label_reason == "'a.wav' on line 4 has another label than on line 2"
    assert truth.labels_of(tmp_path / "a.wav") == ("Dog", "Bark")
    assert truth.labels_of(tmp_path / "b.wav") == ("Rain",)
    assert truth.labels_of(tmp_path / "c.wav") == ("Bark", "Owl", "Dog")
    assert truth.labels == ["Dog", "Bark", "Rain", "Owl"]
    one_label = read_truth(write(tmp_path / "one.csv", "file,label\na.wav,Dog\na.wav,Dog\nb.wav,Rain\n"))
    assert not one_label.multi_label


def test_fsd50k_ground_truth_reads_with_its_own_columns_and_a_comma_separator(tmp_path):
    """FSD50K's eval.csv: `fname` without extension, `labels` a quoted list separated by commas, `mids` alike."""
    text = (
        "fname,labels,mids,split\n"
        '37199,"Bark,Dog,Domestic_animals_and_pets,Animal","/m/05tny_,/m/0bt9lr,/m/068hy,/m/0jbk",eval\n'
        "175151,Rain,/m/06mb1,eval\n"
    )
    truth = read_truth(write(tmp_path / "ground_truth" / "eval.csv", text), ",")
    audio = tmp_path / "eval_audio"
    assert truth.labels_of(audio / "37199.wav") == ("Bark", "Dog", "Domestic_animals_and_pets", "Animal")
    assert truth.labels_of(audio / "175151.flac") == ("Rain",)
    assert truth.labels_of(audio / "1751.wav") is None and truth.labels_of(audio / "175151.txt") is None
    # With the default separator the list is one label, as a quoted "dog,bark" always was.
    assert read_truth(tmp_path / "ground_truth" / "eval.csv").labels[0] == "Bark,Dog,Domestic_animals_and_pets,Animal"


def test_a_name_with_an_audio_extension_matches_only_that_file(tmp_path):
    """`a.wav` listed is a.wav, never a.wav.flac; `a` listed matches a.wav and a.flac alike, which a run that
    reaches both refuses (`check_truth_lists`)."""
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\na.wav,dog\nsub/b,cat\n"))
    assert truth.labels_of(tmp_path / "a.wav.flac") is None
    assert truth.labels_of(tmp_path / "sub" / "b.ogg") == ("cat",)
    assert truth.ambiguous([str(tmp_path / "sub" / "b.ogg"), str(tmp_path / "a.wav")]) is None
    both = [str(tmp_path / "sub" / "b.ogg"), str(tmp_path / "elsewhere" / "sub" / "b.wav")]
    assert truth.ambiguous(both) == ("sub/b", both)


# -- average precision ---------------------------------------------------------------------------------------------


def test_average_precision_by_hand():
    # Positives at ranks 1 and 3: (1/1 + 2/3) / 2.
    assert average_precision([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == pytest.approx(5 / 6)
    assert average_precision([0.1, 0.9, 0.5], [True, True, True]) == 1.0


def test_tied_scores_enter_the_ranking_together():
    """A positive and a negative tied at the top: precision 1/2 there, whichever order a sort would leave them in;
    then 2/3 once the third file comes in. AP = 1/2 x 1/2 + 1/2 x 2/3."""
    for order in ([0, 1, 2], [1, 0, 2]):
        scores, positive = [0.5, 0.5, 0.1], [True, False, True]
        got = average_precision([scores[i] for i in order], [positive[i] for i in order])
        assert got == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0.3, 0.3, 0.3, 0.3], [True, False, False, True]) == pytest.approx(0.5)


def test_average_precision_of_one_file_and_of_a_class_without_positives():
    assert average_precision([0.2], [True]) == 1.0
    assert average_precision([0.2], [False]) is None  # recall is undefined: no AP, not 0
    assert average_precision([0.9, 0.1], [False, False]) is None


def test_average_precision_agrees_with_the_independent_formula_and_scikit_learn():
    rng = random.Random(7)
    cases = []
    for _ in range(200):
        size = rng.randint(1, 12)
        scores = [round(rng.random(), 1) for _ in range(size)]  # one decimal: many ties
        positive = [rng.random() < 0.4 for _ in range(size)]
        positive[rng.randrange(size)] = True
        cases.append((scores, positive))
    for scores, positive in cases:
        assert average_precision(scores, positive) == pytest.approx(ap_by_hand(scores, positive), abs=1e-12)
    sklearn = pytest.importorskip("sklearn.metrics")
    for scores, positive in cases:
        if not all(positive):  # scikit-learn warns on a ranking without negatives, and still gives 1.0
            expected = sklearn.average_precision_score(positive, scores)
            assert average_precision(scores, positive) == pytest.approx(expected, abs=1e-12)


# -- the evaluation ------------------------------------------------------------------------------------------------


def test_multi_label_evaluation_by_hand(tmp_path):
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\na.wav,dog;bark\nb.wav,rain\nc.wav,dog;owl\n"))
    labels = ["dog", "bark", "rain", "bell"]  # "owl" is no candidate; no file is a "bell"

    def predicted(name: str, **scores: float) -> Prediction:
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        return Prediction(str(tmp_path / name), ranked, 1, "decoded")

    predictions = [
        predicted("a.wav", dog=0.9, bark=0.2, rain=0.1, bell=0.5),
        predicted("b.wav", dog=0.8, bark=0.3, rain=0.7, bell=0.5),
        predicted("c.wav", dog=0.4, bark=0.3, rain=0.6, bell=0.5),
        predicted("extra.wav", dog=0.4, bark=0.3, rain=0.6, bell=0.5),  # not in the truth
    ]
    result = evaluate_multi_label(predictions, truth, labels)
    per_class = result["per_class"]
    # dog: a 0.9 (+), b 0.8, c 0.4 (+) -> (1 + 2/3) / 2; bark: b 0.3 ties c 0.3 above a 0.2 (+) -> 1/3; rain: b 0.7
    # (+) first -> 1; bell: no positive, left out of the mean.
    assert per_class == {
        "dog": {"ap": pytest.approx(5 / 6), "positives": 2},
        "bark": {"ap": pytest.approx(1 / 3), "positives": 1},
        "rain": {"ap": 1.0, "positives": 1},
        "bell": {"ap": None, "positives": 0},
    }
    assert result["metrics"]["mAP"] == pytest.approx((5 / 6 + 1 / 3 + 1) / 3)
    assert result["metrics"]["top-1 precision"] == pytest.approx(1 / 3)  # a: dog is its; b: dog, c: rain are not
    assert result["evaluated"] == {"files": 3, "classes": 3}
    assert result["unmatched"] == [str(tmp_path / "extra.wav")]
    assert result["notes"] == [
        "1 true label is not a candidate label, so 1 positive is left out of mAP: 'owl'",
        "1 candidate label has no positive file, so no AP, left out of mAP: 'bell'",
    ]
    assert result["files"][0] == {
        "path": str(tmp_path / "a.wav"),
        "truth": ["dog", "bark"],
        "predicted": "dog",
        "top": [
            {"label": "dog", "score": 0.9},
            {"label": "bell", "score": 0.5},
            {"label": "bark", "score": 0.2},
            {"label": "rain", "score": 0.1},
        ],
        "source": "decoded",
    }


def random_predictions(tmp_path: Path, files: int, labels: list[str], seed: int) -> tuple[list[Prediction], Truth]:
    """`files` predictions with a random score for every label, and a truth giving each file 1 to 3 of them."""
    rng = random.Random(seed)
    names = [f"{i:03d}.wav" for i in range(files)]
    rows = "".join(f"{name},{';'.join(rng.sample(labels, rng.randint(1, 3)))}\n" for name in names)
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\n" + rows))
    predictions = []
    for name in names:
        ranked = sorted(((label, rng.random()) for label in labels), key=lambda item: -item[1])
        predictions.append(Prediction(str(tmp_path / name), ranked, 1, "decoded"))
    return predictions, truth


def test_the_report_lists_each_files_best_labels_and_the_matrix_holds_every_score(tmp_path):
    """A file's entry holds its 5 best labels, not a score for each of (AudioSet's) 527; every score is in the
    matrix, whose APs are the report's to the bit, as the report's were when it held every score itself."""
    labels = [f"class {j}" for j in range(12)]
    predictions, truth = random_predictions(tmp_path, 40, labels, seed=3)
    matrix = score_matrix(predictions, truth, labels)
    result = evaluate_multi_label(predictions, truth, labels, matrix=matrix)
    assert result == evaluate_multi_label(predictions, truth, labels)  # the matrix given or built: the same
    for entry, prediction in zip(result["files"], predictions, strict=True):
        assert "scores" not in entry
        assert entry["top"] == [{"label": label, "score": score} for label, score in prediction.ranked[:5]]
    # The old report's construction: each file's scores in the candidates' order, one float64 row a file.
    rows = np.array([[dict(p.ranked)[label] for label in labels] for p in predictions], dtype=np.float64)
    assert np.array_equal(matrix.scores, rows) and matrix.paths == [p.path for p in predictions]
    for column, label in enumerate(labels):
        positive = [label in truth.labels_of(p.path) for p in predictions]
        assert matrix.positive[:, column].tolist() == positive
        assert result["per_class"][label]["ap"] == average_precision(rows[:, column], np.array(positive))
    aps = [result["per_class"][label]["ap"] for label in labels]
    assert result["metrics"]["mAP"] == sum(aps) / len(aps)


def test_top_1_precisions_tie_bounds_build_a_files_tied_labels_only_down_to_its_first_true_label(tmp_path):
    """Bounding top-1 precision reads each file's groups of tied labels down to its first true label. Keeping every
    group, 527 one-label groups a file at AudioSet's size, held 15 MiB for these 300 files (about 1 GB for AudioSet's
    20,000); the evaluation besides them holds under 1 MiB. The bounds are those of the groups built in full."""
    labels = [f"class {j}" for j in range(527)]
    predictions, truth = random_predictions(tmp_path, 300, labels, seed=11)
    matrix = score_matrix(predictions, truth, labels)
    result = {}
    peak = python_peak(lambda: result.update(evaluate_multi_label(predictions, truth, labels, matrix=matrix)))
    assert peak < 5 * 2**20
    spans = [rank_span(list(p.tie_groups()), set(truth.labels_of(p.path))) for p in predictions]
    assert result["ties"] == tie_bounds(spans, {"top-1 precision": 1}, "files")


def test_scores_npz_holds_every_score_exactly(tmp_path):
    labels = ["dog", "bark", "r\u00e9n"]
    predictions, truth = random_predictions(tmp_path, 7, labels, seed=5)
    matrix = score_matrix(predictions, truth, labels)
    path = write_scores(matrix, tmp_path)
    assert path == tmp_path / "scores.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npz", "truth.csv"]  # no partial file left
    with np.load(path) as stored:
        assert stored["paths"].tolist() == matrix.paths and stored["labels"].tolist() == labels
        assert stored["scores"].dtype == np.float64 and np.array_equal(stored["scores"], matrix.scores)
        assert np.array_equal(stored["positive"], matrix.positive)


def test_a_prediction_without_a_score_for_every_candidate_cannot_be_scored(tmp_path):
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\na.wav,dog;bark\n"))
    top_one = Prediction(str(tmp_path / "a.wav"), [("dog", 0.9)], 1, "decoded")
    with pytest.raises(ValueError, match="has no score for 'bark'"):
        evaluate_multi_label([top_one], truth, ["dog", "bark"])


# -- the commands --------------------------------------------------------------------------------------------------


def test_eval_classify_scores_a_multi_label_truth_as_map(tiny_model_dir, tmp_path):
    for seed, name in enumerate(["a.wav", "b.wav", "c.wav", "d.wav"]):
        write_tone(tmp_path / "audio" / name, 1.0 + seed, freq=200.0 + 150 * seed)
    truth = write(tmp_path / "truth.csv", "file,label\na.wav,hum;tone\nb.wav,tone\nc.wav,hum;buzz\nd.wav,buzz\n")
    labels = write(tmp_path / "labels.txt", "tone\nhum\nbuzz\nbell\n")
    out = tmp_path / "report"
    result = run(
        "eval", "classify", tmp_path / "audio", "--truth", truth, "--labels", labels, "--method", "loglik",
        "--model", tiny_model_dir, "--device", "cpu", "-o", out,
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "classify" and report["multi_label"] is True
    assert set(report["metrics"]) == {"mAP", "top-1 precision"}
    assert list(report["per_class"]) == ["tone", "hum", "buzz", "bell"]
    assert report["per_class"]["bell"] == {"ap": None, "positives": 0}
    assert report["evaluated"] == {"files": 4, "classes": 3}
    assert compare_reports(report, report)["notes"] == []  # it records every setting compare looks for
    assert "confusion" not in report and "accuracy" not in report["metrics"]
    # Recomputed from scores.npz beside the report, every file scored for every candidate; the report lists each
    # file's best labels, with the same scores.
    files = report["files"]
    with np.load(out / "scores.npz") as stored:
        assert stored["paths"].tolist() == [f["path"] for f in files]
        assert stored["labels"].tolist() == ["tone", "hum", "buzz", "bell"]
        scores = {label: stored["scores"][:, j].tolist() for j, label in enumerate(stored["labels"].tolist())}
    for row, f in enumerate(files):
        assert sorted(top["label"] for top in f["top"]) == sorted(scores)  # 4 labels: the best 5 are all
        assert all(top["score"] == scores[top["label"]][row] for top in f["top"])
    aps = []
    for label in ("tone", "hum", "buzz"):
        aps.append(ap_by_hand(scores[label], [label in f["truth"] for f in files]))
        assert report["per_class"][label]["ap"] == pytest.approx(aps[-1], abs=1e-12)
    assert 0.0 <= report["metrics"]["mAP"] <= 1.0
    assert report["metrics"]["mAP"] == pytest.approx(sum(aps) / 3, abs=1e-12)
    assert result.stderr.splitlines() == [
        "warning: 1 candidate label has no positive file, so no AP, left out of mAP: 'bell'"
    ]
    summary = (out / "report.md").read_text()
    assert "| label | AP | positives |" in summary and "| bell | – | 0 |" in summary


def test_a_single_label_report_leaves_no_multi_label_runs_scores_beside_it(tiny_model_dir, tmp_path):
    for seed, name in enumerate(["a.wav", "b.wav"]):
        write_tone(tmp_path / "audio" / name, 1.0, freq=200.0 + 150 * seed)
    out = tmp_path / "report"
    for cells in ("tone;hum\nb.wav,hum", "tone\nb.wav,hum"):  # multi-label, then one label a file
        truth = write(tmp_path / "truth.csv", f"file,label\na.wav,{cells}\n")
        result = run(
            "eval", "classify", tmp_path / "audio", "--truth", truth, "--method", "loglik",
            "--model", tiny_model_dir, "--device", "cpu", "-o", out,
        )  # fmt: skip
        assert result.exit_code == EXIT_OK, result.output
        assert (out / "scores.npz").exists() == (cells == "tone;hum\nb.wav,hum")
    assert json.loads((out / "report.json").read_text()).get("multi_label") is None


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        ("a.wav,tone\nb.wav,tone;hum\n", "line 3 gives a file several labels"),
        # AudioSet's layout, or a single-label truth that gives a file two labels by mistake: one label a file
        # is what accuracy needs, whichever it is.
        ("a.wav,tone\nb.wav,hum\na.wav,hum\n", "'a.wav' on line 4 has another label than on line 2"),
    ],
)
def test_classify_truth_of_several_labels_a_file_points_to_eval_classify(tmp_path, rows, why):
    """`classify --truth` prints accuracy, which one label a file defines: a multi-label truth is refused before
    any model is looked for, naming the command that measures it."""
    clip = write_tone(tmp_path / "a.wav", 1.0)
    truth = write(tmp_path / "truth.csv", "file,label\n" + rows)
    labels = write(tmp_path / "labels.txt", "tone\nhum\n")
    result = run("classify", clip, "--labels", labels, "--truth", truth, "--model", tmp_path / "no-model")
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.splitlines() == [
        f"error: {truth}: {why}: measure a multi-label truth (mAP) with `pengi-search eval classify`"
    ]


def test_eval_classify_scores_audiosets_one_row_a_label_as_the_same_truth_in_cells(tiny_model_dir, tmp_path):
    """A file named on several rows (AudioSet's layout) is the multi-label truth its labels in one cell are: the
    same report, but for the truth's digest and why it is multi-label."""
    for seed, name in enumerate(["a.wav", "b.wav", "c.wav"]):
        write_tone(tmp_path / "audio" / name, 1.0, freq=200.0 + 150 * seed)
    cells = write(tmp_path / "cells.csv", "file,label\na.wav,hum;tone\nb.wav,tone\nc.wav,buzz;hum\n")
    rows = write(tmp_path / "rows.csv", "file,label\na.wav,hum\nb.wav,tone\nc.wav,buzz\na.wav,tone\nc.wav,hum\n")
    reports = []
    for truth in (cells, rows):
        out = tmp_path / truth.stem
        result = run(
            "eval", "classify", tmp_path / "audio", "--truth", truth, "--method", "loglik",
            "--model", tiny_model_dir, "--device", "cpu", "-o", out, "--json",
        )  # fmt: skip
        assert result.exit_code == EXIT_OK, result.output
        reports.append(json.loads(result.stdout))
    by_cells, by_rows = reports
    assert by_rows["multi_label"] is True and by_rows["metrics"] == by_cells["metrics"]
    assert by_rows["per_class"] == by_cells["per_class"] and by_rows["files"] == by_cells["files"]
    assert by_rows["dataset"]["multi_label"] == "'a.wav' on line 5 has another label than on line 2"
    assert by_cells["dataset"]["multi_label"] == "line 2 gives a file several labels"


FSD50K_EVAL = (
    "fname,labels,mids,split\n"
    '101,"Bark,Dog,Animal","/m/05tny_,/m/0bt9lr,/m/0jbk",eval\n'
    '102,"Rain,Water","/m/06mb1,/m/0838f",eval\n'
    '103,"Dog,Animal","/m/0bt9lr,/m/0jbk",eval\n'
)


@pytest.fixture
def fsd50k(tmp_path) -> Path:
    """FSD50K's layout: ground truth and audio in sibling folders, files named by `fname` plus `.wav`."""
    for seed, name in enumerate(["101", "102", "103"]):
        write_tone(tmp_path / "FSD50K.eval_audio" / f"{name}.wav", 1.0, freq=220.0 + 170 * seed)
    write(tmp_path / "FSD50K.ground_truth" / "eval.csv", FSD50K_EVAL)
    return tmp_path


def test_eval_classify_reads_fsd50ks_own_csv_with_a_comma_separator(fsd50k, tiny_model_dir):
    truth, out = fsd50k / "FSD50K.ground_truth" / "eval.csv", fsd50k / "report"
    result = run(
        "eval", "classify", fsd50k / "FSD50K.eval_audio", "--truth", truth, "--label-separator", ",",
        "--method", "loglik", "--model", tiny_model_dir, "--device", "cpu", "-o", out, "--json",
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert result.stderr == ""  # every file of the truth found, every label a class
    report = json.loads(result.stdout)
    assert report["dataset"]["labels"] == ["Bark", "Dog", "Animal", "Rain", "Water"]
    assert {Path(f["path"]).name: f["truth"] for f in report["files"]} == {
        "101.wav": ["Bark", "Dog", "Animal"],
        "102.wav": ["Rain", "Water"],
        "103.wav": ["Dog", "Animal"],
    }
    assert report["evaluated"] == {"files": 3, "classes": 5}


def test_eval_classify_says_when_true_labels_look_like_lists_separated_by_commas(fsd50k, tiny_model_dir):
    """Without --label-separator a quoted "Bark,Dog" is one label, as it always was: said, since FSD50K's CSV
    means a list by it."""
    truth, out = fsd50k / "FSD50K.ground_truth" / "eval.csv", fsd50k / "report"
    result = run(
        "eval", "classify", fsd50k / "FSD50K.eval_audio", "--truth", truth, "--method", "loglik",
        "--model", tiny_model_dir, "--device", "cpu", "-o", out,
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert result.stderr.splitlines() == [
        "warning: 3 true labels hold ',' ('Bark,Dog,Animal', 'Rain,Water', 'Dog,Animal'): a cell of labels "
        "separated by ',' (FSD50K's CSV) is read as several labels with --label-separator ','"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label-separator", ""], "Invalid value for '--label-separator': the separator is empty"),
        ([], "'103', without extension, names 2 files: "),
    ],
)
def test_eval_classify_refuses_an_empty_separator_and_a_name_two_files_have(fsd50k, extra, message):
    write_tone(fsd50k / "FSD50K.eval_audio" / "103.flac", 1.0)
    truth = fsd50k / "FSD50K.ground_truth" / "eval.csv"
    result = run(
        "eval", "classify", fsd50k / "FSD50K.eval_audio", "--truth", truth, *extra, "--model", fsd50k / "no-model"
    )
    assert result.exit_code == EXIT_USAGE, result.output
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
