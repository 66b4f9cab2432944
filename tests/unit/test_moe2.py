"""MoE² routing: a gate trained on synthetic recorded outcomes (fake embeddings), then
budgets per request, per API key and per strategy, over the HTTP API with echo experts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.api import build_app
from orchestrator.config import ExpertConfig, load_config
from orchestrator.errors import InvalidRequestError
from orchestrator.ingress import with_key_budgets
from orchestrator.pipeline import Orchestrator
from orchestrator.protocol import ChatCompletionRequest
from orchestrator.types import Message, Query, RoutingOptions, SamplingParams
from routers import get_strategy_class, list_strategies
from routers.artifacts import Artifact, ArtifactStore
from routers.moe2 import Moe2Strategy
from tests.routing_data import FAKE_EMBEDDER, prime, synthetic

FAKE = {"embedding_model": FAKE_EMBEDDER, "max_epochs": 150, "patience": 20}
# `big` is accurate everywhere but slow and power-hungry; the small ones are fast specialists.
PROFILES = {
    "big": {"ttft_ms": 400, "ms_per_output_token": 40, "energy_j_per_token": 2.0},
    "mathy": {"ttft_ms": 50, "ms_per_output_token": 5, "energy_j_per_token": 0.2},
    "cody": {"ttft_ms": 80, "ms_per_output_token": 8, "energy_j_per_token": 0.3},
}
TOKENS = 64  # max_tokens of the test queries: the latency estimate uses it (no recorded answers)


def expert_dicts() -> list[dict[str, Any]]:
    return [{"name": m, "backend": "echo", "model": m, "profile": p} for m, p in PROFILES.items()]


def experts() -> list[ExpertConfig]:
    return [ExpertConfig(**e) for e in expert_dicts()]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    return Moe2Strategy.train(synthetic(40), FAKE, store)


def strategy(artifact: Artifact, **options: Any) -> Moe2Strategy:
    s = Moe2Strategy(experts(), {**FAKE, **options})
    s.use_artifact(artifact)
    return s


def ask(text: str, **options: Any) -> Query:
    prime([text])
    return Query(
        (Message("user", text),), SamplingParams(max_tokens=TOKENS), RoutingOptions(**options)
    )


def latency(expert: str) -> float:
    p = PROFILES[expert]
    return p["ttft_ms"] + p["ms_per_output_token"] * TOKENS


def test_registered_and_trained_with_metrics(artifact: Artifact) -> None:
    assert "moe2" in list_strategies() and get_strategy_class("moe2") is Moe2Strategy
    assert artifact.version == "v0001"
    m = artifact.meta["metrics"]
    assert m["epochs"] >= 1 and m["value"] in ("gated", "quality")
    assert set(m["valid_accuracy_over_cost_grid"]) == {"gated", "quality"}
    assert m["category_quality"]["math"]["mathy"] > m["category_quality"]["math"]["cody"]
    assert len(Moe2Strategy.knob_values(artifact.state)) >= 5


def test_without_budgets_the_gate_picks_each_category_s_best_expert(artifact: Artifact) -> None:
    s = strategy(artifact)
    decisions = s.route([ask("math: what is 7*6"), ask("code: reverse a list"), ask("chat: hi")])
    assert [d.experts for d in decisions] == [("mathy",), ("cody",), ("big",)]
    d = decisions[2]
    assert d.strategy == "moe2" and d.version == "v0001" and d.aggregator is None
    budget = d.details["budget"]
    assert d.details["subset"] == ["big"] and isinstance(budget, dict)
    assert budget["max_latency_ms"] is None
    weights = d.details["weights"]
    assert isinstance(weights, dict) and sum(weights.values()) == pytest.approx(1.0, abs=1e-3)


def test_a_tight_latency_budget_picks_a_faster_expert(artifact: Artifact) -> None:
    s = strategy(artifact)
    budget = latency("big") - 1  # big no longer fits; both small experts do
    (d,) = s.route([ask("chat: tell me a story", max_latency_ms=budget)])
    assert d.experts[0] in ("mathy", "cody")
    assert d.details["budget"] == {
        "max_latency_ms": budget,
        "max_energy_j": None,
        "max_cost_usd": None,
        "max_experts": 1,
        "from_request": ["max_latency_ms"],
    }
    assert d.details["subset"] == list(d.experts)
    estimate = d.details["estimate"]
    assert isinstance(estimate, dict) and estimate["latency_ms"] <= budget
    assert f"latency ≤ {budget:g} ms" in d.reason and d.experts[0] in d.reason
    # Fallback order: the other expert that fits before the one that does not.
    assert [c.expert for c in d.candidates][-1] == "big"
    # Tighter still: only mathy is fast enough.
    (d,) = s.route([ask("chat: tell me a story", max_latency_ms=latency("mathy") + 1)])
    assert d.experts == ("mathy",)


def test_energy_and_cost_budgets(artifact: Artifact) -> None:
    s = strategy(artifact)
    (d,) = s.route([ask("chat: hello", max_energy_j=2.0 * TOKENS - 1)])
    assert d.experts[0] != "big"
    # Costs come from the gate's cost head (the experts have no price): big costs ~$0.01.
    (d,) = s.route([ask("chat: hello", max_cost_usd=0.005)])
    assert d.experts[0] != "big"
    estimate = d.details["estimate"]
    assert isinstance(estimate, dict) and estimate["cost_usd"] <= 0.005
    (d,) = s.route([ask("chat: hello", max_cost_usd=0.05)])
    assert d.experts == ("big",)


def test_an_impossible_request_budget_is_a_clear_400(artifact: Artifact) -> None:
    s = strategy(artifact)
    with pytest.raises(InvalidRequestError) as e:
        s.route([ask("math: 2+2", max_latency_ms=10)])
    assert e.value.status_code == 400 and e.value.code == "budget_infeasible"
    assert e.value.param == "max_latency_ms"
    assert "mathy" in e.value.message and f"{latency('mathy'):.6g} ms" in e.value.message


def test_on_infeasible_fallback_and_soft_strategy_defaults(artifact: Artifact) -> None:
    lenient = strategy(artifact, on_infeasible="fallback")
    (d,) = lenient.route([ask("chat: hi", max_latency_ms=10)])
    assert d.experts == ("mathy",) and d.details["infeasible"] is True  # the fastest
    assert "fits no expert" in d.reason
    # A budget from the strategy's own options is a soft default: no 400.
    soft = strategy(artifact, max_latency_ms=10)
    (d,) = soft.route([ask("code: sort")])
    assert d.details["infeasible"] is True and d.details["budget"] == {
        "max_latency_ms": 10,
        "max_energy_j": None,
        "max_cost_usd": None,
        "max_experts": 1,
        "from_request": [],
    }


def test_subsets_of_several_experts(artifact: Artifact) -> None:
    s = strategy(artifact, max_experts=3)
    (d,) = s.route([ask("chat: what is up")])
    assert len(d.experts) == 3 and d.aggregator == "first"
    assert d.experts[0] == "big"
    values = [c.score for c in d.candidates]
    assert values == sorted(values, reverse=True)  # members ordered by value
    # An energy budget that fits both small experts but not big: they run together.
    (d,) = s.route([ask("chat: what is up", max_energy_j=(0.2 + 0.3) * TOKENS + 1)])
    assert set(d.experts) == {"mathy", "cody"}
    # The request's k overrides max_experts.
    (d,) = s.route([ask("chat: what is up", k=1)])
    assert d.experts == ("big",)


def test_an_aggregator_expert_counts_against_the_budget(artifact: Artifact) -> None:
    s = strategy(artifact, max_experts=3, aggregator="mathy")
    small_pair = (0.2 + 0.3) * TOKENS  # J; big alone needs 2.0 * TOKENS and never fits here
    synthesis = 0.2 * TOKENS  # mathy's own call when it aggregates
    (d,) = s.route([ask("chat: what is up", max_energy_j=small_pair + 1)])
    assert len(d.experts) == 1 and d.aggregator is None  # the pair + synthesis do not fit
    (d,) = s.route([ask("chat: what is up", max_energy_j=small_pair + synthesis + 1)])
    assert set(d.experts) == {"mathy", "cody"} and d.aggregator == "mathy"
    estimate = d.details["estimate"]
    assert isinstance(estimate, dict)
    assert estimate["energy_j"] == pytest.approx(small_pair + synthesis, abs=1e-3)
    assert estimate["latency_ms"] == pytest.approx(latency("cody") + latency("mathy"), abs=0.1)
    with pytest.raises(Exception, match="aggregator"):
        strategy(artifact, aggregator="nobody")


def test_key_budgets_fill_what_the_request_leaves_unset() -> None:
    cfg = load_config(
        None,
        experts=expert_dicts(),
        server={
            "api_keys": [
                {"name": "edge", "key": "k1", "budgets": {"max_latency_ms": 500}},
                {"name": "plain", "key": "k2"},
            ]
        },
    )
    req = ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_cost_usd": 0.1}
    )
    filled = with_key_budgets(req, cfg, "edge")
    assert filled.max_latency_ms == 500 and filled.max_cost_usd == 0.1
    own = with_key_budgets(req.model_copy(update={"max_latency_ms": 900}), cfg, "edge")
    assert own.max_latency_ms == 900  # the request's own value wins
    assert with_key_budgets(req, cfg, "plain") is req
    assert with_key_budgets(req, cfg, None) is req


@pytest.fixture
async def client(artifact: Artifact) -> AsyncIterator[httpx.AsyncClient]:
    assert artifact.path is not None
    cfg = load_config(
        None,
        experts=expert_dicts(),
        routing={"default_strategy": "moe2", "strategies": {"moe2": dict(FAKE)}},
        artifacts_dir=Path(artifact.path).parent.parent,
        server={
            "api_keys": [
                {"name": "edge", "key": "edge-key", "budgets": {"max_latency_ms": 500}},
                {"name": "free", "key": "free-key"},
            ]
        },
    )
    orch = Orchestrator(cfg)
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    await orch.stop()


async def post(client: httpx.AsyncClient, key: str, text: str, **body: Any) -> httpx.Response:
    prime([text])
    return await client.post(
        "/v1/chat/completions",
        json={
            "model": "router/moe2",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": TOKENS,
            **body,
        },
        headers={"authorization": f"Bearer {key}"},
    )


async def test_http_budgets_per_key_and_per_request(client: httpx.AsyncClient) -> None:
    r = await post(client, "free-key", "chat: a story please")
    assert r.status_code == 200, r.text
    assert r.json()["routing"]["answered_by"] == ["big"]
    r = await post(client, "edge-key", "chat: a story please")  # the key's 500 ms budget
    trace = r.json()["routing"]
    assert trace["strategy"] == "moe2" and trace["answered_by"][0] in ("mathy", "cody")
    assert trace["details"]["budget"]["max_latency_ms"] == 500
    assert trace["details"]["subset"] == trace["experts"]
    assert "latency ≤ 500 ms" in trace["reason"]
    r = await post(client, "edge-key", "chat: a story please", max_latency_ms=5000)
    assert r.json()["routing"]["answered_by"] == ["big"]  # the request's own budget wins
    r = await post(client, "free-key", "chat: a story please", max_latency_ms=5)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "budget_infeasible" and err["param"] == "max_latency_ms"
    assert err["type"] == "invalid_request_error"
