"""The indexer on the tiny model: what it stores, what an incremental re-run skips, sharding, worker processes."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import indexer.audio_pass as audio_pass
from indexer.captions import IndexModel
from indexer.pipeline import run_index
from indexer.shard import Rank, Shard
from pengi_search.audio import iter_windows
from pengi_search.choices import Captions
from pengi_search.cli import app
from pengi_search.db import StoreMismatchError
from pengi_search.embedders import PengiTextEmbedder, TextEmbedderError
from pengi_search.errors import EXIT_FAILED, EXIT_USAGE, UsageError
from pengi_search.inference import Engine
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.prompts import TASK_PROMPTS
from pengi_search.scan import normalize_extensions, scan
from pengi_search.testing import make_tiny_model_dir

from .indexing import (
    assert_consistent,
    assert_same_content,
    db_content,
    make_tiny_sentence_transformer,
    quick_options,
    window_vectors,
    write_tone,
)
from .torchrun_runs import torchrun, torchrun_rank

PROMPTS = [TASK_PROMPTS["caption"], TASK_PROMPTS["sound_event"]]


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "sounds"
    write_tone(root / "short.wav", 1.5, freq=330)
    write_tone(root / "birds" / "long stereo.wav", 9.0, sr=22_050, channels=2, freq=880)  # two windows
    write_tone(root / "birds" / "tone.flac", 3.0, sr=22_050, freq=550)
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.fixture()
def model_calls(monkeypatch) -> dict[str, int]:
    """Counts windows through the audio encoder and generation calls."""
    calls = {"windows": 0, "generate": 0}
    embed, generate = Engine.audio_embeddings, Engine.generate

    def counting_embed(self, waves):
        calls["windows"] += len(waves)
        return embed(self, waves)

    def counting_generate(self, *args, **kwargs):
        calls["generate"] += 1
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "audio_embeddings", counting_embed)
    monkeypatch.setattr(Engine, "generate", counting_generate)
    return calls


def test_index_stores_files_windows_texts_and_vectors(tiny_model_dir, tree, tmp_path):
    db = tmp_path / "lib.db"
    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.window_count, summary.failed, summary.partial) == (3, 4, [], False)

    rows = {Path(row["path"]).name: row for row in db_content(db)}
    assert set(rows) == {"short.wav", "long stereo.wav", "tone.flac"}
    stereo = rows["long stereo.wav"]
    assert [stereo[k] for k in ("status", "sample_rate", "channels", "format")] == ["indexed", 22050, 2, "wav"]
    assert [(w["start_s"], w["end_s"]) for w in stereo["windows"]] == [(0.0, 7.0), (2.0, 9.0)]
    assert rows["short.wav"]["windows"][0]["end_s"] == pytest.approx(1.5)
    for row in rows.values():
        assert row["content_hash"] and len(row["content_hash"]) == 64
        for window in row["windows"]:
            assert [t["prompt"] for t in window["texts"]] == PROMPTS
    assert_consistent(db)

    # The text vector embeds the caption; the audio vector is the window's Pengi embedding as the model made it (the
    # FAISS index normalises it; captions written later start from exactly this tensor).
    text_vectors = window_vectors(db, "text")
    audio_vectors = window_vectors(db, "audio")
    path = str(tree / "birds" / "long stereo.wav")
    model_dir = ModelDir.read(tiny_model_dir)
    engine = Engine.load(model_dir, "cpu")
    embedder = PengiTextEmbedder.from_model_dir(model_dir, engine.device)
    for window in iter_windows(path):
        caption = stereo["windows"][window.index]["texts"][0]["text"]
        np.testing.assert_allclose(text_vectors[(path, window.index)], embedder.embed([caption])[0], atol=1e-5)
        expected = engine.audio_embeddings(window.samples[None]).numpy()[0]
        np.testing.assert_allclose(audio_vectors[(path, window.index)], expected, atol=1e-5)


def test_an_unchanged_rerun_does_no_model_work(tiny_model_dir, tree, tmp_path, model_calls, monkeypatch):
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    assert model_calls["windows"] == 4

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded for an unchanged library")

    monkeypatch.setattr(Engine, "load", no_loading)
    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.unchanged, summary.touched, summary.window_count) == (0, 3, 0, 0)
    assert model_calls == {"windows": 4, "generate": 1}
    assert_consistent(db)


def test_a_touched_file_with_the_same_content_is_only_restamped(tiny_model_dir, tree, tmp_path, model_calls):
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    before = window_vectors(db, "text")
    target = tree / "birds" / "tone.flac"
    os.utime(target, (1_000_000_000, 1_000_000_000))

    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.touched, summary.unchanged) == (0, 1, 2)
    assert model_calls["windows"] == 4  # nothing new went through the model
    with Library.open(str(db)) as library:
        assert library.store.get_file(str(target)).mtime == 1_000_000_000
    assert window_vectors(db, "text").keys() == before.keys()


def test_a_changed_file_is_recaptioned_and_a_deleted_one_pruned(tiny_model_dir, tree, tmp_path, model_calls):
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    changed = tree / "short.wav"
    old_audio = window_vectors(db, "audio")[(str(changed), 0)]
    write_tone(changed, 8.0, freq=1200)  # now two windows
    (tree / "birds" / "tone.flac").unlink()

    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert (summary.indexed, summary.unchanged, summary.pruned, summary.window_count) == (1, 1, 1, 2)
    assert model_calls["windows"] == 4 + 2
    rows = {Path(row["path"]).name: row for row in db_content(db)}
    assert set(rows) == {"short.wav", "long stereo.wav"}
    assert rows["short.wav"]["duration_s"] == pytest.approx(8.0) and len(rows["short.wav"]["windows"]) == 2
    assert not np.allclose(window_vectors(db, "audio")[(str(changed), 0)], old_audio)
    assert_consistent(db)


def test_pruning_stays_inside_the_scanned_roots_and_extensions(tiny_model_dir, tree, tmp_path):
    db = tmp_path / "lib.db"
    other = write_tone(tmp_path / "elsewhere" / "keep.wav", 1.0)
    run_index(quick_options([tree, other], db, tiny_model_dir))
    other.unlink()  # gone, but not under the root indexed next

    summary = run_index(quick_options([tree / "birds"], db, tiny_model_dir, extensions=normalize_extensions(["wav"])))
    assert (summary.files_seen, summary.pruned) == (1, 0)  # tone.flac is not asked for this time: kept
    assert len(db_content(db)) == 4


def test_another_model_is_refused_unless_reindex(tiny_model_dir, tree, tmp_path):
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    other_model = make_tiny_model_dir(tmp_path / "tiny-other", seed=1)

    with pytest.raises(StoreMismatchError, match="--reindex"):
        run_index(quick_options([tree], db, other_model))

    summary = run_index(quick_options([tree], db, other_model, reindex=True))
    assert (summary.indexed, summary.unchanged) == (3, 0)
    weights = json.loads((other_model / "config.json").read_text())["weights_sha256"]
    with Library.open(str(db)) as library:
        meta = library.store.index_meta()
    assert (meta.model.fingerprint, meta.embedder.name) == (weights, f"pengi-text:tiny-base@{weights[:12]}")
    assert_consistent(db)


def test_reindex_redoes_only_the_files_it_selects_and_the_others_keep_their_windows(tiny_model_dir, tree, tmp_path):
    """`--reindex --ext .wav` (or a folder of the library) with the library's own model redoes those files; the
    library's others, of other extensions or elsewhere, keep their windows, captions and status."""
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    before = {row["path"]: row for row in db_content(db)}

    wav = normalize_extensions(["wav"])
    summary = run_index(quick_options([tree], db, tiny_model_dir, extensions=wav, reindex=True, beam=1))
    assert (summary.files_seen, summary.indexed, summary.captions_missing) == (2, 2, 0)
    after = {row["path"]: row for row in db_content(db)}
    flac = str(tree / "birds" / "tone.flac")
    assert after[flac] == before[flac]  # not pending, its windows kept
    assert {row["status"] for row in after.values()} == {"indexed"}
    beams = {
        path: {t["decoding"].split()[0] for w in row["windows"] for t in w["texts"]} for path, row in after.items()
    }
    assert beams == {path: {"beam=2"} if path == flac else {"beam=1"} for path in after}  # the .wav files anew
    assert_consistent(db)


