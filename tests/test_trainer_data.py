"""Trainer data side: task templates, manifests, converters, audio windows and failed-audio reporting."""

from __future__ import annotations

import csv
import json
import logging
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils import signal_handling

from pengi_search.prompts import DESCRIBE_TASKS, TASK_PROMPTS, describe_tasks
from trainer.data import (
    CLIP_SAMPLES,
    FREE_PROMPT,
    AudioTextDataset,
    Example,
    ManifestError,
    check_audio,
    collate_examples,
    convert_captions_csv,
    convert_labels_csv,
    convert_qa_csv,
    example_loader,
    fit_clip,
    manifest_path,
    read_manifest,
    task_mix,
)
from trainer.templates import TemplateError, render_answer, render_prompt

SMOKE_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "smoke" / "labels.csv"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def example(audio: Path, *, start: float | None = None, end: float | None = None, row: int = 1) -> Example:
    return Example(
        audio=audio, prompt="generate audio caption", answer="a dog", task="caption", start=start, end=end, row=row
    )


class FakeDecoder:
    """Stands in for the project's decoder: a fixed array per path, and a record of the calls."""

    def __init__(self, arrays: dict[Path, np.ndarray], fail: dict[Path, Exception] | None = None) -> None:
        self.arrays = arrays
        self.fail = fail or {}
        self.calls: list[tuple[Path, int]] = []

    def __call__(self, path: Path, *, sample_rate: int) -> np.ndarray:
        self.calls.append((path, sample_rate))
        if path in self.fail:
            raise self.fail[path]
        return self.arrays[path]


# --- Templates --------------------------------------------------------------------------------------------


def test_templates_render_the_shared_prompt_table() -> None:
    for task, prompt in TASK_PROMPTS.items():
        if task != "qa":
            assert render_prompt(task) == prompt
    assert render_prompt("sound_event") == "this is a sound of"  # the paper's wording (Table 1), as manifests expect
    assert render_prompt("qa", "  what is barking? ") == "question: what is barking?"


@pytest.mark.parametrize(
    ("trained", "asked"),
    [
        (None, DESCRIBE_TASKS),  # a released model: the reference's three
        (("sound_event", "caption"), ("caption", "sound_event")),  # the labels recipe's: never "generate metadata"
        (("acoustic_scene", "caption", "acoustic_scene"), ("caption", "acoustic_scene")),
        (("qa",), DESCRIBE_TASKS),  # no fixed prompt to ask: as a released model
    ],
)
def test_describe_asks_a_trained_model_the_tasks_it_learnt(trained, asked) -> None:
    assert describe_tasks(trained) == asked


