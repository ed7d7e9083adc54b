"""Text -> audio and audio -> audio search: the numpy text tower, ranking, grouping, filters and model checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pengi_search import similar as similar_module
from pengi_search import text_query
from pengi_search.bpe_tokenizer import TokenizerFileError
from pengi_search.checkpoint import CheckpointError
from pengi_search.choices import By
from pengi_search.db import EmbedderInfo, StoredAudio, StoreMismatchError, TextRecord, WindowInput
from pengi_search.embedders import (
    PENGI_TOWER_LIMIT,
    CutText,
    EmbedderSpec,
    PengiTextEmbedder,
    SentenceTransformerEmbedder,
    TextEmbedderError,
)
from pengi_search.errors import EXIT_FAILED, OptionError, PengiSearchError
from pengi_search.inference import Engine
from pengi_search.library import EmptyLibraryError, Library
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir
from pengi_search.query_embedders import query_embedder
from pengi_search.search import SearchScope, query_text, search_index
from pengi_search.search_filters import Filters
from pengi_search.similar import similar_to_file, similar_to_files
from pengi_search.stored import stored_windows
from pengi_search.testing import clip_like_tokenizer, make_tiny_model_dir, tiny_config, tiny_gpt2_tokenizer
from pengi_search.text_query import NumpyTextEmbedder, blas_threads, mapped_tensors
from pengi_search.tokenization import TOKENIZER_DIR

from .indexing import make_tiny_sentence_transformer, write_tone
from .search_library import CAPTION, index_folder, model_info

CPU = torch.device("cpu")
TEXTS = [
    "a dog barks",
    "Rain   on a ROOF, then thunder!",
    "",
    "naïve café: 42 bells",
    "water " * 120,  # longer than CLIP's 77 tokens: truncated the same way
]


@pytest.fixture()
def library(captions):
    with Library.open(captions.db) as lib:
        yield lib


# -- the numpy text tower ----------------------------------------------------------------------------------------


def test_numpy_text_tower_equals_the_torch_embedder(tiny_model_dir):
    model_dir = ModelDir.read(tiny_model_dir)
    fast = NumpyTextEmbedder.from_model_dir(model_dir)
    reference = PengiTextEmbedder.from_model_dir(model_dir, CPU)
    assert fast.id == reference.id and fast.dim == reference.dim
    batched = fast.embed(TEXTS)
    np.testing.assert_allclose(batched, reference.embed(TEXTS), atol=1e-5, rtol=0)
    one_by_one = np.concatenate([fast.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6, rtol=0)  # padding never changes a text's vector
    assert batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)


def test_every_text_embedder_names_the_texts_it_cuts_with_their_length_and_its_limit(tiny_model_dir, tmp_path):
    """A text is read up to the embedder's limit, its markers included: CLIP's 77 positions (both towers count
    alike) and a sentence-transformers model's max_seq_length (32 here). One token over is cut (it embeds as the
    text at the limit does); at the limit, nothing is."""
    model_dir = ModelDir.read(tiny_model_dir)
    towers = [NumpyTextEmbedder.from_model_dir(model_dir), PengiTextEmbedder.from_model_dir(model_dir, CPU)]
    clip = towers[1].clip
    by_length = {len(clip(text)["input_ids"]): text for text in (" ".join(["rain"] * n) for n in range(60, 90))}
    at_limit, over, longest = by_length[77], by_length[78], TEXTS[-1]
    for tower in towers:
        assert tower.cut_texts(["a dog barks", at_limit, over, longest, over]) == [
            CutText(over, 78, 77, PENGI_TOWER_LIMIT),
            CutText(longest, len(clip(longest)["input_ids"]), 77, PENGI_TOWER_LIMIT),
        ]
        np.testing.assert_allclose(tower.embed([over]), tower.embed([at_limit]), atol=1e-6, rtol=0)
    st = SentenceTransformerEmbedder(str(make_tiny_sentence_transformer(tmp_path / "st")), CPU)
    at_limit, over = "dog " * 30, "dog " * 31  # a token a word, and the two markers
    assert st.cut_texts(["a dog", at_limit, over]) == [CutText(over, 33, 32, f"the max_seq_length of {st.id}")]
    np.testing.assert_allclose(st.embed([over]), st.embed([at_limit]), atol=1e-6, rtol=0)


def test_numpy_text_tower_with_transformers_clip_tokenizer(tmp_path):
    """The CLIPTokenizer class that real models are saved with: its tokenizer.json tokenises identically."""
    clip = clip_like_tokenizer()
    torch.manual_seed(3)
    model = Pengi(tiny_config(clip=clip, gpt2=tiny_gpt2_tokenizer()))
    directory = model.save_pretrained(tmp_path / "clip-like", extra={"name": "clip-like"})
    clip.save_pretrained(directory / TOKENIZER_DIR / "clip")
    model_dir = ModelDir.read(directory)
    fast = NumpyTextEmbedder.from_model_dir(model_dir)
    for text in TEXTS:
        assert fast.tokenizer.encode(text).ids == clip(text, truncation=True, max_length=77)["input_ids"]
    reference = PengiTextEmbedder(model.caption_encoder, clip, model_dir.identity, CPU)
    np.testing.assert_allclose(fast.embed(TEXTS), reference.embed(TEXTS), atol=1e-5, rtol=0)


def test_numpy_text_tower_stops_at_the_first_end_token(tiny_model_dir):
    """Tokens after the pooled end-of-text token are never run (causal layers): the vectors still equal torch's,
    which runs them all."""
    model_dir = ModelDir.read(tiny_model_dir)
    fast = NumpyTextEmbedder.from_model_dir(model_dir)
    eos = fast.cfg.eos_token_id
    texts = ["a dog<|endoftext|> then many more words after the end", "a dog", "rain<|endoftext|><|endoftext|>"]
    assert fast.tokenizer.encode(texts[0]).ids.count(eos) == 2  # the one typed and the one appended
    reference = PengiTextEmbedder.from_model_dir(model_dir, CPU).embed(texts)
    vectors = fast.embed(texts)
    np.testing.assert_allclose(vectors, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6, rtol=0)


class _OneCountBlas:
    """A BLAS whose thread count is one for the whole process (OpenBLAS's pthreads build), behind threadpoolctl's
    `limit`: a limiter records the count it finds and sets its own, and restores what it found."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def limit(self, *, limits: int | None, user_api: str) -> _OneCountLimiter:
        assert user_api == "blas"
        return _OneCountLimiter(self, limits)


class _OneCountLimiter:
    def __init__(self, blas: _OneCountBlas, limit: int | None) -> None:
        self.blas, self.found = blas, blas.threads
        if limit is not None:
            blas.threads = limit

    def __enter__(self) -> _OneCountLimiter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.restore_original_limits()

    def restore_original_limits(self) -> None:
        self.blas.threads = self.found


def test_blas_limits_overlapping_in_two_threads_hold_until_both_end_then_the_count_found_comes_back(monkeypatch):
    """Two text embeddings at once (`serve`'s threads) each limited BLAS, whose thread count is one for the whole
    process, and restored the count it had found: the first out lifted the limit while the second still ran, and
    the second then restored the first's limit of one thread, for every later product of the process."""
    blas = _OneCountBlas(threads=4)
    monkeypatch.setattr(text_query, "_blas_controller", lambda: blas)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    inside: list[int] = []

    def first() -> None:
        with blas_threads(1):
            first_in.set()
            assert second_in.wait(30)
        first_out.set()

    def second() -> None:
        assert first_in.wait(30)
        with blas_threads(1):
            second_in.set()
            assert first_out.wait(30)
            inside.append(blas.threads)  # the first has left: this block's limit still holds

    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert inside == [1] and blas.threads == 4


def test_blas_limits_left_out_of_order_restore_a_real_blas_to_the_count_found():
    """The same with the BLAS numpy runs on, the blocks entered and left in one thread in the order above."""
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    if not blas.lib_controllers:
        pytest.skip("no BLAS library that threadpoolctl controls")
    with blas.limit(limits=3), contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        first.enter_context(blas_threads(1))
        second.enter_context(blas_threads(1))
        first.close()
        assert min(library["num_threads"] for library in blas.info()) == 1
        second.close()
        assert min(library["num_threads"] for library in blas.info()) == 3


def test_numpy_text_tower_names_a_broken_tokenizer_file(tiny_model_dir, tmp_path):
    """One of the errors a user reads (`where`: the file; the CLI's one line and exit code 1)."""
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    broken = copy / TOKENIZER_DIR / "clip" / "tokenizer.json"
    broken.write_text("{ not json")
    with pytest.raises(TokenizerFileError, match=r"clip.tokenizer\.json") as failure:
        NumpyTextEmbedder.from_model_dir(ModelDir.read(copy))
    assert isinstance(failure.value, PengiSearchError) and failure.value.exit_code == EXIT_FAILED
    assert failure.value.where == str(broken) and str(failure.value).startswith(f"{broken}: ")


def test_mapped_tensors_reads_every_float_type(tmp_path):
    from safetensors.torch import save_file

    tensors = {
        "caption_encoder.a": torch.randn(3, 4),
        "caption_encoder.b": torch.randn(5).half(),
        "caption_encoder.c": torch.randn(2, 2).bfloat16(),
        "other.d": torch.randn(2),
    }
    save_file(tensors, tmp_path / "w.safetensors")
    mapped = mapped_tensors(tmp_path / "w.safetensors", "caption_encoder.")
    assert set(mapped) == {"a", "b", "c"}
    for name, array in mapped.items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, tensors[f"caption_encoder.{name}"].float().numpy())
    save_file({"caption_encoder.i": torch.arange(3)}, tmp_path / "ints.safetensors")
    with pytest.raises(CheckpointError, match="dtype I64"):
        mapped_tensors(tmp_path / "ints.safetensors", "caption_encoder.")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        mapped_tensors(tmp_path / "bad.safetensors", "caption_encoder.")


