"""A search's options as the server takes them (the CLI's `query` and `similar` options, and the page asked for),
checked in the API's words (`InvalidParameter`, 422)."""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import DEFAULT_HYBRID_WEIGHT, By, Rank
from ..errors import OptionError
from ..ranking import check_hybrid_weight
from ..search_filters import Filters
from .errors import InvalidParameter


@dataclass(frozen=True)
class SearchParams:
    """The CLI's search options (`query` and `similar`; `rank` and `hybrid_weight` are `query`'s)."""

    k: int = 10
    by: str = "file"
    min_score: float | None = None
    path: str | None = None
    ext: str | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    rank: str | None = None  # None: caption once every window has captions, else audio
    hybrid_weight: float = DEFAULT_HYBRID_WEIGHT
    offset: int = 0  # results skipped: the hits are those from offset + 1 on of the pages of `k` (`search_pages`)
    pages: int = 1  # pages of `k` results from `offset` on (a search page shown after "More results")

    def ranking(self) -> tuple[Rank | None, float]:
        """The ranking asked for (None: the default) and the hybrid weight, checked."""
        if self.rank and self.rank not in {r.value for r in Rank}:
            raise InvalidParameter("rank", f"{self.rank!r}: use one of {', '.join(r.value for r in Rank)}")
        try:
            weight = check_hybrid_weight(self.hybrid_weight)
        except ValueError as exc:
            raise InvalidParameter("hybrid_weight", str(exc)) from None
        return (Rank(self.rank) if self.rank else None), weight

    def filters(self) -> Filters:
        if self.by not in {b.value for b in By}:
            raise InvalidParameter("by", f"{self.by!r}: use one of {', '.join(b.value for b in By)}")
        if self.path and not self.path.startswith(("/", "*", "?", "[")):
            # The CLI takes a relative glob from the current folder (and ~ as the home): the server's own, which
            # means nothing to its client and would match nothing, silently.
            raise InvalidParameter(
                "path", f"{self.path!r}: a glob over full paths starts with / or a wildcard, e.g. */{self.path}"
            )
        try:
            return Filters.from_options(
                min_score=self.min_score,
                path=self.path or None,
                ext=self.ext or None,
                min_duration=self.min_duration,
                max_duration=self.max_duration,
            )
        except OptionError as exc:
            raise InvalidParameter.of(exc) from None