@pytest.mark.parametrize(
    ("task", "question", "message"),
    [
        ("qa", None, "needs a question"),
        ("qa", "   ", "needs a question"),
        ("caption", "what is it?", "takes no question"),
        ("birdsong", None, "unknown task 'birdsong'; known tasks: caption, qa, sound_event"),
    ],
)
def test_render_prompt_rejects(task: str, question: str | None, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_prompt(task, question)


def test_render_answer_joins_sound_event_lists() -> None:
    assert render_answer("sound_event", ["dog", " rain "]) == "dog, rain"
    assert render_answer("sound_event", "dog, rain") == "dog, rain"
    assert render_answer("caption", "  a dog barks\n") == "a dog barks"
    assert render_answer(None, "free answer") == "free answer"


@pytest.mark.parametrize(
    ("task", "answer", "message"),
    [
        ("caption", ["a", "b"], "list answer is only accepted for task sound_event"),
        (None, ["a"], "list answer is only accepted"),
        ("caption", "  ", "empty answer"),
        ("sound_event", [], "empty answer"),
        ("sound_event", ["", " "], "empty answer"),
        ("sound_event", ["dog", ""], "empty label"),
        ("sound_event", ["dog", 3], "must be strings"),
    ],
)
def test_render_answer_rejects(task: str | None, answer: object, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_answer(task, answer)  # type: ignore[arg-type]


# --- Manifests ---------------------------------------------------------------------------------------------


def test_jsonl_manifest(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "rain.wav"
    manifest = write(
        tmp_path / "data" / "train.jsonl",
        jsonl(
            {"audio": "clips/dog.wav", "task": "sound_event", "answer": ["dog", "rain"], "start": 1.5, "end": 4},
            {"audio": str(elsewhere), "task": "qa", "question": "is it raining?", "answer": "yes", "start": None},
        )
        + "\n"  # a blank line is skipped but still counted in the line numbers
        + jsonl({"audio": "../up.flac", "prompt": "describe the room", "answer": "a small hall", "end": 2.0}),
    )
    dog, rain, up = read_manifest(manifest)
    data = (tmp_path / "data").resolve()
    # Example(audio, prompt, answer, task, start, end, row): one line per manifest row
    assert [dog, rain, up] == [
        Example(data / "clips" / "dog.wav", "this is a sound of", "dog, rain", "sound_event", 1.5, 4.0, 1),
        Example(elsewhere, "question: is it raining?", "yes", "qa", None, None, 2),
        Example(tmp_path.resolve() / "up.flac", "describe the room", "a small hall", None, None, 2.0, 4),
    ]
    assert task_mix([dog, rain, up, dog]) == {"sound_event": 2, "qa": 1, FREE_PROMPT: 1}


def test_csv_manifest(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "train.csv",
        "\ufeffaudio,task,prompt,question,answer,start,end\n"  # with the byte-order mark spreadsheets write
        "a.wav,sound_event,,,dog;rain ; wind,0.5,3\n"
        'sub/b.wav,qa,,"what, exactly, barks?",a dog,,\n'
        "/abs/c.wav,,how loud is it,,very loud,,10\n",
    )
    folder = tmp_path.resolve()
    # Example(audio, prompt, answer, task, start, end, row): one line per manifest row
    assert read_manifest(manifest) == [
        Example(folder / "a.wav", "this is a sound of", "dog, rain, wind", "sound_event", 0.5, 3.0, 1),
        Example(folder / "sub" / "b.wav", "question: what, exactly, barks?", "a dog", "qa", None, None, 2),
        Example(Path("/abs/c.wav"), "how loud is it", "very loud", None, None, 10.0, 3),
    ]


def test_csv_manifest_keeps_semicolons_outside_sound_events(tmp_path: Path) -> None:
    manifest = write(tmp_path / "m.csv", "audio,task,answer\na.wav,caption,rain; then thunder\n")
    assert read_manifest(manifest)[0].answer == "rain; then thunder"


GOOD_JSONL = jsonl({"audio": "a.wav", "task": "caption", "answer": "a dog barks"}) * 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"task": "caption", "answer": "x"}, "missing field 'audio'"),
        ({"audio": "  ", "task": "caption", "answer": "x"}, "missing field 'audio'"),
        ({"audio": "a.wav", "answer": "x"}, "missing field 'task'"),
        ({"audio": "a.wav", "task": "caption"}, "missing field 'answer'"),
        ({"audio": "a.wav", "task": "birdsong", "answer": "x"}, "unknown task 'birdsong'; known tasks: caption"),
        ({"audio": "a.wav", "task": "caption", "prompt": "p", "answer": "x"}, "not both"),
        ({"audio": "a.wav", "prompt": "p", "question": "q?", "answer": "x"}, "'question' needs task 'qa'"),
        ({"audio": "a.wav", "task": "qa", "answer": "yes"}, "task 'qa' needs a question"),
        ({"audio": "a.wav", "task": "caption", "question": "q?", "answer": "x"}, "takes no question"),
        ({"audio": "a.wav", "task": "caption", "answer": " "}, "empty answer"),
        ({"audio": "a.wav", "task": "caption", "answer": 3}, "'answer' must be text or a list"),
        ({"audio": "a.wav", "task": "caption", "answer": ["a", "b"]}, "list answer is only accepted"),
        ({"audio": "a.wav", "task": "sound_event", "answer": ["dog", ""]}, "empty label"),
        ({"audio": "a.wav", "task": "caption", "answer": "x", "start": 3, "end": 3}, r"start \(3.0 s\) must be"),
        ({"audio": "a.wav", "task": "caption", "answer": "x", "start": 5, "end": 2.5}, "must be before end"),
        ({"audio": "a.wav", "task": "caption", "answer": "x", "start": -1}, "non-negative"),
        ({"audio": "a.wav", "task": "caption", "answer": "x", "end": "soon"}, "'end' must be a number"),
        ({"audio": "a.wav", "task": "caption", "answer": "x", "end": True}, "'end' must be a number"),
        ({"audio": 7, "task": "caption", "answer": "x"}, "field 'audio' must be text"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    manifest = write(tmp_path / "m.jsonl", GOOD_JSONL + "\n" + jsonl(row) + GOOD_JSONL)
    with pytest.raises(ManifestError, match=message) as caught:
        read_manifest(manifest)
    assert caught.value.row == 4
    assert caught.value.path == manifest
    assert str(caught.value).startswith(f"{manifest}, row 4: ")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"audio": "a.wav", "task": "caption",', "bad JSON"),
        ('["a.wav", "caption", "x"]', "expected a JSON object, got list"),
    ],
)
def test_unparsable_jsonl_line(tmp_path: Path, line: str, message: str) -> None:
    manifest = write(tmp_path / "m.jsonl", GOOD_JSONL + line + "\n")
    with pytest.raises(ManifestError, match=message) as caught:
        read_manifest(manifest)
    assert caught.value.row == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (",caption,,,x,,", "missing field 'audio'"),
        ("a.wav,,,,x,,", "missing field 'task'"),
        ("a.wav,glass,,,x,,", "unknown task 'glass'"),
        ("a.wav,qa,,,yes,,", "needs a question"),
        ("a.wav,caption,,,,,", "empty answer"),
        ("a.wav,sound_event,,,dog;;rain,,", "empty label"),
        ("a.wav,caption,,,x,2,1", "must be before end"),
        ("a.wav,caption,,,x,one,", "'start' must be a number"),
        ("a.wav,caption,,,x,nan,", "finite"),
        ("a.wav,caption,,,x,,,extra", "more cells than the header's 7 columns"),
        ("a.wav,caption", "missing field 'answer'"),
    ],
)
def test_bad_csv_row_names_file_and_data_row(tmp_path: Path, row: str, message: str) -> None:
    header = "audio,task,prompt,question,answer,start,end\n"
    good = "a.wav,caption,,,a dog barks,,\n"
    manifest = write(tmp_path / "m.csv", header + good + row + "\n" + good)
    with pytest.raises(ManifestError, match=message) as caught:
        read_manifest(manifest)
    assert caught.value.row == 2
    assert str(caught.value).startswith(f"{manifest}, row 2: ")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.txt", "audio\n", "unknown manifest type '.txt'"),
        ("m.jsonl", "\n\n", "no examples"),
        ("m.csv", "audio,task,answer\n", "no examples"),
        ("m.csv", "", "missing column audio; the header has $"),
        ("m.csv", "file,task,answer\na.wav,caption,x\n", "missing column audio; the header has file, task"),
    ],
)
def test_bad_manifest_file(tmp_path: Path, name: str, content: str, message: str) -> None:
    manifest = write(tmp_path / name, content)
    with pytest.raises(ManifestError, match=message) as caught:
        read_manifest(manifest)
    assert caught.value.row is None
    assert caught.value.path == manifest


