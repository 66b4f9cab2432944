"""``random``: a uniformly random expert per query — the floor any strategy must beat."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from orchestrator.config import ExpertConfig
from orchestrator.errors import ConfigError
from orchestrator.types import Candidate, Decision, Query
from routers.base import Strategy, StrategyOptions


class RandomOptions(StrategyOptions):
    seed: int | None = Field(None, description="Seed for reproducible choices (None = fresh).")
    experts: list[str] = Field(
        default_factory=list, description="Pick among these experts only (default: all)."
    )


class RandomStrategy(Strategy):
    name = "random"
    Options = RandomOptions

    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        options: StrategyOptions | dict[str, Any] | None = None,
        *,
        artifacts_dir: Path | None = None,
    ) -> None:
        super().__init__(experts, options, artifacts_dir=artifacts_dir)
        opts: RandomOptions = self.options  # type: ignore[assignment]
        names = self.expert_names()
        unknown = sorted(set(opts.experts) - set(names))
        if unknown:
            raise ConfigError(
                f"routing.strategies.random.experts: {unknown} are no experts; valid: {names}"
            )
        self._pool = list(opts.experts) or names
        self._rng = np.random.default_rng(opts.seed)
        self._lock = threading.Lock()

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        n = len(self._pool)
        with self._lock:
            orders = [self._rng.permutation(n) for _ in queries]
        return [
            Decision(
                strategy=self.name,
                experts=(self._pool[int(order[0])],),
                candidates=tuple(Candidate(self._pool[int(i)], 1.0 / n) for i in order),
                reason=f"uniformly random among {n} experts",
            )
            for order in orders
        ]