def test_reindex_with_another_model_starts_the_whole_library_over(tiny_model_dir, tree, tmp_path):
    """The new model's vectors cannot share the indexes with the old one's: every file waits to be indexed again,
    those the run did not select too, and a run over them indexes them."""
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir))
    other_model = make_tiny_model_dir(tmp_path / "tiny-other", seed=1)
    wav = normalize_extensions(["wav"])
    assert run_index(quick_options([tree], db, other_model, extensions=wav, reindex=True)).indexed == 2
    flac = str(tree / "birds" / "tone.flac")
    assert {row["path"]: (row["status"], row["windows"]) for row in db_content(db)}[flac] == ("pending", [])
    assert run_index(quick_options([tree], db, other_model)).indexed == 1
    assert_consistent(db)


def test_a_model_without_text_encoder_needs_a_text_embedder(tiny_no_text_model_dir, tree, tmp_path):
    with pytest.raises(TextEmbedderError, match="--text-embedder sentence-transformers:NAME"):
        run_index(quick_options([tree], tmp_path / "lib.db", tiny_no_text_model_dir))


def test_a_sentence_transformer_embeds_the_captions_of_a_model_without_text_encoder(
    tiny_no_text_model_dir, tree, tmp_path
):
    db = tmp_path / "lib.db"
    spec = f"sentence-transformers:{make_tiny_sentence_transformer(tmp_path / 'my st')}"  # a space: quoted in hints
    summary = run_index(quick_options([tree], db, tiny_no_text_model_dir, text_embedder=spec))
    assert (summary.indexed, summary.failed) == (3, [])
    with Library.open(str(db)) as library:
        meta = library.store.index_meta()
        assert (meta.embedder.name, meta.embedder.dim) == (spec, 16)
        assert library.vector_index("text").dim == 16
    assert_consistent(db)

    write_tone(tree / "new.wav", 1.0, freq=333)  # the recorded embedder is the default for later runs
    assert run_index(quick_options([tree], db, tiny_no_text_model_dir)).indexed == 1
    other = f"sentence-transformers:{make_tiny_sentence_transformer(tmp_path / 'st2', seed=1)}"
    with pytest.raises(StoreMismatchError, match="--reindex") as refused:
        run_index(quick_options([tree], db, tiny_no_text_model_dir, text_embedder=other))
    assert refused.value.reason == (  # the model, the same, goes unsaid
        f"the library was built with text embedder '{spec}' (dim 16), but this run uses text embedder '{other}': run "
        "again with --reindex to index it anew (every caption and vector made again)"
    )


