"""The `openai` backend against a real OpenAI-compatible server: another orchestrator process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from orchestrator.config import ExpertConfig
from orchestrator.errors import BackendError
from orchestrator.types import GenerationRequest, Message, SamplingParams
from tests.conftest import free_port
from tests.server import running_server
from workers.openai_backend import OpenAIBackend


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("up") / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experts": [{"name": "remote", "backend": "echo", "model": "x"}],
                "routing": {"default_strategy": "direct"},
            }
        )
    )
    with running_server(path) as url:
        yield url + "/v1"


def request(text: str, max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest((Message("user", text),), SamplingParams(max_tokens=max_tokens))


async def test_generate_and_stream(upstream: str) -> None:
    b = OpenAIBackend(ExpertConfig(name="r", backend="openai", model="remote", base_url=upstream))
    await b.load()
    try:
        assert await b.health()
        (g,) = await b.generate([request("one two three four", max_tokens=3)])
        assert g.text == "one two three" and g.finish_reason == "length"
        assert g.usage.completion_tokens == 3 and g.usage.prompt_tokens == 4
        deltas = [d async for d in b.stream(request("alpha beta gamma"))]
        assert "".join(d.text for d in deltas) == "alpha beta gamma"
        assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3
        many = await b.generate([request(f"q{i}") for i in range(20)])
        assert [g.text for g in many] == [f"q{i}" for i in range(20)]
    finally:
        await b.unload()


async def test_errors_are_backend_errors(upstream: str) -> None:
    b = OpenAIBackend(ExpertConfig(name="r", backend="openai", model="remote", base_url=upstream))
    await b.load()
    try:
        with pytest.raises(BackendError, match="answered 400"):
            await b.generate_one(request("x", max_tokens=10**6))  # over the upstream's cap
    finally:
        await b.unload()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    b = OpenAIBackend(
        ExpertConfig(name="d", backend="openai", model="m", base_url=dead, engine={"retries": 1})
    )
    await b.load()
    assert not await b.health()
    with pytest.raises(BackendError, match="unreachable"):
        await b.generate_one(request("x"))
    with pytest.raises(BackendError):
        [d async for d in b.stream(request("x"))]
    await b.unload()
