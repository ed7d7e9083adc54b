"""`--rank caption|audio|hybrid`: each ranking against a brute-force score over every window, the default choice,
the labels in the output, and the same modes in the server and in `eval retrieval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text as sql
from typer.testing import CliRunner

from indexer.pipeline import run_index
from pengi_search.choices import By, Rank
from pengi_search.cli import app
from pengi_search.cli.common import EXIT_USAGE
from pengi_search.db import EmbedderInfo, ModelInfo, Store, TextRecord, WindowInput
from pengi_search.embedders import EmbedderSpec, TextEmbedderError, open_text_embedder
from pengi_search.evaluation.retrieval import available_rankings
from pengi_search.library import Library
from pengi_search.model_dir import ModelDir
from pengi_search.query_embedders import audio_query_embedder, query_embedder
from pengi_search.ranking import HybridIndex
from pengi_search.search import SearchScope, choose_rank, query_text
from pengi_search.vectors import l2_normalise

from .indexing import make_tiny_sentence_transformer, quick_options, write_tone
from .search_library import CAPTION, caption_library
from .serving import client_for

runner = CliRunner()
QUERY = "rain on a roof"


@pytest.fixture()
def library(captions):
    with Library.open(captions.db) as lib:
        yield lib


def brute_force(library: Library, text: str, model: str, weight: float) -> dict[int, float]:
    """Every window's hybrid score computed from the stored vectors (weight 1: caption, 0: audio)."""
    tower = open_text_embedder(EmbedderSpec(), ModelDir.read(model), "cpu")
    query = tower.embed([text])[0]
    text_ids, text_vectors = library.store.vectors("text")
    audio_ids, audio_vectors = library.store.vectors("audio")
    assert np.array_equal(text_ids, audio_ids)
    scores = weight * (l2_normalise(text_vectors) @ query) + (1 - weight) * (l2_normalise(audio_vectors) @ query)
    return dict(zip(text_ids.tolist(), scores.tolist(), strict=True))


@pytest.mark.parametrize(
    ("rank", "weight"), [(Rank.caption, 1.0), (Rank.audio, 0.0), (Rank.hybrid, 0.5), (Rank.hybrid, 0.2)]
)
def test_each_ranking_orders_every_window_by_its_score(library, tiny_model_dir, rank, weight):
    expected = brute_force(library, QUERY, str(tiny_model_dir), weight)
    hits = query_text(
        library, QUERY, SearchScope(10, By.window), model=str(tiny_model_dir), rank=rank, hybrid_weight=weight
    )
    assert len(hits) == len(expected) and {h.ranking for h in hits} == {rank}
    assert [h.window_id for h in hits] == sorted(expected, key=lambda wid: (-expected[wid], wid))
    np.testing.assert_allclose([h.score for h in hits], [expected[h.window_id] for h in hits], atol=1e-5)


def test_hybrid_weight_one_and_zero_are_the_caption_and_audio_rankings(library, tiny_model_dir):
    def order(rank, weight=0.5):
        hits = query_text(
            library, QUERY, SearchScope(10, By.window), model=str(tiny_model_dir), rank=rank, hybrid_weight=weight
        )
        return [h.window_id for h in hits]

    assert order(Rank.hybrid, 1.0) == order(Rank.caption) and order(Rank.hybrid, 0.0) == order(Rank.audio)


def many_windows(store: Store, rng: np.random.Generator, count: int = 300) -> None:
    """`count` windows of one file, each with random caption (8-d) and audio (6-d) vectors."""
    store.set_index_meta(ModelInfo("m", "0" * 64), EmbedderInfo("pengi-text:m@000000000000", 8))
    file_id = store.upsert_file("/x.wav", size=1, mtime=1.0)
    store.replace_file_windows(
        file_id,
        [
            WindowInput(
                i, i, i + 1.0, [TextRecord(CAPTION, "x")], {"text": rng.normal(size=8), "audio": rng.normal(size=6)}
            )
            for i in range(count)
        ],
    )


def test_the_hybrid_index_is_exact_where_it_must_fetch_more(tmp_path):
    """Many windows, few results: the threshold search must widen its lists before it may stop."""
    rng = np.random.default_rng(3)
    with Store.open(str(tmp_path / "many.db")) as store:
        many_windows(store, rng)
        library = Library(store)
        text_ids, text_vectors = store.vectors("text")
        _, audio_vectors = store.vectors("audio")
        for weight in (0.3, 0.7):
            caption_query, audio_query = rng.normal(size=(1, 8)), rng.normal(size=(1, 6))
            index = HybridIndex(library.vector_index("text"), library.vector_index("audio"), store, weight, 8)
            scores, ids = index.search(HybridIndex.queries(caption_query, audio_query), 5)
            truth = weight * (l2_normalise(text_vectors) @ l2_normalise(caption_query)[0])
            truth += (1 - weight) * (l2_normalise(audio_vectors) @ l2_normalise(audio_query)[0])
            best = np.argsort(-truth, kind="stable")[:5]
            assert ids[0].tolist() == text_ids[best].tolist()
            np.testing.assert_allclose(scores[0], truth[best], atol=1e-5)
            allowed = text_ids[::7]  # a filtered search ranks only the allowed windows
            _, ids = index.search(HybridIndex.queries(caption_query, audio_query), 3, allowed_ids=allowed)
            inside = np.isin(text_ids, allowed)
            best = text_ids[inside][np.argsort(-truth[inside], kind="stable")[:3]]
            assert ids[0].tolist() == best.tolist()


