"""Fakes that isolate units: a strategy that ranks experts by config order (or by a keyword)."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.types import Decision, Query
from routers.base import Strategy, StrategyOptions


class KeywordOptions(StrategyOptions):
    k: int = 1
    aggregator: str | None = None


class KeywordStrategy(Strategy):
    """Picks the first expert whose name appears in the query, else config order."""

    name = "keyword"
    Options = KeywordOptions

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        opts: KeywordOptions = self.options  # type: ignore[assignment]
        out = []
        for q in queries:
            scores = [
                2.0 if e.name in q.text else 1.0 / (i + 1) for i, e in enumerate(self.experts)
            ]
            candidates = self.ranked(scores)
            k = q.options.k or opts.k
            out.append(
                Decision(
                    strategy="keyword",
                    experts=tuple(c.expert for c in candidates[:k]),
                    candidates=candidates,
                    reason="keyword match" if scores[0] else "config order",
                    aggregator=opts.aggregator,
                )
            )
        return out
