"""The one-call Python API (README, "From Python"): `Engine.describe`, `Engine.ask` and `Classifier` give a script
what `pengi-search describe`, `ask` and `classify` give for the same file, from a path or an array of samples."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from pengi_search.audio import load_audio
from pengi_search.audio_decoders import AudioDecodeError
from pengi_search.classify import Classifier
from pengi_search.cli import app
from pengi_search.db import Store
from pengi_search.decoding import GenerationConfig
from pengi_search.errors import UsageError
from pengi_search.inference import Engine
from pengi_search.library import Library
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir, ModelNotFoundError
from pengi_search.search import Filters, SearchScope, query_text
from pengi_search.serve.live import LiveLibrary
from pengi_search.testing import make_tiny_model_dir

from .indexing import write_tone
from .search_library import index_folder

runner = CliRunner()
QUICK = GenerationConfig(beam=2, max_len=4)
CLI_QUICK = ("--device", "cpu", "--beam", "2", "--max-len", "4", "--json")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """9.5 s at 22.05 kHz, stereo: two windows (the second covers the tail), resampled and mixed down to be heard."""
    sr = 22_050
    t = np.arange(int(sr * 9.5)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, len(t))
    path = tmp_path_factory.mktemp("clips") / "tone.wav"
    sf.write(path, np.stack([tone, noise], axis=1), sr)
    return path


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.load(tiny_model_dir, "cpu")


def cli_json(*args: object) -> object:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def as_json(described) -> list[dict]:
    return [window.to_json() for window in described]


def test_describe_gives_each_window_what_the_describe_command_gives(engine, tiny_model_dir, clip):
    [command] = cli_json("describe", clip, "--model", tiny_model_dir, *CLI_QUICK)
    described = engine.describe(clip, generation=QUICK)
    assert [(w.start_s, w.end_s) for w in described] == [(0.0, 7.0), (2.5, 9.5)]
    assert set(described[0].answers) == {"caption", "metadata", "sound_event"}  # the model's default tasks
    assert as_json(described) == command["windows"]


def test_describe_takes_the_commands_prompts_answer_prefix_and_hop(engine, tiny_model_dir, clip):
    options = ("-p", "this acoustic scene is", "-p", "this emotion is", "--answer-prefix", "a dog", "--hop", "3")
    [command] = cli_json("describe", clip, "--model", tiny_model_dir, *CLI_QUICK, *options)
    prompts = ["this acoustic scene is", "this emotion is"]  # a list: each answer named by its prompt
    described = engine.describe(clip, prompts, QUICK, answer_prefix="a dog", hop_s=3.0)
    assert as_json(described) == command["windows"]
    assert [w.start_s for w in described] == [0.0, 2.5]  # 3 s apart, the last one end-aligned
    named = engine.describe(clip, {"scene": "this acoustic scene is"}, QUICK)
    assert list(named[0].answers) == ["scene"]


def test_one_prompt_given_as_text_is_one_prompt_not_one_per_letter(engine, clip):
    """A string is a sequence of strings too: each of its letters was asked as a prompt of its own."""
    described = engine.describe(clip, "this acoustic scene is", QUICK)
    assert list(described[0].answers) == ["this acoustic scene is"]
    assert described == engine.describe(clip, ["this acoustic scene is"], QUICK)


def test_ask_gives_what_the_ask_command_gives(engine, tiny_model_dir, clip):
    command = cli_json("ask", clip, "is there a dog?", "--model", tiny_model_dir, *CLI_QUICK)
    assert as_json(engine.ask(clip, "is there a dog?", QUICK)) == command["windows"]


def test_samples_in_memory_are_heard_as_the_file_they_were_read_from(engine, clip):
    samples = load_audio(clip)  # mono float32 at 44.1 kHz
    assert engine.describe(samples, generation=QUICK) == engine.describe(clip, generation=QUICK)
    assert engine.ask(samples, "is there a dog?", QUICK) == engine.ask(clip, "is there a dog?", QUICK)


def test_a_clip_shorter_than_a_window_is_padded_as_a_file_is(engine, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, np.linspace(-0.5, 0.5, 44_100 * 2, dtype=np.float32), 44_100)
    [window] = engine.describe(load_audio(short), generation=QUICK)
    assert (window.start_s, window.end_s) == (0.0, 2.0)
    assert [window] == engine.describe(short, generation=QUICK)


@pytest.mark.parametrize(
    ("samples", "says"),
    [
        (np.zeros((44_100, 2), dtype=np.float32), r"expected mono audio.*: samples\.mean\(axis=1\)\)$"),
        (np.zeros((2, 44_100), dtype=np.float32), r"expected mono audio.*: samples\.mean\(axis=0\)\)$"),  # librosa's
        (np.zeros(0, dtype=np.float32), r"expected mono audio.*got shape \(0,\)$"),  # no channels to average
        (np.zeros(44_100, dtype=np.int16), "expected float samples"),
        (np.array([0.0, np.nan], dtype=np.float32), "non-finite samples"),
        (np.array([0.0, 0.5, 1e13], dtype=np.float32), r"samples out of range \(1e\+13 at 0\.00 s"),
    ],
)
def test_an_array_that_is_not_mono_float_audio_is_refused(engine, samples, says):
    with pytest.raises(ValueError, match=says):
        engine.describe(samples)


def test_a_file_that_cannot_be_decoded_raises_with_its_reason(engine, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....garbage")
    with pytest.raises(AudioDecodeError, match="broken.wav"):
        engine.describe(broken)


def test_a_file_cut_short_is_described_as_far_as_it_goes_with_a_warning(engine, tmp_path):
    cut = tmp_path / "cut.wav"
    sf.write(cut, np.zeros(44_100 * 3, dtype=np.float32), 44_100)
    cut.write_bytes(cut.read_bytes()[:44_100])  # the header still promises 3 s
    with pytest.warns(UserWarning, match=r"cut\.wav: truncated: header says 3\.00 s") as warned:
        [window] = engine.describe(cut, generation=QUICK)
    assert window.end_s < 1.0
    assert warned[0].filename == __file__  # the warning names the line that asked
    with pytest.warns(UserWarning, match=r"cut\.wav: truncated") as warned:
        engine.ask(cut, "is there a dog?", QUICK)
    assert warned[0].filename == __file__  # asked through `ask` too, not a line of the engine's


@pytest.mark.parametrize("device", ["gpu", "tpu:0", ""])
def test_a_device_torch_does_not_know_is_refused_as_the_command_refuses_it(tiny_model_dir, device):
    with pytest.raises(UsageError, match=f"--device {device}: not a device; use auto, cpu or cuda"):
        Engine.load(tiny_model_dir, device=device)


@pytest.mark.parametrize(
    ("gpus", "says"),
    [
        (2, "PyTorch sees 2 CUDA GPUs on this machine (cuda:0 to cuda:1)"),
        (1, "PyTorch sees 1 CUDA GPU on this machine (cuda:0)"),
    ],
)
def test_a_gpu_past_those_the_machine_has_is_refused_before_the_model_loads(tiny_model_dir, monkeypatch, gpus, says):
    """`cuda:5` with fewer GPUs said in one line, not CUDA's "invalid device ordinal" once the model moves there;
    the GPUs there are still taken."""
    from pengi_search.inference import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(UsageError, match=rf"--device cuda:5: {re.escape(says)}"):
        Engine.load(tiny_model_dir, device="cuda:5")
    with pytest.raises(UsageError, match=f"--device cuda:{gpus}: "):
        resolve_device(f"cuda:{gpus}")
    assert resolve_device(f"cuda:{gpus - 1}") == torch.device("cuda", gpus - 1)
    assert resolve_device("cuda") == torch.device("cuda")


def test_an_empty_question_or_no_prompt_is_refused(engine, clip):
    with pytest.raises(UsageError, match="the question is empty"):
        engine.ask(clip, "  ")
    with pytest.raises(ValueError, match="no prompts"):
        engine.describe(clip, [])


def test_a_trained_model_is_asked_by_default_what_it_learnt(tiny_model_dir, tmp_path):
    trained = Path(shutil.copytree(tiny_model_dir, tmp_path / "trained"))
    config = json.loads((trained / "config.json").read_text())
    (trained / "config.json").write_text(json.dumps({**config, "trained": {"tasks": ["sound_event", "caption"]}}))
    engine = Engine.load(trained, "cpu")
    assert engine.default_prompts() == {"caption": "generate audio caption", "sound_event": "this is a sound of"}
    bare = Engine(engine.model, engine.tok, engine.device)  # no model directory: the released model's tasks
    assert list(bare.default_prompts()) == ["caption", "metadata", "sound_event"]


def test_a_classifier_shares_the_engine_and_gives_what_classify_gives(engine, tiny_model_dir, clip, tmp_path):
    labels = ["a dog barks", "rain on a roof", "a bell rings"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    labels_file = tmp_path / "labels.txt"
    command = cli_json(
        "classify", clip, "--labels", labels_file, "--model", tiny_model_dir, "--device", "cpu", "--json"
    )
    classifier = Classifier(labels, engine=engine)  # the engine's model directory, the command's default settings
    assert classifier.model_dir is engine.model_dir
    assert classifier.classify(clip).to_json(5) == command["results"][0]


def test_a_classifier_names_its_model_as_the_command_does(engine, tiny_model_dir, monkeypatch):
    assert Classifier(["dog"], model_dir=str(tiny_model_dir)).model_dir.path == Path(tiny_model_dir)
    monkeypatch.setenv("PENGI_SEARCH_MODEL", str(tiny_model_dir))
    assert Classifier(["dog"]).model_dir.path == Path(tiny_model_dir)
    bare = Engine(Pengi.from_pretrained(ModelDir.read(tiny_model_dir)), engine.tok, engine.device)
    with pytest.raises(ValueError, match="give model_dir"):
        Classifier(["dog"], engine=bare)
    assert Classifier(["dog"], model_dir=tiny_model_dir, engine=bare).model_dir.path == Path(tiny_model_dir)


def test_a_classifier_refuses_an_engine_of_another_model_than_model_dir_names(engine, tiny_model_dir, tmp_path):
    """Labels are embedded by the text tower of `model_dir`'s model, captions written by the engine's: with two
    models they would be compared across models, silently. The same weights in another folder are the same model."""
    other = make_tiny_model_dir(tmp_path / "other", seed=1)  # the same name and shapes, other weights
    with pytest.raises(ValueError, match=r"the engine runs the model at .*tiny-base.*not the one model_dir names"):
        Classifier(["dog"], model_dir=other, engine=engine)
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    assert Classifier(["dog"], model_dir=copy, engine=engine).model_dir.path == copy
    assert Classifier(["dog"], model_dir=str(tiny_model_dir), engine=engine).model_dir.path == Path(tiny_model_dir)


@pytest.fixture()
def decoded_rows(monkeypatch) -> dict[str, list[int]]:
    """The prefix rows of each batch the engine decodes (beam search) and scores (candidates), as they are run."""
    from pengi_search import inference

    rows: dict[str, list[int]] = {"generated": [], "scored": []}

    def recording(run, kind):
        def recorded(gpt, prefix, *args, **kwargs):
            rows[kind].append(prefix.rows)
            return run(gpt, prefix, *args, **kwargs)

        return recorded

    monkeypatch.setattr(inference, "beam_search", recording(inference.beam_search, "generated"))
    monkeypatch.setattr(inference, "score_candidates", recording(inference.score_candidates, "scored"))
    return rows


@pytest.mark.parametrize(("batch_size", "rows"), [(2, [6, 6, 6, 6, 6, 3]), (None, [30, 3])])
def test_batch_size_counts_windows_each_decoded_with_every_prompt(tiny_model_dir, decoded_rows, batch_size, rows):
    """`Engine.load(batch_size=N)` is `--batch-size N`: N windows decoded together, each with every prompt (N x P
    rows); unset, as many whole windows as fill the device's 32 rows on the CPU (10 windows of 3 prompts)."""
    engine = Engine.load(tiny_model_dir, "cpu", batch_size)
    embeds = torch.randn(11, engine.model.cfg.d_proj, generator=torch.Generator().manual_seed(0))
    answers = engine.generate(embeds, ["this is a sound of", "generate audio caption", "this acoustic scene is"])
    assert len(answers) == 11 and all(len(row) == 3 for row in answers)
    assert decoded_rows["generated"] == rows


