"""ExpertRAG over HTTP with real Redis and real MiniLM: the /admin/kb routes, a gate trained on
the example corpus deciding per request, passages reaching the expert, a document added after
training found without retraining, the admin scope, and Redis down.

The experts are echo backends (their prompt-token count shows what reached them); a real model
answering is tests/engine/test_expertrag_engine.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.api import build_app
from orchestrator.config import OrchestratorConfig, load_config
from orchestrator.kb.evaluation import load_labelled
from orchestrator.kb.store import DocumentIn, KnowledgeStore
from orchestrator.pipeline import Orchestrator
from orchestrator.store import RedisStore
from routers.artifacts import ArtifactStore
from tests.conftest import ROOT, free_port

KB = ROOT / "docs" / "examples" / "kb"
HELD_OUT = "brindlewave-vesper-aq5"  # no training question is about this document
NEW_DOC = (
    "# Brindlewave Saltmarsh T7 tide gauge\n\n"
    "The Saltmarsh T7 is a tide gauge made by Brindlewave Instruments. It records the water "
    "level every 6 minutes with a radar sensor called Heron-2 and keeps 14 months of data."
)


def settings(url: str, artifacts: Path, **extra: Any) -> OrchestratorConfig:
    return load_config(
        None,
        experts=[
            {
                "name": "general",
                "backend": "echo",
                "model": "x",
                "description": "General knowledge, geography, history, everyday questions.",
            },
            {
                "name": "math",
                "backend": "echo",
                "model": "x",
                "description": "Arithmetic, algebra, equations and word problems.",
            },
        ],
        routing={"default_strategy": "semantic", "strategies": {"expertrag": {"top_k": 2}}},
        redis_url=url,
        artifacts_dir=artifacts,
        **extra,
    )


@pytest.fixture(scope="module")
def trained(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The example corpus in its own Redis database, and a gate trained on it (saved)."""
    url = redis_url.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    artifacts = tmp_path_factory.mktemp("artifacts")
    cfg = settings(url, artifacts)
    kb = KnowledgeStore(RedisStore(url), cfg.knowledge)
    kb.add([DocumentIn(p.read_text(), p.stem) for p in sorted(KB.glob("brindlewave-*.md"))])
    from routers.expertrag import ExpertRAGStrategy

    items = [x for x in load_labelled(KB / "questions.jsonl") if x.group != HELD_OUT]
    strategy = ExpertRAGStrategy(cfg.experts, {"top_k": 2}, artifacts_dir=artifacts)
    strategy.bind(cfg)
    strategy.train_gate(
        [x.question for x in items],
        [x.retrieve for x in items],
        [x.split_key for x in items],
        store=ArtifactStore(artifacts),
    )
    kb.close()
    yield url, artifacts
    client.flushdb()
    client.close()


@pytest.fixture
async def client(trained: tuple[str, Path]) -> AsyncIterator[httpx.AsyncClient]:
    orch = Orchestrator(settings(*trained))
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    await orch.stop()


