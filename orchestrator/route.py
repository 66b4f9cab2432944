"""Route stage: the configured strategies, built lazily, turn a query into a :class:`Decision`.

Strategies run off the event loop (they embed, classify); a named expert bypasses them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from orchestrator.config import OrchestratorConfig
from orchestrator.errors import InvalidRequestError
from orchestrator.ingress import Target
from orchestrator.types import Decision, Query
from routers import Strategy, create_strategy, list_strategies
from routers.direct import DirectStrategy


class StrategySet:
    """Every strategy the server can use, each constructed and set up on first use."""

    def __init__(self, config: OrchestratorConfig) -> None:
        self.config = config
        self._strategies: dict[str, Strategy] = {}
        self._lock = threading.Lock()
        self._direct = DirectStrategy(config.experts)

    def names(self) -> list[str]:
        return list_strategies()

    def get(self, name: str) -> Strategy:
        with self._lock:
            strategy = self._strategies.get(name)
            if strategy is None:
                options = self.config.routing.strategies.get(name, {})
                strategy = create_strategy(
                    name, self.config.experts, options, artifacts_dir=self.config.artifacts_dir
                )
                strategy.setup()
                self._strategies[name] = strategy
            return strategy

    def warm(self, names: Sequence[str]) -> None:
        for n in names:
            self.get(n)

    async def decide(self, query: Query, target: Target) -> Decision:
        if target.expert is not None:
            return self._direct.route_to(target.expert)
        name = query.options.strategy or target.strategy or self.config.routing.default_strategy
        if name not in self.names() and ":" not in name:
            raise InvalidRequestError(
                f"unknown strategy '{name}'; valid: {', '.join(self.names())}", param="strategy"
            )
        strategy = await asyncio.to_thread(self.get, name)
        (decision,) = await asyncio.to_thread(strategy.route, [query])
        return decision

    async def decide_batch(self, queries: Sequence[Query], name: str) -> list[Decision]:
        strategy = await asyncio.to_thread(self.get, name)
        return await asyncio.to_thread(strategy.route, list(queries))
