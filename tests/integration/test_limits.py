"""Per-key rate and concurrency limits in a real Redis; serving continues when Redis is down."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from orchestrator.api import build_app
from orchestrator.config import load_config
from orchestrator.pipeline import Orchestrator
from tests.conftest import free_port

KEYS = [
    {"name": "slow", "key": "k-slow", "requests_per_minute": 3},
    {"name": "busy", "key": "k-busy", "max_concurrent": 1},
    {"name": "free", "key": "k-free"},
]


def config(redis_url: str) -> Any:
    return load_config(
        None,
        experts=[{"name": "e", "backend": "echo", "model": "x", "engine": {"delay_ms": 300}}],
        routing={"default_strategy": "direct"},
        server={"api_keys": KEYS},
        redis_url=redis_url,
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # A fresh namespace per test, so windows and counters start empty.
    orch = Orchestrator(config(redis_url))
    orch.store.namespace = f"test-{uuid.uuid4().hex[:8]}"
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    await orch.stop()


async def away_from_window_edge() -> None:
    """Rate windows are fixed minutes: start a counting sequence well inside one."""
    left = 60 - time.time() % 60
    if left < 5:
        await asyncio.sleep(left + 0.1)


def chat(key: str, **kw: Any) -> dict[str, Any]:
    return {
        "json": {"model": "e", "messages": [{"role": "user", "content": "hi"}], **kw},
        "headers": {"authorization": f"Bearer {key}"},
    }


async def test_rate_limit_with_retry_after(client: httpx.AsyncClient) -> None:
    await away_from_window_edge()
    codes = [
        (await client.post("/v1/chat/completions", **chat("k-slow"))).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 200]
    r = await client.post("/v1/chat/completions", **chat("k-slow"))
    assert r.status_code == 429
    assert (
        r.json()["error"]["type"] == "rate_limit_error"
        and r.json()["error"]["code"] == "rate_limited"
    )
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # Other keys are not affected.
    assert (await client.post("/v1/chat/completions", **chat("k-free"))).status_code == 200


async def test_concurrency_limit_held_for_the_whole_stream(client: httpx.AsyncClient) -> None:
    first = asyncio.create_task(client.post("/v1/chat/completions", **chat("k-busy", stream=True)))
    await asyncio.sleep(0.1)
    r = await client.post("/v1/chat/completions", **chat("k-busy"))
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_concurrent"
    assert (await first).status_code == 200
    assert (
        await client.post("/v1/chat/completions", **chat("k-busy"))
    ).status_code == 200  # released


async def test_redis_down_degrades_and_recovers() -> None:
    exe = shutil.which("redis-server")
    assert exe is not None
    port = free_port()
    cmd = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    proc = start()
    orch = Orchestrator(config(f"redis://127.0.0.1:{port}/0"))
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            ready = (await c.get("/ready")).json()
            assert ready["redis"] == "ok" and "degraded" not in ready
            proc.terminate()
            proc.wait()
            # Redis is gone: requests are still served (limits not enforced), none fails.
            codes = [
                (await c.post("/v1/chat/completions", **chat("k-slow"))).status_code
                for _ in range(5)
            ]
            assert codes == [200] * 5
            ready = (await c.get("/ready")).json()
            assert ready["status"] == "ready" and ready["redis"].startswith("unavailable")
            assert "rate and concurrency limits are not enforced" in ready["degraded"]
            proc = start()
            orch.store._down_since = time.monotonic() - 10  # skip the back-off wait
            assert (await c.get("/ready")).json()["redis"] == "ok"
            await away_from_window_edge()
            codes = [
                (await c.post("/v1/chat/completions", **chat("k-slow"))).status_code
                for _ in range(4)
            ]
            assert codes == [200, 200, 200, 429]  # enforced again
    finally:
        await orch.stop()
        proc.terminate()
        proc.wait()
