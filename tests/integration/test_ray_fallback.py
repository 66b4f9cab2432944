"""Fallback on Ray: an expert replica killed mid-request loses no request.

Two echo experts in their own deployments; semantic routing ranks ``slow`` (geography, 3 s per
answer) first for a geography question and ``backup`` second. While a handful of requests
(plain and streamed) wait on ``slow``, its replica actor is killed with ``ray.kill``: each of
them must still answer, from ``backup``, with a trace that says so. Requests sent during the
restart must answer too, and once Serve has replaced the replica, ``slow`` answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import serve_app

APP = "fallback"
QUESTION = "What is the capital of France?"
CONFIG = {
    "experts": [
        {
            "name": "slow",
            "backend": "echo",
            "model": "x",
            "description": "Geography: countries, capital cities, rivers and mountains.",
            "skills": ["geography", "capitals"],
            "engine": {"delay_ms": 3000},
        },
        {
            "name": "backup",
            "backend": "echo",
            "model": "x",
            "description": "Cooking: recipes, baking and kitchen tips.",
            "skills": ["cooking"],
        },
    ],
    "routing": {"default_strategy": "semantic", "max_fallbacks": 1},
}


@pytest.fixture(scope="module")
def base_url(ray_serve: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("ray") / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    with serve_app(ray_serve, APP, path) as url:
        yield url


def _kill_replica(deployment: str) -> str:
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    (name,) = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    ]
    ray.kill(ray.get_actor(name, namespace="serve"))
    return name


def _wait_healthy(deployment: str, timeout_s: float = 120) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        d = serve.status().applications[APP].deployments[deployment]
        if d.status == "HEALTHY" and d.replica_states.get("RUNNING", 0) >= 1:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{deployment} did not recover")


async def _ask(client: openai.AsyncOpenAI, stream: bool) -> tuple[str, dict[str, Any]]:
    messages: Any = [{"role": "user", "content": QUESTION}]
    if not stream:
        c = await client.chat.completions.create(model="auto", messages=messages)
        return c.choices[0].message.content or "", c.model_extra["routing"]  # type: ignore[index]
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="auto", messages=messages, stream=True
        )
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[0].model_extra["routing"]  # type: ignore[index]


async def test_killed_replica_falls_back_and_loses_nothing(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    text, trace = await _ask(client, stream=False)
    assert text == QUESTION and trace["answered_by"] == ["slow"] and not trace["fallback"]

    in_flight = [asyncio.create_task(_ask(client, stream=i % 3 == 0)) for i in range(6)]
    await asyncio.sleep(1.5)  # routed by now: waiting on slow's 3 s answer
    killed = await asyncio.to_thread(_kill_replica, "expert-slow")
    results = await asyncio.gather(*in_flight)
    # Sent while Serve replaces the replica: the ingress knows slow is down and falls back.
    results += await asyncio.gather(*(_ask(client, stream=i == 0) for i in range(2)))

    assert len(results) == 8 and all(text == QUESTION for text, _ in results), killed
    fell_back = [trace for _, trace in results if trace["answered_by"] == ["backup"]]
    for trace in fell_back:
        assert trace["fallback"] and [a["expert"] for a in trace["attempts"]] == ["slow", "backup"]
        assert trace["attempts"][0]["status"] in ("error", "unavailable"), trace
        assert trace["attempts"][1]["status"] == "ok"
    statuses = [t["attempts"][0]["status"] for t in fell_back]
    assert statuses.count("error") >= 3, statuses  # in flight on the killed replica
    assert statuses[-2:] == ["unavailable"] * 2, statuses  # no wait for the new replica

    await asyncio.to_thread(_wait_healthy, "expert-slow")
    deadline = time.monotonic() + 60
    while True:  # the ingress's probe notices the new replica
        text, trace = await _ask(client, stream=True)
        if trace["answered_by"] == ["slow"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert trace["answered_by"] == ["slow"] and not trace["fallback"]  # the new replica serves