def test_unreadable_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file$"):  # as every command says it (was "No such file or ...")
        read_manifest(tmp_path / "absent.jsonl")
    with pytest.raises(ManifestError, match="a folder, not a file$"):
        read_manifest(write(tmp_path / "folder.jsonl" / "m.jsonl", GOOD_JSONL).parent)
    latin1 = write(tmp_path / "m.csv", "audio,task,answer\nç.wav,caption,x\n", encoding="latin-1")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(latin1)


# --- Converters --------------------------------------------------------------------------------------------


def test_convert_labels_csv(tmp_path: Path) -> None:
    src = write(
        tmp_path / "source" / "meta.csv",
        "file,labels,fold\nclips/a.wav,dog_bark;rain,1\nclips/b.wav, car_horn ,2\n",
    )
    dest = tmp_path / "source" / "manifests" / "events.jsonl"
    examples = convert_labels_csv(src, dest, audio_column="file", label_column="labels")
    clips = (tmp_path / "source" / "clips").resolve()
    assert [(e.audio, e.prompt, e.answer, e.task, e.row) for e in examples] == [
        (clips / "a.wav", "this is a sound of", "dog bark, rain", "sound_event", 1),
        (clips / "b.wav", "this is a sound of", "car horn", "sound_event", 2),
    ]
    assert read_manifest(dest) == examples
    # The audio lies beside the manifest's folder: named relative to it, so `source` can move with both inside.
    assert json.loads(dest.read_text().splitlines()[0]) == {
        "audio": "../clips/a.wav",
        "task": "sound_event",
        "answer": ["dog bark", "rain"],
    }
    moved = tmp_path / "elsewhere" / "source"
    moved.parent.mkdir()
    (tmp_path / "source").rename(moved)
    assert [e.audio for e in read_manifest(moved / "manifests" / "events.jsonl")] == [
        moved.resolve() / "clips" / "a.wav",
        moved.resolve() / "clips" / "b.wav",
    ]


