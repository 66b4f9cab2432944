"""Cost–quality metrics of routing decisions on recorded outcomes.

* An *operating point* of a router on a split: accuracy (mean recorded score of the chosen
  model; 0/1 correctness on RouterBench and MMLU-Pro, graded in [0, 1] on some LLMRouter
  tasks), total and mean cost in USD of the chosen models.
* The *cost–quality curve* of a strategy: its operating points over its knob.
* The *non-decreasing convex hull* of a curve: the best accuracy reachable at each cost by
  randomly mixing two operating points, never decreasing with cost (RouterBench §3).
* *AIQ* (average improvement in quality, RouterBench): the area under that hull divided by
  the cost range. As in RouterBench's released ``evaluation/AIQ.py`` the cost axis runs from
  0 to ``c_max``, the largest total cost of any router compared in the same run (so every
  router is normalised by the same range): each hull is extended flat from its most expensive
  point to ``c_max``; below its cheapest point it contributes nothing. AIQ is thus in
  accuracy units (0–1) and comparable only within one evaluation.
* *Cost to reach a target*: the lowest total cost among operating points with accuracy ≥
  the target (95% of the best single model's accuracy) — actual knob settings, no mixing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Point:
    """One operating point: the knob value that produced it, accuracy and cost."""

    knob: float | None
    accuracy: float
    total_cost: float
    mean_cost: float
    n: int
    experts_per_query: float | None = None
    """Multi-expert decisions (Symbolic-MoE): mean experts recruited per query."""
    upper_accuracy: float | None = None
    """Multi-expert decisions: accuracy if the aggregator always found a right answer offered."""

    def as_dict(self) -> dict[str, float | int | None]:
        extra = ("experts_per_query", "upper_accuracy")
        return {k: v for k, v in asdict(self).items() if k not in extra or v is not None}


def operating_point(
    choices: np.ndarray, scores: np.ndarray, costs: np.ndarray, knob: float | None = None
) -> Point:
    """The point of choosing model ``choices[i]`` for row i. NaN scores count as wrong."""
    rows = np.arange(len(choices))
    picked = np.nan_to_num(scores[rows, choices], nan=0.0)
    spent = costs[rows, choices]
    n = max(len(choices), 1)
    return Point(
        knob, float(picked.sum() / n), float(spent.sum()), float(spent.sum() / n), len(choices)
    )


def oracle_choices(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per row, the cheapest model among those with the best recorded score."""
    s = np.nan_to_num(scores, nan=-1.0)
    best = s.max(axis=1, keepdims=True)
    masked = np.where(s >= best - 1e-12, costs, np.inf)
    return np.asarray(masked.argmin(axis=1))


def nondecreasing_hull(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """The non-decreasing upper convex hull of (cost, accuracy) points, sorted by cost.

    Upper hull by Andrew's monotone chain, cut at the most accurate vertex (beyond it, more
    money buys nothing: the curve stays flat there).
    """
    pts = sorted({(float(c), float(a)) for c, a in points})
    if not pts:
        return np.zeros((0, 2))
    # at equal cost keep only the best accuracy
    best: dict[float, float] = {}
    for c, a in pts:
        best[c] = max(a, best.get(c, -np.inf))
    pts = sorted(best.items())
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    top = max(range(len(hull)), key=lambda i: (hull[i][1], -hull[i][0]))
    return np.array(hull[: top + 1])


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def aiq(hull: np.ndarray, c_max: float) -> float:
    """Area under ``hull`` extended flat to ``c_max``, divided by ``c_max`` (RouterBench)."""
    if len(hull) == 0 or c_max <= 0:
        return 0.0
    xs, ys = hull[:, 0], hull[:, 1]
    if xs[-1] < c_max:
        xs, ys = np.append(xs, c_max), np.append(ys, ys[-1])
    inside = xs <= c_max
    xs, ys = xs[inside], ys[inside]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))
    return area / c_max


def cost_to_reach(points: Sequence[Point], target: float) -> float | None:
    """The lowest total cost among points with accuracy ≥ ``target`` (None if none does)."""
    costs = [p.total_cost for p in points if p.accuracy >= target - 1e-12]
    return min(costs) if costs else None


def choose_knob(points: Sequence[Point], tolerance: float = 0.005) -> float | None:
    """The knob to report a strategy at, chosen on *validation* points: the cheapest point
    whose accuracy is within ``tolerance`` of the best validation accuracy."""
    if not points:
        return None
    best = max(p.accuracy for p in points)
    good = [p for p in points if p.accuracy >= best - tolerance]
    return min(good, key=lambda p: (p.total_cost, -p.accuracy)).knob
