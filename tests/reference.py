"""Finding the reference fixtures: numbers the original Pengi code computed (see ../shared/fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pengi-reference"
VARIANTS = ("base", "base_no_text_enc")


def _fixture_dirs_under(path: Path) -> list[Path]:
    if (path / "fixture.json").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/fixture.json"))


def reference_roots() -> list[Path]:
    """PENGI_REFERENCE_FIXTURES (os.pathsep-separated) or the shared default."""
    env = os.environ.get("PENGI_REFERENCE_FIXTURES")
    return [Path(p) for p in env.split(os.pathsep) if p] if env else [DEFAULT_ROOT]


def fixture_dirs() -> list[Path]:
    dirs = [d for root in reference_roots() for d in _fixture_dirs_under(root)]
    return dirs


def require_reference() -> bool:
    return os.environ.get("PENGI_REQUIRE_REFERENCE", "") not in ("", "0")


def missing_reference(what: str) -> None:
    """Skip, or fail under PENGI_REQUIRE_REFERENCE=1 (CI), when reference fixtures are absent."""
    message = f"reference fixtures not found: {what} (looked in {', '.join(map(str, reference_roots()))})"
    if require_reference():
        pytest.fail(message)
    pytest.skip(message)


def full_size_keys_file() -> Path | None:
    for root in reference_roots():
        for candidate in (root / "full_size_state_dict_keys.json", root.parent / "full_size_state_dict_keys.json"):
            if candidate.is_file():
                return candidate
    return None
