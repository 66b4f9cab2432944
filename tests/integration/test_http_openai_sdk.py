"""A real server process on a free port, driven with the official openai SDK.

Experts are instant (echo) so the test is about the API; routing is the real semantic strategy
(MiniLM embeddings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.server import running_server

CONFIG = {
    "experts": [
        {
            "name": "math",
            "backend": "echo",
            "model": "x",
            "description": "Arithmetic, algebra and equations.",
            "skills": ["algebra", "arithmetic"],
        },
        {
            "name": "code",
            "backend": "echo",
            "model": "x",
            "description": "Python programming and debugging.",
            "skills": ["python", "functions"],
        },
        {
            "name": "broken",
            "backend": "echo",
            "model": "x",
            "description": "Always fails.",
            "engine": {"fail": True},
        },
    ],
    "routing": {"default_strategy": "semantic", "aliases": {"gpt-4o-mini": "code"}},
    "server": {
        "api_keys": [{"name": "tests", "key_env": "TEST_API_KEY", "scopes": ["user"]}],
        "max_body_bytes": 100_000,
    },
}
KEY = "sk-test-123"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    with running_server(path, env={"TEST_API_KEY": KEY}) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)


def test_non_streaming_routes_and_traces(client: openai.OpenAI) -> None:
    r = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Write a python function to sort a list"}],
    )
    completion = r.parse()
    assert completion.choices[0].message.content == "Write a python function to sort a list"
    assert completion.model == "code"
    trace = completion.model_extra["routing"]
    assert trace["answered_by"] == ["code"] and trace["strategy"] == "semantic"
    assert trace["candidates"][0]["expert"] == "code"
    assert r.headers["x-routing-expert"] == "code"
    assert completion.usage and completion.usage.completion_tokens > 0


def test_streaming_with_routing_options(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "solve the equation 2x = 4"},
        ],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"strategy": "semantic", "max_latency_ms": 1000},
    )
    chunks = list(stream)
    trace = chunks[0].model_extra["routing"]
    assert trace["answered_by"] == ["math"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "solve the equation 2x = 4"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_alias_and_named_expert(client: openai.OpenAI) -> None:
    c = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert c.model == "code" and c.model_extra["routing"]["resolution"] == "alias"
    c = client.chat.completions.create(model="math", messages=[{"role": "user", "content": "hi"}])
    assert c.model_extra["routing"]["strategy"] == "direct"


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"math", "code", "broken", "auto", "router/semantic"} <= ids


def test_errors(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as e400:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}], max_tokens=10**6
        )
    assert e400.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="router/unknown", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.APIStatusError) as e413:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x" * 200_000}]
        )
    assert e413.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as e502:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert e502.value.status_code == 502 and e502.value.body["type"] == "backend_error"
    r = httpx.get(base_url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_ready_and_metrics(base_url: str) -> None:
    ready = httpx.get(base_url + "/ready").json()
    assert ready["status"] == "ready" and ready["experts"]["math"] == "ready"
    assert "orchestrator_request_latency_seconds_bucket" in httpx.get(base_url + "/metrics").text


def test_config_example_is_valid(tmp_path: Path) -> None:
    from orchestrator.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert load_config(path).routing.aliases == {"gpt-4o-mini": "code"}
