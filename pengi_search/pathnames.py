"""File names as the OS gives them: stored without loss, shown escaped, written to JSON without loss.

A POSIX file name is bytes. Python hands names out as `str` decoded with `os.fsdecode` (UTF-8 with
'surrogateescape'), so a name that is not valid UTF-8 (bytes 0xff 0xfe from an old Samba share) holds lone
surrogates U+DC80..U+DCFF, one per undecodable byte. Such a `str` works with every `os` function and round-trips
through `os.fsencode`, but database drivers, JSON encoders and UTF-8 terminals refuse it. This module gives the
three forms such a name takes elsewhere:

- stored (`to_stored` / `from_stored`): every lone surrogate becomes `ESCAPE` and its four hex digits, `ESCAPE`
  itself is doubled, every other character stays as it is. Names that are valid UTF-8 (and do not hold the
  noncharacter U+FDD0) are stored exactly as before, so existing databases stay valid. The mapping works character
  by character with prefix-free replacements, so it keeps concatenation and prefixes: a folder is a prefix of a
  path exactly when the stored folder is a prefix of the stored path, and the store's prefix queries still work.
- shown (`shown`): for terminals and text files; undecodable bytes as `\\xff`, control characters as `\\n`,
  `\\t` or `\\x1b`. Not reversible: JSON output is.
- typed (`from_typed`): a name as a user can type it in a glob, in a terminal or a web form, where such bytes
  cannot be typed: `\\xHH` (HH from 80 to ff) is the byte HH, as `shown` writes it, so a shown name pasted back
  names the file. A real backslash followed by x and such digits is written `[\\]xHH` (a glob bracket).
- JSON (`json_text`, `path_fields`): the `str` itself, with lone surrogates written as JSON `\\udcff` escapes (a
  JSON parser in Python gives back the very `str`, and `os.fsencode` the bytes), plus a `<key>_bytes` field with
  the name's bytes in base64 for a name that is not valid UTF-8.
"""

from __future__ import annotations

import base64
import codecs
import json
import os
import re
from typing import Any

ESCAPE = "\ufdd0"  # a Unicode noncharacter: reserved for a program's own use, not found in real file names
_TO_ESCAPE = re.compile("[\ud800-\udfff\ufdd0]")
_ESCAPED = re.compile("\ufdd0(?:\ufdd0|(d[89a-f][0-9a-f]{2}))")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TYPED_BYTE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED_CONTROLS = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def to_stored(text: str) -> str:
    """`text` as valid Unicode for a database column (see the module docstring); undone by `from_stored`."""
    if not _TO_ESCAPE.search(text):
        return text
    return _TO_ESCAPE.sub(lambda m: ESCAPE * 2 if m.group() == ESCAPE else f"{ESCAPE}{ord(m.group()):04x}", text)


def from_stored(text: str) -> str:
    """The `str` that `to_stored` turned into `text`. An `ESCAPE` that starts no escape is kept as it is."""
    if ESCAPE not in text:
        return text
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)) if m.group(1) else ESCAPE, text)


def is_utf8(path: str) -> bool:
    """Whether the name's bytes are valid UTF-8 (it holds no lone surrogate)."""
    return not _SURROGATE.search(path)


def from_typed(text: str) -> str:
    """`text` with each `\\xHH` (HH 80-ff) turned into the byte HH, the result decoded as the OS's names are
    (`os.fsdecode`): a byte that is not part of valid UTF-8 becomes a surrogate escape, `caf\\xc3\\xa9` is
    `café`."""
    if not _TYPED_BYTE.search(text):
        return text
    parts = _TYPED_BYTE.split(text)  # text, hex digits, text, hex digits, ..., text
    raw = b"".join(bytes([int(part, 16)]) if i % 2 else os.fsencode(part) for i, part in enumerate(parts))
    return os.fsdecode(raw)


def shown(text: str) -> str:
    """`text` for a terminal or a text file: undecodable bytes as `\\xNN`, control characters escaped."""
    if not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(_escape_unprintable, text)


def _escape_unprintable(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that `os.fsdecode` could not decode
        return f"\\x{code - 0xDC00:02x}"
    if code >= 0xD800:  # another lone surrogate: not from the OS, but shown rather than refused
        return f"\\u{code:04x}"
    return _NAMED_CONTROLS.get(char, f"\\x{code:02x}")


def path_fields(path: str | os.PathLike[str], key: str = "path", *, readable: bool = False) -> dict[str, str]:
    """`{key: path}` for JSON, plus `{key}_bytes` (base64 of the name's bytes) when the name is not valid UTF-8.

    `readable`: the name as `shown` writes it, for JSON encoders that refuse lone surrogates (the server's);
    `{key}_bytes` still says exactly which file it is.
    """
    text = os.fspath(path)
    fields = {key: shown(text) if readable else text}
    if not is_utf8(text):
        fields[f"{key}_bytes"] = base64.b64encode(os.fsencode(text)).decode("ascii")
    return fields


def json_text(data: Any, *, indent: int | None = None, ascii_only: bool = False) -> str:
    """`json.dumps` that keeps non-ASCII text readable and writes lone surrogates as `\\uXXXX` escapes (valid
    JSON, encodable as UTF-8), so that file names that are not valid UTF-8 survive a JSON round trip.

    `ascii_only`: every non-ASCII character escaped, for a stream that cannot write UTF-8 (`writes_utf8`).
    """
    text = json.dumps(data, ensure_ascii=ascii_only, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def writes_utf8(stream: Any) -> bool:
    """Whether `stream` encodes text as UTF-8. Elsewhere (a Latin-1 locale, `PYTHONIOENCODING`, a Windows code
    page) a character it cannot encode comes out as Python's `\\U0001f600`, which is no JSON escape, or as a byte
    of that encoding where a JSON reader expects UTF-8: JSON for such a stream is written in ASCII."""
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "utf-8"
    except LookupError:
        return False