@pytest.mark.parametrize(
    ("audio", "written"),
    [
        ("/home/me/runs/labels/clips/a.wav", "clips/a.wav"),  # under the manifest's folder
        ("/home/me/data/a.wav", "../../data/a.wav"),  # beside it, in /home/me: they move together
        ("/mnt/sounds/a.wav", "/mnt/sounds/a.wav"),  # they share only the root: nothing moves them together
    ],
)
def test_a_manifest_names_its_audio_relative_to_itself_below_a_shared_folder(audio: str, written: str) -> None:
    assert manifest_path(Path(audio), Path("/home/me/runs/labels")) == written


def test_convert_labels_csv_other_tasks_and_options(tmp_path: Path) -> None:
    src = write(tmp_path / "scenes.csv", "filename,label\nx.wav,metro_station;busy\n")
    dest = tmp_path / "scenes.jsonl"
    [scene] = convert_labels_csv(src, dest, task="acoustic_scene", underscores_to_spaces=False)
    assert (scene.prompt, scene.answer) == ("this acoustic scene is", "metro_station;busy")
    # Audio under the manifest's folder is written relative to it.
    assert json.loads(dest.read_text())["audio"] == "x.wav"
    with pytest.raises(TemplateError, match="unknown task 'scene'; known tasks"):
        convert_labels_csv(src, dest, task="scene")
    with pytest.raises(TemplateError, match="needs a question"):
        convert_labels_csv(src, dest, task="qa")


def test_a_csv_whose_quote_is_not_closed_is_refused_at_its_line_instead_of_taking_in_the_rows_after_it(
    tmp_path: Path,
) -> None:
    """Read as it was, the answer `"a cow moos` took the next rows into it: a manifest (or a converted CSV) trained
    on fewer clips, one of them with an answer of several lines, without a word."""
    text = 'filename,caption\ncat.wav,a cat\ncow.wav,"a cow moos\ndog.wav,dogs\npig.wav,a pig\n'
    message = "line 3: a quoted value is not closed, and runs on to line 5, taking in the rows between"
    with pytest.raises(ManifestError, match=message):
        convert_captions_csv(write(tmp_path / "captions.csv", text), tmp_path / "m.jsonl")
    rows = ["task,audio,answer", "caption,cat.wav,a cat", 'caption,cow.wav,"a cow moos', "caption,dog.wav,dogs"]
    manifest = write(tmp_path / "m.csv", "\n".join([*rows, "caption,pig.wav,a pig\n"]))
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


def test_convert_captions_and_qa_csv(tmp_path: Path) -> None:
    src = write(
        tmp_path / "qa.csv",
        'file,caption,q,a\none.wav,"a dog barks, then stops",is there a dog?,yes\n',
    )
    [caption] = convert_captions_csv(src, tmp_path / "c.jsonl", audio_column="file")
    assert (caption.prompt, caption.answer, caption.task) == (
        "generate audio caption",
        "a dog barks, then stops",
        "caption",
    )
    [qa] = convert_qa_csv(src, tmp_path / "q.jsonl", audio_column="file", question_column="q", answer_column="a")
    assert (qa.prompt, qa.answer, qa.task) == ("question: is there a dog?", "yes", "qa")
    assert read_manifest(tmp_path / "q.jsonl") == [qa]


def test_converters_and_manifests_read_a_file_name_as_written_where_that_file_exists_else_trimmed(
    tmp_path: Path,
) -> None:
    """The rule of every CSV the command line reads (`text_files.listed_file`): a name's spaces are its own when a
    file is so named (` intro.wav`), else a spreadsheet's padding (`outro.wav `, for `outro.wav`)."""
    for name in (" intro.wav", "outro.wav"):
        (tmp_path / name).write_bytes(b"")
    src = write(tmp_path / "captions.csv", 'filename,caption\n" intro.wav",a bell\n"outro.wav ",a gong\n')
    examples = convert_captions_csv(src, tmp_path / "captions.jsonl")
    assert [e.audio for e in examples] == [tmp_path.resolve() / " intro.wav", tmp_path.resolve() / "outro.wav"]
    assert read_manifest(tmp_path / "captions.jsonl") == examples