def test_one_embedder_spec_names_what_the_store_records(tiny_model_dir, tiny_no_text_model_dir):
    assert EmbedderSpec.parse(None) == EmbedderSpec.parse("pengi") == EmbedderSpec()
    st = EmbedderSpec.parse("sentence-transformers:/models/mini")
    assert st.sentence_transformer == "/models/mini" and str(st) == "sentence-transformers:/models/mini"
    model_dir = ModelDir.read(tiny_model_dir)
    assert EmbedderSpec().embedder_id(model_dir) == model_dir.text_embedder_id == f"pengi-text:{model_dir.identity}"
    for spec in (EmbedderSpec(), st):
        assert EmbedderSpec.of_embedder_id(spec.embedder_id(model_dir)) == spec
    assert EmbedderSpec.of_embedder_id("clap:x") is None
    for bad in ("bogus", "sentence-transformers:"):
        with pytest.raises(TextEmbedderError, match="use 'pengi' or 'sentence-transformers:NAME'"):
            EmbedderSpec.parse(bad)
    with pytest.raises(TextEmbedderError, match="no text encoder"):
        EmbedderSpec().embedder_id(ModelDir.read(tiny_no_text_model_dir))


# -- text -> audio -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "span"),
    [
        ("a dog barks", "animals/dog.wav", (0.0, 3.0)),
        ("rain on a roof", "weather/rain.flac", (0.0, 7.0)),
        ("thunder rolls in the distance", "weather/rain.flac", (3.0, 10.0)),
        ("a cat meows", "animals/cat.flac", (0.0, 5.0)),
    ],
)
def test_query_with_a_caption_finds_its_window_first(library, captions, tiny_model_dir, text, name, span):
    hits = query_text(library, text, SearchScope(10), model=str(tiny_model_dir))
    assert hits[0].path == str(captions.files[name])
    assert (hits[0].start_s, hits[0].end_s) == span
    assert hits[0].caption == text and hits[0].texts[CAPTION] == text
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.score < 1.0 - 1e-4 for h in hits[1:])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.path for h in hits}) == len(hits) == len(captions.files)  # one result per file


