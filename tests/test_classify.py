"""Zero-shot classification: labels and truth files, both methods, reuse of the index, and the evaluation."""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pengi_search import inference
from pengi_search.audio import iter_windows
from pengi_search.classify import (
    Classifier,
    ClassifySettings,
    LabelsError,
    Prediction,
    evaluate,
    loglik_answer,
    read_label_map,
    read_labels,
)
from pengi_search.cli import app
from pengi_search.decoding import GenerationConfig
from pengi_search.errors import EXIT_USAGE
from pengi_search.inference import Engine
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.prompts import TASK_PROMPTS
from pengi_search.stored import stored_windows
from pengi_search.tokenization import Tokenizers
from pengi_search.truth import Truth, read_truth

from .indexing import CountingProgress, write_tone
from .search_library import index_folder

SMOKE_LABELS = Path("/work/shared/data/smoke/labels.csv")


# -- labels files ------------------------------------------------------------------------------------------------


def write(tmp_path: Path, content: str | bytes, name: str = "labels.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_labels_one_per_line(tmp_path):
    path = write(tmp_path, "\ufeffdog barking\n  rain \ncat\n\n\n")  # BOM, spaces and trailing blank lines are fine
    assert read_labels(path) == ["dog barking", "rain", "cat"]


def test_labels_lines_end_as_editors_end_them(tmp_path):
    """LF, CRLF or a lone CR (old Mac files) end a line; nothing else does."""
    assert read_labels(write(tmp_path, "dog\r\nrain\rcat\nbell")) == ["dog", "rain", "cat", "bell"]


def test_lines_starting_with_a_hash_are_comments_in_a_plain_text_labels_file(tmp_path):
    """Not labels scored against every file: a heading, a note, a label left out for now."""
    path = write(tmp_path, "# animals\ndog\n  # cat\nbird\n#\nrain\n")
    assert read_labels(path) == ["dog", "bird", "rain"]
    with pytest.raises(LabelsError, match=r"duplicate label 'dog' on line 4 \(first on line 2\)"):
        read_labels(write(tmp_path, "# animals\ndog\n# again\ndog\n"))  # comments count as lines


def test_a_csv_labels_file_has_no_comments(tmp_path):
    """Its values are data (a dataset's metadata), where a `#` means what it says."""
    assert read_labels(write(tmp_path, "label\n# 1 hit\ndog\n", "labels.csv")) == ["# 1 hit", "dog"]


def test_a_labels_file_of_comments_only_has_no_labels(tmp_path):
    with pytest.raises(LabelsError, match=r"no labels, only comments \(lines starting with #\)"):
        read_labels(write(tmp_path, "# dog\n# cat\n\n"))


def test_a_label_map_may_repeat_a_label_with_its_answer_or_without_one(tmp_path):
    path = write(tmp_path, "label,answer\ndog,a dog barks\ndog,\ndog,a dog barks\ncat,\n", "map.csv")
    assert read_label_map(path) == (["dog", "cat"], {"dog": "a dog barks"})


def test_labels_from_a_csv_label_column(tmp_path):
    path = write(tmp_path, "file,Label,caption\na.wav,dog,x\nb.wav,cat,y\nc.wav,dog,z\n", "meta.csv")
    assert read_labels(path) == ["dog", "cat"]


@pytest.mark.skipif(not SMOKE_LABELS.exists(), reason="shared smoke data not present")
def test_labels_from_the_smoke_set_csv():
    labels = read_labels(SMOKE_LABELS)
    assert "speech" in labels and "bird" in labels and len(labels) == len(set(labels))


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "labels.txt", "empty file; write one label per line"),
        ("\n \n", "labels.txt", "empty file; write one label per line"),
        ("dog\n\ncat\n", "labels.txt", "line 2 is blank"),
        ("dog\ncat\n dog\n", "labels.txt", r"duplicate label 'dog' on line 3 \(first on line 1\)"),
        (b"dog\ncat\nb\xe9ll\n", "labels.txt", "not UTF-8 text: byte 0xe9 at line 3, column 2; save it as UTF-8"),
        ("dog\ncat\n".encode("utf-16"), "labels.txt", "UTF-16 text, not UTF-8; save it as UTF-8"),
        ("label\ndog\n".encode("utf-16"), "labels.csv", "UTF-16 text, not UTF-8; save it as UTF-8"),
        ("name,caption\ndog,x\n", "labels.csv", "needs a 'label' column"),
        ("label\ndog\n,\n", "labels.csv", "line 3 has no label"),
        ("label\ndog\nalarm,clock\n", "labels.csv", "line 3 has 2 values but the header has 1 column: quote"),
        ("label\n", "labels.csv", r"no rows \(the CSV file has a header only\)"),
        ("", "labels.csv", "empty file; a CSV file starts with its header: label"),
        (b"\x00\x01\x02\n", "labels.txt", r"line 1 holds the control character '\\x00': is this a text file\?"),
        ("label\ndog\nca\x1bt\n", "labels.csv", r"line 3 holds the control character '\\x1b'"),
        # A form feed or a Unicode line separator broke a label in two, where nothing showed it.
        ("rain\ndog\x0cbarking\n", "labels.txt", r"line 2 holds the control character '\\x0c'"),
        ("rain\ndog\x0c\n", "labels.txt", r"line 2 holds the control character '\\x0c'"),
        ("rain\ndog\u2028barking\n", "labels.txt", r"line 2 holds the line break '\\u2028'"),
        ("label\ndog\u2029barking\n", "labels.csv", r"line 2 holds the line break '\\u2029'"),
        # One of two answers of a label was scored, the other dropped unseen.
        (
            "label,answer\ndog,a dog barks\ncat,a cat\ndog,a dog growls\n",
            "labels.csv",
            "label 'dog' on line 4 has another answer than on line 2",
        ),
    ],
)
def test_bad_labels_files_say_what_and_where(tmp_path, content, name, message):
    path = write(tmp_path, content, name)
    with pytest.raises(LabelsError, match=message) as err:
        read_labels(path)
    assert str(err.value).startswith(f"{path}: ")


