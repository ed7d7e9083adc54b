"""Cutting work into batches: fixed sizes for streams, doubling ones for work that usually ends early."""

from pengi_search.chunking import chunk_slices, chunked, doubling_chunks


def test_chunked_reads_a_stream_in_lists_of_size_the_last_shorter():
    assert list(chunked(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []


def test_chunk_slices_cover_the_range_once():
    assert list(chunk_slices(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]


def test_doubling_chunks_start_at_first_and_double_until_every_item_is_given_once():
    pieces = list(doubling_chunks(list(range(20)), first=3))
    assert [len(piece) for piece in pieces] == [3, 6, 11]
    assert [item for piece in pieces for item in piece] == list(range(20))
    assert list(doubling_chunks([], first=3)) == []
    assert list(doubling_chunks([1, 2], first=0)) == [[1], [2]]