class Asked:
    """An index that records whether each search asked for an exact one."""

    def __init__(self, index) -> None:
        self.index, self.exact = index, []

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries, k, **how):
        self.exact.append(how.get("exact", False))
        return self.index.search(queries, k, **how)


@pytest.mark.parametrize("exact", [False, True])
def test_an_exact_hybrid_search_searches_both_indexes_exactly(tmp_path, exact):
    """`exact` (a server's pages past the first, `search_pages`): the caption and audio lists the hybrid ranking
    merges are exact searches too, else the ranking is only as exact as an HNSW or IVF-PQ index's lists."""
    with Store.open(str(tmp_path / "many.db")) as store:
        many_windows(store, np.random.default_rng(3))
        library = Library(store)
        text, audio = Asked(library.vector_index("text")), Asked(library.vector_index("audio"))
        queries = HybridIndex.queries(np.ones((1, 8)), np.ones((1, 6)))
        HybridIndex(text, audio, store, 0.5, 8).search(queries, 5, exact=exact)
    assert text.exact and set(text.exact) == set(audio.exact) == {exact}


@pytest.mark.usefixtures("ids_sorted_not_hashed")
def test_a_hybrid_query_reads_each_windows_vectors_once(tmp_path, monkeypatch):
    """Each doubling round scores the previous round's candidates again, and a search may be asked again for more
    results (`search_index`): the index reads a window's stored vectors once for all of them."""
    rng = np.random.default_rng(5)
    with Store.open(str(tmp_path / "many.db")) as store:
        many_windows(store, rng)
        library = Library(store)
        index = HybridIndex(library.vector_index("text"), library.vector_index("audio"), store, 0.5, 8)
        reads: dict[str, list[int]] = {"text": [], "audio": []}
        read = store.vectors

        def counted(kind, ids=None):
            found = read(kind, ids)
            reads[kind] += found[0].tolist()
            return found

        monkeypatch.setattr(store, "vectors", counted)
        queries = HybridIndex.queries(rng.normal(size=(1, 8)), rng.normal(size=(1, 6)))
        _, first = index.search(queries, 5)
        rounds_read = len(reads["text"])
        _, again = index.search(queries, 5)
        _, more = index.search(queries, 20)

    assert rounds_read > 2 * 5  # the lists were widened: several rounds read vectors
    assert again.tolist() == first.tolist() and more[0, :5].tolist() == first[0].tolist()
    for kind in ("text", "audio"):
        assert len(reads[kind]) == len(set(reads[kind])), f"a window's {kind} vector was read twice"


def test_the_default_ranking_follows_the_captions(tmp_path, tiny_model_dir, captions):
    with Library.open(captions.db) as library:
        assert choose_rank(library) is Rank.caption  # every window has captions
        assert choose_rank(library, Rank.hybrid) is Rank.hybrid
    partial = caption_library(str(tmp_path / "partial.db"), tmp_path / "sounds", tiny_model_dir)
    with Store.open(partial.db) as store, store.session(write=True) as session:
        session.execute(sql("DELETE FROM window_vectors WHERE kind = 'text' AND window_id = 1"))
    with Library.open(partial.db) as library:
        assert choose_rank(library) is Rank.audio  # one window waits: the audio ranking searches them all
        hits = query_text(library, "a dog barks", SearchScope(10, By.window), model=str(tiny_model_dir))
        assert {h.ranking for h in hits} == {Rank.audio} and len(hits) == 5


def test_a_model_without_text_tower_ranks_by_caption_only(tmp_path, tiny_no_text_model_dir):
    st_model = make_tiny_sentence_transformer(tmp_path / "st")
    write_tone(tmp_path / "sounds" / "a.wav", 2.0)
    embedder = f"sentence-transformers:{st_model}"
    run_index(quick_options([tmp_path / "sounds"], tmp_path / "lib.db", tiny_no_text_model_dir, text_embedder=embedder))
    with Library.open(str(tmp_path / "lib.db")) as library, pytest.raises(TextEmbedderError, match="no text tower"):
        audio_query_embedder(library, str(tiny_no_text_model_dir))
    result = runner.invoke(
        app, ["query", "x", "--db", str(tmp_path / "lib.db"), "--model", str(tiny_no_text_model_dir), "--rank", "audio"]
    )
    assert result.exit_code == EXIT_USAGE and "no text tower" in result.output


