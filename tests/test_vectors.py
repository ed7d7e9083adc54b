"""FAISS vector indexes: exact and approximate search, ids, and atomic, checked files."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from pengi_search.vector_file import write_index_file
from pengi_search.vectors import (
    IVFPQ_MIN_VECTORS,
    IndexParams,
    VectorIndex,
    VectorIndexError,
    l2_normalise,
)

DIM = 16
IVFPQ = IndexParams(type="ivfpq", pq_m=2)  # few sub-quantizers: PQ training time grows with them


def clustered(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Points around 50 centres (fixed by dim), unnormalised: like embeddings of similar captions."""
    centres = np.random.default_rng(dim).standard_normal((50, dim))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 50, count)] + 0.3 * rng.standard_normal((count, dim))).astype(np.float32)


def sparse_ids(count: int) -> np.ndarray:
    return np.arange(count, dtype=np.int64) * 7 + 3  # database ids are not positions


def brute_force(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = query @ unit.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), ids[top]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def trained() -> tuple[np.ndarray, np.ndarray, VectorIndex]:
    """One IVF-PQ index (training takes seconds) shared by the tests that only read it."""
    vectors, ids = clustered(IVFPQ_MIN_VECTORS), sparse_ids(IVFPQ_MIN_VECTORS)
    return ids, vectors, VectorIndex.build(ids, vectors, IVFPQ)


def build(kind: str, ids: np.ndarray, vectors: np.ndarray, trained: tuple) -> VectorIndex:
    if kind == "ivfpq":
        return trained[2]
    return VectorIndex.build(ids, vectors, IndexParams(type=kind))


# -- search -----------------------------------------------------------------------------------------------------


def test_flat_search_is_exact_with_database_ids_and_cosine_scores() -> None:
    vectors, queries = clustered(500), clustered(20, seed=1) * 5.0  # unnormalised on both sides
    ids = sparse_ids(500)
    index = VectorIndex.build(ids, vectors)
    scores, found = index.search(queries, 5)
    expected_scores, expected_ids = brute_force(ids, vectors, queries, 5)
    assert found.dtype == np.int64 and scores.dtype == np.float32 and found.shape == (20, 5)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    single_scores, single = index.search(queries[0], 5)
    np.testing.assert_array_equal(single, found[:1])
    np.testing.assert_allclose(single_scores, scores[:1])


def test_searching_for_a_stored_vector_finds_it_with_score_one() -> None:
    vectors = clustered(200)
    index = VectorIndex.build(sparse_ids(200), vectors)
    scores, found = index.search(vectors[17] * 3.0, 1)
    assert found[0, 0] == sparse_ids(200)[17]
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_missing_results_are_minus_one_with_minus_infinity() -> None:
    index = VectorIndex.build(sparse_ids(3), clustered(3))
    scores, found = index.search(clustered(2, seed=5), 5)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert (found[:, :3] >= 0).all()
    empty = VectorIndex.build(np.empty(0, np.int64), np.empty((0, 0), np.float32), dim=DIM)
    scores, found = empty.search(clustered(1), 3)
    assert (found == -1).all() and np.isneginf(scores).all() and len(empty) == 0


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_filtered_search_returns_only_allowed_ids(kind: str, trained: tuple) -> None:
    count = IVFPQ_MIN_VECTORS if kind == "ivfpq" else 1000
    vectors, ids, queries = clustered(count), sparse_ids(count), clustered(10, seed=2)
    index = build(kind, ids, vectors, trained)
    assert index.type == kind
    allowed = ids[::10]
    _, found = index.search(queries, 5, allowed_ids=allowed)
    assert np.isin(found, allowed).all()
    if kind == "flat":
        _, expected = brute_force(allowed, vectors[::10], queries, 5)
        np.testing.assert_array_equal(found, expected)
    _, none_found = index.search(queries, 5, allowed_ids=np.array([-5, 10**12]))
    assert (none_found == -1).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_a_filter_that_allows_few_ids_finds_the_best_of_them_as_an_exact_search_does(kind: str, trained: tuple) -> None:
    """A folder or a rare name allows few windows: an HNSW graph or the IVF cells probed hold few of them near the
    query, and the approximate search found 1 to 5 of 10 that were there (0.2% to 1% of a library). The search,
    whose results the caller takes as complete, is exact among them instead."""
    ids, vectors, index = trained if kind == "ivfpq" else approximate(kind, IVFPQ_MIN_VECTORS)
    queries = clustered(20, seed=4)
    allowed = ids[::400]  # 25 of 10,000
    scores, found = index.search(queries, 10, allowed_ids=allowed)
    expected_scores, expected = brute_force(allowed, vectors[::400], queries, 10)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)
    _, every_one = index.search(queries[:1], 40, allowed_ids=allowed)
    assert sorted(every_one[0, :25].tolist()) == allowed.tolist() and (every_one[0, 25:] == -1).all()


