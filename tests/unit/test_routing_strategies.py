"""Trainable strategies (CoE, kNN, threshold) and random, on synthetic recorded outcomes with
fake embeddings: fit → artifact → route, with the artifact version in every decision."""

from __future__ import annotations

import pytest

from orchestrator.config import ExpertConfig, load_config
from orchestrator.errors import ConfigError
from orchestrator.route import StrategySet
from orchestrator.types import Message, Query
from routers import create_strategy, get_strategy_class, list_strategies
from routers.artifacts import ArtifactStore
from routers.coe import CoEStrategy
from routers.knn import KNNStrategy
from routers.random_strategy import RandomStrategy
from routers.threshold import ThresholdStrategy
from tests.routing_data import FAKE_EMBEDDER, prime, synthetic

FAKE = {"embedding_model": FAKE_EMBEDDER}


def experts(prefix: str = "") -> list[ExpertConfig]:
    return [
        ExpertConfig(name=f"{prefix}{m}", backend="echo", model=m, engine={"model": m})
        for m in ("big", "mathy", "cody")
    ]


def ask(*texts: str) -> list[Query]:
    prime(list(texts))
    return [Query(messages=(Message("user", t),)) for t in texts]


def test_new_strategies_are_registered():
    assert {"coe", "knn", "threshold", "random"} <= set(list_strategies())
    assert get_strategy_class("coe") is CoEStrategy


def test_coe_routes_each_category_to_its_best_cheap_expert(tmp_path):
    data = synthetic(40)
    art = CoEStrategy.train(data, FAKE, ArtifactStore(tmp_path))
    assert art.version == "v0001"
    assert art.meta["metrics"]["classifier_valid_accuracy"] == 1.0
    coe = create_strategy(
        "coe", experts("x-"), {**FAKE, "min_confidence": 0.0}, artifacts_dir=tmp_path
    )
    coe.setup()
    math_q, code_q, chat_q = ask("math: what is 7*6", "code: reverse a list", "chat: hello there")
    decisions = coe.route([math_q, code_q, chat_q])
    assert [d.experts[0] for d in decisions] == ["x-mathy", "x-cody", "x-big"]
    assert all(d.version == "v0001" and d.strategy == "coe" for d in decisions)
    assert decisions[0].details["category"] == "math"
    assert "category 'math'" in decisions[0].reason
    assert {c.expert for c in decisions[0].candidates} == {"x-big", "x-mathy", "x-cody"}


def test_coe_cost_weight_trades_quality_for_cost():
    art = CoEStrategy.train(synthetic(40), FAKE)
    chat = ask("chat: tell me a story")
    quality_first = CoEStrategy(experts(), {**FAKE, "min_confidence": 0})
    quality_first.use_artifact(art)
    cheap = CoEStrategy(experts(), {**FAKE, "min_confidence": 0, "cost_weight": 50.0})
    cheap.use_artifact(art)
    assert quality_first.route(chat)[0].experts == ("big",)
    assert cheap.route(chat)[0].experts[0] in ("mathy", "cody")


def test_coe_low_confidence_goes_to_the_fallback():
    art = CoEStrategy.train(synthetic(40), FAKE)
    coe = CoEStrategy(experts(), {**FAKE, "min_confidence": 0.999, "fallback": "cody"})
    coe.use_artifact(art)
    (d,) = coe.route(ask("math: integrate x"))
    assert d.experts == ("cody",) and d.details["fallback"] is True
    assert "low confidence" in d.reason
    default = CoEStrategy(experts(), {**FAKE, "min_confidence": 0.999})
    default.use_artifact(art)
    assert default.route(ask("math: integrate x"))[0].experts == ("big",)  # most accurate