def test_query_by_window_returns_every_window(library, captions, tiny_model_dir):
    hits = query_text(library, "thunder rolls in the distance", SearchScope(10, By.window), model=str(tiny_model_dir))
    assert len(hits) == 5  # all windows of the library
    rain = [h for h in hits if h.path == str(captions.files["weather/rain.flac"])]
    assert [(h.start_s, h.end_s) for h in rain] == [(3.0, 10.0), (0.0, 7.0)]
    assert len({h.window_id for h in hits}) == 5


def test_query_limit(library, tiny_model_dir):
    assert len(query_text(library, "a dog barks", SearchScope(2), model=str(tiny_model_dir))) == 2


def test_filters_by_extension_folder_duration_and_score(library, captions, tiny_model_dir, monkeypatch):
    files = captions.files

    def paths(**options):
        hits = query_text(
            library, "a dog barks", SearchScope(filters=Filters.from_options(**options)), model=str(tiny_model_dir)
        )
        return {h.path for h in hits}

    def named(*names):
        return {str(files[n]) for n in names}

    assert paths(ext="flac") == named("weather/rain.flac", "animals/cat.flac")
    assert paths(ext=".WAV, flac") == named(*files)
    assert paths(path="*/animals/*") == named("animals/dog.wav", "animals/cat.flac")
    assert paths(path=str(captions.root / "weather") + "/*") == named("weather/rain.flac")
    monkeypatch.chdir(captions.root)
    assert paths(path="animals/*.wav") == named("animals/dog.wav")  # relative to the current folder
    assert paths(min_duration=4.0) == named("weather/rain.flac", "animals/cat.flac")
    assert paths(max_duration=3.0) == named("animals/dog.wav", "bell.wav")
    assert paths(min_duration=4.0, max_duration=6.0, ext="flac") == named("animals/cat.flac")
    assert paths(min_score=0.9999) == named("animals/dog.wav")
    assert paths(path="*/nowhere/*") == set()


