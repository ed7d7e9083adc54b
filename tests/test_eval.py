"""`pengi-search eval`: captioned sets, retrieval and captioning scored from a library, classification reports,
report files and their comparison; end to end on generated audio with a tiny model, against a hand count."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import platform
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

import pengi_search
from pengi_search.classify import Prediction
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from pengi_search.decoding import GenerationConfig
from pengi_search.embedders import HubUnreachableError
from pengi_search.errors import UsageError
from pengi_search.evaluation.captioning import evaluate_captions, library_captions
from pengi_search.evaluation.classification import evaluate_classification, label_notes
from pengi_search.evaluation.datasets import DatasetError, audio_digest, read_caption_set
from pengi_search.evaluation.metrics import bleu, cider_d, rouge_l, tokenize
from pengi_search.evaluation.multilabel import evaluate_multi_label
from pengi_search.evaluation.report import ReportError, build_report, compare_reports, load_report, write_report
from pengi_search.evaluation.retrieval import available_rankings, evaluate_retrieval
from pengi_search.inference import Engine
from pengi_search.library import Library
from pengi_search.pathnames import shown
from pengi_search.query_embedders import audio_query_embedder, query_embedder
from pengi_search.search import SearchScope, query_text
from pengi_search.search_filters import Filters
from pengi_search.stored import stored_windows
from pengi_search.ties import tied_groups
from pengi_search.tokenization import read_tokenizer
from pengi_search.truth import read_truth

from .indexing import make_tiny_sentence_transformer, write_tone
from .search_library import caption_library, tone

runner = CliRunner()
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# -- captioned sets ----------------------------------------------------------------------------------------------


def test_clotho_layout(tmp_path):
    write_tone(tmp_path / "audio" / "a b.wav", 1.0)
    csv_path = write(
        tmp_path / "captions.csv",
        'file_name,caption_1,caption_2\n"a b.wav","A dog, barking.",a dog barks\nc.wav,rain,rain falls\n',
    )
    caption_set = read_caption_set(csv_path, tmp_path / "audio")
    assert [(i.name, i.captions) for i in caption_set.items] == [
        ("a b.wav", ("A dog, barking.", "a dog barks")),
        ("c.wav", ("rain", "rain falls")),
    ]
    assert caption_set.found[0].path == str(tmp_path / "audio" / "a b.wav")
    assert [i.name for i in caption_set.missing] == ["c.wav"]
    assert caption_set.to_json()["captions"] == 4 and len(caption_set.sha256) == 64


def test_a_set_digests_the_audio_its_csv_names_so_another_copy_of_the_set_reads_as_another_set(tmp_path):
    """The CSV's sha256 says which files were listed, not what they held: a re-encoded or trimmed copy of a set
    under the same names is another set. The same bytes under another audio root are the same set."""
    csv_text = "file_name,caption\na.wav,a tone\nb.wav,another tone\n"
    for root in ("here", "there"):
        write_tone(tmp_path / root / "a.wav", 1.0)
        write_tone(tmp_path / root / "b.wav", 1.0, freq=880.0)
        write(tmp_path / root / "captions.csv", csv_text)
    here, there = (read_caption_set(tmp_path / root / "captions.csv").to_json() for root in ("here", "there"))
    assert here["audio_sha256"] == there["audio_sha256"] and len(here["audio_sha256"]) == 64

    write_tone(tmp_path / "there" / "b.wav", 0.5, freq=880.0)  # trimmed, under the same name
    trimmed = read_caption_set(tmp_path / "there" / "captions.csv").to_json()
    assert trimmed["sha256"] == here["sha256"] and trimmed["audio_sha256"] != here["audio_sha256"]
    before, after = retrieval_report(0.25), retrieval_report(0.5)
    before["dataset"]["audio_sha256"], after["dataset"]["audio_sha256"] = here["audio_sha256"], trimmed["audio_sha256"]
    assert compare_reports(before, after)["notes"] == [
        "the two reports measured other audio files under the same CSV (their sha256 differ): the numbers are not "
        "comparable"
    ]
    del before["dataset"]["audio_sha256"]  # a report of an older pengi-search
    assert compare_reports(before, after)["notes"] == []


def test_audiocaps_layout(tmp_path):
    # One caption per row; rows of the same clip merge; a bare id finds the file with its audio extension.
    write_tone(tmp_path / "abc123.flac", 1.0)
    csv_path = write(
        tmp_path / "test.csv",
        "audiocap_id,youtube_id,start_time,caption\n1,abc123,30,a car passes\n2,abc123,30,an engine hums\n",
    )
    caption_set = read_caption_set(csv_path, file_column="youtube_id")
    assert [(i.name, i.path, i.captions) for i in caption_set.items] == [
        ("abc123", str(tmp_path / "abc123.flac"), ("a car passes", "an engine hums"))
    ]


def test_a_name_without_extension_that_several_files_have_is_refused(tmp_path):
    """`103` for 103.wav and 103.flac: which clip the captions describe cannot be told, so the set is refused (as
    a truth file's such name is), not read as the first file alphabetically. A name with its extension still
    means its one file, and a name whose dot starts no audio extension (`take.2`) still finds `take.2.wav`."""
    for name in ("103.wav", "103.flac", "take.2.wav"):
        write_tone(tmp_path / name, 1.0)
    ok = read_caption_set(write(tmp_path / "ok.csv", "file,caption\n103.wav,a tone\ntake.2,a second take\n"))
    assert [item.path for item in ok.items] == [str(tmp_path / "103.wav"), str(tmp_path / "take.2.wav")]
    ambiguous = write(tmp_path / "ambiguous.csv", "file,caption\n103.wav,a tone\n103,the same tone?\n")
    with pytest.raises(DatasetError) as refused:
        read_caption_set(ambiguous)
    flac, wav = (str(tmp_path / name) for name in ("103.flac", "103.wav"))
    assert str(refused.value) == f"{ambiguous}: line 3: '103', without extension, names 2 files: {flac!r}, {wav!r}"


def test_eval_refuses_a_caption_set_whose_name_several_files_have_in_one_line(tmp_path):
    for name in ("103.wav", "103.flac"):
        write_tone(tmp_path / name, 1.0)
    captions = write(tmp_path / "captions.csv", "file_name,caption\n103,a tone\n")
    result = run("eval", "retrieval", captions, "--model", tmp_path / "no-model", "-o", tmp_path / "out")
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.splitlines() == [
        f"error: {captions}: line 2: '103', without extension, names 2 files: "
        f"{str(tmp_path / '103.flac')!r}, {str(tmp_path / '103.wav')!r}"
    ]


def test_names_match_whatever_unicode_form_the_csv_writes(tmp_path):
    """ "café" is one name whether written composed (é) or decomposed (e and an accent, as macOS writes it)."""
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    write_tone(tmp_path / f"{composed}.wav", 1.0)
    write_tone(tmp_path / f"{decomposed} 2.wav", 1.0)
    csv_path = write(tmp_path / "c.csv", f"file,caption\n{decomposed}.wav,a tone\n{composed} 2,another tone\n")
    caption_set = read_caption_set(csv_path)
    assert [item.path for item in caption_set.items] == [
        str(tmp_path / f"{composed}.wav"),
        str(tmp_path / f"{decomposed} 2.wav"),
    ]


def test_a_file_name_is_the_file_of_that_name_as_written_else_trimmed(tmp_path):
    """Values are trimmed (the space a spreadsheet writes after a comma), but a file name may start or end with a
    space: where a file of the name as written exists, the row means that file; rows that mean one file merge."""
    for name in (" intro.wav", "intro.wav", "rain.wav"):
        (tmp_path / name).write_bytes(b"")
    rows = 'caption,file\na voice," intro.wav"\nrain falls, rain.wav\nrain again,rain.wav \n'
    caption_set = read_caption_set(write(tmp_path / "captions.csv", rows))
    assert [(i.name, i.path, i.captions) for i in caption_set.items] == [
        (" intro.wav", str(tmp_path / " intro.wav"), ("a voice",)),
        ("rain.wav", str(tmp_path / "rain.wav"), ("rain falls", "rain again")),
    ]


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("name,caption\na.wav,x\n", {}, "no file column"),
        ("file,text\na.wav,x\n", {}, "no caption column"),
        ("file,caption\na.wav,\n", {}, "'a.wav' has no caption"),
        ("file,caption\n", {}, "no rows"),
        ("file,caption\n,x\n", {}, "line 2 has no file"),
        ("file,caption\na.wav,x\n", {"file_column": "path"}, "no column 'path'"),
        ("file,caption\na.wav,x\n", {"caption_columns": ["text"]}, "no column 'text'"),
        (b"file,caption\na.wav,caf\xe9\n", {}, "not UTF-8"),
        ("file,caption\na.wav,a dog, barking\n", {}, "line 2 has 3 values but the header has 2 columns: quote"),
    ],
)
def test_bad_caption_sets(tmp_path, content, options, message):
    with pytest.raises(DatasetError, match=message):
        read_caption_set(write(tmp_path / "c.csv", content), **options)


def test_audio_root_must_be_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="nowhere: no such folder"):
        read_caption_set(write(tmp_path / "c.csv", "file,caption\na.wav,x\n"), tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="c.csv: a file, not a folder"):
        read_caption_set(write(tmp_path / "c.csv", "file,caption\na.wav,x\n"), tmp_path / "c.csv")


# -- retrieval and captioning on a library with known captions ---------------------------------------------------

# Captions of the set: each file's own stored caption where there is one, plus captions of other files and new
# text; the 10 s rain file has two windows ("rain on a roof", "thunder rolls in the distance").
SET_CAPTIONS = {
    "animals/dog.wav": ["a dog barks", "a bell rings"],
    "weather/rain.flac": ["thunder rolls in the distance", "water runs from a tap"],
    "bell.wav": ["a bell rings"],
    "animals/cat.flac": ["a cat meows", "birds sing while cars pass by"],
}


@pytest.fixture(scope="module")
def known(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("eval-known")
    captions = caption_library(str(root / "index.db"), root / "sounds", tiny_model_dir)
    rows = "".join(f"{name},{caps[0]},{caps[1] if len(caps) > 1 else ''}\n" for name, caps in SET_CAPTIONS.items())
    csv_path = write(root / "sounds" / "captions.csv", "file_name,caption_1,caption_2\n" + rows)
    return captions, read_caption_set(csv_path)


def hand_ranks_text_to_audio(library, caption_set, model_dir) -> list[int | None]:
    """Each caption searched as `query` searches (among the files under the audio root); the rank of its own file
    in the top 10, counted here, files that tie taken in path order (`query` keeps the library's order, which float
    rounding may change: this tiny model's captions are all alike)."""
    under_root = Filters(path_glob=caption_set.audio_root + "/*")
    ranks = []
    for item in caption_set.found:
        for caption in item.captions:
            hits = query_text(library, caption, SearchScope(10, filters=under_root), model=str(model_dir), device="cpu")
            paths = [path for tied in tied_groups(((hit.path, hit.score) for hit in hits), str) for path in tied]
            ranks.append(paths.index(item.path) + 1 if item.path in paths else None)
    return ranks


def hand_ranks_audio_to_text(library, caption_set, embedder) -> list[list[int]]:
    """Per file, the ranks (1-based) of its own captions among all captions: best cosine over its windows, ties
    to the earlier caption."""
    captions = [(c, i) for i, item in enumerate(caption_set.found) for c in item.captions]
    vectors = [embedder.embed([c])[0] for c, _ in captions]  # each alone, as `query` embeds it
    ranks = []
    for i, item in enumerate(caption_set.found):
        windows = stored_windows(library, item.path)
        _, window_vectors = library.store.vectors("text", [w.window_id for w in windows.windows])
        scores = [max(float(w @ v) for w in window_vectors) for v in vectors]
        order = sorted(range(len(captions)), key=lambda j: (-scores[j], j))
        ranks.append(sorted(order.index(j) + 1 for j, (_, owner) in enumerate(captions) if owner == i))
    return ranks


def test_retrieval_equals_a_hand_count(known, tiny_model_dir):
    captions, caption_set = known
    with Library.open(captions.db) as library:
        embedder = query_embedder(library, str(tiny_model_dir), "cpu")
        result = evaluate_retrieval(library, caption_set, available_rankings(library, embedder, caption_set.audio_root))
        t2a = hand_ranks_text_to_audio(library, caption_set, tiny_model_dir)
        a2t = hand_ranks_audio_to_text(library, caption_set, embedder)
    assert result["evaluated"] == {"files": 4, "captions": 7} and result["skipped"] == []
    rows = result["queries"]["caption"]["text_to_audio"]
    assert [row["rank"] for row in rows] == t2a
    # A caption the library holds finds its own file first (cosine 1); "a bell rings" is the bell's, not the dog's.
    by_caption = {(row["path"], row["caption"]): row for row in rows}
    assert by_caption[("animals/dog.wav", "a dog barks")]["rank"] == 1
    assert by_caption[("weather/rain.flac", "thunder rolls in the distance")]["rank"] == 1
    assert by_caption[("animals/dog.wav", "a bell rings")]["top"] == "bell.wav"
    metrics = result["metrics"]["caption"]
    n = len(t2a)
    assert metrics["text_to_audio"] == pytest.approx(
        {
            "R@1": sum(r is not None and r <= 1 for r in t2a) / n,
            "R@5": sum(r is not None and r <= 5 for r in t2a) / n,
            "R@10": sum(r is not None for r in t2a) / n,
            "mAP@10": sum(1 / r for r in t2a if r is not None) / n,
        }
    )
    # Audio -> text: a file's hit is its best-ranked caption; AP sums precision at each of its captions' ranks.
    firsts = [ranks[0] for ranks in a2t]
    ap = [sum((h + 1) / r for h, r in enumerate(x for x in ranks if x <= 10)) / min(len(ranks), 10) for ranks in a2t]
    assert metrics["audio_to_text"] == pytest.approx(
        {
            "R@1": sum(r <= 1 for r in firsts) / 4,
            "R@5": sum(r <= 5 for r in firsts) / 4,
            "R@10": sum(r <= 10 for r in firsts) / 4,
            "mAP@10": sum(ap) / 4,
        }
    )
    assert [row["rank"] for row in result["queries"]["caption"]["audio_to_text"]] == firsts
    curve = result["curves"]["caption"]["text_to_audio"]
    assert (
        len(curve) == 10 and curve[0] == metrics["text_to_audio"]["R@1"] and curve[4] == metrics["text_to_audio"]["R@5"]
    )


def test_retrieval_says_once_which_captions_its_embedders_cut(known, tiny_model_dir):
    """Every caption is a query: one longer than the text tower reads was searched by its first 77 tokens, unsaid.
    Said once however many files list it and however many rankings embed it with the one tower."""
    captions, _ = known
    long = "a bell rings " * 30
    rows = f"file_name,caption_1,caption_2\nbell.wav,a bell rings,{long}\nanimals/dog.wav,{long},a dog barks\n"
    caption_set = read_caption_set(write(captions.root / "long-captions.csv", rows))
    said: list[str] = []
    with Library.open(captions.db) as library:
        embedder = query_embedder(library, str(tiny_model_dir), "cpu")
        tower = audio_query_embedder(library, str(tiny_model_dir), "cpu", caption_embedder=embedder)
        rankings = available_rankings(library, embedder, caption_set.audio_root, tower)
        assert [ranking.name for ranking in rankings] == ["caption", "audio", "hybrid"]
        evaluate_retrieval(library, caption_set, rankings, notify=said.append)
    tokens = len(read_tokenizer("clip", tiny_model_dir)(long.strip())["input_ids"])
    assert said == [
        f"caption of {tokens} tokens cut to its first 77, all that Pengi's text tower reads: {long[:40] + '...'!r}"
    ]


def test_caption_evaluation_of_stored_captions(known, tiny_model_dir):
    captions, caption_set = known
    with Library.open(captions.db) as library:
        embedder = query_embedder(library, str(tiny_model_dir), "cpu")
        result = evaluate_captions(caption_set, library_captions(library, caption_set), embedder, java=False)
    # The stored captions carry no score, so the first window stands for the rain file.
    generated = {item["path"]: item["generated"] for item in result["items"]}
    assert generated == {
        "animals/dog.wav": "a dog barks",
        "weather/rain.flac": "rain on a roof",
        "bell.wav": "a bell rings",
        "animals/cat.flac": "a cat meows",
    }
    cands = [tokenize(generated[name]) for name in SET_CAPTIONS]
    refs = [[tokenize(c) for c in SET_CAPTIONS[name]] for name in SET_CAPTIONS]
    metrics = result["metrics"]
    assert [metrics[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu(cands, refs))
    assert metrics["CIDEr-D"] == pytest.approx(np.mean(cider_d(cands, refs)))
    assert metrics["ROUGE-L"] == pytest.approx(np.mean(rouge_l(cands, refs)))
    assert metrics["BLEU-1"] > 0.5  # three of the four generated captions are one of their references
    bell = next(item for item in result["items"] if item["path"] == "bell.wav")
    assert bell["embedding_cosine"] == pytest.approx(1.0, abs=1e-5) and bell["rouge_l"] == pytest.approx(1.0)
    vectors = embedder.embed(["a cat meows", *SET_CAPTIONS["animals/cat.flac"]])
    cat = next(item for item in result["items"] if item["path"] == "animals/cat.flac")
    assert cat["embedding_cosine"] == pytest.approx(float((vectors[1:] @ vectors[0]).mean()), abs=1e-6)
    assert metrics["METEOR"] is None and "--no-java-metrics" in result["unavailable"]["METEOR"]
    assert metrics["SPIDEr"] is None and result["prompts"] == ["generate audio caption"]


# -- classification ----------------------------------------------------------------------------------------------


def test_classification_report_by_hand(tmp_path):
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\na.wav,dog\nb.wav,cat\nc.wav,dog\nd.wav,bird\n"))

    def predicted(name: str, *labels: str) -> Prediction:
        return Prediction(str(tmp_path / name), [(label, 1.0 - i / 10) for i, label in enumerate(labels)], 1, "decoded")

    labels = ["dog", "cat", "rain", "bell"]  # "bird" is not a candidate: never predictable
    predictions = [
        predicted("a.wav", "dog", "cat", "rain", "bell"),
        predicted("b.wav", "dog", "rain", "bell", "cat"),  # cat ranked 4th
        predicted("c.wav", "cat", "dog", "rain", "bell"),  # dog ranked 2nd
        predicted("d.wav", "rain", "dog", "cat", "bell"),
        predicted("extra.wav", "dog", "cat", "rain", "bell"),  # not in the truth file
    ]
    result = evaluate_classification(predictions, truth, labels)
    assert result["metrics"]["accuracy"] == 0.25
    assert result["metrics"]["top-3"] == 0.5  # a (1st) and c (2nd); b is 4th, bird is not ranked
    assert "top-5" not in result["metrics"]  # 4 labels: top-5 would say nothing
    assert result["confusion"]["classes"] == ["dog", "cat", "rain", "bell", "bird"]
    assert result["confusion"]["counts"] == [
        [1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
    ]
    # Macro F1 over every label predicted or true: only dog has an F1 (precision 1/2, recall 1/2).
    assert result["metrics"]["macro_f1"] == pytest.approx(0.5 / 4)
    assert result["unmatched"] == [str(tmp_path / "extra.wav")]
    assert [f["rank"] for f in result["files"]] == [1, 4, 2, None]
    assert result["notes"] == ["1 true label is not a candidate label, so 1 file counts as wrong: 'bird'"]


def test_classification_scores_by_hand_are_exact(tmp_path):
    """Two thirds is 2/3, not 0.666667: each per-class F1 (and the accuracy) is kept whole, and macro F1 is the mean
    of the exact values (a mean of rounded ones is off in the last digits)."""
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\na.wav,dog\nb.wav,dog\nc.wav,cat\n"))
    got = {"a.wav": ["dog", "cat"], "b.wav": ["cat", "dog"], "c.wav": ["cat", "dog"]}
    predictions = [
        Prediction(str(tmp_path / name), [(lab, 1.0) for lab in ranked], 1, "decoded") for name, ranked in got.items()
    ]
    result = evaluate_classification(predictions, truth, ["dog", "cat"])
    # dog: precision 1/1, recall 1/2, F1 2/3; cat: precision 1/2, recall 1/1, F1 2/3.
    assert result["per_class"]["dog"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3, rel=1e-12),
        "support": 2,
    }
    assert result["per_class"]["cat"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3, rel=1e-12),
        "support": 1,
    }
    assert result["metrics"]["accuracy"] == pytest.approx(2 / 3, rel=1e-12)
    assert result["metrics"]["macro_f1"] == pytest.approx(2 / 3, rel=1e-12)


def test_classification_notes_labels_that_differ_only_in_spelling(tmp_path):
    """Labels are compared exactly, so a truth written "Dog" against the candidate "dog" scores every dog file as
    wrong: said, naming the candidate, as is a truth that spells one class two ways."""
    truth = read_truth(
        write(tmp_path / "truth.csv", "file,label\na.wav,Dog\nb.wav,Dog\nc.wav,alarm clock\nd.wav,Alarm-Clock\n")
    )

    def notes(candidates: list[str]) -> list[str]:
        predictions = [
            Prediction(str(tmp_path / f"{name}.wav"), [(candidates[0], 1.0)], 1, "decoded") for name in "abcd"
        ]
        return evaluate_classification(predictions, truth, candidates)["notes"]

    compared_exactly = "labels are compared exactly, so its {}"
    assert notes(["dog", "alarm_clock"]) == [
        "true label 'Dog' is not a candidate label but 'dog' is: " + compared_exactly.format("2 files count as wrong"),
        "true label 'alarm clock' is not a candidate label but 'alarm_clock' is: "
        + compared_exactly.format("1 file counts as wrong"),
        "true label 'Alarm-Clock' is not a candidate label but 'alarm_clock' is: "
        + compared_exactly.format("1 file counts as wrong"),
        "true labels 'alarm clock', 'Alarm-Clock' differ only in case or spacing: counted apart",
    ]
    assert notes(["Dog", "alarm clock", "Alarm-Clock"]) == [
        "true labels 'alarm clock', 'Alarm-Clock' differ only in case or spacing: counted apart"
    ]


def test_classification_names_a_few_true_labels_left_out_of_the_candidates():
    """Candidates that are a subset of the truth's labels (often deliberate): one note, naming the first five."""
    expected = ["dog", "dog", "cat", "owl", "pig", "cow", "hen", "emu", "yak"]
    assert label_notes(expected, ["dog"]) == [
        "7 true labels are not candidate labels, so 7 files count as wrong: 'cat', 'owl', 'pig', 'cow', 'hen' "
        "and 2 more"
    ]


# -- report files and comparison ---------------------------------------------------------------------------------


def retrieval_report(
    r1: float, sha: str = "0" * 64, embedder: str = "pengi-text:x", csv: str = "/data/set.csv", beam: int = 3
) -> dict:
    metrics = {"caption": {"text_to_audio": {"R@1": r1, "mAP@10": 0.5}, "audio_to_text": {"R@1": 0.1, "mAP@10": None}}}
    curves = {"caption": {"text_to_audio": [r1] + [0.9] * 9, "audio_to_text": [0.1] * 10}}
    captions = {"caption_prompts": ["generate audio caption"], "caption_decoding": [f"beam={beam} max_len=30"]}
    return build_report(
        "retrieval",
        {"metrics": metrics, "curves": curves, "evaluated": {"files": 2}, "skipped": []},
        dataset={"csv": csv, "sha256": sha, "audio_root": "/data"},
        setup={"model": "base", "text_embedder": embedder} | captions,
    )


def classify_report(tmp_path: Path, right: int, files: int = 4, *, multi_label: bool = False) -> dict:
    """A classify report of the truth a.wav..d.wav (dog, or dog;bark with `multi_label`) with `right` of its
    first `files` files predicted right (the others left out: their audio did not decode)."""
    names = ["a.wav", "b.wav", "c.wav", "d.wav"]
    cell = "dog;bark" if multi_label else "dog"
    truth = read_truth(write(tmp_path / "truth.csv", "file,label\n" + "".join(f"{n},{cell}\n" for n in names)))
    ranked = {True: [("dog", 0.9), ("cat", 0.1)], False: [("cat", 0.9), ("dog", 0.1)]}
    predictions = [
        Prediction(str(tmp_path / name), ranked[i < right], 1, "decoded") for i, name in enumerate(names[:files])
    ]
    failed = [str(tmp_path / name) for name in names[files:]]
    labels = ["dog", "cat"]
    evaluate = evaluate_multi_label if multi_label else evaluate_classification
    return build_report(
        "classify",
        evaluate(predictions, truth, labels, failed),
        dataset={"csv": str(tmp_path / "truth.csv"), "sha256": "2" * 64, "target": str(tmp_path), "labels": labels},
        setup={"model": "base", "method": "loglik", "prompt": "this is a sound of"},
    )


def test_report_files(tmp_path):
    files = write_report(retrieval_report(0.25), tmp_path / "run")
    names = [f.name for f in files]
    assert names[:2] == ["report.json", "report.md"]
    saved = load_report(tmp_path / "run" / "report.json")
    assert saved["kind"] == "retrieval" and saved["metrics"]["caption"]["text_to_audio"]["R@1"] == 0.25
    summary = (tmp_path / "run" / "report.md").read_text()
    assert "| caption | text → audio | 0.2500 | 0.5000 |" in summary
    if HAVE_MATPLOTLIB:
        assert names[2:] == ["recall_at_k.png"]
        assert (tmp_path / "run" / "recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib" in saved["plots_unavailable"]


def test_compare(tmp_path):
    comparison = compare_reports(retrieval_report(0.25), retrieval_report(0.5, embedder="st"), ("base", "new"))
    first = comparison["rows"][0]
    assert first == {"metric": "caption.text_to_audio.R@1", "a": 0.25, "b": 0.5, "delta": 0.25}
    assert comparison["rows"][3] == {"metric": "caption.audio_to_text.mAP@10", "a": None, "b": None, "delta": None}
    assert comparison["setup_differences"] == {"text_embedder": ["pengi-text:x", "st"]} and comparison["notes"] == []
    other_set = compare_reports(retrieval_report(0.25), retrieval_report(0.5, sha="1" * 64))
    assert "different sets" in other_set["notes"][0]
    classify = build_report("classify", {"metrics": {"accuracy": 1.0}}, dataset={"csv": "t", "sha256": "2"}, setup={})
    with pytest.raises(ReportError, match="cannot compare a retrieval report with a single-label classify report"):
        compare_reports(retrieval_report(0.25), classify)


def test_compare_tells_the_same_truth_scored_against_its_labels_in_another_order_from_another_set(tmp_path):
    """A classify report's digest covers its candidate labels in their order: the same truth scored with its label
    map (sorted) and with its own labels (in the truth's order) read as "different sets (their CSVs differ)",
    which they were not, and no number moves with the order (ties rank by name). The truth's own sha256 tells."""
    by_truth, by_map = classify_report(tmp_path, right=1), classify_report(tmp_path, right=3)
    for report in (by_truth, by_map):
        report["dataset"] |= {"truth_sha256": "t" * 64, "label_separator": ";"}
    by_map["dataset"] |= {"sha256": "3" * 64, "labels": ["cat", "dog"]}
    assert compare_reports(by_truth, by_map)["notes"] == []

    by_map["dataset"]["labels"] = ["cat", "dog", "bird"]
    assert compare_reports(by_truth, by_map)["notes"] == [
        "the two reports scored the same truth file against other candidate labels (2 and 3, 2 in common): the "
        "numbers are not comparable"
    ]
    by_map["dataset"] |= {"labels": ["cat", "dog"], "label_separator": ","}  # the truth's cells read otherwise
    assert "different sets (their CSVs differ)" in compare_reports(by_truth, by_map)["notes"][0]
    del by_truth["dataset"]["truth_sha256"]  # a report of an older pengi-search: which CSV it read cannot be told
    by_map["dataset"]["label_separator"] = ";"
    assert "different sets (their CSVs differ)" in compare_reports(by_truth, by_map)["notes"][0]


def test_compare_notes_another_part_of_the_set_evaluated_never_another_outcome(tmp_path):
    """Two runs over the same files differ in how many they got right: that is what compare shows, not a caveat.
    A run that left a file out (its audio did not decode) measured another part of the set: that is one."""
    one_right, three_right = classify_report(tmp_path, right=1), classify_report(tmp_path, right=3)
    assert one_right["evaluated"] == {"files": 4}  # which part of the set, as for every kind; no outcome in it
    same_files = compare_reports(one_right, three_right)
    assert same_files["notes"] == [] and same_files["rows"][0] == {
        "metric": "accuracy",
        "a": 0.25,
        "b": 0.75,
        "delta": 0.5,
    }
    # Earlier versions put the outcome `correct` there: their reports compare the same way.
    earlier = one_right | {"evaluated": {"files": 4, "correct": 1}}
    assert compare_reports(earlier, three_right | {"evaluated": {"files": 4, "correct": 3}})["notes"] == []
    fewer = compare_reports(one_right, classify_report(tmp_path, right=1, files=3))
    assert fewer["notes"] == ["the same set, but other parts of it were evaluated: 4 files vs 3 files"]
    multi = compare_reports(
        classify_report(tmp_path, 1, multi_label=True), classify_report(tmp_path, 3, multi_label=True)
    )
    assert multi["notes"] == [] and multi["rows"][0]["metric"] == "mAP"


def test_compare_refuses_a_single_label_and_a_multi_label_classify_report(tmp_path):
    """Accuracy and mAP: no metric in common, a table of dashes. Refused as reports of two kinds are."""
    with pytest.raises(ReportError) as refused:
        compare_reports(classify_report(tmp_path, 2), classify_report(tmp_path, 2, multi_label=True))
    assert str(refused.value) == "cannot compare a single-label classify report with a multi-label classify report"


def test_compare_says_what_an_older_report_does_not_record(tmp_path):
    """A report of an earlier pengi-search lacks settings recorded since: not a difference ("None -> 0.1.0"),
    but a note naming them. A setting one method has and the other lacks is a difference, shown as a dash."""
    older, now = retrieval_report(0.25), retrieval_report(0.5)
    for key in ("caption_decoding", "pengi_search_version", "torch_version"):
        del older["setup"][key]
    comparison = compare_reports(older, now, ("old", "new"))
    assert comparison["setup_differences"] == {}
    assert comparison["not_recorded"] == {"old": ["pengi_search_version", "torch_version", "caption_decoding"]}
    assert comparison["notes"] == [
        "old was written by an older pengi-search, which did not record pengi_search_version, torch_version, "
        "caption_decoding: whether the two differ in them cannot be told"
    ]
    write_report(older, tmp_path / "old")
    write_report(now, tmp_path / "new")
    result = run("eval", "compare", tmp_path / "old", tmp_path / "new", "-o", tmp_path / "compare.md")
    assert result.exit_code == EXIT_OK, result.output
    assert result.stderr.splitlines() == [f"warning: {comparison['notes'][0]}"]
    assert f"- **note**: {comparison['notes'][0]}" in (tmp_path / "compare.md").read_text()
    loglik = classify_report(tmp_path, 2)
    text = loglik | {"setup": {"model": "base", "method": "text", "beam": 3, "max_len": 30, "stop": "both"}}
    differences = compare_reports(text, loglik)["setup_differences"]
    assert differences["beam"] == [3, None] and differences["prompt"] == [None, "this is a sound of"]


def test_compare_shows_settings_as_people_read_them(tmp_path):
    """A list as its items, a setting one report lacks as a dash: not Python's `['beam=3 max_len=30']` or `None`."""
    write_report(retrieval_report(0.25, beam=3), tmp_path / "base")
    write_report(retrieval_report(0.5, beam=5), tmp_path / "wide")
    result = run("eval", "compare", tmp_path / "base", tmp_path / "wide", "-o", tmp_path / "compare.md")
    assert result.exit_code == EXIT_OK, result.output
    assert "caption_decoding: beam=3 max_len=30 -> beam=5 max_len=30\n" in result.stdout
    assert "- caption_decoding: beam=3 max_len=30 → beam=5 max_len=30\n" in (tmp_path / "compare.md").read_text()


def test_compare_writes_its_markdown_for_a_set_whose_name_is_not_utf8(tmp_path):
    """A name of bytes that are not UTF-8 (`caf\\xe9.csv`) is written escaped, as report.md writes it: not a failure
    after the comparison was made."""
    write_report(retrieval_report(0.25, csv="/data/caf\udce9.csv"), tmp_path / "base")
    write_report(retrieval_report(0.5, csv="/data/caf\udce9.csv"), tmp_path / "tuned")
    result = run("eval", "compare", tmp_path / "base", tmp_path / "tuned", "-o", tmp_path / "compare.md")
    assert result.exit_code == EXIT_OK, result.output
    assert "- base: /data/caf\\udce9.csv" in (tmp_path / "compare.md").read_text()


def test_load_report_refuses_other_files(tmp_path):
    with pytest.raises(ReportError, match="no such file"):
        load_report(tmp_path / "none.json")
    with pytest.raises(ReportError, match="not a readable JSON"):
        load_report(write(tmp_path / "bad.json", "{"))
    with pytest.raises(ReportError, match="not a pengi-search evaluation report"):
        load_report(write(tmp_path / "other.json", '{"kind": "retrieval"}'))


# -- the commands, end to end on generated audio -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Four generated sounds and a Clotho-style CSV that also lists a file that is not there."""
    root = tmp_path_factory.mktemp("eval-cli")
    names = ["low.wav", "mid.wav", "high.flac", "long.wav"]
    for i, name in enumerate(names):
        write_tone(root / "audio" / name, 9.0 if name == "long.wav" else 2.0, freq=tone(i))
    lines = [f"{name},a tone number {i},a sound at {tone(i):.0f} hertz" for i, name in enumerate(names)]
    write(root / "captions.csv", "file_name,caption_1,caption_2\n" + "\n".join([*lines, "gone.wav,silence,nothing"]))
    return root


def quick(model_dir: Path) -> list:
    return ["--model", model_dir, "--device", "cpu", "--workers", 0, "--beam", 2, "--max-len", 3, "--batch-size", 4]


def test_eval_retrieval_end_to_end(tones, tiny_model_dir):
    out = tones / "runs" / "base"
    args = ["eval", "retrieval", tones / "captions.csv", "--audio-root", tones / "audio", "-o", out]
    result = run(*args, *quick(tiny_model_dir))
    assert result.exit_code == EXIT_PARTIAL, result.output  # gone.wav is left out
    report = json.loads((out / "report.json").read_text())
    assert report["index_run"]["indexed"] == 4
    assert report["skipped"] == [{"path": "gone.wav", "error": "not found under the audio root"}]
    assert report["evaluated"] == {"files": 4, "captions": 8}
    assert compare_reports(report, report)["notes"] == []  # it records every setting compare looks for
    caption_set = read_caption_set(tones / "captions.csv", tones / "audio")
    with Library.open(out / "index.db") as library:
        t2a = hand_ranks_text_to_audio(library, caption_set, tiny_model_dir)
        a2t = hand_ranks_audio_to_text(library, caption_set, query_embedder(library, str(tiny_model_dir), "cpu"))
    metrics = report["metrics"]["caption"]
    assert [row["rank"] for row in report["queries"]["caption"]["text_to_audio"]] == t2a
    assert metrics["text_to_audio"]["R@1"] == pytest.approx(sum(r == 1 for r in t2a) / 8)
    assert metrics["text_to_audio"]["R@5"] == pytest.approx(sum(r is not None and r <= 5 for r in t2a) / 8)
    assert metrics["text_to_audio"]["mAP@10"] == pytest.approx(sum(1 / r for r in t2a if r) / 8)
    assert metrics["audio_to_text"]["R@1"] == pytest.approx(sum(ranks[0] == 1 for ranks in a2t) / 4)
    assert "| caption | text → audio |" in (out / "report.md").read_text()
    assert (out / "recall_at_k.png").exists() == HAVE_MATPLOTLIB
    # Again: the library is reused as it is, and the numbers do not move.
    again = run(*args, *quick(tiny_model_dir), "--json")
    assert again.exit_code == EXIT_PARTIAL
    second = json.loads(again.stdout)
    assert second["index_run"]["indexed"] == 0 and second["index_run"]["unchanged"] == 4
    assert second["metrics"] == report["metrics"]


def test_eval_retrieval_with_a_model_without_text_tower_refuses_a_hybrid_weight(tones, tiny_no_text_model_dir):
    """Such a model is measured by caption matching alone: a weight for the hybrid ranking was read by nothing. It is
    refused before the set is indexed (minutes, for a real set), not once it has been."""
    embedder = make_tiny_sentence_transformer(tones / "st-for-hybrid")
    out = tones / "runs" / "weight"
    result = run(
        "eval", "retrieval", tones / "captions.csv", "--audio-root", tones / "audio", "-o", out,
        "--text-embedder", f"sentence-transformers:{embedder}", "--hybrid-weight", "0.25",
        *quick(tiny_no_text_model_dir),
    )  # fmt: skip
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: --hybrid-weight: weighs --rank hybrid, which needs the text tower that the index's model lacks: "
        "leave it out"
    )
    assert not (out / "index.db").exists()  # nothing indexed


def test_eval_caption_end_to_end(tones, tiny_model_dir):
    out = tones / "runs" / "caption"
    result = run(
        "eval", "caption", tones / "captions.csv", "--audio-root", tones / "audio", "-o", out,
        "--no-java-metrics", *quick(tiny_model_dir),
    )  # fmt: skip
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "BLEU-1" in result.stdout and "CIDEr-D" in result.stdout
    report = json.loads((out / "report.json").read_text())
    caption_set = read_caption_set(tones / "captions.csv", tones / "audio")
    with Library.open(out / "index.db") as library:
        generated = []
        for item in caption_set.found:
            windows = stored_windows(library, item.path).windows
            best = max(windows, key=lambda w: w.texts[0].score)  # the first of equal scores, as documented
            generated.append(best.texts[0].text)
    assert [item["generated"] for item in report["items"]] == generated
    refs = [[tokenize(c) for c in item.captions] for item in caption_set.found]
    assert report["metrics"]["CIDEr-D"] == pytest.approx(np.mean(cider_d([tokenize(g) for g in generated], refs)))
    assert report["metrics"]["METEOR"] is None
    assert "Captions answer the prompt: generate audio caption." in (out / "report.md").read_text()
    assert compare_reports(report, report)["notes"] == []  # it records every setting compare looks for


@pytest.fixture
def no_text_embedder(monkeypatch, no_internet):
    """No text embedder can be had: any attempt to open one, or to reach the network, fails the test."""

    def refused(*_args, **_kwargs):
        raise AssertionError("a text embedder was opened")

    monkeypatch.setattr("pengi_search.embedders.SentenceTransformerEmbedder.__init__", refused)
    monkeypatch.setattr("pengi_search.embedders.open_text_embedder", refused)


def test_eval_caption_of_a_model_without_text_tower_scores_every_metric_that_needs_no_embedder(
    tones, tiny_no_text_model_dir, no_text_embedder
):
    out = tones / "runs" / "no-text"
    result = run(
        "eval", "caption", tones / "captions.csv", "--audio-root", tones / "audio", "-o", out,
        "--no-java-metrics", *quick(tiny_no_text_model_dir),
    )  # fmt: skip
    assert result.exit_code == EXIT_PARTIAL, result.output  # gone.wav is left out, nothing else
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == [{"path": "gone.wav", "error": "not found under the audio root"}]
    # Each file's caption is its best window's answer to the caption prompt, as describe decodes it.
    engine = Engine.load(tiny_no_text_model_dir, "cpu", 4)
    caption_set = read_caption_set(tones / "captions.csv", tones / "audio")
    generated = []
    for item in caption_set.found:
        windows = engine.describe(item.path, ["generate audio caption"], GenerationConfig(beam=2, max_len=3))
        generated.append(max(windows, key=lambda w: w.answers["generate audio caption"].score))
    assert [item["generated"] for item in report["items"]] == [
        w.answers["generate audio caption"].text for w in generated
    ]
    assert [item["window"] for item in report["items"]] == [[w.start_s, w.end_s] for w in generated]
    cands = [tokenize(item["generated"]) for item in report["items"]]
    refs = [[tokenize(c) for c in item.captions] for item in caption_set.found]
    metrics = report["metrics"]
    assert [metrics[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu(cands, refs))
    assert metrics["ROUGE-L"] == pytest.approx(np.mean(rouge_l(cands, refs)))
    assert metrics["CIDEr-D"] == pytest.approx(np.mean(cider_d(cands, refs)))
    # Only the embedding cosine is left out, said on one line with what gives it.
    assert metrics["embedding_cosine"] is None
    assert all(item["embedding_cosine"] is None for item in report["items"])
    why = report["unavailable"]["embedding_cosine"]
    assert "no text tower" in why and "--text-embedder sentence-transformers:NAME" in why
    assert f"embedding_cosine not computed: {why}\n" in result.stdout
    assert report["setup"]["text_embedder"] is None and report["setup"]["database"] is None
    assert not (out / "index.db").exists()  # no library: its captions would need a text embedder
    assert compare_reports(report, report)["notes"] == []  # it records every setting compare looks for


def test_eval_caption_of_a_library_whose_embedder_cannot_be_opened_scores_the_other_metrics(
    tones, tiny_model_dir, monkeypatch
):
    unreachable = HubUnreachableError("sentence-transformers:me/mini", "not in the Hugging Face cache")

    def offline(*_args, **_kwargs):
        raise unreachable

    monkeypatch.setattr("pengi_search.query_embedders.query_embedder", offline)
    out = tones / "runs" / "embedder-offline"
    args = ["eval", "caption", tones / "captions.csv", "--audio-root", tones / "audio", "-o", out]
    result = run(*args, "--no-java-metrics", *quick(tiny_model_dir))
    assert result.exit_code == EXIT_PARTIAL, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["unavailable"]["embedding_cosine"] == str(unreachable)
    assert report["metrics"]["embedding_cosine"] is None and report["metrics"]["CIDEr-D"] is not None


def test_eval_classify_by_likelihood_needs_no_text_embedder(tones, tiny_no_text_model_dir, no_text_embedder):
    truth = write(tones / "truth.csv", "file,label\nlow.wav,low\nmid.wav,mid\nhigh.flac,high\nlong.wav,long\n")
    out = tones / "runs" / "no-text-classify"
    result = run(
        "eval", "classify", tones / "audio", "--truth", truth, "--method", "loglik", "--model", tiny_no_text_model_dir,
        "--device", "cpu", "-o", out,
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads((out / "report.json").read_text())["evaluated"]["files"] == 4


def test_eval_classify_end_to_end(known, tiny_model_dir, tmp_path):
    captions, _ = known
    labels = {"animals/dog.wav": "dog", "weather/rain.flac": "rain", "bell.wav": "bell", "animals/cat.flac": "cat"}
    truth = write(captions.root / "truth.csv", "file,label\n" + "".join(f"{f},{lab}\n" for f, lab in labels.items()))
    out = tmp_path / "classify"
    write_report(retrieval_report(0.25), out)  # an earlier evaluation of another kind in the same folder
    result = run(
        "eval", "classify", captions.root, "--truth", truth, "--db", captions.db, "--model", tiny_model_dir,
        "--device", "cpu", "-o", out,
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert "held a retrieval report, replaced by this classify report" in " ".join(result.stderr.split())
    report = json.loads((out / "report.json").read_text())
    with open(out / "predictions.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    truth_labels = {str(captions.root / name): label for name, label in labels.items()}
    correct = sum(row["label"] == truth_labels[row["file"]] for row in rows)
    top3 = sum(truth_labels[row["file"]] in [p.split(":")[0] for p in row["top"].split(";")[:3]] for row in rows)
    assert report["metrics"]["accuracy"] == correct / 4 and report["metrics"]["top-3"] == top3 / 4
    assert report["dataset"]["labels"] == ["dog", "rain", "bell", "cat"]  # the truth's labels, in order
    assert sum(map(sum, report["confusion"]["counts"])) == 4
    assert (out / "confusion.png").exists() == HAVE_MATPLOTLIB
    assert compare_reports(report, report)["notes"] == []  # it records every setting compare looks for


@pytest.mark.parametrize("name", ["truth.csv", "truth.txt", "truth"])
def test_eval_classify_candidates_are_the_truth_labels_whatever_the_truth_file_is_named(
    known, tiny_model_dir, tmp_path, name
):
    """Without --labels the candidates are the truth's labels, in the order of its rows: not the lines of a truth
    file whose name does not end in .csv (which scored every file wrong against labels such as 'bell.wav,bell')."""
    captions, _ = known
    files = {"animals/dog.wav": "dog", "weather/rain.flac": "rain", "bell.wav": "bell", "animals/cat.flac": "dog"}
    truth = write(captions.root / name, "file,label\n" + "".join(f"{f},{lab}\n" for f, lab in files.items()))
    out = tmp_path / "classify"
    result = run(
        "eval", "classify", captions.root, "--truth", truth, "--db", captions.db, "--model", tiny_model_dir,
        "--device", "cpu", "-o", out, "--json",
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["labels"] == ["dog", "rain", "bell"]
    assert report["notes"] == []


@pytest.mark.parametrize(("beam", "max_len", "source"), [(3, 30, "index"), (2, 4, "decoded")])
def test_eval_classify_report_records_what_made_its_numbers(known, tiny_model_dir, tmp_path, beam, max_len, source):
    """Enough to run it again: the decoding of the captions, the library whose stored captions it reused (and which
    files came from it: those whose captions were decoded as asked, here with the library's --beam 3 --max-len 30),
    and the versions of the code."""
    captions, _ = known
    truth = write(tmp_path / "truth.csv", f"file,label\n{captions.root / 'bell.wav'},bell\n")
    result = run(
        "eval", "classify", captions.root, "--truth", truth, "--db", captions.db, "--model", tiny_model_dir,
        "--device", "cpu", "--beam", beam, "--max-len", max_len, "-o", tmp_path / "out", "--json",
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads(result.stdout)
    setup = report["setup"]
    assert {key: setup[key] for key in ("beam", "max_len", "stop", "db")} == {
        "beam": beam, "max_len": max_len, "stop": "both", "db": str(captions.db)
    }  # fmt: skip
    assert {key: setup[key] for key in setup if key.endswith("_version")} == {
        "pengi_search_version": pengi_search.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,  # the tokenizers and text models
        "numpy_version": np.__version__,  # the metrics' arithmetic
        "python_version": platform.python_version(),
    }
    assert [(Path(row["path"]).name, row["source"]) for row in report["files"]] == [("bell.wav", source)]
    # The audio classified, named by its path inside the folder given (wherever the command ran from).
    files = sorted(path for path in captions.root.rglob("*") if path.suffix in (".wav", ".flac"))
    named = [(path.relative_to(captions.root).as_posix(), path) for path in files]
    assert report["dataset"]["audio_sha256"] == audio_digest(named)
    assert report["dataset"]["truth_sha256"] == hashlib.sha256(truth.read_bytes()).hexdigest()
    assert report["dataset"]["label_separator"] == ";"


def test_eval_classify_with_a_label_map_scores_its_answers(known, tiny_model_dir, tmp_path):
    """`--labels` a `train init` label map: each label is scored as its answer, and the report records them."""
    captions, _ = known
    files = {"animals/dog.wav": "dog", "weather/rain.flac": "rain", "bell.wav": "bell", "animals/cat.flac": "cat"}
    truth = write(captions.root / "truth.csv", "file,label\n" + "".join(f"{f},{lab}\n" for f, lab in files.items()))
    answers = {"dog": "a dog barks", "rain": "rain on a roof", "bell": "a bell rings", "cat": "a cat meows"}
    label_map = write(tmp_path / "labels.csv", "label,answer\n" + "".join(f"{k},{v}\n" for k, v in answers.items()))
    out = tmp_path / "classify"
    result = run(
        "eval", "classify", captions.root, "--truth", truth, "--labels", label_map, "--db", captions.db,
        "--model", tiny_model_dir, "--device", "cpu", "-o", out,
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["setup"]["label_texts"] == answers
    assert report["metrics"]["accuracy"] == 1.0  # the answers are the files' captions, word for word


# A label this long leaves matplotlib no room for the confusion figure's axes (a warning of its own, not this test's).
@pytest.mark.filterwarnings("ignore:constrained_layout not applied")
def test_eval_classify_says_which_candidate_labels_its_text_embedder_cuts(known, tiny_model_dir, tmp_path):
    captions, _ = known
    files = {"animals/dog.wav": "dog", "weather/rain.flac": "rain", "bell.wav": "bell", "animals/cat.flac": "cat"}
    truth = write(captions.root / "truth.csv", "file,label\n" + "".join(f"{f},{lab}\n" for f, lab in files.items()))
    long = "a dog barks and " * 20
    labels = write(tmp_path / "labels.txt", f"dog\nrain\nbell\ncat\n{long}\n")
    result = run(
        "eval", "classify", captions.root, "--truth", truth, "--labels", labels, "--db", captions.db,
        "--model", tiny_model_dir, "--device", "cpu", "-o", tmp_path / "classify", "--json",
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    tokens = len(read_tokenizer("clip", tiny_model_dir)(long.strip())["input_ids"])
    assert [line for line in result.stderr.splitlines() if " cut to " in line] == [
        f"warning: label of {tokens} tokens cut to its first 77, all that Pengi's text tower reads: "
        f"{long[:40] + '...'!r}"
    ]


def test_eval_classify_names_a_file_left_out_once_under_its_table(tiny_model_dir, tmp_path):
    """Not also as "skipped" while it runs: the report keeps the full list. The name is shown escaped, as every
    command shows one (a tab in it would break the terminal's columns)."""
    write_tone(tmp_path / "audio" / "tone.wav", 1.0)
    broken = write(tmp_path / "audio" / "bro\tken.wav", "RIFF not really audio")
    truth = write(tmp_path / "truth.csv", "file,label\ntone.wav,tone\nbro\tken.wav,noise\n")
    out = tmp_path / "report"
    result = run("eval", "classify", tmp_path / "audio", "--truth", truth, *quick(tiny_model_dir)[:4], "-o", out)
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert [line for line in result.stderr.splitlines() if "ken.wav" in line] == [
        f"warning: left out {shown(str(broken))}: not a readable audio file (unknown format or corrupt data)"
    ]
    assert "\\t" in shown(str(broken))
    assert json.loads((out / "report.json").read_text())["skipped"] == [
        {"path": str(broken), "error": "not a readable audio file (unknown format or corrupt data)"}
    ]


def test_eval_compare_command(tmp_path):
    for name, r1 in (("base", 0.25), ("tuned", 0.5)):
        write_report(retrieval_report(r1), tmp_path / name)
    result = run(
        "eval", "compare", tmp_path / "base" / "report.json", tmp_path / "tuned" / "report.json",
        "-o", tmp_path / "compare.md",
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert "caption.text_to_audio.R@1" in result.stdout and "+0.2500" in result.stdout
    assert "| caption.text_to_audio.R@1 | 0.2500 | 0.5000 | +0.2500 |" in (tmp_path / "compare.md").read_text()
    as_json = json.loads(
        run("eval", "compare", tmp_path / "base/report.json", tmp_path / "tuned/report.json", "--json").stdout
    )
    assert list(as_json["reports"]) == ["base", "tuned"]
    missing = run("eval", "compare", tmp_path / "base" / "report.json", tmp_path / "nothing.json")
    assert missing.exit_code == EXIT_USAGE and "no such file" in missing.output
    # The folders `eval -o` wrote stand for their reports, and name the columns as their reports do.
    folders = run("eval", "compare", tmp_path / "base", tmp_path / "tuned", "--json")
    assert folders.exit_code == EXIT_OK, folders.output
    assert json.loads(folders.stdout) == as_json
    empty = run("eval", "compare", tmp_path / "base", tmp_path)
    assert empty.exit_code == EXIT_USAGE and f"{tmp_path / 'report.json'}: no such file" in empty.output


@pytest.mark.parametrize("kind", ["captions", "truth"])
def test_a_quote_that_is_not_closed_is_refused_at_its_line_instead_of_taking_in_the_rows_after_it(tmp_path, kind):
    """`"a cow moos` opens a quoted value that nothing closes: the CSV reader took the rest of the file into that one
    caption (or label), and the files of those rows were left out of the evaluation without a word."""
    for name in ("cat", "cow", "dog", "pig"):
        write_tone(tmp_path / f"{name}.wav", 0.5)
    header = "file_name,caption\n" if kind == "captions" else "file,label\n"
    path = write(tmp_path / f"{kind}.csv", header + 'cat.wav,a cat\ncow.wav,"a cow moos\ndog.wav,dogs\npig.wav,a pig\n')
    message = (
        "line 3: a quoted value is not closed, and runs on to line 5, taking in the rows between: close its quote "
        '("a dog, barking"), or quote none of it'
    )
    with pytest.raises(UsageError) as refused:
        read_caption_set(path) if kind == "captions" else read_truth(path)
    assert str(refused.value) == f"{path}: {message}"


def test_eval_retrieval_bad_csv(tmp_path):
    result = run("eval", "retrieval", write(tmp_path / "c.csv", "name,caption\na.wav,x\n"), "-o", tmp_path / "out")
    assert result.exit_code == EXIT_USAGE and "no file column" in result.output
    nothing = run("eval", "retrieval", write(tmp_path / "d.csv", "file,caption\na.wav,x\n"), "-o", tmp_path / "out")
    assert nothing.exit_code == EXIT_USAGE and "none of its 1 files" in nothing.output


def test_eval_classify_refuses_a_truth_that_lists_none_of_the_files(tmp_path):
    """It would measure nothing (a report of dashes): bad usage, said before the model is looked for."""
    write_tone(tmp_path / "audio" / "tone.wav", 1.0)
    truth = write(tmp_path / "truth.csv", "file,label\nelsewhere/other.wav,tone\n")
    result = run("eval", "classify", tmp_path / "audio", "--truth", truth, "--model", tmp_path / "no-model")
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stderr.splitlines() == [
        f"error: {truth}: lists none of the 1 audio file of {tmp_path / 'audio'} (its paths are relative to its "
        "own folder; a bare file name matches a file of that name, a path with folders one whose path ends with it)"
    ]


def test_eval_classify_takes_a_truth_that_lists_only_files_it_cannot_read(tiny_model_dir, tmp_path):
    """The truth lists them: they are left out with their reason (exit code 3), as a file that does not decode is,
    not refused as a truth that lists none of the files."""
    write_tone(tmp_path / "audio" / "tone.wav", 1.0)
    (tmp_path / "audio" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    truth = write(tmp_path / "truth.csv", "file,label\naudio/gone.wav,tone\n")
    labels = write(tmp_path / "labels.txt", "tone\nhum\n")
    args = ["eval", "classify", tmp_path / "audio", "--truth", truth, "--labels", labels, "-o", tmp_path / "report"]
    result = run(*args, *quick(tiny_model_dir)[:4])
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert f"left out {tmp_path / 'audio' / 'gone.wav'}: broken symbolic link" in result.stderr


def test_eval_classify_warns_of_what_its_numbers_cannot_count(tiny_model_dir, tmp_path):
    """A true label that no candidate spells the same way, and a classified file the truth does not list: each
    said under the table (and in report.md), not only counted into the numbers."""
    for name in ("a.wav", "b.wav", "extra.wav"):
        write_tone(tmp_path / "audio" / name, 1.0)
    truth = write(tmp_path / "truth.csv", "file,label\na.wav,Tone\nb.wav,hum\n")
    labels = write(tmp_path / "labels.txt", "tone\nhum\n")
    out = tmp_path / "report"
    args = ["eval", "classify", tmp_path / "audio", "--truth", truth, "--labels", labels, "-o", out]
    result = run(*args, *quick(tiny_model_dir)[:4])
    assert result.exit_code == EXIT_OK, result.output
    said = [
        "warning: 1 classified file is not in the truth file, so not scored",
        "warning: true label 'Tone' is not a candidate label but 'tone' is: labels are compared exactly, so its 1 "
        "file counts as wrong",
    ]
    assert result.stderr.splitlines() == said
    summary = (out / "report.md").read_text()
    assert all(line.removeprefix("warning: ") in summary for line in said)


def test_eval_classify_says_which_files_of_the_truth_it_did_not_classify(tiny_model_dir, tmp_path):
    """Its numbers are over the files it classified: files the truth lists that are not on the disk, or not under
    the folder given, are said under the table, named as the truth CSV spells them (where the user looks them up),
    and listed in the report by path, not left out unseen."""
    write_tone(tmp_path / "audio" / "a.wav", 1.0)
    write_tone(tmp_path / "elsewhere" / "b.wav", 1.0)
    truth = write(tmp_path / "truth.csv", "file,label\naudio/a.wav,tone\naudio/gone.wav,hum\n./elsewhere/b.wav,hum\n")
    out = tmp_path / "report"
    result = run("eval", "classify", tmp_path / "audio", "--truth", truth, *quick(tiny_model_dir)[:4], "-o", out)
    assert result.exit_code == EXIT_OK, result.output
    note = "2 files the truth lists were not classified, so not scored: 'audio/gone.wav', './elsewhere/b.wav'"
    assert result.stderr.splitlines() == [f"warning: {note}"]
    report = json.loads((out / "report.json").read_text())
    assert report["evaluated"]["files"] == 1 and report["notes"] == [note]
    assert report["not_classified"] == [str(tmp_path / "audio" / "gone.wav"), str(tmp_path / "elsewhere" / "b.wav")]


def test_with_json_the_warnings_still_go_to_stderr(tiny_model_dir, tmp_path):
    """`--json` puts the report on stdout instead of the table, and nothing else there; what the numbers leave out
    is still said on stderr, as every command's --json says it, for a script's log."""
    write_tone(tmp_path / "audio" / "a.wav", 1.0)
    broken = write(tmp_path / "audio" / "broken.wav", "RIFF not really audio")
    truth = write(tmp_path / "truth.csv", "file,label\na.wav,tone\nbroken.wav,hum\n")
    labels = write(tmp_path / "labels.txt", "tone\nhum\n")
    args = ["eval", "classify", tmp_path / "audio", "--truth", truth, "--labels", labels, "-o", tmp_path / "report"]
    result = run(*args, *quick(tiny_model_dir)[:4], "--json")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert json.loads(result.stdout)["skipped"] == [
        {"path": str(broken), "error": "not a readable audio file (unknown format or corrupt data)"}
    ]
    assert result.stderr.splitlines() == [
        f"warning: left out {broken}: not a readable audio file (unknown format or corrupt data)"
    ]
    for name, sha in (("base", "0" * 64), ("other-set", "1" * 64)):
        write_report(retrieval_report(0.25, sha=sha), tmp_path / name)
    compared = run("eval", "compare", tmp_path / "base", tmp_path / "other-set", "--json")
    assert compared.exit_code == EXIT_OK and json.loads(compared.stdout)["notes"]
    assert "warning: the two reports measured different sets" in compared.stderr


def test_eval_names_why_a_file_failed_on_every_run(tiny_model_dir, tmp_path):
    """A file that failed to index is not tried again by the next run (it is unchanged): its reason comes from the
    library then, not a guess that it changed or failed before."""
    write_tone(tmp_path / "audio" / "tone.wav", 1.0)
    write(tmp_path / "audio" / "broken.wav", "RIFF not really audio")
    captions = write(tmp_path / "audio" / "captions.csv", "file,caption\ntone.wav,a tone\nbroken.wav,a crackle\n")
    args = ["eval", "caption", captions, "--no-java-metrics", "-o", tmp_path / "out", "--json", *quick(tiny_model_dir)]
    reasons = []
    for _ in range(2):
        result = run(*args)
        assert result.exit_code == EXIT_PARTIAL, result.output
        reasons.append(json.loads(result.stdout)["skipped"])
    broken = [
        {"path": "broken.wav", "error": "failed to index: not a readable audio file (unknown format or corrupt data)"}
    ]
    assert reasons == [broken, broken]


def test_eval_says_when_the_library_holds_captions_of_another_prompt(tiny_model_dir, tmp_path):
    """A second run reuses what is indexed: asked for another prompt without --reindex, it would score the old
    captions under the new prompt's name. The report records the prompt the captions answer, and the run says so."""
    write_tone(tmp_path / "audio" / "tone.wav", 1.0)
    captions = write(tmp_path / "audio" / "captions.csv", "file,caption\ntone.wav,a tone\n")
    args = ["eval", "caption", captions, "--no-java-metrics", "-o", tmp_path / "out", "--json", *quick(tiny_model_dir)]
    first = run(*args, "--prompt", "this is a sound of")
    assert first.exit_code == EXIT_OK and first.stderr == "", first.output
    again = run(*args)
    assert again.exit_code == EXIT_OK, again.output
    assert json.loads(again.stdout)["setup"]["caption_prompts"] == ["this is a sound of"]
    assert again.stderr.splitlines() == [
        "warning: the library's captions of this set answer 'this is a sound of', not 'generate audio caption': "
        "--reindex captions them anew"
    ]
    redone = run(*args, "--reindex")
    assert redone.stderr == "" and json.loads(redone.stdout)["setup"]["caption_prompts"] == ["generate audio caption"]


def test_eval_records_the_decoding_of_the_captions_it_scores(tiny_model_dir, tmp_path):
    """The report's beam and max_len are what was asked; the captions scored are the library's, decoded when they
    were indexed. A second run with another beam, without --reindex, scores the first run's captions: the report
    names their decoding, and the run says so."""
    write_tone(tmp_path / "audio" / "tone.wav", 1.0)
    captions = write(tmp_path / "audio" / "captions.csv", "file,caption\ntone.wav,a tone\n")
    args = ["eval", "caption", captions, "--no-java-metrics", "-o", tmp_path / "out", "--json", *quick(tiny_model_dir)]
    first = run(*args)  # quick: --beam 2 --max-len 3
    assert first.exit_code == EXIT_OK and first.stderr == "", first.output
    assert json.loads(first.stdout)["setup"]["caption_decoding"] == ["beam=2 max_len=3 stop=both (exact)"]
    again = run(*args, "--beam", 3)
    assert again.exit_code == EXIT_OK, again.output
    setup = json.loads(again.stdout)["setup"]
    assert (setup["beam"], setup["caption_decoding"]) == (3, ["beam=2 max_len=3 stop=both (exact)"])
    assert again.stderr.splitlines() == [
        "warning: the library's captions of this set were decoded with 'beam=2 max_len=3 stop=both (exact)', not "
        "'beam=3 max_len=3 stop=both (exact)': --reindex captions them anew"
    ]
    redone = run(*args, "--beam", 3, "--reindex")
    assert redone.stderr == "", redone.output
    assert json.loads(redone.stdout)["setup"]["caption_decoding"] == ["beam=3 max_len=3 stop=both (exact)"]


def test_compare_reads_a_report_of_0_1_0_whose_files_were_file_and_reasons_reason(tmp_path):
    """0.1.0 named a report's files `file`, why one was left out `reason` and the index run's windows `windows`
    (`path`, `error` and `window_count` now, as in every command's JSON): such a report is compared as it was."""
    older, now = classify_report(tmp_path, right=1, files=3), classify_report(tmp_path, right=3, files=3)
    older["files"] = [{"file": row.pop("path"), **row} for row in older["files"]]
    older["skipped"] = [{"file": str(tmp_path / "d.wav"), "reason": "not a readable audio file"}]
    older["index_run"] = {"indexed": 3, "windows": 3, "failed": [{"path": "d.wav", "reason": "not audio"}]}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(older))
    write_report(now, tmp_path / "new")
    result = run("eval", "compare", tmp_path / "old", tmp_path / "new", "--json")
    assert result.exit_code == EXIT_OK, result.output
    comparison = json.loads(result.stdout)
    assert comparison["notes"] == [] and comparison["rows"][0] == {
        "metric": "accuracy",
        "a": pytest.approx(1 / 3),
        "b": 1.0,
        "delta": pytest.approx(2 / 3),
    }
