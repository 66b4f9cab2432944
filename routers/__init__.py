"""Routing strategies: each picks experts for queries. Registered by name, imported lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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
        "coe": "routers.coe:CoEStrategy",
        "knn": "routers.knn:KNNStrategy",
        "threshold": "routers.threshold:ThresholdStrategy",
        "random": "routers.random_strategy:RandomStrategy",
        "expertrag": "routers.expertrag:ExpertRAGStrategy",
        "mot": "routers.mot.strategy:MoTStrategy",
        "moe2": "routers.moe2:Moe2Strategy",
        "symbolic-moe": "routers.symbolic_moe:SymbolicMoEStrategy",
    },
)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def get_strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def create_strategy(
    name: str,
    experts: Sequence[ExpertConfig],
    options: dict[str, Any] | None = None,
    *,
    artifacts_dir: Path | None = None,
) -> Strategy:
    """A constructed (not yet set up) strategy; trainable ones read artifacts_dir."""
    return STRATEGIES.get(name)(experts, options, artifacts_dir=artifacts_dir)


__all__ = [
    "STRATEGIES",
    "Strategy",
    "StrategyOptions",
    "create_strategy",
    "get_strategy_class",
    "list_strategies",
]