def test_bad_extension_filter():
    with pytest.raises(ValueError, match="names no extension"):
        Filters.from_options(ext=" , ")


@pytest.mark.parametrize(
    ("options", "option", "cli", "api"),
    [
        ({"ext": ","}, "ext", "--ext ',' names no extension", "',' names no extension"),
        ({"ext": "*.mp3"}, "ext", "--ext '*.mp3' is no extension (write names", "'*.mp3' is no extension (write"),
        ({"ext": "wav,mp3 flac"}, "ext", "--ext 'mp3 flac' is no extension", "'mp3 flac' is no extension"),
        ({"min_score": float("nan")}, "min_score", "--min-score nan is not a finite number", "nan is not a finite"),
        ({"max_duration": float("inf")}, "max_duration", "--max-duration inf is not", "inf is not a finite number"),
        (
            {"min_duration": 10.0, "max_duration": 5.0},
            "min_duration",
            "--min-duration 10 is more than --max-duration 5: no file can match",
            "10 is more than max_duration 5: no file can match",
        ),
    ],
)
def test_a_bad_filter_names_its_option_for_each_front_end(options, option, cli, api):
    """The error carries the option's neutral name: str() is the command line's, reason(str) the JSON API's."""
    with pytest.raises(OptionError) as caught:
        Filters.from_options(**options)
    assert caught.value.option == option and str(caught.value).startswith(cli)
    assert caught.value.reason(str).startswith(api) and "--" not in caught.value.reason(str)


def test_search_scope_checks_its_values_and_leaves_a_file_out():
    assert SearchScope(by="window").by is By.window  # a library caller's plain string
    with pytest.raises(ValueError, match="at least 1"):
        SearchScope(0)
    with pytest.raises(ValueError):
        SearchScope(by="folder")
    scope = SearchScope(5, filters=Filters(extensions=frozenset({".wav"}))).excluding("/a.wav").excluding("/b.wav")
    assert scope.k == 5 and scope.filters.extensions == {".wav"} and scope.filters.exclude_paths == {"/a.wav", "/b.wav"}


def rare_ogg_library(db: str, model_dir: Path) -> np.ndarray:
    """117 .wav files near the query "a dog barks" (returned) and three .ogg files, the least similar of all, in
    /lib/039.ogg, 079 and 119; one window each, the file /lib/NNN lasting NNN / 10 s."""
    embedder = NumpyTextEmbedder.from_model_dir(ModelDir.read(model_dir))
    query = embedder.embed(["a dog barks"])[0]
    rng = np.random.default_rng(0)
    with Library.open(db) as lib:
        lib.store.set_index_meta(model_info(model_dir), EmbedderInfo(embedder.id, embedder.dim))
        for i in range(120):
            rare = i % 40 == 39
            direction = -query if rare else query
            vector = direction + (0.5 + 0.001 * i) * rng.standard_normal(embedder.dim).astype(np.float32)
            file_id = lib.store.upsert_file(f"/lib/{i:03d}.{'ogg' if rare else 'wav'}", size=1, mtime=1.0)
            window = WindowInput(0, 0.0, 1.0, [TextRecord(CAPTION, f"file {i}")], {"text": vector})
            lib.store.replace_file_windows(file_id, [window], audio=StoredAudio(i / 10, 44_100, 1, "wav"))
        lib.sync_vector_indexes()
    return query


RARE_OGG = ["/lib/039.ogg", "/lib/079.ogg", "/lib/119.ogg"]