@pytest.mark.parametrize(("method", "rows"), [("text", {"generated": [3, 1]}), ("loglik", {"scored": [3, 1]})])
def test_classify_batch_size_counts_windows_as_describe_does(tiny_model_dir, tmp_path, decoded_rows, method, rows):
    """`classify --batch-size 3` on 4 windows: 3 windows, then 1, whichever way the labels are scored (a window's
    caption, or each label's likelihood); it was taken as (window, prompt) rows, 3 // 4 windows for loglik."""
    write_tone(tmp_path / "long.wav", 7.0 * 4)
    (tmp_path / "labels.txt").write_text("a dog barks\nrain\n")
    args = ("classify", tmp_path / "long.wav", "-l", tmp_path / "labels.txt", "--method", method, "--batch-size", 3)
    result = runner.invoke(app, [str(a) for a in (*args, "--model", tiny_model_dir, "--device", "cpu")])
    assert result.exit_code == 0, result.output
    assert {kind: batches for kind, batches in decoded_rows.items() if batches} == rows


def test_a_library_held_open_keeps_what_it_read_while_a_live_library_follows_the_index(tmp_path, tiny_model_dir):
    """README, "From Python": an `index` run after a `Library` was first searched adds files that it does not find;
    a `LiveLibrary`, as `serve` holds, finds them at its next search."""
    db = str(tmp_path / "index.db")
    write_tone(tmp_path / "first" / "a.wav", 2.0)
    index_folder(db, tmp_path / "first", tiny_model_dir)
    scope = SearchScope(k=10)
    with Library.open(db, read_only=True) as held, LiveLibrary(Store.open(db, read_only=True), check_s=0) as live:
        before = [hit.path for hit in query_text(held, "a bell", scope, model=str(tiny_model_dir))]
        assert [hit.path for hit in query_text(live, "a bell", scope, model=str(tiny_model_dir))] == before
        added = write_tone(tmp_path / "second" / "b.wav", 3.0, freq=880.0)
        index_folder(db, tmp_path / "second", tiny_model_dir)
        assert [hit.path for hit in query_text(held, "a bell", scope, model=str(tiny_model_dir))] == before
        found = {hit.path for hit in query_text(live, "a bell", scope, model=str(tiny_model_dir))}
        assert found == {*before, str(added)}