async def ask(client: httpx.AsyncClient, question: str, model: str = "router/expertrag") -> Any:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question}]},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_the_gate_decides_per_request_and_passages_reach_the_expert(
    client: httpx.AsyncClient,
) -> None:
    question = "Which particle sensor is inside the Brindlewave Vesper AQ-5?"
    body = await ask(client, question)
    retrieval = body["routing"]["details"]["retrieval"]
    assert body["routing"]["strategy"] == "expertrag"
    assert retrieval["decision"] == "retrieve", body["routing"]["reason"]
    assert retrieval["passages"][0]["doc_id"] == HELD_OUT
    assert retrieval["passages"][0]["ref"] == 1
    assert body["routing"]["version"] == "v0001"
    assert body["routing"]["details"]["expert"]["strategy"] == "semantic"
    # the echo expert counts every word it was sent: the passages were in its prompt
    direct = await ask(client, question, model=body["model"])
    assert body["usage"]["prompt_tokens"] > direct["usage"]["prompt_tokens"] + 30
    general = await ask(client, "Who wrote Romeo and Juliet?")
    assert general["routing"]["details"]["retrieval"]["decision"] == "skip"
    plain = await ask(client, "Who wrote Romeo and Juliet?", model=general["model"])
    assert general["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    cost = general["routing"]["details"]["retrieval"]["cost"]
    assert cost["context_tokens_saved"] > 0 and cost["saved_usd"] >= 0


async def test_a_document_added_later_is_retrieved_without_retraining(
    client: httpx.AsyncClient,
) -> None:
    question = "How often does the Saltmarsh T7 tide gauge record the water level?"
    before = await ask(client, question)
    passages = before["routing"]["details"]["retrieval"]["passages"]
    assert all(p["doc_id"] != "saltmarsh-t7" for p in passages)
    r = await client.post(
        "/admin/kb/documents",
        json={"documents": [{"id": "saltmarsh-t7", "text": NEW_DOC, "metadata": {"v": 1}}]},
    )
    assert r.status_code == 200, r.text
    after = await ask(client, question)
    retrieval = after["routing"]["details"]["retrieval"]
    assert retrieval["decision"] == "retrieve"
    assert retrieval["passages"][0]["doc_id"] == "saltmarsh-t7"
    assert retrieval["index_version"] > before["routing"]["details"]["retrieval"]["index_version"]
    assert (await client.delete("/admin/kb/documents/saltmarsh-t7")).status_code == 200
    gone = await ask(client, question)
    assert all(
        p["doc_id"] != "saltmarsh-t7" for p in gone["routing"]["details"]["retrieval"]["passages"]
    )


async def test_admin_kb_routes(client: httpx.AsyncClient) -> None:
    docs = [{"id": "note-1", "text": "# Note\n\nThe Lund office has a red door."}]
    r = await client.post("/admin/kb/documents", json={"documents": docs})
    assert r.status_code == 200
    body = r.json()
    assert body["data"][0] == {**body["data"][0], "id": "note-1", "title": "Note", "chunks": 1}
    assert body["data"][0]["replaced"] is False
    r = await client.post("/admin/kb/documents", json={"documents": docs})
    assert r.json()["data"][0]["replaced"] is True and r.json()["version"] > body["version"]
    listed = (await client.get("/admin/kb/documents", params={"limit": 1000})).json()
    assert "note-1" in [d["id"] for d in listed["data"]]
    assert listed["total"] == len(listed["data"]) >= 9  # the corpus' 8 documents and this one
    one = (await client.get("/admin/kb/documents/note-1")).json()
    assert one["text"].endswith("red door.")
    assert (await client.delete("/admin/kb/documents/note-1")).json() == {
        "id": "note-1",
        "deleted": True,
    }
    missing = await client.delete("/admin/kb/documents/note-1")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    for bad, param in [
        ({"documents": []}, "documents"),
        ({"documents": [{"id": "x"}]}, "documents.0.text"),
        ({"documents": [{"text": "t", "metdata": {}}]}, "documents.0.metdata"),
        ({"documents": [{"text": "t", "id": "bad id"}]}, "documents.0.id"),
    ]:
        r = await client.post("/admin/kb/documents", json=bad)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


async def test_admin_scope_is_required(trained: tuple[str, Path]) -> None:
    keys = [
        {"name": "app", "key": "k-user", "scopes": ["user"]},
        {"name": "ops", "key": "k-admin", "scopes": ["user", "admin"]},
    ]
    orch = Orchestrator(settings(*trained, server={"api_keys": keys}))
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/admin/kb/documents")).status_code == 401
        user = await c.get("/admin/kb/documents", headers={"authorization": "Bearer k-user"})
        assert user.status_code == 403
        ops = await c.get("/admin/kb/documents", headers={"authorization": "Bearer k-admin"})
        assert ops.status_code == 200


async def test_redis_down_fails_retrieval_clearly_and_serving_continues(
    trained: tuple[str, Path],
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    orch = Orchestrator(settings(dead, trained[1]))
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        chat = {"messages": [{"role": "user", "content": "Vesper AQ-5 particle sensor?"}]}
        r = await c.post("/v1/chat/completions", json={"model": "router/expertrag", **chat})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "service_unavailable"
        assert "knowledge store" in r.json()["error"]["message"]
        assert (
            await c.post("/v1/chat/completions", json={"model": "auto", **chat})
        ).status_code == 200
        kb = await c.get("/admin/kb/documents")
        assert kb.status_code == 503 and "knowledge store" in kb.json()["error"]["message"]
        ready = await c.get("/ready")
        assert ready.status_code == 200
        assert any("knowledge store" in d for d in ready.json()["degraded"])
    await orch.stop()


async def test_passages_reach_a_streamed_answer_too(client: httpx.AsyncClient) -> None:
    question = "How loud is the fan of the Vesper AQ-5 air monitor?"
    plain = await ask(client, question)
    body = {
        "model": "router/expertrag",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": question}],
    }
    chunks = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    assert chunks[0]["routing"]["details"]["retrieval"]["decision"] == "retrieve"
    assert chunks[-1]["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
