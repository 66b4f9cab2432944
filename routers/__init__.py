"""Routing strategies: each picks experts for queries. Registered by name, imported lazily."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.config import ExpertConfig
from orchestrator.registry import Registry
from routers.base import Strategy, StrategyOptions

STRATEGIES: Registry[Strategy] = Registry(
    "strategy",
    Strategy,
    {
        "direct": "routers.direct:DirectStrategy",
        "semantic": "routers.semantic:SemanticStrategy",
    },
)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def get_strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def create_strategy(
    name: str, experts: Sequence[ExpertConfig], options: dict[str, Any] | None = None
) -> Strategy:
    return STRATEGIES.get(name)(experts, options)


__all__ = [
    "STRATEGIES",
    "Strategy",
    "StrategyOptions",
    "create_strategy",
    "get_strategy_class",
    "list_strategies",
]
