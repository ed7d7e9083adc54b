"""The rules every JSON output follows (README, "JSON output"): one name for each thing, whatever command or
endpoint writes it. `breaches` lists where a printed value breaks one, so that a test names them all at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

# Names a concept had in some command before, each with the one it has everywhere now.
RETIRED_KEYS = {"file": "path", "reason": "error", "mtime": "modified_at"}


def breaches(data: Any, where: str = "$") -> list[str]:
    """Every place in `data` (parsed JSON) that breaks a rule, as `where.key: what is wrong`."""
    found: list[str] = []
    if isinstance(data, list):
        for index, item in enumerate(data):
            found += breaches(item, f"{where}[{index}]")
    elif isinstance(data, dict):
        for key, value in data.items():
            found += [f"{where}.{key}: {problem}" for problem in _value_breaches(key, value, data)]
            found += breaches(value, f"{where}.{key}")
    return found


def _value_breaches(key: str, value: Any, holder: dict[str, Any]) -> list[str]:
    if key in RETIRED_KEYS:
        return [f"named {RETIRED_KEYS[key]} everywhere else"]
    checks = {
        "path": isinstance(value, str),
        "windows": isinstance(value, list),
        "window_count": type(value) is int,
        "score": _rounded(value, 4),
        "seconds": _rounded(value, 3),
    }
    if key in checks and not checks[key]:
        return [f"{value!r} breaks the rule for {key}"]
    if key == "scores" and isinstance(value, dict) and not all(_rounded(score, 4) for score in value.values()):
        return [f"{value!r}: scores to 4 decimals"]
    if key.endswith("_s") and not _rounded(value, 3):
        return [f"{value!r}: seconds to 3 decimals, or null"]
    if key.endswith("_at") and not _utc_time(value):
        return [f"{value!r}: a time is ISO 8601 in UTC, or null"]
    if key == "error" and "path" in holder and not (value is None or isinstance(value, str)):
        return [f"{value!r}: a file's error is a string, or null"]
    if key == "duration_s" and isinstance(holder.get("error"), str) and value is not None:
        return [f"{value!r}: the duration of a file that failed is not known (null)"]
    return []


def _rounded(value: Any, decimals: int) -> bool:
    if value is None or isinstance(value, bool):
        return value is None
    return isinstance(value, int | float) and round(value, decimals) == value


def _utc_time(value: Any) -> bool:
    if value is None:
        return True
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return moment.utcoffset() == timedelta(0)