def test_missing_labels_file(tmp_path):
    with pytest.raises(LabelsError, match="no such file"):
        read_labels(tmp_path / "absent.txt")


# -- truth files and evaluation ----------------------------------------------------------------------------------


def test_truth_paths_are_relative_to_the_csv_or_matched_by_name(tmp_path):
    path = write(tmp_path, "filename,label\nsub/a.wav,dog\n/elsewhere/b.wav,cat\nc.wav,bell\nx/c.wav,bell\n", "t.csv")
    truth = read_truth(path)
    assert truth.label_of(tmp_path / "sub" / "a.wav") == "dog"
    assert truth.label_of("/elsewhere/b.wav") == "cat"
    assert truth.label_of("/other/place/sub/a.wav") == "dog"  # a unique name, in the folder its row names
    assert truth.label_of("/other/place/c.wav") is None  # listed twice: ambiguous by name
    assert truth.label_of(tmp_path / "x" / "c.wav") == "bell"


def test_a_truth_row_that_names_a_folder_matches_no_file_of_its_name_in_another_folder(tmp_path):
    """`fold2/dog.wav` is another recording than the row `fold1/dog.wav` (datasets reuse names across folds): it
    would be scored against the wrong labels. A bare name asks no folder; `..` and `.` name none."""
    rows = "fold1/dog.wav,dog\n./cat.wav,cat\n../up/../bell.wav,bell\n../audio/rain.wav,rain\n/abs/set/owl.wav,owl\n"
    truth = read_truth(write(tmp_path, "file,label\n" + rows, "t.csv"))
    assert truth.label_of("/copy/fold1/dog.wav") == "dog"
    assert truth.label_of("/copy/fold2/dog.wav") is None
    assert truth.label_of("/copy/dog.wav") is None
    assert truth.label_of("/copy/any/cat.wav") == "cat"
    assert truth.label_of("/copy/any/bell.wav") == "bell"
    assert truth.label_of("/copy/audio/rain.wav") == "rain"
    assert truth.label_of("/copy/clips/rain.wav") is None
    assert truth.label_of("/abs/set/owl.wav") == "owl"
    assert truth.label_of("/copy/set/owl.wav") is None  # an absolute path names every folder


