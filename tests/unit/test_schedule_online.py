"""The online path through the scheduler: the HTTP app over echo experts with a memory budget
that holds one expert at a time (echo backends are instant; the scheduler's loads are real
calls to their load/unload)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orchestrator.api import build_app
from orchestrator.config import OrchestratorConfig, load_config
from orchestrator.errors import ConfigError
from orchestrator.pipeline import Orchestrator
from tests.unit.test_api import chat, sse

EXPERTS = [
    {"name": "alpha", "backend": "echo", "model": "x", "memory_gb": 1, "engine": {"fail": True}},
    {"name": "beta", "backend": "echo", "model": "x", "memory_gb": 1},
    {"name": "gamma", "backend": "echo", "model": "x", "memory_gb": 1},
]
SCHEDULER = {"memory_budget_gb": 1.5, "batch_wait_ms": 100, "max_batch_size": 32}


def make_config(**kw: Any) -> OrchestratorConfig:
    return load_config(
        None,
        experts=EXPERTS,
        routing={"default_strategy": "tests.fakes:KeywordStrategy"},
        scheduler=kw.pop("scheduler", SCHEDULER),
        **kw,
    )


@pytest.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, Orchestrator]]:
    orch = Orchestrator(make_config())
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c, orch
    await orch.stop()


async def test_ready_before_any_expert_is_loaded(
    served: tuple[httpx.AsyncClient, Orchestrator],
) -> None:
    client, orch = served
    r = await client.get("/ready")
    assert r.status_code == 200
    assert set(r.json()["experts"].values()) == {"ready (not resident)"}
    assert not any(b.loaded for b in orch.pool.backends.values())


async def test_more_experts_than_fit_all_answer_one_load_each(
    served: tuple[httpx.AsyncClient, Orchestrator],
) -> None:
    client, orch = served
    bodies = [chat(f"question {i}", model=("beta", "gamma")[i % 2]) for i in range(10)]
    responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == f"question {i}"
        assert r.json()["model"] == ("beta", "gamma")[i % 2]
    assert orch.pool.scheduler is not None
    stats = orch.pool.scheduler.residency.stats
    assert stats.max_resident_experts == 1  # 1.5 GB holds one 1 GB expert
    assert dict(stats.loads_by_expert) == {"beta": 1, "gamma": 1}
    assert sorted(orch.pool.scheduler.stats.batch_sizes.elements()) == [5, 5]


async def test_fallback_goes_through_the_scheduler(
    served: tuple[httpx.AsyncClient, Orchestrator],
) -> None:
    client, _ = served
    r = await client.post("/v1/chat/completions", json=chat("alpha please"))
    assert r.status_code == 200, r.text
    trace = r.json()["routing"]
    assert trace["experts"] == ["alpha"] and trace["answered_by"] == ["beta"]
    assert [a["status"] for a in trace["attempts"]] == ["error", "ok"]


async def test_streaming_goes_through_the_scheduler(
    served: tuple[httpx.AsyncClient, Orchestrator],
) -> None:
    client, orch = served
    r = await client.post(
        "/v1/chat/completions", json=chat("one two three", model="gamma", stream=True)
    )
    assert r.status_code == 200
    events = sse(r.text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "one two three" and events[-1] == "[DONE]"
    assert orch.pool.backends["gamma"].loaded


def test_scheduler_section_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"scheduler\.memory_budget_gib"):
        make_config(scheduler={"memory_budget_gib": 1})
    with pytest.raises(ConfigError, match=r"scheduler\.max_batch_size"):
        make_config(scheduler={"max_batch_size": 0})