@pytest.fixture(scope="module")
def tombstoned_ivfpq() -> tuple[np.ndarray, np.ndarray, VectorIndex, np.ndarray]:
    """An IVF-PQ index of its own with a seventh of its ids removed (under the share that compacts): (ids, vectors,
    index, live), `live` saying which ids are still in it."""
    ids, vectors, index = approximate("ivfpq", IVFPQ_MIN_VECTORS)
    live = np.arange(len(ids)) % 7 != 0
    index.remove(ids[~live])
    return ids, vectors, index, live


def sparse_graph(tombstones: bool) -> tuple[np.ndarray, np.ndarray, VectorIndex, np.ndarray]:
    """An HNSW graph of 8 links a node over 500 random 8-d vectors, one of which no walk reaches (as in a library
    of real embeddings where 100 of 102 windows came back): (ids, vectors, index, live), as `tombstoned_ivfpq`."""
    vectors, ids = np.random.default_rng(5).standard_normal((500, 8)).astype(np.float32), sparse_ids(500)
    index = VectorIndex.build(ids, vectors, IndexParams(type="hnsw", hnsw_m=8))
    live = np.arange(len(ids)) % 7 != 0 if tombstones else np.ones(len(ids), bool)
    index.remove(ids[~live])
    return ids, vectors, index, live


@pytest.mark.parametrize("filtered", [False, True], ids=["unfiltered", "filtered"])
@pytest.mark.parametrize("tombstones", [False, True], ids=["live", "tombstones"])
@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_a_search_for_about_every_vector_it_may_return_returns_each_of_them_once(
    kind: str, tombstones: bool, filtered: bool, trained: tuple, tombstoned_ivfpq: tuple
) -> None:
    """k near or past the number of vectors a search may return (the live ones, those the filter allows): the
    HNSW walk or the IVF cells probed reached fewer, and callers take a short row for every candidate there is.
    Each row holds the best min(k, that many) of them, each once, as an exact search does, then empty slots."""
    if kind == "hnsw":
        ids, vectors, index, live = sparse_graph(tombstones)
        queries = np.random.default_rng(6).standard_normal((30, 8))
    else:
        ids, vectors, _, live = tombstoned_ivfpq
        index = tombstoned_ivfpq[2] if tombstones else trained[2]
        live = live if tombstones else np.ones(len(ids), bool)
        vectors = vectors if tombstones else trained[1]
        queries = clustered(3, seed=4)
    allowed = ids[::2] if filtered else None  # a filter that allows removed ids too
    returnable = live & np.isin(ids, ids if allowed is None else allowed)
    count = int(returnable.sum())
    for k in (count - 2, count, count + 5):
        scores, found = index.search(queries, k, allowed_ids=allowed)
        _, best = brute_force(ids[returnable], vectors[returnable], queries, min(k, count))
        for row, want in zip(found, best, strict=True):
            assert sorted(row[: len(want)].tolist()) == sorted(want.tolist()), k
        assert (found[:, count:] == -1).all() and np.isneginf(scores[:, count:]).all()


