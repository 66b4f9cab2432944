"""``direct``: the client named an expert; send it there and nowhere else."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.types import Candidate, Decision, Query
from routers.base import Strategy, StrategyOptions


class DirectOptions(StrategyOptions):
    expert: str | None = None
    """Expert for queries that name none (default: the first expert)."""


class DirectStrategy(Strategy):
    name = "direct"
    Options = DirectOptions

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        return [self.route_to(self.options.expert or self.experts[0].name) for _ in queries]  # type: ignore[attr-defined]

    def route_to(self, expert: str) -> Decision:
        """The client asked for ``expert`` by name: no fallback to other experts."""
        return Decision(
            strategy=self.name,
            experts=(expert,),
            candidates=(Candidate(expert, 1.0),),
            reason=f"the request named expert '{expert}'",
        )