def test_a_truth_row_without_extension_that_names_a_folder_matches_only_in_that_folder(tmp_path):
    """FSD50K's names without extension follow the same rule: `dev/64760` is 64760.wav in a folder `dev`."""
    truth = read_truth(write(tmp_path, "fname,labels\ndev/64760,Bark\n1234,Meow\n", "t.csv"))
    assert truth.label_of("/data/dev/64760.wav") == "Bark"
    assert truth.label_of("/data/eval/64760.wav") is None
    assert truth.label_of("/data/eval/1234.flac") == "Meow"


def test_a_file_some_truth_row_names_bare_is_matched_by_its_name_in_any_folder(tmp_path):
    """Rows of one file, by its absolute path and bare: the bare row asks no folder of it, so the file matches by
    its name as any bare name does. Paths count the folders they name once normalised: `./sub/../sub/b.wav` one."""
    truth = read_truth(
        write(tmp_path, f"file,label\n{tmp_path}/a.wav,dog\na.wav,dog\n./sub/../sub/b.wav,cat\n", "t.csv")
    )
    assert truth.label_of("/copy/a.wav") == "dog"
    assert truth.label_of("/copy/sub/b.wav") == "cat" and truth.label_of("/copy/b.wav") is None


def test_truth_names_match_whatever_unicode_form_the_csv_writes(tmp_path):
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    truth = read_truth(write(tmp_path, f"file,label\nsub/{decomposed}.wav,dog\n{composed}2.wav,cat\n", "t.csv"))
    assert truth.label_of(tmp_path / "sub" / f"{composed}.wav") == "dog"
    assert truth.label_of(tmp_path / f"{decomposed}2.wav") == "cat"
    assert truth.label_of(f"/elsewhere/sub/{composed}.wav") == "dog"  # by its unique name, in its row's folder


def test_truth_files_as_spreadsheets_write_them(tmp_path):
    # A byte-order mark, CRLF line ends, a quoted comma, a trailing comma and columns the truth does not use.
    text = '\ufeffFile,Label,notes\r\n"a, b.wav",dog,x\r\nc.wav,cat ,\r\nd.wav,bell,,\r\n'
    truth = read_truth(write(tmp_path, text.encode(), "truth.csv"))
    assert truth.by_path == {
        str(tmp_path / "a, b.wav"): ("dog",),
        str(tmp_path / "c.wav"): ("cat",),
        str(tmp_path / "d.wav"): ("bell",),
    }


def test_a_truth_file_name_is_the_file_of_that_name_as_written_else_trimmed(tmp_path):
    """Values are trimmed (the space a spreadsheet writes after a comma), but a file name may start or end with a
    space: where a file of the name as written exists, the row means that file."""
    for name in (" intro.wav", "intro.wav", "outro.wav"):
        (tmp_path / name).write_bytes(b"")
    truth = read_truth(write(tmp_path, 'label,file\nspeech," intro.wav"\nmusic, outro.wav\n', "truth.csv"))
    assert truth.by_path == {str(tmp_path / " intro.wav"): ("speech",), str(tmp_path / "outro.wav"): ("music",)}
    assert truth.label_of(tmp_path / "intro.wav") is None


def test_evaluate_accuracy_and_per_class_scores():
    truth = Truth({"/a.wav": ("dog",), "/b.wav": ("dog",), "/c.wav": ("rain",), "/d.wav": ("bell",)}, {})
    predictions = [
        Prediction("/a.wav", [("dog", 0.9), ("rain", 0.1)], 1, "index"),
        Prediction("/b.wav", [("rain", 0.8), ("dog", 0.2)], 1, "index"),
        Prediction("/c.wav", [("rain", 0.7), ("dog", 0.3)], 1, "index"),
        Prediction("/d.wav", [("dog", 0.6), ("bell", 0.4)], 1, "index"),
        Prediction("/unknown.wav", [("dog", 0.6)], 1, "index"),
    ]
    metrics = evaluate(predictions, truth)
    assert metrics["files"] == 4 and metrics["correct"] == 2 and metrics["accuracy"] == 0.5
    assert metrics["unmatched"] == ["/unknown.wav"]
    dog, rain, bell = (metrics["per_class"][label] for label in ("dog", "rain", "bell"))
    assert dog == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rain == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3, abs=1e-6), "support": 1}
    assert bell == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_loglik_answer_drops_the_prompt_from_the_template():
    prompt = "this is a sound of"
    assert loglik_answer("{label}", prompt, "dog") == "dog"
    assert loglik_answer("This is a sound of {label}", prompt, "dog barking") == "dog barking"
    assert loglik_answer("a {label} nearby", prompt, "dog") == "a dog nearby"
    with pytest.raises(ValueError, match="no \\{label\\}"):
        ClassifySettings(template="this is a sound of")
    with pytest.raises(ValueError, match="leaves no answer"):
        loglik_answer("this is a sound of {label}", prompt, "")


