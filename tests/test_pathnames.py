"""File names that are not valid UTF-8: the stored, shown and JSON forms (`pengi_search.pathnames`)."""

from __future__ import annotations

import base64
import json
import os

from hypothesis import given
from hypothesis import strategies as st

from pengi_search.pathnames import (
    ESCAPE,
    from_stored,
    from_typed,
    is_utf8,
    json_text,
    path_fields,
    shown,
    to_stored,
)

from .properties import bounded

ODD = os.fsdecode(b"/sounds/caf\xe9 \xff\xfe/take 1.wav")  # Latin-1 bytes from an old share, and two stray ones
OS_NAMES = st.binary(min_size=1, max_size=40).map(os.fsdecode)  # any bytes, as Python hands them out
# Names without control characters (C1 ones included: `shown` writes U+0080 as \\x80, like the byte) or backslashes:
# `shown` writes such names with escapes for their odd bytes only.
TYPABLE_NAMES = (
    st.lists(st.integers(0x20, 0xFF).filter(lambda b: b not in (0x5C, 0x7F)), min_size=1, max_size=40)
    .map(lambda raw: os.fsdecode(bytes(raw)))
    .filter(lambda name: not any(0x80 <= ord(c) <= 0x9F for c in name))
)
TEXTS = st.text(alphabet=st.characters(codec=None), max_size=40)  # any code point, lone surrogates and U+FDD0 too


def test_valid_utf8_names_are_stored_unchanged():
    for name in ("/sounds/dog.wav", "/sons/été/çà.flac", "/音/雨.mp3", "/a b/[x]*?.wav", "/emoji/🐕.wav"):
        assert to_stored(name) is name
        assert from_stored(name) is name


def test_undecodable_bytes_are_stored_escaped_and_come_back():
    stored = to_stored(ODD)
    stored.encode("utf-8")  # what the database drivers need
    assert stored == f"/sounds/caf{ESCAPE}dce9 {ESCAPE}dcff{ESCAPE}dcfe/take 1.wav"
    assert from_stored(stored) == ODD
    assert os.fsencode(from_stored(stored)) == b"/sounds/caf\xe9 \xff\xfe/take 1.wav"


def test_the_escape_character_itself_round_trips():
    name = f"/odd/{ESCAPE}dcff {ESCAPE}"
    assert to_stored(name) == f"/odd/{ESCAPE}{ESCAPE}dcff {ESCAPE}{ESCAPE}"
    assert from_stored(to_stored(name)) == name


def test_a_stray_escape_in_old_text_is_kept():
    assert from_stored(f"a{ESCAPE}b") == f"a{ESCAPE}b"
    assert from_stored(f"a{ESCAPE}zzzz") == f"a{ESCAPE}zzzz"


def test_shown_escapes_bytes_and_control_characters():
    assert shown(ODD) == "/sounds/caf\\xe9 \\xff\\xfe/take 1.wav"
    assert shown("a\nb\tc\x1b[31m\x7f") == "a\\nb\\tc\\x1b[31m\\x7f"
    assert shown("/sons/été.wav") == "/sons/été.wav"
    assert shown("\ud800") == "\\ud800"


def test_json_keeps_the_name_and_adds_its_bytes():
    fields = path_fields(ODD)
    assert base64.b64decode(fields["path_bytes"]) == os.fsencode(ODD)
    text = json_text({**fields, "n": 1})
    text.encode("utf-8")
    assert "\\udcff" in text
    assert json.loads(text)["path"] == ODD
    assert path_fields("/sons/été.wav", "file") == {"file": "/sons/été.wav"}
    assert path_fields(ODD, readable=True)["path"] == shown(ODD)


@bounded(200)
@given(TEXTS)
def test_any_text_is_stored_as_valid_unicode_and_comes_back(text):
    stored = to_stored(text)
    stored.encode("utf-8")
    assert from_stored(stored) == text
    if is_utf8(text) and ESCAPE not in text:
        assert stored == text


@bounded(200)
@given(TEXTS, TEXTS)
def test_storing_keeps_concatenation_and_prefixes(head, tail):
    assert to_stored(head + tail) == to_stored(head) + to_stored(tail)
    whole = to_stored(head + tail)
    for cut in range(len(head) + len(tail) + 1):
        prefix = (head + tail)[:cut]
        assert whole.startswith(to_stored(prefix))
    other = head + "x"
    if not (head + tail).startswith(other):
        assert not whole.startswith(to_stored(other))


@bounded(200)
@given(OS_NAMES)
def test_any_os_name_survives_json_and_is_shown_printable(name):
    data = json.loads(json_text(path_fields(name)))
    assert os.fsencode(data["path"]) == os.fsencode(name)
    assert base64.b64decode(data.get("path_bytes", base64.b64encode(os.fsencode(name)))) == os.fsencode(name)
    visible = shown(name)
    visible.encode("utf-8")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in visible)


def test_typed_bytes_name_odd_files():
    assert from_typed("/sounds/caf\\xe9 \\xff\\xFE/*.wav") == os.fsdecode(b"/sounds/caf\xe9 \xff\xfe/*.wav")
    assert from_typed("caf\\xc3\\xa9") == "café"  # bytes that are valid UTF-8 name the character, as the OS does
    assert from_typed("*/dogs/*") == "*/dogs/*"
    assert from_typed("a\\x41b [\\]xff") == "a\\x41b [\\]xff"  # ASCII escapes and a bracketed backslash stay text


@bounded(200)
@given(TYPABLE_NAMES)
def test_a_shown_name_typed_back_is_the_name(name):
    assert from_typed(shown(name)) == name
