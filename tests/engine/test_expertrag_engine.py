"""ExpertRAG with a real model: SmolLM2-135M-Instruct on CPU (transformers backend), the demo
pool's four experts, MiniLM, a real Redis, over HTTP.

The gate is trained on the labelled example set without the questions asked here. Questions
about the made-up Brindlewave catalogue (facts that exist only in the knowledge store) are
answered wrongly by the routed expert without retrieval and rightly through router/expertrag,
which retrieves for them; a general question skips retrieval and is answered from what the
model knows. Answers are greedy (the demo's temperature 0), so the run is repeatable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.api import build_app
from orchestrator.config import load_config
from orchestrator.kb.evaluation import Labelled, is_correct, load_labelled
from orchestrator.kb.store import DocumentIn, KnowledgeStore
from orchestrator.pipeline import Orchestrator
from orchestrator.store import RedisStore
from routers.artifacts import ArtifactStore
from tests.conftest import ROOT

pytest.importorskip("transformers")

KB = ROOT / "docs" / "examples" / "kb"
# Store questions SmolLM2 gets right from the passages (`orchestrator eval-rag` lists which do:
# 10 of 15 held-out ones; none without retrieval).
ASKED_KB = (
    "Which particle sensor is inside the Brindlewave Vesper AQ-5?",
    "Where is the Quenby H2 water meter assembled?",
)
ASKED_GENERAL = "What is the capital of France?"


@pytest.fixture(scope="module")
def items() -> dict[str, Labelled]:
    return {x.question: x for x in load_labelled(KB / "questions.jsonl")}


@pytest.fixture
async def client(
    redis_url: str, tmp_path: Path, items: dict[str, Labelled]
) -> AsyncIterator[httpx.AsyncClient]:
    url = redis_url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(url).flushdb()
    cfg = load_config(
        None,
        redis_url=url,
        artifacts_dir=tmp_path,
        routing={
            "default_strategy": "semantic",
            "strategies": {"expertrag": {"inner": "semantic"}},
        },
    )
    kb = KnowledgeStore(RedisStore(url), cfg.knowledge)
    kb.add([DocumentIn(p.read_text(), p.stem) for p in sorted(KB.glob("brindlewave-*.md"))])
    from routers.expertrag import ExpertRAGStrategy

    train = [x for q, x in items.items() if q not in (*ASKED_KB, ASKED_GENERAL)]
    gate = ExpertRAGStrategy(cfg.experts, {"inner": "semantic"}, artifacts_dir=tmp_path)
    gate.bind(cfg)
    gate.train_gate(
        [x.question for x in train],
        [x.retrieve for x in train],
        [x.split_key for x in train],
        store=ArtifactStore(tmp_path),
    )
    kb.close()
    orch = Orchestrator(cfg)
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=1200
    ) as c:
        yield c
    await orch.stop()
    redis.Redis.from_url(url).flushdb()


async def ask(client: httpx.AsyncClient, question: str, model: str) -> dict[str, Any]:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": question}],
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_retrieval_only_when_it_helps(
    client: httpx.AsyncClient, items: dict[str, Labelled]
) -> None:
    questions = (*ASKED_KB, ASKED_GENERAL)
    routed = await asyncio.gather(*(ask(client, q, "router/expertrag") for q in questions))
    # the same expert, asked directly: the closed-book answer
    direct = await asyncio.gather(
        *(ask(client, q, r["model"]) for q, r in zip(questions, routed, strict=True))
    )
    report = []
    for q, r, d in zip(questions, routed, direct, strict=True):
        retrieval = r["routing"]["details"]["retrieval"]
        text, closed_book = (
            r["choices"][0]["message"]["content"],
            d["choices"][0]["message"]["content"],
        )
        report.append((q, retrieval["decision"], retrieval["p_retrieve"], text, closed_book))
    detail = "\n".join(map(str, report))
    for q, decision, _, text, closed_book in report[: len(ASKED_KB)]:
        assert decision == "retrieve", detail
        assert is_correct(text, items[q]), detail
        assert not is_correct(closed_book, items[q]), detail
    q, decision, _, text, closed_book = report[-1]
    assert decision == "skip", detail
    assert is_correct(text, items[q]) and text == closed_book, detail
    # the passages were in the expert's prompt; the general question's prompt did not grow
    for r, d in zip(routed[:-1], direct[:-1], strict=True):
        assert r["usage"]["prompt_tokens"] > d["usage"]["prompt_tokens"] + 50
    assert routed[-1]["usage"]["prompt_tokens"] == direct[-1]["usage"]["prompt_tokens"]