def test_shards_together_equal_a_single_run(tiny_model_dir, tmp_path):
    root = tmp_path / "sounds"
    owned = {0: 0, 1: 0}
    for n in range(40):
        path = root / f"clip-{n:02d}.wav"
        shard = 0 if Shard(0, 2).owns(str(path)) else 1
        if owned[shard] < 2:
            write_tone(path, 2.0 + 3 * owned[shard] + shard, freq=200 + 50 * n)
            owned[shard] += 1
    assert owned == {0: 2, 1: 2}

    single, sharded = tmp_path / "single.db", tmp_path / "sharded.db"
    run_index(quick_options([root], single, tiny_model_dir, batch_size=3))
    parts = [run_index(quick_options([root], sharded, tiny_model_dir, shard=Shard(i, 2))) for i in (1, 0)]
    assert [part.indexed for part in parts] == [2, 2]

    assert_same_content(sharded, single)
    assert_consistent(sharded)


class UnloadedEngine(SimpleNamespace):
    """An engine's batch arithmetic without its model: `batch_size` (windows, or None) and `device`."""

    windows_per_batch = Engine.windows_per_batch


@pytest.mark.parametrize(("device", "prompts", "windows"), [("cpu", 2, 16), ("cpu", 3, 10), ("cuda", 2, 128)])
def test_a_default_batch_is_the_devices_rows_in_whole_windows(device, prompts, windows):
    engine = UnloadedEngine(batch_size=None, device=torch.device(device))  # 32 rows on CPU, 256 on CUDA
    model = IndexModel(engine, embedder=None, prompts=("a prompt",) * prompts, gen=None, decoding="")
    assert model.windows_per_batch == windows