def test_filters_never_cost_results(tmp_path, tiny_model_dir):
    """Matches ranked far down still fill k: the search fetches more candidates until enough pass the filters."""
    db = str(tmp_path / "many.db")
    query = rare_ogg_library(db, tiny_model_dir)
    with Library.open(db) as lib:
        index = lib.vector_index("text")
        hits = search_index(lib, index, query[None], SearchScope(3, filters=Filters(extensions=frozenset({".ogg"}))))
        assert sorted(h.path for h in hits) == RARE_OGG
        every = search_index(lib, index, query[None], SearchScope(200, By.window))
    assert len(every) == 120
    assert {h.path for h in every[-3:]} == {h.path for h in hits}  # far below the first fetch of candidates


@pytest.mark.parametrize(
    ("filters", "found"),
    [
        (Filters(extensions=frozenset({".ogg"})), RARE_OGG),
        (Filters(path_glob="*/?39.*"), ["/lib/039.ogg"]),
        (Filters(path_glob="*/???.ogg", min_duration_s=5.0), ["/lib/079.ogg", "/lib/119.ogg"]),
        (Filters(path_glob="/lib/1*", extensions=frozenset({".ogg"}), max_duration_s=12.0), ["/lib/119.ogg"]),
        (Filters(extensions=frozenset({".mp3"})), []),
    ],
)
def test_names_few_files_have_narrow_the_search_to_their_files(tmp_path, tiny_model_dir, filters, found):
    """A name filter (extension, glob) that the first candidates do not satisfy (16 to 32 per wanted result) goes
    on among the windows of the files it accepts: it does not read the details of ever more of the best windows of
    the library, all of them for a name no file has (36 s at 200,000 windows)."""
    db = str(tmp_path / "many.db")
    query = rare_ogg_library(db, tiny_model_dir)
    with Library.open(db) as lib:
        asked: set[int] = set()
        details = lib.store.window_details

        def counted(window_ids):
            window_ids = list(window_ids)
            asked.update(window_ids)
            return details(window_ids)

        lib.store.window_details = counted
        scope = SearchScope(len(found) or 1, By.window, filters)
        hits = search_index(lib, lib.vector_index("text"), query[None], scope)
        read = [window.path for window in details(asked).values()]
    assert sorted(h.path for h in hits) == found
    assert len([path for path in read if path not in found]) <= 32 * scope.k  # the first candidates alone


def test_by_file_reads_on_past_a_file_whose_windows_fill_the_first_candidates(tmp_path, tiny_model_dir):
    """One file's 30 windows are the 30 best matches: by file, it is one result and the next files follow."""
    db = str(tmp_path / "one-loud-file.db")
    embedder = NumpyTextEmbedder.from_model_dir(ModelDir.read(tiny_model_dir))
    query = embedder.embed(["a dog barks"])[0]
    away = np.random.default_rng(1).standard_normal(embedder.dim).astype(np.float32)
    away -= (away @ query) / (query @ query) * query  # a direction orthogonal to the query: similarity falls with it
    away /= np.linalg.norm(away)
    distances = {"/lib/loud.wav": 0.01 * np.arange(30), "/lib/a.wav": [1.0], "/lib/b.wav": [1.5], "/lib/c.wav": [2.0]}
    with Library.open(db) as lib:
        lib.store.set_index_meta(model_info(tiny_model_dir), EmbedderInfo(embedder.id, embedder.dim))
        for path, steps in distances.items():
            windows = [
                WindowInput(w, w, w + 1.0, [TextRecord(CAPTION, f"{path} {w}")], {"text": query + step * away})
                for w, step in enumerate(steps)
            ]
            lib.store.replace_file_windows(lib.store.upsert_file(path, size=1, mtime=1.0), windows)
        lib.sync_vector_indexes()
        hits = search_index(lib, lib.vector_index("text"), query[None], SearchScope(3, By.file))
    assert [h.path for h in hits] == ["/lib/loud.wav", "/lib/a.wav", "/lib/b.wav"]


def test_query_refuses_another_model(library, tmp_path):
    other = make_tiny_model_dir(tmp_path / "other", seed=1)
    with pytest.raises(StoreMismatchError, match="model=") as err:
        query_text(library, "a dog barks", model=str(other))
    assert ModelDir.read(other).identity in str(err.value)
    assert "--model" not in str(err.value)  # a Python caller's words: the argument, not the command's option