# -- classification ----------------------------------------------------------------------------------------------

LABELS = ["a dog barks", "rain on a roof", "a bell rings", "a cat meows"]


def classifier(model_dir, labels=LABELS, db=None, **settings):
    library = None if db is None else Library.open(db)
    settings = ClassifySettings(**settings)
    return Classifier(labels, settings, model_dir=ModelDir.read(model_dir), library=library, device="cpu")


@pytest.mark.parametrize(
    ("name", "label"),
    [("animals/dog.wav", "a dog barks"), ("bell.wav", "a bell rings"), ("animals/cat.flac", "a cat meows")],
)
def test_text_method_picks_the_label_equal_to_the_stored_caption(captions, tiny_model_dir, name, label):
    prediction = classifier(tiny_model_dir, db=captions.db).classify(captions.files[name])
    assert prediction.source == "index" and prediction.window_count == 1
    assert prediction.label == label and prediction.score == pytest.approx(1.0, abs=1e-5)
    assert prediction.ranked[1][1] < 1.0 - 1e-4
    assert sorted(label for label, _ in prediction.ranked) == sorted(LABELS)


def test_text_method_averages_the_windows(captions, tiny_model_dir):
    """rain.flac: "rain on a roof" then "thunder rolls in the distance"; each label's score is the windows' mean."""
    c = classifier(tiny_model_dir, labels=["rain on a roof", "thunder rolls in the distance"], db=captions.db)
    prediction = c.classify(captions.files["weather/rain.flac"])
    assert prediction.window_count == 2
    vectors = c.embedder().embed(["rain on a roof", "thunder rolls in the distance"])
    cross = float(vectors[0] @ vectors[1])
    for _, score in prediction.ranked:
        assert score == pytest.approx((1.0 + cross) / 2, abs=1e-5)


def test_text_method_captions_a_file_that_is_not_indexed(tiny_model_dir, tmp_path):
    path = write_tone(tmp_path / "new.wav", 4.0, freq=600.0)
    engine = Engine.load(ModelDir.read(tiny_model_dir), "cpu")
    embeds = engine.audio_embeddings(np.stack([w.samples for w in iter_windows(path)]))
    caption = engine.generate(embeds, [TASK_PROMPTS["caption"]], GenerationConfig(beam=2, max_len=8))[0][0].text
    c = classifier(tiny_model_dir, labels=["a dog barks", caption, "rain"], beam=2, max_len=8)
    prediction = c.classify(path)
    assert prediction.source == "decoded"
    assert prediction.label == caption and prediction.score == pytest.approx(1.0, abs=1e-5)


def test_a_model_without_text_tower_names_loglik_as_the_way_to_classify_it(tiny_no_text_model_dir, tmp_path):
    """A model trained on labels (`train init`: no text tower) is classified by likelihood, which needs nothing
    more; the text method's error said only to get a sentence-transformers model."""
    path = write_tone(tmp_path / "a.wav", 1.0, freq=440.0)
    labels = write(tmp_path, "low\nhigh\n")
    result = CliRunner().invoke(app, ["classify", str(path), "--model", str(tiny_no_text_model_dir), "-l", str(labels)])
    assert result.exit_code == EXIT_USAGE
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "--method loglik" in line and "--text-embedder" in line


