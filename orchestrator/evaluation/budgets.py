"""Quality vs budget: MoE² under per-query cost budgets, against CoE and the best single model
affordable under each budget, on the held-out test split (``orchestrator eval -s coe,moe2``).

For each per-query USD budget B of a grid (log-spaced from half the cheapest model's median
recorded cost to twice the priciest model's):

* **moe2** — the trained gate and branch-and-bound selection, with ``max_cost_usd: B`` as the
  strategy's budget: per query, the chosen experts' *predicted* cost (the gate's cost head)
  must fit; when nothing fits, the least-over-budget expert answers (a strategy default is
  soft). Measured through the harness (accuracy and recorded cost of what was chosen). Two
  settings: ``max_experts: 1`` (the default: one expert per query) and ``max_experts: 3`` with
  ``aggregator: vote`` (an ensemble scored by the harness's aggregator approximation where the
  harness has one — weighted vote over recorded answers, with the upper bound of an ideal
  aggregator; otherwise the first member's score).
* **best single affordable** — the model with the best *train* accuracy among those whose mean
  *train* cost per query is ≤ B (the cheapest model when none is), measured on test.
* **CoE** — when ``coe`` ran in the same evaluation: among its validation operating points
  (over its ``cost_weight`` knob) with mean cost ≤ B, the most accurate (cheapest on ties),
  measured on test at that knob. CoE does not take budgets itself; this is CoE tuned to the
  budget on average. Its validation points come from the harness's probe artifact (fitted on
  train minus validation) while test runs the artifact refitted on all of train, so a knob's
  cost can differ between the two. Also shown, as an envelope that no deployable tuning
  reaches: CoE's most accurate *test* point with mean cost ≤ B (hindsight).

Costs are RouterBench's recorded USD (or each dataset's stated ``cost_source``). The single
model and CoE respect B *on average*; moe2 per query on predictions, so for both moe2 and the
single models the share of test queries whose recorded cost exceeded B is reported.
Latency and energy budgets are not evaluated here: recorded datasets carry no latencies, and
profiles of the recorded models (GPT-4, Claude, …) would be assumptions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from orchestrator.evaluation.harness import EvalResult, Harness
from orchestrator.types import Message, Query

MOE2_SETTINGS: dict[str, dict[str, Any]] = {
    "moe2": {},
    "moe2 k≤3 vote": {"max_experts": 3, "aggregator": "vote"},
}


@dataclass(frozen=True)
class BudgetPoint:
    """One router at one budget, on test."""

    budget_usd: float
    accuracy: float
    mean_cost: float
    over_budget_share: float | None = None
    experts_per_query: float | None = None
    upper_accuracy: float | None = None
    choice: str | None = None


def _row_costs(decisions: list[Any], model_of: dict[str, int], costs: np.ndarray) -> np.ndarray:
    """Recorded USD of each decision: its members, plus an aggregator expert when one ran."""
    out = np.zeros(len(decisions))
    for i, d in enumerate(decisions):
        idx = [model_of[e] for e in d.experts]
        out[i] = costs[i, idx].sum()
        if len(idx) > 1 and d.aggregator in model_of:
            out[i] += costs[i, model_of[d.aggregator]]
    return out


def budget_curves(harness: Harness, result: EvalResult) -> dict[str, list[BudgetPoint]]:
    """Every curve, keyed by router name (see the module docstring)."""
    from routers.artifacts import ArtifactStore
    from routers.moe2 import Moe2Strategy, cost_grid

    test, train = harness.test, harness.train
    grid = cost_grid(train.costs)
    curves: dict[str, list[BudgetPoint]] = {}

    moe2 = result.strategy("moe2")
    options = dict(harness.options.get("moe2", {}))
    path = moe2.artifact.get("path")
    if path:
        artifact = ArtifactStore(Path(path).parent.parent).load("moe2", moe2.artifact["version"])
    else:  # artifacts were not saved: train again on the same train split
        artifact = Moe2Strategy.train(train, options)
    queries = [Query(messages=(Message("user", p),)) for p in test.prompts]
    for label, override in MOE2_SETTINGS.items():
        points = []
        for b in grid:
            strategy = Moe2Strategy(harness.experts, {**options, **override, "max_cost_usd": b})
            strategy.use_artifact(artifact)
            decisions = strategy.route(queries)
            spent = _row_costs(decisions, harness.expert_models, test.costs)
            p = harness.point(strategy, test, b)
            points.append(
                BudgetPoint(
                    b,
                    p.accuracy,
                    float(spent.mean()),
                    float((spent > b * (1 + 1e-9)).mean()),
                    float(np.mean([len(d.experts) for d in decisions])),
                    getattr(p, "upper_accuracy", None),
                )
            )
        curves[label] = points

    train_acc = np.nan_to_num(train.scores, nan=0.0).mean(axis=0)
    train_cost = train.costs.mean(axis=0)
    test_scores = np.nan_to_num(test.scores, nan=0.0)
    singles = []
    for b in grid:
        affordable = np.flatnonzero(train_cost <= b)
        if len(affordable):
            j = int(affordable[np.lexsort((train_cost[affordable], -train_acc[affordable]))[0]])
        else:
            j = int(train_cost.argmin())
        singles.append(
            BudgetPoint(
                b,
                float(test_scores[:, j].mean()),
                float(test.costs[:, j].mean()),
                float((test.costs[:, j] > b * (1 + 1e-9)).mean()),
                1.0,
                choice=test.models[j],
            )
        )
    curves["best single affordable"] = singles

    names = [s.name for s in result.strategies]
    if "coe" in names:
        coe = result.strategy("coe")
        by_knob = {p.knob: p for p in coe.curve}
        spent_at = _coe_spending(harness, coe, queries)
        chosen, hindsight = [], []
        for b in grid:
            ok = [p for p in coe.valid_curve if p.mean_cost <= b]
            pick = (
                min(ok, key=lambda p: (-p.accuracy, p.mean_cost))
                if ok
                else min(coe.valid_curve, key=lambda p: p.mean_cost)
            )
            t = by_knob.get(pick.knob)
            if t is not None:
                chosen.append(_coe_point(b, t, spent_at))
            within = [p for p in coe.curve if p.mean_cost <= b]
            best = (
                min(within, key=lambda p: (-p.accuracy, p.mean_cost))
                if within
                else min(coe.curve, key=lambda p: p.mean_cost)
            )
            hindsight.append(_coe_point(b, best, spent_at))
        curves["coe (knob chosen on validation)"] = chosen
        curves["coe (best test point within budget; hindsight)"] = hindsight
    return curves


def _coe_spending(harness: Harness, coe: Any, queries: list[Query]) -> dict[float, np.ndarray]:
    """CoE's recorded cost per test query at each knob of its test curve (its saved artifact
    re-served), or nothing when the artifact was not saved."""
    from routers.artifacts import ArtifactStore
    from routers.coe import CoEStrategy

    path = coe.artifact.get("path")
    if not path:
        return {}
    artifact = ArtifactStore(Path(path).parent.parent).load("coe", coe.artifact["version"])
    options = dict(harness.options.get("coe", {}))
    out = {}
    for p in coe.curve:
        strategy = CoEStrategy(harness.experts, {**options, "cost_weight": p.knob})
        strategy.use_artifact(artifact)
        decisions = strategy.route(queries)
        out[p.knob] = _row_costs(decisions, harness.expert_models, harness.test.costs)
    return out


def _coe_point(b: float, p: Any, spent_at: dict[float, np.ndarray]) -> BudgetPoint:
    spent = spent_at.get(p.knob)
    over = None if spent is None else float((spent > b * (1 + 1e-9)).mean())
    return BudgetPoint(b, p.accuracy, p.mean_cost, over, 1.0, choice=f"cost_weight={p.knob:g}")


def print_budgets(curves: dict[str, list[BudgetPoint]], console: Console, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("budget $/query", justify="right")
    for name in curves:
        table.add_column(name, justify="right")
    grid = [p.budget_usd for p in next(iter(curves.values()))]
    for b in grid:
        cells = []
        for points in curves.values():
            p = next((q for q in points if q.budget_usd == b), None)
            if p is None:
                cells.append("")
                continue
            over = "" if p.over_budget_share is None else f" · {p.over_budget_share:.0%} over"
            cells.append(f"{p.accuracy:.3f} · ${p.mean_cost:.2g}{over}")
        table.add_row(f"${b:.6g}", *cells)
    console.print(table)
    console.print(
        "[dim]accuracy · mean recorded cost per query · share of test queries whose recorded "
        "cost exceeded the budget (moe2 enforces budgets per query on predicted cost; the "
        "single model and CoE are chosen by mean cost)[/dim]"
    )


def plot_budgets(curves: dict[str, list[BudgetPoint]], path: Path, dataset: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
    for name, points in curves.items():
        xs = [p.budget_usd for p in points]
        style = {"drawstyle": "steps-post"} if name.startswith("best single") else {}
        line = left.plot(xs, [p.accuracy for p in points], marker="o", ms=3, label=name, **style)
        color = line[0].get_color()
        uppers = [p.upper_accuracy for p in points]
        if any(u is not None for u in uppers) and any(
            (p.experts_per_query or 1) > 1 for p in points
        ):
            left.plot(
                xs,
                [u if u is not None else np.nan for u in uppers],
                ls=":",
                color=color,
                label=f"{name}: ideal aggregator (upper bound)",
            )
        right.plot(xs, [p.mean_cost for p in points], marker="o", ms=3, color=color, label=name)
    grid = [p.budget_usd for p in next(iter(curves.values()))]
    right.plot(grid, grid, color="grey", lw=0.8, ls="--", label="spent = budget")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("cost budget per query (USD, log)")
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.set_ylabel("test accuracy")
    right.set_ylabel("mean recorded cost per query (USD, log)")
    left.set_title(f"{dataset}: quality vs cost budget (held-out test)", fontsize=9)
    right.set_title("what each router actually spent", fontsize=9)
    left.legend(fontsize=7, loc="lower right")
    right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def budget_report(
    harness: Harness, result: EvalResult, folder: Path, console: Console
) -> list[Path]:
    """Compute, print and write (``budgets.json``, ``budget_quality.png``) the curves."""
    curves = budget_curves(harness, result)
    name = result.dataset["name"]
    print_budgets(curves, console, f"{name} · quality vs per-query cost budget (test)")
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "dataset": name,
        "cost_source": result.dataset.get("cost_source"),
        "curves": {k: [asdict(p) for p in v] for k, v in curves.items()},
    }
    json_path = folder / "budgets.json"
    json_path.write_text(json.dumps(data, indent=2))
    return [json_path, plot_budgets(curves, folder / "budget_quality.png", name)]