def test_query_finds_the_index_model_among_installed_models(library, captions, tiny_model_dir, isolated_home):
    """Without --model, the default model is tried, then any installed model with the index's identity."""
    models = isolated_home / "models"
    make_tiny_model_dir(models / "base", seed=1)  # the default, but not what built the index
    shutil.copytree(tiny_model_dir, models / "zz-tiny")
    hits = query_text(library, "a bell rings")
    assert hits[0].path == str(captions.files["bell.wav"])


def test_query_without_any_model_installed_names_the_model_that_built_the_index(library, tiny_model_dir, isolated_home):
    """Not "base is not installed: fetch it" (2.2 GB that would not match the index either)."""
    built_by = ModelDir.read(tiny_model_dir).identity
    with pytest.raises(StoreMismatchError, match=f"built with model {built_by}, which is not installed here"):
        query_text(library, "a bell rings")
    make_tiny_model_dir(isolated_home / "models" / "base", seed=1)  # installed now, but not what built the index
    with pytest.raises(StoreMismatchError, match="pass the library's model .* as model=") as err:
        query_text(library, "a bell rings")
    assert "--model" not in str(err.value)


def test_query_on_an_empty_library(tmp_path, tiny_model_dir):
    with Library.open(str(tmp_path / "empty.db")) as lib, pytest.raises(EmptyLibraryError, match="index PATH"):
        query_text(lib, "anything", model=str(tiny_model_dir))


# -- audio -> audio ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("indexed")
    sounds = root / "sounds"
    write_tone(sounds / "b.flac", 9.0, freq=240.0)
    shutil.copy(write_tone(sounds / "a.wav", 3.0, freq=150.0), sounds / "copy-of-a.wav")  # same audio, another name
    index_folder(str(root / "index.db"), sounds, tiny_model_dir)
    return str(root / "index.db"), sounds


def test_similar_leaves_out_the_file_and_its_identical_copy(indexed, tiny_model_dir):
    """A copy (the same bytes, `copy-of-a.wav`) is the query file itself as far as a search by sound can tell: a
    perfect match that says nothing, left out with the file."""
    db, sounds = indexed
    with Library.open(db) as lib:
        hits, source = similar_to_file(lib, sounds / "a.wav", model=str(tiny_model_dir), device="cpu")
    assert source == "index"
    assert [h.path for h in hits] == [str(sounds / "b.flac")]
    assert hits[0].score < 1.0 - 1e-4
    assert hits[0].caption  # the match's caption comes along


def test_similar_decodes_a_file_that_is_not_indexed(indexed, tiny_model_dir, tmp_path):
    db, sounds = indexed
    outside = tmp_path / "b-again.wav"  # b.flac's samples in other bytes (the same bytes would leave b.flac out)
    sf.write(outside, *sf.read(sounds / "b.flac"), subtype="PCM_16")
    with Library.open(db) as lib:
        hits, source = similar_to_file(lib, outside, model=str(tiny_model_dir), device="cpu")
        assert source == "decoded"
        assert hits[0].path == str(sounds / "b.flac") and hits[0].score == pytest.approx(1.0, abs=1e-4)
        # b.flac has two windows: each query window matches its own twin
        by_window = similar_to_file(lib, outside, SearchScope(by=By.window), model=str(tiny_model_dir), device="cpu")[0]
        twins = [h for h in by_window if h.path == str(sounds / "b.flac")]
        assert {(h.start_s, h.query_start_s) for h in twins} == {(0.0, 0.0), (2.0, 2.0)}


def test_a_changed_file_is_decoded_again(indexed, tiny_model_dir):
    db, sounds = indexed
    path = sounds / "a.wav"
    with Library.open(db) as lib:
        assert stored_windows(lib, path) is not None
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        try:
            assert stored_windows(lib, path) is None
            assert similar_to_file(lib, path, model=str(tiny_model_dir), device="cpu")[1] == "decoded"
        finally:
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_similar_reports_a_file_it_cannot_embed_and_goes_on(indexed, tiny_model_dir, tmp_path, monkeypatch):
    """A file whose audio vectors come out NaN is reported as `index` records such a file (exit 3 in the CLI),
    not an error that ends the command; the next file still gets its hits."""
    db, sounds = indexed
    odd, fine = shutil.copy(sounds / "b.flac", tmp_path / "odd.flac"), shutil.copy(sounds / "a.wav", tmp_path)
    real = similar_module._audio_vectors

    def nan_for_long_files(engine):
        embed = real(engine)
        return lambda windows: [v * np.nan if w.end_s > 5 else v for w, v in zip(windows, embed(windows), strict=True)]

    monkeypatch.setattr(similar_module, "_audio_vectors", nan_for_long_files)
    with Library.open(db) as lib:
        results = list(similar_to_files(lib, [odd, fine], model=str(tiny_model_dir), device="cpu"))
    assert [(r.error, r.hits) for r in results[:1]] == [("audio vector has NaN or infinite values", [])]
    assert results[1].error is None and results[1].hits