def test_models_map_to_experts_by_option_and_unmapped_models_are_never_chosen():
    art = CoEStrategy.train(synthetic(40), FAKE)
    pool = [
        ExpertConfig(name="generalist", backend="echo", model="x"),
        ExpertConfig(name="calc", backend="echo", model="y"),
    ]
    coe = CoEStrategy(
        pool, {**FAKE, "min_confidence": 0, "experts": {"big": "generalist", "mathy": "calc"}}
    )
    coe.use_artifact(art)
    code, maths = coe.route(ask("code: sort numbers", "math: 2+2"))
    assert code.experts == ("generalist",)  # cody has no expert here
    assert maths.experts == ("calc",)
    with pytest.raises(ConfigError, match="none of the artifact's recorded models"):
        CoEStrategy(pool, FAKE).use_artifact(art)
    with pytest.raises(ConfigError, match="which is no expert"):
        CoEStrategy(pool, {**FAKE, "experts": {"big": "nobody"}}).use_artifact(art)


def test_knn_predicts_per_query_quality_from_neighbours():
    art = KNNStrategy.train(synthetic(40), {**FAKE, "k": 10})
    knn = KNNStrategy(experts(), FAKE)
    knn.use_artifact(art)
    decisions = knn.route(ask("math: 3+4", "code: a parser", "chat: good morning"))
    assert [d.experts[0] for d in decisions] == ["mathy", "cody", "big"]
    assert decisions[0].details["k"] == 10
    chosen_k = KNNStrategy.train(synthetic(40), FAKE).meta["metrics"]["k"]
    assert chosen_k in (5, 10, 20, 40, 80)


def test_threshold_router_sends_hard_queries_to_the_strong_model():
    data = synthetic(40)
    art = ThresholdStrategy.train(data, {**FAKE, "weak": "mathy"})
    assert art.meta["metrics"]["strong"] == "big"
    router = ThresholdStrategy(experts(), {**FAKE, "threshold": 0.5})
    router.use_artifact(art)
    maths, chat = router.route(ask("math: 9*9", "chat: how are you"))
    assert maths.experts == ("mathy",) and chat.experts == ("big",)
    assert chat.details["win_rate"] > 0.5 > maths.details["win_rate"]
    everything_strong = ThresholdStrategy(experts(), {**FAKE, "threshold": 0.0})
    everything_strong.use_artifact(art)
    assert everything_strong.route(ask("math: 9*9"))[0].experts == ("big",)
    values = ThresholdStrategy.knob_values(art.state)
    assert values[0] == 0.0 and values[-1] > 1.0


def test_random_is_reproducible_with_a_seed():
    a = RandomStrategy(experts(), {"seed": 3}).route(ask(*["q"] * 20))
    b = RandomStrategy(experts(), {"seed": 3}).route(ask(*["q"] * 20))
    assert [d.experts for d in a] == [d.experts for d in b]
    assert len({d.experts[0] for d in a}) > 1
    with pytest.raises(ConfigError, match="are no experts"):
        RandomStrategy(experts(), {"experts": ["ghost"]})


def test_strategy_options_are_checked_when_the_config_loads(tmp_path):
    base = {"experts": [{"name": "a", "backend": "echo", "model": "m"}]}
    with pytest.raises(ConfigError, match=r"routing\.strategies\.coe\.min_confidence"):
        load_config(None, **base, routing={"strategies": {"coe": {"min_confidence": 2}}})
    with pytest.raises(ConfigError, match=r"routing\.strategies\.knn\.kk"):
        load_config(None, **base, routing={"strategies": {"knn": {"kk": 2}}})


def test_the_server_loads_the_configured_artifact_version(tmp_path):
    store = ArtifactStore(tmp_path)
    CoEStrategy.train(synthetic(40), FAKE, store)
    CoEStrategy.train(synthetic(40, seed=1), FAKE, store)
    cfg = load_config(
        None,
        experts=[e.model_dump() for e in experts()],
        routing={
            "default_strategy": "coe",
            "strategies": {"coe": {**FAKE, "artifact": "v0001", "min_confidence": 0}},
        },
        artifacts_dir=tmp_path,
    )
    strategy = StrategySet(cfg).get("coe")
    assert strategy.route(ask("code: a loop"))[0].version == "v0001"
