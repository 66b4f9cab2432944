"""``threshold``: a RouteLLM-style cost-aware router between a strong and a weak model.

A classifier (MiniLM embedding → ``LogisticRegression``) predicts the *strong model's win
rate*: the probability that the strong model scores better than the weak one on this query
(RouteLLM's ``calculate_strong_win_rate``; here learned from recorded outcomes, label =
strong score > weak score). A query goes to the strong model when that probability is at
least ``threshold`` — the knob: 0 sends everything to the strong model, above 1 nothing.

Unless given, training picks the strong model (the most accurate on the training split) and
the weak one (the most accurate among models costing at most ``weak_max_cost_ratio`` of the
strong one; else the cheapest). The knob values swept by eval are quantiles of the predicted
win rate on the validation part of the training split, so the curve spreads from all-weak to
all-strong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from orchestrator.errors import ConfigError
from orchestrator.evaluation.datasets import RoutingDataset, split
from orchestrator.types import Decision, Query
from routers.base import StrategyOptions
from routers.trainable import FitResult, TrainableOptions, TrainableStrategy, embed


class ThresholdOptions(TrainableOptions):
    threshold: float = Field(
        0.5, ge=0, description="Route to the strong model when its predicted win rate ≥ this."
    )
    strong: str | None = Field(None, description="Training: the strong recorded model.")
    weak: str | None = Field(None, description="Training: the weak recorded model.")
    weak_max_cost_ratio: float = Field(
        0.25, gt=0, description="Training: the auto-picked weak model costs at most this share."
    )
    C: float = Field(1.0, gt=0, description="Training: inverse L2 strength of the classifier.")


class ThresholdStrategy(TrainableStrategy):
    name = "threshold"
    Options = ThresholdOptions
    knob: ClassVar[str | None] = "threshold"

    @classmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        opts: ThresholdOptions = options  # type: ignore[assignment]
        quality = np.nanmean(data.scores, axis=0)
        cost = data.costs.mean(axis=0)
        strong = (
            data.model_index(opts.strong) if opts.strong else int(np.lexsort((cost, -quality))[0])
        )
        if opts.weak:
            weak = data.model_index(opts.weak)
        else:
            cheap = [
                j
                for j in range(len(data.models))
                if j != strong and cost[j] <= opts.weak_max_cost_ratio * cost[strong]
            ]
            others = [j for j in range(len(data.models)) if j != strong]
            weak = (
                max(cheap, key=lambda j: quality[j])
                if cheap
                else min(others, key=lambda j: cost[j])
            )
        if weak == strong:
            raise ConfigError("threshold: the strong and weak models must differ")

        def labels(d: RoutingDataset) -> np.ndarray:
            s = np.nan_to_num(d.scores, nan=0.0)
            return np.asarray(s[:, strong] > s[:, weak])

        fit_part, valid = split(data, opts.valid_fraction, seed=opts.seed, salt="threshold-valid")
        metrics: dict[str, Any] = {
            "strong": data.models[strong],
            "weak": data.models[weak],
            "strong_win_rate_train": float(labels(data).mean()),
        }
        if len(valid) and len(fit_part):
            probe = _fit(fit_part.prompts, labels(fit_part), opts)
            p_valid = _win_rate(probe, embed(valid.prompts, opts.embedding_model))
            y_valid = labels(valid)
            metrics["valid_rows"] = len(valid)
            if 0 < y_valid.sum() < len(y_valid):
                from sklearn.metrics import roc_auc_score

                metrics["win_rate_auc_valid"] = float(roc_auc_score(y_valid, p_valid))
        else:
            p_valid = np.array([0.5])
        model = _fit(data.prompts, labels(data), opts)
        grid = np.unique(np.round(np.quantile(p_valid, np.linspace(0, 1, 26)), 6))
        state = {
            "models": list(data.models),
            "strong": int(strong),
            "weak": int(weak),
            "classifier": model,
            "thresholds": [0.0, *grid.tolist(), 1.000001],
        }
        return FitResult(state, metrics)

    @classmethod
    def knob_values(cls, state: dict[str, Any]) -> list[float]:
        return sorted(set(state["thresholds"]))

    def load_state(self, state: dict[str, Any]) -> None:
        self._strong, self._weak = int(state["strong"]), int(state["weak"])
        missing = [self.models[j] for j in (self._strong, self._weak) if self.expert_of[j] is None]
        if missing:
            raise ConfigError(
                f"threshold: the artifact routes between {self.models[self._strong]} and "
                f"{self.models[self._weak]}, but {missing} has no expert in the pool"
            )
        self._classifier = state["classifier"]

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        self.ensure_ready()
        opts: ThresholdOptions = self.options  # type: ignore[assignment]
        p = _win_rate(self._classifier, self.embedder().encode([q.text for q in queries]))
        out = []
        for win in p.tolist():
            strong = win >= opts.threshold
            scores = np.zeros(len(self.models))
            scores[self._strong], scores[self._weak] = win, 1.0 - win
            order = [self._strong, self._weak] if strong else [self._weak, self._strong]
            verb = "≥" if strong else "<"
            out.append(
                self.decision(
                    order,
                    scores,
                    f"strong-model win rate {win:.2f} {verb} threshold {opts.threshold:.2f} → "
                    f"{self.expert_of[order[0]]}",
                    {"win_rate": round(win, 4), "threshold": opts.threshold},
                )
            )
        return out


def _fit(texts: Sequence[str], y: np.ndarray, opts: ThresholdOptions) -> dict[str, Any]:
    """The win-rate model; a constant when the labels have one class."""
    rate = float(y.mean()) if len(y) else 0.5
    if y.min(initial=1) == y.max(initial=0):
        return {"model": None, "rate": rate}
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=opts.C, max_iter=2000, class_weight="balanced")
    model.fit(embed(texts, opts.embedding_model), y.astype(np.int64))
    return {"model": model, "rate": rate}


def _win_rate(classifier: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if classifier["model"] is None:
        return np.full(x.shape[0], classifier["rate"])
    return np.asarray(classifier["model"].predict_proba(x))[:, 1]