def test_similar_refuses_to_embed_with_another_model(indexed, tmp_path):
    db, _ = indexed
    other = make_tiny_model_dir(tmp_path / "other", seed=2)
    clip = write_tone(tmp_path / "new.wav", 1.0, freq=960.0)
    with Library.open(db) as lib, pytest.raises(StoreMismatchError, match="as model=") as err:
        similar_to_file(lib, clip, model=str(other), device="cpu")
    assert "--model" not in str(err.value)  # a Python caller's words


def test_similar_runs_a_given_engine_and_loads_no_model_of_its_own(indexed, tiny_model_dir, tmp_path, monkeypatch):
    """A script or a web app answers many `similar` calls with one loaded model: a file that is not indexed is
    embedded by the engine it gives, as by the model `model=` names; an engine of another model is refused."""
    db, sounds = indexed
    outside = tmp_path / "b-again.wav"
    sf.write(outside, *sf.read(sounds / "b.flac"), subtype="PCM_16")
    engine = Engine.load(tiny_model_dir, device="cpu")
    other = Engine.load(make_tiny_model_dir(tmp_path / "other", seed=2), device="cpu")
    with Library.open(db) as lib:
        loaded = similar_to_file(lib, outside, model=str(tiny_model_dir), device="cpu")
        monkeypatch.setattr(Engine, "load", None)  # calling it now fails the test
        assert similar_to_file(lib, outside, engine=engine) == loaded
        with pytest.raises(StoreMismatchError, match="the index was built with"):
            similar_to_file(lib, outside, engine=other)
        with pytest.raises(StoreMismatchError, match="the index was built with"):  # as `model=` is: whether or not
            similar_to_file(lib, sounds / "b.flac", engine=other)  # a file needs it (this one's vectors are stored)


def test_end_to_end_query_with_a_generated_caption(indexed, tiny_model_dir):
    """The real indexer's captions and vectors: querying with one window's caption finds windows with exactly
    that caption at cosine 1 (the tiny model writes the same caption for many windows, so they tie)."""
    db, _ = indexed
    with Library.open(db) as lib:
        rows = list(lib.store.export_rows())
        caption = rows[0]["windows"][0]["texts"][0]["text"]
        same = sum(w["texts"][0]["text"] == caption for r in rows for w in r["windows"])
        hits = query_text(lib, caption, SearchScope(10, By.window), model=str(tiny_model_dir))
    assert hits[0].caption == caption and hits[0].score == pytest.approx(1.0, abs=1e-5)
    exact = [h for h in hits if h.score > 1.0 - 1e-5]
    assert len(exact) == same and all(h.caption == caption for h in exact)


def test_query_uses_the_sentence_transformers_embedder_the_index_was_built_with(tmp_path, tiny_model_dir):
    st_model = make_tiny_sentence_transformer(tmp_path / "st")
    sounds = tmp_path / "sounds"
    write_tone(sounds / "a.wav", 2.0, freq=330.0)
    db = str(tmp_path / "index.db")
    index_folder(db, sounds, tiny_model_dir, text_embedder=f"sentence-transformers:{st_model}")
    with Library.open(db) as lib:
        embedder = query_embedder(lib, str(tiny_model_dir), "cpu")
        assert embedder.id == f"sentence-transformers:{st_model}" and embedder.dim == 16
        caption = next(lib.store.export_rows())["windows"][0]["texts"][0]["text"]
        hits = query_text(lib, caption, model=str(tiny_model_dir))
    assert hits[0].path == str(sounds / "a.wav") and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # Its captions are the library's model's: another model named is refused, as with Pengi's own tower (it was
    # never looked at: the query matched the library's captions under the other model's name).
    other = make_tiny_model_dir(tmp_path / "other", seed=3)
    with Library.open(db) as lib, pytest.raises(StoreMismatchError, match="the index was built with model 'tiny-base'"):
        query_text(lib, caption, model=str(other))
