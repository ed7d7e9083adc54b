"""The released Pengi checkpoints: where each lives, the tokenizers its variant uses, and what a person is told
before it is downloaded. A catalogue only: `models.fetch_release` fetches them (through `download`), and commands,
`doctor` and the tokenizers read it without importing either.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    """A released checkpoint: where it lives, which tokenizers (keys of `TOKENIZERS`) its variant uses, and what
    a person is told before it is downloaded (`summary`, `approx_size`)."""

    name: str
    url: str
    filename: str
    tokenizers: tuple[str, ...]
    summary: str
    approx_size: str  # as published; the exact size is what `download` measures and records


# Hugging Face hub names of the tokenizers, keyed by the folder name they are saved under.
TOKENIZERS: dict[str, str] = {"gpt2": "gpt2", "clip": "openai/clip-vit-base-patch16"}

# Zenodo record 8387083. Digests are not pinned: `download` records what it measured in <dest>.json.
# base_no_text_enc feeds the prompt through GPT-2's own embeddings, so it needs no CLIP tokenizer.
RELEASE_PAGE = "https://zenodo.org/records/8387083"
RELEASE_LICENCE = f"the terms of the Zenodo record ({RELEASE_PAGE}); Microsoft's Pengi code is MIT-licensed"
RELEASES: dict[str, Release] = {
    release.name: release
    for release in (
        Release(
            "base",
            "https://zenodo.org/records/8387083/files/base.pth?download=1",
            "base.pth",
            ("gpt2", "clip"),
            "Pengi with its CLIP text encoder (text search uses it)",
            "about 2.2 GB",
        ),
        Release(
            "base_no_text_enc",
            "https://zenodo.org/records/8387083/files/base_no_text_enc.pth?download=1",
            "base_no_text_enc.pth",
            ("gpt2",),
            "Pengi without a text encoder",
            "about 2 GB",
        ),
    )
}
DEFAULT_RELEASE = "base"  # what commands use, and fetch on first use, when no model is named
