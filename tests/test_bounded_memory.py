"""A library's FAISS index is built, and compacted, from the database's vectors a batch at a time.

A rebuild or a compaction holds the index and one batch of stored vectors (`VECTOR_BATCH_ROWS`, made small here),
never every vector at once, and makes the index that reading them all at once made: the same contents, in the same
places (an HNSW graph, which inserts each batch's nodes in its own order, holds the same vectors under the same ids).
Python's own allocations (numpy's included, faiss's not: those are the index) show what a command holds besides
the index.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from pengi_search.db import EmbedderInfo, ModelInfo, Store, WindowInput, reads
from pengi_search.library import Library
from pengi_search.vectors import COMPACT_FRACTION, IndexParams, VectorIndex

from .traced_memory import python_peak

FILES, WINDOWS_PER_FILE, DIM = 14, 1000, 32  # enough to train IVF-PQ, with 3 files removed too
ROWS = 250  # vectors read at a time here: 1/56 of them
ALL_BYTES = FILES * WINDOWS_PER_FILE * DIM * 4
# What a build or compaction may hold besides the index: a few batches (a batch's rows as read, their bytes joined,
# the float32 matrix normalised), where reading them all at once held three times ALL_BYTES.
BOUND = ALL_BYTES / 4


@pytest.fixture(scope="module")
def built_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library of FILES files of WINDOWS_PER_FILE windows with random DIM-wide audio vectors, no FAISS file."""
    path = tmp_path_factory.mktemp("library") / "lib.db"
    rng = np.random.default_rng(5)
    with Store.open(str(path)) as store:
        store.set_index_meta(ModelInfo("pengi-test", "f" * 64), EmbedderInfo("embedder-a", 16))
        for number in range(FILES):
            file_id = store.upsert_file(f"/lib/{number:02d}.wav", size=1, mtime=1.0)
            vectors = rng.standard_normal((WINDOWS_PER_FILE, DIM), dtype=np.float32)
            windows = [WindowInput(i, 7.0 * i, 7.0 * (i + 1), vectors={"audio": v}) for i, v in enumerate(vectors)]
            store.replace_file_windows(file_id, windows)
    return path


@pytest.fixture
def db(built_db: Path, tmp_path: Path) -> str:
    """A copy of the library for one test to change."""
    return str(shutil.copy(built_db, tmp_path / "lib.db"))


@pytest.fixture
def batch_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many vectors each read of stored vectors decodes from here on, with ROWS to a batch."""
    monkeypatch.setattr(reads, "VECTOR_BATCH_ROWS", ROWS)
    sizes: list[int] = []
    decode = reads.decode_matrix

    def counted(where: str, kind: str, blobs: list[bytes]) -> np.ndarray:
        sizes.append(len(blobs))
        return decode(where, kind, blobs)

    monkeypatch.setattr(reads, "decode_matrix", counted)
    return sizes


def refuse_full_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, reading every vector of a kind at once (`Store.vectors`) fails."""

    def vectors(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("every vector read at once")

    monkeypatch.setattr(Store, "vectors", vectors)


def contents(index: VectorIndex) -> Iterator[np.ndarray]:
    """What an index holds, place by place: its ids, stored vectors, and for IVF-PQ the codes in each list."""
    mapped = index._index
    yield faiss.vector_to_array(mapped.id_map)
    yield mapped.index.reconstruct_n(0, mapped.ntotal)
    if index.type == "ivfpq":
        yield faiss.serialize_index(mapped)
    assert index.removed == 0


def assert_same_index(got: VectorIndex, want: VectorIndex) -> None:
    assert (got.type, got.params) == (want.type, want.params)
    for got_part, want_part in zip(contents(got), contents(want), strict=True):
        np.testing.assert_array_equal(got_part, want_part)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_a_rebuild_reads_the_vectors_a_batch_at_a_time_into_the_index_a_full_read_built(
    db: str, kind: str, batch_reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Library.open(db) as library:
        ids, vectors = library.store.vectors("audio")
        read_at_once = VectorIndex.build(ids, vectors, IndexParams(type=kind))
        refuse_full_reads(monkeypatch)
        batch_reads.clear()
        library.rebuild(kind)
        # IVF-PQ reads its training sample first (50 vectors per cell of 256), a batch at a time too.
        sample = 256 * 50 if kind == "ivfpq" else 0
        assert max(batch_reads) == ROWS and sum(batch_reads) == len(ids) + sample
        assert_same_index(library.vector_index("audio"), read_at_once)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_build_holds_one_batch_of_vectors_besides_the_index(db: str, kind: str, batch_reads: list[int]) -> None:
    with Store.open(db) as store:
        ids = store.vector_ids("audio")

        def build() -> None:
            VectorIndex.build_streamed(ids, lambda wanted: store.vector_batches("audio", wanted), IndexParams(kind))

        assert python_peak(build) < BOUND


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_a_compaction_re_reads_the_live_vectors_a_batch_at_a_time_into_the_index_it_made_before(
    db: str, kind: str, batch_reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing 3 files of 14 leaves over a fifth of the index tombstoned: it is re-filled without them."""
    refuse_full_reads(monkeypatch)
    with Library.open(db) as library:
        library.rebuild(kind)
        path = library.index_path("audio")
        for number in range(3):
            library.store.remove(f"/lib/{number:02d}.wav")
        live = library.store.vector_ids("audio")
        gone = np.setdiff1d(VectorIndex.load(path)[0].ids(), live, assume_unique=True)
        copied_out = VectorIndex.load(path)[0]  # compacted from its own vectors, as before: all copied out at once
        assert copied_out.remove(gone) == len(gone) == 3 * WINDOWS_PER_FILE and copied_out.removed == 0

        re_read = VectorIndex.load(path)[0]
        fifth = int(COMPACT_FRACTION * len(re_read))
        re_read.remove(gone[:fifth])  # tombstoned: not yet past the fifth
        assert re_read.removed == fifth
        read = functools.partial(library.store.vector_batches, "audio")
        batch_reads.clear()
        assert python_peak(lambda: re_read.remove(gone[fifth:], read)) < BOUND
        assert max(batch_reads) == ROWS and sum(batch_reads) == len(live)
        assert_same_index(re_read, copied_out)

        batch_reads.clear()
        library.sync_vector_indexes()  # as `remove` and `index` do it
        assert max(batch_reads) == ROWS and sum(batch_reads) == len(live)
        assert_same_index(VectorIndex.load(path)[0], copied_out)
