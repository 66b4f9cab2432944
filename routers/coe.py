"""``coe``: Composition of Experts — two-step routing through a category.

1. A classifier (MiniLM embedding → scikit-learn ``LogisticRegression``) maps the query to a
   category (a task or domain label of the training data) with a confidence.
2. A category → expert map, chosen on validation data: for each category, the expert with the
   best ``quality − cost_weight · cost / cost_scale`` over the validation prompts *classified*
   into that category (so the map accounts for the classifier's confusions). ``cost_weight``
   is the quality/cost knob: 0 picks the most accurate expert per category; larger values
   trade accuracy for cost (``cost_scale`` is the mean per-query cost of the priciest model,
   so weight 1 means "the priciest model must buy one whole point of accuracy").
3. Below ``min_confidence`` the query goes to a strong fallback expert (``fallback``, default:
   the most accurate model on validation).

Training (:meth:`CoEStrategy.fit`): the training split is cut by prompt hash into a fitting
part (classifier) and a validation part (``valid_fraction``; category tables). Per-category
estimates are smoothed toward the overall mean with ``prior_rows`` pseudo-rows, so a category
with few validation prompts does not follow noise. The classifier is then refit on the whole
training split (``refit``).
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
from routers.trainable import (
    COST_WEIGHTS,
    FitResult,
    TrainableOptions,
    TrainableStrategy,
    embed,
    pick_fallback,
    utility_order,
)


class CoEOptions(TrainableOptions):
    cost_weight: float = Field(
        0.0, ge=0, description="Quality/cost knob of the category→expert map (0 = quality only)."
    )
    min_confidence: float = Field(
        0.4, ge=0, le=1, description="Below this classifier confidence, use the fallback expert."
    )
    fallback: str | None = Field(
        None,
        description="Expert (or recorded model) for low-confidence queries; default: "
        "the most accurate model on validation.",
    )
    C: float = Field(4.0, gt=0, description="Training: inverse L2 strength of the classifier.")
    prior_rows: float = Field(
        5.0, ge=0, description="Training: pseudo-rows smoothing per-category estimates."
    )
    refit: bool = Field(True, description="Training: refit the classifier on all training rows.")


class CoEStrategy(TrainableStrategy):
    name = "coe"
    Options = CoEOptions
    knob: ClassVar[str | None] = "cost_weight"

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        opts: CoEOptions = options  # type: ignore[assignment]
        fit_part, valid = split(data, opts.valid_fraction, seed=opts.seed, salt="coe-valid")
        if len(valid) == 0 or len(fit_part) == 0:
            raise ValueError(
                f"coe needs more training rows than {len(data)} to hold out validation"
            )
        classifier = _fit_classifier(fit_part.prompts, fit_part.categories, opts)
        proba = _proba(classifier, embed(valid.prompts, opts.embedding_model))
        classes = list(classifier["classes"])
        predicted = np.asarray(classes)[proba.argmax(axis=1)]
        scores = valid.scores
        overall_q = np.nanmean(scores, axis=0)
        overall_c = valid.costs.mean(axis=0)
        a = opts.prior_rows
        quality = np.zeros((len(classes), len(data.models)))
        cost = np.zeros_like(quality)
        counts = np.zeros(len(classes), dtype=np.int64)
        for c, label in enumerate(classes):
            rows = predicted == label
            n = int(rows.sum())
            counts[c] = n
            quality[c] = (
                (np.nansum(scores[rows], axis=0) + a * overall_q) / (n + a) if n + a else overall_q
            )
            cost[c] = (
                (valid.costs[rows].sum(axis=0) + a * overall_c) / (n + a) if n + a else overall_c
            )
        metrics = {
            "classifier_valid_accuracy": float(np.mean(predicted == np.asarray(valid.categories))),
            "valid_rows": len(valid),
            "fit_rows": len(fit_part),
            "categories": len(classes),
            "mean_confidence_valid": float(proba.max(axis=1).mean()),
        }
        if opts.refit:
            classifier = _fit_classifier(data.prompts, data.categories, opts)
            classes_all = list(classifier["classes"])
            if classes_all != classes:  # a category absent from the fitting part: re-align
                quality, cost, counts = _align(
                    classes, classes_all, quality, cost, counts, overall_q, overall_c
                )
                classes = classes_all
        state = {
            "models": list(data.models),
            "classes": classes,
            "classifier": classifier,
            "quality": quality,
            "cost": cost,
            "counts": counts,
            "overall_quality": overall_q,
            "overall_cost": overall_c,
            "cost_scale": float(data.costs.mean(axis=0).max()),
            "fallback": int(pick_fallback(overall_q, overall_c)),
        }
        return FitResult(state, metrics)

    @classmethod
    def knob_values(cls, state: dict[str, Any]) -> list[float]:
        return list(COST_WEIGHTS)

    # -- serving -------------------------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        opts: CoEOptions = self.options  # type: ignore[assignment]
        self._classifier = state["classifier"]
        self._classes: list[str] = list(state["classes"])
        self._quality = np.asarray(state["quality"])
        self._cost = np.asarray(state["cost"])
        self._orders, self._utility = utility_order(
            self._quality, self._cost, opts.cost_weight, state["cost_scale"], self.served
        )
        overall_q = np.asarray(state["overall_quality"])
        overall_c = np.asarray(state["overall_cost"])
        fallback = state["fallback"]
        if opts.fallback is not None:
            fallback = self.model_for(opts.fallback)
            if fallback is None:
                raise ConfigError(
                    f"routing.strategies.coe.fallback: '{opts.fallback}' is neither a served "
                    f"expert nor a recorded model of the artifact ({', '.join(self.models)})"
                )
        elif fallback not in self.served:  # the trained fallback has no expert here
            fallback = int(
                self.served[pick_fallback(overall_q[self.served], overall_c[self.served])]
            )
        rest = [
            int(j)
            for j in self.served[np.lexsort((overall_c[self.served], -overall_q[self.served]))]
        ]
        self._fallback = int(fallback)
        self._fallback_order = [self._fallback] + [j for j in rest if j != self._fallback]
        self._overall_q = overall_q

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        self.ensure_ready()
        opts: CoEOptions = self.options  # type: ignore[assignment]
        proba = _proba(self._classifier, self.embedder().encode([q.text for q in queries]))
        best = proba.argmax(axis=1)
        decisions = []
        for c, p in zip(best.tolist(), proba[np.arange(len(best)), best].tolist(), strict=True):
            label = self._classes[c]
            details: dict[str, object] = {
                "category": label,
                "confidence": round(p, 4),
                "cost_weight": opts.cost_weight,
            }
            if p < opts.min_confidence:
                fb = self._fallback
                details["fallback"] = True
                decisions.append(
                    self.decision(
                        self._fallback_order,
                        self._overall_q,
                        f"category '{label}' at low confidence ({p:.2f} < {opts.min_confidence}): "
                        f"strong fallback {self.expert_of[fb]}",
                        details,
                    )
                )
                continue
            order = self._orders[c]
            j = int(order[0])
            decisions.append(
                self.decision(
                    order.tolist(),
                    self._utility[c],
                    f"category '{label}' (confidence {p:.2f}) → {self.expert_of[j]} "
                    f"(validation quality {self._quality[c, j]:.2f}, "
                    f"${self._cost[c, j]:.6f}/query)",
                    details,
                )
            )
        return decisions


def _fit_classifier(
    texts: Sequence[str], labels: Sequence[str], opts: CoEOptions
) -> dict[str, Any]:
    """A LogisticRegression on embeddings; a single-category dataset gets a constant one."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        return {"classes": classes, "model": None}
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=opts.C, max_iter=2000)
    model.fit(embed(texts, opts.embedding_model), np.asarray(labels))
    return {"classes": [str(c) for c in model.classes_], "model": model}


def _proba(classifier: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if classifier["model"] is None:
        return np.ones((x.shape[0], 1))
    return np.asarray(classifier["model"].predict_proba(x))


def _align(
    old: list[str],
    new: list[str],
    quality: np.ndarray,
    cost: np.ndarray,
    counts: np.ndarray,
    overall_q: np.ndarray,
    overall_c: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables re-indexed to ``new`` classes; unseen classes get the overall estimates."""
    q = np.tile(overall_q, (len(new), 1))
    c = np.tile(overall_c, (len(new), 1))
    n = np.zeros(len(new), dtype=np.int64)
    for i, label in enumerate(new):
        if label in old:
            k = old.index(label)
            q[i], c[i], n[i] = quality[k], cost[k], counts[k]
    return q, c, n