@pytest.mark.parametrize(
    ("content", "row", "message"),
    [
        ("filename,label\na.wav,dog\nb.wav,\n", 2, "empty answer"),
        ("filename,label\na.wav,dog\n,cat\n", 2, "missing field 'audio'"),
        ("filename,labels\na.wav,dog\n", None, "missing column label;"),
        ("file,labels\na.wav,dog\n", None, "missing columns filename, label;"),
        ("filename,label\n", None, "no examples"),
    ],
)
def test_convert_bad_source_names_it(tmp_path: Path, content: str, row: int | None, message: str) -> None:
    src = write(tmp_path / "labels.csv", content)
    dest = tmp_path / "out.jsonl"
    with pytest.raises(ManifestError, match=message) as caught:
        convert_labels_csv(src, dest)
    assert (caught.value.path, caught.value.row) == (src, row)
    assert not dest.exists()


def test_convert_needs_jsonl_destination(tmp_path: Path) -> None:
    src = write(tmp_path / "labels.csv", "filename,label\na.wav,dog\n")
    with pytest.raises(ManifestError, match=r"name the destination \*.jsonl"):
        convert_labels_csv(src, tmp_path / "out.csv")


def test_convert_smoke_labels(tmp_path: Path) -> None:
    with SMOKE_LABELS.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 36
    audio = [(SMOKE_LABELS.parent / row["filename"]).resolve() for row in rows]

    events = convert_labels_csv(SMOKE_LABELS, tmp_path / "events.jsonl")
    assert [e.audio for e in events] == audio
    assert all(path.is_file() for path in audio)
    assert [e.answer for e in events] == [row["label"].replace("_", " ") for row in rows]
    assert task_mix(events) == {"sound_event": 36}
    assert read_manifest(tmp_path / "events.jsonl") == events

    captions = convert_captions_csv(SMOKE_LABELS, tmp_path / "captions.jsonl")
    assert [(e.audio, e.answer) for e in captions] == [
        (path, row["caption"]) for path, row in zip(audio, rows, strict=True)
    ]
    assert {e.prompt for e in captions} == {"generate audio caption"}
    assert read_manifest(tmp_path / "captions.jsonl") == captions


# --- Audio windows ----------------------------------------------------------------------------------------


def ramp(samples: int) -> np.ndarray:
    """Audio whose every sample tells its own position."""
    return np.arange(samples, dtype=np.float32)


