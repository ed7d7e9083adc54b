"""Multi-label truth (a file with several labels, as FSD50K and AudioSet have): read from a truth CSV, scored as
mAP over the classes with a positive file, per-class AP; hand cases against an independent formula (and
scikit-learn where installed), and `eval classify` end to end on generated audio with a tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pengi_search.classify import LabelsError, Prediction, read_truth
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK, EXIT_USAGE
from pengi_search.evaluation.metrics import average_precision
from pengi_search.evaluation.multilabel import evaluate_multi_label
from pengi_search.evaluation.report import compare_reports
from pengi_search.text_files import CSV_LIST_SEPARATOR

from .indexing import write_tone

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
    assert truth.multi_label and truth.multi_label_line == 2
    assert truth.labels_of(tmp_path / "a.wav") == ("dog", "bark")
    assert truth.labels_of(tmp_path / "b.wav") == ("rain",)
    assert truth.labels_of(tmp_path / "c.wav") == ("dog", "rain")  # trimmed, each once
    assert truth.labels_of(tmp_path / "d.wav") == ("alarm,clock",)  # a quoted comma is still inside one label
    assert truth.labels == ["dog", "bark", "rain", "alarm,clock"]


def test_a_truth_of_one_label_a_file_is_not_multi_label(tmp_path):
    truth = read_truth(write(tmp_path / "truth.csv", 'file,label\na.wav,"dog,bark"\nb.wav,rain\n'))
    assert not truth.multi_label and truth.multi_label_line is None
    assert truth.label_of(tmp_path / "a.wav") == "dog,bark"


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("dog;", "line 3 has an empty label in 'dog;'"),
        ("dog;;bark", "line 3 has an empty label in 'dog;;bark'"),
        ("dog;rain", "'a.wav' on line 3 has another label than on line 2"),
    ],
)
def test_a_truth_cell_with_an_empty_label_or_a_file_given_other_labels_is_refused(tmp_path, cell, message):
    with pytest.raises(LabelsError, match=message):
        read_truth(write(tmp_path / "truth.csv", f"file,label\na.wav,bark;dog\na.wav,{cell}\n"))


def test_a_file_listed_twice_with_the_same_labels_in_another_order_is_one_file(tmp_path):
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\na.wav,bark;dog\na.wav,dog;bark\n"))
    assert set(truth.labels_of(tmp_path / "a.wav")) == {"dog", "bark"}


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
        "scores": {"dog": 0.9, "bark": 0.2, "rain": 0.1, "bell": 0.5},
        "source": "decoded",
    }


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
    # Recomputed from the report's own per-file scores, every file scored for every candidate.
    files = report["files"]
    assert all(list(f["scores"]) == ["tone", "hum", "buzz", "bell"] for f in files)
    aps = []
    for label in ("tone", "hum", "buzz"):
        scores, positive = [f["scores"][label] for f in files], [label in f["truth"] for f in files]
        aps.append(ap_by_hand(scores, positive))
        assert report["per_class"][label]["ap"] == pytest.approx(aps[-1], abs=1e-12)
    assert 0.0 <= report["metrics"]["mAP"] <= 1.0
    assert report["metrics"]["mAP"] == pytest.approx(sum(aps) / 3, abs=1e-12)
    assert result.stderr.splitlines() == [
        "warning: 1 candidate label has no positive file, so no AP, left out of mAP: 'bell'"
    ]
    summary = (out / "report.md").read_text()
    assert "| label | AP | positives |" in summary and "| bell | – | 0 |" in summary


def test_classify_truth_of_several_labels_a_file_points_to_eval_classify(tmp_path):
    """`classify --truth` prints accuracy, which one label a file defines: a multi-label truth is refused before
    any model is looked for, naming the command that measures it."""
    clip = write_tone(tmp_path / "a.wav", 1.0)
    truth = write(tmp_path / "truth.csv", "file,label\na.wav,tone\nb.wav,tone;hum\n")
    labels = write(tmp_path / "labels.txt", "tone\nhum\n")
    result = run("classify", clip, "--labels", labels, "--truth", truth, "--model", tmp_path / "no-model")
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.splitlines() == [
        f"error: {truth}: line 3 gives a file several labels: measure a multi-label truth (mAP) with "
        "`pengi-search eval classify`"
    ]
