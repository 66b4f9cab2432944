"""Symbolic-MoE through the pipeline and the batch job over echo experts (declared skills, fake
embeddings): recruited experts answer, the aggregator synthesizes, the trace lists the experts,
their answers' lengths and the aggregator; the batch job runs the recruited experts' groups in
one round and every aggregator call in the next, loading each expert once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.batch import run_batch
from orchestrator.config import load_config
from orchestrator.pipeline import Orchestrator
from orchestrator.protocol import ChatCompletionRequest
from tests.routing_data import FAKE_EMBEDDER, prime

EXPERTS = [
    {"name": "alpha", "backend": "echo", "model": "x", "memory_gb": 1, "skills": ["math"]},
    {"name": "beta", "backend": "echo", "model": "x", "memory_gb": 1, "skills": ["code"]},
    {"name": "gamma", "backend": "echo", "model": "x", "memory_gb": 1, "skills": ["chat", "talk"]},
]
OPTIONS = {
    "embedding_model": FAKE_EMBEDDER,
    "profiles": "experts",
    "adaptive": False,
    "k": 2,
}
prime(["math", "code", "chat", "talk"])


def config(**kw: Any) -> Any:
    return load_config(
        None,
        experts=kw.pop("experts", EXPERTS),
        routing={"default_strategy": "symbolic-moe", "strategies": {"symbolic-moe": OPTIONS}},
        **kw,
    )


def request(text: str, **body: Any) -> ChatCompletionRequest:
    prime([text])
    return ChatCompletionRequest.model_validate(
        {"model": "router/symbolic-moe", "messages": [{"role": "user", "content": text}], **body}
    )


async def test_recruited_experts_answer_and_the_aggregator_synthesizes() -> None:
    orchestrator = Orchestrator(config())
    await orchestrator.start()
    try:
        completion = await orchestrator.complete(request("math: what is 2+2"))
        trace = completion.routing
        assert trace is not None
        assert trace.strategy == "symbolic-moe" and trace.experts[0] == "alpha"
        assert len(trace.experts) == 2 and trace.aggregator == "gamma"
        assert trace.answered_by == trace.experts
        # the aggregator (an echo) answers with the synthesis prompt: question + both answers
        text = completion.choices[0].message.content
        assert "math: what is 2+2" in text and "Answer 2:" in text
        assert trace.details["answer_chars"] == {e: len("math: what is 2+2") for e in trace.experts}
        assert trace.details["skills"][0] == "math" and trace.details["k"] == 2
        assert [a.expert for a in trace.attempts] == [*trace.experts, "gamma"]

        trace, chunks = await orchestrator.start_stream(request("code: sort a list", stream=True))
        parts = [c async for c in chunks]
        assert trace.aggregator == "gamma" and len(trace.details["answer_chars"]) == 2
        assert parts[0]["routing"]["details"]["answer_chars"] == trace.details["answer_chars"]
        streamed = "".join(p["choices"][0]["delta"].get("content", "") for p in parts[1:])
        assert "code: sort a list" in streamed and "Answer 1:" in streamed
    finally:
        await orchestrator.stop()


async def test_batch_runs_recruited_groups_then_one_aggregator_round(tmp_path: Path) -> None:
    topics = ["math", "code", "chat"]
    texts = [f"{topics[i % 3]}: question {i}" for i in range(30)]
    prime(texts)
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"q{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "auto", "messages": [{"role": "user", "content": t}]},
                }
            )
            + "\n"
            for i, t in enumerate(texts)
        )
    )
    # a small delay per generate call lets lines finish (and queue their aggregator call)
    # while the round still serves other experts, as real experts do
    experts = [{**e, "engine": {"delay_ms": 20}} for e in EXPERTS]
    cfg = config(experts=experts, scheduler={"max_resident_experts": 1, "max_batch_size": 64})
    summary = await run_batch(cfg, src, dst)
    assert summary.ok == 30
    rows = {r["custom_id"]: r for r in map(json.loads, dst.read_text().splitlines())}
    for i in range(30):
        body = rows[f"q{i}"]["response"]["body"]
        assert len(body["routing"]["experts"]) == 2 and body["routing"]["aggregator"] == "gamma"
        assert "Answer 2:" in body["choices"][0]["message"]["content"]
    # round 1: every recruited expert's group (each loaded once); round 2: the 30 aggregator
    # calls together (gamma loaded a second time only because one expert fits at once)
    assert summary.scheduler.rounds == 2
    assert summary.scheduler.batch_sizes[30] == 1
    loads = dict(summary.residency.loads_by_expert)
    assert loads["alpha"] == 1 and loads["beta"] == 1 and loads["gamma"] <= 2
