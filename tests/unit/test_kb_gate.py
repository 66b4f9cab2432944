"""ExpertRAG's gate, decisions, trace and cost terms, on a fake knowledge store.

The store is faked (an in-memory index and a bag-of-words embedder) so the strategy's logic is
tested in milliseconds; tests/integration/test_kb_*.py use Redis and MiniLM, and
tests/engine/test_expertrag_engine.py a real model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import ExpertConfig, load_config
from orchestrator.errors import ConfigError
from orchestrator.kb.store import Hit, IndexSnapshot, Passage
from orchestrator.types import Message, Query
from routers.expertrag import (
    ExpertRAGStrategy,
    RetrievalGate,
    best_f1_threshold,
    context_message,
    expert_confidence,
    gate_features,
    precision_recall,
)
from tests.fakes import WordEmbedder


class FakeKnowledge:
    def __init__(self, chunks: dict[str, str]) -> None:
        self.embedder = WordEmbedder()
        self.texts = chunks
        ids = tuple(chunks)
        self.snap = IndexSnapshot(
            7,
            ids,
            tuple(i.split("#")[0] for i in ids),
            np.asarray([len(chunks[i]) for i in ids]),
            self.embedder.encode([chunks[i] for i in ids]),
        )
        self.fetches = 0

    def snapshot(self) -> IndexSnapshot:
        return self.snap

    def passages(self, hits: Sequence[Hit]) -> list[Passage]:
        self.fetches += 1
        return [
            Passage(h.chunk_id, h.doc_id, f"Spec {h.doc_id}", self.texts[h.chunk_id], {}, h.score)
            for h in hits
        ]


CHUNKS = {
    "tarn#0": "Tarn-40 weather station battery capacity 5200 mAh lasts 41 days",
    "tarn#1": "Tarn-40 wind sensor Corvid-3 ultrasonic weighs 780 grams",
    "quenby#0": "Quenby water meter calibration every 90 days titanium probe",
}
POSITIVE = [
    "What is the battery capacity of the Tarn-40 weather station?",
    "Which wind sensor does the Tarn-40 station use?",
    "How often should the Quenby water meter calibration happen?",
    "What is the Quenby probe made of?",
    "How long does the Tarn-40 battery last?",
    "How much does the Tarn-40 weigh?",
]
NEGATIVE = [
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is 12 multiplied by 7?",
    "Which planet is the largest in our solar system?",
    "Write a Python function that reverses a string.",
    "How many legs does a spider have?",
]
EXPERTS = [
    ExpertConfig(
        name="general",
        backend="echo",
        model="x",
        system_prompt="Be brief.",
        price={"input_per_1m": 2.0, "output_per_1m": 4.0},
    ),
    ExpertConfig(name="math", backend="echo", model="x", price={"input_per_1m": 1.0}),
]


def strategy(knowledge: FakeKnowledge | None = None, **options: object) -> ExpertRAGStrategy:
    s = ExpertRAGStrategy(EXPERTS, {"inner": "tests.fakes:KeywordStrategy", **options})
    if knowledge is not None:
        s.use_knowledge(knowledge)  # type: ignore[arg-type]
    return s


def q(text: str) -> Query:
    return Query(messages=(Message("user", text),))


@pytest.fixture
def trained() -> tuple[ExpertRAGStrategy, FakeKnowledge]:
    kb = FakeKnowledge(CHUNKS)
    s = strategy(kb)
    groups = ["tarn", "tarn", "quenby", "quenby", "tarn", "tarn", *NEGATIVE]
    s.train_gate(POSITIVE + NEGATIVE, [True] * 6 + [False] * 6, groups, C=1.0)
    return s, kb


def test_the_gate_opens_for_store_questions_only(
    trained: tuple[ExpertRAGStrategy, FakeKnowledge],
) -> None:
    s, kb = trained
    assert s.version == "unsaved" and s.gate is not None
    metrics = s.artifact.meta["metrics"] if s.artifact else {}
    assert metrics["rows"] == 12 and metrics["positives"] == 6
    open_, closed = s.route(
        [q("What battery does the Tarn-40 station have?"), q("What is the capital of Japan?")]
    )
    r_open = open_.details["retrieval"]
    r_closed = closed.details["retrieval"]
    assert r_open["decision"] == "retrieve" and r_closed["decision"] == "skip"  # type: ignore[index]
    assert r_open["p_retrieve"] >= r_open["threshold"] > r_closed["p_retrieve"]  # type: ignore[index,operator]
    # passages reach the expert as one numbered system message, citing the chunk it came from
    assert len(open_.context) == 1 and open_.context[0].role == "system"
    assert "[1] (Spec tarn) Tarn-40 weather station battery capacity" in open_.context[0].content
    assert r_open["passages"][0]["chunk_id"] == "tarn#0"  # type: ignore[index]
    assert closed.context == ()
    # one fetch for the whole batch; a batch of closed gates reads nothing
    assert kb.fetches == 1
    s.route([q("Who painted the Mona Lisa?")])
    assert kb.fetches == 1
    # both decisions are in the trace: the expert's, from the inner strategy, too
    assert open_.details["expert"]["strategy"] == "keyword"  # type: ignore[index]
    assert open_.strategy == "expertrag" and "retrieval on" in open_.reason
    assert "retrieval off" in closed.reason and "keyword" in closed.reason


def test_cost_terms_follow_the_formula(trained: tuple[ExpertRAGStrategy, FakeKnowledge]) -> None:
    s, _ = trained
    for d in s.route([q("Which wind sensor is on the Tarn-40?"), q("Who wrote Hamlet?")]):
        c = d.details["retrieval"]["cost"]  # type: ignore[index]
        p = c["p_retrieve"]
        assert c["c_context_usd"] == pytest.approx(c["context_tokens"] * 2.0 / 1e6)
        assert c["c_expert_usd"] == pytest.approx(
            (c["prompt_tokens"] * 2.0 + c["completion_tokens"] * 4.0) / 1e6
        )
        assert c["expected_usd"] == pytest.approx(
            p * (c["c_retrieval_usd"] + c["c_context_usd"]) + c["c_expert_usd"], rel=1e-3
        )
        assert c["expected_saved_usd"] == pytest.approx(
            (1 - p) * (c["c_retrieval_usd"] + c["c_context_usd"]), rel=1e-2
        )
        retrieved = d.details["retrieval"]["decision"] == "retrieve"  # type: ignore[index]
        assert c["saved_usd"] == (0.0 if retrieved else c["c_context_usd"])
        assert c["context_tokens"] > 0  # a closed gate still says what it saved


def test_always_and_never(trained: tuple[ExpertRAGStrategy, FakeKnowledge]) -> None:
    _, kb = trained
    always = strategy(kb, gate="always")
    always.setup()
    d = always.route([q("What is the capital of France?")])[0]
    assert d.details["retrieval"]["decision"] == "retrieve" and len(d.context) == 1  # type: ignore[index]
    never = strategy(None, gate="never")
    never.setup()  # needs no knowledge store at all
    d = never.route([q("What battery does the Tarn-40 have?")])[0]
    assert d.context == () and d.details["retrieval"]["decision"] == "skip"  # type: ignore[index]


def test_min_score_and_retrieval_expert(trained: tuple[ExpertRAGStrategy, FakeKnowledge]) -> None:
    s, kb = trained
    picky = strategy(kb, min_score=0.99, retrieval_expert="math")
    picky.use_gate(s.gate)
    picky.setup()
    d = picky.route([q("What battery does the Tarn-40 station have?")])[0]
    assert d.context == () and "no passage scored" in d.reason
    assert d.experts == ("general",)  # nothing retrieved: the inner choice stands
    eager = strategy(kb, retrieval_expert="math")
    eager.use_gate(s.gate)
    eager.setup()
    d = eager.route([q("What battery does the Tarn-40 station have?")])[0]
    assert d.experts == ("math",) and d.candidates[0].expert == "math"
    assert {c.expert for c in d.candidates} == {"general", "math"}


def test_options_are_checked_at_config_load() -> None:
    def load(options: dict[str, object]) -> None:
        load_config(
            None,
            experts=[{"name": "e", "backend": "echo", "model": "x"}],
            routing={"strategies": {"expertrag": options}},
        )

    load({"inner": "coe", "top_k": 5})
    for bad, needle in [
        ({"inner": "expertrag"}, "cannot wrap itself"),
        ({"inner": "nope"}, "unknown strategy 'nope'"),
        ({"inner_options": {"bogus": 1}}, "inner_options"),
        ({"gate": "sometimes"}, "gate"),
        ({"top_k": 0}, "top_k"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load(bad)
    with pytest.raises(ConfigError, match="retrieval_expert"):
        strategy(None, retrieval_expert="nobody")


def test_serving_without_a_trained_gate_says_how_to_train_one(tmp_path: Path) -> None:
    s = ExpertRAGStrategy(EXPERTS, {"inner": "tests.fakes:KeywordStrategy"}, artifacts_dir=tmp_path)
    s.use_knowledge(FakeKnowledge(CHUNKS))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="orchestrator kb train-gate"):
        s.setup()


def test_serving_needs_redis_or_a_store() -> None:
    with pytest.raises(ConfigError, match="knowledge store"):
        strategy(None).setup()
    s = strategy(None)
    s.bind(load_config(None, experts=[{"name": "e", "backend": "echo", "model": "x"}]))
    with pytest.raises(ConfigError, match="redis_url"):
        s.setup()


def test_a_gate_trained_for_another_inner_strategy_is_refused(
    trained: tuple[ExpertRAGStrategy, FakeKnowledge],
) -> None:
    s, kb = trained
    assert s.gate is not None
    other = strategy(kb)
    other.use_gate(RetrievalGate(s.gate.model, 0.5, "semantic", 3, "words"))
    with pytest.raises(ConfigError, match="trained with inner strategy 'semantic'"):
        other.setup()


def test_helpers() -> None:
    x = gate_features(np.ones((2, 4)), np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]]),
                      np.array([0.7, 0.1]), np.array([0.3, 0.0]))  # fmt: skip
    assert x.shape == (2, 9)
    assert x[0, 4:].tolist() == pytest.approx([0.9, 0.5, 0.8, 0.7, 0.3])
    t, f1 = best_f1_threshold(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1, 1, 0, 0]))
    assert f1 == 1.0 and 0.3 < t < 0.8
    assert precision_recall(np.array([1, 1, 0]), np.array([1, 0, 1])) == (0.5, 0.5)
    s = strategy(None)
    from orchestrator.types import Candidate, Decision

    d = Decision("x", ("a",), (Candidate("a", 0.9), Candidate("b", 0.6)), "r")
    assert expert_confidence(d) == pytest.approx((0.9, 0.3))
    d = Decision("x", ("a",), (Candidate("a", 0.2),), "r", details={"confidence": 0.75})
    assert expert_confidence(d) == (0.75, 0.0)
    passages = [Passage(f"d#{i}", "d", "Doc", "x" * 300, {}, 0.5) for i in range(5)]
    message = context_message(passages, "Use these.", 700)
    assert message is not None and len(message.content) <= 700
    assert message.content.startswith("Use these.\n\n[1] (Doc) ")
    assert "[3]" in message.content and "[4]" not in message.content  # the third, cut
    assert context_message([], "Use these.", 700) is None
    assert s.name == "expertrag"