@pytest.mark.parametrize(("batch_size", "largest"), [(None, 16), (3, 3)])
def test_both_passes_take_batches_of_the_asked_or_default_size(
    tiny_model_dir, tmp_path, monkeypatch, batch_size, largest
):
    write_tone(tmp_path / "sounds" / "long.wav", 7.0 * 20)  # 20 windows
    sizes: dict[str, list[int]] = {"audio_windows": [], "captions": []}
    for name in sizes:
        method = getattr(IndexModel, name)

        def recorded(self, windows, method=method, name=name):
            sizes[name].append(len(windows))
            return method(self, windows)

        monkeypatch.setattr(IndexModel, name, recorded)
    options = quick_options([tmp_path / "sounds"], tmp_path / "lib.db", tiny_model_dir, batch_size=batch_size)
    assert run_index(options).window_count == 20
    assert max(sizes["audio_windows"]) == max(sizes["captions"]) == largest
    assert sum(sizes["audio_windows"]) == sum(sizes["captions"]) == 20


def test_worker_processes_give_what_decoding_in_process_gives(tiny_model_dir, tree, tmp_path):
    in_process, workers = tmp_path / "in-process.db", tmp_path / "workers.db"
    run_index(quick_options([tree], in_process, tiny_model_dir, workers=0, batch_size=5))
    summary = run_index(quick_options([tree], workers, tiny_model_dir, workers=1, batch_size=1))
    assert (summary.indexed, summary.window_count) == (3, 4)
    assert_same_content(workers, in_process)  # batch composition changes no text
    assert_consistent(workers)


def test_known_bad_files_are_not_retried_unless_asked(tiny_model_dir, tree, tmp_path, monkeypatch):
    db = tmp_path / "lib.db"
    (tree / "broken.wav").write_bytes(b"RIFF not really")
    first = run_index(quick_options([tree], db, tiny_model_dir))
    assert [Path(f.path).name for f in first.failed] == ["broken.wav"] and first.partial

    decoded: list[str] = []
    real = audio_pass.decode_all

    def recording(jobs, workers, *args):
        jobs = list(jobs)
        decoded.extend(Path(job.path).name for job in jobs)
        return real(jobs, workers, *args)

    monkeypatch.setattr(audio_pass, "decode_all", recording)
    again = run_index(quick_options([tree], db, tiny_model_dir))
    assert (again.skipped_errors, again.failed, decoded) == (1, [], [])
    retried = run_index(quick_options([tree], db, tiny_model_dir, retry_errors=True))
    assert decoded == ["broken.wav"] and len(retried.failed) == 1


