"""``knn``: RouterBench's kNN router over sentence embeddings.

The query's ``k`` nearest training prompts (cosine similarity of MiniLM embeddings) predict
each model's quality (the neighbours' mean recorded score) and cost (their mean recorded
cost); the expert with the best ``quality − cost_weight · cost / cost_scale`` wins.
``cost_weight`` is the knob. With ``k`` unset, training picks it on the validation part of
the training split (best accuracy at cost weight 0) from ``k_grid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from orchestrator.evaluation.datasets import RoutingDataset, split
from orchestrator.types import Decision, Query
from routers.base import StrategyOptions
from routers.trainable import (
    COST_WEIGHTS,
    FitResult,
    TrainableOptions,
    TrainableStrategy,
    embed,
    utility_order,
)


class KNNOptions(TrainableOptions):
    cost_weight: float = Field(0.0, ge=0, description="Quality/cost knob (0 = quality only).")
    k: int | None = Field(None, ge=1, description="Neighbours; None = chosen on validation.")
    k_grid: list[int] = Field(
        default_factory=lambda: [5, 10, 20, 40, 80], description="Training: k values tried."
    )


class KNNStrategy(TrainableStrategy):
    name = "knn"
    Options = KNNOptions
    knob: ClassVar[str | None] = "cost_weight"

    @classmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        opts: KNNOptions = options  # type: ignore[assignment]
        x = embed(data.prompts, opts.embedding_model)
        scores = np.nan_to_num(data.scores, nan=0.0).astype(np.float32)
        costs = data.costs.astype(np.float32)
        metrics: dict[str, Any] = {"index_rows": len(data)}
        k = opts.k
        if k is None:
            fit_part, valid = split(data, opts.valid_fraction, seed=opts.seed, salt="knn-valid")
            if len(valid) and len(fit_part):
                xf = embed(fit_part.prompts, opts.embedding_model)
                xv = embed(valid.prompts, opts.embedding_model)
                sf = np.nan_to_num(fit_part.scores, nan=0.0)
                vs = np.nan_to_num(valid.scores, nan=0.0)
                tried = {}
                for kk in opts.k_grid:
                    kk = min(kk, len(fit_part))
                    q, _ = _neighbour_means(xv, xf, sf, fit_part.costs, kk)
                    tried[kk] = float(vs[np.arange(len(valid)), q.argmax(axis=1)].mean())
                k = max(tried, key=lambda kk: (tried[kk], -kk))
                metrics["k_valid_accuracy"] = tried
            else:
                k = opts.k_grid[0]
        metrics["k"] = k
        state = {
            "models": list(data.models),
            "embeddings": x.astype(np.float32),
            "scores": scores,
            "costs": costs,
            "k": int(min(k, len(data))),
            "cost_scale": float(data.costs.mean(axis=0).max()),
        }
        return FitResult(state, metrics)

    @classmethod
    def knob_values(cls, state: dict[str, Any]) -> list[float]:
        return list(COST_WEIGHTS)

    def load_state(self, state: dict[str, Any]) -> None:
        opts: KNNOptions = self.options  # type: ignore[assignment]
        self._x = np.asarray(state["embeddings"], dtype=np.float32)
        self._scores = np.asarray(state["scores"], dtype=np.float32)
        self._costs = np.asarray(state["costs"], dtype=np.float32)
        self._k = int(opts.k or state["k"])
        self._scale = float(state["cost_scale"])

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        self.ensure_ready()
        opts: KNNOptions = self.options  # type: ignore[assignment]
        xq = self.embedder().encode([q.text for q in queries])
        quality, cost = _neighbour_means(xq, self._x, self._scores, self._costs, self._k)
        orders, utility = utility_order(quality, cost, opts.cost_weight, self._scale, self.served)
        decisions = []
        for r, order in enumerate(orders):
            j = int(order[0])
            decisions.append(
                self.decision(
                    order.tolist(),
                    utility[r],
                    f"{self._k} nearest recorded prompts → {self.expert_of[j]} (predicted "
                    f"quality {quality[r, j]:.2f}, ${cost[r, j]:.6f}/query)",
                    {"k": self._k, "cost_weight": opts.cost_weight},
                )
            )
        return decisions


def _neighbour_means(
    xq: np.ndarray, x: np.ndarray, scores: np.ndarray, costs: np.ndarray, k: int, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Mean score and cost of each query's ``k`` most similar rows of ``x``."""
    k = max(1, min(k, x.shape[0]))
    quality = np.zeros((xq.shape[0], scores.shape[1]), dtype=np.float64)
    cost = np.zeros_like(quality)
    for start in range(0, xq.shape[0], chunk):
        sims = xq[start : start + chunk] @ x.T
        if k < x.shape[0]:
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(x.shape[0]), sims.shape)
        quality[start : start + chunk] = scores[idx].mean(axis=1)
        cost[start : start + chunk] = costs[idx].mean(axis=1)
    return quality, cost