def test_the_command_line_labels_what_ranked_the_results(captions, tiny_model_dir):
    common = ["--db", captions.db, "--model", str(tiny_model_dir)]
    result = runner.invoke(app, ["query", QUERY, *common, "--rank", "audio", "--json"])
    assert result.exit_code == 0, result.output
    assert {hit["ranking"] for hit in json.loads(result.stdout)} == {"audio"}
    table = runner.invoke(app, ["query", QUERY, *common, "--rank", "audio"]).stdout
    assert table.lstrip().startswith("ranked by audio embeddings") and "5 of 5 windows have captions" in " ".join(
        table.split()
    )
    hybrid = runner.invoke(app, ["query", QUERY, *common, "--rank", "hybrid", "--hybrid-weight", "0.25"]).stdout
    assert "caption weight 0.25" in " ".join(hybrid.split())
    assert "ranked by" not in runner.invoke(app, ["query", QUERY, *common]).stdout  # the paper's ranking, as before
    for bad, message in (
        (["--rank", "loud"], "Invalid value for '--rank'"),
        (["--hybrid-weight", "2"], "--hybrid-weight"),
    ):
        result = runner.invoke(app, ["query", QUERY, *common, *bad])
        assert result.exit_code == EXIT_USAGE and message in result.output


@pytest.mark.parametrize("rank", [(), ("--rank", "audio"), ("--rank", "caption")])
def test_a_hybrid_weight_without_the_hybrid_ranking_is_refused_in_one_line(captions, tiny_model_dir, rank):
    """The weight weighs the hybrid ranking's two scores: given with another ranking (or none, which is never
    hybrid), it was read by nothing and the results came back as if it had not been given."""
    common = ["--db", captions.db, "--model", str(tiny_model_dir)]
    result = runner.invoke(app, ["query", QUERY, *common, *rank, "--hybrid-weight", "0.25"])
    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --hybrid-weight: weighs the two scores of --rank hybrid: add --rank hybrid, or leave it out"
    ]


def test_eval_retrieval_refuses_a_hybrid_weight_when_the_rankings_asked_for_leave_hybrid_out(tmp_path):
    """Refused before the set is read or a library made: no ranking it measures would read the weight."""
    result = runner.invoke(
        app,
        [
            "eval",
            "retrieval",
            str(tmp_path / "captions.csv"),
            "--rank",
            "caption",
            "--rank",
            "audio",
            "--hybrid-weight",
            "0.25",
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == EXIT_USAGE and "error: --hybrid-weight: weighs the two scores" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_server_offers_the_same_rankings(captions, tiny_model_dir):
    with Library.open(captions.db) as library:
        model = str(tiny_model_dir)
        expected = {
            rank: [h.window_id for h in query_text(library, QUERY, SearchScope(3), model=model, rank=rank)]
            for rank in Rank
        }
    with client_for(captions, tiny_model_dir) as client:
        for rank in Rank:
            hits = client.get("/api/search", params={"q": QUERY, "k": 3, "rank": rank.value}).json()
            assert [h["window_id"] for h in hits] == expected[rank] and {h["ranking"] for h in hits} == {rank.value}
        assert client.get("/api/search", params={"q": QUERY, "rank": "loud"}).status_code == 422
        assert client.get("/api/search", params={"q": QUERY, "rank": "hybrid", "hybrid_weight": 3}).status_code == 422
        page = client.get("/", params={"q": QUERY, "rank": "audio"}).text
        assert "Ranked by audio embeddings" in page
        captions = {"window_count": 5, "captioned": 5, "missing": 0, "by_mode": {"exact": 5}}
        assert client.get("/api/stats").json()["captions"] == captions


def test_eval_retrieval_reports_every_ranking(library, captions, tiny_model_dir):
    embedder = query_embedder(library, str(tiny_model_dir))
    audio = audio_query_embedder(library, str(tiny_model_dir), caption_embedder=embedder)
    assert audio is embedder  # Pengi's tower embedded the captions: one tower serves both rankings
    root = str(captions.root)
    rankings = available_rankings(library, embedder, root, audio)
    assert [r.name for r in rankings] == ["caption", "audio", "hybrid"]
    for ranking in rankings:
        found = ranking.text_to_audio([QUERY], 5)[0]
        hits = query_text(library, QUERY, SearchScope(5), model=str(tiny_model_dir), rank=Rank(ranking.name))
        assert found == [(h.path, h.score) for h in hits]  # with the scores, and no tie to add
    assert [r.name for r in available_rankings(library, embedder, root, None)] == ["caption"]
    with pytest.raises(ValueError, match="text tower"):
        available_rankings(library, embedder, root, None, ranks=[Rank.audio])


def test_the_ranking_title_keeps_every_word_on_a_narrow_terminal(captions, tiny_model_dir, monkeypatch):
    """Long paths widen the table past the terminal; its title lost the ends of its lines ("against the q")."""
    monkeypatch.setenv("COLUMNS", "60")  # read on each use (a console's width, once set, outlives the test)
    common = ["--db", captions.db, "--model", str(tiny_model_dir), "--rank", "hybrid", "--hybrid-weight", "0.25"]
    result = runner.invoke(app, ["query", QUERY, *common])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    title = " ".join(" ".join(lines[: next(i for i, line in enumerate(lines) if line.startswith("#"))]).split())
    assert title.startswith("ranked by hybrid (weighted sum of the caption and audio-embedding cosines)")
    assert title.endswith("caption weight 0.25; 5 of 5 windows have captions")
