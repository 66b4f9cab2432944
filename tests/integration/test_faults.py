"""Faults under load: an expert's process dies mid-run; secrets stay out of the logs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.server import log_path, running_server


def write(tmp: Path, name: str, data: dict) -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    tmp = tmp_path_factory.mktemp("up")
    cfg = {
        "experts": [
            {"name": "remote", "backend": "echo", "model": "x", "engine": {"delay_ms": 200}}
        ],
        "routing": {"default_strategy": "direct"},
    }
    with (
        running_server(write(tmp, "a.yaml", cfg)) as a,
        running_server(write(tmp, "b.yaml", cfg)) as b,
    ):
        yield [a, b]


def server_pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for c in psutil.net_connections("tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return c.pid
    raise LookupError(url)


async def test_expert_process_killed_under_load(upstreams: list[str], tmp_path: Path) -> None:
    a, b = upstreams
    cfg = {
        "experts": [
            {
                "name": "a",
                "backend": "openai",
                "model": "remote",
                "base_url": a + "/v1",
                "timeout_s": 10,
            },
            {
                "name": "b",
                "backend": "openai",
                "model": "remote",
                "base_url": b + "/v1",
                "timeout_s": 10,
            },
        ],
        "routing": {"default_strategy": "tests.fakes:KeywordStrategy"},
    }
    with running_server(write(tmp_path, "main.yaml", cfg)) as main:
        async with httpx.AsyncClient(base_url=main, timeout=30) as client:

            async def ask(i: int) -> httpx.Response:
                await asyncio.sleep(i * 0.02)
                return await client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "auto",
                        "messages": [{"role": "user", "content": f"a question {i}"}],
                    },
                )

            tasks = [asyncio.create_task(ask(i)) for i in range(60)]
            await asyncio.sleep(0.5)  # requests are in flight on a
            os.kill(server_pid(a), signal.SIGKILL)
            responses = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)  # none hangs
    assert [r.status_code for r in responses] == [200] * 60  # every accepted request answered
    traces = [r.json()["routing"] for r in responses]
    assert {t["answered_by"][0] for t in traces} == {"a", "b"}
    fell_back = [t for t in traces if t["fallback"]]
    assert fell_back, "some requests must have been moved to b"
    for t in fell_back:
        assert t["answered_by"] == ["b"] and t["attempts"][0]["expert"] == "a"
        assert t["attempts"][0]["status"] in ("error", "timeout")
    for i, r in enumerate(responses):
        assert r.json()["choices"][0]["message"]["content"] == f"a question {i}"


def test_keys_and_prompts_never_logged(tmp_path: Path) -> None:
    secret_key, secret_prompt = "sk-VERY-SECRET-KEY-42", "my-PRIVATE-prompt-text-77"
    cfg = {
        "experts": [
            {"name": "e", "backend": "echo", "model": "x"},
            {"name": "broken", "backend": "echo", "model": "x", "engine": {"fail": True}},
        ],
        "routing": {"default_strategy": "direct"},
        "server": {"api_keys": [{"name": "k", "key_env": "SECRET_TEST_KEY"}], "log_level": "info"},
    }
    with running_server(write(tmp_path, "c.yaml", cfg), env={"SECRET_TEST_KEY": secret_key}) as url:
        h = {"authorization": f"Bearer {secret_key}"}
        msg = [{"role": "user", "content": secret_prompt}]
        assert (
            httpx.post(
                url + "/v1/chat/completions", headers=h, json={"model": "e", "messages": msg}
            ).status_code
            == 200
        )
        httpx.post(
            url + "/v1/chat/completions", headers=h, json={"model": "broken", "messages": msg}
        )
        httpx.post(
            url + "/v1/chat/completions",
            headers=h,
            json={"model": "e", "messages": msg, "max_tokens": -1},
        )
        httpx.post(
            url + "/v1/chat/completions",
            headers={"authorization": "Bearer " + secret_key + "x"},
            json={},
        )
        httpx.post(url + "/v1/chat/completions", headers=h, content=b"{" + secret_prompt.encode())
        log = log_path(url).read_text()
    assert "broken" in log  # the log is real and has the failure
    assert secret_key not in log and secret_prompt not in log


def test_binds_loopback_by_default() -> None:
    from orchestrator.config import load_config

    assert load_config().server.host == "127.0.0.1"
