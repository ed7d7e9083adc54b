"""The numbers and times that JSON output writes, one rule for each, so that every command (`--json`, `export`)
and the server's JSON API write them alike (README, "JSON output").

Seconds are written to the millisecond: a window's start, a file's duration, how long a run took. Scores (a
similarity, a log-probability, a label's score) to four decimals: float32 noise, which differs with the batch a
window was computed in, reaches a log-probability's sixth decimal, and a file described among others must read as
described alone (the CSV that `classify` writes gives its scores by the same rule, `score_text`). A point in time is
ISO 8601 in UTC, never epoch seconds. An unknown value is null, never a 0 that reads as a measurement.
"""

from __future__ import annotations

from datetime import datetime, timezone

SECONDS_DECIMALS = 3
SCORE_DECIMALS = 4


def json_seconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(float(seconds), SECONDS_DECIMALS)


def json_score(score: float | None) -> float | None:
    return None if score is None else round(float(score), SCORE_DECIMALS)


def score_text(score: float) -> str:
    """A score as text (a CSV cell, a table), to the decimals JSON keeps, always all of them: 0.9000, not 0.9."""
    return f"{score:.{SCORE_DECIMALS}f}"


def json_time(moment: datetime | float | None) -> str | None:
    """ISO 8601 of a datetime (the database's are in UTC), or of epoch seconds (a file's mtime) in UTC."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.isoformat()
