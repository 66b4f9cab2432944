"""MoE² in the evaluation harness and the quality-vs-budget report, on synthetic recorded
outcomes (fake embeddings): cheap specialists for math and code, an expensive generalist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.evaluation.budgets import budget_curves, budget_report
from orchestrator.evaluation.harness import EvalResult, Harness
from routers.artifacts import ArtifactStore
from tests.routing_data import FAKE_EMBEDDER, synthetic

FAKE = {"embedding_model": FAKE_EMBEDDER}
OPTIONS = {"coe": FAKE, "moe2": {**FAKE, "max_epochs": 150, "patience": 20}}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Harness, EvalResult]:
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    harness = Harness(synthetic(60), store=store, options=OPTIONS)
    return harness, harness.run(["coe", "moe2"])


def test_moe2_sweeps_its_cost_budget_in_eval(evaluated: tuple[Harness, EvalResult]) -> None:
    _, result = evaluated
    moe2 = result.strategy("moe2")
    assert moe2.knob == "max_cost_usd" and moe2.chosen_knob is not None
    assert len(moe2.curve) >= 10 and moe2.aiq is not None
    cheapest = min(moe2.curve, key=lambda p: p.knob or 0.0)
    richest = max(moe2.curve, key=lambda p: p.knob or 0.0)
    assert cheapest.mean_cost < richest.mean_cost  # the budget really binds
    # With room for it, the gate routes each category to its best expert (as CoE does).
    assert richest.accuracy > result.singles[result.best_single].accuracy


def test_budget_curves_against_coe_and_the_best_affordable_single(
    evaluated: tuple[Harness, EvalResult], tmp_path: Path
) -> None:
    harness, result = evaluated
    curves = budget_curves(harness, result)
    assert set(curves) == {
        "moe2",
        "moe2 k≤3 vote",
        "best single affordable",
        "coe (knob chosen on validation)",
        "coe (best test point within budget; hindsight)",
    }
    grid = [p.budget_usd for p in curves["moe2"]]
    assert grid == sorted(grid) and len(grid) >= 10
    singles = curves["best single affordable"]
    assert singles[0].choice in ("mathy", "cody")  # only the cheap models are affordable
    assert singles[-1].choice == "big"
    moe2 = curves["moe2"]
    # Per-query budgets: where both specialists fit (≥ $0.001), moe2 stays within budget and
    # beats the best single model affordable at that budget.
    fits = [p for p in moe2 if p.budget_usd >= 0.001]
    assert fits and all(p.over_budget_share == 0.0 for p in fits)
    for p, s in zip(moe2, singles, strict=True):
        if 0.001 <= p.budget_usd < 0.01:
            assert p.accuracy > s.accuracy
    assert all(p.experts_per_query == 1.0 for p in moe2)
    ensemble = curves["moe2 k≤3 vote"]
    assert max(p.experts_per_query or 0 for p in ensemble) > 1
    console = Console(record=True, width=200)
    written = budget_report(harness, result, tmp_path, console)
    assert "quality vs per-query cost budget" in console.export_text()
    data = json.loads((tmp_path / "budgets.json").read_text())
    assert set(data["curves"]) == set(curves) and data["cost_source"] == "synthetic"
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