def test_a_trained_model_scored_on_labels_with_underscores_names_the_label_map_that_spells_them_as_taught(
    tiny_no_text_model_dir, tmp_path
):
    """`train init` teaches alarm_clock as "alarm clock": scored as written, a label is a text the model never learnt,
    which cost the smoke set's model more than half its accuracy without a word. A model `train` wrote says so; its
    label map, or a released model (whose labels are the user's own texts), says nothing."""
    trained = shutil.copytree(tiny_no_text_model_dir, tmp_path / "trained")
    config = json.loads((trained / "config.json").read_text())
    (trained / "config.json").write_text(json.dumps(config | {"trained": {"steps": 10, "tasks": ["sound_event"]}}))
    clip = write_tone(tmp_path / "a.wav", 1.0, freq=440.0)
    as_written = write(tmp_path, "alarm_clock\ndog\n")
    label_map = write(tmp_path, "label,answer\nalarm_clock,alarm clock\ndog,dog\n", "labels.csv")

    def warnings(model: Path, labels: Path) -> list[str]:
        options = ["--method", "loglik", "--device", "cpu"]
        result = CliRunner().invoke(app, ["classify", str(clip), "--model", str(model), "-l", str(labels), *options])
        assert result.exit_code == 0, result.output
        return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]

    assert warnings(trained, as_written) == [
        "warning: 1 label is scored as written (alarm_clock), but this model was trained on labels as words "
        "('alarm clock'): give --labels the label map that `train init` wrote (its labels.csv, whose answer column "
        "says how each label was taught)"
    ]
    assert warnings(trained, label_map) == []
    assert warnings(tiny_no_text_model_dir, as_written) == []


@pytest.mark.parametrize(
    ("given", "refused"),
    [
        (("--method", "loglik", "--beam", "5"), "error: --beam: is read by --method text only"),
        (("--method", "loglik", "--text-embedder", "sentence-transformers:x"), "error: --text-embedder: is read by"),
        (("--prompt", "this is"), "error: --prompt: is read by --method loglik only"),
        (("--method", "text", "--loglik-score", "total"), "error: --loglik-score: is read by --method loglik only"),
    ],
)
@pytest.mark.parametrize("command", [("classify",), ("eval", "classify")])
def test_an_option_of_the_other_method_is_refused_in_one_line_before_any_work(tmp_path, command, given, refused):
    """Each method reads its own options: `--beam 5` with --method loglik, which writes no caption, or a --prompt
    without it (the text method asks for captions) changed nothing, and the scores came back without a word."""
    clip = write_tone(tmp_path / "a.wav", 1.0, freq=440.0)
    labels = write(tmp_path, "low\nhigh\n")
    truth = write(tmp_path, "file,label\na.wav,low\n", "truth.csv")
    where = ["--truth", str(truth), "-o", str(tmp_path / "out")] if command == ("eval", "classify") else []
    args = [*command, str(clip), "-l", str(labels), *where, "--model", str(tmp_path / "no-model"), *given]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(refused)
    method = "text" if "--method loglik" not in line else "loglik"
    assert line.endswith(f"leave it out, or use --method {method}")


def test_template_applies_to_the_labels(captions, tiny_model_dir):
    """With a template the label text no longer equals the caption; the template text itself does."""
    c = classifier(tiny_model_dir, labels=["a dog", "a cat"], db=captions.db, template="{label} barks")
    prediction = c.classify(captions.files["animals/dog.wav"])
    assert prediction.label == "a dog" and prediction.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("score", ["mean", "total"])
def test_loglik_equals_a_direct_engine_score(tiny_model_dir, tmp_path, score):
    path = write_tone(tmp_path / "long.wav", 10.0, freq=420.0)  # two windows, averaged
    labels = ["dog", "rain on a roof", "bell", "silence"]
    engine = Engine.load(ModelDir.read(tiny_model_dir), "cpu")
    embeds = engine.audio_embeddings(np.stack([w.samples for w in iter_windows(path)]))
    direct = engine.score(embeds, "this is a sound of", labels)
    expected = np.mean([[getattr(s, score) for s in row] for row in direct], axis=0)
    prediction = classifier(tiny_model_dir, labels=labels, method="loglik", loglik_score=score).classify(path)
    assert prediction.source == "decoded" and prediction.window_count == 2
    assert prediction.label == labels[int(np.argmax(expected))]
    got = dict(prediction.ranked)
    np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-5, rtol=0)


def test_loglik_reuses_stored_audio_embeddings(captions, tiny_model_dir, tmp_path):
    settings = {"method": "loglik", "template": "this is a sound of {label}"}
    stored = classifier(tiny_model_dir, labels=["dog", "rain"], db=captions.db, **settings)
    fresh = classifier(tiny_model_dir, labels=["dog", "rain"], **settings)
    from_index = stored.classify(captions.files["weather/rain.flac"])
    decoded = fresh.classify(shutil.copy(captions.files["weather/rain.flac"], tmp_path / "rain.flac"))
    assert (from_index.source, decoded.source) == ("index", "decoded")
    assert from_index.label == decoded.label
    np.testing.assert_allclose([s for _, s in from_index.ranked], [s for _, s in decoded.ranked], atol=1e-4, rtol=0)


