"""The evaluation harness on synthetic recorded outcomes (fake embeddings, no model)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from orchestrator.evaluation.harness import Harness, expert_name, replay_experts
from orchestrator.evaluation.report import plot, print_report, write_json
from routers.artifacts import ArtifactStore
from tests.routing_data import FAKE_EMBEDDER, synthetic

FAKE = {"embedding_model": FAKE_EMBEDDER}
OPTIONS = {"coe": FAKE, "knn": FAKE, "threshold": FAKE, "random": {"seed": 0}}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    harness = Harness(synthetic(60), store=store, options=OPTIONS)
    assert not set(harness.train.prompts) & set(harness.test.prompts)
    assert not set(harness.valid.prompts) & set(harness.test.prompts)
    return harness.run(["coe", "knn", "threshold", "random"])


def test_every_strategy_and_baseline_gets_a_point(result):
    assert [s.name for s in result.strategies] == ["coe", "knn", "threshold", "random"]
    assert set(result.singles) == {"big", "mathy", "cody"}
    assert result.best_single == "big"
    best = result.singles["big"]
    for s in result.strategies:
        assert 0 <= s.headline.accuracy <= result.oracle.accuracy
        assert s.aiq is not None and 0 <= s.aiq <= 1
    coe = result.strategy("coe")
    # routing by category beats the best single model at a fraction of its cost
    assert coe.headline.accuracy > best.accuracy
    assert coe.headline.total_cost < best.total_cost / 2
    assert coe.cost_to_target is not None and coe.cost_to_target < best.total_cost
    assert coe.artifact["version"] == "v0001" and coe.chosen_knob is not None
    assert len(coe.curve) > 10 and coe.valid_curve


def test_report_json_and_plots(result, tmp_path):
    console = Console(record=True, width=140)
    print_report(result, console)
    text = console.export_text()
    assert "best single model" in text and "oracle" in text and "coe" in text
    data = json.loads(write_json(result, tmp_path / "r.json").read_text())
    assert data["strategies"][0]["name"] == "coe" and "aiq" in data["strategies"][0]
    assert data["dataset"]["cost_source"] == "synthetic"
    for png in plot(result, tmp_path):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_expert_names_are_valid_for_recorded_model_names():
    assert expert_name("meta/llama-2-70b-chat") == "meta-llama-2-70b-chat"
    experts = replay_experts(synthetic(2))
    assert [e.engine["model"] for e in experts] == ["big", "mathy", "cody"]
