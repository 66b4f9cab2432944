"""Symbolic-MoE on synthetic recorded outcomes with fake embeddings: skill inference (both
methods, cached), profiles and the aggregation profile in the artifact, recruiting (top-k,
seeded sampling, adaptive k), the untrained mode on declared skills, and the eval scoring of
multi-expert decisions (weighted vote over recorded answers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError
from rich.console import Console

from orchestrator.config import ExpertConfig
from orchestrator.evaluation.ensemble import (
    ensemble_point,
    option_letters,
    parse_choice,
    print_ensembles,
    recorded_choices,
    score_row,
    weighted_lower_median,
)
from orchestrator.evaluation.harness import Harness
from orchestrator.types import Decision, Message, Query, RoutingOptions
from routers import create_strategy, get_strategy_class, list_strategies
from routers.artifacts import ArtifactStore
from routers.skills import SkillCache, mine_keywords, parse_keywords
from routers.symbolic_moe import SymbolicMoEStrategy, adaptive_k, fit_profiles, recruit
from tests.routing_data import FAKE_EMBEDDER, prime, synthetic

FAKE = {"embedding_model": FAKE_EMBEDDER, "max_keywords": 0}
prime(["math", "code", "chat"])  # the category skills' names


def experts(prefix: str = "") -> list[ExpertConfig]:
    return [
        ExpertConfig(name=f"{prefix}{m}", backend="echo", model=m, engine={"model": m})
        for m in ("big", "mathy", "cody")
    ]


def ask(*texts: str, k: int | None = None) -> list[Query]:
    prime(list(texts))
    return [Query(messages=(Message("user", t),), options=RoutingOptions(k=k)) for t in texts]


@pytest.fixture(scope="module")
def artifact():
    return SymbolicMoEStrategy.train(synthetic(40), FAKE)


def strategy(artifact, **options) -> SymbolicMoEStrategy:
    s = SymbolicMoEStrategy(experts(), {**FAKE, **options})
    s.use_artifact(artifact)
    return s


def test_registered_with_checked_options():
    assert "symbolic-moe" in list_strategies()
    assert get_strategy_class("symbolic-moe") is SymbolicMoEStrategy
    with pytest.raises(ValidationError, match="min_k"):
        SymbolicMoEStrategy.Options.model_validate({"k": 2, "min_k": 3})


def test_artifact_holds_profiles_global_prior_and_aggregation_profile(tmp_path, artifact):
    saved = SymbolicMoEStrategy.train(synthetic(40), FAKE, ArtifactStore(tmp_path))
    assert saved.version == "v0001" and (tmp_path / "symbolic-moe" / "v0001").is_dir()
    state = artifact.state
    assert state["vocabulary"]["names"] == ["chat", "code", "math"]
    competence = state["competence"]  # skills × models (big, mathy, cody)
    math, code = (
        state["vocabulary"]["names"].index("math"),
        state["vocabulary"]["names"].index("code"),
    )
    assert np.argmax(competence[math]) == 1 and np.argmax(competence[code]) == 2
    assert np.argmax(state["global"]) == 0  # big is the best overall
    # on contested questions (recruited experts disagree) big is right most often
    assert artifact.meta["metrics"]["aggregator"] == "big"
    assert artifact.meta["metrics"]["contested_valid_rows"] > 0


def test_recruits_by_skill_and_adaptive_k_is_one_when_one_expert_dominates(artifact):
    moe = strategy(artifact)
    maths, code, chat = moe.route(ask("math: what is 7*6", "code: reverse a list", "chat: hi"))
    assert maths.experts == ("mathy",) and code.experts == ("cody",) and chat.experts == ("big",)
    assert maths.aggregator is None  # one expert needs no aggregator
    assert maths.details["skills"][0] == "math" and maths.details["k"] == 1
    assert maths.version == artifact.version and maths.strategy == "symbolic-moe"
    assert maths.candidates[0].expert == "mathy"
    assert {c.expert for c in maths.candidates} == {"big", "mathy", "cody"}


def test_unsure_router_recruits_more_experts_and_names_the_aggregator(artifact):
    # a flat relevance distribution (high temperature) is an unsure router: k grows to 3
    unsure = strategy(artifact, temperature=5.0)
    (d,) = unsure.route(ask("math: integrate x"))
    assert len(d.experts) == 3 and d.experts[0] == "mathy" and d.aggregator == "big"
    weights = [r["weight"] for r in d.details["recruited"].values()]
    assert abs(sum(weights) - 1) < 1e-3 and weights == sorted(weights, reverse=True)
    assert "aggregator big" in d.reason
    fixed = strategy(artifact, adaptive=False, k=2)
    (d2,) = fixed.route(ask("math: integrate x"))
    assert d2.experts == ("mathy", "big") and d2.aggregator == "big"
    # a request's own k caps the strategy's
    (d3,) = strategy(artifact, adaptive=False, k=3).route(ask("math: integrate x", k=2))
    assert len(d3.experts) == 2


def test_mass_is_the_knob_from_min_k_to_k(artifact):
    assert SymbolicMoEStrategy.knob == "mass"
    assert SymbolicMoEStrategy.knob_values(artifact.state)[0] == 0.0
    q = ask("code: a parser")
    low = strategy(artifact, temperature=5.0, mass=0.0, min_k=2).route(q)[0]
    high = strategy(artifact, temperature=5.0, mass=1.0).route(q)[0]
    assert len(low.experts) == 2 and len(high.experts) == 3
    variants = SymbolicMoEStrategy.eval_variants({"k": 3})
    assert variants["fixed k=1"] == {"adaptive": False, "k": 1, "min_k": 1}
    assert "fixed k=3" in variants and "adaptive, sampled" in variants


def test_adaptive_k_and_recruit_helpers():
    assert adaptive_k(np.array([0.9, 0.05, 0.05]), 0.8, 1, 3) == 1
    assert adaptive_k(np.array([0.4, 0.35, 0.25]), 0.8, 1, 3) == 3
    assert adaptive_k(np.array([0.4, 0.35, 0.25]), 0.7, 1, 3) == 2
    assert adaptive_k(np.array([0.9, 0.1]), 0.5, 2, 3) == 2  # min_k, and no more than exist
    rel = np.array([0.5, 0.9, 0.1, 0.8])
    served = np.array([0, 1, 3])  # model 2 has no expert: never recruited
    picked, ranking, p = recruit(
        rel,
        served,
        np.zeros(4),
        k=3,
        min_k=1,
        adaptive=False,
        mass=1,
        selection="topk",
        temperature=0.1,
    )
    assert picked == [1, 3, 0] and ranking.tolist() == [1, 3, 0] and p[2] == 0
    assert abs(p.sum() - 1) < 1e-9


def test_sampling_is_seeded_per_query_and_follows_relevance(artifact):
    sampled = strategy(artifact, selection="sample", adaptive=False, k=2, temperature=0.3)
    queries = ask(*[f"math: question {i}" for i in range(40)])
    first = [d.experts for d in sampled.route(queries)]
    again = [
        d.experts
        for d in strategy(artifact, selection="sample", adaptive=False, k=2, temperature=0.3).route(
            queries
        )
    ]
    assert first == again  # same query, same seed: same experts
    assert all(len(e) == 2 for e in first)
    assert sum("mathy" in e for e in first) > 30  # the most relevant expert is sampled most
    assert len(set(first)) > 1  # but not always the same pair


def test_profiles_shrink_rare_skills_to_the_global_prior():
    weights = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.1]])
    scores = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    competence, evidence, global_ = fit_profiles(weights, scores, prior_rows=1.0)
    assert evidence.tolist() == [2.0, 0.1]
    assert np.allclose(global_, [2 / 3, 1 / 3])
    assert competence[0, 0] > 0.85  # well-evidenced skill: close to its own mean (1.0)
    assert abs(competence[1, 1] - (0.1 + 1 / 3) / 1.1) < 1e-9  # rare: near the prior


def test_declared_skills_profile_without_an_artifact(tmp_path):
    pool = [
        ExpertConfig(name="general", backend="echo", model="m", skills=["chat", "chat talk"]),
        ExpertConfig(name="calc", backend="echo", model="m", skills=["math"]),
        ExpertConfig(name="coder", backend="echo", model="m", skills=["code"]),
    ]
    prime(["chat talk"])
    moe = create_strategy(
        "symbolic-moe", pool, {**FAKE, "k": 2, "adaptive": False}, artifacts_dir=tmp_path
    )
    moe.setup()  # no artifact under tmp_path: auto falls back to the declared skills
    (d,) = moe.route(ask("math: 2+2"))
    assert d.experts[0] == "calc" and len(d.experts) == 2
    assert d.aggregator == "general"  # declares the most skills
    assert d.details["profiles"] == "experts" and d.version is None
    named = create_strategy(
        "symbolic-moe", pool, {**FAKE, "profiles": "experts", "aggregator": "coder", "k": 2}
    )
    named.setup()
    assert named.aggregator == "coder"
    with pytest.raises(Exception, match="no trained 'symbolic-moe' artifact"):
        create_strategy(
            "symbolic-moe", pool, {**FAKE, "profiles": "artifact"}, artifacts_dir=tmp_path
        ).setup()


def test_llm_skill_method_snaps_keywords_to_the_vocabulary_and_caches(artifact):
    calls: list[Sequence[str]] = []

    def llm(prompts: Sequence[str]) -> list[str]:
        calls.append(prompts)
        return ["- code, codegen\n" if "parser" in p else "nothing useful" for p in prompts]

    prime(["code", "codegen", "nothing useful"])
    moe = strategy(artifact, skill_method="llm", min_similarity=0.2)
    moe.set_skill_llm(llm)
    a, b = moe.route(ask("code: write a parser", "math: 1+1"))
    assert a.details["skill_method"] == "llm" and a.details["keywords"] == ["code", "codegen"]
    assert a.details["skills"][0] == "code" and a.experts[0] == "cody"
    assert b.details["skills"][0] == "math"  # nothing snapped: the embedding method decides
    moe.route(ask("code: write a parser"))
    assert len(calls) == 1 and len(calls[0]) == 2  # the second time came from the cache
    assert moe.inference is not None and moe.inference.cache.hits >= 1


def test_keyword_parsing_and_mining():
    assert parse_keywords("Keywords: Algebra, molecular biology;\n1. Python.") == [
        "algebra",
        "molecular biology",
        "python",
    ]
    assert parse_keywords("a, a, a very long phrase that is no keyword at all, b") == ["a", "b"]
    topics = "enzyme quadratic python sonnet tariff glacier verdict neuron ledger orbit"
    texts = [f"the {t} question {t}{i}" for t in topics.split() for i in range(12)]
    mined = mine_keywords(texts, 10, min_df=5)
    assert "enzyme" in mined and "quadratic" in mined and "the" not in mined
    cache = SkillCache(size=1)
    cache.put("a", ((0, 1.0),))
    cache.put("b", ((1, 1.0),))
    assert cache.get("a") is None and cache.get("b") == ((1, 1.0),)


# -- scoring multi-expert decisions on recorded data -----------------------------------------


def test_options_are_parsed_from_recorded_responses():
    prompt = 'Q?\nA) x\nB) y\nC) z\nD) w\nPrint only a single choice  from "A" or "B" or "C" or "D"'
    assert option_letters(prompt + " without explanation.\nAnswer:") == "ABCD"
    assert option_letters("What?\n\nA) one\nB) two") == "AB"
    assert [parse_choice(r, "ABCD") for r in ("C", "B\n", "(A)", "A) home", "The answer is D")] == [
        "C",
        "B",
        "A",
        "A",
        "D",
    ]
    assert parse_choice("Okay,", "ABCD") is None and parse_choice("I do", "AB") is None


def test_vote_median_upper_bound_and_cost():
    scores = np.array([1.0, 0.0, 0.0])
    costs = np.array([0.3, 0.1, 0.1])
    # no parsed options: correct iff the right experts hold more than half the weight
    heavy = score_row(scores, costs, [0, 1, 2], np.array([0.6, 0.2, 0.2]), 0, None)
    light = score_row(scores, costs, [0, 1, 2], np.array([0.4, 0.3, 0.3]), 0, None)
    assert (heavy.vote, light.vote, light.upper) == (1.0, 0.0, 1.0)
    assert heavy.cost == pytest.approx(0.5 + 0.3)  # three experts + the aggregator (model 0)
    # parsed options: wrong answers that differ split their votes, the right one wins
    split = score_row(
        scores, costs, [0, 1, 2], np.array([0.4, 0.3, 0.3]), 0, np.array(["A", "B", "C"])
    )
    assert split.vote == 1.0 and split.parsed
    one = score_row(scores, costs, [1], np.array([1.0]), 0, None)
    assert one.cost == pytest.approx(0.1) and one.vote == 0.0  # one expert: no aggregator
    assert weighted_lower_median(np.array([0.2, 0.9]), np.array([0.5, 0.5])) == 0.2


def test_ensemble_point_and_harness_report_symbolic_moe():
    data = synthetic(60)
    harness = Harness(data, options={"symbolic-moe": {**FAKE, "temperature": 1.0}})
    result = harness.run(["symbolic-moe"])
    moe = result.strategy("symbolic-moe")
    assert moe.knob == "mass" and moe.chosen_knob is not None
    assert {p.experts_per_query for p in moe.curve} >= {1.0, 3.0}  # mass 0 … 1
    for p in moe.curve:
        assert p.upper_accuracy is not None and p.upper_accuracy >= p.accuracy - 1e-9
    k1, k3 = moe.variants["fixed k=1"], moe.variants["fixed k=3"]
    assert k1.experts_per_query == 1.0 and k3.experts_per_query == 3.0
    assert k3.total_cost > k1.total_cost  # three experts and an aggregator cost more
    assert "variants" in moe.as_dict() and "experts_per_query" in moe.as_dict()["headline"]
    console = Console(record=True, width=160)
    print_ensembles(result, console)
    text = console.export_text()
    assert "fixed k=3" in text and "aggregator: big" in text

    decisions = [
        Decision("x", ("big", "mathy"), (), "", aggregator="big", details={}),
        Decision("x", ("cody",), (), ""),
    ]
    point, summary = ensemble_point(
        decisions, {"big": 0, "mathy": 1, "cody": 2}, data.subset([0, 1])
    )
    assert point.n == 2 and summary.k_counts == {2: 1, 1: 1} and summary.mean_experts == 1.5
    assert recorded_choices(data) is None  # synthetic data records no answer texts


def test_options_parse_from_real_routerbench_answers_and_agree_with_correctness(shared_data):
    from orchestrator.evaluation.datasets import load_routerbench

    data = load_routerbench(shared_data / "routerbench")
    choices = recorded_choices(data)
    assert choices is not None
    for category in ("arc-challenge", "winogrande"):
        rows = [i for i, c in enumerate(data.categories) if c == category]
        parsed = np.mean([choices[i, j] is not None for i in rows for j in range(len(data.models))])
        assert parsed > 0.9, (category, parsed)
        for i in rows:  # the right experts chose one option, and no wrong expert chose it
            right = {choices[i, j] for j in range(len(data.models)) if data.scores[i, j] == 1}
            wrong = {choices[i, j] for j in range(len(data.models)) if data.scores[i, j] == 0}
            assert len(right - {None}) <= 1 and not (right & wrong) - {None}
    mbpp = [i for i, c in enumerate(data.categories) if c == "mbpp"]
    assert all(choices[i, j] is None for i in mbpp for j in range(len(data.models)))