@pytest.fixture()
def scored_batches(monkeypatch) -> list[int]:
    """The windows of each batch whose prefixes the engine scores the labels after (`score_candidates`' rows)."""
    batches: list[int] = []
    score = inference.score_candidates

    def recording(gpt, prefix, candidates, max_rows=256):
        batches.append(prefix.rows)
        return score(gpt, prefix, candidates, max_rows)

    monkeypatch.setattr(inference, "score_candidates", recording)
    return batches


def stored_loglik(captions, engine: Engine, labels=LABELS, **settings) -> Classifier:
    """A loglik classifier that reuses the `captions` library's stored audio embeddings, on `engine`."""
    library = Library.open(captions.db, read_only=True)
    settings = ClassifySettings(method="loglik", **settings)
    return Classifier(labels, settings, library=library, engine=engine)


def test_loglik_scores_the_stored_windows_of_many_files_in_shared_batches(captions, tiny_model_dir, scored_batches):
    """The library's 4 files hold 5 windows (dog, rain's two, bell, cat): with --batch-size 2 they are scored in
    batches of 2, 2 and 1 windows, across files; a file at a time, each one-window clip made a batch of its own."""
    engine = Engine.load(ModelDir.read(tiny_model_dir), "cpu", batch_size=2)
    predictions = list(stored_loglik(captions, engine).classify_files(list(captions.files.values())))
    assert [(p.source, p.window_count) for p in predictions] == [("index", 1), ("index", 2), ("index", 1), ("index", 1)]
    assert scored_batches == [2, 2, 1]


@pytest.mark.parametrize("score", ["mean", "total"])
def test_batched_loglik_equals_each_window_and_label_scored_alone(captions, tiny_model_dir, score):
    """Windows of several files share each batch's prefixes, and labels of 1 to 7 tokens share its forward pass,
    right-padded to the longest: each label's score is still what it gets alone after one window, with nothing
    padded and no neighbour. Within float32 rounding: products of other shapes add up in another order (about
    1e-6 on these scores of about -6); a padded token counted, or seen by a label's own tokens, moves them by
    tenths."""
    labels = ["dog", "rain on a roof", "a bell rings twice in the distance", "silence"]
    engine = Engine.load(ModelDir.read(tiny_model_dir), "cpu", batch_size=2)
    classifier = stored_loglik(captions, engine, labels, loglik_score=score)
    assert len({len(engine.tok.answer_ids(label)) for label in labels}) == 4  # padded in every batch
    files = list(captions.files.values())
    with Library.open(captions.db, read_only=True) as library:
        for path, prediction in zip(files, classifier.classify_files(files), strict=True):
            vectors = torch.from_numpy(stored_windows(library, path, audio=True).vectors)
            alone = [
                [getattr(engine.score(vector[None], "this is a sound of", [label])[0][0], score) for label in labels]
                for vector in vectors
            ]
            got = dict(prediction.ranked)
            np.testing.assert_allclose([got[label] for label in labels], np.mean(alone, axis=0), atol=1e-5, rtol=0)


def test_loglik_encodes_the_labels_once_a_run(captions, tiny_model_dir, monkeypatch):
    """Not once per batch of windows (5 batches of one window here), nor once per file."""
    encoded: list[str] = []
    answer_ids = Tokenizers.answer_ids
    monkeypatch.setattr(Tokenizers, "answer_ids", lambda self, text: encoded.append(text) or answer_ids(self, text))
    engine = Engine.load(ModelDir.read(tiny_model_dir), "cpu", batch_size=1)
    list(stored_loglik(captions, engine).classify_files(list(captions.files.values())))
    assert sorted(encoded) == sorted(LABELS)