def test_fit_clip_pads_by_repeating() -> None:
    np.testing.assert_array_equal(fit_clip(np.array([1, 2, 3], np.float32), 8), [1, 2, 3, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(fit_clip(ramp(10), 4, offset=5), [5, 6, 7, 8])


def test_train_windows_are_seeded_by_seed_epoch_and_index(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.wav" for i in range(3)]
    decoder = FakeDecoder({path: ramp(5_000) for path in paths})
    examples = [example(path) for path in paths]

    def windows(seed: int, epoch: int) -> list[int]:
        dataset = AudioTextDataset(
            examples, train=True, seed=seed, load_audio=decoder, sample_rate=100, clip_samples=200
        )
        dataset.set_epoch(epoch)
        starts = []
        for index in range(len(dataset)):
            clip = dataset[index]["audio"].numpy()
            assert clip.dtype == np.float32 and clip.shape == (200,)
            np.testing.assert_array_equal(clip, ramp(5_000)[int(clip[0]) : int(clip[0]) + 200])
            starts.append(int(clip[0]))
        return starts

    first = windows(seed=7, epoch=3)
    assert windows(seed=7, epoch=3) == first  # a resumed run, with a fresh dataset, sees the same windows
    assert len(set(first)) == 3  # each index draws its own window
    assert any(windows(seed=7, epoch=epoch) != first for epoch in (4, 5, 6))
    assert any(windows(seed=seed, epoch=3) != first for seed in (8, 9, 10))
    assert all(call == (paths[i % 3], 100) for i, call in enumerate(decoder.calls))


def test_train_windows_cover_the_clip(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    dataset = AudioTextDataset(
        [example(path)], train=True, seed=0, load_audio=FakeDecoder({path: ramp(12)}), clip_samples=10
    )
    starts = set()
    for epoch in range(60):
        dataset.set_epoch(epoch)
        starts.add(int(dataset[0]["audio"][0]))
    assert starts == {0, 1, 2}  # every window that fits, and none past the end


def test_eval_window_is_the_start(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    dataset = AudioTextDataset(
        [example(path)], train=False, seed=1, load_audio=FakeDecoder({path: ramp(900)}), clip_samples=300
    )
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        np.testing.assert_array_equal(dataset[0]["audio"].numpy(), ramp(300))


def test_segment_windows(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    decoder = FakeDecoder({path: ramp(1_000)})
    segment = example(path, start=2.0, end=5.0)  # samples 200..499 at 100 Hz
    evaluation = AudioTextDataset([segment], train=False, seed=0, load_audio=decoder, sample_rate=100, clip_samples=100)
    np.testing.assert_array_equal(evaluation[0]["audio"].numpy(), ramp(300)[200:])
    training = AudioTextDataset([segment], train=True, seed=0, load_audio=decoder, sample_rate=100, clip_samples=100)
    for epoch in range(20):
        training.set_epoch(epoch)
        first = int(training[0]["audio"][0])
        assert 200 <= first <= 400
    # A segment shorter than the clip is padded by repeating the segment alone, in training too.
    short = example(path, start=1.0, end=1.3)
    padded = AudioTextDataset([short], train=True, seed=0, load_audio=decoder, sample_rate=100, clip_samples=70)
    np.testing.assert_array_equal(padded[0]["audio"].numpy(), np.tile(ramp(130)[100:], 3)[:70])


def test_default_clip_is_seven_seconds_at_44k(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    audio = np.linspace(-1, 1, 3 * 44_100, dtype=np.float64)  # 3 s, and not float32: the dataset converts
    dataset = AudioTextDataset([example(path)], train=True, seed=0, load_audio=FakeDecoder({path: audio}))
    item = dataset[0]
    assert CLIP_SAMPLES == 308_700
    assert item["audio"].dtype == torch.float32 and item["audio"].shape == (308_700,)
    np.testing.assert_array_equal(item["audio"].numpy(), np.tile(audio.astype(np.float32), 3)[:308_700])
    assert (item["prompt"], item["answer"], item["index"]) == ("generate audio caption", "a dog", 0)


def test_bad_seed_or_epoch() -> None:
    with pytest.raises(ValueError, match="seed"):
        AudioTextDataset([], train=True, seed=-1, load_audio=FakeDecoder({}))
    dataset = AudioTextDataset([], train=True, seed=0, load_audio=FakeDecoder({}))
    with pytest.raises(ValueError, match="epoch"):
        dataset.set_epoch(-2)


# --- Missing and broken audio ---------------------------------------------------------------------------


def test_check_audio_reports_each_problem(tmp_path: Path) -> None:
    names = ["good", "missing", "broken", "empty", "stereo", "nan", "late", "good_segment"]
    paths = {name: tmp_path / f"{name}.wav" for name in names}
    for name, path in paths.items():
        if name != "missing":
            path.touch()
    decoder = FakeDecoder(
        {
            paths["good"]: ramp(100),
            paths["empty"]: np.zeros(0, np.float32),
            paths["stereo"]: np.zeros((2, 100), np.float32),
            paths["nan"]: np.array([0.0, np.nan], np.float32),
            paths["late"]: ramp(100),
            paths["good_segment"]: ramp(100),
        },
        fail={paths["broken"]: RuntimeError("invalid data found when processing input")},
    )
    examples = [example(path, row=row) for row, path in enumerate(paths.values(), start=1)]
    examples[6] = example(paths["late"], start=2.0, row=7)  # starts after the audio's 1 s
    examples[7] = example(paths["good_segment"], start=0.5, end=3.0, row=8)

    usable, problems = check_audio(examples, decoder, sample_rate=100)

    assert usable == [examples[0], examples[7]]
    reasons = {e.audio.stem: reason for e, reason in problems}
    assert reasons == {
        "missing": "file not found",
        "broken": "RuntimeError: invalid data found when processing input",
        # The report's line names the file already: our own errors give their reason alone (was
        # "AudioClipError: <path>: no samples" after the path), anything else its type and message.
        "empty": "no samples",
        "stereo": "expected mono audio, got an array of shape (2, 100)",
        "nan": "NaN or infinite samples",
        "late": "segment starts at 2.0 s; the audio lasts 1.00 s",
    }
    assert paths["missing"] not in [path for path, _ in decoder.calls]


def test_a_file_that_does_not_decode_is_reported_once_by_name(tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    _, [(_, reason)] = check_audio([example(broken)])  # the project's decoder
    # Shown after "row 1: <path>:" (dry run) or "skipped <path>:" (training): no second path, no class name.
    assert reason == "not a readable audio file (unknown format or corrupt data)"
    dataset = AudioTextDataset([example(broken)], train=False, seed=0, clip_samples=40)
    assert dataset[0]["error"] == reason


def test_a_missing_clip_is_reported_in_training_in_the_dry_runs_words(tmp_path: Path) -> None:
    gone = tmp_path / "gone.wav"
    _, [(_, reason)] = check_audio([example(gone)])
    dataset = AudioTextDataset([example(gone)], train=False, seed=0, clip_samples=40)
    assert dataset[0]["error"] == reason == "file not found"  # was "cannot read file: No such file or directory"


def test_failed_audio_is_skipped_and_counted_in_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    bad.write_bytes(b"")  # there, but the decoder fails on it
    decoder = FakeDecoder({good: ramp(50)}, fail={bad: OSError("cannot open")})
    examples = [example(good, row=1), example(bad, row=2), example(good, row=3), example(bad, row=4)]
    dataset = AudioTextDataset(examples, train=False, seed=0, load_audio=decoder, clip_samples=40)

    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        batches = list(DataLoader(dataset, batch_size=2, collate_fn=collate_examples))

    assert [len(batch["prompt"]) for batch in batches] == [1, 1]
    assert all(batch["audio"].shape == (1, 40) for batch in batches)
    assert [batch["index"] for batch in batches] == [[0], [2]]
    assert [batch["skipped"] for batch in batches] == [[(1, "OSError: cannot open")], [(3, "OSError: cannot open")]]
    assert sum(len(batch["skipped"]) for batch in batches) == 2
    # The batch carries the reason to the run, which says each clip once; the dataset (perhaps in a DataLoader
    # worker, any process, any epoch) logged every row it failed on.
    assert caplog.records == []


def test_collate_stacks_and_handles_an_all_failed_batch(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    dataset = AudioTextDataset(
        [example(path), example(path)], train=False, seed=0, load_audio=FakeDecoder({path: ramp(30)}), clip_samples=20
    )
    batch = collate_examples([dataset[0], dataset[1]])
    assert batch["audio"].shape == (2, 20)
    assert batch["prompt"] == ["generate audio caption"] * 2 and batch["answer"] == ["a dog"] * 2
    assert batch["skipped"] == []

    empty = collate_examples([{"index": 4, "error": "OSError: gone"}])
    assert empty["audio"].shape == (0, 0)
    assert (empty["prompt"], empty["answer"], empty["index"]) == ([], [], [])
    assert empty["skipped"] == [(4, "OSError: gone")]


def test_a_stop_signal_that_reaches_a_loader_worker_as_it_starts_is_left_to_the_run(monkeypatch) -> None:
    """A new worker first gets PyTorch's own SIGTERM handler, which ends it, and only then ignores the stop signals
    (`example_loader`): a group-wide stop in between still ended it. Workers are now born with the signals blocked,
    and drop those that came meanwhile."""
    set_handlers = signal_handling._set_worker_signal_handlers

    def then_stopped() -> None:  # in the new worker, just before it could ignore the stop signals
        set_handlers()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.raise_signal(number)

    monkeypatch.setattr(signal_handling, "_set_worker_signal_handlers", then_stopped)
    paths = [Path(f"clip-{n}.wav") for n in range(4)]
    decoder = FakeDecoder({path: np.ones(40, dtype=np.float32) for path in paths})
    dataset = AudioTextDataset([example(path) for path in paths], train=False, seed=0, load_audio=decoder)
    batches = list(example_loader(dataset, 2, range(len(paths)), num_workers=2))  # a worker ended fails it
    assert sorted(index for batch in batches for index in batch["index"]) == [0, 1, 2, 3]