def test_a_file_whose_windows_the_store_refuses_fails_alone_and_the_others_are_indexed(
    tiny_model_dir, tree, tmp_path, monkeypatch
):
    """A NaN audio embedding is the fault of its file: it is recorded as failed with the store's reason, not a
    failure of the database that would stop the run."""
    audio_windows = IndexModel.audio_windows

    def nan_for_the_short_file(self, windows):
        made = audio_windows(self, windows)
        return [replace(w, vectors={"audio": w.vectors["audio"] * np.nan}) if w.end_s == 1.5 else w for w in made]

    monkeypatch.setattr(IndexModel, "audio_windows", nan_for_the_short_file)
    db = tmp_path / "lib.db"
    summary = run_index(quick_options([tree], db, tiny_model_dir))
    assert [(Path(f.path).name, f.message) for f in summary.failed] == [
        ("short.wav", "audio vector has NaN or infinite values")
    ]
    assert summary.indexed == 2
    statuses = {Path(row["path"]).name: row["status"] for row in db_content(db)}
    assert statuses == {"short.wav": "error", "long stereo.wav": "indexed", "tone.flac": "indexed"}


def test_progress_is_reported_per_file_and_window_in_both_passes(tiny_model_dir, tree, tmp_path):
    events: list[tuple[str, int | None, int]] = []
    counted: list[int] = []  # each file's windows, once decoded: the bar's total of pass 1 is estimated from them

    class Recorder:
        filling = None  # no index is filled from the database here

        def start(self, files):
            events.append(("start", files, 0))

        def promised(self, windows):
            pass

        def counted(self, windows, promised=None):
            counted.append(windows)

        def start_captions(self, windows):
            events.append(("captions", windows, 0))

        def advance(self, files=0, windows=0):
            events.append(("advance", files, windows))

    run_index(quick_options([tree], tmp_path / "lib.db", tiny_model_dir), Recorder())
    second = events.index(("captions", 4, 0))
    first_pass, second_pass = events[1:second], events[second + 1 :]
    assert events[0] == ("start", 3, 0)
    assert sum(e[1] for e in first_pass) == 3 and sum(e[2] for e in first_pass) == 4
    assert sum(e[1] for e in second_pass) == 0 and sum(e[2] for e in second_pass) == 4
    assert len(counted) == 3 and sum(counted) == 4


def test_scan_follows_links_once_sorts_and_filters(tmp_path):
    root = tmp_path / "root"
    write_tone(root / "b" / "z.WAV", 0.5)
    write_tone(root / "a.flac", 0.5)
    (root / "b" / "loop").symlink_to(root, target_is_directory=True)
    (root / "linked.ogg").symlink_to(root / "a.flac")
    (root / "readme.md").write_text("x")
    result = scan([root], normalize_extensions([".wav", "FLAC", "ogg"]))
    assert [Path(e.path).relative_to(root).as_posix() for e in result.entries] == ["a.flac", "b/z.WAV", "linked.ogg"]
    assert all(e.problem is None for e in result.entries) and result.unreadable_dirs == []


def test_scan_walks_a_folder_where_it_lies_rather_than_through_a_link_to_it(tmp_path):
    """A folder under the roots that a link also leads to is walked where it lies, even when the link sorts first
    (`a-link -> real`, `0/to-deep -> real/deep`); a folder only a link leads to is walked through it, and a root as
    given."""
    root = tmp_path / "t2"
    write_tone(root / "real" / "x.wav", 0.5)
    write_tone(root / "real" / "deep" / "y.wav", 0.5)
    write_tone(tmp_path / "outside" / "o.wav", 0.5)
    (root / "a-link").symlink_to(root / "real", target_is_directory=True)
    (root / "0").mkdir()
    (root / "0" / "to-deep").symlink_to(root / "real" / "deep", target_is_directory=True)
    (root / "elsewhere").symlink_to(tmp_path / "outside", target_is_directory=True)

    def found(*roots: Path) -> list[str]:
        entries = scan(list(roots), normalize_extensions(["wav"])).entries
        return [Path(e.path).relative_to(root).as_posix() for e in entries]

    assert found(root) == ["elsewhere/o.wav", "real/deep/y.wav", "real/x.wav"]
    assert found(root / "a-link", root) == ["a-link/deep/y.wav", "a-link/x.wav", "elsewhere/o.wav"]