def test_an_exact_search_reads_the_stored_vectors_a_chunk_at_a_time_keeping_the_best(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large k is exact among the whole library: the stored vectors are read in chunks, of which only the best k
    scores are kept (not a score for every vector and query row), and the results are those of one read."""
    ids, vectors, index, _ = sparse_graph(tombstones=False)
    monkeypatch.setattr("pengi_search.vectors._RECONSTRUCTED_ROWS", 64)
    queries = np.random.default_rng(6).standard_normal((4, 8))
    for k in (60, 200, 505):
        scores, found = index.search(queries, k)
        want_scores, want = brute_force(ids, vectors, queries, min(k, len(ids)))
        np.testing.assert_array_equal(found[:, : want.shape[1]], want)
        np.testing.assert_allclose(scores[:, : want.shape[1]], want_scores, rtol=0, atol=1e-5)


def test_a_row_the_cells_probed_leave_short_is_filled_from_every_vector(trained: tuple) -> None:
    """700 of 10,000 (under the share searched exactly): the 16 IVF cells probed held 518 near one query. The
    search returns 700 all the same, for a caller takes a short row as every candidate there is."""
    ids, vectors, index = trained
    queries = clustered(5, seed=3)
    _, found = index.search(queries, 700, exact_top=10)
    assert (found >= 0).all() and all(len(set(row.tolist())) == 700 for row in found)
    _, truth = brute_force(ids, vectors, queries, 10)
    assert recall(found[:, :10], truth) >= 0.95


def test_hnsw_recall_on_a_small_set() -> None:
    vectors, ids, queries = clustered(3000), sparse_ids(3000), clustered(100, seed=3)
    index = VectorIndex.build(ids, vectors, IndexParams(type="hnsw", ef_search=64))
    _, truth = brute_force(ids, vectors, queries, 10)
    assert recall(index.search(queries, 10)[1], truth) >= 0.95


def test_ivfpq_recall_on_a_small_set(trained: tuple) -> None:
    ids, vectors, index = trained
    queries = clustered(100, seed=3)
    assert index.type == "ivfpq" and index.params.nlist == 256 and index.params.pq_m == 2
    _, truth = brute_force(ids, vectors, queries, 10)
    assert recall(index.search(queries, 10)[1], truth) >= 0.95


def test_ivfpq_spares_beyond_exact_top_leave_the_first_results_as_a_search_for_that_many(trained: tuple) -> None:
    """A search that fetches spare candidates (results of one file, filtered ones) re-ranks as many IVF-PQ
    candidates as a search for `exact_top` results: the first `exact_top` are the same, the cost does not grow."""
    _, _, index = trained
    queries = clustered(20, seed=4)
    scores, found = index.search(queries, 10)
    spare_scores, with_spares = index.search(queries, 40, exact_top=10)
    np.testing.assert_array_equal(with_spares[:, :10], found)
    np.testing.assert_allclose(spare_scores[:, :10], scores, rtol=0, atol=1e-6)
    assert (with_spares[:, 10:] >= 0).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_an_exact_search_of_an_approximate_index_finds_what_brute_force_finds(
    kind: str, trained: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exact=True`: the best of every vector the search may return, whatever the graph walk or the cells probed
    would reach (here an HNSW walk of efSearch 1 and one IVF cell probed, which miss many)."""
    ids, vectors, _ = trained
    index = build(kind, ids, vectors, trained)
    monkeypatch.setattr(index, "params", dataclasses.replace(index.params, ef_search=1, nprobe=1))  # shared: restored
    queries = clustered(20, seed=5)
    truth_scores, truth = brute_force(ids, vectors, queries, 10)
    assert recall(index.search(queries, 10)[1], truth) < 1.0  # approximate, it misses some
    scores, found = index.search(queries, 10, exact=True)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(scores, truth_scores, rtol=0, atol=1e-5)


def test_ivfpq_falls_back_to_flat_when_too_few_vectors_to_train(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pengi_search.vectors"):
        index = VectorIndex.build(sparse_ids(300), clustered(300), IndexParams(type="ivfpq"))
    assert index.type == "flat"
    assert "IVF-PQ needs at least" in caplog.text and "using the exact flat index" in caplog.text


def test_bad_vectors_and_queries_are_refused() -> None:
    vectors = clustered(10)
    with pytest.raises(VectorIndexError, match="2 zero vectors cannot be normalised"):
        VectorIndex.build(sparse_ids(2), np.zeros((2, DIM), np.float32))
    with pytest.raises(VectorIndexError, match="1 zero vector cannot be normalised"):
        VectorIndex.build(sparse_ids(2), np.vstack([vectors[:1], np.zeros((1, DIM), np.float32)]))
    broken = vectors.copy()
    broken[3, 0] = np.nan
    with pytest.raises(VectorIndexError, match="NaN"):
        VectorIndex.build(sparse_ids(10), broken)
    index = VectorIndex.build(sparse_ids(10), vectors)
    with pytest.raises(VectorIndexError, match="expected 16 dimensions, got 8"):
        index.search(np.ones(8, np.float32), 3)
    with pytest.raises(VectorIndexError, match="k must be at least 1"):
        index.search(vectors[0], 0)
    with pytest.raises(VectorIndexError, match="no vectors and no dimension"):
        VectorIndex.build(np.empty(0, np.int64), np.empty((0, 0), np.float32))
    with pytest.raises(VectorIndexError, match="unknown 'annoy'"):
        IndexParams(type="annoy")


def test_l2_normalise_copies_and_normalises() -> None:
    given = np.array([[3.0, 4.0]], dtype=np.float64)
    unit = l2_normalise(given)
    np.testing.assert_allclose(unit, [[0.6, 0.8]])
    assert unit.dtype == np.float32 and given[0, 0] == 3.0


# -- ids --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_add_and_remove_keep_ids_tied_to_vectors(kind: str) -> None:
    vectors, ids = clustered(400), sparse_ids(400)
    index = VectorIndex.build(ids[:300], vectors[:300], IndexParams(type=kind))
    index.add(ids[300:], vectors[300:])
    assert len(index) == 400 and index.ids().tolist() == ids.tolist()
    assert index.remove(np.concatenate([ids[:100], [10**9]])) == 100
    assert index.ids().tolist() == ids[100:].tolist()
    _, found = index.search(vectors[150:160], 1)
    assert found[:, 0].tolist() == ids[150:160].tolist()
    _, found = index.search(vectors[:10], 1)
    assert not np.isin(found, ids[:100]).any()


def test_ivfpq_remove_keeps_the_rest_as_it_was() -> None:
    vectors, ids, queries = clustered(IVFPQ_MIN_VECTORS), sparse_ids(IVFPQ_MIN_VECTORS), clustered(20, seed=6)
    index = VectorIndex.build(ids, vectors, IVFPQ)
    kept_before = index.search(queries, 5, allowed_ids=ids[5000:])
    assert index.remove(ids[:5000]) == 5000
    assert index.ids().tolist() == ids[5000:].tolist()
    # Re-filled from its own exact vectors with the same training: as if the removed ids had been filtered out.
    for got, want in zip(index.search(queries, 5), kept_before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_ids_must_be_unique() -> None:
    index = VectorIndex.build(sparse_ids(5), clustered(5))
    with pytest.raises(VectorIndexError, match="already in the index"):
        index.add(sparse_ids(5)[2:3], clustered(1))
    with pytest.raises(VectorIndexError, match="repeat within the batch"):
        index.add(np.array([100, 100]), clustered(2))
    with pytest.raises(VectorIndexError, match="2 ids for 3 vectors"):
        index.add(np.array([100, 101]), clustered(3))
    assert len(index) == 5


def test_sync_adds_missing_and_drops_extra_ids() -> None:
    vectors, ids = clustered(50), sparse_ids(50)
    index = VectorIndex.build(ids[:30], vectors[:30])
    wanted = ids[10:50]
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    asked: list[list[int]] = []

    def read(missing: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        asked.append(missing.tolist())
        return [(missing, np.stack([by_id[i] for i in missing.tolist()]))]

    assert index.sync(wanted, read) == (20, 10)
    assert asked == [ids[30:50].tolist()] and index.ids().tolist() == wanted.tolist()
    assert index.sync(wanted, read) == (0, 0) and len(asked) == 1


@pytest.mark.usefixtures("ids_sorted_not_hashed")
def test_sync_sorts_ids_rather_than_hashing_them() -> None:
    """Every command checks its FAISS file against the database's ids: in any order, with repeats."""
    vectors, ids = clustered(50), sparse_ids(50)
    index = VectorIndex.build(ids, vectors)

    def read(missing: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        raise AssertionError(f"nothing is missing, yet {missing} was read")

    assert index.sync(ids[::-1], read) == (0, 0)
    assert index.sync(np.concatenate([ids[10:], ids[::-1]]), read) == (0, 0)
    assert index.sync(np.concatenate([ids[10:], ids[10:]]), read) == (0, 10)
    assert index.ids().tolist() == ids[10:].tolist()


# -- removal from HNSW and IVF-PQ: tombstones ----------------------------------------------------------------


def approximate(kind: str, count: int) -> tuple[np.ndarray, np.ndarray, VectorIndex]:
    """(ids, vectors, index) of an HNSW or IVF-PQ index of its own, to remove from (IVF-PQ needs 10,000 to train)."""
    count = max(count, IVFPQ_MIN_VECTORS) if kind == "ivfpq" else count
    vectors, ids = clustered(count, seed=8), sparse_ids(count)
    return ids, vectors, VectorIndex.build(ids, vectors, IVFPQ if kind == "ivfpq" else IndexParams(type=kind))


@pytest.fixture
def vectors_added(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many vectors each call adds to any id-mapped faiss index from here on."""
    added: list[int] = []
    add_with_ids = faiss.IndexIDMap2.add_with_ids

    def counted(index: faiss.IndexIDMap2, vectors: np.ndarray, ids: np.ndarray) -> None:
        added.append(len(vectors))
        add_with_ids(index, vectors, ids)

    monkeypatch.setattr(faiss.IndexIDMap2, "add_with_ids", counted)
    return added


@pytest.mark.usefixtures("ids_sorted_not_hashed")
@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_removing_one_id_re_adds_no_vector(kind: str, vectors_added: list[int]) -> None:
    """An HNSW graph or IVF-PQ index is not re-filled to drop one file's vectors: they are tombstoned."""
    ids, vectors, index = approximate(kind, 2000)
    vectors_added.clear()
    assert index.remove(ids[[7, 7, 1500]]) == 2 and index.remove(ids[[7]]) == 0
    assert vectors_added == []
    assert len(index) == len(ids) - 2 and index.removed == 2
    assert index.ids().tolist() == np.delete(ids, [7, 1500]).tolist()
    _, found = index.search(vectors[[7, 1500]], 10)
    assert not np.isin(found, ids[[7, 1500]]).any() and (found >= 0).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_removed_ids_are_never_found_and_the_live_ones_are_found_as_before(kind: str) -> None:
    """Searched with the removed vectors themselves (each would be its own best hit), with and without a filter.
    IVF-PQ finds exactly what a re-filled index finds; HNSW searched exhaustively finds the exact live top 10."""
    ids, vectors, index = approximate(kind, 2000)
    gone = np.arange(0, len(ids), 9)  # 11%: under the share that compacts
    index.remove(ids[gone])
    assert index.removed == gone.size
    live = np.setdiff1d(np.arange(len(ids)), gone)
    queries, allowed = vectors[gone[:50]], ids[::2]  # the filter allows removed ids too
    if kind == "ivfpq":
        refilled = VectorIndex.build(ids, vectors, IVFPQ)  # the same training, as builds are deterministic
        refilled.remove(ids[gone])
        assert refilled.compact() == gone.size and refilled.removed == 0 and len(refilled) == len(index)
        for filtered in (None, allowed):
            got = index.search(queries, 10, allowed_ids=filtered)
            want = refilled.search(queries, 10, allowed_ids=filtered)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
    else:
        index.tune(ef_search=len(ids))
        _, truth = brute_force(ids[live], vectors[live], queries, 10)
        np.testing.assert_array_equal(index.search(queries, 10)[1], truth)
        kept = live[np.isin(ids[live], allowed)]
        _, truth = brute_force(ids[kept], vectors[kept], queries, 10)
        np.testing.assert_array_equal(index.search(queries, 10, allowed_ids=allowed)[1], truth)
    _, only_removed = index.search(queries, 5, allowed_ids=ids[gone])
    assert (only_removed == -1).all()


def test_hnsw_recall_with_tombstones_stays_that_of_the_live_vectors() -> None:
    ids, vectors, index = approximate("hnsw", 3000)
    gone = np.arange(1, len(ids), 6)
    index.remove(ids[gone])
    live = np.setdiff1d(np.arange(len(ids)), gone)
    queries = clustered(100, seed=3)
    _, truth = brute_force(ids[live], vectors[live], queries, 10)
    assert recall(index.search(queries, 10)[1], truth) >= 0.95


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_tombstones_past_a_fifth_of_the_index_are_compacted_away(kind: str, vectors_added: list[int]) -> None:
    ids, vectors, index = approximate(kind, 1000)
    fifth = len(ids) // 5
    index.remove(ids[:fifth])
    assert index.removed == fifth and vectors_added == [len(ids)]  # the build's
    index.remove(ids[fifth : fifth + 1])
    assert index.removed == 0 and len(index) == len(ids) - fifth - 1
    assert vectors_added == [len(ids), len(index)]  # one re-fill with the live vectors
    assert index.ids().tolist() == ids[fifth + 1 :].tolist()
    _, found = index.search(vectors[fifth + 1 : fifth + 11], 1)
    assert found[:, 0].tolist() == ids[fifth + 1 : fifth + 11].tolist()


def test_an_id_removed_then_added_again_holds_only_its_new_vector() -> None:
    ids, vectors, index = approximate("hnsw", 500)
    index.remove(ids[:3])
    replacement = clustered(1, seed=99)
    index.add(ids[:1], replacement)
    assert len(index) == len(ids) - 2 and index.removed == 0  # compacted first: one id, one stored vector
    assert index.ids().tolist() == np.delete(ids, [1, 2]).tolist()
    assert index.search(replacement, 1)[1][0, 0] == ids[0]
    assert ids[0] not in index.search(vectors[:1], 1)[1]


def test_a_saved_index_keeps_its_tombstones(tmp_path: Path) -> None:
    ids, vectors, index = approximate("hnsw", 500)
    index.remove(ids[10:20])
    index.save(tmp_path / "text.faiss", tag="t")
    loaded, _ = VectorIndex.load(tmp_path / "text.faiss")
    assert loaded.removed == 10 and len(loaded) == len(ids) - 10 and loaded.ids().tolist() == index.ids().tolist()
    for got, want in zip(loaded.search(vectors[5:25], 5), index.search(vectors[5:25], 5), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("removed", [[10**9], [3, 3]], ids=["unknown", "repeated"])
def test_a_file_whose_removed_ids_are_not_its_own_is_damaged(tmp_path: Path, removed: list) -> None:
    index = VectorIndex.build(sparse_ids(50), clustered(50), IndexParams(type="hnsw"))
    write_index_file(tmp_path / "text.faiss", index._index, dataclasses.asdict(index.params), "", removed=removed)
    with pytest.raises(VectorIndexError, match="removed ids"):
        VectorIndex.load(tmp_path / "text.faiss")


def test_a_saved_index_keeps_the_version_of_its_vectors_until_they_change(tmp_path: Path) -> None:
    """The version (the database's, `Library` sets it) says which vectors the index holds: adding or removing any
    makes it unknown, until the caller knows which version the result is."""
    index = VectorIndex.build(sparse_ids(50), clustered(50))
    index.vectors_version = 2**62
    index.save(tmp_path / "text.faiss")
    loaded, _ = VectorIndex.load(tmp_path / "text.faiss")
    assert loaded.vectors_version == 2**62
    loaded.remove(sparse_ids(1))
    assert loaded.vectors_version is None
    index.add(np.array([10**6]), clustered(1, seed=3))
    assert index.vectors_version is None


@pytest.mark.parametrize("version", [True, 1.5, "7"])
def test_a_file_whose_version_is_no_integer_is_damaged(tmp_path: Path, version: object) -> None:
    index = VectorIndex.build(sparse_ids(5), clustered(5))
    write_index_file(tmp_path / "text.faiss", index._index, {}, "", version=version)  # type: ignore[arg-type]
    with pytest.raises(VectorIndexError, match="unreadable header metadata: version"):
        VectorIndex.load(tmp_path / "text.faiss")


# -- files ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_and_load_round_trip(tmp_path: Path, kind: str, trained: tuple) -> None:
    count = IVFPQ_MIN_VECTORS if kind == "ivfpq" else 500
    vectors, ids, queries = clustered(count), sparse_ids(count), clustered(10, seed=4)
    index = build(kind, ids, vectors, trained)
    index.save(tmp_path / "text.faiss", tag="embedder-a")
    assert folder_files(tmp_path) == ["text.faiss"]
    loaded, tag = VectorIndex.load(tmp_path / "text.faiss", IndexParams(type=kind, ef_search=99, k_factor=4))
    assert tag == "embedder-a" and loaded.type == kind and loaded.ids().tolist() == ids.tolist()
    assert loaded.params.ef_search == 99 and loaded.params.k_factor == 4 and loaded.params.nlist == index.params.nlist
    loaded.tune(ef_search=index.params.ef_search, k_factor=index.params.k_factor)
    for got, want in zip(loaded.search(queries, 5), index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_failed_save_leaves_the_old_file_and_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "text.faiss"
    VectorIndex.build(sparse_ids(20), clustered(20)).save(target)
    old_bytes = target.read_bytes()
    bigger = VectorIndex.build(sparse_ids(300), clustered(300))
    real_write = faiss.write_index

    def write_half_then_fail(index: faiss.Index, writer: faiss.IOWriter) -> None:
        real_write(index, writer)  # the bytes reach the temp file...
        raise RuntimeError("disk full")  # ...but the save does not complete

    monkeypatch.setattr(faiss, "write_index", write_half_then_fail)
    with pytest.raises(VectorIndexError, match="disk full"):
        bigger.save(target)
    assert target.read_bytes() == old_bytes
    assert folder_files(tmp_path) == ["text.faiss"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: data[:-40] + bytes(b ^ 0xFF for b in data[-40:]),  # bytes flipped in the payload
        lambda data: data[:30] + bytes([data[30] ^ 0x01]) + data[31:],  # a bit flipped in the header metadata
        lambda data: b"JUNK" + data[4:],  # not our file
        lambda data: b"",
    ],
    ids=["truncated", "flipped", "metadata", "foreign", "empty"],
)
def test_a_damaged_file_is_reported(tmp_path: Path, damage) -> None:
    target = tmp_path / "text.faiss"
    VectorIndex.build(sparse_ids(50), clustered(50)).save(target)
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(VectorIndexError):
        VectorIndex.load(target)


def test_gpu_request_without_a_gpu_falls_back_to_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present: the fallback cannot be exercised")
    vectors = clustered(100)
    index = VectorIndex.build(sparse_ids(100), vectors, use_gpu=True)
    with caplog.at_level(logging.WARNING, logger="pengi_search.vectors"):
        _, found = index.search(vectors[:3], 1)
    assert found[:, 0].tolist() == sparse_ids(100)[:3].tolist()
    assert "searching on the CPU: faiss sees no GPU" in caplog.text


class GpuCopy:
    """Stands in for faiss's GPU copy of an index (`index_cpu_to_all_gpus`), which is not thread-safe even to
    search: it searches the index it copies, and notes each search that began while another was running."""

    made: list[GpuCopy] = []

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.running = threading.Lock()
        self.overlapping = 0
        GpuCopy.made.append(self)

    def search(self, query: np.ndarray, k: int, params: faiss.SearchParameters | None = None) -> tuple:
        alone = self.running.acquire(blocking=False)
        self.overlapping += not alone
        try:
            time.sleep(0.01)  # a GPU search's time: long enough for another thread to begin one meanwhile
            return self.index.search(query, k, params=params)
        finally:
            if alone:
                self.running.release()


def test_threads_searching_on_a_gpu_take_turns_on_one_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exact index is copied to the GPU once, by the first search, and searches from several threads run there
    one at a time, each finding what it finds alone."""
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", GpuCopy, raising=False)  # faiss-cpu has no such function
    monkeypatch.setattr("pengi_search.vectors.gpu_count", lambda: 1)
    monkeypatch.setattr(GpuCopy, "made", [])
    vectors, ids = clustered(200), sparse_ids(200)
    on_gpu, on_cpu = VectorIndex.build(ids, vectors, use_gpu=True), VectorIndex.build(ids, vectors, use_gpu=False)
    together = threading.Barrier(8)

    def search(row: int) -> tuple[np.ndarray, np.ndarray]:
        together.wait()
        return on_gpu.search(vectors[row : row + 1], 5)

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(search, range(8)))
    [copy] = GpuCopy.made
    assert copy.overlapping == 0
    for row, (scores, hit_ids) in enumerate(found):
        alone_scores, alone_ids = on_cpu.search(vectors[row : row + 1], 5)
        assert hit_ids.tolist() == alone_ids.tolist() and np.allclose(scores, alone_scores)


def test_a_streamed_hnsw_build_tells_its_progress_every_few_thousand_vectors_and_a_flat_one_every_batch() -> None:
    """An HNSW graph inserts about a thousand vectors a second: told only once per batch read (50,000), a bar stood
    still for a minute at a time."""
    vectors, ids = clustered(5000, dim=4), np.arange(5000)

    def read(wanted: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        assert wanted is None  # no training sample: neither type trains
        return [(ids[:4500], vectors[:4500]), (ids[4500:], vectors[4500:])]

    class Said(list):
        def start(self, vectors: int) -> None:
            self.append(("start", vectors))

        def advance(self, vectors: int) -> None:
            self.append(("advance", vectors))

    for params, steps in ((IndexParams(type="hnsw"), [4096, 404, 500]), (IndexParams(), [4500, 500])):
        said = Said()
        index = VectorIndex.build_streamed(ids, read, params, progress=said)
        assert said == [("start", 5000), *(("advance", step) for step in steps)] and len(index) == 5000