@pytest.mark.parametrize("given", [{"wav"}, {"WAV"}, (".wav",), "wav", "wav,flac"])
def test_a_script_s_extensions_filter_as_ext_does_with_or_without_the_dot(captions, tiny_model_dir, given):
    """`Filters(extensions={"wav"})`, as a script writes it, finds the .wav files `--ext wav` finds; kept as given,
    it was compared with names' ".wav" and found nothing, saying nothing."""
    wanted = {".wav", ".flac"} if "flac" in given else {".wav"}
    assert Filters(extensions=given).extensions == wanted
    with Library.open(captions.db, read_only=True) as library:
        scope = SearchScope(k=10, filters=Filters(extensions=given))
        found = {hit.path for hit in query_text(library, "a dog barks", scope, model=str(tiny_model_dir))}
    assert found == {str(path) for path in captions.files.values() if path.suffix in wanted}


def test_pengi_from_pretrained_of_a_model_not_installed_says_how_to_install_it():
    """`Pengi.from_pretrained("base")` before any fetch is said as `--model base` is, not as a checkpoint file."""
    with pytest.raises(
        ModelNotFoundError, match=r"no Pengi model base is installed: run `pengi-search model fetch base`"
    ):
        Pengi.from_pretrained("base")


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ("labels.txt", r"a list of labels, not one string \('labels.txt'"),  # letter by letter, it was 5 labels
        (["dog", "rain", "dog"], "label 'dog' is given twice"),
        (["dog", " "], "label 2 is blank"),
        ([], "no labels"),
    ],
)
def test_labels_a_labels_file_would_refuse_are_refused_by_the_classifier(tiny_model_dir, labels, says):
    """As `classify --labels` refuses such a file (a label twice would split a file's votes between its copies)."""
    with pytest.raises(ValueError, match=says):
        Classifier(labels, model_dir=tiny_model_dir, device="cpu")
