"""The length an MPEG audio file (MP3, MP2, MP1) states: the frame count in the Xing, Info or VBRI header of its first
frame. MP2 and MP1 files seldom have one (FFmpeg writes it for MP3 only): they then state no length, as below.

An MPEG audio stream is a run of frames with no length field. Encoders that know the length write it into a first,
silent frame: LAME's "Xing" (VBR) or "Info" (CBR) header, or Fraunhofer's "VBRI". Without one, a decoder's length is
an estimate from the file's size and the first frame's bit rate: too long by the bytes of the tags (an ID3v2 tag at
the start, which may hold cover art), and off by any factor for a VBR stream whose first frame is not typical. Such an
estimate is no evidence of a cut, and libsndfile even stops decoding where it ends. `stated_frame_count` tells
the two kinds of file apart; `pengi_search.audio_decoders` then trusts only a stated count. (With a count, the
decoders take the encoder's delay and padding that LAME's tag records off both the length and the samples, so on a
whole file the two agree exactly; only a cut leaves the samples short.)
"""

from __future__ import annotations

import os
from typing import BinaryIO

ID3V2_HEADER_BYTES = 10
# How far past the tags the first frame is looked for: libmpg123 and FFmpeg skip junk there too (a stray byte).
SEARCH_BYTES = 1 << 16
_VBRI_OFFSET = 4 + 32  # after the frame header and 32 bytes, in every MPEG version and channel mode


def stated_frame_count(path: str | os.PathLike[str]) -> int | None:
    """The frames the file's Xing, Info or VBRI header counts; None when its first frame has no such count.

    A junk byte pair that looks like a frame header before the real first frame hides the count (None): the file's
    length is then taken as unknown, never as shorter than it is."""
    with open(path, "rb") as file:
        file.seek(_after_id3v2_tags(file))
        data = file.read(SEARCH_BYTES)
    start = _first_frame(data)
    return None if start is None else _frame_count(data[start:])


def _after_id3v2_tags(file: BinaryIO) -> int:
    """The offset just past the ID3v2 tags at the start of the file (0 when there are none)."""
    offset = 0
    while True:
        file.seek(offset)
        header = file.read(ID3V2_HEADER_BYTES)
        # "ID3", version, revision, flags, then a size of four 7-bit bytes ("syncsafe": no byte has its top bit set)
        if len(header) < ID3V2_HEADER_BYTES or header[:3] != b"ID3" or any(byte & 0x80 for byte in header[6:]):
            return offset
        size = 0
        for byte in header[6:]:
            size = size << 7 | byte
        footer = ID3V2_HEADER_BYTES if header[5] & 0x10 else 0
        offset += ID3V2_HEADER_BYTES + size + footer


def _first_frame(data: bytes) -> int | None:
    """Where the first valid MPEG audio frame header in `data` starts."""
    at = data.find(b"\xff")
    while 0 <= at <= len(data) - 4:
        if _is_frame_header(data[at : at + 4]):
            return at
        at = data.find(b"\xff", at + 1)
    return None


def _is_frame_header(header: bytes) -> bool:
    """Sync bits set, and no reserved value for the version, layer, bit rate or sample rate."""
    version, layer = header[1] >> 3 & 0b11, header[1] >> 1 & 0b11
    bitrate, sample_rate = header[2] >> 4, header[2] >> 2 & 0b11
    return header[1] & 0xE0 == 0xE0 and version != 0b01 and layer != 0 and bitrate != 0b1111 and sample_rate != 0b11


def _frame_count(frame: bytes) -> int | None:
    """The frame count of the Xing/Info or VBRI header in `frame` (which starts at its header), if there is one."""
    mpeg1, mono = frame[1] >> 3 & 0b11 == 0b11, frame[3] >> 6 == 0b11
    # Xing and Info follow the frame's side information, whose size depends on the MPEG version and channel mode.
    xing = 4 + (17 if mono else 32) if mpeg1 else 4 + (9 if mono else 17)
    count = None
    if frame[xing : xing + 4] in (b"Xing", b"Info") and _u32(frame, xing + 4) & 1:  # flag 1: the count is there
        count = _u32(frame, xing + 8)
    elif frame[_VBRI_OFFSET : _VBRI_OFFSET + 4] == b"VBRI":
        count = _u32(frame, _VBRI_OFFSET + 14)  # after version, delay, quality (2 bytes each) and the byte count
    return count or None  # a count of 0 (or a header cut short) states nothing


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big") if len(data) >= at + 4 else 0