def test_scan_reports_unlistable_folders(tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_tone(root / "ok.wav", 0.5)
    write_tone(root / "locked" / "hidden.wav", 0.5)
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = scan([root], normalize_extensions(["wav"]))
    assert [Path(e.path).name for e in result.entries] == ["ok.wav"]
    assert result.unreadable_dirs == [(str(root / "locked"), "cannot list folder (permission denied)")]


def test_shard_parsing_and_torchrun_environment():
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(ValueError):
            Shard.parse(bad)
    paths = [f"/sounds/{n}.wav" for n in range(100)]
    owners = [[s for s in range(3) if Shard(s, 3).owns(p)] for p in paths]
    assert all(len(o) == 1 for o in owners) and {o[0] for o in owners} == {0, 1, 2}
    rank = Rank.from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    assert (rank.shard, rank.local_rank, rank.leads) == (Shard(2, 4), 0, False)
    assert Rank.from_env({}) is None


def test_a_launcher_that_sets_rank_alone_puts_the_trainer_and_indexer_on_one_machine_alike(monkeypatch):
    """Without LOCAL_RANK (a launcher other than torchrun) a process's place on its machine is its RANK for the
    indexer's GPU, the trainer's, and who speaks for the machine before the processes connect."""
    from pengi_search.torchrun_env import first_on_machine, place

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    rank = Rank.from_env(os.environ)
    assert rank is not None and rank.local_rank == place().local_rank == 1 and not first_on_machine()


@pytest.fixture()
def two_gpus(monkeypatch) -> None:
    """A machine where PyTorch sees two CUDA GPUs (none is touched: the check is made before any work)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_under_torchrun_each_rank_indexes_on_its_own_gpu(two_gpus, monkeypatch):
    torchrun_rank(monkeypatch, 1, 2)
    rank = Rank.from_env()
    assert (rank.device("auto"), rank.device("cpu"), rank.device("cuda:0")) == ("cuda:1", "cpu", "cuda:0")
    assert rank.device("cuda") == "cuda:1"  # as the trainer places it: a bare `cuda` would put every rank on GPU 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (rank.device("auto"), rank.device("cuda")) == ("cpu", "cuda")  # `cuda` without a GPU: refused later


def test_under_torchrun_more_ranks_than_gpus_are_refused_before_any_work_said_once_per_machine(
    two_gpus, monkeypatch, tmp_path
):
    """Four ranks on two GPUs: the third and fourth would share the first two's, which the engine found only as the
    model moved there, after the scan, each rank saying it in terms of `--device cuda:N` that nobody gave. Every rank
    of the machine knows it is one of four, so the run is refused at once and the machine's first rank alone says so
    (exit 2, which torchrun reports); the others end well without a word."""
    (tmp_path / "sounds").mkdir()
    db = tmp_path / "lib.db"
    said = []
    for local_rank in range(4):
        torchrun_rank(monkeypatch, local_rank, 4)
        said.append(CliRunner().invoke(app, ["index", str(tmp_path / "sounds"), "--db", str(db)]))
    assert said[0].exit_code == EXIT_USAGE, said[0].output
    assert said[0].stderr == (
        "error: 4 processes on this machine (torchrun's LOCAL_WORLD_SIZE): PyTorch sees 2 CUDA GPUs on this machine "
        "(cuda:0 to cuda:1): start at most 2 per machine, one per GPU (--nproc-per-node 2), or give --device cpu\n"
    )
    assert [(result.exit_code, result.output) for result in said[1:]] == [(0, "")] * 3
    assert not db.exists()  # nothing was done


def test_a_launcher_that_does_not_say_how_many_ranks_share_the_machine_leaves_each_rank_past_the_gpus_to_say_it(
    two_gpus, monkeypatch
):
    torchrun_rank(monkeypatch, 1, None)
    assert Rank.from_env().device("auto") == "cuda:1"
    torchrun_rank(monkeypatch, 2, None)
    with pytest.raises(UsageError) as refused:
        Rank.from_env().device("auto")
    assert str(refused.value).startswith("process 2 of this machine (torchrun's LOCAL_RANK): PyTorch sees 2 CUDA GPUs")


@pytest.mark.parametrize(
    ("case", "said", "code"),
    [
        ("no-audio", "empty: no audio file in this folder", EXIT_USAGE),
        ("watch", "--watch: one process watches the whole library: leave out --shard and torchrun", EXIT_USAGE),
        ("bad-option", "No such option: --bogus", EXIT_USAGE),
        ("db-folder", "lib is a folder, not a database file", EXIT_USAGE),
        # Not offered for download: every rank would fetch it at once (said: run `pengi-search model fetch base`)
        ("no-model", "models: no Pengi model is installed here: run `pengi-search model fetch base`", EXIT_FAILED),
    ],
)
def test_under_torchrun_a_failure_every_rank_meets_before_they_connect_is_said_once_per_machine(
    tiny_model_dir, tmp_path, monkeypatch, case: str, said: str, code: int
):
    """Each rank checks the same options, folders, model and database before the ranks connect, and each said
    what it found wrong (`error: ...` once per rank). The machine's first rank (LOCAL_RANK 0) says it, once, with
    its exit code (which torchrun reports, exiting 1); the others end well, without a word, so that torchrun does
    not stop the first (SIGTERM) before it has said it."""
    write_tone(tmp_path / "sounds" / "tone.wav", 1.0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "lib").mkdir()
    monkeypatch.setenv("PENGI_SEARCH_HOME", str(tmp_path / "home"))  # no model installed
    options = {
        "no-audio": ["empty"],
        "watch": ["sounds", "--watch"],
        "bad-option": ["sounds", "--bogus"],
        "db-folder": ["sounds", "--db", "lib"],
        "no-model": ["sounds"],
    }[case]
    model = [] if case == "no-model" else ["--model", str(tiny_model_dir)]
    common = ["--device", "cpu", "--workers", "0", *model]
    launched = torchrun(*options, *common, cwd=tmp_path, entry=("-m", "indexer"))
    assert launched.returncode != 0 and launched.stderr.count("error: ") == 1, launched.stderr[-3000:]
    assert said in launched.stderr, launched.stderr[-3000:]
    assert re.search(rf"rank\s*: 0 .*\n\s*exitcode\s*: {code} ", launched.stderr), launched.stderr[-3000:]
    # The first rank ends after the other: torchrun, which stops the ranks still running once one fails, stopped
    # it as it set up, and reported it as a failure of its own (`exitcode: -15`).
    assert "SIGTERM" not in launched.stderr and "interrupted" not in launched.stderr, launched.stderr[-3000:]
    assert not re.search(r"rank\s*: 1 .*\n\s*exitcode", launched.stderr), launched.stderr[-3000:]
    assert not (tmp_path / "index.db").exists() and not list((tmp_path / "lib").iterdir())  # nothing was done


def test_a_run_that_refills_an_index_from_the_database_tells_its_progress(tiny_model_dir, tree, tmp_path):
    """A run that prunes a fifth of an HNSW index's windows re-fills it: minutes on millions of vectors, in silence."""
    db = tmp_path / "lib.db"
    run_index(quick_options([tree], db, tiny_model_dir, index_type="hnsw", captions=Captions.later))
    (tree / "short.wav").unlink()  # 1 of the 4 windows: past the fifth that compacts
    said: list[tuple[str, str, int]] = []

    class Recorder:
        def start(self, files): ...

        def promised(self, windows): ...

        def counted(self, windows, promised=None): ...

        def advance(self, files=0, windows=0): ...

        def filling(self, name):
            class Fill:
                def start(self, vectors):
                    said.append((name, "start", vectors))

                def advance(self, vectors):
                    said.append((name, "advance", vectors))

            return Fill()

    assert run_index(quick_options([tree], db, tiny_model_dir, captions=Captions.later), Recorder()).pruned == 1
    assert said == [("audio index", "start", 3), ("audio index", "advance", 3)]  # no captions: no text index