@pytest.mark.parametrize("method", ["text", "loglik"])
def test_progress_counts_the_stored_files_with_the_decoded_ones(captions, tiny_model_dir, tmp_path, method):
    """4 files the library holds (5 windows) and a new one (1 window): the bar counts 5 files from the start, the
    stored files' windows known at once, and advances through all 6 windows; it counted the new file only, and
    stood still while the stored ones were scored."""
    progress = CountingProgress()
    new = write_tone(tmp_path / "new.wav", 2.0, freq=610.0)
    c = classifier(tiny_model_dir, db=captions.db, method=method)
    outcomes = list(c.classify_files([*captions.files.values(), new], progress=progress))
    assert [p.source for p in outcomes] == ["index"] * 4 + ["decoded"]
    assert progress.seen == {"total": 5, "counted": 6, "files": 5, "windows": 6}


def test_another_model_does_not_reuse_the_index(captions, tmp_path):
    from pengi_search.testing import make_tiny_model_dir

    other = make_tiny_model_dir(tmp_path / "other", seed=4)
    prediction = classifier(other, db=captions.db, max_len=4).classify(captions.files["bell.wav"])
    assert prediction.source == "decoded"


# -- which stored captions a run takes as its own ----------------------------------------------------------------


@pytest.fixture()
def captioned_work(monkeypatch) -> dict[str, int]:
    """Counts the windows the model captions (`Engine.generate`)."""
    work = {"captioned": 0}
    generate = Engine.generate

    def counting_generate(self, embeds, *args, **kwargs):
        work["captioned"] += len(embeds)
        return generate(self, embeds, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", counting_generate)
    return work


@pytest.fixture(scope="module")
def beam_2_library(tmp_path_factory, tiny_model_dir) -> tuple[str, Path]:
    """A library indexed by the indexer with --beam 2 --max-len 3, exactly, and its one-window file."""
    root = tmp_path_factory.mktemp("beam-2")
    path = write_tone(root / "sounds" / "tone.wav", 2.0, freq=520.0)
    index_folder(str(root / "lib.db"), root / "sounds", tiny_model_dir, beam=2, max_len=3)
    return str(root / "lib.db"), path


@pytest.mark.parametrize(
    ("asked", "source"),
    [
        ({"beam": 2, "max_len": 3}, "index"),
        ({"beam": 1, "max_len": 3}, "decoded"),
        ({"beam": 2, "max_len": 4}, "decoded"),
        ({"beam": 2, "max_len": 3, "stop": "original"}, "decoded"),
    ],
)
def test_stored_captions_serve_only_a_run_that_decodes_as_they_were_decoded(
    beam_2_library, tiny_model_dir, captioned_work, asked, source
):
    """Another --beam, --max-len or --stop writes other captions: classifying with the library's would give the
    numbers of the settings it was indexed with, under the settings asked for."""
    db, path = beam_2_library
    prediction = classifier(tiny_model_dir, db=db, **asked).classify(path)
    assert prediction.source == source
    assert captioned_work["captioned"] == (0 if source == "index" else 1)


def test_captions_of_a_fast_index_serve_a_fast_run_only(tiny_model_dir, tmp_path, captioned_work):
    """--fast answers are close to exact ones, not equal: an exact run decodes the file again."""
    path = write_tone(tmp_path / "sounds" / "tone.wav", 2.0, freq=520.0)
    db = str(tmp_path / "lib.db")
    index_folder(db, tmp_path / "sounds", tiny_model_dir, beam=2, max_len=3, fast=True)
    captioned_work["captioned"] = 0  # the index run's

    def source(fast: bool, beam: int = 2) -> str:
        with Library.open(db) as library:
            model = ModelDir.read(tiny_model_dir)
            settings = ClassifySettings(beam=beam, max_len=3)
            c = Classifier(LABELS, settings, model_dir=model, library=library, device="cpu", fast=fast)
            return c.classify(path).source

    assert source(fast=False) == "decoded" and captioned_work["captioned"] == 1
    assert source(fast=True) == "index" and captioned_work["captioned"] == 1
    assert source(fast=True, beam=5) == "index"  # --fast decodes one beam, whatever --beam asks


def test_stored_audio_embeddings_serve_loglik_whatever_the_decoding_settings(beam_2_library, tiny_model_dir):
    """Likelihood scoring decodes nothing: the audio embeddings are the same whatever --beam the library had."""
    db, path = beam_2_library
    prediction = classifier(tiny_model_dir, db=db, method="loglik", beam=5, max_len=30).classify(path)
    assert prediction.source == "index"
